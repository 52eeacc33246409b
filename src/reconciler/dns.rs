//! The DNS reconcile loop: on a new snapshot, a new weight, or every resync interval, translate →
//! desired records → read what is published → plan → apply → acknowledge the weight. The decisions are
//! in the pure core (`translate`, `dns::plan`); this loop does the I/O and the bookkeeping.
//!
//! Translation is incremental ([`HostIndex`]): a new snapshot is diffed against the objects of the
//! last one and only the hosts a changed object affects are translated again. A snapshot that changes
//! no host's intent starts no pass (once the last pass left nothing to retry), so an idle controller
//! does no work between resyncs; the resync translates everything from scratch and checks the index
//! against it (`weir_index_divergence_total`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use super::leader::{Fence, Fenced};
use super::metrics::{labels, ReconcileMetrics};
use super::weight::{WeightRx, WeightSignal};
use super::{PipelineConfig, RefusalSink};
use crate::backends::{AckOutcome, StoreError, WeightStore};
use crate::dns::plan::{BatchLimits, Change, Plan};
use crate::dns::record::{DesiredRecords, Ownership, RecordKey, RecordSet, RecordType};
use crate::dns::zoned::ZonedDns;
use crate::dns::{ApplyReport, DnsError, DnsProvider};
use crate::index::HostIndex;
use crate::ir::{DesiredState, InputKind, Refusal};
use crate::model::Snapshot;
use crate::providers::SnapshotRx;
use crate::telemetry::{InvalidInputs, Readiness};
use crate::translate::LiveStrategyWeights;
use crate::xds::live::LiveWeights;

/// Retry delays after a failed pass (the resync interval still applies when it is shorter).
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

pub struct DnsLoop {
    pub config: PipelineConfig,
    /// Where records go: one provider, or one per Route53 hosted zone.
    pub dns: ZonedDns,
    pub store: Arc<dyn WeightStore>,
    pub metrics: ReconcileMetrics,
    pub invalid: InvalidInputs,
    pub sink: Arc<dyn RefusalSink>,
    pub resync: Duration,
    /// Wakes the weight loop after an ack, so the gauges and the next signal follow promptly.
    pub poll_weight_now: Arc<Notify>,
    pub readiness: Readiness,
    /// True while this replica may write (always, without leader election). A standby computes
    /// nothing and writes nothing; it is ready once its caches are (the provider published).
    pub leader: watch::Receiver<bool>,
    /// Checked before every write batch and before the ack: the flag above only says when to run.
    pub fence: Fence,
    /// Liveness: beats every pass and while waiting; stale when one pass outlives its bound.
    pub heartbeat: crate::telemetry::Heartbeat,
    /// The strategy weights `weir xds` has in force, read every pass from the source `weir plan` and
    /// `weir explain` read them from ([`crate::app::factories::open_live_weights`]).
    pub live_weights: Arc<dyn LiveWeights>,
}

/// How long one DNS pass (every batch and its retries, the ack) may take before `/healthz` fails.
pub const DNS_LOOP_BOUND: Duration = Duration::from_secs(600);

/// How a pass ended.
#[derive(Debug)]
pub enum PassOutcome {
    /// No cluster weight yet: nothing to do.
    NoWeight,
    /// Everything desired was written (or already there); the weight was acknowledged if it could be.
    Done { changes: usize },
    /// No host changed since a pass that left nothing to retry: no pass was needed.
    Unchanged,
    /// Something failed; retry soon.
    Failed(PassError),
}

/// Why a pass failed. `weir_reconcile_total{result}` is its [`PassError::metric_label`], so that the
/// metric tells throttling from a lost lease from an unavailable store.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// The published records could not be read (in one zone, when there are several).
    #[error("reading published records{}: {source}", .zone.as_ref().map(|z| format!(" in {z}")).unwrap_or_default())]
    Read { zone: Option<String>, source: DnsError },
    /// Some changes did not land; `first` is the first one's error (its label is the pass's).
    #[error("{failed} of {total} DNS changes failed, first: {first}")]
    Apply { failed: usize, total: usize, first: DnsError },
    /// The lease was lost before the weight could be acknowledged.
    #[error("acknowledging weight {weight}: {source}")]
    AckFenced { weight: u8, source: Fenced },
    /// The weight store refused or failed the acknowledgement.
    #[error("acknowledging weight {weight}: {source}")]
    Ack { weight: u8, source: StoreError },
}

