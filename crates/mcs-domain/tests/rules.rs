//! Unit tests of the cross-object rules, positive and negative for every rule.

use std::collections::BTreeMap;

use mcs_domain::Reason;
use mcs_domain::rules::{
    HostingUnitFacts, ImageDefinitionFacts, ImageSpecFacts, ImageStatus, ObjectKind,
    PreparedSpecFacts, RuleError, SchemeFacts, SessionSupport, SpecKind, TenancyType,
    check_machine_profile, check_master_hosting_unit, check_max_versions, check_network_mapping,
    check_prepared_spec_unique, check_scheme, check_scheme_image, check_scheme_update,
    check_service_offering, field, require,
};

const HU: &str = "hu1";
const LAN: &str = r"XDHyp:\HostingUnits\hu1\lan.network";
const OFFERING: &str =
    r"XDHyp:\HostingUnits\hu1\serviceoffering.folder\Standard_B2s.serviceoffering";
const PROFILE: &str = r"XDHyp:\HostingUnits\hu1\machineprofile.folder\rg.resourcegroup\ts.templatespec\1.0.templatespecversion";

fn reasons(errors: &[RuleError]) -> Vec<&'static str> {
    errors.iter().map(Reason::reason).collect()
}

fn fields(errors: &[RuleError]) -> Vec<&str> {
    errors.iter().map(RuleError::field).collect()
}

fn mapping(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn scheme() -> SchemeFacts {
    SchemeFacts {
        hosting_unit: HU.to_owned(),
        network_mapping: Some(mapping(&[("0", LAN)])),
        vm_cpu_count: Some(2),
        vm_memory_mb: Some(4096),
        max_versions: Some(99),
        ..SchemeFacts::default()
    }
}

fn spec(kind: SpecKind, status: ImageStatus) -> ImageSpecFacts {
    ImageSpecFacts {
        name: "win11-prep".to_owned(),
        kind,
        status,
        definition: "win11".to_owned(),
    }
}

// ---- require ----

#[test]
fn require_returns_found_object() {
    assert_eq!(
        require(
            Some(7),
            ObjectKind::HostingUnit,
            field::HOSTING_UNIT_REF,
            HU
        ),
        Ok(7)
    );
}

#[test]
fn require_reports_not_found_per_kind() {
    let cases = [
        (ObjectKind::ProvisioningScheme, "ProvisioningSchemeNotFound"),
        (ObjectKind::HostingUnit, "HostingUnitNotFound"),
        (ObjectKind::IdentityPool, "IdentityPoolNotFound"),
        (ObjectKind::ImageVersionSpec, "ImageVersionSpecNotFound"),
        (ObjectKind::ImageVersion, "ImageVersionNotFound"),
        (ObjectKind::ImageDefinition, "ImageDefinitionNotFound"),
        (
            ObjectKind::HypervisorConnection,
            "HypervisorConnectionNotFound",
        ),
    ];
    for (kind, reason) in cases {
        let err = require(None::<()>, kind, "spec.someRef", "missing")
            .err()
            .unwrap_or_else(|| panic!("{kind:?} should fail"));
        assert_eq!(err.reason(), reason);
        assert_eq!(err.field(), "spec.someRef");
        let msg = err.to_string();
        assert!(msg.starts_with("spec.someRef: "), "{msg}");
        assert!(
            msg.contains(&format!("{kind} 'missing' was not found")),
            "{msg}"
        );
    }
}

#[test]
fn identity_pool_not_found_message() {
    let err = require(
        None::<u8>,
        ObjectKind::IdentityPool,
        field::IDENTITY_POOL_REF,
        "pool",
    );
    assert_eq!(
        err.err().map(|e| e.to_string()),
        Some(
            "spec.identityPoolRef: identity pool 'pool' was not found in the namespace".to_owned()
        )
    );
}

// ---- check_scheme_image ----

#[test]
fn prepared_success_spec_is_usable() {
    let s = spec(SpecKind::Prepared, ImageStatus::Success);
    assert_eq!(
        check_scheme_image(&s, None, SessionSupport::MultiSession),
        Ok(())
    );
    assert_eq!(
        check_scheme_image(
            &s,
            Some(SessionSupport::SingleSession),
            SessionSupport::SingleSession
        ),
        Ok(())
    );
}

#[test]
fn unfinished_prepared_spec_is_not_usable() {
    for status in [
        ImageStatus::Unknown,
        ImageStatus::InProgress,
        ImageStatus::Failed,
    ] {
        let err = check_scheme_image(
            &spec(SpecKind::Prepared, status),
            None,
            SessionSupport::SingleSession,
        )
        .err();
        assert_eq!(
            err.as_ref().map(Reason::reason),
            Some("ImageVersionSpecNotUsable")
        );
    }
    let err = check_scheme_image(
        &spec(SpecKind::Prepared, ImageStatus::InProgress),
        None,
        SessionSupport::SingleSession,
    );
    assert_eq!(
        err.err().map(|e| e.to_string()),
        Some(
            "spec.imageVersionSpecRef: image version spec 'win11-prep' is a prepared spec in state InProgress and cannot be used; a provisioning scheme needs a prepared spec in state Success"
                .to_owned()
        )
    );
}

#[test]
fn master_spec_is_not_usable_even_when_successful() {
    let err = check_scheme_image(
        &spec(SpecKind::Master, ImageStatus::Success),
        None,
        SessionSupport::SingleSession,
    )
    .err();
    let msg = err.as_ref().map(ToString::to_string).unwrap_or_default();
    assert_eq!(
        err.as_ref().map(Reason::reason),
        Some("ImageVersionSpecNotUsable")
    );
    assert!(msg.contains("is a master spec in state Success"), "{msg}");
}

#[test]
fn session_support_must_match() {
    let err = check_scheme_image(
        &spec(SpecKind::Prepared, ImageStatus::Success),
        Some(SessionSupport::SingleSession),
        SessionSupport::MultiSession,
    )
    .err();
    assert_eq!(
        err.as_ref().map(Reason::reason),
        Some("VdaSessionSupportMismatch")
    );
    let msg = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.starts_with("spec.imageVersionSpecRef: "), "{msg}");
    assert!(msg.contains("SingleSession"), "{msg}");
    assert!(
        msg.contains("image definition 'win11' with vdaSessionSupport MultiSession"),
        "{msg}"
    );
}

