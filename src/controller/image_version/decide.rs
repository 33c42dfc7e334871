//! The decisions of the ImageVersion controller: pure functions from what was read to the
//! version number, the aggregated status, the conditions and the Events.

use std::time::Duration;

use jiff::Timestamp;
use kube::runtime::events::{Event, EventType};

use super::read::Observed;
use crate::api::{ImageStatus, ImageVersion, ImageVersionStatus, ProvScheme, condition_type};
use crate::controller::conditions::{DesiredCondition, merge};
use crate::controller::events::event;

/// The parsed version counter of a definition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// The last number handed out (0: none yet).
    pub last: i64,
    /// The uid of the version that got it.
    pub assignee: Option<String>,
}

impl Counter {
    /// Parses the annotation; a missing or garbled one counts as 0.
    pub fn parse(value: Option<&str>) -> Self {
        let Some(value) = value else {
            return Self::default();
        };
        let (number, uid) = value.split_once(':').unwrap_or((value, ""));
        Self {
            last: number.trim().parse().unwrap_or(0).max(0),
            assignee: (!uid.is_empty()).then(|| uid.to_string()),
        }
    }

    /// The annotation's value.
    pub fn render(&self) -> String {
        format!("{}:{}", self.last, self.assignee.as_deref().unwrap_or(""))
    }
}

/// The number for version `uid`: the counter's own when it went to this version, else one past
/// everything ever seen (the counter, the definition's `latestVersion`, existing numbers).
/// Returns the number and the new counter to write (`None`: nothing to write).
pub fn next_version(
    counter: &Counter,
    latest_in_status: Option<i64>,
    highest_existing: Option<i64>,
    uid: &str,
) -> (i64, Option<Counter>) {
    if counter.assignee.as_deref() == Some(uid) && counter.last > 0 {
        return (counter.last, None);
    }
    let floor = counter
        .last
        .max(latest_in_status.unwrap_or(0))
        .max(highest_existing.unwrap_or(0));
    let number = floor + 1;
    (
        number,
        Some(Counter {
            last: number,
            assignee: Some(uid.to_string()),
        }),
    )
}

/// Aggregates a version's status from its specs' statuses: `InProgress` while any is, then
/// `Failed` if any failed, `Unknown` while any is unknown, `Success` when all succeeded
/// (`Unknown` without specs).
pub fn aggregate(statuses: &[ImageStatus]) -> ImageStatus {
    if statuses.is_empty() {
        ImageStatus::Unknown
    } else if statuses.contains(&ImageStatus::InProgress) {
        ImageStatus::InProgress
    } else if statuses.contains(&ImageStatus::Failed) {
        ImageStatus::Failed
    } else if statuses.contains(&ImageStatus::Unknown) {
        ImageStatus::Unknown
    } else {
        ImageStatus::Success
    }
}

/// Whether an event of `scheme` can change the `provisioningSchemeCount` of its namespace's
/// versions and specs: a new scheme (no status yet), a changed spec (which may name another
/// prepared image), or a scheme being deleted (its last event is its removal). The status
/// writes of a running scheme, by far the most frequent events, cannot.
pub fn changes_scheme_count(scheme: &ProvScheme) -> bool {
    let observed = scheme.status.as_ref().and_then(|s| s.observed_generation);
    scheme.metadata.deletion_timestamp.is_some()
        || observed.is_none()
        || observed != scheme.metadata.generation
}

/// A version's status to write (when `write`), the Events to publish after it, and when to
/// look again.
pub struct Plan {
    /// The desired status.
    pub status: ImageVersionStatus,
    /// Whether it differs from the stored one.
    pub write: bool,
    /// The Events to publish once it is written.
    pub events: Vec<Event>,
    /// When to reconcile again.
    pub requeue: Duration,
}

