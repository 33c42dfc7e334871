//! The apiserver's OpenAPI value validation (`k8s.io/kube-openapi/pkg/validation/validate`
//! as driven by `apiextensions-apiserver`), including update ratcheting.

use serde_json::Value;

use crate::cel::{correlate_map_item, map_correlatable};
use crate::error::FieldError;
use crate::formats;
use crate::gofmt::{self, float_v};
use crate::schema::{Additional, Node};

const IN: &str = "body";

/// The field path of a kube-openapi error name (`.spec` → `spec`, `` → `<nil>`).
fn err_path(name: &str) -> String {
    let trimmed = name.strip_prefix('.').unwrap_or(name);
    if name.is_empty() || name == "." {
        "<nil>".into()
    } else {
        trimmed.to_string()
    }
}

fn prop_name(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

fn json_kind(v: &Value) -> (&'static str, &'static str) {
    match v {
        Value::Null => ("null", ""),
        Value::Bool(_) => ("boolean", ""),
        Value::String(_) => ("string", ""),
        Value::Array(_) => ("array", ""),
        Value::Object(_) => ("object", ""),
        Value::Number(n) => {
            if n.is_i64() {
                ("integer", "int64")
            } else {
                ("number", "float64")
            }
        }
    }
}

fn as_f64(v: &Value) -> Option<f64> {
    v.as_number().and_then(serde_json::Number::as_f64)
}

fn is_integral(f: f64) -> bool {
    f.is_finite() && f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0
}

/// `errors.InvalidType` converted by `kubeOpenAPIResultToFieldErrors`.
fn invalid_type(name: &str, type_name: &str, value: &str) -> FieldError {
    FieldError::type_invalid(
        err_path(name),
        Some(Value::from(value)),
        format!(
            "{name} in {IN} must be of type {type_name}: {}",
            gofmt::quote(value)
        ),
    )
}

fn enum_eq(data: &Value, candidate: &Value) -> bool {
    match (data, candidate) {
        (Value::Null, _) | (_, Value::Null) => false,
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

/// Validator state shared by one walk.
pub(crate) struct Walk {
    /// Whether unchanged (correlated, deep-equal) values are exempt from errors.
    pub(crate) ratcheting: bool,
}

impl Walk {
    /// Validates `value` against `node`; `name` is the kube-openapi path (`` at the root).
    pub(crate) fn validate(
        &self,
        node: &Node,
        value: &Value,
        old: Option<&Value>,
        name: &str,
    ) -> Vec<FieldError> {
        if self.ratcheting && old == Some(value) {
            return Vec::new();
        }
        let mut errs = Vec::new();
        self.type_check(node, value, name, &mut errs);
        if value.is_null() {
            self.enum_check(node, value, name, &mut errs);
            return errs;
        }
        self.junctors(node, value, old, name, &mut errs);
        if let Value::String(s) = value {
            string_check(node, s, name, &mut errs);
            if let Some(format) = &node.format {
                let normalized = format.replace('-', "");
                if !formats::validates(&normalized, s) {
                    errs.push(invalid_type(name, format, s));
                }
            }
        }
        if let Value::Number(_) = value {
            number_check(node, value, name, &mut errs);
        }
        if let Value::Array(items) = value {
            self.slice_check(node, items, old, name, &mut errs);
        }
        self.enum_check(node, value, name, &mut errs);
        if let Value::Object(map) = value {
            self.object_check(node, map, old, name, &mut errs);
        }
        errs
    }

    fn type_check(&self, node: &Node, value: &Value, name: &str, errs: &mut Vec<FieldError>) {
        let types = node.types();
        let format = node.format.as_deref().unwrap_or("");
        if types.is_empty() && format.is_empty() {
            return;
        }
        if value.is_null() {
            if !types.is_empty() && !types.contains(&"null") && !node.nullable {
                errs.push(invalid_type(name, &types.join(","), "null"));
            }
            return;
        }
        let (sch_type, data_format) = json_kind(value);
        let contains = |t: &str| types.contains(&t);
        let is_float_int =
            sch_type == "number" && as_f64(value).is_some_and(is_integral) && contains("integer");
        let is_int_float = sch_type == "integer" && contains("number");
        let is_string_or_slice = matches!(value, Value::String(_) | Value::Array(_));
        let format_mismatch =
            !(contains(sch_type) || data_format == format || is_float_int || is_int_float);
        if !is_string_or_slice && !format.is_empty() && format_mismatch {
            errs.push(invalid_type(name, format, data_format));
            return;
        }
        let numeric = contains("number") || contains("integer");
        if !numeric && !format.is_empty() && is_string_or_slice {
            return;
        }
        if !(contains(sch_type) || is_float_int || is_int_float) {
            errs.push(invalid_type(name, &types.join(","), sch_type));
        }
    }

    fn junctors(
        &self,
        node: &Node,
        value: &Value,
        old: Option<&Value>,
        name: &str,
        errs: &mut Vec<FieldError>,
    ) {
        let composite = |msg: String| FieldError::invalid("<nil>", Some(Value::from("")), msg);
        if !node.any_of.is_empty() {
            let mut best: Option<Vec<FieldError>> = None;
            let mut ok = false;
            for branch in &node.any_of {
                let r = self.validate(branch, value, old, name);
                if r.is_empty() {
                    ok = true;
                    best = None;
                    break;
                }
                if best.as_ref().is_none_or(|b| r.len() < b.len()) {
                    best = Some(r);
                }
            }
            if !ok {
                errs.push(composite(format!(
                    "{} must validate at least one schema (anyOf)",
                    gofmt::quote(name)
                )));
            }
            if let Some(b) = best {
                errs.extend(b);
            }
        }
        if !node.one_of.is_empty() {
            let mut best: Option<Vec<FieldError>> = None;
            let mut validated = 0;
            for branch in &node.one_of {
                let r = self.validate(branch, value, old, name);
                if r.is_empty() {
                    validated += 1;
                    best = None;
                    continue;
                }
                if validated == 0 && best.as_ref().is_none_or(|b| r.len() < b.len()) {
                    best = Some(r);
                }
            }
            if validated != 1 {
                let extra = if validated == 0 {
                    "Found none valid".to_string()
                } else {
                    format!("Found {validated} valid alternatives")
                };
                errs.push(composite(format!(
                    "{} must validate one and only one schema (oneOf). {extra}",
                    gofmt::quote(name)
                )));
                if let Some(b) = best {
                    errs.extend(b);
                }
            }
        }
        if !node.all_of.is_empty() {
            let mut validated = 0;
            for branch in &node.all_of {
                let r = self.validate(branch, value, old, name);
                if r.is_empty() {
                    validated += 1;
                }
                errs.extend(r);
            }
            if validated != node.all_of.len() {
                let extra = if validated == 0 {
                    ". None validated"
                } else {
                    ""
                };
                errs.push(composite(format!(
                    "{} must validate all the schemas (allOf){extra}",
                    gofmt::quote(name)
                )));
            }
        }
        if let Some(not) = &node.not
            && self.validate(not, value, old, name).is_empty()
        {
            errs.push(composite(format!(
                "{} must not validate the schema (not)",
                gofmt::quote(name)
            )));
        }
    }

    fn slice_check(
        &self,
        node: &Node,
        items: &[Value],
        old: Option<&Value>,
        name: &str,
        errs: &mut Vec<FieldError>,
    ) {
        if let Some(item_schema) = node.items.as_deref() {
            for (i, item) in items.iter().enumerate() {
                let old_item = match node.list_type.as_deref() {
                    Some("map") => correlate_map_item(node, item, old),
                    Some("set") => old
                        .and_then(Value::as_array)
                        .and_then(|a| a.iter().find(|o| *o == item)),
                    _ => None,
                };
                errs.extend(self.validate(item_schema, item, old_item, &format!("{name}[{i}]")));
            }
        }
        let size = items.len() as i64;
        if let Some(min) = node.min_items
            && size < min
        {
            errs.push(FieldError::invalid(
                err_path(name),
                Some(Value::from(size)),
                format!("{name} in {IN} should have at least {min} items"),
            ));
        }
        if let Some(max) = node.max_items
            && size > max
        {
            errs.push(FieldError::too_many(err_path(name), size, max));
        }
        if node.unique_items {
            let dup = items
                .iter()
                .enumerate()
                .any(|(i, a)| items[..i].contains(a));
            if dup {
                errs.push(FieldError::invalid(
                    err_path(name),
                    Some(Value::from("")),
                    format!("{name} in {IN} shouldn't contain duplicates"),
                ));
            }
        }
    }

    fn enum_check(&self, node: &Node, value: &Value, name: &str, errs: &mut Vec<FieldError>) {
        let Some(values) = &node.enumeration else {
            return;
        };
        if values.is_empty() || values.iter().any(|c| enum_eq(value, c)) {
            return;
        }
        let allowed: Vec<String> = values
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => gofmt::marshal(other),
            })
            .collect();
        errs.push(FieldError::not_supported(
            err_path(name),
            Some(value.clone()),
            &allowed,
        ));
    }

    fn object_check(
        &self,
        node: &Node,
        map: &serde_json::Map<String, Value>,
        old: Option<&Value>,
        name: &str,
        errs: &mut Vec<FieldError>,
    ) {
        let num_keys = map.len() as i64;
        if let Some(min) = node.min_properties
            && num_keys < min
        {
            errs.push(FieldError::invalid(
                err_path(name),
                Some(Value::from(num_keys)),
                format!("{name} in {IN} should have at least {min} properties"),
            ));
            return;
        }
        if let Some(max) = node.max_properties
            && num_keys > max
        {
            errs.push(FieldError::too_many(err_path(name), num_keys, max));
            return;
        }
        let correlatable = map_correlatable(node);
        let old_child = |k: &str| {
            if correlatable {
                old.and_then(|o| o.get(k))
            } else {
                None
            }
        };
        match &node.additional {
            Some(Additional::Bool(false)) => {
                for k in map.keys() {
                    if !node.properties.contains_key(k) {
                        errs.push(FieldError::invalid(
                            err_path(name),
                            Some(Value::from(k.clone())),
                            format!("{name}.{k} in {IN} is a forbidden property"),
                        ));
                    }
                }
            }
            Some(Additional::Schema(s)) => {
                for (k, v) in map {
                    if !node.properties.contains_key(k) {
                        errs.extend(self.validate(s, v, old_child(k), &format!("{name}.{k}")));
                    }
                }
            }
            _ => {}
        }
        for (k, p) in &node.properties {
            if let Some(v) = map.get(k) {
                errs.extend(self.validate(p, v, old_child(k), &prop_name(name, k)));
            }
        }
        for k in &node.required {
            if !map.contains_key(k) {
                errs.push(FieldError::required(err_path(&format!("{name}.{k}")), ""));
            }
        }
    }
}

fn string_check(node: &Node, s: &str, name: &str, errs: &mut Vec<FieldError>) {
    let len = s.chars().count() as i64;
    if let Some(max) = node.max_length
        && len > max
    {
        errs.push(FieldError::too_long(err_path(name), max));
        return;
    }
    if let Some(min) = node.min_length
        && len < min
    {
        errs.push(FieldError::invalid(
            err_path(name),
            Some(Value::from(s)),
            format!("{name} in {IN} should be at least {min} chars long"),
        ));
        return;
    }
    if let Some((pattern, Some(re))) = &node.pattern
        && !re.is_match(s)
    {
        errs.push(FieldError::invalid(
            err_path(name),
            Some(Value::from(s)),
            format!("{name} in {IN} should match '{pattern}'"),
        ));
    }
}

fn number_check(node: &Node, value: &Value, name: &str, errs: &mut Vec<FieldError>) {
    let Some(data) = as_f64(value) else {
        return;
    };
    if let Some(factor) = node.multiple_of {
        if factor <= 0.0 {
            errs.push(FieldError::invalid(
                err_path(name),
                Some(Value::from(factor)),
                format!(
                    "factor MultipleOf declared for {name} must be positive: {}",
                    float_v(factor)
                ),
            ));
        } else if !is_integral(data / factor) {
            errs.push(FieldError::invalid(
                err_path(name),
                Some(value.clone()),
                format!("{name} in {IN} should be a multiple of {}", float_v(factor)),
            ));
        }
    }
    if let Some(max) = node.maximum {
        let fails = if node.exclusive_maximum {
            data >= max
        } else {
            data > max
        };
        if fails {
            let op = if node.exclusive_maximum {
                "less than"
            } else {
                "less than or equal to"
            };
            errs.push(FieldError::invalid(
                err_path(name),
                Some(value.clone()),
                format!("{name} in {IN} should be {op} {}", float_v(max)),
            ));
        }
    }
    if let Some(min) = node.minimum {
        let fails = if node.exclusive_minimum {
            data <= min
        } else {
            data < min
        };
        if fails {
            let op = if node.exclusive_minimum {
                "greater than"
            } else {
                "greater than or equal to"
            };
            errs.push(FieldError::invalid(
                err_path(name),
                Some(value.clone()),
                format!("{name} in {IN} should be {op} {}", float_v(min)),
            ));
        }
    }
}
