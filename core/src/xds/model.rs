//! The xDS side of the intermediate representation: one traffic configuration ([`ProxyConfig`]),
//! derived purely from a provider snapshot, the shared [`TrafficState`] and the static settings.
//! No I/O, no clocks.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube_core::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::crd::TrafficDefaults;
use crate::ir::{InputKind, Refusal};
use crate::model::{ObjectRef, Snapshot};

/// Label that enrols a Service into the traffic configuration of that name.
pub const TRAFFIC_INFRA_LABEL: &str = "weir.dev/traffic-infra";
/// Label that names a Service's strategy (else the text after the last `-` of its name).
pub const STRATEGY_LABEL: &str = "weir.dev/strategy";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Everything the xDS translator needs for one traffic configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyConfig {
    /// The traffic configuration name: clients dial `xds:///NAME`.
    pub name: String,
    /// Port of the socket listener served to Envoy.
    pub listener_port: u16,
    /// Strategy weights (`S_k`), as set through the admin API.
    pub strategies: BTreeMap<String, u32>,
    /// Registered services, sorted by namespace/name.
    pub services: Vec<ServiceBackend>,
    /// Accepted BackendTrafficPolicies (`operator::policy`), applied by the translator.
    #[serde(skip)]
    pub policies: crate::operator::policy::ProxyPolicies,
}

/// A registered planner service and the endpoints discovered for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceBackend {
    pub namespace: String,
    pub name: String,
    pub strategy: String,
    /// Sorted by address, without duplicates.
    #[serde(default)]
    pub endpoints: Vec<BackendEndpoint>,
    /// The Service's port (named `grpc`, else its first): the authority Linkerd routes by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl ServiceBackend {
    /// The Envoy cluster name of the whole service.
    pub fn cluster_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The Service's cluster-local authority, `name.namespace.svc.cluster.local[:port]`.
    pub fn authority(&self) -> String {
        let host = format!("{}.{}.svc.cluster.local", self.name, self.namespace);
        match self.port {
            Some(port) => format!("{host}:{port}"),
            None => host,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BackendEndpoint {
    pub address: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    pub health: EndpointHealth,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointHealth {
    Healthy,
    Draining,
    Unhealthy,
}

/// The state shared by every replica (see [`super::state`]): what the admin API changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficState {
    /// Bumped by every write; writes are compare-and-swap on it.
    pub revision: u64,
    pub weights: BTreeMap<String, u32>,
    /// Services added with `PUT /services` (`namespace/name`).
    #[serde(default)]
    pub registered: BTreeSet<String>,
    /// Services removed with `DELETE /services` even though a flag or a label selects them.
    #[serde(default)]
    pub deregistered: BTreeSet<String>,
}

impl TrafficState {
    pub fn initial(defaults: &TrafficDefaults) -> Self {
        let weights =
            BTreeMap::from([("blue".to_string(), defaults.blue_weight), ("green".to_string(), defaults.green_weight)]);
        Self { revision: 0, weights, ..Self::default() }
    }
}

/// Static settings of one `weir xds` process.
#[derive(Debug, Clone, Default)]
pub struct XdsSettings {
    pub name: String,
    pub namespace: String,
    /// `--service` flags: `name` (in `namespace`) or `namespace/name`.
    pub services: Vec<String>,
    /// The namespaces whose Services this process sees: `None` for every one (the file provider, or
    /// a cluster-scope watch); with `--provider kubernetes`, its own and each `--watch-namespace`.
    /// A namespace the TrafficInfra allows but that is not seen is refused on the TrafficInfra
    /// ([`REASON_ALLOWED_NAMESPACE_NOT_WATCHED`]) rather than left silently empty.
    pub watched_namespaces: Option<BTreeSet<String>>,
}

impl XdsSettings {
    /// `namespace/name` for a service reference given as `name` or `namespace/name`.
    pub fn qualify(&self, service: &str) -> String {
        if service.contains('/') {
            service.to_string()
        } else {
            format!("{}/{}", self.namespace, service)
        }
    }
}

/// The strategy of a Service: its `weir.dev/strategy` label, else the text after its last `-`.
pub fn strategy_of(service: &Service) -> String {
    if let Some(s) = service.labels().get(STRATEGY_LABEL).filter(|s| !s.is_empty()) {
        return s.clone();
    }
    strategy_from_name(&service.name_any())
}

pub fn strategy_from_name(name: &str) -> String {
    name.rsplit('-').next().unwrap_or(name).to_string()
}

/// Where the services of this configuration come from, for `GET /services`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceSource {
    Flag,
    TrafficInfra,
    Label,
    Api,
}

/// Every service selected by flags, the TrafficInfra, labels and the admin API, minus the ones
/// removed through the admin API and those outside the allowed namespaces ([`namespace_allowed`]):
/// `namespace/name` → where it came from.
pub fn selected_services(
    snapshot: &Snapshot,
    settings: &XdsSettings,
    state: &TrafficState,
) -> BTreeMap<String, ServiceSource> {
    select(snapshot, settings, state).selected
}

/// The services [`selected_services`] leaves out because of their namespace, one refusal each (on
/// the Service, `kind` `namespace`), after one on the TrafficInfra per allowed namespace this
/// process does not watch.
pub fn refused_services(snapshot: &Snapshot, settings: &XdsSettings, state: &TrafficState) -> Vec<Refusal> {
    select(snapshot, settings, state).refused
}

struct Selection {
    selected: BTreeMap<String, ServiceSource>,
    refused: Vec<Refusal>,
}

fn select(snapshot: &Snapshot, settings: &XdsSettings, state: &TrafficState) -> Selection {
    let mut all = BTreeMap::new();
    for s in &settings.services {
        all.entry(settings.qualify(s)).or_insert(ServiceSource::Flag);
    }
    if let Some(ti) = traffic_infra(snapshot, settings) {
        for s in &ti.spec.xds.discovery.services {
            all.entry(settings.qualify(s)).or_insert(ServiceSource::TrafficInfra);
        }
    }
    for svc in &snapshot.services {
        if svc.labels().get(TRAFFIC_INFRA_LABEL) == Some(&settings.name) {
            let key = format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any());
            all.entry(key).or_insert(ServiceSource::Label);
        }
    }
    for s in &state.registered {
        all.entry(s.clone()).or_insert(ServiceSource::Api);
    }
    all.retain(|k, _| !state.deregistered.contains(k));
    let mut out = Selection { selected: BTreeMap::new(), refused: unwatched_allowed_namespaces(snapshot, settings) };
    for (key, source) in all {
        let (namespace, name) = key.split_once('/').unwrap_or(("", key.as_str()));
        if namespace_allowed(snapshot, settings, namespace) {
            out.selected.insert(key, source);
        } else {
            out.refused.push(Refusal {
                object: ObjectRef::new("Service", namespace, name),
                kind: InputKind::Namespace,
                reason: REASON_NAMESPACE_NOT_ALLOWED.into(),
                message: format!(
                    "{}; it gets no traffic (selected {})",
                    namespace_refusal(snapshot, settings, &key),
                    source.describe()
                ),
            });
        }
    }
    out
}

