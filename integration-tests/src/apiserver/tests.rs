//! The test API server, exercised with kube's own client, watcher and reflector.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{reflector, watcher};
use kube::ResourceExt;
use serde_json::json;

use super::*;

fn ingress(name: &str, host: &str) -> Ingress {
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"rules": [{"host": host}]},
    }))
    .unwrap()
}

fn code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("not an API error: {other:?}"),
    }
}

/// The next watch event that is not a bookmark.
async fn next_event<S>(stream: &mut S) -> WatchEvent<Ingress>
where
    S: futures::Stream<Item = kube::Result<WatchEvent<Ingress>>> + Unpin,
{
    loop {
        match timeout(stream.try_next()).await.unwrap().unwrap() {
            WatchEvent::Bookmark(_) => continue,
            e => return e,
        }
    }
}

async fn timeout<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f).await.expect("timed out")
}

#[tokio::test]
async fn discovery_lists_groups_and_resources() {
    let server = ApiServer::start(Options::default()).await;
    let discovery = kube::Discovery::new(server.client()).run().await.unwrap();
    let groups: Vec<String> = discovery.groups().map(|g| g.name().to_string()).collect();
    for g in ["", "networking.k8s.io", "discovery.k8s.io", "coordination.k8s.io", "events.k8s.io", "weir.dev"] {
        assert!(groups.iter().any(|x| x == g), "group {g:?} missing from {groups:?}");
    }
    let (ar, caps) =
        discovery.resolve_gvk(&kube::api::GroupVersionKind::gvk("networking.k8s.io", "v1", "Ingress")).unwrap();
    assert_eq!(ar.plural, "ingresses");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    assert!(caps.subresources.iter().any(|(s, _)| s.plural == "ingresses/status" || s.plural == "status"));

    let no_crds = ApiServer::start(Options { weir_crds: false, ..Default::default() }).await;
    let discovery = kube::Discovery::new(no_crds.client()).run().await.unwrap();
    assert!(!discovery.has_group("weir.dev"));
}

#[tokio::test]
async fn create_get_conflicts_and_generation() {
    let server = ApiServer::start(Options::default()).await;
    let api: Api<Ingress> = Api::namespaced(server.client(), "default");
    let created = api.create(&PostParams::default(), &ingress("web", "a.example.com")).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    assert_eq!(code(api.create(&PostParams::default(), &ingress("web", "a.example.com")).await.unwrap_err()), 409);
    assert_eq!(code(api.get("missing").await.unwrap_err()), 404);

    // Update with the current resourceVersion works; replaying the stale one conflicts.
    let mut changed = created.clone();
    changed.spec.as_mut().unwrap().rules.as_mut().unwrap()[0].host = Some("b.example.com".into());
    let updated = api.replace("web", &PostParams::default(), &changed).await.unwrap();
    assert_eq!(updated.metadata.generation, Some(2), "spec change bumps generation");
    assert_ne!(updated.resource_version(), created.resource_version());
    assert_eq!(code(api.replace("web", &PostParams::default(), &changed).await.unwrap_err()), 409);

    // Metadata-only changes do not bump generation.
    let patched = api
        .patch("web", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {"x": "1"}}})))
        .await
        .unwrap();
    assert_eq!(patched.metadata.generation, Some(2));
    assert_eq!(patched.annotations().get("x").map(String::as_str), Some("1"));
    // A no-op patch does not change the resourceVersion.
    let again = api
        .patch("web", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {"x": "1"}}})))
        .await
        .unwrap();
    assert_eq!(again.resource_version(), patched.resource_version());

    // Status goes through /status only.
    let lb = json!({"status": {"loadBalancer": {"ingress": [{"hostname": "lb.example.net"}]}}});
    let main = api.patch("web", &PatchParams::default(), &Patch::Merge(lb.clone())).await.unwrap();
    assert!(main.status.is_none(), "main resource ignores status");
    let with_status = api.patch_status("web", &PatchParams::default(), &Patch::Merge(lb)).await.unwrap();
    let lb_ingress = with_status.status.unwrap().load_balancer.unwrap().ingress.unwrap();
    assert_eq!(lb_ingress[0].hostname.as_deref(), Some("lb.example.net"));
    assert_eq!(with_status.metadata.generation, Some(2), "status does not bump generation");

    // Lists carry a resourceVersion and honour label selectors and namespaces.
    api.create(&PostParams::default(), &ingress("api", "c.example.com")).await.unwrap();
    let list = api.list(&ListParams::default().labels("app=api")).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert!(list.metadata.resource_version.is_some());
    let all: Api<Ingress> = Api::all(server.client());
    assert_eq!(all.list(&ListParams::default()).await.unwrap().items.len(), 2);
    let other: Api<Ingress> = Api::namespaced(server.client(), "other");
    assert!(other.list(&ListParams::default()).await.unwrap().items.is_empty());
}

