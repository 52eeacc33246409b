//! The embedded DNS zone: weighted record sets kept in the same SQLite file as the weight store, so
//! that the weir processes sharing a file (one per simulated cluster) share one zone, which weir's
//! built-in DNS server (`dns::server`) answers from.
//!
//! Each record set is one row keyed like Route53's (name, type, set identifier). Rows are written only
//! through [`EmbeddedDns::apply`], which validates every record first; a row that is unreadable anyway
//! (edited by hand) is skipped with a warning rather than failing the zone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::plan::Change;
use super::record::{Ownership, RecordKey, RecordSet, RecordType};
use super::{validate, ApplyReport, DnsError, DnsProvider};
use crate::backends::sqlite::connect;
use crate::reconciler::leader::Fence;

const PROVIDER: &str = "embedded";

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS dns_records (
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    set_identifier TEXT NOT NULL,
    weight INTEGER NOT NULL,
    ttl INTEGER NOT NULL,
    vals TEXT NOT NULL,
    health_check_id TEXT,
    PRIMARY KEY (name, type, set_identifier)
)";

const COLUMNS: &str = "name, type, set_identifier, weight, ttl, vals, health_check_id";

fn call_err(operation: &'static str, message: impl ToString, retryable: bool) -> DnsError {
    DnsError::Call { provider: PROVIDER, operation, message: message.to_string(), retryable }
}

/// One connection to the zone in an SQLite file.
///
/// Clones share the connection. The DNS server opens its own with [`EmbeddedZone::reopen`]: SQLite's
/// `data_version` only moves for commits made by *other* connections.
#[derive(Clone)]
pub struct EmbeddedZone {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for EmbeddedZone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedZone").field("path", &self.path).finish()
    }
}

impl EmbeddedZone {
    /// Opens (creating when absent) the zone in `path`. Blocking: call it at start-up or on a blocking
    /// thread; [`EmbeddedZone::open`] does the latter.
    pub fn open_blocking(path: impl Into<PathBuf>) -> Result<Self, DnsError> {
        let path = path.into();
        let conn = connect(&path, true)
            .and_then(|c| c.execute_batch(SCHEMA).map(|_| c))
            .map_err(|e| call_err("open", format!("{}: {e}", path.display()), false))?;
        Ok(Self { path, conn: Arc::new(Mutex::new(conn)) })
    }

    pub async fn open(path: impl Into<PathBuf>) -> Result<Self, DnsError> {
        let path = path.into();
        tokio::task::spawn_blocking(move || Self::open_blocking(path)).await.map_err(|e| call_err("open", e, false))?
    }

    /// A new, separate connection to the same file.
    pub fn reopen(&self) -> Result<Self, DnsError> {
        Self::open_blocking(self.path.clone())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// SQLite's `PRAGMA data_version`: changes whenever another connection commits to the file. Cheap
    /// (no I/O beyond the WAL index), so it can be polled often.
    pub fn data_version_blocking(&self) -> Result<i64, DnsError> {
        self.conn
            .lock()
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|e| call_err("data_version", e, true))
    }

