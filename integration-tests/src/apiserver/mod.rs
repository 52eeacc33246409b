//! An in-process Kubernetes API server for tests. It speaks the real REST + watch protocol well
//! enough for kube-rs clients, reflectors and leader election, and for the real `weir` binary through
//! a kubeconfig: discovery, list and watch with resourceVersions (bookmarks, resume, 410 Gone),
//! get/create/update with conflicts, merge, JSON and server-side-apply patches, the status
//! subresource, deletion with finalizers, label and field selectors, generation bumps.
//!
//! Objects are stored as JSON by group/plural, so any kind works once its type is registered
//! (built-ins, weir's CRDs, external-dns DNSEndpoint, or any CustomResourceDefinition created through
//! the API).

mod selector;
mod store;
mod types;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, oneshot};

pub use selector::Selector;
pub use store::{ApiError, EventType, Store, WriteOp};
pub use types::ResourceType;

/// Options for [`ApiServer`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Serve weir's CRDs (weir.dev) from the start; off to test a cluster without them.
    pub weir_crds: bool,
    /// How often watches that asked for bookmarks get one.
    pub bookmark_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self { weir_crds: true, bookmark_interval: Duration::from_secs(1) }
    }
}

/// A running test API server on 127.0.0.1. Dropping it stops the server.
pub struct ApiServer {
    pub addr: SocketAddr,
    store: Arc<Store>,
    _shutdown: oneshot::Sender<()>,
    _runtime: Option<std::thread::JoinHandle<()>>,
}

impl ApiServer {
    /// Starts on the current tokio runtime.
    pub async fn start(opts: Options) -> ApiServer {
        let store = Arc::new(new_store(&opts));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind test API server");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel();
        let app = router(store.clone(), opts.bookmark_interval);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(async { drop(rx.await) }).await;
        });
        ApiServer { addr, store, _shutdown: tx, _runtime: None }
    }

    /// Starts on its own thread and runtime, for synchronous tests that drive the `weir` binary.
    pub fn start_background(opts: Options) -> ApiServer {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = std::thread::spawn(move || {
            let rt =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
            rt.block_on(async move {
                let store = Arc::new(new_store(&opts));
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind test API server");
                let addr = listener.local_addr().expect("local addr");
                ready_tx.send((addr, store.clone())).expect("report address");
                let app = router(store, opts.bookmark_interval);
                let _ = axum::serve(listener, app).with_graceful_shutdown(async { drop(rx.await) }).await;
            });
        });
        let (addr, store) = ready_rx.recv().expect("test API server started");
        ApiServer { addr, store, _shutdown: tx, _runtime: Some(handle) }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Direct, synchronous access to the objects (seeding and inspecting state in tests).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A kube client configuration pointing at this server (plain http, namespace `default`).
    pub fn kube_config(&self) -> kube::Config {
        let mut cfg = kube::Config::new(self.url().parse().expect("server URL"));
        cfg.default_namespace = "default".into();
        cfg
    }

    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.kube_config()).expect("kube client")
    }

    /// Writes a kubeconfig for this server into `dir` and returns its path (for `KUBECONFIG`).
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\nusers:\n- name: test\n  \
             user: {{}}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: default\n\
             current-context: test\n",
            self.url()
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }
}

fn new_store(opts: &Options) -> Store {
    let mut types = ResourceType::builtins();
    if opts.weir_crds {
        types.extend(ResourceType::weir_crds());
    }
    Store::new(types)
}

#[derive(Clone)]
struct Ctx {
    store: Arc<Store>,
    bookmark_interval: Duration,
}

