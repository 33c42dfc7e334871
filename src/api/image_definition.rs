//! ImageDefinition: a logical group of image versions (`New-ProvImageDefinition`).

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{Condition, SessionSupport, conditions_schema};

/// A logical grouping of the versions of one image: its OS and session support, and the
/// connections that hold its master images.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "mcs.imaging.dev",
    version = "v1alpha1",
    kind = "ImageDefinition",
    namespaced,
    status = "ImageDefinitionStatus",
    shortname = "imgdef",
    category = "mcs",
    doc = "A logical grouping of image versions (New-ProvImageDefinition).",
    printcolumn(name = "OS", type_ = "string", json_path = ".spec.osType"),
    printcolumn(
        name = "Session",
        type_ = "string",
        json_path = ".spec.vdaSessionSupport"
    ),
    printcolumn(
        name = "Latest",
        type_ = "integer",
        json_path = ".status.latestVersion"
    ),
    printcolumn(
        name = "Versions",
        type_ = "integer",
        json_path = ".status.versionsCount"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ImageDefinitionSpec {
    /// The operating system of the image.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.osType is immutable"))]
    pub os_type: OsType,
    /// Single- or multi-session machines.
    #[serde(rename = "vdaSessionSupport")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.vdaSessionSupport is immutable"))]
    pub vda_session_support: SessionSupport,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// The hypervisor connections that hold master images of this definition
    /// (`Add-ProvImageDefinitionConnection`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), schema_with = "connections_schema")]
    pub connections: Vec<ImageDefinitionConnection>,
}

/// The operating system of an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum OsType {
    /// Microsoft Windows.
    Windows,
    /// Linux.
    Linux,
}

/// A connection attached to an image definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageDefinitionConnection {
    /// The HypervisorConnection (same namespace).
    #[schemars(length(min = 1, max = 253))]
    pub connection_ref: String,
    /// Hypervisor-specific properties for this definition on this connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub custom_properties: Option<String>,
}

fn connections_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<ImageDefinitionConnection>>();
    let object = schema.ensure_object();
    object.insert("x-kubernetes-list-type".into(), "map".into());
    object.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["connectionRef"]),
    );
    schema
}

/// The observed state of an image definition.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageDefinitionStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The highest version number ever assigned (numbers are never reused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_version: Option<i64>,
    /// How many versions exist now.
    #[serde(default)]
    pub versions_count: i32,
    /// Standard conditions; deletion waits with a condition naming the schemes that use it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}
