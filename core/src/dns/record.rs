//! The DNS record model shared by every DNS provider, and the records one cluster wants for its intents.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ir::{DesiredState, DnsIntent};
use crate::model::ObjectRef;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RecordType {
    A,
    #[serde(rename = "AAAA")]
    Aaaa,
    #[serde(rename = "CNAME")]
    Cname,
    #[serde(rename = "TXT")]
    Txt,
}

impl RecordType {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::A => "A",
            RecordType::Aaaa => "AAAA",
            RecordType::Cname => "CNAME",
            RecordType::Txt => "TXT",
        }
    }

    /// The record types that carry traffic (everything but ownership TXT).
    pub fn is_traffic(self) -> bool {
        !matches!(self, RecordType::Txt)
    }
}

impl std::str::FromStr for RecordType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "A" => Ok(RecordType::A),
            "AAAA" => Ok(RecordType::Aaaa),
            "CNAME" => Ok(RecordType::Cname),
            "TXT" => Ok(RecordType::Txt),
            other => Err(format!("unsupported record type {other:?}")),
        }
    }
}

impl fmt::Display for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies one weighted record set: Route53's (name, type, set identifier).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RecordKey {
    /// Fully qualified, lower case, no trailing dot.
    pub name: String,
    #[serde(rename = "type")]
    pub rtype: RecordType,
    /// The cluster name.
    pub set_identifier: String,
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} [{}]", self.name, self.rtype, self.set_identifier)
    }
}

/// One weighted record set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RecordSet {
    #[serde(flatten)]
    pub key: RecordKey,
    pub weight: u8,
    pub ttl: u32,
    /// Sorted. For TXT, the unquoted text.
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_id: Option<String>,
    /// A Route53 ALIAS (an `A` or `AAAA` record answering with the addresses of `values[0]`, a name in
    /// another hosted zone); `None` for an ordinary record. Route53 keeps no TTL on an ALIAS (`ttl` 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<AliasTarget>,
}

/// Where a Route53 ALIAS points: the target's canonical hosted zone (a load balancer's, by region and
/// type) and whether Route53 answers it only while the target is healthy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AliasTarget {
    pub hosted_zone_id: String,
    pub evaluate_target_health: bool,
}

/// How this cluster names and marks what it owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    /// This cluster's name: the set identifier of every record it writes.
    pub cluster: String,
    /// Prefix of ownership TXT names (`_weir.` by default): a CNAME cannot share its name with a TXT.
    pub txt_prefix: String,
}

pub const DEFAULT_TXT_PREFIX: &str = "_weir.";
pub const HERITAGE: &str = "heritage=weir";
/// Weight of ownership TXT records (never used for traffic).
pub const TXT_WEIGHT: u8 = 1;

impl Ownership {
    pub fn new(cluster: &str) -> Self {
        Self { cluster: cluster.to_string(), txt_prefix: DEFAULT_TXT_PREFIX.to_string() }
    }

    pub fn txt_name(&self, host: &str) -> String {
        format!("{}{}", self.txt_prefix, host)
    }

    /// The host a TXT ownership name stands for, if it is one.
    pub fn host_of_txt<'a>(&self, txt_name: &'a str) -> Option<&'a str> {
        txt_name.strip_prefix(&self.txt_prefix)
    }

    /// The ownership text: who owns the records of a host, and an opaque id of the object they
    /// come from ([`Self::object_id`]); `weir explain` and `weir plan` map the id back.
    pub fn txt_value(&self, source: &ObjectRef) -> String {
        format!("{HERITAGE},weir/owner={},{OBJECT_ID_FIELD}{}", self.cluster, self.object_id(source))
    }

    /// The opaque id an ownership TXT holds for `source`: 16 hex digits of SHA-256 over this
    /// cluster's name and the object's `kind/namespace/name`. Stable (the same object always gets the
    /// same id, so a pass rewrites nothing), and it names no namespace or object. It is a pseudonym,
    /// not a secret: whoever guesses an object's namespace and name can confirm the guess.
    /// Published, so it must not change: a test pins one id.
    pub fn object_id(&self, source: &ObjectRef) -> String {
        let path = source.to_path();
        crate::xds::snapshot::version_of(
            [("weir-owner-id", self.cluster.as_str()), ("object", path.as_str())].into_iter(),
        )
    }

    /// The object an ownership TXT of this cluster names: an id is looked up among `known` (the
    /// objects of this cluster's desired state); an old-format value (`weir/resource=KIND/NS/NAME`,
    /// written before the id) names it itself.
    pub fn object_of<'a>(
        &self,
        values: &[String],
        known: impl IntoIterator<Item = &'a ObjectRef>,
    ) -> Option<ObjectRef> {
        match txt_mark(values)? {
            TxtMark::Legacy(object) => Some(object),
            TxtMark::Id(id) => known.into_iter().find(|o| self.object_id(o) == id).cloned(),
        }
    }

    /// Whether a TXT record marks this cluster as owner. The mark is `heritage=weir` then
    /// `weir/owner=CLUSTER`, in both the id format and the old one (which still counts as ours: the
    /// next pass rewrites it with the id).
    pub fn is_owner_txt(&self, record: &RecordSet) -> bool {
        record.key.rtype == RecordType::Txt
            && record.key.set_identifier == self.cluster
            && record.values.iter().any(|v| {
                let mut fields = v.split(',');
                fields.next() == Some(HERITAGE) && fields.any(|f| f == format!("weir/owner={}", self.cluster))
            })
    }
}

