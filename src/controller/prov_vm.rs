//! The ProvVM controller: builds one machine's disks from its scheme's current version
//! (`New-ProvVM`), rebuilds it on its next start inside the scheme's update window
//! (`Set-ProvVMUpdateTimeWindow`), resets clean-on-boot machines on start, and removes its
//! disks when the object is deleted, honouring the scheme's `deletionPolicy`.
//!
//! Existing machines never change silently: after a new scheme version they report
//! `PendingUpdate` until a start inside the window rebuilds them. Per-machine overrides
//! (`Set-ProvVM`: CPU, memory, service offering) win over the scheme's settings at the next
//! build. The backend work runs as jobs of the shared [`super::tasks::TaskRunner`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::ControllerRevision;
use kube::api::{Api, Patch};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use mcs_backend::{
    Backend, DeleteMachineRequest, MachineInfo, MachineRef, MachineRequest, Nic, Operation, Output,
    PowerRequest, WriteBackCache,
};
use mcs_domain::Reason;
use mcs_domain::rules::{RuleError, field as rule_field};
use mcs_domain::task::{TaskState, TaskStatus, TaskType};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::conditions::{DesiredCondition, merge};
use super::events;
use super::prov_scheme::leaf_name;
use super::scheme_versions::{self, revision_name};
use super::status::{apply_status, field_manager};
use super::tasks::{self, TaskAnnotations};
use super::{Context, ControllerError, update_window, watcher_config};
use crate::api::{
    DeletionPolicy, DesiredPowerState, HostingUnit, HypervisorConnection, IdentityPool,
    ImageVersionSpec, LABEL_PROVSCHEME, MachineDisk, MachineOverrides, PowerState,
    PreparedImageSpec, ProvScheme, ProvSchemeSpec, ProvVm, ProvVmStatus, ServiceOffering,
    UpdateStatus, condition_type,
};

const CONTROLLER: &str = "provvm";
/// Finalizer that keeps a machine object until its disks are removed (or retained).
pub const FINALIZER: &str = "mcs.imaging.dev/machine-disks";
/// CPUs of a machine when neither image, scheme nor overrides say.
pub const DEFAULT_CPU: u32 = 1;
/// Memory (MiB) of a machine when neither image, scheme nor overrides say.
pub const DEFAULT_MEMORY_MB: u64 = 1024;

/// Whether the machine's disks were built (it records the version it was built from).
pub fn is_built(machine: &ProvVm) -> bool {
    machine
        .status
        .as_ref()
        .is_some_and(|s| s.provisioning_scheme_version.is_some())
}

/// CPU and memory of a machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MachineSize {
    /// Virtual CPUs.
    pub cpu: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
}

