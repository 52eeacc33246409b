//! external-dns mode (`--dns-provider dnsendpoint`): the `externaldns.k8s.io/v1alpha1` DNSEndpoint
//! objects the earlier controller wrote, one per Ingress, for teams that already run external-dns.
//!
//! Pure: this module only builds the objects. Applying them (server-side apply) belongs to the
//! Kubernetes provider. The shape follows the earlier controller: same name and namespace as the
//! Ingress, a controller owner reference to it (so deleting the Ingress deletes the endpoint), one
//! endpoint per host with `setIdentifier` = cluster name and the provider-specific properties
//! `aws/weight` and, when set, `aws/health-check-id`; a target that is an AWS load balancer is an
//! `A` (and, dual-stack, `AAAA`) endpoint with external-dns's `alias: "true"`,
//! `aws/target-hosted-zone` and `aws/evaluate-target-health`. Ownership TXT records are not included:
//! external-dns keeps its own registry.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use super::record::{DesiredRecords, RecordSet};
use crate::ir::DesiredState;
use crate::model::ObjectRef;

pub const GROUP: &str = "externaldns.k8s.io";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "DNSEndpoint";
pub const MANAGED_BY: &str = "weir";
/// external-dns's provider-specific properties of an AWS ALIAS (endpoint `alias`, provider/aws).
pub const PROP_ALIAS: &str = "alias";
pub const PROP_TARGET_ZONE: &str = "aws/target-hosted-zone";
pub const PROP_EVALUATE_TARGET_HEALTH: &str = "aws/evaluate-target-health";

/// The DNSEndpoint API resource (plural `dnsendpoints`).
pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(GROUP, VERSION, KIND))
}

/// `spec` of a DNSEndpoint, as external-dns reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsEndpointSpec {
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub dns_name: String,
    pub targets: Vec<String>,
    pub record_type: String,
    /// external-dns spells it `recordTTL`.
    #[serde(rename = "recordTTL", skip_serializing_if = "Option::is_none")]
    pub record_ttl: Option<u32>,
    pub set_identifier: String,
    pub provider_specific: Vec<ProviderSpecific>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderSpecific {
    pub name: String,
    pub value: String,
}

/// The endpoints of some traffic records (TXT records are skipped), in record order.
pub fn endpoints(records: &[&RecordSet]) -> Vec<Endpoint> {
    records
        .iter()
        .filter(|r| r.key.rtype.is_traffic())
        .map(|r| {
            let mut provider_specific =
                vec![ProviderSpecific { name: "aws/weight".into(), value: r.weight.to_string() }];
            if let Some(id) = &r.health_check_id {
                provider_specific.push(ProviderSpecific { name: "aws/health-check-id".into(), value: id.clone() });
            }
            // external-dns's own ALIAS properties; the target zone is given so that it need not guess.
            if let Some(alias) = &r.alias {
                provider_specific.extend([
                    ProviderSpecific { name: PROP_ALIAS.into(), value: "true".into() },
                    ProviderSpecific { name: PROP_TARGET_ZONE.into(), value: alias.hosted_zone_id.clone() },
                    ProviderSpecific {
                        name: PROP_EVALUATE_TARGET_HEALTH.into(),
                        value: alias.evaluate_target_health.to_string(),
                    },
                ]);
            }
            Endpoint {
                dns_name: r.key.name.clone(),
                targets: r.values.clone(),
                record_type: r.key.rtype.as_str().to_string(),
                record_ttl: Some(r.ttl),
                set_identifier: r.key.set_identifier.clone(),
                provider_specific,
            }
        })
        .collect()
}

