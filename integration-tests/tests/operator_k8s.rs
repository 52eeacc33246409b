//! The infra manager end to end: the real `weir controller --provider kubernetes` against the
//! in-process test API server. TrafficInfra + NamespaceConfig → every child exists, owned by the
//! TrafficInfra, with the inherited scheduling settings; children's readiness drives the status;
//! a spec change is followed (the HPA goes when disabled); a second TrafficInfra in the namespace is
//! Failed with nothing created; a namespace without NamespaceConfig is Pending; an invalid
//! BackendTrafficPolicy gets `Accepted=False`; deleting the TrafficInfra removes every child (the
//! test API server's garbage collector follows the ownerReferences, as Kubernetes' does).
//!
//! RBAC is enforced: the controller runs as the chart's ServiceAccount with `rbac.operator=true`,
//! and the `weir xds` it deploys runs as the ServiceAccount, Role and RoleBinding the operator made
//! (read back from the API server), with the admin token from the Secret the operator made.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use integration_tests::apiserver::{ApiServer, Options, WriteOp};
use integration_tests::chart::{install_controller_identity, ChartIdentity};
use integration_tests::{free_port, free_udp_tcp_port, http_get, metric, wait_for, weir_bin, Proc};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

/// The chart's controller identity with the operator's RBAC.
fn operator_identity(server: &ApiServer) -> ChartIdentity {
    install_controller_identity(server, json!({"controller": {"clusterName": "eu"}, "rbac": {"operator": true}}))
}

/// Nothing `user` asked for was denied, and it did ask.
fn assert_nothing_denied(server: &ApiServer, user: &str) {
    let mine: Vec<_> = server.audit().into_iter().filter(|r| r.user == user).collect();
    assert!(!mine.is_empty(), "no request as {user}");
    let denied: Vec<_> = mine.iter().filter(|r| !r.allowed).collect();
    assert!(denied.is_empty(), "denied to {user}: {denied:#?}");
}

/// The controller and its metrics URL.
fn controller(server: &ApiServer, id: &ChartIdentity, dir: &Path) -> (Proc, String) {
    controller_with_resync(server, id, dir, "1s")
}

fn controller_with_resync(server: &ApiServer, id: &ChartIdentity, dir: &Path, resync: &str) -> (Proc, String) {
    let kubeconfig = server.write_kubeconfig_for(dir, &id.token);
    let metrics_port = free_port();
    let mut cmd = Command::new(weir_bin());
    cmd.env("KUBECONFIG", &kubeconfig)
        .env("WEIR_LOG", "info,weir=debug")
        .args(["controller", "--provider", "kubernetes", "--cluster-name", "eu"])
        .args(["--backend-type", "sqlite", "--initial-weight", "100", "--weight-poll-interval", "200ms"])
        .arg("--db")
        .arg(dir.join("weir.db"))
        .args(["--dns-provider", "embedded", "--dns-listen", &format!("127.0.0.1:{}", free_udp_tcp_port())])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(["--resync-interval", resync]);
    (Proc::spawn("weir-controller", &mut cmd, dir), format!("http://127.0.0.1:{metrics_port}/metrics"))
}

fn counter(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    http_get(metrics).and_then(|body| metric(&body, name, labels)).unwrap_or(0.0)
}

fn get(server: &ApiServer, group: &str, version: &str, plural: &str, ns: &str, name: &str) -> Option<Value> {
    let rt = server.store().find_type(group, version, plural).unwrap_or_else(|| panic!("type {plural}"));
    server.store().get(&rt, ns, name).ok()
}

fn seed(server: &ApiServer, obj: Value) {
    server.store().create_object(obj).unwrap();
}

fn write(
    server: &ApiServer,
    (group, version, plural): (&str, &str, &str),
    ns: &str,
    name: &str,
    patch: Value,
    status: bool,
) {
    let rt = server.store().find_type(group, version, plural).unwrap();
    server.store().write(&rt, ns, name, WriteOp::Merge(patch), status).unwrap();
}

