//! The ImageVersionSpec controller.
//!
//! - A **master** spec (`Add-ProvImageVersionSpec`) resolves its snapshot path on its hosting
//!   unit and reports the master image, its disk size and `imageVersionSpecStatus`; failures are
//!   `HostingUnitNotFound`, `HostingUnitMismatch` (the unit's connection is not one of the
//!   definition's), `SnapshotNotFound`, `MasterImageNotASnapshot`, ...
//! - A **prepared** spec (`New-ProvImageVersionSpec`) runs the preparation task
//!   `Processing -> LocatingResources -> ConsolidatingMasterImage -> ReplicatingMasterImage ->
//!   StoringImageVersionSpec -> Finished` as a background job of the shared
//!   [`TaskRunner`](super::tasks::TaskRunner), records one instance per storage, honours the
//!   cancel and retry annotations, and survives operator restarts (the backend's prepare is
//!   idempotent and keyed by the spec's uid, so a restarted task finishes or redoes the work).
//! - Deletion waits (finalizer `mcs.imaging.dev/image-version-spec`, condition `Ready=False`
//!   reason `InUse` naming the users) while a provisioning scheme or a machine uses the spec,
//!   then removes the prepared disks unless `deletionPolicy: Retain`.
//!
//! Each reconcile is a pipeline: [`read`] gathers from the shared caches, [`decide`] (pure)
//! turns that into a plan, [`apply`] does the backend work, [`report`] writes the status and
//! publishes the Events.

pub mod apply;
pub mod decide;
pub mod read;
pub mod report;

use std::collections::BTreeSet;
use std::sync::Arc;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;

pub use decide::{
    LocatedMaster, SpecFailure, apply_result, check_master, check_unique, complete_prepare,
    image_status_of_task, image_step_percent, schemes_using, states_passed, task_conditions,
    users_of_specs, without_clock,
};
pub use read::{confirmed_users, schemes_and_machines, users};

use super::{Context, ControllerError};
use crate::api::{
    HostingUnit, ImageVersion, ImageVersionSpec, MasterImageSpec, PreparedImageSpec, ProvScheme,
};

const CONTROLLER: &str = "imageversionspec";
/// The finalizer that keeps a spec (and its disks) while it is in use.
pub const FINALIZER: &str = "mcs.imaging.dev/image-version-spec";

async fn reconcile(
    spec: Arc<ImageVersionSpec>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    let _timer = crate::metrics::global().reconcile(CONTROLLER);
    let api = context.api::<ImageVersionSpec>(&read::namespace_of(&spec)?);
    finalizer(&api, FINALIZER, spec, |event| async {
        match event {
            FinalizerEvent::Apply(spec) => match (&spec.spec.master, &spec.spec.prepared) {
                (Some(master), _) => reconcile_master(&spec, master, &context).await,
                (None, Some(prepared)) => reconcile_prepared(&spec, prepared, &context).await,
                (None, None) => Ok(Action::await_change()),
            },
            FinalizerEvent::Cleanup(spec) => cleanup(&spec, &context).await,
        }
    })
    .await
    .map_err(ControllerError::from)
}

/// A master spec: check, measure the snapshot, report.
async fn reconcile_master(
    spec: &ImageVersionSpec,
    master: &MasterImageSpec,
    context: &Context,
) -> Result<Action, ControllerError> {
    let observed = read::observe(context, spec)?;
    let resources = read::resources(context, &observed.namespace, spec).await?;
    let step = decide::master_step(spec, master, &resources);
    let outcome = apply::measure(step, resources.backend()).await;
    let (count, resync) = (observed.scheme_count, context.config.resync);
    let plan = decide::master_plan(spec, master, &outcome, count, Timestamp::now(), resync);
    let requeue = plan.requeue;
    report::master(context, spec, plan).await?;
    Ok(Action::requeue(requeue))
}

