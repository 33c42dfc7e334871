//! The decisions of the ImageVersionSpec controller: pure functions from what was read to the
//! verdicts (master checks, prepared-spec checks), the task's next state, the desired status
//! and the Events to publish. No I/O: the reconcile carries the plans out in `apply` and
//! `report`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::events::{Event, EventType};
use mcs_backend::{BackendError, MasterRef, Output, PrepareRequest, PreparedImage};
use mcs_domain::inventory_path::{InventoryPath, PathError};
use mcs_domain::rules::{
    HostingUnitFacts, ImageDefinitionFacts, PreparedSpecFacts, RuleError, check_machine_profile,
    check_master_hosting_unit, check_network_mapping, check_prepared_spec_unique, field,
};
use mcs_domain::task::{TaskState, TaskStatus, TaskType};

use super::read::Resources;
use crate::api::{
    DeletionPolicy, HostingUnit, ImageDefinition, ImageInstance, ImageStatus, ImageVersionSpec,
    ImageVersionSpecStatus, MasterImageSpec, PreparedImageSpec, ProvScheme, ProvVm, SpecKind,
    condition_type,
};
use crate::controller::conditions::{DesiredCondition, merge};
use crate::controller::events::event;
use crate::controller::tasks::{
    JobSnapshot, TaskAction, TaskAnnotations, decide_task_action, follow_snapshot,
};

/// Who uses any of `specs`: provisioning schemes referencing one, and machines built from one.
/// Sorted, for stable messages.
pub fn users_of_specs<'a>(
    specs: &BTreeSet<String>,
    schemes: impl IntoIterator<Item = &'a ProvScheme>,
    machines: impl IntoIterator<Item = &'a ProvVm>,
) -> Vec<String> {
    let mut users = BTreeSet::new();
    for scheme in schemes {
        if specs.contains(&scheme.spec.image_version_spec_ref) {
            users.insert(format!("provisioning scheme '{}'", scheme.name_any()));
        }
    }
    for machine in machines {
        if let Some(spec) = machine
            .status
            .as_ref()
            .and_then(|s| s.image_version_spec.as_ref())
            && specs.contains(spec)
        {
            users.insert(format!(
                "machine '{}' of provisioning scheme '{}'",
                machine.name_any(),
                machine.spec.prov_scheme_ref
            ));
        }
    }
    users.into_iter().collect()
}

/// How many provisioning schemes reference one of `specs`.
pub fn schemes_using<'a>(
    specs: &BTreeSet<String>,
    schemes: impl IntoIterator<Item = &'a ProvScheme>,
) -> i32 {
    let n = schemes
        .into_iter()
        .filter(|s| specs.contains(&s.spec.image_version_spec_ref))
        .count();
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// A failure of a spec: the SDK reason (a task state name where there is one) and a message
/// naming the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecFailure {
    /// The task state the failure ends in.
    pub state: TaskState,
    /// The stable reason.
    pub reason: String,
    /// What failed and why.
    pub message: String,
}

impl SpecFailure {
    pub(super) fn new(state: TaskState, message: impl Into<String>) -> Self {
        Self {
            state,
            reason: state.as_str().to_string(),
            message: message.into(),
        }
    }

    pub(super) fn with_reason(state: TaskState, reason: &str, message: impl Into<String>) -> Self {
        Self {
            state,
            reason: reason.to_string(),
            message: message.into(),
        }
    }

    pub(super) fn backend(error: &BackendError, context: &str) -> Self {
        let state = error.task_state();
        let state = if TaskType::NewImageVersionSpec.is_failure_state(state) {
            state
        } else {
            TaskState::UnexpectedError
        };
        Self::with_reason(state, error.reason(), format!("{context}{error}"))
    }

    fn path(error: &PathError, field: &str) -> Self {
        let state = match error {
            PathError::HostingUnitMismatch { .. } => TaskState::HostingUnitMismatch,
            _ => TaskState::MasterImageNotASnapshot,
        };
        Self::with_reason(state, state.as_str(), format!("{field}: {error}"))
    }
}

/// A master snapshot located on its hosting unit (not yet looked at on disk).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocatedMaster {
    /// The hosting unit's name.
    pub hosting_unit: String,
    /// The hosting unit's storages, by name.
    pub storages: Vec<String>,
    /// The full inventory path, canonical.
    pub path: String,
    /// The path relative to the hosting unit, as the SDK shows `MasterImage`.
    pub relative: String,
}

impl LocatedMaster {
    /// The backend's reference to the snapshot.
    pub fn master_ref(&self) -> MasterRef {
        MasterRef {
            hosting_unit: self.hosting_unit.clone(),
            storages: self.storages.clone(),
            path: self.path.clone(),
        }
    }
}

/// Checks a master image spec against its hosting unit and image definition.
///
/// `field_prefix` is `spec.master` for a master spec, or names the source spec for a prepared
/// one, so messages point at the field the user wrote.
pub fn check_master(
    master: &MasterImageSpec,
    unit: Option<&HostingUnit>,
    definition: &ImageDefinition,
    field_prefix: &str,
) -> Result<LocatedMaster, SpecFailure> {
    let unit_field = format!("{field_prefix}.hostingUnitRef");
    let Some(unit) = unit else {
        return Err(SpecFailure::new(
            TaskState::HostingUnitNotFound,
            format!(
                "{unit_field}: hosting unit '{}' was not found in the namespace",
                master.hosting_unit_ref
            ),
        ));
    };
    let facts = HostingUnitFacts {
        name: unit.name_any(),
        connection: unit.spec.connection_ref.clone(),
    };
    let definition_facts = ImageDefinitionFacts {
        name: definition.name_any(),
        session_support: definition.spec.vda_session_support,
        connections: definition
            .spec
            .connections
            .iter()
            .map(|c| c.connection_ref.clone())
            .collect(),
    };
    check_master_hosting_unit(&unit_field, &facts, &definition_facts)
        .map_err(|e| SpecFailure::new(TaskState::HostingUnitMismatch, e.to_string()))?;
    let path_field = format!("{field_prefix}.masterImagePath");
    let path = InventoryPath::parse(&master.master_image_path)
        .map_err(|e| SpecFailure::path(&e, &path_field))?;
    path.within(&unit.name_any())
        .map_err(|e| SpecFailure::path(&e, &path_field))?;
    path.expect_leaf_kind("snapshot")
        .map_err(|e| SpecFailure::path(&e, &path_field))?;
    Ok(LocatedMaster {
        hosting_unit: unit.name_any(),
        storages: unit.spec.storages.iter().map(|s| s.name.clone()).collect(),
        path: path.to_string(),
        relative: path.relative(),
    })
}

