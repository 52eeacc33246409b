//! Route53 health checks, one per cluster target (`--health-check-path`, `--health-check-port`,
//! `--health-check-protocol`), created idempotently and attached to this cluster's records.
//!
//! Idempotence does not rely on Route53: the caller reference is derived from cluster, target and
//! settings, and existing checks are found by listing (once, then cached) before anything is created.
//! The test endpoint creates a new check for a repeated caller reference, so this matters there too.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use aws_sdk_route53::types::{HealthCheckConfig, HealthCheckType, Tag, TagResourceType};
use aws_sdk_route53::Client;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::record::{DesiredRecords, Hold, HoldReason, Ownership, RecordType};
use super::DnsError;
use crate::aws::{classify, describe, Aws};

const PROVIDER: &str = "route53";
/// Health status is read at most this often (each read is one call per target).
const STATUS_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckSettings {
    pub path: String,
    pub port: u16,
    /// HTTP, HTTPS or TCP.
    pub protocol: String,
}

impl HealthCheckSettings {
    fn check_type(&self) -> Result<HealthCheckType, String> {
        match self.protocol.to_ascii_uppercase().as_str() {
            "HTTP" => Ok(HealthCheckType::Http),
            "HTTPS" => Ok(HealthCheckType::Https),
            "TCP" => Ok(HealthCheckType::Tcp),
            other => Err(format!("--health-check-protocol {other:?}: use HTTP, HTTPS or TCP")),
        }
    }
}

/// Stable caller reference of the check for one target: a new check when a setting changes, the same
/// one otherwise (Route53 limits caller references to 64 characters).
pub fn caller_reference(cluster: &str, target: &str, s: &HealthCheckSettings) -> String {
    let digest = Sha256::digest(format!("{cluster}\0{target}\0{}\0{}\0{}", s.protocol, s.port, s.path));
    format!("weir-{}", &hex::encode(digest)[..40])
}

/// One target's check, for `weir explain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheckState {
    pub target: String,
    pub id: String,
    /// `None` until the status was read.
    pub healthy: Option<bool>,
    /// What the checkers reported.
    pub detail: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthLabels {
    cluster: String,
    target: String,
}

/// `weir_health_check_healthy{cluster,target}`: 1 healthy, 0 not. One family per process (as
/// [`crate::aws::AwsMetrics`]), registered by the wiring.
#[derive(Clone)]
pub struct HealthMetrics {
    healthy: Family<HealthLabels, Gauge>,
}

static SHARED: std::sync::OnceLock<HealthMetrics> = std::sync::OnceLock::new();

impl Default for HealthMetrics {
    fn default() -> Self {
        SHARED.get_or_init(|| HealthMetrics { healthy: Family::default() }).clone()
    }
}

impl HealthMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("weir_health_check");
        r.register(
            "healthy",
            "Route53 health check status of each cluster target (1 healthy, 0 unhealthy)",
            m.healthy.clone(),
        );
        m
    }

    pub fn get(&self, cluster: &str, target: &str) -> i64 {
        self.healthy.get_or_create(&HealthLabels { cluster: cluster.into(), target: target.into() }).get()
    }
}

#[derive(Default)]
struct State {
    /// caller reference → health check id, of every weir check found or created.
    by_reference: HashMap<String, String>,
    listed: bool,
    status: HashMap<String, HealthCheckState>,
    status_read_at: Option<Instant>,
}

pub(crate) struct HealthChecks {
    client: Client,
    aws: Aws,
    cluster: String,
    settings: HealthCheckSettings,
    metrics: HealthMetrics,
    state: Mutex<State>,
    /// Look checks up, never create one (`weir plan`, `weir explain`).
    read_only: std::sync::atomic::AtomicBool,
}

