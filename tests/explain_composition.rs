//! `weir explain HOST` shows the whole composition for a host linked to a TrafficInfra: C, A, H, W,
//! the share per cluster from published records, and the share per cluster and strategy
//! `(W_c / ΣW) × (S_k / ΣS)`. Runs the real binary on the file provider, the SQLite weight store and
//! the embedded DNS zone, all in a temp dir.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use weir::dns::embedded::{EmbeddedDns, EmbeddedZone};
use weir::dns::plan::Change;
use weir::dns::record::{RecordKey, RecordSet, RecordType};
use weir::dns::DnsProvider;
use weir::xds::model::TrafficState;
use weir::xds::state::{SqliteStore, StateStore};

mod local_support;

const MANIFESTS: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: TrafficInfra
metadata: {name: shop, namespace: shop}
spec:
  trafficDefaults: {blueWeight: 80, greenWeight: 20}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: shop
  namespace: shop
  annotations: {dns.adevinta.com/traffic-weight: "50"}
spec:
  rules:
    - host: www.example.com
      http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: shop-envoy, port: {number: 8080}}}}]}
status: {loadBalancer: {ingress: [{hostname: lb.eu.example.net}]}}
---
apiVersion: v1
kind: Service
metadata: {name: shop-envoy, namespace: shop}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: shop-envoy-1, namespace: shop, labels: {kubernetes.io/service-name: shop-envoy}}
addressType: IPv4
ports: [{name: grpc, port: 8080}]
endpoints: [{addresses: [10.0.1.1], conditions: {ready: true}}]
---
apiVersion: v1
kind: Service
metadata: {name: shop-planner-blue, namespace: shop, labels: {weir.dev/traffic-infra: shop}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: shop-planner-blue-1, namespace: shop, labels: {kubernetes.io/service-name: shop-planner-blue}}
addressType: IPv4
ports: [{name: grpc, port: 9000}]
endpoints: [{addresses: [10.0.2.1], conditions: {ready: true}}]
---
apiVersion: v1
kind: Service
metadata: {name: shop-planner-green, namespace: shop, labels: {weir.dev/traffic-infra: shop}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: shop-planner-green-1, namespace: shop, labels: {kubernetes.io/service-name: shop-planner-green}}
addressType: IPv4
ports: [{name: grpc, port: 9000}]
endpoints: [{addresses: [10.0.3.1], conditions: {ready: false}}]
"#;

fn weir(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("WEIR_")) {
        cmd.env_remove(k);
    }
    cmd.args(args).output().unwrap()
}

fn ok(o: Output) -> String {
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "weir failed: {}\nstdout:\n{out}\nstderr:\n{err}", o.status);
    out.into_owned()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A temp dir with the manifests, cluster eu at C=50 and cluster us's record at 75 in the same db.
fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("manifests")).unwrap();
    std::fs::write(dir.path().join("manifests/shop.yaml"), MANIFESTS).unwrap();
    let db = dir.path().join("weir.db");
    // What `weir controller` does when it starts: create the database and this cluster's row.
    rt().block_on(async {
        let store = weir::backends::sqlite::SqliteStore::open(db.clone()).await.unwrap();
        weir::backends::WeightStore::ensure(&store, "eu", 0).await.unwrap();
    });
    ok(weir(&["weights", "set", "--db", db.to_str().unwrap(), "--cluster-name", "eu", "--desired", "50"]));
    rt().block_on(async {
        let zone = EmbeddedZone::open(&db).await.unwrap();
        let record = RecordSet {
            key: RecordKey { name: "www.example.com".into(), rtype: RecordType::Cname, set_identifier: "us".into() },
            weight: 75,
            ttl: 60,
            values: vec!["lb.us.example.net".into()],
            health_check_id: None,
            alias: None,
        };
        let report = EmbeddedDns::new(zone).apply(vec![vec![Change::Upsert { record, previous: None }]]).await;
        assert!(report.failed.is_empty(), "{:?}", report.failed);
    });
    dir
}

