//! The file provider: a directory of Kubernetes manifests (Ingresses, Services, EndpointSlices, weir's
//! resources, Gateway API Gateways and routes, Namespaces) (YAML or JSON, multi-document files, any
//! depth; hidden files and directories skipped) turned into a [`Snapshot`], re-read on change.
//!
//! Parsing ([`parse_manifests`]) is pure. The I/O side ([`ManifestDir`]) keeps, per file, the last
//! content that parsed: a file that becomes unreadable or invalid is logged once per distinct problem,
//! counted in `weir_invalid_input_total{kind="manifest"}`, and its last good objects keep serving while
//! other files' changes still apply.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::SnapshotTx;
use crate::crd::{BackendTrafficPolicy, NamespaceConfig, TrafficInfra, VirtualService};
use crate::gateway::{Gateway, GrpcRoute, HttpRoute, TlsRoute};
use crate::ir::InputKind;
use crate::model::Snapshot;
use crate::telemetry::InvalidInputs;

/// One object read from a manifest.
#[derive(Debug, Clone)]
pub enum Object {
    Ingress(Box<Ingress>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    TrafficInfra(Box<TrafficInfra>),
    BackendTrafficPolicy(Box<BackendTrafficPolicy>),
    NamespaceConfig(Box<NamespaceConfig>),
    Gateway(Box<Gateway>),
    HttpRoute(Box<HttpRoute>),
    GrpcRoute(Box<GrpcRoute>),
    TlsRoute(Box<TlsRoute>),
    Namespace(Box<Namespace>),
    VirtualService(Box<VirtualService>),
    Pod(Box<Pod>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read: {0}")]
    Read(String),
    #[error("document {document}: not valid YAML: {message}")]
    Yaml { document: usize, message: String },
    #[error("document {document}: {message}")]
    Shape { document: usize, message: String },
    #[error("cannot list {path}: {message}")]
    Directory { path: String, message: String },
    #[error("not a regular file ({0}); only regular files are read")]
    NotRegular(String),
    #[error("{size} bytes is over the per-file cap of {cap} bytes (--manifests-max-file-bytes)")]
    TooLarge { size: u64, cap: u64 },
    #[error("the manifests together pass the cap of {cap} bytes (--manifests-max-total-bytes)")]
    DirectoryTooLarge { cap: u64 },
}

/// Bounds of the file provider.
#[derive(Debug, Clone, Copy)]
pub struct FileLimits {
    pub max_file_bytes: u64,
    pub max_total_bytes: u64,
    /// A changed file is taken only once its (size, mtime, inode) held still this long.
    pub settle: Duration,
    /// Directories deeper than this below the root are not entered.
    pub max_depth: usize,
}

impl Default for FileLimits {
    fn default() -> Self {
        Self { max_file_bytes: 4 << 20, max_total_bytes: 64 << 20, settle: Duration::from_millis(250), max_depth: 16 }
    }
}

/// What says a file changed without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: Option<std::time::SystemTime>,
    ino: u64,
    dev: u64,
}

fn stamp(meta: &std::fs::Metadata) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    Stamp { len: meta.len(), mtime: meta.modified().ok(), ino: meta.ino(), dev: meta.dev() }
}

/// Modified within the last second.
fn recent(st: &Stamp) -> bool {
    st.mtime.and_then(|m| m.elapsed().ok()).is_none_or(|age| age < Duration::from_secs(1))
}

fn kind_of(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else if ft.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Reads a regular file of at most `cap` bytes without ever blocking on a special file: opened
/// non-blocking, its type checked on the open descriptor (the path may have been swapped since it was
/// listed).
fn read_regular(path: &Path, cap: u64) -> Result<(Vec<u8>, Stamp), ManifestError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| ManifestError::Read(e.to_string()))?;
    let meta = file.metadata().map_err(|e| ManifestError::Read(e.to_string()))?;
    if !meta.is_file() {
        return Err(ManifestError::NotRegular(kind_of(meta.file_type()).into()));
    }
    if meta.len() > cap {
        return Err(ManifestError::TooLarge { size: meta.len(), cap });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1).read_to_end(&mut bytes).map_err(|e| ManifestError::Read(e.to_string()))?;
    if bytes.len() as u64 > cap {
        return Err(ManifestError::TooLarge { size: bytes.len() as u64, cap });
    }
    Ok((bytes, stamp(&meta)))
}

