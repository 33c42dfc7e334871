//! `x-kubernetes-validations`: creation rules, transition rules, messages, reasons, field paths.

mod common;

use common::{crd_with_schema, create_errors, spec_schema, update_errors, widget};
use mcs_schema_check::{CrdSchema, FieldErrorType, SchemaError};
use serde_json::json;

const VM: &str = r#"
type: object
x-kubernetes-validations:
  - rule: "!(has(self.serviceOffering) && (has(self.vmCpuCount) || has(self.vmMemoryMB)))"
    message: vmCpuCount and vmMemoryMB cannot be used with serviceOffering
properties:
  serviceOffering:
    type: string
    x-kubernetes-validations:
      - rule: self == oldSelf
        message: serviceOffering is immutable
  vmCpuCount:
    type: integer
    minimum: 1
    x-kubernetes-validations:
      - rule: self <= 64
        message: at most 64 CPUs
  vmMemoryMB:
    type: integer
"#;

#[test]
fn rules_are_compiled_and_counted() {
    let s = spec_schema(VM);
    assert_eq!(s.cel_rule_count(), 3);
}

#[test]
fn exclusive_fields_with_has() {
    let s = spec_schema(VM);
    assert!(create_errors(&s, &widget(json!({"serviceOffering": "small"}))).is_empty());
    assert!(create_errors(&s, &widget(json!({"vmCpuCount": 2, "vmMemoryMB": 512}))).is_empty());
    let errs = s
        .validate(
            &widget(json!({"serviceOffering": "small", "vmCpuCount": 2})),
            None,
        )
        .unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].field, "spec");
    assert_eq!(errs[0].error_type, FieldErrorType::Invalid);
    assert_eq!(errs[0].bad_value, None);
    assert_eq!(
        errs[0].to_string(),
        "spec: Invalid value: vmCpuCount and vmMemoryMB cannot be used with serviceOffering"
    );
}

#[test]
fn scalar_rule_failures_show_the_value() {
    let s = spec_schema(VM);
    assert_eq!(
        create_errors(&s, &widget(json!({"vmCpuCount": 65}))),
        vec!["spec.vmCpuCount: Invalid value: 65: at most 64 CPUs"]
    );
}

