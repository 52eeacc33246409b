//! `weir xds --provider kubernetes` keeps its admin-API state in the ConfigMap `{name}-xds-state`:
//! the store against the in-process test API server, then two real replicas sharing it. RBAC is
//! enforced: except where a test says otherwise, the store and the replicas run as the xDS
//! ServiceAccount with the Role and RoleBinding the operator writes (`operator::children`), and the
//! operator's empty state ConfigMap exists, as in a cluster.

use std::process::Command;
use std::time::Duration;

use integration_tests::apiserver::{ApiServer, Options};
use integration_tests::{free_port, http_get, wait_for, weir_bin, Proc};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::PostParams;
use kube::Api;
use weir::crd::{NamespaceConfig, TrafficInfra};
use weir::operator::children::children;
use weir::xds::model::TrafficState;
use weir::xds::state::StateStore;
use weir::xds::state_kube::{KubeConfigMapStore, DATA_KEY};

/// Creates what the operator creates for TrafficInfra `shop/shop` before `weir xds` starts (its
/// ServiceAccount, Role, RoleBinding and empty state ConfigMap, from the operator's own code) and
/// returns a token of that ServiceAccount.
fn operator_made_identity(server: &ApiServer) -> String {
    let ti: TrafficInfra = serde_json::from_value(serde_json::json!({
        "apiVersion": "weir.dev/v1alpha1", "kind": "TrafficInfra",
        "metadata": {"name": "shop", "namespace": "shop", "uid": "test-uid"}, "spec": {}}))
    .unwrap();
    let c = children(&ti, &NamespaceConfig::new("default", Default::default()));
    integration_tests::apiserver::store_xds_identity(server, &c)
}

/// Nothing the xDS ServiceAccount asked for was denied, and it did ask.
fn assert_nothing_denied(server: &ApiServer) {
    let mine: Vec<_> = server.audit().into_iter().filter(|r| r.user == "system:serviceaccount:shop:shop-xds").collect();
    assert!(!mine.is_empty(), "no request as the xDS ServiceAccount");
    let denied: Vec<_> = mine.iter().filter(|r| !r.allowed).collect();
    assert!(denied.is_empty(), "denied: {denied:#?}");
}

fn state(revision: u64, blue: u32, green: u32) -> TrafficState {
    TrafficState {
        revision,
        weights: [("blue".to_string(), blue), ("green".to_string(), green)].into(),
        registered: ["shop/extra".to_string()].into(),
        deregistered: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_share_one_configmap_with_compare_and_swap() {
    // Without the operator (no Role; the superuser): the first writer creates the ConfigMap.
    let server = ApiServer::start(Options::default()).await;
    let a = KubeConfigMapStore::new(server.client(), "shop", "shop");
    let b = KubeConfigMapStore::new(server.client(), "shop", "shop");

    // Absent ConfigMap: nothing stored; a CAS expecting a revision cannot succeed.
    assert_eq!(a.read().await.unwrap(), None);
    assert!(!a.compare_and_swap(Some(1), &state(2, 1, 1)).await.unwrap());
    assert_eq!(b.read().await.unwrap(), None);

    // The first write creates it; a second "first write" loses (AlreadyExists) and changes nothing.
    assert!(a.compare_and_swap(None, &state(1, 100, 0)).await.unwrap());
    assert!(!b.compare_and_swap(None, &state(1, 0, 100)).await.unwrap());
    assert_eq!(b.read().await.unwrap(), Some(state(1, 100, 0)), "b reads a's write");

    // b moves on; a's stale compare-and-swap returns false and does not overwrite.
    assert!(b.compare_and_swap(Some(1), &state(2, 30, 70)).await.unwrap());
    assert!(!a.compare_and_swap(Some(1), &state(2, 50, 50)).await.unwrap());
    assert_eq!(a.read().await.unwrap(), Some(state(2, 30, 70)));

    // It is a real ConfigMap with the state as JSON under the data key.
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "shop");
    let cm = api.get("shop-xds-state").await.unwrap();
    let body: TrafficState = serde_json::from_str(&cm.data.unwrap()[DATA_KEY]).unwrap();
    assert_eq!(body, state(2, 30, 70));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_into_the_empty_configmap_the_operator_created() {
    let server = ApiServer::start(Options::default()).await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "shop");
    let token = operator_made_identity(&server);
    let store = KubeConfigMapStore::new(server.client_for(&token), "shop", "shop");
    assert_eq!(store.read().await.unwrap(), None, "no data key: nothing stored yet");
    assert!(store.compare_and_swap(None, &state(1, 100, 0)).await.unwrap());
    assert!(!store.compare_and_swap(None, &state(1, 0, 100)).await.unwrap(), "now something is stored");
    assert_eq!(store.read().await.unwrap(), Some(state(1, 100, 0)));

    // Someone else changes the ConfigMap between our read and write: its resourceVersion moves, and
    // a write that carries the old one conflicts at the API server.
    let mut stale = api.get("shop-xds-state").await.unwrap();
    let mut other = stale.clone();
    other.metadata.labels = Some([("touched".to_string(), "yes".to_string())].into());
    api.replace("shop-xds-state", &PostParams::default(), &other).await.unwrap();
    stale.data.as_mut().unwrap().insert(DATA_KEY.into(), "{}".into());
    let err = api.replace("shop-xds-state", &PostParams::default(), &stale).await.unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 409));
    // The store's own stale write conflicts too (the merge patch carries the resourceVersion).
    assert_nothing_denied(&server);
}

