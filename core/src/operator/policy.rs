//! BackendTrafficPolicy resolution: which policies are accepted, and the effective policy of every
//! planner Service. Pure.
//!
//! - A policy targets a TrafficInfra (its Envoy as a whole, and every planner Service it routes to:
//!   the proposal's Gateway) or one planner Service (the proposal's xRoute).
//! - A policy on a Service overrides one on its TrafficInfra field by field at the top level: each
//!   top-level field (`dns`, `protocols`, `circuitBreakers`, `keepAliveProbes`, `retryStrategy`,
//!   `healthChecking`, `timeouts`, `loadBalancing`, `observability`, `matching`, `integrations`) is
//!   taken whole from the Service's policy when it sets it, else from the TrafficInfra's.
//! - Listener-level fields (`observability.metrics.statsPrefix`, `observability.tracing`,
//!   `matching`) configure the Envoy as a whole and are read from the TrafficInfra's policy only;
//!   fields that name one Service (`healthChecking.activeChecks[]` of type grpc,
//!   `observability.metrics.statsName`) are read from a Service's policy only. Set at the other
//!   level, they are left out and the policy gets `FieldsIgnored=True` naming them.
//! - Two policies on the same target: the older (creationTimestamp, then name) is used; the newer
//!   is refused (`Accepted=False`, reason `Conflicted`).
//! - A policy with any invalid value is refused whole (`Accepted=False`, reason `Invalid`), with a
//!   message naming every bad field and the rule it breaks; the API server's schema catches most of
//!   these, the file provider has no API server.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube_core::ResourceExt;
use serde::Serialize;

use crate::crd::{self, BackendTrafficPolicy, GROUP};
use crate::ir::{InputKind, Refusal};
use crate::model::{ObjectRef, Snapshot};

pub const CONDITION_ACCEPTED: &str = "Accepted";
pub const CONDITION_FIELDS_IGNORED: &str = "FieldsIgnored";
pub const REASON_ACCEPTED: &str = "Accepted";
pub const REASON_CONFLICTED: &str = "Conflicted";
pub const REASON_INVALID: &str = "Invalid";
pub const REASON_TARGET_NOT_FOUND: &str = "TargetNotFound";
pub const REASON_NOT_APPLICABLE: &str = "NotApplicableAtTarget";

/// Retries above this are refused: each retry multiplies load on a failing backend.
pub const MAX_RETRIES: i64 = 10;

/// `retryStrategy.http.retryOn` → Envoy `retry_on`.
pub const HTTP_RETRY_ON: &[(&str, &str)] = &[
    ("5xx", "5xx"),
    ("gateway-error", "gateway-error"),
    ("disconnect-reset", "reset"),
    ("connect-fail", "connect-failure"),
    ("retriable-4xx", "retriable-4xx"),
    ("refused-stream", "refused-stream"),
    ("retriable-status-codes", "retriable-status-codes"),
];
/// `retryStrategy.grpc.retryOn` values (the same in Envoy).
pub const GRPC_RETRY_ON: &[&str] = &["cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"];
/// What gRPC retries when `retryStrategy.grpc.retryOn` is absent.
pub const DEFAULT_GRPC_RETRY_ON: &str = "unavailable";
/// The HTTP health-check path when `http.path` is absent.
pub const DEFAULT_HEALTH_PATH: &str = "/healthz";

/// A validated policy: durations parsed, enums closed, defaults filled. Every top-level field is
/// optional; an absent one leaves Envoy's (or the xDS translator's) default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Protocols>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit_breakers: Option<Vec<CircuitBreaker>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepalive: Option<Keepalive>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancing: Option<LoadBalancing>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observability: Option<Observability>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matching: Option<Matching>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub integrations: Option<Integrations>,
}

impl Policy {
    /// `self` (the more specific policy) over `base`, field by field at the top level.
    pub fn over(&self, base: &Policy) -> Policy {
        fn pick<T: Clone>(a: &Option<T>, b: &Option<T>) -> Option<T> {
            a.clone().or_else(|| b.clone())
        }
        Policy {
            dns: pick(&self.dns, &base.dns),
            protocols: pick(&self.protocols, &base.protocols),
            circuit_breakers: pick(&self.circuit_breakers, &base.circuit_breakers),
            keepalive: pick(&self.keepalive, &base.keepalive),
            retry: pick(&self.retry, &base.retry),
            health: pick(&self.health, &base.health),
            timeouts: pick(&self.timeouts, &base.timeouts),
            load_balancing: pick(&self.load_balancing, &base.load_balancing),
            observability: pick(&self.observability, &base.observability),
            matching: pick(&self.matching, &base.matching),
            integrations: pick(&self.integrations, &base.integrations),
        }
    }

    /// Leaves out what cannot apply at `level`, and says what was left out (one message per field).
    pub fn for_level(mut self, level: Level) -> (Policy, Vec<String>) {
        let mut ignored = Vec::new();
        match level {
            Level::Service => {
                if let Some(o) = self.observability.as_mut() {
                    if o.stats_prefix.take().is_some() {
                        ignored.push("observability.metrics.statsPrefix is listener level (the prefix of the Envoy's HTTP stats): only a policy on the TrafficInfra sets it".to_string());
                    }
                    if o.tracing.take().is_some() {
                        ignored.push("observability.tracing is listener level (the Envoy's HTTP connection manager): only a policy on the TrafficInfra sets it".to_string());
                    }
                }
                if self.matching.take().is_some() {
                    ignored.push("matching is listener level (how the Envoy matches every request): only a policy on the TrafficInfra sets it".to_string());
                }
            }
            Level::Infra => {
                if let Some(h) = self.health.as_mut() {
                    let before = h.active.len();
                    let mut index = 0;
                    h.active.retain(|c| {
                        let keep = !matches!(c.kind, CheckKind::Grpc { .. });
                        if !keep {
                            ignored.push(format!("healthChecking.activeChecks[{index}] (type grpc) names one Service's gRPC health service (upstreamName): set it in a policy on that Service"));
                        }
                        index += 1;
                        keep
                    });
                    debug_assert!(h.active.len() <= before);
                }
                if let Some(o) = self.observability.as_mut() {
                    if o.stats_name.take().is_some() {
                        ignored.push("observability.metrics.statsName names one Service's cluster stats: set it in a policy on that Service".to_string());
                    }
                }
            }
        }
        (self, ignored)
    }
}

