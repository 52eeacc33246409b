//! The DynamoDB weight store against a real DynamoDB endpoint (moto_server): conditional create, ack
//! and set, and items that are not weights.

use integration_tests::aws::{create_table, dynamodb, item_attr, Moto};
use integration_tests::weir_aws::{Controller, ControllerSpec, TABLE};
use integration_tests::{metric, wait_for};
use std::time::Duration;
use weir::aws::aws_sdk_dynamodb::types::AttributeValue;
use weir::aws::Aws;
use weir::backends::dynamodb::DynamoStore;
use weir::backends::{AckOutcome, DrainClaim, StoreError, StoredWeight, WeightStore};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

#[test]
fn store_creates_acks_and_sets_conditionally() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    let rt = rt();
    rt.block_on(async {
        let client = dynamodb(&moto.endpoint()).await;
        create_table(&client, TABLE).await;
        let store = DynamoStore::new(client.clone(), TABLE, Aws::default());

        // Created when absent, with the initial weight.
        let row = store.ensure("eu", 30).await.unwrap();
        assert_eq!((row.desired.clone(), row.current.clone()), (StoredWeight::Valid(30), StoredWeight::Valid(30)));
        // Never overwrites an operator's row.
        client
            .update_item()
            .table_name(TABLE)
            .key("ClusterName", AttributeValue::S("eu".into()))
            .update_expression("SET DesiredWeight = :d")
            .expression_attribute_values(":d", AttributeValue::N("70".into()))
            .send()
            .await
            .unwrap();
        let row = store.ensure("eu", 0).await.unwrap();
        assert_eq!(row.desired, StoredWeight::Valid(70));
        assert_eq!(item_attr(&client, TABLE, "eu", "DesiredWeight").await, "N:70");

        // Ack only lands when DesiredWeight is still the applied value.
        assert_eq!(store.ack("eu", 30).await.unwrap(), AckOutcome::DesiredChanged);
        assert_eq!(item_attr(&client, TABLE, "eu", "CurrentWeight").await, "N:30");
        assert_eq!(store.ack("eu", 70).await.unwrap(), AckOutcome::Acknowledged);
        assert_eq!(item_attr(&client, TABLE, "eu", "CurrentWeight").await, "N:70");

        // Set says what it replaced; a missing row is an error, not a create.
        assert_eq!(store.set_desired("eu", 5).await.unwrap(), Some(StoredWeight::Valid(70)));
        assert_eq!(item_attr(&client, TABLE, "eu", "DesiredWeight").await, "N:5");
        assert!(matches!(store.set_desired("nowhere", 5).await, Err(StoreError::NotFound(_))));
        assert_eq!(item_attr(&client, TABLE, "nowhere", "DesiredWeight").await, "-");

        store.ensure("us", 100).await.unwrap();
        let rows = store.list().await.unwrap();
        let names: Vec<&str> = rows.iter().map(|r| r.cluster.as_str()).collect();
        assert_eq!(names, ["eu", "us"]);
        assert_eq!(store.get("us").await.unwrap().unwrap().desired, StoredWeight::Valid(100));
        assert_eq!(store.get("absent").await.unwrap(), None);
    });
}

