//! The decisions of the ProvScheme controller, without I/O: the verdict on a spec, the
//! creation task, the versioning step, the scale plan, the machine objects to create, the
//! desired status, whether and when to write it, and the Events. Every function here is a pure
//! function of what [`super::read`] gathered and the current time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use mcs_domain::Reason;
use mcs_domain::history::{self, Decision};
use mcs_domain::inventory_path::InventoryPath;
use mcs_domain::naming::{NamingScheme, k8s_object_name};
use mcs_domain::rules::{
    self, ImageSpecFacts, ObjectKind, RuleError, SchemeFacts, field as rule_field,
};
use mcs_domain::task::{TaskState, TaskStatus, TaskType};

use super::versions::{self, StoredConfiguration};
use super::{DEFAULT_BATCH, IMAGE_HISTORY};
use crate::api::{
    ANNOTATION_CANCEL, ANNOTATION_RETRY, ANNOTATION_SCHEME_GENERATION, DesiredPowerState,
    HostingUnit, IdentityPool, ImageDefinition, ImageHistoryEntry, ImageStatus, ImageVersionSpec,
    LABEL_PROVSCHEME, ProvScheme, ProvSchemeSpec, ProvSchemeStatus, ProvVm, ProvVmSpec,
    SessionSupport, SpecKind, UpdateStatus, condition_type,
};
use crate::controller::conditions::{DesiredCondition, merge};
use crate::controller::{ControllerError, events, tasks};

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
        vm_cpu_count: spec.size.vm_cpu_count.map(i64::from),
        vm_memory_mb: spec.size.vm_memory_mb,
        service_offering: spec.size.service_offering.clone(),
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
    if let Some(path) = &spec.size.service_offering
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
    /// Its age: the scheme generation it was created for ([`ANNOTATION_SCHEME_GENERATION`];
    /// 0 when not recorded, `i64::MAX` while its create is in flight).
    pub generation: i64,
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
/// `batch` machines building at once; deletes the newest machines first (created for the latest
/// scheme generation, then highest index).
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
        newest.sort_by_key(|m| std::cmp::Reverse((m.generation, m.index)));
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
pub fn creation_task(
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

/// Whether `new` says more than `old` than a waiting task's clock moving on.
fn significant(old: &ProvSchemeStatus, new: &ProvSchemeStatus) -> bool {
    crate::controller::status::differs_beyond_clock(old, new, |s| s.task.as_mut())
}

fn count(machines: &[&ProvVm], predicate: impl Fn(&ProvVm) -> bool) -> i32 {
    i32::try_from(machines.iter().filter(|m| predicate(m)).count()).unwrap_or(i32::MAX)
}

/// The ProvVM object for machine `index` of `scheme`: named from the identity pool, labelled
/// with the scheme, annotated with its generation (the machine's age), owned by it, with the
/// disk finalizer already set.
pub fn new_machine(
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
        annotations: Some(BTreeMap::from([(
            ANNOTATION_SCHEME_GENERATION.to_owned(),
            scheme.metadata.generation.unwrap_or(0).to_string(),
        )])),
        owner_references: Some(vec![owner]),
        finalizers: Some(vec![crate::controller::prov_vm::FINALIZER.to_owned()]),
        ..ObjectMeta::default()
    };
    Ok(machine)
}

/// What the versioning step decided: the writes to make and what the status says after them.
#[derive(Default)]
pub struct VersionPlan {
    /// The verdict on the spec.
    pub verdict: Option<Verdict>,
    /// The creation task after this step (the stored one when it did not run).
    pub task: Option<TaskStatus>,
    /// The version made current by this step, when the spec was accepted.
    pub committed: Option<u32>,
    /// The highest version number after this step.
    pub highest: u32,
    /// The version to store (a new ControllerRevision).
    pub create: Option<StoredConfiguration>,
    /// The versions to prune.
    pub prune: Vec<u32>,
    /// The highest number to record on the scheme before pruning (when it grows or versions
    /// are pruned).
    pub record_highest: Option<u32>,
    /// The stored versions after the writes, oldest first.
    pub stored: Vec<StoredConfiguration>,
    /// The image history after this step.
    pub image_history: Vec<ImageHistoryEntry>,
    /// The scheme's session support.
    pub session: Option<SessionSupport>,
    /// Conditions this step sets.
    pub conditions: Vec<DesiredCondition>,
    /// Events this step publishes.
    pub notices: Vec<Event>,
}

