//! Server-side printing: `meta.k8s.io` Table responses for get and list, negotiated from the
//! `Accept` header exactly as kubectl sends it, through a real kube client.

mod common;

use common::*;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use mcs_testapi::{TestApiConfig, TestApiServer};
use serde_json::{Value, json};

const KUBECTL_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";

async fn table_server() -> TestApiServer {
    TestApiServer::start(TestApiConfig {
        crd_dir: Some(fixtures().join("table")),
        ..Default::default()
    })
    .await
    .expect("server starts")
}

fn gizmos(client: &kube::Client) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("table.mcs.dev", "v1", "Gizmo"),
        "gizmos",
    );
    Api::namespaced_with(client.clone(), "default", &ar)
}

/// GET `path` with `accept` (none when empty), parsed as JSON.
async fn get(client: &kube::Client, path: &str, accept: &str) -> Result<Value, kube::Error> {
    let mut req = http::Request::get(path);
    if !accept.is_empty() {
        req = req.header(http::header::ACCEPT, accept);
    }
    let text = client
        .request_text(req.body(vec![]).expect("request"))
        .await?;
    Ok(serde_json::from_str(&text).expect("JSON body"))
}

fn column_names(table: &Value) -> Vec<&str> {
    table["columnDefinitions"]
        .as_array()
        .expect("columnDefinitions")
        .iter()
        .map(|c| c["name"].as_str().expect("column name"))
        .collect()
}

fn is_age(v: &Value) -> bool {
    v.as_str()
        .and_then(|s| s.strip_suffix('s'))
        .is_some_and(|n| n.parse::<u32>().is_ok())
}

async fn make_gizmos(client: &kube::Client) {
    let api = gizmos(client);
    let g1: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "table.mcs.dev/v1", "kind": "Gizmo",
        "metadata": {"name": "g1", "labels": {"tier": "a"}},
        "spec": {"color": "red", "replicas": 3, "enabled": true, "ports": [{"port": 8080}, {"port": 9090}]},
    }))
    .expect("gizmo");
    api.create(&PostParams::default(), &g1).await.expect("g1");
    let started = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(5);
    let status = json!({"status": {
        "progress": 42.5,
        "startTime": started.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "conditions": [
            {"type": "Progressing", "status": "False", "reason": "Idle"},
            {"type": "Ready", "status": "True", "reason": "Done"},
        ],
    }});
    api.patch_status("g1", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("g1 status");
    let g2: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "table.mcs.dev/v1", "kind": "Gizmo",
        "metadata": {"name": "g2"},
        "spec": {},
    }))
    .expect("gizmo");
    api.create(&PostParams::default(), &g2).await.expect("g2");
}

