//! The last step of a reconcile: the scheme's status by server-side apply (only when the
//! decisions say so) and the Events.

use std::time::Instant;

use kube::ResourceExt;
use kube::runtime::events::Event;

use super::CONTROLLER;
use super::decide::{self, StatusWrite};
use super::expectations::{Expectations, WrittenStatus};
use super::read::Observed;
use crate::api::ProvSchemeStatus;
use crate::controller::status::{apply_status, field_manager};
use crate::controller::{Context, ControllerError, events};

/// Writes `desired` as the scheme's status when [`decide::status_write`] says now, and
/// remembers it until the cache shows it; returns that decision.
///
/// # Errors
///
/// When the apply fails.
pub async fn status(
    observed: &Observed,
    desired: &ProvSchemeStatus,
    context: &Context,
    expectations: &Expectations,
) -> Result<StatusWrite, ControllerError> {
    let write = decide::status_write(
        &observed.status,
        desired,
        observed.since_status_write,
        context.config.progress_interval,
    );
    if write != StatusWrite::Now {
        return Ok(write);
    }
    // The newest status known stands for the cached one (which may lag behind the last write).
    let mut scheme = observed.scheme.as_ref().clone();
    scheme.status = Some(observed.status.clone());
    let written = apply_status(
        &context.api(&observed.namespace),
        &scheme,
        &field_manager(CONTROLLER),
        desired,
    )
    .await?;
    expectations.status_written(
        &observed.namespace,
        &observed.name,
        WrittenStatus {
            uid: written.uid().unwrap_or_default(),
            status: written.status.unwrap_or_else(|| desired.clone()),
            at: Instant::now(),
        },
    );
    Ok(write)
}

/// Publishes `notices` about the scheme.
pub async fn publish(observed: &Observed, notices: Vec<Event>, context: &Context) {
    for event in notices {
        tracing::info!(scheme = %observed.name, reason = %event.reason, note = ?event.note, "event");
        events::publish_event(context, observed.scheme.as_ref(), event).await;
    }
}
