//! `weir` as the tests start it: one builder for the command lines that every test used to write out
//! by hand (subcommand, provider, weight store, DNS server, metrics port, identity).

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::apiserver::ApiServer;
use crate::{free_port, free_udp_tcp_port, http_get, metric, wait_for, weir_bin, DnsClient, Proc};

/// A `weir` command line being built. Ports are chosen when a flag that needs one is added, so the
/// started [`Weir`] knows where to reach it.
pub struct WeirCmd {
    cmd: Command,
    metrics_port: Option<u16>,
    dns: Option<SocketAddr>,
}

impl WeirCmd {
    /// `weir SUBCOMMAND`, logging at info (debug for weir's own modules).
    pub fn new(subcommand: &str) -> WeirCmd {
        let mut cmd = Command::new(weir_bin());
        cmd.arg(subcommand).env("WEIR_LOG", "info,weir=debug");
        WeirCmd { cmd, metrics_port: None, dns: None }
    }

    /// `weir controller --cluster-name CLUSTER` with `--initial-weight 100`.
    pub fn controller(cluster: &str) -> WeirCmd {
        WeirCmd::new("controller").args(["--cluster-name", cluster, "--initial-weight", "100"])
    }

    /// `--provider kubernetes` against `server`, as the identity holding `token` (a kubeconfig written
    /// into `dir`).
    pub fn kubernetes(mut self, server: &ApiServer, dir: &Path, token: &str) -> WeirCmd {
        self.cmd.env("KUBECONFIG", server.write_kubeconfig_for(dir, token));
        self.args(["--provider", "kubernetes"])
    }

    /// The SQLite weight store at `db`, polled every 200 ms.
    pub fn sqlite(self, db: &Path) -> WeirCmd {
        self.args(["--backend-type", "sqlite", "--weight-poll-interval", "200ms"]).arg("--db").arg(db)
    }

    /// The embedded DNS server on a free loopback port, records with TTL 5.
    pub fn embedded_dns(mut self) -> WeirCmd {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_udp_tcp_port()).parse().expect("loopback address");
        self.dns = Some(addr);
        self.args(["--dns-provider", "embedded", "--dns-listen", &addr.to_string(), "--record-ttl", "5"])
    }

    /// `--metrics-addr` on a free loopback port.
    pub fn metrics(mut self) -> WeirCmd {
        let port = free_port();
        self.metrics_port = Some(port);
        self.args(["--metrics-addr", &format!("127.0.0.1:{port}")])
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> WeirCmd {
        self.cmd.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> WeirCmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> WeirCmd {
        self.cmd.env(key, value);
        self
    }

    /// Runs it to completion (a one-shot command: `plan`, `explain`): (exit success, stdout, stderr).
    pub fn output(mut self) -> (bool, String, String) {
        crate::run(&mut self.cmd)
    }

    /// Starts it; its log goes to `log_dir/NAME.log` (printed if the test panics).
    pub fn spawn(mut self, name: &str, log_dir: &Path) -> Weir {
        let proc = Proc::spawn(name, &mut self.cmd, log_dir);
        Weir { proc, metrics_port: self.metrics_port, dns: self.dns }
    }
}

/// A started `weir`.
pub struct Weir {
    pub proc: Proc,
    metrics_port: Option<u16>,
    dns: Option<SocketAddr>,
}

impl Weir {
    /// The `/metrics` text, or None while it does not answer.
    pub fn metrics_text(&self) -> Option<String> {
        self.get("/metrics")
    }

    /// GET `path` on the metrics port (`/readyz`, `/healthz`, ...): the body of a 2xx answer.
    pub fn get(&self, path: &str) -> Option<String> {
        let port = self.metrics_port.expect("started without WeirCmd::metrics");
        http_get(&format!("http://127.0.0.1:{port}{path}"))
    }

    /// One sample of its metrics (None when absent or unreachable).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric(&self.metrics_text()?, name, labels)
    }

    /// Waits until `/metrics` answers.
    pub fn wait_metrics(&self, timeout: Duration) {
        wait_for(&format!("{} metrics", self.proc.name), timeout, || self.metrics_text());
    }

    /// `weir_record_weight{host, cluster}` (None: absent).
    pub fn record_weight(&self, host: &str, cluster: &str) -> Option<f64> {
        self.metric("weir_record_weight", &[("host", host), ("cluster", cluster)])
    }

    /// Waits until `weir_record_weight{host, cluster}` is `want` (None: absent).
    pub fn wait_record_weight(&self, host: &str, cluster: &str, want: Option<f64>, timeout: Duration) {
        wait_for(&format!("{host} at weight {want:?} on {}", self.proc.name), timeout, || {
            (self.record_weight(host, cluster) == want).then_some(())
        });
    }

    /// The embedded DNS server's address.
    pub fn dns_addr(&self) -> SocketAddr {
        self.dns.expect("started without WeirCmd::embedded_dns")
    }

    pub fn dns(&self) -> DnsClient {
        DnsClient::new(self.dns_addr().port())
    }
}
