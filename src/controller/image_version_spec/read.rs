//! Gathers what a reconcile of a spec decides on, from the shared caches
//! ([`Context::stores`](crate::controller::Context)) into plain values.
//!
//! A reference the cache does not hold is confirmed by a fresh read: an object applied a moment
//! ago may not have reached the cache yet (each kind has its own watch), and a miss is rare in
//! the steady state (a reference to an object that does not exist). The deletion-time usage
//! check ([`confirmed_users`]) reads through the API as well before it lets data go.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;

use kube::api::ListParams;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use mcs_backend::Backend;
use mcs_domain::task::TaskState;

use super::decide::{SpecFailure, schemes_using, users_of_specs};
use crate::api::{
    HostingUnit, ImageDefinition, ImageVersion, ImageVersionSpec, ImageVersionSpecStatus,
    ProvScheme, ProvVm,
};
use crate::controller::stores::Stores;
use crate::controller::tasks::JobSnapshot;
use crate::controller::{Context, ControllerError};

/// The namespace of `spec`.
pub fn namespace_of(spec: &ImageVersionSpec) -> Result<String, ControllerError> {
    spec.namespace().ok_or(ControllerError::MissingMetadata {
        kind: "ImageVersionSpec",
        field: "namespace",
    })
}

/// The key of a spec's job in the task runner.
pub fn job_key(namespace: &str, name: &str) -> String {
    format!("imageversionspec/{namespace}/{name}")
}

/// What every reconcile of a spec reads first.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The spec's namespace.
    pub namespace: String,
    /// The spec's name.
    pub name: String,
    /// The key of its job in the task runner.
    pub key: String,
    /// How many provisioning schemes reference it.
    pub scheme_count: i32,
    /// What this process's job for its task last reported.
    pub job: Option<JobSnapshot>,
    /// How many storages its hosting unit has (1 when unknown), for the progress mapping.
    pub storages: usize,
}

/// Reads what every reconcile of `spec` needs, from the caches and the task runner.
pub fn observe(context: &Context, spec: &ImageVersionSpec) -> Result<Observed, ControllerError> {
    let namespace = namespace_of(spec)?;
    let name = spec.name_any();
    let key = job_key(&namespace, &name);
    let status = spec.status.as_ref();
    let job = status
        .and_then(|s| s.task.as_ref())
        .and_then(|t| context.tasks.snapshot_of(&key, &t.task_id));
    let schemes = context.stores.schemes.in_namespace(&namespace);
    Ok(Observed {
        scheme_count: schemes_using(
            &BTreeSet::from([name.clone()]),
            schemes.iter().map(|s| &**s),
        ),
        storages: storages(&context.stores, &namespace, status),
        job,
        namespace,
        name,
        key,
    })
}

/// How many storages the hosting unit named in `status` has (1 when unknown).
fn storages(stores: &Stores, namespace: &str, status: Option<&ImageVersionSpecStatus>) -> usize {
    status
        .and_then(|s| s.hosting_unit_name.as_deref())
        .and_then(|unit| stores.units.get(namespace, unit))
        .map_or(1, |u| u.spec.storages.len())
}

/// The objects a master spec resolves against, or a prepared spec locates its prepare with.
#[derive(Clone)]
pub struct Resources {
    /// The spec's image version.
    pub version: Option<Arc<ImageVersion>>,
    /// The version's image definition.
    pub definition: Option<Arc<ImageDefinition>>,
    /// A prepared spec's source spec.
    pub source: Option<Arc<ImageVersionSpec>>,
    /// Every spec of the namespace (a prepared spec's uniqueness check).
    pub specs: Vec<Arc<ImageVersionSpec>>,
    /// The hosting unit of the master (the spec's own, or the source spec's).
    pub unit: Option<Arc<HostingUnit>>,
    /// The unit's backend, or why there is none (`None` without a unit).
    pub backend: Option<Result<Arc<dyn Backend>, SpecFailure>>,
}

impl Resources {
    /// The backend, when there is one.
    pub fn backend(&self) -> Option<&Arc<dyn Backend>> {
        self.backend.as_ref().and_then(|b| b.as_ref().ok())
    }
}

