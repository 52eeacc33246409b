//! Desired records vs published records → an ordered plan of changes, in batches that respect
//! Route53's limits. Pure.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::adopt::Adoption;
use super::record::{DesiredRecords, Hold, Ownership, RecordKey, RecordSet, RecordType};
use crate::ir::{InputKind, Refusal};
use crate::model::ObjectRef;

/// One change to one record set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "UPPERCASE")]
pub enum Change {
    /// Create or replace. `previous` is what was published, for reports.
    Upsert {
        record: RecordSet,
        #[serde(skip_serializing_if = "Option::is_none")]
        previous: Option<RecordSet>,
    },
    /// Delete exactly this record set (Route53 requires the published values).
    Delete { record: RecordSet },
}

impl Change {
    pub fn record(&self) -> &RecordSet {
        match self {
            Change::Upsert { record, .. } | Change::Delete { record } => record,
        }
    }

    pub fn action(&self) -> &'static str {
        match self {
            Change::Upsert { .. } => "UPSERT",
            Change::Delete { .. } => "DELETE",
        }
    }

    /// Route53 counts every value as one element, and an UPSERT twice.
    pub fn elements(&self) -> usize {
        self.record().values.len() * self.multiplier()
    }

    /// Characters of all values, an UPSERT twice.
    pub fn characters(&self) -> usize {
        self.record().values.iter().map(String::len).sum::<usize>() * self.multiplier()
    }

    fn multiplier(&self) -> usize {
        match self {
            Change::Upsert { .. } => 2,
            Change::Delete { .. } => 1,
        }
    }
}

/// The changes of one host: applied together, so a traffic record never lands without its owner TXT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostChanges {
    pub host: String,
    pub changes: Vec<Change>,
}

impl HostChanges {
    fn elements(&self) -> usize {
        self.changes.iter().map(Change::elements).sum()
    }
    fn characters(&self) -> usize {
        self.changes.iter().map(Change::characters).sum()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Per host, in host order; within a host, in the order they must be applied.
    pub hosts: Vec<HostChanges>,
    /// Changes refused by the planner (all-zero guard, records weir does not own).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refusals: Vec<Refusal>,
    /// Hosts kept at a published weight that is not the one derived from the cluster weight (or
    /// whose weight cannot be derived): while any is held, the weight is not acknowledged.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<HeldHost>,
    /// Hosts taken over from external-dns by this plan (`--adopt-owner`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub adopted: Vec<Adopted>,
}

/// A host this plan takes over from external-dns: weir's ownership TXT and the record are upserted and
/// the registry TXT deleted, in the host's batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Adopted {
    pub host: String,
    pub external_owner: String,
    /// The registry TXT names deleted.
    pub registry_txt: Vec<String>,
}

/// A host whose published records stay off the weight the cluster weight asks for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct HeldHost {
    pub host: String,
    /// The Ingress to blame.
    pub source: ObjectRef,
    /// What this cluster publishes for it now (`None`: nothing).
    pub published: Option<u8>,
    /// The weight derived for it (`None`: not derivable).
    pub derived: Option<u8>,
    /// Why it is held, in words.
    pub reason: String,
}

impl HeldHost {
    pub fn message(&self, cluster: &str) -> String {
        let show = |w: Option<u8>| w.map_or_else(|| "none".to_string(), |w| w.to_string());
        format!(
            "{} is held at its published weight ({}) in cluster {cluster}, not the derived weight ({}): {}; the \
             cluster weight is not acknowledged (CurrentWeight is not written) until this is fixed",
            self.host,
            show(self.published),
            show(self.derived),
            self.reason
        )
    }
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    pub fn changes(&self) -> impl Iterator<Item = &Change> {
        self.hosts.iter().flat_map(|h| h.changes.iter())
    }

    pub fn len(&self) -> usize {
        self.hosts.iter().map(|h| h.changes.len()).sum()
    }

    /// Whether every traffic record will carry the desired weight once the plan is applied: false
    /// when the all-zero guard held a weight back or a host is kept off its derived weight, so the
    /// cluster weight must not be acknowledged.
    pub fn reaches_desired_weights(&self) -> bool {
        self.held.is_empty() && !self.refusals.iter().any(|r| r.kind == InputKind::AllZeroGuard)
    }

