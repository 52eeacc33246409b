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

/// `weir plan` and `weir local` share their defaults: once `weir local` has converged, a plan on
/// its database (same manifests, no extra flags) has nothing to change.
#[test]
fn plan_on_a_converged_local_db_shows_no_change() {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    let free_port = || TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("weir.db");
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/local");
    let metrics_port = free_port();
    let log = std::fs::File::create(tmp.path().join("local.log")).unwrap();
    let mut local = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["local", "--cluster-name", "eu", "--manifests", examples, "--initial-weight", "100"])
        .arg("--db")
        .arg(&db)
        .args(["--dns-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    // /readyz answers 200 once the first reconcile pass has published everything.
    let ready = || -> Option<()> {
        let mut s = TcpStream::connect(("127.0.0.1", metrics_port)).ok()?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        resp.starts_with("HTTP/1.1 200").then_some(())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready().is_none() {
        let log = std::fs::read_to_string(tmp.path().join("local.log")).unwrap_or_default();
        assert!(local.try_wait().unwrap().is_none(), "weir local exited:\n{log}");
        assert!(Instant::now() < deadline, "weir local never became ready:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    local.kill().unwrap();
    local.wait().unwrap();

    let plan = weir(&["plan"], &db);
    // A plan lists only the hosts it would change.
    assert_eq!(plan["cluster_weight"], 100);
    assert_eq!(plan["hosts"], serde_json::json!([]), "not converged: {plan:#}");
}