/// The DNSEndpoint for one Ingress and this cluster's records of its hosts.
pub fn dns_endpoint(ingress: &Ingress, records: &[&RecordSet]) -> DynamicObject {
    let mut obj =
        DynamicObject::new(&ingress.name_any(), &api_resource()).within(&ingress.namespace().unwrap_or_default());
    obj.metadata.labels = Some(BTreeMap::from([("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string())]));
    obj.metadata.owner_references = Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "networking.k8s.io/v1".into(),
        kind: "Ingress".into(),
        name: ingress.name_any(),
        uid: ingress.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    let spec = DnsEndpointSpec { endpoints: endpoints(records) };
    obj.data = serde_json::json!({ "spec": spec });
    obj
}

/// One DNSEndpoint per Ingress that has records to publish. Hosts kept as published (`keep`) have no
/// records in `records` and are left out; the Kubernetes provider must then leave those endpoints
/// untouched rather than apply an object without them.
pub fn dns_endpoints(state: &DesiredState, records: &DesiredRecords, ingresses: &[Ingress]) -> Vec<DynamicObject> {
    let mut by_source: BTreeMap<ObjectRef, Vec<&RecordSet>> = BTreeMap::new();
    for record in records.records.iter().filter(|r| r.key.rtype.is_traffic()) {
        if let Some(intent) = state.intent(&record.key.name) {
            by_source.entry(intent.source.clone()).or_default().push(record);
        }
    }
    ingresses.iter().filter_map(|ing| by_source.get(&ObjectRef::of(ing)).map(|recs| dns_endpoint(ing, recs))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::record::{RecordKey, RecordType};

    fn ingress() -> Ingress {
        serde_yaml::from_str(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: shop\n  namespace: web\n  uid: 1234-abcd\n",
        )
        .unwrap()
    }

    fn record(name: &str, rtype: RecordType, weight: u8, values: &[&str], hc: Option<&str>) -> RecordSet {
        RecordSet {
            key: RecordKey { name: name.into(), rtype, set_identifier: "eu-1".into() },
            weight,
            ttl: 60,
            values: values.iter().map(|s| s.to_string()).collect(),
            health_check_id: hc.map(str::to_string),
            alias: None,
        }
    }

    /// The object as the earlier controller wrote it (plus TTL and a managed-by label).
    const GOLDEN: &str = r#"apiVersion: externaldns.k8s.io/v1alpha1
kind: DNSEndpoint
metadata:
  labels:
    app.kubernetes.io/managed-by: weir
  name: shop
  namespace: web
  ownerReferences:
  - apiVersion: networking.k8s.io/v1
    blockOwnerDeletion: true
    controller: true
    kind: Ingress
    name: shop
    uid: 1234-abcd
spec:
  endpoints:
  - dnsName: shop.example.com
    providerSpecific:
    - name: aws/weight
      value: '25'
    - name: aws/health-check-id
      value: hc-1
    recordTTL: 60
    recordType: CNAME
    setIdentifier: eu-1
    targets:
    - lb-1.eu-west-1.elb.amazonaws.com
  - dnsName: static.example.com
    providerSpecific:
    - name: aws/weight
      value: '0'
    recordTTL: 60
    recordType: A
    setIdentifier: eu-1
    targets:
    - 192.0.2.1
    - 192.0.2.2
"#;

    #[test]
    fn golden_dns_endpoint() {
        let a = record("shop.example.com", RecordType::Cname, 25, &["lb-1.eu-west-1.elb.amazonaws.com"], Some("hc-1"));
        let b = record("static.example.com", RecordType::A, 0, &["192.0.2.1", "192.0.2.2"], None);
        let txt = record("_weir.shop.example.com", RecordType::Txt, 1, &["heritage=weir"], None);
        let obj = dns_endpoint(&ingress(), &[&a, &txt, &b]);
        let yaml = serde_yaml::to_string(&obj).unwrap();
        // Round trip through a Value so that key order is canonical on both sides.
        let got: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        let want: serde_yaml::Value = serde_yaml::from_str(GOLDEN).unwrap();
        pretty_assertions::assert_eq!(got, want, "\n{yaml}");
    }

    #[test]
    fn one_object_per_ingress_from_desired_state() {
        use crate::dns::record::{Ownership, RecordOptions};
        use crate::reconciler::PipelineConfig;
        use crate::translate::TranslateConfig;
        let text = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop, namespace: web, uid: u-1}
spec:
  rules:
    - host: shop.example.com
      http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: app, port: {number: 80}}}}]}
    - host: www.example.com
      http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: app, port: {number: 80}}}}]}
