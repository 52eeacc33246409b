//! The Kubernetes provider: kube-runtime reflectors for Ingresses, Services, EndpointSlices, weir's
//! resources and the Gateway API kinds the API server serves (plus Namespaces, for route
//! selectors), published as one debounced [`Snapshot`] per change.
//!
//! The provider mirrors what the API server holds and nothing else; the translator decides what it
//! means (an Ingress being deleted gets H = 0, one that is gone or stops matching the filter or
//! domain simply has no intent, and the planner removes its records).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use super::SnapshotTx;
use crate::crd::{BackendTrafficPolicy, NamespaceConfig, TrafficInfra, VirtualService};
use crate::gateway::{Gateway, GrpcRoute, HttpRoute, TlsRoute};
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
/// election) bound themselves with their own deadline.
pub const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// Finds the cluster the way client-go does: `KUBECONFIG` when set, else the in-cluster service
/// account, else `~/.kube/config`. Connect and read timeouts are always set. A process builds one
/// (`app::runtime::Runtime::kube`) and every component shares its connection pool.
pub async fn client() -> Result<Client, KubernetesError> {
    let mut config = if std::env::var_os("KUBECONFIG").is_some() {
        kube::Config::from_kubeconfig(&Default::default()).await?
    } else {
        match kube::Config::incluster() {
            Ok(c) => c,
            Err(_) => kube::Config::infer().await?,
        }
    };
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(READ_TIMEOUT);
    config.write_timeout = Some(READ_TIMEOUT);
    // Count the read timeout from the request, not from when a pooled connection went idle.
    config.reset_reader_on_write = true;
    // One line per client built: a test counts them.
    tracing::info!(cluster_url = %config.cluster_url, "Kubernetes client built");
    Ok(Client::try_from(config)?)
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// `weir_kube_watch_errors_total{kind,code}`: failed lists and watches of the provider, by kind and
/// HTTP status (`403`: RBAC denies it; alert on it). Process-wide: one provider per process.
static WATCH_ERRORS: std::sync::LazyLock<Family<Vec<(String, String)>, Counter>> =
    std::sync::LazyLock::new(Family::default);
/// Watches (`KIND SCOPE`) whose list or watch was denied (403), and when last: while one was denied within
/// [`DENIED_FOR`], the process is not ready. A resumed watch that works again yields no event until
/// something changes, so a denial also expires: the watcher retries at least every 30 s (its
/// backoff's cap), and a retry still denied renews it.
static DENIED: std::sync::LazyLock<parking_lot::Mutex<BTreeMap<String, std::time::Instant>>> =
    std::sync::LazyLock::new(Default::default);
const DENIED_FOR: Duration = Duration::from_secs(45);

/// `weir_kube_relists_total{kind,result}`: periodic full re-lists (the fallback beside a watch) by
/// outcome: `unchanged`, `changed` (the watch had missed something), `error`.
static RELISTS: std::sync::LazyLock<Family<Vec<(String, String)>, Counter>> = std::sync::LazyLock::new(Family::default);

/// Registers the provider's metrics.
pub fn register_metrics(registry: &mut prometheus_client::registry::Registry) {
    let r = registry.sub_registry_with_prefix("weir_kube");
    r.register(
        "watch_errors",
        "Failed Kubernetes lists and watches of the provider, by kind and HTTP status (403: RBAC denied)",
        WATCH_ERRORS.clone(),
    );
    r.register(
        "relists",
        "Periodic full re-lists beside the watch, by kind and result (changed: the watch had missed a change)",
        RELISTS.clone(),
    );
}

/// False while a list or watch the provider needs is denied by RBAC (the caches then hold what they
/// had, and nothing published is removed, but changes are no longer seen).
pub fn authorized() -> bool {
    DENIED.lock().values().all(|at| at.elapsed() > DENIED_FOR)
}

/// The HTTP status of a watcher error, when the API server answered one.
fn status_code(e: &watcher::Error) -> Option<u16> {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    }
}

