//! End to end: the real `weir controller --provider kubernetes` binary against the in-process test
//! API server through a kubeconfig, with the SQLite store and the embedded DNS zone, queried over DNS.
//! The API server enforces RBAC and the controller runs as the chart's ServiceAccount with the
//! chart's ClusterRole, Role and bindings; objects are set up as the superuser; nothing is denied.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use integration_tests::apiserver::{ApiServer, Options, Selector, WriteOp};
use integration_tests::chart::{install_controller_identity, ChartIdentity, RELEASE_NAMESPACE};
use integration_tests::wait_for;
use integration_tests::weir_cmd::{Weir, WeirCmd};
use serde_json::{json, Value};
use weir_core::testkit::{mk_ingress, mk_service, mk_slice, EndpointState};

const CLUSTER: &str = "eu";
const T: Duration = Duration::from_secs(30);

/// The chart's identity for this test's values.
fn identity(server: &ApiServer, set: Value) -> ChartIdentity {
    let mut values = json!({"controller": {"clusterName": CLUSTER}});
    json_patch::merge(&mut values, &set);
    install_controller_identity(server, values)
}

/// Nothing the controller asked for was denied.
fn assert_nothing_denied(server: &ApiServer, id: &ChartIdentity) {
    let mine: Vec<_> = server.audit().into_iter().filter(|r| r.user == id.user).collect();
    assert!(mine.iter().any(|r| r.resource == "ingresses"), "the controller ran as {}", id.user);
    let denied: Vec<_> = mine.iter().filter(|r| !r.allowed).collect();
    assert!(denied.is_empty(), "denied to {}: {denied:#?}", id.user);
}

fn controller(name: &str, server: &ApiServer, id: &ChartIdentity, dir: &Path, extra: &[&str]) -> Weir {
    WeirCmd::controller(CLUSTER)
        .kubernetes(server, dir, &id.token)
        .env("POD_NAME", name)
        .sqlite(&dir.join("weir.db"))
        .embedded_dns()
        .metrics()
        .args(extra)
        .spawn(name, dir)
}

/// An Ingress `default/name` routing each (host, Service) to port 80, behind a load balancer at `ip`.
fn ingress(name: &str, hosts: &[(&str, &str)], ip: &str) -> Value {
    hosts.iter().fold(mk_ingress("default", name), |i, (host, svc)| i.rule(host, svc, 80)).load_balancer(ip).json()
}

fn service(name: &str) -> Value {
    mk_service("default", name).port(80).json()
}

fn slice(service: &str, ready: bool) -> Value {
    let state = if ready { EndpointState::Ready } else { EndpointState::NotReady };
    mk_slice("default", service).endpoint("10.0.0.1", state).json()
}

/// The A records the embedded server answers for `host` (empty on NXDOMAIN or no data).
fn query_a(server: SocketAddr, host: &str) -> Option<Vec<Ipv4Addr>> {
    let mut msg = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    msg.add_query(Query::query(Name::from_ascii(format!("{host}.")).ok()?, RecordType::A));
    let socket = UdpSocket::bind("127.0.0.1:0").ok()?;
    socket.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    socket.send_to(&msg.to_vec().ok()?, server).ok()?;
    let mut buf = [0u8; 4096];
    let (n, _) = socket.recv_from(&mut buf).ok()?;
    let answer = Message::from_vec(&buf[..n]).ok()?;
    Some(
        answer
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect(),
    )
}

fn rand_id() -> u16 {
    (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() & 0xffff) as u16
}

fn seed(server: &ApiServer, obj: Value) {
    server.store().create_object(obj).unwrap();
}

fn merge(server: &ApiServer, sample: &Value, name: &str, patch: Value) {
    let rt = server.store().type_of(sample).unwrap();
    server.store().write(&rt, "default", name, WriteOp::Merge(patch), false).unwrap();
}

