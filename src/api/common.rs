//! Types shared by several kinds.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
pub use mcs_domain::rules::{ImageStatus, SessionSupport, SpecKind, TenancyType};
pub use mcs_domain::task::{TaskState, TaskStatus, TaskType, TerminatingError, WorkflowStatus};

/// Maps a NIC index (`"0"`, `"1"`, ...) to the inventory path of the network it attaches to,
/// e.g. `{"0": "XDHyp:\\HostingUnits\\hu\\lan.network"}` (the SDK's `-NetworkMapping`).
pub type NetworkMapping = BTreeMap<String, String>;

/// What happens to disks when the object that owns them is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Remove the disks with the object.
    #[default]
    Delete,
    /// Keep the disks on storage; only the Kubernetes object goes.
    Retain,
}

/// The standard condition types every kind reports.
pub mod condition_type {
    /// The object is usable (for tasks: finished successfully).
    pub const READY: &str = "Ready";
    /// A task or change is in progress.
    pub const PROGRESSING: &str = "Progressing";
    /// Something went wrong and needs attention.
    pub const DEGRADED: &str = "Degraded";
}

/// Annotation that starts a fresh task after a failure.
pub const ANNOTATION_RETRY: &str = "mcs.imaging.dev/retry";
/// Annotation that cancels the running task.
pub const ANNOTATION_CANCEL: &str = "mcs.imaging.dev/cancel";
/// Label carried by every ControllerRevision of a provisioning scheme: the scheme's name.
pub const LABEL_PROVSCHEME: &str = "mcs.imaging.dev/provscheme";
/// Annotation on a ProvVM: the generation of its scheme when the scheme created it. It is the
/// machine's age for "newest first" scale-down: unlike a creation timestamp (one-second
/// resolution, and concurrent creates land in any order) it is the same in a life that was
/// interrupted by a crash and one that was not.
pub const ANNOTATION_SCHEME_GENERATION: &str = "mcs.imaging.dev/scheme-generation";

/// The schema of a `conditions` list: a list-map keyed by `type`, as Kubernetes API conventions
/// require, so server-side apply merges conditions one by one.
pub(crate) fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    let object = schema.ensure_object();
    object.insert("x-kubernetes-list-type".into(), "map".into());
    object.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}

/// The schema of a list of named items (`name` unique): a list-map keyed by `name`.
pub(crate) fn named_list_schema<T: JsonSchema>(
    generator: &mut schemars::SchemaGenerator,
) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<T>>();
    let object = schema.ensure_object();
    object.insert("x-kubernetes-list-type".into(), "map".into());
    object.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["name"]),
    );
    schema
}

/// The most NICs a network mapping may name.
pub const MAX_NICS: u64 = 16;

/// The schema of a network mapping: at most [`MAX_NICS`] entries keyed by NIC index, each an
/// inventory path of at most 4096 characters. The bounds keep the CEL rules on it cheap for the API server.
pub(crate) fn network_mapping_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": MAX_NICS,
        "additionalProperties": { "type": "string", "maxLength": 4096 },
        "x-kubernetes-validations": [{
            "rule": "self.all(k, k.matches('^([0-9]|1[0-5])$'))",
            "message": "networkMapping keys must be NIC indexes from \"0\" to \"15\"",
        }],
    })
}

/// The schema of free-form string metadata: at most 64 entries of at most 1024 characters.
pub(crate) fn metadata_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": { "type": "string", "maxLength": 1024 },
    })
}