/// Provider settings.
#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    /// Changes arriving within this window are published as one snapshot.
    pub debounce: Duration,
    /// What is watched, and where.
    pub scope: WatchScope,
    /// When set, EndpointSlices are also re-listed in full at this period (`weir xds`: the
    /// TrafficInfra's `xds.pollInterval`), so that a change the watch missed is served anyway.
    pub endpoint_relist: Option<tokio::sync::watch::Receiver<Duration>>,
    /// Liveness of the watches' snapshot loop: beats on every snapshot and while waiting for changes.
    pub heartbeat: crate::telemetry::Heartbeat,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(200),
            scope: WatchScope::default(),
            endpoint_relist: None,
            heartbeat: crate::telemetry::Heartbeat::detached(),
        }
    }
}

/// Which kinds are watched, and where. The controller watches everything cluster-wide; `weir xds`
/// watches only its own namespace and only what it translates, so that the namespaced Role the
/// operator grants it suffices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchScope {
    /// `None`: every namespace (cluster-scope list and watch).
    pub namespace: Option<String>,
    pub ingresses: bool,
    pub namespace_configs: bool,
    /// The Gateway API kinds the API server serves (found by discovery at start), and Namespaces
    /// for their `allowedRoutes` selectors.
    pub gateway_api: bool,
    /// Further namespaces whose Services and EndpointSlices are watched (`weir xds
    /// --watch-namespace`; `*`: those two kinds at the cluster scope). Each is its own watch, so a
    /// denied one is logged with its namespace.
    pub service_namespaces: Vec<String>,
    /// l7mp VirtualServices and the Pods their selectors pick (`weir xds` only).
    pub virtual_services: bool,
}

impl Default for WatchScope {
    fn default() -> Self {
        Self {
            namespace: None,
            ingresses: true,
            namespace_configs: true,
            gateway_api: true,
            service_namespaces: Vec::new(),
            virtual_services: false,
        }
    }
}

impl WatchScope {
    /// What `weir xds` needs: Services, EndpointSlices, TrafficInfras, BackendTrafficPolicies,
    /// VirtualServices and Pods in `namespace`, and Services and EndpointSlices in
    /// `service_namespaces` too.
    pub fn xds(namespace: &str, service_namespaces: &[String]) -> Self {
        Self {
            namespace: Some(namespace.to_string()),
            ingresses: false,
            namespace_configs: false,
            gateway_api: false,
            service_namespaces: service_namespaces.iter().filter(|n| *n != namespace).cloned().collect(),
            virtual_services: true,
        }
    }
}

/// The caches the provider keeps; clones are cheap readers.
#[derive(Clone)]
struct Caches {
    ingresses: Store<Ingress>,
    /// One store per watched namespace (one in all, except for `weir xds --watch-namespace`).
    services: Vec<Store<Service>>,
    endpoint_slices: Vec<Store<EndpointSlice>>,
    traffic_infras: Store<TrafficInfra>,
    backend_traffic_policies: Store<BackendTrafficPolicy>,
    namespace_configs: Store<NamespaceConfig>,
    gateways: Store<Gateway>,
    http_routes: Store<HttpRoute>,
    grpc_routes: Store<GrpcRoute>,
    tls_routes: Store<TlsRoute>,
    namespaces: Store<Namespace>,
    virtual_services: Store<VirtualService>,
    pods: Store<Pod>,
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
        fn all<K>(stores: &[Store<K>]) -> Vec<K>
        where
            K: Resource + Clone + 'static,
            K::DynamicType: std::hash::Hash + Eq + Clone,
        {
            stores.iter().flat_map(owned).collect()
        }
        let mut snapshot = Snapshot {
            revision,
            ingresses: owned(&self.ingresses),
            services: all(&self.services),
            endpoint_slices: all(&self.endpoint_slices),
            traffic_infras: owned(&self.traffic_infras),
            backend_traffic_policies: owned(&self.backend_traffic_policies),
            namespace_configs: owned(&self.namespace_configs),
            gateways: owned(&self.gateways),
            http_routes: owned(&self.http_routes),
            grpc_routes: owned(&self.grpc_routes),
            tls_routes: owned(&self.tls_routes),
            namespaces: owned(&self.namespaces),
            virtual_services: owned(&self.virtual_services),
            pods: owned(&self.pods),
        };
        snapshot.normalize();
        snapshot
    }
}

