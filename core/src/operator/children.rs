//! TrafficInfra → the child objects that run it, as Kubernetes API types. Pure: the infra manager
//! applies them with server-side apply; these functions only say what they should be.
//!
//! Every child lives in the TrafficInfra's namespace, carries an ownerReference to it (so that
//! Kubernetes garbage-collects the children when it goes) and the common labels of [`labels`].
//! Children deliberately do not carry `weir.dev/traffic-infra`: that label marks planner Services.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Secret,
    SecretVolumeSource, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube_core::ResourceExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::crd::{EnvoySpec, NamespaceConfig, TrafficInfra, XdsSpec, API_VERSION, GROUP};

/// Key of the bootstrap file inside the `{name}-envoy-bootstrap` ConfigMap.
pub const BOOTSTRAP_KEY: &str = "envoy.yaml";
/// Where the Envoy container mounts the bootstrap ConfigMap.
pub const BOOTSTRAP_DIR: &str = "/etc/weir/envoy";
/// Pod-template annotation holding a hash of the bootstrap, so that a changed bootstrap rolls the
/// Envoy pods (a ConfigMap change alone does not restart anything).
pub const BOOTSTRAP_HASH_ANNOTATION: &str = "weir.dev/bootstrap-hash";
/// Name of the Envoy cluster, in the bootstrap, that points at the xDS control plane.
pub const XDS_CLUSTER: &str = "weir_xds";
/// Name of the Envoy cluster, in the bootstrap, that reaches Envoy's own admin on loopback (only
/// `/ready` is routed to it, from the probe listener).
pub const ADMIN_CLUSTER: &str = "envoy_admin";
/// The Envoy pod's probe port: a static listener that answers only `/ready` (proxied to the admin
/// interface, which listens on 127.0.0.1 only, so `/quitquitquit` and friends stay in the pod).
pub const ENVOY_PROBE_PORT: u16 = 9902;
/// The uid and gid weir's pods run as (the image's nonroot user).
pub const NONROOT_UID: i64 = 65532;
/// Field manager the infra manager applies children with.
pub const FIELD_MANAGER: &str = "weir-operator";
/// Key of the admin token inside the `{name}-xds-admin-token` Secret.
pub const ADMIN_TOKEN_KEY: &str = "token";
/// Where the xDS container mounts the admin token Secret.
pub const ADMIN_TOKEN_DIR: &str = "/etc/weir/xds-admin";

/// The names of every child of the TrafficInfra `name` (the interface tests outside the project use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildNames {
    pub service_account: String,
    pub role: String,
    pub role_binding: String,
    /// The Secret holding the admin API's bearer token.
    pub admin_token: String,
    pub xds: String,
    pub xds_state: String,
    pub bootstrap: String,
    pub envoy: String,
    pub hpa: String,
}

impl ChildNames {
    pub fn of(name: &str) -> Self {
        Self {
            service_account: format!("{name}-xds"),
            role: format!("{name}-xds-role"),
            role_binding: format!("{name}-xds-rolebinding"),
            admin_token: format!("{name}-xds-admin-token"),
            xds: format!("{name}-xds"),
            xds_state: format!("{name}-xds-state"),
            bootstrap: format!("{name}-envoy-bootstrap"),
            envoy: format!("{name}-envoy"),
            hpa: format!("{name}-envoy-hpa"),
        }
    }
}

/// Everything one TrafficInfra needs, in the order they should be applied (identities and
/// configuration before the workloads that use them).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Children {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    /// The admin API token, without its value: the infra manager creates it once with a random
    /// token and never rewrites it (see [`ChildObject::Secret`]).
    pub admin_token: Secret,
    /// Where `weir xds` replicas share admin-API weights and registered services. Created empty;
    /// its data belongs to `weir xds` (server-side apply leaves fields it does not set alone).
    pub xds_state: ConfigMap,
    pub xds_service: Service,
    pub xds_deployment: Deployment,
    pub bootstrap: ConfigMap,
    pub envoy_service: Service,
    pub envoy_deployment: Deployment,
    pub hpa: Option<HorizontalPodAutoscaler>,
}