impl PassError {
    /// Every `result` label a pass can have, `success` included: each is exposed as 0 from the start.
    pub const RESULTS: [&'static str; 10] = [
        "success",
        "throttled",
        "dns_api",
        "invalid_record",
        "fenced",
        "store_unavailable",
        "store_not_found",
        "store_conflict",
        "store_read_only",
        "store_invalid_weight",
    ];

    /// The `result` label of `weir_reconcile_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            PassError::Read { source, .. } | PassError::Apply { first: source, .. } => source.metric_label(),
            PassError::AckFenced { .. } => "fenced",
            PassError::Ack { source, .. } => match source {
                StoreError::Call { .. } => "store_unavailable",
                StoreError::NotFound(_) => "store_not_found",
                StoreError::Conflict { .. } => "store_conflict",
                StoreError::ReadOnly(_) => "store_read_only",
                StoreError::InvalidWeight(_) => "store_invalid_weight",
            },
        }
    }
}

/// State a loop keeps between passes.
#[derive(Default)]
pub struct Bookkeeping {
    /// Refusals of the previous pass: a refusal is logged and counted when it appears.
    active_refusals: BTreeSet<Refusal>,
    /// Hosts that have a `weir_record_weight` series.
    metric_hosts: BTreeSet<String>,
    /// Hosts held off their derived weight in the previous pass.
    held_hosts: BTreeSet<String>,
    /// The held hosts last recorded in the store (`None`: not yet this leadership).
    stored_held: Option<BTreeSet<String>>,
    /// The incremental translation of this term's snapshots (built by the first pass).
    index: Option<HostIndex>,
    /// When the index was last checked against a translation from scratch (the resync).
    verified_at: Option<Instant>,
    /// The last pass left nothing to retry: it succeeded and no acknowledgement is pending. Until
    /// then every wake-up is a pass, even when no host changed.
    settled: bool,
    /// Whether the last read of the live strategy weights failed (logged once per failure spell).
    live_weights_failing: bool,
}

impl DnsLoop {
    /// Runs until `shutdown` flips to true.
    pub async fn run(self, mut snapshots: SnapshotRx, mut weights: WeightRx, mut shutdown: watch::Receiver<bool>) {
        let mut book = Bookkeeping::default();
        let mut retry = RETRY_MIN;
        let mut leader = self.leader.clone();
        loop {
            if *shutdown.borrow() {
                return;
            }
            // A flip, even back to true (a term lost and won again during a pass), is a new term.
            let new_term = leader.has_changed().unwrap_or(false);
            if !*leader.borrow_and_update() {
                self.readiness.set(true);
                // Forget what was seen while leading: the next term starts from a fresh read, since
                // the other leader changed what is published (a cached read would hide it).
                book = Bookkeeping::default();
                self.dns.forget_published();
                self.heartbeat
                    .idle(async {
                        tokio::select! {
                            Ok(()) = leader.changed() => {}
                            _ = shutdown.changed() => {}
                        }
                    })
                    .await;
                continue;
            }
            if new_term {
                book = Bookkeeping::default();
                self.dns.forget_published();
            }
            self.heartbeat.beat();
            let snapshot = snapshots.borrow_and_update().clone();
            let signal = *weights.borrow_and_update();
            let wait = match self.pass(&snapshot, signal, &mut book).await {
                PassOutcome::Failed(_) => {
                    let wait = retry.min(self.resync);
                    retry = (retry * 2).min(RETRY_MAX);
                    wait
                }
                _ => {
                    retry = RETRY_MIN;
                    // Until the resync is due: passes that found nothing to do do not push it back.
                    book.verified_at.map_or(self.resync, |at| self.resync.saturating_sub(at.elapsed()))
                }
            };
            self.heartbeat
                .idle(async {
                    tokio::select! {
                        Ok(()) = snapshots.changed() => {}
                        Ok(()) = weights.changed() => {}
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.changed() => {}
                        Ok(()) = leader.changed() => {}
                    }
                })
                .await;
        }
    }

