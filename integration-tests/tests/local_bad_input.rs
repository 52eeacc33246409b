//! Bad input against a running `weir local`: each is refused with a log line naming it and a metric,
//! and what is serving does not change.

use std::path::Path;
use std::time::Duration;

use integration_tests::{ingress_manifest, wait_for, weight_row, weights, write_atomic, LocalCluster};

const HOST: &str = "www.example.com";
const IP: &str = "192.0.2.1";

fn start(tmp: &Path, annotation: Option<&str>) -> LocalCluster {
    let dir = tmp.join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("web.yaml"), ingress_manifest("shop", "web", &[HOST], annotation, IP)).unwrap();
    let c = LocalCluster::start(
        "eu",
        &dir,
        &tmp.join("weir.db"),
        tmp,
        &["--initial-weight", "100", "--weight-poll-interval", "300ms", "--manifests-poll-interval", "200ms"],
    );
    wait_for("the first record", Duration::from_secs(30), || {
        c.metric("weir_record_weight", &[("host", HOST), ("cluster", "eu")])
    });
    c
}

fn invalid(c: &LocalCluster, kind: &str) -> Option<f64> {
    c.metric("weir_invalid_input_total", &[("kind", kind)])
}

#[test]
fn bad_annotation_keeps_the_record_and_names_the_ingress() {
    let tmp = tempfile::tempdir().unwrap();
    let c = start(tmp.path(), Some("50"));
    assert_eq!(c.metric("weir_record_weight", &[("host", HOST), ("cluster", "eu")]), Some(50.0));
    assert_eq!(invalid(&c, "annotation"), Some(0.0));

    let file = tmp.path().join("manifests/web.yaml");
    write_atomic(&file, &ingress_manifest("shop", "web", &[HOST], Some("abc"), IP));
    wait_for("the annotation to be refused", Duration::from_secs(15), || {
        (invalid(&c, "annotation")? == 1.0).then_some(())
    });
    let log = c.proc.log();
    assert!(
        log.lines().any(|l| l.contains("WARN") && l.contains("Ingress shop/web") && l.contains("\"abc\"")),
        "no warning naming the Ingress and the value:\n{log}"
    );
    assert_eq!(c.metric("weir_record_weight", &[("host", HOST), ("cluster", "eu")]), Some(50.0), "the record is kept");
    let mut dns = c.dns();
    wait_for("the kept record over DNS", Duration::from_secs(10), || (dns.first_a(HOST)? == IP).then_some(()));

    // Fixed: the new weight applies (the loop was not stuck), and the refusal is not counted again.
    write_atomic(&file, &ingress_manifest("shop", "web", &[HOST], Some("20"), IP));
    wait_for("the fixed weight", Duration::from_secs(15), || {
        (c.metric("weir_record_weight", &[("host", HOST), ("cluster", "eu")])? == 20.0).then_some(())
    });
    assert_eq!(invalid(&c, "annotation"), Some(1.0));
}

#[test]
fn bad_desired_weight_is_not_applied_and_drift_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let c = start(tmp.path(), None);
    let db = tmp.path().join("weir.db");
    wait_for("CurrentWeight 100", Duration::from_secs(15), || {
        weight_row(&db, "eu").filter(|(d, cur)| *d == serde_json::json!(100) && *cur == serde_json::json!(100))
    });

    // An operator writes garbage straight into the table.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute("UPDATE weights SET desired_weight = 150 WHERE cluster_name = 'eu'", []).unwrap();

    wait_for("the weight to be refused", Duration::from_secs(15), || (invalid(&c, "weight")? == 1.0).then_some(()));
    wait_for("drift to count", Duration::from_secs(15), || {
        (c.metric("weir_weight_drift_seconds", &[("cluster", "eu")])? > 0.0).then_some(())
    });
    let (_, current) = weight_row(&db, "eu").unwrap();
    assert_eq!(current, serde_json::json!(100), "CurrentWeight untouched");
    assert_eq!(c.metric("cluster_traffic_controller_ingress_weight_current", &[("cluster", "eu")]), Some(100.0));
    assert_eq!(c.metric("weir_record_weight", &[("host", HOST), ("cluster", "eu")]), Some(100.0), "not applied");
    let log = c.proc.log();
    assert!(log.lines().any(|l| l.contains("WARN") && l.contains("150")), "no warning naming the value:\n{log}");
    // Once per distinct value, not every poll.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(invalid(&c, "weight"), Some(1.0));
    assert_eq!(c.proc.log().lines().filter(|l| l.contains("WARN") && l.contains("DesiredWeight \"150\"")).count(), 1);
}