#[test]
fn items_that_are_not_weights_are_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    let rt = rt();
    rt.block_on(async {
        let client = dynamodb(&moto.endpoint()).await;
        create_table(&client, TABLE).await;
        let put = |name: &str, desired: Option<AttributeValue>, current: Option<AttributeValue>| {
            let mut req = client.put_item().table_name(TABLE).item("ClusterName", AttributeValue::S(name.into()));
            if let Some(d) = desired {
                req = req.item("DesiredWeight", d);
            }
            if let Some(c) = current {
                req = req.item("CurrentWeight", c);
            }
            req.send()
        };
        put("string", Some(AttributeValue::S("50".into())), Some(AttributeValue::N("40".into()))).await.unwrap();
        put("missing", None, Some(AttributeValue::N("40".into()))).await.unwrap();
        put("high", Some(AttributeValue::N("150".into())), Some(AttributeValue::N("40".into()))).await.unwrap();
        put("negative", Some(AttributeValue::N("-1".into())), Some(AttributeValue::N("40".into()))).await.unwrap();
        put("fraction", Some(AttributeValue::N("2.5".into())), Some(AttributeValue::N("40".into()))).await.unwrap();

        let store = DynamoStore::new(client.clone(), TABLE, Aws::default());
        for (name, shown) in [
            ("string", "string \"50\""),
            ("missing", "missing"),
            ("high", "150"),
            ("negative", "-1"),
            ("fraction", "2.5"),
        ] {
            let row = store.get(name).await.unwrap().unwrap();
            assert_eq!(row.desired, StoredWeight::Invalid(shown.into()), "{name}");
            assert_eq!(row.current, StoredWeight::Valid(40), "{name}");
            // The row exists: ensure leaves it as it is.
            store.ensure(name, 0).await.unwrap();
            // Acking any weight fails the condition: nothing is written.
            assert_eq!(store.ack(name, 40).await.unwrap(), AckOutcome::DesiredChanged, "{name}");
            assert_eq!(item_attr(&client, TABLE, name, "CurrentWeight").await, "N:40", "{name}");
        }
        assert_eq!(item_attr(&client, TABLE, "string", "DesiredWeight").await, "S:50");
        assert_eq!(item_attr(&client, TABLE, "missing", "DesiredWeight").await, "-");
        // `set` repairs a bad value and reports what was there.
        assert_eq!(store.set_desired("string", 60).await.unwrap(), Some(StoredWeight::Invalid("string \"50\"".into())));
        assert_eq!(store.set_desired("missing", 60).await.unwrap(), Some(StoredWeight::Invalid("missing".into())));
        assert_eq!(item_attr(&client, TABLE, "missing", "DesiredWeight").await, "N:60");
    });
}

/// The controller refuses a DesiredWeight that is not a weight: metric, CurrentWeight kept, item not
/// written; once repaired, it is applied and acknowledged.
#[test]
fn controller_refuses_bad_table_items() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    let rt = rt();
    let (ddb, r53) = rt.block_on(async {
        (dynamodb(&moto.endpoint()).await, integration_tests::aws::route53(&moto.endpoint()).await)
    });
    let zone = rt.block_on(async {
        create_table(&ddb, TABLE).await;
        ddb.put_item()
            .table_name(TABLE)
            .item("ClusterName", AttributeValue::S("eu".into()))
            .item("DesiredWeight", AttributeValue::S("50".into()))
            .item("CurrentWeight", AttributeValue::N("40".into()))
            .send()
            .await
            .unwrap();
        integration_tests::aws::create_zone(&r53, "example.com").await
    });
    let manifests = dir.path().join("eu");
    integration_tests::weir_aws::write_manifests(&manifests, 1, "eu-lb.example.net");
    let c = Controller::start(
        ControllerSpec {
            cluster: "eu",
            manifests,
            endpoint: moto.endpoint(),
            zone: &zone,
            initial_weight: 0,
            extra: vec![],
        },
        dir.path(),
        "weir-eu",
    );
    wait_for("the bad DesiredWeight to be counted", Duration::from_secs(60), || {
        let body = c.metrics()?;
        (metric(&body, "weir_invalid_input_total", &[("kind", "weight")])? >= 1.0).then_some(())
    });
    // CurrentWeight keeps applying; the record is published at 40 and nothing is acknowledged.
    let records = wait_for("the record at CurrentWeight", Duration::from_secs(60), || {
        let recs = rt.block_on(integration_tests::aws::zone_records(&r53, &zone));
        recs.iter().any(|r| r.key.name == "h0.example.com" && r.weight == 40).then_some(recs)
    });
    assert_eq!(integration_tests::weir_aws::traffic_of(&records, "eu").len(), 1);
    rt.block_on(async {
        assert_eq!(item_attr(&ddb, TABLE, "eu", "DesiredWeight").await, "S:50");
        assert_eq!(item_attr(&ddb, TABLE, "eu", "CurrentWeight").await, "N:40");
    });
    // Out of range: the same.
    rt.block_on(async {
        ddb.update_item()
            .table_name(TABLE)
            .key("ClusterName", AttributeValue::S("eu".into()))
            .update_expression("SET DesiredWeight = :d")
            .expression_attribute_values(":d", AttributeValue::N("150".into()))
            .send()
            .await
            .unwrap();
    });
    wait_for("the out-of-range DesiredWeight to be counted", Duration::from_secs(60), || {
        let body = c.metrics()?;
        (metric(&body, "weir_invalid_input_total", &[("kind", "weight")])? >= 2.0).then_some(())
    });
    rt.block_on(async {
        assert_eq!(item_attr(&ddb, TABLE, "eu", "CurrentWeight").await, "N:40");
    });
    // Repaired: applied and acknowledged.
    rt.block_on(async {
        ddb.update_item()
            .table_name(TABLE)
            .key("ClusterName", AttributeValue::S("eu".into()))
            .update_expression("SET DesiredWeight = :d")
            .expression_attribute_values(":d", AttributeValue::N("60".into()))
            .send()
            .await
            .unwrap();
    });
    wait_for("the repaired weight to be acknowledged", Duration::from_secs(60), || {
        let current = rt.block_on(item_attr(&ddb, TABLE, "eu", "CurrentWeight"));
        (current == "N:60").then_some(())
    });
    let records = rt.block_on(integration_tests::aws::zone_records(&r53, &zone));
    let eu = integration_tests::weir_aws::traffic_of(&records, "eu");
    assert_eq!(eu.len(), 1);
    assert_eq!(eu[0].weight, 60, "acknowledged only after the record carries the weight");
}

