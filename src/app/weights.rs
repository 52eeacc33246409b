//! `weir weights list|get|set`: operate the weight table.
//!
//! The backend is sqlite when `--db` is given, else what `--backend-type` says (default dynamodb).
//! `set` parses the value strictly before it opens anything, so a bad value writes nothing.

use std::path::PathBuf;

use serde::Serialize;

use crate::backends::sqlite::SqliteStore;
use crate::backends::{open_store, BackendType, StoreConfig, StoreError, StoredWeight, WeightRow, WeightStore};
use crate::cli::{OutputFormat, WeightsCommand, WeightsStoreArgs};
use crate::weight::{parse_strict_weight, WeightError};

#[derive(Debug, thiserror::Error)]
pub enum WeightsCliError {
    #[error(
        "refusing to set DesiredWeight of {cluster:?} to {value:?}: {reason}; a weight is a whole number from 0 to \
         100; nothing was written"
    )]
    BadValue { cluster: String, value: String, reason: WeightError },
    #[error("no weight row for cluster {cluster:?} in the {store} store; known clusters: {known}")]
    UnknownCluster { cluster: String, store: &'static str, known: String },
    #[error("SQLite database {0} does not exist (check --db; `weir local` and `weir controller` create it)")]
    NoDatabase(PathBuf),
    #[error(
        "the static backend has no weight table: its weight is the --static-weight flag of the controller; use --db \
         PATH (sqlite) or --backend-type dynamodb"
    )]
    StaticBackend,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("could not encode JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("could not start the async runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// Runs the command on a fresh runtime (for the synchronous `app::run`); returns what to print.
pub fn run_blocking(cmd: &WeightsCommand) -> Result<String, WeightsCliError> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(run(cmd))
}

/// Runs the command; returns what to print on stdout.
pub async fn run(cmd: &WeightsCommand) -> Result<String, WeightsCliError> {
    match cmd {
        WeightsCommand::List(args) => {
            let store = open(args, "").await?;
            let rows = store.list().await?;
            let held = store.held().await?;
            output(args.output, &rows, || table_with_held(&rows, &held))
        }
        WeightsCommand::Get { store: args, cluster_name } => {
            let store = open(args, cluster_name).await?;
            let Some(row) = store.get(cluster_name).await? else {
                return Err(unknown(store.as_ref(), cluster_name).await);
            };
            let held = store.held().await?;
            output(args.output, &row, || table_with_held(std::slice::from_ref(&row), &held))
        }
        WeightsCommand::Set { store: args, cluster_name, desired } => {
            // Before anything is opened: a bad value must leave no trace, not even a new file.
            let value = parse_strict_weight(desired).map_err(|reason| WeightsCliError::BadValue {
                cluster: cluster_name.clone(),
                value: desired.clone(),
                reason,
            })?;
            let store = open(args, cluster_name).await?;
            let previous = match store.set_desired(cluster_name, value).await {
                Ok(p) => p,
                Err(StoreError::NotFound(_)) => return Err(unknown(store.as_ref(), cluster_name).await),
                Err(e) => return Err(e.into()),
            };
            let current = store.get(cluster_name).await?.map(|r| r.current);
            let result = SetResult {
                cluster: cluster_name.clone(),
                previous: previous.clone(),
                desired: value,
                current: current.clone(),
            };
            output(args.output, &result, || {
                let show =
                    |w: &Option<StoredWeight>| w.as_ref().map_or_else(|| "unknown".to_string(), |w| w.to_string());
                format!(
                    "{cluster_name}: DesiredWeight {} -> {value} (CurrentWeight {}; the controller applies it within \
                     one --weight-poll-interval)\n",
                    show(&previous),
                    show(&current)
                )
            })
        }
    }
}

#[derive(Serialize)]
struct SetResult {
    #[serde(rename = "ClusterName")]
    cluster: String,
    #[serde(rename = "PreviousDesiredWeight")]
    previous: Option<StoredWeight>,
    #[serde(rename = "DesiredWeight")]
    desired: u8,
    #[serde(rename = "CurrentWeight")]
    current: Option<StoredWeight>,
}

