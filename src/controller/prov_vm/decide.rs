//! Decide: from a machine and its [`Facts`] to a [`Plan`] — the job to start or cancel, the
//! power change, the desired status, whether and how urgently to write it, the Events.
//! Pure: no I/O, no clock, no randomness (the caller passes the time and a fresh task id);
//! it only logs.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use mcs_backend::{BackendError, MachineRef, MachineRequest, Nic, Output, WriteBackCache};
use mcs_domain::rules::{RuleError, field as rule_field};
use mcs_domain::task::{TaskState, TaskStatus, TaskType};

use super::super::backends::owner;
use super::super::conditions::{DesiredCondition, merge};
use super::super::prov_scheme::leaf_name;
use super::super::tasks::follow_snapshot;
use super::super::update_window;
use super::read::{BuildInputs, Facts, RunningTask};
use super::{DEFAULT_CPU, DEFAULT_MEMORY_MB};
use crate::api::{
    ANNOTATION_CANCEL, ANNOTATION_RETRY, DesiredPowerState, MachineOverrides, MachineSize,
    PowerState, PreparedImageSpec, ProvScheme, ProvSchemeSpec, ProvVm, ProvVmStatus,
    ServiceOffering, UpdateStatus, condition_type,
};
use crate::controller::ControllerError;

/// CPU and memory of a machine, resolved from its layers of [`MachineSize`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolvedSize {
    /// Virtual CPUs.
    pub cpu: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
}

/// Applies one layer (a service offering, then explicit CPU/memory) over `size`.
fn layer(
    size: &mut ResolvedSize,
    settings: &MachineSize,
    field: &str,
    unit: &str,
    offerings: &[ServiceOffering],
) -> Result<(), RuleError> {
    if let Some(path) = &settings.service_offering {
        let name = leaf_name(path).unwrap_or_default();
        let found = offerings.iter().find(|o| o.name == name).ok_or_else(|| {
            RuleError::ServiceOfferingPathResolutionFailed {
                field: field.to_owned(),
                hosting_unit: unit.to_owned(),
                detail: format!("service offering '{name}' is not defined in the hosting unit"),
            }
        })?;
        size.cpu = u32::try_from(found.cpu_count).unwrap_or(DEFAULT_CPU);
        size.memory_mb = u64::try_from(found.memory_mb).unwrap_or(DEFAULT_MEMORY_MB);
    }
    if let Some(cpu) = settings.vm_cpu_count.and_then(|c| u32::try_from(c).ok()) {
        size.cpu = cpu;
    }
    if let Some(memory) = settings.vm_memory_mb.and_then(|m| u64::try_from(m).ok()) {
        size.memory_mb = memory;
    }
    Ok(())
}

/// The size of a machine: the prepared image's settings, overridden by the scheme's, overridden
/// by the machine's own (`Set-ProvVM`). Within a layer a service offering sets both values and
/// explicit CPU/memory win over it.
///
/// # Errors
///
/// [`RuleError::ServiceOfferingPathResolutionFailed`] when an offering is not in `offerings`.
pub fn machine_size(
    scheme: &ProvSchemeSpec,
    prepared: Option<&PreparedImageSpec>,
    overrides: Option<&MachineOverrides>,
    unit: &str,
    offerings: &[ServiceOffering],
) -> Result<ResolvedSize, RuleError> {
    let mut size = ResolvedSize {
        cpu: DEFAULT_CPU,
        memory_mb: DEFAULT_MEMORY_MB,
    };
    if let Some(p) = prepared {
        layer(
            &mut size,
            &p.size,
            rule_field::PREPARED_SERVICE_OFFERING,
            unit,
            offerings,
        )?;
    }
    layer(
        &mut size,
        &scheme.size,
        rule_field::SERVICE_OFFERING,
        unit,
        offerings,
    )?;
    if let Some(o) = overrides {
        layer(
            &mut size,
            &o.size,
            "spec.overrides.serviceOffering",
            unit,
            offerings,
        )?;
    }
    Ok(size)
}

/// The NICs of a machine from a network mapping, in NIC index order, by network name.
pub fn nics(mapping: &BTreeMap<String, String>) -> Vec<Nic> {
    let mut entries: Vec<(u32, &String)> = mapping
        .iter()
        .map(|(k, v)| (k.parse::<u32>().unwrap_or(u32::MAX), v))
        .collect();
    entries.sort();
    entries
        .into_iter()
        .map(|(_, path)| Nic {
            network: leaf_name(path).unwrap_or_else(|| path.clone()),
            mac: None,
        })
        .collect()
}

/// The write-back cache of a machine of a scheme that uses one.
pub fn write_back_cache(scheme: &ProvSchemeSpec) -> Option<WriteBackCache> {
    scheme.use_write_back_cache.then(|| WriteBackCache {
        disk_mb: scheme
            .write_back_cache_disk_size_gb
            .and_then(|g| u64::try_from(g).ok())
            .unwrap_or(0)
            .saturating_mul(1024),
        memory_mb: scheme
            .write_back_cache_memory_size_mb
            .and_then(|m| u64::try_from(m).ok())
            .unwrap_or(0),
    })
}

