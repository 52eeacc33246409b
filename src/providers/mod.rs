//! Providers turn the outside world into one typed, versioned [`Snapshot`]: `file` reads a directory
//! of manifests, `kubernetes` watches the API server. Both publish on a `watch` channel; the translator
//! never knows which one it is reading.

use std::sync::Arc;

use tokio::sync::watch;

use crate::model::Snapshot;

pub type SnapshotTx = watch::Sender<Arc<Snapshot>>;
pub type SnapshotRx = watch::Receiver<Arc<Snapshot>>;

pub mod file;
