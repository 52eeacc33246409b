//! The ConfigMap xDS state (`weir::xds::state_kube`) against a scripted API: a missing ConfigMap,
//! the first write, the compare-and-swap's two levels (stored revision, then `resourceVersion`) and
//! the API's error answers.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use weir::xds::model::TrafficState;
use weir::xds::state::{StateError, StateStore};
use weir::xds::state_kube::{KubeConfigMapStore, DATA_KEY};

use super::scripted::{self, created, not_found, ok, status, Call};

const PATH: &str = "/api/v1/namespaces/edge-ns/configmaps/edge-xds-state";
const COLLECTION: &str = "/api/v1/namespaces/edge-ns/configmaps";

fn state(revision: u64, blue: u32) -> TrafficState {
    TrafficState {
        revision,
        weights: BTreeMap::from([("blue".to_string(), blue), ("green".to_string(), 100 - blue)]),
        registered: Default::default(),
        deregistered: Default::default(),
    }
}

/// The ConfigMap as stored, at `resource_version`, holding `data` (None: the operator's data-less one).
fn configmap(resource_version: &str, data: Option<&TrafficState>) -> Value {
    let mut cm = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "edge-xds-state", "namespace": "edge-ns", "resourceVersion": resource_version},
    });
    if let Some(s) = data {
        cm["data"] = json!({ DATA_KEY: serde_json::to_string(s).unwrap() });
    }
    cm
}

fn stored_state(call: &Call) -> TrafficState {
    serde_json::from_str(call.body["data"][DATA_KEY].as_str().expect("the state under its key")).unwrap()
}

fn store(client: kube::Client) -> KubeConfigMapStore {
    KubeConfigMapStore::new(client, "edge-ns", "edge")
}

#[tokio::test]
async fn a_missing_configmap_reads_as_no_state_and_the_first_write_creates_it() {
    let (client, calls) = scripted::client(|c| match (c.method.as_str(), c.path.as_str()) {
        ("GET", PATH) => not_found(),
        ("POST", COLLECTION) => created(c.body.clone()),
        _ => status(500, "InternalError", "unexpected"),
    });
    let s = store(client);
    assert!(s.read().await.unwrap().is_none(), "no ConfigMap is no state, not an error");
    // A writer that expected a revision finds nothing: a lost race, and nothing is written.
    assert!(!s.compare_and_swap(Some(1), &state(2, 50)).await.unwrap());
    assert!(s.compare_and_swap(None, &state(1, 80)).await.unwrap(), "the first write creates it");
    assert_eq!(
        calls.lines(),
        [format!("GET {PATH}"), format!("GET {PATH}"), format!("GET {PATH}"), format!("POST {COLLECTION}")]
    );
    let create = &calls.all()[3];
    assert_eq!(create.body["metadata"]["name"], "edge-xds-state");
    assert_eq!(create.body["metadata"]["namespace"], "edge-ns");
    assert!(create.query.contains("fieldManager=weir-xds"), "{}", create.query);
    assert_eq!(stored_state(create), state(1, 80));
}

#[tokio::test]
async fn another_replica_creating_it_first_is_a_lost_race() {
    let (client, calls) = scripted::client(|c| match c.method.as_str() {
        "GET" => not_found(),
        _ => status(409, "AlreadyExists", "configmaps \"edge-xds-state\" already exists"),
    });
    assert!(!store(client).compare_and_swap(None, &state(1, 80)).await.unwrap(), "409 on create: lost, not failed");
    assert_eq!(calls.with_method("POST").len(), 1);
}