#[test]
fn ingress_lifecycle_drives_records() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start_background(Options::default());
    for svc in ["svc-a", "svc-b"] {
        seed(&server, service(svc));
        seed(&server, slice(svc, true));
    }
    let ing = ingress("web", &[("a.example.com", "svc-a"), ("b.example.com", "svc-b")], "192.0.2.10");
    seed(&server, ing.clone());
    let id = identity(&server, json!({}));
    let c = controller("controller", &server, &id, dir.path(), &["--allow-all-zero"]);

    // Ingress with a load-balancer address → its records appear, and the DNS server answers.
    c.wait_record_weight("a.example.com", CLUSTER, Some(100.0), T);
    c.wait_record_weight("b.example.com", CLUSTER, Some(100.0), T);
    let answer = wait_for("an A answer for a.example.com", T, || {
        query_a(c.dns_addr(), "a.example.com").filter(|a| !a.is_empty())
    });
    assert_eq!(answer, vec![Ipv4Addr::new(192, 0, 2, 10)]);
    wait_for("readiness", T, || c.get("/readyz"));

    // Annotate → the weight changes.
    merge(&server, &ing, "web", json!({"metadata": {"annotations": {"dns.adevinta.com/traffic-weight": "40"}}}));
    c.wait_record_weight("a.example.com", CLUSTER, Some(40.0), T);
    c.wait_record_weight("b.example.com", CLUSTER, Some(40.0), T);

    // svc-b's EndpointSlice loses its ready endpoint → weight 0 for b only.
    let rt = server.store().type_of(&slice("x", true)).unwrap();
    server.store().write(&rt, "default", "svc-b-1", WriteOp::Replace(slice("svc-b", false)), false).unwrap();
    c.wait_record_weight("b.example.com", CLUSTER, Some(0.0), T);
    assert_eq!(c.record_weight("a.example.com", CLUSTER), Some(40.0), "a must keep its weight");

    // Deleted while another finalizer holds it → no traffic; deleted for good → records gone.
    merge(&server, &ing, "web", json!({"metadata": {"finalizers": ["other.example.com/hold"]}}));
    let ing_rt = server.store().type_of(&ing).unwrap();
    server.store().delete(&ing_rt, "default", "web").unwrap();
    c.wait_record_weight("a.example.com", CLUSTER, Some(0.0), T);
    merge(&server, &ing, "web", json!({"metadata": {"finalizers": null}}));
    c.wait_record_weight("a.example.com", CLUSTER, None, T);
    c.wait_record_weight("b.example.com", CLUSTER, None, T);
    wait_for("a.example.com gone from DNS", T, || query_a(c.dns_addr(), "a.example.com").filter(|a| a.is_empty()));
    assert_nothing_denied(&server, &id);
}

#[test]
fn refused_inputs_become_events_on_the_ingress() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start_background(Options::default());
    seed(&server, service("svc"));
    seed(&server, slice("svc", true));
    let mut ing = ingress("web", &[("a.example.com", "svc")], "192.0.2.10");
    ing["metadata"]["annotations"] = json!({"dns.adevinta.com/traffic-weight": "abc"});
    let uid = server.store().create_object(ing).unwrap()["metadata"]["uid"].clone();
    seed(&server, ingress("ok", &[("b.example.com", "svc")], "192.0.2.11"));
    let id = identity(&server, json!({}));
    let c = controller("controller", &server, &id, dir.path(), &[]);
    c.wait_record_weight("b.example.com", CLUSTER, Some(100.0), T);

    let events = server.store().type_of(&json!({"apiVersion": "events.k8s.io/v1", "kind": "Event"})).unwrap();
    let find = |reason: &str| {
        let (items, _) = server.store().list(&events, Some("default"), &Selector::default());
        items.into_iter().find(|e| e["reason"] == reason)
    };
    let bad = wait_for("an InvalidTrafficWeight Event", T, || find("InvalidTrafficWeight"));
    assert_eq!(bad["regarding"]["name"], "web");
    assert_eq!(bad["regarding"]["uid"], uid);
    assert!(bad["note"].as_str().unwrap().contains("\"abc\""), "{bad}");

    // The only record of b.example.com going to 0 is refused by the all-zero guard, with an Event.
    merge(
        &server,
        &slice("x", true),
        "svc-1",
        json!({"endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": false}}]}),
    );
    let guard = wait_for("an AllZeroGuard Event", T, || find("AllZeroGuard"));
    assert_eq!(guard["regarding"]["kind"], "Ingress");
    assert_eq!(c.record_weight("b.example.com", CLUSTER), Some(100.0), "the guard keeps the published weight");
    assert!(c.metric("weir_invalid_input_total", &[("kind", "all_zero_guard")]).is_some_and(|v| v >= 1.0));
    assert_nothing_denied(&server, &id);
}

