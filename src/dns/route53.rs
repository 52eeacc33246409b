//! The Route53 provider: weighted record sets with `SetIdentifier` = cluster name, plus ownership TXT.
//!
//! Reads are targeted and cached (see `docs/aws.md`, "Reads"):
//! - cold start (and every `rescan_interval`): one paged listing of the whole zone, which finds every
//!   host this cluster owns (its ownership TXT) and the records at every requested host;
//! - afterwards, only names not seen before are read (`ListResourceRecordSets` starting at the name),
//!   and names whose apply failed are read again; successful changes are written into the cache.
//!
//! So reads per reconcile grow with what changed, not with the zone. The pager stops when the next
//! start point does not advance (moto never returns `NextRecordIdentifier`, so a weighted group across
//! a page boundary would repeat the same page forever).
//!
//! Writes: one `ChangeResourceRecordSets` per planned batch; records are validated before sending; a
//! batch rejected as invalid is split (halves, down to one host's changes) so that the good changes
//! land and the bad host is reported. Throttling is retried in [`crate::aws::Aws::call`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use aws_sdk_route53::types::{
    AliasTarget as R53AliasTarget, Change as R53Change, ChangeAction, ChangeBatch, ChangeStatus, ResourceRecord,
    ResourceRecordSet, RrType,
};
use aws_sdk_route53::Client;
use parking_lot::Mutex;

use super::plan::Change;
use super::record::{AliasTarget, DesiredRecords, Ownership, RecordKey, RecordSet, RecordType};
use super::{validate, ApplyReport, DnsError, DnsProvider};
use crate::aws::{classify, describe, Aws, Outcome};
use crate::reconciler::leader::Fence;
use aws_sdk_route53::error::SdkError;

use super::adopt::AdoptOptions;
use super::route53_alias::{use_aliases, AliasOptions};
use super::route53_health::HealthChecks;
pub use super::route53_health::{HealthCheckSettings, HealthCheckState, HealthMetrics};
use super::zones::{ZoneInfo, ZoneType};
use std::sync::Arc;

const PROVIDER: &str = "route53";
/// Route53's maximum page size for ListResourceRecordSets.
const SCAN_PAGE: i32 = 300;
/// Per-name reads: a name holds one record per cluster and type, plus the ownership TXT.
const NAME_PAGE: i32 = 100;
/// Safety bound on pages of one listing.
const MAX_PAGES: usize = 100_000;

/// Which zone to write to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneRef {
    Id(String),
    /// Found with ListHostedZonesByName: the longest public zone that contains this domain.
    Domain(String),
}

#[derive(Debug, Clone)]
pub struct Route53Options {
    pub zone: ZoneRef,
    pub owner: Ownership,
    /// Wait for GetChange to report INSYNC before `apply` returns.
    pub wait_insync: bool,
    /// How long INSYNC is waited for before the change is reported as not converged.
    pub insync_timeout: Duration,
    /// Full re-read of the zone at least this often (finds records changed behind weir's back).
    pub rescan_interval: Duration,
    /// A host about to be drained (weight > 0 → 0) is always read again before planning; before
    /// sending, it is read once more if that read is older than this. The all-zero guard must not act
    /// on a stale view of the other clusters.
    pub recheck_drain_after: Duration,
    pub health: Option<HealthCheckSettings>,
    /// CNAMEs to AWS load balancers become ALIAS records unless `--prefer-cname`.
    pub alias: AliasOptions,
    /// external-dns registry names read beside each host, to adopt them (`--adopt-owner`).
    pub adopt: AdoptOptions,
}

/// Which hosted zones to use: `--hosted-zone-id` (repeatable), else every zone at or under the binding
/// domain (and, when none is at the domain itself, the longest zone above it), kept by `--zone-type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneSelection {
    pub ids: Vec<String>,
    pub domain: String,
    pub zone_type: ZoneType,
}

impl Route53Options {
    pub fn new(zone: ZoneRef, owner: Ownership) -> Self {
        Self {
            zone,
            owner,
            wait_insync: false,
            insync_timeout: Duration::from_secs(300),
            rescan_interval: Duration::from_secs(300),
            recheck_drain_after: Duration::from_secs(5),
            health: None,
            alias: AliasOptions::default(),
            adopt: AdoptOptions::default(),
        }
    }
}

#[derive(Default)]
struct Cache {
    /// host → every record at the host and at its ownership TXT name (all clusters), as last read or
    /// written.
    hosts: HashMap<String, Vec<RecordSet>>,
    /// When each host was last read from Route53 (writes do not refresh what others published).
    read_at: HashMap<String, Instant>,
    /// Hosts to read again (an apply failed, or the cache may be wrong).
    dirty: BTreeSet<String>,
    /// When the whole zone was last listed; `None` forces a full listing.
    scanned_at: Option<Instant>,
    /// Records in the zone at the last full listing (to choose between per-name reads and a listing).
    zone_records: usize,
}

