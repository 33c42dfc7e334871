//! CRUD, subresources, SSA, finalizers, GC, selectors, validation, discovery, TLS and faults
//! against the test API server, through a real kube client.

mod common;

use common::*;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::Discovery;
use mcs_testapi::TestApiConfig;
use serde_json::json;

fn cm(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels},
        "data": {"k": "v"},
    }))
    .unwrap()
}

#[tokio::test]
async fn crud_conflicts_and_errors() {
    let s = server().await;
    let client = s.client().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    let created = cms.create(&pp, &cm("a", json!({}))).await.unwrap();
    let rv1 = created.metadata.resource_version.clone().unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    let err = status_of(cms.create(&pp, &cm("a", json!({}))).await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (409, "AlreadyExists"));

    let mut upd = created.clone();
    upd.data = Some([("k".to_string(), "v2".to_string())].into());
    let replaced = cms.replace("a", &pp, &upd).await.unwrap();
    assert!(
        replaced
            .metadata
            .resource_version
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > rv1.parse().unwrap()
    );
    let err = status_of(cms.replace("a", &pp, &upd).await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert!(err.message.contains("the object has been modified"));

    let patched = cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"m": "1"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data.as_ref().unwrap()["m"], "1");
    let jp: json_patch::Patch =
        serde_json::from_value(json!([{"op": "replace", "path": "/data/m", "value": "2"}]))
            .unwrap();
    let patched = cms
        .patch("a", &PatchParams::default(), &Patch::<()>::Json(jp))
        .await
        .unwrap();
    assert_eq!(patched.data.as_ref().unwrap()["m"], "2");
    let patched = cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Strategic(json!({"data": {"s": "3"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data.as_ref().unwrap()["s"], "3");
    let stale = json!({"metadata": {"resourceVersion": rv1}, "data": {"x": "1"}});
    let err = status_of(
        cms.patch("a", &PatchParams::default(), &Patch::Merge(stale))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 409);

    let mut gen_cm = cm("", json!({}));
    gen_cm.metadata.name = None;
    gen_cm.metadata.generate_name = Some("gen-".into());
    let g = cms.create(&pp, &gen_cm).await.unwrap();
    assert!(g.metadata.name.unwrap().starts_with("gen-"));

    let err = status_of(cms.get("missing").await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (404, "NotFound"));
    assert_eq!(err.message, "configmaps \"missing\" not found");
    cms.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(status_of(cms.get("a").await.unwrap_err()).code, 404);

    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let d = cms.create(&dry, &cm("dry", json!({}))).await.unwrap();
    assert_eq!(d.metadata.name.as_deref(), Some("dry"));
    assert!(
        cms.get_opt("dry").await.unwrap().is_none(),
        "dry run stores nothing"
    );
    let b = cms
        .create(&pp, &cm("b", json!({"batch": "1"})))
        .await
        .unwrap();
    let wrong = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("nope".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    assert_eq!(
        status_of(cms.delete("b", &wrong).await.unwrap_err()).code,
        409
    );
    let right = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: b.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    cms.delete("b", &right).await.unwrap();
    for n in ["c1", "c2"] {
        cms.create(&pp, &cm(n, json!({"batch": "2"})))
            .await
            .unwrap();
    }
    cms.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("batch=2"),
    )
    .await
    .unwrap();
    assert!(
        cms.list(&ListParams::default().labels("batch"))
            .await
            .unwrap()
            .items
            .is_empty()
    );

    let other: Api<ConfigMap> = Api::namespaced(client.clone(), "nope");
    let err = status_of(other.create(&pp, &cm("a", json!({}))).await.unwrap_err());
    assert_eq!(err.code, 404);
    let mut bad = cm("Bad_Name", json!({}));
    bad.metadata.name = Some("Bad_Name".into());
    assert_eq!(
        status_of(cms.create(&pp, &bad).await.unwrap_err()).code,
        422
    );
}

#[tokio::test]
async fn status_subresource_generation_and_scale() {
    let s = server().await;
    let client = s.client().await.unwrap();
    let api = widgets(&client, "default");
    let mut w = widget("w1", json!({"replicas": 1, "size": "s"}));
    w.data["status"] = json!({"phase": "ignored"});
    let w = api.create(&PostParams::default(), &w).await.unwrap();
    assert_eq!(w.metadata.generation, Some(1));
    assert!(w.data.get("status").is_none(), "status dropped on create");

    let st = api
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Ready", "replicas": 1}})),
        )
        .await
        .unwrap();
    assert_eq!(st.data["status"]["phase"], "Ready");
    assert_eq!(st.metadata.generation, Some(1));

    let st = api
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": "huge"}, "status": {"phase": "Ready2"}})),
        )
        .await
        .unwrap();
    assert_eq!(st.data["spec"]["size"], "s", "status writes ignore spec");
    assert_eq!(st.data["status"]["phase"], "Ready2");

    let m = api
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": "m"}, "status": {"phase": "Hacked"}})),
        )
        .await
        .unwrap();
    assert_eq!(m.metadata.generation, Some(2));
    assert_eq!(
        m.data["status"]["phase"], "Ready2",
        "main writes ignore status"
    );
    let l = api
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        l.metadata.generation,
        Some(2),
        "metadata changes keep generation"
    );
    let mut full = l.clone();
    full.data["status"] = json!({"phase": "viaPut"});
    let put = api
        .replace_status("w1", &PostParams::default(), &full)
        .await
        .unwrap();
    assert_eq!(put.data["status"]["phase"], "viaPut");
    let noop = api
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": "m"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        noop.metadata.resource_version, put.metadata.resource_version,
        "no-op writes keep the RV"
    );

    let scale = api.get_scale("w1").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(1));
    let sc = api
        .patch_scale(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(sc.spec.unwrap().replicas, Some(3));
    let w = api.get("w1").await.unwrap();
    assert_eq!(w.data["spec"]["replicas"], 3);
    assert_eq!(w.metadata.generation, Some(3));
}

