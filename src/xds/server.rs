//! The tonic ADS and CSDS servers: thin. Each ADS stream runs one sans-IO state machine
//! ([`super::ads`]) in a task that waits on the client, the snapshot cache and the drain signal,
//! and writes what the machine returns. The machines are registered in [`Clients`], which CSDS,
//! `/clients` and `/config_dump` read.
//!
//! A request that opens a type on a stream (an initial fetch) is answered only under one of at most
//! `initial_concurrency` permits, so that a reconnect storm computes and sends a bounded number of
//! initial snapshots at once; the rest queue (`weir_xds_initial_waiting`).
//!
//! Streams are bounded per connection and in all, and what one stream may subscribe to, by
//! [`super::limits`].

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures::Stream;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use prost::Message;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use xds_api::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use xds_api::pb::envoy::service::discovery::v3 as xdisc;
use xds_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use xds_api::pb::envoy::service::status::v3 as xstatus;
use xds_api::pb::envoy::service::status::v3::client_status_discovery_service_server::{
    ClientStatusDiscoveryService, ClientStatusDiscoveryServiceServer,
};
use xds_api::pb::google::protobuf::Timestamp;

use super::ads::{DeltaStream, Event, SotwStream, Step, StreamStatus};
use super::cache::SnapshotCache;
use super::limits::{StreamLimiter, StreamSlot, XdsLimits};
use super::resources::ResourceType;
use super::snapshot::XdsSnapshot;
use crate::telemetry::clip;

type Labels = Vec<(String, String)>;

fn type_label(ty: ResourceType) -> Labels {
    vec![("type".into(), ty.label().into())]
}

/// Initial fetches answered at once by default: sized for 2 cores (the work is CPU-bound encoding
/// and copying; more in flight only adds queueing inside the runtime).
pub const DEFAULT_INITIAL_CONCURRENCY: u16 = 4;

/// The xDS metrics, registered by the server that updates them. Every `type` label is
/// [`ResourceType::label`]: `cluster`, `endpoint`, `listener`, `route`.
#[derive(Clone)]
pub struct XdsMetrics {
    pub connected_clients: Gauge,
    pub pushes: Family<Labels, Counter>,
    pub resources_sent: Family<Labels, Counter>,
    pub bytes_sent: Family<Labels, Counter>,
    pub nacks: Family<Labels, Counter>,
    pub push_latency: Histogram,
    pub initial_waiting: Gauge,
    pub initial_wait: Histogram,
}

impl XdsMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            connected_clients: Gauge::default(),
            pushes: Family::default(),
            resources_sent: Family::default(),
            bytes_sent: Family::default(),
            nacks: Family::default(),
            push_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            initial_waiting: Gauge::default(),
            initial_wait: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
        };
        let r = registry.sub_registry_with_prefix("weir_xds");
        r.register("connected_clients", "Open ADS streams", m.connected_clients.clone());
        r.register("pushes", "xDS responses sent, by type", m.pushes.clone());
        r.register("resources_sent", "Resources carried by xDS responses, by type", m.resources_sent.clone());
        r.register("bytes_sent", "Encoded size of xDS responses, by type", m.bytes_sent.clone());
        r.register("nacks", "xDS responses rejected by a client, by type", m.nacks.clone());
        r.register(
            "push_latency_seconds",
            "Time from a snapshot being published to a stream sending the update",
            m.push_latency.clone(),
        );
        r.register(
            "initial_waiting",
            "Initial fetches waiting for one of the --xds-initial-concurrency permits",
            m.initial_waiting.clone(),
        );
        r.register("initial_wait_seconds", "Time an initial fetch waited for a permit", m.initial_wait.clone());
        // Every type from the start (a family without samples is not exposed): alerts see the first NACK.
        for ty in ResourceType::ALL {
            for family in [&m.pushes, &m.resources_sent, &m.bytes_sent, &m.nacks] {
                let _ = family.get_or_create(&type_label(ty));
            }
        }
        m
    }
}

