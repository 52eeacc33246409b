//! An in-process Kubernetes API server for tests. It speaks the real REST + watch protocol well
//! enough for kube-rs clients, reflectors and leader election, and for the real `weir` binary through
//! a kubeconfig: discovery, list and watch with resourceVersions (bookmarks, resume, 410 Gone),
//! get/create/update with conflicts, merge, JSON and server-side-apply patches, the status
//! subresource, deletion with finalizers, label and field selectors, generation bumps.
//!
//! Objects are stored as JSON by group/plural, so any kind works once its type is registered
//! (built-ins, weir's CRDs, external-dns DNSEndpoint, or any CustomResourceDefinition created through
//! the API).
//!
//! With [`Options::rbac`] (the default) it authenticates bearer tokens and authorizes every request
//! by the RBAC objects it stores, as kube-apiserver does (see [`rbac`]), and keeps an audit of every
//! request ([`ApiServer::audit`]). Tests set up with the superuser ([`ApiServer::client`],
//! [`ApiServer::write_kubeconfig`]) and run each component with its own identity
//! ([`ApiServer::service_account_token`], [`ApiServer::write_kubeconfig_for`]).

mod faults;
pub mod rbac;
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

pub use faults::Faults;
pub use rbac::{AuditRecord, Identity};
pub use selector::Selector;
pub use store::{ApiError, EventType, Store, WriteOp};
pub use types::ResourceType;

use rbac::{Attributes, Policy, Tokens};

/// Options for [`ApiServer`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Serve weir's CRDs (weir.dev) from the start; off to test a cluster without them.
    pub weir_crds: bool,
    /// How often watches that asked for bookmarks get one.
    pub bookmark_interval: Duration,
    /// Authenticate and authorize every request by the stored RBAC objects (as a cluster does). Off:
    /// a request without a token acts as the superuser.
    pub rbac: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self { weir_crds: true, bookmark_interval: Duration::from_secs(1), rbac: true }
    }
}

/// A running test API server on 127.0.0.1. Dropping it stops the server.
pub struct ApiServer {
    pub addr: SocketAddr,
    store: Arc<Store>,
    auth: Arc<Auth>,
    superuser_token: String,
    kubeconfigs: std::sync::atomic::AtomicU64,
    faults: Faults,
    _shutdown: oneshot::Sender<()>,
    _runtime: Option<std::thread::JoinHandle<()>>,
}

/// Authentication, authorization and the audit log, shared by the server and its handle.
struct Auth {
    rbac: bool,
    tokens: Tokens,
    audit: parking_lot::Mutex<Vec<AuditRecord>>,
    /// Bumped to end every open watch (clients then re-list or resume, and are authorized again).
    watch_epoch: tokio::sync::watch::Sender<u64>,
}

impl Auth {
    fn new(rbac: bool) -> Self {
        Auth {
            rbac,
            tokens: Tokens::default(),
            audit: Default::default(),
            watch_epoch: tokio::sync::watch::channel(0).0,
        }
    }
}

