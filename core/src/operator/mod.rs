//! The TrafficInfra operator's pure core: which child objects a TrafficInfra needs, its status, the
//! effective BackendTrafficPolicy per planner Service, and the admission decision. No I/O here: the
//! infra manager applies what these functions compute (server-side apply, field manager
//! [`children::FIELD_MANAGER`]).

pub mod admission;
pub mod children;
pub mod envoy;
pub mod policy;
#[cfg(test)]
mod seed_tests;
pub mod status;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube_core::ResourceExt;
use serde::Serialize;

use crate::crd::{NamespaceConfig, TrafficInfra, TrafficInfraStatus, LABEL_TRAFFIC_INFRA};
use crate::ir::{InputKind, Refusal};
use crate::model::{ObjectRef, Snapshot};

use children::{ChildNames, ChildObject};
use status::{Observed, Outcome};

pub const REASON_DUPLICATE: &str = "DuplicateTrafficInfra";
pub const REASON_NAMESPACE_CONFIG_MISSING: &str = "NamespaceConfigMissing";
pub const REASON_INVALID: &str = "InvalidTrafficInfra";

/// What the infra manager should do for one TrafficInfra.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InfraPlan {
    pub infra: ObjectRef,
    /// The children to apply, in order. Empty when the TrafficInfra is Pending or Failed (the
    /// infra manager then deletes any children it created earlier).
    pub children: Vec<ChildObject>,
    pub status: TrafficInfraStatus,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refusals: Vec<Refusal>,
}

/// Children as read back from the API server, for status.
#[derive(Debug, Clone, Default)]
pub struct ObservedChildren {
    pub deployments: Vec<Deployment>,
    pub services: Vec<Service>,
}

impl ObservedChildren {
    fn deployment(&self, ns: &str, name: &str) -> Option<&Deployment> {
        self.deployments.iter().find(|d| d.namespace().as_deref() == Some(ns) && d.name_any() == name)
    }
    fn service(&self, ns: &str, name: &str) -> Option<&Service> {
        self.services.iter().find(|d| d.namespace().as_deref() == Some(ns) && d.name_any() == name)
    }
}

/// Only one TrafficInfra per namespace: the oldest (by creationTimestamp, then name) wins. Objects
/// being deleted take no part. Returns, per namespace, the winner's name.
pub fn elect(infras: &[TrafficInfra]) -> BTreeMap<String, String> {
    let mut winners: BTreeMap<String, &TrafficInfra> = BTreeMap::new();
    for ti in infras.iter().filter(|t| t.metadata.deletion_timestamp.is_none()) {
        let ns = ti.namespace().unwrap_or_default();
        match winners.get(&ns) {
            Some(cur) if age_key(cur) <= age_key(ti) => {}
            _ => {
                winners.insert(ns, ti);
            }
        }
    }
    winners.into_iter().map(|(ns, ti)| (ns, ti.name_any())).collect()
}

// Objects without a creationTimestamp (file provider) sort after those with one, then by name.
fn age_key(ti: &TrafficInfra) -> (bool, Option<Time>, String) {
    let ts = ti.metadata.creation_timestamp.clone();
    (ts.is_none(), ts, ti.name_any())
}

