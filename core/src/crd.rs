//! weir's custom resources (group `weir.dev`, version `v1alpha1`). `weir crd` prints their YAML.
//!
//! Defaults are those users of the earlier TrafficInfra know; they are both serde defaults (so a
//! manifest read by the file provider gets them) and OpenAPI defaults (so the API server fills them).
//! Validation lives in the OpenAPI schema (ranges, enums, patterns) for the API server, and again in
//! the pure code that reads these objects (`operator::policy`), because the file provider has no API
//! server in front of it. Free-form values that have an enum in the schema (service type, LB type,
//! health-check type) stay `String`s in Rust so that a bad one is refused with a message naming the
//! object instead of failing the whole manifest.
//!
//! The schema must stay structural (every node typed, no `$ref`, no untyped `anyOf`): the test
//! `schema_is_structural` walks it.
//!
//! One file per kind (`crd/traffic_infra.rs`, `namespace_config.rs`, `backend_traffic_policy.rs`,
//! `virtual_service.rs`), each re-exported here; this file keeps what they share and the list
//! `weir crd` prints.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

mod backend_traffic_policy;
pub use backend_traffic_policy::*;
mod namespace_config;
pub use namespace_config::*;
mod traffic_infra;
pub use traffic_infra::*;
mod virtual_service;
pub use virtual_service::*;

pub const GROUP: &str = "weir.dev";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "weir.dev/v1alpha1";

/// A duration as Gateway API writes them: one to four `<number><unit>` groups, units h, m, s, ms
/// (`250ms`, `2s`, `1m30s`). [`crate::duration::parse_duration`] accepts exactly this.
pub const DURATION_PATTERN: &str = "^([0-9]{1,5}(h|m|s|ms)){1,4}$";
/// A Kubernetes resource quantity (`200m`, `256Mi`, `1.5`).
pub const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// The CRDs, in the order `weir crd` prints them: weir's three, then the l7mp VirtualService.
pub fn crds() -> Vec<CustomResourceDefinition> {
    use kube_core::CustomResourceExt;
    vec![TrafficInfra::crd(), NamespaceConfig::crd(), BackendTrafficPolicy::crd(), VirtualService::crd()]
}

