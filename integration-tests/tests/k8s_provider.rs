//! The Kubernetes provider against the in-process test API server: kube-runtime reflectors feeding
//! the same translator as the file provider.

use std::sync::Arc;
use std::time::Duration;

use integration_tests::apiserver::{ApiServer, Options, WriteOp};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::watch;
use weir::model::Snapshot;
use weir::providers::kubernetes::{run, KubernetesConfig};
use weir::providers::SnapshotRx;
use weir::translate::{translate, TranslateConfig};
use weir_core::testkit::{mk_ingress, mk_service, mk_slice, EndpointState};

/// An Ingress `default/name` routing each (host, Service) to port 80, behind `lb.example.net`.
fn ingress(name: &str, hosts: &[(&str, &str)]) -> Value {
    let ingress = hosts.iter().fold(mk_ingress("default", name), |i, (host, svc)| i.rule(host, svc, 80));
    ingress.load_balancer("lb.example.net").json()
}

fn service(name: &str) -> Value {
    mk_service("default", name).port(80).json()
}

fn slice(service: &str, state: EndpointState) -> Value {
    mk_slice("default", service).endpoint("10.0.0.1", state).json()
}

/// Seeds an object directly in the store (which keeps `status`, as a controller's /status write would).
fn seed(server: &ApiServer, obj: Value) {
    server.store().create_object(obj).unwrap();
}

fn start(server: &ApiServer) -> SnapshotRx {
    let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
    // RBAC enforced: the provider runs as the chart's controller ServiceAccount.
    let client = integration_tests::chart::controller_client(server);
    tokio::spawn(async move {
        run(client, KubernetesConfig { debounce: Duration::from_millis(20), ..Default::default() }, tx).await.unwrap();
    });
    rx
}

async fn until(rx: &mut SnapshotRx, what: &str, f: impl Fn(&Snapshot) -> bool) -> Arc<Snapshot> {
    let wait = async {
        loop {
            let s = rx.borrow_and_update().clone();
            if s.revision > 0 && f(&s) {
                return s;
            }
            rx.changed().await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn weight(s: &Snapshot, host: &str) -> Option<u8> {
    translate(s, 100, &TranslateConfig::default()).intent(host).and_then(|i| i.weight)
}

#[tokio::test]
async fn snapshots_follow_ingresses_services_and_endpoint_slices() {
    let server = ApiServer::start(Options::default()).await;
    seed(&server, ingress("web", &[("a.example.com", "svc-a"), ("b.example.com", "svc-b")]));
    seed(&server, service("svc-a"));
    seed(&server, service("svc-b"));
    seed(&server, slice("svc-a", EndpointState::Ready));
    seed(&server, slice("svc-b", EndpointState::Ready));
    seed(
        &server,
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "TrafficInfra",
               "metadata": {"name": "ti", "namespace": "default"}, "spec": {}}),
    );
    let mut rx = start(&server);
    let first = until(&mut rx, "the first snapshot", |s| s.ingresses.len() == 1 && s.endpoint_slices.len() == 2).await;
    assert_eq!(first.services.len(), 2);
    assert_eq!(weight(&first, "a.example.com"), Some(100));
    assert_eq!(weight(&first, "b.example.com"), Some(100));
    until(&mut rx, "the TrafficInfra", |s| s.traffic_infras.len() == 1).await;

    // svc-b's only endpoint starts terminating: only b.example.com drains.
    let rt = server.store().type_of(&slice("x", EndpointState::Ready)).unwrap();
    server
        .store()
        .write(&rt, "default", "svc-b-1", WriteOp::Replace(slice("svc-b", EndpointState::Draining)), false)
        .unwrap();
    let drained = until(&mut rx, "b drained", |s| weight(s, "b.example.com") == Some(0)).await;
    assert_eq!(weight(&drained, "a.example.com"), Some(100));
    assert!(drained.revision > first.revision);

    // Annotating changes the weight.
    let ing = server.store().type_of(&ingress("x", &[])).unwrap();
    let annotate = json!({"metadata": {"annotations": {"dns.adevinta.com/traffic-weight": "40"}}});
    server.store().write(&ing, "default", "web", WriteOp::Merge(annotate), false).unwrap();
    until(&mut rx, "annotation weight", |s| weight(s, "a.example.com") == Some(40)).await;

    // Deleting while another controller's finalizer holds the Ingress: still present, no traffic.
    let hold = json!({"metadata": {"finalizers": ["other.example.com/hold"]}});
    server.store().write(&ing, "default", "web", WriteOp::Merge(hold), false).unwrap();
    server.store().delete(&ing, "default", "web").unwrap();
    let deleting = until(&mut rx, "deletion seen", |s| {
        s.ingresses.first().is_some_and(|i| i.metadata.deletion_timestamp.is_some())
    })
    .await;
    assert_eq!(weight(&deleting, "a.example.com"), Some(0));

    // The finalizer clears: the Ingress is gone, and so are its intents.
    let release = json!({"metadata": {"finalizers": null}});
    server.store().write(&ing, "default", "web", WriteOp::Merge(release), false).unwrap();
    let gone = until(&mut rx, "ingress gone", |s| s.ingresses.is_empty()).await;
    assert!(translate(&gone, 100, &TranslateConfig::default()).dns.is_empty());
}

#[tokio::test]
async fn snapshots_are_sorted_and_revisions_increase() {
    let server = ApiServer::start(Options::default()).await;
    for name in ["zeta", "alpha", "mid"] {
        seed(&server, ingress(name, &[(&format!("{name}.example.com"), "svc")]));
    }
    let mut rx = start(&server);
    let s = until(&mut rx, "three ingresses", |s| s.ingresses.len() == 3).await;
    let names: Vec<_> = s.ingresses.iter().map(|i| i.metadata.name.clone().unwrap()).collect();
    assert_eq!(names, ["alpha", "mid", "zeta"]);
    let before = s.revision;
    seed(&server, ingress("beta", &[("beta.example.com", "svc")]));
    let after = until(&mut rx, "four ingresses", |s| s.ingresses.len() == 4).await;
    assert!(after.revision > before);
}

#[tokio::test]
async fn missing_crds_do_not_block_and_are_picked_up_once_installed() {
    let server = ApiServer::start(Options { weir_crds: false, ..Default::default() }).await;
    seed(&server, ingress("web", &[("a.example.com", "svc")]));
    let mut rx = start(&server);
    let s = until(&mut rx, "ingress without CRDs", |s| s.ingresses.len() == 1).await;
    assert!(s.traffic_infras.is_empty());

    // Install the CRDs through the store, then create a NamespaceConfig: the retrying watch finds it.
    let yaml = weir::crd::crds_yaml().unwrap();
    for doc in serde_yaml::Deserializer::from_str(&yaml) {
        let crd = Value::deserialize(doc).unwrap();
        server.store().create_object(crd).unwrap();
    }
    seed(
        &server,
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "NamespaceConfig",
               "metadata": {"name": "nc", "namespace": "default"}, "spec": {}}),
    );
    until(&mut rx, "NamespaceConfig after install", |s| s.namespace_configs.len() == 1).await;
}
