//! Ramps, time-boxed overrides, history and safety rules on the embedded default: the real binary
//! (`weir local` + `weir weights`) on one SQLite file, the ramp gate a small server speaking the
//! Prometheus query API.

use std::path::{Path, PathBuf};
use std::time::Duration;

use integration_tests::gate::{GateMode, GateServer};
use integration_tests::{ingress_manifest, wait_for, weights, LocalCluster};
use serde_json::Value;

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    db: PathBuf,
    manifests: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let manifests = dir.join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(manifests.join("app.yaml"), ingress_manifest("web", "app", &["app.example.com"], None, "10.1.0.1"))
        .unwrap();
    Setup { db: dir.join("weir.db"), dir, manifests, _tmp: tmp }
}

fn start(s: &Setup, cluster: &str, extra: &[&str]) -> LocalCluster {
    let mut args = vec!["--initial-weight", "100", "--weight-poll-interval", "200ms"];
    args.extend_from_slice(extra);
    LocalCluster::start(cluster, &s.manifests, &s.db, &s.dir, &args)
}

fn row(db: &Path, cluster: &str) -> Value {
    let (ok, out, err) = weights(db, &["get", "--cluster-name", cluster, "--output", "json"]);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn history(db: &Path, cluster: &str) -> Vec<Value> {
    let (ok, out, err) = weights(db, &["history", "--cluster-name", cluster, "--output", "json"]);
    assert!(ok, "{err}");
    serde_json::from_str::<Vec<Value>>(&out).unwrap()
}

fn ok(db: &Path, args: &[&str]) -> String {
    let (ok, out, err) = weights(db, args);
    assert!(ok, "weir weights {args:?} failed: {err}");
    out
}

fn refused(db: &Path, args: &[&str]) -> String {
    let (ok, out, err) = weights(db, args);
    assert!(!ok, "weir weights {args:?} should have been refused: {out}");
    err
}

fn wait_row(db: &Path, cluster: &str, what: &str, timeout: Duration, f: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, timeout, || Some(row(db, cluster)).filter(|r| f(r)))
}

fn status(r: &Value) -> String {
    r["Status"].as_str().unwrap_or_default().to_string()
}

fn ramp_args<'a>(gate: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["ramp", "--cluster-name", "eu", "--to", "40", "--step", "20", "--every", "1s"];
    a.extend_from_slice(&["--gate-url", gate, "--gate-query", "sum(rate(errors_total[1m]))", "--gate-max", "0.5"]);
    a.extend_from_slice(extra);
    a
}

