//! The embedded weight store: one SQLite file that several weir processes (one per simulated cluster)
//! share. The embedded DNS zone lives in the same file (`dns::embedded`).
//!
//! The weight columns have no type affinity, so whatever an operator writes with the `sqlite3` CLI
//! (`'abc'`, `150`, `-1`, `2.5`, `NULL`) is stored as written and read back as
//! [`StoredWeight::Invalid`], never coerced and never a crash.
//!
//! rusqlite is blocking: every call runs on `spawn_blocking`, and the connection sits behind a
//! `parking_lot::Mutex` that is only taken inside the blocking closure (never across an `.await`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use super::{AckOutcome, DrainClaim, HistoryEntry, Plan, PlanWrite, StoreError, StoredWeight, WeightRow, WeightStore};

const STORE: &str = "sqlite";

/// How long a writer waits for another process's transaction before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens (creating if `create`) an SQLite file for sharing between processes: WAL journal, so that
/// readers never block the writer, and a busy timeout, so that concurrent writers wait instead of
/// failing with SQLITE_BUSY. Used by the weight store and the embedded DNS zone alike.
pub fn connect(path: &Path, create: bool) -> rusqlite::Result<Connection> {
    // No URI flag: a path is a path, even one that starts with "file:".
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // journal_mode returns the resulting mode as a row, hence the query rather than an update.
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), mode, "SQLite did not switch to WAL; concurrent processes may wait");
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS weights (
    cluster_name TEXT PRIMARY KEY NOT NULL,
    desired_weight,
    current_weight
);
CREATE TABLE IF NOT EXISTS weight_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    cluster_name TEXT NOT NULL,
    field TEXT NOT NULL,
    before TEXT,
    after TEXT NOT NULL,
    actor TEXT NOT NULL,
    cause TEXT NOT NULL,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS weight_history_by_time ON weight_history (at_ms);
CREATE TABLE IF NOT EXISTS held_hosts (
    cluster_name TEXT PRIMARY KEY NOT NULL,
    hosts TEXT NOT NULL
)";

/// Adds the `plan` and `drain_until` columns to a file made before they existed.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    for (column, ty) in [("plan", "TEXT"), ("drain_until", "INTEGER")] {
        if conn.prepare(&format!("SELECT {column} FROM weights LIMIT 0")).is_err() {
            conn.execute_batch(&format!("ALTER TABLE weights ADD COLUMN {column} {ty}"))?;
        }
    }
    Ok(())
}

/// The `sqlite` weight store.
#[derive(Clone)]
pub struct SqliteStore {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish()
    }
}

impl SqliteStore {
    /// Opens the file, creating it and the table when absent.
    pub async fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        Self::open_inner(path.into(), true).await
    }

    /// Opens a file that must already exist (`weir weights` must not create a stray database because
    /// of a typo in `--db`).
    pub async fn open_existing(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        Self::open_inner(path.into(), false).await
    }

    async fn open_inner(path: PathBuf, create: bool) -> Result<Self, StoreError> {
        let p = path.clone();
        let conn = tokio::task::spawn_blocking(move || -> rusqlite::Result<Connection> {
            let conn = connect(&p, create)?;
            conn.execute_batch(SCHEMA)?;
            migrate(&conn)?;
            Ok(conn)
        })
        .await
        .map_err(|e| call_err("open", format!("{}: {e}", path.display())))?
        .map_err(|e| call_err("open", format!("{}: {e}", path.display())))?;
        Ok(Self { path, conn: Arc::new(Mutex::new(conn)) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection in a blocking thread.
    async fn blocking<T, F>(&self, operation: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock();
            f(&mut guard)
        })
        .await
        .map_err(|e| call_err(operation, format!("blocking task failed: {e}")))?
    }
}

fn call_err(operation: &'static str, message: String) -> StoreError {
    StoreError::Call { store: STORE, operation, message }
}

fn sql(operation: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| call_err(operation, e.to_string())
}

