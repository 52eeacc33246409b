//! weir's custom resources (group `weir.dev`, version `v1alpha1`). `weir crd` prints their YAML.
//!
//! Defaults are those users of the earlier TrafficInfra know; they are both serde defaults (so a
//! manifest read by the file provider gets them) and OpenAPI defaults (so the API server fills them).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "weir.dev";
pub const VERSION: &str = "v1alpha1";

/// Label on a Service that links it to a TrafficInfra (value: the TrafficInfra's name).
pub const LABEL_TRAFFIC_INFRA: &str = "weir.dev/traffic-infra";
/// Label on a Service naming its strategy (blue, green, …).
pub const LABEL_STRATEGY: &str = "weir.dev/strategy";

/// The traffic infrastructure of one namespace: the xDS control plane, the Envoy fleet it configures,
/// and the default split between strategies.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "TrafficInfra",
    plural = "trafficinfras",
    shortname = "ti",
    namespaced,
    status = "TrafficInfraStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TrafficInfraSpec {
    #[serde(default)]
    pub xds: XdsSpec,
    #[serde(default)]
    pub envoy: EnvoySpec,
    #[serde(default)]
    pub traffic_defaults: TrafficDefaults,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct XdsSpec {
    #[serde(default = "two")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    #[serde(default = "ImageSpec::weir")]
    pub image: ImageSpec,
    #[serde(default = "ResourcesSpec::xds")]
    pub resources: ResourcesSpec,
    #[serde(default = "XdsPorts::default")]
    pub ports: XdsPorts,
    #[serde(default)]
    pub discovery: DiscoverySpec,
    /// Seconds between endpoint re-lists when watches are unavailable (a fallback only).
    #[serde(default = "five")]
    #[schemars(range(min = 1))]
    pub poll_interval: i32,
    #[serde(default = "default_node_id", rename = "nodeID")]
    pub node_id: String,
}