/// The Event reason of a planner Service refused for its namespace.
pub const REASON_NAMESPACE_NOT_ALLOWED: &str = "ServiceNamespaceNotAllowed";
/// The reason of a namespace `spec.xds.discovery.allowedNamespaces` lists but this process does not
/// watch ([`XdsSettings::watched_namespaces`]): its Services cannot be seen.
pub const REASON_ALLOWED_NAMESPACE_NOT_WATCHED: &str = "AllowedNamespaceNotWatched";

/// One refusal on the TrafficInfra per allowed namespace this process does not watch (`*` when it
/// watches a list of namespaces): without it, an allowed namespace would look merely empty.
fn unwatched_allowed_namespaces(snapshot: &Snapshot, settings: &XdsSettings) -> Vec<Refusal> {
    let (Some(watched), Some(ti)) = (&settings.watched_namespaces, traffic_infra(snapshot, settings)) else {
        return Vec::new();
    };
    let listed: Vec<&str> = watched.iter().map(String::as_str).collect();
    ti.spec
        .xds
        .discovery
        .allowed_namespaces
        .iter()
        .filter(|n| !watched.contains(*n))
        .map(|n| Refusal {
            object: ObjectRef::new("TrafficInfra", &settings.namespace, &settings.name),
            kind: InputKind::Namespace,
            reason: REASON_ALLOWED_NAMESPACE_NOT_WATCHED.into(),
            message: if n == "*" {
                format!(
                    "spec.xds.discovery.allowedNamespaces allows every namespace (\"*\"), but this weir xds watches \
                     Services only in {}; start it with --watch-namespace '*' (and a ClusterRole to list and watch \
                     services and endpointslices) to see the others",
                    listed.join(", ")
                )
            } else {
                format!(
                    "spec.xds.discovery.allowedNamespaces allows namespace {n:?}, but this weir xds watches Services \
                     only in {}; none of {n:?} is seen: start it with --watch-namespace {n} and grant its \
                     ServiceAccount list and watch of services and endpointslices in {n:?}",
                    listed.join(", ")
                )
            },
        })
        .collect()
}

