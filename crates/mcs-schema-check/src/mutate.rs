//! Defaulting and pruning (`apiextensions-apiserver/pkg/apiserver/schema/{defaulting,pruning}`).

use serde_json::Value;

use crate::schema::{Additional, Node};

/// The fields of `ObjectMeta`; anything else under a resource's `metadata` is dropped
/// when the apiserver decodes it.
const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

fn non_nullable_null(v: &Value, s: &Node) -> bool {
    v.is_null() && !s.nullable
}

/// `structuraldefaulting.Default`.
pub(crate) fn default(x: &mut Value, s: &Node) {
    match x {
        Value::Object(map) => {
            for (k, prop) in &s.properties {
                let Some(d) = prop.default.as_ref().filter(|d| !d.is_null()) else {
                    continue;
                };
                let missing = match map.get(k) {
                    None => true,
                    Some(v) => non_nullable_null(v, prop),
                };
                if missing {
                    map.insert(k.clone(), d.clone());
                }
            }
            for (k, v) in map.iter_mut() {
                if let Some(p) = s.properties.get(k) {
                    default(v, p);
                } else if let Some(Additional::Schema(a)) = &s.additional {
                    if non_nullable_null(v, a) {
                        *v = a.default.clone().unwrap_or(Value::Null);
                    }
                    default(v, a);
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = s.items.as_deref() {
                for it in items.iter_mut() {
                    if non_nullable_null(it, is) {
                        *it = is.default.clone().unwrap_or(Value::Null);
                    }
                    default(it, is);
                }
            }
        }
        _ => {}
    }
}

fn coerce_meta(v: &mut Value) {
    if let Value::Object(m) = v {
        m.retain(|k, _| OBJECT_META_FIELDS.contains(&k.as_str()));
    }
}

fn is_meta_field(k: &str) -> bool {
    k == "apiVersion" || k == "kind" || k == "metadata"
}

/// `structuralpruning.Prune`: drops fields the schema does not declare.
pub(crate) fn prune(x: &mut Value, s: Option<&Node>, is_resource_root: bool) {
    if let Some(s) = s.filter(|s| s.preserve_unknown) {
        skip_prune(x, s);
        return;
    }
    match x {
        Value::Object(map) => {
            let Some(s) = s else {
                map.clear();
                return;
            };
            map.retain(|k, v| {
                if is_resource_root && is_meta_field(k) {
                    if k == "metadata" {
                        coerce_meta(v);
                    }
                    return true;
                }
                if let Some(p) = s.properties.get(k) {
                    prune(v, Some(p), p.embedded);
                    true
                } else if let Some(add) = &s.additional {
                    match add {
                        Additional::Schema(a) => prune(v, Some(a), a.embedded),
                        Additional::Bool(_) => prune(v, None, false),
                    }
                    true
                } else {
                    false
                }
            });
        }
        Value::Array(items) => {
            let is = s.and_then(|s| s.items.as_deref());
            for it in items.iter_mut() {
                prune(it, is, is.is_some_and(|n| n.embedded));
            }
        }
        _ => {}
    }
}

fn skip_prune(x: &mut Value, s: &Node) {
    match x {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if s.embedded && is_meta_field(k) {
                    if k == "metadata" {
                        coerce_meta(v);
                    }
                    continue;
                }
                if let Some(p) = s.properties.get(k) {
                    prune(v, Some(p), p.embedded);
                } else if let Some(add) = &s.additional {
                    match add {
                        Additional::Schema(a) => prune(v, Some(a), a.embedded),
                        Additional::Bool(_) => prune(v, None, false),
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = s.items.as_deref() {
                for it in items.iter_mut() {
                    skip_prune(it, is);
                }
            }
        }
        _ => {}
    }
}

/// `structuraldefaulting.PruneNonNullableNullsWithoutDefaults`.
pub(crate) fn prune_nulls(x: &mut Value, s: Option<&Node>) {
    match x {
        Value::Object(map) => {
            map.retain(|k, v| {
                let schema = s.and_then(|s| s.child(k));
                if let Some(sc) = schema
                    && v.is_null()
                    && !sc.nullable
                    && sc.default.as_ref().is_none_or(Value::is_null)
                {
                    return false;
                }
                prune_nulls(v, schema);
                true
            });
        }
        Value::Array(items) => {
            let is = s.and_then(|s| s.items.as_deref());
            for it in items.iter_mut() {
                prune_nulls(it, is);
            }
        }
        _ => {}
    }
}
