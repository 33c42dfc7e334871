//! Apply: the backend work a [`Plan`] asks for (start or cancel the build job, reset the
//! overlay, power the machine on or off), and the removal of a deleted machine's disks.

use std::sync::Arc;

use kube::ResourceExt;
use kube::api::{Api, Patch};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use mcs_backend::{DeleteMachineRequest, MachineRef, Operation, PowerRequest};
use mcs_domain::task::TaskType;
use serde_json::json;

use super::super::events;
use super::super::tasks::run_once;
use super::decide::{JobStep, Plan, provenance_problem};
use super::read::{Build, Facts};
use super::{FINALIZER, VmContext, job_key};
use crate::api::{DeletionPolicy, ProvScheme, ProvVm};
use crate::controller::ControllerError;

/// Carries out the plan's backend work, in order: the job, the reset, the power change.
///
/// # Errors
///
/// The hypervisor of the machine could not be reached, or a reset or power change failed
/// (nothing is written then; the reconcile is retried).
pub async fn carry_out(
    ctx: &VmContext,
    machine: &ProvVm,
    facts: &Facts,
    plan: &Plan,
) -> Result<(), ControllerError> {
    match &plan.job {
        JobStep::Keep => {}
        JobStep::Cancel => {
            ctx.base.tasks.cancel(&facts.key).await;
        }
        JobStep::Start(start) => {
            let backend = match &facts.build {
                Ok(inputs) => inputs.hypervisor.backend.clone(),
                Err(message) => return Err(ControllerError::Task(message.clone())),
            };
            ctx.builds().insert(
                facts.key.clone(),
                Build {
                    task: start.task.clone(),
                    version: start.version,
                    image: start.image.clone(),
                    written: None,
                },
            );
            let op = if start.task.task_type == TaskType::UpdateProvVm {
                Operation::UpdateMachine(start.request.clone())
            } else {
                Operation::CreateMachine(start.request.clone())
            };
            ctx.base
                .tasks
                .spawn(&facts.key, &start.task.task_id, backend, op)
                .await;
        }
    }
    if plan.reset.is_none() && plan.power.is_none() {
        return Ok(());
    }
    let Some(hypervisor) = &facts.hypervisor else {
        return Ok(());
    };
    let backend = hypervisor.as_ref().map_err(|e| e.clone())?.backend.clone();
    if let Some(reference) = &plan.reset {
        run_once(backend.as_ref(), Operation::ResetMachine(reference.clone())).await?;
    }
    if let Some((reference, running)) = &plan.power {
        let request = PowerRequest {
            machine: reference.clone(),
            running: *running,
        };
        run_once(backend.as_ref(), Operation::SetPower(request)).await?;
    }
    tracing::debug!(machine = %machine.name_any(), "backend work done");
    Ok(())
}

/// After the report: forgets a job that has ended (its status is written).
pub async fn settle(ctx: &VmContext, facts: &Facts, plan: &Plan) {
    if plan.forget_job {
        ctx.base.tasks.forget(&facts.key).await;
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
            &super::super::strict::patch(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes (or retains, by the scheme's deletion policy) a deleted machine's disks, then
/// releases the object. The scheme is read fresh from the API: its deletion policy may have
/// changed together with the scale-down. A machine its scheme did not issue, or whose scheme
/// is gone, keeps every disk.
///
/// # Errors
///
/// A read or write of the API failed, or the backend could not remove a disk (a Warning Event
/// says which).
pub async fn remove_disks(
    machine: &Arc<ProvVm>,
    ctx: &VmContext,
) -> Result<Action, ControllerError> {
    let namespace = machine.namespace().unwrap_or_default();
    let api = ctx.base.api::<ProvVm>(&namespace);
    let key = job_key(&namespace, &machine.name_any());
    ctx.base.tasks.forget(&key).await;
    ctx.builds().remove(&key);
    let scheme = ctx
        .base
        .api::<ProvScheme>(&namespace)
        .get_opt(&machine.spec.prov_scheme_ref)
        .await?;
    let Some(scheme) = scheme else {
        tracing::warn!(machine = %machine.name_any(), "scheme is gone; the machine's disks are retained");
        remove_finalizer(&api, machine).await?;
        return Ok(Action::await_change());
    };
    if let Some((reason, _)) = provenance_problem(machine, Some(&scheme)) {
        // Its machine name may be one the scheme issued to another machine: keep every disk.
        tracing::warn!(machine = %machine.name_any(), reason, "a machine the scheme did not issue is deleted; no disk is touched");
        remove_finalizer(&api, machine).await?;
        return Ok(Action::await_change());
    }
    let policy = match scheme.spec.deletion_policy {
        DeletionPolicy::Delete => mcs_backend::DeletionPolicy::Delete,
        DeletionPolicy::Retain => mcs_backend::DeletionPolicy::Retain,
    };
    let stores = &ctx.base.stores;
    let unit = stores.units.get(&namespace, &scheme.spec.hosting_unit_ref);
    let connection = unit
        .as_ref()
        .and_then(|u| stores.connections.get(&namespace, &u.spec.connection_ref));
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
            match run_once(backend.as_ref(), Operation::DeleteMachine(request)).await {
                Ok(_) | Err(mcs_backend::BackendError::MachineNotFound { .. }) => {}
                Err(error) => {
                    events::publish(
                        &ctx.base,
                        machine.as_ref(),
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
    remove_finalizer(&api, machine).await?;
    Ok(Action::await_change())
}
