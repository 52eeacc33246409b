//! Prometheus metrics, `/healthz` and `/readyz` on `--metrics-addr`.
//!
//! Each component registers its own metrics (`XxxMetrics::register(&mut Registry) -> Self`) into
//! its own sub-registry of the process's one [`Registry`] (`app::runtime`), named by the prefix its
//! families share (`weir_xds`, `weir_dns`, `weir_infra`, ...; `weir` when they share no more), so a
//! component's prefix is written once; only the earlier controller's `cluster_traffic_controller_*`
//! names sit at the root. The wiring hands `&mut` of the root to every component and serves it.
//! `names::every_component_keeps_its_exposed_names` lists every family.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::http_serve::HttpServer;

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

/// Liveness: each long-running loop beats a [`Heartbeat`]; `/healthz` is unhealthy (503, naming the
/// loop) when one has not beaten within its bound.
#[derive(Clone, Default)]
pub struct Liveness {
    beats: Arc<parking_lot::Mutex<Vec<Beat>>>,
}

/// A loop's name, its bound, and when it last beat.
type Beat = (&'static str, Duration, Arc<parking_lot::Mutex<Instant>>);

/// Marks progress of one loop: it beats at the start of every iteration and, while it waits for
/// input, every [`IDLE_BEAT`] ([`Heartbeat::idle`]); so it goes stale only when one iteration (its
/// I/O included) outlives the loop's bound.
#[derive(Clone)]
pub struct Heartbeat(Arc<parking_lot::Mutex<Instant>>);

/// How often a loop that waits for input beats anyway: waiting is not being stuck.
pub const IDLE_BEAT: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Heartbeat({:?} ago)", self.0.lock().elapsed())
    }
}

impl Heartbeat {
    /// A heartbeat no `/healthz` watches (tests, one-shot commands).
    pub fn detached() -> Self {
        Heartbeat(Arc::new(parking_lot::Mutex::new(Instant::now())))
    }

    pub fn beat(&self) {
        *self.0.lock() = Instant::now();
    }

    /// Waits for `wait` (the loop's select on its inputs), beating meanwhile and when it ends.
    pub async fn idle<F: std::future::Future>(&self, wait: F) -> F::Output {
        let mut wait = std::pin::pin!(wait);
        loop {
            tokio::select! {
                out = &mut wait => {
                    self.beat();
                    return out;
                }
                _ = tokio::time::sleep(IDLE_BEAT) => self.beat(),
            }
        }
    }
}

impl Liveness {
    /// A heartbeat for `name`, stale when silent for longer than `bound`.
    pub fn heartbeat(&self, name: &'static str, bound: Duration) -> Heartbeat {
        let at = Arc::new(parking_lot::Mutex::new(Instant::now()));
        self.beats.lock().push((name, bound, at.clone()));
        Heartbeat(at)
    }

    /// Loops whose last beat is older than their bound, with how long they have been silent.
    pub fn stale(&self) -> Vec<(&'static str, Duration)> {
        self.beats
            .lock()
            .iter()
            .filter_map(|(name, bound, at)| {
                let silent = at.lock().elapsed();
                (silent > *bound).then_some((*name, silent))
            })
            .collect()
    }
}

/// The one registry of a process: locked while a component registers, and while `/metrics` encodes.
pub type SharedRegistry = Arc<parking_lot::Mutex<Registry>>;

#[derive(Clone)]
struct AppState {
    registry: SharedRegistry,
    readiness: Readiness,
    liveness: Liveness,
}

/// The router serving `/metrics`, `/healthz` and `/readyz`; other HTTP servers may merge it.
pub fn router(registry: SharedRegistry, readiness: Readiness, liveness: Liveness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { registry, readiness, liveness })
}

