//! The incremental index (as linkerd's policy controller keeps one): objects are applied and deleted
//! one at a time, the index knows which hosts each object affects, and only those hosts are
//! translated again. Per host the result is exactly what [`crate::translate::translate_with`] gives
//! for the whole snapshot, because each host is translated by that same function
//! ([`translate_hosts`]) on a snapshot of only the objects the host depends on.
//!
//! Two levels:
//! - a *source* (an object hosts come from: an Ingress, an HTTPRoute, GRPCRoute or TLSRoute, a
//!   Service) is translated alone, with what it reads (its [`Dep`]s: backend Services with their
//!   EndpointSlices, the TrafficInfra behind an `{name}-envoy` backend and the Services it selects,
//!   parent Gateways, its Namespace, the NamespaceConfigs of its namespace). That gives the hosts it
//!   claims and the refusals about it, which never depend on another source.
//! - a *host* is translated with every source that claims it: that gives its intent and its conflict
//!   refusals.
//!
//! A changed object marks dirty the sources that read it (a reverse map from [`Dep`] to sources),
//! and through them their hosts before and after; [`HostIndex::flush`] recomputes exactly those.
//! The cluster weight and the live strategy weights touch every host: a change of either is one
//! full translation. [`HostIndex::verify`] (the periodic resync) translates everything from
//! scratch and compares.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::gateway::RouteView;
use crate::ir::{DesiredState, DnsIntent, InputKind, Refusal};
use kube_core::Resource;

use crate::model::{key_ref, Held, Kind, Object, Snapshot};
use crate::translate::{
    envoy_service_name, translate_hosts, translate_with, LiveStrategyWeights, TranslateConfig, SERVICE_NAME_LABEL,
};
use crate::xds::model::TRAFFIC_INFRA_LABEL;

/// `(namespace, name)`; the namespace is empty for a cluster-scoped object.
pub type Key = (String, String);

fn owned((ns, name): (&str, &str)) -> Key {
    (ns.to_string(), name.to_string())
}

/// Every object of a [`Snapshot`], by kind and key, shared: what a provider applies watch events to
/// and publishes snapshots from (in [`Snapshot::normalize`] order, so without a sort).
#[derive(Debug, Clone, Default)]
pub struct Objects {
    by_key: BTreeMap<(Kind, Key), Object>,
}

impl Objects {
    /// Stores `object` (replacing the one with its kind and key); returns the one it replaced.
    pub fn apply(&mut self, object: Object) -> Option<Object> {
        self.by_key.insert((object.kind(), owned(object.key())), object)
    }

    /// Removes the object of `kind` at `key`; returns it.
    pub fn delete(&mut self, kind: Kind, key: &Key) -> Option<Object> {
        self.by_key.remove(&(kind, key.clone()))
    }

    pub fn get(&self, kind: Kind, key: &Key) -> Option<&Object> {
        self.by_key.get(&(kind, key.clone()))
    }

    /// The objects of one kind, in key order.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = (&Key, &Object)> {
        let from = (kind, (String::new(), String::new()));
        self.by_key.range(from..).take_while(move |((k, _), _)| *k == kind).map(|((_, key), o)| (key, o))
    }

    /// Replaces every object of `kind` with `fresh` (a re-list); returns what changed: the objects
    /// removed and those new or different (another allocation).
    pub fn replace_kind(&mut self, kind: Kind, fresh: Vec<Object>) -> Vec<Change> {
        let mut old: BTreeMap<Key, Object> = BTreeMap::new();
        let keys: Vec<Key> = self.of_kind(kind).map(|(k, _)| k.clone()).collect();
        for key in keys {
            if let Some(o) = self.by_key.remove(&(kind, key.clone())) {
                old.insert(key, o);
            }
        }
        let mut changes = Vec::new();
        for object in fresh.into_iter().filter(|o| o.kind() == kind) {
            let key = owned(object.key());
            match old.remove(&key) {
                Some(before) if before.same_allocation(&object) => {}
                _ => changes.push(Change::Apply(object.clone())),
            }
            self.by_key.insert((kind, key), object);
        }
        changes.extend(old.into_keys().map(|key| Change::Delete(kind, key)));
        changes
    }

    /// A snapshot of (copies of) everything, in [`Snapshot::normalize`] order.
    pub fn snapshot(&self, revision: u64) -> Snapshot {
        let mut s = Snapshot { revision, ..Snapshot::default() };
        for object in self.by_key.values() {
            s.push(object);
        }
        s
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// One object change, as a provider sees it.
#[derive(Debug, Clone)]
pub enum Change {
    Apply(Object),
    Delete(Kind, Key),
}

/// What a source reads besides itself. A change to what a dep names marks the source dirty.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dep {
    /// A Service and its EndpointSlices.
    Service(Key),
    /// The Services labelled `weir.dev/traffic-infra: <name>` (any namespace, as `weir xds` selects them).
    TrafficInfraLabel(String),
    TrafficInfra(Key),
    Gateway(Key),
    /// A Namespace's labels (route attachment selectors).
    Namespace(String),
    /// The NamespaceConfigs of a namespace.
    NamespaceConfig(String),
}

