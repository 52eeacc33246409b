//! The DNS server tested with real queries over UDP and TCP on 127.0.0.1, built and decoded with
//! hickory-proto, against a zone in a real SQLite file.

use std::time::Instant;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType as QType};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

use super::*;
use crate::dns::embedded::EmbeddedDns;
use crate::dns::plan::Change;
use crate::dns::record::RecordKey;
use crate::dns::DnsProvider;

fn mk(name: &str, rtype: RecordType, cluster: &str, weight: u8, values: &[&str]) -> RecordSet {
    RecordSet {
        key: RecordKey { name: name.into(), rtype, set_identifier: cluster.into() },
        weight,
        ttl: 30,
        values: values.iter().map(|v| v.to_string()).collect(),
        health_check_id: None,
        alias: None,
    }
}

struct Server {
    addr: SocketAddr,
    dns: EmbeddedDns,
    registry: Registry,
    _stop: oneshot::Sender<()>,
    handle: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn start(records: &[RecordSet], seed: u64) -> Server {
    start_with(records, DnsServerOptions { rng: StdRng::seed_from_u64(seed), ..Default::default() }).await
}

async fn start_with(records: &[RecordSet], options: DnsServerOptions) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let zone = EmbeddedZone::open(dir.path().join("weir.db")).await.unwrap();
    let dns = EmbeddedDns::new(zone.clone());
    publish(&dns, records).await;
    let mut registry = Registry::default();
    let metrics = DnsServerMetrics::register(&mut registry);
    let (stop, stopped) = oneshot::channel::<()>();
    let (addr, handle) = serve_with("127.0.0.1:0".parse().unwrap(), &zone, metrics, options, async move {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    Server { addr, dns, registry, _stop: stop, handle, _dir: dir }
}

async fn publish(dns: &EmbeddedDns, records: &[RecordSet]) {
    let changes = records.iter().map(|r| Change::Upsert { record: r.clone(), previous: None }).collect();
    let report = dns.apply(vec![changes]).await;
    assert!(report.is_complete(), "{:?}", report.failed);
}

fn query(id: u16, name: &str, qtype: QType, edns: bool) -> Vec<u8> {
    query_msg(id, name, qtype, edns).to_vec().unwrap()
}

fn query_msg(id: u16, name: &str, qtype: QType, edns: bool) -> Message {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(4096);
        m.set_edns(e);
    }
    m
}

/// The response code including EDNS's extended bits.
fn rcode(m: &Message) -> ResponseCode {
    m.metadata.response_code
}

/// The SOA in the authority section, as (owner, serial, minimum).
fn authority_soa(m: &Message) -> Option<(String, u32, u32)> {
    m.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => Some((r.name.to_ascii(), soa.serial, soa.minimum)),
        _ => None,
    })
}

struct Udp(UdpSocket);

impl Udp {
    async fn new(server: SocketAddr) -> Self {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.connect(server).await.unwrap();
        Udp(s)
    }

    async fn send_raw(&self, bytes: &[u8]) {
        self.0.send(bytes).await.unwrap();
    }

    async fn recv(&self) -> Message {
        let mut buf = vec![0u8; 65_535];
        let n = tokio::time::timeout(Duration::from_secs(5), self.0.recv(&mut buf)).await.expect("reply").unwrap();
        Message::from_vec(&buf[..n]).unwrap()
    }

    async fn ask(&self, id: u16, name: &str, qtype: QType) -> Message {
        self.send_raw(&query(id, name, qtype, false)).await;
        let reply = self.recv().await;
        assert_eq!(reply.metadata.id, id);
        reply
    }
}

struct Tcp(TcpStream);

impl Tcp {
    async fn new(server: SocketAddr) -> Self {
        let s = TcpStream::connect(server).await.unwrap();
        s.set_nodelay(true).unwrap();
        Tcp(s)
    }

    async fn ask(&mut self, id: u16, name: &str, qtype: QType) -> Message {
        let q = query(id, name, qtype, false);
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        self.0.write_all(&framed).await.unwrap();
        let len = tokio::time::timeout(Duration::from_secs(5), self.0.read_u16()).await.expect("reply").unwrap();
        let mut buf = vec![0u8; usize::from(len)];
        self.0.read_exact(&mut buf).await.unwrap();
        let reply = Message::from_vec(&buf).unwrap();
        assert_eq!(reply.metadata.id, id);
        reply
    }
}

