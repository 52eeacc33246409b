//! AWS benchmarks against moto_server (docs/bench-aws.md):
//! - Route53 calls per reconcile for N hosts vs the minimum, calls when nothing changed, reads per
//!   reconcile (cold, warm, one new host, and in a zone full of foreign records);
//! - failover latency: DesiredWeight written → change accepted by Route53 (moto's answer to the
//!   controller's ChangeResourceRecordSets, from its log), p50/p99 over 20 edits,
//!   `weir controller --weight-poll-interval 1s` (`failover`), and over 50 edits at random times at
//!   default settings, on a table with a stream (`failover-default`) and without (`failover-default-poll`);
//! - plan timings (`plan-sqlite`, `plan-dynamodb`): ramp step ack → next step written, override
//!   expiry → revert written, from the history's timestamps.
//!
//! `WEIR_TEST_VENV=/tmp/venvtest cargo run -p integration-tests --bin bench_aws -- [calls 100,1000,10000] [failover] ...`

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
    let (_, mut desired) = cfg.desired(snap, weight, &Default::default());
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
    failover_run(Some("1s"), 20, false, false);
}

/// Default settings on a table with a stream (the documented set-up): the stream wakes the loop.
fn failover_default() {
    failover_run(None, 50, true, true);
}

/// Default settings on a table without a stream: the 250 ms poll alone.
fn failover_default_poll() {
    failover_run(None, 50, true, false);
}

