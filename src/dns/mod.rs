//! DNS: the record model, the planner, and the providers that publish records.
//!
//! Providers only read what is published and apply plans; everything that decides is in `record` and
//! `plan`, which are pure.

pub mod dnsendpoint;
pub mod dnsendpoint_k8s;
pub mod embedded;
pub mod route53;
pub mod route53_alias;
mod route53_health;
pub mod server;
pub mod zoned;

pub use weir_core::dns::{adopt, plan, record, zones};

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use plan::Change;
use record::{Ownership, RecordKey, RecordSet, RecordType};

use crate::selection::is_dns_name;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A call to the provider failed. `retryable` errors (a change still in progress, a dropped
    /// connection) are worth another try on the next pass.
    #[error("{provider} {operation} failed: {message}")]
    Call { provider: &'static str, operation: &'static str, message: String, retryable: bool },
    /// The provider said "slow down" (still, after weir's own retries): retried on the next pass.
    #[error("{provider} {operation} throttled: {message}")]
    Throttled { provider: &'static str, operation: &'static str, message: String },
    /// Not sent: this replica may no longer write (its lease ran out). The next leader writes it.
    #[error("{provider} {operation} not sent: {source}")]
    Fenced { provider: &'static str, operation: &'static str, source: crate::reconciler::leader::Fenced },
    /// weir refused to send a record that the provider would reject or misapply.
    #[error("invalid record {key}: {reason}")]
    InvalidRecord { key: RecordKey, reason: String },
}

impl DnsError {
    /// A failed AWS call, by how [`crate::aws::classify`] classed it: throttling is its own variant.
    pub fn aws(provider: &'static str, operation: &'static str, message: String, outcome: crate::aws::Outcome) -> Self {
        match outcome {
            crate::aws::Outcome::Throttled => DnsError::Throttled { provider, operation, message },
            other => DnsError::Call { provider, operation, message, retryable: other.retryable() },
        }
    }

    /// The label for metrics (`weir_reconcile_total{result}` of a pass that failed on it).
    pub fn metric_label(&self) -> &'static str {
        match self {
            DnsError::Call { .. } => "dns_api",
            DnsError::Throttled { .. } => "throttled",
            DnsError::Fenced { .. } => "fenced",
            DnsError::InvalidRecord { .. } => "invalid_record",
        }
    }
}

/// What happened when a plan was applied: every change either landed or is listed with its error.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub applied: Vec<Change>,
    pub failed: Vec<(Change, DnsError)>,
}

impl ApplyReport {
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }
}

/// A place where weighted records are published: Route53, external-dns DNSEndpoint objects, or the
/// embedded zone served by weir's own DNS server.
#[async_trait::async_trait]
pub trait DnsProvider: Send + Sync {
    fn name(&self) -> &'static str;

    /// The records published at `hosts` (every cluster's, ownership TXT names included) and every record
    /// that `owner` owns anywhere in the zone, so that records of removed hosts can be deleted.
    async fn current(&self, hosts: &BTreeSet<String>, owner: &Ownership) -> Result<Vec<RecordSet>, DnsError>;

    /// Applies batches in order. One bad record never blocks the others: a provider that can reject a
    /// batch splits it and retries, so that the rest lands; what failed is in the report.
    async fn apply(&self, batches: Vec<Vec<Change>>) -> ApplyReport;

    /// Completes the desired records with what only the provider knows, before planning (Route53:
    /// the health check of each target). A host it cannot complete is moved to `desired.keep`, so
    /// that its published records stay as they are and the other hosts still proceed.
    async fn prepare(&self, _desired: &mut record::DesiredRecords) {}

    /// Drops whatever the provider remembers of what is published: called when this replica starts
    /// a term as the leader, because another replica wrote in between.
    fn forget_published(&self) {}
}

/// Checks a record before it is sent (the test endpoint validates nothing, and Route53 rejects a whole
/// batch for one bad record).
pub fn validate(record: &RecordSet) -> Result<(), DnsError> {
    let invalid = |reason: String| DnsError::InvalidRecord { key: record.key.clone(), reason };
    if !is_dns_name(&record.key.name) {
        return Err(invalid("name is not a valid DNS name".into()));
    }
    if record.key.set_identifier.is_empty() || record.key.set_identifier.len() > 128 {
        return Err(invalid("set identifier must be 1-128 characters".into()));
    }
    if record.values.is_empty() {
        return Err(invalid("a record set needs at least one value".into()));
    }
    if record.ttl > 2_147_483_647 {
        return Err(invalid("TTL out of range".into()));
    }
    if let Some(alias) = &record.alias {
        if !matches!(record.key.rtype, RecordType::A | RecordType::Aaaa) {
            return Err(invalid("only A and AAAA records can be ALIAS records".into()));
        }
        if record.values.len() != 1 || !is_dns_name(&record.values[0]) {
            return Err(invalid("an ALIAS points at exactly one DNS name".into()));
        }
        if alias.hosted_zone_id.is_empty() {
            return Err(invalid("an ALIAS needs the target's hosted zone id".into()));
        }
        return Ok(());
    }
    match record.key.rtype {
        RecordType::A => {
            if let Some(v) = record.values.iter().find(|v| v.parse::<Ipv4Addr>().is_err()) {
                return Err(invalid(format!("{v:?} is not an IPv4 address")));
            }
        }
        RecordType::Aaaa => {
            if let Some(v) = record.values.iter().find(|v| v.parse::<Ipv6Addr>().is_err()) {
                return Err(invalid(format!("{v:?} is not an IPv6 address")));
            }
        }
        RecordType::Cname => {
            if record.values.len() != 1 {
                return Err(invalid("a CNAME holds exactly one name".into()));
            }
            if !is_dns_name(&record.values[0]) {
                return Err(invalid(format!("{:?} is not a DNS name", record.values[0])));
            }
        }
        RecordType::Txt => {
            if let Some(v) = record.values.iter().find(|v| v.len() > 255) {
                return Err(invalid(format!("TXT string of {} characters is over 255", v.len())));
            }
        }
    }
    Ok(())
}
