//! The strategy weights `weir xds` has in force (DESIGN §2: xDS state → live strategy weights `S`),
//! read by the DNS controller every pass and by `weir plan` / `weir explain` through the same
//! [`LiveWeights`] and the same source rule ([`crate::app::factories::open_live_weights`]), so that
//! both translate with the same weights and apply the same drain rule: with live weights, a host
//! linked to a TrafficInfra is drained when no strategy with `S_k > 0` has a ready endpoint.
//!
//! Sources: the SQLite file of `weir xds --state` (also the `--db` of `weir local`, whose xDS half
//! keeps its state there), or, in a cluster, each TrafficInfra's `{name}-xds-state` ConfigMap. A
//! TrafficInfra with no stored state keeps its `status.trafficWeights`, else its
//! `spec.trafficDefaults`, and the lenient rule (drained only when no strategy at all has a ready
//! endpoint).

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use kube::ResourceExt;

use super::state::{read_all_sqlite, StateError, StateStore};
use super::state_kube::KubeConfigMapStore;
use crate::model::Snapshot;
use crate::translate::LiveStrategyWeights;

#[async_trait]
pub trait LiveWeights: Send + Sync {
    /// The stored state of every TrafficInfra of `snapshot` that has one, keyed `namespace/name`.
    async fn read(&self, snapshot: &Snapshot) -> Result<LiveStrategyWeights, StateError>;
    /// For logs.
    fn describe(&self) -> String;
}

/// No xDS state: every TrafficInfra at its status or defaults.
pub struct NoLiveWeights;

#[async_trait]
impl LiveWeights for NoLiveWeights {
    async fn read(&self, _snapshot: &Snapshot) -> Result<LiveStrategyWeights, StateError> {
        Ok(LiveStrategyWeights::new())
    }
    fn describe(&self) -> String {
        "none (status.trafficWeights, else spec.trafficDefaults)".into()
    }
}

/// The SQLite state file of `weir xds --state` (one row per TrafficInfra, named `namespace/name`),
/// read without writing: a file without the table has no rows, and none is created.
pub struct SqliteLiveWeights {
    path: PathBuf,
}

impl SqliteLiveWeights {
    /// The file must exist: a mistyped path would otherwise read as "no live weights" forever.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        if !path.is_file() {
            return Err(StateError::Missing(path.to_path_buf()));
        }
        Ok(Self { path: path.to_path_buf() })
    }
}

/// The key of a TrafficInfra in [`LiveStrategyWeights`] and the row name of the SQLite state.
fn key(ti: &crate::crd::TrafficInfra) -> String {
    format!("{}/{}", ti.namespace().unwrap_or_default(), ti.name_any())
}

#[async_trait]
impl LiveWeights for SqliteLiveWeights {
    async fn read(&self, snapshot: &Snapshot) -> Result<LiveStrategyWeights, StateError> {
        if snapshot.traffic_infras.is_empty() {
            return Ok(LiveStrategyWeights::new());
        }
        let path = self.path.clone();
        let mut rows = tokio::task::spawn_blocking(move || read_all_sqlite(&path))
            .await
            .map_err(|e| StateError::Task(e.to_string()))??;
        Ok(snapshot
            .traffic_infras
            .iter()
            .filter_map(|ti| {
                let key = key(ti);
                rows.remove(&key).map(|state| (key, state))
            })
            .collect())
    }
    fn describe(&self) -> String {
        format!("sqlite {}", self.path.display())
    }
}

/// Each TrafficInfra's `{name}-xds-state` ConfigMap in its namespace, where `weir xds` replicas
/// keep their state (one GET per TrafficInfra and read).
pub struct ConfigMapLiveWeights {
    client: kube::Client,
}

impl ConfigMapLiveWeights {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

#[async_trait]
impl LiveWeights for ConfigMapLiveWeights {
    async fn read(&self, snapshot: &Snapshot) -> Result<LiveStrategyWeights, StateError> {
        let mut live = LiveStrategyWeights::new();
        for ti in &snapshot.traffic_infras {
            let (namespace, name) = (ti.namespace().unwrap_or_default(), ti.name_any());
            if let Some(state) = KubeConfigMapStore::new(self.client.clone(), &namespace, &name).read().await? {
                live.insert(key(ti), state);
            }
        }
        Ok(live)
    }
    fn describe(&self) -> String {
        "each TrafficInfra's {name}-xds-state ConfigMap".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::file::{parse_manifests, snapshot_of};
    use crate::xds::model::TrafficState;
    use crate::xds::state::SqliteStore;

    #[tokio::test]
    async fn sqlite_rows_of_the_snapshots_traffic_infras_and_a_missing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("xds.db");
        assert!(matches!(SqliteLiveWeights::open(&path), Err(StateError::Missing(_))));
        let state = TrafficState { revision: 1, weights: [("green".to_string(), 100)].into(), ..Default::default() };
        assert!(SqliteStore::open(&path, "shop/shop").unwrap().compare_and_swap(None, &state).await.unwrap());
        let gone = TrafficState { revision: 1, ..Default::default() };
        assert!(SqliteStore::open(&path, "shop/gone").unwrap().compare_and_swap(None, &gone).await.unwrap());
        let text = "apiVersion: weir.dev/v1alpha1\nkind: TrafficInfra\nmetadata: {name: shop, namespace: shop}\n---\n\
                    apiVersion: weir.dev/v1alpha1\nkind: TrafficInfra\nmetadata: {name: other, namespace: shop}\n";
        let snapshot = snapshot_of(&parse_manifests(text).unwrap(), 1);
        let live = SqliteLiveWeights::open(&path).unwrap().read(&snapshot).await.unwrap();
        assert_eq!(live.into_iter().collect::<Vec<_>>(), vec![("shop/shop".to_string(), state)]);
        // A weight store file that `weir xds` never wrote to: no rows, and no table created.
        let weights = dir.path().join("weights.db");
        crate::backends::sqlite::SqliteStore::open(weights.clone()).await.unwrap();
        assert!(SqliteLiveWeights::open(&weights).unwrap().read(&snapshot).await.unwrap().is_empty());
        let conn = crate::backends::sqlite::connect(&weights, false).unwrap();
        let tables: i64 =
            conn.query_row("SELECT COUNT(*) FROM sqlite_master WHERE name = 'xds_state'", [], |r| r.get(0)).unwrap();
        assert_eq!(tables, 0);
    }
}