/// The status of `version` with `number` (`None`: its definition is missing) and what was
/// observed of its specs and schemes.
pub fn plan(
    version: &ImageVersion,
    number: Option<i64>,
    observed: &Observed,
    now: Timestamp,
    resync: Duration,
) -> Plan {
    let current = version.status.clone().unwrap_or_default();
    let aggregated = aggregate(&observed.statuses);
    let definition = &version.spec.image_definition_ref;
    let missing = format!(
        "spec.imageDefinitionRef: image definition '{definition}' was not found in the namespace"
    );
    let conditions = match number {
        None => failure_conditions("ImageDefinitionNotFound", &missing),
        Some(n) => {
            let message = format!(
                "version {n}: {} specs, {aggregated}",
                observed.statuses.len()
            );
            let reason = aggregated.to_string();
            let condition = |type_, on| {
                if on {
                    DesiredCondition::true_(type_, &reason, &message)
                } else {
                    DesiredCondition::false_(type_, &reason, &message)
                }
            };
            vec![
                condition(condition_type::READY, aggregated == ImageStatus::Success),
                condition(
                    condition_type::PROGRESSING,
                    aggregated == ImageStatus::InProgress,
                ),
                condition(condition_type::DEGRADED, aggregated == ImageStatus::Failed),
            ]
        }
    };
    let status = ImageVersionStatus {
        observed_generation: version.metadata.generation,
        version_number: number,
        image_version_status: aggregated,
        specs_count: i32::try_from(observed.statuses.len()).unwrap_or(i32::MAX),
        provisioning_scheme_count: observed.scheme_count,
        conditions: merge(
            &current.conditions,
            &conditions,
            version.metadata.generation,
            now,
        ),
    };
    let mut events = Vec::new();
    if let (None, Some(n)) = (current.version_number, number) {
        let note = format!("version {n} of image definition '{definition}'");
        events.push(event(
            EventType::Normal,
            "VersionNumberAssigned",
            "AssignVersion",
            note,
        ));
    }
    if current.image_version_status != aggregated && number.is_some() {
        let type_ = if aggregated == ImageStatus::Failed {
            EventType::Warning
        } else {
            EventType::Normal
        };
        let note = format!("image version status is {aggregated}");
        let reason = format!("ImageVersion{aggregated}");
        events.push(event(type_, &reason, "Aggregate", note));
    }
    if number.is_none() && current.conditions != status.conditions {
        let reason = "ImageDefinitionNotFound";
        events.push(event(EventType::Warning, reason, "AssignVersion", missing));
    }
    Plan {
        write: status != current,
        status,
        events,
        requeue: if number.is_none() {
            Duration::from_secs(5)
        } else {
            resync.min(Duration::from_secs(60))
        },
    }
}

/// `Ready=False`, `Progressing=False`, `Degraded=True`, all with `reason` and `message`.
fn failure_conditions(reason: &str, message: &str) -> Vec<DesiredCondition> {
    vec![
        DesiredCondition::false_(condition_type::READY, reason, message),
        DesiredCondition::false_(condition_type::PROGRESSING, reason, message),
        DesiredCondition::true_(condition_type::DEGRADED, reason, message),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_round_trips_and_tolerates_garbage() {
        let c = Counter::parse(Some("7:abc"));
        assert_eq!(c.last, 7);
        assert_eq!(c.assignee.as_deref(), Some("abc"));
        assert_eq!(Counter::parse(Some(&c.render())), c);
        assert_eq!(Counter::parse(Some("x")), Counter::default());
        assert_eq!(Counter::parse(Some("-3:u")).last, 0);
        assert_eq!(Counter::parse(None), Counter::default());
    }

    #[test]
    fn numbers_grow_past_everything_seen_and_are_stable_per_version() {
        let none = Counter::default();
        assert_eq!(next_version(&none, None, None, "a").0, 1);
        let (n, write) = next_version(&none, Some(4), Some(2), "a");
        assert_eq!(n, 5);
        assert_eq!(write.map(|c| c.render()), Some("5:a".to_string()));
        // Versions 1..5 were deleted: the counter still says 5.
        let after_deletes = Counter::parse(Some("5:a"));
        assert_eq!(next_version(&after_deletes, None, None, "b").0, 6);
        // The counter's own version gets its number again without a write.
        assert_eq!(next_version(&after_deletes, None, None, "a"), (5, None));
        // An annotation removed by hand cannot make numbers go back.
        assert_eq!(next_version(&none, Some(9), Some(3), "c").0, 10);
    }

    #[test]
    fn only_scheme_events_that_can_change_the_count_trigger_versions() {
        use crate::api::ProvSchemeStatus;
        let mut scheme: ProvScheme = serde_json::from_value(serde_json::json!({
            "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ProvScheme",
            "metadata": {"name": "s", "namespace": "ns", "generation": 2},
            "spec": {"imageVersionSpecRef": "p", "hostingUnitRef": "lab",
                     "identityPoolRef": "pool", "vmCpuCount": 1, "vmMemoryMB": 1024,
                     "networkMapping": {"0": "XDHyp:\\\\HostingUnits\\\\lab\\\\lan.network"}},
        }))
        .expect("a scheme");
        assert!(changes_scheme_count(&scheme), "new: no status yet");
        scheme.status = Some(ProvSchemeStatus {
            observed_generation: Some(1),
            ..Default::default()
        });
        assert!(changes_scheme_count(&scheme), "its spec changed");
        scheme.status.as_mut().expect("status").observed_generation = Some(2);
        assert!(
            !changes_scheme_count(&scheme),
            "a status write of a running scheme"
        );
        scheme.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Timestamp::from_second(1).expect("t"),
            ));
        assert!(
            changes_scheme_count(&scheme),
            "being deleted, and its removal"
        );
    }

    #[test]
    fn aggregation() {
        use ImageStatus::*;
        assert_eq!(aggregate(&[]), Unknown);
        assert_eq!(aggregate(&[Success, InProgress, Failed]), InProgress);
        assert_eq!(aggregate(&[Success, Failed]), Failed);
        assert_eq!(aggregate(&[Success, Unknown]), Unknown);
        assert_eq!(aggregate(&[Success, Success]), Success);
    }
}
