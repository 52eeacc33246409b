//! The infra manager: applies what `operator::plan` computes. For each TrafficInfra of the snapshot
//! it server-side-applies the children (field manager `weir-operator`, forced), deletes children it
//! owns that are no longer wanted (the HPA when disabled; everything when the TrafficInfra becomes
//! Pending or Failed), and writes the TrafficInfra's status and every BackendTrafficPolicy's
//! `Accepted` condition when they changed. It writes only while this replica leads.
//!
//! Drift correction: once there is a TrafficInfra, it watches every kind of child it creates
//! (cluster-wide, only objects labelled `app.kubernetes.io/managed-by=weir`); a change to one owned by
//! a TrafficInfra (a hand edit, a deletion) starts a pass within [`CHILD_DEBOUNCE`], and the pass
//! applies the children again, which reverts the edit or recreates the child. The admin token Secret
//! is not watched (the operator may not read Secrets); a deleted one is recreated by the next pass.
//!
//! Status: the operator writes only its part of a TrafficInfra's status (see
//! [`crate::operator::status`]): it reads the object, merges its part over `weir xds`'s, and writes a
//! merge patch carrying the resourceVersion it read; a 409 Conflict means `weir xds` wrote in
//! between, so it reads and merges again.
//!
//! It reads only the children it needs (three GETs per TrafficInfra for status) and makes no call
//! at all when there is no TrafficInfra, so a cluster without the CRDs or the RBAC is unaffected.
//! Removal of the children when a TrafficInfra is deleted is left to Kubernetes' garbage collector
//! (every child has a controller ownerReference).

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{watch, Notify};

use super::leader::LeaderRx;
use super::metrics::{labels, Labels};
use super::RefusalSink;
use crate::crd::{BackendTrafficPolicy, TrafficInfra, TrafficInfraStatus, API_VERSION};
use crate::ir::Refusal;
use crate::model::{ObjectRef, Snapshot};
use crate::operator::children::{ChildNames, ChildObject, ADMIN_TOKEN_KEY, FIELD_MANAGER};
use crate::operator::status::merge_operator_part;
use crate::operator::{self, policy, ObservedChildren};
use crate::providers::SnapshotRx;
use crate::telemetry::InvalidInputs;

const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Changes to children arriving within this window start one pass.
pub const CHILD_DEBOUNCE: Duration = Duration::from_millis(250);
/// The label every child carries (see `operator::children::labels`); the child watches select on it.
const CHILD_SELECTOR: &str = "app.kubernetes.io/managed-by=weir";
/// Read-merge-write attempts of a status before the pass gives up (and retries with backoff).
const STATUS_ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum InfraError {
    #[error("{op} {object}: {source}")]
    Api { op: &'static str, object: String, source: kube::Error },
    #[error(transparent)]
    Fenced(#[from] super::leader::Fenced),
}

/// The condition a TrafficInfra gets when RBAC refused one of its children.
pub use crate::operator::status::CONDITION_CHILDREN_APPLIED;

impl InfraError {
    /// RBAC refused the write (403), as for a Role granting more than the operator holds.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, InfraError::Api { source: kube::Error::Api(s), .. } if s.code == 403)
    }

    pub fn metric_label(&self) -> &'static str {
        match self {
            InfraError::Api { op, .. } => op,
            InfraError::Fenced(_) => "fenced",
        }
    }
}

/// `weir_infra_reconcile_total{result}` and `weir_infra_writes_total{op}`.
#[derive(Clone, Default)]
pub struct InfraMetrics {
    pub reconciles: Family<Labels, Counter>,
    pub writes: Family<Labels, Counter>,
}

impl InfraMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("weir_infra");
        r.register("reconcile", "Infra manager passes by result", m.reconciles.clone());
        r.register("writes", "Writes of the infra manager by operation (apply, delete, status)", m.writes.clone());
        m
    }
}

pub struct InfraLoop {
    pub client: Client,
    pub metrics: InfraMetrics,
    pub invalid: InvalidInputs,
    pub sink: Arc<dyn RefusalSink>,
    pub resync: Duration,
    pub leader: LeaderRx,
    /// Checked before every object write.
    pub fence: super::leader::Fence,
}

