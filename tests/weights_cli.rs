//! `weir weights list|get|set` run as the real binary against an SQLite file in a temp directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use weir::backends::sqlite::SqliteStore;
use weir::backends::{StoredWeight, WeightRow, WeightStore};

fn weir(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir")).args(args).env_remove("WEIR_BACKEND_TYPE").output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A database with two clusters, as two controllers would have created it.
fn seeded() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("weir.db");
    rt().block_on(async {
        let s = SqliteStore::open(&db).await.unwrap();
        s.ensure("eu-west", 100).await.unwrap();
        s.ensure("us-east", 0).await.unwrap();
    });
    (dir, db)
}

fn rows(db: &Path) -> Vec<WeightRow> {
    rt().block_on(async { SqliteStore::open_existing(db).await.unwrap().list().await.unwrap() })
}

#[test]
fn set_prints_what_it_replaced_and_get_and_list_show_it() {
    let (_dir, db) = seeded();
    let db_s = db.to_str().unwrap();
    let out = weir(&["weights", "set", "--db", db_s, "--cluster-name", "eu-west", "--desired", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "eu-west: DesiredWeight 100 -> 0 (CurrentWeight 100; the controller applies it within one \
         --weight-poll-interval)\n"
    );

    let out = weir(&["weights", "get", "--db", db_s, "--cluster-name", "eu-west", "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"ClusterName": "eu-west", "DesiredWeight": 0, "CurrentWeight": 100, "Status": "pending"})
    );

    let out = weir(&["weights", "list", "--db", db_s, "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        v,
        serde_json::json!([
            {"ClusterName": "eu-west", "DesiredWeight": 0, "CurrentWeight": 100, "Status": "pending"},
            {"ClusterName": "us-east", "DesiredWeight": 0, "CurrentWeight": 0, "Status": "in sync"},
        ])
    );

    let out = weir(&["weights", "list", "--db", db_s]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("CLUSTER"), "{text}");
    assert!(text.contains("eu-west  0        100      pending"), "{text}");
    assert!(text.contains("us-east  0        0        in sync"), "{text}");

    let out =
        weir(&["weights", "set", "--db", db_s, "--cluster-name", "us-east", "--desired", "100", "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"ClusterName": "us-east", "PreviousDesiredWeight": 0, "DesiredWeight": 100, "CurrentWeight": 0,
                           "Notes": []})
    );
}

#[test]
fn a_bad_value_exits_non_zero_and_writes_nothing() {
    let (_dir, db) = seeded();
    let db_s = db.to_str().unwrap();
    let before = rows(&db);
    for bad in ["abc", "-1", "101", "1.5", "", " ", "NaN", "Inf", "1e2", "0x10"] {
        let out = weir(&["weights", "set", "--db", db_s, "--cluster-name", "eu-west", "--desired", bad]);
        assert!(!out.status.success(), "{bad:?} was accepted");
        let err = stderr(&out);
        assert!(err.contains("refusing to set DesiredWeight of \"eu-west\""), "{bad:?}: {err}");
        assert!(err.contains(&format!("{bad:?}")), "{bad:?} not named: {err}");
        assert!(err.contains("nothing was written"), "{err}");
        assert!(stdout(&out).is_empty());
        assert_eq!(rows(&db), before, "{bad:?} changed the table");
    }
    // Also with the `=` form and a bad value on a missing database: no file appears.
    let missing = db.with_file_name("missing.db");
    let out = weir(&["weights", "set", "--db", missing.to_str().unwrap(), "--cluster-name", "x", "--desired=-1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("negative"), "{}", stderr(&out));
    assert!(!missing.exists());
}

#[test]
fn unknown_clusters_and_missing_databases_are_named() {
    let (_dir, db) = seeded();
    let db_s = db.to_str().unwrap();
    let before = rows(&db);
    let out = weir(&["weights", "set", "--db", db_s, "--cluster-name", "eu-wset", "--desired", "50"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("\"eu-wset\"") && err.contains("known clusters: eu-west, us-east"), "{err}");
    assert_eq!(rows(&db), before, "set must not create a row");

    let out = weir(&["weights", "get", "--db", db_s, "--cluster-name", "nope"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("known clusters: eu-west, us-east"), "{}", stderr(&out));

    let missing = db.with_file_name("typo.db");
    let out = weir(&["weights", "list", "--db", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    assert!(!missing.exists(), "weir weights must not create a database");
}

#[test]
fn garbage_written_with_sqlite3_is_shown_not_coerced() {
    let (_dir, db) = seeded();
    let db_s = db.to_str().unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "UPDATE weights SET desired_weight = 'abc' WHERE cluster_name = 'eu-west';
         UPDATE weights SET desired_weight = 2.5, current_weight = NULL WHERE cluster_name = 'us-east';",
    )
    .unwrap();
    drop(conn);
    let out = weir(&["weights", "list", "--db", db_s, "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        v,
        serde_json::json!([
            {"ClusterName": "eu-west", "DesiredWeight": "abc", "CurrentWeight": 100,
             "Status": "invalid DesiredWeight: not applied"},
            {"ClusterName": "us-east", "DesiredWeight": "2.5", "CurrentWeight": "NULL",
             "Status": "invalid DesiredWeight: not applied"},
        ])
    );
    let out = weir(&["weights", "get", "--db", db_s, "--cluster-name", "eu-west"]);
    assert!(stdout(&out).contains("\"abc\" (invalid)"), "{}", stdout(&out));
    assert!(stdout(&out).contains("invalid DesiredWeight: not applied"), "{}", stdout(&out));

    // An operator can repair it with set, which reports the garbage it replaced.
    let out = weir(&["weights", "set", "--db", db_s, "--cluster-name", "eu-west", "--desired", "40"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("eu-west: DesiredWeight \"abc\" (invalid) -> 40"), "{}", stdout(&out));
    let row = rows(&db).into_iter().find(|r| r.cluster == "eu-west").unwrap();
    assert_eq!(row.desired, StoredWeight::Valid(40));
}