impl ApiServer {
    /// Starts on the current tokio runtime.
    pub async fn start(opts: Options) -> ApiServer {
        let store = Arc::new(new_store(&opts));
        let auth = Arc::new(Auth::new(opts.rbac));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind test API server");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel();
        let faults = Faults::default();
        let app = router(store.clone(), auth.clone(), opts.bookmark_interval, faults.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(async { drop(rx.await) }).await;
        });
        ApiServer::new(addr, store, auth, faults, tx, None)
    }

    fn new(
        addr: SocketAddr,
        store: Arc<Store>,
        auth: Arc<Auth>,
        faults: Faults,
        shutdown: oneshot::Sender<()>,
        runtime: Option<std::thread::JoinHandle<()>>,
    ) -> ApiServer {
        let superuser_token = auth.tokens.issue(Identity::superuser());
        ApiServer {
            addr,
            store,
            auth,
            superuser_token,
            kubeconfigs: Default::default(),
            faults,
            _shutdown: shutdown,
            _runtime: runtime,
        }
    }

    /// Starts on its own thread and runtime, for synchronous tests that drive the `weir` binary.
    pub fn start_background(opts: Options) -> ApiServer {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (tx, rx) = oneshot::channel::<()>();
        let faults = Faults::default();
        let server_faults = faults.clone();
        let handle = std::thread::spawn(move || {
            let rt =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
            rt.block_on(async move {
                let store = Arc::new(new_store(&opts));
                let auth = Arc::new(Auth::new(opts.rbac));
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind test API server");
                let addr = listener.local_addr().expect("local addr");
                ready_tx.send((addr, store.clone(), auth.clone())).expect("report address");
                let app = router(store, auth, opts.bookmark_interval, server_faults);
                let _ = axum::serve(listener, app).with_graceful_shutdown(async { drop(rx.await) }).await;
            });
        });
        let (addr, store, auth) = ready_rx.recv().expect("test API server started");
        ApiServer::new(addr, store, auth, faults, tx, Some(handle))
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Direct, synchronous access to the objects (seeding and inspecting state in tests).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A kube client configuration pointing at this server as the superuser (plain http, namespace
    /// `default`).
    pub fn kube_config(&self) -> kube::Config {
        self.kube_config_for(&self.superuser_token)
    }

    /// A kube client configuration that authenticates with `token`.
    pub fn kube_config_for(&self, token: &str) -> kube::Config {
        let mut cfg = kube::Config::new(self.url().parse().expect("server URL"));
        cfg.default_namespace = "default".into();
        cfg.auth_info = serde_json::from_value(json!({ "token": token })).expect("an AuthInfo with a token");
        cfg
    }

    /// A client acting as the superuser (group `system:masters`): for test set-up only.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.kube_config()).expect("kube client")
    }

    /// Same as [`ApiServer::client`], named for what it is.
    pub fn superuser_client(&self) -> kube::Client {
        self.client()
    }

    /// A client that authenticates with `token`.
    pub fn client_for(&self, token: &str) -> kube::Client {
        kube::Client::try_from(self.kube_config_for(token)).expect("kube client")
    }

    /// The superuser's bearer token.
    pub fn superuser_token(&self) -> &str {
        &self.superuser_token
    }

    /// Writes a superuser kubeconfig for this server into `dir` and returns its path (for
    /// `KUBECONFIG`): for set-up tools, not for the components under test.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(&path, self.kubeconfig_text(&self.superuser_token)).expect("write kubeconfig");
        path
    }

    /// Writes a kubeconfig that authenticates with `token` into `dir` (a new file each call) and
    /// returns its path.
    pub fn write_kubeconfig_for(&self, dir: &Path, token: &str) -> PathBuf {
        let n = self.kubeconfigs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("kubeconfig-{n}"));
        std::fs::write(&path, self.kubeconfig_text(token)).expect("write kubeconfig");
        path
    }

    fn kubeconfig_text(&self, token: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\nusers:\n- name: test\n  \
             user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    \
             namespace: default\ncurrent-context: test\n",
            self.url()
        )
    }

    /// A token for the ServiceAccount `namespace/name` (created when missing), as the kubelet mounts
    /// one into its pods: requests with it act as `system:serviceaccount:NAMESPACE:NAME`.
    pub fn service_account_token(&self, namespace: &str, name: &str) -> String {
        let rt = self.store.find_type("", "v1", "serviceaccounts").expect("serviceaccounts are served");
        if self.store.get(&rt, namespace, name).is_err() {
            let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                            "metadata": {"name": name, "namespace": namespace}});
            match self.store.create(&rt, namespace, sa) {
                Ok(_) => {}
                Err(e) if e.code == 409 => {}
                Err(e) => panic!("creating ServiceAccount {namespace}/{name}: {}", e.message),
            }
        }
        self.auth.tokens.issue(Identity::service_account(namespace, name))
    }

    /// Every request so far, in order (user, verb, group, resource, namespace, name, allowed).
    pub fn audit(&self) -> Vec<AuditRecord> {
        self.auth.audit.lock().clone()
    }

    /// Ends every open watch, as an API server restart or a load balancer would: clients resume and
    /// are authorized again (how a test makes an RBAC change take effect on running watchers).
    pub fn close_watches(&self) {
        self.auth.watch_epoch.send_modify(|e| *e += 1);
    }

    /// The fault switches (hang a client's requests, named by its bearer token).
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// A kubeconfig whose client sends `Authorization: Bearer TOKEN` and acts as `identity`: the
    /// fault-injection tests (fencing, soak) name each replica by its token, which [`Faults`] can hang.
    pub fn write_kubeconfig_with_token(&self, dir: &Path, token: &str, identity: Identity) -> PathBuf {
        self.auth.tokens.insert(token, identity);
        self.write_kubeconfig_for(dir, token)
    }

    /// Forgets the audit so far.
    pub fn clear_audit(&self) {
        self.auth.audit.lock().clear();
    }

    /// Whether the RBAC stored now allows `who` to do `verb` on `group`/`resource` (with an optional
    /// `/subresource`) in `namespace` (`""`: cluster scope), on the object `name` (`""`: any), as
    /// `kubectl auth can-i` answers.
    pub fn can(&self, who: &Identity, verb: &str, group: &str, resource: &str, namespace: &str, name: &str) -> bool {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        let a = Attributes {
            verb: verb.into(),
            resource_request: true,
            api_group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: namespace.into(),
            name: name.into(),
            path: String::new(),
        };
        Policy::read(&self.store).allows(who, &a)
    }

    /// Creates objects as the superuser would (`kubectl apply` of set-up manifests).
    pub fn create_objects<'a>(&self, objects: impl IntoIterator<Item = &'a Value>) {
        for obj in objects {
            self.store.create_object(obj.clone()).unwrap_or_else(|e| panic!("creating {obj}: {}", e.message));
        }
    }
}

