//! Which proxies rejected (NACKed) which configuration, for the TrafficInfra's `ConfigAccepted`
//! condition and its Events. Pure: the ADS server feeds it every stream's status and events.
//!
//! "Newer" is the order in which versions were first sent: a rejection of `(node, type)` is over
//! when that node ACKs a version of that type first sent after the rejected one (an ACK of an older
//! version, such as a last good one handed to a newcomer, does not end it).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::ads::{Event, StreamStatus};

/// How many versions' send order and how many distinct rejections are remembered.
const MEMORY: usize = 4096;
/// The longest proxy error kept in a condition message or an Event.
pub const ERROR_LIMIT: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rejection {
    pub node: String,
    /// `cluster`, `endpoint`, `listener` or `route` (the label of the push and NACK metrics).
    pub type_label: &'static str,
    pub version: String,
    /// The proxy's error, cut to [`ERROR_LIMIT`] bytes.
    pub message: String,
}

impl Rejection {
    /// `node envoy-proxy rejected listener version 3f2a…: <error>`.
    pub fn describe(&self) -> String {
        format!("node {} rejected {} version {}: {}", self.node, self.type_label, self.version, self.message)
    }
}

/// The state of the `ConfigAccepted` condition this replica can vouch for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing acknowledged or rejected yet.
    Unknown,
    /// Every rejection seen has been followed by an ACK of a newer version.
    Accepted,
    /// These rejections are open (sorted by node and type).
    Rejected(Vec<Rejection>),
}

#[derive(Debug, Default)]
pub struct Rejections {
    /// `(type, version)` → when it was first sent (a counter).
    first_sent: BTreeMap<(&'static str, String), u64>,
    order: VecDeque<(&'static str, String)>,
    next: u64,
    /// Open rejections by `(node, type)`, with the send order of the rejected version.
    open: BTreeMap<(String, &'static str), (Rejection, u64)>,
    /// Distinct rejections already reported (one Event each).
    reported: BTreeSet<Rejection>,
    reported_order: VecDeque<Rejection>,
    acked_any: bool,
}

impl Rejections {
    /// One stream's status after a step, and that step's events. Returns the rejections not seen
    /// before (node, type, version and error), each to be reported once.
    pub fn observe(&mut self, status: &StreamStatus, events: &[Event]) -> Vec<Rejection> {
        for (label, t) in &status.types {
            if let Some(v) = &t.sent_version {
                self.sent(label, v);
            }
        }
        let mut new = Vec::new();
        for e in events {
            match e {
                Event::Nack { ty, version, message, .. } => {
                    let rejection = Rejection {
                        node: status.node_id.clone(),
                        type_label: ty.label(),
                        version: version.clone(),
                        message: clip(message, ERROR_LIMIT),
                    };
                    let seq = self.sent(ty.label(), version);
                    self.open.insert((status.node_id.clone(), ty.label()), (rejection.clone(), seq));
                    if self.reported.insert(rejection.clone()) {
                        self.reported_order.push_back(rejection.clone());
                        if self.reported_order.len() > MEMORY {
                            if let Some(old) = self.reported_order.pop_front() {
                                self.reported.remove(&old);
                            }
                        }
                        new.push(rejection);
                    }
                }
                Event::Ack { ty, version, .. } => {
                    self.acked_any = true;
                    let key = (status.node_id.clone(), ty.label());
                    let acked = self.first_sent.get(&(ty.label(), version.clone())).copied();
                    if let (Some((r, rejected)), Some(acked)) = (self.open.get(&key), acked) {
                        if r.version != *version && acked > *rejected {
                            self.open.remove(&key);
                        }
                    }
                }
                Event::StaleNonce { .. } | Event::UnknownType { .. } => {}
            }
        }
        new
    }

    /// Whether this tracker ever saw a rejection (so that its `Accepted` ends one it knows of).
    pub fn saw_rejections(&self) -> bool {
        !self.reported.is_empty()
    }

    pub fn verdict(&self) -> Verdict {
        if !self.open.is_empty() {
            return Verdict::Rejected(self.open.values().map(|(r, _)| r.clone()).collect());
        }
        if self.acked_any || !self.reported.is_empty() {
            Verdict::Accepted
        } else {
            Verdict::Unknown
        }
    }

    fn sent(&mut self, label: &'static str, version: &str) -> u64 {
        let key = (label, version.to_string());
        if let Some(seq) = self.first_sent.get(&key) {
            return *seq;
        }
        self.next += 1;
        self.first_sent.insert(key.clone(), self.next);
        self.order.push_back(key);
        if self.order.len() > MEMORY {
            if let Some(old) = self.order.pop_front() {
                self.first_sent.remove(&old);
            }
        }
        self.next
    }
}

/// `text` cut to at most `limit` bytes on a character boundary, with `…` when cut.
pub fn clip(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let cut = (0..=limit.saturating_sub(3)).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    format!("{}…", &text[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::ads::TypeStatus;
    use crate::xds::resources::ResourceType;

    fn status(node: &str, sent: &[(&'static str, &str)]) -> StreamStatus {
        StreamStatus {
            node_id: node.into(),
            types: sent
                .iter()
                .map(|(l, v)| (*l, TypeStatus { sent_version: Some(v.to_string()), ..Default::default() }))
                .collect(),
            ..Default::default()
        }
    }

    fn nack(version: &str) -> Event {
        Event::Nack {
            ty: ResourceType::Listener,
            version: version.into(),
            message: "cannot bind".into(),
            set: Default::default(),
        }
    }

    fn ack(version: &str) -> Event {
        Event::Ack { ty: ResourceType::Listener, version: version.into(), set: Default::default() }
    }

    #[test]
    fn a_rejection_ends_only_with_an_ack_of_a_newer_version() {
        let mut r = Rejections::default();
        assert_eq!(r.verdict(), Verdict::Unknown);
        r.observe(&status("n", &[("listener", "v1")]), &[]);
        r.observe(&status("n", &[("listener", "v1")]), &[ack("v1")]);
        assert_eq!(r.verdict(), Verdict::Accepted);
        r.observe(&status("n", &[("listener", "v2")]), &[]);
        let new = r.observe(&status("n", &[("listener", "v2")]), &[nack("v2")]);
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].describe(), "node n rejected listener version v2: cannot bind");
        // The same rejection again (a reconnect) is not reported twice.
        assert!(r.observe(&status("n", &[("listener", "v2")]), &[nack("v2")]).is_empty());
        // A newcomer handed the older v1 ACKs it: still rejected.
        r.observe(&status("n", &[("listener", "v1")]), &[ack("v1")]);
        assert!(matches!(r.verdict(), Verdict::Rejected(v) if v.len() == 1 && v[0].version == "v2"));
        // Another node's trouble is its own.
        r.observe(&status("m", &[("listener", "v3")]), &[ack("v3")]);
        assert!(matches!(r.verdict(), Verdict::Rejected(_)));
        // v3, sent after v2, is ACKed by the node that rejected v2.
        r.observe(&status("n", &[("listener", "v3")]), &[ack("v3")]);
        assert_eq!(r.verdict(), Verdict::Accepted);
    }

    #[test]
    fn long_errors_are_clipped_on_a_char_boundary() {
        let long = "é".repeat(1000);
        let c = clip(&long, ERROR_LIMIT);
        assert!(c.len() <= ERROR_LIMIT + "…".len() && c.ends_with('…'), "{}", c.len());
        assert_eq!(clip("short", 10), "short");
    }
}