pub struct Route53Dns {
    client: Client,
    aws: Aws,
    zone_id: String,
    zone_name: String,
    private: bool,
    opts: Route53Options,
    cache: Mutex<Cache>,
    /// Shared by every zone's provider: one check per target, attached in each zone.
    health: Option<Arc<HealthChecks>>,
    fence: Fence,
}

impl Route53Dns {
    /// Sends change batches only while `fence` is open (without it: always, no leader election).
    pub fn with_fence(mut self, fence: Fence) -> Self {
        self.fence = fence;
        self
    }

    /// A provider on the SDK configuration from the standard environment; `region` (`--aws-region`)
    /// wins over `AWS_REGION` when given.
    pub async fn connect(region: Option<&str>, opts: Route53Options) -> Result<Self, DnsError> {
        let config = crate::aws::sdk_config(region).await;
        Self::new(Client::new(&config), Aws::default(), opts).await
    }

    /// Resolves the zone (by id, or from the domain) and returns a provider with a cold cache.
    pub async fn new(client: Client, aws: Aws, opts: Route53Options) -> Result<Self, DnsError> {
        let zone = resolve_zone(&client, &aws, &opts.zone).await?;
        Ok(Self::for_zones(client, aws, opts, vec![zone]).remove(0))
    }

    /// Providers on the SDK configuration from the standard environment, one per selected zone.
    pub async fn connect_zones(
        region: Option<&str>,
        opts: Route53Options,
        selection: &ZoneSelection,
    ) -> Result<Vec<Self>, DnsError> {
        let config = crate::aws::sdk_config(region).await;
        let client = Client::new(&config);
        let aws = Aws::default();
        let zones = resolve_zones(&client, &aws, selection).await?;
        Ok(Self::for_zones(client, aws, opts, zones))
    }

    /// One provider per zone, each with a cold cache, sharing the health checks.
    pub fn for_zones(client: Client, aws: Aws, opts: Route53Options, zones: Vec<ZoneInfo>) -> Vec<Self> {
        let health = opts.health.clone().map(|settings| {
            let metrics = HealthMetrics::default();
            Arc::new(HealthChecks::new(client.clone(), aws.clone(), opts.owner.cluster.clone(), settings, metrics))
        });
        zones
            .into_iter()
            .map(|zone| {
                tracing::info!(
                    zone_id = zone.id,
                    zone_name = zone.name,
                    private = zone.private,
                    "using Route53 hosted zone"
                );
                Self {
                    client: client.clone(),
                    aws: aws.clone(),
                    zone_id: zone.id,
                    zone_name: zone.name,
                    private: zone.private,
                    opts: opts.clone(),
                    cache: Mutex::new(Cache::default()),
                    health: health.clone(),
                    fence: Fence::always(),
                }
            })
            .collect()
    }

    pub fn zone_id(&self) -> &str {
        &self.zone_id
    }

    pub fn zone(&self) -> ZoneInfo {
        ZoneInfo { id: self.zone_id.clone(), name: self.zone_name.clone(), private: self.private }
    }

    /// The health checks weir knows for these targets and their last status, for `weir explain`.
    /// Looks existing checks up (never creates one) and reads their status.
    pub async fn health_check_status(&self, targets: &[String]) -> Result<Vec<HealthCheckState>, DnsError> {
        match &self.health {
            Some(h) => h.status(targets).await,
            None => Ok(Vec::new()),
        }
    }

    /// From now on health checks are only looked up, never created (read-only commands).
    pub fn read_only(&self) {
        if let Some(h) = &self.health {
            h.set_read_only();
        }
    }

