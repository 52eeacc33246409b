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
    update_requested_by(std::env::var_os("WEIR_UPDATE_GOLDEN").as_deref())
}

/// The rule of [`update_requested`] for a value of the variable (`None`: unset).
fn update_requested_by(value: Option<&std::ffi::OsStr>) -> bool {
    match value {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn only_1_regenerates_and_unset_compares() {
        assert!(!update_requested_by(None));
        assert!(update_requested_by(Some(OsStr::new("1"))));
    }

    #[test]
    fn any_other_value_fails_instead_of_passing_or_regenerating() {
        for v in ["", "0", "true", "yes", " 1", "1 "] {
            let r = std::panic::catch_unwind(|| update_requested_by(Some(OsStr::new(v))));
            let message = r.expect_err(&format!("WEIR_UPDATE_GOLDEN={v:?} was accepted"));
            let text = message.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(text.contains("set it to 1"), "{v:?}: {text}");
        }
    }

    #[test]
    fn a_difference_is_an_error_and_equal_text_passes() {
        let dir = std::env::temp_dir().join(format!("weir-golden-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("case.out.yaml");
        std::fs::write(&path, "a: 1\n").unwrap();
        // Only when the variable is unset: under WEIR_UPDATE_GOLDEN=1 check_golden rewrites.
        if std::env::var_os("WEIR_UPDATE_GOLDEN").is_none() {
            assert_eq!(check_golden(&path, "a: 1\n"), Ok(()));
            let e = check_golden(&path, "a: 2\n").unwrap_err();
            assert!(e.contains("differs") && e.contains("WEIR_UPDATE_GOLDEN=1"), "{e}");
            let e = check_golden(&dir.join("missing.out.yaml"), "a: 1\n").unwrap_err();
            assert!(e.contains("regenerate with WEIR_UPDATE_GOLDEN=1"), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
