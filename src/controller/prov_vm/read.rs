//! Read: everything a machine's reconcile decides from, gathered into [`Facts`] from the
//! shared stores, the task runner's job table and the hypervisor. Nothing here writes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::ControllerRevision;
use kube::ResourceExt;
use mcs_backend::{Backend, BackendError, MachineInfo, MachineRef, Output};
use mcs_domain::task::TaskStatus;

use super::super::backends::storage_roots;
use super::super::scheme_versions::{self, revision_name};
use super::super::tasks::{JobSnapshot, TaskAnnotations};
use super::{VmContext, job_key};
use crate::api::{
    HostingUnit, ImageVersionSpec, MachineDisk, ProvScheme, ProvSchemeSpec, ProvVm, ProvVmStatus,
};
use crate::controller::ControllerError;

/// A build this process started: the task it works for and, once written, the status that
/// reports it (kept until the stores show it, so a lagging store never restarts the build).
#[derive(Clone, Debug)]
pub struct Build {
    /// The task as started (the stored status may not have it yet).
    pub task: TaskStatus,
    /// The scheme version the build uses.
    pub version: i64,
    /// The image version spec the build uses.
    pub image: String,
    /// The last status written for this task, until the stores show it.
    pub written: Option<ProvVmStatus>,
}

/// The hypervisor side of the machine's hosting unit: its backend and storage roots.
#[derive(Clone)]
pub struct Hypervisor {
    /// The backend of the hosting unit.
    pub backend: Arc<dyn Backend>,
    /// Storage name and root directory, per storage of the hosting unit.
    pub roots: Vec<(String, PathBuf)>,
}

/// What a build of the scheme's current version needs, resolved from the stores.
#[derive(Clone)]
pub struct BuildInputs {
    /// The configuration of the version to build.
    pub config: ProvSchemeSpec,
    /// The version number.
    pub version: i64,
    /// The hosting unit of that configuration.
    pub unit: Arc<HostingUnit>,
    /// The image version spec of that configuration.
    pub image: Arc<ImageVersionSpec>,
    /// The machine's AD domain (from the identity pool; empty without one).
    pub domain: String,
    /// The hypervisor of the hosting unit.
    pub hypervisor: Hypervisor,
}

/// The job that works on the machine's task in flight.
#[derive(Clone, Debug)]
pub struct RunningTask {
    /// The task (from the status, or as this process started it when not written yet).
    pub task: TaskStatus,
    /// The job's latest snapshot; `None` when no job of this process works for it.
    pub snapshot: Option<JobSnapshot>,
    /// Scheme version and image the job builds, when this process started it.
    pub target: Option<(i64, String)>,
    /// Whether the status already shows this task.
    pub written: bool,
    /// How long the job's backend work has run (`None`: no job, or waiting for a slot).
    pub age: Option<Duration>,
}

/// Disks of a machine whose build just ended well.
#[derive(Clone, Debug, PartialEq)]
pub struct BuiltDisks {
    /// The storage the disks are on.
    pub storage: String,
    /// The status disks, with paths relative to the storage.
    pub disks: Vec<MachineDisk>,
}

/// Everything the decision is made from.
pub struct Facts {
    /// The machine's namespace.
    pub namespace: String,
    /// The task runner's key of the machine's job.
    pub key: String,
    /// The machine's scheme (`None`: not found, even by a fresh read).
    pub scheme: Option<Arc<ProvScheme>>,
    /// The machine's status: the stored one, or the one this process wrote last when the
    /// store does not show it yet.
    pub status: ProvVmStatus,
    /// The task annotations.
    pub annotations: TaskAnnotations,
    /// The task in flight, if any.
    pub running: Option<RunningTask>,
    /// What building the current version needs, or why it cannot be built now.
    pub build: Result<BuildInputs, String>,
    /// The backend of the scheme's hosting unit (`None`: unit or connection gone).
    pub hypervisor: Option<Result<Hypervisor, BackendError>>,
    /// The disks of a build that just ended well.
    pub built: Option<BuiltDisks>,
    /// The hypervisor's status of the machine (`None`: not read now, keep the old one).
    pub vm_status: Option<Option<String>>,
    /// The operator's progress interval: no status write for a job younger than this.
    pub progress_interval: Duration,
    /// How often a running job is looked at again.
    pub follow_interval: Duration,
}

