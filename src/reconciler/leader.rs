//! Leader election on a `coordination.k8s.io/v1` Lease, so that only one replica writes DNS,
//! acknowledges weights and applies objects. Standbys keep their caches warm and serve metrics and
//! readiness; they take over when the leader stops renewing for a lease duration.
//!
//! The rules are client-go's: every retry period the leader renews and the others try to acquire; a
//! lease is expired when its record has not changed, as seen by this replica's own monotonic clock,
//! for the lease duration (no trust in other replicas' wall clocks); the leader steps down when it
//! cannot renew within the renew deadline; a clean shutdown releases the lease. The decisions are
//! pure functions below; [`LeaderElector`] only does the reads and the conditional writes.
//!
//! Writers do not trust the `bool` alone (it changes only after a call returns): every write batch
//! checks a [`Fence`], which is valid until `t + lease duration − margin`, where `t` is the instant this
//! replica SENT the renewal that succeeded, read from its own monotonic clock. A standby takes over
//! only after the record has been unchanged, from when it received it, for the lease duration, so
//! the old leader's fence has closed by then whatever its API calls are doing. Every call of the
//! election loop is bounded by the renew deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::Api;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};

/// Receives `true` while this replica holds the lease. Loops wait on it to start and stop passes;
/// the write itself is decided by the [`Fence`].
pub type LeaderRx = watch::Receiver<bool>;

/// A write was refused because this replica's lease is not (or no longer) valid by its own clock.
#[derive(Debug, Clone, thiserror::Error)]
#[error("not the leader: this replica's Lease is not valid, so it does not write")]
pub struct Fenced;

/// Whether this replica may write now. One per process, shared by every writer (DNS providers, the
/// weight ack, the infra manager), checked immediately before each write batch.
#[derive(Clone, Debug)]
pub struct Fence {
    /// `None`: never valid (a standby, or after a step-down). Unused when `always`.
    valid_until: Arc<parking_lot::Mutex<Option<Instant>>>,
    /// Without leader election the process is the only writer.
    always: bool,
}

impl Fence {
    /// A fence that is always open: no leader election, one writer.
    pub fn always() -> Self {
        Self { valid_until: Arc::default(), always: true }
    }

    /// A fence that stays closed until the elector opens it.
    pub fn closed() -> Self {
        Self { valid_until: Arc::default(), always: false }
    }

    /// `Ok` while the lease is valid by this process's monotonic clock.
    pub fn check(&self) -> Result<(), Fenced> {
        if self.always || self.valid_until.lock().is_some_and(|until| Instant::now() < until) {
            Ok(())
        } else {
            Err(Fenced)
        }
    }

    /// How long writes stay allowed from now (zero when closed; `None` when always open).
    pub fn remaining(&self) -> Option<Duration> {
        if self.always {
            return None;
        }
        Some(self.valid_until.lock().map(|u| u.saturating_duration_since(Instant::now())).unwrap_or_default())
    }

    /// Opens (or extends) the fence until `until`. Never moves it backwards.
    fn extend(&self, until: Instant) {
        let mut v = self.valid_until.lock();
        *v = Some(v.map_or(until, |old| old.max(until)));
    }

    fn close(&self) {
        *self.valid_until.lock() = None;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("the renew deadline ({renew:?}) must be shorter than the lease duration ({lease:?}), and the retry period ({retry:?}) shorter than the renew deadline")]
    Timing { lease: Duration, renew: Duration, retry: Duration },
}

/// Timing and identity of an elector.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaderConfig {
    /// How much earlier than the lease's end this replica stops writing: the difference between the
    /// lease duration and the renew deadline (5 s with the defaults). It covers a write already in
    /// flight when the fence closes and the drift between replicas' clock rates.
    pub fn safety_margin(&self) -> Duration {
        self.lease_duration.saturating_sub(self.renew_deadline)
    }

    /// How long after SENDING a successful renewal this replica may write.
    pub fn write_validity(&self) -> Duration {
        self.lease_duration.saturating_sub(self.safety_margin())
    }

    /// Checks that the timings can work: retry < renew deadline < lease duration.
    pub fn checked(self) -> Result<Self, LeaderError> {
        if self.renew_deadline >= self.lease_duration || self.retry_period >= self.renew_deadline {
            return Err(LeaderError::Timing {
                lease: self.lease_duration,
                renew: self.renew_deadline,
                retry: self.retry_period,
            });
        }
        Ok(self)
    }
}

/// This replica's identity: the pod name (`POD_NAME`, else the host name) plus a random suffix, so
/// that a restarted pod with the same name never mistakes the old holder's lease for its own.
pub fn default_identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "weir".to_string());
    format!("{base}_{:08x}", rand::random::<u32>())
}

