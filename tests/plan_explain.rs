//! `weir plan` and `weir explain` on examples/local: read everything, write nothing.

use std::path::Path;
use std::process::Command;

mod local_support;

fn weir(args: &[&str], db: &std::path::Path) -> serde_json::Value {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/local");
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .args(["--cluster-name", "eu", "--provider", "file", "--manifests", examples])
        .args(["--backend-type", "sqlite", "--dns-provider", "embedded", "--initial-weight", "100", "--output", "json"])
        .arg("--db")
        .arg(db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn plan_prints_the_changes_and_makes_none() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("weir.db");
    let first = weir(&["plan"], &db);
    assert_eq!(first["cluster_weight"], 100, "no row yet: the --initial-weight a controller would create");
    let hosts: Vec<&str> = first["hosts"].as_array().unwrap().iter().map(|h| h["host"].as_str().unwrap()).collect();
    assert_eq!(hosts, ["api.example.com", "checkout.example.com", "www.example.com"]);
    let changes: Vec<(String, String, u64)> = first["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|h| h["changes"].as_array().unwrap().iter())
        .map(|c| {
            (
                c["action"].as_str().unwrap().into(),
                c["record"]["type"].as_str().unwrap().into(),
                c["record"]["weight"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(changes.len(), 7);
    assert!(changes.contains(&("UPSERT".into(), "AAAA".into(), 50)), "{changes:?}");
    assert!(changes.contains(&("UPSERT".into(), "CNAME".into(), 100)), "{changes:?}");
    // Nothing was written: the same plan again.
    assert_eq!(weir(&["plan"], &db), first);
}

#[test]
fn plan_maps_ownership_ids_back_and_host_namespaces_refuse_claims() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("weir.db");
    let plan = weir(&["plan"], &db);
    // Every TXT the plan writes holds an id, not the Ingress; `object_ids` maps each back.
    let txt_values: Vec<&str> = plan["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|h| h["changes"].as_array().unwrap().iter())
        .filter(|c| c["record"]["type"] == "TXT")
        .map(|c| c["record"]["values"][0].as_str().unwrap())
        .collect();
    assert_eq!(txt_values.len(), 3);
    for v in &txt_values {
        assert!(v.starts_with("heritage=weir,weir/owner=eu,weir/id=") && !v.contains("ingress/"), "{v}");
    }
    let ids = plan["object_ids"].as_object().unwrap();
    assert_eq!(ids.len(), 2, "two Ingresses (shop/shop has two hosts): {ids:?}");
    assert!(ids.values().any(|o| *o == serde_json::json!({"kind": "Ingress", "namespace": "api", "name": "api"})));

    // api.example.com reserved for another namespace: not planned, refused on its Ingress.
    let fenced = weir(&["plan", "--host-namespaces", "api.example.com=payments"], &db);
    let hosts: Vec<&str> = fenced["hosts"].as_array().unwrap().iter().map(|h| h["host"].as_str().unwrap()).collect();
    assert_eq!(hosts, ["checkout.example.com", "www.example.com"]);
    let refused = &fenced["input_refusals"].as_array().unwrap()[0];
    assert_eq!(refused["reason"], "HostNamespaceNotAllowed", "{refused}");
    assert_eq!(refused["kind"], "namespace", "{refused}");
    let e = weir(&["explain", "api.example.com", "--host-namespaces", "api.example.com=payments"], &db);
    assert_eq!(e["managed"], false);
    assert_eq!(e["refusals"][0]["object"], serde_json::json!({"kind": "Ingress", "namespace": "api", "name": "api"}));
}

#[test]
fn explain_shows_every_factor_and_the_shares() {
    let tmp = tempfile::tempdir().unwrap();
    let e = weir(&["explain", "API.example.com"], &tmp.path().join("weir.db"));
    assert_eq!(e["host"], "api.example.com");
    assert_eq!(e["source"], serde_json::json!({"kind": "Ingress", "namespace": "api", "name": "api"}));
    assert_eq!(
        e["factors"],
        serde_json::json!({"cluster_weight": 100, "annotation_weight": 50, "health": 1, "record_weight": 50})
    );
    assert_eq!(e["clusters"], serde_json::json!([{"cluster": "eu", "weight": 50, "share": 1.0, "from": "desired"}]));
    assert!(e.get("strategy_weights").is_some_and(|v| v.is_null()), "a named place for strategy weights");
}

/// `weir plan` and `weir local` share their defaults: once `weir local` has converged, a plan on
/// its database (same manifests, no extra flags) has nothing to change.
#[test]
fn plan_on_a_converged_local_db_shows_no_change() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("weir.db");
    let examples = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/local"));
    // Until /readyz answers 200: the first reconcile pass has published everything.
    local_support::run_local_until_ready(examples, &db, &tmp.path().join("local.log"), &["--initial-weight", "100"]);

    let plan = weir(&["plan"], &db);
    // A plan lists only the hosts it would change.
    assert_eq!(plan["cluster_weight"], 100);
    assert_eq!(plan["hosts"], serde_json::json!([]), "not converged: {plan:#}");
}
