//! Cross-object rules: the checks that need more than one object, with the SDK's error ids.
//!
//! The controllers and the admission webhook map their Kubernetes objects onto the small fact
//! structs here ([`SchemeFacts`], [`ImageSpecFacts`], [`PreparedSpecFacts`], ...), so this
//! module depends on no Kubernetes type. Every [`RuleError`] message starts with the field it
//! is about (e.g. `spec.networkMapping["0"]`) and states the rule that was broken. Functions
//! that can find several problems return all of them, not just the first.
//!
//! Inventory paths are checked with [`crate::inventory_path::InventoryPath`]: a path must
//! include the `XDHyp:` drive and lie within the scheme's hosting unit.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Reason;
use crate::history::{MAX_MAX_VERSIONS, MIN_MAX_VERSIONS};
use crate::inventory_path::{InventoryPath, PathError};

/// The field paths the rules name in their messages, as spelled in the API.
pub mod field {
    /// The ProvScheme's prepared image version spec.
    pub const IMAGE_VERSION_SPEC_REF: &str = "spec.imageVersionSpecRef";
    /// The ProvScheme's hosting unit.
    pub const HOSTING_UNIT_REF: &str = "spec.hostingUnitRef";
    /// The ProvScheme's identity pool.
    pub const IDENTITY_POOL_REF: &str = "spec.identityPoolRef";
    /// The ProvScheme's network mapping.
    pub const NETWORK_MAPPING: &str = "spec.networkMapping";
    /// The ProvScheme's service offering path.
    pub const SERVICE_OFFERING: &str = "spec.serviceOffering";
    /// The ProvScheme's security group paths.
    pub const SECURITY_GROUPS: &str = "spec.securityGroups";
    /// The ProvScheme's CPU count.
    pub const VM_CPU_COUNT: &str = "spec.vmCpuCount";
    /// The ProvScheme's memory size.
    pub const VM_MEMORY_MB: &str = "spec.vmMemoryMB";
    /// The ProvScheme's machine profile path.
    pub const MACHINE_PROFILE: &str = "spec.machineProfile";
    /// The ProvScheme's tenancy type.
    pub const TENANCY_TYPE: &str = "spec.tenancyType";
    /// Whether the ProvScheme uses the write-back cache.
    pub const USE_WRITE_BACK_CACHE: &str = "spec.useWriteBackCache";
    /// The ProvScheme's write-back cache disk size.
    pub const WRITE_BACK_CACHE_DISK_SIZE: &str = "spec.writeBackCacheDiskSizeGB";
    /// The ProvScheme's write-back cache memory size.
    pub const WRITE_BACK_CACHE_MEMORY_SIZE: &str = "spec.writeBackCacheMemorySizeMB";
    /// The ProvScheme's version maximum.
    pub const MAX_VERSIONS: &str = "spec.maxVersions";
    /// A prepared ImageVersionSpec's master spec.
    pub const PREPARED_SOURCE_SPEC_REF: &str = "spec.prepared.sourceSpecRef";
    /// A prepared ImageVersionSpec's network mapping.
    pub const PREPARED_NETWORK_MAPPING: &str = "spec.prepared.networkMapping";
    /// A prepared ImageVersionSpec's service offering path.
    pub const PREPARED_SERVICE_OFFERING: &str = "spec.prepared.serviceOffering";
    /// A prepared ImageVersionSpec's machine profile path.
    pub const PREPARED_MACHINE_PROFILE: &str = "spec.prepared.machineProfile";
    /// A master ImageVersionSpec's hosting unit.
    pub const MASTER_HOSTING_UNIT_REF: &str = "spec.master.hostingUnitRef";
}

/// Whether machines are single-session (desktop OS) or multi-session (server OS); the SDK's
/// `VDASessionSupport`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum SessionSupport {
    /// One user session per machine.
    SingleSession,
    /// Many user sessions per machine.
    MultiSession,
}

impl fmt::Display for SessionSupport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::SingleSession => "SingleSession",
            Self::MultiSession => "MultiSession",
        })
    }
}

/// The tenancy of machines on cloud hypervisors; the SDK's `TenancyType`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum TenancyType {
    /// Machines share hosts with other tenants.
    #[default]
    Shared,
    /// Machines run on hosts dedicated to this tenant.
    Dedicated,
}

impl fmt::Display for TenancyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Shared => "Shared",
            Self::Dedicated => "Dedicated",
        })
    }
}

/// Whether an image version spec is a master or a prepared image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum SpecKind {
    /// A master image (`Add-ProvImageVersionSpec`).
    Master,
    /// A prepared image (`New-ProvImageVersionSpec`).
    Prepared,
}

impl fmt::Display for SpecKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Master => "master",
            Self::Prepared => "prepared",
        })
    }
}

