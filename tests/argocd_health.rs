//! The Argo CD health checks of `deploy/argocd/health/*.lua`, run in a real Lua interpreter
//! (Lua 5.4, vendored by the `mlua` crate) the way Argo CD runs them: a fresh state per object
//! with only the base, package and table libraries (Argo CD opens no `string` library for custom
//! checks), the object as the global `obj` converted like Argo CD's `decodeValue` (JSON objects
//! and arrays become tables, `null` becomes nil), and a table `{status, message}` returned.
//!
//! - The verdicts on objects captured from real flows of the operator (`tests/fixtures/argocd/`,
//!   with their expected verdicts below), including a failed task, a canceled task and Degraded
//!   conditions the operator really wrote.
//! - Edge cases: no status, a stale `observedGeneration`, unknown fields, no conditions list.
//! - Two live flows through the real `mcs-operator run` binary (`support::operator::Harness`, on
//!   the test API server or a real one, see `support::cluster`): every object of every kind is
//!   polled every 100 ms and each snapshot's verdict is checked against what the object says.
//!
//! Re-capture the fixtures from the live flows with
//! `MCS_ARGOCD_CAPTURE=1 cargo test --test argocd_health live_` (see `deploy/argocd/README.md`).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use mcs_operator::api::{TaskState, TaskStatus};
use mlua::{Lua, LuaOptions, StdLib, Value as LuaValue};
use serde_json::{Value, json};
use support::operator::{Harness, PREPARED, SCHEME, TIMEOUT};

/// The API group whose kinds have health checks.
const GROUP: &str = "mcs.imaging.dev";
/// Set to `1` to rewrite `tests/fixtures/argocd/` from the live flows.
const CAPTURE_VAR: &str = "MCS_ARGOCD_CAPTURE";
/// The health states Argo CD accepts from a script.
const ARGO_STATES: [&str; 6] = [
    "Healthy",
    "Progressing",
    "Degraded",
    "Suspended",
    "Missing",
    "Unknown",
];

