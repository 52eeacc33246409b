//! Leader election on a `coordination.k8s.io/v1` Lease, so that only one replica writes DNS,
//! acknowledges weights and applies objects. Standbys keep their caches warm and serve metrics and
//! readiness; they take over when the leader stops renewing for a lease duration.
//!
//! The rules are client-go's: every retry period the leader renews and the others try to acquire; a
//! lease is expired when its record has not changed, as seen by this replica's own monotonic clock,
//! for the lease duration (no trust in other replicas' wall clocks); the leader steps down when it
//! cannot renew within the renew deadline; a clean shutdown releases the lease. The decisions are
//! pure functions below; [`LeaderElector`] only does the reads and the conditional writes.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::Api;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

/// Receives `true` while this replica holds the lease. Writers check it before every write pass.
pub type LeaderRx = watch::Receiver<bool>;

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

/// Whether a leader whose last successful renewal was `since_renew` ago may keep writing.
pub fn keeps_leadership(since_renew: Duration, renew_deadline: Duration) -> bool {
    since_renew < renew_deadline
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
        registry.register("weir_leader", "1 while this replica holds the leader Lease", m.leader.clone());
        registry.register(
            "weir_leader_transitions",
            "Times this replica became or stopped being the leader",
            m.transitions.clone(),
        );
        m
    }
}

/// The I/O side: reads the Lease, writes it conditionally (resourceVersion), publishes leadership.
pub struct LeaderElector {
    pub api: Api<Lease>,
    pub config: LeaderConfig,
    pub metrics: LeaderMetrics,
}

/// What the elector remembers between rounds.
struct Round {
    leader: bool,
    last_renew: Option<Instant>,
    /// The lease record as last seen (holder, renew time, resourceVersion) and when it first looked so.
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
    /// Runs until `shutdown` flips to true, then releases the lease if held.
    pub async fn run(self, tx: watch::Sender<bool>, mut shutdown: watch::Receiver<bool>) {
        let mut round = Round { leader: false, last_renew: None, observed: None };
        tracing::info!(identity = %self.config.identity, lease = %format!("{}/{}", self.config.namespace, self.config.name), "leader election started");
        loop {
            if *shutdown.borrow() {
                break;
            }
            self.round(&mut round).await;
            self.publish(&tx, &mut round);
            tokio::select! {
                _ = tokio::time::sleep(self.config.retry_period) => {}
                _ = shutdown.changed() => {}
            }
        }
        if round.leader {
            // Stop writers first, then hand the lease back so a standby takes over at once.
            round.leader = false;
            self.publish(&tx, &mut round);
            self.release().await;
        }
    }

    fn publish(&self, tx: &watch::Sender<bool>, round: &mut Round) {
        let changed = tx.send_if_modified(|v| std::mem::replace(v, round.leader) != round.leader);
        if changed {
            self.metrics.transitions.inc();
            self.metrics.leader.set(i64::from(round.leader));
            if round.leader {
                tracing::info!(identity = %self.config.identity, "became the leader");
            } else {
                tracing::warn!(identity = %self.config.identity, "no longer the leader; writes stop");
            }
        }
    }

    async fn round(&self, round: &mut Round) {
        let started = Instant::now();
        let current = match self.api.get_opt(&self.config.name).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "reading the leader Lease failed");
                self.check_deadline(round, started);
                return;
            }
        };
        if let Some(lease) = &current {
            let key = record_key(lease);
            if round.observed.as_ref().is_none_or(|(k, _)| *k != key) {
                round.observed = Some((key, started));
            }
        }
        let unchanged_for = round.observed.as_ref().map(|(_, at)| started.duration_since(*at)).unwrap_or_default();
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let decision = decide(spec, &self.config.identity, unchanged_for, self.config.lease_duration);
        let result = match &decision {
            Decision::Follow { holder } => {
                if round.leader {
                    tracing::warn!(%holder, "another replica holds the Lease");
                }
                round.leader = false;
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
                round.leader = true;
                round.last_renew = Some(started);
                round.observed = Some((record_key(&written), started));
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tracing::debug!(?decision, "the Lease changed under us");
                self.check_deadline(round, started);
                if decision != Decision::Renew {
                    round.leader = false;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, ?decision, "writing the leader Lease failed");
                self.check_deadline(round, started);
            }
        }
    }

    fn check_deadline(&self, round: &mut Round, now: Instant) {
        let since = round.last_renew.map(|t| now.duration_since(t)).unwrap_or(Duration::MAX);
        if round.leader && !keeps_leadership(since, self.config.renew_deadline) {
            tracing::warn!(?since, deadline = ?self.config.renew_deadline, "could not renew the Lease in time");
            round.leader = false;
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

/// Leadership for a process: the elector's channel when election is on, else always leader.
pub fn always_leader() -> (watch::Sender<bool>, LeaderRx) {
    watch::channel(true)
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
    fn leader_steps_down_after_the_renew_deadline() {
        let deadline = Duration::from_secs(10);
        assert!(keeps_leadership(Duration::from_secs(9), deadline));
        assert!(!keeps_leadership(Duration::from_secs(10), deadline));
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
