//! Campaign 3, bad input: a seeded generator of bad manifests derived from the CRD schemas
//! (`crds/*.yaml`) and the examples, the world they are applied to, and how each outcome is
//! classified.
//!
//! The namespace holds two worlds: the **good world** (the examples, reconciled to Ready before
//! the campaign; snapshotted and compared afterwards) and the **base world** (`cb-*`: a copy of
//! the examples on storage roots of its own, scheme without machines), whose objects the
//! generated manifests reference so that each manifest breaks one thing at a time. Every
//! manifest is a new object (`bad-NNNN`); a few kinds get support objects of their own (an
//! ImageVersion per image version spec, since a version has one prepared spec per unit).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use proptest::prelude::RngExt as _;
use proptest::test_runner::{RngAlgorithm, TestRng};
use serde_json::{Value, json};

/// The base world's names, by the example name they replace.
pub const BASE_NAMES: [(&str, &str); 8] = [
    ("local", "cb-local"),
    ("lab", "cb-lab"),
    ("vdi-pool", "cb-pool"),
    ("win11", "cb-win11"),
    ("win11-2026-11", "cb-v1"),
    ("win11-2026-11-master", "cb-master"),
    ("win11-2026-11-prepared", "cb-prepared"),
    ("win11-desktops", "cb-scheme"),
];

/// The base world's hosting unit, as inventory paths name it.
pub const BASE_UNIT: &str = "cb-lab";

/// What a manifest must lead to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Expect {
    /// Bad: rejected at admission naming the field, or accepted and reported (a condition and
    /// an Event naming the field).
    Invalid,
    /// Odd but possibly legal (unicode in free text, huge numbers without a bound): any outcome
    /// but a panic, a write outside the roots or a change to the good world.
    Either,
}

/// One generated manifest.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// The object to create.
    pub object: Value,
    /// Objects to create first (an ImageVersion of its own, ...), expected to be accepted.
    pub support: Vec<Value>,
    /// The field a rejection or report must name (a key such as `masterImagePath`).
    pub field: String,
    /// The key above it, which a message may name instead (`storageRoots[images]`).
    pub parent: Option<String>,
    /// What was done, e.g. `wrong type`, `out of range`, `symlink escape`.
    pub class: &'static str,
    /// What must happen.
    pub expect: Expect,
}

impl Manifest {
    /// Whether `message` names the manifest's field (or the list or map holding it).
    pub fn names_field(&self, message: &str) -> bool {
        message.contains(&self.field) || self.parent.as_deref().is_some_and(|p| message.contains(p))
    }

    /// The object's kind.
    pub fn kind(&self) -> &str {
        self.object["kind"].as_str().unwrap_or("?")
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or("?")
    }
}

/// Renames the examples into the base world: names and references per [`BASE_NAMES`],
/// inventory paths to [`BASE_UNIT`], storage roots to `images` and `fast`, no machines.
pub fn base_world(examples: &[Value], images: &Path, fast: &Path) -> Vec<Value> {
    examples
        .iter()
        .map(|object| {
            let mut object = object.clone();
            rename_refs(&mut object);
            if object["kind"] == "HypervisorConnection" {
                object["spec"]["local"]["storageRoots"] = json!([
                    {"name": "images", "path": images.to_string_lossy()},
                    {"name": "fast", "path": fast.to_string_lossy()},
                ]);
            }
            if object["kind"] == "ProvScheme" {
                object["spec"]["machineCount"] = json!(0);
            }
            object
        })
        .collect()
}

fn base_name(name: &str) -> Option<&'static str> {
    BASE_NAMES.iter().find(|(a, _)| *a == name).map(|(_, b)| *b)
}

