//! `weir controller` with the file provider, the static weight store and the embedded zone served over
//! DNS: the composition the Kubernetes and AWS parts plug into.

use std::process::Command;
use std::time::Duration;

use integration_tests::{
    free_port, free_udp_tcp_port, http_get, ingress_manifest, metric, wait_for, weir_bin, DnsClient, Proc,
};

#[test]
fn controller_publishes_with_the_static_store() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("manifests");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("web.yaml"),
        ingress_manifest("shop", "web", &["www.example.com"], Some("50"), "192.0.2.1"),
    )
    .unwrap();
    let (dns_port, metrics_port) = (free_udp_tcp_port(), free_port());
    let mut cmd = Command::new(weir_bin());
    cmd.args(["controller", "--cluster-name", "eu", "--provider", "file", "--manifests"])
        .arg(&dir)
        .args(["--backend-type", "static", "--static-weight", "60", "--dns-provider", "embedded", "--db"])
        .arg(tmp.path().join("zone.db"))
        .args([
            "--dns-listen",
            &format!("127.0.0.1:{dns_port}"),
            "--metrics-addr",
            &format!("127.0.0.1:{metrics_port}"),
        ]);
    let mut p = Proc::spawn("weir-controller", &mut cmd, tmp.path());
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    // W = ceil(60 × 50 / 100) = 30.
    wait_for("the record weight", Duration::from_secs(30), || {
        (metric(&http_get(&url)?, "weir_record_weight", &[("host", "www.example.com"), ("cluster", "eu")])? == 30.0)
            .then_some(())
    });
    assert!(http_get(&format!("http://127.0.0.1:{metrics_port}/readyz")).is_some());
    let mut dns = DnsClient::new(dns_port);
    // The server reloads the zone when the file changes: the record shows up shortly after it is written.
    wait_for("the DNS answer", Duration::from_secs(10), || {
        (dns.first_a("www.example.com")? == "192.0.2.1").then_some(())
    });
    let status = p.terminate(Duration::from_secs(10)).expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}\n{}", p.log());
}
