//! Prepares the DNS benchmark (scripts/bench-dns.sh): one set of records written both into weir's
//! embedded zone (an SQLite file, two weighted record sets per name, as two clusters publish them)
//! and into a Knot DNS zone file (the same values, unweighted: Knot has no weighted choice), plus a
//! dnsperf query file.
//!
//! `bench_dns DIR [NAMES]` writes DIR/weir.db, DIR/example.com.zone and DIR/queries.txt.

use std::fmt::Write as _;
use std::path::PathBuf;

use weir::dns::embedded::{EmbeddedDns, EmbeddedZone};
use weir::dns::plan::Change;
use weir::dns::record::{RecordKey, RecordSet, RecordType};
use weir::dns::DnsProvider;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or_else(|| anyhow::anyhow!("usage: bench_dns DIR [NAMES]"))?);
    let names: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(100);
    std::fs::create_dir_all(&dir)?;
    let _ = std::fs::remove_file(dir.join("weir.db"));

    let mut records = Vec::new();
    let mut zone = String::from(
        "$ORIGIN example.com.\n$TTL 60\n@ SOA example.com. hostmaster.example.com. 1 3600 600 86400 30\n@ NS ns\nns A 127.0.0.1\n",
    );
    let mut queries = String::new();
    for i in 0..names {
        let host = format!("host{i}.example.com");
        for (cluster, weight, ip) in [
            ("eu", 70u8, format!("10.0.{}.{}", i / 250, i % 250 + 1)),
            ("us", 30, format!("10.1.{}.{}", i / 250, i % 250 + 1)),
        ] {
            records.push(RecordSet {
                key: RecordKey { name: host.clone(), rtype: RecordType::A, set_identifier: cluster.into() },
                weight,
                ttl: 60,
                values: vec![ip.clone()],
                health_check_id: None,
                alias: None,
            });
            writeln!(zone, "host{i} A {ip}")?;
        }
        writeln!(queries, "{host} A")?;
    }
    let dns = EmbeddedDns::new(EmbeddedZone::open(dir.join("weir.db")).await?);
    let changes = records.into_iter().map(|record| Change::Upsert { record, previous: None }).collect();
    let report = dns.apply(vec![changes]).await;
    anyhow::ensure!(report.is_complete(), "writing the zone: {:?}", report.failed);
    std::fs::write(dir.join("example.com.zone"), zone)?;
    std::fs::write(dir.join("queries.txt"), queries)?;
    println!("{names} names, {} record sets, in {}", names * 2, dir.display());
    Ok(())
}
