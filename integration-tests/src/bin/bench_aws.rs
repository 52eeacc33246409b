//! AWS benchmarks against moto_server (docs/bench-aws.md):
//! - Route53 calls per reconcile for N hosts vs the minimum, calls when nothing changed, reads per
//!   reconcile (cold, warm, one new host, and in a zone full of foreign records);
//! - failover latency: DesiredWeight written → change accepted by Route53, p50/p99 over 20 edits,
//!   `weir controller --weight-poll-interval 1s`.
//!
//! `WEIR_TEST_VENV=/tmp/venvtest cargo run -p integration-tests --bin bench_aws -- [calls 100,1000,10000] [failover]`

use std::time::{Duration, Instant};

use integration_tests::aws::{create_table, create_zone, dynamodb, put_foreign_cnames, route53, Moto};
use integration_tests::wait_for;
use integration_tests::weir_aws::{write_manifests, Controller, ControllerSpec, TABLE};
use weir::aws::aws_sdk_dynamodb::types::AttributeValue;
use weir::aws::aws_sdk_route53::types::RrType;
use weir::aws::{Aws, AwsMetrics, Outcome};
use weir::dns::plan::{plan, BatchLimits};
use weir::dns::record::{Ownership, RecordOptions};
use weir::dns::route53::{Route53Dns, Route53Options, ZoneRef};
use weir::dns::DnsProvider;
use weir::model::Snapshot;
use weir::reconciler::PipelineConfig;
use weir::translate::TranslateConfig;

fn snapshot(dir: &std::path::Path, hosts: usize) -> Snapshot {
    let d = dir.join(format!("m{hosts}"));
    write_manifests(&d, hosts, "eu-lb.example.net");
    let text = std::fs::read_to_string(d.join("manifests.yaml")).unwrap();
    let objects = weir::providers::file::parse_manifests(&text).unwrap();
    weir::providers::file::snapshot_of(&objects, 1)
}

fn config() -> PipelineConfig {
    PipelineConfig {
        translate: TranslateConfig { binding_domain: "example.com".parse().unwrap(), ..TranslateConfig::default() },
        owner: Ownership::new("eu"),
        records: RecordOptions::default(),
        allow_all_zero: false,
    }
}

struct PassFigures {
    changes: usize,
    writes: u64,
    /// Write attempts that did not succeed and were retried (throttling, timeouts).
    retried: u64,
    min_elements: usize,
    min_with_chars: usize,
    reads: u64,
    failed: usize,
    secs: f64,
}

async fn reconcile(p: &Route53Dns, m: &AwsMetrics, snap: &Snapshot, weight: u8) -> PassFigures {
    let cfg = config();
    let started = Instant::now();
    let ok = |op| m.count_outcome("route53", Some(op), Outcome::Success);
    let all = |op| m.count("route53", Some(op));
    let (r0, w0, a0) = (all("ListResourceRecordSets"), ok("ChangeResourceRecordSets"), all("ChangeResourceRecordSets"));
    let (_, mut desired) = cfg.desired(snap, weight);
    p.prepare(&mut desired).await;
    let current = p.current(&desired.hosts, &cfg.owner).await.unwrap();
    let plan = plan(&desired, &current, &cfg.owner, false);
    let elements: usize = plan.changes().map(|c| c.elements()).sum();
    let chars: usize = plan.changes().map(|c| c.characters()).sum();
    let report = if plan.is_empty() { Default::default() } else { p.apply(plan.batches(BatchLimits::ROUTE53)).await };
    PassFigures {
        changes: plan.len(),
        writes: ok("ChangeResourceRecordSets") - w0,
        retried: (all("ChangeResourceRecordSets") - a0) - (ok("ChangeResourceRecordSets") - w0),
        min_elements: elements.div_ceil(1000),
        min_with_chars: elements.div_ceil(1000).max(chars.div_ceil(32_000)),
        reads: all("ListResourceRecordSets") - r0,
        failed: report.failed.len(),
        secs: started.elapsed().as_secs_f64(),
    }
}

