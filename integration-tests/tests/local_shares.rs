//! Two `weir local` processes as clusters `eu` and `us` sharing one SQLite file (weights and zone),
//! each serving DNS on its own port; real DNS queries over UDP.

use std::time::{Duration, Instant};

use integration_tests::{ingress_manifest, wait_for, weight_row, weights, LocalCluster};

const HOST: &str = "www.example.com";
const EU_IP: &str = "192.0.2.1";
const US_IP: &str = "192.0.2.2";
const QUERIES: u32 = 5000;
/// Generous bound for "within one poll interval" (500 ms here) on a loaded 2-core CI machine;
/// the failover itself is measured in BENCHMARKS.md, not asserted here.
const CONVERGE: Duration = Duration::from_secs(20);

#[test]
fn answers_follow_weights_and_weights_set_moves_them() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("weir.db");
    for (cluster, ip) in [("eu", EU_IP), ("us", US_IP)] {
        let dir = tmp.path().join(cluster);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("web.yaml"), ingress_manifest("shop", "web", &[HOST], None, ip)).unwrap();
    }
    let poll = "500ms";
    let eu = LocalCluster::start(
        "eu",
        &tmp.path().join("eu"),
        &db,
        tmp.path(),
        &["--initial-weight", "75", "--weight-poll-interval", poll],
    );
    let us = LocalCluster::start(
        "us",
        &tmp.path().join("us"),
        &db,
        tmp.path(),
        &["--initial-weight", "25", "--weight-poll-interval", poll],
    );
    wait_for("both clusters' records", Duration::from_secs(30), || {
        let e = eu.metric("weir_record_weight", &[("host", HOST), ("cluster", "eu")])?;
        let u = us.metric("weir_record_weight", &[("host", HOST), ("cluster", "us")])?;
        (e == 75.0 && u == 25.0).then_some(())
    });

    // The servers reload the shared zone when the file changes: wait until both see both records.
    let (mut eu_dns, mut us_dns) = (eu.dns(), us.dns());
    for dns in [&mut eu_dns, &mut us_dns] {
        let mut seen = std::collections::BTreeSet::new();
        wait_for("answers from both clusters", Duration::from_secs(15), || {
            seen.extend(dns.first_a(HOST));
            (seen.len() == 2).then_some(())
        });
    }

    // Real queries, alternating between the two servers (they share the zone). 5,000 rather than the
    // 2,000 the issue names: at 75/25 the ±3-point bound is then ~5σ, so the test fails only when the
    // weighting is wrong, not by chance (2,000 would fail ~0.2% of runs).
    let mut eu_answers = 0;
    for i in 0..QUERIES {
        let dns = if i % 2 == 0 { &mut eu_dns } else { &mut us_dns };
        let answers = dns.query(HOST, hickory_proto::rr::RecordType::A).unwrap();
        assert_eq!(answers.len(), 1, "one weighted record per answer: {answers:?}");
        match answers[0].as_str() {
            EU_IP => eu_answers += 1,
            US_IP => {}
            other => panic!("unexpected answer {other}"),
        }
    }
    let share = f64::from(eu_answers) / f64::from(QUERIES);
    assert!((share - 0.75).abs() <= 0.03, "eu answered {share:.3} of queries, expected 0.75 ± 0.03");

    // Fail eu over to us.
    let set_at = Instant::now();
    let (ok, _, err) = weights(&db, &["set", "--cluster-name", "eu", "--desired", "0"]);
    assert!(ok, "weights set failed: {err}");
    wait_for("every answer to go to us", Duration::from_secs(15), || {
        (0..100).all(|_| us_dns.first_a(HOST).as_deref() == Some(US_IP)).then_some(())
    });
    // The ack follows within one poll interval of the apply; allow for the reconcile itself.
    let (desired, current) =
        wait_for("CurrentWeight to equal DesiredWeight", CONVERGE, || weight_row(&db, "eu").filter(|(d, c)| d == c));
    assert_eq!((desired, current), (serde_json::json!(0), serde_json::json!(0)));
    wait_for("the gauges to agree", CONVERGE, || {
        let d = eu.metric("cluster_traffic_controller_ingress_weight_desired", &[("cluster", "eu")])?;
        let c = eu.metric("cluster_traffic_controller_ingress_weight_current", &[("cluster", "eu")])?;
        (d == 0.0 && c == 0.0).then_some(())
    });
    assert_eq!(eu.metric("weir_weight_drift_seconds", &[("cluster", "eu")]), Some(0.0));
    assert_eq!(eu.metric("weir_record_weight", &[("host", HOST), ("cluster", "eu")]), Some(0.0));
    eprintln!("failover acknowledged {:?} after weights set", set_at.elapsed());

    // The DNS server serves a zone snapshot it reloads after each write: wait for the first answer
    // from the new one, then 500 more queries: none goes to eu.
    wait_for("eu's DNS server to serve the acknowledged zone", Duration::from_secs(5), || {
        (eu_dns.first_a(HOST).as_deref() == Some(US_IP)).then_some(())
    });
    for _ in 0..500 {
        assert_eq!(eu_dns.first_a(HOST).as_deref(), Some(US_IP));
    }
}
