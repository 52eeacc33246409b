//! `weir plan` and `weir explain` on examples/local: read everything, write nothing.

use std::process::Command;

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
