//! The DNS wire format, as much as an authoritative server of A/AAAA/CNAME/TXT needs (RFC 1035 §4,
//! RFC 6891 for OPT): the query parsed in place with every length checked, the response written into a
//! reused buffer. Names in responses are compressed by pointing into the question (offset 12), so
//! encoding never searches for suffixes (the quadratic compression of RUSTSEC-2026-0119 cannot occur).

pub mod qtype {
    pub const A: u16 = 1;
    pub const NS: u16 = 2;
    pub const CNAME: u16 = 5;
    pub const SOA: u16 = 6;
    pub const PTR: u16 = 12;
    pub const MX: u16 = 15;
    pub const TXT: u16 = 16;
    pub const AAAA: u16 = 28;
    pub const SRV: u16 = 33;
    pub const OPT: u16 = 41;
    pub const SVCB: u16 = 64;
    pub const HTTPS: u16 = 65;
    pub const IXFR: u16 = 251;
    pub const AXFR: u16 = 252;
    pub const ANY: u16 = 255;
    pub const CAA: u16 = 257;
}

pub const CLASS_IN: u16 = 1;
pub const CLASS_ANY: u16 = 255;
/// Longest name in wire format (RFC 1035 §2.3.4).
pub const MAX_NAME: usize = 255;
const HEADER: usize = 12;

/// The response codes this server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rcode {
    NoError,
    FormErr,
    ServFail,
    NxDomain,
    NotImp,
    Refused,
    /// 16: the low 4 bits go in the header (0), the high 8 in the OPT record (1).
    BadVers,
}

impl Rcode {
    pub fn value(self) -> u16 {
        match self {
            Rcode::NoError => 0,
            Rcode::FormErr => 1,
            Rcode::ServFail => 2,
            Rcode::NxDomain => 3,
            Rcode::NotImp => 4,
            Rcode::Refused => 5,
            Rcode::BadVers => 16,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Rcode::NoError => "NOERROR",
            Rcode::FormErr => "FORMERR",
            Rcode::ServFail => "SERVFAIL",
            Rcode::NxDomain => "NXDOMAIN",
            Rcode::NotImp => "NOTIMP",
            Rcode::Refused => "REFUSED",
            Rcode::BadVers => "BADVERS",
        }
    }
}

/// A bounded set of label values, so that odd query types cannot blow up the metric's cardinality.
pub fn qtype_label(q: u16) -> &'static str {
    match q {
        qtype::A => "A",
        qtype::AAAA => "AAAA",
        qtype::CNAME => "CNAME",
        qtype::TXT => "TXT",
        qtype::ANY => "ANY",
        qtype::SOA => "SOA",
        qtype::NS => "NS",
        qtype::MX => "MX",
        qtype::PTR => "PTR",
        qtype::SRV => "SRV",
        qtype::HTTPS => "HTTPS",
        qtype::SVCB => "SVCB",
        qtype::CAA => "CAA",
        qtype::AXFR => "AXFR",
        qtype::IXFR => "IXFR",
        _ => "other",
    }
}

/// EDNS as asked or answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    pub payload: u16,
    pub version: u8,
}

/// Header bits copied from the query into any response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoFlags {
    opcode: u8,
    rd: bool,
    cd: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Not a query, or shorter than a header: no answer at all.
    Drop,
    /// Answer with this code (FORMERR, NOTIMP) and no question.
    Reply { id: u16, flags: EchoFlags, rcode: Rcode },
}

/// A parsed query: one question, its name as received (wire format, original case).
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    pub id: u16,
    flags: EchoFlags,
    pub qname: &'a [u8],
    pub qtype: u16,
    pub qclass: u16,
    pub edns: Option<Edns>,
}

impl Query<'_> {
    /// The question name in lower case, in `buf`.
    pub fn lower_name<'b>(&self, buf: &'b mut [u8; MAX_NAME]) -> &'b [u8] {
        let out = &mut buf[..self.qname.len()];
        out.copy_from_slice(self.qname);
        // Length bytes are at most 63, below 'A': lower-casing the whole name leaves them alone.
        out.make_ascii_lowercase();
        out
    }
}

fn u16_at(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]))
}