/// Whether traffic configuration `settings` may route to a Service in `namespace`: its own
/// namespace, or one its TrafficInfra lists in `spec.xds.discovery.allowedNamespaces` (`*`: any).
pub fn namespace_allowed(snapshot: &Snapshot, settings: &XdsSettings, namespace: &str) -> bool {
    namespace == settings.namespace
        || traffic_infra(snapshot, settings)
            .is_some_and(|ti| ti.spec.xds.discovery.allowed_namespaces.iter().any(|n| n == "*" || n == namespace))
}

/// Why `namespace/name` may not be routed to (the admin API's 400 and the refusal say the same).
pub fn namespace_refusal(snapshot: &Snapshot, settings: &XdsSettings, service: &str) -> String {
    let namespace = service.split_once('/').map_or("", |(ns, _)| ns);
    let mut allowed = vec![settings.namespace.clone()];
    if let Some(ti) = traffic_infra(snapshot, settings) {
        allowed.extend(ti.spec.xds.discovery.allowed_namespaces.iter().cloned());
    }
    format!(
        "Service {service} is in namespace {namespace:?}, outside the namespaces traffic configuration {}/{} may route \
         to ({}); list the namespace in the TrafficInfra's spec.xds.discovery.allowedNamespaces to allow it",
        settings.namespace,
        settings.name,
        allowed.join(", ")
    )
}

impl ServiceSource {
    fn describe(self) -> &'static str {
        match self {
            ServiceSource::Flag => "by a --service flag",
            ServiceSource::TrafficInfra => "by spec.xds.discovery.services",
            ServiceSource::Label => "by its weir.dev/traffic-infra label",
            ServiceSource::Api => "through the admin API",
        }
    }
}

/// The TrafficInfra named like this configuration, if the snapshot has one.
pub fn traffic_infra<'a>(snapshot: &'a Snapshot, settings: &XdsSettings) -> Option<&'a crate::crd::TrafficInfra> {
    snapshot
        .traffic_infras
        .iter()
        .find(|t| t.name_any() == settings.name && t.namespace().unwrap_or_default() == settings.namespace)
}

pub fn find_service<'a>(snapshot: &'a Snapshot, qualified: &str) -> Option<&'a Service> {
    let (ns, name) = qualified.split_once('/')?;
    snapshot.services.iter().find(|s| s.name_any() == name && s.namespace().unwrap_or_default() == ns)
}

/// Builds the configuration to serve. Selected services that do not exist (yet) are skipped; their
/// strategy keeps its weight, so its share fails rather than silently moving elsewhere.
pub fn build(snapshot: &Snapshot, settings: &XdsSettings, state: &TrafficState) -> ProxyConfig {
    let listener_port =
        traffic_infra(snapshot, settings).and_then(|t| u16::try_from(t.spec.envoy.ports.grpc).ok()).unwrap_or(8080);
    let services = selected_services(snapshot, settings, state)
        .keys()
        .filter_map(|key| find_service(snapshot, key))
        .map(|svc| {
            let namespace = svc.namespace().unwrap_or_default();
            let name = svc.name_any();
            let endpoints = endpoints_of(snapshot, &namespace, &name);
            let ports = svc.spec.as_ref().and_then(|s| s.ports.as_ref());
            let port = ports
                .and_then(|ps| ps.iter().find(|p| p.name.as_deref() == Some("grpc")).or_else(|| ps.first()))
                .and_then(|p| u16::try_from(p.port).ok());
            ServiceBackend { namespace, name, strategy: strategy_of(svc), endpoints, port }
        })
        .collect();
    let policies = crate::operator::policy::for_proxy(snapshot, &settings.namespace, &settings.name);
    ProxyConfig { name: settings.name.clone(), listener_port, strategies: state.weights.clone(), services, policies }
}

