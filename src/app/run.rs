//! `weir controller` and `weir local`: every loop of one cluster, wired in one place.
//!
//! Order: input provider (first snapshot loaded) → weight store → DNS provider (and, for the embedded
//! one, the DNS server) → metrics server → weight loop → DNS loop. Each loop subscribes to a `watch`
//! channel and stops when the shutdown channel flips.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::{watch, Notify};

use super::factories::{open_dns_provider, open_weight_store, pipeline_config, start_provider, wait_shutdown};
use super::runtime::Runtime;
use crate::cli::{parse_flags, ControllerArgs, DnsProviderKind, LocalArgs, ProviderKind, SelectionArgs, XdsArgs};
use crate::http_serve::HttpServer;
use crate::reconciler::dns::DnsLoop;
use crate::reconciler::leader::writer_guards;
use crate::reconciler::metrics::{ReconcileMetrics, WeightMetrics};
use crate::reconciler::weight::WeightLoop;
use crate::telemetry::{self, Readiness};

/// How often `weir local` re-checks everything even when no input changed.
const LOCAL_RESYNC: Duration = Duration::from_secs(30);

pub async fn controller(args: ControllerArgs) -> Result<()> {
    run(args, None, &Runtime::new()).await
}

/// `weir local` is the controller on the embedded default: file provider, SQLite store and zone, and
/// the DNS server that answers from the zone. With `--xds-name`, `weir xds` too, on the same runtime
/// (one shutdown signal, one registry served on both addresses).
pub async fn local(args: LocalArgs) -> Result<()> {
    let dns_listen = args.dns_listen;
    let (controller, xds) = local_settings(args)?;
    let rt = Runtime::new();
    match xds {
        Some(xds) => {
            tokio::try_join!(run(controller, Some(dns_listen), &rt), super::xds::serve(xds, &rt))?;
            Ok(())
        }
        None => run(controller, Some(dns_listen), &rt).await,
    }
}

/// `weir local`'s settings: the controller's (and `weir xds`'s) flags parsed by clap, so that every
/// setting local does not choose has the default it has there; then what local's own flags say.
pub(crate) fn local_settings(args: LocalArgs) -> Result<(ControllerArgs, Option<XdsArgs>)> {
    let resync = format!("{}s", LOCAL_RESYNC.as_secs());
    let cluster = format!("--cluster-name={}", args.cluster_name);
    let argv =
        [&cluster, "--resync-interval", &resync, "--provider=file", "--backend-type=sqlite", "--dns-provider=embedded"];
    let mut c: ControllerArgs = parse_flags(&argv)?;
    c.cluster.selection = SelectionArgs {
        binding_domain: args.binding_domain,
        annotation_filters: args.annotation_filters,
        annotation_prefix: args.annotation_prefix,
        dev_mode: args.dev_mode,
        host_namespaces: Vec::new(),
    };
    c.provider.manifests = Some(args.manifests);
    c.provider.manifests_poll_interval = args.manifests_poll_interval;
    c.provider.file_limits = args.file_limits;
    c.store.db = Some(args.db.clone());
    c.store.initial_weight = args.initial_weight;
    c.dns.dns_listen = Some(args.dns_listen);
    // Unset: the embedded provider's default (DnsArgs::record_ttl), the rule `weir plan` uses too.
    c.dns.record_ttl = args.record_ttl;
    c.dns.allow_all_zero = args.allow_all_zero;
    c.dns.server = args.dns_server;
    c.metrics_addr = args.metrics_addr;
    c.weight_poll_interval = args.weight_poll_interval;
    c.min_serving_clusters = args.min_serving_clusters;
    c.gate_ca_file = args.gate_ca_file;
    // The xDS half: the same manifests, its state in the same SQLite file, no status to write.
    let xds = match args.xds_name {
        Some(name) => {
            let name = format!("--name={name}");
            let mut x: XdsArgs = parse_flags(&[name.as_str(), "--provider=file", "--no-status"])?;
            x.provider = c.provider.clone();
            x.namespace = args.xds_namespace;
            x.grpc_addr = args.grpc_addr;
            x.admin_addr = args.admin_addr;
            x.state = Some(args.db);
            x.xds_limits = args.xds_limits;
            Some(x)
        }
        None => None,
    };
    Ok((c, xds))
}

