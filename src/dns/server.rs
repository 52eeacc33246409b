//! weir's built-in authoritative DNS server (`--dns-listen`), answering from the embedded zone the way
//! Route53 weighted routing does: each query gets ONE cluster's record set, chosen at random with
//! probability `W / ΣW` among the record sets of the name (all weights zero → equal split), with all
//! the values of that set.
//!
//! The zone is held in memory and reloaded when SQLite's `PRAGMA data_version` says another
//! connection (another weir process, or this one's DNS provider) committed, checked every
//! [`RELOAD_INTERVAL`] on a blocking thread, so queries never touch SQLite.
//!
//! It is authoritative for its zones only (`--dns-zone`, else the binding domain, else the parents of
//! the record names): names outside them get REFUSED; negative answers (NXDOMAIN and NODATA) carry the
//! zone's SOA in the authority section; the apex answers SOA; AXFR/IXFR get NOTIMP; EDNS versions
//! above 0 get BADVERS.
//!
//! The hot path is wire-level and allocation-free: the query is parsed in place (see [`wire`]), every
//! record set's answer records are encoded once per zone load (owner name as a pointer to the
//! question), and each UDP worker thread owns a `SO_REUSEPORT` socket, an RNG and a reply buffer.
//! hickory-proto is used by the tests, as a client would.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use super::embedded::EmbeddedZone;
use super::record::{RecordSet, RecordType};
use super::route53_alias::{classify_target, LoadBalancerName};

pub mod wire;

use wire::{qtype, Edns, ParseError, Rcode};

/// How often the server asks SQLite whether the zone changed.
pub const RELOAD_INTERVAL: Duration = Duration::from_millis(100);
/// Payload size advertised in EDNS responses (the DNS flag day 2020 value).
pub const EDNS_PAYLOAD: u16 = 1232;
/// Default idle timeout of a TCP connection (`--dns-tcp-idle-timeout`).
pub const DEFAULT_TCP_IDLE: Duration = Duration::from_secs(10);
/// Default cap on TCP connections in all (`--dns-tcp-max-connections`).
pub const DEFAULT_TCP_MAX: usize = 1024;
/// Default cap on TCP connections from one client address (`--dns-tcp-max-per-ip`).
pub const DEFAULT_TCP_PER_IP: usize = 16;
/// TTL of the synthesised SOA, and its MINIMUM (the negative-caching TTL, RFC 2308).
pub const SOA_TTL: u32 = 30;

// ---------------------------------------------------------------------------------------------------
// Metrics

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    qtype: &'static str,
    rcode: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    reason: &'static str,
}

/// `weir_dns_queries_total{qtype,rcode}`, the size of the zone being served, and refused TCP
/// connections.
#[derive(Clone, Default)]
pub struct DnsServerMetrics {
    queries: Family<QueryLabels, Counter>,
    record_sets: Gauge,
    reload_errors: Counter,
    tcp_refused: Family<RefusedLabels, Counter>,
}

impl DnsServerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("weir_dns");
        r.register("queries", "DNS queries answered by the embedded server", m.queries.clone());
        r.register("zone_record_sets", "Record sets in the zone being served", m.record_sets.clone());
        r.register(
            "zone_reload_errors",
            "Failed reads of the embedded zone (the last good zone keeps serving)",
            m.reload_errors.clone(),
        );
        r.register(
            "tcp_connections_refused",
            "DNS TCP connections closed at accept because a cap was reached (reason: per_ip, total)",
            m.tcp_refused.clone(),
        );
        m
    }

    fn counter(&self, qtype: &'static str, rcode: Rcode) -> Counter {
        self.queries.get_or_create(&QueryLabels { qtype, rcode: rcode.label() }).clone()
    }
}

/// Per-worker cache of the query counters, so a query costs one atomic add, not a map lookup.
struct QueryCounters {
    metrics: DnsServerMetrics,
    cache: HashMap<(&'static str, Rcode), Counter>,
}

impl QueryCounters {
    fn new(metrics: DnsServerMetrics) -> Self {
        Self { metrics, cache: HashMap::new() }
    }

