//! Client-side emulation of what a Kubernetes 1.36 API server does with a
//! CustomResourceDefinition's `openAPIV3Schema` when an object is written:
//! structural-schema checks at CRD creation, pruning, defaulting, OpenAPI value
//! validation (with update ratcheting), `x-kubernetes-list-type` uniqueness,
//! embedded-resource checks, `ObjectMeta` checks, and `x-kubernetes-validations`
//! CEL rules (through the `kube-cel` crate), reported as Kubernetes field errors.
//!
//! The apiserver's write path is, in order: [`CrdSchema::prune`] (which also drops
//! non-nullable `null`s without a default), [`CrdSchema::apply_defaults`], then
//! [`CrdSchema::validate`]; a failed validation becomes [`invalid_status`].

mod cel;
mod cost;
mod error;
mod formats;
mod gofmt;
mod listtype;
mod meta;
mod mutate;
mod openapi;
mod path;
mod schema;
mod structural;

use serde_json::Value;

pub use error::{FieldError, FieldErrorType, invalid_status};

use schema::Node;

/// Why a CRD could not be turned into a [`CrdSchema`].
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The document is not a usable `apiextensions.k8s.io/v1` CustomResourceDefinition.
    #[error("invalid CustomResourceDefinition: {0}")]
    InvalidCrd(String),
    /// The CRD has no version with this name.
    #[error("version {0:?} not found in the CustomResourceDefinition")]
    VersionNotFound(String),
    /// The version exists but is not served.
    #[error("version {0:?} is not served")]
    VersionNotServed(String),
    /// The version has no `schema.openAPIV3Schema`.
    #[error("version {0:?} has no schema.openAPIV3Schema")]
    MissingSchema(String),
    /// A schema keyword has a value of the wrong JSON type.
    #[error("invalid schema: {0}")]
    InvalidSchema(String),
    /// An `x-kubernetes-validations` rule (or its `messageExpression`) does not compile;
    /// a real apiserver rejects such a CRD.
    #[error("{path}: Invalid value: {rule:?}: compilation failed: {message}")]
    CelCompile {
        /// Schema path of the rule, e.g. `spec.versions[0].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations[0]`.
        path: String,
        /// The rule text.
        rule: String,
        /// The compiler's message.
        message: String,
    },
}

/// The `scale` subresource paths of a version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScaleSubresource {
    /// `specReplicasPath`, e.g. `.spec.replicas`.
    pub spec_replicas_path: String,
    /// `statusReplicasPath`, e.g. `.status.replicas`.
    pub status_replicas_path: String,
    /// `labelSelectorPath`, if any.
    pub label_selector_path: Option<String>,
}

/// One served version of a CRD: its schema, names, scope and subresources.
#[derive(Debug)]
pub struct CrdSchema {
    group: String,
    version: String,
    kind: String,
    list_kind: String,
    plural: String,
    singular: String,
    short_names: Vec<String>,
    categories: Vec<String>,
    namespaced: bool,
    status_subresource: bool,
    scale: Option<ScaleSubresource>,
    root: Node,
    schema_path: String,
    structural: Vec<String>,
    rule_count: usize,
}

fn get_str<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

fn str_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

