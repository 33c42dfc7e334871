//! Differential test: the same requests to the test API server and to a real Kubernetes
//! control plane (`mcs_testapi::control_plane`, from `KUBEBUILDER_ASSETS`), answers compared
//! after normalising what each server chooses for itself (uids, timestamps,
//! resourceVersions, `managedFields` times, generated-name suffixes, continue tokens).
//!
//! The real server is always right. What the test server does differently on purpose is
//! listed in the crate's README under "Known differences from a real API server"; each such
//! place below is skipped explicitly with a comment naming the entry.
//!
//! One control plane per test process (started on first use, with the fixture CRD of
//! `tests/fixtures/differential` and the project's `crds/` installed before its controller
//! manager starts, so the garbage collector knows them), one test API server and one
//! namespace (the same name on both) per test. Without `KUBEBUILDER_ASSETS` every test prints
//! `skipped: KUBEBUILDER_ASSETS not set` and passes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;
use kube::client::Body;
use mcs_testapi::control_plane::{ControlPlane, ControlPlaneConfig};
use mcs_testapi::{TestApiConfig, TestApiServer};
use serde_json::{Value, json};

const TABLE: &str = "application/json;as=Table;g=meta.k8s.io;v=v1";
const JSON: &str = "application/json";
const MERGE: &str = "application/merge-patch+json";
const JSON_PATCH: &str = "application/json-patch+json";
const APPLY: &str = "application/apply-patch+yaml";
const SPROCKETS: &str = "/apis/diff.mcs.dev/v1/namespaces/{ns}/sprockets";

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The fixture CRD folder (loaded by both servers at start).
fn fixture_crds() -> PathBuf {
    crate_dir().join("tests/fixtures/differential")
}

/// The project's committed CRDs.
fn project_crds() -> PathBuf {
    crate_dir().join("../../crds")
}

/// The control plane of this test process, started on first use; `None` without assets.
fn control_plane() -> Option<&'static ControlPlane> {
    static PLANE: OnceLock<Option<Result<ControlPlane, String>>> = OnceLock::new();
    let plane = PLANE.get_or_init(|| {
        let mut config = ControlPlaneConfig::from_env()?;
        config.crds = vec![fixture_crds().join("sprockets.yaml"), project_crds()];
        let started = Instant::now();
        let plane = ControlPlane::start(&config).map_err(|e| format!("{e:#}"));
        if let Ok(p) = &plane {
            eprintln!(
                "real control plane at {} ready in {:.1} s",
                p.url(),
                started.elapsed().as_secs_f64()
            );
        }
        Some(plane)
    });
    match plane {
        None => None,
        Some(Ok(plane)) => Some(plane),
        Some(Err(e)) => panic!("the real control plane did not start: {e}"),
    }
}

/// One server's answer.
#[derive(Debug, Clone)]
struct Resp {
    code: u16,
    /// The JSON body, or the text as a JSON string when it is no JSON.
    body: Value,
}

/// One of the two servers.
struct Side {
    name: &'static str,
    client: kube::Client,
    kubeconfig: PathBuf,
    kubectl: PathBuf,
}

impl Side {
    fn request(
        method: &str,
        path: &str,
        body: Option<&Value>,
        content_type: &str,
        accept: &str,
    ) -> http::Request<Body> {
        let bytes = match body {
            None => Vec::new(),
            Some(Value::String(s)) => s.clone().into_bytes(),
            Some(v) => v.to_string().into_bytes(),
        };
        http::Request::builder()
            .method(method)
            .uri(path)
            .header("Content-Type", content_type)
            .header("Accept", accept)
            .body(Body::from(bytes))
            .expect("request")
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        content_type: &str,
        accept: &str,
    ) -> Resp {
        let resp = self
            .client
            .send(Self::request(method, path, body, content_type, accept))
            .await
            .unwrap_or_else(|e| panic!("{} {method} {path}: {e}", self.name));
        let code = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Resp { code, body }
    }

    /// Starts a watch and returns its body, to read events from.
    async fn watch(&self, path: &str) -> Body {
        let resp = self
            .client
            .send(Self::request("GET", path, None, JSON, JSON))
            .await
            .unwrap_or_else(|e| panic!("{} watch {path}: {e}", self.name));
        assert_eq!(resp.status().as_u16(), 200, "{} watch {path}", self.name);
        resp.into_body()
    }