    fn inc(&mut self, qtype: &'static str, rcode: Rcode) {
        let metrics = &self.metrics;
        self.cache.entry((qtype, rcode)).or_insert_with(|| metrics.counter(qtype, rcode)).inc();
    }
}

// ---------------------------------------------------------------------------------------------------
// The in-memory zone

/// One weighted record set, its answer records encoded once.
#[derive(Debug, Clone)]
pub struct ServedSet {
    pub rtype: RecordType,
    pub set_identifier: String,
    pub weight: u8,
    pub ttl: u32,
    /// Answer records, owner name = a pointer to the question name (offset 12).
    rrs: Vec<u8>,
    count: u16,
    /// A CNAME to an AWS load balancer (an ALIAS on Route53) whose target has A/AAAA records in these
    /// zones: A and AAAA queries are answered with the target's addresses (lower-case wire name).
    alias_of: Option<Box<[u8]>>,
}

/// A CNAME set that may answer as an ALIAS: (its name, its index among the name's sets, the target
/// name), names in lower-case wire format.
type AliasLink = (Box<[u8]>, usize, Box<[u8]>);

/// The weighted choice for one query type at one name: indexes into the name's sets.
#[derive(Debug, Clone, Default)]
struct Choice {
    /// (cumulative weight, set index); total = last cumulative. Empty: no candidate.
    table: Vec<(u32, usize)>,
    total: u32,
}

impl Choice {
    fn new(sets: &[ServedSet], wanted: impl Fn(&ServedSet) -> bool) -> Self {
        let mut choice = Choice::default();
        for (i, s) in sets.iter().enumerate().filter(|(_, s)| wanted(s)) {
            choice.total += u32::from(s.weight);
            choice.table.push((choice.total, i));
        }
        choice
    }

    /// `W / ΣW`; every candidate equally when all weights are zero (as Route53 does).
    fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        if self.total == 0 {
            return Some(self.table[rng.random_range(0..self.table.len())].1);
        }
        let r = rng.random_range(0..self.total);
        self.table.iter().find(|(cum, _)| r < *cum).map(|(_, i)| *i)
    }
}

/// Query types answered from record sets, in [`NameEntry::choices`] order.
const ANSWERED: [(u16, RecordType); 4] = [
    (qtype::A, RecordType::A),
    (qtype::AAAA, RecordType::Aaaa),
    (qtype::CNAME, RecordType::Cname),
    (qtype::TXT, RecordType::Txt),
];

/// What the zone holds at one name.
#[derive(Debug, Default)]
struct NameEntry {
    sets: Vec<ServedSet>,
    /// Per [`ANSWERED`] type: the set types that answer it. A CNAME answers every type but itself
    /// competes by weight with the asked type: when one cluster publishes a CNAME and another an A
    /// record for the same host, an A query still splits `W / ΣW` between them.
    choices: [Choice; 4],
    /// ANY (RFC 8482 allows a subset): one weighted choice per record type present.
    any: Vec<Choice>,
}

/// The zone as served: entries per lower-case wire-format name (empty non-terminals included, with
/// no sets), record sets in (type, set identifier) order so that a seeded RNG always picks the same
/// way, and the zone apexes.
#[derive(Debug, Default)]
pub struct ZoneIndex {
    names: HashMap<Box<[u8]>, NameEntry>,
    apexes: HashSet<Box<[u8]>>,
    record_sets: usize,
    /// SOA serial: seconds since the epoch of the load, kept increasing across loads.
    serial: u32,
}

impl ZoneIndex {
    /// The index of `records` for the zones `zones` (domain names; empty: derived from the records,
    /// see [`derive_zones`]). Records outside every zone are left out with a warning.
    pub fn build(records: Vec<RecordSet>, zones: &[String]) -> Self {
        Self::build_with(records, zones, true)
    }