/// Parses one file's text: every document (`---` separated; empty documents skipped) dispatched on
/// apiVersion/kind. `v1 List` items are read too. Kinds weir does not use are skipped with a debug
/// log. The first bad document fails the whole file, so that a half-read file never serves.
pub fn parse_manifests(text: &str) -> Result<Vec<Object>, ManifestError> {
    parse_manifests_checked(text).map(|(objects, _)| objects)
}

/// [`parse_manifests`], and a warning for every field of a weir resource that its CRD schema does
/// not have (the API server would prune it; here it would be silently ignored): document, object
/// and the field's path.
pub fn parse_manifests_checked(text: &str) -> Result<(Vec<Object>, Vec<String>), ManifestError> {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize_from(document)
            .map_err(|e| ManifestError::Yaml { document: index, message: e.to_string() })?;
        parse_value(value, index, &mut out, &mut warnings)?;
    }
    Ok((out, warnings))
}

/// `serde::Deserialize` for `serde_yaml::Value` without naming the trait at every call site.
trait DeserializeFrom: Sized {
    fn deserialize_from(d: serde_yaml::Deserializer<'_>) -> Result<Self, serde_yaml::Error>;
}

impl DeserializeFrom for serde_yaml::Value {
    fn deserialize_from(d: serde_yaml::Deserializer<'_>) -> Result<Self, serde_yaml::Error> {
        serde::Deserialize::deserialize(d)
    }
}

fn parse_value(
    value: serde_yaml::Value,
    document: usize,
    out: &mut Vec<Object>,
    warnings: &mut Vec<String>,
) -> Result<(), ManifestError> {
    let shape = |message: String| ManifestError::Shape { document, message };
    let map = match &value {
        serde_yaml::Value::Null => return Ok(()),
        serde_yaml::Value::Mapping(m) => m,
        _ => return Err(shape("a manifest must be a mapping with apiVersion and kind".into())),
    };
    let field = |name: &str| map.get(name).and_then(serde_yaml::Value::as_str).map(str::to_string);
    let (Some(api_version), Some(kind)) = (field("apiVersion"), field("kind")) else {
        return Err(shape("missing apiVersion or kind".into()));
    };
    fn typed<T: DeserializeOwned>(
        value: serde_yaml::Value,
        api_version: &str,
        kind: &str,
        document: usize,
    ) -> Result<Box<T>, ManifestError> {
        serde_yaml::from_value(value)
            .map(Box::new)
            .map_err(|e| ManifestError::Shape { document, message: format!("not a valid {api_version} {kind}: {e}") })
    }
    let weir_crd = match (api_version.as_str(), kind.as_str()) {
        ("weir.dev/v1alpha1", "TrafficInfra") => Some(<TrafficInfra as kube::CustomResourceExt>::crd()),
        ("weir.dev/v1alpha1", "BackendTrafficPolicy") => Some(<BackendTrafficPolicy as kube::CustomResourceExt>::crd()),
        ("weir.dev/v1alpha1", "NamespaceConfig") => Some(<NamespaceConfig as kube::CustomResourceExt>::crd()),
        (crate::crd::VS_API_VERSION, "VirtualService") => Some(<VirtualService as kube::CustomResourceExt>::crd()),
        _ => None,
    };
    if let Some(crd) = weir_crd {
        if let Ok(json) = serde_json::to_value(&value) {
            let meta = json.get("metadata");
            let name = |k: &str| meta.and_then(|m| m.get(k)).and_then(|v| v.as_str()).unwrap_or_default().to_string();
            for field in crate::crd::unknown_fields(&crd, &json) {
                warnings.push(format!(
                    "document {document}: {kind} {}/{}: unknown field {field} (not in the {kind} schema; ignored)",
                    name("namespace"),
                    name("name")
                ));
            }
        }
    }
    let object = match (api_version.as_str(), kind.as_str()) {
        ("networking.k8s.io/v1", "Ingress") => Object::Ingress(typed(value, &api_version, &kind, document)?),
        ("v1", "Service") => Object::Service(typed(value, &api_version, &kind, document)?),
        ("discovery.k8s.io/v1", "EndpointSlice") => Object::EndpointSlice(typed(value, &api_version, &kind, document)?),
        ("weir.dev/v1alpha1", "TrafficInfra") => {
            // serde would drop a field the schema does not have (a renamed one falls back to its
            // default); refused instead, as the API server's strict field validation refuses it.
            let json = serde_json::to_value(&value).map_err(|e| shape(e.to_string()))?;
            let unknown = crate::crd::traffic_infra_unknown_fields(&json);
            if !unknown.is_empty() {
                let list: Vec<String> = unknown.iter().map(ToString::to_string).collect();
                return Err(shape(format!("TrafficInfra: {}", list.join(", "))));
            }
            Object::TrafficInfra(typed(value, &api_version, &kind, document)?)
        }
        ("weir.dev/v1alpha1", "BackendTrafficPolicy") => {
            Object::BackendTrafficPolicy(typed(value, &api_version, &kind, document)?)
        }
        ("weir.dev/v1alpha1", "NamespaceConfig") => {
            Object::NamespaceConfig(typed(value, &api_version, &kind, document)?)
        }
        ("gateway.networking.k8s.io/v1", "Gateway") => Object::Gateway(typed(value, &api_version, &kind, document)?),
        ("gateway.networking.k8s.io/v1", "HTTPRoute") => {
            Object::HttpRoute(typed(value, &api_version, &kind, document)?)
        }
        ("gateway.networking.k8s.io/v1", "GRPCRoute") => {
            Object::GrpcRoute(typed(value, &api_version, &kind, document)?)
        }
        ("gateway.networking.k8s.io/v1alpha2", "TLSRoute") => {
            Object::TlsRoute(typed(value, &api_version, &kind, document)?)
        }
        ("v1", "Namespace") => Object::Namespace(typed(value, &api_version, &kind, document)?),
        (crate::crd::VS_API_VERSION, "VirtualService") => {
            Object::VirtualService(typed(value, &api_version, &kind, document)?)
        }
        ("v1", "Pod") => Object::Pod(typed(value, &api_version, &kind, document)?),
        ("v1", "List") => {
            let items = match map.get("items") {
                None | Some(serde_yaml::Value::Null) => return Ok(()),
                Some(serde_yaml::Value::Sequence(items)) => items.clone(),
                Some(_) => return Err(shape("List items must be a sequence".into())),
            };
            for item in items {
                parse_value(item, document, out, warnings)?;
            }
            return Ok(());
        }
        _ => {
            tracing::debug!(api_version, kind, document, "ignoring a kind weir does not read");
            return Ok(());
        }
    };
    out.push(object);
    Ok(())
}

/// Builds a normalised snapshot from objects.
pub fn snapshot_of<'a>(objects: impl IntoIterator<Item = &'a Object>, revision: u64) -> Snapshot {
    let mut s = Snapshot { revision, ..Snapshot::default() };
    for object in objects {
        match object {
            Object::Ingress(o) => s.ingresses.push((**o).clone()),
            Object::Service(o) => s.services.push((**o).clone()),
            Object::EndpointSlice(o) => s.endpoint_slices.push((**o).clone()),
            Object::TrafficInfra(o) => s.traffic_infras.push((**o).clone()),
            Object::BackendTrafficPolicy(o) => s.backend_traffic_policies.push((**o).clone()),
            Object::NamespaceConfig(o) => s.namespace_configs.push((**o).clone()),
            Object::Gateway(o) => s.gateways.push((**o).clone()),
            Object::HttpRoute(o) => s.http_routes.push((**o).clone()),
            Object::GrpcRoute(o) => s.grpc_routes.push((**o).clone()),
            Object::TlsRoute(o) => s.tls_routes.push((**o).clone()),
            Object::Namespace(o) => s.namespaces.push((**o).clone()),
            Object::VirtualService(o) => s.virtual_services.push((**o).clone()),
            Object::Pod(o) => s.pods.push((**o).clone()),
        }
    }
    s.normalize();
    s
}

