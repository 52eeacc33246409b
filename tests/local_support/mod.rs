//! Shared by the CLI tests that run `weir local` (its own module directory, so cargo does not build
//! it as a test binary).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `weir local --cluster-name eu` on `manifests` and `db` (plus `extra` flags), with the WEIR_*
/// environment removed, until its first pass has published everything (/readyz answers 200), then
/// stops it. Its output goes to `log`, shown when it exits or never becomes ready.
pub fn run_local_until_ready(manifests: &Path, db: &Path, log: &Path, extra: &[&str]) {
    let free_port = || TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let metrics_port = free_port();
    let out = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("WEIR_")) {
        cmd.env_remove(k);
    }
    let mut local = cmd
        .args(["local", "--cluster-name", "eu", "--manifests", manifests.to_str().unwrap()])
        .args(["--db", db.to_str().unwrap()])
        .args(["--dns-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(extra)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let ready = || -> Option<()> {
        let mut s = TcpStream::connect(("127.0.0.1", metrics_port)).ok()?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        resp.starts_with("HTTP/1.1 200").then_some(())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready().is_none() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(local.try_wait().unwrap().is_none(), "weir local exited:\n{text}");
        assert!(Instant::now() < deadline, "weir local never became ready:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    local.kill().unwrap();
    local.wait().unwrap();
}
