//! `x-kubernetes-list-type` set/map uniqueness (`schema/listtype`).

use serde_json::{Map, Value};

use crate::cel::map_key_values;
use crate::error::FieldError;
use crate::gofmt;
use crate::path;
use crate::schema::{Additional, Node};

fn set_errors(p: &str, items: &[Value], errs: &mut Vec<FieldError>) {
    let mut seen: Vec<(String, usize)> = Vec::new();
    for (i, x) in items.iter().enumerate() {
        let key = match x {
            Value::Number(n) if n.is_i64() => format!("i:{n}"),
            Value::Number(n) => format!("f:{}", n.as_f64().unwrap_or(f64::NAN)),
            other => gofmt::marshal(other),
        };
        match seen.iter_mut().find(|(k, _)| *k == key) {
            None => seen.push((key, 1)),
            Some((_, times)) => {
                *times += 1;
                if *times == 2 {
                    errs.push(FieldError::duplicate(path::index(p, i), x.clone()));
                }
            }
        }
    }
}

fn map_errors(node: &Node, p: &str, items: &[Value], errs: &mut Vec<FieldError>) {
    for (i, x) in items.iter().enumerate() {
        if !x.is_null() && !x.is_object() {
            errs.push(FieldError::invalid(
                path::index(p, i),
                Some(x.clone()),
                "must be an object for an array of list-type map",
            ));
            return;
        }
    }
    let mut seen: Vec<Vec<Value>> = Vec::new();
    for (i, x) in items.iter().enumerate() {
        let Some(obj) = x.as_object() else {
            continue;
        };
        let keys = map_key_values(node, x).unwrap_or_default();
        let marked: Vec<Value> = node
            .list_map_keys
            .iter()
            .zip(keys.iter())
            .map(|(k, v)| {
                if obj.contains_key(k) || !v.is_null() {
                    v.clone()
                } else {
                    Value::Object(Map::new())
                }
            })
            .collect();
        if seen.contains(&marked) {
            let mut m = Map::new();
            for (k, v) in node.list_map_keys.iter().zip(marked.iter()) {
                m.insert(k.clone(), v.clone());
            }
            errs.push(FieldError::duplicate(path::index(p, i), Value::Object(m)));
        } else {
            seen.push(marked);
        }
    }
}

/// `ValidateListSetsAndMaps` over the whole object.
pub(crate) fn validate(node: &Node, value: &Value, p: &str, errs: &mut Vec<FieldError>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let child = node.properties.get(k).or(match &node.additional {
                    Some(Additional::Schema(a)) => Some(a),
                    _ => None,
                });
                if let Some(c) = child {
                    validate(c, v, &path::child(p, k), errs);
                }
            }
        }
        Value::Array(items) => {
            match node.list_type.as_deref() {
                Some("set") => set_errors(p, items, errs),
                Some("map") => map_errors(node, p, items, errs),
                _ => {}
            }
            if let Some(is) = node.items.as_deref() {
                for (i, it) in items.iter().enumerate() {
                    validate(is, it, &path::index(p, i), errs);
                }
            }
        }
        _ => {}
    }
}
