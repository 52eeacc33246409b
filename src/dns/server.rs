//! weir's built-in authoritative DNS server (`--dns-listen`), answering from the embedded zone the way
//! Route53 weighted routing does: each query gets ONE cluster's record set, chosen at random with
//! probability `W / ΣW` among the record sets of the name (all weights zero → equal split), with all
//! the values of that set.
//!
//! The zone is held in memory and reloaded when SQLite's `PRAGMA data_version` says another
//! connection (another weir process, or this one's DNS provider) committed, checked every
//! [`RELOAD_INTERVAL`] on a blocking thread, so queries never touch SQLite. hickory-proto only
//! encodes and decodes messages; the UDP and TCP loops are plain tokio sockets.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType as QType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use super::embedded::EmbeddedZone;
use super::record::{RecordSet, RecordType};

/// How often the server asks SQLite whether the zone changed.
pub const RELOAD_INTERVAL: Duration = Duration::from_millis(100);
/// Payload size advertised in EDNS responses (the DNS flag day 2020 value).
const EDNS_PAYLOAD: u16 = 1232;
/// An idle TCP connection is closed after this long.
const TCP_IDLE: Duration = Duration::from_secs(10);
const MAX_TCP_CONNECTIONS: usize = 256;

// ---------------------------------------------------------------------------------------------------
// Metrics

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    qtype: &'static str,
    rcode: &'static str,
}

/// `weir_dns_queries_total{qtype,rcode}` and the size of the zone being served.
#[derive(Clone, Default)]
pub struct DnsServerMetrics {
    queries: Family<QueryLabels, Counter>,
    record_sets: Gauge,
    reload_errors: Counter,
}

impl DnsServerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register("weir_dns_queries", "DNS queries answered by the embedded server", m.queries.clone());
        registry.register("weir_dns_zone_record_sets", "Record sets in the zone being served", m.record_sets.clone());
        registry.register(
            "weir_dns_zone_reload_errors",
            "Failed reads of the embedded zone (the last good zone keeps serving)",
            m.reload_errors.clone(),
        );
        m
    }

    fn count(&self, qtype: &'static str, rcode: ResponseCode) {
        self.queries.get_or_create(&QueryLabels { qtype, rcode: rcode_label(rcode) }).inc();
    }
}

fn rcode_label(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::ServFail => "SERVFAIL",
        _ => "other",
    }
}

/// A bounded set of label values, so that odd query types cannot blow up the metric's cardinality.
fn qtype_label(q: QType) -> &'static str {
    match q {
        QType::A => "A",
        QType::AAAA => "AAAA",
        QType::CNAME => "CNAME",
        QType::TXT => "TXT",
        QType::ANY => "ANY",
        QType::SOA => "SOA",
        QType::NS => "NS",
        QType::MX => "MX",
        QType::PTR => "PTR",
        QType::SRV => "SRV",
        QType::HTTPS => "HTTPS",
        QType::SVCB => "SVCB",
        QType::CAA => "CAA",
        _ => "other",
    }
}

// ---------------------------------------------------------------------------------------------------
// The in-memory zone

/// One weighted record set, ready to answer with.
#[derive(Debug, Clone)]
pub struct ServedSet {
    pub rtype: RecordType,
    pub set_identifier: String,
    pub weight: u8,
    pub ttl: u32,
    rdata: Vec<RData>,
}

/// The zone as served: record sets per lower-case name, in (type, set identifier) order so that a
/// seeded RNG always picks the same way.
#[derive(Debug, Default)]
pub struct ZoneIndex {
    names: HashMap<String, Vec<ServedSet>>,
    /// Ancestors of record names that hold no records themselves: NOERROR/NODATA, not NXDOMAIN.
    empty_non_terminals: HashSet<String>,
    record_sets: usize,
}

impl ZoneIndex {
    pub fn build(mut records: Vec<RecordSet>) -> Self {
        records.sort();
        let mut index = ZoneIndex::default();
        for r in records {
            let rdata = to_rdata(&r);
            if rdata.is_empty() {
                continue;
            }
            let name = r.key.name.to_ascii_lowercase();
            let mut parent = name.as_str();
            while let Some((_, rest)) = parent.split_once('.') {
                index.empty_non_terminals.insert(rest.to_string());
                parent = rest;
            }
            index.record_sets += 1;
            index.names.entry(name).or_default().push(ServedSet {
                rtype: r.key.rtype,
                set_identifier: r.key.set_identifier,
                weight: r.weight,
                ttl: r.ttl,
                rdata,
            });
        }
        let names: Vec<String> = index.names.keys().cloned().collect();
        for name in names {
            index.empty_non_terminals.remove(&name);
        }
        index
    }