/// What to do with the lease, given what it says and how long it has said it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// There is no lease: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Nobody holds it, or the holder stopped renewing: take it over.
    Acquire,
    /// Someone else holds a live lease.
    Follow { holder: String },
}

/// Decides from the lease (if any) and how long its record has been unchanged as seen locally.
pub fn decide(lease: Option<&LeaseSpec>, me: &str, unchanged_for: Duration, default_duration: Duration) -> Decision {
    let Some(spec) = lease else { return Decision::Create };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return Decision::Acquire;
    }
    if holder == me {
        return Decision::Renew;
    }
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs)
        .unwrap_or(default_duration);
    if unchanged_for >= duration {
        Decision::Acquire
    } else {
        Decision::Follow { holder: holder.to_string() }
    }
}

/// The spec to write for a decision that takes or keeps the lease.
pub fn next_spec(previous: Option<&LeaseSpec>, decision: &Decision, cfg: &LeaderConfig, now: MicroTime) -> LeaseSpec {
    let seconds = i32::try_from(cfg.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
    match (decision, previous) {
        (Decision::Renew, Some(prev)) => LeaseSpec {
            renew_time: Some(now),
            lease_duration_seconds: Some(seconds),
            holder_identity: Some(cfg.identity.clone()),
            ..prev.clone()
        },
        _ => {
            let prev_holder = previous.and_then(|p| p.holder_identity.as_deref()).unwrap_or_default();
            let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
            LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                // A transition is a change of holder, not the first acquisition.
                lease_transitions: Some(if prev_holder.is_empty() || previous.is_none() {
                    transitions
                } else {
                    transitions + 1
                }),
                ..previous.cloned().unwrap_or_default()
            }
        }
    }
}

/// The spec that hands the lease back on a clean shutdown: no holder, a one-second duration.
pub fn released_spec(previous: &LeaseSpec, now: MicroTime) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        renew_time: Some(now.clone()),
        acquire_time: Some(now),
        ..previous.clone()
    }
}

/// The leader's metrics.
#[derive(Clone, Default)]
pub struct LeaderMetrics {
    /// `weir_leader`: 1 while this replica holds the lease.
    pub leader: Gauge,
    /// `weir_leader_transitions_total`: times this replica became or stopped being the leader.
    pub transitions: Counter,
}

impl LeaderMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("weir");
        r.register("leader", "1 while this replica holds the leader Lease", m.leader.clone());
        r.register(
            "leader_transitions",
            "Times this replica became or stopped being the leader",
            m.transitions.clone(),
        );
        m
    }
}