/// The write carries the read's resourceVersion; a 409 (someone wrote in between) is a lost race.
#[tokio::test]
async fn a_write_is_a_merge_patch_on_the_read_resource_version_and_409_loses() {
    let mut patches = 0;
    let (client, calls) = scripted::client(move |c| match c.method.as_str() {
        "GET" => ok(configmap(if patches == 0 { "41" } else { "42" }, Some(&state(3, 50)))),
        "PATCH" => {
            patches += 1;
            if patches == 1 {
                status(409, "Conflict", "the object has been modified; please apply your changes to the latest version")
            } else {
                ok(configmap("43", Some(&state(4, 20))))
            }
        }
        _ => status(500, "InternalError", "unexpected"),
    });
    let s = store(client);
    assert_eq!(s.read().await.unwrap(), Some(state(3, 50)));
    assert!(!s.compare_and_swap(Some(3), &state(4, 20)).await.unwrap(), "409: lost");
    assert!(s.compare_and_swap(Some(3), &state(4, 20)).await.unwrap(), "then won");
    let patches: Vec<Call> = calls.with_method("PATCH");
    assert_eq!(patches.len(), 2);
    for (p, rv) in patches.iter().zip(["41", "42"]) {
        assert_eq!(p.path, PATH);
        assert_eq!(p.content_type, "application/merge-patch+json", "a merge patch: the verb the Role grants");
        assert_eq!(p.body["metadata"]["resourceVersion"], rv, "the precondition is the read's resourceVersion");
        assert_eq!(stored_state(p), state(4, 20));
        assert!(p.query.contains("fieldManager=weir-xds"), "{}", p.query);
    }
}

/// The first level: a stored revision other than the expected one loses without writing; the
/// operator's data-less ConfigMap counts as no state.
#[tokio::test]
async fn a_stale_revision_loses_without_a_write_and_a_data_less_configmap_is_no_state() {
    let (client, calls) = scripted::client(|c| match c.method.as_str() {
        "GET" => ok(configmap("7", Some(&state(5, 50)))),
        _ => status(500, "InternalError", "unexpected"),
    });
    assert!(!store(client).compare_and_swap(Some(4), &state(5, 10)).await.unwrap());
    assert_eq!(calls.lines(), [format!("GET {PATH}")], "no write on a stale revision");

    let (client, calls) = scripted::client(|c| match c.method.as_str() {
        "GET" => ok(configmap("7", None)),
        "PATCH" => ok(configmap("8", Some(&state(1, 80)))),
        _ => status(500, "InternalError", "unexpected"),
    });
    let s = store(client);
    assert_eq!(s.read().await.unwrap(), None);
    assert!(s.compare_and_swap(None, &state(1, 80)).await.unwrap(), "the operator's ConfigMap is patched");
    let patch = &calls.with_method("PATCH")[0];
    assert_eq!(patch.body["metadata"]["resourceVersion"], "7");
}

/// Error answers are errors (with the operation and the object), not lost races; a ConfigMap whose
/// state is not JSON is reported as corrupt.
#[tokio::test]
async fn forbidden_and_server_errors_are_errors_and_bad_json_is_corrupt() {
    let (client, _) = scripted::client(|c| match c.method.as_str() {
        "GET" => ok(configmap("7", Some(&state(1, 50)))),
        _ => status(403, "Forbidden", "configmaps \"edge-xds-state\" is forbidden: cannot patch"),
    });
    match store(client).compare_and_swap(Some(1), &state(2, 10)).await {
        Err(StateError::Kube { op: "patch", object, source: kube::Error::Api(s) }) => {
            assert_eq!(object, "ConfigMap edge-ns/edge-xds-state");
            assert_eq!(s.code, 403);
        }
        other => panic!("expected the patch's 403, got {other:?}"),
    }

    let (client, _) = scripted::client(|_| status(503, "ServiceUnavailable", "etcd is down"));
    match store(client).read().await {
        Err(StateError::Kube { op: "get", source: kube::Error::Api(s), .. }) => assert_eq!(s.code, 503),
        other => panic!("expected the get's 503, got {other:?}"),
    }

    let (client, _) = scripted::client(|_| {
        let mut cm = configmap("7", None);
        cm["data"] = json!({ DATA_KEY: "{not json" });
        ok(cm)
    });
    assert!(matches!(store(client).read().await, Err(StateError::CorruptObject { .. })));
}
