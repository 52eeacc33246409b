//! The versioned snapshot cache: one [`SnapshotWriter`], many cheap [`SnapshotCache`] readers.
//! Publishing replaces an `Arc` behind a `watch` channel; readers never block the writer and every
//! stream wakes up on a change. Nothing is published when no resource changed. What clients said
//! (ACK/NACK) is folded into the snapshot's verdicts without waking anyone.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use super::ads::Event;
use super::resources::{ResourceType, Resources};
use super::snapshot::XdsSnapshot;

/// A snapshot and when it was published (the start of the push latency). It dereferences to the
/// snapshot, which is all the ADS machine sees.
#[derive(Debug, Clone)]
pub struct PublishedSnapshot {
    pub snapshot: XdsSnapshot,
    pub published: Instant,
}

impl PublishedSnapshot {
    fn now(snapshot: XdsSnapshot) -> Self {
        Self { snapshot, published: Instant::now() }
    }
}

impl std::ops::Deref for PublishedSnapshot {
    type Target = XdsSnapshot;

    fn deref(&self) -> &XdsSnapshot {
        &self.snapshot
    }
}

/// The only writer of resources.
pub struct SnapshotWriter {
    tx: Arc<watch::Sender<Arc<PublishedSnapshot>>>,
}

/// A cloneable reader. Streams also report what clients said through it ([`SnapshotCache::record`]).
#[derive(Clone)]
pub struct SnapshotCache {
    rx: watch::Receiver<Arc<PublishedSnapshot>>,
    tx: Arc<watch::Sender<Arc<PublishedSnapshot>>>,
}

pub fn new_cache() -> (SnapshotWriter, SnapshotCache) {
    let (tx, rx) = watch::channel(Arc::new(PublishedSnapshot::now(XdsSnapshot::empty())));
    let tx = Arc::new(tx);
    (SnapshotWriter { tx: tx.clone() }, SnapshotCache { rx, tx })
}

impl SnapshotWriter {
    /// Publishes `resources` if any resource differs from the current snapshot (the sets of the
    /// unchanged types are shared with it). Returns the types whose version changed (empty: nothing
    /// was published).
    pub fn publish(&self, resources: Resources) -> Vec<ResourceType> {
        let mut changed = Vec::new();
        // Under the channel's lock, so that a verdict recorded meanwhile is not lost.
        self.tx.send_if_modified(|current| {
            let next = current.snapshot.next(resources);
            changed = ResourceType::ALL.into_iter().filter(|ty| current.version(*ty) != next.version(*ty)).collect();
            if changed.is_empty() {
                return false;
            }
            *current = Arc::new(PublishedSnapshot::now(next));
            true
        });
        changed
    }

    pub fn reader(&self) -> SnapshotCache {
        SnapshotCache { rx: self.tx.subscribe(), tx: self.tx.clone() }
    }
}

impl SnapshotCache {
    pub fn current(&self) -> Arc<PublishedSnapshot> {
        self.rx.borrow().clone()
    }

    /// A receiver that wakes on every publish, for one stream.
    pub fn subscribe(&self) -> watch::Receiver<Arc<PublishedSnapshot>> {
        let mut rx = self.rx.clone();
        rx.mark_unchanged();
        rx
    }

    /// Applies the ACKs and NACKs in `events` to the fleet's verdicts ([`super::snapshot::LastGood`]).
    /// A change wakes no stream: it decides what streams are served from their next request or
    /// update on (a rejected version is not handed out again; newcomers get the last accepted one).
    /// Returns whether the verdicts changed.
    pub fn record(&self, events: &[Event]) -> bool {
        if !events.iter().any(|e| matches!(e, Event::Ack { .. } | Event::Nack { .. })) {
            return false;
        }
        // Most ACKs repeat a verdict: find out under the read lock first.
        if !self.rx.borrow().last_good.clone().record(events) {
            return false;
        }
        let mut changed = false;
        self.tx.send_if_modified(|current| {
            let mut last_good = current.last_good.clone();
            changed = last_good.record(events);
            if changed {
                let snapshot = current.snapshot.with_last_good(last_good);
                *current = Arc::new(PublishedSnapshot { snapshot, published: current.published });
            }
            // A silent modification: the value changes, receivers are not woken.
            false
        });
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::model::{ProxyConfig, ServiceBackend};
    use crate::xds::resources::translate;

    fn cfg(blue: u32) -> ProxyConfig {
        ProxyConfig {
            policies: Default::default(),
            name: "shop".into(),
            listener_port: 8080,
            strategies: [("blue".to_string(), blue)].into(),
            services: vec![ServiceBackend {
                namespace: "d".into(),
                name: "a-blue".into(),
                strategy: "blue".into(),
                endpoints: vec![],
                port: None,
            }],
        }
    }

    #[test]
    fn publishes_only_changes_and_bumps_only_changed_types() {
        let (writer, cache) = new_cache();
        let mut rx = cache.subscribe();
        let changed = writer.publish(translate(&cfg(100)));
        assert_eq!(changed, ResourceType::ALL.to_vec());
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        let before = cache.current();

        assert!(writer.publish(translate(&cfg(100))).is_empty(), "same resources: no publish");
        assert!(!rx.has_changed().unwrap());

        assert_eq!(writer.publish(translate(&cfg(50))), vec![ResourceType::RouteConfiguration]);
        let after = cache.current();
        assert_eq!(after.generation, before.generation + 1);
        assert_eq!(after.version(ResourceType::Cluster), before.version(ResourceType::Cluster));
        assert_ne!(after.version(ResourceType::RouteConfiguration), before.version(ResourceType::RouteConfiguration));
    }
}
