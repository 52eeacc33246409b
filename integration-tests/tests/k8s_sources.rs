//! End to end: the Gateway API and `type: LoadBalancer` Service sources of the real `weir controller
//! --provider kubernetes` binary, against the in-process test API server under enforced RBAC (the
//! controller runs as the chart's ServiceAccount with the chart's ClusterRole), with the SQLite store
//! and the embedded DNS zone queried over DNS.
//!
//! The API server serves the Gateway API only once its CRDs are created (as a cluster does), so the
//! discovery weir does at start is exercised both ways.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hickory_proto::rr::RecordType;
use integration_tests::apiserver::{ApiServer, Options, ResourceType, Selector, WriteOp};
use integration_tests::chart::{install_controller_identity, ChartIdentity};
use integration_tests::{free_port, free_udp_tcp_port, http_get, metric, wait_for, weir_bin, DnsClient, Proc};
use serde_json::{json, Value};

const CLUSTER: &str = "eu";
const T: Duration = Duration::from_secs(30);
const WEIGHT: &str = "dns.adevinta.com/traffic-weight";
const HOSTNAME: &str = "dns.adevinta.com/hostname";

fn seed(server: &ApiServer, obj: Value) -> Value {
    server.store().create_object(obj).unwrap()
}

fn merge(server: &ApiServer, api_version: &str, kind: &str, ns: &str, name: &str, patch: Value) {
    let rt = server.store().type_of(&json!({"apiVersion": api_version, "kind": kind})).unwrap();
    server.store().write(&rt, ns, name, WriteOp::Merge(patch), false).unwrap();
}

fn slice(ns: &str, service: &str, ready: bool) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("{service}-1"), "namespace": ns,
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4",
           "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": ready}}]})
}

fn set_ready(server: &ApiServer, ns: &str, service: &str, ready: bool) {
    merge(
        server,
        "discovery.k8s.io/v1",
        "EndpointSlice",
        ns,
        &format!("{service}-1"),
        json!({"endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": ready}}]}),
    );
}

fn gateway(annotations: Value, address: Option<&str>) -> Value {
    let mut gw = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "edge", "namespace": "infra", "annotations": annotations},
        "spec": {"gatewayClassName": "example", "listeners": [
            {"name": "http", "protocol": "HTTP", "port": 80, "allowedRoutes": {"namespaces": {"from": "All"}}}]}});
    if let Some(ip) = address {
        gw["status"] = json!({"addresses": [{"type": "IPAddress", "value": ip}]});
    }
    gw
}

fn http_route(name: &str, hostnames: &[&str], backend: &str) -> Value {
    let parent = json!({"name": "edge", "namespace": "infra"});
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": name, "namespace": "default"},
           "spec": {"parentRefs": [parent], "hostnames": hostnames,
                    "rules": [{"backendRefs": [{"name": backend, "port": 80}]}]},
           "status": {"parents": [{"parentRef": parent, "controllerName": "example.com/gateway",
                                   "conditions": [{"type": "Accepted", "status": "True"}]}]}})
}

fn lb_service(name: &str, annotations: Value, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "default", "annotations": annotations},
           "spec": {"type": "LoadBalancer", "ports": [{"port": 443}]},
           "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}})
}

fn service(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
           "spec": {"ports": [{"port": 80}]}})
}

fn install_gateway_api(server: &ApiServer) {
    for crd in ResourceType::gateway_api_crds() {
        seed(server, crd);
    }
}

struct Controller {
    proc: Proc,
    metrics: String,
    dns: DnsClient,
}

fn controller(server: &ApiServer, id: &ChartIdentity, dir: &Path) -> Controller {
    let kubeconfig = server.write_kubeconfig_for(dir, &id.token);
    let metrics_port = free_port();
    let dns_port = free_udp_tcp_port();
    let mut cmd = Command::new(weir_bin());
    cmd.env("KUBECONFIG", &kubeconfig)
        .env("WEIR_LOG", "info,weir=debug")
        .args(["controller", "--provider", "kubernetes", "--cluster-name", CLUSTER])
        .args(["--backend-type", "sqlite", "--initial-weight", "100", "--weight-poll-interval", "200ms"])
        .arg("--db")
        .arg(dir.join("weir.db"))
        .args(["--dns-provider", "embedded", "--dns-listen", &format!("127.0.0.1:{dns_port}"), "--record-ttl", "5"])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(["--binding-domain", "example.com", "--allow-all-zero"]);
    let proc = Proc::spawn("weir-controller", &mut cmd, dir);
    Controller { proc, metrics: format!("http://127.0.0.1:{metrics_port}"), dns: DnsClient::new(dns_port) }
}

impl Controller {
    fn metrics(&self) -> String {
        http_get(&format!("{}/metrics", self.metrics)).unwrap_or_default()
    }

