//! ImageVersionSpec: the master image of a version (`Add-ProvImageVersionSpec`) or an image
//! prepared from it (`New-ProvImageVersionSpec`).

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{
    Condition, DeletionPolicy, ImageStatus, NetworkMapping, SpecKind, TaskStatus,
    conditions_schema, metadata_schema, named_list_schema, network_mapping_schema,
};
use super::machine_size::MachineSize;

/// Exactly one of `master` or `prepared`. The spec is immutable once created: a different image
/// is a new spec.
///
/// Named `...Fields` because `ImageVersionSpecSpec` would stutter.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "mcs.imaging.dev",
    version = "v1alpha1",
    kind = "ImageVersionSpec",
    namespaced,
    status = "ImageVersionSpecStatus",
    shortname = "imgspec",
    category = "mcs",
    doc = "A master image of an image version, or an image prepared from one.",
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".spec.imageVersionRef"
    ),
    printcolumn(name = "Kind", type_ = "string", json_path = ".status.specKind"),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.imageVersionSpecStatus"
    ),
    printcolumn(name = "State", type_ = "string", json_path = ".status.task.taskState"),
    printcolumn(
        name = "Progress",
        type_ = "integer",
        json_path = ".status.task.taskProgress"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("has(self.master) != has(self.prepared)").message("exactly one of spec.master or spec.prepared must be set"))]
#[x_kube(validation = Rule::new("self.imageVersionRef == oldSelf.imageVersionRef && (has(self.master) ? has(oldSelf.master) && self.master == oldSelf.master : true) && (has(self.prepared) ? has(oldSelf.prepared) && self.prepared == oldSelf.prepared : true)").message("spec is immutable: an image version spec cannot change once created; create a new one"))]
#[serde(rename_all = "camelCase")]
pub struct ImageVersionSpecFields {
    /// The ImageVersion (same namespace) this spec belongs to.
    #[schemars(length(min = 1, max = 253))]
    pub image_version_ref: String,
    /// A master image on a hosting unit (`Add-ProvImageVersionSpec`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<MasterImageSpec>,
    /// An image prepared from a master spec (`New-ProvImageVersionSpec`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepared: Option<PreparedImageSpec>,
    /// What happens to the prepared disks when this spec is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// A master image: a snapshot of a VM on a hosting unit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MasterImageSpec {
    /// The HostingUnit (same namespace) the master image lives on.
    #[schemars(length(min = 1, max = 253))]
    pub hosting_unit_ref: String,
    /// The snapshot's inventory path, e.g. `XDHyp:\HostingUnits\hu\win11.vm\base.snapshot`.
    #[schemars(length(min = 1, max = 4096))]
    pub master_image_path: String,
}

/// How to prepare an image from a master spec.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("!(has(self.vmCpuCount) || has(self.vmMemoryMB)) || !has(self.serviceOffering)").message("spec.prepared.vmCpuCount and spec.prepared.vmMemoryMB cannot be used with spec.prepared.serviceOffering"))]
#[serde(rename_all = "camelCase")]
pub struct PreparedImageSpec {
    /// The master ImageVersionSpec (same namespace) to prepare from.
    #[schemars(length(min = 1, max = 253))]
    pub source_spec_ref: String,
    /// NIC index to network inventory path. Required, never empty.
    #[x_kube(validation = Rule::new("size(self) > 0").message("spec.prepared.networkMapping must not be empty"))]
    #[x_kube(validation = Rule::new("self.all(k, size(self[k]) > 0)").message("spec.prepared.networkMapping values must be network paths, not empty"))]
    #[schemars(schema_with = "network_mapping_schema")]
    pub network_mapping: NetworkMapping,
    /// Service offering or CPU and memory of machines.
    #[serde(flatten)]
    pub size: MachineSize,
    /// Machine profile inventory path: the VM (or template spec version, launch template
    /// version, Local `.machineprofile`) whose properties new machines copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('(?i)\\\\.(vm|templatespecversion|launchtemplateversion|machineprofile)$')").message("spec.prepared.machineProfile must name a machine profile item: a .vm (the template VM), .templatespecversion, .launchtemplateversion or .machineprofile (MachineProfilePathResolutionFailed)"))]
    #[schemars(length(min = 1, max = 4096))]
    pub machine_profile: Option<String>,
    /// Hypervisor-specific properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub custom_properties: Option<String>,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "metadata_schema")]
    pub metadata: BTreeMap<String, String>,
}

/// The observed state of an image version spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageVersionSpecStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Master or prepared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_kind: Option<SpecKind>,
    /// Unknown, InProgress, Success or Failed.
    #[serde(default)]
    pub image_version_spec_status: ImageStatus,
    /// The hosting unit the image lives on (for prepared specs: the source's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosting_unit_name: Option<String>,
    /// The resolved master image path (relative to the hosting unit, as the SDK shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_image: Option<String>,
    /// Virtual disk size in GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_size_gb: Option<i64>,
    /// Virtual disk size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_size_bytes: Option<i64>,
    /// The preparation task (prepared specs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskStatus>,
    /// The prepared image's copies, one per storage of the hosting unit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "named_list_schema::<ImageInstance>")]
    pub instances: Vec<ImageInstance>,
    /// How many provisioning schemes use this spec.
    #[serde(default)]
    pub provisioning_scheme_count: i32,
    /// Standard conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// One copy of a prepared image.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageInstance {
    /// The storage's name.
    pub name: String,
    /// Where the copy is, relative to the storage.
    pub path: String,
    /// Whether the copy was verified against the consolidated image.
    #[serde(default)]
    pub verified: bool,
}