fn print(hosts: usize, pass: &str, f: &PassFigures) {
    println!(
        "hosts={hosts:>6} pass={pass:<22} changes={:>6} ChangeResourceRecordSets={:>4} (+{} retried attempts) \
         min_ceil(2*changes/1000)={:>4} min_with_32000_char_limit={:>4} ListResourceRecordSets={:>4} failed={} time={:.2}s",
        f.changes, f.writes, f.retried, f.min_elements, f.min_with_chars, f.reads, f.failed, f.secs
    );
}

async fn provider(endpoint: &str, zone: &str, m: &AwsMetrics) -> Route53Dns {
    let opts = Route53Options::new(ZoneRef::Id(zone.into()), Ownership::new("eu"));
    Route53Dns::new(route53(endpoint).await, Aws::new(m.clone()), opts).await.unwrap()
}

async fn calls(hosts: usize) {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    let client = route53(&moto.endpoint()).await;
    let zone = create_zone(&client, "example.com").await;
    let m = AwsMetrics::isolated();
    let p = provider(&moto.endpoint(), &zone, &m).await;
    let snap = snapshot(dir.path(), hosts);
    print(hosts, "publish (cold)", &reconcile(&p, &m, &snap, 50).await);
    print(hosts, "nothing changed", &reconcile(&p, &m, &snap, 50).await);
    print(hosts, "weight 50->20", &reconcile(&p, &m, &snap, 20).await);
    print(hosts, "nothing changed", &reconcile(&p, &m, &snap, 20).await);
    // The only cluster drains: the all-zero guard holds, after re-reading the drained hosts.
    print(hosts, "weight 20->0 (guarded)", &reconcile(&p, &m, &snap, 0).await);
    let more = snapshot(dir.path(), hosts + 1);
    print(hosts, "one host added", &reconcile(&p, &m, &more, 20).await);
    let m2 = AwsMetrics::isolated();
    let p2 = provider(&moto.endpoint(), &zone, &m2).await;
    print(hosts, "restart (cold cache)", &reconcile(&p2, &m2, &more, 20).await);
    print(hosts, "nothing changed", &reconcile(&p2, &m2, &more, 20).await);
}

/// 100 managed hosts in a zone that also holds `foreign` records of another owner.
async fn big_zone(foreign: usize) {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    // Set-up only: moto slows down as the zone grows, so this client waits longer than weir does.
    let config = weir::aws::loader(Some(integration_tests::aws::REGION))
        .endpoint_url(moto.endpoint())
        .credentials_provider(weir::aws::aws_sdk_route53::config::Credentials::new("t", "t", None, None, "t"))
        .timeout_config(
            weir::aws::aws_config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_secs(300))
                .operation_timeout(Duration::from_secs(300))
                .build(),
        )
        .load()
        .await;
    let client = weir::aws::aws_sdk_route53::Client::new(&config);
    let zone = create_zone(&client, "example.com").await;
    for chunk in (0..foreign).collect::<Vec<_>>().chunks(500) {
        let records = chunk.iter().map(|i| (format!("f{i}.example.com."), "other".into(), "other.example.net".into()));
        put_foreign_cnames(&client, &zone, records).await;
    }
    let m = AwsMetrics::isolated();
    let p = provider(&moto.endpoint(), &zone, &m).await;
    let snap = snapshot(dir.path(), 100);
    let label = format!("100 of {foreign} foreign");
    print(100, &format!("publish ({label})"), &reconcile(&p, &m, &snap, 50).await);
    print(100, "nothing changed", &reconcile(&p, &m, &snap, 50).await);
    print(100, "weight 50->20", &reconcile(&p, &m, &snap, 20).await);
    print(100, "one host added", &reconcile(&p, &m, &snapshot(dir.path(), 101), 20).await);
}

/// Failover latency at `poll` (None: weir's default), `edits` edits; `random_gaps`: each edit waits a
/// random 0-2 s after the previous ack, so that edits land at random points of the poll cycle.
fn failover() {
    failover_run(Some("1s"), 20, false);
}

fn failover_default() {
    failover_run(None, 50, true);
}