fn ti(server: &ApiServer, ns: &str, name: &str) -> Value {
    get(server, "weir.dev", "v1alpha1", "trafficinfras", ns, name).unwrap()
}

fn wait_phase(server: &ApiServer, ns: &str, name: &str, phase: &str) -> Value {
    wait_for(&format!("TrafficInfra {ns}/{name} phase {phase}"), T, || {
        let t = ti(server, ns, name);
        (t["status"]["phase"] == phase).then_some(t)
    })
}

fn condition<'a>(obj: &'a Value, type_: &str) -> &'a Value {
    obj["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == type_).unwrap()
}

const CHILDREN: &[(&str, &str, &str, &str)] = &[
    ("", "v1", "serviceaccounts", "edge-xds"),
    ("rbac.authorization.k8s.io", "v1", "roles", "edge-xds-role"),
    ("rbac.authorization.k8s.io", "v1", "rolebindings", "edge-xds-rolebinding"),
    ("", "v1", "secrets", "edge-xds-admin-token"),
    ("", "v1", "configmaps", "edge-xds-state"),
    ("", "v1", "services", "edge-xds"),
    ("apps", "v1", "deployments", "edge-xds"),
    ("", "v1", "configmaps", "edge-envoy-bootstrap"),
    ("", "v1", "services", "edge-envoy"),
    ("apps", "v1", "deployments", "edge-envoy"),
    ("autoscaling", "v2", "horizontalpodautoscalers", "edge-envoy-hpa"),
];