/// `weir weights list|get|set` against the DynamoDB table (the SDK's standard environment).
#[test]
fn weights_cli_operates_the_table() {
    use integration_tests::aws::aws_env;
    use integration_tests::{run, weir_bin};
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    let rt = rt();
    let client = rt.block_on(dynamodb(&moto.endpoint()));
    rt.block_on(async {
        create_table(&client, TABLE).await;
        let store = DynamoStore::new(client.clone(), TABLE, Aws::default());
        store.ensure("eu", 40).await.unwrap();
        store.ensure("us", 60).await.unwrap();
    });
    let weir = |args: &[&str]| {
        let mut cmd = std::process::Command::new(weir_bin());
        cmd.arg("weights").args(args).args(["--backend-type", "dynamodb", "--table-name", TABLE]);
        for (k, v) in aws_env(&moto.endpoint()) {
            cmd.env(k, v);
        }
        run(&mut cmd)
    };
    let (ok, out, err) = weir(&["list", "--output", "json"]);
    assert!(ok, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows[0]["ClusterName"], "eu");
    assert_eq!(rows[1]["DesiredWeight"], 60);

    let (ok, out, err) = weir(&["set", "--cluster-name", "eu", "--desired", "15", "--output", "json"]);
    assert!(ok, "{err}");
    let set: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(set["PreviousDesiredWeight"], 40, "{out}");
    assert_eq!(rt.block_on(item_attr(&client, TABLE, "eu", "DesiredWeight")), "N:15");

    let (ok, out, _) = weir(&["get", "--cluster-name", "eu", "--output", "json"]);
    assert!(ok);
    assert!(out.contains("15"), "{out}");

    // A bad value writes nothing; an unknown cluster is not created.
    let (ok, _, err) = weir(&["set", "--cluster-name", "eu", "--desired", "150"]);
    assert!(!ok && err.contains("150"), "{err}");
    let (ok, _, err) = weir(&["set", "--cluster-name", "nowhere", "--desired", "10"]);
    assert!(!ok && err.contains("nowhere"), "{err}");
    assert_eq!(rt.block_on(item_attr(&client, TABLE, "eu", "DesiredWeight")), "N:15");
    assert_eq!(rt.block_on(item_attr(&client, TABLE, "nowhere", "DesiredWeight")), "-");
}

