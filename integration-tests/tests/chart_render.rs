//! The Helm chart rendered by Helm's own engine (PyPI `helm-python-sdk`, in the test venv) with the
//! default and the all-features values; every rendered object must parse as the Kubernetes type it
//! claims to be, with no field the type does not know (a typo would be dropped silently by the API
//! server's decoder, or rejected by a strict one).

use std::collections::BTreeMap;
use std::process::Command;

use integration_tests::chart::{render, Rendered};
use integration_tests::{run, workspace_root};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Every field of `original` must survive a round trip through the typed value `parsed`.
fn unknown_fields(original: &Value, parsed: &Value, path: &str, out: &mut Vec<String>) {
    match (original, parsed) {
        (Value::Object(o), Value::Object(p)) => {
            for (k, v) in o {
                if v.is_null() {
                    continue;
                }
                match p.get(k) {
                    Some(pv) => unknown_fields(v, pv, &format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k}")),
                }
            }
        }
        (Value::Array(o), Value::Array(p)) if o.len() == p.len() => {
            for (i, (ov, pv)) in o.iter().zip(p).enumerate() {
                unknown_fields(ov, pv, &format!("{path}[{i}]"), out);
            }
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: {a} became {b}")),
    }
}

fn typed<T: DeserializeOwned + Serialize>(v: &Value) -> Result<T, String> {
    let t: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&t).unwrap();
    let mut problems = Vec::new();
    unknown_fields(v, &back, "", &mut problems);
    if problems.is_empty() {
        Ok(t)
    } else {
        Err(format!("fields the type does not know or changed: {problems:?}"))
    }
}