/// Checks that the prepared spec `name` is the first prepared spec of its version on
/// `hosting_unit`. Only specs created before it (then by name) count, so of two specs created
/// at the same moment exactly one goes ahead.
pub fn check_unique(
    spec: &ImageVersionSpec,
    hosting_unit: &str,
    all_specs: &[Arc<ImageVersionSpec>],
) -> Result<(), SpecFailure> {
    let hosting_unit_of = |s: &ImageVersionSpec| -> Option<String> {
        let source = &s.spec.prepared.as_ref()?.source_spec_ref;
        all_specs
            .iter()
            .find(|o| o.name_any() == *source)
            .and_then(|o| o.spec.master.as_ref())
            .map(|m| m.hosting_unit_ref.clone())
    };
    let key = |s: &ImageVersionSpec| {
        (
            s.metadata.creation_timestamp.as_ref().map(|t| t.0),
            s.name_any(),
        )
    };
    let me = key(spec);
    let existing: Vec<PreparedSpecFacts> = all_specs
        .iter()
        .filter(|s| s.spec.prepared.is_some() && s.metadata.deletion_timestamp.is_none())
        .filter(|s| s.spec.image_version_ref == spec.spec.image_version_ref)
        .filter(|s| key(s) < me)
        .filter_map(|s| {
            Some(PreparedSpecFacts {
                name: s.name_any(),
                version: s.spec.image_version_ref.clone(),
                hosting_unit: hosting_unit_of(s)?,
            })
        })
        .collect();
    let new = PreparedSpecFacts {
        name: spec.name_any(),
        version: spec.spec.image_version_ref.clone(),
        hosting_unit: hosting_unit.to_string(),
    };
    check_prepared_spec_unique(field::PREPARED_SOURCE_SPEC_REF, &new, &existing)
        .map_err(|e| SpecFailure::new(TaskState::ImageVersionSpecAlreadyExists, e.to_string()))
}

/// Maps the `Local` backend's overall prepare percent onto the share of the current step
/// (consolidation ends at 60 % with replicas, at 95 % without; replication runs 60..95 %).
pub fn image_step_percent(storages: usize) -> impl Fn(TaskState, u8) -> f64 {
    move |phase, percent| {
        let p = f64::from(percent);
        match phase {
            TaskState::LocatingResources => p / 5.0 * 100.0,
            TaskState::ConsolidatingMasterImage => {
                let end = if storages > 1 { 60.0 } else { 95.0 };
                (p - 5.0) / (end - 5.0) * 100.0
            }
            TaskState::ReplicatingMasterImage => (p - 60.0) / 35.0 * 100.0,
            _ => 0.0,
        }
    }
}

/// The `imageVersionSpecStatus` of a prepared spec with this task.
pub fn image_status_of_task(task: Option<&TaskStatus>) -> ImageStatus {
    match task {
        None => ImageStatus::Unknown,
        Some(t) if !t.is_terminal() => ImageStatus::InProgress,
        Some(t) if t.task_state == TaskState::Finished => ImageStatus::Success,
        Some(_) => ImageStatus::Failed,
    }
}

/// The `Ready`/`Progressing`/`Degraded` conditions of an object with this task.
pub fn task_conditions(task: Option<&TaskStatus>) -> Vec<DesiredCondition> {
    let (ready, progressing, degraded) = match task {
        None => (
            DesiredCondition::false_(condition_type::READY, "Pending", "no task has run yet"),
            DesiredCondition::false_(condition_type::PROGRESSING, "Pending", "no task yet"),
            DesiredCondition::false_(condition_type::DEGRADED, "Pending", "no task yet"),
        ),
        Some(t) if !t.is_terminal() => {
            let message = format!(
                "{} task {}: {} {}%{}",
                t.task_type,
                t.task_id,
                t.task_state,
                t.task_progress,
                t.current_operation
                    .as_deref()
                    .map(|o| format!(" ({o})"))
                    .unwrap_or_default()
            );
            (
                DesiredCondition::false_(condition_type::READY, t.task_state.as_str(), &message),
                DesiredCondition::true_(
                    condition_type::PROGRESSING,
                    t.task_state.as_str(),
                    &message,
                ),
                DesiredCondition::false_(condition_type::DEGRADED, "Running", "task running"),
            )
        }
        Some(t) if t.task_state == TaskState::Finished => (
            DesiredCondition::true_(
                condition_type::READY,
                "Finished",
                format!("{} task {} finished", t.task_type, t.task_id),
            ),
            DesiredCondition::false_(condition_type::PROGRESSING, "Finished", "task finished"),
            DesiredCondition::false_(condition_type::DEGRADED, "Finished", "task finished"),
        ),
        Some(t) => {
            let message = t
                .terminating_error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_else(|| format!("task ended in state {}", t.task_state));
            let reason = t.task_state.as_str();
            let degraded = if t.task_state == TaskState::Canceled {
                DesiredCondition::false_(condition_type::DEGRADED, reason, &message)
            } else {
                DesiredCondition::true_(condition_type::DEGRADED, reason, &message)
            };
            (
                DesiredCondition::false_(condition_type::READY, reason, &message),
                DesiredCondition::false_(condition_type::PROGRESSING, reason, &message),
                degraded,
            )
        }
    };
    vec![ready, progressing, degraded]
}

