//! Shared helpers for the integration tests.
#![allow(dead_code)]

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use mcs_testapi::{TestApiConfig, TestApiServer};
use serde_json::{Value, json};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub async fn server() -> TestApiServer {
    server_with(TestApiConfig::default()).await
}

pub async fn server_with(cfg: TestApiConfig) -> TestApiServer {
    TestApiServer::start(TestApiConfig {
        crd_dir: Some(fixtures()),
        bookmark_interval: Duration::from_millis(500),
        ..cfg
    })
    .await
    .expect("server starts")
}

pub fn widget_ar() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("test.mcs.dev", "v1", "Widget"),
        "widgets",
    )
}

pub fn widgets(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &widget_ar())
}

pub fn widget(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "test.mcs.dev/v1",
        "kind": "Widget",
        "metadata": { "name": name },
        "spec": spec,
    }))
    .expect("valid widget")
}

pub fn status_of(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Poll `f` until it returns true or `secs` pass.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if f().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
