//! The core stays pure: no crate that does I/O (Kubernetes client or runtime, tokio, AWS, gRPC/HTTP
//! servers and clients, SQLite) may appear anywhere in weir-core's normal dependency tree, direct or
//! transitive. `cargo tree` answers from Cargo.lock, so this runs with the normal test suite.
//!
//! One exception, pinned exactly: xds-api 0.2 (the Envoy message types) always depends on tonic for
//! its generated service stubs. Through it come tonic with only `codegen` and `prost` (no transport,
//! no server, no channel), tokio-stream, and tokio with only `sync` (no runtime, no net, no timers,
//! no files). That path is allowed with exactly those features; any other path or feature fails.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Crate names that must not appear, and name prefixes (`aws-` covers every SDK crate and
/// aws-smithy-*, `tokio` covers tokio-util, tokio-rustls, ...).
const FORBIDDEN_EXACT: &[&str] =
    &["kube", "kube-client", "kube-runtime", "reqwest", "rusqlite", "libsqlite3-sys", "mio", "h2"];
const FORBIDDEN_PREFIX: &[&str] = &["tokio", "aws-", "tonic", "hyper", "axum"];

/// (crate, the only crate allowed to depend on it, the only features allowed on it).
const ALLOWED: &[(&str, &str, &[&str])] = &[
    ("tonic", "xds-api", &["codegen", "prost"]),
    ("tokio-stream", "tonic", &[]),
    ("tokio", "tokio-stream", &["default", "sync"]),
];

#[derive(Default)]
struct Tree {
    features: BTreeMap<String, BTreeSet<String>>,
    parents: BTreeMap<String, BTreeSet<String>>,
}

/// `cargo tree -p weir-core -e normal`, one line per package: `<depth><name> v<version> <features>`.
fn normal_tree() -> Tree {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = Command::new(cargo)
        .args(["tree", "--offline", "--manifest-path", manifest, "-p", "weir-core", "-e", "normal"])
        .args(["--prefix", "depth", "--format", "{p} {f}"])
        .output()
        .expect("running cargo tree");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut tree = Tree::default();
    let mut path: Vec<String> = Vec::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let digits = line.chars().take_while(char::is_ascii_digit).count();
        let Ok(depth) = line[..digits].parse::<usize>() else { continue };
        let mut words = line[digits..].split_whitespace();
        let name = words.next().unwrap().to_string();
        let _version = words.next();
        let features = words.next().filter(|f| *f != "(*)").unwrap_or("");
        tree.features
            .entry(name.clone())
            .or_default()
            .extend(features.split(',').filter(|f| !f.is_empty()).map(String::from));
        path.truncate(depth);
        if let Some(parent) = path.last() {
            tree.parents.entry(name.clone()).or_default().insert(parent.clone());
        }
        path.push(name);
    }
    tree
}

fn forbidden(name: &str) -> bool {
    FORBIDDEN_EXACT.contains(&name) || FORBIDDEN_PREFIX.iter().any(|p| name.starts_with(p))
}

/// Every forbidden crate in the tree that is not on the pinned xds-api path, with why.
fn violations(tree: &Tree) -> Vec<String> {
    let mut bad = Vec::new();
    for (name, features) in &tree.features {
        if !forbidden(name) {
            continue;
        }
        let parents = tree.parents.get(name).cloned().unwrap_or_default();
        match ALLOWED.iter().find(|(n, _, _)| n == name) {
            Some((_, parent, allowed)) => {
                if parents.iter().any(|p| p != parent) {
                    bad.push(format!("{name} is pulled in by {parents:?}, only {parent} may"));
                }
                let extra: Vec<&String> = features.iter().filter(|f| !allowed.contains(&f.as_str())).collect();
                if !extra.is_empty() {
                    bad.push(format!("{name} has features {extra:?} beyond {allowed:?}"));
                }
            }
            None => bad.push(format!("{name} (pulled in by {parents:?})")),
        }
    }
    bad
}

#[test]
fn no_io_crate_in_the_core_dependency_tree() {
    let tree = normal_tree();
    // The tree was really read: the core and the type crates it is built on are in it.
    for expected in ["weir-core", "k8s-openapi", "kube-core", "serde", "xds-api"] {
        assert!(tree.features.contains_key(expected), "{expected} missing from cargo tree output");
    }
    let bad = violations(&tree);
    assert!(bad.is_empty(), "weir-core depends (directly or transitively) on I/O crates: {bad:#?}");
}

#[test]
fn the_rule_matches_the_families_it_names() {
    for name in ["tokio", "tokio-util", "aws-sdk-route53", "aws-smithy-runtime", "hyper-util", "tonic", "kube"] {
        assert!(forbidden(name), "{name}");
    }
    for name in ["kube-core", "kube-derive", "k8s-openapi", "serde", "prost", "xds-api", "tower-service"] {
        assert!(!forbidden(name), "{name}");
    }
    // The exception is narrow: tokio with a runtime, or tonic reached another way, is refused.
    let tree = |name: &str, parent: &str, features: &[&str]| Tree {
        features: [(name.to_string(), features.iter().map(|f| f.to_string()).collect())].into(),
        parents: [(name.to_string(), [parent.to_string()].into())].into(),
    };
    assert!(violations(&tree("tokio", "tokio-stream", &["sync"])).is_empty());
    assert_eq!(violations(&tree("tokio", "tokio-stream", &["sync", "rt"])).len(), 1);
    assert_eq!(violations(&tree("tonic", "weir-core", &["codegen"])).len(), 1);
    assert_eq!(violations(&tree("tonic", "xds-api", &["transport"])).len(), 1);
    assert_eq!(violations(&tree("rusqlite", "weir-core", &[])).len(), 1);
}