/// The result of an image version or image version spec, as the SDK reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ImageStatus {
    /// Nothing is known yet.
    #[default]
    Unknown,
    /// Work is under way.
    InProgress,
    /// Usable.
    Success,
    /// The last task failed.
    Failed,
}

impl fmt::Display for ImageStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unknown => "Unknown",
            Self::InProgress => "InProgress",
            Self::Success => "Success",
            Self::Failed => "Failed",
        })
    }
}

/// The kinds of object a reference can name, for [`require`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// A ProvScheme.
    ProvisioningScheme,
    /// A HostingUnit.
    HostingUnit,
    /// An IdentityPool.
    IdentityPool,
    /// An ImageVersionSpec.
    ImageVersionSpec,
    /// An ImageVersion.
    ImageVersion,
    /// An ImageDefinition.
    ImageDefinition,
    /// A HypervisorConnection.
    HypervisorConnection,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ProvisioningScheme => "provisioning scheme",
            Self::HostingUnit => "hosting unit",
            Self::IdentityPool => "identity pool",
            Self::ImageVersionSpec => "image version spec",
            Self::ImageVersion => "image version",
            Self::ImageDefinition => "image definition",
            Self::HypervisorConnection => "hypervisor connection",
        })
    }
}

/// A broken cross-object rule. Every message starts with the field it is about.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// A referenced provisioning scheme does not exist.
    #[error("{field}: provisioning scheme '{name}' was not found in the namespace")]
    ProvisioningSchemeNotFound {
        /// The referencing field.
        field: String,
        /// The referenced name.
        name: String,
    },
    /// A referenced hosting unit does not exist.
    #[error("{field}: hosting unit '{name}' was not found in the namespace")]
    HostingUnitNotFound {
        /// The referencing field.
        field: String,
        /// The referenced name.
        name: String,
    },
    /// A referenced identity pool does not exist.
    #[error("{field}: identity pool '{name}' was not found in the namespace")]
    IdentityPoolNotFound {
        /// The referencing field.
        field: String,
        /// The referenced name.
        name: String,
    },
    /// A referenced image version spec does not exist.
    #[error("{field}: image version spec '{name}' was not found in the namespace")]
    ImageVersionSpecNotFound {
        /// The referencing field.
        field: String,
        /// The referenced name.
        name: String,
    },
    /// A referenced image version does not exist.
    #[error("{field}: image version '{name}' was not found in the namespace")]
    ImageVersionNotFound {
        /// The referencing field.
        field: String,
        /// The referenced name.
        name: String,
    },
    /// A referenced image definition does not exist.
    #[error("{field}: image definition '{name}' was not found in the namespace")]
    ImageDefinitionNotFound {
        /// The referencing field.
        field: String,
        /// The referenced name.
        name: String,
    },
    /// A referenced hypervisor connection does not exist.
    #[error("{field}: hypervisor connection '{name}' was not found in the namespace")]
    HypervisorConnectionNotFound {
        /// The referencing field.
        field: String,
        /// The referenced name.
        name: String,
    },
    /// The spec a scheme uses is not a prepared spec in state `Success`.
    #[error(
        "{field}: image version spec '{name}' is a {kind} spec in state {status} and cannot be used; a provisioning scheme needs a prepared spec in state Success"
    )]
    ImageVersionSpecNotUsable {
        /// The referencing field.
        field: String,
        /// The spec's name.
        name: String,
        /// Master or prepared.
        kind: SpecKind,
        /// The spec's status.
        status: ImageStatus,
    },
    /// The new image's definition serves other sessions than the scheme was created for.
    #[error(
        "{field}: the provisioning scheme makes {scheme} machines (fixed when it was created from its first image), but image version spec '{spec}' belongs to image definition '{definition}' with vdaSessionSupport {image}; session support must match"
    )]
    VdaSessionSupportMismatch {
        /// The referencing field.
        field: String,
        /// The new spec's name.
        spec: String,
        /// The new spec's image definition.
        definition: String,
        /// The scheme's session support.
        scheme: SessionSupport,
        /// The image definition's session support.
        image: SessionSupport,
    },
    /// A machine profile was added to a scheme created without one, or removed once set.
    #[error("{field}: {}", if *.added {
        "a machine profile cannot be added to a provisioning scheme that was created without one"
    } else {
        "a machine profile cannot be removed from a provisioning scheme once it is set; change it to another profile instead"
    })]
    MachineProfileUpdateNotSupported {
        /// The machine profile field.
        field: String,
        /// `true` when a profile was added, `false` when it was removed.
        added: bool,
    },
    /// The machine profile's tenancy type differs from the scheme's.
    #[error(
        "{field}: the machine profile has tenancy type {profile}, but the provisioning scheme uses {scheme}; the machine profile tenancy type must match the scheme"
    )]
    IncorrectTenancyType {
        /// The machine profile field.
        field: String,
        /// The profile's tenancy type.
        profile: TenancyType,
        /// The scheme's tenancy type.
        scheme: TenancyType,
    },
    /// A write-back cache size is set on a scheme created without `useWriteBackCache`.
    #[error(
        "{field}: can only be set when the provisioning scheme was created with spec.useWriteBackCache: true"
    )]
    WriteBackCacheNotEnabled {
        /// The size field.
        field: String,
    },
    /// `vmCpuCount` or `vmMemoryMB` is set together with `serviceOffering`.
    #[error(
        "{field}: cannot be used together with {offering_field}; choose either a service offering or explicit CPU and memory"
    )]
    ServiceOfferingConflict {
        /// The CPU or memory field.
        field: String,
        /// The service offering field.
        offering_field: String,
    },
    /// The network mapping is empty, or an entry is not a network path in the hosting unit.
    #[error("{field}: {detail}")]
    NetworkPathResolutionFailed {
        /// The mapping, or the offending entry (`spec.networkMapping["0"]`).
        field: String,
        /// What is wrong.
        detail: String,
    },
    /// The service offering path could not be resolved in the hosting unit.
    #[error(
        "{field}: {detail}; the path must include a drive specification and a path to a .serviceoffering item within hosting unit '{hosting_unit}'"
    )]
    ServiceOfferingPathResolutionFailed {
        /// The service offering field.
        field: String,
        /// The hosting unit the path must lie in.
        hosting_unit: String,
        /// What is wrong.
        detail: String,
    },
    /// A security group path could not be resolved in the hosting unit.
    #[error(
        "{field}: {detail}; the path must include a drive specification and a path to a .securitygroup item within hosting unit '{hosting_unit}'"
    )]
    SecurityGroupPathResolutionFailed {
        /// The offending entry (`spec.securityGroups[0]`).
        field: String,
        /// The hosting unit the path must lie in.
        hosting_unit: String,
        /// What is wrong.
        detail: String,
    },
    /// The machine profile path could not be resolved in the hosting unit.
    #[error(
        "{field}: {detail}; the path must include a drive specification and a path to an item within hosting unit '{hosting_unit}'"
    )]
    MachineProfilePathResolutionFailed {
        /// The machine profile field.
        field: String,
        /// The hosting unit the path must lie in.
        hosting_unit: String,
        /// What is wrong.
        detail: String,
    },
    /// Two entries of a list of directories (storage roots, storages) name one directory, or
    /// one lies inside another where that is not allowed.
    #[error(
        "{field}: {detail}; each entry must name a directory of its own, so that a disk has one owner"
    )]
    StorageDirectoryConflict {
        /// The later of the two entries (`spec.storages[secondary]`).
        field: String,
        /// Which entries, and how they overlap.
        detail: String,
    },
    /// `maxVersions` is outside `1..=32000`.
    #[error(
        "{field}: is {value}, but the provisioning scheme version maximum must be in the range 1..=32000"
    )]
    InvalidProvisioningSchemeVersionMaximum {
        /// The maximum field.
        field: String,
        /// The rejected value.
        value: i64,
    },
    /// The master image's hosting unit is not on one of the image definition's connections.
    #[error(
        "{field}: hosting unit '{hosting_unit}' uses hypervisor connection '{connection}', which is not one of the connections of image definition '{definition}' ({}); the master image must come from a hosting unit the image definition uses",
        list_or_none(.definition_connections)
    )]
    HostingUnitMismatch {
        /// The hosting unit field.
        field: String,
        /// The master spec's hosting unit.
        hosting_unit: String,
        /// The hosting unit's connection.
        connection: String,
        /// The image definition.
        definition: String,
        /// The image definition's connections.
        definition_connections: Vec<String>,
    },
    /// The image version already has a prepared spec for the hosting unit.
    #[error(
        "{field}: image version '{version}' already has prepared spec '{existing}' for hosting unit '{hosting_unit}'; an image version has at most one prepared spec per hosting unit"
    )]
    ImageVersionSpecAlreadyExists {
        /// The field that chooses the hosting unit.
        field: String,
        /// The image version.
        version: String,
        /// The hosting unit.
        hosting_unit: String,
        /// The existing prepared spec.
        existing: String,
    },
    /// A field that is fixed when the scheme is created was changed.
    #[error(
        "{field}: is fixed when the provisioning scheme is created and cannot change ({old} -> {new})"
    )]
    FieldImmutable {
        /// The field.
        field: String,
        /// The value at creation.
        old: String,
        /// The requested value.
        new: String,
    },
}

