//! Weight stores: where each cluster's DesiredWeight and CurrentWeight live.
//!
//! `static` (a flag value), `sqlite` (the embedded default) and `dynamodb` (production) implement the
//! same trait. Values are read raw and checked here, so that a bad row is refused the same way whatever
//! the store.

pub mod dynamodb;
pub mod sqlite;
pub mod static_store;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::weight::{check_strict_weight, WeightError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("weight store {store} failed to {operation}: {message}")]
    Call { store: &'static str, operation: &'static str, message: String },
    #[error("no weight row for cluster {0:?}")]
    NotFound(String),
    #[error("DesiredWeight of {cluster:?} changed to {found} while {expected} was being applied")]
    Conflict { cluster: String, expected: String, found: String },
    #[error("the {0} weight store is read-only")]
    ReadOnly(&'static str),
    #[error(transparent)]
    InvalidWeight(#[from] WeightError),
}

impl StoreError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            StoreError::Call { .. } => "call",
            StoreError::NotFound(_) => "not_found",
            StoreError::Conflict { .. } => "conflict",
            StoreError::ReadOnly(_) => "read_only",
            StoreError::InvalidWeight(_) => "invalid_weight",
        }
    }
}

/// A weight as found in the store: valid, or what was there instead (kept for messages and metrics).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum StoredWeight {
    Valid(u8),
    Invalid(String),
}

impl StoredWeight {
    /// From a number the store typed for us.
    pub fn from_number(n: i128) -> Self {
        match check_strict_weight(n) {
            Ok(w) => StoredWeight::Valid(w),
            Err(_) => StoredWeight::Invalid(n.to_string()),
        }
    }

    /// From text (a DynamoDB number string, an SQLite value of the wrong type).
    pub fn from_text(raw: &str) -> Self {
        match crate::weight::parse_strict_weight(raw) {
            Ok(w) => StoredWeight::Valid(w),
            Err(_) => StoredWeight::Invalid(raw.to_string()),
        }
    }

    pub fn valid(&self) -> Option<u8> {
        match self {
            StoredWeight::Valid(w) => Some(*w),
            StoredWeight::Invalid(_) => None,
        }
    }
}

impl fmt::Display for StoredWeight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoredWeight::Valid(w) => write!(f, "{w}"),
            StoredWeight::Invalid(raw) => write!(f, "{raw:?} (invalid)"),
        }
    }
}

/// One cluster's row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeightRow {
    #[serde(rename = "ClusterName")]
    pub cluster: String,
    #[serde(rename = "DesiredWeight")]
    pub desired: StoredWeight,
    #[serde(rename = "CurrentWeight")]
    pub current: StoredWeight,
    /// A ramp or a time-boxed override of this cluster (attribute/column `Plan`, JSON), carried out
    /// by the cluster's leader; a finished ramp stays for `weir weights list` until the next change.
    #[serde(rename = "Plan", skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    /// This cluster's drain claim: Unix milliseconds until which it holds the right to take its
    /// weight to 0 (attribute/column `DrainUntil`; see [`WeightStore::claim_drain`]). Removed by the
    /// next acknowledgement.
    #[serde(rename = "DrainUntil", skip_serializing_if = "Option::is_none")]
    pub drain_until_ms: Option<i64>,
}

impl WeightRow {
    pub fn new(cluster: impl Into<String>, desired: StoredWeight, current: StoredWeight) -> Self {
        Self { cluster: cluster.into(), desired, current, plan: None, drain_until_ms: None }
    }

    /// Whether this row holds a drain claim that has not expired at `now_ms`.
    pub fn draining_at(&self, now_ms: i64) -> bool {
        self.drain_until_ms.is_some_and(|until| until > now_ms)
    }
}

/// The clusters other than `cluster` whose DesiredWeight is > 0 (a row that is not a weight does not
/// count), in table order.
pub fn serving_others<'a>(rows: &'a [WeightRow], cluster: &str) -> Vec<&'a str> {
    rows.iter()
        .filter(|r| r.cluster != cluster && r.desired.valid().is_some_and(|w| w > 0))
        .map(|r| r.cluster.as_str())
        .collect()
}