    /// Every readable record set of the zone, sorted by key. Blocking.
    pub fn all_blocking(&self) -> Result<Vec<RecordSet>, DnsError> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM dns_records ORDER BY name, type, set_identifier"))
            .map_err(|e| call_err("list", e, true))?;
        let rows = stmt.query_map([], read_row).map_err(|e| call_err("list", e, true))?;
        let mut out = Vec::new();
        for row in rows {
            if let Some(r) = row.map_err(|e| call_err("list", e, true))? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Every readable record set of the zone.
    pub async fn all(&self) -> Result<Vec<RecordSet>, DnsError> {
        let zone = self.clone();
        tokio::task::spawn_blocking(move || zone.all_blocking()).await.map_err(|e| call_err("list", e, true))?
    }

    fn current_blocking(&self, hosts: &BTreeSet<String>, owner: &Ownership) -> Result<Vec<RecordSet>, DnsError> {
        let mut conn = self.conn.lock();
        // One read transaction: every name is read from the same snapshot.
        let tx = conn.transaction().map_err(|e| call_err("current", e, true))?;
        let mut hosts = hosts.clone();
        {
            // Hosts this cluster owns elsewhere (removed from its inputs): found through its TXT records.
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM dns_records WHERE type = 'TXT' AND set_identifier = ?1"
                ))
                .map_err(|e| call_err("current", e, true))?;
            let rows = stmt.query_map([&owner.cluster], read_row).map_err(|e| call_err("current", e, true))?;
            for row in rows {
                let Some(record) = row.map_err(|e| call_err("current", e, true))? else { continue };
                if owner.is_owner_txt(&record) {
                    if let Some(host) = owner.host_of_txt(&record.key.name) {
                        hosts.insert(host.to_string());
                    }
                }
            }
        }
        let mut out = BTreeMap::new();
        {
            let mut stmt = tx
                .prepare_cached(&format!("SELECT {COLUMNS} FROM dns_records WHERE name = ?1"))
                .map_err(|e| call_err("current", e, true))?;
            for host in &hosts {
                for name in [host.clone(), owner.txt_name(host)] {
                    let rows = stmt.query_map([&name], read_row).map_err(|e| call_err("current", e, true))?;
                    for row in rows {
                        if let Some(r) = row.map_err(|e| call_err("current", e, true))? {
                            out.insert(r.key.clone(), r);
                        }
                    }
                }
            }
        }
        tx.commit().map_err(|e| call_err("current", e, true))?;
        Ok(out.into_values().collect())
    }

    /// Applies one batch in one transaction. A change that cannot be made (invalid record, delete of a
    /// record that differs from the published one) fails alone; the rest lands.
    fn apply_batch_blocking(&self, batch: Vec<Change>, report: &mut ApplyReport) {
        let mut conn = self.conn.lock();
        let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                let msg = e.to_string();
                report.failed.extend(batch.into_iter().map(|c| (c, call_err("apply", &msg, true))));
                return;
            }
        };
        let mut applied = Vec::new();
        let mut failed = Vec::new();
        for change in batch {
            match apply_one(&tx, &change) {
                Ok(()) => applied.push(change),
                Err(e) => failed.push((change, e)),
            }
        }
        match tx.commit() {
            Ok(()) => report.applied.extend(applied),
            Err(e) => {
                let msg = e.to_string();
                failed.extend(applied.into_iter().map(|c| (c, call_err("apply", &msg, true))));
            }
        }
        report.failed.extend(failed);
    }
}

fn normalized(record: &RecordSet) -> RecordSet {
    let mut r = record.clone();
    r.values.sort();
    r
}

