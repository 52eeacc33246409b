//! `weir explain HOST`: every factor of one host's record weight in this cluster, and the share of
//! answers per cluster. Pure: fed the desired state and the records the DNS provider publishes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::dns::record::{txt_mark, Ownership, RecordSet, RecordType, TxtMark};
use crate::ir::{DesiredState, Refusal, StrategyWeightsSource, Targets};
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
    /// Refusals about the object that publishes the host, and refused claims on the host.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refusals: Vec<Refusal>,
    /// Every cluster with a record for the host, this one first.
    pub clusters: Vec<ClusterShare>,
    /// `Σ W` over the clusters.
    pub total_weight: u32,
    /// The ownership TXT records published for the host, each with the object it names when known.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ownership: Vec<OwnershipMark>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The TrafficInfra the host is linked to (its Ingress's backend is `{name}-envoy`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_infra: Option<ObjectRef>,
    /// In-cluster split between strategies (`S_k`) of the linked TrafficInfra; `null` when the host
    /// is not linked to one.
    pub strategy_weights: Option<BTreeMap<String, u32>>,
    /// Where `strategy_weights` came from: `traffic_defaults` or `xds_state`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy_weights_from: Option<StrategyWeightsSource>,
    /// Ready endpoints in this cluster per strategy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy_ready_endpoints: Option<BTreeMap<String, usize>>,
}

/// One cluster's ownership TXT for the host: its opaque id and the object the id stands for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OwnershipMark {
    pub cluster: String,
    /// The opaque id (absent in an old-format value, which names the object itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The object: for this cluster's id, the desired object with that id; for an old-format value,
    /// the one it names. Another cluster's id is resolved by that cluster's `weir explain`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectRef>,
    /// An old-format value (`weir/resource=KIND/NS/NAME`); the next pass rewrites this cluster's.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub old_format: bool,
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
    /// This cluster's share split by strategy, for a linked host (other clusters' strategy weights
    /// are not known here).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub strategies: Vec<StrategyShare>,
}