    fn host_of<'a>(&self, name: &'a str) -> &'a str {
        self.opts.owner.host_of_txt(name).unwrap_or(name)
    }

    fn in_zone(&self, name: &str) -> bool {
        name == self.zone_name || name.ends_with(&format!(".{}", self.zone_name))
    }

    /// Lists record sets from `start` on, page by page, until `stop` says a record is past what is
    /// wanted, the listing ends, or the next start point does not advance.
    async fn list_from(
        &self,
        start: Option<String>,
        page: i32,
        mut stop: impl FnMut(&str) -> bool,
    ) -> Result<Vec<RecordSet>, DnsError> {
        let mut out: BTreeMap<RecordKey, RecordSet> = BTreeMap::new();
        let mut next: (Option<String>, Option<RrType>, Option<String>) = (start, None, None);
        for _ in 0..MAX_PAGES {
            let req = self
                .client
                .list_resource_record_sets()
                .hosted_zone_id(&self.zone_id)
                .max_items(page)
                .set_start_record_name(next.0.clone())
                .set_start_record_type(next.1.clone())
                .set_start_record_identifier(next.2.clone());
            let resp = self
                .aws
                .call(PROVIDER, "ListResourceRecordSets", || req.clone().send())
                .await
                .map_err(|e| call_error("ListResourceRecordSets", &e))?;
            for rrs in resp.resource_record_sets() {
                let name = normalize_name(rrs.name());
                if stop(&name) {
                    return Ok(out.into_values().collect());
                }
                if let Some(record) = from_route53(rrs) {
                    out.insert(record.key.clone(), record);
                }
            }
            if !resp.is_truncated() {
                break;
            }
            let following = (
                resp.next_record_name().map(str::to_string),
                resp.next_record_type().cloned(),
                resp.next_record_identifier().map(str::to_string),
            );
            if following == next || following.0.is_none() {
                tracing::warn!(
                    start = ?following.0,
                    "ListResourceRecordSets did not advance (no NextRecordIdentifier inside a weighted group); \
                     stopping this listing"
                );
                break;
            }
            next = following;
        }
        Ok(out.into_values().collect())
    }

    /// Every record at exactly `name`.
    async fn read_name(&self, name: &str) -> Result<Vec<RecordSet>, DnsError> {
        let target = name.to_string();
        self.list_from(Some(format!("{name}.")), NAME_PAGE, |n| n != target).await
    }

    /// The whole zone, grouped by host (TXT ownership names under their host).
    async fn scan(&self) -> Result<HashMap<String, Vec<RecordSet>>, DnsError> {
        let mut by_host: HashMap<String, Vec<RecordSet>> = HashMap::new();
        for record in self.list_from(None, SCAN_PAGE, |_| false).await? {
            by_host.entry(self.host_of(&record.key.name).to_string()).or_default().push(record);
        }
        Ok(by_host)
    }

    /// The records at a host and at its TXT ownership name.
    async fn read_host(&self, host: &str) -> Result<Vec<RecordSet>, DnsError> {
        let mut records = self.read_name(host).await?;
        records.extend(self.read_name(&self.opts.owner.txt_name(host)).await?);
        Ok(records)
    }

    /// Sends one batch. `Err` carries the outcome class and the message.
    async fn send(&self, changes: &[Change]) -> Result<Option<String>, (Outcome, String)> {
        // Not leading: nothing is sent (and no request counted). Retried by the next leader's pass.
        self.fence.check().map_err(|e| (Outcome::Transport, e.to_string()))?;
        let mut r53 = Vec::with_capacity(changes.len());
        for change in changes {
            r53.push(to_route53_change(change).map_err(|m| (Outcome::Invalid, m))?);
        }
        let batch = ChangeBatch::builder()
            .comment(format!("weir {}", self.opts.owner.cluster))
            .set_changes(Some(r53))
            .build()
            .map_err(|e| (Outcome::Invalid, e.to_string()))?;
        let req = self.client.change_resource_record_sets().hosted_zone_id(&self.zone_id).change_batch(batch);
        // The fence is checked before every attempt, retries after throttling included: a backoff can
        // outlast the lease.
        let attempt = || {
            let fenced = self.fence.check();
            let send = req.clone().send();
            async move {
                match fenced {
                    Ok(()) => send.await,
                    Err(e) => Err(SdkError::construction_failure(e)),
                }
            }
        };
        match self.aws.call(PROVIDER, "ChangeResourceRecordSets", attempt).await {
            Ok(out) => Ok(out.change_info().map(|c| c.id().to_string())),
            Err(e) => Err((classify(&e), describe(&e))),
        }
    }

    /// Sends host groups, splitting a batch rejected as invalid in halves until the bad host is alone.
    async fn send_groups(&self, groups: Vec<Vec<Change>>, report: &mut ApplyReport, change_ids: &mut Vec<String>) {
        let mut stack = vec![groups];
        while let Some(groups) = stack.pop() {
            let changes: Vec<Change> = groups.iter().flatten().cloned().collect();
            match self.send(&changes).await {
                Ok(id) => {
                    change_ids.extend(id);
                    self.remember(&changes);
                    report.applied.extend(changes);
                }
                Err((Outcome::Invalid, _)) if groups.len() > 1 => {
                    let mut first = groups;
                    let second = first.split_off(first.len() / 2);
                    // Pushed in reverse so that the first half is sent first.
                    stack.push(second);
                    stack.push(first);
                }
                Err((outcome, message)) => {
                    tracing::warn!(changes = changes.len(), %message, "Route53 rejected changes");
                    self.forget(&changes);
                    // A closed fence is why `send` refused (before an attempt or a retry).
                    let fenced = self.fence.check().err();
                    for change in changes {
                        let operation = "ChangeResourceRecordSets";
                        let error = match fenced.clone() {
                            Some(source) => DnsError::Fenced { provider: PROVIDER, operation, source },
                            None => DnsError::aws(PROVIDER, operation, message.clone(), outcome),
                        };
                        report.failed.push((change, error));
                    }
                }
            }
        }
    }

    /// Writes applied changes into the cache.
    fn remember(&self, changes: &[Change]) {
        let mut cache = self.cache.lock();
        for change in changes {
            let record = change.record();
            let host = self.host_of(&record.key.name).to_string();
            let entry = cache.hosts.entry(host).or_default();
            entry.retain(|r| r.key != record.key);
            if let Change::Upsert { record, .. } = change {
                entry.push(record.clone());
            }
        }
    }

    /// Marks the hosts of failed changes for a fresh read.
    fn forget(&self, changes: &[Change]) {
        let mut cache = self.cache.lock();
        for change in changes {
            let host = self.host_of(&change.record().key.name).to_string();
            cache.hosts.remove(&host);
            cache.read_at.remove(&host);
            cache.dirty.insert(host);
        }
    }

    /// Waits until every change is INSYNC, or the timeout. Returns the changes not confirmed.
    async fn wait_insync(&self, ids: &[String]) -> Result<(), String> {
        let deadline = Instant::now() + self.opts.insync_timeout;
        let mut delay = Duration::from_millis(250);
        for id in ids {
            loop {
                let req = self.client.get_change().id(id);
                match self.aws.call(PROVIDER, "GetChange", || req.clone().send()).await {
                    Ok(out) if out.change_info().map(|c| c.status()) == Some(&ChangeStatus::Insync) => break,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(change = id, error = %describe(&e), "GetChange failed"),
                }
                if Instant::now() + delay > deadline {
                    return Err(format!("change {id} not INSYNC after {:?}", self.opts.insync_timeout));
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl DnsProvider for Route53Dns {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    async fn current(&self, hosts: &BTreeSet<String>, owner: &Ownership) -> Result<Vec<RecordSet>, DnsError> {
        // With --adopt-owner, external-dns's registry names of each host are read too (by name).
        let registry: BTreeSet<String> = if self.opts.adopt.is_enabled() {
            hosts.iter().flat_map(|h| self.opts.adopt.registry_names(h)).filter(|n| !hosts.contains(n)).collect()
        } else {
            BTreeSet::new()
        };
        let wanted = |name: &String| hosts.contains(name) || registry.contains(name);
        let (cold, to_read) = {
            let cache = self.cache.lock();
            let missing = hosts.iter().chain(&registry).filter(|h| !cache.hosts.contains_key(*h)).cloned();
            let to_read: BTreeSet<String> = cache.dirty.iter().cloned().chain(missing).collect();
            // Two reads per host, or one listing of the zone: whichever is fewer calls.
            let listing_pages = cache.zone_records.div_ceil(SCAN_PAGE as usize).max(1);
            let cold = cache.scanned_at.is_none_or(|t| t.elapsed() >= self.opts.rescan_interval)
                || to_read.len() * 2 > listing_pages;
            (cold, to_read)
        };
        if cold {
            let mut scanned = self.scan().await?;
            let zone_records = scanned.values().map(Vec::len).sum();
            // Keep what matters: requested hosts and hosts this cluster owns (to delete removed ones).
            scanned.retain(|host, records| wanted(host) || records.iter().any(|r| owner.is_owner_txt(r)));
            for name in hosts.iter().chain(&registry) {
                scanned.entry(name.clone()).or_default();
            }
            let now = Instant::now();
            let mut cache = self.cache.lock();
            cache.read_at = scanned.keys().map(|h| (h.clone(), now)).collect();
            cache.hosts = scanned;
            cache.dirty.clear();
            cache.scanned_at = Some(now);
            cache.zone_records = zone_records;
        } else {
            for host in to_read {
                let records = if registry.contains(&host) && !hosts.contains(&host) {
                    self.read_name(&host).await?
                } else {
                    self.read_host(&host).await?
                };
                let mut cache = self.cache.lock();
                cache.dirty.remove(&host);
                cache.read_at.insert(host.clone(), Instant::now());
                cache.hosts.insert(host, records);
            }
        }
        let cache = self.cache.lock();
        let mut out: Vec<RecordSet> = cache
            .hosts
            .iter()
            .filter(|(host, records)| wanted(host) || records.iter().any(|r| owner.is_owner_txt(r)))
            .flat_map(|(_, records)| records.iter().cloned())
            .collect();
        out.sort();
        Ok(out)
    }

    async fn apply(&self, batches: Vec<Vec<Change>>) -> ApplyReport {
        let mut report = ApplyReport::default();
        let mut change_ids = Vec::new();
        let draining: BTreeSet<String> = batches
            .iter()
            .flatten()
            .filter(|c| drains(c))
            .map(|c| self.host_of(&c.record().key.name).to_string())
            .collect();
        let stale = self.recheck(&draining).await;
        for batch in batches {
            // Group by host (a host's changes land together), and refuse a whole host if any of its
            // records would be rejected: a traffic record must never land without its owner TXT.
            let mut groups: BTreeMap<String, Vec<Change>> = BTreeMap::new();
            for change in batch {
                groups.entry(self.host_of(&change.record().key.name).to_string()).or_default().push(change);
            }
            let mut good = Vec::new();
            for (host, changes) in groups {
                match changes.iter().find_map(|c| self.check(c).err()) {
                    None if stale.contains(&host) => {
                        let message = format!(
                            "other clusters' records at {host} changed since they were read (or could not \
                                 be read again); planning again before setting a weight to 0"
                        );
                        tracing::info!(host, "{message}");
                        for change in changes {
                            let error = DnsError::Call {
                                provider: PROVIDER,
                                operation: "ListResourceRecordSets",
                                message: message.clone(),
                                retryable: true,
                            };
                            report.failed.push((change, error));
                        }
                    }
                    None => good.push(changes),
                    Some(err) => {
                        tracing::warn!(host, error = %err, "refusing to send an invalid record");
                        for change in changes {
                            let error = match self.check(&change) {
                                Err(e) => e,
                                Ok(()) => DnsError::InvalidRecord {
                                    key: change.record().key.clone(),
                                    reason: format!("another record of {host} is invalid: {err}"),
                                },
                            };
                            report.failed.push((change, error));
                        }
                    }
                }
            }
            if !good.is_empty() {
                self.send_groups(good, &mut report, &mut change_ids).await;
            }
        }
        if self.opts.wait_insync && !change_ids.is_empty() {
            if let Err(message) = self.wait_insync(&change_ids).await {
                // Landed but not confirmed: report so that the weight is not acknowledged yet.
                for change in std::mem::take(&mut report.applied) {
                    let error = DnsError::Call {
                        provider: PROVIDER,
                        operation: "GetChange",
                        message: message.clone(),
                        retryable: true,
                    };
                    report.failed.push((change, error));
                }
            }
        }
        report
    }

    fn forget_published(&self) {
        *self.cache.lock() = Cache::default();
    }

    async fn prepare(&self, desired: &mut DesiredRecords) {
        if let Some(health) = &self.health {
            health.attach(desired, &self.opts.owner).await;
        }
        // Route53 refuses an ALIAS A beside another cluster's CNAME of the same name: a host where the
        // last read found one keeps its CNAME (docs/aws.md, "ALIAS records").
        {
            let cluster = &self.opts.owner.cluster;
            let cache = self.cache.lock();
            use_aliases(desired, self.opts.alias, |host| {
                let foreign_cname = cache.hosts.get(host).is_some_and(|records| {
                    records.iter().any(|r| r.key.rtype == RecordType::Cname && &r.key.set_identifier != cluster)
                });
                if foreign_cname {
                    tracing::info!(host, "another cluster publishes a CNAME here; keeping this cluster's CNAME");
                }
                foreign_cname
            });
        }
        // Route53 keeps no TTL on an ALIAS (it reads back as 0).
        for record in desired.records.iter_mut().filter(|r| r.alias.is_some()) {
            record.ttl = 0;
        }
        // A host this cluster is about to drain (published > 0, desired 0) is read again before
        // planning: the all-zero guard must decide on the other clusters' records as they are now,
        // not as cached (both to allow the drain and to refuse it).
        let cluster = &self.opts.owner.cluster;
        let mut cache = self.cache.lock();
        let mut dirty = Vec::new();
        for record in desired.records.iter().filter(|r| r.key.rtype.is_traffic() && r.weight == 0) {
            let host = &record.key.name;
            let published = cache.hosts.get(host).is_some_and(|records| {
                records.iter().any(|r| r.key.rtype.is_traffic() && &r.key.set_identifier == cluster && r.weight > 0)
            });
            if published {
                dirty.push(host.clone());
            }
        }
        cache.dirty.extend(dirty);
    }
}

impl Route53Dns {
    /// Reads the hosts about to be drained again (unless read within `recheck_drain_after`) and
    /// returns those whose other clusters' traffic records differ from the cache, or could not be
    /// read: those are not drained now but planned again with the fresh records. Many hosts are
    /// re-read with one listing of the zone when that is cheaper than two reads per host.
    async fn recheck(&self, hosts: &BTreeSet<String>) -> BTreeSet<String> {
        let (due, zone_records) = {
            let cache = self.cache.lock();
            let due: Vec<String> = hosts
                .iter()
                .filter(|h| cache.read_at.get(*h).is_none_or(|t| t.elapsed() >= self.opts.recheck_drain_after))
                .cloned()
                .collect();
            (due, cache.zone_records)
        };
        if due.is_empty() {
            return BTreeSet::new();
        }
        let listing_pages = zone_records.div_ceil(SCAN_PAGE as usize).max(1);
        let mut fresh: HashMap<String, Vec<RecordSet>> = HashMap::new();
        if due.len() * 2 > listing_pages {
            match self.scan().await {
                Ok(mut all) => {
                    for h in &due {
                        fresh.insert(h.clone(), all.remove(h).unwrap_or_default());
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not re-read the zone before draining"),
            }
        } else {
            for h in &due {
                match self.read_host(h).await {
                    Ok(records) => {
                        fresh.insert(h.clone(), records);
                    }
                    Err(e) => tracing::warn!(host = %h, error = %e, "could not re-read before draining"),
                }
            }
        }
        let cluster = &self.opts.owner.cluster;
        let others = |records: &[RecordSet]| -> BTreeSet<(RecordKey, u8)> {
            records
                .iter()
                .filter(|r| r.key.rtype.is_traffic() && &r.key.set_identifier != cluster)
                .map(|r| (r.key.clone(), r.weight))
                .collect()
        };
        let now = Instant::now();
        let mut stale = BTreeSet::new();
        let mut cache = self.cache.lock();
        for h in due {
            let Some(records) = fresh.remove(&h) else {
                stale.insert(h);
                continue;
            };
            cache.read_at.insert(h.clone(), now);
            if cache.hosts.get(&h).map(|c| others(c)) != Some(others(&records)) {
                cache.hosts.insert(h.clone(), records);
                stale.insert(h);
            }
        }
        stale
    }

    /// weir's own checks before sending (the test endpoint validates nothing).
    fn check(&self, change: &Change) -> Result<(), DnsError> {
        let record = change.record();
        validate(record)?;
        if !self.in_zone(&record.key.name) {
            return Err(DnsError::InvalidRecord {
                key: record.key.clone(),
                reason: format!("name is not inside the hosted zone {}", self.zone_name),
            });
        }
        // u8 already bounds the weight to Route53's 0-255.
        Ok(())
    }
}

/// Whether a change takes a traffic record from a positive weight to 0.
fn drains(change: &Change) -> bool {
    match change {
        Change::Upsert { record, previous: Some(prev) } => {
            record.key.rtype.is_traffic() && record.weight == 0 && prev.weight > 0
        }
        _ => false,
    }
}

fn call_error<E, R>(operation: &'static str, e: &aws_sdk_route53::error::SdkError<E, R>) -> DnsError
where
    E: aws_sdk_route53::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    DnsError::aws(PROVIDER, operation, describe(e), classify(e))
}

async fn resolve_zone(client: &Client, aws: &Aws, zone: &ZoneRef) -> Result<ZoneInfo, DnsError> {
    match zone {
        ZoneRef::Id(id) => {
            let (id, name, private) = get_zone(client, aws, id).await?;
            Ok(ZoneInfo { id, name, private })
        }
        ZoneRef::Domain(domain) => {
            let domain = normalize_name(domain);
            // The longest zone containing the domain: try the domain, then each parent.
            let labels: Vec<&str> = domain.split('.').collect();
            for i in 0..labels.len().saturating_sub(1) {
                let candidate = labels[i..].join(".");
                let req = client.list_hosted_zones_by_name().dns_name(format!("{candidate}.")).max_items(10);
                let out = aws
                    .call(PROVIDER, "ListHostedZonesByName", || req.clone().send())
                    .await
                    .map_err(|e| call_error("ListHostedZonesByName", &e))?;
                let found = out
                    .hosted_zones()
                    .iter()
                    .find(|z| normalize_name(z.name()) == candidate && !z.config().is_some_and(|c| c.private_zone()));
                if let Some(z) = found {
                    return Ok(ZoneInfo {
                        id: z.id().trim_start_matches("/hostedzone/").to_string(),
                        name: candidate,
                        private: false,
                    });
                }
            }
            Err(DnsError::Call {
                provider: PROVIDER,
                operation: "ListHostedZonesByName",
                message: format!("no public hosted zone contains {domain:?}; pass --hosted-zone-id"),
                retryable: false,
            })
        }
    }
}

/// The zones of `selection`, sorted by name then id. Fails when none is left: weir would publish nothing.
pub async fn resolve_zones(client: &Client, aws: &Aws, selection: &ZoneSelection) -> Result<Vec<ZoneInfo>, DnsError> {
    let mut zones = Vec::new();
    if selection.ids.is_empty() {
        let domain = normalize_name(&selection.domain);
        let all = list_zones(client, aws).await?;
        let at_or_under = |z: &ZoneInfo| z.name == domain || z.name.ends_with(&format!(".{domain}"));
        zones.extend(all.iter().filter(|z| at_or_under(z)).cloned());
        if !zones.iter().any(|z| z.name == domain) {
            // The binding domain sits inside a zone above it: the longest one (and its twin).
            let above = ZoneInfo { name: domain.clone(), id: String::new(), private: false };
            let parents: Vec<&ZoneInfo> =
                all.iter().filter(|z| z.name != domain && above_contains(z, &above.name)).collect();
            if let Some(longest) = parents.iter().map(|z| z.name.len()).max() {
                zones.extend(parents.into_iter().filter(|z| z.name.len() == longest).cloned());
            }
        }
    } else {
        for id in &selection.ids {
            let (id, name, private) = get_zone(client, aws, id).await?;
            zones.push(ZoneInfo { id, name, private });
        }
    }
    let before = zones.len();
    zones.retain(|z| {
        let keep = selection.zone_type.admits(z.private);
        if !keep {
            tracing::info!(zone_id = z.id, zone_name = z.name, private = z.private, zone_type = ?selection.zone_type, "skipping hosted zone (--zone-type)");
        }
        keep
    });
    zones.sort();
    zones.dedup();
    if zones.is_empty() {
        let what = if selection.ids.is_empty() {
            format!("no hosted zone at, under or above {:?}", selection.domain)
        } else {
            format!("none of --hosted-zone-id {}", selection.ids.join(", "))
        };
        return Err(DnsError::Call {
            provider: PROVIDER,
            operation: "ListHostedZones",
            message: format!(
                "{what} is left by --zone-type {:?} ({before} found); pass --hosted-zone-id or --zone-type",
                selection.zone_type
            ),
            retryable: false,
        });
    }
    Ok(zones)
}

fn above_contains(zone: &ZoneInfo, name: &str) -> bool {
    name.ends_with(&format!(".{}", zone.name))
}

async fn get_zone(client: &Client, aws: &Aws, id: &str) -> Result<(String, String, bool), DnsError> {
    let id = id.trim_start_matches("/hostedzone/").to_string();
    let req = client.get_hosted_zone().id(&id);
    let out = aws.call(PROVIDER, "GetHostedZone", || req.clone().send()).await.map_err(|e| {
        DnsError::aws(PROVIDER, "GetHostedZone", format!("hosted zone {id:?}: {}", describe(&e)), classify(&e))
    })?;
    let zone = out.hosted_zone();
    let name = zone.map(|z| normalize_name(z.name())).unwrap_or_default();
    let private = zone.and_then(|z| z.config()).is_some_and(|c| c.private_zone());
    Ok((id, name, private))
}

/// Every hosted zone of the account (ListHostedZones, paged).
async fn list_zones(client: &Client, aws: &Aws) -> Result<Vec<ZoneInfo>, DnsError> {
    let mut out = Vec::new();
    let mut marker: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let req = client.list_hosted_zones().set_marker(marker.clone()).max_items(100);
        let page = aws
            .call(PROVIDER, "ListHostedZones", || req.clone().send())
            .await
            .map_err(|e| call_error("ListHostedZones", &e))?;
        for z in page.hosted_zones() {
            out.push(ZoneInfo {
                id: z.id().trim_start_matches("/hostedzone/").to_string(),
                name: normalize_name(z.name()),
                private: z.config().is_some_and(|c| c.private_zone()),
            });
        }
        match page.next_marker().filter(|m| page.is_truncated() && Some(*m) != marker.as_deref()) {
            Some(m) => marker = Some(m.to_string()),
            None => break,
        }
    }
    Ok(out)
}

/// Lower case, no trailing dot, Route53's octal escapes (`\052` for `*`) decoded.
pub fn normalize_name(name: &str) -> String {
    let name = name.strip_suffix('.').unwrap_or(name);
    let mut out = String::with_capacity(name.len());
    let bytes = name.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let code = u8::from_str_radix(&name[i + 1..i + 4], 8).unwrap_or(b'?');
            out.push(code as char);
            i += 4;
        } else {
            out.push(bytes[i] as char);
            i += 1;
        }
    }
    out.to_ascii_lowercase()
}

/// A TXT value as Route53 wants it: quoted, with `"` and `\` escaped.
pub fn quote_txt(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The text of a Route53 TXT value: the quoted strings concatenated, escapes decoded.
pub fn unquote_txt(value: &str) -> String {
    let mut out = String::new();
    let mut in_quotes = false;
    let mut chars = value.chars();
    let mut any_quote = false;
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                any_quote = true;
            }
            '\\' if in_quotes => {
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            }
            c if in_quotes => out.push(c),
            _ => {}
        }
    }
    if any_quote {
        out
    } else {
        value.to_string()
    }
}

fn rr_type(t: RecordType) -> RrType {
    match t {
        RecordType::A => RrType::A,
        RecordType::Aaaa => RrType::Aaaa,
        RecordType::Cname => RrType::Cname,
        RecordType::Txt => RrType::Txt,
    }
}

/// A Route53 record set in weir's model. Types weir does not manage are skipped; a record without a
/// set identifier (simple routing) is kept with an empty one so that it counts as another owner's.
pub fn from_route53(rrs: &ResourceRecordSet) -> Option<RecordSet> {
    let rtype = match rrs.r#type() {
        RrType::A => RecordType::A,
        RrType::Aaaa => RecordType::Aaaa,
        RrType::Cname => RecordType::Cname,
        RrType::Txt => RecordType::Txt,
        _ => return None,
    };
    let alias = rrs.alias_target().map(|a| AliasTarget {
        hosted_zone_id: a.hosted_zone_id().trim_start_matches("/hostedzone/").to_string(),
        evaluate_target_health: a.evaluate_target_health(),
    });
    let mut values: Vec<String> = match rrs.alias_target() {
        Some(alias) => vec![normalize_name(alias.dns_name())],
        None => rrs
            .resource_records()
            .iter()
            .map(|r| match rtype {
                RecordType::Txt => unquote_txt(r.value()),
                RecordType::Cname => normalize_name(r.value()),
                _ => r.value().to_string(),
            })
            .collect(),
    };
    values.sort();
    Some(RecordSet {
        key: RecordKey {
            name: normalize_name(rrs.name()),
            rtype,
            set_identifier: rrs.set_identifier().unwrap_or_default().to_string(),
        },
        // Route53 allows 0-255; the test endpoint stores anything, so clamp what is read.
        weight: rrs.weight().unwrap_or(0).clamp(0, 255) as u8,
        ttl: rrs.ttl().unwrap_or(0).clamp(0, u32::MAX as i64) as u32,
        values,
        health_check_id: rrs.health_check_id().map(str::to_string),
        alias,
    })
}