impl VersionPlan {
    /// The version current after this step.
    pub fn current(&self, status: &ProvSchemeStatus) -> Option<u32> {
        self.committed
            .or_else(|| current_version(status, &self.stored))
    }

    /// Whether the spec is waiting for its prepared image.
    pub fn waits(&self) -> bool {
        matches!(self.verdict, Some(Verdict::Wait(_)))
    }
}

/// The version `status` names, if it is stored.
pub fn current_version(status: &ProvSchemeStatus, stored: &[StoredConfiguration]) -> Option<u32> {
    status
        .provisioning_scheme_version
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| stored.iter().any(|s| s.number == *n))
}

/// The versions the machines run (their `status.provisioningSchemeVersion`).
pub fn referenced_versions<'a>(machines: impl IntoIterator<Item = &'a ProvVm>) -> BTreeSet<u32> {
    machines
        .into_iter()
        .filter_map(|m| m.status.as_ref()?.provisioning_scheme_version)
        .filter_map(|n| u32::try_from(n).ok())
        .collect()
}

/// The Degraded condition and Warning Event of a rejected change, the Event only when the
/// condition did not say the same already.
fn rejected(
    status: &ProvSchemeStatus,
    generation: Option<i64>,
    reason: &'static str,
    message: String,
    plan: &mut VersionPlan,
) {
    let seen = status.conditions.iter().any(|c| {
        c.type_ == condition_type::DEGRADED
            && c.status == "True"
            && c.reason == reason
            && c.message == message
            && generation.is_none_or(|g| c.observed_generation == Some(g))
    });
    if !seen {
        plan.notices.push(events::event(
            EventType::Warning,
            reason,
            "UpdateScheme",
            message.clone(),
        ));
    }
    plan.conditions.push(DesiredCondition::true_(
        condition_type::DEGRADED,
        reason,
        message,
    ));
}

/// The versioning step: judges the spec; a new scheme runs its creation task up to version 1,
/// an existing one makes a new version, reverts to a stored one or keeps its version, pruning
/// to `spec.maxVersions` (never the current version nor a `referenced` one); a rejected change
/// leaves the current version as it is and says why.
///
/// # Errors
///
/// When the spec cannot be serialized or the task cannot move (never for a stored task).
pub fn plan_versions(
    scheme: &ProvScheme,
    status: &ProvSchemeStatus,
    highest: u32,
    stored: &[StoredConfiguration],
    referenced: &BTreeSet<u32>,
    refs: &References,
    now: Timestamp,
) -> Result<VersionPlan, ControllerError> {
    let current = current_version(status, stored);
    let current_config: Option<ProvSchemeSpec> = current
        .and_then(|n| stored.iter().find(|s| s.number == n))
        .and_then(|s| serde_json::from_value(s.configuration.clone()).ok());
    let verdict = judge(
        &scheme.spec,
        current_config.as_ref(),
        status.session_support,
        refs,
    );
    let mut plan = VersionPlan {
        task: status.task.clone(),
        highest,
        stored: stored.to_vec(),
        image_history: status.image_history.clone(),
        session: status.session_support.or_else(|| {
            refs.definition
                .as_ref()
                .filter(|_| current.is_none())
                .map(|d| d.spec.vda_session_support)
        }),
        ..VersionPlan::default()
    };
    let accepted = if current.is_none() {
        let (task, commit) = creation_task(scheme, status, &verdict, now)?;
        if let Verdict::Reject(errors) = &verdict
            && task.task_state.is_failure()
            && status.task.as_ref().map(|t| &t.task_id) != Some(&task.task_id)
        {
            let reason = errors.first().map_or("UnexpectedError", Reason::reason);
            plan.notices.push(events::event(
                EventType::Warning,
                reason,
                "CreateScheme",
                rejection_message(errors),
            ));
        }
        plan.task = Some(task);
        commit
    } else {
        if let Verdict::Reject(errors) = &verdict {
            let reason = errors.first().map_or("UnexpectedError", Reason::reason);
            let message = format!(
                "the change was rejected; version {} stays current: {}",
                current.unwrap_or_default(),
                rejection_message(errors)
            );
            rejected(
                status,
                scheme.metadata.generation,
                reason,
                message,
                &mut plan,
            );
        }
        verdict == Verdict::Accept
    };
    plan.verdict = Some(verdict);
    if accepted {
        commit_version(scheme, status, current, referenced, now, &mut plan)?;
    }
    Ok(plan)
}

