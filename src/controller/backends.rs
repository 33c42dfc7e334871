//! Which backend does the work for a hosting unit: built from the hosting unit and its
//! connection, cached until either changes.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::{Client, ResourceExt};
use mcs_backend::{Backend, BackendError, LocalBackend, LocalConfig, Owner, StorageRootConfig};
use mcs_kubevirt::{
    ClientSource, KubeVirtBackend, KubeVirtConfig, NetworkConfig, StorageClassConfig,
};

use crate::api::{ConnectionType, DeletionPolicy, HostingUnit, HypervisorConnection};

impl From<DeletionPolicy> for mcs_backend::DeletionPolicy {
    fn from(policy: DeletionPolicy) -> Self {
        match policy {
            DeletionPolicy::Delete => Self::Delete,
            DeletionPolicy::Retain => Self::Retain,
        }
    }
}

/// `object` as the [`Owner`] of what a backend writes for it (KubeVirt: owner references in
/// its namespace unless `policy` is `Retain`); `None` when it has no namespace, name or uid.
pub fn owner<K>(object: &K, policy: DeletionPolicy) -> Option<Owner>
where
    K: kube::Resource<DynamicType = ()>,
{
    let meta = object.meta();
    Some(Owner {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        namespace: meta.namespace.clone()?,
        name: meta.name.clone()?,
        uid: meta.uid.clone()?,
        policy: policy.into(),
    })
}

/// A cached backend and the resource versions (hosting unit, connection) it was built from.
type CachedBackend = (String, Arc<dyn Backend>);

/// Backends by hosting unit, rebuilt when the hosting unit or its connection changes.
#[derive(Default)]
pub struct BackendRegistry {
    cache: Mutex<HashMap<String, CachedBackend>>,
    client: Option<Client>,
    /// Notified when a `KubeVirt` backend on the operator's own cluster is built.
    kubevirt_here: Arc<tokio::sync::Notify>,
}

impl BackendRegistry {
    /// Resolves once a `KubeVirt` backend on the operator's own cluster has been built (at
    /// once if one was before), so that watches of KubeVirt objects start only when used.
    pub fn kubevirt_used(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let notify = self.kubevirt_here.clone();
        async move { notify.notified().await }
    }

    /// A registry whose `KubeVirt` backends use `client` (the operator's own cluster, or to
    /// read a remote cluster's kubeconfig Secret). Without a client, `KubeVirt` is refused.
    pub fn with_client(client: Client) -> Self {
        Self {
            cache: Mutex::default(),
            client: Some(client),
            kubevirt_here: Arc::default(),
        }
    }

    /// The backend for `unit` on `connection`. The `Local` backend sees one storage per storage
    /// of the hosting unit, at `<root path>/<storage path>`; a storage path that is absolute or
    /// climbs out of its root is refused.
    pub fn for_hosting_unit(
        &self,
        unit: &HostingUnit,
        connection: &HypervisorConnection,
    ) -> Result<Arc<dyn Backend>, BackendError> {
        let key = format!(
            "{}/{}",
            unit.namespace().unwrap_or_default(),
            unit.name_any()
        );
        let version = format!(
            "{}:{}",
            unit.metadata
                .resource_version
                .as_deref()
                .unwrap_or_default(),
            connection
                .metadata
                .resource_version
                .as_deref()
                .unwrap_or_default()
        );
        if let Ok(cache) = self.cache.lock()
            && let Some((cached_version, backend)) = cache.get(&key)
            && *cached_version == version
        {
            return Ok(backend.clone());
        }
        let backend: Arc<dyn Backend> = match connection.spec.connection_type {
            ConnectionType::Local => Arc::new(LocalBackend::new(local_config(unit, connection)?)?),
            ConnectionType::KubeVirt => {
                let client = self
                    .client
                    .clone()
                    .ok_or_else(|| BackendError::NotSupported {
                        backend: "KubeVirt".into(),
                        operation: "any operation without a Kubernetes client".into(),
                    })?;
                let config = kubevirt_config(unit, connection)?;
                let source = match connection
                    .spec
                    .kube_virt
                    .as_ref()
                    .and_then(|k| k.kubeconfig_secret_ref.as_ref())
                {
                    None => {
                        self.kubevirt_here.notify_one();
                        ClientSource::Own(client)
                    }
                    Some(secret) => ClientSource::Kubeconfig {
                        client,
                        namespace: connection.namespace().unwrap_or_default(),
                        name: secret.name.clone(),
                        key: secret.key.clone().unwrap_or_else(|| "kubeconfig".into()),
                    },
                };
                Arc::new(KubeVirtBackend::new(config, source))
            }
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(key, (version, backend.clone()));
        }
        Ok(backend)
    }
}

