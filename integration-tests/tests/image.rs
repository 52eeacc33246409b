//! The container image, built offline by scripts/build-image.sh from the debug binary (CI builds no
//! release binary): its config says what the Dockerfile's does (user 65532, `weir` on PATH as the
//! Entrypoint, OCI labels), `podman load` accepts it and `podman inspect` agrees (when podman is
//! installed), and its root filesystem alone, under `chroot` as 65532, runs `weir --version` and
//! answers a DNS query from `weir local`. The name it is tagged with is the chart's default image and
//! the TrafficInfra default.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use integration_tests::pod::{find, render_chart};
use integration_tests::{free_port, free_udp_tcp_port, run, wait_for, weir_bin, workspace_root, DnsClient, Proc};
use serde_json::{json, Value};

fn build(out: &Path) -> Value {
    let (ok, stdout, stderr) = run(Command::new("bash")
        .arg(workspace_root().join("scripts/build-image.sh"))
        .arg("--binary")
        .arg(weir_bin())
        .arg("--output")
        .arg(out));
    assert!(ok, "build-image.sh failed: {stderr}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("build-image.sh printed {stdout:?}: {e}"))
}

/// A member of a tar archive, read with tar(1).
fn tar_member(archive: &Path, member: &str) -> Vec<u8> {
    let out = Command::new("tar").arg("-xOf").arg(archive).arg(member).output().unwrap();
    assert!(out.status.success(), "tar: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// weir's version (the TrafficInfra default's tag is the weir crate's version, which
/// `weir --version` prints).
fn weir_version() -> String {
    let (ok, out, _) = run(Command::new(weir_bin()).arg("--version"));
    assert!(ok);
    out.trim().strip_prefix("weir ").expect("weir VERSION").to_string()
}

fn expected_reference() -> String {
    format!("{}:{}", weir::crd::WEIR_IMAGE, weir_version())
}

#[test]
fn offline_image_has_the_stated_config_and_its_rootfs_alone_serves_dns() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("weir-image.tar");
    let built = build(&archive);
    assert_eq!(built["tag"], expected_reference().as_str());

    // docker-archive view: manifest.json → config and the layer.
    let manifest: Value = serde_json::from_slice(&tar_member(&archive, "manifest.json")).unwrap();
    assert_eq!(manifest[0]["RepoTags"], json!([expected_reference()]));
    let config: Value = serde_json::from_slice(&tar_member(&archive, manifest[0]["Config"].as_str().unwrap())).unwrap();
    let c = &config["config"];
    assert_eq!(c["User"], "65532:65532");
    assert_eq!(c["Entrypoint"], json!(["weir"]));
    let path_env = c["Env"].as_array().unwrap().iter().filter_map(Value::as_str).find_map(|e| e.strip_prefix("PATH="));
    let path_env = path_env.expect("PATH in the image's Env").to_string();
    assert!(path_env.split(':').any(|p| p == "/usr/local/bin"), "PATH={path_env}");
    let labels = &c["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], weir_version());
    assert!(labels["org.opencontainers.image.source"].as_str().unwrap().starts_with("https://"), "{labels}");
    let revision = labels["org.opencontainers.image.revision"].as_str().unwrap();
    let (_, head, _) = run(Command::new("git").arg("-C").arg(workspace_root()).args(["rev-parse", "HEAD"]));
    assert_eq!(revision, head.trim());
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 1);
    // OCI layout view: index.json names the same image.
    let index: Value = serde_json::from_slice(&tar_member(&archive, "index.json")).unwrap();
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        expected_reference().as_str()
    );

    // podman reads it as an image, with the same config.
    if Command::new("podman").arg("--version").output().is_ok_and(|o| o.status.success()) {
        let store = dir.path().join("podman");
        let podman = || {
            let mut cmd = Command::new("podman");
            cmd.arg("--root").arg(store.join("root")).arg("--runroot").arg(store.join("run"));
            cmd.args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none"]);
            cmd
        };
        let (ok, out, err) = run(podman().arg("load").arg("-i").arg(&archive));
        assert!(ok, "podman load: {out}{err}");
        let (ok, out, err) = run(podman().args(["inspect", "--type", "image"]).arg(expected_reference()));
        assert!(ok, "podman inspect: {err}");
        let inspect: Value = serde_json::from_str(&out).unwrap();
        let image = &inspect[0];
        assert_eq!(image["Config"]["User"], "65532:65532", "{image}");
        assert_eq!(image["Config"]["Entrypoint"], json!(["weir"]));
        assert_eq!(image["Config"]["Labels"]["org.opencontainers.image.version"], weir_version());
        assert!(image["RepoTags"].as_array().unwrap().iter().any(|t| t == expected_reference().as_str()), "{image}");
    } else {
        // .ci/run installs podman and sets WEIR_REQUIRE_PODMAN=1: there, a missing podman fails.
        assert!(std::env::var_os("WEIR_REQUIRE_PODMAN").is_none(), "WEIR_REQUIRE_PODMAN is set but podman is missing");
        eprintln!("podman is not installed: the archive's config was checked directly, podman load was not");
    }

    // The root filesystem alone: the layer unpacked, nothing of the host.
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    let layer = tar_member(&archive, manifest[0]["Layers"][0].as_str().unwrap());
    let layer_path = dir.path().join("layer.tar");
    std::fs::write(&layer_path, layer).unwrap();
    let (ok, _, err) = run(Command::new("tar").arg("-xpf").arg(&layer_path).arg("-C").arg(&rootfs));
    assert!(ok, "unpack the layer: {err}");
    assert!(!rootfs.join("bin/sh").exists(), "the image has no shell");
    // As root: chroot(8) with the image's user. Otherwise: a user namespace (`unshare -r --root`).
    // The image's PATH is for inside; chroot and unshare themselves are found on the host's.
    let host_tool = |name: &str| {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/bin".into()])
            .map(|d| d.join(name))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{name} on this host"))
    };
    let as_root = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap();
    let in_image = |args: &[&str]| {
        let mut cmd = if as_root {
            let mut c = Command::new(host_tool("chroot"));
            c.arg("--userspec=65532:65532").arg(&rootfs);
            c
        } else {
            let mut c = Command::new(host_tool("unshare"));
            c.args(["--map-root-user", "--root"]).arg(&rootfs);
            c
        };
        cmd.args(args).env_clear().env("PATH", &path_env);
        cmd
    };
    let (ok, out, err) = run(&mut in_image(&["weir", "--version"]));
    assert!(ok, "weir --version in the image: {err}");
    assert_eq!(out.trim(), format!("weir {}", weir_version()));

    // `weir local` inside it, its manifests given as a volume would be, answering DNS on loopback.
    let manifests = rootfs.join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(
        manifests.join("web.yaml"),
        integration_tests::ingress_manifest("shop", "web", &["www.example.com"], None, "192.0.2.7"),
    )
    .unwrap();
    let (dns_port, metrics_port) = (free_udp_tcp_port(), free_port());
    let (dns, metrics) = (format!("127.0.0.1:{dns_port}"), format!("127.0.0.1:{metrics_port}"));
    let args = [
        "weir",
        "local",
        "--manifests",
        "/manifests",
        "--db",
        "/tmp/weir.db",
        "--cluster-name",
        "eu",
        "--initial-weight",
        "100",
        "--dns-listen",
        &dns,
        "--metrics-addr",
        &metrics,
    ];
    let _weir = Proc::spawn("weir-local-in-image", &mut in_image(&args), dir.path());
    let mut client = DnsClient::new(dns_port);
    let answer = wait_for("an A answer from weir local in the image", Duration::from_secs(30), || {
        client.first_a("www.example.com")
    });
    assert_eq!(answer, "192.0.2.7");
}

/// One name for weir's image: the chart's default, the TrafficInfra default (and the tag the script
/// gives, checked above).
#[test]
fn chart_and_traffic_infra_default_name_the_built_image() {
    let objects = render_chart(&json!({"controller": {"clusterName": "eu"}}));
    let deployment = find(&objects, "Deployment", "weir");
    let image = deployment["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap();
    assert_eq!(image, expected_reference());
    assert_eq!(weir::crd::XdsImage::default().reference(), expected_reference());
    let chart: Value =
        serde_yaml::from_str(&std::fs::read_to_string(workspace_root().join("charts/weir/Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(chart["appVersion"], weir_version(), "the chart's appVersion is the image tag");
}
