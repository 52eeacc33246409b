//! Several hosted zones (issue 12, item 2) with the real binary against moto_server through the real
//! SDK: zones found from the binding domain (a parent, a delegated child and a private twin of the
//! parent), each host in the zone with the longest matching name and in both twins; `--zone-type`
//! filtering; a host in no managed zone refused for itself (metric, `weir explain`) without blocking
//! the ack; `weir plan` per zone.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use integration_tests::aws::{aws_env, create_table, create_zone, dynamodb, item_attr, route53, zone_records, Moto};
use integration_tests::weir_aws::{traffic_of, txt_of, Controller, ControllerSpec, DOMAIN, TABLE};
use integration_tests::{metric, run, wait_for, weir_bin};
use weir::aws::aws_sdk_dynamodb::types::AttributeValue;
use weir::dns::record::RecordSet;

const T: Duration = Duration::from_secs(90);

/// One Ingress per host on one load balancer, each with a ready backend.
fn write_manifests(dir: &Path, hosts: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut text = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: app, namespace: web}\nspec:\n  selector: {app: app}\n  ports: [{port: 80, targetPort: 8080}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: app-1\n  namespace: web\n  labels: {kubernetes.io/service-name: app}\naddressType: IPv4\nendpoints:\n  - addresses: [10.0.0.1]\n    conditions: {ready: true}\nports: [{port: 8080, protocol: TCP}]\n",
    );
    for (i, host) in hosts.iter().enumerate() {
        text.push_str(&format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: h{i}\n  namespace: web\nspec:\n  rules:\n    - host: {host}\n      http:\n        paths:\n          - path: /\n            pathType: Prefix\n            backend: {{service: {{name: app, port: {{number: 80}}}}}}\nstatus:\n  loadBalancer:\n    ingress:\n      - hostname: lb.example.net\n"
        ));
    }
    std::fs::write(dir.join("manifests.yaml"), text).unwrap();
}

struct Env {
    dir: tempfile::TempDir,
    moto: Moto,
    rt: tokio::runtime::Runtime,
    r53: weir::aws::aws_sdk_route53::Client,
    ddb: weir::aws::aws_sdk_dynamodb::Client,
    /// example.com public, example.com private, eu.example.com public (delegated child), example.org.
    public: String,
    private: String,
    child: String,
    other: String,
}

const HOSTS: &[&str] = &["www.example.com", "api.eu.example.com"];

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (r53, ddb, public, private, child, other) = rt.block_on(async {
        let ddb = dynamodb(&moto.endpoint()).await;
        create_table(&ddb, TABLE).await;
        let r53 = route53(&moto.endpoint()).await;
        let public = create_zone(&r53, "example.com").await;
        let private = r53
            .create_hosted_zone()
            .name("example.com")
            .caller_reference("private-example-com")
            .hosted_zone_config(
                weir::aws::aws_sdk_route53::types::HostedZoneConfig::builder().private_zone(true).build(),
            )
            .vpc(
                weir::aws::aws_sdk_route53::types::Vpc::builder()
                    .vpc_id("vpc-0test")
                    .vpc_region(weir::aws::aws_sdk_route53::types::VpcRegion::EuWest1)
                    .build(),
            )
            .send()
            .await
            .expect("create the private zone")
            .hosted_zone()
            .unwrap()
            .id()
            .trim_start_matches("/hostedzone/")
            .to_string();
        let child = create_zone(&r53, "eu.example.com").await;
        let other = create_zone(&r53, "example.org").await;
        (r53, ddb, public, private, child, other)
    });
    write_manifests(&dir.path().join("manifests"), HOSTS);
    Env { dir, moto, rt, r53, ddb, public, private, child, other }
}

impl Env {
    /// A controller on `--hosted-zone-id zone` (empty: found from the binding domain).
    fn controller(&self, zone: &str, extra: &[&str], log: &str) -> Controller {
        Controller::start(
            ControllerSpec {
                cluster: "eu",
                manifests: self.dir.path().join("manifests"),
                endpoint: self.moto.endpoint(),
                zone,
                initial_weight: 60,
                extra: extra.iter().map(|s| s.to_string()).collect(),
            },
            self.dir.path(),
            log,
        )
    }

    fn records(&self, zone: &str) -> Vec<RecordSet> {
        self.rt.block_on(zone_records(&self.r53, zone))
    }

    /// (host, weight) of eu's traffic records in `zone`.
    fn published(&self, zone: &str) -> Vec<(String, u8)> {
        traffic_of(&self.records(zone), "eu").iter().map(|r| (r.key.name.clone(), r.weight)).collect()
    }

    fn owned(&self, zone: &str) -> Vec<String> {
        txt_of(&self.records(zone), "eu").iter().map(|r| r.key.name.clone()).collect()
    }