/// One child, for callers that handle them uniformly (apply, golden files). Serialises as the plain
/// Kubernetes object.
// A handful per TrafficInfra: boxing the large variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ChildObject {
    ServiceAccount(ServiceAccount),
    Role(Role),
    RoleBinding(RoleBinding),
    /// Created once, with a value the infra manager generates; never read or updated (so the
    /// operator needs only `create` on Secrets, and no read of any).
    Secret(Secret),
    ConfigMap(ConfigMap),
    Service(Service),
    Deployment(Deployment),
    HorizontalPodAutoscaler(HorizontalPodAutoscaler),
}

impl ChildObject {
    /// `Kind/name`, for logs.
    pub fn describe(&self) -> String {
        let (kind, meta) = match self {
            ChildObject::ServiceAccount(o) => ("ServiceAccount", &o.metadata),
            ChildObject::Role(o) => ("Role", &o.metadata),
            ChildObject::RoleBinding(o) => ("RoleBinding", &o.metadata),
            ChildObject::Secret(o) => ("Secret", &o.metadata),
            ChildObject::ConfigMap(o) => ("ConfigMap", &o.metadata),
            ChildObject::Service(o) => ("Service", &o.metadata),
            ChildObject::Deployment(o) => ("Deployment", &o.metadata),
            ChildObject::HorizontalPodAutoscaler(o) => ("HorizontalPodAutoscaler", &o.metadata),
        };
        format!("{kind}/{}", meta.name.as_deref().unwrap_or_default())
    }
}

impl Children {
    pub fn into_objects(self) -> Vec<ChildObject> {
        let mut out = vec![
            ChildObject::ServiceAccount(self.service_account),
            ChildObject::Role(self.role),
            ChildObject::RoleBinding(self.role_binding),
            ChildObject::Secret(self.admin_token),
            ChildObject::ConfigMap(self.xds_state),
            ChildObject::Service(self.xds_service),
            ChildObject::Deployment(self.xds_deployment),
            ChildObject::ConfigMap(self.bootstrap),
            ChildObject::Service(self.envoy_service),
            ChildObject::Deployment(self.envoy_deployment),
        ];
        out.extend(self.hpa.map(ChildObject::HorizontalPodAutoscaler));
        out
    }
}

/// Labels on every child and its pods. `component` is `xds` or `envoy` (empty for shared objects).
pub fn labels(ti_name: &str, component: &str) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        ("app.kubernetes.io/managed-by".to_string(), "weir".to_string()),
        ("app.kubernetes.io/part-of".to_string(), "weir".to_string()),
        ("app.kubernetes.io/instance".to_string(), ti_name.to_string()),
    ]);
    if !component.is_empty() {
        l.insert("app.kubernetes.io/component".into(), component.into());
        l.insert("app.kubernetes.io/name".into(), if component == "xds" { "weir-xds" } else { "envoy" }.into());
    }
    l
}

/// The pod selector of a component: stable across spec changes (a Deployment's selector is immutable).
pub fn selector_labels(ti_name: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/instance".to_string(), ti_name.to_string()),
        ("app.kubernetes.io/component".to_string(), component.to_string()),
    ])
}

