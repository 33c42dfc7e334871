//! The ImageVersion controller: assigns `versionNumber` once, aggregates
//! `imageVersionStatus` from the version's specs, counts its specs and the provisioning schemes
//! using them, and keeps the version (finalizer `mcs.imaging.dev/image-version`) while a scheme
//! or machine uses one of its specs.
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

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::ListParams;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;

use super::conditions::{DesiredCondition, merge};
use super::events::publish;
use super::image_version_spec::{schemes_and_machines, schemes_using, users_of_specs};
use super::status::{apply_status, field_manager};
use super::tasks::report_blocked_deletion;
use super::{Context, ControllerError, requeue_after_error, watcher_config};
use crate::api::{
    ImageDefinition, ImageStatus, ImageVersion, ImageVersionSpec, ImageVersionStatus, ProvScheme,
    condition_type,
};

const CONTROLLER: &str = "imageversion";
/// The finalizer that keeps a version while it is in use.
pub const FINALIZER: &str = "mcs.imaging.dev/image-version";
/// The version counter on an ImageDefinition: `"<number>:<uid>"`.
pub const ANNOTATION_LAST_VERSION: &str = "mcs.imaging.dev/last-version";

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

fn namespace_of(version: &ImageVersion) -> Result<String, ControllerError> {
    version.namespace().ok_or(ControllerError::MissingMetadata {
        kind: "ImageVersion",
        field: "namespace",
    })
}

/// Assigns the version's number (see the module docs); `None` when the definition is missing.
async fn assign_number(
    context: &Context,
    namespace: &str,
    version: &ImageVersion,
) -> Result<Option<i64>, ControllerError> {
    let fresh = context
        .api::<ImageVersion>(namespace)
        .get_opt(&version.name_any())
        .await?;
    if let Some(number) = fresh
        .as_ref()
        .and_then(|v| v.status.as_ref())
        .and_then(|s| s.version_number)
    {
        return Ok(Some(number));
    }
    let uid = version.uid().ok_or(ControllerError::MissingMetadata {
        kind: "ImageVersion",
        field: "uid",
    })?;
    let definitions = context.api::<ImageDefinition>(namespace);
    for _ in 0..16 {
        let Some(mut definition) = definitions
            .get_opt(&version.spec.image_definition_ref)
            .await?
        else {
            return Ok(None);
        };
        let highest = context
            .api::<ImageVersion>(namespace)
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|v| v.spec.image_definition_ref == version.spec.image_definition_ref)
            .filter_map(|v| v.status.as_ref().and_then(|s| s.version_number))
            .max();
        let counter = Counter::parse(
            definition
                .annotations()
                .get(ANNOTATION_LAST_VERSION)
                .map(String::as_str),
        );
        let latest = definition.status.as_ref().and_then(|s| s.latest_version);
        let (number, write) = next_version(&counter, latest, highest, &uid);
        let Some(write) = write else {
            return Ok(Some(number));
        };
        definition
            .annotations_mut()
            .insert(ANNOTATION_LAST_VERSION.to_string(), write.render());
        match super::strict::replace(&definitions, &definition.name_any(), &definition).await {
            Ok(_) => return Ok(Some(number)),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                tracing::debug!(
                    version = version.name_any(),
                    "version counter moved; retrying"
                );
            }
            Err(error) => return Err(error.into()),
        }
    }
    Err(ControllerError::Kube(kube::Error::Service(
        "the version counter kept changing (16 conflicts in a row)".into(),
    )))
}

async fn reconcile(
    version: Arc<ImageVersion>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    let _timer = crate::metrics::global().reconcile(CONTROLLER);
    let namespace = namespace_of(&version)?;
    let api = context.api::<ImageVersion>(&namespace);
    finalizer(&api, FINALIZER, version, |event| async {
        match event {
            FinalizerEvent::Apply(version) => apply(version, &context).await,
            FinalizerEvent::Cleanup(version) => cleanup(version, &context).await,
        }
    })
    .await
    .map_err(ControllerError::from)
}

