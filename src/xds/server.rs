//! The tonic ADS server: thin. Each stream runs one sans-IO state machine ([`super::ads`]) in a task
//! that waits on the client, the snapshot cache and the drain signal, and writes what the machine
//! returns.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::Stream;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use xds_api::pb::envoy::service::discovery::v3 as xdisc;
use xds_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};

use super::ads::{DeltaStream, Event, SotwStream, Step, StreamStatus};
use super::cache::SnapshotCache;
use super::snapshot::XdsSnapshot;
use crate::telemetry::clip;

type Labels = Vec<(String, String)>;

/// The xDS metrics, registered by the server that updates them.
#[derive(Clone)]
pub struct XdsMetrics {
    pub connected_clients: Gauge,
    pub pushes: Family<Labels, Counter>,
    pub nacks: Family<Labels, Counter>,
    pub push_latency: Histogram,
}

impl XdsMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            connected_clients: Gauge::default(),
            pushes: Family::default(),
            nacks: Family::default(),
            push_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
        };
        let r = registry.sub_registry_with_prefix("weir_xds");
        r.register("connected_clients", "Open ADS streams", m.connected_clients.clone());
        r.register("pushes", "xDS responses sent, by type", m.pushes.clone());
        r.register("nacks", "xDS responses rejected by a client, by type", m.nacks.clone());
        r.register(
            "push_latency_seconds",
            "Time from a snapshot being published to a stream sending the update",
            m.push_latency.clone(),
        );
        m
    }
}

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
        registry.register(
            "weir_xds_rejected_nodes",
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

/// The status of every open stream, for `/config_dump`.
#[derive(Clone, Default)]
pub struct Clients {
    inner: Arc<Mutex<BTreeMap<u64, StreamStatus>>>,
    next: Arc<AtomicU64>,
}

impl Clients {
    pub fn all(&self) -> Vec<StreamStatus> {
        self.inner.lock().values().cloned().collect()
    }
}

/// The two ADS flavours behind one interface, so that the stream loop is written once.
trait Protocol: Send + 'static {
    type Req: Send + 'static;
    type Resp: Send + 'static;
    fn handle_request(&mut self, req: Self::Req, snap: &XdsSnapshot) -> Step<Self::Resp>;
    fn handle_update(&mut self, snap: &XdsSnapshot) -> Step<Self::Resp>;
    fn status(&self) -> StreamStatus;
    fn type_url(resp: &Self::Resp) -> &str;
}

impl Protocol for SotwStream {
    type Req = xdisc::DiscoveryRequest;
    type Resp = xdisc::DiscoveryResponse;
    fn handle_request(&mut self, req: Self::Req, snap: &XdsSnapshot) -> Step<Self::Resp> {
        SotwStream::handle_request(self, req, snap)
    }
    fn handle_update(&mut self, snap: &XdsSnapshot) -> Step<Self::Resp> {
        SotwStream::handle_update(self, snap)
    }
    fn status(&self) -> StreamStatus {
        SotwStream::status(self)
    }
    fn type_url(resp: &Self::Resp) -> &str {
        &resp.type_url
    }
}

impl Protocol for DeltaStream {
    type Req = xdisc::DeltaDiscoveryRequest;
    type Resp = xdisc::DeltaDiscoveryResponse;
    fn handle_request(&mut self, req: Self::Req, snap: &XdsSnapshot) -> Step<Self::Resp> {
        DeltaStream::handle_request(self, req, snap)
    }
    fn handle_update(&mut self, snap: &XdsSnapshot) -> Step<Self::Resp> {
        DeltaStream::handle_update(self, snap)
    }
    fn status(&self) -> StreamStatus {
        DeltaStream::status(self)
    }
    fn type_url(resp: &Self::Resp) -> &str {
        &resp.type_url
    }
}

/// Errors of one stream, mapped to a gRPC status in one place.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("client stream failed: {0}")]
    Client(Status),
    #[error("server is shutting down")]
    Draining,
    #[error("node id {got:?} is not {want:?}")]
    NodeRejected { got: String, want: String },
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
        }
    }
}

#[derive(Clone)]
pub struct AdsServer {
    cache: SnapshotCache,
    metrics: XdsMetrics,
    clients: Clients,
    drain: watch::Receiver<bool>,
    nodes: NodePolicy,
    observer: Option<Arc<dyn StreamObserver>>,
}

