//! The controller layer's error enum; each variant has a stable reason string that becomes a
//! condition reason, an Event reason and a metric label.

use mcs_domain::Reason;
use mcs_domain::inventory_path::PathError;
use mcs_domain::naming::NamingError;
use mcs_domain::rules::RuleError;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The Kubernetes API refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A rule that needs more than one object was broken (the SDK's error ids).
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// An inventory path is invalid.
    #[error(transparent)]
    Path(#[from] PathError),
    /// A machine name could not be made from the identity pool.
    #[error(transparent)]
    Naming(#[from] NamingError),
    /// An object could not be (de)serialized.
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
    /// Adding or removing a finalizer failed, or the cleanup it guards failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<ControllerError>>),
    /// A backend operation failed (reason: the SDK task state of the failure).
    #[error(transparent)]
    Backend(#[from] mcs_backend::BackendError),
    /// Deletion waits: the object is still used (by provisioning schemes or machines).
    #[error("{object} is in use by {}; deletion waits until they no longer use it", .users.join(", "))]
    InUse {
        /// The object, e.g. `image version spec 'win11-prepared'`.
        object: String,
        /// Who uses it, e.g. `provisioning scheme 'desktops'`.
        users: Vec<String>,
    },
    /// A task record could not move as asked, or a machine task could not start.
    #[error("task: {0}")]
    Task(String),
    /// A provisioning scheme version could not be stored or read.
    #[error("scheme versions: {0}")]
    Versions(String),
    /// An object arrived without a field the API server always sets (name, namespace, uid).
    #[error("{kind} has no metadata.{field}")]
    MissingMetadata {
        /// The kind of the object.
        kind: &'static str,
        /// The missing field.
        field: &'static str,
    },
}

impl Reason for ControllerError {
    fn reason(&self) -> &'static str {
        match self {
            Self::Kube(_) => "KubernetesApiError",
            Self::Rule(e) => e.reason(),
            Self::Path(e) => e.reason(),
            Self::Naming(e) => e.reason(),
            Self::Serialization(_) => "SerializationError",
            Self::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(inner)
                | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner.reason(),
                _ => "FinalizerError",
            },
            Self::MissingMetadata { .. } => "MissingMetadata",
            Self::Task(_) => "TaskError",
            Self::Versions(_) => "SchemeVersionStoreError",
            Self::Backend(e) => e.reason(),
            Self::InUse { .. } => "InUse",
        }
    }
}

impl From<kube::runtime::finalizer::Error<ControllerError>> for ControllerError {
    fn from(error: kube::runtime::finalizer::Error<ControllerError>) -> Self {
        Self::Finalizer(Box::new(error))
    }
}
