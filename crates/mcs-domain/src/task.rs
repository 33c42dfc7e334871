//! Long-running tasks: the SDK's task states and the status record of one task.
//!
//! A task is the unit of long work (preparing an image, creating a scheme, creating machines).
//! Its record lives in the owning object's `status.task`. The state names are the Citrix SDK's
//! (`NewProvisioningSchemeState` and the `New-ProvImageVersionSpec` task states).

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What kind of work a task does; decides which states it may pass through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum TaskType {
    /// Preparing an image version spec from a master spec (`New-ProvImageVersionSpec`).
    NewImageVersionSpec,
    /// Creating a provisioning scheme (`New-ProvScheme`).
    NewProvScheme,
    /// Creating one machine (`New-ProvVM`).
    NewProvVm,
    /// Rebuilding one machine from the scheme's current version (`Set-ProvVMUpdateTimeWindow`).
    UpdateProvVm,
}

/// The state of a task, named as in the Citrix SDK.
///
/// `Processing` is the start; `Finished` is success; `Canceled` and every failure state are
/// terminal as well.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum TaskState {
    /// The task has just begun and has not done anything yet.
    Processing,
    /// The task is locating resources from other services.
    LocatingResources,
    /// The task is consolidating the master image.
    ConsolidatingMasterImage,
    /// The task is replicating the consolidated master image to every storage.
    ReplicatingMasterImage,
    /// The task is storing the image version spec.
    StoringImageVersionSpec,
    /// The task is creating machine disks and definitions.
    CreatingMachines,
    /// The task is committing the provisioning scheme.
    CommittingScheme,
    /// The task has completed with no errors.
    Finished,
    /// Stopped by user intervention (the cancel annotation, or deleting the object).
    Canceled,
    /// Failed: the required hosting unit could not be located.
    HostingUnitNotFound,
    /// Failed: the required snapshot could not be located.
    SnapshotNotFound,
    /// Failed: the image version already has a prepared spec for that hosting unit.
    ImageVersionSpecAlreadyExists,
    /// Failed: the master image's hosting unit is not one the image definition uses.
    HostingUnitMismatch,
    /// Failed: the master image path does not refer to a snapshot item.
    MasterImageNotASnapshot,
    /// Failed: the master snapshot has an invalid configuration.
    InvalidSnapshotConfiguration,
    /// Failed: the master snapshot is in an invalid state (corrupt, or in use).
    InvalidSnapshotState,
    /// Failed: the hypervisor does not have enough resources (e.g. disk space).
    InsufficientResources,
    /// Failed: no associated storage was found in the hosting unit.
    StorageNotFound,
    /// Failed: the disk consolidation failed.
    DiskConsolidationFailed,
    /// Failed: the identity pool could not be located.
    IdentityPoolNotFound,
    /// Failed: a provisioning scheme with that name already exists.
    ProvisioningSchemeAlreadyExists,
    /// Failed: another task is already running for the provisioning scheme.
    TaskAlreadyRunningForProvisioningScheme,
    /// Failed: the image version spec is not prepared, or not in state `Success`.
    ImageVersionSpecNotUsable,
    /// Failed: a network mapping contains an invalid or empty network path.
    NetworkPathResolutionFailed,
    /// Failed: the service offering path could not be resolved.
    ServiceOfferingPathResolutionFailed,
    /// Failed: the machine profile path could not be resolved.
    MachineProfileNotFound,
    /// Failed: the backend does not support the operation.
    NotSupported,
    /// Failed: an unexpected error (see `terminatingError`).
    UnexpectedError,
}

/// The workflow status of a task, as the SDK reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum WorkflowStatus {
    /// The task is running.
    Running,
    /// The task finished successfully.
    Completed,
    /// The task ended in a failure state or was canceled.
    Terminated,
}

/// Diagnostic information when a task fails.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TerminatingError {
    /// The stable reason, e.g. `SnapshotNotFound`.
    pub reason: String,
    /// A human-readable message naming what failed and why.
    pub message: String,
}

/// The status record of one task, stored in the owning object's `status.task`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    /// Unique id of the task (a UUID).
    pub task_id: String,
    /// The kind of work.
    pub task_type: TaskType,
    /// The SDK task state.
    pub task_state: TaskState,
    /// Whether the task is still processing.
    pub active: bool,
    /// Operation-specific phase within the current state (e.g. `ValidatingInputs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_operation: Option<String>,
    /// Progress of the task, 0-100.
    #[schemars(range(min = 0, max = 100))]
    pub task_progress: i32,
    /// When the task started.
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub date_started: Timestamp,
    /// When the task record was last updated.
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub last_update_time: Timestamp,
    /// When the task completed (any terminal state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub date_finished: Option<Timestamp>,
    /// Seconds the task has spent in active execution.
    pub active_elapsed_time: i64,
    /// When the task is expected to complete, estimated from its progress rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub task_expected_completion: Option<Timestamp>,
    /// Diagnostic information if the task failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminating_error: Option<TerminatingError>,
    /// The workflow status.
    pub workflow_status: WorkflowStatus,
}