    /// One reconcile pass.
    pub async fn pass(&self, snapshot: &Snapshot, signal: Option<WeightSignal>, book: &mut Bookkeeping) -> PassOutcome {
        let Some(signal) = signal else {
            return PassOutcome::NoWeight;
        };
        let started = Instant::now();
        let live = self.read_live_weights(snapshot, book).await;
        let Some((state, desired)) = self.desired(snapshot, signal.weight, live, book) else {
            return PassOutcome::Unchanged;
        };
        let outcome = self.pass_inner(snapshot, signal, state, desired, book).await;
        book.settled = matches!(outcome, PassOutcome::Done { .. }) && !signal.ack_pending();
        self.metrics.duration.observe(started.elapsed().as_secs_f64());
        let result = match &outcome {
            PassOutcome::Failed(e) => {
                tracing::warn!(error = %e, result = e.metric_label(), "DNS reconcile failed; retrying");
                e.metric_label()
            }
            _ => {
                self.readiness.set(true);
                "success"
            }
        };
        self.metrics.reconciles.get_or_create(&labels(&[("result", result)])).inc();
        outcome
    }

    /// The desired state of `snapshot` at `weight`, through the index; `None` when no host changed
    /// since a pass that left nothing to retry and no resync is due (there is nothing to do).
    fn desired(
        &self,
        snapshot: &Snapshot,
        weight: u8,
        live: LiveStrategyWeights,
        book: &mut Bookkeeping,
    ) -> Option<(DesiredState, DesiredRecords)> {
        if book.index.is_none() {
            // Built from the first snapshot, it is a translation from scratch: the resync is due later.
            book.verified_at = Some(Instant::now());
        }
        let index = book.index.get_or_insert_with(|| HostIndex::new(self.config.translate.clone(), weight));
        index.set_cluster_weight(weight);
        index.set_live_weights(live);
        // Object by object (by resourceVersion where there is one): the revision alone does not say
        // what changed, and a snapshot's revision is not unique across providers.
        index.sync(snapshot);
        index.flush();
        let changed = index.take_changed();
        let resync_due = book.verified_at.is_none_or(|at| at.elapsed() >= self.resync);
        if changed.is_empty() && book.settled && !resync_due {
            return None;
        }
        if resync_due {
            let verified = index.verify();
            if verified.hosts_differing > 0 || verified.refusals_differ {
                // A bug in the index: the state from scratch replaced it; say so, loudly.
                self.metrics.index_divergence.inc();
                tracing::error!(
                    hosts = verified.hosts_differing,
                    refusals_differ = verified.refusals_differ,
                    "the incremental index differed from a translation from scratch; rebuilt it"
                );
            }
            book.verified_at = Some(Instant::now());
        }
        let state = index.state();
        let records = DesiredRecords::build(&state, &self.config.owner, &self.config.records);
        Some((state, records))
    }

    async fn pass_inner(
        &self,
        snapshot: &Snapshot,
        signal: WeightSignal,
        state: DesiredState,
        desired: DesiredRecords,
        book: &mut Bookkeeping,
    ) -> PassOutcome {
        let owner = &self.config.owner;
        // Per zone: provider-specific completion (Route53: health checks, ALIAS), read, adopt, plan.
        let zoned = match self.dns.plan(&desired, &state, owner, self.config.allow_all_zero, &[]).await {
            Ok(z) => z,
            Err((zone, e)) => {
                self.note_refusals(book, state.refusals.iter().cloned());
                return PassOutcome::Failed(PassError::Read { zone: zone.map(|z| z.label()), source: e });
            }
        };
        let plan = zoned.merged();
        // A host in no zone is refused (Event, metric) but neither held nor failed: the ack proceeds.
        self.note_refusals(book, state.refusals.iter().chain(&zoned.no_zone).chain(plan.refusals.iter()).cloned());

        let mut report = ApplyReport::default();
        if !plan.is_empty() {
            log_plan(&plan, snapshot.revision, signal.weight);
            for adopted in &plan.adopted {
                tracing::info!(host = %adopted.host, external_owner = %adopted.external_owner, registry_txt = ?adopted.registry_txt, "adopting records from external-dns");
            }
        }
        for (zone, zone_plan) in self.dns.zones.iter().zip(&zoned.zones).filter(|(_, z)| !z.plan.is_empty()) {
            let done = self.apply_fenced(zone.provider.as_ref(), zone_plan.plan.batches(BatchLimits::ROUTE53)).await;
            report.applied.extend(done.applied);
            report.failed.extend(done.failed);
        }
        for change in &report.applied {
            self.metrics.changes.get_or_create(&labels(&[("action", change.action())])).inc();
        }
        for (change, error) in &report.failed {
            tracing::warn!(record = %change.record().key, action = change.action(), %error, "DNS change failed");
        }
        self.update_record_weights(book, &zoned.current(), &report, owner);
        self.note_held(book, &plan).await;

        let failed = report.failed.len();
        if let Some((_, first)) = report.failed.into_iter().next() {
            return PassOutcome::Failed(PassError::Apply { failed, total: plan.len(), first });
        }
        if signal.ack_pending() && plan.reaches_desired_weights() {
            if let Err(source) = self.fence.check() {
                return PassOutcome::Failed(PassError::AckFenced { weight: signal.weight, source });
            }
            match self.store.ack(&owner.cluster, signal.weight).await {
                Ok(AckOutcome::Acknowledged) => {
                    tracing::info!(cluster = %owner.cluster, weight = signal.weight, "acknowledged: CurrentWeight := DesiredWeight");
                    self.poll_weight_now.notify_one();
                }
                Ok(AckOutcome::DesiredChanged) => {
                    tracing::info!(cluster = %owner.cluster, applied = signal.weight, "DesiredWeight changed while it was applied; reconciling again");
                    self.poll_weight_now.notify_one();
                }
                Err(source) => return PassOutcome::Failed(PassError::Ack { weight: signal.weight, source }),
            }
        }
        PassOutcome::Done { changes: report.applied.len() }
    }