#[test]
fn traffic_infra_lifecycle_against_the_api_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start_background(Options::default());
    seed(
        &server,
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "NamespaceConfig", "metadata": {"name": "default", "namespace": "shop"},
            "spec": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "edge", "effect": "NoSchedule"}],
                     "nodeSelector": {"node-pool": "edge"}, "imagePullSecrets": [{"name": "registry-credentials"}]}}),
    );
    seed(
        &server,
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "TrafficInfra", "metadata": {"name": "edge", "namespace": "shop"}}),
    );
    let id = operator_identity(&server);
    let (_weir, metrics) = controller(&server, &id, dir.path());

    // Every child, owned by the TrafficInfra.
    let uid = ti(&server, "shop", "edge")["metadata"]["uid"].as_str().unwrap().to_string();
    for (group, version, plural, name) in CHILDREN {
        let obj = wait_for(&format!("{plural}/{name}"), T, || get(&server, group, version, plural, "shop", name));
        let owner = &obj["metadata"]["ownerReferences"][0];
        assert_eq!(owner["uid"], uid.as_str(), "{plural}/{name}");
        assert_eq!(owner["kind"], "TrafficInfra");
        assert_eq!(owner["controller"], true);
    }
    // Every pod inherits the NamespaceConfig's scheduling settings.
    for name in ["edge-xds", "edge-envoy"] {
        let pod = &get(&server, "apps", "v1", "deployments", "shop", name).unwrap()["spec"]["template"]["spec"];
        assert_eq!(pod["nodeSelector"]["node-pool"], "edge", "{name}");
        assert_eq!(pod["tolerations"][0]["key"], "dedicated", "{name}");
        assert_eq!(pod["imagePullSecrets"][0]["name"], "registry-credentials", "{name}");
    }
    let t = wait_phase(&server, "shop", "edge", "Deploying");
    assert_eq!(t["status"]["xdsEndpoint"], "edge-xds.shop.svc:18000");
    run_operator_made_xds(&server, dir.path());

    // Children become ready: Ready, with the load balancer's hostname as the endpoint.
    for name in ["edge-xds", "edge-envoy"] {
        write(
            &server,
            ("apps", "v1", "deployments"),
            "shop",
            name,
            json!({"status": {"replicas": 2, "availableReplicas": 2}}),
            true,
        );
    }
    write(
        &server,
        ("", "v1", "services"),
        "shop",
        "edge-envoy",
        json!({"status": {"loadBalancer": {"ingress": [{"hostname": "edge.elb.example.com"}]}}}),
        true,
    );
    let t = wait_phase(&server, "shop", "edge", "Ready");
    assert_eq!(t["status"]["envoyEndpoint"], "edge.elb.example.com");
    assert_eq!(condition(&t, "Ready")["status"], "True");
    // Nothing changes, nothing is rewritten: two more passes write no status.
    let status_writes = || counter(&metrics, "weir_infra_writes_total", &[("op", "status")]);
    let passes = || counter(&metrics, "weir_infra_reconcile_total", &[("result", "success")]);
    let (writes, start) = (status_writes(), passes());
    assert!(writes >= 2.0, "status writes counted: {writes}");
    wait_for("two more infra passes", T, || (passes() >= start + 2.0).then_some(()));
    assert_eq!(status_writes(), writes, "an unchanged status was written again");

    // A spec change is followed: fixed replicas, no HPA.
    write(
        &server,
        ("weir.dev", "v1alpha1", "trafficinfras"),
        "shop",
        "edge",
        json!({"spec": {"envoy": {"replicas": 3, "hpa": {"enabled": false}}}}),
        false,
    );
    wait_for("envoy Deployment with 3 replicas", T, || {
        let d = get(&server, "apps", "v1", "deployments", "shop", "edge-envoy")?;
        (d["spec"]["replicas"] == 3).then_some(())
    });
    wait_for("the HPA deleted", T, || {
        get(&server, "autoscaling", "v2", "horizontalpodautoscalers", "shop", "edge-envoy-hpa").is_none().then_some(())
    });

    // A second TrafficInfra in the namespace: Failed, nothing created for it.
    seed(
        &server,
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "TrafficInfra", "metadata": {"name": "zz-second", "namespace": "shop"}}),
    );
    let t = wait_phase(&server, "shop", "zz-second", "Failed");
    assert!(t["status"]["message"].as_str().unwrap().contains("already has TrafficInfra edge"), "{t}");
    assert_eq!(condition(&t, "Accepted")["reason"], "DuplicateTrafficInfra");
    assert!(get(&server, "apps", "v1", "deployments", "shop", "zz-second-xds").is_none());
    assert_eq!(ti(&server, "shop", "edge")["status"]["phase"], "Ready");

    // A namespace without NamespaceConfig: Pending, nothing created.
    seed(
        &server,
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "TrafficInfra", "metadata": {"name": "edge", "namespace": "lonely"}}),
    );
    let t = wait_phase(&server, "lonely", "edge", "Pending");
    assert_eq!(condition(&t, "NamespaceConfigured")["reason"], "NamespaceConfigMissing");
    assert!(get(&server, "", "v1", "serviceaccounts", "lonely", "edge-xds").is_none());

    // Policies get their Accepted condition.
    seed(
        &server,
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "BackendTrafficPolicy",
        "metadata": {"name": "bad", "namespace": "shop"},
        "spec": {"targetRef": {"kind": "TrafficInfra", "group": "weir.dev", "name": "edge"}, "timeouts": {"connectTimeout": "2 parsecs"}}}),
    );
    seed(
        &server,
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "BackendTrafficPolicy",
        "metadata": {"name": "good", "namespace": "shop"},
        "spec": {"targetRef": {"kind": "TrafficInfra", "group": "weir.dev", "name": "edge"}, "timeouts": {"connectTimeout": "2s"}}}),
    );
    let accepted = |name: &str| {
        let p = get(&server, "weir.dev", "v1alpha1", "backendtrafficpolicies", "shop", name)?;
        let c = p["status"]["conditions"].get(0)?.clone();
        Some((c["status"].as_str()?.to_string(), c["reason"].as_str()?.to_string(), c["message"].as_str()?.to_string()))
    };
    // The older policy is invalid, the newer conflicts with it.
    wait_for("policy conditions", T, || {
        let (b, g) = (accepted("bad")?, accepted("good")?);
        (b.1 == "Invalid" && g.1 == "Conflicted").then_some(())
    });
    assert!(accepted("bad").unwrap().2.contains("2 parsecs"));
    // Once the invalid one is gone, the other is accepted.
    let rt = server.store().find_type("weir.dev", "v1alpha1", "backendtrafficpolicies").unwrap();
    server.store().delete(&rt, "shop", "bad").unwrap();
    wait_for("the remaining policy accepted", T, || (accepted("good")?.0 == "True").then_some(()));

    // Deleting the TrafficInfra removes every child, and the operator does not bring them back.
    let rt = server.store().find_type("weir.dev", "v1alpha1", "trafficinfras").unwrap();
    server.store().delete(&rt, "shop", "edge").unwrap();
    let remaining = || {
        CHILDREN
            .iter()
            .filter(|(g, v, p, n)| get(&server, g, v, p, "shop", n).is_some())
            .map(|c| c.3)
            .collect::<Vec<_>>()
    };
    wait_for("every child of edge gone", T, || remaining().is_empty().then_some(()));
    // The remaining TrafficInfra is now the only one in the namespace, so it gets children; by
    // then any pass that still saw edge has ended, and edge's children stay gone.
    wait_for("zz-second's children", T, || get(&server, "apps", "v1", "deployments", "shop", "zz-second-xds"));
    let start = passes();
    wait_for("two more infra passes", T, || (passes() >= start + 2.0).then_some(()));
    assert_eq!(remaining(), Vec::<&str>::new(), "children of the deleted TrafficInfra came back");
    assert_nothing_denied(&server, &id.user);
}