#[test]
fn bad_manifest_file_keeps_the_last_good_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let c = start(tmp.path(), None);
    let dir = tmp.path().join("manifests");
    write_atomic(&dir.join("web.yaml"), "apiVersion: networking.k8s.io/v1\nkind: Ingress\nspec: [not, a, mapping\n");
    wait_for("the manifest to be refused", Duration::from_secs(15), || (invalid(&c, "manifest")? == 1.0).then_some(()));
    let log = c.proc.log();
    assert!(log.lines().any(|l| l.contains("WARN") && l.contains("web.yaml")), "no warning naming the file:\n{log}");

    // Another file's change still applies, and the broken file's last good content keeps serving.
    write_atomic(&dir.join("api.yaml"), &ingress_manifest("shop", "api", &["api.example.com"], None, "192.0.2.9"));
    let mut dns = c.dns();
    wait_for("the new host", Duration::from_secs(15), || {
        (dns.first_a("api.example.com")? == "192.0.2.9").then_some(())
    });
    assert_eq!(dns.first_a(HOST).as_deref(), Some(IP));
    assert_eq!(c.metric("weir_record_weight", &[("host", HOST), ("cluster", "eu")]), Some(100.0));
}

/// A host held at its old weight (bad annotation) blocks the ack: CurrentWeight is not written, the
/// host is named in a log line, `weir_ack_blocked_hosts` and `weir weights list`; fixed, the ack goes.
#[test]
fn a_held_host_blocks_the_ack_until_its_annotation_is_fixed() {
    let tmp = tempfile::tempdir().unwrap();
    let c = start(tmp.path(), None);
    let db = tmp.path().join("weir.db");
    let dir = tmp.path().join("manifests");
    write_atomic(&dir.join("api.yaml"), &ingress_manifest("shop", "api", &["api.example.com"], None, "192.0.2.9"));
    wait_for("both hosts at 100", Duration::from_secs(15), || {
        (c.metric("weir_record_weight", &[("host", "api.example.com"), ("cluster", "eu")])? == 100.0).then_some(())
    });
    write_atomic(
        &dir.join("api.yaml"),
        &ingress_manifest("shop", "api", &["api.example.com"], Some("abc"), "192.0.2.9"),
    );
    wait_for("the annotation to be refused", Duration::from_secs(15), || {
        (invalid(&c, "annotation")? == 1.0).then_some(())
    });

    let (ok, _, err) = weights(&db, &["set", "--cluster-name", "eu", "--desired", "20"]);
    assert!(ok, "{err}");
    wait_for("the other host at 20", Duration::from_secs(15), || {
        (c.metric("weir_record_weight", &[("host", HOST), ("cluster", "eu")])? == 20.0).then_some(())
    });
    wait_for("the blocked ack to be counted", Duration::from_secs(15), || {
        (c.metric("weir_ack_blocked_hosts", &[("cluster", "eu")])? == 1.0).then_some(())
    });
    // Several passes later CurrentWeight is still the old one, and drift keeps counting.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(weight_row(&db, "eu").unwrap(), (serde_json::json!(20), serde_json::json!(100)), "no ack while held");
    assert_eq!(c.metric("weir_record_weight", &[("host", "api.example.com"), ("cluster", "eu")]), Some(100.0));
    assert!(c.metric("weir_weight_drift_seconds", &[("cluster", "eu")]).unwrap() > 0.0);
    let log = c.proc.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("api.example.com is held") && l.contains("Ingress shop/api")),
        "no warning naming the held host:\n{log}"
    );
    let (ok, list, err) = weights(&db, &["list"]);
    assert!(ok, "{err}");
    assert!(list.contains("held: api.example.com"), "weir weights list does not name the held host:\n{list}");

    // Fixed: the held host takes its derived weight and the ack goes.
    write_atomic(
        &dir.join("api.yaml"),
        &ingress_manifest("shop", "api", &["api.example.com"], Some("100"), "192.0.2.9"),
    );
    wait_for("the ack", Duration::from_secs(15), || {
        weight_row(&db, "eu").filter(|row| *row == (serde_json::json!(20), serde_json::json!(20)))
    });
    assert_eq!(c.metric("weir_record_weight", &[("host", "api.example.com"), ("cluster", "eu")]), Some(20.0));
    assert_eq!(c.metric("weir_ack_blocked_hosts", &[("cluster", "eu")]), Some(0.0));
    let (_, list, _) = weights(&db, &["list"]);
    assert!(!list.contains("held:"), "{list}");
}