#[test]
fn healthy_gate_completes_the_ramp_and_history_records_every_step() {
    let s = setup();
    let gate = GateServer::start(GateMode::Value(0.1));
    let eu = start(&s, "eu", &[]);
    wait_row(&s.db, "eu", "eu at 100", Duration::from_secs(20), |r| r["CurrentWeight"] == 100);
    let url = gate.url();
    let out = ok(&s.db, &ramp_args(&url, &["--reason", "move load to us"]));
    assert!(out.contains("ramp 100→40"), "{out}");

    // A second ramp is refused while the first runs.
    let err = refused(&s.db, &ramp_args(&url, &[]));
    assert!(err.contains("already running"), "{err}");

    let mid = wait_row(&s.db, "eu", "a step in progress", Duration::from_secs(20), |r| status(r).contains("step 2/3"));
    assert!(status(&mid).starts_with("pending; ramping 100→40") || status(&mid).contains("ramping 100→40"), "{mid}");
    let done =
        wait_row(&s.db, "eu", "the ramp completed", Duration::from_secs(30), |r| status(r).contains("completed"));
    assert_eq!((done["DesiredWeight"].clone(), done["CurrentWeight"].clone()), (40.into(), 40.into()), "{done}");
    assert_eq!(done["Plan"]["state"]["state"], "completed");
    // The gate was asked after each step's hold.
    let asked = gate.queries();
    assert!(asked.len() >= 3, "{asked:?}");
    assert!(asked[0].starts_with("/api/v1/query?query=sum%28rate%28errors_total%5B1m%5D%29%29"), "{asked:?}");
    assert_eq!(eu.metric("weir_ramp_aborted_total", &[("cluster", "eu")]), Some(0.0));

    let h = history(&s.db, "eu");
    let desired: Vec<(String, String, String)> = h
        .iter()
        .filter(|e| e["Field"] == "DesiredWeight")
        .map(|e| {
            (
                e["Before"].as_str().unwrap().into(),
                e["After"].as_str().unwrap().into(),
                e["Cause"].as_str().unwrap().into(),
            )
        })
        .collect();
    let step = |b: &str, a: &str| (b.to_string(), a.to_string(), "ramp_step".to_string());
    assert_eq!(desired, vec![step("100", "80"), step("80", "60"), step("60", "40")], "{h:#?}");
    let acks: Vec<&str> =
        h.iter().filter(|e| e["Field"] == "CurrentWeight").map(|e| e["After"].as_str().unwrap()).collect();
    assert_eq!(acks, ["80", "60", "40"], "every step acknowledged: {h:#?}");
    assert!(h.iter().all(|e| e["Actor"] == "weir controller of eu"), "{h:#?}");

    // A manual set afterwards is history too, with the caller and the reason.
    ok(&s.db, &["set", "--cluster-name", "eu", "--desired", "50", "--reason", "manual"]);
    let last = history(&s.db, "eu").into_iter().rev().find(|e| e["Field"] == "DesiredWeight").unwrap();
    assert_eq!(
        (last["Before"].as_str(), last["After"].as_str(), last["Cause"].as_str()),
        (Some("40"), Some("50"), Some("set"))
    );
    assert_eq!(last["Reason"], "manual");
    assert!(last["Actor"].as_str().unwrap().contains("(weir weights)"), "{last}");
}

#[test]
fn unhealthy_gate_at_step_two_aborts_and_reverts() {
    let s = setup();
    let gate = GateServer::start(GateMode::Value(0.1));
    let eu = start(&s, "eu", &[]);
    wait_row(&s.db, "eu", "eu at 100", Duration::from_secs(20), |r| r["CurrentWeight"] == 100);
    let url = gate.url();
    ok(&s.db, &ramp_args(&url, &[]));
    // Step 1 (80) passes its gate; once step 2 (60) is written, the errors go up.
    wait_row(&s.db, "eu", "step 2", Duration::from_secs(20), |r| r["DesiredWeight"] == 60);
    gate.set(GateMode::Value(0.8));
    let r = wait_row(&s.db, "eu", "the abort", Duration::from_secs(20), |r| status(r).contains("aborted"));
    assert!(status(&r).contains("aborted at 60: gate 0.8 > 0.5"), "{r}");
    let r = wait_row(&s.db, "eu", "the revert applied", Duration::from_secs(20), |r| r["CurrentWeight"] == 100);
    assert_eq!(r["DesiredWeight"], 100, "reverted to the weight from before the ramp");
    assert_eq!(eu.metric("weir_ramp_aborted_total", &[("cluster", "eu")]), Some(1.0));
    assert!(eu.proc.log().contains("ramp aborted at 60"), "logged");
    let h = history(&s.db, "eu");
    let abort = h.iter().find(|e| e["Cause"] == "ramp_abort").expect("the abort is in the history");
    assert_eq!((abort["Before"].as_str(), abort["After"].as_str()), (Some("60"), Some("100")));
}

#[test]
fn unreachable_gate_fails_safe() {
    let s = setup();
    let gate = GateServer::start(GateMode::Value(0.0));
    let _eu = start(&s, "eu", &[]);
    wait_row(&s.db, "eu", "eu at 100", Duration::from_secs(20), |r| r["CurrentWeight"] == 100);
    let url = gate.url();
    ok(&s.db, &ramp_args(&url, &[]));
    wait_row(&s.db, "eu", "step 1 written", Duration::from_secs(20), |r| r["DesiredWeight"] == 80);
    gate.set(GateMode::Down);
    let r = wait_row(&s.db, "eu", "the abort", Duration::from_secs(20), |r| status(r).contains("aborted"));
    assert!(status(&r).contains("gate unreachable"), "{r}");
    wait_row(&s.db, "eu", "reverted", Duration::from_secs(20), |r| {
        r["CurrentWeight"] == 100 && r["DesiredWeight"] == 100
    });

    // No data fails too, unless --gate-on-no-data pass.
    gate.set(GateMode::NoData);
    let err = refused(&s.db, &["set", "--cluster-name", "eu", "--desired", "100", "--for", "0s"]);
    assert!(err.contains("--for must be longer than 0"), "{err}");
    ok(&s.db, &ramp_args(&url, &["--gate-on-no-data", "pass"]));
    wait_row(&s.db, "eu", "a ramp on no data completes", Duration::from_secs(30), |r| status(r).contains("completed"));
}

