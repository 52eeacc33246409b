//! The DNSEndpoint provider (`weir::dns::dnsendpoint_k8s`) against a scripted API: reading weir's
//! DNSEndpoints back as records, applying a plan as one server-side apply per Ingress (and a delete
//! for an object left empty), and the API's error answers.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};
use weir::dns::dnsendpoint_k8s::{DnsEndpointDns, FIELD_MANAGER};
use weir::dns::plan::Change;
use weir::dns::record::{DesiredRecords, Ownership, RecordKey, RecordSet, RecordType, TXT_WEIGHT};
use weir::dns::route53_alias::AliasOptions;
use weir::dns::{DnsError, DnsProvider};
use weir::model::ObjectRef;

use super::scripted::{self, echo, not_found, ok, status, Call, Reply};

const LIST: &str = "/apis/externaldns.k8s.io/v1alpha1/dnsendpoints";

fn endpoints_path(ns: &str, name: &str) -> String {
    format!("/apis/externaldns.k8s.io/v1alpha1/namespaces/{ns}/dnsendpoints/{name}")
}

fn ingress_path(ns: &str, name: &str) -> String {
    format!("/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses/{name}")
}

fn rec(host: &str, cluster: &str, weight: u8) -> RecordSet {
    RecordSet {
        key: RecordKey { name: host.into(), rtype: RecordType::Cname, set_identifier: cluster.into() },
        weight,
        ttl: 60,
        values: vec![format!("{cluster}-lb.example.net")],
        health_check_id: None,
        alias: None,
    }
}

fn txt(owner: &Ownership, host: &str, ingress: &str) -> RecordSet {
    RecordSet {
        key: RecordKey { name: owner.txt_name(host), rtype: RecordType::Txt, set_identifier: owner.cluster.clone() },
        weight: TXT_WEIGHT,
        ttl: 60,
        values: vec![owner.txt_value(&ObjectRef::new("Ingress", "web", ingress))],
        health_check_id: None,
        alias: None,
    }
}

fn endpoint(r: &RecordSet) -> Value {
    json!({
        "dnsName": r.key.name, "targets": r.values, "recordType": "CNAME", "recordTTL": r.ttl,
        "setIdentifier": r.key.set_identifier,
        "providerSpecific": [{"name": "aws/weight", "value": r.weight.to_string()}],
    })
}

fn dns_endpoint(name: &str, records: &[RecordSet]) -> Value {
    json!({
        "apiVersion": "externaldns.k8s.io/v1alpha1", "kind": "DNSEndpoint",
        "metadata": {"name": name, "namespace": "web", "resourceVersion": "5",
                     "labels": {"app.kubernetes.io/managed-by": "weir"}},
        "spec": {"endpoints": records.iter().map(endpoint).collect::<Vec<_>>()},
    })
}

/// weir's DNSEndpoints as the API lists them: Ingress a holds a.example.com (and, from a manifest
/// copied between clusters, us's record of it), Ingress x holds x.example.com.
fn listed() -> Value {
    json!({
        "apiVersion": "externaldns.k8s.io/v1alpha1", "kind": "DNSEndpointList", "metadata": {"resourceVersion": "9"},
        "items": [
            dns_endpoint("a", &[rec("a.example.com", "eu", 100), rec("a.example.com", "us", 50)]),
            dns_endpoint("x", &[rec("x.example.com", "eu", 100)]),
        ],
    })
}

fn provider(client: kube::Client) -> DnsEndpointDns {
    DnsEndpointDns::new(client, Ownership::new("eu"), AliasOptions { prefer_cname: true, ..Default::default() })
}

fn endpoints_of(call: &Call) -> Vec<(String, String, String)> {
    call.body["spec"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let weight = e["providerSpecific"][0]["value"].as_str().unwrap().to_string();
            (e["dnsName"].as_str().unwrap().into(), e["setIdentifier"].as_str().unwrap().into(), weight)
        })
        .collect()
}

