//! `weir controller` and `weir local`: every loop of one cluster, wired in one place.
//!
//! Order: input provider (first snapshot loaded) → weight store → DNS provider (and, for the embedded
//! one, the DNS server) → metrics server → weight loop → DNS loop. Each loop subscribes to a `watch`
//! channel and stops when the shutdown channel flips.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use prometheus_client::registry::Registry;
use tokio::sync::{watch, Notify};

use super::factories::{
    open_dns_provider, open_weight_store, pipeline_config, shutdown_signal, start_provider, wait_shutdown,
};
use crate::backends::BackendType;
use crate::cli::{
    ClusterArgs, ControllerArgs, DnsArgs, DnsProviderKind, LeaderArgs, LocalArgs, ProviderArgs, ProviderKind,
    SelectionArgs, StoreArgs, XdsArgs,
};
use crate::http_serve::HttpServer;
use crate::reconciler::dns::DnsLoop;
use crate::reconciler::leader::writer_guards;
use crate::reconciler::metrics::{ReconcileMetrics, WeightMetrics};
use crate::reconciler::weight::WeightLoop;
use crate::telemetry::{self, InvalidInputs, Readiness};

/// How often `weir local` re-checks everything even when no input changed.
const LOCAL_RESYNC: Duration = Duration::from_secs(30);

pub async fn controller(args: ControllerArgs) -> Result<()> {
    run(args, None).await
}

