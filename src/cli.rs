//! Command-line interface. Every flag also reads an environment variable `WEIR_*`.
//!
//! Args are grouped per subsystem and flattened into the subcommands that need them, so that
//! `controller`, `local`, `plan` and `explain` read their inputs the same way.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::backends::BackendType;
use crate::selection::{AnnotationFilter, BindingDomain};

#[derive(Debug, Parser)]
#[command(name = "weir", version, about = "Multi-cluster, DNS-weighted traffic controller for Kubernetes")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, global = true, env = "WEIR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The per-cluster controller: publishes this cluster's weighted DNS records.
    Controller(Box<ControllerArgs>),
    /// The in-cluster xDS control plane and its admin API.
    Xds(XdsArgs),
    /// Everything in one process on the embedded default: file provider, SQLite store, embedded DNS.
    Local(LocalArgs),
    /// Operate the weight table.
    Weights(WeightsArgs),
    /// Explain the composition for one host: every factor and the resulting shares.
    Explain(ExplainArgs),
    /// Print the DNS changes that would be made, without making them.
    Plan(PlanArgs),
    /// Print the CRD YAML that the chart ships.
    Crd,
}

/// Where Kubernetes-shaped inputs come from.
#[derive(Debug, Clone, Args)]
pub struct ProviderArgs {
    /// Input provider.
    #[arg(long, env = "WEIR_PROVIDER", value_enum, default_value_t = ProviderKind::Kubernetes)]
    pub provider: ProviderKind,
    /// Directory of YAML manifests (file provider). Multi-document files are allowed.
    #[arg(long, env = "WEIR_MANIFESTS")]
    pub manifests: Option<PathBuf>,
    /// How often the file provider looks for changes.
    #[arg(long, env = "WEIR_MANIFESTS_POLL_INTERVAL", value_parser = parse_duration, default_value = "1s")]
    pub manifests_poll_interval: Duration,
    #[command(flatten)]
    pub file_limits: FileLimitsArgs,
}

/// The file provider's bounds.
#[derive(Debug, Clone, Args)]
pub struct FileLimitsArgs {
    /// A manifest file larger than this is refused (its last good content keeps serving).
    #[arg(long, env = "WEIR_MANIFESTS_MAX_FILE_BYTES", default_value_t = crate::providers::file::FileLimits::default().max_file_bytes)]
    pub manifests_max_file_bytes: u64,
    /// All manifest files together; files past this (in path order) are refused.
    #[arg(long, env = "WEIR_MANIFESTS_MAX_TOTAL_BYTES", default_value_t = crate::providers::file::FileLimits::default().max_total_bytes)]
    pub manifests_max_total_bytes: u64,
    /// A changed file is read only once its size and mtime have not moved for this long (write then
    /// rename is still the way to update a manifest).
    #[arg(long, env = "WEIR_MANIFESTS_SETTLE", value_parser = parse_duration, default_value = "250ms")]
    pub manifests_settle: Duration,
}

impl Default for FileLimitsArgs {
    fn default() -> Self {
        let d = crate::providers::file::FileLimits::default();
        Self {
            manifests_max_file_bytes: d.max_file_bytes,
            manifests_max_total_bytes: d.max_total_bytes,
            manifests_settle: d.settle,
        }
    }
}

/// The ADS server's bounds (see docs/xds.md, "Bounds").
#[derive(Debug, Clone, Args)]
pub struct XdsLimitsArgs {
    /// Names one ADS stream may subscribe to per resource type; a request past it ends the stream
    /// with RESOURCE_EXHAUSTED.
    #[arg(long, env = "WEIR_XDS_MAX_NAMES_PER_TYPE", default_value_t = crate::xds::limits::XdsLimits::default().max_names_per_type,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub xds_max_names_per_type: u32,
    /// ADS streams one connection may hold open; another is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "WEIR_XDS_MAX_STREAMS_PER_CONNECTION", default_value_t = crate::xds::limits::DEFAULT_MAX_STREAMS_PER_CONNECTION,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub xds_max_streams_per_connection: u32,
    /// ADS streams the server holds open in all; another is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "WEIR_XDS_MAX_STREAMS", default_value_t = crate::xds::limits::DEFAULT_MAX_STREAMS,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub xds_max_streams: u32,
}

impl XdsLimitsArgs {
    pub fn limits(&self) -> crate::xds::limits::XdsLimits {
        crate::xds::limits::XdsLimits {
            max_names_per_type: self.xds_max_names_per_type,
            max_streams_per_connection: self.xds_max_streams_per_connection,
            max_streams: self.xds_max_streams,
        }
    }
}

