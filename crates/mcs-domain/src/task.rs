//! Long-running tasks: the SDK's task states and the status record of one task.
//!
//! A task is the unit of long work (preparing an image, creating a scheme, creating machines).
//! Its record lives in the owning object's `status.task`. The state names are the Citrix SDK's
//! (`NewProvisioningSchemeState` and the `New-ProvImageVersionSpec` task states).

use std::fmt;

use jiff::{SignedDuration, Timestamp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Reason;

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
    /// Failed: a security group path could not be resolved in the hosting unit.
    SecurityGroupPathResolutionFailed,
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

/// The operation a freshly started task reports, as the SDK does.
pub const INITIAL_OPERATION: &str = "ValidatingInputs";

/// The highest progress a task that has not finished may report.
pub const MAX_RUNNING_PROGRESS: i32 = 99;

/// Why a task operation was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// The task is already in a terminal state; terminal states are final.
    #[error(
        "the {task_type} task is already {state}; a finished, failed or canceled task cannot change"
    )]
    AlreadyTerminal {
        /// The kind of task.
        task_type: TaskType,
        /// Its terminal state.
        state: TaskState,
    },
    /// The transition is not allowed for this kind of task.
    #[error("a {task_type} task cannot go from {from} to {to}")]
    IllegalTransition {
        /// The current state.
        from: TaskState,
        /// The requested state.
        to: TaskState,
        /// The kind of task.
        task_type: TaskType,
    },
    /// [`TaskStatus::fail`] was called with a state that is not a failure state of the task type.
    #[error("{state} is not a failure state of a {task_type} task")]
    NotAFailureState {
        /// The state passed in.
        state: TaskState,
        /// The kind of task.
        task_type: TaskType,
    },
}

impl Reason for TaskError {
    fn reason(&self) -> &'static str {
        match self {
            TaskError::AlreadyTerminal { .. } => "TaskAlreadyTerminal",
            TaskError::IllegalTransition { .. } => "IllegalTaskTransition",
            TaskError::NotAFailureState { .. } => "NotAFailureState",
        }
    }
}

impl TaskState {
    /// Every state, in declaration order.
    pub const ALL: [TaskState; 29] = [
        TaskState::Processing,
        TaskState::LocatingResources,
        TaskState::ConsolidatingMasterImage,
        TaskState::ReplicatingMasterImage,
        TaskState::StoringImageVersionSpec,
        TaskState::CreatingMachines,
        TaskState::CommittingScheme,
        TaskState::Finished,
        TaskState::Canceled,
        TaskState::HostingUnitNotFound,
        TaskState::SnapshotNotFound,
        TaskState::ImageVersionSpecAlreadyExists,
        TaskState::HostingUnitMismatch,
        TaskState::MasterImageNotASnapshot,
        TaskState::InvalidSnapshotConfiguration,
        TaskState::InvalidSnapshotState,
        TaskState::InsufficientResources,
        TaskState::StorageNotFound,
        TaskState::DiskConsolidationFailed,
        TaskState::IdentityPoolNotFound,
        TaskState::ProvisioningSchemeAlreadyExists,
        TaskState::TaskAlreadyRunningForProvisioningScheme,
        TaskState::ImageVersionSpecNotUsable,
        TaskState::NetworkPathResolutionFailed,
        TaskState::ServiceOfferingPathResolutionFailed,
        TaskState::SecurityGroupPathResolutionFailed,
        TaskState::MachineProfileNotFound,
        TaskState::NotSupported,
        TaskState::UnexpectedError,
    ];

