//! The operator's one shared cache: a reflector store per kind the controllers read, each fed
//! by a single watch that also triggers the controllers.
//!
//! Reconcilers read from these stores and write through the API; no reconcile lists through
//! the API in the steady state. Each kind is watched once for the whole process, whichever
//! controllers react to it, and the cached copies drop what no controller reads (managed
//! fields and `kubectl`'s last-applied annotation), which keeps the operator's memory close to
//! the size of the objects' specs and statuses.
//!
//! A controller subscribes to a kind with [`Shared::subscribe`]: a stream of every object of
//! that kind as it is applied or deleted, starting with every object already cached. The
//! watches run while [`Stores::run`] is polled; [`super::run_with`] and
//! [`super::run_controllers`] poll it beside the controllers.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError};

use futures::channel::mpsc::{UnboundedSender, unbounded};
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::ControllerRevision;
use kube::runtime::Controller;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::api::{
    HostingUnit, HypervisorConnection, IdentityPool, ImageDefinition, ImageVersion,
    ImageVersionSpec, LABEL_PROVSCHEME, ProvScheme, ProvVm,
};

/// The annotation `kubectl apply` keeps a whole copy of the object in; nothing reads it here.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// One kind's cache: the store and the subscribers its watch feeds.
pub struct Shared<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    kind: &'static str,
    client: Client,
    store: Store<K>,
    subscribers: Arc<Mutex<Vec<UnboundedSender<Arc<K>>>>>,
    drive: Mutex<Option<BoxFuture<'static, ()>>>,
}

impl<K> Shared<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    fn new(kind: &'static str, api: Api<K>, config: watcher::Config) -> Self {
        let (store, writer) = reflector::store();
        let client = api.clone().into_client();
        let subscribers: Arc<Mutex<Vec<UnboundedSender<Arc<K>>>>> = Arc::default();
        let fan_out = subscribers.clone();
        let drive = watcher(api, config)
            .modify(strip)
            .backoff(super::trigger_backoff())
            .reflect(writer)
            .for_each(move |event| {
                match event {
                    Ok(event) => dispatch(&fan_out, event),
                    Err(error) => super::log_watch_error(kind, &error),
                }
                futures::future::ready(())
            })
            .boxed();
        Self {
            kind,
            client,
            store,
            subscribers,
            drive: Mutex::new(Some(drive)),
        }
    }

    /// The cache.
    pub fn store(&self) -> &Store<K> {
        &self.store
    }

    /// The cached object `name` in `namespace`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.store.get(&ObjectRef::new(name).within(namespace))
    }

    /// `name` in `namespace` from the cache or, on a miss, from the API server: the cache may
    /// not show yet an object created a moment ago. The fresh read is a consistent list by
    /// name (the role grants lists of every kind, `get` of only some).
    pub async fn get_or_fetch(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<K>>, kube::Error> {
        if let Some(cached) = self.get(namespace, name) {
            return Ok(Some(cached));
        }
        let by_name = kube::api::ListParams::default().fields(&format!("metadata.name={name}"));
        Ok(Api::<K>::namespaced(self.client.clone(), namespace)
            .list(&by_name)
            .await?
            .items
            .into_iter()
            .next()
            .map(Arc::new))
    }

    /// Every cached object of `namespace`.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        self.store
            .state()
            .into_iter()
            .filter(|o| o.meta().namespace.as_deref() == Some(namespace))
            .collect()
    }

    /// Every object of this kind as the watch applies or deletes it, starting with every
    /// object already cached (none before the first list: its objects come as events).
    pub fn subscribe(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let (sender, receiver) = unbounded();
        let mut subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let cached = self.store.state();
        subscribers.push(sender);
        futures::stream::iter(cached).chain(receiver)
    }

    /// A controller of this kind, triggered by this kind's watch and reading this cache.
    pub fn controller(&self) -> Controller<K> {
        Controller::for_shared_stream(self.subscribe(), self.store.clone())
    }

    /// Resolves once the first list has filled the cache.
    ///
    /// kube's readiness signal wakes only the last task that waited on it, and several
    /// controllers (each its own task) wait on the same caches: so ask again every 200 ms
    /// instead of waiting once.
    pub async fn ready(&self) -> bool {
        loop {
            let wait = self.store.wait_until_ready();
            match tokio::time::timeout(std::time::Duration::from_millis(200), wait).await {
                Ok(Ok(())) => return true,
                Ok(Err(_)) => {
                    tracing::error!(
                        kind = self.kind,
                        "the cache was dropped before its first list"
                    );
                    return false;
                }
                Err(_) => {}
            }
        }
    }

    fn take_drive(&self) -> Option<BoxFuture<'static, ()>> {
        self.drive
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// Sends what one watch event applied or deleted to every live subscriber.
fn dispatch<K>(subscribers: &Mutex<Vec<UnboundedSender<Arc<K>>>>, event: watcher::Event<K>)
where
    K: Resource + Clone,
{
    let object = match event {
        watcher::Event::Apply(object)
        | watcher::Event::InitApply(object)
        | watcher::Event::Delete(object) => Arc::new(object),
        watcher::Event::Init | watcher::Event::InitDone => return,
    };
    let mut subscribers = subscribers.lock().unwrap_or_else(PoisonError::into_inner);
    subscribers.retain(|subscriber| subscriber.unbounded_send(object.clone()).is_ok());
}

