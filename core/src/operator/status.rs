//! A TrafficInfra's status from what was decided about it and what its children report. Pure: the
//! caller passes the observed children and the time.
//!
//! The status has two writers, one per field (see [`TrafficInfraStatus`]): the operator computes
//! its part here ([`compute`]) and merges it into what it last read ([`merge_operator_part`]);
//! `weir xds` merges its part with [`merge_xds_part`]. Each writes the merged status with the
//! resourceVersion it read, and on a 409 Conflict reads again and re-merges, so neither erases
//! the other's fields or conditions.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube_core::ResourceExt;

use crate::crd::{Phase, TrafficInfra, TrafficInfraStatus};

use super::children::ChildNames;

pub const CONDITION_ACCEPTED: &str = "Accepted";
pub const CONDITION_NAMESPACE_CONFIGURED: &str = "NamespaceConfigured";
pub const CONDITION_XDS_READY: &str = "XdsReady";
pub const CONDITION_ENVOY_READY: &str = "EnvoyReady";
pub const CONDITION_READY: &str = "Ready";
/// False when RBAC refused the operator one of the children (written by the infra manager).
pub const CONDITION_CHILDREN_APPLIED: &str = "ChildrenApplied";
/// Written by `weir xds`: False while a proxy rejects (NACKs) a configuration it was sent, naming the
/// node, the resource type, the version and the error; True once a newer version is accepted.
pub const CONDITION_CONFIG_ACCEPTED: &str = "ConfigAccepted";

/// The condition types the operator writes; every other type belongs to `weir xds` and is kept.
pub const OPERATOR_CONDITIONS: &[&str] = &[
    CONDITION_ACCEPTED,
    CONDITION_NAMESPACE_CONFIGURED,
    CONDITION_XDS_READY,
    CONDITION_ENVOY_READY,
    CONDITION_READY,
    CONDITION_CHILDREN_APPLIED,
];

/// The operator's part of `ours` over `current`: `weir xds`'s fields (`trafficWeights`,
/// `discoveredServices`, its conditions) stay as in `current`.
pub fn merge_operator_part(current: &TrafficInfraStatus, ours: &TrafficInfraStatus) -> TrafficInfraStatus {
    let mut merged = ours.clone();
    merged.traffic_weights = current.traffic_weights.clone();
    merged.discovered_services = current.discovered_services.clone();
    merged.conditions.retain(|c| OPERATOR_CONDITIONS.contains(&c.type_.as_str()));
    merged
        .conditions
        .extend(current.conditions.iter().filter(|c| !OPERATOR_CONDITIONS.contains(&c.type_.as_str())).cloned());
    merged
}

/// A condition of type `type_` (`True` when `ok`) whose `lastTransitionTime` is that of the
/// same-typed condition in `previous` while its status holds, else `now` (Kubernetes API
/// conventions). The one rule for every kind whose conditions weir writes.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// `weir xds`'s part over `current`: the weights in force, the services it routes to, and (when
/// given) its `ConfigAccepted` condition, whose `lastTransitionTime` is kept while its status does
/// not change. Every other field and condition stays as in `current`.
pub fn merge_xds_part(
    current: &TrafficInfraStatus,
    weights: &BTreeMap<String, u32>,
    services: &[crate::crd::DiscoveredService],
    config_accepted: Option<Condition>,
) -> TrafficInfraStatus {
    let mut merged = current.clone();
    merged.traffic_weights = weights.clone();
    merged.discovered_services = services.to_vec();
    if let Some(mut cond) = config_accepted {
        if let Some(prev) = current.conditions.iter().find(|c| c.type_ == cond.type_) {
            if prev.status == cond.status {
                cond.last_transition_time = prev.last_transition_time.clone();
            }
        }
        match merged.conditions.iter_mut().find(|c| c.type_ == cond.type_) {
            Some(slot) => *slot = cond,
            None => merged.conditions.push(cond),
        }
    }
    merged
}

/// What was decided about one TrafficInfra before looking at its children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Children are (to be) applied.
    Build,
    /// Waiting for something outside it; nothing is created.
    Pending { reason: String, message: String },
    /// Refused; nothing is created.
    Failed { reason: String, message: String },
}

/// The children as last read from the API server (absent: not created yet, or deleted).
#[derive(Debug, Clone, Copy, Default)]
pub struct Observed<'a> {
    pub xds_deployment: Option<&'a Deployment>,
    pub envoy_deployment: Option<&'a Deployment>,
    pub envoy_service: Option<&'a Service>,
}

/// `(available, desired)` replicas of a Deployment; `desired` is the spec's, or (with an HPA, which
/// owns the count) the status's, and at least 1.
pub fn replicas(dep: &Deployment) -> (i32, i32) {
    let available = dep.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0);
    let desired = dep.spec.replicas.or_else(|| dep.status.as_ref().and_then(|s| s.replicas)).unwrap_or(1).max(1);
    (available, desired)
}