fn explain(dir: &Path, extra: &[&str], output: &str) -> String {
    let manifests = dir.join("manifests");
    let db = dir.join("weir.db");
    let mut args = vec![
        "explain",
        "www.example.com",
        "--cluster-name",
        "eu",
        "--provider",
        "file",
        "--manifests",
        manifests.to_str().unwrap(),
        "--backend-type",
        "sqlite",
        "--db",
        db.to_str().unwrap(),
        "--dns-provider",
        "embedded",
        "--output",
        output,
    ];
    args.extend_from_slice(extra);
    ok(weir(&args))
}

fn write_xds_state(path: &Path, weights: &[(&str, u32)]) {
    rt().block_on(async {
        let store = SqliteStore::open(path, "shop/shop").unwrap();
        let state = TrafficState {
            revision: 1,
            weights: weights.iter().map(|(k, w)| (k.to_string(), *w)).collect(),
            ..TrafficState::default()
        };
        assert!(store.compare_and_swap(None, &state).await.unwrap());
    });
}

fn close(v: &Value, want: f64) -> bool {
    v.as_f64().is_some_and(|x| (x - want).abs() < 1e-9)
}

/// `(strategy, S_k, share)` of this cluster (the first entry of `clusters`).
fn strategy_shares(e: &Value) -> Vec<(String, u64, f64)> {
    e["clusters"][0]["strategies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (s["strategy"].as_str().unwrap().to_string(), s["weight"].as_u64().unwrap(), s["share"].as_f64().unwrap())
        })
        .collect()
}