/// The ownerReference every child carries: the TrafficInfra is the controller, and foreground
/// deletion waits for the children.
pub fn owner_reference(ti: &TrafficInfra) -> OwnerReference {
    OwnerReference {
        api_version: API_VERSION.into(),
        kind: "TrafficInfra".into(),
        name: ti.name_any(),
        uid: ti.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Where the Envoy bootstrap points and listens. In the cluster, the xDS host is the xDS Service's
/// DNS name; tests point it at loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapParams {
    pub node_id: String,
    /// Envoy's `node.cluster`: the TrafficInfra's name.
    pub node_cluster: String,
    pub xds_host: String,
    pub xds_port: u16,
    pub admin_address: String,
    pub admin_port: u16,
    /// The probe listener (all interfaces): `/ready` only.
    pub probe_port: u16,
    /// `node.metadata.labels`: the Envoy pods' labels, which VirtualService selectors match.
    pub node_labels: BTreeMap<String, String>,
}

impl BootstrapParams {
    pub fn for_infra(ti: &TrafficInfra) -> Self {
        let ns = ti.namespace().unwrap_or_else(|| "default".into());
        let name = ti.name_any();
        Self {
            node_id: ti.spec.xds.node_id.clone(),
            node_cluster: name.clone(),
            xds_host: format!("{}.{ns}.svc", ChildNames::of(&name).xds),
            xds_port: port(ti.spec.xds.ports.grpc),
            // Admin (with /quitquitquit) stays inside the pod; kubelet probes use the probe listener.
            admin_address: "127.0.0.1".into(),
            admin_port: port(ti.spec.envoy.ports.admin),
            probe_port: ENVOY_PROBE_PORT,
            node_labels: labels(&name, "envoy"),
        }
    }
}

fn port(p: i32) -> u16 {
    u16::try_from(p).unwrap_or(0)
}

/// A complete Envoy bootstrap: node identity, admin interface, a probe listener, and listeners and
/// clusters fetched over one ADS gRPC stream from `weir xds`.
pub fn bootstrap_yaml(p: &BootstrapParams) -> String {
    let bootstrap = serde_json::json!({
        "node": {
            "id": p.node_id,
            "cluster": p.node_cluster,
            "metadata": { crate::xds::virtual_service::NODE_LABELS_KEY: p.node_labels },
        },
        "admin": {
            "address": { "socket_address": { "address": p.admin_address, "port_value": p.admin_port } },
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [ { "envoy_grpc": { "cluster_name": XDS_CLUSTER } } ],
            },
            "lds_config": { "resource_api_version": "V3", "ads": {} },
            "cds_config": { "resource_api_version": "V3", "ads": {} },
        },
        "static_resources": {
            "listeners": [ probe_listener(p.probe_port) ],
            "clusters": [ admin_cluster(p), xds_cluster(p) ],
        },
        "layered_runtime": {
            "layers": [ { "name": "static", "static_layer": {
                // Envoys behind a load balancer see many clients; keep Envoy's own overload defaults.
                "overload.global_downstream_max_connections": 50000,
            } } ],
        },
    });
    serde_yaml::to_string(&bootstrap).expect("a JSON value always serialises to YAML")
}

/// The static listener on the probe port: `GET /ready` goes to the admin cluster, anything else is
/// a 404.
fn probe_listener(port: u16) -> serde_json::Value {
    serde_json::json!({
        "name": "probe",
        "address": { "socket_address": { "address": "0.0.0.0", "port_value": port } },
        "filter_chains": [ { "filters": [ {
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "probe",
                "route_config": { "name": "probe", "virtual_hosts": [ {
                    "name": "probe",
                    "domains": ["*"],
                    "routes": [
                        { "match": { "path": "/ready", "headers": [ { "name": ":method", "string_match": { "exact": "GET" } } ] },
                          "route": { "cluster": ADMIN_CLUSTER } },
                        { "match": { "prefix": "/" }, "direct_response": { "status": 404 } },
                    ],
                } ] },
                "http_filters": [ { "name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                } } ],
            },
        } ] } ],
    })
}

/// Envoy's own admin interface, on loopback.
fn admin_cluster(p: &BootstrapParams) -> serde_json::Value {
    serde_json::json!({
        "name": ADMIN_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": ADMIN_CLUSTER,
            "endpoints": [ { "lb_endpoints": [ { "endpoint": { "address": { "socket_address": {
                "address": p.admin_address, "port_value": p.admin_port,
            } } } } ] } ],
        },
    })
}