/// The endpoints of a Service from its EndpointSlices. A slice's port is the one named `grpc`, else
/// its first port; duplicates across slices are merged (the healthiest state wins).
pub fn endpoints_of(snapshot: &Snapshot, namespace: &str, service: &str) -> Vec<BackendEndpoint> {
    let mut by_addr: BTreeMap<SocketAddr, BackendEndpoint> = BTreeMap::new();
    let slices = snapshot.endpoint_slices.iter().filter(|s| {
        s.namespace().unwrap_or_default() == namespace
            && s.labels().get(SERVICE_NAME_LABEL).map(String::as_str) == Some(service)
    });
    for slice in slices {
        let Some(port) = slice_port(slice) else { continue };
        for ep in slice.endpoints.iter().flatten() {
            let cond = ep.conditions.as_ref();
            // Kubernetes: an absent `ready` means ready.
            let ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
            // `serving` is `ready` regardless of terminating; absent, it follows `ready`.
            let serving = cond.and_then(|c| c.serving).unwrap_or(ready);
            let health = if terminating {
                if serving {
                    EndpointHealth::Draining
                } else {
                    EndpointHealth::Unhealthy
                }
            } else if ready {
                EndpointHealth::Healthy
            } else {
                EndpointHealth::Unhealthy
            };
            for addr in &ep.addresses {
                let Ok(ip) = addr.parse::<IpAddr>() else { continue };
                let address = SocketAddr::new(ip, port);
                let new = BackendEndpoint { address, zone: ep.zone.clone(), health };
                by_addr
                    .entry(address)
                    .and_modify(|old| {
                        if new.health < old.health {
                            *old = new.clone();
                        }
                    })
                    .or_insert(new);
            }
        }
    }
    by_addr.into_values().collect()
}