/// `--host-namespaces` (issue 11, finding 2): a host reserved for namespace `shop` goes to shop's
/// Ingress although an Ingress in `attacker` claims it too and would win without the flag (the
/// oldest claim, then namespace/name); the attacker's Ingress gets an Event naming it. The
/// ownership TXT names neither namespace nor Ingress, and `weir explain` maps its id back.
#[test]
fn a_host_is_claimed_only_from_the_namespaces_its_domain_allows() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start_background(Options::default());
    for (ns, ip) in [("attacker", "192.0.2.66"), ("shop", "192.0.2.10")] {
        seed(&server, mk_service(ns, "web").port(80).json());
        seed(&server, mk_slice(ns, "web").endpoint("10.0.0.1", EndpointState::Ready).json());
        seed(&server, mk_ingress(ns, "storefront").rule("shop.example.com", "web", 80).load_balancer(ip).json());
    }
    let id = identity(&server, json!({}));
    let fence = ["--host-namespaces", "example.com=shop"];
    let c = controller("controller", &server, &id, dir.path(), &fence);
    c.wait_record_weight("shop.example.com", CLUSTER, Some(100.0), T);
    let answer = wait_for("an A answer", T, || query_a(c.dns_addr(), "shop.example.com").filter(|a| !a.is_empty()));
    assert_eq!(answer, vec![Ipv4Addr::new(192, 0, 2, 10)], "shop's load balancer, not the attacker's");

    let events = server.store().type_of(&json!({"apiVersion": "events.k8s.io/v1", "kind": "Event"})).unwrap();
    let refused = wait_for("a HostNamespaceNotAllowed Event in attacker", T, || {
        let (items, _) = server.store().list(&events, Some("attacker"), &Selector::default());
        items.into_iter().find(|e| e["reason"] == "HostNamespaceNotAllowed")
    });
    assert_eq!(refused["regarding"]["kind"], "Ingress");
    assert_eq!(refused["regarding"]["name"], "storefront");
    let note = refused["note"].as_str().unwrap();
    assert!(note.contains("shop.example.com") && note.contains("example.com=shop"), "{note}");
    let (shop_events, _) = server.store().list(&events, Some("shop"), &Selector::default());
    assert!(shop_events.iter().all(|e| e["reason"] != "HostNamespaceNotAllowed"), "{shop_events:?}");
    assert!(c.metric("weir_invalid_input_total", &[("kind", "namespace")]).is_some_and(|v| v >= 1.0));

    // The ownership TXT, read over DNS: this cluster's mark and an opaque id, no namespace or name.
    let txt = c.dns().query("_weir.shop.example.com.", RecordType::TXT).unwrap();
    assert_eq!(txt.len(), 1, "{txt:?}");
    let id_value = txt[0].strip_prefix("heritage=weir,weir/owner=eu,weir/id=").unwrap_or_else(|| panic!("{txt:?}"));
    assert!(!txt[0].contains("shop/") && !txt[0].contains("storefront") && !txt[0].contains("ingress"), "{txt:?}");

    // `weir explain` (same cluster, flags and zone) maps the id back to shop's Ingress and shows the
    // refused claim.
    let (ok, out, err) = WeirCmd::new("explain")
        .args(["shop.example.com", "--cluster-name", CLUSTER])
        .kubernetes(&server, dir.path(), &id.token)
        .args(["--backend-type", "sqlite", "--dns-provider", "embedded", "--db"])
        .arg(dir.path().join("weir.db"))
        .args(fence)
        .output();
    assert!(ok, "{err}");
    assert!(out.contains(&format!("owner     eu id {id_value} = Ingress shop/storefront")), "{out}");
    assert!(out.contains("refused   Ingress attacker/storefront [HostNamespaceNotAllowed]"), "{out}");
    assert_nothing_denied(&server, &id);
}

