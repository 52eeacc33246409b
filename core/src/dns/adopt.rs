//! Taking over records that external-dns owns (`--adopt-owner`): the TXT registry formats external-dns
//! writes, and which hosts can be adopted. Pure.
//!
//! external-dns (registry/txt/registry.go, registry/mapper/mapper.go, endpoint/labels.go) marks each
//! record it owns with a TXT record carrying the same set identifier:
//! - the value `"heritage=external-dns,external-dns/owner=ID,external-dns/resource=KIND/NS/NAME"`
//!   (quotes optional; fields are `key=value` split on `,`; only `heritage` and `external-dns/*` count;
//!   another heritage, or none, means not external-dns's);
//! - its name, for a record `first.rest` of type `T` (lower case), with `--txt-prefix P` or
//!   `--txt-suffix S` (never both):
//!   - new format (v0.12 on): `P` + `T-first` + `S` + `.rest`; when `P` or `S` contains
//!     `%{record_type}`, that is replaced by `T` and no `T-` is added to the label;
//!   - old format (before v0.12): `P` + `first` + `S` + `.rest` with `%{record_type}` removed, so with
//!     neither affix the TXT sits at the record's own name;
//!   - an A ALIAS record was marked with the `cname-` name before external-dns moved it to `a-`.
//!
//! Encrypted registry values (`--txt-encrypt-enabled`) and `--txt-wildcard-replacement` are not read.

use std::collections::BTreeMap;

use serde::Serialize;

use super::record::{DesiredRecords, Ownership, RecordSet, RecordType};

pub const HERITAGE_EXTERNAL_DNS: &str = "external-dns";
const RECORD_TYPE_TEMPLATE: &str = "%{record_type}";
/// The record types whose registry names are looked for (what weir publishes).
const TYPES: [&str; 3] = ["a", "aaaa", "cname"];

/// `--adopt-owner` and the external-dns affixes to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdoptOptions {
    /// external-dns owner ids (`--txt-owner-id`) whose records weir takes over.
    pub owners: Vec<String>,
    /// external-dns's `--txt-prefix` (lower case).
    pub txt_prefix: String,
    /// external-dns's `--txt-suffix` (lower case).
    pub txt_suffix: String,
}

impl AdoptOptions {
    pub fn is_enabled(&self) -> bool {
        !self.owners.is_empty()
    }

    /// Every name external-dns may have put a registry TXT of `host` at: the new format for each type
    /// weir publishes, then the old format.
    pub fn registry_names(&self, host: &str) -> Vec<String> {
        let mut names: Vec<String> = TYPES.iter().map(|t| self.txt_name(host, Some(t))).collect();
        names.push(self.txt_name(host, None));
        // A template beside a dot leaves an empty label in the old format: not a name.
        names.retain(|n| !n.split('.').any(str::is_empty));
        names.dedup();
        names
    }

    /// external-dns's `ToTXTName` (`rtype` `None`: the old format).
    fn txt_name(&self, host: &str, rtype: Option<&str>) -> String {
        let (first, rest) = match host.split_once('.') {
            Some((first, rest)) => (first, Some(rest)),
            None => (host, None),
        };
        let templated =
            self.txt_prefix.contains(RECORD_TYPE_TEMPLATE) || self.txt_suffix.contains(RECORD_TYPE_TEMPLATE);
        let fill = rtype.unwrap_or("");
        let prefix = self.txt_prefix.replace(RECORD_TYPE_TEMPLATE, fill);
        let suffix = self.txt_suffix.replace(RECORD_TYPE_TEMPLATE, fill);
        let first = match rtype {
            Some(t) if !templated => format!("{t}-{first}"),
            _ => first.to_string(),
        };
        match rest {
            Some(rest) => format!("{prefix}{first}{suffix}.{rest}"),
            None => format!("{prefix}{first}{suffix}"),
        }
    }
}