/// Reads a weight column as it is, whatever type the operator stored.
fn stored(value: ValueRef<'_>) -> StoredWeight {
    match value {
        ValueRef::Integer(n) => StoredWeight::from_number(n.into()),
        // 2.5 and 50.0 alike: a weight is an integer, and weir does not guess what a real meant.
        ValueRef::Real(f) => StoredWeight::Invalid(format!("{f:?}")),
        ValueRef::Text(t) => StoredWeight::from_text(&String::from_utf8_lossy(t)),
        ValueRef::Null => StoredWeight::Invalid("NULL".into()),
        ValueRef::Blob(b) => StoredWeight::Invalid(format!("<blob of {} bytes>", b.len())),
    }
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<WeightRow> {
    let mut row = WeightRow::new(r.get::<_, String>(0)?, stored(r.get_ref(1)?), stored(r.get_ref(2)?));
    row.plan = match r.get_ref(3)? {
        ValueRef::Text(t) => match Plan::from_json(&String::from_utf8_lossy(t)) {
            Ok(plan) => Some(plan),
            Err(e) => {
                tracing::warn!(cluster = %row.cluster, error = %e, "ignoring the plan of this row");
                None
            }
        },
        _ => None,
    };
    row.drain_until_ms = match r.get_ref(4)? {
        ValueRef::Integer(ms) => Some(ms),
        _ => None,
    };
    Ok(row)
}

fn read_row(conn: &Connection, cluster: &str) -> rusqlite::Result<Option<WeightRow>> {
    conn.query_row(
        "SELECT cluster_name, desired_weight, current_weight, plan, drain_until FROM weights WHERE cluster_name = ?1",
        [cluster],
        row,
    )
    .optional()
}

fn insert_history(conn: &Connection, e: &HistoryEntry) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO weight_history (at_ms, cluster_name, field, before, after, actor, cause, reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![e.at_ms, e.cluster, e.field, e.before, e.after, e.actor, e.cause, e.reason],
    )?;
    Ok(())
}

fn read_all(conn: &Connection) -> rusqlite::Result<Vec<WeightRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT cluster_name, desired_weight, current_weight, plan, drain_until FROM weights ORDER BY cluster_name",
    )?;
    let rows = stmt.query_map([], row)?.collect();
    rows
}

/// How often `PRAGMA data_version` is checked for a commit by another connection.
pub const COMMIT_CHECK: Duration = Duration::from_millis(20);

/// Wakes `wake` after every commit another connection (another process, or this process's store or
/// zone) makes to the file: `PRAGMA data_version` on a connection of its own, a read of the shared
/// WAL index, no page read. Runs on a blocking thread until `shutdown` flips.
fn watch_commits(
    path: &Path,
    cluster: &str,
    wake: &tokio::sync::Notify,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) {
    let conn = match connect(path, false) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot watch the weight file for commits; polling only");
            return;
        }
    };
    let version = |c: &Connection| c.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0));
    let mut last = version(&conn).ok();
    tracing::debug!(cluster, "watching the weight file for commits");
    while !*shutdown.borrow() {
        std::thread::sleep(COMMIT_CHECK);
        match version(&conn) {
            Ok(v) if Some(v) != last => {
                last = Some(v);
                wake.notify_one();
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "watching the weight file for commits failed; polling only");
                return;
            }
        }
    }
}