#[test]
fn unusable_spec_is_reported_before_session_mismatch() {
    let err = check_scheme_image(
        &spec(SpecKind::Master, ImageStatus::Failed),
        Some(SessionSupport::SingleSession),
        SessionSupport::MultiSession,
    )
    .err();
    assert_eq!(
        err.as_ref().map(Reason::reason),
        Some("ImageVersionSpecNotUsable")
    );
}

// ---- check_scheme ----

#[test]
fn valid_scheme_passes() {
    assert_eq!(check_scheme(&scheme()), vec![]);
    let with_offering = SchemeFacts {
        vm_cpu_count: None,
        vm_memory_mb: None,
        service_offering: Some(OFFERING.to_owned()),
        machine_profile: Some(PROFILE.to_owned()),
        machine_profile_tenancy: Some(TenancyType::Shared),
        use_write_back_cache: true,
        write_back_cache_disk_size: Some(24),
        write_back_cache_memory_size: Some(256),
        network_mapping: None,
        max_versions: None,
        ..scheme()
    };
    assert_eq!(check_scheme(&with_offering), vec![]);
}

#[test]
fn cpu_and_memory_conflict_with_service_offering() {
    let s = SchemeFacts {
        service_offering: Some(OFFERING.to_owned()),
        ..scheme()
    };
    let errors = check_scheme(&s);
    assert_eq!(reasons(&errors), ["ServiceOfferingConflict"; 2]);
    assert_eq!(fields(&errors), [field::VM_CPU_COUNT, field::VM_MEMORY_MB]);
    assert!(
        errors[0]
            .to_string()
            .starts_with("spec.vmCpuCount: cannot be used together with spec.serviceOffering")
    );
    let only_memory = SchemeFacts {
        vm_cpu_count: None,
        ..s
    };
    assert_eq!(fields(&check_scheme(&only_memory)), [field::VM_MEMORY_MB]);
}

