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
    for name in [
        "trafficinfras.weir.dev",
        "namespaceconfigs.weir.dev",
        "backendtrafficpolicies.weir.dev",
        "virtualservices.servicemesh.l7mp.io",
    ] {
        assert!(text.contains(&format!("name: {name}")), "missing {name}");
    }
    assert_eq!(text.matches("\n---\n").count() + usize::from(text.starts_with("---\n")), 4);
}

#[test]
fn malformed_annotation_filter_fails_at_startup() {
    let out = weir().args(["plan", "--cluster-name", "eu", "--annotation-filter", "no-equals-sign"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("key=value"));
}

#[test]
fn adopt_txt_prefix_and_suffix_together_fail_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let out = weir()
        .args(["plan", "--cluster-name", "eu", "--provider", "file", "--manifests"])
        .arg(dir.path())
        .args(["--backend-type", "sqlite", "--dns-provider", "embedded", "--db"])
        .arg(dir.path().join("w.db"))
        .args(["--adopt-owner", "old", "--adopt-txt-prefix", "txt.", "--adopt-txt-suffix", "-txt"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mutually exclusive"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_malformed_host_namespaces_flag_fails_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let out = weir()
        .args(["plan", "--cluster-name", "eu", "--provider", "file", "--manifests"])
        .arg(dir.path())
        .args(["--backend-type", "sqlite", "--dns-provider", "embedded", "--db"])
        .arg(dir.path().join("w.db"))
        .args(["--host-namespaces", "shop.example.com"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("DOMAIN=NAMESPACE"), "{stderr}");
}

#[test]
fn a_bad_watch_namespace_fails_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["Shop", "a/b", "shop-"] {
        let out = weir()
            .args(["xds", "--name", "shop", "--provider", "kubernetes", "--watch-namespace", bad])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("is not a namespace name"), "{bad}: {stderr}");
    }
    // The file provider reads every namespace: the flag would mean nothing there.
    let out = weir()
        .args(["xds", "--name", "shop", "--provider", "file", "--manifests"])
        .arg(dir.path())
        .args(["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--watch-namespace", "partner"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--watch-namespace applies to --provider kubernetes only"), "{stderr}");
}

/// Every flag README.md and docs/*.md give a `weir <command>` (in code, commands continued with `\`
/// included) is in that command's `--help`.
#[test]
fn every_documented_flag_exists() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    files.extend(std::fs::read_dir(root.join("docs")).unwrap().map(|e| e.unwrap().path()));
    let commands = ["controller", "xds", "local", "weights", "explain", "plan", "crd"];
    let mut help: std::collections::HashMap<Vec<String>, String> = Default::default();
    let (mut checked, mut missing) = (0, Vec::new());
    for file in files.iter().filter(|f| f.extension().is_some_and(|e| e == "md")) {
        let text = std::fs::read_to_string(file).unwrap().replace("\\\n", " ");
        for line in text.lines() {
            for (at, _) in line.match_indices("weir ") {
                if line[..at].ends_with(|c: char| c.is_alphanumeric() || c == '-' || c == '_') {
                    continue;
                }
                // The command line runs to the end of its code span, table cell or shell pipeline.
                let rest = &line[at + 5..];
                let end = rest.find(['`', '|', '&', ';', ')']).unwrap_or(rest.len());
                let mut words = rest[..end].split_whitespace().peekable();
                let Some(cmd) = words.next().filter(|w| commands.contains(w)) else { continue };
                let mut path = vec![cmd.to_string()];
                if cmd == "weights" {
                    if let Some(sub) = words.next_if(|w| ["list", "get", "set", "ramp", "history"].contains(w)) {
                        path.push(sub.to_string());
                    }
                }
                let usage = help.entry(path.clone()).or_insert_with(|| {
                    let out = weir().args(&path).arg("--help").output().unwrap();
                    assert!(out.status.success(), "weir {path:?} --help");
                    String::from_utf8(out.stdout).unwrap()
                });
                for flag in words.filter(|w| w.starts_with("--")) {
                    let flag = flag.split('=').next().unwrap().trim_end_matches([',', '.', ':']);
                    checked += 1;
                    if !usage.contains(&format!("{flag} ")) && !usage.contains(&format!("{flag}\n")) {
                        missing.push(format!("{}: weir {} {flag}", file.display(), path.join(" ")));
                    }
                }
            }
        }
    }
    assert!(checked > 20, "only {checked} documented flags found: is the scan broken?");
    assert!(missing.is_empty(), "documented flags that `--help` does not list:\n{}", missing.join("\n"));
}