/// The accepted spec's version: new, reverted or unchanged, and what to prune.
fn commit_version(
    scheme: &ProvScheme,
    status: &ProvSchemeStatus,
    current: Option<u32>,
    referenced: &BTreeSet<u32>,
    now: Timestamp,
    plan: &mut VersionPlan,
) -> Result<(), ControllerError> {
    let config = versions::configuration(&scheme.spec)?;
    let highest = plan.highest;
    let change = match versions::decide(
        &plan.stored,
        current,
        highest,
        &config,
        scheme.spec.max_versions,
        referenced,
    ) {
        Ok(change) => change,
        Err(error) => {
            let message = format!(
                "the change was rejected; version {} stays current: {error}",
                current.map_or_else(|| "none".into(), |n| n.to_string())
            );
            rejected(status, None, error.reason(), message, plan);
            return Ok(());
        }
    };
    let number = change.number();
    if let Decision::New(n) = change.plan.decision() {
        plan.create = Some(StoredConfiguration {
            number: n,
            hash: history::content_hash(&config),
            configuration: config.clone(),
            api_version: ProvScheme::api_version(&()).into_owned(),
            created: now,
            changes: Some(change.changes.clone()),
        });
        plan.notices.push(events::event(
            EventType::Normal,
            "VersionCreated",
            "UpdateScheme",
            format!("version {n}: {}", change.changes),
        ));
    }
    if let Decision::Revert(n) = change.plan.decision() {
        plan.notices.push(events::event(
            EventType::Normal,
            "VersionReverted",
            "UpdateScheme",
            format!("the configuration equals stored version {n}; version {n} is current again"),
        ));
    }
    let new_highest = highest
        .max(number)
        .max(plan.stored.iter().map(|s| s.number).max().unwrap_or(0));
    plan.prune = change.plan.delete().to_vec();
    if !plan.prune.is_empty() || new_highest > highest {
        plan.record_highest = Some(new_highest);
    }
    if !plan.prune.is_empty() {
        plan.notices.push(events::event(
            EventType::Normal,
            "VersionsPruned",
            "UpdateScheme",
            format!(
                "pruned versions {:?} to keep at most spec.maxVersions={}",
                plan.prune, scheme.spec.max_versions
            ),
        ));
    }
    plan.stored.extend(plan.create.clone());
    plan.stored.retain(|s| !plan.prune.contains(&s.number));
    plan.stored.sort_by_key(|s| s.number);
    plan.committed = Some(number);
    plan.highest = new_highest;
    if let Some(task) = plan.task.as_mut()
        && task.task_state == TaskState::CommittingScheme
    {
        task.finish(now)
            .map_err(|e| ControllerError::Task(e.to_string()))?;
    }
    plan.image_history = record_image(
        &status.image_history,
        &scheme.spec.image_version_spec_ref,
        now,
    );
    plan.conditions.push(DesiredCondition::false_(
        condition_type::DEGRADED,
        "AsExpected",
        format!("version {number} is current"),
    ));
    Ok(())
}

/// The scheme's machines as the scale plan sees them: the `live` cached ones plus the
/// `in_flight` creations the cache does not show yet (still building).
pub fn slots(
    live: &[&ProvVm],
    in_flight: impl IntoIterator<Item = (String, u64)>,
) -> Vec<MachineSlot> {
    live.iter()
        .map(|m| MachineSlot {
            object: m.name_any(),
            index: u64::try_from(m.spec.machine_index).unwrap_or(0),
            generation: m
                .annotations()
                .get(ANNOTATION_SCHEME_GENERATION)
                .and_then(|g| g.parse().ok())
                .unwrap_or(0),
            building: !crate::controller::prov_vm::is_built(m),
        })
        .chain(in_flight.into_iter().map(|(object, index)| MachineSlot {
            object,
            index,
            generation: i64::MAX,
            building: true,
        }))
        .collect()
}

