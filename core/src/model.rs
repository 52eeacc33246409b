//! The typed snapshot that every provider (file, kubernetes) produces and the translator consumes.
//!
//! Objects are kept as the Kubernetes API types so that the file provider and the Kubernetes provider
//! hand the translator exactly the same thing.

use std::fmt;

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube_core::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::crd::{BackendTrafficPolicy, NamespaceConfig, TrafficInfra};
use crate::gateway::{Gateway, GrpcRoute, HttpRoute, TlsRoute};

/// Everything weir reads from the outside world at one instant. Cheap to share behind an `Arc`;
/// providers publish a new one on every change.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Increases on every published change; lets loops skip work when nothing moved.
    pub revision: u64,
    pub ingresses: Vec<Ingress>,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub traffic_infras: Vec<TrafficInfra>,
    pub backend_traffic_policies: Vec<BackendTrafficPolicy>,
    pub namespace_configs: Vec<NamespaceConfig>,
    /// Gateway API kinds (empty when the API server does not serve them).
    pub gateways: Vec<Gateway>,
    pub http_routes: Vec<HttpRoute>,
    pub grpc_routes: Vec<GrpcRoute>,
    pub tls_routes: Vec<TlsRoute>,
    /// Namespaces, for `allowedRoutes.namespaces.from: Selector` (read only with the Gateway API).
    pub namespaces: Vec<Namespace>,
}

impl Snapshot {
    /// Sorts every list by namespace/name so that translation output does not depend on the order in
    /// which a provider happened to see objects.
    pub fn normalize(&mut self) {
        fn by_key<K: kube_core::Resource>(items: &mut [K]) {
            items.sort_by(|a, b| {
                (a.namespace().unwrap_or_default(), a.name_any())
                    .cmp(&(b.namespace().unwrap_or_default(), b.name_any()))
            });
        }
        by_key(&mut self.ingresses);
        by_key(&mut self.services);
        by_key(&mut self.endpoint_slices);
        by_key(&mut self.traffic_infras);
        by_key(&mut self.backend_traffic_policies);
        by_key(&mut self.namespace_configs);
        by_key(&mut self.gateways);
        by_key(&mut self.http_routes);
        by_key(&mut self.grpc_routes);
        by_key(&mut self.tls_routes);
        by_key(&mut self.namespaces);
    }
}

/// Names one object for logs, Events, TXT ownership records and metrics.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: &str, namespace: &str, name: &str) -> Self {
        Self { kind: kind.to_string(), namespace: namespace.to_string(), name: name.to_string() }
    }

    pub fn of<K: kube_core::Resource<DynamicType = ()>>(obj: &K) -> Self {
        Self { kind: K::kind(&()).to_string(), namespace: obj.namespace().unwrap_or_default(), name: obj.name_any() }
    }

    /// `kind/namespace/name`, lower-case kind: the form used in TXT ownership records.
    pub fn to_path(&self) -> String {
        format!("{}/{}/{}", self.kind.to_ascii_lowercase(), self.namespace, self.name)
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}
