//! `weir weights list|get|set`: operate the weight table.
//!
//! The backend is sqlite when `--db` is given, else what `--backend-type` says (default dynamodb).
//! `set` parses the value strictly before it opens anything, so a bad value writes nothing.

use std::path::PathBuf;

use serde::Serialize;

use std::time::Duration;

use crate::backends::sqlite::SqliteStore;
use crate::backends::{
    now_ms, open_store, BackendType, Gate, HistoryEntry, Plan, PlanWrite, Ramp, RampState, StoreConfig, StoreError,
    StoredWeight, WeightRow, WeightStore,
};
use crate::cli::{GateOnNoData, OutputFormat, RampArgs, SafetyArgs, WeightsCommand, WeightsStoreArgs};
use crate::reconciler::ramp::{describe_plan, new_override, query_gate, GateTls};
use crate::reconciler::weight::min_serving_violation;
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
    /// A safety rule, a bad flag or a changed row: nothing was written.
    #[error("{0}")]
    Refused(String),
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
            let now = now_ms();
            let held = store.held().await?;
            let listed: Vec<ListedRow> = rows
                .iter()
                .map(|r| ListedRow { status: status(r, now), row: r, held: held_of(&held, &r.cluster) })
                .collect();
            output(args.output, &listed, || table_with_held(&rows, now, &held))
        }
        WeightsCommand::Get { store: args, cluster_name } => {
            let store = open(args, cluster_name).await?;
            let Some(row) = store.get(cluster_name).await? else {
                return Err(unknown(store.as_ref(), cluster_name).await);
            };
            let now = now_ms();
            let held = store.held().await?;
            let listed = ListedRow { status: status(&row, now), row: &row, held: held_of(&held, cluster_name) };
            output(args.output, &listed, || table_with_held(std::slice::from_ref(&row), now, &held))
        }
        WeightsCommand::Set { store: args, cluster_name, desired, for_, reason, max_step, force, safety } => {
            // Before anything is opened: a bad value must leave no trace, not even a new file.
            let value = parse_strict_weight(desired).map_err(|reason| WeightsCliError::BadValue {
                cluster: cluster_name.clone(),
                value: desired.clone(),
                reason,
            })?;
            let duration = for_.as_deref().map(parse_positive_duration("--for")).transpose()?;
            let store = open(args, cluster_name).await?;
            let Some(row) = store.get(cluster_name).await? else {
                return Err(unknown(store.as_ref(), cluster_name).await);
            };
            let before = row.desired.valid();
            if let (Some(max), Some(b)) = (max_step, before) {
                if b.abs_diff(value) > *max && !force {
                    return Err(WeightsCliError::Refused(format!(
                        "{cluster_name}: {b} -> {value} is a change of {}, more than --max-step {max} (add --force)",
                        b.abs_diff(value)
                    )));
                }
            }
            check_min_serving(store.as_ref(), cluster_name, before.or(row.current.valid()), value, safety).await?;
            let mut notes = Vec::new();
            let plan = match (duration, &row.plan) {
                (Some(d), _) => {
                    let previous = before.ok_or_else(|| {
                        WeightsCliError::Refused(format!(
                            "{cluster_name}: DesiredWeight is {}, so there is no weight for --for to revert to; set \
                             it without --for first",
                            row.desired
                        ))
                    })?;
                    notes.push(format!(
                        "override: back to {previous} in {} unless changed meanwhile",
                        humantime::format_duration(d)
                    ));
                    Some(Plan::Override(new_override(previous, value, d, reason.clone(), actor(store.as_ref()).await)))
                }
                (None, Some(p)) => match p.running_ramp() {
                    Some(ramp) => {
                        notes.push(format!("cancelled the running ramp {}→{}", ramp.from, ramp.to));
                        Some(Plan::Ramp(Ramp {
                            state: RampState::Cancelled {
                                reason: format!("`weir weights set --desired {value}`"),
                                at_ms: now_ms(),
                            },
                            ..ramp.clone()
                        }))
                    }
                    None => {
                        if let Plan::Override(o) = p {
                            notes.push(format!("ended the override of {} (it will not revert)", o.value));
                        }
                        None
                    }
                },
                (None, None) => None,
            };
            let cause = if duration.is_some() { "override" } else { "set" };
            write(store.as_ref(), cluster_name, &row, Some(value), plan.as_ref(), cause, reason.as_deref()).await?;
            let current = store.get(cluster_name).await?.map(|r| r.current);
            let result = SetResult {
                cluster: cluster_name.clone(),
                previous: Some(row.desired.clone()),
                desired: value,
                current: current.clone(),
                plan: plan.clone(),
                notes: notes.clone(),
            };
            output(args.output, &result, || {
                let show =
                    |w: &Option<StoredWeight>| w.as_ref().map_or_else(|| "unknown".to_string(), |w| w.to_string());
                let mut text = format!(
                    "{cluster_name}: DesiredWeight {} -> {value} (CurrentWeight {}; the controller applies it within \
                     one --weight-poll-interval)\n",
                    row.desired,
                    show(&current)
                );
                for n in &notes {
                    text.push_str(&format!("{cluster_name}: {n}\n"));
                }
                text
            })
        }
        WeightsCommand::Ramp(args) => ramp(args).await,
        WeightsCommand::History { store: args, cluster_name, since } => {
            let store = open(args, cluster_name.as_deref().unwrap_or("")).await?;
            let since_ms = since.map(|d| now_ms() - d.as_millis() as i64);
            let entries = store.history(cluster_name.as_deref(), since_ms).await?;
            output(args.output, &entries, || history_table(&entries))
        }
    }
}

