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
mod prov_scheme;
mod prov_vm;

pub use common::*;
pub use connection::*;
pub use hosting_unit::*;
pub use identity_pool::*;
pub use image_definition::*;
pub use image_version::*;
pub use image_version_spec::*;
pub use prov_scheme::*;
pub use prov_vm::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every mcs-operator kind.
pub const GROUP: &str = "mcs.imaging.dev";
/// The API version of every mcs-operator kind.
pub const VERSION: &str = "v1alpha1";

/// Every CRD of the API, in dependency order (what a kind references comes before it).
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    vec![
        HypervisorConnection::crd(),
        HostingUnit::crd(),
        IdentityPool::crd(),
        ImageDefinition::crd(),
        ImageVersion::crd(),
        ImageVersionSpec::crd(),
        ProvScheme::crd(),
        ProvVm::crd(),
    ]
}
