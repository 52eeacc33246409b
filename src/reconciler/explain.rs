//! `weir explain HOST`: every factor of one host's record weight in this cluster, and the share of
//! answers per cluster. Pure: fed the desired state and the records the DNS provider publishes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::dns::record::{Ownership, RecordSet};
use crate::ir::{DesiredState, Refusal, Targets};
use crate::model::ObjectRef;
use crate::selection::normalize_host;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    pub host: String,
    pub cluster: String,
    /// Whether this cluster manages the host (an Ingress selected by the filters and binding domain).
    pub managed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<ObjectRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub factors: Option<ExplainedFactors>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub targets: Option<Targets>,
    /// Refusals about the object that publishes the host.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refusals: Vec<Refusal>,
    /// Every cluster with a record for the host, this one first.
    pub clusters: Vec<ClusterShare>,
    /// `Σ W` over the clusters.
    pub total_weight: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// In-cluster split between strategies (`S_k`), filled in when an xDS control plane serves the
    /// host; `null` until then.
    pub strategy_weights: Option<BTreeMap<String, u32>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExplainedFactors {
    /// `C`.
    pub cluster_weight: u8,
    /// `A`; `null` when the annotation is present but not a weight.
    pub annotation_weight: Option<u8>,
    /// `H`.
    pub health: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unhealthy_reason: Option<String>,
    /// `W = H × ceil(C × A / 100)`; `null` when it cannot be derived and the published record is kept.
    pub record_weight: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterShare {
    pub cluster: String,
    pub weight: u8,
    /// Fraction 0-1 of DNS answers.
    pub share: f64,
    /// `desired` (this cluster, computed now) or `published` (read from the DNS provider).
    pub from: &'static str,
}

/// Explains `host` from this cluster's desired state and every cluster's published records.
pub fn explain(
    host: &str,
    state: &DesiredState,
    published: &[RecordSet],
    owner: &Ownership,
    allow_all_zero: bool,
) -> Explanation {
    let host = normalize_host(host);
    let intent = state.intent(&host);
    let mut notes = Vec::new();

    // Published traffic weight per cluster (A and AAAA of one cluster share a weight).
    let mut by_cluster: BTreeMap<String, u8> = BTreeMap::new();
    for r in published.iter().filter(|r| r.key.name == host && r.key.rtype.is_traffic()) {
        let w = by_cluster.entry(r.key.set_identifier.clone()).or_default();
        *w = (*w).max(r.weight);
    }
    let ours_published = by_cluster.remove(&owner.cluster);
    let others_all_zero = by_cluster.values().all(|w| *w == 0);

    let mut clusters = Vec::new();
    match intent {
        Some(intent) => {
            let (weight, from) = match intent.weight {
                Some(w) if intent.targets.is_empty() => {
                    notes.push(format!("no load-balancer address yet: the record is not published (W would be {w})"));
                    (ours_published, "published")
                }
                Some(0) if !allow_all_zero && ours_published.is_some_and(|p| p > 0) && others_all_zero => {
                    notes.push(format!(
                        "all-zero guard: W is 0 but every other cluster's weight is 0, so the published weight {} is \
                         kept (Route53 would split equally); --allow-all-zero turns the guard off",
                        ours_published.unwrap_or_default()
                    ));
                    (ours_published, "published")
                }
                Some(w) => (Some(w), "desired"),
                None => {
                    notes.push("W cannot be derived (invalid annotation): the published record is kept".into());
                    (ours_published, "published")
                }
            };
            if let Some(w) = weight {
                clusters.push(ClusterShare { cluster: owner.cluster.clone(), weight: w, share: 0.0, from });
            }
        }
        None => {
            notes.push(format!("cluster {} does not manage {host} (no selected Ingress has it)", owner.cluster));
            if let Some(w) = ours_published {
                clusters.push(ClusterShare {
                    cluster: owner.cluster.clone(),
                    weight: w,
                    share: 0.0,
                    from: "published",
                });
            }
        }
    }
    for (cluster, weight) in by_cluster {
        clusters.push(ClusterShare { cluster, weight, share: 0.0, from: "published" });
    }
    let total: u32 = clusters.iter().map(|c| u32::from(c.weight)).sum();
    let n = clusters.len();
    for c in &mut clusters {
        c.share = if total == 0 { 1.0 / n as f64 } else { f64::from(c.weight) / f64::from(total) };
    }
    if total == 0 && n > 0 {
        notes.push("every weight is 0: Route53 (and weir's embedded DNS) then answer with every record equally".into());
    }

    Explanation {
        host: host.clone(),
        cluster: owner.cluster.clone(),
        managed: intent.is_some(),
        source: intent.map(|i| i.source.clone()),
        factors: intent.map(|i| ExplainedFactors {
            cluster_weight: i.factors.cluster,
            annotation_weight: i.factors.annotation,
            health: u8::from(i.factors.healthy),
            unhealthy_reason: i.factors.unhealthy_reason.clone(),
            record_weight: i.weight,
        }),
        targets: intent.map(|i| i.targets.clone()),
        refusals: intent
            .map(|i| state.refusals.iter().filter(|r| r.object == i.source).cloned().collect())
            .unwrap_or_default(),
        clusters,
        total_weight: total,
        notes,
        strategy_weights: None,
    }
}

impl Explanation {
    /// The human-readable form.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "host      {}", self.host);
        let _ = writeln!(s, "cluster   {}", self.cluster);
        match (&self.source, &self.factors) {
            (Some(source), Some(f)) => {
                let _ = writeln!(s, "source    {source}");
                let _ = writeln!(s, "C  cluster weight      {}", f.cluster_weight);
                match f.annotation_weight {
                    Some(a) => {
                        let _ = writeln!(s, "A  annotation weight   {a}");
                    }
                    None => {
                        let _ = writeln!(s, "A  annotation weight   invalid (see refusals)");
                    }
                }
                let _ = writeln!(
                    s,
                    "H  health              {}{}",
                    f.health,
                    f.unhealthy_reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
                );
                match f.record_weight {
                    Some(w) => {
                        let _ = writeln!(s, "W  = H × ceil(C × A / 100) = {w}");
                    }
                    None => {
                        let _ = writeln!(s, "W  not derivable: published record kept");
                    }
                }
            }
            _ => {
                let _ = writeln!(s, "not managed by this cluster");
            }
        }
        if let Some(t) = &self.targets {
            let all: Vec<String> = t
                .hostnames
                .iter()
                .cloned()
                .chain(t.ipv4.iter().map(ToString::to_string))
                .chain(t.ipv6.iter().map(ToString::to_string))
                .collect();
            let _ = writeln!(s, "targets   {}", if all.is_empty() { "(none yet)".into() } else { all.join(", ") });
        }
        for r in &self.refusals {
            let _ = writeln!(s, "refused   [{}] {}", r.reason, r.message);
        }
        let _ = writeln!(s, "\n{:<20} {:>6} {:>8}  from", "CLUSTER", "W", "SHARE");
        for c in &self.clusters {
            let _ = writeln!(s, "{:<20} {:>6} {:>7.1}%  {}", c.cluster, c.weight, c.share * 100.0, c.from);
        }
        let _ = writeln!(s, "{:<20} {:>6}", "ΣW", self.total_weight);
        let _ = writeln!(
            s,
            "strategy weights: {}",
            match &self.strategy_weights {
                Some(w) => w.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
                None => "(no xDS control plane for this host)".into(),
            }
        );
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::record::{RecordKey, RecordType};
    use crate::ir::{DnsIntent, Factors};

    fn rec(cluster: &str, weight: u8) -> RecordSet {
        RecordSet {
            key: RecordKey { name: "a.example.com".into(), rtype: RecordType::Cname, set_identifier: cluster.into() },
            weight,
            ttl: 60,
            values: vec![format!("lb.{cluster}.example.net")],
            health_check_id: None,
        }
    }

    fn state(weight: Option<u8>) -> DesiredState {
        DesiredState {
            dns: vec![DnsIntent {
                host: "a.example.com".into(),
                source: ObjectRef::new("Ingress", "shop", "web"),
                targets: Targets { hostnames: vec!["lb.eu.example.net".into()], ..Default::default() },
                factors: Factors { cluster: 50, annotation: Some(50), healthy: true, unhealthy_reason: None },
                weight,
                traffic: None,
            }],
            refusals: vec![],
        }
    }

    #[test]
    fn shares_use_desired_here_and_published_elsewhere() {
        let owner = Ownership::new("eu");
        let e = explain("A.example.com.", &state(Some(25)), &[rec("eu", 100), rec("us", 75)], &owner, false);
        assert!(e.managed);
        assert_eq!(e.total_weight, 100);
        assert_eq!(e.clusters[0], ClusterShare { cluster: "eu".into(), weight: 25, share: 0.25, from: "desired" });
        assert_eq!(e.clusters[1].share, 0.75);
        assert!(e.to_text().contains("W  = H × ceil(C × A / 100) = 25"));
    }

    #[test]
    fn all_zero_is_noted_and_guard_explained() {
        let owner = Ownership::new("eu");
        let e = explain("a.example.com", &state(Some(0)), &[rec("eu", 10), rec("us", 0)], &owner, false);
        assert_eq!(e.clusters[0].weight, 10);
        assert!(e.notes.iter().any(|n| n.contains("all-zero guard")), "{:?}", e.notes);
        let e = explain("a.example.com", &state(Some(0)), &[rec("eu", 10), rec("us", 0)], &owner, true);
        assert_eq!(e.total_weight, 0);
        assert_eq!(e.clusters[1].share, 0.5);
        assert!(e.notes.iter().any(|n| n.contains("equally")));
    }
}
