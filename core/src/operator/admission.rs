//! The validating webhook's decision for TrafficInfra (pure): deny a second TrafficInfra in a
//! namespace on create, and a spec the schema cannot catch (e.g. two ports the same) on create or
//! update. The webhook server (I/O) lists the namespace's TrafficInfras and calls [`review`].
//!
//! Without the webhook the same rule holds, later: the operator marks the newer TrafficInfra
//! Failed and creates nothing for it (`operator::elect`).

use kube_core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube_core::ResourceExt;
use kube_core::{DynamicObject, Status};

use crate::crd::TrafficInfra;

/// The response to one AdmissionReview, given the TrafficInfras that exist now (from a list or an
/// informer cache). A review that cannot be read is answered with `allowed: false`.
pub fn review(review: AdmissionReview<TrafficInfra>, existing: &[TrafficInfra]) -> AdmissionReview<DynamicObject> {
    let req: AdmissionRequest<TrafficInfra> = match review.try_into() {
        Ok(req) => req,
        Err(e) => return AdmissionResponse::invalid(format!("not an AdmissionReview request: {e}")).into_review(),
    };
    decide(&req, existing).into_review()
}

/// The decision for one request.
pub fn decide(req: &AdmissionRequest<TrafficInfra>, existing: &[TrafficInfra]) -> AdmissionResponse {
    let allow = AdmissionResponse::from(req);
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return allow;
    }
    let Some(ti) = req.object.as_ref() else {
        return deny(allow, "the request carries no TrafficInfra", "BadRequest", 400);
    };
    let ns = req.namespace.clone().or_else(|| ti.namespace()).unwrap_or_default();
    let name = if req.name.is_empty() { ti.name_any() } else { req.name.clone() };

    if req.operation == Operation::Create {
        // One being deleted does not count: its children are going away.
        let other = existing.iter().find(|t| {
            t.namespace().unwrap_or_default() == ns && t.name_any() != name && t.metadata.deletion_timestamp.is_none()
        });
        if let Some(other) = other {
            let msg = format!(
                "namespace {ns} already has TrafficInfra {}; only one TrafficInfra per namespace is allowed",
                other.name_any()
            );
            return deny(allow, &msg, "AlreadyExists", 409);
        }
    }
    let problems = super::validate_infra(ti);
    if !problems.is_empty() {
        let msg = format!("TrafficInfra {ns}/{name} is invalid: {}", problems.join("; "));
        return deny(allow, &msg, "Invalid", 422);
    }
    allow
}

fn deny(resp: AdmissionResponse, message: &str, reason: &str, code: u16) -> AdmissionResponse {
    let mut resp = resp.deny(message);
    resp.result = Status::failure(message, reason).with_code(code);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn review_json(operation: &str, ns: &str, name: &str, spec: serde_json::Value) -> AdmissionReview<TrafficInfra> {
        serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "weir.dev", "version": "v1alpha1", "kind": "TrafficInfra"},
                "resource": {"group": "weir.dev", "version": "v1alpha1", "resource": "trafficinfras"},
                "requestKind": {"group": "weir.dev", "version": "v1alpha1", "kind": "TrafficInfra"},
                "requestResource": {"group": "weir.dev", "version": "v1alpha1", "resource": "trafficinfras"},
                "name": name,
                "namespace": ns,
                "operation": operation,
                "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
                "object": {
                    "apiVersion": "weir.dev/v1alpha1",
                    "kind": "TrafficInfra",
                    "metadata": {"name": name, "namespace": ns},
                    "spec": spec,
                },
                "oldObject": null,
                "dryRun": false,
            }
        }))
        .unwrap()
    }

    fn existing(ns: &str, name: &str) -> TrafficInfra {
        let mut t = TrafficInfra::new(name, Default::default());
        t.metadata.namespace = Some(ns.into());
        t
    }

    fn response(r: AdmissionReview<DynamicObject>) -> serde_json::Value {
        serde_json::to_value(&r).unwrap()["response"].clone()
    }

    #[test]
    fn first_traffic_infra_in_a_namespace_is_allowed() {
        let r = response(review(review_json("CREATE", "shop", "edge", json!({})), &[existing("blog", "edge")]));
        assert_eq!(r["allowed"], true);
        assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    }

    #[test]
    fn second_traffic_infra_in_a_namespace_is_denied() {
        let r = response(review(review_json("CREATE", "shop", "second", json!({})), &[existing("shop", "first")]));
        assert_eq!(r["allowed"], false);
        assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(r["status"]["code"], 409);
        let msg = r["status"]["message"].as_str().unwrap();
        assert!(msg.contains("namespace shop already has TrafficInfra first"), "{msg}");
    }

    #[test]
    fn updating_the_only_one_and_replacing_a_deleted_one_are_allowed() {
        // The object itself is in the list on update (and on a retried create).
        let r = response(review(review_json("UPDATE", "shop", "edge", json!({})), &[existing("shop", "edge")]));
        assert_eq!(r["allowed"], true);
        let r = response(review(review_json("CREATE", "shop", "edge", json!({})), &[existing("shop", "edge")]));
        assert_eq!(r["allowed"], true);
        let mut going = existing("shop", "old");
        going.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time("2026-01-01T00:00:00Z".parse().unwrap()));
        let r = response(review(review_json("CREATE", "shop", "new", json!({})), &[going]));
        assert_eq!(r["allowed"], true);
    }

    #[test]
    fn a_spec_the_schema_cannot_catch_is_denied() {
        let spec = json!({"xds": {"ports": {"grpc": 18000, "admin": 18000}}});
        let r = response(review(review_json("UPDATE", "shop", "edge", spec), &[]));
        assert_eq!(r["allowed"], false);
        assert_eq!(r["status"]["code"], 422);
        assert!(r["status"]["message"].as_str().unwrap().contains("xds.ports.grpc and xds.ports.admin are both 18000"));
    }

    #[test]
    fn deletes_are_allowed_and_garbage_is_refused() {
        let r = response(review(review_json("DELETE", "shop", "edge", json!({})), &[existing("shop", "other")]));
        assert_eq!(r["allowed"], true);
        let empty: AdmissionReview<TrafficInfra> =
            serde_json::from_value(json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"})).unwrap();
        assert_eq!(response(review(empty, &[]))["allowed"], false);
    }
}
