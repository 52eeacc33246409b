//! Immutable, versioned sets of resources: what the ADS machine ([`super::ads`]) serves, and what the
//! fleet said about them ([`LastGood`]). No clock: the cache records when a snapshot was published.
//!
//! A snapshot holds one [`TypeSet`] per type behind an `Arc`: publishing shares the sets of the types
//! that did not change, every stream points at the same sets, and a stream remembers what it sent by
//! keeping a pointer, not a copy.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::resources::{Resource, ResourceType, Resources};

/// Every resource of one type in one snapshot, by name, and the version of the whole set.
#[derive(Debug, Default, PartialEq)]
pub struct TypeSet {
    /// A hash of every name and resource version: it changes exactly when a resource of the type
    /// changes, and is the same on every replica.
    pub version: String,
    pub resources: BTreeMap<String, Resource>,
}

impl TypeSet {
    pub fn new(resources: BTreeMap<String, Resource>) -> Self {
        let version = version_of(resources.values().map(|r| (r.name.as_str(), r.version.as_str())));
        Self { version, resources }
    }

    pub fn get(&self, name: &str) -> Option<&Resource> {
        self.resources.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Resource> {
        self.resources.values()
    }
}

/// An immutable, versioned set of resources, with what clients said about earlier versions.
#[derive(Debug, Clone)]
pub struct XdsSnapshot {
    types: BTreeMap<ResourceType, Arc<TypeSet>>,
    /// Increases on every publish.
    pub generation: u64,
    pub last_good: LastGood,
}

impl XdsSnapshot {
    pub fn empty() -> Self {
        Self::new(Resources::default(), 0)
    }

    pub fn new(mut resources: Resources, generation: u64) -> Self {
        let types = ResourceType::ALL
            .into_iter()
            .map(|ty| (ty, Arc::new(TypeSet::new(resources.by_type.remove(&ty).unwrap_or_default()))))
            .collect();
        Self { types, generation, last_good: LastGood::default() }
    }

    /// The next snapshot: `resources`, sharing the sets of `self` that did not change, and keeping
    /// what clients said.
    pub fn next(&self, resources: Resources) -> Self {
        let mut next = Self::new(resources, self.generation + 1);
        for (ty, set) in next.types.iter_mut() {
            if self.set(*ty).version == set.version {
                *set = self.set(*ty).clone();
            }
        }
        next.last_good = self.last_good.clone();
        next
    }

    /// The same resources with other verdicts.
    pub fn with_last_good(&self, last_good: LastGood) -> Self {
        Self { last_good, ..self.clone() }
    }

    /// The newest set of `ty`.
    pub fn set(&self, ty: ResourceType) -> &Arc<TypeSet> {
        // Every type is present (see `new`).
        &self.types[&ty]
    }

    pub fn version(&self, ty: ResourceType) -> &str {
        &self.set(ty).version
    }

    pub fn get(&self, ty: ResourceType, name: &str) -> Option<&Resource> {
        self.set(ty).get(name)
    }

    pub fn all(&self, ty: ResourceType) -> impl Iterator<Item = &Resource> {
        self.set(ty).iter()
    }

    /// What a stream is served of `ty`: the newest set, unless a client rejected it, or unless the
    /// stream asks for the type for the first time (`newcomer`) while a rejection of the type stands;
    /// then the last set a client accepted (when there is one).
    pub fn served(&self, ty: ResourceType, newcomer: bool) -> &Arc<TypeSet> {
        let latest = self.set(ty);
        match self.last_good.types.get(&ty) {
            Some(v) if v.is_rejected(&latest.version) || (newcomer && v.standing) => v.good().unwrap_or(latest),
            _ => latest,
        }
    }

    /// JSON of every resource (the canonical protobuf JSON), for `/config_dump`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for ty in ResourceType::ALL {
            let items: Vec<serde_json::Value> =
                self.all(ty).map(|r| serde_json::to_value(&r.body).unwrap_or(serde_json::Value::Null)).collect();
            out.insert(ty.label().to_string(), serde_json::Value::Array(items));
        }
        serde_json::Value::Object(out)
    }
}

/// How many accepted sets per type are kept to fall back to, and how many rejected versions are
/// remembered: enough for a rejection that follows an ACK of the same version, bounded whatever the
/// clients say.
const ACCEPTED_KEPT: usize = 3;
const REJECTED_KEPT: usize = 16;

/// What clients said about the sets they were sent, per type: the last sets some client ACKed and
/// the versions some client NACKed. A NACK wins over an ACK of the same version (different clients
/// may differ; one that rejects is enough not to hand that version out again).
#[derive(Debug, Clone, Default)]
pub struct LastGood {
    types: BTreeMap<ResourceType, Verdicts>,
}