/// Reads the resources of `spec` in `namespace`.
pub async fn resources(
    context: &Context,
    namespace: &str,
    spec: &ImageVersionSpec,
) -> Result<Resources, ControllerError> {
    let stores = &context.stores;
    let version = stores
        .versions
        .get_or_fetch(namespace, &spec.spec.image_version_ref)
        .await?;
    let definition = match &version {
        Some(version) => {
            stores
                .definitions
                .get_or_fetch(namespace, &version.spec.image_definition_ref)
                .await?
        }
        None => None,
    };
    if definition.is_none() {
        // The spec fails (or waits) on its version or definition: nothing else is looked at.
        return Ok(Resources {
            version,
            definition,
            source: None,
            specs: Vec::new(),
            unit: None,
            backend: None,
        });
    }
    let (source, specs) = match &spec.spec.prepared {
        Some(prepared) => (
            stores
                .specs
                .get_or_fetch(namespace, &prepared.source_spec_ref)
                .await?,
            stores.specs.in_namespace(namespace),
        ),
        None => (None, Vec::new()),
    };
    let master = spec
        .spec
        .master
        .as_ref()
        .or_else(|| source.as_ref().and_then(|s| s.spec.master.as_ref()));
    let unit = match master {
        Some(master) => unit(context, namespace, &master.hosting_unit_ref).await?,
        None => None,
    };
    let backend = match &unit {
        Some(unit) => Some(backend_for(context, namespace, unit).await?),
        None => None,
    };
    Ok(Resources {
        version,
        definition,
        source,
        specs,
        unit,
        backend,
    })
}

/// The hosting unit `name` of `namespace`.
pub async fn unit(
    context: &Context,
    namespace: &str,
    name: &str,
) -> Result<Option<Arc<HostingUnit>>, ControllerError> {
    Ok(context.stores.units.get_or_fetch(namespace, name).await?)
}

/// The backend of `unit`, or why there is none.
pub async fn backend_for(
    context: &Context,
    namespace: &str,
    unit: &HostingUnit,
) -> Result<Result<Arc<dyn Backend>, SpecFailure>, ControllerError> {
    let connection = context
        .stores
        .connections
        .get_or_fetch(namespace, &unit.spec.connection_ref)
        .await?;
    let Some(connection) = connection else {
        return Ok(Err(SpecFailure::with_reason(
            TaskState::HostingUnitNotFound,
            "HypervisorConnectionNotFound",
            format!(
                "hosting unit '{}': spec.connectionRef: hypervisor connection '{}' was not found in the namespace",
                unit.name_any(),
                unit.spec.connection_ref
            ),
        )));
    };
    Ok(context
        .backends
        .for_hosting_unit(unit, &connection)
        .map_err(|e| SpecFailure::backend(&e, &format!("hosting unit '{}': ", unit.name_any()))))
}

/// Who uses any of `specs` in `namespace`, as the caches see it: provisioning schemes
/// referencing one, and machines built from one (sorted). For steady-state reporting; a
/// decision to let data go uses [`confirmed_users`].
pub fn users(stores: &Stores, namespace: &str, specs: &BTreeSet<String>) -> Vec<String> {
    let schemes = stores.schemes.in_namespace(namespace);
    let machines = stores.machines.in_namespace(namespace);
    users_of_specs(
        specs,
        schemes.iter().map(|s| &**s),
        machines.iter().map(|m| &**m),
    )
}

/// Who uses any of `specs` in `namespace`, for a deletion: the caches first (a spec they show
/// in use stays, without a request), and when they show none, a fresh list through the API.
///
/// Deleting a spec removes its prepared disks, so "no users" must not come from a cache that
/// may lag behind a scheme or machine created a moment ago; deletions are rare, so the
/// fresh read costs little.
pub async fn confirmed_users(
    context: &Context,
    namespace: &str,
    specs: &BTreeSet<String>,
) -> Result<Vec<String>, ControllerError> {
    let cached = users(&context.stores, namespace, specs);
    if !cached.is_empty() {
        return Ok(cached);
    }
    let (schemes, machines) = schemes_and_machines(context, namespace).await?;
    Ok(users_of_specs(specs, &schemes, &machines))
}

/// Lists the schemes and machines of `namespace` through the API (a fresh read, for the
/// deletion-time usage checks).
pub async fn schemes_and_machines(
    context: &Context,
    namespace: &str,
) -> Result<(Vec<ProvScheme>, Vec<ProvVm>), ControllerError> {
    let schemes = context
        .api::<ProvScheme>(namespace)
        .list(&ListParams::default())
        .await?
        .items;
    let machines = context
        .api::<ProvVm>(namespace)
        .list(&ListParams::default())
        .await?
        .items;
    Ok((schemes, machines))
}

/// References to the cached objects of `namespace` that `keep` accepts (a trigger's mapping
/// from another kind's object to the objects it concerns).
pub fn refs_where<K>(
    store: &Store<K>,
    namespace: Option<String>,
    keep: impl Fn(&K) -> bool,
) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .state()
        .into_iter()
        .filter(|o| o.meta().namespace == namespace && keep(o))
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}
