//! `metadata.managedFields` bookkeeping and server-side apply.
//!
//! Field ownership is tracked per field path down through maps; lists are atomic
//! (a list is owned as a whole, as with `x-kubernetes-list-type: atomic`).

use serde_json::{Map, Value, json};
use std::collections::BTreeSet;

/// A field path: the map keys from the object's root.
pub type FieldPath = Vec<String>;

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// `manager`.
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// `apiVersion`.
    pub api_version: String,
    /// `time`.
    pub time: String,
    /// `subresource` ("" for the main resource).
    pub subresource: String,
    /// The owned leaf paths.
    pub fields: BTreeSet<FieldPath>,
}

/// Which part of the object a write may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The whole object.
    All,
    /// Everything but `.status` (main resource of a kind with a status subresource).
    NoStatus,
    /// Only `.status`.
    StatusOnly,
}

const IGNORED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "generateName",
];

fn in_scope(path: &FieldPath, scope: Scope) -> bool {
    let first = path.first().map(String::as_str).unwrap_or("");
    if first == "apiVersion" || first == "kind" {
        return false;
    }
    if first == "metadata" && path.len() >= 2 && IGNORED_META.contains(&path[1].as_str()) {
        return false;
    }
    match scope {
        Scope::All => true,
        Scope::NoStatus => first != "status",
        Scope::StatusOnly => first == "status",
    }
}

fn collect(v: &Value, prefix: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                prefix.push(k.clone());
                collect(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {
            if !prefix.is_empty() {
                out.insert(prefix.clone());
            }
        }
    }
}

/// The leaf field paths set in `v`, restricted to `scope`.
pub fn leaf_paths(v: &Value, scope: Scope) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    collect(v, &mut Vec::new(), &mut out);
    out.retain(|p| in_scope(p, scope));
    out
}

/// The value at `path`, if present.
pub fn value_at<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    for k in path {
        cur = cur.as_object()?.get(k)?;
    }
    Some(cur)
}