/// A problem with one file (or the directory), as logged and counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    pub path: PathBuf,
    pub error: ManifestError,
    /// Whether objects of an earlier good version of the file keep serving.
    pub serving_last_good: bool,
}

#[derive(Debug, Default)]
struct FileState {
    /// Stamp of the content last taken (or refused); the file is not re-read while it stays.
    taken: Option<Stamp>,
    /// Hash of the content last looked at (good or bad), so unchanged files are not re-parsed and a
    /// bad file is reported once per distinct content.
    seen: Option<[u8; 32]>,
    /// Last error reported for this file, to report each distinct problem once.
    last_error: Option<ManifestError>,
    /// Objects of the last content that parsed.
    good: Option<Vec<Object>>,
}

/// The I/O side of the file provider, without the async loop: poll it, then take a snapshot.
#[derive(Debug)]
pub struct ManifestDir {
    root: PathBuf,
    limits: FileLimits,
    files: BTreeMap<PathBuf, FileState>,
    dir_error: Option<ManifestError>,
}

/// What one poll found.
#[derive(Debug, Default)]
pub struct PollOutcome {
    /// The served objects changed.
    pub changed: bool,
    /// New problems (each distinct problem is reported once).
    pub problems: Vec<FileProblem>,
}

impl ManifestDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), limits: FileLimits::default(), files: BTreeMap::new(), dir_error: None }
    }

    pub fn with_limits(mut self, limits: FileLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Re-reads the directory. Files are compared by content hash.
    pub fn poll(&mut self) -> PollOutcome {
        let mut outcome = PollOutcome::default();
        let paths = match list_manifests(&self.root, self.limits.max_depth) {
            Ok(paths) => {
                self.dir_error = None;
                paths
            }
            Err(error) => {
                // The whole directory is unreadable: keep everything serving as it was.
                if self.dir_error.as_ref() != Some(&error) {
                    self.dir_error = Some(error.clone());
                    let serving_last_good = !self.files.is_empty();
                    outcome.problems.push(FileProblem { path: self.root.clone(), error, serving_last_good });
                }
                return outcome;
            }
        };
        let before = self.files.len();
        self.files.retain(|p, _| paths.iter().any(|(q, _)| q == p));
        outcome.changed |= self.files.len() != before;

        let moved = self.moved(&paths, &mut outcome);
        if moved.is_empty() {
            return outcome;
        }
        if !self.limits.settle.is_zero() {
            std::thread::sleep(self.limits.settle);
        }
        for (path, before) in moved {
            let state = self.files.get_mut(&path).expect("listed above");
            let still = std::fs::metadata(&path).ok().map(|m| stamp(&m));
            if still != Some(before) {
                // Still being written: look again at the next poll.
                continue;
            }
            match take(state, &path, before, self.limits.max_file_bytes) {
                Ok(None) => {}
                Ok(Some(objects)) => {
                    state.last_error = None;
                    state.good = Some(objects);
                    outcome.changed = true;
                }
                Err(error) => {
                    if let ManifestError::Read(_) = error {
                        // Unreadable: look at it again next time, whatever its content turns out to be.
                        state.seen = None;
                        state.taken = None;
                    } else {
                        state.taken = Some(before);
                    }
                    report(state, &path, error, &mut outcome);
                }
            }
        }
        outcome
    }

    /// Which listed files moved since they were last taken, with their stamps; a moved file is read
    /// only once it has held still for the settle time (a writer rewriting in place is never read
    /// half-way). Files past the size bounds and special files are reported instead.
    fn moved(&mut self, paths: &[(PathBuf, Listed)], outcome: &mut PollOutcome) -> Vec<(PathBuf, Stamp)> {
        let mut moved = Vec::new();
        let mut total: u64 = 0;
        for (path, listed) in paths {
            let state = self.files.entry(path.clone()).or_default();
            match listed {
                Listed::Regular(st) if st.len > self.limits.max_file_bytes => {
                    let error = ManifestError::TooLarge { size: st.len, cap: self.limits.max_file_bytes };
                    report(state, path, error, outcome);
                    state.taken = None;
                }
                Listed::Regular(st) => {
                    total = total.saturating_add(st.len);
                    if total > self.limits.max_total_bytes {
                        let error = ManifestError::DirectoryTooLarge { cap: self.limits.max_total_bytes };
                        report(state, path, error, outcome);
                        state.taken = None;
                    } else if state.taken != Some(*st) || recent(st) {
                        // mtime is coarse (a few ms): a same-size rewrite within one tick keeps the
                        // stamp, so a recently modified file is re-read (and compared by hash).
                        moved.push((path.clone(), *st));
                    }
                }
                Listed::Special(kind) => report(state, path, ManifestError::NotRegular((*kind).into()), outcome),
            }
        }
        moved
    }

    /// The snapshot of every file's last good objects.
    pub fn snapshot(&self, revision: u64) -> Snapshot {
        snapshot_of(self.files.values().filter_map(|f| f.good.as_ref()).flatten(), revision)
    }
}