/// Records a finished prepare in the task and the status: the task goes through the remaining
/// steps to `Finished`; the instances and sizes are those of the prepared image.
pub fn complete_prepare(
    task: &mut TaskStatus,
    status: &mut ImageVersionSpecStatus,
    image: &PreparedImage,
    now: Timestamp,
) -> Result<(), mcs_domain::task::TaskError> {
    for step in [
        TaskState::ReplicatingMasterImage,
        TaskState::StoringImageVersionSpec,
    ] {
        let ty = task.task_type;
        if ty.step_index(task.task_state) < ty.step_index(step) {
            task.advance(step, now)?;
        }
    }
    status.instances = image
        .copies
        .iter()
        .map(|copy| ImageInstance {
            name: copy.storage.clone(),
            path: format!(
                "{}/{}",
                mcs_backend::local::PREPARED_DIR,
                copy.path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
            verified: true,
        })
        .collect();
    set_sizes(status, image.virtual_size);
    task.finish(now)
}

pub(super) fn set_sizes(status: &mut ImageVersionSpecStatus, virtual_size: u64) {
    const GIB: u64 = 1 << 30;
    status.disk_size_bytes = i64::try_from(virtual_size).ok();
    status.disk_size_gb = i64::try_from(virtual_size.div_ceil(GIB)).ok();
}

/// Applies a job's result to the task (the caller has already followed its progress).
pub fn apply_result(
    task: &mut TaskStatus,
    status: &mut ImageVersionSpecStatus,
    result: &Result<Output, BackendError>,
    now: Timestamp,
) -> Result<(), mcs_domain::task::TaskError> {
    match result {
        Ok(Output::Prepared(image)) => complete_prepare(task, status, image, now),
        Ok(other) => task.fail(
            TaskState::UnexpectedError,
            format!("the backend answered a prepare with {other:?}"),
            now,
        ),
        Err(BackendError::Canceled) => task.cancel("the preparation was canceled", now),
        Err(error) => {
            let failure = SpecFailure::backend(error, "");
            task.fail(failure.state, failure.message, now)
        }
    }
}

/// The states a task entered between two records, in order: every step passed (a fast job
/// may pass several between two looks) and the terminal state. A new task starts at
/// `Processing`.
pub fn states_passed(before: Option<&TaskStatus>, after: &TaskStatus) -> Vec<TaskState> {
    let same_task = before.filter(|b| b.task_id == after.task_id);
    if same_task.is_some_and(|b| b.task_state == after.task_state) {
        return Vec::new();
    }
    let ty = after.task_type;
    let steps = ty.steps();
    let from = same_task
        .and_then(|b| ty.step_index(b.task_state))
        .map_or(0, |i| i + 1);
    let to = match after.task_state {
        TaskState::Finished => steps.len(),
        state if state.is_running() => ty.step_index(state).map_or(0, |i| i + 1),
        _ if same_task.is_none() => 1,
        _ => from,
    };
    let mut out: Vec<TaskState> = steps.get(from..to.max(from)).unwrap_or_default().to_vec();
    if after.is_terminal() {
        out.push(after.task_state);
    }
    out
}

/// Checks `spec.prepared.networkMapping` (NIC indexes as keys, each value a network path
/// within the master's hosting unit naming one of its networks), then
/// `spec.prepared.machineProfile` (an item within that hosting unit).
fn check_prepared_networks(
    prepared: &PreparedImageSpec,
    unit: &HostingUnit,
) -> Result<(), SpecFailure> {
    let mut errors = check_network_mapping(
        field::PREPARED_NETWORK_MAPPING,
        &prepared.network_mapping,
        &unit.name_any(),
    );
    if errors.is_empty() {
        let networks: BTreeSet<&str> = unit.spec.networks.iter().map(|n| n.name.as_str()).collect();
        for (nic, path) in &prepared.network_mapping {
            if let Some(name) = crate::controller::prov_scheme::leaf_name(path)
                && !networks.contains(name.as_str())
            {
                errors.push(RuleError::NetworkPathResolutionFailed {
                    field: format!("{}[{nic:?}]", field::PREPARED_NETWORK_MAPPING),
                    detail: format!(
                        "network '{name}' is not a network of hosting unit '{}'",
                        unit.name_any()
                    ),
                });
            }
        }
    }
    if errors.is_empty() {
        if let Some(profile) = &prepared.machine_profile
            && let Err(error) =
                check_machine_profile(field::PREPARED_MACHINE_PROFILE, profile, &unit.name_any())
        {
            return Err(SpecFailure::with_reason(
                TaskState::InvalidSnapshotConfiguration,
                mcs_domain::Reason::reason(&error),
                error.to_string(),
            ));
        }
        return Ok(());
    }
    let message = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    Err(SpecFailure::with_reason(
        TaskState::InvalidSnapshotConfiguration,
        "NetworkPathResolutionFailed",
        message,
    ))
}

/// Missing objects a new prepared spec waits for (they may simply not be applied yet) instead
/// of failing its task.
const WAIT_FOR_REASONS: [&str; 3] = [
    "ImageVersionNotFound",
    "ImageDefinitionNotFound",
    "ImageVersionSpecNotFound",
];

/// The conditions of a prepared spec that waits for an object it references.
fn waiting_conditions(failure: &SpecFailure) -> Vec<DesiredCondition> {
    let message = format!("waiting: {}", failure.message);
    vec![
        DesiredCondition::false_(condition_type::READY, &failure.reason, &message),
        DesiredCondition::false_(condition_type::PROGRESSING, &failure.reason, &message),
        DesiredCondition::true_(condition_type::DEGRADED, &failure.reason, &message),
    ]
}

/// The status of a prepared spec around `task`, keeping what the task produced before.
fn prepared_status(
    spec: &ImageVersionSpec,
    current: &ImageVersionSpecStatus,
    task: Option<&TaskStatus>,
    scheme_count: i32,
    now: Timestamp,
) -> ImageVersionSpecStatus {
    let finished = task.is_some_and(|t| t.task_state == TaskState::Finished);
    ImageVersionSpecStatus {
        observed_generation: spec.metadata.generation,
        spec_kind: Some(SpecKind::Prepared),
        image_version_spec_status: image_status_of_task(task),
        hosting_unit_name: current.hosting_unit_name.clone(),
        master_image: current.master_image.clone(),
        disk_size_gb: current.disk_size_gb,
        disk_size_bytes: current.disk_size_bytes,
        task: task.cloned(),
        instances: if finished {
            current.instances.clone()
        } else {
            Vec::new()
        },
        provisioning_scheme_count: scheme_count,
        conditions: merge(
            &current.conditions,
            &task_conditions(task),
            spec.metadata.generation,
            now,
        ),
    }
}

/// How often a running task whose only change is the clock (e.g. one waiting for a slot) is
/// written anyway, so `lastUpdateTime` and `activeElapsedTime` stay fresh.
const CLOCK_REFRESH: jiff::SignedDuration = jiff::SignedDuration::from_secs(10);

/// The status without the fields that change with the clock alone.
pub fn without_clock(status: &ImageVersionSpecStatus) -> ImageVersionSpecStatus {
    let mut out = status.clone();
    if let Some(task) = out.task.as_mut() {
        task.last_update_time = task.date_started;
        task.active_elapsed_time = 0;
        task.task_expected_completion = None;
    }
    out
}

/// The version's image definition, or why the spec cannot use it.
fn version_and_definition<'r>(
    spec: &ImageVersionSpec,
    resources: &'r Resources,
) -> Result<&'r ImageDefinition, SpecFailure> {
    let Some(version) = resources.version.as_deref() else {
        return Err(SpecFailure::with_reason(
            TaskState::UnexpectedError,
            "ImageVersionNotFound",
            format!(
                "spec.imageVersionRef: image version '{}' was not found in the namespace",
                spec.spec.image_version_ref
            ),
        ));
    };
    resources.definition.as_deref().ok_or_else(|| {
        SpecFailure::with_reason(
            TaskState::UnexpectedError,
            "ImageDefinitionNotFound",
            format!(
                "image version '{}': image definition '{}' was not found in the namespace",
                version.name_any(),
                version.spec.image_definition_ref
            ),
        )
    })
}

/// Whether the hosting unit's backend could be had (`read` resolved it), as a verdict.
fn backend_ready(resources: &Resources) -> Result<(), SpecFailure> {
    match &resources.backend {
        Some(Ok(_)) => Ok(()),
        Some(Err(failure)) => Err(failure.clone()),
        None => Err(SpecFailure::new(TaskState::HostingUnitNotFound, "")),
    }
}

/// The next step of a master spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MasterStep {
    /// The snapshot is located: measure it on disk.
    Measure(LocatedMaster),
    /// The spec cannot be resolved (the master image's relative path when it was located).
    Failed {
        /// `status.masterImage`, when the path was located before the failure.
        master_image: Option<String>,
        /// Why.
        failure: SpecFailure,
    },
}

/// Checks a master spec: its version and definition, its hosting unit, the snapshot path, the
/// backend.
pub fn master_step(
    spec: &ImageVersionSpec,
    master: &MasterImageSpec,
    resources: &Resources,
) -> MasterStep {
    let failed = |master_image, failure| MasterStep::Failed {
        master_image,
        failure,
    };
    let definition = match version_and_definition(spec, resources) {
        Ok(definition) => definition,
        Err(failure) => return failed(None, failure),
    };
    match check_master(master, resources.unit.as_deref(), definition, "spec.master") {
        Err(failure) => failed(None, failure),
        Ok(located) => match backend_ready(resources) {
            Ok(()) => MasterStep::Measure(located),
            Err(failure) => failed(Some(located.relative), failure),
        },
    }
}

/// What resolving a master spec found: its relative path and its disk size, or why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterOutcome {
    /// `status.masterImage`, when located.
    pub master_image: Option<String>,
    /// The snapshot's virtual size in bytes, or the failure.
    pub size: Result<u64, SpecFailure>,
}

impl MasterOutcome {
    /// The outcome of a step that did not get to measuring.
    pub fn of_failed(master_image: Option<String>, failure: SpecFailure) -> Self {
        Self {
            master_image,
            size: Err(failure),
        }
    }

    /// The outcome of a measurement of `located`.
    pub fn measured(located: &LocatedMaster, result: Result<Output, BackendError>) -> Self {
        let size = match result {
            Ok(Output::Measurement(m)) => Ok(m.virtual_size),
            Ok(other) => Err(SpecFailure::new(
                TaskState::UnexpectedError,
                format!("the backend answered a measure with {other:?}"),
            )),
            Err(error) => Err(SpecFailure::backend(
                &error,
                "spec.master.masterImagePath: ",
            )),
        };
        Self {
            master_image: Some(located.relative.clone()),
            size,
        }
    }
}

