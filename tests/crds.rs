//! The generated CRDs: committed copies do not drift, every schema is structural, every example
//! is accepted, and every admission rule rejects bad input with its message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod support;

use mcs_operator::api::all_crds;
use mcs_operator::crd::{file_name, render};
use mcs_schema_check::{CrdSchema, FieldError};
use serde_json::{Value, json};

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Every CRD's schema for `v1alpha1`, by kind.
fn schemas() -> BTreeMap<String, CrdSchema> {
    all_crds()
        .iter()
        .map(|crd| {
            let value = serde_json::to_value(crd).expect("CRD serializes");
            let schema = CrdSchema::from_crd(&value, "v1alpha1")
                .unwrap_or_else(|e| panic!("{}: {e}", crd.spec.names.kind));
            (crd.spec.names.kind.clone(), schema)
        })
        .collect()
}

/// Something that admits objects as an API server's write pipeline does (defaults, pruning,
/// validation): the project's own schema checker, or a real API server through `kubectl`.
trait Admission {
    /// The stored form of `object` (written over `old` when given), or the error text.
    fn admit(&self, object: &Value, old: Option<&Value>) -> Result<Value, String>;
}

/// The project's own checker: every CRD's schema for `v1alpha1`, by kind.
impl Admission for BTreeMap<String, CrdSchema> {
    fn admit(&self, object: &Value, old: Option<&Value>) -> Result<Value, String> {
        let kind = object["kind"].as_str().expect("object has a kind");
        let schema = self
            .get(kind)
            .unwrap_or_else(|| panic!("no CRD for kind {kind}"));
        let mut object = object.clone();
        schema.apply_defaults(&mut object);
        schema.prune(&mut object);
        schema
            .validate(&object, old)
            .map_err(|errors| messages(&errors))?;
        Ok(object)
    }
}

/// An API server reached with the real `kubectl`, as a user reaches it: `kubectl apply
/// --dry-run=server` of the object, after storing `old` for real when given (so
/// the transition rules see it) and deleting it afterwards.
struct KubectlAdmission {
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    namespace: String,
    /// `--validate=strict` (the default) on a real server; the test server serves no OpenAPI.
    validate: bool,
}

