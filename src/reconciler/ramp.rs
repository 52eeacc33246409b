//! Ramps and time-boxed overrides, carried out by the cluster's leader from the state in its weight
//! row (so that they survive restarts and leader changes).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::metrics::Labels;

/// The ramp executor's metrics.
#[derive(Clone, Default)]
pub struct RampMetrics {
    /// `weir_ramp_aborted_total{cluster}`: ramps stopped by a failed gate (and reverted).
    pub aborted: Family<Labels, Counter>,
    /// `weir_ramp_active{cluster}`: 1 while a ramp of this cluster is running.
    pub active: Family<Labels, Gauge>,
    /// `weir_ramp_target_weight{cluster}`: the `--to` of the running ramp.
    pub target: Family<Labels, Gauge>,
    /// `weir_override_active{cluster}`: 1 while a time-boxed override (`weir weights set --for`) runs.
    pub override_active: Family<Labels, Gauge>,
}

impl RampMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("weir");
        r.register("ramp_aborted", "Ramps stopped by a failed gate and reverted", m.aborted.clone());
        r.register("ramp_active", "1 while a ramp of this cluster is running", m.active.clone());
        r.register("ramp_target_weight", "The target weight of the running ramp", m.target.clone());
        r.register(
            "override_active",
            "1 while a time-boxed override of this cluster's weight runs",
            m.override_active.clone(),
        );
        m
    }
}

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::leader::LeaderRx;
use super::metrics::labels;
use crate::backends::{now_ms, Gate, Override, Plan, PlanWrite, Ramp, RampState, StoreError, WeightRow, WeightStore};

/// How long the gate's HTTP request may take before the gate fails.
pub const GATE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest gate response read.
const GATE_MAX_BODY: usize = 1 << 20;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GateError {
    #[error("gate URL {0:?} is not an http(s)://host[:port][/path] URL")]
    Url(String),
    #[error("gate unreachable: {0}")]
    Unreachable(String),
    /// The TLS handshake failed (an untrusted or mismatched certificate): the gate fails safe.
    #[error("gate TLS handshake with {host} failed: {message}")]
    Tls { host: String, message: String },
    #[error("the gate rejected the query (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
    #[error("the gate's answer is not a Prometheus query result: {0}")]
    Malformed(String),
    #[error("--gate-ca-file {path}: {message}")]
    CaFile { path: String, message: String },
}

/// What the gate said.
#[derive(Debug, Clone, PartialEq)]
pub enum GateAnswer {
    /// The largest value of the result.
    Value(f64),
    NoData,
}

/// What an `https://` gate trusts: the system's roots plus `--gate-ca-file`. Built once per process.
#[derive(Clone)]
pub struct GateTls(Arc<rustls::ClientConfig>);

impl std::fmt::Debug for GateTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GateTls")
    }
}

impl GateTls {
    /// The system's roots (a missing or unreadable system store leaves only `ca_file`, with a warning)
    /// and every certificate of `ca_file` (PEM); an unreadable or empty `ca_file` is an error.
    pub fn new(ca_file: Option<&std::path::Path>) -> Result<Self, GateError> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        if let Some(e) = native.errors.first() {
            tracing::warn!(error = %e, "reading the system's CA certificates for https gates");
        }
        let (_, ignored) = roots.add_parsable_certificates(native.certs);
        if ignored > 0 {
            tracing::debug!(ignored, "system CA certificates rustls cannot use");
        }
        if let Some(path) = ca_file {
            let err = |message: String| GateError::CaFile { path: path.display().to_string(), message };
            let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| err(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| err(e.to_string()))?;
            if certs.is_empty() {
                return Err(err("no certificate in the file".into()));
            }
            for c in certs {
                roots.add(c).map_err(|e| err(e.to_string()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| GateError::Tls { host: String::new(), message: e.to_string() })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self(Arc::new(config)))
    }

    /// The system's roots only (no `--gate-ca-file`).
    pub fn system() -> Self {
        Self::new(None).expect("the system roots alone cannot fail")
    }
}

/// Percent-encodes a query-string value.
fn encode_query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len() * 3);
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One instant query (`GET {url}/api/v1/query?query=...`) with the HTTP client weir already has
/// (hyper, HTTP/1.1), over plain TCP for `http://` and rustls for `https://` (trusting `tls`).
pub async fn query_gate(gate: &Gate, tls: &GateTls) -> Result<GateAnswer, GateError> {
    let uri: hyper::Uri = gate.url.parse().map_err(|_| GateError::Url(gate.url.clone()))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(GateError::Url(gate.url.clone())),
    };
    let authority_host = uri.host().ok_or_else(|| GateError::Url(gate.url.clone()))?.to_string();
    // `[::1]` in a URL is `::1` to connect to and to check a certificate against.
    let host = authority_host.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let base = uri.path().trim_end_matches('/');
    let path = format!("{base}/api/v1/query?query={}", encode_query_value(&gate.query));
    let host_header = match uri.port_u16() {
        Some(p) => format!("{authority_host}:{p}"),
        None => authority_host.clone(),
    };
    let request = async {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| GateError::Unreachable(format!("{host}:{port}: {e}")))?;
        if !https {
            return exchange(stream, path, host_header).await;
        }
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| GateError::Tls { host: host.clone(), message: e.to_string() })?;
        let stream = tokio_rustls::TlsConnector::from(tls.0.clone())
            .connect(name, stream)
            .await
            .map_err(|e| GateError::Tls { host: host.clone(), message: e.to_string() })?;
        exchange(stream, path, host_header).await
    };
    let (status, body) = tokio::time::timeout(GATE_TIMEOUT, request)
        .await
        .map_err(|_| GateError::Unreachable(format!("no answer within {GATE_TIMEOUT:?}")))??;
    parse_gate_answer(status, &body)
}

