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
use crate::model::Snapshot;

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
/// removed through the admin API: `namespace/name` → where it came from.
pub fn selected_services(
    snapshot: &Snapshot,
    settings: &XdsSettings,
    state: &TrafficState,
) -> BTreeMap<String, ServiceSource> {
    let mut out = BTreeMap::new();
    for s in &settings.services {
        out.entry(settings.qualify(s)).or_insert(ServiceSource::Flag);
    }
    if let Some(ti) = traffic_infra(snapshot, settings) {
        for s in &ti.spec.xds.discovery.services {
            out.entry(settings.qualify(s)).or_insert(ServiceSource::TrafficInfra);
        }
    }
    for svc in &snapshot.services {
        if svc.labels().get(TRAFFIC_INFRA_LABEL) == Some(&settings.name) {
            let key = format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any());
            out.entry(key).or_insert(ServiceSource::Label);
        }
    }
    for s in &state.registered {
        out.entry(s.clone()).or_insert(ServiceSource::Api);
    }
    out.retain(|k, _| !state.deregistered.contains(k));
    out
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
        XdsSettings { name: "shop".into(), namespace: "default".into(), services: vec!["shop-planner-blue".into()] }
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
}
