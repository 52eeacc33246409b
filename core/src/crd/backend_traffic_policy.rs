//! The BackendTrafficPolicy resource: every field of the Envoy Gateway proposal
//! (`../shared/seeds/001_fd993c7ab3ec9afc.txt`) under `spec`, with its names, nesting, defaults and
//! ranges, and weir's `targetRef`.
//!
//! Integers are `i64` and enums `String`s so that an out-of-range or unknown value reaches
//! `operator::policy::validate`, which refuses the policy with a condition naming the field and the
//! rule, instead of failing the whole manifest in the file provider. The same ranges and enums are
//! in the schema for the API server, and the "required when" rules are CEL rules
//! (`x-kubernetes-validations`) there.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::DURATION_PATTERN;

/// Backend policies (DNS, protocols, circuit breakers, keepalive, retries, health checks, timeouts,
/// load balancing, observability, matching, integrations) for a TrafficInfra's Envoy as a whole or
/// one planner Service. A policy on a Service overrides one on its TrafficInfra field by field at
/// the top level (a top-level field is replaced whole).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "BackendTrafficPolicy",
    plural = "backendtrafficpolicies",
    namespaced,
    status = "PolicyStatus",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetRef.name"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    crates(kube_core = "::kube_core")
)]
#[serde(rename_all = "camelCase")]
pub struct BackendTrafficPolicySpec {
    pub target_ref: PolicyTargetRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Protocols>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breakers: Option<Vec<CircuitBreaker>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive_probes: Option<KeepAliveProbes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_strategy: Option<RetryStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_checking: Option<HealthChecking>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing: Option<LoadBalancing>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observability: Option<Observability>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matching: Option<Matching>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrations: Option<Integrations>,
}

/// The object a policy applies to, in the policy's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetRef {
    /// `TrafficInfra` (its Envoy as a whole, and every planner Service it routes to) or `Service`
    /// (one planner Service).
    #[schemars(extend("enum" = ["TrafficInfra", "Service"]))]
    pub kind: String,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `weir.dev` for a TrafficInfra, empty or absent for a Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// How the endpoints' addresses are resolved: the cluster becomes a DNS cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Dns {
    /// `strict` (every address resolved, all results used) or `logical` (first result only, for
    /// large DNS-balanced services). Default `strict`.
    #[serde(default = "strict", rename = "type")]
    #[schemars(extend("enum" = ["logical", "strict"]))]
    pub type_: String,
    /// Re-resolve when the record's TTL expires instead of at Envoy's fixed refresh rate.
    #[serde(default)]
    pub respect_dns_ttl: bool,
}

impl Default for Dns {
    fn default() -> Self {
        Self { type_: strict(), respect_dns_ttl: false }
    }
}

/// Address families used for the backends.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct Protocols {
    #[serde(default = "yes", rename = "enableIPv4")]
    pub enable_ipv4: bool,
    #[serde(default, rename = "enableIPv6")]
    pub enable_ipv6: bool,
}

impl Default for Protocols {
    fn default() -> Self {
        Self { enable_ipv4: yes(), enable_ipv6: false }
    }
}

/// Circuit-breaker thresholds of one routing priority.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// `default` or `high`.
    #[serde(default = "default_priority")]
    #[schemars(extend("enum" = ["default", "high"]))]
    pub priority: String,
    #[serde(default = "n1024")]
    #[schemars(range(min = 1, max = 4294967295_u32))]
    pub max_connections: i64,
    #[serde(default = "n1024")]
    #[schemars(range(min = 1, max = 4294967295_u32))]
    pub max_pending_requests: i64,
    #[serde(default = "n1024")]
    #[schemars(range(min = 1, max = 4294967295_u32))]
    pub max_parallel_requests: i64,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self {
            priority: default_priority(),
            max_connections: n1024(),
            max_pending_requests: n1024(),
            max_parallel_requests: n1024(),
        }
    }
}

/// TCP keepalive on upstream connections (whole seconds).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeepAliveProbes {
    /// Idle time before the first probe.
    #[serde(default = "s7200")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub idle_time: String,
    /// Time between probes.
    #[serde(default = "s75")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub interval: String,
    /// Unanswered probes before the connection is dropped.
    #[serde(default = "nine")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_probes: i64,
}