#[test]
fn write_back_cache_sizes_need_write_back_cache() {
    let s = SchemeFacts {
        write_back_cache_disk_size: Some(24),
        write_back_cache_memory_size: Some(0),
        ..scheme()
    };
    let errors = check_scheme(&s);
    assert_eq!(reasons(&errors), ["WriteBackCacheNotEnabled"; 2]);
    assert_eq!(
        fields(&errors),
        [
            field::WRITE_BACK_CACHE_DISK_SIZE,
            field::WRITE_BACK_CACHE_MEMORY_SIZE
        ]
    );
    assert!(
        errors[0]
            .to_string()
            .contains("spec.useWriteBackCache: true")
    );
    let enabled = SchemeFacts {
        use_write_back_cache: true,
        ..s
    };
    assert_eq!(check_scheme(&enabled), vec![]);
}

#[test]
fn machine_profile_tenancy_must_match() {
    let s = SchemeFacts {
        machine_profile: Some(PROFILE.to_owned()),
        machine_profile_tenancy: Some(TenancyType::Dedicated),
        ..scheme()
    };
    let errors = check_scheme(&s);
    assert_eq!(reasons(&errors), ["IncorrectTenancyType"]);
    assert_eq!(fields(&errors), [field::MACHINE_PROFILE]);
    let msg = errors[0].to_string();
    assert!(
        msg.contains("tenancy type Dedicated") && msg.contains("uses Shared"),
        "{msg}"
    );

    let matching = SchemeFacts {
        tenancy_type: TenancyType::Dedicated,
        ..s.clone()
    };
    assert_eq!(check_scheme(&matching), vec![]);
    let unknown = SchemeFacts {
        machine_profile_tenancy: None,
        ..s
    };
    assert_eq!(check_scheme(&unknown), vec![]);
}

#[test]
fn scheme_max_versions_range() {
    for bad in [0, -1, 32001, i64::MAX, i64::MIN] {
        let s = SchemeFacts {
            max_versions: Some(bad),
            ..scheme()
        };
        let errors = check_scheme(&s);
        assert_eq!(
            reasons(&errors),
            ["InvalidProvisioningSchemeVersionMaximum"]
        );
        assert_eq!(fields(&errors), [field::MAX_VERSIONS]);
    }
    for good in [1, 99, 32000] {
        assert_eq!(check_max_versions(field::MAX_VERSIONS, good), Ok(()));
    }
    let msg = check_max_versions(field::MAX_VERSIONS, 0)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.starts_with("spec.maxVersions: is 0"), "{msg}");
}