/// Formats a list of names for a message, or `none` when empty.
fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names
            .iter()
            .map(|n| format!("'{n}'"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Reason for RuleError {
    fn reason(&self) -> &'static str {
        match self {
            Self::ProvisioningSchemeNotFound { .. } => "ProvisioningSchemeNotFound",
            Self::HostingUnitNotFound { .. } => "HostingUnitNotFound",
            Self::IdentityPoolNotFound { .. } => "IdentityPoolNotFound",
            Self::ImageVersionSpecNotFound { .. } => "ImageVersionSpecNotFound",
            Self::ImageVersionNotFound { .. } => "ImageVersionNotFound",
            Self::ImageDefinitionNotFound { .. } => "ImageDefinitionNotFound",
            Self::HypervisorConnectionNotFound { .. } => "HypervisorConnectionNotFound",
            Self::ImageVersionSpecNotUsable { .. } => "ImageVersionSpecNotUsable",
            Self::VdaSessionSupportMismatch { .. } => "VdaSessionSupportMismatch",
            Self::MachineProfileUpdateNotSupported { .. } => "MachineProfileUpdateNotSupported",
            Self::IncorrectTenancyType { .. } => "IncorrectTenancyType",
            Self::WriteBackCacheNotEnabled { .. } => "WriteBackCacheNotEnabled",
            Self::ServiceOfferingConflict { .. } => "ServiceOfferingConflict",
            Self::NetworkPathResolutionFailed { .. } => "NetworkPathResolutionFailed",
            Self::ServiceOfferingPathResolutionFailed { .. } => {
                "ServiceOfferingPathResolutionFailed"
            }
            Self::SecurityGroupPathResolutionFailed { .. } => "SecurityGroupPathResolutionFailed",
            Self::MachineProfilePathResolutionFailed { .. } => "MachineProfilePathResolutionFailed",
            Self::InvalidProvisioningSchemeVersionMaximum { .. } => {
                "InvalidProvisioningSchemeVersionMaximum"
            }
            Self::HostingUnitMismatch { .. } => "HostingUnitMismatch",
            Self::ImageVersionSpecAlreadyExists { .. } => "ImageVersionSpecAlreadyExists",
            Self::FieldImmutable { .. } => "FieldImmutable",
            Self::StorageDirectoryConflict { .. } => "StorageDirectoryConflict",
        }
    }
}

impl RuleError {
    /// The field the error is about, e.g. `spec.networkMapping["0"]`.
    pub fn field(&self) -> &str {
        match self {
            Self::ProvisioningSchemeNotFound { field, .. }
            | Self::HostingUnitNotFound { field, .. }
            | Self::IdentityPoolNotFound { field, .. }
            | Self::ImageVersionSpecNotFound { field, .. }
            | Self::ImageVersionNotFound { field, .. }
            | Self::ImageDefinitionNotFound { field, .. }
            | Self::HypervisorConnectionNotFound { field, .. }
            | Self::ImageVersionSpecNotUsable { field, .. }
            | Self::VdaSessionSupportMismatch { field, .. }
            | Self::MachineProfileUpdateNotSupported { field, .. }
            | Self::IncorrectTenancyType { field, .. }
            | Self::WriteBackCacheNotEnabled { field }
            | Self::ServiceOfferingConflict { field, .. }
            | Self::NetworkPathResolutionFailed { field, .. }
            | Self::ServiceOfferingPathResolutionFailed { field, .. }
            | Self::SecurityGroupPathResolutionFailed { field, .. }
            | Self::MachineProfilePathResolutionFailed { field, .. }
            | Self::InvalidProvisioningSchemeVersionMaximum { field, .. }
            | Self::HostingUnitMismatch { field, .. }
            | Self::ImageVersionSpecAlreadyExists { field, .. }
            | Self::FieldImmutable { field, .. }
            | Self::StorageDirectoryConflict { field, .. } => field,
        }
    }
}

/// Returns the looked-up object, or the kind's `...NotFound` error naming `field` and `name`.
///
/// `field` is the referencing field (e.g. [`field::HOSTING_UNIT_REF`]); `name` the reference.
pub fn require<T>(
    found: Option<T>,
    what: ObjectKind,
    field: &str,
    name: &str,
) -> Result<T, RuleError> {
    found.ok_or_else(|| {
        let field = field.to_owned();
        let name = name.to_owned();
        match what {
            ObjectKind::ProvisioningScheme => RuleError::ProvisioningSchemeNotFound { field, name },
            ObjectKind::HostingUnit => RuleError::HostingUnitNotFound { field, name },
            ObjectKind::IdentityPool => RuleError::IdentityPoolNotFound { field, name },
            ObjectKind::ImageVersionSpec => RuleError::ImageVersionSpecNotFound { field, name },
            ObjectKind::ImageVersion => RuleError::ImageVersionNotFound { field, name },
            ObjectKind::ImageDefinition => RuleError::ImageDefinitionNotFound { field, name },
            ObjectKind::HypervisorConnection => {
                RuleError::HypervisorConnectionNotFound { field, name }
            }
        }
    })
}

/// What the rules need to know about an image version spec a scheme is to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSpecFacts {
    /// The spec's name.
    pub name: String,
    /// Master or prepared.
    pub kind: SpecKind,
    /// The spec's status.
    pub status: ImageStatus,
    /// The name of the image definition the spec's version belongs to.
    pub definition: String,
}

