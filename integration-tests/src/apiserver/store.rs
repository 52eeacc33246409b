//! The object store behind the test API server: JSON objects keyed by group/plural/namespace/name,
//! one global resourceVersion counter, an event log for watch resumption and a broadcast for live
//! watches. Every method is synchronous, so tests can seed and inspect state directly.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use tokio::sync::{broadcast, watch};

use super::selector::Selector;
use super::types::ResourceType;

/// An API error, rendered as a `Status` object.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: String,
    pub message: String,
    /// `Status.details`, when the error names an object.
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        Self { code, reason: reason.into(), message: message.into(), details: None }
    }

    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some(d) = &self.details {
            status["details"] = d.clone();
        }
        status
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change: what watches replay and receive.
#[derive(Debug, Clone)]
pub struct Entry {
    pub rv: u64,
    pub group: String,
    pub plural: String,
    pub namespace: String,
    pub kind: EventType,
    /// The object before the change (for selector transitions).
    pub old: Option<Value>,
    pub obj: Value,
}

impl Entry {
    /// The watch event a watcher with this scope and selector sees, if any. An object that stops
    /// matching the selector is seen as DELETED, one that starts matching as ADDED (as in Kubernetes).
    pub fn for_watch(&self, rt: &ResourceType, ns: Option<&str>, sel: &Selector) -> Option<(EventType, &Value)> {
        if self.group != rt.group || self.plural != rt.plural || ns.is_some_and(|n| n != self.namespace) {
            return None;
        }
        let old = self.old.as_ref().is_some_and(|o| sel.matches(o));
        let new = sel.matches(&self.obj);
        let kind = match (self.kind, old, new) {
            (EventType::Deleted, _, true) => EventType::Deleted,
            (EventType::Deleted, _, false) => return None,
            (_, true, true) => EventType::Modified,
            (_, true, false) => EventType::Deleted,
            (_, false, true) => EventType::Added,
            (_, false, false) => return None,
        };
        Some((kind, &self.obj))
    }
}

type Key = (String, String, String, String);
/// Field paths (object keys; lists are atomic) owned per server-side-apply field manager.
type Owners = BTreeMap<String, BTreeSet<Vec<String>>>;

#[derive(Default)]
struct Inner {
    rv: u64,
    types: Vec<ResourceType>,
    objects: BTreeMap<Key, Value>,
    owners: HashMap<Key, Owners>,
    log: VecDeque<Arc<Entry>>,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    uid: u64,
}

/// How an existing object is changed.
#[derive(Debug, Clone)]
pub enum WriteOp {
    Replace(Value),
    Merge(Value),
    JsonPatch(Value),
    Apply { config: Value, manager: String, force: bool },
}

const LOG_LIMIT: usize = 50_000;

/// An admission check of the object about to be stored.
pub type Check<'a> = &'a dyn Fn(&Value) -> Result<(), ApiError>;

pub struct Store {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<Entry>>,
    /// The resourceVersion of the last `compact()`: live watches end with 410 when it changes.
    compactions: watch::Sender<u64>,
}

impl Store {
    pub fn new(types: Vec<ResourceType>) -> Self {
        let (tx, _) = broadcast::channel(4096);
        let (compactions, _) = watch::channel(0);
        Store { inner: Mutex::new(Inner { rv: 1, types, ..Default::default() }), tx, compactions }
    }

    pub fn types(&self) -> Vec<ResourceType> {
        self.inner.lock().types.clone()
    }

    /// Serves a new resource type (as installing a CRD does).
    pub fn register(&self, rt: ResourceType) {
        let mut inner = self.inner.lock();
        if !inner.types.contains(&rt) {
            inner.types.push(rt);
        }
    }

    pub fn find_type(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.inner.lock().types.iter().find(|t| t.group == group && t.version == version && t.plural == plural).cloned()
    }

