//! ProvScheme: a provisioning scheme and its machines (`New-ProvScheme`, `Set-ProvScheme`).
//!
//! Every change of the configuration (everything but `machineCount`, `updateWindow`,
//! `maxVersions` and `deletionPolicy`) makes a new numbered version; see
//! [`ProvSchemeSpec::configuration`].

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{
    Condition, DeletionPolicy, NetworkMapping, SessionSupport, TaskStatus, TenancyType,
    conditions_schema, metadata_schema, network_mapping_schema,
};
use super::machine_size::MachineSize;

/// A provisioning scheme: the configuration new machines are created from, its version history,
/// and the number of machines wanted.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "mcs.imaging.dev",
    version = "v1alpha1",
    kind = "ProvScheme",
    namespaced,
    status = "ProvSchemeStatus",
    shortname = "ps",
    category = "mcs",
    doc = "A provisioning scheme: versioned machine configuration and its machines.",
    scale(
        spec_replicas_path = ".spec.machineCount",
        status_replicas_path = ".status.machineCount",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Image",
        type_ = "string",
        json_path = ".spec.imageVersionSpecRef"
    ),
    printcolumn(
        name = "Version",
        type_ = "integer",
        json_path = ".status.provisioningSchemeVersion"
    ),
    printcolumn(name = "State", type_ = "string", json_path = ".status.task.taskState"),
    printcolumn(
        name = "Progress",
        type_ = "integer",
        json_path = ".status.task.taskProgress"
    ),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyMachines"),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".spec.machineCount"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!(has(self.vmCpuCount) || has(self.vmMemoryMB)) || !has(self.serviceOffering)").message("spec.vmCpuCount and spec.vmMemoryMB cannot be used with spec.serviceOffering"))]
#[x_kube(validation = Rule::new("self.useWriteBackCache || (!has(self.writeBackCacheDiskSizeGB) && !has(self.writeBackCacheMemorySizeMB))").message("spec.writeBackCacheDiskSizeGB and spec.writeBackCacheMemorySizeMB can only be set when the scheme was created with spec.useWriteBackCache"))]
#[x_kube(validation = Rule::new("has(self.machineProfile) == has(oldSelf.machineProfile)").message("spec.machineProfile cannot be added to or removed from an existing scheme (MachineProfileUpdateNotSupported)"))]
#[serde(rename_all = "camelCase")]
pub struct ProvSchemeSpec {
    /// The prepared ImageVersionSpec (same namespace) machines are created from; must be in
    /// state Success. Changing it is `Set-ProvSchemeImage`: a configuration change.
    #[schemars(length(min = 1, max = 253))]
    pub image_version_spec_ref: String,
    /// The HostingUnit (same namespace) machines are created on.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.hostingUnitRef is immutable"))]
    pub hosting_unit_ref: String,
    /// The IdentityPool (same namespace) machines are named from.
    #[schemars(length(min = 1, max = 253))]
    pub identity_pool_ref: String,
    /// Whether machines are reset to a clean state on each start.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.cleanOnBoot is immutable"))]
    pub clean_on_boot: bool,
    /// NIC index to network inventory path. Never empty.
    #[x_kube(validation = Rule::new("size(self) > 0").message("spec.networkMapping must not be empty"))]
    #[x_kube(validation = Rule::new("self.all(k, size(self[k]) > 0)").message("spec.networkMapping values must be network paths, not empty"))]
    #[schemars(schema_with = "network_mapping_schema")]
    pub network_mapping: NetworkMapping,
    /// Service offering or CPU and memory of machines.
    #[serde(flatten)]
    pub size: MachineSize,
    /// Machine profile inventory path: it names a `.vm`, `.templatespecversion`,
    /// `.launchtemplateversion` or `.machineprofile` item. Cannot be added or removed after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('(?i)\\\\.(vm|templatespecversion|launchtemplateversion|machineprofile)$')").message("spec.machineProfile must name a machine profile item: a .vm (the template VM), .templatespecversion, .launchtemplateversion or .machineprofile (MachineProfilePathResolutionFailed)"))]
    #[schemars(length(min = 1, max = 4096))]
    pub machine_profile: Option<String>,
    /// Hypervisor-specific properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub custom_properties: Option<String>,
    /// Security groups applied to machines, as inventory paths of the hosting unit
    /// (`XDHyp:\HostingUnits\<hu>\<group>.securitygroup`). A path that does not name a group
    /// of the hosting unit fails with `SecurityGroupPathResolutionFailed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 4096)))]
    pub security_groups: Vec<String>,
    /// Tenancy of machines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenancy_type: Option<TenancyType>,
    /// Use a write-back cache disk. Fixed at creation.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.useWriteBackCache is immutable: it is fixed when the scheme is created"))]
    pub use_write_back_cache: bool,
    /// Write-back cache disk size in GiB (only with useWriteBackCache).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "writeBackCacheDiskSizeGB"
    )]
    #[schemars(range(min = 1, max = 65536))]
    pub write_back_cache_disk_size_gb: Option<i32>,
    /// Write-back cache memory in MiB; 0 disables the memory cache (only with useWriteBackCache).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "writeBackCacheMemorySizeMB"
    )]
    #[schemars(range(min = 0, max = 1048576))]
    pub write_back_cache_memory_size_mb: Option<i32>,
    /// A hint for how many machines the backend may create in one batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub initial_batch_size_hint: Option<i32>,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "metadata_schema")]
    pub metadata: BTreeMap<String, String>,
    /// How many machines the scheme should have (also the scale subresource).
    #[serde(default)]
    #[schemars(range(min = 0, max = 100000))]
    pub machine_count: i32,
    /// At most this many versions are kept (`MaxProvSchemeVersions`).
    #[serde(default = "default_max_versions")]
    #[schemars(range(min = 1, max = 32000))]
    pub max_versions: i32,
    /// When existing machines may be rebuilt from a newer version (`Set-ProvVMUpdateTimeWindow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_window: Option<UpdateWindow>,
    /// What happens to a machine's disks when the machine is removed.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

