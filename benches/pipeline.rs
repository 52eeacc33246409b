//! translate + plan for 100, 1,000 and 10,000 hosts: time per run and peak memory.
//!
//! `cargo bench --bench pipeline` (add `-- 100 1000` to choose sizes). Each size runs in a child
//! process of this binary, so that its peak resident memory (VmHWM from /proc/self/status, reset
//! through /proc/self/clear_refs after the inputs are built) is its own.
//!
//! Workload per host: one Ingress (one rule, CNAME target), its Service and an EndpointSlice with two
//! ready endpoints; published: this cluster's records at the previous cluster weight (so that every
//! host gets an UPSERT) plus another cluster's record for every host. One run = translate →
//! DesiredRecords::build → plan → batches (Route53 limits).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointSlice};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressLoadBalancerIngress,
    IngressLoadBalancerStatus, IngressRule, IngressServiceBackend, IngressSpec, IngressStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use weir::dns::plan::{plan, BatchLimits};
use weir::dns::record::{DesiredRecords, Ownership, RecordKey, RecordOptions, RecordSet, RecordType};
use weir::model::Snapshot;
use weir::translate::{translate, TranslateConfig, SERVICE_NAME_LABEL};

const CHILD_ENV: &str = "WEIR_BENCH_HOSTS";
const SIZES: [usize; 3] = [100, 1_000, 10_000];

fn meta(name: &str, labels: Option<BTreeMap<String, String>>) -> ObjectMeta {
    ObjectMeta { name: Some(name.into()), namespace: Some("bench".into()), labels, ..Default::default() }
}

fn snapshot(hosts: usize) -> Snapshot {
    let mut s = Snapshot { revision: 1, ..Default::default() };
    for i in 0..hosts {
        let name = format!("app-{i:05}");
        s.ingresses.push(Ingress {
            metadata: meta(&name, None),
            spec: Some(IngressSpec {
                rules: Some(vec![IngressRule {
                    host: Some(format!("{name}.example.com")),
                    http: Some(HTTPIngressRuleValue {
                        paths: vec![HTTPIngressPath {
                            path: Some("/".into()),
                            path_type: "Prefix".into(),
                            backend: IngressBackend {
                                service: Some(IngressServiceBackend { name: name.clone(), port: None }),
                                resource: None,
                            },
                        }],
                    }),
                }]),
                ..Default::default()
            }),
            status: Some(IngressStatus {
                load_balancer: Some(IngressLoadBalancerStatus {
                    ingress: Some(vec![IngressLoadBalancerIngress {
                        hostname: Some(format!("lb-{}.eu-west-1.elb.example.net", i % 7)),
                        ..Default::default()
                    }]),
                }),
            }),
        });
        s.services.push(Service { metadata: meta(&name, None), ..Default::default() });
        let endpoint = |ip: String| Endpoint {
            addresses: vec![ip],
            conditions: Some(EndpointConditions { ready: Some(true), ..Default::default() }),
            ..Default::default()
        };
        s.endpoint_slices.push(EndpointSlice {
            metadata: meta(&format!("{name}-1"), Some(BTreeMap::from([(SERVICE_NAME_LABEL.into(), name.clone())]))),
            address_type: "IPv4".into(),
            endpoints: Some(vec![endpoint(format!("10.0.{}.1", i % 250)), endpoint(format!("10.0.{}.2", i % 250))]),
            ports: None,
        });
    }
    s.normalize();
    s
}

/// What is published before the run: our records at cluster weight 100, another cluster's at 50.
fn published(s: &Snapshot, cfg: &TranslateConfig, owner: &Ownership) -> Vec<RecordSet> {
    let state = translate(s, 100, cfg);
    let mut records = DesiredRecords::build(&state, owner, &RecordOptions::default()).records;
    for intent in &state.dns {
        records.push(RecordSet {
            key: RecordKey { name: intent.host.clone(), rtype: RecordType::Cname, set_identifier: "us".into() },
            weight: 50,
            ttl: 60,
            values: vec!["lb.us-east-1.elb.example.net".into()],
            health_check_id: None,
            alias: None,
        });
    }
    records
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok()).unwrap_or(0)
}