/// The xDS control plane (HTTP/2), by the address of its Service.
fn xds_cluster(p: &BootstrapParams) -> serde_json::Value {
    serde_json::json!({
        "name": XDS_CLUSTER,
        // STRICT_DNS follows the Service's address if it changes; fine for an IP too.
        "type": "STRICT_DNS",
        "connect_timeout": "5s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} },
            },
        },
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [ { "lb_endpoints": [ { "endpoint": { "address": { "socket_address": {
                "address": p.xds_host, "port_value": p.xds_port,
            } } } } ] } ],
        },
    })
}

/// The child objects of `ti`, given its namespace's NamespaceConfig (whose scheduling settings
/// every pod inherits).
pub fn children(ti: &TrafficInfra, ns_config: &NamespaceConfig) -> Children {
    let parent = Parent::of(ti);
    let names = &parent.names;
    let bootstrap_text = bootstrap_yaml(&BootstrapParams::for_infra(ti));
    let bootstrap_hash = hex::encode(&Sha256::digest(bootstrap_text.as_bytes())[..8]);
    Children {
        service_account: ServiceAccount { metadata: parent.meta(&names.service_account, "xds"), ..Default::default() },
        role: Role { metadata: parent.meta(&names.role, "xds"), rules: Some(xds_rules(&parent.name, names)) },
        role_binding: role_binding(&parent),
        admin_token: Secret {
            metadata: parent.meta(&names.admin_token, "xds"),
            type_: Some("Opaque".into()),
            ..Default::default()
        },
        xds_state: ConfigMap { metadata: parent.meta(&names.xds_state, "xds"), ..Default::default() },
        xds_service: xds_service(&parent, &ti.spec.xds),
        xds_deployment: xds_deployment(&parent, &ti.spec.xds, ns_config),
        bootstrap: ConfigMap {
            metadata: parent.meta(&names.bootstrap, "envoy"),
            data: Some(BTreeMap::from([(BOOTSTRAP_KEY.to_string(), bootstrap_text)])),
            ..Default::default()
        },
        envoy_service: envoy_service(&parent, &ti.spec.envoy),
        envoy_deployment: envoy_deployment(&parent, &ti.spec.envoy, ns_config, bootstrap_hash),
        hpa: hpa(&parent, &ti.spec.envoy),
    }
}

/// What every child's metadata comes from: its TrafficInfra's name, namespace and owner reference.
struct Parent {
    name: String,
    ns: String,
    names: ChildNames,
    owner: OwnerReference,
}

impl Parent {
    fn of(ti: &TrafficInfra) -> Self {
        let name = ti.name_any();
        Self {
            ns: ti.namespace().unwrap_or_else(|| "default".into()),
            names: ChildNames::of(&name),
            owner: owner_reference(ti),
            name,
        }
    }

    /// The metadata of the child `child` of component `component` (`xds` or `envoy`).
    fn meta(&self, child: &str, component: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(child.to_string()),
            namespace: Some(self.ns.clone()),
            labels: Some(labels(&self.name, component)),
            owner_references: Some(vec![self.owner.clone()]),
            ..Default::default()
        }
    }
}

fn role_binding(parent: &Parent) -> RoleBinding {
    let names = &parent.names;
    RoleBinding {
        metadata: parent.meta(&names.role_binding, "xds"),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: names.role.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: names.service_account.clone(),
            namespace: Some(parent.ns.clone()),
            ..Default::default()
        }]),
    }
}