/// `weir local` is the controller on the embedded default: file provider, SQLite store and zone, and
/// the DNS server that answers from the zone.
pub async fn local(args: LocalArgs) -> Result<()> {
    let dns_listen = args.dns_listen;
    // The xDS half, when asked for: the same manifests, its state in the same SQLite file.
    let xds = args.xds_name.clone().map(|name| XdsArgs {
        provider: ProviderArgs {
            provider: ProviderKind::File,
            manifests: Some(args.manifests.clone()),
            manifests_poll_interval: args.manifests_poll_interval,
            file_limits: args.file_limits.clone(),
        },
        name,
        namespace: args.xds_namespace.clone(),
        grpc_addr: args.grpc_addr,
        admin_addr: args.admin_addr,
        services: Vec::new(),
        state: Some(args.db.clone()),
        admin_token_file: None,
        metrics_addr: None,
        xds_initial_concurrency: crate::xds::server::DEFAULT_INITIAL_CONCURRENCY,
        allow_any_node_id: false,
        no_status: true,
    });
    let controller = ControllerArgs {
        cluster: ClusterArgs {
            cluster_name: args.cluster_name,
            selection: SelectionArgs {
                binding_domain: args.binding_domain,
                annotation_filters: args.annotation_filters,
                annotation_prefix: args.annotation_prefix,
                dev_mode: args.dev_mode,
            },
        },
        provider: ProviderArgs {
            provider: ProviderKind::File,
            manifests: Some(args.manifests),
            manifests_poll_interval: args.manifests_poll_interval,
            file_limits: args.file_limits.clone(),
        },
        store: StoreArgs {
            backend_type: BackendType::Sqlite,
            db: Some(args.db),
            table_name: String::new(),
            initial_weight: args.initial_weight,
            static_weight: None,
            aws_region: None,
            history_table: None,
        },
        dns: DnsArgs {
            dns_provider: DnsProviderKind::Embedded,
            dns_listen: Some(dns_listen),
            hosted_zone_id: Vec::new(),
            zone_type: crate::cli::ZoneTypeArg::All,
            adopt_owner: Vec::new(),
            adopt_txt_prefix: String::new(),
            adopt_txt_suffix: String::new(),
            record_ttl: Some(args.record_ttl),
            aws_health_check_id: None,
            health_check_path: None,
            health_check_port: 443,
            health_check_protocol: "HTTPS".into(),
            txt_prefix: crate::dns::record::DEFAULT_TXT_PREFIX.into(),
            allow_all_zero: args.allow_all_zero,
            wait_insync: false,
            server: args.dns_server,
            prefer_cname: false,
            evaluate_target_health: true,
        },
        leader: LeaderArgs {
            enable_leader_election: false,
            leader_election_namespace: String::new(),
            leader_election_id: String::new(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        },
        metrics_addr: args.metrics_addr,
        weight_poll_interval: args.weight_poll_interval,
        min_serving_clusters: args.min_serving_clusters,
        gate_ca_file: args.gate_ca_file,
        resync_interval: LOCAL_RESYNC,
        webhook_addr: None,
        webhook_cert_dir: PathBuf::new(),
    };
    match xds {
        Some(xds) => {
            tokio::try_join!(run(controller, Some(dns_listen)), super::xds::xds(xds))?;
            Ok(())
        }
        None => run(controller, Some(dns_listen)).await,
    }
}

async fn run(args: ControllerArgs, dns_listen: Option<SocketAddr>) -> Result<()> {
    let shutdown = shutdown_signal();
    let mut registry = Registry::default();
    crate::providers::kubernetes::register_metrics(&mut registry);
    let invalid = InvalidInputs::register(&mut registry);
    let readiness = Readiness::default();
    let liveness = crate::telemetry::Liveness::default();
    let http_metrics = crate::http_serve::HttpMetrics::register(&mut registry);
    let cluster = args.cluster.cluster_name.clone();
    anyhow::ensure!(!cluster.is_empty(), "--cluster-name must not be empty");

    let (snapshots, provider_task) = start_provider(&args.provider, &invalid, &liveness, shutdown.clone()).await?;
    let store = open_weight_store(&args.store, &cluster).await?;
    let mut tasks = vec![provider_task];
    // Every writer holds a guard: on shutdown the Lease is released once their passes ended.
    let (writer_guard, writers_done) = writer_guards();
    let (_leader_tx, leader, fence) = super::kubernetes::start_leader_election(
        &args.leader,
        &mut registry,
        &liveness,
        &shutdown,
        writers_done,
        &mut tasks,
    )
    .await?;
    let dns = open_dns_provider(&args.dns, &args.store, &args.cluster, &fence).await?;

    // The embedded zone is served by weir's own DNS server when an address is given.
    let dns_listen =
        dns_listen.or(if args.dns.dns_provider == DnsProviderKind::Embedded { args.dns.dns_listen } else { None });
    if let (Some(addr), Some(zone)) = (dns_listen, dns.zone.as_ref()) {
        let options = super::factories::dns_server_options(
            &args.dns.server,
            &args.cluster.selection.binding_domain,
            args.dns.prefer_cname,
        );
        tasks.push(super::factories::serve_embedded_dns(addr, zone, options, &mut registry, shutdown.clone()).await?);
    }

    // The sink's task ends when the DNS loop (and with it the sink) is dropped.
    let (sink, _events_task) = super::kubernetes::refusal_sink(args.provider.provider).await?;
    let weight_metrics = WeightMetrics::register(&mut registry);
    // Process-wide families: every AWS call and health check status, whichever component made them.
    crate::aws::AwsMetrics::register(&mut registry);
    crate::dns::route53::HealthMetrics::register(&mut registry);
    let reconcile_metrics = ReconcileMetrics::register(&mut registry);
    let ramp_metrics = crate::reconciler::ramp::RampMetrics::register(&mut registry);
    // Exposed as 0 from the start, so that `increase()` sees the first abort.
    let _ = ramp_metrics.aborted.get_or_create(&crate::reconciler::metrics::labels(&[("cluster", &cluster)]));
    // The infra manager (TrafficInfra → child objects) needs the Kubernetes API.
    let infra_loop = if args.provider.provider == ProviderKind::Kubernetes {
        let client =
            crate::providers::kubernetes::client().await.context("connecting to Kubernetes for the infra manager")?;
        Some(crate::reconciler::infra::InfraLoop {
            client,
            metrics: crate::reconciler::infra::InfraMetrics::register(&mut registry),
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
    let router = telemetry::router(Arc::new(registry), readiness.clone(), liveness);
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
    let dns_loop = DnsLoop {
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
