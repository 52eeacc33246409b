//! Properties of the DNS planner and the translator over generated inputs (issue 11, item 9):
//! - replanning after applying a plan is empty (the planner converges in one pass);
//! - batches keep to Route53's limits and never split a host;
//! - the all-zero guard never leaves a managed name whose traffic records are all 0;
//! - translation does not depend on the order in which a provider saw the objects.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use weir_core::dns::plan::{plan, BatchLimits, Change, Plan};
use weir_core::dns::record::{DesiredRecords, Ownership, RecordKey, RecordOptions, RecordSet, RecordType};
use weir_core::ir::{DesiredState, DnsIntent, Factors, Targets};
use weir_core::model::{ObjectRef, Snapshot};
use weir_core::translate::{translate, TranslateConfig, SERVICE_NAME_LABEL};

const CLUSTER: &str = "eu";
const OTHERS: [&str; 2] = ["us", "ap"];

fn host(i: u8) -> String {
    format!("h{i}.example.com")
}

fn owner() -> Ownership {
    Ownership::new(CLUSTER)
}

/// A target as a provider reports it: a load-balancer name, IPv4s, IPv6s, or nothing yet.
fn targets() -> impl Strategy<Value = Targets> {
    prop_oneof![
        (0u8..3).prop_map(|i| Targets { hostnames: vec![format!("lb{i}.eu.example.net")], ..Default::default() }),
        proptest::collection::btree_set(1u8..5, 1..3).prop_map(|ips| Targets {
            ipv4: ips.into_iter().map(|i| std::net::Ipv4Addr::new(10, 0, 0, i)).collect(),
            ..Default::default()
        }),
        (1u16..4).prop_map(|i| Targets {
            ipv6: vec![std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i)],
            ..Default::default()
        }),
        Just(Targets::default()),
    ]
}

fn weight() -> impl Strategy<Value = Option<u8>> {
    prop_oneof![1 => Just(None), 3 => Just(Some(0)), 6 => (0u8..=100).prop_map(Some)]
}

fn intents() -> impl Strategy<Value = Vec<DnsIntent>> {
    proptest::collection::btree_map(0u8..8, (targets(), weight()), 0..8).prop_map(|m| {
        m.into_iter()
            .map(|(i, (targets, weight))| DnsIntent {
                host: host(i),
                source: ObjectRef::new("Ingress", "shop", &format!("web{i}")),
                targets,
                factors: Factors { cluster: 100, annotation: Some(100), healthy: true, unhealthy_reason: None },
                weight,
                traffic: None,
            })
            .collect()
    })
}

fn desired(intents: Vec<DnsIntent>) -> DesiredRecords {
    DesiredRecords::build(&DesiredState { dns: intents, refusals: vec![] }, &owner(), &RecordOptions::default())
}

fn traffic_record(cluster: &str, name: String, rtype: RecordType, weight: u8, values: Vec<String>) -> RecordSet {
    RecordSet {
        key: RecordKey { name, rtype, set_identifier: cluster.into() },
        weight,
        ttl: 60,
        values,
        health_check_id: None,
        alias: None,
    }
}

/// What is published before the pass: for each host, maybe this cluster's records (owned or not, of
/// either type, at any weight) and maybe other clusters' records.
fn published() -> impl Strategy<Value = Vec<RecordSet>> {
    let ours = (0u8..8, prop_oneof![Just(RecordType::Cname), Just(RecordType::A)], 0u8..=100, any::<bool>());
    let theirs = (0u8..8, 0usize..2, 0u8..=100);
    (proptest::collection::vec(ours, 0..8), proptest::collection::vec(theirs, 0..8)).prop_map(|(ours, theirs)| {
        let mut by_key = BTreeMap::new();
        let owner = owner();
        for (i, rtype, weight, owned) in ours {
            let values = match rtype {
                RecordType::Cname => vec!["old-lb.eu.example.net".to_string()],
                _ => vec!["10.9.9.9".to_string()],
            };
            let r = traffic_record(CLUSTER, host(i), rtype, weight, values);
            by_key.insert(r.key.clone(), r);
            if owned {
                let source = ObjectRef::new("Ingress", "shop", &format!("web{i}"));
                let txt = traffic_record(
                    CLUSTER,
                    owner.txt_name(&host(i)),
                    RecordType::Txt,
                    weir_core::dns::record::TXT_WEIGHT,
                    vec![owner.txt_value(&source)],
                );
                by_key.insert(txt.key.clone(), txt);
            }
        }
        for (i, other, weight) in theirs {
            let cluster = OTHERS[other];
            let r =
                traffic_record(cluster, host(i), RecordType::Cname, weight, vec![format!("lb.{cluster}.example.net")]);
            by_key.insert(r.key.clone(), r);
        }
        by_key.into_values().collect()
    })
}

