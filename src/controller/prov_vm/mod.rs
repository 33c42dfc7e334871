//! The ProvVM controller: builds one machine's disks from its scheme's current version
//! (`New-ProvVM`), rebuilds it on its next start inside the scheme's update window
//! (`Set-ProvVMUpdateTimeWindow`), resets clean-on-boot machines on start, and removes its
//! disks when the object is deleted, honouring the scheme's `deletionPolicy`.
//!
//! Existing machines never change silently: after a new scheme version they report
//! `PendingUpdate` until a start inside the window rebuilds them. Per-machine overrides
//! (`Set-ProvVM`: CPU, memory, service offering) win over the scheme's settings at the next
//! build. The backend work runs as jobs of the shared [`super::tasks::TaskRunner`].
//!
//! Each reconcile is one pipeline:
//!
//! 1. [`read`] gathers what the decision needs from the shared stores and the job table into
//!    [`read::Facts`];
//! 2. [`decide`] turns them into a [`decide::Plan`] (pure: the job to start or cancel, the
//!    power change, the desired status, the Events);
//! 3. [`apply`] carries out the plan's backend work;
//! 4. [`report`] writes the status (server-side apply, only when it changed), the Events and
//!    the consumed annotations.
//!
//! Writes are few: a build that ends within `progress_interval` gets exactly one status write
//! (when it ends) and no Event when it succeeds (the scheme publishes one per batch); only
//! longer builds report their intermediate states.

pub mod apply;
pub mod decide;
pub mod read;
pub mod report;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::{Context, ControllerError};
use crate::api::{ProvScheme, ProvVm};

pub use decide::{
    ResolvedSize, StartAction, machine_size, nics, provenance_problem, start_action, update_status,
    write_back_cache,
};

const CONTROLLER: &str = "provvm";
/// The prefix of the task runner's job keys of machines (`provvm/<namespace>/<name>`).
const JOB_PREFIX: &str = "provvm/";
/// Finalizer that keeps a machine object until its disks are removed (or retained).
pub const FINALIZER: &str = "mcs.imaging.dev/machine-disks";
/// CPUs of a machine when neither image, scheme nor overrides say.
pub const DEFAULT_CPU: u32 = 1;
/// Memory (MiB) of a machine when neither image, scheme nor overrides say.
pub const DEFAULT_MEMORY_MB: u64 = 1024;
/// The least number of machine reconciles running at once: they mostly wait on the API
/// server, so the process-wide `concurrency` setting is raised to this for machines.
pub const MIN_CONCURRENCY: u16 = 16;

/// Whether the machine's disks were built (it records the version it was built from).
pub fn is_built(machine: &ProvVm) -> bool {
    machine
        .status
        .as_ref()
        .is_some_and(|s| s.provisioning_scheme_version.is_some())
}

/// The machine controller's context: the shared context and what each job of this process
/// builds (the task it works for, until the stores show that task's final status).
pub struct VmContext {
    /// The shared controller context (client, stores, task runner).
    pub base: Arc<Context>,
    /// Per job key: the build of this process the stored status may not show yet.
    builds: Mutex<HashMap<String, read::Build>>,
}

impl VmContext {
    fn builds(&self) -> std::sync::MutexGuard<'_, HashMap<String, read::Build>> {
        self.builds.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The task runner's key of a machine's job.
fn job_key(namespace: &str, name: &str) -> String {
    format!("{JOB_PREFIX}{namespace}/{name}")
}

/// Reconciles one machine: read, decide, apply, report.
async fn reconcile(machine: Arc<ProvVm>, ctx: Arc<VmContext>) -> Result<Action, ControllerError> {
    let _timer = crate::metrics::global().reconcile(CONTROLLER);
    if machine.metadata.deletion_timestamp.is_some() {
        if machine.finalizers().iter().any(|f| f == FINALIZER) {
            return apply::remove_disks(&machine, &ctx).await;
        }
        return Ok(Action::await_change());
    }
    let facts = read::gather(&ctx, &machine).await?;
    let task_id = uuid::Uuid::new_v4().to_string();
    let plan = decide::plan(&machine, &facts, Timestamp::now(), &task_id)?;
    apply::carry_out(&ctx, &machine, &facts, &plan).await?;
    let requeue = report::report(&ctx, &machine, &facts, &plan).await?;
    apply::settle(&ctx, &facts, &plan).await;
    Ok(Action::requeue(requeue.unwrap_or(ctx.base.config.resync)))
}

/// What machines act on of a scheme: its current version and its generation.
type Fingerprint = (Option<i64>, Option<i64>);

/// The machines to reconcile after `scheme` changed: all of its machines when its current
/// version or its spec changed since `seen` last recorded it, none for a status-only change
/// (ready counts).
fn machines_of_changed_scheme(
    context: &Context,
    seen: &Mutex<HashMap<String, Fingerprint>>,
    scheme: &ProvScheme,
) -> Vec<ObjectRef<ProvVm>> {
    let namespace = scheme.namespace().unwrap_or_default();
    let name = scheme.name_any();
    let fingerprint = (
        scheme
            .status
            .as_ref()
            .and_then(|s| s.provisioning_scheme_version),
        scheme.metadata.generation,
    );
    let changed = seen
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(format!("{namespace}/{name}"), fingerprint)
        != Some(fingerprint);
    if !changed {
        return Vec::new();
    }
    context
        .stores
        .machines
        .in_namespace(&namespace)
        .into_iter()
        .filter(|m| m.spec.prov_scheme_ref == name)
        .map(|m| ObjectRef::from_obj(&*m))
        .collect()
}

/// Runs the ProvVM controller on the shared stores until its stream ends.
pub async fn run(context: Arc<Context>) {
    let machines = context.stores.machines.store().clone();
    context.caches.track(CONTROLLER, machines.clone());
    crate::metrics::global().count_machines(machines.clone());
    if !context.stores.ready().await {
        tracing::error!(controller = CONTROLLER, "a cache never became ready");
        return;
    }
    let ctx = Arc::new(VmContext {
        base: context.clone(),
        builds: Mutex::new(HashMap::new()),
    });
    let seen: Mutex<HashMap<String, Fingerprint>> = Mutex::new(HashMap::new());
    let trigger_context = context.clone();
    // A job that ends reconciles its machine at once (no waiting for the next poll).
    let ended = context.tasks.ended().filter_map(|key| async move {
        let (namespace, name) = key.strip_prefix(JOB_PREFIX)?.split_once('/')?;
        Some(ObjectRef::<ProvVm>::new(name).within(namespace))
    });
    Controller::for_shared_stream(context.stores.machines.subscribe(), machines)
        .trigger_backoff(super::trigger_backoff())
        .with_config(
            controller::Config::default()
                .concurrency(context.config.concurrency.max(MIN_CONCURRENCY))
                .debounce(Duration::from_millis(100)),
        )
        .watches_shared_stream(context.stores.schemes.subscribe(), move |scheme| {
            machines_of_changed_scheme(&trigger_context, &seen, &scheme)
        })
        .reconcile_on(ended)
        .reconcile_on(
            mcs_kubevirt::watch::printable_status_changes(
                context.backends.kubevirt_used(),
                context.client.clone(),
                context.config.namespace.clone(),
                ProvVm::kind(&()).into_owned(),
            )
            .map(|(namespace, name)| ObjectRef::new(&name).within(&namespace)),
        )
        .run(
            reconcile,
            super::error_policy(CONTROLLER, Duration::from_secs(2)),
            ctx,
        )
        .for_each(|result| async move {
            if let Err(error) = result {
                super::log_run_error(CONTROLLER, &error);
            }
        })
        .await;
}
