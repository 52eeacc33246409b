//! Who holds what, seen from outside: real Envoys and a proxyless gRPC client on `weir xds`, a real
//! rejection (Envoy cannot take the listener it is sent), and the answers of CSDS (a Python client
//! built on PyPI `xds-protos`) and of `GET /clients`. Then a newcomer Envoy is served the last
//! version a client accepted, and the rejected version is not sent again.

mod xds_support;

use std::time::Duration;

use integration_tests::{free_port, http_get, metric, wait_for, write_atomic};
use serde_json::Value;
use xds_support::*;

const TOKEN: &str = "s3cret-token";

/// The CSDS entries of `node` whose type URL ends in `ty`.
fn entries<'a>(csds: &'a Value, node: &str, ty: &str) -> Vec<&'a Value> {
    let config = csds["config"].as_array().expect("config list");
    let c = config.iter().find(|c| c["node"]["id"] == node).unwrap_or_else(|| panic!("no {node} in {csds}"));
    c["generic_xds_configs"]
        .as_array()
        .map(|v| v.iter().filter(|g| g["type_url"].as_str().unwrap_or("").ends_with(ty)).collect())
        .unwrap_or_default()
}

fn clients(admin_url: &str) -> Value {
    let (code, body) = admin("GET", &format!("{admin_url}/clients"), Some(TOKEN));
    assert_eq!(code, 200, "{body}");
    body
}