    pub fn len(&self) -> usize {
        self.record_sets
    }

    pub fn is_empty(&self) -> bool {
        self.record_sets == 0
    }
}

/// The values of a record set as RDATA; a value that does not parse (a hand-edited row) is skipped.
fn to_rdata(r: &RecordSet) -> Vec<RData> {
    let parsed: Vec<RData> = r
        .values
        .iter()
        .filter_map(|v| match r.key.rtype {
            RecordType::A => v.parse::<Ipv4Addr>().ok().map(|ip| RData::A(A(ip))),
            RecordType::Aaaa => v.parse::<Ipv6Addr>().ok().map(|ip| RData::AAAA(AAAA(ip))),
            RecordType::Cname => Name::from_ascii(v).ok().map(|mut n| {
                n.set_fqdn(true);
                RData::CNAME(CNAME(n))
            }),
            RecordType::Txt => Some(RData::TXT(TXT::new(vec![v.clone()]))),
        })
        .collect();
    if parsed.len() != r.values.len() {
        tracing::warn!(record = %r.key, values = ?r.values, "embedded zone: skipping values that do not parse");
    }
    parsed
}

/// Picks one record set with probability `W / ΣW`; every set equally when all weights are zero (as
/// Route53 does).
pub fn choose<'a, R: Rng + ?Sized>(sets: &[&'a ServedSet], rng: &mut R) -> Option<&'a ServedSet> {
    if sets.is_empty() {
        return None;
    }
    let total: u32 = sets.iter().map(|s| u32::from(s.weight)).sum();
    if total == 0 {
        return Some(sets[rng.random_range(0..sets.len())]);
    }
    let mut pick = rng.random_range(0..total);
    for s in sets {
        let w = u32::from(s.weight);
        if pick < w {
            return Some(s);
        }
        pick -= w;
    }
    None
}

/// The record types that can answer a query type at a name. A CNAME answers every type but itself
/// competes by weight with the asked type: when one cluster publishes a CNAME and another an A record
/// for the same host, an A query still splits `W / ΣW` between them.
fn candidates(sets: &[ServedSet], qtype: RecordType) -> Vec<&ServedSet> {
    sets.iter().filter(|s| s.rtype == qtype || (s.rtype == RecordType::Cname && qtype != RecordType::Cname)).collect()
}

// ---------------------------------------------------------------------------------------------------
// Answering

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// A response to send, and its metric labels.
#[derive(Debug)]
pub struct Reply {
    pub bytes: Vec<u8>,
    pub qtype: &'static str,
    pub rcode: ResponseCode,
}

/// Answers one packet. `None` means drop it (not a query, or too broken to know whom to answer).
/// Never panics on any input.
pub fn handle<R: Rng + ?Sized>(zone: &ZoneIndex, packet: &[u8], rng: &mut R, transport: Transport) -> Option<Reply> {
    let request = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(_) => {
            // A readable header is enough to say FORMERR to the right query id.
            let header = Header::read(&mut BinDecoder::new(packet)).ok()?;
            if header.message_type() != MessageType::Query {
                return None;
            }
            let msg = Message::error_msg(header.id(), header.op_code(), ResponseCode::FormErr);
            return encode(msg, "none", transport, 512);
        }
    };
    if request.message_type() != MessageType::Query {
        return None;
    }
    let max_udp = request.extensions().as_ref().map_or(512, |e| e.max_payload().clamp(512, EDNS_PAYLOAD));
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_authoritative(true)
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(false)
        .add_queries(request.queries().iter().cloned());
    if request.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD).set_version(0);
        response.set_edns(edns);
    }
    let qtype = request.queries().first().map_or("none", |q| qtype_label(q.query_type()));
    let rcode = if request.op_code() != OpCode::Query {
        ResponseCode::NotImp
    } else if request.queries().len() != 1 {
        ResponseCode::FormErr
    } else {
        let q = &request.queries()[0];
        if !matches!(q.query_class(), DNSClass::IN | DNSClass::ANY) {
            ResponseCode::Refused
        } else {
            let (rcode, answers) = answer(zone, q.name(), q.query_type(), rng);
            response.add_answers(answers);
            rcode
        }
    };
    response.set_response_code(rcode);
    encode(response, qtype, transport, max_udp)
}

