//! The incremental index gives, per host, exactly what a full translation gives: a random sequence
//! of object changes (apply and delete of Ingresses, Services, EndpointSlices, TrafficInfras,
//! Gateways, HTTPRoutes, Namespaces, ...) and cluster-weight and live-weight changes, with flushes at
//! random points, then the index's state is compared with translating the final snapshot from
//! scratch, after every flush.
//!
//! The objects are drawn from a small universe of names, hosts and labels so that they interact:
//! hosts shared by several objects (conflicts, path splits), backends that come and go, Envoy
//! Services of TrafficInfras, strategy Services, Gateways and their routes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{json, Value};
use weir_core::index::HostIndex;
use weir_core::model::{Kind, Object, Snapshot};
use weir_core::translate::{translate_with, LiveStrategyWeights, TranslateConfig};
use weir_core::xds::model::TrafficState;

const NAMESPACES: [&str; 2] = ["a", "b"];
const HOSTS: [&str; 4] = ["h0.example.com", "h1.example.com", "*.example.com", "bad_host!"];
const SERVICES: [&str; 5] = ["s0", "s1", "ti-envoy", "ti-blue", "ti-green"];

fn ns() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&NAMESPACES[..])
}
fn host() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&HOSTS[..])
}
fn service() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&SERVICES[..])
}
fn weight_annotation() -> impl Strategy<Value = Option<&'static str>> {
    prop::option::of(prop::sample::select(&["50", "0", "100", "abc"][..]))
}
fn load_balancer() -> impl Strategy<Value = Value> {
    prop::sample::select(&[0usize, 1, 2, 3, 4][..]).prop_map(|i| match i {
        0 => json!([]),
        1 => json!([{"hostname": "lb1.example.net"}]),
        2 => json!([{"hostname": "lb2.example.net"}, {"ip": "192.0.2.1"}]),
        3 => json!([{"ip": "192.0.2.7"}]),
        _ => json!([{"ip": "not an ip"}]),
    })
}
fn created() -> impl Strategy<Value = Option<&'static str>> {
    prop::option::of(prop::sample::select(&["2024-01-01T00:00:00Z", "2024-06-01T00:00:00Z"][..]))
}

fn meta(
    name: &str,
    ns: Option<&str>,
    annotations: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    created: Option<&str>,
    deleting: bool,
) -> Value {
    let mut m = json!({"name": name, "annotations": annotations, "labels": labels});
    if let Some(ns) = ns {
        m["namespace"] = json!(ns);
    }
    if let Some(c) = created {
        m["creationTimestamp"] = json!(c);
    }
    if deleting {
        m["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
    }
    m
}

fn annotations(weight: Option<&str>, hostname: Option<&str>) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    if let Some(w) = weight {
        a.insert("dns.adevinta.com/traffic-weight".to_string(), w.to_string());
    }
    if let Some(h) = hostname {
        a.insert("dns.adevinta.com/hostname".to_string(), h.to_string());
    }
    a
}

fn ingress() -> impl Strategy<Value = Object> {
    (
        ns(),
        prop::sample::select(&["i0", "i1", "i2"][..]),
        prop::collection::vec((host(), prop::collection::vec(service(), 0..3)), 0..3),
        prop::option::of(service()),
        weight_annotation(),
        load_balancer(),
        created(),
        any::<bool>(),
    )
        .prop_map(|(ns, name, rules, default, weight, lb, created, deleting)| {
            let rules: Vec<Value> = rules
                .into_iter()
                .map(|(h, backends)| {
                    let paths: Vec<Value> = backends
                        .iter()
                        .map(|b| json!({"path": "/", "pathType": "Prefix", "backend": {"service": {"name": b, "port": {"number": 80}}}}))
                        .collect();
                    if paths.is_empty() {
                        json!({"host": h})
                    } else {
                        json!({"host": h, "http": {"paths": paths}})
                    }
                })
                .collect();
            let mut spec = json!({"rules": rules});
            if let Some(d) = default {
                spec["defaultBackend"] = json!({"service": {"name": d, "port": {"number": 80}}});
            }
            let v = json!({
                "metadata": meta(name, Some(ns), annotations(weight, None), BTreeMap::new(), created, deleting && name == "i2"),
                "spec": spec,
                "status": {"loadBalancer": {"ingress": lb}},
            });
            Object::Ingress(Arc::new(serde_json::from_value(v).unwrap()))
        })
}