#[tokio::test]
async fn server_side_apply_two_managers() {
    let s = server().await;
    let client = s.client().await.unwrap();
    let api = widgets(&client, "default");
    let alice = PatchParams::apply("alice");
    let cfg = json!({"apiVersion": "test.mcs.dev/v1", "kind": "Widget", "metadata": {"name": "w"},
                     "spec": {"size": "small", "color": "red", "tags": {"a": "1"}}});
    let w = api.patch("w", &alice, &Patch::Apply(&cfg)).await.unwrap();
    assert_eq!(w.data["spec"]["size"], "small");
    let bob_cfg = json!({"apiVersion": "test.mcs.dev/v1", "kind": "Widget", "metadata": {"name": "w"},
                         "spec": {"size": "large", "replicas": 2}});
    let err = status_of(
        api.patch("w", &PatchParams::apply("bob"), &Patch::Apply(&bob_cfg))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert!(
        err.message.contains("conflict with \"alice\""),
        "{}",
        err.message
    );
    assert!(err.message.contains(".spec.size"), "{}", err.message);
    let w = api
        .patch(
            "w",
            &PatchParams::apply("bob").force(),
            &Patch::Apply(&bob_cfg),
        )
        .await
        .unwrap();
    assert_eq!(w.data["spec"]["size"], "large");
    assert_eq!(w.data["spec"]["replicas"], 2);
    let managers: Vec<String> = w
        .metadata
        .managed_fields
        .unwrap()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(managers.contains(&"alice".to_string()) && managers.contains(&"bob".to_string()));

    // alice stops sending tags: they go; size now belongs to bob and stays.
    let cfg2 = json!({"apiVersion": "test.mcs.dev/v1", "kind": "Widget", "metadata": {"name": "w"},
                      "spec": {"color": "red"}});
    let w = api.patch("w", &alice, &Patch::Apply(&cfg2)).await.unwrap();
    assert!(w.data["spec"].get("tags").is_none(), "{:?}", w.data);
    assert_eq!(w.data["spec"]["size"], "large");
    // a plain update by another manager takes the field over without conflict
    api.patch(
        "w",
        &PatchParams {
            field_manager: Some("carol".into()),
            ..Default::default()
        },
        &Patch::Merge(json!({"spec": {"color": "green"}})),
    )
    .await
    .unwrap();
    let err = status_of(
        api.patch("w", &alice, &Patch::Apply(&cfg2))
            .await
            .unwrap_err(),
    );
    assert!(err.message.contains("carol"), "{}", err.message);

    // status apply only touches status
    let st = json!({"apiVersion": "test.mcs.dev/v1", "kind": "Widget", "metadata": {"name": "w"},
                    "status": {"phase": "Up"}});
    let w = api
        .patch_status("w", &PatchParams::apply("ctrl"), &Patch::Apply(&st))
        .await
        .unwrap();
    assert_eq!(w.data["status"]["phase"], "Up");

    // conditions are a list-map keyed by type: two managers own one condition each
    let cond = |t: &str, st: &str| {
        json!({"apiVersion": "test.mcs.dev/v1", "kind": "Widget", "metadata": {"name": "w"},
               "status": {"conditions": [{"type": t, "status": st}]}})
    };
    api.patch_status(
        "w",
        &PatchParams::apply("ctrl-a"),
        &Patch::Apply(cond("A", "True")),
    )
    .await
    .unwrap();
    let w = api
        .patch_status(
            "w",
            &PatchParams::apply("ctrl-b"),
            &Patch::Apply(cond("B", "False")),
        )
        .await
        .unwrap();
    assert_eq!(w.data["status"]["conditions"].as_array().unwrap().len(), 2);
    assert_eq!(
        w.data["status"]["phase"], "Up",
        "other managers' status fields stay"
    );
    let err = status_of(
        api.patch_status(
            "w",
            &PatchParams::apply("ctrl-b"),
            &Patch::Apply(cond("A", "False")),
        )
        .await
        .unwrap_err(),
    );
    assert!(err.message.contains("ctrl-a"), "{}", err.message);
    let none = json!({"apiVersion": "test.mcs.dev/v1", "kind": "Widget", "metadata": {"name": "w"}, "status": {"conditions": []}});
    let w = api
        .patch_status("w", &PatchParams::apply("ctrl-a"), &Patch::Apply(none))
        .await
        .unwrap();
    assert_eq!(
        w.data["status"]["conditions"],
        json!([{"type": "B", "status": "False"}])
    );
}

/// A status apply for the `Widget` `w` carrying `task`.
fn task_status(task: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "test.mcs.dev/v1", "kind": "Widget", "metadata": {"name": "w"},
           "status": {"task": task}})
}

