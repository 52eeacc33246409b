//! The typed snapshot that every provider (file, kubernetes) produces and the translator consumes.
//!
//! Objects are kept as the Kubernetes API types so that the file provider and the Kubernetes provider
//! hand the translator exactly the same thing.

use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube_core::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::crd::{BackendTrafficPolicy, NamespaceConfig, TrafficInfra, VirtualService};
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
    /// l7mp VirtualServices (read by `weir xds` only).
    pub virtual_services: Vec<VirtualService>,
    /// Pods, for VirtualService endpoints by `host.selector` (read by `weir xds` only).
    pub pods: Vec<Pod>,
}

impl Snapshot {
    /// Sorts every list by namespace/name so that translation output does not depend on the order in
    /// which a provider happened to see objects.
    pub fn normalize(&mut self) {
        fn by_key<K: kube_core::Resource>(items: &mut [K]) {
            items.sort_by(|a, b| key_ref(a).cmp(&key_ref(b)));
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
        by_key(&mut self.virtual_services);
        by_key(&mut self.pods);
    }

    /// Adds (a copy of) one object to the list of its kind (call [`Snapshot::normalize`] after the last).
    pub fn push(&mut self, object: &Object) {
        match object.clone() {
            Object::Ingress(o) => self.ingresses.push(Arc::unwrap_or_clone(o)),
            Object::Service(o) => self.services.push(Arc::unwrap_or_clone(o)),
            Object::EndpointSlice(o) => self.endpoint_slices.push(Arc::unwrap_or_clone(o)),
            Object::TrafficInfra(o) => self.traffic_infras.push(Arc::unwrap_or_clone(o)),
            Object::BackendTrafficPolicy(o) => self.backend_traffic_policies.push(Arc::unwrap_or_clone(o)),
            Object::NamespaceConfig(o) => self.namespace_configs.push(Arc::unwrap_or_clone(o)),
            Object::Gateway(o) => self.gateways.push(Arc::unwrap_or_clone(o)),
            Object::HttpRoute(o) => self.http_routes.push(Arc::unwrap_or_clone(o)),
            Object::GrpcRoute(o) => self.grpc_routes.push(Arc::unwrap_or_clone(o)),
            Object::TlsRoute(o) => self.tls_routes.push(Arc::unwrap_or_clone(o)),
            Object::Namespace(o) => self.namespaces.push(Arc::unwrap_or_clone(o)),
        }
    }
}

/// `(namespace, name)` of an object, borrowed (`""` for a cluster-scoped object's namespace; the
/// name is `metadata.name`, else `generateName`, as `ResourceExt::name_any`): the order of
/// [`Snapshot::normalize`].
pub fn key_ref<K: kube_core::Resource>(o: &K) -> (&str, &str) {
    let meta = o.meta();
    let name = meta.name.as_deref().or(meta.generate_name.as_deref()).unwrap_or("");
    (meta.namespace.as_deref().unwrap_or(""), name)
}

/// The kinds a [`Snapshot`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Ingress,
    Service,
    EndpointSlice,
    TrafficInfra,
    BackendTrafficPolicy,
    NamespaceConfig,
    Gateway,
    HttpRoute,
    GrpcRoute,
    TlsRoute,
    Namespace,
}

/// A kind a [`Snapshot`] holds: its [`Kind`] and its [`Object`] variant.
pub trait Held: Sized {
    const KIND: Kind;
    fn into_object(object: Arc<Self>) -> Object;
    fn of_object(object: &Object) -> Option<&Arc<Self>>;
}

macro_rules! held {
    ($($t:ty => $variant:ident),* $(,)?) => {
        $(impl Held for $t {
            const KIND: Kind = Kind::$variant;
            fn into_object(object: Arc<Self>) -> Object {
                Object::$variant(object)
            }
            fn of_object(object: &Object) -> Option<&Arc<Self>> {
                match object {
                    Object::$variant(o) => Some(o),
                    _ => None,
                }
            }
        })*
    };
}

held!(
    Ingress => Ingress,
    Service => Service,
    EndpointSlice => EndpointSlice,
    TrafficInfra => TrafficInfra,
    BackendTrafficPolicy => BackendTrafficPolicy,
    NamespaceConfig => NamespaceConfig,
    Gateway => Gateway,
    HttpRoute => HttpRoute,
    GrpcRoute => GrpcRoute,
    TlsRoute => TlsRoute,
    Namespace => Namespace,
);