#[tokio::test]
async fn server_side_apply_owns_fields_and_reports_conflicts() {
    let server = ApiServer::start(Options::default()).await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let cm = |data: serde_json::Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": data});
    let a = PatchParams::apply("a");
    let created = api.patch("cfg", &a, &Patch::Apply(cm(json!({"x": "1", "y": "2"})))).await.unwrap();
    assert_eq!(created.data.as_ref().unwrap().len(), 2);
    assert_eq!(created.metadata.managed_fields.as_ref().unwrap()[0].manager.as_deref(), Some("a"));

    // Another manager changing an owned field conflicts unless it forces.
    let b = PatchParams::apply("b");
    assert_eq!(code(api.patch("cfg", &b, &Patch::Apply(cm(json!({"x": "9"})))).await.unwrap_err()), 409);
    let forced = api.patch("cfg", &b.clone().force(), &Patch::Apply(cm(json!({"x": "9", "z": "3"})))).await.unwrap();
    assert_eq!(forced.data.as_ref().unwrap()["x"], "9");

    // `a` drops y from its configuration: y is removed; x now belongs to b and stays.
    let dropped = api.patch("cfg", &a, &Patch::Apply(cm(json!({})))).await.unwrap();
    let data = dropped.data.unwrap();
    assert!(!data.contains_key("y"), "{data:?}");
    assert_eq!(data["x"], "9");
    assert_eq!(data["z"], "3");
}

#[tokio::test]
async fn deletion_waits_for_finalizers() {
    let server = ApiServer::start(Options::default()).await;
    let api: Api<Ingress> = Api::namespaced(server.client(), "default");
    let mut ing = ingress("web", "a.example.com");
    ing.metadata.finalizers = Some(vec!["other.example.com/hold".into()]);
    api.create(&PostParams::default(), &ing).await.unwrap();
    api.delete("web", &DeleteParams::default()).await.unwrap();
    let held = api.get("web").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    api.patch("web", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await.unwrap();
    assert_eq!(code(api.get("web").await.unwrap_err()), 404);

    api.create(&PostParams::default(), &ingress("plain", "b.example.com")).await.unwrap();
    api.delete("plain", &DeleteParams::default()).await.unwrap();
    assert_eq!(code(api.get("plain").await.unwrap_err()), 404);
}

fn owned_configmap(name: &str, owners: &[&ConfigMap], finalizer: bool) -> ConfigMap {
    let refs: Vec<_> = owners
        .iter()
        .map(|o| json!({"apiVersion": "v1", "kind": "ConfigMap", "name": o.name_any(), "uid": o.uid().unwrap()}))
        .collect();
    let mut meta = json!({"name": name, "ownerReferences": refs});
    if finalizer {
        meta["finalizers"] = json!(["other.example.com/hold"]);
    }
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta})).unwrap()
}

