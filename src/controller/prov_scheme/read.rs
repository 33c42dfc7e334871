//! The first step of a reconcile: everything the decisions need, gathered from the shared
//! caches (never from the API) with this controller's writes in flight laid over them (see
//! [`super::expectations`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::ResourceExt;

use super::decide::{self, References};
use super::expectations::{Creation, Expectations, InFlight, Seen};
use super::versions::{self, StoredConfiguration};
use crate::api::{LABEL_PROVSCHEME, ProvScheme, ProvSchemeStatus, ProvVm};
use crate::controller::stores::Stores;
use crate::controller::{Context, ControllerError};

/// What one reconcile of a scheme starts from.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The scheme as cached.
    pub scheme: Arc<ProvScheme>,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its status: the last one this controller wrote while the cache does not show it yet,
    /// else the cached one.
    pub status: ProvSchemeStatus,
    /// How long ago this controller last wrote the status (`None`: not in this process).
    pub since_status_write: Option<Duration>,
    /// The highest version number recorded (on the scheme, or written and not cached yet).
    pub highest: u32,
    /// The objects the scheme refers to.
    pub refs: References,
    /// Its stored versions, oldest first.
    pub stored: Vec<StoredConfiguration>,
    /// Its machines as cached, without those this controller deleted.
    pub machines: Vec<Arc<ProvVm>>,
    /// Its machines created and not cached yet.
    pub creations: Vec<Creation>,
    /// The identity pool's indices in use by any scheme drawing from it, or reserved by a
    /// creation in flight.
    pub used: BTreeSet<u64>,
}

impl Observed {
    /// The machines not being deleted.
    pub fn live(&self) -> Vec<&ProvVm> {
        self.machines
            .iter()
            .filter(|m| m.metadata.deletion_timestamp.is_none())
            .map(AsRef::as_ref)
            .collect()
    }
}

/// Gathers what a reconcile of `scheme` needs from `stores`, with the writes in flight of
/// `expectations` (first dropping those the caches show by now).
pub fn read(
    scheme: Arc<ProvScheme>,
    namespace: &str,
    stores: &Stores,
    expectations: &Expectations,
    now: Instant,
) -> Observed {
    let name = scheme.name_any();
    expectations.settle(
        namespace,
        now,
        |object| match stores.machines.get(namespace, object) {
            None => Seen::Absent,
            Some(m) if m.metadata.deletion_timestamp.is_some() => Seen::Deleting,
            Some(_) => Seen::Present,
        },
        |scheme, number| {
            stores
                .revisions
                .get(namespace, &versions::revision_name(scheme, number))
                .is_some_and(|r| r.metadata.deletion_timestamp.is_none())
        },
        |scheme| {
            let cached = stores.schemes.get(namespace, scheme)?;
            Some((cached.uid()?, cached.status.clone().unwrap_or_default()))
        },
    );
    let pool_name = &scheme.spec.identity_pool_ref;
    let in_flight = expectations.view(namespace, &name, pool_name);
    let uid = scheme.uid();
    let written = in_flight
        .status
        .as_ref()
        .filter(|w| Some(&w.uid) == uid.as_ref());
    let status = written.map_or_else(
        || scheme.status.clone().unwrap_or_default(),
        |w| w.status.clone(),
    );
    let highest = versions::recorded_highest(&scheme).max(in_flight.highest);
    let stored = stored_versions(stores, namespace, &name, &in_flight);
    let machines: Vec<Arc<ProvVm>> = stores
        .machines
        .in_namespace(namespace)
        .into_iter()
        .filter(|m| owned_by(m, &name) && !in_flight.deleting.contains(&m.name_any()))
        .collect();
    let used = pool_indices(stores, namespace, pool_name, &in_flight);
    Observed {
        refs: references(stores, namespace, &scheme),
        since_status_write: in_flight
            .status_written
            .map(|at| now.saturating_duration_since(at)),
        namespace: namespace.to_owned(),
        name,
        status,
        highest,
        stored,
        machines,
        creations: in_flight.creations,
        used,
        scheme,
    }
}

/// Whether `machine` is one of `scheme`'s: it names the scheme and carries its label (a
/// hand-made ProvVM naming the scheme without the label is reported by the ProvVM controller,
/// never counted, scaled or deleted here).
pub fn owned_by(machine: &ProvVm, scheme: &str) -> bool {
    machine.spec.prov_scheme_ref == scheme
        && machine.labels().get(LABEL_PROVSCHEME).map(String::as_str) == Some(scheme)
}