fn default_max_versions() -> i32 {
    99
}

/// The time window in which existing machines are brought up to date on their next start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateWindow {
    /// When the window opens (RFC 3339).
    #[schemars(regex(
        pattern = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$"
    ))]
    pub start_time: String,
    /// How long it stays open, in minutes; `-1` keeps it open until the next start time is set.
    #[schemars(range(min = -1, max = 525600))]
    pub duration_minutes: i64,
}

/// The observed state of a provisioning scheme.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProvSchemeStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The current version number (`ProvisioningSchemeVersion`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_scheme_version: Option<i64>,
    /// The highest version number ever made; numbers are never reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub highest_version: Option<i64>,
    /// A summary of the stored versions, newest first (the versions themselves are
    /// ControllerRevisions labelled `mcs.imaging.dev/provscheme`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<VersionSummary>,
    /// The prepared images this scheme has used, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_history: Vec<ImageHistoryEntry>,
    /// Session support, fixed from the first image's definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_support: Option<SessionSupport>,
    /// The scheme's task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskStatus>,
    /// Machines that exist (the scale subresource's status replicas).
    #[serde(default)]
    pub machine_count: i32,
    /// Machines that are ready.
    #[serde(default)]
    pub ready_machines: i32,
    /// Machines built from the current version.
    #[serde(default)]
    pub up_to_date_machines: i32,
    /// Machines waiting to be rebuilt from the current version.
    #[serde(default)]
    pub pending_update_machines: i32,
    /// Label selector of the scheme's machines (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Standard conditions (`Ready`, `Progressing`, `Degraded`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// One stored version of a scheme.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionSummary {
    /// The version number.
    pub number: i64,
    /// Content hash of the configuration (`sha256:...`).
    pub hash: String,
    /// When the version was made (RFC 3339).
    pub created: String,
    /// What changed against the version before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<String>,
}

/// One prepared image a scheme has used.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageHistoryEntry {
    /// The prepared ImageVersionSpec.
    pub image_version_spec: String,
    /// When the scheme started using it (RFC 3339).
    pub date: String,
    /// Whether it is the scheme's current image.
    pub current: bool,
}