/// Problems with a TrafficInfra's spec that the API server's schema would have caught; checked
/// again because the file provider has no API server in front of it.
pub fn validate_infra(ti: &TrafficInfra) -> Vec<String> {
    let s = &ti.spec;
    let mut errs = Vec::new();
    for (field, p) in [
        ("xds.ports.grpc", s.xds.ports.grpc),
        ("xds.ports.admin", s.xds.ports.admin),
        ("envoy.ports.grpc", s.envoy.ports.grpc),
        ("envoy.ports.admin", s.envoy.ports.admin),
    ] {
        if !(1..=65535).contains(&p) {
            errs.push(format!("{field} {p} is not a port (1-65535)"));
        }
    }
    if s.xds.ports.grpc == s.xds.ports.admin {
        errs.push(format!("xds.ports.grpc and xds.ports.admin are both {}", s.xds.ports.grpc));
    }
    if s.envoy.ports.grpc == s.envoy.ports.admin {
        errs.push(format!("envoy.ports.grpc and envoy.ports.admin are both {}", s.envoy.ports.grpc));
    }
    for (field, n) in [("xds.replicas", s.xds.replicas), ("envoy.replicas", s.envoy.replicas)] {
        if n < 0 {
            errs.push(format!("{field} {n} is negative"));
        }
    }
    if s.envoy.max_replicas < 1 {
        errs.push(format!("envoy.maxReplicas {} must be at least 1", s.envoy.max_replicas));
    }
    for (field, n) in [
        ("envoy.hpa.targetCPUUtilization", s.envoy.hpa.target_cpu_utilization),
        ("envoy.hpa.targetMemoryUtilization", s.envoy.hpa.target_memory_utilization),
    ] {
        if !(1..=100).contains(&n) {
            errs.push(format!("{field} {n} is not a percentage (1-100)"));
        }
    }
    if s.xds.poll_interval < 1 {
        errs.push(format!("xds.pollInterval {} must be at least 1", s.xds.poll_interval));
    }
    if s.xds.node_id.is_empty() {
        errs.push("xds.nodeID is empty".into());
    }
    if !["ClusterIP", "NodePort", "LoadBalancer"].contains(&s.envoy.service.type_.as_str()) {
        errs.push(format!("envoy.service.type {:?} is not ClusterIP, NodePort or LoadBalancer", s.envoy.service.type_));
    }
    for (field, p) in
        [("xds.image.pullPolicy", &s.xds.image.pull_policy), ("envoy.image.pullPolicy", &s.envoy.image.pull_policy)]
    {
        if !["Always", "IfNotPresent", "Never"].contains(&p.as_str()) {
            errs.push(format!("{field} {p:?} is not Always, IfNotPresent or Never"));
        }
    }
    for (field, q) in [
        ("xds.resources.cpu", &s.xds.resources.cpu),
        ("xds.resources.memory", &s.xds.resources.memory),
        ("envoy.resources.cpu", &s.envoy.resources.cpu),
        ("envoy.resources.memory", &s.envoy.resources.memory),
    ] {
        if !is_quantity(q) {
            errs.push(format!("{field} {q:?} is not a resource quantity (e.g. 200m, 256Mi)"));
        }
    }
    errs
}

/// A Kubernetes quantity: a decimal number with an optional binary (Ki…Ei), decimal (n u m k M G
/// T P E) or exponent suffix.
pub fn is_quantity(q: &str) -> bool {
    let body = q.strip_prefix(['+', '-']).unwrap_or(q);
    let num_end = body.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(body.len());
    let (num, suffix) = body.split_at(num_end);
    let digits = num.replace('.', "");
    if digits.is_empty() || num.matches('.').count() > 1 {
        return false;
    }
    const SUFFIXES: [&str; 17] =
        ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E", "e0"];
    if SUFFIXES.contains(&suffix) {
        return true;
    }
    match suffix.strip_prefix(['e', 'E']) {
        Some(exp) => {
            let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            !exp.is_empty() && exp.chars().all(|c| c.is_ascii_digit())
        }
        None => false,
    }
}

/// The planner Services a TrafficInfra routes to: those labelled `weir.dev/traffic-infra: NAME`
/// in its namespace, and those named in `spec.xds.discovery.services`. Sorted, unique.
pub fn discovered_services(ti: &TrafficInfra, services: &[Service]) -> Vec<String> {
    let ns = ti.namespace().unwrap_or_default();
    let name = ti.name_any();
    let mut out: BTreeSet<String> = ti.spec.xds.discovery.services.iter().cloned().collect();
    out.extend(
        services
            .iter()
            .filter(|s| s.namespace().as_deref() == Some(ns.as_str()))
            .filter(|s| s.labels().get(LABEL_TRAFFIC_INFRA) == Some(&name))
            .map(|s| s.name_any()),
    );
    out.into_iter().collect()
}

