//! The resource types the test API server knows: served by discovery and used to route requests.

/// One served resource (group, version, plural) and how it behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    /// Empty for the core group.
    pub group: String,
    pub version: String,
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
    /// Whether `/status` is a subresource (then the main resource ignores `.status` writes).
    pub status: bool,
}

impl ResourceType {
    pub fn new(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool, status: bool) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            kind: kind.into(),
            namespaced,
            status,
        }
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The built-in types weir and its peers use.
    pub fn builtins() -> Vec<ResourceType> {
        vec![
            Self::new("", "v1", "namespaces", "Namespace", false, true),
            Self::new("", "v1", "services", "Service", true, true),
            Self::new("", "v1", "pods", "Pod", true, true),
            Self::new("", "v1", "configmaps", "ConfigMap", true, false),
            Self::new("", "v1", "secrets", "Secret", true, false),
            Self::new("", "v1", "serviceaccounts", "ServiceAccount", true, false),
            Self::new("", "v1", "events", "Event", true, false),
            Self::new("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", true, false),
            Self::new("networking.k8s.io", "v1", "ingresses", "Ingress", true, true),
            Self::new("networking.k8s.io", "v1", "ingressclasses", "IngressClass", false, false),
            Self::new("events.k8s.io", "v1", "events", "Event", true, false),
            Self::new("coordination.k8s.io", "v1", "leases", "Lease", true, false),
            Self::new("apps", "v1", "deployments", "Deployment", true, true),
            Self::new("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", true, true),
            Self::new("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", true, true),
            // The TrafficInfra operator's children.
            Self::new("rbac.authorization.k8s.io", "v1", "roles", "Role", true, false),
            Self::new("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", true, false),
            Self::new("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", false, false),
            Self::new("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", false, false),
            Self::new(
                "apiextensions.k8s.io",
                "v1",
                "customresourcedefinitions",
                "CustomResourceDefinition",
                false,
                true,
            ),
            Self::new("externaldns.k8s.io", "v1alpha1", "dnsendpoints", "DNSEndpoint", true, true),
        ]
    }

    /// weir's own CRDs (group `weir.dev`), which a test may leave uninstalled.
    pub fn weir_crds() -> Vec<ResourceType> {
        vec![
            Self::new("weir.dev", "v1alpha1", "trafficinfras", "TrafficInfra", true, true),
            Self::new("weir.dev", "v1alpha1", "backendtrafficpolicies", "BackendTrafficPolicy", true, true),
            Self::new("weir.dev", "v1alpha1", "namespaceconfigs", "NamespaceConfig", true, false),
            // The l7mp VirtualService, which `weir crd` installs with weir's own.
            Self::new("servicemesh.l7mp.io", "v1", "virtualservices", "VirtualService", true, true),
        ]
    }

    /// The Gateway API CRDs as a cluster installs them (standard channel v1 Gateway, HTTPRoute,
    /// GRPCRoute; experimental v1alpha2 TLSRoute), reduced to what the server needs to serve them:
    /// names, scope, versions, the status subresource. Create them to make the group appear in
    /// discovery.
    pub fn gateway_api_crds() -> Vec<serde_json::Value> {
        [("gateways", "Gateway", "v1"), ("httproutes", "HTTPRoute", "v1"), ("grpcroutes", "GRPCRoute", "v1"), ("tlsroutes", "TLSRoute", "v1alpha2")]
            .into_iter()
            .map(|(plural, kind, version)| {
                serde_json::json!({
                    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                    "metadata": {"name": format!("{plural}.gateway.networking.k8s.io")},
                    "spec": {
                        "group": "gateway.networking.k8s.io", "scope": "Namespaced",
                        "names": {"plural": plural, "kind": kind, "singular": kind.to_ascii_lowercase(), "listKind": format!("{kind}List")},
                        "versions": [{"name": version, "served": true, "storage": true, "subresources": {"status": {}},
                                      "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]
                    }
                })
            })
            .collect()
    }

    /// The types a CustomResourceDefinition object declares (one per served version).
    pub fn from_crd(crd: &serde_json::Value) -> Vec<ResourceType> {
        let spec = &crd["spec"];
        let group = spec["group"].as_str().unwrap_or_default();
        let plural = spec["names"]["plural"].as_str().unwrap_or_default();
        let kind = spec["names"]["kind"].as_str().unwrap_or_default();
        let namespaced = spec["scope"].as_str() != Some("Cluster");
        spec["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["served"].as_bool().unwrap_or(true))
            .filter_map(|v| {
                let status = v["subresources"].get("status").is_some();
                Some(Self::new(group, v["name"].as_str()?, plural, kind, namespaced, status))
            })
            .collect()
    }
}