    /// The SDK name of the state, identical to its serialized form.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Processing => "Processing",
            TaskState::LocatingResources => "LocatingResources",
            TaskState::ConsolidatingMasterImage => "ConsolidatingMasterImage",
            TaskState::ReplicatingMasterImage => "ReplicatingMasterImage",
            TaskState::StoringImageVersionSpec => "StoringImageVersionSpec",
            TaskState::CreatingMachines => "CreatingMachines",
            TaskState::CommittingScheme => "CommittingScheme",
            TaskState::Finished => "Finished",
            TaskState::Canceled => "Canceled",
            TaskState::HostingUnitNotFound => "HostingUnitNotFound",
            TaskState::SnapshotNotFound => "SnapshotNotFound",
            TaskState::ImageVersionSpecAlreadyExists => "ImageVersionSpecAlreadyExists",
            TaskState::HostingUnitMismatch => "HostingUnitMismatch",
            TaskState::MasterImageNotASnapshot => "MasterImageNotASnapshot",
            TaskState::InvalidSnapshotConfiguration => "InvalidSnapshotConfiguration",
            TaskState::InvalidSnapshotState => "InvalidSnapshotState",
            TaskState::InsufficientResources => "InsufficientResources",
            TaskState::StorageNotFound => "StorageNotFound",
            TaskState::DiskConsolidationFailed => "DiskConsolidationFailed",
            TaskState::IdentityPoolNotFound => "IdentityPoolNotFound",
            TaskState::ProvisioningSchemeAlreadyExists => "ProvisioningSchemeAlreadyExists",
            TaskState::TaskAlreadyRunningForProvisioningScheme => {
                "TaskAlreadyRunningForProvisioningScheme"
            }
            TaskState::ImageVersionSpecNotUsable => "ImageVersionSpecNotUsable",
            TaskState::NetworkPathResolutionFailed => "NetworkPathResolutionFailed",
            TaskState::ServiceOfferingPathResolutionFailed => "ServiceOfferingPathResolutionFailed",
            TaskState::SecurityGroupPathResolutionFailed => "SecurityGroupPathResolutionFailed",
            TaskState::MachineProfileNotFound => "MachineProfileNotFound",
            TaskState::NotSupported => "NotSupported",
            TaskState::UnexpectedError => "UnexpectedError",
        }
    }

    /// Whether the task is still working in this state (not finished, failed or canceled).
    pub fn is_running(self) -> bool {
        matches!(
            self,
            TaskState::Processing
                | TaskState::LocatingResources
                | TaskState::ConsolidatingMasterImage
                | TaskState::ReplicatingMasterImage
                | TaskState::StoringImageVersionSpec
                | TaskState::CreatingMachines
                | TaskState::CommittingScheme
        )
    }

    /// Whether the state is final: `Finished`, `Canceled` or a failure state.
    pub fn is_terminal(self) -> bool {
        !self.is_running()
    }

    /// Whether the state is a failure state. `Canceled` is not a failure (the user stopped the
    /// task) and neither is `Finished`.
    pub fn is_failure(self) -> bool {
        self.is_terminal() && !matches!(self, TaskState::Finished | TaskState::Canceled)
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Running states of a prepared image spec task.
const IMAGE_STEPS: [TaskState; 5] = [
    TaskState::Processing,
    TaskState::LocatingResources,
    TaskState::ConsolidatingMasterImage,
    TaskState::ReplicatingMasterImage,
    TaskState::StoringImageVersionSpec,
];
/// Progress weight of each [`IMAGE_STEPS`] entry; consolidation dominates.
const IMAGE_WEIGHTS: [u8; 5] = [1, 4, 60, 30, 5];

/// Running states of a scheme task.
const SCHEME_STEPS: [TaskState; 4] = [
    TaskState::Processing,
    TaskState::LocatingResources,
    TaskState::ReplicatingMasterImage,
    TaskState::CommittingScheme,
];
/// Progress weight of each [`SCHEME_STEPS`] entry; replication dominates.
const SCHEME_WEIGHTS: [u8; 4] = [2, 8, 70, 20];

/// Running states of a machine task.
const MACHINE_STEPS: [TaskState; 3] = [
    TaskState::Processing,
    TaskState::LocatingResources,
    TaskState::CreatingMachines,
];
/// Progress weight of each [`MACHINE_STEPS`] entry; disk creation dominates.
const MACHINE_WEIGHTS: [u8; 3] = [5, 10, 85];

/// Failure states of a prepared image spec task.
const IMAGE_FAILURES: [TaskState; 12] = [
    TaskState::HostingUnitNotFound,
    TaskState::SnapshotNotFound,
    TaskState::ImageVersionSpecAlreadyExists,
    TaskState::HostingUnitMismatch,
    TaskState::MasterImageNotASnapshot,
    TaskState::InvalidSnapshotConfiguration,
    TaskState::InvalidSnapshotState,
    TaskState::InsufficientResources,
    TaskState::StorageNotFound,
    TaskState::DiskConsolidationFailed,
    TaskState::NotSupported,
    TaskState::UnexpectedError,
];

/// Failure states of a scheme task.
const SCHEME_FAILURES: [TaskState; 13] = [
    TaskState::HostingUnitNotFound,
    TaskState::IdentityPoolNotFound,
    TaskState::ProvisioningSchemeAlreadyExists,
    TaskState::TaskAlreadyRunningForProvisioningScheme,
    TaskState::ImageVersionSpecNotUsable,
    TaskState::NetworkPathResolutionFailed,
    TaskState::ServiceOfferingPathResolutionFailed,
    TaskState::SecurityGroupPathResolutionFailed,
    TaskState::MachineProfileNotFound,
    TaskState::StorageNotFound,
    TaskState::InsufficientResources,
    TaskState::NotSupported,
    TaskState::UnexpectedError,
];

/// Failure states of a machine task.
const MACHINE_FAILURES: [TaskState; 6] = [
    TaskState::HostingUnitNotFound,
    TaskState::StorageNotFound,
    TaskState::InsufficientResources,
    TaskState::InvalidSnapshotState,
    TaskState::NotSupported,
    TaskState::UnexpectedError,
];

impl TaskType {
    /// The SDK-style name of the task type, identical to its serialized form.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskType::NewImageVersionSpec => "NewImageVersionSpec",
            TaskType::NewProvScheme => "NewProvScheme",
            TaskType::NewProvVm => "NewProvVm",
            TaskType::UpdateProvVm => "UpdateProvVm",
        }
    }

    /// The ordered running states of this kind of task; `Finished` follows the last one.
    pub fn steps(self) -> &'static [TaskState] {
        match self {
            TaskType::NewImageVersionSpec => &IMAGE_STEPS,
            TaskType::NewProvScheme => &SCHEME_STEPS,
            TaskType::NewProvVm | TaskType::UpdateProvVm => &MACHINE_STEPS,
        }
    }

    /// The share (percent of the whole task) of each entry of [`TaskType::steps`]; sums to 100.
    pub fn step_weights(self) -> &'static [u8] {
        match self {
            TaskType::NewImageVersionSpec => &IMAGE_WEIGHTS,
            TaskType::NewProvScheme => &SCHEME_WEIGHTS,
            TaskType::NewProvVm | TaskType::UpdateProvVm => &MACHINE_WEIGHTS,
        }
    }

    /// The failure states this kind of task may end in (`Canceled` is separate and always legal
    /// from a running state).
    pub fn failure_states(self) -> &'static [TaskState] {
        match self {
            TaskType::NewImageVersionSpec => &IMAGE_FAILURES,
            TaskType::NewProvScheme => &SCHEME_FAILURES,
            TaskType::NewProvVm | TaskType::UpdateProvVm => &MACHINE_FAILURES,
        }
    }

    /// Whether `state` is one of [`TaskType::failure_states`].
    pub fn is_failure_state(self, state: TaskState) -> bool {
        self.failure_states().contains(&state)
    }

    /// The index of `state` in [`TaskType::steps`], if it is one of them.
    pub fn step_index(self, state: TaskState) -> Option<usize> {
        self.steps().iter().position(|s| *s == state)
    }

    /// Checks a transition `from -> to`.
    ///
    /// Legal: forward along [`TaskType::steps`] (skipping ahead is allowed, staying put is a
    /// no-op, going back is not); `Finished` only from the last step; `Canceled` and this type's
    /// failure states from any running state. Nothing leaves a terminal state.
    pub fn check_transition(self, from: TaskState, to: TaskState) -> Result<(), TaskError> {
        if from.is_terminal() {
            return Err(TaskError::AlreadyTerminal {
                task_type: self,
                state: from,
            });
        }
        let legal = match to {
            TaskState::Canceled => true,
            TaskState::Finished => self.steps().last() == Some(&from),
            _ if to.is_running() => matches!(
                (self.step_index(from), self.step_index(to)),
                (Some(f), Some(t)) if t >= f
            ),
            _ => self.is_failure_state(to),
        };
        if legal {
            Ok(())
        } else {
            Err(TaskError::IllegalTransition {
                from,
                to,
                task_type: self,
            })
        }
    }

    /// Overall progress (0.0..=100.0) of a task that is `step_percent` through running state
    /// `state`: the weights of the earlier steps plus the current step's weighted share.
    /// A state that is not one of this type's steps counts as 0.
    pub fn overall_progress(self, state: TaskState, step_percent: f64) -> f64 {
        let Some(index) = self.step_index(state) else {
            return 0.0;
        };
        let weights = self.step_weights();
        let before: u32 = weights.iter().take(index).map(|w| u32::from(*w)).sum();
        let current = weights.get(index).copied().map_or(0.0, f64::from);
        let pct = if step_percent.is_nan() {
            0.0
        } else {
            step_percent.clamp(0.0, 100.0)
        };
        f64::from(before) + current * pct / 100.0
    }
}

