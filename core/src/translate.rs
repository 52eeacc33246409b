//! Snapshot + cluster weight (+ strategy weights) → desired state. Pure: no I/O, no clocks, no
//! randomness.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use kube_core::ResourceExt;

use crate::ir::{DesiredState, DnsIntent, Factors, InputKind, Refusal, StrategyWeightsSource, Targets, TrafficLink};
use crate::model::{ObjectRef, Snapshot};
use crate::selection::{is_dns_name, normalize_host, AnnotationFilter, BindingDomain};
use crate::weight::{compose, parse_annotation_weight, DEFAULT_ANNOTATION_WEIGHT};
use crate::xds::model::{self as xds_model, EndpointHealth, TrafficState, XdsSettings};

/// The label EndpointSlices carry to name their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the translator needs besides the snapshot; all from flags.
#[derive(Debug, Clone)]
pub struct TranslateConfig {
    pub binding_domain: BindingDomain,
    pub annotation_filters: Vec<AnnotationFilter>,
    /// `dns.adevinta.com` by default; the weight annotation is `<prefix>/traffic-weight`.
    pub annotation_prefix: String,
    /// React to Ingresses with no load-balancer status, using a placeholder target.
    pub dev_mode: bool,
}

impl Default for TranslateConfig {
    fn default() -> Self {
        Self {
            binding_domain: BindingDomain::default(),
            annotation_filters: Vec::new(),
            annotation_prefix: DEFAULT_ANNOTATION_PREFIX.to_string(),
            dev_mode: false,
        }
    }
}

impl Default for BindingDomain {
    fn default() -> Self {
        "".parse().expect("the empty domain matches everything")
    }
}

pub const DEFAULT_ANNOTATION_PREFIX: &str = "dns.adevinta.com";

/// The placeholder target given in `--dev-mode` to Ingresses that have no load-balancer address.
pub const DEV_MODE_PLACEHOLDER: std::net::Ipv4Addr = std::net::Ipv4Addr::LOCALHOST;

impl TranslateConfig {
    pub fn weight_annotation(&self) -> String {
        format!("{}/traffic-weight", self.annotation_prefix)
    }

    /// Whether an Ingress is managed at all (annotation filters). Hosts are then matched against the
    /// binding domain one by one.
    pub fn selects(&self, ingress: &Ingress) -> bool {
        let annotations = ingress.metadata.annotations.as_ref();
        self.annotation_filters.iter().all(|f| f.matches(annotations))
    }
}

/// Ready endpoints per Service, from EndpointSlices.
#[derive(Debug, Default)]
pub struct EndpointIndex {
    ready: HashMap<(String, String), usize>,
    external: BTreeSet<(String, String)>,
}

impl EndpointIndex {
    pub fn build(snapshot: &Snapshot) -> Self {
        let mut index = EndpointIndex::default();
        for slice in &snapshot.endpoint_slices {
            let Some(service) = slice.labels().get(SERVICE_NAME_LABEL) else {
                continue;
            };
            let key = (slice.namespace().unwrap_or_default(), service.clone());
            // A nil `ready` means unknown, which consumers must treat as ready (EndpointConditions docs).
            let ready = slice
                .endpoints
                .iter()
                .flatten()
                .filter(|e| {
                    // A nil `ready` means unknown and counts as ready, unless the endpoint is
                    // terminating (whose `ready` the EndpointSlice controller sets to false anyway).
                    let c = e.conditions.as_ref();
                    let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
                    c.and_then(|c| c.ready).unwrap_or(!terminating)
                })
                .filter(|e| !e.addresses.is_empty())
                .count();
            *index.ready.entry(key).or_default() += ready;
        }
        for svc in &snapshot.services {
            // ExternalName Services have no endpoints by design; they are served elsewhere.
            if svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
                index.external.insert((svc.namespace().unwrap_or_default(), svc.name_any()));
            }
        }
        index
    }

    pub fn ready_endpoints(&self, namespace: &str, service: &str) -> usize {
        let key = (namespace.to_string(), service.to_string());
        if self.external.contains(&key) {
            return 1;
        }
        self.ready.get(&key).copied().unwrap_or(0)
    }
}

