//! The object store: objects, resourceVersions, event history and all write semantics.

use crate::error::{ApiError, ApiResult, qualified};
use crate::selector::{FieldSelector, LabelSelector};
use crate::ssa::{self, Scope};
use crate::types::{self, ResourceType};
use base64::Engine as _;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{Notify, broadcast};

/// `(group, plural)`: the storage identity of a kind.
pub type TypeKey = (String, String);
type ObjKey = (String, String);

const CRD_GROUP: &str = "apiextensions.k8s.io";
const CRD_PLURAL: &str = "customresourcedefinitions";

/// One committed change, as kept in the watch history and broadcast to watchers.
#[derive(Debug, Clone)]
pub struct Change {
    /// The resourceVersion of the change.
    pub rv: u64,
    /// The kind.
    pub key: TypeKey,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub etype: &'static str,
    /// The object after the change (the final object for deletions).
    pub object: Value,
    /// The object before a modification.
    pub old: Option<Value>,
}

#[derive(Default)]
struct Bucket {
    objects: BTreeMap<ObjKey, Value>,
    history: VecDeque<Arc<Change>>,
    evicted_upto: u64,
}

struct Inner {
    rv: u64,
    types: Vec<ResourceType>,
    buckets: HashMap<TypeKey, Bucket>,
    history_limit: usize,
    tx: broadcast::Sender<Arc<Change>>,
    gc_wanted: bool,
}

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    /// The main resource.
    Main,
    /// The `/status` subresource.
    Status,
    /// The `/scale` subresource: writes the main resource (its replicas), recorded in
    /// `managedFields` under the subresource `scale`.
    Scale,
}

impl Sub {
    fn name(self) -> &'static str {
        match self {
            Sub::Main => "",
            Sub::Status => "status",
            Sub::Scale => "scale",
        }
    }
}

/// Options of a list request.
#[derive(Debug, Clone, Default)]
pub struct ListOpts {
    /// `labelSelector`.
    pub label: LabelSelector,
    /// `fieldSelector`.
    pub field: FieldSelector,
    /// `limit` (0 = none).
    pub limit: usize,
    /// `continue`.
    pub continue_token: Option<String>,
    /// `resourceVersion`.
    pub rv: Option<String>,
    /// `resourceVersionMatch`.
    pub rv_match: Option<String>,
}

/// Options of a watch request.
#[derive(Debug, Clone, Default)]
pub struct WatchOpts {
    /// `labelSelector`.
    pub label: LabelSelector,
    /// `fieldSelector`.
    pub field: FieldSelector,
    /// `resourceVersion`.
    pub rv: Option<String>,
    /// `resourceVersionMatch`.
    pub rv_match: Option<String>,
    /// `sendInitialEvents=true`.
    pub send_initial_events: bool,
}

/// Options of a write request.
#[derive(Debug, Clone, Default)]
pub struct WriteOpts {
    /// The field manager.
    pub manager: String,
    /// `dryRun=All`.
    pub dry_run: bool,
    /// `fieldValidation=Strict`: unknown fields fail the write instead of being dropped.
    pub strict: bool,
}

/// Options of a delete request.
#[derive(Debug, Clone, Default)]
pub struct DeleteOpts {
    /// `propagationPolicy` (`Orphan`, `Background`, `Foreground`).
    pub propagation: Option<String>,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub rv: Option<String>,
    /// `dryRun=All`.
    pub dry_run: bool,
}

/// The patch formats understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/strategic-merge-patch+json`: treated as a merge patch (built-in kinds only).
    Strategic,
    /// `application/json-patch+json` (RFC 6902).
    Json,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply {
        /// `force=true`.
        force: bool,
    },
}

/// What a new watch starts with.
pub struct WatchStart {
    /// Events to send first (`{"type","object"}` values).
    pub initial: Vec<Value>,
    /// For `sendInitialEvents`: the resourceVersion of the initial-events-end bookmark.
    pub end_bookmark: Option<u64>,
    /// Later changes.
    pub rx: broadcast::Receiver<Arc<Change>>,
    /// The filter to apply to later changes.
    pub filter: WatchFilter,
    /// A 410 to send as an ERROR event instead (resourceVersion too old).
    pub gone: Option<ApiError>,
}

/// Selects and translates changes for one watch.
#[derive(Debug, Clone)]
pub struct WatchFilter {
    key: TypeKey,
    ns: Option<String>,
    label: LabelSelector,
    field: FieldSelector,
    min_rv: u64,
    api_version: String,
}

impl WatchFilter {
    fn matches(&self, obj: &Value) -> bool {
        if let Some(ns) = &self.ns
            && obj["metadata"]["namespace"].as_str().unwrap_or_default() != ns
        {
            return false;
        }
        self.label.matches(obj) && self.field.matches(obj)
    }

    fn event(&self, etype: &str, obj: &Value) -> Value {
        let mut o = obj.clone();
        o["apiVersion"] = json!(self.api_version);
        go_zero_fields(&self.key, &mut o);
        json!({ "type": etype, "object": o })
    }

    /// The watch event for `ch`, if this watch should see it.
    pub fn translate(&self, ch: &Change) -> Option<Value> {
        if ch.key != self.key || ch.rv <= self.min_rv {
            return None;
        }
        let now = self.matches(&ch.object);
        if ch.etype == "MODIFIED" {
            let before = ch.old.as_ref().is_some_and(|o| self.matches(o));
            return match (before, now) {
                (true, true) => Some(self.event("MODIFIED", &ch.object)),
                (false, true) => Some(self.event("ADDED", &ch.object)),
                // As the apiserver's watch cache: the object that leaves the selection is
                // reported as it last matched, with the resourceVersion of the change.
                (true, false) => {
                    let mut last = ch.old.clone().unwrap_or_else(|| ch.object.clone());
                    meta_mut(&mut last).insert("resourceVersion".into(), json!(ch.rv.to_string()));
                    Some(self.event("DELETED", &last))
                }
                (false, false) => None,
            };
        }
        now.then(|| self.event(ch.etype, &ch.object))
    }
}

/// The current time as the apiserver writes it.
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata").and_then(Value::as_object_mut) {
        Some(m) => m,
        None => unreachable!("metadata was just made an object"),
    }
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn deleting(obj: &Value) -> bool {
    obj["metadata"]["deletionTimestamp"].is_string()
}

fn rv_of(obj: &Value) -> Option<&str> {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .filter(|s| !s.is_empty())
}

fn uid_of(obj: &Value) -> &str {
    obj["metadata"]["uid"].as_str().unwrap_or_default()
}

fn present(rt: &ResourceType, obj: &Value) -> Value {
    let mut o = obj.clone();
    o["apiVersion"] = json!(rt.api_version());
    go_zero_fields(&rt.key(), &mut o);
    o
}

/// The fields a real apiserver always writes for the built-in Event kinds because Go's JSON
/// encoding has no `omitempty` for them (zero timestamps are `null`, structs `{}`), added
/// to every response. They are not stored, so they never show up in `managedFields`.
fn go_zero_fields(key: &TypeKey, obj: &mut Value) {
    let defaults: &[(&str, Value)] = match (key.0.as_str(), key.1.as_str()) {
        ("", "events") => &[
            ("involvedObject", json!({})),
            ("source", json!({})),
            ("firstTimestamp", Value::Null),
            ("lastTimestamp", Value::Null),
            ("eventTime", Value::Null),
            ("reportingComponent", json!("")),
            ("reportingInstance", json!("")),
        ],
        ("events.k8s.io", "events") => &[
            ("eventTime", Value::Null),
            ("regarding", json!({})),
            ("deprecatedSource", json!({})),
            ("deprecatedFirstTimestamp", Value::Null),
            ("deprecatedLastTimestamp", Value::Null),
        ],
        _ => return,
    };
    if let Some(m) = obj.as_object_mut() {
        for (k, v) in defaults {
            m.entry(k.to_string()).or_insert_with(|| v.clone());
        }
    }
}

/// Make the maps that a built-in kind's Go type always has (struct fields that are no
/// pointers) exist in `obj`, for `managedFields` tracking: a write that fills them does not
/// create them, so it owns no `"."` for them, as with a real apiserver.
fn struct_nodes(key: &TypeKey, obj: &mut Value) {
    let paths: &[&[&str]] = match (key.0.as_str(), key.1.as_str()) {
        ("", "namespaces") => &[&["spec"], &["status"]],
        ("", "events") => &[&["involvedObject"], &["source"]],
        ("events.k8s.io", "events") => &[&["regarding"], &["deprecatedSource"]],
        ("coordination.k8s.io", "leases") => &[&["spec"]],
        (CRD_GROUP, CRD_PLURAL) => &[
            &["spec"],
            &["spec", "names"],
            &["status"],
            &["status", "acceptedNames"],
        ],
        _ => return,
    };
    for path in paths {
        let mut cur = &mut *obj;
        for k in *path {
            if !cur.is_object() {
                break;
            }
            if !cur[*k].is_object() {
                cur[*k] = json!({});
            }
            cur = &mut cur[*k];
        }
    }
}