#[tokio::test]
async fn garbage_collector_deletes_dependents_in_cascade() {
    let server = ApiServer::start(Options::default()).await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let pp = PostParams::default();
    let cm = |name: &str| -> ConfigMap {
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}})).unwrap()
    };
    let root = api.create(&pp, &cm("root")).await.unwrap();
    let other = api.create(&pp, &cm("other")).await.unwrap();
    let child = api.create(&pp, &owned_configmap("child", &[&root], false)).await.unwrap();
    api.create(&pp, &owned_configmap("grandchild", &[&child], false)).await.unwrap();
    api.create(&pp, &owned_configmap("held", &[&root], true)).await.unwrap();
    api.create(&pp, &owned_configmap("shared", &[&root, &other], false)).await.unwrap();
    api.create(&pp, &owned_configmap("unrelated", &[&other], false)).await.unwrap();

    let rv = api.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    let mut events = api.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
    api.delete("root", &DeleteParams::default()).await.unwrap();

    let mut deleted = Vec::new();
    while deleted.len() < 3 {
        match timeout(events.try_next()).await.unwrap().unwrap() {
            WatchEvent::Deleted(o) => deleted.push(o.name_any()),
            WatchEvent::Bookmark(_) | WatchEvent::Modified(_) => {}
            e => panic!("unexpected event {e:?}"),
        }
    }
    deleted.sort();
    assert_eq!(deleted, ["child", "grandchild", "root"]);
    for gone in ["root", "child", "grandchild"] {
        assert_eq!(code(api.get(gone).await.unwrap_err()), 404, "{gone}");
    }
    // A finalizer holds a dependent until it is cleared, as for a direct delete.
    let held = api.get("held").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    api.patch("held", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await.unwrap();
    assert_eq!(code(api.get("held").await.unwrap_err()), 404);
    // A dependent with another live owner stays and only loses the reference.
    let shared = api.get("shared").await.unwrap();
    let owners: Vec<_> = shared.metadata.owner_references.unwrap().into_iter().map(|r| r.name).collect();
    assert_eq!(owners, ["other"]);
    assert!(api.get("unrelated").await.is_ok());
    // The remaining owner going takes its dependents with it.
    api.delete("other", &DeleteParams::default()).await.unwrap();
    for gone in ["shared", "unrelated"] {
        assert_eq!(code(api.get(gone).await.unwrap_err()), 404, "{gone}");
    }
    // An object created for an owner that is already gone is collected at once.
    api.create(&pp, &owned_configmap("late", &[&other], false)).await.unwrap();
    assert_eq!(code(api.get("late").await.unwrap_err()), 404);
}

#[tokio::test]
async fn watch_streams_events_bookmarks_resumes_and_expires() {
    let server =
        ApiServer::start(Options { bookmark_interval: Duration::from_millis(100), ..Default::default() }).await;
    let api: Api<Ingress> = Api::namespaced(server.client(), "default");
    let list = api.list(&ListParams::default()).await.unwrap();
    let start = list.metadata.resource_version.unwrap();
    let mut stream =
        api.watch(&WatchParams { bookmarks: true, ..WatchParams::default() }, &start).await.unwrap().boxed();

    api.create(&PostParams::default(), &ingress("web", "a.example.com")).await.unwrap();
    api.patch("web", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"v": "2"}}})))
        .await
        .unwrap();
    api.delete("web", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    let mut bookmarks = 0;
    while seen.len() < 3 || bookmarks == 0 {
        match timeout(stream.try_next()).await.unwrap().unwrap() {
            WatchEvent::Added(i) => seen.push(("ADDED", i.name_any())),
            WatchEvent::Modified(i) => seen.push(("MODIFIED", i.name_any())),
            WatchEvent::Deleted(i) => seen.push(("DELETED", i.name_any())),
            WatchEvent::Bookmark(_) => bookmarks += 1,
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(seen, vec![("ADDED", "web".into()), ("MODIFIED", "web".into()), ("DELETED", "web".into())]);

    // Resuming from the start replays the same history.
    let mut resumed = api.watch(&WatchParams::default(), &start).await.unwrap().boxed();
    assert!(matches!(next_event(&mut resumed).await, WatchEvent::Added(_)));

    // A selector that stops matching turns MODIFIED into DELETED.
    api.create(&PostParams::default(), &ingress("sel", "s.example.com")).await.unwrap();
    let rv = api.get("sel").await.unwrap().resource_version().unwrap();
    let mut selected = api.watch(&WatchParams::default().labels("app=sel"), &rv).await.unwrap().boxed();
    api.patch("sel", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"app": "gone"}}})))
        .await
        .unwrap();
    assert!(matches!(next_event(&mut selected).await, WatchEvent::Deleted(_)));

    // Compaction ends a live watch with 410 Gone, and an old resourceVersion is 410 Gone after it.
    let now = api.get("sel").await.unwrap().resource_version().unwrap();
    let mut live = api.watch(&WatchParams::default(), &now).await.unwrap().boxed();
    server.store().compact();
    match next_event(&mut live).await {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected the live watch to end with 410, got {other:?}"),
    }
    assert!(live.next().await.is_none(), "the live watch continued after its 410");
    let mut expired = api.watch(&WatchParams::default(), &start).await.unwrap().boxed();
    match next_event(&mut expired).await {
        WatchEvent::Error(e) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test]