/// What a start of the machine does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAction {
    /// Rebuild from the scheme's current version (pending update, window open).
    Update,
    /// Recreate the overlay (clean-on-boot, no update due).
    Reset,
    /// Just power on.
    PowerOn,
}

/// Decides what a start (`spec.powerState` `Stopped -> Running` transition) does: rebuild when an
/// update is pending and the update window is open, else reset clean-on-boot machines, else just
/// power on.
pub fn start_action(pending: bool, window_open: bool, clean_on_boot: bool) -> StartAction {
    if pending && window_open {
        StartAction::Update
    } else if clean_on_boot {
        StartAction::Reset
    } else {
        StartAction::PowerOn
    }
}

/// The update status of a built machine.
pub fn update_status(
    built_from: Option<i64>,
    current: i64,
    task: Option<&TaskStatus>,
) -> UpdateStatus {
    match task {
        Some(t) if t.task_type == TaskType::UpdateProvVm && !t.is_terminal() => {
            UpdateStatus::Updating
        }
        Some(t)
            if t.task_type == TaskType::UpdateProvVm
                && t.task_state != TaskState::Finished
                && built_from != Some(current) =>
        {
            UpdateStatus::UpdateFailed
        }
        _ if built_from == Some(current) => UpdateStatus::UpToDate,
        _ => UpdateStatus::PendingUpdate,
    }
}

/// Why the machine is not one its scheme issued, if it is not: the scheme is missing
/// (`ProvisioningSchemeNotFound`), or the object was made by hand, without the scheme's
/// controller owner reference (`MachineNotIssuedByScheme`). Such a machine is reported and
/// never built, and its deletion touches no disk: machine names are issued by the scheme.
pub fn provenance_problem(
    machine: &ProvVm,
    scheme: Option<&ProvScheme>,
) -> Option<(&'static str, String)> {
    let name = &machine.spec.prov_scheme_ref;
    let Some(scheme) = scheme else {
        return Some((
            "ProvisioningSchemeNotFound",
            format!(
                "spec.provSchemeRef: provisioning scheme '{name}' was not found in the namespace; a ProvVm is created by its ProvScheme (scale spec.machineCount), so no disk is built for it"
            ),
        ));
    };
    let issued = machine.owner_references().iter().any(|o| {
        o.controller == Some(true)
            && o.kind == "ProvScheme"
            && o.name == *name
            && scheme.metadata.uid.as_deref() == Some(o.uid.as_str())
    });
    (!issued).then(|| {
        (
            "MachineNotIssuedByScheme",
            format!(
                "spec.provSchemeRef: this ProvVm was not created by provisioning scheme '{name}' (it has no controller owner reference to it); a ProvVm is created by its ProvScheme and its spec.machineName is issued from the scheme's identity pool, so a hand-made one is reported, never built or adopted: scale the scheme's spec.machineCount instead"
            ),
        )
    })
}

/// Whether `new` says more than `old` than the clock moving on: a task that only ticked
/// (`lastUpdateTime`, elapsed time, expected completion) is not worth a write.
pub fn significant(old: &ProvVmStatus, new: &ProvVmStatus) -> bool {
    crate::controller::status::differs_beyond_clock(old, new, |s| s.task.as_mut())
}

/// The task state a backend failure ends a machine build in.
fn machine_failure(error: &BackendError) -> TaskState {
    let state = error.task_state();
    if TaskType::NewProvVm.is_failure_state(state) {
        state
    } else {
        TaskState::UnexpectedError
    }
}

/// The backend request that builds `machine` from `inputs` (on the storage of its existing
/// disks, else spread over the image's prepared copies by machine index).
///
/// # Errors
///
/// A message when the image has no prepared copy, its copy's storage is not one of the hosting
/// unit, or a service offering is unknown.
pub fn build_request(
    machine: &ProvVm,
    scheme: &ProvScheme,
    existing_storage: Option<&str>,
    inputs: &BuildInputs,
) -> Result<MachineRequest, String> {
    let instances = inputs
        .image
        .status
        .as_ref()
        .map(|s| s.instances.as_slice())
        .unwrap_or_default();
    let index = usize::try_from(machine.spec.machine_index).unwrap_or(0);
    let instance = existing_storage
        .and_then(|s| instances.iter().find(|i| i.name == s))
        .or_else(|| instances.get(index % instances.len().max(1)))
        .ok_or_else(|| {
            format!(
                "image version spec '{}' has no prepared copies",
                inputs.image.name_any()
            )
        })?;
    let root = inputs
        .hypervisor
        .roots
        .iter()
        .find(|(name, _)| *name == instance.name)
        .map(|(_, p)| p.clone())
        .ok_or_else(|| {
            format!(
                "storage '{}' is not a storage of hosting unit '{}'",
                instance.name,
                inputs.unit.name_any()
            )
        })?;
    let config = &inputs.config;
    let size = machine_size(
        config,
        inputs.image.spec.prepared.as_ref(),
        machine.spec.overrides.as_ref(),
        &inputs.unit.name_any(),
        &inputs.unit.spec.service_offerings,
    )
    .map_err(|e| e.to_string())?;
    Ok(MachineRequest {
        storage: instance.name.clone(),
        scheme: scheme.name_any(),
        machine_name: machine.spec.machine_name.clone(),
        index: u32::try_from(machine.spec.machine_index).unwrap_or(u32::MAX),
        domain: inputs.domain.clone(),
        cpu: size.cpu,
        memory_mb: size.memory_mb,
        nics: nics(&config.network_mapping),
        write_back_cache: write_back_cache(config),
        clean_on_boot: config.clean_on_boot,
        prepared_image: root.join(&instance.path),
        owner: owner(machine, scheme.spec.deletion_policy),
    })
}

