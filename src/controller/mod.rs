//! The controllers: thin Kubernetes shells around the pure domain.
//!
//! Every reconcile follows one pipeline: read what exists, decide (pure functions of
//! `mcs-domain`), apply the writes, report status with server-side apply under the
//! controller's own field manager.

pub mod backends;
pub mod conditions;
pub mod connection;
pub mod error;
pub mod hosting_unit;
pub mod identity_pool;
pub mod image_definition;
pub mod image_version;
pub mod image_version_spec;
pub mod prov_scheme;
pub mod prov_vm;
pub mod readiness;
pub mod scheme_versions;
pub mod status;
pub mod strict;
pub mod tasks;
pub mod update_window;

use std::sync::Arc;
use std::time::Duration;

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

/// The shared error policy: a deletion waiting for its users is retried soon and logged at
/// info level; any other failure is logged as a warning with its reason and retried later.
pub fn requeue_after_error(
    controller: &'static str,
    error: &ControllerError,
) -> kube::runtime::controller::Action {
    if matches!(error, ControllerError::InUse { .. }) {
        tracing::info!(controller, %error, "deletion waits");
        return kube::runtime::controller::Action::requeue(Duration::from_secs(3));
    }
    crate::metrics::global().reconcile_error(controller, mcs_domain::Reason::reason(error));
    tracing::warn!(controller, reason = mcs_domain::Reason::reason(error), %error, "reconcile failed");
    kube::runtime::controller::Action::requeue(Duration::from_secs(5))
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

/// Runs every controller until the process is told to stop.
pub async fn run(client: Client, config: OperatorConfig) {
    run_with(Context::new(client, config)).await;
}

/// Runs every controller with `context` (whose task runner and cache readiness the caller
/// keeps, to stop the jobs at shutdown and to report readiness).
pub async fn run_with(context: Arc<Context>) {
    tokio::join!(
        identity_pool::run(context.clone()),
        connection::run(context.clone()),
        hosting_unit::run(context.clone()),
        image_definition::run(context.clone()),
        image_version::run(context.clone()),
        image_version_spec::run(context.clone()),
        prov_scheme::run(context.clone()),
        prov_vm::run(context),
    );
}
