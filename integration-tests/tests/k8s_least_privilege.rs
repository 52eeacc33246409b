//! Least privilege, measured. One end-to-end run under enforced RBAC exercises the chart's
//! controller (chart values `rbac.operator=true`, leader election on) and the `weir xds` the operator
//! deploys (its ServiceAccount, Role and RoleBinding, read back from the API server). Then, for each
//! identity, every permission its RBAC grants (one verb on one group/resource) is compared with the
//! audit of what it did: nothing was denied, and every granted permission was either used or is
//! listed in docs/kubernetes.md ("Least privilege") with the feature that needs it. The test reads
//! that table, so the doc and the RBAC cannot drift: a row for a permission that is not granted, or
//! a granted one with no row, fails too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use integration_tests::apiserver::{ApiServer, AuditRecord, Options, ResourceType, Selector};
use integration_tests::chart::{install_controller_identity, RELEASE_NAMESPACE};
use integration_tests::{free_port, free_udp_tcp_port, http_get, wait_for, weir_bin, workspace_root, Proc};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

/// (verb, group, resource or resource/subresource)
type Permission = (String, String, String);

fn get(server: &ApiServer, group: &str, plural: &str, ns: &str, name: &str) -> Option<Value> {
    let rt = server.store().types().into_iter().find(|t| t.group == group && t.plural == plural)?;
    server.store().get(&rt, ns, name).ok()
}

/// Every permission the rules grant, one verb on one resource (resourceNames are not narrowed here:
/// the table is per verb and resource).
fn granted(rules: &Value) -> BTreeSet<Permission> {
    let mut out = BTreeSet::new();
    for r in rules.as_array().into_iter().flatten() {
        for v in r["verbs"].as_array().into_iter().flatten() {
            for g in r["apiGroups"].as_array().into_iter().flatten() {
                for res in r["resources"].as_array().into_iter().flatten() {
                    out.insert((v.as_str().unwrap().into(), g.as_str().unwrap().into(), res.as_str().unwrap().into()));
                }
            }
        }
    }
    out
}

fn used(audit: &[AuditRecord], user: &str) -> BTreeSet<Permission> {
    audit
        .iter()
        .filter(|r| r.user == user && r.resource_request && r.allowed)
        .map(|r| {
            let res =
                if r.subresource.is_empty() { r.resource.clone() } else { format!("{}/{}", r.resource, r.subresource) };
            (r.verb.clone(), r.api_group.clone(), res)
        })
        .collect()
}