/// One HTTP/1.1 GET on an open connection: the status and the (bounded) body.
async fn exchange<S>(stream: S, path: String, host_header: String) -> Result<(u16, bytes::Bytes), GateError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::BodyExt;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| GateError::Unreachable(e.to_string()))?;
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, host_header)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| GateError::Url(e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(|e| GateError::Unreachable(e.to_string()))?;
    let status = resp.status().as_u16();
    let body = http_body_util::Limited::new(resp.into_body(), GATE_MAX_BODY)
        .collect()
        .await
        .map_err(|e| GateError::Unreachable(format!("reading the answer: {e}")))?
        .to_bytes();
    conn.abort();
    Ok((status, body))
}

/// The Prometheus API's answer: `{"status":"success","data":{"resultType":"vector","result":[...]}}`.
pub fn parse_gate_answer(status: u16, body: &[u8]) -> Result<GateAnswer, GateError> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        if status >= 400 {
            GateError::Rejected { status, message: String::from_utf8_lossy(body).chars().take(200).collect() }
        } else {
            GateError::Malformed(e.to_string())
        }
    })?;
    if status >= 400 || v["status"] != "success" {
        let message = v["error"].as_str().unwrap_or("no error message").to_string();
        return Err(GateError::Rejected { status, message });
    }
    let sample = |s: &serde_json::Value| -> Result<f64, GateError> {
        let text = s[1].as_str().ok_or_else(|| GateError::Malformed(format!("sample {s}")))?;
        text.parse::<f64>().map_err(|_| GateError::Malformed(format!("value {text:?}")))
    };
    let values: Vec<f64> = match v["data"]["resultType"].as_str() {
        Some("vector") => v["data"]["result"]
            .as_array()
            .ok_or_else(|| GateError::Malformed("no result".into()))?
            .iter()
            .map(|r| sample(&r["value"]))
            .collect::<Result<_, _>>()?,
        Some("scalar") => vec![sample(&v["data"]["result"])?],
        other => return Err(GateError::Malformed(format!("result type {other:?} (use an instant vector or scalar)"))),
    };
    // NaN counts as no data: it compares false with everything.
    Ok(values.into_iter().filter(|x| !x.is_nan()).reduce(f64::max).map_or(GateAnswer::NoData, GateAnswer::Value))
}

