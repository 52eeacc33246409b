//! End to end with the file provider: `weir local` reads a Gateway, an HTTPRoute and a
//! `type: LoadBalancer` Service with `<prefix>/hostname` from a manifest folder and answers their
//! hosts over DNS; editing the files moves the weights (route annotation over the Gateway's) and
//! health, as with the Kubernetes provider (one translator).

use std::time::Duration;

use integration_tests::{wait_for, write_atomic, LocalCluster};

const T: Duration = Duration::from_secs(30);

fn gateway(weight: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: infra, annotations: {{dns.adevinta.com/traffic-weight: "{weight}"}}}}
spec:
  listeners: [{{name: web, protocol: HTTPS, port: 443, hostname: "*.example.com", allowedRoutes: {{namespaces: {{from: All}}}}}}]
status:
  addresses: [{{type: IPAddress, value: 192.0.2.50}}]
"#
    )
}

fn route(annotations: &str, ready: bool) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: shop, annotations: {{{annotations}}}}}
spec:
  parentRefs: [{{name: edge, namespace: infra}}]
  hostnames: [route.example.com, route.example.org]
  rules: [{{backendRefs: [{{name: web, port: 80}}]}}]
status:
  parents: [{{parentRef: {{name: edge, namespace: infra}}, conditions: [{{type: Accepted, status: "True"}}]}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
endpoints: [{{addresses: [10.0.0.1], conditions: {{ready: {ready}}}}}]
"#
    )
}

const SERVICE: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: envoy
  namespace: shop
  annotations: {dns.adevinta.com/hostname: "lb.example.com", dns.adevinta.com/traffic-weight: "40"}
spec: {type: LoadBalancer}
status: {loadBalancer: {ingress: [{ip: 192.0.2.60}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: envoy-1, namespace: shop, labels: {kubernetes.io/service-name: envoy}}
addressType: IPv4
endpoints: [{addresses: [10.0.0.5], conditions: {ready: true}}]
"#;

#[test]
fn routes_and_load_balancer_services_from_manifests() {
    let tmp = tempfile::tempdir().unwrap();
    let manifests = tmp.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    write_atomic(&manifests.join("gateway.yaml"), &gateway("30"));
    write_atomic(&manifests.join("route.yaml"), &route("", true));
    write_atomic(&manifests.join("service.yaml"), SERVICE);
    let c = LocalCluster::start(
        "eu",
        &manifests,
        &tmp.path().join("weir.db"),
        tmp.path(),
        &[
            "--initial-weight",
            "100",
            "--binding-domain",
            "example.com",
            "--allow-all-zero",
            "--manifests-poll-interval",
            "100ms",
        ],
    );
    let weight = |host: &str| c.metric("weir_record_weight", &[("host", host), ("cluster", "eu")]);
    let wait_weight = |host: &str, want: f64| {
        wait_for(&format!("{host} at {want}"), T, || (weight(host) == Some(want)).then_some(()));
    };
    let mut dns = c.dns();
    wait_for("route.example.com answered", T, || (dns.first_a("route.example.com.")? == "192.0.2.50").then_some(()));
    wait_for("lb.example.com answered", T, || (dns.first_a("lb.example.com.")? == "192.0.2.60").then_some(()));
    assert_eq!(weight("route.example.com"), Some(30.0), "the Gateway's weight");
    assert_eq!(weight("lb.example.com"), Some(40.0), "the Service's weight");
    assert_eq!(weight("route.example.org"), None, "outside the listener's hostname: not published");

    // The route's own annotation wins; then its backend loses its endpoint.
    write_atomic(&manifests.join("route.yaml"), &route("dns.adevinta.com/traffic-weight: \"70\"", true));
    wait_weight("route.example.com", 70.0);
    write_atomic(&manifests.join("gateway.yaml"), &gateway("10"));
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(weight("route.example.com"), Some(70.0), "the Gateway's annotation does not override the route's");
    write_atomic(&manifests.join("route.yaml"), &route("dns.adevinta.com/traffic-weight: \"70\"", false));
    wait_weight("route.example.com", 0.0);
    assert_eq!(weight("lb.example.com"), Some(40.0), "the Service's host keeps its weight");
    // Back to the Gateway's weight once the route has none.
    write_atomic(&manifests.join("route.yaml"), &route("", true));
    wait_weight("route.example.com", 10.0);
}