/// The answer's values as text, sorted.
fn values(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => a.0.to_string(),
            RData::AAAA(a) => a.0.to_string(),
            RData::CNAME(c) => c.0.to_ascii(),
            RData::TXT(t) => t.to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    v.sort();
    v
}

fn metric_text(registry: &Registry) -> String {
    let mut s = String::new();
    prometheus_client::encoding::text::encode(&mut s, registry).unwrap();
    s
}

#[tokio::test]
async fn weighted_choice_over_udp_matches_w_over_sum() {
    let server = start(
        &[
            mk("api.example.com", RecordType::A, "eu", 70, &["10.0.0.1"]),
            mk("api.example.com", RecordType::A, "us", 30, &["10.1.0.1", "10.1.0.2"]),
        ],
        7,
    )
    .await;
    let client = Udp::new(server.addr).await;
    let (mut eu, mut us) = (0u32, 0u32);
    const N: u32 = 3000;
    for i in 0..N {
        let reply = client.ask(i as u16, "api.example.com", QType::A).await;
        assert_eq!(rcode(&reply), ResponseCode::NoError);
        assert!(reply.metadata.authoritative);
        match values(&reply).as_slice() {
            [a] if a == "10.0.0.1" => eu += 1,
            // Every value of the chosen set, never a mix of clusters.
            [a, b] if a == "10.1.0.1" && b == "10.1.0.2" => us += 1,
            other => panic!("unexpected answer {other:?}"),
        }
        assert!(reply.answers.iter().all(|r| r.ttl == 30));
    }
    assert_eq!(eu + us, N);
    let share = f64::from(eu) / f64::from(N);
    assert!((share - 0.70).abs() < 0.03, "eu got {share:.3} of answers, want 0.70 ± 0.03");
    let text = metric_text(&server.registry);
    assert!(text.contains(r#"weir_dns_queries_total{qtype="A",rcode="NOERROR"} 3000"#), "{text}");
    assert!(text.contains("weir_dns_zone_record_sets 2"), "{text}");
}

#[tokio::test]
async fn all_zero_weights_split_equally_over_tcp() {
    let server = start(
        &[
            mk("www.example.com", RecordType::Cname, "eu", 0, &["lb-eu.example.net"]),
            mk("www.example.com", RecordType::Cname, "us", 0, &["lb-us.example.net"]),
            mk("www.example.com", RecordType::Cname, "ap", 0, &["lb-ap.example.net"]),
        ],
        11,
    )
    .await;
    let mut client = Tcp::new(server.addr).await;
    let mut counts = HashMap::<String, u32>::new();
    const N: u32 = 3000;
    for i in 0..N {
        // Many queries on one TCP connection.
        let reply = client.ask(i as u16, "WWW.Example.COM", QType::A).await;
        assert_eq!(rcode(&reply), ResponseCode::NoError);
        let v = values(&reply);
        assert_eq!(v.len(), 1);
        *counts.entry(v[0].clone()).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (target, n) in &counts {
        let share = f64::from(*n) / f64::from(N);
        assert!((share - 1.0 / 3.0).abs() < 0.03, "{target} got {share:.3}, want 1/3 ± 0.03");
    }
}

#[tokio::test]
async fn cname_txt_nxdomain_and_nodata() {
    let server = start(
        &[
            mk("www.example.com", RecordType::Cname, "eu", 100, &["lb-eu.example.net"]),
            mk("api.example.com", RecordType::A, "eu", 100, &["10.0.0.1"]),
            mk("api.example.com", RecordType::Aaaa, "eu", 100, &["2001:db8::1"]),
            mk(
                "_weir.api.example.com",
                RecordType::Txt,
                "eu",
                1,
                &["heritage=weir,weir/owner=eu,weir/resource=ingress/default/api"],
            ),
        ],
        1,
    )
    .await;
    let c = Udp::new(server.addr).await;

    // A and AAAA on a CNAME name get the CNAME.
    for (id, qtype) in [(1, QType::A), (2, QType::AAAA), (3, QType::CNAME)] {
        let r = c.ask(id, "www.example.com", qtype).await;
        assert_eq!(values(&r), ["lb-eu.example.net."], "{qtype}");
        assert_eq!(r.answers[0].record_type(), QType::CNAME);
    }
    let r = c.ask(4, "api.example.com.", QType::AAAA).await;
    assert_eq!(values(&r), ["2001:db8::1"]);
    let r = c.ask(5, "_weir.api.example.com", QType::TXT).await;
    assert_eq!(values(&r), ["heritage=weir,weir/owner=eu,weir/resource=ingress/default/api"]);

    // Unknown name: NXDOMAIN, authoritative.
    let r = c.ask(6, "nope.example.com", QType::A).await;
    assert_eq!(rcode(&r), ResponseCode::NXDomain);
    assert!(r.metadata.authoritative);
    assert!(r.answers.is_empty());
    // A name with records but not of the asked type: NODATA.
    for (id, name, qtype) in [(7, "api.example.com", QType::MX), (8, "api.example.com", QType::CNAME)] {
        let r = c.ask(id, name, qtype).await;
        assert_eq!(rcode(&r), ResponseCode::NoError, "{name} {qtype}");
        assert!(r.answers.is_empty(), "{name} {qtype}");
    }
    // A parent of record names is an empty non-terminal, not NXDOMAIN.
    let r = c.ask(9, "example.com", QType::A).await;
    assert_eq!(rcode(&r), ResponseCode::NoError);
    assert!(r.answers.is_empty());
    // ANY: one choice per type.
    let r = c.ask(10, "api.example.com", QType::ANY).await;
    assert_eq!(values(&r), ["10.0.0.1", "2001:db8::1"]);

    // EDNS is tolerated and echoed.
    c.send_raw(&query(11, "api.example.com", QType::A, true)).await;
    let r = c.recv().await;
    assert_eq!(r.metadata.id, 11);
    assert_eq!(values(&r), ["10.0.0.1"]);
    assert_eq!(r.edns.as_ref().map(|e| e.max_payload()), Some(EDNS_PAYLOAD));

    let text = metric_text(&server.registry);
    assert!(text.contains(r#"weir_dns_queries_total{qtype="A",rcode="NXDOMAIN"} 1"#), "{text}");
    assert!(text.contains(r#"weir_dns_queries_total{qtype="MX",rcode="NOERROR"} 1"#), "{text}");
}

#[tokio::test]
async fn malformed_packets_never_kill_the_server() {
    let server = start(&[mk("api.example.com", RecordType::A, "eu", 100, &["10.0.0.1"])], 1).await;
    let c = Udp::new(server.addr).await;

    // Too short for a header: dropped. The next reply is the valid query's.
    c.send_raw(&[1, 2, 3]).await;
    c.send_raw(&[]).await;
    // A response, not a query: dropped (never answer answers).
    let mut response = query_msg(99, "api.example.com", QType::A, false);
    response.metadata.message_type = MessageType::Response;
    c.send_raw(&response.to_vec().unwrap()).await;
    let r = c.ask(20, "api.example.com", QType::A).await;
    assert_eq!(values(&r), ["10.0.0.1"]);

    // A header that promises a question that is not there: FORMERR to that id.
    let mut truncated = query(21, "api.example.com", QType::A, false);
    truncated.truncate(16);
    c.send_raw(&truncated).await;
    let r = c.recv().await;
    assert_eq!((r.metadata.id, rcode(&r)), (21, ResponseCode::FormErr));

    // Random garbage: whatever comes back is a well-formed response, and the server keeps answering.
    let mut rng = StdRng::seed_from_u64(3);
    for i in 0..200u16 {
        let len = rng.random_range(12..200);
        let mut junk: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        junk[0..2].copy_from_slice(&(1000 + i).to_be_bytes());
        junk[2] &= 0x7f; // QR = query
        let zone = ZoneIndex::default();
        // The same bytes through the handler directly must not panic either.
        let _ = handle(&zone, &junk, &mut rng, Transport::Udp);
        c.send_raw(&junk).await;
    }
    // Not an ordering assertion (some junk gets FORMERR replies): just that it still answers.
    c.send_raw(&query(4242, "api.example.com", QType::A, false)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "server stopped answering after junk");
        let r = c.recv().await;
        if r.metadata.id == 4242 {
            assert_eq!(values(&r), ["10.0.0.1"]);
            break;
        }
    }
    // And TCP still works.
    let mut t = Tcp::new(server.addr).await;
    assert_eq!(values(&t.ask(1, "api.example.com", QType::A).await), ["10.0.0.1"]);
    assert!(!server.handle.is_finished());
}

#[tokio::test]
async fn other_connections_changes_are_answered_within_a_second() {
    let server = start(&[mk("api.example.com", RecordType::A, "eu", 100, &["10.0.0.1"])], 5).await;
    let c = Udp::new(server.addr).await;
    assert_eq!(values(&c.ask(1, "api.example.com", QType::A).await), ["10.0.0.1"]);

    // Another process (its own connection to the file) moves all traffic to us.
    let other = EmbeddedDns::new(EmbeddedZone::open(server.dns.zone().path()).await.unwrap());
    let written = Instant::now();
    publish(
        &other,
        &[
            mk("api.example.com", RecordType::A, "eu", 0, &["10.0.0.1"]),
            mk("api.example.com", RecordType::A, "us", 100, &["10.1.0.1"]),
            mk("new.example.com", RecordType::A, "us", 100, &["10.1.0.9"]),
        ],
    )
    .await;
    let mut id = 2;
    loop {
        let r = c.ask(id, "api.example.com", QType::A).await;
        if values(&r) == ["10.1.0.1"] {
            break;
        }
        id += 1;
        assert!(written.elapsed() < Duration::from_secs(1), "change not served after {:?}", written.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Once seen, the whole new zone is served: eu at 0 never answers while us > 0.
    for i in 0..200 {
        assert_eq!(values(&c.ask(1000 + i, "api.example.com", QType::A).await), ["10.1.0.1"]);
    }
    assert_eq!(values(&c.ask(5000, "new.example.com", QType::A).await), ["10.1.0.9"]);

    // Changes made through this process's own provider are seen too (the server has its own connection).
    publish(&server.dns, &[mk("own.example.com", RecordType::A, "eu", 1, &["10.0.0.7"])]).await;
    let written = Instant::now();
    let mut id = 6000;
    while values(&c.ask(id, "own.example.com", QType::A).await) != ["10.0.0.7"] {
        id += 1;
        assert!(written.elapsed() < Duration::from_secs(1), "own change not served");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let server = start(&[], 1).await;
    let Server { _stop: stop, handle, .. } = server;
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), handle).await.expect("server stops").unwrap();
}

/// The answers of a query through the handler, decoded.
fn ask_index(index: &ZoneIndex, rng: &mut StdRng, name: &str, qtype: QType) -> Message {
    Message::from_vec(&handle(index, &query(1, name, qtype, false), rng, Transport::Tcp).unwrap().bytes).unwrap()
}

#[test]
fn choice_is_weighted_and_deterministic_with_a_seed() {
    let index = ZoneIndex::build(
        vec![
            mk("a.example.com", RecordType::A, "eu", 1, &["10.0.0.1"]),
            mk("a.example.com", RecordType::A, "us", 3, &["10.0.0.2"]),
            mk("a.example.com", RecordType::A, "zero", 0, &["10.0.0.3"]),
        ],
        &[],
    );
    let run = |seed| {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..4000).map(|_| values(&ask_index(&index, &mut rng, "a.example.com", QType::A))).collect::<Vec<_>>()
    };
    let picks = run(42);
    assert_eq!(picks, run(42), "same seed, same answers");
    let us = picks.iter().filter(|p| p[..] == ["10.0.0.2"]).count() as f64 / 4000.0;
    assert!((us - 0.75).abs() < 0.03, "us share {us}");
    assert!(!picks.iter().any(|p| p[..] == ["10.0.0.3"]), "a zero weight is never chosen while others are not zero");
}

#[test]
fn a_and_cname_of_different_clusters_compete_by_weight() {
    let index = ZoneIndex::build(
        vec![
            mk("mix.example.com", RecordType::A, "eu", 50, &["10.0.0.1"]),
            mk("mix.example.com", RecordType::Cname, "us", 50, &["lb.example.net"]),
        ],
        &[],
    );
    let mut rng = StdRng::seed_from_u64(9);
    let mut cname = 0;
    for _ in 0..2000 {
        let r = ask_index(&index, &mut rng, "mix.example.com", QType::A);
        assert_eq!(rcode(&r), ResponseCode::NoError);
        assert_eq!(r.answers.len(), 1);
        if r.answers[0].record_type() == QType::CNAME {
            cname += 1;
        }
    }
    assert!((f64::from(cname) / 2000.0 - 0.5).abs() < 0.04, "{cname}");
}

#[test]
fn zones_are_derived_from_record_names_when_not_given() {
    assert_eq!(derive_zones(["www.example.com", "a.b.example.com", "_weir.api.example.com"]), ["example.com"]);
    assert_eq!(derive_zones(["example.com", "x.example.org"]), ["example.com", "example.org"]);
    assert!(derive_zones([""]).is_empty());
}

#[tokio::test]
async fn authoritative_only_for_its_zones_with_soa_in_negative_answers() {
    let server = start_with(
        &[
            mk("api.example.com", RecordType::A, "eu", 100, &["10.0.0.1"]),
            mk("deep.sub.example.com", RecordType::A, "eu", 100, &["10.0.0.2"]),
            // Outside the configured zone: never served.
            mk("api.example.org", RecordType::A, "eu", 100, &["10.9.9.9"]),
        ],
        DnsServerOptions { zones: vec!["Example.COM.".into()], ..Default::default() },
    )
    .await;
    let c = Udp::new(server.addr).await;

    // Outside every zone: REFUSED, not authoritative, no SOA.
    for (id, name) in [(1, "google.com"), (2, "com"), (3, "api.example.org"), (4, "badexample.com")] {
        let r = c.ask(id, name, QType::A).await;
        assert_eq!(rcode(&r), ResponseCode::Refused, "{name}");
        assert!(!r.metadata.authoritative, "{name}");
        assert!(r.answers.is_empty() && r.authorities.is_empty(), "{name}");
    }
    // NXDOMAIN: authoritative, the zone's SOA in the authority section, its MINIMUM the negative TTL.
    let r = c.ask(5, "nope.example.com", QType::A).await;
    assert_eq!(rcode(&r), ResponseCode::NXDomain);
    assert!(r.metadata.authoritative);
    let (owner, serial, minimum) = authority_soa(&r).expect("SOA in NXDOMAIN");
    assert_eq!((owner.as_str(), minimum), ("example.com.", SOA_TTL));
    assert!(serial > 1_600_000_000, "serial is the load time: {serial}");
    // NODATA: a name with records but not this type, an empty non-terminal, the apex.
    for (id, name, qtype) in [
        (6, "api.example.com", QType::MX),
        (7, "sub.example.com", QType::A),
        (8, "example.com", QType::A),
        (9, "API.example.com", QType::NS),
    ] {
        let r = c.ask(id, name, qtype).await;
        assert_eq!(rcode(&r), ResponseCode::NoError, "{name} {qtype}");
        assert!(r.answers.is_empty(), "{name} {qtype}");
        assert_eq!(authority_soa(&r).map(|s| s.0), Some("example.com.".to_string()), "{name} {qtype}");
    }
    // The apex answers SOA, and positive answers carry no SOA.
    let r = c.ask(10, "EXAMPLE.com.", QType::SOA).await;
    assert_eq!(rcode(&r), ResponseCode::NoError);
    match &r.answers[..] {
        [rr] => match &rr.data {
            RData::SOA(soa) => {
                assert_eq!(rr.name.to_ascii(), "EXAMPLE.com.");
                assert_eq!(soa.rname.to_ascii(), "hostmaster.EXAMPLE.com.");
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    let r = c.ask(11, "api.example.com", QType::A).await;
    assert_eq!(values(&r), ["10.0.0.1"]);
    assert!(r.authorities.is_empty());

    let text = metric_text(&server.registry);
    assert!(text.contains(r#"weir_dns_queries_total{qtype="A",rcode="REFUSED"} 4"#), "{text}");
}

#[tokio::test]
async fn zone_transfers_and_unknown_edns_versions_are_refused() {
    let server = start(&[mk("api.example.com", RecordType::A, "eu", 100, &["10.0.0.1"])], 1).await;
    let mut t = Tcp::new(server.addr).await;
    for (id, qtype) in [(1, QType::AXFR), (2, QType::IXFR)] {
        let r = t.ask(id, "example.com", qtype).await;
        assert_eq!(rcode(&r), ResponseCode::NotImp, "{qtype}");
        assert!(r.answers.is_empty(), "{qtype}");
    }
    // EDNS version 1: BADVERS (16: 0 in the header, 1 in the OPT record), with version 0 offered.
    let mut q = query_msg(3, "api.example.com", QType::A, true);
    q.edns.as_mut().unwrap().set_version(1);
    let c = Udp::new(server.addr).await;
    c.send_raw(&q.to_vec().unwrap()).await;
    let r = c.recv().await;
    // hickory reads 16 as BADSIG (the same number).
    assert_eq!(u16::from(rcode(&r)), 16);
    assert!(r.answers.is_empty());
    assert_eq!(r.edns.as_ref().map(|e| e.version()), Some(0));
    // Version 0 still answers.
    c.send_raw(&query(4, "api.example.com", QType::A, true)).await;
    assert_eq!(values(&c.recv().await), ["10.0.0.1"]);
    // A class other than IN or ANY: REFUSED.
    let mut q = query_msg(5, "api.example.com", QType::A, false);
    q.queries[0].set_query_class(DNSClass::CH);
    c.send_raw(&q.to_vec().unwrap()).await;
    assert_eq!(rcode(&c.recv().await), ResponseCode::Refused);
}

async fn tcp_from(source: &str, server: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(server).await.unwrap()
}

#[tokio::test]
async fn held_tcp_connections_from_one_address_do_not_lock_out_others() {
    let server = start_with(
        &[mk("api.example.com", RecordType::A, "eu", 100, &["10.0.0.1"])],
        DnsServerOptions { tcp_max_per_ip: 4, ..Default::default() },
    )
    .await;
    // 256 connections from 127.0.0.2 that never send anything.
    let mut held = Vec::new();
    for _ in 0..256 {
        held.push(tcp_from("127.0.0.2", server.addr).await);
    }
    // Another client still gets TCP answers at once.
    let mut t = Tcp(tcp_from("127.0.0.3", server.addr).await);
    assert_eq!(values(&t.ask(1, "api.example.com", QType::A).await), ["10.0.0.1"]);
    // The connections over the cap were closed by the server (EOF), the first 4 are kept.
    let mut closed = 0;
    for s in &mut held {
        let mut b = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(20), s.read(&mut b)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 252);
    let text = metric_text(&server.registry);
    assert!(text.contains(r#"weir_dns_tcp_connections_refused_total{reason="per_ip"} 252"#), "{text}");
}

#[tokio::test]
async fn idle_tcp_connections_are_closed() {
    let server = start_with(
        &[mk("api.example.com", RecordType::A, "eu", 100, &["10.0.0.1"])],
        DnsServerOptions { tcp_idle_timeout: Duration::from_millis(300), ..Default::default() },
    )
    .await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    // Half a length prefix, then nothing: closed after the idle timeout, not held.
    idle.write_all(&[0]).await.unwrap();
    let started = Instant::now();
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(3), idle.read(&mut b)).await.expect("closed").unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() >= Duration::from_millis(250), "{:?}", started.elapsed());
}

/// Random and mutated packets: the handler never panics, drops only what has no readable header or
/// is a response, and every reply is a well-formed message for the same id; a query hickory reads as
/// one standard question is never answered FORMERR.
#[test]
fn property_random_and_mutated_packets() {
    let index = ZoneIndex::build(
        vec![
            mk("api.example.com", RecordType::A, "eu", 70, &["10.0.0.1"]),
            mk("api.example.com", RecordType::A, "us", 30, &["10.1.0.1", "10.1.0.2"]),
            mk("www.example.com", RecordType::Cname, "eu", 1, &["lb.example.net"]),
            mk("_weir.www.example.com", RecordType::Txt, "eu", 1, &["x".repeat(600).as_str()]),
        ],
        &[],
    );
    let seeds: Vec<Vec<u8>> = [
        ("api.example.com", QType::A, false),
        ("www.example.com", QType::AAAA, true),
        ("_weir.www.example.com", QType::TXT, true),
        ("example.com", QType::SOA, false),
        ("nope.example.com", QType::ANY, true),
        ("google.com", QType::A, false),
    ]
    .iter()
    .map(|(n, t, e)| query(7, n, *t, *e))
    .collect();
    let mut rng = StdRng::seed_from_u64(2026);
    let mut answered = 0;
    for i in 0..20_000u32 {
        let packet: Vec<u8> = if i % 4 == 0 {
            (0..rng.random_range(0..120)).map(|_| rng.random()).collect()
        } else {
            let mut p = seeds[rng.random_range(0..seeds.len())].clone();
            for _ in 0..rng.random_range(1..6) {
                match rng.random_range(0..4) {
                    0 if !p.is_empty() => {
                        let at = rng.random_range(0..p.len());
                        p[at] = rng.random();
                    }
                    1 if !p.is_empty() => {
                        let at = rng.random_range(0..p.len());
                        p[at] ^= 1 << rng.random_range(0..8);
                    }
                    2 => p.truncate(rng.random_range(0..p.len() + 1)),
                    _ => {
                        let at = rng.random_range(0..p.len() + 1);
                        p.insert(at, rng.random());
                    }
                }
            }
            p
        };
        for transport in [Transport::Udp, Transport::Tcp] {
            let Some(reply) = handle(&index, &packet, &mut rng, transport) else {
                assert!(packet.len() < 12 || packet[2] & 0x80 != 0, "dropped a query: {packet:?}");
                continue;
            };
            answered += 1;
            let decoded = Message::from_vec(&reply.bytes).unwrap_or_else(|e| panic!("{e}: {packet:?}"));
            assert_eq!(decoded.metadata.id, u16::from_be_bytes([packet[0], packet[1]]));
            assert_eq!(decoded.metadata.message_type, MessageType::Response);
            if transport == Transport::Udp {
                assert!(reply.bytes.len() <= usize::from(EDNS_PAYLOAD), "{}", reply.bytes.len());
            }
            if let Ok(q) = Message::from_vec(&packet) {
                let standard = q.metadata.op_code == OpCode::Query && q.queries.len() == 1;
                let plain_opt = q.additionals.is_empty() && q.answers.is_empty() && q.authorities.is_empty();
                if standard && plain_opt {
                    assert_ne!(rcode(&decoded), ResponseCode::FormErr, "{packet:?}");
                }
            }
        }
    }
    assert!(answered > 20_000, "{answered}");
}

#[test]
fn large_answers_are_truncated_over_udp_only() {
    let ips: Vec<String> = (0..60).map(|i| format!("10.0.1.{i}")).collect();
    let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
    let index = ZoneIndex::build(vec![mk("big.example.com", RecordType::A, "eu", 1, &ips)], &[]);
    let mut rng = StdRng::seed_from_u64(1);
    let q = query(1, "big.example.com", QType::A, false);
    let udp = Message::from_vec(&handle(&index, &q, &mut rng, Transport::Udp).unwrap().bytes).unwrap();
    assert!(udp.metadata.truncation, "60 A records do not fit 512 bytes");
    assert!(udp.answers.is_empty());
    let tcp = Message::from_vec(&handle(&index, &q, &mut rng, Transport::Tcp).unwrap().bytes).unwrap();
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 60);
    // With EDNS the client's larger buffer (capped at 1232) is honoured.
    let q = query(2, "big.example.com", QType::A, true);
    let udp = Message::from_vec(&handle(&index, &q, &mut rng, Transport::Udp).unwrap().bytes).unwrap();
    assert!(!udp.metadata.truncation);
    assert_eq!(udp.answers.len(), 60);
}

/// A CNAME to an AWS load balancer (an ALIAS on Route53) is answered as Route53 answers the ALIAS
/// when the load balancer's addresses are in the served zones: A/AAAA at the asked name, of the asked
/// type only; otherwise (target outside the zones, or `--prefer-cname`) as the CNAME.
#[tokio::test]
async fn load_balancer_cnames_answer_as_route53_aliases_when_the_addresses_are_known() {
    let alb = "k8s-web-1.eu-west-1.elb.amazonaws.com";
    let nlb = "nlb-1.elb.eu-west-1.amazonaws.com";
    let records = [
        mk("shop.example.com", RecordType::Cname, "eu", 10, &[alb]),
        mk("example.com", RecordType::Cname, "eu", 10, &[alb]),
        mk(alb, RecordType::A, "lb", 1, &["10.9.0.1", "10.9.0.2"]),
        mk(alb, RecordType::Aaaa, "lb", 1, &["2001:db8::1"]),
        mk("v4.example.com", RecordType::Cname, "eu", 10, &[nlb]),
        mk(nlb, RecordType::A, "lb", 1, &["10.9.1.1"]),
        mk("far.example.com", RecordType::Cname, "eu", 10, &["k8s-x.us-east-1.elb.amazonaws.com"]),
        mk("plain.example.com", RecordType::Cname, "eu", 10, &["www.example.com"]),
        mk("www.example.com", RecordType::A, "eu", 10, &["10.0.0.7"]),
    ];
    let zones = vec![
        "example.com".to_string(),
        "eu-west-1.elb.amazonaws.com".to_string(),
        "elb.eu-west-1.amazonaws.com".to_string(),
    ];
    let server = start_with(
        &records,
        DnsServerOptions { rng: StdRng::seed_from_u64(3), zones: zones.clone(), ..Default::default() },
    )
    .await;
    let client = Udp::new(server.addr).await;
    let answer = |m: &Message| -> Vec<(String, QType)> {
        m.answers.iter().map(|r| (r.name.to_ascii(), r.record_type())).collect()
    };

    let a = client.ask(1, "shop.example.com.", QType::A).await;
    assert_eq!(rcode(&a), ResponseCode::NoError);
    assert_eq!(values(&a), ["10.9.0.1", "10.9.0.2"]);
    assert_eq!(answer(&a), [("shop.example.com.".into(), QType::A), ("shop.example.com.".into(), QType::A)]);
    let aaaa = client.ask(2, "shop.example.com.", QType::AAAA).await;
    assert_eq!(values(&aaaa), ["2001:db8::1"]);
    // The apex, which can hold no CNAME in DNS, answers with addresses as a Route53 ALIAS does.
    assert_eq!(values(&client.ask(3, "example.com.", QType::A).await), ["10.9.0.1", "10.9.0.2"]);
    // An NLB with IPv4 only: AAAA is NODATA, not the CNAME.
    let v6 = client.ask(4, "v4.example.com.", QType::AAAA).await;
    assert_eq!(rcode(&v6), ResponseCode::NoError);
    assert!(v6.answers.is_empty(), "{v6:?}");
    assert_eq!(values(&client.ask(5, "v4.example.com.", QType::A).await), ["10.9.1.1"]);
    // A load balancer outside the served zones: the CNAME.
    let far = client.ask(6, "far.example.com.", QType::A).await;
    assert_eq!(values(&far), ["k8s-x.us-east-1.elb.amazonaws.com."]);
    // Not a load balancer: an ordinary CNAME, even to a name in the zone.
    assert_eq!(values(&client.ask(7, "plain.example.com.", QType::A).await), ["www.example.com."]);
    // A CNAME query still shows the CNAME.
    assert_eq!(values(&client.ask(8, "shop.example.com.", QType::CNAME).await), [format!("{alb}.")]);

    // --prefer-cname: every CNAME answered as a CNAME.
    let plain = start_with(
        &records,
        DnsServerOptions { rng: StdRng::seed_from_u64(3), zones, flatten_aliases: false, ..Default::default() },
    )
    .await;
    let client = Udp::new(plain.addr).await;
    assert_eq!(values(&client.ask(9, "shop.example.com.", QType::A).await), [format!("{alb}.")]);
}