/// Who is making a change from this CLI: the caller's AWS identity on DynamoDB (STS), else (or when
/// STS cannot be asked, with a warning) the local user.
async fn actor(store: &dyn WeightStore) -> String {
    if let Some(arn) = store.caller_identity().await {
        return format!("{arn} (weir weights)");
    }
    let user = std::env::var("USER").or_else(|_| std::env::var("USERNAME")).unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    if host.is_empty() {
        format!("{user} (weir weights)")
    } else {
        format!("{user}@{host} (weir weights)")
    }
}

fn parse_positive_duration(flag: &'static str) -> impl Fn(&str) -> Result<Duration, WeightsCliError> {
    move |s| {
        let d = crate::cli::parse_duration(s).map_err(|e| WeightsCliError::Refused(format!("{flag}: {e}")))?;
        if d.is_zero() {
            return Err(WeightsCliError::Refused(format!("{flag} must be longer than 0; nothing was written")));
        }
        Ok(d)
    }
}

async fn check_min_serving(
    store: &dyn WeightStore,
    cluster: &str,
    before: Option<u8>,
    after: u8,
    safety: &SafetyArgs,
) -> Result<(), WeightsCliError> {
    if safety.min_serving_clusters == 0 {
        return Ok(());
    }
    let rows = store.list().await?;
    match min_serving_violation(&rows, cluster, before, after, safety.min_serving_clusters) {
        Some(why) => Err(WeightsCliError::Refused(format!("{why}; nothing was written"))),
        None => Ok(()),
    }
}

/// The conditional write of the CLI: lands only on the row as it was read.
async fn write(
    store: &dyn WeightStore,
    cluster: &str,
    row: &WeightRow,
    desired: Option<u8>,
    plan: Option<&Plan>,
    cause: &str,
    reason: Option<&str>,
) -> Result<(), WeightsCliError> {
    let actor = actor(store).await;
    let landed = store
        .write_plan(
            cluster,
            PlanWrite {
                expect_desired: row.desired.valid(),
                expect_plan: row.plan.as_ref(),
                desired,
                plan,
                actor: &actor,
                cause,
                reason,
            },
        )
        .await?;
    if landed {
        Ok(())
    } else {
        Err(WeightsCliError::Refused(format!(
            "the row of {cluster:?} changed while this command ran (a ramp step, an override or another operator); \
             nothing was written: look at `weir weights list` and run it again"
        )))
    }
}

