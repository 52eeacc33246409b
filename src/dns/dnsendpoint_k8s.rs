//! `--dns-provider dnsendpoint` as a [`DnsProvider`]: this cluster's records live in external-dns
//! `DNSEndpoint` objects (one per Ingress, built by [`super::dnsendpoint`]), written by server-side
//! apply through the Kubernetes API. external-dns then publishes them.
//!
//! The planner works on records, so this provider translates both ways: `current` reads weir's
//! DNSEndpoints back into records (with the ownership TXT the planner expects; external-dns keeps its
//! own registry, so no TXT is written), and `apply` regroups the planned record changes per Ingress,
//! applies each changed object whole, and deletes an object whose last endpoint goes. Only this
//! cluster's records are visible here, so the all-zero guard sees a host's last record as the only
//! one: set `--allow-all-zero` when a host's weight 0 must be published.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};

use super::dnsendpoint::{
    api_resource, dns_endpoint, DnsEndpointSpec, PROP_ALIAS, PROP_EVALUATE_TARGET_HEALTH, PROP_TARGET_ZONE,
};
use super::plan::Change;
use super::record::{AliasTarget, DesiredRecords, Ownership, RecordKey, RecordSet, RecordType, TXT_WEIGHT};
use super::route53_alias::{use_aliases, AliasOptions};
use super::{validate, ApplyReport, DnsError, DnsProvider};
use crate::model::ObjectRef;
use crate::reconciler::leader::Fence;

/// The field manager of weir's server-side applies.
pub const FIELD_MANAGER: &str = "weir-controller";
const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=weir";

pub struct DnsEndpointDns {
    client: Client,
    owner: Ownership,
    alias: AliasOptions,
    fence: Fence,
    /// The object of each desired host, from the last `prepare` (the ownership TXT in a change holds
    /// only an id): where `apply` puts a host's records.
    sources: parking_lot::Mutex<BTreeMap<String, ObjectRef>>,
}

/// Records per DNSEndpoint (namespace, name = the Ingress's).
type Objects = BTreeMap<(String, String), BTreeMap<RecordKey, RecordSet>>;

impl DnsEndpointDns {
    /// A provider that always writes (no leader election); see [`Self::with_fence`].
    pub fn new(client: Client, owner: Ownership, alias: AliasOptions) -> Self {
        Self { client, owner, alias, fence: Fence::always(), sources: Default::default() }
    }

    /// Writes each DNSEndpoint only while `fence` is open.
    pub fn with_fence(mut self, fence: Fence) -> Self {
        self.fence = fence;
        self
    }

    fn call_error(operation: &'static str, e: kube::Error) -> DnsError {
        let retryable = match &e {
            kube::Error::Api(s) if s.code == 429 => {
                return DnsError::Throttled { provider: "dnsendpoint", operation, message: e.to_string() }
            }
            kube::Error::Api(s) => s.code == 409 || s.code >= 500,
            _ => true,
        };
        DnsError::Call { provider: "dnsendpoint", operation, message: e.to_string(), retryable }
    }

    /// weir's DNSEndpoints, as records of this cluster grouped per object.
    async fn objects(&self, owner: &Ownership) -> Result<Objects, DnsError> {
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &api_resource());
        let list = api
            .list(&ListParams::default().labels(MANAGED_BY_SELECTOR))
            .await
            .map_err(|e| Self::call_error("list", e))?;
        let mut out = Objects::new();
        for obj in list.items {
            let key = (obj.namespace().unwrap_or_default(), obj.name_any());
            let records = out.entry(key).or_default();
            for r in records_of(&obj).into_iter().filter(|r| r.key.set_identifier == owner.cluster) {
                records.insert(r.key.clone(), r);
            }
        }
        Ok(out)
    }

    async fn write(
        &self,
        namespace: &str,
        name: &str,
        records: &BTreeMap<RecordKey, RecordSet>,
    ) -> Result<(), DnsError> {
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &api_resource());
        if records.is_empty() {
            return match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(Self::call_error("delete", e)),
            };
        }
        // The Ingress gives the owner reference, so that deleting it garbage-collects the object.
        let ingresses: Api<Ingress> = Api::namespaced(self.client.clone(), namespace);
        let ingress =
            ingresses.get_opt(name).await.map_err(|e| Self::call_error("get ingress", e))?.unwrap_or_else(|| {
                let mut i = Ingress::default();
                i.metadata.name = Some(name.to_string());
                i.metadata.namespace = Some(namespace.to_string());
                i
            });
        let refs: Vec<&RecordSet> = records.values().collect();
        let mut obj = dns_endpoint(&ingress, &refs);
        if ingress.metadata.uid.is_none() {
            obj.metadata.owner_references = None;
        }
        api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&obj))
            .await
            .map_err(|e| Self::call_error("apply", e))?;
        Ok(())
    }
}