    /// Splits the plan into batches within `limits`, never splitting one host's changes.
    pub fn batches(&self, limits: BatchLimits) -> Vec<Vec<Change>> {
        let mut batches = Vec::new();
        let mut current: Vec<Change> = Vec::new();
        let (mut elements, mut characters) = (0, 0);
        for host in &self.hosts {
            let (e, c) = (host.elements(), host.characters());
            if !current.is_empty() && (elements + e > limits.elements || characters + c > limits.characters) {
                batches.push(std::mem::take(&mut current));
                elements = 0;
                characters = 0;
            }
            current.extend(host.changes.iter().cloned());
            elements += e;
            characters += c;
        }
        if !current.is_empty() {
            batches.push(current);
        }
        batches
    }
}

/// Route53's per-request limits for `ChangeResourceRecordSets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub elements: usize,
    pub characters: usize,
}

impl BatchLimits {
    pub const ROUTE53: BatchLimits = BatchLimits { elements: 1000, characters: 32_000 };
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self::ROUTE53
    }
}

/// Plans the changes that make the published records of this cluster equal to `desired`.
///
/// `current` holds what is published at the desired hosts (every cluster's records, so that the
/// all-zero guard can see the others) and every record this cluster owns elsewhere (so that records of
/// removed hosts are deleted). Records with this cluster's set identifier but no ownership TXT are
/// never touched.
pub fn plan(desired: &DesiredRecords, current: &[RecordSet], owner: &Ownership, allow_all_zero: bool) -> Plan {
    let by_host = published_by_host(current, owner);
    let wanted = wanted_by_host(desired, owner);
    let mut plan = Plan::default();
    let hosts: BTreeSet<&str> = by_host.keys().map(String::as_str).chain(wanted.keys().copied()).collect();
    for host in hosts {
        let empty = HostView::default();
        let view = by_host.get(host).unwrap_or(&empty);
        if let Some(hold) = desired.keep.get(host) {
            plan.held.extend(held(host, hold, view));
            continue;
        }
        let records = wanted.get(host).map(Vec::as_slice).unwrap_or_default();
        let has_our_records = !view.ours.is_empty();
        let adopting = desired.adopt.get(host).filter(|_| has_our_records && !view.owned);
        if has_our_records && !view.owned && adopting.is_none() {
            if !records.is_empty() {
                plan.refusals.push(not_owned(host, desired, owner));
            }
            continue;
        }
        if records.is_empty() && !view.owned {
            continue;
        }
        let upserts = upserts(host, records, view, desired, owner, allow_all_zero, &mut plan.refusals);
        let wanted_keys: BTreeSet<&RecordKey> = records.iter().map(|r| &r.key).collect();
        let deletes: Vec<Change> = view
            .ours
            .values()
            .filter(|r| !wanted_keys.contains(&r.key))
            .map(|r| Change::Delete { record: (*r).clone() })
            .collect();
        let changes = ordered(host, upserts, deletes, adopting);
        if let Some(adoption) = adopting {
            plan.adopted.push(Adopted {
                host: host.to_string(),
                external_owner: adoption.external_owner.clone(),
                registry_txt: adoption.registry.iter().map(|r| r.key.name.clone()).collect(),
            });
        }
        if !changes.is_empty() {
            plan.hosts.push(HostChanges { host: host.to_string(), changes });
        }
    }
    plan.refusals.sort();
    plan
}

/// What is published, by host (a TXT under its host's name): this cluster's records, whether it
/// owns them, and the other clusters' traffic records.
fn published_by_host<'a>(current: &'a [RecordSet], owner: &Ownership) -> BTreeMap<String, HostView<'a>> {
    let mut by_host: BTreeMap<String, HostView> = BTreeMap::new();
    for record in current {
        let host = match record.key.rtype {
            RecordType::Txt => match owner.host_of_txt(&record.key.name) {
                Some(h) => h.to_string(),
                None => continue,
            },
            _ => record.key.name.clone(),
        };
        let view = by_host.entry(host).or_default();
        if record.key.set_identifier != owner.cluster {
            if record.key.rtype.is_traffic() {
                view.others.push(record);
            }
        } else if record.key.rtype == RecordType::Txt {
            if owner.is_owner_txt(record) {
                view.owned = true;
            } else {
                view.foreign_txt = true;
            }
            view.ours.insert(record.key.clone(), record);
        } else {
            view.ours.insert(record.key.clone(), record);
        }
    }
    by_host
}

