//! BackendTrafficPolicy resolution: which policies are accepted, and the effective policy of every
//! planner Service. Pure.
//!
//! - A policy targets a TrafficInfra (every planner Service it routes to) or one planner Service.
//! - A policy on a Service overrides one on its TrafficInfra field by field at the top level: each of
//!   `circuitBreakers`, `retryStrategy`, `healthChecking`, `timeouts`, `loadBalancing`,
//!   `keepAliveProbes` is taken whole from the Service's policy when it sets it, else from the
//!   TrafficInfra's.
//! - Two policies on the same target: the older (creationTimestamp, then name) is used; the newer
//!   is refused (`Accepted=False`, reason `Conflicted`).
//! - A policy with any invalid value is refused whole (`Accepted=False`, reason `Invalid`), with a
//!   message naming every bad field; the API server's schema catches most of these, the file
//!   provider has no API server.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube_core::ResourceExt;
use serde::Serialize;

use crate::crd::{self, BackendTrafficPolicy, GROUP};
use crate::ir::{InputKind, Refusal};
use crate::model::{ObjectRef, Snapshot};

pub const CONDITION_ACCEPTED: &str = "Accepted";
pub const REASON_ACCEPTED: &str = "Accepted";
pub const REASON_CONFLICTED: &str = "Conflicted";
pub const REASON_INVALID: &str = "Invalid";
pub const REASON_TARGET_NOT_FOUND: &str = "TargetNotFound";

/// Retries above this are refused: each retry multiplies load on a failing backend.
pub const MAX_RETRIES: u32 = 10;

/// HTTP `retry_on` conditions Envoy knows.
pub const HTTP_RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
];
/// gRPC `retry_on` conditions Envoy knows.
pub const GRPC_RETRY_ON: &[&str] = &["cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"];
/// What is retried when a policy sets retries but no condition.
pub const DEFAULT_RETRY_ON: &str = "connect-failure,refused-stream,reset,5xx";

/// A validated policy: durations parsed, enums closed. Every field is optional; an absent one
/// leaves Envoy's (or the xDS translator's) default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit_breakers: Option<crd::CircuitBreakers>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancing: Option<LoadBalancing>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepalive: Option<Keepalive>,
}

