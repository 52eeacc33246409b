//! A fault soak: two clusters (eu, us), each two `weir controller` replicas with leader election on
//! the test API server, against moto (Route53 + DynamoDB) through the fault proxy. For the first part
//! of the run faults are injected at random: 30% of AWS calls throttled (`Throttling`, and
//! `PriorRequestNotComplete` on record changes), SIGKILL of a cluster's leader just after a
//! DesiredWeight edit (mid-apply), the API server hanging one replica's requests, and DesiredWeight
//! edits every ~1.5 s (acks then meet changed rows: DynamoDB condition failures), every sixth edit
//! both clusters to 0 at once (the drain claim must keep one serving), and now and then a weight
//! annotation that is not a weight on one cluster's host h0 for a few seconds (the host is held at
//! its published weight, and the cluster must not acknowledge meanwhile). It asserts continuously
//! that no host's records are all zero and that an acknowledged CurrentWeight matches every
//! published record (the held host's included); at the end, that no two replicas of a cluster ever
//! wrote in the same term (from their JSON logs), and that, once faults stop, both clusters converge
//! within a bound.
//!
//! `WEIR_TEST_VENV=/work/main/.venv cargo run -p integration-tests --bin soak -- --duration 60s [--seed N]`
//! Exits 1 on any violation; prints its figures.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use integration_tests::apiserver::{ApiServer, Identity, Options};
use integration_tests::aws::{aws_env, create_table, create_zone, dynamodb, route53, zone_records, FaultProxy, Moto};
use integration_tests::chart::{install_controller_identity, RELEASE_NAMESPACE};
use integration_tests::weir_aws::{write_manifests, TABLE};
use integration_tests::writelog::{check_single_writer, parse_file};
use integration_tests::{free_port, weir_bin, Proc};
use weir::aws::Aws;
use weir::backends::dynamodb::DynamoStore;
use weir::backends::{StoredWeight, WeightStore};
use weir::dns::record::{RecordSet, RecordType};

const CLUSTERS: [&str; 2] = ["eu", "us"];
const HOSTS: usize = 4;
const WEIGHTS: [u8; 6] = [0, 10, 30, 50, 70, 100];
/// After the faults stop, both clusters must converge within this.
const CONVERGENCE_BOUND: Duration = Duration::from_secs(30);
/// How long after h0's bad annotation is written the controller must have read it and finished any
/// pass begun before (manifest poll 1 s, settle 250 ms, a pass slowed by throttling).
/// The final, fault-free part of the run.
const QUIET: Duration = Duration::from_secs(20);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Replica {
    cluster: &'static str,
    name: String,
    incarnation: u32,
    proc: Option<Proc>,
    metrics_port: u16,
    logs: Vec<PathBuf>,
}

struct Soak {
    dir: PathBuf,
    endpoint: String,
    zone: String,
    api: ApiServer,
    /// The chart controller's ServiceAccount (namespace, name), installed on first use.
    identity: std::sync::OnceLock<(String, String)>,
}

impl Soak {
    fn spawn(&self, r: &mut Replica) {
        r.incarnation += 1;
        r.metrics_port = free_port();
        let log_name = format!("{}.{}", r.name, r.incarnation);
        // The chart's controller identity (its Lease Role), installed once, under a token named after
        // the replica so that the test API server can hang this one.
        let (ns, sa) = self.identity.get_or_init(|| {
            let id = install_controller_identity(&self.api, serde_json::json!({"controller": {"clusterName": "eu"}}));
            (id.namespace, id.service_account)
        });
        let identity = Identity::service_account(ns, sa);
        let kubeconfig = self.api.write_kubeconfig_with_token(&self.dir, &r.name, identity);
        let mut cmd = Command::new(weir_bin());
        cmd.args(["controller", "--provider", "file", "--manifests"])
            .arg(self.dir.join(r.cluster))
            .args(["--cluster-name", r.cluster, "--backend-type", "dynamodb", "--table-name", TABLE])
            .args(["--dns-provider", "route53", "--hosted-zone-id", &self.zone, "--binding-domain", "example.com"])
            .args(["--metrics-addr", &format!("127.0.0.1:{}", r.metrics_port), "--weight-poll-interval", "500ms"])
            .args(["--initial-weight", "50", "--resync-interval", "5s"])
            .args(["--enable-leader-election", "--leader-election-namespace", RELEASE_NAMESPACE])
            .args(["--leader-election-id", &format!("weir-{}", r.cluster)])
            .args(["--lease-duration", "3s", "--renew-deadline", "2s", "--retry-period", "250ms"])
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", &r.name)
            .env("WEIR_LOG", "info,weir=debug")
            .env("WEIR_LOG_FORMAT", "json");
        for (k, v) in aws_env(&self.endpoint) {
            cmd.env(k, v);
        }
        r.logs.push(self.dir.join(format!("{log_name}.log")));
        r.proc = Some(Proc::spawn(&log_name, &mut cmd, &self.dir));
    }
}

