//! The ImageVersionSpec controller.
//!
//! - A **master** spec (`Add-ProvImageVersionSpec`) resolves its snapshot path on its hosting
//!   unit and reports the master image, its disk size and `imageVersionSpecStatus`; failures are
//!   `HostingUnitNotFound`, `HostingUnitMismatch` (the unit's connection is not one of the
//!   definition's), `SnapshotNotFound`, `MasterImageNotASnapshot`, ...
//! - A **prepared** spec (`New-ProvImageVersionSpec`) runs the preparation task
//!   `Processing -> LocatingResources -> ConsolidatingMasterImage -> ReplicatingMasterImage ->
//!   StoringImageVersionSpec -> Finished` as a background job of the shared
//!   [`TaskRunner`](super::tasks::TaskRunner), records one instance per storage, honours the
//!   cancel and retry annotations, and survives operator restarts (the backend's prepare is
//!   idempotent and keyed by the spec's uid, so a restarted task finishes or redoes the work).
//! - Deletion waits (finalizer `mcs.imaging.dev/image-version-spec`, condition `Ready=False`
//!   reason `InUse` naming the users) while a provisioning scheme or a machine uses the spec,
//!   then removes the prepared disks unless `deletionPolicy: Retain`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::ListParams;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use mcs_backend::{
    Backend, BackendError, DeletePreparedRequest, MasterRef, MeasureRequest, Operation, Output,
    PrepareRequest, PreparedImage,
};
use mcs_domain::inventory_path::{InventoryPath, PathError};
use mcs_domain::rules::{
    HostingUnitFacts, ImageDefinitionFacts, PreparedSpecFacts, RuleError, check_machine_profile,
    check_master_hosting_unit, check_network_mapping, check_prepared_spec_unique, field,
};
use mcs_domain::task::{TaskState, TaskStatus, TaskType};

use super::conditions::{DesiredCondition, merge};
use super::events::publish;
use super::status::{apply_status, field_manager};
use super::tasks::{
    TaskAction, TaskAnnotations, decide_task_action, follow_snapshot, remove_annotations,
    report_blocked_deletion, run_once,
};
use super::{Context, ControllerError, requeue_after_error, watcher_config};
use crate::api::{
    DeletionPolicy, HostingUnit, HypervisorConnection, ImageDefinition, ImageInstance, ImageStatus,
    ImageVersion, ImageVersionSpec, ImageVersionSpecStatus, MasterImageSpec, PreparedImageSpec,
    ProvScheme, ProvVm, SpecKind, condition_type,
};

const CONTROLLER: &str = "imageversionspec";
/// The finalizer that keeps a spec (and its disks) while it is in use.
pub const FINALIZER: &str = "mcs.imaging.dev/image-version-spec";