impl CrdSchema {
    /// Reads one served version of an `apiextensions.k8s.io/v1` CustomResourceDefinition,
    /// compiling its CEL rules; fails when the version is missing or a rule does not compile.
    pub fn from_crd(crd: &Value, version: &str) -> Result<CrdSchema, SchemaError> {
        let spec = crd
            .get("spec")
            .filter(|s| s.is_object())
            .ok_or_else(|| SchemaError::InvalidCrd("spec is required".into()))?;
        let group = get_str(spec, &["group"])
            .ok_or_else(|| SchemaError::InvalidCrd("spec.group is required".into()))?
            .to_string();
        let kind = get_str(spec, &["names", "kind"])
            .ok_or_else(|| SchemaError::InvalidCrd("spec.names.kind is required".into()))?
            .to_string();
        let plural = get_str(spec, &["names", "plural"])
            .unwrap_or_default()
            .to_string();
        let singular = get_str(spec, &["names", "singular"])
            .map(str::to_string)
            .unwrap_or_else(|| kind.to_lowercase());
        let list_kind = get_str(spec, &["names", "listKind"])
            .map(str::to_string)
            .unwrap_or_else(|| format!("{kind}List"));
        let names = spec.get("names");
        let short_names = str_list(names.and_then(|n| n.get("shortNames")));
        let categories = str_list(names.and_then(|n| n.get("categories")));
        let namespaced = get_str(spec, &["scope"]) != Some("Cluster");
        let versions = spec
            .get("versions")
            .and_then(Value::as_array)
            .ok_or_else(|| SchemaError::InvalidCrd("spec.versions is required".into()))?;
        let (index, v) = versions
            .iter()
            .enumerate()
            .find(|(_, v)| get_str(v, &["name"]) == Some(version))
            .ok_or_else(|| SchemaError::VersionNotFound(version.to_string()))?;
        if v.get("served").and_then(Value::as_bool) != Some(true) {
            return Err(SchemaError::VersionNotServed(version.to_string()));
        }
        let raw = v
            .get("schema")
            .and_then(|s| s.get("openAPIV3Schema"))
            .filter(|s| s.is_object())
            .ok_or_else(|| SchemaError::MissingSchema(version.to_string()))?;
        let prefix = format!("spec.versions[{index}].schema.openAPIV3Schema");
        let mut root = Node::parse(raw, &prefix)?;
        let structural = structural::errors(raw, &root, &prefix);
        let rule_count = cel::compile_tree(&mut root, &prefix)?;
        let subresources = v.get("subresources");
        let status_subresource = subresources
            .and_then(|s| s.get("status"))
            .is_some_and(Value::is_object);
        let scale = subresources
            .and_then(|s| s.get("scale"))
            .filter(|s| s.is_object())
            .map(|s| ScaleSubresource {
                spec_replicas_path: get_str(s, &["specReplicasPath"])
                    .unwrap_or_default()
                    .to_string(),
                status_replicas_path: get_str(s, &["statusReplicasPath"])
                    .unwrap_or_default()
                    .to_string(),
                label_selector_path: get_str(s, &["labelSelectorPath"]).map(str::to_string),
            });
        Ok(CrdSchema {
            group,
            version: version.to_string(),
            kind,
            list_kind,
            plural,
            singular,
            short_names,
            categories,
            namespaced,
            status_subresource,
            scale,
            root,
            schema_path: prefix,
            structural,
            rule_count,
        })
    }

    /// The API group (`spec.group`).
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The version this schema belongs to.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// `group/version`, the `apiVersion` objects of this version carry.
    pub fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }

    /// `spec.names.kind`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// `spec.names.listKind` (defaults to `<Kind>List`).
    pub fn list_kind(&self) -> &str {
        &self.list_kind
    }

    /// `spec.names.plural`.
    pub fn plural(&self) -> &str {
        &self.plural
    }

    /// `spec.names.singular` (defaults to the lower-cased kind).
    pub fn singular(&self) -> &str {
        &self.singular
    }

    /// `spec.names.shortNames`.
    pub fn short_names(&self) -> &[String] {
        &self.short_names
    }

    /// `spec.names.categories`.
    pub fn categories(&self) -> &[String] {
        &self.categories
    }

    /// Whether `spec.scope` is `Namespaced`.
    pub fn namespaced(&self) -> bool {
        self.namespaced
    }

    /// Whether this version has the `status` subresource (the apiserver then ignores
    /// `status` on create/update of the main resource).
    pub fn has_status_subresource(&self) -> bool {
        self.status_subresource
    }

    /// The `scale` subresource, if this version has one.
    pub fn scale_subresource(&self) -> Option<&ScaleSubresource> {
        self.scale.as_ref()
    }

    /// Number of compiled `x-kubernetes-validations` rules.
    pub fn cel_rule_count(&self) -> usize {
        self.rule_count
    }

    /// The `x-kubernetes-validations` rules whose estimated worst-case cost exceeds the
    /// apiserver's per-rule budget, which a real apiserver rejects when the CRD is created
    /// (empty = every rule fits). Each warning names the rule's schema path, the rule and the
    /// estimate, and lists the lists, maps and strings the rule traverses that have no
    /// `maxItems`/`maxProperties`/`maxLength` bound. Missing bounds on fields a rule does not
    /// iterate over are not reported: they do not affect its cost. The cost model is
    /// described in the crate's `src/cost.rs`.
    pub fn cost_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        cost::tree_warnings(&self.root, &self.schema_path, &mut out);
        out
    }

    /// Structural-schema and schema-definition violations, formatted as the apiserver
    /// reports them when the CRD is created (empty = the schema is accepted).
    pub fn structural_errors(&self) -> Vec<String> {
        self.structural.clone()
    }

    /// Applies schema `default`s in place (apiserver defaulting; also replaces
    /// non-nullable `null`s that have a default).
    pub fn apply_defaults(&self, obj: &mut Value) {
        mutate::default(obj, &self.root);
    }

    /// Removes fields the schema does not declare unless `x-kubernetes-preserve-unknown-fields`
    /// applies, and drops non-nullable `null`s without a default. `apiVersion`, `kind` and
    /// `metadata` are kept at the root and in embedded resources (unknown `ObjectMeta` keys are dropped).
    pub fn prune(&self, obj: &mut Value) {
        mutate::prune(obj, Some(&self.root), true);
        mutate::prune_nulls(obj, Some(&self.root));
    }

    /// Validates a create (`old = None`) or an update (`old = Some(stored object)`) the way the
    /// custom-resource strategy does: type meta, object meta, OpenAPI schema (ratcheting unchanged
    /// values on update), scale paths, embedded resources, list sets/maps, then CEL rules
    /// (skipped with a `<nil>` note when a blocking schema error exists). Expects the object
    /// already pruned and defaulted.
    pub fn validate(&self, obj: &Value, old: Option<&Value>) -> Result<(), Vec<FieldError>> {
        let type_errs = meta::validate_type_meta(obj, &self.group, &self.version, &self.kind);
        if !type_errs.is_empty() {
            return Err(type_errs);
        }
        let mut errs = Vec::new();
        match old {
            None => meta::validate_create(obj, self.namespaced, &mut errs),
            Some(o) => meta::validate_update(obj, o, &mut errs),
        }
        let walk = openapi::Walk {
            ratcheting: old.is_some(),
        };
        errs.extend(walk.validate(&self.root, obj, old, ""));
        if let Some(scale) = &self.scale {
            scale_errors(obj, scale, &mut errs);
        }
        meta::validate_embedded(&self.root, obj, "", &mut errs);
        let check_lists = match old {
            None => true,
            Some(o) => {
                let mut old_errs = Vec::new();
                listtype::validate(&self.root, o, "", &mut old_errs);
                old_errs.is_empty()
            }
        };
        if check_lists {
            listtype::validate(&self.root, obj, "", &mut errs);
        }
        if self.rule_count > 0 {
            let blocking = errs.iter().any(|e| {
                matches!(
                    e.error_type,
                    FieldErrorType::NotSupported
                        | FieldErrorType::Required
                        | FieldErrorType::TooLong
                        | FieldErrorType::TooMany
                        | FieldErrorType::TypeInvalid
                )
            });
            if blocking {
                errs.push(FieldError::invalid(
                    "<nil>",
                    Some(Value::Null),
                    "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation",
                ));
            } else {
                cel::walk(&self.root, obj, old, "", &mut errs);
            }
        }
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }
}

fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "<nil>",
        Value::Bool(_) => "bool",
        Value::String(_) => "string",
        Value::Number(n) if n.is_i64() => "int64",
        Value::Number(_) => "float64",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

fn go_v(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => gofmt::number_v(n),
        other => gofmt::marshal(other),
    }
}

/// `unstructured.NestedFieldNoCopy` + type check, as `NestedInt64`/`NestedString` report it.
fn nested<'a>(obj: &'a Value, json_path: &str, want: &str) -> Result<Option<&'a Value>, String> {
    let fields: Vec<&str> = json_path.trim_start_matches('.').split('.').collect();
    let mut cur = obj;
    for (i, f) in fields.iter().enumerate() {
        match cur {
            Value::Object(m) => match m.get(*f) {
                Some(v) => cur = v,
                None => return Ok(None),
            },
            other => {
                return Err(format!(
                    ".{} accessor error: {} is of the type {}, expected map[string]interface{{}}",
                    fields[..i].join("."),
                    go_v(other),
                    go_type(other)
                ));
            }
        }
    }
    let ok = match want {
        "int64" => cur.as_number().is_some_and(serde_json::Number::is_i64),
        _ => cur.is_string(),
    };
    if ok {
        Ok(Some(cur))
    } else {
        Err(format!(
            ".{} accessor error: {} is of the type {}, expected {want}",
            fields.join("."),
            go_v(cur),
            go_type(cur)
        ))
    }
}

fn replicas_errors(obj: &Value, json_path: &str, errs: &mut Vec<FieldError>) {
    if json_path.is_empty() {
        return;
    }
    match nested(obj, json_path, "int64") {
        Err(e) => errs.push(FieldError::invalid(json_path, Some(Value::from(0)), e)),
        Ok(Some(v)) => {
            let n = v.as_i64().unwrap_or(0);
            if n < 0 {
                errs.push(FieldError::invalid(
                    json_path,
                    Some(v.clone()),
                    "should be a non-negative integer",
                ));
            } else if n > i64::from(i32::MAX) {
                errs.push(FieldError::invalid(
                    json_path,
                    Some(v.clone()),
                    format!("should be less than or equal to {}", i32::MAX),
                ));
            }
        }
        Ok(None) => {}
    }
}

fn scale_errors(obj: &Value, scale: &ScaleSubresource, errs: &mut Vec<FieldError>) {
    replicas_errors(obj, &scale.spec_replicas_path, errs);
    replicas_errors(obj, &scale.status_replicas_path, errs);
    if let Some(sel) = scale
        .label_selector_path
        .as_deref()
        .filter(|s| !s.is_empty())
        && let Err(e) = nested(obj, sel, "string")
    {
        errs.push(FieldError::invalid(sel, Some(Value::from("")), e));
    }
}
