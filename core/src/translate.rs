//! Snapshot + cluster weight (+ strategy weights) → desired state. Pure: no I/O, no clocks, no
//! randomness.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube_core::ResourceExt;

use crate::gateway::{intersect_hostnames, listener_accepts, Gateway, RouteView};

use crate::ir::{DesiredState, DnsIntent, Factors, InputKind, Refusal, StrategyWeightsSource, Targets, TrafficLink};
use crate::model::{ObjectRef, Snapshot};
use crate::selection::{is_dns_name, normalize_host, AnnotationFilter, BindingDomain, HostNamespaces};
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
    /// `--host-namespaces`: which namespaces may claim the hosts of a domain (empty: any).
    pub host_namespaces: Vec<HostNamespaces>,
}

impl Default for TranslateConfig {
    fn default() -> Self {
        Self {
            binding_domain: BindingDomain::default(),
            annotation_filters: Vec::new(),
            annotation_prefix: DEFAULT_ANNOTATION_PREFIX.to_string(),
            dev_mode: false,
            host_namespaces: Vec::new(),
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
        self.selects_meta(&ingress.metadata)
    }

    /// The annotation filters, on any object weir reads hosts from (Ingress, route, Service).
    pub fn selects_meta(&self, metadata: &ObjectMeta) -> bool {
        let annotations = metadata.annotations.as_ref();
        self.annotation_filters.iter().all(|f| f.matches(annotations))
    }

    /// `<prefix>/hostname`: the hosts a `type: LoadBalancer` Service publishes (comma-separated).
    pub fn hostname_annotation(&self) -> String {
        format!("{}/hostname", self.annotation_prefix)
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
///
/// Hosts come from three sources, all through the same rules (binding domain, host validity,
/// weight annotation, targets, health, conflicts): Ingresses, Gateway API routes (HTTPRoute,
/// GRPCRoute, TLSRoute) attached to a Gateway, and `type: LoadBalancer` Services with the
/// `<prefix>/hostname` annotation.
pub fn translate_with(
    snapshot: &Snapshot,
    cluster_weight: u8,
    cfg: &TranslateConfig,
    live: &LiveStrategyWeights,
) -> DesiredState {
    translate_hosts(snapshot, cluster_weight, cfg, live, None)
}

/// [`translate_with`] resolving only the hosts in `only` (every host when `None`): the per-host
/// translation of the incremental index ([`crate::index`]), which runs it on a snapshot of a host's
/// claimants and what they read. Refusals about objects come as with [`translate_with`]; conflict
/// refusals only for the hosts resolved.
pub fn translate_hosts(
    snapshot: &Snapshot,
    cluster_weight: u8,
    cfg: &TranslateConfig,
    live: &LiveStrategyWeights,
    only: Option<&BTreeSet<String>>,
) -> DesiredState {
    let endpoints = EndpointIndex::build(snapshot);
    let links = traffic_links(snapshot, live);
    let mut refusals = Vec::new();
    let mut claims = Vec::new();
    ingress_claims(snapshot, cfg, &endpoints, &mut claims, &mut refusals);
    route_claims(snapshot, cfg, &endpoints, &mut claims, &mut refusals);
    service_claims(snapshot, cfg, &endpoints, &mut claims, &mut refusals);
    refuse_disallowed_namespaces(cfg, &mut claims, &mut refusals);
    if let Some(only) = only {
        claims.retain(|(host, _)| only.contains(host));
    }

    // host → candidates, in a deterministic order: the oldest object first (creationTimestamp), then
    // namespace/name, then kind. The first is the winner.
    let mut by_host: BTreeMap<String, Vec<HostClaim>> = BTreeMap::new();
    for (host, claim) in claims {
        by_host.entry(host).or_default().push(claim);
    }
    for candidates in by_host.values_mut() {
        candidates.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    }

    let mut dns = Vec::with_capacity(by_host.len());
    for (host, candidates) in by_host {
        let (winner, others) = candidates.split_first().expect("a claim list is never empty");
        // Objects that publish the host exactly as the winner does (path-split Ingresses share a
        // host) serve it together; one that differs is refused and does not count.
        let mut agreeing = vec![winner];
        for other in others {
            if other.targets != winner.targets || other.annotation != winner.annotation {
                refusals.push(Refusal {
                    object: other.source.clone(),
                    kind: InputKind::Conflict,
                    reason: "HostConflict".into(),
                    message: format!(
                        "host {host} is published from {} (the oldest object claiming it, then by \
                         namespace/name); this {}'s different load-balancer or weight for it is ignored; give \
                         both the same or publish the host from one object",
                        winner.source, other.source.kind
                    ),
                });
            } else {
                agreeing.push(other);
            }
        }
        // Ready endpoints of any agreeing object count.
        let ready: usize = agreeing.iter().filter(|c| !c.deleting).map(|c| c.ready).sum();
        let unhealthy_reason = if winner.deleting {
            Some(format!("{} is being deleted", winner.source))
        } else if ready == 0 {
            let all: BTreeSet<String> = agreeing.iter().flat_map(|c| c.backend_names()).collect();
            Some(if all.is_empty() {
                "the host has no backend Service".to_string()
            } else {
                format!("no ready endpoint for backend service(s) {}", all.into_iter().collect::<Vec<_>>().join(", "))
            })
        } else {
            None
        };
        // The first TrafficInfra an object of this host sends traffic to (one per namespace, so in
        // practice the only one).
        let traffic = agreeing
            .iter()
            .filter(|c| !c.deleting)
            .flat_map(|c| c.backends.iter())
            .find_map(|key| links.get(key))
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

/// `--host-namespaces`: a claim from a namespace its host's domain does not allow is refused before
/// the oldest claim is chosen, so that it can neither win the host nor block an allowed claim.
fn refuse_disallowed_namespaces(
    cfg: &TranslateConfig,
    claims: &mut Vec<(String, HostClaim)>,
    refusals: &mut Vec<Refusal>,
) {
    if cfg.host_namespaces.is_empty() {
        return;
    }
    claims.retain(|(host, claim)| {
        let Some(rule) = HostNamespaces::rule_for(&cfg.host_namespaces, host) else { return true };
        if rule.namespaces.contains(&claim.source.namespace) {
            return true;
        }
        refusals.push(Refusal {
            object: claim.source.clone(),
            kind: InputKind::Namespace,
            reason: REASON_HOST_NAMESPACE.into(),
            message: format!(
                "host {host} may be claimed only from namespace(s) {} (--host-namespaces {}); this {} in namespace \
                 {:?} is ignored for it; publish the host from an allowed namespace or change the flag",
                rule.namespaces.iter().cloned().collect::<Vec<_>>().join(", "),
                rule.describe(),
                claim.source.kind,
                claim.source.namespace
            ),
        });
        false
    });
}

/// The Event reason of a host claim refused by `--host-namespaces`.
pub const REASON_HOST_NAMESPACE: &str = "HostNamespaceNotAllowed";

/// The `<prefix>/traffic-weight` annotation of an object: `None` when absent, `Some(None)` when
/// present but not a weight (refused: the published record is kept), else `Some(Some(A))`.
fn read_weight(
    annotations: &BTreeMap<String, String>,
    key: &str,
    object: &ObjectRef,
    refusals: &mut Vec<Refusal>,
) -> Option<Option<u8>> {
    let raw = annotations.get(key)?;
    Some(match parse_annotation_weight(raw) {
        Ok(w) => Some(w),
        Err(e) => {
            refusals.push(Refusal {
                object: object.clone(),
                kind: InputKind::Annotation,
                reason: "InvalidTrafficWeight".into(),
                message: format!(
                    "annotation {key}={raw:?} is not a weight ({e}); keeping the published record; set it to a \
                     whole number 0-100"
                ),
            });
            None
        }
    })
}

/// Whether a host named by a route or a Service may be published: a valid DNS name inside the
/// binding domain. Refused otherwise, for this host only. (An Ingress host outside the binding
/// domain is not refused: there the domain selects which Ingress hosts weir manages.)
fn admit_host(host: &str, object: &ObjectRef, field: &str, cfg: &TranslateConfig, refusals: &mut Vec<Refusal>) -> bool {
    if !is_dns_name(host) {
        refusals.push(Refusal {
            object: object.clone(),
            kind: InputKind::Target,
            reason: "InvalidHost".into(),
            message: format!("host {host:?} is not a valid DNS name; fix {field}"),
        });
        return false;
    }
    if !cfg.binding_domain.contains(host) {
        refusals.push(Refusal {
            object: object.clone(),
            kind: InputKind::Target,
            reason: "OutsideBindingDomain".into(),
            message: format!(
                "host {host} is outside the binding domain {:?}; it is not published; fix {field}, or --binding-domain",
                cfg.binding_domain.as_str()
            ),
        });
        return false;
    }
    true
}

/// The targets of one object, or an empty set (its hosts keep what is published) with a refusal.
/// The annotation weight (the default when absent, `None` when refused) and the targets of an object
/// published to its `status.loadBalancer.ingress` (an Ingress or a LoadBalancer Service).
fn weight_and_load_balancer<'a>(
    annotations: &BTreeMap<String, String>,
    entries: impl IntoIterator<Item = (Option<&'a str>, Option<&'a str>)>,
    annotation_key: &str,
    source: &ObjectRef,
    cfg: &TranslateConfig,
    refusals: &mut Vec<Refusal>,
) -> (Option<u8>, Targets) {
    let annotation =
        read_weight(annotations, annotation_key, source, refusals).unwrap_or(Some(DEFAULT_ANNOTATION_WEIGHT));
    let targets = targets_or_refuse(addresses_to_targets(entries, LB_FIELDS, cfg.dev_mode), source, refusals);
    (annotation, targets)
}

fn targets_or_refuse(result: Result<Targets, String>, object: &ObjectRef, refusals: &mut Vec<Refusal>) -> Targets {
    result.unwrap_or_else(|message| {
        refusals.push(Refusal {
            object: object.clone(),
            kind: InputKind::Target,
            reason: "UnpublishableTarget".into(),
            message: format!("{message}; the published records of its hosts are kept"),
        });
        // No targets: the hosts stay managed and keep what is published, rather than vanishing from
        // the desired state (which would delete their records).
        Targets::default()
    })
}

fn ingress_claims(
    snapshot: &Snapshot,
    cfg: &TranslateConfig,
    endpoints: &EndpointIndex,
    claims: &mut Vec<(String, HostClaim)>,
    refusals: &mut Vec<Refusal>,
) {
    let annotation_key = cfg.weight_annotation();
    for ingress in snapshot.ingresses.iter().filter(|i| cfg.selects(i)) {
        let source = ObjectRef::of(ingress);
        let namespace = ingress.namespace().unwrap_or_default();
        let deleting = ingress.metadata.deletion_timestamp.is_some();
        let entries = ingress
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .map(|e| (e.ip.as_deref(), e.hostname.as_deref()));
        let (annotation, targets) =
            weight_and_load_balancer(ingress.annotations(), entries, &annotation_key, &source, cfg, refusals);

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
            extra_targets_warning(&host, &targets, &source, refusals);
            let ready: usize = backends.iter().map(|svc| endpoints.ready_endpoints(&namespace, svc)).sum();
            claims.push((
                host,
                HostClaim {
                    source: source.clone(),
                    created: ingress.metadata.creation_timestamp.clone(),
                    targets: targets.clone(),
                    annotation,
                    deleting,
                    backends: backends.into_iter().map(|b| (namespace.clone(), b)).collect(),
                    ready,
                },
            ));
        }
    }
}

/// Hosts of Gateway API routes. A route publishes a host through each parent Gateway that (1) it
/// names in `spec.parentRefs` (group/kind Gateway, `namespace` defaulting to the route's,
/// `sectionName` and `port` narrowing to listeners), (2) reports it `Accepted=True` in the route's
/// `status.parents`, and (3) has a listener that accepts it (protocol, `allowedRoutes`); the host
/// is the intersection of the listener's hostname and each of the route's hostnames
/// ([`gateway::intersect_hostnames`]). Targets: the Gateway's `status.addresses`, merged over the
/// Gateways a host is published through. Weight: the route's annotation, else that of the first
/// such Gateway (in parentRefs order) carrying one, else 100. Health: the route's backendRefs
/// Services.
fn route_claims(
    snapshot: &Snapshot,
    cfg: &TranslateConfig,
    endpoints: &EndpointIndex,
    claims: &mut Vec<(String, HostClaim)>,
    refusals: &mut Vec<Refusal>,
) {
    let annotation_key = cfg.weight_annotation();
    let gateways: HashMap<(String, String), &Gateway> =
        snapshot.gateways.iter().map(|g| ((g.namespace().unwrap_or_default(), g.name_any()), g)).collect();
    let namespace_labels: HashMap<String, &BTreeMap<String, String>> =
        snapshot.namespaces.iter().map(|n| (n.name_any(), n.labels())).collect();
    // Each Gateway's targets and weight annotation, read (and refused) once.
    let mut gateway_facts: HashMap<(String, String), GatewayFacts> = HashMap::new();

    let routes = snapshot
        .http_routes
        .iter()
        .map(RouteView::http)
        .chain(snapshot.grpc_routes.iter().map(RouteView::grpc))
        .chain(snapshot.tls_routes.iter().map(RouteView::tls));
    for route in routes {
        if !cfg.selects_meta(route.metadata) {
            continue;
        }
        let namespace = route.namespace();
        let source = ObjectRef::new(route.kind, &namespace, route.metadata.name.as_deref().unwrap_or_default());
        let empty = BTreeMap::new();
        let route_weight =
            read_weight(route.metadata.annotations.as_ref().unwrap_or(&empty), &annotation_key, &source, refusals);
        let mut route_hosts: Vec<Option<String>> = Vec::new();
        for h in &route.spec.hostnames {
            let h = normalize_host(h);
            if is_dns_name(&h) {
                route_hosts.push(Some(h));
            } else {
                admit_host(&h, &source, "spec.hostnames", cfg, refusals);
            }
        }
        if route.spec.hostnames.is_empty() {
            // No hostnames: the route takes the listeners' hostnames.
            route_hosts.push(None);
        }

        // host → (merged targets, the Gateways it is published through, in parentRefs order)
        let mut hosts: BTreeMap<String, (Targets, Vec<(String, String)>)> = BTreeMap::new();
        for parent in &route.spec.parent_refs {
            let Some(key) = parent.gateway(&namespace) else { continue };
            let Some(gateway) = gateways.get(&key) else { continue };
            if !route.accepted_by(parent) {
                continue;
            }
            let labels = namespace_labels.get(&namespace).copied();
            for listener in &gateway.spec.listeners {
                if parent.section_name.as_ref().is_some_and(|s| *s != listener.name)
                    || parent.port.is_some_and(|p| p != listener.port)
                    || !listener_accepts(gateway, listener, &route, labels)
                {
                    continue;
                }
                for route_host in &route_hosts {
                    let Some(host) = intersect_hostnames(listener.hostname.as_deref(), route_host.as_deref()) else {
                        continue;
                    };
                    let facts =
                        gateway_facts.entry(key.clone()).or_insert_with(|| gateway_facts_of(gateway, cfg, refusals));
                    let entry = hosts.entry(host).or_default();
                    merge_targets(&mut entry.0, &facts.0);
                    if !entry.1.contains(&key) {
                        entry.1.push(key.clone());
                    }
                }
            }
        }
        if hosts.is_empty() {
            continue;
        }
        let backends = route.backend_services();
        let ready: usize = backends.iter().map(|(ns, svc)| endpoints.ready_endpoints(ns, svc)).sum();
        let deleting = route.metadata.deletion_timestamp.is_some();
        for (host, (targets, via)) in hosts {
            if !admit_host(&host, &source, "spec.hostnames (or the Gateway listener's hostname)", cfg, refusals) {
                continue;
            }
            let annotation = match route_weight {
                Some(w) => w,
                None => via
                    .iter()
                    .find_map(|k| gateway_facts.get(k).and_then(|f| f.1))
                    .unwrap_or(Some(DEFAULT_ANNOTATION_WEIGHT)),
            };
            if targets.is_empty() {
                let names: Vec<String> = via.iter().map(|(ns, n)| format!("{ns}/{n}")).collect();
                refusals.push(Refusal {
                    object: source.clone(),
                    kind: InputKind::Target,
                    reason: "GatewayHasNoAddress".into(),
                    message: format!(
                        "host {host}: Gateway {} has no usable address in status.addresses; the host keeps what is \
                         published until the Gateway has one",
                        names.join(", ")
                    ),
                });
            }
            extra_targets_warning(&host, &targets, &source, refusals);
            claims.push((
                host,
                HostClaim {
                    source: source.clone(),
                    created: route.metadata.creation_timestamp.clone(),
                    targets,
                    annotation,
                    deleting,
                    backends: backends.clone(),
                    ready,
                },
            ));
        }
    }
}

/// A Gateway's targets and its weight annotation (as [`read_weight`] gives it).
type GatewayFacts = (Targets, Option<Option<u8>>);

/// A Gateway's targets (`status.addresses`: `IPAddress`, the default type, and `Hostname`; other
/// types cannot be published and are skipped) and its weight annotation.
fn gateway_facts_of(
    gateway: &Gateway,
    cfg: &TranslateConfig,
    refusals: &mut Vec<Refusal>,
) -> (Targets, Option<Option<u8>>) {
    let source = ObjectRef::of(gateway);
    let entries = gateway.status.iter().flat_map(|s| s.addresses.iter()).filter_map(|a| match a.type_.as_deref() {
        None | Some("IPAddress") => Some((Some(a.value.as_str()), None)),
        Some("Hostname") => Some((None, Some(a.value.as_str()))),
        Some(_) => None,
    });
    let targets = targets_or_refuse(
        addresses_to_targets(entries, ("status.addresses[].value", "status.addresses[].value"), cfg.dev_mode),
        &source,
        refusals,
    );
    let weight = read_weight(gateway.annotations(), &cfg.weight_annotation(), &source, refusals);
    (targets, weight)
}

/// Hosts of `type: LoadBalancer` Services with the `<prefix>/hostname` annotation (comma-separated):
/// targets from `status.loadBalancer.ingress`, weight from the Service's annotation, health from the
/// Service's own EndpointSlices.
fn service_claims(
    snapshot: &Snapshot,
    cfg: &TranslateConfig,
    endpoints: &EndpointIndex,
    claims: &mut Vec<(String, HostClaim)>,
    refusals: &mut Vec<Refusal>,
) {
    let hostname_key = cfg.hostname_annotation();
    let annotation_key = cfg.weight_annotation();
    for svc in &snapshot.services {
        let Some(raw) = svc.annotations().get(&hostname_key) else { continue };
        if !cfg.selects_meta(&svc.metadata) {
            continue;
        }
        let source = ObjectRef::of(svc);
        let type_ = svc.spec.as_ref().and_then(|s| s.type_.as_deref()).unwrap_or("ClusterIP");
        if type_ != "LoadBalancer" {
            refusals.push(Refusal {
                object: source.clone(),
                kind: InputKind::Target,
                reason: "NotLoadBalancer".into(),
                message: format!(
                    "annotation {hostname_key} is read only on type: LoadBalancer Services and this one is {type_}; \
                     its hosts are not published"
                ),
            });
            continue;
        }
        let entries = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .map(|e| (e.ip.as_deref(), e.hostname.as_deref()));
        let (annotation, targets) =
            weight_and_load_balancer(svc.annotations(), entries, &annotation_key, &source, cfg, refusals);
        let namespace = svc.namespace().unwrap_or_default();
        let ready = endpoints.ready_endpoints(&namespace, &svc.name_any());
        let mut hosts: Vec<String> = raw.split(',').map(normalize_host).filter(|h| !h.is_empty()).collect();
        hosts.sort();
        hosts.dedup();
        for host in hosts {
            if !admit_host(&host, &source, &format!("annotation {hostname_key}"), cfg, refusals) {
                continue;
            }
            extra_targets_warning(&host, &targets, &source, refusals);
            claims.push((
                host,
                HostClaim {
                    source: source.clone(),
                    created: svc.metadata.creation_timestamp.clone(),
                    targets: targets.clone(),
                    annotation,
                    deleting: svc.metadata.deletion_timestamp.is_some(),
                    backends: vec![(namespace.clone(), svc.name_any())],
                    ready,
                },
            ));
        }
    }
}

fn merge_targets(into: &mut Targets, from: &Targets) {
    into.hostnames.extend(from.hostnames.iter().cloned());
    into.ipv4.extend(from.ipv4.iter().copied());
    into.ipv6.extend(from.ipv6.iter().copied());
    into.hostnames.sort();
    into.hostnames.dedup();
    into.ipv4.sort();
    into.ipv4.dedup();
    into.ipv6.sort();
    into.ipv6.dedup();
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
        let settings = XdsSettings {
            name: name.clone(),
            namespace: namespace.clone(),
            services: Vec::new(),
            ..Default::default()
        };
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
    created: Option<Time>,
    targets: Targets,
    annotation: Option<u8>,
    deleting: bool,
    /// Backend Services, `(namespace, name)`.
    backends: Vec<(String, String)>,
    ready: usize,
}

impl HostClaim {
    fn order_key(&self) -> impl Ord + '_ {
        (self.created.as_ref().map(|t| t.0), &self.source.namespace, &self.source.name, &self.source.kind)
    }

    /// Backend Services as messages name them: `name` in the object's namespace, else `namespace/name`.
    fn backend_names(&self) -> impl Iterator<Item = String> + '_ {
        self.backends
            .iter()
            .map(|(ns, name)| if *ns == self.source.namespace { name.clone() } else { format!("{ns}/{name}") })
    }
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

const LB_FIELDS: (&str, &str) = ("status.loadBalancer.ingress[].ip", "status.loadBalancer.ingress[].hostname");

/// An object's addresses, `(ip, hostname)` pairs read from `fields` (an Ingress's or a Service's
/// `status.loadBalancer.ingress[]`, a Gateway's `status.addresses[]`): every entry; hostnames
/// become a CNAME (or ALIAS), IPs A/AAAA records.
fn addresses_to_targets<'a>(
    entries: impl IntoIterator<Item = (Option<&'a str>, Option<&'a str>)>,
    fields: (&str, &str),
    dev_mode: bool,
) -> Result<Targets, String> {
    let mut targets = Targets::default();
    for (ip, hostname) in entries {
        if let Some(ip) = ip.map(str::trim).filter(|s| !s.is_empty()) {
            match ip.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) => targets.ipv4.push(v4),
                Ok(IpAddr::V6(v6)) => targets.ipv6.push(v6),
                Err(_) => return Err(format!("{} {ip:?} is not an IP address", fields.0)),
            }
        }
        if let Some(host) = hostname.map(normalize_host).filter(|s| !s.is_empty()) {
            if !is_dns_name(&host) {
                return Err(format!("{} {host:?} is not a DNS name", fields.1));
            }
            targets.hostnames.push(host);
        }
    }
    merge_targets(&mut targets, &Targets::default());
    if targets.is_empty() && dev_mode {
        targets.ipv4.push(DEV_MODE_PLACEHOLDER);
    }
    // An empty list is not an error: the load balancer is still being provisioned; the host keeps
    // whatever is published until it has an address.
    Ok(targets)
}

/// A weighted CNAME holds exactly one name and cannot share it with A/AAAA records: when a load
/// balancer reports more than that, the first hostname is published and the rest named in a warning.
fn extra_targets_warning(host: &str, targets: &Targets, object: &ObjectRef, refusals: &mut Vec<Refusal>) {
    let ips = targets.ipv4.len() + targets.ipv6.len();
    let extra_names = targets.hostnames.len().saturating_sub(1);
    if targets.hostnames.is_empty() || (extra_names == 0 && ips == 0) {
        return;
    }
    refusals.push(Refusal {
        object: object.clone(),
        kind: InputKind::Target,
        reason: "ExtraLoadBalancerAddresses".into(),
        message: format!(
            "host {host}: the load balancer reports {} hostname(s) and {ips} IP(s); only {} is published as a \
             weighted CNAME (one name, no A/AAAA beside it)",
            targets.hostnames.len(),
            targets.hostnames[0]
        ),
    });
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