    /// The live strategy weights. When they cannot be read, every TrafficInfra falls back to its
    /// `status.trafficWeights` / `spec.trafficDefaults` and the lenient drain rule (a host is drained
    /// only when no strategy at all has a ready endpoint): never more draining than with the weights,
    /// and the DNS stays managed through an outage of the state's store. Logged when the failure
    /// starts and when it ends.
    async fn read_live_weights(&self, snapshot: &Snapshot, book: &mut Bookkeeping) -> LiveStrategyWeights {
        match self.live_weights.read(snapshot).await {
            Ok(live) => {
                if std::mem::take(&mut book.live_weights_failing) {
                    tracing::info!(source = %self.live_weights.describe(), "live strategy weights readable again");
                }
                live
            }
            Err(error) => {
                if !std::mem::replace(&mut book.live_weights_failing, true) {
                    tracing::warn!(source = %self.live_weights.describe(), %error, "cannot read the strategy weights of weir xds; using status.trafficWeights / spec.trafficDefaults, which drain a linked host only when no strategy has a ready endpoint");
                }
                LiveStrategyWeights::new()
            }
        }
    }

    /// Applies batch by batch, checking the fence right before each one: a pass that outlives the
    /// lease stops between batches, and what was not sent is reported failed (retried by the leader).
    async fn apply_fenced(&self, provider: &dyn DnsProvider, batches: Vec<Vec<Change>>) -> ApplyReport {
        let mut report = ApplyReport::default();
        let mut batches = batches.into_iter();
        while let Some(batch) = batches.next() {
            if let Err(e) = self.fence.check() {
                let not_sent = std::iter::once(batch).chain(batches.by_ref()).flatten();
                report.failed.extend(not_sent.map(|c| (c, fenced_error(&e))));
                break;
            }
            // The write log: the fencing test reads these two lines to know who wrote when.
            tracing::debug!(changes = batch.len(), "DNS batch: writing");
            let done = provider.apply(vec![batch]).await;
            tracing::debug!(applied = done.applied.len(), failed = done.failed.len(), "DNS batch: done");
            report.applied.extend(done.applied);
            report.failed.extend(done.failed);
        }
        report
    }

