//! YAML that every reader agrees on (GitHub issue 9): kubectl, Helm and Argo CD read YAML 1.1,
//! where `On`, `off`, `y`, `0777`, `1:20` or `2001-12-14` are no strings.
//!
//! - every YAML file in the repository reads the same in YAML 1.1 (`yaml11`) and YAML 1.2
//!   (`serde_yaml`);
//! - `crds/` read as YAML 1.1 equals the generated CRDs, and every document of `examples/`
//!   deserializes into its kind;
//! - when a real kubectl is at hand, it reads every file as we do;
//! - the writer (`mcs_operator::yaml`) round-trips any JSON value through both readers.

mod support;
mod yaml11;

use std::path::{Path, PathBuf};
use std::process::Command;

use mcs_operator::api::{
    HostingUnit, HypervisorConnection, IdentityPool, ImageDefinition, ImageVersion,
    ImageVersionSpec, ProvScheme, ProvVm, all_crds,
};
use mcs_operator::crd::file_name;
use proptest::prelude::*;
use serde::Deserialize;
use serde_json::{Map, Value};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `*.yaml`/`*.yml` of the repository (relative paths, sorted): what git tracks plus new
/// files it does not ignore, or a directory walk where git is not available.
fn yaml_files() -> Vec<PathBuf> {
    let is_yaml = |p: &Path| {
        p.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
    };
    let from_git = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(repo())
        .output()
        .ok()
        .filter(|o| o.status.success());
    let mut files: Vec<PathBuf> = match from_git {
        Some(output) => String::from_utf8_lossy(&output.stdout)
            .split('\0')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .filter(|p| is_yaml(p) && repo().join(p).is_file())
            .collect(),
        None => {
            println!("note: git ls-files failed; walking the directory instead");
            let mut found = Vec::new();
            walk(&repo(), &mut found);
            found
                .into_iter()
                .filter(|p| is_yaml(p))
                .filter_map(|p| p.strip_prefix(repo()).ok().map(Path::to_path_buf))
                .collect()
        }
    };
    files.sort();
    files.dedup();
    files
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if path.is_dir() {
            walk(&path, found);
        } else {
            found.push(path);
        }
    }
}

/// The files to check and their text; Helm templates (`{{ ... }}`) are no YAML until rendered.
fn checked_files() -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for path in yaml_files() {
        let text = std::fs::read_to_string(repo().join(&path))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if text.contains("{{") {
            println!("skipped {} (a template: contains `{{{{`)", path.display());
            continue;
        }
        out.push((path, text));
    }
    assert!(
        out.iter().any(|(p, _)| p.starts_with("crds")),
        "no crds/*.yaml found: {out:?}"
    );
    out
}

/// The documents of a stream as YAML 1.2 (`serde_yaml`) reads them; empty documents dropped.
fn read_yaml_1_2(text: &str) -> Result<Vec<Value>, String> {
    let mut documents = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(document).map_err(|e| e.to_string())?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    Ok(documents)
}

/// The documents of a stream as YAML 1.1 reads them; empty documents dropped.
fn read_yaml_1_1(text: &str) -> Result<Vec<Value>, String> {
    Ok(yaml11::from_str_multi(text)?
        .into_iter()
        .filter(|v| !v.is_null())
        .collect())
}

fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The first place where `a` and `b` differ: its JSON pointer and both values there
/// (`<missing>` where one has nothing). With `numeric`, numbers compare by value (`0` = `0.0`).
fn first_difference(a: &Value, b: &Value, numeric: bool) -> Option<(String, String, String)> {
    fn go(a: &Value, b: &Value, numeric: bool, at: &str) -> Option<(String, String, String)> {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                keys.into_iter().find_map(|k| {
                    let here = format!("{at}/{}", escape_pointer(k));
                    match (x.get(k), y.get(k)) {
                        (Some(p), Some(q)) => go(p, q, numeric, &here),
                        (p, q) => Some((here, show(p), show(q))),
                    }
                })
            }
            (Value::Array(x), Value::Array(y)) => (0..x.len().max(y.len())).find_map(|i| {
                let here = format!("{at}/{i}");
                match (x.get(i), y.get(i)) {
                    (Some(p), Some(q)) => go(p, q, numeric, &here),
                    (p, q) => Some((here, show(p), show(q))),
                }
            }),
            (Value::Number(x), Value::Number(y))
                if numeric && (x.is_f64() || y.is_f64()) && x.as_f64() == y.as_f64() =>
            {
                None
            }
            _ if a == b => None,
            _ => Some((at.to_owned(), a.to_string(), b.to_string())),
        }
    }
    fn show(v: Option<&Value>) -> String {
        v.map_or_else(|| "<missing>".to_owned(), Value::to_string)
    }
    go(a, b, numeric, "")
}

