//! The infra manager (`weir::reconciler::infra`) against a scripted API: one pass over a TrafficInfra
//! applies its children, keeps an existing admin token Secret (409), merges its status again after a
//! 409, prunes a child it owns and no longer wants, and reports the API's error answers (RBAC 403,
//! 422 Invalid, 429 throttling).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use weir::crd::{NamespaceConfig, NamespaceConfigSpec, TrafficInfra};
use weir::ir::{InputKind, Refusal};
use weir::model::Snapshot;
use weir::reconciler::infra::{InfraError, InfraLoop, InfraMetrics, CONDITION_CHILDREN_APPLIED};
use weir::reconciler::leader::always_leader;
use weir::reconciler::metrics::labels;
use weir::reconciler::RefusalSink;
use weir::telemetry::InvalidInputs;
use weir_core::testkit::mk_traffic_infra;

use super::scripted::{self, created, echo, not_found, ok, status, Call, Calls, Reply};

const NS: &str = "/namespaces/shop";
const TI: &str = "/apis/weir.dev/v1alpha1/namespaces/shop/trafficinfras/edge";

/// The refusals the pass sends on (as Events, in the controller).
#[derive(Default)]
struct Sink(Mutex<Vec<Refusal>>);

impl RefusalSink for Sink {
    fn refused(&self, refusal: &Refusal) {
        self.0.lock().unwrap().push(refusal.clone());
    }
}

struct Bed {
    infra: InfraLoop,
    sink: Arc<Sink>,
    calls: Calls,
}

fn bed(answer: impl FnMut(&Call) -> Reply + Send + 'static) -> Bed {
    let (client, calls) = scripted::client(answer);
    let (_tx, leader, fence) = always_leader();
    let sink = Arc::new(Sink::default());
    let infra = InfraLoop {
        client,
        metrics: InfraMetrics::default(),
        invalid: InvalidInputs::default(),
        sink: sink.clone(),
        resync: Duration::from_secs(60),
        leader,
        fence,
    };
    Bed { infra, sink, calls }
}

impl Bed {
    fn writes(&self, op: &str) -> u64 {
        self.infra.metrics.writes.get_or_create(&labels(&[("op", op)])).get()
    }
}

fn traffic_infra(hpa: bool) -> TrafficInfra {
    let mut ti = mk_traffic_infra("shop", "edge").build();
    ti.metadata.uid = Some("uid-edge".into());
    ti.metadata.generation = Some(3);
    ti.metadata.resource_version = Some("7".into());
    ti.spec.envoy.hpa.enabled = hpa;
    ti
}

fn snapshot(ti: &TrafficInfra) -> Snapshot {
    let mut nc = NamespaceConfig::new("default", NamespaceConfigSpec::default());
    nc.metadata.namespace = Some("shop".into());
    Snapshot { traffic_infras: vec![ti.clone()], namespace_configs: vec![nc], ..Default::default() }
}

/// The TrafficInfra as the API server returns it, at `resource_version`.
fn stored(ti: &TrafficInfra, resource_version: &str) -> Value {
    let mut v = serde_json::to_value(ti).unwrap();
    v["metadata"]["resourceVersion"] = json!(resource_version);
    v
}

/// `"PATCH path"` for every child, in the order the operator applies them.
fn child_applies(hpa: bool) -> Vec<String> {
    let mut v = vec![
        format!("PATCH /api/v1{NS}/serviceaccounts/edge-xds"),
        format!("PATCH /apis/rbac.authorization.k8s.io/v1{NS}/roles/edge-xds-role"),
        format!("PATCH /apis/rbac.authorization.k8s.io/v1{NS}/rolebindings/edge-xds-rolebinding"),
        format!("POST /api/v1{NS}/secrets"),
        format!("PATCH /api/v1{NS}/configmaps/edge-xds-state"),
        format!("PATCH /api/v1{NS}/services/edge-xds"),
        format!("PATCH /apis/apps/v1{NS}/deployments/edge-xds"),
        format!("PATCH /api/v1{NS}/configmaps/edge-envoy-bootstrap"),
        format!("PATCH /api/v1{NS}/services/edge-envoy"),
        format!("PATCH /apis/apps/v1{NS}/deployments/edge-envoy"),
    ];
    if hpa {
        v.push(format!("PATCH /apis/autoscaling/v2{NS}/horizontalpodautoscalers/edge-envoy-hpa"));
    }
    v
}

/// The three reads status is computed from (nothing exists yet: 404).
fn observe() -> Vec<String> {
    vec![
        format!("GET /apis/apps/v1{NS}/deployments/edge-xds"),
        format!("GET /apis/apps/v1{NS}/deployments/edge-envoy"),
        format!("GET /api/v1{NS}/services/edge-envoy"),
    ]
}

