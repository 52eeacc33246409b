//! End to end on the production path: the real `weir controller --provider kubernetes` against the
//! in-process test API server, with DynamoDB weights and Route53 records on moto.

use std::process::Command;
use std::time::Duration;

use integration_tests::apiserver::{ApiServer, Options, Selector, WriteOp};
use integration_tests::aws::{aws_env, create_table, create_zone, dynamodb, route53, zone_records, Moto};
use integration_tests::weir_aws::traffic_of;
use integration_tests::{free_port, wait_for, weir_bin, Proc};
use serde_json::{json, Value};

const CLUSTER: &str = "eu";

fn seed(server: &ApiServer, obj: Value) {
    server.store().create_object(obj).unwrap();
}

#[test]
fn ingress_records_in_route53() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (r53, zone) = rt.block_on(async {
        create_table(&dynamodb(&moto.endpoint()).await, "traffic-controller").await;
        let r53 = route53(&moto.endpoint()).await;
        let zone = create_zone(&r53, "example.com").await;
        (r53, zone)
    });
    let server = ApiServer::start_background(Options::default());
    seed(&server, json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc", "namespace": "default"}}));
    seed(
        &server,
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "svc-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "svc"}},
               "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true}}]}),
    );
    let ingress = json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"rules": [{"host": "shop.example.com", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                 "backend": {"service": {"name": "svc", "port": {"number": 80}}}}]}}]},
        "status": {"loadBalancer": {"ingress": [{"hostname": "lb-1.eu-west-1.elb.amazonaws.com"}]}}});
    seed(&server, ingress.clone());

    // RBAC enforced: the controller runs as the chart's ServiceAccount.
    let id = integration_tests::chart::install_controller_identity(
        &server,
        json!({"controller": {"clusterName": CLUSTER, "dnsProvider": "route53", "bindingDomain": "example.com"}}),
    );
    let mut cmd = Command::new(weir_bin());
    cmd.env("KUBECONFIG", server.write_kubeconfig_for(dir.path(), &id.token))
        .env("WEIR_LOG", "info,weir=debug")
        .args(["controller", "--provider", "kubernetes", "--cluster-name", CLUSTER])
        .args(["--backend-type", "dynamodb", "--initial-weight", "100", "--weight-poll-interval", "500ms"])
        .args(["--dns-provider", "route53", "--hosted-zone-id", &zone, "--binding-domain", "example.com"])
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())]);
    for (k, v) in aws_env(&moto.endpoint()) {
        cmd.env(k, v);
    }
    let _weir = Proc::spawn("weir", &mut cmd, dir.path());

    let records = |want: &dyn Fn(&[&weir::dns::record::RecordSet]) -> bool| {
        wait_for("Route53 records", Duration::from_secs(60), || {
            let all = rt.block_on(zone_records(&r53, &zone));
            let ours: Vec<_> = traffic_of(&all, CLUSTER).into_iter().cloned().collect();
            let refs: Vec<_> = ours.iter().collect();
            want(&refs).then_some(ours)
        })
    };
    // The Ingress's load balancer becomes a weighted CNAME with this cluster's set identifier.
    let first = records(&|r| r.len() == 1 && r[0].weight == 100);
    assert_eq!(first[0].key.name, "shop.example.com");
    assert_eq!(first[0].values, vec!["lb-1.eu-west-1.elb.amazonaws.com".to_string()]);

    // Annotating changes the weight.
    let ing = server.store().type_of(&ingress).unwrap();
    let annotate = json!({"metadata": {"annotations": {"dns.adevinta.com/traffic-weight": "50"}}});
    server.store().write(&ing, "default", "web", WriteOp::Merge(annotate), false).unwrap();
    records(&|r| r.len() == 1 && r[0].weight == 50);

    // Deleting the Ingress removes the record.
    server.store().delete(&ing, "default", "web").unwrap();
    records(&|r| r.is_empty());
    let denied: Vec<_> = server.audit().into_iter().filter(|r| r.user == id.user && !r.allowed).collect();
    assert!(denied.is_empty(), "denied to the controller: {denied:#?}");
}

/// A host in no managed hosted zone, on the production path: an Event on its Ingress and
/// `weir_invalid_input_total{kind="no_zone"}`, while the other host of the cluster is published.
#[test]
fn a_host_in_no_hosted_zone_gets_an_event_and_the_others_proceed() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (r53, child) = rt.block_on(async {
        create_table(&dynamodb(&moto.endpoint()).await, "traffic-controller").await;
        let r53 = route53(&moto.endpoint()).await;
        let child = create_zone(&r53, "eu.example.com").await;
        (r53, child)
    });
    let server = ApiServer::start_background(Options::default());
    seed(&server, json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc", "namespace": "default"}}));
    seed(
        &server,
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "svc-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "svc"}},
               "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true}}]}),
    );
    let ingress = |name: &str, host: &str| {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"rules": [{"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix",
                     "backend": {"service": {"name": "svc", "port": {"number": 80}}}}]}}]},
            "status": {"loadBalancer": {"ingress": [{"hostname": "lb.example.net"}]}}})
    };
    seed(&server, ingress("api", "api.eu.example.com"));
    seed(&server, ingress("lost", "www.example.com"));
    let id = integration_tests::chart::install_controller_identity(
        &server,
        json!({"controller": {"clusterName": CLUSTER, "dnsProvider": "route53", "bindingDomain": "example.com"}}),
    );
    let metrics_port = free_port();
    let mut cmd = Command::new(weir_bin());
    cmd.env("KUBECONFIG", server.write_kubeconfig_for(dir.path(), &id.token))
        .args(["controller", "--provider", "kubernetes", "--cluster-name", CLUSTER])
        .args(["--backend-type", "dynamodb", "--initial-weight", "100", "--weight-poll-interval", "500ms"])
        .args(["--dns-provider", "route53", "--hosted-zone-id", &child, "--binding-domain", "example.com"])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")]);
    for (k, v) in aws_env(&moto.endpoint()) {
        cmd.env(k, v);
    }
    let _weir = Proc::spawn("weir", &mut cmd, dir.path());

    wait_for("api published in the child zone", Duration::from_secs(60), || {
        let all = rt.block_on(zone_records(&r53, &child));
        let ours = traffic_of(&all, CLUSTER);
        (ours.len() == 1 && ours[0].key.name == "api.eu.example.com").then_some(())
    });
    let events = server.store().type_of(&json!({"apiVersion": "events.k8s.io/v1", "kind": "Event"})).unwrap();
    let event = wait_for("an Event on the Ingress of the host in no zone", Duration::from_secs(30), || {
        let (items, _) = server.store().list(&events, Some("default"), &Selector::default());
        items.into_iter().find(|e| e["reason"] == "NoHostedZone")
    });
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["regarding"]["kind"], "Ingress");
    assert_eq!(event["regarding"]["name"], "lost");
    assert!(event["note"].as_str().unwrap().contains("www.example.com is in none of the hosted zones"), "{event}");
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let counted = wait_for("no_zone counted", Duration::from_secs(10), || {
        integration_tests::metric(
            &integration_tests::http_get(&url)?,
            "weir_invalid_input_total",
            &[("kind", "no_zone")],
        )
    });
    assert_eq!(counted, 1.0);
    let denied: Vec<_> = server.audit().into_iter().filter(|r| r.user == id.user && !r.allowed).collect();
    assert!(denied.is_empty(), "denied to the controller: {denied:#?}");
}