/// Gathers the [`Facts`] of `machine`.
///
/// # Errors
///
/// The machine has no namespace, or the fresh read of a scheme missing from the store
/// failed.
pub async fn gather(ctx: &VmContext, machine: &ProvVm) -> Result<Facts, ControllerError> {
    let namespace = machine
        .namespace()
        .ok_or(ControllerError::MissingMetadata {
            kind: "ProvVm",
            field: "namespace",
        })?;
    let stores = &ctx.base.stores;
    let scheme_name = &machine.spec.prov_scheme_ref;
    let scheme = match stores.schemes.get(&namespace, scheme_name) {
        Some(scheme) => Some(scheme),
        // The store may lag behind (a restart): ask the API server before saying it is gone.
        None => ctx
            .base
            .api::<ProvScheme>(&namespace)
            .get_opt(scheme_name)
            .await?
            .map(Arc::new),
    };
    let key = job_key(&namespace, &machine.name_any());
    let stored = machine.status.clone().unwrap_or_default();
    let (status, running) = in_flight(ctx, &key, stored);
    let build = scheme.as_ref().map_or_else(
        || Err("no scheme".to_owned()),
        |scheme| build_inputs(ctx, &namespace, scheme),
    );
    let hypervisor = scheme
        .as_ref()
        .and_then(|s| hypervisor(ctx, &namespace, &s.spec.hosting_unit_ref));
    let built = running
        .as_ref()
        .and_then(|r| r.snapshot.as_ref())
        .and_then(|s| match &s.result {
            Some(Ok(Output::Machine(info))) => Some(info.clone()),
            _ => None,
        })
        .map(|info| {
            let roots = hypervisor
                .as_ref()
                .and_then(|h| h.as_ref().ok())
                .map(|h| h.roots.clone())
                .unwrap_or_default();
            built_disks(&info, &roots)
        });
    let storage = built.as_ref().map_or_else(
        || status.disks.first().map(|d| d.storage.clone()),
        |b| Some(b.storage.clone()),
    );
    let vm_status = match (&scheme, &hypervisor, storage) {
        (Some(scheme), Some(Ok(hypervisor)), Some(storage)) => {
            let reference = MachineRef {
                storage,
                scheme: scheme.name_any(),
                machine_name: machine.spec.machine_name.clone(),
            };
            match hypervisor.backend.machine_status(reference).await {
                Ok(seen) => Some(seen),
                Err(error) => {
                    tracing::debug!(%error, "machine status not read");
                    None
                }
            }
        }
        _ => None,
    };
    Ok(Facts {
        namespace,
        key,
        scheme,
        status,
        annotations: TaskAnnotations::read(machine.annotations()),
        running,
        build,
        hypervisor,
        built,
        vm_status,
        progress_interval: ctx.base.config.progress_interval,
        follow_interval: ctx.base.tasks.follow_interval(),
    })
}

/// The machine's status as this process knows it and its task in flight.
fn in_flight(
    ctx: &VmContext,
    key: &str,
    stored: ProvVmStatus,
) -> (ProvVmStatus, Option<RunningTask>) {
    let mut builds = ctx.builds();
    let build = builds.get(key).cloned();
    let status = match build.as_ref().and_then(|b| b.written.clone()) {
        Some(written) if shows(&stored, &written) => {
            if written.task.as_ref().is_some_and(TaskStatus::is_terminal) {
                builds.remove(key);
            }
            stored
        }
        Some(written) => written,
        None => stored,
    };
    drop(builds);
    let tasks = &ctx.base.tasks;
    let stored_id = status.task.as_ref().map(|t| t.task_id.clone());
    if let Some(task) = status.task.as_ref().filter(|t| !t.is_terminal()) {
        let mine = build.as_ref().filter(|b| b.task.task_id == task.task_id);
        let snapshot = tasks.snapshot_of(key, &task.task_id);
        let running = RunningTask {
            task: task.clone(),
            age: snapshot.as_ref().and_then(age),
            snapshot,
            target: mine.map(|b| (b.version, b.image.clone())),
            written: true,
        };
        return (status, Some(running));
    }
    let Some(build) = build.filter(|b| Some(&b.task.task_id) != stored_id.as_ref()) else {
        return (status, None);
    };
    let running = tasks
        .snapshot_of(key, &build.task.task_id)
        .map(|snapshot| RunningTask {
            task: build.task.clone(),
            age: age(&snapshot),
            snapshot: Some(snapshot),
            target: Some((build.version, build.image.clone())),
            written: false,
        });
    (status, running)
}

/// How long a job's backend work has run (`None` while it waits for a slot).
fn age(snapshot: &JobSnapshot) -> Option<Duration> {
    snapshot.started.map(|started| started.elapsed())
}

