//! The shared xDS state in the cluster: a ConfigMap `{name}-xds-state` in the xDS namespace (the one
//! the operator creates and grants), holding the [`TrafficState`] as JSON under [`DATA_KEY`].
//!
//! The compare-and-swap is two-level: the stored revision must be the expected one, and the write
//! carries the ConfigMap's `resourceVersion`, so a replica that wrote in between makes the API
//! server answer 409 Conflict, which is a lost race (`Ok(false)`), not an error.

use async_trait::async_trait;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};

use super::model::TrafficState;
use super::state::{StateError, StateStore};

/// The ConfigMap key holding the state.
pub const DATA_KEY: &str = "state.json";

/// Distinct from the operator's manager: its server-side apply of the (data-less) ConfigMap then
/// leaves `data` alone.
const FIELD_MANAGER: &str = "weir-xds";

/// The ConfigMap name for the traffic configuration `name` (as the operator names it).
pub fn configmap_name(name: &str) -> String {
    format!("{name}-xds-state")
}

pub struct KubeConfigMapStore {
    api: Api<ConfigMap>,
    namespace: String,
    name: String,
}

impl KubeConfigMapStore {
    /// The store of traffic configuration `name` in `namespace`.
    pub fn new(client: Client, namespace: &str, name: &str) -> Self {
        Self { api: Api::namespaced(client, namespace), namespace: namespace.to_string(), name: configmap_name(name) }
    }

    fn params(&self) -> PostParams {
        PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }
    }

    fn object(&self) -> String {
        format!("ConfigMap {}/{}", self.namespace, self.name)
    }

    fn api_err(&self, op: &'static str, source: kube::Error) -> StateError {
        StateError::Kube { op, object: self.object(), source }
    }

    async fn get(&self) -> Result<Option<ConfigMap>, StateError> {
        self.api.get_opt(&self.name).await.map_err(|e| self.api_err("get", e))
    }

    fn parse(&self, cm: &ConfigMap) -> Result<Option<TrafficState>, StateError> {
        cm.data
            .as_ref()
            .and_then(|d| d.get(DATA_KEY))
            .map(|body| {
                serde_json::from_str(body).map_err(|source| StateError::CorruptObject { object: self.object(), source })
            })
            .transpose()
    }
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

#[async_trait]
impl StateStore for KubeConfigMapStore {
    async fn read(&self) -> Result<Option<TrafficState>, StateError> {
        match self.get().await? {
            Some(cm) => self.parse(&cm),
            None => Ok(None),
        }
    }

    async fn compare_and_swap(&self, expected: Option<u64>, next: &TrafficState) -> Result<bool, StateError> {
        let body = serde_json::to_string(next)
            .map_err(|source| StateError::CorruptObject { object: self.object(), source })?;
        match self.get().await? {
            None => {
                if expected.is_some() {
                    return Ok(false);
                }
                // Normally the operator created it; without the operator the first writer does.
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(self.namespace.clone()),
                        ..Default::default()
                    },
                    data: Some([(DATA_KEY.to_string(), body)].into()),
                    ..Default::default()
                };
                match self.api.create(&self.params(), &cm).await {
                    Ok(_) => Ok(true),
                    Err(e) if conflict(&e) => Ok(false),
                    Err(e) => Err(self.api_err("create", e)),
                }
            }
            Some(cm) => {
                if self.parse(&cm)?.map(|s| s.revision) != expected {
                    return Ok(false);
                }
                // A merge patch (the `patch` verb the operator's Role grants on this one ConfigMap),
                // carrying the read's `metadata.resourceVersion`: the precondition.
                let patch = serde_json::json!({
                    "metadata": {"resourceVersion": cm.metadata.resource_version},
                    "data": {DATA_KEY: body},
                });
                let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
                match self.api.patch(&self.name, &params, &Patch::Merge(&patch)).await {
                    Ok(_) => Ok(true),
                    Err(e) if conflict(&e) => Ok(false),
                    Err(e) => Err(self.api_err("patch", e)),
                }
            }
        }
    }

    fn describe(&self) -> String {
        format!("kubernetes {}", self.object())
    }
}
