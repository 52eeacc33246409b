//! The loops that do I/O around the pure core: the weight loop polls the store and publishes this
//! cluster's weight; the DNS loop turns snapshot + weight into records, plans and applies, then
//! acknowledges the weight. They talk through `watch` channels (one writer, many readers).

pub mod dns;
pub mod events;
pub mod infra;
pub mod leader;
pub mod metrics;
pub mod weight;

pub use weir_core::explain;

use crate::dns::record::{DesiredRecords, Ownership, RecordOptions};
use crate::ir::{DesiredState, Refusal};
use crate::model::Snapshot;
use crate::translate::{translate, TranslateConfig};

/// Everything the pure part of a pass needs besides its inputs; all from flags.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub translate: TranslateConfig,
    pub owner: Ownership,
    pub records: RecordOptions,
    pub allow_all_zero: bool,
}

impl PipelineConfig {
    /// Snapshot + cluster weight → desired state and the records this cluster wants. Pure.
    pub fn desired(&self, snapshot: &Snapshot, cluster_weight: u8) -> (DesiredState, DesiredRecords) {
        let state = translate(snapshot, cluster_weight, &self.translate);
        let records = DesiredRecords::build(&state, &self.owner, &self.records);
        (state, records)
    }
}

/// Where refused inputs go besides the log and `weir_invalid_input_total` (the Kubernetes provider
/// turns them into Events). Called once per distinct refusal occurrence, not on every pass.
pub trait RefusalSink: Send + Sync {
    fn refused(&self, refusal: &Refusal);
}

/// A sink that does nothing more than the loop's own log line and metric.
pub struct NoRefusalSink;

impl RefusalSink for NoRefusalSink {
    fn refused(&self, _refusal: &Refusal) {}
}
