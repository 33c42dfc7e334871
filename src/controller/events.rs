//! Kubernetes Events about the operator's objects: one helper to publish them, and the
//! summaries that let one Event stand for a whole batch (one per batch of machines, not one
//! per machine).

use kube::Resource;
use kube::runtime::events::{Event, EventType};

use super::Context;
use super::conditions::{DesiredCondition, truncate};
use crate::api::Condition;

/// The longest note an Event gets (the API server allows 1 KiB).
const NOTE_LIMIT: usize = 1000;

/// An Event of `type_` with `reason`, `action` and `note`.
pub fn event(type_: EventType, reason: &str, action: &str, note: String) -> Event {
    Event {
        type_,
        reason: reason.into(),
        note: Some(truncate(&note, NOTE_LIMIT)),
        action: action.into(),
        secondary: None,
    }
}

/// Publishes an Event about `obj`; a failure to publish is logged, never fatal.
pub async fn publish<K>(
    context: &Context,
    obj: &K,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) where
    K: Resource<DynamicType = ()>,
{
    publish_event(context, obj, event(type_, reason, action, note)).await;
}

/// Publishes `event` about `obj`; a failure to publish is logged, never fatal.
pub async fn publish_event<K>(context: &Context, obj: &K, event: Event)
where
    K: Resource<DynamicType = ()>,
{
    if let Err(error) = context.recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::debug!(%error, reason = %event.reason, "event not published");
    }
}

/// The Event announcing that the Ready condition becomes `ready` (Normal when it holds, Warning
/// otherwise), or `None` when `current` already has Ready with that status and reason.
pub fn ready_transition(
    current: &[Condition],
    ready: &DesiredCondition,
    action: &str,
) -> Option<Event> {
    let status = if ready.status { "True" } else { "False" };
    let unchanged = current
        .iter()
        .any(|c| c.type_ == ready.type_ && c.status == status && c.reason == ready.reason);
    let type_ = if ready.status {
        EventType::Normal
    } else {
        EventType::Warning
    };
    (!unchanged).then(|| event(type_, &ready.reason, action, ready.message.clone()))
}

/// `names` as one short list for an Event note: the first `shown` in full, then how many more
/// (`VDI-001, VDI-002 and 98 more`).
pub fn summarize(names: &[String], shown: usize) -> String {
    match names.len() {
        0 => String::new(),
        n if n <= shown => names.join(", "),
        n => format!("{} and {} more", names[..shown].join(", "), n - shown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("VDI-{i:03}")).collect()
    }

    #[test]
    fn summaries_name_the_first_and_count_the_rest() {
        assert_eq!(summarize(&[], 3), "");
        assert_eq!(summarize(&names(2), 3), "VDI-001, VDI-002");
        assert_eq!(summarize(&names(3), 3), "VDI-001, VDI-002, VDI-003");
        assert_eq!(summarize(&names(100), 2), "VDI-001, VDI-002 and 98 more");
    }

    #[test]
    fn a_ready_change_is_announced_once() {
        let now = jiff::Timestamp::now();
        let failing = DesiredCondition::false_("Ready", "SnapshotNotFound", "gone");
        let announced = ready_transition(&[], &failing, "Validate").expect("new");
        assert_eq!(announced.type_, EventType::Warning);
        assert_eq!(announced.note.as_deref(), Some("gone"));
        let current =
            super::super::conditions::merge(&[], std::slice::from_ref(&failing), Some(1), now);
        assert!(ready_transition(&current, &failing, "Validate").is_none());
        let healthy = DesiredCondition::true_("Ready", "Available", "ok");
        let back = ready_transition(&current, &healthy, "Validate").expect("changed");
        assert_eq!(back.type_, EventType::Normal);
        assert_eq!(back.reason, "Available");
    }

    #[test]
    fn notes_are_cut_to_what_the_api_server_takes() {
        let note = "x".repeat(5000);
        let event = event(EventType::Normal, "Created", "Create", note);
        assert!(event.note.expect("a note").len() <= NOTE_LIMIT + 4);
    }
}
