//! An admin API query string (`POST /traffic?...`) decoded as axum does, then parsed: weights within
//! bounds or an error whose text stays short (client text is clipped).
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use weir::xds::admin::{parse_weights, MAX_WEIGHT};

fuzz_target!(|data: &[u8]| {
    let Ok(params) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(data) else { return };
    let known: BTreeSet<String> = ["blue".to_string(), "green".to_string()].into();
    match parse_weights(&params, &known) {
        Ok(weights) => assert!(weights.values().all(|w| *w <= MAX_WEIGHT) && !weights.is_empty()),
        Err(msg) => assert!(msg.len() < 2 * 1024, "error of {} bytes", msg.len()),
    }
});
