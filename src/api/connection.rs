//! HypervisorConnection: how to reach a hypervisor (`New-BrokerHypervisorConnection`).

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{Condition, conditions_schema, named_list_schema};

/// A connection to a hypervisor; the hosting units that use it say which of its resources to use.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "mcs.imaging.dev",
    version = "v1alpha1",
    kind = "HypervisorConnection",
    namespaced,
    status = "HypervisorConnectionStatus",
    shortname = "hvc",
    category = "mcs",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.type != 'Local' || has(self.local)").message("spec.local is required when spec.type is Local"))]
#[x_kube(validation = Rule::new("self.type != 'KubeVirt' || has(self.kubeVirt)").message("spec.kubeVirt is required when spec.type is KubeVirt"))]
#[serde(rename_all = "camelCase")]
pub struct HypervisorConnectionSpec {
    /// The backend that does the work.
    #[serde(rename = "type")]
    pub connection_type: ConnectionType,
    /// Settings of the `Local` backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalConnection>,
    /// Settings of the `KubeVirt` backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_virt: Option<KubeVirtConnection>,
    /// A Secret in the same namespace holding the credentials for the hypervisor. It is read when
    /// connecting and never copied into status, logs or events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretReference>,
}

/// The kind of hypervisor behind a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum ConnectionType {
    /// qcow2 files on the operator's own storage, handled with qemu-img.
    Local,
    /// KubeVirt VirtualMachines and CDI DataVolumes in a Kubernetes cluster.
    KubeVirt,
}

/// Settings of the `Local` backend.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalConnection {
    /// The directories the backend may read and write. Every disk path resolves under one of them
    /// and can never escape it (symlinks included). Two roots never name one directory, and
    /// none lies inside another (the controller also checks other spellings, `/a/./b`). At most
    /// 16, which keeps that rule within the API server's CEL cost budget.
    #[x_kube(validation = Rule::new("self.all(a, self.all(b, a.name == b.name || (a.path != b.path && !b.path.startsWith(a.path.endsWith('/') ? a.path : a.path + '/'))))").message("spec.local.storageRoots: two storage roots name the same directory, or one lies inside another; each root must be a directory of its own"))]
    #[schemars(
        length(min = 1, max = 16),
        schema_with = "named_list_schema::<StorageRoot>"
    )]
    pub storage_roots: Vec<StorageRoot>,
    /// At most this many qemu-img processes at once (default: the operator's CPU count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub max_concurrent_operations: Option<i32>,
    /// A single qemu-img process is killed after this many seconds (default 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub operation_timeout_seconds: Option<i64>,
    /// Each image copy (consolidation, replication) reads at most this many MiB per second
    /// (`qemu-img convert -r`), to spare storage shared with running machines (default: no
    /// limit).
    #[serde(
        default,
        rename = "maxCopyRateMiBPerSecond",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_copy_rate_mib_per_second: Option<i64>,
}

/// A named directory on the operator's storage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageRoot {
    /// The name hosting units use to refer to this root.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Absolute path of the directory, as seen by the operator.
    #[schemars(length(min = 1, max = 4096), regex(pattern = r"^/"))]
    pub path: String,
}

/// Settings of the `KubeVirt` backend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubeVirtConnection {
    /// The namespace where the master VirtualMachines and their snapshots are read, and the
    /// prepared images' DataVolumes and the machines' VirtualMachines are created.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub namespace: String,
    /// The StorageClasses hosting units may use, by name: a hosting unit storage's `root` names
    /// one of them, and its PVCs are made in that class.
    #[schemars(
        length(min = 1, max = 64),
        schema_with = "named_list_schema::<KubeVirtStorageClass>"
    )]
    pub storage_classes: Vec<KubeVirtStorageClass>,
    /// A Secret in the same namespace as the connection whose key holds a kubeconfig for a
    /// remote KubeVirt cluster (default: the operator's own cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig_secret_ref: Option<KubeconfigSecretReference>,
}

/// A StorageClass of a `KubeVirt` connection, under the name hosting units use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubeVirtStorageClass {
    /// The name hosting units use to refer to it (their storages' `root`).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// The StorageClass's name.
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: String,
}

/// A key of a Secret holding a kubeconfig.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubeconfigSecretReference {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key holding the kubeconfig (default `kubeconfig`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

/// A reference to a Secret in the same namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The observed state of a connection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HypervisorConnectionStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Whether the hypervisor can be reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ConnectionState>,
    /// Current alerts raised for the hypervisor (e.g. a storage root that is missing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<String>,
    /// Standard conditions (`Ready`, `Degraded`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// Whether a hypervisor can be communicated with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum ConnectionState {
    /// Reachable and usable.
    On,
    /// Not reachable, or misconfigured.
    Unavailable,
}
