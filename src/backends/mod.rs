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

use serde::Serialize;

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WeightRow {
    #[serde(rename = "ClusterName")]
    pub cluster: String,
    #[serde(rename = "DesiredWeight")]
    pub desired: StoredWeight,
    #[serde(rename = "CurrentWeight")]
    pub current: StoredWeight,
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

    /// `CurrentWeight := applied`, only if DesiredWeight is still `applied`.
    async fn ack(&self, cluster: &str, applied: u8) -> Result<AckOutcome, StoreError>;

    /// Sets DesiredWeight (conditionally on the row existing); returns the value it replaced.
    async fn set_desired(&self, cluster: &str, desired: u8) -> Result<Option<StoredWeight>, StoreError>;

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
    pub aws_region: String,
    /// The weight of the static backend.
    pub static_weight: u8,
    /// This cluster's name (the static backend's only row).
    pub cluster: String,
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
/// credentials), `--aws-region` as the fallback region.
async fn open_dynamodb(cfg: &StoreConfig) -> Result<Arc<dyn WeightStore>, StoreError> {
    let store = dynamodb::DynamoStore::connect(&cfg.table_name, &cfg.aws_region, crate::aws::Aws::default()).await;
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
            aws_region: "eu-west-1".into(),
            static_weight: 40,
            cluster: "eu".into(),
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
    fn stored_weights_are_checked() {
        assert_eq!(StoredWeight::from_number(42), StoredWeight::Valid(42));
        assert_eq!(StoredWeight::from_number(101), StoredWeight::Invalid("101".into()));
        assert_eq!(StoredWeight::from_number(-1), StoredWeight::Invalid("-1".into()));
        assert_eq!(StoredWeight::from_text("abc"), StoredWeight::Invalid("abc".into()));
        assert_eq!(StoredWeight::from_text("7"), StoredWeight::Valid(7));
    }
}