/// The scale step of a scheme drawing names from `pool`: the plan and the naming scheme.
///
/// # Errors
///
/// When the pool's naming scheme does not parse.
pub fn plan_machines(
    scheme: &ProvScheme,
    pool: &IdentityPool,
    machines: &[MachineSlot],
    used: &BTreeSet<u64>,
) -> Result<(NamingScheme, ScalePlan), ControllerError> {
    let naming = NamingScheme::parse(&pool.spec.naming_scheme, pool.spec.naming_scheme_type)?;
    let desired = usize::try_from(scheme.spec.machine_count).unwrap_or(0);
    let batch = scheme
        .spec
        .initial_batch_size_hint
        .and_then(|b| usize::try_from(b).ok())
        .unwrap_or(DEFAULT_BATCH);
    let start = u64::try_from(pool.spec.start_count).unwrap_or(0);
    let plan = plan_scale(machines, desired, used, start, naming.capacity(), batch);
    Ok((naming, plan))
}

/// The Degraded condition of an identity pool without free identities.
pub fn exhausted(pool: &IdentityPool) -> DesiredCondition {
    DesiredCondition::true_(
        condition_type::DEGRADED,
        "IdentityPoolExhausted",
        format!(
            "identity pool '{}' ({}) has no free identity for more machines",
            pool.name_any(),
            pool.spec.naming_scheme
        ),
    )
}

/// How many of a scheme's machines exist, are ready, up to date and pending an update.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Machines that exist (or are being created).
    pub machines: i32,
    /// Machines whose disks are built.
    pub ready: i32,
    /// Machines on the current version.
    pub up_to_date: i32,
    /// Machines waiting to be updated to the current version.
    pub pending_update: i32,
}

/// The counts of the `live` machines plus `building` ones not cached yet.
pub fn counts(live: &[&ProvVm], building: usize) -> Counts {
    let update = |m: &ProvVm| m.status.as_ref().and_then(|s| s.update_status);
    Counts {
        machines: i32::try_from(live.len() + building).unwrap_or(i32::MAX),
        ready: count(live, crate::controller::prov_vm::is_built),
        up_to_date: count(live, |m| update(m) == Some(UpdateStatus::UpToDate)),
        pending_update: count(live, |m| update(m) == Some(UpdateStatus::PendingUpdate)),
    }
}

/// The status the scheme should have: `base` (the newest status known) with the versioning
/// step's outcome, the machine counts and the conditions (`extra` ones first).
pub fn desired_status(
    scheme: &ProvScheme,
    base: &ProvSchemeStatus,
    versions: &VersionPlan,
    counts: Counts,
    extra: &[DesiredCondition],
    now: Timestamp,
) -> ProvSchemeStatus {
    let mut status = ProvSchemeStatus {
        observed_generation: scheme.metadata.generation,
        session_support: versions.session,
        selector: Some(versions::selector(&scheme.name_any())),
        task: versions.task.clone(),
        versions: versions::summaries(&versions.stored),
        machine_count: counts.machines,
        ready_machines: counts.ready,
        up_to_date_machines: counts.up_to_date,
        pending_update_machines: counts.pending_update,
        ..base.clone()
    };
    if let Some(number) = versions.committed {
        status.provisioning_scheme_version = Some(i64::from(number));
        status.highest_version = Some(i64::from(versions.highest));
        status.image_history = versions.image_history.clone();
    }
    let current = versions.current(base);
    let mut conditions: Vec<DesiredCondition> = versions.conditions.clone();
    conditions.extend(extra.iter().cloned());
    let task_state = status.task.as_ref().map(|t| t.task_state);
    conditions.push(match (current, task_state) {
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
    });
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
        &base.conditions,
        &conditions,
        scheme.metadata.generation,
        now,
    );
    status
}

/// Whether and when to write the desired status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusWrite {
    /// It says nothing new.
    Skip,
    /// Write it now.
    Now,
    /// Only progress changed and the last write is recent: write it after this long.
    After(Duration),
}

/// Whether to write `desired` over `base` (the newest status known): never when it says
/// nothing new; a change of progress only (machine counts and the messages saying them) at
/// most once per `interval` since the last write (`since_last`); anything else at once.
pub fn status_write(
    base: &ProvSchemeStatus,
    desired: &ProvSchemeStatus,
    since_last: Option<Duration>,
    interval: Duration,
) -> StatusWrite {
    if !significant(base, desired) {
        return StatusWrite::Skip;
    }
    match since_last {
        Some(since) if since < interval && progress_only(base, desired) => {
            StatusWrite::After(interval - since)
        }
        _ => StatusWrite::Now,
    }
}

