//! The ImageDefinition controller: validates the definition's connections, reports
//! `latestVersion` (the highest number ever given to one of its versions) and `versionsCount`,
//! and refuses deletion (finalizer `mcs.imaging.dev/image-definition`, condition `Ready=False`
//! reason `InUse` naming the users) while a provisioning scheme or machine uses a spec of one of
//! its versions.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::events::Event;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;

use super::conditions::{DesiredCondition, merge};
use super::events;
use super::image_version::{ANNOTATION_LAST_VERSION, Counter};
use super::image_version_spec::{schemes_and_machines, users_of_specs};
use super::status::{apply_status, field_manager, report};
use super::tasks::report_blocked_deletion;
use super::{Context, ControllerError};
use crate::api::{
    ImageDefinition, ImageDefinitionSpec, ImageDefinitionStatus, ImageVersion, ImageVersionSpec,
    condition_type,
};

const CONTROLLER: &str = "imagedefinition";
/// The finalizer that keeps a definition while one of its versions is in use.
pub const FINALIZER: &str = "mcs.imaging.dev/image-definition";

/// What the definition's status should say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefinitionDecision {
    /// The highest version number ever given out.
    pub latest_version: Option<i64>,
    /// How many versions exist.
    pub versions_count: i32,
    /// `Ready` and `Degraded`.
    pub conditions: Vec<DesiredCondition>,
}

