//! A webhook request body (an AdmissionReview, or not): a JSON answer or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(json) = weir::operator::webhook::respond(data, &[]) {
        let v: serde_json::Value = serde_json::from_slice(&json).expect("the answer is JSON");
        let _ = v;
    }
});