#[tokio::test]
async fn current_reads_this_clusters_records_back_with_their_ownership_txt() {
    let (client, calls) = scripted::client(|c| match (c.method.as_str(), c.path.as_str()) {
        ("GET", LIST) => ok(listed()),
        _ => status(500, "InternalError", "unexpected"),
    });
    let owner = Ownership::new("eu");
    let got = provider(client).current(&BTreeSet::new(), &owner).await.unwrap();
    let mut want = vec![rec("a.example.com", "eu", 100), txt(&owner, "a.example.com", "a")];
    want.extend([rec("x.example.com", "eu", 100), txt(&owner, "x.example.com", "x")]);
    want.sort();
    assert_eq!(got, want, "us's record is not this cluster's");
    let list = &calls.all()[0];
    assert_eq!(calls.lines(), [format!("GET {LIST}")]);
    assert!(list.query.contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dweir"), "{}", list.query);
}

/// A plan that changes a's weight, adds host b (Ingress b, not created yet) and removes x: one
/// server-side apply per touched Ingress, the owner reference from the Ingress when it exists, and
/// a delete of x's object, which is already gone (404: done).
#[tokio::test]
async fn apply_writes_one_object_per_ingress_and_deletes_an_emptied_one() {
    let (client, calls) = scripted::client(|c| match (c.method.as_str(), c.path.as_str()) {
        ("GET", LIST) => ok(listed()),
        ("GET", p) if p == ingress_path("web", "a") => ok(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "a", "namespace": "web", "uid": "uid-a"},
        })),
        ("GET", p) if p == ingress_path("web", "b") => not_found(),
        ("PATCH", _) => echo(c),
        ("DELETE", p) if p == endpoints_path("web", "x") => not_found(),
        _ => status(500, "InternalError", "unexpected"),
    });
    let owner = Ownership::new("eu");
    let dns = provider(client);
    let mut desired = DesiredRecords {
        sources: BTreeMap::from([
            ("a.example.com".to_string(), ObjectRef::new("Ingress", "web", "a")),
            ("b.example.com".to_string(), ObjectRef::new("Ingress", "web", "b")),
        ]),
        ..Default::default()
    };
    dns.prepare(&mut desired).await;
    let changes = vec![
        Change::Upsert { record: rec("a.example.com", "eu", 40), previous: Some(rec("a.example.com", "eu", 100)) },
        Change::Upsert { record: rec("b.example.com", "eu", 40), previous: None },
        Change::Upsert { record: txt(&owner, "b.example.com", "b"), previous: None },
        Change::Delete { record: rec("x.example.com", "eu", 100) },
        Change::Delete { record: txt(&owner, "x.example.com", "x") },
    ];
    let report = dns.apply(vec![changes.clone()]).await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.applied, changes);
    assert_eq!(
        calls.lines(),
        [
            format!("GET {LIST}"),
            format!("GET {}", ingress_path("web", "a")),
            format!("PATCH {}", endpoints_path("web", "a")),
            format!("GET {}", ingress_path("web", "b")),
            format!("PATCH {}", endpoints_path("web", "b")),
            format!("DELETE {}", endpoints_path("web", "x")),
        ]
    );
    let patches = calls.with_method("PATCH");
    for p in &patches {
        assert!(p.is_apply_by(FIELD_MANAGER), "a forced server-side apply by {FIELD_MANAGER}: {p:?}");
        assert_eq!(p.body["kind"], "DNSEndpoint");
        assert_eq!(p.body["metadata"]["labels"]["app.kubernetes.io/managed-by"], "weir");
    }
    // The whole object of a: only this cluster's record, at the new weight; owned by Ingress a.
    assert_eq!(endpoints_of(&patches[0]), [("a.example.com".into(), "eu".into(), "40".into())]);
    let owner_ref = &patches[0].body["metadata"]["ownerReferences"][0];
    assert_eq!((owner_ref["kind"].as_str(), owner_ref["uid"].as_str()), (Some("Ingress"), Some("uid-a")));
    assert_eq!(owner_ref["controller"], true);
    // b: no Ingress to own it yet, so no owner reference (one with an empty uid would be refused).
    assert_eq!(endpoints_of(&patches[1]), [("b.example.com".into(), "eu".into(), "40".into())]);
    assert!(patches[1].body["metadata"].get("ownerReferences").is_none(), "{}", patches[1].body);
}

/// Error answers: a throttled apply fails the changes of that Ingress only; a failed list fails every
/// change, retryable.
#[tokio::test]
async fn a_throttled_apply_fails_its_ingress_only_and_a_failed_list_fails_all() {
    let (client, calls) = scripted::client(|c| match (c.method.as_str(), c.path.as_str()) {
        ("GET", LIST) => ok(listed()),
        ("GET", _) => not_found(),
        ("PATCH", p) if p == endpoints_path("web", "a") => status(429, "TooManyRequests", "slow down"),
        ("PATCH", _) => echo(c),
        _ => status(500, "InternalError", "unexpected"),
    });
    let a = Change::Upsert { record: rec("a.example.com", "eu", 40), previous: Some(rec("a.example.com", "eu", 100)) };
    let x = Change::Upsert { record: rec("x.example.com", "eu", 30), previous: Some(rec("x.example.com", "eu", 100)) };
    let report = provider(client).apply(vec![vec![a.clone(), x.clone()]]).await;
    assert_eq!(report.applied, [x]);
    let [(failed, err)] = &report.failed[..] else { panic!("one failure: {:?}", report.failed) };
    assert_eq!(failed, &a);
    match err {
        DnsError::Call { operation: "apply", retryable: true, message, .. } => {
            assert!(message.contains("throttled") && message.contains("slow down"), "{message}")
        }
        other => panic!("expected a retryable apply failure, got {other:?}"),
    }
    assert_eq!(calls.with_method("PATCH").len(), 2, "x was still written after a's refusal");

    let answer = |_: &Call| -> Reply { status(500, "InternalError", "etcdserver: request timed out") };
    let (client, calls) = scripted::client(answer);
    let a = Change::Upsert { record: rec("a.example.com", "eu", 40), previous: None };
    let report = provider(client).apply(vec![vec![a]]).await;
    assert!(report.applied.is_empty());
    assert!(
        matches!(&report.failed[..], [(_, DnsError::Call { operation: "list", retryable: true, .. })]),
        "{:?}",
        report.failed
    );
    assert_eq!(calls.lines(), [format!("GET {LIST}")], "nothing written without the current objects");
}