/// The rows of the "Least privilege" table: (identity, permission) → what needs it.
fn doc_table() -> BTreeMap<(String, Permission), String> {
    let doc = std::fs::read_to_string(workspace_root().join("docs/kubernetes.md")).unwrap();
    let section = doc.split("## Least privilege").nth(1).expect("docs/kubernetes.md has a Least privilege section");
    let mut rows = BTreeMap::new();
    for line in section.lines().take_while(|l| !l.starts_with("## ")) {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').map(|c| c.trim().trim_matches('`')).collect();
        if cells.len() != 5 || cells[0] == "identity" || cells[0].starts_with("---") {
            continue;
        }
        let group = if cells[2] == "core" { "" } else { cells[2] };
        let key = (cells[0].to_string(), (cells[1].to_string(), group.to_string(), cells[3].to_string()));
        assert!(rows.insert(key.clone(), cells[4].to_string()).is_none(), "row {key:?} twice");
    }
    rows
}

fn run_operator_made_xds(server: &ApiServer, dir: &Path) -> String {
    let deployment = get(server, "apps", "deployments", "shop", "edge-xds").unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    let sa = pod["serviceAccountName"].as_str().unwrap().to_string();
    let secret = get(server, "", "secrets", "shop", "edge-xds-admin-token").unwrap();
    let token = secret["stringData"]["token"].as_str().unwrap().to_string();
    let token_file = dir.join("token");
    std::fs::write(&token_file, &token).unwrap();
    let admin = free_port();
    let mut cmd = Command::new(weir_bin());
    cmd.env("KUBECONFIG", server.write_kubeconfig_for(dir, &server.service_account_token("shop", &sa)))
        .args(["xds", "--provider", "kubernetes", "--name", "edge", "--namespace", "shop"])
        .args(["--grpc-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .arg("--admin-token-file")
        .arg(&token_file);
    let mut xds = Proc::spawn("edge-xds", &mut cmd, dir);
    let base = format!("http://127.0.0.1:{admin}");
    wait_for("weir xds ready", T, || http_get(&format!("{base}/readyz")));
    let resp = reqwest::blocking::Client::new()
        .post(format!("{base}/traffic?blue=50&green=50"))
        .bearer_auth(&token)
        .timeout(Duration::from_secs(5))
        .send()
        .unwrap();
    assert!(resp.status().is_success());
    // The status patch (trafficinfras/status) follows the change asynchronously: wait for it, so
    // that the permission is used before weir xds stops.
    wait_for("the TrafficInfra's status to show the new weights", T, || {
        let ti = get(server, "weir.dev", "trafficinfras", "shop", "edge")?;
        (ti["status"]["trafficWeights"]["blue"] == 50).then_some(())
    });
    xds.terminate(Duration::from_secs(10));
    format!("system:serviceaccount:shop:{sa}")
}

fn route(kind: &str, version: &str) -> Value {
    let parent = json!({"name": "edge"});
    json!({"apiVersion": format!("gateway.networking.k8s.io/{version}"), "kind": kind,
           "metadata": {"name": kind.to_ascii_lowercase(), "namespace": "default"},
           "spec": {"parentRefs": [parent], "hostnames": [format!("{}.example.com", kind.to_ascii_lowercase()), "bad_host!"],
                    "rules": [{"backendRefs": [{"name": "svc", "port": 80}]}]},
           "status": {"parents": [{"parentRef": parent, "conditions": [{"type": "Accepted", "status": "True"}]}]}})
}

#[test]
fn every_granted_permission_is_used_or_documented() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start_background(Options::default());
    for crd in ResourceType::gateway_api_crds() {
        server.store().create_object(crd).unwrap();
    }
    let id =
        install_controller_identity(&server, json!({"controller": {"clusterName": "eu"}, "rbac": {"operator": true}}));
    for obj in [
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc", "namespace": "default"}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "svc-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "svc"}},
               "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true}}]}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "web", "namespace": "default",
               "annotations": {"dns.adevinta.com/traffic-weight": "abc"}},
               "spec": {"rules": [{"host": "a.example.com", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                        "backend": {"service": {"name": "svc", "port": {"number": 80}}}}]}}]},
               "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}}),
        // The Gateway API sources: a Gateway with a bad weight annotation and a route of each kind
        // with a host that is not a DNS name, so that an Event is recorded on each (reading its uid).
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "edge", "namespace": "default", "annotations": {"dns.adevinta.com/traffic-weight": "abc"}},
               "spec": {"listeners": [{"name": "http", "protocol": "HTTP", "port": 80}, {"name": "tls", "protocol": "TLS", "port": 443}]},
               "status": {"addresses": [{"value": "192.0.2.2"}]}}),
        route("HTTPRoute", "v1"),
        route("GRPCRoute", "v1"),
        route("TLSRoute", "v1alpha2"),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb", "namespace": "default",
               "annotations": {"dns.adevinta.com/hostname": "lb.example.com"}}, "spec": {"type": "ClusterIP"}}),
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "NamespaceConfig", "metadata": {"name": "default", "namespace": "shop"}, "spec": {}}),
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "TrafficInfra", "metadata": {"name": "edge", "namespace": "shop"}}),
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "BackendTrafficPolicy", "metadata": {"name": "p", "namespace": "shop"},
               "spec": {"targetRef": {"kind": "TrafficInfra", "group": "weir.dev", "name": "edge"}, "timeouts": {"connectTimeout": "2s"}}}),
    ] {
        server.store().create_object(obj).unwrap();
    }
    let mut cmd = Command::new(weir_bin());
    cmd.env("KUBECONFIG", server.write_kubeconfig_for(dir.path(), &id.token))
        .env("POD_NAME", "weir-0")
        .args(["controller", "--provider", "kubernetes", "--cluster-name", "eu"])
        .args(["--backend-type", "sqlite", "--initial-weight", "100", "--weight-poll-interval", "200ms"])
        .arg("--db")
        .arg(dir.path().join("weir.db"))
        .args(["--dns-provider", "embedded", "--dns-listen", &format!("127.0.0.1:{}", free_udp_tcp_port())])
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .args([
            "--enable-leader-election",
            "--leader-election-namespace",
            RELEASE_NAMESPACE,
            "--resync-interval",
            "1s",
        ]);
    let mut controller = Proc::spawn("weir-controller", &mut cmd, dir.path());
    wait_for("the TrafficInfra deploying", T, || {
        let t = get(&server, "weir.dev", "trafficinfras", "shop", "edge")?;
        (t["status"]["phase"] == "Deploying").then_some(())
    });
    wait_for("the policy accepted", T, || {
        let p = get(&server, "weir.dev", "backendtrafficpolicies", "shop", "p")?;
        p["status"]["conditions"].get(0).map(|_| ())
    });
    let events = server.store().type_of(&json!({"apiVersion": "events.k8s.io/v1", "kind": "Event"})).unwrap();
    for kind in ["Gateway", "HTTPRoute", "GRPCRoute", "TLSRoute", "Service"] {
        wait_for(&format!("an Event on the {kind} with its uid"), T, || {
            let (items, _) = server.store().list(&events, Some("default"), &Selector::default());
            items.into_iter().find(|e| e["regarding"]["kind"] == kind && e["regarding"]["uid"].is_string())
        });
    }
    let xds_user = run_operator_made_xds(&server, dir.path());
    controller.terminate(Duration::from_secs(10));

    let audit = server.audit();
    let controller_grants = {
        let mut g = BTreeSet::new();
        for key in ["ClusterRole/weir", "Role/weir-leader-election"] {
            g.extend(granted(&id.rendered.objects[key]["rules"]));
        }
        g
    };
    let xds_grants =
        granted(&get(&server, "rbac.authorization.k8s.io", "roles", "shop", "edge-xds-role").unwrap()["rules"]);
    let table = doc_table();
    let mut problems = Vec::new();
    let mut documented = BTreeSet::new();
    for (identity, user, grants) in [("controller", &id.user, &controller_grants), ("xds", &xds_user, &xds_grants)] {
        let denied: Vec<_> = audit.iter().filter(|r| &r.user == user && !r.allowed).collect();
        assert!(denied.is_empty(), "denied to {user}: {denied:#?}");
        let used = used(&audit, user);
        for p in grants {
            let row = table.get(&(identity.to_string(), p.clone()));
            documented.insert((identity.to_string(), p.clone()));
            match (used.contains(p), row.map(String::as_str)) {
                (_, None) => problems.push(format!("{identity} {p:?}: granted, no row in docs/kubernetes.md")),
                (true, Some(_)) => {}
                (false, Some("e2e")) => problems.push(format!("{identity} {p:?}: the doc says e2e, not used")),
                (false, Some(_)) => {}
            }
        }
        for p in &used {
            assert!(grants.contains(p), "{identity} used {p:?} that its rules do not list (a wildcard?)");
        }
    }
    for key in table.keys() {
        if !documented.contains(key) {
            problems.push(format!("{key:?}: in docs/kubernetes.md, not granted"));
        }
    }
    // The table as it should be, to paste when a permission changes.
    let mut rows = String::new();
    for (identity, user, grants) in [("controller", &id.user, &controller_grants), ("xds", &xds_user, &xds_grants)] {
        let used = used(&audit, user);
        for p in grants {
            let why = if used.contains(p) {
                "e2e".to_string()
            } else {
                table.get(&(identity.into(), p.clone())).cloned().unwrap_or("?".into())
            };
            let group = if p.1.is_empty() { "core" } else { &p.1 };
            rows.push_str(&format!("| {identity} | {} | {group} | {} | {why} |\n", p.0, p.2));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}\nthe table:\n{rows}");
}
