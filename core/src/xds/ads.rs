//! The ADS protocol as state machines with no I/O: one [`SotwStream`] or [`DeltaStream`] per client
//! stream. The tonic layer feeds requests and snapshot updates in and writes the responses out.
//!
//! Rules kept here:
//! - a response carries a fresh nonce; an SotW request whose `response_nonce` is not the last one
//!   sent for its type is stale and ignored;
//! - an ACK or NACK is recorded per stream and type; after a NACK the rejected content is not sent
//!   again (the client stays on its last good config) until the content changes;
//! - a type is pushed only when what this client subscribes to changed;
//! - updates go out clusters, endpoints, listeners, routes (what refers first, then what is referred).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use xds_api::pb::envoy::config::core::v3::Node;
use xds_api::pb::envoy::service::discovery::v3 as xdisc;

use super::resources::{Resource, ResourceType};
use super::snapshot::{version_of, XdsSnapshot};

/// Something a client told us, for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Ack {
        ty: ResourceType,
        version: String,
    },
    Nack {
        ty: ResourceType,
        version: String,
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
}

/// Per type, what this client was last sent and what it said about it (for `/config_dump`).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TypeStatus {
    pub sent_version: Option<String>,
    pub acked_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nacked_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nack_message: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamStatus {
    pub node_id: String,
    pub node_cluster: String,
    pub delta: bool,
    pub types: BTreeMap<&'static str, TypeStatus>,
}

fn node_status(node: &Option<Node>, delta: bool) -> StreamStatus {
    StreamStatus {
        node_id: node.as_ref().map(|n| n.id.clone()).unwrap_or_default(),
        node_cluster: node.as_ref().map(|n| n.cluster.clone()).unwrap_or_default(),
        delta,
        types: BTreeMap::new(),
    }
}

fn record_ack(status: &mut TypeStatus, version: &str) {
    status.acked_version = Some(version.to_string());
    status.nacked_version = None;
    status.nack_message = None;
}

/// The subscription of one type: explicit names and/or the wildcard.
#[derive(Debug, Default, Clone)]
struct Subscription {
    wildcard: bool,
    names: BTreeSet<String>,
}

impl Subscription {
    /// The resources of `ty` in `snap` this subscription covers, in name order.
    fn select<'a>(&self, snap: &'a XdsSnapshot, ty: ResourceType) -> Vec<&'a Resource> {
        let mut out: BTreeMap<&str, &Resource> = BTreeMap::new();
        if self.wildcard {
            out.extend(snap.all(ty).filter(|r| r.wildcard).map(|r| (r.name.as_str(), r)));
        }
        for name in &self.names {
            if let Some(r) = snap.get(ty, name) {
                out.insert(r.name.as_str(), r);
            }
        }
        out.into_values().collect()
    }
}

// ---------------------------------------------------------------- state of the world

#[derive(Debug, Default)]
struct SotwType {
    sub: Subscription,
    last_nonce: Option<String>,
    /// Version of the content last sent (a hash of its names and resource versions).
    sent: Option<String>,
    /// Content the client rejected; not sent again.
    rejected: Option<String>,
    status: TypeStatus,
}

/// One state-of-the-world ADS stream.
#[derive(Debug, Default)]
pub struct SotwStream {
    node: Option<Node>,
    types: BTreeMap<ResourceType, SotwType>,
    nonces: u64,
}

impl SotwStream {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }

    pub fn status(&self) -> StreamStatus {
        let mut s = node_status(&self.node, false);
        s.types = self.types.iter().map(|(ty, t)| (ty.label(), t.status.clone())).collect();
        s
    }

    pub fn handle_request(
        &mut self,
        req: xdisc::DiscoveryRequest,
        snap: &XdsSnapshot,
    ) -> Step<xdisc::DiscoveryResponse> {
        let mut step = Step::default();
        if self.node.is_none() && req.node.is_some() {
            self.node = req.node.clone();
        }
        let Some(ty) = ResourceType::from_type_url(&req.type_url) else {
            step.events.push(Event::UnknownType { type_url: req.type_url });
            return step;
        };
        let first = !self.types.contains_key(&ty);
        let t = self.types.entry(ty).or_default();
        if !req.response_nonce.is_empty() {
            if t.last_nonce.as_deref() != Some(req.response_nonce.as_str()) {
                step.events.push(Event::StaleNonce { ty, nonce: req.response_nonce });
                return step;
            }
            if let Some(err) = req.error_detail {
                t.rejected = t.sent.clone();
                t.status.nacked_version = t.sent.clone();
                t.status.nack_message = Some(err.message.clone());
                step.events.push(Event::Nack { ty, version: t.sent.clone().unwrap_or_default(), message: err.message });
            } else {
                record_ack(&mut t.status, &req.version_info);
                step.events.push(Event::Ack { ty, version: req.version_info });
            }
        }
        let names: BTreeSet<String> = req.resource_names.into_iter().collect();
        t.sub.wildcard =
            names.contains("*") || (names.is_empty() && ty.empty_means_wildcard() && (first || t.sub.wildcard));
        t.sub.names = names.into_iter().filter(|n| n != "*").collect();
        // The first request is always answered, even with nothing, so that the client can finish
        // its initial fetch.
        if let Some(resp) = self.respond(ty, snap, first) {
            step.responses.push(resp);
        }
        step
    }

    /// A new snapshot: push every subscribed type whose content for this client changed, in the
    /// safe order.
    pub fn handle_update(&mut self, snap: &XdsSnapshot) -> Step<xdisc::DiscoveryResponse> {
        let mut step = Step::default();
        for ty in ResourceType::ALL {
            if self.types.contains_key(&ty) {
                if let Some(resp) = self.respond(ty, snap, false) {
                    step.responses.push(resp);
                }
            }
        }
        step
    }

    fn respond(&mut self, ty: ResourceType, snap: &XdsSnapshot, force: bool) -> Option<xdisc::DiscoveryResponse> {
        let t = self.types.get_mut(&ty)?;
        let selected = t.sub.select(snap, ty);
        let version = version_of(selected.iter().map(|r| (r.name.as_str(), r.version.as_str())));
        let changed = t.sent.as_deref() != Some(version.as_str());
        let rejected = t.rejected.as_deref() == Some(version.as_str());
        if !force && (!changed || rejected) {
            return None;
        }
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        t.last_nonce = Some(nonce.clone());
        t.sent = Some(version.clone());
        t.status.sent_version = Some(version.clone());
        Some(xdisc::DiscoveryResponse {
            version_info: version,
            resources: selected.into_iter().map(|r| r.body.clone()).collect(),
            type_url: ty.type_url().to_string(),
            nonce,
            ..Default::default()
        })
    }
}

