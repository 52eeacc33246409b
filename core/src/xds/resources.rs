//! Pure translation of a [`ProxyConfig`] into Envoy resources: Listeners (a socket listener for
//! Envoy, an `api_listener` for proxyless gRPC), one RouteConfiguration, EDS Clusters and
//! ClusterLoadAssignments.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use prost::Message;
use xds_api::pb::envoy::config::cluster::v3 as xcluster;
use xds_api::pb::envoy::config::core::v3 as xcore;
use xds_api::pb::envoy::config::endpoint::v3 as xendpoint;
use xds_api::pb::envoy::config::listener::v3 as xlistener;
use xds_api::pb::envoy::config::route::v3 as xroute;
use xds_api::pb::envoy::extensions::filters::http::router::v3::Router;
use xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3 as xhcm;
use xds_api::pb::envoy::r#type::matcher::v3 as xmatcher;
use xds_api::pb::google::protobuf::{Any, Duration, UInt32Value};
use xds_api::WellKnownTypes;

use super::model::{BackendEndpoint, EndpointHealth, ProxyConfig, ServiceBackend};
use crate::operator::policy::Policy;

/// The request header that pins a call to one discovered endpoint (`IP:PORT`).
pub const PLANNERIP_HEADER: &str = "plannerip";

/// The resource types weir serves, in the order that is safe to send them: clusters before their
/// endpoints, listeners before their routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceType {
    Cluster,
    ClusterLoadAssignment,
    Listener,
    RouteConfiguration,
}

impl ResourceType {
    pub const ALL: [ResourceType; 4] = [
        ResourceType::Cluster,
        ResourceType::ClusterLoadAssignment,
        ResourceType::Listener,
        ResourceType::RouteConfiguration,
    ];

    pub fn type_url(self) -> &'static str {
        self.well_known().type_url()
    }

    pub fn from_type_url(url: &str) -> Option<Self> {
        Some(match WellKnownTypes::from_type_url(url)? {
            WellKnownTypes::Cluster => ResourceType::Cluster,
            WellKnownTypes::ClusterLoadAssignment => ResourceType::ClusterLoadAssignment,
            WellKnownTypes::Listener => ResourceType::Listener,
            WellKnownTypes::RouteConfiguration => ResourceType::RouteConfiguration,
            _ => return None,
        })
    }

    fn well_known(self) -> WellKnownTypes {
        match self {
            ResourceType::Cluster => WellKnownTypes::Cluster,
            ResourceType::ClusterLoadAssignment => WellKnownTypes::ClusterLoadAssignment,
            ResourceType::Listener => WellKnownTypes::Listener,
            ResourceType::RouteConfiguration => WellKnownTypes::RouteConfiguration,
        }
    }

    /// Short label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            ResourceType::Cluster => "cluster",
            ResourceType::ClusterLoadAssignment => "endpoint",
            ResourceType::Listener => "listener",
            ResourceType::RouteConfiguration => "route",
        }
    }

    /// Whether a client that names no resources of this type means "all of them" (the legacy
    /// wildcard of LDS and CDS).
    pub fn empty_means_wildcard(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener)
    }

    /// Whether a state-of-the-world response must carry every resource of the type (a resource
    /// missing from it is deleted): listeners and clusters. Routes and endpoints are kept until
    /// unsubscribed, so a response of theirs may carry only what changed.
    pub fn sotw_sends_all(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener)
    }

    pub fn from_label(label: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|ty| ty.label() == label)
    }
}

/// One named resource, encoded once.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub name: String,
    pub body: Any,
    /// Content hash; the per-resource version of delta xDS.
    pub version: String,
    /// Sent to wildcard subscribers. The `api_listener` is not: Envoy must never see it in LDS.
    pub wildcard: bool,
    /// The node labels a client must have to be sent it (a VirtualService's `spec.selector`);
    /// `None`: every client.
    pub audience: Option<std::sync::Arc<BTreeMap<String, String>>>,
}

impl Resource {
    pub(super) fn new<M: prost::Name>(name: String, msg: &M, wildcard: bool) -> Self {
        Self::encoded(name, M::type_url(), msg.encode_to_vec(), wildcard)
    }