    fn record_weight(&self, host: &str) -> Option<f64> {
        metric(&self.metrics(), "weir_record_weight", &[("host", host), ("cluster", CLUSTER)])
    }

    fn wait_weight(&self, host: &str, want: Option<f64>) {
        wait_for(&format!("{host} at weight {want:?}"), T, || (self.record_weight(host) == want).then_some(()));
    }

    fn wait_answer(&mut self, host: &str, rtype: RecordType, want: &str) {
        let name = format!("{host}.");
        wait_for(&format!("{host} {rtype} answering {want}"), T, || {
            let answers = self.dns.query(&name, rtype).ok()?;
            answers.iter().any(|a| a == want).then_some(())
        });
    }
}

fn event(server: &ApiServer, ns: &str, reason: &str, kind: &str, name: &str) -> Option<Value> {
    let events = server.store().type_of(&json!({"apiVersion": "events.k8s.io/v1", "kind": "Event"})).unwrap();
    let (items, _) = server.store().list(&events, Some(ns), &Selector::default());
    items
        .into_iter()
        .find(|e| e["reason"] == reason && e["regarding"]["kind"] == kind && e["regarding"]["name"] == name)
}

fn assert_nothing_denied(server: &ApiServer, id: &ChartIdentity) {
    let mine: Vec<_> = server.audit().into_iter().filter(|r| r.user == id.user).collect();
    let denied: Vec<_> = mine.iter().filter(|r| !r.allowed).collect();
    assert!(denied.is_empty(), "denied to {}: {denied:#?}", id.user);
}

#[test]
fn gateway_routes_and_load_balancer_services_are_published() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start_background(Options::default());
    install_gateway_api(&server);
    // The HTTPRoute takes the Gateway's weight (30) until it has its own; the Service has its own.
    seed(&server, gateway(json!({WEIGHT: "30"}), Some("192.0.2.50")));
    seed(&server, service("default", "web"));
    seed(&server, slice("default", "web", true));
    let route = seed(&server, http_route("web", &["route.example.com", "www.elsewhere.org"], "web"));
    seed(&server, lb_service("envoy", json!({HOSTNAME: "lb.example.com,api.example.com", WEIGHT: "40"}), "192.0.2.60"));
    seed(&server, slice("default", "envoy", true));
    // A ClusterIP Service with the annotation is refused, and changes nothing else.
    let mut internal = service("default", "internal");
    internal["metadata"]["annotations"] = json!({HOSTNAME: "internal.example.com"});
    seed(&server, internal);
    let id = install_controller_identity(&server, json!({"controller": {"clusterName": CLUSTER}}));
    let mut c = controller(&server, &id, dir.path());

    c.wait_answer("route.example.com", RecordType::A, "192.0.2.50");
    c.wait_answer("lb.example.com", RecordType::A, "192.0.2.60");
    c.wait_answer("api.example.com", RecordType::A, "192.0.2.60");
    assert_eq!(c.record_weight("route.example.com"), Some(30.0), "the Gateway's weight annotation");
    assert_eq!(c.record_weight("lb.example.com"), Some(40.0), "the Service's weight annotation");
    assert_eq!(c.record_weight("internal.example.com"), None);
    assert_eq!(c.record_weight("www.elsewhere.org"), None);

    // Refused per host, each with an Event on its object (uid filled in) and the metric.
    let outside = wait_for("an OutsideBindingDomain Event", T, || {
        event(&server, "default", "OutsideBindingDomain", "HTTPRoute", "web")
    });
    assert_eq!(outside["regarding"]["uid"], route["metadata"]["uid"]);
    assert!(outside["note"].as_str().unwrap().contains("www.elsewhere.org"), "{outside}");
    wait_for("a NotLoadBalancer Event", T, || event(&server, "default", "NotLoadBalancer", "Service", "internal"));
    assert!(metric(&c.metrics(), "weir_invalid_input_total", &[("kind", "target")]).is_some_and(|v| v >= 2.0));

    // The route's own annotation wins over the Gateway's.
    merge(
        &server,
        "gateway.networking.k8s.io/v1",
        "HTTPRoute",
        "default",
        "web",
        json!({"metadata": {"annotations": {WEIGHT: "70"}}}),
    );
    c.wait_weight("route.example.com", Some(70.0));
    // Without it, the Gateway's again, and the Gateway's changes follow.
    merge(
        &server,
        "gateway.networking.k8s.io/v1",
        "HTTPRoute",
        "default",
        "web",
        json!({"metadata": {"annotations": {WEIGHT: null}}}),
    );
    c.wait_weight("route.example.com", Some(30.0));
    merge(
        &server,
        "gateway.networking.k8s.io/v1",
        "Gateway",
        "infra",
        "edge",
        json!({"metadata": {"annotations": {WEIGHT: "60"}}}),
    );
    c.wait_weight("route.example.com", Some(60.0));

    // Health: the route's backend loses its endpoints (the Service's hosts keep theirs), then the
    // Service's own endpoints go.
    set_ready(&server, "default", "web", false);
    c.wait_weight("route.example.com", Some(0.0));
    assert_eq!(c.record_weight("lb.example.com"), Some(40.0));
    set_ready(&server, "default", "envoy", false);
    c.wait_weight("lb.example.com", Some(0.0));
    c.wait_weight("api.example.com", Some(0.0));
    set_ready(&server, "default", "web", true);
    c.wait_weight("route.example.com", Some(60.0));

    // A later Service naming the route's host with another load balancer loses (the older route
    // keeps it) and is told so; the host keeps the route's answer.
    std::thread::sleep(Duration::from_millis(1100)); // creationTimestamps have a resolution of 1 s
    let late = seed(&server, lb_service("late", json!({HOSTNAME: "route.example.com,late.example.com"}), "192.0.2.70"));
    seed(&server, slice("default", "late", true));
    c.wait_answer("late.example.com", RecordType::A, "192.0.2.70");
    let conflict = wait_for("a HostConflict Event", T, || event(&server, "default", "HostConflict", "Service", "late"));
    assert_eq!(conflict["regarding"]["uid"], late["metadata"]["uid"]);
    c.wait_answer("route.example.com", RecordType::A, "192.0.2.50");
    assert!(metric(&c.metrics(), "weir_invalid_input_total", &[("kind", "conflict")]).is_some_and(|v| v >= 1.0));

    // The route is deleted: its host goes; the Service's hosts stay.
    let rt =
        server.store().type_of(&json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute"})).unwrap();
    server.store().delete(&rt, "default", "web").unwrap();
    // route.example.com now belongs to the Service `late`.
    c.wait_answer("route.example.com", RecordType::A, "192.0.2.70");
    assert_nothing_denied(&server, &id);
    let audit = server.audit();
    for plural in ["gateways", "httproutes", "grpcroutes", "tlsroutes", "namespaces"] {
        assert!(
            audit.iter().any(|r| r.user == id.user && r.resource == plural && r.verb == "watch"),
            "the controller watches {plural}"
        );
    }
    c.proc.terminate(Duration::from_secs(10));
}