/// Checks that a scheme may use an image version spec: it must be a prepared spec in state
/// `Success`, and when the scheme already exists (`scheme_session` is its session support,
/// fixed when it was created from its first image) the spec's image definition must have the
/// same session support (`definition_session`). A new scheme passes `None`.
///
/// # Errors
///
/// [`RuleError::ImageVersionSpecNotUsable`] or [`RuleError::VdaSessionSupportMismatch`], both
/// naming [`field::IMAGE_VERSION_SPEC_REF`].
pub fn check_scheme_image(
    spec: &ImageSpecFacts,
    scheme_session: Option<SessionSupport>,
    definition_session: SessionSupport,
) -> Result<(), RuleError> {
    if spec.kind != SpecKind::Prepared || spec.status != ImageStatus::Success {
        return Err(RuleError::ImageVersionSpecNotUsable {
            field: field::IMAGE_VERSION_SPEC_REF.to_owned(),
            name: spec.name.clone(),
            kind: spec.kind,
            status: spec.status,
        });
    }
    match scheme_session {
        Some(scheme) if scheme != definition_session => Err(RuleError::VdaSessionSupportMismatch {
            field: field::IMAGE_VERSION_SPEC_REF.to_owned(),
            spec: spec.name.clone(),
            definition: spec.definition.clone(),
            scheme,
            image: definition_session,
        }),
        _ => Ok(()),
    }
}

