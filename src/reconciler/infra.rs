//! The infra manager: applies what `operator::plan` computes. For each TrafficInfra of the snapshot
//! it server-side-applies the children (field manager `weir-operator`, forced), deletes children it
//! owns that are no longer wanted (the HPA when disabled; everything when the TrafficInfra becomes
//! Pending or Failed), and writes the TrafficInfra's status and every BackendTrafficPolicy's
//! `Accepted` condition when they changed. It writes only while this replica leads.
//!
//! It reads only the children it needs (three GETs per TrafficInfra for status) and makes no call
//! at all when there is no TrafficInfra, so a cluster without the CRDs or the RBAC is unaffected.
//! Removal of the children when a TrafficInfra is deleted is left to Kubernetes' garbage collector
//! (every child has a controller ownerReference).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;

use super::leader::LeaderRx;
use super::metrics::{labels, Labels};
use super::RefusalSink;
use crate::crd::{BackendTrafficPolicy, TrafficInfra, API_VERSION};
use crate::ir::Refusal;
use crate::model::{ObjectRef, Snapshot};
use crate::operator::children::{ChildNames, ChildObject, ADMIN_TOKEN_KEY, FIELD_MANAGER};
use crate::operator::{self, policy, ObservedChildren};
use crate::providers::SnapshotRx;
use crate::telemetry::InvalidInputs;

const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum InfraError {
    #[error("{op} {object}: {source}")]
    Api { op: &'static str, object: String, source: kube::Error },
    #[error(transparent)]
    Fenced(#[from] super::leader::Fenced),
}

/// The condition a TrafficInfra gets when RBAC refused one of its children.
pub const CONDITION_CHILDREN_APPLIED: &str = "ChildrenApplied";

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
        registry.register("weir_infra_reconcile", "Infra manager passes by result", m.reconciles.clone());
        registry.register(
            "weir_infra_writes",
            "Writes of the infra manager by operation (apply, delete, status)",
            m.writes.clone(),
        );
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
        let plans = operator::plan(snapshot, &observed, &BTreeMap::new(), &now);
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
                let body = serde_json::json!({"apiVersion": API_VERSION, "kind": "TrafficInfra", "status": status});
                keep(self.write_status::<TrafficInfra>(ns, &plan.infra.name, body).await);
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

/// The conditions the policy carries now (written by weir only: `Accepted`, `FieldsIgnored`).
fn current_conditions(btp: &BackendTrafficPolicy) -> &[Condition] {
    btp.status.as_ref().map_or(&[], |s| s.conditions.as_slice())
}
