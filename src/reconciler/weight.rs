//! The weight loop: makes sure this cluster's row exists, then polls it (consistent read) and
//! publishes the weight to apply. A DesiredWeight that is not a weight is refused: not published,
//! CurrentWeight untouched, counted, logged once per distinct value; drift keeps counting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use super::metrics::{labels, WeightMetrics};
use super::RefusalSink;
pub use crate::backends::min_serving_violation;
use crate::backends::{DrainClaim, StoreError, StoredWeight, WeightRow, WeightStore, DRAIN_CLAIM_TTL_MS};
use crate::ir::{InputKind, Refusal};
use crate::model::ObjectRef;
use crate::telemetry::InvalidInputs;

/// The Event reason of a DesiredWeight refused by `--min-serving-clusters`.
pub const REFUSED_REASON: &str = "MinServingClustersRefused";

/// The cluster weight the DNS loop should apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightSignal {
    /// `C`.
    pub weight: u8,
    /// Whether `weight` is the row's DesiredWeight (and may be acknowledged once applied), rather than
    /// the CurrentWeight kept because DesiredWeight is invalid.
    pub from_desired: bool,
    /// The row's CurrentWeight, when valid: no ack is needed when it already equals `weight`.
    pub current: Option<u8>,
}

impl WeightSignal {
    /// Whether applying `weight` is to be acknowledged (CurrentWeight := DesiredWeight) and is not yet.
    pub fn ack_pending(&self) -> bool {
        self.from_desired && self.current != Some(self.weight)
    }
}

pub type WeightTx = watch::Sender<Option<WeightSignal>>;
pub type WeightRx = watch::Receiver<Option<WeightSignal>>;

/// Bookkeeping between polls. Pure: fed rows and instants, it says what to publish.
#[derive(Debug, Default)]
pub struct WeightTracker {
    drift_since: Option<Instant>,
    last_bad: Option<String>,
    last: Option<WeightSignal>,
}

/// What one observed row means.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The signal to publish (`None`: keep what is published).
    pub signal: Option<WeightSignal>,
    /// A DesiredWeight refused for the first time (log and count it).
    pub new_bad_value: Option<String>,
    /// A valid DesiredWeight refused by a safety rule for the first time (log and count it).
    pub new_refused_value: Option<u8>,
    pub desired: Option<u8>,
    pub current: Option<u8>,
    pub drift_seconds: f64,
}

impl WeightTracker {
    /// The weight this process last told the DNS loop to apply, if any.
    pub fn applied(&self) -> Option<u8> {
        self.last.map(|s| s.weight)
    }

    pub fn observe(&mut self, row: &WeightRow, now: Instant) -> Observation {
        self.observe_with(row, now, false)
    }

    /// `refused`: the row's (valid) DesiredWeight breaks a safety rule; it is then handled like an
    /// invalid one: not applied, not acknowledged, reported once per value, drift counting.
    pub fn observe_with(&mut self, row: &WeightRow, now: Instant, refused: bool) -> Observation {
        let drift_seconds = if row.desired == row.current && row.desired.valid().is_some() {
            self.drift_since = None;
            0.0
        } else {
            now.duration_since(*self.drift_since.get_or_insert(now)).as_secs_f64()
        };
        let current = row.current.valid();
        let mut new_bad_value = None;
        let mut new_refused_value = None;
        let signal = match &row.desired {
            StoredWeight::Valid(d) if !refused => {
                self.last_bad = None;
                Some(WeightSignal { weight: *d, from_desired: true, current })
            }
            bad => {
                // One key per refused value, so that each distinct refusal is reported once.
                let key = match bad {
                    StoredWeight::Valid(d) => format!("refused:{d}"),
                    StoredWeight::Invalid(raw) => format!("invalid:{raw}"),
                };
                if self.last_bad.as_deref() != Some(key.as_str()) {
                    self.last_bad = Some(key);
                    match bad {
                        StoredWeight::Valid(d) => new_refused_value = Some(*d),
                        StoredWeight::Invalid(raw) => new_bad_value = Some(raw.clone()),
                    }
                }
                match (self.last, current) {
                    // Keep applying what was applied before; only refresh what we know of CurrentWeight.
                    (Some(last), _) => Some(WeightSignal { current, ..last }),
                    // A refused drain in a process that has applied nothing yet: CurrentWeight 0 says
                    // nothing of what is published now (a later weight may have been applied and not
                    // acknowledged), and 0 is published only under a drain claim: apply nothing.
                    (None, Some(0)) if refused => None,
                    // Nothing applied yet in this process: keep serving the acknowledged weight.
                    (None, Some(c)) => Some(WeightSignal { weight: c, from_desired: false, current }),
                    (None, None) => None,
                }
            }
        };
        if signal.is_some() {
            self.last = signal;
        }
        Observation { signal, new_bad_value, new_refused_value, desired: row.desired.valid(), current, drift_seconds }
    }
}