/// Compares two readings of the documents of `file`; a message per difference.
fn compare_documents(
    file: &Path,
    left_name: &str,
    left: &[Value],
    right_name: &str,
    right: &[Value],
    numeric: bool,
) -> Vec<String> {
    if left.len() != right.len() {
        return vec![format!(
            "{}: {left_name} reads {} documents, {right_name} {}",
            file.display(),
            left.len(),
            right.len()
        )];
    }
    left.iter()
        .zip(right)
        .enumerate()
        .filter_map(|(i, (l, r))| {
            first_difference(l, r, numeric).map(|(pointer, lv, rv)| {
                format!(
                    "{} (document {i}) at {}: {left_name} reads {lv}, {right_name} reads {rv}",
                    file.display(),
                    if pointer.is_empty() { "/" } else { &pointer }
                )
            })
        })
        .collect()
}

#[test]
fn every_yaml_file_reads_the_same_in_yaml_1_1_and_1_2() {
    let mut failures = Vec::new();
    let files = checked_files();
    for (path, text) in &files {
        match (read_yaml_1_1(text), read_yaml_1_2(text)) {
            (Ok(v11), Ok(v12)) => {
                failures.extend(compare_documents(
                    path, "YAML 1.1", &v11, "YAML 1.2", &v12, false,
                ));
            }
            (Err(e), _) => failures.push(format!("{}: YAML 1.1: {e}", path.display())),
            (_, Err(e)) => failures.push(format!("{}: YAML 1.2: {e}", path.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    println!("{} YAML files read alike in YAML 1.1 and 1.2", files.len());
}

#[test]
fn the_check_names_file_pointer_and_both_values() {
    // What `crds/provvms...yaml` held before issue 9.
    let text = "spec:\n  powerState:\n    default: Off\n    enum:\n    - On\n    - Off\n";
    let v11 = read_yaml_1_1(text).expect("YAML 1.1");
    let v12 = read_yaml_1_2(text).expect("YAML 1.2");
    let failures = compare_documents(
        Path::new("old.yaml"),
        "YAML 1.1",
        &v11,
        "YAML 1.2",
        &v12,
        false,
    );
    assert_eq!(
        failures,
        [concat!(
            "old.yaml (document 0) at /spec/powerState/default: ",
            "YAML 1.1 reads false, YAML 1.2 reads \"Off\""
        )]
    );
}

#[test]
fn committed_crds_read_as_yaml_1_1_equal_the_generator() {
    let mut failures = Vec::new();
    for crd in all_crds() {
        let path = Path::new("crds").join(file_name(&crd));
        let text = std::fs::read_to_string(repo().join(&path)).unwrap_or_else(|e| {
            panic!(
                "{} ({e}); run `mcs-operator crd --out-dir crds`",
                path.display()
            )
        });
        let expected = serde_json::to_value(&crd).expect("CRD serializes");
        match yaml11::from_str(&text) {
            Ok(read) => failures.extend(compare_documents(
                &path,
                "YAML 1.1",
                &[read],
                "the generator",
                &[expected],
                false,
            )),
            Err(e) => failures.push(format!("{}: {e}", path.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Deserializes one document into the Rust type of its kind.
fn into_kind(document: &Value) -> Result<(), String> {
    fn typed<T: serde::de::DeserializeOwned>(document: &Value) -> Result<(), String> {
        serde_json::from_value::<T>(document.clone())
            .map(drop)
            .map_err(|e| e.to_string())
    }
    match document["kind"].as_str() {
        Some("HypervisorConnection") => typed::<HypervisorConnection>(document),
        Some("HostingUnit") => typed::<HostingUnit>(document),
        Some("IdentityPool") => typed::<IdentityPool>(document),
        Some("ImageDefinition") => typed::<ImageDefinition>(document),
        Some("ImageVersion") => typed::<ImageVersion>(document),
        Some("ImageVersionSpec") => typed::<ImageVersionSpec>(document),
        Some("ProvScheme") => typed::<ProvScheme>(document),
        Some("ProvVm") => typed::<ProvVm>(document),
        other => Err(format!("unknown kind {other:?}")),
    }
}

#[test]
fn examples_deserialize_into_their_kinds_as_yaml_1_1_reads_them() {
    let examples: Vec<_> = checked_files()
        .into_iter()
        .filter(|(p, _)| p.starts_with("examples"))
        .collect();
    assert!(!examples.is_empty(), "no examples/*.yaml");
    let mut failures = Vec::new();
    for (path, text) in &examples {
        let v11 = read_yaml_1_1(text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let v12 = read_yaml_1_2(text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        failures.extend(compare_documents(
            path, "YAML 1.1", &v11, "YAML 1.2", &v12, false,
        ));
        for (i, document) in v11.iter().enumerate() {
            if let Err(e) = into_kind(document) {
                failures.push(format!("{} (document {i}): {e}", path.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn stored_sdk_power_states_still_read() {
    let machine = |power: &str| {
        serde_json::json!({
            "apiVersion": "mcs.imaging.dev/v1alpha1",
            "kind": "ProvVm",
            "metadata": {"name": "vdi-001"},
            "spec": {"provSchemeRef": "s", "machineName": "VDI-001", "machineIndex": 1,
                     "powerState": power},
        })
    };
    for (stored, desired) in [
        ("On", "Running"),
        ("Off", "Stopped"),
        ("Running", "Running"),
        ("Stopped", "Stopped"),
    ] {
        let vm: ProvVm = serde_json::from_value(machine(stored)).expect("reads");
        assert_eq!(
            serde_json::to_value(vm.spec.power_state).expect("serializes"),
            desired
        );
    }
    let text = "apiVersion: mcs.imaging.dev/v1alpha1\nkind: ProvVm\nmetadata: {name: a}\n\
                spec: {provSchemeRef: s, machineName: A, machineIndex: 0, powerState: On}\n";
    let unquoted = yaml11::from_str(text).expect("reads");
    assert_eq!(
        unquoted["spec"]["powerState"],
        Value::Bool(true),
        "YAML 1.1 reads an unquoted On as a boolean (why the spec takes Running/Stopped)"
    );
}

/// What kubectl makes of a file, without a cluster: `annotate --local` decodes the file as it
/// does for `apply` (sigs.k8s.io/yaml, YAML 1.1) and prints the objects as JSON. Removing an
/// annotation nobody sets changes nothing but may add an empty `metadata.annotations`.
fn kubectl_reading(kubectl: &Path, file: &Path, home: &Path) -> Result<Vec<Value>, String> {
    let output = Command::new(kubectl)
        .args(["annotate", "--local", "-o", "json", "-f"])
        .arg(file)
        .arg("mcs.imaging.dev/yaml-files-test-")
        .env("KUBECONFIG", home.join("no-kubeconfig"))
        .env("HOME", home)
        .output()
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut objects = Vec::new();
    for object in serde_json::Deserializer::from_str(&text).into_iter::<Value>() {
        let object = object.map_err(|e| format!("kubectl output: {e}"))?;
        match object {
            Value::Object(ref map) if map.get("kind") == Some(&Value::from("List")) => {
                objects.extend(map["items"].as_array().cloned().unwrap_or_default());
            }
            other => objects.push(other),
        }
    }
    Ok(objects)
}

/// Drops the empty `metadata.annotations` kubectl adds where `ours` has none.
fn without_added_annotations(mut theirs: Value, ours: &Value) -> Value {
    if ours["metadata"].get("annotations").is_none()
        && let Some(metadata) = theirs.get_mut("metadata").and_then(Value::as_object_mut)
        && metadata.get("annotations") == Some(&Value::Object(Map::new()))
    {
        metadata.remove("annotations");
    }
    theirs
}

#[test]
fn kubectl_reads_every_file_as_we_do() {
    let Some(kubectl) = support::cluster::kubectl_path() else {
        println!(
            "kubectl not found ($KUBECTL, $KUBEBUILDER_ASSETS/kubectl, PATH): \
             the comparison with a real kubectl was skipped"
        );
        return;
    };
    let home = tempfile::tempdir().expect("temp dir");
    let mut failures = Vec::new();
    let mut compared = 0;
    for (path, text) in checked_files() {
        let ours = read_yaml_1_1(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if ours
            .iter()
            .any(|d| d.get("kind").is_none() || d.get("apiVersion").is_none())
        {
            println!(
                "kubectl: skipped {} (not Kubernetes objects)",
                path.display()
            );
            continue;
        }
        match kubectl_reading(&kubectl, &repo().join(&path), home.path()) {
            Ok(theirs) => {
                let theirs: Vec<Value> = theirs
                    .into_iter()
                    .enumerate()
                    .map(|(i, t)| match ours.get(i) {
                        Some(o) => without_added_annotations(t, o),
                        None => t,
                    })
                    .collect();
                failures.extend(compare_documents(
                    &path, "kubectl", &theirs, "yaml11", &ours, true,
                ));
                compared += 1;
            }
            Err(e) => failures.push(format!("{}: kubectl failed: {e}", path.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    println!(
        "kubectl ({}) reads {compared} files as we do",
        kubectl.display()
    );
}

/// Strings that trip YAML readers, and arbitrary ones.
fn tricky_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "On", "Off", "on", "OFF", "y", "Y", "n", "N", "yes", "No", "true", "False", "null",
            "Null", "~", "", " ", "0777", "0o17", "0x1F", "0b101", "1_000", "1:20", "-1:20",
            "190:20:30.15", "2001-12-14", "2001-12-14t21:59:43.10-05:00",
            "2001-12-14 21:59:43.10 -5", ".inf", "-.inf", ".NaN", ".5", "1.", "1e3", "1.0e+3",
            "+12", "-0", "<<", "=", "-", "---", "...", ".", "?", ":", "a: b", "a #b", "#", "&a",
            "*a", "!a", "|", ">", "'", "\"", "%", "@", "`", "[", "]", "{", "}", ",", "\\/",
            "a\u{2028}b", "\u{85}", "\u{feff}x", "\t", "\r\n", "a\nb", "a\n", "a\n\n", "\na",
            " a\nb", "a \nb", "#a\nb", "- a\n- b", "key: value\nother: x", "Running",
            ".spec.x", "XDHyp:\\HostingUnits\\lab",
        ]).prop_map(str::to_owned),
        3 => "[-+.0-9a-zA-Z_:~<=# \t\n'\"\\\\]{0,12}",
        2 => any::<String>(),
        1 => "[a-z\n ]{1,30}",
        1 => "[a-z]{990,1100}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        tricky_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(tricky_string(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn writer_round_trips_through_yaml_1_1_and_1_2(value in json_value()) {
        let text = mcs_operator::yaml::to_string(&value);
        let v12: Value = serde_yaml::from_str(&text)
            .map_err(|e| TestCaseError::fail(format!("YAML 1.2: {e}\n{text}")))?;
        prop_assert_eq!(&v12, &value, "YAML 1.2 reading of\n{}", text);
        let v11 = yaml11::from_str(&text)
            .map_err(|e| TestCaseError::fail(format!("YAML 1.1: {e}\n{text}")))?;
        prop_assert_eq!(&v11, &value, "YAML 1.1 reading of\n{}", text);
    }
}
