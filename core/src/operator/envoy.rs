//! An effective [`Policy`] → Envoy Cluster and Route fields (xds-api types). Pure. The xDS
//! translator builds its clusters and routes as before and then calls [`apply_to_cluster`] for a
//! planner Service's cluster(s) and [`apply_to_route`] for the routes to it.
//!
//! | policy field | Envoy |
//! |---|---|
//! | circuitBreakers | `Cluster.circuit_breakers.thresholds[DEFAULT]` |
//! | retryStrategy | `RouteAction.retry_policy` (`retry_on`, `num_retries`, `per_try_timeout`, `retry_back_off`; retries avoid hosts already tried) |
//! | healthChecking.active | `Cluster.health_checks[0]` (http / grpc / tcp) |
//! | healthChecking.outlierDetection | `Cluster.outlier_detection` (gateway-error ejection enforced at 100%) |
//! | timeouts.connect | `Cluster.connect_timeout` |
//! | timeouts.idle, maxConnectionDuration | `HttpProtocolOptions.common_http_protocol_options` (typed extension option; the explicit HTTP version the translator set is kept) |
//! | timeouts.request | `RouteAction.timeout` |
//! | loadBalancing.type | `Cluster.lb_policy` |
//! | loadBalancing.sessionAffinity | `RouteAction.hash_policy` (header, cookie, source IP) |
//! | keepAliveProbes | `Cluster.upstream_connection_options.tcp_keepalive` |

use std::time::Duration as StdDuration;

use prost::Message;
use xds_api::pb::envoy::config::cluster::v3 as xcluster;
use xds_api::pb::envoy::config::core::v3 as xcore;
use xds_api::pb::envoy::config::route::v3 as xroute;
use xds_api::pb::google::protobuf::{Any, Duration, UInt32Value};

use super::policy::{CheckKind, HashOn, LbType, Policy};

/// Typed extension option key (and type) of upstream HTTP protocol options.
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// `envoy.extensions.upstreams.http.v3.HttpProtocolOptions`: xds-api does not generate it, so the
/// fields weir sets are declared here with their proto tags. Decoding an existing value keeps
/// `explicit_http_config` (HTTP/1 or HTTP/2) as the translator set it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UpstreamHttpProtocolOptions {
    #[prost(message, optional, tag = "1")]
    pub common_http_protocol_options: Option<xcore::HttpProtocolOptions>,
    #[prost(message, optional, tag = "3")]
    pub explicit_http_config: Option<ExplicitHttpConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ExplicitHttpConfig {
    #[prost(message, optional, tag = "1")]
    pub http_protocol_options: Option<xcore::Http1ProtocolOptions>,
    #[prost(message, optional, tag = "2")]
    pub http2_protocol_options: Option<xcore::Http2ProtocolOptions>,
}

pub fn duration(d: StdDuration) -> Duration {
    Duration { seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX), nanos: d.subsec_nanos() as i32 }
}

fn u32v(v: u32) -> UInt32Value {
    UInt32Value { value: v }
}

