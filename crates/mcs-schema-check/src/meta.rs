//! `ObjectMeta`, `TypeMeta` and embedded-resource checks
//! (`k8s.io/apimachinery/pkg/api/validation`, `schema/objectmeta`).

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use crate::error::FieldError;
use crate::path;
use crate::schema::{Additional, Node};

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_SUBDOMAIN_FMT: &str =
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";

fn anchored(fmt: &str) -> Option<Regex> {
    Regex::new(&format!("^{fmt}$")).ok()
}

static DNS1123_LABEL: LazyLock<Option<Regex>> = LazyLock::new(|| anchored(DNS1123_LABEL_FMT));
static DNS1123_SUBDOMAIN: LazyLock<Option<Regex>> =
    LazyLock::new(|| anchored(DNS1123_SUBDOMAIN_FMT));
static DNS1035_LABEL: LazyLock<Option<Regex>> = LazyLock::new(|| anchored(DNS1035_LABEL_FMT));
static QUALIFIED_NAME: LazyLock<Option<Regex>> = LazyLock::new(|| anchored(QUALIFIED_NAME_FMT));
static LABEL_VALUE: LazyLock<Option<Regex>> = LazyLock::new(|| anchored(LABEL_VALUE_FMT));

fn matches(re: &LazyLock<Option<Regex>>, s: &str) -> bool {
    re.as_ref().is_some_and(|r| r.is_match(s))
}

fn max_len_msg(n: usize) -> String {
    format!("must be no more than {n} characters")
}

/// `validation.IsDNS1123Subdomain`.
pub(crate) fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push(max_len_msg(253));
    }
    if !matches(&DNS1123_SUBDOMAIN, s) {
        errs.push(format!(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '{DNS1123_SUBDOMAIN_FMT}')"
        ));
    }
    errs
}

/// `validation.IsDNS1123Label`.
pub(crate) fn dns1123_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push(max_len_msg(63));
    }
    if !matches(&DNS1123_LABEL, s) {
        errs.push(format!(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '{DNS1123_LABEL_FMT}')"
        ));
    }
    errs
}

fn dns1035_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push(max_len_msg(63));
    }
    if !matches(&DNS1035_LABEL, s) {
        errs.push(format!(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '{DNS1035_LABEL_FMT}')"
        ));
    }
    errs
}

/// `validation.IsQualifiedName`.
fn qualified_name(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                errs.extend(
                    dns1123_subdomain(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '{QUALIFIED_NAME_FMT}') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push(format!("name part {}", max_len_msg(63)));
    }
    if !matches(&QUALIFIED_NAME, name) {
        errs.push(format!(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '{QUALIFIED_NAME_FMT}')"
        ));
    }
    errs
}

fn label_value(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.len() > 63 {
        errs.push(max_len_msg(63));
    }
    if !matches(&LABEL_VALUE, v) {
        errs.push(format!(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '{LABEL_VALUE_FMT}')"
        ));
    }
    errs
}

fn str_field<'a>(meta: &'a Value, key: &str) -> &'a str {
    meta.get(key).and_then(Value::as_str).unwrap_or("")
}

fn name_errors(fld: &str, name: &str, prefix: bool) -> Vec<FieldError> {
    let masked = if prefix {
        name.strip_suffix('-')
            .map(|n| format!("{n}a"))
            .unwrap_or_else(|| name.to_string())
    } else {
        name.to_string()
    };
    dns1123_subdomain(&masked)
        .into_iter()
        .map(|m| FieldError::invalid(fld, Some(Value::from(name)), m))
        .collect()
}