/// The traffic records of one DNSEndpoint.
pub fn records_of(obj: &DynamicObject) -> Vec<RecordSet> {
    let Ok(spec) = serde_json::from_value::<DnsEndpointSpec>(obj.data["spec"].clone()) else {
        tracing::warn!(namespace = ?obj.namespace(), name = %obj.name_any(), "DNSEndpoint spec is not readable; ignored");
        return Vec::new();
    };
    spec.endpoints
        .into_iter()
        .filter_map(|e| {
            let rtype: RecordType = e.record_type.parse().ok()?;
            let prop = |n: &str| e.provider_specific.iter().find(|p| p.name == n).map(|p| p.value.clone());
            Some(RecordSet {
                key: RecordKey { name: e.dns_name, rtype, set_identifier: e.set_identifier },
                weight: prop("aws/weight").and_then(|w| w.parse().ok()).unwrap_or(0),
                ttl: e.record_ttl.unwrap_or(0),
                values: e.targets,
                health_check_id: prop("aws/health-check-id"),
                alias: (prop(PROP_ALIAS).as_deref() == Some("true")).then(|| AliasTarget {
                    hosted_zone_id: prop(PROP_TARGET_ZONE).unwrap_or_default(),
                    evaluate_target_health: prop(PROP_EVALUATE_TARGET_HEALTH).as_deref() != Some("false"),
                }),
            })
        })
        .collect()
}

/// The ownership TXT record the planner expects beside a host published from `source`.
fn ownership_txt(owner: &Ownership, host: &str, source: &ObjectRef, ttl: u32) -> RecordSet {
    RecordSet {
        key: RecordKey { name: owner.txt_name(host), rtype: RecordType::Txt, set_identifier: owner.cluster.clone() },
        weight: TXT_WEIGHT,
        ttl,
        values: vec![owner.txt_value(source)],
        health_check_id: None,
        alias: None,
    }
}

/// Applies record changes to the per-Ingress groups; returns the objects touched. `sources` is the
/// object of each desired host. Pure.
pub fn regroup(
    objects: &mut Objects,
    changes: &[Change],
    owner: &Ownership,
    sources: &BTreeMap<String, ObjectRef>,
) -> BTreeSet<(String, String)> {
    let mut touched = BTreeSet::new();
    // Where each host goes: a host whose ownership TXT the plan writes goes to its (possibly new)
    // source.
    let mut moves: BTreeMap<String, (String, String)> = BTreeMap::new();
    for change in changes {
        if let Change::Upsert { record, .. } = change {
            if record.key.rtype == RecordType::Txt {
                let host = owner.host_of_txt(&record.key.name);
                if let Some((host, src)) = host.and_then(|h| Some((h, sources.get(h)?))) {
                    moves.insert(host.to_string(), (src.namespace.clone(), src.name.clone()));
                }
            }
        }
    }
    for change in changes {
        let record = change.record();
        if record.key.rtype == RecordType::Txt {
            continue;
        }
        let holder = objects.iter().find(|(_, recs)| recs.contains_key(&record.key)).map(|(k, _)| k.clone());
        if let Some(h) = &holder {
            objects.get_mut(h).expect("holder exists").remove(&record.key);
            touched.insert(h.clone());
        }
        if let Change::Upsert { record, .. } = change {
            let target = moves.get(&record.key.name).cloned().or(holder);
            if let Some(t) = target {
                objects.entry(t.clone()).or_default().insert(record.key.clone(), record.clone());
                touched.insert(t);
            }
        }
    }
    touched
}