    /// `weir_ack_blocked_hosts{cluster}`, and a log line and an Event (on the host's Ingress) when a
    /// host starts being held off its derived weight; while any is held the weight is not acknowledged.
    async fn note_held(&self, book: &mut Bookkeeping, plan: &Plan) {
        let cluster = self.config.owner.cluster.as_str();
        self.metrics.ack_blocked.get_or_create(&labels(&[("cluster", cluster)])).set(plan.held.len() as i64);
        let now: BTreeSet<String> = plan.held.iter().map(|h| h.host.clone()).collect();
        for held in plan.held.iter().filter(|h| !book.held_hosts.contains(&h.host)) {
            let message = held.message(cluster);
            tracing::warn!(host = %held.host, object = %held.source, "{message}");
            self.sink.refused(&Refusal {
                object: held.source.clone(),
                kind: InputKind::Weight,
                reason: "AckBlocked".into(),
                message,
            });
        }
        if book.stored_held.as_ref() != Some(&now) {
            let hosts: Vec<String> = now.iter().cloned().collect();
            match self.store.note_held(cluster, &hosts).await {
                Ok(()) => book.stored_held = Some(now.clone()),
                Err(e) => tracing::warn!(error = %e, "could not record the held hosts in the weight store"),
            }
        }
        book.held_hosts = now;
    }

    fn note_refusals(&self, book: &mut Bookkeeping, refusals: impl Iterator<Item = Refusal>) {
        let now: BTreeSet<Refusal> = refusals.collect();
        for r in now.difference(&book.active_refusals) {
            self.invalid.inc(r.kind);
            tracing::warn!(object = %r.object, kind = r.kind.label(), reason = %r.reason, "{}: {}", r.object, r.message);
            self.sink.refused(r);
        }
        book.active_refusals = now;
    }

    /// `weir_record_weight{host,cluster}` from what is published now: the records read, with the
    /// changes that landed applied on top. Series of hosts no longer published are removed.
    fn update_record_weights(
        &self,
        book: &mut Bookkeeping,
        current: &[RecordSet],
        report: &ApplyReport,
        owner: &Ownership,
    ) {
        let published = published_weights(current, &report.applied, owner);
        let cluster = owner.cluster.as_str();
        for (host, weight) in &published {
            self.metrics
                .record_weight
                .get_or_create(&labels(&[("host", host), ("cluster", cluster)]))
                .set((*weight).into());
        }
        for gone in book.metric_hosts.iter().filter(|h| !published.contains_key(*h)) {
            self.metrics.record_weight.remove(&labels(&[("host", gone), ("cluster", cluster)]));
        }
        book.metric_hosts = published.into_keys().collect();
    }
}

/// This cluster's traffic weight per host after `applied` landed on `current`.
pub fn published_weights(current: &[RecordSet], applied: &[Change], owner: &Ownership) -> BTreeMap<String, u8> {
    let ours = |r: &RecordSet| r.key.set_identifier == owner.cluster && r.key.rtype != RecordType::Txt;
    let mut records: BTreeMap<RecordKey, u8> =
        current.iter().filter(|r| ours(r)).map(|r| (r.key.clone(), r.weight)).collect();
    for change in applied {
        let r = change.record();
        if !ours(r) {
            continue;
        }
        match change {
            Change::Upsert { record, .. } => records.insert(record.key.clone(), record.weight),
            Change::Delete { record } => records.remove(&record.key),
        };
    }
    let mut out = BTreeMap::new();
    for (key, weight) in records {
        let w: &mut u8 = out.entry(key.name).or_default();
        *w = (*w).max(weight);
    }
    out
}

fn fenced_error(e: &Fenced) -> DnsError {
    DnsError::Fenced { provider: "weir", operation: "apply", source: e.clone() }
}