impl Default for XdsSpec {
    fn default() -> Self {
        Self {
            replicas: 2,
            image: ImageSpec::weir(),
            resources: ResourcesSpec::xds(),
            ports: XdsPorts::default(),
            discovery: DiscoverySpec::default(),
            poll_interval: 5,
            node_id: default_node_id(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct XdsPorts {
    #[serde(default = "grpc_xds")]
    pub grpc: i32,
    #[serde(default = "admin_xds")]
    pub admin: i32,
}

impl Default for XdsPorts {
    fn default() -> Self {
        Self { grpc: 18000, admin: 18080 }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiscoverySpec {
    /// Planner Services to watch and route to, besides those labelled `weir.dev/traffic-infra`.
    #[serde(default)]
    pub services: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvoySpec {
    #[serde(default = "two")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    #[serde(default = "ten")]
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    #[serde(default = "ImageSpec::envoy")]
    pub image: ImageSpec,
    #[serde(default = "ResourcesSpec::envoy")]
    pub resources: ResourcesSpec,
    #[serde(default)]
    pub ports: EnvoyPorts,
    #[serde(default)]
    pub hpa: HpaSpec,
    #[serde(default)]
    pub service: EnvoyServiceSpec,
}

impl Default for EnvoySpec {
    fn default() -> Self {
        Self {
            replicas: 2,
            max_replicas: 10,
            image: ImageSpec::envoy(),
            resources: ResourcesSpec::envoy(),
            ports: EnvoyPorts::default(),
            hpa: HpaSpec::default(),
            service: EnvoyServiceSpec::default(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvoyPorts {
    #[serde(default = "grpc_envoy")]
    pub grpc: i32,
    #[serde(default = "admin_envoy")]
    pub admin: i32,
}

impl Default for EnvoyPorts {
    fn default() -> Self {
        Self { grpc: 8080, admin: 9901 }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HpaSpec {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "seventy")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: i32,
    #[serde(default = "eighty")]
    #[schemars(range(min = 1, max = 100))]
    pub target_memory_utilization: i32,
}

impl Default for HpaSpec {
    fn default() -> Self {
        Self { enabled: true, target_cpu_utilization: 70, target_memory_utilization: 80 }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvoyServiceSpec {
    /// `LoadBalancer` by default; `ClusterIP` when the Envoys sit behind an auth gateway.
    #[serde(default = "load_balancer", rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl Default for EnvoyServiceSpec {
    fn default() -> Self {
        Self { type_: load_balancer(), annotations: BTreeMap::new() }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    pub repository: String,
    pub name: String,
    pub tag: String,
    #[serde(default = "if_not_present")]
    pub pull_policy: String,
}

impl ImageSpec {
    /// weir's own image: the xDS deployment runs `weir xds`.
    pub fn weir() -> Self {
        Self {
            repository: "ghcr.io/weir-dev".into(),
            name: "weir".into(),
            tag: env!("CARGO_PKG_VERSION").into(),
            pull_policy: if_not_present(),
        }
    }
    pub fn envoy() -> Self {
        Self {
            repository: "docker.io".into(),
            name: "envoyproxy/envoy".into(),
            tag: "v1.31-latest".into(),
            pull_policy: if_not_present(),
        }
    }
    pub fn reference(&self) -> String {
        if self.repository.is_empty() {
            format!("{}:{}", self.name, self.tag)
        } else {
            format!("{}/{}:{}", self.repository.trim_end_matches('/'), self.name, self.tag)
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesSpec {
    pub cpu: String,
    pub memory: String,
}

impl ResourcesSpec {
    pub fn xds() -> Self {
        Self { cpu: "200m".into(), memory: "256Mi".into() }
    }
    pub fn envoy() -> Self {
        Self { cpu: "500m".into(), memory: "512Mi".into() }
    }
}

/// Initial strategy weights, used until weights are set through the admin API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficDefaults {
    #[serde(default = "hundred")]
    #[schemars(range(min = 0))]
    pub blue_weight: u32,
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub green_weight: u32,
}

impl Default for TrafficDefaults {
    fn default() -> Self {
        Self { blue_weight: 100, green_weight: 0 }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficInfraStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default)]
    pub xds_ready: bool,
    #[serde(default)]
    pub envoy_ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xds_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_endpoint: Option<String>,
    #[serde(default)]
    pub traffic_weights: BTreeMap<String, u32>,
    #[serde(default)]
    pub discovered_services: Vec<String>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    Pending,
    Deploying,
    Ready,
    Degraded,
    Failed,
}

/// Scheduling settings inherited by every pod the operator creates in this namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(group = "weir.dev", version = "v1alpha1", kind = "NamespaceConfig", plural = "namespaceconfigs", namespaced)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceConfigSpec {
    #[serde(default)]
    pub tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<k8s_openapi::api::core::v1::Affinity>,
    #[serde(default)]
    pub image_pull_secrets: Vec<k8s_openapi::api::core::v1::LocalObjectReference>,
}

/// Backend policies (retries, timeouts, circuit breakers, health checks, load balancing) for a
/// TrafficInfra or one planner Service. A policy on a Service overrides one on its TrafficInfra field
/// by field at the top level.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "BackendTrafficPolicy",
    plural = "backendtrafficpolicies",
    namespaced,
    status = "PolicyStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct BackendTrafficPolicySpec {
    pub target_ref: PolicyTargetRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breakers: Option<CircuitBreakers>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_strategy: Option<RetryStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_checking: Option<HealthChecking>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing: Option<LoadBalancing>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive_probes: Option<KeepAliveProbes>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetRef {
    /// `TrafficInfra` or `Service`.
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreakers {
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub max_requests: Option<u32>,
    pub max_retries: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryStrategy {
    /// Envoy `retry_on` conditions for HTTP, e.g. `5xx,reset,connect-failure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_retry_on: Option<String>,
    /// gRPC status conditions, e.g. `unavailable,resource-exhausted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_retry_on: Option<String>,
    pub num_retries: Option<u32>,
    /// Duration such as `250ms` or `2s`.
    pub per_retry_timeout: Option<String>,
    pub backoff_base_interval: Option<String>,
    pub backoff_max_interval: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthChecking {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<ActiveHealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActiveHealthCheck {
    /// `http`, `grpc` or `tcp`.
    #[serde(rename = "type")]
    pub type_: String,
    pub path: Option<String>,
    pub grpc_service_name: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub healthy_threshold: Option<u32>,
    pub unhealthy_threshold: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway_errors: Option<u32>,
    pub interval: Option<String>,
    pub base_ejection_time: Option<String>,
    pub max_ejection_percent: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    pub connect: Option<String>,
    pub idle: Option<String>,
    pub max_connection_duration: Option<String>,
    pub request: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancing {
    /// `roundRobin`, `leastRequest`, `ringHash` or `maglev`.
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionAffinity {
    pub header: Option<String>,
    pub cookie: Option<String>,
    #[serde(default)]
    pub source_ip: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeepAliveProbes {
    pub probes: Option<u32>,
    pub time: Option<String>,
    pub interval: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

fn two() -> i32 {
    2
}
fn five() -> i32 {
    5
}
fn ten() -> i32 {
    10
}
fn seventy() -> i32 {
    70
}
fn eighty() -> i32 {
    80
}
fn hundred() -> u32 {
    100
}
fn yes() -> bool {
    true
}
fn grpc_xds() -> i32 {
    18000
}
fn admin_xds() -> i32 {
    18080
}
fn grpc_envoy() -> i32 {
    8080
}
fn admin_envoy() -> i32 {
    9901
}
fn default_node_id() -> String {
    "envoy-proxy".into()
}
fn load_balancer() -> String {
    "LoadBalancer".into()
}
fn if_not_present() -> String {
    "IfNotPresent".into()
}

/// All CRDs as one multi-document YAML, as `weir crd` prints it and the chart ships it.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let mut out = String::new();
    for crd in [TrafficInfra::crd(), NamespaceConfig::crd(), BackendTrafficPolicy::crd()] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}