#[test]
fn explain_composes_cluster_annotation_health_and_strategy_weights() {
    let dir = setup();
    let e: Value = serde_json::from_str(&explain(dir.path(), &[], "json")).unwrap();
    let f = &e["factors"];
    assert_eq!((f["cluster_weight"].as_u64(), f["annotation_weight"].as_u64()), (Some(50), Some(50)));
    assert_eq!((f["health"].as_u64(), f["record_weight"].as_u64()), (Some(1), Some(25)), "{e:#}");
    assert_eq!(e["total_weight"], 100);
    let clusters = e["clusters"].as_array().unwrap();
    assert_eq!((clusters[0]["cluster"].as_str(), clusters[0]["from"].as_str()), (Some("eu"), Some("desired")));
    assert!(close(&clusters[0]["share"], 0.25), "{e:#}");
    assert_eq!((clusters[1]["cluster"].as_str(), clusters[1]["weight"].as_u64()), (Some("us"), Some(75)));
    assert!(close(&clusters[1]["share"], 0.75));
    assert_eq!(e["traffic_infra"]["name"], "shop");
    assert_eq!(e["strategy_weights"], serde_json::json!({"blue": 80, "green": 20}));
    assert_eq!(e["strategy_weights_from"], "traffic_defaults");
    assert_eq!(e["strategy_ready_endpoints"], serde_json::json!({"blue": 1, "green": 0}));
    let shares = strategy_shares(&e);
    assert_eq!(shares.len(), 2);
    assert_eq!((shares[0].0.as_str(), shares[0].1), ("blue", 80));
    assert!((shares[0].2 - 0.2).abs() < 1e-9, "{shares:?}");
    assert_eq!((shares[1].0.as_str(), shares[1].1), ("green", 20));
    assert!((shares[1].2 - 0.05).abs() < 1e-9, "{shares:?}");

    let text = explain(dir.path(), &[], "table");
    for line in [
        "C  cluster weight      50",
        "A  annotation weight   50",
        "H  health              1",
        "W  = H × ceil(C × A / 100) = 25",
        "S  strategy weights of TrafficInfra shop/shop (from spec.trafficDefaults)",
        "eu                   blue             80      1    20.0%",
        "eu                   green            20      0     5.0%",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
}

#[test]
fn explain_prefers_the_weights_weir_xds_keeps() {
    let dir = setup();
    let state = dir.path().join("xds.db");
    write_xds_state(&state, &[("blue", 30), ("green", 70)]);
    let e: Value =
        serde_json::from_str(&explain(dir.path(), &["--xds-state", state.to_str().unwrap()], "json")).unwrap();
    assert_eq!(e["strategy_weights_from"], "xds_state");
    assert_eq!(e["strategy_weights"], serde_json::json!({"blue": 30, "green": 70}));
    let shares = strategy_shares(&e);
    assert!((shares[0].2 - 0.075).abs() < 1e-9 && (shares[1].2 - 0.175).abs() < 1e-9, "{shares:?}");
}

#[test]
fn a_host_whose_weighted_strategies_have_no_ready_endpoint_gets_health_zero() {
    let dir = setup();
    let state = dir.path().join("xds.db");
    // All traffic to green, which has no ready endpoint, although shop-envoy and blue are ready.
    write_xds_state(&state, &[("blue", 0), ("green", 100)]);
    let e: Value =
        serde_json::from_str(&explain(dir.path(), &["--xds-state", state.to_str().unwrap()], "json")).unwrap();
    let f = &e["factors"];
    assert_eq!((f["health"].as_u64(), f["record_weight"].as_u64()), (Some(0), Some(0)), "{e:#}");
    let reason = f["unhealthy_reason"].as_str().unwrap();
    assert!(reason.contains("TrafficInfra shop/shop") && reason.contains("green"), "{reason}");
    assert!(!reason.contains("blue"), "blue has no weight: {reason}");
    assert_eq!(e["total_weight"], 75);
    assert!(close(&e["clusters"][0]["share"], 0.0) && close(&e["clusters"][1]["share"], 1.0), "{e:#}");
}

#[test]
fn a_missing_xds_state_file_is_an_error() {
    let dir = setup();
    let missing = dir.path().join("nope.db");
    let o = weir(&[
        "explain",
        "www.example.com",
        "--cluster-name",
        "eu",
        "--provider",
        "file",
        "--manifests",
        dir.path().join("manifests").to_str().unwrap(),
        "--backend-type",
        "sqlite",
        "--db",
        dir.path().join("weir.db").to_str().unwrap(),
        "--dns-provider",
        "embedded",
        "--xds-state",
        missing.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope.db"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!missing.exists(), "explain must not create the state file");
}

/// Two more hosts beside the linked `www.example.com`: one whose Service is ready (A = 30) and one
/// whose Service has no ready endpoint (H = 0 by the plain rule).
const MORE_HOSTS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: api
  namespace: shop
  annotations: {dns.adevinta.com/traffic-weight: "30"}
spec:
  rules:
    - host: api.example.com
      http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: api, port: {number: 80}}}}]}
status: {loadBalancer: {ingress: [{hostname: lb.eu.example.net}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: shop, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
endpoints: [{addresses: [10.0.4.1], conditions: {ready: true}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: down, namespace: shop}
spec:
  rules:
    - host: down.example.com
      http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: down, port: {number: 80}}}}]}