/// `--min-serving-clusters`: why setting `cluster` from `before` to `after` is refused, if it is. A
/// change that takes a serving cluster (DesiredWeight > 0) to 0 is refused when fewer than `min`
/// clusters would then have DesiredWeight > 0. Pure; `rows` is the whole table (this cluster's row
/// may show `before` or `after`: it is replaced by `after`).
pub fn min_serving_violation(
    rows: &[WeightRow],
    cluster: &str,
    before: Option<u8>,
    after: u8,
    min: usize,
) -> Option<String> {
    if min == 0 || after > 0 || before.unwrap_or(0) == 0 {
        return None;
    }
    let serving = serving_others(rows, cluster);
    (serving.len() < min).then(|| {
        format!(
            "setting {cluster:?} to 0 would leave {} cluster(s) with DesiredWeight > 0 ({}), fewer than \
             --min-serving-clusters {min}",
            serving.len(),
            if serving.is_empty() { "none".to_string() } else { serving.join(", ") }
        )
    })
}

/// How long a drain claim lasts unless renewed. The weight loop renews it while the drain is under
/// way (DesiredWeight 0, CurrentWeight not yet 0) once less than half is left; the claim of a
/// cluster whose controllers all died expires after this.
pub const DRAIN_CLAIM_TTL_MS: i64 = 30_000;

/// What [`WeightStore::claim_drain`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainClaim {
    /// The claim is written: this cluster may take its weight to 0.
    Claimed,
    /// Not now, and why: keep serving the applied weight and ask again on the next poll.
    Refused(String),
}

/// The rule a drain claim asserts on the whole table read at `now_ms`: no other cluster holds a live
/// drain claim, and (with `min_serving` > 0) at least that many other clusters have DesiredWeight > 0.
/// Ok: the other clusters counted as serving (the write pins them); Err: why not. Pure; the stores
/// check it again inside the write (SQLite: in the same IMMEDIATE transaction; DynamoDB: as
/// `ConditionCheck`s of one `TransactWriteItems`).
pub fn drain_claim_check(
    rows: &[WeightRow],
    cluster: &str,
    min_serving: usize,
    now_ms: i64,
) -> Result<Vec<String>, String> {
    let draining: Vec<&str> =
        rows.iter().filter(|r| r.cluster != cluster && r.draining_at(now_ms)).map(|r| r.cluster.as_str()).collect();
    if !draining.is_empty() {
        return Err(format!(
            "cluster(s) {} are draining at the same time (a drain claim in the weight table); {cluster:?} \
             keeps serving and asks again on its next poll",
            draining.join(", ")
        ));
    }
    if let Some(why) = min_serving_violation(rows, cluster, Some(1), 0, min_serving) {
        return Err(why);
    }
    Ok(serving_others(rows, cluster).into_iter().take(min_serving).map(str::to_string).collect())
}

/// What the leader carries out for a cluster besides applying DesiredWeight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Plan {
    Ramp(Ramp),
    Override(Override),
}

impl Plan {
    /// The JSON kept in the store (also what conditional writes compare).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a plan serializes")
    }

    /// A stored plan; `Err` keeps the raw text for the message.
    pub fn from_json(raw: &str) -> Result<Plan, String> {
        serde_json::from_str(raw).map_err(|e| format!("unreadable Plan {raw:?}: {e}"))
    }

    pub fn running_ramp(&self) -> Option<&Ramp> {
        match self {
            Plan::Ramp(r) if matches!(r.state, RampState::Running { .. }) => Some(r),
            _ => None,
        }
    }
}

/// `weir weights ramp`: DesiredWeight moves from `from` to `to` by `step`, holding `every_ms` after
/// each acknowledged step, then asking the gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ramp {
    /// DesiredWeight before the ramp: where a failed gate reverts to.
    pub from: u8,
    pub to: u8,
    pub step: u8,
    pub every_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub actor: String,
    pub started_at_ms: i64,
    pub state: RampState,
}

impl Ramp {
    /// Steps from `from` to `to` (at least 1).
    pub fn steps(&self) -> u32 {
        let distance = u32::from(self.from.abs_diff(self.to));
        distance.div_ceil(u32::from(self.step.max(1))).max(1)
    }

    /// The weight after step `n` (1-based), clamped at `to`.
    pub fn weight_at(&self, n: u32) -> u8 {
        let moved = (n * u32::from(self.step)).min(u32::from(self.from.abs_diff(self.to))) as u8;
        if self.to >= self.from {
            self.from + moved
        } else {
            self.from - moved
        }
    }
}

