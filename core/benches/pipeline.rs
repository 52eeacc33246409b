//! The DNS pipeline's cost: a full translate + plan, and one object change through the incremental
//! index ([`HostIndex`]) to a plan of the hosts it changed.
//!
//! `cargo bench -p weir-core --bench pipeline` (add sizes, `-- 1000 10000`, and/or modes, `full`,
//! `slice`, `annotation`). Each size and mode runs in a child process of this binary, so that its peak
//! resident memory (VmHWM from /proc/self/status, reset through /proc/self/clear_refs after the inputs
//! are built) is its own. CPU time is this thread's (schedstat), so other processes' load inflates
//! it less than wall time.
//!
//! Modes:
//! - `full`: translate → DesiredRecords::build → plan → batches over every host (what a resync costs).
//! - `slice`: one EndpointSlice loses (then regains) its ready endpoints: `HostIndex::apply` → `flush`
//!   → `take_changed` → DesiredRecords::build of the changed hosts → plan against their published
//!   records → batches (what one endpoint change costs until the plan is ready).
//! - `annotation`: the same for one Ingress's `traffic-weight` annotation (100 ↔ 50).
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
use std::collections::HashMap;
use std::sync::Arc;

use weir_core::dns::plan::{plan, BatchLimits, Change};
use weir_core::dns::record::{DesiredRecords, Ownership, RecordKey, RecordOptions, RecordSet, RecordType};
use weir_core::index::HostIndex;
use weir_core::model::{Kind, Object, Snapshot};
use weir_core::translate::{translate, TranslateConfig, SERVICE_NAME_LABEL};

const CHILD_ENV: &str = "WEIR_BENCH_HOSTS";
const MODE_ENV: &str = "WEIR_BENCH_MODE";
const SIZES: [usize; 3] = [100, 1_000, 10_000];
const MODES: [&str; 3] = ["full", "slice", "annotation"];

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
        records.push(other_cluster(&intent.host));
    }
    records
}

/// Another cluster's record for `host`, at weight 50.
fn other_cluster(host: &str) -> RecordSet {
    RecordSet {
        key: RecordKey { name: host.to_string(), rtype: RecordType::Cname, set_identifier: "us".into() },
        weight: 50,
        ttl: 60,
        values: vec!["lb.us-east-1.elb.example.net".into()],
        health_check_id: None,
        alias: None,
    }
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

/// What one mode measured: per run CPU and wall time, the changes of the last run.
struct Runs {
    cpu_ns: Vec<u64>,
    wall: Vec<Duration>,
    changes: usize,
    batches: usize,
}

impl Runs {
    fn new() -> Self {
        Self { cpu_ns: Vec::new(), wall: Vec::new(), changes: 0, batches: 0 }
    }

    /// At least `min` runs, then more until 2 s have passed (at most `max`).
    fn more(&self, started: Instant, min: usize, max: usize) -> bool {
        self.wall.len() < min || (started.elapsed() < Duration::from_secs(2) && self.wall.len() < max)
    }

    fn timed<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let (t, c) = (Instant::now(), cpu_ns());
        let out = f();
        self.wall.push(t.elapsed());
        self.cpu_ns.push(cpu_ns().saturating_sub(c));
        out
    }
}

fn full(s: &Snapshot, cfg: &TranslateConfig, owner: &Ownership, opts: &RecordOptions, current: &[RecordSet]) -> Runs {
    let mut runs = Runs::new();
    let started = Instant::now();
    while runs.more(started, 3, 200) {
        let (p, b) = runs.timed(|| {
            let state = translate(s, 50, cfg);
            let desired = DesiredRecords::build(&state, owner, opts);
            let p = plan(&desired, current, owner, false);
            let b = p.batches(BatchLimits::ROUTE53);
            (p, b)
        });
        runs.changes = p.len();
        runs.batches = b.len();
        std::hint::black_box((p, b));
    }
    runs
}

/// One object changed per run, alternating between two versions of it, through the index to a plan
/// of the changed hosts only; the plan is then applied to `published` (outside the timing), so that
/// every run has a change to make.
fn incremental(s: &Snapshot, cfg: &TranslateConfig, owner: &Ownership, opts: &RecordOptions, mode: &str) -> Runs {
    let mut index = HostIndex::new(cfg.clone(), 50);
    index.sync(s);
    index.flush();
    index.take_changed();
    // Published = converged at C = 50, by record name (the planner is given only the changed hosts' names).
    let mut published: HashMap<String, Vec<RecordSet>> = HashMap::new();
    for r in DesiredRecords::build(&index.state(), owner, opts).records {
        published.entry(r.key.name.clone()).or_default().push(r);
    }
    // Another cluster serves every host, so that the all-zero guard lets a host go to 0 here.
    for intent in &index.state().dns {
        published.entry(intent.host.clone()).or_default().push(other_cluster(&intent.host));
    }
    let hosts = s.ingresses.len();
    let mut runs = Runs::new();
    let started = Instant::now();
    let mut i = 0usize;
    while runs.more(started, 20, 2_000) {
        // The object to change and its other version, built outside the timing.
        let j = (i / 2).wrapping_mul(7_919) % hosts;
        let back = i % 2 == 1;
        i += 1;
        let changed = match mode {
            "slice" => {
                let mut slice = s.endpoint_slices[j].clone();
                if !back {
                    for e in slice.endpoints.iter_mut().flatten() {
                        e.conditions.as_mut().unwrap().ready = Some(false);
                    }
                }
                Object::EndpointSlice(Arc::new(slice))
            }
            _ => {
                let mut ingress = s.ingresses[j].clone();
                let w = if back { "100" } else { "50" };
                ingress
                    .metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(cfg.weight_annotation(), w.into());
                Object::Ingress(Arc::new(ingress))
            }
        };
        debug_assert!(matches!(changed.kind(), Kind::EndpointSlice | Kind::Ingress));
        let (p, b) = runs.timed(|| {
            index.apply(changed);
            index.flush();
            let hosts = index.take_changed();
            let desired = DesiredRecords::build(&index.state_of(&hosts), owner, opts);
            let names: std::collections::BTreeSet<&str> = desired
                .records
                .iter()
                .map(|r| r.key.name.as_str())
                .chain(hosts.iter().flat_map(|h| [h.as_str()]))
                .collect();
            let current: Vec<RecordSet> =
                names.iter().flat_map(|n| published.get(*n).into_iter().flatten()).cloned().collect();
            let p = plan(&desired, &current, owner, false);
            let b = p.batches(BatchLimits::ROUTE53);
            (p, b)
        });
        assert!(!p.is_empty(), "run {i}: the change of host {j} planned nothing");
        runs.changes = p.len();
        runs.batches = b.len();
        for change in b.into_iter().flatten() {
            let set = published.entry(change.record().key.name.clone()).or_default();
            set.retain(|r| r.key != change.record().key);
            if let Change::Upsert { record, .. } = change {
                set.push(record);
            }
        }
    }
    runs
}