    /// Runs the assets' kubectl against this server: exit code, stdout, stderr.
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
        use std::io::Write as _;
        let mut child = Command::new(&self.kubectl)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env(
                "HOME",
                self.kubeconfig.parent().unwrap_or(Path::new("/tmp")),
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        if let Some(text) = stdin
            && let Some(mut input) = child.stdin.take()
        {
            input.write_all(text.as_bytes()).expect("kubectl stdin");
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().expect("kubectl output");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// Both servers, a namespace of the same name on each, and the differences found so far.
struct Pair {
    real: Side,
    test: Side,
    ns: String,
    diffs: Vec<String>,
    _server: TestApiServer,
    _dir: tempfile::TempDir,
}

impl Pair {
    /// Both servers for the test `area`, or `None` (after printing the skip line) without a
    /// control plane. `crds`: whether the test server loads the fixture and project CRDs.
    async fn start(area: &str, crds: bool) -> Option<Pair> {
        let Some(plane) = tokio::task::spawn_blocking(control_plane)
            .await
            .expect("control plane")
        else {
            println!("skipped: KUBEBUILDER_ASSETS not set");
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let server = TestApiServer::start(TestApiConfig {
            crd_dir: crds.then(fixture_crds),
            tls: true,
            ..Default::default()
        })
        .await
        .expect("test server starts");
        if crds {
            server.load_crd_dir(&project_crds()).expect("project CRDs");
        }
        let test_kubeconfig = dir.path().join("test/kubeconfig");
        let real_kubeconfig = dir.path().join("real/kubeconfig");
        for (path, text) in [
            (&test_kubeconfig, server.kubeconfig_yaml().to_string()),
            (
                &real_kubeconfig,
                std::fs::read_to_string(plane.kubeconfig_path()).expect("kubeconfig"),
            ),
        ] {
            std::fs::create_dir_all(path.parent().expect("parent")).expect("kubeconfig dir");
            std::fs::write(path, text).expect("kubeconfig");
        }
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..5];
        let ns = format!("diff-{area}-{suffix}");
        let pair = Pair {
            real: Side {
                name: "real",
                client: plane.client().await.expect("real client"),
                kubeconfig: real_kubeconfig,
                kubectl: plane.kubectl_path().to_owned(),
            },
            test: Side {
                name: "test",
                client: server.client().await.expect("test client"),
                kubeconfig: test_kubeconfig,
                kubectl: plane.kubectl_path().to_owned(),
            },
            ns,
            diffs: Vec::new(),
            _server: server,
            _dir: dir,
        };
        let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": pair.ns}});
        let (r, t) = pair
            .both("POST", "/api/v1/namespaces", Some(&body), JSON)
            .await;
        assert_eq!((r.code, t.code), (201, 201), "namespace: {r:?} {t:?}");
        Some(pair)
    }

    fn path(&self, p: &str) -> String {
        p.replace("{ns}", &self.ns)
    }

    /// The same request to both servers.
    async fn both(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        content_type: &str,
    ) -> (Resp, Resp) {
        self.both_accept(method, path, body, content_type, JSON)
            .await
    }

    async fn both_accept(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        content_type: &str,
        accept: &str,
    ) -> (Resp, Resp) {
        let path = self.path(path);
        let body = body.map(|b| match b {
            Value::String(s) => Value::String(s.replace("{ns}", &self.ns)),
            other => {
                serde_json::from_str(&other.to_string().replace("{ns}", &self.ns)).expect("body")
            }
        });
        let (r, t) = tokio::join!(
            self.real
                .call(method, &path, body.as_ref(), content_type, accept),
            self.test
                .call(method, &path, body.as_ref(), content_type, accept)
        );
        (r, t)
    }

    /// Sends the request to both, compares the normalised answers (code and body).
    async fn same(
        &mut self,
        what: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
        content_type: &str,
    ) -> (Resp, Resp) {
        let (r, t) = self.both(method, path, body, content_type).await;
        self.check_resp(what, &r, &t);
        (r, t)
    }

    /// A GET to both, compared.
    async fn same_get(&mut self, what: &str, path: &str) -> (Resp, Resp) {
        self.same(what, "GET", path, None, JSON).await
    }

    fn check_resp(&mut self, what: &str, r: &Resp, t: &Resp) {
        if r.code != t.code {
            self.diffs.push(format!(
                "{what}: code real {} test {}\n  real: {}\n  test: {}",
                r.code, t.code, r.body, t.body
            ));
            return;
        }
        self.check(what, &norm(&r.body), &norm(&t.body));
    }

    /// Compares two normalised values, recording every differing path.
    fn check(&mut self, what: &str, real: &Value, test: &Value) {
        let mut out = Vec::new();
        json_diff(real, test, "", &mut out);
        for d in out {
            self.diffs.push(format!("{what}: {d}"));
        }
    }

    fn check_eq<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, real: T, test: T) {
        if real != test {
            self.diffs
                .push(format!("{what}: real {real:?} test {test:?}"));
        }
    }

    /// Fails with every difference found.
    fn finish(self) {
        assert!(
            self.diffs.is_empty(),
            "{} difference(s) from the real API server:\n{}",
            self.diffs.len(),
            self.diffs.join("\n")
        );
    }
}

/// Where two JSON values differ (`path: real X, test Y`).
fn json_diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => json_diff(u, v, &p, out),
                    (Some(u), None) => out.push(format!("{p}: real {u}, test has none")),
                    (None, Some(v)) => out.push(format!("{p}: test {v}, real has none")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                json_diff(u, v, &format!("{path}[{i}]"), out);
            }
        }
        _ if a == b => {}
        _ => out.push(format!("{path}: real {a}, test {b}")),
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// Replaces UUIDs and RFC 3339 times inside a string by `<uid>` and `<time>`.
fn scrub(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if i + 36 <= chars.len() && is_uuid(&chars[i..i + 36].iter().collect::<String>()) {
            out.push_str("<uid>");
            i += 36;
            continue;
        }
        if let Some(n) = rfc3339_len(&chars[i..]) {
            out.push_str("<time>");
            i += n;
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// The length of an RFC 3339 UTC time (`2026-01-02T03:04:05Z`, with optional fraction) at
/// the start of `c`.
fn rfc3339_len(c: &[char]) -> Option<usize> {
    let pattern = "dddd-dd-ddTdd:dd:dd";
    if c.len() < pattern.len() + 1 {
        return None;
    }
    for (p, ch) in pattern.chars().zip(c) {
        let ok = if p == 'd' {
            ch.is_ascii_digit()
        } else {
            p == *ch
        };
        if !ok {
            return None;
        }
    }
    let mut n = pattern.len();
    if c.get(n) == Some(&'.') {
        n += 1;
        while c.get(n).is_some_and(char::is_ascii_digit) {
            n += 1;
        }
    }
    (c.get(n) == Some(&'Z')).then_some(n + 1)
}

/// Normalises what a server chooses for itself: uids, timestamps, resourceVersions,
/// continue tokens and `managedFields` times; `managedFields` are sorted by manager,
/// operation and subresource (their order depends on the times).
fn norm(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, x) in m {
                let y = match (k.as_str(), x) {
                    ("resourceVersion", Value::String(_)) => json!("<rv>"),
                    ("continue", Value::String(s)) if !s.is_empty() => json!("<continue>"),
                    ("time", Value::String(_)) => json!("<time>"),
                    // A name made from `generateName` ("gen-" and five random characters).
                    ("name", Value::String(s)) if s.starts_with("gen-") && s.len() == 9 => {
                        json!("gen-<suffix>")
                    }
                    ("managedFields", Value::Array(entries)) => {
                        let mut e: Vec<Value> = entries.iter().map(norm).collect();
                        e.sort_by_key(|x| {
                            format!("{}|{}|{}", x["manager"], x["operation"], x["subresource"])
                        });
                        Value::Array(e)
                    }
                    _ => norm(x),
                };
                out.insert(scrub(k), y);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(norm).collect()),
        Value::String(s) => Value::String(scrub(s)),
        other => other.clone(),
    }
}

/// A 422/409 `Status` with its causes sorted and its message checked against them: the
/// message must be `<prefix>: <cause>` or `<prefix>: [<cause>, ...]` with the causes in the
/// order given, then it is replaced by `<prefix>: <causes>`. (Known differences "Schema
/// errors" and "Server-side apply": a real apiserver lists schema errors and the causes of
/// several apply conflicts in an order that varies from call to call.)
fn norm_status(v: &Value) -> Value {
    let mut s = norm(v);
    let causes: Vec<Value> = s["details"]["causes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let message = s["message"].as_str().unwrap_or_default().to_string();
    if causes.is_empty() {
        return s;
    }
    let texts: Vec<String> = causes
        .iter()
        .map(|c| {
            let f = c["field"].as_str().unwrap_or_default();
            let m = c["message"].as_str().unwrap_or_default();
            if f.is_empty() {
                m.to_string()
            } else {
                format!("{f}: {m}")
            }
        })
        .collect();
    let mut distinct: Vec<String> = Vec::new();
    for t in &texts {
        if !distinct.contains(t) {
            distinct.push(t.clone());
        }
    }
    let joined = if distinct.len() == 1 {
        distinct[0].clone()
    } else {
        format!("[{}]", distinct.join(", "))
    };
    if s["reason"] == "Invalid"
        && let Some(prefix) = message.strip_suffix(&joined)
    {
        s["message"] = json!(format!("{prefix}<causes>"));
    }
    let mut sorted = causes;
    sorted.sort_by_key(Value::to_string);
    s["details"]["causes"] = Value::Array(sorted);
    s
}

/// Reads watch events from `body` until `n` arrived or `timeout` passed.
async fn read_events(body: &mut Body, n: usize, timeout: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = Vec::<u8>::new();
    let mut events = Vec::new();
    while events.len() < n {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(f))) => f,
            _ => break,
        };
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
        }
        while let Some(at) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=at).collect();
            if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                events.push(v);
            }
        }
    }
    events
}

fn sprocket(name: &str, labels: Value, spec: Value) -> Value {
    json!({
        "apiVersion": "diff.mcs.dev/v1",
        "kind": "Sprocket",
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    })
}