    fn current_weight(&self) -> String {
        self.rt.block_on(item_attr(&self.ddb, TABLE, "eu", "CurrentWeight"))
    }

    fn set_desired(&self, weight: u8) {
        self.rt.block_on(async {
            self.ddb
                .update_item()
                .table_name(TABLE)
                .key("ClusterName", AttributeValue::S("eu".into()))
                .update_expression("SET DesiredWeight = :d")
                .expression_attribute_values(":d", AttributeValue::N(weight.to_string()))
                .send()
                .await
                .unwrap();
        });
    }

    /// `weir plan` or `weir explain` on the same inputs, JSON output.
    fn oneshot(&self, args: &[&str]) -> serde_json::Value {
        let mut cmd = Command::new(weir_bin());
        cmd.args(args)
            .args(["--provider", "file", "--manifests"])
            .arg(self.dir.path().join("manifests"))
            .args(["--cluster-name", "eu", "--backend-type", "dynamodb", "--table-name", TABLE])
            .args(["--dns-provider", "route53", "--binding-domain", DOMAIN, "--output", "json"]);
        for (k, v) in aws_env(&self.moto.endpoint()) {
            cmd.env(k, v);
        }
        let (ok, out, err) = run(&mut cmd);
        assert!(ok, "weir {args:?} failed: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }
}

fn pairs(items: &[(&str, u8)]) -> Vec<(String, u8)> {
    items.iter().map(|(h, w)| (h.to_string(), *w)).collect()
}

#[test]
fn hosts_go_to_the_longest_zone_and_to_both_split_horizon_twins() {
    let env = env();
    // Before anything is published, `weir plan` shows each zone's changes.
    let plan = env.oneshot(&["plan"]);
    let zones = plan["zones"].as_array().expect("a plan per zone");
    let per_zone: Vec<(String, bool, Vec<String>)> = zones
        .iter()
        .map(|z| {
            let hosts = z["hosts"].as_array().unwrap().iter().map(|h| h["host"].as_str().unwrap().to_string());
            (z["zone"]["id"].as_str().unwrap().to_string(), z["zone"]["private"].as_bool().unwrap(), hosts.collect())
        })
        .collect();
    let mut expected = vec![
        (env.public.clone(), false, vec!["www.example.com".to_string()]),
        (env.private.clone(), true, vec!["www.example.com".to_string()]),
        (env.child.clone(), false, vec!["api.eu.example.com".to_string()]),
    ];
    expected.sort();
    let mut got = per_zone.clone();
    got.sort();
    assert_eq!(got, expected, "{plan:#}");
    assert!(!per_zone.iter().any(|(id, _, _)| id == &env.other), "example.org is outside the binding domain");

    let mut c = env.controller("", &[], "weir-zones");
    wait_for("www in both twins, api in the child", T, || {
        (env.published(&env.public) == pairs(&[("www.example.com", 60)])
            && env.published(&env.private) == pairs(&[("www.example.com", 60)])
            && env.published(&env.child) == pairs(&[("api.eu.example.com", 60)]))
        .then_some(())
    });
    // Ownership TXT per zone, beside each record.
    assert_eq!(env.owned(&env.public), ["_weir.www.example.com"]);
    assert_eq!(env.owned(&env.private), ["_weir.www.example.com"]);
    assert_eq!(env.owned(&env.child), ["_weir.api.eu.example.com"]);
    assert!(env.published(&env.other).is_empty());

    // A weight change lands in every zone and is acknowledged.
    env.set_desired(40);
    wait_for("weight 40 everywhere and acknowledged", T, || {
        (env.published(&env.public) == pairs(&[("www.example.com", 40)])
            && env.published(&env.private) == pairs(&[("www.example.com", 40)])
            && env.published(&env.child) == pairs(&[("api.eu.example.com", 40)])
            && env.current_weight() == "N:40")
            .then_some(())
    });
    let plan = env.oneshot(&["plan"]);
    assert!(plan["hosts"].as_array().is_none_or(|h| h.is_empty()), "converged: {plan:#}");
    c.proc.terminate(Duration::from_secs(10));
}

#[test]
fn zone_type_filters_and_a_host_in_no_zone_does_not_block_the_ack() {
    let env = env();
    // --zone-type private: only the private twin of example.com is used; with the public child
    // filtered out, api.eu.example.com's longest managed zone is that private example.com too.
    let mut c = env.controller("", &["--zone-type", "private"], "weir-zones-private");
    wait_for("both hosts in the private zone only", T, || {
        (env.published(&env.private) == pairs(&[("api.eu.example.com", 60), ("www.example.com", 60)])).then_some(())
    });
    assert!(env.published(&env.public).is_empty(), "the public twin is filtered out");
    assert!(env.published(&env.child).is_empty(), "the public child is filtered out");
    c.proc.terminate(Duration::from_secs(10));

    // Only the child zone: www.example.com is in no managed zone. It is refused (metric, log); api is
    // published; a weight change is acknowledged all the same.
    let c = env.controller(&env.child, &[], "weir-zones-child");
    wait_for("api in the child", T, || {
        (env.published(&env.child) == pairs(&[("api.eu.example.com", 60)])).then_some(())
    });
    let refused = wait_for("no_zone counted", T, || {
        metric(&c.metrics()?, "weir_invalid_input_total", &[("kind", "no_zone")]).filter(|v| *v >= 1.0)
    });
    assert_eq!(refused, 1.0, "one host, counted once");
    assert!(c.proc.log().contains("www.example.com is in none of the hosted zones"), "{}", c.proc.log());
    env.set_desired(30);
    wait_for("acknowledged although a host has no zone", T, || {
        (env.published(&env.child) == pairs(&[("api.eu.example.com", 30)]) && env.current_weight() == "N:30")
            .then_some(())
    });
    let blocked = metric(&c.metrics().unwrap(), "weir_ack_blocked_hosts", &[("cluster", "eu")]);
    assert_eq!(blocked, Some(0.0), "a host in no zone is refused, not held");
    assert!(env.published(&env.public).is_empty(), "nothing written outside the managed zones");
    let again = metric(&c.metrics().unwrap(), "weir_invalid_input_total", &[("kind", "no_zone")]);
    assert_eq!(again, Some(1.0), "counted once while it lasts, not on every pass");

    // weir explain shows why the host is not published.
    let e = env.oneshot(&["explain", "www.example.com", "--hosted-zone-id", &env.child]);
    let refusals = e["refusals"].as_array().expect("refusals");
    assert!(refusals.iter().any(|r| r["kind"] == "no_zone"), "{e:#}");
    assert!(e["notes"].as_array().unwrap().iter().any(|n| n.as_str().unwrap().contains("none of the hosted zones")));
    // And weir plan lists it among the refusals, per host.
    let plan = env.oneshot(&["plan", "--hosted-zone-id", &env.child]);
    let input = plan["input_refusals"].as_array().unwrap();
    assert_eq!(input.iter().filter(|r| r["kind"] == "no_zone").count(), 1, "{plan:#}");
    drop(c);

    // An explicit --hosted-zone-id with --zone-type public: the private zone id is dropped, and with
    // nothing left weir refuses to start.
    let mut cmd = Command::new(weir_bin());
    cmd.args(["plan", "--provider", "file", "--manifests"])
        .arg(env.dir.path().join("manifests"))
        .args(["--cluster-name", "eu", "--backend-type", "dynamodb", "--table-name", TABLE])
        .args(["--dns-provider", "route53", "--hosted-zone-id", &env.private, "--zone-type", "public"]);
    for (k, v) in aws_env(&env.moto.endpoint()) {
        cmd.env(k, v);
    }
    let (ok, _, err) = run(&mut cmd);
    assert!(!ok && err.contains("--zone-type"), "{err}");

    // Repeated --hosted-zone-id: exactly those zones.
    let mut c = env.controller(&env.child, &["--hosted-zone-id", &env.public], "weir-zones-ids");
    wait_for("www in the public parent, api in the child", T, || {
        (env.published(&env.public) == pairs(&[("www.example.com", 30)])
            && env.published(&env.child) == pairs(&[("api.eu.example.com", 30)]))
        .then_some(())
    });
    c.proc.terminate(Duration::from_secs(10));
}

#[test]
fn one_health_check_per_target_is_attached_in_every_zone() {
    let env = env();
    let args = ["--health-check-path", "/healthz", "--health-check-port", "443", "--health-check-protocol", "HTTPS"];
    let mut c = env.controller("", &args, "weir-zones-health");
    let with_check = |zone: &str| -> Vec<(String, Option<String>)> {
        traffic_of(&env.records(zone), "eu").iter().map(|r| (r.key.name.clone(), r.health_check_id.clone())).collect()
    };
    let (public, private, child) = wait_for("every record with its health check", T, || {
        let (p, v, c) = (with_check(&env.public), with_check(&env.private), with_check(&env.child));
        let all = p.iter().chain(&v).chain(&c).collect::<Vec<_>>();
        (all.len() == 3 && all.iter().all(|(_, id)| id.is_some())).then_some((p, v, c))
    });
    // One target (lb.example.net): one check, the same id in every zone.
    let checks = env.rt.block_on(async { env.r53.list_health_checks().send().await.unwrap().health_checks().to_vec() });
    assert_eq!(checks.len(), 1, "{checks:#?}");
    let id = Some(checks[0].id().to_string());
    assert_eq!(public, [("www.example.com".to_string(), id.clone())]);
    assert_eq!(private, [("www.example.com".to_string(), id.clone())]);
    assert_eq!(child, [("api.eu.example.com".to_string(), id)]);
    c.proc.terminate(Duration::from_secs(10));
}