/// What the registry can ask of a stream's machine.
trait Inspect: Send {
    fn status(&self) -> StreamStatus;
    fn client_config(&self) -> xstatus::ClientConfig;
    fn nacked_at(&self, ty: ResourceType) -> Option<SystemTime>;
}

/// A stream's machine and when the server saw each type's last NACK (the machine has no clock).
struct Tracked<P> {
    proto: P,
    nacked_at: BTreeMap<ResourceType, SystemTime>,
}

impl<P: Protocol> Inspect for Tracked<P> {
    fn status(&self) -> StreamStatus {
        self.proto.status()
    }
    fn client_config(&self) -> xstatus::ClientConfig {
        self.proto.client_config(&|ty| self.nacked_at.get(&ty).map(|t| timestamp(*t)))
    }
    fn nacked_at(&self, ty: ResourceType) -> Option<SystemTime> {
        self.nacked_at.get(&ty).copied()
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX), nanos: d.subsec_nanos() as i32 }
}

type Machine = Arc<Mutex<dyn Inspect>>;

/// A stream's responses on their way to tonic.
type Outbound<R> = mpsc::Sender<Box<Result<R, Status>>>;

/// Learns what every stream did after each step (its status and the events: ACKs and NACKs); the
/// TrafficInfra status writer uses it for `ConfigAccepted`. Called with no lock held; must not block.
pub trait StreamObserver: Send + Sync {
    fn observe(&self, status: &StreamStatus, events: &[Event]);
}

/// Which node ids this server serves: `xds.nodeID` of its TrafficInfra (`None`: any, e.g. no
/// TrafficInfra in the inputs), unless `allow_any` (`--allow-any-node-id`, for mixed fleets).
#[derive(Clone)]
pub struct NodePolicy {
    pub expected: watch::Receiver<Option<String>>,
    pub allow_any: bool,
    /// `weir_xds_rejected_nodes_total`: streams refused for their node id.
    pub rejected: Counter,
}

impl NodePolicy {
    pub fn any() -> Self {
        Self { expected: watch::channel(None).1, allow_any: true, rejected: Counter::default() }
    }

    pub fn register(self, registry: &mut Registry) -> Self {
        let r = registry.sub_registry_with_prefix("weir_xds");
        r.register(
            "rejected_nodes",
            "ADS streams refused because their node id is not the TrafficInfra's xds.nodeID",
            self.rejected.clone(),
        );
        self
    }

    /// `Err(expected)` when `node` may not be served.
    fn check(&self, node: &str) -> Result<(), String> {
        match &*self.expected.borrow() {
            Some(want) if !self.allow_any && want != node => Err(want.clone()),
            _ => Ok(()),
        }
    }
}

/// Every open stream's machine, for CSDS, `/clients` and `/config_dump`. Each is locked only
/// briefly: by its own task per input, by a reader per query.
#[derive(Clone, Default)]
pub struct Clients {
    inner: Arc<Mutex<BTreeMap<u64, Machine>>>,
    next: Arc<AtomicU64>,
}

impl Clients {
    fn streams(&self) -> Vec<Machine> {
        self.inner.lock().values().cloned().collect()
    }

    /// Every open stream's status, oldest stream first.
    pub fn all(&self) -> Vec<StreamStatus> {
        self.streams().iter().map(|s| s.lock().status()).collect()
    }

    /// CSDS's view of every open stream, oldest first.
    pub fn client_configs(&self) -> Vec<xstatus::ClientConfig> {
        self.streams().iter().map(|s| s.lock().client_config()).collect()
    }

