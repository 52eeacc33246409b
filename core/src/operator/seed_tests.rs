//! The TrafficInfra seed's minimal and production examples (testdata/seed, verbatim but for
//! `apiVersion`) produce the children and values the seed documents. Golden files hold the whole
//! plan; the assertions below name the values the seed's tables and examples give.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Container;
use serde::Deserialize;

use super::children::ChildObject;
use super::*;
use crate::crd::{traffic_infra_unknown_fields, NamespaceConfig};

/// The TrafficInfra of a seed example (its AuthGateway, another product's kind, skipped), with the
/// uid and generation an API server would give it, in a namespace with an empty NamespaceConfig.
fn load(file: &str) -> (TrafficInfra, Vec<InfraPlan>) {
    let text = std::fs::read_to_string(crate::golden::testdata(&format!("seed/{file}"))).unwrap();
    let mut infra = None;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = serde_json::Value::deserialize(doc).unwrap();
        match v["kind"].as_str() {
            Some("TrafficInfra") => {
                // Nothing in the seed's example is unknown to weir's schema.
                assert_eq!(traffic_infra_unknown_fields(&v), vec![], "{file}");
                infra = Some(serde_json::from_value::<TrafficInfra>(v).unwrap());
            }
            Some("AuthGateway") => {}
            other => panic!("{file}: unexpected kind {other:?}"),
        }
    }
    let mut ti = infra.expect("a TrafficInfra");
    ti.metadata.uid = Some("0b5c2d3e-5eed-4a4a-9999-000000000001".into());
    ti.metadata.generation = Some(1);
    let mut nc = NamespaceConfig::new("default", Default::default());
    nc.metadata.namespace = ti.metadata.namespace.clone();
    let mut snap = Snapshot { traffic_infras: vec![ti.clone()], namespace_configs: vec![nc], ..Default::default() };
    snap.normalize();
    let plans = plan(&snap, &ObservedChildren::default(), &tests::now());
    (ti, plans)
}

fn kinds_and_names(plan: &InfraPlan) -> Vec<String> {
    plan.children.iter().map(ChildObject::describe).collect()
}