/// Held by every loop that writes; the elector hands the Lease back on shutdown only once every
/// guard is dropped (the loop's in-flight pass ended), or the fence closed, whichever comes first.
#[derive(Clone)]
pub struct WriterGuard(#[allow(dead_code)] mpsc::Sender<()>);

/// The elector's side of [`WriterGuard`].
pub struct WritersDone(mpsc::Receiver<()>);

pub fn writer_guards() -> (WriterGuard, WritersDone) {
    let (tx, rx) = mpsc::channel(1);
    (WriterGuard(tx), WritersDone(rx))
}

impl WritersDone {
    /// Resolves once every [`WriterGuard`] is dropped.
    pub async fn wait(mut self) {
        while self.0.recv().await.is_some() {}
    }
}

/// The I/O side: reads the Lease, writes it conditionally (resourceVersion), publishes leadership
/// and opens the [`Fence`] for the validity of each renewal.
pub struct LeaderElector {
    pub api: Api<Lease>,
    pub config: LeaderConfig,
    pub metrics: LeaderMetrics,
    pub fence: Fence,
    /// Liveness: beats every round (each bounded by the renew deadline).
    pub heartbeat: crate::telemetry::Heartbeat,
}

/// What the elector remembers between rounds.
struct Round {
    leader: bool,
    /// The lease record as last seen (holder, renew time, resourceVersion) and when a response first
    /// carried it (received, not sent: the conservative end for a follower).
    observed: Option<(String, Instant)>,
}

fn record_key(lease: &Lease) -> String {
    let spec = lease.spec.clone().unwrap_or_default();
    format!(
        "{:?}|{:?}|{:?}",
        spec.holder_identity,
        spec.renew_time.map(|t| t.0.to_string()),
        lease.metadata.resource_version
    )
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl LeaderElector {
    /// Runs until `shutdown` flips to true; then, if leading, waits for the writers to finish their
    /// pass (at most until the fence closes), closes the fence and releases the lease.
    pub async fn run(self, tx: watch::Sender<bool>, mut shutdown: watch::Receiver<bool>, writers: WritersDone) {
        let mut round = Round { leader: false, observed: None };
        tracing::info!(identity = %self.config.identity, lease = %format!("{}/{}", self.config.namespace, self.config.name), "leader election started");
        loop {
            if *shutdown.borrow() {
                break;
            }
            self.heartbeat.beat();
            if tokio::time::timeout(self.config.renew_deadline, self.round(&mut round)).await.is_err() {
                tracing::warn!(deadline = ?self.config.renew_deadline, "the Lease API did not answer within the renew deadline");
            }
            self.step_down_if_fenced(&mut round);
            self.publish(&tx, &mut round);
            // While leading, wake no later than the fence's end so that the flag follows it.
            let wait = match self.fence.remaining() {
                Some(left) if round.leader => self.config.retry_period.min(left + Duration::from_millis(1)),
                _ => self.config.retry_period,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
        if round.leader {
            // Let the in-flight pass end first: it stops between batches once the fence closes.
            let left = self.fence.remaining().unwrap_or_default();
            if tokio::time::timeout(left, writers.wait()).await.is_err() {
                tracing::warn!("the writers did not finish before the Lease's validity ended");
            }
            self.fence.close();
            round.leader = false;
            self.publish(&tx, &mut round);
            if tokio::time::timeout(self.config.renew_deadline, self.release()).await.is_err() {
                tracing::warn!("releasing the leader Lease timed out; a standby takes over when it expires");
            }
        } else {
            self.fence.close();
        }
    }

    fn publish(&self, tx: &watch::Sender<bool>, round: &mut Round) {
        if *tx.borrow() == round.leader {
            return;
        }
        // Logged before the loops are woken, so that the log shows the term before its writes.
        if round.leader {
            tracing::info!(identity = %self.config.identity, "became the leader");
        } else {
            tracing::warn!(identity = %self.config.identity, "no longer the leader; writes stop");
        }
        self.metrics.transitions.inc();
        self.metrics.leader.set(i64::from(round.leader));
        tx.send_replace(round.leader);
    }

    /// The flag never outlives the fence.
    fn step_down_if_fenced(&self, round: &mut Round) {
        if round.leader && self.fence.check().is_err() {
            tracing::warn!(deadline = ?self.config.renew_deadline, "could not renew the Lease in time");
            round.leader = false;
        }
    }

    fn step_down(&self, round: &mut Round) {
        self.fence.close();
        round.leader = false;
    }

    async fn round(&self, round: &mut Round) {
        let current = match self.api.get_opt(&self.config.name).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "reading the leader Lease failed");
                return;
            }
        };
        let received = Instant::now();
        if let Some(lease) = &current {
            let key = record_key(lease);
            if round.observed.as_ref().is_none_or(|(k, _)| *k != key) {
                round.observed = Some((key, received));
            }
        }
        let unchanged_for = round.observed.as_ref().map(|(_, at)| received.duration_since(*at)).unwrap_or_default();
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let decision = decide(spec, &self.config.identity, unchanged_for, self.config.lease_duration);
        let sent = Instant::now();
        let result = match &decision {
            Decision::Follow { holder } => {
                if round.leader {
                    tracing::warn!(%holder, "another replica holds the Lease");
                }
                self.step_down(round);
                return;
            }
            Decision::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(next_spec(None, &decision, &self.config, now())),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Decision::Renew | Decision::Acquire => {
                let mut lease = current.clone().expect("a lease to renew or acquire");
                lease.spec = Some(next_spec(spec, &decision, &self.config, now()));
                // `replace` carries the resourceVersion read above: a concurrent writer makes it conflict.
                self.api.replace(&self.config.name, &PostParams::default(), &lease).await
            }
        };
        match result {
            Ok(written) => {
                // Valid from when the renewal was sent: a standby counts from when it saw it, later.
                self.fence.extend(sent + self.config.write_validity());
                round.leader = true;
                round.observed = Some((record_key(&written), Instant::now()));
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tracing::debug!(?decision, "the Lease changed under us");
                if decision != Decision::Renew {
                    self.step_down(round);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, ?decision, "writing the leader Lease failed");
            }
        }
    }

    async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else { return };
        let Some(spec) = lease.spec.as_ref() else { return };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        lease.spec = Some(released_spec(spec, now()));
        match self.api.replace(&self.config.name, &PostParams::default(), &lease).await {
            Ok(_) => tracing::info!("released the leader Lease"),
            Err(e) => {
                tracing::warn!(error = %e, "releasing the leader Lease failed; a standby takes over when it expires")
            }
        }
    }
}