#[test]
fn scheme_paths_are_checked() {
    let s = SchemeFacts {
        network_mapping: Some(mapping(&[("0", r"XDHyp:\HostingUnits\other\lan.network")])),
        machine_profile: Some("not a path".to_owned()),
        ..scheme()
    };
    let errors = check_scheme(&s);
    assert_eq!(
        reasons(&errors),
        [
            "NetworkPathResolutionFailed",
            "MachineProfilePathResolutionFailed"
        ]
    );
    assert_eq!(
        fields(&errors),
        [r#"spec.networkMapping["0"]"#, field::MACHINE_PROFILE]
    );
}

// ---- check_scheme_update ----

#[test]
fn unchanged_and_allowed_updates_pass() {
    assert_eq!(check_scheme_update(&scheme(), &scheme()), vec![]);
    let old = SchemeFacts {
        machine_profile: Some(PROFILE.to_owned()),
        ..scheme()
    };
    let new = SchemeFacts {
        vm_cpu_count: Some(4),
        machine_profile: Some(PROFILE.replace("1.0.", "2.0.")),
        network_mapping: Some(mapping(&[("0", LAN), ("1", LAN)])),
        ..old.clone()
    };
    assert_eq!(check_scheme_update(&old, &new), vec![]);
}

#[test]
fn machine_profile_cannot_be_added() {
    let new = SchemeFacts {
        machine_profile: Some(PROFILE.to_owned()),
        ..scheme()
    };
    let errors = check_scheme_update(&scheme(), &new);
    assert_eq!(reasons(&errors), ["MachineProfileUpdateNotSupported"]);
    assert_eq!(fields(&errors), [field::MACHINE_PROFILE]);
    assert!(errors[0].to_string().contains("cannot be added"));
}

#[test]
fn machine_profile_cannot_be_removed() {
    let old = SchemeFacts {
        machine_profile: Some(PROFILE.to_owned()),
        ..scheme()
    };
    let errors = check_scheme_update(&old, &scheme());
    assert_eq!(reasons(&errors), ["MachineProfileUpdateNotSupported"]);
    assert!(errors[0].to_string().contains("cannot be removed"));
}

#[test]
fn write_back_cache_is_judged_as_created() {
    let new = SchemeFacts {
        use_write_back_cache: true,
        write_back_cache_disk_size: Some(24),
        ..scheme()
    };
    let errors = check_scheme_update(&scheme(), &new);
    assert_eq!(
        reasons(&errors),
        ["FieldImmutable", "WriteBackCacheNotEnabled"]
    );
    assert_eq!(
        fields(&errors),
        [
            field::USE_WRITE_BACK_CACHE,
            field::WRITE_BACK_CACHE_DISK_SIZE
        ]
    );

    let created_with = SchemeFacts {
        use_write_back_cache: true,
        ..scheme()
    };
    let resized = SchemeFacts {
        write_back_cache_disk_size: Some(48),
        ..created_with.clone()
    };
    assert_eq!(check_scheme_update(&created_with, &resized), vec![]);
}

#[test]
fn fixed_fields_cannot_change() {
    let new = SchemeFacts {
        hosting_unit: "hu2".to_owned(),
        tenancy_type: TenancyType::Dedicated,
        ..scheme()
    };
    let errors = check_scheme_update(&scheme(), &new);
    assert_eq!(reasons(&errors), ["FieldImmutable"; 2]);
    assert_eq!(
        fields(&errors),
        [field::HOSTING_UNIT_REF, field::TENANCY_TYPE]
    );
    assert!(errors[0].to_string().contains("(hu1 -> hu2)"));
}

#[test]
fn update_collects_all_errors() {
    let old = SchemeFacts {
        machine_profile: Some(PROFILE.to_owned()),
        ..scheme()
    };
    let new = SchemeFacts {
        machine_profile: None,
        service_offering: Some(OFFERING.to_owned()),
        network_mapping: Some(BTreeMap::new()),
        max_versions: Some(0),
        ..scheme()
    };
    let errors = check_scheme_update(&old, &new);
    assert_eq!(
        reasons(&errors),
        [
            "MachineProfileUpdateNotSupported",
            "ServiceOfferingConflict",
            "ServiceOfferingConflict",
            "NetworkPathResolutionFailed",
            "InvalidProvisioningSchemeVersionMaximum",
        ]
    );
}

// ---- check_network_mapping ----

#[test]
fn network_mapping_valid() {
    let map = mapping(&[
        ("0", LAN),
        ("1", r"XDHyp:\HostingUnits\HU1\Network"),
        (
            "2",
            "XDHyp:/HostingUnits/hu1/vpc.folder/vpc.virtualprivatecloud/",
        ),
        ("10", LAN),
    ]);
    assert_eq!(
        check_network_mapping(field::NETWORK_MAPPING, &map, HU),
        vec![]
    );
}

#[test]
fn network_mapping_must_not_be_empty() {
    let errors = check_network_mapping(field::NETWORK_MAPPING, &BTreeMap::new(), HU);
    assert_eq!(reasons(&errors), ["NetworkPathResolutionFailed"]);
    assert_eq!(fields(&errors), [field::NETWORK_MAPPING]);
    assert!(errors[0].to_string().contains("must not be empty"));
}

#[test]
fn network_mapping_bad_values() {
    let map = mapping(&[
        ("0", ""),
        ("1", "lan.network"),
        ("2", r"XDHyp:\HostingUnits\other\lan.network"),
        ("3", r"XDHyp:\HostingUnits\hu1"),
        ("4", r"XDHyp:\HostingUnits\hu1\..\x.network"),
        ("5", "   "),
    ]);
    let errors = check_network_mapping(field::PREPARED_NETWORK_MAPPING, &map, HU);
    assert_eq!(reasons(&errors), ["NetworkPathResolutionFailed"; 6]);
    assert_eq!(
        fields(&errors),
        [
            r#"spec.prepared.networkMapping["0"]"#,
            r#"spec.prepared.networkMapping["1"]"#,
            r#"spec.prepared.networkMapping["2"]"#,
            r#"spec.prepared.networkMapping["3"]"#,
            r#"spec.prepared.networkMapping["4"]"#,
            r#"spec.prepared.networkMapping["5"]"#,
        ]
    );
    let msgs: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert!(msgs[0].contains("the network path is empty"), "{}", msgs[0]);
    assert!(msgs[1].contains("no drive specification"), "{}", msgs[1]);
    assert!(
        msgs[2].contains("must be within hosting unit \"hu1\""),
        "{}",
        msgs[2]
    );
    assert!(
        msgs[3].contains("names the hosting unit itself"),
        "{}",
        msgs[3]
    );
    assert!(msgs[4].contains("relative reference"), "{}", msgs[4]);
    for m in &msgs {
        assert!(m.contains("within hosting unit 'hu1'"), "{m}");
    }
}

#[test]
fn network_mapping_keys_are_nic_indexes() {
    let map = mapping(&[
        ("a", LAN),
        ("01", LAN),
        ("", LAN),
        ("-1", LAN),
        ("12345", LAN),
    ]);
    let errors = check_network_mapping(field::NETWORK_MAPPING, &map, HU);
    assert_eq!(reasons(&errors), ["NetworkPathResolutionFailed"; 5]);
    assert!(
        errors
            .iter()
            .all(|e| e.to_string().contains("is not a NIC index"))
    );
}

// ---- check_service_offering ----

#[test]
fn service_offering_valid() {
    assert_eq!(
        check_service_offering(field::SERVICE_OFFERING, OFFERING, HU),
        Ok(())
    );
    assert_eq!(
        check_service_offering(
            field::PREPARED_SERVICE_OFFERING,
            r"xdhyp:/hostingunits/HU1/small.ServiceOffering",
            HU
        ),
        Ok(())
    );
}

#[test]
fn service_offering_invalid() {
    let cases = [
        ("", "the service offering path is empty"),
        (
            r"serviceoffering.folder\Standard_B2s.serviceoffering",
            "no drive specification",
        ),
        (
            r"XDHyp:\HostingUnits\other\a.serviceoffering",
            "must be within hosting unit",
        ),
        (
            r"XDHyp:\HostingUnits\hu1\a.vm",
            "must end in a `.serviceoffering` item",
        ),
        (r"XDHyp:\HostingUnits\hu1", "names the hosting unit itself"),
        (r"C:\HostingUnits\hu1\a.serviceoffering", "unknown drive"),
    ];
    for (path, expected) in cases {
        let err = check_service_offering(field::SERVICE_OFFERING, path, HU).err();
        assert_eq!(
            err.as_ref().map(Reason::reason),
            Some("ServiceOfferingPathResolutionFailed"),
            "{path}"
        );
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.starts_with("spec.serviceOffering: "), "{msg}");
        assert!(msg.contains(expected), "{path}: {msg}");
        assert!(msg.contains("must include a drive specification"), "{msg}");
    }
}