impl InfraLoop {
    pub async fn run(self, mut snapshots: SnapshotRx, mut shutdown: watch::Receiver<bool>) {
        let mut active: BTreeSet<Refusal> = BTreeSet::new();
        let mut retry = RETRY_MIN;
        let mut leader = self.leader.clone();
        let children_changed = Arc::new(Notify::new());
        let mut watching = false;
        loop {
            if *shutdown.borrow() {
                return;
            }
            if !*leader.borrow_and_update() {
                active.clear();
                tokio::select! {
                    Ok(()) = leader.changed() => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            let snapshot = snapshots.borrow_and_update().clone();
            if !watching && !snapshot.traffic_infras.is_empty() {
                watch_children(&self.client, children_changed.clone());
                watching = true;
            }
            let wait = match self.pass(&snapshot, &mut active).await {
                Ok(()) => {
                    retry = RETRY_MIN;
                    self.metrics.reconciles.get_or_create(&labels(&[("result", "success")])).inc();
                    self.resync
                }
                Err(e) => {
                    tracing::warn!(error = %e, "infra manager pass failed; retrying");
                    self.metrics.reconciles.get_or_create(&labels(&[("result", e.metric_label())])).inc();
                    let wait = retry.min(self.resync);
                    retry = (retry * 2).min(RETRY_MAX);
                    wait
                }
            };
            tokio::select! {
                Ok(()) = snapshots.changed() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
                Ok(()) = leader.changed() => {}
                () = children_changed.notified() => {
                    tokio::time::sleep(CHILD_DEBOUNCE).await;
                    tracing::debug!("a child changed; reconciling");
                }
            }
        }
    }

    /// One pass over every TrafficInfra and BackendTrafficPolicy. Keeps going after an error so
    /// that one bad object does not block the others; returns the first error.
    pub async fn pass(&self, snapshot: &Snapshot, active: &mut BTreeSet<Refusal>) -> Result<(), InfraError> {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let mut first_err = None;
        let mut keep = |r: Result<(), InfraError>| {
            if let Err(e) = r {
                tracing::warn!(error = %e, "infra manager");
                first_err.get_or_insert(e);
            }
        };
        let observed = self.observe(snapshot).await;
        let plans = operator::plan(snapshot, &observed, &now);
        let mut refusals: BTreeSet<Refusal> = BTreeSet::new();
        for plan in &plans {
            let Some(ti) = snapshot.traffic_infras.iter().find(|t| ObjectRef::of(*t) == plan.infra) else { continue };
            // Being deleted: the garbage collector removes the children; applying them again
            // would only race it.
            if ti.metadata.deletion_timestamp.is_some() {
                continue;
            }
            refusals.extend(plan.refusals.iter().cloned());
            let ns = plan.infra.namespace.as_str();
            let mut wanted = BTreeSet::new();
            let mut denied = Vec::new();
            for child in &plan.children {
                wanted.insert(child.describe());
                match self.apply_child(ns, child).await {
                    Err(e) if e.is_forbidden() => {
                        denied.push(e.to_string());
                        keep(Err(e));
                    }
                    r => keep(r),
                }
            }
            keep(self.prune(ti, &wanted).await);
            let mut status = plan.status.clone();
            if !denied.is_empty() {
                // Every child that was written carries its ownerReference; the ones RBAC refused are
                // named here, in an Event and in the metric, and retried with backoff.
                // RBAC's message names the permission missing; a condition holds up to 32 KiB.
                let mut message =
                    format!("the operator may not write every child of this TrafficInfra: {}", denied.join("; "));
                if message.len() > 4096 {
                    let cut = (0..=4096).rev().find(|&i| message.is_char_boundary(i)).unwrap_or(0);
                    message.truncate(cut);
                }
                refusals.insert(Refusal {
                    object: plan.infra.clone(),
                    kind: crate::ir::InputKind::Permission,
                    reason: "PermissionDenied".into(),
                    message: message.clone(),
                });
                status.conditions.retain(|c| c.type_ != CONDITION_CHILDREN_APPLIED);
                status.conditions.push(Condition {
                    type_: CONDITION_CHILDREN_APPLIED.into(),
                    status: "False".into(),
                    reason: "PermissionDenied".into(),
                    message,
                    last_transition_time: ti
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.iter().find(|c| c.type_ == CONDITION_CHILDREN_APPLIED))
                        .filter(|c| c.status == "False")
                        .map_or(now.clone(), |c| c.last_transition_time.clone()),
                    observed_generation: ti.metadata.generation,
                });
            }
            if ti.status.as_ref() != Some(&status) {
                keep(self.write_infra_status(ns, &plan.infra.name, &status).await);
            }
        }

        let resolution = policy::resolve(snapshot, &now);
        refusals.extend(resolution.refusals.iter().cloned());
        for btp in &snapshot.backend_traffic_policies {
            let me = ObjectRef::of(btp);
            let Some(conds) = resolution.conditions.get(&me) else { continue };
            if current_conditions(btp) != conds.as_slice() {
                let body = serde_json::json!({
                    "apiVersion": API_VERSION, "kind": "BackendTrafficPolicy", "status": {"conditions": conds},
                });
                keep(self.write_status::<BackendTrafficPolicy>(&me.namespace, &me.name, body).await);
            }
        }

        // A refusal is logged, counted and sent as an Event once, when it appears.
        for r in refusals.difference(active) {
            tracing::warn!(object = %r.object, reason = %r.reason, "{}", r.message);
            self.invalid.inc(r.kind);
            self.sink.refused(r);
        }
        *active = refusals;
        first_err.map_or(Ok(()), Err)
    }

    /// The children status is computed from: each TrafficInfra's two Deployments and Envoy Service.
    async fn observe(&self, snapshot: &Snapshot) -> ObservedChildren {
        let mut observed = ObservedChildren::default();
        for ti in &snapshot.traffic_infras {
            let ns = ti.namespace().unwrap_or_default();
            let names = ChildNames::of(&ti.name_any());
            let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &ns);
            for name in [&names.xds, &names.envoy] {
                if let Ok(Some(d)) = deployments.get_opt(name).await {
                    observed.deployments.push(d);
                }
            }
            let services: Api<Service> = Api::namespaced(self.client.clone(), &ns);
            if let Ok(Some(s)) = services.get_opt(&names.envoy).await {
                observed.services.push(s);
            }
        }
        observed
    }

