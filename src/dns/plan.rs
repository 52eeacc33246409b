//! Desired records vs published records → an ordered plan of changes, in batches that respect
//! Route53's limits. Pure.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::record::{DesiredRecords, Ownership, RecordKey, RecordSet, RecordType};
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
    /// when the all-zero guard held a weight back, so the cluster weight must not be acknowledged.
    pub fn reaches_desired_weights(&self) -> bool {
        !self.refusals.iter().any(|r| r.kind == InputKind::AllZeroGuard)
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
    let mut wanted: BTreeMap<&str, Vec<&RecordSet>> = BTreeMap::new();
    for record in &desired.records {
        let host = match record.key.rtype {
            RecordType::Txt => owner.host_of_txt(&record.key.name).unwrap_or(&record.key.name),
            _ => &record.key.name,
        };
        wanted.entry(host).or_default().push(record);
    }

    let mut plan = Plan::default();
    let hosts: BTreeSet<&str> = by_host.keys().map(String::as_str).chain(wanted.keys().copied()).collect();
    for host in hosts {
        if desired.keep.contains(host) {
            continue;
        }
        let empty = HostView::default();
        let view = by_host.get(host).unwrap_or(&empty);
        let records = wanted.get(host).map(Vec::as_slice).unwrap_or_default();
        let has_our_records = !view.ours.is_empty();
        if has_our_records && !view.owned {
            if !records.is_empty() {
                let source = records
                    .iter()
                    .find(|r| r.key.rtype == RecordType::Txt)
                    .and_then(|r| source_of(&r.values))
                    .unwrap_or_else(|| ObjectRef::new("Ingress", "", host));
                plan.refusals.push(Refusal {
                    object: source,
                    kind: InputKind::Ownership,
                    reason: "RecordNotOwned".into(),
                    message: format!(
                        "{host} already has records with set identifier {:?} that weir does not own (no \
                         ownership TXT at {}); weir leaves them alone; delete them or pick another cluster name",
                        owner.cluster,
                        owner.txt_name(host)
                    ),
                });
            }
            continue;
        }
        if records.is_empty() && !view.owned {
            continue;
        }
        let mut changes = Vec::new();
        let mut upserts = Vec::new();
        for &record in records {
            let mut record = record.clone();
            let previous = view.ours.get(&record.key).copied();
            if record.key.rtype.is_traffic() && record.weight == 0 && !allow_all_zero {
                let published = view.ours.values().filter(|r| r.key.rtype.is_traffic()).map(|r| r.weight).max();
                let others_zero = view.others.iter().all(|r| r.weight == 0);
                if let Some(w) = published.filter(|w| *w > 0) {
                    if others_zero {
                        plan.refusals.push(Refusal {
                            object: source_of(&txt_values(records))
                                .unwrap_or_else(|| ObjectRef::new("Ingress", "", host)),
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
        let wanted_keys: BTreeSet<&RecordKey> = records.iter().map(|r| &r.key).collect();
        let mut deletes: Vec<Change> = view
            .ours
            .values()
            .filter(|r| !wanted_keys.contains(&r.key))
            .map(|r| Change::Delete { record: (*r).clone() })
            .collect();
        // Traffic records go before their TXT when deleting, after it when creating: a traffic record is
        // never published without an owner marker.
        deletes.sort_by_key(|c| c.record().key.rtype == RecordType::Txt);
        upserts.sort_by_key(|c| c.record().key.rtype != RecordType::Txt);
        let (delete_txt, delete_traffic): (Vec<Change>, Vec<Change>) =
            deletes.into_iter().partition(|c| c.record().key.rtype == RecordType::Txt);
        // A type change (CNAME ↔ A) must delete the old type before the new one is created.
        changes.extend(delete_traffic);
        changes.extend(upserts);
        changes.extend(delete_txt);
        if !changes.is_empty() {
            plan.hosts.push(HostChanges { host: host.to_string(), changes });
        }
    }
    plan.refusals.sort();
    plan
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

fn txt_values(records: &[&RecordSet]) -> Vec<String> {
    records.iter().filter(|r| r.key.rtype == RecordType::Txt).flat_map(|r| r.values.iter().cloned()).collect()
}

/// The source object named in an ownership TXT value (`weir/resource=ingress/ns/name`).
pub fn source_of(values: &[String]) -> Option<ObjectRef> {
    values.iter().flat_map(|v| v.split(',')).find_map(|field| {
        let path = field.strip_prefix("weir/resource=")?;
        let mut parts = path.splitn(3, '/');
        let kind = parts.next()?;
        let namespace = parts.next()?;
        let name = parts.next()?;
        let kind = match kind {
            "ingress" => "Ingress",
            other => other,
        };
        Some(ObjectRef::new(kind, namespace, name))
    })
}