/// Every committed fixture: its file name (without `.json`), the verdict its object must get,
/// and words the message must contain.
const FIXTURES: &[(&str, &str, &[&str])] = &[
    ("hypervisorconnection-ready", "Healthy", &["Available"]),
    ("hostingunit-ready", "Healthy", &["Available", "storages"]),
    ("identitypool-ready", "Healthy", &["identities in use"]),
    ("imagedefinition-ready", "Healthy", &["Available"]),
    ("imageversion-ready", "Healthy", &[]),
    (
        "imageversionspec-master-ready",
        "Healthy",
        &["Available", "master image"],
    ),
    (
        "imageversionspec-prepared-running",
        "Progressing",
        &["NewImageVersionSpec task", "%"],
    ),
    ("imageversionspec-prepared-ready", "Healthy", &["finished"]),
    ("provscheme-scaling", "Progressing", &["Scaling", "wanted"]),
    ("provscheme-ready", "Healthy", &["version 1 is current"]),
    (
        "provscheme-stale-generation",
        "Progressing",
        &["Waiting for the operator to observe generation 2"],
    ),
    (
        "provscheme-pending-updates",
        "Healthy",
        &["version 2 is current", "3 machines PendingUpdate"],
    ),
    ("provvm-ready", "Healthy", &["built from scheme version 1"]),
    ("provvm-pending-update", "Healthy", &["PendingUpdate"]),
    (
        "imageversionspec-master-snapshot-not-found",
        "Degraded",
        &["SnapshotNotFound"],
    ),
    (
        "imageversionspec-prepared-failed",
        "Degraded",
        &[
            "NewImageVersionSpec task SnapshotNotFound",
            "mcs.imaging.dev/retry",
        ],
    ),
    ("imageversion-failed", "Degraded", &["Failed"]),
    (
        "imageversionspec-prepared-canceled",
        "Degraded",
        &[
            "NewImageVersionSpec task Canceled",
            "canceled by the annotation",
        ],
    ),
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture_dir() -> PathBuf {
    root().join("tests/fixtures/argocd")
}

fn script_path(kind: &str) -> PathBuf {
    root().join(format!("deploy/argocd/health/{kind}.lua"))
}

fn script(kind: &str) -> String {
    let path = script_path(kind);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The kinds of the committed CRDs (`crds/`).
fn crd_kinds() -> Vec<String> {
    let mut kinds = Vec::new();
    for entry in std::fs::read_dir(root().join("crds")).expect("crds/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).expect("CRD file");
            let crd: Value = serde_yaml::from_str(&text).expect("CRD YAML");
            assert_eq!(crd["spec"]["group"], GROUP, "{}", path.display());
            kinds.push(
                crd["spec"]["names"]["kind"]
                    .as_str()
                    .expect("spec.names.kind")
                    .to_owned(),
            );
        }
    }
    kinds.sort();
    kinds
}

/// What a health check returned.
#[derive(Clone, Debug, PartialEq)]
struct Verdict {
    status: String,
    message: String,
}

/// Converts JSON to a Lua value as Argo CD's `decodeValue` does: objects and arrays become
/// tables (arrays from index 1), `null` becomes nil (so a `null` field or item is absent).
/// Argo CD's Lua (gopher-lua) has only floating-point numbers; whole numbers become Lua 5.4
/// integers here so that `tostring` prints them the same (`3`, not `3.0`).
fn to_lua(lua: &Lua, value: &Value) -> mlua::Result<LuaValue> {
    Ok(match value {
        Value::Null => LuaValue::Nil,
        Value::Bool(b) => LuaValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => LuaValue::Integer(i),
            None => LuaValue::Number(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => LuaValue::String(lua.create_string(s)?),
        Value::Array(items) => {
            let table = lua.create_table()?;
            for item in items {
                let item = to_lua(lua, item)?;
                if !item.is_nil() {
                    table.raw_push(item)?;
                }
            }
            LuaValue::Table(table)
        }
        Value::Object(map) => {
            let table = lua.create_table()?;
            for (key, item) in map {
                table.raw_set(key.as_str(), to_lua(lua, item)?)?;
            }
            LuaValue::Table(table)
        }
    })
}

/// Runs `kind`'s health check on `object`, or says why it could not give a verdict.
fn try_health(kind: &str, object: &Value) -> Result<Verdict, String> {
    let lua = Lua::new_with(StdLib::PACKAGE | StdLib::TABLE, LuaOptions::default())
        .map_err(|e| format!("Lua state: {e}"))?;
    let obj = to_lua(&lua, object).map_err(|e| format!("converting the object: {e}"))?;
    lua.globals()
        .set("obj", obj)
        .map_err(|e| format!("setting obj: {e}"))?;
    let returned: LuaValue = lua
        .load(script(kind))
        .set_name(format!("{kind}.lua"))
        .eval()
        .map_err(|e| format!("the script failed: {e}"))?;
    let LuaValue::Table(table) = returned else {
        return Err(format!(
            "the script returned {} instead of a table",
            returned.type_name()
        ));
    };
    let field = |name: &str| -> Result<String, String> {
        match table.get::<LuaValue>(name) {
            Ok(LuaValue::String(s)) => Ok(s.to_string_lossy()),
            Ok(other) => Err(format!(
                "{name} is {} instead of a string",
                other.type_name()
            )),
            Err(e) => Err(format!("reading {name}: {e}")),
        }
    };
    let verdict = Verdict {
        status: field("status")?,
        message: field("message")?,
    };
    if !ARGO_STATES.contains(&verdict.status.as_str()) {
        return Err(format!(
            "{:?} is not an Argo CD health state",
            verdict.status
        ));
    }
    Ok(verdict)
}

/// Runs `kind`'s health check on `object`; panics (showing the object) when it fails.
fn health(kind: &str, object: &Value) -> Verdict {
    try_health(kind, object).unwrap_or_else(|e| {
        panic!(
            "{kind} health check: {e}\nobject: {}",
            serde_json::to_string_pretty(object).unwrap_or_default()
        )
    })
}

fn kind_of(object: &Value) -> &str {
    object["kind"].as_str().expect("the object has a kind")
}

fn name_of(object: &Value) -> String {
    format!(
        "{}/{}",
        kind_of(object),
        object["metadata"]["name"].as_str().unwrap_or("?")
    )
}

fn condition<'a>(status: &'a Value, kind: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()
        .and_then(|list| list.iter().find(|c| c["type"] == kind))
}

fn holds(status: &Value, kind: &str) -> bool {
    condition(status, kind).is_some_and(|c| c["status"] == "True")
}

/// The verdict `object` must get and words its message must contain, derived independently of
/// the scripts from the operator's own types (`TaskState::is_running`, ...) and the rules of
/// `deploy/argocd/README.md`.
fn expected(kind: &str, object: &Value) -> Result<(&'static str, Vec<String>), String> {
    let Some(status) = object.get("status").filter(|s| s.is_object()) else {
        return Ok(("Progressing", vec!["no status yet".into()]));
    };
    if let Some(generation) = object["metadata"]["generation"].as_i64()
        && status["observedGeneration"]
            .as_i64()
            .is_none_or(|observed| observed < generation)
    {
        return Ok((
            "Progressing",
            vec![format!(
                "Waiting for the operator to observe generation {generation}"
            )],
        ));
    }
    if let Some(task) = status.get("task") {
        let task: TaskStatus =
            serde_json::from_value(task.clone()).map_err(|e| format!("status.task: {e}"))?;
        if task.task_state.is_running() {
            return Ok((
                "Progressing",
                vec![
                    format!("{} task {}", task.task_type.as_str(), task.task_state),
                    format!("{}%", task.task_progress),
                ],
            ));
        }
        if task.task_state != TaskState::Finished {
            let mut words = vec![format!(
                "{} task {}",
                task.task_type.as_str(),
                task.task_state
            )];
            words.extend(task.terminating_error.map(|e| e.message));
            return Ok(("Degraded", words));
        }
    }
    let reason = |kind: &str| {
        condition(status, kind)
            .and_then(|c| c["reason"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    if holds(status, "Degraded") {
        return Ok(("Degraded", vec![reason("Degraded")]));
    }
    if kind == "ProvScheme" && holds(status, "Progressing") {
        return Ok(("Progressing", vec![reason("Progressing")]));
    }
    if holds(status, "Ready") {
        let mut words = vec![reason("Ready")];
        if kind == "ProvVm" && status["updateStatus"] == "PendingUpdate" {
            words.push("PendingUpdate".into());
        }
        if kind == "ProvScheme"
            && let Some(n) = status["pendingUpdateMachines"].as_i64().filter(|n| *n > 0)
        {
            words.push(format!("{n} machines PendingUpdate"));
        }
        return Ok(("Healthy", words));
    }
    if holds(status, "Progressing") && kind != "IdentityPool" {
        return Ok(("Progressing", vec![reason("Progressing")]));
    }
    if condition(status, "Ready").is_none() {
        return Ok(("Progressing", vec!["no Ready condition yet".into()]));
    }
    let verdict = if kind == "IdentityPool" {
        "Degraded"
    } else {
        "Progressing"
    };
    Ok((verdict, vec![format!("Not ready: {}", reason("Ready"))]))
}

/// Checks `verdict` against [`expected`]; the error names the object and both sides.
fn check_consistent(object: &Value, verdict: &Verdict) -> Result<(), String> {
    let kind = kind_of(object);
    let (status, words) = expected(kind, object)?;
    let missing: Vec<&String> = words
        .iter()
        .filter(|w| !verdict.message.contains(w.as_str()))
        .collect();
    if verdict.status != status || !missing.is_empty() || verdict.message.is_empty() {
        return Err(format!(
            "{}: the health check says {verdict:?}; expected {status} with {words:?} in the message\n{}",
            name_of(object),
            serde_json::to_string_pretty(&object["status"]).unwrap_or_default()
        ));
    }
    Ok(())
}

fn fixture(name: &str) -> Value {
    let path = fixture_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (capture it with {CAPTURE_VAR}=1, see deploy/argocd/README.md)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every Healthy fixture (one or more per kind) with its kind.
fn ready_fixtures() -> Vec<(String, Value)> {
    let fixtures: Vec<(String, Value)> = FIXTURES
        .iter()
        .filter(|f| f.0.ends_with("-ready"))
        .map(|f| {
            let object = fixture(f.0);
            (kind_of(&object).to_owned(), object)
        })
        .collect();
    let mut kinds: Vec<String> = fixtures.iter().map(|f| f.0.clone()).collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(kinds.len(), 8, "a Ready fixture of every kind: {kinds:?}");
    fixtures
}

// ---------------------------------------------------------------------------------------------
// The scripts and the ConfigMap.

#[test]
fn every_kind_has_a_health_check_in_the_configmap() {
    let kinds = crd_kinds();
    assert_eq!(kinds.len(), 8, "{kinds:?}");
    let mut scripts: Vec<String> = std::fs::read_dir(root().join("deploy/argocd/health"))
        .expect("deploy/argocd/health")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    scripts.sort();
    let wanted: Vec<String> = kinds.iter().map(|k| format!("{k}.lua")).collect();
    assert_eq!(scripts, wanted, "one script per kind, named after the kind");

    let text = std::fs::read_to_string(root().join("deploy/argocd/argocd-cm.yaml"))
        .expect("argocd-cm.yaml");
    let cm: Value = serde_yaml::from_str(&text).expect("argocd-cm.yaml is YAML");
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["name"], "argocd-cm");
    let data = cm["data"].as_object().expect("data");
    let keys: Vec<&String> = data.keys().collect();
    let wanted_keys: Vec<String> = kinds
        .iter()
        .map(|k| format!("resource.customizations.health.{GROUP}_{k}"))
        .collect();
    assert_eq!(keys, wanted_keys.iter().collect::<Vec<_>>());
    for kind in &kinds {
        assert_eq!(
            data[format!("resource.customizations.health.{GROUP}_{kind}").as_str()],
            script(kind),
            "argocd-cm.yaml differs from health/{kind}.lua: run \
             deploy/argocd/render-argocd-cm > deploy/argocd/argocd-cm.yaml"
        );
    }
}

/// The text between the shared-part markers of `kind`'s script.
fn shared_part(kind: &str) -> String {
    let text = script(kind);
    let begin = text
        .find("-- BEGIN mcs-operator shared part")
        .unwrap_or_else(|| panic!("{kind}.lua has no BEGIN marker"));
    let end = text
        .find("-- END mcs-operator shared part")
        .unwrap_or_else(|| panic!("{kind}.lua has no END marker"));
    text[begin..end].to_owned()
}

#[test]
fn the_shared_part_is_identical_in_every_script() {
    let kinds = crd_kinds();
    let first = shared_part(&kinds[0]);
    for kind in &kinds[1..] {
        assert_eq!(
            shared_part(kind),
            first,
            "the shared part of {kind}.lua differs from {}.lua's",
            kinds[0]
        );
    }
}

/// The code of a Lua chunk without its comments and string literals (each string becomes `""`).
fn code_only(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    // The end of a long bracket `[[`, `[==[`, ... starting at `at`, if there is one.
    let long_bracket = |at: usize| -> Option<(usize, String)> {
        if chars.get(at) != Some(&'[') {
            return None;
        }
        let mut j = at + 1;
        while chars.get(j) == Some(&'=') {
            j += 1;
        }
        (chars.get(j) == Some(&'[')).then(|| {
            let level = j - at - 1;
            (j + 1, format!("]{}]", "=".repeat(level)))
        })
    };
    let skip_to = |from: usize, close: &str| -> usize {
        let rest: String = chars[from..].iter().collect();
        rest.find(close).map_or(chars.len(), |p| {
            from + rest[..p].chars().count() + close.len()
        })
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '-' && chars.get(i + 1) == Some(&'-') {
            if let Some((start, close)) = long_bracket(i + 2) {
                i = skip_to(start, &close);
            } else {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
        } else if c == '"' || c == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if let Some((start, close)) = long_bracket(i) {
            i = skip_to(start, &close);
            out.push_str("\"\"");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Argo CD runs the scripts with gopher-lua: Lua 5.1 syntax, and for custom checks only the
/// base, package, table and (a safe) os library. Lua 5.4 here would accept more, so the
/// scripts are also checked for what 5.1 or Argo CD would refuse.
#[test]
fn scripts_use_only_lua_5_1_and_the_libraries_argo_cd_opens() {
    let identifier = regex::Regex::new(r"[A-Za-z_][A-Za-z0-9_]*").expect("regex");
    let not_in_argo = [
        "string",
        "math",
        "io",
        "os",
        "utf8",
        "coroutine",
        "debug",
        "require",
        "load",
        "loadstring",
        "dofile",
        "goto",
    ];
    for kind in crd_kinds() {
        let code = code_only(&script(&kind));
        for word in identifier.find_iter(&code) {
            assert!(
                !not_in_argo.contains(&word.as_str()),
                "{kind}.lua uses `{}`, which Argo CD's custom health checks do not have",
                word.as_str()
            );
        }
        for operator in ["//", "&", "|", "<<", ">>", "::", ":"] {
            assert!(
                !code.contains(operator),
                "{kind}.lua uses `{operator}` (Lua 5.3+ or a method call on a string)"
            );
        }
        let tilde = code
            .match_indices('~')
            .all(|(i, _)| code[i..].starts_with("~="));
        assert!(tilde, "{kind}.lua uses `~` as an operator (Lua 5.3+)");
    }
}

#[test]
fn code_only_drops_comments_and_strings() {
    let code = code_only(
        "local a = \"x // y\" -- c: d\nlocal b = 'it''s' --[==[ long\n: ]==] local c = [[ | ]]",
    );
    assert_eq!(code, "local a = \"\" \nlocal b = \"\"\"\"  local c = \"\"");
}

#[test]
fn the_test_interpreter_lacks_what_argo_cd_lacks() {
    let lua = Lua::new_with(StdLib::PACKAGE | StdLib::TABLE, LuaOptions::default()).expect("Lua");
    for library in ["string", "math", "io", "os"] {
        let value: LuaValue = lua.globals().get(library).expect("global");
        assert!(value.is_nil(), "{library} is loaded");
    }
    let error = lua
        .load("return ('x'):upper()")
        .eval::<String>()
        .expect_err("no string methods");
    assert!(error.to_string().contains("attempt to index"), "{error}");
}

fn argocd_yaml(file: &str) -> Value {
    let path = root().join("deploy/argocd").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What both Applications must say: where they install from and how they sync.
fn check_application(app: &Value, path: &str) {
    assert_eq!(app["apiVersion"], "argoproj.io/v1alpha1");
    assert_eq!(app["kind"], "Application");
    assert_eq!(app["metadata"]["namespace"], "argocd");
    assert_eq!(app["spec"]["source"]["path"], path);
    assert!(
        root().join(path).is_dir(),
        "{path} exists in the repository"
    );
    assert_eq!(app["spec"]["destination"]["namespace"], "mcs-system");
    let options: Vec<&str> = app["spec"]["syncPolicy"]["syncOptions"]
        .as_array()
        .expect("syncOptions")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(options.contains(&"ServerSideApply=true"), "{options:?}");
}

/// A real `name` program that answers `args`: `$var`, the project's tool folders
/// (`scripts/k8s-tools`, `scripts/kube-assets`), or `PATH`.
fn tool(name: &str, var: &str, args: &[&str]) -> Option<PathBuf> {
    let candidates = [
        std::env::var_os(var).map(PathBuf::from),
        std::env::var_os("MCS_K8S_TOOLS").map(|d| PathBuf::from(d).join(name)),
        Some(root().join("target/k8s-tools").join(name)),
        std::env::var_os("KUBEBUILDER_ASSETS").map(|d| PathBuf::from(d).join(name)),
        Some(root().join("target/kube-assets").join(name)),
        Some(PathBuf::from(name)),
    ];
    candidates.into_iter().flatten().find(|path| {
        std::process::Command::new(path)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Runs `program` and returns its standard output; panics with its error output on failure.
fn output(program: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {args:?}: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The objects of a multi-document YAML stream.
fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| {
            let value = <serde_yaml::Value as serde::Deserialize>::deserialize(d).expect("YAML");
            serde_json::to_value(value).expect("JSON")
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn crd_annotations(objects: &[Value]) -> Vec<(String, Value)> {
    objects
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
        .map(|o| {
            (
                o["spec"]["names"]["kind"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                o["metadata"]["annotations"].clone(),
            )
        })
        .collect()
}

/// The chart Application's values are accepted by the chart (its values schema is strict) and
/// its CRDs carry `helm.sh/resource-policy: keep`. Needs a real `helm`.
#[test]
fn the_helm_application_renders_with_the_real_helm() {
    let app = argocd_yaml("application-helm.yaml");
    check_application(&app, "charts/mcs-operator");
    let helm = &app["spec"]["source"]["helm"];
    let Some(program) = tool("helm", "HELM", &["version"]) else {
        eprintln!(
            "SKIPPED the_helm_application_renders_with_the_real_helm: no helm (scripts/k8s-tools installs it)"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        serde_yaml::to_string(&helm["valuesObject"]).expect("values"),
    )
    .expect("values written");
    let chart = root().join("charts/mcs-operator");
    let rendered = output(
        &program,
        &[
            "template",
            helm["releaseName"].as_str().expect("releaseName"),
            &chart.to_string_lossy(),
            "--namespace",
            "mcs-system",
            "--values",
            &values.to_string_lossy(),
        ],
    );
    let objects = documents(&rendered);
    let crds = crd_annotations(&objects);
    assert_eq!(crds.len(), 8, "{crds:?}");
    for (kind, annotations) in crds {
        assert_eq!(annotations["helm.sh/resource-policy"], "keep", "{kind}");
    }
    assert!(objects.iter().any(|o| o["kind"] == "Deployment"));
}

/// The kustomize Application's inline patch, applied by the real kustomize (`kubectl
/// kustomize`) to `deploy/`, marks every CRD Prune=false,Delete=false and nothing else.
#[test]
fn the_kustomize_application_renders_with_the_real_kustomize() {
    let app = argocd_yaml("application-kustomize.yaml");
    check_application(&app, "deploy");
    let Some(kubectl) = tool("kubectl", "KUBECTL", &["version", "--client"]) else {
        eprintln!(
            "SKIPPED the_kustomize_application_renders_with_the_real_kustomize: no kubectl (scripts/kube-assets installs it)"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let here = dir.path().canonicalize().expect("tempdir path");
    let deploy = root().join("deploy").canonicalize().expect("deploy/");
    // Kustomize takes only relative paths to other kustomizations.
    let up = "../".repeat(here.components().count() - 1);
    let base = format!(
        "{up}{}",
        deploy.strip_prefix("/").expect("absolute").display()
    );
    let kustomization = json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [base],
        "patches": app["spec"]["source"]["kustomize"]["patches"],
    });
    std::fs::write(
        here.join("kustomization.yaml"),
        serde_yaml::to_string(&kustomization).expect("kustomization"),
    )
    .expect("kustomization written");
    let plain = documents(&output(&kubectl, &["kustomize", &deploy.to_string_lossy()]));
    let patched = documents(&output(&kubectl, &["kustomize", &here.to_string_lossy()]));
    assert_eq!(plain.len(), patched.len());
    let crds = crd_annotations(&patched);
    assert_eq!(crds.len(), 8, "{crds:?}");
    for (kind, annotations) in crds {
        assert_eq!(
            annotations["argocd.argoproj.io/sync-options"], "Prune=false,Delete=false",
            "{kind}"
        );
    }
    for (before, after) in plain.iter().zip(&patched) {
        if before["kind"] != "CustomResourceDefinition" {
            assert_eq!(before, after, "only the CRDs are patched");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Verdicts on captured objects.

#[test]
fn captured_objects_get_the_expected_verdicts() {
    let mut kinds_seen = std::collections::BTreeSet::new();
    for (name, status, words) in FIXTURES {
        let object = fixture(name);
        let kind = kind_of(&object);
        kinds_seen.insert(kind.to_owned());
        let verdict = health(kind, &object);
        assert_eq!(verdict.status, *status, "{name}: {verdict:?}");
        for word in *words {
            assert!(
                verdict.message.contains(word),
                "{name}: {word:?} is not in {:?}",
                verdict.message
            );
        }
        check_consistent(&object, &verdict).unwrap_or_else(|e| panic!("{name}: {e}"));
        eprintln!("{name:45} {:11} {}", verdict.status, verdict.message);
    }
    assert_eq!(
        kinds_seen.into_iter().collect::<Vec<_>>(),
        crd_kinds(),
        "every kind has a captured object"
    );
}

#[test]
fn the_fixture_folder_holds_exactly_the_listed_fixtures() {
    let mut files: Vec<String> = std::fs::read_dir(fixture_dir())
        .expect("tests/fixtures/argocd")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut listed: Vec<String> = FIXTURES.iter().map(|f| format!("{}.json", f.0)).collect();
    listed.sort();
    assert_eq!(files, listed);
}

/// The failed and canceled fixtures hold what the operator really writes for them.
#[test]
fn failure_fixtures_are_real_failures() {
    let failed = fixture("imageversionspec-prepared-failed");
    assert_eq!(failed["status"]["task"]["taskState"], "SnapshotNotFound");
    assert_eq!(failed["status"]["task"]["workflowStatus"], "Terminated");
    let canceled = fixture("imageversionspec-prepared-canceled");
    assert_eq!(canceled["status"]["task"]["taskState"], "Canceled");
    let master = fixture("imageversionspec-master-snapshot-not-found");
    let degraded = condition(&master["status"], "Degraded").expect("Degraded condition");
    assert_eq!(
        (&degraded["status"], &degraded["reason"]),
        (&json!("True"), &json!("SnapshotNotFound"))
    );
    let version = fixture("imageversion-failed");
    assert_eq!(version["status"]["imageVersionStatus"], "Failed");
}

// ---------------------------------------------------------------------------------------------
// Edge cases, built from captured objects.

fn with(mut object: Value, change: impl FnOnce(&mut Value)) -> Value {
    change(&mut object);
    object
}

#[test]
fn no_status_is_progressing() {
    for (kind, ready) in ready_fixtures() {
        for object in [
            with(ready.clone(), |o| {
                o.as_object_mut().expect("object").remove("status");
            }),
            with(ready.clone(), |o| o["status"] = Value::Null),
        ] {
            let verdict = health(&kind, &object);
            assert_eq!(
                verdict,
                Verdict {
                    status: "Progressing".into(),
                    message: "Waiting for the operator: no status yet".into()
                },
                "{kind}"
            );
            check_consistent(&object, &verdict).expect("consistent");
        }
    }
}

#[test]
fn a_stale_observed_generation_is_progressing() {
    for (kind, ready) in ready_fixtures() {
        let observed = ready["status"]["observedGeneration"]
            .as_i64()
            .expect("observedGeneration");
        let newer = with(ready.clone(), |o| {
            o["metadata"]["generation"] = json!(observed + 1)
        });
        let verdict = health(&kind, &newer);
        assert_eq!(verdict.status, "Progressing", "{kind}: {verdict:?}");
        assert_eq!(
            verdict.message,
            format!(
                "Waiting for the operator to observe generation {} (status is for generation {observed})",
                observed + 1
            )
        );
        let unobserved = with(ready.clone(), |o| {
            o["status"]
                .as_object_mut()
                .expect("status")
                .remove("observedGeneration");
        });
        let verdict = health(&kind, &unobserved);
        assert_eq!(verdict.status, "Progressing", "{kind}: {verdict:?}");
        assert!(verdict.message.ends_with("(status is for generation none)"));
        // An object without metadata.generation is judged by its status alone.
        let no_generation = with(ready.clone(), |o| {
            o["metadata"]
                .as_object_mut()
                .expect("metadata")
                .remove("generation");
        });
        assert_eq!(
            health(&kind, &no_generation),
            health(&kind, &ready),
            "{kind}"
        );
    }
}

#[test]
fn unknown_fields_do_not_change_the_verdict() {
    for (name, _, _) in FIXTURES {
        let object = fixture(name);
        let kind = kind_of(&object).to_owned();
        let before = health(&kind, &object);
        let extended = with(object, |o| {
            o["spec"]["futureField"] = json!({"a": [1, 2.5, null, "x"]});
            o["metadata"]["annotations"]["example.com/note"] = json!("Progressing");
            let status = o["status"].as_object_mut().expect("status");
            status.insert("futureStatus".into(), json!({"phase": "Degraded"}));
            if let Some(list) = status.get_mut("conditions").and_then(Value::as_array_mut) {
                for c in list.iter_mut() {
                    c["severity"] = json!("Info");
                }
                list.push(json!({"type": "Reconciled", "status": "True", "reason": "X"}));
                list.push(json!({"type": "Stalled", "status": "Unknown"}));
                list.push(Value::Null);
            }
        });
        assert_eq!(health(&kind, &extended), before, "{name}");
    }
}

#[test]
fn missing_or_malformed_conditions_are_progressing() {
    for (kind, ready) in ready_fixtures() {
        for conditions in [None, Some(json!([])), Some(json!("Ready")), Some(json!({}))] {
            let object = with(ready.clone(), |o| {
                let status = o["status"].as_object_mut().expect("status");
                match &conditions {
                    None => {
                        status.remove("conditions");
                    }
                    Some(value) => {
                        status.insert("conditions".into(), value.clone());
                    }
                }
            });
            let verdict = health(&kind, &object);
            assert_eq!(
                verdict,
                Verdict {
                    status: "Progressing".into(),
                    message: "Waiting for the operator: no Ready condition yet".into()
                },
                "{kind} with conditions {conditions:?}"
            );
        }
        // A condition list with only other types, or Ready with no reason or message.
        let object = with(ready.clone(), |o| {
            o["status"]["conditions"] = json!([{"type": "Ready", "status": "Unknown"}]);
        });
        let verdict = health(&kind, &object);
        let expected = if kind == "IdentityPool" {
            "Degraded"
        } else {
            "Progressing"
        };
        assert_eq!(verdict.status, expected, "{kind}: {verdict:?}");
        assert_eq!(verdict.message, "Not ready: ");
    }
}

#[test]
fn a_degraded_condition_wins_over_ready() {
    for (kind, ready) in ready_fixtures() {
        let object = with(ready, |o| {
            let list = o["status"]["conditions"]
                .as_array_mut()
                .expect("conditions");
            list.retain(|c| c["type"] != "Degraded");
            list.push(
                json!({"type": "Degraded", "status": "True", "reason": "StorageNotFound",
                             "message": "spec.storages[primary]: gone"}),
            );
        });
        let verdict = health(&kind, &object);
        assert_eq!(
            verdict,
            Verdict {
                status: "Degraded".into(),
                message: "StorageNotFound: spec.storages[primary]: gone".into()
            },
            "{kind}"
        );
    }
}

#[test]
fn task_states_are_read_from_the_workflow_status_first() {
    let running = fixture("imageversionspec-prepared-running");
    // A state this script does not list, still running: Progressing.
    let future = with(running.clone(), |o| {
        o["status"]["task"]["taskState"] = json!("VerifyingImage")
    });
    let verdict = health("ImageVersionSpec", &future);
    assert_eq!(verdict.status, "Progressing", "{verdict:?}");
    assert!(verdict.message.contains("VerifyingImage"), "{verdict:?}");
    // No workflowStatus: the SDK's running states decide.
    let bare = with(running.clone(), |o| {
        o["status"]["task"]
            .as_object_mut()
            .expect("task")
            .remove("workflowStatus");
    });
    assert_eq!(
        health("ImageVersionSpec", &bare),
        health("ImageVersionSpec", &running)
    );
    let failed = with(bare, |o| {
        o["status"]["task"]["taskState"] = json!("InsufficientResources")
    });
    let verdict = health("ImageVersionSpec", &failed);
    assert_eq!(verdict.status, "Degraded", "{verdict:?}");
    assert!(
        verdict
            .message
            .starts_with("NewImageVersionSpec task InsufficientResources"),
        "{verdict:?}"
    );
}

#[test]
fn every_task_state_gets_the_verdict_its_kind_implies() {
    let finished = fixture("imageversionspec-prepared-ready");
    for state in TaskState::ALL {
        let workflow = if state.is_running() {
            "Running"
        } else if state == TaskState::Finished {
            "Completed"
        } else {
            "Terminated"
        };
        let object = with(finished.clone(), |o| {
            o["status"]["task"]["taskState"] = json!(state.as_str());
            o["status"]["task"]["workflowStatus"] = json!(workflow);
        });
        let verdict = health("ImageVersionSpec", &object);
        let wanted = if state.is_running() {
            "Progressing"
        } else if state == TaskState::Finished {
            "Healthy"
        } else {
            "Degraded"
        };
        assert_eq!(verdict.status, wanted, "{state}: {verdict:?}");
        check_consistent(&object, &verdict).unwrap_or_else(|e| panic!("{state}: {e}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Live flows through the real operator.

/// Every object of every mcs kind in the harness's namespace, with `kind` and `apiVersion` set.
async fn list_all(h: &Harness) -> Vec<Value> {
    let mut out = Vec::new();
    for resource in mcs_operator::dev::api_resources() {
        let api: Api<DynamicObject> =
            Api::namespaced_with(h.cluster.client.clone(), &h.cluster.namespace, &resource);
        let list = api
            .list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("listing {}: {e}", resource.kind));
        for item in list.items {
            let mut value = serde_json::to_value(&item).expect("object JSON");
            value["kind"] = json!(resource.kind);
            value["apiVersion"] = json!(resource.api_version);
            out.push(value);
        }
    }
    out
}

/// One poll: every object's verdict, each checked against [`expected`].
async fn poll(h: &Harness, log: &mut Vec<String>) -> Vec<(Value, Verdict)> {
    let mut out = Vec::new();
    for object in list_all(h).await {
        let verdict = health(kind_of(&object), &object);
        if let Err(error) = check_consistent(&object, &verdict) {
            panic!("{error}\n{}", h.log_tail());
        }
        let line = format!(
            "{} {} {}",
            name_of(&object),
            verdict.status,
            verdict.message
        );
        if !log.contains(&line) {
            log.push(line);
        }
        out.push((object, verdict));
    }
    out
}

fn find<'a>(
    snapshot: &'a [(Value, Verdict)],
    kind: &str,
    name: &str,
) -> Option<&'a (Value, Verdict)> {
    snapshot
        .iter()
        .find(|(o, _)| o["kind"] == kind && o["metadata"]["name"] == name)
}

/// Objects captured for the fixtures, first seen first kept.
struct Capture {
    objects: BTreeMap<String, Value>,
    images: String,
    fast: String,
    namespace: String,
}

impl Capture {
    fn new(h: &Harness) -> Capture {
        Capture {
            objects: BTreeMap::new(),
            images: h.images.to_string_lossy().into_owned(),
            fast: h.fast.to_string_lossy().into_owned(),
            namespace: h.cluster.namespace.clone(),
        }
    }

    fn keep(&mut self, name: &str, object: &Value) {
        self.objects
            .entry(name.to_owned())
            .or_insert_with(|| object.clone());
    }

    /// With [`CAPTURE_VAR`] set, writes every kept object to `tests/fixtures/argocd/` without
    /// its managed fields, the test's storage paths and namespace renamed to the examples'.
    fn write(&self, names: &[&str]) {
        if std::env::var(CAPTURE_VAR).as_deref() != Ok("1") {
            return;
        }
        std::fs::create_dir_all(fixture_dir()).expect("fixture folder");
        for name in names {
            let mut object = self
                .objects
                .get(*name)
                .unwrap_or_else(|| panic!("{name} was not seen in the flow; nothing captured"))
                .clone();
            if let Some(metadata) = object["metadata"].as_object_mut() {
                metadata.remove("managedFields");
            }
            let text = serde_json::to_string_pretty(&object)
                .expect("JSON")
                .replace(&self.images, "/var/lib/mcs/images")
                .replace(&self.fast, "/var/lib/mcs/fast")
                .replace(&self.namespace, "vdi");
            let path = fixture_dir().join(format!("{name}.json"));
            let partial = path.with_extension("json.partial");
            std::fs::write(&partial, format!("{text}\n")).expect("fixture written");
            std::fs::rename(&partial, &path).expect("fixture renamed");
            eprintln!("captured {}", path.display());
        }
    }
}

/// Polls (every 100 ms, each verdict checked) until `done` accepts a snapshot; `visit` sees
/// every snapshot first.
async fn poll_until(
    h: &Harness,
    what: &str,
    log: &mut Vec<String>,
    mut visit: impl FnMut(&[(Value, Verdict)]),
    done: impl Fn(&[(Value, Verdict)]) -> bool,
) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let snapshot = poll(h, log).await;
        visit(&snapshot);
        if done(&snapshot) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; verdicts seen:\n{}\n{}",
            log.join("\n"),
            h.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn status_is(snapshot: &[(Value, Verdict)], kind: &str, name: &str, status: &str) -> bool {
    find(snapshot, kind, name).is_some_and(|(_, v)| v.status == status)
}

/// The examples flow: every verdict on the way is consistent with its object, the prepared
/// spec is seen Progressing with its task, and everything ends Healthy. Then a scheme change
/// made while the operator is down is Progressing (stale generation) and, once the operator is
/// back, the machines are Healthy with PendingUpdate in the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_examples_flow_verdicts_follow_the_objects() {
    let started = Instant::now();
    let mut h = Harness::new("argocd-examples", "64M", 32).await;
    // Copies at 32 MiB/s: the prepare takes about two seconds, long enough to be polled.
    h.throttle_qemu_img("32M");
    let mut capture = Capture::new(&h);
    let mut log = Vec::new();

    let objects = h.examples();
    h.apply(&objects).await;
    let before = poll(&h, &mut log).await;
    assert_eq!(
        before.len(),
        objects.len(),
        "every example object was listed"
    );
    h.start_operator();

    let mut prepared_progressing = false;
    poll_until(
        &h,
        "every example object Healthy",
        &mut log,
        |snapshot| {
            for (object, verdict) in snapshot {
                let kind = kind_of(object);
                let name = object["metadata"]["name"].as_str().unwrap_or_default();
                let status = &object["status"];
                if kind == "ImageVersionSpec"
                    && name == PREPARED
                    && verdict.status == "Progressing"
                    && verdict.message.contains("NewImageVersionSpec task")
                {
                    prepared_progressing = true;
                    if status["task"]["taskProgress"].as_i64().unwrap_or(0) > 0 {
                        capture.keep("imageversionspec-prepared-running", object);
                    }
                }
                if kind == "ProvScheme" && holds(status, "Ready") && holds(status, "Progressing") {
                    capture.keep("provscheme-scaling", object);
                }
            }
        },
        |snapshot| {
            snapshot.len() == objects.len() + 3
                && snapshot.iter().all(|(_, v)| v.status == "Healthy")
        },
    )
    .await;
    assert!(
        prepared_progressing,
        "the prepared spec was never seen Progressing with its task:\n{}",
        log.join("\n")
    );
    let done = poll(&h, &mut log).await;
    for (object, verdict) in &done {
        assert_eq!(verdict.status, "Healthy", "{}", name_of(object));
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let fixture = match (kind_of(object), name) {
            ("ImageVersionSpec", PREPARED) => "imageversionspec-prepared-ready".to_owned(),
            ("ImageVersionSpec", _) => "imageversionspec-master-ready".to_owned(),
            (kind, _) => format!("{}-ready", kind.to_ascii_lowercase()),
        };
        capture.keep(&fixture, object);
    }

    // A configuration change while the operator is down: the status is for generation 1.
    h.kill_operator();
    let schemes: Api<mcs_operator::api::ProvScheme> = h.api();
    schemes
        .patch(
            SCHEME,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"vmCpuCount": 4}})),
        )
        .await
        .expect("scheme patched");
    let stale = poll(&h, &mut log).await;
    let (scheme, verdict) = find(&stale, "ProvScheme", SCHEME).expect("the scheme");
    assert_eq!(verdict.status, "Progressing", "{verdict:?}");
    assert!(
        verdict
            .message
            .starts_with("Waiting for the operator to observe generation 2"),
        "{verdict:?}"
    );
    capture.keep("provscheme-stale-generation", scheme);

    h.start_operator();
    poll_until(
        &h,
        "version 2 with three machines PendingUpdate",
        &mut log,
        |_| {},
        |snapshot| {
            let scheme_done = find(snapshot, "ProvScheme", SCHEME).is_some_and(|(o, v)| {
                v.status == "Healthy"
                    && o["status"]["provisioningSchemeVersion"] == 2
                    && o["status"]["pendingUpdateMachines"] == 3
            });
            let machines = snapshot.iter().filter(|(o, v)| {
                o["kind"] == "ProvVm"
                    && o["status"]["updateStatus"] == "PendingUpdate"
                    && v.status == "Healthy"
            });
            scheme_done && machines.count() == 3
        },
    )
    .await;
    let pending = poll(&h, &mut log).await;
    for (object, verdict) in &pending {
        match kind_of(object) {
            "ProvVm" => {
                assert!(verdict.message.contains("PendingUpdate"), "{verdict:?}");
                capture.keep("provvm-pending-update", object);
            }
            "ProvScheme" => capture.keep("provscheme-pending-updates", object),
            _ => {}
        }
    }
    eprintln!(
        "examples flow: {} distinct verdicts in {:.1} s:\n{}",
        log.len(),
        started.elapsed().as_secs_f64(),
        log.join("\n")
    );
    capture.write(&[
        "hypervisorconnection-ready",
        "hostingunit-ready",
        "identitypool-ready",
        "imagedefinition-ready",
        "imageversion-ready",
        "imageversionspec-master-ready",
        "imageversionspec-prepared-running",
        "imageversionspec-prepared-ready",
        "provscheme-scaling",
        "provscheme-ready",
        "provscheme-stale-generation",
        "provscheme-pending-updates",
        "provvm-ready",
        "provvm-pending-update",
    ]);
}

/// Failures the operator really reports: a master spec whose snapshot does not exist
/// (Degraded condition `SnapshotNotFound`), a prepared spec made from it (failed task), their
/// image version (Failed), and a prepared spec canceled with the cancel annotation while it
/// runs. Every verdict on the way is consistent with its object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_failures_are_degraded() {
    let started = Instant::now();
    let mut h = Harness::new("argocd-failures", "64M", 32).await;
    // Copies at 8 MiB/s: the good prepare runs for seconds, so it can be canceled mid-way.
    h.throttle_qemu_img("8M");
    let mut capture = Capture::new(&h);
    let mut log = Vec::new();

    let mut objects: Vec<Value> = h
        .examples()
        .into_iter()
        .filter(|o| o["kind"] != "ProvScheme")
        .collect();
    objects.push(json!({
        "apiVersion": "mcs.imaging.dev/v1alpha1",
        "kind": "ImageVersion",
        "metadata": {"name": "win11-2026-12"},
        "spec": {"imageDefinitionRef": "win11"},
    }));
    objects.push(json!({
        "apiVersion": "mcs.imaging.dev/v1alpha1",
        "kind": "ImageVersionSpec",
        "metadata": {"name": "win11-2026-12-master"},
        "spec": {
            "imageVersionRef": "win11-2026-12",
            "master": {
                "hostingUnitRef": "lab",
                "masterImagePath": r"XDHyp:\HostingUnits\lab\win11.vm\december.snapshot",
            },
        },
    }));
    objects.push(json!({
        "apiVersion": "mcs.imaging.dev/v1alpha1",
        "kind": "ImageVersionSpec",
        "metadata": {"name": "win11-2026-12-prepared"},
        "spec": {
            "imageVersionRef": "win11-2026-12",
            "prepared": {
                "sourceSpecRef": "win11-2026-12-master",
                "networkMapping": {"0": r"XDHyp:\HostingUnits\lab\lan.network"},
                "vmCpuCount": 2,
                "vmMemoryMB": 4096,
            },
        },
    }));
    h.start_operator();
    h.apply(&objects).await;

    poll_until(
        &h,
        "the good prepare to consolidate",
        &mut log,
        |_| {},
        |snapshot| {
            find(snapshot, "ImageVersionSpec", PREPARED).is_some_and(|(o, v)| {
                o["status"]["task"]["taskState"] == "ConsolidatingMasterImage"
                    && v.status == "Progressing"
            })
        },
    )
    .await;
    let specs: Api<mcs_operator::api::ImageVersionSpec> = h.api();
    specs
        .patch(
            PREPARED,
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"metadata": {"annotations": {"mcs.imaging.dev/cancel": "true"}}}),
            ),
        )
        .await
        .expect("cancel annotation set");

    poll_until(
        &h,
        "the canceled, failed and Degraded objects",
        &mut log,
        |_| {},
        |snapshot| {
            let degraded = |kind: &str, name: &str| status_is(snapshot, kind, name, "Degraded");
            degraded("ImageVersionSpec", PREPARED)
                && degraded("ImageVersionSpec", "win11-2026-12-master")
                && degraded("ImageVersionSpec", "win11-2026-12-prepared")
                && degraded("ImageVersion", "win11-2026-12")
        },
    )
    .await;
    let end = poll(&h, &mut log).await;
    let get = |kind: &str, name: &str| find(&end, kind, name).expect("object").clone();

    let (canceled, verdict) = get("ImageVersionSpec", PREPARED);
    assert_eq!(canceled["status"]["task"]["taskState"], "Canceled");
    assert!(
        verdict.message.contains("canceled by the annotation"),
        "{verdict:?}"
    );
    capture.keep("imageversionspec-prepared-canceled", &canceled);

    let (master, verdict) = get("ImageVersionSpec", "win11-2026-12-master");
    assert!(
        verdict.message.starts_with("SnapshotNotFound: "),
        "{verdict:?}"
    );
    assert!(holds(&master["status"], "Degraded"));
    capture.keep("imageversionspec-master-snapshot-not-found", &master);

    let (failed, verdict) = get("ImageVersionSpec", "win11-2026-12-prepared");
    assert_eq!(failed["status"]["task"]["taskState"], "SnapshotNotFound");
    let error = failed["status"]["task"]["terminatingError"]["message"]
        .as_str()
        .expect("terminatingError.message");
    assert!(verdict.message.contains(error), "{verdict:?}");
    capture.keep("imageversionspec-prepared-failed", &failed);

    let (version, _) = get("ImageVersion", "win11-2026-12");
    capture.keep("imageversion-failed", &version);
    for (object, verdict) in &end {
        let good = [
            "HypervisorConnection",
            "HostingUnit",
            "IdentityPool",
            "ImageDefinition",
        ];
        if good.contains(&kind_of(object)) || object["metadata"]["name"] == "win11-2026-11-master" {
            assert_eq!(
                verdict.status,
                "Healthy",
                "{}: {verdict:?}",
                name_of(object)
            );
        }
    }
    eprintln!(
        "failures flow: {} distinct verdicts in {:.1} s:\n{}",
        log.len(),
        started.elapsed().as_secs_f64(),
        log.join("\n")
    );
    capture.write(&[
        "imageversionspec-prepared-canceled",
        "imageversionspec-master-snapshot-not-found",
        "imageversionspec-prepared-failed",
        "imageversion-failed",
    ]);
}