/// The hosts that block a cluster's ack are recorded on its own row (never creating one) and shown by
/// `weir weights list`, as with SQLite.
#[test]
fn held_hosts_are_recorded_on_the_row_and_listed() {
    use integration_tests::aws::aws_env;
    use integration_tests::{run, weir_bin};
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    let rt = rt();
    let client = rt.block_on(dynamodb(&moto.endpoint()));
    let store = DynamoStore::new(client.clone(), TABLE, Aws::default());
    rt.block_on(async {
        create_table(&client, TABLE).await;
        store.ensure("eu", 40).await.unwrap();
        store.ensure("us", 60).await.unwrap();
        store.note_held("eu", &["b.example.com".into(), "a.example.com".into()]).await.unwrap();
        let held = store.held().await.unwrap();
        assert_eq!(held.len(), 1, "{held:?}");
        assert_eq!(held["eu"], ["a.example.com", "b.example.com"]);
        // A cluster with no row gets none.
        assert!(matches!(store.note_held("nowhere", &["x.example.com".into()]).await, Err(StoreError::NotFound(_))));
        assert_eq!(item_attr(&client, TABLE, "nowhere", "ClusterName").await, "-");
    });
    let list = |output: &str| {
        let mut cmd = std::process::Command::new(weir_bin());
        cmd.args(["weights", "list", "--backend-type", "dynamodb", "--table-name", TABLE, "--output", output]);
        for (k, v) in aws_env(&moto.endpoint()) {
            cmd.env(k, v);
        }
        let (ok, out, err) = run(&mut cmd);
        assert!(ok, "{err}");
        out
    };
    let rows: serde_json::Value = serde_json::from_str(&list("json")).unwrap();
    assert_eq!(rows[0]["HeldHosts"], serde_json::json!(["a.example.com", "b.example.com"]), "{rows}");
    assert!(rows[1].get("HeldHosts").is_none(), "{rows}");
    assert!(list("table").contains("held: a.example.com, b.example.com"));
    // Nothing held any more: the attribute goes.
    rt.block_on(async {
        store.note_held("eu", &[]).await.unwrap();
        assert!(store.held().await.unwrap().is_empty());
        assert_eq!(item_attr(&client, TABLE, "eu", "HeldHosts").await, "-");
        assert_eq!(item_attr(&client, TABLE, "eu", "DesiredWeight").await, "N:40", "the row itself is kept");
    });
}

/// `--aws-region` given on the command line wins over `AWS_REGION`, as the old controller's flag did;
/// without it, `AWS_REGION` is used. moto keeps a table per region, so the region weir used shows in
/// which table it finds.
#[test]
fn explicit_aws_region_wins_over_the_environment() {
    use integration_tests::aws::{aws_env, sdk};
    use integration_tests::{run, weir_bin};
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    rt().block_on(async {
        let config = sdk(&moto.endpoint()).await;
        let us = weir::aws::aws_sdk_dynamodb::config::Builder::from(&config)
            .region(weir::aws::aws_config::Region::new("us-east-1"))
            .build();
        let client = weir::aws::aws_sdk_dynamodb::Client::from_conf(us);
        create_table(&client, TABLE).await;
        DynamoStore::new(client, TABLE, Aws::default()).ensure("only-in-us-east-1", 42).await.unwrap();
    });
    let list = |flags: &[&str]| {
        let mut cmd = std::process::Command::new(weir_bin());
        cmd.args(["weights", "list", "--backend-type", "dynamodb", "--table-name", TABLE, "--output", "json"]);
        cmd.args(flags).env_remove("WEIR_AWS_REGION");
        // aws_env sets AWS_REGION=eu-west-1, where there is no table.
        for (k, v) in aws_env(&moto.endpoint()) {
            cmd.env(k, v);
        }
        run(&mut cmd)
    };
    let (ok, out, err) = list(&["--aws-region", "us-east-1"]);
    assert!(ok, "{err}");
    assert!(out.contains("only-in-us-east-1"), "{out}");
    let (ok, out, _) = list(&[]);
    assert!(!ok, "without --aws-region, AWS_REGION=eu-west-1 is used and has no table: {out}");
}