    /// A cluster, encoded by [`crate::operator::envoy::encode_cluster`] (named health checks).
    pub(super) fn cluster(name: String, cluster: &xcluster::Cluster) -> Self {
        Self::encoded(
            name,
            <xcluster::Cluster as prost::Name>::type_url(),
            crate::operator::envoy::encode_cluster(cluster),
            true,
        )
    }

    fn encoded(name: String, type_url: String, value: Vec<u8>, wildcard: bool) -> Self {
        use sha2::Digest;
        let version = hex::encode(&sha2::Sha256::digest(&value)[..8]);
        Self { name, body: Any { type_url, value }, version, wildcard, audience: None }
    }

    /// Only for the clients whose node labels match `selector`.
    pub(super) fn for_nodes(mut self, selector: &std::sync::Arc<BTreeMap<String, String>>) -> Self {
        self.audience = Some(selector.clone());
        self
    }

    /// Whether a client with node `labels` may be sent it.
    pub fn visible_to(&self, labels: &BTreeMap<String, String>) -> bool {
        self.audience.as_ref().is_none_or(|sel| super::virtual_service::matches(sel, labels))
    }
}

/// Every resource of one configuration, by type and name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub by_type: BTreeMap<ResourceType, BTreeMap<String, Resource>>,
}

impl Resources {
    pub(super) fn insert(&mut self, ty: ResourceType, r: Resource) {
        self.by_type.entry(ty).or_default().insert(r.name.clone(), r);
    }

    /// Adds every resource of `other` whose name this set does not have yet (its own win).
    pub fn extend_new(&mut self, other: Resources) {
        for (ty, items) in other.by_type {
            let mine = self.by_type.entry(ty).or_default();
            for (name, r) in items {
                mine.entry(name).or_insert(r);
            }
        }
    }

    pub fn of(&self, ty: ResourceType) -> impl Iterator<Item = &Resource> {
        self.by_type.get(&ty).into_iter().flat_map(|m| m.values())
    }

    /// JSON of every resource (the canonical protobuf JSON), for golden files and `/config_dump`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for ty in ResourceType::ALL {
            let items: Vec<serde_json::Value> =
                self.of(ty).map(|r| serde_json::to_value(&r.body).unwrap_or(serde_json::Value::Null)).collect();
            out.insert(ty.label().to_string(), serde_json::Value::Array(items));
        }
        serde_json::Value::Object(out)
    }
}

/// Name of the socket listener Envoy receives.
pub fn envoy_listener_name(cfg: &ProxyConfig) -> String {
    format!("{}-envoy", cfg.name)
}

/// Whether a `plannerip` pin may reach the endpoint: `serving` in its EndpointSlice (ready, or
/// terminating while still serving), whatever its strategy's weight.
fn can_serve(ep: &BackendEndpoint) -> bool {
    ep.health != EndpointHealth::Unhealthy
}

/// Name of the per-endpoint cluster a `plannerip` route pins to.
pub fn endpoint_cluster_name(svc: &ServiceBackend, addr: SocketAddr) -> String {
    format!("{}/{}", svc.cluster_name(), addr)
}