/// The desired records, by host (a TXT under its host's name).
fn wanted_by_host<'a>(desired: &'a DesiredRecords, owner: &Ownership) -> BTreeMap<&'a str, Vec<&'a RecordSet>> {
    let mut wanted: BTreeMap<&str, Vec<&RecordSet>> = BTreeMap::new();
    for record in &desired.records {
        let host = match record.key.rtype {
            RecordType::Txt => owner.host_of_txt(&record.key.name).unwrap_or(&record.key.name),
            _ => &record.key.name,
        };
        wanted.entry(host).or_default().push(record);
    }
    wanted
}

/// A host kept at its published weight: reported unless every published record is already at the
/// derived weight.
fn held(host: &str, hold: &Hold, view: &HostView) -> Option<HeldHost> {
    let published: Vec<u8> = view.ours.values().filter(|r| r.key.rtype.is_traffic()).map(|r| r.weight).collect();
    let at_derived = !published.is_empty() && published.iter().all(|w| Some(*w) == hold.weight);
    (!at_derived).then(|| HeldHost {
        host: host.to_string(),
        source: hold.source.clone(),
        published: published.iter().copied().max(),
        derived: hold.weight,
        reason: hold.reason.describe().to_string(),
    })
}

/// The refusal of a host whose records with this cluster's set identifier weir does not own.
fn not_owned(host: &str, desired: &DesiredRecords, owner: &Ownership) -> Refusal {
    Refusal {
        object: desired.source_of(host),
        kind: InputKind::Ownership,
        reason: "RecordNotOwned".into(),
        message: format!(
            "{host} already has records with set identifier {:?} that weir does not own (no \
             ownership TXT at {}); weir leaves them alone; delete them or pick another cluster name",
            owner.cluster,
            owner.txt_name(host)
        ),
    }
}

/// The upserts of the records that differ from what is published, with the all-zero guard: a
/// weight of 0 stays at the published weight while every other cluster's record is 0 or absent
/// (unless `allow_all_zero`), and is refused in `refusals`.
fn upserts(
    host: &str,
    records: &[&RecordSet],
    view: &HostView,
    desired: &DesiredRecords,
    owner: &Ownership,
    allow_all_zero: bool,
    refusals: &mut Vec<Refusal>,
) -> Vec<Change> {
    let mut upserts = Vec::new();
    for &record in records {
        let mut record = record.clone();
        let previous = view.ours.get(&record.key).copied();
        if record.key.rtype.is_traffic() && record.weight == 0 && !allow_all_zero {
            let published = view.ours.values().filter(|r| r.key.rtype.is_traffic()).map(|r| r.weight).max();
            let others_zero = view.others.iter().all(|r| r.weight == 0);
            if let Some(w) = published.filter(|w| *w > 0) {
                if others_zero {
                    refusals.push(Refusal {
                        object: desired.source_of(host),
                        kind: InputKind::AllZeroGuard,
                        reason: "AllZeroGuard".into(),
                        message: format!(
                            "refusing to set {host} to weight 0 in cluster {}: every other cluster's record \
                             for it is 0 or absent, and Route53 would then split traffic equally; raise \
                             another cluster's weight first, or run with --allow-all-zero",
                            owner.cluster
                        ),
                    });
                    record.weight = w;
                }
            }
        }
        if previous != Some(&record) {
            upserts.push(Change::Upsert { record, previous: previous.cloned() });
        }
    }
    upserts
}