/// The drain claim is one `TransactWriteItems`: a second cluster is refused while the first drains,
/// the ack removes the claim, a claim decided on a table read before another cluster's claim (or
/// before a counted cluster left) is refused by the transaction's `ConditionCheck`, and an expired
/// claim no longer blocks.
#[test]
fn drain_claims_are_conditional_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    let rt = rt();
    rt.block_on(async {
        let client = dynamodb(&moto.endpoint()).await;
        create_table(&client, TABLE).await;
        let store = DynamoStore::new(client.clone(), TABLE, Aws::default());
        let refused = |o: DrainClaim| match o {
            DrainClaim::Refused(why) => why,
            DrainClaim::Claimed => panic!("claimed"),
        };
        for c in ["eu", "us"] {
            store.ensure(c, 50).await.unwrap();
            store.set_desired(c, 0).await.unwrap();
        }
        assert_eq!(store.claim_drain("eu", 0, 30_000).await.unwrap(), DrainClaim::Claimed);
        assert!(item_attr(&client, TABLE, "eu", "DrainUntil").await.starts_with("N:"));
        let why = refused(store.claim_drain("us", 0, 30_000).await.unwrap());
        assert!(why.contains("eu are draining at the same time"), "{why}");
        assert_eq!(item_attr(&client, TABLE, "us", "DrainUntil").await, "-", "the loser wrote nothing");

        // eu's ack removes its claim; us may then claim.
        assert_eq!(store.ack("eu", 0).await.unwrap(), AckOutcome::Acknowledged);
        assert_eq!(item_attr(&client, TABLE, "eu", "DrainUntil").await, "-");
        let before_us = store.list().await.unwrap();
        assert_eq!(store.claim_drain("us", 0, 30_000).await.unwrap(), DrainClaim::Claimed);
        // eu decides on the table as it was before us claimed: the ConditionCheck on us refuses.
        store.set_desired("eu", 50).await.unwrap();
        store.ack("eu", 50).await.unwrap();
        store.set_desired("eu", 0).await.unwrap();
        let why = refused(store.claim_drain_on(&before_us, "eu", 0, 30_000).await.unwrap());
        assert!(why.contains("changed while the drain was claimed"), "{why}");
        assert_eq!(item_attr(&client, TABLE, "eu", "DrainUntil").await, "-");

        // --min-serving-clusters 1 pins the cluster it counts: us back at 50, read, then us to 0.
        store.set_desired("us", 50).await.unwrap();
        store.ack("us", 50).await.unwrap();
        let us_serving = store.list().await.unwrap();
        store.set_desired("us", 0).await.unwrap();
        let why = refused(store.claim_drain_on(&us_serving, "eu", 1, 30_000).await.unwrap());
        assert!(why.contains("changed while the drain was claimed"), "{why}");
        let why = refused(store.claim_drain("eu", 1, 30_000).await.unwrap());
        assert!(why.contains("fewer than --min-serving-clusters 1"), "{why}");

        // An expired claim (its holder died) no longer blocks; a cluster not at 0 gets none.
        assert_eq!(store.claim_drain("us", 0, -1).await.unwrap(), DrainClaim::Claimed);
        assert_eq!(store.claim_drain("eu", 0, 30_000).await.unwrap(), DrainClaim::Claimed);
        store.set_desired("us", 40).await.unwrap();
        refused(store.claim_drain("us", 0, 30_000).await.unwrap());
        assert!(matches!(store.claim_drain("nowhere", 0, 30_000).await, Err(StoreError::NotFound(_))));
    });
}
