//! Authentication and RBAC authorization as kube-apiserver does them: a bearer token maps to a user
//! and groups; Roles, ClusterRoles, RoleBindings and ClusterRoleBindings stored in the server decide
//! each request; writes of Roles and bindings are refused when they grant more than their author
//! holds (unless the author has `escalate` / `bind`). Denials carry Kubernetes' own messages.
//!
//! Aggregated ClusterRoles (`aggregationRule`) are not evaluated: their stored rules are used as is.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use parking_lot::Mutex;
use serde_json::{json, Value};

use super::selector::Selector;
use super::store::{ApiError, Store};
use super::types::ResourceType;

pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
/// The group that bypasses authorization (as in Kubernetes).
pub const MASTERS: &str = "system:masters";
/// The superuser's name: test set-up only.
pub const SUPERUSER: &str = "weir-test-admin";

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

impl Identity {
    pub fn superuser() -> Self {
        Identity { user: SUPERUSER.into(), groups: vec![MASTERS.into(), "system:authenticated".into()] }
    }

    /// A ServiceAccount's identity, with the groups Kubernetes gives it.
    pub fn service_account(namespace: &str, name: &str) -> Self {
        Identity {
            user: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
        }
    }

    fn is_master(&self) -> bool {
        self.groups.iter().any(|g| g == MASTERS)
    }

    /// Go's `%q` of the groups slice, as RBAC error messages print it.
    fn groups_quoted(&self) -> String {
        let quoted: Vec<String> = self.groups.iter().map(|g| format!("{g:?}")).collect();
        format!("[{}]", quoted.join(" "))
    }
}

/// Bearer tokens the server accepts.
#[derive(Default)]
pub struct Tokens {
    by_token: Mutex<HashMap<String, Identity>>,
    counter: Mutex<u64>,
}

impl Tokens {
    pub fn issue(&self, identity: Identity) -> String {
        let mut n = self.counter.lock();
        *n += 1;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let token = format!("weir-test-token-{:x}-{:x}", *n, nanos & 0xffff_ffff_ffff);
        self.by_token.lock().insert(token.clone(), identity);
        token
    }

    /// Maps a token the test chose to `identity` (fault-injection tests name clients by token).
    pub fn insert(&self, token: &str, identity: Identity) {
        self.by_token.lock().insert(token.to_string(), identity);
    }

    pub fn lookup(&self, token: &str) -> Option<Identity> {
        self.by_token.lock().get(token).cloned()
    }
}

/// What a request asks to do: the attributes the authorizer decides on (Kubernetes'
/// `authorizer.Attributes`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attributes {
    pub verb: String,
    /// True for API objects; false for paths such as `/api`, `/apis`, `/version`.
    pub resource_request: bool,
    pub api_group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// The request path (what non-resource rules match).
    pub path: String,
}

impl Attributes {
    /// `resource` or `resource/subresource`.
    pub fn full_resource(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }
}

/// One request as the audit log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Empty when the request was not authenticated.
    pub user: String,
    pub groups: Vec<String>,
    pub verb: String,
    pub resource_request: bool,
    pub api_group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub path: String,
    pub allowed: bool,
    /// The HTTP status answered (for a watch, the status it started with).
    pub code: u16,
}

/// One RBAC PolicyRule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Rule {
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub verbs: Vec<String>,
    pub resource_names: Vec<String>,
    pub non_resource_urls: Vec<String>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_string)).collect()
}

impl Rule {
    pub fn from_json(v: &Value) -> Rule {
        Rule {
            api_groups: strings(&v["apiGroups"]),
            resources: strings(&v["resources"]),
            verbs: strings(&v["verbs"]),
            resource_names: strings(&v["resourceNames"]),
            non_resource_urls: strings(&v["nonResourceURLs"]),
        }
    }

    fn rules_of(obj: &Value) -> Vec<Rule> {
        obj["rules"].as_array().into_iter().flatten().map(Rule::from_json).collect()
    }

