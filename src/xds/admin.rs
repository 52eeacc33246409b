//! The HTTP admin API (axum, its own port): read and set strategy weights, register services, and
//! look at what is served. Every refused request is a 400 with `{"error": "..."}` and changes
//! nothing; writes and `/config_dump` need `Authorization: Bearer <token>` when a token is configured.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::sync::watch;

use super::cache::SnapshotCache;
use super::controller::View;
use super::model::{
    find_service, namespace_allowed, namespace_refusal, ProxyConfig, ServiceSource, TrafficState, XdsSettings,
};
use super::resources::{exact_weight_total, ResourceType};
use super::server::Clients;
use super::state::{SharedState, StateError};
use crate::ir::InputKind;
use crate::telemetry::{clip, InvalidInputs};

/// Largest weight accepted for one strategy; keeps every sum far from overflowing.
pub const MAX_WEIGHT: u32 = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error(transparent)]
    Store(#[from] StateError),
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let code = match &self {
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            AdminError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        (code, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

fn bad(msg: impl Into<String>) -> AdminError {
    AdminError::BadRequest(msg.into())
}

#[derive(Clone)]
pub struct AdminMetrics {
    requests: Family<Vec<(String, String)>, Counter>,
}

impl AdminMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self { requests: Family::default() };
        let r = registry.sub_registry_with_prefix("weir_admin");
        r.register("requests", "Admin API requests, by path and status code", m.requests.clone());
        m
    }
}

#[derive(Clone)]
pub struct Admin {
    pub settings: XdsSettings,
    pub state: SharedState,
    pub view: watch::Receiver<Arc<View>>,
    pub cache: SnapshotCache,
    pub clients: Clients,
    pub token: Option<Arc<str>>,
    pub metrics: AdminMetrics,
    pub invalid: InvalidInputs,
}

type Params = Query<Vec<(String, String)>>;

impl Admin {
    /// The admin routes; `extra` (metrics, health) is merged in.
    pub fn router(self, extra: Router) -> Router {
        let metrics = self.metrics.clone();
        Router::new()
            .route("/traffic", get(get_traffic).post(post_traffic))
            .route("/services", get(get_services).put(put_service).delete(delete_service))
            .route("/endpoints", get(get_endpoints))
            .route("/config_dump", get(config_dump))
            .route("/clients", get(get_clients))
            .with_state(self)
            .merge(extra)
            .layer(middleware::from_fn_with_state(metrics, count))
    }

    fn view(&self) -> Arc<View> {
        self.view.borrow().clone()
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), AdminError> {
        let Some(token) = &self.token else { return Ok(()) };
        let given = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if bearer_matches(token, given) {
            Ok(())
        } else {
            Err(AdminError::Unauthorized)
        }
    }

    /// Logs and counts a refused request; the caller returns the error.
    fn refuse(&self, what: &str, e: AdminError) -> AdminError {
        if let AdminError::BadRequest(msg) = &e {
            self.invalid.inc(InputKind::AdminRequest);
            tracing::warn!(request = what, "admin request refused: {msg}");
        }
        e
    }
}

/// `Authorization: Bearer <token>` with exactly the token: no trimming, compared in constant time.
pub fn bearer_matches(token: &str, header: Option<&str>) -> bool {
    header.and_then(|v| v.strip_prefix("Bearer ")).is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const PATHS: [&str; 8] =
    ["/traffic", "/services", "/endpoints", "/config_dump", "/clients", "/healthz", "/readyz", "/metrics"];

async fn count(State(m): State<AdminMetrics>, req: Request, next: Next) -> Response {
    // Bounded label values: unknown paths are counted together.
    let path = PATHS.iter().find(|p| **p == req.uri().path()).copied().unwrap_or("other").to_string();
    let resp = next.run(req).await;
    m.requests.get_or_create(&vec![("path".into(), path), ("code".into(), resp.status().as_u16().to_string())]).inc();
    resp
}

async fn get_traffic(State(a): State<Admin>) -> Json<BTreeMap<String, u32>> {
    Json(a.state.get().weights)
}

/// Parses the strategy weights of `POST /traffic`. Pure.
pub fn parse_weights(params: &[(String, String)], known: &BTreeSet<String>) -> Result<BTreeMap<String, u32>, String> {
    if params.is_empty() {
        return Err("give at least one strategy weight, e.g. POST /traffic?blue=50&green=50".into());
    }
    let mut out = BTreeMap::new();
    for (k, v) in params {
        if !known.contains(k) {
            let known: Vec<&str> = known.iter().map(String::as_str).collect();
            return Err(format!("unknown strategy {:?}; known strategies: {}", clip(k), known.join(", ")));
        }
        if !v.bytes().all(|b| b.is_ascii_digit()) || v.is_empty() {
            return Err(format!("weight of {k:?} must be a non-negative integer, got {:?}", clip(v)));
        }
        let w: u32 = v
            .parse()
            .ok()
            .filter(|w| *w <= MAX_WEIGHT)
            .ok_or_else(|| format!("weight of {k:?} must be at most {MAX_WEIGHT}, got {v:?}"))?;
        if out.insert(k.clone(), w).is_some() {
            return Err(format!("strategy {k:?} given twice"));
        }
    }
    Ok(out)
}

/// Applies new weights to a state, refusing an all-zero result. Pure.
pub fn apply_weights(state: &TrafficState, new: &BTreeMap<String, u32>) -> Result<TrafficState, String> {
    let mut next = state.clone();
    next.weights.extend(new.iter().map(|(k, v)| (k.clone(), *v)));
    if next.weights.values().all(|w| *w == 0) {
        return Err(format!("refusing weights {:?}: at least one strategy must have a weight above 0", next.weights));
    }
    Ok(next)
}

/// Refuses weights whose weighted route, over the services registered now, would total more than
/// `u32::MAX` (Envoy and grpcio NACK it). Services registered later can still push a total over it;
/// the translator then scales the route down proportionally (`resources::weighted_clusters`). Pure.
pub fn check_weight_total(config: &ProxyConfig, weights: &BTreeMap<String, u32>) -> Result<(), String> {
    let candidate = ProxyConfig { strategies: weights.clone(), ..config.clone() };
    let total = exact_weight_total(&candidate);
    if total > u64::from(u32::MAX) {
        return Err(format!(
            "refusing weights {weights:?}: split over the {} registered services the route's weights would total \
             {total}, above {} (Envoy rejects that); use smaller weights, e.g. percentages",
            config.services.len(),
            u32::MAX
        ));
    }
    Ok(())
}

async fn post_traffic(
    State(a): State<Admin>,
    headers: HeaderMap,
    Query(params): Params,
) -> Result<Response, AdminError> {
    a.authorize(&headers)?;
    let view = a.view();
    let result = a
        .state
        .update(|cur| {
            let new = parse_weights(&params, &view.known_strategies(cur))?;
            let next = apply_weights(cur, &new)?;
            check_weight_total(&view.config, &next.weights)?;
            Ok::<_, String>(next)
        })
        .await?;
    match result {
        Ok(next) => {
            tracing::info!(weights = ?next.weights, revision = next.revision, "strategy weights set");
            Ok(Json(next.weights).into_response())
        }
        Err(msg) => Err(a.refuse("POST /traffic", bad(msg))),
    }
}

async fn get_services(State(a): State<Admin>) -> Response {
    Json(a.view().services.clone()).into_response()
}

/// The one `service` parameter of `/services` writes, as `namespace/name`.
fn service_param(settings: &XdsSettings, params: &[(String, String)]) -> Result<String, AdminError> {
    if let Some((k, _)) = params.iter().find(|(k, _)| k != "service") {
        return Err(bad(format!("unknown parameter {:?}; use ?service=NAME", clip(k))));
    }
    match params {
        [(_, v)] if !v.trim().is_empty() => Ok(settings.qualify(v.trim())),
        [] | [_] => Err(bad("missing service: use ?service=NAME (or NAMESPACE/NAME)")),
        _ => Err(bad("give exactly one service")),
    }
}

async fn put_service(
    State(a): State<Admin>,
    headers: HeaderMap,
    Query(params): Params,
) -> Result<Response, AdminError> {
    a.authorize(&headers)?;
    let service = service_param(&a.settings, &params).map_err(|e| a.refuse("PUT /services", e))?;
    let view = a.view();
    // The namespace first: whether a Service exists elsewhere is not told.
    let namespace = service.split_once('/').map_or("", |(ns, _)| ns);
    if !namespace_allowed(&view.snapshot, &a.settings, namespace) {
        let msg = namespace_refusal(&view.snapshot, &a.settings, &clip(&service));
        return Err(a.refuse("PUT /services", bad(msg)));
    }
    if find_service(&view.snapshot, &service).is_none() {
        return Err(a.refuse("PUT /services", bad(format!("unknown service {:?}: no such Service", clip(&service)))));
    }
    let next = a
        .state
        .update(|cur| {
            let mut next = cur.clone();
            next.deregistered.remove(&service);
            next.registered.insert(service.clone());
            Ok::<_, ()>(next)
        })
        .await?;
    tracing::info!(%service, revision = next.as_ref().map(|n| n.revision).unwrap_or_default(), "service registered");
    Ok(Json(json!({ "registered": service })).into_response())
}

async fn delete_service(
    State(a): State<Admin>,
    headers: HeaderMap,
    Query(params): Params,
) -> Result<Response, AdminError> {
    a.authorize(&headers)?;
    let service = service_param(&a.settings, &params).map_err(|e| a.refuse("DELETE /services", e))?;
    let view = a.view();
    let Some(selected) = view.services.iter().find(|s| s.service == service) else {
        let msg = format!("unknown service {:?}: it is not registered", clip(&service));
        return Err(a.refuse("DELETE /services", bad(msg)));
    };
    let by_api_only = selected.source == ServiceSource::Api;
    a.state
        .update(|cur| {
            let mut next = cur.clone();
            next.registered.remove(&service);
            if !by_api_only {
                // Selected by a flag, the TrafficInfra or a label: remember the removal.
                next.deregistered.insert(service.clone());
            }
            Ok::<_, ()>(next)
        })
        .await?
        .ok();
    tracing::info!(%service, "service deregistered");
    Ok(Json(json!({ "deregistered": service })).into_response())
}

async fn get_endpoints(State(a): State<Admin>) -> Response {
    let view = a.view();
    let out: BTreeMap<String, _> = view.config.services.iter().map(|s| (s.cluster_name(), &s.endpoints)).collect();
    Json(json!(out)).into_response()
}

/// Per connected node: per type, the version it ACKed, what it was sent, its status (ACKED, NACKED,
/// REQUESTED) and its last NACK (the same as CSDS on the ADS port). Node ids and NACK messages come
/// from clients: behind the token like `/config_dump`.
async fn get_clients(State(a): State<Admin>, headers: HeaderMap) -> Result<Response, AdminError> {
    a.authorize(&headers)?;
    Ok(Json(a.clients.by_node()).into_response())
}

/// Everything the server holds, including registered services and client addresses: behind the
/// token like the writes.
async fn config_dump(State(a): State<Admin>, headers: HeaderMap) -> Result<Response, AdminError> {
    a.authorize(&headers)?;
    let view = a.view();
    let snap = a.cache.current();
    let versions: BTreeMap<&str, &str> = ResourceType::ALL.iter().map(|t| (t.label(), snap.version(*t))).collect();
    Ok(Json(json!({
        "name": a.settings.name,
        "state_store": a.state.describe(),
        "traffic": view.state,
        "services": view.services,
        "refused_services": view.refused,
        "config": view.config,
        "versions": versions,
        "resources": snap.to_json(),
        "clients": a.clients.all(),
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> BTreeSet<String> {
        ["blue".to_string(), "green".to_string()].into()
    }

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn weights_are_parsed_strictly() {
        assert_eq!(
            parse_weights(&p(&[("blue", "50"), ("green", "50")]), &known()).unwrap(),
            [("blue".to_string(), 50), ("green".to_string(), 50)].into()
        );
        for bad in [
            p(&[]),
            p(&[("blue", "abc")]),
            p(&[("blue", "-1")]),
            p(&[("blue", "")]),
            p(&[("blue", "1.5")]),
            p(&[("blue", "5000000")]),
            p(&[("red", "10")]),
            p(&[("blue", "1"), ("blue", "2")]),
        ] {
            assert!(parse_weights(&bad, &known()).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn all_zero_is_refused_and_unnamed_strategies_keep_their_weight() {
        let state = TrafficState::initial(&crate::crd::TrafficDefaults::default());
        assert!(apply_weights(&state, &[("blue".to_string(), 0)].into()).is_err());
        let next = apply_weights(&state, &[("green".to_string(), 10)].into()).unwrap();
        assert_eq!(next.weights, [("blue".to_string(), 100), ("green".to_string(), 10)].into());
    }

    #[test]
    fn unknown_strategy_keys_are_clipped_in_the_error() {
        let huge = "x".repeat(60_000);
        let err = parse_weights(&p(&[(huge.as_str(), "1")]), &known()).unwrap_err();
        assert!(err.len() < 400, "{}", err.len());
        assert!(err.contains("60000 bytes in all"), "{err}");
    }

    #[test]
    fn the_bearer_token_must_match_exactly() {
        assert!(bearer_matches("s3cret", Some("Bearer s3cret")));
        for bad in
            ["Bearer s3cret ", "Bearer  s3cret", "Bearer s3cret\n", "bearer s3cret", "s3cret", "Bearer s3cre", ""]
        {
            assert!(!bearer_matches("s3cret", Some(bad)), "{bad:?}");
        }
        assert!(!bearer_matches("s3cret", None));
    }

    #[test]
    fn weights_whose_route_total_would_overflow_are_refused() {
        let services = (0..47)
            .map(|i| (format!("s{i}-blue"), "blue"))
            .chain((0..48).map(|i| (format!("s{i}-green"), "green")))
            .map(|(name, strategy)| super::super::model::ServiceBackend {
                namespace: "shop".into(),
                name,
                strategy: strategy.into(),
                endpoints: vec![],
                port: None,
            })
            .collect();
        let config = super::super::model::ProxyConfig {
            name: "shop".into(),
            listener_port: 8080,
            strategies: BTreeMap::new(),
            services,
            policies: Default::default(),
        };
        let big: BTreeMap<String, u32> = [("blue".to_string(), 1_000_000), ("green".to_string(), 1_000_000)].into();
        let err = check_weight_total(&config, &big).unwrap_err();
        assert!(err.contains("4294967295"), "{err}");
        let fine: BTreeMap<String, u32> = [("blue".to_string(), 50), ("green".to_string(), 50)].into();
        assert!(check_weight_total(&config, &fine).is_ok());
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
