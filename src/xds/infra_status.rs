//! `weir xds`'s part of its TrafficInfra's status, and its Events.
//!
//! One writer per field (see `crd::TrafficInfraStatus`): `weir xds` knows what it serves, so it
//! writes `trafficWeights` (the weights in force, after any `POST /traffic`), `discoveredServices`
//! (each planner Service with its strategy and ready endpoints) and the `ConfigAccepted` condition
//! (False while a proxy rejects a configuration, naming the node, the type, the version and the
//! error; True once that node ACKs a newer version), and records a Warning Event `ConfigRejected`
//! on the TrafficInfra per distinct rejection. The operator writes the rest.
//!
//! Writes go through the status subresource of its own TrafficInfra only (the Role the operator
//! writes names it in `resourceNames`): read, merge its part over what is stored, merge patch with
//! the resourceVersion read; a 409 Conflict (the operator or another replica wrote in between) reads
//! and merges again. With several replicas, each writes the same weights and services (they share
//! the state); a replica writes `ConfigAccepted=True` only when the condition is absent or it
//! cleared a rejection it reported itself, so that it does not hide another replica's proxies' NACK.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

use super::ads::{Event, StreamStatus};
use super::controller::View;
use super::server::StreamObserver;
use crate::crd::{DiscoveredService, TrafficInfra, TrafficInfraStatus};
use crate::ir::{InputKind, Refusal};
use crate::model::ObjectRef;
use crate::operator::status::{merge_xds_part, CONDITION_CONFIG_ACCEPTED};
use crate::reconciler::infra::status_patch;
use crate::reconciler::RefusalSink;
use crate::xds::model::EndpointHealth;
use crate::xds::rejections::{Rejections, Verdict};

/// The Event reason of a rejected configuration.
pub const REASON_CONFIG_REJECTED: &str = "ConfigRejected";
/// Changes within this window are written as one.
const DEBOUNCE: Duration = Duration::from_millis(200);
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);
const ATTEMPTS: usize = 5;
/// A condition message holds up to 32 KiB; a few rejections fit in this.
const MESSAGE_LIMIT: usize = 4096;

/// Feeds the ADS streams' ACKs and NACKs to the [`Rejections`] tracker and reports each distinct
/// rejection once (log, Event).
pub struct RejectionObserver {
    tracker: Mutex<Rejections>,
    changed: Arc<Notify>,
    sink: Arc<dyn RefusalSink>,
    infra: ObjectRef,
}

impl RejectionObserver {
    pub fn new(infra: ObjectRef, sink: Arc<dyn RefusalSink>) -> Arc<Self> {
        Arc::new(Self { tracker: Mutex::default(), changed: Arc::new(Notify::new()), sink, infra })
    }

    /// The verdict, and whether this replica saw any rejection itself.
    pub fn verdict(&self) -> (Verdict, bool) {
        let t = self.tracker.lock();
        (t.verdict(), t.saw_rejections())
    }
}

impl StreamObserver for RejectionObserver {
    fn observe(&self, status: &StreamStatus, events: &[Event]) {
        if !events.iter().any(|e| matches!(e, Event::Ack { .. } | Event::Nack { .. })) {
            // Sent versions are still recorded, for the order of versions.
            self.tracker.lock().observe(status, &[]);
            return;
        }
        let new = self.tracker.lock().observe(status, events);
        for r in &new {
            self.sink.refused(&Refusal {
                object: self.infra.clone(),
                kind: InputKind::Resource,
                reason: REASON_CONFIG_REJECTED.into(),
                message: format!("{}; the proxy keeps its last good configuration", r.describe()),
            });
        }
        self.changed.notify_one();
    }
}