/// What the rules need to know about a provisioning scheme's spec.
///
/// The controller fills it from the ProvScheme (and, for `machine_profile_tenancy`, from what
/// the backend resolved for the machine profile).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchemeFacts {
    /// The hosting unit the scheme's paths must lie in.
    pub hosting_unit: String,
    /// The scheme's tenancy type.
    pub tenancy_type: TenancyType,
    /// Whether the scheme uses the write-back cache (fixed at creation).
    pub use_write_back_cache: bool,
    /// The write-back cache disk size in GiB, if set.
    pub write_back_cache_disk_size: Option<i64>,
    /// The write-back cache memory size in MiB, if set.
    pub write_back_cache_memory_size: Option<i64>,
    /// The CPU count, if set.
    pub vm_cpu_count: Option<i64>,
    /// The memory size in MiB, if set.
    pub vm_memory_mb: Option<i64>,
    /// The service offering inventory path, if set.
    pub service_offering: Option<String>,
    /// The machine profile inventory path, if set.
    pub machine_profile: Option<String>,
    /// The tenancy type of the machine profile, when it is set and known.
    pub machine_profile_tenancy: Option<TenancyType>,
    /// The network mapping (NIC index to network path); `None` when not set.
    pub network_mapping: Option<BTreeMap<String, String>>,
    /// The version maximum, if set (the default is 99).
    pub max_versions: Option<i64>,
}

/// Checks one scheme's spec on its own: CPU/memory not with a service offering, write-back
/// cache sizes only with `useWriteBackCache`, the network mapping, service offering and
/// machine profile paths within the scheme's hosting unit, the machine profile's tenancy type,
/// and `maxVersions`. Returns every problem found (empty when all is well).
pub fn check_scheme(scheme: &SchemeFacts) -> Vec<RuleError> {
    let mut errors = Vec::new();
    if scheme.service_offering.is_some() {
        for (set, name) in [
            (scheme.vm_cpu_count.is_some(), field::VM_CPU_COUNT),
            (scheme.vm_memory_mb.is_some(), field::VM_MEMORY_MB),
        ] {
            if set {
                errors.push(RuleError::ServiceOfferingConflict {
                    field: name.to_owned(),
                    offering_field: field::SERVICE_OFFERING.to_owned(),
                });
            }
        }
    }
    if !scheme.use_write_back_cache {
        errors.extend(write_back_cache_errors(scheme));
    }
    if let Some(map) = &scheme.network_mapping {
        errors.extend(check_network_mapping(
            field::NETWORK_MAPPING,
            map,
            &scheme.hosting_unit,
        ));
    }
    if let Some(path) = &scheme.service_offering
        && let Err(e) = check_service_offering(field::SERVICE_OFFERING, path, &scheme.hosting_unit)
    {
        errors.push(e);
    }
    if let Some(path) = &scheme.machine_profile {
        if let Err(e) = check_machine_profile(field::MACHINE_PROFILE, path, &scheme.hosting_unit) {
            errors.push(e);
        }
        if let Some(profile) = scheme.machine_profile_tenancy
            && profile != scheme.tenancy_type
        {
            errors.push(RuleError::IncorrectTenancyType {
                field: field::MACHINE_PROFILE.to_owned(),
                profile,
                scheme: scheme.tenancy_type,
            });
        }
    }
    if let Some(value) = scheme.max_versions
        && let Err(e) = check_max_versions(field::MAX_VERSIONS, value)
    {
        errors.push(e);
    }
    errors
}