fn child(hosts: usize, mode: &str) {
    let cfg = TranslateConfig::default();
    let owner = Ownership::new("eu");
    let opts = RecordOptions::default();
    let s = snapshot(hosts);
    let current = if mode == "full" { published(&s, &cfg, &owner) } else { Vec::new() };
    let baseline = status_kib("VmRSS:");
    // Reset the peak to the current RSS so that VmHWM measures the runs, not the input building.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let runs = match mode {
        "full" => full(&s, &cfg, &owner, &opts, &current),
        _ => incremental(&s, &cfg, &owner, &opts, mode),
    };
    let peak = status_kib("VmHWM:");
    let (mut wall, mut cpu) = (runs.wall.clone(), runs.cpu_ns.clone());
    wall.sort();
    cpu.sort();
    let ms = |ns: u64| ns as f64 / 1e6;
    let wall_mean = wall.iter().sum::<Duration>() / wall.len() as u32;
    let cpu_mean = cpu.iter().sum::<u64>() / cpu.len() as u64;
    let p99 = cpu[(cpu.len() * 99).div_ceil(100) - 1];
    println!(
        "{hosts}\t{mode}\t{}\t{:.3}\t{:.3}\t{:.3}\t{:.3}\t{}\t{}\t{}\t{}\t{}",
        cpu.len(),
        ms(cpu_mean),
        ms(cpu[0]),
        ms(p99),
        wall_mean.as_secs_f64() * 1e3,
        runs.changes,
        runs.batches,
        baseline,
        peak,
        if reset { "run" } else { "process" },
    );
}

fn main() {
    if let Some(n) = std::env::var(CHILD_ENV).ok().and_then(|v| v.parse().ok()) {
        child(n, &std::env::var(MODE_ENV).unwrap_or_else(|_| "full".into()));
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sizes: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { SIZES.to_vec() } else { sizes };
    let modes: Vec<&str> = MODES.iter().copied().filter(|m| args.iter().any(|a| a == m)).collect();
    let modes = if modes.is_empty() { MODES.to_vec() } else { modes };
    let exe = std::env::current_exe().expect("bench binary path");
    println!("weir pipeline benchmark (modes: see core/benches/pipeline.rs)");
    println!(
        "workload per host: 1 Ingress (1 rule, CNAME target), 1 Service, 1 EndpointSlice (2 ready endpoints); \
         full: published own records at C=100 and another cluster's, run at C=50 (one UPSERT per host); \
         slice/annotation: converged at C=50, one object changed per run"
    );
    println!(
        "{:>7} {:>10} {:>5} {:>12} {:>11} {:>11} {:>13} {:>8} {:>8} {:>14} {:>13}",
        "hosts",
        "mode",
        "runs",
        "cpu mean ms",
        "cpu min ms",
        "cpu p99 ms",
        "wall mean ms",
        "changes",
        "batches",
        "inputs RSS MiB",
        "peak RSS MiB"
    );
    for n in sizes {
        for mode in &modes {
            let out = std::process::Command::new(&exe)
                .env(CHILD_ENV, n.to_string())
                .env(MODE_ENV, mode)
                .output()
                .expect("run child");
            let text = String::from_utf8_lossy(&out.stdout);
            let f: Vec<&str> = text.trim().split('\t').collect();
            if !out.status.success() || f.len() < 12 {
                eprintln!("size {n} {mode} failed: {}", String::from_utf8_lossy(&out.stderr));
                std::process::exit(1);
            }
            let mib = |kib: &str| kib.parse::<f64>().unwrap_or(0.0) / 1024.0;
            println!(
                "{:>7} {:>10} {:>5} {:>12} {:>11} {:>11} {:>13} {:>8} {:>8} {:>14.1} {:>13.1}{}",
                f[0],
                f[1],
                f[2],
                f[3],
                f[4],
                f[5],
                f[6],
                f[7],
                f[8],
                mib(f[9]),
                mib(f[10]),
                if f[11] == "run" { "" } else { "  (peak of the whole process: clear_refs unavailable)" }
            );
        }
    }
}