fn remove_at(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for k in parents {
        match cur.as_object_mut().and_then(|m| m.get_mut(k)) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
}

fn overlaps(a: &[String], b: &[String]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

/// Render a path like `.spec.replicas`.
pub fn dotted(p: &[String]) -> String {
    p.iter().map(|k| format!(".{k}")).collect()
}

/// Encode paths as `FieldsV1`.
pub fn to_fields_v1(paths: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for p in paths {
        let mut cur = &mut root;
        for k in p {
            let e = cur
                .entry(format!("f:{k}"))
                .or_insert_with(|| Value::Object(Map::new()));
            if !e.is_object() {
                *e = Value::Object(Map::new());
            }
            cur = match e.as_object_mut() {
                Some(m) => m,
                None => break,
            };
        }
    }
    Value::Object(root)
}

fn parse_v1(v: &Value, prefix: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    let Some(m) = v.as_object() else { return };
    let children: Vec<(&String, &Value)> = m.iter().filter(|(k, _)| k.as_str() != ".").collect();
    if children.is_empty() || m.contains_key(".") {
        if !prefix.is_empty() {
            out.insert(prefix.clone());
        }
    }
    for (k, child) in children {
        if let Some(name) = k.strip_prefix("f:") {
            prefix.push(name.to_string());
            parse_v1(child, prefix, out);
            prefix.pop();
        } else if !prefix.is_empty() {
            // list members (k:/v:/i:) are owned through their list, which is atomic here
            out.insert(prefix.clone());
        }
    }
}

/// Decode `FieldsV1` into leaf paths.
pub fn from_fields_v1(v: &Value) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    parse_v1(v, &mut Vec::new(), &mut out);
    out
}

/// Read the `managedFields` of an object.
pub fn entries_of(obj: &Value) -> Vec<Entry> {
    let Some(arr) = obj["metadata"]["managedFields"].as_array() else {
        return vec![];
    };
    arr.iter()
        .map(|e| Entry {
            manager: e["manager"].as_str().unwrap_or_default().into(),
            operation: e["operation"].as_str().unwrap_or("Update").into(),
            api_version: e["apiVersion"].as_str().unwrap_or_default().into(),
            time: e["time"].as_str().unwrap_or_default().into(),
            subresource: e["subresource"].as_str().unwrap_or_default().into(),
            fields: from_fields_v1(&e["fieldsV1"]),
        })
        .collect()
}

/// Render entries as a `managedFields` array.
pub fn entries_to_value(entries: &[Entry]) -> Value {
    Value::Array(
        entries
            .iter()
            .map(|e| {
                let mut v = json!({
                    "manager": e.manager,
                    "operation": e.operation,
                    "apiVersion": e.api_version,
                    "time": e.time,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": to_fields_v1(&e.fields),
                });
                if !e.subresource.is_empty() {
                    v["subresource"] = json!(e.subresource);
                }
                v
            })
            .collect(),
    )
}

/// Record a non-apply write by `manager`: it takes the fields it changed from everyone else.
pub fn track_update(
    mut entries: Vec<Entry>,
    old: Option<&Value>,
    new: &Value,
    manager: &str,
    api_version: &str,
    subresource: &str,
    now: &str,
) -> Vec<Entry> {
    let scope = Scope::All;
    let new_paths = leaf_paths(new, scope);
    let old_paths = old.map(|o| leaf_paths(o, scope)).unwrap_or_default();
    let changed: BTreeSet<FieldPath> = new_paths
        .iter()
        .filter(|p| old.and_then(|o| value_at(o, p)) != value_at(new, p))
        .cloned()
        .collect();
    let removed: Vec<&FieldPath> = old_paths.difference(&new_paths).collect();
    for e in entries.iter_mut() {
        e.fields.retain(|f| {
            !changed.iter().any(|c| overlaps(c, f)) && !removed.iter().any(|r| overlaps(r, f))
        });
    }
    if !changed.is_empty() {
        match entries.iter_mut().find(|e| {
            e.manager == manager && e.operation == "Update" && e.subresource == subresource
        }) {
            Some(e) => {
                e.fields.extend(changed);
                e.time = now.to_string();
                e.api_version = api_version.to_string();
            }
            None => entries.push(Entry {
                manager: manager.into(),
                operation: "Update".into(),
                api_version: api_version.into(),
                time: now.into(),
                subresource: subresource.into(),
                fields: changed,
            }),
        }
    }
    entries.retain(|e| !e.fields.is_empty());
    entries
}

/// A field owned by another manager that an apply would change.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    /// The other manager.
    pub manager: String,
    /// Its apiVersion.
    pub api_version: String,
    /// The contested field, e.g. `.spec.replicas`.
    pub field: String,
}

/// The result of a server-side apply: the merged object and its new managed fields.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The object after the apply.
    pub object: Value,
    /// The new managed fields.
    pub entries: Vec<Entry>,
}

/// Parameters of one apply.
pub struct ApplyArgs<'a> {
    /// The field manager.
    pub manager: &'a str,
    /// `force=true`.
    pub force: bool,
    /// Which part of the object the request addresses.
    pub scope: Scope,
    /// "" or "status".
    pub subresource: &'a str,
    /// The request's apiVersion.
    pub api_version: &'a str,
    /// The current time (RFC 3339).
    pub now: &'a str,
}

