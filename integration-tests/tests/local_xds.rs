//! `weir local --xds-name`: the DNS pipeline and the xDS control plane in one process on the embedded
//! default, the strategy weights kept in the same SQLite file (so a restart keeps them).

use std::process::Command;
use std::time::Duration;

use integration_tests::{free_port, free_udp_tcp_port, http_get, wait_for, weir_bin, workspace_root, Proc};

fn start(db: &std::path::Path, log_dir: &std::path::Path, admin: u16, dns: u16, name: &str) -> Proc {
    let mut cmd = Command::new(weir_bin());
    cmd.arg("local")
        .arg("--manifests")
        .arg(workspace_root().join("examples/local"))
        .arg("--db")
        .arg(db)
        .args(["--cluster-name", "eu", "--initial-weight", "100"])
        .args(["--dns-listen", &format!("127.0.0.1:{dns}")])
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--xds-name", "shop", "--xds-namespace", "shop"])
        .args(["--grpc-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")]);
    Proc::spawn(name, &mut cmd, log_dir)
}

fn traffic(admin: u16) -> Option<serde_json::Value> {
    serde_json::from_str(&http_get(&format!("http://127.0.0.1:{admin}/traffic"))?).ok()
}

#[test]
fn local_serves_xds_beside_dns_and_keeps_weights_in_the_db() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("weir.db");
    let (admin, dns) = (free_port(), free_udp_tcp_port());
    let mut weir = start(&db, tmp.path(), admin, dns, "weir-local");

    let initial = wait_for("the admin API", Duration::from_secs(30), || traffic(admin));
    assert_eq!(initial, serde_json::json!({"blue": 100, "green": 0}), "trafficDefaults of examples/local");
    let services: serde_json::Value = wait_for("discovered services", Duration::from_secs(10), || {
        serde_json::from_str(&http_get(&format!("http://127.0.0.1:{admin}/services"))?).ok()
    });
    let text = services.to_string();
    assert!(text.contains("planner-blue") && text.contains("planner-green"), "{text}");

    // The DNS half runs in the same process.
    let mut client = integration_tests::DnsClient::new(dns);
    wait_for("a DNS answer", Duration::from_secs(30), || client.first_a("api.example.com"));

    let resp = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{admin}/traffic?blue=30&green=70"))
        .send()
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().unwrap_or_default());
    assert_eq!(traffic(admin), Some(serde_json::json!({"blue": 30, "green": 70})));

    // A restart on the same db serves the weights set before it.
    assert!(weir.terminate(Duration::from_secs(10)).is_some_and(|s| s.success()), "clean exit on SIGTERM");
    let _weir = start(&db, tmp.path(), admin, dns, "weir-local-2");
    let after = wait_for("the admin API after a restart", Duration::from_secs(30), || traffic(admin));
    assert_eq!(after, serde_json::json!({"blue": 30, "green": 70}));
}
