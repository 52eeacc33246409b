//! Who wrote when, read from `weir`'s JSON logs (`WEIR_LOG_FORMAT=json`, `weir=debug`): every DNS
//! batch the DNS loop sends ("DNS batch: writing" … "DNS batch: done"), every CurrentWeight ack, and
//! every time a replica became the leader. [`check_single_writer`] is the fencing invariant.

use std::path::Path;

/// One write: a DNS batch (from its start to its end) or an ack (a point: logged after it landed).
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub replica: String,
    /// Seconds since the Unix epoch (the machine's wall clock, shared by every process).
    pub start: f64,
    pub end: f64,
    pub what: &'static str,
}

/// What one replica's log says.
#[derive(Debug, Default, Clone)]
pub struct ReplicaLog {
    pub writes: Vec<Write>,
    /// When it logged "became the leader".
    pub became_leader: Vec<f64>,
}

fn timestamp(line: &serde_json::Value) -> Option<f64> {
    let ts: k8s_openapi::jiff::Timestamp = line["timestamp"].as_str()?.parse().ok()?;
    Some(ts.as_nanosecond() as f64 / 1e9)
}

/// Parses one replica's log text. Lines that are not JSON are skipped.
pub fn parse(replica: &str, text: &str) -> ReplicaLog {
    let mut log = ReplicaLog::default();
    let mut open: Option<f64> = None;
    let mut last = 0.0;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let Some(t) = timestamp(&v) else { continue };
        last = t;
        let fields = &v["fields"];
        match fields["message"].as_str().unwrap_or_default() {
            "DNS batch: writing" => open = Some(t),
            "DNS batch: done" => {
                let start = open.take().unwrap_or(t);
                if fields["applied"].as_u64().unwrap_or(0) > 0 {
                    log.writes.push(Write { replica: replica.into(), start, end: t, what: "dns" });
                }
            }
            m if m.starts_with("acknowledged") => {
                log.writes.push(Write { replica: replica.into(), start: t, end: t, what: "ack" })
            }
            "became the leader" => log.became_leader.push(t),
            _ => {}
        }
    }
    // A batch that started and never ended (the process was killed mid-apply) may have landed: it
    // counts as writing until the process's last log line (it logs at least every weight poll).
    if let Some(start) = open {
        log.writes.push(Write { replica: replica.into(), start, end: last.max(start), what: "dns (killed)" });
    }
    log
}

pub fn parse_file(replica: &str, path: &Path) -> ReplicaLog {
    parse(replica, &std::fs::read_to_string(path).unwrap_or_default())
}

/// Never two writers: (1) no two replicas' writes overlap in time; (2) terms do not interleave: once
/// replica R became the leader, no other replica writes before R's later writes of that term. Returns
/// every violation found.
pub fn check_single_writer(logs: &[ReplicaLog]) -> Vec<String> {
    let writes: Vec<&Write> = logs.iter().flat_map(|l| &l.writes).collect();
    let mut violations = Vec::new();
    for (i, w) in writes.iter().enumerate() {
        for q in &writes[i + 1..] {
            if q.replica != w.replica && q.start < w.end && w.start < q.end {
                violations.push(format!("overlapping writes: {w:?} and {q:?}"));
            }
        }
    }
    for log in logs {
        for w in &log.writes {
            let Some(term) = log.became_leader.iter().copied().filter(|b| *b <= w.start).reduce(f64::max) else {
                violations.push(format!("a write before becoming the leader: {w:?}"));
                continue;
            };
            for q in writes.iter().filter(|q| q.replica != w.replica && term < q.start && q.start < w.start) {
                violations.push(format!(
                    "{} wrote at {:.3} during the term {} began at {term:.3} (its write at {:.3}): {q:?}",
                    q.replica, q.start, w.replica, w.start
                ));
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(r: &str, start: f64, end: f64) -> Write {
        Write { replica: r.into(), start, end, what: "dns" }
    }

    #[test]
    fn handover_is_fine_interleaving_and_overlap_are_not() {
        let a = ReplicaLog { writes: vec![w("a", 1.0, 1.1), w("a", 2.0, 2.1)], became_leader: vec![0.5] };
        let b = ReplicaLog { writes: vec![w("b", 5.0, 5.1)], became_leader: vec![4.0] };
        assert!(check_single_writer(&[a.clone(), b.clone()]).is_empty());
        // a writes again after b became the leader and wrote: two leaders.
        let mut a2 = a.clone();
        a2.writes.push(w("a", 5.5, 5.6));
        let mut b2 = b.clone();
        b2.writes.push(w("b", 6.0, 6.1));
        assert!(!check_single_writer(&[a2, b2]).is_empty());
        // Overlap.
        let mut a3 = a;
        a3.writes.push(w("a", 4.9, 5.05));
        assert!(!check_single_writer(&[a3, b]).is_empty());
    }

    #[test]
    fn parses_weir_json_lines() {
        let text = r#"{"timestamp":"2026-12-01T22:00:00.100000Z","level":"INFO","fields":{"message":"became the leader"}}
{"timestamp":"2026-12-01T22:00:01.000000Z","level":"DEBUG","fields":{"message":"DNS batch: writing","changes":2}}
{"timestamp":"2026-12-01T22:00:01.250000Z","level":"DEBUG","fields":{"message":"DNS batch: done","applied":2,"failed":0}}
{"timestamp":"2026-12-01T22:00:02.000000Z","level":"DEBUG","fields":{"message":"DNS batch: writing","changes":2}}
{"timestamp":"2026-12-01T22:00:02.010000Z","level":"DEBUG","fields":{"message":"DNS batch: done","applied":0,"failed":2}}
{"timestamp":"2026-12-01T22:00:03.000000Z","level":"INFO","fields":{"message":"acknowledged: CurrentWeight := DesiredWeight"}}"#;
        let log = parse("a", text);
        assert_eq!(log.became_leader.len(), 1);
        assert_eq!(log.writes.len(), 2, "a batch that applied nothing is not a write: {log:?}");
        assert!((log.writes[0].end - log.writes[0].start - 0.25).abs() < 1e-6);
        assert_eq!(log.writes[1].what, "ack");
    }
}
