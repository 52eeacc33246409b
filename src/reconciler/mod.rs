//! The loops that do I/O around the pure core: the weight loop polls the store and publishes this
//! cluster's weight; the DNS loop turns snapshot + weight into records, plans and applies, then
//! acknowledges the weight. They talk through `watch` channels (one writer, many readers).

pub mod dns;
pub mod events;
pub mod infra;
pub mod leader;
pub mod metrics;
pub mod ramp;
pub mod weight;

pub use weir_core::explain;

use crate::ir::Refusal;

/// The pure part of a pass (in the core): the DNS loop and `weir plan` / `weir explain` call its
/// [`PipelineConfig::desired`] on the same inputs.
pub use weir_core::pipeline::PipelineConfig;

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
