//! xDS push benchmark: the real `weir xds` binary, and K = 10, 100, 1,000 ADS streams of our own
//! load client (each on its own HTTP/2 connection, subscribed like a proxyless gRPC client: LDS,
//! RDS, CDS and EDS, ACKing every response).
//!
//! Reports, per K: the time from `POST /traffic` until each client has received the new route
//! version (p50, p99, max over every client and round), and weir's resident memory per idle
//! stream ((RSS with K idle streams − RSS before) / K). Then, at the largest K up to 1,000: a
//! reconnect storm (every client drops its stream and K new ones connect at once: time until the
//! last has all four types, and the longest wait for an initial-fetch permit from weir's
//! histogram), and the bytes and resources weir sends per weight change, SotW and delta clients.
//!
//! Run: `cargo bench --bench xds` (optionally `-- 10 100` to choose K).

use std::io::Write as _;

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use xds_api::pb::envoy::config::core::v3::Node;
use xds_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use xds_api::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse};
use xds_api::WellKnownTypes;

const ROUNDS: usize = 5;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn http(addr: SocketAddr, method: &str, path: &str) -> String {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let req = format!("{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

fn request(ty: WellKnownTypes, names: &[&str], ack: Option<&DiscoveryResponse>, node: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: ty.type_url().to_string(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        version_info: ack.map(|r| r.version_info.clone()).unwrap_or_default(),
        response_nonce: ack.map(|r| r.nonce.clone()).unwrap_or_default(),
        node: Some(Node { id: node.to_string(), ..Default::default() }),
        ..Default::default()
    }
}

async fn connect(grpc: SocketAddr) -> tonic::transport::Channel {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{grpc}")).unwrap();
    loop {
        match endpoint.connect().await {
            Ok(c) => return c,
            // A storm can fill the listen backlog: retry as a client would.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// One load client: subscribes, ACKs everything, reports each route response's arrival time.
async fn client(grpc: SocketAddr, id: usize, routes: mpsc::UnboundedSender<(usize, Instant)>) {
    let channel = connect(grpc).await;
    let mut ads = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    let node = format!("bench-{id}");
    let clusters = ["default/shop-planner-blue", "default/shop-planner-green"];
    tx.send(request(WellKnownTypes::Listener, &["shop"], None, &node)).await.unwrap();
    tx.send(request(WellKnownTypes::RouteConfiguration, &["shop"], None, &node)).await.unwrap();
    tx.send(request(WellKnownTypes::Cluster, &clusters, None, &node)).await.unwrap();
    tx.send(request(WellKnownTypes::ClusterLoadAssignment, &clusters, None, &node)).await.unwrap();
    let mut inbound = ads.stream_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let mut seen = std::collections::BTreeSet::new();
    while let Ok(Some(resp)) = inbound.message().await {
        let now = Instant::now();
        let ty = WellKnownTypes::from_type_url(&resp.type_url).unwrap();
        // Reported: the moment it has a response of every type (configured), then every route.
        let was_configured = seen.len() == 4;
        seen.insert(resp.type_url.clone());
        if seen.len() == 4 && (!was_configured || ty == WellKnownTypes::RouteConfiguration) {
            let _ = routes.send((id, now));
        }
        let names: &[&str] = match ty {
            WellKnownTypes::Listener | WellKnownTypes::RouteConfiguration => &["shop"],
            _ => &clusters,
        };
        if tx.send(request(ty, names, Some(&resp), &node)).await.is_err() {
            return;
        }
    }
}

/// A delta client subscribed like [`client`], ACKing everything; reports when it has every type.
async fn delta_client(grpc: SocketAddr, id: usize, ready: mpsc::UnboundedSender<(usize, Instant)>) {
    let mut ads = AggregatedDiscoveryServiceClient::new(connect(grpc).await);
    let (tx, rx) = mpsc::channel(16);
    let node = Some(Node { id: format!("bench-delta-{id}"), ..Default::default() });
    let clusters = ["default/shop-planner-blue", "default/shop-planner-green"];
    for (ty, names) in [
        (WellKnownTypes::Listener, &["shop"][..]),
        (WellKnownTypes::RouteConfiguration, &["shop"][..]),
        (WellKnownTypes::Cluster, &clusters[..]),
        (WellKnownTypes::ClusterLoadAssignment, &clusters[..]),
    ] {
        let req = DeltaDiscoveryRequest {
            type_url: ty.type_url().to_string(),
            resource_names_subscribe: names.iter().map(|s| s.to_string()).collect(),
            node: node.clone(),
            ..Default::default()
        };
        tx.send(req).await.unwrap();
    }
    let mut inbound = ads.delta_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let mut seen = std::collections::BTreeSet::new();
    while let Ok(Some(resp)) = inbound.message().await {
        if seen.insert(resp.type_url.clone()) && seen.len() == 4 {
            let _ = ready.send((id, Instant::now()));
        }
        let ack = DeltaDiscoveryRequest { type_url: resp.type_url, response_nonce: resp.nonce, ..Default::default() };
        if tx.send(ack).await.is_err() {
            return;
        }
    }
}

/// The largest observed bucket bound of `weir_xds_initial_wait_seconds` (an upper bound of the
/// longest wait), and how many waits there were.
fn longest_initial_wait(metrics: &str) -> (String, u64) {
    let mut longest = "0".to_string();
    let mut previous = 0u64;
    let mut count = 0;
    for line in metrics.lines().filter(|l| l.starts_with("weir_xds_initial_wait_seconds_bucket")) {
        let le = line.split("le=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("");
        let n: u64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0);
        if n > previous {
            longest = le.to_string();
        }
        previous = n;
        count = n;
    }
    (longest, count)
}

/// A sum over every label set of one counter in the metrics text.
fn counter_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn manifests(dir: &std::path::Path) {
    let mut out = String::new();
    for (strategy, port) in [("blue", 50061), ("green", 50062)] {
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: shop-planner-{strategy}\n  namespace: default\n  \
             labels: {{weir.dev/traffic-infra: shop}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: shop-planner-{strategy}-1\n  \
             namespace: default\n  labels: {{kubernetes.io/service-name: shop-planner-{strategy}}}\naddressType: IPv4\n\
             ports: [{{port: {port}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"], conditions: {{ready: true}}}}]\n"
        ));
    }
    std::fs::write(dir.join("planners.yaml"), out).unwrap();
}

struct Weir(Child);
impl Drop for Weir {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fresh `weir xds` (file provider, SQLite state) on free ports, ready to serve; dropped, it is killed.
struct Server {
    weir: Weir,
    grpc: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

async fn start_weir() -> Server {
    let dir = tempfile::tempdir().unwrap();
    manifests(dir.path());
    let grpc: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    // `WEIR_BENCH_WRAPPER="heaptrack -o /tmp/weir-xds"` runs weir under a profiler (memory figures
    // are then the wrapper's, not weir's alone).
    let wrapper = std::env::var("WEIR_BENCH_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(env!("CARGO_BIN_EXE_weir"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_weir")),
    };
    let weir = Weir(
        command
            .args(["xds", "--provider", "file", "--name", "shop"])
            .arg("--manifests")
            .arg(dir.path())
            .arg("--state")
            .arg(dir.path().join("state.db"))
            .args(["--grpc-addr", &grpc.to_string(), "--admin-addr", &admin.to_string()])
            .env("WEIR_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("start weir"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http(admin, "GET", "/readyz").await.starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "weir xds did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Server { weir, grpc, admin, _dir: dir }
}

#[tokio::main]
async fn main() {
    let ks: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let ks = if ks.is_empty() { vec![100, 1000, 10_000] } else { ks };

    println!("workload: weir xds (release), 2 services, {ROUNDS} weight changes per K (3 at 10,000); each client = own HTTP/2");
    println!("connection, SotW ADS, LDS+RDS+CDS+EDS subscribed, ACKs every response. Latency = POST /traffic sent");
    println!("→ route response received, per client. Memory = weir RSS growth / K with K idle streams.");
    println!("{:>6} {:>10} {:>10} {:>10} {:>16}", "K", "p50", "p99", "max", "KiB/idle stream");
    for k in ks.clone() {
        // Each K against a fresh weir, so that memory freed by an earlier K does not hide growth.
        let server = start_weir().await;
        let (grpc, admin, pid) = (server.grpc, server.admin, server.weir.0.id());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_before = rss_kib(pid);
        let (routes_tx, mut routes) = mpsc::unbounded_channel();
        let tasks: Vec<_> = (0..k).map(|id| tokio::spawn(client(grpc, id, routes_tx.clone()))).collect();
        // Every client has its first route.
        let mut seen = vec![false; k];
        let mut have = 0;
        while have < k {
            let (id, _) = tokio::time::timeout(Duration::from_secs(60), routes.recv()).await.unwrap().unwrap();
            if !seen[id] {
                seen[id] = true;
                have += 1;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let per_stream = (rss_kib(pid).saturating_sub(rss_before)) as f64 / k as f64;

        let rounds = if k >= 10_000 { 3 } else { ROUNDS };
        let mut latencies = Vec::with_capacity(k * rounds);
        for round in 0..rounds {
            while routes.try_recv().is_ok() {}
            let blue = if round % 2 == 0 { 30 + round } else { 70 + round };
            let t0 = Instant::now();
            let resp = http(admin, "POST", &format!("/traffic?blue={blue}&green={}", 100 - blue)).await;
            assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
            let mut got = vec![false; k];
            let mut n = 0;
            while n < k {
                let (id, at) = tokio::time::timeout(Duration::from_secs(60), routes.recv()).await.unwrap().unwrap();
                if !got[id] {
                    got[id] = true;
                    n += 1;
                    latencies.push(at.saturating_duration_since(t0));
                }
            }
        }
        latencies.sort();
        println!(
            "{:>6} {:>10.1?} {:>10.1?} {:>10.1?} {:>16.1}",
            k,
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            latencies[latencies.len() - 1],
            per_stream
        );
        std::io::stdout().flush().unwrap();
        for t in tasks {
            t.abort();
        }
        drop(server);
    }

    let k = ks.iter().copied().filter(|k| *k <= 1000).max().unwrap_or(1000);
    let server = start_weir().await;
    storm_and_bytes(k, server.grpc, server.admin).await;
}

/// Waits until `k` distinct clients reported on `rx`; returns each one's first report time.
async fn all_report(rx: &mut mpsc::UnboundedReceiver<(usize, Instant)>, k: usize) -> Vec<Instant> {
    let mut first = vec![None; k];
    let mut n = 0;
    while n < k {
        let (id, at) = tokio::time::timeout(Duration::from_secs(120), rx.recv()).await.unwrap().unwrap();
        if first[id].is_none() {
            first[id] = Some(at);
            n += 1;
        }
    }
    first.into_iter().flatten().collect()
}

async fn metrics_text(admin: SocketAddr) -> String {
    http(admin, "GET", "/metrics").await
}

/// After a weight change, waits until `k` more route responses went out, and returns what was
/// sent per client: (bytes, resources, responses).
async fn sent_per_client(admin: SocketAddr, k: usize, blue: u32) -> (f64, f64, f64) {
    let before = metrics_text(admin).await;
    let routes0 = counter_sum(&before, "weir_xds_pushes_total{type=\"route\"}");
    let resp = http(admin, "POST", &format!("/traffic?blue={blue}&green={}", 100 - blue)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = metrics_text(admin).await;
        if counter_sum(&m, "weir_xds_pushes_total{type=\"route\"}") - routes0 >= k as f64 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = metrics_text(admin).await;
    let per = |name: &str| (counter_sum(&after, name) - counter_sum(&before, name)) / k as f64;
    (per("weir_xds_bytes_sent_total"), per("weir_xds_resources_sent_total"), per("weir_xds_pushes_total"))
}

async fn storm_and_bytes(k: usize, grpc: SocketAddr, admin: SocketAddr) {
    // K SotW clients configured, then all of them drop and K new ones connect at once.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let tasks: Vec<_> = (0..k).map(|id| tokio::spawn(client(grpc, id, tx.clone()))).collect();
    all_report(&mut rx, k).await;
    for t in tasks {
        t.abort();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..k).map(|id| tokio::spawn(client(grpc, id, tx.clone()))).collect();
    let mut waits: Vec<Duration> = all_report(&mut rx, k).await.into_iter().map(|at| at - t0).collect();
    waits.sort();
    let (longest, count) = longest_initial_wait(&metrics_text(admin).await);
    println!();
    println!("reconnect storm: {k} SotW clients drop their streams, {k} new ones connect at once");
    println!(
        "  time to configured (all four types): p50 {:.1?}, p99 {:.1?}, last {:.1?}; longest initial-fetch permit wait \
         (histogram bound, whole run, {count} fetches): {longest} s",
        percentile(&waits, 0.5),
        percentile(&waits, 0.99),
        waits[waits.len() - 1]
    );

    println!();
    println!("sent per client per weight change ({k} clients; weir's weir_xds_*_sent_total and pushes):");
    println!("{:>6} {:>12} {:>12} {:>12}", "mode", "bytes", "resources", "responses");
    let (bytes, resources, responses) = sent_per_client(admin, k, 35).await;
    println!("{:>6} {:>12.0} {:>12.2} {:>12.2}", "SotW", bytes, resources, responses);
    for t in tasks {
        t.abort();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let tasks: Vec<_> = (0..k).map(|id| tokio::spawn(delta_client(grpc, id, tx.clone()))).collect();
    all_report(&mut rx, k).await;
    let (bytes, resources, responses) = sent_per_client(admin, k, 65).await;
    println!("{:>6} {:>12.0} {:>12.2} {:>12.2}", "delta", bytes, resources, responses);
    std::io::stdout().flush().unwrap();
    for t in tasks {
        t.abort();
    }
}
