//! The HTTP(S) front end: routing, discovery, verbs and watch streams.

use crate::error::{ApiError, ApiResult};
use crate::faults::{FaultRequest, Faults};
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{DeleteOpts, ListOpts, PatchKind, Store, Sub, WatchOpts, WriteOpts};
use crate::types::{self, ResourceType};
use bytes::Bytes;
use futures::SinkExt as _;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

/// Response body type.
pub(crate) type Body = UnsyncBoxBody<Bytes, std::io::Error>;

const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Everything a request handler needs.
pub(crate) struct Ctx {
    pub store: Arc<Store>,
    pub faults: Faults,
    pub token: String,
    pub bookmark_interval: Duration,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

fn respond(code: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

fn json_resp(code: u16, v: &Value) -> Response<Body> {
    respond(code, "application/json", v.to_string())
}

fn err_resp(e: &ApiError) -> Response<Body> {
    if e.is_page_not_found() {
        return respond(404, "text/plain; charset=utf-8", "404 page not found\n");
    }
    let mut r = json_resp(e.code, &e.to_status());
    if let Some(s) = e.retry_after
        && let Ok(v) = header::HeaderValue::from_str(&s.to_string())
    {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// Resolves once shutdown was requested.
pub(crate) async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Accept connections until shutdown.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ctx: Arc<Ctx>,
) {
    let mut sd = ctx.shutdown.clone();
    loop {
        tokio::select! {
            _ = crate::server::stopped(&mut sd) => break,
            acc = listener.accept() => {
                let Ok((stream, _)) = acc else { continue };
                let _ = stream.set_nodelay(true);
                let ctx = ctx.clone();
                match tls.clone() {
                    Some(acceptor) => {
                        tokio::spawn(async move {
                            if let Ok(s) = acceptor.accept(stream).await {
                                serve_conn(s, ctx).await;
                            }
                        });
                    }
                    None => {
                        tokio::spawn(serve_conn(stream, ctx));
                    }
                }
            }
        }
    }
}

async fn serve_conn<S>(io: S, ctx: Arc<Ctx>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut sd = ctx.shutdown.clone();
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req| {
        let ctx = svc_ctx.clone();
        async move { Ok::<_, Infallible>(handle(ctx, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc);
    tokio::select! {
        _ = conn => {}
        _ = crate::server::stopped(&mut sd) => {}
    }
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

async fn read_body(req: Request<Incoming>) -> ApiResult<Bytes> {
    req.into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))
}

async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/healthz" | "/readyz" | "/livez" => return respond(200, "text/plain", "ok"),
        "/version" => return json_resp(200, &version()),
        _ => {}
    }
    let authorized = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {}", ctx.token));
    if !authorized {
        return err_resp(&ApiError::unauthorized());
    }
    if path == "/__test/faults" {
        return faults_endpoint(&ctx, req).await;
    }
    let delay = ctx.faults.delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    if req.method() == Method::GET
        && let Some(resp) = openapi_v3(&ctx.store, &segs)
    {
        return resp;
    }
    if req.method() == Method::GET {
        let accept = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let aggregated = accept.contains("as=APIGroupDiscoveryList");
        if let Some(resp) = discovery(&ctx.store, &segs, aggregated) {
            return resp;
        }
    }
    let method = req.method().clone();
    let resp = match resource_request(&ctx, req, &segs).await {
        Ok(r) => r,
        Err(e) => err_resp(&e),
    };
    tracing::debug!(%method, %path, status = resp.status().as_u16(), "mcs-testapi request");
    resp
}

async fn faults_endpoint(ctx: &Ctx, req: Request<Incoming>) -> Response<Body> {
    match *req.method() {
        Method::GET => json_resp(200, &ctx.faults.describe()),
        Method::POST => {
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(e) => return err_resp(&e),
            };
            let fr: FaultRequest = match serde_json::from_slice(&body) {
                Ok(f) => f,
                Err(e) => {
                    return err_resp(&ApiError::bad_request(format!("bad fault request: {e}")));
                }
            };
            match ctx.faults.apply(&fr) {
                Ok(()) => json_resp(200, &ctx.faults.describe()),
                Err(e) => err_resp(&e),
            }
        }
        _ => err_resp(&ApiError::method_not_allowed()),
    }
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "36",
        "emulationMajor": "1",
        "emulationMinor": "36",
        "gitVersion": "v1.36.0-mcs-testapi",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.25",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// Served group versions: group -> (versions in order, preferred).
fn groups(types: &[ResourceType]) -> BTreeMap<String, (Vec<String>, String)> {
    let mut out: BTreeMap<String, (Vec<String>, String)> = BTreeMap::new();
    for t in types {
        let e = out
            .entry(t.group.clone())
            .or_insert_with(|| (vec![], t.storage_version.clone()));
        if !e.0.contains(&t.version) {
            e.0.push(t.version.clone());
        }
    }
    for (vs, pref) in out.values_mut() {
        if !vs.contains(pref)
            && let Some(v) = vs.first()
        {
            *pref = v.clone();
        }
        let p = pref.clone();
        vs.sort_by_key(|v| v != &p);
    }
    out
}

fn gv(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

fn resource_list(types: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for t in types
        .iter()
        .filter(|t| t.group == group && t.version == version)
    {
        let mut r = json!({
            "name": t.plural,
            "singularName": t.singular,
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": ResourceType::verbs(),
        });
        if !t.short_names.is_empty() {
            r["shortNames"] = json!(t.short_names);
        }
        if !t.categories.is_empty() {
            r["categories"] = json!(t.categories);
        }
        resources.push(r);
        if t.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        if t.scale.is_some() {
            resources.push(json!({
                "name": format!("{}/scale", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv(group, version),
        "resources": resources,
    }))
}

fn api_group(name: &str, versions: &[String], preferred: &str) -> Value {
    json!({
        "name": name,
        "versions": versions.iter().map(|v| json!({"groupVersion": gv(name, v), "version": v})).collect::<Vec<_>>(),
        "preferredVersion": {"groupVersion": gv(name, preferred), "version": preferred},
    })
}

fn aggregated(types: &[ResourceType], core: bool) -> Value {
    let mut items = Vec::new();
    for (g, (versions, _)) in groups(types) {
        if g.is_empty() != core {
            continue;
        }
        let mut vs = Vec::new();
        for v in &versions {
            let mut resources = Vec::new();
            for t in types.iter().filter(|t| t.group == g && &t.version == v) {
                let rk = json!({"group": t.group, "version": t.version, "kind": t.kind});
                let mut subs = Vec::new();
                if t.status_subresource {
                    subs.push(json!({"subresource": "status", "responseKind": rk, "verbs": ["get", "patch", "update"]}));
                }
                if t.scale.is_some() {
                    subs.push(json!({"subresource": "scale", "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"}, "verbs": ["get", "patch", "update"]}));
                }
                resources.push(json!({
                    "resource": t.plural,
                    "responseKind": rk,
                    "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
                    "singularResource": t.singular,
                    "verbs": ResourceType::verbs(),
                    "shortNames": t.short_names,
                    "categories": t.categories,
                    "subresources": subs,
                }));
            }
            vs.push(json!({"version": v, "resources": resources, "freshness": "Current"}));
        }
        items.push(json!({"metadata": {"name": g}, "versions": vs}));
    }
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

fn discovery(store: &Store, segs: &[&str], agg: bool) -> Option<Response<Body>> {
    let types = store.types();
    match segs {
        ["api"] if agg => Some(respond(
            200,
            AGGREGATED,
            aggregated(&types, true).to_string(),
        )),
        ["api"] => Some(json_resp(
            200,
            &json!({
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
            }),
        )),
        ["api", v] => Some(match resource_list(&types, "", v) {
            Some(l) => json_resp(200, &l),
            None => err_resp(&ApiError::path_not_found()),
        }),
        ["apis"] if agg => Some(respond(
            200,
            AGGREGATED,
            aggregated(&types, false).to_string(),
        )),
        ["apis"] => {
            let gs: Vec<Value> = groups(&types)
                .iter()
                .filter(|(g, _)| !g.is_empty())
                .map(|(g, (vs, p))| api_group(g, vs, p))
                .collect();
            Some(json_resp(
                200,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": gs}),
            ))
        }
        ["apis", g] => Some(match groups(&types).get(*g) {
            Some((vs, p)) if !g.is_empty() => {
                let mut v = api_group(g, vs, p);
                v["kind"] = json!("APIGroup");
                v["apiVersion"] = json!("v1");
                json_resp(200, &v)
            }
            _ => err_resp(&ApiError::page_not_found()),
        }),
        ["apis", g, v] => Some(match resource_list(&types, g, v) {
            Some(l) => json_resp(200, &l),
            None => err_resp(&ApiError::page_not_found()),
        }),
        _ => None,
    }
}

/// The OpenAPI v3 path of a served group version (`api/v1`, `apis/<group>/<version>`).
fn openapi_gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// A minimal OpenAPI v3 document for one group version: each kind's PATCH operation with
/// its `x-kubernetes-group-version-kind` and the `fieldValidation` parameter. That is what
/// kubectl reads to learn that the server validates fields itself (then it sends
/// `fieldValidation=Strict` instead of validating on the client against full schemas, which
/// this server does not publish).
fn openapi_gv_doc(types: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    for t in types
        .iter()
        .filter(|t| t.group == group && t.version == version)
    {
        let base = format!("/{}", openapi_gv_path(group, version));
        let path = if t.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
        } else {
            format!("{base}/{}/{{name}}", t.plural)
        };
        paths.insert(
            path,
            json!({"patch": {
                "operationId": format!("patch{}", t.kind),
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": t.kind},
                "parameters": [{
                    "name": "fieldValidation",
                    "in": "query",
                    "description": "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields: Ignore, Warn or Strict.",
                    "schema": {"type": "string", "uniqueItems": true},
                }],
                "responses": {"200": {"description": "OK"}},
            }}),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.36.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

/// `/openapi/v3` (the index of group versions) and `/openapi/v3/<group version>`.
fn openapi_v3(store: &Store, segs: &[&str]) -> Option<Response<Body>> {
    let ["openapi", "v3", rest @ ..] = segs else {
        return None;
    };
    let types = store.types();
    let mut gvs: Vec<(String, String)> = types
        .iter()
        .map(|t| (t.group.clone(), t.version.clone()))
        .collect();
    gvs.sort();
    gvs.dedup();
    if rest.is_empty() {
        let mut paths = serde_json::Map::new();
        for (g, v) in &gvs {
            let doc = openapi_gv_doc(&types, g, v)?;
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            std::hash::Hash::hash(&doc.to_string(), &mut hasher);
            let hash = format!("{:016X}", std::hash::Hasher::finish(&hasher));
            let path = openapi_gv_path(g, v);
            paths.insert(
                path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
            );
        }
        return Some(json_resp(200, &json!({ "paths": paths })));
    }
    let wanted = rest.join("/");
    let doc = gvs
        .iter()
        .find(|(g, v)| openapi_gv_path(g, v) == wanted)
        .and_then(|(g, v)| openapi_gv_doc(&types, g, v));
    Some(match doc {
        Some(d) => json_resp(200, &d),
        None => err_resp(&ApiError::page_not_found()),
    })
}

struct Route {
    rt: ResourceType,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

/// Whether `group` is one of the built-in groups a real apiserver registers (it answers an
/// unknown resource there with a `Status`; a CRD's group or an unknown group gets the plain
/// `404 page not found`).
fn builtin_group(group: &str) -> bool {
    types::builtins().iter().any(|t| t.group == group)
}

fn route(store: &Store, segs: &[&str]) -> ApiResult<Route> {
    let (group, version, rest) = match segs {
        ["api", v, rest @ ..] if *v == "v1" => ("", *v, rest),
        ["api", ..] => return Err(ApiError::path_not_found()),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::page_not_found()),
    };
    let not_found = || {
        if builtin_group(group) {
            ApiError::path_not_found()
        } else {
            ApiError::page_not_found()
        }
    };
    let (ns, rest) = if rest.len() >= 3
        && rest[0] == "namespaces"
        && !matches!(rest[2], "status" | "finalize")
    {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(n.to_string()), None),
        [p, n, s] => (*p, Some(n.to_string()), Some(s.to_string())),
        _ => return Err(not_found()),
    };
    let rt = store
        .find_type(group, version, plural)
        .ok_or_else(not_found)?;
    if ns.is_some() && !rt.namespaced {
        return Err(not_found());
    }
    if name.is_some() && rt.namespaced && ns.is_none() {
        return Err(not_found());
    }
    match sub.as_deref() {
        None => {}
        Some("status") if rt.status_subresource => {}
        Some("scale") if rt.scale.is_some() => {}
        // The custom resource handler answers an unknown subresource as a missing object.
        Some(_) if rt.custom => {
            return Err(ApiError::not_found(
                &rt.group,
                &rt.plural,
                name.as_deref().unwrap_or_default(),
            ));
        }
        Some(_) => return Err(ApiError::path_not_found()),
    }
    Ok(Route { rt, ns, name, sub })
}

fn truthy(q: &HashMap<String, String>, k: &str) -> bool {
    matches!(q.get(k).map(String::as_str), Some("true" | "1"))
}

fn nonempty(q: &HashMap<String, String>, k: &str) -> Option<String> {
    q.get(k).filter(|s| !s.is_empty()).cloned()
}

fn parse_json(body: &[u8]) -> ApiResult<Value> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding the request body as JSON: {e}")))
}

async fn resource_request(
    ctx: &Arc<Ctx>,
    req: Request<Incoming>,
    segs: &[&str],
) -> ApiResult<Response<Body>> {
    let r = route(&ctx.store, segs)?;
    let q = parse_query(req.uri().query());
    let method = req.method().clone();
    let table = crate::table::negotiate(req.headers());
    let watch = truthy(&q, "watch");
    let verb = match (&method, &r.name) {
        (&Method::GET, None) if watch => "watch",
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) => "get",
        (&Method::POST, None) if r.ns.is_some() || !r.rt.namespaced => "create",
        (&Method::PUT, Some(_)) => "update",
        (&Method::PATCH, Some(_)) => "patch",
        (&Method::DELETE, Some(_)) if r.sub.is_none() => "delete",
        (&Method::DELETE, None) => "deletecollection",
        _ => return Err(ApiError::method_not_allowed()),
    };
    let raw_query = req.uri().query().unwrap_or_default().to_string();
    let sub_name = r.sub.clone().unwrap_or_default();
    if let Some(e) = ctx.faults.check(verb, &r.rt.plural, &sub_name, &raw_query) {
        return Err(e);
    }
    let rt = &r.rt;
    let ns = r.ns.as_deref();
    let nsv = ns.unwrap_or_default();
    let name = r.name.clone().unwrap_or_default();
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown")
        .to_string();
    let dry_run = q.get("dryRun").is_some_and(|v| v == "All");
    let strict = q.get("fieldValidation").is_some_and(|v| v == "Strict");
    let wo = WriteOpts {
        manager: nonempty(&q, "fieldManager").unwrap_or(user_agent),
        dry_run,
        strict,
    };
    let sub = match r.sub.as_deref() {
        Some("status") => Sub::Status,
        _ => Sub::Main,
    };
    let is_scale = r.sub.as_deref() == Some("scale");
    match verb {
        "watch" => {
            let wopts = WatchOpts {
                label: LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))?,
                field: FieldSelector::parse(
                    q.get("fieldSelector").map_or("", String::as_str),
                    &rt.field_paths(),
                )?,
                rv: nonempty(&q, "resourceVersion"),
                rv_match: nonempty(&q, "resourceVersionMatch"),
                send_initial_events: truthy(&q, "sendInitialEvents"),
            };
            let timeout = match q.get("timeoutSeconds") {
                Some(s) => s
                    .parse::<u64>()
                    .map_err(|_| ApiError::bad_request("invalid timeoutSeconds"))?,
                None => 1800,
            };
            let bookmarks = truthy(&q, "allowWatchBookmarks");
            watch_response(ctx, rt, ns, &wopts, Duration::from_secs(timeout), bookmarks)
        }
        "list" => {
            let lo = list_opts(rt, &q)?;
            let mut list = ctx.store.list(rt, ns, &lo)?;
            if !rt.custom && table.is_none() {
                // Items of a built-in kind's list carry no apiVersion and kind (the typed
                // list's items are encoded without them); custom resources' do.
                for item in list["items"].as_array_mut().into_iter().flatten() {
                    if let Some(m) = item.as_object_mut() {
                        m.remove("apiVersion");
                        m.remove("kind");
                    }
                }
            }
            read_resp(ctx, rt, table, &q, list)
        }
        "get" if is_scale => Ok(json_resp(200, &ctx.store.get_scale(rt, nsv, &name)?)),
        "get" => read_resp(ctx, rt, table, &q, ctx.store.get(rt, nsv, &name)?),
        "create" => {
            let body = parse_json(&read_body(req).await?)?;
            Ok(json_resp(201, &ctx.store.create(rt, ns, body, &wo)?))
        }
        "update" => {
            let body = parse_json(&read_body(req).await?)?;
            if is_scale {
                return Ok(json_resp(
                    200,
                    &ctx.store.update_scale(rt, nsv, &name, &body, &wo)?,
                ));
            }
            Ok(json_resp(
                200,
                &ctx.store.update(rt, nsv, &name, body, sub, &wo)?,
            ))
        }
        "patch" => {
            let kind = match content_type.as_str() {
                "application/merge-patch+json" => PatchKind::Merge,
                "application/strategic-merge-patch+json" => PatchKind::Strategic,
                "application/json-patch+json" => PatchKind::Json,
                "application/apply-patch+yaml" => PatchKind::Apply {
                    force: truthy(&q, "force"),
                },
                other => return Err(ApiError::unsupported_media_type(other)),
            };
            if !matches!(kind, PatchKind::Apply { .. }) && q.contains_key("force") {
                return Err(ApiError::bad_request(
                    "force may not be specified for non-apply patch",
                ));
            }
            let wo = if matches!(kind, PatchKind::Apply { .. }) {
                WriteOpts {
                    manager: nonempty(&q, "fieldManager").unwrap_or_default(),
                    dry_run,
                    strict,
                }
            } else {
                wo
            };
            let body = read_body(req).await?;
            if is_scale {
                return Ok(json_resp(
                    200,
                    &ctx.store.patch_scale(rt, nsv, &name, kind, &body, &wo)?,
                ));
            }
            let (obj, created) = ctx.store.patch(rt, nsv, &name, kind, &body, sub, &wo)?;
            Ok(json_resp(if created { 201 } else { 200 }, &obj))
        }
        "delete" => {
            let body = read_body(req).await?;
            let dopts = delete_opts(&q, &body)?;
            let obj = ctx.store.delete(rt, nsv, &name, &dopts)?;
            // An object that stays (finalizers) is returned; one that is gone is reported by a
            // `Status`, built-in or custom alike (also for a dry run).
            let stays = obj["metadata"]["deletionTimestamp"].is_string()
                && (dopts.dry_run || ctx.store.get(rt, nsv, &name).is_ok());
            if stays {
                return Ok(json_resp(200, &obj));
            }
            let mut details =
                json!({"name": name, "kind": rt.plural, "uid": obj["metadata"]["uid"]});
            if !rt.group.is_empty() {
                details["group"] = json!(rt.group);
            }
            Ok(json_resp(
                200,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
            ))
        }
        "deletecollection" => {
            let body = read_body(req).await?;
            let dopts = delete_opts(&q, &body)?;
            let lo = list_opts(rt, &q)?;
            Ok(json_resp(
                200,
                &ctx.store.delete_collection(rt, ns, &lo, &dopts)?,
            ))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// A get or list result, as a `meta.k8s.io` Table when the client negotiated one.
fn read_resp(
    ctx: &Ctx,
    rt: &ResourceType,
    table: Option<crate::table::TableRequest>,
    q: &HashMap<String, String>,
    result: Value,
) -> ApiResult<Response<Body>> {
    Ok(match table {
        Some(t) => {
            let body = crate::table::render(&ctx.store, rt, t, q, &result)?;
            respond(200, t.content_type(), body.to_string())
        }
        None => json_resp(200, &result),
    })
}

fn list_opts(rt: &ResourceType, q: &HashMap<String, String>) -> ApiResult<ListOpts> {
    Ok(ListOpts {
        label: LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))?,
        field: FieldSelector::parse(
            q.get("fieldSelector").map_or("", String::as_str),
            &rt.field_paths(),
        )?,
        limit: match q.get("limit").filter(|s| !s.is_empty()) {
            Some(l) => l
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid limit: {l}")))?,
            None => 0,
        },
        continue_token: nonempty(q, "continue"),
        rv: nonempty(q, "resourceVersion"),
        rv_match: nonempty(q, "resourceVersionMatch"),
    })
}

fn delete_opts(q: &HashMap<String, String>, body: &[u8]) -> ApiResult<DeleteOpts> {
    let mut o = DeleteOpts {
        propagation: nonempty(q, "propagationPolicy"),
        dry_run: q.get("dryRun").is_some_and(|v| v == "All"),
        ..Default::default()
    };
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v = parse_json(body)?;
        if let Some(p) = v["propagationPolicy"].as_str() {
            o.propagation = Some(p.to_string());
        }
        if v["orphanDependents"].as_bool() == Some(true) && o.propagation.is_none() {
            o.propagation = Some("Orphan".into());
        }
        o.uid = v["preconditions"]["uid"].as_str().map(str::to_string);
        o.rv = v["preconditions"]["resourceVersion"]
            .as_str()
            .map(str::to_string);
        if let Some(d) = v["dryRun"].as_array() {
            o.dry_run |= d.iter().any(|x| x == "All");
        }
    }
    Ok(o)
}

fn line(v: &Value) -> Result<Frame<Bytes>, std::io::Error> {
    let mut s = v.to_string();
    s.push('\n');
    Ok(Frame::data(Bytes::from(s)))
}

fn bookmark(rt: &ResourceType, rv: u64, initial_end: bool) -> Value {
    let mut meta = json!({ "resourceVersion": rv.to_string() });
    if initial_end {
        meta["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    json!({
        "type": "BOOKMARK",
        "object": { "kind": rt.kind, "apiVersion": rt.api_version(), "metadata": meta },
    })
}

fn gone_event(e: &ApiError) -> Value {
    json!({ "type": "ERROR", "object": e.to_status() })
}

fn watch_response(
    ctx: &Arc<Ctx>,
    rt: &ResourceType,
    ns: Option<&str>,
    o: &WatchOpts,
    timeout: Duration,
    bookmarks: bool,
) -> ApiResult<Response<Body>> {
    let ws = ctx.store.watch_start(rt, ns, o)?;
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(64);
    let ctx = ctx.clone();
    let rt = rt.clone();
    let mut drop_rx = ctx.faults.drop_rx();
    drop_rx.mark_unchanged();
    tokio::spawn(async move {
        let mut brx = ws.rx;
        let filter = ws.filter;
        if let Some(e) = ws.gone {
            let _ = tx.send(line(&gone_event(&e))).await;
            return;
        }
        for ev in ws.initial {
            if tx.send(line(&ev)).await.is_err() {
                return;
            }
        }
        if let Some(rv) = ws.end_bookmark
            && tx.send(line(&bookmark(&rt, rv, true))).await.is_err()
        {
            return;
        }
        let start = tokio::time::Instant::now();
        let deadline = start
            .checked_add(timeout.min(Duration::from_secs(86_400 * 365)))
            .unwrap_or(start);
        let period = ctx.bookmark_interval.max(Duration::from_millis(10));
        let mut ticker = tokio::time::interval_at(start + period, period);
        let mut sd = ctx.shutdown.clone();
        let expired = || {
            gone_event(&ApiError::expired(
                "too old resource version: watch fell behind",
            ))
        };
        loop {
            tokio::select! {
                r = brx.recv() => match r {
                    Ok(ch) => {
                        if let Some(ev) = filter.translate(&ch)
                            && tx.send(line(&ev)).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        let _ = tx.send(line(&expired())).await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                },
                _ = ticker.tick(), if bookmarks => {
                    let rv = ctx.store.current_rv();
                    loop {
                        match brx.try_recv() {
                            Ok(ch) => {
                                if let Some(ev) = filter.translate(&ch)
                                    && tx.send(line(&ev)).await.is_err()
                                {
                                    return;
                                }
                            }
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Lagged(_)) => {
                                let _ = tx.send(line(&expired())).await;
                                return;
                            }
                            Err(TryRecvError::Closed) => return,
                        }
                    }
                    if tx.send(line(&bookmark(&rt, rv, false))).await.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return,
                _ = drop_rx.changed() => return,
                _ = crate::server::stopped(&mut sd) => return,
            }
        }
    });
    let mut resp = Response::new(StreamBody::new(rx).boxed_unsync());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}