/// One object of any kind a [`Snapshot`] holds, shared.
#[derive(Debug, Clone)]
pub enum Object {
    Ingress(Arc<Ingress>),
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    TrafficInfra(Arc<TrafficInfra>),
    BackendTrafficPolicy(Arc<BackendTrafficPolicy>),
    NamespaceConfig(Arc<NamespaceConfig>),
    Gateway(Arc<Gateway>),
    HttpRoute(Arc<HttpRoute>),
    GrpcRoute(Arc<GrpcRoute>),
    TlsRoute(Arc<TlsRoute>),
    Namespace(Arc<Namespace>),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Ingress(_) => Kind::Ingress,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::TrafficInfra(_) => Kind::TrafficInfra,
            Object::BackendTrafficPolicy(_) => Kind::BackendTrafficPolicy,
            Object::NamespaceConfig(_) => Kind::NamespaceConfig,
            Object::Gateway(_) => Kind::Gateway,
            Object::HttpRoute(_) => Kind::HttpRoute,
            Object::GrpcRoute(_) => Kind::GrpcRoute,
            Object::TlsRoute(_) => Kind::TlsRoute,
            Object::Namespace(_) => Kind::Namespace,
        }
    }

    /// Whether both are the same allocation (a provider re-publishes an unchanged object as the same
    /// `Arc`).
    pub fn same_allocation(&self, other: &Object) -> bool {
        match (self, other) {
            (Object::Ingress(a), Object::Ingress(b)) => Arc::ptr_eq(a, b),
            (Object::Service(a), Object::Service(b)) => Arc::ptr_eq(a, b),
            (Object::EndpointSlice(a), Object::EndpointSlice(b)) => Arc::ptr_eq(a, b),
            (Object::TrafficInfra(a), Object::TrafficInfra(b)) => Arc::ptr_eq(a, b),
            (Object::BackendTrafficPolicy(a), Object::BackendTrafficPolicy(b)) => Arc::ptr_eq(a, b),
            (Object::NamespaceConfig(a), Object::NamespaceConfig(b)) => Arc::ptr_eq(a, b),
            (Object::Gateway(a), Object::Gateway(b)) => Arc::ptr_eq(a, b),
            (Object::HttpRoute(a), Object::HttpRoute(b)) => Arc::ptr_eq(a, b),
            (Object::GrpcRoute(a), Object::GrpcRoute(b)) => Arc::ptr_eq(a, b),
            (Object::TlsRoute(a), Object::TlsRoute(b)) => Arc::ptr_eq(a, b),
            (Object::Namespace(a), Object::Namespace(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// `(namespace, name)`, borrowed ([`key_ref`]).
    pub fn key(&self) -> (&str, &str) {
        match self {
            Object::Ingress(o) => key_ref(&**o),
            Object::Service(o) => key_ref(&**o),
            Object::EndpointSlice(o) => key_ref(&**o),
            Object::TrafficInfra(o) => key_ref(&**o),
            Object::BackendTrafficPolicy(o) => key_ref(&**o),
            Object::NamespaceConfig(o) => key_ref(&**o),
            Object::Gateway(o) => key_ref(&**o),
            Object::HttpRoute(o) => key_ref(&**o),
            Object::GrpcRoute(o) => key_ref(&**o),
            Object::TlsRoute(o) => key_ref(&**o),
            Object::Namespace(o) => key_ref(&**o),
        }
    }
}

/// Last-good replacement for one kind of a snapshot: each object that is `valid` is kept (and
/// remembered in `last_good`), each invalid one is replaced by its last valid version (or left out
/// if it never had one), and objects that are gone are forgotten (deleting one does remove it).
/// `None` when nothing was replaced: the snapshot can be used as it is.
pub fn keep_last_good<K>(
    objects: &[K],
    last_good: &mut std::collections::BTreeMap<ObjectRef, K>,
    valid: impl Fn(&K) -> bool,
) -> Option<Vec<K>>
where
    K: kube_core::Resource<DynamicType = ()> + Clone,
{
    let present: std::collections::BTreeSet<ObjectRef> = objects.iter().map(ObjectRef::of).collect();
    last_good.retain(|k, _| present.contains(k));
    let mut replaced = false;
    let kept = objects
        .iter()
        .filter_map(|object| {
            let me = ObjectRef::of(object);
            if valid(object) {
                last_good.insert(me, object.clone());
                Some(object.clone())
            } else {
                replaced = true;
                last_good.get(&me).cloned()
            }
        })
        .collect();
    replaced.then_some(kept)
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
