//! The ProvScheme controller (`New-ProvScheme`, `Set-ProvScheme`, `Set-ProvSchemeImage`).
//!
//! A new scheme runs its task (`Processing -> LocatingResources -> ReplicatingMasterImage ->
//! CommittingScheme -> Finished`) and makes version 1. Afterwards every accepted change of the
//! configuration makes the next version (or reverts to a stored one), stored as a
//! ControllerRevision (see [`versions`]). A change that breaks a cross-object rule is rejected
//! with the SDK's reason in the `Degraded` condition and a Warning Event; the current version,
//! and every machine, stays as it was. `machineCount` creates and deletes ProvVM objects (at
//! most `initialBatchSizeHint` building at once, one Event per batch); their disks are the
//! ProvVM controller's work. The controller never writes `.spec`.
//!
//! Each reconcile is one pipeline: [`read`] gathers the scheme's world from the shared caches
//! (with the writes in flight of [`expectations`] laid over them), [`decide`] turns it into
//! writes and the desired status without I/O, [`apply`] makes the writes, [`report`] writes
//! the status (at most once per progress interval while only progress changes) and the Events.

pub mod apply;
pub mod decide;
pub mod expectations;
pub mod read;
pub mod report;
pub mod versions;

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::Event;
use kube::runtime::reflector::{ObjectRef, Store};

use super::conditions::DesiredCondition;
use super::{Context, ControllerError};
use crate::api::{IdentityPool, ImageVersionSpec, ProvScheme};

pub use decide::{
    MachineSlot, References, ScalePlan, Verdict, failure_state, judge, leaf_name, plan_scale,
    record_image, rejection_message, scheme_facts,
};

/// The name the controller's metrics, logs, field manager and cache readiness use.
pub const CONTROLLER: &str = "provscheme";
/// Finalizer that keeps a scheme until its machines (and their disks) are gone.
pub const FINALIZER: &str = "mcs.imaging.dev/provscheme-machines";
/// How many entries `status.imageHistory` keeps.
pub const IMAGE_HISTORY: usize = 10;
/// How many machines build at once when `initialBatchSizeHint` is not set.
pub const DEFAULT_BATCH: usize = 100;

/// What every reconcile of this controller gets: the operator's context and the writes in
/// flight.
pub struct SchemeContext {
    /// The operator's context (client, caches, settings).
    pub context: Arc<Context>,
    /// The writes the caches do not show yet.
    pub expectations: expectations::Expectations,
}

async fn reconcile(
    scheme: Arc<ProvScheme>,
    shared: Arc<SchemeContext>,
) -> Result<Action, ControllerError> {
    let _timer = crate::metrics::global().reconcile(CONTROLLER);
    let (context, expectations) = (shared.context.as_ref(), &shared.expectations);
    let namespace = scheme.namespace().ok_or(ControllerError::MissingMetadata {
        kind: "ProvScheme",
        field: "namespace",
    })?;
    if let Some(action) = apply::lifecycle(&scheme, context, expectations, &namespace).await? {
        return Ok(action);
    }
    let now = Timestamp::now();
    let mut observed = read::read(
        scheme,
        &namespace,
        &context.stores,
        expectations,
        Instant::now(),
    );
    read::confirm_missing(&mut observed.refs, context, &namespace, &observed.scheme).await?;
    let mut versions = decide::plan_versions(
        &observed.scheme,
        &observed.status,
        observed.highest,
        &observed.stored,
        &read::referenced(&observed),
        &observed.refs,
        now,
    )?;
    apply::write_versions(&observed, &versions, context, expectations).await?;
    let machines = scale(
        &observed,
        versions.current(&observed.status),
        context,
        expectations,
    )
    .await?;
    let status = decide::desired_status(
        &observed.scheme,
        &observed.status,
        &versions,
        machines.counts,
        &machines.conditions,
        now,
    );
    let write = report::status(&observed, &status, context, expectations).await?;
    apply::consume_annotations(&observed.scheme, context, &namespace).await?;
    let mut notices = std::mem::take(&mut versions.notices);
    notices.extend(machines.notices);
    report::publish(&observed, notices, context).await;
    if let Some(error) = machines.error {
        return Err(error);
    }
    let resync = context.config.resync;
    Ok(Action::requeue(decide::requeue(
        versions.waits(),
        machines.short,
        write,
        resync,
    )))
}