#[test]
fn a_gateway_without_an_address_is_refused_and_gateway_api_is_watched_only_when_served() {
    // Without the Gateway API CRDs, nothing of it is listed or watched, and nothing is denied.
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start_background(Options::default());
    seed(&server, lb_service("envoy", json!({HOSTNAME: "lb.example.com"}), "192.0.2.60"));
    seed(&server, slice("default", "envoy", true));
    let id = install_controller_identity(&server, json!({"controller": {"clusterName": CLUSTER}}));
    let mut c = controller(&server, &id, dir.path());
    c.wait_answer("lb.example.com", RecordType::A, "192.0.2.60");
    let audit = server.audit();
    assert!(
        !audit.iter().any(|r| r.user == id.user && r.api_group == "gateway.networking.k8s.io"),
        "a Gateway API kind that is not served is not requested"
    );
    assert!(audit.iter().any(|r| r.user == id.user && r.path == "/apis/gateway.networking.k8s.io/v1"), "discovery");
    assert_nothing_denied(&server, &id);
    c.proc.terminate(Duration::from_secs(10));

    // With them: a Gateway with no address yet refuses the route's host (Event on the route), and
    // publishes it once the address appears.
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start_background(Options::default());
    install_gateway_api(&server);
    seed(&server, gateway(json!({}), None));
    seed(&server, service("default", "web"));
    seed(&server, slice("default", "web", true));
    seed(&server, http_route("web", &["route.example.com"], "web"));
    let id = install_controller_identity(&server, json!({"controller": {"clusterName": CLUSTER}}));
    let mut c = controller(&server, &id, dir.path());
    wait_for("a GatewayHasNoAddress Event", T, || event(&server, "default", "GatewayHasNoAddress", "HTTPRoute", "web"));
    assert_eq!(c.record_weight("route.example.com"), None, "nothing published before the Gateway has an address");
    let rt = server.store().type_of(&json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway"})).unwrap();
    server
        .store()
        .write(&rt, "infra", "edge", WriteOp::Merge(json!({"status": {"addresses": [{"value": "192.0.2.51"}]}})), true)
        .unwrap();
    c.wait_answer("route.example.com", RecordType::A, "192.0.2.51");
    c.wait_weight("route.example.com", Some(100.0));
    assert_nothing_denied(&server, &id);
    c.proc.terminate(Duration::from_secs(10));
}
