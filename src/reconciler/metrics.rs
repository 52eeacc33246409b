//! Metrics of the loops. Each loop's metrics register themselves; names are the exposed names
//! (prometheus-client adds `_total` to counters only).

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub type Labels = Vec<(String, String)>;

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The weight loop's metrics.
#[derive(Clone, Default)]
pub struct WeightMetrics {
    /// `cluster_traffic_controller_ingress_weight_desired{cluster}`, the old controller's name.
    pub desired: Family<Labels, Gauge>,
    /// `cluster_traffic_controller_ingress_weight_current{cluster}`.
    pub current: Family<Labels, Gauge>,
    /// `weir_weight_drift_seconds{cluster}`: 0 when desired = current, else how long they have differed.
    pub drift: Family<Labels, Gauge<f64, AtomicU64>>,
    /// `weir_weight_store_errors_total{operation,error}`.
    pub store_errors: Family<Labels, Counter>,
    /// `weir_weight_row_invalid{cluster}`: 1 while this cluster's DesiredWeight is not a weight (a
    /// level, unlike the counter `weir_invalid_input_total{kind="weight"}`, so that an alert lasts as
    /// long as the bad row does).
    pub row_invalid: Family<Labels, Gauge>,
    /// `weir_weight_refused{cluster,rule}`: 1 while a valid DesiredWeight is refused by a safety rule
    /// (`min_serving_clusters`).
    pub refused: Family<Labels, Gauge>,
}

impl WeightMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "cluster_traffic_controller_ingress_weight_desired",
            "DesiredWeight of this cluster in the weight store",
            m.desired.clone(),
        );
        registry.register(
            "cluster_traffic_controller_ingress_weight_current",
            "CurrentWeight of this cluster in the weight store (acknowledged after the records were written)",
            m.current.clone(),
        );
        let r = registry.sub_registry_with_prefix("weir_weight");
        r.register(
            "drift_seconds",
            "Seconds since DesiredWeight and CurrentWeight started to differ; 0 when equal",
            m.drift.clone(),
        );
        r.register("store_errors", "Failed weight store calls", m.store_errors.clone());
        r.register(
            "row_invalid",
            "1 while this cluster's DesiredWeight in the weight store is not a weight (0-100)",
            m.row_invalid.clone(),
        );
        r.register(
            "refused",
            "1 while this cluster's DesiredWeight is refused by a safety rule, by rule",
            m.refused.clone(),
        );
        m
    }
}

/// The DNS loop's metrics.
#[derive(Clone)]
pub struct ReconcileMetrics {
    /// `weir_record_weight{host,cluster}`: the weight of this cluster's published record per host.
    pub record_weight: Family<Labels, Gauge>,
    /// `weir_reconcile_total{result}`.
    pub reconciles: Family<Labels, Counter>,
    /// `weir_reconcile_duration_seconds`.
    pub duration: Histogram,
    /// `weir_dns_changes_total{action}`: changes that landed.
    pub changes: Family<Labels, Counter>,
    /// `weir_ack_blocked_hosts{cluster}`: hosts held off the weight derived from the cluster weight;
    /// while above 0 the weight is not acknowledged.
    pub ack_blocked: Family<Labels, Gauge>,
    /// `weir_index_divergence_total`: resyncs that found the incremental index differing from a
    /// translation from scratch (a bug; the index is rebuilt).
    pub index_divergence: Counter,
}

impl Default for ReconcileMetrics {
    fn default() -> Self {
        Self {
            record_weight: Family::default(),
            reconciles: Family::default(),
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            changes: Family::default(),
            ack_blocked: Family::default(),
            index_divergence: Counter::default(),
        }
    }
}