async fn open(args: &WeightsStoreArgs, cluster: &str) -> Result<std::sync::Arc<dyn WeightStore>, WeightsCliError> {
    if let Some(db) = &args.db {
        // Never create a database here: a typo in --db would otherwise look like an empty table.
        if !db.exists() {
            return Err(WeightsCliError::NoDatabase(db.clone()));
        }
        return Ok(std::sync::Arc::new(SqliteStore::open_existing(db).await?));
    }
    let backend = args.backend_type.unwrap_or(BackendType::DynamoDb);
    match backend {
        BackendType::Static => Err(WeightsCliError::StaticBackend),
        BackendType::Sqlite => Err(StoreError::Call {
            store: "sqlite",
            operation: "open",
            message: "the sqlite backend needs --db PATH".into(),
        }
        .into()),
        BackendType::DynamoDb => Ok(open_store(&StoreConfig {
            backend,
            db: None,
            table_name: args.table_name.clone(),
            aws_region: args.aws_region.clone(),
            static_weight: 0,
            cluster: cluster.to_string(),
        })
        .await?),
    }
}

/// The error for a cluster with no row, naming the ones that exist (typos are the usual cause).
async fn unknown(store: &dyn WeightStore, cluster: &str) -> WeightsCliError {
    let known = match store.list().await {
        Ok(rows) if rows.is_empty() => "none (a controller creates its row when it starts)".to_string(),
        Ok(rows) => rows.iter().map(|r| r.cluster.as_str()).collect::<Vec<_>>().join(", "),
        Err(e) => format!("(could not list them: {e})"),
    };
    WeightsCliError::UnknownCluster { cluster: cluster.to_string(), store: store.name(), known }
}

fn output<T: Serialize>(
    format: OutputFormat,
    value: &T,
    text: impl FnOnce() -> String,
) -> Result<String, WeightsCliError> {
    match format {
        OutputFormat::Json => Ok(serde_json::to_string_pretty(value)? + "\n"),
        OutputFormat::Table => Ok(text()),
    }
}

fn status(row: &WeightRow) -> &'static str {
    match (&row.desired, &row.current) {
        (StoredWeight::Invalid(_), _) => "invalid DesiredWeight: not applied",
        (d, c) if d == c => "in sync",
        _ => "pending",
    }
}

#[cfg(test)]
fn table(rows: &[WeightRow]) -> String {
    table_with_held(rows, &Default::default())
}

/// The status column names the hosts that hold a cluster's ack back.
fn table_with_held(rows: &[WeightRow], held: &std::collections::BTreeMap<String, Vec<String>>) -> String {
    let header = ["CLUSTER", "DESIRED", "CURRENT", "STATUS"];
    let status_of = |r: &WeightRow| match held.get(&r.cluster).filter(|h| !h.is_empty()) {
        Some(hosts) if r.desired != r.current => format!("{}; ack blocked, held: {}", status(r), hosts.join(", ")),
        Some(hosts) => format!("{}; held: {}", status(r), hosts.join(", ")),
        None => status(r).to_string(),
    };
    let cells: Vec<[String; 4]> =
        rows.iter().map(|r| [r.cluster.clone(), r.desired.to_string(), r.current.to_string(), status_of(r)]).collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cols: [&str; 4]| {
        let text: Vec<String> = cols.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(header);
    for row in &cells {
        line([&row[0], &row[1], &row[2], &row[3]]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_invalid_and_pending_rows() {
        let rows = vec![
            WeightRow { cluster: "eu-west".into(), desired: StoredWeight::Valid(0), current: StoredWeight::Valid(100) },
            WeightRow {
                cluster: "us".into(),
                desired: StoredWeight::Invalid("abc".into()),
                current: StoredWeight::Valid(5),
            },
            WeightRow { cluster: "ap".into(), desired: StoredWeight::Valid(5), current: StoredWeight::Valid(5) },
        ];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "CLUSTER  DESIRED          CURRENT  STATUS");
        assert_eq!(lines[1], "eu-west  0                100      pending");
        assert_eq!(lines[2], "us       \"abc\" (invalid)  5        invalid DesiredWeight: not applied");
        assert_eq!(lines[3], "ap       5                5        in sync");
    }
}