fn router(store: Arc<Store>, bookmark_interval: Duration) -> Router {
    let ctx = Ctx { store, bookmark_interval };
    Router::new().fallback(move |req: Request<Body>| {
        let ctx = ctx.clone();
        async move { handle(ctx, req).await }
    })
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

fn error_response(e: &ApiError) -> Response {
    json_response(StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &e.status())
}

/// What a request path names.
struct Target {
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

async fn handle(ctx: Ctx, req: Request<Body>) -> Response {
    let path = req.uri().path().trim_matches('/').to_string();
    let query: HashMap<String, String> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let types = ctx.store.types();

    // Discovery.
    match segs.as_slice() {
        ["version"] => {
            return json_response(
                StatusCode::OK,
                &json!({"major": "1", "minor": "35", "gitVersion": "v1.35.0-weir-test"}),
            )
        }
        ["api"] => {
            return json_response(
                StatusCode::OK,
                &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
            )
        }
        ["apis"] => return json_response(StatusCode::OK, &group_list(&types)),
        ["api", "v1"] => return json_response(StatusCode::OK, &resource_list(&types, "", "v1")),
        ["apis", g, v] => {
            if !types.iter().any(|t| t.group == *g && t.version == *v) {
                return error_response(&ApiError::new(404, "NotFound", format!("the server could not find {g}/{v}")));
            }
            return json_response(StatusCode::OK, &resource_list(&types, g, v));
        }
        _ => {}
    }

    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return error_response(&ApiError::new(404, "NotFound", format!("no route for /{path}"))),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, status) = match rest {
        [p] => (*p, None, false),
        [p, n] => (*p, Some(n.to_string()), false),
        [p, n, "status"] => (*p, Some(n.to_string()), true),
        _ => return error_response(&ApiError::new(404, "NotFound", format!("no route for /{path}"))),
    };
    let Some(rt) = ctx.store.find_type(group, version, plural) else {
        return error_response(&ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({group}/{version} {plural})"),
        ));
    };
    if rt.namespaced && name.is_some() && namespace.is_none() {
        return error_response(&ApiError::new(404, "NotFound", "namespaced resource requires a namespace"));
    }
    if status && !rt.status {
        return error_response(&ApiError::new(404, "NotFound", format!("{plural} has no status subresource")));
    }
    let target = Target { rt, namespace, name, status };
    let method = req.method().clone();
    let content_type =
        req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json").to_string();
    let body = match axum::body::to_bytes(req.into_body(), 64 << 20).await {
        Ok(b) => b,
        Err(e) => return error_response(&ApiError::new(400, "BadRequest", e.to_string())),
    };
    let result = dispatch(&ctx, &target, &method, &query, &content_type, &body);
    match result {
        Ok(Dispatched::Object(code, v)) => json_response(code, &v),
        Ok(Dispatched::Watch(w)) => watch_response(ctx, target, w),
        Err(e) => error_response(&e),
    }
}

enum Dispatched {
    Object(StatusCode, Value),
    Watch(WatchParams),
}

struct WatchParams {
    selector: Selector,
    from: Option<u64>,
    bookmarks: bool,
    timeout: Option<Duration>,
}

fn dispatch(
    ctx: &Ctx,
    t: &Target,
    method: &Method,
    query: &HashMap<String, String>,
    content_type: &str,
    body: &Bytes,
) -> Result<Dispatched, ApiError> {
    let store = &ctx.store;
    let ns = t.namespace.as_deref().unwrap_or("");
    let selector =
        Selector::parse(query.get("labelSelector").map(String::as_str), query.get("fieldSelector").map(String::as_str))
            .map_err(|e| ApiError::new(400, "BadRequest", e))?;
    let parse_body = || -> Result<Value, ApiError> {
        if content_type.starts_with("application/apply-patch+yaml") {
            serde_yaml::from_slice(body).map_err(|e| ApiError::new(400, "BadRequest", format!("invalid YAML: {e}")))
        } else {
            serde_json::from_slice(body).map_err(|e| ApiError::new(400, "BadRequest", format!("invalid JSON: {e}")))
        }
    };
    let ok = |v: Value| Ok(Dispatched::Object(StatusCode::OK, v));
    match (method, &t.name) {
        (&Method::GET, None) => {
            if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
                let from = match query.get("resourceVersion").filter(|s| !s.is_empty()) {
                    Some(s) => Some(
                        s.parse::<u64>()
                            .map_err(|_| ApiError::new(400, "BadRequest", format!("bad resourceVersion {s:?}")))?,
                    ),
                    None => None,
                };
                let timeout = query.get("timeoutSeconds").and_then(|s| s.parse::<u64>().ok()).map(Duration::from_secs);
                let bookmarks = query.get("allowWatchBookmarks").is_some_and(|b| b == "true");
                return Ok(Dispatched::Watch(WatchParams { selector, from, bookmarks, timeout }));
            }
            let scope = if t.rt.namespaced { t.namespace.as_deref() } else { None };
            let (items, rv) = store.list(&t.rt, scope, &selector);
            ok(json!({
                "apiVersion": t.rt.api_version(), "kind": format!("{}List", t.rt.kind),
                "metadata": {"resourceVersion": rv.to_string()}, "items": items,
            }))
        }
        (&Method::POST, None) => {
            let created = store.create(&t.rt, ns, parse_body()?)?;
            Ok(Dispatched::Object(StatusCode::CREATED, created))
        }
        (&Method::GET, Some(name)) => ok(store.get(&t.rt, ns, name)?),
        (&Method::PUT, Some(name)) => ok(store.write(&t.rt, ns, name, WriteOp::Replace(parse_body()?), t.status)?),
        (&Method::PATCH, Some(name)) => {
            let op = if content_type.starts_with("application/apply-patch+yaml") {
                let manager = query
                    .get("fieldManager")
                    .cloned()
                    .ok_or_else(|| ApiError::new(422, "Invalid", "fieldManager is required for apply patch"))?;
                let force = query.get("force").is_some_and(|f| f == "true");
                WriteOp::Apply { config: parse_body()?, manager, force }
            } else if content_type.starts_with("application/json-patch+json") {
                WriteOp::JsonPatch(parse_body()?)
            } else if content_type.starts_with("application/merge-patch+json")
                || content_type.starts_with("application/strategic-merge-patch+json")
            {
                // Strategic merge is approximated by a JSON merge patch (lists are replaced).
                WriteOp::Merge(parse_body()?)
            } else {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!("unsupported patch type {content_type}"),
                ));
            };
            ok(store.write(&t.rt, ns, name, op, t.status)?)
        }
        (&Method::DELETE, Some(name)) => ok(store.delete(&t.rt, ns, name)?),
        _ => Err(ApiError::new(405, "MethodNotAllowed", format!("{method} is not supported here"))),
    }
}

