//! kube-runtime's watcher, reflector and Controller against the test API server, with both
//! initial-list strategies, across dropped watches, 410 Gone and injected 500/429 bursts.

mod common;

use common::*;
use futures::StreamExt as _;
use kube::api::{
    Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

fn names(store: &Store<DynamicObject>) -> Vec<String> {
    let mut v: Vec<String> = store
        .state()
        .iter()
        .filter_map(|o| o.metadata.name.clone())
        .collect();
    v.sort();
    v
}

async fn has(store: &Store<DynamicObject>, want: &[&str]) {
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    let s = store.clone();
    eventually(
        20,
        &format!("reflector holds exactly {want:?}"),
        move || {
            let s = s.clone();
            let want = want.clone();
            async move { names(&s) == want }
        },
    )
    .await;
}

/// Initial lists so far: LIST calls, or watches with `sendInitialEvents=true`.
fn relists(s: &mcs_testapi::TestApiServer, streaming: bool) -> usize {
    if streaming {
        s.faults()
            .requests()
            .iter()
            .filter(|r| r.verb == "watch" && r.query.contains("sendInitialEvents=true"))
            .count()
    } else {
        s.faults().request_count("list", "widgets")
    }
}

async fn reflector_survives_drops_gone_and_faults(streaming: bool) {
    let s = server().await;
    let client = s.client().await.unwrap();
    let api = widgets(&client, "default");
    let pp = PostParams::default();
    api.create(&pp, &widget("a", json!({}))).await.unwrap();
    let mut wc = watcher::Config::default();
    if streaming {
        wc = wc.streaming_lists();
    }
    let writer = reflector::store::Writer::new(widget_ar());
    let reader = writer.as_reader();
    let stream = reflector::reflector(writer, watcher(api.clone(), wc))
        .default_backoff()
        .applied_objects();
    let task = tokio::spawn(stream.for_each(|_| async {}));
    has(&reader, &["a"]).await;
    api.create(&pp, &widget("b", json!({}))).await.unwrap();
    has(&reader, &["a", "b"]).await;

    // dropped watches resume from the last resourceVersion
    s.faults().drop_watches();
    api.create(&pp, &widget("c", json!({}))).await.unwrap();
    has(&reader, &["a", "b", "c"]).await;

    // bookmarks keep flowing; a quiet period then a change
    tokio::time::sleep(Duration::from_millis(1200)).await;
    api.delete("a", &DeleteParams::default()).await.unwrap();
    has(&reader, &["b", "c"]).await;

    // 410: the watch cannot resume, the watcher re-lists; a deletion in the gap is noticed
    let relists_before = relists(&s, streaming);
    s.faults().fail_next("watch", Some("widgets"), 2, 500);
    s.faults().drop_watches();
    api.delete("b", &DeleteParams::default()).await.unwrap();
    api.create(&pp, &widget("d", json!({}))).await.unwrap();
    s.compact_history();
    has(&reader, &["c", "d"]).await;
    assert!(
        relists(&s, streaming) > relists_before,
        "a 410 forces a new initial list"
    );
    assert!(
        s.faults()
            .requests()
            .iter()
            .any(|r| r.verb == "watch" && r.query.contains("allowWatchBookmarks=true")),
        "watches ask for bookmarks"
    );

    // bursts of 500 and 429 on list/watch are retried
    s.faults().fail_next("list", Some("widgets"), 3, 500);
    s.faults().add(mcs_testapi::FailRule {
        verb: "watch".into(),
        resource: Some("widgets".into()),
        count: 3,
        code: 429,
        retry_after_seconds: Some(0),
    });
    s.faults().drop_watches();
    api.create(&pp, &widget("e", json!({}))).await.unwrap();
    has(&reader, &["c", "d", "e"]).await;
    task.abort();
}

#[tokio::test]
async fn watcher_list_watch() {
    reflector_survives_drops_gone_and_faults(false).await;
}

#[tokio::test]
async fn watcher_streaming_list() {
    reflector_survives_drops_gone_and_faults(true).await;
}

#[derive(Debug, thiserror::Error)]
#[error("reconcile failed: {0}")]
struct ReconcileError(#[from] kube::Error);

async fn reconcile(
    obj: Arc<DynamicObject>,
    api: Arc<Api<DynamicObject>>,
) -> Result<Action, ReconcileError> {
    let name = obj.metadata.name.clone().unwrap_or_default();
    let generation = obj.metadata.generation.unwrap_or_default();
    let patch = json!({"status": {"observedGeneration": generation, "phase": "Ready"}});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    Ok(Action::await_change())
}

fn error_policy(_: Arc<DynamicObject>, _: &ReconcileError, _: Arc<Api<DynamicObject>>) -> Action {
    Action::requeue(Duration::from_millis(100))
}

async fn all_observed(api: &Api<DynamicObject>, n: usize) {
    let api = api.clone();
    eventually(20, "controller observed every generation", move || {
        let api = api.clone();
        async move {
            let list = api.list(&Default::default()).await.unwrap();
            list.items.len() == n
                && list.items.iter().all(|o| {
                    o.data["status"]["observedGeneration"].as_i64() == o.metadata.generation
                })
        }
    })
    .await;
}

async fn controller_converges(streaming: bool) {
    let s = server().await;
    let client = s.client().await.unwrap();
    let api = widgets(&client, "default");
    let pp = PostParams::default();
    for n in ["x", "y"] {
        api.create(&pp, &widget(n, json!({"size": "1"})))
            .await
            .unwrap();
    }
    let mut wc = watcher::Config::default();
    if streaming {
        wc = wc.streaming_lists();
    }
    let ctrl = Controller::new_with(api.clone(), wc, widget_ar())
        .run(reconcile, error_policy, Arc::new(api.clone()))
        .for_each(|_| async {});
    let task = tokio::spawn(ctrl);
    all_observed(&api, 2).await;
    api.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"size": "2"}})),
    )
    .await
    .unwrap();
    all_observed(&api, 2).await;
    s.faults().drop_watches();
    s.faults().fail_next("patch", Some("widgets"), 2, 500);
    api.create(&pp, &widget("z", json!({}))).await.unwrap();
    all_observed(&api, 3).await;
    s.faults().drop_watches();
    s.compact_history();
    api.patch(
        "y",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"size": "3"}})),
    )
    .await
    .unwrap();
    all_observed(&api, 3).await;
    task.abort();
}