/// The gate asked after each step's hold: a Prometheus instant query whose value must not exceed `max`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    pub url: String,
    pub query: String,
    pub max: f64,
    /// `--gate-on-no-data pass`: an empty result passes (by default it fails).
    #[serde(default)]
    pub pass_on_no_data: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RampState {
    /// Step `step` of `steps` sets DesiredWeight to `at`; once acknowledged, it holds until `hold_until_ms`
    /// (absent: not acknowledged yet). Step 0: recorded, no step written yet.
    Running {
        step: u32,
        steps: u32,
        at: u8,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hold_until_ms: Option<i64>,
    },
    Completed {
        at_ms: i64,
    },
    /// The gate failed at weight `at`; DesiredWeight was reverted to `from`.
    Aborted {
        at: u8,
        reason: String,
        at_ms: i64,
    },
    Cancelled {
        reason: String,
        at_ms: i64,
    },
}

/// `weir weights set --for`: DesiredWeight `value` until `until_ms`, then back to `previous`, unless
/// DesiredWeight was changed meanwhile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Override {
    pub previous: u8,
    pub value: u8,
    pub until_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub actor: String,
}

/// One change of DesiredWeight or CurrentWeight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Unix milliseconds.
    #[serde(rename = "At")]
    pub at_ms: i64,
    #[serde(rename = "Time")]
    pub time: String,
    #[serde(rename = "ClusterName")]
    pub cluster: String,
    /// `DesiredWeight` or `CurrentWeight`.
    #[serde(rename = "Field")]
    pub field: String,
    #[serde(rename = "Before")]
    pub before: Option<String>,
    #[serde(rename = "After")]
    pub after: String,
    #[serde(rename = "Actor")]
    pub actor: String,
    /// What made the change: `set`, `override`, `revert`, `ramp_step`, `ramp_abort`, `ack`.
    #[serde(rename = "Cause")]
    pub cause: String,
    #[serde(rename = "Reason")]
    pub reason: Option<String>,
}

impl HistoryEntry {
    pub fn new(cluster: &str, field: &str, before: Option<String>, after: String, actor: &str, cause: &str) -> Self {
        let at_ms = now_ms();
        Self {
            at_ms,
            time: rfc3339_ms(at_ms),
            cluster: cluster.to_string(),
            field: field.to_string(),
            before,
            after,
            actor: actor.to_string(),
            cause: cause.to_string(),
            reason: None,
        }
    }

    pub fn with_reason(mut self, reason: Option<&str>) -> Self {
        self.reason = reason.map(str::to_string);
        self
    }
}

/// The history's actor for changes the controller of `cluster` makes: its AWS identity when known.
pub fn controller_actor(identity: Option<&str>, cluster: &str) -> String {
    match identity {
        Some(arn) => format!("{arn} (weir controller of {cluster})"),
        None => format!("weir controller of {cluster}"),
    }
}

/// Wall-clock Unix milliseconds (plan deadlines are shared between processes, so not `Instant`).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub fn rfc3339_ms(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The conditional write of a plan step: lands only if DesiredWeight is still `expect_desired` (when
/// given) and the plan is still `expect_plan`.
#[derive(Debug, Clone)]
pub struct PlanWrite<'a> {
    pub expect_desired: Option<u8>,
    pub expect_plan: Option<&'a Plan>,
    /// The new DesiredWeight (None: unchanged).
    pub desired: Option<u8>,
    pub plan: Option<&'a Plan>,
    /// Appended to the history when the write lands and changes DesiredWeight.
    pub actor: &'a str,
    pub cause: &'a str,
    pub reason: Option<&'a str>,
}

/// What `ack` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckOutcome {
    /// CurrentWeight now equals the applied DesiredWeight.
    Acknowledged,
    /// DesiredWeight changed meanwhile: reconcile again, do not give up.
    DesiredChanged,
}

#[async_trait::async_trait]
pub trait WeightStore: Send + Sync {
    fn name(&self) -> &'static str;

    /// Every cluster's row.
    async fn list(&self) -> Result<Vec<WeightRow>, StoreError>;

    /// One cluster's row, read consistently.
    async fn get(&self, cluster: &str) -> Result<Option<WeightRow>, StoreError>;

    /// Creates the row with DesiredWeight = CurrentWeight = `initial` if absent; never overwrites an
    /// operator's row. Returns the row as it is afterwards.
    async fn ensure(&self, cluster: &str, initial: u8) -> Result<WeightRow, StoreError>;

    /// `CurrentWeight := applied`, only if DesiredWeight is still `applied`; removes the row's drain
    /// claim (CurrentWeight now says what is published).
    async fn ack(&self, cluster: &str, applied: u8) -> Result<AckOutcome, StoreError>;

    /// Sets DesiredWeight (conditionally on the row existing); returns the value it replaced.
    async fn set_desired(&self, cluster: &str, desired: u8) -> Result<Option<StoredWeight>, StoreError>;