/// The names of the hosting unit's security groups.
fn security_groups(unit: &HostingUnit) -> Vec<String> {
    unit.spec
        .security_groups
        .iter()
        .map(|g| g.name.clone())
        .collect()
}

/// The `Local` backend's settings for one hosting unit.
pub fn local_config(
    unit: &HostingUnit,
    connection: &HypervisorConnection,
) -> Result<LocalConfig, BackendError> {
    let local = connection
        .spec
        .local
        .as_ref()
        .ok_or_else(|| BackendError::NotSupported {
            backend: "Local".into(),
            operation: format!(
                "connection {} without spec.local settings",
                connection.name_any()
            ),
        })?;
    let mut storages = Vec::new();
    for storage in &unit.spec.storages {
        let root = local
            .storage_roots
            .iter()
            .find(|r| r.name == storage.root)
            .ok_or_else(|| BackendError::StorageNotFound {
                storage: storage.name.clone(),
                path: PathBuf::from(format!(
                    "spec.storages[{}].root: connection '{}' has no storage root '{}'",
                    storage.name,
                    connection.name_any(),
                    storage.root
                )),
            })?;
        storages.push(StorageRootConfig {
            name: storage.name.clone(),
            path: join_confined(Path::new(&root.path), storage.path.as_deref())?,
        });
    }
    Ok(LocalConfig {
        storages,
        networks: unit.spec.networks.iter().map(|n| n.name.clone()).collect(),
        security_groups: security_groups(unit),
        service_offerings: unit
            .spec
            .service_offerings
            .iter()
            .map(|o| mcs_backend::ServiceOffering {
                name: o.name.clone(),
                cpu: u32::try_from(o.cpu_count).unwrap_or(1),
                memory_mb: u64::try_from(o.memory_mb).unwrap_or(1),
            })
            .collect(),
        max_parallel: local
            .max_concurrent_operations
            .and_then(|n| usize::try_from(n).ok()),
        qemu_timeout: Duration::from_secs(
            local
                .operation_timeout_seconds
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(3600),
        ),
        copy_rate_limit: local
            .max_copy_rate_mib_per_second
            .and_then(|rate| u64::try_from(rate).ok())
            .map(|rate| rate << 20),
        ..LocalConfig::default()
    })
}

/// The `KubeVirt` backend's settings for one hosting unit: each storage's `root` names one of
/// the connection's StorageClasses; storages have no `path`.
pub fn kubevirt_config(
    unit: &HostingUnit,
    connection: &HypervisorConnection,
) -> Result<KubeVirtConfig, BackendError> {
    let kubevirt =
        connection
            .spec
            .kube_virt
            .as_ref()
            .ok_or_else(|| BackendError::NotSupported {
                backend: "KubeVirt".into(),
                operation: format!(
                    "connection {} without spec.kubeVirt settings",
                    connection.name_any()
                ),
            })?;
    let mut storages = Vec::new();
    for storage in &unit.spec.storages {
        let class = kubevirt
            .storage_classes
            .iter()
            .find(|c| c.name == storage.root)
            .ok_or_else(|| BackendError::StorageNotFound {
                storage: storage.name.clone(),
                path: PathBuf::new(),
            })?;
        if storage.path.as_deref().is_some_and(|p| !p.is_empty()) {
            return Err(BackendError::NotSupported {
                backend: "KubeVirt".into(),
                operation: format!(
                    "spec.storages[{}].path: a KubeVirt storage is a StorageClass and has no path",
                    storage.name
                ),
            });
        }
        storages.push(StorageClassConfig {
            name: storage.name.clone(),
            storage_class: class.storage_class_name.clone(),
        });
    }
    Ok(KubeVirtConfig {
        namespace: kubevirt.namespace.clone(),
        storages,
        networks: unit
            .spec
            .networks
            .iter()
            .map(|n| NetworkConfig {
                name: n.name.clone(),
                attachment: n.backing.clone().filter(|b| !b.is_empty()),
            })
            .collect(),
        security_groups: security_groups(unit),
        poll_interval: Duration::from_millis(500),
    })
}

