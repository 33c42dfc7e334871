//! The shared task runner: long backend work (preparing an image, creating machines) running in
//! the background while the controllers report it in `status.task`.
//!
//! The pieces, each usable on its own by any controller:
//!
//! - [`TaskRunner`] runs backend operations as *jobs*, keyed by object, under one concurrency
//!   limit (a semaphore shared by every controller), and keeps each job's latest
//!   [`JobSnapshot`] (queued, phase, percent, message, result) for the next reconcile to read.
//!   Reconciles stay short: they start, follow, cancel and forget jobs, and are the only status
//!   writers.
//! - [`TaskRunner::may_write`] rate-limits progress writes: at most one per
//!   [`OperatorConfig::progress_interval`](super::OperatorConfig) per object, state changes
//!   always pass.
//! - [`decide_task_action`] is the pure lifecycle decision (start, resume after a restart,
//!   follow, cancel, retry) from the stored task, the job table and the annotations
//!   `mcs.imaging.dev/cancel` and `mcs.imaging.dev/retry`.
//! - [`follow_snapshot`] moves a [`TaskStatus`] along with a job's snapshot, never backwards.
//! - [`TaskRunner::ended`] tells a controller which jobs just ended, so it looks at once
//!   instead of at its next poll: a job that ends quickly costs one status write.
//!
//! Restart safety comes from the backends: every operation is idempotent, so a task found in a
//! running state with no job in this process ([`TaskAction::Resume`]) is simply started again;
//! the backend finishes it at once if it was complete, or removes the partial files and redoes
//! it. A task is marked `Finished` only from a successful result.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::Stream;
use futures::channel::mpsc::{UnboundedSender, unbounded};
use jiff::Timestamp;
use kube::Resource;
use kube::runtime::events::EventType;
use mcs_backend::{Backend, BackendError, Operation, OperationId, Output};
use mcs_domain::Reason;
use mcs_domain::task::{TaskError, TaskState, TaskStatus};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use super::conditions::{DesiredCondition, merge};
use super::{Context, ControllerError};
use crate::api::{ANNOTATION_CANCEL, ANNOTATION_RETRY, Condition, condition_type};

/// The first delay between two polls of a job's backend operation; it doubles up to the
/// runner's poll interval, so a 7 ms overlay build is seen done within milliseconds while a
/// long preparation is polled at the usual pace.
const FIRST_POLL: Duration = Duration::from_millis(2);

/// Who hears of jobs that ended: one sender per [`TaskRunner::ended`] stream.
type EndListeners = Arc<Mutex<Vec<UnboundedSender<String>>>>;

/// The operation a task reports while it waits for a free slot of the concurrency limit.
pub const WAITING_FOR_SLOT: &str = "WaitingForTaskSlot";

/// What a job is doing, as last seen.
#[derive(Clone, Debug, PartialEq)]
pub struct JobSnapshot {
    /// The task the job works for (`status.task.taskId`).
    pub task_id: String,
    /// Still waiting for a slot of the concurrency limit.
    pub queued: bool,
    /// When the job got its slot and started the backend operation.
    pub started: Option<Instant>,
    /// The backend operation, once started.
    pub operation_id: Option<OperationId>,
    /// The backend's phase (an SDK task state).
    pub phase: TaskState,
    /// The backend's progress of the whole operation, 0..=100.
    pub percent: u8,
    /// The backend's message.
    pub message: String,
    /// `Some` once the job has ended.
    pub result: Option<Result<Output, BackendError>>,
}

impl JobSnapshot {
    fn new(task_id: &str) -> Self {
        Self {
            task_id: task_id.to_string(),
            queued: true,
            started: None,
            operation_id: None,
            phase: TaskState::Processing,
            percent: 0,
            message: WAITING_FOR_SLOT.to_string(),
            result: None,
        }
    }
}