    async fn apply_child(&self, ns: &str, child: &ChildObject) -> Result<(), InfraError> {
        match child {
            ChildObject::ServiceAccount(o) => self.apply(ns, o).await,
            ChildObject::Role(o) => self.apply(ns, o).await,
            ChildObject::RoleBinding(o) => self.apply(ns, o).await,
            ChildObject::Secret(o) => self.create_token_secret(ns, o).await,
            ChildObject::ConfigMap(o) => self.apply(ns, o).await,
            ChildObject::Service(o) => self.apply(ns, o).await,
            ChildObject::Deployment(o) => self.apply(ns, o).await,
            ChildObject::HorizontalPodAutoscaler(o) => self.apply(ns, o).await,
        }
    }

    async fn apply<K>(&self, ns: &str, obj: &K) -> Result<(), InfraError>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), ns);
        let name = obj.name_any();
        self.fence.check()?;
        api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(obj)).await.map_err(|source| {
            InfraError::Api { op: "apply", object: format!("{} {ns}/{name}", K::kind(&())), source }
        })?;
        self.metrics.writes.get_or_create(&labels(&[("op", "apply")])).inc();
        Ok(())
    }

    /// Creates the admin token Secret with a random token, once: an existing one (409) is kept as is,
    /// so the token does not change under running replicas and the operator never reads a Secret.
    /// It goes with the TrafficInfra through its ownerReference.
    async fn create_token_secret(&self, ns: &str, secret: &Secret) -> Result<(), InfraError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let token = hex::encode(rand::random::<[u8; 32]>());
        let mut secret = secret.clone();
        secret.string_data = Some([(ADMIN_TOKEN_KEY.to_string(), token)].into());
        let name = secret.name_any();
        match api.create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, &secret).await
        {
            Ok(_) => {
                self.metrics.writes.get_or_create(&labels(&[("op", "create")])).inc();
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(source) => Err(InfraError::Api { op: "create", object: format!("Secret {ns}/{name}"), source }),
        }
    }

    /// Deletes every child this TrafficInfra could have that is not wanted now and that it owns
    /// (controller ownerReference with its uid): an object of the same name that someone else
    /// created is left alone.
    async fn prune(&self, ti: &TrafficInfra, wanted: &BTreeSet<String>) -> Result<(), InfraError> {
        let ns = ti.namespace().unwrap_or_default();
        let uid = ti.metadata.uid.clone().unwrap_or_default();
        let n = ChildNames::of(&ti.name_any());
        let mut first_err = None;
        macro_rules! prune {
            ($kind:ty, $($name:expr),+) => {
                $(
                    let describe = format!("{}/{}", <$kind as Resource>::kind(&()), $name);
                    if !wanted.contains(&describe) {
                        if let Err(e) = self.delete_if_owned::<$kind>(&ns, &$name, &uid).await {
                            first_err.get_or_insert(e);
                        }
                    }
                )+
            };
        }
        prune!(ServiceAccount, n.service_account);
        prune!(Role, n.role);
        prune!(RoleBinding, n.role_binding);
        prune!(ConfigMap, n.xds_state, n.bootstrap);
        prune!(Service, n.xds, n.envoy);
        prune!(Deployment, n.xds, n.envoy);
        prune!(HorizontalPodAutoscaler, n.hpa);
        first_err.map_or(Ok(()), Err)
    }

    async fn delete_if_owned<K>(&self, ns: &str, name: &str, uid: &str) -> Result<(), InfraError>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), ns);
        let err = |op, source| InfraError::Api { op, object: format!("{} {ns}/{name}", K::kind(&())), source };
        let Some(obj) = api.get_opt(name).await.map_err(|e| err("get", e))? else { return Ok(()) };
        let owned =
            obj.owner_references().iter().any(|o| o.controller == Some(true) && !uid.is_empty() && o.uid == uid);
        if !owned {
            return Ok(());
        }
        self.fence.check()?;
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(err("delete", e)),
        }
        tracing::info!(kind = %K::kind(&()), %ns, %name, "deleted a child that is no longer wanted");
        self.metrics.writes.get_or_create(&labels(&[("op", "delete")])).inc();
        Ok(())
    }

    /// Writes the operator's part of a TrafficInfra's status over what is stored (read, merge, merge
    /// patch with the resourceVersion read; a 409 reads again).
    async fn write_infra_status(&self, ns: &str, name: &str, ours: &TrafficInfraStatus) -> Result<(), InfraError> {
        let api: Api<TrafficInfra> = Api::namespaced(self.client.clone(), ns);
        let err = |op, source| InfraError::Api { op, object: format!("TrafficInfra {ns}/{name}"), source };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(current) = api.get_opt(name).await.map_err(|e| err("get", e))? else { return Ok(()) };
            let stored = current.status.clone().unwrap_or_default();
            let merged = merge_operator_part(&stored, ours);
            if merged == stored {
                return Ok(());
            }
            let body = status_patch(&current, &stored, &merged);
            self.fence.check()?;
            match api.patch_status(name, &PatchParams::default(), &Patch::Merge(body)).await {
                Ok(_) => {
                    self.metrics.writes.get_or_create(&labels(&[("op", "status")])).inc();
                    return Ok(());
                }
                Err(kube::Error::Api(s)) if s.code == 409 && attempt < STATUS_ATTEMPTS => {
                    tracing::debug!(%ns, %name, attempt, "TrafficInfra status changed under us; merging again");
                }
                Err(e) => return Err(err("status", e)),
            }
        }
    }

    async fn write_status<K>(&self, ns: &str, name: &str, body: serde_json::Value) -> Result<(), InfraError>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), ns);
        // Server-side apply on the status: fields weir stops setting (an endpoint that went away)
        // are removed, which a merge patch would not do.
        self.fence.check()?;
        api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(body)).await.map_err(
            |source| InfraError::Api { op: "status", object: format!("{} {ns}/{name}", K::kind(&())), source },
        )?;
        self.metrics.writes.get_or_create(&labels(&[("op", "status")])).inc();
        Ok(())
    }
}