/// The names of the specs of `version`, and their statuses.
async fn specs_of(
    context: &Context,
    namespace: &str,
    version: &str,
) -> Result<Vec<ImageVersionSpec>, ControllerError> {
    Ok(context
        .api::<ImageVersionSpec>(namespace)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|s| s.spec.image_version_ref == version)
        .collect())
}

async fn apply(version: Arc<ImageVersion>, context: &Context) -> Result<Action, ControllerError> {
    let namespace = namespace_of(&version)?;
    let name = version.name_any();
    let current = version.status.clone().unwrap_or_default();
    let number = assign_number(context, &namespace, &version).await?;
    let specs = specs_of(context, &namespace, &name).await?;
    let spec_names: BTreeSet<String> = specs.iter().map(ResourceExt::name_any).collect();
    let statuses: Vec<ImageStatus> = specs
        .iter()
        .map(|s| {
            s.status
                .as_ref()
                .map(|st| st.image_version_spec_status)
                .unwrap_or_default()
        })
        .collect();
    let (schemes, _) = schemes_and_machines(context, &namespace).await?;
    let aggregated = aggregate(&statuses);
    let conditions = match number {
        None => {
            let message = format!(
                "spec.imageDefinitionRef: image definition '{}' was not found in the namespace",
                version.spec.image_definition_ref
            );
            vec![
                DesiredCondition::false_(
                    condition_type::READY,
                    "ImageDefinitionNotFound",
                    &message,
                ),
                DesiredCondition::false_(
                    condition_type::PROGRESSING,
                    "ImageDefinitionNotFound",
                    &message,
                ),
                DesiredCondition::true_(
                    condition_type::DEGRADED,
                    "ImageDefinitionNotFound",
                    &message,
                ),
            ]
        }
        Some(n) => {
            let message = format!("version {n}: {} specs, {aggregated}", specs.len());
            let reason = aggregated.to_string();
            vec![
                if aggregated == ImageStatus::Success {
                    DesiredCondition::true_(condition_type::READY, &reason, &message)
                } else {
                    DesiredCondition::false_(condition_type::READY, &reason, &message)
                },
                if aggregated == ImageStatus::InProgress {
                    DesiredCondition::true_(condition_type::PROGRESSING, &reason, &message)
                } else {
                    DesiredCondition::false_(condition_type::PROGRESSING, &reason, &message)
                },
                if aggregated == ImageStatus::Failed {
                    DesiredCondition::true_(condition_type::DEGRADED, &reason, &message)
                } else {
                    DesiredCondition::false_(condition_type::DEGRADED, &reason, &message)
                },
            ]
        }
    };
    let status = ImageVersionStatus {
        observed_generation: version.metadata.generation,
        version_number: number,
        image_version_status: aggregated,
        specs_count: i32::try_from(specs.len()).unwrap_or(i32::MAX),
        provisioning_scheme_count: schemes_using(&spec_names, &schemes),
        conditions: merge(
            &current.conditions,
            &conditions,
            version.metadata.generation,
            Timestamp::now(),
        ),
    };
    if status != current {
        let api = context.api::<ImageVersion>(&namespace);
        apply_status(&api, version.as_ref(), &field_manager(CONTROLLER), &status).await?;
        if current.version_number.is_none()
            && let Some(n) = number
        {
            publish(
                context,
                version.as_ref(),
                EventType::Normal,
                "VersionNumberAssigned",
                "AssignVersion",
                format!(
                    "version {n} of image definition '{}'",
                    version.spec.image_definition_ref
                ),
            )
            .await;
        }
        if current.image_version_status != aggregated && number.is_some() {
            let type_ = if aggregated == ImageStatus::Failed {
                EventType::Warning
            } else {
                EventType::Normal
            };
            publish(
                context,
                version.as_ref(),
                type_,
                &format!("ImageVersion{aggregated}"),
                "Aggregate",
                format!("image version status is {aggregated}"),
            )
            .await;
        }
        if number.is_none() && current.conditions != status.conditions {
            publish(
                context,
                version.as_ref(),
                EventType::Warning,
                "ImageDefinitionNotFound",
                "AssignVersion",
                format!(
                    "spec.imageDefinitionRef: image definition '{}' was not found in the namespace",
                    version.spec.image_definition_ref
                ),
            )
            .await;
        }
    }
    Ok(Action::requeue(if number.is_none() {
        Duration::from_secs(5)
    } else {
        context.config.resync.min(Duration::from_secs(60))
    }))
}

