//! The Kubernetes provider at scale, against the in-process test API server: N Ingresses, each with
//! a Service and an EndpointSlice. Measures the time from start to the first snapshot (three lists of
//! N objects plus the CRD lists, then the reflectors' initial sync) and the latency from one
//! EndpointSlice change to the snapshot that shows it (which includes the provider's 200 ms debounce).
//!
//! Run: `cargo bench -p integration-tests --bench k8s_provider` (sizes: WEIR_BENCH_SIZES=100,1000,5000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::apiserver::{ApiServer, Options, WriteOp};
use serde_json::json;
use tokio::sync::watch;
use weir::model::Snapshot;
use weir::providers::kubernetes::{run, KubernetesConfig};

fn seed(server: &ApiServer, n: usize) {
    let store = server.store();
    for i in 0..n {
        store
            .create_object(json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": format!("app-{i}"), "namespace": format!("ns-{}", i % 50),
                             "annotations": {"dns.adevinta.com/traffic-weight": "50"}},
                "spec": {"rules": [{"host": format!("app-{i}.example.com"), "http": {"paths": [{"path": "/", "pathType": "Prefix",
                         "backend": {"service": {"name": format!("app-{i}"), "port": {"number": 80}}}}]}}]},
                "status": {"loadBalancer": {"ingress": [{"hostname": "lb.example.net"}]}}}))
            .unwrap();
        store
            .create_object(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("app-{i}"), "namespace": format!("ns-{}", i % 50)},
                "spec": {"ports": [{"port": 80}]}}))
            .unwrap();
        store.create_object(slice(i, true)).unwrap();
    }
}

fn slice(i: usize, ready: bool) -> serde_json::Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("app-{i}-1"), "namespace": format!("ns-{}", i % 50),
                     "labels": {"kubernetes.io/service-name": format!("app-{i}")}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": ready}}, {"addresses": ["10.0.0.2"], "conditions": {"ready": ready}}]})
}

async fn bench(n: usize) {
    let server = ApiServer::start(Options::default()).await;
    seed(&server, n);
    let (tx, mut rx) = watch::channel(Arc::new(Snapshot::default()));
    let client = server.client();
    let started = Instant::now();
    tokio::spawn(async move { run(client, KubernetesConfig::default(), tx).await });
    rx.wait_for(|s| s.revision > 0 && s.ingresses.len() == n && s.endpoint_slices.len() == n).await.unwrap();
    let first = started.elapsed();

    let rt = server.store().type_of(&slice(0, true)).unwrap();
    let mut latencies = Vec::new();
    for round in 0..10 {
        let i = (round * 7919) % n;
        let ready = round % 2 == 1;
        let ns = format!("ns-{}", i % 50);
        let t = Instant::now();
        server.store().write(&rt, &ns, &format!("app-{i}-1"), WriteOp::Replace(slice(i, ready)), false).unwrap();
        let name = format!("app-{i}-1");
        tokio::time::timeout(
            Duration::from_secs(60),
            rx.wait_for(|s| {
                s.endpoint_slices.iter().any(|e| {
                    e.metadata.name.as_deref() == Some(name.as_str())
                        && e.endpoints.iter().flatten().next().and_then(|p| p.conditions.as_ref()).and_then(|c| c.ready)
                            == Some(ready)
                })
            }),
        )
        .await
        .expect("change seen")
        .unwrap();
        latencies.push(t.elapsed());
    }
    latencies.sort();
    println!(
        "k8s provider, {n} Ingresses + {n} Services + {n} EndpointSlices: first snapshot {:.0} ms; \
         change → snapshot median {:.0} ms, max {:.0} ms (10 changes, 200 ms debounce included)",
        first.as_secs_f64() * 1e3,
        latencies[latencies.len() / 2].as_secs_f64() * 1e3,
        latencies[latencies.len() - 1].as_secs_f64() * 1e3,
    );
}

fn main() {
    let sizes = std::env::var("WEIR_BENCH_SIZES").unwrap_or_else(|_| "100,1000,5000".into());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for n in sizes.split(',').filter_map(|s| s.trim().parse().ok()) {
        rt.block_on(bench(n));
    }
}
