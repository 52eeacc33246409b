//! One truth across replicas: the weights and registered services set through the admin API live in
//! a shared store; every replica serves from it and a restart does not forget them.
//!
//! A [`StateStore`] only needs a consistent read and a compare-and-swap on the revision: SQLite and
//! memory here, a ConfigMap in [`super::state_kube`] (with `resourceVersion` as the condition). [`SharedState`] turns a store into a `watch` channel that
//! every part of the process reads, and polls the store so that writes by other replicas arrive.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::model::TrafficState;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store {path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("state store {path}: stored state is not valid JSON: {source}")]
    Corrupt { path: PathBuf, source: serde_json::Error },
    #[error("state store: {0}")]
    Task(String),
    #[error("state store {object}: {op} failed: {source}")]
    Kube { op: &'static str, object: String, source: kube::Error },
    #[error("state store {object}: stored state is not valid JSON: {source}")]
    CorruptObject { object: String, source: serde_json::Error },
    #[error("state store: gave up after {0} conflicting writes")]
    Contended(u32),
    #[error("xDS state {0}: no such file (the state file of weir xds --state)")]
    Missing(PathBuf),
}

#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// The current state (a consistent read), or `None` when none was ever written.
    async fn read(&self) -> Result<Option<TrafficState>, StateError>;
    /// Writes `next` only if the stored revision is still `expected` (`None`: nothing stored yet).
    /// Returns false on a conflict.
    async fn compare_and_swap(&self, expected: Option<u64>, next: &TrafficState) -> Result<bool, StateError>;
    /// For logs.
    fn describe(&self) -> String;
}

/// A store in memory: one process only, forgotten on restart.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<Option<TrafficState>>,
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn read(&self) -> Result<Option<TrafficState>, StateError> {
        Ok(self.state.lock().clone())
    }
    async fn compare_and_swap(&self, expected: Option<u64>, next: &TrafficState) -> Result<bool, StateError> {
        let mut guard = self.state.lock();
        if guard.as_ref().map(|s| s.revision) != expected {
            return Ok(false);
        }
        *guard = Some(next.clone());
        Ok(true)
    }
    fn describe(&self) -> String {
        "memory (not shared, lost on restart)".into()
    }
}

/// A SQLite file that several processes may share (WAL, busy timeout). One row per traffic
/// configuration name, holding the state as JSON and its revision.
pub struct SqliteStore {
    conn: Arc<Mutex<rusqlite::Connection>>,
    path: PathBuf,
    name: String,
}

impl SqliteStore {
    pub fn open(path: &Path, name: &str) -> Result<Self, StateError> {
        let err = |source| StateError::Sqlite { path: path.to_path_buf(), source };
        // The same opener (WAL, busy timeout, synchronous=NORMAL) as the weight store and the zone,
        // which share this file in `weir local`.
        let conn = crate::backends::sqlite::connect(path, true).map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS xds_state (
                name TEXT PRIMARY KEY NOT NULL,
                revision INTEGER NOT NULL,
                body TEXT NOT NULL
            )",
        )
        .map_err(err)?;
        Ok(Self { conn: Arc::new(Mutex::new(conn)), path: path.to_path_buf(), name: name.to_string() })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Connection, &str) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, StateError> {
        let conn = self.conn.clone();
        let name = self.name.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            f(&conn.lock(), &name).map_err(|source| StateError::Sqlite { path, source })
        })
        .await
        .map_err(|e| StateError::Task(e.to_string()))?
    }
}

#[async_trait]
impl StateStore for SqliteStore {
    async fn read(&self) -> Result<Option<TrafficState>, StateError> {
        use rusqlite::OptionalExtension;
        let body: Option<String> = self
            .blocking(|c, name| {
                c.query_row("SELECT body FROM xds_state WHERE name = ?1", [name], |r| r.get(0)).optional()
            })
            .await?;
        body.map(|b| serde_json::from_str(&b).map_err(|source| StateError::Corrupt { path: self.path.clone(), source }))
            .transpose()
    }

