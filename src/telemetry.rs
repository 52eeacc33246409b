//! Prometheus metrics, `/healthz` and `/readyz` on `--metrics-addr`.
//!
//! Each component registers its own metrics (`XxxMetrics::register(&mut Registry) -> Self`); the
//! wiring creates one [`Registry`], hands `&mut` to every component, then serves it read-only.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

/// Readiness, set by the component that knows (first reconcile done, caches warm).
#[derive(Clone)]
pub struct Readiness {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self { tx: Arc::new(watch::channel(false).0) }
    }
}

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.tx.send_replace(ready);
    }
    pub fn is_ready(&self) -> bool {
        *self.tx.borrow()
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    readiness: Readiness,
}

/// The router serving `/metrics`, `/healthz` and `/readyz`; other HTTP servers may merge it.
pub fn router(registry: Arc<Registry>, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { registry, readiness })
}

/// Binds `addr` and serves until `shutdown` resolves. Binding errors are returned at once so that a
/// port clash is a startup error.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving metrics, /healthz and /readyz");
    Ok(tokio::spawn(async move { axum::serve(listener, router).with_graceful_shutdown(shutdown).await }))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut body = String::new();
    match encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// `weir_invalid_input_total{kind}`: inputs weir refused, by [`InputKind`](crate::ir::InputKind).
/// Shared (cheap clones) by every component of one process that refuses input, so that the family is
/// registered once.
#[derive(Clone, Default)]
pub struct InvalidInputs(
    prometheus_client::metrics::family::Family<Vec<(String, String)>, prometheus_client::metrics::counter::Counter>,
);

impl InvalidInputs {
    pub fn register(registry: &mut Registry) -> Self {
        let me = Self::default();
        registry.register(
            "weir_invalid_input",
            "Inputs refused (bad manifest, annotation, weight, ...), by kind",
            me.0.clone(),
        );
        // Expose 0 for the common kinds from the start, so that alerts and tests see the increase.
        use crate::ir::InputKind::*;
        for kind in [Annotation, Weight, Manifest, Target, Conflict, AllZeroGuard, Ownership, MinServingClusters] {
            let _ = me.0.get_or_create(&vec![("kind".to_string(), kind.label().to_string())]);
        }
        me
    }

    pub fn inc(&self, kind: crate::ir::InputKind) {
        self.0.get_or_create(&vec![("kind".to_string(), kind.label().to_string())]).inc();
    }

    pub fn get(&self, kind: crate::ir::InputKind) -> u64 {
        self.0.get_or_create(&vec![("kind".to_string(), kind.label().to_string())]).get()
    }
}