fn log_plan(plan: &Plan, revision: u64, weight: u8) {
    tracing::info!(
        revision,
        cluster_weight = weight,
        changes = plan.len(),
        hosts = plan.hosts.len(),
        "applying DNS plan"
    );
    for change in plan.changes() {
        let r = change.record();
        tracing::debug!(action = change.action(), record = %r.key, weight = r.weight, values = ?r.values, "change");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::sqlite::SqliteStore;
    use crate::backends::StoredWeight;
    use crate::dns::embedded::{EmbeddedDns, EmbeddedZone};
    use crate::providers::file::{parse_manifests, snapshot_of};
    use crate::reconciler::NoRefusalSink;
    use crate::translate::TranslateConfig;

    fn snapshot(annotation: &str) -> Snapshot {
        let text = format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: web, namespace: shop, annotations: \
             {{dns.adevinta.com/traffic-weight: \"{annotation}\"}}}}\nspec: {{rules: [{{host: www.example.com, http: \
             {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}]}}}}]}}\n\
             status: {{loadBalancer: {{ingress: [{{ip: 192.0.2.1}}]}}}}\n---\napiVersion: discovery.k8s.io/v1\nkind: \
             EndpointSlice\nmetadata: {{name: web-1, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}\n\
             addressType: IPv4\nendpoints: [{{addresses: [10.0.0.1]}}]\n"
        );
        snapshot_of(&parse_manifests(&text).unwrap(), 1)
    }

    async fn setup(dir: &std::path::Path) -> (DnsLoop, Arc<SqliteStore>, InvalidInputs) {
        let db = dir.join("w.db");
        let store = Arc::new(SqliteStore::open(&db).await.unwrap());
        let zone = EmbeddedZone::open(&db).await.unwrap();
        let invalid = InvalidInputs::default();
        let l = DnsLoop {
            config: PipelineConfig {
                translate: TranslateConfig::default(),
                owner: Ownership::new("eu"),
                records: Default::default(),
                allow_all_zero: false,
            },
            dns: ZonedDns::single(Arc::new(EmbeddedDns::new(zone))),
            store: store.clone(),
            metrics: ReconcileMetrics::default(),
            invalid: invalid.clone(),
            sink: Arc::new(NoRefusalSink),
            resync: Duration::from_secs(60),
            poll_weight_now: Arc::new(Notify::new()),
            readiness: Readiness::default(),
            leader: watch::channel(true).1,
            fence: Fence::always(),
            heartbeat: crate::telemetry::Heartbeat::detached(),
            live_weights: Arc::new(crate::xds::live::NoLiveWeights),
        };
        (l, store, invalid)
    }

    fn changes(l: &DnsLoop) -> u64 {
        ["UPSERT", "DELETE"].iter().map(|a| l.metrics.changes.get_or_create(&labels(&[("action", a)])).get()).sum()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn pass_applies_then_acks_and_an_unchanged_pass_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (l, store, _) = setup(dir.path()).await;
        store.ensure("eu", 0).await.unwrap();
        store.set_desired("eu", 50).await.unwrap();
        let mut book = Bookkeeping::default();
        let s = snapshot("50");
        let signal = WeightSignal { weight: 50, from_desired: true, current: Some(0) };
        assert!(matches!(l.pass(&s, Some(signal), &mut book).await, PassOutcome::Done { changes: 2 }));
        let row = store.get("eu").await.unwrap().unwrap();
        assert_eq!(row.current, StoredWeight::Valid(50), "acknowledged after the apply");
        let host = labels(&[("host", "www.example.com"), ("cluster", "eu")]);
        assert_eq!(l.metrics.record_weight.get_or_create(&host).get(), 25);
        assert!(l.readiness.is_ready());

        let before = changes(&l);
        let acked = WeightSignal { current: Some(50), ..signal };
        assert!(matches!(l.pass(&s, Some(acked), &mut book).await, PassOutcome::Done { changes: 0 }));
        assert_eq!(changes(&l), before, "an empty plan makes no write calls");

        // The host goes away: its records are deleted and its series removed.
        let empty = Snapshot::default();
        assert!(matches!(l.pass(&empty, Some(acked), &mut book).await, PassOutcome::Done { changes: 2 }));
        let mut text = String::new();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("weir_record_weight", "", l.metrics.record_weight.clone());
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(!text.contains("www.example.com"), "{text}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_snapshot_that_changes_no_host_starts_no_pass_until_the_resync() {
        let dir = tempfile::tempdir().unwrap();
        let (mut l, store, _) = setup(dir.path()).await;
        store.ensure("eu", 50).await.unwrap();
        let mut book = Bookkeeping::default();
        let s = snapshot("50");
        let acked = WeightSignal { weight: 50, from_desired: true, current: Some(50) };
        assert!(matches!(l.pass(&s, Some(acked), &mut book).await, PassOutcome::Done { changes: 2 }));

        // A record deleted behind weir's back, then a snapshot whose change touches no host.
        let provider = l.dns.zones[0].provider.clone();
        let hosts = BTreeSet::from(["www.example.com".to_string()]);
        let ours = provider.current(&hosts, &l.config.owner).await.unwrap();
        let traffic = ours.iter().find(|r| r.key.rtype.is_traffic()).unwrap().clone();
        assert!(provider.apply(vec![vec![Change::Delete { record: traffic }]]).await.is_complete());
        let mut unrelated = s.clone();
        unrelated.revision = 2;
        let mut other = k8s_openapi::api::core::v1::Service::default();
        other.metadata.name = Some("other".into());
        other.metadata.namespace = Some("shop".into());
        unrelated.services.push(other);
        assert!(matches!(l.pass(&unrelated, Some(acked), &mut book).await, PassOutcome::Unchanged));
        assert_eq!(provider.current(&hosts, &l.config.owner).await.unwrap().len(), 1, "not repaired yet");

        // A host's weight changes: a pass, which also repairs what it reads.
        let changed = WeightSignal { weight: 40, current: Some(50), ..acked };
        assert!(matches!(l.pass(&unrelated, Some(changed), &mut book).await, PassOutcome::Done { changes: 1 }));
        assert!(matches!(l.pass(&unrelated, Some(changed), &mut book).await, PassOutcome::Done { changes: 0 }));
        let settled = WeightSignal { current: Some(40), ..changed };
        assert!(matches!(l.pass(&unrelated, Some(settled), &mut book).await, PassOutcome::Done { changes: 0 }));
        assert!(matches!(l.pass(&unrelated, Some(settled), &mut book).await, PassOutcome::Unchanged));

        // The resync: a pass even with nothing changed, repairing the deleted record.
        let traffic = provider.current(&hosts, &l.config.owner).await.unwrap();
        let traffic = traffic.iter().find(|r| r.key.rtype.is_traffic()).unwrap().clone();
        assert!(provider.apply(vec![vec![Change::Delete { record: traffic }]]).await.is_complete());
        l.resync = Duration::ZERO;
        assert!(matches!(l.pass(&unrelated, Some(settled), &mut book).await, PassOutcome::Done { changes: 1 }));
        assert_eq!(l.metrics.index_divergence.get(), 0, "the index agreed with a translation from scratch");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn refusals_are_counted_once_per_occurrence_and_keep_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let (mut l, store, invalid) = setup(dir.path()).await;
        store.ensure("eu", 100).await.unwrap();
        let signal = Some(WeightSignal { weight: 100, from_desired: true, current: Some(100) });
        let mut book = Bookkeeping::default();
        l.pass(&snapshot("30"), signal, &mut book).await;
        let bad = snapshot("abc");
        assert!(matches!(l.pass(&bad, signal, &mut book).await, PassOutcome::Done { changes: 0 }));
        // Nothing changed since: no pass, until a resync (which must not count it again either).
        assert!(matches!(l.pass(&bad, signal, &mut book).await, PassOutcome::Unchanged));
        l.resync = Duration::ZERO;
        assert!(matches!(l.pass(&bad, signal, &mut book).await, PassOutcome::Done { changes: 0 }));
        assert_eq!(invalid.get(InputKind::Annotation), 1, "counted once while it lasts");
        let host = labels(&[("host", "www.example.com"), ("cluster", "eu")]);
        assert_eq!(l.metrics.record_weight.get_or_create(&host).get(), 30, "the published record is kept");
        l.pass(&snapshot("30"), signal, &mut book).await;
        l.pass(&bad, signal, &mut book).await;
        assert_eq!(invalid.get(InputKind::Annotation), 2, "a new occurrence counts again");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_host_held_by_a_bad_annotation_blocks_the_ack_until_fixed() {
        let dir = tempfile::tempdir().unwrap();
        let (l, store, _) = setup(dir.path()).await;
        store.ensure("eu", 100).await.unwrap();
        let mut book = Bookkeeping::default();
        let synced = Some(WeightSignal { weight: 100, from_desired: true, current: Some(100) });
        l.pass(&snapshot("100"), synced, &mut book).await;
        store.set_desired("eu", 20).await.unwrap();
        let pending = Some(WeightSignal { weight: 20, from_desired: true, current: Some(100) });
        let blocked = labels(&[("cluster", "eu")]);
        for _ in 0..2 {
            assert!(matches!(l.pass(&snapshot("abc"), pending, &mut book).await, PassOutcome::Done { changes: 0 }));
            assert_eq!(store.get("eu").await.unwrap().unwrap().current, StoredWeight::Valid(100), "not acknowledged");
            assert_eq!(l.metrics.ack_blocked.get_or_create(&blocked).get(), 1);
        }
        assert!(matches!(l.pass(&snapshot("100"), pending, &mut book).await, PassOutcome::Done { changes: 1 }));
        assert_eq!(store.get("eu").await.unwrap().unwrap().current, StoredWeight::Valid(20), "acknowledged once fixed");
        assert_eq!(l.metrics.ack_blocked.get_or_create(&blocked).get(), 0);
    }

    fn results(l: &DnsLoop) -> BTreeMap<&'static str, u64> {
        PassError::RESULTS
            .iter()
            .map(|r| (*r, l.metrics.reconciles.get_or_create(&labels(&[("result", r)])).get()))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_pass_without_the_lease_writes_nothing_and_is_counted_as_fenced() {
        let dir = tempfile::tempdir().unwrap();
        let (mut l, store, _) = setup(dir.path()).await;
        l.fence = Fence::closed();
        store.ensure("eu", 50).await.unwrap();
        let signal = Some(WeightSignal { weight: 50, from_desired: true, current: Some(50) });
        let outcome = l.pass(&snapshot("50"), signal, &mut Bookkeeping::default()).await;
        let PassOutcome::Failed(e) = outcome else { panic!("{outcome:?}") };
        assert!(matches!(e, PassError::Apply { failed: 2, total: 2, first: DnsError::Fenced { .. } }), "{e:?}");
        assert_eq!(changes(&l), 0);
        let counted: Vec<_> = results(&l).into_iter().filter(|(_, n)| *n > 0).collect();
        assert_eq!(counted, [("fenced", 1)]);
    }

    #[test]
    fn every_failure_is_counted_under_an_exposed_result() {
        let call = |retryable| DnsError::Call { provider: "p", operation: "o", message: "m".into(), retryable };
        let throttled =
            || DnsError::aws("route53", "ChangeResourceRecordSets", "m".into(), crate::aws::Outcome::Throttled);
        let store = |e: StoreError| PassError::Ack { weight: 1, source: e };
        let call_store = StoreError::Call { store: "s", operation: "ack", message: "m".into() };
        let cases = [
            (PassError::Read { zone: None, source: throttled() }, "throttled"),
            (PassError::Read { zone: Some("z".into()), source: call(true) }, "dns_api"),
            (PassError::Apply { failed: 1, total: 2, first: call(false) }, "dns_api"),
            (PassError::Apply { failed: 1, total: 1, first: throttled() }, "throttled"),
            (PassError::Apply { failed: 1, total: 1, first: fenced_error(&Fenced) }, "fenced"),
            (
                PassError::Apply {
                    failed: 1,
                    total: 1,
                    first: DnsError::InvalidRecord {
                        key: RecordKey {
                            name: "a.example.com".into(),
                            rtype: RecordType::A,
                            set_identifier: "eu".into(),
                        },
                        reason: "r".into(),
                    },
                },
                "invalid_record",
            ),
            (PassError::AckFenced { weight: 1, source: Fenced }, "fenced"),
            (store(call_store), "store_unavailable"),
            (store(StoreError::NotFound("eu".into())), "store_not_found"),
            (
                store(StoreError::Conflict { cluster: "eu".into(), expected: "1".into(), found: "2".into() }),
                "store_conflict",
            ),
            (store(StoreError::ReadOnly("static")), "store_read_only"),
        ];
        for (e, want) in &cases {
            assert_eq!(e.metric_label(), *want, "{e}");
            assert!(PassError::RESULTS.contains(want));
        }
        // A throttled AWS answer is not a generic API error.
        assert_eq!(DnsError::aws("r", "o", "m".into(), crate::aws::Outcome::Transport).metric_label(), "dns_api");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn ack_after_desired_changed_is_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let (l, store, _) = setup(dir.path()).await;
        store.ensure("eu", 0).await.unwrap();
        store.set_desired("eu", 70).await.unwrap();
        // The loop applies 40 (an older DesiredWeight); the ack must not overwrite CurrentWeight.
        let signal = Some(WeightSignal { weight: 40, from_desired: true, current: Some(0) });
        let mut book = Bookkeeping::default();
        assert!(matches!(l.pass(&snapshot("100"), signal, &mut book).await, PassOutcome::Done { .. }));
        assert_eq!(store.get("eu").await.unwrap().unwrap().current, StoredWeight::Valid(0));
    }
}