#[tokio::test]
async fn controller_list_watch() {
    controller_converges(false).await;
}

#[tokio::test]
async fn controller_streaming_list() {
    controller_converges(true).await;
}

#[tokio::test]
async fn raw_watch_semantics() {
    let s = server().await;
    let client = s.client().await.unwrap();
    let api = widgets(&client, "default");
    let pp = PostParams::default();
    let a = api.create(&pp, &widget("a", json!({}))).await.unwrap();
    let rv = a.metadata.resource_version.clone().unwrap();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"sel": "yes"}}})),
    )
    .await
    .unwrap();
    api.delete("a", &DeleteParams::default()).await.unwrap();

    let wp = WatchParams::default().timeout(2);
    let mut stream = api.watch(&wp, &rv).await.unwrap().boxed();
    let mut types = vec![];
    while let Some(ev) = stream.next().await {
        match ev.unwrap() {
            WatchEvent::Added(_) => types.push("ADDED"),
            WatchEvent::Modified(_) => types.push("MODIFIED"),
            WatchEvent::Deleted(o) => {
                assert!(
                    o.metadata.resource_version.unwrap().parse::<u64>().unwrap()
                        > rv.parse().unwrap()
                );
                types.push("DELETED")
            }
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(types, ["MODIFIED", "DELETED"]);

    // label-selected watch: becoming selected is ADDED
    api.create(&pp, &widget("b", json!({}))).await.unwrap();
    let now = s.resource_version().to_string();
    let mut sel = api
        .watch(&WatchParams::default().labels("sel=yes").timeout(2), &now)
        .await
        .unwrap()
        .boxed();
    api.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"sel": "yes"}}})),
    )
    .await
    .unwrap();
    match sel.next().await.unwrap().unwrap() {
        WatchEvent::Added(o) => assert_eq!(o.metadata.name.as_deref(), Some("b")),
        other => panic!("expected ADDED, got {other:?}"),
    }

    s.compact_history();
    let mut old = api
        .watch(&WatchParams::default().timeout(2), &rv)
        .await
        .unwrap()
        .boxed();
    match old.next().await.unwrap().unwrap() {
        WatchEvent::Error(e) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
            assert!(e.message.contains("too old resource version"));
        }
        other => panic!("expected 410, got {other:?}"),
    }
}

type FinCtx = (Api<DynamicObject>, Arc<std::sync::Mutex<Vec<String>>>);

#[derive(Debug, thiserror::Error)]
#[error("finalizer failed: {0}")]
struct FinalizerError(#[from] kube::runtime::finalizer::Error<kube::Error>);

#[tokio::test]
async fn controller_with_finalizer_helper() {
    use kube::runtime::finalizer::{Event as Fin, finalizer};
    use std::sync::Mutex;
    let s = server().await;
    let client = s.client().await.unwrap();
    let api = widgets(&client, "default");
    let cleaned: Arc<Mutex<Vec<String>>> = Arc::default();
    let ctx = Arc::new((api.clone(), cleaned.clone()));
    let ctrl = Controller::new_with(api.clone(), watcher::Config::default(), widget_ar())
        .run(
            |obj: Arc<DynamicObject>, ctx: Arc<FinCtx>| async move {
                let (api, cleaned) = (&ctx.0, ctx.1.clone());
                finalizer(api, "test.mcs.dev/cleanup", obj, |ev| async move {
                    if let Fin::Cleanup(o) = ev {
                        cleaned
                            .lock()
                            .unwrap()
                            .push(o.metadata.name.clone().unwrap_or_default());
                    }
                    Ok::<_, kube::Error>(Action::await_change())
                })
                .await
                .map_err(FinalizerError::from)
            },
            |_, _: &FinalizerError, _| Action::requeue(Duration::from_millis(100)),
            ctx,
        )
        .for_each(|_| async {});
    let task = tokio::spawn(ctrl);
    api.create(&PostParams::default(), &widget("f", json!({})))
        .await
        .unwrap();
    let a = api.clone();
    eventually(10, "finalizer added", move || {
        let a = a.clone();
        async move {
            a.get("f")
                .await
                .unwrap()
                .metadata
                .finalizers
                .unwrap_or_default()
                .len()
                == 1
        }
    })
    .await;
    api.delete("f", &DeleteParams::default()).await.unwrap();
    let a = api.clone();
    eventually(10, "object gone after cleanup", move || {
        let a = a.clone();
        async move { a.get_opt("f").await.unwrap().is_none() }
    })
    .await;
    assert_eq!(cleaned.lock().unwrap().as_slice(), ["f"]);
    task.abort();
}
