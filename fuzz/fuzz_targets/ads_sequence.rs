//! A sequence of ADS inputs (SotW and delta requests with chosen, replayed or garbage nonces and
//! versions, NACKs, unknown types, snapshot updates) through the sans-IO state machines.
//! Checks: no panic; every response nonce is fresh; a response carries only resources of its type;
//! after a NACK of version V of a type, V is not sent again for that type until another version of it
//! has been sent (no rejected-config loop); a delta response never both adds and removes one name;
//! under a names cap of 1–4 per type (the input's first byte), a request past it is refused with
//! nothing sent and no event.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use weir_core::xds::ads::{DeltaStream, Event, SotwStream, Step};
use weir_core::xds::model::{BackendEndpoint, EndpointHealth, ProxyConfig, ServiceBackend};
use weir_core::xds::resources::{translate, ResourceType};
use weir_core::xds::snapshot::XdsSnapshot;
use xds_api::pb::envoy::config::core::v3::Node;
use xds_api::pb::envoy::service::discovery::v3 as xdisc;
use xds_api::pb::google::rpc::Status;

const NAMES: [&str; 5] = ["shop", "shop-envoy", "d/p-blue", "d/p-green", "*"];

fn snapshots() -> &'static [Arc<XdsSnapshot>] {
    static SNAPS: OnceLock<Vec<Arc<XdsSnapshot>>> = OnceLock::new();
    SNAPS.get_or_init(|| {
        let cfg = |blue: u32, green: u32, eps: &[&str]| {
            let svc = |name: &str, strategy: &str, eps: &[&str]| ServiceBackend {
                namespace: "d".into(),
                name: name.into(),
                strategy: strategy.into(),
                endpoints: eps
                    .iter()
                    .map(|a| BackendEndpoint {
                        address: a.parse().unwrap(),
                        zone: None,
                        health: EndpointHealth::Healthy,
                    })
                    .collect(),
                port: None,
            };
            ProxyConfig {
                policies: Default::default(),
                name: "shop".into(),
                listener_port: 8080,
                strategies: [("blue".to_string(), blue), ("green".to_string(), green)].into(),
                services: vec![svc("p-blue", "blue", eps), svc("p-green", "green", &[])],
            }
        };
        [cfg(100, 0, &[]), cfg(50, 50, &["10.0.0.1:80"]), cfg(0, 100, &["10.0.0.1:80", "10.0.0.2:80"])]
            .iter()
            .enumerate()
            .map(|(i, c)| Arc::new(XdsSnapshot::new(translate(c), i as u64 + 1)))
            .collect()
    })
}

/// Reads the fuzz input a byte at a time; zeros once it runs out.
struct Input<'a>(&'a [u8]);
impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn pick<'s, T>(&mut self, items: &'s [T]) -> &'s T {
        &items[self.byte() as usize % items.len()]
    }
    fn text(&mut self) -> String {
        let n = (self.byte() % 8) as usize;
        (0..n).map(|_| (b'a' + self.byte() % 26) as char).collect()
    }
}

fn type_url(input: &mut Input) -> String {
    match input.byte() % 6 {
        0..=3 => ResourceType::ALL[(input.byte() % 4) as usize].type_url().to_string(),
        4 => "type.googleapis.com/envoy.config.secret.v3.Secret".to_string(),
        _ => input.text(),
    }
}

/// A nonce or version: one the server sent, or made up.
fn echo(input: &mut Input, sent: &[String]) -> String {
    if !sent.is_empty() && input.byte() % 4 != 0 {
        input.pick(sent).clone()
    } else {
        input.text()
    }
}

fn names(input: &mut Input) -> Vec<String> {
    let n = input.byte() % 4;
    (0..n).map(|_| input.pick(&NAMES).to_string()).collect()
}