#[test]
fn a_ramp_survives_a_controller_restart() {
    let s = setup();
    let gate = GateServer::start(GateMode::Value(0.0));
    let mut eu = start(&s, "eu", &[]);
    wait_row(&s.db, "eu", "eu at 100", Duration::from_secs(20), |r| r["CurrentWeight"] == 100);
    let url = gate.url();
    ok(
        &s.db,
        &[
            "ramp",
            "--cluster-name",
            "eu",
            "--to",
            "40",
            "--step",
            "30",
            "--every",
            "3s",
            "--gate-url",
            &url,
            "--gate-query",
            "up",
            "--gate-max",
            "1",
        ],
    );
    wait_row(&s.db, "eu", "step 1 acknowledged", Duration::from_secs(20), |r| r["CurrentWeight"] == 70);
    assert!(eu.proc.terminate(Duration::from_secs(10)).is_some());
    let r = row(&s.db, "eu");
    assert!(status(&r).contains("ramping 100→40"), "the ramp is in the table while no controller runs: {r}");
    let _eu = start(&s, "eu", &[]);
    let done = wait_row(&s.db, "eu", "completed after the restart", Duration::from_secs(30), |r| {
        status(r).contains("completed")
    });
    assert_eq!(done["CurrentWeight"], 40);
}

#[test]
fn overrides_expire_back_unless_changed_since() {
    let s = setup();
    let _eu = start(&s, "eu", &[]);
    wait_row(&s.db, "eu", "eu at 100", Duration::from_secs(20), |r| r["CurrentWeight"] == 100);
    let out = ok(&s.db, &["set", "--cluster-name", "eu", "--desired", "30", "--for", "2s", "--reason", "drill"]);
    assert!(out.contains("back to 100"), "{out}");
    let r = row(&s.db, "eu");
    assert!(status(&r).contains("override 30 for"), "{r}");
    wait_row(&s.db, "eu", "the override applied", Duration::from_secs(10), |r| r["CurrentWeight"] == 30);
    let r = wait_row(&s.db, "eu", "the revert", Duration::from_secs(15), |r| r["CurrentWeight"] == 100);
    assert_eq!(r["DesiredWeight"], 100);
    assert!(r.get("Plan").is_none(), "{r}");
    let h = history(&s.db, "eu");
    let causes: Vec<&str> =
        h.iter().filter(|e| e["Field"] == "DesiredWeight").map(|e| e["Cause"].as_str().unwrap()).collect();
    assert_eq!(causes, ["override", "revert"], "{h:#?}");

    // Changed since (by hand, under the CLI's feet): the expiry does nothing, and says so.
    ok(&s.db, &["set", "--cluster-name", "eu", "--desired", "20", "--for", "2s"]);
    let conn = rusqlite::Connection::open(&s.db).unwrap();
    conn.execute("UPDATE weights SET desired_weight = 55 WHERE cluster_name = 'eu'", []).unwrap();
    let r = wait_row(&s.db, "eu", "the override dropped", Duration::from_secs(15), |r| r.get("Plan").is_none());
    assert_eq!(r["DesiredWeight"], 55, "not reverted over a newer change");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(row(&s.db, "eu")["DesiredWeight"], 55);
    assert!(_eu.proc.log().contains("changed since"), "says so");
}