    /// [`ZoneIndex::build`]; `flatten_aliases` false (`--prefer-cname`) answers every CNAME as a CNAME.
    pub fn build_with(mut records: Vec<RecordSet>, zones: &[String], flatten_aliases: bool) -> Self {
        records.sort();
        let zones: Vec<String> = if zones.is_empty() {
            derive_zones(records.iter().map(|r| r.key.name.as_str()))
        } else {
            zones.iter().map(|z| normalize(z)).filter(|z| !z.is_empty()).collect()
        };
        let mut index = ZoneIndex::default();
        let mut alias_targets: Vec<AliasLink> = Vec::new();
        for z in &zones {
            if let Some(w) = wire::name_from_text(z) {
                index.apexes.insert(w.into());
            }
        }
        for r in records {
            let name = normalize(&r.key.name);
            let Some(wire_name) = wire::name_from_text(&name) else {
                tracing::warn!(record = %r.key, "embedded zone: skipping a record whose name is not a DNS name");
                continue;
            };
            let Some(apex) = index.apex_of(&wire_name) else {
                tracing::warn!(record = %r.key, ?zones, "embedded zone: skipping a record outside the served zones");
                continue;
            };
            let Some((rrs, count)) = encode_set(&r) else { continue };
            // Ancestors below the apex are empty non-terminals unless they hold records themselves.
            let mut at = wire::parent(&wire_name, 0);
            while let Some(a) = at.filter(|a| *a < apex) {
                index.names.entry(wire_name[a..].into()).or_default();
                at = wire::parent(&wire_name, a);
            }
            index.record_sets += 1;
            let entry = index.names.entry(wire_name.clone().into()).or_default();
            // What Route53 would publish as an ALIAS: a CNAME to an AWS load balancer of a known region.
            if let (RecordType::Cname, Some(target)) = (r.key.rtype, r.values.first()) {
                let target = normalize(target);
                if matches!(classify_target(&target), LoadBalancerName::Known { .. }) {
                    if let Some(t) = wire::name_from_text(&target) {
                        alias_targets.push((wire_name.clone().into(), entry.sets.len(), t.into()));
                    }
                }
            }
            entry.sets.push(ServedSet {
                rtype: r.key.rtype,
                set_identifier: r.key.set_identifier,
                weight: r.weight,
                ttl: r.ttl,
                rrs,
                count,
                alias_of: None,
            });
        }
        if flatten_aliases {
            index.link_aliases(&alias_targets);
        }
        for entry in index.names.values_mut() {
            let sets = &entry.sets;
            entry.choices = ANSWERED.map(|(_, t)| {
                Choice::new(sets, |s| s.rtype == t || (s.rtype == RecordType::Cname && t != RecordType::Cname))
            });
            let mut types: Vec<RecordType> = sets.iter().map(|s| s.rtype).collect();
            types.dedup();
            entry.any = types.into_iter().map(|t| Choice::new(sets, |s| s.rtype == t)).collect();
        }
        index
    }

    pub fn len(&self) -> usize {
        self.record_sets
    }