impl HealthChecks {
    pub(crate) fn new(
        client: Client,
        aws: Aws,
        cluster: String,
        settings: HealthCheckSettings,
        metrics: HealthMetrics,
    ) -> Self {
        Self {
            client,
            aws,
            cluster,
            settings,
            metrics,
            state: Mutex::new(State::default()),
            read_only: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(crate) fn set_read_only(&self) {
        self.read_only.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn call_error(operation: &'static str, message: String) -> DnsError {
        DnsError::Call { provider: PROVIDER, operation, message, retryable: true }
    }

    /// Lists every health check once and remembers weir's (by caller reference).
    async fn list(&self) -> Result<(), DnsError> {
        if self.state.lock().listed {
            return Ok(());
        }
        let mut found = HashMap::new();
        let mut marker: Option<String> = None;
        for _ in 0..10_000 {
            let req = self.client.list_health_checks().set_marker(marker.clone()).max_items(100);
            let out = self
                .aws
                .call(PROVIDER, "ListHealthChecks", || req.clone().send())
                .await
                .map_err(|e| Self::call_error("ListHealthChecks", describe(&e)))?;
            for hc in out.health_checks() {
                if hc.caller_reference().starts_with("weir-") {
                    found.insert(hc.caller_reference().to_string(), hc.id().to_string());
                }
            }
            match out.next_marker().filter(|m| out.is_truncated() && Some(*m) != marker.as_deref()) {
                Some(m) => marker = Some(m.to_string()),
                None => break,
            }
        }
        let mut state = self.state.lock();
        state.by_reference.extend(found);
        state.listed = true;
        Ok(())
    }

    /// The check of `target`, created (and tagged) if there is none.
    async fn ensure(&self, target: &str) -> Result<String, DnsError> {
        let reference = caller_reference(&self.cluster, target, &self.settings);
        if let Some(id) = self.state.lock().by_reference.get(&reference) {
            return Ok(id.clone());
        }
        self.list().await?;
        if let Some(id) = self.state.lock().by_reference.get(&reference) {
            return Ok(id.clone());
        }
        let check_type = self.settings.check_type().map_err(|m| Self::call_error("CreateHealthCheck", m))?;
        let mut config = HealthCheckConfig::builder()
            .r#type(check_type.clone())
            .port(i32::from(self.settings.port))
            .request_interval(30)
            .failure_threshold(3);
        config = match target.parse::<IpAddr>() {
            Ok(ip) => config.ip_address(ip.to_string()),
            Err(_) => config.fully_qualified_domain_name(target),
        };
        if check_type != HealthCheckType::Tcp {
            config = config.resource_path(&self.settings.path);
        }
        if check_type == HealthCheckType::Https && target.parse::<IpAddr>().is_err() {
            config = config.enable_sni(true);
        }
        let config = config.build().map_err(|e| Self::call_error("CreateHealthCheck", e.to_string()))?;
        let req = self.client.create_health_check().caller_reference(&reference).health_check_config(config);
        let id = match self.aws.call(PROVIDER, "CreateHealthCheck", || req.clone().send()).await {
            Ok(out) => out.health_check().map(|h| h.id().to_string()).unwrap_or_default(),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_health_check_already_exists()) => {
                // Created by an earlier run whose answer was lost: find it.
                self.state.lock().listed = false;
                self.list().await?;
                self.state.lock().by_reference.get(&reference).cloned().ok_or_else(|| {
                    Self::call_error("CreateHealthCheck", format!("{reference} exists but was not listed"))
                })?
            }
            Err(e) => {
                return Err(DnsError::aws(
                    PROVIDER,
                    "CreateHealthCheck",
                    format!("health check for {target}: {}", describe(&e)),
                    classify(&e),
                ))
            }
        };
        let tags = self
            .client
            .change_tags_for_resource()
            .resource_type(TagResourceType::Healthcheck)
            .resource_id(&id)
            .add_tags(Tag::builder().key("weir:cluster").value(&self.cluster).build())
            .add_tags(Tag::builder().key("weir:target").value(target).build())
            .add_tags(Tag::builder().key("Name").value(format!("weir {} {target}", self.cluster)).build());
        if let Err(e) = self.aws.call(PROVIDER, "ChangeTagsForResource", || tags.clone().send()).await {
            // The check works without tags; they are for people.
            tracing::warn!(id, target, error = %describe(&e), "could not tag health check");
        }
        tracing::info!(id, target, reference, "created Route53 health check");
        self.state.lock().by_reference.insert(reference, id.clone());
        Ok(id)
    }

    /// Sets the health check of every traffic record to its target's check. A host whose check cannot
    /// be made is kept as published.
    pub(crate) async fn attach(&self, desired: &mut DesiredRecords, owner: &Ownership) {
        let mut ids: HashMap<String, Result<String, String>> = HashMap::new();
        let targets: BTreeSet<String> = desired
            .records
            .iter()
            .filter(|r| r.key.rtype.is_traffic())
            .filter_map(|r| r.values.first().cloned())
            .collect();
        let read_only = self.read_only.load(std::sync::atomic::Ordering::SeqCst);
        for target in &targets {
            if read_only {
                // A target without a check yet keeps none here; the controller would create it.
                if let Err(e) = self.list().await {
                    ids.insert(target.clone(), Err(e.to_string()));
                    continue;
                }
                let reference = caller_reference(&self.cluster, target, &self.settings);
                if let Some(id) = self.state.lock().by_reference.get(&reference) {
                    ids.insert(target.clone(), Ok(id.clone()));
                }
            } else {
                ids.insert(target.clone(), self.ensure(target).await.map_err(|e| e.to_string()));
            }
        }
        let mut failed_hosts = BTreeSet::new();
        for record in desired.records.iter_mut().filter(|r| r.key.rtype.is_traffic()) {
            match record.values.first().and_then(|t| ids.get(t)) {
                Some(Ok(id)) => record.health_check_id = Some(id.clone()),
                Some(Err(e)) => {
                    tracing::warn!(host = %record.key.name, error = %e, "no health check; keeping the host's published records");
                    failed_hosts.insert(record.key.name.clone());
                }
                None => {}
            }
        }
        if !failed_hosts.is_empty() {
            for host in &failed_hosts {
                let source = desired.source_of(host);
                let weight = desired.records.iter().find(|r| r.key.name == *host).map(|r| r.weight);
                desired.keep.insert(host.clone(), Hold { source, weight, reason: HoldReason::Incomplete });
            }
            desired.records.retain(|r| {
                let host = match r.key.rtype {
                    RecordType::Txt => owner.host_of_txt(&r.key.name).unwrap_or(&r.key.name),
                    _ => &r.key.name,
                };
                !failed_hosts.contains(host)
            });
        }
        let due = self.state.lock().status_read_at.is_none_or(|t| t.elapsed() >= STATUS_INTERVAL);
        if due {
            let targets: Vec<String> = targets.into_iter().collect();
            if let Err(e) = self.status(&targets).await {
                tracing::warn!(error = %e, "could not read health check status");
            }
        }
    }

    /// Reads the status of the checks of `targets` (existing ones only; nothing is created) and
    /// updates the metric.
    pub(crate) async fn status(&self, targets: &[String]) -> Result<Vec<HealthCheckState>, DnsError> {
        self.list().await?;
        let mut out = Vec::new();
        for target in targets {
            let reference = caller_reference(&self.cluster, target, &self.settings);
            let Some(id) = self.state.lock().by_reference.get(&reference).cloned() else {
                continue;
            };
            let req = self.client.get_health_check_status().health_check_id(&id);
            let state = match self.aws.call(PROVIDER, "GetHealthCheckStatus", || req.clone().send()).await {
                Ok(resp) => {
                    let reports: Vec<String> = resp
                        .health_check_observations()
                        .iter()
                        .filter_map(|o| o.status_report().and_then(|r| r.status()).map(str::to_string))
                        .collect();
                    let ok = reports.iter().filter(|s| s.starts_with("Success")).count();
                    // Route53 considers a check healthy when more than half of the checkers agree.
                    let healthy = !reports.is_empty() && ok * 2 > reports.len();
                    HealthCheckState {
                        target: target.clone(),
                        id: id.clone(),
                        healthy: Some(healthy),
                        detail: format!("{ok}/{} checkers report success", reports.len()),
                    }
                }
                Err(e) => {
                    HealthCheckState { target: target.clone(), id: id.clone(), healthy: None, detail: describe(&e) }
                }
            };
            if let Some(h) = state.healthy {
                self.metrics
                    .healthy
                    .get_or_create(&HealthLabels { cluster: self.cluster.clone(), target: target.clone() })
                    .set(i64::from(h));
            }
            out.push(state);
        }
        let mut st = self.state.lock();
        st.status_read_at = Some(Instant::now());
        for s in &out {
            st.status.insert(s.target.clone(), s.clone());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_reference_is_stable_and_changes_with_settings() {
        let s = HealthCheckSettings { path: "/healthz".into(), port: 443, protocol: "HTTPS".into() };
        let a = caller_reference("eu", "lb.example.net", &s);
        assert_eq!(a, caller_reference("eu", "lb.example.net", &s));
        assert!(a.len() <= 64);
        assert_ne!(a, caller_reference("us", "lb.example.net", &s));
        let other = HealthCheckSettings { port: 8443, ..s.clone() };
        assert_ne!(a, caller_reference("eu", "lb.example.net", &other));
    }

    #[test]
    fn protocols() {
        let mut s = HealthCheckSettings { path: "/".into(), port: 80, protocol: "http".into() };
        assert_eq!(s.check_type(), Ok(HealthCheckType::Http));
        s.protocol = "UDP".into();
        assert!(s.check_type().is_err());
    }
}
