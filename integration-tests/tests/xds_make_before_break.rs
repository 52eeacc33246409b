//! Make before break with a real Envoy under load: gRPC calls loop through Envoy while the strategy
//! weights switch 20 times and 5 planner services are added and removed; not one call fails (no
//! 5xx, no reset), over state of the world and over delta. The push metrics show which types went
//! out: a weight switch sends routes only.

mod xds_support;

use std::path::Path;
use std::time::Duration;

use integration_tests::{free_port, http_get, metric, wait_for, write_atomic};
use xds_support::*;

/// A planner Service of strategy blue, named `shop-planner-x{i}`, on the `x` backend.
fn extra_service(i: u32, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: shop-planner-x{i}\n  namespace: default\n  \
         labels: {{weir.dev/traffic-infra: shop, weir.dev/strategy: blue}}\nspec: {{ports: [{{port: 9000}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: shop-planner-x{i}-1\n  \
         namespace: default\n  labels: {{kubernetes.io/service-name: shop-planner-x{i}}}\naddressType: IPv4\n\
         ports: [{{port: {port}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"], conditions: {{ready: true}}}}]\n"
    )
}

fn pushes(admin: &str, ty: &str) -> f64 {
    let m = http_get(&format!("{admin}/metrics")).unwrap();
    metric(&m, "weir_xds_pushes_total", &[("type", ty)]).unwrap_or(0.0)
}

#[test]
fn envoy_sotw_serves_every_call_during_weight_switches_and_service_churn() {
    no_failed_call_under_churn("GRPC");
}

#[test]
fn envoy_delta_serves_every_call_during_weight_switches_and_service_churn() {
    no_failed_call_under_churn("DELTA_GRPC");
}

fn no_failed_call_under_churn(api_type: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (blue, green, x, listener) = (free_port(), free_port(), free_port(), free_port());
    let _backends = start_backends(dir.path(), &[("blue", blue), ("green", green), ("x", x)]);
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    write_atomic(&manifests.join("planners.yaml"), &planner_manifests(&[("blue", blue), ("green", green)], listener));
    let weir = start_weir("weir-xds", dir.path(), &manifests, &dir.path().join("state.db"), &[]);
    let (_envoy, envoy) = start_envoy(dir.path(), "envoy-load", weir.grpc_port, api_type);
    wait_envoy_ready(&envoy);

    let mut client = Client::start(&format!("127.0.0.1:{listener}"), None);
    client.wait_ready();
    client.start_loop(4);
    let route_version = || stats(&envoy).and_then(|s| stat(&s, "http.shop.rds.shop.version"));

    // 20 weight switches, each waited for until Envoy has the new route; only routes are sent.
    let (clusters_before, endpoints_before) = (pushes(&weir.admin, "cluster"), pushes(&weir.admin, "endpoint"));
    for i in 0..20 {
        let before = route_version();
        let (b, g) = if i % 2 == 0 { (0, 100) } else { (100, 0) };
        let (code, body) = admin("POST", &format!("{}/traffic?blue={b}&green={g}", weir.admin), None);
        assert_eq!(code, 200, "{body}");
        wait_for("envoy to apply the switch", Duration::from_secs(10), || (route_version() != before).then_some(()));
        std::thread::sleep(Duration::from_millis(100));
    }
    let t = client.stop_loop();
    assert!(t.errors.is_empty(), "calls failed through Envoy during weight switches: {t:?}\n{}", suspicious(&envoy));
    client.start_loop(4);
    assert_eq!(pushes(&weir.admin, "cluster"), clusters_before, "a weight switch sends no clusters");
    assert_eq!(pushes(&weir.admin, "endpoint"), endpoints_before, "a weight switch sends no endpoints");

    // 5 services added and removed while blue carries traffic.
    let active = |envoy: &str| stat_n(envoy, "cluster_manager.active_clusters");
    for i in 0..5 {
        let file = manifests.join(format!("x{i}.yaml"));
        let before = active(&envoy);
        write_atomic(&file, &extra_service(i, x));
        // The service and its endpoint's pin cluster.
        wait_for("envoy to add the service", Duration::from_secs(10), || (active(&envoy) >= before + 2).then_some(()));
        wait_for("calls to reach it", Duration::from_secs(10), || routed_to_x(&envoy, i).then_some(()));
        remove(&file);
        wait_for("envoy to remove the service", Duration::from_secs(10), || (active(&envoy) == before).then_some(()));
    }
    std::thread::sleep(Duration::from_millis(300));
    let t = client.stop_loop();
    assert!(t.errors.is_empty(), "calls failed through Envoy during service churn: {t:?}\n{}", suspicious(&envoy));
    assert!(t.total() > 1000 && t.counts.contains_key("x"), "{t:?}");
    let s = stats(&envoy).unwrap();
    for name in ["http.shop.downstream_rq_5xx", "http.shop.downstream_rq_rx_reset", "http.shop.downstream_rq_tx_reset"]
    {
        assert_eq!(stat(&s, name).as_deref().unwrap_or("0"), "0", "{name}");
    }
    let rejected: Vec<_> = s.iter().filter(|(k, v)| k.ends_with("update_rejected") && v != "0").collect();
    assert!(rejected.is_empty(), "Envoy rejected a config: {rejected:?}");
}

fn routed_to_x(envoy: &str, i: u32) -> bool {
    stat_n(envoy, &format!("cluster.default/shop-planner-x{i}.upstream_rq_completed")) > 0
}

fn remove(file: &Path) {
    std::fs::remove_file(file).unwrap();
}

/// Envoy's non-zero counters that explain a failed call.
fn suspicious(envoy: &str) -> String {
    let s = stats(envoy).unwrap_or_default();
    let bad =
        ["5xx", "reset", "no_route", "no_cluster", "overflow", "fail", "timeout", "rejected", "no_healthy", "destroy"];
    s.iter()
        .filter(|(k, v)| v != "0" && bad.iter().any(|b| k.contains(b)))
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}
