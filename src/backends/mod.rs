//! Weight stores: where each cluster's DesiredWeight and CurrentWeight live.
//!
//! `static` (a flag value), `sqlite` (the embedded default) and `dynamodb` (production) implement the
//! same trait. Values are read raw and checked here, so that a bad row is refused the same way whatever
//! the store.

pub mod dynamodb;

use std::fmt;
use std::str::FromStr;

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

#[cfg(test)]
mod tests {
    use super::*;

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
