//! The weight table's DynamoDB stream as a wake-up beside the poll (moto serves DynamoDB Streams):
//! with a poll of an hour, a DesiredWeight edit still reaches Route53 at once when the table has a
//! stream, and waits for the poll when it has none.

use std::time::{Duration, Instant};

use integration_tests::aws::{
    create_table, create_table_with_stream, create_zone, dynamodb, item_attr, route53, zone_records, Moto,
};
use integration_tests::wait_for;
use integration_tests::weir_aws::{traffic_of, write_manifests, Controller, ControllerSpec, TABLE};
use weir::aws::aws_sdk_dynamodb::types::AttributeValue;

const T: Duration = Duration::from_secs(60);

struct Bed {
    _dir: tempfile::TempDir,
    _moto: Moto,
    rt: tokio::runtime::Runtime,
    ddb: weir::aws::aws_sdk_dynamodb::Client,
    r53: weir::aws::aws_sdk_route53::Client,
    zone: String,
    eu: Controller,
}

/// moto, the weight table (with a stream or not) and eu's controller polling once an hour, eu at 50.
fn bed(stream: bool) -> Bed {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (ddb, r53, zone) = rt.block_on(async {
        let ddb = dynamodb(&moto.endpoint()).await;
        if stream {
            create_table_with_stream(&ddb, TABLE).await;
        } else {
            create_table(&ddb, TABLE).await;
        }
        let r53 = route53(&moto.endpoint()).await;
        let zone = create_zone(&r53, "example.com").await;
        (ddb, r53, zone)
    });
    let manifests = dir.path().join("eu");
    write_manifests(&manifests, 2, "eu-lb.example.net");
    let spec = ControllerSpec {
        cluster: "eu",
        manifests,
        endpoint: moto.endpoint(),
        zone: &zone,
        initial_weight: 50,
        extra: vec![],
    };
    let eu = Controller::start_polling(spec, Some("1h"), dir.path(), "weir-eu");
    let bed = Bed { _dir: dir, _moto: moto, rt, ddb, r53, zone, eu };
    wait_for("eu acknowledged at 50", T, || (bed.current() == "N:50").then_some(()));
    bed
}

impl Bed {
    fn current(&self) -> String {
        self.rt.block_on(item_attr(&self.ddb, TABLE, "eu", "CurrentWeight"))
    }

    fn published(&self) -> Vec<u8> {
        let records = self.rt.block_on(zone_records(&self.r53, &self.zone));
        traffic_of(&records, "eu").iter().map(|r| r.weight).collect()
    }

    fn edit(&self, w: u8) {
        self.rt.block_on(async {
            self.ddb
                .update_item()
                .table_name(TABLE)
                .key("ClusterName", AttributeValue::S("eu".into()))
                .update_expression("SET DesiredWeight = :d")
                .expression_attribute_values(":d", AttributeValue::N(w.to_string()))
                .send()
                .await
                .unwrap();
        });
    }
}

#[test]
fn a_stream_record_wakes_the_weight_loop_long_before_the_poll() {
    let bed = bed(true);
    // Let the follower take its shard iterator (LATEST) before the edit.
    wait_for("the stream followed", T, || {
        let m = bed.eu.metrics()?;
        let reads = integration_tests::metric(
            &m,
            "weir_aws_requests_total",
            &[("service", "dynamodbstreams"), ("operation", "GetRecords"), ("outcome", "success")],
        )?;
        (reads > 0.0).then_some(())
    });
    let started = Instant::now();
    bed.edit(20);
    wait_for("20 in Route53 within 10 s (the poll is an hour)", Duration::from_secs(10), || {
        let w = bed.published();
        (!w.is_empty() && w.iter().all(|w| *w == 20)).then_some(())
    });
    eprintln!("applied {:?} after the edit", started.elapsed());
    wait_for("acknowledged", Duration::from_secs(10), || (bed.current() == "N:20").then_some(()));
}

#[test]
fn without_a_stream_an_edit_waits_for_the_poll() {
    let bed = bed(false);
    wait_for("the follower saying there is no stream", T, || {
        bed.eu.proc.log().contains("the weight table has no stream").then_some(())
    });
    bed.edit(20);
    std::thread::sleep(Duration::from_secs(5));
    assert!(bed.published().iter().all(|w| *w == 50), "nothing wakes the loop before its hourly poll");
    assert_eq!(bed.current(), "N:50");
}
