//! Pods run from their own specs by the test kubelet (integration_tests::pod): the chart's controller
//! Deployment, and the `{name}-xds` and `{name}-envoy` Deployments its infra manager creates for a
//! TrafficInfra, each with its command line, environment, mounted ConfigMaps and ServiceAccount
//! credentials as written, its processes running as the spec's user.
//!
//! 1. Chart controller (embedded zone, SQLite weights: the chart's values without AWS): an Ingress in
//!    the test API server → its record, answered over DNS.
//! 2. TrafficInfra → children → `weir xds` Ready (/readyz) → real Envoy from the bootstrap ConfigMap
//!    Ready (/ready through its probe listener) → traffic through Envoy to two gRPC backends by the
//!    strategy weights set on the xDS admin API: 100/0, 0/100, then 30/70 within ±3 points.

mod xds_support;

use std::path::Path;
use std::time::Duration;

use integration_tests::apiserver::{ApiServer, Options};
use integration_tests::pod::{find, render_chart, Pod, PodOptions};
use integration_tests::{free_port, http_get, ingress_manifest, wait_for, DnsClient};
use serde_json::{json, Value};
use xds_support::{admin, assert_share, start_backends, Client};

const T: Duration = Duration::from_secs(60);

fn seed(api: &ApiServer, obj: Value) {
    api.store().create_object(obj.clone()).unwrap_or_else(|e| panic!("seed {obj}: {e:?}"));
}

fn seed_yaml(api: &ApiServer, text: &str) {
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if !v.is_null() {
            seed(api, v);
        }
    }
}

fn get(api: &ApiServer, group: &str, version: &str, plural: &str, ns: &str, name: &str) -> Option<Value> {
    let rt = api.store().find_type(group, version, plural).unwrap_or_else(|| panic!("type {plural}"));
    api.store().get(&rt, ns, name).ok()
}

/// The uid a process runs as, from /proc.
fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
}

fn running_as_root() -> bool {
    uid_of(std::process::id()) == Some(0)
}

/// The chart rendered with `values`, its objects created in the API server as `helm install` would
/// (those of kinds the test server serves), and the controller's pod started from its Deployment.
fn install_chart(api: &ApiServer, values: Value) -> Pod {
    let objects = render_chart(&values);
    for obj in &objects {
        if api.store().type_of(obj).is_ok() && obj["kind"] != "Deployment" {
            seed(api, obj.clone());
        }
    }
    let deployment = find(&objects, "Deployment", "weir");
    seed(api, deployment.clone());
    let pod = Pod::start(api, deployment, PodOptions::default());
    pod.wait_ready(T);
    pod
}

fn controller_values(extra: Value) -> Value {
    let mut v = json!({
        "controller": {
            "clusterName": "eu",
            "backendType": "sqlite",
            "db": "/data/weir.db",
            "dnsProvider": "embedded",
            "dnsListen": ":5353",
            "initialWeight": 100,
            "weightPollInterval": "500ms",
            "logFormat": "text",
        },
    });
    if let (Some(base), Some(more)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in more {
            base.insert(k.clone(), val.clone());
        }
    }
    v
}

#[test]
fn chart_controller_pod_publishes_an_ingress_over_dns() {
    let api = ApiServer::start_background(Options::default());
    seed_yaml(&api, &ingress_manifest("shop", "web", &["www.example.com"], None, "192.0.2.1"));
    let pod = install_chart(&api, controller_values(json!({})));

    // It runs as the chart says: the rendered args (ports and paths rewritten), the pod's identity.
    let argv = pod.argv("controller");
    assert_eq!(argv[1], "controller");
    assert!(argv.iter().any(|a| a == "--cluster-name=eu"), "{argv:?}");
    let db = argv.iter().find_map(|a| a.strip_prefix("--db=")).expect("--db");
    assert_eq!(Path::new(db), pod.host_path("controller", "/data/weir.db"));
    assert!(pod.env("controller").iter().any(|(k, v)| k == "POD_NAME" && *v == pod.name));
    if running_as_root() {
        assert_eq!(uid_of(pod.pid("controller")), Some(65532), "the chart's runAsUser");
    }

    let mut dns = DnsClient::new(pod.host_port(5353));
    let answer = wait_for("www.example.com over DNS from the chart's controller", T, || dns.first_a("www.example.com"));
    assert_eq!(answer, "192.0.2.1");
    assert!(Path::new(db).exists(), "the SQLite file is on the data emptyDir");
}

/// Planner Services for TrafficInfra `ti` in `ns`, one per strategy, each with one EndpointSlice on a
/// loopback backend.
fn planners(api: &ApiServer, ns: &str, ti: &str, backends: &[(&str, u16)]) {
    for (strategy, port) in backends {
        let svc = format!("{ti}-planner-{strategy}");
        seed(
            api,
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": svc, "namespace": ns,
                                "labels": {"weir.dev/traffic-infra": ti, "weir.dev/strategy": strategy}},
                   "spec": {"ports": [{"name": "grpc", "port": 50051}]}}),
        );
        seed(
            api,
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"name": format!("{svc}-1"), "namespace": ns,
                                "labels": {"kubernetes.io/service-name": svc}},
                   "addressType": "IPv4",
                   "ports": [{"name": "grpc", "port": port}],
                   "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]}),
        );
    }
}

