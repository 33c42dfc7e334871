//! The HypervisorConnection controller: checks that the hypervisor can be used (for `Local`:
//! the storage roots exist; for `KubeVirt`: the cluster serves the KubeVirt, CDI and CSI snapshot
//! APIs; the credentials Secret, when referenced, exists) and reports
//! `state`, `alerts` and the `Ready`/`Degraded` conditions.
//!
//! The credentials Secret is read only to learn that it exists and holds data: its values never
//! reach status, logs or events.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use mcs_domain::Reason as _;
use mcs_domain::rules::{NamedDirectory, check_distinct_directories};

use super::conditions::{DesiredCondition, merge};
use super::events;
use super::status::report;
use super::{Context, ControllerError};
use crate::api::{
    ConnectionState, ConnectionType, HypervisorConnection, HypervisorConnectionSpec,
    HypervisorConnectionStatus, condition_type,
};

const CONTROLLER: &str = "hypervisorconnection";

/// The field of the Local backend's storage roots, as messages name it.
const STORAGE_ROOTS: &str = "spec.local.storageRoots";

/// What was found when checking a connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectionFacts {
    /// Per storage root (by name): whether its directory exists.
    pub roots_found: Vec<(String, bool)>,
    /// Whether the referenced credentials Secret exists and holds data (`None`: none referenced).
    pub secret_usable: Option<bool>,
    /// For `KubeVirt`: each API the backend needs (`DataVolume (cdi.kubevirt.io/v1beta1)`, ...)
    /// and whether the cluster serves it.
    pub apis_served: Vec<(String, bool)>,
    /// For `KubeVirt`: why the cluster could not be asked (remote kubeconfig unusable, API
    /// error), if it could not.
    pub cluster_error: Option<String>,
}

/// What the connection's status should say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionDecision {
    /// On or Unavailable.
    pub state: ConnectionState,
    /// Alerts, one per problem.
    pub alerts: Vec<String>,
    /// The `Ready` and `Degraded` conditions.
    pub conditions: Vec<DesiredCondition>,
}

/// Decides the connection's state from what was found.
pub fn decide(spec: &HypervisorConnectionSpec, facts: &ConnectionFacts) -> ConnectionDecision {
    let mut alerts = Vec::new();
    let mut reason = "Available";
    if let Some(error) = &facts.cluster_error {
        alerts.push(format!(
            "spec.kubeVirt: the cluster could not be reached: {error}"
        ));
        reason = "ClusterUnreachable";
    }
    for (api, _) in facts.apis_served.iter().filter(|(_, served)| !served) {
        alerts.push(format!(
            "spec.kubeVirt: the cluster does not serve {api}; install KubeVirt, CDI and the CSI \
             snapshot CRDs"
        ));
        reason = "KubeVirtNotInstalled";
    }
    let missing: Vec<&str> = facts
        .roots_found
        .iter()
        .filter(|(_, found)| !found)
        .map(|(name, _)| name.as_str())
        .collect();
    for name in &missing {
        let path = spec
            .local
            .as_ref()
            .and_then(|l| l.storage_roots.iter().find(|r| r.name == *name))
            .map(|r| r.path.clone())
            .unwrap_or_default();
        alerts.push(format!(
            "spec.local.storageRoots[{name}]: directory {path} does not exist"
        ));
    }
    let all_missing = !facts.roots_found.is_empty() && missing.len() == facts.roots_found.len();
    if !missing.is_empty() && reason == "Available" {
        reason = "StorageNotFound";
    }
    let roots: Vec<NamedDirectory> = spec
        .local
        .iter()
        .flat_map(|l| &l.storage_roots)
        .map(|r| NamedDirectory::new(&r.name, None, &r.path))
        .collect();
    let conflicts = check_distinct_directories(STORAGE_ROOTS, &roots, false);
    for conflict in &conflicts {
        alerts.push(conflict.to_string());
        reason = conflict.reason();
    }
    if facts.secret_usable == Some(false) {
        let name = spec
            .credentials_secret_ref
            .as_ref()
            .map(|s| s.name.as_str())
            .unwrap_or_default();
        alerts.push(format!(
            "spec.credentialsSecretRef: Secret '{name}' was not found or holds no data"
        ));
        reason = "CredentialsNotFound";
    }
    let usable = conflicts.is_empty()
        && (reason == "Available"
            || (reason == "StorageNotFound" && !all_missing && facts.secret_usable != Some(false)));
    let state = if usable {
        ConnectionState::On
    } else {
        ConnectionState::Unavailable
    };
    let message = if alerts.is_empty() {
        "the hypervisor is reachable".to_string()
    } else {
        alerts.join("; ")
    };
    let ready = if usable {
        DesiredCondition::true_(condition_type::READY, "Available", message.clone())
    } else {
        DesiredCondition::false_(condition_type::READY, reason, message.clone())
    };
    let degraded = if alerts.is_empty() {
        DesiredCondition::false_(condition_type::DEGRADED, "Available", "no alerts")
    } else {
        DesiredCondition::true_(condition_type::DEGRADED, reason, message)
    };
    ConnectionDecision {
        state,
        alerts,
        conditions: vec![ready, degraded],
    }
}