    /// `GET /clients`: node id → type → what it ACKed and its last NACK. When one node has several
    /// streams, the newest wins.
    pub fn by_node(&self) -> BTreeMap<String, BTreeMap<&'static str, serde_json::Value>> {
        let mut out = BTreeMap::new();
        for s in self.streams() {
            let s = s.lock();
            let status = s.status();
            let types = status
                .types
                .iter()
                .map(|(ty, t)| {
                    let nacked_at = ResourceType::from_label(ty)
                        .and_then(|ty| s.nacked_at(ty))
                        .map(|t| humantime::format_rfc3339_millis(t).to_string());
                    let state = if t.nacked_version.is_some() {
                        "NACKED"
                    } else if t.acked_version.is_some() {
                        "ACKED"
                    } else {
                        "REQUESTED"
                    };
                    let last_nack = t.last_nack.as_ref().map(
                        |n| serde_json::json!({ "version": n.version, "message": clip(&n.message), "at": nacked_at }),
                    );
                    let v = serde_json::json!({
                        "acked_version": t.acked_version,
                        "sent_version": t.sent_version,
                        "status": state,
                        "last_nack": last_nack,
                    });
                    (*ty, v)
                })
                .collect();
            out.insert(status.node_id, types);
        }
        out
    }
}

/// The two ADS flavours behind one interface, so that the stream loop is written once.
trait Protocol: Send + 'static {
    type Req: Send + 'static;
    type Resp: Send + 'static;
    fn handle_request(&mut self, req: Self::Req, snap: &XdsSnapshot) -> Step<Self::Resp>;
    fn handle_update(&mut self, snap: &XdsSnapshot) -> Step<Self::Resp>;
    fn status(&self) -> StreamStatus;
    fn client_config(&self, nacked_at: &dyn Fn(ResourceType) -> Option<Timestamp>) -> xstatus::ClientConfig;
    /// Whether `req` opens a type this stream has not asked for yet (an initial fetch).
    fn opens_type(&self, req: &Self::Req) -> bool;
    fn type_url(resp: &Self::Resp) -> &str;
    fn resource_count(resp: &Self::Resp) -> usize;
    fn encoded_len(resp: &Self::Resp) -> usize;
}

macro_rules! protocol {
    ($machine:ty, $req:ty, $resp:ty) => {
        impl Protocol for $machine {
            type Req = $req;
            type Resp = $resp;
            fn handle_request(&mut self, req: Self::Req, snap: &XdsSnapshot) -> Step<Self::Resp> {
                <$machine>::handle_request(self, req, snap)
            }
            fn handle_update(&mut self, snap: &XdsSnapshot) -> Step<Self::Resp> {
                <$machine>::handle_update(self, snap)
            }
            fn status(&self) -> StreamStatus {
                <$machine>::status(self)
            }
            fn client_config(&self, nacked_at: &dyn Fn(ResourceType) -> Option<Timestamp>) -> xstatus::ClientConfig {
                <$machine>::client_config(self, nacked_at)
            }
            fn opens_type(&self, req: &Self::Req) -> bool {
                ResourceType::from_type_url(&req.type_url).is_some_and(|ty| !self.subscribes(ty))
            }
            fn type_url(resp: &Self::Resp) -> &str {
                &resp.type_url
            }
            fn resource_count(resp: &Self::Resp) -> usize {
                resp.resources.len()
            }
            fn encoded_len(resp: &Self::Resp) -> usize {
                resp.encoded_len()
            }
        }
    };
}

protocol!(SotwStream, xdisc::DiscoveryRequest, xdisc::DiscoveryResponse);
protocol!(DeltaStream, xdisc::DeltaDiscoveryRequest, xdisc::DeltaDiscoveryResponse);

/// Errors of one stream, mapped to a gRPC status in one place.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("client stream failed: {0}")]
    Client(Status),
    #[error("server is shutting down")]
    Draining,
    #[error("node id {got:?} is not {want:?}")]
    NodeRejected { got: String, want: String },
    #[error("a bound was hit: {}", .0.message())]
    Limit(Status),
}

