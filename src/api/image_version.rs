//! ImageVersion: one version of an image definition (`New-ProvImageVersion`).

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{Condition, ImageStatus, conditions_schema};

/// One version of an image definition. Its number is assigned by the operator: per definition,
/// monotonic, never reused.
///
/// Named `...Fields` rather than `ImageVersionSpec` because that name is the kind
/// [`ImageVersionSpec`](super::ImageVersionSpec).
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "mcs.imaging.dev",
    version = "v1alpha1",
    kind = "ImageVersion",
    namespaced,
    status = "ImageVersionStatus",
    shortname = "imgver",
    category = "mcs",
    doc = "One version of an image definition (New-ProvImageVersion).",
    printcolumn(
        name = "Definition",
        type_ = "string",
        json_path = ".spec.imageDefinitionRef"
    ),
    printcolumn(
        name = "Version",
        type_ = "integer",
        json_path = ".status.versionNumber"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.imageVersionStatus"
    ),
    printcolumn(name = "Specs", type_ = "integer", json_path = ".status.specsCount"),
    printcolumn(
        name = "Schemes",
        type_ = "integer",
        json_path = ".status.provisioningSchemeCount"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ImageVersionFields {
    /// The ImageDefinition (same namespace) this is a version of.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.imageDefinitionRef is immutable"))]
    pub image_definition_ref: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
}

/// The observed state of an image version.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageVersionStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The version number within the definition, assigned once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_number: Option<i64>,
    /// Aggregated from the version's specs.
    #[serde(default)]
    pub image_version_status: ImageStatus,
    /// How many specs (master and prepared) the version has.
    #[serde(default)]
    pub specs_count: i32,
    /// How many provisioning schemes use a prepared spec of this version.
    #[serde(default)]
    pub provisioning_scheme_count: i32,
    /// Standard conditions; deletion waits with a condition naming the schemes that use it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}
