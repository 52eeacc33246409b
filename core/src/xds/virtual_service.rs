//! The l7mp VirtualService ([`crate::crd::VirtualService`]) in xDS, pure: validation (every problem
//! names its field and the rule), resolution across objects (names unique across VirtualServices,
//! no port clash; the older object wins, the newer is refused with a condition), and translation
//! into Listeners, Clusters and ClusterLoadAssignments served only to the Envoys whose node labels
//! match `spec.selector` ([`Resource::audience`], filtered per stream in [`super::ads`]).
//!
//! Mapping (docs/xds.md has the table):
//! - `udp` → a UDP listener on `0.0.0.0:port` with `envoy.filters.udp_listener.udp_proxy`, routed to
//!   the cluster by its matcher's `on_no_match` action; `hash_key` → a `hash_policies` `key`.
//! - `tcp` → a listener with `envoy.filters.network.tcp_proxy`; `hash_key` → a source-IP
//!   `hash_policy` (the TCP proxy has no fixed-key policy).
//! - `hash_key` → `RING_HASH` on the cluster; else `ROUND_ROBIN`.
//! - endpoints by `host.address` → a `STRICT_DNS` cluster (Envoy resolves names, IPv4 preferred)
//!   with the addresses inline; endpoints all by `host.selector` → an `EDS` cluster whose
//!   ClusterLoadAssignment lists the matching pods' IPs (pod readiness → health). A strictdns
//!   cluster that mixes both lists the pods' IPs inline.
//! - `health_check` → one TCP health check every `interval` ms (also when the cluster has no
//!   traffic) connecting to each endpoint's `health_check_port`. No panic mode (threshold 0): an
//!   endpoint failing its check, or an unready pod, gets nothing even when none is healthy.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube_core::ResourceExt;
use serde::Serialize;
use xds_api::pb::envoy::config::cluster::v3 as xcluster;
use xds_api::pb::envoy::config::core::v3 as xcore;
use xds_api::pb::envoy::config::endpoint::v3 as xendpoint;
use xds_api::pb::envoy::config::listener::v3 as xlistener;
use xds_api::pb::google::protobuf::{Any, Duration, UInt32Value};

use super::model::{BackendEndpoint, EndpointHealth};
use super::resources::{Resource, ResourceType, Resources};
use crate::crd::{VirtualService, VirtualServiceSpec, MIN_HEALTH_CHECK_INTERVAL_MS};
use crate::model::{ObjectRef, Snapshot};
use crate::operator::policy::Problems;

pub const CONDITION_ACCEPTED: &str = "Accepted";
pub const CONDITION_ENVOY_MATCHED: &str = "EnvoyMatched";
pub const REASON_ACCEPTED: &str = "Accepted";
pub const REASON_INVALID: &str = "Invalid";
pub const REASON_NAME_CONFLICT: &str = "NameConflict";
pub const REASON_PORT_CONFLICT: &str = "PortConflict";
pub const REASON_MATCHED: &str = "Matched";
pub const REASON_NO_MATCHING_ENVOY: &str = "NoMatchingEnvoy";

/// The longest health-check interval: a day.
pub const MAX_HEALTH_CHECK_INTERVAL_MS: i64 = 86_400_000;
pub const MAX_HASH_KEY: usize = 1024;
/// The key under the Envoy node's `metadata` whose string fields are its labels.
pub const NODE_LABELS_KEY: &str = "labels";

const UDP_PROXY: &str = "envoy.filters.udp_listener.udp_proxy";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Udp,
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
        }
    }
}

