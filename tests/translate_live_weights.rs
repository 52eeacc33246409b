//! Translation with the live strategy weights of `weir xds` (`explain --xds-state`): only strategies
//! that get traffic count towards a host's health.

use std::collections::BTreeMap;

use weir::model::Snapshot;
use weir::providers::file::{parse_manifests, snapshot_of};
use weir::translate::{translate_with, LiveStrategyWeights, TranslateConfig};
use weir::xds::model::TrafficState;

fn snapshot(case: &str) -> Snapshot {
    let path = format!("{}/testdata/translate/{case}.in.yaml", env!("CARGO_MANIFEST_DIR"));
    let objects = parse_manifests(&std::fs::read_to_string(path).unwrap()).unwrap();
    snapshot_of(&objects, 1)
}

fn live(blue: u32, green: u32) -> LiveStrategyWeights {
    let weights = BTreeMap::from([("blue".to_string(), blue), ("green".to_string(), green)]);
    BTreeMap::from([("shop/shop".to_string(), TrafficState { weights, ..TrafficState::default() })])
}

/// With the live weights of `weir xds`, only strategies that get traffic count: blue (weight 100) has
/// no ready endpoint, so the host is drained although green (weight 0) is ready.
#[test]
fn live_weights_drain_a_host_whose_weighted_strategies_cannot_serve() {
    let state = translate_with(&snapshot("traffic-stale-weights"), 100, &TranslateConfig::default(), &live(100, 0));
    let www = state.intent("www.example.com").unwrap();
    assert!(!www.factors.healthy);
    assert_eq!(www.weight, Some(0));
    assert!(www.factors.unhealthy_reason.as_deref().unwrap().contains("blue (weight 100)"));
    assert_eq!(state.intent("static.example.com").unwrap().weight, Some(100));
}

/// After a switch to green, the same endpoints keep the host: green gets the traffic and is ready.
#[test]
fn live_weights_keep_a_host_served_by_its_weighted_strategy() {
    let state = translate_with(&snapshot("traffic-stale-weights"), 100, &TranslateConfig::default(), &live(0, 100));
    let www = state.intent("www.example.com").unwrap();
    assert!(www.factors.healthy, "{:?}", www.factors);
    assert_eq!(www.weight, Some(100));
}