/// Parses a query; every error is a [`ParseError`], never a panic.
pub fn parse_query(p: &[u8]) -> Result<Query<'_>, ParseError> {
    if p.len() < HEADER || p[2] & 0x80 != 0 {
        return Err(ParseError::Drop);
    }
    let id = u16::from_be_bytes([p[0], p[1]]);
    let flags = EchoFlags { opcode: (p[2] >> 3) & 0x0f, rd: p[2] & 1 != 0, cd: p[3] & 0x10 != 0 };
    let reply = |rcode| ParseError::Reply { id, flags, rcode };
    let formerr = reply(Rcode::FormErr);
    if flags.opcode != 0 {
        return Err(reply(Rcode::NotImp));
    }
    let count = |at| u16::from_be_bytes([p[at], p[at + 1]]);
    let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
    if qd != 1 {
        return Err(formerr);
    }
    // The question name: plain labels only (a pointer could only point into the header).
    let mut at = HEADER;
    loop {
        let len = usize::from(*p.get(at).ok_or(formerr)?);
        if len & 0xc0 != 0 {
            return Err(formerr);
        }
        at += 1 + len;
        if at - HEADER > MAX_NAME || at > p.len() {
            return Err(formerr);
        }
        if len == 0 {
            break;
        }
    }
    let qname = &p[HEADER..at];
    let (qtype, qclass) = (u16_at(p, at).ok_or(formerr)?, u16_at(p, at + 2).ok_or(formerr)?);
    at += 4;
    for _ in 0..u32::from(an) + u32::from(ns) {
        at = read_rr(p, at).ok_or(formerr)?.next;
    }
    let mut edns = None;
    for _ in 0..ar {
        let rr = read_rr(p, at).ok_or(formerr)?;
        if rr.rtype == qtype::OPT {
            // RFC 6891 §6.1.1: one OPT, owned by the root.
            if edns.is_some() || !rr.root_owner {
                return Err(formerr);
            }
            edns = Some(Edns { payload: rr.class, version: (rr.ttl >> 16) as u8 });
        }
        at = rr.next;
    }
    Ok(Query { id, flags, qname, qtype, qclass, edns })
}

struct RawRr {
    root_owner: bool,
    rtype: u16,
    class: u16,
    ttl: u32,
    next: usize,
}

/// One resource record's fixed fields; its owner name may be compressed.
fn read_rr(p: &[u8], mut at: usize) -> Option<RawRr> {
    let root_owner = *p.get(at)? == 0;
    // Skip the owner name: labels until the root or a pointer (which ends a name).
    loop {
        let len = *p.get(at)?;
        match len & 0xc0 {
            0x00 if len == 0 => {
                at += 1;
                break;
            }
            0x00 => at += 1 + usize::from(len),
            0xc0 => {
                at += 2;
                break;
            }
            _ => return None,
        }
    }
    let rtype = u16_at(p, at)?;
    let class = u16_at(p, at + 2)?;
    let ttl = (u32::from(u16_at(p, at + 4)?) << 16) | u32::from(u16_at(p, at + 6)?);
    let rdlen = usize::from(u16_at(p, at + 8)?);
    let next = at + 10 + rdlen;
    (next <= p.len()).then_some(RawRr { root_owner, rtype, class, ttl, next })
}

/// A header-only error response (FORMERR, NOTIMP, SERVFAIL).
pub fn error_reply(out: &mut Vec<u8>, id: u16, flags: EchoFlags, rcode: Rcode) {
    out.clear();
    out.extend_from_slice(&id.to_be_bytes());
    out.push(0x80 | (flags.opcode << 3) | u8::from(flags.rd));
    out.push((if flags.cd { 0x10 } else { 0 }) | (rcode.value() & 0x0f) as u8);
    out.extend_from_slice(&[0; 8]);
}

/// `name` (dot-separated, no trailing dot) in wire format, as given; `None` when it is not a DNS
/// name (empty, an empty label, a label over 63 bytes, over 255 bytes in all).
pub fn name_from_text(name: &str) -> Option<Vec<u8>> {
    if name.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    (out.len() <= MAX_NAME).then_some(out)
}

/// Offset of the parent of the name starting at `at` in `name` (wire format), `None` at a top-level
/// label (the root is never a zone here) or past the end.
pub fn parent(name: &[u8], at: usize) -> Option<usize> {
    let len = usize::from(*name.get(at)?);
    let next = at + 1 + len;
    (len != 0 && next + 1 < name.len()).then_some(next)
}

