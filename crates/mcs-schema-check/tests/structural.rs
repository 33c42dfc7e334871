//! Structural-schema violations reported at CRD creation.

mod common;

use common::crd_with_schema;
use mcs_schema_check::{CrdSchema, SchemaError};
use serde_json::json;

const P: &str = "spec.versions[0].schema.openAPIV3Schema";

fn errors(schema_yaml: &str) -> Vec<String> {
    CrdSchema::from_crd(&crd_with_schema(schema_yaml), "v1")
        .expect("parses")
        .structural_errors()
}

#[test]
fn a_structural_schema_has_no_errors() {
    let errs = errors(
        r#"
type: object
properties:
  metadata:
    type: object
    properties:
      name: {type: string, maxLength: 40}
  spec:
    type: object
    required: [size]
    properties:
      size: {type: integer, default: 1}
      port:
        x-kubernetes-int-or-string: true
        anyOf: [{type: integer}, {type: string}]
      extra:
        type: object
        x-kubernetes-preserve-unknown-fields: true
      mode:
        type: string
        anyOf: [{enum: [a]}, {enum: [b]}]
"#,
    );
    assert_eq!(errs, Vec::<String>::new());
}

#[test]
fn missing_types() {
    let errs = errors("properties:\n  spec:\n    properties:\n      a: {}\n");
    assert_eq!(
        errs,
        vec![
            format!(
                "{P}.properties[spec].properties[a].type: Required value: must not be empty for specified object fields"
            ),
            format!(
                "{P}.properties[spec].type: Required value: must not be empty for specified object fields"
            ),
            format!("{P}.type: Required value: must not be empty at the root"),
        ]
    );
}

#[test]
fn array_items_and_root_type() {
    let errs = errors("type: array\n");
    assert!(
        errs.contains(&format!("{P}.items: Required value: must be specified")),
        "{errs:?}"
    );
    assert!(
        errs.contains(&format!(
            r#"{P}.type: Invalid value: "array": must be object at the root"#
        )),
        "{errs:?}"
    );
}

#[test]
fn ref_and_mutually_exclusive_properties() {
    let errs = errors(
        r##"
type: object
properties:
  a:
    $ref: "#/definitions/x"
    type: object
  b:
    type: object
    additionalProperties: {type: string}
    properties:
      c: {type: string}
"##,
    );
    assert!(
        errs.contains(&format!(
            "{P}.properties[a].$ref: Forbidden: $ref is not supported"
        )),
        "{errs:?}"
    );
    assert!(
        errs.contains(&format!(
            "{P}.properties[b].additionalProperties: Forbidden: additionalProperties and properties are mutual exclusive"
        )),
        "{errs:?}"
    );
}

#[test]
fn junctors_may_not_define_structure() {
    let errs = errors(
        r#"
type: object
properties:
  a:
    type: string
    anyOf:
      - type: string
        nullable: true
        default: x
"#,
    );
    assert_eq!(
        errs,
        vec![
            format!(
                "{P}.properties[a].anyOf[0].default: Forbidden: must be undefined to be structural"
            ),
            format!(
                "{P}.properties[a].anyOf[0].nullable: Forbidden: must be false to be structural"
            ),
            format!("{P}.properties[a].anyOf[0].type: Forbidden: must be empty to be structural"),
        ]
    );
}

#[test]
fn junctor_properties_must_be_specified_structurally() {
    let errs = errors(
        r#"
type: object
properties:
  a:
    type: object
    properties:
      x: {type: string}
    oneOf:
      - required: [x]
      - properties:
          y: {minLength: 1}
"#,
    );
    assert_eq!(
        errs,
        vec![format!("{P}.properties[a].properties[y]: Required value")]
    );
}

#[test]
fn metadata_may_only_restrict_name_and_generate_name() {
    let errs = errors(
        r#"
type: object
properties:
  metadata:
    type: object
    properties:
      labels: {type: object}
"#,
    );
    assert_eq!(
        errs,
        vec![format!(
            "{P}.properties[metadata]: Forbidden: must not specify anything other than name and generateName, but metadata is implicitly specified"
        )]
    );
}

#[test]
fn null_default_requires_nullable_and_defaults_must_validate() {
    let errs = errors(
        r#"
type: object
properties:
  a: {type: string, default: null}
  b: {type: string, nullable: true, default: null}
  c: {type: integer, minimum: 5, default: 1}
"#,
    );
    assert_eq!(
        errs,
        vec![
            format!(
                "{P}.properties[a].default: Invalid value: null: must not be null for a non-nullable schema"
            ),
            format!(
                "{P}.properties[c].default: Invalid value: 1:  in body should be greater than or equal to 5"
            ),
        ]
    );
}

#[test]
fn list_map_keys_and_rules_are_checked() {
    let errs = errors(
        r#"
type: object
properties:
  l:
    type: array
    x-kubernetes-list-type: map
    items:
      type: object
      properties:
        k: {type: string}
  s:
    type: string
    x-kubernetes-validations:
      - rule: self.size() > 1
        reason: Nope
"#,
    );
    assert!(
        errs.contains(&format!(
            "{P}.properties[l].x-kubernetes-list-map-keys: Required value: must not be empty if x-kubernetes-list-type is map"
        )),
        "{errs:?}"
    );
    assert!(
        errs.contains(&format!(
            r#"{P}.properties[s].x-kubernetes-validations[0].reason: Unsupported value: "Nope": supported values: "FieldValueDuplicate", "FieldValueForbidden", "FieldValueInvalid", "FieldValueRequired""#
        )),
        "{errs:?}"
    );
}

#[test]
fn missing_or_unserved_versions() {
    let crd = crd_with_schema("type: object\n");
    assert!(matches!(
        CrdSchema::from_crd(&crd, "v9"),
        Err(SchemaError::VersionNotFound(_))
    ));
    let mut unserved = crd.clone();
    unserved["spec"]["versions"][0]["served"] = json!(false);
    assert!(matches!(
        CrdSchema::from_crd(&unserved, "v1"),
        Err(SchemaError::VersionNotServed(_))
    ));
    assert!(matches!(
        CrdSchema::from_crd(&json!({}), "v1"),
        Err(SchemaError::InvalidCrd(_))
    ));
}