#[derive(Debug, Clone, Default)]
struct Verdicts {
    /// ACKed sets, newest last, none of them rejected.
    accepted: Vec<Arc<TypeSet>>,
    /// NACKed versions, newest last.
    rejected: Vec<String>,
    /// A NACK came after the newest ACK of a new version: newcomers get the last accepted set.
    standing: bool,
}

impl Verdicts {
    fn good(&self) -> Option<&Arc<TypeSet>> {
        self.accepted.last()
    }

    fn is_rejected(&self, version: &str) -> bool {
        self.rejected.iter().any(|v| v == version)
    }
}

impl LastGood {
    /// A client ACKed `set`. Returns whether anything changed. An ACK of a version other than the
    /// last accepted one ends a standing rejection: a newer version is proven.
    pub fn accept(&mut self, ty: ResourceType, set: &Arc<TypeSet>) -> bool {
        let v = self.types.entry(ty).or_default();
        if v.is_rejected(&set.version) || v.good().is_some_and(|g| g.version == set.version) {
            return false;
        }
        v.accepted.retain(|s| s.version != set.version);
        v.accepted.push(set.clone());
        if v.accepted.len() > ACCEPTED_KEPT {
            v.accepted.remove(0);
        }
        v.standing = false;
        true
    }

    /// A client NACKed the set of `version`. Returns whether anything changed.
    pub fn reject(&mut self, ty: ResourceType, version: &str) -> bool {
        let v = self.types.entry(ty).or_default();
        if v.is_rejected(version) && v.standing {
            return false;
        }
        if !v.is_rejected(version) {
            v.rejected.push(version.to_string());
            if v.rejected.len() > REJECTED_KEPT {
                v.rejected.remove(0);
            }
        }
        v.accepted.retain(|s| s.version != version);
        v.standing = true;
        true
    }

    /// Applies what clients said in `events`. Returns whether anything changed.
    pub fn record(&mut self, events: &[super::ads::Event]) -> bool {
        use super::ads::Event;
        let mut changed = false;
        for e in events {
            changed |= match e {
                Event::Ack { ty, set, .. } => self.accept(*ty, set),
                Event::Nack { ty, set, .. } => self.reject(*ty, &set.version),
                Event::StaleNonce { .. } | Event::UnknownType { .. } => false,
            };
        }
        changed
    }

    /// Whether a rejection of `ty` stands (no newer version ACKed since).
    pub fn standing(&self, ty: ResourceType) -> bool {
        self.types.get(&ty).is_some_and(|v| v.standing)
    }

    /// The version newcomers fall back to while a rejection stands.
    pub fn good_version(&self, ty: ResourceType) -> Option<&str> {
        self.types.get(&ty).and_then(|v| v.good()).map(|s| s.version.as_str())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &str) -> Arc<TypeSet> {
        Arc::new(TypeSet { version: v.into(), resources: BTreeMap::new() })
    }

    #[test]
    fn a_nack_wins_over_an_ack_and_only_a_newer_ack_ends_it() {
        let ty = ResourceType::RouteConfiguration;
        let mut lg = LastGood::default();
        assert!(lg.accept(ty, &set("g")));
        assert!(!lg.accept(ty, &set("g")), "the same ACK again changes nothing");
        // A partial subscriber ACKs "n" before another client NACKs it: "g" is the fallback again.
        assert!(lg.accept(ty, &set("n")));
        assert!(lg.reject(ty, "n"));
        assert!(lg.standing(ty));
        assert_eq!(lg.good_version(ty), Some("g"));
        assert!(!lg.reject(ty, "n"), "the same NACK again changes nothing");
        // ACKs of the rejected version and of the fallback do not end the rejection.
        assert!(!lg.accept(ty, &set("n")));
        assert!(!lg.accept(ty, &set("g")));
        assert!(lg.standing(ty));
        assert!(lg.accept(ty, &set("n2")));
        assert!(!lg.standing(ty));
        assert_eq!(lg.good_version(ty), Some("n2"));
        assert!(!lg.standing(ResourceType::Cluster));
    }

    #[test]
    fn verdicts_stay_bounded() {
        let ty = ResourceType::Cluster;
        let mut lg = LastGood::default();
        for i in 0..100 {
            lg.accept(ty, &set(&format!("a{i}")));
            lg.reject(ty, &format!("r{i}"));
        }
        let v = &lg.types[&ty];
        assert_eq!((v.accepted.len(), v.rejected.len()), (ACCEPTED_KEPT, REJECTED_KEPT));
    }
}