fn error(input: &mut Input) -> Option<Status> {
    (input.byte() % 3 == 0).then(|| Status { code: 3, message: "rejected".into(), details: vec![] })
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let snaps = snapshots();
    let mut snap = snaps[0].clone();
    let cap = 1 + usize::from(input.byte() % 4);
    let mut sotw = SotwStream::new().with_max_names(cap);
    let mut delta = DeltaStream::new().with_max_names(cap);
    let node = Some(Node { id: "n1".into(), ..Default::default() });
    // Nonces are fresh per stream.
    let (mut nonces, mut delta_nonces) = (BTreeSet::new(), BTreeSet::new());
    let (mut sent_nonces, mut sent_versions) = (Vec::new(), Vec::new());
    // Per SotW type url: the version the client rejected, until another version of that type is sent.
    let mut rejected: BTreeMap<String, String> = BTreeMap::new();
    let mut last_sent: BTreeMap<String, String> = BTreeMap::new();

    for _ in 0..64 {
        if input.0.is_empty() {
            break;
        }
        let sotw_responses = match input.byte() % 4 {
            0 => {
                snap = input.pick(snaps).clone();
                let d = delta.handle_update(&snap);
                check_delta(&d.responses, &mut delta_nonces);
                sotw.handle_update(&snap)
            }
            1 | 2 => {
                let req = xdisc::DiscoveryRequest {
                    type_url: type_url(&mut input),
                    resource_names: names(&mut input),
                    version_info: echo(&mut input, &sent_versions),
                    response_nonce: if input.byte() % 3 == 0 { String::new() } else { echo(&mut input, &sent_nonces) },
                    node: node.clone(),
                    error_detail: error(&mut input),
                    ..Default::default()
                };
                let type_url = req.type_url.clone();
                let step = sotw.handle_request(req, &snap);
                check_refused(&step);
                for event in &step.events {
                    if let Event::Nack { version, .. } = event {
                        // The machine names the version it had sent, which is what the client rejected.
                        if last_sent.get(&type_url) == Some(version) {
                            rejected.insert(type_url.clone(), version.clone());
                        }
                    }
                }
                step
            }
            _ => {
                let req = xdisc::DeltaDiscoveryRequest {
                    type_url: type_url(&mut input),
                    resource_names_subscribe: names(&mut input),
                    resource_names_unsubscribe: names(&mut input),
                    response_nonce: echo(&mut input, &sent_nonces),
                    node: node.clone(),
                    error_detail: error(&mut input),
                    ..Default::default()
                };
                let d = delta.handle_request(req, &snap);
                check_refused(&d);
                check_delta(&d.responses, &mut delta_nonces);
                continue;
            }
        }
        .responses;
        for r in sotw_responses {
            assert!(nonces.insert(r.nonce.clone()), "nonce {} sent twice", r.nonce);
            assert!(ResourceType::from_type_url(&r.type_url).is_some(), "a response of type {}", r.type_url);
            for res in &r.resources {
                assert_eq!(res.type_url, r.type_url, "a {} resource in a {} response", res.type_url, r.type_url);
            }
            assert_ne!(
                rejected.get(&r.type_url),
                Some(&r.version_info),
                "rejected version {} of {} sent again",
                r.version_info,
                r.type_url
            );
            rejected.remove(&r.type_url);
            last_sent.insert(r.type_url.clone(), r.version_info.clone());
            sent_nonces.push(r.nonce);
            sent_versions.push(r.version_info);
        }
    }
});

fn check_refused<R>(step: &Step<R>) {
    if let Some(refusal) = &step.refused {
        assert!(step.responses.is_empty() && step.events.is_empty(), "{refusal}: a refused request had effects");
    }
}

fn check_delta(responses: &[xdisc::DeltaDiscoveryResponse], nonces: &mut BTreeSet<String>) {
    for r in responses {
        assert!(nonces.insert(r.nonce.clone()), "nonce {} sent twice", r.nonce);
        let added: BTreeSet<&str> = r.resources.iter().map(|x| x.name.as_str()).collect();
        for removed in &r.removed_resources {
            assert!(!added.contains(removed.as_str()), "{removed} both added and removed");
        }
    }
}
