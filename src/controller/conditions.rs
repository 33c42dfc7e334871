//! Standard conditions (`Ready`, `Progressing`, `Degraded`), computed without I/O.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The desired state of one condition; [`merge`] turns it into a stored [`Condition`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredCondition {
    /// The condition type, e.g. `Ready`.
    pub type_: &'static str,
    /// Whether the condition holds.
    pub status: bool,
    /// A stable UpperCamelCase reason (the SDK's error id where there is one).
    pub reason: String,
    /// A human-readable message.
    pub message: String,
}

impl DesiredCondition {
    /// A condition that holds.
    pub fn true_(
        type_: &'static str,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status: true,
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// A condition that does not hold.
    pub fn false_(
        type_: &'static str,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status: false,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Merges `desired` conditions into the `current` ones: `lastTransitionTime` moves only when a
/// condition's status changes, `observedGeneration` is always `generation`, and conditions of
/// other types are kept. The result is sorted by type so repeated applies are stable.
pub fn merge(
    current: &[Condition],
    desired: &[DesiredCondition],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = current
        .iter()
        .filter(|c| !desired.iter().any(|d| d.type_ == c.type_))
        .cloned()
        .collect();
    // Conditions are a list-map keyed by type: a type wanted twice keeps its last wish (a
    // later, more specific finding such as an exhausted identity pool overrides the
    // routine one), or a real API server rejects the whole status as a duplicate key.
    let last_of_type = |i: usize, wanted: &DesiredCondition| {
        !desired[i + 1..].iter().any(|d| d.type_ == wanted.type_)
    };
    for (_, wanted) in desired
        .iter()
        .enumerate()
        .filter(|(i, wanted)| last_of_type(*i, wanted))
    {
        let status = if wanted.status { "True" } else { "False" };
        let last_transition_time = current
            .iter()
            .find(|c| c.type_ == wanted.type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        out.push(Condition {
            type_: wanted.type_.to_string(),
            status: status.to_string(),
            reason: wanted.reason.clone(),
            message: truncate(&wanted.message, 32 * 1024),
            observed_generation: generation,
            last_transition_time,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// Cuts `text` to at most `max` bytes on a character boundary.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).expect("valid")
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let ready = [DesiredCondition::true_("Ready", "Available", "ok")];
        let first = merge(&[], &ready, Some(1), at(100));
        assert_eq!(first[0].last_transition_time, Time(at(100)));

        let again = merge(
            &first,
            &[DesiredCondition::true_("Ready", "Available", "still ok")],
            Some(2),
            at(200),
        );
        assert_eq!(again[0].last_transition_time, Time(at(100)));
        assert_eq!(again[0].observed_generation, Some(2));
        assert_eq!(again[0].message, "still ok");

        let flipped = merge(
            &again,
            &[DesiredCondition::false_("Ready", "StorageNotFound", "gone")],
            Some(2),
            at(300),
        );
        assert_eq!(flipped[0].last_transition_time, Time(at(300)));
        assert_eq!(flipped[0].status, "False");
        assert_eq!(flipped[0].reason, "StorageNotFound");
    }

    #[test]
    fn other_conditions_are_kept_and_order_is_stable() {
        let first = merge(
            &[],
            &[
                DesiredCondition::true_("Ready", "Available", ""),
                DesiredCondition::false_("Degraded", "AsExpected", ""),
            ],
            Some(1),
            at(1),
        );
        let second = merge(
            &first,
            &[DesiredCondition::true_("Progressing", "TaskRunning", "")],
            Some(1),
            at(2),
        );
        let types: Vec<_> = second.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Degraded", "Progressing", "Ready"]);
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let long = "é".repeat(40 * 1024);
        let merged = merge(
            &[],
            &[DesiredCondition::false_("Degraded", "X", long)],
            None,
            at(1),
        );
        assert!(merged[0].message.len() <= 32 * 1024);
        assert!(merged[0].message.chars().all(|c| c == 'é'));
    }

    #[test]
    fn a_type_wanted_twice_keeps_its_last_wish() {
        let merged = merge(
            &[],
            &[
                DesiredCondition::false_("Degraded", "AsExpected", "version 3 is current"),
                DesiredCondition::true_("Ready", "Available", "ok"),
                DesiredCondition::true_("Degraded", "IdentityPoolExhausted", "no free name"),
            ],
            Some(2),
            at(10),
        );
        let types: Vec<&str> = merged.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Degraded", "Ready"]);
        assert_eq!(merged[0].reason, "IdentityPoolExhausted");
        assert_eq!(merged[0].status, "True");
    }
}
