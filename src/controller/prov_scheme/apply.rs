//! The writes of a reconcile, besides the status: the finalizer, the versions
//! (ControllerRevisions and the highest-number annotation), machine creations and deletions,
//! and the consumed retry and cancel annotations. Each write is remembered in
//! [`super::expectations`] until the caches show it.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch};
use kube::runtime::controller::Action;
use mcs_domain::naming::NamingScheme;
use serde_json::json;

use super::decide::{self, ScalePlan, VersionPlan};
use super::expectations::{Creation, Expectations};
use super::read::{self, Observed};
use super::{FINALIZER, versions};
use crate::api::{ANNOTATION_CANCEL, ANNOTATION_RETRY, ProvScheme, ProvVm};
use crate::controller::{Context, ControllerError, strict};

/// How many machine creations (or deletions) are sent at once.
pub const WRITES_IN_FLIGHT: usize = 16;
/// How many machine creations are sent at once. A crash may leave gaps among the indices of a
/// batch; the next reconcile fills them, and as a machine's age is the scheme generation it was
/// created for (not its creation time), a later "newest first" scale-down removes the same
/// machines as in an uninterrupted life.
pub const CREATES_IN_FLIGHT: usize = WRITES_IN_FLIGHT;
/// How many indices are tried for one machine when names collide with another writer.
const NAME_ATTEMPTS: usize = 20;

/// The scheme's lifecycle before the pipeline: a scheme being deleted has its machines
/// deleted and then loses its finalizer; a scheme without the finalizer gets it. `Some` when
/// the reconcile ends here.
///
/// # Errors
///
/// When a request fails.
pub async fn lifecycle(
    scheme: &ProvScheme,
    context: &Context,
    expectations: &Expectations,
    namespace: &str,
) -> Result<Option<Action>, ControllerError> {
    let finalized = scheme.finalizers().iter().any(|f| f == FINALIZER);
    if scheme.metadata.deletion_timestamp.is_some() {
        if finalized {
            return cleanup(scheme, context, expectations, namespace)
                .await
                .map(Some);
        }
        return Ok(Some(Action::await_change()));
    }
    if finalized {
        return Ok(None);
    }
    let mut finalizers = scheme.finalizers().to_vec();
    finalizers.push(FINALIZER.to_owned());
    set_finalizers(&context.api(namespace), scheme, finalizers).await?;
    Ok(Some(Action::await_change()))
}