impl KubectlAdmission {
    fn kubectl(&self, args: &[&str], stdin: Option<&Value>) -> Result<String, String> {
        use std::io::Write as _;
        let validate = if self.validate { "strict" } else { "false" };
        let mut command = Command::new(&self.kubectl);
        command.args(["-n", &self.namespace]).args(args);
        if args.first() == Some(&"apply") {
            command.arg(format!("--validate={validate}"));
        }
        let mut child = command
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        let input = stdin.map(|v| v.to_string()).unwrap_or_default();
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("kubectl reads");
        let out = child.wait_with_output().expect("kubectl finishes");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

/// `object` as a user would write it: no server-set metadata, no status, no namespace.
fn as_manifest(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(map) = copy.as_object_mut() {
        map.remove("status");
    }
    if let Some(meta) = copy["metadata"].as_object_mut() {
        meta.retain(|k, _| matches!(k.as_str(), "name" | "labels" | "annotations"));
    }
    copy
}

impl Admission for KubectlAdmission {
    fn admit(&self, object: &Value, old: Option<&Value>) -> Result<Value, String> {
        let apply = ["apply", "-o", "json", "-f", "-"];
        if let Some(old) = old {
            self.kubectl(&apply, Some(&as_manifest(old)))
                .unwrap_or_else(|e| panic!("the old object is stored: {e}"));
        }
        let mut dry_run = apply.to_vec();
        dry_run.push("--dry-run=server");
        let result = self.kubectl(&dry_run, Some(&as_manifest(object)));
        if let Some(old) = old {
            self.kubectl(
                &["delete", "--wait=true", "-f", "-"],
                Some(&as_manifest(old)),
            )
            .unwrap_or_else(|e| panic!("the old object is deleted: {e}"));
        }
        result.map(|out| serde_json::from_str(&out).expect("kubectl prints JSON"))
    }
}

/// Admits `object` (over `old`), as the checker does.
fn admit(checker: &dyn Admission, object: &Value, old: Option<&Value>) -> Result<Value, String> {
    checker.admit(object, old)
}

fn messages(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asserts that `object` is rejected with an error whose text contains `expected`.
fn assert_rejected(checker: &dyn Admission, object: &Value, old: Option<&Value>, expected: &str) {
    match admit(checker, object, old) {
        Ok(_) => panic!(
            "expected rejection containing {expected:?}, but the object was accepted:\n{object:#}"
        ),
        Err(text) => {
            assert!(text.contains(expected), "expected {expected:?} in:\n{text}");
        }
    }
}

/// Every manifest in `examples/`, by file name.
fn examples() -> Vec<(String, Value)> {
    let mut entries: Vec<_> = std::fs::read_dir(repo_path("examples"))
        .expect("examples/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    entries.sort();
    entries
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("readable example");
            let object: Value =
                serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (
                path.file_name()
                    .expect("file name")
                    .to_string_lossy()
                    .into_owned(),
                object,
            )
        })
        .collect()
}

/// The first example whose object matches `predicate`.
fn example(predicate: impl Fn(&Value) -> bool) -> Value {
    examples()
        .into_iter()
        .map(|(_, v)| v)
        .find(|v| predicate(v))
        .expect("an example matches")
}

/// The first example of `kind`.
fn example_of(kind: &str) -> Value {
    example(|v| v["kind"] == kind)
}

/// `dir` holds exactly the files `layout` generates, with the same contents.
fn assert_generated(dir: &str, layout: mcs_operator::crd::Layout, command: &str) {
    let path = repo_path(dir);
    let files = mcs_operator::crd::files(layout).expect("renders");
    for (name, contents) in &files {
        let committed = std::fs::read_to_string(path.join(name))
            .unwrap_or_else(|e| panic!("{dir}/{name} missing ({e}); run `{command}`"));
        assert_eq!(
            &committed, contents,
            "{dir}/{name} drifted from the Rust types; run `{command}` and commit"
        );
    }
    let mut present: Vec<String> = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("{dir} exists: {e}"))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    let mut expected: Vec<String> = files.into_iter().map(|(name, _)| name).collect();
    expected.sort();
    assert_eq!(
        present, expected,
        "{dir} holds files the generator does not make"
    );
}

#[test]
fn committed_crds_match_the_generator() {
    assert_generated(
        "crds",
        mcs_operator::crd::Layout::Manifests,
        "cargo run -- crd --out-dir crds",
    );
}

#[test]
fn the_kustomize_crds_match_the_generator() {
    assert_generated(
        "deploy/crds",
        mcs_operator::crd::Layout::Kustomize,
        "cargo run -- crd --layout kustomize --out-dir deploy/crds",
    );
}

#[test]
fn the_charts_crds_are_the_committed_crds_kept_on_uninstall() {
    assert_generated(
        "charts/mcs-operator/templates/crds",
        mcs_operator::crd::Layout::ChartTemplates,
        "cargo run -- crd --layout chart --out-dir charts/mcs-operator/templates/crds",
    );
    for crd in all_crds() {
        let name = file_name(&crd);
        let template =
            std::fs::read_to_string(repo_path("charts/mcs-operator/templates/crds").join(&name))
                .expect("chart template exists");
        let body: String = template
            .lines()
            .filter(|line| !line.starts_with("{{"))
            .map(|line| format!("{line}\n"))
            .collect();
        let mut chart: Value = serde_yaml::from_str(&body).expect("chart CRD is YAML");
        let annotations = chart["metadata"]["annotations"]
            .as_object_mut()
            .expect("chart CRD has annotations");
        assert_eq!(
            annotations.remove(mcs_operator::crd::HELM_KEEP_ANNOTATION),
            Some(Value::from("keep")),
            "the chart's {name} is kept on uninstall"
        );
        if annotations.is_empty() {
            chart["metadata"]
                .as_object_mut()
                .expect("metadata")
                .remove("annotations");
        }
        let plain: Value = serde_yaml::from_str(
            &std::fs::read_to_string(repo_path("crds").join(&name)).expect("crds/ file exists"),
        )
        .expect("crds/ file is YAML");
        assert_eq!(
            chart, plain,
            "the chart's {name} differs from crds/{name} beyond the keep annotation"
        );
    }
}

#[test]
fn cel_rules_fit_the_api_server_cost_budget() {
    let schemas = schemas();
    assert_eq!(schemas.len(), 8);
    let warnings: Vec<String> = schemas
        .iter()
        .flat_map(|(kind, s)| {
            s.cost_warnings()
                .into_iter()
                .map(move |w| format!("{kind}: {w}"))
        })
        .collect();
    assert!(warnings.is_empty(), "{}", warnings.join("\n"));
}

#[test]
fn every_crd_is_structural_with_the_expected_names() {
    let crds = all_crds();
    assert_eq!(crds.len(), 8);
    for crd in &crds {
        let value = serde_json::to_value(crd).expect("serializes");
        let schema = CrdSchema::from_crd(&value, "v1alpha1").expect("loads");
        assert_eq!(
            schema.structural_errors(),
            Vec::<String>::new(),
            "{}",
            crd.spec.names.kind
        );
        assert_eq!(crd.spec.group, "mcs.imaging.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert!(
            crd.spec
                .names
                .categories
                .as_ref()
                .is_some_and(|c| c.contains(&"mcs".to_string()))
        );
        assert_eq!(crd.spec.names.short_names.as_ref().map(Vec::len), Some(1));
        let version = &crd.spec.versions[0];
        let subresources = version.subresources.as_ref().expect("subresources");
        assert!(
            subresources.status.is_some(),
            "{} has a status subresource",
            crd.spec.names.kind
        );
        let yaml = render(crd).expect("renders");
        assert!(
            !yaml.contains("default: null"),
            "{}: default: null is not structural",
            crd.spec.names.kind
        );
        assert!(
            !yaml.contains("$ref"),
            "{}: $ref is not allowed",
            crd.spec.names.kind
        );
    }
    let scheme = crds
        .iter()
        .find(|c| c.spec.names.kind == "ProvScheme")
        .expect("ProvScheme");
    let scale = scheme.spec.versions[0]
        .subresources
        .as_ref()
        .and_then(|s| s.scale.as_ref())
        .expect("scale");
    assert_eq!(scale.spec_replicas_path, ".spec.machineCount");
    assert_eq!(scale.status_replicas_path, ".status.machineCount");
}

#[test]
fn every_example_is_accepted_and_cel_rules_are_evaluated() {
    let schemas = schemas();
    let examples = examples();
    assert_eq!(
        examples.len(),
        8,
        "one example per kind but ProvVM (the operator makes machines), and both spec forms"
    );
    for (file, object) in &examples {
        let kind = object["kind"].as_str().expect("kind");
        let admitted =
            admit(&schemas, object, None).unwrap_or_else(|e| panic!("{file} rejected:\n{e}"));
        let mut defaulted = object.clone();
        schemas[kind].apply_defaults(&mut defaulted);
        assert_eq!(
            admitted["spec"], defaulted["spec"],
            "{file} holds fields the schema does not know (they would be pruned)"
        );
    }
    let rules: usize = schemas.values().map(CrdSchema::cel_rule_count).sum();
    assert!(
        rules >= 15,
        "expected the CEL rules to be compiled, found {rules}"
    );
}

#[test]
fn defaults_are_applied() {
    defaults(&schemas());
}

fn defaults(schemas: &dyn Admission) {
    let scheme = &example_of("ProvScheme");
    let mut minimal = scheme.clone();
    let spec = minimal["spec"].as_object_mut().expect("spec");
    for field in [
        "maxVersions",
        "cleanOnBoot",
        "deletionPolicy",
        "machineCount",
    ] {
        spec.remove(field);
    }
    let admitted = admit(schemas, &minimal, None).expect("accepted");
    assert_eq!(admitted["spec"]["maxVersions"], json!(99));
    assert_eq!(admitted["spec"]["machineCount"], json!(0));
    assert_eq!(admitted["spec"]["useWriteBackCache"], json!(false));
    assert_eq!(admitted["spec"]["deletionPolicy"], json!("Delete"));
}

fn with(object: &Value, pointer: &str, value: Value) -> Value {
    let mut copy = object.clone();
    let (parent, field) = pointer.rsplit_once('/').expect("pointer has a parent");
    let target = copy
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent}"));
    target
        .as_object_mut()
        .expect("object")
        .insert(field.to_string(), value);
    copy
}