/// All CRDs as one multi-document YAML, as `weir crd` prints it and the chart ships it.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn names_are_the_published_interface() {
        let crds = crds();
        let names: Vec<_> = crds.iter().map(|c| c.metadata.name.clone().unwrap()).collect();
        assert_eq!(
            names,
            [
                "trafficinfras.weir.dev",
                "namespaceconfigs.weir.dev",
                "backendtrafficpolicies.weir.dev",
                "virtualservices.servicemesh.l7mp.io"
            ]
        );
        assert_eq!(crds[0].spec.names.short_names.as_deref(), Some(&["ti".to_string()][..]));
        // `kubectl get ti` shows the weights in force.
        let columns: Vec<(String, String)> = crds[0].spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| (c.name.clone(), c.json_path.clone()))
            .collect();
        for want in [("Blue", ".status.trafficWeights.blue"), ("Green", ".status.trafficWeights.green")] {
            assert!(columns.contains(&(want.0.into(), want.1.into())), "{columns:?}");
        }
        for crd in &crds {
            let (group, version) =
                if crd.spec.names.kind == "VirtualService" { (VS_GROUP, "v1") } else { (GROUP, VERSION) };
            assert_eq!(crd.spec.group, group);
            assert_eq!(crd.spec.versions.len(), 1);
            assert_eq!(crd.spec.versions[0].name, version);
            assert_eq!(crd.spec.scope, "Namespaced");
        }
    }

    /// What the API server checks of a structural schema (and a little more): every node has a
    /// type, no `$ref`, no `anyOf`/`oneOf`/`allOf`/`not`, enums match their type, and every default
    /// validates against its own schema with no unknown fields (defaults are pruned otherwise).
    #[test]
    fn schema_is_structural() {
        for crd in crds() {
            let name = crd.metadata.name.clone().unwrap();
            let schema =
                serde_json::to_value(crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref())
                    .unwrap();
            check_structural(&name, "", &schema);
        }
    }

    fn check_structural(crd: &str, path: &str, s: &Value) {
        let obj = s.as_object().unwrap_or_else(|| panic!("{crd}{path}: schema is not an object"));
        for bad in ["$ref", "anyOf", "oneOf", "allOf", "not", "definitions", "$defs"] {
            assert!(!obj.contains_key(bad), "{crd}{path}: has {bad}");
        }
        let ty = obj.get("type").and_then(Value::as_str);
        let untyped_ok =
            obj.contains_key("x-kubernetes-int-or-string") || obj.contains_key("x-kubernetes-preserve-unknown-fields");
        assert!(ty.is_some() || untyped_ok, "{crd}{path}: no type");
        if let Some(values) = obj.get("enum") {
            for v in values.as_array().unwrap() {
                assert!(type_matches(ty, v), "{crd}{path}: enum value {v} is not a {ty:?}");
            }
        }
        if let Some(props) = obj.get("properties") {
            assert_eq!(ty, Some("object"), "{crd}{path}: properties on a non-object");
            for (k, v) in props.as_object().unwrap() {
                check_structural(crd, &format!("{path}.{k}"), v);
            }
        }
        if let Some(items) = obj.get("items") {
            assert_eq!(ty, Some("array"), "{crd}{path}: items on a non-array");
            check_structural(crd, &format!("{path}[]"), items);
        }
        if let Some(ap) = obj.get("additionalProperties").filter(|v| v.is_object()) {
            assert!(obj.get("properties").is_none(), "{crd}{path}: properties and additionalProperties");
            check_structural(crd, &format!("{path}{{}}"), ap);
        }
        if let Some(default) = obj.get("default") {
            if let Err(e) = validate(default, s) {
                panic!("{crd}{path}: default {default} is invalid: {e}");
            }
        }
    }

    fn type_matches(ty: Option<&str>, v: &Value) -> bool {
        match ty {
            Some("string") => v.is_string(),
            Some("integer") => v.is_i64() || v.is_u64(),
            Some("number") => v.is_number(),
            Some("boolean") => v.is_boolean(),
            Some("object") => v.is_object(),
            Some("array") => v.is_array(),
            _ => true,
        }
    }

    /// A small OpenAPI validator: types, enums, ranges, lengths, patterns, required fields, and no
    /// fields the schema does not know (which the API server would prune).
    pub(super) fn validate(v: &Value, s: &Value) -> Result<(), String> {
        let ty = s.get("type").and_then(Value::as_str);
        if v.is_null() {
            return if s.get("nullable") == Some(&Value::Bool(true)) { Ok(()) } else { Err("null".into()) };
        }
        if !type_matches(ty, v) {
            return Err(format!("{v} is not {ty:?}"));
        }
        if let Some(values) = s.get("enum").and_then(Value::as_array) {
            if !values.contains(v) {
                return Err(format!("{v} not in {values:?}"));
            }
        }
        if let Some(n) = v.as_f64() {
            if s.get("minimum").and_then(Value::as_f64).is_some_and(|m| n < m) {
                return Err(format!("{n} below minimum"));
            }
            if s.get("maximum").and_then(Value::as_f64).is_some_and(|m| n > m) {
                return Err(format!("{n} above maximum"));
            }
        }
        if let Some(text) = v.as_str() {
            if s.get("minLength").and_then(Value::as_u64).is_some_and(|m| (text.len() as u64) < m) {
                return Err(format!("{text:?} too short"));
            }
            if let Some(p) = s.get("pattern").and_then(Value::as_str) {
                if !regex::Regex::new(p).unwrap().is_match(text) {
                    return Err(format!("{text:?} does not match {p}"));
                }
            }
        }
        if let Some(map) = v.as_object() {
            let props = s.get("properties").and_then(Value::as_object);
            for req in s.get("required").and_then(Value::as_array).into_iter().flatten() {
                if !map.contains_key(req.as_str().unwrap()) {
                    return Err(format!("missing required {req}"));
                }
            }
            for (k, item) in map {
                let sub = match (props.and_then(|p| p.get(k)), s.get("additionalProperties")) {
                    (Some(sub), _) => sub,
                    (None, Some(ap)) if ap.is_object() => ap,
                    _ if s.get("x-kubernetes-preserve-unknown-fields").is_some() => continue,
                    _ => return Err(format!("unknown field {k}")),
                };
                validate(item, sub).map_err(|e| format!("{k}: {e}"))?;
            }
        }
        if let (Some(items), Some(sub)) = (v.as_array(), s.get("items")) {
            for item in items {
                validate(item, sub)?;
            }
        }
        Ok(())
    }

    pub(super) fn schema_of(crd_index: usize) -> Value {
        let crd = &crds()[crd_index];
        serde_json::to_value(crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref()).unwrap()
    }

    /// Applies OpenAPI defaults the way the API server does (a default fills an absent field; then
    /// its children are defaulted in turn).
    pub(super) fn apply_defaults(v: &mut Value, s: &Value) {
        let Some(props) = s.get("properties").and_then(Value::as_object) else { return };
        let Some(map) = v.as_object_mut() else { return };
        for (k, sub) in props {
            if !map.contains_key(k) {
                if let Some(d) = sub.get("default") {
                    map.insert(k.clone(), d.clone());
                }
            }
            if let Some(child) = map.get_mut(k) {
                apply_defaults(child, sub);
            }
        }
    }

    #[test]
    fn openapi_rejects_out_of_range_and_unknown_enum_values() {
        let schema = schema_of(0);
        let bad = [
            serde_json::json!({"spec": {"xds": {"ports": {"grpc": 70000}}}}),
            serde_json::json!({"spec": {"envoy": {"service": {"type": "Ingress"}}}}),
            serde_json::json!({"spec": {"envoy": {"hpa": {"targetCPUUtilization": 0}}}}),
            serde_json::json!({"spec": {"envoy": {"resources": {"cpu": "lots"}}}}),
            serde_json::json!({"spec": {"xds": {"image": {"pullPolicy": "Sometimes"}}}}),
            serde_json::json!({"status": {"phase": "Exploded"}}),
        ];
        for obj in bad {
            assert!(validate(&obj, &schema).is_err(), "accepted {obj}");
        }
        let policy = schema_of(2);
        let bad = [
            serde_json::json!({"spec": {"targetRef": {"kind": "Ingress", "name": "x"}}}),
            serde_json::json!({"spec": {"targetRef": {"kind": "Service", "name": "x"}, "loadBalancing": {"type": "random"}}}),
            serde_json::json!({"spec": {"targetRef": {"kind": "Service", "name": "x"}, "timeouts": {"connectTimeout": "2 parsecs"}}}),
            serde_json::json!({"spec": {"targetRef": {"kind": "Service", "name": "x"}, "retryStrategy": {"type": "http", "numRetries": 1000}}}),
            serde_json::json!({"spec": {"targetRef": {"kind": "Service", "name": "x"}, "healthChecking": {"activeChecks": [{"type": "icmp"}]}}}),
            serde_json::json!({"spec": {"targetRef": {"kind": "Service", "name": "x"}, "timeouts": {"connect": "1s"}}}),
            serde_json::json!({"spec": {"targetRef": {"kind": "Service", "name": "x"}, "healthChecking": {"outlierDetection": {"failurePercentage": {"threshold": 101}}}}}),
            serde_json::json!({"spec": {"targetRef": {"kind": "Service", "name": "x"}, "retryStrategy": {"http": {"retryOn": "5xx"}}}}),
            serde_json::json!({"spec": {}}),
        ];
        for obj in bad {
            assert!(validate(&obj, &policy).is_err(), "accepted {obj}");
        }
        let good = serde_json::json!({"spec": {"targetRef": {"kind": "Service", "name": "x"},
            "timeouts": {"connectTimeout": "1m30s"},
            "loadBalancing": {"type": "ringHash", "sessionAffinity": {"type": "header", "header": {"name": "x-user"}}}}});
        validate(&good, &policy).unwrap();
    }

    /// `Default` of every struct with defaulted fields is what serde makes of `{}` (and so what the
    /// OpenAPI defaults say): one value per default, whichever way an object is built.
    #[test]
    fn default_is_what_serde_makes_of_an_empty_object() {
        fn check<T: Default + PartialEq + std::fmt::Debug + serde::de::DeserializeOwned>(name: &str) {
            let parsed: T = serde_json::from_str("{}").unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(parsed, T::default(), "{name}");
        }
        check::<TrafficInfraSpec>("TrafficInfraSpec");
        check::<XdsSpec>("XdsSpec");
        check::<XdsImage>("XdsImage");
        check::<XdsResources>("XdsResources");
        check::<XdsPorts>("XdsPorts");
        check::<EnvoySpec>("EnvoySpec");
        check::<EnvoyImage>("EnvoyImage");
        check::<EnvoyResources>("EnvoyResources");
        check::<EnvoyPorts>("EnvoyPorts");
        check::<HpaSpec>("HpaSpec");
        check::<EnvoyServiceSpec>("EnvoyServiceSpec");
        check::<TrafficDefaults>("TrafficDefaults");
        check::<Dns>("Dns");
        check::<Protocols>("Protocols");
        check::<CircuitBreaker>("CircuitBreaker");
        check::<KeepAliveProbes>("KeepAliveProbes");
        check::<RetryStrategy>("RetryStrategy");
        check::<StaticRetryLimit>("StaticRetryLimit");
        check::<RetryBudget>("RetryBudget");
        check::<ActiveCheck>("ActiveCheck");
        check::<OutlierDetection>("OutlierDetection");
        check::<Consecutive5xx>("Consecutive5xx");
        check::<FailurePercentage>("FailurePercentage");
        check::<VsCluster>("VsCluster");
    }

    /// A policy with every field of the proposal passes the schema the API server enforces.
    #[test]
    fn policy_with_every_field_passes_the_schema() {
        let body: String = crate::operator::policy::EVERY_FIELD.lines().map(|l| format!("  {l}\n")).collect();
        let obj: Value =
            serde_yaml::from_str(&format!("spec:\n  targetRef: {{kind: Service, name: x}}\n{body}")).unwrap();
        validate(&obj, &schema_of(2)).unwrap();
    }
}