status: {loadBalancer: {ingress: [{hostname: lb.eu.example.net}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: down-1, namespace: shop, labels: {kubernetes.io/service-name: down}}
addressType: IPv4
endpoints: [{addresses: [10.0.5.1], conditions: {ready: false}}]
"#;

const HOSTS: [&str; 3] = ["api.example.com", "down.example.com", "www.example.com"];

/// `weir plan --output json` on the test's files (eu, embedded zone in weir.db).
fn plan_json(dir: &Path) -> Value {
    let out = ok(weir(&[
        "plan",
        "--cluster-name",
        "eu",
        "--provider",
        "file",
        "--manifests",
        dir.join("manifests").to_str().unwrap(),
        "--backend-type",
        "sqlite",
        "--db",
        dir.join("weir.db").to_str().unwrap(),
        "--dns-provider",
        "embedded",
        "--output",
        "json",
    ]));
    serde_json::from_str(&out).unwrap()
}

/// host → weight of the CNAME record the plan upserts for cluster eu.
fn planned_weights(plan: &Value) -> std::collections::BTreeMap<String, u64> {
    plan["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|h| h["changes"].as_array().unwrap().iter())
        .filter(|c| c["action"] == "UPSERT" && c["record"]["type"] == "CNAME" && c["record"]["set_identifier"] == "eu")
        .map(|c| (c["record"]["name"].as_str().unwrap().to_string(), c["record"]["weight"].as_u64().unwrap()))
        .collect()
}

/// host → weight of the CNAME record cluster eu has published in the embedded zone.
fn published_weights(db: &Path) -> std::collections::BTreeMap<String, u64> {
    rt().block_on(async {
        let dns = EmbeddedDns::new(EmbeddedZone::open(db).await.unwrap());
        let hosts = HOSTS.iter().map(|h| h.to_string()).collect();
        let records = dns.current(&hosts, &weir::dns::record::Ownership::new("eu")).await.unwrap();
        records
            .iter()
            .filter(|r| r.key.set_identifier == "eu" && r.key.rtype == RecordType::Cname)
            .map(|r| (r.key.name.clone(), u64::from(r.weight)))
            .collect()
    })
}

/// Runs `weir local` (the controller on the embedded default) on the test's files until its first
/// pass has published everything (/readyz answers 200), then stops it.
fn run_local_until_ready(dir: &Path) {
    local_support::run_local_until_ready(&dir.join("manifests"), &dir.join("weir.db"), &dir.join("local.log"), &[]);
}

/// Explain = controller: on the same inputs (manifests, weight row, the xDS state `weir local`'s xDS
/// half keeps in `--db`), `weir plan` and `weir explain` say per host what the controller then
/// publishes, with the drain rule of live weights (all traffic to green, which has no ready
/// endpoint: `www` gets W = 0, not the 25 that `spec.trafficDefaults` would give); afterwards `weir
/// plan` on the converged database has nothing to change.
#[test]
fn the_controller_publishes_what_plan_and_explain_show_with_the_live_weights() {
    let dir = setup();
    std::fs::write(dir.path().join("manifests/more.yaml"), MORE_HOSTS).unwrap();
    let db = dir.path().join("weir.db");
    write_xds_state(&db, &[("blue", 0), ("green", 100)]);

    let planned = planned_weights(&plan_json(dir.path()));
    let want: std::collections::BTreeMap<String, u64> =
        [("api.example.com", 15), ("down.example.com", 0), ("www.example.com", 0)]
            .into_iter()
            .map(|(h, w)| (h.to_string(), w))
            .collect();
    assert_eq!(planned, want, "C = 50; api A = 30; down has no ready endpoint; www drained by the live weights");
    for host in HOSTS {
        let e: Value = serde_json::from_str(&ok(weir(&[
            "explain",
            host,
            "--cluster-name",
            "eu",
            "--provider",
            "file",
            "--manifests",
            dir.path().join("manifests").to_str().unwrap(),
            "--backend-type",
            "sqlite",
            "--db",
            db.to_str().unwrap(),
            "--dns-provider",
            "embedded",
            "--output",
            "json",
        ])))
        .unwrap();
        assert_eq!(e["factors"]["record_weight"].as_u64(), Some(want[host]), "{host}: {e:#}");
        if host == "www.example.com" {
            assert_eq!(e["strategy_weights_from"], "xds_state", "explain reads --db as the controller does: {e:#}");
        }
    }

    run_local_until_ready(dir.path());
    assert_eq!(published_weights(&db), want, "the controller publishes what plan and explain showed");
    let after = plan_json(dir.path());
    assert_eq!(after["hosts"], serde_json::json!([]), "converged, yet plan would change: {after:#}");
}