    async fn compare_and_swap(&self, expected: Option<u64>, next: &TrafficState) -> Result<bool, StateError> {
        let body =
            serde_json::to_string(next).map_err(|source| StateError::Corrupt { path: self.path.clone(), source })?;
        let revision = i64::try_from(next.revision).unwrap_or(i64::MAX);
        self.blocking(move |c, name| {
            let changed = match expected {
                None => c.execute(
                    "INSERT OR IGNORE INTO xds_state (name, revision, body) VALUES (?1, ?2, ?3)",
                    rusqlite::params![name, revision, body],
                )?,
                Some(old) => c.execute(
                    "UPDATE xds_state SET revision = ?2, body = ?3 WHERE name = ?1 AND revision = ?4",
                    rusqlite::params![name, revision, body, i64::try_from(old).unwrap_or(i64::MAX)],
                )?,
            };
            Ok(changed == 1)
        })
        .await
    }

    fn describe(&self) -> String {
        format!("sqlite {}", self.path.display())
    }
}

/// Every row of the SQLite state file `path`, keyed by configuration name (`namespace/name`), read
/// without writing anything: a file without the table (a weight store `weir xds` never used) has
/// none. For the readers that are not `weir xds`: the DNS controller, `weir plan`, `weir explain`
/// ([`super::live`]).
pub fn read_all_sqlite(path: &Path) -> Result<std::collections::BTreeMap<String, TrafficState>, StateError> {
    let err = |source| StateError::Sqlite { path: path.to_path_buf(), source };
    let conn = crate::backends::sqlite::connect(path, false).map_err(err)?;
    let has_table: bool = conn
        .query_row("SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'xds_state')", [], |r| {
            r.get(0)
        })
        .map_err(err)?;
    if !has_table {
        return Ok(Default::default());
    }
    let mut stmt = conn.prepare("SELECT name, body FROM xds_state").map_err(err)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .map_err(err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    rows.into_iter()
        .map(|(name, body)| {
            serde_json::from_str(&body)
                .map(|state| (name, state))
                .map_err(|source| StateError::Corrupt { path: path.to_path_buf(), source })
        })
        .collect()
}

/// The state every part of the process reads, kept in step with the store.
#[derive(Clone)]
pub struct SharedState {
    store: Arc<dyn StateStore>,
    tx: Arc<watch::Sender<TrafficState>>,
}

impl SharedState {
    /// Reads the store, writing `initial` first if it holds nothing yet.
    pub async fn open(store: Arc<dyn StateStore>, initial: TrafficState) -> Result<Self, StateError> {
        let current = match store.read().await? {
            Some(s) => s,
            None => {
                // Another replica may win this race; then its state is read back.
                store.compare_and_swap(None, &initial).await?;
                store.read().await?.unwrap_or(initial)
            }
        };
        Ok(Self { store, tx: Arc::new(watch::channel(current).0) })
    }

    pub fn get(&self) -> TrafficState {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<TrafficState> {
        self.tx.subscribe()
    }

    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// Read-modify-write with compare-and-swap, retried on conflicts. `f` sees the latest stored
    /// state and may refuse the change with `Err`, in which case nothing is written.
    pub async fn update<E>(
        &self,
        f: impl Fn(&TrafficState) -> Result<TrafficState, E>,
    ) -> Result<Result<TrafficState, E>, StateError> {
        const ATTEMPTS: u32 = 8;
        for _ in 0..ATTEMPTS {
            let stored = self.store.read().await?;
            let expected = stored.as_ref().map(|s| s.revision);
            let current = stored.unwrap_or_else(|| self.get());
            let mut next = match f(&current) {
                Ok(n) => n,
                Err(e) => return Ok(Err(e)),
            };
            next.revision = current.revision + 1;
            if self.store.compare_and_swap(expected, &next).await? {
                self.observe(next.clone());
                return Ok(Ok(next));
            }
        }
        Err(StateError::Contended(ATTEMPTS))
    }

    /// Reads the store once and publishes what changed (another replica's write).
    pub async fn refresh(&self) -> Result<(), StateError> {
        if let Some(s) = self.store.read().await? {
            self.observe(s);
        }
        Ok(())
    }

    fn observe(&self, s: TrafficState) {
        self.tx.send_if_modified(|cur| {
            // Revisions only grow; an older read racing a newer write must not win.
            if s.revision > cur.revision || (s.revision == cur.revision && *cur != s) {
                *cur = s;
                true
            } else {
                false
            }
        });
    }

    /// Polls the store every `interval` until `shutdown` flips, so that other replicas' writes are
    /// served promptly. Errors are logged and retried.
    pub async fn poll(
        self,
        interval: Duration,
        heartbeat: crate::telemetry::Heartbeat,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    heartbeat.beat();
                    if let Err(e) = self.refresh().await {
                        tracing::warn!(error = %e, "cannot read the shared xDS state; serving the last one read");
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::TrafficDefaults;

    fn initial() -> TrafficState {
        TrafficState::initial(&TrafficDefaults::default())
    }

    #[tokio::test]
    async fn sqlite_is_shared_between_handles_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let a = SharedState::open(Arc::new(SqliteStore::open(&path, "shop").unwrap()), initial()).await.unwrap();
        let b = SharedState::open(Arc::new(SqliteStore::open(&path, "shop").unwrap()), initial()).await.unwrap();
        assert_eq!(a.get().weights["blue"], 100);
        let written = a
            .update(|s| {
                let mut n = s.clone();
                n.weights.insert("green".into(), 50);
                Ok::<_, ()>(n)
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(written.revision, 1);
        b.refresh().await.unwrap();
        assert_eq!(b.get().weights["green"], 50, "the other replica sees the write");
        // A refused change writes nothing.
        let refused = b.update(|_| Err::<TrafficState, _>("no")).await.unwrap();
        assert_eq!(refused, Err("no"));
        drop((a, b));
        let c = SharedState::open(Arc::new(SqliteStore::open(&path, "shop").unwrap()), initial()).await.unwrap();
        assert_eq!(c.get().weights["green"], 50, "a restart does not forget");
        // Another configuration name in the same file starts from its defaults.
        let d = SharedState::open(Arc::new(SqliteStore::open(&path, "other").unwrap()), initial()).await.unwrap();
        assert_eq!(d.get().weights["green"], 0);
    }

    /// The xDS state opens its file as the weight store and the zone do (they share it in `weir local`).
    #[test]
    fn sqlite_state_uses_the_shared_opener() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.db");
        let pragmas = |c: &rusqlite::Connection| -> (String, i64, i64) {
            let q = |p: &str| format!("PRAGMA {p}");
            (
                c.query_row(&q("journal_mode"), [], |r| r.get(0)).unwrap(),
                c.query_row(&q("busy_timeout"), [], |r| r.get(0)).unwrap(),
                c.query_row(&q("synchronous"), [], |r| r.get(0)).unwrap(),
            )
        };
        let state = SqliteStore::open(&path, "shop").unwrap();
        let shared = crate::backends::sqlite::connect(&path, false).unwrap();
        assert_eq!(pragmas(&state.conn.lock()), pragmas(&shared));
        // WAL, 5 s busy timeout, synchronous=NORMAL (1).
        assert_eq!(pragmas(&shared), ("wal".to_string(), 5000, 1));
    }

    #[tokio::test]
    async fn compare_and_swap_refuses_a_stale_revision() {
        let store = MemoryStore::default();
        assert!(store.compare_and_swap(None, &initial()).await.unwrap());
        assert!(!store.compare_and_swap(None, &initial()).await.unwrap());
        let mut next = initial();
        next.revision = 1;
        assert!(!store.compare_and_swap(Some(7), &next).await.unwrap());
        assert!(store.compare_and_swap(Some(0), &next).await.unwrap());
    }
}
