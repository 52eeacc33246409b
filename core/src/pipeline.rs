//! The pure part of one DNS pass, the one function the controller's DNS loop and `weir plan` /
//! `weir explain` both call: snapshot + cluster weight + the strategy weights `weir xds` has in
//! force → the desired state and the records this cluster wants. Whatever differs between what the
//! controller publishes and what explain shows must come from a different input, never from a
//! different computation.

use crate::dns::record::{DesiredRecords, Ownership, RecordOptions};
use crate::ir::DesiredState;
use crate::model::Snapshot;
use crate::translate::{translate_with, LiveStrategyWeights, TranslateConfig};

/// Everything the pure part of a pass needs besides its inputs; all from flags.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub translate: TranslateConfig,
    pub owner: Ownership,
    pub records: RecordOptions,
    pub allow_all_zero: bool,
}

impl PipelineConfig {
    /// Snapshot + cluster weight + live strategy weights (keyed `namespace/name` of the TrafficInfra;
    /// one missing uses its `status.trafficWeights`, else `spec.trafficDefaults`, and the lenient
    /// drain rule) → desired state and the records this cluster wants.
    pub fn desired(
        &self,
        snapshot: &Snapshot,
        cluster_weight: u8,
        live: &LiveStrategyWeights,
    ) -> (DesiredState, DesiredRecords) {
        let state = translate_with(snapshot, cluster_weight, &self.translate, live);
        let records = DesiredRecords::build(&state, &self.owner, &self.records);
        (state, records)
    }
}