/// A prepared spec: decide the task's next step, carry it out, report.
async fn reconcile_prepared(
    spec: &ImageVersionSpec,
    prepared: &PreparedImageSpec,
    context: &Context,
) -> Result<Action, ControllerError> {
    let observed = read::observe(context, spec)?;
    let (action, annotations) = decide::task_action(spec, observed.job.is_some());
    let resources = if decide::locates(action) {
        Some(read::resources(context, &observed.namespace, spec).await?)
    } else {
        None
    };
    let plan = decide::prepared(decide::PreparedInput {
        spec,
        action,
        annotations,
        job: observed.job.as_ref(),
        located: resources
            .as_ref()
            .map(|r| decide::locate_prepare(spec, prepared, r)),
        scheme_count: observed.scheme_count,
        storages: observed.storages,
        new_task_id: uuid::Uuid::new_v4().to_string(),
        now: Timestamp::now(),
        timing: decide::Timing {
            follow: context.tasks.follow_interval(),
            resync: context.config.resync,
        },
    });
    apply::prepared(context, spec, &observed, &plan, resources.as_ref()).await;
    let requeue = report::prepared(context, spec, &observed, plan).await?;
    Ok(Action::requeue(requeue))
}

/// A deleted spec: wait while it is in use, then remove (or retain) its prepared disks.
async fn cleanup(spec: &ImageVersionSpec, context: &Context) -> Result<Action, ControllerError> {
    let observed = read::observe(context, spec)?;
    let name = BTreeSet::from([observed.name.clone()]);
    // Data safety: this check reads through the API when the caches show no users (see
    // `read::confirmed_users`), since removing the disks cannot be undone.
    let users = read::confirmed_users(context, &observed.namespace, &name).await?;
    if !users.is_empty() {
        return Err(report::blocked(context, spec, &observed.name, users).await);
    }
    if spec.spec.prepared.is_some() {
        context.tasks.forget(&observed.key).await;
        let policy = spec.spec.deletion_policy;
        let current = spec.status.clone().unwrap_or_default();
        let removal =
            apply::remove_prepared_disks(context, spec, &observed.namespace, &current, policy)
                .await;
        let event = decide::disks_event(policy, removal)?;
        report::publish_all(context, spec, vec![event]).await;
    }
    Ok(Action::await_change())
}

/// Runs the ImageVersionSpec controller until the stream ends, on the shared caches: its own
/// specs, and the provisioning schemes (a new, changed or deleted scheme changes the count of
/// its spec), hosting units (of master specs) and image versions that trigger specs.
pub async fn run(context: Arc<Context>) {
    let stores = &context.stores;
    let specs = stores.specs.store().clone();
    context.caches.track(CONTROLLER, specs.clone());
    if !stores.ready().await {
        return;
    }
    let (by_unit, by_version) = (specs.clone(), specs);
    let results = stores
        .specs
        .controller()
        .trigger_backoff(super::trigger_backoff())
        .watches_shared_stream(stores.schemes.subscribe(), |scheme: Arc<ProvScheme>| {
            let namespace = scheme.namespace();
            namespace
                .filter(|_| super::image_version::changes_scheme_count(&scheme))
                .map(|ns| {
                    ObjectRef::<ImageVersionSpec>::new(&scheme.spec.image_version_spec_ref)
                        .within(&ns)
                })
        })
        .watches_shared_stream(stores.units.subscribe(), move |unit: Arc<HostingUnit>| {
            let name = unit.name_any();
            read::refs_where(&by_unit, unit.namespace(), |s: &ImageVersionSpec| {
                s.spec
                    .master
                    .as_ref()
                    .is_some_and(|m| m.hosting_unit_ref == name)
            })
        })
        .watches_shared_stream(
            stores.versions.subscribe(),
            move |version: Arc<ImageVersion>| {
                let name = version.name_any();
                read::refs_where(&by_version, version.namespace(), |s: &ImageVersionSpec| {
                    s.spec.image_version_ref == name
                })
            },
        )
        .run(
            reconcile,
            super::error_policy(CONTROLLER, std::time::Duration::from_secs(5)),
            context.clone(),
        );
    super::drain(CONTROLLER, results).await;
}
