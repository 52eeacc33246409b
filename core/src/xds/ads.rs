//! The ADS protocol as state machines with no I/O: one [`SotwStream`] or [`DeltaStream`] per client
//! stream. The tonic layer feeds requests and snapshot updates in and writes the responses out.
//!
//! Rules kept here:
//! - a response carries a fresh nonce; an SotW request whose `response_nonce` is not the last one
//!   sent for its type is stale and ignored;
//! - an ACK or NACK is recorded per stream and type; after a NACK the rejected content is not sent
//!   again (the client stays on its last good config) until the content changes;
//! - what a stream is served of a type comes from [`XdsSnapshot::served`]: a version some client
//!   rejected is not handed out, and a stream new to a type gets the last accepted version while a
//!   rejection stands;
//! - a type is pushed only when what this client subscribes to changed, and only what changed: in
//!   delta the changed resources, in SotW every resource for listeners and clusters (the protocol
//!   requires it) and only the changed ones for routes and endpoints (a resource missing from such
//!   a response is kept);
//! - make before break: updates go out clusters, endpoints, listeners, routes (what is referred to
//!   before what refers to it), and removals after every addition, in the reverse order. In SotW a
//!   listener or cluster push that removes resources is sent twice: first with the leaving
//!   resources kept, then, after the other types, without them;
//! - what a client can make a stream hold is bounded: at most `max_names` names per type
//!   ([`DEFAULT_MAX_NAMES_PER_TYPE`]), every name, version and node id at most [`MAX_CLIENT_NAME`]
//!   bytes, and of the node only its id, its cluster and its labels (`metadata.labels`, at most
//!   [`MAX_NODE_LABELS`], what VirtualService selectors match) are kept. A request past a bound is not
//!   applied: the step carries a [`Refusal`], and the server ends the stream with
//!   RESOURCE_EXHAUSTED (`weir::xds::limits`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;
use xds_api::pb::envoy::admin::v3::{ClientResourceStatus, UpdateFailureState};
use xds_api::pb::envoy::config::core::v3::Node;
use xds_api::pb::envoy::service::discovery::v3 as xdisc;
use xds_api::pb::envoy::service::status::v3 as xstatus;
use xds_api::pb::google::protobuf::{Any, Timestamp};

use super::resources::{Resource, ResourceType};
use super::snapshot::{version_of, TypeSet, XdsSnapshot};

/// Longest NACK message kept per stream and type (a client may send megabytes).
pub const MAX_NACK_MESSAGE: usize = 1024;

/// Responses sent and not yet answered that a delta stream remembers; older ones are forgotten
/// (their answers are then reported as stale), so a client that never answers costs a bounded amount.
const MAX_PENDING: usize = 16;

/// Longest resource name, initial resource version, node id or node cluster a client may send
/// (weir's names are Kubernetes names and endpoint addresses, a few hundred bytes at most).
pub const MAX_CLIENT_NAME: usize = 1024;

/// Node labels (`metadata.labels`, string values) one stream keeps at most; a node with more is
/// refused (Kubernetes pods carry a few dozen at most).
pub const MAX_NODE_LABELS: usize = 64;

/// Names one stream may subscribe to per type, by default (`--xds-max-names-per-type`). weir
/// serves a few resources per planner Service and endpoint; a client asking for more is not one
/// of its proxies.
pub const DEFAULT_MAX_NAMES_PER_TYPE: usize = 10_000;

/// A request that would take its stream past a bound. It is not applied; the server ends the
/// stream with RESOURCE_EXHAUSTED and this as the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the {} subscription of this stream would hold {names} names; at most {max} per type", .ty.label())]
    TooManyNames { ty: ResourceType, names: usize, max: usize },
    #[error("a {what} of {len} bytes; at most {max}", max = MAX_CLIENT_NAME)]
    TooLong { what: &'static str, len: usize },
    #[error("a node with {labels} labels (metadata.labels); at most {max}", max = MAX_NODE_LABELS)]
    TooManyLabels { labels: usize },
}

impl Refusal {
    /// The bound hit, as the `limit` label of `weir_xds_limits_hit_total`.
    pub fn limit(&self) -> &'static str {
        match self {
            Refusal::TooManyNames { .. } => "names_per_type",
            Refusal::TooLong { .. } => "name_length",
            Refusal::TooManyLabels { .. } => "node_labels",
        }
    }
}

fn check_len(what: &'static str, text: &str) -> Result<(), Refusal> {
    if text.len() > MAX_CLIENT_NAME {
        return Err(Refusal::TooLong { what, len: text.len() });
    }
    Ok(())
}

/// The names cap of one stream (a newtype so that `Default` is the default cap, not 0).
#[derive(Debug, Clone, Copy)]
struct NameCap(usize);

impl Default for NameCap {
    fn default() -> Self {
        Self(DEFAULT_MAX_NAMES_PER_TYPE)
    }
}

impl NameCap {
    fn check(self, ty: ResourceType, names: usize) -> Result<(), Refusal> {
        if names > self.0 {
            return Err(Refusal::TooManyNames { ty, names, max: self.0 });
        }
        Ok(())
    }
}

/// The node as a stream keeps it: its id and cluster (all that status and CSDS read; a client's
/// metadata may be megabytes), and apart its labels.
fn kept_node(node: &Node) -> Result<(Node, BTreeMap<String, String>), Refusal> {
    check_len("node id", &node.id)?;
    check_len("node cluster", &node.cluster)?;
    let labels = super::virtual_service::node_labels(Some(node));
    if labels.len() > MAX_NODE_LABELS {
        return Err(Refusal::TooManyLabels { labels: labels.len() });
    }
    for (k, v) in &labels {
        check_len("node label key", k)?;
        check_len("node label value", v)?;
    }
    Ok((Node { id: node.id.clone(), cluster: node.cluster.clone(), ..Default::default() }, labels))
}

/// Keeps the first request's node and its labels. False (and `step.refused` set) when it is refused.
fn keep_node<R>(
    kept: &mut Option<Node>,
    labels: &mut BTreeMap<String, String>,
    node: Option<&Node>,
    step: &mut Step<R>,
) -> bool {
    if let (None, Some(node)) = (&kept, node) {
        match kept_node(node) {
            Ok((n, l)) => {
                *kept = Some(n);
                *labels = l;
            }
            Err(r) => {
                step.refused = Some(r);
                return false;
            }
        }
    }
    true
}

/// Something a client told us, for metrics, logs and the fleet's verdicts ([`super::snapshot::LastGood`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Ack {
        ty: ResourceType,
        version: String,
        /// The set the acknowledged response was built from.
        set: Arc<TypeSet>,
    },
    Nack {
        ty: ResourceType,
        version: String,
        set: Arc<TypeSet>,
        message: String,
    },
    /// An SotW request answering a response that is no longer the latest.
    StaleNonce {
        ty: ResourceType,
        nonce: String,
    },
    /// A type weir does not serve; the request is ignored.
    UnknownType {
        type_url: String,
    },
}

/// What the state machine wants done after one input.
#[derive(Debug, Default)]
pub struct Step<R> {
    pub responses: Vec<R>,
    pub events: Vec<Event>,
    /// The request was past a bound and not applied: end the stream.
    pub refused: Option<Refusal>,
}

/// Per type, what this client was last sent and what it said about it (for `/config_dump`,
/// `/clients` and CSDS).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TypeStatus {
    pub sent_version: Option<String>,
    pub acked_version: Option<String>,
    /// Set while the client's last answer of this type was a NACK.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nacked_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nack_message: Option<String>,
    /// The last NACK of this type on this stream, kept after later ACKs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_nack: Option<NackStatus>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct NackStatus {
    pub version: String,
    /// At most [`MAX_NACK_MESSAGE`] bytes.
    pub message: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamStatus {
    pub node_id: String,
    pub node_cluster: String,
    /// The node's `metadata.labels` (what VirtualService selectors match).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub delta: bool,
    pub types: BTreeMap<&'static str, TypeStatus>,
}

fn node_status(node: &Option<Node>, labels: &BTreeMap<String, String>, delta: bool) -> StreamStatus {
    StreamStatus {
        node_id: node.as_ref().map(|n| n.id.clone()).unwrap_or_default(),
        node_cluster: node.as_ref().map(|n| n.cluster.clone()).unwrap_or_default(),
        labels: labels.clone(),
        delta,
        types: BTreeMap::new(),
    }
}

fn record_ack(status: &mut TypeStatus, version: &str) {
    status.acked_version = Some(version.to_string());
    status.nacked_version = None;
    status.nack_message = None;
}

