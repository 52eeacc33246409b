//! Small factories that turn flags into components. Each new provider, store or DNS provider is one
//! match arm here.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::runtime::Runtime;
use crate::backends::{open_store, BackendType, StoreConfig, WeightStore};
use crate::cli::{ClusterArgs, DnsArgs, DnsProviderKind, ProviderArgs, ProviderKind, StoreArgs, XdsStateArgs};
use crate::dns::embedded::{EmbeddedDns, EmbeddedZone};
use crate::dns::record::{Ownership, RecordOptions};
use crate::dns::route53::{HealthCheckSettings, Route53Dns, Route53Options, ZoneRef, ZoneSelection};
use crate::dns::route53_alias::AliasOptions;
use crate::dns::zoned::{Zone, ZonedDns};
use crate::dns::DnsProvider;
use crate::providers::file::FileProvider;
use crate::providers::SnapshotRx;
use crate::reconciler::leader::Fence;
use crate::reconciler::PipelineConfig;
use crate::translate::TranslateConfig;
use crate::xds::live::{ConfigMapLiveWeights, LiveWeights, NoLiveWeights, SqliteLiveWeights};

/// Starts the configured input provider. Returns once the first snapshot is in the channel, with the
/// task that keeps it current until `shutdown`.
pub async fn start_provider(
    args: &ProviderArgs,
    rt: &Runtime,
    liveness: &crate::telemetry::Liveness,
) -> Result<(SnapshotRx, JoinHandle<()>)> {
    start_provider_in(args, rt, liveness, crate::providers::kubernetes::WatchScope::default(), None).await
}

/// [`start_provider`], with the Kubernetes provider watching only `scope`.
pub async fn start_provider_in(
    args: &ProviderArgs,
    rt: &Runtime,
    liveness: &crate::telemetry::Liveness,
    scope: crate::providers::kubernetes::WatchScope,
    endpoint_relist: Option<watch::Receiver<std::time::Duration>>,
) -> Result<(SnapshotRx, JoinHandle<()>)> {
    let shutdown = rt.shutdown();
    match args.provider {
        ProviderKind::File => {
            let dir = args.manifests.clone().context("--provider file needs --manifests DIR")?;
            let mut provider = FileProvider::new(&dir, args.manifests_poll_interval, rt.invalid.clone())
                .with_limits(args.file_limits.limits());
            // A poll that stops returning (it never should: special files are not opened) shows here.
            let bound = (args.manifests_poll_interval * 10).max(std::time::Duration::from_secs(30));
            provider.set_heartbeat(liveness.heartbeat("file provider", bound));
            let first = tokio::task::block_in_place(|| provider.load());
            let (tx, rx) = watch::channel(Arc::new(first));
            Ok((rx, tokio::spawn(provider.run(tx, shutdown))))
        }
        ProviderKind::Kubernetes => {
            let client = rt.kube("the input provider").await?;
            let (tx, mut rx) = watch::channel(Arc::new(crate::model::Snapshot::default()));
            let config = crate::providers::kubernetes::KubernetesConfig {
                scope,
                endpoint_relist,
                heartbeat: liveness.heartbeat("Kubernetes watches", std::time::Duration::from_secs(60)),
                ..Default::default()
            };
            let stop = shutdown.clone();
            let task = tokio::spawn(async move {
                tokio::select! {
                    r = crate::providers::kubernetes::run(client, config, tx) => {
                        if let Err(e) = r {
                            tracing::error!(error = %e, "the Kubernetes provider stopped");
                        }
                    }
                    _ = wait_shutdown(stop) => {}
                }
            });
            // Nothing is reconciled from an empty cache: wait until Ingresses, Services and
            // EndpointSlices are listed (the provider's first revision).
            let mut stop = shutdown;
            tokio::select! {
                r = rx.wait_for(|s| s.revision > 0) => { r.context("the Kubernetes provider stopped before its first snapshot")?; }
                _ = stop.wait_for(|v| *v) => bail!("shut down before the Kubernetes caches were filled"),
            }
            Ok((rx, task))
        }
    }
}