    /// Marks each CNAME set of `targets` (name, set index, target) whose target name holds A or AAAA
    /// sets here: the server then answers it as Route53 answers an ALIAS.
    fn link_aliases(&mut self, targets: &[AliasLink]) {
        for (name, i, target) in targets {
            let known = self
                .names
                .get(target)
                .is_some_and(|t| t.sets.iter().any(|s| matches!(s.rtype, RecordType::A | RecordType::Aaaa)));
            if known {
                if let Some(set) = self.names.get_mut(name).and_then(|e| e.sets.get_mut(*i)) {
                    set.alias_of = Some(target.clone());
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.record_sets == 0
    }

    /// Offset in `name` (lower-case wire format) of the longest zone apex it is in.
    fn apex_of(&self, name: &[u8]) -> Option<usize> {
        let mut at = 0;
        loop {
            if self.apexes.contains(&name[at..]) {
                return Some(at);
            }
            at = wire::parent(name, at)?;
        }
    }
}

fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// The zones when none is configured: each record name's parent (the name itself when it has two
/// labels or fewer), without those inside another. `www.example.com` and `a.b.example.com` give
/// `example.com`.
pub fn derive_zones<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut parents: Vec<String> = names
        .into_iter()
        .map(normalize)
        .filter(|n| !n.is_empty())
        .map(|n| match n.split_once('.') {
            Some((_, rest)) if rest.contains('.') => rest.to_string(),
            _ => n,
        })
        .collect();
    parents.sort_by_key(|p| p.len());
    let mut zones: Vec<String> = Vec::new();
    for p in parents {
        if !zones.iter().any(|z| p == *z || p.ends_with(&format!(".{z}"))) {
            zones.push(p);
        }
    }
    zones
}

/// The answer records of a set, owner name compressed to the question; values that do not parse (a
/// hand-edited row) are skipped. `None` when none is left.
fn encode_set(r: &RecordSet) -> Option<(Vec<u8>, u16)> {
    let mut rrs = Vec::new();
    let mut count = 0u16;
    let mut skipped = false;
    for v in &r.values {
        let rdata: Option<Vec<u8>> = match r.key.rtype {
            RecordType::A => v.parse::<Ipv4Addr>().ok().map(|ip| ip.octets().to_vec()),
            RecordType::Aaaa => v.parse::<Ipv6Addr>().ok().map(|ip| ip.octets().to_vec()),
            RecordType::Cname => wire::name_from_text(v.trim_end_matches('.')),
            RecordType::Txt => Some(wire::txt_rdata(v.as_bytes())),
        };
        let Some(rdata) = rdata.filter(|d| d.len() <= usize::from(u16::MAX)) else {
            skipped = true;
            continue;
        };
        let rtype = match r.key.rtype {
            RecordType::A => qtype::A,
            RecordType::Aaaa => qtype::AAAA,
            RecordType::Cname => qtype::CNAME,
            RecordType::Txt => qtype::TXT,
        };
        wire::push_rr(&mut rrs, 12, rtype, r.ttl, &rdata);
        count += 1;
    }
    if skipped {
        tracing::warn!(record = %r.key, values = ?r.values, "embedded zone: skipping values that do not parse");
    }
    (count > 0).then_some((rrs, count))
}

/// Picks one record set with probability `W / ΣW`; every set equally when all weights are zero (as
/// Route53 does). The same rule as the served path, for callers holding sets.
pub fn choose<'a, R: Rng + ?Sized>(sets: &[&'a ServedSet], rng: &mut R) -> Option<&'a ServedSet> {
    let owned: Vec<ServedSet> = sets.iter().map(|s| (*s).clone()).collect();
    Choice::new(&owned, |_| true).pick(rng).map(|i| sets[i])
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
    pub rcode: Rcode,
}

/// Answers one packet. `None` means drop it (not a query, or too short to know whom to answer).
/// Never panics on any input.
pub fn handle<R: Rng + ?Sized>(zone: &ZoneIndex, packet: &[u8], rng: &mut R, transport: Transport) -> Option<Reply> {
    let mut bytes = Vec::new();
    let (qtype, rcode) = handle_into(zone, packet, rng, transport, &mut bytes)?;
    Some(Reply { bytes, qtype, rcode })
}

/// [`handle`] into a reused buffer (cleared first): the metric labels, or `None` to drop.
pub fn handle_into<R: Rng + ?Sized>(
    zone: &ZoneIndex,
    packet: &[u8],
    rng: &mut R,
    transport: Transport,
    out: &mut Vec<u8>,
) -> Option<(&'static str, Rcode)> {
    out.clear();
    let query = match wire::parse_query(packet) {
        Ok(q) => q,
        Err(ParseError::Drop) => return None,
        Err(ParseError::Reply { id, flags, rcode }) => {
            wire::error_reply(out, id, flags, rcode);
            return Some(("none", rcode));
        }
    };
    let qtype_label = wire::qtype_label(query.qtype);
    let max_udp = query.edns.map_or(512, |e| e.payload.clamp(512, EDNS_PAYLOAD));
    let mut lower = [0u8; wire::MAX_NAME];
    let lname = query.lower_name(&mut lower);

    let mut r = wire::Response::start(out, &query);
    let rcode = if query.edns.is_some_and(|e| e.version > 0) {
        Rcode::BadVers
    } else if !matches!(query.qclass, wire::CLASS_IN | wire::CLASS_ANY) {
        Rcode::Refused
    } else if matches!(query.qtype, qtype::AXFR | qtype::IXFR) {
        Rcode::NotImp
    } else if let Some(apex) = zone.apex_of(lname) {
        r.set_authoritative();
        answer(zone, lname, apex, query.qtype, rng, &mut r)
    } else {
        Rcode::Refused
    };
    r.finish(rcode, query.edns.map(|_| Edns { payload: EDNS_PAYLOAD, version: 0 }));
    if transport == Transport::Udp && out.len() > usize::from(max_udp) {
        // Too big for this client over UDP: TC tells it to ask again over TCP.
        let mut r = wire::Response::start(out, &query);
        r.set_authoritative();
        r.set_truncated();
        r.finish(rcode, query.edns.map(|_| Edns { payload: EDNS_PAYLOAD, version: 0 }));
    } else if out.len() > usize::from(u16::MAX) {
        wire::Response::start(out, &query).finish(Rcode::ServFail, None);
        return Some((qtype_label, Rcode::ServFail));
    }
    Some((qtype_label, rcode))
}

