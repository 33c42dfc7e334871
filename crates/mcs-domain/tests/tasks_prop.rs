//! Property tests for the task state machine.

use jiff::{SignedDuration, Timestamp};
use mcs_domain::task::{TaskState, TaskStatus, TaskType, WorkflowStatus};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Advance(TaskState),
    Progress(f64, Option<String>),
    Finish,
    Fail(TaskState),
    Cancel,
    Resume,
}

fn task_type() -> impl Strategy<Value = TaskType> {
    prop::sample::select(vec![
        TaskType::NewImageVersionSpec,
        TaskType::NewProvScheme,
        TaskType::NewProvVm,
        TaskType::UpdateProvVm,
    ])
}

fn state() -> impl Strategy<Value = TaskState> {
    prop::sample::select(TaskState::ALL.to_vec())
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => state().prop_map(Op::Advance),
        6 => (
            prop_oneof![any::<f64>(), -10.0..110.0f64],
            prop::option::of("[A-Za-z]{1,12}")
        )
            .prop_map(|(p, o)| Op::Progress(p, o)),
        1 => Just(Op::Finish),
        1 => state().prop_map(Op::Fail),
        1 => Just(Op::Cancel),
        1 => Just(Op::Resume),
    ]
}

/// Applies `op` at `now`; returns whether it was accepted.
fn apply(task: &mut TaskStatus, op: &Op, now: Timestamp) -> bool {
    match op {
        Op::Advance(s) => task.advance(*s, now).is_ok(),
        Op::Progress(p, o) => task.report_progress(*p, o.clone(), now).is_ok(),
        Op::Finish => task.finish(now).is_ok(),
        Op::Fail(s) => task.fail(*s, "failed", now).is_ok(),
        Op::Cancel => task.cancel("canceled", now).is_ok(),
        Op::Resume => task.resume(now).is_ok(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1024,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_operation_sequences_keep_the_invariants(
        ty in task_type(),
        start in -1_000_000_000i64..4_000_000_000,
        ops in prop::collection::vec((op(), -5_000i64..600_000), 0..40),
    ) {
        let start = Timestamp::from_second(start).unwrap_or(Timestamp::UNIX_EPOCH);
        let mut task = TaskStatus::start(ty, "task".into(), start);
        let mut now = start;
        for (op, step_ms) in ops {
            now = now.checked_add(SignedDuration::from_millis(step_ms)).unwrap_or(now);
            let before = task.clone();
            let accepted = apply(&mut task, &op, now);

            if before.task_state.is_terminal() {
                prop_assert!(!accepted);
                prop_assert_eq!(&task, &before, "a terminal task must not change");
            }
            if !accepted {
                prop_assert_eq!(&task, &before, "a refused operation must not change the task");
            }
            prop_assert!(task.task_progress >= before.task_progress, "progress went down");
            prop_assert!((0..=100).contains(&task.task_progress));
            prop_assert!(task.active_elapsed_time >= before.active_elapsed_time);
            prop_assert!(task.last_update_time >= before.last_update_time);
            // Running states must be this type's steps, and move forward only.
            if task.task_state.is_running() {
                let at = ty.step_index(task.task_state);
                prop_assert!(at.is_some());
                prop_assert!(at >= ty.step_index(before.task_state));
                prop_assert!(task.task_progress < 100);
                prop_assert!(task.active);
                prop_assert_eq!(task.workflow_status, WorkflowStatus::Running);
                prop_assert!(task.date_finished.is_none());
            } else {
                prop_assert!(!task.active);
                prop_assert!(task.date_finished.is_some());
                prop_assert!(task.task_expected_completion.is_none());
            }
            prop_assert_eq!(task.task_progress == 100, task.task_state == TaskState::Finished);
            match task.task_state {
                TaskState::Finished => {
                    prop_assert_eq!(task.workflow_status, WorkflowStatus::Completed);
                    prop_assert!(task.terminating_error.is_none());
                    if before.task_state != TaskState::Finished {
                        prop_assert_eq!(Some(&before.task_state), ty.steps().last());
                    }
                }
                s if s.is_terminal() => {
                    prop_assert_eq!(task.workflow_status, WorkflowStatus::Terminated);
                    prop_assert!(s == TaskState::Canceled || ty.is_failure_state(s));
                    prop_assert_eq!(
                        task.terminating_error.as_ref().map(|e| e.reason.as_str()),
                        Some(s.as_str())
                    );
                }
                _ => prop_assert!(task.terminating_error.is_none()),
            }
            if task.task_expected_completion.is_some() {
                prop_assert!(task.task_progress > 0);
            }
            // The wire format round-trips.
            let json = serde_json::to_string(&task);
            prop_assert!(json.is_ok());
            let back: Result<TaskStatus, _> = serde_json::from_str(&json.unwrap_or_default());
            prop_assert_eq!(back.ok(), Some(task.clone()));
        }
    }

    #[test]
    fn walking_all_steps_reaches_exactly_100(
        ty in task_type(),
        reports in prop::collection::vec(0.0..=100.0f64, 1..6),
    ) {
        let t0 = Timestamp::UNIX_EPOCH;
        let mut task = TaskStatus::start(ty, "task".into(), t0);
        let mut secs = 0;
        for step in ty.steps() {
            secs += 1;
            prop_assert!(task.advance(*step, t0 + SignedDuration::from_secs(secs)).is_ok());
            for r in &reports {
                secs += 1;
                prop_assert!(task.report_progress(*r, None, t0 + SignedDuration::from_secs(secs)).is_ok());
                prop_assert!(task.task_progress < 100);
            }
        }
        prop_assert!(task.finish(t0 + SignedDuration::from_secs(secs + 1)).is_ok());
        prop_assert_eq!(task.task_progress, 100);
        prop_assert_eq!(task.active_elapsed_time, secs + 1);
    }
}