impl Policy {
    /// `self` (the more specific policy) over `base`, field by field at the top level.
    pub fn over(&self, base: &Policy) -> Policy {
        Policy {
            circuit_breakers: self.circuit_breakers.clone().or_else(|| base.circuit_breakers.clone()),
            retry: self.retry.clone().or_else(|| base.retry.clone()),
            health: self.health.clone().or_else(|| base.health.clone()),
            timeouts: self.timeouts.clone().or_else(|| base.timeouts.clone()),
            load_balancing: self.load_balancing.clone().or_else(|| base.load_balancing.clone()),
            keepalive: self.keepalive.clone().or_else(|| base.keepalive.clone()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    /// Envoy `retry_on`: HTTP and gRPC conditions joined.
    pub retry_on: String,
    pub num_retries: u32,
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub per_try_timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub backoff_base: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub backoff_max: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<ActiveCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier: Option<Outlier>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum CheckKind {
    Http { path: String },
    Grpc { service_name: String },
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActiveCheck {
    pub kind: CheckKind,
    #[serde(with = "duration")]
    pub interval: Duration,
    #[serde(with = "duration")]
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outlier {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub interval: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub base_ejection_time: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub connect: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub idle: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub max_connection_duration: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub request: Option<Duration>,
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

/// One input of a consistent hash, in order: the first present one decides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "type", content = "name")]
pub enum HashOn {
    Header(String),
    Cookie(String),
    SourceIp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancing {
    #[serde(rename = "type")]
    pub type_: LbType,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hash_on: Vec<HashOn>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Keepalive {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probes: Option<u32>,
    /// Whole seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_secs: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_secs: Option<u32>,
}

pub use crate::duration::parse_duration;

/// Validates a policy's spec into a [`Policy`], or every problem found (field path and value).
pub fn validate(spec: &crd::BackendTrafficPolicySpec) -> Result<Policy, Vec<String>> {
    let mut errs = Vec::new();
    let dur = |field: &str, v: &Option<String>, errs: &mut Vec<String>| -> Option<Duration> {
        let text = v.as_ref()?;
        match parse_duration(text) {
            Ok(d) if d.is_zero() => {
                errs.push(format!("{field} {text:?} must be greater than zero"));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                errs.push(format!("{field} {e}"));
                None
            }
        }
    };

    let circuit_breakers = spec.circuit_breakers.clone();
    if let Some(cb) = &circuit_breakers {
        for (field, v) in [
            ("circuitBreakers.maxConnections", cb.max_connections),
            ("circuitBreakers.maxPendingRequests", cb.max_pending_requests),
            ("circuitBreakers.maxRequests", cb.max_requests),
        ] {
            if v == Some(0) {
                errs.push(format!("{field} 0 would refuse every request; use at least 1"));
            }
        }
    }

    let retry = spec.retry_strategy.as_ref().map(|r| {
        let mut on = Vec::new();
        for (field, text, known) in [
            ("retryStrategy.httpRetryOn", &r.http_retry_on, HTTP_RETRY_ON),
            ("retryStrategy.grpcRetryOn", &r.grpc_retry_on, GRPC_RETRY_ON),
        ] {
            for cond in text.iter().flat_map(|t| t.split(',')).map(str::trim) {
                if known.contains(&cond) {
                    on.push(cond.to_string());
                } else {
                    errs.push(format!("{field}: unknown condition {cond:?} (known: {})", known.join(", ")));
                }
            }
        }
        let num_retries = r.num_retries.unwrap_or(1);
        if num_retries > MAX_RETRIES {
            errs.push(format!("retryStrategy.numRetries {num_retries} is more than {MAX_RETRIES}"));
        }
        let per_try_timeout = dur("retryStrategy.perRetryTimeout", &r.per_retry_timeout, &mut errs);
        let backoff_base = dur("retryStrategy.backoffBaseInterval", &r.backoff_base_interval, &mut errs);
        let backoff_max = dur("retryStrategy.backoffMaxInterval", &r.backoff_max_interval, &mut errs);
        // Envoy's base interval defaults to 25ms, and the cap may not be below it.
        let effective_base = backoff_base.unwrap_or(Duration::from_millis(25));
        if let Some(max) = backoff_max {
            if max < effective_base {
                errs.push(format!(
                    "retryStrategy.backoffMaxInterval {:?} is below the base interval {effective_base:?}",
                    r.backoff_max_interval.as_deref().unwrap_or_default()
                ));
            }
        }
        Retry {
            retry_on: if on.is_empty() { DEFAULT_RETRY_ON.to_string() } else { on.join(",") },
            num_retries,
            per_try_timeout,
            backoff_base,
            backoff_max,
        }
    });

    let health = spec.health_checking.as_ref().map(|h| {
        let active = h.active.as_ref().and_then(|a| {
            let kind = match a.type_.as_str() {
                "http" => {
                    let path = a.path.clone().unwrap_or_else(|| "/healthz".into());
                    if !path.starts_with('/') {
                        errs.push(format!("healthChecking.active.path {path:?} must start with /"));
                    }
                    Some(CheckKind::Http { path })
                }
                "grpc" => Some(CheckKind::Grpc { service_name: a.grpc_service_name.clone().unwrap_or_default() }),
                "tcp" => Some(CheckKind::Tcp),
                other => {
                    errs.push(format!("healthChecking.active.type {other:?} is not http, grpc or tcp"));
                    None
                }
            };
            if a.path.is_some() && a.type_ != "http" {
                errs.push(format!("healthChecking.active.path is only for type http, not {:?}", a.type_));
            }
            if a.grpc_service_name.is_some() && a.type_ != "grpc" {
                errs.push(format!("healthChecking.active.grpcServiceName is only for type grpc, not {:?}", a.type_));
            }
            let interval =
                dur("healthChecking.active.interval", &a.interval, &mut errs).unwrap_or(Duration::from_secs(5));
            let timeout = dur("healthChecking.active.timeout", &a.timeout, &mut errs).unwrap_or(Duration::from_secs(1));
            let mut threshold = |field: &str, v: Option<u32>, default: u32| {
                let v = v.unwrap_or(default);
                if !(1..=100).contains(&v) {
                    errs.push(format!("healthChecking.active.{field} {v} is not 1-100"));
                }
                v
            };
            let healthy_threshold = threshold("healthyThreshold", a.healthy_threshold, 1);
            let unhealthy_threshold = threshold("unhealthyThreshold", a.unhealthy_threshold, 3);
            Some(ActiveCheck { kind: kind?, interval, timeout, healthy_threshold, unhealthy_threshold })
        });
        let outlier = h.outlier_detection.as_ref().map(|o| {
            if let Some(p) = o.max_ejection_percent.filter(|p| *p > 100) {
                errs.push(format!("healthChecking.outlierDetection.maxEjectionPercent {p} is more than 100"));
            }
            Outlier {
                consecutive_5xx: o.consecutive_5xx,
                consecutive_gateway_errors: o.consecutive_gateway_errors,
                interval: dur("healthChecking.outlierDetection.interval", &o.interval, &mut errs),
                base_ejection_time: dur(
                    "healthChecking.outlierDetection.baseEjectionTime",
                    &o.base_ejection_time,
                    &mut errs,
                ),
                max_ejection_percent: o.max_ejection_percent,
            }
        });
        Health { active, outlier }
    });

    let timeouts = spec.timeouts.as_ref().map(|t| Timeouts {
        connect: dur("timeouts.connect", &t.connect, &mut errs),
        idle: dur("timeouts.idle", &t.idle, &mut errs),
        max_connection_duration: dur("timeouts.maxConnectionDuration", &t.max_connection_duration, &mut errs),
        request: dur("timeouts.request", &t.request, &mut errs),
    });

    let load_balancing = spec.load_balancing.as_ref().and_then(|lb| {
        let Some(type_) = LbType::parse(&lb.type_) else {
            errs.push(format!("loadBalancing.type {:?} is not roundRobin, leastRequest, ringHash or maglev", lb.type_));
            return None;
        };
        let mut hash_on = Vec::new();
        if let Some(sa) = &lb.session_affinity {
            if !type_.is_hashing() {
                errs.push(format!("loadBalancing.sessionAffinity needs type ringHash or maglev, not {:?}", lb.type_));
            }
            for (field, v, make) in [
                ("header", &sa.header, HashOn::Header as fn(String) -> HashOn),
                ("cookie", &sa.cookie, HashOn::Cookie as fn(String) -> HashOn),
            ] {
                if let Some(name) = v {
                    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                        errs.push(format!("loadBalancing.sessionAffinity.{field} {name:?} is not a valid name"));
                    } else {
                        hash_on.push(make(if field == "header" { name.to_ascii_lowercase() } else { name.clone() }));
                    }
                }
            }
            if sa.source_ip {
                hash_on.push(HashOn::SourceIp);
            }
            if hash_on.is_empty() && sa.header.is_none() && sa.cookie.is_none() {
                errs.push("loadBalancing.sessionAffinity sets none of header, cookie, sourceIp".into());
            }
        }
        Some(LoadBalancing { type_, hash_on })
    });

    let keepalive = spec.keep_alive_probes.as_ref().map(|k| {
        if let Some(p) = k.probes.filter(|p| !(1..=100).contains(p)) {
            errs.push(format!("keepAliveProbes.probes {p} is not 1-100"));
        }
        let secs = |field: &str, v: &Option<String>, errs: &mut Vec<String>| {
            let d = dur(field, v, errs)?;
            if d.subsec_nanos() != 0 {
                errs.push(format!("{field} {:?} must be whole seconds", v.as_deref().unwrap_or_default()));
                return None;
            }
            u32::try_from(d.as_secs()).ok()
        };
        Keepalive {
            probes: k.probes,
            time_secs: secs("keepAliveProbes.time", &k.time, &mut errs),
            interval_secs: secs("keepAliveProbes.interval", &k.interval, &mut errs),
        }
    });

    if errs.is_empty() {
        Ok(Policy { circuit_breakers, retry, health, timeouts, load_balancing, keepalive })
    } else {
        Err(errs)
    }
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
    /// The `Accepted` condition to write on each policy.
    #[serde(serialize_with = "keyed")]
    pub conditions: BTreeMap<ObjectRef, Condition>,
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
        res.conditions.insert(me, condition(btp, false, reason, message, now));
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
                res.conditions.insert(
                    me.clone(),
                    condition(oldest, true, REASON_ACCEPTED, format!("applies to {}", describe(&target)), now),
                );
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

/// The `Accepted` condition, keeping the previous transition time when the status did not change.
fn condition(btp: &BackendTrafficPolicy, ok: bool, reason: &str, message: String, now: &Time) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = btp
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == CONDITION_ACCEPTED && c.status == status))
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: CONDITION_ACCEPTED.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: btp.metadata.generation,
        last_transition_time: since,
    }
}

// Maps keyed by ObjectRef serialise as lists: YAML complex keys are hard to read.
fn values<S: serde::Serializer, V: Serialize>(m: &BTreeMap<ObjectRef, V>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(m.values())
}

fn keyed<S: serde::Serializer>(m: &BTreeMap<ObjectRef, Condition>, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Entry<'a> {
        policy: &'a ObjectRef,
        condition: &'a Condition,
    }
    s.collect_seq(m.iter().map(|(policy, condition)| Entry { policy, condition }))
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
circuitBreakers: {maxConnections: 100, maxPendingRequests: 50, maxRequests: 200, maxRetries: 5}
retryStrategy:
  httpRetryOn: 5xx,reset,connect-failure
  grpcRetryOn: unavailable,resource-exhausted
  numRetries: 3
  perRetryTimeout: 250ms
  backoffBaseInterval: 25ms
  backoffMaxInterval: 1s
healthChecking:
  active: {type: http, path: /ready, interval: 2s, timeout: 500ms, healthyThreshold: 2, unhealthyThreshold: 3}
  outlierDetection: {consecutive5xx: 5, consecutiveGatewayErrors: 3, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 50}
timeouts: {connect: 2s, idle: 1m, maxConnectionDuration: 1h, request: 15s}
loadBalancing:
  type: ringHash
  sessionAffinity: {header: X-User, cookie: session, sourceIp: true}
keepAliveProbes: {probes: 3, time: 1m, interval: 10s}
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

    #[test]
    fn invalid_values_are_refused_with_messages() {
        let cases = [
            ("timeouts: {connect: 2 parsecs}", "timeouts.connect \"2 parsecs\" is not a duration"),
            ("loadBalancing: {type: random}", "loadBalancing.type \"random\""),
            ("healthChecking: {active: {type: icmp}}", "healthChecking.active.type \"icmp\""),
            ("retryStrategy: {numRetries: 1000000}", "numRetries 1000000 is more than 10"),
            ("retryStrategy: {httpRetryOn: '5xx,sometimes'}", "unknown condition \"sometimes\""),
            ("retryStrategy: {backoffBaseInterval: 1s, backoffMaxInterval: 100ms}", "below the base interval"),
            ("loadBalancing: {type: roundRobin, sessionAffinity: {header: x-user}}", "needs type ringHash or maglev"),
            ("loadBalancing: {type: ringHash, sessionAffinity: {}}", "sets none of"),
            ("circuitBreakers: {maxConnections: 0}", "would refuse every request"),
            ("keepAliveProbes: {time: 1500ms}", "must be whole seconds"),
            ("timeouts: {idle: 0s}", "must be greater than zero"),
            ("healthChecking: {active: {type: tcp, path: /x}}", "only for type http"),
            ("healthChecking: {outlierDetection: {maxEjectionPercent: 101}}", "more than 100"),
        ];
        for (yaml, needle) in cases {
            let errs = validate(&spec(yaml)).unwrap_err();
            assert!(errs.iter().any(|e| e.contains(needle)), "{yaml}: {errs:?} lacks {needle}");
        }
    }

    #[test]
    fn every_field_validates() {
        let p = validate(&spec(super::EVERY_FIELD)).unwrap();
        let r = p.retry.as_ref().unwrap();
        assert_eq!(r.retry_on, "5xx,reset,connect-failure,unavailable,resource-exhausted");
        assert_eq!(r.num_retries, 3);
        assert_eq!(r.per_try_timeout, Some(Duration::from_millis(250)));
        let lb = p.load_balancing.as_ref().unwrap();
        assert_eq!(lb.hash_on, [HashOn::Header("x-user".into()), HashOn::Cookie("session".into()), HashOn::SourceIp]);
        assert_eq!(p.keepalive, Some(Keepalive { probes: Some(3), time_secs: Some(60), interval_secs: Some(10) }));
    }

    #[test]
    fn service_policy_overrides_infra_policy_field_by_field_at_the_top_level() {
        let infra = validate(&spec(
            "timeouts: {connect: 1s, idle: 30s}\ncircuitBreakers: {maxRequests: 10}\nloadBalancing: {type: leastRequest}",
        ))
        .unwrap();
        let svc = validate(&spec(
            "timeouts: {request: 5s}\nloadBalancing: {type: maglev, sessionAffinity: {sourceIp: true}}",
        ))
        .unwrap();
        let eff = svc.over(&infra);
        // `timeouts` is taken whole from the Service policy: its connect/idle are not inherited.
        assert_eq!(eff.timeouts, Some(Timeouts { request: Some(Duration::from_secs(5)), ..Default::default() }));
        assert_eq!(eff.circuit_breakers, infra.circuit_breakers);
        assert_eq!(eff.load_balancing.unwrap().type_, LbType::Maglev);
    }
}
