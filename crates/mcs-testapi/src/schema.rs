//! Admission of custom resources against their CRD's OpenAPI schema (via `mcs-schema-check`).

use crate::error::{ApiError, ApiResult};
use crate::ssa::Seg;
use mcs_schema_check::CrdSchema;
use serde_json::Value;

/// The compiled schema of one CRD version.
pub struct Schema {
    inner: CrdSchema,
    root: Value,
}

impl Schema {
    /// Compile the schema of `version` of `crd`; errors are messages (non-structural schema,
    /// CEL that does not compile, ...), worded as the apiserver reports them.
    pub fn compile(crd: &Value, version: &str) -> Result<Schema, Vec<String>> {
        let inner = CrdSchema::from_crd(crd, version).map_err(|e| vec![e.to_string()])?;
        let errs = inner.structural_errors();
        if !errs.is_empty() {
            return Err(errs);
        }
        let root = crd["spec"]["versions"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"] == version))
            .map(|v| v["schema"]["openAPIV3Schema"].clone())
            .unwrap_or(Value::Null);
        Ok(Schema { inner, root })
    }

    /// The schema node at `path` (through properties, additionalProperties and items).
    fn node(&self, path: &[Seg]) -> Option<&Value> {
        let mut node = &self.root;
        for s in path {
            node = match s {
                Seg::F(name) => match node["properties"].get(name) {
                    Some(n) => n,
                    None if node["additionalProperties"].is_object() => {
                        &node["additionalProperties"]
                    }
                    None => return None,
                },
                Seg::K(_) | Seg::V(_) => &node["items"],
            };
        }
        Some(node)
    }

    /// The `x-kubernetes-list-map-keys` of the list at `path`, if it is
    /// `x-kubernetes-list-type: map`; `Some(vec![])` when `path` is an atomic map
    /// (`x-kubernetes-map-type: atomic`) and `Some(vec![SET])` when it is a set
    /// (`x-kubernetes-list-type: set`), as [`crate::ssa`] expects.
    pub fn list_map_keys(&self, path: &[Seg]) -> Option<Vec<String>> {
        let node = self.node(path)?;
        if node["x-kubernetes-map-type"] == "atomic" {
            return Some(Vec::new());
        }
        if node["x-kubernetes-list-type"] == "set" {
            return Some(vec![crate::ssa::SET.to_string()]);
        }
        if node["x-kubernetes-list-type"] != "map" {
            return None;
        }
        let keys: Vec<String> = node["x-kubernetes-list-map-keys"]
            .as_array()?
            .iter()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect();
        (!keys.is_empty()).then_some(keys)
    }

    /// Whether the schema has CEL rules (`x-kubernetes-validations`) anywhere.
    pub fn has_rules(&self) -> bool {
        fn any(v: &Value) -> bool {
            match v {
                Value::Object(m) => {
                    m.contains_key("x-kubernetes-validations") || m.values().any(any)
                }
                Value::Array(a) => a.iter().any(any),
                _ => false,
            }
        }
        any(&self.root)
    }

    /// Drop what the schema does not declare (as decoding does), nothing else.
    pub fn prune(&self, obj: &mut Value) {
        self.inner.prune(obj);
    }

    /// Default, prune and validate `obj` (the apiserver's order); `old` is the live object on
    /// updates. Both carry the apiVersion of this schema's version.
    pub fn admit(
        &self,
        obj: &mut Value,
        old: Option<&Value>,
        group: &str,
        kind: &str,
        name: &str,
    ) -> ApiResult<()> {
        self.inner.apply_defaults(obj);
        self.inner.prune(obj);
        self.inner.validate(obj, old).map_err(|errs| {
            ApiError::from_status(&mcs_schema_check::invalid_status(group, kind, name, &errs))
        })
    }
}