fn k8s_service() -> impl Strategy<Value = Object> {
    (
        ns(),
        service(),
        prop::sample::select(&["ClusterIP", "LoadBalancer", "ExternalName"][..]),
        prop::option::of(host()),
        weight_annotation(),
        prop::option::of(prop::sample::select(&["ti", "other"][..])),
        load_balancer(),
        created(),
    )
        .prop_map(|(ns, name, type_, hostname, weight, ti, lb, created)| {
            let labels: BTreeMap<String, String> =
                ti.map(|t| ("weir.dev/traffic-infra".to_string(), t.to_string())).into_iter().collect();
            let v = json!({
                "metadata": meta(name, Some(ns), annotations(weight, hostname), labels, created, false),
                "spec": {"type": type_, "ports": [{"name": "grpc", "port": 8080}]},
                "status": {"loadBalancer": {"ingress": lb}},
            });
            Object::Service(Arc::new(serde_json::from_value(v).unwrap()))
        })
}

fn slice() -> impl Strategy<Value = Object> {
    (
        ns(),
        prop::sample::select(&["e0", "e1", "e2", "e3"][..]),
        prop::option::of(service()),
        prop::collection::vec((prop::option::of(any::<bool>()), prop::option::of(any::<bool>()), 0u8..3), 0..3),
    )
        .prop_map(|(ns, name, svc, endpoints)| {
            let labels: BTreeMap<String, String> =
                svc.map(|s| ("kubernetes.io/service-name".to_string(), s.to_string())).into_iter().collect();
            let endpoints: Vec<Value> = endpoints
                .into_iter()
                .map(|(ready, terminating, ip)| {
                    let mut c = json!({});
                    if let Some(r) = ready {
                        c["ready"] = json!(r);
                    }
                    if let Some(t) = terminating {
                        c["terminating"] = json!(t);
                    }
                    json!({"addresses": [format!("10.0.0.{ip}")], "conditions": c})
                })
                .collect();
            let v = json!({
                "metadata": meta(name, Some(ns), BTreeMap::new(), labels, None, false),
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": [{"name": "grpc", "port": 8080}],
            });
            Object::EndpointSlice(Arc::new(serde_json::from_value(v).unwrap()))
        })
}

fn traffic_infra() -> impl Strategy<Value = Object> {
    (
        ns(),
        0u32..3,
        0u32..3,
        prop::collection::vec(prop::sample::select(&["s0", "b/s1", "ti-blue"][..]), 0..2),
        any::<bool>(),
    )
        .prop_map(|(ns, blue, green, discovery, status)| {
            let mut v = json!({
                "metadata": meta("ti", Some(ns), BTreeMap::new(), BTreeMap::new(), None, false),
                "spec": {"trafficDefaults": {"blueWeight": blue * 50, "greenWeight": green * 50},
                         "xds": {"discovery": {"services": discovery}}},
            });
            if status {
                v["status"] = json!({"trafficWeights": {"blue": 0, "green": 100}});
            }
            Object::TrafficInfra(Arc::new(serde_json::from_value(v).unwrap()))
        })
}

