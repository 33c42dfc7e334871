//! The kinds the server knows: built-ins and the ones defined by CRDs.

use crate::error::{ApiError, ApiResult};
use crate::schema::Schema;
use serde_json::{Value, json};
use std::sync::Arc;

/// JSON paths of a CRD's scale subresource (`.spec.replicas` form).
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleSpec {
    /// `specReplicasPath`.
    pub spec_replicas_path: String,
    /// `statusReplicasPath`.
    pub status_replicas_path: String,
    /// `labelSelectorPath`, if any.
    pub label_selector_path: Option<String>,
}

/// One served group/version/resource.
#[derive(Clone)]
pub struct ResourceType {
    /// API group ("" for core).
    pub group: String,
    /// Served version.
    pub version: String,
    /// The version objects are stored in.
    pub storage_version: String,
    /// Kind.
    pub kind: String,
    /// Plural resource name.
    pub plural: String,
    /// Singular resource name.
    pub singular: String,
    /// Short names.
    pub short_names: Vec<String>,
    /// Categories.
    pub categories: Vec<String>,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Whether `/status` is a separate subresource.
    pub status_subresource: bool,
    /// The scale subresource, if declared.
    pub scale: Option<ScaleSpec>,
    /// Whether `metadata.generation` is maintained.
    pub generation: bool,
    /// Whether this is a custom resource (defined by a CRD).
    pub custom: bool,
    /// The compiled schema of this version (custom resources only).
    pub schema: Option<Arc<Schema>>,
    /// Field selector paths that are supported besides metadata.name/namespace.
    pub extra_fields: Vec<String>,
}

impl std::fmt::Debug for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} {}", self.group, self.version, self.plural)
    }
}

impl ResourceType {
    /// `group/version` or `version` for core.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The storage key `(group, plural)`.
    pub fn key(&self) -> (String, String) {
        (self.group.clone(), self.plural.clone())
    }

    /// Supported field selector paths.
    pub fn field_paths(&self) -> Vec<&str> {
        let mut v = vec!["metadata.name", "metadata.namespace"];
        v.extend(self.extra_fields.iter().map(String::as_str));
        v
    }

    /// Verbs served on the main resource.
    pub fn verbs() -> Value {
        json!([
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch"
        ])
    }
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    namespaced: bool,
    status: bool,
    short: &[&str],
    extra_fields: &[&str],
) -> ResourceType {
    ResourceType {
        group: group.into(),
        version: version.into(),
        storage_version: version.into(),
        kind: kind.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: vec![],
        namespaced,
        status_subresource: status,
        scale: None,
        generation: false,
        custom: false,
        schema: None,
        extra_fields: extra_fields.iter().map(|s| s.to_string()).collect(),
    }
}

/// The built-in kinds the server serves.
pub fn builtins() -> Vec<ResourceType> {
    let mut crd = builtin(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
        true,
        &["crd", "crds"],
        &[],
    );
    crd.generation = true;
    vec![
        builtin(
            "",
            "v1",
            "Namespace",
            "namespaces",
            false,
            true,
            &["ns"],
            &["status.phase"],
        ),
        builtin("", "v1", "Secret", "secrets", true, false, &[], &["type"]),
        builtin(
            "",
            "v1",
            "ConfigMap",
            "configmaps",
            true,
            false,
            &["cm"],
            &[],
        ),
        builtin(
            "",
            "v1",
            "Event",
            "events",
            true,
            false,
            &["ev"],
            &[
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "reason",
                "reportingComponent",
                "source",
                "type",
            ],
        ),
        builtin(
            "events.k8s.io",
            "v1",
            "Event",
            "events",
            true,
            false,
            &["ev"],
            &[
                "regarding.kind",
                "regarding.namespace",
                "regarding.name",
                "regarding.uid",
                "reason",
                "reportingController",
                "type",
            ],
        ),
        builtin(
            "apps",
            "v1",
            "ControllerRevision",
            "controllerrevisions",
            true,
            false,
            &[],
            &[],
        ),
        builtin(
            "coordination.k8s.io",
            "v1",
            "Lease",
            "leases",
            true,
            false,
            &[],
            &[],
        ),
        crd,
    ]
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Parse a CRD object into one `ResourceType` per served version, compiling schemas.
///
/// Errors are `Invalid` (422) errors naming the CRD.
pub fn from_crd(crd: &Value) -> ApiResult<Vec<ResourceType>> {
    let name = crd["metadata"]["name"].as_str().unwrap_or_default();
    let inv = |field: &str, msg: &str| {
        ApiError::invalid(
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            name,
            &[(field.to_string(), msg.to_string())],
        )
    };
    let spec = &crd["spec"];
    let group = spec["group"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| inv("spec.group", "Required value"))?;
    let names = &spec["names"];
    let plural = names["plural"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| inv("spec.names.plural", "Required value"))?;
    let kind = names["kind"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| inv("spec.names.kind", "Required value"))?;
    if name != format!("{plural}.{group}") {
        return Err(inv(
            "metadata.name",
            &format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    let namespaced = match spec["scope"].as_str() {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        _ => {
            return Err(inv(
                "spec.scope",
                "Unsupported value: supported values: \"Cluster\", \"Namespaced\"",
            ));
        }
    };
    let versions = spec["versions"]
        .as_array()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| inv("spec.versions", "Required value"))?;
    let storage: Vec<&str> = versions
        .iter()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .filter_map(|v| v["name"].as_str())
        .collect();
    if storage.len() != 1 {
        return Err(inv(
            "spec.versions",
            "Invalid value: must have exactly one version marked as storage version",
        ));
    }
    let storage_version = storage[0].to_string();
    let mut out = Vec::new();
    for v in versions {
        let vname = v["name"]
            .as_str()
            .ok_or_else(|| inv("spec.versions[].name", "Required value"))?;
        if v["served"].as_bool() != Some(true) {
            continue;
        }
        let schema = Schema::compile(crd, vname).map_err(|msgs| {
            let causes: Vec<(String, String)> =
                msgs.into_iter().map(|m| (String::new(), m)).collect();
            ApiError::invalid(
                "apiextensions.k8s.io",
                "CustomResourceDefinition",
                name,
                &causes,
            )
        })?;
        let sub = &v["subresources"];
        let scale = sub
            .get("scale")
            .filter(|s| s.is_object())
            .map(|s| ScaleSpec {
                spec_replicas_path: s["specReplicasPath"]
                    .as_str()
                    .unwrap_or(".spec.replicas")
                    .into(),
                status_replicas_path: s["statusReplicasPath"]
                    .as_str()
                    .unwrap_or(".status.replicas")
                    .into(),
                label_selector_path: s["labelSelectorPath"].as_str().map(str::to_string),
            });
        let extra_fields = v["selectableFields"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|f| f["jsonPath"].as_str())
                    .map(|p| p.trim_start_matches('.').to_string())
                    .collect()
            })
            .unwrap_or_default();
        out.push(ResourceType {
            group: group.into(),
            version: vname.into(),
            storage_version: storage_version.clone(),
            kind: kind.into(),
            plural: plural.into(),
            singular: names["singular"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| kind.to_lowercase()),
            short_names: strs(&names["shortNames"]),
            categories: strs(&names["categories"]),
            namespaced,
            status_subresource: sub.get("status").is_some_and(|s| !s.is_null()),
            scale,
            generation: true,
            custom: true,
            schema: Some(Arc::new(schema)),
            extra_fields,
        });
    }
    Ok(out)
}