/// Where clients reach the Envoys: the load balancer's hostname or IP for a LoadBalancer Service,
/// else the Service's cluster DNS name and port.
pub fn envoy_endpoint(svc: &Service) -> Option<String> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("LoadBalancer") {
        let ingress = svc.status.as_ref()?.load_balancer.as_ref()?.ingress.as_ref()?.first()?;
        return ingress.hostname.clone().or_else(|| ingress.ip.clone());
    }
    let port = spec.ports.as_ref()?.first()?.port;
    Some(format!("{}.{}.svc:{port}", svc.name_any(), svc.namespace().unwrap_or_default()))
}

/// The status to write: the operator's part computed, `weir xds`'s part as `ti` has it.
/// Conditions and `lastTransitionTime` keep their previous times when nothing changed, so that
/// writing the same status twice is a no-op.
pub fn compute(ti: &TrafficInfra, outcome: &Outcome, observed: Observed<'_>, now: &Time) -> TrafficInfraStatus {
    let previous = ti.status.clone().unwrap_or_default();
    let generation = ti.metadata.generation;
    let mut conds: Vec<Cond> = Vec::new();
    let mut status = TrafficInfraStatus { observed_generation: generation, ..Default::default() };

    let (phase, message) = match outcome {
        Outcome::Failed { reason, message } => {
            conds.push((CONDITION_ACCEPTED, false, reason.clone(), message.clone()));
            conds.push((CONDITION_READY, false, "Failed".into(), message.clone()));
            (Phase::Failed, message.clone())
        }
        Outcome::Pending { reason, message } => {
            conds.push((CONDITION_ACCEPTED, true, "Accepted".into(), "the only TrafficInfra in its namespace".into()));
            conds.push((CONDITION_NAMESPACE_CONFIGURED, false, reason.clone(), message.clone()));
            conds.push((CONDITION_READY, false, "Pending".into(), message.clone()));
            (Phase::Pending, message.clone())
        }
        Outcome::Build => children_readiness(ti, observed, &previous, &mut status, &mut conds),
    };

    status.phase = Some(phase);
    status.message = Some(message);
    status.last_transition_time = match (&previous.phase, &previous.last_transition_time) {
        (Some(p), Some(t)) if *p == phase => Some(t.clone()),
        _ => Some(now.clone()),
    };
    let ours = conds
        .into_iter()
        .map(|(type_, ok, reason, message)| {
            condition(&previous.conditions, type_, ok, &reason, message, generation, now)
        })
        .collect();
    status.conditions = ours;
    merge_operator_part(&previous, &status)
}

/// A condition to write: type, status, reason, message.
type Cond = (&'static str, bool, String, String);

/// The phase and message of a TrafficInfra whose children are applied, from how ready they are;
/// the endpoints and readiness flags go into `status`, their conditions into `conds`.
fn children_readiness(
    ti: &TrafficInfra,
    observed: Observed<'_>,
    previous: &TrafficInfraStatus,
    status: &mut TrafficInfraStatus,
    conds: &mut Vec<Cond>,
) -> (Phase, String) {
    let names = ChildNames::of(&ti.name_any());
    let ns = ti.namespace().unwrap_or_default();
    conds.push((CONDITION_ACCEPTED, true, "Accepted".into(), "the only TrafficInfra in its namespace".into()));
    conds.push((CONDITION_NAMESPACE_CONFIGURED, true, "Found".into(), "NamespaceConfig found".into()));
    status.xds_endpoint = Some(format!("{}.{ns}.svc:{}", names.xds, ti.spec.xds.ports.grpc));

    let mut missing = Vec::new();
    let (xds_ready, xds_msg) = deployment_readiness("xDS", &names.xds, observed.xds_deployment);
    let (envoy_ready, envoy_msg) = deployment_readiness("Envoy", &names.envoy, observed.envoy_deployment);
    status.xds_ready = xds_ready;
    status.envoy_ready = envoy_ready;
    conds.push((
        CONDITION_XDS_READY,
        xds_ready,
        if xds_ready { "Available" } else { "Unavailable" }.into(),
        xds_msg.clone(),
    ));
    conds.push((
        CONDITION_ENVOY_READY,
        envoy_ready,
        if envoy_ready { "Available" } else { "Unavailable" }.into(),
        envoy_msg.clone(),
    ));
    if !xds_ready {
        missing.push(xds_msg);
    }
    if !envoy_ready {
        missing.push(envoy_msg);
    }
    status.envoy_endpoint = observed.envoy_service.and_then(envoy_endpoint);
    if status.envoy_endpoint.is_none() {
        missing.push(match observed.envoy_service {
            None => format!("Service {} does not exist yet", names.envoy),
            Some(_) => format!("Service {} has no load-balancer address yet", names.envoy),
        });
    }
    if missing.is_empty() {
        let msg = "xDS and Envoy available".to_string();
        conds.push((CONDITION_READY, true, "Ready".into(), msg.clone()));
        (Phase::Ready, msg)
    } else {
        let was_ready = matches!(previous.phase, Some(Phase::Ready | Phase::Degraded));
        let phase = if was_ready { Phase::Degraded } else { Phase::Deploying };
        let msg = missing.join("; ");
        conds.push((CONDITION_READY, false, phase.as_str().into(), msg.clone()));
        (phase, msg)
    }
}

/// The JSON merge patch (RFC 7386) that turns `from` into `to`: changed values replaced, removed
/// keys set to null, objects patched key by key, arrays replaced whole.
pub fn merge_patch(from: &serde_json::Value, to: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            let mut out = serde_json::Map::new();
            for (k, old) in a {
                match b.get(k) {
                    None => {
                        out.insert(k.clone(), Value::Null);
                    }
                    Some(new) if new != old => {
                        out.insert(k.clone(), merge_patch(old, new));
                    }
                    Some(_) => {}
                }
            }
            for (k, new) in b {
                if !a.contains_key(k) {
                    out.insert(k.clone(), new.clone());
                }
            }
            Value::Object(out)
        }
        _ => to.clone(),
    }
}

