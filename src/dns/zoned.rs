//! The DNS side of a pass, per hosted zone: each zone's records are completed, read, planned and
//! applied on their own (a public and a private zone of one name hold the same keys, so they cannot
//! share one plan). The embedded and DNSEndpoint providers are one zone that takes every host.
//!
//! The controller loop and `weir plan`/`weir explain` both go through [`ZonedDns::plan`], so what
//! `weir plan` prints is what the controller would do.

use std::sync::Arc;

use super::adopt::{adoptable, AdoptOptions};
use super::plan::{plan, Plan};
use super::record::{DesiredRecords, Ownership, RecordSet};
use super::zones::{split, ZoneInfo, ZoneSplit};
use super::{DnsError, DnsProvider};
use crate::ir::{DesiredState, Refusal};

/// One place records go.
pub struct Zone {
    /// `None`: a provider without hosted zones, which takes every host.
    pub info: Option<ZoneInfo>,
    pub provider: Arc<dyn DnsProvider>,
}

/// Every zone weir writes to, and the external-dns owners whose records it takes over.
pub struct ZonedDns {
    pub zones: Vec<Zone>,
    pub adopt: AdoptOptions,
}

/// One zone's part of a pass.
pub struct ZonePlan {
    pub info: Option<ZoneInfo>,
    pub desired: DesiredRecords,
    pub current: Vec<RecordSet>,
    pub plan: Plan,
}

/// A pass's plans, one per zone, and the hosts no zone takes.
pub struct ZonedPlan {
    pub zones: Vec<ZonePlan>,
    /// `no_zone` refusals: these hosts are not published; they are not held either.
    pub no_zone: Vec<Refusal>,
}

impl ZonedPlan {
    /// Every zone's plan in one (a twin zone's host appears once per zone), for the log, the held
    /// hosts and the ack.
    pub fn merged(&self) -> Plan {
        let mut out = Plan::default();
        for z in &self.zones {
            out.hosts.extend(z.plan.hosts.iter().cloned());
            out.refusals.extend(z.plan.refusals.iter().cloned());
            out.held.extend(z.plan.held.iter().cloned());
            out.adopted.extend(z.plan.adopted.iter().cloned());
        }
        out.refusals.sort();
        out.refusals.dedup();
        out.held.sort();
        out.held.dedup_by(|a, b| a.host == b.host);
        out
    }

    /// What is published in every zone (for metrics).
    pub fn current(&self) -> Vec<RecordSet> {
        self.zones.iter().flat_map(|z| z.current.iter().cloned()).collect()
    }
}

impl ZonedDns {
    /// One provider that takes every host.
    pub fn single(provider: Arc<dyn DnsProvider>) -> Self {
        Self { zones: vec![Zone { info: None, provider }], adopt: AdoptOptions::default() }
    }

    pub fn with_adopt(mut self, adopt: AdoptOptions) -> Self {
        self.adopt = adopt;
        self
    }

    pub fn forget_published(&self) {
        for z in &self.zones {
            z.provider.forget_published();
        }
    }

    fn split(&self, desired: &DesiredRecords, state: &DesiredState, owner: &Ownership) -> ZoneSplit {
        let infos: Option<Vec<ZoneInfo>> = self.zones.iter().map(|z| z.info.clone()).collect();
        match infos {
            Some(infos) => split(desired, state, &infos, &owner.txt_prefix),
            None => ZoneSplit { per_zone: vec![desired.clone(); self.zones.len()], refusals: Vec::new() },
        }
    }

    /// Per zone: complete the records (health checks, ALIAS), read what is published at `extra_hosts`
    /// and the zone's hosts, find what can be adopted, plan. A zone that cannot be read fails the
    /// whole pass (nothing is written on a partial view).
    pub async fn plan(
        &self,
        desired: &DesiredRecords,
        state: &DesiredState,
        owner: &Ownership,
        allow_all_zero: bool,
        extra_hosts: &[String],
    ) -> Result<ZonedPlan, (Option<ZoneInfo>, DnsError)> {
        let split = self.split(desired, state, owner);
        let mut zones = Vec::with_capacity(self.zones.len());
        for (zone, mut desired) in self.zones.iter().zip(split.per_zone) {
            zone.provider.prepare(&mut desired).await;
            let mut hosts = desired.hosts.clone();
            let in_zone = |h: &String| zone.info.as_ref().is_none_or(|z| z.contains(h));
            hosts.extend(extra_hosts.iter().filter(|h| in_zone(h)).cloned());
            let current = zone.provider.current(&hosts, owner).await.map_err(|e| (zone.info.clone(), e))?;
            desired.adopt = adoptable(&desired, &current, owner, &self.adopt);
            let plan = plan(&desired, &current, owner, allow_all_zero);
            zones.push(ZonePlan { info: zone.info.clone(), desired, current, plan });
        }
        Ok(ZonedPlan { zones, no_zone: split.refusals })
    }
}
