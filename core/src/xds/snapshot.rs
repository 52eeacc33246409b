//! An immutable, versioned set of resources: what the ADS machine ([`super::ads`]) serves. It holds no
//! clock; the cache records when a snapshot was published.

use std::collections::BTreeMap;

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
}

impl XdsSnapshot {
    pub fn empty() -> Self {
        Self::new(Resources::default(), 0)
    }

    pub fn new(resources: Resources, generation: u64) -> Self {
        let versions = ResourceType::ALL
            .into_iter()
            .map(|ty| (ty, version_of(resources.of(ty).map(|r| (r.name.as_str(), r.version.as_str())))))
            .collect();
        Self { resources, versions, generation }
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
