//! The audit's cross-namespace capture (issue 11, finding 2), against the real `weir xds` and a
//! proxyless gRPC client: a Service in another namespace labelled for traffic configuration `shop`
//! (`attacker/evil-blue`) gets no call, not even through `plannerip`, until the TrafficInfra allows
//! its namespace; the admin API refuses to register it.

mod xds_support;

use std::time::Duration;

use integration_tests::{free_port, http_get, metric, wait_for};
use xds_support::*;

/// `attacker/evil-blue`: labelled for `shop`, strategy `blue` by its name, one endpoint on `port`.
fn attacker_manifest(port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: evil-blue\n  namespace: attacker\n  \
         labels: {{weir.dev/traffic-infra: shop}}\nspec: {{ports: [{{port: 9000}}]}}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata:\n  name: evil-canary\n  namespace: attacker\n\
         spec: {{ports: [{{port: 9000}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: evil-blue-1\n  \
         namespace: attacker\n  labels: {{kubernetes.io/service-name: evil-blue}}\naddressType: IPv4\n\
         ports: [{{port: {port}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"], conditions: {{ready: true}}}}]\n"
    )
}

#[test]
fn a_service_in_another_namespace_gets_no_call_until_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let (blue, green, evil, listener) = (free_port(), free_port(), free_port(), free_port());
    let _backends = start_backends(dir.path(), &[("blue", blue), ("green", green), ("evil", evil)]);
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let planners = planner_manifests(&[("blue", blue), ("green", green)], listener);
    std::fs::write(manifests.join("planners.yaml"), &planners).unwrap();
    std::fs::write(manifests.join("attacker.yaml"), attacker_manifest(evil)).unwrap();
    // `--service attacker/evil-canary` names the other namespace too: refused the same way.
    let weir = start_weir(
        "weir-xds",
        dir.path(),
        &manifests,
        &dir.path().join("state.db"),
        &["--service", "attacker/evil-canary"],
    );
    let node = "grpc-proxyless";
    let mut client = Client::start("xds:///shop", Some(&grpc_bootstrap(dir.path(), weir.grpc_port, node)));
    client.wait_ready();
    let (code, body) = admin("POST", &format!("{}/traffic?blue=50&green=50", weir.admin), None);
    assert_eq!(code, 200, "{body}");
    wait_for("the client to ACK a route", Duration::from_secs(10), || acked_route(&weir.admin, node, None));

    let t = client.call(1000, None);
    assert!(t.errors.is_empty(), "{t:?}");
    assert_eq!(t.counts.get("evil"), None, "attacker/evil-blue must get no call: {t:?}");
    assert_share(&t, "blue", 50.0);
    // plannerip to the attacker's endpoint falls through to the weighted route.
    let pinned = client.call(300, Some(&format!("127.0.0.1:{evil}")));
    assert_eq!(pinned.counts.get("evil"), None, "plannerip: {pinned:?}");

    // The admin API refuses to register a Service of another namespace (it exists: 400 all the same).
    let (code, body) = admin("PUT", &format!("{}/services?service=attacker/evil-canary", weir.admin), None);
    assert_eq!(code, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("allowedNamespaces"), "{body}");
    let services = admin("GET", &format!("{}/services", weir.admin), None).1;
    assert!(!services.to_string().contains("attacker/"), "{services}");
    let dump = admin("GET", &format!("{}/config_dump", weir.admin), None).1;
    let refused: Vec<&str> =
        dump["refused_services"].as_array().unwrap().iter().map(|r| r["object"]["name"].as_str().unwrap()).collect();
    assert_eq!(refused, ["evil-blue", "evil-canary"], "{dump}");
    let metrics = http_get(&format!("{}/metrics", weir.admin)).unwrap();
    assert_eq!(metric(&metrics, "weir_invalid_input_total", &[("kind", "namespace")]), Some(2.0), "{metrics}");
    assert_eq!(metric(&metrics, "weir_invalid_input_total", &[("kind", "admin_request")]), Some(1.0), "{metrics}");
    assert!(weir.proc.log().contains("ServiceNamespaceNotAllowed"), "the refusal is logged");

    // The TrafficInfra allows the namespace: the same Service now gets its share (this is what the
    // checks above would see without the boundary).
    let allowed = planners.replacen(
        "spec:\n  envoy:",
        "spec:\n  xds:\n    discovery:\n      allowedNamespaces: [attacker]\n  envoy:",
        1,
    );
    let tmp = manifests.join("planners.yaml.tmp");
    std::fs::write(&tmp, allowed).unwrap();
    std::fs::rename(&tmp, manifests.join("planners.yaml")).unwrap();
    wait_for("attacker/evil-blue to be discovered", Duration::from_secs(10), || {
        let s = admin("GET", &format!("{}/services", weir.admin), None).1;
        s.to_string().contains("attacker/evil-blue").then_some(())
    });
    wait_for("the client to reach evil-blue", Duration::from_secs(10), || {
        client.call(200, None).counts.get("evil").is_some_and(|n| *n > 0).then_some(())
    });
}