/// Whether taking the row's DesiredWeight into force needs a drain claim first: DesiredWeight 0, and
/// either a claim of this cluster is standing (renewed until the ack removes it) or this process has
/// not itself applied 0 with CurrentWeight 0 acknowledged. Pure.
pub fn drain_claim_needed(row: &WeightRow, applied: Option<u8>) -> bool {
    row.desired == StoredWeight::Valid(0)
        && (row.drain_until_ms.is_some() || !(applied == Some(0) && row.current == StoredWeight::Valid(0)))
}

pub struct WeightLoop {
    pub store: Arc<dyn WeightStore>,
    pub cluster: String,
    pub initial_weight: u8,
    pub interval: Duration,
    pub metrics: WeightMetrics,
    pub invalid: InvalidInputs,
    /// Wakes the loop for an immediate poll (after an ack, or when DesiredWeight changed under an ack).
    pub poll_now: Arc<Notify>,
    /// `--min-serving-clusters` (0: off).
    pub min_serving_clusters: usize,
    /// Every row read, for the plan executor (ramps, overrides).
    pub rows: Option<watch::Sender<Option<WeightRow>>>,
    /// Where a safety-rule refusal is reported besides the log and the metric (Kubernetes: an Event).
    pub sink: Arc<dyn RefusalSink>,
    /// The object that Event is recorded on: this controller's Pod, when it runs in one.
    pub refusal_object: Option<ObjectRef>,
    /// Liveness: beats every poll; stale when one poll's store calls outlive its bound.
    pub heartbeat: crate::telemetry::Heartbeat,
}

/// How long one weight poll (its store calls, retries included) may take before `/healthz` fails.
pub const WEIGHT_LOOP_BOUND: Duration = Duration::from_secs(180);

impl WeightLoop {
    /// Why the row's DesiredWeight must not be applied now, if it must not. A DesiredWeight of 0 on a
    /// cluster not at 0 yet needs a drain claim in the weight table first
    /// ([`WeightStore::claim_drain`]: no other cluster draining at the same moment, and
    /// `--min-serving-clusters` kept); it is renewed while the drain is under way. A failed store call
    /// refuses too (fail safe: keep serving what is applied, ask again on the next poll).
    ///
    /// The claim is needed whenever this process cannot know that 0 is already published:
    /// CurrentWeight 0 alone does not say it (a later DesiredWeight may have been applied and not
    /// acknowledged, here or by a previous leader), only "this process applied 0 and it was
    /// acknowledged" does. A claim taken is renewed until the ack removes it.
    async fn safety_refusal(&self, row: &WeightRow, applied: Option<u8>) -> Option<String> {
        if !drain_claim_needed(row, applied) {
            return None;
        }
        let now = crate::backends::now_ms();
        if row.drain_until_ms.is_some_and(|until| until - now > DRAIN_CLAIM_TTL_MS / 2) {
            return None; // this cluster's claim stands, with time to spare
        }
        match self.store.claim_drain(&self.cluster, self.min_serving_clusters, DRAIN_CLAIM_TTL_MS).await {
            Ok(DrainClaim::Claimed) => {
                if !row.draining_at(now) {
                    tracing::info!(cluster = %self.cluster, "drain claimed in the weight table; taking the weight to 0");
                }
                None
            }
            Ok(DrainClaim::Refused(why)) => Some(why),
            Err(e) => {
                self.store_error("claim_drain", &e);
                Some(format!("the drain could not be claimed in the weight table: {e}"))
            }
        }
    }

    fn store_error(&self, operation: &str, e: &StoreError) {
        tracing::warn!(cluster = %self.cluster, operation, error = %e, "weight store call failed; will retry");
        self.metrics
            .store_errors
            .get_or_create(&labels(&[("operation", operation), ("error", e.metric_label())]))
            .inc();
    }