/// The outcome of the machines step.
struct Machines {
    counts: decide::Counts,
    conditions: Vec<DesiredCondition>,
    notices: Vec<Event>,
    short: bool,
    error: Option<ControllerError>,
}

/// The machines step: once a version is current and the identity pool exists, plans and makes
/// the creations and deletions; counts the machines either way.
async fn scale(
    observed: &read::Observed,
    current: Option<u32>,
    context: &Context,
    expectations: &expectations::Expectations,
) -> Result<Machines, ControllerError> {
    let mut live = observed.live();
    let in_flight = observed.creations.len();
    let mut out = Machines {
        counts: decide::counts(&live, in_flight),
        conditions: Vec::new(),
        notices: Vec::new(),
        short: false,
        error: None,
    };
    let (Some(_), Some(pool)) = (current, observed.refs.identity_pool.as_ref()) else {
        return Ok(out);
    };
    let creations = observed
        .creations
        .iter()
        .map(|c| (c.object.clone(), c.index));
    let slots = decide::slots(&live, creations);
    let (naming, plan) = decide::plan_machines(&observed.scheme, pool, &slots, &observed.used)?;
    if plan.exhausted {
        out.conditions.push(decide::exhausted(pool));
    }
    let scaled = apply::scale(observed, &naming, &plan, context, expectations).await;
    if !scaled.created.is_empty() || !scaled.deleted.is_empty() {
        tracing::info!(scheme = %observed.name, created = scaled.created.len(), deleted = scaled.deleted.len(), "scaled machines");
    }
    live.retain(|m| !scaled.deleted.contains(&m.name_any()));
    out.counts = decide::counts(&live, in_flight + scaled.created.len());
    let desired = usize::try_from(observed.scheme.spec.machine_count).unwrap_or(0);
    out.short = slots.len() + scaled.created.len() < desired;
    out.notices = decide::scale_events(&scaled.created, &scaled.deleted);
    out.error = scaled.error;
    Ok(out)
}

/// The schemes of `namespace` for which `refers` holds.
fn schemes_referring(
    schemes: &Store<ProvScheme>,
    namespace: Option<String>,
    refers: impl Fn(&ProvScheme) -> bool,
) -> Vec<ObjectRef<ProvScheme>> {
    schemes
        .state()
        .into_iter()
        .filter(|s| s.namespace() == namespace && refers(s))
        .map(|s| ObjectRef::from_obj(&*s))
        .collect()
}

/// Runs the ProvScheme controller until the stream ends: triggered by the shared caches of
/// schemes, their machines and revisions, image version specs and identity pools, once every
/// cache has had its first list.
pub async fn run(context: Arc<Context>) {
    let stores = &context.stores;
    let schemes = stores.schemes.store().clone();
    context.caches.track(CONTROLLER, schemes.clone());
    if !stores.ready().await {
        tracing::error!(
            controller = CONTROLLER,
            "the caches never synced; not running"
        );
        return;
    }
    let (by_spec, by_pool) = (schemes.clone(), schemes.clone());
    let controller = Controller::for_shared_stream(stores.schemes.subscribe(), schemes)
        .with_config(
            controller::Config::default()
                .concurrency(context.config.concurrency)
                .debounce(Duration::from_millis(300)),
        )
        .owns_shared_stream(stores.machines.subscribe())
        .owns_shared_stream(stores.revisions.subscribe())
        .watches_shared_stream(
            stores.specs.subscribe(),
            move |spec: Arc<ImageVersionSpec>| {
                schemes_referring(&by_spec, spec.namespace(), |s| {
                    s.spec.image_version_spec_ref == spec.name_any()
                })
            },
        )
        .watches_shared_stream(stores.pools.subscribe(), move |pool: Arc<IdentityPool>| {
            schemes_referring(&by_pool, pool.namespace(), |s| {
                s.spec.identity_pool_ref == pool.name_any()
            })
        });
    let shared = Arc::new(SchemeContext {
        context: context.clone(),
        expectations: expectations::Expectations::default(),
    });
    super::drain(
        CONTROLLER,
        controller.run(
            reconcile,
            super::error_policy(CONTROLLER, Duration::from_secs(2)),
            shared,
        ),
    )
    .await;
}
