//! The old controller's flags keep their meaning (issue 12, item 5): `--backend-type fake` publishes
//! `--initial-weight` unless `--static-weight` is given, and the default backend is `fake`.
//! (`--aws-region` over `AWS_REGION` needs DynamoDB: integration-tests/tests/aws_dynamodb.rs.)

use std::process::Command;

/// `weir plan` on examples/local with the embedded zone; the cluster weight it would apply.
fn cluster_weight(store_flags: &[&str]) -> u64 {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/local");
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["plan", "--cluster-name", "eu", "--provider", "file", "--manifests", examples])
        .args(["--dns-provider", "embedded", "--output", "json", "--db"])
        .arg(tmp.path().join("weir.db"))
        .args(store_flags)
        .env_remove("WEIR_BACKEND_TYPE")
        .env_remove("WEIR_STATIC_WEIGHT")
        .env_remove("WEIR_INITIAL_WEIGHT")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    plan["cluster_weight"].as_u64().unwrap()
}

#[test]
fn fake_backend_publishes_the_initial_weight() {
    assert_eq!(cluster_weight(&["--backend-type", "fake", "--initial-weight", "30"]), 30);
    assert_eq!(cluster_weight(&["--backend-type", "static", "--initial-weight", "30"]), 30);
}

#[test]
fn static_weight_wins_over_the_initial_weight() {
    assert_eq!(cluster_weight(&["--backend-type", "fake", "--initial-weight", "30", "--static-weight", "70"]), 70);
}

#[test]
fn the_default_backend_is_fake() {
    // With sqlite (a row would be created at --initial-weight) or dynamodb (no endpoint here: an
    // error) this would differ; `fake` serves the flag value with no store at all.
    assert_eq!(cluster_weight(&["--initial-weight", "30", "--static-weight", "45"]), 45);
    assert_eq!(cluster_weight(&["--initial-weight", "30"]), 30);
}
