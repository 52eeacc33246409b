//! `weir controller --backend-type dynamodb --dns-provider route53` against moto_server: two clusters
//! sharing a table and a zone, foreign records, throttling, SIGKILL mid-apply, health checks.

use std::sync::atomic::Ordering;
use std::time::Duration;

use integration_tests::aws::{create_table, create_zone, dynamodb, item_attr, route53, zone_records, FaultProxy, Moto};
use integration_tests::weir_aws::{traffic_of, txt_of, write_manifests, Controller, ControllerSpec, TABLE};
use integration_tests::{metric, wait_for};
use weir::aws::aws_sdk_dynamodb::types::AttributeValue;
use weir::aws::aws_sdk_route53::types::{
    Change as R53Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};
use weir::aws::{aws_sdk_dynamodb, aws_sdk_route53};
use weir::dns::record::{RecordSet, RecordType};

const T: Duration = Duration::from_secs(90);

struct Env {
    dir: tempfile::TempDir,
    moto: Moto,
    rt: tokio::runtime::Runtime,
    ddb: aws_sdk_dynamodb::Client,
    r53: aws_sdk_route53::Client,
    zone: String,
}

fn env() -> Env {
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
    Env { dir, moto, rt, ddb, r53, zone }
}

impl Env {
    fn controller(&self, cluster: &str, hosts: usize, endpoint: String, extra: &[&str], log: &str) -> Controller {
        let manifests = self.dir.path().join(format!("manifests-{cluster}"));
        if !manifests.exists() {
            write_manifests(&manifests, hosts, &format!("{cluster}-lb.example.net"));
        }
        Controller::start(
            ControllerSpec {
                cluster,
                manifests,
                endpoint,
                zone: &self.zone,
                initial_weight: 50,
                extra: extra.iter().map(|s| s.to_string()).collect(),
            },
            self.dir.path(),
            log,
        )
    }

    /// `weir plan|explain` for cluster eu against the table and the zone.
    fn oneshot(&self, command: &str, args: &[&str]) -> (bool, String, String) {
        let mut cmd = std::process::Command::new(integration_tests::weir_bin());
        cmd.arg(command)
            .args(args)
            .args(["--provider", "file", "--manifests"])
            .arg(self.dir.path().join("manifests-eu"))
            .args(["--cluster-name", "eu", "--backend-type", "dynamodb", "--table-name", TABLE])
            .args(["--dns-provider", "route53", "--hosted-zone-id", &self.zone, "--binding-domain", "example.com"]);
        for (k, v) in integration_tests::aws::aws_env(&self.moto.endpoint()) {
            cmd.env(k, v);
        }
        integration_tests::run(&mut cmd)
    }

    fn records(&self) -> Vec<RecordSet> {
        self.rt.block_on(zone_records(&self.r53, &self.zone))
    }

    fn attr(&self, cluster: &str, attr: &str) -> String {
        self.rt.block_on(item_attr(&self.ddb, TABLE, cluster, attr))
    }

    fn set_desired(&self, cluster: &str, weight: u8) {
        self.rt.block_on(async {
            self.ddb
                .update_item()
                .table_name(TABLE)
                .key("ClusterName", AttributeValue::S(cluster.into()))
                .update_expression("SET DesiredWeight = :d")
                .expression_attribute_values(":d", AttributeValue::N(weight.to_string()))
                .send()
                .await
                .unwrap();
        });
    }

    /// Waits until `cluster` publishes `hosts` traffic records at `weight` (and their TXT), and returns
    /// the zone.
    fn wait_published(&self, cluster: &str, hosts: usize, weight: u8) -> Vec<RecordSet> {
        wait_for(&format!("{cluster}: {hosts} records at weight {weight}"), T, || {
            let recs = self.records();
            let traffic = traffic_of(&recs, cluster);
            let ok = traffic.len() == hosts
                && traffic.iter().all(|r| r.weight == weight)
                && txt_of(&recs, cluster).len() == hosts;
            ok.then_some(recs)
        })
    }