/// An object hosts come from.
pub type Source = (Kind, Key);

#[derive(Debug, Clone, Default)]
struct SourceResult {
    hosts: BTreeSet<String>,
    refusals: Vec<Refusal>,
    deps: BTreeSet<Dep>,
}

#[derive(Debug, Clone, Default)]
struct HostResult {
    claimants: BTreeSet<Source>,
    intent: Option<DnsIntent>,
    conflicts: Vec<Refusal>,
}

/// The incremental translation: objects in, per-host intents out. See the module documentation.
#[derive(Debug, Clone)]
pub struct HostIndex {
    cfg: TranslateConfig,
    cluster_weight: u8,
    live: LiveStrategyWeights,
    objects: Objects,
    /// EndpointSlices by their Service (`kubernetes.io/service-name`).
    slices_by_service: HashMap<Key, BTreeSet<Key>>,
    /// Services by their `weir.dev/traffic-infra` label.
    services_by_traffic_infra: HashMap<String, BTreeSet<Key>>,
    sources: HashMap<Source, SourceResult>,
    dependents: HashMap<Dep, BTreeSet<Source>>,
    hosts: BTreeMap<String, HostResult>,
    dirty: BTreeSet<Source>,
    /// Hosts whose intent changed since [`HostIndex::take_changed`] was last called.
    changed: BTreeSet<String>,
}

/// What [`HostIndex::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    /// Hosts whose incremental intent differed from a full translation (0 unless the index has a bug).
    pub hosts_differing: usize,
    /// Whether the refusals differed.
    pub refusals_differ: bool,
}

impl HostIndex {
    pub fn new(cfg: TranslateConfig, cluster_weight: u8) -> Self {
        Self {
            cfg,
            cluster_weight,
            live: LiveStrategyWeights::new(),
            objects: Objects::default(),
            slices_by_service: HashMap::new(),
            services_by_traffic_infra: HashMap::new(),
            sources: HashMap::new(),
            dependents: HashMap::new(),
            hosts: BTreeMap::new(),
            dirty: BTreeSet::new(),
            changed: BTreeSet::new(),
        }
    }

    pub fn objects(&self) -> &Objects {
        &self.objects
    }

    pub fn cluster_weight(&self) -> u8 {
        self.cluster_weight
    }

    /// Applies one object (new or changed). Translation waits for [`HostIndex::flush`].
    pub fn apply(&mut self, object: Object) {
        let old = self.objects.apply(object.clone());
        if let Some(old) = &old {
            self.touch(old, false);
        }
        self.touch(&object, true);
    }

    /// Deletes one object. Translation waits for [`HostIndex::flush`].
    pub fn delete(&mut self, kind: Kind, key: &Key) {
        if let Some(old) = self.objects.delete(kind, key) {
            self.touch(&old, false);
        }
    }

    pub fn change(&mut self, change: Change) {
        match change {
            Change::Apply(o) => self.apply(o),
            Change::Delete(kind, key) => self.delete(kind, &key),
        }
    }

