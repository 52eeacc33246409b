//! TrafficInfra (`weir.dev/v1alpha1`): the traffic infrastructure of one namespace, its defaults,
//! and the fields of a manifest its schema does not know.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{CustomResourceDefinition, JSON};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{API_VERSION, GROUP, QUANTITY_PATTERN, VERSION};

/// Label on a Service that links it to a TrafficInfra (value: the TrafficInfra's name).
pub const LABEL_TRAFFIC_INFRA: &str = "weir.dev/traffic-infra";

/// The traffic infrastructure of one namespace: the xDS control plane, the Envoy fleet it configures,
/// and the default split between strategies. One per namespace.
///
/// Written by hand rather than by `#[derive(CustomResource)]` so that `spec` may be omitted (every
/// field has a default): the derive makes `spec` required in both serde and the schema.
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrafficInfra {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: TrafficInfraSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TrafficInfraStatus>,
}

impl TrafficInfra {
    pub fn new(name: &str, spec: TrafficInfraSpec) -> Self {
        Self { metadata: ObjectMeta { name: Some(name.into()), ..Default::default() }, spec, status: None }
    }
}

// The wire form has `apiVersion` and `kind`, like every Kubernetes object.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TrafficInfraRepr<'a> {
    api_version: &'static str,
    kind: &'static str,
    metadata: &'a ObjectMeta,
    spec: &'a TrafficInfraSpec,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: &'a Option<TrafficInfraStatus>,
}

impl Serialize for TrafficInfra {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        TrafficInfraRepr {
            api_version: API_VERSION,
            kind: "TrafficInfra",
            metadata: &self.metadata,
            spec: &self.spec,
            status: &self.status,
        }
        .serialize(ser)
    }
}

impl kube_core::Resource for TrafficInfra {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "TrafficInfra".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }
    fn api_version(_: &()) -> Cow<'_, str> {
        API_VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "trafficinfras".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl kube_core::object::HasSpec for TrafficInfra {
    type Spec = TrafficInfraSpec;
    fn spec(&self) -> &TrafficInfraSpec {
        &self.spec
    }
    fn spec_mut(&mut self) -> &mut TrafficInfraSpec {
        &mut self.spec
    }
}

impl kube_core::object::HasStatus for TrafficInfra {
    type Status = TrafficInfraStatus;
    fn status(&self) -> Option<&TrafficInfraStatus> {
        self.status.as_ref()
    }
    fn status_mut(&mut self) -> &mut Option<TrafficInfraStatus> {
        &mut self.status
    }
}

impl kube_core::CustomResourceExt for TrafficInfra {
    /// The derived CRD with `spec` optional and defaulted to `{}`, so that the API server fills every
    /// default of a TrafficInfra that has only metadata.
    fn crd() -> CustomResourceDefinition {
        let mut crd = TrafficInfraSchemaSource::crd();
        for version in &mut crd.spec.versions {
            let Some(schema) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) else { continue };
            if let Some(required) = schema.required.as_mut() {
                required.retain(|r| r != "spec");
                if required.is_empty() {
                    schema.required = None;
                }
            }
            if let Some(spec) = schema.properties.as_mut().and_then(|p| p.get_mut("spec")) {
                spec.default = Some(JSON(serde_json::json!({})));
            }
            schema.title = Some("TrafficInfra".into());
            schema.description = Some("The traffic infrastructure of one namespace (weir.dev).".into());
        }
        crd
    }
    fn crd_name() -> &'static str {
        "trafficinfras.weir.dev"
    }
    fn api_resource() -> kube_core::ApiResource {
        kube_core::ApiResource::erase::<Self>(&())
    }
    fn shortnames() -> &'static [&'static str] {
        &["ti"]
    }
}

// Its derive also generates `TrafficInfraSchemaSource`, used only as the source of the schema.
/// The desired traffic infrastructure: the xDS control plane, the Envoy fleet and the initial
/// strategy weights. Every field has a default.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "TrafficInfra",
    root = "TrafficInfraSchemaSource",
    doc = "Only the source of the TrafficInfra schema; use `TrafficInfra`.",
    plural = "trafficinfras",
    shortname = "ti",
    namespaced,
    status = "TrafficInfraStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"xDS","type":"boolean","jsonPath":".status.xdsReady"}"#,
    printcolumn = r#"{"name":"Envoy","type":"boolean","jsonPath":".status.envoyReady"}"#,
    printcolumn = r#"{"name":"Blue","type":"integer","jsonPath":".status.trafficWeights.blue"}"#,
    printcolumn = r#"{"name":"Green","type":"integer","jsonPath":".status.trafficWeights.green"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.envoyEndpoint"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    crates(kube_core = "::kube_core")
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

