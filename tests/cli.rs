//! The binary's own command-line contract. (Its presence also makes `cargo test --workspace` build the
//! `weir` binary that `integration-tests/` runs.)

use std::process::Command;

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

#[test]
fn crd_prints_every_crd_as_one_yaml_stream() {
    let out = weir().arg("crd").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    for name in ["trafficinfras.weir.dev", "namespaceconfigs.weir.dev", "backendtrafficpolicies.weir.dev"] {
        assert!(text.contains(&format!("name: {name}")), "missing {name}");
    }
    assert_eq!(text.matches("\n---\n").count() + usize::from(text.starts_with("---\n")), 3);
}

#[test]
fn malformed_annotation_filter_fails_at_startup() {
    let out = weir().args(["plan", "--cluster-name", "eu", "--annotation-filter", "no-equals-sign"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("key=value"));
}