#[test]
fn transition_rule_immutability() {
    let s = spec_schema(VM);
    let old = widget(json!({"serviceOffering": "small"}));
    assert!(
        create_errors(&s, &old).is_empty(),
        "transition rules do not run on create"
    );
    assert!(update_errors(&s, &old, &old).is_empty());
    let new = widget(json!({"serviceOffering": "large"}));
    assert_eq!(
        update_errors(&s, &new, &old),
        vec![r#"spec.serviceOffering: Invalid value: "large": serviceOffering is immutable"#]
    );
    let added = widget(json!({"serviceOffering": "large"}));
    let without = widget(json!({}));
    assert!(
        update_errors(&s, &added, &without).is_empty(),
        "no old value to compare with: the transition rule is skipped"
    );
}

#[test]
fn unchanged_values_ratchet_non_transition_rules() {
    let s = spec_schema(VM);
    let old = widget(json!({"vmCpuCount": 100, "vmMemoryMB": 1}));
    let new = widget(json!({"vmCpuCount": 100, "vmMemoryMB": 2}));
    assert!(update_errors(&s, &new, &old).is_empty());
    let bumped = widget(json!({"vmCpuCount": 101, "vmMemoryMB": 2}));
    assert_eq!(
        update_errors(&s, &bumped, &old),
        vec!["spec.vmCpuCount: Invalid value: 101: at most 64 CPUs"]
    );
}

#[test]
fn message_expression_reason_and_field_path() {
    let s = spec_schema(
        r#"
type: object
x-kubernetes-validations:
  - rule: self.replicas <= self.maxReplicas
    messageExpression: "'replicas ' + string(self.replicas) + ' exceeds ' + string(self.maxReplicas)"
    fieldPath: .replicas
  - rule: "!has(self.legacy)"
    message: legacy is not allowed
    reason: FieldValueForbidden
    fieldPath: .legacy
  - rule: has(self.owner)
    message: owner is required
    reason: FieldValueRequired
properties:
  replicas: {type: integer}
  maxReplicas: {type: integer}
  legacy: {type: string}
  owner: {type: string}
"#,
    );
    assert_eq!(
        create_errors(
            &s,
            &widget(json!({"replicas": 5, "maxReplicas": 3, "legacy": "x"}))
        ),
        vec![
            "spec.replicas: Invalid value: replicas 5 exceeds 3",
            "spec.legacy: Forbidden: legacy is not allowed",
            "spec: Required value: owner is required",
        ]
    );
}

#[test]
fn rule_without_message_uses_the_rule_text() {
    let s = spec_schema(
        r#"
type: object
properties:
  name:
    type: string
    x-kubernetes-validations:
      - rule: self.startsWith('mcs-')
"#,
    );
    assert_eq!(
        create_errors(&s, &widget(json!({"name": "x"}))),
        vec![r#"spec.name: Invalid value: "x": failed rule: self.startsWith('mcs-')"#]
    );
}

#[test]
fn list_map_items_correlate_by_key_for_transition_rules() {
    let s = spec_schema(
        r#"
type: object
properties:
  disks:
    type: array
    x-kubernetes-list-type: map
    x-kubernetes-list-map-keys: [name]
    items:
      type: object
      required: [name]
      x-kubernetes-validations:
        - rule: self.size >= oldSelf.size
          message: disks cannot shrink
      properties:
        name: {type: string}
        size: {type: integer}
"#,
    );
    let old = widget(json!({"disks": [{"name": "a", "size": 10}, {"name": "b", "size": 5}]}));
    let reordered = widget(json!({"disks": [{"name": "b", "size": 6}, {"name": "a", "size": 10}]}));
    assert!(update_errors(&s, &reordered, &old).is_empty());
    let shrunk = widget(json!({"disks": [{"name": "b", "size": 4}, {"name": "a", "size": 10}]}));
    assert_eq!(
        update_errors(&s, &shrunk, &old),
        vec!["spec.disks[0]: Invalid value: disks cannot shrink"]
    );
}

#[test]
fn blocking_schema_errors_skip_cel() {
    let s = spec_schema(VM);
    let errs = create_errors(
        &s,
        &widget(json!({"vmCpuCount": "two", "serviceOffering": "x", "vmMemoryMB": 1})),
    );
    assert_eq!(
        errs,
        vec![
            r#"spec.vmCpuCount: Invalid value: "string": spec.vmCpuCount in body must be of type integer: "string""#,
            "<nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation",
        ]
    );
}

#[test]
fn non_blocking_schema_errors_still_run_cel() {
    let s = spec_schema(VM);
    assert_eq!(
        create_errors(
            &s,
            &widget(json!({"vmCpuCount": 0, "serviceOffering": "x"}))
        ),
        vec![
            "spec.vmCpuCount: Invalid value: 0: spec.vmCpuCount in body should be greater than or equal to 1",
            "spec: Invalid value: vmCpuCount and vmMemoryMB cannot be used with serviceOffering",
        ]
    );
}

#[test]
fn rule_that_does_not_compile_rejects_the_crd() {
    let crd = crd_with_schema(
        r#"
type: object
properties:
  spec:
    type: object
    x-kubernetes-validations:
      - rule: "self.a >"
"#,
    );
    match CrdSchema::from_crd(&crd, "v1") {
        Err(SchemaError::CelCompile { path, rule, .. }) => {
            assert_eq!(
                path,
                "spec.versions[0].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations[0]"
            );
            assert_eq!(rule, "self.a >");
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
}

#[test]
fn map_values_are_walked_with_key_paths() {
    let s = spec_schema(
        r#"
type: object
properties:
  limits:
    type: object
    additionalProperties:
      type: integer
      x-kubernetes-validations:
        - rule: self > 0
          message: must be positive
"#,
    );
    assert_eq!(
        create_errors(&s, &widget(json!({"limits": {"cpu": 0}}))),
        vec!["spec.limits[cpu]: Invalid value: 0: must be positive"]
    );
}

#[test]
fn rule_referring_to_an_undeclared_field_rejects_the_crd() {
    let crd = crd_with_schema(
        r#"
type: object
properties:
  metadata: {type: object}
  spec:
    type: object
    x-kubernetes-validations:
      - rule: "has(self.size) && self.metadata.name != ''"
      - rule: "self.sise > 0"
    properties:
      size: {type: integer}
"#,
    );
    match CrdSchema::from_crd(&crd, "v1") {
        Err(SchemaError::CelCompile { message, .. }) => {
            assert_eq!(message, "undefined field 'metadata'")
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
    let root = crd_with_schema(
        r#"
type: object
x-kubernetes-validations:
  - rule: "self.metadata.name.startsWith('w') && self.spec.size > 0"
  - rule: "self.metadata.labels.size() > 0"
properties:
  metadata: {type: object}
  spec:
    type: object
    properties:
      size: {type: integer}
"#,
    );
    match CrdSchema::from_crd(&root, "v1") {
        Err(SchemaError::CelCompile { path, message, .. }) => {
            assert_eq!(
                path,
                "spec.versions[0].schema.openAPIV3Schema.x-kubernetes-validations[1]"
            );
            assert_eq!(message, "undefined field 'labels'");
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
}

const UNBOUNDED_LIST: &str = r#"
type: object
properties:
  names:
    type: array
    items:
      type: string
    x-kubernetes-validations:
      - rule: "self.all(n, n.startsWith('vm-'))"
        message: names start with vm-
"#;

const BOUNDED_LIST: &str = r#"
type: object
properties:
  names:
    type: array
    maxItems: 16
    items:
      type: string
      maxLength: 63
    x-kubernetes-validations:
      - rule: "self.all(n, n.startsWith('vm-'))"
        message: names start with vm-
"#;

#[test]
fn unbounded_list_iterated_by_a_rule_exceeds_the_cost_budget() {
    let warnings = spec_schema(UNBOUNDED_LIST).cost_warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let w = &warnings[0];
    assert!(
        w.contains("properties[spec].properties[names].x-kubernetes-validations[0]"),
        "{w}"
    );
    assert!(w.contains("self.all(n, n.startsWith('vm-'))"), "{w}");
    assert!(w.contains("estimated cost"), "{w}");
    assert!(w.contains("self (no maxItems)"), "{w}");
}

#[test]
fn bounded_list_fits_the_cost_budget() {
    let warnings = spec_schema(BOUNDED_LIST).cost_warnings();
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn unbounded_strings_in_a_bounded_list_still_count() {
    let yaml = BOUNDED_LIST.replace("      maxLength: 63\n", "");
    let warnings = spec_schema(&yaml).cost_warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("self[*] (no maxLength)"),
        "{}",
        warnings[0]
    );
}

#[test]
fn missing_bounds_on_fields_a_rule_does_not_iterate_are_not_reported() {
    // kube-cel's own MissingBounds check would flag `others` here: the rule never reads it.
    let s = spec_schema(
        r#"
type: object
x-kubernetes-validations:
  - rule: "self.names.all(n, n.size() < 64)"
properties:
  names:
    type: array
    maxItems: 8
    items:
      type: string
  others:
    type: array
    items:
      type: string
  labels:
    type: object
    additionalProperties:
      type: string
"#,
    );
    assert!(s.cost_warnings().is_empty(), "{:?}", s.cost_warnings());
    let s = spec_schema(
        r#"
type: object
x-kubernetes-validations:
  - rule: "!has(self.labels) || self.labels.all(k, k.size() < 64)"
properties:
  labels:
    type: object
    additionalProperties:
      type: string
"#,
    );
    let w = s.cost_warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("self.labels (no maxProperties)"), "{}", w[0]);
}

#[test]
fn plain_comparisons_have_no_cost_warnings() {
    assert!(spec_schema(VM).cost_warnings().is_empty());
}
