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
}

impl Sub {
    fn name(self) -> &'static str {
        match self {
            Sub::Main => "",
            Sub::Status => "status",
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
                (true, false) => Some(self.event("DELETED", &ch.object)),
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
    o
}

fn dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn dns_label(s: &str) -> bool {
    dns_subdomain(s) && s.len() <= 63 && !s.contains('.')
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

/// The key fields of the associative list at `path` (schema-declared, or ownerReferences).
fn list_keys(rt: &ResourceType, path: &[ssa::Seg]) -> Option<Vec<String>> {
    use ssa::Seg::F;
    if let [F(m), F(o)] = path
        && m == "metadata"
        && o == "ownerReferences"
    {
        return Some(vec!["uid".to_string()]);
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
        _ => Ok(()),
    }
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
            self.buckets.entry((g, p)).or_default();
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
                if rt.group.is_empty() && rt.kind == "Namespace" {
                    obj["status"] = json!({ "phase": "Active" });
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
                    Sub::Main => {
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
                    if finalizers(&obj).iter().any(|f| !before.contains(f)) {
                        return Err(ApiError::invalid(
                            &rt.group,
                            &rt.kind,
                            name,
                            &[(
                                "metadata.finalizers".into(),
                                "Forbidden: no new finalizers can be added if the object is being deleted".into(),
                            )],
                        ));
                    }
                }
            }
        }
        obj["apiVersion"] = json!(rt.api_version());
        obj["kind"] = json!(rt.kind);
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
        let crd_types = if is_crd {
            obj["status"] = json!({
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
                ],
                "acceptedNames": obj["spec"]["names"].clone(),
                "storedVersions": obj["spec"]["versions"].as_array().map(|vs| vs.iter().filter(|v| v["storage"].as_bool() == Some(true)).map(|v| v["name"].clone()).collect::<Vec<_>>()).unwrap_or_default(),
            });
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
        let entries = match managed {
            Some(e) => e,
            None => {
                let base = match &body_managed {
                    Some(v) if sub == Sub::Main && v.is_array() => {
                        ssa::entries_of(&json!({ "metadata": { "managedFields": v } }))
                    }
                    _ => old_entries.clone(),
                };
                let keys = |p: &[ssa::Seg]| list_keys(rt, p);
                let args = ssa::UpdateArgs {
                    manager,
                    api_version: &rt.api_version(),
                    subresource: sub.name(),
                    now: &now,
                    keys: &keys,
                };
                ssa::track_update(base, old.map(strip_volatile).as_ref(), &obj, &args)
            }
        };
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
        if let Some(uid) = &o.uid
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
        if let Some(rv) = &o.rv
            && Some(rv.as_str()) != rv_of(&old)
        {
            return Err(ApiError::conflict_msg(
                &rt.group,
                &rt.plural,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
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
                    &WriteOpts::default(),
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
        if remaining > 0
            && let Some(l) = &last
        {
            meta["continue"] = json!(encode_continue(list_rv, l));
            meta["remainingItemCount"] = json!(remaining);
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
                    return Err(ApiError::invalid(
                        &rt.group,
                        &rt.kind,
                        "",
                        &[(
                            "metadata.name".into(),
                            "Required value: name or generateName is required".into(),
                        )],
                    ));
                }
            },
        };
        let is_ns = rt.group.is_empty() && rt.kind == "Namespace";
        let ok = if is_ns {
            dns_label(&name)
        } else {
            dns_subdomain(&name)
        };
        if !ok {
            return Err(ApiError::invalid(
                &rt.group,
                &rt.kind,
                &name,
                &[(
                    "metadata.name".into(),
                    format!(
                        "Invalid value: \"{name}\": a lowercase RFC 1123 {} must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
                        if is_ns { "label" } else { "subdomain" }
                    ),
                )],
            ));
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
                if let Some(bn) = config["metadata"]["name"].as_str()
                    && bn != name
                {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({bn}) does not match the name on the URL ({name})"
                    )));
                }
                if o.manager.is_empty() {
                    return Err(ApiError::bad_request(
                        "PATCH, application/apply-patch+yaml requires fieldManager parameter",
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
                    Sub::Main if rt.status_subresource => Scope::NoStatus,
                    Sub::Main => Scope::All,
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
            Sub::Main,
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
                    "strategic merge patch is not supported for custom resources",
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