fn gateway() -> impl Strategy<Value = Object> {
    (
        ns(),
        prop::option::of(host()),
        prop::sample::select(&["Same", "All", "Selector"][..]),
        load_balancer(),
        weight_annotation(),
    )
        .prop_map(|(ns, listener_host, from, addresses, weight)| {
            let addresses: Vec<Value> = addresses
                .as_array()
                .unwrap()
                .iter()
                .map(|a| match (a.get("ip"), a.get("hostname")) {
                    (Some(ip), _) => json!({"type": "IPAddress", "value": ip}),
                    (_, Some(h)) => json!({"type": "Hostname", "value": h}),
                    _ => json!({"value": ""}),
                })
                .collect();
            let mut listener = json!({"name": "http", "protocol": "HTTP", "port": 80,
                "allowedRoutes": {"namespaces": {"from": from, "selector": {"matchLabels": {"team": "x"}}}}});
            if let Some(h) = listener_host {
                listener["hostname"] = json!(h);
            }
            let v = json!({
                "metadata": meta("g0", Some(ns), annotations(weight, None), BTreeMap::new(), None, false),
                "spec": {"gatewayClassName": "c", "listeners": [listener]},
                "status": {"addresses": addresses},
            });
            Object::Gateway(Arc::new(serde_json::from_value(v).unwrap()))
        })
}

fn http_route() -> impl Strategy<Value = Object> {
    (
        ns(),
        prop::sample::select(&["r0", "r1"][..]),
        prop::collection::vec(host(), 0..2),
        prop::option::of(ns()),
        prop::collection::vec(service(), 0..2),
        any::<bool>(),
        weight_annotation(),
        created(),
    )
        .prop_map(|(ns, name, hostnames, parent_ns, backends, accepted, weight, created)| {
            let mut parent = json!({"name": "g0"});
            if let Some(p) = parent_ns {
                parent["namespace"] = json!(p);
            }
            let status = if accepted {
                json!({"parents": [{"parentRef": parent.clone(), "controllerName": "x",
                    "conditions": [{"type": "Accepted", "status": "True"}]}]})
            } else {
                json!({"parents": []})
            };
            let refs: Vec<Value> = backends.iter().map(|b| json!({"name": b, "port": 80})).collect();
            let v = json!({
                "metadata": meta(name, Some(ns), annotations(weight, None), BTreeMap::new(), created, false),
                "spec": {"parentRefs": [parent], "hostnames": hostnames, "rules": [{"backendRefs": refs}]},
                "status": status,
            });
            Object::HttpRoute(Arc::new(serde_json::from_value(v).unwrap()))
        })
}

fn namespace() -> impl Strategy<Value = Object> {
    (ns(), any::<bool>()).prop_map(|(name, team)| {
        let labels: BTreeMap<String, String> =
            if team { BTreeMap::from([("team".to_string(), "x".to_string())]) } else { BTreeMap::new() };
        let v = json!({"metadata": meta(name, None, BTreeMap::new(), labels, None, false)});
        Object::Namespace(Arc::new(serde_json::from_value(v).unwrap()))
    })
}