fn failover_run(poll: Option<&str>, edits: usize, random_gaps: bool, stream: bool) {
    let dir = tempfile::tempdir().unwrap();

    let moto = Moto::start(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (ddb, r53, zone) = rt.block_on(async {
        let ddb = dynamodb(&moto.endpoint()).await;
        let r53 = route53(&moto.endpoint()).await;
        if stream {
            integration_tests::aws::create_table_with_stream(&ddb, TABLE).await;
        } else {
            create_table(&ddb, TABLE).await;
        }
        let zone = create_zone(&r53, "example.com").await;
        (ddb, r53, zone)
    });
    let manifests = dir.path().join("eu");
    write_manifests(&manifests, 10, "eu-lb.example.net");
    let controller = Controller::start_polling(
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
    let (mut latencies, mut visible) = (Vec::new(), Vec::new());
    for i in 0..edits {
        if random_gaps {
            std::thread::sleep(gap());
        }
        let w: i64 = if i % 2 == 0 { 20 } else { 80 };
        let started = Instant::now();
        let started_at = seconds_of_day(std::time::SystemTime::now());
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
        // A reader's view, checked every 50 ms (checking faster loads moto, which serves weir too).
        wait_for("the new weight in Route53", Duration::from_secs(30), || (weight_of_h0() == Some(w)).then_some(()));
        visible.push(started.elapsed());
        // Accepted: the moment moto answered the controller's ChangeResourceRecordSets, from the
        // controller's log (the `DNS batch: done` line, wall clock, same machine).
        // A reader may see the change before the controller has logged moto's answer.
        let done = wait_for("the controller's batch in its log", Duration::from_secs(10), || {
            controller
                .proc
                .log()
                .lines()
                .filter(|l| l.contains("DNS batch: done") && l.contains("failed=0"))
                .filter_map(log_seconds_of_day)
                .find(|t| *t > started_at)
        });
        let accepted = Duration::from_secs_f64(done - started_at);
        latencies.push(accepted);
        wait_for("ack", Duration::from_secs(30), || (current() == format!("N:{w}")).then_some(()));
        println!(
            "edit {i:>2}: DesiredWeight={w} written at {} in {:>4}ms, accepted by Route53 after {:>5}ms, seen by a \
             reader after {:>5}ms",
            weir::backends::rfc3339_ms(weir::backends::now_ms() - started.elapsed().as_millis() as i64),
            wrote.as_millis(),
            accepted.as_millis(),
            visible.last().unwrap().as_millis()
        );
    }
    visible.sort();
    let seen = |p: f64| visible[((visible.len() as f64 * p).ceil() as usize).clamp(1, visible.len()) - 1];
    println!(
        "seen by a reader (ListResourceRecordSets every 50 ms): p50={}ms p99={}ms",
        seen(0.5).as_millis(),
        seen(0.99).as_millis()
    );
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1];
    println!(
        "failover latency over {} edits, --weight-poll-interval {}, table {}, 10 hosts{}: p50={}ms p99={}ms max={}ms",
        latencies.len(),
        poll.unwrap_or("default"),
        if stream { "with a stream" } else { "without a stream" },
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

/// Seconds since midnight UTC (the bench and the controller share the machine's clock).
fn seconds_of_day(t: std::time::SystemTime) -> f64 {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap();
    (d.as_secs() % 86_400) as f64 + f64::from(d.subsec_nanos()) / 1e9
}

/// The same for a log line's timestamp (`2026-12-02T01:35:54.796251Z ...`).
fn log_seconds_of_day(line: &str) -> Option<f64> {
    let t = line.get(11..26)?;
    let h: f64 = t.get(0..2)?.parse().ok()?;
    let m: f64 = t.get(3..5)?.parse().ok()?;
    let s: f64 = t.get(6..)?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// One backend for the plan timings: runs `weir weights` (stdout, or stderr when it failed).
type Cli<'a> = &'a dyn Fn(&[&str]) -> Result<String, String>;

fn must(cli: Cli<'_>, args: &[&str]) -> String {
    cli(args).unwrap_or_else(|err| panic!("weir weights {args:?}: {err}"))
}

fn row_json(cli: Cli<'_>) -> serde_json::Value {
    serde_json::from_str(&must(cli, &["get", "--cluster-name", "eu", "--output", "json"])).unwrap()
}

/// eu's row once it exists.
fn try_row(cli: Cli<'_>) -> Option<serde_json::Value> {
    serde_json::from_str(&cli(&["get", "--cluster-name", "eu", "--output", "json"]).ok()?).ok()
}

fn pct_ms(mut v: Vec<i64>) -> String {
    v.sort();
    let at = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
    format!("n={} p50={}ms p99={}ms max={}ms", v.len(), at(0.5), at(0.99), v.last().unwrap())
}

/// Ramp step ack → next step written (minus the `--every` hold), and override expiry → revert
/// written, read off the history's timestamps (each entry is written in the same transaction as the
/// change it records). eu starts at 100 with default settings.
fn plan_timings(label: &str, cli: Cli<'_>, gate_url: &str) {
    let every_ms = 1000;
    must(
        cli,
        &["ramp", "--cluster-name", "eu", "--to", "10", "--step", "10", "--every", "1s"]
            .iter()
            .copied()
            .chain(["--gate-url", gate_url, "--gate-query", "up", "--gate-max", "1"])
            .collect::<Vec<_>>(),
    );
    wait_for("the ramp completed", Duration::from_secs(120), || {
        let r = row_json(cli);
        (r["Status"].as_str().unwrap_or_default().contains("completed") && r["CurrentWeight"] == 10).then_some(())
    });
    let history: Vec<serde_json::Value> =
        serde_json::from_str(&must(cli, &["history", "--cluster-name", "eu", "--output", "json"])).unwrap();
    let at = |e: &serde_json::Value| e["At"].as_i64().unwrap();
    let (mut ack_to_next, mut write_to_ack) = (Vec::new(), Vec::new());
    for (i, e) in history.iter().enumerate() {
        if e["Field"] == "DesiredWeight" && e["Cause"] == "ramp_step" {
            let ack = history[i..].iter().find(|a| a["Field"] == "CurrentWeight" && a["After"] == e["After"]);
            if let Some(a) = ack {
                write_to_ack.push(at(a) - at(e));
            }
        }
        if e["Field"] == "CurrentWeight" && e["Cause"] == "ack" {
            let next = history[i..].iter().find(|n| n["Field"] == "DesiredWeight" && n["Cause"] == "ramp_step");
            if let Some(n) = next {
                ack_to_next.push(at(n) - at(e) - every_ms);
            }
        }
    }
    println!("{label}: ramp 100→10 by 10, --every 1s, gate over HTTP on loopback");
    println!(
        "{label}:   step ack → next step written (beyond the 1 s hold, gate query included): {}",
        pct_ms(ack_to_next)
    );
    println!(
        "{label}:   step written → acknowledged (applied to DNS):                          {}",
        pct_ms(write_to_ack)
    );

    let mut expiry_to_revert = Vec::new();
    for _ in 0..10 {
        must(cli, &["set", "--cluster-name", "eu", "--desired", "30", "--for", "1s"]);
        let until = row_json(cli)["Plan"]["until_ms"].as_i64().expect("the override's expiry");
        wait_for("the revert", Duration::from_secs(30), || {
            let r = row_json(cli);
            (r["DesiredWeight"] == 10 && r.get("Plan").is_none() && r["CurrentWeight"] == 10).then_some(())
        });
        let history: Vec<serde_json::Value> =
            serde_json::from_str(&must(cli, &["history", "--cluster-name", "eu", "--output", "json"])).unwrap();
        let revert = history.iter().rev().find(|e| e["Cause"] == "revert").expect("the revert in the history");
        expiry_to_revert.push(at(revert) - until);
    }
    println!(
        "{label}:   override expiry → revert written (10 overrides of 1 s):                {}",
        pct_ms(expiry_to_revert)
    );
}

/// `weir local` on SQLite, default settings.
fn plan_timings_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("m");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(
        manifests.join("app.yaml"),
        integration_tests::ingress_manifest("web", "app", &["app.example.com"], None, "10.1.0.1"),
    )
    .unwrap();
    let db = dir.path().join("weir.db");
    let _eu = integration_tests::LocalCluster::start("eu", &manifests, &db, dir.path(), &["--initial-weight", "100"]);
    let cli = |args: &[&str]| {
        let (ok, out, err) = integration_tests::weights(&db, args);
        if ok {
            Ok(out)
        } else {
            Err(err)
        }
    };
    wait_for("eu at 100", Duration::from_secs(30), || (try_row(&cli)?["CurrentWeight"] == 100).then_some(()));
    let gate = integration_tests::gate::GateServer::start(integration_tests::gate::GateMode::Value(0.0));
    plan_timings("sqlite (weir local)", &cli, &gate.url());
}

/// `weir controller` on DynamoDB (moto, a table with a stream, `--history-table`), default settings.
fn plan_timings_dynamodb() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    let endpoint = moto.endpoint();
    let history_table = "traffic-controller-history";
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let zone = rt.block_on(async {
        use weir::aws::aws_sdk_dynamodb::types::{
            AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        };
        let ddb = dynamodb(&endpoint).await;
        integration_tests::aws::create_table_with_stream(&ddb, TABLE).await;
        let attr = |n: &str| {
            AttributeDefinition::builder().attribute_name(n).attribute_type(ScalarAttributeType::S).build().unwrap()
        };
        let key = |n: &str, t| KeySchemaElement::builder().attribute_name(n).key_type(t).build().unwrap();
        ddb.create_table()
            .table_name(history_table)
            .attribute_definitions(attr("ClusterName"))
            .attribute_definitions(attr("ChangedAt"))
            .key_schema(key("ClusterName", KeyType::Hash))
            .key_schema(key("ChangedAt", KeyType::Range))
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
            .unwrap();
        create_zone(&route53(&endpoint).await, "example.com").await
    });
    let manifests = dir.path().join("eu");
    write_manifests(&manifests, 10, "eu-lb.example.net");
    let _c = Controller::start_polling(
        ControllerSpec {
            cluster: "eu",
            manifests,
            endpoint: endpoint.clone(),
            zone: &zone,
            initial_weight: 100,
            extra: vec!["--history-table".into(), history_table.into()],
        },
        None,
        dir.path(),
        "weir-eu",
    );
    let cli = |args: &[&str]| {
        let mut cmd = std::process::Command::new(integration_tests::weir_bin());
        cmd.arg("weights").args(args).args(["--table-name", TABLE, "--history-table", history_table]);
        for (k, v) in integration_tests::aws::aws_env(&endpoint) {
            cmd.env(k, v);
        }
        let (ok, out, err) = integration_tests::run(&mut cmd);
        if ok {
            Ok(out)
        } else {
            Err(err)
        }
    };
    wait_for("eu at 100", Duration::from_secs(60), || (try_row(&cli)?["CurrentWeight"] == 100).then_some(()));
    let gate = integration_tests::gate::GateServer::start(integration_tests::gate::GateMode::Value(0.0));
    plan_timings("dynamodb (moto, 10 hosts)", &cli, &gate.url());
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
    if want("failover-default-poll") {
        failover_default_poll();
    }
    if want("plan-sqlite") {
        plan_timings_sqlite();
    }
    if want("plan-dynamodb") {
        plan_timings_dynamodb();
    }
}
