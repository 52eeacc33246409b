//! Builders for the Kubernetes objects tests feed weir: one place for fixtures, shared by the core's
//! unit tests, the weir crate's tests and the integration tests (feature `testkit`).
//!
//! Each builder starts from the smallest object weir accepts and adds what a test states; `build()`
//! gives the typed object, `json()` the same object as the API server would store it (with
//! `apiVersion` and `kind`), for tests that seed the test API server or write manifests.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceSpec, ServiceStatus,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressLoadBalancerIngress,
    IngressLoadBalancerStatus, IngressRule, IngressServiceBackend, IngressSpec, IngressStatus, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde_json::Value;

use crate::crd::{TrafficInfra, TrafficInfraSpec};
use crate::translate::SERVICE_NAME_LABEL;

fn meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta { namespace: Some(namespace.into()), name: Some(name.into()), ..Default::default() }
}

fn insert(map: &mut Option<BTreeMap<String, String>>, key: &str, value: &str) {
    map.get_or_insert_with(BTreeMap::new).insert(key.into(), value.into());
}

/// `address` as a load balancer reports it: `(ip, None)` when it parses as an IP, else `(None, hostname)`.
fn ip_or_hostname(address: &str) -> (Option<String>, Option<String>) {
    match address.parse::<std::net::IpAddr>() {
        Ok(_) => (Some(address.into()), None),
        Err(_) => (None, Some(address.into())),
    }
}

fn to_json(object: &impl Serialize) -> Value {
    serde_json::to_value(object).expect("a Kubernetes object serialises")
}

/// `label` and `annotation` for every builder: each edits the built object's metadata.
pub trait WithMetadata: Sized {
    fn metadata(&mut self) -> &mut ObjectMeta;

    fn label(mut self, key: &str, value: &str) -> Self {
        insert(&mut self.metadata().labels, key, value);
        self
    }

    fn annotation(mut self, key: &str, value: &str) -> Self {
        insert(&mut self.metadata().annotations, key, value);
        self
    }
}

/// An Ingress `namespace/name` with no rules, no annotations and no load-balancer address.
pub fn mk_ingress(namespace: &str, name: &str) -> IngressBuilder {
    IngressBuilder(Ingress { metadata: meta(namespace, name), spec: Some(IngressSpec::default()), status: None })
}

