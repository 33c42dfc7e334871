//! Which controllers' caches have synced: the `caches` check of `/readyz`.

use std::collections::BTreeMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Resource;
use kube::runtime::reflector::Store;

/// The controllers `run` starts, by the name they track their cache under.
pub const CONTROLLERS: [&str; 8] = [
    "hypervisorconnection",
    "hostingunit",
    "identitypool",
    "imagedefinition",
    "imageversion",
    "imageversionspec",
    "provscheme",
    "provvm",
];

/// Whether each controller's cache has finished its first list.
#[derive(Clone, Debug, Default)]
pub struct CacheReadiness {
    synced: Arc<Mutex<BTreeMap<&'static str, bool>>>,
}

impl CacheReadiness {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, bool>> {
        self.synced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Tracks the cache of `controller`: it counts as synced once `store` is ready.
    pub fn track<K>(&self, controller: &'static str, store: Store<K>)
    where
        K: Resource + Clone + Send + Sync + 'static,
        K::DynamicType: Eq + Hash + Clone + Send + Sync,
    {
        self.lock().insert(controller, false);
        let this = self.clone();
        tokio::spawn(async move {
            // kube's readiness signal wakes only the last task that waited on it (the
            // controller's own runner), so ask again every half second instead of waiting once.
            loop {
                match tokio::time::timeout(Duration::from_millis(500), store.wait_until_ready())
                    .await
                {
                    Ok(Ok(())) => {
                        this.lock().insert(controller, true);
                        return;
                    }
                    Ok(Err(_)) => return,
                    Err(_) => {}
                }
            }
        });
    }

    /// The controllers of [`CONTROLLERS`] whose cache has not synced yet (or not started).
    pub fn pending(&self) -> Vec<&'static str> {
        let synced = self.lock();
        CONTROLLERS
            .iter()
            .copied()
            .filter(|name| synced.get(name) != Some(&true))
            .collect()
    }
}