/// One DNS label (RFC 1123): `[a-z0-9]([-a-z0-9]*[a-z0-9])?`.
fn dns_label_chars(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// The apiserver's errors for an object name (`metadata.name`): a DNS subdomain, or a DNS
/// label for namespaces; empty when the name is valid. Worded as `k8s.io/apimachinery`'s
/// `IsDNS1123Subdomain` / `IsDNS1123Label`: a length error and a pattern error can both
/// apply.
fn name_errors(name: &str, label: bool) -> Vec<String> {
    let mut errs = Vec::new();
    if label {
        if name.len() > 63 {
            errs.push("must be no more than 63 characters".to_string());
        }
        if !dns_label_chars(name) {
            errs.push("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')".to_string());
        }
    } else {
        if name.len() > 253 {
            errs.push("must be no more than 253 characters".to_string());
        }
        if !name.split('.').all(dns_label_chars) {
            errs.push("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".to_string());
        }
    }
    errs
}

/// Go's JSON encoding never writes an integral number as `1.0`: numbers with no fraction
/// become integers (as a real apiserver stores and returns them).
fn integral_numbers(v: &mut Value) {
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64()
                && !n.is_i64()
                && !n.is_u64()
                && f.fract() == 0.0
                && f.abs() < 9.0e15
            {
                *v = json!(f as i64);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(integral_numbers),
        Value::Object(m) => m.values_mut().for_each(integral_numbers),
        _ => {}
    }
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4().as_bytes()[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

fn split_path(p: &str) -> Vec<String> {
    p.trim_start_matches('.')
        .split('.')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn get_path<'a>(v: &'a Value, p: &str) -> Option<&'a Value> {
    let path: Vec<ssa::Seg> = split_path(p).into_iter().map(ssa::Seg::F).collect();
    ssa::value_at(v, &path)
}

fn set_path(v: &mut Value, p: &str, val: Value) {
    let mut cur = v;
    for k in split_path(p) {
        if !cur.is_object() {
            *cur = json!({});
        }
        cur = &mut cur[k.as_str()];
    }
    *cur = val;
}

/// The key fields of the associative list at `path` (schema-declared, or ownerReferences);
/// `Some(vec![])` for an atomic map (schema-declared, or the built-in Events'
/// `ObjectReference`s).
fn list_keys(rt: &ResourceType, path: &[ssa::Seg]) -> Option<Vec<String>> {
    use ssa::Seg::F;
    if let [F(m), F(o)] = path
        && m == "metadata"
        && o == "ownerReferences"
    {
        return Some(vec!["uid".to_string()]);
    }
    if let [F(m), F(f)] = path
        && m == "metadata"
        && f == "finalizers"
    {
        return Some(vec![ssa::SET.to_string()]);
    }
    // Owner references are atomic structs: an item is owned as a whole.
    if let [F(m), F(o), ssa::Seg::K(_)] = path
        && m == "metadata"
        && o == "ownerReferences"
    {
        return Some(Vec::new());
    }
    if let [F(field)] = path {
        let atomic = match (rt.group.as_str(), rt.kind.as_str()) {
            ("", "Event") => ["involvedObject", "related"].contains(&field.as_str()),
            ("events.k8s.io", "Event") => ["regarding", "related"].contains(&field.as_str()),
            ("apps", "ControllerRevision") => field == "data",
            _ => false,
        };
        if atomic {
            return Some(Vec::new());
        }
    }
    rt.schema.as_ref()?.list_map_keys(path)
}

fn strip_volatile(v: &Value) -> Value {
    let mut o = v.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        m.remove("managedFields");
    }
    o
}

fn ownership(entries: &[ssa::Entry]) -> Vec<(String, String, String, BTreeSet<ssa::FieldPath>)> {
    entries
        .iter()
        .map(|e| {
            (
                e.manager.clone(),
                e.operation.clone(),
                e.subresource.clone(),
                e.fields.clone(),
            )
        })
        .collect()
}

fn spec_differs(a: &Value, b: &Value, status_sub: bool) -> bool {
    let strip = |v: &Value| {
        let mut o = v.clone();
        if let Some(m) = o.as_object_mut() {
            m.remove("metadata");
            if status_sub {
                m.remove("status");
            }
        }
        o
    };
    strip(a) != strip(b)
}

fn roundtrip<T: DeserializeOwned + Serialize>(obj: &mut Value, kind: &str) -> ApiResult<()> {
    let typed: T = serde_json::from_value(obj.clone()).map_err(|e| {
        ApiError::bad_request(format!("error decoding {kind} from the request body: {e}"))
    })?;
    *obj = serde_json::to_value(typed).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(())
}

/// Round-trip an object through its typed form, as the apiserver does by decoding and
/// re-encoding it, then drop the empty `metadata` collections that Go's `omitempty` never
/// stores.
fn normalize(rt: &ResourceType, obj: &mut Value) -> ApiResult<()> {
    normalize_typed(rt, obj)?;
    drop_empty_meta(obj);
    integral_numbers(obj);
    Ok(())
}

/// Remove `metadata.finalizers: []`, `labels: {}` and the like. `ObjectMeta` tags these
/// `omitempty`, so a real apiserver never stores or returns them empty: after the last
/// finalizer is removed the field is absent, and a JSON patch `test` of it against `null`
/// (what kube's `finalizer()` helper sends before adding the first one) passes.
fn drop_empty_meta(obj: &mut Value) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "finalizers",
            "ownerReferences",
            "labels",
            "annotations",
            "managedFields",
        ] {
            let empty = match m.get(k) {
                Some(Value::Array(a)) => a.is_empty(),
                Some(Value::Object(o)) => o.is_empty(),
                Some(Value::Null) => true,
                _ => false,
            };
            if empty {
                m.remove(k);
            }
        }
    }
}

/// Decode into the built-in type and encode again: type-checks and drops unknown fields.
fn normalize_typed(rt: &ResourceType, obj: &mut Value) -> ApiResult<()> {
    use k8s_openapi::api;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
    if rt.custom {
        let meta = obj.get("metadata").cloned().unwrap_or_else(|| json!({}));
        let typed: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta =
            serde_json::from_value(meta)
                .map_err(|e| ApiError::bad_request(format!("invalid metadata: {e}")))?;
        obj["metadata"] =
            serde_json::to_value(typed).map_err(|e| ApiError::internal(e.to_string()))?;
        return Ok(());
    }
    let kind = rt.kind.as_str();
    match (rt.group.as_str(), kind) {
        ("", "Namespace") => roundtrip::<api::core::v1::Namespace>(obj, kind),
        ("", "Secret") => {
            if let Some(sd) = obj.as_object_mut().and_then(|m| m.remove("stringData"))
                && let Some(sd) = sd.as_object()
            {
                if !obj["data"].is_object() {
                    obj["data"] = json!({});
                }
                for (k, v) in sd {
                    let s = v.as_str().unwrap_or_default();
                    obj["data"][k] =
                        json!(base64::engine::general_purpose::STANDARD.encode(s.as_bytes()));
                }
            }
            if obj["type"].as_str().is_none_or(str::is_empty) {
                obj["type"] = json!("Opaque");
            }
            roundtrip::<api::core::v1::Secret>(obj, kind)
        }
        ("", "ConfigMap") => roundtrip::<api::core::v1::ConfigMap>(obj, kind),
        ("", "Event") => roundtrip::<api::core::v1::Event>(obj, kind),
        ("events.k8s.io", "Event") => roundtrip::<api::events::v1::Event>(obj, kind),
        ("apps", "ControllerRevision") => roundtrip::<api::apps::v1::ControllerRevision>(obj, kind),
        ("coordination.k8s.io", "Lease") => roundtrip::<api::coordination::v1::Lease>(obj, kind),
        (CRD_GROUP, "CustomResourceDefinition") => {
            roundtrip::<apiext::CustomResourceDefinition>(obj, kind)
        }
        _ => Ok(()),
    }
}