/// Strategy weights read from `weir xds`'s state, keyed by TrafficInfra `namespace/name` (the row
/// name `weir xds --state` writes). A TrafficInfra missing here uses its `status.trafficWeights`, else
/// its `spec.trafficDefaults`.
pub type LiveStrategyWeights = BTreeMap<String, TrafficState>;

/// The Service an Ingress points at to send traffic through a TrafficInfra's Envoy fleet.
pub fn envoy_service_name(traffic_infra: &str) -> String {
    format!("{traffic_infra}-envoy")
}

/// Translates one snapshot for a cluster weight `C` into the desired DNS state, with every
/// TrafficInfra at its `spec.trafficDefaults` strategy weights.
pub fn translate(snapshot: &Snapshot, cluster_weight: u8, cfg: &TranslateConfig) -> DesiredState {
    translate_with(snapshot, cluster_weight, cfg, &LiveStrategyWeights::new())
}

/// [`translate`], preferring the strategy weights in `live` where it has them.
pub fn translate_with(
    snapshot: &Snapshot,
    cluster_weight: u8,
    cfg: &TranslateConfig,
    live: &LiveStrategyWeights,
) -> DesiredState {
    let endpoints = EndpointIndex::build(snapshot);
    let links = traffic_links(snapshot, live);
    let annotation_key = cfg.weight_annotation();
    let mut refusals = Vec::new();

    // host → candidates, in a deterministic order (oldest Ingress first, then namespace/name).
    let mut claims: BTreeMap<String, Vec<HostClaim>> = BTreeMap::new();
    let mut ingresses: Vec<&Ingress> = snapshot.ingresses.iter().filter(|i| cfg.selects(i)).collect();
    ingresses.sort_by(|a, b| {
        let key = |i: &Ingress| {
            (i.metadata.creation_timestamp.as_ref().map(|t| t.0), i.namespace().unwrap_or_default(), i.name_any())
        };
        key(a).cmp(&key(b))
    });

    for ingress in ingresses {
        let source = ObjectRef::of(ingress);
        let namespace = ingress.namespace().unwrap_or_default();
        let deleting = ingress.metadata.deletion_timestamp.is_some();

        let annotation = match ingress.annotations().get(&annotation_key) {
            None => Some(DEFAULT_ANNOTATION_WEIGHT),
            Some(raw) => match parse_annotation_weight(raw) {
                Ok(w) => Some(w),
                Err(e) => {
                    refusals.push(Refusal {
                        object: source.clone(),
                        kind: InputKind::Annotation,
                        reason: "InvalidTrafficWeight".into(),
                        message: format!(
                            "annotation {annotation_key}={raw:?} is not a weight ({e}); keeping the published \
                             record; set it to a whole number 0-100"
                        ),
                    });
                    None
                }
            },
        };

        let targets = match load_balancer_targets(ingress, cfg.dev_mode) {
            Ok(t) => t,
            Err(message) => {
                refusals.push(Refusal {
                    object: source.clone(),
                    kind: InputKind::Target,
                    reason: "UnpublishableTarget".into(),
                    message: format!("{message}; the published records of its hosts are kept"),
                });
                // No targets: the hosts stay managed and keep what is published, rather than vanishing
                // from the desired state (which would delete their records).
                Targets::default()
            }
        };

        for (host, backends) in hosts_with_backends(ingress) {
            if !cfg.binding_domain.contains(&host) {
                continue;
            }
            if !is_dns_name(&host) {
                refusals.push(Refusal {
                    object: source.clone(),
                    kind: InputKind::Target,
                    reason: "InvalidHost".into(),
                    message: format!("host {host:?} is not a valid DNS name; fix spec.rules[].host"),
                });
                continue;
            }
            if let Some(message) = unpublished_targets_warning(&host, &targets) {
                refusals.push(Refusal {
                    object: source.clone(),
                    kind: InputKind::Target,
                    reason: "ExtraLoadBalancerAddresses".into(),
                    message,
                });
            }
            let ready: usize = backends.iter().map(|svc| endpoints.ready_endpoints(&namespace, svc)).sum();
            claims.entry(host).or_default().push(HostClaim {
                source: source.clone(),
                targets: targets.clone(),
                annotation,
                deleting,
                backends,
                ready,
            });
        }
    }

    let mut dns = Vec::with_capacity(claims.len());
    for (host, candidates) in claims {
        let (winner, others) = candidates.split_first().expect("a claim list is never empty");
        for other in others {
            if other.targets != winner.targets || other.annotation != winner.annotation {
                refusals.push(Refusal {
                    object: other.source.clone(),
                    kind: InputKind::Conflict,
                    reason: "HostConflict".into(),
                    message: format!(
                        "host {host} is published from {} (the older Ingress); this Ingress's different \
                         load-balancer or weight for it is ignored; give both the same or use one Ingress",
                        winner.source
                    ),
                });
            }
        }
        // Ready endpoints of any Ingress serving this host count: path-split Ingresses share a host.
        let ready: usize = candidates.iter().filter(|c| !c.deleting).map(|c| c.ready).sum();
        let unhealthy_reason = if winner.deleting {
            Some(format!("{} is being deleted", winner.source))
        } else if ready == 0 {
            let all: BTreeSet<&str> = candidates.iter().flat_map(|c| c.backends.iter().map(String::as_str)).collect();
            Some(if all.is_empty() {
                "the host has no backend Service".to_string()
            } else {
                format!("no ready endpoint for backend service(s) {}", all.into_iter().collect::<Vec<_>>().join(", "))
            })
        } else {
            None
        };
        // The first TrafficInfra an Ingress of this host sends traffic to (one per namespace, so in
        // practice the only one).
        let traffic = candidates
            .iter()
            .filter(|c| !c.deleting)
            .flat_map(|c| c.backends.iter().map(move |b| (c.source.namespace.clone(), b.clone())))
            .find_map(|key| links.get(&key))
            .cloned();
        // The Envoy Service may be ready while no strategy that gets traffic can serve it.
        let unhealthy_reason = unhealthy_reason.or_else(|| traffic.as_ref().and_then(unserved_strategies));
        let healthy = unhealthy_reason.is_none();
        let weight = match winner.annotation {
            _ if !healthy || cluster_weight == 0 => Some(0),
            Some(a) => Some(compose(cluster_weight, a)),
            None => None,
        };
        dns.push(DnsIntent {
            host,
            source: winner.source.clone(),
            targets: winner.targets.clone(),
            factors: Factors { cluster: cluster_weight, annotation: winner.annotation, healthy, unhealthy_reason },
            weight,
            traffic,
        });
    }
    refusals.sort();
    refusals.dedup();
    DesiredState { dns, refusals }
}