pub fn store_config(args: &StoreArgs, cluster: &str) -> StoreConfig {
    StoreConfig {
        backend: args.backend_type,
        db: args.db.clone(),
        table_name: args.table_name.clone(),
        aws_region: args.aws_region.clone(),
        // The old controller's `fake` backend published --initial-weight.
        static_weight: args.static_weight.unwrap_or(args.initial_weight),
        cluster: cluster.to_string(),
        history_table: args.history_table.clone(),
    }
}

pub async fn open_weight_store(args: &StoreArgs, cluster: &str) -> Result<Arc<dyn WeightStore>> {
    open_store(&store_config(args, cluster)).await.context("opening the weight store")
}

/// The configured DNS provider (one per Route53 hosted zone), plus the embedded zone when it is the
/// embedded one (for the DNS server) and a Route53 provider when it is that one (for health check
/// status in `weir explain`; the checks are shared by the zones).
pub struct DnsParts {
    pub dns: ZonedDns,
    pub zone: Option<EmbeddedZone>,
    pub route53: Option<Arc<Route53Dns>>,
}

/// Every provider writes only while `fence` is open.
pub async fn open_dns_provider(
    dns: &DnsArgs,
    store: &StoreArgs,
    cluster: &ClusterArgs,
    fence: &Fence,
    rt: &Runtime,
) -> Result<DnsParts> {
    let adopt = dns.adopt_options().map_err(anyhow::Error::msg)?;
    match dns.dns_provider {
        DnsProviderKind::Embedded => {
            let db = store.db.clone().context("--dns-provider embedded keeps its zone in --db PATH")?;
            let zone =
                EmbeddedZone::open(&db).await.with_context(|| format!("opening the zone in {}", db.display()))?;
            let provider = EmbeddedDns::new(zone.clone()).with_fence(fence.clone());
            Ok(DnsParts {
                dns: ZonedDns::single(Arc::new(provider)).with_adopt(adopt),
                zone: Some(zone),
                route53: None,
            })
        }
        DnsProviderKind::Route53 => {
            let domain = cluster.selection.binding_domain.as_str();
            if dns.hosted_zone_id.is_empty() && domain.is_empty() {
                bail!("--dns-provider route53 needs --hosted-zone-id or --binding-domain");
            }
            let selection = ZoneSelection {
                ids: dns.hosted_zone_id.clone(),
                domain: domain.to_string(),
                zone_type: dns.zone_type.into(),
            };
            let owner = Ownership { cluster: cluster.cluster_name.clone(), txt_prefix: dns.txt_prefix.clone() };
            let first = selection.ids.first().map(|id| ZoneRef::Id(id.clone()));
            let mut opts = Route53Options::new(first.unwrap_or_else(|| ZoneRef::Domain(domain.to_string())), owner);
            opts.wait_insync = dns.wait_insync;
            opts.alias = alias_options(dns);
            opts.adopt = adopt.clone();
            opts.health = dns.health_check_path.as_ref().map(|path| HealthCheckSettings {
                path: path.clone(),
                port: dns.health_check_port,
                protocol: dns.health_check_protocol.clone(),
            });
            let providers = Route53Dns::connect_zones(store.aws_region.as_deref(), opts, &selection)
                .await
                .context("opening Route53")?;
            let providers: Vec<Arc<Route53Dns>> =
                providers.into_iter().map(|p| Arc::new(p.with_fence(fence.clone()))).collect();
            let zones = providers
                .iter()
                .map(|p| Zone { info: Some(p.zone()), provider: p.clone() as Arc<dyn DnsProvider> })
                .collect();
            let route53 = providers.first().cloned();
            Ok(DnsParts { dns: ZonedDns { zones, adopt }, zone: None, route53 })
        }
        DnsProviderKind::Dnsendpoint => {
            let client = rt.kube("--dns-provider dnsendpoint writes DNSEndpoint objects").await?;
            let owner = Ownership { cluster: cluster.cluster_name.clone(), txt_prefix: dns.txt_prefix.clone() };
            let provider = crate::dns::dnsendpoint_k8s::DnsEndpointDns::new(client, owner, alias_options(dns))
                .with_fence(fence.clone());
            Ok(DnsParts { dns: ZonedDns::single(Arc::new(provider)).with_adopt(adopt), zone: None, route53: None })
        }
    }
}