/// One accepted VirtualService.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub object: ObjectRef,
    pub selector: BTreeMap<String, String>,
    pub listeners: Vec<ListenerPlan>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerPlan {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub cluster: ClusterPlan,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterPlan {
    pub name: String,
    /// EDS (every endpoint by selector); else STRICT_DNS.
    pub eds: bool,
    pub health_interval_ms: Option<u32>,
    pub hash_key: Option<String>,
    pub endpoints: Vec<EndpointPlan>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointPlan {
    pub name: String,
    pub host: Host,
    pub port: u16,
    pub health_check_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Host {
    Address(String),
    Selector(BTreeMap<String, String>),
}

/// Whether every label of `selector` is among `labels` (an empty selector matches everything;
/// [`validate`] refuses one).
pub fn matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    let selector = LabelSelector { match_labels: Some(selector.clone()), match_expressions: None };
    crate::gateway::selector_matches(&selector, labels)
}

/// The labels of an Envoy node: the string fields of `metadata.labels` in its bootstrap.
pub fn node_labels(node: Option<&xcore::Node>) -> BTreeMap<String, String> {
    use xds_api::pb::google::protobuf::value::Kind;
    let Some(Kind::StructValue(labels)) = node
        .and_then(|n| n.metadata.as_ref())
        .and_then(|m| m.fields.get(NODE_LABELS_KEY))
        .and_then(|v| v.kind.as_ref())
    else {
        return BTreeMap::new();
    };
    labels
        .fields
        .iter()
        .filter_map(|(k, v)| match &v.kind {
            Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
            _ => None,
        })
        .collect()
}

/// Validates one spec into its listeners, or every problem found (field path, value, rule).
pub fn validate(spec: &VirtualServiceSpec) -> Result<Vec<ListenerPlan>, Vec<String>> {
    let mut p = Problems(Vec::new());
    if spec.selector.is_empty() {
        p.push("spec.selector", "is required: at least one label (an empty selector would configure every Envoy)");
    }
    if spec.listeners.is_empty() {
        p.push("spec.listeners", "is required: at least one listener");
    }
    let (mut names, mut clusters, mut ports) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let mut out = Vec::new();
    for (i, l) in spec.listeners.iter().enumerate() {
        let at = format!("spec.listeners[{i}]");
        p.name(&format!("{at}.name"), &l.name);
        if !l.name.is_empty() && !names.insert(l.name.clone()) {
            p.push(&format!("{at}.name"), format_args!("{:?}: another listener of this VirtualService has it", l.name));
        }
        let (protocol, proxy) = match (&l.udp, &l.tcp) {
            (Some(u), None) => (Protocol::Udp, u),
            (None, Some(t)) => (Protocol::Tcp, t),
            (Some(_), Some(_)) => {
                p.push(&at, "has both udp and tcp: a listener is one of them");
                continue;
            }
            (None, None) => {
                p.push(&at, "has neither udp nor tcp: one of them is required");
                continue;
            }
        };
        let at = format!("{at}.{}", protocol.as_str());
        let port = p.range(&format!("{at}.port"), proxy.port, 1, 65535) as u16;
        if port != 0 && !ports.insert((protocol, port)) {
            p.push(
                &format!("{at}.port"),
                format_args!("{port}: another {} listener of this VirtualService has it", protocol.as_str()),
            );
        }
        let c = &proxy.cluster;
        let at = format!("{at}.cluster");
        p.name(&format!("{at}.name"), &c.name);
        if !c.name.is_empty() && !clusters.insert(c.name.clone()) {
            p.push(&format!("{at}.name"), format_args!("{:?}: another listener of this VirtualService has it", c.name));
        }
        let eds =
            p.one_of(&format!("{at}.service_discovery"), &c.service_discovery, &["strictdns", "eds"]) == Some("eds");
        let health_interval_ms = c.health_check.as_ref().map(|h| {
            let f = format!("{at}.health_check.interval");
            if h.interval < MIN_HEALTH_CHECK_INTERVAL_MS {
                p.push(
                    &f,
                    format_args!("{}: must be at least {MIN_HEALTH_CHECK_INTERVAL_MS} (milliseconds)", h.interval),
                );
            } else if h.interval > MAX_HEALTH_CHECK_INTERVAL_MS {
                p.push(&f, format_args!("{}: must be at most {MAX_HEALTH_CHECK_INTERVAL_MS} (a day)", h.interval));
            }
            p.one_of(&format!("{at}.health_check.protocol"), &h.protocol, &["TCP"]);
            h.interval.clamp(MIN_HEALTH_CHECK_INTERVAL_MS, MAX_HEALTH_CHECK_INTERVAL_MS) as u32
        });
        if let Some(k) = &c.hash_key {
            if k.is_empty() || k.len() > MAX_HASH_KEY {
                p.push(
                    &format!("{at}.hash_key"),
                    format_args!("must be 1 to {MAX_HASH_KEY} characters (omit it for no hashing)"),
                );
            }
        }
        if c.endpoints.is_empty() {
            p.push(&format!("{at}.endpoints"), "is required: at least one endpoint");
        }
        let mut endpoint_names = BTreeSet::new();
        let mut endpoints = Vec::new();
        for (j, e) in c.endpoints.iter().enumerate() {
            let at = format!("{at}.endpoints[{j}]");
            p.name(&format!("{at}.name"), &e.name);
            if !e.name.is_empty() && !endpoint_names.insert(e.name.clone()) {
                p.push(&format!("{at}.name"), format_args!("{:?}: another endpoint of this cluster has it", e.name));
            }
            let host = match (&e.host.selector, &e.host.address) {
                (Some(s), None) => {
                    if s.is_empty() {
                        p.push(&format!("{at}.host.selector"), "may not be empty: at least one pod label");
                    }
                    Some(Host::Selector(s.clone()))
                }
                (None, Some(a)) => {
                    let f = format!("{at}.host.address");
                    if a.parse::<IpAddr>().is_err() && (a.starts_with("*.") || !crate::selection::is_dns_name(a)) {
                        p.push(&f, format_args!("{a:?}: must be an IP address or a DNS name"));
                    }
                    if eds {
                        p.push(
                            &f,
                            "is not allowed with service_discovery eds (EDS endpoints come from host.selector); use \
                             strictdns",
                        );
                    }
                    Some(Host::Address(a.clone()))
                }
                (Some(_), Some(_)) => {
                    p.push(&format!("{at}.host"), "has both selector and address: one of them");
                    None
                }
                (None, None) => {
                    p.push(&format!("{at}.host"), "has neither selector nor address: one of them is required");
                    None
                }
            };
            let port = p.range(&format!("{at}.port"), e.port, 1, 65535) as u16;
            let f = format!("{at}.health_check_port");
            let health_check_port = match (health_interval_ms, e.health_check_port) {
                (Some(_), None) => {
                    p.push(&f, "is required when the cluster has a health_check");
                    None
                }
                (None, Some(_)) => {
                    p.push(&f, "is set but the cluster has no health_check: set both or neither");
                    None
                }
                (_, Some(v)) => Some(p.range(&f, v, 1, 65535) as u16),
                (None, None) => None,
            };
            if let Some(host) = host {
                endpoints.push(EndpointPlan { name: e.name.clone(), host, port, health_check_port });
            }
        }
        let eds = eds || (!endpoints.is_empty() && endpoints.iter().all(|e| matches!(e.host, Host::Selector(_))));
        out.push(ListenerPlan {
            name: l.name.clone(),
            protocol,
            port,
            cluster: ClusterPlan {
                name: c.name.clone(),
                eds,
                health_interval_ms,
                hash_key: c.hash_key.clone(),
                endpoints,
            },
        });
    }
    if p.0.is_empty() {
        Ok(out)
    } else {
        Err(p.0)
    }
}

/// A VirtualService refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct VsRefusal {
    pub object: ObjectRef,
    /// [`REASON_INVALID`], [`REASON_NAME_CONFLICT`] or [`REASON_PORT_CONFLICT`].
    pub reason: String,
    pub message: String,
}

/// What weir serves of the VirtualServices of one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Resolution {
    /// In creation order.
    pub accepted: Vec<Plan>,
    pub refused: Vec<VsRefusal>,
}

