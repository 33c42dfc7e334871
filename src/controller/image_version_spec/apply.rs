//! The backend work of the ImageVersionSpec controller: measuring a master snapshot, starting
//! and forgetting preparation jobs on the shared [`TaskRunner`](crate::controller::tasks::TaskRunner),
//! removing prepared disks.

use std::sync::Arc;

use kube::ResourceExt;
use mcs_backend::{Backend, BackendError, DeletePreparedRequest, Operation, Output};

use super::decide::{MasterOutcome, MasterStep, PreparedPlan};
use super::read::{self, Observed, Resources};
use crate::api::{DeletionPolicy, ImageVersionSpec, ImageVersionSpecStatus};
use crate::controller::Context;
use crate::controller::tasks::{TaskAction, run_once};

/// Carries out a master step: measures the located snapshot with `backend`.
pub async fn measure(step: MasterStep, backend: Option<&Arc<dyn Backend>>) -> MasterOutcome {
    match (step, backend) {
        (MasterStep::Measure(located), Some(backend)) => {
            let op = Operation::Measure(mcs_backend::MeasureRequest {
                master: located.master_ref(),
            });
            MasterOutcome::measured(&located, run_once(backend.as_ref(), op).await)
        }
        (MasterStep::Measure(located), None) => MasterOutcome::of_failed(
            Some(located.relative),
            super::decide::SpecFailure::new(mcs_domain::task::TaskState::HostingUnitNotFound, ""),
        ),
        (
            MasterStep::Failed {
                master_image,
                failure,
            },
            _,
        ) => MasterOutcome::of_failed(master_image, failure),
    }
}

/// Carries out the job part of a prepared spec's plan: forgets the old job, removes the
/// partial disks of a canceled task, starts the new job.
pub async fn prepared(
    context: &Context,
    spec: &ImageVersionSpec,
    observed: &Observed,
    plan: &PreparedPlan,
    resources: Option<&Resources>,
) {
    let key = &observed.key;
    if plan.forget_job {
        context.tasks.forget(key).await;
    }
    if plan.remove_disks {
        let current = spec.status.clone().unwrap_or_default();
        let namespace = &observed.namespace;
        remove_prepared_disks(context, spec, namespace, &current, DeletionPolicy::Delete).await;
    }
    if let (Some(request), Some(task), Some(backend)) = (
        &plan.start,
        &plan.task,
        resources.and_then(Resources::backend),
    ) {
        let op = Operation::Prepare(request.clone());
        context
            .tasks
            .spawn(key, &task.task_id, backend.clone(), op)
            .await;
        if plan.action == TaskAction::Resume {
            tracing::info!(key, task_id = task.task_id, state = %task.task_state, "task resumed after restart");
        }
    }
}

/// Removes (or retains) the prepared image of `spec` on the storages of its hosting unit.
/// Returns what happened, as an event note; `None` when nothing could be done.
pub async fn remove_prepared_disks(
    context: &Context,
    spec: &ImageVersionSpec,
    namespace: &str,
    status: &ImageVersionSpecStatus,
    policy: DeletionPolicy,
) -> Option<Result<String, BackendError>> {
    let uid = spec.uid()?;
    let unit_name = status.hosting_unit_name.as_deref()?;
    let unit = read::unit(context, namespace, unit_name).await.ok()??;
    let backend = read::backend_for(context, namespace, &unit)
        .await
        .ok()?
        .ok()?;
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