/// `message` cut to [`MAX_NACK_MESSAGE`] bytes on a character boundary.
fn bounded(message: &str) -> String {
    let mut end = message.len().min(MAX_NACK_MESSAGE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_string()
}

fn record_nack(status: &mut TypeStatus, version: &str, message: &str) {
    let message = bounded(message);
    status.nacked_version = Some(version.to_string());
    status.nack_message = Some(message.clone());
    status.last_nack = Some(NackStatus { version: version.to_string(), message });
}

/// CSDS's view of one stream (`envoy.service.status.v3.ClientConfig`): per type, one entry per
/// resource the client holds (its name, the version it ACKed, ACKED), all of the type NACKED with
/// the error while its last answer was a NACK, and one unnamed REQUESTED entry for a type it asked
/// for and has not acknowledged yet. `nacked_at` is when the server saw the type's last NACK.
fn client_config<'a>(
    node: &Option<Node>,
    types: impl Iterator<Item = (ResourceType, &'a TypeStatus, Vec<(String, String)>)>,
    nacked_at: &dyn Fn(ResourceType) -> Option<Timestamp>,
) -> xstatus::ClientConfig {
    let mut configs = Vec::new();
    for (ty, status, held) in types {
        let error_state = status.nacked_version.as_ref().map(|version| UpdateFailureState {
            last_update_attempt: nacked_at(ty),
            details: status.nack_message.clone().unwrap_or_default(),
            version_info: version.clone(),
            ..Default::default()
        });
        let client_status =
            if error_state.is_some() { ClientResourceStatus::Nacked } else { ClientResourceStatus::Acked } as i32;
        let entry = |name: String, version_info: String, client_status: i32| xstatus::client_config::GenericXdsConfig {
            type_url: ty.type_url().to_string(),
            name,
            version_info,
            client_status,
            error_state: error_state.clone(),
            ..Default::default()
        };
        if held.is_empty() {
            let requested = if error_state.is_some() { client_status } else { ClientResourceStatus::Requested as i32 };
            configs.push(entry(String::new(), status.acked_version.clone().unwrap_or_default(), requested));
        }
        configs.extend(held.into_iter().map(|(name, version)| entry(name, version, client_status)));
    }
    xstatus::ClientConfig {
        node: node.as_ref().map(|n| Node { id: n.id.clone(), cluster: n.cluster.clone(), ..Default::default() }),
        generic_xds_configs: configs,
        ..Default::default()
    }
}

/// The subscription of one type: explicit names and/or the wildcard.
#[derive(Debug, Default, Clone)]
struct Subscription {
    wildcard: bool,
    names: BTreeSet<String>,
    /// The client's node labels: a resource with an audience ([`Resource::visible_to`]) is
    /// selected only when they match.
    labels: BTreeMap<String, String>,
}

impl Subscription {
    /// The resources of `set` this subscription covers, in name order.
    fn select<'a>(&self, set: &'a TypeSet) -> Vec<&'a Resource> {
        let visible = |r: &&Resource| r.visible_to(&self.labels);
        if self.wildcard {
            let mut out: BTreeMap<&str, &Resource> =
                set.iter().filter(|r| r.wildcard).filter(visible).map(|r| (r.name.as_str(), r)).collect();
            for name in &self.names {
                if let Some(r) = set.get(name).filter(visible) {
                    out.insert(r.name.as_str(), r);
                }
            }
            return out.into_values().collect();
        }
        // BTreeSet order is name order.
        self.names.iter().filter_map(|n| set.get(n)).filter(visible).collect()
    }
}

/// Whether a response of `ty` waits for new clusters' endpoints (`waiting`): listeners and routes,
/// which may refer to those clusters, and every removal.
fn gated(waiting: &BTreeSet<String>, ty: ResourceType) -> bool {
    !waiting.is_empty() && ty > ResourceType::ClusterLoadAssignment
}

fn version_of_resources(items: &[&Resource]) -> String {
    version_of(items.iter().map(|r| (r.name.as_str(), r.version.as_str())))
}

/// What one response was built from.
#[derive(Debug, Clone)]
struct Sent {
    /// The stream's version after it: a hash of the names and versions the client then holds.
    version: String,
    set: Arc<TypeSet>,
}

// ---------------------------------------------------------------- state of the world

#[derive(Debug, Default)]
struct SotwType {
    sub: Subscription,
    last_nonce: Option<String>,
    sent: Option<Sent>,
    acked: Option<Sent>,
    /// The client's last answer was a NACK: it holds `acked`, not `sent`.
    nacked: bool,
    /// Version the client rejected; not sent again.
    rejected: Option<String>,
    /// A response was held back (rejected content) after the subscription changed: the next one
    /// carries every selected resource.
    resend_all: bool,
    /// Version of the first half of a make-before-break push already sent (not sent twice).
    half_sent: Option<String>,
    status: TypeStatus,
}

impl SotwType {
    /// The set the client holds resources of, as far as we know.
    fn holds(&self) -> Option<&Arc<TypeSet>> {
        if self.nacked { self.acked.as_ref() } else { self.sent.as_ref() }.map(|s| &s.set)
    }
}

/// One state-of-the-world ADS stream.
#[derive(Debug, Default)]
pub struct SotwStream {
    node: Option<Node>,
    /// The node's `metadata.labels` (kept apart from `node`).
    labels: BTreeMap<String, String>,
    types: BTreeMap<ResourceType, SotwType>,
    nonces: u64,
    /// New clusters whose endpoints the client has not been sent yet: listeners, routes and
    /// removals wait for them (see [`gated`]).
    waiting: BTreeSet<String>,
    max_names: NameCap,
}