status: {loadBalancer: {ingress: [{hostname: lb.example.net}]}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: idle, namespace: web, uid: u-2}
spec:
  rules:
    - host: idle.example.com
      http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: app, port: {number: 80}}}}]}
---
apiVersion: v1
kind: Service
metadata: {name: app, namespace: web}
spec: {ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: app-1, namespace: web, labels: {kubernetes.io/service-name: app}}
addressType: IPv4
endpoints: [{addresses: [10.0.0.1], conditions: {ready: true}}]
"#;
        let objects = crate::providers::file::parse_manifests(text).unwrap();
        let snapshot = crate::providers::file::snapshot_of(&objects, 1);
        let cfg = PipelineConfig {
            translate: TranslateConfig { binding_domain: "example.com".parse().unwrap(), ..TranslateConfig::default() },
            owner: Ownership::new("eu-1"),
            records: RecordOptions { ttl: 30, health_check_id: Some("hc-9".into()) },
            allow_all_zero: false,
        };
        let (state, records) = cfg.desired(&snapshot, 50, &Default::default());
        let objs = dns_endpoints(&state, &records, &snapshot.ingresses);
        // The Ingress without a load balancer has no records yet, hence no object.
        assert_eq!(objs.len(), 1);
        let obj = &objs[0];
        assert_eq!(obj.metadata.name.as_deref(), Some("shop"));
        assert_eq!(obj.metadata.owner_references.as_ref().unwrap()[0].uid, "u-1");
        let spec: DnsEndpointSpec = serde_json::from_value(obj.data["spec"].clone()).unwrap();
        let names: Vec<&str> = spec.endpoints.iter().map(|e| e.dns_name.as_str()).collect();
        assert_eq!(names, ["shop.example.com", "www.example.com"]);
        for e in &spec.endpoints {
            assert_eq!(e.set_identifier, "eu-1");
            assert_eq!(e.targets, ["lb.example.net"]);
            assert_eq!(e.record_ttl, Some(30));
            assert_eq!(
                e.provider_specific,
                vec![
                    ProviderSpecific { name: "aws/weight".into(), value: "50".into() },
                    ProviderSpecific { name: "aws/health-check-id".into(), value: "hc-9".into() },
                ]
            );
        }
    }

    #[test]
    fn api_resource_is_dnsendpoints() {
        let ar = api_resource();
        assert_eq!(ar.plural, "dnsendpoints");
        assert_eq!(ar.api_version, "externaldns.k8s.io/v1alpha1");
    }

    #[test]
    fn spec_reads_back() {
        let a = record("shop.example.com", RecordType::Cname, 100, &["lb"], None);
        let obj = dns_endpoint(&ingress(), &[&a]);
        let spec: DnsEndpointSpec = serde_json::from_value(obj.data["spec"].clone()).unwrap();
        assert_eq!(
            spec.endpoints[0].provider_specific,
            vec![ProviderSpecific { name: "aws/weight".into(), value: "100".into() }]
        );
    }

    /// An ALIAS as external-dns's AWS provider reads it: type A/AAAA, `alias: "true"`, the target's
    /// zone and EvaluateTargetHealth.
    #[test]
    fn alias_records_are_alias_endpoints() {
        let mut a = record("shop.example.com", RecordType::A, 30, &["lb-1.elb.eu-west-1.amazonaws.com"], None);
        a.alias = Some(crate::dns::record::AliasTarget {
            hosted_zone_id: "Z2IFOLAFXWLO4F".into(),
            evaluate_target_health: true,
        });
        let got = serde_json::to_value(endpoints(&[&a])).unwrap();
        let want = serde_json::json!([{
            "dnsName": "shop.example.com",
            "targets": ["lb-1.elb.eu-west-1.amazonaws.com"],
            "recordType": "A",
            "recordTTL": 60,
            "setIdentifier": "eu-1",
            "providerSpecific": [
                {"name": "aws/weight", "value": "30"},
                {"name": "alias", "value": "true"},
                {"name": "aws/target-hosted-zone", "value": "Z2IFOLAFXWLO4F"},
                {"name": "aws/evaluate-target-health", "value": "true"},
            ],
        }]);
        assert_eq!(got, want);
    }
}