    /// Whether this rule allows the request (rbac/v1 `RuleAllows`).
    pub fn allows(&self, a: &Attributes) -> bool {
        let verb = self.verbs.iter().any(|v| v == "*" || *v == a.verb);
        if !verb {
            return false;
        }
        if !a.resource_request {
            return self.non_resource_urls.iter().any(|u| {
                u == "*" || *u == a.path || (u.ends_with('*') && a.path.starts_with(u.trim_end_matches('*')))
            });
        }
        let group = self.api_groups.iter().any(|g| g == "*" || *g == a.api_group);
        let full = a.full_resource();
        let resource = self
            .resources
            .iter()
            .any(|r| r == "*" || *r == full || (!a.subresource.is_empty() && *r == format!("*/{}", a.subresource)));
        // A rule naming objects never matches a request without a name (list, watch, create).
        let name = self.resource_names.is_empty() || (!a.name.is_empty() && self.resource_names.contains(&a.name));
        group && resource && name
    }

    /// Whether this rule grants everything `want` (one verb, group, resource and at most one name)
    /// grants: Kubernetes' `ruleCovers`, string by string.
    fn covers(&self, want: &Rule) -> bool {
        let all =
            |have: &[String], want: &[String]| have.iter().any(|h| h == "*") || want.iter().all(|w| have.contains(w));
        if !all(&self.verbs, &want.verbs) {
            return false;
        }
        if !want.non_resource_urls.is_empty() {
            return want.non_resource_urls.iter().all(|w| {
                self.non_resource_urls
                    .iter()
                    .any(|h| h == "*" || h == w || (h.ends_with('*') && w.starts_with(h.trim_end_matches('*'))))
            });
        }
        let resources = want.resources.iter().all(|w| {
            self.resources
                .iter()
                .any(|h| h == "*" || h == w || w.split_once('/').is_some_and(|(_, sub)| *h == format!("*/{sub}")))
        });
        let names = self.resource_names.is_empty() || all(&self.resource_names, &want.resource_names);
        all(&self.api_groups, &want.api_groups) && resources && names
    }

    /// The rule split into one rule per verb, group, resource and name (or URL): what `Covers`
    /// checks one by one.
    fn atoms(&self) -> Vec<Rule> {
        let mut out = Vec::new();
        for verb in &self.verbs {
            for url in &self.non_resource_urls {
                out.push(Rule {
                    verbs: vec![verb.clone()],
                    non_resource_urls: vec![url.clone()],
                    ..Default::default()
                });
            }
            for group in &self.api_groups {
                for resource in &self.resources {
                    let names: Vec<Vec<String>> = if self.resource_names.is_empty() {
                        vec![vec![]]
                    } else {
                        self.resource_names.iter().map(|n| vec![n.clone()]).collect()
                    };
                    for names in names {
                        out.push(Rule {
                            api_groups: vec![group.clone()],
                            resources: vec![resource.clone()],
                            verbs: vec![verb.clone()],
                            resource_names: names,
                            ..Default::default()
                        });
                    }
                }
            }
        }
        out
    }

    /// rbac/v1 `CompactString`: `{APIGroups:["apps"], Resources:["deployments"], Verbs:["delete"]}`.
    fn compact_string(&self) -> String {
        let q = |v: &[String]| format!("[{}]", v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(" "));
        let mut parts = Vec::new();
        if !self.api_groups.is_empty() {
            parts.push(format!("APIGroups:{}", q(&self.api_groups)));
        }
        if !self.resources.is_empty() {
            parts.push(format!("Resources:{}", q(&self.resources)));
        }
        if !self.non_resource_urls.is_empty() {
            parts.push(format!("NonResourceURLs:{}", q(&self.non_resource_urls)));
        }
        if !self.resource_names.is_empty() {
            parts.push(format!("ResourceNames:{}", q(&self.resource_names)));
        }
        parts.push(format!("Verbs:{}", q(&self.verbs)));
        format!("{{{}}}", parts.join(", "))
    }
}

/// The RBAC objects at one moment, read from the store before a request is decided.
pub struct Policy {
    roles: BTreeMap<(String, String), Vec<Rule>>,
    cluster_roles: BTreeMap<String, Vec<Rule>>,
    role_bindings: Vec<Value>,
    cluster_role_bindings: Vec<Value>,
}

fn rbac_type(store: &Store, plural: &str) -> Option<ResourceType> {
    store.find_type(RBAC_GROUP, "v1", plural)
}