struct Job {
    snapshot: Arc<Mutex<JobSnapshot>>,
    cancel: watch::Sender<bool>,
    handle: Option<JoinHandle<()>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs backend operations as background jobs under one concurrency limit.
pub struct TaskRunner {
    slots: Arc<Semaphore>,
    jobs: Mutex<HashMap<String, Job>>,
    last_write: Mutex<HashMap<String, Instant>>,
    write_interval: Duration,
    poll_interval: Duration,
    ended: EndListeners,
}

impl TaskRunner {
    /// A runner that lets at most `max_concurrent` jobs do backend work at once and allows one
    /// progress write per object per `write_interval`.
    pub fn new(max_concurrent: usize, write_interval: Duration) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_concurrent.max(1))),
            jobs: Mutex::new(HashMap::new()),
            last_write: Mutex::new(HashMap::new()),
            write_interval,
            poll_interval: Duration::from_millis(200),
            ended: Arc::default(),
        }
    }

    /// The keys of jobs as they end (succeeded, failed or canceled), from now on.
    pub fn ended(&self) -> impl Stream<Item = String> + Send + 'static {
        let (sender, receiver) = unbounded();
        lock(&self.ended).push(sender);
        receiver
    }

    /// How many jobs may start backend work now.
    pub fn free_slots(&self) -> usize {
        self.slots.available_permits()
    }

    /// Starts `op` on `backend` as the job of `key` for task `task_id`. A job of the same task
    /// already known (running or ended) is kept; a job of another task is canceled first.
    pub async fn spawn(&self, key: &str, task_id: &str, backend: Arc<dyn Backend>, op: Operation) {
        if self
            .snapshot(key)
            .is_some_and(|snapshot| snapshot.task_id == task_id)
        {
            return;
        }
        self.cancel(key).await;
        let snapshot = Arc::new(Mutex::new(JobSnapshot::new(task_id)));
        let (cancel, cancel_rx) = watch::channel(false);
        let job = JobRun {
            key: key.to_string(),
            slots: self.slots.clone(),
            snapshot: snapshot.clone(),
            cancel: cancel_rx,
            poll_interval: self.poll_interval,
            ended: self.ended.clone(),
        };
        let handle = tokio::spawn(drive(job, backend, op));
        tracing::info!(key, task_id, "task job started");
        lock(&self.jobs).insert(
            key.to_string(),
            Job {
                snapshot,
                cancel,
                handle: Some(handle),
            },
        );
    }

    /// The latest snapshot of the job of `key`, if there is one.
    pub fn snapshot(&self, key: &str) -> Option<JobSnapshot> {
        lock(&self.jobs)
            .get(key)
            .map(|job| lock(&job.snapshot).clone())
    }

    /// The snapshot of the job of `key` when it works for task `task_id`.
    pub fn snapshot_of(&self, key: &str, task_id: &str) -> Option<JobSnapshot> {
        self.snapshot(key).filter(|s| s.task_id == task_id)
    }

    /// Cancels the job of `key` (its backend operation is canceled, which kills its processes
    /// and removes its partial files), waits until it has stopped and returns its last
    /// snapshot. The job stays known until [`TaskRunner::forget`].
    pub async fn cancel(&self, key: &str) -> Option<JobSnapshot> {
        let (handle, snapshot) = {
            let mut jobs = lock(&self.jobs);
            let job = jobs.get_mut(key)?;
            // A job that has ended ignores the signal; one whose receiver is gone has ended.
            let _ = job.cancel.send(true);
            (job.handle.take(), job.snapshot.clone())
        };
        if let Some(handle) = handle
            && tokio::time::timeout(Duration::from_secs(60), handle)
                .await
                .is_err()
        {
            tracing::warn!(key, "task job did not stop within 60s");
        }
        let last = lock(&snapshot).clone();
        Some(last)
    }

    /// Cancels every job (their processes are killed and their partial files removed) and
    /// waits until they have stopped: what a stopping operator does so that no half-written
    /// disk is left behind. Returns how many jobs were still running.
    pub async fn cancel_all(&self) -> usize {
        let running: Vec<String> = lock(&self.jobs)
            .iter()
            .filter(|(_, job)| job.handle.as_ref().is_some_and(|h| !h.is_finished()))
            .map(|(key, _)| key.clone())
            .collect();
        futures::future::join_all(running.iter().map(|key| self.cancel(key))).await;
        running.len()
    }

    /// Forgets the job of `key` (canceling it if it still runs) and its write history.
    pub async fn forget(&self, key: &str) {
        self.cancel(key).await;
        lock(&self.jobs).remove(key);
        lock(&self.last_write).remove(key);
    }

    /// Whether a status write for `key` may happen now: always when `urgent` (a state change,
    /// a failure, anything but progress), else at most once per write interval. `Err` holds how
    /// long to wait. A write that is allowed is recorded.
    pub fn may_write(&self, key: &str, urgent: bool) -> Result<(), Duration> {
        let now = Instant::now();
        let mut last = lock(&self.last_write);
        match throttle(last.get(key).copied(), now, self.write_interval, urgent) {
            None => {
                last.insert(key.to_string(), now);
                Ok(())
            }
            Some(wait) => Err(wait),
        }
    }

    /// How often a reconcile should look at a running job again.
    pub fn follow_interval(&self) -> Duration {
        self.write_interval
    }
}