/// The gate's verdict: `Ok(())` passes; `Err(why)` fails (an error or no data fails safe).
pub fn gate_verdict(gate: &Gate, answer: &Result<GateAnswer, GateError>) -> Result<(), String> {
    match answer {
        Ok(GateAnswer::Value(v)) if *v > gate.max => Err(format!("gate {v} > {}", gate.max)),
        Ok(GateAnswer::Value(_)) => Ok(()),
        Ok(GateAnswer::NoData) if gate.pass_on_no_data => Ok(()),
        Ok(GateAnswer::NoData) => Err("gate: no data (--gate-on-no-data fail)".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// What the leader does next for a row's plan. Pure: from the row and the time.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Nothing,
    /// Write DesiredWeight (the next ramp step, or an override's revert) and the new plan.
    Write {
        desired: Option<u8>,
        plan: Option<Plan>,
        cause: &'static str,
        note: String,
    },
    /// Ask the gate, then advance or abort.
    AskGate(Gate),
}

/// The plan after a ramp advanced past step `step` (or finished).
fn advance(ramp: &Ramp, step: u32, now: i64) -> Step {
    let steps = ramp.steps();
    if step >= steps {
        let plan = Plan::Ramp(Ramp { state: RampState::Completed { at_ms: now }, ..ramp.clone() });
        return Step::Write { desired: None, plan: Some(plan), cause: "ramp_done", note: "ramp completed".into() };
    }
    let at = ramp.weight_at(step + 1);
    let plan = Plan::Ramp(Ramp {
        state: RampState::Running { step: step + 1, steps, at, hold_until_ms: None },
        ..ramp.clone()
    });
    Step::Write {
        desired: Some(at),
        plan: Some(plan),
        cause: "ramp_step",
        note: format!("ramp step {}/{steps}: {at}", step + 1),
    }
}

pub fn next_step(row: &WeightRow, now: i64) -> Step {
    let desired = row.desired.valid();
    let current = row.current.valid();
    match &row.plan {
        None => Step::Nothing,
        Some(Plan::Override(o)) => {
            if now < o.until_ms {
                return Step::Nothing;
            }
            if desired == Some(o.value) {
                Step::Write {
                    desired: Some(o.previous),
                    plan: None,
                    cause: "revert",
                    note: format!("override of {} expired; back to {}", o.value, o.previous),
                }
            } else {
                Step::Write {
                    desired: None,
                    plan: None,
                    cause: "revert_skipped",
                    note: format!(
                        "override of {} expired, but DesiredWeight was changed since (now {}); not reverting",
                        o.value, row.desired
                    ),
                }
            }
        }
        Some(Plan::Ramp(ramp)) => match ramp.state {
            RampState::Running { step, at, hold_until_ms, .. } => {
                if step == 0 {
                    return advance(ramp, 0, now);
                }
                if desired != Some(at) {
                    let plan = Plan::Ramp(Ramp {
                        state: RampState::Cancelled {
                            reason: format!("DesiredWeight changed by hand to {}", row.desired),
                            at_ms: now,
                        },
                        ..ramp.clone()
                    });
                    return Step::Write {
                        desired: None,
                        plan: Some(plan),
                        cause: "ramp_cancel",
                        note: format!("ramp cancelled: DesiredWeight is {} instead of step weight {at}", row.desired),
                    };
                }
                match hold_until_ms {
                    // Waiting for our ack: CurrentWeight means converged.
                    None if current == Some(at) => {
                        let plan = Plan::Ramp(Ramp {
                            state: RampState::Running {
                                step,
                                steps: ramp.steps(),
                                at,
                                hold_until_ms: Some(now + ramp.every_ms as i64),
                            },
                            ..ramp.clone()
                        });
                        Step::Write {
                            desired: None,
                            plan: Some(plan),
                            cause: "ramp_hold",
                            note: format!("step {step} acknowledged at {at}; holding"),
                        }
                    }
                    None => Step::Nothing,
                    Some(t) if now < t => Step::Nothing,
                    Some(_) => match &ramp.gate {
                        Some(g) => Step::AskGate(g.clone()),
                        None => advance(ramp, step, now),
                    },
                }
            }
            _ => Step::Nothing,
        },
    }
}

/// After the gate answered: advance, or abort and revert to the weight from before the ramp.
pub fn after_gate(ramp: &Ramp, verdict: Result<(), String>, now: i64) -> Step {
    let RampState::Running { step, at, .. } = ramp.state else { return Step::Nothing };
    match verdict {
        Ok(()) => advance(ramp, step, now),
        Err(reason) => {
            let plan = Plan::Ramp(Ramp {
                state: RampState::Aborted { at, reason: reason.clone(), at_ms: now },
                ..ramp.clone()
            });
            Step::Write {
                desired: Some(ramp.from),
                plan: Some(plan),
                cause: "ramp_abort",
                note: format!("ramp aborted at {at}: {reason}; reverting to {}", ramp.from),
            }
        }
    }
}

/// How a plan reads in `weir weights list`.
pub fn describe_plan(plan: &Plan, now: i64) -> String {
    let secs = |ms: i64| humantime::format_duration(Duration::from_secs(((ms.max(0) + 999) / 1000) as u64)).to_string();
    match plan {
        Plan::Override(o) if now < o.until_ms => {
            format!("override {} for {} more, then back to {}", o.value, secs(o.until_ms - now), o.previous)
        }
        Plan::Override(o) => format!("override {} expired, reverting to {}", o.value, o.previous),
        Plan::Ramp(r) => match &r.state {
            RampState::Running { step: 0, .. } => format!("ramping {}→{}, starting", r.from, r.to),
            RampState::Running { step, steps, at, hold_until_ms: None } => {
                format!("ramping {}→{}, step {step}/{steps} ({at}), waiting for the ack", r.from, r.to)
            }
            RampState::Running { step, steps, hold_until_ms: Some(t), .. } => {
                format!("ramping {}→{}, step {step}/{steps}, next in {}", r.from, r.to, secs(t - now))
            }
            RampState::Completed { .. } => format!("ramp {}→{} completed", r.from, r.to),
            RampState::Aborted { at, reason, .. } => format!("aborted at {at}: {reason}"),
            RampState::Cancelled { reason, .. } => format!("ramp {}→{} cancelled: {reason}", r.from, r.to),
        },
    }
}

/// The plan executor: the leader carries out its row's ramp or override. It reads no row itself: the
/// weight loop hands over every row it reads, and is woken after each write here. Every write is
/// conditional on the row being as read, so two replicas, a restart or an operator's edit never make
/// it write over something newer.
pub struct PlanLoop {
    pub store: Arc<dyn WeightStore>,
    pub cluster: String,
    pub metrics: RampMetrics,
    pub leader: LeaderRx,
    /// The rows the weight loop read.
    pub rows: watch::Receiver<Option<WeightRow>>,
    /// Wakes the weight loop after a write, so that the step is applied (and re-read) at once.
    pub poll_weight_now: Arc<Notify>,
    /// What `https://` gates are trusted with (`--gate-ca-file`).
    pub gate_tls: GateTls,
    /// Who the history names for the controller's changes (its AWS identity on DynamoDB).
    pub actor: String,
    /// Liveness: beats every tick; stale when one step (a gate query, a write) outlives its bound.
    pub heartbeat: crate::telemetry::Heartbeat,
}

/// How long one step of the ramp runner may take before `/healthz` fails (the gate is bounded by
/// [`GATE_TIMEOUT`], the write by the store's own timeouts).
pub const PLAN_LOOP_BOUND: Duration = Duration::from_secs(120);

/// How often deadlines (holds, override expiry) are checked; no I/O unless one is due.
pub const PLAN_TICK: Duration = Duration::from_millis(100);

impl PlanLoop {
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let l = labels(&[("cluster", &self.cluster)]);
        // After a write, wait for the row that shows it before acting again.
        let mut stale = false;
        loop {
            if *shutdown.borrow() {
                return;
            }
            self.heartbeat.beat();
            let row = self.rows.borrow().clone();
            if let Some(row) = row {
                self.export(&row, &l);
                if *self.leader.borrow() && !stale {
                    match self.pass(row).await {
                        Ok(false) => {}
                        Ok(true) => {
                            stale = true;
                            self.poll_weight_now.notify_one();
                        }
                        Err(e) => {
                            tracing::warn!(cluster = %self.cluster, error = %e, "carrying out the plan failed; will retry")
                        }
                    }
                }
            }
            // Some(true): a new row; None: the weight loop is gone.
            let heartbeat = self.heartbeat.clone();
            let woke = heartbeat
                .idle(async {
                    tokio::select! {
                        _ = tokio::time::sleep(PLAN_TICK) => Some(false),
                        r = self.rows.changed() => r.ok().map(|()| true),
                        _ = shutdown.changed() => Some(false),
                    }
                })
                .await;
            match woke {
                None => return,
                Some(true) => stale = false,
                Some(false) => {}
            }
        }
    }

    fn export(&self, row: &WeightRow, l: &super::metrics::Labels) {
        let ramp = row.plan.as_ref().and_then(Plan::running_ramp);
        self.metrics.active.get_or_create(l).set(i64::from(ramp.is_some()));
        if let Some(r) = ramp {
            self.metrics.target.get_or_create(l).set(r.to.into());
        }
        let over = matches!(row.plan, Some(Plan::Override(_)));
        self.metrics.override_active.get_or_create(l).set(i64::from(over));
    }

    /// One step of the plan; `Ok(true)` when something was written (or a write was refused because
    /// the row changed): the row must be read again.
    async fn pass(&self, row: WeightRow) -> Result<bool, StoreError> {
        let now = now_ms();
        let step = match next_step(&row, now) {
            Step::AskGate(gate) => {
                let Some(Plan::Ramp(ramp)) = &row.plan else { return Ok(false) };
                let answer = query_gate(&gate, &self.gate_tls).await;
                let verdict = gate_verdict(&gate, &answer);
                tracing::info!(cluster = %self.cluster, query = %gate.query, answer = ?answer, passed = verdict.is_ok(), "ramp gate");
                after_gate(ramp, verdict, now_ms())
            }
            s => s,
        };
        let Step::Write { desired, plan, cause, note } = step else { return Ok(false) };
        let landed = self
            .store
            .write_plan(
                &self.cluster,
                PlanWrite {
                    expect_desired: row.desired.valid(),
                    expect_plan: row.plan.as_ref(),
                    desired,
                    plan: plan.as_ref(),
                    actor: &self.actor,
                    cause,
                    reason: Some(&note),
                },
            )
            .await?;
        if !landed {
            tracing::info!(cluster = %self.cluster, cause, "the row changed meanwhile; re-reading before acting");
            return Ok(true);
        }
        match cause {
            "ramp_abort" => {
                self.metrics.aborted.get_or_create(&labels(&[("cluster", &self.cluster)])).inc();
                tracing::warn!(cluster = %self.cluster, "{note}");
            }
            "revert_skipped" | "ramp_cancel" => tracing::warn!(cluster = %self.cluster, "{note}"),
            _ => tracing::info!(cluster = %self.cluster, "{note}"),
        }
        Ok(true)
    }
}

/// The override `weir weights set --for` records.
pub fn new_override(previous: u8, value: u8, duration: Duration, reason: Option<String>, actor: String) -> Override {
    Override { previous, value, until_ms: now_ms() + duration.as_millis() as i64, reason, actor }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(url: &str) -> Gate {
        Gate { url: url.into(), query: "up".into(), max: 1.0, pass_on_no_data: false }
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = GateTls::new(Some(&empty)).unwrap_err();
        assert!(matches!(&err, GateError::CaFile { message, .. } if message.contains("no certificate")), "{err}");
        let err = GateTls::new(Some(&dir.path().join("missing.pem"))).unwrap_err();
        assert!(matches!(err, GateError::CaFile { .. }), "{err}");
    }

    #[tokio::test]
    async fn only_http_and_https_gates_are_asked() {
        let tls = GateTls::system();
        for url in ["ftp://127.0.0.1/", "127.0.0.1:9090", "unix:///run/prom.sock"] {
            assert_eq!(query_gate(&gate(url), &tls).await, Err(GateError::Url(url.into())), "{url}");
        }
    }

    #[test]
    fn gate_answers_are_read_as_the_prometheus_api_gives_them() {
        let vector = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{},"value":[1,"0.2"]},{"metric":{},"value":[1,"0.7"]}]}}"#;
        assert_eq!(parse_gate_answer(200, vector), Ok(GateAnswer::Value(0.7)), "the largest value");
        let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(parse_gate_answer(200, empty), Ok(GateAnswer::NoData));
        let bad = br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert!(matches!(parse_gate_answer(400, bad), Err(GateError::Rejected { status: 400, .. })));
        let g = gate("http://x");
        assert!(gate_verdict(&g, &Ok(GateAnswer::Value(1.5))).is_err());
        assert!(gate_verdict(&g, &Ok(GateAnswer::NoData)).is_err(), "no data fails by default");
        let tls_error = Err(GateError::Tls { host: "x".into(), message: "invalid peer certificate".into() });
        assert!(gate_verdict(&g, &tls_error).unwrap_err().contains("TLS handshake"), "fails safe");
    }
}