fn condition<'a>(status_patch: &'a Call, type_: &str) -> Option<&'a Value> {
    status_patch.body["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}

/// Every child applied (forced, by weir-operator, owned by the TrafficInfra); the admin token Secret
/// created with a random token and a 409 (it exists) keeping it; the status written as a merge patch
/// on the read resourceVersion, read and merged again after a 409.
#[tokio::test]
async fn a_pass_applies_every_child_keeps_the_token_and_merges_status_again_after_a_conflict() {
    let ti = traffic_infra(true);
    let (ti_a, mut reads, mut status_patches) = (ti.clone(), 0, 0);
    let b = bed(move |c| match (c.method.as_str(), c.last_segment()) {
        ("GET", "edge") => {
            reads += 1;
            ok(stored(&ti_a, if reads == 1 { "7" } else { "8" }))
        }
        ("GET", _) => not_found(),
        ("POST", "secrets") => status(409, "AlreadyExists", "secrets \"edge-xds-admin-token\" already exists"),
        ("PATCH", "status") => {
            status_patches += 1;
            if status_patches == 1 {
                status(409, "Conflict", "the object has been modified")
            } else {
                ok(stored(&ti_a, "9"))
            }
        }
        ("PATCH", _) => echo(c),
        _ => status(500, "InternalError", "unexpected"),
    });
    b.infra.pass(&snapshot(&ti), &mut BTreeSet::new()).await.unwrap();

    let mut want = observe();
    want.extend(child_applies(true));
    want.extend([format!("GET {TI}"), format!("PATCH {TI}/status"), format!("GET {TI}"), format!("PATCH {TI}/status")]);
    assert_eq!(b.calls.lines(), want);
    let calls = b.calls.all();
    for apply in calls.iter().filter(|c| c.method == "PATCH" && c.last_segment() != "status") {
        assert!(apply.is_apply_by("weir-operator"), "{apply:?}");
        let owner = &apply.body["metadata"]["ownerReferences"][0];
        assert_eq!((owner["kind"].as_str(), owner["uid"].as_str()), (Some("TrafficInfra"), Some("uid-edge")));
        assert_eq!(owner["controller"], true, "{}", apply.line());
    }
    let secret = calls.iter().find(|c| c.method == "POST").unwrap();
    assert_eq!(secret.body["metadata"]["name"], "edge-xds-admin-token");
    let token = secret.body["stringData"]["token"].as_str().expect("the token");
    assert!(token.len() == 64 && token.chars().all(|c| c.is_ascii_hexdigit()), "{token}");
    // The status: a merge patch whose precondition is the resourceVersion just read.
    let patches: Vec<&Call> = calls.iter().filter(|c| c.last_segment() == "status").collect();
    for (p, rv) in patches.iter().zip(["7", "8"]) {
        assert_eq!(p.content_type, "application/merge-patch+json");
        assert_eq!(p.body["metadata"]["resourceVersion"], rv);
        assert!(condition(p, "Ready").is_some(), "{}", p.body);
    }
    assert_eq!(b.writes("apply"), 10);
    assert_eq!(b.writes("create"), 0, "the existing Secret is kept, not counted as created");
    assert_eq!(b.writes("status"), 1);
    assert!(b.sink.0.lock().unwrap().is_empty());
}

/// HPA disabled: the HPA this TrafficInfra owns is deleted; one of the same name that someone else
/// owns is left alone.
#[tokio::test]
async fn an_unwanted_child_is_deleted_only_when_this_traffic_infra_owns_it() {
    for (owner_uid, deleted) in [("uid-edge", true), ("uid-other", false)] {
        let ti = traffic_infra(false);
        let ti_a = ti.clone();
        let b = bed(move |c| match (c.method.as_str(), c.last_segment()) {
            ("GET", "edge-envoy-hpa") => ok(json!({
                "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": "edge-envoy-hpa", "namespace": "shop", "ownerReferences": [{
                    "apiVersion": "weir.dev/v1alpha1", "kind": "TrafficInfra", "name": "edge",
                    "uid": owner_uid, "controller": true,
                }]},
                "spec": {"maxReplicas": 10, "scaleTargetRef": {"kind": "Deployment", "name": "edge-envoy"}},
            })),
            ("GET", "edge") => ok(stored(&ti_a, "7")),
            ("GET", _) => not_found(),
            ("POST", _) => created(c.body.clone()),
            ("DELETE", _) => ok(json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})),
            ("PATCH", "status") => ok(stored(&ti_a, "8")),
            ("PATCH", _) => echo(c),
            _ => status(500, "InternalError", "unexpected"),
        });
        b.infra.pass(&snapshot(&ti), &mut BTreeSet::new()).await.unwrap();
        let hpa = format!("/apis/autoscaling/v2{NS}/horizontalpodautoscalers/edge-envoy-hpa");
        let touching: Vec<String> = b.calls.lines().into_iter().filter(|l| l.ends_with(&hpa)).collect();
        let mut want = vec![format!("GET {hpa}")];
        if deleted {
            want.push(format!("DELETE {hpa}"));
        }
        assert_eq!(touching, want, "HPA owned by {owner_uid}");
        assert_eq!(b.writes("delete"), u64::from(deleted));
        assert_eq!(b.writes("create"), 1, "the token Secret created");
    }
}