fn without(object: &Value, pointer: &str) -> Value {
    let mut copy = object.clone();
    let (parent, field) = pointer.rsplit_once('/').expect("pointer has a parent");
    copy.pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .expect("object")
        .remove(field);
    copy
}

#[test]
fn provscheme_rules_reject_with_their_messages() {
    provscheme_rules(&schemas());
}

fn provscheme_rules(schemas: &dyn Admission) {
    let scheme = example_of("ProvScheme");
    let admitted = admit(schemas, &scheme, None).expect("example accepted");

    let offering = with(
        &scheme,
        "/spec/serviceOffering",
        json!(r"XDHyp:\HostingUnits\lab\small.serviceoffering"),
    );
    assert_rejected(
        schemas,
        &offering,
        None,
        "spec.vmCpuCount and spec.vmMemoryMB cannot be used with spec.serviceOffering",
    );
    let offering_only = without(&without(&offering, "/spec/vmCpuCount"), "/spec/vmMemoryMB");
    admit(schemas, &offering_only, None).expect("a service offering alone is fine");

    assert_rejected(
        schemas,
        &with(&scheme, "/spec/networkMapping", json!({})),
        None,
        "spec.networkMapping must not be empty",
    );
    assert_rejected(
        schemas,
        &with(&scheme, "/spec/networkMapping", json!({"0": ""})),
        None,
        "spec.networkMapping values must be network paths",
    );
    assert_rejected(
        schemas,
        &without(&scheme, "/spec/networkMapping"),
        None,
        "spec.networkMapping: Required value",
    );

    assert_rejected(
        schemas,
        &with(&scheme, "/spec/maxVersions", json!(0)),
        None,
        "spec.maxVersions",
    );
    assert_rejected(
        schemas,
        &with(&scheme, "/spec/maxVersions", json!(32001)),
        None,
        "spec.maxVersions",
    );
    admit(
        schemas,
        &with(&scheme, "/spec/maxVersions", json!(32000)),
        None,
    )
    .expect("32000 is the maximum");
    assert_rejected(
        schemas,
        &with(&scheme, "/spec/vmCpuCount", json!(0)),
        None,
        "spec.vmCpuCount",
    );
    assert_rejected(
        schemas,
        &with(&scheme, "/spec/vmMemoryMB", json!(0)),
        None,
        "spec.vmMemoryMB",
    );
    assert_rejected(
        schemas,
        &with(&scheme, "/spec/machineCount", json!(-1)),
        None,
        "spec.machineCount",
    );

    let cache_size = with(&scheme, "/spec/writeBackCacheDiskSizeGB", json!(24));
    assert_rejected(
        schemas,
        &cache_size,
        None,
        "can only be set when the scheme was created with spec.useWriteBackCache",
    );
    let with_cache = with(&cache_size, "/spec/useWriteBackCache", json!(true));
    let cached = admit(schemas, &with_cache, None).expect("sizes with useWriteBackCache are fine");
    let cache_off = with(&cached, "/spec/useWriteBackCache", json!(false));
    assert_rejected(
        schemas,
        &without(&cache_off, "/spec/writeBackCacheDiskSizeGB"),
        Some(&cached),
        "spec.useWriteBackCache is immutable",
    );

    let profile = r"XDHyp:\HostingUnits\lab\profile.vm";
    let added = with(&admitted, "/spec/machineProfile", json!(profile));
    assert_rejected(
        schemas,
        &added,
        Some(&admitted),
        "MachineProfileUpdateNotSupported",
    );
    let created_with_profile = admit(schemas, &added, None).expect("a profile at creation is fine");
    assert_rejected(
        schemas,
        &admitted,
        Some(&created_with_profile),
        "MachineProfileUpdateNotSupported",
    );
    let changed_profile = with(
        &created_with_profile,
        "/spec/machineProfile",
        json!(r"XDHyp:\HostingUnits\lab\profile2.vm"),
    );
    admit(schemas, &changed_profile, Some(&created_with_profile))
        .expect("changing a profile is a new version, not an error");

    assert_rejected(
        schemas,
        &with(&admitted, "/spec/hostingUnitRef", json!("other")),
        Some(&admitted),
        "spec.hostingUnitRef is immutable",
    );
    let cpu_change = with(&admitted, "/spec/vmCpuCount", json!(4));
    admit(schemas, &cpu_change, Some(&admitted)).expect("Set-ProvScheme -VMCpuCount is allowed");
}