/// The root path of every storage of `unit`, by storage name: a directory for `Local`, the
/// pseudo path [`mcs_kubevirt::storage_root`] for `KubeVirt`. Prepared images and machines
/// are reported relative to these.
pub fn storage_roots(
    unit: &HostingUnit,
    connection: &HypervisorConnection,
) -> Result<Vec<(String, PathBuf)>, BackendError> {
    Ok(match connection.spec.connection_type {
        ConnectionType::Local => local_config(unit, connection)?
            .storages
            .into_iter()
            .map(|s| (s.name, s.path))
            .collect(),
        ConnectionType::KubeVirt => {
            let config = kubevirt_config(unit, connection)?;
            config
                .storages
                .into_iter()
                .map(|s| {
                    let root = mcs_kubevirt::storage_root(&config.namespace, &s.name);
                    (s.name, root)
                })
                .collect()
        }
    })
}

/// `root` joined with a relative `sub` path that may not be absolute nor contain `..`, and
/// that, when it exists, must resolve under the root: a storage path that is (or passes
/// through) a symlink out of the root would let the backend write outside every storage root.
fn join_confined(root: &Path, sub: Option<&str>) -> Result<PathBuf, BackendError> {
    let Some(sub) = sub.filter(|s| !s.is_empty()) else {
        return Ok(root.to_path_buf());
    };
    let relative = Path::new(sub);
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(BackendError::PathOutsideStorage {
            path: relative.to_path_buf(),
        });
    }
    let joined = root.join(relative);
    // The deepest part of the path that exists must resolve under the root (what does not
    // exist yet would be created through it).
    let mut probe = joined.as_path();
    let real = loop {
        match std::fs::canonicalize(probe) {
            Ok(real) => break Some(real),
            Err(_) => match probe.parent() {
                Some(parent) if parent.starts_with(root) => probe = parent,
                _ => break None,
            },
        }
    };
    if let (Ok(real_root), Some(real)) = (std::fs::canonicalize(root), real)
        && !real.starts_with(&real_root)
    {
        return Err(BackendError::PathOutsideStorage { path: joined });
    }
    Ok(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_paths_stay_under_their_root() {
        let root = Path::new("/var/lib/mcs");
        assert_eq!(join_confined(root, None).expect("root"), root);
        assert_eq!(
            join_confined(root, Some("lab/a")).expect("sub"),
            root.join("lab/a")
        );
        for bad in ["../etc", "/etc", "lab/../../x", "./x"] {
            assert!(
                join_confined(root, Some(bad)).is_err(),
                "{bad} must be refused"
            );
        }
    }

    #[test]
    fn a_storage_path_through_a_symlink_out_of_the_root_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("inside")).expect("root");
        std::fs::create_dir_all(&outside).expect("outside");
        std::os::unix::fs::symlink(&outside, root.join("escape")).expect("link");
        std::os::unix::fs::symlink(root.join("inside"), root.join("alias")).expect("link");
        for bad in ["escape", "escape/sub"] {
            let error = join_confined(&root, Some(bad)).expect_err(bad);
            assert_eq!(
                mcs_domain::Reason::reason(&error),
                "PathOutsideStorage",
                "{bad}"
            );
        }
        assert_eq!(
            join_confined(&root, Some("alias")).expect("a link inside the root"),
            root.join("alias")
        );
        assert_eq!(
            join_confined(&root, Some("not/yet")).expect("missing is fine"),
            root.join("not/yet")
        );
    }
}
