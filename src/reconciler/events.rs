//! Kubernetes Events for refused inputs: a [`RefusalSink`] that records a Warning Event
//! (events.k8s.io/v1) on the object to blame, with the refusal's reason and message.
//!
//! The DNS loop calls the sink once per distinct refusal occurrence (a refusal that persists across
//! passes is not repeated), and kube's `Recorder` turns a repeat within its cache window into a
//! series count on the same Event instead of a new one.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::RefusalSink;
use crate::ir::Refusal;
use crate::model::ObjectRef;

/// The reporting controller named on every Event.
pub const REPORTER: &str = "weir-controller";

/// Kubernetes allows at most 1 kB in an Event note.
const NOTE_LIMIT: usize = 1024;

/// Refusals waiting for the publisher; beyond this they are dropped (and still logged and counted).
const QUEUE: usize = 1024;

/// Hands refusals to a background publisher; never blocks the reconcile loop.
pub struct EventSink {
    tx: mpsc::Sender<Refusal>,
}

impl RefusalSink for EventSink {
    fn refused(&self, refusal: &Refusal) {
        if self.tx.try_send(refusal.clone()).is_err() {
            tracing::warn!(object = %refusal.object, reason = %refusal.reason, "Event queue full; Event dropped");
        }
    }
}

/// The group/version of the kinds weir can blame; Events on other kinds are not recorded.
pub fn api_version_of(kind: &str) -> Option<(&'static str, &'static str)> {
    match kind {
        "Ingress" => Some(("networking.k8s.io", "v1")),
        // Pod: the controller's own, for refusals of a weight row (not a Kubernetes object).
        "Service" | "Pod" => Some(("", "v1")),
        "EndpointSlice" => Some(("discovery.k8s.io", "v1")),
        "TrafficInfra" | "BackendTrafficPolicy" | "NamespaceConfig" => Some(("weir.dev", "v1alpha1")),
        "Gateway" | "HTTPRoute" | "GRPCRoute" => Some((crate::gateway::GROUP, "v1")),
        "TLSRoute" => Some((crate::gateway::GROUP, "v1alpha2")),
        _ => None,
    }
}

/// The Event a refusal becomes, and the reference it is recorded on (uid filled in later when the
/// object can be read). `None` for objects that cannot carry an Event.
pub fn event_for(refusal: &Refusal) -> Option<(Event, ObjectReference)> {
    let ObjectRef { kind, namespace, name } = &refusal.object;
    let (group, version) = api_version_of(kind)?;
    if namespace.is_empty() || name.is_empty() {
        return None;
    }
    let mut note = refusal.message.clone();
    if note.len() > NOTE_LIMIT {
        let mut cut = NOTE_LIMIT - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    let event = Event {
        type_: EventType::Warning,
        reason: refusal.reason.chars().take(128).collect(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    let reference = ObjectReference {
        api_version: Some(if group.is_empty() { version.to_string() } else { format!("{group}/{version}") }),
        kind: Some(kind.clone()),
        namespace: Some(namespace.clone()),
        name: Some(name.clone()),
        ..Default::default()
    };
    Some((event, reference))
}

/// Starts the publisher; the returned sink feeds it. The task ends when the sink is dropped.
pub fn spawn(client: Client, instance: String) -> (EventSink, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Refusal>(QUEUE);
    let reporter = Reporter { controller: REPORTER.into(), instance: Some(instance) };
    let recorder = Recorder::new(client.clone(), reporter);
    let task = tokio::spawn(async move {
        while let Some(refusal) = rx.recv().await {
            let Some((event, mut reference)) = event_for(&refusal) else { continue };
            reference.uid = uid_of(&client, &reference).await;
            match recorder.publish(&event, &reference).await {
                Ok(()) => tracing::debug!(object = %refusal.object, reason = %refusal.reason, "recorded Event"),
                Err(e) => {
                    tracing::warn!(object = %refusal.object, reason = %refusal.reason, error = %e, "recording an Event failed")
                }
            }
        }
    });
    (EventSink { tx }, task)
}

/// The object's uid, so that `kubectl describe` lists the Event; `None` when it cannot be read.
async fn uid_of(client: &Client, reference: &ObjectReference) -> Option<String> {
    let kind = reference.kind.as_deref()?;
    let (group, version) = api_version_of(kind)?;
    let plural = match kind {
        "Ingress" => "ingresses",
        "Service" => "services",
        "Pod" => "pods",
        "EndpointSlice" => "endpointslices",
        "TrafficInfra" => "trafficinfras",
        "BackendTrafficPolicy" => "backendtrafficpolicies",
        "NamespaceConfig" => "namespaceconfigs",
        "Gateway" => "gateways",
        "HTTPRoute" => "httproutes",
        "GRPCRoute" => "grpcroutes",
        "TLSRoute" => "tlsroutes",
        _ => return None,
    };
    let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), reference.namespace.as_deref()?, &resource);
    api.get_opt(reference.name.as_deref()?).await.ok().flatten().and_then(|o| o.metadata.uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::InputKind;

    fn refusal(kind: &str, namespace: &str, message: &str) -> Refusal {
        Refusal {
            object: ObjectRef::new(kind, namespace, "web"),
            kind: InputKind::Annotation,
            reason: "InvalidTrafficWeight".into(),
            message: message.into(),
        }
    }

    #[test]
    fn refusals_on_ingresses_become_warning_events() {
        let (event, reference) = event_for(&refusal("Ingress", "team", "set it to 0-100")).unwrap();
        assert_eq!(event.type_, EventType::Warning);
        assert_eq!(event.reason, "InvalidTrafficWeight");
        assert_eq!(event.note.as_deref(), Some("set it to 0-100"));
        assert_eq!(reference.api_version.as_deref(), Some("networking.k8s.io/v1"));
        assert_eq!(reference.kind.as_deref(), Some("Ingress"));
        assert_eq!(reference.namespace.as_deref(), Some("team"));
        assert_eq!(reference.name.as_deref(), Some("web"));
    }

    #[test]
    fn refusals_on_gateway_api_objects_name_their_api_version() {
        for (kind, api_version) in [
            ("Gateway", "gateway.networking.k8s.io/v1"),
            ("HTTPRoute", "gateway.networking.k8s.io/v1"),
            ("GRPCRoute", "gateway.networking.k8s.io/v1"),
            ("TLSRoute", "gateway.networking.k8s.io/v1alpha2"),
            ("Service", "v1"),
        ] {
            let (_, reference) = event_for(&refusal(kind, "team", "x")).unwrap();
            assert_eq!(reference.api_version.as_deref(), Some(api_version), "{kind}");
        }
    }

    #[test]
    fn objects_that_cannot_carry_events_are_skipped() {
        assert!(event_for(&refusal("Manifest", "team", "x")).is_none());
        assert!(event_for(&refusal("Ingress", "", "x")).is_none());
    }

    #[test]
    fn long_notes_are_truncated_to_the_api_limit() {
        let (event, _) = event_for(&refusal("Ingress", "team", &"é".repeat(2000))).unwrap();
        let note = event.note.unwrap();
        assert!(note.len() <= NOTE_LIMIT && note.ends_with("..."), "{}", note.len());
    }
}
