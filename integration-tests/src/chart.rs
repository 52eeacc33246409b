//! The Helm chart rendered by Helm's own engine (PyPI `helm-python-sdk`, in the test venv, through
//! `render_chart.py`; release `weir` in namespace `weir-system`), and the chart's identity installed
//! into the test API server: what an end-to-end test runs the controller with.

use std::collections::BTreeMap;
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

use crate::apiserver::ApiServer;
use crate::{run, venv_bin, workspace_root};

/// The namespace the chart is rendered into.
pub const RELEASE_NAMESPACE: &str = "weir-system";

/// Rendered objects by `Kind/name`, and the CRDs.
pub struct Rendered {
    pub objects: BTreeMap<String, Value>,
    pub crds: Vec<Value>,
}

/// Renders the chart with `values_file` (relative to the chart) and `set` merged over it; fails on
/// a render error and asserts that `helm lint --strict` is clean.
pub fn render(values_file: Option<&str>, set: Value) -> Result<Rendered, String> {
    let root = workspace_root();
    let values = values_file.map(|f| root.join("charts/weir").join(f).display().to_string()).unwrap_or_default();
    let (ok, stdout, stderr) = run(Command::new(venv_bin("python"))
        .arg(root.join("integration-tests/render_chart.py"))
        .arg(root.join("charts/weir"))
        .arg(values)
        .arg(set.to_string()));
    if !ok {
        return Err(stderr);
    }
    let out: Value = serde_json::from_str(&stdout).expect("renderer output is JSON");
    let lint_problems: Vec<&Value> =
        out["lint"]["messages"].as_array().unwrap().iter().filter(|m| m["severity"].as_i64() >= Some(2)).collect();
    assert!(lint_problems.is_empty(), "helm lint: {lint_problems:#?}");
    assert!(out["lint"]["errors"].as_array().unwrap().is_empty(), "helm lint: {}", out["lint"]);

    let mut objects = BTreeMap::new();
    for (template, text) in out["manifests"].as_object().unwrap() {
        if template.ends_with("NOTES.txt") {
            continue;
        }
        for doc in serde_yaml::Deserializer::from_str(text.as_str().unwrap()) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{template}: not YAML: {e}"));
            if v.is_null() {
                continue;
            }
            let key = format!("{}/{}", v["kind"].as_str().unwrap(), v["metadata"]["name"].as_str().unwrap());
            assert!(objects.insert(key.clone(), v).is_none(), "{key} rendered twice");
        }
    }
    let crds = out["crds"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| {
            serde_yaml::Deserializer::from_str(c["data"].as_str().unwrap())
                .map(|d| Value::deserialize(d).unwrap())
                .filter(|v| !v.is_null())
                .collect::<Vec<_>>()
        })
        .collect();
    Ok(Rendered { objects, crds })
}

impl Rendered {
    /// The objects of one kind.
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects.values().filter(move |o| o["kind"] == kind)
    }

    /// The controller Deployment's container.
    pub fn controller_container(&self) -> &Value {
        let d = self.of_kind("Deployment").next().expect("the chart renders a Deployment");
        &d["spec"]["template"]["spec"]["containers"][0]
    }
}

/// The controller's identity as the chart installs it.
pub struct ChartIdentity {
    pub rendered: Rendered,
    /// `system:serviceaccount:weir-system:NAME`.
    pub user: String,
    pub namespace: String,
    pub service_account: String,
    pub token: String,
}

/// Renders the chart with `set` and creates its ServiceAccount and RBAC objects (ClusterRoles,
/// ClusterRoleBindings, Roles, RoleBindings) in `server`, as `helm install` would, and returns a
/// token of that ServiceAccount.
pub fn install_controller_identity(server: &ApiServer, set: Value) -> ChartIdentity {
    let rendered = render(None, set).expect("the chart renders");
    let rbac: Vec<&Value> = ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]
        .iter()
        .flat_map(|k| rendered.of_kind(k))
        .collect();
    for obj in rbac {
        // Installed once per server; a second install of the same release is a no-op.
        match server.store().create_object(obj.clone()) {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => panic!("creating {obj}: {}", e.message),
        }
    }
    let sa = rendered.of_kind("ServiceAccount").next().expect("the chart renders a ServiceAccount");
    let namespace = sa["metadata"]["namespace"].as_str().unwrap_or(RELEASE_NAMESPACE).to_string();
    let service_account = sa["metadata"]["name"].as_str().unwrap().to_string();
    let token = server.service_account_token(&namespace, &service_account);
    ChartIdentity {
        user: format!("system:serviceaccount:{namespace}:{service_account}"),
        rendered,
        namespace,
        service_account,
        token,
    }
}

/// A kube client acting as the chart's controller ServiceAccount (default values, `clusterName: eu`),
/// for tests that drive weir's library code instead of the binary.
pub fn controller_client(server: &ApiServer) -> kube::Client {
    let id = install_controller_identity(server, serde_json::json!({"controller": {"clusterName": "eu"}}));
    server.client_for(&id.token)
}
