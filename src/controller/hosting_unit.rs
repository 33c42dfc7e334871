//! The HostingUnit controller: resolves the unit on its connection's backend and reports what
//! it offers (storages found and their free space, networks, service offerings, master images
//! and their snapshots) as inventory counts. A storage whose directory is missing makes the unit
//! `Ready=False` with reason `StorageNotFound`.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::Event;
use kube::runtime::reflector::ObjectRef;
use mcs_backend::{BackendError, Inventory, InventoryRequest, Operation, Output};
use mcs_domain::Reason as _;
use mcs_domain::rules::{NamedDirectory, check_distinct_directories};

use super::conditions::{DesiredCondition, merge};
use super::events;
use super::status::report;
use super::tasks::run_once;
use super::{Context, ControllerError};
use crate::api::{
    HostingUnit, HostingUnitInventory, HostingUnitSpec, HostingUnitStatus, HypervisorConnection,
    StorageInventory, condition_type,
};

const CONTROLLER: &str = "hostingunit";

/// What resolving one storage of the unit gave.
#[derive(Clone, Debug, PartialEq)]
pub enum StorageResult {
    /// The storage exists; what the backend found in it.
    Found(Inventory),
    /// The storage could not be resolved.
    Failed(BackendError),
}

/// The unit's inventory and conditions, decided from the per-storage results (in the order of
/// `spec.storages`).
pub fn decide(
    spec: &HostingUnitSpec,
    results: &[(String, StorageResult)],
) -> (HostingUnitInventory, Vec<DesiredCondition>) {
    let mut inventory = HostingUnitInventory {
        networks: count(spec.networks.len()),
        service_offerings: count(spec.service_offerings.len()),
        security_groups: count(spec.security_groups.len()),
        ..HostingUnitInventory::default()
    };
    let mut problems: Vec<(String, &'static str)> = Vec::new();
    let dirs: Vec<NamedDirectory> = spec
        .storages
        .iter()
        .map(|s| NamedDirectory::new(&s.name, Some(&s.root), s.path.as_deref().unwrap_or("")))
        .collect();
    for conflict in check_distinct_directories("spec.storages", &dirs, true) {
        problems.push((conflict.to_string(), conflict.reason()));
    }
    for (name, result) in results {
        match result {
            StorageResult::Found(found) => {
                inventory.storages_found += 1;
                inventory.master_images += count(found.master_images.len());
                inventory.snapshots +=
                    count(found.master_images.iter().map(|m| m.snapshots.len()).sum());
                inventory.storages.push(StorageInventory {
                    name: name.clone(),
                    found: true,
                    free_bytes: found
                        .storages
                        .first()
                        .and_then(|s| i64::try_from(s.available_bytes).ok()),
                });
            }
            StorageResult::Failed(error) => {
                problems.push((format!("spec.storages[{name}]: {error}"), error.reason()));
                inventory.storages.push(StorageInventory {
                    name: name.clone(),
                    found: false,
                    free_bytes: None,
                });
            }
        }
    }
    let conditions = match problems.first() {
        None => vec![
            DesiredCondition::true_(
                condition_type::READY,
                "Available",
                format!(
                    "{} storages, {} master images with {} snapshots",
                    inventory.storages_found, inventory.master_images, inventory.snapshots
                ),
            ),
            DesiredCondition::false_(condition_type::DEGRADED, "Available", "every storage found"),
        ],
        Some((_, reason)) => {
            let message = problems
                .iter()
                .map(|(m, _)| m.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            vec![
                DesiredCondition::false_(condition_type::READY, *reason, message.clone()),
                DesiredCondition::true_(condition_type::DEGRADED, *reason, message),
            ]
        }
    };
    (inventory, conditions)
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Conditions for a unit that could not be resolved at all (no connection, bad settings).
fn unresolved(reason: &str, message: String) -> Vec<DesiredCondition> {
    vec![
        DesiredCondition::false_(condition_type::READY, reason, message.clone()),
        DesiredCondition::true_(condition_type::DEGRADED, reason, message),
    ]
}

async fn resolve(
    unit: &HostingUnit,
    connection: &HypervisorConnection,
    context: &Context,
) -> Result<Vec<(String, StorageResult)>, BackendError> {
    let backend = context.backends.for_hosting_unit(unit, connection)?;
    let mut results = Vec::new();
    for storage in &unit.spec.storages {
        let op = Operation::ResolveInventory(InventoryRequest {
            hosting_unit: unit.name_any(),
            storages: vec![storage.name.clone()],
        });
        let result = match run_once(backend.as_ref(), op).await {
            Ok(Output::Inventory(inventory)) => StorageResult::Found(inventory),
            Ok(other) => StorageResult::Failed(BackendError::NotSupported {
                backend: backend.kind().to_string(),
                operation: format!("ResolveInventory answered with {other:?}"),
            }),
            Err(error) => StorageResult::Failed(error),
        };
        results.push((storage.name.clone(), result));
    }
    Ok(results)
}

/// What reconciling a unit found: its connection, and what the backend resolved.
pub enum Observed {
    /// `spec.connectionRef` names no connection of the namespace.
    NoConnection,
    /// The backend could not be reached or configured.
    Unresolved(BackendError),
    /// The backend's answer per storage.
    Resolved(Vec<(String, StorageResult)>),
}

/// Read: the connection from the shared cache, then the backend's inventory of each storage.
async fn read(unit: &HostingUnit, namespace: &str, context: &Context) -> Observed {
    let Some(connection) = context
        .stores
        .connections
        .get(namespace, &unit.spec.connection_ref)
    else {
        return Observed::NoConnection;
    };
    match resolve(unit, &connection, context).await {
        Ok(results) => Observed::Resolved(results),
        Err(error) => Observed::Unresolved(error),
    }
}

/// Decide (pure): the unit's status from what was observed (a failure keeps the last
/// inventory; free space that moved by less than the tolerance keeps its old figure), and the
/// Event when Ready changes.
pub fn desired_status(
    unit: &HostingUnit,
    observed: &Observed,
    now: Timestamp,
) -> (HostingUnitStatus, Option<Event>) {
    let current = unit.status.clone().unwrap_or_default();
    let (inventory, conditions) = match observed {
        Observed::NoConnection => (
            current.inventory.clone(),
            unresolved(
                "HypervisorConnectionNotFound",
                format!(
                    "spec.connectionRef: hypervisor connection '{}' was not found in the namespace",
                    unit.spec.connection_ref
                ),
            ),
        ),
        Observed::Unresolved(error) => (
            current.inventory.clone(),
            unresolved(error.reason(), format!("spec.storages: {error}")),
        ),
        Observed::Resolved(results) => {
            let (inventory, conditions) = decide(&unit.spec, results);
            (Some(inventory), conditions)
        }
    };
    let inventory = inventory.map(|mut next| {
        if let Some(before) = &current.inventory {
            settle_free_bytes(before, &mut next);
        }
        next
    });
    let generation = unit.metadata.generation;
    let event = conditions
        .iter()
        .find(|c| c.type_ == condition_type::READY)
        .and_then(|ready| events::ready_transition(&current.conditions, ready, "ResolveInventory"));
    let status = HostingUnitStatus {
        observed_generation: generation,
        inventory,
        conditions: merge(&current.conditions, &conditions, generation, now),
    };
    (status, event)
}

/// Read -> decide -> report: the status is written only when it changes; a healthy unit is
/// looked at again within a minute (free space), a failing one within seconds.
async fn reconcile(
    unit: Arc<HostingUnit>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    let _timer = crate::metrics::global().reconcile(CONTROLLER);
    let namespace = unit.namespace().ok_or(ControllerError::MissingMetadata {
        kind: "HostingUnit",
        field: "namespace",
    })?;
    let observed = read(&unit, &namespace, &context).await;
    let (status, event) = desired_status(&unit, &observed, Timestamp::now());
    report(
        &context,
        unit.as_ref(),
        CONTROLLER,
        unit.status.as_ref(),
        &status,
        event,
    )
    .await?;
    let healthy = status
        .conditions
        .iter()
        .any(|c| c.type_ == condition_type::READY && c.status == "True");
    Ok(Action::requeue(if healthy {
        context.config.resync.min(Duration::from_secs(60))
    } else {
        Duration::from_secs(10)
    }))
}

/// Runs the HostingUnit controller until the stream ends.
pub async fn run(context: Arc<Context>) {
    let stores = &context.stores;
    let units = stores.units.store().clone();
    context.caches.track(CONTROLLER, units.clone());
    if !stores.ready().await {
        return;
    }
    let results = stores
        .units
        .controller()
        .watches_shared_stream(
            stores.connections.subscribe(),
            move |connection: Arc<HypervisorConnection>| {
                let namespace = connection.namespace();
                let name = connection.name_any();
                units
                    .state()
                    .into_iter()
                    .filter(move |unit| {
                        unit.namespace() == namespace && unit.spec.connection_ref == name
                    })
                    .map(|unit| ObjectRef::from_obj(unit.as_ref()))
            },
        )
        .run(
            reconcile,
            super::error_policy(CONTROLLER, Duration::from_secs(5)),
            context.clone(),
        );
    super::drain(CONTROLLER, results).await;
}

/// How far a storage's free space must move before the status says so: 1 % of it, at least
/// 64 MiB. Without this, every write to the storage (etcd's or the machines' own) would make a
/// status write, which triggers the next reconcile, which sees new free space again.
const FREE_BYTES_TOLERANCE_MIN: i64 = 64 << 20;

/// Keeps the free bytes of `before` in `next` for each storage whose free space moved by less
/// than the tolerance, so that small changes make no status write.
pub fn settle_free_bytes(before: &HostingUnitInventory, next: &mut HostingUnitInventory) {
    for storage in &mut next.storages {
        let Some(old) = before
            .storages
            .iter()
            .find(|s| s.name == storage.name && s.found == storage.found)
            .and_then(|s| s.free_bytes)
        else {
            continue;
        };
        if let Some(new) = storage.free_bytes
            && (new - old).abs() < FREE_BYTES_TOLERANCE_MIN.max(old / 100)
        {
            storage.free_bytes = Some(old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{HostingUnitNetwork, HostingUnitStorage};
    use mcs_backend::{MasterImageInfo, StorageInfo};

    fn spec() -> HostingUnitSpec {
        HostingUnitSpec {
            connection_ref: "local".into(),
            storages: vec![
                HostingUnitStorage {
                    name: "primary".into(),
                    root: "images".into(),
                    path: None,
                },
                HostingUnitStorage {
                    name: "secondary".into(),
                    root: "fast".into(),
                    path: Some("lab".into()),
                },
            ],
            networks: vec![HostingUnitNetwork {
                name: "lan".into(),
                backing: None,
            }],
            service_offerings: vec![],
            security_groups: vec![],
        }
    }

    fn found(masters: usize, snapshots: usize, free: u64) -> StorageResult {
        StorageResult::Found(Inventory {
            storages: vec![StorageInfo {
                name: "s".into(),
                path: "/s".into(),
                available_bytes: free,
            }],
            master_images: (0..masters)
                .map(|i| MasterImageInfo {
                    path: format!("XDHyp:\\HostingUnits\\lab\\m{i}.vm"),
                    storage: "s".into(),
                    file: format!("/s/m{i}.qcow2").into(),
                    virtual_size: 1,
                    snapshots: (0..snapshots).map(|j| format!("s{j}")).collect(),
                })
                .collect(),
            ..Inventory::default()
        })
    }

    #[test]
    fn two_storages_on_one_directory_are_degraded_naming_the_field() {
        for path in [None, Some("."), Some("./")] {
            let mut spec = spec();
            spec.storages[1].root = "images".into();
            spec.storages[1].path = path.map(Into::into);
            let results = [
                ("primary".to_string(), found(0, 0, 1)),
                ("secondary".to_string(), found(0, 0, 1)),
            ];
            let (_, conditions) = decide(&spec, &results);
            assert_eq!(conditions[0].reason, "StorageDirectoryConflict", "{path:?}");
            assert!(!conditions[0].status);
            assert!(
                conditions[0]
                    .message
                    .starts_with("spec.storages[secondary]: "),
                "{}",
                conditions[0].message
            );
        }
    }

    #[test]
    fn counts_the_inventory() {
        let (inventory, conditions) = decide(
            &spec(),
            &[
                ("primary".into(), found(2, 1, 1000)),
                ("secondary".into(), found(0, 0, 500)),
            ],
        );
        assert_eq!(inventory.storages_found, 2);
        assert_eq!(inventory.master_images, 2);
        assert_eq!(inventory.snapshots, 2);
        assert_eq!(inventory.networks, 1);
        assert_eq!(inventory.service_offerings, 0);
        assert_eq!(inventory.storages[0].free_bytes, Some(1000));
        assert!(conditions[0].status);
    }

    #[test]
    fn a_missing_storage_is_storage_not_found() {
        let (inventory, conditions) = decide(
            &spec(),
            &[
                ("primary".into(), found(1, 1, 1000)),
                (
                    "secondary".into(),
                    StorageResult::Failed(BackendError::StorageNotFound {
                        storage: "secondary".into(),
                        path: "/srv/fast/lab".into(),
                    }),
                ),
            ],
        );
        assert_eq!(inventory.storages_found, 1);
        assert!(!inventory.storages[1].found);
        assert!(!conditions[0].status);
        assert_eq!(conditions[0].reason, "StorageNotFound");
        assert!(conditions[0].message.contains("spec.storages[secondary]"));
        assert!(conditions[1].status);
    }

    #[test]
    fn small_free_space_changes_make_no_status_change() {
        let storage = |free| StorageInventory {
            name: "images".into(),
            found: true,
            free_bytes: Some(free),
        };
        let before = HostingUnitInventory {
            storages: vec![storage(100 << 30)],
            ..HostingUnitInventory::default()
        };
        let mut next = HostingUnitInventory {
            storages: vec![storage((100 << 30) - (500 << 20))],
            ..HostingUnitInventory::default()
        };
        settle_free_bytes(&before, &mut next);
        assert_eq!(next, before, "500 MiB of 100 GiB is below 1 %");
        let mut next = HostingUnitInventory {
            storages: vec![storage(90 << 30)],
            ..HostingUnitInventory::default()
        };
        settle_free_bytes(&before, &mut next);
        assert_eq!(
            next.storages[0].free_bytes,
            Some(90 << 30),
            "10 % is reported"
        );
        let small = HostingUnitInventory {
            storages: vec![storage(1 << 30)],
            ..HostingUnitInventory::default()
        };
        let mut next = HostingUnitInventory {
            storages: vec![storage((1 << 30) - (65 << 20))],
            ..HostingUnitInventory::default()
        };
        settle_free_bytes(&small, &mut next);
        assert_eq!(
            next.storages[0].free_bytes,
            Some((1 << 30) - (65 << 20)),
            "64 MiB is reported"
        );
    }
}