    /// Makes the index hold exactly the objects of `snapshot`: objects that differ from the one held
    /// are applied, those missing deleted. Two objects with a `resourceVersion` are compared by it
    /// (and their uid), others by value. Returns how many objects changed.
    pub fn sync(&mut self, snapshot: &Snapshot) -> usize {
        let mut changes = Vec::new();
        let o = &self.objects;
        diff_kind(o, &snapshot.ingresses, &mut changes);
        diff_kind(o, &snapshot.services, &mut changes);
        diff_kind(o, &snapshot.endpoint_slices, &mut changes);
        diff_kind(o, &snapshot.traffic_infras, &mut changes);
        diff_kind(o, &snapshot.backend_traffic_policies, &mut changes);
        diff_kind(o, &snapshot.namespace_configs, &mut changes);
        diff_kind(o, &snapshot.gateways, &mut changes);
        diff_kind(o, &snapshot.http_routes, &mut changes);
        diff_kind(o, &snapshot.grpc_routes, &mut changes);
        diff_kind(o, &snapshot.tls_routes, &mut changes);
        diff_kind(o, &snapshot.namespaces, &mut changes);
        let n = changes.len();
        for c in changes {
            self.change(c);
        }
        n
    }

    /// Sets `C`. Every intent depends on it: the hosts are translated again, in one pass.
    pub fn set_cluster_weight(&mut self, weight: u8) {
        if weight != self.cluster_weight {
            self.cluster_weight = weight;
            self.retranslate_hosts();
        }
    }

    /// Sets the live strategy weights (`weir xds`'s state). They decide which Services a
    /// TrafficInfra selects (registered ones) and the weights of its links: every source is read again.
    pub fn set_live_weights(&mut self, live: LiveStrategyWeights) {
        if live != self.live {
            self.live = live;
            let linked = self.sources.iter().filter(|(_, r)| r.deps.iter().any(|d| matches!(d, Dep::TrafficInfra(_))));
            let linked: Vec<Source> = linked.map(|(s, _)| s.clone()).collect();
            self.dirty.extend(linked);
        }
    }

