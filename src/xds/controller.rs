//! The xDS loop: whenever the provider snapshot or the shared state changes, rebuild the
//! configuration (pure), translate it (pure) and publish it to the cache (which pushes only what
//! changed). It also keeps the [`View`] the admin API answers from.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::watch;

use super::cache::SnapshotWriter;
use super::model::{self, ProxyConfig, ServiceSource, TrafficState, XdsSettings};
use super::resources::translate;
use crate::model::Snapshot;
use crate::providers::SnapshotRx;
use crate::telemetry::Readiness;

/// What is being served, for the admin API.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub snapshot: Arc<Snapshot>,
    pub state: TrafficState,
    pub config: ProxyConfig,
    pub services: Vec<ServiceView>,
    /// Selected services left out for their namespace (`model::refused_services`).
    pub refused: Vec<crate::ir::Refusal>,
    /// The VirtualServices as read (before any last-good replacement) and their resolution.
    pub virtual_services: Arc<VsView>,
}

/// The VirtualServices of one snapshot as read, and what became of each.
#[derive(Debug, Clone, Default)]
pub struct VsView {
    pub objects: Vec<crate::crd::VirtualService>,
    pub resolution: crate::xds::virtual_service::Resolution,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ServiceView {
    /// `namespace/name`.
    pub service: String,
    pub source: ServiceSource,
    /// The strategy, when the Service exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// Whether the Service exists in the inputs (a selected but missing Service gets no traffic).
    pub found: bool,
    pub endpoints: usize,
}

impl View {
    /// Strategies a weight may be set for: those with a weight already, and those of services.
    pub fn known_strategies(&self, state: &TrafficState) -> std::collections::BTreeSet<String> {
        state.weights.keys().cloned().chain(self.config.services.iter().map(|s| s.strategy.clone())).collect()
    }
}

/// Pure: the view for one snapshot and state.
pub fn compute(snapshot: Arc<Snapshot>, settings: &XdsSettings, state: TrafficState) -> View {
    let config = model::build(&snapshot, settings, &state);
    let by_key: BTreeMap<String, &model::ServiceBackend> =
        config.services.iter().map(|s| (s.cluster_name(), s)).collect();
    let services = model::selected_services(&snapshot, settings, &state)
        .into_iter()
        .map(|(service, source)| {
            let found = by_key.get(&service);
            ServiceView {
                source,
                strategy: found.map(|s| s.strategy.clone()),
                found: found.is_some(),
                endpoints: found.map(|s| s.endpoints.len()).unwrap_or(0),
                service,
            }
        })
        .collect();
    let refused = model::refused_services(&snapshot, settings, &state);
    View { snapshot, state, config, services, refused, virtual_services: Default::default() }
}

pub struct XdsController {
    pub settings: XdsSettings,
    pub writer: SnapshotWriter,
    pub view: watch::Sender<Arc<View>>,
    pub readiness: Readiness,
    /// The last valid version of each BackendTrafficPolicy: served while an edit is invalid.
    pub last_good_policies: BTreeMap<crate::model::ObjectRef, crate::crd::BackendTrafficPolicy>,
    /// Policies refused in the last snapshot, so that each refusal is logged once.
    pub policy_refusals: std::collections::BTreeSet<crate::ir::Refusal>,
    /// The last valid version of each VirtualService: served while an edit is invalid.
    pub last_good_virtual_services: BTreeMap<crate::model::ObjectRef, crate::crd::VirtualService>,
    /// Liveness: beats on every step and while waiting for a change.
    pub heartbeat: crate::telemetry::Heartbeat,
    /// `weir_invalid_input_total`: a Service refused for its namespace counts once when it appears.
    pub invalid: crate::telemetry::InvalidInputs,
    /// Services refused in the last step, so that each is logged and counted once.
    pub service_refusals: std::collections::BTreeSet<crate::ir::Refusal>,
}

impl XdsController {
    fn step(&mut self, snapshot: Arc<Snapshot>, state: TrafficState) {
        use crate::xds::virtual_service as vs;
        self.log_policy_refusals(&snapshot);
        let raw = snapshot.clone();
        let snapshot = match crate::operator::policy::with_last_good(&snapshot, &mut self.last_good_policies) {
            Some(kept) => Arc::new(kept),
            None => snapshot,
        };
        let snapshot = match vs::with_last_good(&snapshot, &mut self.last_good_virtual_services) {
            Some(kept) => Arc::new(kept),
            None => snapshot,
        };
        let mut view = compute(snapshot, &self.settings, state);
        self.log_service_refusals(&view.refused);
        let mut resources = translate(&view.config);
        // VirtualServices may take neither weir's own names nor its Envoy listener's port.
        let reserved = vs::Reserved {
            names: resources.by_type.values().flat_map(|m| m.keys().cloned()).collect(),
            tcp_port: Some(view.config.listener_port),
        };
        let ns = Some(self.settings.namespace.as_str());
        let served = vs::resolve(&view.snapshot, ns, &reserved);
        resources.extend_new(vs::translate(&served, &view.snapshot.pods));
        let vs_listeners = served.accepted.iter().map(|p| p.listeners.len()).sum::<usize>();
        let objects: Vec<_> = raw
            .virtual_services
            .iter()
            .filter(|v| v.metadata.namespace.as_deref().is_none_or(|n| n == self.settings.namespace))
            .cloned()
            .collect();
        // What to say about each: the served resolution, and each edit refused as invalid (its
        // last valid version, if any, is what is served).
        let mut resolution = served;
        resolution
            .refused
            .extend(vs::resolve(&raw, ns, &reserved).refused.into_iter().filter(|r| r.reason == vs::REASON_INVALID));
        view.virtual_services = Arc::new(VsView { objects, resolution });
        let changed = self.writer.publish(resources);
        if !changed.is_empty() {
            let types: Vec<&str> = changed.iter().map(|t| t.label()).collect();
            tracing::info!(
                revision = view.state.revision,
                weights = ?view.state.weights,
                services = view.config.services.len(),
                virtual_service_listeners = vs_listeners,
                changed = ?types,
                "xDS snapshot published"
            );
        }
        self.view.send_replace(Arc::new(view));
        self.readiness.set(true);
    }