fn failover_run(poll: Option<&str>, edits: usize, random_gaps: bool) {
    let dir = tempfile::tempdir().unwrap();

    let moto = Moto::start(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (ddb, r53, zone) = rt.block_on(async {
        let ddb = dynamodb(&moto.endpoint()).await;
        let r53 = route53(&moto.endpoint()).await;
        create_table(&ddb, TABLE).await;
        let zone = create_zone(&r53, "example.com").await;
        (ddb, r53, zone)
    });
    let manifests = dir.path().join("eu");
    write_manifests(&manifests, 10, "eu-lb.example.net");
    let _c = Controller::start_polling(
        ControllerSpec {
            cluster: "eu",
            manifests,
            endpoint: moto.endpoint(),
            zone: &zone,
            initial_weight: 50,
            extra: vec![],
        },
        poll,
        dir.path(),
        "weir-eu",
    );
    // A small xorshift: random gaps without another dependency.
    let mut seed: u64 =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut gap = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        Duration::from_millis(seed % 2000)
    };
    let weight_of_h0 = || {
        rt.block_on(async {
            let out = r53
                .list_resource_record_sets()
                .hosted_zone_id(&zone)
                .start_record_name("h0.example.com.")
                .max_items(3)
                .send()
                .await
                .ok()?;
            out.resource_record_sets()
                .iter()
                .find(|r| {
                    r.name() == "h0.example.com." && r.set_identifier() == Some("eu") && *r.r#type() == RrType::Cname
                })
                .and_then(|r| r.weight())
        })
    };
    let current = || rt.block_on(integration_tests::aws::item_attr(&ddb, TABLE, "eu", "CurrentWeight"));
    wait_for("initial publish", Duration::from_secs(60), || (weight_of_h0() == Some(50)).then_some(()));
    wait_for("initial ack", Duration::from_secs(60), || (current() == "N:50").then_some(()));
    let mut latencies = Vec::new();
    for i in 0..edits {
        if random_gaps {
            std::thread::sleep(gap());
        }
        let w: i64 = if i % 2 == 0 { 20 } else { 80 };
        let started = Instant::now();
        rt.block_on(async {
            ddb.update_item()
                .table_name(TABLE)
                .key("ClusterName", AttributeValue::S("eu".into()))
                .update_expression("SET DesiredWeight = :d")
                .expression_attribute_values(":d", AttributeValue::N(w.to_string()))
                .send()
                .await
                .unwrap();
        });
        let wrote = started.elapsed();
        wait_for("the new weight in Route53", Duration::from_secs(30), || (weight_of_h0() == Some(w)).then_some(()));
        let accepted = started.elapsed();
        latencies.push(accepted);
        wait_for("ack", Duration::from_secs(30), || (current() == format!("N:{w}")).then_some(()));
        println!(
            "edit {i:>2}: DesiredWeight={w} written at {} in {:>4}ms, accepted by Route53 after {:>5}ms",
            weir::backends::rfc3339_ms(weir::backends::now_ms() - started.elapsed().as_millis() as i64),
            wrote.as_millis(),
            accepted.as_millis()
        );
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1];
    println!(
        "failover latency over {} edits, --weight-poll-interval {}, 10 hosts{}: p50={}ms p99={}ms max={}ms",
        latencies.len(),
        poll.unwrap_or("default"),
        if random_gaps { ", edits at random times" } else { "" },
        pct(0.50).as_millis(),
        pct(0.99).as_millis(),
        latencies.last().unwrap().as_millis()
    );
    // WEIR_BENCH_KEEP_LOGS=1 keeps the controller's and moto's logs (to see where the time goes).
    if std::env::var_os("WEIR_BENCH_KEEP_LOGS").is_some() {
        println!("logs kept in {}", dir.keep().display());
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let want = |name: &str| args.is_empty() || args.iter().any(|a| a == name);
    if want("calls") {
        let sizes: Vec<usize> = args
            .iter()
            .find(|a| a.contains(',') || a.parse::<usize>().is_ok())
            .map(|s| s.split(',').map(|n| n.parse().unwrap()).collect())
            .unwrap_or_else(|| vec![100, 1000, 10_000]);
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        for n in sizes {
            rt.block_on(calls(n));
        }
    }
    if want("zone") {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        rt.block_on(big_zone(20_000));
    }
    if want("failover") {
        failover();
    }
    if want("failover-default") {
        failover_default();
    }
}