/// Decides the definition's status: `missing_connections` are the `connectionRef`s that do
/// not exist; `numbers` the version numbers of its versions (`None`: not assigned yet).
pub fn decide(
    spec: &ImageDefinitionSpec,
    counter: &Counter,
    latest_in_status: Option<i64>,
    numbers: &[Option<i64>],
    missing_connections: &[String],
) -> DefinitionDecision {
    let latest = numbers
        .iter()
        .flatten()
        .copied()
        .chain([counter.last])
        .chain(latest_in_status)
        .max()
        .filter(|n| *n > 0);
    let conditions = if missing_connections.is_empty() {
        let message = format!(
            "{} connections, {} versions",
            spec.connections.len(),
            numbers.len()
        );
        vec![
            DesiredCondition::true_(condition_type::READY, "Available", &message),
            DesiredCondition::false_(condition_type::DEGRADED, "Available", &message),
        ]
    } else {
        let message = missing_connections
            .iter()
            .map(|c| {
                format!(
                    "spec.connections[{c}]: hypervisor connection '{c}' was not found in the namespace"
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        vec![
            DesiredCondition::false_(
                condition_type::READY,
                "HypervisorConnectionNotFound",
                &message,
            ),
            DesiredCondition::true_(
                condition_type::DEGRADED,
                "HypervisorConnectionNotFound",
                &message,
            ),
        ]
    };
    DefinitionDecision {
        latest_version: latest,
        versions_count: i32::try_from(numbers.len()).unwrap_or(i32::MAX),
        conditions,
    }
}

fn namespace_of(definition: &ImageDefinition) -> Result<String, ControllerError> {
    definition
        .namespace()
        .ok_or(ControllerError::MissingMetadata {
            kind: "ImageDefinition",
            field: "namespace",
        })
}

/// The versions of `definition`, read from the API server: the deletion's in-use check must
/// not trust a cache that may not show a version created a moment ago.
async fn versions_of(
    context: &Context,
    namespace: &str,
    definition: &str,
) -> Result<Vec<ImageVersion>, ControllerError> {
    Ok(context
        .api::<ImageVersion>(namespace)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|v| v.spec.image_definition_ref == definition)
        .collect())
}

async fn reconcile(
    definition: Arc<ImageDefinition>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    let _timer = crate::metrics::global().reconcile(CONTROLLER);
    let namespace = namespace_of(&definition)?;
    let api = context.api::<ImageDefinition>(&namespace);
    finalizer(&api, FINALIZER, definition, |event| async {
        match event {
            FinalizerEvent::Apply(definition) => apply(definition, &context).await,
            FinalizerEvent::Cleanup(definition) => cleanup(definition, &context).await,
        }
    })
    .await
    .map_err(ControllerError::from)
}

/// What the definition's status is decided from, read from the shared caches.
pub struct Observed {
    /// `spec.connections` entries naming no connection of the namespace.
    pub missing_connections: Vec<String>,
    /// The version numbers of the definition's versions (`None`: not numbered yet).
    pub version_numbers: Vec<Option<i64>>,
}

/// Read: the connections and versions from the shared caches.
fn read(definition: &ImageDefinition, namespace: &str, context: &Context) -> Observed {
    let stores = &context.stores;
    Observed {
        missing_connections: definition
            .spec
            .connections
            .iter()
            .filter(|c| {
                stores
                    .connections
                    .get(namespace, &c.connection_ref)
                    .is_none()
            })
            .map(|c| c.connection_ref.clone())
            .collect(),
        version_numbers: stores
            .versions
            .in_namespace(namespace)
            .iter()
            .filter(|v| v.spec.image_definition_ref == definition.name_any())
            .map(|v| v.status.as_ref().and_then(|s| s.version_number))
            .collect(),
    }
}

/// Decide (pure): the definition's status and the Event when its Ready condition changes.
pub fn desired_status(
    definition: &ImageDefinition,
    observed: &Observed,
    now: Timestamp,
) -> (ImageDefinitionStatus, Option<Event>) {
    let current = definition.status.clone().unwrap_or_default();
    let counter = Counter::parse(
        definition
            .annotations()
            .get(ANNOTATION_LAST_VERSION)
            .map(String::as_str),
    );
    let decision = decide(
        &definition.spec,
        &counter,
        current.latest_version,
        &observed.version_numbers,
        &observed.missing_connections,
    );
    let generation = definition.metadata.generation;
    let event = decision
        .conditions
        .first()
        .and_then(|ready| events::ready_transition(&current.conditions, ready, "Validate"));
    let status = ImageDefinitionStatus {
        observed_generation: generation,
        latest_version: decision.latest_version,
        versions_count: decision.versions_count,
        conditions: merge(&current.conditions, &decision.conditions, generation, now),
    };
    (status, event)
}

/// Read -> decide -> report: the status is written only when it changes.
async fn apply(
    definition: Arc<ImageDefinition>,
    context: &Context,
) -> Result<Action, ControllerError> {
    let namespace = namespace_of(&definition)?;
    let observed = read(&definition, &namespace, context);
    let (status, event) = desired_status(&definition, &observed, Timestamp::now());
    let current = definition.status.as_ref();
    report(
        context,
        definition.as_ref(),
        CONTROLLER,
        current,
        &status,
        event,
    )
    .await?;
    Ok(Action::requeue(
        if observed.missing_connections.is_empty() {
            context.config.resync
        } else {
            Duration::from_secs(10)
        },
    ))
}

async fn cleanup(
    definition: Arc<ImageDefinition>,
    context: &Context,
) -> Result<Action, ControllerError> {
    let namespace = namespace_of(&definition)?;
    let name = definition.name_any();
    let versions: BTreeSet<String> = versions_of(context, &namespace, &name)
        .await?
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    // A fresh read, like the versions: deletion is where a lagging cache could lose data.
    let specs: BTreeSet<String> = context
        .api::<ImageVersionSpec>(&namespace)
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|s| versions.contains(&s.spec.image_version_ref))
        .map(ResourceExt::name_any)
        .collect();
    let (schemes, machines) = schemes_and_machines(context, &namespace).await?;
    let users = users_of_specs(&specs, &schemes, &machines);
    if users.is_empty() {
        return Ok(Action::await_change());
    }
    let error = ControllerError::InUse {
        object: format!("image definition '{name}'"),
        users,
    };
    let current = definition.status.clone().unwrap_or_default();
    let object: &_ = definition.as_ref();
    report_blocked_deletion(context, object, &current.conditions, &error, |conditions| {
        let status = ImageDefinitionStatus {
            conditions,
            observed_generation: object.metadata.generation,
            ..current.clone()
        };
        let api = context.api::<ImageDefinition>(&namespace);
        async move {
            apply_status(&api, object, &field_manager(CONTROLLER), &status).await?;
            Ok(())
        }
    })
    .await?;
    Err(error)
}

/// Runs the ImageDefinition controller until the stream ends.
pub async fn run(context: Arc<Context>) {
    let stores = &context.stores;
    context
        .caches
        .track(CONTROLLER, stores.definitions.store().clone());
    if !stores.ready().await {
        return;
    }
    let results = stores
        .definitions
        .controller()
        .watches_shared_stream(stores.versions.subscribe(), |version: Arc<ImageVersion>| {
            version.namespace().map(|ns| {
                ObjectRef::<ImageDefinition>::new(&version.spec.image_definition_ref).within(&ns)
            })
        })
        .run(
            reconcile,
            super::error_policy(CONTROLLER, Duration::from_secs(5)),
            context.clone(),
        );
    super::drain(CONTROLLER, results).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ImageDefinitionConnection, OsType, SessionSupport};

    fn spec() -> ImageDefinitionSpec {
        ImageDefinitionSpec {
            os_type: OsType::Linux,
            vda_session_support: SessionSupport::MultiSession,
            description: None,
            connections: vec![ImageDefinitionConnection {
                connection_ref: "local".into(),
                custom_properties: None,
            }],
        }
    }

    #[test]
    fn latest_version_never_goes_back() {
        let d = decide(&spec(), &Counter::default(), None, &[], &[]);
        assert_eq!(d.latest_version, None);
        assert_eq!(d.versions_count, 0);
        assert!(d.conditions[0].status);
        let counter = Counter::parse(Some("4:u"));
        let d = decide(&spec(), &counter, Some(3), &[Some(1), None], &[]);
        assert_eq!(d.latest_version, Some(4));
        assert_eq!(d.versions_count, 2);
        let d = decide(&spec(), &Counter::default(), Some(7), &[Some(2)], &[]);
        assert_eq!(d.latest_version, Some(7));
    }

    #[test]
    fn missing_connections_are_reported() {
        let d = decide(&spec(), &Counter::default(), None, &[], &["local".into()]);
        assert!(!d.conditions[0].status);
        assert_eq!(d.conditions[0].reason, "HypervisorConnectionNotFound");
        assert!(d.conditions[0].message.contains("spec.connections[local]"));
    }
}
