//! The Route53 provider driven directly against moto_server: targeted cached reads, the pager, batch
//! splitting and weir's own validation.

use std::collections::BTreeSet;

use integration_tests::aws::{create_zone, put_foreign_cnames, route53, zone_records, Moto};
use weir::aws::aws_sdk_route53::types::{
    Change as R53Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};
use weir::aws::{Aws, AwsMetrics};
use weir::dns::plan::Change;
use weir::dns::record::{Ownership, RecordKey, RecordSet, RecordType};
use weir::dns::route53::{Route53Dns, Route53Options, ZoneRef};
use weir::dns::{DnsError, DnsProvider};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

fn rec(name: &str, rtype: RecordType, weight: u8, value: &str) -> RecordSet {
    RecordSet {
        key: RecordKey { name: name.into(), rtype, set_identifier: "eu".into() },
        weight,
        ttl: 60,
        values: vec![value.into()],
        health_check_id: None,
        alias: None,
    }
}

fn host_changes(owner: &Ownership, host: &str, weight: u8) -> Vec<Change> {
    let txt = owner.txt_value(&weir::model::ObjectRef::new("Ingress", "web", host));
    vec![
        Change::Upsert { record: rec(&owner.txt_name(host), RecordType::Txt, 1, &txt), previous: None },
        Change::Upsert { record: rec(host, RecordType::Cname, weight, "eu-lb.example.net"), previous: None },
    ]
}

async fn provider(endpoint: &str, zone: &str, metrics: AwsMetrics) -> Route53Dns {
    let client = route53(endpoint).await;
    let opts = Route53Options::new(ZoneRef::Id(zone.to_string()), Ownership::new("eu"));
    Route53Dns::new(client, Aws::new(metrics), opts).await.unwrap()
}

fn lists(m: &AwsMetrics) -> u64 {
    m.count("route53", Some("ListResourceRecordSets"))
}

#[test]
fn reads_grow_with_what_changed_not_with_the_zone() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    rt().block_on(async {
        let client = route53(&moto.endpoint()).await;
        let zone = create_zone(&client, "example.com").await;
        let metrics = AwsMetrics::isolated();
        let p = provider(&moto.endpoint(), &zone, metrics.clone()).await;
        let owner = Ownership::new("eu");
        let hosts: BTreeSet<String> = (0..50).map(|i| format!("h{i}.example.com")).collect();
        let batch: Vec<Change> = hosts.iter().flat_map(|h| host_changes(&owner, h, 50)).collect();
        let report = p.apply(vec![batch]).await;
        assert!(report.is_complete(), "{:?}", report.failed);
        // 800 records of another owner: listing the zone takes 4 pages, more than reading one host.
        let foreign: Vec<Change> = (0..800)
            .map(|i| {
                let mut r = rec(&format!("f{i}.example.com"), RecordType::Cname, 1, "other.example.net");
                r.key.set_identifier = "other".into();
                Change::Upsert { record: r, previous: None }
            })
            .collect();
        assert!(p.apply(vec![foreign]).await.is_complete());

        // A fresh provider (a restart): one full listing finds everything this cluster owns.
        let metrics = AwsMetrics::isolated();
        let p = provider(&moto.endpoint(), &zone, metrics.clone()).await;
        let current = p.current(&BTreeSet::new(), &owner).await.unwrap();
        assert_eq!(current.len(), 100, "50 CNAME + 50 TXT found by the first listing");
        assert_eq!(lists(&metrics), 4, "900 records: 4 pages");
        let cold = lists(&metrics);
        assert!(cold >= 1);
        // Nothing changed: no read at all.
        let current = p.current(&hosts, &owner).await.unwrap();
        assert_eq!(current.len(), 100);
        assert_eq!(lists(&metrics), cold, "no reads when nothing changed");
        // One new host: its two names are read, nothing else.
        let mut more = hosts.clone();
        more.insert("new.example.com".into());
        p.current(&more, &owner).await.unwrap();
        assert_eq!(lists(&metrics), cold + 2, "one read per name of the new host");
        // Applied changes go into the cache: reading again costs nothing.
        let report = p.apply(vec![host_changes(&owner, "new.example.com", 10)]).await;
        assert!(report.is_complete());
        let current = p.current(&more, &owner).await.unwrap();
        assert_eq!(lists(&metrics), cold + 2);
        assert!(current.iter().any(|r| r.key.name == "new.example.com" && r.weight == 10));
    });
}