/// A status to write (when `write`), the Events to publish after it, and when to look again.
pub struct StatusPlan {
    /// The desired status.
    pub status: ImageVersionSpecStatus,
    /// Whether it differs from the stored one.
    pub write: bool,
    /// The Events to publish once it is written.
    pub events: Vec<Event>,
    /// When to reconcile again.
    pub requeue: Duration,
}

/// The status of a master spec after `outcome`, with an Event when its readiness changes.
pub fn master_plan(
    spec: &ImageVersionSpec,
    master: &MasterImageSpec,
    outcome: &MasterOutcome,
    scheme_count: i32,
    now: Timestamp,
    resync: Duration,
) -> StatusPlan {
    let current = spec.status.clone().unwrap_or_default();
    let mut status = ImageVersionSpecStatus {
        observed_generation: spec.metadata.generation,
        spec_kind: Some(SpecKind::Master),
        hosting_unit_name: Some(master.hosting_unit_ref.clone()),
        provisioning_scheme_count: scheme_count,
        master_image: outcome.master_image.clone(),
        ..ImageVersionSpecStatus::default()
    };
    let (conditions, event) = match &outcome.size {
        Ok(size) => {
            set_sizes(&mut status, *size);
            status.image_version_spec_status = ImageStatus::Success;
            let image = status.master_image.clone().unwrap_or_default();
            (
                vec![
                    DesiredCondition::true_(
                        condition_type::READY,
                        "Available",
                        format!(
                            "master image {image} on hosting unit '{}'",
                            master.hosting_unit_ref
                        ),
                    ),
                    DesiredCondition::false_(condition_type::PROGRESSING, "Available", "resolved"),
                    DesiredCondition::false_(condition_type::DEGRADED, "Available", "resolved"),
                ],
                event(
                    EventType::Normal,
                    "MasterImageResolved",
                    "ResolveMasterImage",
                    format!(
                        "master image {image} ({} bytes)",
                        status.disk_size_bytes.unwrap_or_default()
                    ),
                ),
            )
        }
        Err(failure) => {
            status.image_version_spec_status = ImageStatus::Failed;
            (
                failure_conditions(&failure.reason, &failure.message),
                event(
                    EventType::Warning,
                    &failure.reason,
                    "ResolveMasterImage",
                    failure.message.clone(),
                ),
            )
        }
    };
    status.conditions = merge(
        &current.conditions,
        &conditions,
        spec.metadata.generation,
        now,
    );
    let events = if ready_reason(&current) == ready_reason(&status) {
        Vec::new()
    } else {
        vec![event]
    };
    StatusPlan {
        write: status != current,
        status,
        events,
        requeue: if outcome.size.is_ok() {
            resync.min(Duration::from_secs(120))
        } else {
            Duration::from_secs(10)
        },
    }
}

/// `Ready=False`, `Progressing=False`, `Degraded=True`, all with `reason` and `message`.
fn failure_conditions(reason: &str, message: &str) -> Vec<DesiredCondition> {
    vec![
        DesiredCondition::false_(condition_type::READY, reason, message),
        DesiredCondition::false_(condition_type::PROGRESSING, reason, message),
        DesiredCondition::true_(condition_type::DEGRADED, reason, message),
    ]
}

fn ready_reason(status: &ImageVersionSpecStatus) -> Option<(String, String)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == condition_type::READY)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// A prepare located: the master snapshot and the request for the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepare {
    /// The master snapshot, on the source spec's hosting unit.
    pub master: LocatedMaster,
    /// What the backend is asked to do.
    pub request: PrepareRequest,
}

/// Locates the resources of a prepare (the task's `LocatingResources` step): the version and
/// definition, the source master spec, its hosting unit, uniqueness per version and unit, the
/// network mapping and machine profile, the backend.
pub fn locate_prepare(
    spec: &ImageVersionSpec,
    prepared: &PreparedImageSpec,
    resources: &Resources,
) -> Result<Prepare, SpecFailure> {
    let definition = version_and_definition(spec, resources)?;
    let source_field = field::PREPARED_SOURCE_SPEC_REF;
    let Some(source) = resources.source.as_deref() else {
        return Err(SpecFailure::with_reason(
            TaskState::SnapshotNotFound,
            "ImageVersionSpecNotFound",
            format!(
                "{source_field}: image version spec '{}' was not found in the namespace",
                prepared.source_spec_ref
            ),
        ));
    };
    let Some(master) = &source.spec.master else {
        return Err(SpecFailure::new(
            TaskState::MasterImageNotASnapshot,
            format!(
                "{source_field}: image version spec '{}' is a prepared spec; a prepared spec is made from a master spec",
                prepared.source_spec_ref
            ),
        ));
    };
    let prefix = format!("{source_field} '{}': spec.master", prepared.source_spec_ref);
    let located = check_master(master, resources.unit.as_deref(), definition, &prefix)?;
    check_unique(spec, &located.hosting_unit, &resources.specs)?;
    let unit = resources
        .unit
        .as_deref()
        .ok_or_else(|| SpecFailure::new(TaskState::HostingUnitNotFound, ""))?;
    check_prepared_networks(prepared, unit)?;
    backend_ready(resources)?;
    let uid = spec.uid().ok_or_else(|| {
        SpecFailure::new(TaskState::UnexpectedError, "the spec has no metadata.uid")
    })?;
    Ok(Prepare {
        request: PrepareRequest {
            image_id: uid,
            master: located.master_ref(),
            target_storages: located.storages.clone(),
            owner: crate::controller::backends::owner(spec, spec.spec.deletion_policy),
        },
        master: located,
    })
}

/// The task action for a prepared spec, and its task annotations.
pub fn task_action(spec: &ImageVersionSpec, job_known: bool) -> (TaskAction, TaskAnnotations) {
    let current = spec.status.as_ref();
    let annotations = TaskAnnotations::read(spec.annotations());
    let new_generation = current
        .and_then(|s| s.observed_generation)
        .is_some_and(|g| Some(g) != spec.metadata.generation);
    let task = current.and_then(|s| s.task.as_ref());
    let action = decide_task_action(task, job_known, &annotations, new_generation);
    (action, annotations)
}

/// Whether `action` locates the prepare's resources (a task starts or resumes).
pub fn locates(action: TaskAction) -> bool {
    matches!(action, TaskAction::Start | TaskAction::Resume)
}

/// When a prepared spec is looked at again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// While the task runs.
    pub follow: Duration,
    /// Once it has succeeded.
    pub resync: Duration,
}

/// What a reconcile of a prepared spec knows before deciding.
#[derive(Clone, Debug)]
pub struct PreparedInput<'a> {
    /// The spec.
    pub spec: &'a ImageVersionSpec,
    /// The task action ([`task_action`]).
    pub action: TaskAction,
    /// The task annotations ([`task_action`]).
    pub annotations: TaskAnnotations,
    /// What this process's job for the task last reported.
    pub job: Option<&'a JobSnapshot>,
    /// The located prepare, for [`TaskAction::Start`] and [`TaskAction::Resume`].
    pub located: Option<Result<Prepare, SpecFailure>>,
    /// How many provisioning schemes reference the spec.
    pub scheme_count: i32,
    /// How many storages the prepare writes to (for the progress mapping).
    pub storages: usize,
    /// The id a new task gets.
    pub new_task_id: String,
    /// The time.
    pub now: Timestamp,
    /// When to look again.
    pub timing: Timing,
}

