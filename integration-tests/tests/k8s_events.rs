//! Events for refused inputs, recorded through kube's Recorder on the in-process test API server.

use std::time::{Duration, Instant};

use integration_tests::apiserver::{ApiServer, Options, Selector};
use serde_json::json;
use weir::ir::{InputKind, Refusal};
use weir::model::ObjectRef;
use weir::reconciler::RefusalSink;

#[tokio::test]
async fn refusals_become_deduplicated_events_on_the_ingress() {
    let server = ApiServer::start(Options::default()).await;
    let ingress = server
        .store()
        .create_object(json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                              "metadata": {"name": "web", "namespace": "team"}, "spec": {}}))
        .unwrap();
    let (sink, _task) =
        weir::reconciler::events::spawn(integration_tests::chart::controller_client(&server), "test-instance".into());
    let refusal = Refusal {
        object: ObjectRef::new("Ingress", "team", "web"),
        kind: InputKind::Annotation,
        reason: "InvalidTrafficWeight".into(),
        message: "annotation dns.adevinta.com/traffic-weight=\"abc\" is not a weight; set it to a whole number 0-100"
            .into(),
    };
    sink.refused(&refusal);
    sink.refused(&refusal);

    let events = server.store().type_of(&json!({"apiVersion": "events.k8s.io/v1", "kind": "Event"})).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let event = loop {
        let (items, _) = server.store().list(&events, Some("team"), &Selector::default());
        if let Some(e) = items.first().filter(|e| e["series"]["count"].as_i64() == Some(2)) {
            assert_eq!(items.len(), 1, "a repeat is a series on the same Event: {items:?}");
            break e.clone();
        }
        assert!(Instant::now() < deadline, "no deduplicated Event: {items:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "InvalidTrafficWeight");
    assert!(event["note"].as_str().unwrap().contains("whole number 0-100"));
    assert_eq!(event["regarding"]["kind"], "Ingress");
    assert_eq!(event["regarding"]["name"], "web");
    assert_eq!(event["regarding"]["uid"], ingress["metadata"]["uid"]);
    assert_eq!(event["reportingController"], "weir-controller");
}

/// `--min-serving-clusters` refusing a row written by hand: besides the log and the metric, a
/// Warning Event on the controller's Pod (the weight row is no Kubernetes object).
#[tokio::test(flavor = "multi_thread")]
async fn a_min_serving_refusal_becomes_an_event_on_the_controllers_pod() {
    use std::sync::Arc;
    use weir::backends::sqlite::SqliteStore;
    use weir::backends::WeightStore;

    let server = ApiServer::start(Options::default()).await;
    let (sink, _task) =
        weir::reconciler::events::spawn(integration_tests::chart::controller_client(&server), "test-instance".into());
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("weir.db")).await.unwrap());
    store.ensure("eu", 100).await.unwrap();
    store.ensure("us", 0).await.unwrap();
    // By hand: eu to 0 would leave no cluster serving.
    store.set_desired("eu", 0).await.unwrap();
    let invalid = weir::telemetry::InvalidInputs::default();
    let weight_loop = weir::reconciler::weight::WeightLoop {
        store: store.clone(),
        cluster: "eu".into(),
        initial_weight: 100,
        interval: Duration::from_millis(50),
        metrics: Default::default(),
        invalid: invalid.clone(),
        poll_now: Arc::new(tokio::sync::Notify::new()),
        min_serving_clusters: 1,
        rows: None,
        sink: Arc::new(sink),
        refusal_object: Some(ObjectRef::new("Pod", "weir", "weir-controller-0")),
        heartbeat: weir::telemetry::Heartbeat::detached(),
    };
    let (tx, _rx) = tokio::sync::watch::channel(None);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(weight_loop.run(tx, stop_rx));

    let events = server.store().type_of(&json!({"apiVersion": "events.k8s.io/v1", "kind": "Event"})).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let event = loop {
        let (items, _) = server.store().list(&events, Some("weir"), &Selector::default());
        if let Some(e) = items.iter().find(|e| e["reason"] == weir::reconciler::weight::REFUSED_REASON) {
            break e.clone();
        }
        assert!(Instant::now() < deadline, "no Event: {items:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["regarding"]["kind"], "Pod");
    assert_eq!(event["regarding"]["name"], "weir-controller-0");
    let note = event["note"].as_str().unwrap();
    assert!(
        note.contains("DesiredWeight 0 of cluster eu refused") && note.contains("--min-serving-clusters 1"),
        "{note}"
    );
    assert_eq!(invalid.get(InputKind::MinServingClusters), 1, "counted once");
    // Reported once per value: later polls add no second Event.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (items, _) = server.store().list(&events, Some("weir"), &Selector::default());
    assert_eq!(items.len(), 1, "{items:?}");
    assert!(items[0]["series"].is_null(), "no repeat: {items:?}");
    assert_eq!(store.get("eu").await.unwrap().unwrap().current, weir::backends::StoredWeight::Valid(100));
    stop_tx.send(true).unwrap();
    task.await.unwrap();
}