#[test]
fn pager_stops_when_a_weighted_group_repeats_the_same_page() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    rt().block_on(async {
        let client = route53(&moto.endpoint()).await;
        let zone = create_zone(&client, "example.com").await;
        // 150 weighted records at one name: a per-name read (100 per page) ends inside the group, and
        // moto answers without NextRecordIdentifier.
        let records = (0..150).map(|i| ("big.example.com.".into(), format!("c{i:03}"), "x.example.net".into()));
        put_foreign_cnames(&client, &zone, records).await;
        let metrics = AwsMetrics::isolated();
        let p = provider(&moto.endpoint(), &zone, metrics.clone()).await;
        let owner = Ownership::new("eu");
        // Enough other records that reading one name is cheaper than listing the zone.
        let foreign: Vec<Change> = (0..600)
            .map(|i| {
                let mut r = rec(&format!("f{i}.example.com"), RecordType::Cname, 1, "other.example.net");
                r.key.set_identifier = "other".into();
                Change::Upsert { record: r, previous: None }
            })
            .collect();
        assert!(p.apply(vec![foreign]).await.is_complete());
        p.current(&BTreeSet::new(), &owner).await.unwrap();
        let before = lists(&metrics);
        let hosts = BTreeSet::from(["big.example.com".to_string()]);
        let found = tokio::time::timeout(std::time::Duration::from_secs(30), p.current(&hosts, &owner))
            .await
            .expect("the pager terminates")
            .unwrap();
        assert!(found.len() >= 100, "{}", found.len());
        // big.example.com: first page, then the repeated page (start did not advance) → stop;
        // _weir.big.example.com: one page.
        assert_eq!(lists(&metrics) - before, 3);
    });
}

#[test]
fn a_rejected_batch_is_split_so_the_good_changes_land() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    rt().block_on(async {
        let client = route53(&moto.endpoint()).await;
        let zone = create_zone(&client, "example.com").await;
        let metrics = AwsMetrics::isolated();
        let p = provider(&moto.endpoint(), &zone, metrics.clone()).await;
        let owner = Ownership::new("eu");
        // h2's change deletes a record that does not exist (a stale read): Route53 rejects the whole
        // batch. weir splits it until h2 is alone.
        let mut batch = Vec::new();
        for h in ["h0.example.com", "h1.example.com"] {
            batch.extend(host_changes(&owner, h, 40));
        }
        batch.push(Change::Delete { record: rec("h2.example.com", RecordType::Cname, 5, "gone.example.net") });
        batch.extend(host_changes(&owner, "h3.example.com", 40));
        let report = p.apply(vec![batch]).await;
        assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
        assert_eq!(report.failed[0].0.record().key.name, "h2.example.com");
        assert!(matches!(report.failed[0].1, DnsError::Call { retryable: false, .. }));
        assert_eq!(report.applied.len(), 6);
        let records = zone_records(&client, &zone).await;
        for h in ["h0.example.com", "h1.example.com", "h3.example.com"] {
            assert!(records.iter().any(|r| r.key.name == h && r.weight == 40), "{h} landed");
        }
        let calls = metrics.count("route53", Some("ChangeResourceRecordSets"));
        assert!(calls <= 5, "halving, not one call per host: {calls}");
    });
}

#[test]
fn invalid_records_are_refused_before_sending_and_never_block_others() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    rt().block_on(async {
        let client = route53(&moto.endpoint()).await;
        let zone = create_zone(&client, "example.com").await;
        let metrics = AwsMetrics::isolated();
        let p = provider(&moto.endpoint(), &zone, metrics.clone()).await;
        let owner = Ownership::new("eu");
        let mut bad = host_changes(&owner, "bad.example.com", 40);
        bad[1] =
            Change::Upsert { record: rec("bad.example.com", RecordType::Cname, 40, "not a name!"), previous: None };
        let outside = host_changes(&owner, "h.other.org", 40);
        let good = host_changes(&owner, "good.example.com", 40);
        let report = p.apply(vec![[bad, outside, good].concat()]).await;
        // Both changes of each bad host are refused (a TXT never lands without its record and
        // vice versa); the good host lands in one call.
        assert_eq!(report.failed.len(), 4, "{:?}", report.failed);
        assert!(report.failed.iter().all(|(_, e)| matches!(e, DnsError::InvalidRecord { .. })));
        assert_eq!(report.applied.len(), 2);
        assert_eq!(metrics.count("route53", Some("ChangeResourceRecordSets")), 1);
        let records = zone_records(&client, &zone).await;
        assert!(records.iter().all(|r| !r.key.name.contains("bad") && !r.key.name.contains("other.org")));
        assert!(records.iter().any(|r| r.key.name == "good.example.com"));
    });
}

