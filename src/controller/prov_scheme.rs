//! The ProvScheme controller (`New-ProvScheme`, `Set-ProvScheme`, `Set-ProvSchemeImage`).
//!
//! A new scheme runs its task (`Processing -> LocatingResources -> ReplicatingMasterImage ->
//! CommittingScheme -> Finished`) and makes version 1. Afterwards every accepted change of the
//! configuration makes the next version (or reverts to a stored one), stored as a
//! ControllerRevision (see [`super::scheme_versions`]). A change that breaks a cross-object
//! rule is rejected with the SDK's reason in the `Degraded` condition and a Warning Event; the
//! current version, and every machine, stays as it was. `machineCount` creates and deletes
//! ProvVM objects; their disks are the ProvVM controller's work. The controller never writes
//! `.spec`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use mcs_domain::Reason;
use mcs_domain::history::Decision;
use mcs_domain::inventory_path::InventoryPath;
use mcs_domain::naming::{NamingScheme, k8s_object_name};
use mcs_domain::rules::{
    self, ImageSpecFacts, ObjectKind, RuleError, SchemeFacts, field as rule_field,
};
use mcs_domain::task::{TaskState, TaskStatus, TaskType};
use serde_json::json;

use super::conditions::{DesiredCondition, merge};
use super::events;
use super::status::{apply_status, field_manager};
use super::{Context, ControllerError, watcher_config};
use super::{scheme_versions, tasks};
use crate::api::{
    ANNOTATION_CANCEL, ANNOTATION_RETRY, DesiredPowerState, HostingUnit, IdentityPool,
    ImageDefinition, ImageHistoryEntry, ImageStatus, ImageVersion, ImageVersionSpec,
    LABEL_PROVSCHEME, ProvScheme, ProvSchemeSpec, ProvSchemeStatus, ProvVm, ProvVmSpec,
    SessionSupport, SpecKind, UpdateStatus, condition_type,
};

const CONTROLLER: &str = "provscheme";
/// Finalizer that keeps a scheme until its machines (and their disks) are gone.
pub const FINALIZER: &str = "mcs.imaging.dev/provscheme-machines";
/// How many entries `status.imageHistory` keeps.
pub const IMAGE_HISTORY: usize = 10;
/// How many machine objects are created at once when `initialBatchSizeHint` is not set.
pub const DEFAULT_BATCH: usize = 100;
/// How many indices are tried when machine names collide with another writer.
const NAME_ATTEMPTS: usize = 20;

/// The objects a scheme refers to, as found in its namespace.
#[derive(Clone, Debug, Default)]
pub struct References {
    /// The hosting unit, if it exists.
    pub hosting_unit: Option<HostingUnit>,
    /// The identity pool, if it exists.
    pub identity_pool: Option<IdentityPool>,
    /// The prepared image version spec, if it exists.
    pub image: Option<ImageVersionSpec>,
    /// The image definition of the spec's version, if found.
    pub definition: Option<ImageDefinition>,
}

/// What the rules say about a scheme's spec.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// The spec may be used.
    Accept,
    /// The prepared image is not ready yet (Unknown or InProgress); nothing is wrong.
    Wait(String),
    /// The spec breaks rules; every problem found.
    Reject(Vec<RuleError>),
}

/// The rule facts of a scheme spec.
pub fn scheme_facts(spec: &ProvSchemeSpec) -> SchemeFacts {
    SchemeFacts {
        hosting_unit: spec.hosting_unit_ref.clone(),
        tenancy_type: spec.tenancy_type.unwrap_or_default(),
        use_write_back_cache: spec.use_write_back_cache,
        write_back_cache_disk_size: spec.write_back_cache_disk_size_gb.map(i64::from),
        write_back_cache_memory_size: spec.write_back_cache_memory_size_mb.map(i64::from),
        vm_cpu_count: spec.vm_cpu_count.map(i64::from),
        vm_memory_mb: spec.vm_memory_mb,
        service_offering: spec.service_offering.clone(),
        machine_profile: spec.machine_profile.clone(),
        machine_profile_tenancy: None,
        network_mapping: Some(spec.network_mapping.clone()),
        max_versions: Some(i64::from(spec.max_versions)),
    }
}

/// The leaf item name of an inventory path (`lan` for `XDHyp:\HostingUnits\lab\lan.network`).
pub fn leaf_name(path: &str) -> Option<String> {
    InventoryPath::parse(path)
        .ok()
        .and_then(|p| p.leaf().map(|l| l.name.clone()))
}

/// Checks that the network and service offering paths name items the hosting unit has.
fn check_inventory(spec: &ProvSchemeSpec, unit: &HostingUnit) -> Vec<RuleError> {
    let mut errors = Vec::new();
    let networks: BTreeSet<&str> = unit.spec.networks.iter().map(|n| n.name.as_str()).collect();
    for (nic, path) in &spec.network_mapping {
        if let Some(name) = leaf_name(path)
            && !networks.contains(name.as_str())
        {
            errors.push(RuleError::NetworkPathResolutionFailed {
                field: format!("{}[{nic:?}]", rule_field::NETWORK_MAPPING),
                detail: format!(
                    "network '{name}' is not a network of hosting unit '{}' (it has: {})",
                    unit.name_any(),
                    list(networks.iter().copied())
                ),
            });
        }
    }
    if let Some(path) = &spec.service_offering
        && let Some(name) = leaf_name(path)
        && !unit.spec.service_offerings.iter().any(|o| o.name == name)
    {
        errors.push(RuleError::ServiceOfferingPathResolutionFailed {
            field: rule_field::SERVICE_OFFERING.to_owned(),
            hosting_unit: unit.name_any(),
            detail: format!(
                "service offering '{name}' is not defined in the hosting unit (it has: {})",
                list(unit.spec.service_offerings.iter().map(|o| o.name.as_str()))
            ),
        });
    }
    errors.extend(check_security_groups(spec, unit));
    errors
}

