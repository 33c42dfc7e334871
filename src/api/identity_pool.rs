//! IdentityPool: how machines are named and joined (`New-AcctIdentityPool`).

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{Condition, conditions_schema};
pub use mcs_domain::naming::NamingSchemeType;

/// A pool of machine identities: names from a naming scheme such as `VDI-###`.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "mcs.imaging.dev",
    version = "v1alpha1",
    kind = "IdentityPool",
    namespaced,
    status = "IdentityPoolStatus",
    shortname = "idp",
    category = "mcs",
    doc = "A pool of machine identities named from a naming scheme.",
    printcolumn(name = "Naming", type_ = "string", json_path = ".spec.namingScheme"),
    printcolumn(name = "Identity", type_ = "string", json_path = ".spec.identityType"),
    printcolumn(name = "Next", type_ = "integer", json_path = ".status.nextIndex"),
    printcolumn(name = "InUse", type_ = "integer", json_path = ".status.accountsInUse"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.identityType != 'ActiveDirectory' || has(self.domain)").message("spec.domain is required when spec.identityType is ActiveDirectory"))]
#[serde(rename_all = "camelCase")]
pub struct IdentityPoolSpec {
    /// The machine naming scheme: one run of `#` is replaced by the machine's index
    /// (`VDI-###` gives `VDI-001`, `VDI-002`, ... or `VDI-AAA`, `VDI-AAB` when alphabetic).
    /// Letters, digits and hyphens, not starting or ending with a hyphen (names are DNS host names).
    #[schemars(
        length(min = 2, max = 15),
        regex(pattern = r"^(?:[A-Za-z0-9][A-Za-z0-9-]*)?#+(?:[A-Za-z0-9-]*[A-Za-z0-9])?$")
    )]
    pub naming_scheme: String,
    /// Whether the `#` run is filled with digits or letters.
    #[serde(default = "default_naming_scheme_type")]
    pub naming_scheme_type: NamingSchemeType,
    /// The first index handed out.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub start_count: i64,
    /// How machines join a directory.
    #[serde(default = "default_identity_type")]
    pub identity_type: IdentityType,
    /// The directory domain (required for ActiveDirectory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(
            pattern = r"^[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$"
        )
    )]
    pub domain: Option<String>,
    /// The organizational unit machine accounts are created in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub ou: Option<String>,
}

fn default_naming_scheme_type() -> NamingSchemeType {
    NamingSchemeType::Numeric
}

fn default_identity_type() -> IdentityType {
    IdentityType::Workgroup
}

/// How a machine joins a directory service (the SDK's IdentityType).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum IdentityType {
    /// On-premises Active Directory.
    ActiveDirectory,
    /// Microsoft Entra ID (Azure AD).
    AzureAD,
    /// Hybrid Entra ID join.
    HybridAzureAD,
    /// Not domain-joined.
    Workgroup,
}

/// The observed state of an identity pool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentityPoolStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The index the next machine will get.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_index: Option<i64>,
    /// Identities in use by machines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accounts_in_use: Option<i64>,
    /// How many identities the naming scheme can hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<i64>,
    /// Standard conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}
