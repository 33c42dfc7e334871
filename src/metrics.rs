//! The operator's Prometheus metrics (served at `/metrics` by `mcs-operator run`).
//!
//! One registry per process ([`global`]): the controllers, the task runner and the status
//! writer record into it wherever the event happens, and the HTTP server encodes it in the
//! Prometheus text format. Every name starts with `mcs_`.
//!
//! | Metric | Labels | What |
//! |---|---|---|
//! | `mcs_reconciles_total` | controller | reconciles run |
//! | `mcs_reconcile_errors_total` | controller, reason | failed reconciles, by the error's stable reason |
//! | `mcs_reconcile_duration_seconds` | controller | reconcile durations (histogram) |
//! | `mcs_tasks_total` | kind, task_type, state | tasks that reached a final state |
//! | `mcs_task_duration_seconds` | kind, task_type, state | start to final state (histogram) |
//! | `mcs_backend_operation_duration_seconds` | backend, operation, result | backend work (histogram) |
//! | `mcs_machines` | update_status | ProvVMs by update status, counted at scrape time |
//! | `mcs_leader` | | 1 while this process holds the leader lease (or runs without election) |

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kube::runtime::reflector::Store;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::ProvVm;

/// Labels naming a controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// The controller, e.g. `provscheme`.
    pub controller: String,
}

/// Labels of a failed reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The controller.
    pub controller: String,
    /// The error's stable reason (the condition reason).
    pub reason: String,
}

/// Labels of a task that ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    /// The kind of the object the task belongs to.
    pub kind: String,
    /// The SDK task type.
    pub task_type: String,
    /// The final SDK task state.
    pub state: String,
}

/// Labels of a backend operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// The backend kind, e.g. `Local`.
    pub backend: String,
    /// The operation, e.g. `PrepareImage`.
    pub operation: String,
    /// `ok`, or the failure's task state.
    pub result: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn short_durations() -> Histogram {
    // 1 ms .. ~33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn long_durations() -> Histogram {
    // 50 ms .. ~7 h
    Histogram::new(exponential_buckets(0.05, 2.0, 20))
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabels, Counter>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_duration: Histograms<ControllerLabels>,
    tasks: Family<TaskLabels, Counter>,
    task_duration: Histograms<TaskLabels>,
    backend_duration: Histograms<BackendLabels>,
    leader: Gauge,
    machines: Arc<MachineCollector>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The process's metrics, created at first use.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let reconciles = Family::default();
        let reconcile_errors = Family::default();
        let reconcile_duration: Histograms<_> = Family::new_with_constructor(short_durations);
        let tasks = Family::default();
        let task_duration: Histograms<_> = Family::new_with_constructor(long_durations);
        let backend_duration: Histograms<_> = Family::new_with_constructor(long_durations);
        let leader = Gauge::default();
        let machines = Arc::new(MachineCollector::default());
        registry.register("mcs_reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "mcs_reconcile_errors",
            "Reconciles that failed, by the error's reason",
            reconcile_errors.clone(),
        );
        registry.register(
            "mcs_reconcile_duration_seconds",
            "How long reconciles take",
            reconcile_duration.clone(),
        );
        registry.register(
            "mcs_tasks",
            "Tasks that reached a final state",
            tasks.clone(),
        );
        registry.register(
            "mcs_task_duration_seconds",
            "How long tasks take from start to their final state",
            task_duration.clone(),
        );
        registry.register(
            "mcs_backend_operation_duration_seconds",
            "How long backend operations take",
            backend_duration.clone(),
        );
        registry.register(
            "mcs_leader",
            "1 while this process runs the controllers (holds the leader lease)",
            leader.clone(),
        );
        registry.register_collector(Box::new(machines.clone()));
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            tasks,
            task_duration,
            backend_duration,
            leader,
            machines,
        }
    }

    /// Starts timing a reconcile of `controller`; the guard records it when dropped.
    pub fn reconcile(&'static self, controller: &str) -> ReconcileTimer {
        ReconcileTimer {
            metrics: self,
            labels: ControllerLabels {
                controller: controller.to_string(),
            },
            started: Instant::now(),
        }
    }

    /// Counts a failed reconcile of `controller` with the error's stable `reason`.
    pub fn reconcile_error(&self, controller: &str, reason: &str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                controller: controller.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Records a task of `kind` that reached its final `state` after `duration`.
    pub fn task_ended(&self, kind: &str, task_type: &str, state: &str, duration: Duration) {
        let labels = TaskLabels {
            kind: kind.to_string(),
            task_type: task_type.to_string(),
            state: state.to_string(),
        };
        self.tasks.get_or_create(&labels).inc();
        self.task_duration
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
    }

    /// Records a backend operation that ended with `result` (`ok` or a failure state).
    pub fn backend_operation(
        &self,
        backend: &str,
        operation: &str,
        result: &str,
        duration: Duration,
    ) {
        self.backend_duration
            .get_or_create(&BackendLabels {
                backend: backend.to_string(),
                operation: operation.to_string(),
                result: result.to_string(),
            })
            .observe(duration.as_secs_f64());
    }

    /// Sets whether this process runs the controllers.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Counts machines from `store` at each scrape (the ProvVM controller's cache).
    pub fn count_machines(&self, store: Store<ProvVm>) {
        *self
            .machines
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(store);
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Times one reconcile; counts and observes it when dropped.
#[derive(Debug)]
pub struct ReconcileTimer {
    metrics: &'static Metrics,
    labels: ControllerLabels,
    started: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.metrics.reconciles.get_or_create(&self.labels).inc();
        self.metrics
            .reconcile_duration
            .get_or_create(&self.labels)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// `mcs_machines{update_status}`: counted from the ProvVM cache when scraped, so it costs
/// nothing between scrapes and is never stale.
#[derive(Debug, Default)]
struct MachineCollector {
    store: Mutex<Option<Store<ProvVm>>>,
}

impl prometheus_client::collector::Collector for MachineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(store) = self
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
        else {
            return Ok(());
        };
        let mut counts = std::collections::BTreeMap::<String, i64>::new();
        for vm in store.state() {
            let status = vm
                .status
                .as_ref()
                .and_then(|s| s.update_status)
                .map_or_else(|| "Unknown".to_string(), |s| format!("{s:?}"));
            *counts.entry(status).or_default() += 1;
        }
        let mut family = encoder.encode_descriptor(
            "mcs_machines",
            "ProvVMs by update status",
            None,
            MetricType::Gauge,
        )?;
        for (update_status, count) in counts {
            let labels = [("update_status", update_status)];
            ConstGauge::new(count).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
