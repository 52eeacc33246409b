//! The l7mp VirtualService (`servicemesh.l7mp.io/v1`, `../shared/seeds/002_149202dd8ce26b07.txt`):
//! UDP and TCP listeners on `0.0.0.0:port` for the Envoys whose node labels match `spec.selector`,
//! each with one cluster of endpoints by pod label selector or by DNS name / IP address.
//!
//! The field names are the seed's, snake_case as it prints them (`service_discovery`, `hash_key`,
//! `health_check_port`). Integers are `i64` and enums `String`s so that an out-of-range or unknown
//! value reaches [`crate::xds::virtual_service::validate`], which refuses the VirtualService with a
//! condition naming the field and the rule instead of failing the whole manifest in the file
//! provider. The schema carries the same ranges and enums for the API server.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::backend_traffic_policy::require;

pub const VS_GROUP: &str = "servicemesh.l7mp.io";
pub const VS_API_VERSION: &str = "servicemesh.l7mp.io/v1";
/// The shortest health-check interval the seed allows ("500 ms at least").
pub const MIN_HEALTH_CHECK_INTERVAL_MS: i64 = 500;

/// UDP and TCP proxying for the Envoys whose node labels match `selector`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "servicemesh.l7mp.io",
    version = "v1",
    kind = "VirtualService",
    plural = "virtualservices",
    shortname = "vsvc",
    namespaced,
    status = "VirtualServiceStatus",
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Matched","type":"string","jsonPath":".status.conditions[?(@.type==\"EnvoyMatched\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    crates(kube_core = "::kube_core")
)]
#[schemars(transform = |s: &mut schemars::Schema| require(s, &["selector", "listeners"]))]
pub struct VirtualServiceSpec {
    /// The Envoys this configuration is for: every label must be among the Envoy's node labels
    /// (`node.metadata.labels` in its bootstrap; the operator writes its pods' labels there).
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// One full pipe each, from the listening port to the upstream endpoints.
    #[serde(default)]
    pub listeners: Vec<VsListener>,
}

/// A listener on `0.0.0.0:port`: exactly one of `udp` and `tcp`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[schemars(transform = |s: &mut schemars::Schema| require(s, &["name"]))]
pub struct VsListener {
    /// Unique across every VirtualService: the Envoy listener's name.
    #[serde(default)]
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<VsProxy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<VsProxy>,
}

/// The port a listener listens on and the cluster it forwards to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[schemars(transform = |s: &mut schemars::Schema| require(s, &["port", "cluster"]))]
pub struct VsProxy {
    #[serde(default)]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i64,
    #[serde(default)]
    pub cluster: VsCluster,
}

/// The upstream endpoints of one listener.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[schemars(transform = |s: &mut schemars::Schema| require(s, &["name", "endpoints"]))]
pub struct VsCluster {
    /// Unique across every VirtualService: the Envoy cluster's name.
    #[serde(default)]
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `strictdns` (the seed's only value, the default): endpoints by `host.address` are resolved by
    /// Envoy (STRICT_DNS); `eds`: every endpoint is by `host.selector`, served by EDS.
    #[serde(default = "strictdns")]
    #[schemars(extend("enum" = ["strictdns", "eds"]))]
    pub service_discovery: String,
    /// Active TCP health checks of every endpoint on its `health_check_port`. Absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<VsHealthCheck>,
    /// Consistent hashing (ring hash): every datagram or connection of one key goes to one
    /// endpoint while it is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub hash_key: Option<String>,
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub endpoints: Vec<VsEndpoint>,
}

impl Default for VsCluster {
    fn default() -> Self {
        Self {
            name: String::new(),
            service_discovery: strictdns(),
            health_check: None,
            hash_key: None,
            endpoints: Vec::new(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[schemars(transform = |s: &mut schemars::Schema| require(s, &["interval"]))]
pub struct VsHealthCheck {
    /// Milliseconds between checks; at least 500. Not bounded in the schema, so that a shorter one
    /// reaches `weir xds` and is refused with a condition rather than by the API server.
    #[serde(default)]
    pub interval: i64,
    /// `TCP` only.
    #[serde(default = "tcp")]
    #[schemars(extend("enum" = ["TCP"]))]
    pub protocol: String,
}

/// One upstream host (or, by selector, every matching pod) and its port.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[schemars(transform = |s: &mut schemars::Schema| require(s, &["name", "host", "port"]))]
pub struct VsEndpoint {
    #[serde(default)]
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default)]
    pub host: VsHost,
    /// Where the proxy forwards the data.
    #[serde(default)]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i64,
    /// Where the TCP health check connects; required with `health_check`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub health_check_port: Option<i64>,
}

/// Exactly one of a pod label selector and an address (DNS name or IP).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct VsHost {
    /// Every ready pod in the VirtualService's namespace with these labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
    /// A DNS name (resolved by Envoy) or an IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub address: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct VirtualServiceStatus {
    /// `Accepted`: True when served, False with the reason (`Invalid`, `NameConflict`,
    /// `PortConflict`) and a message naming the field and the rule. `EnvoyMatched`: whether a
    /// connected Envoy's node labels match `spec.selector` (False: `NoMatchingEnvoy`).
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

fn strictdns() -> String {
    "strictdns".into()
}
fn tcp() -> String {
    "TCP".into()
}