/// Fills the answer (or, when negative, the authority SOA) for a name inside a zone.
fn answer<R: Rng + ?Sized>(
    zone: &ZoneIndex,
    lname: &[u8],
    apex: usize,
    qtype: u16,
    rng: &mut R,
    r: &mut wire::Response<'_>,
) -> Rcode {
    let at_apex = apex == 0;
    let Some(entry) = zone.names.get(lname) else {
        if at_apex {
            return answer_apex_only(zone, apex, qtype, r);
        }
        r.authority_soa(apex, zone.serial);
        return Rcode::NxDomain;
    };
    let mut answered = false;
    if qtype == qtype::ANY {
        for choice in &entry.any {
            if let Some(i) = choice.pick(rng) {
                r.answers(&entry.sets[i].rrs, entry.sets[i].count);
                answered = true;
            }
        }
        if at_apex {
            r.answer_soa(apex, zone.serial);
            answered = true;
        }
    } else if let Some(slot) = ANSWERED.iter().position(|(t, _)| *t == qtype) {
        if let Some(i) = entry.choices[slot].pick(rng) {
            let set = &entry.sets[i];
            match set.alias_of.as_ref().filter(|_| matches!(qtype, qtype::A | qtype::AAAA)) {
                // As a Route53 ALIAS: the target's addresses of the asked type (owner names point at
                // the question), chosen by weight; none of that type is NODATA, never the CNAME.
                Some(target) => {
                    let asked = ANSWERED[slot].1;
                    if let Some(t) = zone.names.get(target) {
                        if let Some(j) = Choice::new(&t.sets, |s| s.rtype == asked).pick(rng) {
                            r.answers(&t.sets[j].rrs, t.sets[j].count);
                            answered = true;
                        }
                    }
                }
                None => {
                    r.answers(&set.rrs, set.count);
                    answered = true;
                }
            }
        }
    } else if at_apex && qtype == qtype::SOA {
        r.answer_soa(apex, zone.serial);
        answered = true;
    }
    if !answered {
        // NODATA: the name exists, not with this type.
        r.authority_soa(apex, zone.serial);
    }
    Rcode::NoError
}

fn answer_apex_only(zone: &ZoneIndex, apex: usize, qtype: u16, r: &mut wire::Response<'_>) -> Rcode {
    if matches!(qtype, qtype::SOA | qtype::ANY) {
        r.answer_soa(apex, zone.serial);
    } else {
        r.authority_soa(apex, zone.serial);
    }
    Rcode::NoError
}

// ---------------------------------------------------------------------------------------------------
// Serving

/// Server settings; tests inject a seeded RNG.
pub struct DnsServerOptions {
    pub reload_interval: Duration,
    pub rng: StdRng,
    /// Zones served (domain names); empty: derived from the record names.
    pub zones: Vec<String>,
    /// UDP worker threads, each with its own `SO_REUSEPORT` socket; 0: one per CPU.
    pub udp_workers: usize,
    pub tcp_max_connections: usize,
    pub tcp_max_per_ip: usize,
    pub tcp_idle_timeout: Duration,
    /// Answer A/AAAA queries for a CNAME to an AWS load balancer whose addresses are in the served
    /// zones with those addresses, as Route53 answers an ALIAS (off with `--prefer-cname`).
    pub flatten_aliases: bool,
}

impl Default for DnsServerOptions {
    fn default() -> Self {
        Self {
            reload_interval: RELOAD_INTERVAL,
            rng: StdRng::from_os_rng(),
            zones: Vec::new(),
            udp_workers: 0,
            tcp_max_connections: DEFAULT_TCP_MAX,
            tcp_max_per_ip: DEFAULT_TCP_PER_IP,
            tcp_idle_timeout: DEFAULT_TCP_IDLE,
            flatten_aliases: true,
        }
    }
}

