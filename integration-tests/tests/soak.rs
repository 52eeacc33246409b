//! The fault soak (src/bin/soak.rs) for 60 s in the normal suite: it exits non-zero on any violation.

use std::process::Command;

#[test]
fn soak_60s_holds_its_invariants() {
    let out =
        Command::new(env!("CARGO_BIN_EXE_soak")).args(["--duration", "60s"]).output().expect("run the soak binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "soak failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("soak: ok"), "{stdout}");
}