/// Who uses any of `specs`: provisioning schemes referencing one, and machines built from one.
/// Sorted, for stable messages.
pub fn users_of_specs(
    specs: &BTreeSet<String>,
    schemes: &[ProvScheme],
    machines: &[ProvVm],
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
pub fn schemes_using(specs: &BTreeSet<String>, schemes: &[ProvScheme]) -> i32 {
    let n = schemes
        .iter()
        .filter(|s| specs.contains(&s.spec.image_version_spec_ref))
        .count();
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Lists the schemes and machines of `namespace` (for usage checks).
pub async fn schemes_and_machines(
    context: &Context,
    namespace: &str,
) -> Result<(Vec<ProvScheme>, Vec<ProvVm>), ControllerError> {
    let schemes = context
        .api::<ProvScheme>(namespace)
        .list(&ListParams::default())
        .await?
        .items;
    let machines = context
        .api::<ProvVm>(namespace)
        .list(&ListParams::default())
        .await?
        .items;
    Ok((schemes, machines))
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
    fn new(state: TaskState, message: impl Into<String>) -> Self {
        Self {
            state,
            reason: state.as_str().to_string(),
            message: message.into(),
        }
    }

    fn with_reason(state: TaskState, reason: &str, message: impl Into<String>) -> Self {
        Self {
            state,
            reason: reason.to_string(),
            message: message.into(),
        }
    }

    fn backend(error: &BackendError, context: &str) -> Self {
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
    fn master_ref(&self) -> MasterRef {
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
    all_specs: &[ImageVersionSpec],
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

fn set_sizes(status: &mut ImageVersionSpecStatus, virtual_size: u64) {
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

fn namespace_of(spec: &ImageVersionSpec) -> Result<String, ControllerError> {
    spec.namespace().ok_or(ControllerError::MissingMetadata {
        kind: "ImageVersionSpec",
        field: "namespace",
    })
}

fn job_key(namespace: &str, name: &str) -> String {
    format!("imageversionspec/{namespace}/{name}")
}

/// Writes the status and publishes the events of state changes.
async fn write(
    context: &Context,
    spec: &ImageVersionSpec,
    status: &ImageVersionSpecStatus,
) -> Result<(), ControllerError> {
    let api = context.api::<ImageVersionSpec>(&namespace_of(spec)?);
    apply_status(&api, spec, &field_manager(CONTROLLER), status).await?;
    Ok(())
}

/// Publishes an Event for a task that changed state.
async fn task_event(
    context: &Context,
    spec: &ImageVersionSpec,
    before: Option<&TaskStatus>,
    after: &TaskStatus,
) {
    for state in states_passed(before, after) {
        let (type_, note) = if state.is_failure() || state == TaskState::Canceled {
            (
                EventType::Warning,
                after
                    .terminating_error
                    .as_ref()
                    .map(|e| e.message.clone())
                    .unwrap_or_default(),
            )
        } else {
            (
                EventType::Normal,
                format!("{} task {} is {state}", after.task_type, after.task_id),
            )
        };
        publish(context, spec, type_, state.as_str(), "PrepareImage", note).await;
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

async fn reconcile(
    spec: Arc<ImageVersionSpec>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    let _timer = crate::metrics::global().reconcile(CONTROLLER);
    let namespace = namespace_of(&spec)?;
    let api = context.api::<ImageVersionSpec>(&namespace);
    finalizer(&api, FINALIZER, spec, |event| async {
        match event {
            FinalizerEvent::Apply(spec) => apply(spec, &context).await,
            FinalizerEvent::Cleanup(spec) => cleanup(spec, &context).await,
        }
    })
    .await
    .map_err(ControllerError::from)
}

async fn apply(spec: Arc<ImageVersionSpec>, context: &Context) -> Result<Action, ControllerError> {
    match (&spec.spec.master, &spec.spec.prepared) {
        (Some(master), _) => reconcile_master(&spec, master, context).await,
        (None, Some(prepared)) => reconcile_prepared(&spec, prepared, context).await,
        (None, None) => Ok(Action::await_change()),
    }
}

/// The version and definition of a spec, or the reason they are missing.
async fn version_and_definition(
    context: &Context,
    namespace: &str,
    spec: &ImageVersionSpec,
) -> Result<Result<(ImageVersion, ImageDefinition), SpecFailure>, ControllerError> {
    let Some(version) = context
        .api::<ImageVersion>(namespace)
        .get_opt(&spec.spec.image_version_ref)
        .await?
    else {
        return Ok(Err(SpecFailure::with_reason(
            TaskState::UnexpectedError,
            "ImageVersionNotFound",
            format!(
                "spec.imageVersionRef: image version '{}' was not found in the namespace",
                spec.spec.image_version_ref
            ),
        )));
    };
    let Some(definition) = context
        .api::<ImageDefinition>(namespace)
        .get_opt(&version.spec.image_definition_ref)
        .await?
    else {
        return Ok(Err(SpecFailure::with_reason(
            TaskState::UnexpectedError,
            "ImageDefinitionNotFound",
            format!(
                "image version '{}': image definition '{}' was not found in the namespace",
                version.name_any(),
                version.spec.image_definition_ref
            ),
        )));
    };
    Ok(Ok((version, definition)))
}

/// The hosting unit and its connection, when both exist.
async fn unit_and_connection(
    context: &Context,
    namespace: &str,
    unit: &str,
) -> Result<(Option<HostingUnit>, Option<HypervisorConnection>), ControllerError> {
    let unit = context.api::<HostingUnit>(namespace).get_opt(unit).await?;
    let connection = match &unit {
        Some(u) => {
            context
                .api::<HypervisorConnection>(namespace)
                .get_opt(&u.spec.connection_ref)
                .await?
        }
        None => None,
    };
    Ok((unit, connection))
}

fn backend_for(
    context: &Context,
    unit: &HostingUnit,
    connection: Option<&HypervisorConnection>,
) -> Result<Arc<dyn Backend>, SpecFailure> {
    let connection = connection.ok_or_else(|| {
        SpecFailure::with_reason(
            TaskState::HostingUnitNotFound,
            "HypervisorConnectionNotFound",
            format!(
                "hosting unit '{}': spec.connectionRef: hypervisor connection '{}' was not found in the namespace",
                unit.name_any(),
                unit.spec.connection_ref
            ),
        )
    })?;
    context
        .backends
        .for_hosting_unit(unit, connection)
        .map_err(|e| SpecFailure::backend(&e, &format!("hosting unit '{}': ", unit.name_any())))
}

async fn reconcile_master(
    spec: &ImageVersionSpec,
    master: &MasterImageSpec,
    context: &Context,
) -> Result<Action, ControllerError> {
    let namespace = namespace_of(spec)?;
    let (schemes, _) = schemes_and_machines(context, &namespace).await?;
    let current = spec.status.clone().unwrap_or_default();
    let mut status = ImageVersionSpecStatus {
        observed_generation: spec.metadata.generation,
        spec_kind: Some(SpecKind::Master),
        hosting_unit_name: Some(master.hosting_unit_ref.clone()),
        provisioning_scheme_count: schemes_using(&BTreeSet::from([spec.name_any()]), &schemes),
        ..ImageVersionSpecStatus::default()
    };
    let outcome = resolve_master(context, &namespace, spec, master, &mut status).await?;
    let conditions = match &outcome {
        Ok(()) => {
            status.image_version_spec_status = ImageStatus::Success;
            vec![
                DesiredCondition::true_(
                    condition_type::READY,
                    "Available",
                    format!(
                        "master image {} on hosting unit '{}'",
                        status.master_image.clone().unwrap_or_default(),
                        master.hosting_unit_ref
                    ),
                ),
                DesiredCondition::false_(condition_type::PROGRESSING, "Available", "resolved"),
                DesiredCondition::false_(condition_type::DEGRADED, "Available", "resolved"),
            ]
        }
        Err(failure) => {
            status.image_version_spec_status = ImageStatus::Failed;
            vec![
                DesiredCondition::false_(condition_type::READY, &failure.reason, &failure.message),
                DesiredCondition::false_(
                    condition_type::PROGRESSING,
                    &failure.reason,
                    &failure.message,
                ),
                DesiredCondition::true_(
                    condition_type::DEGRADED,
                    &failure.reason,
                    &failure.message,
                ),
            ]
        }
    };
    status.conditions = merge(
        &current.conditions,
        &conditions,
        spec.metadata.generation,
        Timestamp::now(),
    );
    if status != current {
        write(context, spec, &status).await?;
        let was_reason = ready_reason(&current);
        let now_reason = ready_reason(&status);
        if was_reason != now_reason {
            match &outcome {
                Ok(()) => {
                    publish(
                        context,
                        spec,
                        EventType::Normal,
                        "MasterImageResolved",
                        "ResolveMasterImage",
                        format!(
                            "master image {} ({} bytes)",
                            status.master_image.clone().unwrap_or_default(),
                            status.disk_size_bytes.unwrap_or_default()
                        ),
                    )
                    .await;
                }
                Err(failure) => {
                    publish(
                        context,
                        spec,
                        EventType::Warning,
                        &failure.reason,
                        "ResolveMasterImage",
                        failure.message.clone(),
                    )
                    .await;
                }
            }
        }
    }
    Ok(Action::requeue(if outcome.is_ok() {
        context.config.resync.min(Duration::from_secs(120))
    } else {
        Duration::from_secs(10)
    }))
}

/// Resolves a master spec: its version and definition, its hosting unit, the snapshot on disk.
async fn resolve_master(
    context: &Context,
    namespace: &str,
    spec: &ImageVersionSpec,
    master: &MasterImageSpec,
    status: &mut ImageVersionSpecStatus,
) -> Result<Result<(), SpecFailure>, ControllerError> {
    let definition = match version_and_definition(context, namespace, spec).await? {
        Ok((_, definition)) => definition,
        Err(failure) => return Ok(Err(failure)),
    };
    let (unit, connection) =
        unit_and_connection(context, namespace, &master.hosting_unit_ref).await?;
    let located = match check_master(master, unit.as_ref(), &definition, "spec.master") {
        Ok(located) => located,
        Err(failure) => return Ok(Err(failure)),
    };
    status.master_image = Some(located.relative.clone());
    let Some(unit) = unit else {
        return Ok(Err(SpecFailure::new(TaskState::HostingUnitNotFound, "")));
    };
    let backend = match backend_for(context, &unit, connection.as_ref()) {
        Ok(backend) => backend,
        Err(failure) => return Ok(Err(failure)),
    };
    let op = Operation::Measure(MeasureRequest {
        master: located.master_ref(),
    });
    Ok(match run_once(backend.as_ref(), op).await {
        Ok(Output::Measurement(m)) => {
            set_sizes(status, m.virtual_size);
            Ok(())
        }
        Ok(other) => Err(SpecFailure::new(
            TaskState::UnexpectedError,
            format!("the backend answered a measure with {other:?}"),
        )),
        Err(error) => Err(SpecFailure::backend(
            &error,
            "spec.master.masterImagePath: ",
        )),
    })
}

fn ready_reason(status: &ImageVersionSpecStatus) -> Option<(String, String)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == condition_type::READY)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// Everything a prepare needs, located.
struct PreparePlan {
    backend: Arc<dyn Backend>,
    request: PrepareRequest,
    master: LocatedMaster,
}

/// Locates the resources of a prepare (the task's `LocatingResources` step).
async fn locate_prepare(
    context: &Context,
    spec: &ImageVersionSpec,
    prepared: &PreparedImageSpec,
) -> Result<Result<PreparePlan, SpecFailure>, ControllerError> {
    let namespace = namespace_of(spec)?;
    let (_, definition) = match version_and_definition(context, &namespace, spec).await? {
        Ok(found) => found,
        Err(failure) => return Ok(Err(failure)),
    };
    let all_specs = context
        .api::<ImageVersionSpec>(&namespace)
        .list(&ListParams::default())
        .await?
        .items;
    let source_field = field::PREPARED_SOURCE_SPEC_REF;
    let Some(source) = all_specs
        .iter()
        .find(|s| s.name_any() == prepared.source_spec_ref)
    else {
        return Ok(Err(SpecFailure::with_reason(
            TaskState::SnapshotNotFound,
            "ImageVersionSpecNotFound",
            format!(
                "{source_field}: image version spec '{}' was not found in the namespace",
                prepared.source_spec_ref
            ),
        )));
    };
    let Some(master) = &source.spec.master else {
        return Ok(Err(SpecFailure::new(
            TaskState::MasterImageNotASnapshot,
            format!(
                "{source_field}: image version spec '{}' is a prepared spec; a prepared spec is made from a master spec",
                prepared.source_spec_ref
            ),
        )));
    };
    let (unit, connection) =
        unit_and_connection(context, &namespace, &master.hosting_unit_ref).await?;
    let prefix = format!("{source_field} '{}': spec.master", prepared.source_spec_ref);
    let plan = (|| {
        let located = check_master(master, unit.as_ref(), &definition, &prefix)?;
        check_unique(spec, &located.hosting_unit, &all_specs)?;
        let unit = unit
            .as_ref()
            .ok_or_else(|| SpecFailure::new(TaskState::HostingUnitNotFound, ""))?;
        check_prepared_networks(prepared, unit)?;
        let backend = backend_for(context, unit, connection.as_ref())?;
        let uid = spec.uid().ok_or_else(|| {
            SpecFailure::new(TaskState::UnexpectedError, "the spec has no metadata.uid")
        })?;
        Ok(PreparePlan {
            backend,
            request: PrepareRequest {
                image_id: uid,
                master: located.master_ref(),
                target_storages: located.storages.clone(),
                owner: super::backends::owner(spec, spec.spec.deletion_policy),
            },
            master: located,
        })
    })();
    Ok(plan)
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
            if let Some(name) = super::prov_scheme::leaf_name(path)
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

/// Publishes a Warning when a prepared spec starts waiting for a missing object (or for
/// another one), so the missing reference shows in `kubectl get events` as well.
async fn waiting_event(
    context: &Context,
    spec: &ImageVersionSpec,
    before: &ImageVersionSpecStatus,
    after: &ImageVersionSpecStatus,
    failure: &SpecFailure,
) {
    let said = |s: &ImageVersionSpecStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == condition_type::READY)
            .map(|c| c.message.clone())
    };
    if said(before) != said(after) {
        publish(
            context,
            spec,
            EventType::Warning,
            &failure.reason,
            "PrepareImage",
            format!("waiting: {}", failure.message),
        )
        .await;
    }
}

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
            Timestamp::now(),
        ),
    }
}

async fn reconcile_prepared(
    spec: &ImageVersionSpec,
    prepared: &PreparedImageSpec,
    context: &Context,
) -> Result<Action, ControllerError> {
    let namespace = namespace_of(spec)?;
    let name = spec.name_any();
    let key = job_key(&namespace, &name);
    let (schemes, _) = schemes_and_machines(context, &namespace).await?;
    let scheme_count = schemes_using(&BTreeSet::from([name.clone()]), &schemes);
    let current = spec.status.clone().unwrap_or_default();
    let before = current.task.clone();
    let annotations = TaskAnnotations::read(spec.annotations());
    let job = before
        .as_ref()
        .and_then(|t| context.tasks.snapshot_of(&key, &t.task_id));
    let new_generation = current
        .observed_generation
        .is_some_and(|g| Some(g) != spec.metadata.generation);
    let action = decide_task_action(before.as_ref(), job.is_some(), &annotations, new_generation);
    let now = Timestamp::now();
    let mut scratch = current.clone();
    let mut task = before.clone();
    let mut urgent = true;
    let mut waiting: Option<SpecFailure> = None;
    match action {
        TaskAction::Start | TaskAction::Resume => {
            let mut t = match (action, &before) {
                (TaskAction::Resume, Some(t)) => {
                    let mut t = t.clone();
                    // A terminal task is never resumed; `decide_task_action` guarantees it.
                    let _ = t.resume(now);
                    t
                }
                _ => {
                    context.tasks.forget(&key).await;
                    let mut t = TaskStatus::start(
                        TaskType::NewImageVersionSpec,
                        uuid::Uuid::new_v4().to_string(),
                        now,
                    );
                    let _ = t.advance(TaskState::LocatingResources, now);
                    scratch.instances.clear();
                    t
                }
            };
            match locate_prepare(context, spec, prepared).await? {
                Ok(plan) => {
                    scratch.hosting_unit_name = Some(plan.master.hosting_unit.clone());
                    scratch.master_image = Some(plan.master.relative.clone());
                    context
                        .tasks
                        .spawn(
                            &key,
                            &t.task_id,
                            plan.backend,
                            Operation::Prepare(plan.request),
                        )
                        .await;
                    if action == TaskAction::Resume {
                        tracing::info!(key, task_id = t.task_id, state = %t.task_state, "task resumed after restart");
                    }
                }
                Err(failure)
                    if before.is_none() && WAIT_FOR_REASONS.contains(&failure.reason.as_str()) =>
                {
                    waiting = Some(failure);
                }
                Err(failure) => {
                    // A state this task type cannot fail in would leave the task running
                    // forever: fail it as UnexpectedError, naming the state.
                    if t.fail(failure.state, failure.message.clone(), now).is_err() {
                        let _ = t.fail(
                            TaskState::UnexpectedError,
                            format!("{}: {}", failure.state, failure.message),
                            now,
                        );
                    }
                }
            }
            if waiting.is_none() {
                task = Some(t);
            }
        }
        TaskAction::Follow => {
            if let (Some(t), Some(snapshot)) = (task.as_mut(), job.as_ref()) {
                let storages = prepared_storages(context, &namespace, &current).await;
                let _ = follow_snapshot(t, snapshot, image_step_percent(storages), now);
                if let Some(result) = &snapshot.result {
                    let _ = apply_result(t, &mut scratch, result, now);
                    context.tasks.forget(&key).await;
                }
                urgent = before.as_ref().is_none_or(|b| {
                    b.task_state != t.task_state || b.task_progress == 0 && t.task_progress > 0
                });
            }
        }
        TaskAction::Cancel => {
            context.tasks.forget(&key).await;
            if let Some(t) = task.as_mut() {
                let _ = t.cancel(
                    "canceled by the annotation mcs.imaging.dev/cancel; partial disks removed",
                    now,
                );
            }
            remove_prepared_disks(context, spec, &namespace, &current, DeletionPolicy::Delete)
                .await;
        }
        TaskAction::Idle => {}
    }
    let mut status = prepared_status(spec, &scratch, task.as_ref(), scheme_count);
    if let Some(failure) = &waiting {
        status.conditions = merge(
            &current.conditions,
            &waiting_conditions(failure),
            spec.metadata.generation,
            now,
        );
    }
    let running = task.as_ref().is_some_and(|t| !t.is_terminal());
    let mut requeue = if running {
        context.tasks.follow_interval()
    } else if waiting.is_some() {
        Duration::from_secs(5)
    } else if status.image_version_spec_status == ImageStatus::Success {
        context.config.resync
    } else {
        Duration::from_secs(30)
    };
    let clock_only = without_clock(&status) == without_clock(&current);
    let clock_stale = current
        .task
        .as_ref()
        .is_none_or(|t| now.duration_since(t.last_update_time) >= CLOCK_REFRESH);
    if status != current && (!clock_only || clock_stale) {
        match context.tasks.may_write(&key, urgent) {
            Ok(()) => {
                write(context, spec, &status).await?;
                if let Some(after) = &task {
                    task_event(context, spec, before.as_ref(), after).await;
                }
                if let Some(failure) = &waiting {
                    waiting_event(context, spec, &current, &status, failure).await;
                }
            }
            Err(wait) => requeue = wait,
        }
    }
    let consumed = annotations.consumed(action, running);
    if !consumed.is_empty() {
        let api = context.api::<ImageVersionSpec>(&namespace);
        remove_annotations(&api, &name, &consumed).await?;
    }
    Ok(Action::requeue(requeue))
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

/// How many storages the prepare writes to (for the progress mapping).
async fn prepared_storages(
    context: &Context,
    namespace: &str,
    current: &ImageVersionSpecStatus,
) -> usize {
    let Some(unit) = current.hosting_unit_name.as_deref() else {
        return 1;
    };
    match context.api::<HostingUnit>(namespace).get_opt(unit).await {
        Ok(Some(u)) => u.spec.storages.len(),
        _ => 1,
    }
}

/// Removes (or retains) the prepared image of `spec` on the storages of its hosting unit.
/// Returns what happened, as an event note; `None` when nothing could be done.
async fn remove_prepared_disks(
    context: &Context,
    spec: &ImageVersionSpec,
    namespace: &str,
    status: &ImageVersionSpecStatus,
    policy: DeletionPolicy,
) -> Option<Result<String, BackendError>> {
    let uid = spec.uid()?;
    let unit_name = status.hosting_unit_name.as_deref()?;
    let (unit, connection) = unit_and_connection(context, namespace, unit_name)
        .await
        .ok()?;
    let unit = unit?;
    let backend = backend_for(context, &unit, connection.as_ref()).ok()?;
    let op = Operation::DeletePreparedImage(DeletePreparedRequest {
        image_id: uid,
        storages: unit.spec.storages.iter().map(|s| s.name.clone()).collect(),
        policy: match policy {
            DeletionPolicy::Delete => mcs_backend::DeletionPolicy::Delete,
            DeletionPolicy::Retain => mcs_backend::DeletionPolicy::Retain,
        },
    });
    Some(match run_once(backend.as_ref(), op).await {
        Ok(Output::Deleted(outcome)) => Ok(format!(
            "{} files removed, {} retained",
            outcome.removed.len(),
            outcome.retained.len()
        )),
        Ok(other) => Ok(format!("backend answered {other:?}")),
        Err(error) => Err(error),
    })
}

async fn cleanup(
    spec: Arc<ImageVersionSpec>,
    context: &Context,
) -> Result<Action, ControllerError> {
    let namespace = namespace_of(&spec)?;
    let name = spec.name_any();
    let (schemes, machines) = schemes_and_machines(context, &namespace).await?;
    let users = users_of_specs(&BTreeSet::from([name.clone()]), &schemes, &machines);
    let current = spec.status.clone().unwrap_or_default();
    if !users.is_empty() {
        let error = ControllerError::InUse {
            object: format!("image version spec '{name}'"),
            users,
        };
        let object: &_ = spec.as_ref();
        report_blocked_deletion(context, object, &current.conditions, &error, |conditions| {
            let status = ImageVersionSpecStatus {
                conditions,
                observed_generation: object.metadata.generation,
                ..current.clone()
            };
            async move { write(context, object, &status).await }
        })
        .await?;
        return Err(error);
    }
    if spec.spec.prepared.is_some() {
        context.tasks.forget(&job_key(&namespace, &name)).await;
        let policy = spec.spec.deletion_policy;
        match remove_prepared_disks(context, &spec, &namespace, &current, policy).await {
            Some(Ok(note)) => {
                publish(
                    context,
                    spec.as_ref(),
                    EventType::Normal,
                    if policy == DeletionPolicy::Retain {
                        "DisksRetained"
                    } else {
                        "DisksRemoved"
                    },
                    "Delete",
                    note,
                )
                .await;
            }
            Some(Err(error)) => return Err(error.into()),
            None => {
                publish(
                    context,
                    spec.as_ref(),
                    EventType::Warning,
                    "DisksNotRemoved",
                    "Delete",
                    "the hosting unit or its connection is gone; prepared disks, if any, were left on storage".into(),
                )
                .await;
            }
        }
    }
    Ok(Action::await_change())
}

fn error_policy(
    _spec: Arc<ImageVersionSpec>,
    error: &ControllerError,
    _context: Arc<Context>,
) -> Action {
    requeue_after_error(CONTROLLER, error)
}

/// Runs the ImageVersionSpec controller until the stream ends.
pub async fn run(context: Arc<Context>) {
    let specs = context.watched_api::<ImageVersionSpec>();
    let controller =
        Controller::new(specs, watcher_config()).trigger_backoff(super::trigger_backoff());
    let store = controller.store();
    context.caches.track(CONTROLLER, store.clone());
    let unit_store = store.clone();
    controller
        .watches(
            context.watched_api::<ProvScheme>(),
            watcher_config(),
            |scheme: ProvScheme| {
                scheme.namespace().map(|ns| {
                    ObjectRef::<ImageVersionSpec>::new(&scheme.spec.image_version_spec_ref)
                        .within(&ns)
                })
            },
        )
        .watches(
            context.watched_api::<HostingUnit>(),
            watcher_config(),
            move |unit: HostingUnit| {
                let namespace = unit.namespace();
                let name = unit.name_any();
                unit_store
                    .state()
                    .into_iter()
                    .filter(move |s| {
                        s.namespace() == namespace
                            && s.spec
                                .master
                                .as_ref()
                                .is_some_and(|m| m.hosting_unit_ref == name)
                    })
                    .map(|s| ObjectRef::from_obj(s.as_ref()))
            },
        )
        .watches(
            context.watched_api::<ImageVersion>(),
            watcher_config(),
            move |version: ImageVersion| {
                let namespace = version.namespace();
                let name = version.name_any();
                store
                    .state()
                    .into_iter()
                    .filter(move |s| s.namespace() == namespace && s.spec.image_version_ref == name)
                    .map(|s| ObjectRef::from_obj(s.as_ref()))
            },
        )
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                super::log_run_error(CONTROLLER, &error);
            }
        })
        .await;
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
                service_offering: None,
                machine_profile: None,
                custom_properties: None,
                vm_cpu_count: None,
                vm_memory_mb: None,
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
        let all = vec![m.clone(), a.clone(), b.clone()];
        assert!(check_unique(&a, "lab", &all).is_ok(), "a is first by name");
        let err = check_unique(&b, "lab", &all).expect_err("b is second");
        assert_eq!(err.state, TaskState::ImageVersionSpecAlreadyExists);
        assert!(err.message.contains("'a'"), "{}", err.message);
        let all = vec![m, a.clone(), b, c];
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
}