/// Read-modify-write until the compare-and-swap wins (bounded): adds one to blue.
async fn increment(store: &KubeConfigMapStore) -> u32 {
    for attempt in 0..200 {
        let current = store.read().await.unwrap().expect("seeded");
        let mut next = current.clone();
        next.revision += 1;
        *next.weights.get_mut("blue").unwrap() += 1;
        if store.compare_and_swap(Some(current.revision), &next).await.unwrap() {
            return attempt;
        }
    }
    panic!("no write won in 200 attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_lose_no_update() {
    let server = ApiServer::start(Options::default()).await;
    let token = operator_made_identity(&server);
    let seed = KubeConfigMapStore::new(server.client_for(&token), "shop", "shop");
    assert!(seed.compare_and_swap(None, &state(1, 0, 0)).await.unwrap());
    const EACH: u32 = 25;
    let writers: Vec<_> = (0..3)
        .map(|_| {
            let store = KubeConfigMapStore::new(server.client_for(&token), "shop", "shop");
            tokio::spawn(async move {
                let mut retries = 0;
                for _ in 0..EACH {
                    retries += increment(&store).await;
                }
                retries
            })
        })
        .collect();
    let mut retries = 0;
    for w in writers {
        retries += w.await.unwrap();
    }
    let end = seed.read().await.unwrap().unwrap();
    assert_eq!(end.weights["blue"], 3 * EACH, "every increment survived ({retries} lost races retried)");
    assert_eq!(end.revision, 1 + u64::from(3 * EACH));
    assert_nothing_denied(&server);
}

fn replica(kubeconfig: &std::path::Path, log_dir: &std::path::Path, admin: u16, name: &str) -> Proc {
    replica_with(kubeconfig, log_dir, admin, name, &[])
}

fn replica_with(
    kubeconfig: &std::path::Path,
    log_dir: &std::path::Path,
    admin: u16,
    name: &str,
    extra: &[&str],
) -> Proc {
    let mut cmd = Command::new(weir_bin());
    cmd.env("KUBECONFIG", kubeconfig)
        .args(["xds", "--provider", "kubernetes", "--name", "shop", "--namespace", "shop"])
        .args(["--grpc-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .args(extra);
    Proc::spawn(name, &mut cmd, log_dir)
}

fn traffic(admin: u16) -> Option<serde_json::Value> {
    serde_json::from_str(&http_get(&format!("http://127.0.0.1:{admin}/traffic"))?).ok()
}

#[test]
fn two_replicas_serve_one_truth_and_a_restart_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start_background(Options::default());
    let token = operator_made_identity(&server);
    let kubeconfig = server.write_kubeconfig_for(dir.path(), &token);
    // A labelled blue/green pair, as in a cluster; no TrafficInfra, so the defaults apply.
    for strategy in ["blue", "green"] {
        server
            .store()
            .create_object(serde_json::json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("shop-planner-{strategy}"), "namespace": "shop",
                             "labels": {"weir.dev/traffic-infra": "shop", "weir.dev/strategy": strategy}},
                "spec": {"ports": [{"port": 50051}]}}))
            .unwrap();
    }

    let (admin_a, admin_b) = (free_port(), free_port());
    let mut a = replica(&kubeconfig, dir.path(), admin_a, "xds-a");
    let mut b = replica(&kubeconfig, dir.path(), admin_b, "xds-b");
    let defaults = serde_json::json!({"blue": 100, "green": 0});
    assert_eq!(wait_for("replica a", Duration::from_secs(30), || traffic(admin_a)), defaults);
    assert_eq!(wait_for("replica b", Duration::from_secs(30), || traffic(admin_b)), defaults);

    let resp = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{admin_a}/traffic?blue=30&green=70"))
        .timeout(Duration::from_secs(5))
        .send()
        .unwrap();
    assert!(resp.status().is_success(), "POST /traffic on a: {}", resp.status());
    let want = serde_json::json!({"blue": 30, "green": 70});
    wait_for("replica b to serve a's weights", Duration::from_secs(5), || {
        (traffic(admin_b).as_ref() == Some(&want)).then_some(())
    });
    assert_eq!(traffic(admin_a), Some(want.clone()));

    // The truth is the ConfigMap, not a process: kill both, start one, it still serves 30/70.
    let configmaps = server.store().find_type("", "v1", "configmaps").unwrap();
    let cm = server.store().get(&configmaps, "shop", "shop-xds-state").expect("the state ConfigMap exists");
    let stored: TrafficState = serde_json::from_str(cm["data"][DATA_KEY].as_str().unwrap()).unwrap();
    assert_eq!(stored.weights, [("blue".to_string(), 30), ("green".to_string(), 70)].into());
    a.kill();
    b.kill();
    let admin_c = free_port();
    let _c = replica(&kubeconfig, dir.path(), admin_c, "xds-c");
    assert_eq!(wait_for("replica c after the restart", Duration::from_secs(30), || traffic(admin_c)), want);
    assert_nothing_denied(&server);
}