#[test]
fn image_version_spec_rules_reject_with_their_messages() {
    image_version_spec_rules(&schemas());
}

fn image_version_spec_rules(schemas: &dyn Admission) {
    let master = example(|v| v["spec"].get("master").is_some());
    let prepared = example(|v| v["spec"].get("prepared").is_some());
    for spec in [&master, &prepared] {
        admit(schemas, spec, None).unwrap_or_else(|e| panic!("{e}"));
    }

    let both = with(
        &master,
        "/spec/prepared",
        prepared["spec"]["prepared"].clone(),
    );
    assert_rejected(
        schemas,
        &both,
        None,
        "exactly one of spec.master or spec.prepared must be set",
    );
    assert_rejected(
        schemas,
        &without(&master, "/spec/master"),
        None,
        "exactly one of spec.master or spec.prepared must be set",
    );

    let moved = with(
        &master,
        "/spec/master/masterImagePath",
        json!(r"XDHyp:\HostingUnits\lab\win11.vm\patched.snapshot"),
    );
    assert_rejected(schemas, &moved, Some(&master), "spec is immutable");
    let master_admitted = admit(schemas, &master, None).expect("accepted");
    admit(
        schemas,
        &with(&master_admitted, "/spec/deletionPolicy", json!("Retain")),
        Some(&master_admitted),
    )
    .expect("the deletion policy may change");

    let offering = with(
        &prepared,
        "/spec/prepared/serviceOffering",
        json!(r"XDHyp:\HostingUnits\lab\small.serviceoffering"),
    );
    assert_rejected(
        schemas,
        &offering,
        None,
        "spec.prepared.vmCpuCount and spec.prepared.vmMemoryMB cannot be used with spec.prepared.serviceOffering",
    );
    assert_rejected(
        schemas,
        &with(&prepared, "/spec/prepared/networkMapping", json!({})),
        None,
        "spec.prepared.networkMapping must not be empty",
    );
    assert_rejected(
        schemas,
        &with(&prepared, "/spec/prepared/vmCpuCount", json!(0)),
        None,
        "spec.prepared.vmCpuCount",
    );
}