fn encode(message: Message, qtype: &'static str, transport: Transport, max_udp: u16) -> Option<Reply> {
    let rcode = message.response_code();
    let mut bytes = match message.to_vec() {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "could not encode a DNS response");
            let fail = Message::error_msg(message.id(), message.op_code(), ResponseCode::ServFail);
            return fail.to_vec().ok().map(|bytes| Reply { bytes, qtype, rcode: ResponseCode::ServFail });
        }
    };
    if transport == Transport::Udp && bytes.len() > usize::from(max_udp) {
        // Too big for this client over UDP: TC tells it to ask again over TCP.
        bytes = message.truncate().to_vec().ok()?;
    }
    Some(Reply { bytes, qtype, rcode })
}

/// The answer section for one question.
fn answer<R: Rng + ?Sized>(zone: &ZoneIndex, qname: &Name, qtype: QType, rng: &mut R) -> (ResponseCode, Vec<Record>) {
    let key = qname.to_ascii().trim_end_matches('.').to_ascii_lowercase();
    let Some(sets) = zone.names.get(&key) else {
        let rcode =
            if zone.empty_non_terminals.contains(&key) { ResponseCode::NoError } else { ResponseCode::NXDomain };
        return (rcode, vec![]);
    };
    let chosen: Vec<&ServedSet> = match qtype {
        // RFC 8482 allows a subset for ANY: one weighted choice per record type present.
        QType::ANY => {
            let mut types: Vec<RecordType> = sets.iter().map(|s| s.rtype).collect();
            types.dedup();
            types
                .into_iter()
                .filter_map(|t| choose(&sets.iter().filter(|s| s.rtype == t).collect::<Vec<_>>(), rng))
                .collect()
        }
        QType::A => choose(&candidates(sets, RecordType::A), rng).into_iter().collect(),
        QType::AAAA => choose(&candidates(sets, RecordType::Aaaa), rng).into_iter().collect(),
        QType::CNAME => choose(&candidates(sets, RecordType::Cname), rng).into_iter().collect(),
        QType::TXT => choose(&candidates(sets, RecordType::Txt), rng).into_iter().collect(),
        _ => vec![],
    };
    let mut name = qname.clone();
    name.set_fqdn(true);
    let answers = chosen
        .into_iter()
        .flat_map(|s| s.rdata.iter().map(|rd| Record::from_rdata(name.clone(), s.ttl, rd.clone())))
        .collect();
    (ResponseCode::NoError, answers)
}

// ---------------------------------------------------------------------------------------------------
// Serving

/// Server settings; tests inject a seeded RNG.
pub struct DnsServerOptions {
    pub reload_interval: Duration,
    pub rng: StdRng,
}

impl Default for DnsServerOptions {
    fn default() -> Self {
        Self { reload_interval: RELOAD_INTERVAL, rng: StdRng::from_os_rng() }
    }
}

/// Keeps the served index in step with the file, on its own connection (`data_version` only moves
/// for other connections' commits, and this one never writes).
struct ZoneLoader {
    reader: EmbeddedZone,
    version: Option<i64>,
}

impl ZoneLoader {
    /// A new index when the file changed since the last load.
    fn refresh(&mut self) -> Result<Option<ZoneIndex>, super::DnsError> {
        // Version first, then the rows: a commit in between bumps the version again and is picked up
        // on the next check, never missed.
        let version = self.reader.data_version_blocking()?;
        if self.version == Some(version) {
            return Ok(None);
        }
        let records = self.reader.all_blocking()?;
        self.version = Some(version);
        Ok(Some(ZoneIndex::build(records)))
    }
}

/// [`serve_with`] with the default options.
pub async fn serve(
    addr: SocketAddr,
    zone: &EmbeddedZone,
    metrics: DnsServerMetrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    serve_with(addr, zone, metrics, DnsServerOptions::default(), shutdown).await
}