/// The write-back cache size fields that are set.
fn write_back_cache_errors(scheme: &SchemeFacts) -> Vec<RuleError> {
    [
        (
            scheme.write_back_cache_disk_size.is_some(),
            field::WRITE_BACK_CACHE_DISK_SIZE,
        ),
        (
            scheme.write_back_cache_memory_size.is_some(),
            field::WRITE_BACK_CACHE_MEMORY_SIZE,
        ),
    ]
    .into_iter()
    .filter(|(set, _)| *set)
    .map(|(_, name)| RuleError::WriteBackCacheNotEnabled {
        field: name.to_owned(),
    })
    .collect()
}

/// Checks a change of a scheme's spec from `old` (as created and last accepted) to `new`: all
/// of [`check_scheme`] on `new` (with `useWriteBackCache` as the scheme was created), plus the
/// rules of `Set-ProvScheme` that compare the two: a machine profile cannot be added to a
/// scheme created without one nor removed once set, and the hosting unit, tenancy type and
/// `useWriteBackCache` are fixed at creation. Returns every problem found.
pub fn check_scheme_update(old: &SchemeFacts, new: &SchemeFacts) -> Vec<RuleError> {
    let mut errors = Vec::new();
    for (name, before, after) in [
        (
            field::HOSTING_UNIT_REF,
            old.hosting_unit.clone(),
            new.hosting_unit.clone(),
        ),
        (
            field::TENANCY_TYPE,
            old.tenancy_type.to_string(),
            new.tenancy_type.to_string(),
        ),
        (
            field::USE_WRITE_BACK_CACHE,
            old.use_write_back_cache.to_string(),
            new.use_write_back_cache.to_string(),
        ),
    ] {
        if before != after {
            errors.push(RuleError::FieldImmutable {
                field: name.to_owned(),
                old: before,
                new: after,
            });
        }
    }
    match (&old.machine_profile, &new.machine_profile) {
        (None, Some(_)) => errors.push(RuleError::MachineProfileUpdateNotSupported {
            field: field::MACHINE_PROFILE.to_owned(),
            added: true,
        }),
        (Some(_), None) => errors.push(RuleError::MachineProfileUpdateNotSupported {
            field: field::MACHINE_PROFILE.to_owned(),
            added: false,
        }),
        _ => {}
    }
    // The fixed fields are judged as the scheme was created, so a change of them is reported
    // once above and does not also make every path or size look wrong.
    let effective = SchemeFacts {
        hosting_unit: old.hosting_unit.clone(),
        use_write_back_cache: old.use_write_back_cache,
        tenancy_type: old.tenancy_type,
        ..new.clone()
    };
    errors.extend(check_scheme(&effective));
    errors
}

/// Checks a network mapping: it must not be empty; every key must be a NIC index (`0`, `1`,
/// ...); every value must be a non-empty inventory path naming an item within `hosting_unit`.
/// `field` is the mapping's field ([`field::NETWORK_MAPPING`] or
/// [`field::PREPARED_NETWORK_MAPPING`]); entries are reported as `field["key"]`. Returns every
/// problem found, each [`RuleError::NetworkPathResolutionFailed`].
pub fn check_network_mapping(
    field: &str,
    map: &BTreeMap<String, String>,
    hosting_unit: &str,
) -> Vec<RuleError> {
    if map.is_empty() {
        return vec![RuleError::NetworkPathResolutionFailed {
            field: field.to_owned(),
            detail: "must not be empty; map at least one NIC index (\"0\") to a network path"
                .to_owned(),
        }];
    }
    let mut errors = Vec::new();
    for (key, value) in map {
        let entry = format!("{field}[{key:?}]");
        if !is_nic_index(key) {
            errors.push(RuleError::NetworkPathResolutionFailed {
                field: entry.clone(),
                detail: format!(
                    "key {key:?} is not a NIC index; keys must be decimal numbers such as \"0\""
                ),
            });
        }
        let problem = if value.trim().is_empty() {
            Some("the network path is empty".to_owned())
        } else {
            resolve_item(value, hosting_unit).err()
        };
        if let Some(problem) = problem {
            errors.push(RuleError::NetworkPathResolutionFailed {
                field: entry,
                detail: format!(
                    "{problem}; each NIC must map to a network path with a drive specification within hosting unit '{hosting_unit}'"
                ),
            });
        }
    }
    errors
}

