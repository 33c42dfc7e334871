//! A parsed `openAPIV3Schema` node.

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::Value;

use crate::SchemaError;
use crate::cel::RuleSet;

/// `additionalProperties` as a boolean or a schema.
#[derive(Debug)]
pub(crate) enum Additional {
    /// `additionalProperties: true|false`.
    Bool(bool),
    /// `additionalProperties: {schema}`.
    Schema(Box<Node>),
}

/// One `x-kubernetes-validations` entry.
#[derive(Debug, Clone)]
pub(crate) struct RuleSpec {
    pub(crate) rule: String,
    pub(crate) message: Option<String>,
    pub(crate) message_expression: Option<String>,
    pub(crate) reason: Option<String>,
    pub(crate) field_path: Option<String>,
}

/// Formats the apiserver keeps (everything else is stripped before validation).
const SUPPORTED_FORMATS: &[&str] = &[
    "bsonobjectid",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uuid",
    "uuid3",
    "uuid4",
    "uuid5",
    "isbn",
    "isbn10",
    "isbn13",
    "creditcard",
    "ssn",
    "hexcolor",
    "rgbcolor",
    "byte",
    "password",
    "date",
    "duration",
    "datetime",
];

/// Deepest schema nesting accepted (kube-cel refuses deeper schemas as well).
const MAX_DEPTH: usize = 64;

/// A schema node with every keyword the apiserver acts on.
#[derive(Debug, Default)]
pub(crate) struct Node {
    pub(crate) raw: Value,
    pub(crate) ty: Option<String>,
    pub(crate) nullable: bool,
    pub(crate) format: Option<String>,
    pub(crate) properties: BTreeMap<String, Node>,
    pub(crate) additional: Option<Additional>,
    pub(crate) items: Option<Box<Node>>,
    pub(crate) required: Vec<String>,
    pub(crate) enumeration: Option<Vec<Value>>,
    pub(crate) minimum: Option<f64>,
    pub(crate) maximum: Option<f64>,
    pub(crate) exclusive_minimum: bool,
    pub(crate) exclusive_maximum: bool,
    pub(crate) multiple_of: Option<f64>,
    pub(crate) min_length: Option<i64>,
    pub(crate) max_length: Option<i64>,
    pub(crate) pattern: Option<(String, Option<Regex>)>,
    pub(crate) min_items: Option<i64>,
    pub(crate) max_items: Option<i64>,
    pub(crate) unique_items: bool,
    pub(crate) min_properties: Option<i64>,
    pub(crate) max_properties: Option<i64>,
    pub(crate) all_of: Vec<Node>,
    pub(crate) any_of: Vec<Node>,
    pub(crate) one_of: Vec<Node>,
    pub(crate) not: Option<Box<Node>>,
    pub(crate) default: Option<Value>,
    pub(crate) preserve_unknown: bool,
    pub(crate) int_or_string: bool,
    pub(crate) embedded: bool,
    pub(crate) list_type: Option<String>,
    pub(crate) list_map_keys: Vec<String>,
    pub(crate) rules: Vec<RuleSpec>,
    pub(crate) cel: Option<RuleSet>,
}

fn bad(path: &str, key: &str, want: &str) -> SchemaError {
    SchemaError::InvalidSchema(format!("{path}.{key}: must be {want}"))
}

fn opt_bool(
    o: &serde_json::Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<bool, SchemaError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad(path, key, "a boolean")),
    }
}

fn opt_f64(
    o: &serde_json::Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<f64>, SchemaError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(bad(path, key, "a number")),
    }
}

fn opt_i64(
    o: &serde_json::Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<i64>, SchemaError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| bad(path, key, "an integer")),
        Some(_) => Err(bad(path, key, "an integer")),
    }
}

fn opt_str(
    o: &serde_json::Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<String>, SchemaError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(path, key, "a string")),
    }
}

fn str_list(
    o: &serde_json::Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Vec<String>, SchemaError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(path, key, "a list of strings"))
            })
            .collect(),
        Some(_) => Err(bad(path, key, "a list of strings")),
    }
}

fn node_list(
    o: &serde_json::Map<String, Value>,
    key: &str,
    path: &str,
    depth: usize,
) -> Result<Vec<Node>, SchemaError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| Node::parse_at(v, &format!("{path}.{key}[{i}]"), depth + 1))
            .collect(),
        Some(_) => Err(bad(path, key, "a list of schemas")),
    }
}

impl Node {
    /// Parses a schema node; `path` is only used in error messages.
    pub(crate) fn parse(raw: &Value, path: &str) -> Result<Node, SchemaError> {
        Self::parse_at(raw, path, 0)
    }