    fn wait_acked(&self, cluster: &str, weight: u8) {
        wait_for(&format!("{cluster}: CurrentWeight {weight}"), T, || {
            (self.attr(cluster, "CurrentWeight") == format!("N:{weight}")).then_some(())
        });
    }

    fn put_foreign(&self, name: &str, set_id: &str, rtype: RrType, weight: i64, value: &str) {
        self.rt.block_on(async {
            let rrs = ResourceRecordSet::builder()
                .name(format!("{name}."))
                .r#type(rtype)
                .set_identifier(set_id)
                .weight(weight)
                .ttl(300)
                .resource_records(ResourceRecord::builder().value(value).build().unwrap())
                .build()
                .unwrap();
            let change = R53Change::builder().action(ChangeAction::Create).resource_record_set(rrs).build().unwrap();
            self.r53
                .change_resource_record_sets()
                .hosted_zone_id(&self.zone)
                .change_batch(ChangeBatch::builder().changes(change).build().unwrap())
                .send()
                .await
                .unwrap();
        });
    }
}

/// Sum of `weir_aws_requests_total` samples matching every `label="value"` given.
fn aws_requests(body: &str, labels: &[(&str, &str)]) -> f64 {
    body.lines()
        .filter(|l| l.starts_with("weir_aws_requests_total{"))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[test]
fn two_clusters_share_a_table_and_a_zone() {
    let e = env();
    let eu = e.controller("eu", 3, e.moto.endpoint(), &[], "weir-eu");
    // us waits for INSYNC before acknowledging.
    let us = e.controller("us", 3, e.moto.endpoint(), &["--wait-insync"], "weir-us");
    e.wait_published("eu", 3, 50);
    let before = e.wait_published("us", 3, 50);
    e.wait_acked("eu", 50);
    e.wait_acked("us", 50);
    let us_body = us.metrics().unwrap();
    assert!(
        aws_requests(&us_body, &[("service", "route53"), ("operation", "GetChange"), ("outcome", "success")]) >= 1.0
    );
    let us_before: Vec<RecordSet> = before.iter().filter(|r| r.key.set_identifier == "us").cloned().collect();
    assert_eq!(us_before.len(), 6);

    e.set_desired("eu", 20);
    let after = e.wait_published("eu", 3, 20);
    e.wait_acked("eu", 20);
    // Acknowledged only once every record carries the new weight: re-read after the ack.
    let eu_traffic: Vec<u8> = traffic_of(&e.records(), "eu").iter().map(|r| r.weight).collect();
    assert_eq!(eu_traffic, [20, 20, 20], "every one of eu's three records carries the new weight");
    let us_after: Vec<RecordSet> = after.iter().filter(|r| r.key.set_identifier == "us").cloned().collect();
    assert_eq!(us_before, us_after, "the other cluster's records are untouched");
    assert_eq!(e.attr("us", "DesiredWeight"), "N:50");
    assert_eq!(e.attr("us", "CurrentWeight"), "N:50");
    // Each host: one record per cluster, CNAME to that cluster's load balancer.
    for r in traffic_of(&after, "eu") {
        assert_eq!(r.values, vec!["eu-lb.example.net".to_string()]);
    }
    let body = wait_for("eu gauges", T, || {
        let body = eu.metrics()?;
        (metric(&body, "cluster_traffic_controller_ingress_weight_current", &[("cluster", "eu")])? == 20.0)
            .then_some(body)
    });
    assert!(
        aws_requests(
            &body,
            &[("service", "route53"), ("operation", "ChangeResourceRecordSets"), ("outcome", "success")]
        ) >= 2.0
    );
    assert!(aws_requests(&body, &[("service", "dynamodb"), ("operation", "TransactWriteItems")]) >= 1.0);
}

#[test]
fn records_weir_does_not_own_are_never_changed() {
    let e = env();
    // Another tool's weighted record at a managed name; a record with this cluster's set identifier
    // but no ownership TXT; an ownership TXT naming another owner.
    e.put_foreign("h0.example.com", "legacy", RrType::Cname, 10, "legacy.example.net");
    e.put_foreign("h1.example.com", "eu", RrType::Cname, 77, "hand-made.example.net");
    e.put_foreign("_weir.h2.example.com", "eu", RrType::Txt, 1, "\"heritage=weir,weir/owner=someone-else\"");
    let foreign: Vec<RecordSet> =
        e.records().into_iter().filter(|r| r.key.name.starts_with('h') || r.key.name.starts_with("_weir")).collect();
    assert_eq!(foreign.len(), 3);

    let eu = e.controller("eu", 3, e.moto.endpoint(), &[], "weir-eu");
    wait_for("h0 published next to the foreign record", T, || {
        let recs = e.records();
        recs.iter()
            .any(|r| r.key.name == "h0.example.com" && r.key.set_identifier == "eu" && r.weight == 50)
            .then_some(())
    });
    wait_for("the ownership refusal counted", T, || {
        let body = eu.metrics()?;
        (metric(&body, "weir_invalid_input_total", &[("kind", "ownership")])? >= 1.0).then_some(())
    });
    e.set_desired("eu", 30);
    e.wait_acked("eu", 30);
    let recs = e.records();
    for f in &foreign {
        assert!(recs.contains(f), "foreign record changed or removed: {f:?}");
    }
    assert!(recs.iter().any(|r| r.key.name == "h0.example.com" && r.key.set_identifier == "eu" && r.weight == 30));
    // Nothing of eu's was added at h1 or h2 (their names hold records eu does not own).
    let eu_at = |name: &str| recs.iter().filter(|r| r.key.set_identifier == "eu" && r.key.name.ends_with(name)).count();
    assert_eq!(eu_at("h1.example.com"), 1, "only the hand-made record");
    assert_eq!(eu_at("h2.example.com"), 1, "only the foreign TXT");
}

/// Records an older weir published (its ownership TXT naming the Ingress) are still this
/// cluster's: the controller takes them over, rewrites the TXT with the opaque id, and `weir
/// explain` maps the id back to the Ingress.
#[test]
fn an_old_format_ownership_txt_is_still_ours_and_rewritten_with_the_id() {
    let e = env();
    e.put_foreign("h0.example.com", "eu", RrType::Cname, 10, "eu-lb.example.net");
    let old_txt = "\"heritage=weir,weir/owner=eu,weir/resource=ingress/web/h0\"";
    e.put_foreign("_weir.h0.example.com", "eu", RrType::Txt, 1, old_txt);
    let eu = e.controller("eu", 2, e.moto.endpoint(), &[], "weir-eu");
    let recs = e.wait_published("eu", 2, 50);
    wait_for("every TXT rewritten with an id", T, || {
        let recs = e.records();
        txt_of(&recs, "eu")
            .iter()
            .all(|r| r.values.iter().all(|v| v.contains("weir/id=") && !v.contains("weir/resource")))
            .then_some(())
    });
    assert!(traffic_of(&recs, "eu").iter().all(|r| r.values == ["eu-lb.example.net"]));
    let body = eu.metrics().unwrap();
    let refused = metric(&body, "weir_invalid_input_total", &[("kind", "ownership")]);
    assert_eq!(refused, Some(0.0), "taken over, not refused");
    let (ok, out, err) = e.oneshot("explain", &["h0.example.com"]);
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l.starts_with("owner     eu id ") && l.ends_with("= Ingress web/h0")), "{out}");
}