    /// The type of an object from its `apiVersion` and `kind`.
    pub fn type_of(&self, obj: &Value) -> Result<ResourceType, ApiError> {
        let api_version = obj["apiVersion"].as_str().unwrap_or_default();
        let kind = obj["kind"].as_str().unwrap_or_default();
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        self.inner
            .lock()
            .types
            .iter()
            .find(|t| t.group == group && t.version == version && t.kind == kind)
            .cloned()
            .ok_or_else(|| ApiError::new(404, "NotFound", format!("no resource type for {api_version} {kind}")))
    }

    pub fn resource_version(&self) -> u64 {
        self.inner.lock().rv
    }

    /// Forgets the event log: watches resuming from any earlier resourceVersion get 410 Gone, and
    /// every live watch ends with a 410 ERROR event, so its client must re-list.
    pub fn compact(&self) {
        let mut inner = self.inner.lock();
        inner.compacted = inner.rv;
        inner.log.clear();
        self.compactions.send_replace(inner.rv);
    }

    /// Changes on every `compact()` (subscribe when a watch starts).
    pub fn compactions(&self) -> watch::Receiver<u64> {
        self.compactions.subscribe()
    }

    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        let inner = self.inner.lock();
        inner.objects.get(&key(rt, ns, name)).cloned().ok_or_else(|| not_found(rt, name))
    }

    /// Objects of a type (in one namespace, or all) matching the selector, and the list's resourceVersion.
    pub fn list(&self, rt: &ResourceType, ns: Option<&str>, sel: &Selector) -> (Vec<Value>, u64) {
        let inner = self.inner.lock();
        let items = inner
            .objects
            .iter()
            .filter(|((g, p, n, _), _)| *g == rt.group && *p == rt.plural && ns.is_none_or(|ns| ns == n))
            .map(|(_, v)| v)
            .filter(|v| sel.matches(v))
            .cloned()
            .collect();
        (items, inner.rv)
    }

    pub fn create(&self, rt: &ResourceType, ns: &str, obj: Value) -> Result<Value, ApiError> {
        self.create_checked(rt, ns, obj, &|_| Ok(()))
    }

    /// Creates, after `check` accepted the object about to be stored (admission).
    pub fn create_checked(&self, rt: &ResourceType, ns: &str, obj: Value, check: Check) -> Result<Value, ApiError> {
        let mut inner = self.inner.lock();
        let created = self.create_locked(&mut inner, rt, ns, obj, None, check)?;
        Ok(created)
    }

    /// Creates from the object's own apiVersion/kind/namespace (a test seeding state).
    pub fn create_object(&self, obj: Value) -> Result<Value, ApiError> {
        let rt = self.type_of(&obj)?;
        let ns =
            obj["metadata"]["namespace"].as_str().unwrap_or(if rt.namespaced { "default" } else { "" }).to_string();
        self.create(&rt, &ns, obj)
    }

    fn create_locked(
        &self,
        inner: &mut Inner,
        rt: &ResourceType,
        ns: &str,
        mut obj: Value,
        apply: Option<(String, BTreeSet<Vec<String>>)>,
        check: Check,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::new(400, "BadRequest", "body is not a JSON object"));
        }
        inner.uid += 1;
        let uid = format!("00000000-0000-4000-8000-{:012x}", inner.uid);
        let meta = meta_mut(&mut obj);
        if meta.get("name").and_then(Value::as_str).unwrap_or_default().is_empty() {
            match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) => {
                    let name = format!("{prefix}{:05x}", inner.uid);
                    meta.insert("name".into(), name.into());
                }
                None => return Err(ApiError::new(422, "Invalid", "metadata.name: Required value")),
            }
        }
        let name = meta["name"].as_str().unwrap_or_default().to_string();
        let ns = if rt.namespaced { ns.to_string() } else { String::new() };
        if let Some(given) = meta.get("namespace").and_then(Value::as_str) {
            if rt.namespaced && !given.is_empty() && given != ns {
                return Err(ApiError::new(400, "BadRequest", "the namespace of the object does not match the request"));
            }
        }
        let k = key(rt, &ns, &name);
        if inner.objects.contains_key(&k) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{}.{} {name:?} already exists", rt.plural, rt.group),
            ));
        }
        if rt.namespaced {
            meta.insert("namespace".into(), ns.clone().into());
        } else {
            meta.remove("namespace");
        }
        meta.insert("uid".into(), uid.into());
        meta.insert("creationTimestamp".into(), now().into());
        meta.insert("generation".into(), 1.into());
        meta.remove("deletionTimestamp");
        obj["apiVersion"] = rt.api_version().into();
        obj["kind"] = rt.kind.clone().into();
        check(&obj)?;
        if let Some((manager, paths)) = apply {
            inner.owners.entry(k.clone()).or_default().insert(manager, paths);
        }
        set_managed_fields(&mut obj, inner.owners.get(&k), rt);
        if rt.group == "apiextensions.k8s.io" && rt.plural == "customresourcedefinitions" {
            for t in ResourceType::from_crd(&obj) {
                if !inner.types.contains(&t) {
                    inner.types.push(t);
                }
            }
        }
        let created = self.commit(inner, k, EventType::Added, None, obj);
        // An owner that no longer exists (a writer acting on a stale view of its owner): the
        // garbage collector removes the new object, or the dangling reference if another owner lives.
        let dangling: Vec<String> = owner_uids(&created)
            .filter(|u| !inner.objects.values().any(|o| o["metadata"]["uid"].as_str() == Some(u)))
            .map(str::to_string)
            .collect();
        for uid in dangling {
            self.collect_garbage(inner, &uid);
        }
        Ok(created)
    }

    /// Changes an existing object (or creates it, for server-side apply). `status` selects the
    /// `/status` subresource.
    pub fn write(&self, rt: &ResourceType, ns: &str, name: &str, op: WriteOp, status: bool) -> Result<Value, ApiError> {
        self.write_checked(rt, ns, name, op, status, &|_| Ok(()))
    }

    /// Writes, after `check` accepted the object about to be stored (admission).
    pub fn write_checked(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        op: WriteOp,
        status: bool,
        check: Check,
    ) -> Result<Value, ApiError> {
        let ns = if rt.namespaced { ns } else { "" };
        let mut inner = self.inner.lock();
        let k = key(rt, ns, name);
        let Some(cur) = inner.objects.get(&k).cloned() else {
            return match op {
                WriteOp::Apply { mut config, manager, .. } if !status => {
                    meta_mut(&mut config).insert("name".into(), name.into());
                    let paths = leaves(&config, rt, false);
                    self.create_locked(&mut inner, rt, ns, config, Some((manager, paths)), check)
                }
                _ => Err(not_found(rt, name)),
            };
        };
        let body = match &op {
            WriteOp::Replace(b) | WriteOp::Merge(b) => Some(b),
            WriteOp::Apply { config, .. } => Some(config),
            WriteOp::JsonPatch(_) => None,
        };
        if let Some(want) = body.and_then(|b| b["metadata"]["resourceVersion"].as_str()).filter(|s| !s.is_empty()) {
            if Some(want) != cur["metadata"]["resourceVersion"].as_str() {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {}.{} {name:?}: the object has been modified; please apply \
                         your changes to the latest version and try again",
                        rt.plural, rt.group
                    ),
                ));
            }
        }
        let candidate = match op {
            WriteOp::Replace(b) => b,
            WriteOp::Merge(p) => {
                let mut v = cur.clone();
                json_patch::merge(&mut v, &p);
                v
            }
            WriteOp::JsonPatch(p) => {
                let patch: json_patch::Patch =
                    serde_json::from_value(p).map_err(|e| ApiError::new(400, "BadRequest", e.to_string()))?;
                let mut v = cur.clone();
                json_patch::patch(&mut v, &patch).map_err(|e| ApiError::new(422, "Invalid", e.to_string()))?;
                v
            }
            WriteOp::Apply { config, manager, force } => {
                let owners = inner.owners.entry(k.clone()).or_default();
                apply(&cur, &config, owners, &manager, force, rt, status)?
            }
        };
        let mut new = if status {
            let mut n = cur.clone();
            n["status"] = candidate.get("status").cloned().unwrap_or(Value::Null);
            n
        } else {
            let mut n = candidate;
            if !n.is_object() {
                return Err(ApiError::new(400, "BadRequest", "body is not a JSON object"));
            }
            if rt.status {
                match cur.get("status") {
                    Some(s) => n["status"] = s.clone(),
                    None => {
                        n.as_object_mut().map(|o| o.remove("status"));
                    }
                }
            }
            n
        };
        if new.get("status").is_some_and(Value::is_null) {
            new.as_object_mut().map(|o| o.remove("status"));
        }
        // Server-owned metadata cannot be changed by clients.
        new["apiVersion"] = rt.api_version().into();
        new["kind"] = rt.kind.clone().into();
        for field in
            ["name", "namespace", "uid", "creationTimestamp", "deletionTimestamp", "generation", "resourceVersion"]
        {
            match cur["metadata"].get(field) {
                Some(v) => {
                    meta_mut(&mut new).insert(field.into(), v.clone());
                }
                None => {
                    meta_mut(&mut new).remove(field);
                }
            }
        }
        if spec_of(&new) != spec_of(&cur) {
            let generation = cur["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            meta_mut(&mut new).insert("generation".into(), generation.into());
        }
        set_managed_fields(&mut new, inner.owners.get(&k), rt);
        if new == cur {
            return Ok(cur);
        }
        check(&new)?;
        let finalizers_clear = new["metadata"]["finalizers"].as_array().is_none_or(Vec::is_empty);
        if new["metadata"].get("deletionTimestamp").is_some() && finalizers_clear {
            inner.objects.remove(&k);
            inner.owners.remove(&k);
            let gone = self.commit(&mut inner, k, EventType::Deleted, Some(cur), new);
            self.collect_garbage(&mut inner, gone["metadata"]["uid"].as_str().unwrap_or_default());
            return Ok(gone);
        }
        Ok(self.commit(&mut inner, k, EventType::Modified, Some(cur), new))
    }

    /// Deletes an object, or marks it for deletion while finalizers remain.
    pub fn delete(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        let ns = if rt.namespaced { ns } else { "" };
        let mut inner = self.inner.lock();
        let k = key(rt, ns, name);
        let cur = inner.objects.get(&k).cloned().ok_or_else(|| not_found(rt, name))?;
        let has_finalizers = cur["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if cur["metadata"].get("deletionTimestamp").is_some() {
                return Ok(cur);
            }
            let mut new = cur.clone();
            meta_mut(&mut new).insert("deletionTimestamp".into(), now().into());
            meta_mut(&mut new).insert("deletionGracePeriodSeconds".into(), 0.into());
            return Ok(self.commit(&mut inner, k, EventType::Modified, Some(cur), new));
        }
        inner.objects.remove(&k);
        inner.owners.remove(&k);
        let gone = self.commit(&mut inner, k, EventType::Deleted, Some(cur.clone()), cur);
        self.collect_garbage(&mut inner, gone["metadata"]["uid"].as_str().unwrap_or_default());
        Ok(gone)
    }

    /// Kubernetes' garbage collector, background propagation: once an object is gone, every object
    /// whose ownerReferences name its uid is deleted too (waiting for its own finalizers, and then
    /// cascading to its dependents). A dependent with another owner that still exists only loses
    /// the reference to the one that went.
    fn collect_garbage(&self, inner: &mut Inner, gone_uid: &str) {
        let mut uids = vec![gone_uid.to_string()];
        while let Some(uid) = uids.pop() {
            let dependents: Vec<Key> =
                inner.objects.iter().filter(|(_, o)| owner_uids(o).any(|u| u == uid)).map(|(k, _)| k.clone()).collect();
            for k in dependents {
                let cur = inner.objects[&k].clone();
                let other_owner_lives = owner_uids(&cur)
                    .filter(|u| *u != uid)
                    .any(|u| inner.objects.values().any(|o| o["metadata"]["uid"].as_str() == Some(u)));
                let mut new = cur.clone();
                if other_owner_lives {
                    if let Some(refs) = meta_mut(&mut new).get_mut("ownerReferences").and_then(Value::as_array_mut) {
                        refs.retain(|r| r["uid"].as_str() != Some(uid.as_str()));
                    }
                    self.commit(inner, k, EventType::Modified, Some(cur), new);
                    continue;
                }
                if cur["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty()) {
                    if cur["metadata"].get("deletionTimestamp").is_none() {
                        meta_mut(&mut new).insert("deletionTimestamp".into(), now().into());
                        meta_mut(&mut new).insert("deletionGracePeriodSeconds".into(), 0.into());
                        self.commit(inner, k, EventType::Modified, Some(cur), new);
                    }
                    continue;
                }
                inner.objects.remove(&k);
                inner.owners.remove(&k);
                if let Some(u) = cur["metadata"]["uid"].as_str() {
                    uids.push(u.to_string());
                }
                self.commit(inner, k, EventType::Deleted, Some(cur.clone()), cur);
            }
        }
    }

    fn commit(&self, inner: &mut Inner, k: Key, kind: EventType, old: Option<Value>, mut obj: Value) -> Value {
        inner.rv += 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), inner.rv.to_string().into());
        if kind != EventType::Deleted {
            inner.objects.insert(k.clone(), obj.clone());
        }
        let entry =
            Arc::new(Entry { rv: inner.rv, group: k.0, plural: k.1, namespace: k.2, kind, old, obj: obj.clone() });
        inner.log.push_back(entry.clone());
        if inner.log.len() > LOG_LIMIT {
            if let Some(e) = inner.log.pop_front() {
                inner.compacted = e.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(entry);
        obj
    }

    /// Starts a watch: the events to send first (the current objects as ADDED when `from` is None or
    /// 0, else the log after `from`), the live receiver, and the resourceVersion reached so far.
    #[allow(clippy::type_complexity)]
    pub fn watch(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        sel: &Selector,
        from: Option<u64>,
    ) -> Result<(Vec<(EventType, Value)>, broadcast::Receiver<Arc<Entry>>, u64), ApiError> {
        let inner = self.inner.lock();
        // Subscribing under the lock means no commit falls between the replay and the live stream.
        let rx = self.tx.subscribe();
        let initial = match from {
            None | Some(0) => {
                drop(inner);
                let (items, rv) = self.list(rt, ns, sel);
                return Ok((items.into_iter().map(|o| (EventType::Added, o)).collect(), rx, rv));
            }
            Some(rv) if rv < inner.compacted => {
                return Err(ApiError::new(
                    410,
                    "Expired",
                    format!("too old resource version: {rv} ({})", inner.compacted),
                ));
            }
            Some(rv) => inner
                .log
                .iter()
                .filter(|e| e.rv > rv)
                .filter_map(|e| e.for_watch(rt, ns, sel).map(|(t, o)| (t, o.clone())))
                .collect(),
        };
        Ok((initial, rx, inner.rv))
    }
}