/// Starts one reflector per kind and returns its cache. The watch retries with backoff forever: a
/// missing CRD or a lost connection is logged and retried while the other kinds keep working.
/// Not `enabled`: an empty cache that is never filled, and no request.
fn reflect<K>(
    client: &Client,
    scope: &WatchScope,
    enabled: bool,
    changed: Arc<Notify>,
    relist: Option<tokio::sync::watch::Receiver<Duration>>,
) -> Store<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    if !enabled {
        return reflector::store::<K>().0;
    }
    let api: Api<K> = match &scope.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let where_ = scope.namespace.as_ref().map_or("at the cluster scope".to_string(), |n| format!("in namespace {n}"));
    reflect_api(api, where_, changed, relist)
}

/// [`reflect`] for the kinds `weir xds --watch-namespace` widens (Services, EndpointSlices): the
/// scope's namespace and each of `scope.service_namespaces`, one watch each; with `*` among them,
/// one watch at the cluster scope.
fn reflect_services<K>(
    client: &Client,
    scope: &WatchScope,
    changed: Arc<Notify>,
    relist: Option<tokio::sync::watch::Receiver<Duration>>,
) -> Vec<Store<K>>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    if scope.service_namespaces.iter().any(|n| n == "*") {
        let api = Api::<K>::all(client.clone());
        return vec![reflect_api(api, "at the cluster scope".into(), changed, relist)];
    }
    let mut stores = vec![reflect(client, scope, true, changed.clone(), relist.clone())];
    for ns in &scope.service_namespaces {
        let api = Api::<K>::namespaced(client.clone(), ns);
        stores.push(reflect_api(api, format!("in namespace {ns}"), changed.clone(), relist.clone()));
    }
    stores
}

/// [`reflect`] on a given API (any scope).
fn reflect_api<K>(
    api: Api<K>,
    where_: String,
    changed: Arc<Notify>,
    relist: Option<tokio::sync::watch::Receiver<Duration>>,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let (reader, mut writer) = reflector::store::<K>();
    let kind = K::kind(&());
    let stream = watcher(api.clone(), watcher::Config::default())
        // Field-manager bookkeeping and kubectl's copy of the last applied object are never read;
        // dropping them keeps the caches small.
        .modify(strip)
        .default_backoff();
    let store = reader.clone();
    let mut health = WatchHealth::of::<K>(where_);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        // Between a watch's Init and InitDone the store is being refilled; a re-list waits.
        let mut in_init = false;
        let mut relist = relist;
        loop {
            let event = tokio::select! {
                e = stream.next() => match e {
                    Some(e) => e,
                    None => break,
                },
                () = relist_due(&mut relist) => {
                    if !in_init {
                        relist_into(&api, &store, &mut writer, &kind, &changed).await;
                    }
                    continue;
                }
            };
            if let Ok(ev) = &event {
                match ev {
                    watcher::Event::Init => in_init = true,
                    watcher::Event::InitDone => in_init = false,
                    _ => {}
                }
                writer.apply_watcher_event(ev);
            }
            match event {
                Ok(_) => {
                    health.ok();
                    changed.notify_one();
                }
                Err(e) => health.failed(&e),
            }
        }
    });
    reader
}

/// How one watch is doing: its logs (the first failure loudly, retries quietly), the denied list
/// and `weir_kube_watch_errors_total`.
struct WatchHealth {
    kind: String,
    plural: String,
    group: String,
    /// `in namespace NS` or `at the cluster scope`.
    where_: String,
    /// One watch of a kind may be denied while another (in another namespace) works.
    denied_key: String,
    failing: bool,
}

impl WatchHealth {
    fn of<K: Resource<DynamicType = ()>>(where_: String) -> Self {
        let kind = K::kind(&()).to_string();
        Self {
            denied_key: format!("{kind} {where_}"),
            kind,
            plural: K::plural(&()).to_string(),
            group: K::group(&()).to_string(),
            where_,
            failing: false,
        }
    }

    fn ok(&mut self) {
        if self.failing {
            tracing::info!(kind = %self.kind, "watch recovered");
            self.failing = false;
        }
        DENIED.lock().remove(&self.denied_key);
    }