// The Prometheus operator's types are not in k8s-openapi: the fields the chart uses, strictly.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Monitoring<S> {
    api_version: String,
    kind: String,
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: S,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitorSpec {
    selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    namespace_selector: NamespaceSelector,
    endpoints: Vec<Endpoint>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NamespaceSelector {
    match_names: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Endpoint {
    port: String,
    path: String,
    interval: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    groups: Vec<RuleGroup>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    alert: String,
    expr: String,
    #[serde(rename = "for", default, skip_serializing_if = "String::is_empty")]
    for_: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

/// Parses every object as its claimed type; returns the kinds seen.
fn check_types(r: &Rendered) -> Vec<String> {
    let mut errors = Vec::new();
    for (key, v) in r.objects.iter().map(|(k, v)| (k.clone(), v)).chain(r.crds.iter().map(|v| ("crd".to_string(), v))) {
        let api_version = v["apiVersion"].as_str().unwrap_or_default();
        let kind = v["kind"].as_str().unwrap_or_default();
        let result = match (api_version, kind) {
            ("apps/v1", "Deployment") => typed::<Deployment>(v).map(drop),
            ("v1", "ServiceAccount") => typed::<ServiceAccount>(v).map(drop),
            ("v1", "Service") => typed::<Service>(v).map(drop),
            ("v1", "ConfigMap") => typed::<ConfigMap>(v).map(drop),
            ("policy/v1", "PodDisruptionBudget") => typed::<PodDisruptionBudget>(v).map(drop),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => typed::<ClusterRole>(v).map(drop),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => typed::<ClusterRoleBinding>(v).map(drop),
            ("rbac.authorization.k8s.io/v1", "Role") => typed::<Role>(v).map(drop),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => typed::<RoleBinding>(v).map(drop),
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => typed::<CustomResourceDefinition>(v).map(drop),
            ("monitoring.coreos.com/v1", "ServiceMonitor") => typed::<Monitoring<ServiceMonitorSpec>>(v).map(drop),
            ("monitoring.coreos.com/v1", "PrometheusRule") => typed::<Monitoring<RuleSpec>>(v).map(drop),
            ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration") => {
                typed::<ValidatingWebhookConfiguration>(v).map(drop)
            }
            // No Rust types for cert-manager: the fields the chart relies on.
            ("cert-manager.io/v1", "Certificate") => {
                let ok = v["spec"]["secretName"].is_string() && v["spec"]["issuerRef"]["name"].is_string();
                if ok {
                    Ok(())
                } else {
                    Err(format!("Certificate without secretName or issuerRef.name: {v}"))
                }
            }
            ("cert-manager.io/v1", "Issuer") => {
                if v["spec"].is_object() {
                    Ok(())
                } else {
                    Err(format!("Issuer without spec: {v}"))
                }
            }
            _ => Err(format!("unexpected type {api_version} {kind}")),
        };
        if let Err(e) = result {
            errors.push(format!("{key}: {e}"));
        }
    }
    assert!(errors.is_empty(), "{errors:#?}");
    r.objects.keys().cloned().collect()
}

fn deployment(r: &Rendered) -> Deployment {
    serde_json::from_value(r.objects["Deployment/weir"].clone()).unwrap()
}

fn args(d: &Deployment) -> Vec<String> {
    d.spec.template.spec.as_ref().unwrap().containers[0].args.clone().unwrap()
}

fn rules(r: &Rendered, key: &str) -> Vec<(Vec<String>, Vec<String>, Vec<String>)> {
    let role: ClusterRole = serde_json::from_value(r.objects[key].clone())
        .or_else(|_| {
            serde_json::from_value::<Role>(r.objects[key].clone())
                .map(|r| ClusterRole { rules: r.rules, ..Default::default() })
        })
        .unwrap();
    role.rules
        .unwrap()
        .into_iter()
        .map(|r| (r.api_groups.unwrap_or_default(), r.resources.unwrap_or_default(), r.verbs))
        .collect()
}

#[test]
fn default_values_render_valid_least_privilege_objects() {
    let r = render(None, json!({"controller": {"clusterName": "eu"}})).unwrap();
    let kinds = check_types(&r);
    for want in [
        "Deployment/weir",
        "ServiceAccount/weir",
        "ClusterRole/weir",
        "ClusterRoleBinding/weir",
        "Role/weir-leader-election",
        "RoleBinding/weir-leader-election",
        "Service/weir-metrics",
        "PodDisruptionBudget/weir",
    ] {
        assert!(kinds.iter().any(|k| k == want), "{want} missing from {kinds:?}");
    }
    assert!(!kinds.iter().any(|k| k.starts_with("ServiceMonitor") || k.starts_with("PrometheusRule")));
    assert!(!kinds.iter().any(|k| k.starts_with("ValidatingWebhookConfiguration")), "the webhook is off by default");
    assert_eq!(r.crds.len(), 4, "the three weir.dev CRDs and the l7mp VirtualService ship in crds/");

    let d = deployment(&r);
    let pod = d.spec.template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    assert_eq!(pod.security_context.as_ref().unwrap().run_as_non_root, Some(true));
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert!(c.resources.as_ref().unwrap().requests.is_some());
    let probe_path =
        |p: &Option<k8s_openapi::api::core::v1::Probe>| p.as_ref().unwrap().http_get.as_ref().unwrap().path.clone();
    assert_eq!(probe_path(&c.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(probe_path(&c.readiness_probe).as_deref(), Some("/readyz"));
    let a = args(&d);
    assert_eq!(a[0], "controller");
    for want in [
        "--cluster-name=eu",
        "--enable-leader-election",
        "--leader-election-namespace=weir-system",
        "--metrics-addr=:8080",
    ] {
        assert!(a.iter().any(|x| x == want), "{want} missing from {a:?}");
    }
    assert!(!a.iter().any(|x| x.starts_with("--allow-all-zero") || x.starts_with("--db")), "{a:?}");
    // The binary accepts the rendered arguments.
    let (ok, _, stderr) = run(Command::new(integration_tests::weir_bin()).args(&a).arg("--help"));
    assert!(ok, "weir rejects the chart's arguments: {stderr}");

    // Least privilege: reads of inputs, Events, nothing written but Events; no DNSEndpoints by default.
    let cluster_rules = rules(&r, "ClusterRole/weir");
    for (groups, resources, verbs) in &cluster_rules {
        for v in verbs {
            let write = matches!(v.as_str(), "create" | "update" | "patch" | "delete");
            assert!(
                !write || (groups == &["events.k8s.io"] && resources == &["events"]),
                "{groups:?} {resources:?} {verbs:?}"
            );
        }
        assert!(!resources.iter().any(|r| r == "dnsendpoints" || r == "secrets" || r == "*"));
    }
    let lease_rules = rules(&r, "Role/weir-leader-election");
    assert_eq!(
        lease_rules,
        vec![(
            vec!["coordination.k8s.io".to_string()],
            vec!["leases".to_string()],
            vec!["get".into(), "create".into(), "update".into()]
        )]
    );
    let sa = &r.objects["ServiceAccount/weir"];
    assert!(sa["metadata"]["annotations"].is_null(), "no IRSA annotation unless a role is given");

    // Without a cluster name the chart refuses to render.
    let err = render(None, json!({})).err().expect("rendering without clusterName must fail");
    assert!(err.contains("clusterName is required"), "{err}");
}

#[test]
fn all_features_values_render_valid_objects() {
    let r = render(Some("ci/all-features-values.yaml"), json!({})).unwrap();
    let kinds = check_types(&r);
    for want in ["ServiceMonitor/weir", "PrometheusRule/weir", "ConfigMap/weir-dashboard"] {
        assert!(kinds.iter().any(|k| k == want), "{want} missing from {kinds:?}");
    }
    let sa = &r.objects["ServiceAccount/weir"];
    assert_eq!(sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"], "arn:aws:iam::123456789012:role/weir");
    assert_eq!(r.objects["Role/weir-leader-election"]["metadata"]["namespace"], "weir-system");

    // dnsendpoint mode grants DNSEndpoint CRUD, and status patches are granted when asked for.
    let cluster_rules = rules(&r, "ClusterRole/weir");
    assert!(cluster_rules.iter().any(|(g, res, v)| g == &["externaldns.k8s.io"]
        && res == &["dnsendpoints"]
        && v.contains(&"delete".to_string())));
    assert!(cluster_rules
        .iter()
        .any(|(_, res, v)| res.contains(&"trafficinfras/status".to_string()) && v == &["patch"]));

    let a = args(&deployment(&r));
    for want in [
        "--annotation-filter=team=web",
        "--annotation-filter=tier=frontend",
        "--host-namespaces=shop.example.com=shop,payments",
        "--host-namespaces=example.com=infra",
        "--dns-provider=dnsendpoint",
        "--allow-all-zero",
        "--db=/data/weir.db",
    ] {
        assert!(a.iter().any(|x| x == want), "{want} missing from {a:?}");
    }
    let (ok, _, stderr) = run(Command::new(integration_tests::weir_bin()).args(&a).arg("--help"));
    assert!(ok, "weir rejects the chart's arguments: {stderr}");

    // The webhook: the flags, the certificate mounted where they point, the Service port, and the
    // ValidatingWebhookConfiguration with cert-manager's CA injection.
    for want in ["--webhook-addr=:9443", "--webhook-cert-dir=/etc/weir/webhook"] {
        assert!(a.iter().any(|x| x == want), "{want} missing from {a:?}");
    }
    let d = &r.objects["Deployment/weir"];
    let pod = &d["spec"]["template"]["spec"];
    assert!(pod["volumes"].as_array().unwrap().iter().any(|v| v["secret"]["secretName"] == "weir-webhook-cert"));
    let c = &pod["containers"][0];
    assert!(c["volumeMounts"].as_array().unwrap().iter().any(|m| m["mountPath"] == "/etc/weir/webhook"));
    assert!(c["ports"].as_array().unwrap().iter().any(|p| p["name"] == "webhook" && p["containerPort"] == 9443));
    assert_eq!(r.objects["Service/weir-webhook"]["spec"]["ports"][0]["targetPort"], "webhook");
    let vwc = r.objects.iter().find(|(k, _)| k.starts_with("ValidatingWebhookConfiguration/")).unwrap().1;
    assert!(vwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        .as_str()
        .unwrap()
        .ends_with("/weir-webhook"));
    let hook = &vwc["webhooks"][0];
    assert_eq!(hook["failurePolicy"], "Fail");
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(hook["clientConfig"]["service"]["path"], "/validate-trafficinfra");
    assert_eq!(hook["rules"][0]["operations"], json!(["CREATE", "UPDATE"]));
    assert_eq!(hook["rules"][0]["resources"], json!(["trafficinfras"]));
    assert_eq!(r.objects["Certificate/weir-webhook"]["spec"]["secretName"], "weir-webhook-cert");
    assert!(r.objects.contains_key("Issuer/weir-webhook-selfsigned"));

    // The drift alert goes by the drift counter (it grows while DesiredWeight is invalid); the
    // alerts' behaviour is tested by `promtool test rules` (rendered_alerts_pass_promtool).
    let rule: Monitoring<RuleSpec> = serde_json::from_value(r.objects["PrometheusRule/weir"].clone()).unwrap();
    let alerts = &rule.spec.groups[0].rules;
    let drift = alerts.iter().find(|a| a.alert == "WeirWeightDrift").unwrap();
    assert!(drift.expr.contains("weir_weight_drift_seconds"), "{}", drift.expr);
    assert_eq!(drift.for_, "15m");

    // The dashboard is valid JSON and charts what it promises.
    let dashboard: Value =
        serde_json::from_str(r.objects["ConfigMap/weir-dashboard"]["data"]["weir.json"].as_str().unwrap()).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_string()))
        .collect();
    for metric in [
        "cluster_traffic_controller_ingress_weight_desired",
        "weir_record_weight",
        "weir_weight_drift_seconds",
        "weir_aws_requests_total",
        "weir_xds_connected_clients",
    ] {
        assert!(exprs.iter().any(|e| e.contains(metric)), "dashboard lacks {metric}");
    }
}

/// The chart's alerts as the chart renders them, run through `promtool test rules` against the cases
/// in integration-tests/promtool/weir_alerts_test.yaml (the rules are never copied there).
#[test]
fn rendered_alerts_pass_promtool() {
    let r = render(Some("ci/all-features-values.yaml"), json!({})).unwrap();
    let rule = &r.objects["PrometheusRule/weir"];
    let dir = tempfile::tempdir().unwrap();
    let rules_yaml = serde_yaml::to_string(&json!({"groups": rule["spec"]["groups"]})).unwrap();
    std::fs::write(dir.path().join("rules.yaml"), rules_yaml).unwrap();
    let cases_path = workspace_root().join("integration-tests/promtool/weir_alerts_test.yaml");
    let cases_text = std::fs::read_to_string(&cases_path).unwrap();
    std::fs::write(dir.path().join("weir_alerts_test.yaml"), &cases_text).unwrap();

    // Every alert has a case where it fires and one where it does not.
    let cases: Value = serde_yaml::from_str(&cases_text).unwrap();
    let mut fires = std::collections::BTreeSet::new();
    let mut quiet = std::collections::BTreeSet::new();
    for test in cases["tests"].as_array().unwrap() {
        for check in test["alert_rule_test"].as_array().unwrap() {
            let name = check["alertname"].as_str().unwrap().to_string();
            if check["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()) {
                fires.insert(name);
            } else {
                quiet.insert(name);
            }
        }
    }
    for alert in rule["spec"]["groups"][0]["rules"].as_array().unwrap() {
        let name = alert["alert"].as_str().unwrap();
        assert!(fires.contains(name), "no promtool case fires {name}");
        assert!(quiet.contains(name), "no promtool case where {name} stays quiet");
    }

    let promtool = which_promtool().expect(
        "promtool is not on PATH: install Debian's prometheus package (apt-get install prometheus); .ci/run does",
    );
    let (ok, stdout, stderr) =
        run(Command::new(promtool).current_dir(dir.path()).args(["test", "rules", "weir_alerts_test.yaml"]));
    assert!(ok, "promtool test rules failed:\n{stdout}\n{stderr}");
}

fn which_promtool() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join("promtool"))
        .find(|p| p.is_file())
}

/// Metric names a PromQL expression reads (not functions, keywords, labels or Grafana variables).
fn promql_metric_names(expr: &str) -> Vec<String> {
    // Strip what holds no metric name: strings, label matchers, ranges, grouping label lists.
    let mut text = String::new();
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        let close = match c {
            '"' => '"',
            '{' => '}',
            '[' => ']',
            _ => {
                text.push(c);
                continue;
            }
        };
        for d in chars.by_ref() {
            if d == close {
                break;
            }
        }
        text.push(' ');
    }
    let grouping = regex_lite::Regex::new(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)").unwrap();
    let text = grouping.replace_all(&text, " ");
    let ident = regex_lite::Regex::new(r"\$?[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?").unwrap();
    const KEYWORDS: [&str; 5] = ["and", "or", "unless", "offset", "bool"];
    ident
        .find_iter(&text)
        .map(|m| m.as_str())
        .filter(|t| !t.starts_with('$') && !t.ends_with('(') && !KEYWORDS.contains(t))
        .filter(|t| !t.chars().next().unwrap().is_ascii_digit())
        .map(str::to_string)
        .collect()
}