/// The cached versions of `scheme`, with those created and not cached yet, without those
/// pruned and still cached.
fn stored_versions(
    stores: &Stores,
    namespace: &str,
    scheme: &str,
    in_flight: &InFlight,
) -> Vec<StoredConfiguration> {
    let mut stored = versions::stored_of(&stores.revisions.in_namespace(namespace), scheme);
    stored.retain(|s| !in_flight.pruned.contains(&s.number));
    for created in &in_flight.revisions {
        if !stored.iter().any(|s| s.number == created.number) {
            stored.push(created.clone());
        }
    }
    stored.sort_by_key(|s| s.number);
    stored
}

/// The indices of `pool` in use: by any cached machine of a scheme drawing from it, or
/// reserved by a creation in flight.
fn pool_indices(
    stores: &Stores,
    namespace: &str,
    pool: &str,
    in_flight: &InFlight,
) -> BTreeSet<u64> {
    let mut indices = stores.pool_indices(namespace, pool);
    indices.extend(in_flight.reserved.iter().copied());
    indices
}

/// The objects `scheme` refers to, from the caches.
fn references(stores: &Stores, namespace: &str, scheme: &ProvScheme) -> References {
    let spec = &scheme.spec;
    let image = owned(stores.specs.get(namespace, &spec.image_version_spec_ref));
    let definition = image
        .as_ref()
        .and_then(|i| stores.versions.get(namespace, &i.spec.image_version_ref))
        .and_then(|v| {
            stores
                .definitions
                .get(namespace, &v.spec.image_definition_ref)
        });
    References {
        hosting_unit: owned(stores.units.get(namespace, &spec.hosting_unit_ref)),
        identity_pool: owned(stores.pools.get(namespace, &spec.identity_pool_ref)),
        image,
        definition: owned(definition),
    }
}

/// Confirms the references the caches do not hold with the API server: a spec, unit or pool
/// applied together with the scheme (`kubectl apply -f examples/`) may reach its cache after
/// the scheme's event, and judging it missing would fail the scheme's creation task for good.
/// One consistent list by name per missing reference (lists are what the role grants), only
/// while something is missing.
pub async fn confirm_missing(
    refs: &mut References,
    context: &Context,
    namespace: &str,
    scheme: &ProvScheme,
) -> Result<(), ControllerError> {
    let spec = &scheme.spec;
    let stores = &context.stores;
    if refs.hosting_unit.is_none() {
        refs.hosting_unit = owned(
            stores
                .units
                .get_or_fetch(namespace, &spec.hosting_unit_ref)
                .await?,
        );
    }
    if refs.identity_pool.is_none() {
        refs.identity_pool = owned(
            stores
                .pools
                .get_or_fetch(namespace, &spec.identity_pool_ref)
                .await?,
        );
    }
    if refs.image.is_none() {
        refs.image = owned(
            stores
                .specs
                .get_or_fetch(namespace, &spec.image_version_spec_ref)
                .await?,
        );
    }
    if refs.definition.is_none()
        && let Some(image) = &refs.image
        && let Some(version) = owned(
            stores
                .versions
                .get_or_fetch(namespace, &image.spec.image_version_ref)
                .await?,
        )
    {
        let name = &version.spec.image_definition_ref;
        refs.definition = owned(stores.definitions.get_or_fetch(namespace, name).await?);
    }
    Ok(())
}

/// A cached object as an owned copy.
fn owned<K: Clone>(object: Option<Arc<K>>) -> Option<K> {
    object.map(Arc::unwrap_or_clone)
}

/// The versions `observed`'s machines run (being deleted or not).
pub fn referenced(observed: &Observed) -> BTreeSet<u32> {
    decide::referenced_versions(observed.machines.iter().map(AsRef::as_ref))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DesiredPowerState, ProvVmSpec};
    use std::collections::BTreeMap;

    #[test]
    fn only_labelled_machines_naming_the_scheme_are_its_own() {
        let mut machine = ProvVm::new(
            "vdi-001",
            ProvVmSpec {
                prov_scheme_ref: "s".into(),
                machine_name: "VDI-001".into(),
                machine_index: 1,
                power_state: DesiredPowerState::Stopped,
                overrides: None,
            },
        );
        assert!(!owned_by(&machine, "s"), "hand-made: no label");
        machine.metadata.labels = Some(BTreeMap::from([(LABEL_PROVSCHEME.into(), "s".into())]));
        assert!(owned_by(&machine, "s"));
        assert!(!owned_by(&machine, "t"));
    }
}