#[test]
fn leader_election_one_writer_and_takeover_after_kill() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start_background(Options::default());
    seed(&server, service("svc"));
    seed(&server, slice("svc", true));
    let ing = ingress("web", &[("a.example.com", "svc")], "192.0.2.10");
    seed(&server, ing.clone());
    let lease = [
        "--enable-leader-election",
        "--leader-election-namespace",
        RELEASE_NAMESPACE,
        "--lease-duration",
        "3s",
        "--renew-deadline",
        "2s",
        "--retry-period",
        "250ms",
    ];
    let id = identity(&server, json!({}));
    let a = controller("a", &server, &id, dir.path(), &lease);
    let leader_of = |c: &Weir| c.metric("weir_leader", &[]);
    wait_for("a leads", T, || (leader_of(&a) == Some(1.0)).then_some(()));
    a.wait_record_weight("a.example.com", CLUSTER, Some(100.0), T);
    let mut b = controller("b", &server, &id, dir.path(), &lease);
    // b is up and ready (caches warm) but does not write.
    wait_for("b ready as a standby", T, || b.get("/readyz"));
    assert_eq!(leader_of(&b), Some(0.0));
    // One Kubernetes client per process: the provider, the elector, the infra manager and the Events
    // sink share its connection pool (each logs when it builds one).
    for c in [&a, &b] {
        let log = c.proc.log();
        assert_eq!(log.matches("Kubernetes client built").count(), 1, "{log}");
    }

    merge(&server, &ing, "web", json!({"metadata": {"annotations": {"dns.adevinta.com/traffic-weight": "30"}}}));
    a.wait_record_weight("a.example.com", CLUSTER, Some(30.0), T);
    assert_eq!(b.record_weight("a.example.com", CLUSTER), None, "the standby must not write");

    // SIGKILL the leader: no release, so b takes over once the 3 s lease expires.
    let mut a = a;
    a.proc.kill();
    let started = std::time::Instant::now();
    wait_for("b takes over", Duration::from_secs(10), || (leader_of(&b) == Some(1.0)).then_some(()));
    let took = started.elapsed();
    assert!(took <= Duration::from_secs(3) + Duration::from_secs(2), "takeover took {took:?}");
    // b now writes: a change lands through it.
    merge(&server, &ing, "web", json!({"metadata": {"annotations": {"dns.adevinta.com/traffic-weight": "60"}}}));
    b.wait_record_weight("a.example.com", CLUSTER, Some(60.0), T);
    let answer = wait_for("DNS still answers", T, || query_a(b.dns_addr(), "a.example.com").filter(|a| !a.is_empty()));
    assert_eq!(answer, vec![Ipv4Addr::new(192, 0, 2, 10)]);

    // A clean shutdown releases the lease.
    b.proc.terminate(Duration::from_secs(10)).expect("b exits on SIGTERM");
    let rt = server.store().type_of(&json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease"})).unwrap();
    let lease = server.store().get(&rt, RELEASE_NAMESPACE, "weir-controller").unwrap();
    assert!(lease["spec"]["holderIdentity"].is_null(), "released: {lease}");
    assert_nothing_denied(&server, &id);
}