#[tokio::test]
async fn apply_that_drops_a_nested_object_removes_it_entirely() {
    let s = server().await;
    let client = s.client().await.unwrap();
    let api = widgets(&client, "default");
    api.create(&PostParams::default(), &widget("w", json!({})))
        .await
        .unwrap();
    let ctrl = PatchParams::apply("ctrl");
    let failed = task_status(json!({"phase": "Failed",
        "terminatingError": {"reason": "Boom", "message": "it broke"}}));
    let w = api
        .patch_status("w", &ctrl, &Patch::Apply(&failed))
        .await
        .unwrap();
    assert_eq!(
        w.data["status"]["task"]["terminatingError"]["reason"],
        "Boom"
    );

    // The manager stops sending every child of terminatingError: the map goes too, rather
    // than staying as `{}` and failing its `required` validation.
    let retried = task_status(json!({"phase": "Running"}));
    let w = api
        .patch_status("w", &ctrl, &Patch::Apply(&retried))
        .await
        .unwrap();
    assert_eq!(w.data["status"]["task"], json!({"phase": "Running"}));
    let fields = serde_json::to_value(w.metadata.managed_fields.unwrap()).unwrap();
    assert!(!fields.to_string().contains("terminatingError"), "{fields}");
    let w = api
        .patch_status(
            "w",
            &ctrl,
            &Patch::Apply(task_status(json!({"phase": "Done"}))),
        )
        .await
        .unwrap();
    assert_eq!(w.data["status"]["task"], json!({"phase": "Done"}));
    assert!(
        api.get("w").await.unwrap().data["status"]["task"]
            .get("terminatingError")
            .is_none()
    );
}