impl fmt::Display for TaskType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whole seconds from `origin` to `t`, rounded towards minus infinity.
fn floor_secs(t: Timestamp, origin: Timestamp) -> i64 {
    let d = t.duration_since(origin);
    d.as_secs() - i64::from(d.subsec_nanos() < 0)
}

impl TaskStatus {
    /// The task with what only moves with the clock (`lastUpdateTime`, the active elapsed time,
    /// the expected completion) set to fixed values: two tasks that differ only by ticking are
    /// equal after it.
    pub fn without_clock(&self) -> TaskStatus {
        TaskStatus {
            last_update_time: self.date_started,
            active_elapsed_time: 0,
            task_expected_completion: None,
            ..self.clone()
        }
    }

    /// Starts a task: `Processing`, active, progress 0, workflow `Running`, operation
    /// `ValidatingInputs`.
    pub fn start(task_type: TaskType, task_id: String, now: Timestamp) -> TaskStatus {
        TaskStatus {
            task_id,
            task_type,
            task_state: TaskState::Processing,
            active: true,
            current_operation: Some(INITIAL_OPERATION.to_string()),
            task_progress: 0,
            date_started: now,
            last_update_time: now,
            date_finished: None,
            active_elapsed_time: 0,
            task_expected_completion: None,
            terminating_error: None,
            workflow_status: WorkflowStatus::Running,
        }
    }