#[test]
fn min_serving_clusters_is_enforced_by_the_cli_and_the_controller() {
    let s = setup();
    let eu = start(&s, "eu", &["--min-serving-clusters", "1"]);
    let _us = start(&s, "us", &["--min-serving-clusters", "1"]);
    wait_row(&s.db, "us", "us at 100", Duration::from_secs(20), |r| r["CurrentWeight"] == 100);
    ok(&s.db, &["set", "--cluster-name", "us", "--desired", "0", "--min-serving-clusters", "1"]);
    wait_row(&s.db, "us", "us drained", Duration::from_secs(20), |r| r["CurrentWeight"] == 0);
    // eu is the last serving cluster: the CLI refuses and writes nothing.
    let err = refused(&s.db, &["set", "--cluster-name", "eu", "--desired", "0", "--min-serving-clusters", "1"]);
    assert!(err.contains("fewer than --min-serving-clusters 1"), "{err}");
    assert_eq!(row(&s.db, "eu")["DesiredWeight"], 100);
    let err = refused(
        &s.db,
        &["ramp", "--cluster-name", "eu", "--to", "0", "--step", "50", "--every", "1s", "--min-serving-clusters", "1"],
    );
    assert!(err.contains("fewer than --min-serving-clusters 1"), "{err}");

    // --max-step refuses a larger jump unless --force.
    let err = refused(&s.db, &["set", "--cluster-name", "eu", "--desired", "40", "--max-step", "50"]);
    assert!(err.contains("more than --max-step 50"), "{err}");
    ok(&s.db, &["set", "--cluster-name", "eu", "--desired", "40", "--max-step", "50", "--force"]);
    wait_row(&s.db, "eu", "eu at 40", Duration::from_secs(20), |r| r["CurrentWeight"] == 40);

    // Written by hand: the controller refuses to apply it (no ack), counts and flags it.
    let conn = rusqlite::Connection::open(&s.db).unwrap();
    conn.execute("UPDATE weights SET desired_weight = 0 WHERE cluster_name = 'eu'", []).unwrap();
    wait_for("the refusal metric", Duration::from_secs(20), || {
        (eu.metric("weir_weight_refused", &[("cluster", "eu"), ("rule", "min_serving_clusters")]) == Some(1.0))
            .then_some(())
    });
    assert_eq!(eu.metric("weir_invalid_input_total", &[("kind", "min_serving_clusters")]), Some(1.0));
    std::thread::sleep(Duration::from_secs(1));
    let r = row(&s.db, "eu");
    assert_eq!((r["DesiredWeight"].clone(), r["CurrentWeight"].clone()), (0.into(), 40.into()), "not acknowledged");
    assert!(eu.metric("weir_weight_drift_seconds", &[("cluster", "eu")]).unwrap() > 0.0, "drift counts");
    assert!(eu.proc.log().contains("fewer than --min-serving-clusters 1"), "logged");
    // The record keeps the weight it had.
    let mut dns = eu.dns();
    let answers = dns.query("app.example.com", hickory_proto::rr::RecordType::A).unwrap();
    assert!(!answers.is_empty(), "eu keeps answering");
}

/// Both clusters set to 0 in one SQLite write: one wins the drain claim and drains, the other keeps
/// serving at its weight, is not acknowledged and counts the refusal. (That the second drains once
/// the first is back is `aws_route53.rs::both_clusters_drained_at_once_keep_one_serving`: `weir
/// local` has no resync, and a host held by the all-zero guard is planned again only on a change.)
#[test]
fn both_clusters_set_to_zero_at_once_keep_one_serving() {
    let s = setup();
    let eu = start(&s, "eu", &[]);
    let us = start(&s, "us", &[]);
    for c in ["eu", "us"] {
        wait_row(&s.db, c, "at 100", Duration::from_secs(20), |r| r["CurrentWeight"] == 100);
    }
    let conn = rusqlite::Connection::open(&s.db).unwrap();
    conn.execute("UPDATE weights SET desired_weight = 0", []).unwrap();
    let winner = wait_for("one cluster drained", Duration::from_secs(20), || {
        ["eu", "us"].into_iter().find(|c| row(&s.db, c)["CurrentWeight"] == 0)
    });
    let (loser, loser_proc) = if winner == "eu" { ("us", &us) } else { ("eu", &eu) };
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(row(&s.db, loser)["CurrentWeight"], 100, "the other is not acknowledged");
    let published = |c: &str| -> i64 {
        conn.query_row("SELECT weight FROM dns_records WHERE set_identifier = ?1 AND type != 'TXT'", [c], |r| r.get(0))
            .unwrap()
    };
    assert_eq!((published(winner), published(loser)), (0, 100), "one keeps serving");
    let refused = ["min_serving_clusters", "all_zero_guard"]
        .iter()
        .filter_map(|k| loser_proc.metric("weir_invalid_input_total", &[("kind", k)]))
        .sum::<f64>();
    assert!(refused >= 1.0, "the kept drain is counted");
    assert_eq!(row(&s.db, winner).get("DrainUntil"), None, "no claim left");
}