/// One host's changes in the order they must be applied.
fn ordered(host: &str, mut upserts: Vec<Change>, mut deletes: Vec<Change>, adopting: Option<&Adoption>) -> Vec<Change> {
    // Traffic records go before their TXT when deleting, after it when creating: a traffic record is
    // never published without an owner marker.
    deletes.sort_by_key(|c| c.record().key.rtype == RecordType::Txt);
    upserts.sort_by_key(|c| c.record().key.rtype != RecordType::Txt);
    let (delete_txt, delete_traffic): (Vec<Change>, Vec<Change>) =
        deletes.into_iter().partition(|c| c.record().key.rtype == RecordType::Txt);
    // Adoption: external-dns's mark goes last, after weir's own is written (one batch, so the
    // name answers throughout and is never left unowned), except an old-format mark at the name
    // itself when a CNAME is written there (a CNAME shares its name with nothing).
    let (registry_first, registry_last): (Vec<Change>, Vec<Change>) = adopting
        .map(|a| a.registry.iter().map(|r| Change::Delete { record: r.clone() }).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .partition(|c| {
            c.record().key.name == host
                && upserts.iter().any(|u| u.record().key.rtype == RecordType::Cname && u.record().key.name == host)
        });
    // A type change (CNAME ↔ A) must delete the old type before the new one is created.
    let mut changes = Vec::new();
    changes.extend(delete_traffic);
    changes.extend(registry_first);
    changes.extend(upserts);
    changes.extend(delete_txt);
    changes.extend(registry_last);
    changes
}

#[derive(Default)]
struct HostView<'a> {
    /// This cluster's records for the host and its TXT name.
    ours: BTreeMap<RecordKey, &'a RecordSet>,
    /// Other clusters' traffic records for the host.
    others: Vec<&'a RecordSet>,
    /// An ownership TXT of this cluster exists.
    owned: bool,
    foreign_txt: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::record::RecordOptions;
    use crate::ir::{DesiredState, DnsIntent, Factors, Targets};

    fn owner() -> Ownership {
        Ownership::new("eu")
    }

    fn intent(host: &str, weight: Option<u8>, targets: Targets) -> DnsIntent {
        DnsIntent {
            host: host.into(),
            source: ObjectRef::new("Ingress", "shop", "web"),
            targets,
            factors: Factors { cluster: 100, annotation: Some(100), healthy: true, unhealthy_reason: None },
            weight,
            traffic: None,
        }
    }

    fn cname(target: &str) -> Targets {
        Targets { hostnames: vec![target.into()], ..Default::default() }
    }

    fn ipv4(ip: &str) -> Targets {
        Targets { ipv4: vec![ip.parse().unwrap()], ..Default::default() }
    }

    fn desired(intents: Vec<DnsIntent>) -> DesiredRecords {
        let mut dns = intents;
        dns.sort_by(|a, b| a.host.cmp(&b.host));
        DesiredRecords::build(&DesiredState { dns, refusals: vec![] }, &owner(), &RecordOptions::default())
    }

    /// What is published after this plan lands on `current` (the provider's contract).
    fn applied(current: &[RecordSet], plan: &Plan) -> Vec<RecordSet> {
        let mut map: BTreeMap<RecordKey, RecordSet> = current.iter().map(|r| (r.key.clone(), r.clone())).collect();
        for c in plan.changes() {
            match c {
                Change::Upsert { record, .. } => {
                    map.insert(record.key.clone(), record.clone());
                }
                Change::Delete { record } => {
                    assert_eq!(map.remove(&record.key).as_ref(), Some(record), "a delete names the published record");
                }
            }
        }
        map.into_values().collect()
    }

    fn other(cluster: &str, host: &str, weight: u8) -> RecordSet {
        RecordSet {
            key: RecordKey { name: host.into(), rtype: RecordType::Cname, set_identifier: cluster.into() },
            weight,
            ttl: 60,
            values: vec![format!("lb.{cluster}.example.net")],
            health_check_id: None,
            alias: None,
        }
    }

    #[test]
    fn new_host_creates_txt_before_traffic_and_replanning_is_empty() {
        let d = desired(vec![intent("a.example.com", Some(50), cname("lb.eu.example.net"))]);
        let p = plan(&d, &[], &owner(), false);
        let actions: Vec<(&str, RecordType)> = p.changes().map(|c| (c.action(), c.record().key.rtype)).collect();
        assert_eq!(actions, [("UPSERT", RecordType::Txt), ("UPSERT", RecordType::Cname)]);
        let now = applied(&[], &p);
        let again = plan(&d, &now, &owner(), false);
        assert!(again.is_empty(), "{again:?}");
        assert!(again.batches(BatchLimits::ROUTE53).is_empty(), "an empty plan makes no write calls");
    }

    #[test]
    fn an_old_format_ownership_txt_is_ours_and_rewritten_with_the_id() {
        let d = desired(vec![intent("a.example.com", Some(50), cname("lb.eu.example.net"))]);
        let mut current = applied(&[], &plan(&d, &[], &owner(), false));
        let txt = current.iter_mut().find(|r| r.key.rtype == RecordType::Txt).unwrap();
        let new_value = txt.values[0].clone();
        // What weir wrote before the id: the namespace and name in the clear.
        txt.values = vec!["heritage=weir,weir/owner=eu,weir/resource=ingress/shop/web".into()];
        let p = plan(&d, &current, &owner(), false);
        assert!(p.refusals.is_empty(), "still ours: {:?}", p.refusals);
        let changes: Vec<&Change> = p.changes().collect();
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].record().key.rtype, RecordType::Txt);
        assert_eq!(changes[0].record().values, [new_value]);
        assert!(plan(&d, &applied(&current, &p), &owner(), false).is_empty());
    }

    #[test]
    fn weight_change_upserts_only_the_traffic_record() {
        let before = desired(vec![intent("a.example.com", Some(50), cname("lb.eu.example.net"))]);
        let current = applied(&[], &plan(&before, &[], &owner(), false));
        let after = desired(vec![intent("a.example.com", Some(20), cname("lb.eu.example.net"))]);
        let p = plan(&after, &current, &owner(), false);
        let changes: Vec<&Change> = p.changes().collect();
        assert_eq!(changes.len(), 1);
        match changes[0] {
            Change::Upsert { record, previous: Some(prev) } => {
                assert_eq!((record.weight, prev.weight, record.key.rtype), (20, 50, RecordType::Cname));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn all_zero_guard_holds_the_last_non_zero_weight() {
        let up = desired(vec![intent("a.example.com", Some(40), cname("lb.eu.example.net"))]);
        let mut current = applied(&[], &plan(&up, &[], &owner(), false));
        current.push(other("us", "a.example.com", 0));
        let zero = desired(vec![intent("a.example.com", Some(0), cname("lb.eu.example.net"))]);

        let guarded = plan(&zero, &current, &owner(), false);
        assert!(guarded.is_empty(), "the published weight 40 is kept: {guarded:?}");
        assert_eq!(guarded.refusals.len(), 1);
        assert_eq!(guarded.refusals[0].kind, InputKind::AllZeroGuard);
        assert_eq!(guarded.refusals[0].object, ObjectRef::new("Ingress", "shop", "web"));
        assert!(!guarded.reaches_desired_weights());

        let allowed = plan(&zero, &current, &owner(), true);
        assert!(allowed.refusals.is_empty());
        assert!(allowed.reaches_desired_weights());
        assert_eq!(allowed.changes().map(|c| c.record().weight).collect::<Vec<_>>(), [0]);

        // Another cluster with a non-zero weight: 0 is safe to publish.
        let mut with_us = current.clone();
        with_us.retain(|r| r.key.set_identifier == "eu");
        with_us.push(other("us", "a.example.com", 10));
        let p = plan(&zero, &with_us, &owner(), false);
        assert!(p.refusals.is_empty() && p.reaches_desired_weights());
        assert_eq!(p.changes().map(|c| c.record().weight).collect::<Vec<_>>(), [0]);
    }

    #[test]
    fn foreign_records_are_never_touched() {
        // Another cluster's records, and a record with our set identifier but no ownership TXT.
        let foreign = RecordSet {
            key: RecordKey { name: "b.example.com".into(), rtype: RecordType::A, set_identifier: "eu".into() },
            weight: 10,
            ttl: 300,
            values: vec!["198.51.100.1".into()],
            health_check_id: None,
            alias: None,
        };
        let current = vec![other("us", "a.example.com", 30), foreign.clone()];
        let d = desired(vec![
            intent("a.example.com", Some(50), cname("lb.eu.example.net")),
            intent("b.example.com", Some(50), ipv4("192.0.2.1")),
        ]);
        let p = plan(&d, &current, &owner(), false);
        assert!(p.changes().all(|c| c.record().key.set_identifier == "eu"));
        assert!(p.changes().all(|c| !c.record().key.name.ends_with("b.example.com")), "{p:?}");
        assert_eq!(p.refusals.len(), 1);
        assert_eq!(p.refusals[0].kind, InputKind::Ownership);
        let after = applied(&current, &p);
        assert!(after.contains(&foreign) && after.contains(&other("us", "a.example.com", 30)));
    }

    #[test]
    fn an_adopted_host_is_taken_over_in_one_batch_and_the_external_dns_mark_goes_last() {
        use crate::dns::adopt::{adoptable, AdoptOptions};
        let theirs = RecordSet {
            key: RecordKey { name: "b.example.com".into(), rtype: RecordType::Cname, set_identifier: "eu".into() },
            weight: 10,
            ttl: 300,
            values: vec!["lb.eu.example.net".into()],
            health_check_id: None,
            alias: None,
        };
        let mark = RecordSet {
            key: RecordKey { name: "cname-b.example.com".into(), rtype: RecordType::Txt, set_identifier: "eu".into() },
            values: vec!["heritage=external-dns,external-dns/owner=old,external-dns/resource=ingress/shop/web".into()],
            ..theirs.clone()
        };
        let current = vec![theirs.clone(), mark.clone()];
        let mut d = desired(vec![intent("b.example.com", Some(50), cname("lb.eu.example.net"))]);
        let opts = AdoptOptions { owners: vec!["old".into()], ..Default::default() };
        d.adopt = adoptable(&d, &current, &owner(), &opts);
        let p = plan(&d, &current, &owner(), false);
        assert!(p.refusals.is_empty(), "{:?}", p.refusals);
        assert_eq!(p.hosts.len(), 1, "one host, so one batch");
        let steps: Vec<(&str, &str, RecordType)> =
            p.changes().map(|c| (c.action(), c.record().key.name.as_str(), c.record().key.rtype)).collect();
        assert_eq!(
            steps,
            [
                ("UPSERT", "_weir.b.example.com", RecordType::Txt),
                ("UPSERT", "b.example.com", RecordType::Cname),
                ("DELETE", "cname-b.example.com", RecordType::Txt),
            ]
        );
        assert_eq!(p.adopted.len(), 1);
        assert_eq!(p.adopted[0].external_owner, "old");
        let after = applied(&current, &p);
        assert!(!after.contains(&mark));
        // Once done, the next plan is empty and adopts nothing.
        d.adopt = adoptable(&d, &after, &owner(), &opts);
        assert!(d.adopt.is_empty());
        assert!(plan(&d, &after, &owner(), false).is_empty());

        // Another owner: refused as not owned, nothing changes.
        let mut other_owner = d.clone();
        other_owner.adopt = adoptable(&d, &current, &owner(), &AdoptOptions { owners: vec!["else".into()], ..opts });
        let p = plan(&other_owner, &current, &owner(), false);
        assert!(p.is_empty() && p.refusals[0].kind == InputKind::Ownership);
    }

    #[test]
    fn removed_host_is_deleted_traffic_first() {
        let d = desired(vec![
            intent("a.example.com", Some(50), cname("lb.eu.example.net")),
            intent("b.example.com", Some(50), cname("lb.eu.example.net")),
        ]);
        let current = applied(&[], &plan(&d, &[], &owner(), false));
        let only_a = desired(vec![intent("a.example.com", Some(50), cname("lb.eu.example.net"))]);
        let p = plan(&only_a, &current, &owner(), false);
        let actions: Vec<(&str, &str)> = p.changes().map(|c| (c.action(), c.record().key.name.as_str())).collect();
        assert_eq!(actions, [("DELETE", "b.example.com"), ("DELETE", "_weir.b.example.com")]);
        assert!(applied(&current, &p).iter().all(|r| !r.key.name.ends_with("b.example.com")));
    }

    #[test]
    fn type_change_deletes_the_old_type_first() {
        let d = desired(vec![intent("a.example.com", Some(50), cname("lb.eu.example.net"))]);
        let current = applied(&[], &plan(&d, &[], &owner(), false));
        let to_a = desired(vec![intent("a.example.com", Some(50), ipv4("192.0.2.7"))]);
        let p = plan(&to_a, &current, &owner(), false);
        let actions: Vec<(&str, RecordType)> = p.changes().map(|c| (c.action(), c.record().key.rtype)).collect();
        assert_eq!(actions, [("DELETE", RecordType::Cname), ("UPSERT", RecordType::A)]);
        let after = applied(&current, &p);
        assert!(after.iter().any(|r| r.key.rtype == RecordType::A && r.values == ["192.0.2.7"]));
        assert!(plan(&to_a, &after, &owner(), false).is_empty());
    }

    #[test]
    fn kept_hosts_are_left_as_published() {
        let d = desired(vec![intent("a.example.com", Some(50), cname("lb.eu.example.net"))]);
        let current = applied(&[], &plan(&d, &[], &owner(), false));
        // Weight not derivable (bad annotation), or no load-balancer address yet: keep.
        for held in [
            intent("a.example.com", None, cname("lb.eu.example.net")),
            intent("a.example.com", Some(0), Targets::default()),
        ] {
            let p = plan(&desired(vec![held]), &current, &owner(), false);
            assert!(p.is_empty(), "{p:?}");
        }
    }

    #[test]
    fn a_host_held_off_its_derived_weight_blocks_the_ack() {
        let d = desired(vec![
            intent("a.example.com", Some(50), cname("lb.eu.example.net")),
            intent("b.example.com", Some(50), cname("lb.eu.example.net")),
        ]);
        let current = applied(&[], &plan(&d, &[], &owner(), false));
        // a: bad annotation (weight not derivable); b: fine at the new weight.
        let bad = desired(vec![
            intent("a.example.com", None, cname("lb.eu.example.net")),
            intent("b.example.com", Some(20), cname("lb.eu.example.net")),
        ]);
        let p = plan(&bad, &current, &owner(), false);
        assert!(!p.reaches_desired_weights(), "a is held at 50: {p:?}");
        assert_eq!(p.held.iter().map(|h| h.host.as_str()).collect::<Vec<_>>(), ["a.example.com"]);
        assert_eq!(p.held[0].source, ObjectRef::new("Ingress", "shop", "web"));

        // No load-balancer address: held at 50 while 20 is derived.
        let no_lb = desired(vec![
            intent("a.example.com", Some(20), Targets::default()),
            intent("b.example.com", Some(20), cname("lb.eu.example.net")),
        ]);
        let p = plan(&no_lb, &current, &owner(), false);
        assert_eq!(p.held.iter().map(|h| h.host.as_str()).collect::<Vec<_>>(), ["a.example.com"]);
        // ... but a kept host whose published weight already is the derived one does not block.
        let same = desired(vec![
            intent("a.example.com", Some(50), Targets::default()),
            intent("b.example.com", Some(50), cname("lb.eu.example.net")),
        ]);
        let p = plan(&same, &current, &owner(), false);
        assert!(p.held.is_empty() && p.reaches_desired_weights(), "{p:?}");

        // Fixed: nothing held, the ack may go.
        let fixed = desired(vec![
            intent("a.example.com", Some(20), cname("lb.eu.example.net")),
            intent("b.example.com", Some(20), cname("lb.eu.example.net")),
        ]);
        assert!(plan(&fixed, &current, &owner(), false).reaches_desired_weights());
    }

    #[test]
    fn batches_respect_limits_and_count_upserts_twice() {
        let hosts: Vec<DnsIntent> =
            (0..30).map(|i| intent(&format!("h{i:02}.example.com"), Some(50), cname("lb.eu.example.net"))).collect();
        let p = plan(&desired(hosts), &[], &owner(), false);
        // Each host: two UPSERTs of one value = 4 elements.
        assert_eq!(p.hosts[0].elements(), 4);
        let limits = BatchLimits { elements: 10, characters: 32_000 };
        let batches = p.batches(limits);
        assert_eq!(batches.len(), 15, "two hosts (8 elements) per batch");
        for b in &batches {
            assert!(b.iter().map(Change::elements).sum::<usize>() <= limits.elements);
            // A host's changes are never split: TXT and its traffic record travel together.
            assert_eq!(b.len() % 2, 0);
        }
        assert_eq!(batches.concat(), p.changes().cloned().collect::<Vec<_>>(), "order is kept");
        let chars = p.hosts[0].characters();
        let by_chars = p.batches(BatchLimits { elements: 1000, characters: chars * 3 });
        assert_eq!(by_chars.len(), 10);
        assert_eq!(p.batches(BatchLimits::ROUTE53).len(), 1);
    }
}