impl SotwStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// At most `max` names per type (instead of [`DEFAULT_MAX_NAMES_PER_TYPE`]).
    pub fn with_max_names(mut self, max: usize) -> Self {
        self.max_names = NameCap(max);
        self
    }

    pub fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }

    /// Whether the stream has asked for `ty` before (a request for a new type is an initial fetch).
    pub fn subscribes(&self, ty: ResourceType) -> bool {
        self.types.contains_key(&ty)
    }

    pub fn status(&self) -> StreamStatus {
        let mut s = node_status(&self.node, &self.labels, false);
        s.types = self.types.iter().map(|(ty, t)| (ty.label(), t.status.clone())).collect();
        s
    }

    /// CSDS's view: what the client ACKed, per resource (with the type's ACKed version).
    pub fn client_config(&self, nacked_at: &dyn Fn(ResourceType) -> Option<Timestamp>) -> xstatus::ClientConfig {
        let types = self.types.iter().map(|(ty, t)| {
            let held = t
                .acked
                .as_ref()
                .map(|a| t.sub.select(&a.set).iter().map(|r| (r.name.clone(), a.version.clone())).collect())
                .unwrap_or_default();
            (*ty, &t.status, held)
        });
        client_config(&self.node, types, nacked_at)
    }

    pub fn handle_request(
        &mut self,
        req: xdisc::DiscoveryRequest,
        snap: &XdsSnapshot,
    ) -> Step<xdisc::DiscoveryResponse> {
        let mut step = Step::default();
        if !keep_node(&mut self.node, &mut self.labels, req.node.as_ref(), &mut step) {
            return step;
        }
        let Some(ty) = ResourceType::from_type_url(&req.type_url) else {
            step.events.push(Event::UnknownType { type_url: req.type_url });
            return step;
        };
        // The request's names are the whole subscription: checked before anything is applied.
        let names: BTreeSet<String> = req.resource_names.into_iter().collect();
        let checked = names.iter().filter(|n| *n != "*").try_for_each(|n| check_len("resource name", n));
        if let Err(r) = checked.and_then(|()| self.max_names.check(ty, names.iter().filter(|n| *n != "*").count())) {
            step.refused = Some(r);
            return step;
        }
        let first = !self.types.contains_key(&ty);
        let t = self.types.entry(ty).or_default();
        if first {
            t.sub.labels = self.labels.clone();
        }
        if !req.response_nonce.is_empty() {
            if t.last_nonce.as_deref() != Some(req.response_nonce.as_str()) {
                step.events.push(Event::StaleNonce { ty, nonce: req.response_nonce });
                return step;
            }
            if let Some(sent) = t.sent.clone() {
                if let Some(err) = req.error_detail {
                    t.rejected = Some(sent.version.clone());
                    t.nacked = true;
                    record_nack(&mut t.status, &sent.version, &err.message);
                    step.events.push(Event::Nack { ty, version: sent.version, set: sent.set, message: err.message });
                } else {
                    record_ack(&mut t.status, &sent.version);
                    t.nacked = false;
                    t.acked = Some(sent.clone());
                    step.events.push(Event::Ack { ty, version: sent.version, set: sent.set });
                }
            }
        }
        t.sub.wildcard =
            names.contains("*") || (names.is_empty() && ty.empty_means_wildcard() && (first || t.sub.wildcard));
        t.sub.names = names.into_iter().filter(|n| n != "*").collect();
        if !first && gated(&self.waiting, ty) {
            // Answered when the gate opens.
            return step;
        }
        // A request carries every resource selected. The first request is always answered, even
        // with nothing, so that the client can finish its initial fetch.
        let set = snap.served(ty, first).clone();
        let selected = t.sub.select(&set);
        let version = version_of_resources(&selected);
        if !first {
            if t.sent.as_ref().is_some_and(|s| s.version == version) {
                return step;
            }
            if t.rejected.as_deref() == Some(version.as_str()) {
                t.resend_all = true;
                return step;
            }
        }
        t.resend_all = false;
        let bodies = selected.iter().map(|r| r.body.clone()).collect();
        step.responses.push(Self::emit(&mut self.nonces, t, ty, Some(Sent { version, set: set.clone() }), bodies));
        if ty == ResourceType::ClusterLoadAssignment && !self.waiting.is_empty() {
            let sent = self.sent_names(ty);
            self.waiting.retain(|n| !sent.contains(n));
            if self.waiting.is_empty() {
                step.responses.extend(self.push(snap).responses);
            }
        }
        step
    }

    /// Names of the resources of `ty` the client was last sent.
    fn sent_names(&self, ty: ResourceType) -> BTreeSet<String> {
        let Some(t) = self.types.get(&ty) else { return BTreeSet::new() };
        t.sent.as_ref().map(|s| t.sub.select(&s.set).iter().map(|r| r.name.clone()).collect()).unwrap_or_default()
    }

    /// A new snapshot: push every subscribed type whose content for this client changed, in the
    /// make-before-break order.
    pub fn handle_update(&mut self, snap: &XdsSnapshot) -> Step<xdisc::DiscoveryResponse> {
        // Nothing waits longer than until the next publish (a client that never asks for the new
        // clusters' endpoints must still get its routes).
        self.waiting.clear();
        self.push(snap)
    }

    fn push(&mut self, snap: &XdsSnapshot) -> Step<xdisc::DiscoveryResponse> {
        let mut step = Step::default();
        let mut second_halves = Vec::new();
        let mut new_clusters = BTreeSet::new();
        for ty in ResourceType::ALL {
            if ty == ResourceType::Listener {
                // Clusters new to the client whose endpoints it has not been sent: Envoy would warm
                // them and route to them before they have endpoints (503). Listeners, routes and
                // removals wait until it has asked for and been sent those endpoints.
                if self.subscribes(ResourceType::ClusterLoadAssignment) && !new_clusters.is_empty() {
                    let sent = self.sent_names(ResourceType::ClusterLoadAssignment);
                    self.waiting = new_clusters.iter().filter(|n| !sent.contains(*n)).cloned().collect();
                }
                if !self.waiting.is_empty() {
                    return step;
                }
            }
            let Some(t) = self.types.get_mut(&ty) else { continue };
            let set = snap.served(ty, false).clone();
            let selected = t.sub.select(&set);
            let version = version_of_resources(&selected);
            if t.sent.as_ref().is_some_and(|s| s.version == version) || t.rejected.as_deref() == Some(version.as_str())
            {
                continue;
            }
            let sent = Sent { version, set: set.clone() };
            let holds = match t.holds() {
                Some(h) if !t.resend_all => h.clone(),
                _ => {
                    let bodies = selected.iter().map(|r| r.body.clone()).collect();
                    t.resend_all = false;
                    step.responses.push(Self::emit(&mut self.nonces, t, ty, Some(sent), bodies));
                    continue;
                }
            };
            let held = t.sub.select(&holds);
            if ty.sotw_sends_all() {
                let now: BTreeSet<&str> = selected.iter().map(|r| r.name.as_str()).collect();
                let before: BTreeSet<&str> = held.iter().map(|r| r.name.as_str()).collect();
                if ty == ResourceType::Cluster {
                    new_clusters.extend(now.difference(&before).map(|n| n.to_string()));
                }
                let leaving: Vec<&Resource> = held.into_iter().filter(|r| !now.contains(r.name.as_str())).collect();
                if leaving.is_empty() {
                    let bodies = selected.iter().map(|r| r.body.clone()).collect();
                    step.responses.push(Self::emit(&mut self.nonces, t, ty, Some(sent), bodies));
                    continue;
                }
                // First the new set with the leaving resources still in it (so that nothing refers
                // to a missing resource), then, after every other type's additions, the new set.
                let mut both: BTreeMap<&str, &Resource> = selected.iter().map(|r| (r.name.as_str(), *r)).collect();
                both.extend(leaving.iter().map(|r| (r.name.as_str(), *r)));
                let both: Vec<&Resource> = both.into_values().collect();
                let version = version_of_resources(&both);
                if t.half_sent.as_deref() != Some(version.as_str()) {
                    let bodies = both.iter().map(|r| r.body.clone()).collect();
                    let mut first = Self::emit(&mut self.nonces, t, ty, None, bodies);
                    first.version_info = version.clone();
                    t.half_sent = Some(version);
                    step.responses.push(first);
                }
                second_halves.push(ty);
            } else {
                let held: BTreeMap<&str, &str> = held.iter().map(|r| (r.name.as_str(), r.version.as_str())).collect();
                let changed: Vec<Any> = selected
                    .iter()
                    .filter(|r| held.get(r.name.as_str()) != Some(&r.version.as_str()))
                    .map(|r| r.body.clone())
                    .collect();
                // Only removals: nothing to send; the client drops them with the clusters and
                // listeners that refer to them.
                if !changed.is_empty() {
                    step.responses.push(Self::emit(&mut self.nonces, t, ty, Some(sent), changed));
                }
            }
        }
        for ty in second_halves.into_iter().rev() {
            let Some(t) = self.types.get_mut(&ty) else { continue };
            let set = snap.served(ty, false).clone();
            let selected = t.sub.select(&set);
            let sent = Sent { version: version_of_resources(&selected), set: set.clone() };
            let bodies = selected.iter().map(|r| r.body.clone()).collect();
            step.responses.push(Self::emit(&mut self.nonces, t, ty, Some(sent), bodies));
        }
        step
    }

    /// A response with a fresh nonce. `sent: None` is the first half of a make-before-break push,
    /// which the second half supersedes (its ACK is then stale).
    fn emit(
        nonces: &mut u64,
        t: &mut SotwType,
        ty: ResourceType,
        sent: Option<Sent>,
        resources: Vec<Any>,
    ) -> xdisc::DiscoveryResponse {
        *nonces += 1;
        let nonce = nonces.to_string();
        t.last_nonce = Some(nonce.clone());
        let version_info = sent.as_ref().map(|s| s.version.clone()).unwrap_or_default();
        if let Some(sent) = sent {
            t.status.sent_version = Some(sent.version.clone());
            t.sent = Some(sent);
            t.half_sent = None;
            // Optimistic, like the protocol: the client will hold what it was sent unless it says no.
            t.nacked = false;
        }
        xdisc::DiscoveryResponse {
            version_info,
            resources,
            type_url: ty.type_url().to_string(),
            nonce,
            ..Default::default()
        }
    }
}

// ---------------------------------------------------------------- delta (incremental)

#[derive(Debug, Default)]
struct DeltaType {
    sub: Subscription,
    /// What the client holds as far as we know: name → resource version. Versions it rejected are
    /// kept here too, so that they are not sent again until they change.
    known: BTreeMap<String, String>,
    /// Nonces sent and not yet answered, with what each response was built from (oldest first by
    /// nonce number; at most [`MAX_PENDING`]).
    pending: BTreeMap<u64, Sent>,
    status: TypeStatus,
}

/// One delta (incremental) ADS stream.
#[derive(Debug, Default)]
pub struct DeltaStream {
    node: Option<Node>,
    /// As in [`SotwStream`]: the node's labels.
    labels: BTreeMap<String, String>,
    types: BTreeMap<ResourceType, DeltaType>,
    nonces: u64,
    /// As in [`SotwStream`]: new clusters whose endpoints the client has not been sent yet.
    waiting: BTreeSet<String>,
    max_names: NameCap,
}

/// Which part of a delta type's difference a response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Both,
    Additions,
    Removals,
}