fn xds_service(parent: &Parent, xds: &XdsSpec) -> Service {
    Service {
        metadata: parent.meta(&parent.names.xds, "xds"),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(&parent.name, "xds")),
            ports: Some(vec![
                service_port("grpc", xds.ports.grpc, Some("grpc")),
                service_port("admin", xds.ports.admin, Some("http")),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The command line of `weir xds` for this TrafficInfra.
fn xds_args(parent: &Parent, xds: &XdsSpec) -> Vec<String> {
    let mut args = vec![
        "xds".to_string(),
        "--provider".into(),
        "kubernetes".into(),
        "--name".into(),
        parent.name.clone(),
        "--namespace".into(),
        parent.ns.clone(),
        "--grpc-addr".into(),
        format!(":{}", xds.ports.grpc),
        "--admin-addr".into(),
        format!(":{}", xds.ports.admin),
        "--admin-token-file".into(),
        format!("{ADMIN_TOKEN_DIR}/{ADMIN_TOKEN_KEY}"),
    ];
    for svc in &xds.discovery.services {
        args.push("--service".into());
        args.push(svc.clone());
    }
    // Planner Services of the allowed namespaces are watched there; the Role covers only this
    // namespace, so each allowed namespace's owner grants the list and watch (docs/kubernetes.md).
    for allowed in xds.discovery.allowed_namespaces.iter().filter(|n| **n != parent.ns) {
        args.push("--watch-namespace".into());
        args.push(allowed.clone());
    }
    args
}

fn xds_deployment(parent: &Parent, xds: &XdsSpec, ns_config: &NamespaceConfig) -> Deployment {
    let names = &parent.names;
    let xds_container = Container {
        name: "xds".into(),
        image: Some(xds.image.reference()),
        image_pull_policy: Some(xds.image.pull_policy.clone()),
        command: Some(vec!["weir".into()]),
        args: Some(xds_args(parent, xds)),
        // The replica's identity when it writes the shared state ConfigMap.
        env: Some(vec![EnvVar {
            name: "POD_NAME".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector { field_path: "metadata.name".into(), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ports: Some(vec![container_port("grpc", xds.ports.grpc), container_port("admin", xds.ports.admin)]),
        readiness_probe: Some(http_probe("/readyz", "admin", 5)),
        liveness_probe: Some(http_probe("/healthz", "admin", 10)),
        resources: Some(resources(&xds.resources.cpu, &xds.resources.memory)),
        volume_mounts: Some(vec![VolumeMount {
            name: "admin-token".into(),
            mount_path: ADMIN_TOKEN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        security_context: Some(restricted_container()),
        ..Default::default()
    };
    let xds_volumes = vec![Volume {
        name: "admin-token".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(names.admin_token.clone()),
            default_mode: Some(0o400),
            ..Default::default()
        }),
        ..Default::default()
    }];
    let xds_pod =
        pod_spec(ns_config, vec![xds_container], Some(xds_volumes), Some(names.service_account.clone()), true);
    Deployment {
        metadata: parent.meta(&names.xds, "xds"),
        spec: DeploymentSpec {
            replicas: Some(xds.replicas),
            selector: LabelSelector { match_labels: Some(selector_labels(&parent.name, "xds")), ..Default::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels(&parent.name, "xds")), ..Default::default() }),
                spec: Some(xds_pod),
            },
            strategy: Some(rolling_update()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn envoy_service(parent: &Parent, envoy: &EnvoySpec) -> Service {
    Service {
        metadata: ObjectMeta {
            annotations: (!envoy.service.annotations.is_empty()).then(|| envoy.service.annotations.clone()),
            ..parent.meta(&parent.names.envoy, "envoy")
        },
        spec: Some(ServiceSpec {
            type_: Some(envoy.service.type_.clone()),
            selector: Some(selector_labels(&parent.name, "envoy")),
            ports: Some(vec![service_port("grpc", envoy.ports.grpc, None)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Envoy Deployment; `bootstrap_hash` in its pod template rolls the pods when the bootstrap
/// changes.
fn envoy_deployment(
    parent: &Parent,
    envoy: &EnvoySpec,
    ns_config: &NamespaceConfig,
    bootstrap_hash: String,
) -> Deployment {
    let names = &parent.names;
    let envoy_container = Container {
        name: "envoy".into(),
        image: Some(envoy.image.reference()),
        image_pull_policy: Some(envoy.image.pull_policy.clone()),
        command: Some(vec!["envoy".into()]),
        // Pods are replaced, never hot-restarted: no shared memory or domain socket is needed.
        args: Some(vec![
            "-c".into(),
            format!("{BOOTSTRAP_DIR}/{BOOTSTRAP_KEY}"),
            "--drain-time-s".into(),
            "30".into(),
            "--disable-hot-restart".into(),
        ]),
        // The admin port is on loopback: not a container port.
        ports: Some(vec![
            container_port("grpc", envoy.ports.grpc),
            container_port("probe", i32::from(ENVOY_PROBE_PORT)),
        ]),
        // Envoy's /ready (through the probe listener) is 200 once it is initialised (listeners and
        // clusters received, or the initial fetch timed out); liveness waits out that first fetch.
        readiness_probe: Some(http_probe("/ready", "probe", 5)),
        liveness_probe: Some(Probe { initial_delay_seconds: Some(20), ..http_probe("/ready", "probe", 10) }),
        resources: Some(resources(&envoy.resources.cpu, &envoy.resources.memory)),
        volume_mounts: Some(vec![VolumeMount {
            name: "bootstrap".into(),
            mount_path: BOOTSTRAP_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        security_context: Some(restricted_container()),
        ..Default::default()
    };
    let volumes = vec![Volume {
        name: "bootstrap".into(),
        config_map: Some(ConfigMapVolumeSource { name: names.bootstrap.clone(), ..Default::default() }),
        ..Default::default()
    }];
    // Envoy needs no Kubernetes API access.
    let envoy_pod = pod_spec(ns_config, vec![envoy_container], Some(volumes), None, false);
    Deployment {
        metadata: parent.meta(&names.envoy, "envoy"),
        spec: DeploymentSpec {
            // With an HPA, replicas belong to it: applying a value here would fight it.
            replicas: (!envoy.hpa.enabled).then_some(envoy.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&parent.name, "envoy")),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&parent.name, "envoy")),
                    annotations: Some(BTreeMap::from([(BOOTSTRAP_HASH_ANNOTATION.to_string(), bootstrap_hash)])),
                    ..Default::default()
                }),
                spec: Some(envoy_pod),
            },
            strategy: Some(rolling_update()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The Envoy HPA, when enabled.
fn hpa(parent: &Parent, envoy: &EnvoySpec) -> Option<HorizontalPodAutoscaler> {
    envoy.hpa.enabled.then(|| {
        // An HPA's minimum must be at least 1.
        let min = envoy.replicas.max(1);
        HorizontalPodAutoscaler {
            metadata: parent.meta(&parent.names.hpa, "envoy"),
            spec: HorizontalPodAutoscalerSpec {
                scale_target_ref: CrossVersionObjectReference {
                    api_version: Some("apps/v1".into()),
                    kind: "Deployment".into(),
                    name: parent.names.envoy.clone(),
                },
                min_replicas: Some(min),
                max_replicas: envoy.max_replicas.max(min),
                metrics: Some(vec![
                    utilization_metric("cpu", envoy.hpa.target_cpu_utilization),
                    utilization_metric("memory", envoy.hpa.target_memory_utilization),
                ]),
                ..Default::default()
            },
            ..Default::default()
        }
    })
}

/// Only what `weir xds` needs, in its namespace: watch planner Services, their EndpointSlices, its
/// TrafficInfra and BackendTrafficPolicies, keep shared state in its own ConfigMap, write its part
/// of its own TrafficInfra's status (both named, so it can touch no other), and record Events on
/// it. The operator holds every one of these itself, so Kubernetes lets it grant them without
/// `escalate`.
fn xds_rules(ti_name: &str, names: &ChildNames) -> Vec<PolicyRule> {
    let rule = |group: &str, resources: &[&str], verbs: &[&str], names: &[&str]| PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        resource_names: (!names.is_empty()).then(|| names.iter().map(|n| n.to_string()).collect()),
        ..Default::default()
    };
    vec![
        rule("", &["services"], &["list", "watch"], &[]),
        rule("discovery.k8s.io", &["endpointslices"], &["list", "watch"], &[]),
        rule(GROUP, &["trafficinfras", "backendtrafficpolicies"], &["list", "watch"], &[]),
        // l7mp VirtualServices, their conditions, and the pods their `host.selector`s pick.
        rule(crate::crd::VS_GROUP, &["virtualservices"], &["list", "watch"], &[]),
        rule(crate::crd::VS_GROUP, &["virtualservices/status"], &["patch"], &[]),
        rule("", &["pods"], &["list", "watch"], &[]),
        rule("", &["configmaps"], &["get", "patch"], &[&names.xds_state]),
        // Read-merge-write of its status part (`trafficWeights`, `discoveredServices`,
        // `ConfigAccepted`); `get` also gives the uid its Events name.
        rule(GROUP, &["trafficinfras"], &["get"], &[ti_name]),
        rule(GROUP, &["trafficinfras/status"], &["patch"], &[ti_name]),
        // A Warning Event on its TrafficInfra per distinct rejected configuration (a series patch
        // when one repeats).
        rule("events.k8s.io", &["events"], &["create", "patch"], &[]),
    ]
}

fn service_port(name: &str, port: i32, app_protocol: Option<&str>) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        app_protocol: app_protocol.map(Into::into),
        ..Default::default()
    }
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort { name: Some(name.into()), container_port: port, protocol: Some("TCP".into()), ..Default::default() }
}

fn http_probe(path: &str, port_name: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(port_name.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

/// CPU and memory are requests (what the HPA's utilisation is relative to); memory is also the
/// limit, since running out of it is not recoverable by throttling.
fn resources(cpu: &str, memory: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
        ])),
        limits: Some(BTreeMap::from([("memory".to_string(), Quantity(memory.into()))])),
        ..Default::default()
    }
}

fn restricted_container() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(NONROOT_UID),
        run_as_group: Some(NONROOT_UID),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
        ..Default::default()
    }
}

fn rolling_update() -> DeploymentStrategy {
    DeploymentStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateDeployment {
            max_surge: Some(IntOrString::String("25%".into())),
            max_unavailable: Some(IntOrString::Int(0)),
        }),
    }
}

/// A pod spec with the NamespaceConfig's scheduling settings.
fn pod_spec(
    ns_config: &NamespaceConfig,
    containers: Vec<Container>,
    volumes: Option<Vec<Volume>>,
    service_account: Option<String>,
    api_access: bool,
) -> PodSpec {
    let nc = &ns_config.spec;
    PodSpec {
        containers,
        volumes,
        service_account_name: service_account,
        automount_service_account_token: Some(api_access),
        tolerations: (!nc.tolerations.is_empty()).then(|| nc.tolerations.clone()),
        node_selector: (!nc.node_selector.is_empty()).then(|| nc.node_selector.clone()),
        affinity: nc.affinity.clone(),
        image_pull_secrets: (!nc.image_pull_secrets.is_empty()).then(|| nc.image_pull_secrets.clone()),
        security_context: Some(PodSecurityContext {
            // Volume files (the admin token, mode 0400) belong to this group, so the non-root
            // containers (65532) can read them.
            fs_group: Some(NONROOT_UID),
            seccomp_profile: Some(k8s_openapi::api::core::v1::SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        termination_grace_period_seconds: Some(45),
        ..Default::default()
    }
}

fn utilization_metric(resource: &str, percent: i32) -> MetricSpec {
    MetricSpec {
        type_: "Resource".into(),
        resource: Some(ResourceMetricSource {
            name: resource.into(),
            target: MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(percent),
                ..Default::default()
            },
        }),
        ..Default::default()
    }
}
