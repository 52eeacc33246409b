//! `weir plan` and `weir explain HOST`: one pass of the pipeline that reads everything and writes
//! nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::sync::watch;

use super::factories::{open_dns_provider, open_live_weights, open_weight_store, pipeline_config, start_provider};
use crate::backends::StoredWeight;
use crate::cli::{ClusterArgs, DnsArgs, ExplainArgs, OutputFormat, PlanArgs, ProviderArgs, StoreArgs, XdsStateArgs};
use crate::dns::plan::{Change, Plan};
use crate::dns::record::{Ownership, RecordSet};
use crate::dns::zoned::ZonedPlan;
use crate::dns::zones::ZoneInfo;
use crate::ir::DesiredState;
use crate::model::Snapshot;
use crate::reconciler::explain::explain;
use crate::reconciler::PipelineConfig;

/// What one read-only pass saw.
struct Pass {
    config: PipelineConfig,
    weight: u8,
    weight_note: Option<String>,
    state: DesiredState,
    /// Per zone: what it gets, what it holds, the plan.
    zoned: ZonedPlan,
    route53: Option<Arc<crate::dns::route53::Route53Dns>>,
}

async fn read_pass(
    cluster: &ClusterArgs,
    provider: &ProviderArgs,
    store_args: &StoreArgs,
    dns: &DnsArgs,
    extra_host: Option<&str>,
    xds_state: &XdsStateArgs,
) -> Result<Pass> {
    // Stopped once the first snapshot is read.
    let (stop_tx, stop_rx) = watch::channel(false);
    let rt = super::runtime::Runtime::with_shutdown(stop_rx);
    let (snapshots, task) = start_provider(provider, &rt, &crate::telemetry::Liveness::default()).await?;
    let snapshot: Arc<Snapshot> = snapshots.borrow().clone();
    let _ = stop_tx.send(true);
    let _ = task.await;

    let name = &cluster.cluster_name;
    let store = open_weight_store(store_args, name).await?;
    // Read, never create: the weight a controller would apply now.
    let (weight, weight_note) = match store.get(name).await.context("reading the weight row")? {
        Some(row) => match (&row.desired, row.current.valid()) {
            (StoredWeight::Valid(d), _) => (*d, None),
            (StoredWeight::Invalid(raw), Some(c)) => {
                (c, Some(format!("DesiredWeight {raw:?} is not a weight: CurrentWeight {c} keeps applying")))
            }
            (StoredWeight::Invalid(raw), None) => {
                bail!("cluster {name}: neither DesiredWeight {raw:?} nor CurrentWeight is a weight")
            }
        },
        None => (
            store_args.initial_weight,
            Some(format!(
                "no weight row for {name}: a controller would create it with --initial-weight {}",
                store_args.initial_weight
            )),
        ),
    };
    // `weir explain` only reads: a closed fence makes sure of it.
    let dns_parts =
        open_dns_provider(dns, store_args, cluster, &crate::reconciler::leader::Fence::closed(), &rt).await?;
    let config = pipeline_config(cluster, dns);
    // The same source and the same function as the controller's DNS loop.
    let live = open_live_weights(provider, store_args, xds_state, &rt)
        .await?
        .read(&snapshot)
        .await
        .context("reading the strategy weights of weir xds")?;
    let (state, desired) = config.desired(&snapshot, weight, &live);
    // What the controller would attach (Route53 health checks), looked up without creating anything.
    if let Some(r53) = &dns_parts.route53 {
        r53.read_only();
    }
    let extra: Vec<String> = extra_host.map(crate::selection::normalize_host).into_iter().collect();
    let zoned = dns_parts.dns.plan(&desired, &state, &config.owner, config.allow_all_zero, &extra).await.map_err(
        |(zone, e)| {
            let zone = zone.map(|z| format!(" in {}", z.label())).unwrap_or_default();
            anyhow::anyhow!("reading published records{zone}: {e}")
        },
    )?;
    Ok(Pass { config, weight, weight_note, state, zoned, route53: dns_parts.route53 })
}

#[derive(Serialize)]
struct PlanOutput<'a> {
    cluster: &'a str,
    cluster_weight: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<&'a str>,
    /// Every zone's plan in one.
    #[serde(flatten)]
    plan: &'a Plan,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    input_refusals: &'a [crate::ir::Refusal],
    /// The object each ownership id in the plan's TXT values stands for.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    object_ids: BTreeMap<String, crate::model::ObjectRef>,
    /// Per hosted zone (Route53); absent for a provider without zones.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    zones: Vec<ZonePlanOutput<'a>>,
}

#[derive(Serialize)]
struct ZonePlanOutput<'a> {
    zone: &'a ZoneInfo,
    #[serde(flatten)]
    plan: &'a Plan,
}

pub async fn plan_command(args: PlanArgs) -> Result<()> {
    let pass = read_pass(&args.cluster, &args.provider, &args.store, &args.dns, None, &args.xds_state).await?;
    let plan = pass.zoned.merged();
    let input_refusals: Vec<crate::ir::Refusal> =
        pass.state.refusals.iter().chain(&pass.zoned.no_zone).cloned().collect();
    let zones = pass
        .zoned
        .zones
        .iter()
        .filter_map(|z| z.info.as_ref().map(|zone| ZonePlanOutput { zone, plan: &z.plan }))
        .collect();
    let object_ids = object_ids(&plan, &pass.state, &pass.config.owner);
    let out = PlanOutput {
        object_ids,
        cluster: &pass.config.owner.cluster,
        cluster_weight: pass.weight,
        note: pass.weight_note.as_deref(),
        plan: &plan,
        input_refusals: &input_refusals,
        zones,
    };
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&out)?),
        OutputFormat::Table => print!("{}", plan_table(&out)),
    }
    Ok(())
}