#[derive(Debug, Clone)]
enum Op {
    Apply(Object),
    Delete(Kind, &'static str, &'static str),
    Flush,
    ClusterWeight(u8),
    Live(Option<(u32, Vec<&'static str>)>),
}

fn op() -> impl Strategy<Value = Op> {
    let name =
        prop::sample::select(&["i0", "i1", "i2", "s0", "s1", "ti-envoy", "ti-blue", "e0", "e1", "ti", "g0", "r0"][..]);
    let kind = prop::sample::select(
        &[Kind::Ingress, Kind::Service, Kind::EndpointSlice, Kind::TrafficInfra, Kind::Gateway, Kind::HttpRoute][..],
    );
    prop_oneof![
        3 => ingress().prop_map(Op::Apply),
        3 => k8s_service().prop_map(Op::Apply),
        3 => slice().prop_map(Op::Apply),
        1 => traffic_infra().prop_map(Op::Apply),
        1 => gateway().prop_map(Op::Apply),
        2 => http_route().prop_map(Op::Apply),
        1 => namespace().prop_map(Op::Apply),
        3 => (kind, ns(), name).prop_map(|(k, ns, n)| Op::Delete(k, ns, n)),
        2 => Just(Op::Flush),
        1 => prop::sample::select(&[0u8, 30, 100][..]).prop_map(Op::ClusterWeight),
        1 => prop::option::of((0u32..2, prop::collection::vec(prop::sample::select(&["a/s1", "b/ti-green"][..]), 0..2)))
            .prop_map(Op::Live),
    ]
}

/// The same objects, kept the plain way: a map replayed into a snapshot.
fn snapshot_of(model: &BTreeMap<(Kind, String, String), Object>) -> Snapshot {
    let mut s = Snapshot::default();
    for o in model.values() {
        s.push(o);
    }
    s.normalize();
    s
}

fn cfg() -> TranslateConfig {
    TranslateConfig { binding_domain: "example.com".parse().unwrap(), ..TranslateConfig::default() }
}

fn check(index: &HostIndex, model: &BTreeMap<(Kind, String, String), Object>, weight: u8, live: &LiveStrategyWeights) {
    let full = translate_with(&snapshot_of(model), weight, &cfg(), live);
    let incremental = index.state();
    pretty_assertions::assert_eq!(incremental, full);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn incremental_equals_full_translation(ops in prop::collection::vec(op(), 1..40), initial_weight in prop::sample::select(&[0u8, 50, 100][..])) {
        let mut index = HostIndex::new(cfg(), initial_weight);
        let mut model: BTreeMap<(Kind, String, String), Object> = BTreeMap::new();
        let mut weight = initial_weight;
        let mut live = LiveStrategyWeights::new();
        for op in ops {
            match op {
                Op::Apply(o) => {
                    let (ns, name) = o.key();
                    model.insert((o.kind(), ns.to_string(), name.to_string()), o.clone());
                    index.apply(o);
                }
                Op::Delete(kind, ns, name) => {
                    let ns = if kind == Kind::Namespace { "" } else { ns };
                    model.remove(&(kind, ns.to_string(), name.to_string()));
                    index.delete(kind, &(ns.to_string(), name.to_string()));
                }
                Op::Flush => {
                    index.flush();
                    check(&index, &model, weight, &live);
                }
                Op::ClusterWeight(w) => {
                    weight = w;
                    index.set_cluster_weight(w);
                }
                Op::Live(state) => {
                    live = match state {
                        None => LiveStrategyWeights::new(),
                        Some((blue, registered)) => {
                            let state = TrafficState {
                                weights: BTreeMap::from([("blue".to_string(), blue * 100), ("green".to_string(), 100)]),
                                registered: registered.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>(),
                                ..TrafficState::default()
                            };
                            ["a/ti".to_string(), "b/ti".to_string()].into_iter().map(|k| (k, state.clone())).collect()
                        }
                    };
                    index.set_live_weights(live.clone());
                }
            }
        }
        index.flush();
        check(&index, &model, weight, &live);
        // The resync finds nothing to repair.
        prop_assert_eq!(index.verify(), weir_core::index::Verified::default());
    }
}

/// Syncing from snapshots (what the DNS loop does) gives the same as applying changes one by one:
/// unchanged objects are skipped, changed ones applied, missing ones deleted.
#[test]
fn sync_applies_only_what_changed() {
    let mk = |name: &str, host: &str| -> Object {
        let v = json!({"metadata": {"name": name, "namespace": "a"},
            "spec": {"rules": [{"host": host}]}, "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}});
        Object::Ingress(Arc::new(serde_json::from_value(v).unwrap()))
    };
    let (x, y) = (mk("x", "x.example.com"), mk("y", "y.example.com"));
    let mut first = Snapshot::default();
    first.push(&x);
    first.push(&y);
    let mut index = HostIndex::new(cfg(), 100);
    assert_eq!(index.sync(&first), 2);
    index.flush();
    assert_eq!(index.take_changed(), BTreeSet::from(["x.example.com".to_string(), "y.example.com".to_string()]));
    assert_eq!(index.sync(&first), 0, "the same objects: nothing to do");
    let mut second = Snapshot::default();
    second.push(&mk("x", "z.example.com"));
    assert_eq!(index.sync(&second), 2, "x changed, y deleted");
    index.flush();
    assert_eq!(
        index.take_changed(),
        BTreeSet::from(["x.example.com".to_string(), "y.example.com".to_string(), "z.example.com".to_string()])
    );
    assert_eq!(index.state(), translate_with(&second, 100, &cfg(), &LiveStrategyWeights::new()));
}