async fn reflector_follows_changes_and_recovers_from_expiry() {
    let server = ApiServer::start(Options::default()).await;
    let api: Api<Ingress> = Api::all(server.client());
    let (reader, writer) = reflector::store();
    // Each list the watcher starts begins with Event::Init.
    let lists = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = lists.clone();
    let stream = reflector(writer, watcher(api, watcher::Config::default())).inspect(move |e| {
        if matches!(e, Ok(watcher::Event::Init)) {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let task = tokio::spawn(async move {
        stream.for_each(|_| async {}).await;
    });
    let lists_so_far = || lists.load(std::sync::atomic::Ordering::SeqCst);
    reader.wait_until_ready().await.unwrap();
    let ns: Api<Ingress> = Api::namespaced(server.client(), "team");
    ns.create(&PostParams::default(), &ingress("a", "a.example.com")).await.unwrap();
    ns.create(&PostParams::default(), &ingress("b", "b.example.com")).await.unwrap();
    timeout(async {
        while reader.state().len() != 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(lists_so_far(), 1);
    // Compaction ends the reflector's live watch with 410: it re-lists, then follows changes again.
    server.store().compact();
    timeout(async {
        while lists_so_far() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(lists_so_far(), 2, "one re-list per compaction");
    assert_eq!(reader.state().len(), 2);
    ns.delete("a", &DeleteParams::default()).await.unwrap();
    timeout(async {
        while reader.state().len() != 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn leases_conflict_on_stale_versions_and_crds_register_types() {
    let server = ApiServer::start(Options { weir_crds: false, ..Default::default() }).await;
    let leases: Api<Lease> = Api::namespaced(server.client(), "default");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "weir"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}
    }))
    .unwrap();
    let first = leases.create(&PostParams::default(), &lease).await.unwrap();
    let mut a = first.clone();
    a.spec.as_mut().unwrap().holder_identity = Some("a2".into());
    let mut b = first.clone();
    b.spec.as_mut().unwrap().holder_identity = Some("b".into());
    leases.replace("weir", &PostParams::default(), &a).await.unwrap();
    assert_eq!(code(leases.replace("weir", &PostParams::default(), &b).await.unwrap_err()), 409);

    // Creating a CRD through the API serves its type.
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "trafficinfras.weir.dev"},
        "spec": {"group": "weir.dev", "scope": "Namespaced",
                 "names": {"plural": "trafficinfras", "kind": "TrafficInfra", "singular": "trafficinfra"},
                 "versions": [{"name": "v1alpha1", "served": true, "storage": true, "subresources": {"status": {}}}]}
    });
    assert!(server.store().find_type("weir.dev", "v1alpha1", "trafficinfras").is_none());
    server.store().create_object(crd).unwrap();
    assert!(server.store().find_type("weir.dev", "v1alpha1", "trafficinfras").is_some());
}

#[test]
fn background_server_and_kubeconfig() {
    let server = ApiServer::start_background(Options::default());
    let dir = tempfile::tempdir().unwrap();
    let path = server.write_kubeconfig(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
        let client = kube::Client::try_from(cfg).unwrap();
        let api: Api<Ingress> = Api::default_namespaced(client);
        api.create(&PostParams::default(), &ingress("web", "a.example.com")).await.unwrap();
    });
    let rt_ = server.store().type_of(&json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress"})).unwrap();
    assert!(server.store().get(&rt_, "default", "web").is_ok());
}

mod rbac_enforced {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};

    use super::*;

    fn status(e: kube::Error) -> kube::core::Status {
        match e {
            kube::Error::Api(s) => *s,
            other => panic!("not an API error: {other:?}"),
        }
    }

    fn role(ns: &str, name: &str, rules: serde_json::Value) -> serde_json::Value {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": name, "namespace": ns}, "rules": rules})
    }

    fn binding(ns: &str, name: &str, role_kind: &str, role: &str, sa_ns: &str, sa: &str) -> serde_json::Value {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": name, "namespace": ns},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
               "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": sa_ns}]})
    }

    #[tokio::test]
    async fn tokens_map_to_users_and_denials_name_the_permission() {
        let server = ApiServer::start(Options::default()).await;
        // No token: 401.
        let anonymous = kube::Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();
        let e = status(Api::<Service>::all(anonymous).list(&ListParams::default()).await.unwrap_err());
        assert_eq!((e.code, e.reason.as_str()), (401, "Unauthorized"));
        // A ServiceAccount with no binding: discovery yes, objects no, with Kubernetes' messages.
        let sa = server.client_for(&server.service_account_token("shop", "shop-xds"));
        kube::Discovery::new(sa.clone()).run().await.expect("authenticated users read discovery");
        let e = status(Api::<Service>::all(sa.clone()).list(&ListParams::default()).await.unwrap_err());
        assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
        assert_eq!(
            e.message,
            "services is forbidden: User \"system:serviceaccount:shop:shop-xds\" cannot list resource \"services\" in \
             API group \"\" at the cluster scope"
        );
        let e = status(Api::<Deployment>::namespaced(sa.clone(), "shop").get("web").await.unwrap_err());
        assert_eq!(
            e.message,
            "deployments.apps \"web\" is forbidden: User \"system:serviceaccount:shop:shop-xds\" cannot get resource \
             \"deployments\" in API group \"apps\" in the namespace \"shop\""
        );
        let audit = server.audit();
        let last = audit.last().unwrap();
        assert_eq!(
            (last.user.as_str(), last.verb.as_str(), last.api_group.as_str(), last.resource.as_str()),
            ("system:serviceaccount:shop:shop-xds", "get", "apps", "deployments")
        );
        assert_eq!((last.namespace.as_str(), last.name.as_str(), last.allowed, last.code), ("shop", "web", false, 403));
        assert!(audit.iter().any(|r| r.user.is_empty() && r.code == 401));
        assert!(audit.iter().any(|r| !r.resource_request && r.path == "/apis" && r.allowed));
        server.clear_audit();
        assert!(server.audit().is_empty());
    }

    #[tokio::test]
    async fn roles_bind_scope_verbs_subresources_and_names() {
        let server = ApiServer::start(Options::default()).await;
        server.create_objects(&[
            role(
                "shop",
                "reader",
                json!([
                    {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch"]},
                    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "update"], "resourceNames": ["state"]},
                    {"apiGroups": ["apps"], "resources": ["deployments/status"], "verbs": ["patch"]},
                ]),
            ),
            binding("shop", "reader", "Role", "reader", "shop", "xds"),
        ]);
        let admin = server.client();
        for ns in ["shop", "other"] {
            let svc: Service = serde_json::from_value(json!({"metadata": {"name": "web"}})).unwrap();
            Api::<Service>::namespaced(admin.clone(), ns).create(&PostParams::default(), &svc).await.unwrap();
        }
        let sa = server.client_for(&server.service_account_token("shop", "xds"));
        let in_shop = Api::<Service>::namespaced(sa.clone(), "shop");
        assert_eq!(in_shop.list(&ListParams::default()).await.unwrap().items.len(), 1);
        in_shop.get("web").await.unwrap();
        // Not in another namespace, not at the cluster scope, no verb it was not given.
        assert_eq!(code(Api::<Service>::namespaced(sa.clone(), "other").get("web").await.unwrap_err()), 403);
        assert_eq!(code(Api::<Service>::all(sa.clone()).list(&ListParams::default()).await.unwrap_err()), 403);
        assert_eq!(code(in_shop.delete("web", &DeleteParams::default()).await.unwrap_err()), 403);
        // A watch is its own verb, granted here.
        let mut w = in_shop.watch(&WatchParams::default(), "0").await.unwrap().boxed();
        assert!(timeout(w.try_next()).await.unwrap().is_some());

        // resourceNames: the named object only, and never a list.
        let cms = Api::<ConfigMap>::namespaced(admin.clone(), "shop");
        for name in ["state", "bootstrap"] {
            let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
            cms.create(&PostParams::default(), &cm).await.unwrap();
        }
        let sa_cms = Api::<ConfigMap>::namespaced(sa.clone(), "shop");
        let mut state = sa_cms.get("state").await.unwrap();
        state.data = Some([("k".to_string(), "v".to_string())].into());
        sa_cms.replace("state", &PostParams::default(), &state).await.unwrap();
        assert_eq!(code(sa_cms.get("bootstrap").await.unwrap_err()), 403);
        let e = status(sa_cms.list(&ListParams::default()).await.unwrap_err());
        assert!(e.message.ends_with("cannot list resource \"configmaps\" in API group \"\" in the namespace \"shop\""));
        // A patch of the named one is a verb it lacks.
        let patch = Patch::Merge(json!({"data": {"k": "w"}}));
        assert_eq!(code(sa_cms.patch("state", &PatchParams::default(), &patch).await.unwrap_err()), 403);

        // Subresources: deployments/status does not grant deployments, and the message names it.
        let deploy: Deployment = serde_json::from_value(json!({"metadata": {"name": "web"},
            "spec": {"selector": {}, "template": {}}}))
        .unwrap();
        Api::<Deployment>::namespaced(admin, "shop").create(&PostParams::default(), &deploy).await.unwrap();
        let sa_deploy = Api::<Deployment>::namespaced(sa, "shop");
        let status_patch = Patch::Merge(json!({"status": {"replicas": 1}}));
        sa_deploy.patch_status("web", &PatchParams::default(), &status_patch).await.unwrap();
        let e = status(sa_deploy.patch("web", &PatchParams::default(), &status_patch).await.unwrap_err());
        assert!(e.message.contains("cannot patch resource \"deployments\" in API group \"apps\""), "{}", e.message);
        let e = status(sa_deploy.get_status("web").await.unwrap_err());
        assert!(e.message.contains("cannot get resource \"deployments/status\""), "{}", e.message);
    }

    #[tokio::test]
    async fn roles_and_bindings_cannot_grant_more_than_their_author_holds() {
        let server = ApiServer::start(Options::default()).await;
        server.create_objects(&[
            role(
                "shop",
                "manager",
                json!([
                    {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": ["create", "update", "patch"]},
                    {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list"]},
                ]),
            ),
            binding("shop", "manager", "Role", "manager", "shop", "op"),
            role("shop", "deleter", json!([{"apiGroups": [""], "resources": ["services"], "verbs": ["delete"]}])),
            role("shop", "deleter2", json!([{"apiGroups": [""], "resources": ["services"], "verbs": ["delete"]}])),
        ]);
        let op = server.client_for(&server.service_account_token("shop", "op"));
        let roles = Api::<Role>::namespaced(op.clone(), "shop");
        let ok: Role = serde_json::from_value(role(
            "shop",
            "ok",
            json!([{"apiGroups": [""], "resources": ["services"], "verbs": ["get"]}]),
        ))
        .unwrap();
        roles.create(&PostParams::default(), &ok).await.expect("a Role within what the author holds");
        let too_much: Role = serde_json::from_value(role(
            "shop",
            "too-much",
            json!([{"apiGroups": [""], "resources": ["services"], "verbs": ["get", "delete", "watch"]},
                   {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get"], "resourceNames": ["web"]}]),
        ))
        .unwrap();
        let e = status(roles.create(&PostParams::default(), &too_much).await.unwrap_err());
        assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
        assert_eq!(
            e.message,
            "roles.rbac.authorization.k8s.io \"too-much\" is forbidden: user \"system:serviceaccount:shop:op\" \
             (groups=[\"system:serviceaccounts\" \"system:serviceaccounts:shop\" \"system:authenticated\"]) is \
             attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"services\"], \
             Verbs:[\"delete\" \"watch\"]}\n{APIGroups:[\"apps\"], Resources:[\"deployments\"], \
             ResourceNames:[\"web\"], Verbs:[\"get\"]}"
        );
        // An update that widens is refused too (server-side apply included).
        let mut widened = ok.clone();
        widened.rules.as_mut().unwrap()[0].verbs.push("delete".into());
        let apply = PatchParams::apply("op").force();
        let e = status(roles.patch("ok", &apply, &Patch::Apply(&widened)).await.unwrap_err());
        assert!(e.message.contains("Verbs:[\"delete\"]"), "{}", e.message);

        // Binding a role whose permissions the author lacks: refused, unless it may `bind` that role.
        let bindings = Api::<RoleBinding>::namespaced(op.clone(), "shop");
        let b: RoleBinding = serde_json::from_value(binding("shop", "b", "Role", "deleter", "shop", "x")).unwrap();
        let e = status(bindings.create(&PostParams::default(), &b).await.unwrap_err());
        assert!(
            e.message.starts_with(
                "rolebindings.rbac.authorization.k8s.io \"b\" is forbidden: user \"system:serviceaccount:shop:op\""
            ),
            "{}",
            e.message
        );
        assert!(
            e.message.ends_with("{APIGroups:[\"\"], Resources:[\"services\"], Verbs:[\"delete\"]}"),
            "{}",
            e.message
        );
        let own: RoleBinding = serde_json::from_value(binding("shop", "own", "Role", "ok", "shop", "x")).unwrap();
        bindings.create(&PostParams::default(), &own).await.expect("binding what the author holds");
        server.create_objects(&[
            role("shop", "binder", json!([{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["bind"], "resourceNames": ["deleter"]}])),
            binding("shop", "binder", "Role", "binder", "shop", "op"),
        ]);
        bindings.create(&PostParams::default(), &b).await.expect("bind on the role by name");
        // `bind` by name does not extend to other roles; neither does `escalate` exist here.
        let c: RoleBinding = serde_json::from_value(binding("shop", "c", "Role", "deleter2", "shop", "x")).unwrap();
        assert_eq!(code(bindings.create(&PostParams::default(), &c).await.unwrap_err()), 403);
        server.create_objects(&[
            role(
                "shop",
                "escalator",
                json!([{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["escalate"]}]),
            ),
            binding("shop", "escalator", "Role", "escalator", "shop", "op"),
        ]);
        roles.create(&PostParams::default(), &too_much).await.expect("escalate allows it");
    }

    #[tokio::test]
    async fn without_rbac_everything_is_allowed() {
        let server = ApiServer::start(Options { rbac: false, ..Options::default() }).await;
        let anonymous = kube::Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();
        Api::<Service>::all(anonymous).list(&ListParams::default()).await.unwrap();
        let sa = server.client_for(&server.service_account_token("shop", "nobody"));
        Api::<Service>::all(sa).list(&ListParams::default()).await.unwrap();
    }
}