/// Keeps the served index in step with the file, on its own connection (`data_version` only moves
/// for other connections' commits, and this one never writes).
struct ZoneLoader {
    reader: EmbeddedZone,
    version: Option<i64>,
    zones: Vec<String>,
    serial: u32,
    flatten_aliases: bool,
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
        let mut index = ZoneIndex::build_with(records, &self.zones, self.flatten_aliases);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or_default();
        self.serial = now.max(self.serial.wrapping_add(1));
        index.serial = self.serial;
        Ok(Some(index))
    }
}

/// The zone being served, swapped whole on reload; workers re-read it only when the generation moved.
struct ZoneSlot {
    generation: AtomicU64,
    zone: Mutex<Arc<ZoneIndex>>,
}

impl ZoneSlot {
    fn replace(&self, zone: ZoneIndex) {
        *self.zone.lock() = Arc::new(zone);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Refreshes `local` when a newer zone was published.
    fn refresh(&self, local: &mut (u64, Arc<ZoneIndex>)) {
        let generation = self.generation.load(Ordering::Acquire);
        if generation != local.0 {
            *local = (generation, self.zone.lock().clone());
        }
    }

    fn current(&self) -> (u64, Arc<ZoneIndex>) {
        (self.generation.load(Ordering::Acquire), self.zone.lock().clone())
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
    mut options: DnsServerOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    let workers = match options.udp_workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let (udp, tcp) = bind_all(addr, workers)?;
    let local = udp[0].local_addr()?;

    let zone = zone.clone();
    let zones = options.zones.clone();
    let flatten_aliases = options.flatten_aliases;
    let mut loader = tokio::task::spawn_blocking(move || -> Result<ZoneLoader, super::DnsError> {
        Ok(ZoneLoader { reader: zone.reopen()?, version: None, zones, serial: 0, flatten_aliases })
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
    let slot = Arc::new(ZoneSlot { generation: AtomicU64::new(1), zone: Mutex::new(Arc::new(first)) });

    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for (i, socket) in udp.into_iter().enumerate() {
        let worker = UdpWorker {
            socket,
            slot: slot.clone(),
            rng: StdRng::seed_from_u64(options.rng.random()),
            counters: QueryCounters::new(metrics.clone()),
            stop: stop.clone(),
        };
        threads.push(std::thread::Builder::new().name(format!("weir-dns-udp-{i}")).spawn(move || worker.run())?);
    }
    let reload = reload_loop(loader, slot.clone(), metrics.clone(), options.reload_interval);
    let tcp_loop = tcp_loop(
        tcp,
        TcpShared {
            slot,
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(options.rng.random()))),
            metrics,
            idle: options.tcp_idle_timeout,
            per_ip: Arc::new(Mutex::new(HashMap::new())),
        },
        options.tcp_max_connections,
        options.tcp_max_per_ip,
    );
    tracing::info!(%local, udp_workers = workers, "embedded DNS server listening (UDP and TCP)");
    let handle = tokio::spawn(async move {
        // Dropping the loops (and the TCP JoinSet inside) stops every connection task.
        tokio::select! {
            _ = shutdown => {}
            _ = reload => {}
            _ = tcp_loop => {}
        }
        stop.store(true, Ordering::Release);
        // The UDP workers see the flag within one read timeout.
        let _ = tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join()))).await;
        tracing::info!(%local, "embedded DNS server stopped");
    });
    Ok((local, handle))
}

/// `workers` UDP sockets sharing one port (`SO_REUSEPORT`: the kernel spreads clients over them) and a
/// TCP listener on the same port.
fn bind_all(addr: SocketAddr, workers: usize) -> io::Result<(Vec<std::net::UdpSocket>, TcpListener)> {
    let mut last_err = None;
    // With port 0 the UDP port may be taken for TCP by someone else: try a few free ports.
    for _ in 0..if addr.port() == 0 { 10 } else { 1 } {
        let first = reuseport_udp(addr)?;
        let port_addr = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..workers {
            sockets.push(reuseport_udp(port_addr)?);
        }
        let tcp = std::net::TcpListener::bind(port_addr).and_then(|l| {
            l.set_nonblocking(true)?;
            TcpListener::from_std(l)
        });
        match tcp {
            Ok(tcp) => return Ok((sockets, tcp)),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("could not bind")))
}