impl FileLimitsArgs {
    pub fn limits(&self) -> crate::providers::file::FileLimits {
        crate::providers::file::FileLimits {
            max_file_bytes: self.manifests_max_file_bytes,
            max_total_bytes: self.manifests_max_total_bytes,
            settle: self.manifests_settle,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderKind {
    Kubernetes,
    File,
}

/// Which Ingresses and hosts are managed, and how they are read.
#[derive(Debug, Clone, Args)]
pub struct SelectionArgs {
    /// Only hosts inside this domain (matched on a label boundary) are managed. Empty: every host.
    #[arg(long, env = "WEIR_BINDING_DOMAIN", default_value = "")]
    pub binding_domain: BindingDomain,
    /// Only Ingresses with this annotation value (`key=value`); repeatable, all must match.
    #[arg(long = "annotation-filter", env = "WEIR_ANNOTATION_FILTER", value_delimiter = ';')]
    pub annotation_filters: Vec<AnnotationFilter>,
    /// Prefix of weir's annotations; the weight is `<prefix>/traffic-weight`.
    #[arg(long, env = "WEIR_ANNOTATION_PREFIX", default_value = crate::translate::DEFAULT_ANNOTATION_PREFIX)]
    pub annotation_prefix: String,
    /// React to Ingresses whose load-balancer status is not filled, with a placeholder target.
    #[arg(long, env = "WEIR_DEV_MODE")]
    pub dev_mode: bool,
    /// `DOMAIN=NS[,NS...]`: hosts at or under DOMAIN may be claimed only by objects in these
    /// namespaces (repeatable; the longest matching domain counts). Hosts under none: any namespace.
    #[arg(long = "host-namespaces", env = "WEIR_HOST_NAMESPACES", value_delimiter = ';')]
    pub host_namespaces: Vec<crate::selection::HostNamespaces>,
}

/// The weight store.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// static (alias fake, the old controller's default), sqlite, or dynamodb (alias dynamoDB).
    #[arg(long, env = "WEIR_BACKEND_TYPE", default_value = "static")]
    pub backend_type: BackendType,
    /// SQLite database file (sqlite backend; the embedded DNS zone lives there too).
    #[arg(long, env = "WEIR_DB")]
    pub db: Option<PathBuf>,
    /// DynamoDB table.
    #[arg(long, env = "WEIR_TABLE_NAME", default_value = "traffic-controller")]
    pub table_name: String,
    /// Weight of a row created for a cluster that has none; the static backend's weight when
    /// --static-weight is not given (the old controller's `fake` backend).
    #[arg(long, env = "WEIR_INITIAL_WEIGHT", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub initial_weight: u8,
    /// The cluster weight of the static backend [default: --initial-weight].
    #[arg(long, env = "WEIR_STATIC_WEIGHT", value_parser = clap::value_parser!(u8).range(0..=100))]
    pub static_weight: Option<u8>,
    /// AWS region; wins over AWS_REGION [default: AWS_REGION, else the profile's, else eu-west-1].
    #[arg(long, env = "WEIR_AWS_REGION")]
    pub aws_region: Option<String>,
    /// DynamoDB table of weight history (key ClusterName S, sort ChangedAt S); without it, history is
    /// off (SQLite keeps it in --db).
    #[arg(long, env = "WEIR_HISTORY_TABLE")]
    pub history_table: Option<String>,
}

/// Where records are published.
#[derive(Debug, Clone, Args)]
pub struct DnsArgs {
    #[arg(long, env = "WEIR_DNS_PROVIDER", value_enum, default_value_t = DnsProviderKind::Route53)]
    pub dns_provider: DnsProviderKind,
    /// Address of the built-in authoritative DNS server (embedded provider), e.g. 127.0.0.1:5353.
    #[arg(long, env = "WEIR_DNS_LISTEN")]
    pub dns_listen: Option<SocketAddr>,
    /// Route53 hosted zone (repeatable); without it, every zone at or under --binding-domain (or the
    /// longest one above it). Each host goes to the zone with the longest matching name.
    #[arg(long, env = "WEIR_HOSTED_ZONE_ID", value_delimiter = ',')]
    pub hosted_zone_id: Vec<String>,
    /// Which Route53 zones to use: public, private or all (a public and a private zone of one name
    /// both get the record: split horizon).
    #[arg(long, env = "WEIR_ZONE_TYPE", value_enum, default_value_t = ZoneTypeArg::All)]
    pub zone_type: ZoneTypeArg,
    /// Take over records external-dns owns with this --txt-owner-id (repeatable): this cluster's set
    /// identifier, an external-dns TXT registry record naming the owner (docs/migration.md).
    #[arg(long, env = "WEIR_ADOPT_OWNER", value_delimiter = ',')]
    pub adopt_owner: Vec<String>,
    /// external-dns's --txt-prefix, to find its registry records for --adopt-owner.
    #[arg(long, env = "WEIR_ADOPT_TXT_PREFIX", default_value = "", allow_hyphen_values = true)]
    pub adopt_txt_prefix: String,
    /// external-dns's --txt-suffix (often starting with `-`), to find its registry records for
    /// --adopt-owner.
    #[arg(long, env = "WEIR_ADOPT_TXT_SUFFIX", default_value = "", allow_hyphen_values = true)]
    pub adopt_txt_suffix: String,
    /// TTL of the published records: 60, or 5 with the embedded provider (what `weir local` publishes).
    #[arg(long, env = "WEIR_RECORD_TTL")]
    pub record_ttl: Option<u32>,
    /// Route53 health check attached to this cluster's records.
    #[arg(long, env = "WEIR_AWS_HEALTH_CHECK_ID")]
    pub aws_health_check_id: Option<String>,
    /// Create a Route53 health check per cluster target probing this path.
    #[arg(long, env = "WEIR_HEALTH_CHECK_PATH")]
    pub health_check_path: Option<String>,
    #[arg(long, env = "WEIR_HEALTH_CHECK_PORT", default_value_t = 443)]
    pub health_check_port: u16,
    #[arg(long, env = "WEIR_HEALTH_CHECK_PROTOCOL", default_value = "HTTPS")]
    pub health_check_protocol: String,
    /// Prefix of ownership TXT record names.
    #[arg(long, env = "WEIR_TXT_PREFIX", default_value = crate::dns::record::DEFAULT_TXT_PREFIX)]
    pub txt_prefix: String,
    /// Allow publishing the last non-zero weight of a name as 0 (Route53 then splits equally).
    #[arg(long, env = "WEIR_ALLOW_ALL_ZERO")]
    pub allow_all_zero: bool,
    /// Acknowledge a weight only once Route53 reports the change INSYNC.
    #[arg(long, env = "WEIR_WAIT_INSYNC")]
    pub wait_insync: bool,
    /// Publish a target that is an AWS load balancer as a CNAME, not as a weighted ALIAS A/AAAA.
    #[arg(long, env = "WEIR_PREFER_CNAME")]
    pub prefer_cname: bool,
    /// EvaluateTargetHealth of ALIAS records (`--evaluate-target-health=false` to turn it off).
    #[arg(long, env = "WEIR_EVALUATE_TARGET_HEALTH", action = clap::ArgAction::Set, default_value_t = true)]
    pub evaluate_target_health: bool,
    #[command(flatten)]
    pub server: DnsServerArgs,
}

/// The built-in DNS server's limits and zones.
#[derive(Debug, Clone, Args)]
pub struct DnsServerArgs {
    /// Zones the built-in DNS server is authoritative for (repeatable); names outside get REFUSED.
    /// Default: --binding-domain, else the parent domains of the record names.
    #[arg(long = "dns-zone", env = "WEIR_DNS_ZONE", value_delimiter = ',')]
    pub dns_zones: Vec<String>,
    /// UDP worker threads of the built-in DNS server (SO_REUSEPORT sockets); 0: one per CPU.
    #[arg(long, env = "WEIR_DNS_UDP_WORKERS", default_value_t = 0)]
    pub dns_udp_workers: usize,
    /// Open TCP connections to the built-in DNS server, in all.
    #[arg(long, env = "WEIR_DNS_TCP_MAX_CONNECTIONS", default_value_t = crate::dns::server::DEFAULT_TCP_MAX)]
    pub dns_tcp_max_connections: usize,
    /// Open TCP connections to the built-in DNS server from one client address.
    #[arg(long, env = "WEIR_DNS_TCP_MAX_PER_IP", default_value_t = crate::dns::server::DEFAULT_TCP_PER_IP)]
    pub dns_tcp_max_per_ip: usize,
    /// A DNS TCP connection idle (or stalled mid-message) this long is closed.
    #[arg(long, env = "WEIR_DNS_TCP_IDLE_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub dns_tcp_idle_timeout: Duration,
}

/// TTL of published records unless --record-ttl says otherwise.
pub const RECORD_TTL: u32 = 60;
/// The embedded zone's TTL (`weir local`, and `plan`/`explain` on its database): short, so that `dig`
/// shows a change at once.
pub const EMBEDDED_RECORD_TTL: u32 = 5;

impl DnsArgs {
    /// The TTL records are published with: the flag, else the provider's default.
    pub fn record_ttl(&self) -> u32 {
        self.record_ttl.unwrap_or(match self.dns_provider {
            DnsProviderKind::Embedded => EMBEDDED_RECORD_TTL,
            DnsProviderKind::Route53 | DnsProviderKind::Dnsendpoint => RECORD_TTL,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ZoneTypeArg {
    Public,
    Private,
    All,
}

impl From<ZoneTypeArg> for crate::dns::zones::ZoneType {
    fn from(t: ZoneTypeArg) -> Self {
        match t {
            ZoneTypeArg::Public => Self::Public,
            ZoneTypeArg::Private => Self::Private,
            ZoneTypeArg::All => Self::All,
        }
    }
}

impl DnsArgs {
    /// `--adopt-owner` and the external-dns affixes; external-dns refuses both affixes, so does weir.
    pub fn adopt_options(&self) -> Result<crate::dns::adopt::AdoptOptions, String> {
        if !self.adopt_txt_prefix.is_empty() && !self.adopt_txt_suffix.is_empty() {
            return Err("--adopt-txt-prefix and --adopt-txt-suffix are mutually exclusive (as in external-dns)".into());
        }
        Ok(crate::dns::adopt::AdoptOptions {
            owners: self.adopt_owner.iter().map(|o| o.trim().to_string()).filter(|o| !o.is_empty()).collect(),
            txt_prefix: self.adopt_txt_prefix.to_ascii_lowercase(),
            txt_suffix: self.adopt_txt_suffix.to_ascii_lowercase(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DnsProviderKind {
    Route53,
    Dnsendpoint,
    Embedded,
}

/// Leader election on a coordination.k8s.io/v1 Lease.
#[derive(Debug, Clone, Args)]
pub struct LeaderArgs {
    #[arg(long, env = "WEIR_ENABLE_LEADER_ELECTION")]
    pub enable_leader_election: bool,
    #[arg(long, env = "WEIR_LEADER_ELECTION_NAMESPACE", default_value = "default")]
    pub leader_election_namespace: String,
    #[arg(long, env = "WEIR_LEADER_ELECTION_ID", default_value = "weir-controller")]
    pub leader_election_id: String,
    #[arg(long, env = "WEIR_LEASE_DURATION", value_parser = parse_duration, default_value = "15s")]
    pub lease_duration: Duration,
    #[arg(long, env = "WEIR_RENEW_DEADLINE", value_parser = parse_duration, default_value = "10s")]
    pub renew_deadline: Duration,
    #[arg(long, env = "WEIR_RETRY_PERIOD", value_parser = parse_duration, default_value = "2s")]
    pub retry_period: Duration,
}

/// Shared by every subcommand that computes this cluster's records.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// This cluster's name: the weight row key and the records' set identifier.
    #[arg(long, env = "WEIR_CLUSTER_NAME")]
    pub cluster_name: String,
    #[command(flatten)]
    pub selection: SelectionArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub provider: ProviderArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub dns: DnsArgs,
    #[command(flatten)]
    pub leader: LeaderArgs,
    #[command(flatten)]
    pub xds_state: XdsStateArgs,
    /// Prometheus metrics, /healthz and /readyz.
    #[arg(long, env = "WEIR_METRICS_ADDR", value_parser = parse_listen_addr, default_value = ":8080")]
    pub metrics_addr: SocketAddr,
    /// How often the weight store is polled (consistent read of this cluster's row). 250ms puts a
    /// DesiredWeight edit into DNS within 0.5 s (p99); on DynamoDB on-demand it costs about 10.4M
    /// consistent reads (~$2.9) per replica and month (BENCHMARKS.md).
    #[arg(long, env = "WEIR_WEIGHT_POLL_INTERVAL", value_parser = parse_duration, default_value = "250ms")]
    pub weight_poll_interval: Duration,
    /// Refuse a DesiredWeight of 0 that would leave fewer than N clusters with DesiredWeight > 0 (not
    /// applied, not acknowledged; Event, metric). 0: off.
    #[arg(long, env = "WEIR_MIN_SERVING_CLUSTERS", default_value_t = 0)]
    pub min_serving_clusters: usize,
    /// PEM file of CA certificates trusted for `https://` ramp gates, besides the system's roots.
    #[arg(long, env = "WEIR_GATE_CA_FILE")]
    pub gate_ca_file: Option<PathBuf>,
    /// Full reconcile at least this often, even when no input changed.
    #[arg(long, env = "WEIR_RESYNC_INTERVAL", value_parser = parse_duration, default_value = "5m")]
    pub resync_interval: Duration,
    /// Serve the TrafficInfra validating webhook (HTTPS, POST /validate-trafficinfra) here; off when unset.
    #[arg(long, env = "WEIR_WEBHOOK_ADDR", value_parser = parse_listen_addr)]
    pub webhook_addr: Option<SocketAddr>,
    /// The webhook's certificate directory: tls.crt and tls.key, as cert-manager or a Secret mounts them.
    #[arg(long, env = "WEIR_WEBHOOK_CERT_DIR", default_value = "/etc/weir/webhook")]
    pub webhook_cert_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct LocalArgs {
    /// Directory of YAML manifests.
    #[arg(long, env = "WEIR_MANIFESTS")]
    pub manifests: PathBuf,
    /// SQLite file holding weights and the embedded zone; processes sharing it share both.
    #[arg(long, env = "WEIR_DB")]
    pub db: PathBuf,
    /// This simulated cluster's name: its weight row and its records' set identifier.
    #[arg(long, env = "WEIR_CLUSTER_NAME")]
    pub cluster_name: String,
    /// Where the built-in authoritative DNS server answers (UDP and TCP).
    #[arg(long, env = "WEIR_DNS_LISTEN", default_value = "127.0.0.1:5353")]
    pub dns_listen: SocketAddr,
    #[command(flatten)]
    pub dns_server: DnsServerArgs,
    #[command(flatten)]
    pub file_limits: FileLimitsArgs,
    /// Prometheus metrics, /healthz and /readyz.
    #[arg(long, env = "WEIR_METRICS_ADDR", value_parser = parse_listen_addr, default_value = "127.0.0.1:8080")]
    pub metrics_addr: SocketAddr,
    /// Weight of the row created for this cluster when it has none (an existing row is never changed).
    #[arg(long, env = "WEIR_INITIAL_WEIGHT", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub initial_weight: u8,
    /// How often this cluster's weight row is read (a local SQLite read).
    #[arg(long, env = "WEIR_WEIGHT_POLL_INTERVAL", value_parser = parse_duration, default_value = "250ms")]
    pub weight_poll_interval: Duration,
    /// Refuse a DesiredWeight of 0 that would leave fewer than N clusters with DesiredWeight > 0 (not
    /// applied, not acknowledged; Event, metric). 0: off.
    #[arg(long, env = "WEIR_MIN_SERVING_CLUSTERS", default_value_t = 0)]
    pub min_serving_clusters: usize,
    /// PEM file of CA certificates trusted for `https://` ramp gates, besides the system's roots.
    #[arg(long, env = "WEIR_GATE_CA_FILE")]
    pub gate_ca_file: Option<PathBuf>,
    /// How often the manifest directory is checked for changes.
    #[arg(long, env = "WEIR_MANIFESTS_POLL_INTERVAL", value_parser = parse_duration, default_value = "1s")]
    pub manifests_poll_interval: Duration,
    /// Only hosts inside this domain (matched on a label boundary) are managed. Empty: every host.
    #[arg(long, env = "WEIR_BINDING_DOMAIN", default_value = "")]
    pub binding_domain: BindingDomain,
    /// Only Ingresses with this annotation value (`key=value`); repeatable, all must match.
    #[arg(long = "annotation-filter", env = "WEIR_ANNOTATION_FILTER", value_delimiter = ';')]
    pub annotation_filters: Vec<AnnotationFilter>,
    /// Prefix of weir's annotations; the weight is `<prefix>/traffic-weight`.
    #[arg(long, env = "WEIR_ANNOTATION_PREFIX", default_value = crate::translate::DEFAULT_ANNOTATION_PREFIX)]
    pub annotation_prefix: String,
    /// TTL of the published records: the embedded zone's default, 5 (short, so that `dig` shows a
    /// change at once), as `weir plan` / `weir explain` on the same --db assume.
    #[arg(long, env = "WEIR_RECORD_TTL")]
    pub record_ttl: Option<u32>,
    /// Allow publishing the last non-zero weight of a name as 0 (answers are then split equally).
    #[arg(long, env = "WEIR_ALLOW_ALL_ZERO")]
    pub allow_all_zero: bool,
    /// React to Ingresses whose load-balancer status is not filled, with the placeholder 127.0.0.1.
    #[arg(long, env = "WEIR_DEV_MODE")]
    pub dev_mode: bool,
    /// Also serve the xDS control plane for this traffic configuration (TrafficInfra name), in the same
    /// process; its strategy weights and registered services are kept in --db.
    #[arg(long, env = "WEIR_XDS_NAME")]
    pub xds_name: Option<String>,
    /// Namespace of the TrafficInfra named by --xds-name, and of its services.
    #[arg(long, env = "WEIR_XDS_NAMESPACE", default_value = "default")]
    pub xds_namespace: String,
    /// ADS (gRPC) address of the xDS control plane (with --xds-name).
    #[arg(long, env = "WEIR_GRPC_ADDR", value_parser = parse_listen_addr, default_value = "127.0.0.1:18000")]
    pub grpc_addr: SocketAddr,
    /// Admin API address of the xDS control plane (with --xds-name).
    #[arg(long, env = "WEIR_ADMIN_ADDR", value_parser = parse_listen_addr, default_value = "127.0.0.1:18080")]
    pub admin_addr: SocketAddr,
    /// Bounds of the xDS control plane's ADS server (with --xds-name).
    #[command(flatten)]
    pub xds_limits: XdsLimitsArgs,
}

#[derive(Debug, Clone, Args)]
pub struct XdsArgs {
    #[command(flatten)]
    pub provider: ProviderArgs,
    /// Name of the traffic configuration (the TrafficInfra); clients dial `xds:///NAME`.
    #[arg(long, env = "WEIR_XDS_NAME")]
    pub name: String,
    #[arg(long, env = "WEIR_XDS_NAMESPACE", default_value = "default")]
    pub namespace: String,
    #[arg(long, env = "WEIR_GRPC_ADDR", value_parser = parse_listen_addr, default_value = ":18000")]
    pub grpc_addr: SocketAddr,
    #[arg(long, env = "WEIR_ADMIN_ADDR", value_parser = parse_listen_addr, default_value = ":18080")]
    pub admin_addr: SocketAddr,
    /// Planner services to route to (besides labelled and registered ones); repeatable.
    #[arg(long = "service", env = "WEIR_XDS_SERVICES", value_delimiter = ',')]
    pub services: Vec<String>,
    /// With `--provider kubernetes`: also watch Services and EndpointSlices in this namespace
    /// (repeatable; `*`: every namespace, at the cluster scope). Needs list and watch of services
    /// and endpointslices there. Only Services in namespaces the TrafficInfra allows
    /// (`spec.xds.discovery.allowedNamespaces`) get traffic; the operator passes one per entry.
    #[arg(long = "watch-namespace", env = "WEIR_XDS_WATCH_NAMESPACES", value_delimiter = ',',
        value_parser = parse_watch_namespace)]
    pub watch_namespaces: Vec<String>,
    /// File where admin-API weights and registered services are kept (local mode).
    #[arg(long, env = "WEIR_XDS_STATE")]
    pub state: Option<PathBuf>,
    /// Bearer token required for admin writes.
    #[arg(long, env = "WEIR_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    #[arg(long, env = "WEIR_METRICS_ADDR", value_parser = parse_listen_addr)]
    pub metrics_addr: Option<SocketAddr>,
    /// Initial fetches (a stream's first request of a type) answered at once; the rest queue, so a
    /// reconnect storm computes and sends a bounded number of initial snapshots at a time.
    #[arg(long, env = "WEIR_XDS_INITIAL_CONCURRENCY", default_value_t = crate::xds::server::DEFAULT_INITIAL_CONCURRENCY,
        value_parser = clap::value_parser!(u16).range(1..))]
    pub xds_initial_concurrency: u16,
    #[command(flatten)]
    pub xds_limits: XdsLimitsArgs,
    /// Serve every node id. By default only the TrafficInfra's `xds.nodeID` is served and another
    /// id gets PERMISSION_DENIED (counted in `weir_xds_rejected_nodes_total`); set this for a mixed
    /// fleet whose proxies have their own ids.
    #[arg(long, env = "WEIR_ALLOW_ANY_NODE_ID")]
    pub allow_any_node_id: bool,
    /// Do not write the TrafficInfra's status (`trafficWeights`, `discoveredServices`,
    /// `ConfigAccepted`) or its Events. Only meaningful with `--provider kubernetes`.
    #[arg(long, env = "WEIR_NO_STATUS")]
    pub no_status: bool,
}

/// `--watch-namespace`: a namespace name, or `*`.
fn parse_watch_namespace(s: &str) -> Result<String, String> {
    if s == "*" || crate::selection::is_namespace_name(s) {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a namespace name (lowercase letters, digits and '-', at most 63) or '*'"))
    }
}

#[derive(Debug, Clone, Args)]
pub struct WeightsArgs {
    #[command(subcommand)]
    pub command: WeightsCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum WeightsCommand {
    /// Every cluster's row.
    List(WeightsStoreArgs),
    /// One cluster's row.
    Get {
        #[command(flatten)]
        store: WeightsStoreArgs,
        #[arg(long, env = "WEIR_CLUSTER_NAME")]
        cluster_name: String,
    },
    /// Set one cluster's DesiredWeight (the controller applies it, then acknowledges). Cancels a
    /// running ramp of that cluster, and says so.
    Set {
        #[command(flatten)]
        store: WeightsStoreArgs,
        #[arg(long, env = "WEIR_CLUSTER_NAME")]
        cluster_name: String,
        /// 0-100. Parsed by weir, not clap, so that `--desired -1` gets weir's message.
        #[arg(long, allow_hyphen_values = true)]
        desired: String,
        /// A time-boxed override: the controller restores the previous DesiredWeight after this long,
        /// unless someone changed it meanwhile.
        #[arg(long = "for", allow_hyphen_values = true)]
        for_: Option<String>,
        /// Why; kept in the history.
        #[arg(long)]
        reason: Option<String>,
        /// Refuse a change of DesiredWeight by more than this, unless --force.
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
        max_step: Option<u8>,
        /// Apply a change larger than --max-step.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        safety: SafetyArgs,
    },
    /// Record a ramp: the cluster's controller moves DesiredWeight to --to by --step, waiting for each
    /// step's ack and --every, and asking the gate (a Prometheus query) before the next step.
    Ramp(RampArgs),
    /// Changes of DesiredWeight and CurrentWeight: who, when, before -> after, why.
    History {
        #[command(flatten)]
        store: WeightsStoreArgs,
        #[arg(long, env = "WEIR_CLUSTER_NAME")]
        cluster_name: Option<String>,
        /// Only changes younger than this (e.g. 1h).
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
    },
}

/// Safety rules shared by `weir weights set` and `ramp`.
#[derive(Debug, Clone, Args)]
pub struct SafetyArgs {
    /// Refuse a change that would leave fewer than N clusters with DesiredWeight > 0. 0: off.
    #[arg(long, env = "WEIR_MIN_SERVING_CLUSTERS", default_value_t = 0)]
    pub min_serving_clusters: usize,
}

#[derive(Debug, Clone, Args)]
pub struct RampArgs {
    #[command(flatten)]
    pub store: WeightsStoreArgs,
    #[arg(long, env = "WEIR_CLUSTER_NAME")]
    pub cluster_name: String,
    /// Target DesiredWeight, 0-100.
    #[arg(long, allow_hyphen_values = true, required_unless_present = "cancel")]
    pub to: Option<String>,
    /// Change per step, 1-100.
    #[arg(long, allow_hyphen_values = true, required_unless_present = "cancel")]
    pub step: Option<String>,
    /// Hold after each acknowledged step before the gate is asked and the next step is written.
    #[arg(long, allow_hyphen_values = true, required_unless_present = "cancel")]
    pub every: Option<String>,
    /// Prometheus HTTP API base URL of the gate (http://host:port or https://host:port); the query goes
    /// to /api/v1/query. The controller asks it, trusting its own --gate-ca-file.
    #[arg(long, requires_all = ["gate_query", "gate_max"])]
    pub gate_url: Option<String>,
    /// PEM file of CA certificates trusted for an `https://` gate (besides the system's roots) when this
    /// command checks the gate before recording the ramp.
    #[arg(long, env = "WEIR_GATE_CA_FILE", requires = "gate_url")]
    pub gate_ca_file: Option<PathBuf>,
    /// PromQL instant query; its value must not exceed --gate-max.
    #[arg(long, requires = "gate_url")]
    pub gate_query: Option<String>,
    #[arg(long, requires = "gate_url", allow_hyphen_values = true)]
    pub gate_max: Option<f64>,
    /// What an empty query result means: fail (default) or pass.
    #[arg(long, value_enum, default_value_t = GateOnNoData::Fail)]
    pub gate_on_no_data: GateOnNoData,
    /// Why; kept in the history.
    #[arg(long)]
    pub reason: Option<String>,
    /// Cancel the running ramp of --cluster-name (DesiredWeight stays where it is).
    #[arg(long)]
    pub cancel: bool,
    #[command(flatten)]
    pub safety: SafetyArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GateOnNoData {
    Fail,
    Pass,
}

/// The store flags of `weir weights`: the backend is sqlite when --db is given, else dynamodb.
#[derive(Debug, Clone, Args)]
pub struct WeightsStoreArgs {
    #[arg(long, env = "WEIR_BACKEND_TYPE")]
    pub backend_type: Option<BackendType>,
    #[arg(long, env = "WEIR_DB")]
    pub db: Option<PathBuf>,
    #[arg(long, env = "WEIR_TABLE_NAME", default_value = "traffic-controller")]
    pub table_name: String,
    /// AWS region; wins over AWS_REGION [default: AWS_REGION, else the profile's, else eu-west-1].
    #[arg(long, env = "WEIR_AWS_REGION")]
    pub aws_region: Option<String>,
    /// DynamoDB history table (see `weir controller --history-table`).
    #[arg(long, env = "WEIR_HISTORY_TABLE")]
    pub history_table: Option<String>,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    /// The host to explain.
    pub host: String,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub provider: ProviderArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub dns: DnsArgs,
    #[command(flatten)]
    pub xds_state: XdsStateArgs,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Where the controller, `weir plan` and `weir explain` read the strategy weights `weir xds` has in
/// force: the same source for the three ([`crate::app::factories::open_live_weights`]), so that they
/// translate with the same weights and apply the same drain rule.
#[derive(Debug, Clone, Default, Args)]
pub struct XdsStateArgs {
    /// The state file of `weir xds --state` (SQLite): its strategy weights are used instead of the
    /// TrafficInfra's `status.trafficWeights` / `spec.trafficDefaults`. Unset: with `--provider
    /// kubernetes`, each TrafficInfra's `{name}-xds-state` ConfigMap; with the file provider and the
    /// SQLite weight store, its `--db` (where `weir local` keeps it); else none.
    #[arg(long, env = "WEIR_XDS_STATE")]
    pub xds_state: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub provider: ProviderArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub dns: DnsArgs,
    #[command(flatten)]
    pub xds_state: XdsStateArgs,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Durations as `500ms`, `5s`, `1m30s`: the grammar BackendTrafficPolicy fields use too.
pub use weir_core::duration::parse_duration;

/// Listen addresses as `host:port`, or `:port` for every interface (the Go form the old flags used).
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') { format!("0.0.0.0{s}") } else { s.to_string() };
    full.parse().map_err(|e| format!("{s:?} is not a listen address (host:port or :port): {e}"))
}

/// `T`'s flags parsed from `argv` alone: every flag not in it gets its clap default, and no `WEIR_*`
/// variable is read. For settings one subcommand derives from another's (`weir local` runs the
/// controller and `weir xds` with their own defaults, not with copies of them).
pub fn parse_flags<T: clap::Args + clap::FromArgMatches>(argv: &[&str]) -> Result<T, clap::Error> {
    let command = T::augment_args(clap::Command::new("weir")).mut_args(|a| a.env(None::<&'static str>));
    let matches = command.try_get_matches_from(std::iter::once("weir").chain(argv.iter().copied()))?;
    T::from_arg_matches(&matches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen_addr(":8080").unwrap(), "0.0.0.0:8080".parse().unwrap());
        assert_eq!(parse_listen_addr("127.0.0.1:9").unwrap(), "127.0.0.1:9".parse().unwrap());
        assert!(parse_listen_addr("8080").is_err());
    }

    #[test]
    fn malformed_annotation_filter_is_a_startup_error() {
        let r = Cli::try_parse_from(["weir", "plan", "--cluster-name", "a", "--annotation-filter", "oops"]);
        assert!(r.is_err());
        let r = Cli::try_parse_from(["weir", "plan", "--cluster-name", "a", "--annotation-filter", "k=v"]);
        assert!(r.is_ok(), "{r:?}");
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