    /// Whether the task has reached a terminal state.
    pub fn is_terminal(&self) -> bool {
        self.task_state.is_terminal()
    }

    /// Moves a running task to `to` (a later step, `Finished`, `Canceled` or a failure state;
    /// see [`TaskType::check_transition`]). Advancing to the current state only refreshes the
    /// timestamps. Entering a new state clears `current_operation`.
    ///
    /// A failure state or `Canceled` gets a generic terminating error; prefer
    /// [`TaskStatus::fail`] and [`TaskStatus::cancel`], which record a real message. On error
    /// the record is unchanged.
    pub fn advance(&mut self, to: TaskState, now: Timestamp) -> Result<(), TaskError> {
        self.task_type.check_transition(self.task_state, to)?;
        let now = self.tick(now);
        if to != self.task_state {
            self.current_operation = None;
        }
        self.task_state = to;
        if to.is_terminal() {
            self.terminate(now);
            if to != TaskState::Finished {
                self.terminating_error = Some(TerminatingError {
                    reason: to.as_str().to_string(),
                    message: format!("the {} task ended in state {to}", self.task_type),
                });
            }
        } else {
            let base = self.task_type.overall_progress(to, 0.0);
            self.raise_progress(base);
            self.estimate_completion(now);
        }
        Ok(())
    }

    /// Reports progress within the current state: `step_percent` (0-100, clamped; NaN counts as
    /// 0) of the current step, and optionally a new `current_operation` (`None` keeps the old
    /// one).
    ///
    /// The overall `task_progress` is the step's weighted share (see [`TaskType::step_weights`]).
    /// It never decreases, and stays at most [`MAX_RUNNING_PROGRESS`] until the task finishes.
    pub fn report_progress(
        &mut self,
        step_percent: f64,
        operation: Option<String>,
        now: Timestamp,
    ) -> Result<(), TaskError> {
        if self.is_terminal() {
            return Err(self.already_terminal());
        }
        let now = self.tick(now);
        let overall = self
            .task_type
            .overall_progress(self.task_state, step_percent);
        self.raise_progress(overall);
        if operation.is_some() {
            self.current_operation = operation;
        }
        self.estimate_completion(now);
        Ok(())
    }