/// Where a policy is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// A TrafficInfra: its Envoy as a whole (listener level), and the default of every Service.
    Infra,
    /// One planner Service: its cluster and its routes.
    Service,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum DnsType {
    Strict,
    Logical,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Dns {
    #[serde(rename = "type")]
    pub type_: DnsType,
    pub respect_dns_ttl: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Protocols {
    pub ipv4: bool,
    pub ipv6: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Priority {
    Default,
    High,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    pub priority: Priority,
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_parallel_requests: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Keepalive {
    pub idle_time_secs: u32,
    pub interval_secs: u32,
    pub max_probes: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    /// Envoy `retry_on`.
    pub retry_on: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retriable_status_codes: Vec<u32>,
    pub num_retries: u32,
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub per_try_timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub per_try_idle_timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<RetryLimits>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Backoff {
    #[serde(with = "duration")]
    pub base: Duration,
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub max: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum RetryLimits {
    Static { max_parallel: u32 },
    Budget { active_request_percent: u32, min_concurrent: u32 },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub active: Vec<ActiveCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier: Option<Outlier>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum CheckKind {
    #[serde(rename_all = "camelCase")]
    Http {
        path: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        /// Healthy status ranges, inclusive.
        expected_statuses: Vec<(u32, u32)>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        set_headers: Vec<(String, String)>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        add_headers: Vec<(String, String)>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        remove_headers: Vec<String>,
    },
    #[serde(rename_all = "camelCase")]
    Grpc {
        service_name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        authority: Option<String>,
    },
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActiveCheck {
    pub kind: CheckKind,
    #[serde(with = "duration")]
    pub timeout: Duration,
    #[serde(with = "duration")]
    pub interval: Duration,
    #[serde(with = "duration")]
    pub unhealthy_interval: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub log_events: bool,
    pub always_log_failures: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outlier {
    #[serde(with = "duration")]
    pub interval: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_percentage: Option<FailurePercentage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailurePercentage {
    pub threshold: u32,
    pub minimum_requests: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub connect: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub idle: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub cluster_idle: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub max_connection_lifetime: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum LbType {
    RoundRobin,
    LeastRequest,
    RingHash,
    Maglev,
}

impl LbType {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "roundRobin" => Some(LbType::RoundRobin),
            "leastRequest" => Some(LbType::LeastRequest),
            "ringHash" => Some(LbType::RingHash),
            "maglev" => Some(LbType::Maglev),
            _ => None,
        }
    }
    pub fn is_hashing(self) -> bool {
        matches!(self, LbType::RingHash | LbType::Maglev)
    }
}

/// What a consistent hash is computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum HashOn {
    Header {
        name: String,
    },
    Cookie {
        name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
        ttl: Option<Duration>,
    },
    SourceIp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancing {
    #[serde(rename = "type")]
    pub type_: LbType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Observability {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_tag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tracing {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_percentage: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<TracingTag>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum TracingTag {
    Literal {
        name: String,
        value: String,
    },
    #[serde(rename_all = "camelCase")]
    RequestHeader {
        name: String,
        default_value: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Matching {
    pub ignore_authority_port: bool,
    pub strip_authority_port: bool,
    pub ignore_path_parameters: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Integrations {
    pub add_linkerd_headers: bool,
}

pub use crate::duration::parse_duration;

/// Collects every problem of one spec, each naming its field and the rule.
pub(crate) struct Problems(pub(crate) Vec<String>);

impl Problems {
    pub(crate) fn push(&mut self, field: &str, rule: impl std::fmt::Display) {
        self.0.push(format!("{field} {rule}"));
    }

    /// A duration, greater than zero.
    fn duration(&mut self, field: &str, text: &str) -> Option<Duration> {
        match parse_duration(text) {
            Ok(d) if d.is_zero() => {
                self.push(field, format_args!("{text:?}: must be greater than zero"));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.push(field, e);
                None
            }
        }
    }

    fn opt_duration(&mut self, field: &str, text: &Option<String>) -> Option<Duration> {
        text.as_deref().and_then(|t| self.duration(field, t))
    }

    /// A duration in whole seconds that fits Envoy's u32 fields.
    fn seconds(&mut self, field: &str, text: &str) -> u32 {
        let Some(d) = self.duration(field, text) else { return 0 };
        if d.subsec_nanos() != 0 {
            self.push(field, format_args!("{text:?}: must be whole seconds"));
        }
        u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
    }

    /// An integer in `min..=max`.
    pub(crate) fn range(&mut self, field: &str, v: i64, min: i64, max: i64) -> u32 {
        if v < min || v > max {
            self.push(field, format_args!("{v}: must be between {min} and {max}"));
        }
        u32::try_from(v.clamp(0, i64::from(u32::MAX))).unwrap_or(0)
    }

    fn required(&mut self, field: &str, when: &str) {
        self.push(field, format_args!("is required {when}"));
    }

    pub(crate) fn name(&mut self, field: &str, v: &str) {
        if v.is_empty() {
            self.push(field, "is required and may not be empty");
        } else if !v.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c)) {
            self.push(field, format_args!("{v:?}: must be letters, digits, '-', '_' or '.'"));
        }
    }

    pub(crate) fn one_of<'a>(&mut self, field: &str, v: &str, known: &[&'a str]) -> Option<&'a str> {
        let found = known.iter().find(|k| **k == v).copied();
        if found.is_none() {
            if v.is_empty() {
                self.push(field, format_args!("is required (one of {})", known.join(", ")));
            } else {
                self.push(field, format_args!("{v:?}: must be one of {}", known.join(", ")));
            }
        }
        found
    }

    fn only_with(&mut self, field: &str, present: bool, type_field: &str, want: &str, actual: &str) {
        if present && actual != want {
            self.push(field, format_args!("is only for {type_field} {want}, not {actual:?}"));
        }
    }
}

const U32: i64 = u32::MAX as i64;

/// Validates a policy's spec into a [`Policy`], or every problem found (field path, value, rule).
pub fn validate(spec: &crd::BackendTrafficPolicySpec) -> Result<Policy, Vec<String>> {
    let mut p = Problems(Vec::new());

    let dns = spec.dns.as_ref().map(|d| Dns {
        type_: match p.one_of("dns.type", &d.type_, &["logical", "strict"]) {
            Some("logical") => DnsType::Logical,
            _ => DnsType::Strict,
        },
        respect_dns_ttl: d.respect_dns_ttl,
    });

    let protocols = spec.protocols.as_ref().map(|pr| {
        if !pr.enable_ipv4 && !pr.enable_ipv6 {
            p.push("protocols", "enables neither enableIPv4 nor enableIPv6: at least one must be true");
        }
        Protocols { ipv4: pr.enable_ipv4, ipv6: pr.enable_ipv6 }
    });

    let circuit_breakers = spec.circuit_breakers.as_ref().map(|list| circuit_breakers(list, &mut p));

    let keepalive = spec.keep_alive_probes.as_ref().map(|k| Keepalive {
        idle_time_secs: p.seconds("keepAliveProbes.idleTime", &k.idle_time),
        interval_secs: p.seconds("keepAliveProbes.interval", &k.interval),
        max_probes: p.range("keepAliveProbes.maxProbes", k.max_probes, 1, 1000),
    });

    let retry = spec.retry_strategy.as_ref().map(|r| retry(r, &mut p));
    let health = spec.health_checking.as_ref().map(|h| health(h, &mut p));

    let timeouts = spec.timeouts.as_ref().map(|t| Timeouts {
        connect: p.opt_duration("timeouts.connectTimeout", &t.connect_timeout),
        idle: p.opt_duration("timeouts.idleTimeout", &t.idle_timeout),
        cluster_idle: p.opt_duration("timeouts.clusterIdleTimeout", &t.cluster_idle_timeout),
        max_connection_lifetime: p.opt_duration("timeouts.maxConnectionLifetime", &t.max_connection_lifetime),
    });

    let load_balancing = spec.load_balancing.as_ref().and_then(|lb| load_balancing(lb, &mut p));

    let observability = spec.observability.as_ref().map(|o| observability(o, &mut p));

    let matching = spec.matching.as_ref().map(|m| Matching {
        ignore_authority_port: m.ignore_authority_port,
        strip_authority_port: m.strip_authority_port,
        ignore_path_parameters: m.ignore_path_parameters,
    });

    let integrations = spec.integrations.as_ref().map(|i| Integrations { add_linkerd_headers: i.add_linkerd_headers });

    if p.0.is_empty() {
        Ok(Policy {
            dns,
            protocols,
            circuit_breakers,
            keepalive,
            retry,
            health,
            timeouts,
            load_balancing,
            observability,
            matching,
            integrations,
        })
    } else {
        Err(p.0)
    }
}

/// `circuitBreakers`: each priority at most once, every threshold within u32.
fn circuit_breakers(list: &[crd::CircuitBreaker], p: &mut Problems) -> Vec<CircuitBreaker> {
    let mut seen = BTreeSet::new();
    list.iter()
        .enumerate()
        .map(|(i, cb)| {
            let f = |name: &str| format!("circuitBreakers[{i}].{name}");
            let priority = match p.one_of(&f("priority"), &cb.priority, &["default", "high"]) {
                Some("high") => Priority::High,
                _ => Priority::Default,
            };
            if !seen.insert(priority) {
                p.push(&f("priority"), format_args!("{:?}: each priority may appear once", cb.priority));
            }
            CircuitBreaker {
                priority,
                max_connections: p.range(&f("maxConnections"), cb.max_connections, 1, U32),
                max_pending_requests: p.range(&f("maxPendingRequests"), cb.max_pending_requests, 1, U32),
                max_parallel_requests: p.range(&f("maxParallelRequests"), cb.max_parallel_requests, 1, U32),
            }
        })
        .collect()
}

/// `observability`: metric names, the tracing sample percentage and tags.
fn observability(o: &crd::Observability, p: &mut Problems) -> Observability {
    let m = o.metrics.clone().unwrap_or_default();
    for (field, v) in [
        ("observability.metrics.clusterTag", &m.cluster_tag),
        ("observability.metrics.statsName", &m.stats_name),
        ("observability.metrics.statsPrefix", &m.stats_prefix),
    ] {
        if let Some(v) = v {
            p.name(field, v);
        }
    }
    let tracing = o.tracing.as_ref().map(|t| Tracing {
        sample_percentage: t.sample_percentage.map(|v| p.range("observability.tracing.samplePercentage", v, 0, 100)),
        tags: t.add_tracing_tags.iter().flatten().enumerate().filter_map(|(i, tag)| tracing_tag(i, tag, p)).collect(),
    });
    Observability { cluster_tag: m.cluster_tag, stats_name: m.stats_name, stats_prefix: m.stats_prefix, tracing }
}

/// `observability.tracing.addTracingTags[i]`: a literal or a request header, by `type`.
fn tracing_tag(i: usize, tag: &crd::TracingTag, p: &mut Problems) -> Option<TracingTag> {
    let f = |name: &str| format!("observability.tracing.addTracingTags[{i}].{name}");
    if tag.name.is_empty() {
        p.push(&f("name"), "is required and may not be empty");
    }
    p.only_with(&f("literal"), tag.literal.is_some(), "type", "literal", &tag.type_);
    p.only_with(&f("requestHeader"), tag.request_header.is_some(), "type", "requestHeader", &tag.type_);
    match p.one_of(&f("type"), &tag.type_, &["literal", "requestHeader"])? {
        "literal" => match &tag.literal {
            Some(l) => Some(TracingTag::Literal { name: tag.name.clone(), value: l.value.clone() }),
            None => {
                p.required(&f("literal"), "when type is literal");
                None
            }
        },
        _ => match &tag.request_header {
            Some(h) => {
                p.name(&f("name"), &tag.name);
                Some(TracingTag::RequestHeader { name: tag.name.clone(), default_value: h.default_value.clone() })
            }
            None => {
                p.required(&f("requestHeader"), "when type is requestHeader");
                None
            }
        },
    }
}

fn retry(r: &crd::RetryStrategy, p: &mut Problems) -> Retry {
    let mut retry_on = String::new();
    let mut retriable_status_codes = Vec::new();
    p.only_with("retryStrategy.http", r.http.is_some(), "retryStrategy.type", "http", &r.type_);
    p.only_with("retryStrategy.grpc", r.grpc.is_some(), "retryStrategy.type", "grpc", &r.type_);
    match p.one_of("retryStrategy.type", &r.type_, &["grpc", "http"]) {
        Some("http") => match &r.http {
            None => p.required("retryStrategy.http", "when type is http"),
            Some(h) => {
                let known: Vec<&str> = HTTP_RETRY_ON.iter().map(|(k, _)| *k).collect();
                if let Some(on) = p.one_of("retryStrategy.http.retryOn", &h.retry_on, &known) {
                    retry_on = HTTP_RETRY_ON.iter().find(|(k, _)| *k == on).map(|(_, e)| e.to_string()).unwrap();
                }
                let codes = h.retriable_status_codes.as_deref().unwrap_or_default();
                if h.retry_on == "retriable-status-codes" && codes.is_empty() {
                    p.required("retryStrategy.http.retriableStatusCodes", "when retryOn is retriable-status-codes");
                }
                if h.retry_on != "retriable-status-codes" && h.retriable_status_codes.is_some() {
                    p.push(
                        "retryStrategy.http.retriableStatusCodes",
                        format_args!("is only used with retryOn retriable-status-codes, not {:?}", h.retry_on),
                    );
                }
                for (i, c) in codes.iter().enumerate() {
                    retriable_status_codes.push(p.range(
                        &format!("retryStrategy.http.retriableStatusCodes[{i}]"),
                        *c,
                        100,
                        599,
                    ));
                }
            }
        },
        Some(_) => {
            let on = r.grpc.as_ref().and_then(|g| g.retry_on.as_deref()).unwrap_or(DEFAULT_GRPC_RETRY_ON);
            if r.grpc.is_none() {
                p.required("retryStrategy.grpc", "when type is grpc");
            }
            if let Some(on) = p.one_of("retryStrategy.grpc.retryOn", on, GRPC_RETRY_ON) {
                retry_on = on.to_string();
            }
        }
        None => {}
    }
    let num_retries = p.range("retryStrategy.numRetries", r.num_retries, 0, MAX_RETRIES);
    let per = r.per_retry.clone().unwrap_or_default();
    let per_try_timeout = p.opt_duration("retryStrategy.perRetry.timeout", &per.timeout);
    let per_try_idle_timeout = p.opt_duration("retryStrategy.perRetry.idleTimeout", &per.idle_timeout);
    let backoff = per.backoff.as_ref().and_then(|b| {
        if b.base_interval.is_empty() {
            p.required("retryStrategy.perRetry.backoff.baseInterval", "when backoff is set");
            return None;
        }
        let base = p.duration("retryStrategy.perRetry.backoff.baseInterval", &b.base_interval)?;
        let max = p.opt_duration("retryStrategy.perRetry.backoff.maxInterval", &b.max_interval);
        if let Some(m) = max.filter(|m| *m < base) {
            p.push(
                "retryStrategy.perRetry.backoff.maxInterval",
                format_args!("{m:?}: must not be below baseInterval {base:?}"),
            );
        }
        Some(Backoff { base, max })
    });
    let limits = r.retry_limits.as_ref().and_then(|l| {
        let f = "retryStrategy.retryLimits";
        p.only_with(&format!("{f}.static"), l.static_.is_some(), "retryLimits.type", "static", &l.type_);
        p.only_with(&format!("{f}.retryBudget"), l.retry_budget.is_some(), "retryLimits.type", "budget", &l.type_);
        match p.one_of(&format!("{f}.type"), &l.type_, &["budget", "static"])? {
            "static" => match &l.static_ {
                None => {
                    p.required(&format!("{f}.static"), "when type is static");
                    None
                }
                Some(s) => Some(RetryLimits::Static {
                    max_parallel: p.range(&format!("{f}.static.maxParallel"), s.max_parallel, 1, U32),
                }),
            },
            _ => match &l.retry_budget {
                None => {
                    p.required(&format!("{f}.retryBudget"), "when type is budget");
                    None
                }
                Some(b) => Some(RetryLimits::Budget {
                    active_request_percent: p.range(
                        &format!("{f}.retryBudget.activeRequestPercent"),
                        b.active_request_percent,
                        1,
                        100,
                    ),
                    min_concurrent: p.range(&format!("{f}.retryBudget.minConcurrent"), b.min_concurrent, 0, U32),
                }),
            },
        }
    });
    Retry { retry_on, retriable_status_codes, num_retries, per_try_timeout, per_try_idle_timeout, backoff, limits }
}

fn health(h: &crd::HealthChecking, p: &mut Problems) -> Health {
    let active = h.active_checks.iter().flatten().enumerate().filter_map(|(i, a)| active_check(i, a, p)).collect();
    let outlier = h.outlier_detection.as_ref().map(|o| outlier(o, p));
    Health { active, outlier }
}

/// `healthChecking.activeChecks[i]`: its kind by `type`, intervals, thresholds and logging.
fn active_check(i: usize, a: &crd::ActiveCheck, p: &mut Problems) -> Option<ActiveCheck> {
    let f = |name: &str| format!("healthChecking.activeChecks[{i}].{name}");
    p.only_with(&f("http"), a.http.is_some(), "type", "http", &a.type_);
    p.only_with(&f("grpc"), a.grpc.is_some(), "type", "grpc", &a.type_);
    let kind = match p.one_of(&f("type"), &a.type_, &["grpc", "http", "tcp"])? {
        "http" => {
            let Some(h) = &a.http else {
                p.required(&f("http"), "when type is http");
                return None;
            };
            http_check(&f, h, p)
        }
        "grpc" => {
            let Some(g) = &a.grpc else {
                p.required(&f("grpc"), "when type is grpc");
                return None;
            };
            if g.upstream_name.is_empty() {
                p.push(&f("grpc.upstreamName"), "is required and may not be empty");
            }
            CheckKind::Grpc { service_name: g.upstream_name.clone(), authority: g.authority.clone() }
        }
        _ => CheckKind::Tcp,
    };
    let logging = a.logging.clone().unwrap_or_default();
    Some(ActiveCheck {
        kind,
        timeout: p.opt_duration(&f("connectionTimeout"), &a.connection_timeout).unwrap_or(Duration::from_secs(1)),
        interval: p.duration(&f("healthyCheckInterval"), &a.healthy_check_interval).unwrap_or_default(),
        unhealthy_interval: p.duration(&f("unhealthyCheckInterval"), &a.unhealthy_check_interval).unwrap_or_default(),
        healthy_threshold: p.range(&f("healthyThreshold"), a.healthy_threshold, 1, 1000),
        unhealthy_threshold: p.range(&f("unhealthyThreshold"), a.unhealthy_threshold, 1, 1000),
        log_events: logging.enabled,
        always_log_failures: logging.always_log_failures,
    })
}

/// The `http` of an active check; `f` names a field of the check.
fn http_check(f: &dyn Fn(&str) -> String, h: &crd::HttpHealthCheck, p: &mut Problems) -> CheckKind {
    if h.expected_statuses.is_empty() {
        p.push(&f("http.expectedStatuses"), "is required and needs at least one range");
    }
    let expected_statuses = h
        .expected_statuses
        .iter()
        .enumerate()
        .map(|(j, r)| {
            let g = |name: &str| f(&format!("http.expectedStatuses[{j}].{name}"));
            let min = p.range(&g("min"), r.min, 100, 599);
            let max = p.range(&g("max"), r.max, 100, 599);
            if r.min > r.max {
                p.push(&g("max"), format_args!("{}: must not be below min {}", r.max, r.min));
            }
            (min, max)
        })
        .collect();
    let path = h.path.clone().unwrap_or_else(|| DEFAULT_HEALTH_PATH.into());
    if !path.starts_with('/') {
        p.push(&f("http.path"), format_args!("{path:?}: must start with /"));
    }
    let headers = |list: &Option<Vec<crd::HeaderNameValue>>, field: &str, p: &mut Problems| {
        list.iter()
            .flatten()
            .enumerate()
            .map(|(j, hv)| {
                p.name(&f(&format!("http.addRequestHeaders.{field}[{j}].name")), &hv.name);
                (hv.name.clone(), hv.value.clone())
            })
            .collect::<Vec<_>>()
    };
    let add = h.add_request_headers.clone().unwrap_or_default();
    let remove_headers: Vec<String> = h.remove_request_headers.clone().unwrap_or_default();
    for (j, name) in remove_headers.iter().enumerate() {
        p.name(&f(&format!("http.removeRequestHeaders[{j}]")), name);
    }
    CheckKind::Http {
        path,
        host: h.hostname.clone(),
        expected_statuses,
        set_headers: headers(&add.set, "set", p),
        add_headers: headers(&add.add, "add", p),
        remove_headers,
    }
}

/// `healthChecking.outlierDetection`.
fn outlier(o: &crd::OutlierDetection, p: &mut Problems) -> Outlier {
    let f = "healthChecking.outlierDetection";
    Outlier {
        interval: p.duration(&format!("{f}.checkInterval"), &o.check_interval).unwrap_or_default(),
        consecutive_5xx: o
            .consecutive_5xx
            .as_ref()
            .map(|c| p.range(&format!("{f}.consecutive5XX.threshold"), c.threshold, 1, U32)),
        failure_percentage: o.failure_percentage.as_ref().map(|fp| FailurePercentage {
            threshold: p.range(&format!("{f}.failurePercentage.threshold"), fp.threshold, 0, 100),
            minimum_requests: p.range(&format!("{f}.failurePercentage.minimumRequests"), fp.minimum_requests, 1, U32),
        }),
    }
}

fn load_balancing(lb: &crd::LoadBalancing, p: &mut Problems) -> Option<LoadBalancing> {
    let type_ = match p.one_of("loadBalancing.type", &lb.type_, &["roundRobin", "leastRequest", "ringHash", "maglev"]) {
        Some(t) => LbType::parse(t).expect("listed above"),
        None => return None,
    };
    let hash_on = lb.session_affinity.as_ref().and_then(|sa| {
        let f = |name: &str| format!("loadBalancing.sessionAffinity.{name}");
        if !type_.is_hashing() {
            p.push(
                "loadBalancing.sessionAffinity",
                format_args!("applies only to type ringHash or maglev, not {:?}", lb.type_),
            );
        }
        p.only_with(&f("cookie"), sa.cookie.is_some(), "sessionAffinity.type", "cookie", &sa.type_);
        p.only_with(&f("header"), sa.header.is_some(), "sessionAffinity.type", "header", &sa.type_);
        match p.one_of(&f("type"), &sa.type_, &["cookie", "header", "sourceIp"])? {
            "cookie" => {
                let Some(c) = &sa.cookie else {
                    p.required(&f("cookie"), "when type is cookie");
                    return None;
                };
                p.name(&f("cookie.name"), &c.name);
                if let Some(path) = c.path.as_deref().filter(|path| !path.starts_with('/')) {
                    p.push(&f("cookie.path"), format_args!("{path:?}: must start with /"));
                }
                Some(HashOn::Cookie {
                    name: c.name.clone(),
                    path: c.path.clone(),
                    ttl: p.opt_duration(&f("cookie.ttl"), &c.ttl),
                })
            }
            "header" => {
                let Some(h) = &sa.header else {
                    p.required(&f("header"), "when type is header");
                    return None;
                };
                p.name(&f("header.name"), &h.name);
                Some(HashOn::Header { name: h.name.to_ascii_lowercase() })
            }
            _ => Some(HashOn::SourceIp),
        }
    });
    Some(LoadBalancing { type_, hash_on })
}

/// The effective policy of one planner Service and the policies it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EffectivePolicy {
    /// The planner Service.
    pub service: ObjectRef,
    /// The accepted policies that contributed, most specific first.
    pub sources: Vec<ObjectRef>,
    pub policy: Policy,
}

/// The outcome for every policy and every planner Service.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resolution {
    /// Per planner Service (namespace/name) that has any policy.
    #[serde(serialize_with = "values")]
    pub effective: BTreeMap<ObjectRef, EffectivePolicy>,
    /// The accepted policy of each TrafficInfra (namespace/name) that has one: the route-level
    /// fields of the weighted route come from it.
    #[serde(skip)]
    pub infra: BTreeMap<ObjectRef, Policy>,
    /// The conditions to write on each policy: `Accepted`, and `FieldsIgnored` when some of its
    /// fields cannot apply at its target.
    #[serde(serialize_with = "keyed")]
    pub conditions: BTreeMap<ObjectRef, Vec<Condition>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refusals: Vec<Refusal>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Infra { namespace: String, name: String },
    Service { namespace: String, name: String },
}

/// Resolves every BackendTrafficPolicy of the snapshot. `now` stamps conditions whose status
/// changed.
pub fn resolve(snapshot: &Snapshot, now: &Time) -> Resolution {
    let mut res = Resolution::default();
    let winners = super::elect(&snapshot.traffic_infras);
    // Planner Services of each (elected) TrafficInfra.
    let mut planners: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for ti in &snapshot.traffic_infras {
        let ns = ti.namespace().unwrap_or_default();
        if winners.get(&ns) == Some(&ti.name_any()) {
            planners.insert((ns, ti.name_any()), super::discovered_services(ti, &snapshot.services));
        }
    }

    // Accepted, validated policies by target, after conflicts.
    let mut by_target: BTreeMap<Target, Vec<&BackendTrafficPolicy>> = BTreeMap::new();
    let mut accepted: BTreeMap<Target, (ObjectRef, Policy)> = BTreeMap::new();
    let refuse = |res: &mut Resolution, btp: &BackendTrafficPolicy, reason: &str, message: String, counts: bool| {
        let me = ObjectRef::of(btp);
        if counts {
            res.refusals.push(Refusal {
                object: me.clone(),
                kind: InputKind::Resource,
                reason: reason.into(),
                message: message.clone(),
            });
        }
        res.conditions.insert(me, vec![condition(btp, CONDITION_ACCEPTED, false, reason, message, now)]);
    };

    for btp in &snapshot.backend_traffic_policies {
        let ns = btp.namespace().unwrap_or_default();
        let t = &btp.spec.target_ref;
        let target = match (t.kind.as_str(), t.group.as_deref().unwrap_or_default()) {
            ("TrafficInfra", "" | GROUP) => Target::Infra { namespace: ns, name: t.name.clone() },
            ("Service", "" | "core") => Target::Service { namespace: ns, name: t.name.clone() },
            (kind, group) => {
                let msg = format!(
                    "targetRef {group}/{kind} {:?} is not a TrafficInfra (group weir.dev) or a Service (core group)",
                    t.name
                );
                refuse(&mut res, btp, REASON_INVALID, msg, true);
                continue;
            }
        };
        by_target.entry(target).or_default().push(btp);
    }

    for (target, mut policies) in by_target {
        policies.sort_by_key(|p| {
            let ts = p.metadata.creation_timestamp.clone();
            (ts.is_none(), ts, p.name_any())
        });
        let (oldest, newer) = policies.split_first().expect("grouped policies are never empty");
        for p in newer {
            let msg = format!(
                "BackendTrafficPolicy {} already targets {}; only the oldest policy per target is used, so this one is ignored: merge them or target something else",
                oldest.name_any(),
                describe(&target)
            );
            refuse(&mut res, p, REASON_CONFLICTED, msg, true);
        }
        let exists = match &target {
            Target::Infra { namespace, name } => planners.contains_key(&(namespace.clone(), name.clone())),
            Target::Service { namespace, name } => {
                planners.iter().any(|((ns, _), svcs)| ns == namespace && svcs.contains(name))
            }
        };
        match validate(&oldest.spec) {
            Err(problems) => {
                let msg = format!("invalid, the whole policy is ignored: {}", problems.join("; "));
                refuse(&mut res, oldest, REASON_INVALID, msg, true);
            }
            Ok(_) if !exists => {
                let msg = format!(
                    "{} does not exist or is not a planner Service of the namespace's TrafficInfra; the policy waits for it",
                    describe(&target)
                );
                refuse(&mut res, oldest, REASON_TARGET_NOT_FOUND, msg, false);
            }
            Ok(policy) => {
                let me = ObjectRef::of(*oldest);
                let level = match target {
                    Target::Infra { .. } => Level::Infra,
                    Target::Service { .. } => Level::Service,
                };
                let (policy, ignored) = policy.for_level(level);
                let mut conditions = vec![condition(
                    oldest,
                    CONDITION_ACCEPTED,
                    true,
                    REASON_ACCEPTED,
                    format!("applies to {}", describe(&target)),
                    now,
                )];
                if !ignored.is_empty() {
                    let msg = format!("not applied at {}: {}", describe(&target), ignored.join("; "));
                    conditions.push(condition(oldest, CONDITION_FIELDS_IGNORED, true, REASON_NOT_APPLICABLE, msg, now));
                }
                res.conditions.insert(me.clone(), conditions);
                accepted.insert(target, (me, policy));
            }
        }
    }

    for ((ns, ti_name), services) in &planners {
        let infra = accepted.get(&Target::Infra { namespace: ns.clone(), name: ti_name.clone() });
        if let Some((_, p)) = infra {
            res.infra.insert(ObjectRef::new("TrafficInfra", ns, ti_name), p.clone());
        }
        for svc in services.iter().collect::<BTreeSet<_>>() {
            let own = accepted.get(&Target::Service { namespace: ns.clone(), name: svc.clone() });
            let (sources, policy) = match (own, infra) {
                (None, None) => continue,
                (Some((s, p)), None) | (None, Some((s, p))) => (vec![s.clone()], p.clone()),
                (Some((s1, p1)), Some((s2, p2))) => (vec![s1.clone(), s2.clone()], p1.over(p2)),
            };
            let service = ObjectRef::new("Service", ns, svc);
            res.effective.insert(service.clone(), EffectivePolicy { service, sources, policy });
        }
    }
    res.refusals.sort();
    res
}

/// The policies one xDS configuration applies: what `weir xds` for TrafficInfra `namespace/name`
/// puts on its clusters and routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyPolicies {
    /// The TrafficInfra-wide policy: the weighted route's retries, request timeout and hash policy,
    /// and the cluster fields of any served Service without a policy of its own.
    pub infra: Option<Policy>,
    /// Effective policy per planner Service, keyed `namespace/name` (the xDS cluster name).
    pub services: BTreeMap<String, Policy>,
}

impl ProxyPolicies {
    /// The policy of the Service `namespace/name`: its effective policy, else the TrafficInfra's.
    pub fn service(&self, qualified: &str) -> Option<&Policy> {
        self.services.get(qualified).or(self.infra.as_ref())
    }
}

/// The snapshot the xDS server translates: every policy that does not validate is replaced by the
/// last version of it (same namespace and name) that did, so that a bad edit never changes what
/// Envoy runs; its `Accepted=False` condition still reports the refusal. `last_good` is the
/// caller's memory across snapshots: updated with every valid policy, and forgetting policies
/// that are gone (deleting a policy does remove it). `None` when nothing was replaced.
pub fn with_last_good(
    snapshot: &Snapshot,
    last_good: &mut BTreeMap<ObjectRef, BackendTrafficPolicy>,
) -> Option<Snapshot> {
    let policies =
        crate::model::keep_last_good(&snapshot.backend_traffic_policies, last_good, |p| validate(&p.spec).is_ok())?;
    Some(Snapshot { backend_traffic_policies: policies, ..snapshot.clone() })
}

/// The accepted policies of TrafficInfra `namespace/name`. Pure: conditions are not needed here,
/// so no clock is read.
pub fn for_proxy(snapshot: &Snapshot, namespace: &str, name: &str) -> ProxyPolicies {
    let epoch = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    let res = resolve(snapshot, &epoch);
    ProxyPolicies {
        infra: res.infra.get(&ObjectRef::new("TrafficInfra", namespace, name)).cloned(),
        services: res
            .effective
            .into_values()
            .filter(|e| e.service.namespace == namespace)
            .map(|e| (format!("{}/{}", e.service.namespace, e.service.name), e.policy))
            .collect(),
    }
}

fn describe(t: &Target) -> String {
    match t {
        Target::Infra { namespace, name } => format!("TrafficInfra {namespace}/{name}"),
        Target::Service { namespace, name } => format!("Service {namespace}/{name}"),
    }
}

/// A condition of type `type_`, keeping the previous transition time when its status did not
/// change.
fn condition(
    btp: &BackendTrafficPolicy,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    now: &Time,
) -> Condition {
    let previous = btp.status.as_ref().map_or(&[][..], |s| &s.conditions[..]);
    super::status::condition(previous, type_, ok, reason, message, btp.metadata.generation, now)
}

// Maps keyed by ObjectRef serialise as lists: YAML complex keys are hard to read.
fn values<S: serde::Serializer, V: Serialize>(m: &BTreeMap<ObjectRef, V>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(m.values())
}

fn keyed<S: serde::Serializer>(m: &BTreeMap<ObjectRef, Vec<Condition>>, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Entry<'a> {
        policy: &'a ObjectRef,
        conditions: &'a [Condition],
    }
    s.collect_seq(m.iter().map(|(policy, conditions)| Entry { policy, conditions }))
}

mod duration {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", d.as_millis()))
    }
}

mod opt_duration {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }
}

/// A BackendTrafficPolicy spec body (without `targetRef`) with every field set: tests and the
/// real-Envoy check of the translation use it.
pub const EVERY_FIELD: &str = "
dns: {type: strict, respectDnsTtl: true}
protocols: {enableIPv4: true, enableIPv6: true}
circuitBreakers:
- {priority: default, maxConnections: 100, maxPendingRequests: 50, maxParallelRequests: 200}
- {priority: high, maxConnections: 10, maxPendingRequests: 5, maxParallelRequests: 20}
keepAliveProbes: {idleTime: 60s, interval: 10s, maxProbes: 3}
retryStrategy:
  type: http
  http: {retryOn: retriable-status-codes, retriableStatusCodes: [502, 503]}
  numRetries: 3
  perRetry:
    timeout: 250ms
    idleTimeout: 100ms
    backoff: {baseInterval: 25ms, maxInterval: 1s}
  retryLimits:
    type: budget
    retryBudget: {activeRequestPercent: 25, minConcurrent: 2}
healthChecking:
  activeChecks:
  - type: http
    connectionTimeout: 500ms
    healthyCheckInterval: 2s
    unhealthyCheckInterval: 1s
    unhealthyThreshold: 3
    healthyThreshold: 2
    logging: {enabled: true, alwaysLogFailures: true}
    http:
      expectedStatuses: [{min: 200, max: 299}, {min: 304, max: 304}]
      path: /ready
      hostname: planner.internal
      addRequestHeaders:
        set: [{name: x-check, value: weir}]
        add: [{name: x-trace, value: hc}]
      removeRequestHeaders: [user-agent]
  - type: grpc
    grpc: {upstreamName: planner.v1.Planner, authority: planner.internal}
  - type: tcp
  outlierDetection:
    checkInterval: 5s
    consecutive5XX: {threshold: 4}
    failurePercentage: {threshold: 80, minimumRequests: 20}
timeouts: {connectTimeout: 2s, idleTimeout: 5m, clusterIdleTimeout: 1m, maxConnectionLifetime: 1h}
loadBalancing:
  type: ringHash
  sessionAffinity:
    type: cookie
    cookie: {name: session, path: /, ttl: 1h}
observability:
  metrics: {clusterTag: shop, statsName: planner, statsPrefix: edge}
  tracing:
    samplePercentage: 10
    addTracingTags:
    - {type: literal, name: team, literal: {value: search}}
    - {type: requestHeader, name: x-user, requestHeader: {defaultValue: anonymous}}
matching: {ignoreAuthorityPort: true, stripAuthorityPort: true, ignorePathParameters: true}
integrations: {addLinkerdHeaders: true}
";

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    fn now() -> Time {
        Time("2026-01-01T00:00:00Z".parse().unwrap())
    }

    fn load(text: &str) -> Snapshot {
        let mut snap = Snapshot::default();
        for doc in serde_yaml::Deserializer::from_str(text) {
            let v = serde_yaml::Value::deserialize(doc).unwrap();
            match v["kind"].as_str().unwrap() {
                "TrafficInfra" => snap.traffic_infras.push(serde_yaml::from_value(v).unwrap()),
                "Service" => snap.services.push(serde_yaml::from_value(v).unwrap()),
                "BackendTrafficPolicy" => snap.backend_traffic_policies.push(serde_yaml::from_value(v).unwrap()),
                other => panic!("unexpected kind {other}"),
            }
        }
        snap.normalize();
        snap
    }

    #[test]
    fn golden_policy_resolution() {
        let dir = crate::golden::testdata("policy");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let Some(stem) = path.file_name().and_then(|f| f.to_str()).and_then(|f| f.strip_suffix(".in.yaml")) else {
                continue;
            };
            let res = resolve(&load(&std::fs::read_to_string(&path).unwrap()), &now());
            crate::golden::assert_golden(&format!("policy/{stem}.out.yaml"), &serde_yaml::to_string(&res).unwrap());
            n += 1;
        }
        assert!(n >= 2);
    }

    fn spec(yaml: &str) -> crd::BackendTrafficPolicySpec {
        serde_yaml::from_str(&format!("targetRef: {{kind: Service, name: planner}}\n{yaml}")).unwrap()
    }

    /// Each rule of the proposal, broken once: the message names the field and the rule.
    #[test]
    fn invalid_values_are_refused_with_messages() {
        let cases = [
            ("dns: {type: sometimes}", "dns.type \"sometimes\": must be one of logical, strict"),
            ("protocols: {enableIPv4: false}", "protocols enables neither"),
            ("circuitBreakers: [{priority: urgent}]", "circuitBreakers[0].priority \"urgent\""),
            ("circuitBreakers: [{maxConnections: 0}]", "circuitBreakers[0].maxConnections 0: must be between 1 and"),
            ("circuitBreakers: [{maxParallelRequests: -1}]", "circuitBreakers[0].maxParallelRequests -1"),
            ("circuitBreakers: [{priority: high}, {priority: high}]", "circuitBreakers[1].priority \"high\": each priority may appear once"),
            ("keepAliveProbes: {idleTime: 1500ms}", "keepAliveProbes.idleTime \"1500ms\": must be whole seconds"),
            ("keepAliveProbes: {maxProbes: 0}", "keepAliveProbes.maxProbes 0: must be between 1 and 1000"),
            ("retryStrategy: {numRetries: 1}", "retryStrategy.type is required (one of grpc, http)"),
            ("retryStrategy: {type: http}", "retryStrategy.http is required when type is http"),
            ("retryStrategy: {type: grpc}", "retryStrategy.grpc is required when type is grpc"),
            ("retryStrategy: {type: http, http: {retryOn: sometimes}}", "retryStrategy.http.retryOn \"sometimes\": must be one of 5xx"),
            ("retryStrategy: {type: http, http: {retryOn: retriable-status-codes}}", "retryStrategy.http.retriableStatusCodes is required when retryOn is retriable-status-codes"),
            ("retryStrategy: {type: http, http: {retryOn: 5xx, retriableStatusCodes: [503]}}", "retriableStatusCodes is only used with retryOn retriable-status-codes"),
            ("retryStrategy: {type: http, http: {retryOn: retriable-status-codes, retriableStatusCodes: [700]}}", "retriableStatusCodes[0] 700: must be between 100 and 599"),
            ("retryStrategy: {type: grpc, grpc: {retryOn: teapot}}", "retryStrategy.grpc.retryOn \"teapot\""),
            ("retryStrategy: {type: grpc, grpc: {}, http: {retryOn: 5xx}}", "retryStrategy.http is only for retryStrategy.type http"),
            ("retryStrategy: {type: http, http: {retryOn: 5xx}, numRetries: 1000000}", "retryStrategy.numRetries 1000000: must be between 0 and 10"),
            ("retryStrategy: {type: http, http: {retryOn: 5xx}, perRetry: {timeout: 2 parsecs}}", "retryStrategy.perRetry.timeout \"2 parsecs\" is not a duration"),
            ("retryStrategy: {type: http, http: {retryOn: 5xx}, perRetry: {backoff: {maxInterval: 1s}}}", "retryStrategy.perRetry.backoff.baseInterval is required"),
            ("retryStrategy: {type: http, http: {retryOn: 5xx}, perRetry: {backoff: {baseInterval: 1s, maxInterval: 100ms}}}", "must not be below baseInterval"),
            ("retryStrategy: {type: http, http: {retryOn: 5xx}, retryLimits: {type: budget}}", "retryStrategy.retryLimits.retryBudget is required when type is budget"),
            ("retryStrategy: {type: http, http: {retryOn: 5xx}, retryLimits: {type: static}}", "retryStrategy.retryLimits.static is required when type is static"),
            ("retryStrategy: {type: http, http: {retryOn: 5xx}, retryLimits: {type: budget, retryBudget: {activeRequestPercent: 0}}}", "retryBudget.activeRequestPercent 0: must be between 1 and 100"),
            ("retryStrategy: {type: http, http: {retryOn: 5xx}, retryLimits: {type: static, static: {maxParallel: 0}}}", "static.maxParallel 0"),
            ("healthChecking: {activeChecks: [{type: icmp}]}", "healthChecking.activeChecks[0].type \"icmp\""),
            ("healthChecking: {activeChecks: [{type: http}]}", "healthChecking.activeChecks[0].http is required when type is http"),
            ("healthChecking: {activeChecks: [{type: grpc}]}", "healthChecking.activeChecks[0].grpc is required when type is grpc"),
            ("healthChecking: {activeChecks: [{type: grpc, grpc: {upstreamName: ''}}]}", "grpc.upstreamName is required"),
            ("healthChecking: {activeChecks: [{type: http, http: {expectedStatuses: []}}]}", "http.expectedStatuses is required and needs at least one range"),
            ("healthChecking: {activeChecks: [{type: http, http: {expectedStatuses: [{min: 99, max: 200}]}}]}", "expectedStatuses[0].min 99: must be between 100 and 599"),
            ("healthChecking: {activeChecks: [{type: http, http: {expectedStatuses: [{min: 200, max: 600}]}}]}", "expectedStatuses[0].max 600"),
            ("healthChecking: {activeChecks: [{type: http, http: {expectedStatuses: [{min: 300, max: 200}]}}]}", "expectedStatuses[0].max 200: must not be below min 300"),
            ("healthChecking: {activeChecks: [{type: tcp, http: {expectedStatuses: [{min: 200, max: 200}]}}]}", "activeChecks[0].http is only for type http"),
            ("healthChecking: {activeChecks: [{type: tcp, healthyThreshold: 0}]}", "activeChecks[0].healthyThreshold 0"),
            ("healthChecking: {activeChecks: [{type: tcp, unhealthyCheckInterval: 0s}]}", "unhealthyCheckInterval \"0s\": must be greater than zero"),
            ("healthChecking: {activeChecks: [{type: http, http: {expectedStatuses: [{min: 200, max: 200}], path: ready}}]}", "http.path \"ready\": must start with /"),
            ("healthChecking: {outlierDetection: {failurePercentage: {threshold: 101}}}", "outlierDetection.failurePercentage.threshold 101: must be between 0 and 100"),
            ("healthChecking: {outlierDetection: {failurePercentage: {minimumRequests: 0}}}", "failurePercentage.minimumRequests 0"),
            ("healthChecking: {outlierDetection: {consecutive5XX: {threshold: 0}}}", "consecutive5XX.threshold 0"),
            ("healthChecking: {outlierDetection: {checkInterval: soon}}", "outlierDetection.checkInterval \"soon\" is not a duration"),
            ("timeouts: {connectTimeout: 2 parsecs}", "timeouts.connectTimeout \"2 parsecs\" is not a duration"),
            ("timeouts: {clusterIdleTimeout: 0s}", "timeouts.clusterIdleTimeout \"0s\": must be greater than zero"),
            ("loadBalancing: {type: random}", "loadBalancing.type \"random\""),
            ("loadBalancing: {type: roundRobin, sessionAffinity: {type: sourceIp}}", "applies only to type ringHash or maglev"),
            ("loadBalancing: {type: ringHash, sessionAffinity: {type: cookie}}", "sessionAffinity.cookie is required when type is cookie"),
            ("loadBalancing: {type: ringHash, sessionAffinity: {type: header}}", "sessionAffinity.header is required when type is header"),
            ("loadBalancing: {type: ringHash, sessionAffinity: {type: cookie, cookie: {name: s, ttl: forever}}}", "sessionAffinity.cookie.ttl \"forever\""),
            ("loadBalancing: {type: ringHash, sessionAffinity: {type: header, header: {name: 'x user'}}}", "sessionAffinity.header.name \"x user\""),
            ("observability: {metrics: {statsPrefix: 'a b'}}", "observability.metrics.statsPrefix \"a b\""),
            ("observability: {tracing: {samplePercentage: 101}}", "observability.tracing.samplePercentage 101: must be between 0 and 100"),
            ("observability: {tracing: {addTracingTags: [{type: literal, name: t}]}}", "addTracingTags[0].literal is required when type is literal"),
            ("observability: {tracing: {addTracingTags: [{type: env, name: t}]}}", "addTracingTags[0].type \"env\""),
        ];
        for (yaml, needle) in cases {
            let errs = validate(&spec(yaml)).unwrap_err();
            assert!(errs.iter().any(|e| e.contains(needle)), "{yaml}: {errs:?} lacks {needle}");
        }
    }

    #[test]
    fn every_field_validates_with_the_proposals_meaning() {
        let p = validate(&spec(super::EVERY_FIELD)).unwrap();
        assert_eq!(p.dns, Some(Dns { type_: DnsType::Strict, respect_dns_ttl: true }));
        assert_eq!(p.protocols, Some(Protocols { ipv4: true, ipv6: true }));
        let cb = p.circuit_breakers.as_ref().unwrap();
        assert_eq!((cb[1].priority, cb[1].max_parallel_requests), (Priority::High, 20));
        assert_eq!(p.keepalive, Some(Keepalive { idle_time_secs: 60, interval_secs: 10, max_probes: 3 }));
        let r = p.retry.as_ref().unwrap();
        assert_eq!(r.retry_on, "retriable-status-codes");
        assert_eq!(r.retriable_status_codes, [502, 503]);
        assert_eq!((r.num_retries, r.per_try_idle_timeout), (3, Some(Duration::from_millis(100))));
        assert_eq!(r.limits, Some(RetryLimits::Budget { active_request_percent: 25, min_concurrent: 2 }));
        let h = p.health.as_ref().unwrap();
        assert_eq!(h.active.len(), 3);
        assert_eq!(h.active[0].unhealthy_interval, Duration::from_secs(1));
        let CheckKind::Http { expected_statuses, .. } = &h.active[0].kind else { panic!() };
        assert_eq!(expected_statuses, &[(200, 299), (304, 304)]);
        let o = h.outlier.as_ref().unwrap();
        assert_eq!(o.failure_percentage, Some(FailurePercentage { threshold: 80, minimum_requests: 20 }));
        assert_eq!(p.timeouts.as_ref().unwrap().cluster_idle, Some(Duration::from_secs(60)));
        let lb = p.load_balancing.as_ref().unwrap();
        assert_eq!(
            lb.hash_on,
            Some(HashOn::Cookie {
                name: "session".into(),
                path: Some("/".into()),
                ttl: Some(Duration::from_secs(3600))
            })
        );
        assert_eq!(p.observability.as_ref().unwrap().tracing.as_ref().unwrap().tags.len(), 2);
        assert!(p.matching.as_ref().unwrap().strip_authority_port);
        assert!(p.integrations.as_ref().unwrap().add_linkerd_headers);
    }

    /// The proposal's defaults, when an object is given with none of its fields.
    #[test]
    fn defaults_are_the_proposals() {
        let p = validate(&spec(
            "dns: {}\nprotocols: {}\ncircuitBreakers: [{}]\nkeepAliveProbes: {}\n\
             retryStrategy: {type: http, http: {retryOn: 5xx}, retryLimits: {type: budget, retryBudget: {}}}\n\
             healthChecking: {activeChecks: [{type: tcp}], outlierDetection: {consecutive5XX: {}, failurePercentage: {}}}",
        ))
        .unwrap();
        assert_eq!(p.dns.unwrap().type_, DnsType::Strict);
        assert_eq!(p.protocols, Some(Protocols { ipv4: true, ipv6: false }));
        assert_eq!(
            p.circuit_breakers.unwrap(),
            [CircuitBreaker {
                priority: Priority::Default,
                max_connections: 1024,
                max_pending_requests: 1024,
                max_parallel_requests: 1024
            }]
        );
        assert_eq!(p.keepalive, Some(Keepalive { idle_time_secs: 7200, interval_secs: 75, max_probes: 9 }));
        let r = p.retry.unwrap();
        assert_eq!(r.num_retries, 1);
        assert_eq!(r.limits, Some(RetryLimits::Budget { active_request_percent: 20, min_concurrent: 3 }));
        let h = p.health.unwrap();
        let a = &h.active[0];
        assert_eq!((a.interval, a.unhealthy_interval), (Duration::from_secs(5), Duration::from_secs(10)));
        assert_eq!((a.healthy_threshold, a.unhealthy_threshold), (1, 3));
        let o = h.outlier.unwrap();
        assert_eq!((o.interval, o.consecutive_5xx), (Duration::from_secs(10), Some(5)));
        assert_eq!(o.failure_percentage, Some(FailurePercentage { threshold: 85, minimum_requests: 50 }));
        let p = validate(&spec(
            "retryStrategy: {type: http, http: {retryOn: 5xx}, retryLimits: {type: static, static: {}}}",
        ))
        .unwrap();
        assert_eq!(p.retry.unwrap().limits, Some(RetryLimits::Static { max_parallel: 3 }));
        let p = validate(&spec("retryStrategy: {type: grpc, grpc: {}}")).unwrap();
        assert_eq!(p.retry.unwrap().retry_on, "unavailable");
    }

    #[test]
    fn fields_that_cannot_apply_at_the_target_are_left_out_and_named() {
        let p = validate(&spec(super::EVERY_FIELD)).unwrap();
        let (svc, ignored) = p.clone().for_level(Level::Service);
        assert_eq!(ignored.len(), 3, "{ignored:?}");
        assert!(ignored[0].starts_with("observability.metrics.statsPrefix is listener level"));
        assert!(ignored[1].starts_with("observability.tracing is listener level"));
        assert!(ignored[2].starts_with("matching is listener level"));
        assert!(svc.matching.is_none() && svc.observability.as_ref().unwrap().stats_prefix.is_none());
        assert_eq!(svc.health.as_ref().unwrap().active.len(), 3);
        let (infra, ignored) = p.for_level(Level::Infra);
        assert_eq!(ignored.len(), 2, "{ignored:?}");
        assert!(ignored[0].starts_with("healthChecking.activeChecks[1] (type grpc)"));
        assert!(ignored[1].starts_with("observability.metrics.statsName"));
        assert_eq!(infra.health.as_ref().unwrap().active.len(), 2);
        assert_eq!(infra.observability.as_ref().unwrap().stats_prefix.as_deref(), Some("edge"));
    }

    #[test]
    fn an_invalid_edit_keeps_the_last_valid_version_until_the_policy_goes() {
        let snap = |body: &str| {
            load(&format!(
                "apiVersion: weir.dev/v1alpha1\nkind: BackendTrafficPolicy\nmetadata: {{name: p, namespace: shop}}\n\
                 spec:\n  targetRef: {{kind: Service, name: planner}}\n  {body}\n"
            ))
        };
        trait Specs {
            fn backend_traffic_policies_specs(&self) -> Vec<crd::BackendTrafficPolicySpec>;
        }
        impl Specs for Snapshot {
            fn backend_traffic_policies_specs(&self) -> Vec<crd::BackendTrafficPolicySpec> {
                self.backend_traffic_policies.iter().map(|p| p.spec.clone()).collect()
            }
        }
        let mut memory = BTreeMap::new();
        let good = snap("timeouts: {connectTimeout: 1s}");
        assert!(with_last_good(&good, &mut memory).is_none());
        let bad = snap("timeouts: {connectTimeout: 0s}");
        let served = with_last_good(&bad, &mut memory).expect("the bad version is replaced");
        assert_eq!(served.backend_traffic_policies_specs(), good.backend_traffic_policies_specs());
        // Still bad: still the last good one; a new valid version replaces it.
        assert_eq!(
            with_last_good(&bad, &mut memory).unwrap().backend_traffic_policies_specs(),
            good.backend_traffic_policies_specs()
        );
        let newer = snap("timeouts: {connectTimeout: 2s}");
        assert!(with_last_good(&newer, &mut memory).is_none());
        assert_eq!(
            with_last_good(&bad, &mut memory).unwrap().backend_traffic_policies_specs(),
            newer.backend_traffic_policies_specs()
        );
        // Deleted: forgotten; an invalid policy never seen valid applies nothing.
        assert!(with_last_good(&Snapshot::default(), &mut memory).is_none());
        assert!(with_last_good(&bad, &mut memory).unwrap().backend_traffic_policies.is_empty());
    }

    #[test]
    fn service_policy_overrides_infra_policy_field_by_field_at_the_top_level() {
        let infra = validate(&spec(
            "timeouts: {connectTimeout: 1s, clusterIdleTimeout: 30s}\ncircuitBreakers: [{maxParallelRequests: 10}]\nloadBalancing: {type: leastRequest}",
        ))
        .unwrap();
        let svc = validate(&spec(
            "timeouts: {idleTimeout: 5s}\nloadBalancing: {type: maglev, sessionAffinity: {type: sourceIp}}",
        ))
        .unwrap();
        let eff = svc.over(&infra);
        // `timeouts` is taken whole from the Service policy: its connect/idle are not inherited.
        assert_eq!(eff.timeouts, Some(Timeouts { idle: Some(Duration::from_secs(5)), ..Default::default() }));
        assert_eq!(eff.circuit_breakers, infra.circuit_breakers);
        assert_eq!(eff.load_balancing.unwrap().type_, LbType::Maglev);
    }
}