impl StreamError {
    fn into_status(self) -> Option<Status> {
        match self {
            // The client is gone or broke the stream; nobody reads a reply.
            StreamError::Client(_) => None,
            StreamError::Draining => Some(Status::unavailable("weir xDS server is shutting down; reconnect")),
            StreamError::NodeRejected { got, want } => Some(Status::permission_denied(format!(
                "weir xDS serves node id {want:?} only (the TrafficInfra's xds.nodeID), not {got:?}; set node.id in the \
                 proxy's bootstrap, or run weir xds with --allow-any-node-id for a mixed fleet"
            ))),
            StreamError::Limit(status) => Some(status),
        }
    }
}

#[derive(Clone)]
pub struct AdsServer {
    cache: SnapshotCache,
    metrics: XdsMetrics,
    clients: Clients,
    drain: watch::Receiver<bool>,
    initial: Arc<Semaphore>,
    nodes: NodePolicy,
    observer: Option<Arc<dyn StreamObserver>>,
    limiter: StreamLimiter,
}

impl AdsServer {
    pub fn new(
        cache: SnapshotCache,
        metrics: XdsMetrics,
        clients: Clients,
        drain: watch::Receiver<bool>,
        initial_concurrency: u16,
    ) -> Self {
        let initial = Arc::new(Semaphore::new(usize::from(initial_concurrency.max(1))));
        Self {
            cache,
            metrics,
            clients,
            drain,
            initial,
            nodes: NodePolicy::any(),
            observer: None,
            limiter: StreamLimiter::new(XdsLimits::default()),
        }
    }

    /// Streams and subscriptions bounded by `limiter` (instead of the default [`XdsLimits`]).
    pub fn with_limits(mut self, limiter: StreamLimiter) -> Self {
        self.limiter = limiter;
        self
    }

    /// Serves only the node ids `nodes` allows.
    pub fn with_node_policy(mut self, nodes: NodePolicy) -> Self {
        self.nodes = nodes;
        self
    }

    /// Tells `observer` what every stream does.
    pub fn with_observer(mut self, observer: Arc<dyn StreamObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
    }

    /// CSDS on the same port, answering from the same streams.
    pub fn csds_service(&self) -> ClientStatusDiscoveryServiceServer<Csds> {
        ClientStatusDiscoveryServiceServer::new(Csds { clients: self.clients.clone() })
    }