#[test]
fn bad_ramp_input_is_refused_and_nothing_written() {
    let s = setup();
    let gate = GateServer::start(GateMode::BadQuery);
    let _eu = start(&s, "eu", &[]);
    wait_row(&s.db, "eu", "eu at 100", Duration::from_secs(20), |r| r["CurrentWeight"] == 100);
    let url = gate.url();
    let base = |to: &'static str, step: &'static str, every: &'static str| {
        vec!["ramp", "--cluster-name", "eu", "--to", to, "--step", step, "--every", every]
    };
    for (args, want) in [
        (base("40", "0", "1s"), "--step"),
        (base("150", "10", "1s"), "--to"),
        (base("-1", "10", "1s"), "--to"),
        (base("40", "10", "soon"), "--every"),
    ] {
        let err = refused(&s.db, &args);
        assert!(err.contains(want) && err.contains("nothing was written"), "{args:?}: {err}");
    }
    // PromQL the server rejects: the gate fails at once, before any step.
    let err = refused(&s.db, &ramp_args(&url, &[]));
    assert!(err.contains("HTTP 400") && err.contains("parse error"), "{err}");
    assert!(!gate.queries().is_empty());
    // A gate nobody listens on.
    let dead = format!("http://127.0.0.1:{}", integration_tests::free_port());
    let err = refused(&s.db, &ramp_args(&dead, &[]));
    assert!(err.contains("unreachable"), "{err}");
    let err = refused(&s.db, &["set", "--cluster-name", "eu", "--desired", "10", "--for", "-5m"]);
    assert!(err.contains("--for"), "{err}");
    let r = row(&s.db, "eu");
    assert!(r.get("Plan").is_none() && r["DesiredWeight"] == 100, "{r}");
    assert!(history(&s.db, "eu").iter().all(|e| e["Field"] == "CurrentWeight"), "no DesiredWeight change recorded");
    let err = refused(&s.db, &["ramp", "--cluster-name", "eu", "--cancel"]);
    assert!(err.contains("no ramp is running"), "{err}");
}

#[test]
fn a_manual_set_cancels_a_running_ramp_and_says_so() {
    let s = setup();
    let gate = GateServer::start(GateMode::Value(0.0));
    let _eu = start(&s, "eu", &[]);
    wait_row(&s.db, "eu", "eu at 100", Duration::from_secs(20), |r| r["CurrentWeight"] == 100);
    let url = gate.url();
    ok(
        &s.db,
        &[
            "ramp",
            "--cluster-name",
            "eu",
            "--to",
            "10",
            "--step",
            "10",
            "--every",
            "30s",
            "--gate-url",
            &url,
            "--gate-query",
            "up",
            "--gate-max",
            "1",
        ],
    );
    wait_row(&s.db, "eu", "step 1", Duration::from_secs(20), |r| r["CurrentWeight"] == 90);
    let out = ok(&s.db, &["set", "--cluster-name", "eu", "--desired", "70"]);
    assert!(out.contains("cancelled the running ramp 100→10"), "{out}");
    let r = wait_row(&s.db, "eu", "70 applied", Duration::from_secs(20), |r| r["CurrentWeight"] == 70);
    assert!(status(&r).contains("cancelled"), "{r}");
    // And --cancel stops one too, leaving DesiredWeight where it is.
    ok(&s.db, &["ramp", "--cluster-name", "eu", "--to", "10", "--step", "10", "--every", "30s"]);
    wait_row(&s.db, "eu", "step 1 of the second ramp", Duration::from_secs(20), |r| r["CurrentWeight"] == 60);
    let out = ok(&s.db, &["ramp", "--cluster-name", "eu", "--cancel"]);
    assert!(out.contains("cancelled"), "{out}");
    std::thread::sleep(Duration::from_secs(1));
    let r = row(&s.db, "eu");
    assert_eq!(r["DesiredWeight"], 60);
    let (_, list, _) = weights(&s.db, &["list"]);
    assert!(list.contains("cancelled"), "{list}");
}