/// The update validation of the built-in kinds that the operator relies on.
fn builtin_update_rules(rt: &ResourceType, old: &Value, new: &Value, name: &str) -> ApiResult<()> {
    let immutable = |field: &str, why: &str| {
        Err(ApiError::invalid(
            &rt.group,
            &rt.kind,
            name,
            &[(field.to_string(), format!("Forbidden: {why}"))],
        ))
    };
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Secret" | "ConfigMap") => {
            if old["immutable"].as_bool() == Some(true) {
                if new["immutable"].as_bool() != Some(true) {
                    return immutable("immutable", "field is immutable when `immutable` is set");
                }
                for f in ["data", "binaryData"] {
                    if old.get(f) != new.get(f) {
                        return immutable(f, "field is immutable when `immutable` is set");
                    }
                }
            }
            if rt.kind == "Secret" && old.get("type") != new.get("type") {
                return immutable("type", "field is immutable");
            }
            Ok(())
        }
        ("apps", "ControllerRevision") if old.get("data") != new.get("data") => {
            immutable("data", "field is immutable")
        }
        ("events.k8s.io", "Event") => {
            // Through events.k8s.io only the series (and metadata) may change; the errors
            // name the core Event's fields, in the apiserver's order (reason twice).
            let fields = [
                ("regarding", "involvedObject"),
                ("reason", "reason"),
                ("note", "message"),
                ("deprecatedSource", "source"),
                ("deprecatedFirstTimestamp", "firstTimestamp"),
                ("deprecatedLastTimestamp", "lastTimestamp"),
                ("deprecatedCount", "count"),
                ("reason", "reason"),
                ("type", "type"),
                ("eventTime", "eventTime"),
                ("action", "action"),
                ("related", "related"),
                ("reportingController", "reportingController"),
                ("reportingInstance", "reportingInstance"),
            ];
            // Absent, null and empty are the same zero value of the Go field.
            let set = |v: Option<&Value>| {
                v.filter(|v| {
                    !v.is_null()
                        && v.as_object().is_none_or(|m| !m.is_empty())
                        && v.as_str().is_none_or(|s| !s.is_empty())
                })
                .cloned()
            };
            let causes: Vec<(String, String)> = fields
                .iter()
                .filter(|(f, _)| set(old.get(*f)) != set(new.get(*f)))
                .map(|(f, core)| {
                    let value = match &new[*f] {
                        Value::String(s) => format!("{s:?}"),
                        other => other.to_string(),
                    };
                    (
                        core.to_string(),
                        format!("Invalid value: {value}: field is immutable"),
                    )
                })
                .collect();
            if causes.is_empty() {
                Ok(())
            } else {
                Err(ApiError::invalid("", &rt.kind, name, &causes))
            }
        }
        _ => Ok(()),
    }
}

