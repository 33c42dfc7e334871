//! `task cancel` and `task retry` (the `Stop-ProvTask` counterpart, plus retry): set the
//! annotations the controllers honour on the objects whose tasks should stop or start again.
//! Which objects that is, is decided here from a snapshot (pure); the CLI then patches them.

use std::collections::BTreeSet;

use kube::ResourceExt;

use super::tasks::{Awaited, Snapshot, Target, TaskKind, TaskRow, rows, rows_of};
use crate::api::{ANNOTATION_CANCEL, ANNOTATION_RETRY, TaskState};

/// The two requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Stop the running task.
    Cancel,
    /// Start a failed or canceled task again.
    Retry,
}

impl Request {
    /// The annotation that carries the request.
    pub fn annotation(self) -> &'static str {
        match self {
            Self::Cancel => ANNOTATION_CANCEL,
            Self::Retry => ANNOTATION_RETRY,
        }
    }
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cancel => "cancel",
            Self::Retry => "retry",
        })
    }
}

/// Why a request cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The object does not exist.
    #[error("{target} was not found in namespace '{namespace}'")]
    NotFound {
        /// The object.
        target: Target,
        /// The namespace.
        namespace: String,
    },
    /// Nothing is running that could be canceled.
    #[error("{target} has no running task to cancel{detail}")]
    NothingToCancel {
        /// The object.
        target: Target,
        /// Its task's state, when it has one.
        detail: String,
    },
    /// Nothing failed or was canceled that could be retried.
    #[error("{target} has no failed or canceled task to retry{detail}")]
    NothingToRetry {
        /// The object.
        target: Target,
        /// Its task's state, when it has one.
        detail: String,
    },
}

/// The objects to annotate and the task ids a retry replaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Objects to annotate.
    pub annotate: Vec<Target>,
    /// What the follow-up wait must ignore.
    pub awaited: Awaited,
}

/// Whether `row`'s task can take `request`.
fn applies(request: Request, row: &TaskRow) -> bool {
    match request {
        Request::Cancel => row.task.active,
        Request::Retry => {
            row.task.task_state.is_failure() || row.task.task_state == TaskState::Canceled
        }
    }
}

/// Decides which objects `request` on `target` annotates. For an image version spec or a
/// machine that is the object itself. For a scheme it is the scheme when its creation task
/// can take the request, else each of its machines whose task can (canceling a scale-up
/// cancels the machine builds still running; retrying it retries the failed ones).
pub fn plan(
    request: Request,
    target: &Target,
    snapshot: &Snapshot,
    namespace: &str,
) -> Result<Plan, ControlError> {
    let exists = match target.kind {
        TaskKind::ImageVersionSpec => snapshot.specs.iter().any(|o| o.name_any() == target.name),
        TaskKind::ProvScheme => snapshot.schemes.iter().any(|o| o.name_any() == target.name),
        TaskKind::ProvVm => snapshot
            .machines
            .iter()
            .any(|o| o.name_any() == target.name),
    };
    if !exists {
        return Err(ControlError::NotFound {
            target: target.clone(),
            namespace: namespace.to_owned(),
        });
    }
    let all = rows(snapshot);
    let mine = rows_of(target, &all);
    let own = mine.iter().find(|r| r.target() == *target);
    let chosen: Vec<&TaskRow> = match own {
        Some(row) if applies(request, row) => vec![row],
        _ if target.kind == TaskKind::ProvScheme => mine
            .iter()
            .filter(|r| r.kind == TaskKind::ProvVm && applies(request, r))
            .collect(),
        _ => Vec::new(),
    };
    if chosen.is_empty() {
        let detail = own.map_or_else(
            || " (it has no task yet)".to_owned(),
            |r| format!(" (its {} task is {})", r.task.task_type, r.task.task_state),
        );
        return Err(match request {
            Request::Cancel => ControlError::NothingToCancel {
                target: target.clone(),
                detail,
            },
            Request::Retry => ControlError::NothingToRetry {
                target: target.clone(),
                detail,
            },
        });
    }
    let superseded: BTreeSet<String> = match request {
        Request::Retry => chosen.iter().map(|r| r.task.task_id.clone()).collect(),
        Request::Cancel => BTreeSet::new(),
    };
    Ok(Plan {
        annotate: chosen.iter().map(|r| r.target()).collect(),
        awaited: Awaited { superseded },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tasks::tests::{PREP, SCHEME, scheme, spec, target, task, vm};

    #[test]
    fn cancel_and_retry_go_to_the_object_whose_task_can_take_them() {
        let snapshot = Snapshot {
            specs: vec![spec(
                "prep",
                Some(task("p", PREP, TaskState::ConsolidatingMasterImage, 30)),
            )],
            ..Snapshot::default()
        };
        let plan = plan(Request::Cancel, &target("imgspec/prep"), &snapshot, "lab").expect("plan");
        assert_eq!(plan.annotate, [target("imageversionspec/prep")]);
        assert!(plan.awaited.superseded.is_empty());
        assert_eq!(
            super::plan(Request::Retry, &target("imgspec/prep"), &snapshot, "lab")
                .expect_err("a running task is not retried")
                .to_string(),
            "imageversionspec/prep has no failed or canceled task to retry (its NewImageVersionSpec task is ConsolidatingMasterImage)"
        );
        assert_eq!(
            super::plan(Request::Cancel, &target("pvm/nope"), &snapshot, "lab")
                .expect_err("missing"),
            ControlError::NotFound {
                target: target("provvm/nope"),
                namespace: "lab".into()
            }
        );
    }

    #[test]
    fn a_scheme_passes_requests_to_its_machines_once_its_own_task_has_finished() {
        let snapshot = Snapshot {
            schemes: vec![scheme(
                "desktops",
                3,
                Some(task("s", SCHEME, TaskState::Finished, 100)),
            )],
            machines: vec![
                vm("vdi-001", "desktops", "m1", TaskState::Finished),
                vm("vdi-002", "desktops", "m2", TaskState::CreatingMachines),
                vm(
                    "vdi-003",
                    "desktops",
                    "m3",
                    TaskState::DiskConsolidationFailed,
                ),
                vm("other-001", "other", "m9", TaskState::CreatingMachines),
            ],
            ..Snapshot::default()
        };
        let cancel =
            plan(Request::Cancel, &target("ps/desktops"), &snapshot, "lab").expect("cancel");
        assert_eq!(cancel.annotate, [target("provvm/vdi-002")]);
        let retry = plan(Request::Retry, &target("ps/desktops"), &snapshot, "lab").expect("retry");
        assert_eq!(retry.annotate, [target("provvm/vdi-003")]);
        assert_eq!(retry.awaited.superseded, ["m3".to_owned()].into());
        let waiting = Snapshot {
            schemes: vec![scheme(
                "desktops",
                3,
                Some(task("s", SCHEME, TaskState::LocatingResources, 10)),
            )],
            ..Snapshot::default()
        };
        let cancel =
            plan(Request::Cancel, &target("ps/desktops"), &waiting, "lab").expect("cancel");
        assert_eq!(cancel.annotate, [target("provscheme/desktops")]);
    }
}