/// What one reconcile of a prepared spec does, in this order: forget this process's job,
/// remove the partial disks, start the job, write the status (when `write`, as the task
/// runner's write limit allows), publish `events`, remove the `consumed` annotations.
pub struct PreparedPlan {
    /// The task action decided.
    pub action: TaskAction,
    /// Forget the job of this process for the spec (a new task, a cancel, a result taken).
    pub forget_job: bool,
    /// Remove the partial prepared disks (a cancel).
    pub remove_disks: bool,
    /// Start the backend job for the task with this request.
    pub start: Option<PrepareRequest>,
    /// The task after this reconcile.
    pub task: Option<TaskStatus>,
    /// The desired status, and the Events once written.
    pub report: StatusPlan,
    /// Whether the write is a state change (written at once) rather than progress.
    pub urgent: bool,
    /// The annotations this reconcile handled.
    pub consumed: Vec<&'static str>,
}

/// Decides a reconcile of a prepared spec: the task's next state, the job to start or forget,
/// the status and Events.
pub fn prepared(input: PreparedInput<'_>) -> PreparedPlan {
    let PreparedInput { spec, now, .. } = input;
    let current = spec.status.clone().unwrap_or_default();
    let before = current.task.clone();
    let mut scratch = current.clone();
    let mut task = before.clone();
    let mut urgent = true;
    let mut waiting: Option<SpecFailure> = None;
    let (mut forget_job, mut remove_disks, mut start) = (false, false, None);
    match input.action {
        TaskAction::Start | TaskAction::Resume => {
            let mut t = match (input.action, &before) {
                (TaskAction::Resume, Some(t)) => {
                    let mut t = t.clone();
                    // A terminal task is never resumed; `decide_task_action` guarantees it.
                    let _ = t.resume(now);
                    t
                }
                _ => {
                    forget_job = true;
                    let mut t =
                        TaskStatus::start(TaskType::NewImageVersionSpec, input.new_task_id, now);
                    let _ = t.advance(TaskState::LocatingResources, now);
                    scratch.instances.clear();
                    t
                }
            };
            let located = input.located.unwrap_or_else(|| {
                Err(SpecFailure::new(
                    TaskState::UnexpectedError,
                    "the prepare's resources were not located",
                ))
            });
            match located {
                Ok(prepare) => {
                    scratch.hosting_unit_name = Some(prepare.master.hosting_unit.clone());
                    scratch.master_image = Some(prepare.master.relative.clone());
                    start = Some(prepare.request);
                }
                Err(failure)
                    if before.is_none() && WAIT_FOR_REASONS.contains(&failure.reason.as_str()) =>
                {
                    waiting = Some(failure);
                }
                Err(failure) => fail_task(&mut t, &failure, now),
            }
            if waiting.is_none() {
                task = Some(t);
            }
        }
        TaskAction::Follow => {
            if let (Some(t), Some(snapshot)) = (task.as_mut(), input.job) {
                let _ = follow_snapshot(t, snapshot, image_step_percent(input.storages), now);
                if let Some(result) = &snapshot.result {
                    let _ = apply_result(t, &mut scratch, result, now);
                    forget_job = true;
                }
                urgent = before.as_ref().is_none_or(|b| {
                    b.task_state != t.task_state || b.task_progress == 0 && t.task_progress > 0
                });
            }
        }
        TaskAction::Cancel => {
            forget_job = true;
            remove_disks = true;
            if let Some(t) = task.as_mut() {
                let _ = t.cancel(
                    "canceled by the annotation mcs.imaging.dev/cancel; partial disks removed",
                    now,
                );
            }
        }
        TaskAction::Idle => {}
    }
    let mut status = prepared_status(spec, &scratch, task.as_ref(), input.scheme_count, now);
    if let Some(failure) = &waiting {
        status.conditions = merge(
            &current.conditions,
            &waiting_conditions(failure),
            spec.metadata.generation,
            now,
        );
    }
    let running = task.as_ref().is_some_and(|t| !t.is_terminal());
    let requeue = if running {
        input.timing.follow
    } else if waiting.is_some() {
        Duration::from_secs(5)
    } else if status.image_version_spec_status == ImageStatus::Success {
        input.timing.resync
    } else {
        Duration::from_secs(30)
    };
    let clock_only = without_clock(&status) == without_clock(&current);
    let clock_stale = current
        .task
        .as_ref()
        .is_none_or(|t| now.duration_since(t.last_update_time) >= CLOCK_REFRESH);
    let mut events = task
        .as_ref()
        .map(|after| task_events(before.as_ref(), after))
        .unwrap_or_default();
    events.extend(
        waiting
            .as_ref()
            .and_then(|failure| waiting_event(&current, &status, failure)),
    );
    PreparedPlan {
        action: input.action,
        forget_job,
        remove_disks,
        start,
        consumed: input.annotations.consumed(input.action, running),
        task,
        urgent,
        report: StatusPlan {
            write: status != current && (!clock_only || clock_stale),
            status,
            events,
            requeue,
        },
    }
}

/// Fails `task` with `failure`; a state this task type cannot fail in would leave the task
/// running forever, so that one fails as `UnexpectedError`, naming the state.
fn fail_task(task: &mut TaskStatus, failure: &SpecFailure, now: Timestamp) {
    if task
        .fail(failure.state, failure.message.clone(), now)
        .is_err()
    {
        let _ = task.fail(
            TaskState::UnexpectedError,
            format!("{}: {}", failure.state, failure.message),
            now,
        );
    }
}

/// The Events of a task that changed state: one per state passed.
pub fn task_events(before: Option<&TaskStatus>, after: &TaskStatus) -> Vec<Event> {
    states_passed(before, after)
        .into_iter()
        .map(|state| {
            if state.is_failure() || state == TaskState::Canceled {
                let note = after
                    .terminating_error
                    .as_ref()
                    .map(|e| e.message.clone())
                    .unwrap_or_default();
                event(EventType::Warning, state.as_str(), "PrepareImage", note)
            } else {
                let note = format!("{} task {} is {state}", after.task_type, after.task_id);
                event(EventType::Normal, state.as_str(), "PrepareImage", note)
            }
        })
        .collect()
}

/// A Warning when a prepared spec starts waiting for a missing object (or for another one),
/// so the missing reference shows in `kubectl get events` as well.
fn waiting_event(
    before: &ImageVersionSpecStatus,
    after: &ImageVersionSpecStatus,
    failure: &SpecFailure,
) -> Option<Event> {
    let said = |s: &ImageVersionSpecStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == condition_type::READY)
            .map(|c| c.message.clone())
    };
    (said(before) != said(after)).then(|| {
        event(
            EventType::Warning,
            &failure.reason,
            "PrepareImage",
            format!("waiting: {}", failure.message),
        )
    })
}