#[tokio::test]
async fn apply_keeps_a_parent_that_another_manager_has_fields_in() {
    let s = server().await;
    let client = s.client().await.unwrap();
    let api = widgets(&client, "default");
    api.create(&PostParams::default(), &widget("w", json!({})))
        .await
        .unwrap();
    let ctrl = PatchParams::apply("ctrl");
    let err = task_status(json!({"terminatingError": {"reason": "Boom", "message": "it broke"}}));
    api.patch_status("w", &ctrl, &Patch::Apply(&err))
        .await
        .unwrap();
    api.patch_status(
        "w",
        &PatchParams::apply("other"),
        &Patch::Apply(task_status(json!({"phase": "Running"}))),
    )
    .await
    .unwrap();

    // ctrl drops everything it had under status.task; other's sibling field keeps the
    // parent map alive, the map ctrl alone populated goes.
    let w = api
        .patch_status(
            "w",
            &ctrl,
            &Patch::Apply(json!({"apiVersion": "test.mcs.dev/v1", "kind": "Widget",
                                 "metadata": {"name": "w"}, "status": {"phase": "Up"}})),
        )
        .await
        .unwrap();
    assert_eq!(w.data["status"]["task"], json!({"phase": "Running"}));
    assert_eq!(w.data["status"]["phase"], "Up");

    // A plain update by another manager inside the nested map keeps that map too.
    api.patch_status("w", &ctrl, &Patch::Apply(&err))
        .await
        .unwrap();
    api.patch_status(
        "w",
        &PatchParams {
            field_manager: Some("editor".into()),
            ..Default::default()
        },
        &Patch::Merge(json!({"status": {"task": {"terminatingError": {"message": "edited"}}}})),
    )
    .await
    .unwrap();
    let err = status_of(
        api.patch_status(
            "w",
            &ctrl,
            &Patch::Apply(json!({"apiVersion": "test.mcs.dev/v1", "kind": "Widget",
                                 "metadata": {"name": "w"}, "status": {"phase": "Up"}})),
        )
        .await
        .unwrap_err(),
    );
    // reason is removed, message (owned by editor) stays: the object is now invalid, as it
    // would be on a real apiserver.
    assert_eq!(err.code, 422, "{err:?}");
}