/// Checks that every security group path names a group of the hosting unit.
fn check_security_groups(spec: &ProvSchemeSpec, unit: &HostingUnit) -> Vec<RuleError> {
    let hosting_unit = unit.name_any();
    let groups = || unit.spec.security_groups.iter().map(|g| g.name.as_str());
    spec.security_groups
        .iter()
        .enumerate()
        .filter_map(|(i, path)| {
            let detail = match InventoryPath::parse(path)
                .and_then(|p| p.within(&hosting_unit).cloned())
                .and_then(|p| p.expect_leaf_kind("securitygroup").cloned())
            {
                Err(e) => e.to_string(),
                Ok(leaf) if groups().any(|g| g == leaf.name) => return None,
                Ok(leaf) => format!(
                    "security group '{}' is not a security group of hosting unit '{hosting_unit}' (it has: {})",
                    leaf.name,
                    list(groups())
                ),
            };
            Some(RuleError::SecurityGroupPathResolutionFailed {
                field: format!("{}[{i}]", rule_field::SECURITY_GROUPS),
                hosting_unit: hosting_unit.clone(),
                detail,
            })
        })
        .collect()
}

fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Judges a scheme spec against the objects it refers to and, for an existing scheme, against
/// the configuration of its current version (`current`) and its fixed session support.
pub fn judge(
    spec: &ProvSchemeSpec,
    current: Option<&ProvSchemeSpec>,
    session: Option<SessionSupport>,
    refs: &References,
) -> Verdict {
    let mut errors = Vec::new();
    let unit = rules::require(
        refs.hosting_unit.as_ref(),
        ObjectKind::HostingUnit,
        rule_field::HOSTING_UNIT_REF,
        &spec.hosting_unit_ref,
    );
    if let Err(e) = &unit {
        errors.push(e.clone());
    }
    if let Err(e) = rules::require(
        refs.identity_pool.as_ref(),
        ObjectKind::IdentityPool,
        rule_field::IDENTITY_POOL_REF,
        &spec.identity_pool_ref,
    ) {
        errors.push(e);
    }
    let mut wait = None;
    match rules::require(
        refs.image.as_ref(),
        ObjectKind::ImageVersionSpec,
        rule_field::IMAGE_VERSION_SPEC_REF,
        &spec.image_version_spec_ref,
    ) {
        Err(e) => errors.push(e),
        Ok(image) => {
            let status = image.status.clone().unwrap_or_default();
            let kind = if image.spec.prepared.is_some() {
                SpecKind::Prepared
            } else {
                SpecKind::Master
            };
            let state = status.image_version_spec_status;
            let preparing = kind == SpecKind::Prepared
                && matches!(state, ImageStatus::Unknown | ImageStatus::InProgress);
            if preparing && current.is_none() {
                wait = Some(format!(
                    "waiting for prepared image version spec '{}' (state {state}) to reach Success",
                    image.name_any()
                ));
            } else {
                let facts = ImageSpecFacts {
                    name: image.name_any(),
                    kind,
                    status: state,
                    definition: refs
                        .definition
                        .as_ref()
                        .map(ResourceExt::name_any)
                        .unwrap_or_default(),
                };
                let definition_session =
                    refs.definition.as_ref().map(|d| d.spec.vda_session_support);
                let checked = match definition_session {
                    Some(ds) => rules::check_scheme_image(&facts, session, ds),
                    None if kind == SpecKind::Prepared && state == ImageStatus::Success => {
                        Err(RuleError::ImageDefinitionNotFound {
                            field: rule_field::IMAGE_VERSION_SPEC_REF.to_owned(),
                            name: image.spec.image_version_ref.clone(),
                        })
                    }
                    None => rules::check_scheme_image(&facts, None, SessionSupport::SingleSession),
                };
                if let Err(e) = checked {
                    errors.push(e);
                }
            }
        }
    }
    let new = scheme_facts(spec);
    match current {
        Some(old) => errors.extend(rules::check_scheme_update(&scheme_facts(old), &new)),
        None => errors.extend(rules::check_scheme(&new)),
    }
    if let Ok(unit) = unit {
        errors.extend(check_inventory(spec, unit));
    }
    if !errors.is_empty() {
        Verdict::Reject(errors)
    } else if let Some(message) = wait {
        Verdict::Wait(message)
    } else {
        Verdict::Accept
    }
}

/// The task state a creation task fails in for a rule error (the New-ProvScheme failures).
pub fn failure_state(error: &RuleError) -> TaskState {
    match error {
        RuleError::HostingUnitNotFound { .. } => TaskState::HostingUnitNotFound,
        RuleError::IdentityPoolNotFound { .. } => TaskState::IdentityPoolNotFound,
        RuleError::ImageVersionSpecNotFound { .. }
        | RuleError::ImageVersionSpecNotUsable { .. }
        | RuleError::ImageVersionNotFound { .. }
        | RuleError::ImageDefinitionNotFound { .. }
        | RuleError::VdaSessionSupportMismatch { .. } => TaskState::ImageVersionSpecNotUsable,
        RuleError::NetworkPathResolutionFailed { .. } => TaskState::NetworkPathResolutionFailed,
        RuleError::ServiceOfferingPathResolutionFailed { .. } => {
            TaskState::ServiceOfferingPathResolutionFailed
        }
        RuleError::SecurityGroupPathResolutionFailed { .. } => {
            TaskState::SecurityGroupPathResolutionFailed
        }
        RuleError::MachineProfilePathResolutionFailed { .. } => TaskState::MachineProfileNotFound,
        _ => TaskState::UnexpectedError,
    }
}

/// The message of a list of rule errors: each on its own line.
pub fn rejection_message(errors: &[RuleError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// One machine of a scheme as the scale plan sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineSlot {
    /// The ProvVM object's name.
    pub object: String,
    /// Its index in the identity pool.
    pub index: u64,
    /// When it was created (seconds since the epoch; 0 when unknown).
    pub created: i64,
    /// Whether its disks are not built yet (its task has not finished).
    pub building: bool,
}

/// What to do to reach the wanted machine count.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ScalePlan {
    /// Indices of machines to create, ascending.
    pub create: Vec<u64>,
    /// ProvVM objects to delete, newest first.
    pub delete: Vec<String>,
    /// Whether the identity pool had fewer free indices than machines were wanted.
    pub exhausted: bool,
}