/// `xds.pollInterval` is the period of a full EndpointSlice re-list beside the watch: with the
/// watch losing every EndpointSlice event (the test API server's fault), an endpoint change is
/// still served within about one period, and `weir_kube_relists_total{result="changed"}` counts it.
#[test]
fn an_endpoint_change_the_watch_missed_is_served_after_the_poll_interval() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start_background(Options::default());
    let token = operator_made_identity(&server);
    for obj in [
        serde_json::json!({"apiVersion": "weir.dev/v1alpha1", "kind": "TrafficInfra",
            "metadata": {"name": "shop", "namespace": "shop"}, "spec": {"xds": {"pollInterval": 1}}}),
        serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "shop-planner-blue",
            "namespace": "shop", "labels": {"weir.dev/traffic-infra": "shop"}}, "spec": {"ports": [{"port": 9000}]}}),
        serde_json::json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "shop-planner-blue-1", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "shop-planner-blue"}},
            "addressType": "IPv4", "ports": [{"port": 9000}],
            "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true}}]}),
    ] {
        server.store().create_object(obj).unwrap();
    }
    let admin = free_port();
    let _xds = replica(&server.write_kubeconfig_for(dir.path(), &token), dir.path(), admin, "weir-xds");
    let endpoints = || http_get(&format!("http://127.0.0.1:{admin}/endpoints"));
    wait_for("10.0.0.1 served", Duration::from_secs(20), || endpoints().filter(|e| e.contains("10.0.0.1")));

    server.faults().lose_watch_events("endpointslices");
    let rt = server.store().find_type("discovery.k8s.io", "v1", "endpointslices").unwrap();
    server
        .store()
        .write(
            &rt,
            "shop",
            "shop-planner-blue-1",
            integration_tests::apiserver::WriteOp::Merge(serde_json::json!({
                "endpoints": [{"addresses": ["10.0.0.2"], "conditions": {"ready": true}}]})),
            false,
        )
        .unwrap();
    let t0 = std::time::Instant::now();
    wait_for("10.0.0.2 served although the watch missed it", Duration::from_secs(5), || {
        endpoints().filter(|e| e.contains("10.0.0.2") && !e.contains("10.0.0.1"))
    });
    eprintln!("the missed change was served after {:?}", t0.elapsed());
    let metrics = http_get(&format!("http://127.0.0.1:{admin}/metrics")).unwrap();
    let changed = integration_tests::metric(
        &metrics,
        "weir_kube_relists_total",
        &[("kind", "EndpointSlice"), ("result", "changed")],
    );
    assert!(changed.unwrap_or(0.0) >= 1.0, "{metrics}");
    assert_nothing_denied(&server);
}