/// Runs a short backend operation (inventory, measure) to its end and forgets it.
pub async fn run_once(backend: &dyn Backend, op: Operation) -> Result<Output, BackendError> {
    let id = backend.start(op).await?;
    let status = mcs_backend::wait(backend, id, Duration::from_millis(20)).await;
    backend.forget(id).await;
    status?.result.unwrap_or(Err(BackendError::Canceled))
}

/// The pure rate limit: `None` when a write may happen at `now`, else how long to wait.
pub fn throttle(
    last: Option<Instant>,
    now: Instant,
    interval: Duration,
    urgent: bool,
) -> Option<Duration> {
    match last {
        _ if urgent => None,
        None => None,
        Some(last) => {
            let elapsed = now.saturating_duration_since(last);
            (elapsed < interval).then(|| interval - elapsed)
        }
    }
}

/// One job's side of the runner: where it reports and what it listens to.
struct JobRun {
    key: String,
    slots: Arc<Semaphore>,
    snapshot: Arc<Mutex<JobSnapshot>>,
    cancel: watch::Receiver<bool>,
    poll_interval: Duration,
    ended: EndListeners,
}

/// Runs one job to its end, then tells the [`TaskRunner::ended`] listeners.
async fn drive(job: JobRun, backend: Arc<dyn Backend>, op: Operation) {
    let JobRun {
        key,
        slots,
        snapshot,
        cancel,
        poll_interval,
        ended,
    } = job;
    run_job(slots, backend, op, &snapshot, cancel, poll_interval).await;
    lock(&ended).retain(|listener| listener.unbounded_send(key.clone()).is_ok());
}

async fn run_job(
    slots: Arc<Semaphore>,
    backend: Arc<dyn Backend>,
    op: Operation,
    snapshot: &Mutex<JobSnapshot>,
    mut cancel: watch::Receiver<bool>,
    poll_interval: Duration,
) {
    let backend_kind = backend.kind();
    let operation = op.name();
    let end = |result: Result<Output, BackendError>, started: Option<Instant>| {
        if let Some(started) = started {
            let outcome = match &result {
                Ok(_) => "ok",
                Err(error) => error.reason(),
            };
            crate::metrics::global().backend_operation(
                backend_kind,
                operation,
                outcome,
                started.elapsed(),
            );
        }
        let mut s = lock(snapshot);
        match &result {
            Ok(_) => {
                s.phase = TaskState::Finished;
                s.percent = 100;
            }
            Err(error) => {
                s.phase = error.task_state();
                s.message = error.to_string();
            }
        }
        s.result = Some(result);
    };
    let permit = tokio::select! {
        permit = slots.acquire_owned() => permit.ok(),
        _ = cancel.changed() => {
            end(Err(BackendError::Canceled), None);
            return;
        }
    };
    let started = Some(Instant::now());
    {
        let mut s = lock(snapshot);
        s.queued = false;
        s.started = started;
    }
    let id = match backend.start(op).await {
        Ok(id) => id,
        Err(error) => {
            end(Err(error), started);
            return;
        }
    };
    lock(snapshot).operation_id = Some(id);
    let mut delay = FIRST_POLL.min(poll_interval);
    loop {
        match backend.poll(id).await {
            Ok(status) => {
                {
                    let mut s = lock(snapshot);
                    s.phase = status.phase;
                    s.percent = s.percent.max(status.percent);
                    s.message = status.message;
                }
                if let Some(result) = status.result {
                    end(result, started);
                    backend.forget(id).await;
                    break;
                }
            }
            Err(error) => {
                end(Err(error), started);
                break;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => delay = (delay * 2).min(poll_interval),
            _ = cancel.changed() => {
                let result = match backend.cancel(id).await {
                    Ok(status) => status.result.unwrap_or(Err(BackendError::Canceled)),
                    Err(error) => Err(error),
                };
                end(result, started);
                backend.forget(id).await;
                break;
            }
        }
    }
    drop(permit);
}

/// What a reconcile does with an object's task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskAction {
    /// Start a fresh task (there is none, or a retry / new generation after a failure).
    Start,
    /// The task is running but no job of this process works for it (the operator restarted):
    /// start the job again; the backend finishes or redoes the work.
    Resume,
    /// A job works for the task: report its progress.
    Follow,
    /// Cancel the running task (annotation `mcs.imaging.dev/cancel`).
    Cancel,
    /// Nothing to do: the task has ended and nobody asked for another.
    Idle,
}