// ---- check_machine_profile ----

#[test]
fn machine_profile_valid() {
    for path in [
        PROFILE,
        r"XDHyp:\HostingUnits\hu1\us-east-1a.availabilityzone\machine-profile-vm (i-00c55f1107b662c04).vm",
        r"XDHyp:\HostingUnits\hu1\machine-profile-lt (lt-06927522c36bg5698).launchtemplate\lt-06927522c36bg5698 (1).launchtemplateversion",
        r"XDHyp:\HostingUnits\hu1\profiles.folder\gpu.machineprofile",
        r"XDHyp:\HostingUnits\hu1\Template.VM",
    ] {
        assert_eq!(
            check_machine_profile(field::MACHINE_PROFILE, path, HU),
            Ok(()),
            "{path}"
        );
    }
}

#[test]
fn machine_profile_of_another_kind_names_the_kind() {
    let err = check_machine_profile(
        field::MACHINE_PROFILE,
        r"XDHyp:\HostingUnits\hu1\x.network",
        HU,
    )
    .expect_err("a network is not a machine profile");
    let msg = err.to_string();
    assert!(msg.starts_with("spec.machineProfile: "), "{msg}");
    assert!(
        msg.contains("a .network item, not a machine profile"),
        "{msg}"
    );
    assert!(msg.contains(".vm"), "{msg}");
}