/// `weir xds` as the operator deployed it for `shop/edge`: its ServiceAccount (bound by the Role the
/// operator wrote), the flags of the operator's Deployment with loopback ports, and the admin token
/// of the operator's Secret. It becomes ready (first snapshot from its namespaced watches), writes
/// need the token, reads do not, and nothing it asks for is denied.
fn run_operator_made_xds(server: &ApiServer, dir: &Path) {
    let deployment = get(server, "apps", "v1", "deployments", "shop", "edge-xds").unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    let sa = pod["serviceAccountName"].as_str().unwrap();
    let binding =
        get(server, "rbac.authorization.k8s.io", "v1", "rolebindings", "shop", "edge-xds-rolebinding").unwrap();
    assert_eq!(binding["subjects"][0]["name"], sa);
    assert_eq!(binding["roleRef"]["name"], "edge-xds-role");
    let secret = get(server, "", "v1", "secrets", "shop", "edge-xds-admin-token").unwrap();
    let token = secret["stringData"]["token"].as_str().or(secret["data"]["token"].as_str()).unwrap().to_string();
    assert!(token.len() >= 32, "a random token: {secret}");
    let token_file = dir.join("xds-admin-token");
    std::fs::write(&token_file, &token).unwrap();

    let args: Vec<String> = serde_json::from_value(pod["containers"][0]["args"].clone()).unwrap();
    let (grpc, admin) = (free_port(), free_port());
    let mut rewritten = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--grpc-addr" => rewritten.extend(["--grpc-addr".to_string(), format!("127.0.0.1:{grpc}")]),
            "--admin-addr" => rewritten.extend(["--admin-addr".to_string(), format!("127.0.0.1:{admin}")]),
            "--admin-token-file" => {
                rewritten.extend(["--admin-token-file".to_string(), token_file.display().to_string()])
            }
            _ => {
                rewritten.push(a.clone());
                continue;
            }
        }
        it.next();
    }
    // Two planner Services for it: blue with one ready endpoint, green with one that is not ready.
    for (strategy, ready) in [("blue", true), ("green", false)] {
        let name = format!("edge-planner-{strategy}");
        seed(
            server,
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop",
                "labels": {"weir.dev/traffic-infra": "edge"}}, "spec": {"ports": [{"name": "grpc", "port": 9001}]}}),
        );
        seed(
            server,
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{name}-1"), "namespace": "shop", "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4", "ports": [{"name": "grpc", "port": 9001}],
                "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": ready}}]}),
        );
    }
    let sa_token = server.service_account_token("shop", sa);
    let mut cmd = Command::new(weir_bin());
    cmd.env("KUBECONFIG", server.write_kubeconfig_for(dir, &sa_token)).env("POD_NAME", "edge-xds-0").args(&rewritten);
    let mut xds = Proc::spawn("edge-xds", &mut cmd, dir);
    let base = format!("http://127.0.0.1:{admin}");
    wait_for("the operator's weir xds ready", T, || http_get(&format!("{base}/readyz")));
    assert!(http_get(&format!("{base}/traffic")).is_some(), "reads stay open");
    let http = reqwest::blocking::Client::new();
    let post = |auth: Option<&str>| {
        let mut req = http.post(format!("{base}/traffic?blue=40&green=60")).timeout(Duration::from_secs(5));
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        req.send().unwrap().status().as_u16()
    };
    assert_eq!(post(None), 401, "writes need the token");
    let dump = http.get(format!("{base}/config_dump")).timeout(Duration::from_secs(5)).send().unwrap();
    assert_eq!(dump.status().as_u16(), 401, "/config_dump needs the token");
    // Live status, written by weir xds: the weights in force (the spec's defaults until the admin
    // API sets others) and every planner Service with its strategy and ready endpoints; the
    // operator's fields stay.
    let services = json!([
        {"name": "edge-planner-blue", "strategy": "blue", "readyEndpoints": 1},
        {"name": "edge-planner-green", "strategy": "green", "readyEndpoints": 0},
    ]);
    wait_for("trafficWeights and discoveredServices from weir xds", T, || {
        let st = ti(server, "shop", "edge")["status"].clone();
        (st["trafficWeights"] == json!({"blue": 100, "green": 0}) && st["discoveredServices"] == services).then_some(())
    });
    assert_eq!(post(Some(&token)), 200);
    // The write went to the state ConfigMap, through the named Role rule.
    wait_for("the weights in edge-xds-state", T, || {
        let cm = get(server, "", "v1", "configmaps", "shop", "edge-xds-state")?;
        cm["data"]["state.json"].as_str()?.contains("\"green\":60").then_some(())
    });
    let st = wait_for("trafficWeights after POST /traffic", T, || {
        let st = ti(server, "shop", "edge")["status"].clone();
        (st["trafficWeights"] == json!({"blue": 40, "green": 60})).then_some(st)
    });
    assert_eq!(st["xdsEndpoint"], "edge-xds.shop.svc:18000", "the operator's fields stay: {st}");
    assert!(st["conditions"].as_array().unwrap().iter().any(|c| c["type"] == "Ready"), "{st}");
    xds.terminate(Duration::from_secs(10));
    let user = format!("system:serviceaccount:shop:{sa}");
    assert_nothing_denied(server, &user);
    // Only its own namespace, never a cluster-wide list, never an Ingress.
    let audit: Vec<_> = server.audit().into_iter().filter(|r| r.user == user && r.resource_request).collect();
    assert!(audit.iter().all(|r| r.namespace == "shop" && r.resource != "ingresses"), "{audit:#?}");
}