fn leads(r: &Replica) -> bool {
    r.proc.is_some()
        && integration_tests::http_get(&format!("http://127.0.0.1:{}/metrics", r.metrics_port))
            .and_then(|m| integration_tests::metric(&m, "weir_leader", &[]))
            == Some(1.0)
}

fn parse_duration(s: &str) -> Duration {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().expect("--duration N[s|m]");
    match unit {
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        other => panic!("unknown unit {other:?} in --duration"),
    }
}

/// The cluster's manifests; with `bad_h0`, Ingress h0 carries a weight annotation that is not a
/// weight (weir then holds h0 at its published weight and withholds the ack).
fn write_cluster_manifests(dir: &Path, cluster: &str, bad_h0: bool) {
    let dir = dir.join(cluster);
    write_manifests(&dir, HOSTS, &format!("{cluster}-lb.example.net"));
    if bad_h0 {
        let path = dir.join("manifests.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let plain = "  name: h0\n  namespace: web\n";
        assert!(text.contains(plain), "write_manifests changed its layout");
        let text = text.replacen(
            plain,
            &format!("{plain}  annotations: {{dns.adevinta.com/traffic-weight: \"not-a-weight\"}}\n"),
            1,
        );
        let tmp = dir.join(".manifests.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, path).unwrap();
    }
}

/// Each host's traffic weight per cluster.
fn weights_by_host(records: &[RecordSet]) -> BTreeMap<String, BTreeMap<String, u8>> {
    let mut out: BTreeMap<String, BTreeMap<String, u8>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.key.rtype != RecordType::Txt) {
        let w = out.entry(r.key.name.clone()).or_default().entry(r.key.set_identifier.clone()).or_default();
        *w = (*w).max(r.weight);
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let duration = parse_duration(&arg("--duration").unwrap_or_else(|| "60s".into()));
    let seed = arg("--seed").map(|s| s.parse().unwrap()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    let mut rng = Rng(seed);
    let faulty = duration.saturating_sub(QUIET).max(Duration::from_secs(10));
    println!("soak: {duration:?} ({faulty:?} with faults), seed {seed}");

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let moto = Moto::start(&dir);
    let proxy = FaultProxy::start(moto.port, 0);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (r53, store, zone) = rt.block_on(async {
        let ddb = dynamodb(&moto.endpoint()).await;
        create_table(&ddb, TABLE).await;
        let r53 = route53(&moto.endpoint()).await;
        let zone = create_zone(&r53, "example.com.").await;
        (r53, DynamoStore::new(ddb, TABLE, Aws::default()), zone)
    });
    for c in CLUSTERS {
        write_cluster_manifests(&dir, c, false);
    }
    let soak = Soak {
        dir: dir.clone(),
        endpoint: proxy.endpoint(),
        zone: zone.clone(),
        api: ApiServer::start_background(Options::default()),
        identity: std::sync::OnceLock::new(),
    };
    let mut replicas: Vec<Replica> = CLUSTERS
        .iter()
        .flat_map(|c| ["a", "b"].map(|r| (*c, format!("{c}-{r}"))))
        .map(|(cluster, name)| Replica { cluster, name, incarnation: 0, proc: None, metrics_port: 0, logs: vec![] })
        .collect();
    for r in &mut replicas {
        soak.spawn(r);
    }

    let mut violations: Vec<String> = Vec::new();
    // (when, weight) of every DesiredWeight edit, per cluster.
    let mut desired_history: BTreeMap<&str, Vec<(Instant, u8)>> = BTreeMap::new();
    let mut last_current: BTreeMap<&str, Option<u8>> = BTreeMap::new();
    let (mut kills, mut hangs, mut edits, mut checks) = (0u32, 0u32, 0u32, 0u32);
    let (mut both_zero_edits, mut holds, mut both_zero_seen) = (0u32, 0u32, 0u32);
    // The cluster whose h0 carries the bad annotation, since and until when.
    let mut held: Option<(&str, Instant, Instant)> = None;
    let mut acks_while_held = 0u32;
    let mut hung: Option<(String, Instant)> = None;
    let mut dead: Vec<(usize, Instant)> = Vec::new();
    let started = Instant::now();
    let mut next_edit = started + Duration::from_secs(3);
    let mut next_fault = started + Duration::from_secs(5);
    let mut next_hold = started + Duration::from_secs(8);
    let mut quiet_at: Option<Instant> = None;
    let mut converged_after: Option<Duration> = None;
    let final_weights: BTreeMap<&str, u8> = BTreeMap::from([("eu", 70), ("us", 30)]);

    proxy.state.percent.store(30, Ordering::SeqCst);
    while started.elapsed() < duration.max(faulty + QUIET) {
        let now = Instant::now();
        let in_faults = started.elapsed() < faulty;
        if !in_faults && quiet_at.is_none() {
            // Faults stop: no throttling, no hang, every replica back; the final weights are set.
            proxy.state.percent.store(0, Ordering::SeqCst);
            if let Some((token, _)) = hung.take() {
                soak.api.faults().release(&token);
            }
            for (i, _) in dead.drain(..) {
                soak.spawn(&mut replicas[i]);
            }
            if let Some((c, _, _)) = held.take() {
                write_cluster_manifests(&dir, c, false);
            }
            for (c, w) in &final_weights {
                rt.block_on(store.set_desired(c, *w)).unwrap();
                desired_history.entry(c).or_default().push((Instant::now(), *w));
            }
            quiet_at = Some(Instant::now());
        }
        if in_faults && now >= next_edit {
            let c = CLUSTERS[rng.below(2)];
            let w = WEIGHTS[rng.below(WEIGHTS.len())];
            // Every sixth edit asks both clusters to drain at once: the drain claim in the weight
            // table must keep one of them serving.
            let both = rng.below(6) == 0;
            let targets: Vec<(&str, u8)> = if both { CLUSTERS.iter().map(|c| (*c, 0)).collect() } else { vec![(c, w)] };
            for (c, w) in targets {
                if rt.block_on(store.set_desired(c, w)).is_ok() {
                    desired_history.entry(c).or_default().push((Instant::now(), w));
                    edits += 1;
                }
            }
            both_zero_edits += u32::from(both);
            next_edit = now + Duration::from_millis(1000 + rng.below(1000) as u64);
            // Sometimes kill that cluster's leader right away: it is likely mid-apply.
            if now >= next_fault && rng.below(2) == 0 {
                std::thread::sleep(Duration::from_millis(150 + rng.below(300) as u64));
                if let Some(i) = replicas.iter().position(|r| r.cluster == c && leads(r)) {
                    if let Some(mut p) = replicas[i].proc.take() {
                        p.kill();
                    }
                    dead.push((i, Instant::now()));
                    kills += 1;
                }
                next_fault = Instant::now() + Duration::from_secs(2 + rng.below(3) as u64);
            }
        }
        if in_faults && now >= next_fault && hung.is_none() {
            let i = rng.below(replicas.len());
            if replicas[i].proc.is_some() {
                soak.api.faults().hang(&replicas[i].name);
                hung = Some((replicas[i].name.clone(), now));
                hangs += 1;
            }
            next_fault = now + Duration::from_secs(2 + rng.below(3) as u64);
        }
        // Now and then one cluster's h0 gets a bad weight annotation for 6-9 s.
        match held {
            Some((c, _, until)) if now >= until => {
                write_cluster_manifests(&dir, c, false);
                held = None;
                next_hold = now + Duration::from_secs(4 + rng.below(6) as u64);
            }
            None if in_faults && now >= next_hold => {
                let c = CLUSTERS[rng.below(2)];
                write_cluster_manifests(&dir, c, true);
                held = Some((c, now, now + Duration::from_millis(6000 + rng.below(3000) as u64)));
                holds += 1;
            }
            _ => {}
        }
        if let Some((token, since)) = &hung {
            if since.elapsed() > Duration::from_secs(5) {
                soak.api.faults().release(token);
                hung = None;
            }
        }
        let restart: Vec<usize> =
            dead.iter().filter(|(_, at)| at.elapsed() > Duration::from_millis(1500)).map(|(i, _)| *i).collect();
        dead.retain(|(i, _)| !restart.contains(i));
        for i in restart {
            soak.spawn(&mut replicas[i]);
        }

        // The invariants on what is published and acknowledged (read from moto directly).
        let (rows, records) = rt.block_on(async {
            let mut rows = BTreeMap::new();
            for c in CLUSTERS {
                if let Ok(Some(row)) = store.get(c).await {
                    rows.insert(c, row);
                }
            }
            (rows, zone_records(&r53, &zone).await)
        });
        checks += 1;
        let by_host = weights_by_host(&records);
        if CLUSTERS.iter().all(|c| desired_history.get(c).and_then(|h| h.last()).is_some_and(|(_, w)| *w == 0)) {
            both_zero_seen += 1;
        }
        for (host, clusters) in &by_host {
            if clusters.values().all(|w| *w == 0) {
                violations.push(format!("{host} is all zero: {clusters:?}"));
            }
        }
        for c in CLUSTERS {
            let current = rows.get(c).and_then(|r| match r.current {
                StoredWeight::Valid(w) => Some(w),
                _ => None,
            });
            let previous = last_current.insert(c, current).flatten();
            let Some(acked) = current.filter(|w| Some(*w) != previous) else { continue };
            // An ack while h0's bad annotation is on is counted, and checked like every ack below:
            // h0 is held at its published weight, so an ack of another weight finds h0 off it. (A
            // deadline after the annotation was written flagged true acks on a loaded machine: the
            // controller reads the manifest when it reads it; what must hold is the records.)
            if held.is_some_and(|(h, _, _)| h == c) && acked > 0 {
                acks_while_held += 1;
            }
            // Newly acknowledged: every host of c must be at the acked weight, or at a DesiredWeight
            // set after the acked value was last set (already being applied).
            let history = desired_history.get(c).cloned().unwrap_or_default();
            let set_at = history.iter().rev().find(|(_, w)| *w == acked).map(|(t, _)| *t);
            let Some(set_at) = set_at else { continue }; // the initial weight
            let allowed: Vec<u8> =
                std::iter::once(acked).chain(history.iter().filter(|(t, _)| *t > set_at).map(|(_, w)| *w)).collect();
            for (host, clusters) in &by_host {
                let w = clusters.get(c).copied();
                if w.is_none_or(|w| !allowed.contains(&w)) {
                    violations.push(format!("{c} acknowledged {acked} but {host} is at {w:?} (allowed {allowed:?})"));
                }
            }
        }
        if let (Some(q), None) = (quiet_at, converged_after) {
            let done = CLUSTERS.iter().all(|c| {
                let want = final_weights[c];
                rows.get(c).is_some_and(|r| r.current == StoredWeight::Valid(want))
                    && by_host.len() == HOSTS
                    && by_host.values().all(|cl| cl.get(*c) == Some(&want))
            });
            if done {
                converged_after = Some(q.elapsed());
            } else if q.elapsed() > CONVERGENCE_BOUND {
                violations.push(format!("not converged {CONVERGENCE_BOUND:?} after the faults stopped"));
                converged_after = Some(q.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }

    for r in &mut replicas {
        if let Some(mut p) = r.proc.take() {
            p.terminate(Duration::from_secs(20));
        }
    }
    let mut writes = 0;
    let mut passes = 0;
    let mut claims_refused = 0;
    for c in CLUSTERS {
        let logs: Vec<_> = replicas
            .iter()
            .filter(|r| r.cluster == c)
            .flat_map(|r| r.logs.iter().enumerate().map(|(i, p)| parse_file(&format!("{}.{}", r.name, i + 1), p)))
            .collect();
        writes += logs.iter().map(|l| l.writes.len()).sum::<usize>();
        for v in check_single_writer(&logs) {
            violations.push(format!("{c}: {v}"));
        }
        for r in replicas.iter().filter(|r| r.cluster == c) {
            for p in &r.logs {
                let log = std::fs::read_to_string(p).unwrap_or_default();
                passes += log.matches("applying DNS plan").count();
                claims_refused += log.matches("are draining at the same time").count();
            }
        }
    }
    if converged_after.is_none() {
        violations.push("the run ended before convergence was seen".into());
    }
    println!(
        "soak figures: seed {seed}; AWS calls refused by the proxy {} of {}; leader kills {kills}; API hangs {hangs}; \
         DesiredWeight edits {edits} ({both_zero_edits} of both clusters to 0 at once; both at 0 in {both_zero_seen} \
         checks); drains refused for a concurrent drain claim {claims_refused}; bad-annotation holds {holds} (new acks \
         of the held cluster {acks_while_held}, each checked against the records); \
         invariant checks {checks}; DNS passes that wrote {passes}; writes (DNS batches + acks) {writes}; \
         convergence after faults stopped {:?}; violations {}",
        proxy.faults(),
        proxy.faults() + proxy.state.forwarded.load(Ordering::SeqCst),
        converged_after,
        violations.len()
    );
    if !violations.is_empty() {
        for v in violations.iter().take(50) {
            eprintln!("VIOLATION: {v}");
        }
        if std::env::var_os("SOAK_KEEP").is_some() {
            eprintln!("logs kept in {}", tmp.keep().display());
        }
        std::process::exit(1);
    }
    println!("soak: ok");
    let _ = Path::new(&dir);
}