    /// Completes the task: `Finished`, progress 100, workflow `Completed`. Legal only from the
    /// last step of the task type.
    pub fn finish(&mut self, now: Timestamp) -> Result<(), TaskError> {
        self.advance(TaskState::Finished, now)
    }

    /// Fails the task in `state`, which must be one of the type's failure states: records the
    /// terminating error (reason = the state's name), workflow `Terminated`.
    pub fn fail(
        &mut self,
        state: TaskState,
        message: impl Into<String>,
        now: Timestamp,
    ) -> Result<(), TaskError> {
        if self.is_terminal() {
            return Err(self.already_terminal());
        }
        if !self.task_type.is_failure_state(state) {
            return Err(TaskError::NotAFailureState {
                state,
                task_type: self.task_type,
            });
        }
        self.advance(state, now)?;
        self.terminating_error = Some(TerminatingError {
            reason: state.as_str().to_string(),
            message: message.into(),
        });
        Ok(())
    }

    /// Cancels the task (`Canceled`, workflow `Terminated`), recording `message` as the
    /// terminating error with reason `Canceled`.
    pub fn cancel(&mut self, message: impl Into<String>, now: Timestamp) -> Result<(), TaskError> {
        self.advance(TaskState::Canceled, now)?;
        self.terminating_error = Some(TerminatingError {
            reason: TaskState::Canceled.as_str().to_string(),
            message: message.into(),
        });
        Ok(())
    }

    /// Marks a task that is picked up again after an operator restart: sets `last_update_time`
    /// to `now` without counting the time since the last update as active time, so
    /// `active_elapsed_time` keeps growing from its stored value.
    pub fn resume(&mut self, now: Timestamp) -> Result<(), TaskError> {
        if self.is_terminal() {
            return Err(self.already_terminal());
        }
        if now > self.last_update_time {
            self.last_update_time = now;
        }
        Ok(())
    }

    /// Whether a running task has not been updated for longer than `after` (for resume
    /// decisions). Terminal tasks are never stale.
    pub fn is_stale(&self, now: Timestamp, after: SignedDuration) -> bool {
        !self.is_terminal() && now.duration_since(self.last_update_time) > after
    }

    /// Advances the clock of the record and returns the effective time.
    ///
    /// Time never runs backwards in the record: the effective time is the later of `now` and
    /// `last_update_time`. `active_elapsed_time` grows by
    /// `⌊t − date_started⌋ − ⌊last_update_time − date_started⌋` whole seconds (never negative),
    /// so, without restarts, it equals the whole seconds since `date_started` with no rounding
    /// drift; after [`TaskStatus::resume`] it continues from the stored value and the downtime
    /// is not counted.
    fn tick(&mut self, now: Timestamp) -> Timestamp {
        let now = now.max(self.last_update_time);
        let grown = floor_secs(now, self.date_started)
            .saturating_sub(floor_secs(self.last_update_time, self.date_started))
            .max(0);
        self.active_elapsed_time = self.active_elapsed_time.max(0).saturating_add(grown);
        self.last_update_time = now;
        now
    }

    /// Raises the overall progress to `overall` (never lowers it), within 0..=99.
    fn raise_progress(&mut self, overall: f64) {
        // `overall` is within 0.0..=100.0, so the cast cannot truncate out of range.
        let candidate = overall.floor() as i32;
        self.task_progress = self
            .task_progress
            .max(candidate)
            .clamp(0, MAX_RUNNING_PROGRESS);
    }

    /// Extrapolates the completion time linearly from the progress rate so far.
    fn estimate_completion(&mut self, now: Timestamp) {
        self.task_expected_completion = if self.task_progress > 0 {
            let done = f64::from(self.task_progress);
            let elapsed = self.active_elapsed_time.max(1) as f64;
            let remaining = elapsed * (100.0 - done) / done;
            SignedDuration::try_from_secs_f64(remaining)
                .ok()
                .and_then(|d| now.checked_add(d).ok())
        } else {
            None
        };
    }