/// Applies one layer (a service offering, then explicit CPU/memory) over `size`.
fn layer(
    size: &mut MachineSize,
    offering: Option<&String>,
    cpu: Option<i32>,
    memory: Option<i64>,
    field: &str,
    unit: &str,
    offerings: &[ServiceOffering],
) -> Result<(), RuleError> {
    if let Some(path) = offering {
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
    if let Some(cpu) = cpu.and_then(|c| u32::try_from(c).ok()) {
        size.cpu = cpu;
    }
    if let Some(memory) = memory.and_then(|m| u64::try_from(m).ok()) {
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
) -> Result<MachineSize, RuleError> {
    let mut size = MachineSize {
        cpu: DEFAULT_CPU,
        memory_mb: DEFAULT_MEMORY_MB,
    };
    if let Some(p) = prepared {
        layer(
            &mut size,
            p.service_offering.as_ref(),
            p.vm_cpu_count,
            p.vm_memory_mb,
            rule_field::PREPARED_SERVICE_OFFERING,
            unit,
            offerings,
        )?;
    }
    layer(
        &mut size,
        scheme.service_offering.as_ref(),
        scheme.vm_cpu_count,
        scheme.vm_memory_mb,
        rule_field::SERVICE_OFFERING,
        unit,
        offerings,
    )?;
    if let Some(o) = overrides {
        layer(
            &mut size,
            o.service_offering.as_ref(),
            o.vm_cpu_count,
            o.vm_memory_mb,
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

/// The reflector caches the machine controller reads from (no request per machine).
#[derive(Clone)]
pub struct Caches {
    /// Provisioning schemes.
    pub schemes: Store<ProvScheme>,
    /// Scheme versions.
    pub revisions: Store<ControllerRevision>,
    /// Hosting units.
    pub units: Store<HostingUnit>,
    /// Hypervisor connections.
    pub connections: Store<HypervisorConnection>,
    /// Image version specs.
    pub images: Store<ImageVersionSpec>,
    /// Identity pools.
    pub pools: Store<IdentityPool>,
}

fn cached<K>(api: Api<K>, config: watcher::Config) -> (Store<K>, BoxFuture<'static, ()>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let drive = reflector::reflector(writer, watcher(api, config))
        .default_backoff()
        .for_each(|_| futures::future::ready(()))
        .boxed();
    (reader, drive)
}

fn lookup<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone,
{
    store.get(&ObjectRef::new(name).within(namespace))
}

/// Schemes by `namespace/name`, as last seen by the machine controller's scheme watch.
type LatestSchemes = Arc<Mutex<HashMap<String, Arc<ProvScheme>>>>;
/// What machines act on per scheme (`namespace/name`): current version and generation.
type Fingerprints = Mutex<HashMap<String, (Option<i64>, Option<i64>)>>;

/// The machine controller's context: the shared context, the caches, and what each running
/// job builds.
pub struct VmContext {
    /// The shared controller context.
    pub base: Arc<Context>,
    /// Read caches.
    pub caches: Caches,
    /// Per job key: (task id, scheme version, image spec) the job builds.
    targets: Mutex<HashMap<String, (String, i64, String)>>,
    /// The newest scheme objects seen by the controller's own scheme watch (which triggers
    /// the machines), fresher than or as fresh as the cache.
    latest: LatestSchemes,
}

impl VmContext {
    /// The scheme `name` in `namespace`: as last seen by the trigger watch, else from the cache.
    fn scheme(&self, namespace: &str, name: &str) -> Option<Arc<ProvScheme>> {
        let key = format!("{namespace}/{name}");
        self.latest
            .lock()
            .ok()
            .and_then(|latest| latest.get(&key).cloned())
            .or_else(|| lookup(&self.caches.schemes, namespace, name))
    }
}

/// Everything needed to build a machine, resolved from the caches.
struct Build {
    backend: Arc<dyn Backend>,
    request: MachineRequest,
    version: i64,
    image: String,
}

fn version_config(
    caches: &Caches,
    namespace: &str,
    scheme: &str,
    version: i64,
) -> Result<ProvSchemeSpec, String> {
    let number = u32::try_from(version).map_err(|_| format!("bad version {version}"))?;
    let revision = lookup(&caches.revisions, namespace, &revision_name(scheme, number))
        .ok_or_else(|| format!("version {version} of scheme '{scheme}' is not cached yet"))?;
    let stored = scheme_versions::from_revision(&revision)
        .ok_or_else(|| format!("ControllerRevision {} is malformed", revision.name_any()))?;
    serde_json::from_value(stored.configuration).map_err(|e| e.to_string())
}

fn prepare_build(
    ctx: &VmContext,
    machine: &ProvVm,
    scheme: &ProvScheme,
    version: i64,
) -> Result<Build, String> {
    let namespace = machine.namespace().unwrap_or_default();
    let caches = &ctx.caches;
    let config = version_config(caches, &namespace, &scheme.name_any(), version)?;
    let unit = lookup(&caches.units, &namespace, &config.hosting_unit_ref)
        .ok_or_else(|| format!("hosting unit '{}' not found", config.hosting_unit_ref))?;
    let connection = lookup(&caches.connections, &namespace, &unit.spec.connection_ref)
        .ok_or_else(|| {
            format!(
                "hypervisor connection '{}' not found",
                unit.spec.connection_ref
            )
        })?;
    let image =
        lookup(&caches.images, &namespace, &config.image_version_spec_ref).ok_or_else(|| {
            format!(
                "image version spec '{}' not found",
                config.image_version_spec_ref
            )
        })?;
    let pool = lookup(&caches.pools, &namespace, &config.identity_pool_ref);
    let backend = ctx
        .base
        .backends
        .for_hosting_unit(&unit, &connection)
        .map_err(|e| e.to_string())?;
    let roots = super::backends::storage_roots(&unit, &connection).map_err(|e| e.to_string())?;
    let instances = image
        .status
        .as_ref()
        .map(|s| s.instances.clone())
        .unwrap_or_default();
    let existing = machine
        .status
        .as_ref()
        .and_then(|s| s.disks.first())
        .map(|d| d.storage.clone());
    let index = usize::try_from(machine.spec.machine_index).unwrap_or(0);
    let instance = existing
        .as_ref()
        .and_then(|s| instances.iter().find(|i| &i.name == s))
        .or_else(|| instances.get(index % instances.len().max(1)))
        .ok_or_else(|| {
            format!(
                "image version spec '{}' has no prepared copies",
                image.name_any()
            )
        })?;
    let root = roots
        .iter()
        .find(|(name, _)| *name == instance.name)
        .map(|(_, p)| p.clone())
        .ok_or_else(|| {
            format!(
                "storage '{}' is not a storage of hosting unit '{}'",
                instance.name,
                unit.name_any()
            )
        })?;
    let size = machine_size(
        &config,
        image.spec.prepared.as_ref(),
        machine.spec.overrides.as_ref(),
        &unit.name_any(),
        &unit.spec.service_offerings,
    )
    .map_err(|e| e.to_string())?;
    let request = MachineRequest {
        storage: instance.name.clone(),
        scheme: scheme.name_any(),
        machine_name: machine.spec.machine_name.clone(),
        index: u32::try_from(machine.spec.machine_index).unwrap_or(u32::MAX),
        domain: pool.and_then(|p| p.spec.domain.clone()).unwrap_or_default(),
        cpu: size.cpu,
        memory_mb: size.memory_mb,
        nics: nics(&config.network_mapping),
        write_back_cache: write_back_cache(&config),
        clean_on_boot: config.clean_on_boot,
        prepared_image: root.join(&instance.path),
        owner: super::backends::owner(machine, scheme.spec.deletion_policy),
    };
    Ok(Build {
        backend,
        request,
        version,
        image: config.image_version_spec_ref,
    })
}

/// The status disks of a machine, with paths relative to their storage.
fn disks(info: &MachineInfo, storage: &str, roots: &[(String, PathBuf)]) -> Vec<MachineDisk> {
    let root = roots
        .iter()
        .find(|(n, _)| n == storage)
        .map(|(_, p)| p.clone())
        .unwrap_or_default();
    let canonical = std::fs::canonicalize(&root).unwrap_or_else(|_| root.clone());
    let relative = |p: &Path| {
        p.strip_prefix(&root)
            .or_else(|_| p.strip_prefix(&canonical))
            .unwrap_or(p)
            .display()
            .to_string()
    };
    let mut out = vec![
        MachineDisk {
            name: "identity".into(),
            path: relative(&info.identity_disk),
            storage: storage.into(),
        },
        MachineDisk {
            name: "os".into(),
            path: relative(&info.disk),
            storage: storage.into(),
        },
    ];
    if let Some(cache) = &info.cache_disk {
        out.push(MachineDisk {
            name: "writeBackCache".into(),
            path: relative(cache),
            storage: storage.into(),
        });
    }
    out
}

fn job_key(machine: &ProvVm) -> String {
    format!(
        "provvm/{}/{}",
        machine.namespace().unwrap_or_default(),
        machine.name_any()
    )
}

fn machine_failure(error: &mcs_backend::BackendError) -> TaskState {
    let state = error.task_state();
    if TaskType::NewProvVm.is_failure_state(state) {
        state
    } else {
        TaskState::UnexpectedError
    }
}

async fn remove_finalizer(api: &Api<ProvVm>, machine: &ProvVm) -> Result<(), ControllerError> {
    let finalizers: Vec<String> = machine
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    let patch = json!({
        "metadata": { "finalizers": finalizers, "resourceVersion": machine.resource_version() }
    });
    match api
        .patch(
            &machine.name_any(),
            &super::strict::patch(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
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

/// Reports a machine its scheme did not issue: `Ready=False`/`Degraded=True` with `reason`
/// and a Warning Event when that changes; nothing is built and no disk is touched.
async fn report_provenance(
    machine: &ProvVm,
    ctx: &VmContext,
    api: &Api<ProvVm>,
    reason: &'static str,
    message: String,
) -> Result<Action, ControllerError> {
    let old = machine.status.clone().unwrap_or_default();
    let conditions = [
        DesiredCondition::false_(condition_type::READY, reason, message.clone()),
        DesiredCondition::true_(condition_type::DEGRADED, reason, message.clone()),
    ];
    let status = ProvVmStatus {
        observed_generation: machine.metadata.generation,
        conditions: merge(
            &old.conditions,
            &conditions,
            machine.metadata.generation,
            Timestamp::now(),
        ),
        ..old.clone()
    };
    let was = old
        .conditions
        .iter()
        .find(|c| c.type_ == condition_type::READY)
        .map(|c| (c.reason.clone(), c.message.clone()));
    if status != old {
        apply_status(api, machine, &field_manager(CONTROLLER), &status).await?;
    }
    if was.as_ref() != Some(&(reason.to_owned(), message.clone())) {
        events::publish(
            &ctx.base,
            machine,
            EventType::Warning,
            reason,
            "Provision",
            message,
        )
        .await;
    }
    Ok(Action::requeue(Duration::from_secs(30)))
}

/// Removes (or retains) the machine's disks, then releases the object.
async fn cleanup(
    machine: &ProvVm,
    ctx: &VmContext,
    api: &Api<ProvVm>,
) -> Result<Action, ControllerError> {
    let namespace = machine.namespace().unwrap_or_default();
    let key = job_key(machine);
    ctx.base.tasks.forget(&key).await;
    // Read fresh: the deletion policy may have changed together with the scale-down.
    let scheme = ctx
        .base
        .api::<ProvScheme>(&namespace)
        .get_opt(&machine.spec.prov_scheme_ref)
        .await?;
    let Some(scheme) = scheme else {
        tracing::warn!(machine = %machine.name_any(), "scheme is gone; the machine's disks are retained");
        remove_finalizer(api, machine).await?;
        return Ok(Action::await_change());
    };
    if let Some((reason, _)) = provenance_problem(machine, Some(&scheme)) {
        // Its machine name may be one the scheme issued to another machine: keep every disk.
        tracing::warn!(machine = %machine.name_any(), reason, "a machine the scheme did not issue is deleted; no disk is touched");
        remove_finalizer(api, machine).await?;
        return Ok(Action::await_change());
    }
    let policy = match scheme.spec.deletion_policy {
        DeletionPolicy::Delete => mcs_backend::DeletionPolicy::Delete,
        DeletionPolicy::Retain => mcs_backend::DeletionPolicy::Retain,
    };
    let unit = lookup(&ctx.caches.units, &namespace, &scheme.spec.hosting_unit_ref);
    let connection = unit
        .as_ref()
        .and_then(|u| lookup(&ctx.caches.connections, &namespace, &u.spec.connection_ref));
    if let (Some(unit), Some(connection)) = (unit, connection) {
        let backend = ctx.base.backends.for_hosting_unit(&unit, &connection)?;
        let recorded: Vec<String> = machine
            .status
            .as_ref()
            .and_then(|s| s.disks.first())
            .map(|d| vec![d.storage.clone()])
            .unwrap_or_else(|| unit.spec.storages.iter().map(|s| s.name.clone()).collect());
        for storage in recorded {
            let request = DeleteMachineRequest {
                machine: MachineRef {
                    storage,
                    scheme: scheme.name_any(),
                    machine_name: machine.spec.machine_name.clone(),
                },
                policy,
            };
            match tasks::run_once(backend.as_ref(), Operation::DeleteMachine(request)).await {
                Ok(_) | Err(mcs_backend::BackendError::MachineNotFound { .. }) => {}
                Err(error) => {
                    events::publish(
                        &ctx.base,
                        machine,
                        EventType::Warning,
                        error.reason(),
                        "DeleteMachine",
                        error.to_string(),
                    )
                    .await;
                    return Err(error.into());
                }
            }
        }
        tracing::info!(machine = %machine.name_any(), ?policy, "machine disks removed");
    } else {
        tracing::warn!(machine = %machine.name_any(), "hosting unit or connection is gone; disks are retained");
    }
    remove_finalizer(api, machine).await?;
    Ok(Action::await_change())
}

async fn reconcile(machine: Arc<ProvVm>, ctx: Arc<VmContext>) -> Result<Action, ControllerError> {
    let _timer = crate::metrics::global().reconcile(CONTROLLER);
    let namespace = machine
        .namespace()
        .ok_or(ControllerError::MissingMetadata {
            kind: "ProvVm",
            field: "namespace",
        })?;
    let api = ctx.base.api::<ProvVm>(&namespace);
    if machine.metadata.deletion_timestamp.is_some() {
        if machine.finalizers().iter().any(|f| f == FINALIZER) {
            return cleanup(&machine, &ctx, &api).await;
        }
        return Ok(Action::await_change());
    }
    let scheme = match ctx.scheme(&namespace, &machine.spec.prov_scheme_ref) {
        Some(scheme) => Some(scheme),
        // The cache may lag behind (a restart): ask the API server before saying it is gone.
        None => ctx
            .base
            .api::<ProvScheme>(&namespace)
            .get_opt(&machine.spec.prov_scheme_ref)
            .await?
            .map(Arc::new),
    };
    if let Some((reason, message)) = provenance_problem(&machine, scheme.as_deref()) {
        return report_provenance(&machine, &ctx, &api, reason, message).await;
    }
    let Some(scheme) = scheme else {
        return Ok(Action::requeue(Duration::from_secs(2)));
    };
    let Some(current) = scheme
        .status
        .as_ref()
        .and_then(|s| s.provisioning_scheme_version)
    else {
        return Ok(Action::requeue(Duration::from_secs(2)));
    };
    let now = Timestamp::now();
    let key = job_key(&machine);
    let old = machine.status.clone().unwrap_or_default();
    let mut status = ProvVmStatus {
        observed_generation: machine.metadata.generation,
        ..old.clone()
    };
    let annotations = TaskAnnotations::read(machine.annotations());
    let mut consumed: Vec<&'static str> = Vec::new();
    let mut requeue: Option<Duration> = None;
    let mut conditions: Vec<DesiredCondition> = Vec::new();
    let mut urgent = false;
    // A power change to make on the hypervisor (`Some(true)`: start).
    let mut power: Option<bool> = None;

    let running = status.task.as_ref().filter(|t| !t.is_terminal()).cloned();
    if let Some(mut task) = running {
        let snapshot = ctx.base.tasks.snapshot_of(&key, &task.task_id);
        match snapshot {
            _ if annotations.cancel => {
                ctx.base.tasks.cancel(&key).await;
                task.cancel("canceled by the mcs.imaging.dev/cancel annotation", now)
                    .map_err(|e| ControllerError::Task(e.to_string()))?;
                consumed.push(crate::api::ANNOTATION_CANCEL);
                urgent = true;
            }
            None => {
                // The operator restarted: start the job again (the backend is idempotent).
                match prepare_build(&ctx, &machine, &scheme, current) {
                    Ok(build) => spawn(&ctx, &key, &task, build).await,
                    Err(message) => return Err(ControllerError::Task(message)),
                }
                requeue = Some(ctx.base.tasks.follow_interval());
            }
            Some(snapshot) => {
                tasks::follow_snapshot(&mut task, &snapshot, |_, p| f64::from(p), now)
                    .map_err(|e| ControllerError::Task(e.to_string()))?;
                match snapshot.result {
                    None => requeue = Some(ctx.base.tasks.follow_interval()),
                    Some(Ok(Output::Machine(info))) => {
                        let target = ctx.targets.lock().ok().and_then(|t| t.get(&key).cloned());
                        let (version, image) = match target {
                            Some((id, v, i)) if id == task.task_id => (v, i),
                            _ => (current, scheme.spec.image_version_spec_ref.clone()),
                        };
                        if task.task_state != TaskState::CreatingMachines {
                            task.advance(TaskState::CreatingMachines, now)
                                .map_err(|e| ControllerError::Task(e.to_string()))?;
                        }
                        task.finish(now)
                            .map_err(|e| ControllerError::Task(e.to_string()))?;
                        let roots =
                            lookup(&ctx.caches.units, &namespace, &scheme.spec.hosting_unit_ref)
                                .and_then(|u| {
                                    let c = lookup(
                                        &ctx.caches.connections,
                                        &namespace,
                                        &u.spec.connection_ref,
                                    )?;
                                    super::backends::storage_roots(&u, &c).ok()
                                })
                                .unwrap_or_default();
                        let storage = roots
                            .iter()
                            .find(|(_, p)| {
                                info.dir.starts_with(p)
                                    || std::fs::canonicalize(p)
                                        .is_ok_and(|c| info.dir.starts_with(c))
                            })
                            .map(|(n, _)| n.clone())
                            .unwrap_or_default();
                        status.disks = disks(&info, &storage, &roots);
                        status.provisioning_scheme_version = Some(version);
                        status.image_version_spec = Some(image);
                        status.power_state = Some(machine.spec.power_state.into());
                        set_power(
                            &ctx,
                            &namespace,
                            &scheme,
                            machine_ref(&machine, &scheme, storage.clone()),
                            machine.spec.power_state == DesiredPowerState::Running,
                        )
                        .await?;
                        events::publish(
                            &ctx.base,
                            machine.as_ref(),
                            EventType::Normal,
                            if task.task_type == TaskType::NewProvVm {
                                "MachineCreated"
                            } else {
                                "MachineUpdated"
                            },
                            if task.task_type == TaskType::NewProvVm {
                                "CreateMachine"
                            } else {
                                "UpdateMachine"
                            },
                            format!(
                                "{} built from scheme version {version}",
                                machine.spec.machine_name
                            ),
                        )
                        .await;
                        ctx.base.tasks.forget(&key).await;
                        urgent = true;
                    }
                    Some(Ok(_)) => {
                        task.fail(
                            TaskState::UnexpectedError,
                            "the backend returned no machine",
                            now,
                        )
                        .map_err(|e| ControllerError::Task(e.to_string()))?;
                        ctx.base.tasks.forget(&key).await;
                        urgent = true;
                    }
                    Some(Err(error)) => {
                        let state = machine_failure(&error);
                        if state == TaskState::Canceled
                            || matches!(error, mcs_backend::BackendError::Canceled)
                        {
                            task.cancel(error.to_string(), now)
                                .map_err(|e| ControllerError::Task(e.to_string()))?;
                        } else {
                            task.fail(state, error.to_string(), now)
                                .map_err(|e| ControllerError::Task(e.to_string()))?;
                        }
                        events::publish(
                            &ctx.base,
                            machine.as_ref(),
                            EventType::Warning,
                            error.reason(),
                            "BuildMachine",
                            error.to_string(),
                        )
                        .await;
                        ctx.base.tasks.forget(&key).await;
                        urgent = true;
                    }
                }
            }
        }
        status.task = Some(task);
    } else if !is_built(&machine) {
        let failed = status
            .task
            .as_ref()
            .is_some_and(|t| t.task_state != TaskState::Finished);
        if status.task.is_none() || (failed && annotations.retry) {
            let task =
                TaskStatus::start(TaskType::NewProvVm, uuid::Uuid::new_v4().to_string(), now);
            match prepare_build(&ctx, &machine, &scheme, current) {
                Ok(build) => {
                    spawn(&ctx, &key, &task, build).await;
                    status.task = Some(task);
                    requeue = Some(ctx.base.tasks.follow_interval());
                    urgent = true;
                }
                Err(message) => {
                    tracing::info!(machine = %machine.name_any(), %message, "machine waits");
                    requeue = Some(Duration::from_secs(2));
                }
            }
            if annotations.retry {
                consumed.push(crate::api::ANNOTATION_RETRY);
            }
        }
    } else if machine.spec.power_state == DesiredPowerState::Running
        && status.power_state != Some(PowerState::On)
    {
        let pending = status.provisioning_scheme_version != Some(current);
        let open =
            update_window::is_open(scheme.spec.update_window.as_ref(), now).unwrap_or_else(|e| {
                tracing::warn!(scheme = %scheme.name_any(), %e, "update window ignored");
                false
            });
        match start_action(pending, open, scheme.spec.clean_on_boot) {
            StartAction::Update => {
                let task = TaskStatus::start(
                    TaskType::UpdateProvVm,
                    uuid::Uuid::new_v4().to_string(),
                    now,
                );
                match prepare_build(&ctx, &machine, &scheme, current) {
                    Ok(mut build) => {
                        build.request.storage = status
                            .disks
                            .first()
                            .map_or(build.request.storage.clone(), |d| d.storage.clone());
                        spawn(&ctx, &key, &task, build).await;
                        status.task = Some(task);
                        requeue = Some(ctx.base.tasks.follow_interval());
                        urgent = true;
                    }
                    Err(message) => {
                        conditions.push(DesiredCondition::true_(
                            condition_type::DEGRADED,
                            "UpdateBlocked",
                            message,
                        ));
                        requeue = Some(Duration::from_secs(5));
                    }
                }
            }
            StartAction::Reset => {
                let unit = lookup(&ctx.caches.units, &namespace, &scheme.spec.hosting_unit_ref);
                let connection = unit.as_ref().and_then(|u| {
                    lookup(&ctx.caches.connections, &namespace, &u.spec.connection_ref)
                });
                if let (Some(unit), Some(connection)) = (unit, connection) {
                    let backend = ctx.base.backends.for_hosting_unit(&unit, &connection)?;
                    let reference = machine_ref(&machine, &scheme, first_storage(&status));
                    tasks::run_once(backend.as_ref(), Operation::ResetMachine(reference)).await?;
                    events::publish(
                        &ctx.base,
                        machine.as_ref(),
                        EventType::Normal,
                        "MachineReset",
                        "StartMachine",
                        format!(
                            "{} started clean (clean-on-boot)",
                            machine.spec.machine_name
                        ),
                    )
                    .await;
                }
                power = Some(true);
            }
            StartAction::PowerOn => power = Some(true),
        }
    } else if machine.spec.power_state == DesiredPowerState::Stopped
        && status.power_state == Some(PowerState::On)
    {
        power = Some(false);
    }
    if let Some(running) = power {
        let reference = machine_ref(&machine, &scheme, first_storage(&status));
        set_power(&ctx, &namespace, &scheme, reference, running).await?;
        status.power_state = Some(if running {
            PowerState::On
        } else {
            PowerState::Off
        });
        urgent = true;
    }

    if !status.disks.is_empty() {
        let reference = machine_ref(&machine, &scheme, first_storage(&status));
        if let Some(seen) = vm_status(&ctx, &namespace, &scheme, reference).await {
            urgent |= seen != old.vm_status;
            status.vm_status = seen;
        }
    }
    if is_built(&machine) || status.provisioning_scheme_version.is_some() {
        status.update_status = Some(update_status(
            status.provisioning_scheme_version,
            current,
            status.task.as_ref(),
        ));
    }
    let task = status.task.as_ref();
    let ready = match task {
        Some(t) if t.task_state.is_failure() || t.task_state == TaskState::Canceled => {
            DesiredCondition::false_(
                condition_type::READY,
                t.task_state.as_str(),
                t.terminating_error
                    .as_ref()
                    .map(|e| e.message.clone())
                    .unwrap_or_default(),
            )
        }
        _ if status.provisioning_scheme_version.is_some() => DesiredCondition::true_(
            condition_type::READY,
            "Provisioned",
            format!(
                "built from scheme version {}",
                status.provisioning_scheme_version.unwrap_or_default()
            ),
        ),
        _ => DesiredCondition::false_(
            condition_type::READY,
            "Provisioning",
            "the machine is being built",
        ),
    };
    conditions.push(ready);
    conditions.push(match task {
        Some(t) if !t.is_terminal() => DesiredCondition::true_(
            condition_type::PROGRESSING,
            t.task_type.as_str(),
            t.current_operation.clone().unwrap_or_default(),
        ),
        _ => DesiredCondition::false_(condition_type::PROGRESSING, "Idle", ""),
    });
    if !conditions
        .iter()
        .any(|c| c.type_ == condition_type::DEGRADED)
    {
        conditions.push(DesiredCondition::false_(
            condition_type::DEGRADED,
            "AsExpected",
            "",
        ));
    }
    status.conditions = merge(
        &old.conditions,
        &conditions,
        machine.metadata.generation,
        now,
    );
    if significant(&old, &status) {
        match ctx.base.tasks.may_write(
            &key,
            urgent
                || old.task.as_ref().map(|t| t.task_state)
                    != status.task.as_ref().map(|t| t.task_state),
        ) {
            Ok(()) => {
                apply_status(&api, &machine, &field_manager(CONTROLLER), &status).await?;
            }
            Err(wait) => requeue = Some(requeue.map_or(wait, |r| r.min(wait))),
        }
    }
    tasks::remove_annotations(&api, &machine.name_any(), &consumed).await?;
    Ok(requeue.map_or_else(|| Action::requeue(ctx.base.config.resync), Action::requeue))
}

/// Whether `new` says more than `old` than the clock moving on: a task that only ticked
/// (`lastUpdateTime`, elapsed time, expected completion) is not worth a write.
fn significant(old: &ProvVmStatus, new: &ProvVmStatus) -> bool {
    let quiet = |status: &ProvVmStatus| {
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

/// Starts or stops the machine on its hypervisor (KubeVirt: the VirtualMachine's
/// `runStrategy`); without its hosting unit or connection there is nothing to tell.
/// The machine's reference on `storage`.
fn machine_ref(machine: &ProvVm, scheme: &ProvScheme, storage: String) -> MachineRef {
    MachineRef {
        storage,
        scheme: scheme.name_any(),
        machine_name: machine.spec.machine_name.clone(),
    }
}

/// The storage of the machine's first disk (empty when it has none yet).
fn first_storage(status: &ProvVmStatus) -> String {
    status
        .disks
        .first()
        .map(|d| d.storage.clone())
        .unwrap_or_default()
}

async fn set_power(
    ctx: &VmContext,
    namespace: &str,
    scheme: &ProvScheme,
    reference: MachineRef,
    running: bool,
) -> Result<(), ControllerError> {
    let unit = lookup(&ctx.caches.units, namespace, &scheme.spec.hosting_unit_ref);
    let connection = unit
        .as_ref()
        .and_then(|u| lookup(&ctx.caches.connections, namespace, &u.spec.connection_ref));
    if let (Some(unit), Some(connection)) = (unit, connection) {
        let backend = ctx.base.backends.for_hosting_unit(&unit, &connection)?;
        let request = PowerRequest {
            machine: reference,
            running,
        };
        tasks::run_once(backend.as_ref(), Operation::SetPower(request)).await?;
    }
    Ok(())
}

/// The hypervisor's status of the machine (KubeVirt: its VirtualMachine's printable status),
/// `None` when it cannot be read now (the previous one is kept).
async fn vm_status(
    ctx: &VmContext,
    namespace: &str,
    scheme: &ProvScheme,
    reference: MachineRef,
) -> Option<Option<String>> {
    let unit = lookup(&ctx.caches.units, namespace, &scheme.spec.hosting_unit_ref)?;
    let connection = lookup(
        &ctx.caches.connections,
        namespace,
        &unit.spec.connection_ref,
    )?;
    let backend = ctx
        .base
        .backends
        .for_hosting_unit(&unit, &connection)
        .ok()?;
    match backend.machine_status(reference).await {
        Ok(seen) => Some(seen),
        Err(error) => {
            tracing::debug!(%error, "machine status not read");
            None
        }
    }
}

async fn spawn(ctx: &VmContext, key: &str, task: &TaskStatus, build: Build) {
    if let Ok(mut targets) = ctx.targets.lock() {
        targets.insert(
            key.to_owned(),
            (task.task_id.clone(), build.version, build.image.clone()),
        );
    }
    let op = if task.task_type == TaskType::UpdateProvVm {
        Operation::UpdateMachine(build.request)
    } else {
        Operation::CreateMachine(build.request)
    };
    ctx.base
        .tasks
        .spawn(key, &task.task_id, build.backend, op)
        .await;
}

fn error_policy(machine: Arc<ProvVm>, error: &ControllerError, _ctx: Arc<VmContext>) -> Action {
    tracing::warn!(controller = CONTROLLER, machine = %machine.name_any(), reason = error.reason(), %error, "reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the ProvVM controller (and the caches it reads) until the stream ends.
pub async fn run(context: Arc<Context>) {
    let (schemes, drive_schemes) = cached(context.watched_api::<ProvScheme>(), watcher_config());
    let (revisions, drive_revisions) = cached(
        context.watched_api::<ControllerRevision>(),
        watcher_config().labels(LABEL_PROVSCHEME),
    );
    let (units, drive_units) = cached(context.watched_api::<HostingUnit>(), watcher_config());
    let (connections, drive_connections) = cached(
        context.watched_api::<HypervisorConnection>(),
        watcher_config(),
    );
    let (images, drive_images) =
        cached(context.watched_api::<ImageVersionSpec>(), watcher_config());
    let (pools, drive_pools) = cached(context.watched_api::<IdentityPool>(), watcher_config());
    let caches = Caches {
        schemes,
        revisions,
        units,
        connections,
        images,
        pools,
    };
    let drives = futures::future::join_all(vec![
        drive_schemes,
        drive_revisions,
        drive_units,
        drive_connections,
        drive_images,
        drive_pools,
    ]);
    let latest: LatestSchemes = Arc::default();
    let ctx = Arc::new(VmContext {
        base: context.clone(),
        caches: caches.clone(),
        targets: Mutex::new(HashMap::new()),
        latest: latest.clone(),
    });
    let controller = Controller::new(context.watched_api::<ProvVm>(), watcher_config())
        .trigger_backoff(super::trigger_backoff())
        .with_config(
            controller::Config::default()
                .concurrency(context.config.concurrency)
                .debounce(Duration::from_millis(100)),
        );
    let machines = controller.store();
    context.caches.track(CONTROLLER, machines.clone());
    crate::metrics::global().count_machines(machines.clone());
    let seen: Fingerprints = Mutex::new(HashMap::new());
    let run = async move {
        for ready in [
            caches.schemes.wait_until_ready().boxed(),
            caches.revisions.wait_until_ready().boxed(),
            caches.units.wait_until_ready().boxed(),
            caches.connections.wait_until_ready().boxed(),
            caches.images.wait_until_ready().boxed(),
            caches.pools.wait_until_ready().boxed(),
        ] {
            if ready.await.is_err() {
                tracing::error!(controller = CONTROLLER, "a cache never became ready");
                return;
            }
        }
        controller
            .watches(
                context.watched_api::<ProvScheme>(),
                watcher_config(),
                move |scheme: ProvScheme| {
                    // Only what machines act on: a new current version or a spec change
                    // (window, policy). Status-only updates (ready counts) trigger nothing.
                    let key = format!(
                        "{}/{}",
                        scheme.namespace().unwrap_or_default(),
                        scheme.name_any()
                    );
                    let fingerprint = (
                        scheme
                            .status
                            .as_ref()
                            .and_then(|s| s.provisioning_scheme_version),
                        scheme.metadata.generation,
                    );
                    if let Ok(mut latest) = latest.lock() {
                        if scheme.metadata.deletion_timestamp.is_some()
                            && scheme.finalizers().is_empty()
                        {
                            latest.remove(&key);
                        } else {
                            latest.insert(key.clone(), Arc::new(scheme.clone()));
                        }
                    }
                    let changed = seen.lock().map_or(true, |mut seen| {
                        seen.insert(key, fingerprint) != Some(fingerprint)
                    });
                    if !changed {
                        return Vec::new();
                    }
                    let namespace = scheme.namespace();
                    machines
                        .state()
                        .into_iter()
                        .filter(|m| {
                            m.namespace() == namespace
                                && m.spec.prov_scheme_ref == scheme.name_any()
                        })
                        .map(|m| ObjectRef::from_obj(&*m))
                        .collect::<Vec<_>>()
                },
            )
            .reconcile_on(
                mcs_kubevirt::watch::printable_status_changes(
                    context.backends.kubevirt_used(),
                    context.client.clone(),
                    context.config.namespace.clone(),
                    ProvVm::kind(&()).into_owned(),
                )
                .map(|(namespace, name)| ObjectRef::new(&name).within(&namespace)),
            )
            .run(reconcile, error_policy, ctx)
            .for_each(|result| async move {
                if let Err(error) = result {
                    super::log_run_error(CONTROLLER, &error);
                }
            })
            .await;
    };
    futures::future::join(drives, run).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

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
            MachineSize {
                cpu: 2,
                memory_mb: DEFAULT_MEMORY_MB
            }
        );
        let cpu = MachineOverrides {
            vm_cpu_count: Some(8),
            vm_memory_mb: None,
            service_offering: None,
        };
        let sized = machine_size(&scheme, None, Some(&cpu), "lab", &offerings()).expect("sized");
        assert_eq!(
            sized,
            MachineSize {
                cpu: 8,
                memory_mb: DEFAULT_MEMORY_MB
            }
        );
        let offering = MachineOverrides {
            vm_cpu_count: None,
            vm_memory_mb: None,
            service_offering: Some("XDHyp:\\HostingUnits\\lab\\small.serviceoffering".into()),
        };
        let sized =
            machine_size(&scheme, None, Some(&offering), "lab", &offerings()).expect("sized");
        assert_eq!(
            sized,
            MachineSize {
                cpu: 4,
                memory_mb: 8192
            }
        );
        let missing = MachineOverrides {
            service_offering: Some("XDHyp:\\HostingUnits\\lab\\huge.serviceoffering".into()),
            ..offering
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
}
