//! Ramps and time-boxed overrides, carried out by the cluster's leader from the state in its weight
//! row (so that they survive restarts and leader changes).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::metrics::Labels;

/// The ramp executor's metrics.
#[derive(Clone, Default)]
pub struct RampMetrics {
    /// `weir_ramp_aborted_total{cluster}`: ramps stopped by a failed gate (and reverted).
    pub aborted: Family<Labels, Counter>,
    /// `weir_ramp_active{cluster}`: 1 while a ramp of this cluster is running.
    pub active: Family<Labels, Gauge>,
    /// `weir_ramp_target_weight{cluster}`: the `--to` of the running ramp.
    pub target: Family<Labels, Gauge>,
    /// `weir_override_active{cluster}`: 1 while a time-boxed override (`weir weights set --for`) runs.
    pub override_active: Family<Labels, Gauge>,
}

impl RampMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register("weir_ramp_aborted", "Ramps stopped by a failed gate and reverted", m.aborted.clone());
        registry.register("weir_ramp_active", "1 while a ramp of this cluster is running", m.active.clone());
        registry.register("weir_ramp_target_weight", "The target weight of the running ramp", m.target.clone());
        registry.register(
            "weir_override_active",
            "1 while a time-boxed override of this cluster's weight runs",
            m.override_active.clone(),
        );
        m
    }
}