/// The xDS control plane: a Deployment running `weir xds`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct XdsSpec {
    #[serde(default = "xds_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    #[serde(default)]
    pub image: XdsImage,
    #[serde(default)]
    pub resources: XdsResources,
    #[serde(default)]
    pub ports: XdsPorts,
    #[serde(default)]
    pub discovery: DiscoverySpec,
    /// Seconds between `weir xds`'s full re-lists of the EndpointSlices it routes to: a fallback
    /// beside the watch, so that an endpoint change the watch missed is served within this period.
    #[serde(default = "xds_poll_interval")]
    #[schemars(range(min = 1, max = 3600))]
    pub poll_interval: i32,
    /// The Envoy node id: in the bootstrap the operator writes, and the only node id `weir xds`
    /// serves for this TrafficInfra (another id gets PERMISSION_DENIED unless `weir xds` runs with
    /// `--allow-any-node-id`).
    #[serde(default = "default_node_id", rename = "nodeID")]
    #[schemars(length(min = 1, max = 253))]
    pub node_id: String,
}

impl Default for XdsSpec {
    fn default() -> Self {
        Self {
            replicas: xds_replicas(),
            image: XdsImage::default(),
            resources: XdsResources::default(),
            ports: XdsPorts::default(),
            discovery: DiscoverySpec::default(),
            poll_interval: xds_poll_interval(),
            node_id: default_node_id(),
        }
    }
}

/// weir's own image (registry/name; the tag is the crate version): the TrafficInfra default, the
/// chart's `image.repository` and what scripts/build-image.sh tags. integration-tests/tests/image.rs
/// checks that the three agree.
pub const WEIR_IMAGE: &str = "ghcr.io/weir-dev/weir";

/// The image of the xDS control plane; weir's own image by default, running `weir xds`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct XdsImage {
    #[serde(default = "weir_repository")]
    pub repository: String,
    #[serde(default = "weir_image_name")]
    #[schemars(length(min = 1))]
    pub name: String,
    #[serde(default = "weir_tag")]
    #[schemars(length(min = 1))]
    pub tag: String,
    #[serde(default = "if_not_present")]
    #[schemars(extend("enum" = ["Always", "IfNotPresent", "Never"]))]
    pub pull_policy: String,
}

impl Default for XdsImage {
    fn default() -> Self {
        Self { repository: weir_repository(), name: weir_image_name(), tag: weir_tag(), pull_policy: if_not_present() }
    }
}