pub fn alias_options(dns: &DnsArgs) -> AliasOptions {
    AliasOptions { prefer_cname: dns.prefer_cname, evaluate_target_health: dns.evaluate_target_health }
}

pub fn pipeline_config(cluster: &ClusterArgs, dns: &DnsArgs) -> PipelineConfig {
    let s = &cluster.selection;
    PipelineConfig {
        translate: TranslateConfig {
            binding_domain: s.binding_domain.clone(),
            annotation_filters: s.annotation_filters.clone(),
            annotation_prefix: s.annotation_prefix.clone(),
            dev_mode: s.dev_mode,
            host_namespaces: s.host_namespaces.clone(),
        },
        owner: Ownership { cluster: cluster.cluster_name.clone(), txt_prefix: dns.txt_prefix.clone() },
        records: RecordOptions { ttl: dns.record_ttl(), health_check_id: dns.aws_health_check_id.clone() },
        allow_all_zero: dns.allow_all_zero,
    }
}

/// Where the live strategy weights come from, for the controller's DNS loop, `weir plan` and
/// `weir explain` alike: `--xds-state FILE` (it must exist); else, with the Kubernetes provider, each
/// TrafficInfra's `{name}-xds-state` ConfigMap; else, with the file provider and the SQLite weight
/// store, its `--db` when the file exists (`weir local`'s xDS half keeps its state there); else none.
/// Call it after the weight store is opened (the controller's store creates `--db`).
pub async fn open_live_weights(
    provider: &ProviderArgs,
    store: &StoreArgs,
    xds: &XdsStateArgs,
    rt: &Runtime,
) -> Result<Arc<dyn LiveWeights>> {
    let sqlite_db = store.db.as_ref().filter(|db| store.backend_type == BackendType::Sqlite && db.is_file());
    Ok(match (&xds.xds_state, provider.provider, sqlite_db) {
        (Some(path), _, _) => Arc::new(SqliteLiveWeights::open(path)?),
        (None, ProviderKind::Kubernetes, _) => Arc::new(ConfigMapLiveWeights::new(rt.kube("the xDS state").await?)),
        (None, ProviderKind::File, Some(db)) => Arc::new(SqliteLiveWeights::open(db)?),
        (None, ProviderKind::File, None) => Arc::new(NoLiveWeights),
    })
}

/// A channel that flips to true on SIGINT or SIGTERM.
pub fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    rx
}

/// Resolves when `shutdown` flips to true.
pub async fn wait_shutdown(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|v| *v).await;
}

/// The built-in DNS server's options from its flags; its zones default to the binding domain.
pub fn dns_server_options(
    args: &crate::cli::DnsServerArgs,
    binding_domain: &crate::selection::BindingDomain,
    prefer_cname: bool,
) -> crate::dns::server::DnsServerOptions {
    let mut zones = args.dns_zones.clone();
    if zones.is_empty() && !binding_domain.as_str().is_empty() {
        zones.push(binding_domain.as_str().to_string());
    }
    crate::dns::server::DnsServerOptions {
        zones,
        udp_workers: args.dns_udp_workers,
        tcp_max_connections: args.dns_tcp_max_connections,
        tcp_max_per_ip: args.dns_tcp_max_per_ip,
        tcp_idle_timeout: args.dns_tcp_idle_timeout,
        flatten_aliases: !prefer_cname,
        ..Default::default()
    }
}

/// Serves the embedded zone over DNS (UDP and TCP) on `addr` until `shutdown`.
pub async fn serve_embedded_dns(
    addr: std::net::SocketAddr,
    zone: &EmbeddedZone,
    options: crate::dns::server::DnsServerOptions,
    metrics: crate::dns::server::DnsServerMetrics,
    shutdown: watch::Receiver<bool>,
) -> Result<JoinHandle<()>> {
    let (bound, task) = crate::dns::server::serve_with(addr, zone, metrics, options, wait_shutdown(shutdown))
        .await
        .with_context(|| format!("binding the DNS server on {addr}"))?;
    tracing::info!(addr = %bound, "serving the embedded zone over DNS (UDP and TCP)");
    Ok(task)
}