/// Every TrafficInfra's link, keyed by its Envoy Service `(namespace, {name}-envoy)`. Strategies and
/// their endpoints are discovered exactly as `weir xds` does ([`xds_model::build`]).
fn traffic_links(snapshot: &Snapshot, live: &LiveStrategyWeights) -> HashMap<(String, String), TrafficLink> {
    let mut out = HashMap::new();
    for ti in &snapshot.traffic_infras {
        let (namespace, name) = (ti.namespace().unwrap_or_default(), ti.name_any());
        let reported = ti.status.as_ref().map(|s| &s.traffic_weights).filter(|w| !w.is_empty());
        let (state, weights_from) = match (live.get(&format!("{namespace}/{name}")), reported) {
            (Some(s), _) => (s.clone(), StrategyWeightsSource::XdsState),
            (None, Some(w)) => {
                (TrafficState { weights: w.clone(), ..TrafficState::default() }, StrategyWeightsSource::Status)
            }
            (None, None) => (TrafficState::initial(&ti.spec.traffic_defaults), StrategyWeightsSource::TrafficDefaults),
        };
        let settings = XdsSettings { name: name.clone(), namespace: namespace.clone(), services: Vec::new() };
        let proxy = xds_model::build(snapshot, &settings, &state);
        let mut ready_endpoints: BTreeMap<String, usize> = state.weights.keys().map(|k| (k.clone(), 0)).collect();
        for svc in &proxy.services {
            let healthy = svc.endpoints.iter().filter(|e| e.health == EndpointHealth::Healthy).count();
            *ready_endpoints.entry(svc.strategy.clone()).or_default() += healthy;
        }
        let link = TrafficLink {
            traffic_infra: ObjectRef::of(ti),
            strategy_weights: proxy.strategies,
            weights_from,
            ready_endpoints,
        };
        out.insert((namespace, envoy_service_name(&name)), link);
    }
    out
}

