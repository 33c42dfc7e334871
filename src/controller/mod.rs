//! The controllers: thin Kubernetes shells around the pure domain.
//!
//! Every reconcile follows one pipeline: read what exists, decide (pure functions of
//! `mcs-domain`), apply the writes, report status with server-side apply under the
//! controller's own field manager.

pub mod backends;
pub mod conditions;
pub mod error;
pub mod identity_pool;
pub mod status;

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
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            namespace: None,
            concurrency: 4,
            resync: Duration::from_secs(300),
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
            client,
            config,
            backends: backends::BackendRegistry::default(),
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

/// The watcher settings every controller uses.
pub fn watcher_config() -> watcher::Config {
    watcher::Config::default().any_semantic()
}

/// Runs every controller until the process is told to stop.
pub async fn run(client: Client, config: OperatorConfig) {
    let context = Context::new(client, config);
    identity_pool::run(context).await;
}