/// Whether `key` is a NIC index: decimal digits without a superfluous leading zero.
fn is_nic_index(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 4
        && key.bytes().all(|b| b.is_ascii_digit())
        && (key == "0" || !key.starts_with('0'))
}

/// Parses `path` and checks that it names an item (not the hosting unit itself) within
/// `hosting_unit`; the error is a human-readable description.
fn resolve_item(path: &str, hosting_unit: &str) -> Result<InventoryPath, String> {
    let parsed = InventoryPath::parse(path).map_err(|e| describe(&e))?;
    parsed.within(hosting_unit).map_err(|e| describe(&e))?;
    if parsed.leaf().is_none() {
        return Err(format!(
            "inventory path {path:?} names the hosting unit itself, not an item in it"
        ));
    }
    Ok(parsed)
}

/// The description of a path error used inside rule messages.
fn describe(error: &PathError) -> String {
    error.to_string()
}

/// Checks a service offering path: it must include the `XDHyp:` drive and lead to a
/// `.serviceoffering` item within `hosting_unit`.
///
/// # Errors
///
/// [`RuleError::ServiceOfferingPathResolutionFailed`] naming `field`.
pub fn check_service_offering(
    field: &str,
    path: &str,
    hosting_unit: &str,
) -> Result<(), RuleError> {
    let fail = |detail: String| RuleError::ServiceOfferingPathResolutionFailed {
        field: field.to_owned(),
        hosting_unit: hosting_unit.to_owned(),
        detail,
    };
    if path.trim().is_empty() {
        return Err(fail("the service offering path is empty".to_owned()));
    }
    let parsed = resolve_item(path, hosting_unit).map_err(fail)?;
    parsed
        .expect_leaf_kind("serviceoffering")
        .map_err(|e| fail(describe(&e)))?;
    Ok(())
}

/// The item kinds a machine profile may name: a VM (`.vm`, the SDK's template VM), an Azure
/// template spec version, an AWS launch template version (the seeds' `Set-ProvScheme`
/// examples), or a Local backend machine definition (`profiles.folder\<name>.machineprofile`).
pub const MACHINE_PROFILE_KINDS: [&str; 4] = [
    "vm",
    "templatespecversion",
    "launchtemplateversion",
    "machineprofile",
];

