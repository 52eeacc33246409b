//! What every component of one process shares: one shutdown signal, one metrics registry (with the
//! families several components update registered once), and one Kubernetes client, built the first
//! time a component needs one. `weir local` runs its DNS and xDS halves on one [`Runtime`].

use std::sync::Arc;

use anyhow::{Context, Result};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::http_serve::HttpMetrics;
use crate::telemetry::{InvalidInputs, SharedRegistry};

#[derive(Clone)]
pub struct Runtime {
    shutdown: watch::Receiver<bool>,
    registry: SharedRegistry,
    kube: Arc<tokio::sync::OnceCell<kube::Client>>,
    /// `weir_invalid_input_total`: every component that refuses input counts here.
    pub invalid: InvalidInputs,
    /// `weir_http_limit_hits_total`: every HTTP server of the process.
    pub http: HttpMetrics,
}

impl Runtime {
    /// The runtime of a process: shutdown on SIGINT or SIGTERM. Needs a Tokio runtime.
    pub fn new() -> Self {
        Self::with_shutdown(super::factories::shutdown_signal())
    }

    pub fn with_shutdown(shutdown: watch::Receiver<bool>) -> Self {
        let mut registry = Registry::default();
        crate::providers::kubernetes::register_metrics(&mut registry);
        let invalid = InvalidInputs::register(&mut registry);
        let http = HttpMetrics::register(&mut registry);
        Self {
            shutdown,
            registry: Arc::new(parking_lot::Mutex::new(registry)),
            kube: Default::default(),
            invalid,
            http,
        }
    }

    /// Flips to true once, when the process is asked to stop: every loop and server watches it.
    pub fn shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// The process's registry, locked: components register their families into it (or into a
    /// sub-registry of it) while they are wired.
    pub fn registry(&self) -> parking_lot::MutexGuard<'_, Registry> {
        self.registry.lock()
    }

    /// The registry as the `/metrics` endpoints serve it.
    pub fn shared_registry(&self) -> SharedRegistry {
        self.registry.clone()
    }

    /// The process's one Kubernetes client (connection pool), built on first use. `what` says who
    /// asked, for the error.
    pub async fn kube(&self, what: &str) -> Result<kube::Client> {
        let client = self
            .kube
            .get_or_try_init(crate::providers::kubernetes::client)
            .await
            .with_context(|| format!("connecting to Kubernetes ({what})"))?;
        Ok(client.clone())
    }
}