// ---------------------------------------------------------------- delta (incremental)

#[derive(Debug, Default)]
struct DeltaType {
    sub: Subscription,
    /// What the client holds as far as we know: name → resource version. Versions it rejected are
    /// kept here too, so that they are not sent again until they change.
    known: BTreeMap<String, String>,
    /// Nonces sent and not yet answered, with the version of each response.
    pending: BTreeMap<String, String>,
    status: TypeStatus,
}

/// One delta (incremental) ADS stream.
#[derive(Debug, Default)]
pub struct DeltaStream {
    node: Option<Node>,
    types: BTreeMap<ResourceType, DeltaType>,
    nonces: u64,
}

impl DeltaStream {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }

    pub fn status(&self) -> StreamStatus {
        let mut s = node_status(&self.node, true);
        s.types = self.types.iter().map(|(ty, t)| (ty.label(), t.status.clone())).collect();
        s
    }

    pub fn handle_request(
        &mut self,
        req: xdisc::DeltaDiscoveryRequest,
        snap: &XdsSnapshot,
    ) -> Step<xdisc::DeltaDiscoveryResponse> {
        let mut step = Step::default();
        if self.node.is_none() && req.node.is_some() {
            self.node = req.node.clone();
        }
        let Some(ty) = ResourceType::from_type_url(&req.type_url) else {
            step.events.push(Event::UnknownType { type_url: req.type_url });
            return step;
        };
        let first = !self.types.contains_key(&ty);
        let t = self.types.entry(ty).or_default();
        if !req.response_nonce.is_empty() {
            // In delta a request also carries subscription changes, so a stale nonce only skips
            // the ACK/NACK bookkeeping.
            match t.pending.remove(&req.response_nonce) {
                None => step.events.push(Event::StaleNonce { ty, nonce: req.response_nonce.clone() }),
                Some(version) => {
                    if let Some(err) = &req.error_detail {
                        t.status.nacked_version = Some(version.clone());
                        t.status.nack_message = Some(err.message.clone());
                        step.events.push(Event::Nack { ty, version, message: err.message.clone() });
                    } else {
                        record_ack(&mut t.status, &version);
                        step.events.push(Event::Ack { ty, version });
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
        if let Some(resp) = self.respond(ty, snap, first) {
            step.responses.push(resp);
        }
        step
    }

    pub fn handle_update(&mut self, snap: &XdsSnapshot) -> Step<xdisc::DeltaDiscoveryResponse> {
        let mut step = Step::default();
        for ty in ResourceType::ALL {
            if self.types.contains_key(&ty) {
                if let Some(resp) = self.respond(ty, snap, false) {
                    step.responses.push(resp);
                }
            }
        }
        step
    }

    fn respond(&mut self, ty: ResourceType, snap: &XdsSnapshot, force: bool) -> Option<xdisc::DeltaDiscoveryResponse> {
        let t = self.types.get_mut(&ty)?;
        let selected = t.sub.select(snap, ty);
        let in_scope: BTreeSet<&str> = selected.iter().map(|r| r.name.as_str()).collect();
        let updated: Vec<&Resource> =
            selected.iter().copied().filter(|r| t.known.get(&r.name) != Some(&r.version)).collect();
        let removed: Vec<String> = t.known.keys().filter(|n| !in_scope.contains(n.as_str())).cloned().collect();
        if updated.is_empty() && removed.is_empty() && !force {
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
        let nonce = self.nonces.to_string();
        t.pending.insert(nonce.clone(), version.clone());
        t.status.sent_version = Some(version.clone());
        Some(xdisc::DeltaDiscoveryResponse {
            system_version_info: snap.version(ty).to_string(),
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
            nonce,
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
        assert_eq!(
            step.events,
            vec![Event::Ack { ty: ResourceType::RouteConfiguration, version: r1.version_info.clone() }]
        );
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
        let r2 = st.handle_update(&snap(&cfg(100, 0, &["10.0.0.2:80"]))).responses.remove(0);
        assert_eq!(dnames(&r2), vec!["d/p-blue/10.0.0.2:80"]);
        assert_eq!(r2.removed_resources, vec!["d/p-blue/10.0.0.1:80"]);
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
}
