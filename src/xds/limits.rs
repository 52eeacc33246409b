//! Bounds of the ADS server: how many streams one connection and the whole server may hold open,
//! and how many names one stream may subscribe to per type (the state machines enforce that one,
//! see [`super::ads::Refusal`]). A stream over a bound is refused, or ended, with
//! `RESOURCE_EXHAUSTED` and a message naming the bound and its flag; each is counted in
//! `weir_xds_limits_hit_total{limit}`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tonic::Status;

use super::ads::{Refusal, DEFAULT_MAX_NAMES_PER_TYPE};

/// Streams one connection may hold open by default. Envoy opens one ADS stream per connection and
/// a gRPC process one per xDS server; more is a client gone wrong.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 16;

/// Streams the server holds open by default, all connections together.
pub const DEFAULT_MAX_STREAMS: u32 = 10_000;

/// The ADS server's bounds (`--xds-max-names-per-type`, `--xds-max-streams-per-connection`,
/// `--xds-max-streams`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XdsLimits {
    pub max_names_per_type: u32,
    pub max_streams_per_connection: u32,
    pub max_streams: u32,
}

impl Default for XdsLimits {
    fn default() -> Self {
        Self {
            max_names_per_type: DEFAULT_MAX_NAMES_PER_TYPE as u32,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            max_streams: DEFAULT_MAX_STREAMS,
        }
    }
}

/// The `limit` label's values: the server's bounds, then the state machines' ([`Refusal::limit`]).
const LIMITS: [&str; 5] = ["streams", "streams_per_connection", "names_per_type", "name_length", "node_labels"];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

#[derive(Default)]
struct Open {
    total: u32,
    /// Per connection (a TCP connection is its peer address while it is open).
    per_connection: HashMap<SocketAddr, u32>,
}

/// Counts open streams against [`XdsLimits`] and the bounds hit; shared by every stream.
#[derive(Clone)]
pub struct StreamLimiter {
    limits: XdsLimits,
    open: Arc<Mutex<Open>>,
    hits: Family<LimitLabel, Counter>,
}

impl StreamLimiter {
    pub fn new(limits: XdsLimits) -> Self {
        let hits = Family::<LimitLabel, Counter>::default();
        // Exposed at 0 from the start, so that `increase()` sees the first hit.
        for limit in LIMITS {
            let _ = hits.get_or_create(&LimitLabel { limit });
        }
        Self { limits, open: Arc::default(), hits }
    }

    /// Registers `weir_xds_limits_hit_total{limit}`.
    pub fn register(self, registry: &mut Registry) -> Self {
        let r = registry.sub_registry_with_prefix("weir_xds");
        r.register(
            "limits_hit",
            "ADS streams refused or ended because a bound was hit (limit: streams, streams_per_connection, \
             names_per_type, name_length)",
            self.hits.clone(),
        );
        self
    }

    /// Names one stream may subscribe to per type.
    pub fn max_names(&self) -> usize {
        self.limits.max_names_per_type as usize
    }

    fn hit(&self, limit: &'static str) {
        self.hits.get_or_create(&LimitLabel { limit }).inc();
    }

    /// How often `limit` was hit.
    pub fn hits(&self, limit: &'static str) -> u64 {
        self.hits.get_or_create(&LimitLabel { limit }).get()
    }

    /// A slot for a new stream from `peer` (its connection), held until the stream ends; or the
    /// status refusing it.
    #[allow(clippy::result_large_err)] // tonic's own error type
    pub fn admit(&self, peer: Option<SocketAddr>) -> Result<StreamSlot, Status> {
        let mut open = self.open.lock();
        if open.total >= self.limits.max_streams {
            drop(open);
            self.hit("streams");
            tracing::warn!(peer = ?peer, max = self.limits.max_streams, "refused an ADS stream: the server's stream cap is reached");
            return Err(Status::resource_exhausted(format!(
                "weir xDS holds {} ADS streams, its cap (--xds-max-streams); retry later or on another replica",
                self.limits.max_streams
            )));
        }
        if let Some(peer) = peer {
            let on_connection = open.per_connection.entry(peer).or_default();
            if *on_connection >= self.limits.max_streams_per_connection {
                drop(open);
                self.hit("streams_per_connection");
                tracing::warn!(%peer, max = self.limits.max_streams_per_connection,
                    "refused an ADS stream: its connection's stream cap is reached");
                return Err(Status::resource_exhausted(format!(
                    "this connection already holds {} ADS streams, weir xDS's cap per connection \
                     (--xds-max-streams-per-connection)",
                    self.limits.max_streams_per_connection
                )));
            }
            *on_connection += 1;
        }
        open.total += 1;
        Ok(StreamSlot { open: self.open.clone(), peer })
    }

    /// The status ending a stream whose request went past a bound of the state machine.
    pub fn refuse(&self, refusal: &Refusal, node: &str) -> Status {
        self.hit(refusal.limit());
        tracing::warn!(node = %crate::telemetry::clip(node), limit = refusal.limit(), error = %refusal,
            "ended an ADS stream: its request went past a bound");
        let flag = match refusal {
            Refusal::TooManyNames { .. } => " (--xds-max-names-per-type)",
            Refusal::TooLong { .. } | Refusal::TooManyLabels { .. } => "",
        };
        Status::resource_exhausted(format!("weir xDS: {refusal}{flag}; the stream is closed"))
    }
}

/// One open stream's place in the counts; given back when dropped.
pub struct StreamSlot {
    open: Arc<Mutex<Open>>,
    peer: Option<SocketAddr>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock();
        open.total -= 1;
        if let Some(peer) = self.peer {
            if let Some(n) = open.per_connection.get_mut(&peer) {
                *n -= 1;
                if *n == 0 {
                    open.per_connection.remove(&peer);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_per_connection_and_in_all_and_are_given_back() {
        let limiter =
            StreamLimiter::new(XdsLimits { max_names_per_type: 1, max_streams_per_connection: 2, max_streams: 3 });
        let (a, b): (SocketAddr, SocketAddr) = ("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap());
        let a1 = limiter.admit(Some(a)).unwrap();
        let _a2 = limiter.admit(Some(a)).unwrap();
        let refused = limiter.admit(Some(a)).err().unwrap();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("--xds-max-streams-per-connection"), "{}", refused.message());
        let _b1 = limiter.admit(Some(b)).unwrap();
        let refused = limiter.admit(Some(b)).err().unwrap();
        assert!(refused.message().contains("--xds-max-streams"), "{}", refused.message());
        assert_eq!((limiter.hits("streams_per_connection"), limiter.hits("streams")), (1, 1));
        drop(a1);
        let _a3 = limiter.admit(Some(a)).unwrap();
        assert_eq!(limiter.open.lock().per_connection[&a], 2);
        drop(_b1);
        assert!(!limiter.open.lock().per_connection.contains_key(&b), "an idle connection's entry is removed");
    }
}