impl DeltaStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// At most `max` names per type (instead of [`DEFAULT_MAX_NAMES_PER_TYPE`]).
    pub fn with_max_names(mut self, max: usize) -> Self {
        self.max_names = NameCap(max);
        self
    }

    /// Whether `req` keeps the subscription of its type and what the stream holds within the
    /// bounds, computed before anything is applied.
    fn check(&self, ty: ResourceType, req: &xdisc::DeltaDiscoveryRequest) -> Result<(), Refusal> {
        let none = BTreeSet::new();
        let held = match self.types.get(&ty) {
            Some(t) => &t.sub.names,
            None => {
                // A first request may also say what the client already holds.
                self.max_names.check(ty, req.initial_resource_versions.len())?;
                for (name, version) in &req.initial_resource_versions {
                    check_len("resource name", name)?;
                    check_len("resource version", version)?;
                }
                &none
            }
        };
        // Subscriptions apply before unsubscriptions (see `handle_request`).
        let mut added = BTreeSet::new();
        for n in &req.resource_names_subscribe {
            if n != "*" && !held.contains(n) {
                check_len("resource name", n)?;
                added.insert(n.as_str());
            }
        }
        let gone: BTreeSet<&str> = req
            .resource_names_unsubscribe
            .iter()
            .map(String::as_str)
            .filter(|n| held.contains(*n) || added.contains(n))
            .collect();
        self.max_names.check(ty, held.len() + added.len() - gone.len())
    }

    pub fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }

    pub fn subscribes(&self, ty: ResourceType) -> bool {
        self.types.contains_key(&ty)
    }

    pub fn status(&self) -> StreamStatus {
        let mut s = node_status(&self.node, &self.labels, true);
        s.types = self.types.iter().map(|(ty, t)| (ty.label(), t.status.clone())).collect();
        s
    }

    /// CSDS's view: the resources the client holds, each with its own version.
    pub fn client_config(&self, nacked_at: &dyn Fn(ResourceType) -> Option<Timestamp>) -> xstatus::ClientConfig {
        let types = self.types.iter().map(|(ty, t)| {
            let held =
                if t.status.acked_version.is_some() { t.known.clone().into_iter().collect() } else { Vec::new() };
            (*ty, &t.status, held)
        });
        client_config(&self.node, types, nacked_at)
    }

    pub fn handle_request(
        &mut self,
        req: xdisc::DeltaDiscoveryRequest,
        snap: &XdsSnapshot,
    ) -> Step<xdisc::DeltaDiscoveryResponse> {
        let mut step = Step::default();
        if !keep_node(&mut self.node, &mut self.labels, req.node.as_ref(), &mut step) {
            return step;
        }
        let Some(ty) = ResourceType::from_type_url(&req.type_url) else {
            step.events.push(Event::UnknownType { type_url: req.type_url });
            return step;
        };
        if let Err(r) = self.check(ty, &req) {
            step.refused = Some(r);
            return step;
        }
        let first = !self.types.contains_key(&ty);
        let t = self.types.entry(ty).or_default();
        if first {
            t.sub.labels = self.labels.clone();
        }
        if !req.response_nonce.is_empty() {
            // In delta a request also carries subscription changes, so a stale nonce only skips
            // the ACK/NACK bookkeeping.
            match req.response_nonce.parse::<u64>().ok().and_then(|n| t.pending.remove(&n)) {
                None => step.events.push(Event::StaleNonce { ty, nonce: req.response_nonce.clone() }),
                Some(Sent { version, set }) => {
                    if let Some(err) = &req.error_detail {
                        record_nack(&mut t.status, &version, &err.message);
                        step.events.push(Event::Nack { ty, version, set, message: err.message.clone() });
                    } else {
                        record_ack(&mut t.status, &version);
                        step.events.push(Event::Ack { ty, version, set });
                    }
                }
            }
        }
        if first {
            t.known = req.initial_resource_versions.into_iter().collect();
            t.sub.wildcard = req.resource_names_subscribe.is_empty() && ty.empty_means_wildcard();
        }
        for name in req.resource_names_subscribe {
            if name == "*" {
                t.sub.wildcard = true;
            } else {
                t.sub.names.insert(name);
            }
        }
        for name in req.resource_names_unsubscribe {
            if name == "*" {
                t.sub.wildcard = false;
            } else {
                t.sub.names.remove(&name);
                t.known.remove(&name);
            }
        }
        if !first && gated(&self.waiting, ty) {
            // Answered when the gate opens.
            return step;
        }
        step.responses.extend(self.respond(ty, snap, first, Part::Both));
        if ty == ResourceType::ClusterLoadAssignment && !self.waiting.is_empty() {
            let known = &self.types[&ty].known;
            self.waiting.retain(|n| !known.contains_key(n));
            if self.waiting.is_empty() {
                step.responses.extend(self.push(snap).responses);
            }
        }
        step
    }

    /// A new snapshot: every subscribed type's changed resources in the make-before-break order,
    /// then every type's removals in the reverse order.
    pub fn handle_update(&mut self, snap: &XdsSnapshot) -> Step<xdisc::DeltaDiscoveryResponse> {
        self.waiting.clear();
        self.push(snap)
    }

    fn push(&mut self, snap: &XdsSnapshot) -> Step<xdisc::DeltaDiscoveryResponse> {
        let mut step = Step::default();
        let mut new_clusters = BTreeSet::new();
        for ty in ResourceType::ALL {
            if ty == ResourceType::Listener {
                if let Some(eds) = self.types.get(&ResourceType::ClusterLoadAssignment) {
                    self.waiting = new_clusters.iter().filter(|n| !eds.known.contains_key(*n)).cloned().collect();
                }
                if !self.waiting.is_empty() {
                    return step;
                }
            }
            let Some(t) = self.types.get(&ty) else { continue };
            let before: BTreeSet<String> =
                if ty == ResourceType::Cluster { t.known.keys().cloned().collect() } else { BTreeSet::new() };
            if let Some(resp) = self.respond(ty, snap, false, Part::Additions) {
                if ty == ResourceType::Cluster {
                    new_clusters.extend(resp.resources.iter().map(|r| r.name.clone()).filter(|n| !before.contains(n)));
                }
                step.responses.push(resp);
            }
        }
        for ty in ResourceType::ALL.into_iter().rev() {
            step.responses.extend(self.respond(ty, snap, false, Part::Removals));
        }
        step
    }

    fn respond(
        &mut self,
        ty: ResourceType,
        snap: &XdsSnapshot,
        first: bool,
        part: Part,
    ) -> Option<xdisc::DeltaDiscoveryResponse> {
        let t = self.types.get_mut(&ty)?;
        let set = snap.served(ty, first).clone();
        let selected = t.sub.select(&set);
        let updated: Vec<&Resource> = if part == Part::Removals {
            Vec::new()
        } else {
            selected.iter().copied().filter(|r| t.known.get(&r.name) != Some(&r.version)).collect()
        };
        let removed: Vec<String> = if part == Part::Additions {
            Vec::new()
        } else {
            let in_scope: BTreeSet<&str> = selected.iter().map(|r| r.name.as_str()).collect();
            t.known.keys().filter(|n| !in_scope.contains(n.as_str())).cloned().collect()
        };
        if updated.is_empty() && removed.is_empty() && !first {
            return None;
        }
        for r in &updated {
            t.known.insert(r.name.clone(), r.version.clone());
        }
        for n in &removed {
            t.known.remove(n);
        }
        let version = version_of(t.known.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        self.nonces += 1;
        t.pending.insert(self.nonces, Sent { version: version.clone(), set: set.clone() });
        while t.pending.len() > MAX_PENDING {
            t.pending.pop_first();
        }
        t.status.sent_version = Some(version);
        Some(xdisc::DeltaDiscoveryResponse {
            system_version_info: set.version.clone(),
            resources: updated
                .into_iter()
                .map(|r| xdisc::Resource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.body.clone()),
                    ..Default::default()
                })
                .collect(),
            type_url: ty.type_url().to_string(),
            removed_resources: removed,
            nonce: self.nonces.to_string(),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::model::{BackendEndpoint, EndpointHealth, ProxyConfig, ServiceBackend};
    use crate::xds::resources::translate;
    use std::sync::Arc;
    use xds_api::pb::google::rpc::Status;

    fn cfg(blue: u32, green: u32, eps: &[&str]) -> ProxyConfig {
        let svc = |name: &str, strategy: &str, eps: &[&str]| ServiceBackend {
            namespace: "d".into(),
            name: name.into(),
            strategy: strategy.into(),
            endpoints: eps
                .iter()
                .map(|a| BackendEndpoint { address: a.parse().unwrap(), zone: None, health: EndpointHealth::Healthy })
                .collect(),
            port: None,
        };
        ProxyConfig {
            policies: Default::default(),
            name: "shop".into(),
            listener_port: 8080,
            strategies: [("blue".to_string(), blue), ("green".to_string(), green)].into(),
            services: vec![svc("p-blue", "blue", eps), svc("p-green", "green", &[])],
        }
    }

    fn snap(c: &ProxyConfig) -> Arc<XdsSnapshot> {
        Arc::new(XdsSnapshot::new(translate(c), 1))
    }

    fn req(ty: ResourceType, names: &[&str], version: &str, nonce: &str) -> xdisc::DiscoveryRequest {
        xdisc::DiscoveryRequest {
            type_url: ty.type_url().into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            node: Some(Node { id: "n1".into(), ..Default::default() }),
            ..Default::default()
        }
    }

    fn nack(mut r: xdisc::DiscoveryRequest) -> xdisc::DiscoveryRequest {
        r.error_detail = Some(Status { code: 3, message: "weights sum to 0".into(), details: vec![] });
        r
    }

    fn names(resp: &xdisc::DiscoveryResponse) -> Vec<String> {
        resp.resources
            .iter()
            .map(|a| match ResourceType::from_type_url(&a.type_url).unwrap() {
                ResourceType::Listener => {
                    a.to_msg::<xds_api::pb::envoy::config::listener::v3::Listener>().unwrap().name
                }
                ResourceType::Cluster => a.to_msg::<xds_api::pb::envoy::config::cluster::v3::Cluster>().unwrap().name,
                ResourceType::RouteConfiguration => {
                    a.to_msg::<xds_api::pb::envoy::config::route::v3::RouteConfiguration>().unwrap().name
                }
                ResourceType::ClusterLoadAssignment => {
                    a.to_msg::<xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment>().unwrap().cluster_name
                }
            })
            .collect()
    }

    #[test]
    fn sotw_wildcard_listeners_exclude_the_api_listener_and_named_requests_get_it() {
        let s = snap(&cfg(100, 0, &[]));
        let mut envoy = SotwStream::new();
        let step = envoy.handle_request(req(ResourceType::Listener, &[], "", ""), &s);
        assert_eq!(names(&step.responses[0]), vec!["shop-envoy"]);
        let mut grpc = SotwStream::new();
        let step = grpc.handle_request(req(ResourceType::Listener, &["shop"], "", ""), &s);
        assert_eq!(names(&step.responses[0]), vec!["shop"]);
        assert_eq!(grpc.node().unwrap().id, "n1");
    }

    #[test]
    fn sotw_first_request_answered_ack_is_quiet_and_change_is_pushed_once() {
        let s1 = snap(&cfg(100, 0, &[]));
        let mut st = SotwStream::new();
        let step = st.handle_request(req(ResourceType::RouteConfiguration, &["shop"], "", ""), &s1);
        assert_eq!(step.responses.len(), 1);
        let r1 = &step.responses[0];
        let step =
            st.handle_request(req(ResourceType::RouteConfiguration, &["shop"], &r1.version_info, &r1.nonce), &s1);
        assert!(step.responses.is_empty(), "an ACK needs no answer");
        assert!(matches!(&step.events[..], [Event::Ack { ty: ResourceType::RouteConfiguration, version, .. }]
            if *version == r1.version_info));
        // An identical snapshot pushes nothing; a changed route pushes one response.
        assert!(st.handle_update(&snap(&cfg(100, 0, &[]))).responses.is_empty());
        let step = st.handle_update(&snap(&cfg(50, 50, &[])));
        assert_eq!(step.responses.len(), 1);
        assert_ne!(step.responses[0].version_info, r1.version_info);
        assert_ne!(step.responses[0].nonce, r1.nonce);
    }

    #[test]
    fn sotw_stale_nonce_is_ignored() {
        let s1 = snap(&cfg(100, 0, &[]));
        let mut st = SotwStream::new();
        let r1 = st.handle_request(req(ResourceType::Cluster, &[], "", ""), &s1).responses.remove(0);
        let r2 = st.handle_update(&snap(&cfg(100, 0, &["10.0.0.1:80"]))).responses.remove(0);
        // A NACK of the first response arrives after the second was sent: ignored entirely.
        let step = st.handle_request(nack(req(ResourceType::Cluster, &[], "", &r1.nonce)), &s1);
        assert!(step.responses.is_empty());
        assert_eq!(step.events, vec![Event::StaleNonce { ty: ResourceType::Cluster, nonce: r1.nonce }]);
        assert_eq!(st.status().types["cluster"].nacked_version, None);
        assert_eq!(st.status().types["cluster"].sent_version, Some(r2.version_info));
    }

    #[test]
    fn sotw_nack_keeps_last_good_and_is_not_resent_until_content_changes() {
        let good = snap(&cfg(100, 0, &[]));
        let mut st = SotwStream::new();
        let r1 = st.handle_request(req(ResourceType::RouteConfiguration, &["shop"], "", ""), &good).responses.remove(0);
        st.handle_request(req(ResourceType::RouteConfiguration, &["shop"], &r1.version_info, &r1.nonce), &good);
        let bad = snap(&cfg(30, 70, &[]));
        let r2 = st.handle_update(&bad).responses.remove(0);
        let step = st
            .handle_request(nack(req(ResourceType::RouteConfiguration, &["shop"], &r1.version_info, &r2.nonce)), &bad);
        assert!(step.responses.is_empty(), "the rejected version is not sent again");
        assert!(matches!(&step.events[..], [Event::Nack { version, .. }] if *version == r2.version_info));
        let status = &st.status().types["route"];
        assert_eq!(status.acked_version.as_deref(), Some(r1.version_info.as_str()), "last good config is kept");
        assert_eq!(status.nacked_version.as_deref(), Some(r2.version_info.as_str()));
        // Same rejected snapshot again (e.g. an unrelated type changed): still nothing.
        assert!(st.handle_update(&bad).responses.is_empty());
        // New content is pushed.
        let r3 = st.handle_update(&snap(&cfg(60, 40, &[]))).responses.remove(0);
        let step =
            st.handle_request(req(ResourceType::RouteConfiguration, &["shop"], &r3.version_info, &r3.nonce), &bad);
        assert!(step.responses.is_empty());
        assert_eq!(st.status().types["route"].nacked_version, None);
    }

    #[test]
    fn sotw_updates_go_out_clusters_endpoints_listeners_routes() {
        let s1 = snap(&cfg(100, 0, &[]));
        let mut st = SotwStream::new();
        // Subscribe in the "wrong" order on purpose.
        for (ty, names) in [
            (ResourceType::RouteConfiguration, vec!["shop"]),
            (ResourceType::ClusterLoadAssignment, vec!["d/p-blue", "d/p-blue/10.0.0.1:80"]),
            (ResourceType::Listener, vec![]),
            (ResourceType::Cluster, vec![]),
        ] {
            st.handle_request(req(ty, &names, "", ""), &s1);
        }
        let step = st.handle_update(&snap(&cfg(100, 0, &["10.0.0.1:80"])));
        let order: Vec<_> = step.responses.iter().map(|r| ResourceType::from_type_url(&r.type_url).unwrap()).collect();
        assert_eq!(
            order,
            vec![ResourceType::Cluster, ResourceType::ClusterLoadAssignment, ResourceType::RouteConfiguration],
            "listeners did not change; the rest in the safe order"
        );
        assert_eq!(names(&step.responses[0]), vec!["d/p-blue", "d/p-blue/10.0.0.1:80", "d/p-green"]);
    }

    fn dreq(ty: ResourceType, sub: &[&str], unsub: &[&str], nonce: &str) -> xdisc::DeltaDiscoveryRequest {
        xdisc::DeltaDiscoveryRequest {
            type_url: ty.type_url().into(),
            resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
            resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn dnames(r: &xdisc::DeltaDiscoveryResponse) -> Vec<&str> {
        r.resources.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn delta_sends_only_changed_resources_and_removals() {
        let s1 = snap(&cfg(100, 0, &["10.0.0.1:80"]));
        let mut st = DeltaStream::new();
        let r1 = st.handle_request(dreq(ResourceType::Cluster, &[], &[], ""), &s1).responses.remove(0);
        assert_eq!(dnames(&r1), vec!["d/p-blue", "d/p-blue/10.0.0.1:80", "d/p-green"]);
        let step = st.handle_request(dreq(ResourceType::Cluster, &[], &[], &r1.nonce), &s1);
        assert!(step.responses.is_empty());
        assert!(matches!(step.events[..], [Event::Ack { .. }]));
        // The endpoint moves: its cluster goes, a new one comes; the service clusters are untouched.
        let step = st.handle_update(&snap(&cfg(100, 0, &["10.0.0.2:80"])));
        let [added, removed] = &step.responses[..] else { panic!("{:?}", step.responses) };
        assert_eq!(dnames(added), vec!["d/p-blue/10.0.0.2:80"]);
        assert!(added.removed_resources.is_empty(), "removals come after additions");
        assert_eq!(removed.removed_resources, vec!["d/p-blue/10.0.0.1:80"]);
    }

    #[test]
    fn delta_initial_versions_subscribe_unsubscribe_and_nack() {
        let s1 = snap(&cfg(100, 0, &[]));
        let route_version = s1.get(ResourceType::RouteConfiguration, "shop").unwrap().version.clone();
        let mut st = DeltaStream::new();
        let mut first = dreq(ResourceType::RouteConfiguration, &["shop"], &[], "");
        first.initial_resource_versions = [("shop".to_string(), route_version)].into();
        // The client already has this version (reconnect): the answer carries nothing.
        let r1 = st.handle_request(first, &s1).responses.remove(0);
        assert!(r1.resources.is_empty() && r1.removed_resources.is_empty());
        let s2 = snap(&cfg(0, 100, &[]));
        let r2 = st.handle_update(&s2).responses.remove(0);
        assert_eq!(dnames(&r2), vec!["shop"]);
        let mut n = dreq(ResourceType::RouteConfiguration, &[], &[], &r2.nonce);
        n.error_detail = Some(Status { code: 3, message: "no".into(), details: vec![] });
        let step = st.handle_request(n, &s2);
        assert!(step.responses.is_empty(), "rejected resource is not resent");
        assert!(matches!(step.events[..], [Event::Nack { .. }]));
        assert!(st.handle_update(&s2).responses.is_empty());
        // A stale nonce is reported but subscription changes in it still apply.
        let step = st.handle_request(dreq(ResourceType::RouteConfiguration, &[], &["shop"], "999"), &s2);
        assert!(matches!(step.events[..], [Event::StaleNonce { .. }]));
        assert!(st.handle_update(&snap(&cfg(50, 50, &[]))).responses.is_empty(), "unsubscribed");
    }

    #[test]
    fn unknown_types_are_reported_and_ignored() {
        let s1 = snap(&cfg(100, 0, &[]));
        let mut st = SotwStream::new();
        let mut r = req(ResourceType::Listener, &[], "", "");
        r.type_url = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret".into();
        let step = st.handle_request(r, &s1);
        assert!(step.responses.is_empty());
        assert!(matches!(step.events[..], [Event::UnknownType { .. }]));
    }

    fn ep_cfg(blue: u32, green: u32, eps: &[(&str, EndpointHealth)]) -> ProxyConfig {
        let mut c = cfg(blue, green, &[]);
        c.services[0].endpoints = eps
            .iter()
            .map(|(a, health)| BackendEndpoint { address: a.parse().unwrap(), zone: None, health: *health })
            .collect();
        c
    }

    fn types_of(step: &Step<xdisc::DiscoveryResponse>) -> Vec<ResourceType> {
        step.responses.iter().map(|r| ResourceType::from_type_url(&r.type_url).unwrap()).collect()
    }

    /// Subscribes like Envoy (wildcard LDS/CDS, named RDS/EDS) and ACKs every response.
    fn envoy_like(s: &XdsSnapshot) -> SotwStream {
        let mut st = SotwStream::new();
        for (ty, names) in [
            (ResourceType::Cluster, vec![]),
            (ResourceType::Listener, vec![]),
            (ResourceType::RouteConfiguration, vec!["shop"]),
            (
                ResourceType::ClusterLoadAssignment,
                vec!["d/p-blue", "d/p-green", "d/p-blue/10.0.0.1:80", "d/p-blue/10.0.0.2:80"],
            ),
        ] {
            let r = st.handle_request(req(ty, &names, "", ""), s).responses.remove(0);
            st.handle_request(req(ty, &names, &r.version_info, &r.nonce), s);
        }
        st
    }

    fn ack_all(st: &mut SotwStream, step: &Step<xdisc::DiscoveryResponse>, s: &XdsSnapshot) {
        for r in &step.responses {
            let ty = ResourceType::from_type_url(&r.type_url).unwrap();
            let names: Vec<String> = st.types[&ty].sub.names.iter().cloned().collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            st.handle_request(req(ty, &names, &r.version_info, &r.nonce), s);
        }
    }

    #[test]
    fn sotw_weight_change_sends_only_routes_and_health_change_only_that_endpoint_set() {
        let healthy = [("10.0.0.1:80", EndpointHealth::Healthy)];
        let s1 = snap(&ep_cfg(100, 0, &healthy));
        let mut st = envoy_like(&s1);
        let s2 = snap(&ep_cfg(40, 60, &healthy));
        let step = st.handle_update(&s2);
        assert_eq!(types_of(&step), vec![ResourceType::RouteConfiguration]);
        ack_all(&mut st, &step, &s2);
        // The endpoint drains: its service's endpoint set changes, nothing else (its pin stays).
        let step = st.handle_update(&snap(&ep_cfg(40, 60, &[("10.0.0.1:80", EndpointHealth::Draining)])));
        assert_eq!(types_of(&step), vec![ResourceType::ClusterLoadAssignment]);
        assert_eq!(names(&step.responses[0]), vec!["d/p-blue"], "only the changed endpoint set");
    }

    #[test]
    fn sotw_removals_go_last_and_leaving_clusters_are_kept_until_routes_moved() {
        let s1 = snap(&ep_cfg(100, 0, &[("10.0.0.1:80", EndpointHealth::Healthy)]));
        let mut st = envoy_like(&s1);
        // The endpoint is replaced: a new pin cluster arrives, the old one leaves.
        let s2 = snap(&ep_cfg(100, 0, &[("10.0.0.2:80", EndpointHealth::Healthy)]));
        let step = st.handle_update(&s2);
        assert_eq!(
            types_of(&step),
            vec![
                ResourceType::Cluster,
                ResourceType::ClusterLoadAssignment,
                ResourceType::RouteConfiguration,
                ResourceType::Cluster
            ]
        );
        assert_eq!(
            names(&step.responses[0]),
            vec!["d/p-blue", "d/p-blue/10.0.0.1:80", "d/p-blue/10.0.0.2:80", "d/p-green"],
            "first the new cluster with the leaving one kept"
        );
        assert_eq!(names(&step.responses[1]), vec!["d/p-blue", "d/p-blue/10.0.0.2:80"], "only what changed");
        assert_eq!(names(&step.responses[3]), vec!["d/p-blue", "d/p-blue/10.0.0.2:80", "d/p-green"], "then removed");
        // The first half is superseded: its ACK is stale, the second half's is the one recorded.
        let (half, full) = (&step.responses[0], &step.responses[3]);
        let e = st.handle_request(req(ResourceType::Cluster, &[], &half.version_info, &half.nonce), &s2).events;
        assert!(matches!(e[..], [Event::StaleNonce { .. }]));
        st.handle_request(req(ResourceType::Cluster, &[], &full.version_info, &full.nonce), &s2);
        assert_eq!(st.status().types["cluster"].acked_version.as_deref(), Some(full.version_info.as_str()));
        assert!(st.handle_update(&s2).responses.is_empty());
    }

    #[test]
    fn delta_additions_go_before_removals() {
        let s1 = snap(&ep_cfg(100, 0, &[("10.0.0.1:80", EndpointHealth::Healthy)]));
        let mut st = DeltaStream::new();
        for (ty, names) in [
            (ResourceType::Cluster, vec![]),
            (ResourceType::RouteConfiguration, vec!["shop"]),
            (ResourceType::ClusterLoadAssignment, vec!["d/p-blue", "d/p-blue/10.0.0.1:80", "d/p-blue/10.0.0.2:80"]),
        ] {
            st.handle_request(dreq(ty, &names, &[], ""), &s1);
        }
        let step = st.handle_update(&snap(&ep_cfg(100, 0, &[("10.0.0.2:80", EndpointHealth::Healthy)])));
        let got: Vec<(ResourceType, Vec<&str>, Vec<&str>)> = step
            .responses
            .iter()
            .map(|r| {
                let removed = r.removed_resources.iter().map(String::as_str).collect();
                (ResourceType::from_type_url(&r.type_url).unwrap(), dnames(r), removed)
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (ResourceType::Cluster, vec!["d/p-blue/10.0.0.2:80"], vec![]),
                (ResourceType::ClusterLoadAssignment, vec!["d/p-blue", "d/p-blue/10.0.0.2:80"], vec![]),
                (ResourceType::RouteConfiguration, vec!["shop"], vec![]),
                (ResourceType::ClusterLoadAssignment, vec![], vec!["d/p-blue/10.0.0.1:80"]),
                (ResourceType::Cluster, vec![], vec!["d/p-blue/10.0.0.1:80"]),
            ]
        );
        // A weight change sends the route only.
        let step = st.handle_update(&snap(&ep_cfg(30, 70, &[("10.0.0.2:80", EndpointHealth::Healthy)])));
        assert_eq!(step.responses.len(), 1);
        assert_eq!(dnames(&step.responses[0]), vec!["shop"]);
    }

    fn route_of(resp: &xdisc::DiscoveryResponse) -> xds_api::pb::envoy::config::route::v3::RouteConfiguration {
        resp.resources[0].to_msg().unwrap()
    }

    #[test]
    fn after_a_nack_newcomers_get_the_last_acked_version_until_a_newer_one_is_acked() {
        let ty = ResourceType::RouteConfiguration;
        let good = snap(&cfg(100, 0, &[]));
        let mut fleet = LastGoodFixture { snap: (*good).clone() };
        let mut a = SotwStream::new();
        let r1 = fleet.request(&mut a, req(ty, &["shop"], "", "")).remove(0);
        fleet.request(&mut a, req(ty, &["shop"], &r1.version_info, &r1.nonce));
        // Version 2 is pushed, and A rejects it.
        fleet.publish(&cfg(30, 70, &[]));
        let r2 = fleet.update(&mut a).remove(0);
        assert!(fleet.request(&mut a, nack(req(ty, &["shop"], &r1.version_info, &r2.nonce))).is_empty());
        assert!(fleet.snap.last_good.standing(ty));
        // A newcomer gets version 1, not the rejected 2; nothing is sent again to either.
        let mut b = SotwStream::new();
        let rb = fleet.request(&mut b, req(ty, &["shop"], "", "")).remove(0);
        assert_eq!(rb.version_info, r1.version_info);
        assert_eq!(route_of(&rb), route_of(&r1));
        fleet.request(&mut b, req(ty, &["shop"], &rb.version_info, &rb.nonce));
        assert!(fleet.update(&mut a).is_empty() && fleet.update(&mut b).is_empty(), "no loop");
        // The rejection stands although B ACKed version 1.
        assert!(fleet.snap.last_good.standing(ty));
        // Version 3: existing streams get it; a newcomer still gets 1 until someone ACKs 3.
        fleet.publish(&cfg(60, 40, &[]));
        let r3 = fleet.update(&mut b).remove(0);
        assert_ne!(r3.version_info, r1.version_info);
        let mut c = SotwStream::new();
        assert_eq!(fleet.request(&mut c, req(ty, &["shop"], "", ""))[0].version_info, r1.version_info);
        fleet.request(&mut b, req(ty, &["shop"], &r3.version_info, &r3.nonce));
        assert!(!fleet.snap.last_good.standing(ty));
        let mut d = SotwStream::new();
        assert_eq!(fleet.request(&mut d, req(ty, &["shop"], "", ""))[0].version_info, r3.version_info);
    }

    #[test]
    fn delta_newcomers_also_get_the_last_acked_version() {
        let ty = ResourceType::RouteConfiguration;
        let mut fleet = LastGoodFixture { snap: (*snap(&cfg(100, 0, &[]))).clone() };
        let mut a = DeltaStream::new();
        let r1 = a.handle_request(dreq(ty, &["shop"], &[], ""), &fleet.snap).responses.remove(0);
        let e = a.handle_request(dreq(ty, &[], &[], &r1.nonce), &fleet.snap).events;
        fleet.snap.last_good.record(&e);
        fleet.publish(&cfg(30, 70, &[]));
        let r2 = a.handle_update(&fleet.snap).responses.remove(0);
        let mut n = dreq(ty, &[], &[], &r2.nonce);
        n.error_detail = Some(Status { code: 3, message: "no".into(), details: vec![] });
        let e = a.handle_request(n, &fleet.snap).events;
        assert!(fleet.snap.last_good.record(&e));
        let mut b = DeltaStream::new();
        let rb = b.handle_request(dreq(ty, &["shop"], &[], ""), &fleet.snap).responses.remove(0);
        assert_eq!(rb.resources[0].version, r1.resources[0].version);
        assert_ne!(rb.resources[0].version, r2.resources[0].version);
    }

    /// The cache's part, in miniature: verdicts from the streams' events, applied to the snapshot.
    struct LastGoodFixture {
        snap: XdsSnapshot,
    }

    impl LastGoodFixture {
        fn request(&mut self, st: &mut SotwStream, r: xdisc::DiscoveryRequest) -> Vec<xdisc::DiscoveryResponse> {
            let step = st.handle_request(r, &self.snap);
            self.snap.last_good.record(&step.events);
            step.responses
        }
        fn update(&mut self, st: &mut SotwStream) -> Vec<xdisc::DiscoveryResponse> {
            st.handle_update(&self.snap).responses
        }
        fn publish(&mut self, c: &ProxyConfig) {
            self.snap = self.snap.next(translate(c));
        }
    }

    #[test]
    fn nack_messages_are_bounded() {
        let s1 = snap(&cfg(100, 0, &[]));
        let mut st = SotwStream::new();
        let r1 = st.handle_request(req(ResourceType::Cluster, &[], "", ""), &s1).responses.remove(0);
        let mut n = req(ResourceType::Cluster, &[], "", &r1.nonce);
        n.error_detail = Some(Status { code: 3, message: "é".repeat(3_000_000), details: vec![] });
        st.handle_request(n, &s1);
        let status = &st.status().types["cluster"];
        assert!(status.nack_message.as_ref().unwrap().len() <= MAX_NACK_MESSAGE);
        assert!(status.last_nack.as_ref().unwrap().message.len() <= MAX_NACK_MESSAGE);
    }

    #[test]
    fn names_past_the_cap_are_refused_and_nothing_is_applied() {
        let s = snap(&cfg(100, 0, &[]));
        // SotW: a request's names are the whole subscription ("*" is not a name).
        let mut st = SotwStream::new().with_max_names(2);
        let step = st.handle_request(req(ResourceType::Cluster, &["d/p-blue", "b", "*"], "", ""), &s);
        assert!(step.refused.is_none() && step.responses.len() == 1, "{step:?}");
        let r1 = &step.responses[0];
        let step = st.handle_request(req(ResourceType::Cluster, &["d/p-blue", "b", "c"], "", &r1.nonce), &s);
        assert_eq!(step.refused, Some(Refusal::TooManyNames { ty: ResourceType::Cluster, names: 3, max: 2 }));
        assert!(step.responses.is_empty() && step.events.is_empty(), "not even the ACK is applied: {step:?}");
        assert_eq!(st.types[&ResourceType::Cluster].sub.names.len(), 2);
        assert_eq!(st.status().types["cluster"].acked_version, None);
        assert!(st.handle_request(req(ResourceType::Cluster, &["c", "c", "c"], "", ""), &s).refused.is_none());

        // Delta: subscriptions add up over requests; unsubscriptions in the same request count.
        let mut d = DeltaStream::new().with_max_names(2);
        assert!(d.handle_request(dreq(ResourceType::Cluster, &["a"], &[], ""), &s).refused.is_none());
        assert!(d.handle_request(dreq(ResourceType::Cluster, &["a", "b", "*"], &[], ""), &s).refused.is_none());
        let step = d.handle_request(dreq(ResourceType::Cluster, &["c"], &[], ""), &s);
        assert_eq!(step.refused, Some(Refusal::TooManyNames { ty: ResourceType::Cluster, names: 3, max: 2 }));
        assert!(step.responses.is_empty());
        assert_eq!(d.types[&ResourceType::Cluster].sub.names.len(), 2, "not applied");
        assert!(
            d.handle_request(dreq(ResourceType::Cluster, &["c"], &["a"], ""), &s).refused.is_none(),
            "one in, one out"
        );
        assert!(d.handle_request(dreq(ResourceType::Cluster, &["x", "y"], &["x", "b", "c"], ""), &s).refused.is_none());
        // Each type has its own cap.
        assert!(d.handle_request(dreq(ResourceType::Listener, &["a", "b"], &[], ""), &s).refused.is_none());

        // A first request that says it holds more than the cap.
        let mut d = DeltaStream::new().with_max_names(2);
        let mut first = dreq(ResourceType::Cluster, &[], &[], "");
        first.initial_resource_versions = ["a", "b", "c"].iter().map(|n| (n.to_string(), "1".to_string())).collect();
        let step = d.handle_request(first, &s);
        assert_eq!(step.refused, Some(Refusal::TooManyNames { ty: ResourceType::Cluster, names: 3, max: 2 }));
        assert!(!d.subscribes(ResourceType::Cluster));
    }

    #[test]
    fn long_names_and_node_ids_are_refused_and_only_the_node_id_cluster_and_labels_are_kept() {
        let s = snap(&cfg(100, 0, &[]));
        let long = "x".repeat(MAX_CLIENT_NAME + 1);
        let too_long = |what| Some(Refusal::TooLong { what, len: MAX_CLIENT_NAME + 1 });
        let mut st = SotwStream::new();
        assert_eq!(
            st.handle_request(req(ResourceType::Cluster, &[&long], "", ""), &s).refused,
            too_long("resource name")
        );
        let mut d = DeltaStream::new();
        assert_eq!(
            d.handle_request(dreq(ResourceType::Cluster, &[&long], &[], ""), &s).refused,
            too_long("resource name")
        );
        let mut first = dreq(ResourceType::Cluster, &[], &[], "");
        first.initial_resource_versions = [("a".to_string(), long.clone())].into();
        assert_eq!(d.handle_request(first, &s).refused, too_long("resource version"));
        assert!(!d.subscribes(ResourceType::Cluster));

        let mut r = req(ResourceType::Listener, &[], "", "");
        r.node = Some(Node { id: long.clone(), ..Default::default() });
        let mut st = SotwStream::new();
        assert_eq!(st.handle_request(r, &s).refused, too_long("node id"));
        assert!(st.node().is_none() && !st.subscribes(ResourceType::Listener));

        let mut r = req(ResourceType::Listener, &[], "", "");
        let node = Node { id: "n1".into(), cluster: "c1".into(), ..Default::default() };
        r.node = Some(Node { user_agent_name: "x".repeat(100_000), ..node.clone() });
        let mut st = SotwStream::new();
        assert!(st.handle_request(r, &s).refused.is_none());
        assert_eq!(st.node(), Some(&node));

        // Its labels are kept apart (what VirtualService selectors match), at most MAX_NODE_LABELS.
        use xds_api::pb::google::protobuf::{value::Kind, Struct, Value};
        let labelled = |n: usize, value: &str| {
            let labels =
                (0..n).map(|i| (format!("l{i}"), Value { kind: Some(Kind::StringValue(value.to_string())) })).collect();
            let labels = Value { kind: Some(Kind::StructValue(Struct { fields: labels })) };
            let metadata = Struct { fields: [("labels".to_string(), labels)].into() };
            let mut r = req(ResourceType::Listener, &[], "", "");
            r.node = Some(Node { metadata: Some(metadata), ..node.clone() });
            r
        };
        let mut st = SotwStream::new();
        assert!(st.handle_request(labelled(MAX_NODE_LABELS, "v"), &s).refused.is_none());
        assert_eq!(st.node(), Some(&node));
        assert_eq!(st.status().labels.len(), MAX_NODE_LABELS);
        let mut st = SotwStream::new();
        let refused = st.handle_request(labelled(MAX_NODE_LABELS + 1, "v"), &s).refused;
        assert_eq!(refused, Some(Refusal::TooManyLabels { labels: MAX_NODE_LABELS + 1 }));
        let mut d = DeltaStream::new();
        let mut r = dreq(ResourceType::Listener, &[], &[], "");
        r.node = labelled(1, &long).node;
        assert_eq!(d.handle_request(r, &s).refused, too_long("node label value"));
    }

    #[test]
    fn client_config_lists_acked_resources_and_the_nacked_type_with_its_error() {
        let s1 = snap(&cfg(100, 0, &[]));
        let mut st = SotwStream::new();
        let rc = st.handle_request(req(ResourceType::Cluster, &[], "", ""), &s1).responses.remove(0);
        st.handle_request(req(ResourceType::Cluster, &[], &rc.version_info, &rc.nonce), &s1);
        let rr = st.handle_request(req(ResourceType::RouteConfiguration, &["shop"], "", ""), &s1).responses.remove(0);
        st.handle_request(nack(req(ResourceType::RouteConfiguration, &["shop"], "", &rr.nonce)), &s1);
        st.handle_request(req(ResourceType::Listener, &[], "", ""), &s1);
        let at = Timestamp { seconds: 7, nanos: 0 };
        let c = st.client_config(&|ty| (ty == ResourceType::RouteConfiguration).then_some(at));
        assert_eq!(c.node.unwrap().id, "n1");
        let got: Vec<(&str, &str, &str, i32)> = c
            .generic_xds_configs
            .iter()
            .map(|g| {
                (g.type_url.rsplit('.').next().unwrap(), g.name.as_str(), g.version_info.as_str(), g.client_status)
            })
            .collect();
        let (acked, nacked, requested) = (
            ClientResourceStatus::Acked as i32,
            ClientResourceStatus::Nacked as i32,
            ClientResourceStatus::Requested as i32,
        );
        assert_eq!(
            got,
            vec![
                ("Cluster", "d/p-blue", rc.version_info.as_str(), acked),
                ("Cluster", "d/p-green", rc.version_info.as_str(), acked),
                ("Listener", "", "", requested),
                ("RouteConfiguration", "", "", nacked),
            ]
        );
        let err = c.generic_xds_configs[3].error_state.as_ref().unwrap();
        assert_eq!((err.details.as_str(), err.version_info.as_str()), ("weights sum to 0", rr.version_info.as_str()));
        assert_eq!(err.last_update_attempt, Some(at));
        assert!(c.generic_xds_configs[0].error_state.is_none());
    }

    #[test]
    fn sotw_routes_wait_until_new_clusters_have_their_endpoints() {
        let one = [("10.0.0.1:80", EndpointHealth::Healthy)];
        let s1 = snap(&ep_cfg(100, 0, &one));
        let eds = ["d/p-blue", "d/p-green", "d/p-blue/10.0.0.1:80"];
        let mut st = SotwStream::new();
        let mut last = BTreeMap::new();
        for (ty, names) in [
            (ResourceType::Cluster, vec![]),
            (ResourceType::Listener, vec![]),
            (ResourceType::RouteConfiguration, vec!["shop"]),
            (ResourceType::ClusterLoadAssignment, eds.to_vec()),
        ] {
            let r = st.handle_request(req(ty, &names, "", ""), &s1).responses.remove(0);
            st.handle_request(req(ty, &names, &r.version_info, &r.nonce), &s1);
            last.insert(ty, r);
        }
        // A second endpoint: its pin cluster is new, and its route must not arrive before its endpoints.
        let s2 = snap(&ep_cfg(
            100,
            0,
            &[("10.0.0.1:80", EndpointHealth::Healthy), ("10.0.0.2:80", EndpointHealth::Healthy)],
        ));
        let step = st.handle_update(&s2);
        assert_eq!(types_of(&step), vec![ResourceType::Cluster, ResourceType::ClusterLoadAssignment]);
        let eds_push = &step.responses[1];
        // A route request meanwhile is not answered either.
        let r = &last[&ResourceType::RouteConfiguration];
        assert!(st
            .handle_request(req(ResourceType::RouteConfiguration, &["shop"], &r.version_info, &r.nonce), &s2)
            .responses
            .is_empty());
        // Envoy asks for the new cluster's endpoints: they go out, then the route.
        let mut names = eds.to_vec();
        names.push("d/p-blue/10.0.0.2:80");
        let step = st.handle_request(
            req(ResourceType::ClusterLoadAssignment, &names, &eds_push.version_info, &eds_push.nonce),
            &s2,
        );
        assert_eq!(types_of(&step), vec![ResourceType::ClusterLoadAssignment, ResourceType::RouteConfiguration]);
        assert!(names_of(&step.responses[0]).contains(&"d/p-blue/10.0.0.2:80".to_string()));
        assert!(st.handle_update(&s2).responses.is_empty());
    }

    fn names_of(r: &xdisc::DiscoveryResponse) -> Vec<String> {
        names(r)
    }

    #[test]
    fn delta_routes_wait_until_new_clusters_have_their_endpoints() {
        let s1 = snap(&ep_cfg(100, 0, &[("10.0.0.1:80", EndpointHealth::Healthy)]));
        let mut st = DeltaStream::new();
        for (ty, names) in [
            (ResourceType::Cluster, vec![]),
            (ResourceType::RouteConfiguration, vec!["shop"]),
            (ResourceType::ClusterLoadAssignment, vec!["d/p-blue", "d/p-blue/10.0.0.1:80"]),
        ] {
            st.handle_request(dreq(ty, &names, &[], ""), &s1);
        }
        let s2 = snap(&ep_cfg(
            100,
            0,
            &[("10.0.0.1:80", EndpointHealth::Healthy), ("10.0.0.2:80", EndpointHealth::Healthy)],
        ));
        let step = st.handle_update(&s2);
        let types: Vec<_> = step.responses.iter().map(|r| ResourceType::from_type_url(&r.type_url).unwrap()).collect();
        assert_eq!(types, vec![ResourceType::Cluster, ResourceType::ClusterLoadAssignment]);
        assert!(st.handle_request(dreq(ResourceType::RouteConfiguration, &[], &[], "1"), &s2).responses.is_empty());
        let step =
            st.handle_request(dreq(ResourceType::ClusterLoadAssignment, &["d/p-blue/10.0.0.2:80"], &[], ""), &s2);
        let got: Vec<(ResourceType, Vec<&str>)> =
            step.responses.iter().map(|r| (ResourceType::from_type_url(&r.type_url).unwrap(), dnames(r))).collect();
        assert_eq!(
            got,
            vec![
                (ResourceType::ClusterLoadAssignment, vec!["d/p-blue/10.0.0.2:80"]),
                (ResourceType::RouteConfiguration, vec!["shop"])
            ]
        );
    }
}
