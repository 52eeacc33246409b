//! The versioned snapshot cache: one [`SnapshotWriter`], many cheap [`SnapshotCache`] readers.
//! Publishing replaces an `Arc` behind a `watch` channel; readers never block the writer and every
//! stream wakes up on a change. Nothing is published when no resource changed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use super::resources::{Resource, ResourceType, Resources};

/// An immutable, versioned set of resources.
#[derive(Debug, Clone)]
pub struct XdsSnapshot {
    pub resources: Resources,
    /// Per-type version: a hash of every resource of the type, so that it changes exactly when a
    /// resource of that type changes and is the same on every replica.
    pub versions: BTreeMap<ResourceType, String>,
    /// Increases on every publish.
    pub generation: u64,
    /// When it was published: the start of the push latency.
    pub published: Instant,
}

impl XdsSnapshot {
    pub fn empty() -> Self {
        Self::new(Resources::default(), 0)
    }

    fn new(resources: Resources, generation: u64) -> Self {
        let versions = ResourceType::ALL
            .into_iter()
            .map(|ty| (ty, version_of(resources.of(ty).map(|r| (r.name.as_str(), r.version.as_str())))))
            .collect();
        Self { resources, versions, generation, published: Instant::now() }
    }

    pub fn version(&self, ty: ResourceType) -> &str {
        self.versions.get(&ty).map(String::as_str).unwrap_or("")
    }

    pub fn get(&self, ty: ResourceType, name: &str) -> Option<&Resource> {
        self.resources.by_type.get(&ty)?.get(name)
    }

    pub fn all(&self, ty: ResourceType) -> impl Iterator<Item = &Resource> {
        self.resources.of(ty)
    }
}

/// A short, stable hash of `(name, version)` pairs: the version of a set of resources.
pub fn version_of<'a>(items: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for (name, version) in items {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(version.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..8])
}

/// The only writer.
pub struct SnapshotWriter {
    tx: watch::Sender<Arc<XdsSnapshot>>,
}

/// A cloneable reader.
#[derive(Clone)]
pub struct SnapshotCache {
    rx: watch::Receiver<Arc<XdsSnapshot>>,
}

pub fn new_cache() -> (SnapshotWriter, SnapshotCache) {
    let (tx, rx) = watch::channel(Arc::new(XdsSnapshot::empty()));
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
            self.tx.send_replace(Arc::new(next));
        }
        changed
    }

    pub fn reader(&self) -> SnapshotCache {
        SnapshotCache { rx: self.tx.subscribe() }
    }
}

impl SnapshotCache {
    pub fn current(&self) -> Arc<XdsSnapshot> {
        self.rx.borrow().clone()
    }

    /// A receiver that wakes on every publish, for one stream.
    pub fn subscribe(&self) -> watch::Receiver<Arc<XdsSnapshot>> {
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
