//! An annotation value through the weight parsers: a weight in 0..=100 or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(w) = weir::weight::parse_annotation_weight(text) {
            assert!(w <= 100, "{text:?} gave {w}");
        }
        if let Ok(w) = weir::weight::parse_strict_weight(text) {
            assert!(w <= 100, "{text:?} gave {w}");
        }
    }
});