/// TXT RDATA: the value as character-strings of at most 255 bytes.
pub fn txt_rdata(value: &[u8]) -> Vec<u8> {
    if value.is_empty() {
        return vec![0];
    }
    let mut out = Vec::with_capacity(value.len() + value.len() / 255 + 1);
    for chunk in value.chunks(255) {
        out.push(chunk.len() as u8);
        out.extend_from_slice(chunk);
    }
    out
}

/// One IN record whose owner is a pointer to `owner` (an offset in the message).
pub fn push_rr(out: &mut Vec<u8>, owner: u16, rtype: u16, ttl: u32, rdata: &[u8]) {
    out.extend_from_slice(&(0xc000 | owner).to_be_bytes());
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(rdata);
}

/// A response being written: header, the question as asked, then answers, then authority, then OPT.
pub struct Response<'a> {
    out: &'a mut Vec<u8>,
    flags: EchoFlags,
    aa: bool,
    tc: bool,
    ancount: u16,
    nscount: u16,
}

impl<'a> Response<'a> {
    pub fn start(out: &'a mut Vec<u8>, q: &Query<'_>) -> Self {
        out.clear();
        out.extend_from_slice(&q.id.to_be_bytes());
        out.extend_from_slice(&[0; 2]);
        out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(q.qname);
        out.extend_from_slice(&q.qtype.to_be_bytes());
        out.extend_from_slice(&q.qclass.to_be_bytes());
        Response { out, flags: q.flags, aa: false, tc: false, ancount: 0, nscount: 0 }
    }

    pub fn set_authoritative(&mut self) {
        self.aa = true;
    }

    pub fn set_truncated(&mut self) {
        self.tc = true;
    }

    /// Pre-encoded answer records (owners pointing at the question).
    pub fn answers(&mut self, rrs: &[u8], count: u16) {
        debug_assert_eq!(self.nscount, 0, "answers come before the authority section");
        self.out.extend_from_slice(rrs);
        self.ancount = self.ancount.saturating_add(count);
    }

    pub fn answer_soa(&mut self, apex: usize, serial: u32) {
        self.soa(apex, serial);
        self.ancount += 1;
    }

    pub fn authority_soa(&mut self, apex: usize, serial: u32) {
        self.soa(apex, serial);
        self.nscount += 1;
    }

    /// The zone's SOA; `apex` is the apex's offset in the question name, so both the owner and MNAME
    /// are pointers, RNAME is `hostmaster.<apex>`.
    fn soa(&mut self, apex: usize, serial: u32) {
        let apex_ptr = (0xc000 | (HEADER + apex) as u16).to_be_bytes();
        let mut rdata = [0u8; 35];
        rdata[0..2].copy_from_slice(&apex_ptr);
        rdata[2] = 10;
        rdata[3..13].copy_from_slice(b"hostmaster");
        rdata[13..15].copy_from_slice(&apex_ptr);
        for (i, v) in [serial, 3600, 600, 86_400, super::SOA_TTL].into_iter().enumerate() {
            rdata[15 + 4 * i..19 + 4 * i].copy_from_slice(&v.to_be_bytes());
        }
        push_rr(self.out, (HEADER + apex) as u16, qtype::SOA, super::SOA_TTL, &rdata);
    }

    /// Writes the flags, counts and (when the query had one) the OPT record.
    pub fn finish(self, rcode: Rcode, edns: Option<Edns>) {
        let code = rcode.value();
        let f = self.flags;
        self.out[2] = 0x80 | (f.opcode << 3) | (u8::from(self.aa) << 2) | (u8::from(self.tc) << 1) | u8::from(f.rd);
        self.out[3] = (if f.cd { 0x10 } else { 0 }) | (code & 0x0f) as u8;
        let (an, ns) = if self.tc { (0, 0) } else { (self.ancount, self.nscount) };
        self.out[6..8].copy_from_slice(&an.to_be_bytes());
        self.out[8..10].copy_from_slice(&ns.to_be_bytes());
        if let Some(e) = edns {
            self.out.push(0);
            self.out.extend_from_slice(&qtype::OPT.to_be_bytes());
            self.out.extend_from_slice(&e.payload.to_be_bytes());
            // TTL: extended RCODE (high 8 bits), version, flags.
            self.out.extend_from_slice(&[(code >> 4) as u8, e.version, 0, 0]);
            self.out.extend_from_slice(&[0, 0]);
            self.out[10..12].copy_from_slice(&1u16.to_be_bytes());
        }
    }
}