    fn spawn<P: Protocol>(
        &self,
        proto: P,
        inbound: Streaming<P::Req>,
        slot: StreamSlot,
    ) -> impl Stream<Item = Result<P::Resp, Status>> + Send + 'static {
        // Boxed items: the channel allocates a block of 32 slots up front, 8 bytes each this way
        // instead of a whole response each (memory per idle stream, BENCHMARKS.md).
        let (tx, rx) = mpsc::channel::<Box<Result<P::Resp, Status>>>(4);
        let id = self.clients.next.fetch_add(1, Ordering::Relaxed);
        let server = self.clone();
        let machine = Arc::new(Mutex::new(Tracked { proto, nacked_at: BTreeMap::new() }));
        server.clients.inner.lock().insert(id, machine.clone());
        tokio::spawn(async move {
            server.metrics.connected_clients.inc();
            let result = server.run(machine, inbound, &tx).await;
            server.metrics.connected_clients.dec();
            server.clients.inner.lock().remove(&id);
            drop(slot);
            if let Err(e) = result {
                tracing::debug!(stream = id, error = %e, "ADS stream ended");
                if let Some(status) = e.into_status() {
                    let _ = tx.send(Box::new(Err(status))).await;
                }
            }
        });
        // tonic's stream item is `Result<R, Status>`: its size is tonic's, not ours to box.
        #[allow(clippy::result_large_err, clippy::boxed_local)]
        fn unbox<R>(item: Box<Result<R, Status>>) -> Result<R, Status> {
            *item
        }
        ReceiverStream::new(rx).map(unbox)
    }

    async fn run<P: Protocol>(
        &self,
        machine: Arc<Mutex<Tracked<P>>>,
        mut inbound: Streaming<P::Req>,
        tx: &Outbound<P::Resp>,
    ) -> Result<(), StreamError> {
        let mut updates = self.cache.subscribe();
        let mut drain = self.drain.clone();
        let mut node_checked = false;
        loop {
            if *drain.borrow() {
                return Err(StreamError::Draining);
            }
            let msg = tokio::select! {
                _ = drain.changed() => return Err(StreamError::Draining),
                msg = inbound.next() => match msg {
                    Some(Ok(req)) => Some(req),
                    Some(Err(status)) => return Err(StreamError::Client(status)),
                    None => return Ok(()),
                },
                changed = updates.changed() => {
                    if changed.is_err() {
                        return Err(StreamError::Draining);
                    }
                    None
                }
            };
            // A publish not handled yet goes out first, in the make-before-break order, so that a
            // request is answered from the snapshot the stream was last updated with or a newer one.
            if msg.is_none() || updates.has_changed().unwrap_or(false) {
                let snap = updates.borrow_and_update().clone();
                let step = machine.lock().proto.handle_update(&snap);
                if !self.send(&machine, step, Some(snap.published), tx).await {
                    return Ok(());
                }
            }
            let Some(req) = msg else { continue };
            let opens = machine.lock().proto.opens_type(&req);
            let _permit = if opens { Some(self.initial_permit(&mut drain).await?) } else { None };
            // Read after the wait: the verdicts may have changed meanwhile.
            let snap = updates.borrow().clone();
            let step = machine.lock().proto.handle_request(req, &snap);
            if let Some(refusal) = &step.refused {
                let node = machine.lock().proto.status().node_id;
                return Err(StreamError::Limit(self.limiter.refuse(refusal, &node)));
            }
            if !node_checked {
                // The node comes with the first request; nothing is sent before it is checked.
                let node = machine.lock().proto.status().node_id;
                if let Err(want) = self.nodes.check(&node) {
                    self.nodes.rejected.inc();
                    tracing::warn!(node = %clip(&node), expected = %want, "refused an ADS stream: not this TrafficInfra's node id");
                    return Err(StreamError::NodeRejected { got: clip(&node).to_string(), want });
                }
                node_checked = true;
            }
            if !self.send(&machine, step, None, tx).await {
                return Ok(());
            }
        }
    }

    async fn initial_permit(
        &self,
        drain: &mut watch::Receiver<bool>,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, StreamError> {
        if let Ok(permit) = self.initial.clone().try_acquire_owned() {
            self.metrics.initial_wait.observe(0.0);
            return Ok(permit);
        }
        let started = Instant::now();
        self.metrics.initial_waiting.inc();
        let permit = tokio::select! {
            _ = drain.changed() => None,
            p = self.initial.clone().acquire_owned() => p.ok(),
        };
        self.metrics.initial_waiting.dec();
        self.metrics.initial_wait.observe(started.elapsed().as_secs_f64());
        permit.ok_or(StreamError::Draining)
    }

    /// Records what the client said and writes the responses. False when the client is gone.
    async fn send<P: Protocol>(
        &self,
        machine: &Arc<Mutex<Tracked<P>>>,
        step: Step<P::Resp>,
        pushed_from: Option<Instant>,
        tx: &Outbound<P::Resp>,
    ) -> bool {
        if !step.events.is_empty() {
            self.record(machine, &step.events);
        }
        for resp in step.responses {
            let ty = ResourceType::from_type_url(P::type_url(&resp));
            let (count, bytes) = (P::resource_count(&resp), P::encoded_len(&resp));
            if tx.send(Box::new(Ok(resp))).await.is_err() {
                return false;
            }
            if let Some(ty) = ty {
                let labels = type_label(ty);
                self.metrics.pushes.get_or_create(&labels).inc();
                self.metrics.resources_sent.get_or_create(&labels).inc_by(count as u64);
                self.metrics.bytes_sent.get_or_create(&labels).inc_by(bytes as u64);
            }
            if let Some(published) = pushed_from {
                self.metrics.push_latency.observe(published.elapsed().as_secs_f64());
            }
        }
        true
    }

    fn record<P: Protocol>(&self, machine: &Arc<Mutex<Tracked<P>>>, events: &[Event]) {
        self.cache.record(events);
        let mut m = machine.lock();
        let status = m.proto.status();
        let node = status.node_id.clone();
        for e in events {
            match e {
                Event::Nack { ty, version, message, .. } => {
                    m.nacked_at.insert(*ty, SystemTime::now());
                    self.metrics.nacks.get_or_create(&type_label(*ty)).inc();
                    tracing::warn!(node = %clip(&node), r#type = ty.label(), version = %clip(version),
                        message = %clip(message), "client rejected a config; it keeps its last good one, and new \
                        clients get the last accepted version until a newer one is accepted");
                }
                Event::UnknownType { type_url } => {
                    tracing::warn!(node = %clip(&node), type_url = %clip(type_url),
                        "client asked for a type weir does not serve");
                }
                Event::StaleNonce { ty, nonce } => {
                    tracing::debug!(node = %clip(&node), r#type = ty.label(), nonce = %clip(nonce),
                        "stale nonce ignored");
                }
                Event::Ack { ty, version, .. } => {
                    tracing::debug!(node = %clip(&node), r#type = ty.label(), version = %clip(version), "ACK");
                }
            }
        }
        drop(m);
        if let Some(observer) = &self.observer {
            observer.observe(&status, events);
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = BoxStream<xdisc::DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<xdisc::DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<xdisc::DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let slot = self.limiter.admit(request.remote_addr())?;
        let proto = SotwStream::new().with_max_names(self.limiter.max_names());
        Ok(Response::new(Box::pin(self.spawn(proto, request.into_inner(), slot))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<xdisc::DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let slot = self.limiter.admit(request.remote_addr())?;
        let proto = DeltaStream::new().with_max_names(self.limiter.max_names());
        Ok(Response::new(Box::pin(self.spawn(proto, request.into_inner(), slot))))
    }
}

/// The Client Status Discovery Service: which node holds which version of each type, and its last
/// NACK, for every open ADS stream.
#[derive(Clone)]
pub struct Csds {
    clients: Clients,
}

/// A CSDS request weir does not answer (`INVALID_ARGUMENT`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct CsdsRefusal(&'static str);

impl From<CsdsRefusal> for Status {
    fn from(e: CsdsRefusal) -> Status {
        Status::invalid_argument(e.0)
    }
}

impl Csds {
    fn answer(&self, req: &xstatus::ClientStatusRequest) -> Result<xstatus::ClientStatusResponse, CsdsRefusal> {
        let mut matchers = Vec::new();
        for m in &req.node_matchers {
            if !m.node_metadatas.is_empty() {
                return Err(CsdsRefusal("node_metadatas matchers are not supported; match on node_id"));
            }
            matchers.extend(m.node_id.clone());
        }
        for m in &matchers {
            node_id_matches(m, "")?;
        }
        let mut config = Vec::new();
        for c in self.clients.client_configs() {
            let id = c.node.as_ref().map(|n| n.id.as_str()).unwrap_or_default();
            let mut keep = true;
            for m in &matchers {
                keep &= node_id_matches(m, id)?;
            }
            if keep {
                config.push(c);
            }
        }
        Ok(xstatus::ClientStatusResponse { config })
    }
}

/// Exact, prefix, suffix and contains (optionally ignoring case); other patterns are refused.
fn node_id_matches(m: &StringMatcher, id: &str) -> Result<bool, CsdsRefusal> {
    let fold = |s: &str| if m.ignore_case { s.to_lowercase() } else { s.to_string() };
    let id = fold(id);
    Ok(match &m.match_pattern {
        Some(MatchPattern::Exact(p)) => id == fold(p),
        Some(MatchPattern::Prefix(p)) => id.starts_with(&fold(p)),
        Some(MatchPattern::Suffix(p)) => id.ends_with(&fold(p)),
        Some(MatchPattern::Contains(p)) => id.contains(&fold(p)),
        None => true,
        Some(_) => return Err(CsdsRefusal("node_id matcher: only exact, prefix, suffix and contains are supported")),
    })
}

#[tonic::async_trait]
impl ClientStatusDiscoveryService for Csds {
    type StreamClientStatusStream = BoxStream<xstatus::ClientStatusResponse>;

    // tonic's streams carry `Status` errors.
    #[allow(clippy::result_large_err)]
    async fn stream_client_status(
        &self,
        request: Request<Streaming<xstatus::ClientStatusRequest>>,
    ) -> Result<Response<Self::StreamClientStatusStream>, Status> {
        let csds = self.clone();
        let out = request.into_inner().map(move |req| Ok(csds.answer(&req?)?));
        Ok(Response::new(Box::pin(out)))
    }

    async fn fetch_client_status(
        &self,
        request: Request<xstatus::ClientStatusRequest>,
    ) -> Result<Response<xstatus::ClientStatusResponse>, Status> {
        Ok(Response::new(self.answer(request.get_ref())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::cache::new_cache;
    use crate::xds::model::{ProxyConfig, ServiceBackend};
    use crate::xds::resources::translate;
    use xds_api::pb::envoy::config::core::v3::Node;
    use xds_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;

    fn config() -> ProxyConfig {
        ProxyConfig {
            policies: Default::default(),
            name: "shop".into(),
            listener_port: 8080,
            strategies: [("blue".to_string(), 100)].into(),
            services: vec![ServiceBackend {
                namespace: "d".into(),
                name: "a-blue".into(),
                strategy: "blue".into(),
                endpoints: vec![],
                port: None,
            }],
        }
    }

    /// One SotW client over its own connection: four initial fetches; done when it has all four.
    async fn configure(addr: std::net::SocketAddr, id: usize) {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let (tx, rx) = mpsc::channel(8);
        for (ty, names) in [
            (ResourceType::Listener, vec!["shop".to_string()]),
            (ResourceType::RouteConfiguration, vec!["shop".to_string()]),
            (ResourceType::Cluster, vec!["d/a-blue".to_string()]),
            (ResourceType::ClusterLoadAssignment, vec!["d/a-blue".to_string()]),
        ] {
            let node = Some(Node { id: format!("c{id}"), ..Default::default() });
            tx.send(xdisc::DiscoveryRequest {
                type_url: ty.type_url().into(),
                resource_names: names,
                node,
                ..Default::default()
            })
            .await
            .unwrap();
        }
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let mut inbound = client.stream_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
        let mut types = std::collections::BTreeSet::new();
        while types.len() < 4 {
            let resp = inbound.message().await.unwrap().expect("a response of every type");
            assert!(!resp.resources.is_empty(), "{}", resp.type_url);
            types.insert(resp.type_url);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reconnect_storm_queues_behind_the_permits_and_every_client_is_configured() {
        let (writer, cache) = new_cache();
        writer.publish(translate(&config()));
        let mut registry = Registry::default();
        let metrics = XdsMetrics::register(&mut registry);
        let (_drain, drain) = watch::channel(false);
        let server = AdsServer::new(cache, metrics.clone(), Clients::default(), drain, 1);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(server.into_service())
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let clients: Vec<_> = (0..200).map(|id| tokio::spawn(configure(addr, id))).collect();
        let all = futures::future::join_all(clients);
        for r in tokio::time::timeout(std::time::Duration::from_secs(60), all).await.expect("every client configured") {
            r.unwrap();
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let value = |name: &str| -> f64 {
            text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap_or(-1.0)
        };
        // Every initial fetch (4 per client) went through a permit, and with one permit they queued.
        assert_eq!(value("weir_xds_initial_wait_seconds_count"), 800.0, "{text}");
        assert!(value("weir_xds_initial_wait_seconds_sum") > 0.0, "{text}");
        assert_eq!(value("weir_xds_initial_waiting"), 0.0);
    }
}