/// Why a linked host cannot be served here.
///
/// With the live weights of `weir xds` (its state), the host is unhealthy when no strategy with
/// `S_k > 0` has a ready endpoint. Without them, `spec.trafficDefaults` and `status.trafficWeights` may
/// be stale (an operator who moved blue → green through the admin API and scaled blue to zero must not
/// see the host drained), so the host is unhealthy only when no strategy at all has a ready endpoint.
fn unserved_strategies(link: &TrafficLink) -> Option<String> {
    let ready = |k: &str| link.ready_endpoints.get(k).copied().unwrap_or(0);
    let ti = format!("{}/{}", link.traffic_infra.namespace, link.traffic_infra.name);
    if link.weights_from != StrategyWeightsSource::XdsState {
        if link.ready_endpoints.values().any(|n| *n > 0) {
            return None;
        }
        let all: Vec<&str> = link.ready_endpoints.keys().map(String::as_str).collect();
        return Some(format!(
            "TrafficInfra {ti}: no ready endpoint in any strategy ({})",
            if all.is_empty() { "none discovered".to_string() } else { all.join(", ") }
        ));
    }
    let weighted: Vec<(&String, &u32)> = link.strategy_weights.iter().filter(|(_, w)| **w > 0).collect();
    if weighted.iter().any(|(k, _)| ready(k) > 0) {
        return None;
    }
    Some(if weighted.is_empty() {
        format!("TrafficInfra {ti} gives no strategy a weight above 0")
    } else {
        let list: Vec<String> = weighted.iter().map(|(k, w)| format!("{k} (weight {w})")).collect();
        format!("TrafficInfra {ti}: no ready endpoint in any weighted strategy: {}", list.join(", "))
    })
}

struct HostClaim {
    source: ObjectRef,
    targets: Targets,
    annotation: Option<u8>,
    deleting: bool,
    backends: Vec<String>,
    ready: usize,
}

/// Every host of an Ingress with the backend Services that serve it (its rules' paths plus the
/// default backend), normalised. Hosts of rules and of `spec.tls` both count; a TLS-only host is served
/// by the default backend.
fn hosts_with_backends(ingress: &Ingress) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let Some(spec) = ingress.spec.as_ref() else {
        return out;
    };
    let default_backend = spec.default_backend.as_ref().and_then(service_name);
    for rule in spec.rules.iter().flatten() {
        let Some(host) = rule.host.as_deref().map(normalize_host).filter(|h| !h.is_empty()) else {
            continue;
        };
        let entry = out.entry(host).or_default();
        for path in rule.http.iter().flat_map(|h| h.paths.iter()) {
            if let Some(svc) = service_name(&path.backend) {
                entry.push(svc);
            }
        }
        if rule.http.as_ref().is_none_or(|h| h.paths.is_empty()) {
            entry.extend(default_backend.clone());
        }
    }
    for tls in spec.tls.iter().flatten() {
        for host in tls.hosts.iter().flatten().map(|h| normalize_host(h)).filter(|h| !h.is_empty()) {
            out.entry(host).or_insert_with(|| default_backend.iter().cloned().collect());
        }
    }
    for backends in out.values_mut() {
        backends.sort();
        backends.dedup();
    }
    out
}