#[test]
fn machine_profile_invalid() {
    for path in [
        "",
        "vm1.vm",
        r"XDHyp:\HostingUnits\other\vm1.vm",
        r"XDHyp:\HostingUnits\hu1\",
        r"XDHyp:\HostingUnits\hu1\a\\b.vm",
        r"XDHyp:\HostingUnits\hu1\x.network",
        r"XDHyp:\HostingUnits\hu1\small.serviceoffering",
        r"XDHyp:\HostingUnits\hu1\win11.vm\base.snapshot",
        r"XDHyp:\HostingUnits\hu1\profiles.folder",
        r"XDHyp:\HostingUnits\hu1\noextension",
    ] {
        let err = check_machine_profile(field::PREPARED_MACHINE_PROFILE, path, HU).err();
        assert_eq!(
            err.as_ref().map(Reason::reason),
            Some("MachineProfilePathResolutionFailed"),
            "{path}"
        );
        assert_eq!(
            err.as_ref().map(RuleError::field),
            Some(field::PREPARED_MACHINE_PROFILE)
        );
    }
}

// ---- check_prepared_spec_unique ----

fn prepared(name: &str, version: &str, hu: &str) -> PreparedSpecFacts {
    PreparedSpecFacts {
        name: name.to_owned(),
        version: version.to_owned(),
        hosting_unit: hu.to_owned(),
    }
}

#[test]
fn prepared_spec_unique_passes() {
    let new = prepared("p1", "v1", HU);
    assert_eq!(
        check_prepared_spec_unique(field::PREPARED_SOURCE_SPEC_REF, &new, &[]),
        Ok(())
    );
    let existing = [
        prepared("p1", "v1", HU),
        prepared("p2", "v1", "hu2"),
        prepared("p3", "v2", HU),
    ];
    assert_eq!(
        check_prepared_spec_unique(field::PREPARED_SOURCE_SPEC_REF, &new, &existing),
        Ok(())
    );
}

#[test]
fn prepared_spec_unique_fails() {
    let new = prepared("p9", "v1", HU);
    let existing = [prepared("pz", "v1", HU), prepared("pa", "v1", HU)];
    let err = check_prepared_spec_unique(field::PREPARED_SOURCE_SPEC_REF, &new, &existing).err();
    assert_eq!(
        err.as_ref().map(Reason::reason),
        Some("ImageVersionSpecAlreadyExists")
    );
    assert_eq!(
        err.map(|e| e.to_string()),
        Some(
            "spec.prepared.sourceSpecRef: image version 'v1' already has prepared spec 'pa' for hosting unit 'hu1'; an image version has at most one prepared spec per hosting unit"
                .to_owned()
        )
    );
}

