//! The Gateway API kinds weir reads (`gateway.networking.k8s.io`): Gateway, HTTPRoute and GRPCRoute
//! (`v1`), TLSRoute (`v1alpha2`). Only the fields that matter for DNS are typed; every other field
//! is ignored on read, so a newer Gateway API release still parses.
//!
//! The rules that attach a route to a Gateway listener and intersect their hostnames are those of
//! the Gateway API spec (`ParentReference`, `Listener.hostname`, `HTTPRoute.spec.hostnames`,
//! `AllowedRoutes`); [`intersect_hostnames`] and [`listener_accepts`] hold them.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube_core::ResourceExt;
use kube_derive::CustomResource;
use serde::{Deserialize, Serialize};

use crate::selection::normalize_host;

pub const GROUP: &str = "gateway.networking.k8s.io";

/// A Gateway: listeners (hostname, protocol, port, which routes may attach) and, in its status, the
/// addresses traffic reaches it at.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "Gateway",
    namespaced,
    status = "GatewayStatus",
    schema = "disabled",
    crates(kube_core = "::kube_core")
)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    #[serde(default)]
    pub gateway_class_name: String,
    #[serde(default)]
    pub listeners: Vec<Listener>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    #[serde(default)]
    pub name: String,
    /// None: every hostname (the route's decide).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default)]
    pub port: i32,
    #[serde(default)]
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_routes: Option<AllowedRoutes>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AllowedRoutes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<RouteNamespaces>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<RouteGroupKind>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteNamespaces {
    /// `Same` (the default), `All` or `Selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteGroupKind {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub kind: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    #[serde(default)]
    pub addresses: Vec<GatewayStatusAddress>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatusAddress {
    /// `IPAddress` (the default), `Hostname`, or an implementation-specific type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    pub value: String,
}

/// What HTTPRoute, GRPCRoute and TLSRoute share and weir reads.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<RouteRule>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    /// Core group (`""`) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `Service` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

impl ParentReference {
    /// The Gateway this reference names, `(namespace, name)`, when it names a Gateway at all.
    pub fn gateway(&self, route_namespace: &str) -> Option<(String, String)> {
        let group = self.group.as_deref().unwrap_or(GROUP);
        let kind = self.kind.as_deref().unwrap_or("Gateway");
        (group == GROUP && kind == "Gateway")
            .then(|| (self.namespace.clone().unwrap_or_else(|| route_namespace.to_string()), self.name.clone()))
    }

    /// Equal as the spec compares them: defaults filled in.
    fn same_as(&self, other: &ParentReference, route_namespace: &str) -> bool {
        self.gateway(route_namespace) == other.gateway(route_namespace)
            && self.section_name == other.section_name
            && self.port == other.port
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    #[serde(default)]
    pub parents: Vec<RouteParentStatus>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    pub parent_ref: ParentReference,
    #[serde(default)]
    pub conditions: Vec<StatusCondition>,
}

/// A status condition; only `type` and `status` are read.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatusCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
}

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "HTTPRoute",
    root = "HttpRoute",
    plural = "httproutes",
    namespaced,
    status = "RouteStatus",
    schema = "disabled",
    crates(kube_core = "::kube_core")
)]
pub struct HttpRouteSpec {
    #[serde(flatten)]
    pub route: RouteSpec,
}

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "GRPCRoute",
    root = "GrpcRoute",
    plural = "grpcroutes",
    namespaced,
    status = "RouteStatus",
    schema = "disabled",
    crates(kube_core = "::kube_core")
)]
pub struct GrpcRouteSpec {
    #[serde(flatten)]
    pub route: RouteSpec,
}

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1alpha2",
    kind = "TLSRoute",
    root = "TlsRoute",
    plural = "tlsroutes",
    namespaced,
    status = "RouteStatus",
    schema = "disabled",
    crates(kube_core = "::kube_core")
)]
pub struct TlsRouteSpec {
    #[serde(flatten)]
    pub route: RouteSpec,
}

/// One route of any kind weir reads, as the translator sees it.
#[derive(Debug, Clone, Copy)]
pub struct RouteView<'a> {
    /// `HTTPRoute`, `GRPCRoute` or `TLSRoute`.
    pub kind: &'static str,
    pub metadata: &'a ObjectMeta,
    pub spec: &'a RouteSpec,
    pub status: Option<&'a RouteStatus>,
}

impl<'a> RouteView<'a> {
    pub fn http(r: &'a HttpRoute) -> Self {
        Self { kind: "HTTPRoute", metadata: &r.metadata, spec: &r.spec.route, status: r.status.as_ref() }
    }
    pub fn grpc(r: &'a GrpcRoute) -> Self {
        Self { kind: "GRPCRoute", metadata: &r.metadata, spec: &r.spec.route, status: r.status.as_ref() }
    }
    pub fn tls(r: &'a TlsRoute) -> Self {
        Self { kind: "TLSRoute", metadata: &r.metadata, spec: &r.spec.route, status: r.status.as_ref() }
    }

    pub fn namespace(&self) -> String {
        self.metadata.namespace.clone().unwrap_or_default()
    }

    /// Listener protocols this kind of route attaches to (HTTPS counts as HTTP, as the spec's
    /// default route kinds per protocol say).
    fn protocol_matches(&self, listener_protocol: &str) -> bool {
        match self.kind {
            "TLSRoute" => listener_protocol == "TLS",
            _ => matches!(listener_protocol, "HTTP" | "HTTPS"),
        }
    }

    /// Whether the Gateway's controller reports `Accepted=True` for this parent reference in the
    /// route's status. A route its Gateway has not accepted gets no traffic, so it gets no record.
    pub fn accepted_by(&self, parent: &ParentReference) -> bool {
        let ns = self.namespace();
        self.status.into_iter().flat_map(|s| s.parents.iter()).any(|p| {
            p.parent_ref.same_as(parent, &ns)
                && p.conditions.iter().any(|c| c.type_ == "Accepted" && c.status == "True")
        })
    }

