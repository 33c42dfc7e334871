//! Which backend does the work for a hosting unit: built from the hosting unit and its
//! connection, cached until either changes.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::ResourceExt;
use mcs_backend::{Backend, BackendError, LocalBackend, LocalConfig, StorageRootConfig};

use crate::api::{ConnectionType, HostingUnit, HypervisorConnection};

/// A cached backend and the resource versions (hosting unit, connection) it was built from.
type CachedBackend = (String, Arc<dyn Backend>);

/// Backends by hosting unit, rebuilt when the hosting unit or its connection changes.
#[derive(Default)]
pub struct BackendRegistry {
    cache: Mutex<HashMap<String, CachedBackend>>,
}

impl BackendRegistry {
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
                return Err(BackendError::NotSupported {
                    backend: "KubeVirt".into(),
                    operation:
                        "any operation: the KubeVirt backend is not implemented yet; use type Local"
                            .into(),
                });
            }
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(key, (version, backend.clone()));
        }
        Ok(backend)
    }
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
                path: PathBuf::new(),
            })?;
        storages.push(StorageRootConfig {
            name: storage.name.clone(),
            path: join_confined(Path::new(&root.path), storage.path.as_deref())?,
        });
    }
    Ok(LocalConfig {
        storages,
        networks: unit.spec.networks.iter().map(|n| n.name.clone()).collect(),
        security_groups: unit
            .spec
            .security_groups
            .iter()
            .map(|g| g.name.clone())
            .collect(),
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

/// `root` joined with a relative `sub` path that may not be absolute nor contain `..`.
fn join_confined(root: &Path, sub: Option<&str>) -> Result<PathBuf, BackendError> {
    let Some(sub) = sub.filter(|s| !s.is_empty()) else {
        return Ok(root.to_path_buf());
    };
    let relative = Path::new(sub);
    if relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        Ok(root.join(relative))
    } else {
        Err(BackendError::PathOutsideStorage {
            path: relative.to_path_buf(),
        })
    }
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
}