/// The services of `view` as the status lists them.
pub fn discovered(view: &View, namespace: &str) -> Vec<DiscoveredService> {
    let backends: BTreeMap<String, &crate::xds::model::ServiceBackend> =
        view.config.services.iter().map(|s| (s.cluster_name(), s)).collect();
    view.services
        .iter()
        .map(|s| {
            let backend = backends.get(&s.service);
            let name = match s.service.split_once('/') {
                Some((ns, name)) if ns == namespace => name.to_string(),
                _ => s.service.clone(),
            };
            DiscoveredService {
                name,
                strategy: s.strategy.clone(),
                ready_endpoints: backend
                    .map_or(0, |b| b.endpoints.iter().filter(|e| e.health == EndpointHealth::Healthy).count() as u32),
            }
        })
        .collect()
}

/// The `ConfigAccepted` condition for a verdict (`None`: nothing to say yet).
pub fn condition(verdict: &Verdict, generation: Option<i64>, now: &Time) -> Option<Condition> {
    let (status, reason, message) = match verdict {
        Verdict::Unknown => return None,
        Verdict::Accepted => {
            ("True", "Accepted", "every proxy accepted the latest configuration it was sent".to_string())
        }
        Verdict::Rejected(rs) => {
            let mut message = rs.iter().map(|r| r.describe()).collect::<Vec<_>>().join("; ");
            message.push_str("; the proxy keeps its last good configuration");
            ("False", "Rejected", crate::xds::rejections::clip(&message, MESSAGE_LIMIT))
        }
    };
    Some(Condition {
        type_: CONDITION_CONFIG_ACCEPTED.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: now.clone(),
    })
}

pub struct InfraStatusWriter {
    pub client: Client,
    pub namespace: String,
    pub name: String,
    pub view: watch::Receiver<Arc<View>>,
    pub observer: Arc<RejectionObserver>,
}

impl InfraStatusWriter {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let api: Api<TrafficInfra> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut view = self.view.clone();
        let changed = self.observer.changed.clone();
        let mut retry = RETRY_MIN;
        let mut failing = false;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let current = view.borrow_and_update().clone();
            match self.write(&api, &current).await {
                Ok(()) => {
                    retry = RETRY_MIN;
                    if failing {
                        tracing::info!("TrafficInfra status written again");
                        failing = false;
                    }
                }
                Err(e) => {
                    if failing {
                        tracing::debug!(error = %e, "writing the TrafficInfra status still fails");
                    } else {
                        tracing::warn!(error = %e, ti = %format!("{}/{}", self.namespace, self.name),
                            "writing the TrafficInfra status failed; retrying with backoff (is the Role the operator writes granted?)");
                        failing = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = shutdown.changed() => return,
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                    continue;
                }
            }
            tokio::select! {
                r = view.changed() => if r.is_err() { return },
                () = changed.notified() => {}
                _ = shutdown.changed() => return,
            }
            tokio::time::sleep(DEBOUNCE).await;
        }
    }

    async fn write(&self, api: &Api<TrafficInfra>, view: &View) -> Result<(), kube::Error> {
        let weights = view.state.weights.clone();
        let services = discovered(view, &self.namespace);
        let (verdict, saw_rejections) = self.observer.verdict();
        for _ in 0..ATTEMPTS {
            let Some(ti) = api.get_opt(&self.name).await? else { return Ok(()) };
            let stored = ti.status.clone().unwrap_or_default();
            let now = Time(k8s_openapi::jiff::Timestamp::now());
            let mut cond = condition(&verdict, ti.metadata.generation, &now);
            let stored_cond = stored.conditions.iter().find(|c| c.type_ == CONDITION_CONFIG_ACCEPTED);
            if let (Some(c), Some(prev)) = (&cond, stored_cond) {
                // True over False only from a replica that saw rejections itself (and so knows them
                // cleared): another replica's proxies' NACK is not hidden.
                if c.status == "True" && prev.status == "False" && !saw_rejections {
                    cond = None;
                }
            }
            let merged: TrafficInfraStatus = merge_xds_part(&stored, &weights, &services, cond);
            if merged == stored {
                return Ok(());
            }
            match api
                .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(status_patch(&ti, &stored, &merged)))
                .await
            {
                Ok(_) => {
                    tracing::debug!(weights = ?weights, services = services.len(), "TrafficInfra status written");
                    return Ok(());
                }
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