/// Sets the cluster-level fields of `policy` on `cluster`. Fields the policy does not set are left
/// as the translator made them.
pub fn apply_to_cluster(policy: &Policy, cluster: &mut xcluster::Cluster) {
    if let Some(cb) = &policy.circuit_breakers {
        cluster.circuit_breakers = Some(xcluster::CircuitBreakers {
            thresholds: vec![xcluster::circuit_breakers::Thresholds {
                priority: xcore::RoutingPriority::Default as i32,
                max_connections: cb.max_connections.map(u32v),
                max_pending_requests: cb.max_pending_requests.map(u32v),
                max_requests: cb.max_requests.map(u32v),
                max_retries: cb.max_retries.map(u32v),
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    if let Some(health) = &policy.health {
        if let Some(a) = &health.active {
            use xcore::health_check::HealthChecker;
            let checker = match &a.kind {
                CheckKind::Http { path } => HealthChecker::HttpHealthCheck(xcore::health_check::HttpHealthCheck {
                    path: path.clone(),
                    ..Default::default()
                }),
                CheckKind::Grpc { service_name } => {
                    HealthChecker::GrpcHealthCheck(xcore::health_check::GrpcHealthCheck {
                        service_name: service_name.clone(),
                        ..Default::default()
                    })
                }
                // Empty send and receive: a successful connect is healthy.
                CheckKind::Tcp => HealthChecker::TcpHealthCheck(Default::default()),
            };
            if matches!(a.kind, CheckKind::Grpc { .. }) {
                // Envoy refuses a gRPC health check on a cluster that does not speak HTTP/2; this
                // makes sure it does unless the translator chose otherwise.
                update_protocol_options(cluster, |_| {});
            }
            cluster.health_checks = vec![xcore::HealthCheck {
                timeout: Some(duration(a.timeout)),
                interval: Some(duration(a.interval)),
                healthy_threshold: Some(u32v(a.healthy_threshold)),
                unhealthy_threshold: Some(u32v(a.unhealthy_threshold)),
                health_checker: Some(checker),
                ..Default::default()
            }];
        }
        if let Some(o) = &health.outlier {
            cluster.outlier_detection = Some(xcluster::OutlierDetection {
                consecutive_5xx: o.consecutive_5xx.map(u32v),
                consecutive_gateway_failure: o.consecutive_gateway_errors.map(u32v),
                // Envoy enforces gateway-failure ejection at 0% unless told otherwise.
                enforcing_consecutive_gateway_failure: o.consecutive_gateway_errors.map(|_| u32v(100)),
                interval: o.interval.map(duration),
                base_ejection_time: o.base_ejection_time.map(duration),
                max_ejection_percent: o.max_ejection_percent.map(u32v),
                ..Default::default()
            });
        }
    }
    if let Some(t) = &policy.timeouts {
        if let Some(c) = t.connect {
            cluster.connect_timeout = Some(duration(c));
        }
        if t.idle.is_some() || t.max_connection_duration.is_some() {
            update_protocol_options(cluster, |opts| {
                let common = opts.common_http_protocol_options.get_or_insert_with(Default::default);
                if let Some(idle) = t.idle {
                    common.idle_timeout = Some(duration(idle));
                }
                if let Some(max) = t.max_connection_duration {
                    common.max_connection_duration = Some(duration(max));
                }
            });
        }
    }
    if let Some(lb) = &policy.load_balancing {
        use xcluster::cluster::LbPolicy;
        cluster.lb_policy = match lb.type_ {
            LbType::RoundRobin => LbPolicy::RoundRobin,
            LbType::LeastRequest => LbPolicy::LeastRequest,
            LbType::RingHash => LbPolicy::RingHash,
            LbType::Maglev => LbPolicy::Maglev,
        } as i32;
    }
    if let Some(k) = &policy.keepalive {
        cluster.upstream_connection_options.get_or_insert_with(Default::default).tcp_keepalive =
            Some(xcore::TcpKeepalive {
                keepalive_probes: k.probes.map(u32v),
                keepalive_time: k.time_secs.map(u32v),
                keepalive_interval: k.interval_secs.map(u32v),
            });
    }
}

/// Decodes the cluster's upstream HTTP protocol options (or starts empty), lets `f` change them,
/// and stores them back. A protocol choice is required; HTTP/2 (what planners speak: gRPC) is
/// chosen when there is none, an existing one is kept.
fn update_protocol_options(cluster: &mut xcluster::Cluster, f: impl FnOnce(&mut UpstreamHttpProtocolOptions)) {
    let mut opts = cluster
        .typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)
        .and_then(|any| UpstreamHttpProtocolOptions::decode(any.value.as_slice()).ok())
        .unwrap_or_default();
    if opts.explicit_http_config.is_none() {
        opts.explicit_http_config =
            Some(ExplicitHttpConfig { http2_protocol_options: Some(Default::default()), ..Default::default() });
    }
    f(&mut opts);
    cluster.typed_extension_protocol_options.insert(
        HTTP_PROTOCOL_OPTIONS.to_string(),
        Any { type_url: format!("type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}"), value: opts.encode_to_vec() },
    );
}

/// Retry predicate that makes a retry pick another host than the ones already tried (without it a
/// hashing load balancer retries on the very host that failed).
pub const PREVIOUS_HOSTS_PREDICATE: &str = "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";

/// Sets the route-level fields of `policy` (retries, request timeout, hash policy) on a route
/// action.
pub fn apply_to_route(policy: &Policy, action: &mut xroute::RouteAction) {
    if let Some(r) = &policy.retry {
        action.retry_policy = Some(xroute::RetryPolicy {
            retry_on: r.retry_on.clone(),
            num_retries: Some(u32v(r.num_retries)),
            per_try_timeout: r.per_try_timeout.map(duration),
            retry_host_predicate: vec![xroute::retry_policy::RetryHostPredicate {
                name: "envoy.retry_host_predicates.previous_hosts".into(),
                config_type: Some(xroute::retry_policy::retry_host_predicate::ConfigType::TypedConfig(Any {
                    type_url: format!("type.googleapis.com/{PREVIOUS_HOSTS_PREDICATE}"),
                    value: Vec::new(),
                })),
            }],
            host_selection_retry_max_attempts: 5,
            retry_back_off: (r.backoff_base.is_some() || r.backoff_max.is_some()).then(|| {
                xroute::retry_policy::RetryBackOff {
                    // Envoy requires a base; 25ms is its own default.
                    base_interval: Some(duration(r.backoff_base.unwrap_or(StdDuration::from_millis(25)))),
                    max_interval: r.backoff_max.map(duration),
                }
            }),
            ..Default::default()
        });
    }
    if let Some(t) = policy.timeouts.as_ref().and_then(|t| t.request) {
        action.timeout = Some(duration(t));
    }
    if let Some(lb) = &policy.load_balancing {
        use xroute::route_action::hash_policy::{ConnectionProperties, Cookie, Header, PolicySpecifier};
        action.hash_policy = lb
            .hash_on
            .iter()
            .map(|h| xroute::route_action::HashPolicy {
                policy_specifier: Some(match h {
                    HashOn::Header(name) => {
                        PolicySpecifier::Header(Header { header_name: name.clone(), ..Default::default() })
                    }
                    HashOn::Cookie(name) => {
                        PolicySpecifier::Cookie(Cookie { name: name.clone(), ..Default::default() })
                    }
                    HashOn::SourceIp => PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true }),
                }),
                terminal: false,
            })
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::BackendTrafficPolicySpec;
    use crate::operator::policy::validate;

    pub(crate) fn every_field() -> Policy {
        let spec: BackendTrafficPolicySpec = serde_yaml::from_str(&format!(
            "targetRef: {{kind: Service, name: planner}}\n{}",
            crate::operator::policy::EVERY_FIELD
        ))
        .unwrap();
        validate(&spec).unwrap()
    }

    #[test]
    fn every_cluster_field_is_set() {
        let mut c = xcluster::Cluster { name: "planner".into(), ..Default::default() };
        apply_to_cluster(&every_field(), &mut c);
        assert_eq!(c.lb_policy, xcluster::cluster::LbPolicy::RingHash as i32);
        assert_eq!(c.connect_timeout, Some(Duration { seconds: 2, nanos: 0 }));
        let t = &c.circuit_breakers.as_ref().unwrap().thresholds[0];
        assert_eq!((t.max_connections, t.max_retries), (Some(u32v(100)), Some(u32v(5))));
        assert_eq!(c.health_checks.len(), 1);
        assert_eq!(c.health_checks[0].timeout, Some(Duration { seconds: 0, nanos: 500_000_000 }));
        let od = c.outlier_detection.as_ref().unwrap();
        assert_eq!(od.consecutive_gateway_failure, Some(u32v(3)));
        assert_eq!(od.enforcing_consecutive_gateway_failure, Some(u32v(100)));
        let ka = c.upstream_connection_options.as_ref().unwrap().tcp_keepalive.as_ref().unwrap();
        assert_eq!(ka.keepalive_time, Some(u32v(60)));
        let opts = UpstreamHttpProtocolOptions::decode(
            c.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].value.as_slice(),
        )
        .unwrap();
        let common = opts.common_http_protocol_options.unwrap();
        assert_eq!(common.idle_timeout, Some(Duration { seconds: 60, nanos: 0 }));
        assert_eq!(common.max_connection_duration, Some(Duration { seconds: 3600, nanos: 0 }));
        assert!(opts.explicit_http_config.unwrap().http2_protocol_options.is_some());
    }

    #[test]
    fn existing_http1_choice_is_kept() {
        let h1 = UpstreamHttpProtocolOptions {
            explicit_http_config: Some(ExplicitHttpConfig {
                http_protocol_options: Some(Default::default()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut c = xcluster::Cluster::default();
        c.typed_extension_protocol_options.insert(
            HTTP_PROTOCOL_OPTIONS.into(),
            Any { type_url: format!("type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}"), value: h1.encode_to_vec() },
        );
        apply_to_cluster(&every_field(), &mut c);
        let opts = UpstreamHttpProtocolOptions::decode(
            c.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].value.as_slice(),
        )
        .unwrap();
        let explicit = opts.explicit_http_config.unwrap();
        assert!(explicit.http_protocol_options.is_some() && explicit.http2_protocol_options.is_none());
    }

    #[test]
    fn every_route_field_is_set() {
        let mut a = xroute::RouteAction::default();
        apply_to_route(&every_field(), &mut a);
        let r = a.retry_policy.unwrap();
        assert_eq!(r.retry_on, "5xx,reset,connect-failure,unavailable,resource-exhausted");
        assert_eq!(r.num_retries, Some(u32v(3)));
        assert_eq!(r.per_try_timeout, Some(Duration { seconds: 0, nanos: 250_000_000 }));
        let b = r.retry_back_off.unwrap();
        assert_eq!(b.max_interval, Some(Duration { seconds: 1, nanos: 0 }));
        assert_eq!(a.timeout, Some(Duration { seconds: 15, nanos: 0 }));
        assert_eq!(a.hash_policy.len(), 3);
    }

    #[test]
    fn an_empty_policy_changes_nothing() {
        let mut c = xcluster::Cluster { name: "x".into(), lb_policy: 1, ..Default::default() };
        let before = c.clone();
        apply_to_cluster(&Policy::default(), &mut c);
        assert_eq!(c, before);
        let mut a = xroute::RouteAction::default();
        apply_to_route(&Policy::default(), &mut a);
        assert_eq!(a, xroute::RouteAction::default());
    }

    /// Through the xDS translator: a TrafficInfra-wide policy and a Service policy reach the
    /// clusters and routes `weir xds` serves.
    #[test]
    fn policies_reach_the_xds_translation() {
        use crate::xds::model::{build, TrafficState, XdsSettings};
        use crate::xds::resources::{translate, ResourceType};
        let yaml = "
apiVersion: weir.dev/v1alpha1
kind: TrafficInfra
metadata: {name: shop, namespace: default}
---
apiVersion: v1
kind: Service
metadata: {name: planner-blue, namespace: default, labels: {weir.dev/traffic-infra: shop, weir.dev/strategy: blue}}
---
apiVersion: v1
kind: Service
metadata: {name: planner-green, namespace: default, labels: {weir.dev/traffic-infra: shop, weir.dev/strategy: green}}
---
apiVersion: weir.dev/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: shop-wide, namespace: default}
spec:
  targetRef: {kind: TrafficInfra, group: weir.dev, name: shop}
  retryStrategy: {numRetries: 2}
  loadBalancing: {type: leastRequest}
---
apiVersion: weir.dev/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: green, namespace: default}
spec:
  targetRef: {kind: Service, name: planner-green}
  loadBalancing: {type: maglev, sessionAffinity: {sourceIp: true}}
";
        let mut snap = crate::model::Snapshot::default();
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let v = <serde_yaml::Value as serde::Deserialize>::deserialize(doc).unwrap();
            match v["kind"].as_str().unwrap() {
                "TrafficInfra" => snap.traffic_infras.push(serde_yaml::from_value(v).unwrap()),
                "Service" => snap.services.push(serde_yaml::from_value(v).unwrap()),
                _ => snap.backend_traffic_policies.push(serde_yaml::from_value(v).unwrap()),
            }
        }
        snap.normalize();
        let settings = XdsSettings { name: "shop".into(), namespace: "default".into(), services: vec![] };
        let state = TrafficState::initial(&Default::default());
        let cfg = build(&snap, &settings, &state);
        let res = translate(&cfg);
        let cluster = |name: &str| {
            let r = res.of(ResourceType::Cluster).find(|r| r.name == name).unwrap();
            xcluster::Cluster::decode(r.body.value.as_slice()).unwrap()
        };
        use xcluster::cluster::LbPolicy;
        assert_eq!(cluster("default/planner-blue").lb_policy, LbPolicy::LeastRequest as i32);
        // The Service policy replaces `loadBalancing` whole.
        assert_eq!(cluster("default/planner-green").lb_policy, LbPolicy::Maglev as i32);
        let rc = res.of(ResourceType::RouteConfiguration).next().unwrap();
        let rc = xroute::RouteConfiguration::decode(rc.body.value.as_slice()).unwrap();
        let weighted = rc.virtual_hosts[0].routes.iter().find(|r| r.name == "weighted").unwrap();
        let Some(xroute::route::Action::Route(action)) = &weighted.action else { panic!("no route action") };
        assert_eq!(action.retry_policy.as_ref().unwrap().num_retries, Some(u32v(2)));
    }
}