async fn ramp(args: &RampArgs) -> Result<String, WeightsCliError> {
    let cluster = &args.cluster_name;
    if args.cancel {
        let store = open(&args.store, cluster).await?;
        let Some(row) = store.get(cluster).await? else { return Err(unknown(store.as_ref(), cluster).await) };
        let Some(ramp) = row.plan.as_ref().and_then(Plan::running_ramp) else {
            return Err(WeightsCliError::Refused(format!("{cluster}: no ramp is running; nothing was written")));
        };
        let plan = Plan::Ramp(Ramp {
            state: RampState::Cancelled {
                reason: format!("cancelled by {}", actor(store.as_ref()).await),
                at_ms: now_ms(),
            },
            ..ramp.clone()
        });
        write(store.as_ref(), cluster, &row, None, Some(&plan), "ramp_cancel", args.reason.as_deref()).await?;
        return output(args.store.output, &plan, || {
            format!("{cluster}: ramp {}→{} cancelled; DesiredWeight stays {}\n", ramp.from, ramp.to, row.desired)
        });
    }
    // Everything is checked before the store is written.
    let bad =
        |what: &str, v: &str, e: String| WeightsCliError::Refused(format!("{what} {v:?}: {e}; nothing was written"));
    let to_raw = args.to.as_deref().unwrap_or_default();
    let to = parse_strict_weight(to_raw).map_err(|e| bad("--to", to_raw, e.to_string()))?;
    let step_raw = args.step.as_deref().unwrap_or_default();
    let step = parse_strict_weight(step_raw)
        .map_err(|e| e.to_string())
        .and_then(|s| if s == 0 { Err("a step of 0 never arrives".to_string()) } else { Ok(s) })
        .map_err(|e| bad("--step", step_raw, e))?;
    let every_raw = args.every.as_deref().unwrap_or_default();
    let every = crate::cli::parse_duration(every_raw).map_err(|e| bad("--every", every_raw, e.to_string()))?;
    let gate = match (&args.gate_url, &args.gate_query, args.gate_max) {
        (Some(url), Some(query), Some(max)) => Some(Gate {
            url: url.clone(),
            query: query.clone(),
            max,
            pass_on_no_data: args.gate_on_no_data == GateOnNoData::Pass,
        }),
        _ => None,
    };
    // A query the server rejects (or a gate that cannot be asked) fails now, before any step.
    if let Some(g) = &gate {
        let tls = GateTls::new(args.gate_ca_file.as_deref())
            .map_err(|e| WeightsCliError::Refused(format!("{e}; nothing was written")))?;
        if let Err(e) = query_gate(g, &tls).await {
            return Err(WeightsCliError::Refused(format!("the gate cannot be used: {e}; nothing was written")));
        }
    }
    let store = open(&args.store, cluster).await?;
    let Some(row) = store.get(cluster).await? else { return Err(unknown(store.as_ref(), cluster).await) };
    if let Some(running) = row.plan.as_ref().and_then(Plan::running_ramp) {
        return Err(WeightsCliError::Refused(format!(
            "{cluster}: a ramp is already running ({}); cancel it first with `weir weights ramp --cancel`",
            describe_plan(&Plan::Ramp(running.clone()), now_ms())
        )));
    }
    let from = row.desired.valid().ok_or_else(|| {
        WeightsCliError::Refused(format!("{cluster}: DesiredWeight is {}; set a valid weight first", row.desired))
    })?;
    if from == to {
        return Err(WeightsCliError::Refused(format!("{cluster}: DesiredWeight is already {to}; nothing to ramp")));
    }
    check_min_serving(store.as_ref(), cluster, Some(from), to, &args.safety).await?;
    let mut ramp = Ramp {
        from,
        to,
        step,
        every_ms: every.as_millis() as u64,
        gate,
        reason: args.reason.clone(),
        actor: actor(store.as_ref()).await,
        started_at_ms: now_ms(),
        state: RampState::Completed { at_ms: 0 },
    };
    ramp.state = RampState::Running { step: 0, steps: ramp.steps(), at: from, hold_until_ms: None };
    let plan = Plan::Ramp(ramp.clone());
    write(store.as_ref(), cluster, &row, None, Some(&plan), "ramp", args.reason.as_deref()).await?;
    output(args.store.output, &plan, || {
        format!(
            "{cluster}: ramp {from}→{to} by {step} every {} recorded ({} steps{}); the cluster's controller carries it \
             out\n",
            humantime::format_duration(every),
            ramp.steps(),
            ramp.gate.as_ref().map_or(String::new(), |g| format!(", gate {} <= {}", g.query, g.max))
        )
    })
}