#[tokio::test]
async fn finalizers_owner_gc_and_namespace_deletion() {
    let s = server().await;
    let client = s.client().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut held = cm("held", json!({}));
    held.metadata.finalizers = Some(vec!["test.mcs.dev/hold".into()]);
    cms.create(&PostParams::default(), &held).await.unwrap();
    cms.delete("held", &DeleteParams::default()).await.unwrap();
    let h = cms.get("held").await.unwrap();
    assert!(h.metadata.deletion_timestamp.is_some());
    let err = status_of(
        cms.patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["test.mcs.dev/hold", "new"]}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(status_of(cms.get("held").await.unwrap_err()).code, 404);

    // Removing the last finalizer leaves no `finalizers: []` behind (Go's omitempty), so
    // kube's finalizer() helper can add the next one with its `test == null` step.
    let mut once = cm("once", json!({}));
    once.metadata.finalizers = Some(vec!["test.mcs.dev/a".into()]);
    cms.create(&PostParams::default(), &once).await.unwrap();
    let c = cms
        .patch(
            "once",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": []}})),
        )
        .await
        .unwrap();
    assert_eq!(c.metadata.finalizers, None);
    let add_first: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers", "value": null},
        {"op": "add", "path": "/metadata/finalizers", "value": ["test.mcs.dev/b"]},
    ]))
    .unwrap();
    let c = cms
        .patch(
            "once",
            &PatchParams::default(),
            &Patch::Json::<()>(add_first),
        )
        .await
        .unwrap();
    assert_eq!(c.metadata.finalizers, Some(vec!["test.mcs.dev/b".into()]));
    let raced: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers", "value": null},
        {"op": "add", "path": "/metadata/finalizers", "value": ["test.mcs.dev/c"]},
    ]))
    .unwrap();
    let err = status_of(
        cms.patch("once", &PatchParams::default(), &Patch::Json::<()>(raced))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422, "a real concurrent add still fails the test");

    let api = widgets(&client, "default");
    let owner = api
        .create(&PostParams::default(), &widget("owner", json!({})))
        .await
        .unwrap();
    let mut dep = cm("dep", json!({}));
    dep.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "test.mcs.dev/v1".into(),
            kind: "Widget".into(),
            name: "owner".into(),
            uid: owner.metadata.uid.clone().unwrap(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        },
    ]);
    cms.create(&PostParams::default(), &dep).await.unwrap();
    api.delete("owner", &DeleteParams::default()).await.unwrap();
    eventually(5, "dependent collected", || async {
        cms.get_opt("dep").await.unwrap().is_none()
    })
    .await;

    // foreground: the owner waits for its dependents
    let owner = api
        .create(&PostParams::default(), &widget("fg", json!({})))
        .await
        .unwrap();
    let mut dep = cm("fgdep", json!({}));
    dep.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "test.mcs.dev/v1".into(),
            kind: "Widget".into(),
            name: "fg".into(),
            uid: owner.metadata.uid.clone().unwrap(),
            ..Default::default()
        },
    ]);
    cms.create(&PostParams::default(), &dep).await.unwrap();
    api.delete("fg", &DeleteParams::foreground()).await.unwrap();
    eventually(5, "foreground deletion done", || async {
        api.get_opt("fg").await.unwrap().is_none() && cms.get_opt("fgdep").await.unwrap().is_none()
    })
    .await;

    let nss: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "tmp"}})).unwrap();
    nss.create(&PostParams::default(), &ns).await.unwrap();
    let tmp: Api<ConfigMap> = Api::namespaced(client.clone(), "tmp");
    tmp.create(&PostParams::default(), &cm("x", json!({})))
        .await
        .unwrap();
    nss.delete("tmp", &DeleteParams::default()).await.unwrap();
    eventually(5, "namespace removed", || async {
        nss.get_opt("tmp").await.unwrap().is_none()
    })
    .await;
    assert!(tmp.get_opt("x").await.unwrap().is_none());
}

#[tokio::test]
async fn label_and_field_selectors_and_pagination() {
    let s = server().await;
    let client = s.client().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for i in 0..7 {
        let app = ["a", "b", "c"][i % 3];
        let labels = if i % 2 == 0 {
            json!({"app": app, "tier": "x"})
        } else {
            json!({"app": app})
        };
        cms.create(&PostParams::default(), &cm(&format!("cm-{i}"), labels))
            .await
            .unwrap();
    }
    let count = |sel: &'static str| {
        let cms = cms.clone();
        async move {
            cms.list(&ListParams::default().labels(sel))
                .await
                .unwrap()
                .items
                .len()
        }
    };
    assert_eq!(count("app=a").await, 3);
    assert_eq!(count("app==a").await, 3);
    assert_eq!(count("app!=a").await, 4);
    assert_eq!(count("app in (a,b)").await, 5);
    assert_eq!(count("app notin (a)").await, 4);
    assert_eq!(count("tier").await, 4);
    assert_eq!(count("!tier").await, 3);
    assert_eq!(count("app=a,tier").await, 2);
    let by_name = cms
        .list(&ListParams::default().fields("metadata.name=cm-3"))
        .await
        .unwrap();
    assert_eq!(by_name.items.len(), 1);
    let err = status_of(
        cms.list(&ListParams::default().fields("data.k=v"))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 400);

    let mut names = vec![];
    let mut lp = ListParams::default().limit(3);
    let mut pages = 0;
    loop {
        let page = cms.list(&lp).await.unwrap();
        pages += 1;
        names.extend(page.items.iter().map(|c| c.metadata.name.clone().unwrap()));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names.len(), 7);

    let other: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    other
        .create(
            &PostParams::default(),
            &cm("elsewhere", json!({"app": "a"})),
        )
        .await
        .unwrap();
    let all: Api<ConfigMap> = Api::all(client.clone());
    assert_eq!(
        all.list(&ListParams::default().labels("app=a"))
            .await
            .unwrap()
            .items
            .len(),
        4
    );
    let ns_field = all
        .list(&ListParams::default().fields("metadata.namespace=kube-system"))
        .await
        .unwrap();
    assert_eq!(ns_field.items.len(), 1);
}