fn new_store(opts: &Options) -> Store {
    let mut types = ResourceType::builtins();
    if opts.weir_crds {
        types.extend(ResourceType::weir_crds());
    }
    let store = Store::new(types);
    for obj in rbac::default_policy() {
        store.create_object(obj).expect("default RBAC objects");
    }
    store
}

#[derive(Clone)]
struct Ctx {
    store: Arc<Store>,
    auth: Arc<Auth>,
    bookmark_interval: Duration,
    faults: Faults,
}

fn router(store: Arc<Store>, auth: Arc<Auth>, bookmark_interval: Duration, faults: Faults) -> Router {
    let ctx = Ctx { store, auth, bookmark_interval, faults: faults.clone() };
    Router::new().fallback(move |req: Request<Body>| {
        let ctx = ctx.clone();
        let faults = faults.clone();
        async move {
            faults.gate(req.headers()).await;
            handle(ctx, req).await
        }
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
    let path = format!("/{}", req.uri().path().trim_matches('/'));
    let query: HashMap<String, String> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
    let who = match authenticate(&ctx.auth, &req) {
        Some(who) => who,
        None => {
            let attrs = Attributes { verb: verb_of(req.method(), true, &query), path, ..Default::default() };
            ctx.auth.record(None, &attrs, false, 401);
            return error_response(&rbac::unauthorized());
        }
    };
    let route = route(&ctx.store, &path);
    let attrs = route.attributes(&path, req.method(), &query);
    let policy = ctx.auth.rbac.then(|| Policy::read(&ctx.store));
    if let Some(policy) = &policy {
        if !policy.allows(&who, &attrs) {
            ctx.auth.record(Some(&who), &attrs, false, 403);
            return error_response(&rbac::denied(&who, &attrs));
        }
    }
    let response = match route {
        Route::Discovery(v) => json_response(StatusCode::OK, &v),
        Route::Error(e) => error_response(&e),
        Route::Object(target) => {
            let method = req.method().clone();
            let content_type = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json")
                .to_string();
            match axum::body::to_bytes(req.into_body(), 64 << 20).await {
                Err(e) => error_response(&ApiError::new(400, "BadRequest", e.to_string())),
                Ok(body) => {
                    let ns = target.namespace.clone().unwrap_or_default();
                    let rt = target.rt.clone();
                    let check = |obj: &Value| match &policy {
                        Some(p) => p.check_write(&who, &rt, &ns, obj),
                        None => Ok(()),
                    };
                    match dispatch(&ctx, &target, &method, &query, &content_type, &body, &check) {
                        Ok(Dispatched::Object(code, v)) => json_response(code, &v),
                        Ok(Dispatched::Watch(w)) => watch_response(ctx.clone(), target, w),
                        Err(e) => error_response(&e),
                    }
                }
            }
        }
    };
    ctx.auth.record(Some(&who), &attrs, true, response.status().as_u16());
    response
}

impl Auth {
    fn record(&self, who: Option<&Identity>, a: &Attributes, allowed: bool, code: u16) {
        self.audit.lock().push(AuditRecord {
            user: who.map(|w| w.user.clone()).unwrap_or_default(),
            groups: who.map(|w| w.groups.clone()).unwrap_or_default(),
            verb: a.verb.clone(),
            resource_request: a.resource_request,
            api_group: a.api_group.clone(),
            resource: a.resource.clone(),
            subresource: a.subresource.clone(),
            namespace: a.namespace.clone(),
            name: a.name.clone(),
            path: a.path.clone(),
            allowed,
            code,
        });
    }
}

/// The request's identity from its bearer token. Without RBAC, no token means the superuser.
fn authenticate(auth: &Auth, req: &Request<Body>) -> Option<Identity> {
    let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match header.and_then(|h| h.strip_prefix("Bearer ")) {
        Some(token) => auth.tokens.lookup(token.trim()),
        None if !auth.rbac => Some(Identity::superuser()),
        None => None,
    }
}

/// The authorizer's verb for a request (Kubernetes' RequestInfo).
fn verb_of(method: &Method, collection: bool, query: &HashMap<String, String>) -> String {
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    match *method {
        Method::GET if collection && watch => "watch",
        Method::GET if collection => "list",
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if collection => "deletecollection",
        Method::DELETE => "delete",
        _ => "",
    }
    .to_string()
}

/// What a request path routes to.
enum Route {
    /// A discovery document (a non-resource URL).
    Discovery(Value),
    /// An error found before authorization (an unknown path or type).
    Error(ApiError),
    Object(Target),
}

impl Route {
    fn attributes(&self, path: &str, method: &Method, query: &HashMap<String, String>) -> Attributes {
        let Route::Object(t) = self else {
            return Attributes { verb: verb_of(method, false, query), path: path.into(), ..Default::default() };
        };
        let collection = t.name.is_none();
        // A list or watch of one object by field selector names it (as RequestInfo does).
        let name = t.name.clone().or_else(|| {
            query
                .get("fieldSelector")
                .and_then(|f| f.strip_prefix("metadata.name="))
                .filter(|n| !n.contains(','))
                .map(str::to_string)
        });
        Attributes {
            verb: verb_of(method, collection, query),
            resource_request: true,
            api_group: t.rt.group.clone(),
            resource: t.rt.plural.clone(),
            subresource: if t.status { "status".into() } else { String::new() },
            namespace: t.namespace.clone().unwrap_or_default(),
            name: name.unwrap_or_default(),
            path: path.into(),
        }
    }
}

fn route(store: &Store, path: &str) -> Route {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let types = store.types();

    // Discovery.
    match segs.as_slice() {
        ["version"] => {
            return Route::Discovery(json!({"major": "1", "minor": "35", "gitVersion": "v1.35.0-weir-test"}))
        }
        ["api"] => {
            return Route::Discovery(
                json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
            )
        }
        ["apis"] => return Route::Discovery(group_list(&types)),
        ["api", "v1"] => return Route::Discovery(resource_list(&types, "", "v1")),
        ["apis", g, v] => {
            if !types.iter().any(|t| t.group == *g && t.version == *v) {
                return Route::Error(ApiError::new(404, "NotFound", format!("the server could not find {g}/{v}")));
            }
            return Route::Discovery(resource_list(&types, g, v));
        }
        _ => {}
    }

    let not_found = || Route::Error(ApiError::new(404, "NotFound", format!("no route for {path}")));
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return not_found(),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, status) = match rest {
        [p] => (*p, None, false),
        [p, n] => (*p, Some(n.to_string()), false),
        [p, n, "status"] => (*p, Some(n.to_string()), true),
        _ => return not_found(),
    };
    let Some(rt) = store.find_type(group, version, plural) else {
        return Route::Error(ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({group}/{version} {plural})"),
        ));
    };
    if rt.namespaced && name.is_some() && namespace.is_none() {
        return Route::Error(ApiError::new(404, "NotFound", "namespaced resource requires a namespace"));
    }
    if status && !rt.status {
        return Route::Error(ApiError::new(404, "NotFound", format!("{plural} has no status subresource")));
    }
    Route::Object(Target { rt, namespace, name, status })
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
    check: store::Check,
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
            let created = store.create_checked(&t.rt, ns, parse_body()?, check)?;
            Ok(Dispatched::Object(StatusCode::CREATED, created))
        }
        (&Method::GET, Some(name)) => ok(store.get(&t.rt, ns, name)?),
        (&Method::PUT, Some(name)) => {
            ok(store.write_checked(&t.rt, ns, name, WriteOp::Replace(parse_body()?), t.status, check)?)
        }
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
            ok(store.write_checked(&t.rt, ns, name, op, t.status, check)?)
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
    let mut epoch = ctx.auth.watch_epoch.subscribe();
    epoch.mark_unchanged();
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
                _ = epoch.changed() => return,
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
                        if ctx.faults.loses_watch_events(&t.rt.plural) {
                            continue;
                        }
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

/// Stores the identity the operator gives `weir xds` (its ServiceAccount, Role and RoleBinding, and
/// the empty state ConfigMap), as the operator's own code makes them for `children`'s TrafficInfra,
/// and returns a token of that ServiceAccount. No TrafficInfra owns them here: their owner
/// references are dropped, or the garbage collector would remove them.
pub fn store_xds_identity(server: &ApiServer, children: &weir_core::operator::children::Children) -> String {
    for obj in [
        serde_json::to_value(&children.service_account).unwrap(),
        serde_json::to_value(&children.role).unwrap(),
        serde_json::to_value(&children.role_binding).unwrap(),
        serde_json::to_value(&children.xds_state).unwrap(),
    ] {
        let mut obj = obj;
        obj["metadata"].as_object_mut().unwrap().remove("ownerReferences");
        let kind = obj["kind"].clone();
        obj["apiVersion"] = match kind.as_str() {
            Some("Role") | Some("RoleBinding") => "rbac.authorization.k8s.io/v1".into(),
            _ => "v1".into(),
        };
        server.store().create_object(obj).unwrap();
    }
    let namespace = children.service_account.metadata.namespace.as_deref().unwrap();
    server.service_account_token(namespace, children.service_account.metadata.name.as_deref().unwrap())
}
