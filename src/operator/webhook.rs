//! The validating webhook's HTTPS server: `POST /validate-trafficinfra` takes an AdmissionReview
//! of a TrafficInfra and answers with [`admission::review`] against the TrafficInfras of the
//! provider's current snapshot. The certificate is `tls.crt` and `tls.key` in a directory, as
//! cert-manager or a Secret volume mounts them, re-read when the files change (rotation needs no
//! restart). Connections are bounded by [`crate::http_serve`], plus a TLS-handshake timeout.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode};
use kube::core::admission::AdmissionReview;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::admission;
use crate::crd::TrafficInfra;
use crate::http_serve::HttpServer;
use crate::providers::SnapshotRx;
use crate::telemetry::clip;

/// The path the ValidatingWebhookConfiguration calls.
pub const PATH: &str = "/validate-trafficinfra";
/// An AdmissionReview is a few KiB; the API server itself caps objects at 3 MiB.
const MAX_BODY: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("reading {path}: {message}")]
    Pem { path: String, message: String },
    #[error("the webhook certificate: {0}")]
    Tls(#[from] rustls::Error),
    #[error("binding the webhook on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// The certificate and key from `dir/tls.crt` (the chain) and `dir/tls.key`.
fn load_certified_key(dir: &Path) -> Result<Arc<CertifiedKey>, WebhookError> {
    let (crt, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let pem_err = |p: &Path, message: String| WebhookError::Pem { path: p.display().to_string(), message };
    let certs = CertificateDer::pem_file_iter(&crt)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_err(&crt, e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err(&crt, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| pem_err(&key, e.to_string()))?;
    Ok(Arc::new(CertifiedKey::from_der(certs, key, &rustls::crypto::aws_lc_rs::default_provider())?))
}

/// What identifies a version of the certificate files (a Secret volume swaps them by symlink).
fn files_version(dir: &Path) -> Option<[(std::time::SystemTime, u64); 2]> {
    let stamp = |name: &str| std::fs::metadata(dir.join(name)).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
    Some([stamp("tls.crt")?, stamp("tls.key")?])
}

/// Presents the certificate in the directory, re-read when its files change (checked at most once a
/// second, at a handshake). A change that does not load keeps the previous certificate, with a warning.
#[derive(Debug)]
pub struct ReloadingCert {
    dir: PathBuf,
    state: parking_lot::Mutex<CertState>,
}

#[derive(Debug)]
struct CertState {
    key: Arc<CertifiedKey>,
    version: Option<[(std::time::SystemTime, u64); 2]>,
    checked: std::time::Instant,
}

impl ReloadingCert {
    pub fn open(dir: &Path) -> Result<Self, WebhookError> {
        let version = files_version(dir);
        let key = load_certified_key(dir)?;
        let state = CertState { key, version, checked: std::time::Instant::now() };
        Ok(Self { dir: dir.to_path_buf(), state: parking_lot::Mutex::new(state) })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock();
        if state.checked.elapsed() >= CERT_CHECK_INTERVAL {
            state.checked = std::time::Instant::now();
            let version = files_version(&self.dir);
            if version != state.version {
                match load_certified_key(&self.dir) {
                    Ok(key) => {
                        tracing::info!(dir = %self.dir.display(), "webhook certificate reloaded");
                        state.key = key;
                        state.version = version;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook certificate changed but does not load; keeping the last one")
                    }
                }
            }
        }
        state.key.clone()
    }
}

impl rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// How often the certificate files are looked at.
const CERT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The server's TLS configuration, its certificate from `dir` and reloaded when the files change.
pub fn tls_config(dir: &Path) -> Result<rustls::ServerConfig, WebhookError> {
    let resolver = Arc::new(ReloadingCert::open(dir)?);
    // The provider is named: the process may link more than one, and then no default is chosen.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Binds `addr` and serves the webhook until shutdown, with `server`'s limits (connections, TLS
/// handshake, headers, body).
pub async fn serve(
    server: HttpServer,
    addr: SocketAddr,
    cert_dir: &Path,
    snapshots: SnapshotRx,
    mut shutdown: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, WebhookError> {
    let acceptor = TlsAcceptor::from(Arc::new(tls_config(cert_dir)?));
    let listener = TcpListener::bind(addr).await.map_err(|source| WebhookError::Bind { addr, source })?;
    tracing::info!(%addr, path = PATH, "validating webhook listening");
    let stop = async move {
        let _ = shutdown.wait_for(|v| *v).await;
    };
    Ok(tokio::spawn(async move {
        let _ = server
            .accept_loop(listener, stop, move |server, tcp, peer| {
                let (acceptor, snapshots) = (acceptor.clone(), snapshots.clone());
                async move {
                    let tls =
                        match tokio::time::timeout(server.limits.tls_handshake_timeout, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                server.metrics.hit(server.name, "tls_handshake_timeout");
                                tracing::debug!(%peer, "webhook TLS handshake timed out");
                                return;
                            }
                        };
                    let limits = (server.clone(), server.limits.body_timeout);
                    let service = hyper::service::service_fn(move |req| {
                        let (snapshots, limits) = (snapshots.clone(), limits.clone());
                        async move { Ok::<_, Infallible>(handle(req, &snapshots, &limits.0, limits.1).await) }
                    });
                    server.serve_connection(tls, service, peer).await;
                }
            })
            .await;
    }))
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    snapshots: &SnapshotRx,
    server: &HttpServer,
    body_timeout: Duration,
) -> Response<Full<Bytes>> {
    if req.uri().path() != PATH {
        return text(StatusCode::NOT_FOUND, format!("not found: the webhook serves POST {PATH}"));
    }
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, format!("{PATH} takes POST"));
    }
    let body = match tokio::time::timeout(body_timeout, Limited::new(req.into_body(), MAX_BODY).collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => return text(StatusCode::BAD_REQUEST, format!("reading the request body: {e}")),
        Err(_) => {
            server.metrics.hit(server.name, "body_timeout");
            return text(StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time".into());
        }
    };
    let snapshot = snapshots.borrow().clone();
    match respond(&body, &snapshot.traffic_infras) {
        Ok(json) => Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(json)))
            .unwrap_or_default(),
        Err(message) => {
            let message = clip(&message).into_owned();
            tracing::warn!(%message, "webhook: malformed AdmissionReview");
            text(StatusCode::BAD_REQUEST, message)
        }
    }
}

/// The response body for a request body (pure): the AdmissionReview JSON, or why the body is not one.
pub fn respond(body: &[u8], existing: &[TrafficInfra]) -> Result<Vec<u8>, String> {
    let review: AdmissionReview<TrafficInfra> = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not an AdmissionReview of a TrafficInfra: {e}"))?;
    let answer = admission::review(review, existing);
    if let Some(resp) = &answer.response {
        tracing::info!(uid = %clip(&resp.uid), allowed = resp.allowed, message = %clip(&resp.result.message), "webhook review");
    }
    serde_json::to_vec(&answer).map_err(|e| format!("encoding the AdmissionReview: {e}"))
}

fn text(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(message + "\n")));
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_and_a_review_is_answered() {
        let err = respond(b"{not json", &[]).unwrap_err();
        assert!(err.contains("not an AdmissionReview"), "{err}");
        let body = serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u1",
                "kind": {"group": "weir.dev", "version": "v1alpha1", "kind": "TrafficInfra"},
                "resource": {"group": "weir.dev", "version": "v1alpha1", "resource": "trafficinfras"},
                "name": "edge", "namespace": "shop", "operation": "CREATE", "userInfo": {},
                "object": {"apiVersion": "weir.dev/v1alpha1", "kind": "TrafficInfra", "metadata": {"name": "edge", "namespace": "shop"}},
                "dryRun": false,
            }
        });
        let out: serde_json::Value =
            serde_json::from_slice(&respond(body.to_string().as_bytes(), &[]).unwrap()).unwrap();
        assert_eq!(out["response"]["uid"], "u1");
        assert_eq!(out["response"]["allowed"], true);
    }

    #[test]
    fn a_missing_certificate_names_the_file() {
        let dir = std::env::temp_dir().join("weir-webhook-no-such-dir");
        let err = tls_config(&dir).unwrap_err().to_string();
        assert!(err.contains("weir-webhook-no-such-dir/tls.crt"), "{err}");
    }
}