/// Whether `new` differs from `old` in progress only: the machine counts and the messages of
/// the Ready and Progressing conditions.
fn progress_only(old: &ProvSchemeStatus, new: &ProvSchemeStatus) -> bool {
    let without_progress = |status: &ProvSchemeStatus| {
        let mut copy = status.clone();
        copy.machine_count = 0;
        copy.ready_machines = 0;
        copy.up_to_date_machines = 0;
        copy.pending_update_machines = 0;
        for condition in &mut copy.conditions {
            if condition.type_ == condition_type::READY
                || condition.type_ == condition_type::PROGRESSING
            {
                condition.message.clear();
            }
        }
        copy
    };
    !significant(&without_progress(old), &without_progress(new))
}

/// The Events of one scale step: one for the machines created, one for those deleted.
pub fn scale_events(created: &[String], deleted: &[String]) -> Vec<Event> {
    let note = |verb: &str, names: &[String]| {
        let noun = if names.len() == 1 {
            "machine"
        } else {
            "machines"
        };
        format!(
            "{verb} {} {noun}: {}",
            names.len(),
            events::summarize(names, SHOWN_NAMES)
        )
    };
    let mut out = Vec::new();
    if !created.is_empty() {
        out.push(events::event(
            EventType::Normal,
            "MachinesCreated",
            "Scale",
            note("Created", created),
        ));
    }
    if !deleted.is_empty() {
        out.push(events::event(
            EventType::Normal,
            "MachinesDeleted",
            "Scale",
            note("Deleted", deleted),
        ));
    }
    out
}

/// How many machine names an Event about a batch spells out.
const SHOWN_NAMES: usize = 2;