fn slice_port(slice: &EndpointSlice) -> Option<u16> {
    let ports = slice.ports.as_ref()?;
    let named = ports.iter().find(|p| p.name.as_deref() == Some("grpc"));
    let port = named.or_else(|| ports.first())?.port?;
    u16::try_from(port).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn mk_service(ns: &str, name: &str, labels: &[(&str, &str)]) -> Service {
        Service {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn mk_slice(ns: &str, svc: &str, port: i32, eps: &[(&str, Option<bool>, Option<bool>)]) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(format!("{svc}-abc")),
                labels: Some([(SERVICE_NAME_LABEL.to_string(), svc.to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            ports: Some(vec![EndpointPort { port: Some(port), ..Default::default() }]),
            endpoints: Some(
                eps.iter()
                    .map(|(ip, ready, terminating)| Endpoint {
                        addresses: vec![ip.to_string()],
                        conditions: Some(EndpointConditions {
                            ready: *ready,
                            terminating: *terminating,
                            serving: None,
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
        }
    }

    fn settings() -> XdsSettings {
        XdsSettings {
            name: "shop".into(),
            namespace: "default".into(),
            services: vec!["shop-planner-blue".into()],
            ..Default::default()
        }
    }

    #[test]
    fn strategy_is_label_else_suffix() {
        assert_eq!(strategy_of(&mk_service("d", "shop-planner-blue", &[])), "blue");
        assert_eq!(strategy_of(&mk_service("d", "planner", &[])), "planner");
        assert_eq!(strategy_of(&mk_service("d", "shop-planner-blue", &[(STRATEGY_LABEL, "green")])), "green");
    }

    #[test]
    fn endpoint_conditions_map_to_health() {
        let mut snap = Snapshot::default();
        snap.endpoint_slices.push(mk_slice(
            "default",
            "svc",
            9000,
            &[
                ("10.0.0.1", Some(true), None),
                ("10.0.0.2", Some(false), Some(true)),
                ("10.0.0.3", Some(false), None),
                ("10.0.0.4", None, None),
            ],
        ));
        let eps = endpoints_of(&snap, "default", "svc");
        let health: Vec<_> = eps.iter().map(|e| (e.address.to_string(), e.health)).collect();
        assert_eq!(
            health,
            vec![
                ("10.0.0.1:9000".into(), EndpointHealth::Healthy),
                // Terminating and not serving: nothing may reach it, not even a pin.
                ("10.0.0.2:9000".into(), EndpointHealth::Unhealthy),
                ("10.0.0.3:9000".into(), EndpointHealth::Unhealthy),
                ("10.0.0.4:9000".into(), EndpointHealth::Healthy),
            ]
        );
        assert!(endpoints_of(&snap, "other", "svc").is_empty());
    }

    #[test]
    fn services_come_from_flags_labels_and_api_minus_deregistered() {
        let mut snap = Snapshot::default();
        snap.services.push(mk_service("default", "shop-planner-blue", &[]));
        snap.services.push(mk_service("default", "shop-planner-green", &[(TRAFFIC_INFRA_LABEL, "shop")]));
        snap.services.push(mk_service("default", "other-green", &[(TRAFFIC_INFRA_LABEL, "other")]));
        snap.services.push(mk_service("default", "extra-canary", &[]));
        let mut state = TrafficState::initial(&TrafficDefaults::default());
        let keys = |s: &TrafficState| selected_services(&snap, &settings(), s).into_keys().collect::<Vec<_>>();
        assert_eq!(keys(&state), vec!["default/shop-planner-blue", "default/shop-planner-green"]);
        state.registered.insert("default/extra-canary".into());
        state.deregistered.insert("default/shop-planner-green".into());
        assert_eq!(keys(&state), vec!["default/extra-canary", "default/shop-planner-blue"]);
        let cfg = build(&snap, &settings(), &state);
        let strategies: Vec<_> = cfg.services.iter().map(|s| s.strategy.as_str()).collect();
        assert_eq!(strategies, vec!["canary", "blue"]);
        assert_eq!(cfg.listener_port, 8080);
    }

    #[test]
    fn services_outside_the_allowed_namespaces_are_refused() {
        let mut snap = Snapshot::default();
        snap.services.push(mk_service("default", "shop-planner-blue", &[(TRAFFIC_INFRA_LABEL, "shop")]));
        snap.services.push(mk_service("attacker", "evil-blue", &[(TRAFFIC_INFRA_LABEL, "shop")]));
        snap.services.push(mk_service("partner", "partner-green", &[]));
        let mut settings = settings();
        settings.services.push("partner/partner-green".into());
        let mut state = TrafficState::initial(&TrafficDefaults::default());
        state.registered.insert("attacker/evil-canary".into());
        let keys =
            |snap: &Snapshot, s: &TrafficState| selected_services(snap, &settings, s).into_keys().collect::<Vec<_>>();
        assert_eq!(keys(&snap, &state), vec!["default/shop-planner-blue"]);
        let refused = refused_services(&snap, &settings, &state);
        let objects: Vec<String> = refused.iter().map(|r| r.object.to_string()).collect();
        assert_eq!(
            objects,
            ["Service attacker/evil-blue", "Service attacker/evil-canary", "Service partner/partner-green"]
        );
        assert!(refused.iter().all(|r| r.kind == InputKind::Namespace && r.reason == REASON_NAMESPACE_NOT_ALLOWED));
        assert!(refused[0].message.contains("by its weir.dev/traffic-infra label"), "{}", refused[0].message);
        // The built configuration (what Envoy gets) has the allowed service only.
        let cfg = build(&snap, &settings, &state);
        assert_eq!(cfg.services.iter().map(|s| s.cluster_name()).collect::<Vec<_>>(), ["default/shop-planner-blue"]);

        // The TrafficInfra's allow-list lets a namespace in; `*` lets every one in.
        let mut ti = crate::crd::TrafficInfra::new("shop", Default::default());
        ti.metadata.namespace = Some("default".into());
        ti.spec.xds.discovery.allowed_namespaces = vec!["partner".into()];
        snap.traffic_infras.push(ti);
        assert_eq!(keys(&snap, &state), vec!["default/shop-planner-blue", "partner/partner-green"]);
        assert_eq!(refused_services(&snap, &settings, &state).len(), 2);
        snap.traffic_infras[0].spec.xds.discovery.allowed_namespaces = vec!["*".into()];
        assert_eq!(keys(&snap, &state).len(), 4);
        assert!(refused_services(&snap, &settings, &state).is_empty());
    }

    #[test]
    fn an_allowed_namespace_that_is_not_watched_is_refused_on_the_traffic_infra() {
        let mut snap = Snapshot::default();
        let mut ti = crate::crd::TrafficInfra::new("shop", Default::default());
        ti.metadata.namespace = Some("default".into());
        ti.spec.xds.discovery.allowed_namespaces = vec!["partner".into(), "other".into()];
        snap.traffic_infras.push(ti);
        let state = TrafficState::initial(&TrafficDefaults::default());
        let refused = |snap: &Snapshot, watched: Option<&[&str]>| {
            let settings = XdsSettings {
                watched_namespaces: watched.map(|w| w.iter().map(|n| n.to_string()).collect()),
                ..settings()
            };
            refused_services(snap, &settings, &state)
        };
        // Every namespace seen (the file provider, a cluster-scope watch): nothing to say.
        assert!(refused(&snap, None).is_empty());
        let r = refused(&snap, Some(&["default", "partner"]));
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].object, ObjectRef::new("TrafficInfra", "default", "shop"));
        assert_eq!((r[0].kind, r[0].reason.as_str()), (InputKind::Namespace, REASON_ALLOWED_NAMESPACE_NOT_WATCHED));
        assert!(r[0].message.contains("--watch-namespace other"), "{}", r[0].message);
        assert!(refused(&snap, Some(&["default", "other", "partner"])).is_empty());
        snap.traffic_infras[0].spec.xds.discovery.allowed_namespaces = vec!["*".into()];
        assert!(refused(&snap, Some(&["default"]))[0].message.contains("--watch-namespace '*'"));
    }
}
