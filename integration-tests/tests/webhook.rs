//! The validating webhook, served by the real `weir controller --provider kubernetes` over HTTPS
//! with a certificate made at test time: the first TrafficInfra in a namespace is allowed, a
//! second one is denied with a message naming the first, and a body that is not an
//! AdmissionReview gets 400.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use integration_tests::apiserver::{ApiServer, Options};
use integration_tests::{free_port, free_udp_tcp_port, wait_for, weir_bin, Proc};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const T: Duration = Duration::from_secs(30);

fn review(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": format!("uid-{ns}-{name}"),
            "kind": {"group": "weir.dev", "version": "v1alpha1", "kind": "TrafficInfra"},
            "resource": {"group": "weir.dev", "version": "v1alpha1", "resource": "trafficinfras"},
            "name": name, "namespace": ns, "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "object": {"apiVersion": "weir.dev/v1alpha1", "kind": "TrafficInfra", "metadata": {"name": name, "namespace": ns}},
            "dryRun": false,
        }
    })
}

/// POSTs `body` over HTTPS, trusting only `ca`; the status and the body of the response.
fn post(port: u16, ca: &CertificateDer<'static>, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).map_err(std::io::Error::other)?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
        let mut tls = TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes()).await?;
        tls.write_all(body).await?;
        let mut out = Vec::new();
        // A server closing without close_notify is an error here, but the response is complete.
        if let Err(e) = tls.read_to_end(&mut out).await {
            if out.is_empty() {
                return Err(e);
            }
        }
        let text = String::from_utf8_lossy(&out).to_string();
        let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Ok((status, body))
    })
}

#[test]
fn webhook_allows_the_first_traffic_infra_and_denies_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(certs.join("tls.crt"), cert.cert.pem()).unwrap();
    std::fs::write(certs.join("tls.key"), cert.key_pair.serialize_pem()).unwrap();
    let ca = cert.cert.der().clone();

    let server = ApiServer::start_background(Options::default());
    for obj in [
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "NamespaceConfig", "metadata": {"name": "default", "namespace": "shop"}, "spec": {}}),
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "TrafficInfra", "metadata": {"name": "edge", "namespace": "shop"}}),
    ] {
        server.store().create_object(obj).unwrap();
    }
    // RBAC enforced: the controller runs as the chart's ServiceAccount (operator and webhook on).
    let id = integration_tests::chart::install_controller_identity(
        &server,
        json!({"controller": {"clusterName": "eu"}, "rbac": {"operator": true}}),
    );
    let kubeconfig = server.write_kubeconfig_for(dir.path(), &id.token);
    let port = free_port();
    let mut cmd = Command::new(weir_bin());
    cmd.env("KUBECONFIG", &kubeconfig)
        .env("WEIR_LOG", "info,weir=debug")
        .args(["controller", "--provider", "kubernetes", "--cluster-name", "eu"])
        .args(["--backend-type", "sqlite", "--initial-weight", "100"])
        .arg("--db")
        .arg(dir.path().join("weir.db"))
        .args(["--dns-provider", "embedded", "--dns-listen", &format!("127.0.0.1:{}", free_udp_tcp_port())])
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--webhook-addr", &format!("127.0.0.1:{port}")])
        .arg("--webhook-cert-dir")
        .arg(&certs);
    let _weir = Proc::spawn("weir-controller", &mut cmd, dir.path());

    // The operator acting on edge means the snapshot the webhook reads has it.
    let rt = server.store().find_type("apps", "v1", "deployments").unwrap();
    wait_for("edge-xds Deployment", T, || server.store().get(&rt, "shop", "edge-xds").ok());

    let answer = |ns: &str, name: &str| -> Value {
        let body = serde_json::to_vec(&review(ns, name)).unwrap();
        let (status, body) =
            wait_for("the webhook answering", T, || post(port, &ca, "/validate-trafficinfra", &body).ok());
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    };
    // The first one in a namespace (edge itself, re-created; one in another namespace).
    for (ns, name) in [("shop", "edge"), ("blog", "edge")] {
        let r = answer(ns, name);
        assert_eq!(r["kind"], "AdmissionReview");
        assert_eq!(r["response"]["uid"], format!("uid-{ns}-{name}"));
        assert_eq!(r["response"]["allowed"], true, "{ns}/{name}: {r}");
    }
    // A second one in shop: denied, naming the first.
    let r = answer("shop", "second");
    assert_eq!(r["response"]["allowed"], false, "{r}");
    let message = r["response"]["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("already has TrafficInfra edge"), "{r}");
    assert_eq!(r["response"]["status"]["code"], 409, "{r}");

    // Garbage and a wrong path.
    let (status, body) = post(port, &ca, "/validate-trafficinfra", b"{not json").unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not an AdmissionReview"), "{body}");
    let (status, _) = post(port, &ca, "/elsewhere", b"{}").unwrap();
    assert_eq!(status, 404);
}

