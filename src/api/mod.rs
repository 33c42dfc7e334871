//! The `mcs.imaging.dev/v1alpha1` API: the Rust types of every custom resource.
//!
//! The CRDs in `crds/` are generated from these types (`mcs-operator crd`); admission rules that
//! the schema can express (ranges, enums, CEL `x-kubernetes-validations`) live here too, next to
//! the fields they guard.

// kube's CustomResource derive emits one `#[kube(printcolumn(...))]`-shaped attribute per
// column, which clippy mistakes for duplicates.
#![allow(clippy::duplicated_attributes)]

mod common;
mod connection;
mod hosting_unit;
mod identity_pool;
mod image_definition;
mod image_version;
mod image_version_spec;
mod machine_size;
mod prov_scheme;
mod prov_vm;

pub use common::*;
pub use connection::*;
pub use hosting_unit::*;
pub use identity_pool::*;
pub use image_definition::*;
pub use image_version::*;
pub use image_version_spec::*;
pub use machine_size::*;
pub use prov_scheme::*;
pub use prov_vm::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every mcs-operator kind.
pub const GROUP: &str = "mcs.imaging.dev";
/// The API version of every mcs-operator kind.
pub const VERSION: &str = "v1alpha1";

/// Every CRD of the API, in dependency order (what a kind references comes before it).
///
/// Each carries the annotations [`ANNOTATION_SCHEMA_HASH`] and [`ANNOTATION_OPERATOR_VERSION`],
/// so that a running operator can tell whether the installed CRDs are the ones it was built with.
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    [
        HypervisorConnection::crd(),
        HostingUnit::crd(),
        IdentityPool::crd(),
        ImageDefinition::crd(),
        ImageVersion::crd(),
        ImageVersionSpec::crd(),
        ProvScheme::crd(),
        ProvVm::crd(),
    ]
    .into_iter()
    .map(|mut crd| {
        let hash = schema_hash(&crd);
        let annotations = crd
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        annotations.insert(ANNOTATION_SCHEMA_HASH.to_string(), hash);
        annotations.insert(
            ANNOTATION_OPERATOR_VERSION.to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        );
        crd
    })
    .collect()
}

/// The CRD annotation holding the SHA-256 of the CRD's `spec` as generated (see [`schema_hash`]).
pub const ANNOTATION_SCHEMA_HASH: &str = "mcs.imaging.dev/schema-hash";
/// The CRD annotation naming the mcs-operator version that generated it.
pub const ANNOTATION_OPERATOR_VERSION: &str = "mcs.imaging.dev/operator-version";

/// The SHA-256 (hex) of a CRD's `spec` as JSON: it changes with any change of the schema,
/// names, versions or printer columns.
pub fn schema_hash(crd: &CustomResourceDefinition) -> String {
    use sha2::Digest as _;
    let spec = serde_json::to_vec(&crd.spec).unwrap_or_default();
    hex::encode(sha2::Sha256::digest(spec))
}
