//! The reporting of the ImageVersionSpec controller: status by server-side apply under the
//! controller's field manager, Events after the status they describe, consumed annotations
//! removed.

use std::time::Duration;

use kube::runtime::events::Event;

use super::CONTROLLER;
use super::decide::{PreparedPlan, StatusPlan};
use super::read::{Observed, namespace_of};
use crate::api::{ImageVersionSpec, ImageVersionSpecStatus};
use crate::controller::events::publish_event;
use crate::controller::status::{apply_status, field_manager};
use crate::controller::tasks::{remove_annotations, report_blocked_deletion};
use crate::controller::{Context, ControllerError};

/// Writes the status of `spec`.
pub async fn write(
    context: &Context,
    spec: &ImageVersionSpec,
    status: &ImageVersionSpecStatus,
) -> Result<(), ControllerError> {
    let api = context.api::<ImageVersionSpec>(&namespace_of(spec)?);
    apply_status(&api, spec, &field_manager(CONTROLLER), status).await?;
    Ok(())
}

/// Publishes `events` about `spec`.
pub async fn publish_all(context: &Context, spec: &ImageVersionSpec, events: Vec<Event>) {
    for event in events {
        publish_event(context, spec, event).await;
    }
}

/// Writes a master spec's status when it changed, then its Events.
pub async fn master(
    context: &Context,
    spec: &ImageVersionSpec,
    plan: StatusPlan,
) -> Result<(), ControllerError> {
    if plan.write {
        write(context, spec, &plan.status).await?;
        publish_all(context, spec, plan.events).await;
    }
    Ok(())
}

/// Writes a prepared spec's status when it changed and the task runner's write limit allows
/// (else looks again when it does), publishes its Events, and removes the annotations the
/// reconcile handled. Returns when to look again.
pub async fn prepared(
    context: &Context,
    spec: &ImageVersionSpec,
    observed: &Observed,
    plan: PreparedPlan,
) -> Result<Duration, ControllerError> {
    let report = plan.report;
    let mut requeue = report.requeue;
    if report.write {
        match context.tasks.may_write(&observed.key, plan.urgent) {
            Ok(()) => {
                write(context, spec, &report.status).await?;
                publish_all(context, spec, report.events).await;
            }
            Err(wait) => requeue = wait,
        }
    }
    if !plan.consumed.is_empty() {
        let api = context.api::<ImageVersionSpec>(&observed.namespace);
        remove_annotations(&api, &observed.name, &plan.consumed).await?;
    }
    Ok(requeue)
}

/// Reports a deletion that waits for `users` (`Ready=False` reason `InUse`, a Warning Event)
/// and returns the error that retries it.
pub async fn blocked(
    context: &Context,
    spec: &ImageVersionSpec,
    name: &str,
    users: Vec<String>,
) -> ControllerError {
    let error = ControllerError::InUse {
        object: format!("image version spec '{name}'"),
        users,
    };
    let current = spec.status.clone().unwrap_or_default();
    let reported =
        report_blocked_deletion(context, spec, &current.conditions, &error, |conditions| {
            let status = ImageVersionSpecStatus {
                conditions,
                observed_generation: spec.metadata.generation,
                ..current.clone()
            };
            async move { write(context, spec, &status).await }
        })
        .await;
    match reported {
        Ok(()) => error,
        Err(failed) => failed,
    }
}