/// One planned change as a Route53 change.
pub fn to_route53_change(change: &Change) -> Result<R53Change, String> {
    let record = change.record();
    let mut rrs = ResourceRecordSet::builder()
        .name(format!("{}.", record.key.name))
        .r#type(rr_type(record.key.rtype))
        .set_identifier(&record.key.set_identifier)
        .weight(i64::from(record.weight))
        .set_health_check_id(record.health_check_id.clone());
    if let Some(alias) = &record.alias {
        // An ALIAS has no TTL and no resource records: Route53 answers with the target's addresses.
        let target = R53AliasTarget::builder()
            .hosted_zone_id(&alias.hosted_zone_id)
            .dns_name(format!("{}.", record.values.first().map(String::as_str).unwrap_or_default()))
            .evaluate_target_health(alias.evaluate_target_health)
            .build()
            .map_err(|e| e.to_string())?;
        rrs = rrs.alias_target(target);
    } else {
        rrs = rrs.ttl(i64::from(record.ttl));
    }
    for value in record.values.iter().filter(|_| record.alias.is_none()) {
        let value = match record.key.rtype {
            RecordType::Txt => quote_txt(value),
            _ => value.clone(),
        };
        rrs = rrs.resource_records(ResourceRecord::builder().value(value).build().map_err(|e| e.to_string())?);
    }
    let action = match change {
        Change::Upsert { .. } => ChangeAction::Upsert,
        Change::Delete { .. } => ChangeAction::Delete,
    };
    R53Change::builder()
        .action(action)
        .resource_record_set(rrs.build().map_err(|e| e.to_string())?)
        .build()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized() {
        assert_eq!(normalize_name("Api.Example.com."), "api.example.com");
        assert_eq!(normalize_name("\\052.example.com."), "*.example.com");
        assert_eq!(normalize_name("a.example.com"), "a.example.com");
    }

    #[test]
    fn txt_values_round_trip() {
        let v = "heritage=weir,weir/owner=eu,weir/resource=ingress/ns/a";
        assert_eq!(quote_txt(v), format!("\"{v}\""));
        assert_eq!(unquote_txt(&quote_txt(v)), v);
        assert_eq!(unquote_txt(&quote_txt("say \"hi\" \\ ok")), "say \"hi\" \\ ok");
        assert_eq!(unquote_txt("\"ab\" \"cd\""), "abcd");
        assert_eq!(unquote_txt("bare"), "bare");
    }

    #[test]
    fn records_convert_both_ways() {
        let record = RecordSet {
            key: RecordKey { name: "a.example.com".into(), rtype: RecordType::Txt, set_identifier: "eu".into() },
            weight: 1,
            ttl: 60,
            values: vec!["heritage=weir,weir/owner=eu".into()],
            health_check_id: None,
            alias: None,
        };
        let change = to_route53_change(&Change::Upsert { record: record.clone(), previous: None }).unwrap();
        let rrs = change.resource_record_set().unwrap();
        assert_eq!(rrs.name(), "a.example.com.");
        assert_eq!(rrs.resource_records()[0].value(), "\"heritage=weir,weir/owner=eu\"");
        assert_eq!(from_route53(rrs), Some(record));
    }

    #[test]
    fn alias_records_convert_both_ways() {
        let record = RecordSet {
            key: RecordKey { name: "example.com".into(), rtype: RecordType::A, set_identifier: "eu".into() },
            weight: 30,
            ttl: 0,
            values: vec!["dualstack.lb-1.eu-west-1.elb.amazonaws.com".into()],
            health_check_id: None,
            alias: Some(AliasTarget { hosted_zone_id: "Z32O12XQLNTSW2".into(), evaluate_target_health: true }),
        };
        let change = to_route53_change(&Change::Upsert { record: record.clone(), previous: None }).unwrap();
        let rrs = change.resource_record_set().unwrap();
        let target = rrs.alias_target().expect("an AliasTarget");
        assert_eq!(target.hosted_zone_id(), "Z32O12XQLNTSW2");
        assert_eq!(target.dns_name(), "dualstack.lb-1.eu-west-1.elb.amazonaws.com.");
        assert!(target.evaluate_target_health());
        assert!(rrs.ttl().is_none() && rrs.resource_records().is_empty(), "an ALIAS has no TTL nor values");
        assert_eq!(rrs.set_identifier(), Some("eu"));
        assert_eq!(rrs.weight(), Some(30));
        assert_eq!(from_route53(rrs), Some(record));
    }

    #[test]
    fn foreign_weights_are_clamped_and_other_types_skipped() {
        let rrs = ResourceRecordSet::builder()
            .name("a.example.com.")
            .r#type(RrType::Cname)
            .set_identifier("other")
            .weight(1000)
            .ttl(30)
            .resource_records(ResourceRecord::builder().value("LB.example.net.").build().unwrap())
            .build()
            .unwrap();
        let r = from_route53(&rrs).unwrap();
        assert_eq!(r.weight, 255);
        assert_eq!(r.values, vec!["lb.example.net".to_string()]);
        let mx = ResourceRecordSet::builder().name("a.example.com.").r#type(RrType::Mx).build().unwrap();
        assert_eq!(from_route53(&mx), None);
    }
}
