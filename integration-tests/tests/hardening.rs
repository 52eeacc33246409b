//! Hardening against a running `weir local` (the real binary): special files and symlink loops in
//! the manifests directory, oversized manifests, SIGTERM in every state, the DNS server's zone
//! boundary, and HTTP connections that never finish their headers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use integration_tests::{http_get, ingress_manifest, wait_for, LocalCluster};

const HOST: &str = "www.example.com";
const IP: &str = "192.0.2.1";

fn manifests(tmp: &Path) -> std::path::PathBuf {
    let dir = tmp.join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("web.yaml"), ingress_manifest("shop", "web", &[HOST], None, IP)).unwrap();
    dir
}

fn start(tmp: &Path, dir: &Path, extra: &[&str]) -> LocalCluster {
    let mut args = vec!["--initial-weight", "100", "--manifests-poll-interval", "200ms"];
    args.extend_from_slice(extra);
    LocalCluster::start("eu", dir, &tmp.join("weir.db"), tmp, &args)
}

fn invalid_manifests(c: &LocalCluster) -> f64 {
    c.metric("weir_invalid_input_total", &[("kind", "manifest")]).unwrap_or(0.0)
}

#[test]
fn special_files_and_symlink_loops_never_block_and_sigterm_exits_within_5s() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = manifests(tmp.path());
    // A FIFO with a manifest name (opening it for reading would block forever), /dev/zero through a
    // symlink (reading it never ends), and a symlink loop.
    assert!(std::process::Command::new("mkfifo").arg(dir.join("pipe.yaml")).status().unwrap().success());
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.yaml")).unwrap();
    std::os::unix::fs::symlink(&dir, dir.join("loop")).unwrap();
    let mut c = start(tmp.path(), &dir, &[]);
    let mut dns = c.dns();
    wait_for("the record over DNS", Duration::from_secs(30), || (dns.first_a(HOST)? == IP).then_some(()));
    wait_for("both special files refused", Duration::from_secs(10), || (invalid_manifests(&c) >= 2.0).then_some(()));
    let log = c.proc.log();
    assert!(log.contains("a FIFO") && log.contains("a device"), "{log}");
    // Still polling (not stuck): a new file is served.
    std::fs::write(dir.join("api.yaml"), ingress_manifest("shop", "api", &["api.example.com"], None, IP)).unwrap();
    wait_for("the new host", Duration::from_secs(10), || (dns.first_a("api.example.com")? == IP).then_some(()));

    let started = Instant::now();
    let status = c.proc.terminate(Duration::from_secs(5)).expect("weir exits within 5 s of SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn sigterm_exits_within_5s_while_a_file_is_settling() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = manifests(tmp.path());
    let mut c = start(tmp.path(), &dir, &["--manifests-settle", "2s"]);
    // A file that keeps changing never settles: the poll is mid-settle when SIGTERM comes.
    let file = dir.join("web.yaml");
    for i in 0..10 {
        std::fs::write(&file, format!("{}# {i}\n", ingress_manifest("shop", "web", &[HOST], None, IP))).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = Instant::now();
    c.proc.terminate(Duration::from_secs(5)).expect("weir exits within 5 s of SIGTERM");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn an_oversized_manifest_keeps_its_last_good_content() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = manifests(tmp.path());
    let c = start(tmp.path(), &dir, &["--manifests-max-file-bytes", "4096"]);
    let mut dns = c.dns();
    wait_for("the record over DNS", Duration::from_secs(30), || (dns.first_a(HOST)? == IP).then_some(()));
    let before = invalid_manifests(&c);
    // The same Ingress, now pointing elsewhere, padded past the cap.
    let big = format!("{}# {}\n", ingress_manifest("shop", "web", &[HOST], None, "192.0.2.99"), "x".repeat(8000));
    integration_tests::write_atomic(&dir.join("web.yaml"), &big);
    wait_for("the oversized file refused", Duration::from_secs(10), || (invalid_manifests(&c) > before).then_some(()));
    assert!(c.proc.log().contains("per-file cap of 4096 bytes"), "{}", c.proc.log());
    for _ in 0..20 {
        assert_eq!(dns.first_a(HOST).as_deref(), Some(IP), "the last good content keeps serving");
    }
}

#[test]
fn the_dns_server_is_authoritative_only_for_its_zone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = manifests(tmp.path());
    let c = start(tmp.path(), &dir, &["--binding-domain", "example.com"]);
    let mut dns = c.dns();
    wait_for("the record over DNS", Duration::from_secs(30), || (dns.first_a(HOST)? == IP).then_some(()));
    for name in ["google.com", "com", "example.org"] {
        let err = dns.query(name, hickory_proto::rr::RecordType::A).unwrap_err();
        assert!(err.contains("Refused"), "{name}: {err}");
    }
    let err = dns.query("nope.example.com", hickory_proto::rr::RecordType::A).unwrap_err();
    assert!(err.contains("Non-Existent Domain") || err.contains("NXDomain"), "{err}");
    let soa = dns.query("example.com", hickory_proto::rr::RecordType::SOA).unwrap();
    assert_eq!(soa.len(), 1);
    assert!(soa[0].contains("hostmaster.example.com."), "{soa:?}");
}

#[test]
fn slow_header_connections_do_not_stop_healthz() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = manifests(tmp.path());
    let c = start(tmp.path(), &dir, &[]);
    let addr = format!("127.0.0.1:{}", c.metrics_port);
    // 300 connections that start a request and never finish its headers.
    let mut slow: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    let started = Instant::now();
    let body = http_get(&format!("http://{addr}/healthz")).expect("/healthz answers while 300 connections stall");
    assert_eq!(body, "ok");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    // The stalled ones are closed after the header-read timeout (5 s), and counted.
    let deadline = Instant::now() + Duration::from_secs(15);
    for s in &mut slow {
        s.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10))))
            .unwrap();
        let mut buf = [0u8; 512];
        // hyper answers 408 or just closes; either way the connection ends.
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
    assert!(Instant::now() < deadline, "stalled connections were not closed");
    // Counted just after the close the client saw: give the server a moment to count the last ones.
    wait_for("300 header timeouts counted", Duration::from_secs(5), || {
        let hits = c.metric("weir_http_limit_hits_total", &[("server", "metrics"), ("limit", "header_timeout")]);
        (hits? >= 300.0).then_some(())
    });
}