/// The bearer token `weir xds` was given for its admin API, if any (`--admin-token-file`).
fn admin_token(pod: &Pod) -> Option<String> {
    let argv = pod.argv("xds");
    let file = argv
        .iter()
        .position(|a| a == "--admin-token-file")
        .map(|i| argv[i + 1].clone())
        .or_else(|| argv.iter().find_map(|a| a.strip_prefix("--admin-token-file=").map(str::to_string)))?;
    Some(std::fs::read_to_string(file).expect("the admin token file").trim().to_string())
}

#[test]
fn operator_children_run_from_their_specs_and_envoy_routes_by_weight() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start_background(Options::default());
    let (blue, green, listener) = (free_port(), free_port(), free_port());
    let _backends = start_backends(dir.path(), &[("blue", blue), ("green", green)]);
    seed(
        &api,
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "NamespaceConfig",
               "metadata": {"name": "default", "namespace": "shop"}, "spec": {}}),
    );
    planners(&api, "shop", "edge", &[("blue", blue), ("green", green)]);
    seed(
        &api,
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "TrafficInfra",
               "metadata": {"name": "edge", "namespace": "shop"},
               "spec": {"xds": {"replicas": 1}, "envoy": {"replicas": 1, "hpa": {"enabled": false},
                                                          "ports": {"grpc": listener}}}}),
    );
    let _controller =
        install_chart(&api, controller_values(json!({"rbac": {"operator": true, "statusPatches": true}})));

    // The infra manager's children, as written to the API server.
    let child = |plural: &str, group: &str, version: &str, name: &str| {
        wait_for(&format!("{plural}/{name}"), T, || get(&api, group, version, plural, "shop", name))
    };
    let xds_deployment = child("deployments", "apps", "v1", "edge-xds");
    let xds_service = child("services", "", "v1", "edge-xds");
    let envoy_deployment = child("deployments", "apps", "v1", "edge-envoy");
    let bootstrap = child("configmaps", "", "v1", "edge-envoy-bootstrap");
    child("serviceaccounts", "", "v1", "edge-xds");
    let text = bootstrap["data"]["envoy.yaml"].as_str().unwrap();
    let written: Value = serde_yaml::from_str(text).unwrap();
    assert_eq!(written["admin"]["address"]["socket_address"]["address"], "127.0.0.1", "admin stays in the pod");

    // weir xds from its spec: its ServiceAccount's credentials, Ready on /readyz.
    let xds = Pod::start(&api, &xds_deployment, PodOptions::default());
    xds.wait_ready(T);
    assert_eq!(xds.argv("xds")[1], "xds");
    if running_as_root() {
        assert_eq!(uid_of(xds.pid("xds")), Some(65532), "weir xds runs as the nonroot user");
    }
    let token = admin_token(&xds);

    // Envoy from its spec, the bootstrap mounted from the ConfigMap; the xDS Service resolves to the
    // xds pod.
    let envoy = Pod::start(&api, &envoy_deployment, PodOptions::default().service_to(&xds_service, &xds));
    envoy.wait_ready(T);
    if running_as_root() {
        assert_eq!(uid_of(envoy.pid("envoy")), Some(65532), "Envoy runs as the nonroot user");
    }
    // The probe port answers /ready and nothing of the admin interface.
    let probe = envoy.url("probe");
    assert!(http_get(&format!("{probe}/ready")).is_some());
    for (method, path) in
        [("GET", "/quitquitquit"), ("POST", "/quitquitquit"), ("GET", "/config_dump"), ("POST", "/ready")]
    {
        let code = reqwest::blocking::Client::new()
            .request(method.parse().unwrap(), format!("{probe}{path}"))
            .timeout(Duration::from_secs(5))
            .send()
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(code, 404, "{method} {path} on the probe listener");
    }
    assert!(envoy.is_ready(), "Envoy survived the probe-port requests");

    // Traffic through Envoy's listener (from xDS) by the strategy weights.
    let xds_admin = xds.url("admin");
    let set_weights = |b: u32, g: u32| {
        let (code, body) = admin("POST", &format!("{xds_admin}/traffic?blue={b}&green={g}"), token.as_deref());
        assert_eq!(code, 200, "{body}");
    };
    let mut client = Client::start(&format!("127.0.0.1:{listener}"), None);
    client.wait_ready();

    set_weights(100, 0);
    wait_for("all calls on blue", T, || (client.call(50, None).share("blue") == 100.0).then_some(()));
    let t = client.call(500, None);
    assert!(t.errors.is_empty(), "{t:?}");
    assert_eq!(t.counts.get("blue"), Some(&500), "{t:?}");

    set_weights(0, 100);
    wait_for("all calls on green", T, || (client.call(50, None).share("green") == 100.0).then_some(()));
    let t = client.call(500, None);
    assert!(t.errors.is_empty(), "{t:?}");
    assert_eq!(t.counts.get("green"), Some(&500), "{t:?}");

    set_weights(30, 70);
    wait_for("some calls back on blue", T, || (client.call(100, None).share("blue") > 0.0).then_some(()));
    // 2,500 calls: ±3 points is about 4.5σ at 30/70.
    let t = client.call(2500, None);
    assert!(t.errors.is_empty(), "{t:?}");
    assert_share(&t, "blue", 30.0);
    assert_share(&t, "green", 70.0);
    assert_eq!((xds.restarts("xds"), envoy.restarts("envoy")), (0, 0), "no liveness restarts");
}