/// What Route53 holds after `plan` lands on `current`: the provider's contract, checked change by
/// change. A delete must name the published record exactly, as Route53 requires; a CNAME never shares
/// its name with another traffic type of this cluster (Route53 refuses it); a traffic record this plan
/// writes is never published without this cluster's ownership TXT beside it.
fn apply(current: &[RecordSet], plan: &Plan) -> Result<Vec<RecordSet>, String> {
    let owner = owner();
    let mut map: BTreeMap<RecordKey, RecordSet> = current.iter().map(|r| (r.key.clone(), r.clone())).collect();
    for change in plan.changes() {
        let key = change.record().key.clone();
        match change {
            Change::Upsert { record, .. } => {
                map.insert(record.key.clone(), record.clone());
            }
            Change::Delete { record } => {
                if map.remove(&record.key).as_ref() != Some(record) {
                    return Err(format!("delete of {} does not name the published record", record.key));
                }
            }
        }
        let ours_at = |name: &str| -> Vec<RecordType> {
            map.keys()
                .filter(|k| k.name == name && k.set_identifier == CLUSTER && k.rtype.is_traffic())
                .map(|k| k.rtype)
                .collect()
        };
        let host = owner.host_of_txt(&key.name).unwrap_or(&key.name).to_string();
        let types = ours_at(&host);
        if types.contains(&RecordType::Cname) && types.len() > 1 {
            return Err(format!("after {} {key}: a CNAME shares {host} with {types:?}", change.action()));
        }
        let txt = RecordKey { name: owner.txt_name(&host), rtype: RecordType::Txt, set_identifier: CLUSTER.into() };
        let owned = map.get(&txt).is_some_and(|r| owner.is_owner_txt(r));
        if !owned && !types.is_empty() {
            return Err(format!(
                "after {} {key}: traffic records {types:?} at {host} without an owner TXT",
                change.action()
            ));
        }
    }
    Ok(map.into_values().collect())
}

fn traffic_weights(records: &[RecordSet], name: &str) -> Vec<u8> {
    records.iter().filter(|r| r.key.name == name && r.key.rtype.is_traffic()).map(|r| r.weight).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn replanning_after_applying_is_empty(intents in intents(), current in published(), allow_all_zero in any::<bool>()) {
        let d = desired(intents);
        let first = plan(&d, &current, &owner(), allow_all_zero);
        let after = apply(&current, &first).map_err(TestCaseError::fail)?;
        let second = plan(&d, &after, &owner(), allow_all_zero);
        prop_assert!(second.is_empty(), "first {first:?}\nsecond {second:?}");
        // What the second pass holds or refuses is what the first did: nothing is lost between passes.
        prop_assert_eq!(&second.held, &first.held);
        prop_assert_eq!(&second.refusals, &first.refusals);
    }

    #[test]
    fn batches_keep_to_the_limits_and_never_split_a_host(
        intents in intents(),
        current in published(),
        elements in 4usize..40,
        characters in 60usize..400,
    ) {
        let limits = BatchLimits { elements, characters };
        let p = plan(&desired(intents), &current, &owner(), false);
        let batches = p.batches(limits);
        let flat: Vec<&Change> = batches.iter().flatten().collect();
        let all: Vec<&Change> = p.changes().collect();
        prop_assert_eq!(flat, all, "batches carry every change once, in plan order");
        // Where each host's changes landed.
        let mut host_batch: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
        for (i, batch) in batches.iter().enumerate() {
            prop_assert!(!batch.is_empty());
            for change in batch {
                let name = &change.record().key.name;
                let h = owner().host_of_txt(name).unwrap_or(name).to_string();
                host_batch.entry(h).or_default().insert(i);
            }
            let (e, c): (usize, usize) =
                batch.iter().fold((0, 0), |(e, c), ch| (e + ch.elements(), c + ch.characters()));
            // Only one host's changes alone may exceed a limit (it cannot be split without publishing a
            // traffic record without its owner).
            let hosts_in_batch = host_batch.iter().filter(|(_, b)| b.contains(&i)).count();
            prop_assert!(
                (e <= limits.elements && c <= limits.characters) || hosts_in_batch == 1,
                "batch {i}: {e} elements, {c} characters, {hosts_in_batch} hosts over {limits:?}"
            );
        }
        for (h, b) in host_batch {
            prop_assert_eq!(b.len(), 1, "host {} split over batches {:?}", h, b);
        }
    }

    #[test]
    fn the_all_zero_guard_never_leaves_a_managed_name_all_zero(intents in intents(), current in published()) {
        let managed: Vec<String> = intents.iter().map(|i| i.host.clone()).collect();
        let d = desired(intents);
        let p = plan(&d, &current, &owner(), false);
        let after = apply(&current, &p).map_err(TestCaseError::fail)?;
        for name in managed {
            let before = traffic_weights(&current, &name);
            let now = traffic_weights(&after, &name);
            if before.iter().any(|w| *w > 0) {
                prop_assert!(
                    now.iter().any(|w| *w > 0),
                    "{name}: weights {before:?} became {now:?}; plan {p:?}"
                );
            }
        }
    }
}

