//! Fencing, end to end: two `weir controller` replicas with leader election write the same SQLite
//! zone and weight table while DesiredWeight changes every 150 ms. The test API server then hangs
//! every request of the leader (a partition between it and the apiserver): the leader must stop
//! writing by its own clock before the standby takes over, and never write again while the other
//! leads. Every write is recorded with its replica and time from the replicas' logs.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::apiserver::{ApiServer, Identity, Options};
use integration_tests::chart::install_controller_identity;
use integration_tests::writelog::{check_single_writer, parse};
use integration_tests::{free_port, metric, wait_for, weir_bin, Proc};
use serde_json::json;

const T: Duration = Duration::from_secs(30);

struct Replica {
    proc: Proc,
    metrics: String,
}

impl Replica {
    fn leads(&self) -> Option<bool> {
        let body = integration_tests::http_get(&format!("{}/metrics", self.metrics))?;
        metric(&body, "weir_leader", &[]).map(|v| v == 1.0)
    }
}

fn replica(name: &str, server: &ApiServer, dir: &Path) -> Replica {
    // The chart's controller identity (its ClusterRole and its Lease Role in the release namespace),
    // under a token named after the replica so that the test API server can hang this one.
    let id = install_controller_identity(server, json!({"controller": {"clusterName": "eu"}}));
    let kubeconfig =
        server.write_kubeconfig_with_token(dir, name, Identity::service_account(&id.namespace, &id.service_account));
    let metrics_port = free_port();
    let mut cmd = Command::new(weir_bin());
    cmd.env("KUBECONFIG", &kubeconfig)
        .env("WEIR_LOG", "info,weir=debug")
        .env("WEIR_LOG_FORMAT", "json")
        .env("POD_NAME", name)
        .args(["controller", "--provider", "kubernetes", "--cluster-name", "eu"])
        .args(["--backend-type", "sqlite", "--initial-weight", "100", "--weight-poll-interval", "100ms"])
        .arg("--db")
        .arg(dir.join("weir.db"))
        .args(["--dns-provider", "embedded", "--record-ttl", "5"])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(["--enable-leader-election", "--leader-election-namespace", &id.namespace])
        .args(["--lease-duration", "3s", "--renew-deadline", "2s", "--retry-period", "250ms"]);
    Replica { proc: Proc::spawn(name, &mut cmd, dir), metrics: format!("http://127.0.0.1:{metrics_port}") }
}

fn seed(server: &ApiServer) {
    let objects = [
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc", "namespace": "default"},
               "spec": {"ports": [{"port": 80}]}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "svc-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "svc"}},
               "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true}}]}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"name": "web", "namespace": "default"},
               "spec": {"rules": [{"host": "a.example.com", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                   "backend": {"service": {"name": "svc", "port": {"number": 80}}}}]}}]},
               "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}}),
    ];
    for o in objects {
        server.store().create_object(o).unwrap();
    }
}

/// Changes DesiredWeight every 150 ms until `stop`, so that whoever leads writes all the time.
fn edit_weights(db: std::path::PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            use weir::backends::WeightStore;
            let store = weir::backends::sqlite::SqliteStore::open(&db).await.unwrap();
            let mut edits = 0;
            while !stop.load(Ordering::Relaxed) {
                let w = 10 + (edits % 9) as u8 * 10;
                if store.set_desired("eu", w).await.is_ok() {
                    edits += 1;
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            edits
        })
    })
}

#[test]
fn a_leader_cut_off_from_the_api_stops_writing_before_the_standby_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start_background(Options::default());
    seed(&server);
    let mut a = replica("a", &server, dir.path());
    wait_for("a leads", T, || a.leads().filter(|l| *l));
    let mut b = replica("b", &server, dir.path());
    wait_for("b is up as a standby", T, || b.leads().filter(|l| !*l));

    let stop = Arc::new(AtomicBool::new(false));
    let editor = edit_weights(dir.path().join("weir.db"), stop.clone());
    std::thread::sleep(Duration::from_secs(2));

    // Cut a off: every request it makes hangs (its Lease renewals included).
    server.faults().hang("a");
    let hung_at = Instant::now();
    wait_for("b takes over", Duration::from_secs(15), || b.leads().filter(|l| *l));
    let takeover = hung_at.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    // a's calls go through again, late: it must find b holding the Lease and stay a follower.
    server.faults().release("a");
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let edits = editor.join().unwrap();
    a.proc.terminate(Duration::from_secs(20));
    b.proc.terminate(Duration::from_secs(20));

    let logs = [parse("a", &a.proc.log()), parse("b", &b.proc.log())];
    let hung_wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
        - hung_at.elapsed().as_secs_f64();
    let a_last = logs[0].writes.iter().map(|w| w.end).fold(f64::MIN, f64::max);
    let b_first = logs[1].writes.iter().map(|w| w.start).fold(f64::MAX, f64::min);
    eprintln!(
        "edits {edits}; writes: a {} b {}; takeover {takeover:?} after the hang; a's last write ended {:.3} s \
         after the hang, b's first began {:.3} s after it",
        logs[0].writes.len(),
        logs[1].writes.len(),
        a_last - hung_wall,
        b_first - hung_wall
    );
    assert!(logs[0].writes.iter().filter(|w| w.start < hung_wall).count() >= 3, "a wrote before the hang: {logs:?}");
    assert!(logs[1].writes.len() >= 3, "b wrote after taking over: {logs:?}");
    let violations = check_single_writer(&logs);
    assert!(violations.is_empty(), "two writers:\n{}", violations.join("\n"));
    assert!(a_last < b_first, "a's last write must end before b's first");
}