/// The Event of a deleted prepared spec's disks: removed or retained by `policy`, or left on
/// storage when the hosting unit or its connection is gone (`removal` is `None`). A backend
/// failure is returned, to retry the deletion.
pub fn disks_event(
    policy: DeletionPolicy,
    removal: Option<Result<String, BackendError>>,
) -> Result<Event, BackendError> {
    Ok(match removal {
        Some(Ok(note)) => event(
            EventType::Normal,
            if policy == DeletionPolicy::Retain {
                "DisksRetained"
            } else {
                "DisksRemoved"
            },
            "Delete",
            note,
        ),
        Some(Err(error)) => return Err(error),
        None => event(
            EventType::Warning,
            "DisksNotRemoved",
            "Delete",
            "the hosting unit or its connection is gone; prepared disks, if any, were left on storage".into(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{HostingUnitSpec, HostingUnitStorage};
    use crate::api::{
        ImageDefinitionConnection, ImageDefinitionSpec, ImageVersionSpecFields, OsType,
        SessionSupport,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("valid")
    }

    fn unit(name: &str, connection: &str) -> HostingUnit {
        HostingUnit::new(
            name,
            HostingUnitSpec {
                connection_ref: connection.into(),
                storages: vec![
                    HostingUnitStorage {
                        name: "primary".into(),
                        root: "images".into(),
                        path: None,
                    },
                    HostingUnitStorage {
                        name: "secondary".into(),
                        root: "fast".into(),
                        path: None,
                    },
                ],
                networks: vec![],
                service_offerings: vec![],
                security_groups: vec![],
            },
        )
    }

    fn definition(connections: &[&str]) -> ImageDefinition {
        ImageDefinition::new(
            "win11",
            ImageDefinitionSpec {
                os_type: OsType::Windows,
                vda_session_support: SessionSupport::SingleSession,
                description: None,
                connections: connections
                    .iter()
                    .map(|c| ImageDefinitionConnection {
                        connection_ref: (*c).into(),
                        custom_properties: None,
                    })
                    .collect(),
            },
        )
    }

    fn master(path: &str) -> MasterImageSpec {
        MasterImageSpec {
            hosting_unit_ref: "lab".into(),
            master_image_path: path.into(),
        }
    }

    const GOOD: &str = r"XDHyp:\HostingUnits\lab\win11.vm\base.snapshot";

    #[test]
    fn a_master_on_a_connected_unit_is_located() {
        let located = check_master(
            &master(GOOD),
            Some(&unit("lab", "local")),
            &definition(&["local"]),
            "spec.master",
        )
        .expect("located");
        assert_eq!(located.relative, r"win11.vm\base.snapshot");
        assert_eq!(located.storages, vec!["primary", "secondary"]);
    }

    #[test]
    fn master_failures_carry_sdk_states() {
        let d = definition(&["local"]);
        let missing = check_master(&master(GOOD), None, &d, "spec.master").expect_err("no unit");
        assert_eq!(missing.state, TaskState::HostingUnitNotFound);
        assert!(missing.message.starts_with("spec.master.hostingUnitRef"));

        let other = check_master(
            &master(GOOD),
            Some(&unit("lab", "elsewhere")),
            &d,
            "spec.master",
        )
        .expect_err("mismatch");
        assert_eq!(other.state, TaskState::HostingUnitMismatch);
        assert_eq!(other.reason, "HostingUnitMismatch");

        let wrong_unit = check_master(
            &master(r"XDHyp:\HostingUnits\other\win11.vm\base.snapshot"),
            Some(&unit("lab", "local")),
            &d,
            "spec.master",
        )
        .expect_err("path in another unit");
        assert_eq!(wrong_unit.state, TaskState::HostingUnitMismatch);

        let not_snapshot = check_master(
            &master(r"XDHyp:\HostingUnits\lab\win11.vm"),
            Some(&unit("lab", "local")),
            &d,
            "spec.master",
        )
        .expect_err("not a snapshot");
        assert_eq!(not_snapshot.state, TaskState::MasterImageNotASnapshot);
        assert!(
            not_snapshot
                .message
                .starts_with("spec.master.masterImagePath")
        );
    }

    fn spec_obj(name: &str, created: i64, body: ImageVersionSpecFields) -> ImageVersionSpec {
        let mut s = ImageVersionSpec::new(name, body);
        s.metadata.creation_timestamp = Some(Time(t(created)));
        s
    }

    fn prepared_from(source: &str) -> ImageVersionSpecFields {
        ImageVersionSpecFields {
            image_version_ref: "v1".into(),
            master: None,
            prepared: Some(PreparedImageSpec {
                source_spec_ref: source.into(),
                network_mapping: [("0".to_string(), "x".to_string())].into(),
                size: Default::default(),
                machine_profile: None,
                custom_properties: None,
                metadata: Default::default(),
            }),
            deletion_policy: DeletionPolicy::Delete,
        }
    }

    #[test]
    fn only_the_first_prepared_spec_per_unit_goes_ahead() {
        let m = spec_obj(
            "m",
            0,
            ImageVersionSpecFields {
                image_version_ref: "v1".into(),
                master: Some(master(GOOD)),
                prepared: None,
                deletion_policy: DeletionPolicy::Delete,
            },
        );
        let a = spec_obj("a", 10, prepared_from("m"));
        let b = spec_obj("b", 10, prepared_from("m"));
        let c = spec_obj("c", 5, prepared_from("m"));
        let all: Vec<Arc<ImageVersionSpec>> = [&m, &a, &b].map(|s| Arc::new(s.clone())).into();
        assert!(check_unique(&a, "lab", &all).is_ok(), "a is first by name");
        let err = check_unique(&b, "lab", &all).expect_err("b is second");
        assert_eq!(err.state, TaskState::ImageVersionSpecAlreadyExists);
        assert!(err.message.contains("'a'"), "{}", err.message);
        let all: Vec<Arc<ImageVersionSpec>> = [m, a.clone(), b, c].map(Arc::new).into();
        let err = check_unique(&a, "lab", &all).expect_err("c is older");
        assert!(err.message.contains("'c'"), "{}", err.message);
    }

    #[test]
    fn step_percent_mapping() {
        let one = image_step_percent(1);
        let two = image_step_percent(2);
        assert_eq!(one(TaskState::ConsolidatingMasterImage, 95), 100.0);
        assert_eq!(two(TaskState::ConsolidatingMasterImage, 60), 100.0);
        assert_eq!(two(TaskState::ReplicatingMasterImage, 95), 100.0);
        assert!(two(TaskState::ReplicatingMasterImage, 60).abs() < f64::EPSILON);
    }

    #[test]
    fn a_finished_prepare_walks_the_remaining_steps() {
        let mut task = TaskStatus::start(TaskType::NewImageVersionSpec, "id".into(), t(0));
        task.advance(TaskState::ConsolidatingMasterImage, t(1))
            .expect("advance");
        let mut status = ImageVersionSpecStatus::default();
        let image = PreparedImage {
            image_id: "uid".into(),
            source: "/s/win11.qcow2".into(),
            snapshot: "base".into(),
            virtual_size: 16 << 20,
            copies: vec![
                mcs_backend::PreparedCopy {
                    storage: "primary".into(),
                    path: "/s/prepared/uid.qcow2".into(),
                    size_bytes: 1,
                },
                mcs_backend::PreparedCopy {
                    storage: "secondary".into(),
                    path: "/f/prepared/uid.qcow2".into(),
                    size_bytes: 1,
                },
            ],
        };
        apply_result(&mut task, &mut status, &Ok(Output::Prepared(image)), t(5)).expect("ok");
        assert_eq!(task.task_state, TaskState::Finished);
        assert_eq!(task.task_progress, 100);
        assert_eq!(status.instances.len(), 2);
        assert_eq!(status.instances[1].path, "prepared/uid.qcow2");
        assert_eq!(status.disk_size_gb, Some(1));
        assert_eq!(status.disk_size_bytes, Some(16 << 20));
        assert_eq!(image_status_of_task(Some(&task)), ImageStatus::Success);
    }

    #[test]
    fn backend_failures_end_in_their_task_state() {
        let mut status = ImageVersionSpecStatus::default();
        let mut task = TaskStatus::start(TaskType::NewImageVersionSpec, "id".into(), t(0));
        let error = BackendError::SnapshotNotFound {
            image: "/s/win11.qcow2".into(),
            snapshot: "base".into(),
            detail: "snapshots present: []".into(),
        };
        apply_result(&mut task, &mut status, &Err(error), t(1)).expect("ok");
        assert_eq!(task.task_state, TaskState::SnapshotNotFound);
        assert_eq!(image_status_of_task(Some(&task)), ImageStatus::Failed);
        let conditions = task_conditions(Some(&task));
        assert_eq!(conditions[0].reason, "SnapshotNotFound");
        assert!(conditions[2].status, "degraded");

        let mut task = TaskStatus::start(TaskType::NewImageVersionSpec, "id".into(), t(0));
        let odd = BackendError::Timeout {
            command: "convert".into(),
            seconds: 1,
            path: "/x".into(),
        };
        apply_result(&mut task, &mut status, &Err(odd), t(1)).expect("ok");
        assert_eq!(task.task_state, TaskState::UnexpectedError);

        let mut task = TaskStatus::start(TaskType::NewImageVersionSpec, "id".into(), t(0));
        apply_result(&mut task, &mut status, &Err(BackendError::Canceled), t(1)).expect("ok");
        assert_eq!(task.task_state, TaskState::Canceled);
        assert!(!task_conditions(Some(&task))[2].status);
    }

    #[test]
    fn events_cover_every_state_passed() {
        let mut start = TaskStatus::start(TaskType::NewImageVersionSpec, "a".into(), t(0));
        start
            .advance(TaskState::LocatingResources, t(0))
            .expect("advance");
        assert_eq!(
            states_passed(None, &start),
            vec![TaskState::Processing, TaskState::LocatingResources]
        );
        assert!(states_passed(Some(&start), &start).is_empty());
        let mut done = start.clone();
        done.advance(TaskState::StoringImageVersionSpec, t(1))
            .expect("advance");
        done.finish(t(1)).expect("finish");
        assert_eq!(
            states_passed(Some(&start), &done),
            vec![
                TaskState::ConsolidatingMasterImage,
                TaskState::ReplicatingMasterImage,
                TaskState::StoringImageVersionSpec,
                TaskState::Finished
            ]
        );
        let mut failed = start.clone();
        failed
            .fail(TaskState::SnapshotNotFound, "gone", t(1))
            .expect("fail");
        assert_eq!(
            states_passed(Some(&start), &failed),
            vec![TaskState::SnapshotNotFound]
        );
        assert_eq!(
            states_passed(None, &failed),
            vec![TaskState::Processing, TaskState::SnapshotNotFound]
        );
    }

    #[test]
    fn users_are_schemes_and_machines() {
        use crate::api::{ProvSchemeSpec, ProvVmSpec, ProvVmStatus};
        let scheme: ProvScheme = serde_json::from_value(serde_json::json!({
            "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ProvScheme",
            "metadata": {"name": "desktops"},
            "spec": {"imageVersionSpecRef": "p1", "hostingUnitRef": "lab", "identityPoolRef": "pool",
                     "networkMapping": {"0": "x"}, "machineCount": 0}
        }))
        .expect("scheme");
        let _: Option<ProvSchemeSpec> = None;
        let _: Option<ProvVmSpec> = None;
        let mut machine: ProvVm = serde_json::from_value(serde_json::json!({
            "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ProvVm",
            "metadata": {"name": "vdi-001"},
            "spec": {"provSchemeRef": "old", "machineName": "VDI-001", "machineIndex": 1}
        }))
        .expect("machine");
        machine.status = Some(ProvVmStatus {
            image_version_spec: Some("p0".into()),
            ..ProvVmStatus::default()
        });
        let users = users_of_specs(
            &BTreeSet::from(["p0".to_string(), "p1".to_string()]),
            std::slice::from_ref(&scheme),
            &[machine],
        );
        assert_eq!(
            users,
            vec![
                "machine 'vdi-001' of provisioning scheme 'old'".to_string(),
                "provisioning scheme 'desktops'".to_string()
            ]
        );
        assert_eq!(
            schemes_using(&BTreeSet::from(["p1".to_string()]), &[scheme]),
            1
        );
    }

    fn no_resources() -> Resources {
        Resources {
            version: None,
            definition: None,
            source: None,
            specs: Vec::new(),
            unit: None,
            backend: None,
        }
    }

    fn master_spec() -> ImageVersionSpec {
        spec_obj(
            "m",
            0,
            ImageVersionSpecFields {
                image_version_ref: "v1".into(),
                master: Some(master(GOOD)),
                prepared: None,
                deletion_policy: DeletionPolicy::Delete,
            },
        )
    }

    const RESYNC: Duration = Duration::from_secs(300);

    #[test]
    fn a_master_without_its_version_fails_once_with_one_warning() {
        let mut spec = master_spec();
        let step = master_step(&spec, &master(GOOD), &no_resources());
        let MasterStep::Failed {
            master_image,
            failure,
        } = step
        else {
            panic!("a missing version cannot be measured: {step:?}");
        };
        assert_eq!(failure.reason, "ImageVersionNotFound");
        let outcome = MasterOutcome::of_failed(master_image, failure);
        let plan = master_plan(&spec, &master(GOOD), &outcome, 2, t(0), RESYNC);
        assert!(plan.write);
        assert_eq!(plan.status.image_version_spec_status, ImageStatus::Failed);
        assert_eq!(plan.status.provisioning_scheme_count, 2);
        assert_eq!(plan.events.len(), 1);
        assert_eq!(plan.events[0].type_, EventType::Warning);
        assert_eq!(plan.events[0].reason, "ImageVersionNotFound");
        assert_eq!(plan.requeue, Duration::from_secs(10));
        spec.status = Some(plan.status);
        let again = master_plan(&spec, &master(GOOD), &outcome, 2, t(5), RESYNC);
        assert!(!again.write, "nothing changed");
        assert!(again.events.is_empty());
    }

    #[test]
    fn a_measured_master_is_available_with_its_size() {
        let spec = master_spec();
        let outcome = MasterOutcome {
            master_image: Some(r"win11.vm\base.snapshot".into()),
            size: Ok(3 << 30),
        };
        let plan = master_plan(&spec, &master(GOOD), &outcome, 0, t(0), RESYNC);
        assert_eq!(plan.status.image_version_spec_status, ImageStatus::Success);
        assert_eq!(plan.status.disk_size_gb, Some(3));
        assert_eq!(plan.events[0].reason, "MasterImageResolved");
        assert_eq!(plan.requeue, Duration::from_secs(120));
    }

    fn prepared_spec() -> ImageVersionSpec {
        let mut spec = spec_obj("p", 1, prepared_from("m"));
        spec.metadata.uid = Some("uid-p".into());
        spec.metadata.generation = Some(1);
        spec
    }

    fn located() -> Prepare {
        let master = LocatedMaster {
            hosting_unit: "lab".into(),
            storages: vec!["primary".into()],
            path: GOOD.into(),
            relative: r"win11.vm\base.snapshot".into(),
        };
        Prepare {
            request: PrepareRequest {
                image_id: "uid-p".into(),
                master: master.master_ref(),
                target_storages: master.storages.clone(),
                owner: None,
            },
            master,
        }
    }

    const TIMING: Timing = Timing {
        follow: Duration::from_millis(500),
        resync: RESYNC,
    };

    fn input<'a>(
        spec: &'a ImageVersionSpec,
        job: Option<&'a JobSnapshot>,
        located: Option<Result<Prepare, SpecFailure>>,
        now: Timestamp,
    ) -> PreparedInput<'a> {
        let (action, annotations) = task_action(spec, job.is_some());
        PreparedInput {
            spec,
            action,
            annotations,
            job,
            located,
            scheme_count: 0,
            storages: 1,
            new_task_id: "task-1".into(),
            now,
            timing: TIMING,
        }
    }

    #[test]
    fn a_located_prepare_starts_its_job_and_reports_the_steps() {
        let spec = prepared_spec();
        let plan = prepared(input(&spec, None, Some(Ok(located())), t(0)));
        assert_eq!(plan.action, TaskAction::Start);
        assert!(plan.forget_job && !plan.remove_disks);
        assert_eq!(plan.start, Some(located().request));
        let task = plan.task.as_ref().expect("a task");
        assert_eq!(task.task_state, TaskState::LocatingResources);
        assert_eq!(plan.report.status.hosting_unit_name.as_deref(), Some("lab"));
        assert_eq!(
            plan.report.status.image_version_spec_status,
            ImageStatus::InProgress
        );
        let reasons: Vec<&str> = plan
            .report
            .events
            .iter()
            .map(|e| e.reason.as_str())
            .collect();
        assert_eq!(reasons, ["Processing", "LocatingResources"]);
        assert!(plan.report.write && plan.urgent);
        assert_eq!(plan.report.requeue, TIMING.follow);
    }

    #[test]
    fn a_new_spec_waits_for_a_missing_version_with_one_warning() {
        let mut spec = prepared_spec();
        let missing = version_and_definition(&spec, &no_resources()).expect_err("missing");
        let plan = prepared(input(&spec, None, Some(Err(missing.clone())), t(0)));
        assert!(plan.task.is_none(), "no task while waiting");
        assert!(plan.start.is_none());
        assert_eq!(plan.report.requeue, Duration::from_secs(5));
        assert_eq!(plan.report.events.len(), 1);
        assert!(
            plan.report.events[0]
                .note
                .as_deref()
                .is_some_and(|n| n.starts_with("waiting: spec.imageVersionRef"))
        );
        spec.status = Some(plan.report.status);
        let again = prepared(input(&spec, None, Some(Err(missing)), t(1)));
        assert!(!again.report.write && again.report.events.is_empty());
    }

    #[test]
    fn a_failed_locate_of_a_started_task_fails_it() {
        let mut spec = prepared_spec();
        let plan = prepared(input(&spec, None, Some(Ok(located())), t(0)));
        spec.status = Some(plan.report.status);
        // The operator restarted: no job knows the task, so it resumes and locates again.
        let gone = SpecFailure::new(TaskState::HostingUnitNotFound, "unit gone");
        let plan = prepared(input(&spec, None, Some(Err(gone)), t(1)));
        assert_eq!(plan.action, TaskAction::Resume);
        let task = plan.task.expect("the task");
        assert_eq!(task.task_state, TaskState::HostingUnitNotFound);
        assert_eq!(
            plan.report.status.image_version_spec_status,
            ImageStatus::Failed
        );
        assert_eq!(plan.report.requeue, Duration::from_secs(30));
    }

    #[test]
    fn a_finished_job_finishes_the_task_and_is_forgotten() {
        let mut spec = prepared_spec();
        let plan = prepared(input(&spec, None, Some(Ok(located())), t(0)));
        spec.status = Some(plan.report.status);
        let image = PreparedImage {
            image_id: "uid-p".into(),
            source: "/s/win11.qcow2".into(),
            snapshot: "base".into(),
            virtual_size: 1 << 30,
            copies: vec![mcs_backend::PreparedCopy {
                storage: "primary".into(),
                path: "/s/prepared/uid-p.qcow2".into(),
                size_bytes: 1,
            }],
        };
        let job = JobSnapshot {
            task_id: "task-1".into(),
            queued: false,
            started: None,
            operation_id: None,
            phase: TaskState::ConsolidatingMasterImage,
            percent: 95,
            message: String::new(),
            result: Some(Ok(Output::Prepared(image))),
        };
        let plan = prepared(input(&spec, Some(&job), None, t(2)));
        assert_eq!(plan.action, TaskAction::Follow);
        assert!(plan.forget_job && plan.start.is_none());
        assert_eq!(plan.report.status.instances.len(), 1);
        assert_eq!(
            plan.report.status.image_version_spec_status,
            ImageStatus::Success
        );
        assert_eq!(plan.report.requeue, RESYNC);
        assert_eq!(
            plan.report.events.last().map(|e| e.reason.as_str()),
            Some("Finished")
        );
    }

    #[test]
    fn a_cancel_removes_the_partial_disks_and_consumes_the_annotation() {
        let mut spec = prepared_spec();
        let plan = prepared(input(&spec, None, Some(Ok(located())), t(0)));
        spec.status = Some(plan.report.status);
        spec.metadata.annotations = Some(
            [(
                crate::api::ANNOTATION_CANCEL.to_string(),
                "true".to_string(),
            )]
            .into(),
        );
        let plan = prepared(input(&spec, None, None, t(1)));
        assert_eq!(plan.action, TaskAction::Cancel);
        assert!(plan.forget_job && plan.remove_disks && plan.start.is_none());
        assert_eq!(plan.task.map(|t| t.task_state), Some(TaskState::Canceled));
        assert_eq!(plan.consumed, vec![crate::api::ANNOTATION_CANCEL]);
    }

    #[test]
    fn deleted_disks_are_reported_by_policy() {
        let removed = disks_event(DeletionPolicy::Delete, Some(Ok("2 files removed".into())));
        assert_eq!(removed.expect("an event").reason, "DisksRemoved");
        let retained = disks_event(DeletionPolicy::Retain, Some(Ok("kept".into())));
        assert_eq!(retained.expect("an event").reason, "DisksRetained");
        let left = disks_event(DeletionPolicy::Delete, None).expect("an event");
        assert_eq!(
            (left.type_, left.reason.as_str()),
            (EventType::Warning, "DisksNotRemoved")
        );
        assert!(disks_event(DeletionPolicy::Delete, Some(Err(BackendError::Canceled))).is_err());
    }

    proptest::proptest! {
        /// Between two records of one running task, the Events name exactly the steps entered.
        #[test]
        fn events_name_exactly_the_steps_entered(from in 0usize..5, ahead in 0usize..5) {
            let steps = TaskType::NewImageVersionSpec.steps();
            let to = (from + ahead).min(steps.len() - 1);
            let mut before = TaskStatus::start(TaskType::NewImageVersionSpec, "a".into(), t(0));
            for step in &steps[1..=from] {
                before.advance(*step, t(0)).expect("advance");
            }
            let mut after = before.clone();
            for step in &steps[from + 1..=to] {
                after.advance(*step, t(1)).expect("advance");
            }
            proptest::prop_assert_eq!(states_passed(Some(&before), &after), steps[from + 1..=to].to_vec());
        }

        /// A master's plan is a fixed point: once its status is stored, planning again with the
        /// same outcome writes nothing and publishes nothing.
        #[test]
        fn master_plans_settle(size in proptest::option::of(0u64..(1 << 40)), count in 0i32..5) {
            let mut spec = master_spec();
            let outcome = MasterOutcome {
                master_image: Some("x".into()),
                size: size.ok_or_else(|| SpecFailure::new(TaskState::SnapshotNotFound, "gone")),
            };
            let plan = master_plan(&spec, &master(GOOD), &outcome, count, t(0), RESYNC);
            proptest::prop_assert!(plan.write);
            spec.status = Some(plan.status);
            let again = master_plan(&spec, &master(GOOD), &outcome, count, t(9), RESYNC);
            proptest::prop_assert!(!again.write);
            proptest::prop_assert!(again.events.is_empty());
        }
    }
}