#[async_trait::async_trait]
impl WeightStore for SqliteStore {
    fn name(&self) -> &'static str {
        STORE
    }

    async fn list(&self) -> Result<Vec<WeightRow>, StoreError> {
        self.blocking("list", |conn| read_all(conn).map_err(sql("list"))).await
    }

    async fn get(&self, cluster: &str) -> Result<Option<WeightRow>, StoreError> {
        let cluster = cluster.to_string();
        self.blocking("get", move |conn| read_row(conn, &cluster).map_err(sql("get"))).await
    }

    async fn ensure(&self, cluster: &str, initial: u8) -> Result<WeightRow, StoreError> {
        let cluster = cluster.to_string();
        self.blocking("ensure", move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql("ensure"))?;
            tx.execute(
                "INSERT INTO weights (cluster_name, desired_weight, current_weight) VALUES (?1, ?2, ?2)
                 ON CONFLICT (cluster_name) DO NOTHING",
                params![cluster, initial],
            )
            .map_err(sql("ensure"))?;
            let row = read_row(&tx, &cluster).map_err(sql("ensure"))?;
            tx.commit().map_err(sql("ensure"))?;
            row.ok_or_else(|| call_err("ensure", format!("row of {cluster:?} vanished right after insert")))
        })
        .await
    }

    async fn ack(&self, cluster: &str, applied: u8) -> Result<AckOutcome, StoreError> {
        let cluster = cluster.to_string();
        self.blocking("ack", move |conn| {
            // IMMEDIATE takes the write lock first, so no other process can change DesiredWeight
            // between the check and the update.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql("ack"))?;
            let Some(row) = read_row(&tx, &cluster).map_err(sql("ack"))? else {
                return Err(StoreError::NotFound(cluster));
            };
            if row.desired != StoredWeight::Valid(applied) {
                return Ok(AckOutcome::DesiredChanged);
            }
            tx.execute(
                "UPDATE weights SET current_weight = ?2, drain_until = NULL WHERE cluster_name = ?1",
                params![cluster, applied],
            )
            .map_err(sql("ack"))?;
            if row.current != StoredWeight::Valid(applied) {
                let entry = HistoryEntry::new(
                    &cluster,
                    "CurrentWeight",
                    Some(row.current.to_string()),
                    applied.to_string(),
                    &super::controller_actor(None, &cluster),
                    "ack",
                );
                insert_history(&tx, &entry).map_err(sql("ack"))?;
            }
            tx.commit().map_err(sql("ack"))?;
            Ok(AckOutcome::Acknowledged)
        })
        .await
    }

    /// One IMMEDIATE transaction: the write lock is taken before the table is read, so of two
    /// processes claiming at once the second reads the first's claim.
    async fn claim_drain(&self, cluster: &str, min_serving: usize, ttl_ms: i64) -> Result<DrainClaim, StoreError> {
        let cluster = cluster.to_string();
        self.blocking("claim_drain", move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql("claim_drain"))?;
            let rows = read_all(&tx).map_err(sql("claim_drain"))?;
            let Some(own) = rows.iter().find(|r| r.cluster == cluster) else {
                return Err(StoreError::NotFound(cluster));
            };
            if own.desired != StoredWeight::Valid(0) {
                return Ok(DrainClaim::Refused(format!("DesiredWeight of {cluster:?} is no longer 0")));
            }
            let now = super::now_ms();
            if let Err(why) = super::drain_claim_check(&rows, &cluster, min_serving, now) {
                return Ok(DrainClaim::Refused(why));
            }
            tx.execute("UPDATE weights SET drain_until = ?2 WHERE cluster_name = ?1", params![cluster, now + ttl_ms])
                .map_err(sql("claim_drain"))?;
            tx.commit().map_err(sql("claim_drain"))?;
            Ok(DrainClaim::Claimed)
        })
        .await
    }

    async fn note_held(&self, cluster: &str, hosts: &[String]) -> Result<(), StoreError> {
        let (cluster, hosts) = (cluster.to_string(), hosts.join(","));
        self.blocking("note_held", move |conn| {
            if hosts.is_empty() {
                conn.execute("DELETE FROM held_hosts WHERE cluster_name = ?1", params![cluster])
            } else {
                conn.execute(
                    "INSERT OR REPLACE INTO held_hosts (cluster_name, hosts) VALUES (?1, ?2)",
                    params![cluster, hosts],
                )
            }
            .map(|_| ())
            .map_err(sql("note_held"))
        })
        .await
    }

    async fn held(&self) -> Result<std::collections::BTreeMap<String, Vec<String>>, StoreError> {
        self.blocking("held", |conn| {
            let mut stmt = conn.prepare_cached("SELECT cluster_name, hosts FROM held_hosts").map_err(sql("held"))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(sql("held"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql("held"))?;
            Ok(rows.into_iter().map(|(c, h)| (c, h.split(',').map(str::to_string).collect())).collect())
        })
        .await
    }

    async fn set_desired(&self, cluster: &str, desired: u8) -> Result<Option<StoredWeight>, StoreError> {
        let cluster = cluster.to_string();
        self.blocking("set_desired", move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql("set_desired"))?;
            let Some(row) = read_row(&tx, &cluster).map_err(sql("set_desired"))? else {
                return Err(StoreError::NotFound(cluster));
            };
            tx.execute("UPDATE weights SET desired_weight = ?2 WHERE cluster_name = ?1", params![cluster, desired])
                .map_err(sql("set_desired"))?;
            tx.commit().map_err(sql("set_desired"))?;
            Ok(Some(row.desired))
        })
        .await
    }

    async fn write_plan(&self, cluster: &str, write: PlanWrite<'_>) -> Result<bool, StoreError> {
        let cluster = cluster.to_string();
        let expect_plan = write.expect_plan.map(Plan::to_json);
        let plan = write.plan.map(Plan::to_json);
        let (expect_desired, desired) = (write.expect_desired, write.desired);
        let (actor, cause, reason) =
            (write.actor.to_string(), write.cause.to_string(), write.reason.map(str::to_string));
        self.blocking("write_plan", move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql("write_plan"))?;
            let Some(row) = read_row(&tx, &cluster).map_err(sql("write_plan"))? else {
                return Err(StoreError::NotFound(cluster));
            };
            if expect_desired.is_some_and(|d| row.desired != StoredWeight::Valid(d))
                || row.plan.as_ref().map(Plan::to_json) != expect_plan
            {
                return Ok(false);
            }
            let new_desired = desired.map_or_else(|| row.desired.clone(), StoredWeight::Valid);
            match desired {
                Some(d) => tx.execute(
                    "UPDATE weights SET desired_weight = ?2, plan = ?3 WHERE cluster_name = ?1",
                    params![cluster, d, plan],
                ),
                None => tx.execute("UPDATE weights SET plan = ?2 WHERE cluster_name = ?1", params![cluster, plan]),
            }
            .map_err(sql("write_plan"))?;
            if new_desired != row.desired {
                let entry = HistoryEntry::new(
                    &cluster,
                    "DesiredWeight",
                    Some(row.desired.to_string()),
                    new_desired.to_string(),
                    &actor,
                    &cause,
                )
                .with_reason(reason.as_deref());
                insert_history(&tx, &entry).map_err(sql("write_plan"))?;
            }
            tx.commit().map_err(sql("write_plan"))?;
            Ok(true)
        })
        .await
    }

    fn spawn_change_hints(
        &self,
        cluster: &str,
        wake: Arc<tokio::sync::Notify>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let path = self.path.clone();
        let cluster = cluster.to_string();
        Some(tokio::task::spawn_blocking(move || watch_commits(&path, &cluster, &wake, &shutdown)))
    }

    async fn append_history(&self, entry: &HistoryEntry) -> Result<(), StoreError> {
        let entry = entry.clone();
        self.blocking("append_history", move |conn| insert_history(conn, &entry).map_err(sql("append_history"))).await
    }

    async fn history(&self, cluster: Option<&str>, since_ms: Option<i64>) -> Result<Vec<HistoryEntry>, StoreError> {
        let cluster = cluster.map(str::to_string);
        self.blocking("history", move |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT at_ms, cluster_name, field, before, after, actor, cause, reason FROM weight_history
                     WHERE (?1 IS NULL OR cluster_name = ?1) AND at_ms >= ?2 ORDER BY at_ms, id",
                )
                .map_err(sql("history"))?;
            let rows = stmt
                .query_map(params![cluster, since_ms.unwrap_or(0)], |r| {
                    let at_ms: i64 = r.get(0)?;
                    Ok(HistoryEntry {
                        at_ms,
                        time: super::rfc3339_ms(at_ms),
                        cluster: r.get(1)?,
                        field: r.get(2)?,
                        before: r.get(3)?,
                        after: r.get(4)?,
                        actor: r.get(5)?,
                        cause: r.get(6)?,
                        reason: r.get(7)?,
                    })
                })
                .map_err(sql("history"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql("history"));
            rows
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store(dir: &tempfile::TempDir) -> SqliteStore {
        SqliteStore::open(dir.path().join("weir.db")).await.unwrap()
    }

    /// Writes a raw SQL value the way an operator with the sqlite3 CLI would.
    fn raw_update(path: &Path, sql_value: &str) {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(&format!("UPDATE weights SET desired_weight = {sql_value} WHERE cluster_name = 'eu'"))
            .unwrap();
    }

    #[tokio::test]
    async fn ensure_creates_once_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir).await;
        let row = s.ensure("eu", 30).await.unwrap();
        assert_eq!(row.desired, StoredWeight::Valid(30));
        assert_eq!(row.current, StoredWeight::Valid(30));
        assert_eq!(s.set_desired("eu", 70).await.unwrap(), Some(StoredWeight::Valid(30)));
        let row = s.ensure("eu", 0).await.unwrap();
        assert_eq!(row.desired, StoredWeight::Valid(70), "ensure must not overwrite an operator's row");
        assert_eq!(row.current, StoredWeight::Valid(30));
        // Garbage is not "absent" either.
        raw_update(s.path(), "'abc'");
        let row = s.ensure("eu", 0).await.unwrap();
        assert_eq!(row.desired, StoredWeight::Invalid("abc".into()));
    }

    #[tokio::test]
    async fn invalid_values_of_every_type_are_read_as_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir).await;
        s.ensure("eu", 50).await.unwrap();
        let cases = [
            ("'abc'", StoredWeight::Invalid("abc".into())),
            ("''", StoredWeight::Invalid("".into())),
            ("150", StoredWeight::Invalid("150".into())),
            ("-1", StoredWeight::Invalid("-1".into())),
            ("2.5", StoredWeight::Invalid("2.5".into())),
            ("50.0", StoredWeight::Invalid("50.0".into())),
            ("NULL", StoredWeight::Invalid("NULL".into())),
            ("X'00ff'", StoredWeight::Invalid("<blob of 2 bytes>".into())),
            ("'1e2'", StoredWeight::Invalid("1e2".into())),
            // No type affinity: text stays text, and a clean number in text is a number.
            ("'42'", StoredWeight::Valid(42)),
            ("0", StoredWeight::Valid(0)),
            ("100", StoredWeight::Valid(100)),
        ];
        for (sql_value, want) in cases {
            raw_update(s.path(), sql_value);
            let row = s.get("eu").await.unwrap().unwrap();
            assert_eq!(row.desired, want, "after SET desired_weight = {sql_value}");
            assert_eq!(row.current, StoredWeight::Valid(50));
            let listed = s.list().await.unwrap();
            assert_eq!(listed[0].desired, want);
        }
    }

    #[tokio::test]
    async fn ack_is_conditional_on_desired() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir).await;
        s.ensure("eu", 100).await.unwrap();
        s.set_desired("eu", 40).await.unwrap();
        // The controller applied 40, but an operator moved it to 10 meanwhile.
        s.set_desired("eu", 10).await.unwrap();
        assert_eq!(s.ack("eu", 40).await.unwrap(), AckOutcome::DesiredChanged);
        assert_eq!(s.get("eu").await.unwrap().unwrap().current, StoredWeight::Valid(100));
        assert_eq!(s.ack("eu", 10).await.unwrap(), AckOutcome::Acknowledged);
        let row = s.get("eu").await.unwrap().unwrap();
        assert_eq!((row.desired, row.current), (StoredWeight::Valid(10), StoredWeight::Valid(10)));
        // Garbage desired: never acknowledged, CurrentWeight untouched.
        raw_update(s.path(), "'abc'");
        assert_eq!(s.ack("eu", 10).await.unwrap(), AckOutcome::DesiredChanged);
        assert_eq!(s.get("eu").await.unwrap().unwrap().current, StoredWeight::Valid(10));
        assert!(matches!(s.ack("nope", 10).await, Err(StoreError::NotFound(c)) if c == "nope"));
    }

    #[tokio::test]
    async fn set_desired_requires_the_row_and_returns_what_it_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir).await;
        assert!(matches!(s.set_desired("eu", 5).await, Err(StoreError::NotFound(c)) if c == "eu"));
        assert!(s.list().await.unwrap().is_empty(), "a failed set must not create a row");
        s.ensure("eu", 0).await.unwrap();
        raw_update(s.path(), "150");
        assert_eq!(s.set_desired("eu", 5).await.unwrap(), Some(StoredWeight::Invalid("150".into())));
        assert_eq!(s.get("eu").await.unwrap().unwrap().desired, StoredWeight::Valid(5));
        assert_eq!(s.get("us").await.unwrap(), None);
    }

    /// Two processes asking to drain at once: exactly one claim lands per round (IMMEDIATE
    /// serialises them), an ack removes the claim, an expired claim no longer blocks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drain_claims_are_serialised_between_processes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (store(&dir).await, store(&dir).await);
        for round in 0..20 {
            for (s, c) in [(&a, "eu"), (&b, "us")] {
                s.ensure(c, 50).await.unwrap();
                s.set_desired(c, 50).await.unwrap();
                s.ack(c, 50).await.unwrap(); // removes any claim
                s.set_desired(c, 0).await.unwrap();
            }
            let (x, y) = tokio::join!(a.claim_drain("eu", 0, 30_000), b.claim_drain("us", 0, 30_000));
            let (x, y) = (x.unwrap(), y.unwrap());
            let loser = match (&x, &y) {
                (DrainClaim::Claimed, DrainClaim::Refused(why)) => ("us", why),
                (DrainClaim::Refused(why), DrainClaim::Claimed) => ("eu", why),
                other => panic!("round {round}: exactly one claim must land: {other:?}"),
            };
            assert!(loser.1.contains("draining at the same time"), "{}", loser.1);
            assert_eq!(a.get(loser.0).await.unwrap().unwrap().drain_until_ms, None, "the loser wrote nothing");
        }
        // The winner acknowledges 0: its claim goes, and the other may claim (its all-zero guard then
        // reads the winner's records at 0 and holds that second drain).
        let rows = a.list().await.unwrap();
        let winner = rows.iter().find(|r| r.drain_until_ms.is_some()).unwrap().cluster.clone();
        let other = if winner == "eu" { "us" } else { "eu" };
        assert_eq!(a.ack(&winner, 0).await.unwrap(), AckOutcome::Acknowledged);
        assert_eq!(a.get(&winner).await.unwrap().unwrap().drain_until_ms, None);
        assert_eq!(b.claim_drain(other, 0, 30_000).await.unwrap(), DrainClaim::Claimed);
        // While `other` drains, the first may not start another drain.
        a.set_desired(&winner, 50).await.unwrap();
        a.ack(&winner, 50).await.unwrap();
        a.set_desired(&winner, 0).await.unwrap();
        assert!(matches!(a.claim_drain(&winner, 0, 30_000).await.unwrap(), DrainClaim::Refused(_)));
        // An expired claim (its holder died) no longer blocks.
        assert_eq!(b.claim_drain(other, 0, -1).await.unwrap(), DrainClaim::Claimed);
        assert_eq!(a.claim_drain(&winner, 0, 30_000).await.unwrap(), DrainClaim::Claimed);
        // A cluster no longer asked to go to 0 gets no claim.
        b.set_desired(other, 40).await.unwrap();
        assert!(matches!(b.claim_drain(other, 0, 30_000).await.unwrap(), DrainClaim::Refused(_)));
    }

    /// Two stores on one file are two processes: each sees the other's writes, and concurrent
    /// writers wait for each other instead of failing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_connections_share_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = store(&dir).await;
        let b = store(&dir).await;
        a.ensure("eu", 100).await.unwrap();
        b.ensure("us", 0).await.unwrap();
        let names: Vec<_> = a.list().await.unwrap().into_iter().map(|r| r.cluster).collect();
        assert_eq!(names, ["eu", "us"]);
        b.set_desired("eu", 25).await.unwrap();
        assert_eq!(a.get("eu").await.unwrap().unwrap().desired, StoredWeight::Valid(25));
        assert_eq!(a.ack("eu", 25).await.unwrap(), AckOutcome::Acknowledged);
        assert_eq!(b.get("eu").await.unwrap().unwrap().current, StoredWeight::Valid(25));

        let mode: String = a.conn.lock().query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");

        // Interleaved writers on both connections: every write lands.
        let mut tasks = Vec::new();
        for i in 0..40u8 {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                let cluster = format!("c{i:02}");
                s.ensure(&cluster, i).await.unwrap();
                s.set_desired(&cluster, 100 - i).await.unwrap();
                assert_eq!(s.ack(&cluster, 100 - i).await.unwrap(), AckOutcome::Acknowledged);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let rows = b.list().await.unwrap();
        assert_eq!(rows.len(), 42);
        for r in rows.iter().filter(|r| r.cluster.starts_with('c')) {
            let i: u8 = r.cluster[1..].parse().unwrap();
            assert_eq!(
                (r.desired.clone(), r.current.clone()),
                (StoredWeight::Valid(100 - i), StoredWeight::Valid(100 - i))
            );
        }
    }

    #[tokio::test]
    async fn open_existing_does_not_create_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("typo.db");
        assert!(SqliteStore::open_existing(&path).await.is_err());
        assert!(!path.exists());
    }
}