/// Reads a file that held still at `before`: its objects when its content is new and parses,
/// `None` when it moved while being read or its content was already looked at.
fn take(state: &mut FileState, path: &Path, before: Stamp, cap: u64) -> Result<Option<Vec<Object>>, ManifestError> {
    let (bytes, read_stamp) = read_regular(path, cap)?;
    if read_stamp != before {
        return Ok(None);
    }
    state.taken = Some(before);
    let hash: [u8; 32] = Sha256::digest(&bytes).into();
    if state.seen == Some(hash) {
        return Ok(None);
    }
    state.seen = Some(hash);
    let text = String::from_utf8(bytes).map_err(|e| ManifestError::Read(format!("not UTF-8: {e}")))?;
    let (objects, warnings) = parse_manifests_checked(&text)?;
    for w in warnings {
        tracing::warn!(file = %path.display(), "{w}");
    }
    Ok(Some(objects))
}

/// Reports a problem once per distinct error; the file's last good objects keep serving.
fn report(state: &mut FileState, path: &Path, error: ManifestError, outcome: &mut PollOutcome) {
    if state.last_error.as_ref() != Some(&error) {
        state.last_error = Some(error.clone());
        outcome.problems.push(FileProblem { path: path.to_path_buf(), error, serving_last_good: state.good.is_some() });
    }
}