#[test]
fn throttling_is_retried_and_nothing_is_lost() {
    let e = env();
    let proxy = FaultProxy::start(e.moto.port, 30);
    let eu = e.controller("eu", 40, proxy.endpoint(), &[], "weir-eu");
    e.wait_published("eu", 40, 50);
    e.set_desired("eu", 10);
    e.wait_published("eu", 40, 10);
    e.wait_acked("eu", 10);
    assert!(proxy.faults() > 0, "the proxy injected faults");
    let body = eu.metrics().unwrap();
    assert!(aws_requests(&body, &[("service", "route53"), ("outcome", "throttled")]) > 0.0, "{body}");
    assert!(aws_requests(&body, &[("service", "dynamodb"), ("outcome", "throttled")]) > 0.0);
    // Exactly one record per host and kind: nothing lost, nothing doubled.
    let recs = e.records();
    assert_eq!(traffic_of(&recs, "eu").len(), 40);
    assert_eq!(txt_of(&recs, "eu").len(), 40);
}

/// A pass that fails because Route53 keeps throttling (after weir's own retries) is counted as
/// `weir_reconcile_total{result="throttled"}`, not as a generic error.
#[test]
fn a_throttled_pass_is_counted_as_throttled() {
    let e = env();
    let proxy = FaultProxy::start(e.moto.port, 0);
    let eu = e.controller("eu", 3, proxy.endpoint(), &["--resync-interval", "2s"], "weir-eu");
    e.wait_published("eu", 3, 50);
    let result = |r: &str| metric(&eu.metrics().unwrap_or_default(), "weir_reconcile_total", &[("result", r)]);
    assert_eq!(result("throttled"), Some(0.0), "exposed as 0 before the first throttled pass");
    proxy.state.percent.store(100, Ordering::SeqCst);
    // Another load balancer for every host: the pass has to write, and every AWS call is throttled.
    write_manifests(&e.dir.path().join("manifests-eu"), 3, "eu-lb2.example.net");
    wait_for("a throttled pass", T, || result("throttled").filter(|n| *n >= 1.0));
    assert_eq!(result("dns_api"), Some(0.0), "throttling is not counted as another API failure");
}