/// The lifecycle decision for one object's task.
///
/// `job_known`: a job of this process works for the task; `new_generation`: the spec changed
/// since the status was written.
pub fn decide_task_action(
    task: Option<&TaskStatus>,
    job_known: bool,
    annotations: &TaskAnnotations,
    new_generation: bool,
) -> TaskAction {
    match task {
        None => TaskAction::Start,
        Some(task) if !task.is_terminal() => {
            if annotations.cancel {
                TaskAction::Cancel
            } else if job_known {
                TaskAction::Follow
            } else {
                TaskAction::Resume
            }
        }
        Some(task) => {
            let again = (annotations.retry || new_generation)
                && task.task_state != TaskState::Finished
                && !annotations.cancel;
            if again {
                TaskAction::Start
            } else {
                TaskAction::Idle
            }
        }
    }
}

/// The task annotations of an object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskAnnotations {
    /// `mcs.imaging.dev/cancel` is set.
    pub cancel: bool,
    /// `mcs.imaging.dev/retry` is set.
    pub retry: bool,
}

impl TaskAnnotations {
    /// Reads the annotations (any value counts, except `false`).
    pub fn read(annotations: &BTreeMap<String, String>) -> Self {
        let set = |key: &str| {
            annotations
                .get(key)
                .is_some_and(|v| !v.eq_ignore_ascii_case("false"))
        };
        Self {
            cancel: set(ANNOTATION_CANCEL),
            retry: set(ANNOTATION_RETRY),
        }
    }

    /// The annotations to remove after `action` was carried out: a handled request is
    /// consumed, and a request that cannot apply (retry of a finished task, cancel of an ended
    /// one) is dropped so it does not fire later by surprise.
    pub fn consumed(&self, action: TaskAction, task_running: bool) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.retry && (action == TaskAction::Start || action == TaskAction::Idle) {
            out.push(ANNOTATION_RETRY);
        }
        if self.cancel && (action == TaskAction::Cancel || !task_running) {
            out.push(ANNOTATION_CANCEL);
        }
        out
    }
}

/// Moves `task` along with a job's snapshot: forward to the backend's phase when it is a later
/// step of the task, and progress within it through `step_percent(phase, overall_percent)`.
/// A queued job reports [`WAITING_FOR_SLOT`]. The result itself is not applied (the caller
/// decides what success means for its task). Never moves the task backwards.
pub fn follow_snapshot(
    task: &mut TaskStatus,
    snapshot: &JobSnapshot,
    step_percent: impl Fn(TaskState, u8) -> f64,
    now: Timestamp,
) -> Result<(), TaskError> {
    if task.is_terminal() {
        return Ok(());
    }
    if snapshot.queued {
        return task.report_progress(0.0, Some(WAITING_FOR_SLOT.to_string()), now);
    }
    let phase = snapshot.phase;
    let ty = task.task_type;
    if phase.is_running()
        && let (Some(current), Some(next)) = (ty.step_index(task.task_state), ty.step_index(phase))
        && next > current
    {
        task.advance(phase, now)?;
    }
    if task.task_state == phase {
        let operation = (!snapshot.message.is_empty()).then(|| snapshot.message.clone());
        task.report_progress(step_percent(phase, snapshot.percent), operation, now)?;
    } else {
        task.report_progress(0.0, None, now)?;
    }
    Ok(())
}