fn deployment_readiness(what: &str, name: &str, dep: Option<&Deployment>) -> (bool, String) {
    match dep {
        None => (false, format!("{what} Deployment {name} does not exist yet")),
        Some(d) => {
            let (available, desired) = replicas(d);
            (available >= 1, format!("{what} Deployment {name}: {available}/{desired} replicas available"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::DiscoveredService;

    fn cond(type_: &str, status: &str, at: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: "R".into(),
            message: "m".into(),
            observed_generation: Some(1),
            last_transition_time: Time(at.parse().unwrap()),
        }
    }

    const T0: &str = "2026-01-01T00:00:00Z";
    const T1: &str = "2026-01-02T00:00:00Z";

    /// Each writer keeps the other's fields and condition types.
    #[test]
    fn the_two_writers_keep_each_others_fields() {
        let weights = BTreeMap::from([("blue".to_string(), 40), ("green".to_string(), 60)]);
        let services =
            vec![DiscoveredService { name: "p-blue".into(), strategy: Some("blue".into()), ready_endpoints: 2 }];
        let stored = TrafficInfraStatus {
            phase: Some(Phase::Ready),
            xds_ready: true,
            conditions: vec![cond(CONDITION_READY, "True", T0)],
            ..Default::default()
        };
        let after_xds = merge_xds_part(&stored, &weights, &services, Some(cond(CONDITION_CONFIG_ACCEPTED, "True", T0)));
        assert_eq!(after_xds.phase, Some(Phase::Ready));
        assert!(after_xds.xds_ready);
        assert_eq!(after_xds.traffic_weights, weights);
        let types: Vec<_> = after_xds.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [CONDITION_READY, CONDITION_CONFIG_ACCEPTED]);

        // The operator's next status (it knows nothing of weights) over what weir xds wrote.
        let ours = TrafficInfraStatus {
            phase: Some(Phase::Degraded),
            conditions: vec![cond(CONDITION_READY, "False", T1)],
            ..Default::default()
        };
        let after_operator = merge_operator_part(&after_xds, &ours);
        assert_eq!(after_operator.phase, Some(Phase::Degraded));
        assert_eq!(after_operator.traffic_weights, weights);
        assert_eq!(after_operator.discovered_services, services);
        let types: Vec<_> = after_operator.conditions.iter().map(|c| (c.type_.as_str(), c.status.as_str())).collect();
        assert_eq!(types, [(CONDITION_READY, "False"), (CONDITION_CONFIG_ACCEPTED, "True")]);
    }

    #[test]
    fn config_accepted_keeps_its_transition_time_until_its_status_changes() {
        let stored =
            TrafficInfraStatus { conditions: vec![cond(CONDITION_CONFIG_ACCEPTED, "False", T0)], ..Default::default() };
        let same = merge_xds_part(&stored, &BTreeMap::new(), &[], Some(cond(CONDITION_CONFIG_ACCEPTED, "False", T1)));
        assert_eq!(same.conditions[0].last_transition_time.0.to_string(), T0);
        let flipped = merge_xds_part(&stored, &BTreeMap::new(), &[], Some(cond(CONDITION_CONFIG_ACCEPTED, "True", T1)));
        assert_eq!(flipped.conditions[0].last_transition_time.0.to_string(), T1);
        // No opinion: the stored condition stays.
        assert_eq!(merge_xds_part(&stored, &BTreeMap::new(), &[], None).conditions, stored.conditions);
    }

    #[test]
    fn merge_patch_nulls_what_went_away() {
        let from = serde_json::json!({"phase": "Ready", "envoyEndpoint": "x", "trafficWeights": {"blue": 1, "old": 2}});
        let to = serde_json::json!({"phase": "Degraded", "trafficWeights": {"blue": 1}, "message": "m"});
        let patch = merge_patch(&from, &to);
        assert_eq!(
            patch,
            serde_json::json!({"phase": "Degraded", "envoyEndpoint": null, "trafficWeights": {"old": null}, "message": "m"})
        );
        let mut applied = from.clone();
        json_merge(&mut applied, &patch);
        assert_eq!(applied, to);
    }

    /// RFC 7386, as the API server applies a merge patch.
    fn json_merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
        let (Some(t), Some(p)) = (target.as_object_mut(), patch.as_object()) else {
            *target = patch.clone();
            return;
        };
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                json_merge(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
    }
}