/// When to reconcile again: soon while the prepared image is awaited or machines are
/// missing, when a paced status write is due, else at the resync interval.
pub fn requeue(waits: bool, short: bool, write: StatusWrite, resync: Duration) -> Duration {
    let mut after = resync;
    if waits {
        after = after.min(Duration::from_secs(5));
    }
    if short {
        after = after.min(Duration::from_secs(2));
    }
    if let StatusWrite::After(due) = write {
        after = after.min(due);
    }
    after
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        HostingUnitNetwork, HostingUnitSecurityGroup, HostingUnitSpec, HostingUnitStorage,
        IdentityPoolSpec, IdentityType, ImageDefinitionSpec, ImageVersionSpecFields,
        ImageVersionSpecStatus, NamingSchemeType, OsType, PreparedImageSpec,
    };
    use proptest::prelude::*;
    use serde_json::json;

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
                    size: Default::default(),
                    machine_profile: None,
                    custom_properties: None,
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
        s.size.vm_cpu_count = None;
        s.size.vm_memory_mb = None;
        s.size.service_offering = Some("XDHyp:\\HostingUnits\\lab\\huge.serviceoffering".into());
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

    fn slot(object: &str, index: u64, generation: i64, building: bool) -> MachineSlot {
        MachineSlot {
            object: object.into(),
            index,
            generation,
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
    fn a_new_machine_records_the_scheme_generation_as_its_age() {
        let mut scheme = scheme_with_uid(spec());
        scheme.metadata.generation = Some(7);
        let naming = NamingScheme::parse("VDI-###", mcs_domain::naming::NamingSchemeType::Numeric)
            .expect("naming");
        let machine = new_machine(&scheme, &naming, 12).expect("machine");
        assert_eq!(machine.spec.machine_name, "VDI-012");
        assert_eq!(
            machine.annotations().get(ANNOTATION_SCHEME_GENERATION),
            Some(&"7".to_owned())
        );
        assert_eq!(
            machine.labels().get(LABEL_PROVSCHEME),
            Some(&"s".to_owned())
        );
        let slot = &slots(&[&machine], []).into_iter().next().expect("slot");
        assert_eq!((slot.index, slot.generation), (12, 7));
    }

    #[test]
    fn scale_down_does_not_depend_on_the_order_machines_were_created_in() {
        // A crash left VDI-003 uncreated; it was created last, after a restart, for the same
        // scheme generation: the machines removed are those of an uninterrupted life.
        let uninterrupted: Vec<MachineSlot> = (1..=6)
            .map(|i| slot(&format!("vdi-00{i}"), i, 7, false))
            .collect();
        let mut gap_filled_last = uninterrupted.clone();
        let gap = gap_filled_last.remove(2);
        gap_filled_last.push(gap);
        let a = plan_scale(&uninterrupted, 2, &BTreeSet::new(), 1, 1000, 100);
        let b = plan_scale(&gap_filled_last, 2, &BTreeSet::new(), 1, 1000, 100);
        assert_eq!(a.delete, ["vdi-006", "vdi-005", "vdi-004", "vdi-003"]);
        assert_eq!(a, b);
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

    fn scheme_with_uid(spec: ProvSchemeSpec) -> ProvScheme {
        let mut scheme = ProvScheme::new("s", spec);
        scheme.metadata.namespace = Some("ns".into());
        scheme.metadata.uid = Some("uid".into());
        scheme.metadata.generation = Some(1);
        scheme
    }

    /// Version 1 of `scheme` and the status that records it.
    fn first_version(
        scheme: &ProvScheme,
        refs: &References,
        now: Timestamp,
    ) -> (VersionPlan, ProvSchemeStatus) {
        let base = ProvSchemeStatus::default();
        let first =
            plan_versions(scheme, &base, 0, &[], &BTreeSet::new(), refs, now).expect("plans");
        let status = desired_status(scheme, &base, &first, Counts::default(), &[], now);
        (first, status)
    }

    #[test]
    fn versions_are_numbered_from_what_is_stored_and_recorded() {
        let now = Timestamp::from_second(1_800_000_000).expect("valid");
        let ok = refs(ImageStatus::Success, SessionSupport::SingleSession);
        let scheme = scheme_with_uid(spec());
        let none = BTreeSet::new();
        let (first, status) = first_version(&scheme, &ok, now);
        let v1 = first.create.clone().expect("version 1");
        assert_eq!((v1.number, first.committed, first.highest), (1, Some(1), 1));
        assert_eq!(first.stored, std::slice::from_ref(&v1));
        assert_eq!(
            first.task.as_ref().map(|t| t.task_state),
            Some(TaskState::Finished)
        );
        assert_eq!(status.provisioning_scheme_version, Some(1));
        // The same configuration again: nothing to write.
        let again =
            plan_versions(&scheme, &status, 1, &first.stored, &none, &ok, now).expect("plans");
        assert!(again.create.is_none() && again.prune.is_empty() && again.record_highest.is_none());
        assert!(again.notices.is_empty());
        // A change after version 3 was pruned (highest recorded 3): version 4, never 2 or 3.
        let mut changed = scheme_with_uid(spec());
        changed.spec.size.vm_cpu_count = Some(2);
        let next =
            plan_versions(&changed, &status, 3, &first.stored, &none, &ok, now).expect("plans");
        assert_eq!(next.create.as_ref().map(|c| c.number), Some(4));
        assert_eq!(next.record_highest, Some(4));
        assert_eq!(
            next.stored.iter().map(|s| s.number).collect::<Vec<_>>(),
            [1, 4]
        );
    }

    #[test]
    fn a_rejected_update_keeps_the_version_and_warns_once() {
        let now = Timestamp::from_second(1_800_000_000).expect("valid");
        let ok = refs(ImageStatus::Success, SessionSupport::SingleSession);
        let scheme = scheme_with_uid(spec());
        let none = BTreeSet::new();
        let (first, status) = first_version(&scheme, &ok, now);
        let mut broken = refs(ImageStatus::Success, SessionSupport::SingleSession);
        broken.hosting_unit = None;
        let plan =
            plan_versions(&scheme, &status, 1, &first.stored, &none, &broken, now).expect("plans");
        assert!(plan.create.is_none() && plan.committed.is_none());
        assert_eq!(plan.current(&status), Some(1));
        assert_eq!(plan.notices.len(), 1);
        let rejected = desired_status(&scheme, &status, &plan, Counts::default(), &[], now);
        let plan = plan_versions(&scheme, &rejected, 1, &first.stored, &none, &broken, now)
            .expect("plans");
        assert!(plan.notices.is_empty(), "the condition says it already");
    }

    fn building_status(scheme: &ProvScheme, ready: i32, machines: i32) -> ProvSchemeStatus {
        let now = Timestamp::from_second(1_800_000_000).expect("valid");
        let plan = VersionPlan {
            committed: Some(1),
            highest: 1,
            ..VersionPlan::default()
        };
        let counts = Counts {
            machines,
            ready,
            ..Counts::default()
        };
        desired_status(
            scheme,
            &ProvSchemeStatus::default(),
            &plan,
            counts,
            &[],
            now,
        )
    }

    #[test]
    fn progress_is_written_at_most_once_per_interval_and_states_at_once() {
        let mut scheme = scheme_with_uid(spec());
        scheme.spec.machine_count = 10;
        let interval = Duration::from_secs(1);
        let some = building_status(&scheme, 2, 10);
        let more = building_status(&scheme, 5, 10);
        let done = building_status(&scheme, 10, 10);
        assert_eq!(
            status_write(&some, &some, None, interval),
            StatusWrite::Skip
        );
        assert_eq!(
            status_write(&some, &more, Some(Duration::from_millis(300)), interval),
            StatusWrite::After(Duration::from_millis(700))
        );
        assert_eq!(
            status_write(&some, &more, Some(interval), interval),
            StatusWrite::Now
        );
        assert_eq!(status_write(&some, &more, None, interval), StatusWrite::Now);
        assert_eq!(
            status_write(&more, &done, Some(Duration::from_millis(10)), interval),
            StatusWrite::Now,
            "Progressing turning False is a state change"
        );
        assert_eq!(
            requeue(
                false,
                true,
                StatusWrite::After(Duration::from_millis(700)),
                Duration::from_secs(300)
            ),
            Duration::from_millis(700)
        );
    }

    #[test]
    fn one_event_per_batch_names_the_first_machines() {
        let created: Vec<String> = (1..=100).map(|i| format!("VDI-{i:03}")).collect();
        let events = scale_events(&created, &["VDI-200".into()]);
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[0].note.as_deref(),
            Some("Created 100 machines: VDI-001, VDI-002 and 98 more")
        );
        assert_eq!(
            events[1].note.as_deref(),
            Some("Deleted 1 machine: VDI-200")
        );
        assert!(scale_events(&[], &[]).is_empty());
    }

    #[test]
    fn machines_in_flight_count_as_building() {
        let slots = slots(&[], [("vdi-001".to_owned(), 1)]);
        assert!(slots[0].building);
        let plan = plan_scale(&slots, 3, &BTreeSet::from([1]), 1, 1000, 2);
        assert_eq!(
            plan.create,
            [2],
            "one builds already, so one more fits the batch"
        );
    }

    proptest! {
        #[test]
        fn scale_plans_never_reuse_an_index_nor_overshoot(
            existing in proptest::collection::btree_set(0u64..60, 0..20),
            foreign in proptest::collection::btree_set(0u64..60, 0..20),
            building in 0usize..20,
            desired in 0usize..40,
            start in 0u64..5,
            batch in 0usize..12,
        ) {
            let machines: Vec<MachineSlot> = existing
                .iter()
                .enumerate()
                .map(|(i, index)| slot(&format!("m{index}"), *index, i as i64, i < building))
                .collect();
            let used: BTreeSet<u64> = existing.union(&foreign).copied().collect();
            let plan = plan_scale(&machines, desired, &used, start, 64, batch);
            let created: BTreeSet<u64> = plan.create.iter().copied().collect();
            prop_assert_eq!(created.len(), plan.create.len(), "distinct");
            prop_assert!(created.is_disjoint(&used));
            prop_assert!(created.iter().all(|i| *i >= start && *i < 64));
            prop_assert!(machines.len() + plan.create.len() <= desired.max(machines.len()));
            let building_now = machines.iter().filter(|m| m.building).count();
            prop_assert!(plan.create.is_empty() || building_now + plan.create.len() <= batch.max(1));
            if machines.len() > desired {
                prop_assert_eq!(plan.delete.len(), machines.len() - desired);
                prop_assert!(plan.create.is_empty());
            } else {
                prop_assert!(plan.delete.is_empty());
            }
        }
    }
}
