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