    fn failed(&mut self, e: &watcher::Error) {
        let Self { kind, plural, group, where_, .. } = &*self;
        let code = status_code(e);
        let labels = vec![
            ("kind".to_string(), kind.to_string()),
            ("code".to_string(), code.map_or("none".to_string(), |c| c.to_string())),
        ];
        WATCH_ERRORS.get_or_create(&labels).inc();
        if code == Some(403) {
            // RBAC changed under us (or was never granted): say exactly what is missing.
            if DENIED.lock().insert(self.denied_key.clone(), std::time::Instant::now()).is_none() {
                tracing::error!(%kind, verb = "list/watch", resource = %plural, group = %group, scope = %where_, error = %e,
                    "Kubernetes denied list/watch of {plural} (group {group:?}) {where_}: not ready until it is granted; what is published stays");
            }
            self.failing = true;
            return;
        }
        // Log the first failure loudly and the retries quietly: a missing CRD repeats.
        if self.failing {
            tracing::debug!(%kind, error = %e, "watch still failing; retrying");
        } else {
            tracing::warn!(%kind, error = %e, "watch failed; retrying with backoff (is the CRD installed and is RBAC granted?)");
            self.failing = true;
        }
    }
}

fn strip<K: Resource>(o: &mut K) {
    o.managed_fields_mut().clear();
    o.annotations_mut().remove(LAST_APPLIED);
}

/// Waits one re-list period (re-read each time, so a changed `pollInterval` applies at once);
/// never returns without a period.
async fn relist_due(relist: &mut Option<tokio::sync::watch::Receiver<Duration>>) {
    let Some(rx) = relist.as_mut() else { return std::future::pending().await };
    let period = (*rx.borrow_and_update()).max(Duration::from_millis(100));
    tokio::select! {
        _ = tokio::time::sleep(period) => {}
        // A new period starts counting now.
        Ok(()) = rx.changed() => Box::pin(relist_due(relist)).await,
    }
}

/// One full list; when it differs from the store (a change the watch missed), it replaces the
/// store's content and a snapshot is published.
async fn relist_into<K>(
    api: &Api<K>,
    store: &Store<K>,
    writer: &mut reflector::store::Writer<K>,
    kind: &str,
    changed: &Notify,
) where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let result = |r: &str| vec![("kind".to_string(), kind.to_string()), ("result".to_string(), r.to_string())];
    let list = match api.list(&Default::default()).await {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(%kind, error = %e, "re-list failed; the watch goes on");
            RELISTS.get_or_create(&result("error")).inc();
            return;
        }
    };
    let versions =
        |objs: &mut dyn Iterator<Item = (String, String, String)>| objs.collect::<std::collections::BTreeSet<_>>();
    let key = |o: &K| (o.namespace().unwrap_or_default(), o.name_any(), o.resource_version().unwrap_or_default());
    let listed = versions(&mut list.items.iter().map(key));
    let cached = versions(&mut store.state().iter().map(|o| key(o)));
    if listed == cached {
        RELISTS.get_or_create(&result("unchanged")).inc();
        return;
    }
    tracing::info!(%kind, listed = listed.len(), cached = cached.len(), "re-list found changes the watch missed");
    RELISTS.get_or_create(&result("changed")).inc();
    writer.apply_watcher_event(&watcher::Event::Init);
    for mut o in list.items {
        strip(&mut o);
        writer.apply_watcher_event(&watcher::Event::InitApply(o));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    changed.notify_one();
}

/// The Gateway API kinds the API server serves, found by discovery: `gateway.networking.k8s.io/v1`
/// gateways, httproutes, grpcroutes and `v1alpha2` tlsroutes. Only those are watched (a kind not
/// installed would be a watch that fails forever). Read once at start: installing the Gateway API
/// CRDs later takes a restart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GatewayKinds {
    pub gateways: bool,
    pub http_routes: bool,
    pub grpc_routes: bool,
    pub tls_routes: bool,
}

impl GatewayKinds {
    pub fn any(&self) -> bool {
        self.gateways || self.http_routes || self.grpc_routes || self.tls_routes
    }
}

