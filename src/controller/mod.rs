//! The controllers: thin Kubernetes shells around the pure domain.
//!
//! Every reconcile follows one pipeline: read what exists, decide (pure functions of
//! `mcs-domain`), apply the writes, report status with server-side apply under the
//! controller's own field manager.

pub mod backends;
pub mod conditions;
pub mod connection;
pub mod error;
pub mod events;
pub mod hosting_unit;
pub mod identity_pool;
pub mod image_definition;
pub mod image_version;
pub mod image_version_spec;
pub mod prov_scheme;
pub mod prov_vm;
pub mod readiness;
pub mod status;
pub mod stores;
pub mod strict;
pub mod tasks;
pub mod update_window;

/// ProvScheme versioning (ControllerRevisions), under its old path.
pub use prov_scheme::versions as scheme_versions;

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;

pub use error::ControllerError;

/// Settings of the operator process.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// Watch only this namespace (`None`: all namespaces).
    pub namespace: Option<String>,
    /// How many reconciles of one kind run at once.
    pub concurrency: u16,
    /// How often a healthy object is reconciled again even without changes.
    pub resync: Duration,
    /// How many task jobs (image preparations, machine work) do backend work at once, across
    /// every controller; more wait in state `Processing` (`WaitingForTaskSlot`).
    pub max_concurrent_tasks: usize,
    /// At most one progress write per object per this interval (state changes always go out).
    pub progress_interval: Duration,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            namespace: None,
            concurrency: 4,
            resync: Duration::from_secs(300),
            max_concurrent_tasks: 4,
            progress_interval: Duration::from_secs(1),
        }
    }
}

/// What every reconcile gets: the client, the event recorder and the settings.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Publishes Kubernetes Events about the objects.
    pub recorder: Recorder,
    /// The operator's settings.
    pub config: OperatorConfig,
    /// The backends doing the disk work, by hosting unit.
    pub backends: backends::BackendRegistry,
    /// The background jobs of long tasks, under the concurrency limit.
    pub tasks: tasks::TaskRunner,
    /// Whether each controller's cache has synced (for `/readyz`).
    pub caches: readiness::CacheReadiness,
    /// The shared caches every controller reads from and is triggered by.
    pub stores: stores::Stores,
}

impl Context {
    /// A context for `client` with events reported as `mcs-operator`.
    pub fn new(client: Client, config: OperatorConfig) -> Arc<Self> {
        let reporter = Reporter {
            controller: "mcs-operator".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter),
            backends: backends::BackendRegistry::with_client(client.clone()),
            stores: stores::Stores::new(&client, config.namespace.as_deref()),
            client,
            tasks: tasks::TaskRunner::new(config.max_concurrent_tasks, config.progress_interval),
            caches: readiness::CacheReadiness::default(),
            config,
        })
    }

    /// An `Api` for `K` in `namespace`.
    pub fn api<K>(&self, namespace: &str) -> kube::Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        kube::Api::namespaced(self.client.clone(), namespace)
    }

    /// An `Api` for `K` over the watched namespaces.
    pub fn watched_api<K>(&self) -> kube::Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match &self.config.namespace {
            Some(namespace) => kube::Api::namespaced(self.client.clone(), namespace),
            None => kube::Api::all(self.client.clone()),
        }
    }
}

/// The error policy of the controller named `controller`: a deletion that waits for users of
/// what it deletes is logged at info and retried in 3 s; any other error is counted in the
/// `reconcile_errors` metric by its reason, logged with the object's name, and retried after
/// `retry`.
pub fn error_policy<K, C>(
    controller: &'static str,
    retry: Duration,
) -> impl Fn(Arc<K>, &ControllerError, Arc<C>) -> kube::runtime::controller::Action
where
    K: kube::Resource,
{
    move |object, error, _context| {
        let name = kube::ResourceExt::name_any(object.as_ref());
        if matches!(error, ControllerError::InUse { .. }) {
            tracing::info!(controller, %name, %error, "deletion waits");
            return kube::runtime::controller::Action::requeue(Duration::from_secs(3));
        }
        let reason = mcs_domain::Reason::reason(error);
        crate::metrics::global().reconcile_error(controller, reason);
        tracing::warn!(controller, %name, reason, %error, "reconcile failed");
        kube::runtime::controller::Action::requeue(retry)
    }
}

/// The watcher settings every controller uses.
///
/// Lists are consistent reads (`ListSemantic::MostRecent`, no `resourceVersion=0`): after an
/// etcd restart a real API server's watch cache can answer `resourceVersion=0` lists with a
/// version its watches already call too old (410), so a watcher listing "any" version relists
/// into the same 410 forever. Since Kubernetes 1.31 consistent lists are served from the watch
/// cache as well, so they cost no more.
pub fn watcher_config() -> watcher::Config {
    watcher::Config::default()
}

/// The backoff of a controller's watches (`Controller::trigger_backoff`), instead of kube's
/// default.
///
/// kube-runtime puts one backoff on the merged stream of all of a controller's watches: while it
/// sleeps, none of them is read. Its default grows from 0.8 s to 30 s (plus up to 100 % jitter)
/// and resets only after 120 s without an error. A kube-apiserver restart gives each watch
/// several errors in a row (connection refused while it is down, 503 while it starts, then 410
/// Expired for every resumed watch, since the new watch cache starts at the current revision),
/// so a controller with four watches reached 30-60 s sleeps and did not see objects created
/// after the restart for minutes. This one grows from 0.25 s to at most 5 s (plus up to 25 %
/// jitter) and resets after 20 s without an error: an API server that is down costs at most one
/// attempt per watch every few seconds, and a controller catches up within seconds once it is
/// back.
pub fn trigger_backoff() -> TriggerBackoff {
    TriggerBackoff::default()
}