#[tokio::test]
async fn crd_printer_columns_and_cells() {
    let server = table_server().await;
    let client = server.client().await.expect("client");
    make_gizmos(&client).await;

    let t = get(
        &client,
        "/apis/table.mcs.dev/v1/namespaces/default/gizmos",
        KUBECTL_ACCEPT,
    )
    .await
    .expect("table list");
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
    assert!(t["metadata"]["resourceVersion"].is_string(), "{t}");
    assert_eq!(
        column_names(&t),
        [
            "Name",
            "Color",
            "Replicas",
            "First Port",
            "Ready",
            "Reason",
            "Progress",
            "Enabled",
            "Started",
            "Age"
        ]
    );
    let cols = &t["columnDefinitions"];
    assert_eq!(cols[0]["type"], "string");
    assert_eq!(cols[0]["format"], "name");
    assert_eq!(cols[1]["description"], "The gizmo's colour");
    assert_eq!(
        cols[2]["description"],
        "Custom resource definition column (in JSONPath format): .spec.replicas"
    );
    assert_eq!(cols[2]["type"], "integer");
    assert_eq!(cols[3]["priority"], 1);
    assert_eq!(cols[4]["priority"], 0);
    assert_eq!(cols[6]["type"], "number");
    assert_eq!(cols[6]["format"], "float");
    assert_eq!(cols[9]["type"], "date");

    let rows = t["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2);
    let c1 = rows[0]["cells"].as_array().expect("cells");
    assert_eq!(
        c1[..8],
        [
            json!("g1"),
            json!("red"),
            json!(3),
            json!(8080),
            json!("True"),
            json!("Done"),
            json!(42.5),
            json!(true)
        ]
    );
    assert_eq!(c1[8], "5h", "a date column is an age");
    assert!(is_age(&c1[9]), "Age cell: {}", c1[9]);
    let c2 = rows[1]["cells"].as_array().expect("cells");
    assert_eq!(c2[0], "g2");
    assert!(
        c2[1..9].iter().all(Value::is_null),
        "missing fields and unmatched filters are null: {c2:?}"
    );
    assert!(is_age(&c2[9]), "Age cell: {}", c2[9]);

    let obj = &rows[0]["object"];
    assert_eq!(obj["kind"], "PartialObjectMetadata");
    assert_eq!(obj["apiVersion"], "meta.k8s.io/v1");
    assert_eq!(obj["metadata"]["name"], "g1");
    assert_eq!(obj["metadata"]["namespace"], "default");
    assert_eq!(obj["metadata"]["labels"]["tier"], "a");
    assert!(obj.get("spec").is_none(), "metadata only: {obj}");

    // get: one row, and the object's resourceVersion.
    let one = get(
        &client,
        "/apis/table.mcs.dev/v1/namespaces/default/gizmos/g1",
        KUBECTL_ACCEPT,
    )
    .await
    .expect("table get");
    assert_eq!(one["kind"], "Table");
    assert_eq!(one["rows"].as_array().map(Vec::len), Some(1));
    assert_eq!(one["rows"][0]["cells"][4], "True");
    assert_eq!(
        one["metadata"]["resourceVersion"],
        one["rows"][0]["object"]["metadata"]["resourceVersion"]
    );

    // All namespaces: rows keep their namespace for kubectl's NAMESPACE column.
    let all = get(&client, "/apis/table.mcs.dev/v1/gizmos", KUBECTL_ACCEPT)
        .await
        .expect("all namespaces");
    assert_eq!(all["rows"][1]["object"]["metadata"]["namespace"], "default");
}

#[tokio::test]
async fn include_object_pagination_and_negotiation() {
    let server = table_server().await;
    let client = server.client().await.expect("client");
    make_gizmos(&client).await;
    let list = "/apis/table.mcs.dev/v1/namespaces/default/gizmos";

    let full = get(
        &client,
        &format!("{list}?includeObject=Object"),
        KUBECTL_ACCEPT,
    )
    .await
    .expect("includeObject=Object");
    let obj = &full["rows"][0]["object"];
    assert_eq!(obj["kind"], "Gizmo");
    assert_eq!(obj["apiVersion"], "table.mcs.dev/v1");
    assert_eq!(obj["spec"]["color"], "red");

    let none = get(
        &client,
        &format!("{list}?includeObject=None"),
        KUBECTL_ACCEPT,
    )
    .await
    .expect("includeObject=None");
    assert!(none["rows"][0]["object"].is_null());
    assert_eq!(none["rows"][0]["cells"][0], "g1");

    match get(
        &client,
        &format!("{list}?includeObject=All"),
        KUBECTL_ACCEPT,
    )
    .await
    {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 400);
            assert!(s.message.contains("includeObject"), "{}", s.message);
        }
        other => panic!("expected 400, got {other:?}"),
    }
    // Without a Table, includeObject is not looked at.
    let plain = get(
        &client,
        &format!("{list}?includeObject=All"),
        "application/json",
    )
    .await
    .expect("plain list");
    assert_eq!(plain["kind"], "GizmoList");

    let page = get(&client, &format!("{list}?limit=1"), KUBECTL_ACCEPT)
        .await
        .expect("page");
    assert_eq!(page["rows"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["metadata"]["remainingItemCount"], 1);
    let token = page["metadata"]["continue"].as_str().expect("continue");
    let rest = get(
        &client,
        &format!("{list}?limit=1&continue={token}"),
        KUBECTL_ACCEPT,
    )
    .await
    .expect("second page");
    assert_eq!(rest["rows"][0]["cells"][0], "g2");
    assert!(rest["metadata"].get("continue").is_none(), "{rest}");

    let beta = get(
        &client,
        list,
        "application/json;as=Table;v=v1beta1;g=meta.k8s.io",
    )
    .await
    .expect("v1beta1");
    assert_eq!(beta["apiVersion"], "meta.k8s.io/v1beta1");
    assert_eq!(
        beta["rows"][0]["object"]["apiVersion"],
        "meta.k8s.io/v1beta1"
    );

    // JSON first, unsupported representations, or no Accept: the plain list.
    for accept in [
        "",
        "application/json",
        "*/*",
        "application/json, application/json;as=Table;v=v1;g=meta.k8s.io",
        "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json",
        "application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io,application/json",
        "application/json;as=Table;v=v2;g=meta.k8s.io",
    ] {
        let v = get(&client, list, accept).await.expect("plain list");
        assert_eq!(v["kind"], "GizmoList", "Accept: {accept}");
    }
    // q-values beat position.
    let q = get(
        &client,
        list,
        "application/json;q=0.5,application/json;as=Table;v=v1;g=meta.k8s.io",
    )
    .await
    .expect("q");
    assert_eq!(q["kind"], "Table");

    // Errors stay Status objects.
    match get(&client, &format!("{list}/nope"), KUBECTL_ACCEPT).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 404),
        other => panic!("expected 404, got {other:?}"),
    }
}