/// Asks the API server which Gateway API kinds it serves. A group version it does not know (404)
/// serves none; any other failure is an error (starting without a source that exists would remove
/// its records).
pub async fn served_gateway_kinds(client: &Client) -> Result<GatewayKinds, KubernetesError> {
    async fn resources(client: &Client, group_version: &str) -> Result<Vec<String>, KubernetesError> {
        match client.list_api_group_resources(group_version).await {
            Ok(list) => Ok(list.resources.into_iter().map(|r| r.name).collect()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }
    let group = crate::gateway::GROUP;
    let v1 = resources(client, &format!("{group}/v1")).await?;
    let v1alpha2 = resources(client, &format!("{group}/v1alpha2")).await?;
    let has = |list: &[String], plural: &str| list.iter().any(|r| r == plural);
    Ok(GatewayKinds {
        gateways: has(&v1, "gateways"),
        http_routes: has(&v1, "httproutes"),
        grpc_routes: has(&v1, "grpcroutes"),
        tls_routes: has(&v1alpha2, "tlsroutes"),
    })
}

/// Watches the cluster and publishes a snapshot on `tx` after the Ingress, Service and
/// EndpointSlice caches are filled and then after every change (debounced). Revisions start at 1,
/// so a consumer that waits for `revision > 0` never acts on an empty cache and removes records.
/// weir's own resources are published as they arrive; their absence does not hold anything back.
pub async fn run(client: Client, config: KubernetesConfig, tx: SnapshotTx) -> Result<(), KubernetesError> {
    let changed = Arc::new(Notify::new());
    let scope = &config.scope;
    let gateway_kinds = if scope.gateway_api { served_gateway_kinds(&client).await? } else { GatewayKinds::default() };
    if scope.gateway_api {
        tracing::info!(?gateway_kinds, "Gateway API kinds served by the API server (only these are watched)");
    }
    let caches = Caches {
        ingresses: reflect(&client, scope, scope.ingresses, changed.clone(), None),
        services: reflect_services(&client, scope, changed.clone(), None),
        endpoint_slices: reflect_services(&client, scope, changed.clone(), config.endpoint_relist.clone()),
        traffic_infras: reflect(&client, scope, true, changed.clone(), None),
        backend_traffic_policies: reflect(&client, scope, true, changed.clone(), None),
        namespace_configs: reflect(&client, scope, scope.namespace_configs, changed.clone(), None),
        gateways: reflect(&client, scope, gateway_kinds.gateways, changed.clone(), None),
        http_routes: reflect(&client, scope, gateway_kinds.http_routes, changed.clone(), None),
        grpc_routes: reflect(&client, scope, gateway_kinds.grpc_routes, changed.clone(), None),
        tls_routes: reflect(&client, scope, gateway_kinds.tls_routes, changed.clone(), None),
        namespaces: if gateway_kinds.gateways {
            reflect_api(Api::<Namespace>::all(client.clone()), "at the cluster scope".into(), changed.clone(), None)
        } else {
            reflector::store::<Namespace>().0
        },
        virtual_services: reflect(&client, scope, scope.virtual_services, changed.clone(), None),
        pods: reflect(&client, scope, scope.virtual_services, changed.clone(), None),
    };
    if scope.ingresses {
        caches.ingresses.wait_until_ready().await.map_err(|_| KubernetesError::NeverSynced("Ingress"))?;
    }
    // Every watched namespace too: a namespace whose list is denied keeps the first snapshot (and
    // readiness) back, with an error naming it, rather than serving without its Services.
    for store in &caches.services {
        store.wait_until_ready().await.map_err(|_| KubernetesError::NeverSynced("Service"))?;
    }
    for store in &caches.endpoint_slices {
        store.wait_until_ready().await.map_err(|_| KubernetesError::NeverSynced("EndpointSlice"))?;
    }
    // Every served host source is filled before the first snapshot, so that none of its records is
    // removed for looking absent.
    if gateway_kinds.gateways {
        caches.gateways.wait_until_ready().await.map_err(|_| KubernetesError::NeverSynced("Gateway"))?;
        caches.namespaces.wait_until_ready().await.map_err(|_| KubernetesError::NeverSynced("Namespace"))?;
    }
    if gateway_kinds.http_routes {
        caches.http_routes.wait_until_ready().await.map_err(|_| KubernetesError::NeverSynced("HTTPRoute"))?;
    }
    if gateway_kinds.grpc_routes {
        caches.grpc_routes.wait_until_ready().await.map_err(|_| KubernetesError::NeverSynced("GRPCRoute"))?;
    }
    if gateway_kinds.tls_routes {
        caches.tls_routes.wait_until_ready().await.map_err(|_| KubernetesError::NeverSynced("TLSRoute"))?;
    }

    let mut revision = tx.borrow().revision;
    loop {
        config.heartbeat.beat();
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
        config.heartbeat.idle(changed.notified()).await;
        tokio::time::sleep(config.debounce).await;
    }
}