    /// Runs until `shutdown` flips to true.
    pub async fn run(self, tx: WeightTx, mut shutdown: watch::Receiver<bool>) {
        let cluster_labels = labels(&[("cluster", &self.cluster)]);
        let mut tracker = WeightTracker::default();
        let mut have_row = false;
        loop {
            if *shutdown.borrow() {
                return;
            }
            self.heartbeat.beat();
            let row = if have_row {
                match self.store.get(&self.cluster).await {
                    Ok(Some(row)) => Some(row),
                    Ok(None) => {
                        tracing::warn!(cluster = %self.cluster, "weight row disappeared; creating it again");
                        have_row = false;
                        None
                    }
                    Err(e) => {
                        self.store_error("get", &e);
                        None
                    }
                }
            } else {
                None
            };
            let row = match row {
                Some(row) => Some(row),
                None if !have_row => match self.store.ensure(&self.cluster, self.initial_weight).await {
                    Ok(row) => {
                        have_row = true;
                        Some(row)
                    }
                    Err(e) => {
                        self.store_error("ensure", &e);
                        None
                    }
                },
                None => None,
            };
            if let Some(row) = row {
                if let Some(rows) = &self.rows {
                    rows.send_if_modified(|old| {
                        let changed = old.as_ref() != Some(&row);
                        if changed {
                            *old = Some(row.clone());
                        }
                        changed
                    });
                }
                let refusal = self.safety_refusal(&row, tracker.applied()).await;
                let obs = tracker.observe_with(&row, Instant::now(), refusal.is_some());
                self.metrics.row_invalid.get_or_create(&cluster_labels).set(i64::from(row.desired.valid().is_none()));
                self.metrics
                    .refused
                    .get_or_create(&labels(&[("cluster", &self.cluster), ("rule", "min_serving_clusters")]))
                    .set(i64::from(refusal.is_some()));
                if let (Some(value), Some(reason)) = (obs.new_refused_value, &refusal) {
                    self.invalid.inc(InputKind::MinServingClusters);
                    let message = format!(
                        "DesiredWeight {value} of cluster {} refused: {reason}; not applied, not acknowledged",
                        self.cluster
                    );
                    tracing::warn!(cluster = %self.cluster, value, "{message}");
                    if let Some(object) = &self.refusal_object {
                        self.sink.refused(&Refusal {
                            object: object.clone(),
                            kind: InputKind::MinServingClusters,
                            reason: REFUSED_REASON.into(),
                            message,
                        });
                    }
                }
                if let Some(raw) = &obs.new_bad_value {
                    self.invalid.inc(InputKind::Weight);
                    tracing::warn!(
                        cluster = %self.cluster,
                        value = %raw,
                        "DesiredWeight {raw:?} of cluster {} is not a weight (a whole number 0-100); not applied, \
                         CurrentWeight left as it is; fix it with `weir weights set`",
                        self.cluster
                    );
                }
                if let Some(d) = obs.desired {
                    self.metrics.desired.get_or_create(&cluster_labels).set(d.into());
                }
                if let Some(c) = obs.current {
                    self.metrics.current.get_or_create(&cluster_labels).set(c.into());
                }
                self.metrics.drift.get_or_create(&cluster_labels).set(obs.drift_seconds);
                if let Some(mut signal) = obs.signal {
                    // A drain claim blocks the other clusters' drains until an ack removes it (also
                    // one left behind when DesiredWeight moved off 0 before the drain was
                    // acknowledged, or taken while CurrentWeight already said 0): ask for that ack
                    // even when CurrentWeight already says this weight.
                    if row.drain_until_ms.is_some() && signal.from_desired {
                        signal.current = None;
                    }
                    tx.send_if_modified(|old| {
                        if *old == Some(signal) {
                            return false;
                        }
                        tracing::info!(cluster = %self.cluster, weight = signal.weight, current = ?signal.current, "cluster weight");
                        *old = Some(signal);
                        true
                    });
                }
            }
            self.heartbeat
                .idle(async {
                    tokio::select! {
                        _ = tokio::time::sleep(self.interval) => {}
                        _ = self.poll_now.notified() => {}
                        _ = shutdown.changed() => {}
                    }
                })
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(desired: StoredWeight, current: StoredWeight) -> WeightRow {
        WeightRow::new("eu", desired, current)
    }
    use StoredWeight::{Invalid, Valid};

    #[test]
    fn valid_weights_are_published_and_drift_counts_until_acked() {
        let mut t = WeightTracker::default();
        let t0 = Instant::now();
        let o = t.observe(&row(Valid(50), Valid(50)), t0);
        assert_eq!(o.signal, Some(WeightSignal { weight: 50, from_desired: true, current: Some(50) }));
        assert_eq!(o.drift_seconds, 0.0);
        let o = t.observe(&row(Valid(0), Valid(50)), t0);
        assert_eq!(o.signal.unwrap().weight, 0);
        let o = t.observe(&row(Valid(0), Valid(50)), t0 + Duration::from_secs(7));
        assert_eq!(o.drift_seconds, 7.0);
        assert_eq!(t.observe(&row(Valid(0), Valid(0)), t0 + Duration::from_secs(8)).drift_seconds, 0.0);
    }

    #[test]
    fn invalid_desired_weight_is_not_applied_and_reported_once_per_value() {
        let mut t = WeightTracker::default();
        let t0 = Instant::now();
        t.observe(&row(Valid(40), Valid(40)), t0);
        let o = t.observe(&row(Invalid("150".into()), Valid(40)), t0);
        assert_eq!(o.new_bad_value.as_deref(), Some("150"));
        assert_eq!(o.signal, Some(WeightSignal { weight: 40, from_desired: true, current: Some(40) }));
        assert_eq!(o.desired, None);
        let o = t.observe(&row(Invalid("150".into()), Valid(40)), t0 + Duration::from_secs(3));
        assert_eq!(o.new_bad_value, None, "reported once");
        assert_eq!(o.drift_seconds, 3.0, "drift keeps counting");
        let o = t.observe(&row(Invalid("abc".into()), Valid(40)), t0 + Duration::from_secs(4));
        assert_eq!(o.new_bad_value.as_deref(), Some("abc"));
    }

    #[test]
    fn a_drain_needs_a_claim_unless_this_process_applied_0_and_it_was_acknowledged() {
        // CurrentWeight 0 from an old ack while a later weight may be published (the soak's all-zero
        // episode): claimed first.
        assert!(drain_claim_needed(&row(Valid(0), Valid(0)), None), "a new leader knows nothing");
        assert!(drain_claim_needed(&row(Valid(0), Valid(0)), Some(60)), "60 applied, not acknowledged");
        assert!(drain_claim_needed(&row(Valid(0), Valid(60)), Some(0)), "0 applied, not acknowledged");
        assert!(!drain_claim_needed(&row(Valid(0), Valid(0)), Some(0)));
        // A standing claim is renewed until the ack removes it.
        let mut claimed = row(Valid(0), Valid(0));
        claimed.drain_until_ms = Some(1);
        assert!(drain_claim_needed(&claimed, Some(0)));
        assert!(!drain_claim_needed(&row(Valid(30), Valid(0)), None));
        assert!(!drain_claim_needed(&row(Invalid("x".into()), Valid(0)), None));
    }

    #[test]
    fn a_refused_drain_in_a_new_process_applies_nothing_rather_than_current_weight_0() {
        let mut t = WeightTracker::default();
        let t0 = Instant::now();
        assert_eq!(t.observe_with(&row(Valid(0), Valid(0)), t0, true).signal, None);
        assert_eq!(t.applied(), None);
        // CurrentWeight > 0 is kept serving, as before.
        let mut t = WeightTracker::default();
        let o = t.observe_with(&row(Valid(0), Valid(40)), t0, true);
        assert_eq!(o.signal, Some(WeightSignal { weight: 40, from_desired: false, current: Some(40) }));
    }

    #[test]
    fn min_serving_clusters_refuses_only_a_change_that_takes_a_serving_cluster_below_the_minimum() {
        let rows = |eu: u8, us: u8, ap: StoredWeight| {
            vec![
                WeightRow::new("eu", Valid(eu), Valid(100)),
                WeightRow::new("us", Valid(us), Valid(us)),
                WeightRow::new("ap", ap, Valid(0)),
            ]
        };
        // us serving, ap not: eu to 0 leaves one serving.
        let why = min_serving_violation(&rows(0, 100, Valid(0)), "eu", Some(100), 0, 2).unwrap();
        assert!(why.contains("leave 1 cluster(s)") && why.contains("us"), "{why}");
        assert_eq!(min_serving_violation(&rows(0, 100, Valid(0)), "eu", Some(100), 0, 1), None);
        assert_eq!(min_serving_violation(&rows(0, 100, Valid(30)), "eu", Some(100), 0, 2), None);
        // An invalid row does not count as serving.
        assert!(min_serving_violation(&rows(0, 100, Invalid("abc".into())), "eu", Some(100), 0, 2).is_some());
        // Raising a weight, or a cluster already at 0, is never refused; 0 turns the rule off.
        assert_eq!(min_serving_violation(&rows(50, 0, Valid(0)), "eu", Some(100), 50, 3), None);
        assert_eq!(min_serving_violation(&rows(0, 0, Valid(0)), "eu", Some(0), 0, 3), None);
        assert_eq!(min_serving_violation(&rows(0, 0, Valid(0)), "eu", Some(100), 0, 0), None);
    }

    #[test]
    fn a_refused_weight_is_kept_out_like_an_invalid_one() {
        let mut t = WeightTracker::default();
        let t0 = Instant::now();
        t.observe(&row(Valid(100), Valid(100)), t0);
        let o = t.observe_with(&row(Valid(0), Valid(100)), t0, true);
        assert_eq!(o.new_refused_value, Some(0));
        assert_eq!(o.signal.unwrap().weight, 100, "the applied weight stays");
        let o = t.observe_with(&row(Valid(0), Valid(100)), t0 + Duration::from_secs(60), true);
        assert_eq!(o.new_refused_value, None, "reported once");
        assert_eq!(o.drift_seconds, 60.0, "drift counts, so the drift alert fires");
        // Once allowed (another cluster came back), it is applied.
        assert_eq!(t.observe_with(&row(Valid(0), Valid(100)), t0, false).signal.unwrap().weight, 0);
    }

    #[test]
    fn invalid_desired_weight_at_start_keeps_serving_current_without_ack() {
        let mut t = WeightTracker::default();
        let o = t.observe(&row(Invalid("-1".into()), Valid(30)), Instant::now());
        assert_eq!(o.signal, Some(WeightSignal { weight: 30, from_desired: false, current: Some(30) }));
        let mut t = WeightTracker::default();
        assert_eq!(t.observe(&row(Invalid("x".into()), Invalid("y".into())), Instant::now()).signal, None);
    }
}

#[cfg(test)]
mod loop_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::backends::static_store::StaticStore;
    use crate::backends::AckOutcome;

    /// The static store behind an outage: the first `failures` calls fail like a lost connection.
    struct Flaky {
        inner: StaticStore,
        failures: AtomicUsize,
    }

    impl Flaky {
        fn fail(&self) -> Result<(), StoreError> {
            let left = self.failures.load(Ordering::SeqCst);
            if left == 0 {
                return Ok(());
            }
            self.failures.store(left - 1, Ordering::SeqCst);
            Err(StoreError::Call { store: "flaky", operation: "call", message: "connection reset".into() })
        }
    }

    #[async_trait::async_trait]
    impl WeightStore for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        async fn list(&self) -> Result<Vec<WeightRow>, StoreError> {
            self.fail()?;
            self.inner.list().await
        }
        async fn get(&self, cluster: &str) -> Result<Option<WeightRow>, StoreError> {
            self.fail()?;
            self.inner.get(cluster).await
        }
        async fn ensure(&self, cluster: &str, initial: u8) -> Result<WeightRow, StoreError> {
            self.fail()?;
            self.inner.ensure(cluster, initial).await
        }
        async fn ack(&self, cluster: &str, applied: u8) -> Result<AckOutcome, StoreError> {
            self.inner.ack(cluster, applied).await
        }
        async fn set_desired(&self, cluster: &str, desired: u8) -> Result<Option<StoredWeight>, StoreError> {
            self.inner.set_desired(cluster, desired).await
        }
    }