/// Leadership for a process without election: always the leader, the fence always open.
pub fn always_leader() -> (watch::Sender<bool>, LeaderRx, Fence) {
    let (tx, rx) = watch::channel(true);
    (tx, rx, Fence::always())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, seconds: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: Some(seconds),
            ..Default::default()
        }
    }

    fn cfg(identity: &str) -> LeaderConfig {
        LeaderConfig {
            namespace: "ns".into(),
            name: "weir".into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    const D: Duration = Duration::from_secs(15);

    #[test]
    fn no_lease_is_created() {
        assert_eq!(decide(None, "me", Duration::ZERO, D), Decision::Create);
    }

    #[test]
    fn own_lease_is_renewed_however_old() {
        assert_eq!(decide(Some(&spec(Some("me"), 15)), "me", Duration::from_secs(100), D), Decision::Renew);
    }

    #[test]
    fn empty_holder_is_acquired_at_once() {
        assert_eq!(decide(Some(&spec(None, 1)), "me", Duration::ZERO, D), Decision::Acquire);
        assert_eq!(decide(Some(&spec(Some(""), 15)), "me", Duration::ZERO, D), Decision::Acquire);
    }

    #[test]
    fn live_lease_of_another_is_followed_until_it_stops_changing_for_its_duration() {
        let other = spec(Some("other"), 15);
        assert_eq!(decide(Some(&other), "me", Duration::from_secs(14), D), Decision::Follow { holder: "other".into() });
        assert_eq!(decide(Some(&other), "me", Duration::from_secs(15), D), Decision::Acquire);
        // The lease's own duration wins over the local default.
        let short = spec(Some("other"), 3);
        assert_eq!(decide(Some(&short), "me", Duration::from_secs(3), D), Decision::Acquire);
        let none = LeaseSpec { holder_identity: Some("other".into()), ..Default::default() };
        assert_eq!(decide(Some(&none), "me", Duration::from_secs(14), D), Decision::Follow { holder: "other".into() });
    }

    #[test]
    fn fence_is_open_only_until_its_end_and_never_moves_back() {
        let fence = Fence::closed();
        assert!(fence.check().is_err(), "a standby never writes");
        assert_eq!(fence.remaining(), Some(Duration::ZERO));
        fence.extend(Instant::now() + Duration::from_secs(60));
        assert!(fence.check().is_ok());
        fence.extend(Instant::now());
        assert!(fence.check().is_ok(), "an older renewal does not shorten a newer one");
        fence.close();
        assert!(fence.check().is_err());
        fence.extend(Instant::now() - Duration::from_millis(1));
        assert!(fence.check().is_err(), "a renewal whose validity already ended does not open it");
        let shared = fence.clone();
        fence.extend(Instant::now() + Duration::from_secs(60));
        assert!(shared.check().is_ok(), "every writer sees the same fence");
        assert!(Fence::always().check().is_ok());
        assert_eq!(Fence::always().remaining(), None);
    }

    #[test]
    fn writes_stop_a_margin_before_the_lease_ends() {
        let c = cfg("me");
        assert_eq!(c.safety_margin(), Duration::from_secs(5));
        assert_eq!(c.write_validity(), Duration::from_secs(10));
    }

    #[test]
    fn specs_count_transitions_and_keep_acquire_time_on_renew() {
        let t0 = MicroTime(k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap());
        let t1 = MicroTime(k8s_openapi::jiff::Timestamp::from_second(1_002).unwrap());
        let created = next_spec(None, &Decision::Create, &cfg("me"), t0.clone());
        assert_eq!(created.holder_identity.as_deref(), Some("me"));
        assert_eq!(created.lease_transitions, Some(0));
        assert_eq!(created.lease_duration_seconds, Some(15));

        let renewed = next_spec(Some(&created), &Decision::Renew, &cfg("me"), t1.clone());
        assert_eq!(renewed.acquire_time, Some(t0.clone()));
        assert_eq!(renewed.renew_time, Some(t1.clone()));
        assert_eq!(renewed.lease_transitions, Some(0));

        let taken = next_spec(Some(&renewed), &Decision::Acquire, &cfg("other"), t1.clone());
        assert_eq!(taken.holder_identity.as_deref(), Some("other"));
        assert_eq!(taken.acquire_time, Some(t1.clone()));
        assert_eq!(taken.lease_transitions, Some(1));

        let released = released_spec(&taken, t1.clone());
        assert_eq!(released.holder_identity, None);
        assert_eq!(released.lease_duration_seconds, Some(1));
        // After a release, acquiring is not a transition away from a live holder.
        let after = next_spec(Some(&released), &Decision::Acquire, &cfg("me"), t1);
        assert_eq!(after.lease_transitions, Some(1));
    }

    #[test]
    fn timing_flags_are_checked() {
        let config = |lease, renew, retry| LeaderConfig {
            namespace: "ns".into(),
            name: "weir".into(),
            identity: "me".into(),
            lease_duration: Duration::from_secs(lease),
            renew_deadline: Duration::from_secs(renew),
            retry_period: Duration::from_secs(retry),
        };
        assert!(config(15, 10, 2).checked().is_ok());
        assert!(config(10, 10, 2).checked().is_err());
        assert!(config(15, 10, 10).checked().is_err());
    }
}