#[test]
fn sigkill_in_the_middle_of_an_apply_then_restart_converges() {
    let e = env();
    let hosts = 600;
    // Let the first batch through, hold the second: weir is then in the middle of applying.
    let proxy = FaultProxy::start(e.moto.port, 0);
    proxy.state.hold_changes_after.store(1, Ordering::SeqCst);
    let mut first = e.controller("eu", hosts, proxy.endpoint(), &[], "weir-eu-1");
    wait_for("a record change held by the proxy", T, || (proxy.state.held.load(Ordering::SeqCst) >= 1).then_some(()));
    first.proc.kill();
    proxy.state.released.store(true, Ordering::SeqCst);
    let partial = traffic_of(&e.records(), "eu").len();
    assert!(partial > 0 && partial < hosts, "killed mid-apply: {partial} of {hosts} hosts published");
    assert_eq!(e.attr("eu", "CurrentWeight"), "N:50", "row created, nothing acknowledged beyond it");

    // Meanwhile the operator moves the weight; the restarted controller must finish and fix both.
    e.set_desired("eu", 30);
    let _second = e.controller("eu", hosts, e.moto.endpoint(), &[], "weir-eu-2");
    let recs = e.wait_published("eu", hosts, 30);
    e.wait_acked("eu", 30);
    let mut names: Vec<&str> = traffic_of(&recs, "eu").iter().map(|r| r.key.name.as_str()).collect();
    names.dedup();
    assert_eq!(names.len(), hosts, "one record per host, no duplicates");
    assert_eq!(recs.iter().filter(|r| r.key.set_identifier == "eu").count(), 2 * hosts, "no stale records");
}

