//! Migration from external-dns (issue 12, item 4) with the real binary against moto_server through
//! the real SDK: records external-dns made (weighted, set identifier = cluster name) with its TXT
//! registry in each format are taken over in place by `--adopt-owner`, the name answered at every
//! poll through the adoption; another owner's records are left alone; `weir plan --adopt-owner` shows
//! what would be adopted.
//!
//! moto runs with Route53's exact weighted DELETE (`Moto::start_exact_deletes`): stock moto deletes
//! every record of a set identifier when asked to delete one, which Route53 does not do.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::aws::{aws_env, create_table, create_zone, dynamodb, route53, zone_records, Moto};
use integration_tests::weir_aws::{Controller, ControllerSpec, DOMAIN, TABLE};
use integration_tests::{run, weir_bin};
use weir::aws::aws_sdk_route53::types::{
    AliasTarget, Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};
use weir::dns::record::{RecordSet, RecordType};

const T: Duration = Duration::from_secs(90);
const ALB: &str = "k8s-web-1234.eu-west-1.elb.amazonaws.com";
const ALB_ZONE: &str = "Z32O12XQLNTSW2";

/// (host, Ingress target: an IP or a hostname).
const HOSTS: &[(&str, &str)] = &[
    ("new.example.com", "lb.example.net"),
    ("legacy.example.com", "192.0.2.10"),
    ("alias.example.com", ALB),
    ("pfx.example.com", "lb.example.net"),
    ("tpl.example.com", "lb.example.net"),
    ("theirs.example.com", "lb.example.net"),
];

fn write_manifests(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut text = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: app, namespace: web}\nspec:\n  selector: {app: app}\n  ports: [{port: 80, targetPort: 8080}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: app-1\n  namespace: web\n  labels: {kubernetes.io/service-name: app}\naddressType: IPv4\nendpoints:\n  - addresses: [10.0.0.1]\n    conditions: {ready: true}\nports: [{port: 8080, protocol: TCP}]\n",
    );
    for (i, (host, target)) in HOSTS.iter().enumerate() {
        let lb = if target.parse::<std::net::IpAddr>().is_ok() { "ip" } else { "hostname" };
        text.push_str(&format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: h{i}\n  namespace: web\nspec:\n  rules:\n    - host: {host}\n      http:\n        paths:\n          - path: /\n            pathType: Prefix\n            backend: {{service: {{name: app, port: {{number: 80}}}}}}\nstatus:\n  loadBalancer:\n    ingress:\n      - {lb}: {target}\n"
        ));
    }
    std::fs::write(dir.join("manifests.yaml"), text).unwrap();
}

fn weighted(name: &str, rtype: RrType, value: &str) -> ResourceRecordSet {
    ResourceRecordSet::builder()
        .name(name)
        .r#type(rtype)
        .set_identifier("eu")
        .weight(10)
        .ttl(300)
        .resource_records(ResourceRecord::builder().value(value).build().unwrap())
        .build()
        .unwrap()
}

/// external-dns's registry value, quoted as it writes it.
fn registry(owner: &str, host_index: usize) -> String {
    format!("\"heritage=external-dns,external-dns/owner={owner},external-dns/resource=ingress/web/h{host_index}\"")
}

