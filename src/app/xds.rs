//! `weir xds`: provider → xDS loop → snapshot cache → ADS server, plus the admin API and the shared
//! state poller, wired in one place.
//!
//! Order: shutdown signal → input provider (first snapshot loaded) → shared state (seeded from the
//! TrafficInfra's `trafficDefaults`) → xDS loop (subscribes to snapshots and state, publishes to the
//! cache) → gRPC server (ADS) → admin API (+ metrics, health) → optional metrics server.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use super::factories::{start_provider_in, wait_shutdown};
use super::runtime::Runtime;
use crate::cli::{ProviderKind, XdsArgs};
use crate::http_serve::HttpServer;
use crate::model::ObjectRef;
use crate::telemetry::{self, Readiness};
use crate::xds::admin::{Admin, AdminMetrics};
use crate::xds::cache::new_cache;
use crate::xds::controller::{View, XdsController};
use crate::xds::infra_status::{InfraStatusWriter, RejectionObserver};
use crate::xds::limits::StreamLimiter;
use crate::xds::model::{traffic_infra, TrafficState, XdsSettings};
use crate::xds::server::{AdsServer, Clients, NodePolicy, XdsMetrics};
use crate::xds::state::{MemoryStore, SharedState, SqliteStore, StateStore};
use crate::xds::state_kube::KubeConfigMapStore;

/// How often the shared state is re-read for other replicas' writes.
const STATE_POLL: Duration = Duration::from_millis(200);

pub async fn xds(args: XdsArgs) -> Result<()> {
    serve(args, &Runtime::new()).await
}