fn container<'a>(plan: &'a InfraPlan, deployment: &str) -> &'a Container {
    plan.children
        .iter()
        .find_map(|c| match c {
            ChildObject::Deployment(d) if d.metadata.name.as_deref() == Some(deployment) => {
                Some(&d.spec.template.spec.as_ref()?.containers[0])
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("Deployment {deployment}"))
}

fn deployment_replicas(plan: &InfraPlan, deployment: &str) -> Option<i32> {
    plan.children.iter().find_map(|c| match c {
        ChildObject::Deployment(d) if d.metadata.name.as_deref() == Some(deployment) => d.spec.replicas,
        _ => None,
    })
}

fn hpa(plan: &InfraPlan) -> &k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler {
    plan.children
        .iter()
        .find_map(|c| match c {
            ChildObject::HorizontalPodAutoscaler(h) => Some(h),
            _ => None,
        })
        .expect("an HPA")
}

fn hpa_targets(plan: &InfraPlan) -> BTreeMap<String, i32> {
    let h = hpa(plan);
    h.spec
        .metrics
        .iter()
        .flatten()
        .map(|m| {
            let r = m.resource.as_ref().unwrap();
            (r.name.clone(), r.target.average_utilization.unwrap())
        })
        .collect()
}

fn requests(c: &Container) -> (String, String) {
    let r = c.resources.as_ref().unwrap().requests.as_ref().unwrap();
    (r["cpu"].0.clone(), r["memory"].0.clone())
}

fn service_type(plan: &InfraPlan, name: &str) -> String {
    plan.children
        .iter()
        .find_map(|c| match c {
            ChildObject::Service(s) if s.metadata.name.as_deref() == Some(name) => s.spec.as_ref()?.type_.clone(),
            _ => None,
        })
        .unwrap()
}

/// The seed's "Child Resources Created" table, for a TrafficInfra named `traffic`.
const SEED_CHILDREN: &[&str] = &[
    "ServiceAccount/traffic-xds",
    "Role/traffic-xds-role",
    "RoleBinding/traffic-xds-rolebinding",
    "Deployment/traffic-xds",
    "Service/traffic-xds",
    "ConfigMap/traffic-envoy-bootstrap",
    "Deployment/traffic-envoy",
    "Service/traffic-envoy",
    "HorizontalPodAutoscaler/traffic-envoy-hpa",
];

#[test]
fn seed_minimal_example_golden() {
    let (ti, plans) = load("traffic-infra-minimal.yaml");
    crate::golden::assert_golden("seed/traffic-infra-minimal.out.yaml", &serde_yaml::to_string(&plans).unwrap());
    let p = &plans[0];
    let have = kinds_and_names(p);
    for want in SEED_CHILDREN {
        assert!(have.contains(&want.to_string()), "{want} missing from {have:?}");
    }
    // The seed's defaults, every one.
    let s = &ti.spec;
    assert_eq!((s.xds.replicas, s.xds.ports.grpc, s.xds.ports.admin), (2, 18000, 18080));
    assert_eq!((s.xds.poll_interval, s.xds.node_id.as_str()), (5, "envoy-proxy"));
    assert_eq!((s.xds.resources.cpu.as_str(), s.xds.resources.memory.as_str()), ("200m", "256Mi"));
    assert_eq!(s.xds.image.pull_policy, "IfNotPresent");
    assert_eq!((s.envoy.replicas, s.envoy.max_replicas), (2, 10));
    assert_eq!(s.envoy.image.reference(), "envoyproxy/envoy:v1.31-latest");
    assert_eq!((s.envoy.ports.grpc, s.envoy.ports.admin), (8080, 9901));
    assert_eq!((s.traffic_defaults.blue_weight, s.traffic_defaults.green_weight), (100, 0));
    assert_eq!(requests(container(p, "traffic-xds")), ("200m".into(), "256Mi".into()));
    assert_eq!(requests(container(p, "traffic-envoy")), ("500m".into(), "512Mi".into()));
    assert_eq!(deployment_replicas(p, "traffic-xds"), Some(2));
    assert_eq!(service_type(p, "traffic-envoy"), "LoadBalancer");
    assert_eq!(hpa_targets(p), BTreeMap::from([("cpu".into(), 70), ("memory".into(), 80)]));
    let h = &hpa(p).spec;
    assert_eq!((h.min_replicas, h.max_replicas), (Some(2), 10));
}

#[test]
fn seed_production_example_golden() {
    let (ti, plans) = load("traffic-infra-production.yaml");
    crate::golden::assert_golden("seed/traffic-infra-production.out.yaml", &serde_yaml::to_string(&plans).unwrap());
    let p = &plans[0];
    let have = kinds_and_names(p);
    for want in SEED_CHILDREN {
        assert!(have.contains(&want.to_string()), "{want} missing from {have:?}");
    }
    assert_eq!(ti.spec.xds.poll_interval, 3);
    let xds = container(p, "traffic-xds");
    assert_eq!(deployment_replicas(p, "traffic-xds"), Some(3));
    assert!(xds.image.as_deref().unwrap().ends_with(":1.0.14"), "{:?}", xds.image);
    assert_eq!(requests(xds), ("500m".into(), "512Mi".into()));
    let args = xds.args.clone().unwrap().join(" ");
    assert!(args.contains("--service myapp-planner-blue --service myapp-planner-green"), "{args}");
    assert_eq!(requests(container(p, "traffic-envoy")), ("1000m".into(), "1Gi".into()));
    // With the HPA on, the HPA owns the Envoy replica count: 3 to 20, at 60 % CPU and 70 % memory.
    assert_eq!(deployment_replicas(p, "traffic-envoy"), None);
    assert_eq!(hpa_targets(p), BTreeMap::from([("cpu".into(), 60), ("memory".into(), 70)]));
    let h = &hpa(p).spec;
    assert_eq!((h.min_replicas, h.max_replicas), (Some(3), 20));
    assert_eq!(service_type(p, "traffic-envoy"), "ClusterIP");
    // The AuthGateway's backend is the Envoy Service on the Envoy port.
    assert_eq!(p.status.xds_endpoint.as_deref(), Some("traffic-xds.workspace-prod.svc:18000"));
}

/// A manifest with the field names weir used before (and any other unknown field) is reported,
/// naming the field the seed spells, rather than silently falling back to the defaults.
#[test]
fn renamed_and_unknown_fields_are_reported() {
    let text = std::fs::read_to_string(crate::golden::testdata("seed/traffic-infra-production.yaml")).unwrap();
    let first = text.split("\n---").next().unwrap().replace("targetCPUUtilization", "targetCpuUtilization");
    let mut v: serde_json::Value = serde_yaml::from_str(&first).unwrap();
    v["spec"]["xds"]["pollIntervall"] = 3.into();
    let unknown: Vec<String> = traffic_infra_unknown_fields(&v).iter().map(ToString::to_string).collect();
    assert_eq!(
        unknown,
        [
            "unknown field .spec.envoy.hpa.targetCpuUtilization (did you mean .spec.envoy.hpa.targetCPUUtilization?)",
            "unknown field .spec.xds.pollIntervall",
        ]
    );
}

/// `spec.xds.discovery.allowedNamespaces` reaches `weir xds` as one `--watch-namespace` per other
/// namespace; the Role stays in the TrafficInfra's namespace (the allowed namespace grants).
#[test]
fn allowed_namespaces_become_watch_namespace_flags() {
    let (mut ti, _) = load("traffic-infra-production.yaml");
    let own = ti.metadata.namespace.clone().unwrap();
    ti.spec.xds.discovery.allowed_namespaces = vec!["partner".into(), own.clone()];
    let c = super::children::children(&ti, &NamespaceConfig::new("default", Default::default()));
    let args = c.xds_deployment.spec.template.spec.as_ref().unwrap().containers[0].args.clone().unwrap().join(" ");
    assert!(args.ends_with("--watch-namespace partner"), "{args}");
    assert_eq!(args.matches("--watch-namespace").count(), 1, "not its own namespace: {args}");
    assert_eq!(c.role.metadata.namespace.as_deref(), Some(own.as_str()));
}