/// `kubectl` output with ages (`5s`, `2m3s`) replaced.
fn without_ages(text: &str) -> String {
    text.lines()
        .map(|line| {
            line.split_whitespace()
                .map(|w| {
                    let age = w.len() > 1
                        && w.chars().next().is_some_and(|c| c.is_ascii_digit())
                        && w.chars().all(|c| c.is_ascii_digit() || "smhd".contains(c))
                        && w.chars().last().is_some_and(|c| "smhd".contains(c));
                    if age { "<age>" } else { w }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_install_and_kubectl() {
    let Some(mut p) = Pair::start("kubectl", false).await else {
        return;
    };
    let gears = fixture_crds().join("install/gears.yaml");
    let gears = gears.to_string_lossy();
    let sprockets = fixture_crds();
    let sprockets = sprockets.to_string_lossy();
    let project = project_crds();
    let project = project.to_string_lossy();
    for (what, args) in [
        (
            "apply the fixture CRD",
            vec!["apply", "--server-side", "-f", &gears],
        ),
        (
            "wait for Established",
            vec![
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "-f",
                &gears,
            ],
        ),
        (
            "apply the fixture folder",
            vec!["apply", "--server-side", "-f", &sprockets],
        ),
        (
            "apply the project CRDs",
            vec!["apply", "--server-side", "-f", &project],
        ),
        (
            "wait for the project CRDs",
            vec![
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "-f",
                &project,
            ],
        ),
    ] {
        let r = p.real.kubectl(&args, None);
        let t = p.test.kubectl(&args, None);
        p.check_eq(&format!("kubectl {what}"), r, t);
    }
    // The CRD object: status conditions, accepted names, stored versions, defaults and the
    // managers (kubectl's apply, the apiserver's status).
    p.same_get(
        "CRD",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/gears.diff.mcs.dev",
    )
    .await;
    let ns = p.ns.clone();
    let gear = |name: &str, teeth: i64, extra: &str| {
        format!(
            "apiVersion: diff.mcs.dev/v1\nkind: Gear\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  teeth: {teeth}\n{extra}"
        )
    };
    let cases: Vec<(&str, Vec<&str>, Option<String>)> = vec![
        ("get gears (none)", vec!["get", "gears", "-n", &ns], None),
        (
            "apply a gear",
            vec!["apply", "--server-side", "-f", "-"],
            Some(gear("g1", 12, "")),
        ),
        (
            "apply with an unknown field",
            vec!["apply", "--server-side", "-f", "-"],
            Some(gear("g2", 12, "  bogus: 1\n")),
        ),
        (
            "create with an unknown field",
            vec!["create", "-f", "-"],
            Some(gear("g3", 12, "  bogus: 1\n")),
        ),
        (
            "client-side apply",
            vec!["apply", "-f", "-"],
            Some(gear("g4", 5, "")),
        ),
        (
            "apply an invalid gear",
            vec!["apply", "--server-side", "-f", "-"],
            Some(gear("g5", 1, "")),
        ),
        ("get gears", vec!["get", "gears", "-n", &ns], None),
        ("get the category", vec!["get", "difftest", "-n", &ns], None),
        (
            "get -o yaml",
            vec!["get", "gear", "g1", "-n", &ns, "-o", "jsonpath={.spec}"],
            None,
        ),
        (
            "get mcs (project CRDs, none)",
            vec!["get", "mcs", "-n", &ns],
            None,
        ),
        (
            "delete a gear",
            vec!["delete", "gear", "g4", "-n", &ns],
            None,
        ),
        (
            "get a missing gear",
            vec!["get", "gear", "g4", "-n", &ns],
            None,
        ),
    ];
    for (what, args, stdin) in cases {
        let (rc, out, err) = p.real.kubectl(&args, stdin.as_deref());
        let (tc, tout, terr) = p.test.kubectl(&args, stdin.as_deref());
        p.check_eq(
            &format!("kubectl {what}"),
            (rc, without_ages(&out), err),
            (tc, without_ages(&tout), terr),
        );
    }
    p.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_list_with_selectors() {
    let Some(mut p) = Pair::start("list", true).await else {
        return;
    };
    let objects = [
        sprocket(
            "s1",
            json!({"tier": "front", "app": "a"}),
            json!({"size": "S", "color": "red", "replicas": 1}),
        ),
        sprocket(
            "s2",
            json!({"tier": "back", "app": "a"}),
            json!({"size": "M", "color": "red"}),
        ),
        sprocket(
            "s3",
            json!({"tier": "back"}),
            json!({"size": "L", "parts": [{"name": "p", "count": 2}]}),
        ),
        sprocket(
            "s4",
            json!({}),
            json!({"size": "S", "color": "green", "tags": {"x": "y"}}),
        ),
    ];
    for o in &objects {
        p.same("create", "POST", SPROCKETS, Some(o), JSON).await;
    }
    // A generated name: the suffix is the server's; compare the rest.
    let generated = json!({"apiVersion": "diff.mcs.dev/v1", "kind": "Sprocket",
        "metadata": {"generateName": "gen-", "labels": {"generated": "yes"}}, "spec": {"size": "S"}});
    let (r, t) = p.both("POST", SPROCKETS, Some(&generated), JSON).await;
    for (side, resp) in [("real", &r), ("test", &t)] {
        let name = resp.body["metadata"]["name"].as_str().unwrap_or_default();
        assert!(
            name.starts_with("gen-") && name.len() == 9,
            "{side}: generated name {name:?}"
        );
    }
    let strip_name = |v: &Value| {
        let mut v = v.clone();
        v["metadata"]["name"] = json!("gen-<suffix>");
        v
    };
    p.check_resp(
        "generateName",
        &Resp {
            body: strip_name(&r.body),
            ..r.clone()
        },
        &Resp {
            body: strip_name(&t.body),
            ..t.clone()
        },
    );
    p.same_get("get", &format!("{SPROCKETS}/s1")).await;
    p.same_get("get a namespace", "/api/v1/namespaces/{ns}")
        .await;
    for query in [
        "labelSelector=tier%3Dfront",
        "labelSelector=tier%3D%3Dback",
        "labelSelector=tier!%3Dback",
        "labelSelector=tier+in+(front,back)",
        "labelSelector=tier+notin+(front)",
        "labelSelector=app",
        "labelSelector=!app,!generated",
        "labelSelector=app%3Da,tier%3Dback",
        "fieldSelector=metadata.name%3Ds2",
        "fieldSelector=metadata.name!%3Ds2,metadata.namespace%3D{ns}&labelSelector=!generated",
        "fieldSelector=spec.color%3Dred",
        "fieldSelector=spec.color!%3Dred&labelSelector=!generated",
        "fieldSelector=spec.size%3DS",
        "labelSelector=!generated&limit=2",
        "labelSelector=tier&limit=1",
    ] {
        let (r, t) = p
            .same_get(&format!("list ?{query}"), &format!("{SPROCKETS}?{query}"))
            .await;
        // Follow the continue token on each side.
        if let (Some(rc), Some(tc)) = (
            r.body["metadata"]["continue"]
                .as_str()
                .filter(|s| !s.is_empty()),
            t.body["metadata"]["continue"]
                .as_str()
                .filter(|s| !s.is_empty()),
        ) {
            let path = p.path(&format!("{SPROCKETS}?{query}"));
            let rn = p
                .real
                .call("GET", &format!("{path}&continue={rc}"), None, JSON, JSON)
                .await;
            let tn = p
                .test
                .call("GET", &format!("{path}&continue={tc}"), None, JSON, JSON)
                .await;
            p.check_resp(&format!("list ?{query} (next page)"), &rn, &tn);
        }
    }
    // ConfigMaps: the controller manager adds its own to every namespace (known difference
    // "Controllers"), so list by label only.
    for cm in [
        json!({"metadata": {"name": "c1", "labels": {"diff": "yes"}}, "data": {"a": "1"}, "binaryData": {"b": "AAAA"}}),
        json!({"metadata": {"name": "c2", "labels": {"diff": "yes"}}, "immutable": true}),
    ] {
        p.same(
            "create a ConfigMap",
            "POST",
            "/api/v1/namespaces/{ns}/configmaps",
            Some(&cm),
            JSON,
        )
        .await;
    }
    p.same_get(
        "list ConfigMaps",
        "/api/v1/namespaces/{ns}/configmaps?labelSelector=diff",
    )
    .await;
    p.same(
        "create a Secret",
        "POST",
        "/api/v1/namespaces/{ns}/secrets",
        Some(&json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}})),
        JSON,
    )
    .await;
    p.same("create a Lease", "POST", "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases", Some(&json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": "me", "leaseDurationSeconds": 15}})), JSON).await;
    p.same(
        "create a ControllerRevision",
        "POST",
        "/apis/apps/v1/namespaces/{ns}/controllerrevisions",
        Some(&json!({"metadata": {"name": "r"}, "revision": 3, "data": {"a": [1, 2]}})),
        JSON,
    )
    .await;
    // Replace and merge patch of a built-in kind (which allows an unconditional update).
    p.same(
        "replace a ConfigMap",
        "PUT",
        "/api/v1/namespaces/{ns}/configmaps/c1",
        Some(&json!({"metadata": {"name": "c1"}, "data": {"a": "2"}})),
        JSON,
    )
    .await;
    p.same(
        "patch an immutable ConfigMap",
        "PATCH",
        "/api/v1/namespaces/{ns}/configmaps/c2",
        Some(&json!({"data": {"x": "y"}})),
        MERGE,
    )
    .await;
    p.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_event_sequences() {
    let Some(mut p) = Pair::start("watch", true).await else {
        return;
    };
    p.same(
        "create",
        "POST",
        SPROCKETS,
        Some(&sprocket(
            "old",
            json!({"tier": "front"}),
            json!({"size": "S", "color": "red"}),
        )),
        JSON,
    )
    .await;
    let queries = [
        "",
        "labelSelector=tier%3Dfront",
        "fieldSelector=spec.color%3Dred",
        "fieldSelector=metadata.name%3Dw",
    ];
    // Watches from the list's resourceVersion (each side its own) and from "now" (unset).
    let (lr, lt) = p.both("GET", SPROCKETS, None, JSON).await;
    let rv_real = lr.body["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let rv_test = lt.body["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut watches = Vec::new();
    for q in queries {
        let base = p.path(&format!("{SPROCKETS}?watch=1&timeoutSeconds=30&{q}"));
        let r = p
            .real
            .watch(&format!("{base}&resourceVersion={rv_real}"))
            .await;
        let t = p
            .test
            .watch(&format!("{base}&resourceVersion={rv_test}"))
            .await;
        watches.push((format!("watch from the list ?{q}"), r, t));
        let r = p.real.watch(&base).await;
        let t = p.test.watch(&base).await;
        watches.push((format!("watch without resourceVersion ?{q}"), r, t));
    }
    // Let the real server's watches register before writing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let steps: Vec<(&str, &str, String, Option<Value>, &str)> = vec![
        (
            "create",
            "POST",
            SPROCKETS.to_string(),
            Some(sprocket(
                "w",
                json!({"tier": "front"}),
                json!({"size": "S", "color": "red"}),
            )),
            JSON,
        ),
        (
            "modify",
            "PATCH",
            format!("{SPROCKETS}/w"),
            Some(json!({"spec": {"replicas": 3}})),
            MERGE,
        ),
        (
            "leave the label selection",
            "PATCH",
            format!("{SPROCKETS}/w"),
            Some(json!({"metadata": {"labels": {"tier": "back"}}})),
            MERGE,
        ),
        (
            "leave the field selection",
            "PATCH",
            format!("{SPROCKETS}/w"),
            Some(json!({"spec": {"color": "blue"}})),
            MERGE,
        ),
        (
            "come back",
            "PATCH",
            format!("{SPROCKETS}/w"),
            Some(json!({"metadata": {"labels": {"tier": "front"}}, "spec": {"color": "red"}})),
            MERGE,
        ),
        (
            "status",
            "PATCH",
            format!("{SPROCKETS}/w/status"),
            Some(json!({"status": {"phase": "Up"}})),
            MERGE,
        ),
        (
            "no-op",
            "PATCH",
            format!("{SPROCKETS}/w"),
            Some(json!({"spec": {"color": "red"}})),
            MERGE,
        ),
        ("delete", "DELETE", format!("{SPROCKETS}/w"), None, JSON),
    ];
    for (what, method, path, body, ct) in &steps {
        p.same(what, method, path, body.as_ref(), ct).await;
    }
    // Sequences: every event up to the DELETED of "w" (or what arrived within 10 s).
    for (what, mut r, mut t) in watches {
        let expect = |events: &[Value]| {
            events
                .iter()
                .any(|e| e["type"] == "DELETED" && e["object"]["metadata"]["name"] == "w")
        };
        let mut re = Vec::new();
        let mut te = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(expect(&re) && expect(&te)) && Instant::now() < deadline {
            if !expect(&re) {
                re.extend(read_events(&mut r, 1, Duration::from_millis(200)).await);
            }
            if !expect(&te) {
                te.extend(read_events(&mut t, 1, Duration::from_millis(200)).await);
            }
        }
        let summary = |events: &[Value]| -> Vec<String> {
            events
                .iter()
                .map(|e| {
                    format!(
                        "{} {}",
                        e["type"].as_str().unwrap_or_default(),
                        e["object"]["metadata"]["name"].as_str().unwrap_or_default()
                    )
                })
                .collect()
        };
        p.check_eq(&format!("{what}: event types"), summary(&re), summary(&te));
        if re.len() == te.len() {
            for (i, (a, b)) in re.iter().zip(&te).enumerate() {
                p.check(&format!("{what}: event {i}"), &norm(a), &norm(b));
            }
        }
    }
    // 410 Gone: a watch from a resourceVersion older than the kind's watch history. The
    // real server's watch cache for a CRD starts when the CRD is installed, so "1" is always
    // too old there (and on the test server, whose history of a kind starts at the same
    // point). The numbers in the message are the servers' own (known difference "Reads of
    // the past").
    let path = p.path(&format!(
        "{SPROCKETS}?watch=1&resourceVersion=1&timeoutSeconds=5"
    ));
    let mut r = p.real.watch(&path).await;
    let mut t = p.test.watch(&path).await;
    let re = read_events(&mut r, 1, Duration::from_secs(10)).await;
    let te = read_events(&mut t, 1, Duration::from_secs(10)).await;
    let numbers = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v["object"]["message"].as_str() {
            let mut out = String::new();
            for c in m.chars() {
                if !c.is_ascii_digit() {
                    out.push(c);
                } else if !out.ends_with('N') {
                    out.push('N');
                }
            }
            v["object"]["message"] = json!(out);
        }
        v
    };
    p.check(
        "410 Gone as a watch ERROR event",
        &json!(re.iter().map(numbers).collect::<Vec<_>>()),
        &json!(te.iter().map(numbers).collect::<Vec<_>>()),
    );
    assert_eq!(
        re.first().map(|e| e["object"]["code"].clone()),
        Some(json!(410)),
        "real: {re:?}"
    );
    p.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_and_conflicts() {
    let Some(mut p) = Pair::start("apply", true).await else {
        return;
    };
    let apply = |manager: &str, force: bool| {
        format!(
            "{SPROCKETS}/a?fieldManager={manager}{}",
            if force { "&force=true" } else { "" }
        )
    };
    let config = |v: Value| {
        let mut c =
            json!({"apiVersion": "diff.mcs.dev/v1", "kind": "Sprocket", "metadata": {"name": "a"}});
        if let (Some(c), Some(v)) = (c.as_object_mut(), v.as_object()) {
            for (k, x) in v {
                c.insert(k.clone(), x.clone());
            }
        }
        Value::String(c.to_string())
    };
    let steps: Vec<(&str, String, Value, &str)> = vec![
        (
            "apply creates",
            apply("alice", false),
            config(
                json!({"metadata": {"name": "a", "labels": {"tier": "front"}}, "spec": {"size": "M", "tags": {"a": "1"}, "parts": [{"name": "gear", "count": 2}]}}),
            ),
            APPLY,
        ),
        (
            "update by another manager",
            format!("{SPROCKETS}/a?fieldManager=upd"),
            json!({"spec": {"color": "red", "tags": {"b": "2"}}}),
            MERGE,
        ),
        (
            "status update",
            format!("{SPROCKETS}/a/status?fieldManager=stat"),
            json!({"status": {"phase": "Up", "conditions": [{"type": "Ready", "status": "True"}]}}),
            MERGE,
        ),
        (
            "label update",
            format!("{SPROCKETS}/a?fieldManager=lbl"),
            json!({"metadata": {"labels": {"app.kubernetes.io/name": "x"}}}),
            MERGE,
        ),
        (
            "one conflict (update manager)",
            apply("bob", false),
            config(json!({"spec": {"color": "green"}})),
            APPLY,
        ),
        (
            "one conflict (apply manager)",
            apply("bob", false),
            config(json!({"spec": {"size": "L"}})),
            APPLY,
        ),
        (
            "conflict on the status subresource",
            format!("{SPROCKETS}/a/status?fieldManager=bob"),
            config(json!({"status": {"phase": "Down"}})),
            APPLY,
        ),
        (
            "conflicts with three managers",
            apply("bob", false),
            config(
                json!({"metadata": {"name": "a", "labels": {"app.kubernetes.io/name": "y"}}, "spec": {"size": "L", "color": "green", "parts": [{"name": "gear", "count": 5}]}}),
            ),
            APPLY,
        ),
        (
            "same values do not conflict",
            apply("carol", false),
            config(json!({"spec": {"size": "M", "color": "red"}})),
            APPLY,
        ),
        (
            "forced apply takes over",
            apply("bob", true),
            config(json!({"spec": {"size": "L", "color": "green"}})),
            APPLY,
        ),
        (
            "apply drops a field it owned",
            apply("alice", false),
            config(
                json!({"metadata": {"name": "a", "labels": {"tier": "front"}}, "spec": {"parts": [{"name": "gear", "count": 2}], "tags": {"a": "1"}}}),
            ),
            APPLY,
        ),
        (
            "apply adds a list item",
            apply("dave", false),
            config(json!({"spec": {"parts": [{"name": "nut", "count": 9}]}})),
            APPLY,
        ),
        (
            "apply of a condition",
            format!("{SPROCKETS}/a/status?fieldManager=erin"),
            config(json!({"status": {"conditions": [{"type": "Synced", "status": "False"}]}})),
            APPLY,
        ),
        (
            "the same manager applies its conditions with a new one first (the applied order wins)",
            format!("{SPROCKETS}/a/status?fieldManager=erin"),
            config(json!({"status": {"conditions": [
                {"type": "Degraded", "status": "False"},
                {"type": "Synced", "status": "True"},
            ]}})),
            APPLY,
        ),
        (
            "and then in another order",
            format!("{SPROCKETS}/a/status?fieldManager=erin"),
            config(json!({"status": {"conditions": [
                {"type": "Synced", "status": "True"},
                {"type": "Degraded", "status": "False"},
            ]}})),
            APPLY,
        ),
        (
            "finalizers applied by one manager",
            apply("fin1", false),
            config(
                json!({"metadata": {"name": "a", "finalizers": ["diff.mcs.dev/one", "diff.mcs.dev/shared"]}}),
            ),
            APPLY,
        ),
        (
            "finalizers applied by another (a set: merged, no conflict)",
            apply("fin2", false),
            config(
                json!({"metadata": {"name": "a", "finalizers": ["diff.mcs.dev/shared", "diff.mcs.dev/two"]}}),
            ),
            APPLY,
        ),
        (
            "a manager drops its finalizers",
            apply("fin1", false),
            config(json!({"metadata": {"name": "a", "finalizers": []}})),
            APPLY,
        ),
        (
            "a finalizer added by an update",
            format!("{SPROCKETS}/a?fieldManager=finupd"),
            json!([{"op": "add", "path": "/metadata/finalizers/-", "value": "diff.mcs.dev/three"}]),
            JSON_PATCH,
        ),
        (
            "json patch",
            format!("{SPROCKETS}/a?fieldManager=jp"),
            json!([{"op": "add", "path": "/spec/replicas", "value": 2}]),
            JSON_PATCH,
        ),
        (
            "apply without fieldManager",
            format!("{SPROCKETS}/a"),
            config(json!({"spec": {"size": "S"}})),
            APPLY,
        ),
        (
            // One unknown field: with two, a real apiserver sometimes names only one of them.
            "apply with an unknown field",
            apply("alice", false),
            config(json!({"spec": {"bogus": 1}})),
            APPLY,
        ),
        (
            "strategic merge patch of a custom resource",
            format!("{SPROCKETS}/a"),
            json!({"spec": {"size": "S"}}),
            "application/strategic-merge-patch+json",
        ),
    ];
    for (what, path, body, ct) in steps {
        let (r, t) = p.both("PATCH", &path, Some(&body), ct).await;
        if r.code != t.code {
            p.check_resp(what, &r, &t);
            continue;
        }
        p.check(what, &norm_status(&r.body), &norm_status(&t.body));
    }
    p.same_get("the object after all", &format!("{SPROCKETS}/a"))
        .await;
    p.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_scale_subresources() {
    let Some(mut p) = Pair::start("subresources", true).await else {
        return;
    };
    let mut s = sprocket(
        "a",
        json!({"tier": "front"}),
        json!({"size": "S", "replicas": 2}),
    );
    s["status"] = json!({"phase": "ignored on create"});
    p.same("create ignores status", "POST", SPROCKETS, Some(&s), JSON)
        .await;
    // Each side replaces with the resourceVersion it read.
    for (what, sub, change) in [
        (
            "status write ignores spec",
            "/status",
            json!({"spec": {"size": "L"}, "status": {"phase": "Up", "replicas": 1, "selector": "tier=front"}}),
        ),
        (
            "main write ignores status",
            "",
            json!({"spec": {"size": "M", "replicas": 3}, "status": {"phase": "Down"}}),
        ),
    ] {
        let path = p.path(&format!("{SPROCKETS}/a"));
        let mut answers = Vec::new();
        for side in [&p.real, &p.test] {
            let mut obj = side.call("GET", &path, None, JSON, JSON).await.body;
            for (k, v) in change.as_object().into_iter().flatten() {
                obj[k] = v.clone();
            }
            answers.push(
                side.call("PUT", &format!("{path}{sub}"), Some(&obj), JSON, JSON)
                    .await,
            );
        }
        p.check_resp(what, &answers[0], &answers[1]);
    }
    let unconditional = json!({"apiVersion": "diff.mcs.dev/v1", "kind": "Sprocket", "metadata": {"name": "a"}, "spec": {"size": "S"}});
    p.same(
        "replace without resourceVersion",
        "PUT",
        &format!("{SPROCKETS}/a"),
        Some(&unconditional),
        JSON,
    )
    .await;
    p.same(
        "replace status without resourceVersion",
        "PUT",
        &format!("{SPROCKETS}/a/status"),
        Some(&unconditional),
        JSON,
    )
    .await;
    let stale = json!({"apiVersion": "diff.mcs.dev/v1", "kind": "Sprocket", "metadata": {"name": "a", "resourceVersion": "2"}, "spec": {"size": "S"}});
    p.same(
        "replace with a stale resourceVersion",
        "PUT",
        &format!("{SPROCKETS}/a"),
        Some(&stale),
        JSON,
    )
    .await;
    p.same(
        "merge patch of status",
        "PATCH",
        &format!("{SPROCKETS}/a/status"),
        Some(&json!({"spec": {"size": "XL"}, "status": {"replicas": 2}})),
        MERGE,
    )
    .await;
    p.same_get("get scale", &format!("{SPROCKETS}/a/scale"))
        .await;
    let scale = |n: i64| json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "a", "namespace": "{ns}"}, "spec": {"replicas": n}});
    p.same(
        "put scale",
        "PUT",
        &format!("{SPROCKETS}/a/scale"),
        Some(&scale(4)),
        JSON,
    )
    .await;
    p.same(
        "put scale beyond the CEL rule",
        "PUT",
        &format!("{SPROCKETS}/a/scale"),
        Some(&scale(40)),
        JSON,
    )
    .await;
    p.same(
        "patch scale",
        "PATCH",
        &format!("{SPROCKETS}/a/scale"),
        Some(&json!({"spec": {"replicas": 5}})),
        MERGE,
    )
    .await;
    p.same_get(
        "the object after the scale writes",
        &format!("{SPROCKETS}/a"),
    )
    .await;
    p.same_get(
        "scale of a missing object",
        &format!("{SPROCKETS}/missing/scale"),
    )
    .await;
    p.same_get("an unknown subresource", &format!("{SPROCKETS}/a/bogus"))
        .await;
    p.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizers_and_deletion() {
    let Some(mut p) = Pair::start("finalizers", true).await else {
        return;
    };
    let mut held = sprocket("held", json!({}), json!({"size": "S"}));
    held["metadata"]["finalizers"] = json!(["diff.mcs.dev/one", "diff.mcs.dev/two"]);
    for (what, method, path, body, ct) in [
        (
            "create with finalizers",
            "POST",
            SPROCKETS.to_string(),
            Some(held),
            JSON,
        ),
        (
            "create a plain one",
            "POST",
            SPROCKETS.to_string(),
            Some(sprocket("plain", json!({}), json!({"size": "S"}))),
            JSON,
        ),
        (
            "delete starts deletion",
            "DELETE",
            format!("{SPROCKETS}/held"),
            None,
            JSON,
        ),
        (
            "delete again",
            "DELETE",
            format!("{SPROCKETS}/held"),
            None,
            JSON,
        ),
        (
            "no new finalizers",
            "PATCH",
            format!("{SPROCKETS}/held"),
            Some(
                json!({"metadata": {"finalizers": ["diff.mcs.dev/one", "diff.mcs.dev/two", "diff.mcs.dev/new", "a.dev/x"]}}),
            ),
            MERGE,
        ),
        (
            "spec changes while deleting",
            "PATCH",
            format!("{SPROCKETS}/held"),
            Some(json!({"spec": {"replicas": 1}})),
            MERGE,
        ),
        (
            "remove one finalizer",
            "PATCH",
            format!("{SPROCKETS}/held"),
            Some(json!({"metadata": {"finalizers": ["diff.mcs.dev/two"]}})),
            MERGE,
        ),
        (
            "get while deleting",
            "GET",
            format!("{SPROCKETS}/held"),
            None,
            JSON,
        ),
        (
            "remove the last finalizer",
            "PATCH",
            format!("{SPROCKETS}/held"),
            Some(json!({"metadata": {"finalizers": null}})),
            MERGE,
        ),
        ("gone", "GET", format!("{SPROCKETS}/held"), None, JSON),
        (
            "delete with a wrong uid precondition",
            "DELETE",
            format!("{SPROCKETS}/plain"),
            Some(json!({"preconditions": {"uid": "00000000-0000-0000-0000-000000000000"}})),
            JSON,
        ),
        (
            "dry-run delete",
            "DELETE",
            format!("{SPROCKETS}/plain?dryRun=All"),
            None,
            JSON,
        ),
        (
            "delete without finalizers",
            "DELETE",
            format!("{SPROCKETS}/plain"),
            None,
            JSON,
        ),
        (
            "delete a missing object",
            "DELETE",
            format!("{SPROCKETS}/plain"),
            None,
            JSON,
        ),
        (
            "create a ConfigMap with a finalizer",
            "POST",
            "/api/v1/namespaces/{ns}/configmaps".to_string(),
            Some(json!({"metadata": {"name": "cm", "finalizers": ["a.dev/x"]}})),
            JSON,
        ),
        (
            "delete the ConfigMap",
            "DELETE",
            "/api/v1/namespaces/{ns}/configmaps/cm".to_string(),
            None,
            JSON,
        ),
        (
            "no new finalizers on a ConfigMap",
            "PATCH",
            "/api/v1/namespaces/{ns}/configmaps/cm".to_string(),
            Some(json!({"metadata": {"finalizers": ["a.dev/x", "b.dev/y"]}})),
            MERGE,
        ),
        (
            "release the ConfigMap",
            "PATCH",
            "/api/v1/namespaces/{ns}/configmaps/cm".to_string(),
            Some(json!({"metadata": {"finalizers": []}})),
            MERGE,
        ),
    ] {
        let (r, t) = p.both(method, &path, body.as_ref(), ct).await;
        if r.code != t.code {
            p.check_resp(what, &r, &t);
            continue;
        }
        p.check(what, &norm_status(&r.body), &norm_status(&t.body));
    }
    p.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_reference_garbage_collection() {
    let Some(mut p) = Pair::start("gc", true).await else {
        return;
    };
    let (r, t) = p
        .same(
            "owner",
            "POST",
            SPROCKETS,
            Some(&sprocket("owner", json!({}), json!({"size": "S"}))),
            JSON,
        )
        .await;
    let owner_ref = |resp: &Resp| json!([{"apiVersion": "diff.mcs.dev/v1", "kind": "Sprocket", "name": "owner", "uid": resp.body["metadata"]["uid"]}]);
    let dependents = [
        (
            format!("{SPROCKETS}/dep"),
            SPROCKETS.to_string(),
            sprocket("dep", json!({}), json!({"size": "S"})),
        ),
        (
            "/api/v1/namespaces/{ns}/configmaps/dep-cm".to_string(),
            "/api/v1/namespaces/{ns}/configmaps".to_string(),
            json!({"metadata": {"name": "dep-cm"}}),
        ),
    ];
    for (_, collection, body) in &dependents {
        let path = p.path(collection);
        let mut answers = Vec::new();
        for (side, owner) in [(&p.real, &r), (&p.test, &t)] {
            let mut b = body.clone();
            b["metadata"]["ownerReferences"] = owner_ref(owner);
            answers.push(side.call("POST", &path, Some(&b), JSON, JSON).await);
        }
        p.check_resp("dependent", &answers[0], &answers[1]);
    }
    p.same(
        "delete the owner (background)",
        "DELETE",
        &format!("{SPROCKETS}/owner?propagationPolicy=Background"),
        None,
        JSON,
    )
    .await;
    // The real garbage collector takes its time: poll up to 60 s on each side.
    for (item, _, _) in &dependents {
        let path = p.path(item);
        for side in [&p.real, &p.test] {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let code = side.call("GET", &path, None, JSON, JSON).await.code;
                if code == 404 {
                    break;
                }
                if Instant::now() > deadline {
                    p.diffs.push(format!(
                        "{}: {path} was not collected within 60 s",
                        side.name
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    p.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_bodies() {
    let Some(mut p) = Pair::start("errors", true).await else {
        return;
    };
    p.same(
        "create",
        "POST",
        SPROCKETS,
        Some(&sprocket("a", json!({}), json!({"size": "S"}))),
        JSON,
    )
    .await;
    // 404s.
    for (what, path) in [
        ("404 object", format!("{SPROCKETS}/missing")),
        (
            "404 built-in object",
            "/api/v1/namespaces/{ns}/configmaps/missing".to_string(),
        ),
        (
            "404 namespace",
            "/api/v1/namespaces/missing-namespace".to_string(),
        ),
        (
            "404 unknown core resource",
            "/api/v1/namespaces/{ns}/nothings".to_string(),
        ),
        (
            "404 unknown resource of a CRD group",
            "/apis/diff.mcs.dev/v1/namespaces/{ns}/nothings".to_string(),
        ),
        ("404 unknown version", "/apis/diff.mcs.dev/v9".to_string()),
        (
            "404 unknown group",
            "/apis/nope.example.com/v1/things".to_string(),
        ),
        (
            "404 unknown built-in subresource",
            "/api/v1/namespaces/{ns}/configmaps/x/status".to_string(),
        ),
        ("404 outside the API", "/nothing-here".to_string()),
    ] {
        p.same_get(what, &path).await;
    }
    p.same(
        "404 in a missing namespace",
        "POST",
        "/apis/diff.mcs.dev/v1/namespaces/missing-namespace/sprockets",
        Some(&sprocket("x", json!({}), json!({"size": "S"}))),
        JSON,
    )
    .await;
    // 409s.
    p.same(
        "409 AlreadyExists",
        "POST",
        SPROCKETS,
        Some(&sprocket("a", json!({}), json!({"size": "S"}))),
        JSON,
    )
    .await;
    let stale = json!({"apiVersion": "diff.mcs.dev/v1", "kind": "Sprocket", "metadata": {"name": "a", "resourceVersion": "3"}, "spec": {"size": "M"}});
    p.same(
        "409 Conflict (stale replace)",
        "PUT",
        &format!("{SPROCKETS}/a"),
        Some(&stale),
        JSON,
    )
    .await;
    p.same(
        "409 Conflict (stale patch)",
        "PATCH",
        &format!("{SPROCKETS}/a"),
        Some(&json!({"metadata": {"resourceVersion": "3"}, "spec": {"size": "M"}})),
        MERGE,
    )
    .await;
    for what in ["ConfigMap", "409 AlreadyExists (ConfigMap)"] {
        p.same(
            what,
            "POST",
            "/api/v1/namespaces/{ns}/configmaps",
            Some(&json!({"metadata": {"name": "twice"}})),
            JSON,
        )
        .await;
    }
    // 422s: schema and CEL.
    for (what, spec) in [
        (
            "422 enum, minimum, maxLength, pattern",
            json!({"size": "XXL", "replicas": -1, "color": "a-very-long-colour-name", "code": "Bad"}),
        ),
        ("422 required", json!({"replicas": 1})),
        ("422 CEL rule", json!({"size": "S", "replicas": 11})),
        (
            "422 CEL rule with fieldPath and reason",
            json!({"size": "XL", "color": "red"}),
        ),
        (
            "422 wrong type and required in a list item",
            json!({"size": "S", "replicas": "two", "parts": [{"count": 1}]}),
        ),
        (
            "422 duplicate list-map key",
            json!({"size": "S", "parts": [{"name": "a"}, {"name": "a"}]}),
        ),
    ] {
        let (r, t) = p
            .both(
                "POST",
                SPROCKETS,
                Some(&sprocket("v", json!({}), spec)),
                JSON,
            )
            .await;
        p.check_eq(&format!("{what}: code"), r.code, t.code);
        p.check(what, &norm_status(&r.body), &norm_status(&t.body));
    }
    p.same(
        "422 transition rule",
        "POST",
        SPROCKETS,
        Some(&sprocket(
            "ser",
            json!({}),
            json!({"size": "S", "serial": "s-1"}),
        )),
        JSON,
    )
    .await;
    let (r, t) = p
        .both(
            "PATCH",
            &format!("{SPROCKETS}/ser"),
            Some(&json!({"spec": {"serial": "s-2"}})),
            MERGE,
        )
        .await;
    p.check(
        "422 transition rule (update)",
        &norm_status(&r.body),
        &norm_status(&t.body),
    );
    for (what, name) in [
        ("422 name", "Bad_Name"),
        ("422 long name", &"n".repeat(254)),
        ("422 dots", "a..b"),
    ] {
        let (r, t) = p
            .both(
                "POST",
                SPROCKETS,
                Some(&sprocket(name, json!({}), json!({"size": "S"}))),
                JSON,
            )
            .await;
        p.check(what, &norm_status(&r.body), &norm_status(&t.body));
    }
    let (r, t) = p
        .both(
            "POST",
            "/api/v1/namespaces",
            Some(&json!({"metadata": {"name": "Bad.Namespace"}})),
            JSON,
        )
        .await;
    p.check(
        "422 namespace name",
        &norm_status(&r.body),
        &norm_status(&t.body),
    );
    let (r, t) = p.both("POST", SPROCKETS, Some(&json!({"apiVersion": "diff.mcs.dev/v1", "kind": "Sprocket", "metadata": {}, "spec": {"size": "S"}})), JSON).await;
    p.check("422 no name", &norm_status(&r.body), &norm_status(&t.body));
    // Strict field validation (what kubectl and the operator send).
    let unknown = json!({"apiVersion": "diff.mcs.dev/v1", "kind": "Sprocket", "metadata": {"name": "u", "bogus": 1}, "spec": {"size": "S", "bogus": 1, "parts": [{"name": "p", "x": 1}]}, "extra": 1});
    p.same(
        "400 strict create",
        "POST",
        &format!("{SPROCKETS}?fieldValidation=Strict"),
        Some(&unknown),
        JSON,
    )
    .await;
    p.same(
        "unknown fields without strict are dropped",
        "POST",
        SPROCKETS,
        Some(&unknown),
        JSON,
    )
    .await;
    p.same(
        "400 strict create (ConfigMap)",
        "POST",
        "/api/v1/namespaces/{ns}/configmaps?fieldValidation=Strict",
        Some(&json!({"metadata": {"name": "u", "bogus": 1}, "data": {}, "extra": 1})),
        JSON,
    )
    .await;
    let (r, t) = p
        .both(
            "PATCH",
            &format!("{SPROCKETS}/a?fieldValidation=Strict"),
            Some(&json!({"spec": {"bogus": 1}, "zed": 1})),
            MERGE,
        )
        .await;
    // The message quotes the patched object, with each server's uid, times and rv.
    let quoted = |v: &Value| {
        let mut v = norm_status(v);
        for pointer in ["/message", "/details/causes/0/message"] {
            if let Some(m) = v.pointer_mut(pointer)
                && let Some(text) = m.as_str()
            {
                let tail = text
                    .rsplit_once("strict decoding error")
                    .map(|(_, t)| t)
                    .unwrap_or(text);
                *m = json!(format!("...strict decoding error{tail}"));
            }
        }
        v
    };
    p.check_eq("422 strict merge patch: code", r.code, t.code);
    p.check("422 strict merge patch", &quoted(&r.body), &quoted(&t.body));
    p.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_output() {
    let Some(mut p) = Pair::start("table", true).await else {
        return;
    };
    let mut ready = sprocket(
        "ready",
        json!({}),
        json!({"size": "S", "replicas": 3, "color": "red"}),
    );
    ready["metadata"]["labels"] = json!({"t": "x"});
    p.same("create", "POST", SPROCKETS, Some(&ready), JSON)
        .await;
    p.same("status", "PATCH", &format!("{SPROCKETS}/ready/status"), Some(&json!({"status": {"phase": "Up", "conditions": [{"type": "Ready", "status": "True"}]}})), MERGE).await;
    p.same(
        "create",
        "POST",
        SPROCKETS,
        Some(&sprocket("plain", json!({}), json!({"size": "M"}))),
        JSON,
    )
    .await;
    p.same(
        "ConfigMap",
        "POST",
        "/api/v1/namespaces/{ns}/configmaps",
        Some(
            &json!({"metadata": {"name": "t", "labels": {"t": "x"}}, "data": {"a": "1", "b": "2"}}),
        ),
        JSON,
    )
    .await;
    p.same(
        "Secret",
        "POST",
        "/api/v1/namespaces/{ns}/secrets",
        Some(&json!({"metadata": {"name": "t"}, "stringData": {"a": "1"}})),
        JSON,
    )
    .await;
    p.same(
        "Lease",
        "POST",
        "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
        Some(&json!({"metadata": {"name": "t"}, "spec": {"holderIdentity": "me"}})),
        JSON,
    )
    .await;
    p.same(
        "ControllerRevision",
        "POST",
        "/apis/apps/v1/namespaces/{ns}/controllerrevisions",
        Some(&json!({"metadata": {"name": "t"}, "revision": 2, "data": {}})),
        JSON,
    )
    .await;
    // Ages ("3s") are each server's: the cells of `date` columns (and built-ins' Age) are
    // replaced.
    let ages = |v: &Value| {
        let mut v = norm(v);
        let dates: Vec<usize> = v["columnDefinitions"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .filter(|(_, c)| c["type"] == "date" || c["name"] == "Age")
            .map(|(i, _)| i)
            .collect();
        for row in v["rows"].as_array_mut().into_iter().flatten() {
            for i in &dates {
                if !row["cells"][*i].is_null() {
                    row["cells"][*i] = json!("<age>");
                }
            }
        }
        v
    };
    for (what, path) in [
        ("list", SPROCKETS.to_string()),
        ("get", format!("{SPROCKETS}/ready")),
        (
            "list without objects",
            format!("{SPROCKETS}?includeObject=None"),
        ),
        (
            "list with objects",
            format!("{SPROCKETS}?includeObject=Object&labelSelector=t"),
        ),
        (
            "ConfigMap",
            "/api/v1/namespaces/{ns}/configmaps/t".to_string(),
        ),
        ("Secret", "/api/v1/namespaces/{ns}/secrets/t".to_string()),
        (
            "Lease",
            "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/t".to_string(),
        ),
        (
            "ControllerRevision",
            "/apis/apps/v1/namespaces/{ns}/controllerrevisions/t".to_string(),
        ),
        ("Namespace", "/api/v1/namespaces/{ns}".to_string()),
        (
            "CRD",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/sprockets.diff.mcs.dev"
                .to_string(),
        ),
    ] {
        let (r, t) = p.both_accept("GET", &path, None, JSON, TABLE).await;
        p.check_eq(&format!("Table {what}: code"), r.code, t.code);
        let (mut rb, mut tb) = (ages(&r.body), ages(&t.body));
        if what == "CRD" {
            // The CRD was installed by kubectl on the real server, from a file on the test
            // server: the managers in the row's metadata differ (not a server difference).
            for b in [&mut rb, &mut tb] {
                b["rows"][0]["object"]["metadata"]["managedFields"] = json!("<install>");
            }
        }
        p.check(&format!("Table {what}"), &rb, &tb);
    }
    p.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events() {
    let Some(mut p) = Pair::start("events", true).await else {
        return;
    };
    let new_event = json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "e1"},
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "diff.mcs.dev/test", "reportingInstance": "diff-1",
        "action": "Testing", "reason": "Tested", "type": "Normal", "note": "hello",
        "regarding": {"apiVersion": "diff.mcs.dev/v1", "kind": "Sprocket", "name": "a", "namespace": "{ns}"},
    });
    p.same(
        "create an events.k8s.io Event",
        "POST",
        "/apis/events.k8s.io/v1/namespaces/{ns}/events",
        Some(&new_event),
        JSON,
    )
    .await;
    p.same_get("get it", "/apis/events.k8s.io/v1/namespaces/{ns}/events/e1")
        .await;
    p.same("patch it", "PATCH", "/apis/events.k8s.io/v1/namespaces/{ns}/events/e1", Some(&json!({"note": "again", "series": {"count": 2, "lastObservedTime": "2026-01-01T00:00:01.000000Z"}})), MERGE).await;
    let core_event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "e2"},
        "involvedObject": {"apiVersion": "diff.mcs.dev/v1", "kind": "Sprocket", "name": "a", "namespace": "{ns}"},
        "reason": "Tested", "message": "hi", "type": "Normal", "source": {"component": "x"},
        "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:00Z", "count": 1,
    });
    p.same(
        "create a core Event",
        "POST",
        "/api/v1/namespaces/{ns}/events",
        Some(&core_event),
        JSON,
    )
    .await;
    // (`source` leaves out the events.k8s.io Event that a real server also lists here.)
    p.same_get(
        "list with a field selector",
        "/api/v1/namespaces/{ns}/events?fieldSelector=involvedObject.name%3Da,source%3Dx",
    )
    .await;
    // Known difference "Events": a real apiserver stores both Event APIs in one place, so
    // each lists the other's events; the test server keeps them apart. Checked explicitly.
    let (r, t) = p
        .both("GET", "/api/v1/namespaces/{ns}/events/e1", None, JSON)
        .await;
    assert_eq!(
        (r.code, t.code),
        (200, 404),
        "the events.k8s.io Event through core v1"
    );
    let (r, t) = p
        .both(
            "GET",
            "/apis/events.k8s.io/v1/namespaces/{ns}/events/e2",
            None,
            JSON,
        )
        .await;
    assert_eq!(
        (r.code, t.code),
        (200, 404),
        "the core Event through events.k8s.io"
    );
    p.finish();
}