impl WithMetadata for IngressBuilder {
    fn metadata(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

pub struct IngressBuilder(Ingress);

impl IngressBuilder {
    /// A rule for `host`, path `/` (Prefix), to `service`'s port `port`.
    pub fn rule(mut self, host: &str, service: &str, port: i32) -> Self {
        let backend = IngressBackend {
            service: Some(IngressServiceBackend {
                name: service.into(),
                port: Some(ServiceBackendPort { number: Some(port), name: None }),
            }),
            resource: None,
        };
        let path = HTTPIngressPath { path: Some("/".into()), path_type: "Prefix".into(), backend };
        let rule = IngressRule { host: Some(host.into()), http: Some(HTTPIngressRuleValue { paths: vec![path] }) };
        self.spec().rules.get_or_insert_with(Vec::new).push(rule);
        self
    }

    /// A rule for `host` with no HTTP paths (a host weir publishes but that routes nowhere).
    pub fn bare_host(mut self, host: &str) -> Self {
        self.spec().rules.get_or_insert_with(Vec::new).push(IngressRule { host: Some(host.into()), http: None });
        self
    }

    pub fn class(mut self, class: &str) -> Self {
        self.spec().ingress_class_name = Some(class.into());
        self
    }

    /// Adds a load-balancer address to `status`: an IP when `address` parses as one, else a hostname.
    pub fn load_balancer(mut self, address: &str) -> Self {
        let (ip, hostname) = ip_or_hostname(address);
        let entry = IngressLoadBalancerIngress { ip, hostname, ..Default::default() };
        let status = self.0.status.get_or_insert_with(IngressStatus::default);
        let lb = status.load_balancer.get_or_insert_with(IngressLoadBalancerStatus::default);
        lb.ingress.get_or_insert_with(Vec::new).push(entry);
        self
    }

    fn spec(&mut self) -> &mut IngressSpec {
        self.0.spec.get_or_insert_with(IngressSpec::default)
    }

    pub fn build(self) -> Ingress {
        self.0
    }

    pub fn json(self) -> Value {
        to_json(&self.0)
    }
}

/// A ClusterIP Service `namespace/name` with no ports, labels or annotations.
pub fn mk_service(namespace: &str, name: &str) -> ServiceBuilder {
    ServiceBuilder(Service { metadata: meta(namespace, name), spec: Some(ServiceSpec::default()), status: None })
}

impl WithMetadata for ServiceBuilder {
    fn metadata(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

pub struct ServiceBuilder(Service);

impl ServiceBuilder {
    pub fn port(mut self, port: i32) -> Self {
        let spec = self.0.spec.get_or_insert_with(ServiceSpec::default);
        spec.ports.get_or_insert_with(Vec::new).push(ServicePort { port, ..Default::default() });
        self
    }

    /// `type: LoadBalancer` with `address` (an IP, else a hostname) in `status`.
    pub fn load_balancer(mut self, address: &str) -> Self {
        self.0.spec.get_or_insert_with(ServiceSpec::default).type_ = Some("LoadBalancer".into());
        let (ip, hostname) = ip_or_hostname(address);
        let entry = LoadBalancerIngress { ip, hostname, ..Default::default() };
        let status = self.0.status.get_or_insert_with(ServiceStatus::default);
        let lb = status.load_balancer.get_or_insert_with(LoadBalancerStatus::default);
        lb.ingress.get_or_insert_with(Vec::new).push(entry);
        self
    }

    /// `type: ExternalName` pointing at `name`.
    pub fn external_name(mut self, name: &str) -> Self {
        let spec = self.0.spec.get_or_insert_with(ServiceSpec::default);
        spec.type_ = Some("ExternalName".into());
        spec.external_name = Some(name.into());
        self
    }

    pub fn build(self) -> Service {
        self.0
    }

    pub fn json(self) -> Value {
        to_json(&self.0)
    }
}

/// What an endpoint's `conditions` say, in the combinations Kubernetes produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointState {
    /// ready, serving, not terminating.
    Ready,
    /// not ready, not serving, not terminating (starting, or failing its readiness probe).
    NotReady,
    /// terminating but still serving (draining: finishes in-flight work).
    Draining,
    /// terminating and no longer serving.
    Gone,
    /// no conditions at all (older producers): Kubernetes says to treat it as ready.
    Unknown,
}

impl EndpointState {
    fn conditions(self) -> Option<EndpointConditions> {
        let (ready, serving, terminating) = match self {
            EndpointState::Ready => (true, true, false),
            EndpointState::NotReady => (false, false, false),
            EndpointState::Draining => (false, true, true),
            EndpointState::Gone => (false, false, true),
            EndpointState::Unknown => return None,
        };
        Some(EndpointConditions { ready: Some(ready), serving: Some(serving), terminating: Some(terminating) })
    }
}

/// An IPv4 EndpointSlice `namespace/{service}-1` of `service`, with no endpoints and no ports.
pub fn mk_slice(namespace: &str, service: &str) -> SliceBuilder {
    let mut metadata = meta(namespace, &format!("{service}-1"));
    insert(&mut metadata.labels, SERVICE_NAME_LABEL, service);
    SliceBuilder(EndpointSlice { metadata, address_type: "IPv4".into(), endpoints: Some(Vec::new()), ports: None })
}

impl WithMetadata for SliceBuilder {
    fn metadata(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

pub struct SliceBuilder(EndpointSlice);

impl SliceBuilder {
    /// Renames the slice (a Service may have several).
    pub fn name(mut self, name: &str) -> Self {
        self.0.metadata.name = Some(name.into());
        self
    }

    pub fn port(mut self, port: i32) -> Self {
        self.0.ports.get_or_insert_with(Vec::new).push(EndpointPort { port: Some(port), ..Default::default() });
        self
    }

    pub fn endpoint(mut self, address: &str, state: EndpointState) -> Self {
        let endpoint =
            Endpoint { addresses: vec![address.into()], conditions: state.conditions(), ..Default::default() };
        self.0.endpoints.get_or_insert_with(Vec::new).push(endpoint);
        self
    }

    pub fn build(self) -> EndpointSlice {
        self.0
    }

    pub fn json(self) -> Value {
        to_json(&self.0)
    }
}

/// A TrafficInfra `namespace/name` with the CRD's defaults.
pub fn mk_traffic_infra(namespace: &str, name: &str) -> TrafficInfraBuilder {
    let mut ti = TrafficInfra::new(name, TrafficInfraSpec::default());
    ti.metadata.namespace = Some(namespace.into());
    TrafficInfraBuilder(ti)
}

impl WithMetadata for TrafficInfraBuilder {
    fn metadata(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

pub struct TrafficInfraBuilder(TrafficInfra);

impl TrafficInfraBuilder {
    /// Planner Services named in `spec.xds.discovery.services`.
    pub fn services(mut self, services: &[&str]) -> Self {
        self.0.spec.xds.discovery.services = services.iter().map(|s| s.to_string()).collect();
        self
    }

    /// `spec.trafficDefaults`.
    pub fn defaults(mut self, blue: u32, green: u32) -> Self {
        self.0.spec.traffic_defaults.blue_weight = blue;
        self.0.spec.traffic_defaults.green_weight = green;
        self
    }

    pub fn node_id(mut self, node_id: &str) -> Self {
        self.0.spec.xds.node_id = node_id.into();
        self
    }

    pub fn build(self) -> TrafficInfra {
        self.0
    }

    pub fn json(self) -> Value {
        to_json(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_carries_api_version_and_kind_as_the_api_server_stores_them() {
        let cases = [
            (mk_ingress("d", "i").json(), "networking.k8s.io/v1", "Ingress"),
            (mk_service("d", "s").json(), "v1", "Service"),
            (mk_slice("d", "s").json(), "discovery.k8s.io/v1", "EndpointSlice"),
            (mk_traffic_infra("d", "t").json(), "weir.dev/v1alpha1", "TrafficInfra"),
        ];
        for (json, api_version, kind) in cases {
            assert_eq!(json["apiVersion"], api_version, "{json}");
            assert_eq!(json["kind"], kind, "{json}");
            assert_eq!(json["metadata"]["namespace"], "d", "{json}");
        }
    }

    #[test]
    fn endpoint_states_are_the_condition_combinations_kubernetes_writes() {
        let slice = mk_slice("d", "s")
            .endpoint("10.0.0.1", EndpointState::Ready)
            .endpoint("10.0.0.2", EndpointState::Draining)
            .endpoint("10.0.0.3", EndpointState::Unknown)
            .build();
        let conditions: Vec<_> = slice.endpoints.unwrap().into_iter().map(|e| e.conditions).collect();
        assert_eq!(
            conditions,
            vec![
                Some(EndpointConditions { ready: Some(true), serving: Some(true), terminating: Some(false) }),
                Some(EndpointConditions { ready: Some(false), serving: Some(true), terminating: Some(true) }),
                None,
            ]
        );
        assert_eq!(slice.metadata.labels.unwrap()[SERVICE_NAME_LABEL], "s");
    }

    #[test]
    fn load_balancer_addresses_go_to_ip_or_hostname() {
        let ing = mk_ingress("d", "i").load_balancer("192.0.2.1").load_balancer("lb.example.net").build();
        let lb = ing.status.unwrap().load_balancer.unwrap().ingress.unwrap();
        assert_eq!(lb[0].ip.as_deref(), Some("192.0.2.1"));
        assert_eq!(lb[1].hostname.as_deref(), Some("lb.example.net"));
    }
}