/// Drops what no controller reads from a cached object.
fn strip<K: Resource>(object: &mut K) {
    object.managed_fields_mut().clear();
    if let Some(annotations) = object.meta_mut().annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// The caches of every kind the controllers read.
pub struct Stores {
    /// Provisioning schemes.
    pub schemes: Shared<ProvScheme>,
    /// Machines.
    pub machines: Shared<ProvVm>,
    /// Scheme versions (ControllerRevisions labelled with their scheme).
    pub revisions: Shared<ControllerRevision>,
    /// Hosting units.
    pub units: Shared<HostingUnit>,
    /// Hypervisor connections.
    pub connections: Shared<HypervisorConnection>,
    /// Image definitions.
    pub definitions: Shared<ImageDefinition>,
    /// Image versions.
    pub versions: Shared<ImageVersion>,
    /// Image version specs (master and prepared).
    pub specs: Shared<ImageVersionSpec>,
    /// Identity pools.
    pub pools: Shared<IdentityPool>,
}

impl Stores {
    /// The caches over `namespace` (`None`: every namespace); nothing is watched until
    /// [`Stores::run`] is polled.
    pub fn new(client: &Client, namespace: Option<&str>) -> Self {
        fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
        where
            K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
        {
            match namespace {
                Some(namespace) => Api::namespaced(client.clone(), namespace),
                None => Api::all(client.clone()),
            }
        }
        let config = super::watcher_config;
        Self {
            schemes: Shared::new("ProvScheme", api(client, namespace), config()),
            machines: Shared::new("ProvVm", api(client, namespace), config()),
            revisions: Shared::new(
                "ControllerRevision",
                api(client, namespace),
                config().labels(LABEL_PROVSCHEME),
            ),
            units: Shared::new("HostingUnit", api(client, namespace), config()),
            connections: Shared::new("HypervisorConnection", api(client, namespace), config()),
            definitions: Shared::new("ImageDefinition", api(client, namespace), config()),
            versions: Shared::new("ImageVersion", api(client, namespace), config()),
            specs: Shared::new("ImageVersionSpec", api(client, namespace), config()),
            pools: Shared::new("IdentityPool", api(client, namespace), config()),
        }
    }

    /// The indices of identity pool `pool` that cached machines hold: those of every scheme
    /// of `namespace` drawing names from it.
    pub fn pool_indices(&self, namespace: &str, pool: &str) -> BTreeSet<u64> {
        let users: BTreeSet<String> = self
            .schemes
            .in_namespace(namespace)
            .iter()
            .filter(|s| s.spec.identity_pool_ref == pool)
            .map(|s| s.name_any())
            .collect();
        self.machines
            .in_namespace(namespace)
            .iter()
            .filter(|m| users.contains(&m.spec.prov_scheme_ref))
            .filter_map(|m| u64::try_from(m.spec.machine_index).ok())
            .collect()
    }

    /// Runs every watch; the first call drives them until dropped, later calls return at once.
    pub async fn run(&self) {
        let drives: Vec<BoxFuture<'static, ()>> = [
            self.schemes.take_drive(),
            self.machines.take_drive(),
            self.revisions.take_drive(),
            self.units.take_drive(),
            self.connections.take_drive(),
            self.definitions.take_drive(),
            self.versions.take_drive(),
            self.specs.take_drive(),
            self.pools.take_drive(),
        ]
        .into_iter()
        .flatten()
        .collect();
        futures::future::join_all(drives).await;
    }

    /// Resolves once every cache has had its first list (false if one never can).
    pub async fn ready(&self) -> bool {
        let all = futures::future::join_all([
            self.schemes.ready().boxed(),
            self.machines.ready().boxed(),
            self.revisions.ready().boxed(),
            self.units.ready().boxed(),
            self.connections.ready().boxed(),
            self.definitions.ready().boxed(),
            self.versions.ready().boxed(),
            self.specs.ready().boxed(),
            self.pools.ready().boxed(),
        ])
        .await;
        all.into_iter().all(|ready| ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DesiredPowerState, ProvVmSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    fn machine(name: &str) -> ProvVm {
        ProvVm::new(
            name,
            ProvVmSpec {
                prov_scheme_ref: "s".into(),
                machine_name: name.to_uppercase(),
                machine_index: 1,
                power_state: DesiredPowerState::Stopped,
                overrides: None,
            },
        )
    }

    #[test]
    fn strip_drops_managed_fields_and_last_applied_only() {
        let mut machine = machine("m");
        machine.metadata.annotations = Some(
            [(LAST_APPLIED, "{}"), ("mcs.imaging.dev/retry", "true")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        );
        machine.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        strip(&mut machine);
        assert!(machine.managed_fields().is_empty());
        assert_eq!(
            machine.annotations().keys().collect::<Vec<_>>(),
            ["mcs.imaging.dev/retry"]
        );
    }

    #[tokio::test]
    async fn subscribers_get_each_event_until_they_hang_up() {
        let subscribers: Mutex<Vec<UnboundedSender<Arc<ProvVm>>>> = Mutex::default();
        let (first, mut first_rx) = unbounded();
        let (second, second_rx) = unbounded();
        subscribers.lock().unwrap().extend([first, second]);
        drop(second_rx);
        dispatch(&subscribers, watcher::Event::Init);
        dispatch(&subscribers, watcher::Event::Apply(machine("a")));
        dispatch(&subscribers, watcher::Event::InitDone);
        dispatch(&subscribers, watcher::Event::Delete(machine("b")));
        assert_eq!(
            subscribers.lock().unwrap().len(),
            1,
            "the hung-up one is gone"
        );
        assert_eq!(
            first_rx.next().await.map(|m| m.name_any()).as_deref(),
            Some("a")
        );
        assert_eq!(
            first_rx.next().await.map(|m| m.name_any()).as_deref(),
            Some("b")
        );
        drop(subscribers);
        assert!(first_rx.next().await.is_none());
    }
}
