//! Golden-file assertions for tests, the one rule every golden test follows: compare with the
//! committed file, or rewrite it when `WEIR_UPDATE_GOLDEN=1`. Any other value of the variable fails
//! the test, so a typo (`WEIR_UPDATE_GOLDEN=true`) can neither pass silently nor regenerate.
//! tests/translate_golden.rs includes this file by path.

use std::path::{Path, PathBuf};

/// `testdata/<rel>` at the workspace root (found from the including crate's manifest directory).
pub fn testdata(rel: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|d| d.join("testdata").is_dir())
        .expect("a testdata directory above the crate");
    root.join("testdata").join(rel)
}

/// True when `WEIR_UPDATE_GOLDEN=1`; panics on any other value.
pub fn update_requested() -> bool {
    match std::env::var_os("WEIR_UPDATE_GOLDEN") {
        None => false,
        Some(v) if v == "1" => true,
        Some(v) => panic!("WEIR_UPDATE_GOLDEN={v:?}: set it to 1 to regenerate golden files, or unset it"),
    }
}

/// Compares `actual` with the file at `path` (or rewrites it under `WEIR_UPDATE_GOLDEN=1`); the
/// error is a readable diff.
pub fn check_golden(path: &Path, actual: &str) -> Result<(), String> {
    if update_requested() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, actual).unwrap();
        return Ok(());
    }
    let expected = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: {e} (regenerate with WEIR_UPDATE_GOLDEN=1)", path.display()))?;
    if expected == actual {
        return Ok(());
    }
    Err(format!(
        "{} differs (regenerate with WEIR_UPDATE_GOLDEN=1):\n{}",
        path.display(),
        pretty_assertions::StrComparison::new(&expected, actual)
    ))
}

/// Asserts that `actual` equals the file at `testdata/<rel>`, or rewrites the file under
/// `WEIR_UPDATE_GOLDEN=1`.
pub fn assert_golden(rel: &str, actual: &str) {
    if let Err(e) = check_golden(&testdata(rel), actual) {
        panic!("{e}");
    }
}