fn event_line(kind: &str, obj: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": obj}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// Streams watch events as newline-delimited JSON until the client goes away, the timeout ends the
/// watch, or the live stream lags (the client then resumes from its last resourceVersion).
fn watch_response(ctx: Ctx, t: Target, w: WatchParams) -> Response {
    let scope = if t.rt.namespaced { t.namespace.clone() } else { None };
    let started = ctx.store.watch(&t.rt, scope.as_deref(), &w.selector, w.from);
    let mut compactions = ctx.store.compactions();
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(256);
    let bookmark_kind = (t.rt.api_version(), t.rt.kind.clone());
    tokio::spawn(async move {
        let (initial, mut live, mut rv) = match started {
            Ok(s) => s,
            Err(e) => {
                // A too-old resourceVersion is reported in-stream, as the real server does.
                let _ = tx.send(Ok(event_line("ERROR", &e.status()))).await;
                return;
            }
        };
        for (kind, obj) in initial {
            if tx.send(Ok(event_line(kind.as_str(), &obj))).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(w.timeout.unwrap_or(Duration::from_secs(3600)));
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(ctx.bookmark_interval);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                Ok(()) = compactions.changed() => {
                    let compacted = *compactions.borrow_and_update();
                    let e = store::ApiError::new(410, "Expired", format!("too old resource version: {rv} ({compacted})"));
                    let _ = tx.send(Ok(event_line("ERROR", &e.status()))).await;
                    return;
                }
                _ = ticker.tick(), if w.bookmarks => {
                    let bm = json!({"apiVersion": bookmark_kind.0, "kind": bookmark_kind.1,
                                    "metadata": {"resourceVersion": rv.to_string()}});
                    if tx.send(Ok(event_line("BOOKMARK", &bm))).await.is_err() {
                        return;
                    }
                }
                entry = live.recv() => match entry {
                    Ok(entry) => {
                        if entry.rv <= rv {
                            continue;
                        }
                        rv = entry.rv;
                        if let Some((kind, obj)) = entry.for_watch(&t.rt, scope.as_deref(), &w.selector) {
                            if tx.send(Ok(event_line(kind.as_str(), obj))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .expect("watch response")
}

fn group_list(types: &[ResourceType]) -> Value {
    let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for t in types.iter().filter(|t| !t.group.is_empty()) {
        let versions = groups.entry(&t.group).or_default();
        if !versions.contains(&t.version.as_str()) {
            versions.push(&t.version);
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, vs)| {
            let versions: Vec<Value> =
                vs.iter().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect();
            json!({"name": g, "versions": versions, "preferredVersion": versions[0].clone()})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(types: &[ResourceType], group: &str, version: &str) -> Value {
    let verbs = json!(["create", "delete", "get", "list", "patch", "update", "watch"]);
    let mut resources = Vec::new();
    for t in types.iter().filter(|t| t.group == group && t.version == version) {
        resources.push(json!({"name": t.plural, "singularName": t.kind.to_ascii_lowercase(),
                              "namespaced": t.namespaced, "kind": t.kind, "verbs": verbs}));
        if t.status {
            resources.push(json!({"name": format!("{}/status", t.plural), "singularName": "",
                                  "namespaced": t.namespaced, "kind": t.kind, "verbs": ["get", "patch", "update"]}));
        }
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

#[cfg(test)]
mod tests;
