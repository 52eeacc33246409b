//! Proxyless gRPC (Python grpcio, `xds:///shop`) against the real `weir xds`: weighted splits,
//! weight changes reaching a connected client, `plannerip` pinning, the admin API's refusals and
//! token, and the state shared between replicas.

mod xds_support;

use std::time::{Duration, Instant};

use integration_tests::{free_port, http_get, metric, wait_for};
use xds_support::*;

const N: u64 = 3000;

fn set_weights(admin_url: &str, token: Option<&str>, query: &str, node: &str) -> Duration {
    let before = acked_route(admin_url, node, token);
    let t0 = Instant::now();
    let (code, body) = admin("POST", &format!("{admin_url}/traffic?{query}"), token);
    assert_eq!(code, 200, "POST /traffic?{query}: {body}");
    wait_for("the client to ACK the new route", Duration::from_secs(10), || {
        acked_route(admin_url, node, token).filter(|v| Some(v) != before.as_ref())
    });
    t0.elapsed()
}

#[test]
fn proxyless_grpc_follows_weights_and_plannerip() {
    let dir = tempfile::tempdir().unwrap();
    let (blue, green, rogue) = (free_port(), free_port(), free_port());
    // `rogue` listens but is in no manifest: nothing may ever reach it.
    let _backends = start_backends(dir.path(), &[("blue", blue), ("green", green), ("rogue", rogue)]);
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(
        manifests.join("planners.yaml"),
        planner_manifests(&[("blue", blue), ("green", green)], free_port()),
    )
    .unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let weir = start_weir(
        "weir-xds",
        dir.path(),
        &manifests,
        &dir.path().join("state.db"),
        &["--admin-token-file", token_file.to_str().unwrap()],
    );
    let token = Some("s3cret");
    let node = "grpc-proxyless";
    let mut client = Client::start("xds:///shop", Some(&grpc_bootstrap(dir.path(), weir.grpc_port, node)));
    client.wait_ready();

    // Defaults from trafficDefaults: blue 100, green 0.
    let (code, body) = admin("GET", &format!("{}/traffic", weir.admin), None);
    assert_eq!((code, body), (200, serde_json::json!({"blue": 100, "green": 0})));

    // Writes need the token; a refused write changes nothing.
    let (code, body) = admin("POST", &format!("{}/traffic?blue=50&green=50", weir.admin), None);
    assert_eq!(code, 401, "{body}");
    // The compare is exact: "Bearer  s3cret" (HTTP itself strips a header's trailing space, not this
    // one) is a different token; the file's newline is not part of the token.
    let (code, body) = admin("POST", &format!("{}/traffic?blue=50&green=50", weir.admin), Some(" s3cret"));
    assert_eq!(code, 401, "{body}");
    for bad in ["blue=abc", "blue=-5", "blue=0&green=0", "red=10", "blue=1.5", ""] {
        let (code, body) = admin("POST", &format!("{}/traffic?{bad}", weir.admin), token);
        assert_eq!(code, 400, "POST /traffic?{bad} must be refused: {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "JSON error message: {body}");
    }
    for (method, q) in [("PUT", ""), ("PUT", "service=missing"), ("DELETE", "service=missing"), ("PUT", "svc=x")] {
        let (code, body) = admin(method, &format!("{}/services?{q}", weir.admin), token);
        assert_eq!(code, 400, "{method} /services?{q}: {body}");
    }
    assert_eq!(admin("GET", &format!("{}/traffic", weir.admin), None).1, serde_json::json!({"blue": 100, "green": 0}));

    for (query, blue_share) in [("blue=50&green=50", 50.0), ("blue=90&green=10", 90.0), ("blue=0&green=100", 0.0)] {
        let took = set_weights(&weir.admin, token, query, node);
        assert!(took < Duration::from_secs(1), "{query}: the client had the new route after {took:?}");
        let t = client.call(N, None);
        assert!(t.errors.is_empty(), "{query}: {t:?}");
        assert_share(&t, "blue", blue_share);
        assert_share(&t, "green", 100.0 - blue_share);
    }

    // plannerip pins to a discovered endpoint, whatever the weights (green is at 100 now).
    let pinned = client.call(300, Some(&format!("127.0.0.1:{blue}")));
    assert_eq!(pinned.counts.get("blue"), Some(&300), "{pinned:?}");
    set_weights(&weir.admin, token, "blue=90&green=10", node);
    let pinned = client.call(300, Some(&format!("127.0.0.1:{green}")));
    assert_eq!(pinned.counts.get("green"), Some(&300), "{pinned:?}");
    // An address weir did not discover falls through to the weighted route and never reaches it.
    for unknown in [format!("127.0.0.1:{rogue}"), "10.9.9.9:1".to_string(), "garbage".to_string()] {
        let t = client.call(300, Some(&unknown));
        assert!(!t.counts.contains_key("rogue") && t.errors.is_empty(), "plannerip {unknown}: {t:?}");
        assert!(t.counts.get("blue").copied().unwrap_or(0) > 200, "weighted 90/10 route for {unknown}: {t:?}");
    }

    let metrics = http_get(&format!("{}/metrics", weir.admin)).unwrap();
    assert_eq!(metric(&metrics, "weir_xds_connected_clients", &[]), Some(1.0), "{metrics}");
    assert!(metric(&metrics, "weir_xds_pushes_total", &[("type", "route")]).unwrap_or(0.0) >= 4.0);
    // Every type's NACK counter is exposed from the start (at 0) and stays there.
    for ty in ["cluster", "endpoint", "listener", "route"] {
        assert_eq!(
            metric(&metrics, "weir_xds_nacks_total", &[("type", ty)]),
            Some(0.0),
            "no {ty} NACK expected: {metrics}"
        );
    }
    assert_eq!(metric(&metrics, "weir_admin_requests_total", &[("path", "/traffic"), ("code", "401")]), Some(2.0));

    // Graceful shutdown: SIGTERM closes the streams and weir exits cleanly.
    let mut weir = weir;
    let status = weir.proc.terminate(Duration::from_secs(10)).expect("weir exits on SIGTERM");
    assert!(status.success(), "{status:?}");
}

#[test]
fn replicas_share_one_state_and_restarts_keep_it() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let (blue, green) = (free_port(), free_port());
    std::fs::write(
        manifests.join("planners.yaml"),
        planner_manifests(&[("blue", blue), ("green", green)], free_port()),
    )
    .unwrap();
    let state = dir.path().join("state.db");
    let a = start_weir("weir-a", dir.path(), &manifests, &state, &[]);
    let b = start_weir("weir-b", dir.path(), &manifests, &state, &[]);

    let (code, _) = admin("POST", &format!("{}/traffic?blue=30&green=70", a.admin), None);
    assert_eq!(code, 200);
    wait_for("replica b to serve a's weights", Duration::from_secs(5), || {
        let dump: serde_json::Value = serde_json::from_str(&http_get(&format!("{}/config_dump", b.admin))?).ok()?;
        (dump["config"]["strategies"] == serde_json::json!({"blue": 30, "green": 70})).then_some(())
    });
    assert_eq!(admin("GET", &format!("{}/traffic", b.admin), None).1, serde_json::json!({"blue": 30, "green": 70}));

    // A labelled service removed on b disappears on a too.
    let (code, body) = admin("DELETE", &format!("{}/services?service=shop-planner-green", b.admin), None);
    assert_eq!(code, 200, "{body}");
    wait_for("replica a to drop the service", Duration::from_secs(5), || {
        let services: serde_json::Value = serde_json::from_str(&http_get(&format!("{}/services", a.admin))?).ok()?;
        (services.as_array()?.len() == 1).then_some(())
    });
    // PUT brings it back.
    let (code, body) = admin("PUT", &format!("{}/services?service=shop-planner-green", a.admin), None);
    assert_eq!(code, 200, "{body}");

    // Endpoint changes in the inputs reach the served endpoints without a restart.
    std::fs::write(manifests.join("planners.yaml"), planner_manifests(&[("blue", blue), ("green", green + 1)], 1))
        .unwrap();
    wait_for("the new green endpoint", Duration::from_secs(5), || {
        let eps = http_get(&format!("{}/endpoints", a.admin))?;
        eps.contains(&format!("127.0.0.1:{}", green + 1)).then_some(())
    });

    // A restart does not forget.
    drop(a);
    drop(b);
    let c = start_weir("weir-c", dir.path(), &manifests, &state, &[]);
    assert_eq!(admin("GET", &format!("{}/traffic", c.admin), None).1, serde_json::json!({"blue": 30, "green": 70}));
    let services: serde_json::Value =
        serde_json::from_str(&http_get(&format!("{}/services", c.admin)).unwrap()).unwrap();
    assert_eq!(services.as_array().unwrap().len(), 2, "{services}");
}