impl Default for KeepAliveProbes {
    fn default() -> Self {
        Self { idle_time: s7200(), interval: s75(), max_probes: nine() }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.type != 'http' || has(self.http)", "message": "retryStrategy.http is required when type is http"},
    {"rule": "self.type != 'grpc' || has(self.grpc)", "message": "retryStrategy.grpc is required when type is grpc"},
]))]
#[schemars(transform = |s: &mut schemars::Schema| require(s, &["type"]))]
pub struct RetryStrategy {
    /// `grpc` or `http`.
    #[serde(default, rename = "type")]
    #[schemars(extend("enum" = ["grpc", "http"]))]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRetry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcRetry>,
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 10))]
    pub num_retries: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_retry: Option<PerRetry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_limits: Option<RetryLimits>,
}

impl Default for RetryStrategy {
    fn default() -> Self {
        Self { type_: String::new(), http: None, grpc: None, num_retries: one(), per_retry: None, retry_limits: None }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.retryOn != 'retriable-status-codes' || (has(self.retriableStatusCodes) && size(self.retriableStatusCodes) > 0)",
     "message": "retryStrategy.http.retriableStatusCodes is required when retryOn is retriable-status-codes"},
]))]
#[schemars(transform = |s: &mut schemars::Schema| require(s, &["retryOn"]))]
pub struct HttpRetry {
    #[serde(default)]
    #[schemars(extend("enum" = ["5xx", "gateway-error", "disconnect-reset", "connect-fail", "retriable-4xx", "refused-stream", "retriable-status-codes"]))]
    pub retry_on: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(inner(range(min = 100, max = 599)))]
    pub retriable_status_codes: Option<Vec<i64>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRetry {
    /// Default `unavailable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"]))]
    pub retry_on: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PerRetry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub idle_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = |s: &mut schemars::Schema| require(s, &["baseInterval"]))]
pub struct Backoff {
    #[serde(default)]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub base_interval: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub max_interval: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.type != 'static' || has(self.static)", "message": "retryStrategy.retryLimits.static is required when type is static"},
    {"rule": "self.type != 'budget' || has(self.retryBudget)", "message": "retryStrategy.retryLimits.retryBudget is required when type is budget"},
]))]
#[schemars(transform = |s: &mut schemars::Schema| require(s, &["type"]))]
pub struct RetryLimits {
    /// `budget` or `static`.
    #[serde(default, rename = "type")]
    #[schemars(extend("enum" = ["budget", "static"]))]
    pub type_: String,
    #[serde(default, rename = "static", skip_serializing_if = "Option::is_none")]
    pub static_: Option<StaticRetryLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StaticRetryLimit {
    /// Retries in flight at once to the cluster.
    #[serde(default = "three")]
    #[schemars(range(min = 1, max = 4294967295_u32))]
    pub max_parallel: i64,
}

impl Default for StaticRetryLimit {
    fn default() -> Self {
        Self { max_parallel: three() }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    /// Retries in flight as a percentage of active requests.
    #[serde(default = "twenty")]
    #[schemars(range(min = 1, max = 100))]
    pub active_request_percent: i64,
    /// Retries always allowed in flight, whatever the percentage gives.
    #[serde(default = "three")]
    #[schemars(range(min = 0, max = 4294967295_u32))]
    pub min_concurrent: i64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self { active_request_percent: twenty(), min_concurrent: three() }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthChecking {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_checks: Option<Vec<ActiveCheck>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
}

/// An active health check Envoy runs against every endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.type != 'http' || has(self.http)", "message": "healthChecking.activeChecks[].http is required when type is http"},
    {"rule": "self.type != 'grpc' || has(self.grpc)", "message": "healthChecking.activeChecks[].grpc is required when type is grpc"},
]))]
#[schemars(transform = |s: &mut schemars::Schema| require(s, &["type"]))]
pub struct ActiveCheck {
    /// Timeout of one check (Envoy `timeout`). Default `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub connection_timeout: Option<String>,
    #[serde(default = "s5")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub healthy_check_interval: String,
    #[serde(default = "s10")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub unhealthy_check_interval: String,
    #[serde(default = "three")]
    #[schemars(range(min = 1, max = 1000))]
    pub unhealthy_threshold: i64,
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 1000))]
    pub healthy_threshold: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<HealthCheckLogging>,
    /// `grpc` or `http` (the proposal's), or `tcp` (a weir extension: connect only).
    #[serde(default, rename = "type")]
    #[schemars(extend("enum" = ["grpc", "http", "tcp"]))]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcHealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHealthCheck>,
}