/// Binds `addr` and serves until `shutdown` resolves, with the limits of [`crate::http_serve`].
/// Binding errors are returned at once so that a port clash is a startup error.
pub async fn serve(
    server: HttpServer,
    addr: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    crate::http_serve::serve_router(server, addr, router, shutdown).await
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let stale = state.liveness.stale();
    if stale.is_empty() {
        return (StatusCode::OK, "ok".to_string());
    }
    let list: Vec<String> = stale.iter().map(|(n, d)| format!("{n} (no progress for {}s)", d.as_secs())).collect();
    (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {}", list.join(", ")))
}

/// Longest client-supplied text weir puts in a log line or a response.
pub const MAX_CLIENT_TEXT: usize = 256;

/// `text` cut to [`MAX_CLIENT_TEXT`] bytes (on a character boundary), saying how long it was: the one
/// rule for client-supplied strings in logs and responses.
pub fn clip(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= MAX_CLIENT_TEXT {
        return text.into();
    }
    let mut end = MAX_CLIENT_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..end], text.len()).into()
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut body = String::new();
    let encoded = encode(&mut body, &state.registry.lock());
    match encoded {
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
    // A watch denied by RBAC keeps the last view, but it is stale: not ready.
    if state.readiness.is_ready() && crate::providers::kubernetes::authorized() {
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
        let r = registry.sub_registry_with_prefix("weir");
        r.register("invalid_input", "Inputs refused (bad manifest, annotation, weight, ...), by kind", me.0.clone());
        // Expose 0 for the common kinds from the start, so that alerts and tests see the increase.
        use crate::ir::InputKind::*;
        for kind in [
            Annotation,
            Weight,
            Manifest,
            Target,
            Conflict,
            AllZeroGuard,
            Ownership,
            MinServingClusters,
            NoZone,
            Namespace,
        ] {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_short_text_and_cuts_long_text_on_a_char_boundary() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(3_000_000 / 2);
        let c = clip(&long);
        assert!(c.len() < MAX_CLIENT_TEXT + 40, "{}", c.len());
        assert!(c.ends_with("(3000000 bytes in all)"), "{c}");
    }

    #[tokio::test]
    async fn a_loop_waiting_for_input_stays_fresh_and_one_stuck_in_its_work_goes_stale() {
        let l = Liveness::default();
        let waiting = l.heartbeat("waiting", Duration::from_millis(1500));
        let stuck = l.heartbeat("stuck", Duration::from_millis(1500));
        let w = tokio::spawn(async move { waiting.idle(tokio::time::sleep(Duration::from_secs(4))).await });
        let s = tokio::spawn(async move {
            stuck.beat();
            tokio::time::sleep(Duration::from_secs(4)).await;
        });
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(l.stale().iter().map(|s| s.0).collect::<Vec<_>>(), ["stuck"]);
        w.abort();
        s.abort();
    }

    #[test]
    fn liveness_names_a_silent_loop() {
        let l = Liveness::default();
        let fast = l.heartbeat("dns", Duration::from_secs(60));
        let _slow = l.heartbeat("provider", Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        fast.beat();
        let stale = l.stale();
        assert_eq!(stale.iter().map(|s| s.0).collect::<Vec<_>>(), ["provider"]);
    }
}

#[cfg(test)]
mod names {
    use prometheus_client::registry::Registry;

    /// Every family every component registers, as `weir controller`, `weir xds` and `weir local`
    /// wire them into one registry: exposed under the names the chart's alerts, its promtool tests
    /// and the docs use.
    #[test]
    fn every_component_keeps_its_exposed_names() {
        let mut r = Registry::default();
        crate::providers::kubernetes::register_metrics(&mut r);
        super::InvalidInputs::register(&mut r);
        crate::http_serve::HttpMetrics::register(&mut r);
        crate::xds::limits::StreamLimiter::new(Default::default()).register(&mut r);
        crate::xds::server::XdsMetrics::register(&mut r);
        crate::xds::admin::AdminMetrics::register(&mut r);
        crate::xds::server::NodePolicy::any().register(&mut r);
        crate::xds::vs_status::VsReporter::register_gauge(&mut r);
        crate::dns::server::DnsServerMetrics::register(&mut r);
        crate::reconciler::metrics::WeightMetrics::register(&mut r);
        crate::aws::AwsMetrics::register(&mut r);
        crate::dns::route53::HealthMetrics::register(&mut r);
        crate::reconciler::metrics::ReconcileMetrics::register(&mut r);
        crate::reconciler::ramp::RampMetrics::register(&mut r);
        crate::reconciler::infra::InfraMetrics::register(&mut r);
        crate::reconciler::leader::LeaderMetrics::register(&mut r);
        // Counters are exposed with `_total`.
        assert_eq!(
            registered_names(&r),
            [
                "cluster_traffic_controller_ingress_weight_current",
                "cluster_traffic_controller_ingress_weight_desired",
                "weir_ack_blocked_hosts",
                "weir_admin_requests",
                "weir_aws_requests",
                "weir_dns_changes",
                "weir_dns_queries",
                "weir_dns_tcp_connections_refused",
                "weir_dns_zone_record_sets",
                "weir_dns_zone_reload_errors",
                "weir_health_check_healthy",
                "weir_http_limit_hits",
                "weir_index_divergence",
                "weir_infra_reconcile",
                "weir_infra_writes",
                "weir_invalid_input",
                "weir_kube_relists",
                "weir_kube_watch_errors",
                "weir_leader",
                "weir_leader_transitions",
                "weir_override_active",
                "weir_ramp_aborted",
                "weir_ramp_active",
                "weir_ramp_target_weight",
                "weir_reconcile",
                "weir_reconcile_duration_seconds",
                "weir_record_weight",
                "weir_virtualservices_unmatched",
                "weir_weight_drift_seconds",
                "weir_weight_refused",
                "weir_weight_row_invalid",
                "weir_weight_store_errors",
                "weir_xds_bytes_sent",
                "weir_xds_connected_clients",
                "weir_xds_initial_wait_seconds",
                "weir_xds_initial_waiting",
                "weir_xds_limits_hit",
                "weir_xds_nacks",
                "weir_xds_push_latency_seconds",
                "weir_xds_pushes",
                "weir_xds_rejected_nodes",
                "weir_xds_resources_sent",
            ]
        );
    }

    /// The name of every family in `r`, with its (sub-)registry's prefix, sorted. A family without
    /// samples is not encoded, so the names come from the registry's `Debug`: each registry shows
    /// its whole prefix, then its families' descriptors, then its sub-registries.
    fn registered_names(r: &Registry) -> Vec<String> {
        let debug = format!("{r:?}");
        let mut prefix: Option<String> = None;
        let mut names = Vec::new();
        let mut rest = debug.as_str();
        loop {
            let next = ["prefix: None", "prefix: Some(Prefix(\"", "Descriptor { name: \""]
                .iter()
                .filter_map(|m| rest.find(m).map(|at| (at, *m)))
                .min();
            let Some((at, marker)) = next else { break };
            rest = &rest[at + marker.len()..];
            let quoted = || rest.split('"').next().unwrap_or_default().to_string();
            match marker {
                "prefix: None" => prefix = None,
                m if m.starts_with("prefix") => prefix = Some(quoted()),
                _ => names.push(match &prefix {
                    Some(p) => format!("{p}_{}", quoted()),
                    None => quoted(),
                }),
            }
        }
        names.sort();
        names
    }
}
