//! The ImageVersion controller: assigns `versionNumber` once, aggregates
//! `imageVersionStatus` from the version's specs, counts its specs and the provisioning schemes
//! using them, and keeps the version (finalizer `mcs.imaging.dev/image-version`) while a scheme
//! or machine uses one of its specs.
//!
//! Each reconcile is a pipeline: [`read`] gathers the specs and schemes from the shared caches
//! (and assigns the number), [`decide`] (pure) makes the status and Events, the reconcile
//! writes them.
//!
//! # Version numbers
//!
//! The counter lives on the ImageDefinition, in the annotation
//! [`ANNOTATION_LAST_VERSION`] = `"<number>:<uid of the version that got it>"`, and is advanced
//! with an optimistic-concurrency `replace` (a stale write gets 409 and is retried from a fresh
//! read). So two versions created at the same moment get different numbers; numbers only grow
//! (the next one is past the counter, the definition's `status.latestVersion` and every existing
//! version's number), so they are never reused after deletions. A version whose status write was
//! lost finds its own uid in the counter and gets the same number again.

pub mod decide;
pub mod read;

use std::sync::Arc;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;

pub use decide::{Counter, aggregate, changes_scheme_count, next_version};

use super::events::publish_event;
use super::image_version_spec::read::refs_where;
use super::status::{apply_status, field_manager};
use super::tasks::report_blocked_deletion;
use super::{Context, ControllerError};
use crate::api::{ImageDefinition, ImageVersion, ImageVersionSpec, ImageVersionStatus, ProvScheme};

const CONTROLLER: &str = "imageversion";
/// The finalizer that keeps a version while it is in use.
pub const FINALIZER: &str = "mcs.imaging.dev/image-version";
/// The version counter on an ImageDefinition: `"<number>:<uid>"`.
pub const ANNOTATION_LAST_VERSION: &str = "mcs.imaging.dev/last-version";

async fn reconcile(
    version: Arc<ImageVersion>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    let _timer = crate::metrics::global().reconcile(CONTROLLER);
    let api = context.api::<ImageVersion>(&read::namespace_of(&version)?);
    finalizer(&api, FINALIZER, version, |event| async {
        match event {
            FinalizerEvent::Apply(version) => apply(&version, &context).await,
            FinalizerEvent::Cleanup(version) => cleanup(&version, &context).await,
        }
    })
    .await
    .map_err(ControllerError::from)
}

/// Number, aggregate, count; write the status when it changed, then its Events.
async fn apply(version: &ImageVersion, context: &Context) -> Result<Action, ControllerError> {
    let observed = read::observe(context, version)?;
    let number = read::number(context, &observed.namespace, version).await?;
    let resync = context.config.resync;
    let plan = decide::plan(version, number, &observed, Timestamp::now(), resync);
    if plan.write {
        write(context, version, &plan.status).await?;
        for event in plan.events {
            publish_event(context, version, event).await;
        }
    }
    Ok(Action::requeue(plan.requeue))
}

/// Writes the status of `version`.
async fn write(
    context: &Context,
    version: &ImageVersion,
    status: &ImageVersionStatus,
) -> Result<(), ControllerError> {
    let api = context.api::<ImageVersion>(&read::namespace_of(version)?);
    apply_status(&api, version, &field_manager(CONTROLLER), status).await?;
    Ok(())
}

/// A deleted version waits while one of its specs is in use.
async fn cleanup(version: &ImageVersion, context: &Context) -> Result<Action, ControllerError> {
    let name = version.name_any();
    let users = read::users(context, &read::namespace_of(version)?, &name).await?;
    if users.is_empty() {
        return Ok(Action::await_change());
    }
    let error = ControllerError::InUse {
        object: format!("image version '{name}'"),
        users,
    };
    let current = version.status.clone().unwrap_or_default();
    report_blocked_deletion(
        context,
        version,
        &current.conditions,
        &error,
        |conditions| {
            let status = ImageVersionStatus {
                conditions,
                observed_generation: version.metadata.generation,
                ..current.clone()
            };
            async move { write(context, version, &status).await }
        },
    )
    .await?;
    Err(error)
}

/// Runs the ImageVersion controller until the stream ends, on the shared caches: its own
/// versions, and the specs (of a version), provisioning schemes (those that can change a
/// count, [`changes_scheme_count`]) and image definitions (of versions without a number) that
/// trigger versions.
pub async fn run(context: Arc<Context>) {
    let stores = &context.stores;
    let versions = stores.versions.store().clone();
    context.caches.track(CONTROLLER, versions.clone());
    if !stores.ready().await {
        return;
    }
    let (by_scheme, by_definition) = (versions.clone(), versions);
    let results = stores
        .versions
        .controller()
        .trigger_backoff(super::trigger_backoff())
        .watches_shared_stream(stores.specs.subscribe(), |spec: Arc<ImageVersionSpec>| {
            spec.namespace()
                .map(|ns| ObjectRef::<ImageVersion>::new(&spec.spec.image_version_ref).within(&ns))
        })
        .watches_shared_stream(
            stores.schemes.subscribe(),
            move |scheme: Arc<ProvScheme>| {
                if !changes_scheme_count(&scheme) {
                    return Vec::new();
                }
                refs_where(&by_scheme, scheme.namespace(), |_: &ImageVersion| true)
            },
        )
        .watches_shared_stream(
            stores.definitions.subscribe(),
            move |definition: Arc<ImageDefinition>| {
                let name = definition.name_any();
                refs_where(
                    &by_definition,
                    definition.namespace(),
                    |v: &ImageVersion| {
                        v.spec.image_definition_ref == name
                            && v.status.as_ref().is_none_or(|s| s.version_number.is_none())
                    },
                )
            },
        )
        .run(
            reconcile,
            super::error_policy(CONTROLLER, std::time::Duration::from_secs(5)),
            context.clone(),
        );
    super::drain(CONTROLLER, results).await;
}