#[async_trait::async_trait]
impl DnsProvider for DnsEndpointDns {
    fn name(&self) -> &'static str {
        "dnsendpoint"
    }

    /// Targets that are AWS load balancers become ALIAS endpoints, as external-dns would make them.
    async fn prepare(&self, desired: &mut DesiredRecords) {
        use_aliases(desired, self.alias, |_| false);
        *self.sources.lock() = desired.sources.clone();
    }

    async fn current(&self, _hosts: &BTreeSet<String>, owner: &Ownership) -> Result<Vec<RecordSet>, DnsError> {
        let mut out = Vec::new();
        for ((namespace, name), records) in self.objects(owner).await? {
            let source = ObjectRef::new("Ingress", &namespace, &name);
            let mut hosts = BTreeMap::new();
            for r in records.values() {
                hosts.entry(r.key.name.clone()).or_insert(r.ttl);
            }
            out.extend(records.into_values());
            out.extend(hosts.into_iter().map(|(host, ttl)| ownership_txt(owner, &host, &source, ttl)));
        }
        out.sort();
        Ok(out)
    }

    async fn apply(&self, batches: Vec<Vec<Change>>) -> ApplyReport {
        let mut report = ApplyReport::default();
        let mut changes = Vec::new();
        for change in batches.into_iter().flatten() {
            match validate(change.record()) {
                Ok(()) => changes.push(change),
                Err(e) => report.failed.push((change, e)),
            }
        }
        if changes.is_empty() {
            return report;
        }
        let owner = &self.owner;
        let mut objects = match self.objects(owner).await {
            Ok(o) => o,
            Err(e) => {
                let message = e.to_string();
                for change in changes {
                    let err = DnsError::Call {
                        provider: "dnsendpoint",
                        operation: "list",
                        message: message.clone(),
                        retryable: true,
                    };
                    report.failed.push((change, err));
                }
                return report;
            }
        };
        let before = objects.clone();
        let sources = self.sources.lock().clone();
        let touched = regroup(&mut objects, &changes, owner, &sources);
        let mut failed_objects: BTreeMap<(String, String), String> = BTreeMap::new();
        for key in &touched {
            let records = objects.get(key).cloned().unwrap_or_default();
            // Each object is one write batch: checked right before it is sent.
            if let Err(e) = self.fence.check() {
                failed_objects.insert(key.clone(), e.to_string());
                continue;
            }
            if let Err(e) = self.write(&key.0, &key.1, &records).await {
                tracing::warn!(namespace = %key.0, name = %key.1, error = %e, "writing the DNSEndpoint failed");
                failed_objects.insert(key.clone(), e.to_string());
            }
        }
        // A change landed unless an object that held or now holds its host could not be written.
        let holds = |objs: &Objects, key: &(String, String), host: &str| {
            objs.get(key).is_some_and(|recs| recs.keys().any(|r| r.name == host))
        };
        for change in changes {
            let name = &change.record().key.name;
            let host = owner.host_of_txt(name).unwrap_or(name).to_string();
            let failure = failed_objects
                .iter()
                .find(|(k, _)| holds(&before, k, &host) || holds(&objects, k, &host))
                .map(|(_, m)| m.clone());
            match failure {
                Some(message) => report.failed.push((
                    change,
                    DnsError::Call { provider: "dnsendpoint", operation: "apply", message, retryable: true },
                )),
                None => report.applied.push(change),
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::dnsendpoint::MANAGED_BY;

    fn rec(name: &str, weight: u8) -> RecordSet {
        RecordSet {
            key: RecordKey { name: name.into(), rtype: RecordType::Cname, set_identifier: "eu".into() },
            weight,
            ttl: 60,
            values: vec!["lb.example.net".into()],
            health_check_id: None,
            alias: None,
        }
    }

    fn txt(owner: &Ownership, host: &str, ns: &str, name: &str) -> RecordSet {
        ownership_txt(owner, host, &ObjectRef::new("Ingress", ns, name), 60)
    }

    #[test]
    fn changes_are_regrouped_per_ingress() {
        let owner = Ownership::new("eu");
        let mut objects = Objects::new();
        objects
            .entry(("web".into(), "a".into()))
            .or_default()
            .insert(rec("a.example.com", 100).key, rec("a.example.com", 100));
        objects
            .entry(("web".into(), "a".into()))
            .or_default()
            .insert(rec("x.example.com", 100).key, rec("x.example.com", 100));

        let changes = vec![
            // Weight change of an existing host: stays in its object.
            Change::Upsert { record: rec("a.example.com", 40), previous: Some(rec("a.example.com", 100)) },
            // A new host from Ingress b.
            Change::Upsert { record: rec("b.example.com", 100), previous: None },
            Change::Upsert { record: txt(&owner, "b.example.com", "web", "b"), previous: None },
            // x moves away from a: deleted.
            Change::Delete { record: rec("x.example.com", 100) },
            Change::Delete { record: txt(&owner, "x.example.com", "web", "a") },
        ];
        let sources = BTreeMap::from([("b.example.com".to_string(), ObjectRef::new("Ingress", "web", "b"))]);
        let touched = regroup(&mut objects, &changes, &owner, &sources);
        assert_eq!(
            touched,
            BTreeSet::from([("web".to_string(), "a".to_string()), ("web".to_string(), "b".to_string())])
        );
        let a = &objects[&("web".to_string(), "a".to_string())];
        assert_eq!(a.len(), 1);
        assert_eq!(a.values().next().unwrap().weight, 40);
        let b = &objects[&("web".to_string(), "b".to_string())];
        assert_eq!(b.keys().next().unwrap().name, "b.example.com");
    }

    #[test]
    fn records_read_back_from_a_dns_endpoint() {
        let ingress: Ingress = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop", "namespace": "web", "uid": "u1"}
        }))
        .unwrap();
        let mut r = rec("shop.example.com", 25);
        r.health_check_id = Some("hc-1".into());
        let obj = dns_endpoint(&ingress, &[&r]);
        assert_eq!(records_of(&obj), vec![r]);
        assert_eq!(obj.labels().get("app.kubernetes.io/managed-by").map(String::as_str), Some(MANAGED_BY));
    }

    #[test]
    fn alias_endpoints_read_back() {
        let ingress: Ingress = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop", "namespace": "web", "uid": "u1"}
        }))
        .unwrap();
        let mut r = rec("shop.example.com", 25);
        r.key.rtype = RecordType::Aaaa;
        r.values = vec!["dualstack.lb-1.eu-west-1.elb.amazonaws.com".into()];
        r.alias = Some(AliasTarget { hosted_zone_id: "Z32O12XQLNTSW2".into(), evaluate_target_health: false });
        let obj = dns_endpoint(&ingress, &[&r]);
        assert_eq!(records_of(&obj), vec![r]);
    }
}