#[derive(Serialize)]
struct ListedRow<'a> {
    #[serde(flatten)]
    row: &'a WeightRow,
    #[serde(rename = "Status")]
    status: String,
    /// Hosts that keep this cluster from acknowledging (as its controller last recorded them).
    #[serde(rename = "HeldHosts", skip_serializing_if = "<[String]>::is_empty")]
    held: &'a [String],
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
    #[serde(rename = "Plan", skip_serializing_if = "Option::is_none")]
    plan: Option<Plan>,
    #[serde(rename = "Notes")]
    notes: Vec<String>,
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
            history_table: args.history_table.clone(),
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

fn status(row: &WeightRow, now: i64) -> String {
    let sync = match (&row.desired, &row.current) {
        (StoredWeight::Invalid(_), _) => "invalid DesiredWeight: not applied",
        (d, c) if d == c => "in sync",
        _ => "pending",
    };
    match &row.plan {
        Some(plan) => format!("{sync}; {}", describe_plan(plan, now)),
        None => sync.to_string(),
    }
}

fn history_table(entries: &[HistoryEntry]) -> String {
    let mut out =
        String::from("TIME                      CLUSTER  FIELD          CHANGE      CAUSE       ACTOR / REASON\n");
    for e in entries {
        let change = format!("{} -> {}", e.before.as_deref().unwrap_or("?"), e.after);
        let why = match &e.reason {
            Some(r) => format!("{} / {r}", e.actor),
            None => e.actor.clone(),
        };
        out.push_str(&format!(
            "{:<25} {:<8} {:<14} {:<11} {:<11} {why}\n",
            e.time, e.cluster, e.field, change, e.cause
        ));
    }
    out
}

#[cfg(test)]
fn table(rows: &[WeightRow], now: i64) -> String {
    table_with_held(rows, now, &Default::default())
}

/// The status column names the hosts that hold a cluster's ack back.
fn held_of<'a>(held: &'a std::collections::BTreeMap<String, Vec<String>>, cluster: &str) -> &'a [String] {
    held.get(cluster).map(Vec::as_slice).unwrap_or_default()
}

fn table_with_held(rows: &[WeightRow], now: i64, held: &std::collections::BTreeMap<String, Vec<String>>) -> String {
    let header = ["CLUSTER", "DESIRED", "CURRENT", "STATUS"];
    let status_of = |r: &WeightRow| match held.get(&r.cluster).filter(|h| !h.is_empty()) {
        Some(hosts) if r.desired != r.current => format!("{}; ack blocked, held: {}", status(r, now), hosts.join(", ")),
        Some(hosts) => format!("{}; held: {}", status(r, now), hosts.join(", ")),
        None => status(r, now),
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
            WeightRow::new("eu-west", StoredWeight::Valid(0), StoredWeight::Valid(100)),
            WeightRow::new("us", StoredWeight::Invalid("abc".into()), StoredWeight::Valid(5)),
            WeightRow::new("ap", StoredWeight::Valid(5), StoredWeight::Valid(5)),
        ];
        let t = table(&rows, 0);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "CLUSTER  DESIRED          CURRENT  STATUS");
        assert_eq!(lines[1], "eu-west  0                100      pending");
        assert_eq!(lines[2], "us       \"abc\" (invalid)  5        invalid DesiredWeight: not applied");
        assert_eq!(lines[3], "ap       5                5        in sync");
    }
}