/// A build job to start (or to start again after a restart).
#[derive(Clone, Debug)]
pub struct StartJob {
    /// The task the job works for.
    pub task: TaskStatus,
    /// The backend request.
    pub request: MachineRequest,
    /// The scheme version built.
    pub version: i64,
    /// The image version spec built from.
    pub image: String,
}

/// The build job of `task`: a new machine (`storage` `None`) goes to a storage holding a
/// prepared copy; an update stays on the machine's `storage`. Fails with why it cannot start
/// yet (missing inputs, no prepared copy, an unknown size).
fn start_job(
    machine: &ProvVm,
    scheme: &ProvScheme,
    facts: &Facts,
    task: &TaskStatus,
    storage: Option<&str>,
) -> Result<StartJob, String> {
    let inputs = facts.build.as_ref().map_err(Clone::clone)?;
    let mut request = build_request(machine, scheme, storage, inputs)?;
    if let Some(storage) = storage {
        storage.clone_into(&mut request.storage);
    }
    Ok(StartJob {
        task: task.clone(),
        request,
        version: inputs.version,
        image: inputs.config.image_version_spec_ref.clone(),
    })
}

/// What happens to the machine's job.
#[derive(Clone, Debug, Default)]
pub enum JobStep {
    /// Nothing.
    #[default]
    Keep,
    /// Start a job (a new task, or the stored one after a restart).
    Start(Box<StartJob>),
    /// Cancel the running job.
    Cancel,
}

/// Whether and how the desired status is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusWrite {
    /// The stored status already says it: no write.
    Unchanged,
    /// A young job's status: not written yet (only its end, or its state once it has run
    /// for the progress interval).
    Hold,
    /// Write it; `urgent` (a state change) bypasses the progress rate limit.
    Now {
        /// A state change rather than progress.
        urgent: bool,
    },
}

/// An Event to publish about the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    /// Normal or Warning.
    pub type_: EventType,
    /// The reason (a stable UpperCamelCase word).
    pub reason: String,
    /// What the operator was doing.
    pub action: &'static str,
    /// The human-readable note.
    pub note: String,
}

fn event(type_: EventType, reason: &str, action: &'static str, note: String) -> PlannedEvent {
    PlannedEvent {
        type_,
        reason: reason.to_owned(),
        action,
        note,
    }
}

/// Everything one reconcile does, decided up front.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The machine's job.
    pub job: JobStep,
    /// Recreate the machine's overlay first (clean-on-boot start).
    pub reset: Option<MachineRef>,
    /// Power the machine on (`true`) or off on its hypervisor.
    pub power: Option<(MachineRef, bool)>,
    /// The desired status.
    pub status: ProvVmStatus,
    /// Whether to write it.
    pub write: StatusWrite,
    /// Events to publish after the write.
    pub events: Vec<PlannedEvent>,
    /// Annotations consumed (removed after the write).
    pub consumed: Vec<&'static str>,
    /// The job has ended and is forgotten once its status is written.
    pub forget_job: bool,
    /// When to look again (`None`: the resync interval).
    pub requeue: Option<Duration>,
}

impl Plan {
    fn new(status: ProvVmStatus) -> Self {
        Self {
            job: JobStep::Keep,
            reset: None,
            power: None,
            status,
            write: StatusWrite::Unchanged,
            events: Vec::new(),
            consumed: Vec::new(),
            forget_job: false,
            requeue: None,
        }
    }

    fn requeue_within(&mut self, after: Duration) {
        self.requeue = Some(self.requeue.map_or(after, |r| r.min(after)));
    }
}

fn task_error(error: impl std::fmt::Display) -> ControllerError {
    ControllerError::Task(error.to_string())
}

