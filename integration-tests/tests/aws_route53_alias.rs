//! ALIAS records (issue 12, item 1) with the real binary against moto_server through the real SDK:
//! targets that are AWS load balancers (ALB, NLB, dual-stack, at the zone apex) become weighted ALIAS
//! A/AAAA records with the load balancer's canonical hosted zone id; other targets and load balancers
//! of unknown regions stay CNAMEs; and a CNAME switches to an ALIAS with no poll ever finding the name
//! without an answer.

use std::path::Path;
use std::time::Duration;

use integration_tests::aws::{create_table, create_zone, dynamodb, route53, zone_records, Moto};
use integration_tests::wait_for;
use integration_tests::weir_aws::{traffic_of, txt_of, Controller, ControllerSpec, TABLE};
use weir::dns::record::{RecordSet, RecordType};

const T: Duration = Duration::from_secs(90);

/// One Ingress per (host, load-balancer hostname), each with a ready backend.
fn write_manifests(dir: &Path, hosts: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut text = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: app, namespace: web}\nspec:\n  selector: {app: app}\n  ports: [{port: 80, targetPort: 8080}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: app-1\n  namespace: web\n  labels: {kubernetes.io/service-name: app}\naddressType: IPv4\nendpoints:\n  - addresses: [10.0.0.1]\n    conditions: {ready: true}\nports: [{port: 8080, protocol: TCP}]\n",
    );
    for (i, (host, lb)) in hosts.iter().enumerate() {
        text.push_str(&format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: h{i}\n  namespace: web\nspec:\n  rules:\n    - host: {host}\n      http:\n        paths:\n          - path: /\n            pathType: Prefix\n            backend: {{service: {{name: app, port: {{number: 80}}}}}}\nstatus:\n  loadBalancer:\n    ingress:\n      - hostname: {lb}\n"
        ));
    }
    std::fs::write(dir.join("manifests.yaml"), text).unwrap();
}

struct Env {
    dir: tempfile::TempDir,
    moto: Moto,
    rt: tokio::runtime::Runtime,
    r53: weir::aws::aws_sdk_route53::Client,
    zone: String,
}

fn env(hosts: &[(&str, &str)]) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (r53, zone) = rt.block_on(async {
        create_table(&dynamodb(&moto.endpoint()).await, TABLE).await;
        let r53 = route53(&moto.endpoint()).await;
        let zone = create_zone(&r53, "example.com").await;
        (r53, zone)
    });
    write_manifests(&dir.path().join("manifests"), hosts);
    Env { dir, moto, rt, r53, zone }
}

impl Env {
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

    fn records(&self) -> Vec<RecordSet> {
        self.rt.block_on(zone_records(&self.r53, &self.zone))
    }
}

/// (type, alias zone id, evaluate target health, target) of `cluster`'s traffic records at `name`.
fn published(records: &[RecordSet], name: &str) -> Vec<(RecordType, Option<String>, Option<bool>, String)> {
    traffic_of(records, "eu")
        .into_iter()
        .filter(|r| r.key.name == name)
        .map(|r| {
            (
                r.key.rtype,
                r.alias.as_ref().map(|a| a.hosted_zone_id.clone()),
                r.alias.as_ref().map(|a| a.evaluate_target_health),
                r.values[0].clone(),
            )
        })
        .collect()
}

#[test]
fn load_balancer_targets_become_weighted_alias_records() {
    let alb = "k8s-web-1234.eu-west-1.elb.amazonaws.com";
    let nlb = "nlb-5678.elb.us-east-1.amazonaws.com";
    let dual = "dualstack.k8s-ds-9.us-west-2.elb.amazonaws.com";
    let moon = "lb-1.xx-moon-1.elb.amazonaws.com";
    let env = env(&[
        ("alb.example.com", alb),
        ("nlb.example.com", nlb),
        ("ds.example.com", dual),
        ("example.com", alb),
        ("moon.example.com", moon),
        ("plain.example.com", "lb.example.net"),
    ]);
    let mut c = env.controller(&[], "weir-alias");
    let records = wait_for("six hosts published with their TXT", T, || {
        let r = env.records();
        (traffic_of(&r, "eu").len() == 7 && txt_of(&r, "eu").len() == 6).then_some(r)
    });
    let alias = |zone: &str, target: &str| (RecordType::A, Some(zone.to_string()), Some(true), target.to_string());
    assert_eq!(published(&records, "alb.example.com"), [alias("Z32O12XQLNTSW2", alb)]);
    assert_eq!(published(&records, "nlb.example.com"), [alias("Z26RNL4JYFTOTI", nlb)]);
    assert_eq!(
        published(&records, "ds.example.com"),
        [alias("Z1H1FL5HABSF5", dual), (RecordType::Aaaa, Some("Z1H1FL5HABSF5".into()), Some(true), dual.into())]
    );
    // The apex can only be published as an ALIAS.
    assert_eq!(published(&records, "example.com"), [alias("Z32O12XQLNTSW2", alb)]);
    // Unknown region: a CNAME (and a warning), not an ALIAS with a wrong zone id.
    assert_eq!(published(&records, "moon.example.com"), [(RecordType::Cname, None, None, moon.to_string())]);
    assert_eq!(
        published(&records, "plain.example.com"),
        [(RecordType::Cname, None, None, "lb.example.net".to_string())]
    );
    // Same set identifier and weight on every traffic record, and the ownership TXT beside each.
    assert!(traffic_of(&records, "eu").iter().all(|r| r.weight == 60), "{records:#?}");
    assert!(records.iter().any(|r| r.key.name == "_weir.example.com" && r.key.rtype == RecordType::Txt));
    wait_for("the unknown-region warning", T, || c.proc.log().contains("no canonical hosted zone").then_some(()));
    c.proc.terminate(Duration::from_secs(10));

    // --evaluate-target-health=false is applied in place.
    let mut c = env.controller(&["--evaluate-target-health=false"], "weir-alias-no-eth");
    wait_for("EvaluateTargetHealth off", T, || {
        let r = env.records();
        (published(&r, "alb.example.com") == [(RecordType::A, Some("Z32O12XQLNTSW2".into()), Some(false), alb.into())])
            .then_some(())
    });
    c.proc.terminate(Duration::from_secs(10));
}

#[test]
fn cname_switches_to_alias_without_a_gap() {
    let alb = "k8s-web-1234.eu-west-1.elb.amazonaws.com";
    let env = env(&[("shop.example.com", alb)]);
    let mut c = env.controller(&["--prefer-cname"], "weir-prefer-cname");
    wait_for("the CNAME", T, || {
        let r = env.records();
        (published(&r, "shop.example.com") == [(RecordType::Cname, None, None, alb.to_string())]).then_some(())
    });
    c.proc.terminate(Duration::from_secs(10));

    let _c = env.controller(&[], "weir-alias-switch");
    let mut polls = 0;
    let deadline = std::time::Instant::now() + T;
    loop {
        let r = env.records();
        let now = published(&r, "shop.example.com");
        polls += 1;
        assert!(!now.is_empty(), "poll {polls}: shop.example.com has no record of eu: {r:#?}");
        if now == [(RecordType::A, Some("Z32O12XQLNTSW2".into()), Some(true), alb.to_string())] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no switch to ALIAS: {now:?}");
    }
    assert!(polls > 1, "the switch was not observed in progress");
    // (The ownership TXT is not checked here: moto's DELETE of `shop CNAME [eu]` removes every record
    // with set identifier eu, the TXT included; Route53 removes exactly the named record set.)
}