/// `weir xds` serves only its TrafficInfra's `xds.nodeID` (`envoy-proxy` by default): a proxyless
/// client with another node id gets no configuration (its ADS stream ends with PERMISSION_DENIED
/// naming the expected id) and `weir_xds_rejected_nodes_total` counts it; a client with the right id
/// is served. (Every other test here runs `--allow-any-node-id`, the opt-out, with its own ids.)
#[test]
fn only_the_traffic_infras_node_id_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let (blue, green) = (free_port(), free_port());
    let _backends = start_backends(dir.path(), &[("blue", blue), ("green", green)]);
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(
        manifests.join("planners.yaml"),
        planner_manifests(&[("blue", blue), ("green", green)], free_port()),
    )
    .unwrap();
    let weir = start_weir_serving_its_node_only("weir-xds", dir.path(), &manifests, &dir.path().join("state.db"));
    let rejected = || {
        http_get(&format!("{}/metrics", weir.admin))
            .and_then(|m| metric(&m, "weir_xds_rejected_nodes_total", &[]))
            .unwrap_or(0.0)
    };
    assert_eq!(rejected(), 0.0);

    let mut intruder = Client::start("xds:///shop", Some(&grpc_bootstrap(dir.path(), weir.grpc_port, "intruder")));
    let details = intruder.call_details(3);
    assert_eq!(intruder.call(3, None).counts.values().sum::<u64>(), 0, "a foreign node id was served");
    wait_for("the refusal counted", Duration::from_secs(10), || (rejected() >= 1.0).then_some(()));
    let text = format!("{details:?}");
    assert!(text.contains("PERMISSION_DENIED") && text.contains("envoy-proxy"), "the client is told why: {text}");
    let (_, dump) = admin("GET", &format!("{}/config_dump", weir.admin), None);
    assert!(!dump.to_string().contains("intruder"), "a refused node has no stream: {dump}");

    let mut envoy_proxy =
        Client::start("xds:///shop", Some(&grpc_bootstrap(dir.path(), weir.grpc_port, "envoy-proxy")));
    envoy_proxy.wait_ready();
    let t = envoy_proxy.call(50, None);
    assert_eq!(t.counts.get("blue"), Some(&50), "{t:?}");
}
