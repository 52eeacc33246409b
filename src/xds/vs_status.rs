//! What `weir xds` says about VirtualServices: each refusal (invalid, name or port conflict) and
//! each selector that matches no connected Envoy is logged once when it appears and counted
//! (`weir_invalid_input_total{kind="resource"}` per refusal, the gauge
//! `weir_virtualservices_unmatched`), and, with the Kubernetes provider, written as the
//! VirtualService's `Accepted` and `EnvoyMatched` conditions (merge patch of its status
//! subresource; the Role the operator writes grants `virtualservices/status` patch).
//!
//! Whether a selector matches is judged from the open ADS streams' node labels, re-read every
//! [`RECHECK`]: an Envoy that connects or leaves changes `EnvoyMatched` within that time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use super::controller::{View, VsView};
use super::server::Clients;
use crate::crd::VirtualService;
use crate::ir::InputKind;
use crate::model::ObjectRef;
use crate::telemetry::InvalidInputs;
use crate::xds::virtual_service::{conditions, matches, VsRefusal};

/// How often the connected Envoys' labels are compared with the selectors.
pub const RECHECK: Duration = Duration::from_secs(1);

pub struct VsReporter {
    pub view: watch::Receiver<Arc<View>>,
    pub clients: Clients,
    pub invalid: InvalidInputs,
    pub unmatched: Gauge,
    /// Kubernetes mode: where the conditions are written.
    pub client: Option<Client>,
}

impl VsReporter {
    pub fn register_gauge(registry: &mut Registry) -> Gauge {
        let g = Gauge::default();
        let r = registry.sub_registry_with_prefix("weir_virtualservices");
        r.register(
            "unmatched",
            "Accepted VirtualServices whose spec.selector matches no connected Envoy's node labels",
            g.clone(),
        );
        g
    }

    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut refused: BTreeSet<VsRefusal> = BTreeSet::new();
        let mut unmatched: BTreeSet<ObjectRef> = BTreeSet::new();
        let mut failing = false;
        // What was last written per object, so that a status the watch has not brought back yet is
        // not written again.
        let mut written: BTreeMap<ObjectRef, Vec<Condition>> = BTreeMap::new();
        loop {
            let view = self.view.borrow_and_update().clone();
            let now: BTreeSet<VsRefusal> = view.virtual_services.resolution.refused.iter().cloned().collect();
            for r in now.difference(&refused) {
                self.invalid.inc(InputKind::Resource);
                let kept = if r.reason == crate::xds::virtual_service::REASON_INVALID {
                    "; its last valid version, if any, keeps serving"
                } else {
                    ""
                };
                tracing::warn!(object = %r.object, reason = %r.reason, "VirtualService refused: {}{kept}", r.message);
            }
            refused = now;

            let labels: Vec<BTreeMap<String, String>> = self.clients.all().into_iter().map(|s| s.labels).collect();
            let matched: BTreeMap<ObjectRef, bool> = view
                .virtual_services
                .resolution
                .accepted
                .iter()
                .map(|p| (p.object.clone(), labels.iter().any(|l| matches(&p.selector, l))))
                .collect();
            let now: BTreeSet<ObjectRef> = matched.iter().filter(|(_, m)| !**m).map(|(o, _)| o.clone()).collect();
            for o in now.difference(&unmatched) {
                tracing::warn!(object = %o, reason = crate::xds::virtual_service::REASON_NO_MATCHING_ENVOY,
                    "VirtualService: no connected Envoy's node labels (node.metadata.labels) match its spec.selector");
            }
            for o in unmatched.difference(&now) {
                tracing::info!(object = %o, "VirtualService: a connected Envoy matches its spec.selector");
            }
            self.unmatched.set(now.len() as i64);
            unmatched = now;

            if let Some(client) = &self.client {
                match write(client, &view.virtual_services, &matched, &mut written).await {
                    Ok(()) if failing => {
                        tracing::info!("VirtualService status written again");
                        failing = false;
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        tracing::warn!(error = %e, "writing a VirtualService status failed; retrying (is virtualservices/status patch granted?)");
                        failing = true;
                    }
                    Err(e) => tracing::debug!(error = %e, "writing a VirtualService status still fails"),
                }
            }
            tokio::select! {
                r = self.view.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(RECHECK) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Writes the conditions of every VirtualService whose stored ones differ.
async fn write(
    client: &Client,
    vss: &VsView,
    matched: &BTreeMap<ObjectRef, bool>,
    written: &mut BTreeMap<ObjectRef, Vec<Condition>>,
) -> Result<(), kube::Error> {
    // Conditions without their transition times, to compare.
    fn bare(c: &[Condition]) -> Vec<(&str, &str, &str, &str, Option<i64>)> {
        c.iter()
            .map(|c| {
                (c.type_.as_str(), c.status.as_str(), c.reason.as_str(), c.message.as_str(), c.observed_generation)
            })
            .collect()
    }
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let present: BTreeSet<ObjectRef> = vss.objects.iter().map(ObjectRef::of).collect();
    written.retain(|k, _| present.contains(k));
    let mut first_error = None;
    for vs in &vss.objects {
        let me = ObjectRef::of(vs);
        let conds = conditions(vs, &vss.resolution, matched.get(&me).copied(), &now);
        let stored = vs.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
        if bare(&conds) == bare(stored) || written.get(&me).is_some_and(|w| bare(w) == bare(&conds)) {
            continue;
        }
        let api: Api<VirtualService> = Api::namespaced(client.clone(), &vs.namespace().unwrap_or_default());
        let body = serde_json::json!({"status": {"conditions": conds}});
        match api.patch_status(&vs.name_any(), &PatchParams::default(), &Patch::Merge(&body)).await {
            Ok(_) => {
                written.insert(me, conds);
            }
            // Deleted meanwhile.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}
