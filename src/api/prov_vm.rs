//! ProvVM: one machine of a provisioning scheme (`New-ProvVM`, `Get-ProvVM`, `Set-ProvVM`).

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{Condition, TaskStatus, conditions_schema, named_list_schema};
use super::machine_size::MachineSize;

/// One machine, created and owned by its ProvScheme. Users set `powerState` (`Running` or
/// `Stopped`) and the per-machine overrides; the rest is the operator's.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "mcs.imaging.dev",
    version = "v1alpha1",
    kind = "ProvVm",
    plural = "provvms",
    namespaced,
    status = "ProvVmStatus",
    shortname = "pvm",
    category = "mcs",
    doc = "One machine of a provisioning scheme.",
    printcolumn(name = "Machine", type_ = "string", json_path = ".spec.machineName"),
    printcolumn(name = "Scheme", type_ = "string", json_path = ".spec.provSchemeRef"),
    printcolumn(
        name = "Version",
        type_ = "integer",
        json_path = ".status.provisioningSchemeVersion"
    ),
    printcolumn(name = "Update", type_ = "string", json_path = ".status.updateStatus"),
    printcolumn(name = "Power", type_ = "string", json_path = ".status.powerState"),
    printcolumn(name = "VM Status", type_ = "string", json_path = ".status.vmStatus"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.task.taskState"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ProvVmSpec {
    /// The owning ProvScheme.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.provSchemeRef is immutable"))]
    pub prov_scheme_ref: String,
    /// The machine's name from the identity pool (e.g. `VDI-001`).
    #[schemars(length(min = 1, max = 15))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.machineName is immutable"))]
    pub machine_name: String,
    /// The machine's index in the identity pool.
    #[schemars(range(min = 0))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.machineIndex is immutable"))]
    pub machine_index: i64,
    /// Desired power state: `Running` or `Stopped` (the SDK's `On`/`Off`, which YAML 1.1 readers
    /// such as kubectl take for booleans); a transition to `Running` is a start (and, inside the
    /// update window, an update).
    #[serde(default)]
    pub power_state: DesiredPowerState,
    /// Per-machine settings that win over the scheme's (`Set-ProvVM`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<MachineOverrides>,
}

/// The power state a user asks for (`spec.powerState`). Unlike [`PowerState`] its values are no
/// YAML 1.1 booleans, so `powerState: Running` stays a string for kubectl, Helm and Argo CD.
/// Objects stored with the SDK's `On`/`Off` still read (as `Running`/`Stopped`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum DesiredPowerState {
    /// Started (the SDK's `On`).
    #[serde(alias = "On")]
    Running,
    /// Shut down (the SDK's `Off`); the default.
    #[default]
    #[serde(alias = "Off")]
    Stopped,
}

impl From<DesiredPowerState> for PowerState {
    fn from(desired: DesiredPowerState) -> Self {
        match desired {
            DesiredPowerState::Running => PowerState::On,
            DesiredPowerState::Stopped => PowerState::Off,
        }
    }
}

/// A machine's actual power state as the SDK reports it (`status.powerState`, written by the
/// operator).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum PowerState {
    /// Running.
    On,
    /// Stopped.
    Off,
}

/// Settings of one machine that override its scheme's.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("!(has(self.vmCpuCount) || has(self.vmMemoryMB)) || !has(self.serviceOffering)").message("spec.overrides.vmCpuCount and spec.overrides.vmMemoryMB cannot be used with spec.overrides.serviceOffering"))]
#[serde(rename_all = "camelCase")]
pub struct MachineOverrides {
    /// Service offering or CPU and memory of machines.
    #[serde(flatten)]
    pub size: MachineSize,
}

/// Whether a machine matches its scheme's current version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum UpdateStatus {
    /// Built from the scheme's current version.
    UpToDate,
    /// A newer version exists; the machine is rebuilt on its next start inside the update window.
    PendingUpdate,
    /// Being rebuilt.
    Updating,
    /// The last rebuild failed; see the task.
    UpdateFailed,
}

/// The observed state of a machine.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProvVmStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The scheme version the machine was built from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_scheme_version: Option<i64>,
    /// The prepared ImageVersionSpec the machine was built from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_version_spec: Option<String>,
    /// Up to date or pending an update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_status: Option<UpdateStatus>,
    /// Actual power state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_state: Option<PowerState>,
    /// The hypervisor's own status of the machine, as it reports it: on KubeVirt the
    /// VirtualMachine's `status.printableStatus` (`Running`, `Stopped`, `Provisioning`,
    /// `ErrorDataVolumeNotFound`...). Unset when the backend has none (Local) or the machine is
    /// not there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub vm_status: Option<String>,
    /// The machine's disks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "named_list_schema::<MachineDisk>")]
    pub disks: Vec<MachineDisk>,
    /// The machine's current or last task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskStatus>,
    /// Standard conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// One disk of a machine.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineDisk {
    /// The disk's role: `os`, `identity` or `writeBackCache`.
    pub name: String,
    /// Where it is, relative to its storage.
    pub path: String,
    /// The storage it is on.
    pub storage: String,
}