fn reuseport_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    // Blocking with a timeout, so that a worker notices shutdown.
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    Ok(socket.into())
}

async fn reload_loop(mut loader: ZoneLoader, slot: Arc<ZoneSlot>, metrics: DnsServerMetrics, every: Duration) {
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
                slot.replace(index);
            }
            Ok(None) => {}
            Err(e) => {
                metrics.reload_errors.inc();
                tracing::warn!(error = %e, "could not reload the embedded zone; serving the last one read");
            }
        }
    }
}

/// One UDP worker thread: its own socket, RNG, counters and buffers.
struct UdpWorker {
    socket: std::net::UdpSocket,
    slot: Arc<ZoneSlot>,
    rng: StdRng,
    counters: QueryCounters,
    stop: Arc<AtomicBool>,
}

impl UdpWorker {
    fn run(mut self) {
        let mut buf = vec![0u8; 65_535];
        let mut out = Vec::with_capacity(4096);
        let mut zone = self.slot.current();
        while !self.stop.load(Ordering::Acquire) {
            let (n, peer) = match self.socket.recv_from(&mut buf) {
                Ok(x) => x,
                // Timeouts (to look at the stop flag) and e.g. ICMP port unreachable from an earlier
                // reply: not fatal for the server.
                Err(_) => continue,
            };
            self.slot.refresh(&mut zone);
            if let Some((qtype, rcode)) = handle_into(&zone.1, &buf[..n], &mut self.rng, Transport::Udp, &mut out) {
                self.counters.inc(qtype, rcode);
                if let Err(e) = self.socket.send_to(&out, peer) {
                    tracing::debug!(%peer, error = %e, "DNS UDP send failed");
                }
            }
        }
    }
}

#[derive(Clone)]
struct TcpShared {
    slot: Arc<ZoneSlot>,
    rng: Arc<Mutex<StdRng>>,
    metrics: DnsServerMetrics,
    idle: Duration,
    /// Open connections per client address.
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// Decrements the client's connection count when its connection ends.
struct PerIpGuard {
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for PerIpGuard {
    fn drop(&mut self) {
        let mut map = self.per_ip.lock();
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

async fn tcp_loop(listener: TcpListener, shared: TcpShared, max_total: usize, max_per_ip: usize) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let refused = if connections.len() >= max_total {
                        Some("total")
                    } else {
                        let mut map = shared.per_ip.lock();
                        let n = map.entry(peer.ip()).or_default();
                        if *n >= max_per_ip { Some("per_ip") } else { *n += 1; None }
                    };
                    if let Some(reason) = refused {
                        shared.metrics.tcp_refused.get_or_create(&RefusedLabels { reason }).inc();
                        tracing::debug!(%peer, reason, "DNS TCP connection cap reached; closing this one");
                        continue;
                    }
                    let guard = PerIpGuard { per_ip: shared.per_ip.clone(), ip: peer.ip() };
                    connections.spawn(tcp_connection(stream, shared.clone(), guard));
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
/// connection. A connection idle (or stalled mid-message) for the idle timeout is closed.
async fn tcp_connection(mut stream: TcpStream, shared: TcpShared, _guard: PerIpGuard) {
    // One write per reply already; no-delay keeps a pipelining client from waiting on delayed ACKs.
    let _ = stream.set_nodelay(true);
    let mut counters = QueryCounters::new(shared.metrics.clone());
    let mut zone = shared.slot.current();
    let mut buf = Vec::new();
    let mut out = Vec::with_capacity(4096);
    loop {
        let len = match tokio::time::timeout(shared.idle, stream.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            _ => return,
        };
        buf.resize(len, 0);
        match tokio::time::timeout(shared.idle, stream.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        shared.slot.refresh(&mut zone);
        let labels = handle_into(&zone.1, &buf, &mut *shared.rng.lock(), Transport::Tcp, &mut out);
        let Some((qtype, rcode)) = labels else { continue };
        counters.inc(qtype, rcode);
        let Ok(len) = u16::try_from(out.len()) else { return };
        out.splice(0..0, len.to_be_bytes());
        if tokio::time::timeout(shared.idle, stream.write_all(&out)).await.map_or(true, |r| r.is_err()) {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