#[test]
fn health_checks_are_created_once_and_attached() {
    let e = env();
    let args = ["--health-check-path", "/healthz", "--health-check-port", "443", "--health-check-protocol", "HTTPS"];
    write_manifests(&e.dir.path().join("manifests-eu"), 2, "eu-lb.example.net");
    // `weir plan` and `weir explain` only look health checks up; they never create one.
    let (ok, out, err) = e.oneshot("plan", &args);
    assert!(ok, "{err}");
    assert!(out.contains("UPSERT"), "{out}");
    let checks = || e.rt.block_on(async { e.r53.list_health_checks().send().await.unwrap().health_checks().to_vec() });
    assert!(checks().is_empty(), "weir plan created a health check");
    let mut c = e.controller("eu", 2, e.moto.endpoint(), &args, "weir-eu-1");
    let recs = wait_for("records with a health check", T, || {
        let recs = e.records();
        let t = traffic_of(&recs, "eu");
        (t.len() == 2 && t.iter().all(|r| r.health_check_id.is_some())).then_some(recs)
    });
    let checks = || e.rt.block_on(async { e.r53.list_health_checks().send().await.unwrap().health_checks().to_vec() });
    let list = checks();
    assert_eq!(list.len(), 1, "one check for the one target");
    let id = list[0].id().to_string();
    assert!(list[0].caller_reference().starts_with("weir-"));
    let attached: Vec<_> = traffic_of(&recs, "eu").iter().map(|r| r.health_check_id.clone()).collect();
    assert_eq!(attached, [Some(id.clone()), Some(id.clone())], "both of eu's records carry the one check");
    let tags = e.rt.block_on(async {
        e.r53
            .list_tags_for_resource()
            .resource_type(aws_sdk_route53::types::TagResourceType::Healthcheck)
            .resource_id(&id)
            .send()
            .await
            .unwrap()
    });
    let tags = tags.resource_tag_set().unwrap().tags();
    assert!(tags.iter().any(|t| t.key() == Some("weir:cluster") && t.value() == Some("eu")));
    wait_for("health status metric", T, || {
        let body = c.metrics()?;
        let v = metric(&body, "weir_health_check_healthy", &[("cluster", "eu"), ("target", "eu-lb.example.net")])?;
        (v == 1.0).then_some(())
    });
    // A restart finds the check instead of creating another one.
    c.proc.kill();
    let c2 = e.controller("eu", 2, e.moto.endpoint(), &args, "weir-eu-2");
    wait_for("the restarted controller ready", T, || {
        integration_tests::http_get(&format!("http://127.0.0.1:{}/readyz", c2.metrics_port))
    });
    assert_eq!(checks().len(), 1, "no second health check");
    let attached: Vec<_> = traffic_of(&e.records(), "eu").iter().map(|r| r.health_check_id.clone()).collect();
    assert_eq!(attached, [Some(id.clone()), Some(id.clone())], "the restart keeps the check on both records");
    // Converged: plan sees the attached checks, and explain shows their status.
    let (ok, out, err) = e.oneshot("plan", &args);
    assert!(ok && out.contains("no changes"), "{out}{err}");
    let (ok, out, err) = e.oneshot("explain", &[&["h0.example.com"][..], &args[..]].concat());
    assert!(ok, "{err}");
    assert!(out.contains(&format!("Route53 health check {id} for eu-lb.example.net: healthy")), "{out}");
}

/// A host removed while weir was down: the restarted controller finds its records through the
/// ownership TXT (full listing at start) and deletes exactly them; the other cluster's records at the
/// same name stay. One host per cluster here: moto deletes a set identifier's records under every name
/// (docs/aws.md), so a cluster with several hosts would lose the others too on moto, not on Route53.
#[test]
fn records_of_a_host_removed_while_down_are_deleted_after_restart() {
    let e = env();
    let mut eu = e.controller("eu", 1, e.moto.endpoint(), &[], "weir-eu-1");
    let _us = e.controller("us", 1, e.moto.endpoint(), &[], "weir-us");
    e.wait_published("eu", 1, 50);
    let before = e.wait_published("us", 1, 50);
    e.wait_acked("eu", 50);
    eu.proc.kill();
    // The Ingress goes away while eu is down.
    let manifests = e.dir.path().join("manifests-eu");
    write_manifests(&manifests, 0, "eu-lb.example.net");
    let _eu2 = e.controller("eu", 0, e.moto.endpoint(), &[], "weir-eu-2");
    let after = wait_for("eu's records deleted", T, || {
        let recs = e.records();
        recs.iter().all(|r| r.key.set_identifier != "eu").then_some(recs)
    });
    let us = |recs: &[RecordSet]| recs.iter().filter(|r| r.key.set_identifier == "us").cloned().collect::<Vec<_>>();
    assert_eq!(us(&before), us(&after), "the other cluster's records at the same name stay");
    assert_eq!(us(&after).len(), 2);
}