#[test]
fn the_zone_is_found_from_the_binding_domain() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    rt().block_on(async {
        let client = route53(&moto.endpoint()).await;
        let other = create_zone(&client, "example.org").await;
        let zone = create_zone(&client, "example.com").await;
        assert_ne!(other, zone);
        for domain in ["example.com", "apps.example.com"] {
            let opts = Route53Options::new(ZoneRef::Domain(domain.into()), Ownership::new("eu"));
            let p = Route53Dns::new(client.clone(), Aws::new(AwsMetrics::isolated()), opts).await.unwrap();
            assert_eq!(p.zone_id(), zone, "{domain}");
        }
        let opts = Route53Options::new(ZoneRef::Domain("example.net".into()), Ownership::new("eu"));
        let err = Route53Dns::new(client.clone(), Aws::new(AwsMetrics::isolated()), opts).await.err().unwrap();
        assert!(err.to_string().contains("--hosted-zone-id"), "{err}");
    });
}

/// The cache must not let the all-zero guard act on a stale view: before draining a record to 0, the
/// other clusters' records at the name are read again, and a difference sends the host back to the
/// planner instead of writing.
#[test]
fn a_drain_rechecks_the_other_clusters_first() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    rt().block_on(async {
        let client = route53(&moto.endpoint()).await;
        let zone = create_zone(&client, "example.com").await;
        let us = |weight: i64| {
            let rrs = ResourceRecordSet::builder()
                .name("h0.example.com.")
                .r#type(RrType::Cname)
                .set_identifier("us")
                .weight(weight)
                .ttl(60)
                .resource_records(ResourceRecord::builder().value("us-lb.example.net").build().unwrap())
                .build()
                .unwrap();
            let change = R53Change::builder().action(ChangeAction::Upsert).resource_record_set(rrs).build().unwrap();
            client
                .change_resource_record_sets()
                .hosted_zone_id(&zone)
                .change_batch(ChangeBatch::builder().changes(change).build().unwrap())
                .send()
        };
        us(50).await.unwrap();
        let mut opts = Route53Options::new(ZoneRef::Id(zone.clone()), Ownership::new("eu"));
        opts.recheck_drain_after = std::time::Duration::ZERO;
        let p = Route53Dns::new(client.clone(), Aws::new(AwsMetrics::isolated()), opts).await.unwrap();
        let owner = Ownership::new("eu");
        let hosts = BTreeSet::from(["h0.example.com".to_string()]);
        p.current(&hosts, &owner).await.unwrap();
        assert!(p.apply(vec![host_changes(&owner, "h0.example.com", 50)]).await.is_complete());

        // Behind weir's back, us drains.
        us(0).await.unwrap();
        let published = rec("h0.example.com", RecordType::Cname, 50, "eu-lb.example.net");
        let drain = || Change::Upsert {
            record: rec("h0.example.com", RecordType::Cname, 0, "eu-lb.example.net"),
            previous: Some(published.clone()),
        };
        let report = p.apply(vec![vec![drain()]]).await;
        assert_eq!(report.failed.len(), 1, "not written on a stale view");
        assert!(matches!(report.failed[0].1, DnsError::Call { retryable: true, .. }));
        let records = zone_records(&client, &zone).await;
        assert!(records
            .iter()
            .any(|r| r.key.set_identifier == "eu" && r.weight == 50 && r.key.rtype == RecordType::Cname));
        // The planner now sees us at 0 (and its all-zero guard can do its job).
        let current = p.current(&hosts, &owner).await.unwrap();
        assert!(current.iter().any(|r| r.key.set_identifier == "us" && r.weight == 0));
        // Nothing changed since that read: the drain goes through.
        assert!(p.apply(vec![vec![drain()]]).await.is_complete());
        let records = zone_records(&client, &zone).await;
        assert!(records
            .iter()
            .any(|r| r.key.set_identifier == "eu" && r.weight == 0 && r.key.rtype == RecordType::Cname));
    });
}