/// The labels of an external-dns registry value, `None` when it is not external-dns's.
pub fn registry_labels(value: &str) -> Option<BTreeMap<String, String>> {
    let text = value.trim_matches('"');
    let mut labels = BTreeMap::new();
    let mut heritage = false;
    for token in text.split(',') {
        let Some((key, val)) = token.split_once('=') else { continue };
        if key == "heritage" {
            if val != HERITAGE_EXTERNAL_DNS {
                return None;
            }
            heritage = true;
        } else if let Some(label) = key.strip_prefix("external-dns/") {
            labels.insert(label.to_string(), val.to_string());
        }
    }
    heritage.then_some(labels)
}

/// A host whose records this cluster takes over from external-dns.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Adoption {
    /// The external-dns owner id its registry names.
    pub external_owner: String,
    /// The registry TXT records to delete once weir's ownership TXT is written (same batch).
    pub registry: Vec<RecordSet>,
}

/// The desired hosts that can be adopted: this cluster's traffic records are there (set identifier =
/// cluster name) with no weir ownership TXT, and every external-dns registry TXT of the host with that
/// set identifier names one of `opts.owners`. A host also marked by another owner is left alone.
pub fn adoptable(
    desired: &DesiredRecords,
    current: &[RecordSet],
    owner: &Ownership,
    opts: &AdoptOptions,
) -> BTreeMap<String, Adoption> {
    let mut out = BTreeMap::new();
    if !opts.is_enabled() {
        return out;
    }
    let mut by_name: BTreeMap<&str, Vec<&RecordSet>> = BTreeMap::new();
    for r in current.iter().filter(|r| r.key.set_identifier == owner.cluster) {
        by_name.entry(r.key.name.as_str()).or_default().push(r);
    }
    let wanted: std::collections::BTreeSet<&str> =
        desired.records.iter().filter(|r| r.key.rtype.is_traffic()).map(|r| r.key.name.as_str()).collect();
    for host in wanted.into_iter().filter(|h| !desired.keep.contains_key(*h)) {
        let at = |name: &str| by_name.get(name).map(Vec::as_slice).unwrap_or_default().to_vec();
        if !at(host).iter().any(|r| r.key.rtype.is_traffic())
            || at(&owner.txt_name(host)).iter().any(|r| owner.is_owner_txt(r))
        {
            continue;
        }
        let mut registry = Vec::new();
        let mut owners = Vec::new();
        for name in opts.registry_names(host) {
            for r in at(&name).into_iter().filter(|r| r.key.rtype == RecordType::Txt) {
                if let Some(labels) = r.values.iter().find_map(|v| registry_labels(v)) {
                    owners.push(labels.get("owner").cloned().unwrap_or_default());
                    registry.push(r.clone());
                }
            }
        }
        let all_ours = !owners.is_empty() && owners.iter().all(|o| opts.owners.contains(o));
        if all_ours {
            registry.sort();
            registry.dedup();
            out.insert(host.to_string(), Adoption { external_owner: owners[0].clone(), registry });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::record::{RecordKey, RecordOptions};
    use crate::ir::{DesiredState, DnsIntent, Factors, Targets};
    use crate::model::ObjectRef;

    fn opts(prefix: &str, suffix: &str) -> AdoptOptions {
        AdoptOptions { owners: vec!["old".into()], txt_prefix: prefix.into(), txt_suffix: suffix.into() }
    }

    #[test]
    fn registry_names_follow_external_dns_mapper() {
        // Expected names from external-dns registry/mapper/mapper_test.go and registry/txt tests.
        assert_eq!(
            opts("", "").registry_names("www.example.com"),
            vec!["a-www.example.com", "aaaa-www.example.com", "cname-www.example.com", "www.example.com"]
        );
        assert_eq!(
            opts("txt.", "").registry_names("www.example.com"),
            vec![
                "txt.a-www.example.com",
                "txt.aaaa-www.example.com",
                "txt.cname-www.example.com",
                "txt.www.example.com"
            ]
        );
        assert_eq!(
            opts("", "-txt").registry_names("www.example.com"),
            vec![
                "a-www-txt.example.com",
                "aaaa-www-txt.example.com",
                "cname-www-txt.example.com",
                "www-txt.example.com"
            ]
        );
        assert_eq!(
            opts("%{record_type}-reg.", "").registry_names("www.example.com"),
            vec![
                "a-reg.www.example.com",
                "aaaa-reg.www.example.com",
                "cname-reg.www.example.com",
                "-reg.www.example.com"
            ]
        );
        assert_eq!(
            opts("", ".%{record_type}").registry_names("www.example.com"),
            vec!["www.a.example.com", "www.aaaa.example.com", "www.cname.example.com"]
        );
        assert_eq!(opts("", "").registry_names("example")[0], "a-example");
    }

    #[test]
    fn registry_values_parse_as_external_dns_reads_them() {
        let l = registry_labels("\"heritage=external-dns,external-dns/owner=old,external-dns/resource=ingress/a/b\"")
            .unwrap();
        assert_eq!(l.get("owner").map(String::as_str), Some("old"));
        assert_eq!(l.get("resource").map(String::as_str), Some("ingress/a/b"));
        assert!(registry_labels("heritage=external-dns,external-dns/owner=old").is_some(), "unquoted");
        assert!(registry_labels("heritage=weir,weir/owner=eu").is_none(), "another heritage");
        assert!(registry_labels("external-dns/owner=old").is_none(), "no heritage");
        assert!(registry_labels("v=spf1 -all").is_none());
    }

    fn rec(name: &str, rtype: RecordType, set: &str, value: &str) -> RecordSet {
        RecordSet {
            key: RecordKey { name: name.into(), rtype, set_identifier: set.into() },
            weight: 10,
            ttl: 300,
            values: vec![value.into()],
            health_check_id: None,
            alias: None,
        }
    }

    fn desired(host: &str, owner: &Ownership) -> DesiredRecords {
        let state = DesiredState {
            dns: vec![DnsIntent {
                host: host.into(),
                source: ObjectRef::new("Ingress", "shop", "web"),
                targets: Targets { hostnames: vec!["lb.example.net".into()], ..Default::default() },
                factors: Factors { cluster: 100, annotation: None, healthy: true, unhealthy_reason: None },
                weight: Some(100),
                traffic: None,
            }],
            refusals: vec![],
        };
        DesiredRecords::build(&state, owner, &RecordOptions::default())
    }

    #[test]
    fn adopts_only_hosts_every_registry_record_of_which_names_an_adopted_owner() {
        let owner = Ownership::new("eu");
        let o = opts("", "");
        let host = "www.example.com";
        let d = desired(host, &owner);
        let cname = rec(host, RecordType::Cname, "eu", "lb.example.net");
        let mark = |name: &str, who: &str, set: &str| {
            rec(
                name,
                RecordType::Txt,
                set,
                &format!("heritage=external-dns,external-dns/owner={who},external-dns/resource=ingress/shop/web"),
            )
        };
        let current = vec![cname.clone(), mark("cname-www.example.com", "old", "eu")];
        let a = adoptable(&d, &current, &owner, &o);
        assert_eq!(a[host].external_owner, "old");
        assert_eq!(a[host].registry, vec![current[1].clone()]);

        // Another owner's mark (also in the old format at the name itself): left alone.
        let current = vec![cname.clone(), mark("cname-www.example.com", "old", "eu"), mark(host, "someone", "eu")];
        assert!(adoptable(&d, &current, &owner, &o).is_empty());
        // Another cluster's mark does not count; without one of ours there is nothing to adopt.
        let current = vec![cname.clone(), mark("cname-www.example.com", "old", "us")];
        assert!(adoptable(&d, &current, &owner, &o).is_empty());
        // Already weir's: nothing to adopt.
        let weir_txt = rec(
            &owner.txt_name(host),
            RecordType::Txt,
            "eu",
            &owner.txt_value(&ObjectRef::new("Ingress", "shop", "web")),
        );
        let current = vec![cname.clone(), weir_txt, mark("cname-www.example.com", "old", "eu")];
        assert!(adoptable(&d, &current, &owner, &o).is_empty());
        // Off without --adopt-owner.
        let current = vec![cname, mark("cname-www.example.com", "old", "eu")];
        assert!(adoptable(&d, &current, &owner, &AdoptOptions::default()).is_empty());
    }
}