async fn gather(
    connection: &HypervisorConnection,
    namespace: &str,
    context: &Context,
) -> Result<ConnectionFacts, ControllerError> {
    let mut facts = ConnectionFacts::default();
    if let Some(local) = &connection.spec.local {
        for root in &local.storage_roots {
            let found = tokio::fs::metadata(&root.path)
                .await
                .is_ok_and(|m| m.is_dir());
            facts.roots_found.push((root.name.clone(), found));
        }
    }
    if let Some(kubevirt) = &connection.spec.kube_virt
        && connection.spec.connection_type == ConnectionType::KubeVirt
    {
        let source = match &kubevirt.kubeconfig_secret_ref {
            None => mcs_kubevirt::ClientSource::Own(context.client.clone()),
            Some(secret) => mcs_kubevirt::ClientSource::Kubeconfig {
                client: context.client.clone(),
                namespace: namespace.to_string(),
                name: secret.name.clone(),
                key: secret.key.clone().unwrap_or_else(|| "kubeconfig".into()),
            },
        };
        match mcs_kubevirt::connect(&source).await {
            Err(e) => facts.cluster_error = Some(e.to_string()),
            Ok(client) => {
                for resource in [
                    mcs_kubevirt::objects::virtual_machines(),
                    mcs_kubevirt::objects::data_volumes(),
                    mcs_kubevirt::objects::volume_snapshots(),
                ] {
                    let name = format!("{} ({})", resource.kind, resource.api_version);
                    match mcs_kubevirt::serves(&client, &kubevirt.namespace, &resource).await {
                        Ok(served) => facts.apis_served.push((name, served)),
                        Err(e) => {
                            facts.cluster_error = Some(format!("listing {name}: {e}"));
                            break;
                        }
                    }
                }
            }
        }
    }
    if let Some(reference) = &connection.spec.credentials_secret_ref {
        let secret = context
            .api::<Secret>(namespace)
            .get_opt(&reference.name)
            .await?;
        facts.secret_usable = Some(secret.is_some_and(|s| {
            s.data.as_ref().is_some_and(|d| !d.is_empty())
                || s.string_data.as_ref().is_some_and(|d| !d.is_empty())
        }));
    }
    Ok(facts)
}

/// Decide (pure): the connection's status from what was found, and the Event to publish when
/// its state or alerts change.
pub fn desired_status(
    connection: &HypervisorConnection,
    facts: &ConnectionFacts,
    now: Timestamp,
) -> (HypervisorConnectionStatus, Option<Event>) {
    let decision = decide(&connection.spec, facts);
    let current = connection.status.clone().unwrap_or_default();
    let generation = connection.metadata.generation;
    let status = HypervisorConnectionStatus {
        observed_generation: generation,
        state: Some(decision.state),
        alerts: decision.alerts.clone(),
        conditions: merge(&current.conditions, &decision.conditions, generation, now),
    };
    let changed = current.state != status.state || current.alerts != status.alerts;
    let event = changed.then(|| {
        let (type_, reason) = match decision.state {
            ConnectionState::On if decision.alerts.is_empty() => {
                (EventType::Normal, "Available".to_string())
            }
            _ => (
                EventType::Warning,
                decision
                    .conditions
                    .iter()
                    .find(|c| c.type_ == condition_type::DEGRADED)
                    .map(|c| c.reason.clone())
                    .unwrap_or_default(),
            ),
        };
        let note = if decision.alerts.is_empty() {
            format!("connection state {:?}", decision.state)
        } else {
            decision.alerts.join("; ")
        };
        events::event(type_, &reason, "Connect", note)
    });
    (status, event)
}

/// Read (`gather`) -> decide -> report: the status is written only when it changes; a
/// connection with problems is looked at again within seconds.
async fn reconcile(
    connection: Arc<HypervisorConnection>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    let _timer = crate::metrics::global().reconcile(CONTROLLER);
    let namespace = connection
        .namespace()
        .ok_or(ControllerError::MissingMetadata {
            kind: "HypervisorConnection",
            field: "namespace",
        })?;
    let facts = gather(&connection, &namespace, &context).await?;
    let (status, event) = desired_status(&connection, &facts, Timestamp::now());
    let current = connection.status.as_ref();
    report(
        &context,
        connection.as_ref(),
        CONTROLLER,
        current,
        &status,
        event,
    )
    .await?;
    let healthy = status.state == Some(ConnectionState::On) && status.alerts.is_empty();
    Ok(Action::requeue(if healthy {
        context.config.resync
    } else {
        Duration::from_secs(10)
    }))
}