/// The plan for `machine` from its `facts` at `now`; `new_task_id` names a task started now.
///
/// # Errors
///
/// [`ControllerError::Task`] when a task cannot move as the job says, or a task running
/// before a restart cannot be started again.
pub fn plan(
    machine: &ProvVm,
    facts: &Facts,
    now: Timestamp,
    new_task_id: &str,
) -> Result<Plan, ControllerError> {
    if let Some((reason, message)) = provenance_problem(machine, facts.scheme.as_deref()) {
        return Ok(not_issued(machine, &facts.status, reason, message, now));
    }
    let old = &facts.status;
    let current = facts
        .scheme
        .as_deref()
        .and_then(|scheme| Some((scheme, scheme.status.as_ref()?.provisioning_scheme_version?)));
    let Some((scheme, current)) = current else {
        let mut plan = Plan::new(old.clone());
        plan.requeue = Some(Duration::from_secs(2));
        return Ok(plan);
    };
    let mut plan = Plan::new(ProvVmStatus {
        observed_generation: machine.metadata.generation,
        ..old.clone()
    });
    let mut conditions = Vec::new();
    let mut urgent = false;
    let mut hold = None;
    let reference = |storage: String| MachineRef {
        storage,
        scheme: scheme.name_any(),
        machine_name: machine.spec.machine_name.clone(),
    };
    let first_storage = |status: &ProvVmStatus| {
        status
            .disks
            .first()
            .map(|d| d.storage.clone())
            .unwrap_or_default()
    };
    let mut power = None;
    if let Some(running) = &facts.running {
        let task = follow(machine, scheme, facts, running, current, now, &mut plan)?;
        urgent |= task.is_terminal();
        if !running.written && !task.is_terminal() {
            // Queued jobs wait without a write; running ones until the progress interval.
            hold = Some(running.age.map_or(facts.progress_interval, |age| {
                facts.progress_interval.saturating_sub(age)
            }));
        }
        if task.task_state == TaskState::Finished {
            power = Some(machine.spec.power_state == DesiredPowerState::Running);
        }
        plan.status.task = Some(task);
    } else if plan.status.provisioning_scheme_version.is_none() {
        let failed = old
            .task
            .as_ref()
            .is_some_and(|t| t.task_state != TaskState::Finished);
        if old.task.is_none() || (failed && facts.annotations.retry) {
            let task = TaskStatus::start(TaskType::NewProvVm, new_task_id.to_owned(), now);
            match start_job(machine, scheme, facts, &task, None) {
                Ok(job) => {
                    plan.job = JobStep::Start(Box::new(job));
                    plan.status.task = Some(task);
                    hold = Some(facts.progress_interval);
                }
                Err(message) => {
                    tracing::info!(machine = %machine.name_any(), %message, "machine waits");
                    plan.requeue_within(Duration::from_secs(2));
                }
            }
            if facts.annotations.retry {
                plan.consumed.push(ANNOTATION_RETRY);
            }
        }
    } else if machine.spec.power_state == DesiredPowerState::Running
        && old.power_state != Some(PowerState::On)
    {
        let pending = old.provisioning_scheme_version != Some(current);
        let open =
            update_window::is_open(scheme.spec.update_window.as_ref(), now).unwrap_or_else(|e| {
                tracing::warn!(scheme = %scheme.name_any(), %e, "update window ignored");
                false
            });
        match start_action(pending, open, scheme.spec.clean_on_boot) {
            StartAction::Update => {
                let task = TaskStatus::start(TaskType::UpdateProvVm, new_task_id.to_owned(), now);
                let storage = old.disks.first().map(|d| d.storage.as_str());
                match start_job(machine, scheme, facts, &task, storage) {
                    Ok(job) => {
                        plan.job = JobStep::Start(Box::new(job));
                        plan.status.task = Some(task);
                        hold = Some(facts.progress_interval);
                    }
                    Err(message) => {
                        conditions.push(DesiredCondition::true_(
                            condition_type::DEGRADED,
                            "UpdateBlocked",
                            message,
                        ));
                        plan.requeue_within(Duration::from_secs(5));
                    }
                }
            }
            StartAction::Reset => {
                if facts.hypervisor.is_some() {
                    plan.reset = Some(reference(first_storage(old)));
                    plan.events.push(event(
                        EventType::Normal,
                        "MachineReset",
                        "StartMachine",
                        format!(
                            "{} started clean (clean-on-boot)",
                            machine.spec.machine_name
                        ),
                    ));
                }
                power = Some(true);
            }
            StartAction::PowerOn => power = Some(true),
        }
    } else if machine.spec.power_state == DesiredPowerState::Stopped
        && old.power_state == Some(PowerState::On)
    {
        power = Some(false);
    }
    if let Some(running) = power {
        if facts.hypervisor.is_some() {
            plan.power = Some((reference(first_storage(&plan.status)), running));
        }
        plan.status.power_state = Some(if running {
            PowerState::On
        } else {
            PowerState::Off
        });
        urgent = true;
    }
    if !plan.status.disks.is_empty()
        && let Some(seen) = &facts.vm_status
    {
        urgent |= *seen != old.vm_status;
        plan.status.vm_status.clone_from(seen);
    }
    if plan.status.provisioning_scheme_version.is_some() {
        plan.status.update_status = Some(update_status(
            plan.status.provisioning_scheme_version,
            current,
            plan.status.task.as_ref(),
        ));
    }
    plan.status.conditions = merge(
        &old.conditions,
        &super::report::conditions(&plan.status, conditions),
        machine.metadata.generation,
        now,
    );
    urgent |=
        old.task.as_ref().map(|t| t.task_state) != plan.status.task.as_ref().map(|t| t.task_state);
    plan.write = match hold {
        _ if !significant(old, &plan.status) => StatusWrite::Unchanged,
        Some(wait) if !wait.is_zero() => {
            plan.requeue_within(wait);
            StatusWrite::Hold
        }
        _ => StatusWrite::Now { urgent },
    };
    Ok(plan)
}

