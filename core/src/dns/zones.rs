//! Several hosted zones: which zone each host goes to, and the per-zone split of what this cluster
//! wants. Pure.
//!
//! A host goes to the managed zone with the longest name that contains it (on a label boundary). A
//! public and a private zone of that same name both get it (split horizon). A host in no managed zone
//! is refused for itself only: it is not published, it is not held, so it never blocks the ack.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::record::DesiredRecords;
use crate::ir::{DesiredState, InputKind, Refusal};
use crate::model::ObjectRef;

/// Which hosted zones weir may use: `--zone-type` (external-dns's default is all).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ZoneType {
    Public,
    Private,
    #[default]
    All,
}

impl ZoneType {
    pub fn admits(self, private: bool) -> bool {
        match self {
            ZoneType::All => true,
            ZoneType::Public => !private,
            ZoneType::Private => private,
        }
    }
}

/// One hosted zone weir writes to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ZoneInfo {
    /// Lower case, no trailing dot.
    pub name: String,
    pub id: String,
    pub private: bool,
}

impl ZoneInfo {
    /// Whether `host` is the zone's apex or below it.
    pub fn contains(&self, host: &str) -> bool {
        host == self.name || host.strip_suffix(&self.name).is_some_and(|rest| rest.ends_with('.'))
    }

    pub fn label(&self) -> String {
        format!("{} ({}, {})", self.name, self.id, if self.private { "private" } else { "public" })
    }
}

/// The zones (indexes into `zones`) that get `host`: every zone of the longest containing name.
pub fn zones_of(host: &str, zones: &[ZoneInfo]) -> Vec<usize> {
    let Some(longest) = zones.iter().filter(|z| z.contains(host)).map(|z| z.name.len()).max() else {
        return Vec::new();
    };
    zones.iter().enumerate().filter(|(_, z)| z.contains(host) && z.name.len() == longest).map(|(i, _)| i).collect()
}

/// What each zone gets, and the hosts no zone takes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZoneSplit {
    /// One per zone, in the order of the zones.
    pub per_zone: Vec<DesiredRecords>,
    /// One per host in no managed zone, on the object that asked for it (`kind` `no_zone`).
    pub refusals: Vec<Refusal>,
}

/// Splits `desired` by zone. `state` names the object of each host (for the refusals).
pub fn split(desired: &DesiredRecords, state: &DesiredState, zones: &[ZoneInfo], owner_txt_prefix: &str) -> ZoneSplit {
    let mut per_zone = vec![DesiredRecords::default(); zones.len()];
    let mut homes: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut refused = BTreeSet::new();
    for host in &desired.hosts {
        let home = zones_of(host, zones);
        if home.is_empty() {
            refused.insert(host.as_str());
        }
        for &i in &home {
            per_zone[i].hosts.insert(host.clone());
            if let Some(source) = desired.sources.get(host) {
                per_zone[i].sources.insert(host.clone(), source.clone());
            }
            if let Some(hold) = desired.keep.get(host) {
                per_zone[i].keep.insert(host.clone(), hold.clone());
            }
            if let Some(adopt) = desired.adopt.get(host) {
                per_zone[i].adopt.insert(host.clone(), adopt.clone());
            }
        }
        homes.insert(host, home);
    }
    for record in &desired.records {
        let host = record.key.name.strip_prefix(owner_txt_prefix).unwrap_or(&record.key.name);
        let host = if homes.contains_key(host) { host } else { record.key.name.as_str() };
        for &i in homes.get(host).map(Vec::as_slice).unwrap_or_default() {
            per_zone[i].records.push(record.clone());
        }
    }
    let names: Vec<String> = zones.iter().map(ZoneInfo::label).collect();
    let refusals = refused
        .into_iter()
        .map(|host| Refusal {
            object: state
                .intent(host)
                .map(|i| i.source.clone())
                .or_else(|| desired.keep.get(host).map(|h| h.source.clone()))
                .unwrap_or_else(|| ObjectRef::new("Ingress", "", host)),
            kind: InputKind::NoZone,
            reason: "NoHostedZone".into(),
            message: format!(
                "{host} is in none of the hosted zones weir manages ({}); it is not published (the other hosts \
                 are); add its zone with --hosted-zone-id, check --zone-type, or change the host",
                if names.is_empty() { "none".to_string() } else { names.join(", ") }
            ),
        })
        .collect();
    ZoneSplit { per_zone, refusals }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::record::{Ownership, RecordOptions};
    use crate::ir::{DnsIntent, Factors, Targets};

    fn zone(name: &str, id: &str, private: bool) -> ZoneInfo {
        ZoneInfo { name: name.into(), id: id.into(), private }
    }

    fn state(hosts: &[&str]) -> DesiredState {
        let dns = hosts
            .iter()
            .map(|h| DnsIntent {
                host: h.to_string(),
                source: ObjectRef::new("Ingress", "shop", h),
                targets: Targets { hostnames: vec!["lb.example.net".into()], ..Default::default() },
                factors: Factors { cluster: 100, annotation: None, healthy: true, unhealthy_reason: None },
                weight: Some(100),
                traffic: None,
            })
            .collect();
        DesiredState { dns, refusals: vec![] }
    }

    #[test]
    fn the_longest_zone_wins_and_twins_both_get_the_host() {
        let zones =
            [zone("example.com", "PUB", false), zone("example.com", "PRIV", true), zone("eu.example.com", "EU", false)];
        assert_eq!(zones_of("www.example.com", &zones), vec![0, 1]);
        assert_eq!(zones_of("example.com", &zones), vec![0, 1], "the apex");
        assert_eq!(zones_of("api.eu.example.com", &zones), vec![2]);
        assert_eq!(zones_of("eu.example.com", &zones), vec![2]);
        assert!(zones_of("www.badexample.com", &zones).is_empty(), "label boundary");
        assert!(zones_of("www.example.org", &zones).is_empty());
    }

    #[test]
    fn split_sends_each_record_and_its_txt_to_its_zones_and_refuses_the_rest() {
        let zones = [zone("example.com", "PUB", false), zone("eu.example.com", "EU", false)];
        let st = state(&["a.eu.example.com", "b.example.com", "c.example.org"]);
        let owner = Ownership::new("eu");
        let desired = DesiredRecords::build(&st, &owner, &RecordOptions::default());
        let s = split(&desired, &st, &zones, &owner.txt_prefix);
        let names = |d: &DesiredRecords| d.records.iter().map(|r| r.key.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&s.per_zone[0]), vec!["_weir.b.example.com", "b.example.com"]);
        assert_eq!(names(&s.per_zone[1]), vec!["_weir.a.eu.example.com", "a.eu.example.com"]);
        assert_eq!(s.per_zone[1].hosts, BTreeSet::from(["a.eu.example.com".to_string()]));
        assert_eq!(s.refusals.len(), 1);
        assert_eq!(s.refusals[0].kind, InputKind::NoZone);
        assert_eq!(s.refusals[0].object, ObjectRef::new("Ingress", "shop", "c.example.org"));
        assert!(s.refusals[0].message.contains("c.example.org"), "{}", s.refusals[0].message);
    }

    #[test]
    fn zone_types_filter() {
        assert!(ZoneType::All.admits(true) && ZoneType::All.admits(false));
        assert!(ZoneType::Public.admits(false) && !ZoneType::Public.admits(true));
        assert!(ZoneType::Private.admits(true) && !ZoneType::Private.admits(false));
    }
}
