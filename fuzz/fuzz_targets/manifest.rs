//! A manifest file's text through the file provider's parser: an error or objects, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(objects) = weir::providers::file::parse_manifests(text) {
            let _ = weir::providers::file::snapshot_of(&objects, 1);
        }
    }
});