/// What a VirtualService may not take from weir's own configuration: its resource names and the
/// TCP port of its Envoy listener (served to every Envoy).
#[derive(Debug, Clone, Default)]
pub struct Reserved {
    pub names: BTreeSet<String>,
    pub tcp_port: Option<u16>,
}

/// Two selectors no Envoy can match both of: they differ on a key they share.
fn disjoint(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> bool {
    a.iter().any(|(k, v)| b.get(k).is_some_and(|w| w != v))
}

/// Resolves every VirtualService of `snapshot` (in `namespace`, when given): oldest first (creation
/// time, then namespace/name), each accepted when valid and when none of its listener or cluster
/// names is taken and none of its ports clashes (same protocol and port for an Envoy both could
/// match) with an older accepted one or with `reserved`.
pub fn resolve(snapshot: &Snapshot, namespace: Option<&str>, reserved: &Reserved) -> Resolution {
    let mut vss: Vec<&VirtualService> = snapshot
        .virtual_services
        .iter()
        // A manifest without a namespace (file provider) is in weir xds's namespace, as `kubectl
        // apply` would put it in the default one.
        .filter(|v| namespace.is_none_or(|ns| v.namespace().is_none_or(|n| n == ns)))
        .collect();
    vss.sort_by_key(|v| {
        (v.metadata.creation_timestamp.as_ref().map(|t| t.0), v.namespace().unwrap_or_default(), v.name_any())
    });
    let mut out = Resolution::default();
    // Name → the object that holds it.
    let mut names: BTreeMap<String, ObjectRef> = BTreeMap::new();
    for vs in vss {
        let object = ObjectRef::of(vs);
        let refuse =
            |reason: &str, message: String| VsRefusal { object: object.clone(), reason: reason.into(), message };
        let listeners = match validate(&vs.spec) {
            Ok(l) => l,
            Err(problems) => {
                out.refused.push(refuse(REASON_INVALID, problems.join("; ")));
                continue;
            }
        };
        let mut clashes = Vec::new();
        let mut mine = BTreeSet::new();
        for l in &listeners {
            for (what, name) in [("listener", &l.name), ("cluster", &l.cluster.name)] {
                if reserved.names.contains(name) {
                    clashes.push(format!("{what} name {name:?} is one of weir's own resources"));
                } else if let Some(holder) = names.get(name) {
                    clashes.push(format!("{what} name {name:?} is already taken by {holder}"));
                } else if what == "cluster" && mine.contains(name) {
                    clashes.push(format!("cluster name {name:?} is also one of its listener names"));
                }
                mine.insert(name.clone());
            }
        }
        if !clashes.is_empty() {
            out.refused.push(refuse(
                REASON_NAME_CONFLICT,
                format!("{}: names are unique across VirtualServices", clashes.join("; ")),
            ));
            continue;
        }
        let mut port_clashes = Vec::new();
        for l in &listeners {
            if l.protocol == Protocol::Tcp && reserved.tcp_port == Some(l.port) {
                port_clashes.push(format!("listener {:?}: tcp port {} is weir's own Envoy listener", l.name, l.port));
            }
            for other in &out.accepted {
                if disjoint(&other.selector, &vs.spec.selector) {
                    continue;
                }
                for o in other.listeners.iter().filter(|o| o.protocol == l.protocol && o.port == l.port) {
                    port_clashes.push(format!(
                        "listener {:?}: {} port {} is taken by listener {:?} of {} on Envoys both selectors match",
                        l.name,
                        l.protocol.as_str(),
                        l.port,
                        o.name,
                        other.object
                    ));
                }
            }
        }
        if !port_clashes.is_empty() {
            out.refused.push(refuse(REASON_PORT_CONFLICT, port_clashes.join("; ")));
            continue;
        }
        for l in &listeners {
            names.insert(l.name.clone(), object.clone());
            names.insert(l.cluster.name.clone(), object.clone());
        }
        out.accepted.push(Plan { object, selector: vs.spec.selector.clone(), listeners });
    }
    out
}

/// `snapshot` with each VirtualService that no longer validates replaced by its last valid version
/// (gone when it never had one), and `last_good` updated (forgetting deleted objects). `None` when
/// nothing was replaced.
pub fn with_last_good(snapshot: &Snapshot, last_good: &mut BTreeMap<ObjectRef, VirtualService>) -> Option<Snapshot> {
    let kept = crate::model::keep_last_good(&snapshot.virtual_services, last_good, |v| validate(&v.spec).is_ok())?;
    Some(Snapshot { virtual_services: kept, ..snapshot.clone() })
}

/// The pods of `namespace` matching `selector` that have an IP, as endpoints on `port`: ready →
/// healthy, being deleted → draining, else unhealthy.
pub fn pod_endpoints(
    pods: &[Pod],
    namespace: &str,
    selector: &BTreeMap<String, String>,
    port: u16,
) -> Vec<BackendEndpoint> {
    let mut out: Vec<BackendEndpoint> = pods
        .iter()
        .filter(|p| p.namespace().unwrap_or_default() == namespace && matches(selector, p.labels()))
        .filter_map(|p| {
            let status = p.status.as_ref()?;
            let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
            let ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
            let health = if p.metadata.deletion_timestamp.is_some() {
                EndpointHealth::Draining
            } else if ready {
                EndpointHealth::Healthy
            } else {
                EndpointHealth::Unhealthy
            };
            Some(BackendEndpoint { address: SocketAddr::new(ip, port), zone: None, health })
        })
        .collect();
    out.sort();
    out.dedup_by(|a, b| a.address == b.address);
    out
}

/// The Envoy resources of the accepted VirtualServices, each for the Envoys its selector matches.
pub fn translate(res: &Resolution, pods: &[Pod]) -> Resources {
    let mut out = Resources::default();
    for plan in &res.accepted {
        let audience = Arc::new(plan.selector.clone());
        for l in &plan.listeners {
            let listener = match l.protocol {
                Protocol::Udp => udp_listener(l),
                Protocol::Tcp => tcp_listener(l),
            };
            out.insert(ResourceType::Listener, Resource::new(l.name.clone(), &listener, true).for_nodes(&audience));
            let (cluster, assignment) = cluster(&plan.object.namespace, &l.cluster, pods);
            out.insert(ResourceType::Cluster, Resource::cluster(l.cluster.name.clone(), &cluster).for_nodes(&audience));
            if let Some(cla) = assignment {
                out.insert(
                    ResourceType::ClusterLoadAssignment,
                    Resource::new(l.cluster.name.clone(), &cla, true).for_nodes(&audience),
                );
            }
        }
    }
    out
}

fn any<M: prost::Name>(m: &M) -> Any {
    Any { type_url: M::type_url(), value: m.encode_to_vec() }
}

fn listen(port: u16, protocol: xcore::socket_address::Protocol) -> xcore::Address {
    xcore::Address {
        address: Some(xcore::address::Address::SocketAddress(xcore::SocketAddress {
            protocol: protocol as i32,
            address: "0.0.0.0".into(),
            port_specifier: Some(xcore::socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

fn udp_listener(l: &ListenerPlan) -> xlistener::Listener {
    use xds_api::pb::xds::r#type::matcher::v3::matcher::{on_match, OnMatch};
    use xds_api::pb::xds::r#type::matcher::v3::Matcher;
    let route = UdpRoute { cluster: l.cluster.name.clone() };
    let matcher = Matcher {
        on_no_match: Some(Box::new(OnMatch {
            on_match: Some(on_match::OnMatch::Action(xds_api::pb::xds::core::v3::TypedExtensionConfig {
                name: "route".into(),
                typed_config: Some(any(&route)),
            })),
        })),
        matcher_type: None,
    };
    let config = UdpProxyConfig {
        stat_prefix: l.name.clone(),
        matcher: Some(matcher),
        hash_policies: l.cluster.hash_key.iter().map(|k| UdpHashPolicy { key: k.clone() }).collect(),
    };
    xlistener::Listener {
        name: l.name.clone(),
        address: Some(listen(l.port, xcore::socket_address::Protocol::Udp)),
        udp_listener_config: Some(Default::default()),
        listener_filters: vec![xlistener::ListenerFilter {
            name: UDP_PROXY.into(),
            config_type: Some(xlistener::listener_filter::ConfigType::TypedConfig(any(&config))),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn tcp_listener(l: &ListenerPlan) -> xlistener::Listener {
    use xds_api::pb::envoy::r#type::v3::hash_policy::{PolicySpecifier, SourceIp};
    let config = TcpProxy {
        stat_prefix: l.name.clone(),
        cluster: l.cluster.name.clone(),
        hash_policy: l
            .cluster
            .hash_key
            .iter()
            .map(|_| xds_api::pb::envoy::r#type::v3::HashPolicy {
                policy_specifier: Some(PolicySpecifier::SourceIp(SourceIp {})),
            })
            .collect(),
    };
    xlistener::Listener {
        name: l.name.clone(),
        address: Some(listen(l.port, xcore::socket_address::Protocol::Tcp)),
        filter_chains: vec![xlistener::FilterChain {
            filters: vec![xlistener::Filter {
                name: TCP_PROXY.into(),
                config_type: Some(xlistener::filter::ConfigType::TypedConfig(any(&config))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn millis(ms: u32) -> Duration {
    Duration { seconds: i64::from(ms / 1000), nanos: ((ms % 1000) * 1_000_000) as i32 }
}

fn lb_endpoint(
    address: xcore::Address,
    health: EndpointHealth,
    health_check_port: Option<u16>,
) -> xendpoint::LbEndpoint {
    xendpoint::LbEndpoint {
        health_status: super::resources::health(health) as i32,
        host_identifier: Some(xendpoint::lb_endpoint::HostIdentifier::Endpoint(xendpoint::Endpoint {
            address: Some(address),
            health_check_config: health_check_port.map(|port| xendpoint::endpoint::HealthCheckConfig {
                port_value: u32::from(port),
                ..Default::default()
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn host_address(host: &str, port: u16) -> xcore::Address {
    xcore::Address {
        address: Some(xcore::address::Address::SocketAddress(xcore::SocketAddress {
            address: host.to_string(),
            port_specifier: Some(xcore::socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

/// The cluster and, for EDS, its assignment.
fn cluster(
    namespace: &str,
    c: &ClusterPlan,
    pods: &[Pod],
) -> (xcluster::Cluster, Option<xendpoint::ClusterLoadAssignment>) {
    use xcluster::cluster::{ClusterDiscoveryType, DiscoveryType, DnsLookupFamily, LbPolicy};
    let mut lb_endpoints = Vec::new();
    for e in &c.endpoints {
        match &e.host {
            Host::Address(a) => {
                lb_endpoints.push(lb_endpoint(host_address(a, e.port), EndpointHealth::Healthy, e.health_check_port))
            }
            Host::Selector(s) => lb_endpoints.extend(pod_endpoints(pods, namespace, s, e.port).into_iter().map(|ep| {
                lb_endpoint(host_address(&ep.address.ip().to_string(), e.port), ep.health, e.health_check_port)
            })),
        }
    }
    let assignment = xendpoint::ClusterLoadAssignment {
        cluster_name: c.name.clone(),
        endpoints: vec![xendpoint::LocalityLbEndpoints { lb_endpoints, ..Default::default() }],
        ..Default::default()
    };
    let mut cluster = xcluster::Cluster {
        name: c.name.clone(),
        connect_timeout: Some(Duration { seconds: 1, nanos: 0 }),
        lb_policy: if c.hash_key.is_some() { LbPolicy::RingHash } else { LbPolicy::RoundRobin } as i32,
        // An endpoint that fails its health check or whose pod is not ready gets nothing, even when
        // no endpoint is healthy (Envoy's panic mode would send to all of them).
        common_lb_config: Some(xcluster::cluster::CommonLbConfig {
            healthy_panic_threshold: Some(xds_api::pb::envoy::r#type::v3::Percent { value: 0.0 }),
            ..Default::default()
        }),
        ..Default::default()
    };
    if let Some(interval) = c.health_interval_ms {
        cluster.health_checks = vec![xcore::HealthCheck {
            timeout: Some(millis(interval.min(1000))),
            interval: Some(millis(interval)),
            // Envoy checks an idle cluster only every 60 s by default; UDP clusters are often idle
            // between datagrams.
            no_traffic_interval: Some(millis(interval)),
            unhealthy_threshold: Some(UInt32Value { value: 1 }),
            healthy_threshold: Some(UInt32Value { value: 1 }),
            health_checker: Some(xcore::health_check::HealthChecker::TcpHealthCheck(Default::default())),
            ..Default::default()
        }];
    }
    if c.eds {
        cluster.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
        cluster.eds_cluster_config = Some(xcluster::cluster::EdsClusterConfig {
            eds_config: Some(super::resources::ads()),
            service_name: c.name.clone(),
        });
        (cluster, Some(assignment))
    } else {
        cluster.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32));
        cluster.dns_lookup_family = DnsLookupFamily::V4Preferred as i32;
        cluster.load_assignment = Some(assignment);
        (cluster, None)
    }
}

/// `envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig` (xds-api does not generate it): the
/// fields weir sets.
#[derive(Clone, PartialEq, prost::Message)]
struct UdpProxyConfig {
    #[prost(string, tag = "1")]
    stat_prefix: String,
    #[prost(message, repeated, tag = "5")]
    hash_policies: Vec<UdpHashPolicy>,
    #[prost(message, optional, tag = "9")]
    matcher: Option<xds_api::pb::xds::r#type::matcher::v3::Matcher>,
}

impl prost::Name for UdpProxyConfig {
    const NAME: &'static str = "UdpProxyConfig";
    const PACKAGE: &'static str = "envoy.extensions.filters.udp.udp_proxy.v3";
    fn type_url() -> String {
        format!("type.googleapis.com/{}", Self::full_name())
    }
}

/// `UdpProxyConfig.HashPolicy` with its `key` (field 2 of the oneof).
#[derive(Clone, PartialEq, prost::Message)]
struct UdpHashPolicy {
    #[prost(string, tag = "2")]
    key: String,
}

/// `envoy.extensions.filters.udp.udp_proxy.v3.Route`.
#[derive(Clone, PartialEq, prost::Message)]
struct UdpRoute {
    #[prost(string, tag = "1")]
    cluster: String,
}

impl prost::Name for UdpRoute {
    const NAME: &'static str = "Route";
    const PACKAGE: &'static str = "envoy.extensions.filters.udp.udp_proxy.v3";
    fn type_url() -> String {
        format!("type.googleapis.com/{}", Self::full_name())
    }
}

/// `envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy`: the fields weir sets.
#[derive(Clone, PartialEq, prost::Message)]
struct TcpProxy {
    #[prost(string, tag = "1")]
    stat_prefix: String,
    #[prost(string, tag = "2")]
    cluster: String,
    #[prost(message, repeated, tag = "11")]
    hash_policy: Vec<xds_api::pb::envoy::r#type::v3::HashPolicy>,
}

impl prost::Name for TcpProxy {
    const NAME: &'static str = "TcpProxy";
    const PACKAGE: &'static str = "envoy.extensions.filters.network.tcp_proxy.v3";
    fn type_url() -> String {
        format!("type.googleapis.com/{}", Self::full_name())
    }
}

/// The conditions of one VirtualService: `Accepted` (from `res`) and, when `matched` is known,
/// `EnvoyMatched`. Transition times are kept from `vs`'s stored status while a status holds.
pub fn conditions(vs: &VirtualService, res: &Resolution, matched: Option<bool>, now: &Time) -> Vec<Condition> {
    let me = ObjectRef::of(vs);
    let previous = vs.status.as_ref().map_or(&[][..], |s| &s.conditions[..]);
    let cond = |type_: &str, ok: bool, reason: &str, message: String| {
        crate::operator::status::condition(previous, type_, ok, reason, message, vs.metadata.generation, now)
    };
    let mut out = Vec::new();
    if let Some(r) = res.refused.iter().find(|r| r.object == me) {
        let kept = if r.reason == REASON_INVALID { "; its last valid version, if any, keeps serving" } else { "" };
        out.push(cond(CONDITION_ACCEPTED, false, &r.reason, format!("{}{kept}", r.message)));
    } else if res.accepted.iter().any(|p| p.object == me) {
        out.push(cond(CONDITION_ACCEPTED, true, REASON_ACCEPTED, "served to the Envoys its selector matches".into()));
    }
    if let Some(m) = matched {
        let (reason, message) = if m {
            (REASON_MATCHED, "a connected Envoy's node labels match spec.selector".to_string())
        } else {
            (
                REASON_NO_MATCHING_ENVOY,
                "no connected Envoy's node labels (bootstrap node.metadata.labels) match spec.selector".to_string(),
            )
        };
        out.push(cond(CONDITION_ENVOY_MATCHED, m, reason, message));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden files: `testdata/vs/*.in.yaml` (VirtualServices and Pods) → `*.out.yaml` (the
    /// resolution and the resources as canonical protobuf JSON). `WEIR_UPDATE_GOLDEN=1` rewrites.
    #[test]
    fn golden() {
        let dir = crate::golden::testdata("vs");
        let mut entries: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        let mut seen = 0;
        for input in entries {
            let Some(stem) = input.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".in.yaml")) else {
                continue;
            };
            seen += 1;
            let text = std::fs::read_to_string(&input).unwrap();
            let mut snap = Snapshot::default();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let v = serde_yaml::Value::deserialize(doc).unwrap();
                match v.get("kind").and_then(|k| k.as_str()) {
                    Some("VirtualService") => snap.virtual_services.push(serde_yaml::from_value(v).unwrap()),
                    Some("Pod") => snap.pods.push(serde_yaml::from_value(v).unwrap()),
                    other => panic!("{stem}: unexpected kind {other:?}"),
                }
            }
            let reserved = Reserved { names: ["shop-envoy".to_string()].into(), tcp_port: Some(8080) };
            let res = resolve(&snap, None, &reserved);
            let out = serde_json::json!({
                "refused": res.refused,
                "resources": translate(&res, &snap.pods).to_json(),
                "audience": translate(&res, &snap.pods).by_type.values().flat_map(|m| m.values())
                    .map(|r| (r.name.clone(), r.audience.as_deref().cloned())).collect::<BTreeMap<_, _>>(),
            });
            crate::golden::assert_golden(&format!("vs/{stem}.out.yaml"), &serde_yaml::to_string(&out).unwrap());
        }
        assert!(seen > 0, "no golden inputs in {}", dir.display());
    }

    use serde::Deserialize;

    fn spec(yaml: &str) -> VirtualServiceSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn every_problem_names_its_field_and_rule() {
        let s = spec(
            "selector: {}\nlisteners:\n- name: a\n  udp:\n    port: 70000\n    cluster:\n      name: c\n      \
             service_discovery: dns\n      health_check: {interval: 100, protocol: HTTP}\n      hash_key: ''\n      \
             endpoints:\n      - {name: e, host: {address: 'bad host'}, port: 0}\n      - {name: e, host: {}, port: 1, \
             health_check_port: 1}\n- name: a\n  udp: {port: 1, cluster: {name: d, endpoints: [{name: x, host: \
             {address: h}, port: 1}]}}\n  tcp: {port: 1, cluster: {name: d, endpoints: []}}\n",
        );
        let problems = validate(&s).unwrap_err();
        let want = [
            "spec.selector is required",
            "spec.listeners[0].udp.port 70000: must be between 1 and 65535",
            "spec.listeners[0].udp.cluster.service_discovery \"dns\": must be one of strictdns, eds",
            "spec.listeners[0].udp.cluster.health_check.interval 100: must be at least 500 (milliseconds)",
            "spec.listeners[0].udp.cluster.health_check.protocol \"HTTP\": must be one of TCP",
            "spec.listeners[0].udp.cluster.hash_key must be 1 to 1024 characters",
            "spec.listeners[0].udp.cluster.endpoints[0].host.address \"bad host\": must be an IP address or a DNS name",
            "spec.listeners[0].udp.cluster.endpoints[0].port 0: must be between 1 and 65535",
            "spec.listeners[0].udp.cluster.endpoints[0].health_check_port is required when the cluster has a health_check",
            "spec.listeners[0].udp.cluster.endpoints[1].name \"e\": another endpoint of this cluster has it",
            "spec.listeners[0].udp.cluster.endpoints[1].host has neither selector nor address",
            "spec.listeners[1].name \"a\": another listener of this VirtualService has it",
            "spec.listeners[1] has both udp and tcp",
        ];
        for w in want {
            assert!(problems.iter().any(|p| p.starts_with(w)), "missing {w:?} in {problems:#?}");
        }
        assert_eq!(problems.len(), want.len(), "{problems:#?}");
    }

    #[test]
    fn node_labels_come_from_metadata_labels() {
        use xds_api::pb::google::protobuf::{value::Kind, Struct, Value};
        let s = |fields: Vec<(&str, Kind)>| Struct {
            fields: fields.into_iter().map(|(k, v)| (k.to_string(), Value { kind: Some(v) })).collect(),
        };
        let labels = s(vec![("app", Kind::StringValue("envoy-ingress".into())), ("n", Kind::NumberValue(1.0))]);
        let node =
            xcore::Node { metadata: Some(s(vec![(NODE_LABELS_KEY, Kind::StructValue(labels))])), ..Default::default() };
        let got = node_labels(Some(&node));
        assert_eq!(got, BTreeMap::from([("app".to_string(), "envoy-ingress".to_string())]));
        assert!(node_labels(None).is_empty());
        let sel = BTreeMap::from([("app".to_string(), "envoy-ingress".to_string())]);
        assert!(matches(&sel, &got));
        assert!(!matches(&sel, &BTreeMap::new()));
    }
}
