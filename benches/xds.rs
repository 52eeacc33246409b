//! xDS push benchmark: the real `weir xds` binary, and K = 10, 100, 1,000 ADS streams of our own
//! load client (each on its own HTTP/2 connection, subscribed like a proxyless gRPC client: LDS,
//! RDS, CDS and EDS, ACKing every response).
//!
//! Reports, per K: the time from `POST /traffic` until each client has received the new route
//! version (p50, p99, max over every client and round), and weir's resident memory per idle
//! stream ((RSS with K idle streams − RSS before) / K).
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
use xds_api::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
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

/// One load client: subscribes, ACKs everything, reports each route response's arrival time.
async fn client(grpc: SocketAddr, id: usize, routes: mpsc::UnboundedSender<(usize, Instant)>) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    let mut ads = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    let node = format!("bench-{id}");
    let clusters = ["default/shop-planner-blue", "default/shop-planner-green"];
    tx.send(request(WellKnownTypes::Listener, &["shop"], None, &node)).await.unwrap();
    tx.send(request(WellKnownTypes::RouteConfiguration, &["shop"], None, &node)).await.unwrap();
    tx.send(request(WellKnownTypes::Cluster, &clusters, None, &node)).await.unwrap();
    tx.send(request(WellKnownTypes::ClusterLoadAssignment, &clusters, None, &node)).await.unwrap();
    let mut inbound = ads.stream_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
    while let Ok(Some(resp)) = inbound.message().await {
        let now = Instant::now();
        let ty = WellKnownTypes::from_type_url(&resp.type_url).unwrap();
        if ty == WellKnownTypes::RouteConfiguration {
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

#[tokio::main]
async fn main() {
    let ks: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let ks = if ks.is_empty() { vec![10, 100, 1000] } else { ks };
    let dir = tempfile::tempdir().unwrap();
    manifests(dir.path());
    let grpc: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let weir = Weir(
        Command::new(env!("CARGO_BIN_EXE_weir"))
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
    let pid = weir.0.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http(admin, "GET", "/readyz").await.starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "weir xds did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    println!("workload: weir xds (release), 2 services, {ROUNDS} weight changes per K; each client = own HTTP/2");
    println!("connection, SotW ADS, LDS+RDS+CDS+EDS subscribed, ACKs every response. Latency = POST /traffic sent");
    println!("→ route response received, per client. Memory = weir RSS growth / K with K idle streams.");
    println!("{:>6} {:>10} {:>10} {:>10} {:>16}", "K", "p50", "p99", "max", "KiB/idle stream");
    for k in ks {
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

        let mut latencies = Vec::with_capacity(k * ROUNDS);
        for round in 0..ROUNDS {
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
    }
}