fn apply_one(tx: &rusqlite::Transaction<'_>, change: &Change) -> Result<(), DnsError> {
    match change {
        Change::Upsert { record, .. } => {
            validate(record)?;
            let r = normalized(record);
            let vals = serde_json::to_string(&r.values).map_err(|e| call_err("upsert", e, false))?;
            tx.execute(
                &format!("INSERT OR REPLACE INTO dns_records ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
                params![
                    r.key.name,
                    r.key.rtype.as_str(),
                    r.key.set_identifier,
                    r.weight,
                    r.ttl,
                    vals,
                    r.health_check_id
                ],
            )
            .map_err(|e| call_err("upsert", e, true))?;
            Ok(())
        }
        Change::Delete { record } => {
            let k = &record.key;
            let published = tx
                .query_row(
                    &format!("SELECT {COLUMNS} FROM dns_records WHERE name = ?1 AND type = ?2 AND set_identifier = ?3"),
                    params![k.name, k.rtype.as_str(), k.set_identifier],
                    read_row,
                )
                .optional()
                .map_err(|e| call_err("delete", e, true))?
                .flatten();
            // As Route53 does: a delete names the exact record set, so a stale plan never removes a
            // record someone else changed meanwhile. The next reconcile reads it again.
            match published {
                Some(p) if p == normalized(record) => {
                    tx.execute(
                        "DELETE FROM dns_records WHERE name = ?1 AND type = ?2 AND set_identifier = ?3",
                        params![k.name, k.rtype.as_str(), k.set_identifier],
                    )
                    .map_err(|e| call_err("delete", e, true))?;
                    Ok(())
                }
                Some(p) => Err(call_err(
                    "delete",
                    format!(
                        "{k}: the published record (weight {}, ttl {}, values {:?}) differs from the one to delete \
                         (weight {}, ttl {}, values {:?})",
                        p.weight, p.ttl, p.values, record.weight, record.ttl, record.values
                    ),
                    true,
                )),
                None => Err(call_err("delete", format!("{k}: no such record is published"), true)),
            }
        }
    }
}

/// One row as a record set; `None` (with a warning) when the row was edited into something unreadable.
fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<RecordSet>> {
    let name: String = r.get(0)?;
    let parsed = (|| -> Result<RecordSet, String> {
        let rtype: String = r.get(1).map_err(|e| format!("type: {e}"))?;
        let set_identifier: String = r.get(2).map_err(|e| format!("set_identifier: {e}"))?;
        let weight: i64 = r.get(3).map_err(|e| format!("weight: {e}"))?;
        let ttl: i64 = r.get(4).map_err(|e| format!("ttl: {e}"))?;
        let vals: String = r.get(5).map_err(|e| format!("vals: {e}"))?;
        let health_check_id: Option<String> = r.get(6).map_err(|e| format!("health_check_id: {e}"))?;
        Ok(RecordSet {
            key: RecordKey { name: name.clone(), rtype: rtype.parse::<RecordType>()?, set_identifier },
            weight: u8::try_from(weight).map_err(|_| format!("weight {weight} is outside 0-255"))?,
            ttl: u32::try_from(ttl).map_err(|_| format!("ttl {ttl} is out of range"))?,
            values: serde_json::from_str(&vals)
                .map_err(|e| format!("vals {vals:?} is not a JSON array of strings: {e}"))?,
            health_check_id,
            alias: None,
        })
    })();
    match parsed {
        Ok(record) => Ok(Some(record)),
        Err(reason) => {
            tracing::warn!(name, reason, "skipping unreadable row of the embedded DNS zone");
            Ok(None)
        }
    }
}

/// The `embedded` DNS provider: publishes into an [`EmbeddedZone`].
#[derive(Debug, Clone)]
pub struct EmbeddedDns {
    zone: EmbeddedZone,
    fence: Fence,
}

impl EmbeddedDns {
    /// A provider that always writes (no leader election); see [`Self::with_fence`].
    pub fn new(zone: EmbeddedZone) -> Self {
        Self { zone, fence: Fence::always() }
    }

    /// Writes each batch only while `fence` is open.
    pub fn with_fence(mut self, fence: Fence) -> Self {
        self.fence = fence;
        self
    }

    pub fn zone(&self) -> &EmbeddedZone {
        &self.zone
    }
}

#[async_trait::async_trait]
impl DnsProvider for EmbeddedDns {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    async fn current(&self, hosts: &BTreeSet<String>, owner: &Ownership) -> Result<Vec<RecordSet>, DnsError> {
        let (zone, hosts, owner) = (self.zone.clone(), hosts.clone(), owner.clone());
        tokio::task::spawn_blocking(move || zone.current_blocking(&hosts, &owner))
            .await
            .map_err(|e| call_err("current", e, true))?
    }

    async fn apply(&self, batches: Vec<Vec<Change>>) -> ApplyReport {
        let (zone, fence) = (self.zone.clone(), self.fence.clone());
        let all: Vec<Change> = batches.iter().flatten().cloned().collect();
        let joined = tokio::task::spawn_blocking(move || {
            let mut report = ApplyReport::default();
            for batch in batches {
                // Checked right before each batch's transaction.
                match fence.check() {
                    Ok(()) => zone.apply_batch_blocking(batch, &mut report),
                    Err(source) => report.failed.extend(batch.into_iter().map(|c| {
                        (c, DnsError::Fenced { provider: PROVIDER, operation: "apply", source: source.clone() })
                    })),
                }
            }
            report
        })
        .await;
        joined.unwrap_or_else(|e| {
            let msg = e.to_string();
            ApplyReport {
                applied: vec![],
                failed: all.into_iter().map(|c| (c, call_err("apply", &msg, true))).collect(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn mk(name: &str, rtype: RecordType, cluster: &str, weight: u8, values: &[&str]) -> RecordSet {
        RecordSet {
            key: RecordKey { name: name.into(), rtype, set_identifier: cluster.into() },
            weight,
            ttl: 60,
            values: values.iter().map(|v| v.to_string()).collect(),
            health_check_id: None,
            alias: None,
        }
    }

    fn upsert(r: &RecordSet) -> Change {
        Change::Upsert { record: r.clone(), previous: None }
    }

    fn txt(owner: &Ownership, host: &str) -> RecordSet {
        let value = owner.txt_value(&crate::model::ObjectRef::new("Ingress", "default", host));
        mk(&owner.txt_name(host), RecordType::Txt, &owner.cluster, 1, &[&value])
    }

    /// An ownership TXT as weir wrote it before the opaque id: still the cluster's.
    fn old_format_txt(owner: &Ownership, host: &str) -> RecordSet {
        let value = format!("heritage=weir,weir/owner={},weir/resource=ingress/default/{host}", owner.cluster);
        mk(&owner.txt_name(host), RecordType::Txt, &owner.cluster, 1, &[&value])
    }

    fn zone() -> (tempfile::TempDir, EmbeddedDns) {
        let dir = tempfile::tempdir().unwrap();
        let zone = EmbeddedZone::open_blocking(dir.path().join("weir.db")).unwrap();
        (dir, EmbeddedDns::new(zone))
    }

    #[tokio::test]
    async fn apply_then_current_round_trip() {
        let (_dir, dns) = zone();
        let eu = Ownership::new("eu");
        let us = Ownership::new("us");
        let a_eu = mk("api.example.com", RecordType::A, "eu", 70, &["10.0.0.2", "10.0.0.1"]);
        let a_us = mk("api.example.com", RecordType::A, "us", 30, &["10.1.0.1"]);
        let old_eu = mk("old.example.com", RecordType::Cname, "eu", 100, &["lb.eu.example.net"]);
        let other = mk("unrelated.example.com", RecordType::A, "us", 5, &["10.9.9.9"]);
        let legacy_eu = mk("legacy.example.com", RecordType::Cname, "eu", 100, &["lb.eu.example.net"]);
        let report = dns
            .apply(vec![
                vec![upsert(&a_eu), upsert(&txt(&eu, "api.example.com"))],
                vec![upsert(&a_us), upsert(&txt(&us, "api.example.com")), upsert(&other)],
                vec![upsert(&old_eu), upsert(&txt(&eu, "old.example.com"))],
                vec![upsert(&legacy_eu), upsert(&old_format_txt(&eu, "legacy.example.com"))],
            ])
            .await;
        assert!(report.is_complete(), "{:?}", report.failed);
        assert_eq!(report.applied.len(), 9);

        let hosts = BTreeSet::from(["api.example.com".to_string()]);
        let current = dns.current(&hosts, &eu).await.unwrap();
        let keys: Vec<String> = current.iter().map(|r| r.key.to_string()).collect();
        // Every cluster's records at the asked host and its TXT name, plus what eu owns elsewhere
        // (marked by an id, or in the old format); nothing of unrelated names.
        assert_eq!(
            keys,
            [
                "_weir.api.example.com TXT [eu]",
                "_weir.api.example.com TXT [us]",
                "_weir.legacy.example.com TXT [eu]",
                "_weir.old.example.com TXT [eu]",
                "api.example.com A [eu]",
                "api.example.com A [us]",
                "legacy.example.com CNAME [eu]",
                "old.example.com CNAME [eu]",
            ]
        );
        let mut sorted = a_eu.clone();
        sorted.values.sort();
        assert!(current.contains(&sorted), "values come back sorted");

        // us owns nothing at old.example.com, so it does not see it.
        let current = dns.current(&BTreeSet::new(), &us).await.unwrap();
        let names: BTreeSet<&str> = current.iter().map(|r| r.key.name.as_str()).collect();
        assert_eq!(names, BTreeSet::from(["_weir.api.example.com", "api.example.com"]));

        // Upsert replaces.
        let mut a_eu2 = a_eu.clone();
        a_eu2.weight = 0;
        assert!(dns.apply(vec![vec![upsert(&a_eu2)]]).await.is_complete());
        let all = dns.zone().all().await.unwrap();
        assert_eq!(all.iter().find(|r| r.key == a_eu.key).unwrap().weight, 0);
        assert_eq!(all.len(), 9);
    }

    #[tokio::test]
    async fn delete_requires_the_published_record() {
        let (_dir, dns) = zone();
        let a = mk("api.example.com", RecordType::A, "eu", 70, &["10.0.0.1"]);
        assert!(dns.apply(vec![vec![upsert(&a)]]).await.is_complete());

        let mut stale = a.clone();
        stale.weight = 50;
        let report = dns.apply(vec![vec![Change::Delete { record: stale.clone() }]]).await;
        assert_eq!(report.failed.len(), 1);
        assert!(report.failed[0].1.to_string().contains("differs"), "{}", report.failed[0].1);
        assert_eq!(dns.zone().all().await.unwrap(), vec![a.clone()], "a mismatched delete removes nothing");

        let missing = mk("nope.example.com", RecordType::A, "eu", 70, &["10.0.0.1"]);
        let report = dns.apply(vec![vec![Change::Delete { record: missing }, Change::Delete { record: a }]]).await;
        assert_eq!(report.failed.len(), 1);
        assert_eq!(report.applied.len(), 1);
        assert!(dns.zone().all().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_invalid_record_fails_alone() {
        let (_dir, dns) = zone();
        let good = mk("api.example.com", RecordType::A, "eu", 70, &["10.0.0.1"]);
        let bad_ip = mk("web.example.com", RecordType::A, "eu", 70, &["not-an-ip"]);
        let bad_name = mk("bad name.example.com", RecordType::Cname, "eu", 70, &["lb.example.net"]);
        let good2 = mk("www.example.com", RecordType::Cname, "eu", 10, &["lb.example.net"]);
        let report =
            dns.apply(vec![vec![upsert(&good), upsert(&bad_ip)], vec![upsert(&bad_name), upsert(&good2)]]).await;
        assert_eq!(report.applied.len(), 2);
        assert_eq!(report.failed.len(), 2);
        for (change, err) in &report.failed {
            assert!(matches!(err, DnsError::InvalidRecord { .. }), "{err}");
            assert!(change.record() == &bad_ip || change.record() == &bad_name);
        }
        assert_eq!(dns.zone().all().await.unwrap(), vec![good, good2]);
    }

    #[tokio::test]
    async fn hand_edited_rows_are_skipped_not_fatal() {
        let (_dir, dns) = zone();
        let good = mk("api.example.com", RecordType::A, "eu", 70, &["10.0.0.1"]);
        assert!(dns.apply(vec![vec![upsert(&good)]]).await.is_complete());
        let conn = Connection::open(dns.zone().path()).unwrap();
        conn.execute_batch(
            "INSERT INTO dns_records VALUES ('x.example.com', 'MX', 'eu', 1, 60, '[\"a\"]', NULL);
             INSERT INTO dns_records VALUES ('y.example.com', 'A', 'eu', 999, 60, '[\"10.0.0.1\"]', NULL);
             INSERT INTO dns_records VALUES ('z.example.com', 'A', 'eu', 1, 60, 'not json', NULL);
             INSERT INTO dns_records VALUES ('w.example.com', 'A', 'eu', 'abc', 60, '[]', NULL);",
        )
        .unwrap();
        assert_eq!(dns.zone().all().await.unwrap(), vec![good]);
    }

    #[tokio::test]
    async fn two_connections_share_the_zone_and_data_version_moves() {
        let (_dir, dns) = zone();
        let reader = dns.zone().reopen().unwrap();
        let v0 = reader.data_version_blocking().unwrap();
        assert_eq!(reader.data_version_blocking().unwrap(), v0);
        let a = mk("api.example.com", RecordType::A, "eu", 70, &["10.0.0.1"]);
        assert!(dns.apply(vec![vec![upsert(&a)]]).await.is_complete());
        assert_ne!(reader.data_version_blocking().unwrap(), v0);
        assert_eq!(reader.all_blocking().unwrap(), vec![a]);
    }
}