async fn cleanup(version: Arc<ImageVersion>, context: &Context) -> Result<Action, ControllerError> {
    let namespace = namespace_of(&version)?;
    let name = version.name_any();
    let specs = specs_of(context, &namespace, &name).await?;
    let spec_names: BTreeSet<String> = specs.iter().map(ResourceExt::name_any).collect();
    let (schemes, machines) = schemes_and_machines(context, &namespace).await?;
    let users = users_of_specs(&spec_names, &schemes, &machines);
    if users.is_empty() {
        return Ok(Action::await_change());
    }
    let error = ControllerError::InUse {
        object: format!("image version '{name}'"),
        users,
    };
    let current = version.status.clone().unwrap_or_default();
    let object: &_ = version.as_ref();
    report_blocked_deletion(context, object, &current.conditions, &error, |conditions| {
        let status = ImageVersionStatus {
            conditions,
            observed_generation: object.metadata.generation,
            ..current.clone()
        };
        let api = context.api::<ImageVersion>(&namespace);
        async move {
            apply_status(&api, object, &field_manager(CONTROLLER), &status).await?;
            Ok(())
        }
    })
    .await?;
    Err(error)
}

/// Whether an event of `scheme` can change the `provisioningSchemeCount` of its namespace's
/// versions: a new scheme (no status yet), a changed spec (which may name another prepared
/// image), or a scheme being deleted (its last event is its removal). The status writes of a
/// running scheme, by far the most frequent events, cannot.
fn changes_scheme_count(scheme: &ProvScheme) -> bool {
    let observed = scheme.status.as_ref().and_then(|s| s.observed_generation);
    scheme.metadata.deletion_timestamp.is_some()
        || observed.is_none()
        || observed != scheme.metadata.generation
}

fn error_policy(
    _version: Arc<ImageVersion>,
    error: &ControllerError,
    _context: Arc<Context>,
) -> Action {
    requeue_after_error(CONTROLLER, error)
}

/// Runs the ImageVersion controller until the stream ends.
pub async fn run(context: Arc<Context>) {
    let versions = context.watched_api::<ImageVersion>();
    let controller =
        Controller::new(versions, watcher_config()).trigger_backoff(super::trigger_backoff());
    let store = controller.store();
    let scheme_store = store.clone();
    context.caches.track(CONTROLLER, store.clone());
    controller
        .watches(
            context.watched_api::<ImageVersionSpec>(),
            watcher_config(),
            |spec: ImageVersionSpec| {
                spec.namespace().map(|ns| {
                    ObjectRef::<ImageVersion>::new(&spec.spec.image_version_ref).within(&ns)
                })
            },
        )
        .watches(
            context.watched_api::<ProvScheme>(),
            watcher_config(),
            move |scheme: ProvScheme| {
                let namespace = scheme.namespace();
                let versions = if changes_scheme_count(&scheme) {
                    scheme_store.state()
                } else {
                    Vec::new()
                };
                versions
                    .into_iter()
                    .filter(move |v| v.namespace() == namespace)
                    .map(|v| ObjectRef::from_obj(v.as_ref()))
            },
        )
        .watches(
            context.watched_api::<ImageDefinition>(),
            watcher_config(),
            move |definition: ImageDefinition| {
                let namespace = definition.namespace();
                let name = definition.name_any();
                store
                    .state()
                    .into_iter()
                    .filter(move |v| {
                        v.namespace() == namespace
                            && v.spec.image_definition_ref == name
                            && v.status.as_ref().is_none_or(|s| s.version_number.is_none())
                    })
                    .map(|v| ObjectRef::from_obj(v.as_ref()))
            },
        )
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                super::log_run_error(CONTROLLER, &error);
            }
        })
        .await;
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