#[tokio::test]
async fn validation_defaults_and_pruning() {
    let s = server().await;
    let client = s.client().await.unwrap();
    let api = widgets(&client, "default");
    let err = status_of(
        api.create(
            &PostParams::default(),
            &widget("big", json!({"replicas": 20})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert!(
        err.message.contains("replicas must be at most 10"),
        "{}",
        err.message
    );
    let err = status_of(
        api.create(
            &PostParams::default(),
            &widget("neg", json!({"replicas": -1})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    let w = api
        .create(
            &PostParams::default(),
            &widget("ok", json!({"replicas": 2, "unknown": true})),
        )
        .await
        .unwrap();
    assert_eq!(w.data["spec"]["color"], "blue", "defaulted");
    assert!(w.data["spec"].get("unknown").is_none(), "pruned");
    let err = status_of(
        api.patch(
            "ok",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 11}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 422);
}

#[tokio::test]
async fn crds_over_the_api_and_discovery() {
    let s = server().await;
    let client = s.client().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "things.late.mcs.dev"},
        "spec": {"group": "late.mcs.dev", "scope": "Namespaced",
                 "names": {"kind": "Thing", "plural": "things"},
                 "versions": [{"name": "v1beta1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "properties": {"n": {"type": "integer"}}}}}}}]}
    }))
    .unwrap();
    let created = crds.create(&PostParams::default(), &crd).await.unwrap();
    let conds = created.status.unwrap().conditions.unwrap();
    assert!(
        conds
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    );
    assert!(crds.get("widgets.test.mcs.dev").await.is_ok());

    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let mut found = vec![];
    for g in discovery.groups() {
        for (ar, _caps) in g.recommended_resources() {
            found.push(format!("{}/{}", ar.group, ar.plural));
        }
    }
    for want in [
        "test.mcs.dev/widgets",
        "late.mcs.dev/things",
        "/configmaps",
        "coordination.k8s.io/leases",
        "events.k8s.io/events",
        "apps/controllerrevisions",
    ] {
        assert!(
            found.contains(&want.to_string()),
            "{want} missing from {found:?}"
        );
    }
    let agg = Discovery::new(client.clone())
        .run_aggregated()
        .await
        .unwrap();
    assert!(agg.groups().any(|g| g.name() == "late.mcs.dev"));

    let things = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        "default",
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("late.mcs.dev", "v1beta1", "Thing"),
            "things",
        ),
    );
    let t: DynamicObject = serde_json::from_value(json!({"apiVersion": "late.mcs.dev/v1beta1", "kind": "Thing", "metadata": {"name": "t"}, "spec": {"n": 1}})).unwrap();
    things.create(&PostParams::default(), &t).await.unwrap();
    crds.delete("things.late.mcs.dev", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(status_of(things.get("t").await.unwrap_err()).code, 404);

    let mut bad = crd.clone();
    bad.metadata.name = Some("wrong.late.mcs.dev".into());
    assert_eq!(
        status_of(crds.create(&PostParams::default(), &bad).await.unwrap_err()).code,
        422
    );
    let nonstructural: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "bads.late.mcs.dev"},
        "spec": {"group": "late.mcs.dev", "scope": "Namespaced",
                 "names": {"kind": "Bad", "plural": "bads"},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {}}}}}]}
    }))
    .unwrap();
    assert_eq!(
        status_of(
            crds.create(&PostParams::default(), &nonstructural)
                .await
                .unwrap_err()
        )
        .code,
        422
    );
}