    /// Logs and counts each refusal of the service selection (a Service for its namespace, an allowed
    /// namespace not watched) once, when it appears.
    fn log_service_refusals(&mut self, refused: &[crate::ir::Refusal]) {
        let now: std::collections::BTreeSet<_> = refused.iter().cloned().collect();
        for r in now.difference(&self.service_refusals) {
            self.invalid.inc(r.kind);
            tracing::warn!(object = %r.object, reason = %r.reason, "{} refused: {}", r.object, r.message);
        }
        self.service_refusals = now;
    }

    /// Logs each BackendTrafficPolicy refusal once, when it appears (with the file provider there
    /// is no status to write; with Kubernetes the infra manager also writes the condition).
    fn log_policy_refusals(&mut self, snapshot: &Snapshot) {
        let epoch = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let now: std::collections::BTreeSet<_> =
            crate::operator::policy::resolve(snapshot, &epoch).refusals.into_iter().collect();
        for r in now.difference(&self.policy_refusals) {
            let kept = if r.reason == crate::operator::policy::REASON_INVALID {
                "; its last valid version, if any, keeps serving"
            } else {
                ""
            };
            tracing::warn!(object = %r.object, reason = %r.reason, "BackendTrafficPolicy refused: {}{kept}", r.message);
        }
        self.policy_refusals = now;
    }

    /// Runs until `shutdown` flips.
    pub async fn run(
        mut self,
        mut snapshots: SnapshotRx,
        mut state: watch::Receiver<TrafficState>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let snap = snapshots.borrow_and_update().clone();
            let st = state.borrow_and_update().clone();
            self.heartbeat.beat();
            self.step(snap, st);
            let go_on = self
                .heartbeat
                .idle(async {
                    tokio::select! {
                        r = snapshots.changed() => r.is_ok(),
                        r = state.changed() => r.is_ok(),
                        _ = shutdown.changed() => false,
                    }
                })
                .await;
            if !go_on {
                return;
            }
        }
    }
}