/// id → object for every ownership id in the plan's TXT values that this cluster's objects have.
fn object_ids(plan: &Plan, state: &DesiredState, owner: &Ownership) -> BTreeMap<String, crate::model::ObjectRef> {
    let mut out = BTreeMap::new();
    for change in plan.changes() {
        let previous = match change {
            Change::Upsert { previous: Some(p), .. } => Some(p),
            _ => None,
        };
        for r in std::iter::once(change.record()).chain(previous) {
            if let Some(crate::dns::record::TxtMark::Id(id)) = crate::dns::record::txt_mark(&r.values) {
                if let Some(object) = owner.object_of(&r.values, state.dns.iter().map(|i| &i.source)) {
                    out.insert(id, object);
                }
            }
        }
    }
    out
}

fn plan_table(out: &PlanOutput<'_>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "cluster {} at weight {}", out.cluster, out.cluster_weight);
    if let Some(note) = out.note {
        let _ = writeln!(s, "note: {note}");
    }
    if out.zones.is_empty() {
        changes_table(&mut s, out.plan);
    } else {
        for z in &out.zones {
            let _ = writeln!(s, "zone {}", z.zone.label());
            changes_table(&mut s, z.plan);
        }
    }
    for a in &out.plan.adopted {
        let _ = writeln!(
            s,
            "adopt: {} from external-dns owner {} (deleting its registry TXT {})",
            a.host,
            a.external_owner,
            a.registry_txt.join(", ")
        );
    }
    for (id, object) in &out.object_ids {
        let _ = writeln!(s, "ownership id {id} = {object}");
    }
    for r in out.input_refusals.iter().chain(out.plan.refusals.iter()) {
        let _ = writeln!(s, "refused: {} [{}] {}", r.object, r.reason, r.message);
    }
    s
}

fn changes_table(s: &mut String, plan: &Plan) {
    if plan.is_empty() {
        let _ = writeln!(s, "no changes");
        return;
    }
    let _ = writeln!(s, "{:<7} {:<40} {:<6} {:>6} {:>6}  VALUES (WAS)", "ACTION", "NAME", "TYPE", "WEIGHT", "TTL");
    for change in plan.changes() {
        let r = change.record();
        let was = match change {
            Change::Upsert { previous: Some(p), .. } => {
                format!("  (was weight {} ttl {} {})", p.weight, p.ttl, p.values.join(","))
            }
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "{:<7} {:<40} {:<6} {:>6} {:>6}  {}{was}",
            change.action(),
            r.key.name,
            r.key.rtype.as_str(),
            r.weight,
            r.ttl,
            r.values.join(",")
        );
    }
    let _ = writeln!(s, "{} change(s)", plan.len());
}

pub async fn explain_command(args: ExplainArgs) -> Result<()> {
    let pass =
        read_pass(&args.cluster, &args.provider, &args.store, &args.dns, Some(&args.host), &args.xds_state).await?;
    let host = crate::selection::normalize_host(&args.host);
    // The records of the zone(s) that take the host; a host in no zone is refused, and says so.
    let homes: Vec<&crate::dns::zoned::ZonePlan> =
        pass.zoned.zones.iter().filter(|z| z.info.as_ref().is_none_or(|i| i.contains(&host))).collect();
    let longest = homes.iter().filter_map(|z| z.info.as_ref().map(|i| i.name.len())).max();
    let homes: Vec<_> = homes.into_iter().filter(|z| z.info.as_ref().map(|i| i.name.len()) == longest).collect();
    let current: Vec<RecordSet> = homes.first().map(|z| z.current.clone()).unwrap_or_default();
    let mut state = pass.state.clone();
    state.refusals.extend(pass.zoned.no_zone.iter().cloned());
    let mut e = explain(&args.host, &state, &current, &pass.config.owner, pass.config.allow_all_zero);
    e.notes.extend(pass.weight_note);
    let labels: Vec<String> = homes.iter().filter_map(|z| z.info.as_ref().map(ZoneInfo::label)).collect();
    match labels.len() {
        0 if !pass.zoned.zones.iter().any(|z| z.info.is_none()) => {
            e.notes.push(format!("{host} is in none of the hosted zones weir manages: it is not published"))
        }
        0 => {}
        1 => e.notes.push(format!("hosted zone {}", labels[0])),
        _ => e.notes.push(format!(
            "hosted zones {} (split horizon: each gets the record; shares shown from the first)",
            labels.join(", ")
        )),
    }
    if let (Some(r53), Some(targets)) = (&pass.route53, &e.targets) {
        // Route53 health checks of this cluster's targets (looked up, never created here).
        let names: Vec<String> = targets
            .hostnames
            .iter()
            .cloned()
            .chain(targets.ipv4.iter().map(|ip| ip.to_string()))
            .chain(targets.ipv6.iter().map(|ip| ip.to_string()))
            .collect();
        match r53.health_check_status(&names).await {
            Ok(states) => e.notes.extend(states.into_iter().map(|s| {
                let status = match s.healthy {
                    Some(true) => "healthy",
                    Some(false) => "UNHEALTHY",
                    None => "unknown",
                };
                format!("Route53 health check {} for {}: {status} ({})", s.id, s.target, s.detail)
            })),
            Err(err) => e.notes.push(format!("could not read Route53 health checks: {err}")),
        }
    }
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&e)?),
        OutputFormat::Table => print!("{}", e.to_text()),
    }
    Ok(())
}
