//! The intermediate representation between inputs and outputs: what weir wants the world to look like.
//! The translator produces it from a snapshot; the DNS planner and the xDS translator consume it.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::model::ObjectRef;

/// Desired state of this cluster, derived purely from one snapshot and one cluster weight.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DesiredState {
    /// One intent per managed host, sorted by host.
    pub dns: Vec<DnsIntent>,
    /// Inputs that were refused, each with the object to blame and a message that says what to do.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refusals: Vec<Refusal>,
}

impl DesiredState {
    pub fn intent(&self, host: &str) -> Option<&DnsIntent> {
        self.dns.binary_search_by(|i| i.host.as_str().cmp(host)).ok().map(|i| &self.dns[i])
    }
}

/// The record this cluster should publish for one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DnsIntent {
    /// Fully qualified, lower case, no trailing dot.
    pub host: String,
    /// The object that owns the host in this cluster: an Ingress, a Gateway API route or a
    /// LoadBalancer Service.
    pub source: ObjectRef,
    pub targets: Targets,
    pub factors: Factors,
    /// `W` to publish, or `None` to keep whatever is published (an input was refused and the weight
    /// cannot be derived without it).
    pub weight: Option<u8>,
    /// The TrafficInfra the host's object sends traffic to (a backend `{name}-envoy`), if any: the
    /// third factor of the composition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficLink>,
}

/// A host linked to a TrafficInfra: its in-cluster split between strategies (`S_k`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficLink {
    pub traffic_infra: ObjectRef,
    /// `S_k` per strategy.
    pub strategy_weights: BTreeMap<String, u32>,
    /// Where `S_k` came from.
    pub weights_from: StrategyWeightsSource,
    /// Ready endpoints in this cluster per strategy (every strategy that has a weight or a service).
    pub ready_endpoints: BTreeMap<String, usize>,
}

/// Where the strategy weights of a [`TrafficLink`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyWeightsSource {
    /// `spec.trafficDefaults` of the TrafficInfra: the baseline until weights are set through the
    /// admin API of `weir xds`.
    TrafficDefaults,
    /// `status.trafficWeights` of the TrafficInfra, as the infra manager reports them.
    Status,
    /// The state `weir xds` keeps (admin-API writes), read locally.
    XdsState,
}

/// Every factor of a record weight, as `weir explain` shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Factors {
    /// `C`, the cluster weight being applied.
    pub cluster: u8,
    /// `A`, or `None` when the annotation is present but invalid.
    pub annotation: Option<u8>,
    /// `H`.
    pub healthy: bool,
    /// Why `H` is 0, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_reason: Option<String>,
}

/// Where a host's traffic goes in this cluster: the load-balancer addresses of its Ingress or
/// Service, or its Gateway's addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Targets {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv4: Vec<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv6: Vec<Ipv6Addr>,
}

impl Targets {
    pub fn is_empty(&self) -> bool {
        self.hostnames.is_empty() && self.ipv4.is_empty() && self.ipv6.is_empty()
    }
}

/// An input weir refused. Each becomes a log line, a metric (`weir_invalid_input_total{kind}`) and,
/// with the Kubernetes provider, an Event on the object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Refusal {
    pub object: ObjectRef,
    pub kind: InputKind,
    /// Short machine-readable reason, used as the Event reason.
    pub reason: String,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl Refusal {
    /// The host this refuses a claim on: the translator's refusals about one host (a conflict,
    /// `--host-namespaces`, an invalid or unpublishable host) start their message with `host HOST`.
    pub fn claimed_host(&self) -> Option<&str> {
        let rest = self.message.strip_prefix("host ")?;
        let (host, _) = rest.split_once(' ')?;
        Some(host.trim_end_matches(':').trim_matches('"'))
    }
}

/// The kinds of input that can be refused; the `kind` label of `weir_invalid_input_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    /// A `<prefix>/traffic-weight` annotation that is not a weight.
    Annotation,
    /// A cluster weight in the store that is not 0–100.
    Weight,
    /// A manifest that cannot be read or parsed.
    Manifest,
    /// An address or host that cannot be published: a load-balancer or Gateway address, an invalid
    /// host, a host outside the binding domain, a Gateway with no address, `<prefix>/hostname` on a
    /// Service that is not a LoadBalancer.
    Target,
    /// Two objects (Ingresses, routes, Services) that claim the same host differently.
    Conflict,
    /// The all-zero guard refused to publish the last non-zero weight of a name as 0.
    AllZeroGuard,
    /// A record at a managed name that weir does not own.
    Ownership,
    /// A bad admin API request.
    AdminRequest,
    /// A bad TrafficInfra, BackendTrafficPolicy or NamespaceConfig.
    Resource,
    /// A weight row that would leave fewer than `--min-serving-clusters` clusters serving.
    MinServingClusters,
    /// A child the operator may not write (RBAC denied it, e.g. a Role granting what the operator
    /// does not hold).
    Permission,
    /// A host in none of the hosted zones weir manages.
    NoZone,
    /// An object outside the namespaces allowed for it: a planner Service outside its TrafficInfra's
    /// namespace and `spec.xds.discovery.allowedNamespaces`, a host claimed from a namespace
    /// `--host-namespaces` does not allow for its domain.
    Namespace,
}

impl InputKind {
    pub fn label(self) -> &'static str {
        match self {
            InputKind::Annotation => "annotation",
            InputKind::Weight => "weight",
            InputKind::Manifest => "manifest",
            InputKind::Target => "target",
            InputKind::Conflict => "conflict",
            InputKind::AllZeroGuard => "all_zero_guard",
            InputKind::Ownership => "ownership",
            InputKind::AdminRequest => "admin_request",
            InputKind::Resource => "resource",
            InputKind::MinServingClusters => "min_serving_clusters",
            InputKind::Permission => "permission",
            InputKind::NoZone => "no_zone",
            InputKind::Namespace => "namespace",
        }
    }
}