async fn run(args: ControllerArgs, dns_listen: Option<SocketAddr>, rt: &Runtime) -> Result<()> {
    let shutdown = rt.shutdown();
    let invalid = rt.invalid.clone();
    let readiness = Readiness::default();
    let liveness = crate::telemetry::Liveness::default();
    let http_metrics = rt.http.clone();
    let cluster = args.cluster.cluster_name.clone();
    anyhow::ensure!(!cluster.is_empty(), "--cluster-name must not be empty");

    let (snapshots, provider_task) = start_provider(&args.provider, rt, &liveness).await?;
    let store = open_weight_store(&args.store, &cluster).await?;
    let mut tasks = vec![provider_task];
    // Every writer holds a guard: on shutdown the Lease is released once their passes ended.
    let (writer_guard, writers_done) = writer_guards();
    let (_leader_tx, leader, fence) =
        super::kubernetes::start_leader_election(&args.leader, rt, &liveness, writers_done, &mut tasks).await?;
    let dns = open_dns_provider(&args.dns, &args.store, &args.cluster, &fence, rt).await?;

    // The embedded zone is served by weir's own DNS server when an address is given.
    let dns_listen =
        dns_listen.or(if args.dns.dns_provider == DnsProviderKind::Embedded { args.dns.dns_listen } else { None });
    if let (Some(addr), Some(zone)) = (dns_listen, dns.zone.as_ref()) {
        let options = super::factories::dns_server_options(
            &args.dns.server,
            &args.cluster.selection.binding_domain,
            args.dns.prefer_cname,
        );
        let metrics = crate::dns::server::DnsServerMetrics::register(&mut rt.registry());
        tasks.push(super::factories::serve_embedded_dns(addr, zone, options, metrics, shutdown.clone()).await?);
    }

    // The sink's task ends when the DNS loop (and with it the sink) is dropped.
    let (sink, _events_task) = super::kubernetes::refusal_sink(args.provider.provider, rt).await?;
    let (weight_metrics, reconcile_metrics, ramp_metrics) = {
        let mut registry = rt.registry();
        let weight_metrics = WeightMetrics::register(&mut registry);
        // Process-wide families: every AWS call and health check status, whichever component made them.
        crate::aws::AwsMetrics::register(&mut registry);
        crate::dns::route53::HealthMetrics::register(&mut registry);
        let reconcile = ReconcileMetrics::register(&mut registry);
        (weight_metrics, reconcile, crate::reconciler::ramp::RampMetrics::register(&mut registry))
    };
    // Exposed as 0 from the start, so that `increase()` sees the first abort.
    let _ = ramp_metrics.aborted.get_or_create(&crate::reconciler::metrics::labels(&[("cluster", &cluster)]));
    // The infra manager (TrafficInfra → child objects) needs the Kubernetes API.
    let infra_loop = if args.provider.provider == ProviderKind::Kubernetes {
        let metrics = crate::reconciler::infra::InfraMetrics::register(&mut rt.registry());
        Some(crate::reconciler::infra::InfraLoop {
            client: rt.kube("the infra manager").await?,
            metrics,
            invalid: invalid.clone(),
            sink: sink.clone(),
            resync: args.resync_interval,
            leader: leader.clone(),
            fence: fence.clone(),
        })
    } else {
        None
    };
    // Start-up work before `/metrics` answers (a caller that sees it up finds the row created soon
    // after): the gate's trust store (the system's roots are read here) and who we are to the store.
    let gate_tls = crate::reconciler::ramp::GateTls::new(args.gate_ca_file.as_deref())?;
    let actor = crate::backends::controller_actor(store.caller_identity().await.as_deref(), &cluster);
    // Every long-running loop beats; `/healthz` names the one that stopped making progress.
    let heartbeat = |name, bound| liveness.heartbeat(name, bound);
    let weight_beat = heartbeat("weight loop", crate::reconciler::weight::WEIGHT_LOOP_BOUND);
    let dns_beat = heartbeat("DNS reconcile", crate::reconciler::dns::DNS_LOOP_BOUND);
    let plan_beat = heartbeat("ramp runner", crate::reconciler::ramp::PLAN_LOOP_BOUND);
    let router = telemetry::router(rt.shared_registry(), readiness.clone(), liveness);
    let limits = crate::http_serve::HttpLimits::default();
    let server = HttpServer { name: "metrics", limits, metrics: http_metrics.clone() };
    let metrics_task = telemetry::serve(server, args.metrics_addr, router, wait_shutdown(shutdown.clone()))
        .await
        .with_context(|| format!("binding the metrics server on {}", args.metrics_addr))?;
    if let Some(addr) = args.webhook_addr {
        let webhook = crate::operator::webhook::serve(
            HttpServer { name: "webhook", limits, metrics: http_metrics },
            addr,
            &args.webhook_cert_dir,
            snapshots.clone(),
            shutdown.clone(),
        );
        tasks.push(webhook.await.context("starting the validating webhook")?);
    }

    let poll_now = Arc::new(Notify::new());
    // A DesiredWeight edit wakes the weight loop at once where the store can tell (DynamoDB Streams,
    // SQLite commits); the poll stays the fallback.
    if let Some(task) = store.spawn_change_hints(&cluster, poll_now.clone(), shutdown.clone()) {
        tasks.push(task);
    }
    let (weight_tx, weight_rx) = watch::channel(None);
    let (rows_tx, rows_rx) = watch::channel(None);
    let plan_loop = crate::reconciler::ramp::PlanLoop {
        store: store.clone(),
        cluster: cluster.clone(),
        metrics: ramp_metrics,
        leader: leader.clone(),
        rows: rows_rx,
        poll_weight_now: poll_now.clone(),
        gate_tls,
        actor,
        heartbeat: plan_beat,
    };
    let weight_loop = WeightLoop {
        store: store.clone(),
        cluster: cluster.clone(),
        initial_weight: args.store.initial_weight,
        interval: args.weight_poll_interval,
        metrics: weight_metrics,
        invalid: invalid.clone(),
        poll_now: poll_now.clone(),
        min_serving_clusters: args.min_serving_clusters,
        rows: Some(rows_tx),
        sink: sink.clone(),
        refusal_object: if args.provider.provider == ProviderKind::Kubernetes {
            super::kubernetes::own_pod()
        } else {
            None
        },
        heartbeat: weight_beat,
    };
    let live_weights = super::factories::open_live_weights(&args.provider, &args.store, &args.xds_state, rt).await?;
    tracing::info!(source = %live_weights.describe(), "strategy weights of weir xds");
    let dns_loop = DnsLoop {
        live_weights,
        config: pipeline_config(&args.cluster, &args.dns),
        dns: dns.dns,
        store,
        metrics: reconcile_metrics,
        invalid,
        sink,
        resync: args.resync_interval,
        poll_weight_now: poll_now,
        readiness,
        leader,
        fence,
        heartbeat: dns_beat,
    };
    tracing::info!(%cluster, "weir running");
    tasks.push(tokio::spawn(weight_loop.run(weight_tx, shutdown.clone())));
    tasks.push(tokio::spawn(plan_loop.run(shutdown.clone())));
    if let Some(infra_loop) = infra_loop {
        let guard = writer_guard.clone();
        let run = infra_loop.run(snapshots.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move {
            run.await;
            drop(guard);
        }));
    }
    let run = dns_loop.run(snapshots, weight_rx, shutdown.clone());
    tasks.push(tokio::spawn(async move {
        run.await;
        drop(writer_guard);
    }));

    wait_shutdown(shutdown).await;
    // The elector may wait for the in-flight pass (at most its fence) and then for the release call
    // (at most the renew deadline).
    let mut grace = Duration::from_secs(5);
    if args.leader.enable_leader_election {
        grace += args.leader.renew_deadline * 2;
    }
    let _ = tokio::time::timeout(grace, futures::future::join_all(tasks)).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), metrics_task).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    fn parse(argv: &[&str]) -> Command {
        Cli::try_parse_from(argv).unwrap().command
    }

    /// `weir local` runs `weir controller` and `weir xds` as their own command lines would: every
    /// setting local does not choose has their default.
    #[test]
    fn local_runs_the_controller_and_xds_with_their_own_defaults() {
        let local = ["weir", "local", "--manifests", "m", "--db", "w.db", "--cluster-name", "eu", "--xds-name", "shop"];
        let Command::Local(local) = parse(&local) else { unreachable!() };
        let (controller, xds) = super::local_settings(local).unwrap();
        let Command::Controller(want) = parse(&[
            "weir",
            "controller",
            "--cluster-name",
            "eu",
            "--provider",
            "file",
            "--manifests",
            "m",
            "--backend-type",
            "sqlite",
            "--db",
            "w.db",
            "--dns-provider",
            "embedded",
            "--dns-listen",
            "127.0.0.1:5353",
            "--metrics-addr",
            "127.0.0.1:8080",
            "--resync-interval",
            "30s",
        ]) else {
            unreachable!()
        };
        assert_eq!(format!("{controller:#?}"), format!("{want:#?}"));
        // One TTL rule: what local publishes is what `weir plan` on its database expects.
        let Command::Plan(plan) = parse(&["weir", "plan", "--cluster-name", "eu", "--dns-provider", "embedded"]) else {
            unreachable!()
        };
        assert_eq!(controller.dns.record_ttl(), crate::cli::EMBEDDED_RECORD_TTL);
        assert_eq!(plan.dns.record_ttl(), controller.dns.record_ttl());
        let Command::Xds(want) = parse(&[
            "weir",
            "xds",
            "--name",
            "shop",
            "--provider",
            "file",
            "--manifests",
            "m",
            "--grpc-addr",
            "127.0.0.1:18000",
            "--admin-addr",
            "127.0.0.1:18080",
            "--state",
            "w.db",
            "--no-status",
        ]) else {
            unreachable!()
        };
        assert_eq!(format!("{:#?}", xds.expect("--xds-name given")), format!("{want:#?}"));
    }
}