    /// The Services of the route's backendRefs, `(namespace, name)`, sorted.
    pub fn backend_services(&self) -> Vec<(String, String)> {
        let ns = self.namespace();
        let mut out: Vec<(String, String)> = self
            .spec
            .rules
            .iter()
            .flat_map(|r| r.backend_refs.iter())
            .filter(|b| {
                b.group.as_deref().unwrap_or("").is_empty() && b.kind.as_deref().unwrap_or("Service") == "Service"
            })
            .map(|b| (b.namespace.clone().unwrap_or_else(|| ns.clone()), b.name.clone()))
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// Whether `listener` of `gateway` lets `route` attach: protocol, `allowedRoutes.kinds`, and
/// `allowedRoutes.namespaces` (`Same` by default; `Selector` matched against the labels of the
/// route's Namespace, `namespace_labels`; an unknown `from` allows nothing).
pub fn listener_accepts(
    gateway: &Gateway,
    listener: &Listener,
    route: &RouteView<'_>,
    namespace_labels: Option<&BTreeMap<String, String>>,
) -> bool {
    if !route.protocol_matches(&listener.protocol) {
        return false;
    }
    let allowed = listener.allowed_routes.as_ref();
    let from = allowed.and_then(|a| a.namespaces.as_ref()).and_then(|n| n.from.as_deref()).unwrap_or("Same");
    let namespace_ok = match from {
        "All" => true,
        "Same" => gateway.namespace().unwrap_or_default() == route.namespace(),
        "Selector" => {
            let selector = allowed.and_then(|a| a.namespaces.as_ref()).and_then(|n| n.selector.as_ref());
            match (selector, namespace_labels) {
                (Some(s), Some(labels)) => selector_matches(s, labels),
                _ => false,
            }
        }
        _ => false,
    };
    if !namespace_ok {
        return false;
    }
    let kinds = allowed.map(|a| a.kinds.as_slice()).unwrap_or_default();
    kinds.is_empty() || kinds.iter().any(|k| k.group.as_deref().unwrap_or(GROUP) == GROUP && k.kind == route.kind)
}

/// A `metav1.LabelSelector` against a label set: every matchLabels pair and every expression
/// (`In`, `NotIn`, `Exists`, `DoesNotExist`; an unknown operator matches nothing).
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// The hostname a listener hostname and a route hostname have in common, as the Gateway API
/// defines it: `None` on either side matches everything and yields the other; equal names match;
/// a wildcard `*.example.com` matches any name with that suffix and at least one more label (not
/// `example.com` itself), and the more specific of the two is the result. Both `None`: no name.
pub fn intersect_hostnames(listener: Option<&str>, route: Option<&str>) -> Option<String> {
    let listener = listener.map(normalize_host).filter(|h| !h.is_empty());
    let route = route.map(normalize_host).filter(|h| !h.is_empty());
    match (listener, route) {
        (None, None) => None,
        (Some(h), None) | (None, Some(h)) => Some(h),
        (Some(l), Some(r)) if l == r => Some(l),
        (Some(l), Some(r)) => {
            let covers = |wild: &str, name: &str| {
                wild.strip_prefix("*").is_some_and(|suffix| suffix.starts_with('.') && name.ends_with(suffix))
                    && name.len() > wild.len() - 1
            };
            // The more specific side is the one covered by the other's wildcard.
            if covers(&l, &r) {
                Some(r)
            } else if covers(&r, &l) {
                Some(l)
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_intersection_follows_the_spec() {
        let i = |l: Option<&str>, r: Option<&str>| intersect_hostnames(l, r);
        assert_eq!(i(None, None), None);
        assert_eq!(i(None, Some("a.example.com")).as_deref(), Some("a.example.com"));
        assert_eq!(i(Some("*.example.com"), None).as_deref(), Some("*.example.com"));
        assert_eq!(i(Some("a.example.com"), Some("A.Example.com.")).as_deref(), Some("a.example.com"));
        assert_eq!(i(Some("*.example.com"), Some("a.example.com")).as_deref(), Some("a.example.com"));
        assert_eq!(i(Some("*.example.com"), Some("a.b.example.com")).as_deref(), Some("a.b.example.com"));
        assert_eq!(i(Some("a.example.com"), Some("*.example.com")).as_deref(), Some("a.example.com"));
        assert_eq!(i(Some("*.example.com"), Some("*.a.example.com")).as_deref(), Some("*.a.example.com"));
        assert_eq!(i(Some("*.a.example.com"), Some("*.example.com")).as_deref(), Some("*.a.example.com"));
        assert_eq!(i(Some("*.example.com"), Some("example.com")), None, "a wildcard needs one more label");
        assert_eq!(i(Some("*.example.com"), Some("badexample.com")), None);
        assert_eq!(i(Some("a.example.com"), Some("b.example.com")), None);
        assert_eq!(i(Some("*.example.com"), Some("*.example.org")), None);
    }

    #[test]
    fn label_selectors() {
        let sel: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"team": "shop"},
            "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "staging"]},
                                 {"key": "frozen", "operator": "DoesNotExist"}]
        }))
        .unwrap();
        let labels = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(selector_matches(&sel, &labels(&[("team", "shop"), ("env", "prod")])));
        assert!(!selector_matches(&sel, &labels(&[("team", "shop"), ("env", "dev")])));
        assert!(!selector_matches(&sel, &labels(&[("team", "shop"), ("env", "prod"), ("frozen", "1")])));
        assert!(!selector_matches(&sel, &labels(&[("env", "prod")])));
    }
}