#[test]
fn csds_and_clients_show_acks_and_a_real_nack_and_newcomers_get_the_last_good_listener() {
    let dir = tempfile::tempdir().unwrap();
    let (blue, green, listener) = (free_port(), free_port(), free_port());
    let _backends = start_backends(dir.path(), &[("blue", blue), ("green", green)]);
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let planners = manifests.join("planners.yaml");
    write_atomic(&planners, &planner_manifests(&[("blue", blue), ("green", green)], listener));
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let weir = start_weir(
        "weir-xds",
        dir.path(),
        &manifests,
        &dir.path().join("state.db"),
        &["--admin-token-file", token.to_str().unwrap()],
    );

    let (_a, a_admin) = start_envoy(dir.path(), "envoy-a", weir.grpc_port, "GRPC");
    wait_envoy_ready(&a_admin);
    let bootstrap = grpc_bootstrap(dir.path(), weir.grpc_port, "grpc-1");
    let mut grpc = Client::start("xds:///shop", Some(&bootstrap));
    grpc.wait_ready();

    // Both are in sync: CSDS lists what each holds, ACKED.
    let csds_all = wait_for("CSDS to show both clients ACKED", Duration::from_secs(10), || {
        let c = csds(dir.path(), weir.grpc_port, "fetch", None);
        let acked = |node, ty| {
            let e = entries(&c, node, ty);
            !e.is_empty() && e.iter().all(|g| g["client_status"] == "ACKED")
        };
        (acked("envoy-a", "Cluster") && acked("envoy-a", "Listener") && acked("grpc-1", "RouteConfiguration"))
            .then_some(c)
    });
    let names: Vec<&str> = entries(&csds_all, "envoy-a", "Cluster").iter().filter_map(|g| g["name"].as_str()).collect();
    assert!(names.contains(&"default/shop-planner-blue") && names.contains(&"default/shop-planner-green"), "{names:?}");
    let route = entries(&csds_all, "grpc-1", "RouteConfiguration");
    assert_eq!(route[0]["name"], "shop");
    let good_listener = entries(&csds_all, "envoy-a", "Listener")[0]["version_info"].as_str().unwrap().to_string();

    // A real rejection: the listener moves to a port another socket holds (and Envoy refuses to
    // change a listener's address anyway).
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let blocked = blocker.local_addr().unwrap().port();
    write_atomic(&planners, &planner_manifests(&[("blue", blue), ("green", green)], blocked));
    wait_for("envoy-a to reject the listener", Duration::from_secs(20), || {
        (stat_n(&a_admin, "listener_manager.lds.update_rejected") >= 1).then_some(())
    });
    let c = wait_for("CSDS to show the NACK", Duration::from_secs(10), || {
        let c = csds(dir.path(), weir.grpc_port, "stream", Some("envoy-"));
        entries(&c, "envoy-a", "Listener").iter().all(|g| g["client_status"] == "NACKED").then_some(c)
    });
    assert_eq!(c["config"].as_array().unwrap().len(), 1, "the node_id prefix matcher keeps only envoy-a: {c}");
    let nacked = entries(&c, "envoy-a", "Listener")[0];
    assert_eq!(nacked["version_info"], good_listener.as_str(), "Envoy still holds the last good listener: {nacked}");
    let err = &nacked["error_state"];
    assert!(!err["details"].as_str().unwrap_or("").is_empty() && err["last_update_attempt"].is_string(), "{err}");
    assert_ne!(err["version_info"], good_listener.as_str());
    assert!(entries(&c, "envoy-a", "Cluster").iter().all(|g| g["client_status"] == "ACKED"), "{c}");

    // The same from the admin API, behind the token.
    assert_eq!(admin("GET", &format!("{}/clients", weir.admin), None).0, 401);
    let view = clients(&weir.admin);
    let a_listener = &view["envoy-a"]["listener"];
    assert_eq!(a_listener["status"], "NACKED", "{view}");
    assert_eq!(a_listener["acked_version"], good_listener.as_str());
    assert_eq!(a_listener["last_nack"]["version"], err["version_info"]);
    assert!(a_listener["last_nack"]["message"].as_str().unwrap().len() > 5, "{a_listener}");
    assert_eq!(view["grpc-1"]["route"]["status"], "ACKED", "{view}");
    let metrics = http_get(&format!("{}/metrics", weir.admin)).unwrap();
    assert_eq!(metric(&metrics, "weir_xds_nacks_total", &[("type", "listener")]), Some(1.0), "{metrics}");

    // A newcomer gets the last good listener, not the rejected one: it binds it and serves.
    let (_b, b_admin) = start_envoy(dir.path(), "envoy-b", weir.grpc_port, "GRPC");
    wait_envoy_ready(&b_admin);
    assert_eq!(stat_n(&b_admin, "listener_manager.lds.update_rejected"), 0);
    let view = wait_for("envoy-b to ACK its listener", Duration::from_secs(10), || {
        let v = clients(&weir.admin);
        (v["envoy-b"]["listener"]["status"] == "ACKED").then_some(v)
    });
    assert_eq!(view["envoy-b"]["listener"]["acked_version"], good_listener.as_str(), "{view}");
    let mut through_envoy = Client::start(&format!("127.0.0.1:{listener}"), None);
    through_envoy.wait_ready();
    let t = through_envoy.call(300, None);
    assert!(t.errors.is_empty() && t.total() == 300, "{t:?}");

    // The rejected version is not sent again: no further rejection, no further NACK.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(stat_n(&a_admin, "listener_manager.lds.update_rejected"), 1);
    assert_eq!(stat_n(&b_admin, "listener_manager.lds.update_rejected"), 0);
    let metrics = http_get(&format!("{}/metrics", weir.admin)).unwrap();
    assert_eq!(metric(&metrics, "weir_xds_nacks_total", &[("type", "listener")]), Some(1.0));

    // Moving back: every client ends on the listener it can take, nobody rejected anything else.
    write_atomic(&planners, &planner_manifests(&[("blue", blue), ("green", green)], listener));
    wait_for("envoy-a back in sync", Duration::from_secs(10), || {
        let v = clients(&weir.admin);
        (v["envoy-a"]["listener"]["status"] == "ACKED"
            && v["envoy-a"]["listener"]["acked_version"] == good_listener.as_str())
        .then_some(())
    });
    drop(blocker);
}