/// Whether `stored` shows `written` (the same task in the same state, the same disks).
fn shows(stored: &ProvVmStatus, written: &ProvVmStatus) -> bool {
    !super::decide::significant(stored, written)
}

/// The backend and storage roots of hosting unit `unit_name`; `None` when the unit or its
/// connection is not in the stores.
fn hypervisor(
    ctx: &VmContext,
    namespace: &str,
    unit_name: &str,
) -> Option<Result<Hypervisor, BackendError>> {
    let stores = &ctx.base.stores;
    let unit = stores.units.get(namespace, unit_name)?;
    let connection = stores
        .connections
        .get(namespace, &unit.spec.connection_ref)?;
    Some(
        ctx.base
            .backends
            .for_hosting_unit(&unit, &connection)
            .and_then(|backend| {
                Ok(Hypervisor {
                    backend,
                    roots: storage_roots(&unit, &connection)?,
                })
            }),
    )
}

/// The stored configuration of version `version` of `scheme`.
fn version_config(
    revision: Option<Arc<ControllerRevision>>,
    scheme: &str,
    version: i64,
) -> Result<ProvSchemeSpec, String> {
    let revision = revision
        .ok_or_else(|| format!("version {version} of scheme '{scheme}' is not cached yet"))?;
    let stored = scheme_versions::from_revision(&revision)
        .ok_or_else(|| format!("ControllerRevision {} is malformed", revision.name_any()))?;
    serde_json::from_value(stored.configuration).map_err(|e| e.to_string())
}

/// What building the scheme's current version needs, or why it cannot be built now.
fn build_inputs(
    ctx: &VmContext,
    namespace: &str,
    scheme: &ProvScheme,
) -> Result<BuildInputs, String> {
    let stores = &ctx.base.stores;
    let version = scheme
        .status
        .as_ref()
        .and_then(|s| s.provisioning_scheme_version)
        .ok_or_else(|| format!("scheme '{}' has no current version", scheme.name_any()))?;
    let number = u32::try_from(version).map_err(|_| format!("bad version {version}"))?;
    let revision = stores
        .revisions
        .get(namespace, &revision_name(&scheme.name_any(), number));
    let config = version_config(revision, &scheme.name_any(), version)?;
    let unit = stores
        .units
        .get(namespace, &config.hosting_unit_ref)
        .ok_or_else(|| format!("hosting unit '{}' not found", config.hosting_unit_ref))?;
    let hypervisor = hypervisor(ctx, namespace, &config.hosting_unit_ref)
        .ok_or_else(|| {
            format!(
                "hypervisor connection '{}' not found",
                unit.spec.connection_ref
            )
        })?
        .map_err(|e| e.to_string())?;
    let image = stores
        .specs
        .get(namespace, &config.image_version_spec_ref)
        .ok_or_else(|| {
            format!(
                "image version spec '{}' not found",
                config.image_version_spec_ref
            )
        })?;
    let domain = stores
        .pools
        .get(namespace, &config.identity_pool_ref)
        .and_then(|p| p.spec.domain.clone())
        .unwrap_or_default();
    Ok(BuildInputs {
        config,
        version,
        unit,
        image,
        domain,
        hypervisor,
    })
}

/// The storage and status disks of a machine the backend built, with paths relative to the
/// storage's root.
fn built_disks(info: &MachineInfo, roots: &[(String, PathBuf)]) -> BuiltDisks {
    let found = roots.iter().find(|(_, p)| {
        info.dir.starts_with(p) || std::fs::canonicalize(p).is_ok_and(|c| info.dir.starts_with(c))
    });
    let (storage, root) = found
        .map(|(n, p)| (n.clone(), p.clone()))
        .unwrap_or_default();
    let canonical = std::fs::canonicalize(&root).unwrap_or_else(|_| root.clone());
    let relative = |p: &Path| {
        p.strip_prefix(&root)
            .or_else(|_| p.strip_prefix(&canonical))
            .unwrap_or(p)
            .display()
            .to_string()
    };
    let disk = |name: &str, path: &Path| MachineDisk {
        name: name.into(),
        path: relative(path),
        storage: storage.clone(),
    };
    let mut disks = vec![
        disk("identity", &info.identity_disk),
        disk("os", &info.disk),
    ];
    if let Some(cache) = &info.cache_disk {
        disks.push(disk("writeBackCache", cache));
    }
    BuiltDisks { storage, disks }
}