// ---- check_master_hosting_unit ----

#[test]
fn master_hosting_unit_on_definition_connection() {
    let hu = HostingUnitFacts {
        name: HU.to_owned(),
        connection: "conn1".to_owned(),
    };
    let def = ImageDefinitionFacts {
        name: "win11".to_owned(),
        session_support: SessionSupport::SingleSession,
        connections: vec!["conn0".to_owned(), "conn1".to_owned()],
    };
    assert_eq!(
        check_master_hosting_unit(field::MASTER_HOSTING_UNIT_REF, &hu, &def),
        Ok(())
    );
}

#[test]
fn master_hosting_unit_mismatch() {
    let hu = HostingUnitFacts {
        name: HU.to_owned(),
        connection: "conn9".to_owned(),
    };
    let mut def = ImageDefinitionFacts {
        name: "win11".to_owned(),
        session_support: SessionSupport::MultiSession,
        connections: vec!["conn0".to_owned(), "conn1".to_owned()],
    };
    let err = check_master_hosting_unit(field::MASTER_HOSTING_UNIT_REF, &hu, &def).err();
    assert_eq!(
        err.as_ref().map(Reason::reason),
        Some("HostingUnitMismatch")
    );
    let msg = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        msg.starts_with(
            "spec.master.hostingUnitRef: hosting unit 'hu1' uses hypervisor connection 'conn9'"
        ),
        "{msg}"
    );
    assert!(msg.contains("('conn0', 'conn1')"), "{msg}");
    def.connections.clear();
    let msg = check_master_hosting_unit(field::MASTER_HOSTING_UNIT_REF, &hu, &def)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("(none)"), "{msg}");
}

// ---- shared types ----

/// The allowed values of an enum schema, whether written as `enum` or as `oneOf` of `const`s
/// (schemars does the latter when the variants have doc comments).
fn schema_values(schema: Result<serde_json::Value, serde_json::Error>) -> Vec<String> {
    let schema = schema.unwrap_or_default();
    let from_enum = schema["enum"].as_array().cloned().unwrap_or_default();
    let from_one_of: Vec<serde_json::Value> = schema["oneOf"]
        .as_array()
        .map(|alts| alts.iter().map(|a| a["const"].clone()).collect())
        .unwrap_or_default();
    from_enum
        .into_iter()
        .chain(from_one_of)
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn enums_serialize_with_variant_names() {
    assert_eq!(
        serde_json::to_string(&SessionSupport::SingleSession).unwrap_or_default(),
        "\"SingleSession\""
    );
    assert_eq!(
        serde_json::from_str::<SessionSupport>("\"MultiSession\"").ok(),
        Some(SessionSupport::MultiSession)
    );
    assert_eq!(
        serde_json::to_string(&TenancyType::Dedicated).unwrap_or_default(),
        "\"Dedicated\""
    );
    assert_eq!(TenancyType::default(), TenancyType::Shared);
    assert_eq!(
        schema_values(serde_json::to_value(schemars::schema_for!(TenancyType))),
        ["Shared", "Dedicated"]
    );
    assert_eq!(
        schema_values(serde_json::to_value(schemars::schema_for!(SessionSupport))),
        ["SingleSession", "MultiSession"]
    );
}

#[test]
fn reasons_are_upper_camel_case() {
    let samples = [
        check_max_versions("f", 0).err(),
        check_service_offering("f", "", HU).err(),
        check_machine_profile("f", "", HU).err(),
        require(None::<()>, ObjectKind::ImageVersion, "f", "n").err(),
    ];
    let mut all: Vec<RuleError> = samples.into_iter().flatten().collect();
    all.extend(check_network_mapping("f", &BTreeMap::new(), HU));
    assert_eq!(all.len(), 5);
    for e in &all {
        let r = e.reason();
        assert!(
            r.chars().next().is_some_and(|c| c.is_ascii_uppercase()),
            "{r}"
        );
        assert!(r.chars().all(|c| c.is_ascii_alphanumeric()), "{r}");
    }
}