/// Error answers: RBAC refusing the Role (403) and the API refusing a Deployment (422) do not stop
/// the other children; the 403 gives ChildrenApplied=False naming the Role and RBAC's reason, and
/// one Permission refusal; the pass returns the first error, so the loop retries with backoff.
#[tokio::test]
async fn forbidden_and_invalid_children_are_reported_and_the_others_still_applied() {
    const RBAC: &str = "roles.rbac.authorization.k8s.io \"edge-xds-role\" is forbidden: user \"weir\" is attempting to grant RBAC permissions not currently held";
    let ti = traffic_infra(true);
    let ti_a = ti.clone();
    let b = bed(move |c| match (c.method.as_str(), c.last_segment()) {
        ("PATCH", "edge-xds-role") => status(403, "Forbidden", RBAC),
        ("PATCH", "edge-envoy") if c.path.contains("/deployments/") => {
            status(422, "Invalid", "Deployment.apps \"edge-envoy\" is invalid: spec.replicas: Invalid value: -1")
        }
        ("GET", "edge") => ok(stored(&ti_a, "7")),
        ("GET", _) => not_found(),
        ("POST", _) => created(c.body.clone()),
        ("PATCH", "status") => ok(stored(&ti_a, "8")),
        ("PATCH", _) => echo(c),
        _ => status(500, "InternalError", "unexpected"),
    });
    let err = b.infra.pass(&snapshot(&ti), &mut BTreeSet::new()).await.unwrap_err();
    assert!(err.is_forbidden(), "the first error is the Role's: {err}");
    assert_eq!(err.metric_label(), "apply");
    let mut want = observe();
    want.extend(child_applies(true));
    want.extend([format!("GET {TI}"), format!("PATCH {TI}/status")]);
    assert_eq!(b.calls.lines(), want, "every child tried despite the refusals");
    assert_eq!(b.writes("apply"), 8, "10 applies, 2 refused");

    let status_patch = b.calls.all().pop().unwrap();
    let cond = condition(&status_patch, CONDITION_CHILDREN_APPLIED).expect("ChildrenApplied in the status");
    assert_eq!((cond["status"].as_str(), cond["reason"].as_str()), (Some("False"), Some("PermissionDenied")));
    assert_eq!(cond["observedGeneration"], 3);
    let message = cond["message"].as_str().unwrap();
    assert!(message.contains("Role shop/edge-xds-role") && message.contains("not currently held"), "{message}");
    assert!(!message.contains("edge-envoy"), "a 422 is not a permission problem: {message}");
    let refused = b.sink.0.lock().unwrap().clone();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!((refused[0].kind, refused[0].reason.as_str()), (InputKind::Permission, "PermissionDenied"));
}

/// Throttling (429) on every write: an error (op `apply`, retried with backoff by the loop), not a
/// permission refusal; nothing counted as written.
#[tokio::test]
async fn throttled_applies_fail_the_pass_without_a_permission_condition() {
    let ti = traffic_infra(true);
    let ti_a = ti.clone();
    let b = bed(move |c| match (c.method.as_str(), c.last_segment()) {
        ("GET", "edge") => ok(stored(&ti_a, "7")),
        ("GET", _) => not_found(),
        ("PATCH", "status") => ok(stored(&ti_a, "8")),
        ("PATCH" | "POST", _) => status(429, "TooManyRequests", "client rate limiter: slow down"),
        _ => status(500, "InternalError", "unexpected"),
    });
    let err = b.infra.pass(&snapshot(&ti), &mut BTreeSet::new()).await.unwrap_err();
    match &err {
        InfraError::Api { op: "apply", object, source: kube::Error::Api(s) } => {
            assert_eq!((object.as_str(), s.code), ("ServiceAccount shop/edge-xds", 429))
        }
        other => panic!("expected the first apply's 429, got {other}"),
    }
    assert!(!err.is_forbidden());
    assert_eq!(b.writes("apply"), 0);
    let status_patch = b.calls.all().pop().unwrap();
    assert_eq!(status_patch.line(), format!("PATCH {TI}/status"));
    assert!(condition(&status_patch, CONDITION_CHILDREN_APPLIED).is_none(), "{}", status_patch.body);
    assert!(b.sink.0.lock().unwrap().is_empty());
}
