//! The Kubernetes provider: kube-runtime reflectors for Ingresses, Services, EndpointSlices and
//! weir's resources, published as one debounced [`Snapshot`] per change.
//!
//! The provider mirrors what the API server holds and nothing else; the translator decides what it
//! means (an Ingress being deleted gets H = 0, one that is gone or stops matching the filter or
//! domain simply has no intent, and the planner removes its records).

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use super::SnapshotTx;
use crate::crd::{BackendTrafficPolicy, NamespaceConfig, TrafficInfra};
use crate::model::Snapshot;

#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error("cannot read the kubeconfig named by KUBECONFIG: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("cannot find a cluster (no KUBECONFIG, not in a cluster, no ~/.kube/config): {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error("the {0} watch stopped before its cache was filled")]
    NeverSynced(&'static str),
}

/// How long a connection to the API server may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the API server may stay silent on a response. Longer than a watch's server-side
/// timeout (290 s in kube's watcher), so a quiet watch is not cut; calls that must be prompt (leader
/// election) use [`client_with_read_timeout`] and their own deadline.
pub const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// Finds the cluster the way client-go does: `KUBECONFIG` when set, else the in-cluster service
/// account, else `~/.kube/config`. Connect and read timeouts are always set.
pub async fn client() -> Result<Client, KubernetesError> {
    client_with_read_timeout(READ_TIMEOUT).await
}

/// [`client`] with a given read timeout (counted from when a request is sent).
pub async fn client_with_read_timeout(read_timeout: Duration) -> Result<Client, KubernetesError> {
    let mut config = if std::env::var_os("KUBECONFIG").is_some() {
        kube::Config::from_kubeconfig(&Default::default()).await?
    } else {
        match kube::Config::incluster() {
            Ok(c) => c,
            Err(_) => kube::Config::infer().await?,
        }
    };
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(read_timeout);
    config.write_timeout = Some(read_timeout);
    // Count the read timeout from the request, not from when a pooled connection went idle.
    config.reset_reader_on_write = true;
    Ok(Client::try_from(config)?)
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Provider settings.
#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    /// Changes arriving within this window are published as one snapshot.
    pub debounce: Duration,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self { debounce: Duration::from_millis(200) }
    }
}

/// The caches the provider keeps; clones are cheap readers.
#[derive(Clone)]
struct Caches {
    ingresses: Store<Ingress>,
    services: Store<Service>,
    endpoint_slices: Store<EndpointSlice>,
    traffic_infras: Store<TrafficInfra>,
    backend_traffic_policies: Store<BackendTrafficPolicy>,
    namespace_configs: Store<NamespaceConfig>,
}

impl Caches {
    fn snapshot(&self, revision: u64) -> Snapshot {
        fn owned<K>(s: &Store<K>) -> Vec<K>
        where
            K: Resource + Clone + 'static,
            K::DynamicType: std::hash::Hash + Eq + Clone,
        {
            s.state().iter().map(|o| (**o).clone()).collect()
        }
        let mut snapshot = Snapshot {
            revision,
            ingresses: owned(&self.ingresses),
            services: owned(&self.services),
            endpoint_slices: owned(&self.endpoint_slices),
            traffic_infras: owned(&self.traffic_infras),
            backend_traffic_policies: owned(&self.backend_traffic_policies),
            namespace_configs: owned(&self.namespace_configs),
        };
        snapshot.normalize();
        snapshot
    }
}

/// Starts one reflector per kind and returns its cache. The watch retries with backoff forever: a
/// missing CRD or a lost connection is logged and retried while the other kinds keep working.
fn reflect<K>(client: &Client, changed: Arc<Notify>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let api: Api<K> = Api::all(client.clone());
    let kind = K::kind(&());
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default())
            // Field-manager bookkeeping and kubectl's copy of the last applied object are never read;
            // dropping them keeps the caches small.
            .modify(|o| {
                o.managed_fields_mut().clear();
                o.annotations_mut().remove(LAST_APPLIED);
            })
            .default_backoff(),
    );
    tokio::spawn(async move {
        let mut failing = false;
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => {
                    if failing {
                        tracing::info!(%kind, "watch recovered");
                        failing = false;
                    }
                    changed.notify_one();
                }
                Err(e) => {
                    // Log the first failure loudly and the retries quietly: a missing CRD repeats.
                    if failing {
                        tracing::debug!(%kind, error = %e, "watch still failing; retrying");
                    } else {
                        tracing::warn!(%kind, error = %e, "watch failed; retrying with backoff (is the CRD installed and is RBAC granted?)");
                        failing = true;
                    }
                }
            }
        }
    });
    reader
}

/// Watches the cluster and publishes a snapshot on `tx` after the Ingress, Service and
/// EndpointSlice caches are filled and then after every change (debounced). Revisions start at 1,
/// so a consumer that waits for `revision > 0` never acts on an empty cache and removes records.
/// weir's own resources are published as they arrive; their absence does not hold anything back.
pub async fn run(client: Client, config: KubernetesConfig, tx: SnapshotTx) -> Result<(), KubernetesError> {
    let changed = Arc::new(Notify::new());
    let caches = Caches {
        ingresses: reflect(&client, changed.clone()),
        services: reflect(&client, changed.clone()),
        endpoint_slices: reflect(&client, changed.clone()),
        traffic_infras: reflect(&client, changed.clone()),
        backend_traffic_policies: reflect(&client, changed.clone()),
        namespace_configs: reflect(&client, changed.clone()),
    };
    caches.ingresses.wait_until_ready().await.map_err(|_| KubernetesError::NeverSynced("Ingress"))?;
    caches.services.wait_until_ready().await.map_err(|_| KubernetesError::NeverSynced("Service"))?;
    caches.endpoint_slices.wait_until_ready().await.map_err(|_| KubernetesError::NeverSynced("EndpointSlice"))?;

    let mut revision = tx.borrow().revision;
    loop {
        revision += 1;
        let snapshot = caches.snapshot(revision);
        tracing::debug!(
            revision,
            ingresses = snapshot.ingresses.len(),
            services = snapshot.services.len(),
            endpoint_slices = snapshot.endpoint_slices.len(),
            "publishing snapshot"
        );
        if tx.send(Arc::new(snapshot)).is_err() {
            // Every consumer is gone: the process is shutting down.
            return Ok(());
        }
        changed.notified().await;
        tokio::time::sleep(config.debounce).await;
    }
}