/// One strategy's share of all answers for a host: `(W_c / ΣW) × (S_k / ΣS)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StrategyShare {
    pub strategy: String,
    /// `S_k`.
    pub weight: u32,
    /// Fraction 0-1 of all traffic to the host.
    pub share: f64,
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
                clusters.push(ClusterShare {
                    cluster: owner.cluster.clone(),
                    weight: w,
                    share: 0.0,
                    from,
                    strategies: Vec::new(),
                });
            }
        }
        None => {
            notes.push(format!(
                "cluster {} does not manage {host} (no selected Ingress, route or Service has it)",
                owner.cluster
            ));
            if let Some(w) = ours_published {
                clusters.push(ClusterShare {
                    cluster: owner.cluster.clone(),
                    weight: w,
                    share: 0.0,
                    from: "published",
                    strategies: Vec::new(),
                });
            }
        }
    }
    for (cluster, weight) in by_cluster {
        clusters.push(ClusterShare { cluster, weight, share: 0.0, from: "published", strategies: Vec::new() });
    }
    let total: u32 = clusters.iter().map(|c| u32::from(c.weight)).sum();
    let n = clusters.len();
    for c in &mut clusters {
        c.share = if total == 0 { 1.0 / n as f64 } else { f64::from(c.weight) / f64::from(total) };
    }
    if total == 0 && n > 0 {
        notes.push("every weight is 0: Route53 (and weir's embedded DNS) then answer with every record equally".into());
    }

    // The third factor: this cluster's share split between the linked TrafficInfra's strategies.
    let traffic = intent.and_then(|i| i.traffic.as_ref());
    if let Some(link) = traffic {
        let sum: u64 = link.strategy_weights.values().map(|w| u64::from(*w)).sum();
        if sum == 0 {
            notes.push(format!(
                "every strategy weight of TrafficInfra {} is 0: Envoy rejects such a split",
                link.traffic_infra
            ));
        }
        if let Some(ours) = clusters.iter_mut().find(|c| c.cluster == owner.cluster) {
            ours.strategies = link
                .strategy_weights
                .iter()
                .map(|(k, w)| StrategyShare {
                    strategy: k.clone(),
                    weight: *w,
                    share: if sum == 0 { 0.0 } else { ours.share * (*w as f64) / (sum as f64) },
                })
                .collect();
        }
        if link.weights_from != StrategyWeightsSource::XdsState {
            notes.push(format!(
                "strategy weights are {}'s {}: no xDS state was found for it (its {{name}}-xds-state \
                 ConfigMap, --xds-state PATH, or the SQLite --db), so the host is drained only when no strategy \
                 has a ready endpoint; the controller reads the same source",
                link.traffic_infra,
                if link.weights_from == StrategyWeightsSource::Status {
                    "status.trafficWeights"
                } else {
                    "spec.trafficDefaults"
                }
            ));
        }
    }

    // Ownership TXT records: this cluster's ids are resolved against its desired objects.
    let known: Vec<&ObjectRef> =
        state.dns.iter().map(|i| &i.source).chain(state.refusals.iter().map(|r| &r.object)).collect();
    let txt_name = owner.txt_name(&host);
    let mut ownership: Vec<OwnershipMark> = published
        .iter()
        .filter(|r| r.key.name == txt_name && r.key.rtype == RecordType::Txt)
        .filter_map(|r| {
            let cluster = r.key.set_identifier.clone();
            Some(match txt_mark(&r.values)? {
                TxtMark::Id(id) => OwnershipMark {
                    object: if cluster == owner.cluster {
                        owner.object_of(&r.values, known.iter().copied())
                    } else {
                        None
                    },
                    cluster,
                    id: Some(id),
                    old_format: false,
                },
                TxtMark::Legacy(object) => OwnershipMark { cluster, id: None, object: Some(object), old_format: true },
            })
        })
        .collect();
    ownership.sort_by(|a, b| a.cluster.cmp(&b.cluster));

    Explanation {
        host: host.clone(),
        ownership,
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
        // About the object that publishes the host (not about another of its hosts), and every
        // refused claim on the host (a conflict, a namespace --host-namespaces does not allow),
        // managed or not.
        refusals: state
            .refusals
            .iter()
            .filter(|r| match r.claimed_host() {
                Some(h) => h == host,
                None => intent.is_some_and(|i| r.object == i.source),
            })
            .cloned()
            .collect(),
        clusters,
        total_weight: total,
        notes,
        traffic_infra: traffic.map(|l| l.traffic_infra.clone()),
        strategy_weights: traffic.map(|l| l.strategy_weights.clone()),
        strategy_weights_from: traffic.map(|l| l.weights_from),
        strategy_ready_endpoints: traffic.map(|l| l.ready_endpoints.clone()),
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
            let _ = writeln!(s, "refused   {} [{}] {}", r.object, r.reason, r.message);
        }
        let _ = writeln!(s, "\n{:<20} {:>6} {:>8}  from", "CLUSTER", "W", "SHARE");
        for c in &self.clusters {
            let _ = writeln!(s, "{:<20} {:>6} {:>7.1}%  {}", c.cluster, c.weight, c.share * 100.0, c.from);
        }
        let _ = writeln!(s, "{:<20} {:>6}", "ΣW", self.total_weight);
        match (&self.traffic_infra, &self.strategy_weights) {
            (Some(ti), Some(weights)) => {
                let from = match self.strategy_weights_from {
                    Some(StrategyWeightsSource::XdsState) => "weir xds state",
                    Some(StrategyWeightsSource::Status) => "status.trafficWeights",
                    _ => "spec.trafficDefaults",
                };
                let _ = writeln!(s, "\nS  strategy weights of {ti} (from {from})");
                let ready = self.strategy_ready_endpoints.as_ref();
                let _ = writeln!(s, "{:<20} {:<12} {:>6} {:>6} {:>8}", "CLUSTER", "STRATEGY", "S", "READY", "SHARE");
                let ours = self.clusters.iter().find(|c| c.cluster == self.cluster && !c.strategies.is_empty());
                for (k, w) in weights {
                    let r = ready.and_then(|r| r.get(k)).copied().unwrap_or(0);
                    let share = ours
                        .and_then(|c| c.strategies.iter().find(|st| &st.strategy == k))
                        .map(|st| format!("{:>7.1}%", st.share * 100.0))
                        .unwrap_or_else(|| format!("{:>8}", "-"));
                    let _ = writeln!(s, "{:<20} {k:<12} {w:>6} {r:>6} {share}", self.cluster);
                }
                let _ = writeln!(s, "share = (W_c / ΣW) × (S_k / ΣS)");
            }
            _ => {
                let _ = writeln!(s, "strategy weights: (not linked to a TrafficInfra)");
            }
        }
        for m in &self.ownership {
            let what = match (&m.id, &m.object) {
                (Some(id), Some(o)) => format!("id {id} = {o}"),
                (Some(id), None) if m.cluster == self.cluster => format!("id {id} (no object of this cluster has it)"),
                (Some(id), None) => format!("id {id} (resolved by that cluster's weir explain)"),
                (None, Some(o)) => format!("{o} (old format, names the object; rewritten with an id on the next pass)"),
                (None, None) => "?".to_string(),
            };
            let _ = writeln!(s, "owner     {} {what}", m.cluster);
        }
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
            alias: None,
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
        assert_eq!(
            e.clusters[0],
            ClusterShare { cluster: "eu".into(), weight: 25, share: 0.25, from: "desired", strategies: vec![] }
        );
        assert_eq!(e.strategy_weights, None);
        assert!(e.to_text().contains("not linked to a TrafficInfra"));
        assert_eq!(e.clusters[1].share, 0.75);
        assert!(e.to_text().contains("W  = H × ceil(C × A / 100) = 25"));
    }

    #[test]
    fn refused_claims_on_the_host_are_shown_managed_or_not() {
        let owner = Ownership::new("eu");
        let snapshot = crate::model::Snapshot {
            ingresses: ["attacker", "shop"]
                .iter()
                .map(|ns| {
                    serde_json::from_value(serde_json::json!({
                        "metadata": {"name": "web", "namespace": ns},
                        "spec": {"rules": [{"host": "a.example.com"}, {"host": "b.example.com"}]},
                        "status": {"loadBalancer": {"ingress": [{"hostname": format!("lb-{ns}.example.net")}]}},
                    }))
                    .unwrap()
                })
                .collect(),
            ..Default::default()
        };
        let cfg = crate::translate::TranslateConfig {
            host_namespaces: vec!["a.example.com=shop".parse().unwrap(), "b.example.com=other".parse().unwrap()],
            ..Default::default()
        };
        let st = crate::translate::translate(&snapshot, 100, &cfg);
        let e = explain("a.example.com", &st, &[], &owner, false);
        assert_eq!(e.source, Some(ObjectRef::new("Ingress", "shop", "web")));
        assert_eq!(e.refusals.len(), 1, "{:?}", e.refusals);
        assert_eq!(e.refusals[0].object, ObjectRef::new("Ingress", "attacker", "web"));
        let text = e.to_text();
        assert!(text.contains("refused   Ingress attacker/web [HostNamespaceNotAllowed] host a.example.com"), "{text}");
        // No namespace may claim b.example.com here: not managed, and both refusals say why.
        let e = explain("b.example.com", &st, &[], &owner, false);
        assert!(!e.managed);
        assert_eq!(e.refusals.len(), 2, "{:?}", e.refusals);
    }

    #[test]
    fn ownership_ids_are_mapped_back_to_their_object() {
        let owner = Ownership::new("eu");
        let st = state(Some(25));
        let txt = |cluster: &str, value: String| RecordSet {
            key: RecordKey {
                name: owner.txt_name("a.example.com"),
                rtype: RecordType::Txt,
                set_identifier: cluster.into(),
            },
            weight: 1,
            ttl: 60,
            values: vec![value],
            health_check_id: None,
            alias: None,
        };
        let web = ObjectRef::new("Ingress", "shop", "web");
        let published = [
            rec("eu", 25),
            txt("eu", owner.txt_value(&web)),
            txt("us", Ownership::new("us").txt_value(&web)),
            txt("ap", "heritage=weir,weir/owner=ap,weir/resource=ingress/shop/web".into()),
        ];
        let e = explain("a.example.com", &st, &published, &owner, false);
        let marks: Vec<(&str, Option<&ObjectRef>, bool)> =
            e.ownership.iter().map(|m| (m.cluster.as_str(), m.object.as_ref(), m.old_format)).collect();
        assert_eq!(marks, [("ap", Some(&web), true), ("eu", Some(&web), false), ("us", None, false)]);
        let text = e.to_text();
        assert!(text.contains(&format!("owner     eu id {} = Ingress shop/web", owner.object_id(&web))), "{text}");
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

    #[test]
    fn a_linked_host_splits_this_clusters_share_by_strategy() {
        let owner = Ownership::new("eu");
        let mut st = state(Some(25));
        st.dns[0].traffic = Some(crate::ir::TrafficLink {
            traffic_infra: ObjectRef::new("TrafficInfra", "shop", "shop"),
            strategy_weights: [("blue".to_string(), 80), ("green".to_string(), 20)].into(),
            weights_from: StrategyWeightsSource::XdsState,
            ready_endpoints: [("blue".to_string(), 2), ("green".to_string(), 0)].into(),
        });
        let e = explain("a.example.com", &st, &[rec("eu", 100), rec("us", 75)], &owner, false);
        assert_eq!(e.strategy_weights_from, Some(StrategyWeightsSource::XdsState));
        let shares: Vec<(&str, f64)> =
            e.clusters[0].strategies.iter().map(|s| (s.strategy.as_str(), s.share)).collect();
        assert_eq!(shares, vec![("blue", 0.2), ("green", 0.05)]);
        assert!(e.clusters[1].strategies.is_empty(), "other clusters' strategy weights are not known here");
        let text = e.to_text();
        assert!(text.contains("S  strategy weights of TrafficInfra shop/shop (from weir xds state)"), "{text}");
        assert!(text.contains("eu                   blue             80      2    20.0%"), "{text}");
        assert!(text.contains("eu                   green            20      0     5.0%"), "{text}");
    }
}