#[test]
fn other_kinds_reject_bad_input() {
    other_kinds_rules(&schemas());
}

fn other_kinds_rules(schemas: &dyn Admission) {
    let connection = &example_of("HypervisorConnection");
    assert_rejected(
        schemas,
        &without(connection, "/spec/local"),
        None,
        "spec.local is required when spec.type is Local",
    );
    assert_rejected(
        schemas,
        &with(connection, "/spec/type", json!("Hyper-V")),
        None,
        "spec.type",
    );
    assert_rejected(
        schemas,
        &with(connection, "/spec/local/storageRoots", json!([])),
        None,
        "spec.local.storageRoots",
    );
    assert_rejected(
        schemas,
        &with(
            connection,
            "/spec/local/storageRoots",
            json!([{"name": "a", "path": "/x"}, {"name": "a", "path": "/y"}]),
        ),
        None,
        "Duplicate value",
    );

    let pool = &example_of("IdentityPool");
    assert_rejected(
        schemas,
        &with(pool, "/spec/namingScheme", json!("VDI-##-##")),
        None,
        "spec.namingScheme",
    );
    assert_rejected(
        schemas,
        &with(pool, "/spec/namingScheme", json!("VDI")),
        None,
        "spec.namingScheme",
    );
    assert_rejected(
        schemas,
        &without(pool, "/spec/domain"),
        None,
        "spec.domain is required when spec.identityType is ActiveDirectory",
    );

    let definition = &example_of("ImageDefinition");
    let admitted = admit(schemas, definition, None).expect("accepted");
    assert_rejected(
        schemas,
        &with(&admitted, "/spec/vdaSessionSupport", json!("MultiSession")),
        Some(&admitted),
        "spec.vdaSessionSupport is immutable",
    );
    assert_rejected(
        schemas,
        &with(definition, "/spec/osType", json!("Plan9")),
        None,
        "spec.osType",
    );

    let version = &example_of("ImageVersion");
    let admitted = admit(schemas, version, None).expect("accepted");
    assert_rejected(
        schemas,
        &with(&admitted, "/spec/imageDefinitionRef", json!("other")),
        Some(&admitted),
        "spec.imageDefinitionRef is immutable",
    );

    let unit = &example_of("HostingUnit");
    assert_rejected(
        schemas,
        &with(unit, "/spec/serviceOfferings/0/cpuCount", json!(0)),
        None,
        "cpuCount",
    );
}