/// A manifest path as listed.
#[derive(Debug, Clone)]
enum Listed {
    Regular(Stamp),
    /// A FIFO, socket or device with a manifest name: never opened.
    Special(&'static str),
}

/// Manifest files under `root`, recursively, sorted; hidden files and directories are skipped.
/// Symlinks are followed (ConfigMap mounts are symlinks), each directory entered once (by device and
/// inode, so a symlink loop ends) and at most `max_depth` deep.
fn list_manifests(root: &Path, max_depth: usize) -> Result<Vec<(PathBuf, Listed)>, ManifestError> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut visited = std::collections::HashSet::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let dir_err =
            |e: std::io::Error| ManifestError::Directory { path: dir.display().to_string(), message: e.to_string() };
        let meta = std::fs::metadata(&dir).map_err(dir_err)?;
        if !visited.insert((meta.dev(), meta.ino())) {
            continue;
        }
        let entries = std::fs::read_dir(&dir).map_err(dir_err)?;
        for entry in entries {
            let entry = entry.map_err(dir_err)?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            // stat follows a symlink to what it names; stat never opens, so a FIFO cannot block here.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                if depth < max_depth {
                    stack.push((path, depth + 1));
                } else {
                    tracing::warn!(dir = %path.display(), max_depth, "manifest directory too deep; not entered");
                }
            } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) {
                let listed = if meta.is_file() {
                    Listed::Regular(stamp(&meta))
                } else {
                    Listed::Special(kind_of(meta.file_type()))
                };
                out.push((path, listed));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The file provider's loop.
pub struct FileProvider {
    dir: ManifestDir,
    interval: Duration,
    invalid: InvalidInputs,
    heartbeat: Option<crate::telemetry::Heartbeat>,
}

impl FileProvider {
    pub fn new(root: impl Into<PathBuf>, interval: Duration, invalid: InvalidInputs) -> Self {
        Self { dir: ManifestDir::new(root), interval, invalid, heartbeat: None }
    }

    pub fn with_limits(mut self, limits: FileLimits) -> Self {
        self.dir = self.dir.with_limits(limits);
        self
    }

    /// Beaten after every poll, for `/healthz`.
    pub fn set_heartbeat(&mut self, heartbeat: crate::telemetry::Heartbeat) {
        self.heartbeat = Some(heartbeat);
    }

    /// Reads the directory once; returns the first snapshot (revision 1) for the channel.
    pub fn load(&mut self) -> Snapshot {
        let outcome = self.dir.poll();
        self.report(&outcome);
        self.dir.snapshot(1)
    }

    fn report(&self, outcome: &PollOutcome) {
        for p in &outcome.problems {
            self.invalid.inc(InputKind::Manifest);
            tracing::warn!(
                file = %p.path.display(),
                error = %crate::telemetry::clip(&p.error.to_string()),
                serving_last_good = p.serving_last_good,
                "invalid manifest: {} ({}); {}",
                p.path.display(),
                crate::telemetry::clip(&p.error.to_string()),
                if p.serving_last_good { "its last good content keeps serving" } else { "nothing from it is served" }
            );
        }
    }

    /// Polls every interval until `shutdown` flips to true; publishes a new snapshot with a higher
    /// revision only when the served objects changed. Call [`load`](Self::load) first.
    pub async fn run(mut self, tx: SnapshotTx, mut shutdown: watch::Receiver<bool>) {
        let mut revision = tx.borrow().revision;
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
            // Reading files blocks: do it off the runtime's worker threads, moving the state in and out.
            let mut dir = self.dir;
            let (dir_back, outcome) = match tokio::task::spawn_blocking(move || {
                let outcome = dir.poll();
                (dir, outcome)
            })
            .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "manifest poll task failed; stopping the file provider");
                    return;
                }
            };
            self.dir = dir_back;
            if let Some(h) = &self.heartbeat {
                h.beat();
            }
            self.report(&outcome);
            if outcome.changed {
                revision += 1;
                let snapshot = self.dir.snapshot(revision);
                tracing::info!(
                    revision,
                    ingresses = snapshot.ingresses.len(),
                    services = snapshot.services.len(),
                    endpoint_slices = snapshot.endpoint_slices.len(),
                    "manifests changed"
                );
                tx.send_replace(Arc::new(snapshot));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: shop}