#[test]
fn dnsendpoint_mode_writes_external_dns_objects() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start_background(Options::default());
    seed(&server, service("svc"));
    seed(&server, slice("svc", true));
    let ing = ingress("web", &[("a.example.com", "svc"), ("b.example.com", "svc")], "192.0.2.10");
    let uid = server.store().create_object(ing.clone()).unwrap()["metadata"]["uid"].clone();
    let id = identity(&server, json!({"controller": {"dnsProvider": "dnsendpoint"}}));
    let _weir = WeirCmd::controller(CLUSTER)
        .kubernetes(&server, dir.path(), &id.token)
        .sqlite(&dir.path().join("weir.db"))
        .args(["--dns-provider", "dnsendpoint", "--allow-all-zero"])
        .metrics()
        .spawn("weir", dir.path());

    let rt =
        server.store().type_of(&json!({"apiVersion": "externaldns.k8s.io/v1alpha1", "kind": "DNSEndpoint"})).unwrap();
    let endpoint = |want: &dyn Fn(&Value) -> bool| {
        wait_for("the DNSEndpoint", T, || server.store().get(&rt, "default", "web").ok().filter(|o| want(o)))
    };
    let weights = |o: &Value| -> Vec<(String, String)> {
        o["spec"]["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["dnsName"].as_str().unwrap().to_string(),
                    e["providerSpecific"][0]["value"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let first = endpoint(&|o| weights(o).len() == 2);
    assert_eq!(weights(&first), vec![("a.example.com".into(), "100".into()), ("b.example.com".into(), "100".into())]);
    assert_eq!(first["metadata"]["ownerReferences"][0]["uid"], uid, "owned by the Ingress");
    assert_eq!(first["spec"]["endpoints"][0]["setIdentifier"], CLUSTER);
    assert_eq!(first["spec"]["endpoints"][0]["targets"][0], "192.0.2.10");

    merge(&server, &ing, "web", json!({"metadata": {"annotations": {"dns.adevinta.com/traffic-weight": "40"}}}));
    endpoint(&|o| weights(o).iter().all(|(_, w)| w == "40"));

    // Deleting the Ingress removes the object (weir deletes it; no garbage collector runs here).
    let ing_rt = server.store().type_of(&ing).unwrap();
    server.store().delete(&ing_rt, "default", "web").unwrap();
    wait_for("the DNSEndpoint deleted", T, || server.store().get(&rt, "default", "web").is_err().then_some(()));
    assert_nothing_denied(&server, &id);
}

#[test]
fn rbac_revoked_at_run_time_is_logged_counted_unready_and_keeps_records() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start_background(Options::default());
    seed(&server, service("svc"));
    seed(&server, slice("svc", true));
    seed(&server, ingress("web", &[("a.example.com", "svc")], "192.0.2.10"));
    let id = identity(&server, json!({}));
    let mut c = controller("controller", &server, &id, dir.path(), &["--allow-all-zero"]);
    c.wait_record_weight("a.example.com", CLUSTER, Some(100.0), T);
    wait_for("readiness", T, || c.get("/readyz"));
    let denied_count = |c: &Weir| c.metric("weir_kube_watch_errors_total", &[("kind", "Ingress"), ("code", "403")]);
    assert_eq!(denied_count(&c), None);

    // Someone removes the controller's ClusterRoleBinding; the running watches end and restart.
    let crb = server.store().find_type("rbac.authorization.k8s.io", "v1", "clusterrolebindings").unwrap();
    server.store().delete(&crb, "", "weir").unwrap();
    server.close_watches();
    wait_for("the 403 counted", T, || denied_count(&c).filter(|v| *v >= 1.0));
    wait_for("not ready", T, || c.get("/readyz").is_none().then_some(()));
    let log = c.proc.log();
    assert!(
        log.contains("Kubernetes denied list/watch of ingresses (group \"networking.k8s.io\") at the cluster scope"),
        "{log}"
    );
    // What was published stays: the record and the DNS answer.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(c.record_weight("a.example.com", CLUSTER), Some(100.0));
    let answer = wait_for("DNS still answers", T, || query_a(c.dns_addr(), "a.example.com").filter(|a| !a.is_empty()));
    assert_eq!(answer, vec![Ipv4Addr::new(192, 0, 2, 10)]);

    // Granted again: ready again.
    let rendered = id.rendered.objects["ClusterRoleBinding/weir"].clone();
    server.store().create_object(rendered).unwrap();
    // A resumed watch that works yields nothing until a change; the denial expires after 45 s at
    // most (the watcher retries within 30 s and a retry still denied would renew it).
    wait_for("ready again", Duration::from_secs(90), || c.get("/readyz"));
    c.proc.terminate(Duration::from_secs(10));
}