/// The apiextensions defaults of a CRD: `names.singular` and `names.listKind` from the kind,
/// `conversion.strategy: None`.
fn crd_defaults(crd: &mut Value) {
    let kind = crd["spec"]["names"]["kind"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let names = &mut crd["spec"]["names"];
    if names.is_object() {
        if names["singular"].as_str().is_none_or(str::is_empty) {
            names["singular"] = json!(kind.to_lowercase());
        }
        if names["listKind"].as_str().is_none_or(str::is_empty) {
            names["listKind"] = json!(format!("{kind}List"));
        }
    }
    if crd["spec"].is_object() && !crd["spec"]["conversion"].is_object() {
        crd["spec"]["conversion"] = json!({ "strategy": "None" });
    }
}

/// The status a CRD gets from the apiserver: names accepted and Established (kept with their
/// transition times while the names stay), the stored versions (only ever added to).
fn crd_status(old: Option<&Value>, crd: &Value, now: &str) -> Value {
    let old_status = old.map(|o| &o["status"]).unwrap_or(&Value::Null);
    let names = crd["spec"]["names"].clone();
    let conditions = match old_status["conditions"].as_array() {
        Some(c) if old_status["acceptedNames"] == names && !c.is_empty() => json!(c),
        _ => json!([
            {"type": "NamesAccepted", "status": "True", "lastTransitionTime": now, "reason": "NoConflicts", "message": "no conflicts found"},
            {"type": "Established", "status": "True", "lastTransitionTime": now, "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"},
        ]),
    };
    let mut stored: Vec<Value> = old_status["storedVersions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for v in crd["spec"]["versions"].as_array().into_iter().flatten() {
        if v["storage"].as_bool() == Some(true) && !stored.contains(&v["name"]) {
            stored.push(v["name"].clone());
        }
    }
    json!({ "conditions": conditions, "acceptedNames": names, "storedVersions": stored })
}

/// The `managedFields` entry of the apiserver's own status writes to a CRD (`kube-apiserver`,
/// `Update` on `status`: the accepted names and the conditions).
fn crd_status_entry(entries: &mut Vec<ssa::Entry>, crd: &Value, now: &str) {
    let shown = json!({ "status": {
        "acceptedNames": crd["status"]["acceptedNames"],
        "conditions": crd["status"]["conditions"],
    }});
    let keys = |p: &[ssa::Seg]| {
        matches!(p, [ssa::Seg::F(s), ssa::Seg::F(c)] if s == "status" && c == "conditions")
            .then(|| vec!["type".to_string()])
    };
    let fields = ssa::leaf_paths(&shown, ssa::Scope::All, &keys);
    let mine = |e: &ssa::Entry| {
        e.manager == "kube-apiserver" && e.operation == "Update" && e.subresource == "status"
    };
    match entries.iter_mut().find(|e| mine(e)) {
        Some(e) if e.fields == fields => {}
        Some(e) => {
            e.fields = fields;
            e.time = now.to_string();
        }
        None => entries.push(ssa::Entry {
            manager: "kube-apiserver".into(),
            operation: "Update".into(),
            api_version: format!("{CRD_GROUP}/v1"),
            time: now.to_string(),
            subresource: "status".into(),
            fields,
        }),
    }
}

/// The fields of `before` that `after` lost (`spec.a`, `spec.list[0].b`); `null`s do not
/// count.
fn lost_fields(before: &Value, after: &Value, prefix: &str, out: &mut Vec<String>) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            for (k, bv) in b {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match a.get(k) {
                    None if !bv.is_null() => out.push(p),
                    None => {}
                    Some(av) => lost_fields(bv, av, &p, out),
                }
            }
        }
        (Value::Array(b), Value::Array(a)) if b.len() == a.len() => {
            for (i, (bv, av)) in b.iter().zip(a).enumerate() {
                lost_fields(bv, av, &format!("{prefix}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The fields of `obj` that its kind does not declare (what decoding drops: pruning for
/// custom resources, the Go type for built-ins), `metadata`'s first.
pub(crate) fn unknown_fields(rt: &ResourceType, obj: &Value) -> Vec<String> {
    let mut before = obj.clone();
    if rt.group.is_empty()
        && rt.kind == "Secret"
        && let Some(m) = before.as_object_mut()
    {
        m.remove("stringData");
    }
    let mut known = before.clone();
    match &rt.schema {
        Some(schema) => schema.prune(&mut known),
        None => {
            if normalize_typed(rt, &mut known).is_err() {
                return Vec::new();
            }
        }
    }
    let mut out = Vec::new();
    lost_fields(&before, &known, "", &mut out);
    if rt.custom {
        // The custom resource decoder reports `metadata`'s first; the built-in types'
        // decoding goes through the document in order.
        out.sort_by_key(|p| !p.starts_with("metadata."));
    }
    out
}

/// The 400 of `fieldValidation=Strict` for a create or replace body with unknown fields.
fn strict_decoding_error(rt: &ResourceType, unknown: &[String]) -> ApiError {
    let list: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field {f:?}"))
        .collect();
    ApiError::bad_request(format!(
        "{kind} in version {version:?} cannot be handled as a {kind}: strict decoding error: {}",
        list.join(", "),
        kind = rt.kind,
        version = rt.version,
    ))
}

/// The 422 of `fieldValidation=Strict` for a merge or JSON patch whose result has unknown
/// fields (the apiserver quotes the patched object).
fn strict_patch_error(patched: &Value, unknown: &[String]) -> ApiError {
    let list: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field {f:?}"))
        .collect();
    ApiError::invalid(
        "",
        "",
        "",
        &[(
            "patch".into(),
            format!(
                "Invalid value: {:?}: strict decoding error: {}",
                patched.to_string(),
                list.join(", ")
            ),
        )],
    )
}

/// The 500 of an apply configuration with fields its kind does not declare.
fn typed_patch_error(
    rt: &ResourceType,
    config: &Value,
    name: &str,
    unknown: &[String],
) -> ApiError {
    let mut errs: Vec<String> = unknown
        .iter()
        .map(|f| format!(".{f}: field not declared in schema"))
        .collect();
    errs.sort();
    let what = if errs.len() == 1 {
        errs[0].clone()
    } else {
        format!("errors:\n  {}", errs.join("\n  "))
    };
    ApiError::new(
        500,
        "",
        format!(
            "failed to create typed patch object ({}/{name}; {}/{}, Kind={}): {what}",
            config["metadata"]["namespace"].as_str().unwrap_or_default(),
            rt.group,
            rt.version,
            rt.kind
        ),
    )
}

fn encode_continue(rv: u64, key: &ObjKey) -> String {
    let raw = json!({ "rv": rv, "ns": key.0, "name": key.1 }).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_continue(tok: &str) -> ApiResult<(u64, ObjKey)> {
    let bad = || ApiError::bad_request("invalid continue token");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(tok)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v["rv"].as_u64().ok_or_else(bad)?;
    let ns = v["ns"].as_str().ok_or_else(bad)?.to_string();
    let name = v["name"].as_str().ok_or_else(bad)?.to_string();
    Ok((rv, (ns, name)))
}

impl Inner {
    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn bucket(&mut self, key: &TypeKey) -> &mut Bucket {
        self.buckets.entry(key.clone()).or_default()
    }

    fn obj(&self, key: &TypeKey, ns: &str, name: &str) -> Option<&Value> {
        self.buckets
            .get(key)?
            .objects
            .get(&(ns.to_string(), name.to_string()))
    }

    fn emit(&mut self, key: &TypeKey, etype: &'static str, obj: &Value, old: Option<Value>) {
        let ch = Arc::new(Change {
            rv: self.rv,
            key: key.clone(),
            etype,
            object: obj.clone(),
            old,
        });
        let limit = self.history_limit.max(1);
        let b = self.bucket(key);
        b.history.push_back(ch.clone());
        while b.history.len() > limit {
            if let Some(ev) = b.history.pop_front() {
                b.evicted_upto = ev.rv;
            }
        }
        let _ = self.tx.send(ch);
    }

    fn type_for_key(&self, key: &TypeKey) -> Option<ResourceType> {
        let mut found = None;
        for t in &self.types {
            if t.group == key.0 && t.plural == key.1 {
                if t.version == t.storage_version {
                    return Some(t.clone());
                }
                found = Some(t.clone());
            }
        }
        found
    }

    /// Remove a committed object: new resourceVersion, DELETED event.
    fn remove_object(&mut self, key: &TypeKey, ns: &str, name: &str, mut obj: Value) -> Value {
        let rv = self.next_rv();
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(rv.to_string()));
        self.bucket(key)
            .objects
            .remove(&(ns.to_string(), name.to_string()));
        self.emit(key, "DELETED", &obj, None);
        self.gc_wanted = true;
        if key.0 == CRD_GROUP && key.1 == CRD_PLURAL {
            self.remove_crd_contents(&obj);
        }
        obj
    }

    fn remove_crd_contents(&mut self, crd: &Value) {
        let group = crd["spec"]["group"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let plural = crd["spec"]["names"]["plural"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let key = (group.clone(), plural.clone());
        let objs: Vec<(ObjKey, Value)> = self
            .buckets
            .get(&key)
            .map(|b| {
                b.objects
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for ((ns, name), o) in objs {
            self.remove_object(&key, &ns, &name, o);
        }
        self.types
            .retain(|t| !(t.group == group && t.plural == plural));
    }

    /// Apply an internal metadata change (GC, finalizer removal) outside admission.
    fn internal_update(&mut self, key: &TypeKey, ns: &str, name: &str, f: impl FnOnce(&mut Value)) {
        let Some(old) = self.obj(key, ns, name).cloned() else {
            return;
        };
        let mut obj = old.clone();
        f(&mut obj);
        if obj == old {
            return;
        }
        if deleting(&obj) && finalizers(&obj).is_empty() {
            self.remove_object(key, ns, name, obj);
            return;
        }
        let rv = self.next_rv();
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(rv.to_string()));
        self.bucket(key)
            .objects
            .insert((ns.to_string(), name.to_string()), obj.clone());
        self.emit(key, "MODIFIED", &obj, Some(old));
    }

    fn register(&mut self, new_types: Vec<ResourceType>) {
        if let Some(t) = new_types.first() {
            let (g, p) = (t.group.clone(), t.plural.clone());
            self.types.retain(|x| !(x.group == g && x.plural == p));
            // A new kind's watch history starts now, as the apiserver's watch cache for it
            // does: a watch from an older resourceVersion gets 410 Gone.
            let rv = self.rv;
            self.buckets.entry((g, p)).or_insert_with(|| Bucket {
                evicted_upto: rv,
                ..Bucket::default()
            });
        }
        self.types.extend(new_types);
    }

    fn check_namespace(&self, rt: &ResourceType, ns: &str, name: &str) -> ApiResult<()> {
        if !rt.namespaced {
            return Ok(());
        }
        match self.obj(&("".into(), "namespaces".into()), "", ns) {
            None => Err(ApiError::not_found("", "namespaces", ns)),
            Some(n) if deleting(n) => Err(ApiError::forbidden(format!(
                "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                qualified(&rt.group, &rt.plural)
            ))),
            Some(_) => Ok(()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        old: Option<&Value>,
        mut obj: Value,
        sub: Sub,
        manager: &str,
        managed: Option<Vec<ssa::Entry>>,
        dry_run: bool,
    ) -> ApiResult<(Value, bool)> {
        let now = now();
        let key = rt.key();
        let storage_api_version = if rt.group.is_empty() {
            rt.storage_version.clone()
        } else {
            format!("{}/{}", rt.group, rt.storage_version)
        };
        let body_managed = obj["metadata"].get("managedFields").cloned();
        match old {
            None => {
                let m = meta_mut(&mut obj);
                for k in [
                    "uid",
                    "resourceVersion",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                    "selfLink",
                    "managedFields",
                ] {
                    m.remove(k);
                }
                m.insert("name".into(), json!(name));
                if rt.namespaced {
                    m.insert("namespace".into(), json!(ns));
                } else {
                    m.remove("namespace");
                }
                if rt.status_subresource
                    && let Some(o) = obj.as_object_mut()
                {
                    o.remove("status");
                }
            }
            Some(old) => {
                let om = &old["metadata"];
                let m = meta_mut(&mut obj);
                for k in [
                    "name",
                    "namespace",
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                ] {
                    match om.get(k) {
                        Some(v) => m.insert(k.into(), v.clone()),
                        None => m.remove(k),
                    };
                }
                m.remove("managedFields");
                m.remove("resourceVersion");
                m.remove("selfLink");
                match sub {
                    Sub::Main | Sub::Scale => {
                        if rt.status_subresource {
                            match old.get("status") {
                                Some(s) => obj["status"] = s.clone(),
                                None => {
                                    if let Some(o) = obj.as_object_mut() {
                                        o.remove("status");
                                    }
                                }
                            }
                        }
                    }
                    Sub::Status => {
                        let status = obj.get("status").cloned();
                        let mut o = strip_volatile(old);
                        if let Some(m) = o.as_object_mut() {
                            match status {
                                Some(s) => m.insert("status".into(), s),
                                None => m.remove("status"),
                            };
                        }
                        obj = o;
                    }
                }
                if deleting(old) {
                    let before: BTreeSet<String> = finalizers(old).into_iter().collect();
                    let added: BTreeSet<String> = finalizers(&obj)
                        .into_iter()
                        .filter(|f| !before.contains(f))
                        .collect();
                    if !added.is_empty() {
                        let list: Vec<String> = added.iter().map(|f| format!("{f:?}")).collect();
                        let cause = (
                            "metadata.finalizers".to_string(),
                            format!(
                                "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                                list.join(", ")
                            ),
                        );
                        // The apiserver validates object metadata twice on update (the
                        // strategy and the generic store), so the cause is listed twice.
                        return Err(ApiError::invalid(
                            &rt.group,
                            &rt.kind,
                            name,
                            &[cause.clone(), cause],
                        ));
                    }
                }
            }
        }
        obj["apiVersion"] = json!(rt.api_version());
        obj["kind"] = json!(rt.kind);
        let is_namespace = rt.group.is_empty() && rt.kind == "Namespace";
        if is_namespace {
            // The namespace strategy keeps this label equal to the name (recorded as set by
            // the writer); spec.finalizers and status are the server's (see below).
            let m = meta_mut(&mut obj);
            if !m.get("labels").is_some_and(Value::is_object) {
                m.insert("labels".into(), json!({}));
            }
            m["labels"]["kubernetes.io/metadata.name"] = json!(name);
            match old {
                Some(o) => match o.get("spec") {
                    Some(spec) => obj["spec"] = spec.clone(),
                    None => {
                        if let Some(m) = obj.as_object_mut() {
                            m.remove("spec");
                        }
                    }
                },
                None => {
                    if let Some(m) = obj.as_object_mut() {
                        m.remove("spec");
                    }
                }
            }
        }
        normalize(rt, &mut obj)?;
        if let Some(o) = old {
            builtin_update_rules(rt, o, &obj, name)?;
        }
        if let Some(schema) = &rt.schema {
            let old_here = old.map(|o| present(rt, o));
            schema.admit(&mut obj, old_here.as_ref(), &rt.group, &rt.kind, name)?;
        }
        obj["apiVersion"] = json!(storage_api_version);
        let is_crd = key.0 == CRD_GROUP && key.1 == CRD_PLURAL;
        let crd_status = if is_crd {
            crd_defaults(&mut obj);
            Some(crd_status(old, &obj, &now))
        } else {
            None
        };
        let crd_types = if is_crd {
            let ts = types::from_crd(&obj)?;
            if let Some(o) = old
                && (o["spec"]["group"] != obj["spec"]["group"]
                    || o["spec"]["names"]["plural"] != obj["spec"]["names"]["plural"])
            {
                return Err(ApiError::invalid(
                    CRD_GROUP,
                    "CustomResourceDefinition",
                    name,
                    &[(
                        "spec".into(),
                        "Invalid value: group and plural are immutable".into(),
                    )],
                ));
            }
            Some(ts)
        } else {
            None
        };
        if rt.generation {
            let generation = match old {
                None => 1,
                Some(o) => {
                    let g = o["metadata"]["generation"].as_i64().unwrap_or(1);
                    if spec_differs(o, &obj, rt.status_subresource) {
                        g + 1
                    } else {
                        g
                    }
                }
            };
            meta_mut(&mut obj).insert("generation".into(), json!(generation));
        }
        let old_entries = old.map(ssa::entries_of).unwrap_or_default();
        let mut entries = match managed {
            Some(e) => e,
            None => {
                let base = match &body_managed {
                    Some(v) if sub == Sub::Main && v.is_array() => {
                        ssa::entries_of(&json!({ "metadata": { "managedFields": v } }))
                    }
                    _ => old_entries.clone(),
                };
                let keys = |p: &[ssa::Seg]| list_keys(rt, p);
                // Writes through /scale are recorded without a time, as the apiserver does.
                let args = ssa::UpdateArgs {
                    manager,
                    api_version: &rt.api_version(),
                    subresource: sub.name(),
                    now: if sub == Sub::Scale { "" } else { &now },
                    keys: &keys,
                };
                // A CRD's status is the server's: not the writer's fields. Fields the Go
                // types always carry exist before any write (a new object starts from them).
                let tracked = |v: &Value| {
                    let mut v = strip_volatile(v);
                    if is_crd && let Some(m) = v.as_object_mut() {
                        m.remove("status");
                    }
                    go_zero_fields(&key, &mut v);
                    struct_nodes(&key, &mut v);
                    v
                };
                let old_tracked = match old {
                    Some(o) => Some(tracked(o)),
                    None => Some(tracked(&json!({}))).filter(|z| z != &json!({})),
                };
                ssa::track_update(base, old_tracked.as_ref(), &tracked(&obj), &args)
            }
        };
        if let Some(status) = crd_status {
            obj["status"] = status;
            crd_status_entry(&mut entries, &obj, &now);
        }
        if is_namespace && old.is_none() {
            obj["spec"] = json!({ "finalizers": ["kubernetes"] });
            obj["status"] = json!({ "phase": "Active" });
        }
        if let Some(o) = old
            && strip_volatile(o) == strip_volatile(&obj)
            && ownership(&entries) == ownership(&old_entries)
        {
            return Ok((present(rt, o), false));
        }
        let m = meta_mut(&mut obj);
        if entries.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), ssa::entries_to_value(&entries));
        }
        if old.is_none() {
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), json!(now));
        }
        if dry_run {
            if let Some(rv) = old.and_then(rv_of) {
                meta_mut(&mut obj).insert("resourceVersion".into(), json!(rv));
            }
            return Ok((present(rt, &obj), old.is_none()));
        }
        if let Some(ts) = crd_types {
            self.register(ts);
        }
        if old.is_some() && deleting(&obj) && finalizers(&obj).is_empty() {
            let gone = self.remove_object(&key, ns, name, obj);
            return Ok((present(rt, &gone), false));
        }
        let rv = self.next_rv();
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(rv.to_string()));
        self.bucket(&key)
            .objects
            .insert((ns.to_string(), name.to_string()), obj.clone());
        let etype = if old.is_some() { "MODIFIED" } else { "ADDED" };
        self.emit(&key, etype, &obj, old.cloned());
        if deleting(&obj) {
            self.gc_wanted = true;
        }
        Ok((present(rt, &obj), old.is_none()))
    }

    fn delete(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        o: &DeleteOpts,
    ) -> ApiResult<Value> {
        let key = rt.key();
        let old = self
            .obj(&key, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        // Checked as the apiserver's BeforeDelete does: the conflict names the kind.
        if let Some(uid) = &o.uid
            && uid != uid_of(&old)
        {
            return Err(ApiError::conflict_msg(
                &rt.group,
                &rt.kind,
                name,
                &format!(
                    "the UID in the precondition ({uid}) does not match the UID in record ({}). The object might have been deleted and then recreated",
                    uid_of(&old)
                ),
            ));
        }
        if let Some(rv) = &o.rv
            && Some(rv.as_str()) != rv_of(&old)
        {
            return Err(ApiError::conflict_msg(
                &rt.group,
                &rt.kind,
                name,
                &format!(
                    "the ResourceVersion in the precondition ({rv}) does not match the ResourceVersion in record ({}). The object might have been modified",
                    rv_of(&old).unwrap_or_default()
                ),
            ));
        }
        let mut fins = finalizers(&old);
        match o.propagation.as_deref() {
            None | Some("Background") => {}
            Some("Orphan") => {
                if !fins.iter().any(|f| f == "orphan") {
                    fins.push("orphan".into());
                }
            }
            Some("Foreground") => {
                if !fins.iter().any(|f| f == "foregroundDeletion") {
                    fins.push("foregroundDeletion".into());
                }
            }
            Some(other) => {
                return Err(ApiError::invalid(
                    "",
                    "DeleteOptions",
                    "",
                    &[(
                        "propagationPolicy".into(),
                        format!(
                            "Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
                        ),
                    )],
                ));
            }
        }
        let is_namespace = rt.group.is_empty() && rt.kind == "Namespace";
        if is_namespace && ["default", "kube-system", "kube-public"].contains(&name) {
            return Err(ApiError::forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
        if fins.is_empty() && !is_namespace {
            if o.dry_run {
                return Ok(present(rt, &old));
            }
            let gone = self.remove_object(&key, ns, name, old);
            return Ok(present(rt, &gone));
        }
        if deleting(&old) && fins == finalizers(&old) {
            return Ok(present(rt, &old));
        }
        let mut obj = old.clone();
        let first = !deleting(&old);
        let m = meta_mut(&mut obj);
        if !fins.is_empty() {
            m.insert("finalizers".into(), json!(fins));
        }
        if first {
            m.insert("deletionTimestamp".into(), json!(now()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            if rt.generation
                && let Some(g) = m.get("generation").and_then(Value::as_i64)
            {
                m.insert("generation".into(), json!(g + 1));
            }
        }
        if is_namespace {
            obj["status"]["phase"] = json!("Terminating");
        }
        if o.dry_run {
            return Ok(present(rt, &obj));
        }
        let rv = self.next_rv();
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(rv.to_string()));
        self.bucket(&key)
            .objects
            .insert((ns.to_string(), name.to_string()), obj.clone());
        self.emit(&key, "MODIFIED", &obj, Some(old));
        self.gc_wanted = true;
        Ok(present(rt, &obj))
    }

    /// One pass of the garbage collector and namespace controller; true if it changed anything.
    fn gc_pass(&mut self) -> bool {
        struct Owner {
            key: TypeKey,
            ns: String,
            name: String,
            deleting: bool,
            finalizers: Vec<String>,
        }
        let mut owners: HashMap<String, Owner> = HashMap::new();
        for (key, b) in &self.buckets {
            for ((ns, name), o) in &b.objects {
                owners.insert(
                    uid_of(o).to_string(),
                    Owner {
                        key: key.clone(),
                        ns: ns.clone(),
                        name: name.clone(),
                        deleting: deleting(o),
                        finalizers: finalizers(o),
                    },
                );
            }
        }
        let mut to_delete: Vec<(TypeKey, String, String)> = Vec::new();
        let mut to_strip: Vec<(TypeKey, String, String, Vec<Value>)> = Vec::new();
        let mut referenced: BTreeSet<String> = BTreeSet::new();
        let mut ns_content: HashMap<String, usize> = HashMap::new();
        let terminating: Vec<String> = self
            .buckets
            .get(&("".to_string(), "namespaces".to_string()))
            .map(|b| {
                b.objects
                    .values()
                    .filter(|o| deleting(o))
                    .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        for (key, b) in &self.buckets {
            for ((ns, name), o) in &b.objects {
                if !ns.is_empty() && terminating.contains(ns) {
                    *ns_content.entry(ns.clone()).or_default() += 1;
                    if !deleting(o) {
                        to_delete.push((key.clone(), ns.clone(), name.clone()));
                        continue;
                    }
                }
                let Some(refs) = o["metadata"]["ownerReferences"].as_array() else {
                    continue;
                };
                if refs.is_empty() {
                    continue;
                }
                let (mut solid, mut waiting, mut dangling, mut orphaning) = (vec![], vec![], 0, 0);
                for r in refs {
                    let uid = r["uid"].as_str().unwrap_or_default();
                    referenced.insert(uid.to_string());
                    match owners.get(uid) {
                        None => dangling += 1,
                        Some(ow) if ow.deleting && ow.finalizers.iter().any(|f| f == "orphan") => {
                            orphaning += 1
                        }
                        Some(ow)
                            if ow.deleting
                                && ow.finalizers.iter().any(|f| f == "foregroundDeletion") =>
                        {
                            waiting.push(r.clone())
                        }
                        Some(_) => solid.push(r.clone()),
                    }
                }
                if solid.is_empty() && (!waiting.is_empty() || dangling > 0) && orphaning == 0 {
                    if !deleting(o) {
                        to_delete.push((key.clone(), ns.clone(), name.clone()));
                    }
                } else if dangling > 0 || orphaning > 0 {
                    solid.extend(waiting);
                    to_strip.push((key.clone(), ns.clone(), name.clone(), solid));
                }
            }
        }
        let mut unfinalize: Vec<(TypeKey, String, String, &'static str)> = Vec::new();
        for (uid, ow) in &owners {
            if !ow.deleting || referenced.contains(uid) {
                continue;
            }
            for f in ["foregroundDeletion", "orphan"] {
                if ow.finalizers.iter().any(|x| x == f) {
                    unfinalize.push((ow.key.clone(), ow.ns.clone(), ow.name.clone(), f));
                }
            }
        }
        let ns_key: TypeKey = ("".into(), "namespaces".into());
        let mut finished_ns = Vec::new();
        for ns in &terminating {
            if ns_content.get(ns).copied().unwrap_or(0) == 0
                && let Some(o) = self.obj(&ns_key, "", ns)
                && finalizers(o).is_empty()
            {
                finished_ns.push((ns.clone(), o.clone()));
            }
        }
        let changed = !(to_delete.is_empty()
            && to_strip.is_empty()
            && unfinalize.is_empty()
            && finished_ns.is_empty());
        for (key, ns, name) in to_delete {
            if let Some(rt) = self.type_for_key(&key) {
                let _ = self.delete(&rt, &ns, &name, &DeleteOpts::default());
            }
        }
        for (key, ns, name, refs) in to_strip {
            self.internal_update(&key, &ns, &name, |o| {
                let m = meta_mut(o);
                if refs.is_empty() {
                    m.remove("ownerReferences");
                } else {
                    m.insert("ownerReferences".into(), Value::Array(refs));
                }
            });
        }
        for (key, ns, name, f) in unfinalize {
            self.internal_update(&key, &ns, &name, |o| {
                let fins: Vec<String> = finalizers(o).into_iter().filter(|x| x != f).collect();
                let m = meta_mut(o);
                if fins.is_empty() {
                    m.remove("finalizers");
                } else {
                    m.insert("finalizers".into(), json!(fins));
                }
            });
        }
        for (name, o) in finished_ns {
            self.remove_object(&ns_key, "", &name, o);
        }
        changed
    }
}

/// The store shared by the HTTP server, the GC task and the Rust API.
pub struct Store {
    inner: Mutex<Inner>,
    /// Wakes the garbage collector.
    pub gc: Notify,
}

impl Store {
    /// A new store with the built-in kinds and the initial namespaces.
    pub fn new(history_limit: usize) -> Self {
        let (tx, _) = broadcast::channel(16384);
        let store = Store {
            inner: Mutex::new(Inner {
                rv: 0,
                types: types::builtins(),
                buckets: HashMap::new(),
                history_limit,
                tx,
                gc_wanted: false,
            }),
            gc: Notify::new(),
        };
        let ns_type = store.find_type("", "v1", "namespaces");
        if let Some(rt) = ns_type {
            for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                let _ = store.create(
                    &rt,
                    None,
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                    &WriteOpts {
                        manager: "kube-apiserver".into(),
                        dry_run: false,
                        strict: false,
                    },
                );
            }
        }
        store
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn finish(&self, inner: &mut Inner) {
        if std::mem::take(&mut inner.gc_wanted) {
            self.gc.notify_one();
        }
    }

    /// The latest resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// All served kinds.
    pub fn types(&self) -> Vec<ResourceType> {
        self.lock().types.clone()
    }

    /// The served kind for `group/version` and `plural`.
    pub fn find_type(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.lock()
            .types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    /// GET one object.
    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> ApiResult<Value> {
        let inner = self.lock();
        inner
            .obj(&rt.key(), ns, name)
            .map(|o| present(rt, o))
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))
    }

    /// LIST a kind, in one namespace or all.
    pub fn list(&self, rt: &ResourceType, ns: Option<&str>, o: &ListOpts) -> ApiResult<Value> {
        let inner = self.lock();
        let key = rt.key();
        let evicted = inner.buckets.get(&key).map_or(0, |b| b.evicted_upto);
        if o.rv_match.as_deref() == Some("Exact")
            && let Some(rv) = &o.rv
            && rv.parse::<u64>().ok() != Some(inner.rv)
        {
            return Err(ApiError::expired(format!(
                "too old resource version: {rv} ({})",
                inner.rv
            )));
        }
        let (list_rv, after) = match o.continue_token.as_deref().filter(|s| !s.is_empty()) {
            Some(tok) => {
                let (rv, k) = decode_continue(tok)?;
                if rv < evicted {
                    return Err(ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list result. \
                         You can start a new list without the continue parameter.",
                    ));
                }
                (rv, Some(k))
            }
            None => (inner.rv, None),
        };
        let mut items = Vec::new();
        let mut last: Option<ObjKey> = None;
        let mut remaining = 0usize;
        if let Some(b) = inner.buckets.get(&key) {
            for (k, obj) in &b.objects {
                if let Some(a) = &after
                    && k <= a
                {
                    continue;
                }
                if let Some(ns) = ns
                    && k.0 != ns
                {
                    continue;
                }
                if !o.label.matches(obj) || !o.field.matches(obj) {
                    continue;
                }
                if o.limit > 0 && items.len() >= o.limit {
                    remaining += 1;
                    continue;
                }
                items.push(present(rt, obj));
                last = Some(k.clone());
            }
        }
        let mut meta = json!({ "resourceVersion": list_rv.to_string() });
        if rt.custom {
            // Lists of custom resources always carry `continue` (empty on the last page).
            meta["continue"] = json!("");
        }
        if remaining > 0
            && let Some(l) = &last
        {
            meta["continue"] = json!(encode_continue(list_rv, l));
            // The count is only known, and only sent, when no selector filters the list.
            if o.label.is_empty() && o.field.is_empty() {
                meta["remainingItemCount"] = json!(remaining);
            }
        }
        Ok(json!({
            "kind": format!("{}List", rt.kind),
            "apiVersion": rt.api_version(),
            "metadata": meta,
            "items": items,
        }))
    }

    /// POST: create an object.
    pub fn create(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        body: Value,
        o: &WriteOpts,
    ) -> ApiResult<Value> {
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        check_type_meta(rt, &body)?;
        if o.strict {
            let unknown = unknown_fields(rt, &body);
            if !unknown.is_empty() {
                return Err(strict_decoding_error(rt, &unknown));
            }
        }
        let ns = ns.unwrap_or_default();
        if rt.namespaced
            && let Some(bns) = body["metadata"]["namespace"].as_str()
            && !bns.is_empty()
            && bns != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let mut inner = self.lock();
        let key = rt.key();
        let name = match body["metadata"]["name"].as_str().filter(|s| !s.is_empty()) {
            Some(n) => n.to_string(),
            None => match body["metadata"]["generateName"].as_str() {
                Some(prefix) if !prefix.is_empty() => {
                    let mut n = format!("{prefix}{}", random_suffix());
                    while inner.obj(&key, ns, &n).is_some() {
                        n = format!("{prefix}{}", random_suffix());
                    }
                    n
                }
                _ => {
                    let mut causes = vec![(
                        "metadata.name".to_string(),
                        "Required value: name or generateName is required".to_string(),
                    )];
                    // A missing value blocks a CRD's CEL rules, which the apiserver notes.
                    if rt.schema.as_ref().is_some_and(|s| s.has_rules()) {
                        causes.push((
                            "<nil>".to_string(),
                            "Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation".to_string(),
                        ));
                    }
                    return Err(ApiError::invalid(&rt.group, &rt.kind, "", &causes));
                }
            },
        };
        let is_ns = rt.group.is_empty() && rt.kind == "Namespace";
        let errs = name_errors(&name, is_ns);
        if !errs.is_empty() {
            let causes: Vec<(String, String)> = errs
                .iter()
                .map(|e| {
                    (
                        "metadata.name".to_string(),
                        format!("Invalid value: \"{name}\": {e}"),
                    )
                })
                .collect();
            return Err(ApiError::invalid(&rt.group, &rt.kind, &name, &causes));
        }
        inner.check_namespace(rt, ns, &name)?;
        if inner.obj(&key, ns, &name).is_some() {
            return Err(ApiError::already_exists(&rt.group, &rt.plural, &name));
        }
        let res = inner.write(
            rt,
            ns,
            &name,
            None,
            body,
            Sub::Main,
            &o.manager,
            None,
            o.dry_run,
        );
        self.finish(&mut inner);
        res.map(|(v, _)| v)
    }

    /// PUT: replace an object or its status.
    pub fn update(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        body: Value,
        sub: Sub,
        o: &WriteOpts,
    ) -> ApiResult<Value> {
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        check_type_meta(rt, &body)?;
        if o.strict {
            let unknown = unknown_fields(rt, &body);
            if !unknown.is_empty() {
                return Err(strict_decoding_error(rt, &unknown));
            }
        }
        if let Some(bn) = body["metadata"]["name"].as_str()
            && bn != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({bn}) does not match the name on the URL ({name})"
            )));
        }
        let mut inner = self.lock();
        let old = inner
            .obj(&rt.key(), ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        // Custom resources and CRDs allow no unconditional update: a PUT must carry the
        // resourceVersion it read.
        let unconditional_forbidden =
            rt.custom || (rt.group == CRD_GROUP && rt.plural == CRD_PLURAL);
        if unconditional_forbidden && rv_of(&body).is_none() {
            return Err(ApiError::invalid(
                &rt.group,
                &rt.plural,
                name,
                &[(
                    "metadata.resourceVersion".into(),
                    "Invalid value: 0: must be specified for an update".into(),
                )],
            ));
        }
        if let Some(rv) = rv_of(&body)
            && Some(rv) != rv_of(&old)
        {
            return Err(ApiError::conflict(&rt.group, &rt.plural, name));
        }
        if let Some(uid) = body["metadata"]["uid"].as_str().filter(|u| !u.is_empty())
            && uid != uid_of(&old)
        {
            return Err(ApiError::conflict_msg(
                &rt.group,
                &rt.plural,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    uid_of(&old)
                ),
            ));
        }
        let res = inner.write(
            rt,
            ns,
            name,
            Some(&old),
            body,
            sub,
            &o.manager,
            None,
            o.dry_run,
        );
        self.finish(&mut inner);
        res.map(|(v, _)| v)
    }

    /// PATCH: returns the object and whether it was created (apply only).
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        kind: PatchKind,
        body: &[u8],
        sub: Sub,
        o: &WriteOpts,
    ) -> ApiResult<(Value, bool)> {
        let mut inner = self.lock();
        let old = inner.obj(&rt.key(), ns, name).cloned();
        let res = match kind {
            PatchKind::Apply { force } => {
                let config: Value = serde_yaml::from_slice(body)
                    .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
                if !config.is_object() {
                    return Err(ApiError::bad_request(
                        "apply configuration must be an object",
                    ));
                }
                if config["apiVersion"].as_str().is_none_or(str::is_empty)
                    || config["kind"].as_str().is_none_or(str::is_empty)
                {
                    return Err(ApiError::bad_request(
                        "invalid object type: apiVersion and kind must be set",
                    ));
                }
                check_type_meta(rt, &config)?;
                // Decoding an apply configuration into the kind's type fails on any
                // field the type does not declare, whatever `fieldValidation` says.
                let unknown = unknown_fields(rt, &config);
                if !unknown.is_empty() {
                    return Err(typed_patch_error(rt, &config, name, &unknown));
                }
                if let Some(bn) = config["metadata"]["name"].as_str()
                    && bn != name
                {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({bn}) does not match the name on the URL ({name})"
                    )));
                }
                if o.manager.is_empty() {
                    return Err(ApiError::invalid(
                        "meta.k8s.io",
                        "PatchOptions",
                        "",
                        &[(
                            "fieldManager".into(),
                            "Required value: is required for apply patch".into(),
                        )],
                    ));
                }
                if old.is_none() {
                    if sub == Sub::Status {
                        return Err(ApiError::not_found(&rt.group, &rt.plural, name));
                    }
                    inner.check_namespace(rt, ns, name)?;
                }
                if let (Some(rv), Some(old)) = (rv_of(&config), &old)
                    && Some(rv) != rv_of(old)
                {
                    return Err(ApiError::conflict(&rt.group, &rt.plural, name));
                }
                let live = old.clone().unwrap_or_else(|| {
                    let mut m = json!({ "name": name });
                    if rt.namespaced {
                        m["namespace"] = json!(ns);
                    }
                    json!({ "apiVersion": rt.api_version(), "kind": rt.kind, "metadata": m })
                });
                let scope = match sub {
                    Sub::Status => Scope::StatusOnly,
                    Sub::Main | Sub::Scale if rt.status_subresource => Scope::NoStatus,
                    Sub::Main | Sub::Scale => Scope::All,
                };
                let now = now();
                let keys = |p: &[ssa::Seg]| list_keys(rt, p);
                let args = ssa::ApplyArgs {
                    keys: &keys,
                    manager: &o.manager,
                    force,
                    scope,
                    subresource: sub.name(),
                    api_version: &rt.api_version(),
                    now: &now,
                };
                let applied =
                    ssa::apply(&live, &config, &args).map_err(|c| ssa::conflict_status(&c))?;
                let mut merged = applied.object;
                if let Some(m) = merged.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("managedFields");
                }
                inner.write(
                    rt,
                    ns,
                    name,
                    old.as_ref(),
                    merged,
                    sub,
                    &o.manager,
                    Some(applied.entries),
                    o.dry_run,
                )
            }
            other => {
                let old = old.ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
                let patched = patch_value(rt, &present(rt, &old), other, body)?;
                if let Some(rv) = rv_of(&patched)
                    && Some(rv) != rv_of(&old)
                {
                    return Err(ApiError::conflict(&rt.group, &rt.plural, name));
                }
                check_type_meta(rt, &patched)?;
                if o.strict {
                    let unknown = unknown_fields(rt, &patched);
                    if !unknown.is_empty() {
                        return Err(strict_patch_error(&patched, &unknown));
                    }
                }
                if patched["metadata"]["name"].as_str() != Some(name) {
                    return Err(ApiError::bad_request(
                        "metadata.name cannot be changed by a patch",
                    ));
                }
                inner.write(
                    rt,
                    ns,
                    name,
                    Some(&old),
                    patched,
                    sub,
                    &o.manager,
                    None,
                    o.dry_run,
                )
            }
        };
        self.finish(&mut inner);
        res
    }

    /// DELETE one object.
    pub fn delete(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        o: &DeleteOpts,
    ) -> ApiResult<Value> {
        let mut inner = self.lock();
        let res = inner.delete(rt, ns, name, o);
        self.finish(&mut inner);
        res
    }

    /// DELETE a collection: deletes every matching object; returns the list of what was deleted.
    pub fn delete_collection(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        lo: &ListOpts,
        o: &DeleteOpts,
    ) -> ApiResult<Value> {
        let list = self.list(
            rt,
            ns,
            &ListOpts {
                limit: 0,
                continue_token: None,
                ..lo.clone()
            },
        )?;
        let mut inner = self.lock();
        let mut items = Vec::new();
        for it in list["items"].as_array().into_iter().flatten() {
            let ins = it["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = it["metadata"]["name"].as_str().unwrap_or_default();
            if let Ok(v) = inner.delete(rt, ins, name, o) {
                items.push(v);
            }
        }
        let rv = inner.rv;
        self.finish(&mut inner);
        Ok(json!({
            "kind": format!("{}List", rt.kind),
            "apiVersion": rt.api_version(),
            "metadata": { "resourceVersion": rv.to_string() },
            "items": items,
        }))
    }

    /// GET the autoscaling/v1 Scale of an object.
    pub fn get_scale(&self, rt: &ResourceType, ns: &str, name: &str) -> ApiResult<Value> {
        let obj = self.get(rt, ns, name)?;
        scale_of(rt, &obj)
    }

    /// PUT the Scale of an object.
    pub fn update_scale(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        scale: &Value,
        o: &WriteOpts,
    ) -> ApiResult<Value> {
        let Some(spec) = &rt.scale else {
            return Err(ApiError::path_not_found());
        };
        let replicas = scale["spec"]["replicas"].as_i64().unwrap_or(0);
        if replicas < 0 {
            return Err(ApiError::invalid(
                "autoscaling",
                "Scale",
                name,
                &[(
                    "spec.replicas".into(),
                    format!("Invalid value: {replicas}: must be greater than or equal to 0"),
                )],
            ));
        }
        let mut inner = self.lock();
        let old = inner
            .obj(&rt.key(), ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        if let Some(rv) = rv_of(scale)
            && Some(rv) != rv_of(&old)
        {
            return Err(ApiError::conflict(&rt.group, &rt.plural, name));
        }
        let mut obj = strip_volatile(&old);
        set_path(&mut obj, &spec.spec_replicas_path, json!(replicas));
        let res = inner.write(
            rt,
            ns,
            name,
            Some(&old),
            obj,
            Sub::Scale,
            &o.manager,
            None,
            o.dry_run,
        );
        self.finish(&mut inner);
        let (v, _) = res?;
        scale_of(rt, &v)
    }

    /// PATCH the Scale of an object.
    #[allow(clippy::too_many_arguments)]
    pub fn patch_scale(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        kind: PatchKind,
        body: &[u8],
        o: &WriteOpts,
    ) -> ApiResult<Value> {
        let current = self.get_scale(rt, ns, name)?;
        let patched = match kind {
            PatchKind::Apply { .. } => {
                let cfg: Value = serde_yaml::from_slice(body)
                    .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
                let mut s = current.clone();
                json_patch::merge(&mut s, &cfg);
                s
            }
            k => patch_value(rt, &current, k, body)?,
        };
        self.update_scale(rt, ns, name, &patched, o)
    }

    /// Start a watch: snapshot the initial events and subscribe, atomically.
    pub fn watch_start(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        o: &WatchOpts,
    ) -> ApiResult<WatchStart> {
        if o.send_initial_events && o.rv_match.as_deref() != Some("NotOlderThan") {
            return Err(ApiError::invalid(
                "meta.k8s.io",
                "ListOptions",
                "",
                &[(
                    "resourceVersionMatch".into(),
                    "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan".into(),
                )],
            ));
        }
        if !o.send_initial_events && o.rv_match.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid(
                "meta.k8s.io",
                "ListOptions",
                "",
                &[(
                    "resourceVersionMatch".into(),
                    "Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided".into(),
                )],
            ));
        }
        let inner = self.lock();
        let rx = inner.tx.subscribe();
        let key = rt.key();
        let mut filter = WatchFilter {
            key: key.clone(),
            ns: ns.map(str::to_string),
            label: o.label.clone(),
            field: o.field.clone(),
            min_rv: inner.rv,
            api_version: rt.api_version(),
        };
        let empty = Bucket::default();
        let b = inner.buckets.get(&key).unwrap_or(&empty);
        let mut initial = Vec::new();
        let mut end_bookmark = None;
        let mut gone = None;
        let rv_param = o.rv.as_deref().filter(|s| !s.is_empty());
        if o.send_initial_events || rv_param.is_none() || rv_param == Some("0") {
            for obj in b.objects.values() {
                if filter.matches(obj) {
                    initial.push(filter.event("ADDED", obj));
                }
            }
            if o.send_initial_events {
                end_bookmark = Some(inner.rv);
            }
        } else {
            let n: u64 = rv_param
                .unwrap_or_default()
                .parse()
                .map_err(|_| ApiError::bad_request("invalid resource version"))?;
            if n < b.evicted_upto {
                gone = Some(ApiError::expired(format!(
                    "too old resource version: {n} ({})",
                    b.evicted_upto + 1
                )));
            } else {
                filter.min_rv = n;
                for ch in &b.history {
                    if let Some(ev) = filter.translate(ch) {
                        initial.push(ev);
                    }
                }
                filter.min_rv = n.max(inner.rv);
            }
        }
        Ok(WatchStart {
            initial,
            end_bookmark,
            rx,
            filter,
            gone,
        })
    }

    /// Forget all watch history: every watch resuming from an older resourceVersion gets 410 Gone.
    pub fn compact(&self) {
        let mut inner = self.lock();
        let rv = inner.rv;
        for b in inner.buckets.values_mut() {
            b.history.clear();
            b.evicted_upto = rv;
        }
    }

    /// Run the garbage collector until it settles.
    pub fn gc(&self) {
        let mut inner = self.lock();
        for _ in 0..100 {
            if !inner.gc_pass() {
                break;
            }
        }
        inner.gc_wanted = false;
    }
}

