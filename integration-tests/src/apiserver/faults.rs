//! Fault injection: requests of chosen clients hang until released, as an API server that stopped
//! answering one replica (a partition, an overloaded apiserver) looks to that replica.
//!
//! A client is named by its bearer token (`user: {token: NAME}` in its kubeconfig; see
//! [`super::ApiServer::write_kubeconfig_with_token`]). A hung request waits before it is read or
//! answered; once released it proceeds, late, as a slow network would deliver it.
//!
//! Watch events of a chosen resource (by plural) can also be lost: open watches skip them (and
//! move past their resourceVersion, so a resumed watch does not replay them either), as a watch
//! that silently missed a change looks to its client. Lists still see every object.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::http::{header, HeaderMap};
use tokio::sync::watch;

/// The switches, shared by every connection of one server. Cheap to clone.
#[derive(Clone)]
pub struct Faults {
    hung: Arc<watch::Sender<BTreeSet<String>>>,
    lost_watch_events: Arc<parking_lot::Mutex<BTreeSet<String>>>,
}

impl Default for Faults {
    fn default() -> Self {
        Self { hung: Arc::new(watch::channel(BTreeSet::new()).0), lost_watch_events: Default::default() }
    }
}

impl Faults {
    /// Open watches of `plural` (e.g. `endpointslices`) lose every event from now on.
    pub fn lose_watch_events(&self, plural: &str) {
        self.lost_watch_events.lock().insert(plural.to_string());
    }

    /// Watches of `plural` deliver events again (the lost ones stay lost).
    pub fn deliver_watch_events(&self, plural: &str) {
        self.lost_watch_events.lock().remove(plural);
    }

    pub(super) fn loses_watch_events(&self, plural: &str) -> bool {
        self.lost_watch_events.lock().contains(plural)
    }

    /// Every request with this bearer token hangs from now on, until [`Self::release`].
    pub fn hang(&self, token: &str) {
        self.hung.send_modify(|s| {
            s.insert(token.to_string());
        });
    }

    /// Requests with this token proceed again (the hung ones too).
    pub fn release(&self, token: &str) {
        self.hung.send_modify(|s| {
            s.remove(token);
        });
    }

    pub fn is_hung(&self, token: &str) -> bool {
        self.hung.borrow().contains(token)
    }

    /// Waits while the request's client is hung.
    pub(super) async fn gate(&self, headers: &HeaderMap) {
        let Some(token) = bearer(headers) else { return };
        let mut rx = self.hung.subscribe();
        let _ = rx.wait_for(|s| !s.contains(&token)).await;
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::to_string)
}
