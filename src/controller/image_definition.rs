//! The ImageDefinition controller: validates the definition's connections, reports
//! `latestVersion` (the highest number ever given to one of its versions) and `versionsCount`,
//! and refuses deletion (finalizer `mcs.imaging.dev/image-definition`, condition `Ready=False`
//! reason `InUse` naming the users) while a provisioning scheme or machine uses a spec of one of
//! its versions.

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
use super::image_version::{ANNOTATION_LAST_VERSION, Counter};
use super::image_version_spec::{schemes_and_machines, users_of_specs};
use super::status::{apply_status, field_manager};
use super::tasks::report_blocked_deletion;
use super::{Context, ControllerError, requeue_after_error, watcher_config};
use crate::api::{
    HypervisorConnection, ImageDefinition, ImageDefinitionSpec, ImageDefinitionStatus,
    ImageVersion, ImageVersionSpec, condition_type,
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

async fn apply(
    definition: Arc<ImageDefinition>,
    context: &Context,
) -> Result<Action, ControllerError> {
    let namespace = namespace_of(&definition)?;
    let connections = context.api::<HypervisorConnection>(&namespace);
    let mut missing = Vec::new();
    for connection in &definition.spec.connections {
        if connections
            .get_opt(&connection.connection_ref)
            .await?
            .is_none()
        {
            missing.push(connection.connection_ref.clone());
        }
    }
    let versions = versions_of(context, &namespace, &definition.name_any()).await?;
    let numbers: Vec<Option<i64>> = versions
        .iter()
        .map(|v| v.status.as_ref().and_then(|s| s.version_number))
        .collect();
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
        &numbers,
        &missing,
    );
    let status = ImageDefinitionStatus {
        observed_generation: definition.metadata.generation,
        latest_version: decision.latest_version,
        versions_count: decision.versions_count,
        conditions: merge(
            &current.conditions,
            &decision.conditions,
            definition.metadata.generation,
            Timestamp::now(),
        ),
    };
    if status != current {
        let api = context.api::<ImageDefinition>(&namespace);
        apply_status(
            &api,
            definition.as_ref(),
            &field_manager(CONTROLLER),
            &status,
        )
        .await?;
        if current
            .conditions
            .iter()
            .map(|c| (&c.type_, &c.status, &c.reason))
            .collect::<Vec<_>>()
            != status
                .conditions
                .iter()
                .map(|c| (&c.type_, &c.status, &c.reason))
                .collect::<Vec<_>>()
            && let Some(ready) = decision.conditions.first()
        {
            let type_ = if ready.status {
                EventType::Normal
            } else {
                EventType::Warning
            };
            publish(
                context,
                definition.as_ref(),
                type_,
                &ready.reason,
                "Validate",
                ready.message.clone(),
            )
            .await;
        }
    }
    Ok(Action::requeue(if missing.is_empty() {
        context.config.resync
    } else {
        Duration::from_secs(10)
    }))
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

fn error_policy(
    _definition: Arc<ImageDefinition>,
    error: &ControllerError,
    _context: Arc<Context>,
) -> Action {
    requeue_after_error(CONTROLLER, error)
}

/// Runs the ImageDefinition controller until the stream ends.
pub async fn run(context: Arc<Context>) {
    let definitions = context.watched_api::<ImageDefinition>();
    let controller =
        Controller::new(definitions, watcher_config()).trigger_backoff(super::trigger_backoff());
    context.caches.track(CONTROLLER, controller.store());
    controller
        .watches(
            context.watched_api::<ImageVersion>(),
            watcher_config(),
            |version: ImageVersion| {
                version.namespace().map(|ns| {
                    ObjectRef::<ImageDefinition>::new(&version.spec.image_definition_ref)
                        .within(&ns)
                })
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