fn labels_and_annotations(meta: &Value, base: &str, errs: &mut Vec<FieldError>) {
    let labels_path = path::child(base, "labels");
    if let Some(labels) = meta.get("labels").and_then(Value::as_object) {
        for (k, v) in labels {
            for m in qualified_name(k) {
                errs.push(FieldError::invalid(
                    &labels_path,
                    Some(Value::from(k.clone())),
                    m,
                ));
            }
            if let Some(v) = v.as_str() {
                for m in label_value(v) {
                    errs.push(FieldError::invalid(&labels_path, Some(Value::from(v)), m));
                }
            }
        }
    }
    let ann_path = path::child(base, "annotations");
    if let Some(ann) = meta.get("annotations").and_then(Value::as_object) {
        let mut total = 0usize;
        for (k, v) in ann {
            for m in qualified_name(&k.to_lowercase()) {
                errs.push(FieldError::invalid(
                    &ann_path,
                    Some(Value::from(k.clone())),
                    m,
                ));
            }
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > 256 * 1024 {
            errs.push(FieldError::too_long(&ann_path, 256 * 1024));
        }
    }
}

/// `ValidateObjectMetaAccessor` with `NameIsDNSSubdomain` (create).
pub(crate) fn validate_create(obj: &Value, namespaced: bool, errs: &mut Vec<FieldError>) {
    let meta = obj.get("metadata").cloned().unwrap_or(Value::Null);
    let name = str_field(&meta, "name");
    let generate_name = str_field(&meta, "generateName");
    if !generate_name.is_empty() {
        errs.extend(name_errors("metadata.generateName", generate_name, true));
    }
    if name.is_empty() {
        if generate_name.is_empty() {
            errs.push(FieldError::required(
                "metadata.name",
                "name or generateName is required",
            ));
        }
    } else {
        errs.extend(name_errors("metadata.name", name, false));
    }
    let namespace = str_field(&meta, "namespace");
    if namespaced {
        if !namespace.is_empty() {
            for m in dns1123_label(namespace) {
                errs.push(FieldError::invalid(
                    "metadata.namespace",
                    Some(Value::from(namespace)),
                    m,
                ));
            }
        }
    } else if !namespace.is_empty() {
        errs.push(FieldError::forbidden(
            "metadata.namespace",
            "not allowed on this type",
        ));
    }
    labels_and_annotations(&meta, "metadata", errs);
}

/// `ValidateObjectMetaAccessorUpdate`: immutable identity fields plus labels/annotations.
pub(crate) fn validate_update(obj: &Value, old: &Value, errs: &mut Vec<FieldError>) {
    let meta = obj.get("metadata").cloned().unwrap_or(Value::Null);
    let old_meta = old.get("metadata").cloned().unwrap_or(Value::Null);
    for key in ["name", "namespace", "uid"] {
        let new_v = str_field(&meta, key);
        let old_v = str_field(&old_meta, key);
        if key == "uid" && new_v.is_empty() {
            continue;
        }
        if new_v != old_v {
            errs.push(FieldError::invalid(
                format!("metadata.{key}"),
                Some(Value::from(new_v)),
                "field is immutable",
            ));
        }
    }
    labels_and_annotations(&meta, "metadata", errs);
}

/// `ValidateTypeMeta` of the custom resource validator.
pub(crate) fn validate_type_meta(
    obj: &Value,
    group: &str,
    version: &str,
    kind: &str,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let got_kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    if got_kind != kind {
        errs.push(FieldError::invalid(
            "kind",
            Some(Value::from(got_kind)),
            format!("must be {kind}"),
        ));
    }
    let want = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let got_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if got_version != want {
        errs.push(FieldError::invalid(
            "apiVersion",
            Some(Value::from(got_version)),
            format!("must be {want}"),
        ));
    }
    errs
}

fn valid_group_version(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split('/').collect();
    if parts.len() > 2 {
        return Some(format!("unexpected GroupVersion string: {s}"));
    }
    None
}

fn embedded(obj: &serde_json::Map<String, Value>, p: &str, errs: &mut Vec<FieldError>) {
    if !obj.contains_key("apiVersion") {
        errs.push(FieldError::required(
            path::child(p, "apiVersion"),
            "must not be empty",
        ));
    }
    if !obj.contains_key("kind") {
        errs.push(FieldError::required(
            path::child(p, "kind"),
            "must not be empty",
        ));
    }
    for (k, v) in obj {
        match k.as_str() {
            "apiVersion" => match v.as_str() {
                None => errs.push(FieldError::invalid(
                    path::child(p, k),
                    Some(v.clone()),
                    "must be a string",
                )),
                Some("") => errs.push(FieldError::invalid(
                    path::child(p, k),
                    Some(v.clone()),
                    "must not be empty",
                )),
                Some(s) => {
                    if let Some(m) = valid_group_version(s) {
                        errs.push(FieldError::invalid(path::child(p, k), Some(v.clone()), m));
                    }
                }
            },
            "kind" => match v.as_str() {
                None => errs.push(FieldError::invalid(
                    path::child(p, k),
                    Some(v.clone()),
                    "must be a string",
                )),
                Some("") => errs.push(FieldError::invalid(
                    path::child(p, k),
                    Some(v.clone()),
                    "must not be empty",
                )),
                Some(s) => {
                    let e = dns1035_label(&s.to_lowercase());
                    if !e.is_empty() {
                        errs.push(FieldError::invalid(
                            path::child(p, k),
                            Some(v.clone()),
                            format!(
                                "may have mixed case, but should otherwise match: {}",
                                e.join(",")
                            ),
                        ));
                    }
                }
            },
            "metadata" => {
                let name = v.get("name").and_then(Value::as_str).unwrap_or("");
                if !name.is_empty() {
                    errs.extend(name_errors(
                        &path::child(&path::child(p, k), "name"),
                        name,
                        false,
                    ));
                }
                let generate_name = v.get("generateName").and_then(Value::as_str).unwrap_or("");
                if !generate_name.is_empty() {
                    errs.extend(name_errors(
                        &path::child(&path::child(p, k), "generateName"),
                        generate_name,
                        true,
                    ));
                }
                labels_and_annotations(v, &path::child(p, k), errs);
            }
            _ => {}
        }
    }
}

/// `schemaobjectmeta.Validate`: checks every `x-kubernetes-embedded-resource` below the root.
pub(crate) fn validate_embedded(node: &Node, value: &Value, p: &str, errs: &mut Vec<FieldError>) {
    match value {
        Value::Object(map) => {
            if node.embedded {
                embedded(map, p, errs);
            }
            for (k, v) in map {
                if let Some(c) = node.properties.get(k) {
                    validate_embedded(c, v, &path::child(p, k), errs);
                } else if let Some(Additional::Schema(a)) = &node.additional {
                    validate_embedded(a, v, &path::child(p, k), errs);
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = node.items.as_deref() {
                for (i, it) in items.iter().enumerate() {
                    validate_embedded(is, it, &path::index(p, i), errs);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert!(dns1123_subdomain("my-app.example").is_empty());
        assert_eq!(dns1123_subdomain("My_App").len(), 1);
        assert!(dns1123_label("default").is_empty());
        assert!(qualified_name("app.kubernetes.io/name").is_empty());
        assert!(!qualified_name("bad key").is_empty());
        assert!(label_value("").is_empty());
    }
}
