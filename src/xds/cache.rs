//! The versioned snapshot cache: one [`SnapshotWriter`], many cheap [`SnapshotCache`] readers.
//! Publishing replaces an `Arc` behind a `watch` channel; readers never block the writer and every
//! stream wakes up on a change. Nothing is published when no resource changed.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

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

/// The only writer.
pub struct SnapshotWriter {
    tx: watch::Sender<Arc<PublishedSnapshot>>,
}

/// A cloneable reader.
#[derive(Clone)]
pub struct SnapshotCache {
    rx: watch::Receiver<Arc<PublishedSnapshot>>,
}

pub fn new_cache() -> (SnapshotWriter, SnapshotCache) {
    let (tx, rx) = watch::channel(Arc::new(PublishedSnapshot::now(XdsSnapshot::empty())));
    (SnapshotWriter { tx }, SnapshotCache { rx })
}

impl SnapshotWriter {
    /// Publishes `resources` if any resource differs from the current snapshot. Returns the types
    /// whose version changed (empty: nothing was published).
    pub fn publish(&self, resources: Resources) -> Vec<ResourceType> {
        let current = self.tx.borrow().clone();
        let next = XdsSnapshot::new(resources, current.generation + 1);
        let changed: Vec<ResourceType> =
            ResourceType::ALL.into_iter().filter(|ty| current.version(*ty) != next.version(*ty)).collect();
        if !changed.is_empty() {
            self.tx.send_replace(Arc::new(PublishedSnapshot::now(next)));
        }
        changed
    }

    pub fn reader(&self) -> SnapshotCache {
        SnapshotCache { rx: self.tx.subscribe() }
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