impl XdsImage {
    pub fn reference(&self) -> String {
        image_reference(&self.repository, &self.name, &self.tag)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct XdsResources {
    /// CPU request.
    #[serde(default = "cpu_200m")]
    #[schemars(regex(pattern = QUANTITY_PATTERN))]
    pub cpu: String,
    /// Memory request and limit.
    #[serde(default = "mem_256mi")]
    #[schemars(regex(pattern = QUANTITY_PATTERN))]
    pub memory: String,
}

impl Default for XdsResources {
    fn default() -> Self {
        Self { cpu: cpu_200m(), memory: mem_256mi() }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct XdsPorts {
    /// ADS (gRPC) port that Envoys connect to.
    #[serde(default = "grpc_xds")]
    #[schemars(range(min = 1, max = 65535))]
    pub grpc: i32,
    /// Admin API port (`/traffic`, `/services`, `/healthz`, `/readyz`).
    #[serde(default = "admin_xds")]
    #[schemars(range(min = 1, max = 65535))]
    pub admin: i32,
}

impl Default for XdsPorts {
    fn default() -> Self {
        Self { grpc: grpc_xds(), admin: admin_xds() }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiscoverySpec {
    /// Planner Services to watch and route to, besides those labelled `weir.dev/traffic-infra`.
    #[serde(default)]
    pub services: Vec<String>,
    /// Namespaces besides the TrafficInfra's own that planner Services may come from (`*`: any).
    /// A Service selected in another namespace (by label, `services`, a `--service` flag or the
    /// admin API) gets no traffic and is refused (`weir_invalid_input_total{kind="namespace"}`).
    /// `weir xds` watches each (`--watch-namespace`) once that namespace grants its ServiceAccount
    /// list and watch of services and endpointslices; the operator grants nothing there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_namespaces: Vec<String>,
}

/// The Envoy fleet that `weir xds` configures.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvoySpec {
    /// Replicas, and the HPA's minimum when the HPA is enabled.
    #[serde(default = "envoy_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// The HPA's maximum.
    #[serde(default = "envoy_max_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    #[serde(default)]
    pub image: EnvoyImage,
    #[serde(default)]
    pub resources: EnvoyResources,
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
            replicas: envoy_replicas(),
            max_replicas: envoy_max_replicas(),
            image: EnvoyImage::default(),
            resources: EnvoyResources::default(),
            ports: EnvoyPorts::default(),
            hpa: HpaSpec::default(),
            service: EnvoyServiceSpec::default(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvoyImage {
    #[serde(default = "envoyproxy")]
    pub repository: String,
    #[serde(default = "envoy_image_name")]
    #[schemars(length(min = 1))]
    pub name: String,
    #[serde(default = "envoy_tag")]
    #[schemars(length(min = 1))]
    pub tag: String,
    #[serde(default = "if_not_present")]
    #[schemars(extend("enum" = ["Always", "IfNotPresent", "Never"]))]
    pub pull_policy: String,
}

impl Default for EnvoyImage {
    fn default() -> Self {
        Self { repository: envoyproxy(), name: envoy_image_name(), tag: envoy_tag(), pull_policy: if_not_present() }
    }
}

impl EnvoyImage {
    pub fn reference(&self) -> String {
        image_reference(&self.repository, &self.name, &self.tag)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvoyResources {
    /// CPU request.
    #[serde(default = "cpu_500m")]
    #[schemars(regex(pattern = QUANTITY_PATTERN))]
    pub cpu: String,
    /// Memory request and limit.
    #[serde(default = "mem_512mi")]
    #[schemars(regex(pattern = QUANTITY_PATTERN))]
    pub memory: String,
}

impl Default for EnvoyResources {
    fn default() -> Self {
        Self { cpu: cpu_500m(), memory: mem_512mi() }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvoyPorts {
    /// The proxy listener port; the Envoy Service exposes the same port.
    #[serde(default = "grpc_envoy")]
    #[schemars(range(min = 1, max = 65535))]
    pub grpc: i32,
    /// Envoy's admin interface, on 127.0.0.1 inside the pod (probes use the probe listener, 9902).
    #[serde(default = "admin_envoy")]
    #[schemars(range(min = 1, max = 65535))]
    pub admin: i32,
}

impl Default for EnvoyPorts {
    fn default() -> Self {
        Self { grpc: grpc_envoy(), admin: admin_envoy() }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HpaSpec {
    #[serde(default = "hpa_enabled")]
    pub enabled: bool,
    /// Average CPU utilisation (percent of the request) the HPA aims for.
    #[serde(default = "hpa_target_cpu", rename = "targetCPUUtilization")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: i32,
    /// Average memory utilisation (percent of the request) the HPA aims for.
    #[serde(default = "hpa_target_memory", rename = "targetMemoryUtilization")]
    #[schemars(range(min = 1, max = 100))]
    pub target_memory_utilization: i32,
}

impl Default for HpaSpec {
    fn default() -> Self {
        Self {
            enabled: hpa_enabled(),
            target_cpu_utilization: hpa_target_cpu(),
            target_memory_utilization: hpa_target_memory(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvoyServiceSpec {
    /// `LoadBalancer` by default; `ClusterIP` when the Envoys sit behind an auth gateway.
    #[serde(default = "load_balancer", rename = "type")]
    #[schemars(extend("enum" = ["ClusterIP", "NodePort", "LoadBalancer"]))]
    pub type_: String,
    /// Annotations of the Envoy Service (e.g. the cloud load balancer's settings).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl Default for EnvoyServiceSpec {
    fn default() -> Self {
        Self { type_: load_balancer(), annotations: BTreeMap::new() }
    }
}

/// Initial strategy weights, used until weights are set through the admin API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficDefaults {
    #[serde(default = "blue_weight")]
    #[schemars(range(min = 0, max = 1000000))]
    pub blue_weight: u32,
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000000))]
    pub green_weight: u32,
}

impl Default for TrafficDefaults {
    fn default() -> Self {
        Self { blue_weight: blue_weight(), green_weight: 0 }
    }
}

/// What weir observed. Two writers, one per field (each preserves the other's fields and conditions
/// and writes with a resourceVersion precondition):
/// - the operator (`weir controller`'s infra manager) knows the children: `phase`, `message`,
///   `xdsReady`, `envoyReady`, `xdsEndpoint`, `envoyEndpoint`, `observedGeneration`,
///   `lastTransitionTime` and the conditions of [`crate::operator::status::OPERATOR_CONDITIONS`];
/// - `weir xds` knows what it serves: `trafficWeights`, `discoveredServices` and the
///   `ConfigAccepted` condition.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficInfraStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "phase_schema")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default)]
    pub xds_ready: bool,
    #[serde(default)]
    pub envoy_ready: bool,
    /// `{name}-xds.{namespace}.svc:{grpc}`: where Envoys reach the control plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xds_endpoint: Option<String>,
    /// The Envoy Service's load-balancer hostname or IP (its cluster DNS name for ClusterIP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_endpoint: Option<String>,
    /// The strategy weights in force (those `weir xds` serves, after any `POST /traffic`), by
    /// strategy: `blue`, `green`, and any other strategy weir routes to.
    #[serde(default)]
    pub traffic_weights: BTreeMap<String, u32>,
    /// The planner Services `weir xds` routes to, with their strategy and ready endpoints.
    #[serde(default)]
    pub discovered_services: Vec<DiscoveredService>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When `phase` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

/// One planner Service as `weir xds` sees it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveredService {
    /// The Service's name (in the TrafficInfra's namespace).
    pub name: String,
    /// Its strategy (`blue`, `green`, ...); absent while the Service does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// Ready endpoints of its EndpointSlices (0 while the Service does not exist).
    #[serde(default)]
    pub ready_endpoints: u32,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Waiting for something outside the TrafficInfra (a NamespaceConfig).
    Pending,
    /// Children created, not all ready yet.
    Deploying,
    /// xDS and Envoy Deployments available and the Envoy Service has an address.
    Ready,
    /// Was ready; some children are no longer.
    Degraded,
    /// Refused (e.g. a second TrafficInfra in the namespace); nothing is created for it.
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Deploying => "Deploying",
            Phase::Ready => "Ready",
            Phase::Degraded => "Degraded",
            Phase::Failed => "Failed",
        }
    }
}

// `Option<Phase>` would put `null` into the enum; the field is never serialised as null.
fn phase_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": ["Pending", "Deploying", "Ready", "Degraded", "Failed"],
    })
}

fn image_reference(repository: &str, name: &str, tag: &str) -> String {
    if repository.is_empty() {
        format!("{name}:{tag}")
    } else {
        format!("{}/{name}:{tag}", repository.trim_end_matches('/'))
    }
}

// Each default once: the serde default of its field, and what its struct's `Default` uses (the
// OpenAPI default is derived from the serde one).
fn xds_replicas() -> i32 {
    2
}
fn xds_poll_interval() -> i32 {
    5
}
fn envoy_replicas() -> i32 {
    2
}
fn envoy_max_replicas() -> i32 {
    10
}
fn hpa_enabled() -> bool {
    true
}
fn hpa_target_cpu() -> i32 {
    70
}
fn hpa_target_memory() -> i32 {
    80
}
fn blue_weight() -> u32 {
    100
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
fn weir_repository() -> String {
    WEIR_IMAGE.rsplit_once('/').map_or("", |(repository, _)| repository).into()
}
fn weir_image_name() -> String {
    WEIR_IMAGE.rsplit_once('/').map_or(WEIR_IMAGE, |(_, name)| name).into()
}
fn weir_tag() -> String {
    env!("CARGO_PKG_VERSION").into()
}
fn envoyproxy() -> String {
    "envoyproxy".into()
}
fn envoy_image_name() -> String {
    "envoy".into()
}
fn envoy_tag() -> String {
    "v1.31-latest".into()
}
fn cpu_200m() -> String {
    "200m".into()
}
fn mem_256mi() -> String {
    "256Mi".into()
}
fn cpu_500m() -> String {
    "500m".into()
}
fn mem_512mi() -> String {
    "512Mi".into()
}

/// A field of a TrafficInfra manifest that its schema does not have: the API server prunes it (or,
/// with strict field validation, refuses the object), serde ignores it. Reported so that a renamed
/// field (`targetCpuUtilization` for `targetCPUUtilization`) is never silently dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownField {
    /// `.spec.envoy.hpa.targetCpuUtilization`.
    pub path: String,
    /// The field it differs from only in case, when there is one.
    pub did_you_mean: Option<String>,
}

impl std::fmt::Display for UnknownField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown field {}", self.path)?;
        if let Some(m) = &self.did_you_mean {
            write!(f, " (did you mean {m}?)")?;
        }
        Ok(())
    }
}

/// The fields of a TrafficInfra (as JSON, before serde or the API server drop anything) under
/// `spec` and `status` that the CRD's schema does not know, in document order.
pub fn traffic_infra_unknown_fields(obj: &serde_json::Value) -> Vec<UnknownField> {
    use kube_core::CustomResourceExt;
    let crd = TrafficInfra::crd();
    let Some(schema) =
        crd.spec.versions.first().and_then(|v| v.schema.as_ref()).and_then(|s| s.open_api_v3_schema.as_ref())
    else {
        return Vec::new();
    };
    let schema = serde_json::to_value(schema).unwrap_or_default();
    let mut out = Vec::new();
    for top in ["spec", "status"] {
        if let (Some(v), Some(s)) = (obj.get(top), schema["properties"].get(top)) {
            unknown_in(v, s, &format!(".{top}"), &mut out);
        }
    }
    out
}

fn unknown_in(v: &serde_json::Value, s: &serde_json::Value, path: &str, out: &mut Vec<UnknownField>) {
    if s.get("x-kubernetes-preserve-unknown-fields").is_some() {
        return;
    }
    match v {
        serde_json::Value::Object(map) => {
            let props = s.get("properties").and_then(serde_json::Value::as_object);
            let additional = s.get("additionalProperties").filter(|a| a.is_object());
            for (k, item) in map {
                match (props.and_then(|p| p.get(k)), additional) {
                    (Some(sub), _) | (None, Some(sub)) => unknown_in(item, sub, &format!("{path}.{k}"), out),
                    (None, None) => out.push(UnknownField {
                        path: format!("{path}.{k}"),
                        did_you_mean: props
                            .and_then(|p| p.keys().find(|known| known.eq_ignore_ascii_case(k)))
                            .map(|known| format!("{path}.{known}")),
                    }),
                }
            }
        }
        serde_json::Value::Array(items) => {
            if let Some(sub) = s.get("items") {
                for (i, item) in items.iter().enumerate() {
                    unknown_in(item, sub, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::Value;

    use super::*;
    use crate::crd::tests::{apply_defaults, schema_of, validate};

    const MINIMAL: &str =
        "apiVersion: weir.dev/v1alpha1\nkind: TrafficInfra\nmetadata:\n  name: edge\n  namespace: shop\n";

    fn expected_defaults() -> TrafficInfraSpec {
        TrafficInfraSpec {
            xds: XdsSpec {
                replicas: 2,
                image: XdsImage {
                    repository: "ghcr.io/weir-dev".into(),
                    name: "weir".into(),
                    tag: env!("CARGO_PKG_VERSION").into(),
                    pull_policy: "IfNotPresent".into(),
                },
                resources: XdsResources { cpu: "200m".into(), memory: "256Mi".into() },
                ports: XdsPorts { grpc: 18000, admin: 18080 },
                discovery: DiscoverySpec { services: vec![], allowed_namespaces: vec![] },
                poll_interval: 5,
                node_id: "envoy-proxy".into(),
            },
            envoy: EnvoySpec {
                replicas: 2,
                max_replicas: 10,
                image: EnvoyImage {
                    repository: "envoyproxy".into(),
                    name: "envoy".into(),
                    tag: "v1.31-latest".into(),
                    pull_policy: "IfNotPresent".into(),
                },
                resources: EnvoyResources { cpu: "500m".into(), memory: "512Mi".into() },
                ports: EnvoyPorts { grpc: 8080, admin: 9901 },
                hpa: HpaSpec { enabled: true, target_cpu_utilization: 70, target_memory_utilization: 80 },
                service: EnvoyServiceSpec { type_: "LoadBalancer".into(), annotations: BTreeMap::new() },
            },
            traffic_defaults: TrafficDefaults { blue_weight: 100, green_weight: 0 },
        }
    }

    /// The file provider path: serde defaults.
    #[test]
    fn minimal_traffic_infra_gets_every_default_from_serde() {
        let ti: TrafficInfra = serde_yaml::from_str(MINIMAL).unwrap();
        assert_eq!(ti.metadata.name.as_deref(), Some("edge"));
        assert_eq!(ti.spec, expected_defaults());
        assert_eq!(ti.spec.xds.image.reference(), format!("ghcr.io/weir-dev/weir:{}", env!("CARGO_PKG_VERSION")));
        assert_eq!(ti.spec.envoy.image.reference(), "envoyproxy/envoy:v1.31-latest");
        assert!(ti.status.is_none());
    }

    /// The API server path: OpenAPI defaults fill the same values, and the result validates.
    #[test]
    fn minimal_traffic_infra_gets_every_default_from_openapi() {
        let schema = schema_of(0);
        let mut obj: Value = serde_yaml::from_str(MINIMAL).unwrap();
        apply_defaults(&mut obj, &schema);
        // Compared as JSON, not deserialized: serde would fill any field the schema fails to default.
        let want = serde_json::to_value(expected_defaults()).unwrap();
        pretty_assertions::assert_eq!(obj["spec"], want);
        let mut spec_only = obj.clone();
        spec_only.as_object_mut().unwrap().retain(|k, _| k == "spec");
        validate(&spec_only, &schema).unwrap();
    }

    #[test]
    fn partial_image_keeps_the_other_defaults() {
        let yaml = format!("{MINIMAL}spec:\n  envoy:\n    image:\n      tag: v1.32-latest\n");
        let ti: TrafficInfra = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(ti.spec.envoy.image.reference(), "envoyproxy/envoy:v1.32-latest");
        assert_eq!(ti.spec.envoy.replicas, 2);
    }

    /// The schema keeps no unknown field, so an API server with strict field validation (kubectl's
    /// default) refuses the old spelling, and with `Warn` names it, instead of pruning it silently.
    #[test]
    fn openapi_refuses_a_renamed_field() {
        let schema = schema_of(0);
        let old = serde_json::json!({"spec": {"envoy": {"hpa": {"targetCpuUtilization": 60}}}});
        let err = validate(&old, &schema).unwrap_err();
        assert!(err.contains("unknown field targetCpuUtilization"), "{err}");
        validate(&serde_json::json!({"spec": {"envoy": {"hpa": {"targetCPUUtilization": 60}}}}), &schema).unwrap();
    }

    #[test]
    fn traffic_infra_serialises_as_a_kubernetes_object() {
        let ti = TrafficInfra::new("edge", TrafficInfraSpec::default());
        let v = serde_json::to_value(&ti).unwrap();
        assert_eq!(v["apiVersion"], "weir.dev/v1alpha1");
        assert_eq!(v["kind"], "TrafficInfra");
        assert!(v.get("status").is_none());
        assert_eq!(serde_json::from_value::<TrafficInfra>(v).unwrap(), ti);
        assert_eq!(<TrafficInfra as kube_core::Resource>::plural(&()), "trafficinfras");
    }

    #[test]
    fn status_round_trips_without_nulls() {
        let status = TrafficInfraStatus { phase: Some(Phase::Ready), ..Default::default() };
        let yaml = serde_yaml::to_string(&status).unwrap();
        assert!(!yaml.contains("null"), "{yaml}");
        assert_eq!(serde_yaml::from_str::<TrafficInfraStatus>(&yaml).unwrap(), status);
    }
}