    #[tokio::test]
    async fn store_errors_are_counted_and_never_fatal() {
        let metrics = WeightMetrics::default();
        let l = WeightLoop {
            store: Arc::new(Flaky { inner: StaticStore::new("eu", 70), failures: AtomicUsize::new(3) }),
            cluster: "eu".into(),
            initial_weight: 0,
            interval: Duration::from_millis(5),
            metrics: metrics.clone(),
            invalid: InvalidInputs::default(),
            poll_now: Arc::new(Notify::new()),
            min_serving_clusters: 0,
            rows: None,
            sink: Arc::new(crate::reconciler::NoRefusalSink),
            refusal_object: None,
            heartbeat: crate::telemetry::Heartbeat::detached(),
        };
        let (tx, mut rx) = watch::channel(None);
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(l.run(tx, stop_rx));
        let signal =
            *tokio::time::timeout(Duration::from_secs(5), rx.wait_for(Option::is_some)).await.unwrap().unwrap();
        assert_eq!(signal, Some(WeightSignal { weight: 70, from_desired: true, current: Some(70) }));
        let errors = metrics.store_errors.get_or_create(&labels(&[("operation", "ensure"), ("error", "call")])).get();
        assert_eq!(errors, 3);
        assert_eq!(metrics.desired.get_or_create(&labels(&[("cluster", "eu")])).get(), 70);
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    }
}
