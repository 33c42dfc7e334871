//! The operation table every backend shares: start a background task per operation, report its
//! status while it runs, cancel it (with the backend's own clean-up), forget it once ended.
//!
//! Starting an operation on a target (a prepared image, a machine) that already has one running
//! returns the running operation's id when the operations are equal, else
//! [`BackendError::OperationInProgress`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use mcs_domain::task::TaskState;
use tokio::task::JoinHandle;

use crate::api::{Operation, OperationId, OperationStatus, Output, PowerRequest};
use crate::error::BackendError;

type Shared = Arc<Mutex<OperationStatus>>;

struct Entry {
    key: Option<String>,
    op: Operation,
    status: Shared,
    handle: Option<JoinHandle<()>>,
}

/// Locks a mutex, ignoring poisoning (a panicked operation leaves a usable status).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reports the phase and progress of one running operation.
#[derive(Clone)]
pub struct Progress(Shared);

impl Progress {
    /// Sets the SDK task state the operation is in and what it does now.
    pub fn phase(&self, phase: TaskState, message: impl Into<String>) {
        let mut s = lock(&self.0);
        s.phase = phase;
        s.message = message.into();
    }

    /// Raises the progress to `p` percent (it never goes back).
    pub fn percent(&self, p: f64) {
        let mut s = lock(&self.0);
        let v = p.clamp(0.0, 100.0).floor() as u8;
        if v > s.percent {
            s.percent = v;
        }
    }

    /// A callback mapping 0..100 of a sub-step onto `lo..hi` of the operation.
    pub fn scaled(&self, lo: f64, hi: f64) -> impl Fn(f64) + Send + Sync + use<> {
        let me = self.clone();
        move |p| me.percent(lo + (hi - lo) * p / 100.0)
    }
}

/// The target an operation works on (`prepared:<id>`, `machine:<storage>/<scheme>/<name>`);
/// `None` for read-only operations, which may run side by side.
pub fn target_key(op: &Operation) -> Option<String> {
    let machine = |storage: &str, scheme: &str, name: &str| {
        Some(format!("machine:{storage}/{scheme}/{name}"))
    };
    match op {
        Operation::Prepare(r) => Some(format!("prepared:{}", r.image_id)),
        Operation::DeletePreparedImage(r) => Some(format!("prepared:{}", r.image_id)),
        Operation::CreateMachine(r) | Operation::UpdateMachine(r) => {
            machine(&r.storage, &r.scheme, &r.machine_name)
        }
        Operation::ResetMachine(m) | Operation::SetPower(PowerRequest { machine: m, .. }) => {
            machine(&m.storage, &m.scheme, &m.machine_name)
        }
        Operation::DeleteMachine(d) => machine(
            &d.machine.storage,
            &d.machine.scheme,
            &d.machine.machine_name,
        ),
        Operation::ResolveInventory(_) | Operation::Measure(_) => None,
    }
}

/// The operations of one backend instance. Cheap to clone; clones share the table.
#[derive(Clone, Default)]
pub struct Runner {
    ops: Arc<Mutex<HashMap<OperationId, Entry>>>,
}

impl Runner {
    /// Starts `op` as a background task running `work(op, progress)`; see the module docs for
    /// what happens when its target is busy.
    pub fn start<F, Fut>(&self, op: Operation, work: F) -> Result<OperationId, BackendError>
    where
        F: FnOnce(Operation, Progress) -> Fut,
        Fut: Future<Output = Result<Output, BackendError>> + Send + 'static,
    {
        let key = target_key(&op);
        let mut ops = lock(&self.ops);
        if let Some(k) = &key {
            for (id, e) in ops.iter() {
                if e.key.as_ref() == Some(k) && lock(&e.status).result.is_none() {
                    if e.op == op {
                        return Ok(*id);
                    }
                    return Err(BackendError::OperationInProgress {
                        target: k.clone(),
                        operation: e.op.name().to_string(),
                        running: id.to_string(),
                    });
                }
            }
        }
        let id = OperationId(uuid::Uuid::new_v4());
        let status: Shared = Arc::new(Mutex::new(OperationStatus {
            id,
            operation: op.name(),
            phase: TaskState::Processing,
            percent: 0,
            message: "started".into(),
            result: None,
        }));
        let progress = Progress(status.clone());
        let operation = op.name();
        let quiet = op.is_read_only();
        let fut = work(op.clone(), progress.clone());
        let handle = tokio::spawn(async move {
            if quiet {
                tracing::debug!(%id, operation, "operation started");
            } else {
                tracing::info!(%id, operation, "operation started");
            }
            let res = fut.await;
            let mut s = lock(&progress.0);
            match &res {
                Ok(_) => {
                    s.phase = TaskState::Finished;
                    s.percent = 100;
                    s.message = "finished".into();
                    if quiet {
                        tracing::debug!(%id, operation, "operation finished");
                    } else {
                        tracing::info!(%id, operation, "operation finished");
                    }
                }
                Err(e) => {
                    s.phase = e.task_state();
                    s.message = e.to_string();
                    tracing::warn!(%id, operation, reason = e.reason(), error = %e, "operation failed");
                }
            }
            s.result = Some(res);
        });
        ops.insert(
            id,
            Entry {
                key,
                op,
                status,
                handle: Some(handle),
            },
        );
        Ok(id)
    }

    /// The status of operation `id`.
    pub fn poll(&self, id: OperationId) -> Result<OperationStatus, BackendError> {
        let ops = lock(&self.ops);
        let e = ops
            .get(&id)
            .ok_or_else(|| BackendError::OperationNotFound { id: id.to_string() })?;
        Ok(lock(&e.status).clone())
    }

    /// Cancels operation `id`: its task is aborted, then, if it had not ended, `cleanup(op)`
    /// removes its partial work before the status says `Canceled` with `message`.
    pub async fn cancel<F, Fut>(
        &self,
        id: OperationId,
        message: &str,
        cleanup: F,
    ) -> Result<OperationStatus, BackendError>
    where
        F: FnOnce(Operation) -> Fut,
        Fut: Future<Output = ()>,
    {
        let (handle, status, op) = {
            let mut ops = lock(&self.ops);
            let e = ops
                .get_mut(&id)
                .ok_or_else(|| BackendError::OperationNotFound { id: id.to_string() })?;
            (e.handle.take(), e.status.clone(), e.op.clone())
        };
        if let Some(h) = handle {
            h.abort();
            let _ = h.await;
        }
        if lock(&status).result.is_none() {
            cleanup(op).await;
        }
        let mut s = lock(&status);
        if s.result.is_none() {
            s.phase = TaskState::Canceled;
            s.message = message.into();
            s.result = Some(Err(BackendError::Canceled));
            tracing::info!(%id, "operation canceled");
        }
        Ok(s.clone())
    }

    /// Drops an ended operation's record; returns whether it was known and ended.
    pub fn forget(&self, id: OperationId) -> bool {
        let mut ops = lock(&self.ops);
        let ended = ops
            .get(&id)
            .is_some_and(|e| lock(&e.status).result.is_some());
        if ended {
            ops.remove(&id);
        }
        ended
    }
}