/// The field of an ownership TXT value that holds the object id.
pub const OBJECT_ID_FIELD: &str = "weir/id=";
/// The field of an old-format ownership TXT value that named the object (`kind/namespace/name`).
pub const LEGACY_RESOURCE_FIELD: &str = "weir/resource=";

/// What an ownership TXT value says about its object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxtMark {
    /// The opaque id ([`Ownership::object_id`]).
    Id(String),
    /// An old-format value's `weir/resource=KIND/NS/NAME`.
    Legacy(ObjectRef),
}

/// The object mark of an ownership TXT value, either format.
pub fn txt_mark(values: &[String]) -> Option<TxtMark> {
    values.iter().flat_map(|v| v.split(',')).find_map(|field| {
        if let Some(id) = field.strip_prefix(OBJECT_ID_FIELD) {
            return Some(TxtMark::Id(id.to_string()));
        }
        let path = field.strip_prefix(LEGACY_RESOURCE_FIELD)?;
        let mut parts = path.splitn(3, '/');
        let kind = parts.next()?;
        let namespace = parts.next()?;
        let name = parts.next()?;
        let kind = match kind {
            "ingress" => "Ingress",
            other => other,
        };
        Some(TxtMark::Legacy(ObjectRef::new(kind, namespace, name)))
    })
}

/// Per-record settings that are not in the intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordOptions {
    pub ttl: u32,
    pub health_check_id: Option<String>,
}

impl Default for RecordOptions {
    fn default() -> Self {
        Self { ttl: 60, health_check_id: None }
    }
}

/// A host whose published records are kept as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The Ingress that owns the host.
    pub source: ObjectRef,
    /// The weight derived for it, when it can be.
    pub weight: Option<u8>,
    pub reason: HoldReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldReason {
    /// An input the weight depends on was refused (an invalid annotation).
    WeightUnknown,
    /// The Ingress has no load-balancer address to publish.
    NoTarget,
    /// The provider could not complete its records (Route53: no health check).
    Incomplete,
}

impl HoldReason {
    pub fn describe(self) -> &'static str {
        match self {
            HoldReason::WeightUnknown => "its weight cannot be derived (an input was refused)",
            HoldReason::NoTarget => "its Ingress has no load-balancer address",
            HoldReason::Incomplete => "its records could not be completed (no health check)",
        }
    }
}

/// What this cluster wants published.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredRecords {
    /// Traffic records and their ownership TXT, sorted by key.
    pub records: Vec<RecordSet>,
    /// Hosts whose published records must be kept as they are (weight not derivable, no target yet,
    /// no health check), and why.
    pub keep: BTreeMap<String, Hold>,
    /// Every managed host (to tell a removed host from a kept one).
    pub hosts: BTreeSet<String>,
    /// The object each managed host comes from (its ownership TXT holds only an id of it).
    pub sources: BTreeMap<String, ObjectRef>,
    /// Hosts whose records this cluster takes over from external-dns (`--adopt-owner`), found once
    /// the published records are read ([`super::adopt::adoptable`]).
    pub adopt: BTreeMap<String, super::adopt::Adoption>,
}

impl DesiredRecords {
    /// The object `host` comes from (for a refusal about it); an Ingress named like the host when
    /// it is not known.
    pub fn source_of(&self, host: &str) -> ObjectRef {
        self.sources.get(host).cloned().unwrap_or_else(|| ObjectRef::new("Ingress", "", host))
    }