    /// Fills in the fields of a terminal record.
    fn terminate(&mut self, now: Timestamp) {
        self.active = false;
        self.date_finished = Some(now);
        self.task_expected_completion = None;
        self.current_operation = None;
        if self.task_state == TaskState::Finished {
            self.task_progress = 100;
            self.workflow_status = WorkflowStatus::Completed;
        } else {
            self.workflow_status = WorkflowStatus::Terminated;
        }
    }

    /// The error for an operation on a terminal task.
    fn already_terminal(&self) -> TaskError {
        TaskError::AlreadyTerminal {
            task_type: self.task_type,
            state: self.task_state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    const TYPES: [TaskType; 4] = [
        TaskType::NewImageVersionSpec,
        TaskType::NewProvScheme,
        TaskType::NewProvVm,
        TaskType::UpdateProvVm,
    ];

    #[test]
    fn without_clock_ignores_ticks_only() {
        let task = TaskStatus::start(TaskType::NewProvVm, "id".into(), t(0));
        let ticked = TaskStatus {
            last_update_time: t(30),
            active_elapsed_time: 30,
            task_expected_completion: Some(t(90)),
            ..task.clone()
        };
        assert_ne!(task, ticked);
        assert_eq!(task.without_clock(), ticked.without_clock());
        let moved = TaskStatus {
            task_progress: 50,
            ..ticked
        };
        assert_ne!(task.without_clock(), moved.without_clock());
    }

    #[test]
    fn state_classes_partition_the_states() {
        for s in TaskState::ALL {
            let classes = [
                s.is_running(),
                s.is_failure(),
                s == TaskState::Finished,
                s == TaskState::Canceled,
            ];
            assert_eq!(classes.iter().filter(|c| **c).count(), 1, "{s}");
            assert_eq!(s.is_terminal(), !s.is_running());
            let json = serde_json::to_string(&s).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
    }

    #[test]
    fn steps_weights_and_failures_are_consistent() {
        for ty in TYPES {
            assert_eq!(ty.steps().len(), ty.step_weights().len(), "{ty}");
            let total: u32 = ty.step_weights().iter().map(|w| u32::from(*w)).sum();
            assert_eq!(total, 100, "{ty}");
            assert_eq!(ty.steps().first(), Some(&TaskState::Processing));
            assert!(ty.steps().iter().all(|s| s.is_running()));
            assert!(ty.failure_states().iter().all(|s| s.is_failure()));
            assert!(ty.is_failure_state(TaskState::UnexpectedError));
            assert!(!ty.is_failure_state(TaskState::Canceled));
        }
        assert_eq!(
            TaskType::NewImageVersionSpec.steps().last(),
            Some(&TaskState::StoringImageVersionSpec)
        );
        assert_eq!(
            TaskType::NewProvScheme.steps().last(),
            Some(&TaskState::CommittingScheme)
        );
        assert_eq!(TaskType::UpdateProvVm.steps(), TaskType::NewProvVm.steps());
    }

    #[test]
    fn transitions() {
        let ty = TaskType::NewImageVersionSpec;
        assert!(
            ty.check_transition(TaskState::Processing, TaskState::LocatingResources)
                .is_ok()
        );
        assert!(
            ty.check_transition(TaskState::Processing, TaskState::ReplicatingMasterImage)
                .is_ok()
        );
        assert!(
            ty.check_transition(TaskState::LocatingResources, TaskState::LocatingResources)
                .is_ok()
        );
        assert_eq!(
            ty.check_transition(
                TaskState::ReplicatingMasterImage,
                TaskState::LocatingResources
            ),
            Err(TaskError::IllegalTransition {
                from: TaskState::ReplicatingMasterImage,
                to: TaskState::LocatingResources,
                task_type: ty
            })
        );
        assert!(
            ty.check_transition(TaskState::ReplicatingMasterImage, TaskState::Finished)
                .is_err()
        );
        assert!(
            ty.check_transition(TaskState::StoringImageVersionSpec, TaskState::Finished)
                .is_ok()
        );
        assert!(
            ty.check_transition(TaskState::Processing, TaskState::CreatingMachines)
                .is_err()
        );
        assert!(
            ty.check_transition(TaskState::Processing, TaskState::IdentityPoolNotFound)
                .is_err()
        );
        assert!(
            ty.check_transition(
                TaskState::ConsolidatingMasterImage,
                TaskState::DiskConsolidationFailed
            )
            .is_ok()
        );
        assert!(
            ty.check_transition(TaskState::ConsolidatingMasterImage, TaskState::Canceled)
                .is_ok()
        );
        assert_eq!(
            ty.check_transition(TaskState::Finished, TaskState::Canceled),
            Err(TaskError::AlreadyTerminal {
                task_type: ty,
                state: TaskState::Finished
            })
        );
        assert!(
            TaskType::NewProvScheme
                .check_transition(
                    TaskState::LocatingResources,
                    TaskState::TaskAlreadyRunningForProvisioningScheme
                )
                .is_ok()
        );
    }

    #[test]
    fn image_task_happy_path() {
        let mut task = TaskStatus::start(TaskType::NewImageVersionSpec, "id".into(), t(0));
        assert_eq!(task.task_state, TaskState::Processing);
        assert_eq!(task.current_operation.as_deref(), Some("ValidatingInputs"));
        assert_eq!(task.workflow_status, WorkflowStatus::Running);
        assert!(task.active);
        assert_eq!(task.task_expected_completion, None);

        assert_eq!(task.advance(TaskState::LocatingResources, t(2)), Ok(()));
        assert_eq!(task.task_progress, 1);
        assert_eq!(task.current_operation, None);
        assert_eq!(
            task.advance(TaskState::ConsolidatingMasterImage, t(5)),
            Ok(())
        );
        assert_eq!(task.task_progress, 5);
        assert_eq!(
            task.report_progress(50.0, Some("Converting".into()), t(65)),
            Ok(())
        );
        assert_eq!(task.task_progress, 35);
        assert_eq!(task.active_elapsed_time, 65);
        assert_eq!(task.current_operation.as_deref(), Some("Converting"));
        // 35 % in 65 s: 65 * 65 / 35 s = 120.7 s to go.
        let eta = task
            .task_expected_completion
            .map(|e| e.duration_since(t(65)).as_secs());
        assert_eq!(eta, Some(120));
        // A lower report never lowers the progress.
        assert_eq!(task.report_progress(10.0, None, t(66)), Ok(()));
        assert_eq!(task.task_progress, 35);
        assert_eq!(task.current_operation.as_deref(), Some("Converting"));
        assert_eq!(task.report_progress(100.0, None, t(120)), Ok(()));
        assert_eq!(task.task_progress, 65);
        assert!(task.finish(t(121)).is_err());
        assert_eq!(
            task.advance(TaskState::StoringImageVersionSpec, t(200)),
            Ok(())
        );
        assert_eq!(task.report_progress(100.0, None, t(201)), Ok(()));
        assert_eq!(task.task_progress, 99);
        assert_eq!(task.finish(t(202)), Ok(()));
        assert_eq!(task.task_progress, 100);
        assert_eq!(task.workflow_status, WorkflowStatus::Completed);
        assert!(!task.active);
        assert_eq!(task.date_finished, Some(t(202)));
        assert_eq!(task.active_elapsed_time, 202);
        assert_eq!(task.terminating_error, None);
        assert_eq!(task.task_expected_completion, None);
        let before = task.clone();
        assert!(task.cancel("late", t(300)).is_err());
        assert!(task.report_progress(1.0, None, t(300)).is_err());
        assert!(task.resume(t(300)).is_err());
        assert_eq!(task, before);
    }

    #[test]
    fn fail_and_cancel_record_the_error() {
        let mut task = TaskStatus::start(TaskType::NewProvScheme, "id".into(), t(0));
        assert_eq!(
            task.fail(TaskState::SnapshotNotFound, "nope", t(1)),
            Err(TaskError::NotAFailureState {
                state: TaskState::SnapshotNotFound,
                task_type: TaskType::NewProvScheme
            })
        );
        assert_eq!(task.task_state, TaskState::Processing);
        assert_eq!(
            task.fail(
                TaskState::IdentityPoolNotFound,
                "identity pool idp-a not found",
                t(3)
            ),
            Ok(())
        );
        assert_eq!(task.workflow_status, WorkflowStatus::Terminated);
        assert!(!task.active);
        assert_eq!(task.date_finished, Some(t(3)));
        assert_eq!(
            task.terminating_error,
            Some(TerminatingError {
                reason: "IdentityPoolNotFound".into(),
                message: "identity pool idp-a not found".into()
            })
        );
        assert!(matches!(
            task.fail(TaskState::UnexpectedError, "x", t(4)),
            Err(TaskError::AlreadyTerminal { .. })
        ));

        let mut task = TaskStatus::start(TaskType::NewProvVm, "id".into(), t(0));
        assert_eq!(task.cancel("cancel annotation", t(1)), Ok(()));
        assert_eq!(task.task_state, TaskState::Canceled);
        assert_eq!(task.workflow_status, WorkflowStatus::Terminated);
        assert_eq!(
            task.terminating_error.as_ref().map(|e| e.reason.as_str()),
            Some("Canceled")
        );

        let mut task = TaskStatus::start(TaskType::NewProvVm, "id".into(), t(0));
        assert_eq!(task.advance(TaskState::StorageNotFound, t(1)), Ok(()));
        assert_eq!(
            task.terminating_error.as_ref().map(|e| e.reason.as_str()),
            Some("StorageNotFound")
        );
    }

    #[test]
    fn elapsed_time_is_drift_free_and_resume_safe() {
        let start = t(0);
        let mut task = TaskStatus::start(TaskType::NewProvVm, "id".into(), start);
        // Updates every 0.4 s for 10 s: no rounding drift.
        for i in 1..=25 {
            let now = start
                .checked_add(SignedDuration::from_millis(400 * i))
                .unwrap_or(start);
            assert_eq!(task.report_progress(1.0, None, now), Ok(()));
        }
        assert_eq!(task.active_elapsed_time, 10);
        // The operator was down for an hour; resume does not count it.
        assert_eq!(task.resume(t(3610)), Ok(()));
        assert_eq!(task.active_elapsed_time, 10);
        assert_eq!(task.report_progress(2.0, None, t(3615)), Ok(()));
        assert_eq!(task.active_elapsed_time, 15);
        // A clock that runs backwards changes nothing.
        assert_eq!(task.report_progress(3.0, None, t(100)), Ok(()));
        assert_eq!(task.active_elapsed_time, 15);
        assert_eq!(task.last_update_time, t(3615));
    }

    #[test]
    fn staleness() {
        let task = TaskStatus::start(TaskType::NewProvVm, "id".into(), t(0));
        assert!(!task.is_stale(t(30), SignedDuration::from_secs(60)));
        assert!(task.is_stale(t(61), SignedDuration::from_secs(60)));
        let mut done = task.clone();
        assert_eq!(done.cancel("x", t(1)), Ok(()));
        assert!(!done.is_stale(t(1000), SignedDuration::from_secs(60)));
    }

    #[test]
    fn corrupt_stored_values_are_brought_back_into_range() {
        let mut task = TaskStatus::start(TaskType::NewProvVm, "id".into(), t(0));
        task.task_progress = 250;
        task.active_elapsed_time = -5;
        assert_eq!(task.report_progress(f64::NAN, None, t(1)), Ok(()));
        assert_eq!(task.task_progress, MAX_RUNNING_PROGRESS);
        assert_eq!(task.active_elapsed_time, 1);
        assert_eq!(task.report_progress(f64::INFINITY, None, t(2)), Ok(()));
        assert_eq!(task.task_progress, MAX_RUNNING_PROGRESS);
    }

    #[test]
    fn reasons() {
        let e = TaskError::IllegalTransition {
            from: TaskState::Finished,
            to: TaskState::Processing,
            task_type: TaskType::NewProvVm,
        };
        assert_eq!(e.reason(), "IllegalTaskTransition");
        assert_eq!(
            e.to_string(),
            "a NewProvVm task cannot go from Finished to Processing"
        );
    }
}