impl Policy {
    pub fn read(store: &Store) -> Policy {
        let all = |plural: &str| -> Vec<Value> {
            rbac_type(store, plural).map(|rt| store.list(&rt, None, &Selector::default()).0).unwrap_or_default()
        };
        let name_of = |o: &Value| o["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let roles = all("roles")
            .iter()
            .map(|o| {
                ((o["metadata"]["namespace"].as_str().unwrap_or_default().to_string(), name_of(o)), Rule::rules_of(o))
            })
            .collect();
        let cluster_roles = all("clusterroles").iter().map(|o| (name_of(o), Rule::rules_of(o))).collect();
        Policy {
            roles,
            cluster_roles,
            role_bindings: all("rolebindings"),
            cluster_role_bindings: all("clusterrolebindings"),
        }
    }

    /// The rules a role reference resolves to (`None` when the role does not exist).
    fn role_ref_rules(&self, role_ref: &Value, namespace: &str) -> Option<Vec<Rule>> {
        let name = role_ref["name"].as_str().unwrap_or_default();
        match role_ref["kind"].as_str() {
            Some("ClusterRole") => self.cluster_roles.get(name).cloned(),
            Some("Role") => self.roles.get(&(namespace.to_string(), name.to_string())).cloned(),
            _ => None,
        }
    }

    /// Every rule that applies to `who` in `namespace` (cluster-scope requests: `""`).
    pub fn rules_for(&self, who: &Identity, namespace: &str) -> Vec<Rule> {
        let mut rules = Vec::new();
        for b in &self.cluster_role_bindings {
            if binds(b, who, "") {
                rules.extend(self.role_ref_rules(&b["roleRef"], "").unwrap_or_default());
            }
        }
        if !namespace.is_empty() {
            for b in self.role_bindings.iter().filter(|b| b["metadata"]["namespace"] == namespace) {
                if binds(b, who, namespace) {
                    rules.extend(self.role_ref_rules(&b["roleRef"], namespace).unwrap_or_default());
                }
            }
        }
        rules
    }

    pub fn allows(&self, who: &Identity, a: &Attributes) -> bool {
        who.is_master() || self.rules_for(who, &a.namespace).iter().any(|r| r.allows(a))
    }

    /// Refuses a Role or ClusterRole that grants what its author does not hold, unless the author may
    /// `escalate` it; refuses a binding to a role whose permissions the author does not hold, unless
    /// the author may `bind` it (Kubernetes' RBAC registry checks).
    pub fn check_write(&self, who: &Identity, rt: &ResourceType, namespace: &str, obj: &Value) -> Result<(), ApiError> {
        if rt.group != RBAC_GROUP || who.is_master() {
            return Ok(());
        }
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let forbidden = |e: String| forbidden(rt, name, e);
        let attrs = |verb: &str, resource: &str, name: &str| Attributes {
            verb: verb.into(),
            resource_request: true,
            api_group: RBAC_GROUP.into(),
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.into(),
            ..Default::default()
        };
        let wanted = match rt.plural.as_str() {
            "roles" | "clusterroles" => {
                if self.allows(who, &attrs("escalate", &rt.plural, name)) {
                    return Ok(());
                }
                Rule::rules_of(obj)
            }
            "rolebindings" | "clusterrolebindings" => {
                let role_ref = &obj["roleRef"];
                let ref_resource = match role_ref["kind"].as_str() {
                    Some("ClusterRole") => "clusterroles",
                    _ => "roles",
                };
                let ref_name = role_ref["name"].as_str().unwrap_or_default();
                if self.allows(who, &attrs("bind", ref_resource, ref_name)) {
                    return Ok(());
                }
                match self.role_ref_rules(role_ref, namespace) {
                    Some(rules) => rules,
                    None => {
                        let what = format!("{ref_resource}.{RBAC_GROUP}");
                        return Err(ApiError::new(404, "NotFound", format!("{what} {ref_name:?} not found")));
                    }
                }
            }
            _ => return Ok(()),
        };
        let held = self.rules_for(who, namespace);
        let missing = missing_rules(&held, &wanted);
        if missing.is_empty() {
            return Ok(());
        }
        Err(forbidden(format!(
            "user {:?} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
            who.user,
            who.groups_quoted(),
            missing.join("\n")
        )))
    }
}

/// The wanted permissions no held rule covers, compacted (verbs merged per group, resource and
/// name) and sorted, as Kubernetes lists them.
fn missing_rules(held: &[Rule], wanted: &[Rule]) -> Vec<String> {
    // (groups, resources, names, URLs) → verbs.
    type Target = (Vec<String>, Vec<String>, Vec<String>, Vec<String>);
    let mut by_target: BTreeMap<Target, Vec<String>> = BTreeMap::new();
    for atom in wanted.iter().flat_map(Rule::atoms) {
        if held.iter().any(|h| h.covers(&atom)) {
            continue;
        }
        let key = (atom.api_groups, atom.resources, atom.resource_names, atom.non_resource_urls);
        let verbs = by_target.entry(key).or_default();
        verbs.extend(atom.verbs);
    }
    let out: BTreeSet<String> = by_target
        .into_iter()
        .map(|((api_groups, resources, resource_names, non_resource_urls), verbs)| {
            Rule { api_groups, resources, verbs, resource_names, non_resource_urls }.compact_string()
        })
        .collect();
    out.into_iter().collect()
}

/// Whether a binding names `who` among its subjects.
fn binds(binding: &Value, who: &Identity, binding_ns: &str) -> bool {
    binding["subjects"].as_array().into_iter().flatten().any(|s| {
        let name = s["name"].as_str().unwrap_or_default();
        match s["kind"].as_str() {
            Some("User") => who.user == name,
            Some("Group") => who.groups.iter().any(|g| g == name),
            Some("ServiceAccount") => {
                let ns = s["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or(binding_ns);
                who.user == format!("system:serviceaccount:{ns}:{name}")
            }
            _ => false,
        }
    })
}

/// `apierrors.NewForbidden(groupResource, name, err)`.
pub fn forbidden(rt: &ResourceType, name: &str, err: String) -> ApiError {
    forbidden_gr(&rt.group, &rt.plural, name, err)
}

fn forbidden_gr(group: &str, resource: &str, name: &str, err: String) -> ApiError {
    let qualified = if group.is_empty() { resource.to_string() } else { format!("{resource}.{group}") };
    let message = if name.is_empty() {
        format!("{qualified} is forbidden: {err}")
    } else {
        format!("{qualified} {name:?} is forbidden: {err}")
    };
    let mut e = ApiError::new(403, "Forbidden", message);
    e.details = Some(json!({"name": name, "group": group, "kind": resource}));
    e
}

/// The 403 an authorization denial answers (apiserver `responsewriters.Forbidden`).
pub fn denied(who: &Identity, a: &Attributes) -> ApiError {
    if !a.resource_request {
        let mut e = ApiError::new(
            403,
            "Forbidden",
            format!("forbidden: User {:?} cannot {} path {:?}", who.user, a.verb, a.path),
        );
        e.details = Some(json!({}));
        return e;
    }
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace {:?}", a.namespace)
    };
    let msg = format!(
        "User {:?} cannot {} resource {:?} in API group {:?} {scope}",
        who.user,
        a.verb,
        a.full_resource(),
        a.api_group
    );
    forbidden_gr(&a.api_group, &a.resource, &a.name, msg)
}

pub fn unauthorized() -> ApiError {
    ApiError::new(401, "Unauthorized", "Unauthorized")
}

/// The default discovery roles every cluster has: authenticated users may read `/api`, `/apis`,
/// `/version` and the health endpoints (`system:discovery`, `system:public-info-viewer`).
pub fn default_policy() -> Vec<Value> {
    let role = |name: &str, urls: &[&str]| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
               "rules": [{"nonResourceURLs": urls, "verbs": ["get"]}]})
    };
    let binding = |name: &str| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
               "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": name},
               "subjects": [{"apiGroup": RBAC_GROUP, "kind": "Group", "name": "system:authenticated"}]})
    };
    vec![
        role(
            "system:discovery",
            &["/api", "/api/*", "/apis", "/apis/*", "/openapi", "/openapi/*", "/version", "/version/"],
        ),
        binding("system:discovery"),
        role("system:public-info-viewer", &["/healthz", "/livez", "/readyz", "/version", "/version/"]),
        binding("system:public-info-viewer"),
    ]
}
