//! NamespaceConfig (`weir.dev/v1alpha1`): scheduling settings of the pods the operator creates.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, LocalObjectReference, Toleration};
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Scheduling settings inherited by every pod the operator creates in this namespace. A
/// TrafficInfra stays Pending until its namespace has one.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "NamespaceConfig",
    plural = "namespaceconfigs",
    namespaced,
    crates(kube_core = "::kube_core")
)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceConfigSpec {
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default)]
    pub image_pull_secrets: Vec<LocalObjectReference>,
}