impl AdsServer {
    pub fn new(cache: SnapshotCache, metrics: XdsMetrics, clients: Clients, drain: watch::Receiver<bool>) -> Self {
        Self { cache, metrics, clients, drain, nodes: NodePolicy::any(), observer: None }
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

    fn spawn<P: Protocol>(&self, proto: P, inbound: Streaming<P::Req>) -> ReceiverStream<Result<P::Resp, Status>> {
        let (tx, rx) = mpsc::channel(16);
        let id = self.clients.next.fetch_add(1, Ordering::Relaxed);
        let server = self.clone();
        tokio::spawn(async move {
            server.metrics.connected_clients.inc();
            let result = server.run(proto, id, inbound, &tx).await;
            server.metrics.connected_clients.dec();
            server.clients.inner.lock().remove(&id);
            if let Err(e) = result {
                tracing::debug!(stream = id, error = %e, "ADS stream ended");
                if let Some(status) = e.into_status() {
                    let _ = tx.send(Err(status)).await;
                }
            }
        });
        ReceiverStream::new(rx)
    }

    async fn run<P: Protocol>(
        &self,
        mut proto: P,
        id: u64,
        mut inbound: Streaming<P::Req>,
        tx: &mpsc::Sender<Result<P::Resp, Status>>,
    ) -> Result<(), StreamError> {
        let mut updates = self.cache.subscribe();
        let mut drain = self.drain.clone();
        let mut node_checked = false;
        loop {
            if *drain.borrow() {
                return Err(StreamError::Draining);
            }
            let (step, pushed_from) = tokio::select! {
                _ = drain.changed() => return Err(StreamError::Draining),
                msg = inbound.next() => match msg {
                    Some(Ok(req)) => {
                        // Not marked as seen: an update that arrived meanwhile is still pushed below.
                        let snap = updates.borrow().clone();
                        (proto.handle_request(req, &snap), None)
                    }
                    Some(Err(status)) => return Err(StreamError::Client(status)),
                    None => return Ok(()),
                },
                changed = updates.changed() => {
                    if changed.is_err() {
                        return Err(StreamError::Draining);
                    }
                    let snap = updates.borrow_and_update().clone();
                    (proto.handle_update(&snap), Some(snap))
                }
            };
            if !node_checked {
                // The node comes with the first request; nothing is sent before it is checked.
                let node = proto.status().node_id;
                if let Err(want) = self.nodes.check(&node) {
                    self.nodes.rejected.inc();
                    tracing::warn!(node = %clip(&node), expected = %want, "refused an ADS stream: not this TrafficInfra's node id");
                    return Err(StreamError::NodeRejected { got: clip(&node).to_string(), want });
                }
                node_checked = true;
            }
            self.record(id, &step.events, &proto);
            for resp in step.responses {
                // The same label as the NACK metric and /config_dump: cluster, endpoint, listener, route.
                let ty =
                    super::resources::ResourceType::from_type_url(P::type_url(&resp)).map_or("unknown", |t| t.label());
                if tx.send(Ok(resp)).await.is_err() {
                    return Ok(());
                }
                self.metrics.pushes.get_or_create(&vec![("type".into(), ty.to_string())]).inc();
                if let Some(snap) = &pushed_from {
                    self.metrics.push_latency.observe(snap.published.elapsed().as_secs_f64());
                }
            }
        }
    }

    fn record<P: Protocol>(&self, id: u64, events: &[Event], proto: &P) {
        let status = proto.status();
        for e in events {
            match e {
                Event::Nack { ty, version, message } => {
                    self.metrics.nacks.get_or_create(&vec![("type".into(), ty.label().into())]).inc();
                    tracing::warn!(node = %clip(&status.node_id), r#type = ty.label(), version = %clip(version),
                        message = %clip(message), "client rejected a config; it keeps its last good one");
                }
                Event::UnknownType { type_url } => {
                    tracing::warn!(node = %clip(&status.node_id), type_url = %clip(type_url),
                        "client asked for a type weir does not serve");
                }
                Event::StaleNonce { ty, nonce } => {
                    tracing::debug!(node = %clip(&status.node_id), r#type = ty.label(), nonce = %clip(nonce),
                        "stale nonce ignored");
                }
                Event::Ack { ty, version } => {
                    tracing::debug!(node = %clip(&status.node_id), r#type = ty.label(), version = %clip(version), "ACK");
                }
            }
        }
        if let Some(observer) = &self.observer {
            observer.observe(&status, events);
        }
        self.clients.inner.lock().insert(id, status);
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
        Ok(Response::new(Box::pin(self.spawn(SotwStream::new(), request.into_inner()))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<xdisc::DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Ok(Response::new(Box::pin(self.spawn(DeltaStream::new(), request.into_inner()))))
    }
}