    /// Translates what changed since the last flush: the dirty sources, then the hosts they claim or
    /// claimed. Returns how many hosts were translated.
    pub fn flush(&mut self) -> usize {
        let dirty = std::mem::take(&mut self.dirty);
        let mut dirty_hosts: BTreeSet<String> = BTreeSet::new();
        // Intents a source gave alone, valid for a host it claims alone.
        let mut alone: HashMap<String, (Source, DnsIntent)> = HashMap::new();
        for source in dirty {
            if let Some(old) = self.sources.remove(&source) {
                for dep in &old.deps {
                    if let Some(set) = self.dependents.get_mut(dep) {
                        set.remove(&source);
                        if set.is_empty() {
                            self.dependents.remove(dep);
                        }
                    }
                }
                for host in old.hosts {
                    if let Some(h) = self.hosts.get_mut(&host) {
                        h.claimants.remove(&source);
                    }
                    dirty_hosts.insert(host);
                }
            }
            let Some(object) = self.objects.get(source.0, &source.1).cloned() else { continue };
            if let Object::Service(svc) = &object {
                // Hosts come only from `<prefix>/hostname` (translate's `service_claims`).
                let hostname_key = self.cfg.hostname_annotation();
                if !svc.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(&hostname_key)) {
                    continue;
                }
            }
            let deps = self.deps_of(&object);
            let snapshot = self.sub_snapshot(std::iter::once(&source), &deps, true);
            let state = translate_hosts(&snapshot, self.cluster_weight, &self.cfg, &self.live, None);
            let result = SourceResult {
                hosts: state.dns.iter().map(|i| i.host.clone()).collect(),
                // Alone, a source conflicts with nothing: every refusal is about it (or about a
                // Gateway it reads).
                refusals: state.refusals,
                deps,
            };
            for dep in &result.deps {
                self.dependents.entry(dep.clone()).or_default().insert(source.clone());
            }
            for intent in state.dns {
                self.hosts.entry(intent.host.clone()).or_default().claimants.insert(source.clone());
                dirty_hosts.insert(intent.host.clone());
                alone.insert(intent.host.clone(), (source.clone(), intent));
            }
            // Kept even without hosts: its deps say when a Gateway or a Service appearing may give it some.
            self.sources.insert(source, result);
        }
        let n = dirty_hosts.len();
        for host in dirty_hosts {
            self.translate_host(&host, &mut alone);
        }
        n
    }

    fn translate_host(&mut self, host: &str, alone: &mut HashMap<String, (Source, DnsIntent)>) {
        let Some(entry) = self.hosts.get(host) else { return };
        let claimants = entry.claimants.clone();
        let (intent, conflicts) = if claimants.is_empty() {
            (None, Vec::new())
        } else if let Some((_, intent)) =
            alone.remove(host).filter(|(s, _)| claimants.len() == 1 && claimants.contains(s))
        {
            (Some(intent), Vec::new())
        } else {
            let mut deps = BTreeSet::new();
            for c in &claimants {
                if let Some(r) = self.sources.get(c) {
                    deps.extend(r.deps.iter().cloned());
                }
            }
            let snapshot = self.sub_snapshot(claimants.iter(), &deps, true);
            let only = BTreeSet::from([host.to_string()]);
            let mut state = translate_hosts(&snapshot, self.cluster_weight, &self.cfg, &self.live, Some(&only));
            let intent = state.dns.pop().filter(|i| i.host == host);
            state.refusals.retain(|r| r.kind == InputKind::Conflict);
            (intent, state.refusals)
        };
        let entry = self.hosts.get_mut(host).expect("looked up above");
        if entry.intent != intent {
            self.changed.insert(host.to_string());
        }
        if intent.is_none() && claimants.is_empty() {
            self.hosts.remove(host);
            return;
        }
        entry.intent = intent;
        entry.conflicts = conflicts;
    }

    /// Translates the whole snapshot once and takes every host's intent from it (a cluster weight
    /// change). Sources and conflicts do not depend on the weight and are kept.
    fn retranslate_hosts(&mut self) {
        self.flush();
        let state = translate_with(&self.objects.snapshot(0), self.cluster_weight, &self.cfg, &self.live);
        let mut intents: HashMap<String, DnsIntent> = state.dns.into_iter().map(|i| (i.host.clone(), i)).collect();
        for (host, entry) in self.hosts.iter_mut() {
            let intent = intents.remove(host);
            if entry.intent != intent {
                self.changed.insert(host.clone());
            }
            entry.intent = intent;
        }
    }

    /// Every intent and refusal, as [`translate_with`] gives them for [`HostIndex::snapshot`]
    /// (after a [`HostIndex::flush`]).
    pub fn state(&self) -> DesiredState {
        let dns = self.hosts.values().filter_map(|h| h.intent.clone()).collect();
        DesiredState { dns, refusals: self.refusals() }
    }

    /// The intents of some hosts (those without one are left out).
    pub fn state_of<'a>(&self, hosts: impl IntoIterator<Item = &'a String>) -> DesiredState {
        let dns = hosts.into_iter().filter_map(|h| self.hosts.get(h)?.intent.clone()).collect();
        DesiredState { dns, refusals: self.refusals() }
    }

    pub fn intent(&self, host: &str) -> Option<&DnsIntent> {
        self.hosts.get(host)?.intent.as_ref()
    }

    pub fn refusals(&self) -> Vec<Refusal> {
        let mut out: Vec<Refusal> = self
            .sources
            .values()
            .flat_map(|s| s.refusals.iter())
            .chain(self.hosts.values().flat_map(|h| h.conflicts.iter()))
            .cloned()
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Hosts whose intent changed (appeared, went, or differs) since the last call.
    pub fn take_changed(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.changed)
    }

    pub fn snapshot(&self, revision: u64) -> Snapshot {
        self.objects.snapshot(revision)
    }

    /// The resync: translates everything from scratch and compares with the incremental state.
    /// When they differ (a bug in the index), the index is rebuilt from its objects, the hosts that
    /// differed are marked changed, and the difference is returned for the caller to report.
    pub fn verify(&mut self) -> Verified {
        self.flush();
        let full = translate_with(&self.objects.snapshot(0), self.cluster_weight, &self.cfg, &self.live);
        let mine = self.state();
        if full == mine {
            return Verified::default();
        }
        let theirs: BTreeMap<&str, &DnsIntent> = full.dns.iter().map(|i| (i.host.as_str(), i)).collect();
        let ours: BTreeMap<&str, &DnsIntent> = mine.dns.iter().map(|i| (i.host.as_str(), i)).collect();
        let hosts: BTreeSet<&str> = theirs.keys().chain(ours.keys()).copied().collect();
        let differing: Vec<String> =
            hosts.into_iter().filter(|h| theirs.get(h) != ours.get(h)).map(str::to_string).collect();
        let verified = Verified { hosts_differing: differing.len(), refusals_differ: full.refusals != mine.refusals };
        let objects = std::mem::take(&mut self.objects);
        let mut fresh = HostIndex::new(self.cfg.clone(), self.cluster_weight);
        fresh.live = std::mem::take(&mut self.live);
        for o in objects.by_key.into_values() {
            fresh.apply(o);
        }
        fresh.flush();
        fresh.changed = std::mem::take(&mut self.changed);
        fresh.changed.extend(differing);
        *self = fresh;
        verified
    }

    /// Marks dirty what reading `object` (as it was before a change, or as it is after: `held`)
    /// affects, and keeps the lookups by Service and by TrafficInfra label in step.
    fn touch(&mut self, object: &Object, held: bool) {
        let key = owned(object.key());
        let mut deps: Vec<Dep> = Vec::new();
        match object {
            Object::Ingress(_) | Object::HttpRoute(_) | Object::GrpcRoute(_) | Object::TlsRoute(_) => {
                self.dirty.insert((object.kind(), key.clone()));
            }
            Object::Service(svc) => {
                // Any Service may publish hosts (`<prefix>/hostname`); one without the annotation
                // translates to nothing, cheaply.
                self.dirty.insert((Kind::Service, key.clone()));
                deps.push(Dep::Service(key.clone()));
                if let Some(ti) = svc.metadata.labels.as_ref().and_then(|l| l.get(TRAFFIC_INFRA_LABEL)) {
                    deps.push(Dep::TrafficInfraLabel(ti.clone()));
                    track(&mut self.services_by_traffic_infra, ti.clone(), key.clone(), held);
                }
            }
            Object::EndpointSlice(slice) => {
                if let Some(svc) = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) {
                    let service = (key.0.clone(), svc.clone());
                    track(&mut self.slices_by_service, service.clone(), key.clone(), held);
                    deps.push(Dep::Service(service));
                }
            }
            Object::TrafficInfra(_) => {
                deps.push(Dep::TrafficInfra(key.clone()));
                // Sources reading its Envoy Service read the link too, before the TrafficInfra existed.
                deps.push(Dep::Service((key.0.clone(), envoy_service_name(&key.1))));
            }
            Object::Gateway(_) => deps.push(Dep::Gateway(key.clone())),
            Object::Namespace(_) => deps.push(Dep::Namespace(key.1.clone())),
            Object::NamespaceConfig(_) => deps.push(Dep::NamespaceConfig(key.0.clone())),
            // Read by the xDS translation only, not by any host.
            Object::BackendTrafficPolicy(_) => {}
        }
        for dep in deps {
            if let Some(sources) = self.dependents.get(&dep) {
                self.dirty.extend(sources.iter().cloned());
            }
        }
    }

    /// What a source reads (a superset is harmless: only more objects in its sub-snapshot).
    fn deps_of(&self, object: &Object) -> BTreeSet<Dep> {
        let (ns, name) = object.key();
        let mut deps = BTreeSet::from([Dep::NamespaceConfig(ns.to_string())]);
        let mut services: Vec<Key> = Vec::new();
        match object {
            Object::Ingress(ingress) => {
                let spec = ingress.spec.as_ref();
                let default = spec.and_then(|s| s.default_backend.as_ref());
                let paths = spec
                    .and_then(|s| s.rules.as_ref())
                    .into_iter()
                    .flatten()
                    .flat_map(|r| r.http.iter().flat_map(|h| h.paths.iter()))
                    .map(|p| &p.backend);
                for backend in default.into_iter().chain(paths) {
                    if let Some(svc) = &backend.service {
                        services.push((ns.to_string(), svc.name.clone()));
                    }
                }
            }
            Object::HttpRoute(_) | Object::GrpcRoute(_) | Object::TlsRoute(_) => {
                let view = match object {
                    Object::HttpRoute(r) => RouteView::http(r),
                    Object::GrpcRoute(r) => RouteView::grpc(r),
                    Object::TlsRoute(r) => RouteView::tls(r),
                    _ => unreachable!("matched above"),
                };
                services.extend(view.backend_services());
                for parent in &view.spec.parent_refs {
                    if let Some(key) = parent.gateway(ns) {
                        deps.insert(Dep::Gateway(key));
                    }
                }
                deps.insert(Dep::Namespace(ns.to_string()));
            }
            Object::Service(_) => services.push(owned((ns, name))),
            _ => {}
        }
        for svc in services {
            let ti_key = self.traffic_infra_of_envoy_service(&svc);
            deps.insert(Dep::Service(svc));
            if let Some(ti_key) = ti_key {
                self.traffic_infra_deps(&ti_key, &mut deps);
            }
        }
        deps
    }

    /// The TrafficInfra whose Envoy Service `svc` is, if one is held.
    fn traffic_infra_of_envoy_service(&self, (ns, svc): &Key) -> Option<Key> {
        self.objects
            .of_kind(Kind::TrafficInfra)
            .find(|(key, _)| key.0 == *ns && envoy_service_name(&key.1) == *svc)
            .map(|(key, _)| key.clone())
    }

    /// What a TrafficInfra's link reads: the TrafficInfra, and the Services `weir xds` would select
    /// for it (by label, by `spec.xds.discovery.services`, registered in the live state).
    fn traffic_infra_deps(&self, key: &Key, deps: &mut BTreeSet<Dep>) {
        deps.insert(Dep::TrafficInfra(key.clone()));
        deps.insert(Dep::TrafficInfraLabel(key.1.clone()));
        for svc in self.services_by_traffic_infra.get(&key.1).into_iter().flatten() {
            deps.insert(Dep::Service(svc.clone()));
        }
        let qualified = |s: &str| match s.split_once('/') {
            Some((ns, name)) => (ns.to_string(), name.to_string()),
            None => (key.0.clone(), s.to_string()),
        };
        if let Some(Object::TrafficInfra(ti)) = self.objects.get(Kind::TrafficInfra, key) {
            for s in &ti.spec.xds.discovery.services {
                deps.insert(Dep::Service(qualified(s)));
            }
        }
        if let Some(state) = self.live.get(&format!("{}/{}", key.0, key.1)) {
            for s in &state.registered {
                deps.insert(Dep::Service(qualified(s)));
            }
        }
    }

    /// A snapshot of `sources` and what `deps` name. With `only_these`, other objects that publish
    /// hosts (a backend Service with `<prefix>/hostname`) are copied without the annotation, so
    /// that every host the snapshot yields is claimed by `sources`.
    fn sub_snapshot<'a>(
        &self,
        sources: impl Iterator<Item = &'a Source>,
        deps: &BTreeSet<Dep>,
        only_these: bool,
    ) -> Snapshot {
        let mut s = Snapshot::default();
        let mut included: BTreeSet<(Kind, Key)> = BTreeSet::new();
        let sources: BTreeSet<&Source> = sources.collect();
        for source in &sources {
            if let Some(o) = self.objects.get(source.0, &source.1) {
                if included.insert((*source).clone()) {
                    s.push(o);
                }
            }
        }
        let hostname_key = self.cfg.hostname_annotation();
        let mut add = |s: &mut Snapshot, kind: Kind, key: &Key| {
            if !included.insert((kind, key.clone())) {
                return;
            }
            let Some(o) = self.objects.get(kind, key) else { return };
            match o {
                Object::Service(svc)
                    if only_these
                        && svc.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(&hostname_key)) =>
                {
                    let mut stripped = (**svc).clone();
                    if let Some(a) = stripped.metadata.annotations.as_mut() {
                        a.remove(&hostname_key);
                    }
                    s.services.push(stripped);
                }
                o => s.push(o),
            }
        };
        for dep in deps {
            match dep {
                Dep::Service(key) => {
                    add(&mut s, Kind::Service, key);
                    for slice in self.slices_by_service.get(key).into_iter().flatten() {
                        add(&mut s, Kind::EndpointSlice, slice);
                    }
                }
                Dep::TrafficInfra(key) => add(&mut s, Kind::TrafficInfra, key),
                Dep::TrafficInfraLabel(_) => {}
                Dep::Gateway(key) => add(&mut s, Kind::Gateway, key),
                Dep::Namespace(name) => add(&mut s, Kind::Namespace, &(String::new(), name.clone())),
                Dep::NamespaceConfig(ns) => {
                    let keys: Vec<Key> = self
                        .objects
                        .of_kind(Kind::NamespaceConfig)
                        .filter(|(k, _)| k.0 == *ns)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in keys {
                        add(&mut s, Kind::NamespaceConfig, &key);
                    }
                }
            }
        }
        s.normalize();
        s
    }
}