fn check_type_meta(rt: &ResourceType, body: &Value) -> ApiResult<()> {
    if let Some(k) = body["kind"].as_str()
        && !k.is_empty()
        && k != rt.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({k}) does not match the expected kind ({})",
            rt.kind
        )));
    }
    if let Some(av) = body["apiVersion"].as_str()
        && !av.is_empty()
    {
        let group = av.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        if group != rt.group {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                rt.api_version()
            )));
        }
    }
    Ok(())
}

fn patch_value(rt: &ResourceType, doc: &Value, kind: PatchKind, body: &[u8]) -> ApiResult<Value> {
    let mut out = doc.clone();
    match kind {
        PatchKind::Merge | PatchKind::Strategic => {
            if kind == PatchKind::Strategic && rt.custom {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                ));
            }
            let p: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            json_patch::merge(&mut out, &p);
        }
        PatchKind::Json => {
            let p: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            json_patch_go(&mut out, &p).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?;
        }
        PatchKind::Apply { .. } => {
            return Err(ApiError::internal("apply is not a plain patch"));
        }
    }
    if !out.is_object() {
        return Err(ApiError::bad_request(
            "the patched object is not a JSON object",
        ));
    }
    Ok(out)
}

/// RFC 6902 as the apiserver applies it: a `test` for `null` also passes on a missing path.
fn json_patch_go(doc: &mut Value, p: &json_patch::Patch) -> Result<(), json_patch::PatchError> {
    for op in &p.0 {
        if let json_patch::PatchOperation::Test(t) = op
            && t.value.is_null()
            && doc.pointer(t.path.as_str()).is_none()
        {
            continue;
        }
        json_patch::patch(doc, std::slice::from_ref(op))?;
    }
    Ok(())
}

fn scale_of(rt: &ResourceType, obj: &Value) -> ApiResult<Value> {
    let Some(spec) = &rt.scale else {
        return Err(ApiError::path_not_found());
    };
    let m = &obj["metadata"];
    let mut meta = json!({
        "name": m["name"],
        "uid": m["uid"],
        "resourceVersion": m["resourceVersion"],
        "creationTimestamp": m["creationTimestamp"],
    });
    if let Some(ns) = m["namespace"].as_str() {
        meta["namespace"] = json!(ns);
    }
    let mut status = json!({
        "replicas": get_path(obj, &spec.status_replicas_path).and_then(Value::as_i64).unwrap_or(0),
    });
    if let Some(p) = &spec.label_selector_path
        && let Some(sel) = get_path(obj, p).and_then(Value::as_str)
    {
        status["selector"] = json!(sel);
    }
    Ok(json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": meta,
        "spec": { "replicas": get_path(obj, &spec.spec_replicas_path).and_then(Value::as_i64).unwrap_or(0) },
        "status": status,
    }))
}