/// Binds UDP and TCP on `addr` (port 0: one free port for both), loads the zone, and serves until
/// `shutdown` resolves. Returns the bound address once the zone is loaded, so the first query is
/// answered from it.
pub async fn serve_with(
    addr: SocketAddr,
    zone: &EmbeddedZone,
    metrics: DnsServerMetrics,
    options: DnsServerOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    let (udp, tcp) = bind_both(addr).await?;
    let local = udp.local_addr()?;

    let zone = zone.clone();
    let mut loader = tokio::task::spawn_blocking(move || -> Result<ZoneLoader, super::DnsError> {
        Ok(ZoneLoader { reader: zone.reopen()?, version: None })
    })
    .await
    .map_err(io::Error::other)?
    .map_err(io::Error::other)?;
    let (loader_back, first) = tokio::task::spawn_blocking(move || {
        let r = loader.refresh();
        (loader, r)
    })
    .await
    .map_err(io::Error::other)?;
    loader = loader_back;
    let first = first.map_err(io::Error::other)?.unwrap_or_default();
    metrics.record_sets.set(first.len() as i64);
    let (index_tx, index_rx) = watch::channel(Arc::new(first));

    let rng = Arc::new(Mutex::new(options.rng));
    let reload = reload_loop(loader, index_tx, metrics.clone(), options.reload_interval);
    let udp_loop = udp_loop(udp, index_rx.clone(), rng.clone(), metrics.clone());
    let tcp_loop = tcp_loop(tcp, index_rx, rng, metrics);
    tracing::info!(%local, "embedded DNS server listening (UDP and TCP)");
    let handle = tokio::spawn(async move {
        // Dropping the loops (and the TCP JoinSet inside) stops every connection task.
        tokio::select! {
            _ = shutdown => {}
            _ = reload => {}
            _ = udp_loop => {}
            _ = tcp_loop => {}
        }
        tracing::info!(%local, "embedded DNS server stopped");
    });
    Ok((local, handle))
}

async fn bind_both(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let mut last_err = None;
    // With port 0 the UDP port may be taken for TCP by someone else: try a few free ports.
    for _ in 0..if addr.port() == 0 { 10 } else { 1 } {
        let udp = UdpSocket::bind(addr).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("could not bind")))
}

async fn reload_loop(
    mut loader: ZoneLoader,
    tx: watch::Sender<Arc<ZoneIndex>>,
    metrics: DnsServerMetrics,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let joined = tokio::task::spawn_blocking(move || {
            let r = loader.refresh();
            (loader, r)
        })
        .await;
        let (back, result) = match joined {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "embedded zone reload task failed; the DNS server keeps the last zone");
                return;
            }
        };
        loader = back;
        match result {
            Ok(Some(index)) => {
                tracing::debug!(record_sets = index.len(), "embedded zone reloaded");
                metrics.record_sets.set(index.len() as i64);
                tx.send_replace(Arc::new(index));
            }
            Ok(None) => {}
            Err(e) => {
                metrics.reload_errors.inc();
                tracing::warn!(error = %e, "could not reload the embedded zone; serving the last one read");
            }
        }
    }
}

fn respond(
    index: &watch::Receiver<Arc<ZoneIndex>>,
    rng: &Mutex<StdRng>,
    metrics: &DnsServerMetrics,
    packet: &[u8],
    transport: Transport,
) -> Option<Vec<u8>> {
    let zone = index.borrow().clone();
    let reply = handle(&zone, packet, &mut *rng.lock(), transport)?;
    metrics.count(reply.qtype, reply.rcode);
    Some(reply.bytes)
}

async fn udp_loop(
    socket: UdpSocket,
    index: watch::Receiver<Arc<ZoneIndex>>,
    rng: Arc<Mutex<StdRng>>,
    metrics: DnsServerMetrics,
) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // e.g. ICMP port unreachable from an earlier reply: not fatal for the server.
                tracing::debug!(error = %e, "DNS UDP receive error");
                continue;
            }
        };
        if let Some(reply) = respond(&index, &rng, &metrics, &buf[..n], Transport::Udp) {
            if let Err(e) = socket.send_to(&reply, peer).await {
                tracing::debug!(%peer, error = %e, "DNS UDP send failed");
            }
        }
    }
}

async fn tcp_loop(
    listener: TcpListener,
    index: watch::Receiver<Arc<ZoneIndex>>,
    rng: Arc<Mutex<StdRng>>,
    metrics: DnsServerMetrics,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if connections.len() >= MAX_TCP_CONNECTIONS {
                        tracing::warn!(%peer, "too many DNS TCP connections; closing this one");
                        continue;
                    }
                    connections.spawn(tcp_connection(stream, index.clone(), rng.clone(), metrics.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "DNS TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// RFC 1035 §4.2.2: each message is preceded by its length as two bytes; several queries may share a
/// connection.
async fn tcp_connection(
    mut stream: TcpStream,
    index: watch::Receiver<Arc<ZoneIndex>>,
    rng: Arc<Mutex<StdRng>>,
    metrics: DnsServerMetrics,
) {
    // One write per reply already; no-delay keeps a pipelining client from waiting on delayed ACKs.
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            _ => return,
        };
        buf.resize(len, 0);
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Some(reply) = respond(&index, &rng, &metrics, &buf, Transport::Tcp) else { continue };
        let Ok(len) = u16::try_from(reply.len()) else { return };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
