//! Ramps, overrides and history on DynamoDB (moto): `weir controller --backend-type dynamodb
//! --history-table` and `weir weights` through the real AWS SDK, the gate a Prometheus-API server.

use std::process::Command;
use std::time::Duration;

use integration_tests::aws::{
    aws_env, create_table, create_zone, dynamodb, item_attr, route53, sdk, zone_records, Moto,
};
use integration_tests::gate::{GateMode, GateServer};
use integration_tests::weir_aws::{traffic_of, write_manifests, Controller, ControllerSpec, TABLE};
use integration_tests::{free_port, run, wait_for, weir_bin};
use serde_json::Value;
use weir::aws::aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};

const HISTORY: &str = "traffic-controller-history";
const T: Duration = Duration::from_secs(60);

fn weights(endpoint: &str, args: &[&str], history: &str) -> (bool, String, String) {
    let mut cmd = Command::new(weir_bin());
    cmd.arg("weights").args(args).args(["--table-name", TABLE, "--history-table", history]);
    for (k, v) in aws_env(endpoint) {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

fn try_row(endpoint: &str) -> Option<Value> {
    let (ok, out, _) = weights(endpoint, &["get", "--cluster-name", "eu", "--output", "json"], HISTORY);
    ok.then(|| serde_json::from_str(&out).unwrap())
}

fn row(endpoint: &str) -> Value {
    try_row(endpoint).expect("eu's row")
}

#[test]
fn dynamodb_ramps_abort_and_revert_with_history() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    let endpoint = moto.endpoint();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (ddb, r53, zone) = rt.block_on(async {
        let ddb = dynamodb(&endpoint).await;
        create_table(&ddb, TABLE).await;
        ddb.create_table()
            .table_name(HISTORY)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("ClusterName")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .unwrap(),
            )
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("ChangedAt")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .unwrap(),
            )
            .key_schema(
                KeySchemaElement::builder().attribute_name("ClusterName").key_type(KeyType::Hash).build().unwrap(),
            )
            .key_schema(
                KeySchemaElement::builder().attribute_name("ChangedAt").key_type(KeyType::Range).build().unwrap(),
            )
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
            .unwrap();
        let r53 = route53(&endpoint).await;
        let zone = create_zone(&r53, "example.com").await;
        (ddb, r53, zone)
    });
    let manifests = dir.path().join("manifests");
    write_manifests(&manifests, 2, "eu-lb.example.net");
    let spec = |extra: Vec<String>| ControllerSpec {
        cluster: "eu",
        manifests: manifests.clone(),
        endpoint: endpoint.clone(),
        zone: &zone,
        initial_weight: 100,
        extra,
    };

    // A history table that does not exist: a clear startup error.
    let mut bad =
        Controller::start(spec(vec!["--history-table".into(), "nope".into()]), dir.path(), "weir-bad-history");
    let t0 = std::time::Instant::now();
    wait_for("the controller to refuse to start", T, || (!bad.proc.is_running()).then_some(()));
    eprintln!("refused after {:?}", t0.elapsed());
    let log = bad.proc.log();
    assert!(log.contains("history table") && log.contains("nope"), "{log}");
    let (ok, _, err) = weights(&endpoint, &["history", "--cluster-name", "eu"], "nope");
    assert!(!ok && err.contains("history table") && err.contains("nope"), "{err}");

    let _eu = Controller::start(spec(vec!["--history-table".into(), HISTORY.into()]), dir.path(), "weir-eu");
    wait_for("eu acknowledged at 100", T, || (try_row(&endpoint)?["CurrentWeight"] == 100).then_some(()));
    let gate = GateServer::start(GateMode::Value(0.0));
    let url = gate.url();
    let ramp = |to: &str| {
        let args = ["ramp", "--cluster-name", "eu", "--to", to, "--step", "25", "--every", "1s"];
        let gate_args = ["--gate-url", url.as_str(), "--gate-query", "up", "--gate-max", "0.5"];
        let all: Vec<&str> = args.iter().chain(gate_args.iter()).copied().collect();
        weights(&endpoint, &all, HISTORY)
    };
    let (ok, out, err) = ramp("50");
    assert!(ok, "{out}{err}");
    let done = wait_for("the ramp completed", T, || {
        let r = row(&endpoint);
        r["Status"].as_str().unwrap().contains("completed").then_some(r)
    });
    assert_eq!(done["CurrentWeight"], 50);
    // Route53 carries the ramp's last step.
    let records = rt.block_on(zone_records(&r53, &zone));
    let eu: Vec<_> = traffic_of(&records, "eu");
    assert!(!eu.is_empty() && eu.iter().all(|r| r.weight == 50), "{eu:?}");

    // Unhealthy after the first step: aborted and reverted to 50.
    gate.set(GateMode::Value(0.9));
    let (ok, out, err) = ramp("0");
    assert!(ok, "{out}{err}");
    let r = wait_for("the abort", T, || {
        let r = row(&endpoint);
        r["Status"].as_str().unwrap().contains("aborted").then_some(r)
    });
    assert!(r["Status"].as_str().unwrap().contains("aborted at 25: gate 0.9 > 0.5"), "{r}");
    wait_for("reverted", T, || (row(&endpoint)["CurrentWeight"] == 50).then_some(()));

    let (ok, out, err) = weights(&endpoint, &["history", "--cluster-name", "eu", "--output", "json"], HISTORY);
    assert!(ok, "{err}");
    let h: Vec<Value> = serde_json::from_str(&out).unwrap();
    let desired: Vec<(&str, &str, &str)> = h
        .iter()
        .filter(|e| e["Field"] == "DesiredWeight")
        .map(|e| (e["Before"].as_str().unwrap(), e["After"].as_str().unwrap(), e["Cause"].as_str().unwrap()))
        .collect();
    assert_eq!(
        desired,
        [("100", "75", "ramp_step"), ("75", "50", "ramp_step"), ("50", "25", "ramp_step"), ("25", "50", "ramp_abort")],
        "{h:#?}"
    );
    assert!(h.iter().filter(|e| e["Field"] == "CurrentWeight").count() >= 4, "acks recorded: {h:#?}");
    // The actor is the caller's AWS identity, as STS tells it to anyone with these credentials.
    let arn = rt.block_on(async {
        let sts = weir::aws::aws_sdk_sts::Client::new(&sdk(&endpoint).await);
        sts.get_caller_identity().send().await.unwrap().arn.unwrap()
    });
    assert!(arn.starts_with("arn:aws:"), "{arn}");
    let controller = format!("{arn} (weir controller of eu)");
    assert!(h.iter().all(|e| e["Actor"] == controller.as_str()), "every change here is the controller's: {h:#?}");

    // An override with --for on DynamoDB reverts too.
    let (ok, out, err) =
        weights(&endpoint, &["set", "--cluster-name", "eu", "--desired", "10", "--for", "2s"], HISTORY);
    assert!(ok, "{out}{err}");
    wait_for("the override applied", T, || (row(&endpoint)["CurrentWeight"] == 10).then_some(()));
    wait_for("the override reverted", T, || {
        let r = row(&endpoint);
        (r["CurrentWeight"] == 50 && r.get("Plan").is_none()).then_some(())
    });
    let history = || -> Vec<Value> {
        let (ok, out, err) = weights(&endpoint, &["history", "--cluster-name", "eu", "--output", "json"], HISTORY);
        assert!(ok, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let h = history();
    let by = |cause: &str| h.iter().find(|e| e["Cause"] == cause).map(|e| e["Actor"].as_str().unwrap().to_string());
    assert_eq!(by("override"), Some(format!("{arn} (weir weights)")), "{h:#?}");
    assert_eq!(by("revert"), Some(controller.clone()), "{h:#?}");

    // STS unreachable: the CLI still writes, naming the local user, and says why.
    let mut cmd = Command::new(weir_bin());
    cmd.args(["weights", "set", "--cluster-name", "eu", "--desired", "40", "--reason", "no sts"]).args([
        "--table-name",
        TABLE,
        "--history-table",
        HISTORY,
    ]);
    for (k, v) in aws_env(&endpoint) {
        cmd.env(k, v);
    }
    cmd.env("AWS_ENDPOINT_URL_STS", format!("http://127.0.0.1:{}", free_port()));
    let (ok, out, err) = run(&mut cmd);
    assert!(ok, "{out}{err}");
    assert!(err.contains("STS GetCallerIdentity failed"), "warned: {err}");
    let h = history();
    let set = h.iter().rev().find(|e| e["Reason"] == "no sts").expect("the set is in the history");
    let actor = set["Actor"].as_str().unwrap();
    assert!(actor.ends_with("(weir weights)") && !actor.starts_with("arn:"), "{actor}");
    wait_for("40 acknowledged", T, || (row(&endpoint)["CurrentWeight"] == 40).then_some(()));

    // The row and its history entry are one transaction: without the history table, the
    // controller's ack does not land either (before, the ack landed and its entry was lost).
    rt.block_on(ddb.delete_table().table_name(HISTORY).send()).unwrap();
    rt.block_on(
        ddb.update_item()
            .table_name(TABLE)
            .key("ClusterName", weir::aws::aws_sdk_dynamodb::types::AttributeValue::S("eu".into()))
            .update_expression("SET DesiredWeight = :d")
            .expression_attribute_values(":d", weir::aws::aws_sdk_dynamodb::types::AttributeValue::N("30".into()))
            .send(),
    )
    .unwrap();
    wait_for("30 in Route53", T, || {
        let records = rt.block_on(zone_records(&r53, &zone));
        let eu = traffic_of(&records, "eu").iter().map(|r| r.weight).collect::<Vec<_>>();
        (!eu.is_empty() && eu.iter().all(|w| *w == 30)).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(rt.block_on(item_attr(&ddb, TABLE, "eu", "CurrentWeight")), "N:40", "not acknowledged");
}