/// Every object of a snapshot, copied into [`Object`]s.
pub fn objects_of(snapshot: &Snapshot) -> Vec<Object> {
    fn wrap<K: Held + Clone>(list: &[K]) -> impl Iterator<Item = Object> + '_ {
        list.iter().map(|o| K::into_object(Arc::new(o.clone())))
    }
    let s = snapshot;
    wrap(&s.ingresses)
        .chain(wrap(&s.services))
        .chain(wrap(&s.endpoint_slices))
        .chain(wrap(&s.traffic_infras))
        .chain(wrap(&s.backend_traffic_policies))
        .chain(wrap(&s.namespace_configs))
        .chain(wrap(&s.gateways))
        .chain(wrap(&s.http_routes))
        .chain(wrap(&s.grpc_routes))
        .chain(wrap(&s.tls_routes))
        .chain(wrap(&s.namespaces))
        .collect()
}

/// Whether `held` and `new` are the same object version: by `resourceVersion` and uid when both
/// have one (objects from the API server), else by value (manifests; not every kind implements
/// `PartialEq`, so through their JSON form).
fn unchanged<K: Resource + serde::Serialize>(held: &K, new: &K) -> bool {
    let (h, n) = (held.meta(), new.meta());
    match (&h.resource_version, &n.resource_version) {
        (Some(a), Some(b)) => a == b && h.uid == n.uid,
        _ => serde_json::to_value(held).ok() == serde_json::to_value(new).ok(),
    }
}