    fn parse_at(raw: &Value, path: &str, depth: usize) -> Result<Node, SchemaError> {
        if depth > MAX_DEPTH {
            return Err(SchemaError::InvalidSchema(format!(
                "{path}: schema nesting exceeds {MAX_DEPTH} levels"
            )));
        }
        let Some(o) = raw.as_object() else {
            return Err(SchemaError::InvalidSchema(format!(
                "{path}: must be an object"
            )));
        };
        let mut n = Node {
            raw: raw.clone(),
            ty: opt_str(o, "type", path)?,
            nullable: opt_bool(o, "nullable", path)?,
            required: str_list(o, "required", path)?,
            minimum: opt_f64(o, "minimum", path)?,
            maximum: opt_f64(o, "maximum", path)?,
            exclusive_minimum: opt_bool(o, "exclusiveMinimum", path)?,
            exclusive_maximum: opt_bool(o, "exclusiveMaximum", path)?,
            multiple_of: opt_f64(o, "multipleOf", path)?,
            min_length: opt_i64(o, "minLength", path)?,
            max_length: opt_i64(o, "maxLength", path)?,
            min_items: opt_i64(o, "minItems", path)?,
            max_items: opt_i64(o, "maxItems", path)?,
            unique_items: opt_bool(o, "uniqueItems", path)?,
            min_properties: opt_i64(o, "minProperties", path)?,
            max_properties: opt_i64(o, "maxProperties", path)?,
            all_of: node_list(o, "allOf", path, depth)?,
            any_of: node_list(o, "anyOf", path, depth)?,
            one_of: node_list(o, "oneOf", path, depth)?,
            default: o.get("default").cloned(),
            preserve_unknown: opt_bool(o, "x-kubernetes-preserve-unknown-fields", path)?,
            int_or_string: opt_bool(o, "x-kubernetes-int-or-string", path)?,
            embedded: opt_bool(o, "x-kubernetes-embedded-resource", path)?,
            list_type: opt_str(o, "x-kubernetes-list-type", path)?,
            list_map_keys: str_list(o, "x-kubernetes-list-map-keys", path)?,
            ..Node::default()
        };
        if let Some(f) = opt_str(o, "format", path)? {
            let normalized = f.replace('-', "");
            if SUPPORTED_FORMATS.contains(&normalized.as_str()) {
                n.format = Some(f);
            }
        }
        match o.get("enum") {
            None | Some(Value::Null) => {}
            Some(Value::Array(a)) => n.enumeration = Some(a.clone()),
            Some(_) => return Err(bad(path, "enum", "a list")),
        }
        if let Some(p) = opt_str(o, "pattern", path)? {
            let re = Regex::new(&p).ok();
            n.pattern = Some((p, re));
        }
        match o.get("properties") {
            None | Some(Value::Null) => {}
            Some(Value::Object(props)) => {
                for (k, v) in props {
                    n.properties.insert(
                        k.clone(),
                        Node::parse_at(v, &format!("{path}.properties[{k}]"), depth + 1)?,
                    );
                }
            }
            Some(_) => return Err(bad(path, "properties", "an object")),
        }
        match o.get("additionalProperties") {
            None | Some(Value::Null) => {}
            Some(Value::Bool(b)) => n.additional = Some(Additional::Bool(*b)),
            Some(v @ Value::Object(_)) => {
                n.additional = Some(Additional::Schema(Box::new(Node::parse_at(
                    v,
                    &format!("{path}.additionalProperties"),
                    depth + 1,
                )?)))
            }
            Some(_) => return Err(bad(path, "additionalProperties", "a boolean or a schema")),
        }
        match o.get("items") {
            None | Some(Value::Null) => {}
            Some(v @ Value::Object(_)) => {
                n.items = Some(Box::new(Node::parse_at(
                    v,
                    &format!("{path}.items"),
                    depth + 1,
                )?))
            }
            Some(Value::Array(_)) => {}
            Some(_) => return Err(bad(path, "items", "a schema")),
        }
        if let Some(v) = o.get("not").filter(|v| !v.is_null()) {
            n.not = Some(Box::new(Node::parse_at(
                v,
                &format!("{path}.not"),
                depth + 1,
            )?));
        }
        match o.get("x-kubernetes-validations") {
            None | Some(Value::Null) => {}
            Some(Value::Array(rules)) => {
                for (i, r) in rules.iter().enumerate() {
                    let rp = format!("{path}.x-kubernetes-validations[{i}]");
                    let Some(ro) = r.as_object() else {
                        return Err(SchemaError::InvalidSchema(format!(
                            "{rp}: must be an object"
                        )));
                    };
                    n.rules.push(RuleSpec {
                        rule: opt_str(ro, "rule", &rp)?.unwrap_or_default(),
                        message: opt_str(ro, "message", &rp)?,
                        message_expression: opt_str(ro, "messageExpression", &rp)?,
                        reason: opt_str(ro, "reason", &rp)?,
                        field_path: opt_str(ro, "fieldPath", &rp)?,
                    });
                }
            }
            Some(_) => return Err(bad(path, "x-kubernetes-validations", "a list")),
        }
        Ok(n)
    }

    /// The schema governing the child `key` of an object: a declared property, else
    /// `additionalProperties` when it is a schema.
    pub(crate) fn child(&self, key: &str) -> Option<&Node> {
        if let Some(p) = self.properties.get(key) {
            return Some(p);
        }
        match &self.additional {
            Some(Additional::Schema(s)) => Some(s),
            _ => None,
        }
    }

    /// The types the OpenAPI type check accepts (int-or-string widens to both).
    pub(crate) fn types(&self) -> Vec<&str> {
        if self.int_or_string {
            vec!["integer", "string"]
        } else {
            self.ty.as_deref().into_iter().collect()
        }
    }
}
