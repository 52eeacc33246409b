//! Golden-file assertions for tests: compare with a committed file, or rewrite it when
//! `WEIR_UPDATE_GOLDEN=1` is set.

use std::path::{Path, PathBuf};

pub fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata").join(rel)
}

/// Asserts that `actual` equals the file at `testdata/<rel>`, or rewrites the file under
/// `WEIR_UPDATE_GOLDEN=1`.
pub fn assert_golden(rel: &str, actual: &str) {
    let path = testdata(rel);
    if std::env::var_os("WEIR_UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (regenerate with WEIR_UPDATE_GOLDEN=1)", path.display()));
    pretty_assertions::assert_eq!(
        expected,
        actual,
        "{} differs (regenerate with WEIR_UPDATE_GOLDEN=1)",
        path.display()
    );
}