/// `weir xds` on `rt` (its own, or the one `weir local` shares with the controller).
pub async fn serve(args: XdsArgs, rt: &Runtime) -> Result<()> {
    anyhow::ensure!(!args.name.is_empty(), "--name must not be empty");
    let shutdown = rt.shutdown();
    let invalid = rt.invalid.clone();
    let readiness = Readiness::default();
    let liveness = crate::telemetry::Liveness::default();
    let http_metrics = rt.http.clone();
    let kubernetes = args.provider.provider == ProviderKind::Kubernetes;
    anyhow::ensure!(
        kubernetes || args.watch_namespaces.is_empty(),
        "--watch-namespace applies to --provider kubernetes only (the file provider reads every namespace)"
    );
    // Which namespaces' Services are seen: every one with the file provider or `*`.
    let watched_namespaces = (kubernetes && !args.watch_namespaces.iter().any(|n| n == "*"))
        .then(|| std::iter::once(args.namespace.clone()).chain(args.watch_namespaces.iter().cloned()).collect());
    let settings = XdsSettings {
        name: args.name.clone(),
        namespace: args.namespace.clone(),
        services: args.services,
        watched_namespaces,
    };

    // Its own namespace (plus the Services and EndpointSlices of each --watch-namespace), and only
    // what it translates: the operator's namespaced Role suffices for its own.
    let scope = crate::providers::kubernetes::WatchScope::xds(&settings.namespace, &args.watch_namespaces);
    // The TrafficInfra's `xds.pollInterval` (its default until the TrafficInfra is read) is the
    // period of the full EndpointSlice re-list beside the watch.
    let (relist_tx, relist_rx) =
        watch::channel(Duration::from_secs(crate::crd::XdsSpec::default().poll_interval as u64));
    let (snapshots, provider_task) = start_provider_in(&args.provider, rt, &liveness, scope, Some(relist_rx)).await?;
    // The TrafficInfra's `xds.nodeID` is the only node id served (unless --allow-any-node-id).
    let (node_tx, node_rx) = watch::channel(None::<String>);
    let follow_spec = {
        let mut snapshots = snapshots.clone();
        let settings = settings.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let spec = traffic_infra(&snapshots.borrow_and_update(), &settings).map(|t| t.spec.xds.clone());
                let node = spec.as_ref().map(|x| x.node_id.clone());
                node_tx.send_if_modified(|cur| (*cur != node).then(|| *cur = node).is_some());
                if let Some(x) = &spec {
                    let period = Duration::from_secs(x.poll_interval.max(1) as u64);
                    relist_tx.send_if_modified(|cur| (*cur != period).then(|| *cur = period).is_some());
                }
                tokio::select! {
                    r = snapshots.changed() => if r.is_err() { return },
                    _ = stop.changed() => return,
                }
            }
        })
    };

    let defaults =
        traffic_infra(&snapshots.borrow(), &settings).map(|t| t.spec.traffic_defaults.clone()).unwrap_or_default();
    let store: Arc<dyn StateStore> = match &args.state {
        Some(path) => Arc::new(
            SqliteStore::open(path, &format!("{}/{}", settings.namespace, settings.name))
                .with_context(|| format!("opening the xDS state file {}", path.display()))?,
        ),
        None if args.provider.provider == ProviderKind::Kubernetes => {
            let client = rt.kube("the shared xDS state").await?;
            Arc::new(KubeConfigMapStore::new(client, &settings.namespace, &settings.name))
        }
        None => {
            tracing::warn!("no --state: admin API changes live in memory only (not shared, lost on restart)");
            Arc::new(MemoryStore::default())
        }
    };
    let shared = SharedState::open(store, TrafficState::initial(&defaults)).await.context("reading the xDS state")?;
    tracing::info!(store = %shared.describe(), weights = ?shared.get().weights, "xDS state loaded");

    let token = match &args.admin_token_file {
        Some(path) => {
            let t = std::fs::read_to_string(path)
                .with_context(|| format!("reading --admin-token-file {}", path.display()))?;
            // A file ends in a newline; only that is trimmed (the compare itself is exact).
            let t = t.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&t).to_string();
            anyhow::ensure!(!t.is_empty(), "--admin-token-file {} is empty", path.display());
            Some(Arc::<str>::from(t))
        }
        None => None,
    };

    let (writer, cache) = new_cache();
    let (view_tx, view_rx) = watch::channel(Arc::new(View::default()));
    let (xds_metrics, admin_metrics, nodes, limiter, vs_unmatched) = {
        let mut registry = rt.registry();
        let policy = NodePolicy { expected: node_rx, allow_any: args.allow_any_node_id, rejected: Default::default() };
        let limiter = StreamLimiter::new(args.xds_limits.limits()).register(&mut registry);
        (
            XdsMetrics::register(&mut registry),
            AdminMetrics::register(&mut registry),
            policy.register(&mut registry),
            limiter,
            crate::xds::vs_status::VsReporter::register_gauge(&mut registry),
        )
    };
    let clients = Clients::default();
    let registry = rt.shared_registry();

    let mut tasks = vec![provider_task, follow_spec];
    let state_beat = liveness.heartbeat("xDS state poll", std::time::Duration::from_secs(60));
    tasks.push(tokio::spawn(shared.clone().poll(STATE_POLL, state_beat, shutdown.clone())));
    let controller = XdsController {
        settings: settings.clone(),
        writer,
        view: view_tx,
        readiness: readiness.clone(),
        last_good_policies: Default::default(),
        policy_refusals: Default::default(),
        last_good_virtual_services: Default::default(),
        heartbeat: liveness.heartbeat("xDS snapshots", std::time::Duration::from_secs(60)),
        invalid: invalid.clone(),
        service_refusals: Default::default(),
    };
    tasks.push(tokio::spawn(controller.run(snapshots, shared.subscribe(), shutdown.clone())));

    let grpc = tokio::net::TcpListener::bind(args.grpc_addr)
        .await
        .with_context(|| format!("binding the gRPC (ADS) server on {}", args.grpc_addr))?;
    tracing::info!(addr = %grpc.local_addr()?, name = %settings.name, "serving ADS (state of the world and delta) and CSDS");
    let mut ads =
        AdsServer::new(cache.clone(), xds_metrics, clients.clone(), shutdown.clone(), args.xds_initial_concurrency)
            .with_node_policy(nodes)
            .with_limits(limiter);
    // With the Kubernetes provider, `weir xds` writes its part of the TrafficInfra's status and
    // records an Event per distinct rejected configuration.
    if args.provider.provider == ProviderKind::Kubernetes && !args.no_status {
        let client = rt.kube("the TrafficInfra status").await?;
        let instance = std::env::var("POD_NAME").unwrap_or_else(|_| format!("{}-xds", settings.name));
        let (sink, events_task) = crate::reconciler::events::spawn(client.clone(), instance);
        tasks.push(events_task);
        let infra = ObjectRef {
            kind: "TrafficInfra".into(),
            namespace: settings.namespace.clone(),
            name: settings.name.clone(),
        };
        let observer = RejectionObserver::new(infra, Arc::new(sink));
        ads = ads.with_observer(observer.clone());
        let writer = InfraStatusWriter {
            client,
            namespace: settings.namespace.clone(),
            name: settings.name.clone(),
            view: view_rx.clone(),
            observer,
        };
        tasks.push(tokio::spawn(writer.run(shutdown.clone())));
    }
    // VirtualService refusals and selectors matching no Envoy: logged and counted; with Kubernetes,
    // written as their conditions.
    let vs_client = if args.provider.provider == ProviderKind::Kubernetes && !args.no_status {
        Some(crate::providers::kubernetes::client().await.context("connecting to Kubernetes for the status")?)
    } else {
        None
    };
    let reporter = crate::xds::vs_status::VsReporter {
        view: view_rx.clone(),
        clients: clients.clone(),
        invalid: invalid.clone(),
        unmatched: vs_unmatched,
        client: vs_client,
    };
    tasks.push(tokio::spawn(reporter.run(shutdown.clone())));
    let grpc_shutdown = wait_shutdown(shutdown.clone());
    let grpc_task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(ads.csds_service())
            .add_service(crate::xds::grpc::AdsService::new(ads))
            .serve_with_incoming_shutdown(TcpListenerStream::new(grpc), grpc_shutdown)
            .await
    });

    let admin =
        Admin { settings, state: shared, view: view_rx, cache, clients, token, metrics: admin_metrics, invalid };
    let router = admin.router(telemetry::router(registry.clone(), readiness.clone(), liveness.clone()));
    let limits = crate::http_serve::HttpLimits::default();
    let server = HttpServer { name: "admin", limits, metrics: http_metrics.clone() };
    let admin_task = telemetry::serve(server, args.admin_addr, router, wait_shutdown(shutdown.clone()))
        .await
        .with_context(|| format!("binding the admin API on {}", args.admin_addr))?;
    if let Some(addr) = args.metrics_addr {
        let server = HttpServer { name: "metrics", limits, metrics: http_metrics };
        let router = telemetry::router(registry, readiness, liveness);
        let task = telemetry::serve(server, addr, router, wait_shutdown(shutdown.clone()))
            .await
            .with_context(|| format!("binding the metrics server on {addr}"))?;
        tasks.push(tokio::spawn(async move {
            let _ = task.await;
        }));
    }

    wait_shutdown(shutdown).await;
    match tokio::time::timeout(Duration::from_secs(10), grpc_task).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server stopped with an error"),
        Err(_) => tracing::warn!("gRPC server did not stop within 10s"),
        _ => {}
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), admin_task).await;
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    tracing::info!("weir xds stopped");
    Ok(())
}