#[tokio::test]
async fn tls_kubeconfig_and_http_faults() {
    let s = server_with(TestApiConfig {
        tls: true,
        ..Default::default()
    })
    .await;
    assert!(s.url().starts_with("https://127.0.0.1:"));
    assert!(s.kubeconfig_yaml().contains("certificate-authority-data"));
    let client = s.client().await.unwrap();
    let nss: Api<Namespace> = Api::all(client.clone());
    let names: Vec<String> = nss
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.contains(&"default".to_string()));

    let req = http::Request::post("/__test/faults")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&json!({"fail": [{"verb": "get", "resource": "namespaces", "count": 1, "code": 500}]})).unwrap())
        .unwrap();
    client.request_text(req).await.unwrap();
    let err = status_of(nss.get("default").await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (500, "InternalError"));
    assert!(nss.get("default").await.is_ok());

    // 429 with Retry-After is retried by the client itself
    s.faults().add(mcs_testapi::FailRule {
        verb: "get".into(),
        resource: Some("namespaces".into()),
        count: 2,
        code: 429,
        retry_after_seconds: Some(0),
    });
    assert!(nss.get("default").await.is_ok());
    assert_eq!(s.faults().pending(), 0);
}

#[tokio::test]
async fn builtin_kinds_events_leases_revisions_secrets() {
    use k8s_openapi::api::apps::v1::ControllerRevision;
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::api::events::v1::Event as K8sEvent;
    use kube::Resource as _;
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};

    let s = server().await;
    let client = s.client().await.unwrap();
    let pp = PostParams::default();

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let target = cms.create(&pp, &cm("target", json!({}))).await.unwrap();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "mcs-test".into(),
            instance: None,
        },
    );
    let ev = Event {
        type_: EventType::Normal,
        reason: "Tested".into(),
        note: Some("hello".into()),
        action: "Test".into(),
        secondary: None,
    };
    recorder
        .publish(&ev, &target.object_ref(&()))
        .await
        .unwrap();
    recorder
        .publish(&ev, &target.object_ref(&()))
        .await
        .unwrap();
    let events: Api<K8sEvent> = Api::namespaced(client.clone(), "default");
    let list = events.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1, "the second publish patches the series");
    assert_eq!(list.items[0].reason.as_deref(), Some("Tested"));

    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "leader"}, "spec": {"holderIdentity": "me", "leaseDurationSeconds": 15}})).unwrap();
    leases.create(&pp, &lease).await.unwrap();
    let l = leases
        .patch(
            "leader",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holderIdentity": "you"}})),
        )
        .await
        .unwrap();
    assert_eq!(l.spec.unwrap().holder_identity.as_deref(), Some("you"));

    let revs: Api<ControllerRevision> = Api::namespaced(client.clone(), "default");
    let rev: ControllerRevision = serde_json::from_value(json!({"metadata": {"name": "r1", "labels": {"scheme": "s"}}, "revision": 1, "data": {"a": 1}})).unwrap();
    revs.create(&pp, &rev).await.unwrap();
    let err = status_of(
        revs.patch(
            "r1",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"a": 2}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 422);

    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let sec: Secret = serde_json::from_value(
        json!({"metadata": {"name": "creds"}, "stringData": {"password": "hunter2"}}),
    )
    .unwrap();
    let got = secrets.create(&pp, &sec).await.unwrap();
    assert_eq!(got.data.unwrap()["password"].0, b"hunter2");
    assert!(got.string_data.is_none());
}