/// The uids an object's ownerReferences name.
fn owner_uids(obj: &Value) -> impl Iterator<Item = &str> {
    obj["metadata"]["ownerReferences"].as_array().into_iter().flatten().filter_map(|r| r["uid"].as_str())
}

fn key(rt: &ResourceType, ns: &str, name: &str) -> Key {
    (rt.group.clone(), rt.plural.clone(), ns.to_string(), name.to_string())
}

fn not_found(rt: &ResourceType, name: &str) -> ApiError {
    let what = if rt.group.is_empty() { rt.plural.clone() } else { format!("{}.{}", rt.plural, rt.group) };
    ApiError::new(404, "NotFound", format!("{what} {name:?} not found"))
}

pub fn now() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second()).expect("valid time").to_string()
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["metadata"].as_object_mut().expect("metadata is an object")
}

/// Everything but metadata and status: a change here bumps `metadata.generation`.
fn spec_of(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("metadata");
        o.remove("status");
    }
    v
}

/// Metadata fields a client cannot own through apply.
const SERVER_META: &[&str] = &[
    "resourceVersion",
    "managedFields",
    "uid",
    "creationTimestamp",
    "generation",
    "deletionTimestamp",
    "name",
    "namespace",
];

/// The leaf paths of an applied configuration (objects are walked, lists and scalars are leaves).
fn leaves(config: &Value, rt: &ResourceType, status: bool) -> BTreeSet<Vec<String>> {
    fn walk(v: &Value, path: &mut Vec<String>, out: &mut BTreeSet<Vec<String>>) {
        match v {
            // An empty object claims nothing (as in `data: {}`).
            Value::Object(m) => {
                for (k, child) in m {
                    path.push(k.clone());
                    walk(child, path, out);
                    path.pop();
                }
            }
            _ => {
                out.insert(path.clone());
            }
        }
    }
    let mut out = BTreeSet::new();
    let Some(top) = config.as_object() else { return out };
    for (k, v) in top {
        if k == "apiVersion" || k == "kind" {
            continue;
        }
        // The main resource cannot set status when /status is a subresource, and vice versa.
        if rt.status && (k == "status") != status {
            continue;
        }
        if k == "metadata" {
            for (mk, mv) in v.as_object().into_iter().flatten() {
                if !SERVER_META.contains(&mk.as_str()) {
                    walk(mv, &mut vec!["metadata".into(), mk.clone()], &mut out);
                }
            }
            continue;
        }
        walk(v, &mut vec![k.clone()], &mut out);
    }
    out
}