/// Plans the machines of a scheme: creates the lowest free indices (at or above `start`, not
/// in `used`, which holds every index of the identity pool in use by any scheme), at most
/// `batch` machines building at once; deletes the newest machines first (latest creation, then
/// highest index).
pub fn plan_scale(
    machines: &[MachineSlot],
    desired: usize,
    used: &BTreeSet<u64>,
    start: u64,
    capacity: u64,
    batch: usize,
) -> ScalePlan {
    let mut plan = ScalePlan::default();
    if machines.len() > desired {
        let mut newest: Vec<&MachineSlot> = machines.iter().collect();
        newest.sort_by_key(|m| std::cmp::Reverse((m.created, m.index)));
        plan.delete = newest
            .into_iter()
            .take(machines.len() - desired)
            .map(|m| m.object.clone())
            .collect();
        return plan;
    }
    let building = machines.iter().filter(|m| m.building).count();
    let room = batch.max(1).saturating_sub(building);
    let wanted = (desired - machines.len()).min(room);
    let mut index = start;
    while plan.create.len() < wanted && index < capacity {
        if !used.contains(&index) {
            plan.create.push(index);
        }
        index += 1;
    }
    plan.exhausted = plan.create.len() < wanted;
    plan
}

/// Adds `entry` as the current image of `history` (newest first), keeping [`IMAGE_HISTORY`].
pub fn record_image(
    history: &[ImageHistoryEntry],
    spec: &str,
    now: Timestamp,
) -> Vec<ImageHistoryEntry> {
    if history
        .first()
        .is_some_and(|e| e.image_version_spec == spec && e.current)
    {
        return history.to_vec();
    }
    let mut out = vec![ImageHistoryEntry {
        image_version_spec: spec.to_owned(),
        date: now.to_string(),
        current: true,
    }];
    out.extend(history.iter().cloned().map(|mut e| {
        e.current = false;
        e
    }));
    out.truncate(IMAGE_HISTORY);
    out
}

/// Whether the scheme's creation task should (re)start: no task yet, or a failed one with a
/// new generation of the spec or the retry annotation.
fn should_start_task(scheme: &ProvScheme, status: &ProvSchemeStatus) -> bool {
    match &status.task {
        None => true,
        Some(task) if task.task_state.is_failure() || task.task_state == TaskState::Canceled => {
            scheme.annotations().contains_key(ANNOTATION_RETRY)
                || scheme.metadata.generation > status.observed_generation
        }
        Some(_) => false,
    }
}

async fn references(
    context: &Context,
    namespace: &str,
    spec: &ProvSchemeSpec,
) -> Result<References, ControllerError> {
    let hosting_unit = context
        .api::<HostingUnit>(namespace)
        .get_opt(&spec.hosting_unit_ref)
        .await?;
    let identity_pool = context
        .api::<IdentityPool>(namespace)
        .get_opt(&spec.identity_pool_ref)
        .await?;
    let image = context
        .api::<ImageVersionSpec>(namespace)
        .get_opt(&spec.image_version_spec_ref)
        .await?;
    let mut definition = None;
    if let Some(image) = &image
        && let Some(version) = context
            .api::<ImageVersion>(namespace)
            .get_opt(&image.spec.image_version_ref)
            .await?
    {
        definition = context
            .api::<ImageDefinition>(namespace)
            .get_opt(&version.spec.image_definition_ref)
            .await?;
    }
    Ok(References {
        hosting_unit,
        identity_pool,
        image,
        definition,
    })
}