fn rename_refs(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                if (key.ends_with("Ref") || key == "name")
                    && let Some(renamed) = item.as_str().and_then(base_name)
                {
                    *item = json!(renamed);
                } else if let Some(text) = item.as_str()
                    && text.contains(r"HostingUnits\lab\")
                {
                    *item = json!(text.replace(r"HostingUnits\lab\", r"HostingUnits\cb-lab\"));
                } else {
                    rename_refs(item);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                if let Some(text) = item.as_str()
                    && text.contains(r"HostingUnits\lab\")
                {
                    *item = json!(text.replace(r"HostingUnits\lab\", r"HostingUnits\cb-lab\"));
                } else {
                    rename_refs(item);
                }
            }
        }
        _ => {}
    }
}

/// One step of a path into an object.
#[derive(Clone, Debug, PartialEq)]
enum Seg {
    Key(String),
    /// The first item of a list.
    Index,
    /// The first key of a map (`additionalProperties`).
    MapKey,
}

/// A field of a kind's `spec` schema.
#[derive(Clone, Debug)]
struct Field {
    path: Vec<Seg>,
    schema: Value,
    required: bool,
}

impl Field {
    /// The last named key on the path (what messages name).
    fn name(&self) -> String {
        self.path
            .iter()
            .rev()
            .find_map(|s| match s {
                Seg::Key(k) => Some(k.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// The named key above the last one (`storageRoots` for `storageRoots[0].path`): messages
    /// may name a list item by its key instead of its field.
    fn parent(&self) -> Option<String> {
        self.path
            .iter()
            .rev()
            .filter_map(|s| match s {
                Seg::Key(k) => Some(k.clone()),
                _ => None,
            })
            .nth(1)
            .filter(|k| k != "spec")
    }

    fn kind(&self) -> &str {
        self.schema["type"].as_str().unwrap_or("")
    }
}

fn walk(schema: &Value, path: Vec<Seg>, required: bool, out: &mut Vec<Field>) {
    if !path.is_empty() {
        out.push(Field {
            path: path.clone(),
            schema: schema.clone(),
            required,
        });
    }
    if let Some(props) = schema["properties"].as_object() {
        let req: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for (key, sub) in props {
            let mut p = path.clone();
            p.push(Seg::Key(key.clone()));
            walk(sub, p, req.contains(&key.as_str()), out);
        }
    }
    if schema["items"].is_object() {
        let mut p = path.clone();
        p.push(Seg::Index);
        walk(&schema["items"], p, false, out);
    }
    if schema["additionalProperties"].is_object() {
        let mut p = path;
        p.push(Seg::MapKey);
        walk(&schema["additionalProperties"], p, false, out);
    }
}

/// The `spec` fields of every kind, from the committed CRDs.
fn spec_fields(crd_dir: &Path) -> BTreeMap<String, Vec<Field>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(crd_dir).expect("crds/") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("crd");
        let crd: Value = serde_yaml::from_str(&text).expect("crd yaml");
        let kind = crd["spec"]["names"]["kind"]
            .as_str()
            .expect("kind")
            .to_owned();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let mut fields = Vec::new();
        walk(schema, vec![Seg::Key("spec".into())], true, &mut fields);
        fields.remove(0);
        out.insert(kind, fields);
    }
    out
}

/// The parent container of `path` in `object` and the last step, when every container on
/// the way exists (a missing last key is fine: it is added).
fn locate<'a>(object: &'a mut Value, path: &[Seg]) -> Option<(&'a mut Value, Seg)> {
    let (last, parents) = path.split_last()?;
    let mut here = object;
    for seg in parents {
        here = step(here, seg)?;
    }
    let last = match last {
        Seg::MapKey => Seg::Key(here.as_object()?.keys().next()?.clone()),
        Seg::Index if here.as_array()?.is_empty() => return None,
        other => other.clone(),
    };
    Some((here, last))
}

fn step<'a>(here: &'a mut Value, seg: &Seg) -> Option<&'a mut Value> {
    match seg {
        Seg::Key(k) => here.as_object_mut()?.get_mut(k),
        Seg::Index => here.as_array_mut()?.first_mut(),
        Seg::MapKey => here.as_object_mut()?.values_mut().next(),
    }
}

fn set(object: &mut Value, path: &[Seg], value: Value) -> bool {
    let Some((parent, last)) = locate(object, path) else {
        return false;
    };
    match (parent, last) {
        (Value::Object(map), Seg::Key(k)) => {
            map.insert(k, value);
            true
        }
        (Value::Array(items), Seg::Index) => {
            items[0] = value;
            true
        }
        _ => false,
    }
}

fn remove(object: &mut Value, path: &[Seg]) -> bool {
    match locate(object, path) {
        Some((Value::Object(map), Seg::Key(k))) => map.remove(&k).is_some(),
        _ => false,
    }
}

fn get<'a>(object: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    let mut here = object;
    for seg in path {
        here = match seg {
            Seg::Key(k) => here.get(k)?,
            Seg::Index => here.as_array()?.first()?,
            Seg::MapKey => here.as_object()?.values().next()?,
        };
    }
    Some(here)
}

/// Unicode that breaks naive code: accents, an emoji, right-to-left override, zero-width
/// joiner, a combining mark, CJK.
const UNICODE: [&str; 5] = [
    "wïn11-ñ",
    "😀-desk",
    "a\u{202e}lab",
    "x\u{200d}y\u{0301}",
    "仮想マシン",
];

/// Inventory paths that must never resolve: parent segments, absolute paths, other units,
/// empty segments, a NUL.
fn evil_inventory_paths(unit: &str) -> Vec<String> {
    vec![
        format!(r"XDHyp:\HostingUnits\{unit}\..\..\etc\passwd.vm\base.snapshot"),
        format!(r"XDHyp:\HostingUnits\{unit}\..\win11.vm\base.snapshot"),
        r"XDHyp:\HostingUnits\..\..\..\etc\shadow.vm\x.snapshot".into(),
        "/etc/passwd".into(),
        r"C:\Windows\System32\config.vm\base.snapshot".into(),
        format!(r"XDHyp:\HostingUnits\{unit}\\\\win11.vm\base.snapshot"),
        format!(r"XDHyp:\HostingUnits\{unit}\win11.vm\..\..\base.snapshot"),
        format!(r"XDHyp:\HostingUnits\{unit}\/etc/passwd.network"),
        format!("XDHyp:\\HostingUnits\\{unit}\\win\u{0}11.vm\\base.snapshot"),
        r"XDHyp:\HostingUnits\nowhere\lan.network".into(),
        format!(r"XDHyp:\HostingUnits\{unit}\{}.network", UNICODE[1]),
    ]
}

/// Storage paths relative to a root that try to leave it.
const EVIL_STORAGE_PATHS: [&str; 8] = [
    "..",
    "../..",
    "lab/../../..",
    "./../sentinel",
    "escape-dir",
    "escape-dir/sub",
    "lab/../escape-dir",
    "..\\..",
];

/// The planted symlinks of the base world's roots (created by [`plant_symlinks`]).
pub struct Planted {
    /// The directory outside every root that the links point into.
    pub sentinel: PathBuf,
}

/// Plants links in the base world's roots pointing outside them, into `sentinel` (created
/// with a qcow2 victim holding snapshot `base` and a plain file): `images/escape-dir` (a
/// directory link), `images/evil.qcow2` (a master image link), `fast/linkdir`.
pub fn plant_symlinks(images: &Path, fast: &Path, sentinel: &Path) -> Planted {
    use std::os::unix::fs::symlink;
    std::fs::create_dir_all(sentinel).expect("sentinel");
    super::operator::make_master(&sentinel.join("victim.qcow2"), "16M", 1);
    std::fs::write(
        sentinel.join("do-not-touch.txt"),
        "the operator must not write here\n",
    )
    .expect("sentinel file");
    std::fs::create_dir_all(sentinel.join("prepared")).expect("sentinel/prepared");
    symlink(sentinel, images.join("escape-dir")).expect("link");
    symlink(sentinel.join("victim.qcow2"), images.join("evil.qcow2")).expect("link");
    symlink(sentinel, fast.join("linkdir")).expect("link");
    Planted {
        sentinel: sentinel.to_owned(),
    }
}

/// The generator: a seeded rng over the schema fields and the base objects.
pub struct Generator {
    rng: TestRng,
    fields: BTreeMap<String, Vec<Field>>,
    bases: BTreeMap<String, Value>,
    /// Names of existing objects by kind, for wrong-kind references.
    names: Vec<(String, String)>,
    count: usize,
}

impl Generator {
    /// A generator seeded with `seed` over the CRDs of `crd_dir` and the base world's objects.
    pub fn new(seed: u64, crd_dir: &Path, base: &[Value], good: &[Value]) -> Generator {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        let mut bases = BTreeMap::new();
        for object in base {
            let kind = object["kind"].as_str().expect("kind").to_owned();
            let key = match (&*kind, object["spec"]["prepared"].is_object()) {
                ("ImageVersionSpec", true) => "ImageVersionSpec/prepared".to_owned(),
                ("ImageVersionSpec", false) => "ImageVersionSpec/master".to_owned(),
                _ => kind,
            };
            bases.insert(key, object.clone());
        }
        bases.insert(
            "ProvVm".into(),
            json!({
                "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ProvVm",
                "metadata": {"name": "x"},
                "spec": {"provSchemeRef": "cb-scheme", "machineName": "BADVM-001",
                    "machineIndex": 901,
                    "overrides": {"vmMemoryMB": 4096}},
            }),
        );
        let names = base
            .iter()
            .chain(good)
            .map(|o| {
                (
                    o["kind"].as_str().unwrap_or_default().to_owned(),
                    o["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect();
        Generator {
            rng: TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
            fields: spec_fields(crd_dir),
            bases,
            names,
            count: 0,
        }
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.rng.random_range(0..items.len())]
    }

    fn fresh(&mut self, base: &str) -> (Value, Vec<Value>) {
        self.count += 1;
        let name = format!("bad-{:04}", self.count);
        let mut object = self.bases[base].clone();
        object["metadata"] = json!({ "name": name });
        let mut support = Vec::new();
        if base.starts_with("ImageVersionSpec") {
            let version = format!("{name}-v");
            support.push(json!({
                "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ImageVersion",
                "metadata": {"name": version},
                "spec": {"imageDefinitionRef": "cb-win11"},
            }));
            object["spec"]["imageVersionRef"] = json!(version);
        }
        if base == "ProvVm" {
            object["spec"]["machineName"] = json!(format!("BADVM-{:04}", self.count % 10000));
            object["spec"]["machineIndex"] = json!(1000 + self.count);
        }
        (object, support)
    }

    /// `n` manifests, then the fixed symlink scenarios.
    pub fn generate(&mut self, n: usize) -> Vec<Manifest> {
        let kinds: Vec<String> = self.bases.keys().cloned().collect();
        let mut out = Vec::new();
        while out.len() < n {
            let base = self.pick(&kinds).clone();
            if let Some(m) = self.one(&base) {
                out.push(m);
            }
        }
        out.extend(self.scenarios());
        out
    }

    fn one(&mut self, base: &str) -> Option<Manifest> {
        let kind = base.split('/').next().unwrap_or(base).to_owned();
        let (mut object, support) = self.fresh(base);
        let roll = self.rng.random_range(0..100);
        if roll < 4 {
            let bad = self
                .pick(&[
                    "Bad_Name".to_owned(),
                    format!("bad-{}", UNICODE[0]),
                    "x".repeat(300),
                    "-leading-dash".into(),
                ])
                .clone();
            object["metadata"]["name"] = json!(bad);
            return Some(Manifest {
                object,
                support,
                field: "metadata.name".into(),
                parent: None,
                class: "bad object name",
                expect: Expect::Invalid,
            });
        }
        if roll < 12
            && let Some(m) = self.conflict(&kind, &mut object)
        {
            return Some(Manifest {
                object,
                support,
                field: m.0,
                parent: None,
                class: "conflicting fields",
                expect: m.1,
            });
        }
        let fields: Vec<Field> = self.fields[&kind]
            .iter()
            .filter(|f| {
                let mut probe = object.clone();
                locate(&mut probe, &f.path).is_some()
            })
            .cloned()
            .collect();
        let field = self.pick(&fields).clone();
        let (value, class, expect) = self.mutation(&kind, &field, &object)?;
        let name = field.name();
        let parent = field.parent();
        match value {
            None => {
                if !remove(&mut object, &field.path) {
                    return None;
                }
            }
            Some(value) => {
                if !set(&mut object, &field.path, value) {
                    return None;
                }
            }
        }
        Some(Manifest {
            object,
            support,
            field: name,
            parent,
            class,
            expect,
        })
    }

    /// A value for `field` that breaks it (`None`: remove the field).
    #[allow(clippy::type_complexity)]
    fn mutation(
        &mut self,
        kind: &str,
        field: &Field,
        object: &Value,
    ) -> Option<(Option<Value>, &'static str, Expect)> {
        let name = field.name();
        let schema = &field.schema;
        let present = get(object, &field.path).is_some();
        let mut options: Vec<(Option<Value>, &'static str, Expect)> = Vec::new();
        if field.required && present && !matches!(field.path.last(), Some(Seg::Index)) {
            options.push((None, "required field missing", Expect::Invalid));
        }
        match field.kind() {
            "integer" => {
                options.push((Some(json!("12abc")), "wrong type", Expect::Invalid));
                options.push((Some(json!(1.5)), "wrong type", Expect::Invalid));
                options.push((Some(json!(true)), "wrong type", Expect::Invalid));
                if let Some(min) = schema["minimum"].as_i64() {
                    options.push((Some(json!(min - 1)), "out of range", Expect::Invalid));
                    options.push((Some(json!(i64::MIN)), "out of range", Expect::Invalid));
                }
                match schema["maximum"].as_i64() {
                    Some(max) => {
                        options.push((Some(json!(max + 1)), "out of range", Expect::Invalid));
                        options.push((Some(json!(1e30)), "out of range", Expect::Invalid));
                    }
                    None => {
                        options.push((Some(json!(i64::MAX)), "huge number", Expect::Either));
                        options.push((Some(json!(1e300)), "out of range", Expect::Invalid));
                    }
                }
            }
            "boolean" => {
                options.push((Some(json!("yes")), "wrong type", Expect::Invalid));
                options.push((Some(json!(1)), "wrong type", Expect::Invalid));
            }
            "string" => {
                options.push((Some(json!(7)), "wrong type", Expect::Invalid));
                options.push((Some(json!(["a"])), "wrong type", Expect::Invalid));
                match schema["maxLength"].as_u64() {
                    Some(max) => options.push((
                        Some(json!("x".repeat(max as usize + 1))),
                        "oversized string",
                        Expect::Invalid,
                    )),
                    None => options.push((
                        Some(json!("x".repeat(100_000))),
                        "oversized string (no bound)",
                        Expect::Invalid,
                    )),
                }
                if schema["minLength"].as_u64().is_some_and(|m| m > 0) {
                    options.push((Some(json!("")), "empty string", Expect::Invalid));
                }
                if schema["enum"].is_array() {
                    options.push((Some(json!("Bogus")), "unknown enum value", Expect::Invalid));
                }
                let unicode = json!(self.pick(&UNICODE).to_string());
                let reference = name.ends_with("Ref");
                // Free text, and the names of networks, offerings and groups (hypervisors
                // allow unicode there; a path naming them must then match exactly).
                let listed_name = name == "name"
                    && field.parent().is_some_and(|p| {
                        ["networks", "serviceOfferings", "securityGroups"].contains(&p.as_str())
                    });
                let free_text = ["description", "ou", "backing", "customProperties"]
                    .contains(&name.as_str())
                    || listed_name
                    || matches!(field.path.last(), Some(Seg::MapKey)) && name == "metadata";
                options.push((
                    Some(unicode),
                    "unicode",
                    if free_text {
                        Expect::Either
                    } else {
                        Expect::Invalid
                    },
                ));
                if reference {
                    options.push((
                        Some(json!(format!("missing-{}", self.count))),
                        "reference to a missing object",
                        Expect::Invalid,
                    ));
                    let wrong: Vec<String> = self
                        .names
                        .iter()
                        .filter(|(k, _)| *k != ref_kind(&name))
                        .map(|(_, n)| n.clone())
                        .collect();
                    let other = self.pick(&wrong).clone();
                    // A name that exists as another kind may also exist as the right kind
                    // (the examples share no names across kinds, so this is a wrong kind).
                    options.push((
                        Some(json!(other)),
                        "reference to a wrong-kind object",
                        Expect::Invalid,
                    ));
                }
                let inventory = [
                    "masterImagePath",
                    "serviceOffering",
                    "machineProfile",
                    "networkMapping",
                    "securityGroups",
                ]
                .contains(&name.as_str());
                if inventory {
                    let paths = evil_inventory_paths(BASE_UNIT);
                    let path = self.pick(&paths).clone();
                    options.push((Some(json!(path)), "evil inventory path", Expect::Invalid));
                }
                if kind == "HostingUnit" && name == "path" {
                    let path = *self.pick(&EVIL_STORAGE_PATHS);
                    options.push((Some(json!(path)), "storage path escape", Expect::Invalid));
                    options.push((
                        Some(json!("/etc")),
                        "absolute storage path",
                        Expect::Invalid,
                    ));
                }
                if kind == "HypervisorConnection" && name == "path" {
                    // A file or a missing directory must be reported; `/` and `/proc/self` are
                    // directories an administrator may (unwisely) name.
                    let (path, expect) = *self.pick(&[
                        ("/", Expect::Either),
                        ("/proc/self", Expect::Either),
                        ("/etc/passwd", Expect::Invalid),
                        ("/nonexistent/x", Expect::Invalid),
                    ]);
                    options.push((Some(json!(path)), "storage root path", expect));
                    options.push((
                        Some(json!("relative/dir")),
                        "relative root path",
                        Expect::Invalid,
                    ));
                }
            }
            "array" => {
                options.push((Some(json!({"a": 1})), "wrong type", Expect::Invalid));
                if let Some(max) = schema["maxItems"].as_u64()
                    && let Some(first) = get(object, &field.path).and_then(|v| v.get(0))
                {
                    let mut items = Vec::new();
                    for n in 0..=max {
                        let mut item = first.clone();
                        if item.get("name").is_some() {
                            item["name"] = json!(format!("n{n}"));
                        }
                        items.push(item);
                    }
                    options.push((Some(json!(items)), "too many items", Expect::Invalid));
                }
                if schema["x-kubernetes-list-type"] == "map"
                    && let Some(first) = get(object, &field.path).and_then(|v| v.get(0))
                {
                    options.push((
                        Some(json!([first.clone(), first.clone()])),
                        "duplicate list key",
                        Expect::Invalid,
                    ));
                }
            }
            "object" => {
                options.push((Some(json!("text")), "wrong type", Expect::Invalid));
                if schema["properties"].is_object()
                    && let Some(mut current) = get(object, &field.path).cloned()
                {
                    current["bogusField"] = json!(1);
                    return Some((Some(current), "unknown field", Expect::Invalid))
                        .filter(|_| self.rng.random_bool(0.2))
                        .or_else(|| {
                            let i = self.rng.random_range(0..options.len());
                            Some(options.swap_remove(i))
                        });
                }
                if schema["additionalProperties"].is_object()
                    && let Some(current) = get(object, &field.path).and_then(Value::as_object)
                {
                    let mut map = current.clone();
                    if name == "networkMapping" {
                        let first = map.values().next().cloned().unwrap_or(json!(""));
                        map.insert("eth0".into(), first.clone());
                        options.push((
                            Some(json!({"nic-a": first})),
                            "network mapping key not a NIC index",
                            Expect::Invalid,
                        ));
                        options.push((
                            Some(json!({"99": map["eth0"].clone()})),
                            "network mapping NIC out of range",
                            Expect::Invalid,
                        ));
                    }
                    if let Some(max) = schema["maxProperties"].as_u64() {
                        let mut big = serde_json::Map::new();
                        for n in 0..=max {
                            big.insert(n.to_string(), json!(format!("v{n}")));
                        }
                        options.push((Some(Value::Object(big)), "too many keys", Expect::Invalid));
                    }
                }
            }
            _ => {}
        }
        if options.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..options.len());
        Some(options.swap_remove(i))
    }

    /// Fields that conflict with each other, per kind; returns the field to name.
    fn conflict(&mut self, kind: &str, object: &mut Value) -> Option<(String, Expect)> {
        let spec = &mut object["spec"];
        let choice = self.rng.random_range(0..3);
        match (kind, choice) {
            ("HypervisorConnection", 0) => {
                spec["type"] = json!("KubeVirt");
                Some(("kubeVirt".into(), Expect::Invalid))
            }
            ("HypervisorConnection", 1) => {
                spec["kubeVirt"] = json!({"namespace": "vms"});
                Some(("kubeVirt".into(), Expect::Invalid))
            }
            ("HypervisorConnection", _) => {
                let roots = spec["local"]["storageRoots"].clone();
                spec["local"]["storageRoots"][1]["path"] = roots[0]["path"].clone();
                Some(("storageRoots".into(), Expect::Invalid))
            }
            ("HostingUnit", 0) => {
                spec["storages"][1] = json!({"name": "secondary", "root": "images"});
                Some(("storages".into(), Expect::Invalid))
            }
            ("HostingUnit", 1) => {
                spec["storages"][1]["root"] = json!("nowhere");
                Some(("root".into(), Expect::Invalid))
            }
            ("HostingUnit", _) => {
                spec["networks"] = json!([{"name": "lan"}, {"name": "LAN"}]);
                Some(("networks".into(), Expect::Either))
            }
            ("IdentityPool", 0) => {
                spec.as_object_mut()?.remove("domain");
                Some(("domain".into(), Expect::Invalid))
            }
            ("IdentityPool", 1) => {
                spec["startCount"] = json!(5000);
                Some(("startCount".into(), Expect::Invalid))
            }
            ("IdentityPool", _) => {
                spec["namingSchemeType"] = json!("Alphabetic");
                spec["namingScheme"] = json!("VDI-#");
                Some(("namingScheme".into(), Expect::Either))
            }
            ("ImageDefinition", _) => {
                spec["connections"] =
                    json!([{"connectionRef": "cb-local"}, {"connectionRef": "cb-local"}]);
                Some(("connections".into(), Expect::Invalid))
            }
            ("ImageVersionSpec", 0) => {
                spec["prepared"] = json!({"sourceSpecRef": "cb-master",
                    "networkMapping": {"0": r"XDHyp:\HostingUnits\cb-lab\lan.network"}});
                spec["master"] = json!({"hostingUnitRef": "cb-lab",
                    "masterImagePath": r"XDHyp:\HostingUnits\cb-lab\win11.vm\base.snapshot"});
                Some(("master".into(), Expect::Invalid))
            }
            ("ImageVersionSpec", 1) if spec["prepared"].is_object() => {
                spec["prepared"]["serviceOffering"] =
                    json!(r"XDHyp:\HostingUnits\cb-lab\small.serviceoffering");
                Some(("serviceOffering".into(), Expect::Invalid))
            }
            ("ImageVersionSpec", _) if spec["prepared"].is_object() => {
                spec["prepared"]["sourceSpecRef"] = json!("cb-prepared");
                Some(("sourceSpecRef".into(), Expect::Invalid))
            }
            ("ImageVersionSpec", _) => {
                spec["master"]["masterImagePath"] =
                    json!(r"XDHyp:\HostingUnits\lab\win11.vm\base.snapshot");
                Some(("masterImagePath".into(), Expect::Invalid))
            }
            ("ProvScheme", 0) => {
                spec["serviceOffering"] =
                    json!(r"XDHyp:\HostingUnits\cb-lab\small.serviceoffering");
                Some(("serviceOffering".into(), Expect::Invalid))
            }
            ("ProvScheme", 1) => {
                spec["writeBackCacheDiskSizeGB"] = json!(10);
                Some(("writeBackCacheDiskSizeGB".into(), Expect::Invalid))
            }
            ("ProvScheme", _) => {
                spec["imageVersionSpecRef"] = json!("cb-master");
                Some(("imageVersionSpecRef".into(), Expect::Invalid))
            }
            ("ProvVm", 0) => {
                spec["overrides"]["serviceOffering"] =
                    json!(r"XDHyp:\HostingUnits\cb-lab\small.serviceoffering");
                Some(("serviceOffering".into(), Expect::Invalid))
            }
            ("ProvVm", _) => {
                spec["machineName"] = json!("VDI-001");
                Some(("machineName".into(), Expect::Invalid))
            }
            _ => None,
        }
    }

    /// The symlink scenarios: a unit whose storage is a link out of its root, a master image
    /// that is a link to a file outside, and a prepared spec replicating into a linked
    /// directory; each with what it needs.
    fn scenarios(&mut self) -> Vec<Manifest> {
        let mut out = Vec::new();
        let version = |name: &str| {
            json!({"apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ImageVersion",
                "metadata": {"name": name}, "spec": {"imageDefinitionRef": "cb-win11"}})
        };
        let unit = |name: &str, storages: Value| {
            json!({"apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "HostingUnit",
                "metadata": {"name": name},
                "spec": {"connectionRef": "cb-local", "storages": storages,
                    "networks": [{"name": "lan", "backing": "br0"}]}})
        };
        let master = |name: &str, version: &str, unit: &str, file: &str| {
            json!({"apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ImageVersionSpec",
                "metadata": {"name": name},
                "spec": {"imageVersionRef": version, "master": {"hostingUnitRef": unit,
                    "masterImagePath": format!(r"XDHyp:\HostingUnits\{unit}\{file}.vm\base.snapshot")}}})
        };
        let prepared = |name: &str, version: &str, source: &str, unit: &str| {
            json!({"apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ImageVersionSpec",
                "metadata": {"name": name},
                "spec": {"imageVersionRef": version, "prepared": {"sourceSpecRef": source,
                    "networkMapping": {"0": format!(r"XDHyp:\HostingUnits\{unit}\lan.network")}}}})
        };
        let manifest = |object: Value, support: Vec<Value>, field: &str| Manifest {
            object,
            support,
            field: field.into(),
            parent: None,
            class: "symlink escape",
            expect: Expect::Invalid,
        };
        // 1. A storage that is a link to the sentinel; a master and a prepared spec on it.
        out.push(manifest(
            unit(
                "sym-unit-dir",
                json!([{"name": "primary", "root": "images", "path": "escape-dir"}]),
            ),
            vec![],
            "storages",
        ));
        out.push(manifest(
            master("sym-m-dir", "sym-v-dir", "sym-unit-dir", "victim"),
            vec![version("sym-v-dir")],
            "sym-unit-dir",
        ));
        out.push(manifest(
            prepared("sym-p-dir", "sym-v-dir", "sym-m-dir", "sym-unit-dir"),
            vec![],
            "sym-unit-dir",
        ));
        // 2. A master image that is a link to a qcow2 outside the roots.
        out.push(manifest(
            master("sym-m-file", "sym-v-file", BASE_UNIT, "evil"),
            vec![version("sym-v-file")],
            "masterImagePath",
        ));
        out.push(manifest(
            prepared("sym-p-file", "sym-v-file", "sym-m-file", BASE_UNIT),
            vec![],
            "evil.qcow2",
        ));
        // 3. A unit whose second storage is a linked directory: a good master on its first
        //    storage, a prepared spec that would replicate through the link.
        out.push(manifest(
            unit(
                "sym-unit-rep",
                json!([{"name": "primary", "root": "images"},
                    {"name": "secondary", "root": "fast", "path": "linkdir"}]),
            ),
            vec![],
            "storages",
        ));
        let mut good_master = master("sym-m-rep", "sym-v-rep", "sym-unit-rep", "win11");
        good_master["metadata"]["name"] = json!("sym-m-rep");
        out.push(Manifest {
            expect: Expect::Either,
            ..manifest(good_master, vec![version("sym-v-rep")], "hostingUnitRef")
        });
        out.push(manifest(
            prepared("sym-p-rep", "sym-v-rep", "sym-m-rep", "sym-unit-rep"),
            vec![],
            "sym-unit-rep",
        ));
        out
    }
}

/// The kind a `...Ref` field names.
fn ref_kind(field: &str) -> &'static str {
    match field {
        "connectionRef" => "HypervisorConnection",
        "hostingUnitRef" => "HostingUnit",
        "identityPoolRef" => "IdentityPool",
        "imageDefinitionRef" => "ImageDefinition",
        "imageVersionRef" => "ImageVersion",
        "imageVersionSpecRef" | "sourceSpecRef" => "ImageVersionSpec",
        "provSchemeRef" => "ProvScheme",
        _ => "",
    }
}

/// Every file and directory under `root` (links not followed) with its size, modification
/// time and content hash, to prove nothing was written there.
pub fn tree(root: &Path) -> BTreeMap<PathBuf, (u64, SystemTime, String)> {
    use sha2::Digest as _;
    fn visit(dir: &Path, out: &mut BTreeMap<PathBuf, (u64, SystemTime, String)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let hash = if meta.is_file() {
                hex::encode(sha2::Sha256::digest(
                    std::fs::read(&path).unwrap_or_default(),
                ))
            } else {
                String::new()
            };
            out.insert(path.clone(), (meta.len(), mtime, hash));
            if meta.is_dir() {
                visit(&path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(meta) = std::fs::metadata(root) {
        out.insert(
            root.to_owned(),
            (
                0,
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                String::new(),
            ),
        );
    }
    visit(root, &mut out);
    out
}

/// What happened to one manifest.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Refused at admission with a message naming the field.
    Rejected,
    /// Accepted; a condition and an Event name the field.
    Reported,
    /// Accepted and healthy (allowed for [`Expect::Either`]).
    Fine,
    /// A defect: refused, but the message does not name the field.
    RejectedUnnamed(String),
    /// A defect: accepted, and not (fully) reported.
    Unreported(String),
}