fn get_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn set_path(v: &mut Value, path: &[String], value: Value) {
    let mut cur = v;
    for k in &path[..path.len() - 1] {
        if !cur[k.as_str()].is_object() {
            cur[k.as_str()] = json!({});
        }
        cur = &mut cur[k.as_str()];
    }
    cur[path[path.len() - 1].as_str()] = value;
}

fn remove_path(v: &mut Value, path: &[String]) {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut cur = v;
    for k in parents {
        match cur.get_mut(k) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(o) = cur.as_object_mut() {
        o.remove(last);
    }
}

/// Server-side apply: the manager owns exactly the fields of its configuration. A field owned by
/// another manager with a different value is a conflict unless `force` takes it over; fields the
/// manager applied before and no longer applies are removed unless someone else owns them.
fn apply(
    cur: &Value,
    config: &Value,
    owners: &mut Owners,
    manager: &str,
    force: bool,
    rt: &ResourceType,
    status: bool,
) -> Result<Value, ApiError> {
    let paths = leaves(config, rt, status);
    let mut conflicts = Vec::new();
    for path in &paths {
        for (other, owned) in owners.iter() {
            if other != manager && owned.contains(path) && get_path(cur, path) != get_path(config, path) {
                conflicts.push(format!("conflict with {other:?}: .{}", path.join(".")));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(ApiError::new(
            409,
            "Conflict",
            format!("Apply failed with {} conflict(s): {}", conflicts.len(), conflicts.join("; ")),
        ));
    }
    for (other, owned) in owners.iter_mut() {
        if other != manager {
            owned.retain(|p| !paths.contains(p));
        }
    }
    let mut new = cur.clone();
    let previous = owners.remove(manager).unwrap_or_default();
    for gone in previous.difference(&paths) {
        if !owners.values().any(|o| o.contains(gone)) {
            remove_path(&mut new, gone);
        }
    }
    for path in &paths {
        if let Some(v) = get_path(config, path) {
            set_path(&mut new, path, v.clone());
        }
    }
    owners.insert(manager.to_string(), paths);
    owners.retain(|_, o| !o.is_empty());
    Ok(new)
}

/// Renders ownership as `metadata.managedFields` (FieldsV1), as clients expect to read it.
fn set_managed_fields(obj: &mut Value, owners: Option<&Owners>, rt: &ResourceType) {
    let entries: Vec<Value> = owners
        .into_iter()
        .flatten()
        .map(|(manager, paths)| {
            let mut fields = json!({});
            for p in paths {
                let f: Vec<String> = p.iter().map(|k| format!("f:{k}")).collect();
                set_path(&mut fields, &f, json!({}));
            }
            json!({"manager": manager, "operation": "Apply", "apiVersion": rt.api_version(),
                   "fieldsType": "FieldsV1", "fieldsV1": fields})
        })
        .collect();
    if entries.is_empty() {
        meta_mut(obj).remove("managedFields");
    } else {
        meta_mut(obj).insert("managedFields".into(), entries.into());
    }
}