/// CPU time of this thread in nanoseconds (first field of /proc/thread-self/schedstat): unlike wall
/// time, it does not count the time other processes had the CPU.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn child(hosts: usize) {
    let cfg = TranslateConfig::default();
    let owner = Ownership::new("eu");
    let opts = RecordOptions::default();
    let s = snapshot(hosts);
    let current = published(&s, &cfg, &owner);
    let baseline = status_kib("VmRSS:");
    // Reset the peak to the current RSS so that VmHWM measures the runs, not the input building.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();

    let mut times = Vec::new();
    let mut cpu = Vec::new();
    let started = Instant::now();
    let mut changes = 0;
    let mut batches = 0;
    while times.len() < 3 || (started.elapsed() < Duration::from_secs(2) && times.len() < 200) {
        let t = Instant::now();
        let c = cpu_ns();
        let state = translate(&s, 50, &cfg);
        let desired = DesiredRecords::build(&state, &owner, &opts);
        let p = plan(&desired, &current, &owner, false);
        let b = p.batches(BatchLimits::ROUTE53);
        times.push(t.elapsed());
        cpu.push(cpu_ns().saturating_sub(c));
        changes = p.len();
        batches = b.len();
        std::hint::black_box((state, desired, p, b));
    }
    let peak = status_kib("VmHWM:");
    times.sort();
    cpu.sort();
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    let cpu_mean = cpu.iter().sum::<u64>() as f64 / cpu.len() as f64;
    println!(
        "{hosts}\t{}\t{:.3}\t{:.3}\t{}\t{}\t{}\t{}\t{}\t{:.3}\t{:.3}",
        times.len(),
        mean.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        changes,
        batches,
        baseline,
        peak,
        if reset { "run" } else { "process" },
        cpu_mean / 1e6,
        cpu[0] as f64 / 1e6,
    );
}

fn main() {
    if let Some(n) = std::env::var(CHILD_ENV).ok().and_then(|v| v.parse().ok()) {
        child(n);
        return;
    }
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { SIZES.to_vec() } else { sizes };
    let exe = std::env::current_exe().expect("bench binary path");
    println!("weir pipeline benchmark: translate + DesiredRecords::build + plan + batches, per run");
    println!(
        "workload per host: 1 Ingress (1 rule, CNAME target), 1 Service, 1 EndpointSlice (2 ready endpoints); \
         published: own records at C=100 and another cluster's record; run at C=50 (one UPSERT per host)"
    );
    println!(
        "{:>7} {:>5} {:>12} {:>12} {:>12} {:>12} {:>8} {:>8} {:>14} {:>13}",
        "hosts",
        "runs",
        "cpu mean ms",
        "cpu min ms",
        "wall mean ms",
        "wall min ms",
        "changes",
        "batches",
        "inputs RSS MiB",
        "peak RSS MiB"
    );
    for n in sizes {
        let out = std::process::Command::new(&exe).env(CHILD_ENV, n.to_string()).output().expect("run child");
        let text = String::from_utf8_lossy(&out.stdout);
        let f: Vec<&str> = text.trim().split('\t').collect();
        if !out.status.success() || f.len() < 11 {
            eprintln!("size {n} failed: {}", String::from_utf8_lossy(&out.stderr));
            std::process::exit(1);
        }
        let mib = |kib: &str| kib.parse::<f64>().unwrap_or(0.0) / 1024.0;
        println!(
            "{:>7} {:>5} {:>12} {:>12} {:>12} {:>12} {:>8} {:>8} {:>14.1} {:>13.1}{}",
            f[0],
            f[1],
            f[9],
            f[10],
            f[2],
            f[3],
            f[4],
            f[5],
            mib(f[6]),
            mib(f[7]),
            if f[8] == "run" { "" } else { "  (peak of the whole process: clear_refs unavailable)" }
        );
    }
}