    /// A conditional write of DesiredWeight and the plan (see [`PlanWrite`]); `Ok(false)` when the
    /// condition failed (someone changed the row meanwhile). A DesiredWeight change is recorded in
    /// the history.
    async fn write_plan(&self, cluster: &str, write: PlanWrite<'_>) -> Result<bool, StoreError> {
        let _ = (cluster, write);
        Err(StoreError::ReadOnly(self.name()))
    }

    /// Appends to the history (a no-op where history is off).
    async fn append_history(&self, entry: &HistoryEntry) -> Result<(), StoreError> {
        let _ = entry;
        Ok(())
    }

    /// History entries, oldest first, of one cluster or all, since a Unix-milliseconds time.
    async fn history(&self, cluster: Option<&str>, since_ms: Option<i64>) -> Result<Vec<HistoryEntry>, StoreError> {
        let _ = (cluster, since_ms);
        Err(StoreError::ReadOnly(self.name()))
    }

    /// Who this process is to the store, for the history's actor (DynamoDB: the STS
    /// `GetCallerIdentity` ARN, looked up once; `None` where there is none or the lookup failed).
    async fn caller_identity(&self) -> Option<String> {
        None
    }

    /// Starts a task that wakes `wake` soon after `cluster`'s row may have changed (DynamoDB: a
    /// record of the table's stream; SQLite: a commit to the file). A hint only: the weight loop then
    /// reads the row consistently, and its poll stays the fallback and the source of truth. `None`:
    /// this store has no such mechanism.
    fn spawn_change_hints(
        &self,
        cluster: &str,
        wake: std::sync::Arc<tokio::sync::Notify>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let _ = (cluster, wake, shutdown);
        None
    }

    /// Claims the right to take `cluster`'s weight to 0, so that two clusters never drain at once (the
    /// all-zero guard of each would read the other's records before either changed them): written
    /// only if [`drain_claim_check`] holds for the table at the moment of the write and DesiredWeight
    /// is still 0; it lasts `ttl_ms` (renewed by asking again) and the next [`WeightStore::ack`]
    /// removes it. Stores without other clusters' rows have nobody to race and always grant it.
    async fn claim_drain(&self, cluster: &str, min_serving: usize, ttl_ms: i64) -> Result<DrainClaim, StoreError> {
        let _ = (cluster, min_serving, ttl_ms);
        Ok(DrainClaim::Claimed)
    }

    /// Records the hosts that hold this cluster's ack back (empty: none), for `weir weights list`.
    /// Stores without a place for it keep nothing (the metric and the Events still say it).
    async fn note_held(&self, _cluster: &str, _hosts: &[String]) -> Result<(), StoreError> {
        Ok(())
    }

    /// What [`WeightStore::note_held`] recorded, per cluster.
    async fn held(&self) -> Result<std::collections::BTreeMap<String, Vec<String>>, StoreError> {
        Ok(Default::default())
    }
}

/// `--backend-type`. The old spellings `fake`, `dynamodb` and `dynamoDB` are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendType {
    Static,
    Sqlite,
    DynamoDb,
}

impl FromStr for BackendType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "static" | "fake" => Ok(BackendType::Static),
            "sqlite" => Ok(BackendType::Sqlite),
            "dynamodb" | "dynamoDB" => Ok(BackendType::DynamoDb),
            other => Err(format!("unknown backend type {other:?}: use static, sqlite or dynamodb")),
        }
    }
}

impl fmt::Display for BackendType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendType::Static => "static",
            BackendType::Sqlite => "sqlite",
            BackendType::DynamoDb => "dynamodb",
        })
    }
}

/// Everything needed to open any weight store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub backend: BackendType,
    /// SQLite file (sqlite backend).
    pub db: Option<PathBuf>,
    /// DynamoDB table.
    pub table_name: String,
    /// `--aws-region` when given (it wins over `AWS_REGION`).
    pub aws_region: Option<String>,
    /// The weight of the static backend.
    pub static_weight: u8,
    /// This cluster's name (the static backend's only row).
    pub cluster: String,
    /// DynamoDB history table (`--history-table`); SQLite keeps history in its own file.
    pub history_table: Option<String>,
}

