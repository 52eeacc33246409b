//! Golden tests for translation: `testdata/translate/<case>.in.yaml` (manifests, with a header of
//! `# key: value` comment lines for the cluster weight and flags) → `<case>.out.yaml` (the
//! DesiredState). Regenerate with `WEIR_UPDATE_GOLDEN=1 cargo test --test translate_golden`.
//!
//! Header keys: `cluster-weight` (one weight, or several separated by commas: the output is then one
//! DesiredState per weight), `binding-domain`, `annotation-filter` (`k=v`, repeatable with `;`),
//! `annotation-prefix`, `dev-mode` (`true`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use weir::providers::file::{parse_manifests, snapshot_of};
use weir::translate::{translate, TranslateConfig};

/// The one golden rule, shared with weir-core's golden tests.
#[path = "../core/src/golden.rs"]
#[allow(dead_code)]
mod golden;

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/translate");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".in.yaml"))
        .collect();
    cases.sort();
    cases
}

/// `# key: value` lines at the top of the file.
fn header(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .take_while(|l| l.starts_with('#'))
        .filter_map(|l| l.trim_start_matches('#').split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.contains(' '))
        .collect()
}

fn run_case(input: &Path) -> String {
    let text = std::fs::read_to_string(input).unwrap();
    let h = header(&text);
    let mut cfg = TranslateConfig::default();
    if let Some(d) = h.get("binding-domain") {
        cfg.binding_domain = d.parse().unwrap();
    }
    if let Some(f) = h.get("annotation-filter") {
        cfg.annotation_filters = f.split(';').map(|f| f.parse().unwrap()).collect();
    }
    if let Some(p) = h.get("annotation-prefix") {
        cfg.annotation_prefix = p.clone();
    }
    if let Some(r) = h.get("host-namespaces") {
        cfg.host_namespaces = r.split(';').map(|r| r.parse().unwrap()).collect();
    }
    cfg.dev_mode = h.get("dev-mode").is_some_and(|v| v == "true");
    let weights: Vec<u8> = h
        .get("cluster-weight")
        .expect("every case names its cluster-weight")
        .split(',')
        .map(|w| w.trim().parse().unwrap())
        .collect();
    let objects = parse_manifests(&text).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
    let snapshot = snapshot_of(&objects, 1);
    if let [w] = weights[..] {
        serde_yaml::to_string(&translate(&snapshot, w, &cfg)).unwrap()
    } else {
        let all: BTreeMap<String, _> =
            weights.iter().map(|w| (format!("cluster-weight-{w:03}"), translate(&snapshot, *w, &cfg))).collect();
        serde_yaml::to_string(&all).unwrap()
    }
}

#[test]
fn translate_golden_files() {
    let cases = cases();
    assert!(cases.len() >= 11, "golden cases are missing");
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|input| {
            let out = PathBuf::from(input.to_string_lossy().replace(".in.yaml", ".out.yaml"));
            golden::check_golden(&out, &run_case(input)).err()
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