async fn set_finalizers(
    api: &Api<ProvScheme>,
    scheme: &ProvScheme,
    finalizers: Vec<String>,
) -> Result<(), ControllerError> {
    let patch = json!({
        "metadata": { "finalizers": finalizers, "resourceVersion": scheme.resource_version() }
    });
    api.patch(&scheme.name_any(), &strict::patch(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Deletes the scheme's machines and keeps the finalizer until they are gone. The machines
/// to delete come from the cache; that none is left is checked with a fresh list from the
/// API before the finalizer goes.
async fn cleanup(
    scheme: &ProvScheme,
    context: &Context,
    expectations: &Expectations,
    namespace: &str,
) -> Result<Action, ControllerError> {
    let name = scheme.name_any();
    expectations.forget(namespace, &name);
    let in_flight = expectations.view(namespace, &name, "").deleting;
    let cached: Vec<String> = context
        .stores
        .machines
        .in_namespace(namespace)
        .iter()
        .filter(|m| read::owned_by(m, &name))
        .map(|m| m.name_any())
        .collect();
    let remaining = if cached.is_empty() {
        fresh_machines(context, namespace, &name).await?
    } else {
        cached
    };
    let waiting: Vec<String> = remaining
        .iter()
        .filter(|m| !in_flight.contains(*m))
        .filter(|m| {
            context
                .stores
                .machines
                .get(namespace, m)
                .is_none_or(|c| c.metadata.deletion_timestamp.is_none())
        })
        .cloned()
        .collect();
    delete_machines(context, expectations, namespace, &name, &waiting).await?;
    if !remaining.is_empty() {
        tracing::info!(scheme = %name, remaining = remaining.len(), "waiting for machines to be deleted");
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let finalizers: Vec<String> = scheme
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    set_finalizers(&context.api(namespace), scheme, finalizers).await?;
    Ok(Action::await_change())
}

/// The names of the scheme's machines, read from the API (a fresh read that guards the
/// removal of the finalizer).
async fn fresh_machines(
    context: &Context,
    namespace: &str,
    scheme: &str,
) -> Result<Vec<String>, ControllerError> {
    let list = context
        .api::<ProvVm>(namespace)
        .list(&ListParams::default().labels(&versions::selector(scheme)))
        .await?;
    Ok(list
        .items
        .iter()
        .filter(|m| m.spec.prov_scheme_ref == scheme)
        .map(ResourceExt::name_any)
        .collect())
}

/// Writes the versioning step's versions: records the highest number (before pruning), makes
/// the new version, prunes; then remembers them until the caches show them.
///
/// # Errors
///
/// When a write fails, or a revision of the planned number holds another configuration.
pub async fn write_versions(
    observed: &Observed,
    plan: &VersionPlan,
    context: &Context,
    expectations: &Expectations,
) -> Result<(), ControllerError> {
    let scheme = observed.scheme.as_ref();
    let revisions = context.api(&observed.namespace);
    if let Some(created) = &plan.create {
        let changes = created.changes.clone().unwrap_or_default();
        versions::create(
            &revisions,
            scheme,
            created.number,
            &created.configuration,
            &changes,
        )
        .await
        .map_err(|e| ControllerError::Versions(e.to_string()))?;
    }
    if let Some(highest) = plan.record_highest {
        versions::record_highest(&context.api(&observed.namespace), scheme, highest).await?;
    }
    for pruned in &plan.prune {
        versions::delete(&revisions, &observed.name, *pruned).await?;
    }
    if plan.create.is_some() || !plan.prune.is_empty() || plan.record_highest.is_some() {
        expectations.versions_written(
            &observed.namespace,
            &observed.name,
            plan.create.clone(),
            &plan.prune,
            plan.highest,
            Instant::now(),
        );
    }
    Ok(())
}

/// What a scale step did.
#[derive(Debug, Default)]
pub struct Scaled {
    /// The machine names created.
    pub created: Vec<String>,
    /// The ProvVM objects deleted.
    pub deleted: Vec<String>,
    /// The first error, after the writes that could go out went out.
    pub error: Option<ControllerError>,
}

/// Creates machines as `plan` says, [`CREATES_IN_FLIGHT`] at a time, and deletes machines,
/// [`WRITES_IN_FLIGHT`] at a time. Each
/// name is reserved in `expectations` before its create, so no other reconcile issues it; a
/// name taken by another writer (409) moves to the next free index; a create without an answer
/// keeps its name reserved until the cache shows the machine or the reservation times out.
pub async fn scale(
    observed: &Observed,
    naming: &NamingScheme,
    plan: &ScalePlan,
    context: &Context,
    expectations: &Expectations,
) -> Scaled {
    let mut scaled = Scaled::default();
    let taken = Mutex::new(
        observed
            .used
            .iter()
            .chain(&plan.create)
            .copied()
            .collect::<BTreeSet<u64>>(),
    );
    let writer = Writer {
        observed,
        naming,
        expectations,
        taken: &taken,
        api: context.api(&observed.namespace),
    };
    let results: Vec<Result<Option<String>, ControllerError>> =
        futures::stream::iter(plan.create.clone())
            .map(|index| writer.create(index))
            .buffered(CREATES_IN_FLIGHT)
            .collect()
            .await;
    for result in results {
        match result {
            Ok(Some(name)) => scaled.created.push(name),
            Ok(None) => {}
            Err(error) => {
                scaled.error.get_or_insert(error);
            }
        }
    }
    scaled.created.sort();
    match delete_machines(
        context,
        expectations,
        &observed.namespace,
        &observed.name,
        &plan.delete,
    )
    .await
    {
        Ok(()) => scaled.deleted.clone_from(&plan.delete),
        Err(error) => {
            scaled.error.get_or_insert(error);
        }
    }
    scaled
}

/// The shared state of one scale step's concurrent creates.
struct Writer<'a> {
    observed: &'a Observed,
    naming: &'a NamingScheme,
    expectations: &'a Expectations,
    taken: &'a Mutex<BTreeSet<u64>>,
    api: Api<ProvVm>,
}

impl Writer<'_> {
    /// Creates the machine of `index`, or of the next free index when its name is taken;
    /// the machine name created, if any.
    async fn create(&self, index: u64) -> Result<Option<String>, ControllerError> {
        let observed = self.observed;
        let mut candidate = index;
        for _ in 0..NAME_ATTEMPTS {
            let machine = decide::new_machine(&observed.scheme, self.naming, candidate)?;
            let creation = Creation {
                object: machine.name_any(),
                scheme: observed.name.clone(),
                pool: observed.scheme.spec.identity_pool_ref.clone(),
                index: candidate,
            };
            let reserved =
                self.expectations
                    .reserve(&observed.namespace, creation.clone(), Instant::now());
            if reserved {
                match strict::create(&self.api, &machine).await {
                    Ok(_) => return Ok(Some(machine.spec.machine_name)),
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        self.expectations
                            .release(&observed.namespace, &creation.object);
                    }
                    Err(kube::Error::Api(status)) => {
                        self.expectations
                            .release(&observed.namespace, &creation.object);
                        return Err(kube::Error::Api(status).into());
                    }
                    // No answer: the machine may exist, so its name stays reserved until the
                    // cache shows it or the reservation times out.
                    Err(error) => return Err(error.into()),
                }
            }
            match self.next_free(candidate) {
                Some(next) => candidate = next,
                None => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Takes the lowest free index above `after`.
    fn next_free(&self, after: u64) -> Option<u64> {
        let mut taken = self
            .taken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        taken.insert(after);
        let next = (after + 1..self.naming.capacity()).find(|i| !taken.contains(i))?;
        taken.insert(next);
        Some(next)
    }
}

/// Deletes `objects` (machines of `scheme`), [`WRITES_IN_FLIGHT`] at a time; an object already
/// gone counts as deleted. Remembers the deletions until the cache shows them.
async fn delete_machines(
    context: &Context,
    expectations: &Expectations,
    namespace: &str,
    scheme: &str,
    objects: &[String],
) -> Result<(), ControllerError> {
    let api: Api<ProvVm> = context.api(namespace);
    let results: Vec<(String, Result<(), kube::Error>)> = futures::stream::iter(objects.to_vec())
        .map(|object| {
            let api = api.clone();
            async move {
                let result = match api.delete(&object, &DeleteParams::default()).await {
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                    other => other.map(|_| ()),
                };
                (object, result)
            }
        })
        .buffer_unordered(WRITES_IN_FLIGHT)
        .collect()
        .await;
    let mut deleted = Vec::new();
    let mut first_error = None;
    for (object, result) in results {
        match result {
            Ok(()) => deleted.push(object),
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    expectations.deleted(namespace, scheme, &deleted, Instant::now());
    first_error.map_or(Ok(()), |e| Err(e.into()))
}

/// Removes the retry and cancel annotations once read: a retry is consumed by the task it
/// started, and dropped when it cannot apply; a cancel is consumed by the task it stopped, or
/// dropped once the creation task has ended.
///
/// # Errors
///
/// When the patch fails.
pub async fn consume_annotations(
    scheme: &ProvScheme,
    context: &Context,
    namespace: &str,
) -> Result<(), ControllerError> {
    let consumed: serde_json::Map<String, serde_json::Value> =
        [ANNOTATION_RETRY, ANNOTATION_CANCEL]
            .into_iter()
            .filter(|key| scheme.annotations().contains_key(*key))
            .map(|key| (key.to_owned(), serde_json::Value::Null))
            .collect();
    if consumed.is_empty() {
        return Ok(());
    }
    let patch = json!({ "metadata": { "annotations": consumed } });
    context
        .api::<ProvScheme>(namespace)
        .patch(&scheme.name_any(), &strict::patch(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}