fn service_name(backend: &IngressBackend) -> Option<String> {
    backend.service.as_ref().map(|s| s.name.clone())
}

/// The Ingress's load-balancer addresses: every entry; hostnames become a CNAME, IPs A/AAAA records.
fn load_balancer_targets(ingress: &Ingress, dev_mode: bool) -> Result<Targets, String> {
    let mut targets = Targets::default();
    let entries = ingress
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    for entry in entries {
        if let Some(ip) = entry.ip.as_deref().filter(|s| !s.is_empty()) {
            match ip.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) => targets.ipv4.push(v4),
                Ok(IpAddr::V6(v6)) => targets.ipv6.push(v6),
                Err(_) => return Err(format!("status.loadBalancer.ingress[].ip {ip:?} is not an IP address")),
            }
        }
        if let Some(host) = entry.hostname.as_deref().map(normalize_host).filter(|s| !s.is_empty()) {
            if !is_dns_name(&host) {
                return Err(format!("status.loadBalancer.ingress[].hostname {host:?} is not a DNS name"));
            }
            targets.hostnames.push(host);
        }
    }
    targets.hostnames.sort();
    targets.hostnames.dedup();
    targets.ipv4.sort();
    targets.ipv4.dedup();
    targets.ipv6.sort();
    targets.ipv6.dedup();
    if targets.is_empty() && dev_mode {
        targets.ipv4.push(DEV_MODE_PLACEHOLDER);
    }
    // An empty list is not an error: the load balancer is still being provisioned; the host keeps
    // whatever is published until it has an address.
    Ok(targets)
}

/// A weighted CNAME holds exactly one name and cannot share it with A/AAAA records: when a load
/// balancer reports more than that, the first hostname is published and the rest named in a warning.
fn unpublished_targets_warning(host: &str, targets: &Targets) -> Option<String> {
    let ips = targets.ipv4.len() + targets.ipv6.len();
    let extra_names = targets.hostnames.len().saturating_sub(1);
    if targets.hostnames.is_empty() || (extra_names == 0 && ips == 0) {
        return None;
    }
    Some(format!(
        "host {host}: the load balancer reports {} hostname(s) and {ips} IP(s); only {} is published as a \
         weighted CNAME (one name, no A/AAAA beside it)",
        targets.hostnames.len(),
        targets.hostnames[0]
    ))
}

#[cfg(test)]
mod endpoint_tests {
    use super::*;

    fn snapshot(conditions: serde_json::Value) -> Snapshot {
        let slice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s", "namespace": "ns", "labels": {SERVICE_NAME_LABEL: "svc"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"], "conditions": conditions}],
        }))
        .unwrap();
        Snapshot { endpoint_slices: vec![slice], ..Default::default() }
    }

    #[test]
    fn endpoint_conditions() {
        let ready = |c| EndpointIndex::build(&snapshot(c)).ready_endpoints("ns", "svc");
        assert_eq!(ready(serde_json::json!({})), 1, "unknown readiness counts as ready");
        assert_eq!(ready(serde_json::json!({"ready": true})), 1);
        assert_eq!(ready(serde_json::json!({"ready": false, "serving": true, "terminating": true})), 0);
        assert_eq!(ready(serde_json::json!({"terminating": true})), 0, "terminating with unknown readiness");
        assert_eq!(ready(serde_json::json!({"ready": false})), 0);
    }
}