/// Every metric name the rules and the dashboard query is one that weir exports: names taken from a
/// running `weir local` (DNS and xDS halves), with the suffixes Prometheus adds (`_total` for
/// counters; `_bucket`, `_sum`, `_count` for histograms), plus Prometheus's own `up`.
#[test]
fn alerts_and_dashboard_use_only_exported_metric_names() {
    let tmp = tempfile::tempdir().unwrap();
    let (metrics_port, admin_port) = (integration_tests::free_port(), integration_tests::free_port());
    let mut cmd = Command::new(integration_tests::weir_bin());
    cmd.arg("local")
        .arg("--manifests")
        .arg(workspace_root().join("examples/local"))
        .arg("--db")
        .arg(tmp.path().join("weir.db"))
        .args(["--cluster-name", "eu", "--initial-weight", "100"])
        .args(["--dns-listen", &format!("127.0.0.1:{}", integration_tests::free_udp_tcp_port())])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(["--xds-name", "shop", "--xds-namespace", "shop"])
        .args(["--grpc-addr", &format!("127.0.0.1:{}", integration_tests::free_port())])
        .args(["--admin-addr", &format!("127.0.0.1:{admin_port}")]);
    let _weir = integration_tests::Proc::spawn("weir-local-metrics", &mut cmd, tmp.path());
    // A family without samples is not exposed: a running ramp gives weir_ramp_target_weight one.
    integration_tests::wait_for("/metrics", std::time::Duration::from_secs(30), || {
        integration_tests::http_get(&format!("http://127.0.0.1:{metrics_port}/metrics"))
    });
    let db = tmp.path().join("weir.db");
    let ramp = ["ramp", "--cluster-name", "eu", "--to", "40", "--step", "20", "--every", "1h"];
    let (ok, _, err) = integration_tests::weights(&db, &ramp);
    assert!(ok, "{err}");
    let mut exported = std::collections::BTreeSet::from(["up".to_string()]);
    for port in [metrics_port, admin_port] {
        let body = integration_tests::wait_for("/metrics", std::time::Duration::from_secs(30), || {
            integration_tests::http_get(&format!("http://127.0.0.1:{port}/metrics"))
                .filter(|b| port != metrics_port || b.contains("weir_ramp_target_weight{"))
        });
        for line in body.lines() {
            let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
            let (name, kind) = rest.split_once(' ').unwrap();
            match kind {
                "counter" => exported.insert(format!("{name}_total")),
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        exported.insert(format!("{name}{suffix}"));
                    }
                    true
                }
                _ => exported.insert(name.to_string()),
            };
        }
    }
    assert!(exported.contains("weir_ramp_aborted_total") && exported.contains("weir_leader"), "{exported:?}");
    assert!(exported.contains("weir_xds_nacks_total"), "{exported:?}");
    // What `weir local` cannot export, each with where a test reads it.
    let not_in_local = [
        // No AWS call in local mode; aws_route53.rs reads it from a controller on moto.
        "weir_aws_requests_total",
    ];
    for name in not_in_local {
        assert!(!exported.contains(name), "{name} is exported by weir local now: drop it from not_in_local");
        exported.insert(name.to_string());
    }

    let r = render(Some("ci/all-features-values.yaml"), json!({})).unwrap();
    let mut queries: Vec<(String, String)> = Vec::new();
    for alert in r.objects["PrometheusRule/weir"]["spec"]["groups"][0]["rules"].as_array().unwrap() {
        queries.push((format!("alert {}", alert["alert"]), alert["expr"].as_str().unwrap().to_string()));
    }
    let dashboard: Value =
        serde_json::from_str(r.objects["ConfigMap/weir-dashboard"]["data"]["weir.json"].as_str().unwrap()).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            queries.push((format!("panel {}", panel["title"]), t["expr"].as_str().unwrap().to_string()));
        }
    }
    for a in dashboard["annotations"]["list"].as_array().unwrap() {
        queries.push((format!("annotation {}", a["name"]), a["expr"].as_str().unwrap().to_string()));
    }
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"].as_str().and_then(|q| q.strip_prefix("label_values(")) {
            queries.push((format!("variable {}", v["name"]), q.split(',').next().unwrap().to_string()));
        }
    }
    assert!(queries.len() > 20, "{queries:?}");
    let mut unknown = Vec::new();
    for (what, expr) in &queries {
        let names = promql_metric_names(expr);
        assert!(!names.is_empty() || expr.contains("vector("), "{what}: no metric found in {expr:?}");
        for name in names.into_iter().filter(|n| !exported.contains(n)) {
            unknown.push(format!("{what}: {name} in {expr:?}"));
        }
    }
    assert!(unknown.is_empty(), "metric names weir does not export:\n{}", unknown.join("\n"));
}

#[test]
fn promql_metric_names_skip_functions_labels_and_variables() {
    assert_eq!(
        promql_metric_names(
            r#"sum by (namespace, kind) (increase(weir_invalid_input_total{kind=~"a|b"}[15m])) > 0 and on (x) up"#
        ),
        vec!["weir_invalid_input_total", "up"]
    );
    assert_eq!(promql_metric_names(r#"absent(up{job="weir-metrics"} == 1)"#), vec!["up"]);
    assert_eq!(
        promql_metric_names(r#"max by (cluster) (weir_ramp_active{cluster=~"$cluster"})"#),
        vec!["weir_ramp_active"]
    );
}