/// Moves the task in flight along with its job: start it again after a restart, cancel it on
/// request, follow its progress, or end it with the job's result (the disks of a build that
/// ended well, a Warning Event for one that failed).
fn follow(
    machine: &ProvVm,
    scheme: &ProvScheme,
    facts: &Facts,
    running: &RunningTask,
    current: i64,
    now: Timestamp,
    plan: &mut Plan,
) -> Result<TaskStatus, ControllerError> {
    let mut task = running.task.clone();
    if facts.annotations.cancel {
        plan.job = JobStep::Cancel;
        task.cancel("canceled by the mcs.imaging.dev/cancel annotation", now)
            .map_err(task_error)?;
        plan.consumed.push(ANNOTATION_CANCEL);
        return Ok(task);
    }
    let Some(snapshot) = &running.snapshot else {
        // The operator restarted: start the job again (the backend is idempotent).
        let inputs = facts.build.as_ref().map_err(task_error)?;
        let request = build_request(
            machine,
            scheme,
            facts.status.disks.first().map(|d| d.storage.as_str()),
            inputs,
        )
        .map_err(task_error)?;
        plan.job = JobStep::Start(Box::new(StartJob {
            task: task.clone(),
            request,
            version: current,
            image: inputs.config.image_version_spec_ref.clone(),
        }));
        plan.requeue_within(facts.follow_interval);
        return Ok(task);
    };
    follow_snapshot(&mut task, snapshot, |_, p| f64::from(p), now).map_err(task_error)?;
    match &snapshot.result {
        None => plan.requeue_within(facts.follow_interval),
        Some(Ok(Output::Machine(_))) => {
            let (version, image) = running
                .target
                .clone()
                .unwrap_or_else(|| (current, scheme.spec.image_version_spec_ref.clone()));
            if task.task_state != TaskState::CreatingMachines {
                task.advance(TaskState::CreatingMachines, now)
                    .map_err(task_error)?;
            }
            task.finish(now).map_err(task_error)?;
            if let Some(built) = &facts.built {
                plan.status.disks.clone_from(&built.disks);
            }
            plan.status.provisioning_scheme_version = Some(version);
            plan.status.image_version_spec = Some(image);
            plan.status.power_state = Some(machine.spec.power_state.into());
            plan.forget_job = true;
        }
        Some(Ok(_)) => {
            task.fail(
                TaskState::UnexpectedError,
                "the backend returned no machine",
                now,
            )
            .map_err(task_error)?;
            plan.forget_job = true;
        }
        Some(Err(error)) => {
            let state = machine_failure(error);
            if state == TaskState::Canceled || matches!(error, BackendError::Canceled) {
                task.cancel(error.to_string(), now).map_err(task_error)?;
            } else {
                task.fail(state, error.to_string(), now)
                    .map_err(task_error)?;
            }
            plan.events.push(event(
                EventType::Warning,
                error.reason(),
                "BuildMachine",
                error.to_string(),
            ));
            plan.forget_job = true;
        }
    }
    Ok(task)
}