pub fn translate(cfg: &ProxyConfig) -> Resources {
    let mut out = Resources::default();
    out.insert(ResourceType::Listener, Resource::new(cfg.name.clone(), &api_listener(cfg), false));
    out.insert(ResourceType::Listener, Resource::new(envoy_listener_name(cfg), &socket_listener(cfg), true));
    out.insert(ResourceType::RouteConfiguration, Resource::new(cfg.name.clone(), &route_configuration(cfg), true));
    for svc in &cfg.services {
        let name = svc.cluster_name();
        let policy = cfg.policies.service(&name);
        let endpoints = endpoints_for(policy, &svc.endpoints);
        let mut cluster = eds_cluster(&name, policy);
        if policy.is_some_and(|p| p.dns.is_some()) {
            // A DNS cluster carries its addresses itself: Envoy resolves them, EDS is not used.
            cluster.load_assignment = Some(load_assignment(&name, &endpoints));
        } else {
            out.insert(
                ResourceType::ClusterLoadAssignment,
                Resource::new(name.clone(), &load_assignment(&name, &endpoints), true),
            );
        }
        out.insert(ResourceType::Cluster, Resource::cluster(name.clone(), &cluster));
        // A pinned cluster holds one discovered address: never a DNS cluster.
        let pinned_policy = policy.map(|p| Policy { dns: None, ..p.clone() });
        for ep in endpoints.iter().filter(|ep| can_serve(ep)) {
            let name = endpoint_cluster_name(svc, ep.address);
            let mut cluster = eds_cluster(&name, pinned_policy.as_ref());
            // Panic mode would send pinned calls to the endpoint whatever its health: never.
            cluster.common_lb_config.get_or_insert_with(Default::default).healthy_panic_threshold =
                Some(xds_api::pb::envoy::r#type::v3::Percent { value: 0.0 });
            out.insert(ResourceType::Cluster, Resource::cluster(name.clone(), &cluster));
            // A draining endpoint still finishes the queries pinned to it: healthy in its own cluster.
            let pinned = BackendEndpoint { health: EndpointHealth::Healthy, ..ep.clone() };
            let cla = load_assignment(&name, std::slice::from_ref(&pinned));
            out.insert(ResourceType::ClusterLoadAssignment, Resource::new(name, &cla, true));
        }
    }
    out
}

pub(super) fn ads() -> xcore::ConfigSource {
    xcore::ConfigSource {
        resource_api_version: xcore::ApiVersion::V3 as i32,
        config_source_specifier: Some(xcore::config_source::ConfigSourceSpecifier::Ads(
            xcore::AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

fn any<M: prost::Name>(m: &M) -> Any {
    Any { type_url: M::type_url(), value: m.encode_to_vec() }
}

/// A Service's endpoints as its policy's `protocols` allows (all of them without `protocols`).
fn endpoints_for(policy: Option<&Policy>, endpoints: &[BackendEndpoint]) -> Vec<BackendEndpoint> {
    let Some(p) = policy.and_then(|p| p.protocols.as_ref()) else { return endpoints.to_vec() };
    endpoints.iter().filter(|ep| if ep.address.is_ipv4() { p.ipv4 } else { p.ipv6 }).cloned().collect()
}

fn http_connection_manager(cfg: &ProxyConfig) -> xhcm::HttpConnectionManager {
    let mut hcm = xhcm::HttpConnectionManager {
        stat_prefix: cfg.name.clone(),
        codec_type: xhcm::http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(xhcm::http_connection_manager::RouteSpecifier::Rds(xhcm::Rds {
            config_source: Some(ads()),
            route_config_name: cfg.name.clone(),
        })),
        http_filters: vec![xhcm::HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(xhcm::http_filter::ConfigType::TypedConfig(any(&Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    };
    if let Some(p) = &cfg.policies.infra {
        crate::operator::envoy::apply_to_listener(p, &mut hcm);
    }
    hcm
}

/// The listener proxyless gRPC clients receive when they dial `xds:///NAME`.
fn api_listener(cfg: &ProxyConfig) -> xlistener::Listener {
    xlistener::Listener {
        name: cfg.name.clone(),
        api_listener: Some(xlistener::ApiListener { api_listener: Some(any(&http_connection_manager(cfg))) }),
        ..Default::default()
    }
}

/// Envoy's socket listener: HTTP/2 (gRPC) in, the same routes as the proxyless clients.
fn socket_listener(cfg: &ProxyConfig) -> xlistener::Listener {
    xlistener::Listener {
        name: envoy_listener_name(cfg),
        address: Some(socket_address(SocketAddr::from(([0, 0, 0, 0], cfg.listener_port)))),
        filter_chains: vec![xlistener::FilterChain {
            filters: vec![xlistener::Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(xlistener::filter::ConfigType::TypedConfig(any(&http_connection_manager(cfg)))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn socket_address(addr: SocketAddr) -> xcore::Address {
    xcore::Address {
        address: Some(xcore::address::Address::SocketAddress(xcore::SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(xcore::socket_address::PortSpecifier::PortValue(u32::from(addr.port()))),
            ..Default::default()
        })),
    }
}

/// `plannerip` routes first (one per discovered endpoint, exact match, pinned to that endpoint's own
/// cluster), then the weighted default route. An unknown `plannerip` value matches no header route
/// and falls through to the weighted route: no address is ever taken from a header.
fn route_configuration(cfg: &ProxyConfig) -> xroute::RouteConfiguration {
    let mut routes = Vec::new();
    for svc in &cfg.services {
        let policy = cfg.policies.service(&svc.cluster_name());
        for ep in endpoints_for(policy, &svc.endpoints).iter().filter(|ep| can_serve(ep)) {
            routes.push(xroute::Route {
                name: format!("plannerip {}", ep.address),
                r#match: Some(xroute::RouteMatch {
                    path_specifier: Some(xroute::route_match::PathSpecifier::Prefix("/".into())),
                    headers: vec![xroute::HeaderMatcher {
                        name: PLANNERIP_HEADER.into(),
                        header_match_specifier: Some(xroute::header_matcher::HeaderMatchSpecifier::StringMatch(
                            xmatcher::StringMatcher {
                                match_pattern: Some(xmatcher::string_matcher::MatchPattern::Exact(
                                    ep.address.to_string(),
                                )),
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                action: Some(route_to(
                    xroute::route_action::ClusterSpecifier::Cluster(endpoint_cluster_name(svc, ep.address)),
                    policy,
                )),
                request_headers_to_add: policy
                    .map(|p| crate::operator::envoy::linkerd_headers(p, &svc.authority()))
                    .unwrap_or_default(),
                ..Default::default()
            });
        }
    }
    let weighted = weighted_clusters(cfg);
    // No backend with a non-zero weight: no default route (Envoy answers 404, gRPC fails the call)
    // rather than a weighted route whose weights sum to 0, which every client rejects.
    if !weighted.is_empty() {
        routes.push(xroute::Route {
            name: "weighted".into(),
            r#match: Some(xroute::RouteMatch {
                path_specifier: Some(xroute::route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            action: Some(route_to(
                xroute::route_action::ClusterSpecifier::WeightedClusters(xroute::WeightedCluster {
                    clusters: weighted,
                    ..Default::default()
                }),
                // One route spans every strategy: its retries and hashing come from the
                // TrafficInfra-wide policy.
                cfg.policies.infra.as_ref(),
            )),
            ..Default::default()
        });
    }
    let mut rc = xroute::RouteConfiguration {
        name: cfg.name.clone(),
        virtual_hosts: vec![xroute::VirtualHost {
            name: cfg.name.clone(),
            domains: vec!["*".into()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    };
    if let Some(p) = &cfg.policies.infra {
        crate::operator::envoy::apply_to_route_config(p, &mut rc);
    }
    rc
}

fn route_to(spec: xroute::route_action::ClusterSpecifier, policy: Option<&Policy>) -> xroute::route::Action {
    let mut action = xroute::RouteAction {
        cluster_specifier: Some(spec),
        // Streams to planners may be long; Envoy's default 15 s would cut them.
        timeout: Some(Duration { seconds: 0, nanos: 0 }),
        ..Default::default()
    };
    if let Some(p) = policy {
        crate::operator::envoy::apply_to_route(p, &mut action);
    }
    xroute::route::Action::Route(action)
}

/// The total the weights of one route are scaled down to when exact scaling would exceed
/// `u32::MAX` (which Envoy and grpcio refuse). Far enough below it that rounding up (an entry above 0
/// never becomes 0) cannot cross it.
pub const NORMALISED_WEIGHT_TOTAL: u64 = 1_000_000_000;

/// One entry per service of a strategy with a non-zero weight. When a strategy has several
/// services they share its weight equally (weights are scaled by the least common multiple of the
/// service counts so that they stay integers). Zero-weight entries are omitted. When the exact
/// total would exceed `u32::MAX`, every entry is scaled down proportionally to a total of about
/// [`NORMALISED_WEIGHT_TOTAL`] (each share off by less than one part in 10^7; an entry above 0
/// stays above 0).
pub fn weighted_clusters(cfg: &ProxyConfig) -> Vec<xroute::weighted_cluster::ClusterWeight> {
    let mut per_strategy: BTreeMap<&str, Vec<&ServiceBackend>> = BTreeMap::new();
    for svc in &cfg.services {
        per_strategy.entry(svc.strategy.as_str()).or_default().push(svc);
    }
    let exact = exact_weight_total(cfg) <= u64::from(u32::MAX);
    let scale =
        if exact { per_strategy.values().map(|v| v.len() as u64).fold(1, |a, b| lcm(a, b).unwrap_or(1)) } else { 1 };
    let sum: u64 = per_strategy.keys().map(|s| u64::from(cfg.strategies.get(*s).copied().unwrap_or(0))).sum();
    let mut out = Vec::new();
    for (strategy, services) in per_strategy {
        let weight = u64::from(cfg.strategies.get(strategy).copied().unwrap_or(0));
        if weight == 0 {
            continue;
        }
        let n = services.len() as u64;
        let each = if exact {
            weight * scale / n
        } else {
            // weight / (n · sum) of the route, computed without the LCM.
            let share = u128::from(weight) * u128::from(NORMALISED_WEIGHT_TOTAL) / (u128::from(n) * u128::from(sum));
            u64::try_from(share).unwrap_or(NORMALISED_WEIGHT_TOTAL).max(1)
        };
        for svc in services {
            out.push(xroute::weighted_cluster::ClusterWeight {
                name: svc.cluster_name(),
                weight: Some(UInt32Value { value: u32::try_from(each).unwrap_or(u32::MAX) }),
                // Per weighted cluster: each Service's own authority.
                request_headers_to_add: cfg
                    .policies
                    .service(&svc.cluster_name())
                    .map(|p| crate::operator::envoy::linkerd_headers(p, &svc.authority()))
                    .unwrap_or_default(),
                ..Default::default()
            });
        }
    }
    out
}

/// The sum of the weights [`weighted_clusters`] would emit with exact integer scaling (the LCM of
/// the service counts times the sum of the strategy weights that have services). Envoy and grpcio
/// refuse a route whose total exceeds `u32::MAX`.
pub fn exact_weight_total(cfg: &ProxyConfig) -> u64 {
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for svc in &cfg.services {
        *counts.entry(svc.strategy.as_str()).or_default() += 1;
    }
    let scale = counts.values().try_fold(1, |a, b| lcm(a, *b));
    let sum: u64 = counts.keys().map(|s| u64::from(cfg.strategies.get(*s).copied().unwrap_or(0))).sum();
    scale.map_or(u64::MAX, |scale| scale.saturating_mul(sum))
}

/// `None` when the result does not fit in a u64.
fn lcm(a: u64, b: u64) -> Option<u64> {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    (a / gcd(a, b)).checked_mul(b)
}

/// HTTP/2 to the backends (`envoy.extensions.upstreams.http.v3.HttpProtocolOptions`; xds-api does not
/// generate that message, so its two fields are declared here).
#[derive(Clone, PartialEq, prost::Message)]
struct UpstreamHttpProtocolOptions {
    #[prost(message, optional, tag = "3")]
    explicit_http_config: Option<ExplicitHttpConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ExplicitHttpConfig {
    #[prost(message, optional, tag = "2")]
    http2_protocol_options: Option<xcore::Http2ProtocolOptions>,
}

const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

fn eds_cluster(name: &str, policy: Option<&Policy>) -> xcluster::Cluster {
    let h2 = UpstreamHttpProtocolOptions {
        explicit_http_config: Some(ExplicitHttpConfig { http2_protocol_options: Some(Default::default()) }),
    };
    let mut cluster = xcluster::Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(xcluster::cluster::ClusterDiscoveryType::Type(
            xcluster::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(xcluster::cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: name.to_string(),
        }),
        lb_policy: xcluster::cluster::LbPolicy::RoundRobin as i32,
        connect_timeout: Some(Duration { seconds: 1, nanos: 0 }),
        typed_extension_protocol_options: [(
            HTTP_PROTOCOL_OPTIONS.to_string(),
            Any { type_url: format!("type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}"), value: h2.encode_to_vec() },
        )]
        .into(),
        ..Default::default()
    };
    if let Some(p) = policy {
        crate::operator::envoy::apply_to_cluster(p, &mut cluster);
    }
    cluster
}

/// One locality per zone, each with a `load_balancing_weight` (grpcio ignores a locality without
/// one) equal to its number of endpoints.
fn load_assignment(cluster: &str, endpoints: &[BackendEndpoint]) -> xendpoint::ClusterLoadAssignment {
    let mut by_zone: BTreeMap<&str, Vec<&BackendEndpoint>> = BTreeMap::new();
    for ep in endpoints {
        by_zone.entry(ep.zone.as_deref().unwrap_or("")).or_default().push(ep);
    }
    let localities = by_zone
        .into_iter()
        .map(|(zone, eps)| xendpoint::LocalityLbEndpoints {
            locality: Some(xcore::Locality { zone: zone.to_string(), ..Default::default() }),
            load_balancing_weight: Some(UInt32Value { value: u32::try_from(eps.len()).unwrap_or(u32::MAX) }),
            lb_endpoints: eps
                .into_iter()
                .map(|ep| xendpoint::LbEndpoint {
                    health_status: health(ep.health) as i32,
                    load_balancing_weight: Some(UInt32Value { value: 1 }),
                    host_identifier: Some(xendpoint::lb_endpoint::HostIdentifier::Endpoint(xendpoint::Endpoint {
                        address: Some(socket_address(ep.address)),
                        ..Default::default()
                    })),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    xendpoint::ClusterLoadAssignment { cluster_name: cluster.to_string(), endpoints: localities, ..Default::default() }
}

pub(super) fn health(h: EndpointHealth) -> xcore::HealthStatus {
    match h {
        EndpointHealth::Healthy => xcore::HealthStatus::Healthy,
        EndpointHealth::Draining => xcore::HealthStatus::Draining,
        EndpointHealth::Unhealthy => xcore::HealthStatus::Unhealthy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden files: `testdata/xds/*.in.yaml` (a ProxyConfig) → `*.out.yaml` (the resources as
    /// canonical protobuf JSON, in YAML). `WEIR_UPDATE_GOLDEN=1` rewrites the outputs.
    #[test]
    fn golden() {
        let dir = crate::golden::testdata("xds");
        let mut seen = 0;
        let mut entries: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for input in entries {
            let Some(stem) = input.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".in.yaml")) else {
                continue;
            };
            seen += 1;
            let cfg: ProxyConfig = serde_yaml::from_str(&std::fs::read_to_string(&input).unwrap()).unwrap();
            let got = serde_yaml::to_string(&translate(&cfg).to_json()).unwrap();
            crate::golden::assert_golden(&format!("xds/{stem}.out.yaml"), &got);
        }
        assert!(seen > 0, "no golden inputs in {}", dir.display());
    }

    fn cfg(weights: &[(&str, u32)], services: &[(&str, &str)]) -> ProxyConfig {
        ProxyConfig {
            policies: Default::default(),
            name: "shop".into(),
            listener_port: 8080,
            strategies: weights.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            services: services
                .iter()
                .map(|(name, strategy)| ServiceBackend {
                    namespace: "default".into(),
                    name: name.to_string(),
                    strategy: strategy.to_string(),
                    endpoints: vec![],
                    port: None,
                })
                .collect(),
        }
    }

    fn weights(cfg: &ProxyConfig) -> Vec<(String, u32)> {
        weighted_clusters(cfg).into_iter().map(|c| (c.name, c.weight.unwrap().value)).collect()
    }

    #[test]
    fn zero_weights_are_omitted_and_shared_strategies_split_evenly() {
        let c = cfg(&[("blue", 100), ("green", 0)], &[("a-blue", "blue"), ("b-green", "green")]);
        assert_eq!(weights(&c), vec![("default/a-blue".into(), 100)]);
        let c = cfg(&[("blue", 50), ("green", 50)], &[("a-blue", "blue"), ("b-blue", "blue"), ("c-green", "green")]);
        assert_eq!(
            weights(&c),
            vec![("default/a-blue".into(), 50), ("default/b-blue".into(), 50), ("default/c-green".into(), 100)]
        );
        let c = cfg(&[("blue", 0)], &[("a-blue", "blue"), ("x-canary", "canary")]);
        assert!(weights(&c).is_empty());
    }

    #[test]
    fn weight_totals_never_exceed_u32_and_keep_the_split() {
        // The audit's case: 1,000,000 on each of two strategies with 47 and 48 services (LCM 2256).
        let names: Vec<(String, &str)> = (0..47)
            .map(|i| (format!("s{i:02}-blue"), "blue"))
            .chain((0..48).map(|i| (format!("s{i:02}-green"), "green")))
            .collect();
        let services: Vec<(&str, &str)> = names.iter().map(|(n, s)| (n.as_str(), *s)).collect();
        let c = cfg(&[("blue", 1_000_000), ("green", 1_000_000)], &services);
        assert!(exact_weight_total(&c) > u64::from(u32::MAX), "the case overflows without normalising");
        let w = weights(&c);
        assert_eq!(w.len(), 95);
        let total: u64 = w.iter().map(|(_, v)| u64::from(*v)).sum();
        assert!(total <= u64::from(u32::MAX), "total {total}");
        let blue: u64 = w.iter().filter(|(n, _)| n.ends_with("-blue")).map(|(_, v)| u64::from(*v)).sum();
        let share = blue as f64 / total as f64;
        assert!((share - 0.5).abs() < 1e-6, "blue share {share}");
        // Every service of a strategy still gets the same weight, and none drops to 0.
        assert!(w.iter().filter(|(n, _)| n.ends_with("-blue")).all(|(_, v)| *v == w[0].1 && *v > 0));
        // A tiny weight next to a huge one keeps a weight above 0.
        let c = cfg(&[("blue", 1_000_000), ("green", 1)], &services);
        assert!(weights(&c).iter().all(|(_, v)| *v > 0));
        // So many strategies that the LCM of their service counts overflows a u64.
        let names: Vec<(String, String)> =
            (1..=45).flat_map(|k| (0..k).map(move |i| (format!("s{i}-k{k}"), format!("k{k}")))).collect();
        let services: Vec<(&str, &str)> = names.iter().map(|(n, s)| (n.as_str(), s.as_str())).collect();
        let strategies: Vec<(String, u32)> = (1..=45).map(|k| (format!("k{k}"), 10)).collect();
        let strategies: Vec<(&str, u32)> = strategies.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let c = cfg(&strategies, &services);
        assert_eq!(exact_weight_total(&c), u64::MAX);
        let w = weights(&c);
        let total: u64 = w.iter().map(|(_, v)| u64::from(*v)).sum();
        assert!(total <= u64::from(u32::MAX) && w.iter().all(|(_, v)| *v > 0), "total {total}");
    }

    #[test]
    fn plannerip_pins_only_endpoints_that_can_serve_and_never_panic() {
        let mut c = cfg(&[("blue", 100), ("green", 0)], &[("a-blue", "blue"), ("b-green", "green")]);
        let ep = |ip: &str, health| BackendEndpoint { address: ip.parse().unwrap(), zone: None, health };
        c.services[0].endpoints =
            vec![ep("10.0.0.1:9000", EndpointHealth::Healthy), ep("10.0.0.2:9000", EndpointHealth::Unhealthy)];
        c.services[1].endpoints = vec![ep("10.0.0.3:9000", EndpointHealth::Draining)];
        let r = translate(&c);
        let routes = route_configuration(&c);
        let pins: Vec<&str> = routes.virtual_hosts[0].routes.iter().map(|r| r.name.as_str()).collect();
        // The green endpoint at weight 0, draining but serving, keeps its pin.
        assert_eq!(pins, ["plannerip 10.0.0.1:9000", "plannerip 10.0.0.3:9000", "weighted"]);
        let clusters: Vec<&str> = r.of(ResourceType::Cluster).map(|c| c.name.as_str()).collect();
        assert!(!clusters.iter().any(|n| n.contains("10.0.0.2")), "{clusters:?}");
        for name in ["default/a-blue/10.0.0.1:9000", "default/b-green/10.0.0.3:9000"] {
            let res = r.of(ResourceType::Cluster).find(|c| c.name == name).unwrap();
            let cluster = xcluster::Cluster::decode(res.body.value.as_slice()).unwrap();
            let threshold = cluster.common_lb_config.and_then(|l| l.healthy_panic_threshold).map(|p| p.value);
            assert_eq!(threshold, Some(0.0), "{name}");
        }
    }

    #[test]
    fn api_listener_is_not_offered_to_wildcard_subscribers() {
        let r = translate(&cfg(&[("blue", 1)], &[]));
        let listeners: Vec<_> = r.of(ResourceType::Listener).map(|l| (l.name.as_str(), l.wildcard)).collect();
        assert_eq!(listeners, vec![("shop", false), ("shop-envoy", true)]);
    }
}