/// The changes that make `held`'s objects of one kind those of `new`: a merge of two key orders
/// (a snapshot's lists are sorted; one that is not is sorted here).
fn diff_kind<K: Held + Resource + serde::Serialize + Clone>(held: &Objects, new: &[K], changes: &mut Vec<Change>) {
    let mut order: Vec<&K> = new.iter().collect();
    if !order.is_sorted_by(|a, b| key_ref(*a) <= key_ref(*b)) {
        order.sort_by(|a, b| key_ref(*a).cmp(&key_ref(*b)));
    }
    let mut old = held.of_kind(K::KIND).peekable();
    let mut new = order.into_iter().peekable();
    let apply = |o: &K| Change::Apply(K::into_object(Arc::new(o.clone())));
    loop {
        let step = match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(((ns, name), _)), Some(n)) => (ns.as_str(), name.as_str()).cmp(&key_ref(*n)),
        };
        match step {
            std::cmp::Ordering::Less => {
                let (key, _) = old.next().expect("peeked");
                changes.push(Change::Delete(K::KIND, key.clone()));
            }
            std::cmp::Ordering::Greater => changes.push(apply(new.next().expect("peeked"))),
            std::cmp::Ordering::Equal => {
                let (_, o) = old.next().expect("peeked");
                let n = new.next().expect("peeked");
                if !K::of_object(o).is_some_and(|h| unchanged(&**h, n)) {
                    changes.push(apply(n));
                }
            }
        }
    }
}

/// Adds `member` to `map[group]` while it is held, else removes it, dropping a group left empty.
fn track<G: Eq + std::hash::Hash, M: Ord>(map: &mut HashMap<G, BTreeSet<M>>, group: G, member: M, held: bool) {
    if held {
        map.entry(group).or_default().insert(member);
    } else if let Some(set) = map.get_mut(&group) {
        set.remove(&member);
        if set.is_empty() {
            map.remove(&group);
        }
    }
}