/// Server-side apply of `config` onto `live` (an empty object when creating).
pub fn apply(live: &Value, config: &Value, a: &ApplyArgs<'_>) -> Result<Applied, Vec<Conflict>> {
    let mut entries = entries_of(live);
    let applied_set = leaf_paths(config, a.scope);
    let mine = |e: &Entry| {
        e.manager == a.manager && e.operation == "Apply" && e.subresource == a.subresource
    };
    let mut conflicts = Vec::new();
    let mut stolen: Vec<(usize, FieldPath)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if mine(e) {
            continue;
        }
        for q in &e.fields {
            for p in &applied_set {
                if overlaps(p, q) && value_at(config, p) != value_at(live, p) {
                    let field = if q.len() >= p.len() { q } else { p };
                    conflicts.push(Conflict {
                        manager: e.manager.clone(),
                        api_version: e.api_version.clone(),
                        field: dotted(field),
                    });
                    stolen.push((i, q.clone()));
                    break;
                }
            }
        }
    }
    if !conflicts.is_empty() && !a.force {
        return Err(conflicts);
    }
    for (i, q) in stolen {
        entries[i].fields.remove(&q);
    }
    let previous: BTreeSet<FieldPath> = entries
        .iter()
        .find(|e| mine(e))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let mut patch = config.clone();
    if let Some(m) = patch.as_object_mut() {
        match a.scope {
            Scope::NoStatus => {
                m.remove("status");
            }
            Scope::StatusOnly => m.retain(|k, _| k == "status"),
            Scope::All => {}
        }
    }
    let mut object = live.clone();
    json_patch::merge(&mut object, &patch);
    for r in previous.difference(&applied_set) {
        let kept_by_me = applied_set.iter().any(|p| overlaps(p, r));
        let kept_by_other = entries
            .iter()
            .filter(|e| !mine(e))
            .any(|e| e.fields.iter().any(|f| overlaps(f, r)));
        if !kept_by_me && !kept_by_other {
            remove_at(&mut object, r);
        }
    }
    let pos = entries.iter().position(|e| mine(e));
    match pos {
        Some(i) => {
            if entries[i].fields != applied_set {
                entries[i].time = a.now.to_string();
            }
            entries[i].fields = applied_set;
            entries[i].api_version = a.api_version.to_string();
        }
        None => entries.push(Entry {
            manager: a.manager.into(),
            operation: "Apply".into(),
            api_version: a.api_version.into(),
            time: a.now.into(),
            subresource: a.subresource.into(),
            fields: applied_set,
        }),
    }
    entries.retain(|e| !e.fields.is_empty());
    Ok(Applied { object, entries })
}

/// The 409 `Status` for apply conflicts, in the apiserver's wording.
pub fn conflict_status(conflicts: &[Conflict]) -> crate::error::ApiError {
    let n = conflicts.len();
    let message = if n == 1 {
        let c = &conflicts[0];
        format!(
            "Apply failed with 1 conflict: conflict with \"{}\" using {}: {}",
            c.manager, c.api_version, c.field
        )
    } else {
        let lines: Vec<String> = conflicts
            .iter()
            .map(|c| {
                format!(
                    "conflict with \"{}\" using {}: {}",
                    c.manager, c.api_version, c.field
                )
            })
            .collect();
        format!("Apply failed with {n} conflicts: {}", lines.join("\n"))
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| {
            json!({
                "reason": "FieldManagerConflict",
                "message": format!("conflict with \"{}\" using {}", c.manager, c.api_version),
                "field": c.field,
            })
        })
        .collect();
    let mut e = crate::error::ApiError::new(409, "Conflict", message);
    e.details = json!({ "causes": causes });
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_v1_roundtrip() {
        let v = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"x": 1, "y": {"z": [1]}}});
        let p = leaf_paths(&v, Scope::All);
        assert_eq!(from_fields_v1(&to_fields_v1(&p)), p);
        assert_eq!(p.len(), 3);
    }

    #[test]
    fn apply_conflicts_and_removal() {
        let args = |m: &'static str, force| ApplyArgs {
            manager: m,
            force,
            scope: Scope::NoStatus,
            subresource: "",
            api_version: "v1",
            now: "t",
        };
        let base = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "n"}});
        let a1 = apply(
            &base,
            &json!({"spec": {"a": 1, "b": 2}}),
            &args("one", false),
        )
        .unwrap();
        let mut o = a1.object.clone();
        o["metadata"]["managedFields"] = entries_to_value(&a1.entries);
        let err = apply(&o, &json!({"spec": {"a": 5}}), &args("two", false)).unwrap_err();
        assert_eq!(err[0].field, ".spec.a");
        let same = apply(&o, &json!({"spec": {"a": 1}}), &args("two", false)).unwrap();
        assert_eq!(same.entries.len(), 2);
        let a2 = apply(&o, &json!({"spec": {"a": 1}}), &args("one", false)).unwrap();
        assert_eq!(a2.object["spec"], json!({"a": 1}));
    }
}