/// See [`trigger_backoff`].
#[derive(Debug, Default)]
pub struct TriggerBackoff {
    failures: u32,
    last: Option<std::time::Instant>,
}

impl TriggerBackoff {
    /// The first delay.
    pub const MIN: Duration = Duration::from_millis(250);
    /// The longest delay before jitter.
    pub const MAX: Duration = Duration::from_secs(5);
    /// Errors further apart than this start again from [`TriggerBackoff::MIN`].
    pub const RESET_AFTER: Duration = Duration::from_secs(20);
}

impl Iterator for TriggerBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) > Self::RESET_AFTER)
        {
            self.failures = 0;
        }
        self.last = Some(now);
        let base = Self::MIN
            .saturating_mul(1 << self.failures.min(16))
            .min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as u32;
        Some(base + base.mul_f64(f64::from(jitter) / 4000.0))
    }
}

impl kube::runtime::utils::Backoff for TriggerBackoff {
    fn reset(&mut self) {
        self.failures = 0;
        self.last = None;
    }
}

/// Drives a controller's run stream to its end, logging each error as [`log_run_error`] does.
pub async fn drain<T, E: std::error::Error + 'static>(
    controller: &'static str,
    results: impl futures::Stream<Item = Result<T, kube::runtime::controller::Error<E, watcher::Error>>>,
) {
    use futures::StreamExt;
    results
        .for_each(|result| async move {
            if let Err(error) = result {
                log_run_error(controller, &error);
            }
        })
        .await;
}

/// Logs an error of a controller's run stream: a failed watch as [`log_watch_error`] does;
/// other errors were logged by the error policy already and go to debug.
pub fn log_run_error<E: std::fmt::Display>(
    controller: &'static str,
    error: &kube::runtime::controller::Error<E, watcher::Error>,
) {
    match error {
        kube::runtime::controller::Error::QueueError(watch) => log_watch_error(controller, watch),
        _ => tracing::debug!(controller, %error, "reconcile error"),
    }
}

/// Logs a failed watch (the API server unreachable or restarting, a 410 Expired to relist
/// from) as a warning at most once per [`WATCH_WARNING_INTERVAL`] per watcher, saying how many
/// more were folded into it, so an outage says what happens without a line per watch and
/// retry.
pub fn log_watch_error(watcher: &'static str, error: &watcher::Error) {
    use std::collections::HashMap;
    use std::sync::{LazyLock, Mutex};
    static LAST: LazyLock<Mutex<HashMap<&'static str, (std::time::Instant, u64)>>> =
        LazyLock::new(Mutex::default);
    let mut last = LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = std::time::Instant::now();
    match last.get_mut(watcher) {
        Some((at, folded)) if now.duration_since(*at) < WATCH_WARNING_INTERVAL => {
            *folded += 1;
            tracing::debug!(watcher, %error, "watch failed again; retrying");
        }
        entry => {
            let folded = entry.map_or(0, |(_, folded)| *folded);
            tracing::warn!(
                watcher,
                %error,
                folded,
                "watch of the API server failed; retrying with backoff (folded: failures since the last such line)"
            );
            last.insert(watcher, (now, 0));
        }
    }
}

/// At most one watch warning per controller this often (see [`log_run_error`]).
pub const WATCH_WARNING_INTERVAL: Duration = Duration::from_secs(30);

/// Runs every controller until the process is told to stop.
pub async fn run(client: Client, config: OperatorConfig) {
    run_with(Context::new(client, config)).await;
}

/// Runs every controller with `context` (whose task runner and cache readiness the caller
/// keeps, to stop the jobs at shutdown and to report readiness).
pub async fn run_with(context: Arc<Context>) {
    run_controllers(
        context.clone(),
        vec![
            identity_pool::run(context.clone()).boxed(),
            connection::run(context.clone()).boxed(),
            hosting_unit::run(context.clone()).boxed(),
            image_definition::run(context.clone()).boxed(),
            image_version::run(context.clone()).boxed(),
            image_version_spec::run(context.clone()).boxed(),
            prov_scheme::run(context.clone()).boxed(),
            prov_vm::run(context).boxed(),
        ],
    )
    .await;
}

/// Runs `controllers` (some of this module's `run` futures, all made from `context`) beside
/// the shared caches' watches, until every controller has ended. Each controller and each
/// watch is its own task, so they run on every core; dropping the returned future stops them
/// all.
pub async fn run_controllers(context: Arc<Context>, controllers: Vec<BoxFuture<'static, ()>>) {
    let mut watches = tokio::task::JoinSet::new();
    watches.spawn(async move { context.stores.run().await });
    let mut running = tokio::task::JoinSet::new();
    for controller in controllers {
        running.spawn(controller);
    }
    while let Some(ended) = running.join_next().await {
        if let Err(error) = ended
            && error.is_panic()
        {
            tracing::error!(%error, "a controller panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff as _;

    #[test]
    fn trigger_backoff_grows_to_its_cap_and_resets() {
        let mut backoff = trigger_backoff();
        let delays: Vec<Duration> = (0..12)
            .map(|_| backoff.next().expect("never gives up"))
            .collect();
        assert!(delays[0] >= TriggerBackoff::MIN && delays[0] <= TriggerBackoff::MIN * 5 / 4);
        assert!(delays[3] >= TriggerBackoff::MIN * 8, "{delays:?}");
        for delay in &delays {
            assert!(*delay <= TriggerBackoff::MAX * 5 / 4, "{delays:?}");
        }
        assert!(delays[11] >= TriggerBackoff::MAX, "{delays:?}");
        backoff.reset();
        assert!(backoff.next().expect("a delay") <= TriggerBackoff::MIN * 5 / 4);
    }
}
