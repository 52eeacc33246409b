//! Leader election against the in-process test API server: one leader at a time, a crashed leader
//! is replaced once its lease expires, a clean shutdown hands over at once.

use std::time::{Duration, Instant};

use integration_tests::apiserver::{ApiServer, Options};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tokio::sync::watch;
use weir::reconciler::leader::{writer_guards, Fence, LeaderConfig, LeaderElector, LeaderMetrics};

struct Replica {
    leader: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn replica(server: &ApiServer, identity: &str) -> Replica {
    let config = LeaderConfig {
        namespace: "default".into(),
        name: "weir-controller".into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(200),
    };
    let elector = LeaderElector {
        api: Api::namespaced(server.client(), "default"),
        config,
        metrics: LeaderMetrics::default(),
        fence: Fence::closed(),
    };
    let (tx, leader) = watch::channel(false);
    let (stop, stop_rx) = watch::channel(false);
    // No writers here: the guard is dropped at once.
    let (_, writers) = writer_guards();
    let task = tokio::spawn(elector.run(tx, stop_rx, writers));
    Replica { leader, stop, task }
}

async fn until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

async fn holder(server: &ApiServer) -> Option<String> {
    let api: Api<Lease> = Api::namespaced(server.client(), "default");
    api.get_opt("weir-controller").await.unwrap().and_then(|l| l.spec).and_then(|s| s.holder_identity)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_then_takeover_after_crash_and_after_release() {
    let server = ApiServer::start(Options::default()).await;
    let a = replica(&server, "a");
    until("a leads", Duration::from_secs(5), || *a.leader.borrow()).await;
    let b = replica(&server, "b");
    // b keeps following while a renews, for longer than a lease duration.
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        assert!(!*b.leader.borrow(), "b must not lead while a renews");
        assert!(*a.leader.borrow(), "a must keep leading");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(holder(&server).await.as_deref(), Some("a"));

    // a crashes (no release): b takes over after the lease expires, not before.
    a.task.abort();
    let took = until("b takes over", Duration::from_secs(6), || *b.leader.borrow()).await;
    assert!(took >= Duration::from_millis(1500), "b took over after {took:?}, before the lease could expire");
    assert_eq!(holder(&server).await.as_deref(), Some("b"));

    // c follows; b shuts down cleanly and releases: c leads well within a lease duration.
    let c = replica(&server, "c");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!*c.leader.borrow());
    b.stop.send(true).unwrap();
    b.task.await.unwrap();
    assert!(!*b.leader.borrow(), "a stopped replica is not the leader");
    let took = until("c takes over after release", Duration::from_secs(5), || *c.leader.borrow()).await;
    assert!(took < Duration::from_secs(1), "release should hand over within a retry period, took {took:?}");
    let lease: Api<Lease> = Api::namespaced(server.client(), "default");
    let spec = lease.get("weir-controller").await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("c"));
    assert_eq!(spec.lease_transitions, Some(1), "a→b is a transition; b's release then c's acquire is not another");
    c.stop.send(true).unwrap();
    drop(a.stop);
}