/// A Role the operator needs but may not write (its ClusterRole lost `patch` on Roles): the
/// TrafficInfra gets `ChildrenApplied=False` naming the Role and the missing permission, an Event and
/// the metric; every child that was written is owned by the TrafficInfra; once the permission is back,
/// the Role is written and the condition goes.
#[test]
fn a_role_the_operator_may_not_grant_is_named_on_the_traffic_infra() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start_background(Options::default());
    seed(
        &server,
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "NamespaceConfig", "metadata": {"name": "default", "namespace": "shop"}, "spec": {}}),
    );
    let id = operator_identity(&server);
    let role_name =
        id.rendered.of_kind("ClusterRole").next().unwrap()["metadata"]["name"].as_str().unwrap().to_string();
    let cluster_roles = ("rbac.authorization.k8s.io", "v1", "clusterroles");
    let granted =
        get(&server, cluster_roles.0, cluster_roles.1, cluster_roles.2, "", &role_name).unwrap()["rules"].clone();
    // The same rules without Roles: the operator can still write every other child.
    let mut narrowed: Vec<Value> = Vec::new();
    for rule in granted.as_array().unwrap() {
        let mut rule = rule.clone();
        if rule["apiGroups"] == json!(["rbac.authorization.k8s.io"]) {
            let resources = rule["resources"].as_array().unwrap().iter().filter(|r| *r != "roles").cloned().collect();
            rule["resources"] = Value::Array(resources);
        }
        narrowed.push(rule);
    }
    assert_ne!(json!(narrowed), granted, "the chart's operator ClusterRole grants Roles");
    write(&server, cluster_roles, "", &role_name, json!({"rules": narrowed}), false);

    seed(
        &server,
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "TrafficInfra", "metadata": {"name": "edge", "namespace": "shop"}}),
    );
    let (_controller, metrics) = controller(&server, &id, dir.path());

    let cond = wait_for("ChildrenApplied=False on the TrafficInfra", T, || {
        let t = ti(&server, "shop", "edge");
        let c = t["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "ChildrenApplied")?.clone();
        (c["status"] == "False").then_some(c)
    });
    assert_eq!(cond["reason"], "PermissionDenied");
    let message = cond["message"].as_str().unwrap();
    assert!(message.contains("edge-xds-role"), "names the Role: {message}");
    assert!(message.contains("cannot patch resource \"roles\""), "names the missing permission: {message}");

    let events = server.store().type_of(&json!({"apiVersion": "events.k8s.io/v1", "kind": "Event"})).unwrap();
    wait_for("a PermissionDenied Event on the TrafficInfra", T, || {
        let (items, _) = server.store().list(&events, Some("shop"), &Default::default());
        items.iter().find(|e| e["reason"] == "PermissionDenied" && e["regarding"]["name"] == "edge").cloned()
    });
    wait_for("weir_invalid_input_total{kind=permission}", T, || {
        (counter(&metrics, "weir_invalid_input_total", &[("kind", "permission")]) >= 1.0).then_some(())
    });
    // Nothing half-applied without an owner: every child that exists is owned by the TrafficInfra.
    let uid = ti(&server, "shop", "edge")["metadata"]["uid"].clone();
    let mut written = 0;
    for (group, version, plural, name) in CHILDREN {
        if let Some(child) = get(&server, group, version, plural, "shop", name) {
            written += 1;
            let owners = child["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
            assert!(owners.iter().any(|o| o["uid"] == uid && o["kind"] == "TrafficInfra"), "{plural}/{name} unowned");
        }
    }
    assert!(written > 0, "the children the operator may write are written");
    assert!(get(&server, "rbac.authorization.k8s.io", "v1", "roles", "shop", "edge-xds-role").is_none());

    // The permission back: the Role is written and the condition goes.
    write(&server, cluster_roles, "", &role_name, json!({"rules": granted}), false);
    wait_for("the Role once the operator may grant it", T, || {
        get(&server, "rbac.authorization.k8s.io", "v1", "roles", "shop", "edge-xds-role")
    });
    wait_for("ChildrenApplied=False gone", T, || {
        let t = ti(&server, "shop", "edge");
        let gone = t["status"]["conditions"]
            .as_array()
            .is_none_or(|cs| !cs.iter().any(|c| c["type"] == "ChildrenApplied" && c["status"] == "False"));
        gone.then_some(())
    });
}

/// Drift correction: with the resync at 5 minutes, a hand edit of a child (a Deployment's replicas
/// and image, a ConfigMap's data, a Role's rules) is reverted, and a deleted Service recreated,
/// within seconds, because the operator watches its children.
#[test]
fn hand_edits_of_children_are_reverted_within_seconds() {
    const QUICK: Duration = Duration::from_secs(5);
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start_background(Options::default());
    seed(
        &server,
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "NamespaceConfig", "metadata": {"name": "default", "namespace": "shop"}, "spec": {}}),
    );
    seed(
        &server,
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "TrafficInfra", "metadata": {"name": "edge", "namespace": "shop"}}),
    );
    let id = operator_identity(&server);
    let (_weir, metrics) = controller_with_resync(&server, &id, dir.path(), "5m");
    for (group, version, plural, name) in CHILDREN {
        wait_for(&format!("{plural}/{name}"), T, || get(&server, group, version, plural, "shop", name));
    }
    wait_phase(&server, "shop", "edge", "Deploying");
    let passes = || counter(&metrics, "weir_infra_reconcile_total", &[("result", "success")]);
    // Settled: no pass for a second (nothing triggers one but a change).
    let mut last = passes();
    wait_for("the infra manager idle", T, || {
        std::thread::sleep(Duration::from_secs(1));
        let now = passes();
        let idle = now == last;
        last = now;
        idle.then_some(())
    });

    let deployments = ("apps", "v1", "deployments");
    let xds = get(&server, "apps", "v1", "deployments", "shop", "edge-xds").unwrap();
    let image = xds["spec"]["template"]["spec"]["containers"][0]["image"].clone();
    let replicas = xds["spec"]["replicas"].clone();
    write(
        &server,
        deployments,
        "shop",
        "edge-xds",
        json!({"spec": {"replicas": 7, "template": {"spec": {"containers": [{"name": "xds", "image": "evil:1"}]}}}}),
        false,
    );
    let t0 = std::time::Instant::now();
    wait_for("the xDS Deployment's replicas and image reverted", QUICK, || {
        let d = get(&server, "apps", "v1", "deployments", "shop", "edge-xds")?;
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        (d["spec"]["replicas"] == replicas && c["image"] == image && c["args"].is_array()).then_some(())
    });
    eprintln!("the xDS Deployment's replicas and image reverted after {:?}", t0.elapsed());

    let bootstrap = get(&server, "", "v1", "configmaps", "shop", "edge-envoy-bootstrap").unwrap()["data"].clone();
    write(
        &server,
        ("", "v1", "configmaps"),
        "shop",
        "edge-envoy-bootstrap",
        json!({"data": {"envoy.yaml": "{}"}}),
        false,
    );
    let t0 = std::time::Instant::now();
    wait_for("the bootstrap ConfigMap's data reverted", QUICK, || {
        let cm = get(&server, "", "v1", "configmaps", "shop", "edge-envoy-bootstrap")?;
        (cm["data"] == bootstrap).then_some(())
    });
    eprintln!("the bootstrap ConfigMap's data reverted after {:?}", t0.elapsed());

    let roles = ("rbac.authorization.k8s.io", "v1", "roles");
    let rules = get(&server, roles.0, roles.1, roles.2, "shop", "edge-xds-role").unwrap()["rules"].clone();
    write(
        &server,
        roles,
        "shop",
        "edge-xds-role",
        json!({"rules": [{"apiGroups": [""], "resources": ["services"], "verbs": ["list"]}]}),
        false,
    );
    let t0 = std::time::Instant::now();
    wait_for("the xDS Role's rules reverted", QUICK, || {
        let r = get(&server, roles.0, roles.1, roles.2, "shop", "edge-xds-role")?;
        (r["rules"] == rules).then_some(())
    });
    eprintln!("the xDS Role's rules reverted after {:?}", t0.elapsed());

    let services = server.store().find_type("", "v1", "services").unwrap();
    let uid = get(&server, "", "v1", "services", "shop", "edge-envoy").unwrap()["metadata"]["uid"].clone();
    server.store().delete(&services, "shop", "edge-envoy").unwrap();
    let t0 = std::time::Instant::now();
    wait_for("the deleted Envoy Service recreated", QUICK, || {
        let svc = get(&server, "", "v1", "services", "shop", "edge-envoy")?;
        (svc["metadata"]["uid"] != uid && svc["metadata"]["ownerReferences"][0]["kind"] == "TrafficInfra").then_some(())
    });
    eprintln!("the deleted Envoy Service recreated after {:?}", t0.elapsed());

    // The children's readiness reaches the status as it changes, not at the resync.
    for name in ["edge-xds", "edge-envoy"] {
        write(&server, deployments, "shop", name, json!({"status": {"replicas": 2, "availableReplicas": 2}}), true);
    }
    let t0 = std::time::Instant::now();
    let t = wait_for("xdsReady and envoyReady", QUICK, || {
        let t = ti(&server, "shop", "edge");
        (t["status"]["xdsReady"] == true && t["status"]["envoyReady"] == true).then_some(t)
    });
    eprintln!("xdsReady and envoyReady after {:?}", t0.elapsed());
    assert_eq!(condition(&t, "XdsReady")["status"], "True");
    assert_nothing_denied(&server, &id.user);
}