impl Default for ActiveCheck {
    fn default() -> Self {
        Self {
            connection_timeout: None,
            healthy_check_interval: s5(),
            unhealthy_check_interval: s10(),
            unhealthy_threshold: three(),
            healthy_threshold: one(),
            logging: None,
            type_: String::new(),
            grpc: None,
            http: None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckLogging {
    /// Log health-check events (to Envoy's standard output).
    #[serde(default)]
    pub enabled: bool,
    /// Log every failed check, not only transitions.
    #[serde(default)]
    pub always_log_failures: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = |s: &mut schemars::Schema| require(s, &["upstreamName"]))]
pub struct GrpcHealthCheck {
    /// The gRPC health service name (`grpc.health.v1.Health/Check` `service`).
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub upstream_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = |s: &mut schemars::Schema| require(s, &["expectedStatuses"]))]
pub struct HttpHealthCheck {
    /// Status ranges that count as healthy, each `min`–`max` inclusive.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub expected_statuses: Vec<StatusRange>,
    /// Default `/healthz`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The Host header of the check (default: the cluster name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_request_headers: Option<AddRequestHeaders>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_request_headers: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = |s: &mut schemars::Schema| require(s, &["min", "max"]))]
pub struct StatusRange {
    #[serde(default)]
    #[schemars(range(min = 100, max = 599))]
    pub min: i64,
    #[serde(default)]
    #[schemars(range(min = 100, max = 599))]
    pub max: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddRequestHeaders {
    /// Replace the header if present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<Vec<HeaderNameValue>>,
    /// Append to the header if present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add: Option<Vec<HeaderNameValue>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = |s: &mut schemars::Schema| require(s, &["name", "value"]))]
pub struct HeaderNameValue {
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub name: String,
    #[serde(default)]
    pub value: String,
}

/// Passive health checking: eject endpoints that keep failing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    #[serde(default = "s10")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub check_interval: String,
    #[serde(default, rename = "consecutive5XX", skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx: Option<Consecutive5xx>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_percentage: Option<FailurePercentage>,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self { check_interval: s10(), consecutive_5xx: None, failure_percentage: None }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Consecutive5xx {
    #[serde(default = "five")]
    #[schemars(range(min = 1, max = 4294967295_u32))]
    pub threshold: i64,
}

impl Default for Consecutive5xx {
    fn default() -> Self {
        Self { threshold: five() }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailurePercentage {
    /// An endpoint whose failure percentage reaches this is ejected.
    #[serde(default = "eighty_five")]
    #[schemars(range(min = 0, max = 100))]
    pub threshold: i64,
    /// Requests an endpoint must have had in the interval before its percentage counts.
    #[serde(default = "fifty")]
    #[schemars(range(min = 1, max = 4294967295_u32))]
    pub minimum_requests: i64,
}

impl Default for FailurePercentage {
    fn default() -> Self {
        Self { threshold: eighty_five(), minimum_requests: fifty() }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// TCP connect timeout to an endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub connect_timeout: Option<String>,
    /// A request stream with no activity this long is reset (route `idle_timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub idle_timeout: Option<String>,
    /// An upstream connection with no request this long is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub cluster_idle_timeout: Option<String>,
    /// An upstream connection is drained and closed after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub max_connection_lifetime: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = |s: &mut schemars::Schema| require(s, &["type"]))]
pub struct LoadBalancing {
    /// `roundRobin`, `leastRequest`, `ringHash` or `maglev`.
    #[serde(default, rename = "type")]
    #[schemars(extend("enum" = ["roundRobin", "leastRequest", "ringHash", "maglev"]))]
    pub type_: String,
    /// What to hash on (ringHash and maglev only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.type != 'cookie' || has(self.cookie)", "message": "loadBalancing.sessionAffinity.cookie is required when type is cookie"},
    {"rule": "self.type != 'header' || has(self.header)", "message": "loadBalancing.sessionAffinity.header is required when type is header"},
]))]
#[schemars(transform = |s: &mut schemars::Schema| require(s, &["type"]))]
pub struct SessionAffinity {
    /// `cookie`, `header` or `sourceIp`.
    #[serde(default, rename = "type")]
    #[schemars(extend("enum" = ["cookie", "header", "sourceIp"]))]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<CookieAffinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderAffinity>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = |s: &mut schemars::Schema| require(s, &["name"]))]
pub struct CookieAffinity {
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub name: String,
    /// Path of the cookie Envoy issues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Lifetime of the cookie Envoy issues when the request has none; without it Envoy issues none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub ttl: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = |s: &mut schemars::Schema| require(s, &["name"]))]
pub struct HeaderAffinity {
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Observability {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Metrics {
    /// A tag recorded on the cluster (route level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_tag: Option<String>,
    /// The name the cluster's stats are emitted under (route level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_name: Option<String>,
    /// The prefix of the HTTP listener's stats (listener level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_prefix: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tracing {
    /// Percentage of requests traced (0–100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub sample_percentage: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_tracing_tags: Option<Vec<TracingTag>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.type != 'literal' || has(self.literal)", "message": "observability.tracing.addTracingTags[].literal is required when type is literal"},
    {"rule": "self.type != 'requestHeader' || has(self.requestHeader)", "message": "observability.tracing.addTracingTags[].requestHeader is required when type is requestHeader"},
]))]
#[schemars(transform = |s: &mut schemars::Schema| require(s, &["type", "name"]))]
pub struct TracingTag {
    /// `literal` or `requestHeader` (the header of the same name).
    #[serde(default, rename = "type")]
    #[schemars(extend("enum" = ["literal", "requestHeader"]))]
    pub type_: String,
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal: Option<LiteralTag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header: Option<RequestHeaderTag>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = |s: &mut schemars::Schema| require(s, &["value"]))]
pub struct LiteralTag {
    #[serde(default)]
    pub value: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = |s: &mut schemars::Schema| require(s, &["defaultValue"]))]
pub struct RequestHeaderTag {
    #[serde(default)]
    pub default_value: String,
}

/// How the listener matches requests to routes (listener level).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Matching {
    /// Match the Host/authority without its port.
    #[serde(default)]
    pub ignore_authority_port: bool,
    /// Remove the port from the Host/authority before routing and forwarding.
    #[serde(default)]
    pub strip_authority_port: bool,
    /// Match paths without their `;parameters`.
    #[serde(default)]
    pub ignore_path_parameters: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Integrations {
    /// Add `l5d-dst-override: <service>.<namespace>.svc.cluster.local:<port>` to requests, so that
    /// a Linkerd proxy next to Envoy routes them to the Service.
    #[serde(default)]
    pub add_linkerd_headers: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// `Accepted`: True when the policy is in effect, False with a reason and message when refused.
    /// `FieldsIgnored`: True, naming the fields that cannot apply at the policy's target.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// Makes `names` required in an object schema, and drops their serde defaults from it: serde fills
/// them so that a missing one reaches `validate` (a condition naming the field), while the API
/// server refuses it outright.
pub(super) fn require(schema: &mut schemars::Schema, names: &[&str]) {
    let Some(obj) = schema.as_object_mut() else { return };
    if let Some(props) = obj.get_mut("properties").and_then(|p| p.as_object_mut()) {
        for name in names {
            if let Some(prop) = props.get_mut(*name).and_then(|p| p.as_object_mut()) {
                prop.remove("default");
            }
        }
    }
    let required = obj.entry("required").or_insert_with(|| serde_json::Value::Array(Vec::new()));
    if let Some(list) = required.as_array_mut() {
        for name in names {
            if !list.iter().any(|v| v == name) {
                list.push(serde_json::Value::String(name.to_string()));
            }
        }
    }
}

fn strict() -> String {
    "strict".into()
}
fn default_priority() -> String {
    "default".into()
}
fn yes() -> bool {
    true
}
fn one() -> i64 {
    1
}
fn three() -> i64 {
    3
}
fn five() -> i64 {
    5
}
fn nine() -> i64 {
    9
}
fn twenty() -> i64 {
    20
}
fn fifty() -> i64 {
    50
}
fn eighty_five() -> i64 {
    85
}
fn n1024() -> i64 {
    1024
}
fn s5() -> String {
    "5s".into()
}
fn s10() -> String {
    "10s".into()
}
fn s75() -> String {
    "75s".into()
}
fn s7200() -> String {
    "7200s".into()
}

/// The fields of `object` (a whole manifest of one of weir's kinds) that the CRD's schema does not
/// have, as dotted paths (`spec.retryStrategy.httpRetryOn`). The API server prunes these; the file
/// provider warns about them, naming each one.
pub fn unknown_fields(crd: &CustomResourceDefinition, object: &serde_json::Value) -> Vec<String> {
    let Some(schema) = crd.spec.versions.first().and_then(|v| v.schema.as_ref()?.open_api_v3_schema.as_ref()) else {
        return Vec::new();
    };
    let Ok(schema) = serde_json::to_value(schema) else { return Vec::new() };
    let mut out = Vec::new();
    if let Some(map) = object.as_object() {
        for (key, value) in map {
            match key.as_str() {
                "apiVersion" | "kind" | "metadata" => {}
                _ => match schema.get("properties").and_then(|p| p.get(key)) {
                    Some(sub) => walk(sub, value, key, &mut out),
                    None => out.push(key.clone()),
                },
            }
        }
    }
    out
}

fn walk(schema: &serde_json::Value, value: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&serde_json::Value::Bool(true)) {
        return;
    }
    match value {
        serde_json::Value::Object(map) => {
            let props = schema.get("properties").and_then(|p| p.as_object());
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (key, v) in map {
                let child = format!("{path}.{key}");
                match (props.and_then(|p| p.get(key)), additional) {
                    (Some(sub), _) | (None, Some(sub)) => walk(sub, v, &child, out),
                    (None, None) if props.is_some() => out.push(child),
                    // An object the schema leaves untyped (e.g. metadata-like maps): not walked.
                    (None, None) => {}
                }
            }
        }
        serde_json::Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    walk(sub, v, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_core::CustomResourceExt;

    #[test]
    fn unknown_fields_are_named_by_path() {
        let obj = serde_json::json!({
            "apiVersion": "weir.dev/v1alpha1", "kind": "BackendTrafficPolicy", "metadata": {"name": "p", "labels": {"a": "b"}},
            "spec": {
                "targetRef": {"kind": "Service", "name": "x"},
                "retryStrategy": {"type": "http", "httpRetryOn": "5xx", "http": {"retryOn": "5xx"}},
                "circuitBreakers": [{"maxConnections": 1}, {"maxRequests": 2}],
                "timeouts": {"connectTimeout": "1s"},
                "dnsx": {},
            },
            "extra": 1,
        });
        let got = unknown_fields(&BackendTrafficPolicy::crd(), &obj);
        assert_eq!(
            got,
            ["extra", "spec.circuitBreakers[1].maxRequests", "spec.dnsx", "spec.retryStrategy.httpRetryOn"]
        );
        let every: serde_json::Value = serde_yaml::from_str(&format!(
            "spec:\n  targetRef: {{kind: Service, name: x}}\n{}",
            crate::operator::policy::EVERY_FIELD.lines().map(|l| format!("  {l}\n")).collect::<String>()
        ))
        .unwrap();
        assert_eq!(unknown_fields(&BackendTrafficPolicy::crd(), &every), Vec::<String>::new());
    }
}
