//! HostingUnit: the resources of a connection that machines may use (`XDHyp:\HostingUnits\<name>`).

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{Condition, conditions_schema, named_list_schema};

/// A set of storages, networks and service offerings of one hypervisor connection, addressed in
/// inventory paths as `XDHyp:\HostingUnits\<metadata.name>\...`.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "mcs.imaging.dev",
    version = "v1alpha1",
    kind = "HostingUnit",
    namespaced,
    status = "HostingUnitStatus",
    shortname = "hu",
    category = "mcs",
    doc = "The resources of a hypervisor connection that provisioning may use.",
    printcolumn(
        name = "Connection",
        type_ = "string",
        json_path = ".spec.connectionRef"
    ),
    printcolumn(
        name = "Storages",
        type_ = "integer",
        json_path = ".status.inventory.storagesFound"
    ),
    printcolumn(
        name = "Images",
        type_ = "integer",
        json_path = ".status.inventory.masterImages"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct HostingUnitSpec {
    /// The HypervisorConnection (same namespace) whose resources this unit uses.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.connectionRef is immutable"))]
    pub connection_ref: String,
    /// Where disks are stored. Prepared images are replicated to every storage. Two storages
    /// never name one directory (the same root and path; the controller also checks other
    /// spellings, `lab/` or `./lab`).
    #[x_kube(validation = Rule::new("self.all(a, self.all(b, a.name == b.name || a.root != b.root || (has(a.path) ? a.path : '') != (has(b.path) ? b.path : '')))").message("spec.storages: two storages name the same directory (the same root and path); each storage must be a directory of its own"))]
    #[schemars(
        length(min = 1, max = 64),
        schema_with = "named_list_schema::<HostingUnitStorage>"
    )]
    pub storages: Vec<HostingUnitStorage>,
    /// Networks that network mappings may name (`XDHyp:\HostingUnits\<hu>\<name>.network`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        schema_with = "named_list_schema::<HostingUnitNetwork>"
    )]
    pub networks: Vec<HostingUnitNetwork>,
    /// Named CPU/memory presets (`XDHyp:\HostingUnits\<hu>\<name>.serviceoffering`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        schema_with = "named_list_schema::<ServiceOffering>"
    )]
    pub service_offerings: Vec<ServiceOffering>,
    /// Security groups that schemes may apply to machines
    /// (`XDHyp:\HostingUnits\<hu>\<name>.securitygroup`). The Local backend lists them in the
    /// inventory and checks scheme references against them; it enforces no firewall rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        schema_with = "named_list_schema::<HostingUnitSecurityGroup>"
    )]
    pub security_groups: Vec<HostingUnitSecurityGroup>,
}

/// One storage of a hosting unit: a directory under one of the connection's storage roots.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostingUnitStorage {
    /// The storage's name, unique in the hosting unit.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// The connection's storage root this storage lives in.
    #[schemars(length(min = 1, max = 63))]
    pub root: String,
    /// A directory relative to the root (default: the root itself). Never absolute, never `..`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), regex(pattern = r"^[^/]"))]
    pub path: Option<String>,
}

/// A network machines can attach NICs to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostingUnitNetwork {
    /// The network's name as it appears in inventory paths.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Backend-specific identifier (a bridge for Local, a NetworkAttachmentDefinition for KubeVirt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub backing: Option<String>,
}

/// A security group machines can be placed in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostingUnitSecurityGroup {
    /// The group's name as it appears in inventory paths.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// What the group allows, for people reading the inventory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
}

/// A named CPU and memory preset (a cloud "instance type").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceOffering {
    /// The offering's name as it appears in inventory paths.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Virtual CPUs.
    #[schemars(range(min = 1, max = 1024))]
    pub cpu_count: i32,
    /// Memory in MiB.
    #[serde(rename = "memoryMB")]
    #[schemars(range(min = 1))]
    pub memory_mb: i64,
}

/// The observed state of a hosting unit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostingUnitStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// What the backend found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<HostingUnitInventory>,
    /// Standard conditions (`Ready` is False with reason `StorageNotFound` when a storage is missing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// Inventory counts of a hosting unit, as resolved by its backend.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostingUnitInventory {
    /// Per storage: whether it exists and its free space.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "named_list_schema::<StorageInventory>")]
    pub storages: Vec<StorageInventory>,
    /// Storages that exist.
    pub storages_found: i32,
    /// Networks offered.
    pub networks: i32,
    /// Service offerings offered.
    pub service_offerings: i32,
    /// Security groups offered.
    #[serde(default)]
    pub security_groups: i32,
    /// Master images (qcow2 files) found.
    pub master_images: i32,
    /// Snapshots found across the master images.
    pub snapshots: i32,
}

/// One storage as the backend sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageInventory {
    /// The storage's name.
    pub name: String,
    /// Whether the directory exists.
    pub found: bool,
    /// Free bytes, when found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_bytes: Option<i64>,
}