/// The test kubelet itself, on a hand-written spec: env from a ConfigMap key, a Secret key and
/// `$(VAR)` expansion in args; a ConfigMap volume with `items` and a Secret volume at their mount
/// paths; readiness gating Ready; a liveness probe that fails restarts the container.
#[test]
fn test_kubelet_follows_the_spec() {
    let api = ApiServer::start_background(Options::default());
    seed(
        &api,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "site", "namespace": "shop"},
               "data": {"cluster": "eu", "web.yaml": ingress_manifest("shop", "web", &["www.example.com"], None, "192.0.2.9"),
                        "ignored.txt": "not projected: items name only web.yaml"}}),
    );
    seed(
        &api,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": "shop"},
               "type": "Opaque", "data": {"weight": "MTAw"}}),
    );
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "site", "namespace": "shop"},
        "spec": {"template": {"metadata": {"labels": {"app": "site"}}, "spec": {
            "serviceAccountName": "site",
            "volumes": [
                {"name": "manifests", "configMap": {"name": "site", "items": [{"key": "web.yaml", "path": "ingress/web.yaml"}]}},
                {"name": "creds", "secret": {"secretName": "creds"}},
                {"name": "data", "emptyDir": {}},
            ],
            "containers": [{
                "name": "weir", "image": "ghcr.io/weir-dev/weir:0.1.0", "command": ["weir"],
                "args": ["local", "--manifests", "/etc/site/ingress", "--db", "/data/weir.db",
                         "--cluster-name=$(CLUSTER)", "--initial-weight", "$(WEIGHT)", "--dns-listen", ":5353",
                         "--metrics-addr", "0.0.0.0:8080"],
                "env": [
                    {"name": "CLUSTER", "valueFrom": {"configMapKeyRef": {"name": "site", "key": "cluster"}}},
                    {"name": "WEIGHT", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "weight"}}},
                    {"name": "MY_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "WHERE", "value": "$(MY_NS)/$(CLUSTER)"},
                    {"name": "LITERAL", "value": "$$(CLUSTER)"},
                ],
                "ports": [{"name": "metrics", "containerPort": 8080}, {"name": "dns", "containerPort": 5353, "protocol": "UDP"}],
                "volumeMounts": [
                    {"name": "manifests", "mountPath": "/etc/site"},
                    {"name": "creds", "mountPath": "/etc/creds", "readOnly": true},
                    {"name": "data", "mountPath": "/data"},
                ],
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 1},
                "livenessProbe": {"httpGet": {"path": "/no-such-path", "port": "metrics"},
                                  "initialDelaySeconds": 2, "periodSeconds": 1, "failureThreshold": 2},
            }],
        }}},
    });
    let pod = Pod::start(&api, &deployment, PodOptions::default());
    let argv = pod.argv("weir");
    assert!(argv.iter().any(|a| a == "--cluster-name=eu"), "configMapKeyRef + $(VAR): {argv:?}");
    assert!(argv.windows(2).any(|w| w[0] == "--initial-weight" && w[1] == "100"), "secretKeyRef: {argv:?}");
    let env = pod.env("weir");
    assert!(env.iter().any(|(k, v)| k == "WHERE" && v == "shop/eu"), "{env:?}");
    assert!(env.iter().any(|(k, v)| k == "LITERAL" && v == "$(CLUSTER)"), "$$ escapes: {env:?}");
    let manifests = pod.host_path("weir", "/etc/site/ingress");
    assert!(manifests.join("web.yaml").exists() && !pod.host_path("weir", "/etc/site/ignored.txt").exists());
    assert_eq!(std::fs::read(pod.host_path("weir", "/etc/creds/weight")).unwrap(), b"100", "Secret data decoded");
    assert!(pod.host_path("weir", "/var/run/secrets/kubernetes.io/serviceaccount/token").exists());

    pod.wait_ready(T);
    let mut dns = DnsClient::new(pod.host_port(5353));
    assert_eq!(wait_for("the answer", T, || dns.first_a("www.example.com")), "192.0.2.9");
    // /no-such-path is a 404: after the initial delay and two failures the kubelet restarts it.
    wait_for("a liveness restart", T, || (pod.restarts("weir") >= 1).then_some(()));
    pod.wait_ready(T);
}