spec:
  rules:
    - host: www.example.com
      http:
        paths:
          - path: /
            pathType: Prefix
            backend: {service: {name: web, port: {number: 80}}}
status:
  loadBalancer:
    ingress: [{hostname: lb.example.net}]
"#;

    #[test]
    fn a_traffic_infra_with_an_unknown_or_renamed_field_is_refused_naming_it() {
        let text = "apiVersion: weir.dev/v1alpha1\nkind: TrafficInfra\nmetadata: {name: t, namespace: n}\n\
                    spec:\n  envoy:\n    hpa:\n      targetCpuUtilization: 60\n";
        let err = parse_manifests(text).expect_err("refused").to_string();
        assert!(
            err.contains("unknown field .spec.envoy.hpa.targetCpuUtilization (did you mean .spec.envoy.hpa.targetCPUUtilization?)"),
            "{err}"
        );
        let ok = text.replace("targetCpuUtilization", "targetCPUUtilization");
        let objects = parse_manifests(&ok).unwrap();
        let Object::TrafficInfra(ti) = &objects[0] else { panic!("not a TrafficInfra") };
        assert_eq!(ti.spec.envoy.hpa.target_cpu_utilization, 60);
    }

    #[test]
    fn parses_multi_document_files_and_dispatches_on_kind() {
        let text = format!(
            "{INGRESS}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\n---\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\nmetadata: {{name: \
             web-1, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}\nendpoints: [{{addresses: \
             [10.0.0.1], conditions: {{ready: true}}}}]\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: \
             {{name: ignored}}\n---\napiVersion: weir.dev/v1alpha1\nkind: TrafficInfra\nmetadata: {{name: ti, \
             namespace: shop}}\nspec: {{}}\n"
        );
        let objects = parse_manifests(&text).unwrap();
        let kinds: Vec<&str> = objects
            .iter()
            .map(|o| match o {
                Object::Ingress(_) => "Ingress",
                Object::Service(_) => "Service",
                Object::EndpointSlice(_) => "EndpointSlice",
                Object::TrafficInfra(_) => "TrafficInfra",
                Object::BackendTrafficPolicy(_) => "BackendTrafficPolicy",
                Object::NamespaceConfig(_) => "NamespaceConfig",
                Object::Gateway(_) => "Gateway",
                Object::HttpRoute(_) => "HTTPRoute",
                Object::GrpcRoute(_) => "GRPCRoute",
                Object::TlsRoute(_) => "TLSRoute",
                Object::Namespace(_) => "Namespace",
                Object::VirtualService(_) => "VirtualService",
                Object::Pod(_) => "Pod",
            })
            .collect();
        assert_eq!(kinds, ["Ingress", "Service", "EndpointSlice", "TrafficInfra"]);
        let s = snapshot_of(&objects, 3);
        assert_eq!(s.revision, 3);
        assert_eq!(s.ingresses[0].metadata.name.as_deref(), Some("web"));
    }

    #[test]
    fn unknown_fields_of_weir_kinds_are_warned_about_by_name() {
        let text = "apiVersion: weir.dev/v1alpha1\nkind: BackendTrafficPolicy\nmetadata: {name: p, namespace: shop}\n\
                    spec:\n  targetRef: {kind: Service, name: x}\n  timeouts: {connect: 1s}\n  clusterIdleTimeout: 1m\n\
                    ---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop, whatever: 1}\n";
        let (objects, warnings) = parse_manifests_checked(text).unwrap();
        assert_eq!(objects.len(), 2);
        assert_eq!(
            warnings,
            [
                "document 0: BackendTrafficPolicy shop/p: unknown field spec.clusterIdleTimeout (not in the BackendTrafficPolicy schema; ignored)",
                "document 0: BackendTrafficPolicy shop/p: unknown field spec.timeouts.connect (not in the BackendTrafficPolicy schema; ignored)",
            ]
        );
    }

    #[test]
    fn json_and_lists_are_read() {
        let json = r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"}}]}"#;
        let objects = parse_manifests(json).unwrap();
        assert!(matches!(&objects[..], [Object::Service(_)]));
    }

    #[test]
    fn bad_documents_name_their_index_and_reason() {
        let bad_yaml = format!("{INGRESS}\n---\nkind: [unclosed\n");
        match parse_manifests(&bad_yaml) {
            Err(ManifestError::Yaml { document: 1, .. }) => {}
            other => panic!("{other:?}"),
        }
        let wrong_shape = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: \
                           networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: b}\nspec: {rules: 7}\n";
        match parse_manifests(wrong_shape) {
            Err(ManifestError::Shape { document: 1, message }) => {
                assert!(message.contains("networking.k8s.io/v1 Ingress"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_manifests("- a\n- b\n"), Err(ManifestError::Shape { document: 0, .. })));
        assert!(matches!(parse_manifests("metadata: {name: x}\n"), Err(ManifestError::Shape { .. })));
        assert!(parse_manifests("").unwrap().is_empty());
    }

    #[test]
    fn directory_keeps_last_good_content_of_a_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/ing.yaml"), INGRESS).unwrap();
        std::fs::write(dir.path().join("svc.yaml"), "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n").unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), "garbage: [").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "garbage: [").unwrap();
        let mut m = ManifestDir::new(dir.path());
        let first = m.poll();
        assert!(first.changed && first.problems.is_empty(), "{first:?}");
        assert_eq!(m.snapshot(1).ingresses.len(), 1);

        // Nothing changed: no new snapshot.
        assert!(!m.poll().changed);

        // The Ingress file breaks: reported once, its last good content keeps serving.
        std::fs::write(dir.path().join("sub/ing.yaml"), "kind: [").unwrap();
        let broken = m.poll();
        assert!(!broken.changed);
        assert_eq!(broken.problems.len(), 1);
        assert!(broken.problems[0].serving_last_good);
        assert!(broken.problems[0].path.ends_with("sub/ing.yaml"));
        assert!(m.poll().problems.is_empty(), "a problem is reported once");
        assert_eq!(m.snapshot(2).ingresses.len(), 1);

        // Other files' changes still apply.
        std::fs::write(dir.path().join("svc2.yaml"), "apiVersion: v1\nkind: Service\nmetadata: {name: api}\n").unwrap();
        assert!(m.poll().changed);
        let s = m.snapshot(3);
        assert_eq!((s.ingresses.len(), s.services.len()), (1, 2));

        // Fixed again; then removed.
        std::fs::write(dir.path().join("sub/ing.yaml"), INGRESS.replace("www.", "shop.")).unwrap();
        assert!(m.poll().changed);
        std::fs::remove_file(dir.path().join("sub/ing.yaml")).unwrap();
        assert!(m.poll().changed);
        assert!(m.snapshot(4).ingresses.is_empty());
    }

    fn quick() -> FileLimits {
        FileLimits { settle: Duration::from_millis(20), ..FileLimits::default() }
    }

    #[test]
    fn special_files_are_never_opened_and_symlink_loops_end() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("svc.yaml"), "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n").unwrap();
        let fifo = dir.path().join("pipe.yaml");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.yaml")).unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("loop")).unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::os::unix::fs::symlink("..", dir.path().join("a/up")).unwrap();
        let mut m = ManifestDir::new(dir.path()).with_limits(quick());
        let started = std::time::Instant::now();
        let outcome = m.poll();
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert!(outcome.changed);
        let mut problems: Vec<String> = outcome
            .problems
            .iter()
            .map(|p| format!("{} {}", p.path.file_name().unwrap().to_string_lossy(), p.error))
            .collect();
        problems.sort();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("pipe.yaml not a regular file (a FIFO)"), "{problems:?}");
        assert!(problems[1].starts_with("zero.yaml not a regular file (a device)"), "{problems:?}");
        // The regular file is served once, not once per loop path.
        assert_eq!(m.snapshot(1).services.len(), 1);
    }

    #[test]
    fn oversized_files_keep_their_last_good_content() {
        let dir = tempfile::tempdir().unwrap();
        let limits = FileLimits { max_file_bytes: 1000, max_total_bytes: 600, ..quick() };
        std::fs::write(dir.path().join("a.yaml"), INGRESS).unwrap();
        let mut m = ManifestDir::new(dir.path()).with_limits(limits);
        assert!(m.poll().changed);
        let mut big = INGRESS.to_string();
        big.push_str(&format!("# {}\n", "x".repeat(2000)));
        std::fs::write(dir.path().join("a.yaml"), &big).unwrap();
        let outcome = m.poll();
        assert!(!outcome.changed);
        assert!(
            matches!(
                outcome.problems[..],
                [FileProblem { error: ManifestError::TooLarge { .. }, serving_last_good: true, .. }]
            ),
            "{outcome:?}"
        );
        assert_eq!(m.snapshot(2).ingresses.len(), 1);
        // Per directory: the files past the total cap (in path order) are refused.
        std::fs::write(dir.path().join("a.yaml"), INGRESS).unwrap();
        std::fs::write(dir.path().join("b.yaml"), INGRESS.replace("name: web", "name: web2")).unwrap();
        let outcome = m.poll();
        assert!(
            matches!(outcome.problems[..], [FileProblem { error: ManifestError::DirectoryTooLarge { .. }, .. }]),
            "{outcome:?}"
        );
        assert!(outcome.problems[0].path.ends_with("b.yaml"));
    }

    #[test]
    fn a_file_still_being_written_is_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ing.yaml");
        std::fs::write(&path, INGRESS).unwrap();
        let limits = FileLimits { settle: Duration::from_millis(300), ..FileLimits::default() };
        let mut m = ManifestDir::new(dir.path()).with_limits(limits);
        assert!(m.poll().changed);
        // A writer rewrites in place, slowly: the first half parses on its own (one document).
        let half = INGRESS.replace("www.example.com", "half.example.com");
        let cut = half.find("status:").unwrap();
        let writer = {
            let path = path.clone();
            let half = half.clone();
            std::thread::spawn(move || {
                use std::io::Write;
                let mut f = std::fs::File::create(&path).unwrap();
                f.write_all(&half.as_bytes()[..cut]).unwrap();
                std::thread::sleep(Duration::from_millis(150));
                f.write_all(&half.as_bytes()[cut..]).unwrap();
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        // Polled mid-write: the half is never taken.
        let outcome = m.poll();
        writer.join().unwrap();
        let s = m.snapshot(2);
        assert!(!outcome.changed || s.ingresses[0].status.is_some(), "a half-written file was served");
        // Once it holds still, the whole file is taken.
        while !m.poll().changed {}
        let s = m.snapshot(3);
        assert!(s.ingresses[0].status.is_some());
        assert_eq!(
            s.ingresses[0].spec.as_ref().unwrap().rules.as_ref().unwrap()[0].host.as_deref(),
            Some("half.example.com")
        );
    }

    #[tokio::test]
    async fn run_publishes_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ing.yaml"), INGRESS).unwrap();
        let invalid = InvalidInputs::default();
        let mut provider = FileProvider::new(dir.path(), Duration::from_millis(20), invalid.clone());
        let (tx, mut rx) = watch::channel(Arc::new(provider.load()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(provider.run(tx, stop_rx));
        rx.borrow_and_update();
        std::fs::write(dir.path().join("bad.yaml"), "kind: [").unwrap();
        std::fs::write(dir.path().join("svc.yaml"), "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n").unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.changed()).await.unwrap().unwrap();
        let s = rx.borrow_and_update().clone();
        assert_eq!((s.revision, s.services.len(), s.ingresses.len()), (2, 1, 1));
        assert_eq!(invalid.get(InputKind::Manifest), 1);
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    }
}