/// The same rules, examples and defaults on the tests' API server (a real one when
/// `KUBEBUILDER_ASSETS` or `MCS_E2E_KUBECONFIG` is set; see `support::cluster`), through the
/// real `kubectl` as users send them: every committed CRD file applies cleanly with `kubectl
/// apply -f` (the README's install command), every example passes `kubectl apply
/// --dry-run=server`, every bad manifest is rejected with its message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_admits_and_rejects_through_kubectl() {
    let Some(kubectl) = support::cluster::kubectl_path() else {
        eprintln!(
            "skipped: no kubectl found (KUBECTL, KUBEBUILDER_ASSETS or PATH); the rules were checked only by the project's own schema checker"
        );
        return;
    };
    let cluster = support::cluster::Cluster::start("crds").await;
    eprintln!(
        "checking admission on the {} through {}",
        if cluster.is_real() {
            "real API server"
        } else {
            "test API server"
        },
        kubectl.display()
    );
    let checker = KubectlAdmission {
        kubectl,
        kubeconfig: cluster.kubeconfig.clone(),
        namespace: cluster.namespace.clone(),
        validate: cluster.is_real(),
    };
    let checker = tokio::task::spawn_blocking(move || {
        if checker.validate {
            for crd in all_crds() {
                let path = repo_path("crds").join(file_name(&crd));
                let path = path.to_string_lossy();
                let out = checker
                    .kubectl(&["apply", "--dry-run=server", "-f", &path], None)
                    .unwrap_or_else(|e| panic!("kubectl apply -f {path}: {e}"));
                assert!(out.contains("(server dry run)"), "{out}");
                let established = checker
                    .kubectl(
                        &[
                            "get",
                            "crd",
                            crd.metadata.name.as_deref().expect("name"),
                            "-o",
                            "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
                        ],
                        None,
                    )
                    .expect("kubectl get crd");
                assert_eq!(established, "True", "{path} is Established");
            }
        }
        let folder = repo_path("examples");
        let out = checker
            .kubectl(
                &["apply", "--dry-run=server", "-f", &folder.to_string_lossy()],
                None,
            )
            .unwrap_or_else(|e| panic!("kubectl apply --dry-run=server -f examples/: {e}"));
        assert_eq!(
            out.lines()
                .filter(|l| l.contains("(server dry run)"))
                .count(),
            examples().len(),
            "{out}"
        );
        // YAML 1.1 (kubectl, Helm, Argo CD) reads an unquoted `On` as a boolean: the spec's
        // power states are `Running`/`Stopped`, and a typed `On` gets a type error, not a
        // silent misreading.
        let dir = tempfile::tempdir().expect("tempdir");
        for (value, accepted) in [("On", false), ("Running", true), ("Stopped", true)] {
            let file = dir.path().join(format!("vm-{value}.yaml"));
            std::fs::write(
                &file,
                format!(
                    "apiVersion: mcs.imaging.dev/v1alpha1\nkind: ProvVm\nmetadata:\n  name: vdi-001\nspec:\n  provSchemeRef: win11-desktops\n  machineName: VDI-001\n  machineIndex: 1\n  powerState: {value}\n"
                ),
            )
            .expect("manifest");
            let result = checker.kubectl(
                &["apply", "--dry-run=server", "-f", &file.to_string_lossy()],
                None,
            );
            match (accepted, result) {
                (true, Ok(_)) => {}
                (false, Err(error)) => assert!(
                    error.contains("spec.powerState") && error.contains("boolean"),
                    "powerState: {value} is rejected as a boolean: {error}"
                ),
                (_, result) => panic!("powerState: {value}: {result:?}"),
            }
        }
        provscheme_rules(&checker);
        image_version_spec_rules(&checker);
        other_kinds_rules(&checker);
        defaults(&checker);
        checker
    })
    .await
    .expect("the checks ran");
    drop(checker);
    cluster
        .delete_namespace(std::time::Duration::from_secs(30))
        .await;
}