async fn set_finalizers(
    api: &Api<ProvScheme>,
    scheme: &ProvScheme,
    finalizers: Vec<String>,
) -> Result<(), ControllerError> {
    let patch = json!({
        "metadata": { "finalizers": finalizers, "resourceVersion": scheme.resource_version() }
    });
    api.patch(
        &scheme.name_any(),
        &super::strict::patch(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

async fn machines_of(
    context: &Context,
    namespace: &str,
    scheme: &str,
) -> Result<Vec<ProvVm>, ControllerError> {
    let list = context
        .api::<ProvVm>(namespace)
        .list(&ListParams::default().labels(&scheme_versions::selector(scheme)))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|m| m.spec.prov_scheme_ref == scheme)
        .collect())
}

/// Deletes the scheme's machines and keeps the finalizer until they are gone.
async fn cleanup(
    scheme: &ProvScheme,
    context: &Context,
    namespace: &str,
) -> Result<Action, ControllerError> {
    let name = scheme.name_any();
    let machines = machines_of(context, namespace, &name).await?;
    let api = context.api::<ProvVm>(namespace);
    for machine in machines
        .iter()
        .filter(|m| m.metadata.deletion_timestamp.is_none())
    {
        match api
            .delete(&machine.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !machines.is_empty() {
        tracing::info!(scheme = %name, remaining = machines.len(), "waiting for machines to be deleted");
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let finalizers: Vec<String> = scheme
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    set_finalizers(&context.api::<ProvScheme>(namespace), scheme, finalizers).await?;
    Ok(Action::await_change())
}

/// Moves a running task to `to` unless it is already there or past it (a resumed task).
fn forward(
    task: &mut TaskStatus,
    to: TaskState,
    now: Timestamp,
) -> Result<(), mcs_domain::task::TaskError> {
    let ty = task.task_type;
    if ty.step_index(task.task_state) >= ty.step_index(to) {
        return Ok(());
    }
    task.advance(to, now)
}

/// Runs the creation task as far as it can go now; returns the task and whether version 1 may
/// be committed.
fn creation_task(
    scheme: &ProvScheme,
    status: &ProvSchemeStatus,
    verdict: &Verdict,
    now: Timestamp,
) -> Result<(TaskStatus, bool), ControllerError> {
    let mut task = match &status.task {
        Some(task) if !should_start_task(scheme, status) => task.clone(),
        _ => TaskStatus::start(
            TaskType::NewProvScheme,
            uuid::Uuid::new_v4().to_string(),
            now,
        ),
    };
    if task.is_terminal() {
        let finished = task.task_state == TaskState::Finished;
        return Ok((task, finished));
    }
    let transition = |e: mcs_domain::task::TaskError| ControllerError::Task(e.to_string());
    if tasks::TaskAnnotations::read(scheme.annotations()).cancel {
        task.cancel(
            format!("canceled by the annotation {ANNOTATION_CANCEL}"),
            now,
        )
        .map_err(transition)?;
        return Ok((task, false));
    }
    forward(&mut task, TaskState::LocatingResources, now).map_err(transition)?;
    match verdict {
        Verdict::Wait(message) => {
            task.report_progress(10.0, Some("WaitingForPreparedImage".into()), now)
                .map_err(transition)?;
            tracing::info!(scheme = %scheme.name_any(), %message, "scheme task waiting");
            Ok((task, false))
        }
        Verdict::Reject(errors) => {
            let first = errors
                .first()
                .map_or(TaskState::UnexpectedError, failure_state);
            task.fail(first, rejection_message(errors), now)
                .map_err(transition)?;
            Ok((task, false))
        }
        Verdict::Accept => {
            forward(&mut task, TaskState::ReplicatingMasterImage, now).map_err(transition)?;
            forward(&mut task, TaskState::CommittingScheme, now).map_err(transition)?;
            Ok((task, true))
        }
    }
}

async fn reconcile(
    scheme: Arc<ProvScheme>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    let _timer = crate::metrics::global().reconcile(CONTROLLER);
    let namespace = scheme.namespace().ok_or(ControllerError::MissingMetadata {
        kind: "ProvScheme",
        field: "namespace",
    })?;
    let name = scheme.name_any();
    let schemes = context.api::<ProvScheme>(&namespace);
    if scheme.metadata.deletion_timestamp.is_some() {
        if scheme.finalizers().iter().any(|f| f == FINALIZER) {
            return cleanup(&scheme, &context, &namespace).await;
        }
        return Ok(Action::await_change());
    }
    if !scheme.finalizers().iter().any(|f| f == FINALIZER) {
        let mut finalizers = scheme.finalizers().to_vec();
        finalizers.push(FINALIZER.to_owned());
        set_finalizers(&schemes, &scheme, finalizers).await?;
        return Ok(Action::await_change());
    }

    let now = Timestamp::now();
    let current_status = scheme.status.clone().unwrap_or_default();
    let revisions = context.api::<ControllerRevision>(&namespace);
    let mut stored = scheme_versions::list(&revisions, &name).await?;
    let mut current = current_status
        .provisioning_scheme_version
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| stored.iter().any(|s| s.number == *n));
    let current_config: Option<ProvSchemeSpec> = current
        .and_then(|n| stored.iter().find(|s| s.number == n))
        .and_then(|s| serde_json::from_value(s.configuration.clone()).ok());
    let refs = references(&context, &namespace, &scheme.spec).await?;
    let session = current_status.session_support.or_else(|| {
        refs.definition
            .as_ref()
            .filter(|_| current.is_none())
            .map(|d| d.spec.vda_session_support)
    });
    let verdict = judge(
        &scheme.spec,
        current_config.as_ref(),
        current_status.session_support,
        &refs,
    );
    let mut status = ProvSchemeStatus {
        observed_generation: scheme.metadata.generation,
        session_support: session,
        selector: Some(scheme_versions::selector(&name)),
        ..current_status.clone()
    };
    let mut conditions: Vec<DesiredCondition> = Vec::new();
    let mut notices: Vec<Event> = Vec::new();
    let config = scheme_versions::configuration(&scheme.spec)?;
    let machines = machines_of(&context, &namespace, &name).await?;
    let referenced: BTreeSet<u32> = machines
        .iter()
        .filter_map(|m| m.status.as_ref()?.provisioning_scheme_version)
        .filter_map(|n| u32::try_from(n).ok())
        .collect();

    let mut accepted = false;
    if current.is_none() {
        let (task, commit) = creation_task(&scheme, &current_status, &verdict, now)?;
        status.task = Some(task);
        if let Verdict::Reject(errors) = &verdict
            && status
                .task
                .as_ref()
                .is_some_and(|t| t.task_state.is_failure())
            && current_status.task.as_ref().map(|t| &t.task_id)
                != status.task.as_ref().map(|t| &t.task_id)
        {
            let reason = errors.first().map_or("UnexpectedError", Reason::reason);
            notices.push(events::event(
                EventType::Warning,
                reason,
                "CreateScheme",
                rejection_message(errors),
            ));
        }
        accepted = commit;
    } else {
        match &verdict {
            Verdict::Accept => accepted = true,
            Verdict::Wait(_) => {}
            Verdict::Reject(errors) => {
                let reason = errors.first().map_or("UnexpectedError", Reason::reason);
                let message = format!(
                    "the change was rejected; version {} stays current: {}",
                    current.unwrap_or_default(),
                    rejection_message(errors)
                );
                let seen = current_status.conditions.iter().any(|c| {
                    c.type_ == condition_type::DEGRADED
                        && c.status == "True"
                        && c.reason == reason
                        && c.message == message
                        && c.observed_generation == scheme.metadata.generation
                });
                if !seen {
                    notices.push(events::event(
                        EventType::Warning,
                        reason,
                        "UpdateScheme",
                        message.clone(),
                    ));
                }
                conditions.push(DesiredCondition::true_(
                    condition_type::DEGRADED,
                    reason,
                    message,
                ));
            }
        }
    }

    if accepted {
        let highest = scheme_versions::recorded_highest(&scheme);
        match scheme_versions::decide(
            &stored,
            current,
            highest,
            &config,
            scheme.spec.max_versions,
            &referenced,
        ) {
            Ok(change) => {
                let number = change.number();
                if let Decision::New(n) = change.plan.decision() {
                    scheme_versions::create(&revisions, &scheme, n, &config, &change.changes)
                        .await
                        .map_err(|e| ControllerError::Versions(e.to_string()))?;
                    notices.push(events::event(
                        EventType::Normal,
                        "VersionCreated",
                        "UpdateScheme",
                        format!("version {n}: {}", change.changes),
                    ));
                }
                if let Decision::Revert(n) = change.plan.decision() {
                    notices.push(events::event(
                        EventType::Normal,
                        "VersionReverted",
                        "UpdateScheme",
                        format!(
                            "the configuration equals stored version {n}; version {n} is current again"
                        ),
                    ));
                }
                let new_highest = highest
                    .max(number)
                    .max(stored.iter().map(|s| s.number).max().unwrap_or(0));
                if !change.plan.delete().is_empty() || new_highest > highest {
                    scheme_versions::record_highest(&schemes, &scheme, new_highest).await?;
                }
                for pruned in change.plan.delete() {
                    scheme_versions::delete(&revisions, &name, *pruned).await?;
                }
                if !change.plan.delete().is_empty() {
                    notices.push(events::event(
                        EventType::Normal,
                        "VersionsPruned",
                        "UpdateScheme",
                        format!(
                            "pruned versions {:?} to keep at most spec.maxVersions={}",
                            change.plan.delete(),
                            scheme.spec.max_versions
                        ),
                    ));
                }
                if !change.plan.is_noop() {
                    stored = scheme_versions::list(&revisions, &name).await?;
                }
                current = Some(number);
                status.provisioning_scheme_version = Some(i64::from(number));
                status.highest_version = Some(i64::from(new_highest));
                if let Some(task) = status.task.as_mut()
                    && task.task_state == TaskState::CommittingScheme
                {
                    task.finish(now)
                        .map_err(|e| ControllerError::Task(e.to_string()))?;
                }
                status.image_history = record_image(
                    &current_status.image_history,
                    &scheme.spec.image_version_spec_ref,
                    now,
                );
                conditions.push(DesiredCondition::false_(
                    condition_type::DEGRADED,
                    "AsExpected",
                    format!("version {number} is current"),
                ));
            }
            Err(error) => {
                let message = format!(
                    "the change was rejected; version {} stays current: {error}",
                    current.map_or_else(|| "none".into(), |n| n.to_string())
                );
                let seen = current_status.conditions.iter().any(|c| {
                    c.type_ == condition_type::DEGRADED
                        && c.reason == error.reason()
                        && c.message == message
                });
                if !seen {
                    notices.push(events::event(
                        EventType::Warning,
                        error.reason(),
                        "UpdateScheme",
                        message.clone(),
                    ));
                }
                conditions.push(DesiredCondition::true_(
                    condition_type::DEGRADED,
                    error.reason(),
                    message,
                ));
            }
        }
    }
    status.versions = scheme_versions::summaries(&stored);

    // Machines: only once a version exists.
    let mut live: Vec<&ProvVm> = machines
        .iter()
        .filter(|m| m.metadata.deletion_timestamp.is_none())
        .collect();
    let mut requeue = None;
    let mut extra = 0usize;
    if let (Some(version), Some(pool)) = (current, refs.identity_pool.as_ref()) {
        let naming = NamingScheme::parse(&pool.spec.naming_scheme, pool.spec.naming_scheme_type)?;
        let all = context
            .api::<ProvVm>(&namespace)
            .list(&ListParams::default())
            .await?;
        let pool_users: BTreeSet<String> = context
            .api::<ProvScheme>(&namespace)
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|s| s.spec.identity_pool_ref == pool.name_any())
            .map(ResourceExt::name_any)
            .collect();
        let mut used: BTreeSet<u64> = all
            .items
            .iter()
            .filter(|m| pool_users.contains(&m.spec.prov_scheme_ref))
            .filter_map(|m| u64::try_from(m.spec.machine_index).ok())
            .collect();
        let slots: Vec<MachineSlot> = live
            .iter()
            .map(|m| MachineSlot {
                object: m.name_any(),
                index: u64::try_from(m.spec.machine_index).unwrap_or(0),
                created: m
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map_or(0, |t| t.0.as_second()),
                building: !super::prov_vm::is_built(m),
            })
            .collect();
        let desired = usize::try_from(scheme.spec.machine_count).unwrap_or(0);
        let batch = scheme
            .spec
            .initial_batch_size_hint
            .and_then(|b| usize::try_from(b).ok())
            .unwrap_or(DEFAULT_BATCH);
        let start = u64::try_from(pool.spec.start_count).unwrap_or(0);
        let plan = plan_scale(&slots, desired, &used, start, naming.capacity(), batch);
        let vms = context.api::<ProvVm>(&namespace);
        let mut created = 0usize;
        for index in &plan.create {
            let mut candidate = *index;
            for _ in 0..NAME_ATTEMPTS {
                let machine = new_machine(&scheme, &naming, candidate)?;
                match super::strict::create(&vms, &machine).await {
                    Ok(_) => {
                        used.insert(candidate);
                        created += 1;
                        break;
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        used.insert(candidate);
                        candidate = (candidate + 1..naming.capacity())
                            .find(|i| !used.contains(i) && !plan.create.contains(i))
                            .unwrap_or(naming.capacity());
                        if candidate >= naming.capacity() {
                            break;
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        for object in &plan.delete {
            match vms.delete(object, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        if created > 0 || !plan.delete.is_empty() {
            tracing::info!(scheme = %name, version, created, deleted = plan.delete.len(), "scaled machines");
        }
        if slots.len() + created < desired {
            requeue = Some(Duration::from_secs(2));
        }
        if plan.exhausted {
            conditions.push(DesiredCondition::true_(
                condition_type::DEGRADED,
                "IdentityPoolExhausted",
                format!(
                    "identity pool '{}' ({}) has no free identity for more machines",
                    pool.name_any(),
                    pool.spec.naming_scheme
                ),
            ));
        }
        let deleted: BTreeSet<&String> = plan.delete.iter().collect();
        live.retain(|m| !deleted.contains(&m.name_any()));
        extra = created;
    }

    status.machine_count = i32::try_from(live.len() + extra).unwrap_or(i32::MAX);
    status.ready_machines = count(&live, super::prov_vm::is_built);
    status.up_to_date_machines = count(&live, |m| {
        m.status.as_ref().and_then(|s| s.update_status) == Some(UpdateStatus::UpToDate)
    });
    status.pending_update_machines = count(&live, |m| {
        m.status.as_ref().and_then(|s| s.update_status) == Some(UpdateStatus::PendingUpdate)
    });

    let task_state = status.task.as_ref().map(|t| t.task_state);
    let ready = match (current, task_state) {
        (Some(n), _) => DesiredCondition::true_(
            condition_type::READY,
            "Available",
            format!(
                "version {n} is current; {} of {} machines ready",
                status.ready_machines, scheme.spec.machine_count
            ),
        ),
        (None, Some(state)) if state.is_failure() || state == TaskState::Canceled => {
            DesiredCondition::false_(
                condition_type::READY,
                state.as_str(),
                status
                    .task
                    .as_ref()
                    .and_then(|t| t.terminating_error.as_ref())
                    .map(|e| e.message.clone())
                    .unwrap_or_default(),
            )
        }
        _ => DesiredCondition::false_(
            condition_type::READY,
            "Creating",
            "the scheme's creation task is running".to_owned(),
        ),
    };
    conditions.push(ready);
    let progressing = status.machine_count != scheme.spec.machine_count
        || status.ready_machines != status.machine_count;
    conditions.push(if progressing {
        DesiredCondition::true_(
            condition_type::PROGRESSING,
            "Scaling",
            format!(
                "{} machines exist, {} ready, {} wanted",
                status.machine_count, status.ready_machines, scheme.spec.machine_count
            ),
        )
    } else {
        DesiredCondition::false_(
            condition_type::PROGRESSING,
            "AsExpected",
            format!("{} machines ready", status.ready_machines),
        )
    });
    status.conditions = merge(
        &current_status.conditions,
        &conditions,
        scheme.metadata.generation,
        now,
    );
    if significant(&current_status, &status) {
        apply_status(&schemes, &scheme, &field_manager(CONTROLLER), &status).await?;
    }
    // A retry is consumed by the task it started, and dropped when it cannot apply; a cancel
    // is consumed by the task it stopped, or dropped once the creation task has ended.
    let consumed: serde_json::Map<String, serde_json::Value> =
        [ANNOTATION_RETRY, ANNOTATION_CANCEL]
            .into_iter()
            .filter(|key| scheme.annotations().contains_key(*key))
            .map(|key| (key.to_owned(), serde_json::Value::Null))
            .collect();
    if !consumed.is_empty() {
        let patch = json!({ "metadata": { "annotations": consumed } });
        schemes
            .patch(&name, &super::strict::patch(), &Patch::Merge(&patch))
            .await?;
    }
    for e in notices {
        tracing::info!(scheme = %name, reason = %e.reason, note = ?e.note, "event");
        events::publish_event(&context, scheme.as_ref(), e).await;
    }
    if let Verdict::Wait(_) = verdict {
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    Ok(requeue.map_or_else(|| Action::requeue(context.config.resync), Action::requeue))
}

/// Whether `new` says more than `old` than a waiting task's clock moving on.
fn significant(old: &ProvSchemeStatus, new: &ProvSchemeStatus) -> bool {
    let quiet = |status: &ProvSchemeStatus| {
        let mut copy = status.clone();
        if let Some(task) = copy.task.as_mut() {
            task.last_update_time = task.date_started;
            task.active_elapsed_time = 0;
            task.task_expected_completion = None;
        }
        copy
    };
    quiet(old) != quiet(new)
}

fn count(machines: &[&ProvVm], predicate: impl Fn(&ProvVm) -> bool) -> i32 {
    i32::try_from(machines.iter().filter(|m| predicate(m)).count()).unwrap_or(i32::MAX)
}

/// The ProvVM object for machine `index` of `scheme`: named from the identity pool, labelled
/// with the scheme, owned by it, with the disk finalizer already set.
fn new_machine(
    scheme: &ProvScheme,
    naming: &NamingScheme,
    index: u64,
) -> Result<ProvVm, ControllerError> {
    let machine_name = naming.name(index)?;
    let owner = scheme
        .controller_owner_ref(&())
        .ok_or(ControllerError::MissingMetadata {
            kind: "ProvScheme",
            field: "uid",
        })?;
    let mut machine = ProvVm::new(
        &k8s_object_name(&machine_name),
        ProvVmSpec {
            prov_scheme_ref: scheme.name_any(),
            machine_name,
            machine_index: i64::try_from(index).unwrap_or(i64::MAX),
            power_state: DesiredPowerState::Stopped,
            overrides: None,
        },
    );
    machine.metadata = ObjectMeta {
        name: machine.metadata.name.take(),
        namespace: scheme.namespace(),
        labels: Some(BTreeMap::from([(
            LABEL_PROVSCHEME.to_owned(),
            scheme.name_any(),
        )])),
        owner_references: Some(vec![owner]),
        finalizers: Some(vec![super::prov_vm::FINALIZER.to_owned()]),
        ..ObjectMeta::default()
    };
    Ok(machine)
}

fn error_policy(
    scheme: Arc<ProvScheme>,
    error: &ControllerError,
    _context: Arc<Context>,
) -> Action {
    tracing::warn!(controller = CONTROLLER, scheme = %scheme.name_any(), reason = error.reason(), %error, "reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the ProvScheme controller until the stream ends.
pub async fn run(context: Arc<Context>) {
    let schemes = context.watched_api::<ProvScheme>();
    let controller = Controller::new(schemes, watcher_config())
        .trigger_backoff(super::trigger_backoff())
        .with_config(
            controller::Config::default()
                .concurrency(context.config.concurrency)
                .debounce(Duration::from_millis(300)),
        );
    let store = controller.store();
    context.caches.track(CONTROLLER, store.clone());
    let by_spec = store.clone();
    let by_pool = store.clone();
    controller
        .owns(context.watched_api::<ProvVm>(), watcher_config())
        .owns(
            context.watched_api::<ControllerRevision>(),
            watcher_config().labels(LABEL_PROVSCHEME),
        )
        .watches(
            context.watched_api::<ImageVersionSpec>(),
            watcher_config(),
            move |spec: ImageVersionSpec| {
                let namespace = spec.namespace();
                by_spec
                    .state()
                    .into_iter()
                    .filter(|s| {
                        s.namespace() == namespace
                            && s.spec.image_version_spec_ref == spec.name_any()
                    })
                    .map(|s| ObjectRef::from_obj(&*s))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            context.watched_api::<IdentityPool>(),
            watcher_config(),
            move |pool: IdentityPool| {
                let namespace = pool.namespace();
                by_pool
                    .state()
                    .into_iter()
                    .filter(|s| {
                        s.namespace() == namespace && s.spec.identity_pool_ref == pool.name_any()
                    })
                    .map(|s| ObjectRef::from_obj(&*s))
                    .collect::<Vec<_>>()
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
    use crate::api::{
        HostingUnitNetwork, HostingUnitSecurityGroup, HostingUnitSpec, HostingUnitStorage,
        IdentityPoolSpec, IdentityType, ImageDefinitionSpec, ImageVersionSpecFields,
        ImageVersionSpecStatus, NamingSchemeType, OsType, PreparedImageSpec,
    };

    fn spec() -> ProvSchemeSpec {
        serde_json::from_value(json!({
            "imageVersionSpecRef": "img",
            "hostingUnitRef": "lab",
            "identityPoolRef": "pool",
            "networkMapping": {"0": "XDHyp:\\HostingUnits\\lab\\lan.network"},
            "vmCpuCount": 1,
            "vmMemoryMB": 1024,
        }))
        .expect("valid spec")
    }

    fn refs(state: ImageStatus, session: SessionSupport) -> References {
        let unit = HostingUnit::new(
            "lab",
            HostingUnitSpec {
                connection_ref: "local".into(),
                storages: vec![HostingUnitStorage {
                    name: "primary".into(),
                    root: "images".into(),
                    path: None,
                }],
                networks: vec![HostingUnitNetwork {
                    name: "lan".into(),
                    backing: None,
                }],
                service_offerings: vec![],
                security_groups: vec![HostingUnitSecurityGroup {
                    name: "web".into(),
                    description: None,
                }],
            },
        );
        let pool = IdentityPool::new(
            "pool",
            IdentityPoolSpec {
                naming_scheme: "VDI-###".into(),
                naming_scheme_type: NamingSchemeType::Numeric,
                start_count: 1,
                identity_type: IdentityType::Workgroup,
                domain: None,
                ou: None,
            },
        );
        let mut image = ImageVersionSpec::new(
            "img",
            ImageVersionSpecFields {
                image_version_ref: "v1".into(),
                master: None,
                prepared: Some(PreparedImageSpec {
                    source_spec_ref: "master".into(),
                    network_mapping: BTreeMap::from([(
                        "0".into(),
                        "XDHyp:\\HostingUnits\\lab\\lan.network".into(),
                    )]),
                    service_offering: None,
                    machine_profile: None,
                    custom_properties: None,
                    vm_cpu_count: None,
                    vm_memory_mb: None,
                    metadata: BTreeMap::new(),
                }),
                deletion_policy: Default::default(),
            },
        );
        image.status = Some(ImageVersionSpecStatus {
            image_version_spec_status: state,
            ..Default::default()
        });
        let definition = ImageDefinition::new(
            "win11",
            ImageDefinitionSpec {
                os_type: OsType::Windows,
                vda_session_support: session,
                description: None,
                connections: vec![],
            },
        );
        References {
            hosting_unit: Some(unit),
            identity_pool: Some(pool),
            image: Some(image),
            definition: Some(definition),
        }
    }

    fn reasons(verdict: &Verdict) -> Vec<&'static str> {
        match verdict {
            Verdict::Reject(errors) => errors.iter().map(Reason::reason).collect(),
            _ => vec![],
        }
    }

    #[test]
    fn a_good_scheme_is_accepted() {
        let ok = refs(ImageStatus::Success, SessionSupport::SingleSession);
        assert_eq!(judge(&spec(), None, None, &ok), Verdict::Accept);
    }

    #[test]
    fn missing_references_fail_with_the_sdk_reasons() {
        let mut r = refs(ImageStatus::Success, SessionSupport::SingleSession);
        r.identity_pool = None;
        r.hosting_unit = None;
        let verdict = judge(&spec(), None, None, &r);
        assert_eq!(
            reasons(&verdict),
            ["HostingUnitNotFound", "IdentityPoolNotFound"]
        );
        let Verdict::Reject(errors) = verdict else {
            panic!("rejected")
        };
        assert_eq!(failure_state(&errors[0]), TaskState::HostingUnitNotFound);
        assert_eq!(failure_state(&errors[1]), TaskState::IdentityPoolNotFound);
    }

    #[test]
    fn a_preparing_image_waits_at_creation_and_rejects_an_update() {
        let r = refs(ImageStatus::InProgress, SessionSupport::SingleSession);
        assert!(matches!(judge(&spec(), None, None, &r), Verdict::Wait(_)));
        let verdict = judge(
            &spec(),
            Some(&spec()),
            Some(SessionSupport::SingleSession),
            &r,
        );
        assert_eq!(reasons(&verdict), ["ImageVersionSpecNotUsable"]);
        let failed = refs(ImageStatus::Failed, SessionSupport::SingleSession);
        let verdict = judge(&spec(), None, None, &failed);
        let Verdict::Reject(errors) = &verdict else {
            panic!("rejected")
        };
        assert!(
            errors[0]
                .to_string()
                .contains("in state Failed and cannot be used")
        );
        assert_eq!(
            failure_state(&errors[0]),
            TaskState::ImageVersionSpecNotUsable
        );
    }

    #[test]
    fn session_support_must_match_the_scheme() {
        let r = refs(ImageStatus::Success, SessionSupport::MultiSession);
        let verdict = judge(
            &spec(),
            Some(&spec()),
            Some(SessionSupport::SingleSession),
            &r,
        );
        assert_eq!(reasons(&verdict), ["VdaSessionSupportMismatch"]);
    }

    #[test]
    fn machine_profile_cannot_be_removed_and_cache_sizes_need_the_cache() {
        let r = refs(ImageStatus::Success, SessionSupport::SingleSession);
        let mut old = spec();
        old.machine_profile =
            Some("XDHyp:\\HostingUnits\\lab\\profiles.folder\\a.machineprofile".into());
        let verdict = judge(&spec(), Some(&old), Some(SessionSupport::SingleSession), &r);
        assert_eq!(reasons(&verdict), ["MachineProfileUpdateNotSupported"]);
        let mut sized = spec();
        sized.write_back_cache_disk_size_gb = Some(24);
        let verdict = judge(
            &sized,
            Some(&spec()),
            Some(SessionSupport::SingleSession),
            &r,
        );
        assert_eq!(reasons(&verdict), ["WriteBackCacheNotEnabled"]);
    }

    #[test]
    fn networks_and_offerings_must_exist_in_the_hosting_unit() {
        let r = refs(ImageStatus::Success, SessionSupport::SingleSession);
        let mut s = spec();
        s.network_mapping
            .insert("1".into(), "XDHyp:\\HostingUnits\\lab\\dmz.network".into());
        s.vm_cpu_count = None;
        s.vm_memory_mb = None;
        s.service_offering = Some("XDHyp:\\HostingUnits\\lab\\huge.serviceoffering".into());
        let verdict = judge(&s, None, None, &r);
        assert_eq!(
            reasons(&verdict),
            [
                "NetworkPathResolutionFailed",
                "ServiceOfferingPathResolutionFailed"
            ]
        );
    }

    #[test]
    fn security_groups_must_name_groups_of_the_hosting_unit() {
        let r = refs(ImageStatus::Success, SessionSupport::SingleSession);
        let mut s = spec();
        s.security_groups = vec!["XDHyp:\\HostingUnits\\lab\\web.securitygroup".into()];
        assert_eq!(judge(&s, None, None, &r), Verdict::Accept);
        s.security_groups.extend([
            "XDHyp:\\HostingUnits\\lab\\db.securitygroup".into(),
            "XDHyp:\\HostingUnits\\other\\web.securitygroup".into(),
            "XDHyp:\\HostingUnits\\lab\\lan.network".into(),
            "web".into(),
        ]);
        let verdict = judge(&s, None, None, &r);
        assert_eq!(reasons(&verdict), ["SecurityGroupPathResolutionFailed"; 4]);
        let Verdict::Reject(errors) = &verdict else {
            panic!("rejected")
        };
        let message = errors[0].to_string();
        assert!(message.starts_with("spec.securityGroups[1]: security group 'db' is not a security group of hosting unit 'lab' (it has: web)"), "{message}");
        assert_eq!(
            failure_state(&errors[0]),
            TaskState::SecurityGroupPathResolutionFailed
        );
        let update = judge(&s, Some(&spec()), Some(SessionSupport::SingleSession), &r);
        assert_eq!(
            reasons(&update),
            ["SecurityGroupPathResolutionFailed"; 4],
            "Set-ProvScheme with a group the hosting unit lacks is rejected too"
        );
    }

    fn slot(object: &str, index: u64, created: i64, building: bool) -> MachineSlot {
        MachineSlot {
            object: object.into(),
            index,
            created,
            building,
        }
    }

    #[test]
    fn scale_up_takes_the_lowest_free_indices_in_batches() {
        let used = BTreeSet::from([1, 2, 4]);
        let existing = [slot("vdi-001", 1, 10, false), slot("vdi-002", 2, 10, false)];
        let plan = plan_scale(&existing, 5, &used, 1, 1000, 100);
        assert_eq!(plan.create, [3, 5, 6]);
        assert!(plan.delete.is_empty());
        let plan = plan_scale(&existing, 5, &used, 1, 1000, 2);
        assert_eq!(plan.create, [3, 5]);
        let building = [slot("vdi-001", 1, 10, true)];
        let plan = plan_scale(&building, 5, &BTreeSet::from([1]), 1, 1000, 2);
        assert_eq!(plan.create, [2]);
        let plan = plan_scale(&[], 5, &BTreeSet::new(), 998, 1000, 100);
        assert_eq!(plan.create, [998, 999]);
        assert!(plan.exhausted);
    }

    #[test]
    fn scale_down_removes_the_newest_first() {
        let existing = [
            slot("vdi-001", 1, 10, false),
            slot("vdi-002", 2, 10, false),
            slot("vdi-003", 3, 10, false),
            slot("vdi-009", 9, 5, false),
            slot("vdi-004", 4, 20, false),
        ];
        let plan = plan_scale(&existing, 2, &BTreeSet::new(), 1, 1000, 100);
        assert_eq!(plan.delete, ["vdi-004", "vdi-003", "vdi-002"]);
        assert!(plan.create.is_empty());
    }

    #[test]
    fn the_creation_task_walks_the_sdk_states_and_resumes() {
        let now = Timestamp::from_second(1_800_000_000).expect("valid");
        let mut scheme = ProvScheme::new("s", spec());
        scheme.metadata.generation = Some(1);
        let status = ProvSchemeStatus::default();
        let (task, commit) = creation_task(&scheme, &status, &Verdict::Accept, now).expect("runs");
        assert!(commit);
        assert_eq!(task.task_state, TaskState::CommittingScheme);
        // Resumed after a restart at CommittingScheme: no step backwards.
        let resumed = ProvSchemeStatus {
            task: Some(task.clone()),
            observed_generation: Some(1),
            ..Default::default()
        };
        let (again, commit) =
            creation_task(&scheme, &resumed, &Verdict::Accept, now).expect("resumes");
        assert!(commit);
        assert_eq!(again.task_id, task.task_id);
        let waiting =
            creation_task(&scheme, &status, &Verdict::Wait("x".into()), now).expect("waits");
        assert_eq!(
            (waiting.0.task_state, waiting.1),
            (TaskState::LocatingResources, false)
        );
        assert_eq!(
            waiting.0.current_operation.as_deref(),
            Some("WaitingForPreparedImage")
        );
        let missing = RuleError::IdentityPoolNotFound {
            field: "spec.identityPoolRef".into(),
            name: "p".into(),
        };
        let (failed, commit) =
            creation_task(&scheme, &status, &Verdict::Reject(vec![missing]), now).expect("fails");
        assert!(!commit);
        assert_eq!(failed.task_state, TaskState::IdentityPoolNotFound);
        // A failed task restarts on a new generation only.
        let after = ProvSchemeStatus {
            task: Some(failed.clone()),
            observed_generation: Some(1),
            ..Default::default()
        };
        assert!(!should_start_task(&scheme, &after));
        scheme.metadata.generation = Some(2);
        assert!(should_start_task(&scheme, &after));
    }

    #[test]
    fn image_history_keeps_current_and_previous_with_dates() {
        let t = Timestamp::from_second(100).expect("valid");
        let one = record_image(&[], "img-1", t);
        assert_eq!(one.len(), 1);
        assert!(one[0].current);
        assert_eq!(record_image(&one, "img-1", t), one);
        let two = record_image(&one, "img-2", t);
        assert_eq!(two[0].image_version_spec, "img-2");
        assert!(two[0].current);
        assert_eq!(two[1].image_version_spec, "img-1");
        assert!(!two[1].current);
    }
}