/// Runs the HypervisorConnection controller until the stream ends.
pub async fn run(context: Arc<Context>) {
    let connections = &context.stores.connections;
    context
        .caches
        .track(CONTROLLER, connections.store().clone());
    if !context.stores.ready().await {
        return;
    }
    let results = connections.controller().run(
        reconcile,
        super::error_policy(CONTROLLER, Duration::from_secs(5)),
        context.clone(),
    );
    super::drain(CONTROLLER, results).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{LocalConnection, SecretReference, StorageRoot};

    fn spec(secret: bool) -> HypervisorConnectionSpec {
        HypervisorConnectionSpec {
            connection_type: ConnectionType::Local,
            local: Some(LocalConnection {
                storage_roots: vec![
                    StorageRoot {
                        name: "images".into(),
                        path: "/srv/images".into(),
                    },
                    StorageRoot {
                        name: "fast".into(),
                        path: "/srv/fast".into(),
                    },
                ],
                max_concurrent_operations: None,
                operation_timeout_seconds: None,
                max_copy_rate_mib_per_second: None,
            }),
            kube_virt: None,
            credentials_secret_ref: secret.then(|| SecretReference {
                name: "creds".into(),
            }),
        }
    }

    fn facts(images: bool, fast: bool, secret: Option<bool>) -> ConnectionFacts {
        ConnectionFacts {
            roots_found: vec![("images".into(), images), ("fast".into(), fast)],
            secret_usable: secret,
            ..ConnectionFacts::default()
        }
    }

    #[test]
    fn all_roots_present_is_on_and_ready() {
        let d = decide(&spec(false), &facts(true, true, None));
        assert_eq!(d.state, ConnectionState::On);
        assert!(d.alerts.is_empty());
        assert!(d.conditions[0].status);
        assert!(!d.conditions[1].status);
    }

    #[test]
    fn roots_on_one_directory_or_nested_are_unavailable_naming_the_field() {
        for fast in ["/srv/images/", "/srv/./images", "/srv/images/sub", "/srv"] {
            let mut spec = spec(false);
            if let Some(local) = spec.local.as_mut() {
                local.storage_roots[1].path = fast.into();
            }
            let d = decide(&spec, &facts(true, true, None));
            assert_eq!(d.state, ConnectionState::Unavailable, "{fast}");
            assert_eq!(d.conditions[0].reason, "StorageDirectoryConflict");
            assert!(d.conditions[1].status);
            assert!(
                d.conditions[0]
                    .message
                    .starts_with("spec.local.storageRoots[fast]: "),
                "{}",
                d.conditions[0].message
            );
        }
    }

    #[test]
    fn a_missing_root_is_an_alert_and_degraded() {
        let d = decide(&spec(false), &facts(true, false, None));
        assert_eq!(d.state, ConnectionState::On);
        assert_eq!(d.alerts.len(), 1);
        assert!(d.alerts[0].contains("/srv/fast"), "{:?}", d.alerts);
        assert_eq!(d.conditions[1].reason, "StorageNotFound");
        let none = decide(&spec(false), &facts(false, false, None));
        assert_eq!(none.state, ConnectionState::Unavailable);
        assert_eq!(none.conditions[0].reason, "StorageNotFound");
    }

    #[test]
    fn a_missing_secret_makes_it_unavailable_without_echoing_values() {
        let d = decide(&spec(true), &facts(true, true, Some(false)));
        assert_eq!(d.state, ConnectionState::Unavailable);
        assert_eq!(d.conditions[0].reason, "CredentialsNotFound");
        assert!(d.alerts[0].contains("'creds'"));
        let ok = decide(&spec(true), &facts(true, true, Some(true)));
        assert_eq!(ok.state, ConnectionState::On);
    }

    #[test]
    fn kubevirt_is_on_when_its_apis_are_served() {
        let kubevirt = HypervisorConnectionSpec {
            connection_type: ConnectionType::KubeVirt,
            local: None,
            kube_virt: None,
            credentials_secret_ref: None,
        };
        let served = |cdi: bool| ConnectionFacts {
            apis_served: vec![
                ("VirtualMachine (kubevirt.io/v1)".into(), true),
                ("DataVolume (cdi.kubevirt.io/v1beta1)".into(), cdi),
            ],
            ..ConnectionFacts::default()
        };
        let on = decide(&kubevirt, &served(true));
        assert_eq!(on.state, ConnectionState::On);
        assert!(on.alerts.is_empty());
        let off = decide(&kubevirt, &served(false));
        assert_eq!(off.state, ConnectionState::Unavailable);
        assert_eq!(off.conditions[0].reason, "KubeVirtNotInstalled");
        assert!(off.alerts[0].contains("DataVolume"), "{:?}", off.alerts);
        let unreachable = decide(
            &kubevirt,
            &ConnectionFacts {
                cluster_error: Some("no key 'kubeconfig'".into()),
                ..ConnectionFacts::default()
            },
        );
        assert_eq!(unreachable.state, ConnectionState::Unavailable);
        assert_eq!(unreachable.conditions[0].reason, "ClusterUnreachable");
    }
}