/// What external-dns (owner `old`, one record of owner `someone-else`) left in the zone, each TXT
/// format once: the new `cname-` name; the old format at the record's own name (beside an A); the
/// legacy `cname-` name of an ALIAS A; `--txt-prefix txt.`; `--txt-suffix -%{record_type}`.
fn external_dns_records() -> Vec<ResourceRecordSet> {
    let alias = ResourceRecordSet::builder()
        .name("alias.example.com")
        .r#type(RrType::A)
        .set_identifier("eu")
        .weight(10)
        .alias_target(
            AliasTarget::builder()
                .hosted_zone_id(ALB_ZONE)
                .dns_name(format!("{ALB}."))
                .evaluate_target_health(true)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    vec![
        weighted("new.example.com", RrType::Cname, "lb.example.net"),
        weighted("cname-new.example.com", RrType::Txt, &registry("old", 0)),
        weighted("legacy.example.com", RrType::A, "192.0.2.10"),
        weighted("legacy.example.com", RrType::Txt, &registry("old", 1)),
        alias,
        weighted("cname-alias.example.com", RrType::Txt, &registry("old", 2)),
        weighted("pfx.example.com", RrType::Cname, "lb.example.net"),
        weighted("txt.cname-pfx.example.com", RrType::Txt, &registry("old", 3)),
        weighted("tpl.example.com", RrType::Cname, "lb.example.net"),
        weighted("tpl-cname.example.com", RrType::Txt, &registry("old", 4)),
        weighted("theirs.example.com", RrType::Cname, "lb.example.net"),
        weighted("cname-theirs.example.com", RrType::Txt, &registry("someone-else", 5)),
    ]
}

struct Env {
    dir: tempfile::TempDir,
    moto: Moto,
    rt: tokio::runtime::Runtime,
    r53: weir::aws::aws_sdk_route53::Client,
    zone: String,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start_exact_deletes(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (r53, zone) = rt.block_on(async {
        create_table(&dynamodb(&moto.endpoint()).await, TABLE).await;
        let r53 = route53(&moto.endpoint()).await;
        let zone = create_zone(&r53, DOMAIN).await;
        let changes = external_dns_records()
            .into_iter()
            .map(|rrs| Change::builder().action(ChangeAction::Create).resource_record_set(rrs).build().unwrap())
            .collect();
        r53.change_resource_record_sets()
            .hosted_zone_id(&zone)
            .change_batch(ChangeBatch::builder().set_changes(Some(changes)).build().unwrap())
            .send()
            .await
            .expect("external-dns's records");
        (r53, zone)
    });
    write_manifests(&dir.path().join("manifests"));
    Env { dir, moto, rt, r53, zone }
}

/// Per host: who owns it now (`weir`, `external-dns`, or `-`), and the weight of eu's traffic record
/// (`None`: no answer from eu).
fn ownership(records: &[RecordSet]) -> BTreeMap<String, (&'static str, Option<u8>)> {
    let by_name: BTreeMap<&str, Vec<&RecordSet>> = records.iter().fold(BTreeMap::new(), |mut m, r| {
        if r.key.set_identifier == "eu" {
            m.entry(r.key.name.as_str()).or_default().push(r);
        }
        m
    });
    let at = |name: &str| by_name.get(name).cloned().unwrap_or_default();
    HOSTS
        .iter()
        .map(|(host, _)| {
            let traffic = at(host).iter().filter(|r| r.key.rtype != RecordType::Txt).map(|r| r.weight).max();
            let registry_names = [
                host.to_string(),
                format!("cname-{host}"),
                format!("txt.cname-{host}"),
                host.replacen('.', "-cname.", 1),
            ];
            let external = registry_names.iter().any(|n| {
                at(n).iter().any(|r| {
                    r.key.rtype == RecordType::Txt && r.values.iter().any(|v| v.contains("heritage=external-dns"))
                })
            });
            let weir =
                at(&format!("_weir.{host}")).iter().any(|r| r.values.iter().any(|v| v.starts_with("heritage=weir")));
            let who = match (weir, external) {
                (true, false) => "weir",
                (false, true) => "external-dns",
                (true, true) => "both",
                (false, false) => "-",
            };
            (host.to_string(), (who, traffic))
        })
        .collect()
}

impl Env {
    fn records(&self) -> Vec<RecordSet> {
        self.rt.block_on(zone_records(&self.r53, &self.zone))
    }

    fn controller(&self, extra: &[&str], log: &str) -> Controller {
        Controller::start(
            ControllerSpec {
                cluster: "eu",
                manifests: self.dir.path().join("manifests"),
                endpoint: self.moto.endpoint(),
                zone: &self.zone,
                initial_weight: 60,
                extra: extra.iter().map(|s| s.to_string()).collect(),
            },
            self.dir.path(),
            log,
        )
    }

    fn plan(&self, extra: &[&str]) -> serde_json::Value {
        let mut cmd = Command::new(weir_bin());
        cmd.args(["plan", "--provider", "file", "--manifests"])
            .arg(self.dir.path().join("manifests"))
            .args([
                "--cluster-name",
                "eu",
                "--backend-type",
                "dynamodb",
                "--table-name",
                TABLE,
                "--initial-weight",
                "60",
            ])
            .args(["--dns-provider", "route53", "--hosted-zone-id", &self.zone, "--binding-domain", DOMAIN])
            .args(["--output", "json"])
            .args(extra);
        for (k, v) in aws_env(&self.moto.endpoint()) {
            cmd.env(k, v);
        }
        let (ok, out, err) = run(&mut cmd);
        assert!(ok, "weir plan failed: {err}");
        serde_json::from_str(&out).unwrap()
    }

    /// Runs a controller with `extra` until `adopted` are weir's, polling the zone all along: every
    /// host keeps an answer from eu at every poll. Returns the number of polls.
    fn adopt(&self, extra: &[&str], adopted: &[&str], log: &str) -> usize {
        let mut c = self.controller(extra, log);
        let deadline = Instant::now() + T;
        let mut polls = 0;
        loop {
            let now = ownership(&self.records());
            polls += 1;
            for (host, (who, weight)) in &now {
                assert!(weight.is_some(), "poll {polls}: {host} has no answer from eu ({who}): {now:?}");
                assert_ne!(*who, "-", "poll {polls}: {host} is owned by no one: {now:?}");
            }
            if adopted.iter().all(|h| now[*h] == ("weir", Some(60))) {
                break;
            }
            assert!(Instant::now() < deadline, "not adopted: {now:?}\n{}", c.proc.log());
        }
        c.proc.terminate(Duration::from_secs(10));
        polls
    }
}

#[test]
fn external_dns_records_of_each_txt_format_are_adopted_in_place() {
    let env = env();
    let before = ownership(&env.records());
    assert!(before.values().all(|o| *o == ("external-dns", Some(10))), "{before:?}");

    // weir plan shows what --adopt-owner would take over (and writes nothing).
    let plan = env.plan(&["--adopt-owner", "old"]);
    let mut shown: Vec<(String, String, Vec<String>)> = plan["adopted"]
        .as_array()
        .expect("adopted")
        .iter()
        .map(|a| {
            let names = a["registry_txt"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string());
            (a["host"].as_str().unwrap().into(), a["external_owner"].as_str().unwrap().into(), names.collect())
        })
        .collect();
    shown.sort();
    assert_eq!(
        shown,
        [
            ("alias.example.com".into(), "old".into(), vec!["cname-alias.example.com".to_string()]),
            ("legacy.example.com".into(), "old".into(), vec!["legacy.example.com".to_string()]),
            ("new.example.com".into(), "old".into(), vec!["cname-new.example.com".to_string()]),
        ]
    );
    assert_eq!(ownership(&env.records()), before, "weir plan wrote nothing");
    // Without --adopt-owner the same hosts are refused as not weir's.
    let plain = env.plan(&[]);
    assert!(plain.get("adopted").is_none(), "{plain:#}");
    assert_eq!(plain["refusals"].as_array().unwrap().iter().filter(|r| r["kind"] == "ownership").count(), 6);

    // No affix: the new format, the old format at the name, the legacy cname- of an ALIAS.
    let polls = env.adopt(
        &["--adopt-owner", "old"],
        &["new.example.com", "legacy.example.com", "alias.example.com"],
        "weir-adopt",
    );
    assert!(polls > 1, "the adoption was not observed in progress");
    let after = ownership(&env.records());
    for h in ["pfx.example.com", "tpl.example.com", "theirs.example.com"] {
        assert_eq!(after[h], ("external-dns", Some(10)), "{h} is left alone: {after:?}");
    }
    // The ALIAS stays an ALIAS (same zone id), the A stays an A.
    let records = env.records();
    let alias = records.iter().find(|r| r.key.name == "alias.example.com" && r.key.set_identifier == "eu").unwrap();
    assert_eq!(alias.alias.as_ref().map(|a| a.hosted_zone_id.as_str()), Some(ALB_ZONE));
    assert!(records.iter().any(|r| r.key.name == "legacy.example.com" && r.key.rtype == RecordType::A));
    assert!(!records.iter().any(|r| r.key.name == "legacy.example.com" && r.key.rtype == RecordType::Txt));

    // external-dns's --txt-prefix, then --txt-suffix with %{record_type}.
    env.adopt(&["--adopt-owner", "old", "--adopt-txt-prefix", "txt."], &["pfx.example.com"], "weir-adopt-prefix");
    env.adopt(
        &["--adopt-owner", "old", "--adopt-txt-suffix=-%{record_type}"],
        &["tpl.example.com"],
        "weir-adopt-suffix",
    );

    // Another owner's records are never touched, whatever is adopted.
    let end = ownership(&env.records());
    assert_eq!(end["theirs.example.com"], ("external-dns", Some(10)), "{end:?}");
    let records = env.records();
    assert!(records.iter().any(|r| r.key.name == "cname-theirs.example.com"));
    assert!(!records.iter().any(|r| r.key.name == "_weir.theirs.example.com"));
}