/// A self-signed certificate for localhost written to `dir` (tls.crt, tls.key, each written beside
/// and renamed, as a Secret volume swaps them); its DER to trust.
fn write_cert(dir: &std::path::Path) -> CertificateDer<'static> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    for (name, pem) in [("tls.key", cert.key_pair.serialize_pem()), ("tls.crt", cert.cert.pem())] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
    cert.cert.der().clone()
}

/// `weir controller` with the webhook on the test API server; (process, webhook port, metrics port).
fn start_webhook(dir: &std::path::Path, certs: &std::path::Path, server: &ApiServer) -> (Proc, u16, u16) {
    let kubeconfig = server.write_kubeconfig(dir);
    let (port, metrics) = (free_port(), free_port());
    let mut cmd = Command::new(weir_bin());
    cmd.env("KUBECONFIG", &kubeconfig)
        .env("WEIR_LOG", "info,weir=debug")
        .args(["controller", "--provider", "kubernetes", "--cluster-name", "eu"])
        .args(["--backend-type", "sqlite", "--initial-weight", "100"])
        .arg("--db")
        .arg(dir.join("weir.db"))
        .args(["--dns-provider", "embedded", "--dns-listen", &format!("127.0.0.1:{}", free_udp_tcp_port())])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
        .args(["--webhook-addr", &format!("127.0.0.1:{port}")])
        .arg("--webhook-cert-dir")
        .arg(certs);
    (Proc::spawn("weir-controller", &mut cmd, dir), port, metrics)
}

#[test]
fn webhook_drops_idle_pre_tls_connections_and_reloads_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let old_ca = write_cert(&certs);
    let server = ApiServer::start_background(Options::default());
    let (_weir, port, metrics_port) = start_webhook(dir.path(), &certs, &server);
    let body = serde_json::to_vec(&review("shop", "edge")).unwrap();
    let (status, _) =
        wait_for("the webhook answering", T, || post(port, &old_ca, "/validate-trafficinfra", &body).ok());
    assert_eq!(status, 200);

    // 200 connections that never start TLS: the webhook still answers, and drops them after the
    // TLS-handshake timeout (5 s).
    let mut idle: Vec<std::net::TcpStream> =
        (0..200).map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    let (status, _) = post(port, &old_ca, "/validate-trafficinfra", &body).unwrap();
    assert_eq!(status, 200, "answered while 200 idle connections are open");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    for s in &mut idle {
        use std::io::Read;
        s.set_read_timeout(Some(
            deadline.saturating_duration_since(std::time::Instant::now()).max(Duration::from_millis(10)),
        ))
        .unwrap();
        let mut b = [0u8; 16];
        assert!(matches!(s.read(&mut b), Ok(0)), "an idle pre-TLS connection was not closed");
    }
    let text = integration_tests::http_get(&format!("http://127.0.0.1:{metrics_port}/metrics")).unwrap();
    let hits = integration_tests::metric(
        &text,
        "weir_http_limit_hits_total",
        &[("server", "webhook"), ("limit", "tls_handshake_timeout")],
    );
    assert!(hits.unwrap_or(0.0) >= 200.0, "{hits:?}");

    // The certificate files are swapped: the next handshake presents the new certificate.
    let new_ca = write_cert(&certs);
    wait_for("the new certificate presented", Duration::from_secs(10), || {
        post(port, &new_ca, "/validate-trafficinfra", &body).ok()
    });
    assert!(
        post(port, &old_ca, "/validate-trafficinfra", &body).is_err(),
        "the old certificate is no longer presented"
    );
}
