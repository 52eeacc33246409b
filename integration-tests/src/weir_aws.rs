//! Running `weir controller` against moto: manifests for N hosts, the command line the issue fixes,
//! and waiting on the zone and the table.

use std::path::{Path, PathBuf};
use std::process::Command;

use weir::dns::record::{RecordSet, RecordType};

use crate::aws::aws_env;
use crate::{free_port, http_get, weir_bin, Proc};

pub const DOMAIN: &str = "example.com";
pub const TABLE: &str = "traffic-controller";

/// Manifests for `hosts` hosts `h{i}.example.com`, each an Ingress on the load balancer `lb` with a
/// ready backend.
pub fn write_manifests(dir: &Path, hosts: usize, lb: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let mut text = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: app, namespace: web}\nspec:\n  selector: {app: app}\n  ports: [{port: 80, targetPort: 8080}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: app-1\n  namespace: web\n  labels: {kubernetes.io/service-name: app}\naddressType: IPv4\nendpoints:\n  - addresses: [10.0.0.1]\n    conditions: {ready: true}\nports: [{port: 8080, protocol: TCP}]\n",
    );
    for i in 0..hosts {
        text.push_str(&format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: h{i}\n  namespace: web\nspec:\n  rules:\n    - host: h{i}.{DOMAIN}\n      http:\n        paths:\n          - path: /\n            pathType: Prefix\n            backend: {{service: {{name: app, port: {{number: 80}}}}}}\nstatus:\n  loadBalancer:\n    ingress:\n      - hostname: {lb}\n"
        ));
    }
    let tmp = dir.join(".manifests.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, dir.join("manifests.yaml")).unwrap();
}

/// One `weir controller` on moto (or a proxy in front of it).
pub struct Controller {
    pub proc: Proc,
    pub metrics_port: u16,
}

pub struct ControllerSpec<'a> {
    pub cluster: &'a str,
    pub manifests: PathBuf,
    pub endpoint: String,
    /// `--hosted-zone-id`; empty: none (zones found from the binding domain).
    pub zone: &'a str,
    pub initial_weight: u8,
    pub extra: Vec<String>,
}

impl Controller {
    pub fn start(spec: ControllerSpec<'_>, log_dir: &Path, log_name: &str) -> Controller {
        Self::start_polling(spec, Some("1s"), log_dir, log_name)
    }

    /// `poll`: `--weight-poll-interval`, or None for weir's default.
    pub fn start_polling(spec: ControllerSpec<'_>, poll: Option<&str>, log_dir: &Path, log_name: &str) -> Controller {
        let metrics_port = free_port();
        let mut cmd = Command::new(weir_bin());
        cmd.args(["controller", "--provider", "file", "--manifests"])
            .arg(&spec.manifests)
            .args(["--cluster-name", spec.cluster, "--backend-type", "dynamodb", "--table-name", TABLE])
            .args(["--dns-provider", "route53", "--binding-domain", DOMAIN])
            .args(["--hosted-zone-id", spec.zone].iter().filter(|_| !spec.zone.is_empty()))
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(poll.map(|p| ["--weight-poll-interval", p]).into_iter().flatten())
            .args(["--initial-weight", &spec.initial_weight.to_string()])
            .args(&spec.extra)
            .env("WEIR_LOG", "info,weir=debug");
        for (k, v) in aws_env(&spec.endpoint) {
            cmd.env(k, v);
        }
        let proc = Proc::spawn(log_name, &mut cmd, log_dir);
        Controller { proc, metrics_port }
    }

    pub fn metrics(&self) -> Option<String> {
        http_get(&format!("http://127.0.0.1:{}/metrics", self.metrics_port))
    }
}

/// This cluster's traffic records, by host.
pub fn traffic_of<'a>(records: &'a [RecordSet], cluster: &str) -> Vec<&'a RecordSet> {
    records.iter().filter(|r| r.key.set_identifier == cluster && r.key.rtype != RecordType::Txt).collect()
}

pub fn txt_of<'a>(records: &'a [RecordSet], cluster: &str) -> Vec<&'a RecordSet> {
    records.iter().filter(|r| r.key.set_identifier == cluster && r.key.rtype == RecordType::Txt).collect()
}