/// Two clusters drain one after the other: the second drain must not publish the last non-zero weight
/// of the name as 0 (Route53 would then split equally), even though its cached copy of the other
/// cluster's record is from before the first drain.
#[test]
fn the_all_zero_guard_sees_the_other_clusters_fresh() {
    let e = env();
    let eu = e.controller("eu", 1, e.moto.endpoint(), &[], "weir-eu");
    let _us = e.controller("us", 1, e.moto.endpoint(), &[], "weir-us");
    e.wait_published("eu", 1, 50);
    e.wait_published("us", 1, 50);
    e.wait_acked("eu", 50);
    e.set_desired("us", 0);
    e.wait_published("us", 1, 0);
    e.wait_acked("us", 0);
    e.set_desired("eu", 0);
    wait_for("eu's drain refused by the all-zero guard", T, || {
        let body = eu.metrics()?;
        (metric(&body, "weir_invalid_input_total", &[("kind", "all_zero_guard")])? >= 1.0).then_some(())
    });
    let recs = e.records();
    let eu_rec = traffic_of(&recs, "eu");
    assert_eq!(eu_rec[0].weight, 50, "the last non-zero weight of the name is kept");
    assert_eq!(e.attr("eu", "CurrentWeight"), "N:50", "not acknowledged while held back");
}

/// Both clusters asked to drain at once, with Route53 slowed by throttling so that their passes
/// overlap: the drain claim in the table lets one drain; the other keeps serving at its weight (not
/// acknowledged, its refusal counted) and no host is ever all zero. Bringing the first back lets the
/// second drain.
#[test]
fn both_clusters_drained_at_once_keep_one_serving() {
    let e = env();
    let proxy = FaultProxy::start(e.moto.port, 0);
    // A host held by the all-zero guard is planned again at the next resync.
    let eu = e.controller("eu", 3, proxy.endpoint(), &["--resync-interval", "2s"], "weir-eu");
    let us = e.controller("us", 3, proxy.endpoint(), &["--resync-interval", "2s"], "weir-us");
    for c in ["eu", "us"] {
        e.wait_published(c, 3, 50);
        e.wait_acked(c, 50);
    }
    proxy.state.percent.store(40, Ordering::SeqCst);
    e.set_desired("eu", 0);
    e.set_desired("us", 0);
    // No host is ever all zero: checked every 100 ms for 15 s under throttling, then without it
    // until one cluster has acknowledged 0.
    let no_host_all_zero = || {
        let recs = e.records();
        for host in (0..3).map(|i| format!("h{i}.example.com")) {
            let weights: Vec<u8> = recs
                .iter()
                .filter(|r| r.key.name == host && r.key.rtype != RecordType::Txt)
                .map(|r| r.weight)
                .collect();
            assert!(weights.iter().any(|w| *w > 0), "{host} is all zero: {weights:?}");
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        no_host_all_zero();
        std::thread::sleep(Duration::from_millis(100));
    }
    proxy.state.percent.store(0, Ordering::SeqCst);
    wait_for("one cluster acknowledged 0", T, || {
        no_host_all_zero();
        (e.attr("eu", "CurrentWeight") == "N:0" || e.attr("us", "CurrentWeight") == "N:0").then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    no_host_all_zero();
    let (winner, loser, loser_proc) =
        if e.attr("eu", "CurrentWeight") == "N:0" { ("eu", "us", &us) } else { ("us", "eu", &eu) };
    assert_eq!(e.attr(loser, "CurrentWeight"), "N:50", "the other is not acknowledged");
    assert!(traffic_of(&e.records(), loser).iter().all(|r| r.weight == 50), "and keeps serving");
    let body = loser_proc.metrics().unwrap();
    let refusals = metric(&body, "weir_invalid_input_total", &[("kind", "min_serving_clusters")]).unwrap_or(0.0)
        + metric(&body, "weir_invalid_input_total", &[("kind", "all_zero_guard")]).unwrap_or(0.0);
    assert!(refusals >= 1.0, "the kept drain is counted:\n{body}");
    // The operator brings the winner back: the loser drains and acknowledges 0.
    e.set_desired(winner, 50);
    e.wait_published(winner, 3, 50);
    e.wait_published(loser, 3, 0);
    e.wait_acked(loser, 0);
    e.wait_acked(winner, 50);
}