/// The merge patch that turns `stored` into `merged` on `current`, with `current`'s resourceVersion as
/// the precondition (the API server answers 409 if the object changed since it was read).
pub fn status_patch(
    current: &impl Resource,
    stored: &TrafficInfraStatus,
    merged: &TrafficInfraStatus,
) -> serde_json::Value {
    let from = serde_json::to_value(stored).unwrap_or_default();
    let to = serde_json::to_value(merged).unwrap_or_default();
    serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": "TrafficInfra",
        "metadata": {"resourceVersion": current.meta().resource_version},
        "status": crate::operator::status::merge_patch(&from, &to),
    })
}

/// Watches every kind of child the operator creates and notifies `changed` when one owned by a
/// TrafficInfra is added, changed or deleted (and after each re-list, which may hide a deletion).
fn watch_children(client: &Client, changed: Arc<Notify>) {
    fn one<K>(client: &Client, changed: Arc<Notify>)
    where
        K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    {
        let api: Api<K> = Api::all(client.clone());
        let kind = K::kind(&()).to_string();
        let stream = watcher(api, watcher::Config::default().labels(CHILD_SELECTOR)).default_backoff();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut failing = false;
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => {
                        failing = false;
                        if o.owner_references().iter().any(|r| r.kind == "TrafficInfra" && r.controller == Some(true)) {
                            changed.notify_one();
                        }
                    }
                    Ok(watcher::Event::InitDone) => {
                        failing = false;
                        changed.notify_one();
                    }
                    Ok(_) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(%kind, error = %e, "watch of TrafficInfra children failed; retrying with backoff (drift is corrected at the resync until it recovers)");
                    }
                    Err(e) => tracing::debug!(%kind, error = %e, "watch of TrafficInfra children still failing"),
                }
            }
        });
    }
    one::<Deployment>(client, changed.clone());
    one::<Service>(client, changed.clone());
    one::<ConfigMap>(client, changed.clone());
    one::<ServiceAccount>(client, changed.clone());
    one::<Role>(client, changed.clone());
    one::<RoleBinding>(client, changed.clone());
    one::<HorizontalPodAutoscaler>(client, changed);
}

/// The conditions the policy carries now (written by weir only: `Accepted`, `FieldsIgnored`).
fn current_conditions(btp: &BackendTrafficPolicy) -> &[Condition] {
    btp.status.as_ref().map_or(&[], |s| s.conditions.as_slice())
}