/// Every TrafficInfra of the snapshot → what to apply and the status to write (the operator's part;
/// `weir xds`'s part as each TrafficInfra has it).
pub fn plan(snapshot: &Snapshot, observed: &ObservedChildren, now: &Time) -> Vec<InfraPlan> {
    let winners = elect(&snapshot.traffic_infras);
    let mut out = Vec::new();
    for ti in snapshot.traffic_infras.iter().filter(|t| t.metadata.deletion_timestamp.is_none()) {
        let ns = ti.namespace().unwrap_or_default();
        let name = ti.name_any();
        let me = ObjectRef::of(ti);
        let mut refusals = Vec::new();
        let ns_config: Option<&NamespaceConfig> =
            snapshot.namespace_configs.iter().find(|c| c.namespace().as_deref() == Some(ns.as_str()));
        let problems = validate_infra(ti);
        let outcome = if winners.get(&ns) != Some(&name) {
            let winner = winners.get(&ns).cloned().unwrap_or_default();
            let message = format!(
                "namespace {ns} already has TrafficInfra {winner}; only one TrafficInfra per namespace is allowed, so nothing is created for {name}: delete one of them"
            );
            refusals.push(Refusal {
                object: me.clone(),
                kind: InputKind::Resource,
                reason: REASON_DUPLICATE.into(),
                message: message.clone(),
            });
            Outcome::Failed { reason: REASON_DUPLICATE.into(), message }
        } else if !problems.is_empty() {
            let message = format!("invalid spec, nothing is created: {}", problems.join("; "));
            refusals.push(Refusal {
                object: me.clone(),
                kind: InputKind::Resource,
                reason: REASON_INVALID.into(),
                message: message.clone(),
            });
            Outcome::Failed { reason: REASON_INVALID.into(), message }
        } else if ns_config.is_none() {
            Outcome::Pending {
                reason: REASON_NAMESPACE_CONFIG_MISSING.into(),
                message: format!(
                    "namespace {ns} has no NamespaceConfig; create one (it may be empty) to say how pods here are scheduled"
                ),
            }
        } else {
            Outcome::Build
        };
        let children = match (&outcome, ns_config) {
            (Outcome::Build, Some(nc)) => children::children(ti, nc).into_objects(),
            _ => Vec::new(),
        };
        let names = ChildNames::of(&name);
        let obs = Observed {
            xds_deployment: observed.deployment(&ns, &names.xds),
            envoy_deployment: observed.deployment(&ns, &names.envoy),
            envoy_service: observed.service(&ns, &names.envoy),
        };
        let status = status::compute(ti, &outcome, obs, now);
        out.push(InfraPlan { infra: me, children, status, refusals });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{NamespaceConfig, Phase};

    pub(crate) fn now() -> Time {
        Time("2026-01-01T00:00:00Z".parse().unwrap())
    }

    /// Reads a multi-document YAML of TrafficInfras, NamespaceConfigs, Services and Deployments.
    fn load(text: &str) -> (Snapshot, ObservedChildren) {
        let mut snap = Snapshot::default();
        let mut obs = ObservedChildren::default();
        for doc in serde_yaml::Deserializer::from_str(text) {
            let v = serde_yaml::Value::deserialize(doc).unwrap();
            if v.is_null() {
                continue;
            }
            match v["kind"].as_str().unwrap() {
                "TrafficInfra" => snap.traffic_infras.push(serde_yaml::from_value(v).unwrap()),
                "NamespaceConfig" => snap.namespace_configs.push(serde_yaml::from_value(v).unwrap()),
                "Service" => {
                    let s: Service = serde_yaml::from_value(v).unwrap();
                    snap.services.push(s.clone());
                    obs.services.push(s);
                }
                "Deployment" => obs.deployments.push(serde_yaml::from_value(v).unwrap()),
                other => panic!("unexpected kind {other}"),
            }
        }
        snap.normalize();
        (snap, obs)
    }
    use serde::Deserialize;

    #[test]
    fn golden_operator_plans() {
        let dir = crate::golden::testdata("operator");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let Some(file) = path.file_name().and_then(|f| f.to_str()) else { continue };
            let Some(stem) = file.strip_suffix(".in.yaml") else { continue };
            let (snap, obs) = load(&std::fs::read_to_string(&path).unwrap());
            let plans = plan(&snap, &obs, &now());
            crate::golden::assert_golden(&format!("operator/{stem}.out.yaml"), &serde_yaml::to_string(&plans).unwrap());
            n += 1;
        }
        assert!(n >= 5, "only {n} golden inputs in {}", dir.display());
    }

    fn ti(ns: &str, name: &str, created: Option<&str>) -> TrafficInfra {
        let mut t = TrafficInfra::new(name, Default::default());
        t.metadata.namespace = Some(ns.into());
        t.metadata.uid = Some(format!("uid-{name}"));
        t.metadata.creation_timestamp = created.map(|c| Time(c.parse().unwrap()));
        t
    }

    fn nc(ns: &str) -> NamespaceConfig {
        let mut c = NamespaceConfig::new("default", Default::default());
        c.metadata.namespace = Some(ns.into());
        c
    }

    #[test]
    fn oldest_traffic_infra_wins_its_namespace() {
        let a = ti("shop", "b-older", Some("2025-01-01T00:00:00Z"));
        let b = ti("shop", "a-newer", Some("2025-06-01T00:00:00Z"));
        let c = ti("blog", "only", None);
        let w = elect(&[b.clone(), a.clone(), c.clone()]);
        assert_eq!(w.get("shop").map(String::as_str), Some("b-older"));
        assert_eq!(w.get("blog").map(String::as_str), Some("only"));
        // Without timestamps the name decides; a timestamped object beats an untimed one.
        let w = elect(&[ti("x", "b", None), ti("x", "a", None)]);
        assert_eq!(w["x"], "a");
        let w = elect(&[ti("x", "a", None), ti("x", "z", Some("2025-01-01T00:00:00Z"))]);
        assert_eq!(w["x"], "z");
        // One being deleted does not count.
        let mut gone = a.clone();
        gone.metadata.deletion_timestamp = Some(now());
        assert_eq!(elect(&[gone, b])["shop"], "a-newer");
    }

    #[test]
    fn second_traffic_infra_fails_with_no_children_and_a_refusal() {
        let snap = Snapshot {
            traffic_infras: vec![
                ti("shop", "first", Some("2025-01-01T00:00:00Z")),
                ti("shop", "second", Some("2025-02-01T00:00:00Z")),
            ],
            namespace_configs: vec![nc("shop")],
            ..Default::default()
        };
        let plans = plan(&snap, &ObservedChildren::default(), &now());
        assert_eq!(plans.len(), 2);
        let second = plans.iter().find(|p| p.infra.name == "second").unwrap();
        assert!(second.children.is_empty());
        assert_eq!(second.status.phase, Some(Phase::Failed));
        assert!(second.status.message.as_deref().unwrap().contains("already has TrafficInfra first"));
        assert_eq!(second.refusals.len(), 1);
        assert_eq!(second.refusals[0].kind, InputKind::Resource);
        let first = plans.iter().find(|p| p.infra.name == "first").unwrap();
        assert_eq!(first.children.len(), 11);
        assert_eq!(first.status.phase, Some(Phase::Deploying));
    }

    #[test]
    fn missing_namespace_config_is_pending_with_a_condition() {
        let snap = Snapshot { traffic_infras: vec![ti("shop", "edge", None)], ..Default::default() };
        let plans = plan(&snap, &ObservedChildren::default(), &now());
        assert!(plans[0].children.is_empty());
        assert_eq!(plans[0].status.phase, Some(Phase::Pending));
        let cond =
            plans[0].status.conditions.iter().find(|c| c.type_ == status::CONDITION_NAMESPACE_CONFIGURED).unwrap();
        assert_eq!(cond.status, "False");
        assert_eq!(cond.reason, REASON_NAMESPACE_CONFIG_MISSING);
        assert!(cond.message.contains("no NamespaceConfig"));
    }

    #[test]
    fn invalid_spec_fails_naming_every_problem() {
        let mut t = ti("shop", "edge", None);
        t.spec.envoy.service.type_ = "Ingress".into();
        t.spec.xds.ports.grpc = 0;
        t.spec.envoy.resources.memory = "lots".into();
        let snap = Snapshot { traffic_infras: vec![t], namespace_configs: vec![nc("shop")], ..Default::default() };
        let p = &plan(&snap, &ObservedChildren::default(), &now())[0];
        assert!(p.children.is_empty());
        assert_eq!(p.status.phase, Some(Phase::Failed));
        let msg = p.status.message.as_deref().unwrap();
        for needle in ["envoy.service.type \"Ingress\"", "xds.ports.grpc 0", "envoy.resources.memory \"lots\""] {
            assert!(msg.contains(needle), "{msg} lacks {needle}");
        }
    }

    #[test]
    fn quantities() {
        for ok in ["200m", "256Mi", "1", "1.5", "0.5Gi", "1e3", "2E-2", "+1k"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "lots", "1.2.3", "Mi", "5 Mi", "1x", "1e"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn status_times_are_kept_when_nothing_changed() {
        let snap = Snapshot { traffic_infras: vec![ti("shop", "edge", None)], ..Default::default() };
        let first = plan(&snap, &ObservedChildren::default(), &now()).remove(0).status;
        let mut again = snap.clone();
        again.traffic_infras[0].status = Some(first.clone());
        let later = Time("2026-01-02T00:00:00Z".parse().unwrap());
        let second = plan(&again, &ObservedChildren::default(), &later).remove(0).status;
        assert_eq!(first, second);
    }
}