/// Checks a machine profile path: it must include the `XDHyp:` drive and lead to an item
/// within `hosting_unit` whose kind is one of [`MACHINE_PROFILE_KINDS`] (a network, service
/// offering, snapshot or folder is not a machine profile).
///
/// # Errors
///
/// [`RuleError::MachineProfilePathResolutionFailed`] naming `field`.
pub fn check_machine_profile(field: &str, path: &str, hosting_unit: &str) -> Result<(), RuleError> {
    let fail = |detail: String| RuleError::MachineProfilePathResolutionFailed {
        field: field.to_owned(),
        hosting_unit: hosting_unit.to_owned(),
        detail,
    };
    if path.trim().is_empty() {
        return Err(fail("the machine profile path is empty".to_owned()));
    }
    let parsed = resolve_item(path, hosting_unit).map_err(fail)?;
    match parsed.leaf() {
        Some(leaf) if MACHINE_PROFILE_KINDS.iter().any(|k| leaf.is_kind(k)) => Ok(()),
        leaf => Err(fail(format!(
            "inventory path {path:?} names {}, not a machine profile (a {} item)",
            leaf.and_then(|l| l.kind.as_deref()).map_or_else(
                || "an item with no kind".to_owned(),
                |k| format!("a .{k} item")
            ),
            MACHINE_PROFILE_KINDS
                .iter()
                .map(|k| format!(".{k}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// One directory a storage root or a storage names: its name in the list and its path
/// components (for a hosting unit storage, the root's name followed by the relative path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedDirectory {
    /// The entry's name (`images`, `primary`).
    pub name: String,
    /// The path as written (for messages).
    pub spelled: String,
    /// The path's components.
    pub components: Vec<String>,
}

impl NamedDirectory {
    /// An entry named `name` for the directory `path`, split on `/` with empty and `.`
    /// components dropped and `..` taking the previous component away (lexically: symlinks
    /// are the backend's to resolve). `prefix` is prepended (a hosting unit storage's root).
    pub fn new(name: &str, prefix: Option<&str>, path: &str) -> NamedDirectory {
        let mut components: Vec<String> = prefix.map(|p| vec![p.to_owned()]).unwrap_or_default();
        let floor = components.len();
        for part in path.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    if components.len() > floor {
                        components.pop();
                    } else {
                        components.push("..".to_owned());
                    }
                }
                other => components.push(other.to_owned()),
            }
        }
        NamedDirectory {
            name: name.to_owned(),
            spelled: path.to_owned(),
            components,
        }
    }
}

/// Checks that no two entries of `dirs` name the same directory and, when `nested` is false,
/// that none lies inside another. `field` is the list (`spec.local.storageRoots`); each error
/// names the later entry (`spec.local.storageRoots[fast]`) and the earlier one.
///
/// # Errors
///
/// One [`RuleError::StorageDirectoryConflict`] per conflicting entry.
pub fn check_distinct_directories(
    field: &str,
    dirs: &[NamedDirectory],
    nested: bool,
) -> Vec<RuleError> {
    let mut errors = Vec::new();
    for (i, later) in dirs.iter().enumerate() {
        let clash = dirs[..i].iter().find_map(|earlier| {
            let (short, long) = if earlier.components.len() <= later.components.len() {
                (&earlier.components, &later.components)
            } else {
                (&later.components, &earlier.components)
            };
            if short == long {
                Some((earlier, "the same directory as"))
            } else if !nested && long.starts_with(short) {
                Some((
                    earlier,
                    if short == &earlier.components {
                        "inside"
                    } else {
                        "a parent directory of"
                    },
                ))
            } else {
                None
            }
        });
        if let Some((earlier, relation)) = clash {
            errors.push(RuleError::StorageDirectoryConflict {
                field: format!("{field}[{}]", later.name),
                detail: format!(
                    "{:?} is {relation} {field}[{}] ({:?})",
                    later.spelled, earlier.name, earlier.spelled
                ),
            });
        }
    }
    errors
}

/// Checks a provisioning scheme version maximum: it must be in `1..=32000`.
///
/// # Errors
///
/// [`RuleError::InvalidProvisioningSchemeVersionMaximum`] naming `field`.
pub fn check_max_versions(field: &str, value: i64) -> Result<(), RuleError> {
    if (i64::from(MIN_MAX_VERSIONS)..=i64::from(MAX_MAX_VERSIONS)).contains(&value) {
        Ok(())
    } else {
        Err(RuleError::InvalidProvisioningSchemeVersionMaximum {
            field: field.to_owned(),
            value,
        })
    }
}

/// What the rules need to know about an existing prepared image version spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedSpecFacts {
    /// The spec's name.
    pub name: String,
    /// The image version it belongs to.
    pub version: String,
    /// The hosting unit it is prepared on (its master spec's).
    pub hosting_unit: String,
}

/// Checks that `new` would be the only prepared spec of its image version on its hosting
/// unit. `existing` are the other prepared specs (a spec with `new`'s name is ignored, so a
/// spec may be checked against a list that includes itself). `field` is the field that
/// decides the hosting unit, usually [`field::PREPARED_SOURCE_SPEC_REF`].
///
/// # Errors
///
/// [`RuleError::ImageVersionSpecAlreadyExists`] naming the first conflicting spec (by name).
pub fn check_prepared_spec_unique(
    field: &str,
    new: &PreparedSpecFacts,
    existing: &[PreparedSpecFacts],
) -> Result<(), RuleError> {
    let conflict = existing
        .iter()
        .filter(|e| {
            e.name != new.name && e.version == new.version && e.hosting_unit == new.hosting_unit
        })
        .map(|e| e.name.as_str())
        .min();
    match conflict {
        Some(existing) => Err(RuleError::ImageVersionSpecAlreadyExists {
            field: field.to_owned(),
            version: new.version.clone(),
            hosting_unit: new.hosting_unit.clone(),
            existing: existing.to_owned(),
        }),
        None => Ok(()),
    }
}

/// What the rules need to know about a hosting unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostingUnitFacts {
    /// The hosting unit's name.
    pub name: String,
    /// The hypervisor connection it uses.
    pub connection: String,
}

/// What the rules need to know about an image definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageDefinitionFacts {
    /// The definition's name.
    pub name: String,
    /// The definition's session support.
    pub session_support: SessionSupport,
    /// The hypervisor connections attached to it (`Add-ProvImageDefinitionConnection`).
    pub connections: Vec<String>,
}

/// Checks that a master image's hosting unit uses one of the image definition's connections.
/// `field` is the master spec's hosting unit field, usually [`field::MASTER_HOSTING_UNIT_REF`].
///
/// # Errors
///
/// [`RuleError::HostingUnitMismatch`].
pub fn check_master_hosting_unit(
    field: &str,
    hosting_unit: &HostingUnitFacts,
    definition: &ImageDefinitionFacts,
) -> Result<(), RuleError> {
    if definition.connections.contains(&hosting_unit.connection) {
        Ok(())
    } else {
        Err(RuleError::HostingUnitMismatch {
            field: field.to_owned(),
            hosting_unit: hosting_unit.name.clone(),
            connection: hosting_unit.connection.clone(),
            definition: definition.name.clone(),
            definition_connections: definition.connections.clone(),
        })
    }
}
