//! Leader election against the in-process test API server: one leader at a time, a crashed leader
//! is replaced once its lease expires, a clean shutdown hands over at once.

use std::time::{Duration, Instant};

use integration_tests::apiserver::{ApiServer, Options};
// RBAC enforced: the electors run as the chart's controller ServiceAccount, in its Lease namespace.
use integration_tests::chart::{controller_client, RELEASE_NAMESPACE};
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
        namespace: RELEASE_NAMESPACE.into(),
        name: "weir-controller".into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(200),
    };
    let elector = LeaderElector {
        api: Api::namespaced(controller_client(server), RELEASE_NAMESPACE),
        config,
        metrics: LeaderMetrics::default(),
        fence: Fence::closed(),
        heartbeat: weir::telemetry::Heartbeat::detached(),
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
    let api: Api<Lease> = Api::namespaced(server.client(), RELEASE_NAMESPACE);
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
    let lease: Api<Lease> = Api::namespaced(server.client(), RELEASE_NAMESPACE);
    let spec = lease.get("weir-controller").await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("c"));
    assert_eq!(spec.lease_transitions, Some(1), "a→b is a transition; b's release then c's acquire is not another");
    c.stop.send(true).unwrap();
    drop(a.stop);
}

/// An embedded zone whose every batch takes `delay` and is recorded (start, end, applied).
struct SlowZone {
    inner: weir::dns::embedded::EmbeddedDns,
    delay: Duration,
    batches: std::sync::Mutex<Vec<(Instant, Instant, usize)>>,
}

#[async_trait::async_trait]
impl weir::dns::DnsProvider for SlowZone {
    fn name(&self) -> &'static str {
        "slow"
    }
    async fn current(
        &self,
        hosts: &std::collections::BTreeSet<String>,
        owner: &weir::dns::record::Ownership,
    ) -> Result<Vec<weir::dns::record::RecordSet>, weir::dns::DnsError> {
        self.inner.current(hosts, owner).await
    }
    async fn apply(&self, batches: Vec<Vec<weir::dns::plan::Change>>) -> weir::dns::ApplyReport {
        let start = Instant::now();
        tokio::time::sleep(self.delay).await;
        let report = self.inner.apply(batches).await;
        self.batches.lock().unwrap().push((start, Instant::now(), report.applied.len()));
        report
    }
}

/// SIGTERM (the shutdown channel) while the leader's DNS pass is in flight: the pass finishes its
/// batch, and only then is the Lease released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_the_in_flight_pass_before_releasing_the_lease() {
    use std::sync::Arc;
    use weir::reconciler::dns::DnsLoop;
    use weir::reconciler::weight::WeightSignal;

    let server = ApiServer::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("w.db");
    let zone = weir::dns::embedded::EmbeddedZone::open(&db).await.unwrap();
    let fence = Fence::closed();
    let provider = Arc::new(SlowZone {
        inner: weir::dns::embedded::EmbeddedDns::new(zone).with_fence(fence.clone()),
        delay: Duration::from_millis(800),
        batches: Default::default(),
    });
    let config = LeaderConfig {
        namespace: RELEASE_NAMESPACE.into(),
        name: "weir-controller".into(),
        identity: "a".into(),
        lease_duration: Duration::from_secs(4),
        renew_deadline: Duration::from_secs(3),
        retry_period: Duration::from_millis(200),
    };
    let elector = LeaderElector {
        api: Api::namespaced(controller_client(&server), RELEASE_NAMESPACE),
        config,
        metrics: LeaderMetrics::default(),
        fence: fence.clone(),
        heartbeat: weir::telemetry::Heartbeat::detached(),
    };
    let (leader_tx, leader) = watch::channel(false);
    let (stop, stop_rx) = watch::channel(false);
    let (guard, writers) = writer_guards();
    let elector_task = tokio::spawn(elector.run(leader_tx, stop_rx.clone(), writers));

    let manifest =
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web, namespace: shop, annotations: \
        {dns.adevinta.com/traffic-weight: \"100\"}}\n\
        spec: {rules: [{host: www.example.com, http: {paths: [{path: /, pathType: Prefix, backend: {service: \
        {name: web, port: {number: 80}}}}]}}]}\nstatus: {loadBalancer: {ingress: [{ip: 192.0.2.1}]}}\n---\n\
        apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: shop, labels: \
        {kubernetes.io/service-name: web}}\naddressType: IPv4\nendpoints: [{addresses: [10.0.0.1]}]\n";
    let objects = weir::providers::file::parse_manifests(manifest).unwrap();
    let (_snap_tx, snapshots) = watch::channel(Arc::new(weir::providers::file::snapshot_of(&objects, 1)));
    let signal = WeightSignal { weight: 50, from_desired: false, current: Some(50) };
    let (_weight_tx, weights) = watch::channel(Some(signal));
    let store = Arc::new(weir::backends::sqlite::SqliteStore::open(&db).await.unwrap());
    let dns_loop = DnsLoop {
        config: weir::reconciler::PipelineConfig {
            translate: Default::default(),
            owner: weir::dns::record::Ownership::new("eu"),
            records: Default::default(),
            allow_all_zero: false,
        },
        dns: weir::dns::zoned::ZonedDns::single(provider.clone()),
        store,
        metrics: Default::default(),
        invalid: Default::default(),
        sink: Arc::new(weir::reconciler::NoRefusalSink),
        resync: Duration::from_secs(60),
        poll_weight_now: Arc::new(tokio::sync::Notify::new()),
        readiness: Default::default(),
        leader: leader.clone(),
        fence: fence.clone(),
        heartbeat: weir::telemetry::Heartbeat::detached(),
        live_weights: Arc::new(weir::xds::live::NoLiveWeights),
    };
    let dns_task = tokio::spawn(async move {
        dns_loop.run(snapshots, weights, stop_rx).await;
        drop(guard);
    });

    // The first pass starts once a leads; stop in the middle of its batch.
    until("a leads", Duration::from_secs(5), || *leader.borrow()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped = Instant::now();
    stop.send(true).unwrap();
    // Watch the Lease until it is released.
    let released = loop {
        if holder(&server).await.is_none() {
            break Instant::now();
        }
        assert!(stopped.elapsed() < Duration::from_secs(6), "the lease was never released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    dns_task.await.unwrap();
    elector_task.await.unwrap();
    let batches = provider.batches.lock().unwrap().clone();
    assert_eq!(batches.len(), 1, "one pass, one batch: {batches:?}");
    let (start, end, applied) = batches[0];
    assert!(start < stopped, "the batch was in flight at shutdown");
    assert_eq!(applied, 2, "the in-flight batch was completed, not cut off by the fence");
    assert!(end <= released, "the Lease was released {:?} before the batch ended", end - released);
    assert!(fence.check().is_err(), "no writes after the release");
}