#[tokio::test]
async fn serves_the_project_crds() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../crds");
    let has_crds = std::fs::read_dir(&dir)
        .map(|mut d| d.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "yaml"))))
        .unwrap_or(false);
    if !has_crds {
        return;
    }
    let s = mcs_testapi::TestApiServer::start(TestApiConfig {
        crd_dir: Some(dir),
        ..Default::default()
    })
    .await
    .expect("every project CRD is structural and its CEL compiles");
    let client = s.client().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let list = crds.list(&ListParams::default()).await.unwrap();
    assert!(!list.items.is_empty());
    let discovery = Discovery::new(client).run_aggregated().await.unwrap();
    for crd in list.items {
        let group = crd.spec.group.clone();
        assert!(discovery.has_group(&group), "{group} not discovered");
    }
}

#[tokio::test]
async fn bad_requests_get_status_errors() {
    let s = server().await;
    let client = s.client().await.unwrap();
    let cases: Vec<(&str, &str, &str, &[u8], u16)> = vec![
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            b"{not json",
            400,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            b"[1,2]",
            400,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            br#"{"metadata":"x"}"#,
            422,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            br#"{"kind":"Secret","metadata":{"name":"a"}}"#,
            400,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            br#"{"metadata":{"name":"a"},"data":{"k":5}}"#,
            400,
        ),
        (
            "POST",
            "/apis/test.mcs.dev/v1/namespaces/default/widgets",
            "application/json",
            br#"{"metadata":{"name":"w"},"spec":"str"}"#,
            422,
        ),
        (
            "POST",
            "/apis/test.mcs.dev/v1/namespaces/default/widgets",
            "application/json",
            br#"{"metadata":{"name":"w2","labels":5}}"#,
            400,
        ),
        (
            "GET",
            "/api/v1/namespaces/default/configmaps?labelSelector=a%20in%20b",
            "",
            b"",
            400,
        ),
        (
            "GET",
            "/api/v1/namespaces/default/configmaps?limit=abc",
            "",
            b"",
            400,
        ),
        (
            "GET",
            "/api/v1/namespaces/default/configmaps?continue=zzz",
            "",
            b"",
            400,
        ),
        (
            "GET",
            "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=abc",
            "",
            b"",
            400,
        ),
        (
            "GET",
            "/api/v1/namespaces/default/configmaps?watch=1&sendInitialEvents=true",
            "",
            b"",
            422,
        ),
        ("GET", "/apis/nope/v1/things", "", b"", 404),
        (
            "GET",
            "/api/v1/namespaces/default/configmaps/a/b/c/d",
            "",
            b"",
            404,
        ),
        (
            "PUT",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            b"{}",
            405,
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/configmaps/missing",
            "application/merge-patch+json",
            b"{}",
            404,
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/configmaps/missing",
            "text/plain",
            b"{}",
            415,
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/configmaps/missing",
            "application/apply-patch+yaml",
            b"kind: ConfigMap",
            400,
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/configmaps/x?fieldManager=m",
            "application/apply-patch+yaml",
            b": : :",
            400,
        ),
        (
            "DELETE",
            "/api/v1/namespaces/default/configmaps/missing",
            "application/json",
            b"{\"propagationPolicy\":\"Sideways\"}",
            404,
        ),
        (
            "POST",
            "/__test/faults",
            "application/json",
            b"{\"fail\":[{\"verb\":\"get\",\"count\":1,\"code\":418}]}",
            400,
        ),
    ];
    for (method, path, ct, body, want) in cases {
        let mut req = http::Request::builder().method(method).uri(path);
        if !ct.is_empty() {
            req = req.header("content-type", ct);
        }
        let req = req.body(body.to_vec()).unwrap();
        let got = match client.request_text(req).await {
            Ok(text) => panic!("{method} {path}: expected {want}, got success {text}"),
            Err(kube::Error::Api(s)) => s.code,
            Err(other) => panic!("{method} {path}: {other:?}"),
        };
        assert_eq!(got, want, "{method} {path}");
    }
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    assert!(
        cms.list(&ListParams::default()).await.is_ok(),
        "still serving"
    );
}