    pub fn build(state: &DesiredState, owner: &Ownership, opts: &RecordOptions) -> Self {
        let mut out = DesiredRecords::default();
        for intent in &state.dns {
            out.hosts.insert(intent.host.clone());
            out.sources.insert(intent.host.clone(), intent.source.clone());
            match intent.weight {
                Some(weight) if !intent.targets.is_empty() => {
                    out.records.extend(records_for(intent, weight, owner, opts));
                }
                weight => {
                    let reason = if weight.is_none() { HoldReason::WeightUnknown } else { HoldReason::NoTarget };
                    out.keep.insert(intent.host.clone(), Hold { source: intent.source.clone(), weight, reason });
                }
            }
        }
        out.records.sort();
        out
    }
}

/// The traffic record (CNAME to the first load-balancer hostname, else A and/or AAAA with every IP) and
/// the ownership TXT of one host.
pub fn records_for(intent: &DnsIntent, weight: u8, owner: &Ownership, opts: &RecordOptions) -> Vec<RecordSet> {
    let make = |name: String, rtype: RecordType, values: Vec<String>, health: bool| RecordSet {
        key: RecordKey { name, rtype, set_identifier: owner.cluster.clone() },
        weight,
        ttl: opts.ttl,
        values,
        health_check_id: if health { opts.health_check_id.clone() } else { None },
        alias: None,
    };
    let mut out = Vec::with_capacity(3);
    let t = &intent.targets;
    if let Some(first) = t.hostnames.first() {
        out.push(make(intent.host.clone(), RecordType::Cname, vec![first.clone()], true));
    } else {
        if !t.ipv4.is_empty() {
            out.push(make(intent.host.clone(), RecordType::A, t.ipv4.iter().map(|ip| ip.to_string()).collect(), true));
        }
        if !t.ipv6.is_empty() {
            out.push(make(
                intent.host.clone(),
                RecordType::Aaaa,
                t.ipv6.iter().map(|ip| ip.to_string()).collect(),
                true,
            ));
        }
    }
    // Ownership TXT records carry a fixed weight so that a traffic weight change never rewrites them.
    let mut txt = make(owner.txt_name(&intent.host), RecordType::Txt, vec![owner.txt_value(&intent.source)], false);
    txt.weight = TXT_WEIGHT;
    out.push(txt);
    for r in &mut out {
        r.values.sort();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txt(owner: &Ownership, value: &str) -> RecordSet {
        RecordSet {
            key: RecordKey {
                name: owner.txt_name("shop.example.com"),
                rtype: RecordType::Txt,
                set_identifier: "eu".into(),
            },
            weight: TXT_WEIGHT,
            ttl: 60,
            values: vec![value.into()],
            health_check_id: None,
            alias: None,
        }
    }

    #[test]
    fn the_ownership_txt_holds_an_opaque_id_and_old_values_stay_ours() {
        let owner = Ownership::new("eu");
        let web = ObjectRef::new("Ingress", "shop", "web");
        let value = owner.txt_value(&web);
        // Pinned: the id is published, a change would rewrite every ownership TXT.
        assert_eq!(value, "heritage=weir,weir/owner=eu,weir/id=d05d7391c131b118");
        assert!(!value.contains("shop") && !value.contains("web") && !value.contains("ingress"), "{value}");
        assert_ne!(owner.object_id(&web), Ownership::new("us").object_id(&web), "per cluster");
        assert_ne!(owner.object_id(&web), owner.object_id(&ObjectRef::new("Ingress", "shop", "www")));

        // Both formats mark this cluster's records.
        let legacy = "heritage=weir,weir/owner=eu,weir/resource=ingress/shop/web";
        assert!(owner.is_owner_txt(&txt(&owner, &value)));
        assert!(owner.is_owner_txt(&txt(&owner, legacy)));
        assert!(!owner.is_owner_txt(&txt(&owner, "heritage=weir,weir/owner=us,weir/id=0123456789abcdef")));
        assert!(!owner.is_owner_txt(&txt(&owner, "heritage=external-dns,external-dns/owner=eu")));

        // Mapping back: an id among the known objects, an old value by itself.
        let other = ObjectRef::new("Service", "shop", "envoy");
        assert_eq!(owner.object_of(std::slice::from_ref(&value), [&other, &web]), Some(web.clone()));
        assert_eq!(owner.object_of(&[value], [&other]), None);
        assert_eq!(owner.object_of(&[legacy.into()], []), Some(web));
        assert_eq!(txt_mark(&["heritage=weir".into()]), None);
    }
}