/// The plan for a machine its scheme did not issue: `Ready=False`/`Degraded=True` with
/// `reason`, and a Warning Event when that changes; nothing is built, no disk is touched.
fn not_issued(
    machine: &ProvVm,
    old: &ProvVmStatus,
    reason: &'static str,
    message: String,
    now: Timestamp,
) -> Plan {
    let conditions = [
        DesiredCondition::false_(condition_type::READY, reason, message.clone()),
        DesiredCondition::true_(condition_type::DEGRADED, reason, message.clone()),
    ];
    let mut plan = Plan::new(ProvVmStatus {
        observed_generation: machine.metadata.generation,
        conditions: merge(
            &old.conditions,
            &conditions,
            machine.metadata.generation,
            now,
        ),
        ..old.clone()
    });
    if plan.status != *old {
        plan.write = StatusWrite::Now { urgent: true };
    }
    let was = old
        .conditions
        .iter()
        .find(|c| c.type_ == condition_type::READY)
        .map(|c| (c.reason.clone(), c.message.clone()));
    if was.as_ref() != Some(&(reason.to_owned(), message.clone())) {
        plan.events
            .push(event(EventType::Warning, reason, "Provision", message));
    }
    plan.requeue = Some(Duration::from_secs(30));
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MachineDisk;
    use kube::Resource;
    use mcs_domain::Reason;
    use serde_json::json;
    use std::sync::Arc;

    fn spec() -> ProvSchemeSpec {
        serde_json::from_value(json!({
            "imageVersionSpecRef": "img",
            "hostingUnitRef": "lab",
            "identityPoolRef": "pool",
            "networkMapping": {
                "1": "XDHyp:\\HostingUnits\\lab\\dmz.network",
                "0": "XDHyp:\\HostingUnits\\lab\\lan.network",
                "10": "XDHyp:\\HostingUnits\\lab\\ten.network"
            },
            "vmCpuCount": 2,
        }))
        .expect("valid spec")
    }

    fn offerings() -> Vec<ServiceOffering> {
        vec![ServiceOffering {
            name: "small".into(),
            cpu_count: 4,
            memory_mb: 8192,
        }]
    }

    #[test]
    fn overrides_win_over_the_scheme_and_the_scheme_over_the_image() {
        let scheme = spec();
        let base = machine_size(&scheme, None, None, "lab", &offerings()).expect("sized");
        assert_eq!(
            base,
            ResolvedSize {
                cpu: 2,
                memory_mb: DEFAULT_MEMORY_MB
            }
        );
        let cpu = MachineOverrides {
            size: MachineSize {
                vm_cpu_count: Some(8),
                ..MachineSize::default()
            },
        };
        let sized = machine_size(&scheme, None, Some(&cpu), "lab", &offerings()).expect("sized");
        assert_eq!(
            sized,
            ResolvedSize {
                cpu: 8,
                memory_mb: DEFAULT_MEMORY_MB
            }
        );
        let offering = MachineOverrides {
            size: MachineSize {
                service_offering: Some("XDHyp:\\HostingUnits\\lab\\small.serviceoffering".into()),
                ..MachineSize::default()
            },
        };
        let sized =
            machine_size(&scheme, None, Some(&offering), "lab", &offerings()).expect("sized");
        assert_eq!(
            sized,
            ResolvedSize {
                cpu: 4,
                memory_mb: 8192
            }
        );
        let missing = MachineOverrides {
            size: MachineSize {
                service_offering: Some("XDHyp:\\HostingUnits\\lab\\huge.serviceoffering".into()),
                ..MachineSize::default()
            },
        };
        let error =
            machine_size(&scheme, None, Some(&missing), "lab", &offerings()).expect_err("unknown");
        assert_eq!(error.reason(), "ServiceOfferingPathResolutionFailed");
    }

    #[test]
    fn nics_follow_the_numeric_nic_order() {
        let names: Vec<String> = nics(&spec().network_mapping)
            .into_iter()
            .map(|n| n.network)
            .collect();
        assert_eq!(names, ["lan", "dmz", "ten"]);
    }

    #[test]
    fn write_back_cache_only_with_the_cache() {
        let mut s = spec();
        assert_eq!(write_back_cache(&s), None);
        s.use_write_back_cache = true;
        s.write_back_cache_disk_size_gb = Some(24);
        s.write_back_cache_memory_size_mb = Some(256);
        assert_eq!(
            write_back_cache(&s),
            Some(WriteBackCache {
                disk_mb: 24 * 1024,
                memory_mb: 256
            })
        );
    }

    #[test]
    fn starts_update_only_inside_the_window() {
        assert_eq!(start_action(true, true, false), StartAction::Update);
        assert_eq!(start_action(true, true, true), StartAction::Update);
        assert_eq!(start_action(true, false, false), StartAction::PowerOn);
        assert_eq!(start_action(true, false, true), StartAction::Reset);
        assert_eq!(start_action(false, true, true), StartAction::Reset);
        assert_eq!(start_action(false, true, false), StartAction::PowerOn);
    }

    #[test]
    fn pending_update_then_up_to_date() {
        let t = Timestamp::from_second(1_800_000_000).expect("valid");
        assert_eq!(update_status(Some(1), 1, None), UpdateStatus::UpToDate);
        assert_eq!(update_status(Some(1), 2, None), UpdateStatus::PendingUpdate);
        let running = TaskStatus::start(TaskType::UpdateProvVm, "t".into(), t);
        assert_eq!(
            update_status(Some(1), 2, Some(&running)),
            UpdateStatus::Updating
        );
        let mut failed = running.clone();
        failed
            .fail(TaskState::StorageNotFound, "gone", t)
            .expect("fails");
        assert_eq!(
            update_status(Some(1), 2, Some(&failed)),
            UpdateStatus::UpdateFailed
        );
        let created = TaskStatus::start(TaskType::NewProvVm, "t".into(), t);
        assert_eq!(
            update_status(Some(2), 2, Some(&created)),
            UpdateStatus::UpToDate
        );
    }

    /// A machine of `scheme` (made by hand unless `owned`).
    fn machine_of(scheme: &ProvScheme, owned: bool) -> ProvVm {
        let mut machine: ProvVm = serde_json::from_value(json!({
            "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ProvVm",
            "metadata": {"name": "vdi-001", "namespace": "ns"},
            "spec": {"provSchemeRef": "s", "machineName": "VDI-001", "machineIndex": 1},
        }))
        .expect("machine");
        if owned {
            machine.metadata.owner_references =
                Some(vec![scheme.controller_owner_ref(&()).expect("uid")]);
        }
        machine
    }

    #[test]
    fn only_a_machine_its_scheme_issued_is_built() {
        let mut scheme = ProvScheme::new("s", spec());
        scheme.metadata.uid = Some("uid-1".into());
        assert_eq!(
            provenance_problem(&machine_of(&scheme, true), Some(&scheme)),
            None
        );

        let (reason, message) =
            provenance_problem(&machine_of(&scheme, false), Some(&scheme)).expect("hand-made");
        assert_eq!(reason, "MachineNotIssuedByScheme");
        assert!(message.starts_with("spec.provSchemeRef: "), "{message}");
        assert!(message.contains("spec.machineName is issued"), "{message}");

        // Owned by an earlier scheme of the same name (another uid): not this scheme's.
        let earlier = machine_of(&scheme, true);
        scheme.metadata.uid = Some("uid-2".into());
        assert_eq!(
            provenance_problem(&earlier, Some(&scheme)).map(|p| p.0),
            Some("MachineNotIssuedByScheme")
        );

        let (reason, message) = provenance_problem(&earlier, None).expect("no scheme");
        assert_eq!(reason, "ProvisioningSchemeNotFound");
        assert!(message.contains("spec.provSchemeRef: provisioning scheme 's' was not found"));
    }

    use super::super::read::{BuiltDisks, RunningTask};
    use crate::api::ProvSchemeStatus;
    use crate::controller::tasks::{JobSnapshot, TaskAnnotations};
    use mcs_backend::MachineInfo;
    use std::path::PathBuf;

    const INTERVAL: Duration = Duration::from_secs(1);

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).expect("valid")
    }

    /// A scheme at version 1 and one of its machines (built when `built`).
    fn scheme_and_machine(built: bool) -> (ProvScheme, ProvVm) {
        let mut scheme = ProvScheme::new("s", spec());
        scheme.metadata.uid = Some("uid-1".into());
        scheme.metadata.namespace = Some("ns".into());
        scheme.status = Some(ProvSchemeStatus {
            provisioning_scheme_version: Some(1),
            ..ProvSchemeStatus::default()
        });
        let mut machine = machine_of(&scheme, true);
        machine.metadata.generation = Some(1);
        if built {
            let mut task = TaskStatus::start(TaskType::NewProvVm, "t0".into(), now());
            task.advance(TaskState::CreatingMachines, now())
                .expect("advance");
            task.finish(now()).expect("finish");
            let mut status = ProvVmStatus {
                observed_generation: Some(1),
                provisioning_scheme_version: Some(1),
                image_version_spec: Some("img".into()),
                power_state: Some(PowerState::Off),
                disks: vec![MachineDisk {
                    name: "os".into(),
                    path: "s/VDI-001/os.qcow2".into(),
                    storage: "fast".into(),
                }],
                task: Some(task),
                update_status: Some(UpdateStatus::UpToDate),
                ..ProvVmStatus::default()
            };
            status.conditions = merge(
                &[],
                &super::super::report::conditions(&status, Vec::new()),
                Some(1),
                now(),
            );
            machine.status = Some(status);
        }
        (scheme, machine)
    }

    fn facts(scheme: &ProvScheme, machine: &ProvVm) -> Facts {
        Facts {
            namespace: "ns".into(),
            key: "provvm/ns/vdi-001".into(),
            scheme: Some(Arc::new(scheme.clone())),
            status: machine.status.clone().unwrap_or_default(),
            annotations: TaskAnnotations::default(),
            running: None,
            build: Err("not needed".into()),
            hypervisor: None,
            built: None,
            vm_status: None,
            progress_interval: INTERVAL,
            follow_interval: INTERVAL,
        }
    }

    fn running(
        task: &TaskStatus,
        result: Option<Result<Output, BackendError>>,
        age_ms: u64,
        written: bool,
    ) -> RunningTask {
        RunningTask {
            task: task.clone(),
            snapshot: Some(JobSnapshot {
                task_id: task.task_id.clone(),
                queued: false,
                started: Some(std::time::Instant::now() - Duration::from_millis(age_ms)),
                operation_id: None,
                phase: if result.is_some() {
                    TaskState::Finished
                } else {
                    TaskState::CreatingMachines
                },
                percent: if result.is_some() { 100 } else { 40 },
                message: "working".into(),
                result,
            }),
            target: Some((1, "img".into())),
            written,
            age: Some(Duration::from_millis(age_ms)),
        }
    }

    fn built_machine() -> Output {
        Output::Machine(MachineInfo {
            dir: PathBuf::from("/pool/s/VDI-001"),
            disk: PathBuf::from("/pool/s/VDI-001/os.qcow2"),
            identity_disk: PathBuf::from("/pool/s/VDI-001/identity.qcow2"),
            cache_disk: None,
            definition: PathBuf::from("/pool/s/VDI-001/machine.json"),
            prepared_image: PathBuf::from("/pool/img.qcow2"),
        })
    }

    #[test]
    fn a_quick_build_is_written_once_when_it_ends_without_an_event() {
        let (scheme, machine) = scheme_and_machine(false);
        let task = TaskStatus::start(TaskType::NewProvVm, "t1".into(), now());
        let mut young = facts(&scheme, &machine);
        young.running = Some(running(&task, None, 10, false));
        let held = plan(&machine, &young, now(), "unused").expect("plan");
        assert_eq!(held.write, StatusWrite::Hold, "a young job is not reported");
        assert!(held.requeue.expect("looks again") <= INTERVAL);

        let mut ended = facts(&scheme, &machine);
        ended.running = Some(running(&task, Some(Ok(built_machine())), 30, false));
        ended.built = Some(BuiltDisks {
            storage: "fast".into(),
            disks: vec![MachineDisk {
                name: "os".into(),
                path: "s/VDI-001/os.qcow2".into(),
                storage: "fast".into(),
            }],
        });
        let done = plan(&machine, &ended, now(), "unused").expect("plan");
        assert_eq!(done.write, StatusWrite::Now { urgent: true });
        assert!(
            done.events.is_empty(),
            "success is announced per batch by the scheme"
        );
        assert!(done.forget_job);
        assert_eq!(done.status.provisioning_scheme_version, Some(1));
        assert_eq!(
            done.status.task.as_ref().map(|t| t.task_state),
            Some(TaskState::Finished)
        );
        assert_eq!(done.status.update_status, Some(UpdateStatus::UpToDate));
        assert_eq!(done.status.disks.len(), 1);
    }

    #[test]
    fn a_long_build_reports_its_state_after_the_interval() {
        let (scheme, machine) = scheme_and_machine(false);
        let task = TaskStatus::start(TaskType::NewProvVm, "t1".into(), now());
        let mut old = facts(&scheme, &machine);
        old.running = Some(running(&task, None, 1500, false));
        let late = plan(&machine, &old, now(), "unused").expect("plan");
        assert_eq!(late.write, StatusWrite::Now { urgent: true });
        assert_eq!(
            late.status.task.as_ref().map(|t| t.task_state),
            Some(TaskState::CreatingMachines)
        );
    }

    #[test]
    fn a_failed_build_gets_a_warning_event() {
        let (scheme, machine) = scheme_and_machine(false);
        let task = TaskStatus::start(TaskType::NewProvVm, "t1".into(), now());
        let mut failed = facts(&scheme, &machine);
        let error = BackendError::StorageNotFound {
            storage: "fast".into(),
            path: PathBuf::from("/pool"),
        };
        failed.running = Some(running(&task, Some(Err(error)), 10, false));
        let failure = plan(&machine, &failed, now(), "unused").expect("plan");
        assert_eq!(failure.write, StatusWrite::Now { urgent: true });
        assert_eq!(failure.events.len(), 1);
        assert_eq!(failure.events[0].type_, EventType::Warning);
        assert!(
            failure
                .status
                .task
                .as_ref()
                .is_some_and(|t| t.task_state.is_failure())
        );
    }

    #[test]
    fn a_machine_that_cannot_be_built_yet_waits_without_a_job() {
        let (scheme, machine) = scheme_and_machine(false);
        let waiting = plan(&machine, &facts(&scheme, &machine), now(), "t1").expect("plan");
        assert!(matches!(waiting.job, JobStep::Keep));
        assert_eq!(waiting.requeue, Some(Duration::from_secs(2)));
    }

    #[test]
    fn a_stopped_machine_starts_and_stops() {
        let (scheme, mut machine) = scheme_and_machine(true);
        let plan_of =
            |machine: &ProvVm| plan(machine, &facts(&scheme, machine), now(), "t9").expect("plan");
        assert_eq!(plan_of(&machine).write, StatusWrite::Unchanged);
        machine.spec.power_state = DesiredPowerState::Running;
        let start = plan_of(&machine);
        assert_eq!(start.status.power_state, Some(PowerState::On));
        assert_eq!(start.write, StatusWrite::Now { urgent: true });
        assert!(
            start.power.is_none(),
            "no hypervisor known: nothing to tell"
        );
    }

    proptest::proptest! {
        /// Whatever the job says and however old it is, the plan never writes a status equal
        /// (but for the clock) to the stored one, and holds only while the job is younger than
        /// the progress interval.
        #[test]
        fn never_writes_what_is_stored(age_ms in 0u64..3000, phase in 0usize..3, built in proptest::bool::ANY) {
            let (scheme, machine) = scheme_and_machine(built);
            let mut f = facts(&scheme, &machine);
            if !built {
                let task = TaskStatus::start(TaskType::NewProvVm, "t1".into(), now());
                let result = match phase {
                    0 => None,
                    1 => Some(Ok(built_machine())),
                    _ => Some(Err(BackendError::Canceled)),
                };
                f.running = Some(running(&task, result, age_ms, false));
            }
            let p = plan(&machine, &f, now(), "t2").expect("plan");
            match p.write {
                StatusWrite::Unchanged => proptest::prop_assert!(!significant(&f.status, &p.status)),
                StatusWrite::Hold => {
                    proptest::prop_assert!(age_ms < 1000);
                    proptest::prop_assert!(p.status.task.as_ref().is_some_and(|t| !t.is_terminal()));
                }
                StatusWrite::Now { .. } => proptest::prop_assert!(significant(&f.status, &p.status)),
            }
            if built {
                proptest::prop_assert_eq!(p.write, StatusWrite::Unchanged);
            }
        }
    }
}