// ---- translation independent of object order ----

#[derive(Debug, Clone)]
struct GenIngress {
    namespace: u8,
    name: u8,
    hosts: Vec<u8>,
    service: u8,
    weight: Option<String>,
    lb: Option<u8>,
    created: u8,
}

fn gen_ingress() -> impl Strategy<Value = GenIngress> {
    let weight = prop_oneof![
        3 => Just(None),
        3 => (0u8..=100).prop_map(|w| Some(w.to_string())),
        1 => Just(Some("abc".to_string())),
        1 => Just(Some("150".to_string())),
    ];
    (0u8..2, 0u8..4, proptest::collection::vec(0u8..6, 1..3), 0u8..3, weight, proptest::option::of(0u8..3), 0u8..3)
        .prop_map(|(namespace, name, hosts, service, weight, lb, created)| GenIngress {
            namespace,
            name,
            hosts,
            service,
            weight,
            lb,
            created,
        })
}

fn ingress(g: &GenIngress, cfg: &TranslateConfig) -> k8s_openapi::api::networking::v1::Ingress {
    let mut annotations = serde_json::Map::new();
    if let Some(w) = &g.weight {
        annotations.insert(cfg.weight_annotation(), w.clone().into());
    }
    let rules: Vec<serde_json::Value> = g
        .hosts
        .iter()
        .map(|h| {
            serde_json::json!({"host": host(*h), "http": {"paths": [{"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": format!("svc{}", g.service), "port": {"number": 80}}}}]}})
        })
        .collect();
    let status = match g.lb {
        Some(i) => serde_json::json!({"loadBalancer": {"ingress": [{"hostname": format!("lb{i}.eu.example.net")}]}}),
        None => serde_json::json!({}),
    };
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": format!("ing{}", g.name),
            "namespace": format!("ns{}", g.namespace),
            "annotations": annotations,
            "creationTimestamp": format!("2026-01-0{}T00:00:00Z", g.created + 1),
        },
        "spec": {"rules": rules},
        "status": status,
    }))
    .expect("a valid Ingress")
}

fn slice(namespace: u8, service: u8, ready: bool) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("svc{service}-x"), "namespace": format!("ns{namespace}"),
            "labels": {SERVICE_NAME_LABEL: format!("svc{service}")}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.1.0.1"], "conditions": {"ready": ready}}],
    }))
    .expect("a valid EndpointSlice")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn translation_does_not_depend_on_object_order(
        ingresses in proptest::collection::vec(gen_ingress(), 0..8),
        slices in proptest::collection::btree_map((0u8..2, 0u8..3), any::<bool>(), 0..6),
        cluster_weight in 0u8..=100,
        order in any::<proptest::sample::Index>(),
    ) {
        let cfg = TranslateConfig::default();
        // Two Ingresses with one namespace/name are one object: keep the first.
        let mut seen = BTreeSet::new();
        let objects: Vec<_> = ingresses
            .iter()
            .filter(|g| seen.insert((g.namespace, g.name)))
            .map(|g| ingress(g, &cfg))
            .collect();
        let endpoint_slices: Vec<_> = slices.iter().map(|((ns, svc), ready)| slice(*ns, *svc, *ready)).collect();
        let snapshot = Snapshot { ingresses: objects.clone(), endpoint_slices: endpoint_slices.clone(), ..Default::default() };
        // Another order: reversed, then rotated by a generated amount.
        let mut shuffled_ingresses = objects;
        shuffled_ingresses.reverse();
        if !shuffled_ingresses.is_empty() {
            let k = order.index(shuffled_ingresses.len());
            shuffled_ingresses.rotate_left(k);
        }
        let mut shuffled_slices = endpoint_slices;
        shuffled_slices.reverse();
        let shuffled = Snapshot { ingresses: shuffled_ingresses, endpoint_slices: shuffled_slices, ..Default::default() };
        let a = translate(&snapshot, cluster_weight, &cfg);
        let b = translate(&shuffled, cluster_weight, &cfg);
        prop_assert_eq!(a, b);
    }
}
