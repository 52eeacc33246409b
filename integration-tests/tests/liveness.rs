//! `/healthz` follows every loop's heartbeat: a weight loop whose store stops answering (a call that
//! never returns) makes `/healthz` fail within the loop's bound, naming that loop and no other.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir::backends::static_store::StaticStore;
use weir::backends::{AckOutcome, StoreError, StoredWeight, WeightRow, WeightStore};
use weir::telemetry::{Liveness, Readiness};

/// The static store, except that `get` never returns once `stall` is set.
struct Stalling {
    inner: StaticStore,
    stall: AtomicBool,
}

#[async_trait::async_trait]
impl WeightStore for Stalling {
    fn name(&self) -> &'static str {
        "stalling"
    }
    async fn list(&self) -> Result<Vec<WeightRow>, StoreError> {
        self.inner.list().await
    }
    async fn get(&self, cluster: &str) -> Result<Option<WeightRow>, StoreError> {
        if self.stall.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.get(cluster).await
    }
    async fn ensure(&self, cluster: &str, initial: u8) -> Result<WeightRow, StoreError> {
        self.inner.ensure(cluster, initial).await
    }
    async fn ack(&self, cluster: &str, applied: u8) -> Result<AckOutcome, StoreError> {
        self.inner.ack(cluster, applied).await
    }
    async fn set_desired(&self, cluster: &str, desired: u8) -> Result<Option<StoredWeight>, StoreError> {
        self.inner.set_desired(cluster, desired).await
    }
}

/// `GET /healthz`: the status code and the body.
async fn healthz(port: u16) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_loop_makes_healthz_fail_naming_it() {
    let liveness = Liveness::default();
    let store = Arc::new(Stalling { inner: StaticStore::new("eu", 70), stall: AtomicBool::new(false) });
    let weight_loop = weir::reconciler::weight::WeightLoop {
        store: store.clone(),
        cluster: "eu".into(),
        initial_weight: 70,
        interval: Duration::from_millis(50),
        metrics: Default::default(),
        invalid: Default::default(),
        poll_now: Arc::new(tokio::sync::Notify::new()),
        min_serving_clusters: 0,
        rows: None,
        sink: Arc::new(weir::reconciler::NoRefusalSink),
        refusal_object: None,
        heartbeat: liveness.heartbeat("weight loop", Duration::from_millis(500)),
    };
    // Another loop that keeps beating: it must not be named.
    let other = liveness.heartbeat("DNS reconcile", Duration::from_millis(500));
    let (tx, _rx) = tokio::sync::watch::channel(None);
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(weight_loop.run(tx, stop_rx));
    tokio::spawn(async move {
        loop {
            other.beat();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    let port = integration_tests::free_port();
    let router = weir::telemetry::router(Arc::new(Default::default()), Readiness::default(), liveness);
    let server =
        weir::http_serve::HttpServer { name: "metrics", limits: Default::default(), metrics: Default::default() };
    let _server =
        weir::telemetry::serve(server, ([127, 0, 0, 1], port).into(), router, std::future::pending()).await.unwrap();

    // Polling (and idle between polls) for longer than the bound: healthy.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(healthz(port).await, (200, "ok".to_string()));

    store.stall.store(true, Ordering::SeqCst);
    let stalled = Instant::now();
    let body = loop {
        let (status, body) = healthz(port).await;
        if status == 503 {
            break body;
        }
        assert!(stalled.elapsed() < Duration::from_secs(10), "still {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(body.contains("weight loop (no progress for"), "{body}");
    assert!(!body.contains("DNS reconcile"), "only the stalled loop is named: {body}");
    assert!(stalled.elapsed() >= Duration::from_millis(500), "not before its bound: {:?}", stalled.elapsed());
}