/// The seed's two examples (testdata/seed, verbatim but for apiVersion; the production example's
/// AuthGateway is another product's and is left out) applied to the API server: the children carry
/// the values the seed documents.
#[test]
fn the_seeds_examples_apply_and_produce_what_the_seed_documents() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start_background(Options::default());
    for file in ["traffic-infra-minimal.yaml", "traffic-infra-production.yaml"] {
        let text =
            std::fs::read_to_string(integration_tests::workspace_root().join("testdata/seed").join(file)).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            if v["kind"] != "TrafficInfra" {
                continue;
            }
            let ns = v["metadata"]["namespace"].clone();
            seed(
                &server,
                json!({"apiVersion": "weir.dev/v1alpha1", "kind": "NamespaceConfig", "metadata": {"name": "default", "namespace": ns}, "spec": {}}),
            );
            seed(&server, v);
        }
    }
    let id = operator_identity(&server);
    let (_weir, _metrics) = controller(&server, &id, dir.path());
    let hpa = |ns: &str| {
        wait_for(&format!("{ns}/traffic-envoy-hpa"), T, || {
            get(&server, "autoscaling", "v2", "horizontalpodautoscalers", ns, "traffic-envoy-hpa")
        })
    };
    let targets = |h: &Value| {
        h["spec"]["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["resource"]["name"].as_str().unwrap().to_string(),
                    m["resource"]["target"]["averageUtilization"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };

    // Minimal: the seed's defaults.
    let h = hpa("workspace-freshworks-prod");
    assert_eq!(targets(&h), [("cpu".to_string(), json!(70)), ("memory".to_string(), json!(80))]);
    assert_eq!((h["spec"]["minReplicas"].clone(), h["spec"]["maxReplicas"].clone()), (json!(2), json!(10)));
    let svc = get(&server, "", "v1", "services", "workspace-freshworks-prod", "traffic-envoy").unwrap();
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    let envoy = get(&server, "apps", "v1", "deployments", "workspace-freshworks-prod", "traffic-envoy").unwrap();
    assert_eq!(envoy["spec"]["template"]["spec"]["containers"][0]["image"], "envoyproxy/envoy:v1.31-latest");

    // Production: every value it sets.
    let h = hpa("workspace-prod");
    assert_eq!(targets(&h), [("cpu".to_string(), json!(60)), ("memory".to_string(), json!(70))]);
    assert_eq!((h["spec"]["minReplicas"].clone(), h["spec"]["maxReplicas"].clone()), (json!(3), json!(20)));
    let svc = get(&server, "", "v1", "services", "workspace-prod", "traffic-envoy").unwrap();
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    let xds = get(&server, "apps", "v1", "deployments", "workspace-prod", "traffic-xds").unwrap();
    assert_eq!(xds["spec"]["replicas"], 3);
    let c = &xds["spec"]["template"]["spec"]["containers"][0];
    assert!(c["image"].as_str().unwrap().ends_with(":1.0.14"), "{c}");
    assert_eq!(c["resources"]["requests"], json!({"cpu": "500m", "memory": "512Mi"}));
    let args = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect::<Vec<_>>().join(" ");
    assert!(args.contains("--service myapp-planner-blue --service myapp-planner-green"), "{args}");
    let envoy = get(&server, "apps", "v1", "deployments", "workspace-prod", "traffic-envoy").unwrap();
    assert_eq!(
        envoy["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"],
        json!({"cpu": "1000m", "memory": "1Gi"})
    );
    let t = wait_phase(&server, "workspace-prod", "traffic", "Deploying");
    assert_eq!(t["status"]["xdsEndpoint"], "traffic-xds.workspace-prod.svc:18000");
    assert_eq!(t["spec"]["xds"]["pollInterval"], 3);
    assert_nothing_denied(&server, &id.user);
}
