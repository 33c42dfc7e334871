//! Report: the machine's conditions, its status written by server-side apply (only when the
//! plan says it changed, progress at most once per progress interval), its Events and the
//! annotations it consumed.

use std::time::Duration;

use kube::ResourceExt;

use super::super::conditions::DesiredCondition;
use super::super::events::publish;
use super::super::status::{apply_status, field_manager};
use super::super::tasks;
use super::decide::{Plan, StatusWrite};
use super::read::Facts;
use super::{CONTROLLER, VmContext};
use crate::api::{ProvVm, ProvVmStatus, condition_type};
use crate::controller::ControllerError;
use mcs_domain::task::TaskState;

/// The conditions `status` implies: `Ready` (provisioned, being built, or the task's failure),
/// `Progressing` (a task runs) and `Degraded` (`AsExpected` unless `extra` has one), after
/// the `extra` ones.
pub fn conditions(status: &ProvVmStatus, extra: Vec<DesiredCondition>) -> Vec<DesiredCondition> {
    let mut out = extra;
    let task = status.task.as_ref();
    out.push(match task {
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
    });
    out.push(match task {
        Some(t) if !t.is_terminal() => DesiredCondition::true_(
            condition_type::PROGRESSING,
            t.task_type.as_str(),
            t.current_operation.clone().unwrap_or_default(),
        ),
        _ => DesiredCondition::false_(condition_type::PROGRESSING, "Idle", ""),
    });
    if !out.iter().any(|c| c.type_ == condition_type::DEGRADED) {
        out.push(DesiredCondition::false_(
            condition_type::DEGRADED,
            "AsExpected",
            "",
        ));
    }
    out
}

/// Writes what `plan` says: the status (when changed and not held back; progress is rate
/// limited per machine), then its Events and the removal of consumed annotations. Returns
/// when to look again (`None`: the resync interval).
///
/// # Errors
///
/// The status write or the annotation removal failed.
pub async fn report(
    ctx: &VmContext,
    machine: &ProvVm,
    facts: &Facts,
    plan: &Plan,
) -> Result<Option<Duration>, ControllerError> {
    let mut requeue = plan.requeue;
    let api = ctx.base.api::<ProvVm>(&facts.namespace);
    if let StatusWrite::Now { urgent } = plan.write {
        match ctx.base.tasks.may_write(&facts.key, urgent) {
            Ok(()) => {
                apply_status(&api, machine, &field_manager(CONTROLLER), &plan.status).await?;
                remember_written(ctx, facts, plan);
            }
            Err(wait) => requeue = Some(requeue.map_or(wait, |r| r.min(wait))),
        }
    }
    for event in &plan.events {
        publish(
            &ctx.base,
            machine,
            event.type_,
            &event.reason,
            event.action,
            event.note.clone(),
        )
        .await;
    }
    tasks::remove_annotations(&api, &machine.name_any(), &plan.consumed).await?;
    Ok(requeue)
}

/// Keeps the status just written beside the build it reports, so a reconcile that runs before
/// the store shows it does not act on the older one.
fn remember_written(ctx: &VmContext, facts: &Facts, plan: &Plan) {
    let Some(task) = plan.status.task.as_ref() else {
        return;
    };
    if let Some(build) = ctx
        .builds()
        .get_mut(&facts.key)
        .filter(|b| b.task.task_id == task.task_id)
    {
        build.written = Some(plan.status.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;
    use mcs_domain::task::{TaskStatus, TaskType};

    fn reasons(conditions: &[DesiredCondition]) -> Vec<(&str, &str)> {
        conditions
            .iter()
            .map(|c| (c.type_, c.reason.as_str()))
            .collect()
    }

    #[test]
    fn conditions_follow_the_task_and_the_build() {
        let t = Timestamp::from_second(1_800_000_000).expect("valid");
        let mut status = ProvVmStatus::default();
        assert_eq!(
            reasons(&conditions(&status, Vec::new())),
            [
                ("Ready", "Provisioning"),
                ("Progressing", "Idle"),
                ("Degraded", "AsExpected")
            ]
        );
        status.task = Some(TaskStatus::start(TaskType::NewProvVm, "t".into(), t));
        assert_eq!(
            reasons(&conditions(&status, Vec::new()))[1],
            ("Progressing", "NewProvVm")
        );
        let mut failed = status.task.clone().expect("task");
        failed
            .fail(TaskState::StorageNotFound, "gone", t)
            .expect("fails");
        status.task = Some(failed);
        assert_eq!(
            reasons(&conditions(&status, Vec::new()))[0],
            ("Ready", "StorageNotFound")
        );
        status.task = None;
        status.provisioning_scheme_version = Some(3);
        let blocked = DesiredCondition::true_(condition_type::DEGRADED, "UpdateBlocked", "no");
        assert_eq!(
            reasons(&conditions(&status, vec![blocked])),
            [
                ("Degraded", "UpdateBlocked"),
                ("Ready", "Provisioned"),
                ("Progressing", "Idle")
            ]
        );
    }
}