impl ReconcileMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("weir");
        r.register("record_weight", "Weight of this cluster's published record, per host", m.record_weight.clone());
        r.register("reconcile", "DNS reconcile passes by result", m.reconciles.clone());
        // Every result from the start, so that `rate()` and alerts see the first failure of a kind.
        for result in super::dns::PassError::RESULTS {
            let _ = m.reconciles.get_or_create(&labels(&[("result", result)]));
        }
        r.register("reconcile_duration_seconds", "Duration of DNS reconcile passes", m.duration.clone());
        r.register("dns_changes", "DNS record changes applied, by action", m.changes.clone());
        for action in ["UPSERT", "DELETE"] {
            let _ = m.changes.get_or_create(&labels(&[("action", action)]));
        }
        r.register(
            "ack_blocked_hosts",
            "Hosts held off the weight derived from the cluster weight (bad annotation, no load-balancer \
             address, no health check); while above 0 the cluster weight is not acknowledged",
            m.ack_blocked.clone(),
        );
        r.register(
            "index_divergence",
            "Resyncs that found the incremental index differing from a translation from scratch (a bug: the \
             index was rebuilt from its objects)",
            m.index_divergence.clone(),
        );
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn exposed_names_are_exactly_the_documented_ones() {
        let mut registry = Registry::default();
        let w = WeightMetrics::register(&mut registry);
        let r = ReconcileMetrics::register(&mut registry);
        let eu = labels(&[("cluster", "eu")]);
        w.desired.get_or_create(&eu).set(50);
        w.current.get_or_create(&eu).set(50);
        w.drift.get_or_create(&eu).set(0.0);
        r.record_weight.get_or_create(&labels(&[("host", "a.example.com"), ("cluster", "eu")])).set(25);
        r.reconciles.get_or_create(&labels(&[("result", "success")])).inc();
        r.changes.get_or_create(&labels(&[("action", "UPSERT")])).inc();
        r.duration.observe(0.01);
        r.ack_blocked.get_or_create(&eu).set(1);
        // A family without samples is not exposed: one in each, so that every name is checked.
        w.store_errors.get_or_create(&labels(&[("operation", "get"), ("error", "call")])).inc();
        w.row_invalid.get_or_create(&eu).set(0);
        w.refused.get_or_create(&labels(&[("cluster", "eu"), ("rule", "min_serving_clusters")])).set(0);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        // Every family, and every sample but the histogram's buckets and sum: nothing more, nothing less.
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        assert_eq!(
            types,
            [
                "# TYPE cluster_traffic_controller_ingress_weight_desired gauge",
                "# TYPE cluster_traffic_controller_ingress_weight_current gauge",
                "# TYPE weir_weight_drift_seconds gauge",
                "# TYPE weir_weight_store_errors counter",
                "# TYPE weir_weight_row_invalid gauge",
                "# TYPE weir_weight_refused gauge",
                "# TYPE weir_record_weight gauge",
                "# TYPE weir_reconcile counter",
                "# TYPE weir_reconcile_duration_seconds histogram",
                "# TYPE weir_dns_changes counter",
                "# TYPE weir_ack_blocked_hosts gauge",
                "# TYPE weir_index_divergence counter",
            ],
            "{text}"
        );
        // Sorted: the order of a family's samples is not defined.
        let mut samples: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| !l.starts_with("weir_reconcile_duration_seconds_bucket"))
            .collect();
        samples.sort();
        let mut want = [
            "cluster_traffic_controller_ingress_weight_desired{cluster=\"eu\"} 50",
            "cluster_traffic_controller_ingress_weight_current{cluster=\"eu\"} 50",
            "weir_weight_drift_seconds{cluster=\"eu\"} 0.0",
            "weir_weight_store_errors_total{operation=\"get\",error=\"call\"} 1",
            "weir_weight_row_invalid{cluster=\"eu\"} 0",
            "weir_weight_refused{cluster=\"eu\",rule=\"min_serving_clusters\"} 0",
            "weir_record_weight{host=\"a.example.com\",cluster=\"eu\"} 25",
            "weir_reconcile_total{result=\"success\"} 1",
            "weir_reconcile_total{result=\"throttled\"} 0",
            "weir_reconcile_total{result=\"dns_api\"} 0",
            "weir_reconcile_total{result=\"invalid_record\"} 0",
            "weir_reconcile_total{result=\"fenced\"} 0",
            "weir_reconcile_total{result=\"store_unavailable\"} 0",
            "weir_reconcile_total{result=\"store_not_found\"} 0",
            "weir_reconcile_total{result=\"store_conflict\"} 0",
            "weir_reconcile_total{result=\"store_read_only\"} 0",
            "weir_reconcile_total{result=\"store_invalid_weight\"} 0",
            "weir_reconcile_duration_seconds_sum 0.01",
            "weir_reconcile_duration_seconds_count 1",
            "weir_dns_changes_total{action=\"UPSERT\"} 1",
            "weir_dns_changes_total{action=\"DELETE\"} 0",
            "weir_ack_blocked_hosts{cluster=\"eu\"} 1",
            "weir_index_divergence_total 0",
        ];
        want.sort();
        assert_eq!(samples, want, "{text}");
    }
}