#[tokio::test]
async fn default_age_column_builtins_and_categories() {
    let server = table_server().await;
    let client = server.client().await.expect("client");

    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("table.mcs.dev", "v1", "PlainThing"),
        "plainthings",
    );
    let things: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let thing: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "table.mcs.dev/v1", "kind": "PlainThing", "metadata": {"name": "t1"},
    }))
    .expect("thing");
    things
        .create(&PostParams::default(), &thing)
        .await
        .expect("t1");
    let t = get(
        &client,
        "/apis/table.mcs.dev/v1/plainthings",
        KUBECTL_ACCEPT,
    )
    .await
    .expect("plainthings");
    assert_eq!(column_names(&t), ["Name", "Age"]);
    assert_eq!(t["columnDefinitions"][1]["type"], "date");
    assert_eq!(t["rows"][0]["cells"][0], "t1");
    assert!(is_age(&t["rows"][0]["cells"][1]), "{t}");

    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "default");
    let cm = serde_json::from_value(json!({
        "metadata": {"name": "cm1"}, "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AA=="},
    }))
    .expect("configmap");
    cms.create(&PostParams::default(), &cm).await.expect("cm1");
    let t = get(
        &client,
        "/api/v1/namespaces/default/configmaps",
        KUBECTL_ACCEPT,
    )
    .await
    .expect("configmaps");
    assert_eq!(column_names(&t), ["Name", "Data", "Age"]);
    assert_eq!(t["rows"][0]["cells"][0], "cm1");
    assert_eq!(t["rows"][0]["cells"][1], 3);
    assert!(is_age(&t["rows"][0]["cells"][2]), "{t}");

    let t = get(&client, "/api/v1/namespaces/default", KUBECTL_ACCEPT)
        .await
        .expect("namespace");
    assert_eq!(column_names(&t), ["Name", "Status", "Age"]);
    assert_eq!(t["rows"][0]["cells"][0], "default");
    assert_eq!(t["rows"][0]["cells"][1], "Active");

    let t = get(
        &client,
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/gizmos.table.mcs.dev",
        KUBECTL_ACCEPT,
    )
    .await
    .expect("crd");
    assert_eq!(column_names(&t), ["Name", "Created At"]);
    let created = t["rows"][0]["cells"][1].as_str().expect("timestamp");
    assert!(created.parse::<jiff::Timestamp>().is_ok(), "{created}");

    // kubectl resolves `get tabletest` through the categories in discovery.
    let rl = get(&client, "/apis/table.mcs.dev/v1", "")
        .await
        .expect("v1");
    let cats: Vec<&Value> = rl["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter(|r| r["categories"] == json!(["tabletest"]))
        .collect();
    assert_eq!(cats.len(), 2, "{rl}");
    let agg = get(
        &client,
        "/apis",
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
    )
    .await
    .expect("aggregated");
    let group = agg["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|g| g["metadata"]["name"] == "table.mcs.dev")
        .expect("group");
    assert_eq!(
        group["versions"][0]["resources"][0]["categories"],
        json!(["tabletest"])
    );
}
