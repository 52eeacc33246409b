//! The validating webhook's HTTPS server: `POST /validate-trafficinfra` takes an AdmissionReview
//! of a TrafficInfra and answers with [`admission::review`] against the TrafficInfras of the
//! provider's current snapshot. The certificate is read once at start (no reload): `tls.crt` and
//! `tls.key` in a directory, as cert-manager or a Secret volume mounts them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use kube::core::admission::AdmissionReview;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::admission;
use crate::crd::TrafficInfra;
use crate::providers::SnapshotRx;

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

/// The server's TLS configuration from `dir/tls.crt` (the chain) and `dir/tls.key`.
pub fn tls_config(dir: &Path) -> Result<rustls::ServerConfig, WebhookError> {
    let (crt, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let pem_err = |p: &Path, message: String| WebhookError::Pem { path: p.display().to_string(), message };
    let certs = CertificateDer::pem_file_iter(&crt)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_err(&crt, e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err(&crt, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| pem_err(&key, e.to_string()))?;
    // The provider is named: the process may link more than one, and then no default is chosen.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Binds `addr` and serves the webhook until shutdown.
pub async fn serve(
    addr: SocketAddr,
    cert_dir: &Path,
    snapshots: SnapshotRx,
    mut shutdown: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, WebhookError> {
    let acceptor = TlsAcceptor::from(Arc::new(tls_config(cert_dir)?));
    let listener = TcpListener::bind(addr).await.map_err(|source| WebhookError::Bind { addr, source })?;
    tracing::info!(%addr, path = PATH, "validating webhook listening");
    Ok(tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook accept");
                        continue;
                    }
                },
                _ = shutdown.wait_for(|v| *v) => return,
            };
            let (acceptor, snapshots) = (acceptor.clone(), snapshots.clone());
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "webhook TLS handshake failed");
                        return;
                    }
                };
                let service = hyper::service::service_fn(move |req| {
                    let snapshots = snapshots.clone();
                    async move { Ok::<_, Infallible>(handle(req, &snapshots).await) }
                });
                if let Err(e) =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await
                {
                    tracing::debug!(%peer, error = %e, "webhook connection");
                }
            });
        }
    }))
}

async fn handle(req: Request<hyper::body::Incoming>, snapshots: &SnapshotRx) -> Response<Full<Bytes>> {
    if req.uri().path() != PATH {
        return text(StatusCode::NOT_FOUND, format!("not found: the webhook serves POST {PATH}"));
    }
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, format!("{PATH} takes POST"));
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("reading the request body: {e}")),
    };
    let snapshot = snapshots.borrow().clone();
    match respond(&body, &snapshot.traffic_infras) {
        Ok(json) => Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(json)))
            .unwrap_or_default(),
        Err(message) => {
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
        tracing::info!(uid = %resp.uid, allowed = resp.allowed, message = %resp.result.message, "webhook review");
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