#[test]
fn https_gate_trusted_through_the_ca_file_and_an_untrusted_certificate_fails_safe() {
    let s = setup();
    let gate = GateServer::start_tls(GateMode::Value(0.1));
    let ca = s.dir.join("gate-ca.pem");
    std::fs::write(&ca, gate.ca_pem.as_ref().unwrap()).unwrap();
    let ca = ca.to_str().unwrap().to_string();
    let url = gate.url();
    assert!(url.starts_with("https://"), "{url}");
    // eu's controller trusts the gate's certificate; us's knows only the system's roots.
    let _eu = start(&s, "eu", &["--gate-ca-file", &ca]);
    let us = start(&s, "us", &[]);
    for c in ["eu", "us"] {
        wait_row(&s.db, c, "at 100", Duration::from_secs(40), |r| r["CurrentWeight"] == 100);
    }
    // The CLI checks the gate before it records anything: untrusted, it refuses.
    let err = refused(&s.db, &ramp_args(&url, &[]));
    assert!(err.contains("TLS handshake") && err.contains("nothing was written"), "{err}");
    assert!(row(&s.db, "eu").get("Plan").is_none());

    ok(&s.db, &ramp_args(&url, &["--gate-ca-file", &ca]));
    let done =
        wait_row(&s.db, "eu", "the ramp completed", Duration::from_secs(40), |r| status(r).contains("completed"));
    assert_eq!(done["CurrentWeight"], 40, "{done}");
    assert!(gate.queries().iter().any(|q| q.starts_with("/api/v1/query?query=")), "asked over HTTPS");

    // Recorded by a CLI that trusts the gate, carried out by a controller that does not: the first
    // gate fails, the ramp stops and reverts.
    let us_ramp = [
        "ramp",
        "--cluster-name",
        "us",
        "--to",
        "40",
        "--step",
        "20",
        "--every",
        "1s",
        "--gate-url",
        &url,
        "--gate-query",
        "up",
        "--gate-max",
        "0.5",
        "--gate-ca-file",
        &ca,
    ];
    ok(&s.db, &us_ramp);
    let r = wait_row(&s.db, "us", "the abort", Duration::from_secs(40), |r| status(r).contains("aborted"));
    assert!(status(&r).contains("aborted at 80") && status(&r).contains("TLS handshake"), "{r}");
    wait_row(&s.db, "us", "reverted", Duration::from_secs(40), |r| {
        r["DesiredWeight"] == 100 && r["CurrentWeight"] == 100
    });
    assert_eq!(us.metric("weir_ramp_aborted_total", &[("cluster", "us")]), Some(1.0));
}

#[test]
fn a_commit_to_the_file_wakes_the_weight_loop_before_its_poll() {
    let s = setup();
    // A poll of an hour: only the commit watch can make the edit show within seconds.
    let eu = LocalCluster::start(
        "eu",
        &s.manifests,
        &s.db,
        &s.dir,
        &["--initial-weight", "100", "--weight-poll-interval", "1h"],
    );
    wait_row(&s.db, "eu", "eu at 100", Duration::from_secs(20), |r| r["CurrentWeight"] == 100);
    // Once acknowledged, the loop has read its row and sleeps.
    std::thread::sleep(Duration::from_millis(500));
    ok(&s.db, &["set", "--cluster-name", "eu", "--desired", "40"]);
    wait_row(&s.db, "eu", "40 applied within 10 s", Duration::from_secs(10), |r| r["CurrentWeight"] == 40);
    assert_eq!(eu.metric("cluster_traffic_controller_ingress_weight_desired", &[("cluster", "eu")]), Some(40.0));
}