/// Reports a deletion that waits for the objects still using `obj`: `Ready=False` with the
/// error's reason and message, and a Warning Event, both only when the condition changes.
/// `write_status` gets the merged conditions and writes the kind's status with them.
pub async fn report_blocked_deletion<K, W, Fut>(
    context: &Context,
    obj: &K,
    current: &[Condition],
    error: &ControllerError,
    write_status: W,
) -> Result<(), ControllerError>
where
    K: Resource<DynamicType = ()>,
    W: FnOnce(Vec<Condition>) -> Fut,
    Fut: std::future::Future<Output = Result<(), ControllerError>>,
{
    let message = error.to_string();
    let conditions = merge(
        current,
        &[DesiredCondition::false_(
            condition_type::READY,
            error.reason(),
            &message,
        )],
        obj.meta().generation,
        Timestamp::now(),
    );
    if conditions != current {
        write_status(conditions).await?;
        super::events::publish(
            context,
            obj,
            EventType::Warning,
            error.reason(),
            "Delete",
            message,
        )
        .await;
    }
    Ok(())
}

/// Removes `keys` from the annotations of `name` (a JSON merge patch of metadata only).
pub async fn remove_annotations<K>(
    api: &kube::Api<K>,
    name: &str,
    keys: &[&str],
) -> Result<(), kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if keys.is_empty() {
        return Ok(());
    }
    let annotations: serde_json::Map<String, serde_json::Value> = keys
        .iter()
        .map(|k| ((*k).to_string(), serde_json::Value::Null))
        .collect();
    let patch = serde_json::json!({ "metadata": { "annotations": annotations } });
    api.patch(
        name,
        &super::strict::patch(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcs_domain::task::TaskType;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("valid")
    }

    fn running() -> TaskStatus {
        TaskStatus::start(TaskType::NewImageVersionSpec, "t1".into(), t(0))
    }

    fn failed() -> TaskStatus {
        let mut task = running();
        task.fail(TaskState::SnapshotNotFound, "gone", t(1))
            .expect("fail");
        task
    }

    fn finished() -> TaskStatus {
        let mut task = running();
        task.advance(TaskState::StoringImageVersionSpec, t(1))
            .expect("advance");
        task.finish(t(2)).expect("finish");
        task
    }

    const NONE: TaskAnnotations = TaskAnnotations {
        cancel: false,
        retry: false,
    };
    const CANCEL: TaskAnnotations = TaskAnnotations {
        cancel: true,
        retry: false,
    };
    const RETRY: TaskAnnotations = TaskAnnotations {
        cancel: false,
        retry: true,
    };

    #[test]
    fn lifecycle_decisions() {
        assert_eq!(
            decide_task_action(None, false, &NONE, false),
            TaskAction::Start
        );
        let run = running();
        assert_eq!(
            decide_task_action(Some(&run), true, &NONE, false),
            TaskAction::Follow
        );
        assert_eq!(
            decide_task_action(Some(&run), false, &NONE, false),
            TaskAction::Resume
        );
        assert_eq!(
            decide_task_action(Some(&run), true, &CANCEL, false),
            TaskAction::Cancel
        );
        assert_eq!(
            decide_task_action(Some(&run), false, &CANCEL, false),
            TaskAction::Cancel
        );
        let fail = failed();
        assert_eq!(
            decide_task_action(Some(&fail), false, &NONE, false),
            TaskAction::Idle
        );
        assert_eq!(
            decide_task_action(Some(&fail), false, &RETRY, false),
            TaskAction::Start
        );
        assert_eq!(
            decide_task_action(Some(&fail), false, &NONE, true),
            TaskAction::Start
        );
        let both = TaskAnnotations {
            cancel: true,
            retry: true,
        };
        assert_eq!(
            decide_task_action(Some(&fail), false, &both, false),
            TaskAction::Idle,
            "a standing cancel request wins over retry"
        );
        let done = finished();
        assert_eq!(
            decide_task_action(Some(&done), false, &RETRY, true),
            TaskAction::Idle,
            "a finished task is never redone"
        );
    }

    #[test]
    fn consumed_annotations() {
        assert_eq!(
            CANCEL.consumed(TaskAction::Cancel, true),
            vec![ANNOTATION_CANCEL]
        );
        assert!(CANCEL.consumed(TaskAction::Follow, true).is_empty());
        assert_eq!(
            CANCEL.consumed(TaskAction::Idle, false),
            vec![ANNOTATION_CANCEL]
        );
        assert_eq!(
            RETRY.consumed(TaskAction::Start, false),
            vec![ANNOTATION_RETRY]
        );
        assert!(RETRY.consumed(TaskAction::Follow, true).is_empty());
        let read = TaskAnnotations::read(&BTreeMap::from([
            (ANNOTATION_RETRY.to_string(), "now".to_string()),
            (ANNOTATION_CANCEL.to_string(), "false".to_string()),
        ]));
        assert_eq!(read, RETRY);
    }

    #[test]
    fn throttle_allows_one_progress_write_per_interval() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        assert_eq!(throttle(None, start, second, false), None);
        let later = start + Duration::from_millis(300);
        assert_eq!(
            throttle(Some(start), later, second, false),
            Some(Duration::from_millis(700))
        );
        assert_eq!(throttle(Some(start), later, second, true), None);
        assert_eq!(throttle(Some(start), start + second, second, false), None);
    }

    #[test]
    fn runner_rate_limit_records_writes() {
        let runner = TaskRunner::new(1, Duration::from_secs(60));
        assert!(runner.may_write("a", false).is_ok());
        assert!(runner.may_write("a", false).is_err());
        assert!(runner.may_write("b", false).is_ok());
        assert!(runner.may_write("a", true).is_ok());
    }

    fn snap(phase: TaskState, percent: u8) -> JobSnapshot {
        JobSnapshot {
            task_id: "t1".into(),
            queued: false,
            started: None,
            operation_id: None,
            phase,
            percent,
            message: "working".into(),
            result: None,
        }
    }

    #[test]
    fn following_a_snapshot_moves_forward_only() {
        let pct = |_: TaskState, p: u8| f64::from(p);
        let mut task = running();
        let mut queued = snap(TaskState::Processing, 0);
        queued.queued = true;
        follow_snapshot(&mut task, &queued, pct, t(1)).expect("ok");
        assert_eq!(task.current_operation.as_deref(), Some(WAITING_FOR_SLOT));

        follow_snapshot(
            &mut task,
            &snap(TaskState::ConsolidatingMasterImage, 50),
            pct,
            t(2),
        )
        .expect("ok");
        assert_eq!(task.task_state, TaskState::ConsolidatingMasterImage);
        assert_eq!(task.task_progress, 35);
        assert_eq!(task.current_operation.as_deref(), Some("working"));

        // After a restart the backend starts again from LocatingResources: the task stays.
        follow_snapshot(&mut task, &snap(TaskState::LocatingResources, 1), pct, t(3)).expect("ok");
        assert_eq!(task.task_state, TaskState::ConsolidatingMasterImage);
        assert_eq!(task.task_progress, 35);

        // A failure phase is left to the caller.
        follow_snapshot(&mut task, &snap(TaskState::SnapshotNotFound, 1), pct, t(4)).expect("ok");
        assert!(!task.is_terminal());
    }

    #[tokio::test]
    async fn jobs_run_under_the_limit_and_can_be_canceled() {
        let backend: Arc<dyn Backend> = Arc::new(
            mcs_backend::LocalBackend::new(mcs_backend::LocalConfig::default()).expect("backend"),
        );
        let runner = TaskRunner::new(1, Duration::from_secs(1));
        let mut ended = runner.ended();
        let op = Operation::ResolveInventory(mcs_backend::InventoryRequest {
            hosting_unit: "hu".into(),
            storages: vec!["missing".into()],
        });
        runner.spawn("k", "t1", backend.clone(), op.clone()).await;
        let mut last = None;
        for _ in 0..100 {
            last = runner.snapshot_of("k", "t1");
            if last.as_ref().is_some_and(|s| s.result.is_some()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let last = last.expect("snapshot");
        assert_eq!(last.phase, TaskState::StorageNotFound);
        assert!(matches!(
            last.result,
            Some(Err(BackendError::StorageNotFound { .. }))
        ));
        assert_eq!(runner.free_slots(), 1);
        assert!(runner.snapshot_of("k", "other").is_none());
        assert_eq!(
            futures::StreamExt::next(&mut ended).await.as_deref(),
            Some("k"),
            "the end of a job is told"
        );

        // A job of another task replaces the old one; canceling a queued job ends it.
        let held = runner.slots.clone().acquire_owned().await.expect("permit");
        runner.spawn("k", "t2", backend, op).await;
        let queued = runner.snapshot_of("k", "t2").expect("t2");
        assert!(queued.queued);
        let canceled = runner.cancel("k").await.expect("known");
        assert_eq!(canceled.result, Some(Err(BackendError::Canceled)));
        drop(held);
        runner.forget("k").await;
        assert!(runner.snapshot("k").is_none());
    }
}