/// Opens the configured weight store.
pub async fn open_store(cfg: &StoreConfig) -> Result<Arc<dyn WeightStore>, StoreError> {
    match cfg.backend {
        BackendType::Static => Ok(Arc::new(static_store::StaticStore::new(&cfg.cluster, cfg.static_weight))),
        BackendType::Sqlite => {
            let db = cfg.db.as_ref().ok_or_else(|| StoreError::Call {
                store: "sqlite",
                operation: "open",
                message: "the sqlite backend needs --db PATH".into(),
            })?;
            Ok(Arc::new(sqlite::SqliteStore::open(db).await?))
        }
        BackendType::DynamoDb => open_dynamodb(cfg).await,
    }
}

/// The DynamoDB table, on the SDK's standard environment (`AWS_ENDPOINT_URL`, `AWS_REGION`,
/// credentials); an explicit `--aws-region` wins over `AWS_REGION`.
async fn open_dynamodb(cfg: &StoreConfig) -> Result<Arc<dyn WeightStore>, StoreError> {
    let store = dynamodb::DynamoStore::connect(&cfg.table_name, cfg.aws_region.as_deref(), crate::aws::Aws::default())
        .await
        .with_history_table(cfg.history_table.clone());
    store.check_history_table().await?;
    if cfg.history_table.is_none() {
        tracing::warn!("no --history-table: weight history is off (the DynamoDB store keeps no record of changes)");
    }
    Ok(Arc::new(store))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(backend: BackendType, db: Option<PathBuf>) -> StoreConfig {
        StoreConfig {
            backend,
            db,
            table_name: "traffic-controller".into(),
            aws_region: Some("eu-west-1".into()),
            static_weight: 40,
            cluster: "eu".into(),
            history_table: None,
        }
    }

    #[tokio::test]
    async fn factory_opens_static_and_sqlite() {
        let s = open_store(&cfg(BackendType::Static, None)).await.unwrap();
        assert_eq!(s.name(), "static");
        assert_eq!(s.ensure("eu", 0).await.unwrap().desired, StoredWeight::Valid(40));

        let dir = tempfile::tempdir().unwrap();
        let s = open_store(&cfg(BackendType::Sqlite, Some(dir.path().join("w.db")))).await.unwrap();
        assert_eq!(s.name(), "sqlite");
        assert_eq!(s.ensure("eu", 7).await.unwrap().desired, StoredWeight::Valid(7));

        let err = open_store(&cfg(BackendType::Sqlite, None)).await.err().unwrap();
        assert!(err.to_string().contains("--db"), "{err}");
    }

    #[test]
    fn backend_type_accepts_old_spellings() {
        assert_eq!("fake".parse(), Ok(BackendType::Static));
        assert_eq!("dynamoDB".parse(), Ok(BackendType::DynamoDb));
        assert_eq!("dynamodb".parse(), Ok(BackendType::DynamoDb));
        assert_eq!("sqlite".parse(), Ok(BackendType::Sqlite));
        assert!("redis".parse::<BackendType>().is_err());
    }

    #[test]
    fn a_drain_claim_needs_no_other_live_claim_and_the_minimum_serving() {
        let row = |c: &str, d: u8, until: Option<i64>| {
            let mut r = WeightRow::new(c, StoredWeight::Valid(d), StoredWeight::Valid(50));
            r.drain_until_ms = until;
            r
        };
        let rows = [row("eu", 0, None), row("us", 0, Some(2_000)), row("ap", 50, None)];
        let why = drain_claim_check(&rows, "eu", 0, 1_000).unwrap_err();
        assert!(why.contains("us are draining at the same time"), "{why}");
        // Expired at 2,000: no longer blocks; min 1 pins ap, the one other cluster above 0.
        assert_eq!(drain_claim_check(&rows, "eu", 1, 2_000), Ok(vec!["ap".to_string()]));
        assert_eq!(drain_claim_check(&rows, "eu", 0, 2_000), Ok(vec![]));
        let why = drain_claim_check(&rows, "eu", 2, 2_000).unwrap_err();
        assert!(why.contains("fewer than --min-serving-clusters 2"), "{why}");
        // Its own claim never blocks a cluster (a new leader renews it).
        assert_eq!(drain_claim_check(&rows, "us", 0, 1_000), Ok(vec![]));
    }

    #[test]
    fn stored_weights_are_checked() {
        assert_eq!(StoredWeight::from_number(42), StoredWeight::Valid(42));
        assert_eq!(StoredWeight::from_number(101), StoredWeight::Invalid("101".into()));
        assert_eq!(StoredWeight::from_number(-1), StoredWeight::Invalid("-1".into()));
        assert_eq!(StoredWeight::from_text("abc"), StoredWeight::Invalid("abc".into()));
        assert_eq!(StoredWeight::from_text("7"), StoredWeight::Valid(7));
    }
}