/// `spec.xds.discovery.allowedNamespaces` with `--provider kubernetes` (issue 11, finding 2): the
/// xDS ServiceAccount's Role covers only its own namespace, so an allowed namespace is watched only
/// when `weir xds` is told to (`--watch-namespace`, which the operator passes) and granted there.
/// Not watched: refused on the TrafficInfra (AllowedNamespaceNotWatched), not silently empty.
/// Watched but not granted: no first snapshot, the denial logged with its namespace. Granted: the
/// partner's Service is served; the attacker's, watched but not allowed, is refused.
#[test]
fn an_allowed_namespace_is_watched_only_when_told_and_granted() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start_background(Options::default());
    let token = operator_made_identity(&server);
    let kubeconfig = server.write_kubeconfig_for(dir.path(), &token);
    let planner = |ns: &str, name: &str| {
        serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns,
            "labels": {"weir.dev/traffic-infra": "shop"}}, "spec": {"ports": [{"port": 9000}]}})
    };
    for obj in [
        serde_json::json!({"apiVersion": "weir.dev/v1alpha1", "kind": "TrafficInfra",
            "metadata": {"name": "shop", "namespace": "shop"},
            "spec": {"xds": {"discovery": {"allowedNamespaces": ["partner"]}}}}),
        planner("shop", "shop-planner-blue"),
        planner("partner", "partner-green"),
        planner("attacker", "evil-blue"),
    ] {
        server.store().create_object(obj).unwrap();
    }
    let get = |admin: u16, path: &str| -> Option<serde_json::Value> {
        serde_json::from_str(&http_get(&format!("http://127.0.0.1:{admin}{path}"))?).ok()
    };
    let refused = |dump: &serde_json::Value| -> Vec<(String, String)> {
        dump["refused_services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (r["object"]["namespace"].as_str().unwrap().to_string(), r["reason"].as_str().unwrap().to_string())
            })
            .collect()
    };

    // Not told to watch partner: its Service is not seen, and the TrafficInfra is refused for it.
    let admin = free_port();
    let mut xds = replica(&kubeconfig, dir.path(), admin, "xds-own-namespace");
    let services = wait_for("the own namespace served", Duration::from_secs(30), || get(admin, "/services"));
    assert!(services.to_string().contains("shop/shop-planner-blue"), "{services}");
    assert!(!services.to_string().contains("partner/"), "{services}");
    // The TrafficInfra may arrive in a later snapshot than the Services: wait for the refusal.
    let want = [("shop".to_string(), "AllowedNamespaceNotWatched".to_string())];
    wait_for("the TrafficInfra refused for partner", Duration::from_secs(20), || {
        let dump = get(admin, "/config_dump")?;
        (refused(&dump) == want).then_some(())
    });
    let metrics = http_get(&format!("http://127.0.0.1:{admin}/metrics")).unwrap();
    assert_eq!(integration_tests::metric(&metrics, "weir_invalid_input_total", &[("kind", "namespace")]), Some(1.0));
    assert!(xds.log().contains("--watch-namespace partner"), "the refusal says what to do");
    xds.kill();

    // Told to watch partner and attacker, granted in neither: nothing is served yet, and the log
    // names the namespace whose list was denied.
    let admin = free_port();
    let xds = replica_with(
        &kubeconfig,
        dir.path(),
        admin,
        "xds-watching",
        &["--watch-namespace", "partner", "--watch-namespace", "attacker"],
    );
    wait_for("the denial in partner logged", Duration::from_secs(30), || {
        let log = xds.log();
        (log.contains("denied list/watch of services") && log.contains("in namespace partner")).then_some(())
    });
    assert!(get(admin, "/services").is_none(), "no snapshot is served without the partner namespace's Services");

    // The owners of partner and attacker grant the xDS ServiceAccount read of their planners.
    for ns in ["partner", "attacker"] {
        for obj in [
            serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "shop-xds-planners", "namespace": ns},
                "rules": [{"apiGroups": [""], "resources": ["services"], "verbs": ["list", "watch"]},
                          {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}]}),
            serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "shop-xds-planners", "namespace": ns},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "shop-xds-planners"},
                "subjects": [{"kind": "ServiceAccount", "name": "shop-xds", "namespace": "shop"}]}),
        ] {
            server.store().create_object(obj).unwrap();
        }
    }
    let services = wait_for("partner/partner-green served", Duration::from_secs(60), || {
        get(admin, "/services").filter(|s| s.to_string().contains("partner/partner-green"))
    });
    assert!(services.to_string().contains("shop/shop-planner-blue"), "{services}");
    assert!(!services.to_string().contains("attacker/"), "watched is not allowed: {services}");
    let dump = get(admin, "/config_dump").unwrap();
    assert_eq!(refused(&dump), [("attacker".to_string(), "ServiceNamespaceNotAllowed".to_string())], "{dump}");
    let metrics = http_get(&format!("http://127.0.0.1:{admin}/metrics")).unwrap();
    let denied =
        integration_tests::metric(&metrics, "weir_kube_watch_errors_total", &[("kind", "Service"), ("code", "403")]);
    assert!(denied.unwrap_or(0.0) >= 1.0, "{metrics}");
}
