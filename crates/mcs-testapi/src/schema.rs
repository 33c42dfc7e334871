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

    /// The `x-kubernetes-list-map-keys` of the list at `path`, if it is `x-kubernetes-list-type: map`.
    pub fn list_map_keys(&self, path: &[Seg]) -> Option<Vec<String>> {
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
                Seg::K(_) => &node["items"],
            };
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
