//! OpenAPI keyword validation, one keyword at a time, positive and negative.

mod common;

use common::{create_errors, spec_schema, update_errors, widget};
use serde_json::json;

const TYPES: &str = r#"
type: object
properties:
  count: {type: integer}
  ratio: {type: number}
  enabled: {type: boolean}
  name: {type: string}
  tags:
    type: array
    items: {type: string}
  nested:
    type: object
    properties:
      a: {type: string}
"#;

#[test]
fn type_checks_accept_matching_values() {
    let s = spec_schema(TYPES);
    let obj = widget(json!({
        "count": 3, "ratio": 2, "enabled": true, "name": "x",
        "tags": ["a"], "nested": {"a": "b"}
    }));
    assert_eq!(create_errors(&s, &obj), Vec::<String>::new());
    let obj = widget(json!({"ratio": 2.5}));
    assert!(create_errors(&s, &obj).is_empty());
}

#[test]
fn type_checks_reject_mismatches_with_apiserver_text() {
    let s = spec_schema(TYPES);
    assert_eq!(
        create_errors(&s, &widget(json!({"count": "3"}))),
        vec![
            r#"spec.count: Invalid value: "string": spec.count in body must be of type integer: "string""#
        ]
    );
    assert_eq!(
        create_errors(&s, &widget(json!({"count": 1.5}))),
        vec![
            r#"spec.count: Invalid value: "number": spec.count in body must be of type integer: "number""#
        ]
    );
    assert_eq!(
        create_errors(&s, &widget(json!({"enabled": "yes"}))),
        vec![
            r#"spec.enabled: Invalid value: "string": spec.enabled in body must be of type boolean: "string""#
        ]
    );
    assert_eq!(
        create_errors(&s, &widget(json!({"name": 5}))),
        vec![
            r#"spec.name: Invalid value: "integer": spec.name in body must be of type string: "integer""#
        ]
    );
    assert_eq!(
        create_errors(&s, &widget(json!({"tags": "a"}))),
        vec![
            r#"spec.tags: Invalid value: "string": spec.tags in body must be of type array: "string""#
        ]
    );
    assert_eq!(
        create_errors(&s, &widget(json!({"nested": []}))),
        vec![
            r#"spec.nested: Invalid value: "array": spec.nested in body must be of type object: "array""#
        ]
    );
    assert_eq!(
        create_errors(&s, &widget(json!({"ratio": true}))),
        vec![
            r#"spec.ratio: Invalid value: "boolean": spec.ratio in body must be of type number: "boolean""#
        ]
    );
}

#[test]
fn integral_float_passes_integer_type_like_kube_openapi() {
    let s = spec_schema(TYPES);
    assert!(create_errors(&s, &widget(json!({"count": 2.0}))).is_empty());
}

#[test]
fn nullable() {
    let s = spec_schema(
        r#"
type: object
properties:
  maybe: {type: string, nullable: true}
  never: {type: string}
"#,
    );
    assert!(create_errors(&s, &widget(json!({"maybe": null}))).is_empty());
    assert_eq!(
        create_errors(&s, &widget(json!({"never": null}))),
        vec![
            r#"spec.never: Invalid value: "null": spec.never in body must be of type string: "null""#
        ]
    );
    let mut obj = widget(json!({"maybe": null, "never": null}));
    s.prune(&mut obj);
    assert_eq!(obj["spec"], json!({"maybe": null}));
}

#[test]
fn required_fields() {
    let s = spec_schema(
        r#"
type: object
required: [name, size]
properties:
  name: {type: string}
  size: {type: integer}
"#,
    );
    assert!(create_errors(&s, &widget(json!({"name": "a", "size": 1}))).is_empty());
    assert_eq!(
        create_errors(&s, &widget(json!({"name": "a"}))),
        vec!["spec.size: Required value"]
    );
}

#[test]
fn additional_properties_schema_and_false() {
    let s = spec_schema(
        r#"
type: object
properties:
  limits:
    type: object
    additionalProperties: {type: integer, minimum: 0}
  closed:
    type: object
    additionalProperties: false
"#,
    );
    assert!(create_errors(&s, &widget(json!({"limits": {"cpu": 2}}))).is_empty());
    assert_eq!(
        create_errors(&s, &widget(json!({"limits": {"cpu": -1}}))),
        vec![
            "spec.limits.cpu: Invalid value: -1: spec.limits.cpu in body should be greater than or equal to 0"
        ]
    );
    assert_eq!(
        create_errors(&s, &widget(json!({"closed": {"x": 1}}))),
        vec![r#"spec.closed: Invalid value: "x": spec.closed.x in body is a forbidden property"#]
    );
}

#[test]
fn items_are_validated_with_indexed_paths() {
    let s = spec_schema(
        r#"
type: object
properties:
  ports:
    type: array
    items: {type: integer, minimum: 1, maximum: 65535}
"#,
    );
    assert!(create_errors(&s, &widget(json!({"ports": [80, 443]}))).is_empty());
    assert_eq!(
        create_errors(&s, &widget(json!({"ports": [80, 0, 70000]}))),
        vec![
            "spec.ports[1]: Invalid value: 0: spec.ports[1] in body should be greater than or equal to 1",
            "spec.ports[2]: Invalid value: 70000: spec.ports[2] in body should be less than or equal to 65535",
        ]
    );
}

#[test]
fn enums() {
    let s = spec_schema(
        r#"
type: object
properties:
  mode: {type: string, enum: [Fast, Slow]}
  level: {type: integer, enum: [1, 2]}
"#,
    );
    assert!(create_errors(&s, &widget(json!({"mode": "Fast", "level": 2}))).is_empty());
    assert_eq!(
        create_errors(&s, &widget(json!({"mode": "Medium"}))),
        vec![r#"spec.mode: Unsupported value: "Medium": supported values: "Fast", "Slow""#]
    );
    assert_eq!(
        create_errors(&s, &widget(json!({"level": 3}))),
        vec![r#"spec.level: Unsupported value: 3: supported values: "1", "2""#]
    );
}

#[test]
fn numeric_bounds() {
    let s = spec_schema(
        r#"
type: object
properties:
  vmCpuCount: {type: integer, minimum: 1}
  ratio: {type: number, minimum: 0, maximum: 1, exclusiveMaximum: true, exclusiveMinimum: true}
  step: {type: integer, multipleOf: 5}
"#,
    );
    assert!(
        create_errors(
            &s,
            &widget(json!({"vmCpuCount": 1, "ratio": 0.5, "step": 10}))
        )
        .is_empty()
    );
    assert_eq!(
        create_errors(&s, &widget(json!({"vmCpuCount": 0}))),
        vec![
            "spec.vmCpuCount: Invalid value: 0: spec.vmCpuCount in body should be greater than or equal to 1"
        ]
    );
    assert_eq!(
        create_errors(&s, &widget(json!({"ratio": 1}))),
        vec!["spec.ratio: Invalid value: 1: spec.ratio in body should be less than 1"]
    );
    assert_eq!(
        create_errors(&s, &widget(json!({"ratio": 0.0}))),
        vec!["spec.ratio: Invalid value: 0: spec.ratio in body should be greater than 0"]
    );
    assert_eq!(
        create_errors(&s, &widget(json!({"step": 7}))),
        vec!["spec.step: Invalid value: 7: spec.step in body should be a multiple of 5"]
    );
}

#[test]
fn string_lengths_and_pattern() {
    let s = spec_schema(
        r#"
type: object
properties:
  name: {type: string, minLength: 1, maxLength: 5, pattern: '^[a-z]+$'}
"#,
    );
    assert!(create_errors(&s, &widget(json!({"name": "abc"}))).is_empty());
    assert_eq!(
        create_errors(&s, &widget(json!({"name": "abcdefg"}))),
        vec!["spec.name: Too long: may not be more than 5 bytes"]
    );
    assert_eq!(
        create_errors(&s, &widget(json!({"name": ""}))),
        vec![r#"spec.name: Invalid value: "": spec.name in body should be at least 1 chars long"#]
    );
    assert_eq!(
        create_errors(&s, &widget(json!({"name": "AB"}))),
        vec![r#"spec.name: Invalid value: "AB": spec.name in body should match '^[a-z]+$'"#]
    );
}

#[test]
fn item_and_property_counts() {
    let s = spec_schema(
        r#"
type: object
properties:
  tags:
    type: array
    minItems: 1
    maxItems: 2
    items: {type: string}
  labels:
    type: object
    minProperties: 1
    maxProperties: 2
    additionalProperties: {type: string}
"#,
    );
    assert!(create_errors(&s, &widget(json!({"tags": ["a"], "labels": {"a": "b"}}))).is_empty());
    assert_eq!(
        create_errors(&s, &widget(json!({"tags": ["a", "b", "c"]}))),
        vec!["spec.tags: Too many: 3: must have at most 2 items"]
    );
    assert_eq!(
        create_errors(&s, &widget(json!({"tags": []}))),
        vec!["spec.tags: Invalid value: 0: spec.tags in body should have at least 1 items"]
    );
    assert_eq!(
        create_errors(
            &s,
            &widget(json!({"labels": {"a": "1", "b": "2", "c": "3"}}))
        ),
        vec!["spec.labels: Too many: 3: must have at most 2 items"]
    );
    assert_eq!(
        create_errors(&s, &widget(json!({"labels": {}}))),
        vec![
            "spec.labels: Invalid value: 0: spec.labels in body should have at least 1 properties"
        ]
    );
}

#[test]
fn formats() {
    let s = spec_schema(
        r#"
type: object
properties:
  at: {type: string, format: date-time}
  id: {type: string, format: uuid}
  small: {type: integer, format: int32}
"#,
    );
    assert!(
        create_errors(
            &s,
            &widget(
                json!({"at": "2026-11-23T09:00:00Z", "id": "123e4567-e89b-12d3-a456-426614174000"})
            )
        )
        .is_empty()
    );
    assert_eq!(
        create_errors(&s, &widget(json!({"at": "tomorrow"}))),
        vec![
            r#"spec.at: Invalid value: "tomorrow": spec.at in body must be of type date-time: "tomorrow""#
        ]
    );
    assert_eq!(
        create_errors(&s, &widget(json!({"id": "nope"}))),
        vec![r#"spec.id: Invalid value: "nope": spec.id in body must be of type uuid: "nope""#]
    );
    // The apiserver strips non-string formats such as int32 before validating.
    assert!(create_errors(&s, &widget(json!({"small": 9_999_999_999_i64}))).is_empty());
}

#[test]
fn int_or_string() {
    let s = spec_schema(
        r#"
type: object
properties:
  maxUnavailable:
    x-kubernetes-int-or-string: true
    anyOf: [{type: integer}, {type: string}]
"#,
    );
    assert!(create_errors(&s, &widget(json!({"maxUnavailable": 1}))).is_empty());
    assert!(create_errors(&s, &widget(json!({"maxUnavailable": "25%"}))).is_empty());
    let errs = create_errors(&s, &widget(json!({"maxUnavailable": true})));
    assert_eq!(
        errs[0],
        r#"spec.maxUnavailable: Invalid value: "boolean": spec.maxUnavailable in body must be of type integer,string: "boolean""#
    );
}

#[test]
fn junctors_validate_values() {
    let s = spec_schema(
        r#"
type: object
properties:
  size:
    type: integer
    allOf: [{minimum: 1}, {maximum: 10}]
  code:
    type: string
    oneOf: [{pattern: '^a'}, {pattern: '^b'}]
  word:
    type: string
    not: {enum: [forbidden]}
  mode:
    type: string
    anyOf: [{enum: [x]}, {enum: [y]}]
"#,
    );
    assert!(
        create_errors(
            &s,
            &widget(json!({"size": 5, "code": "abc", "word": "ok", "mode": "y"}))
        )
        .is_empty()
    );
    assert_eq!(
        create_errors(&s, &widget(json!({"size": 11}))),
        vec![
            "spec.size: Invalid value: 11: spec.size in body should be less than or equal to 10",
            r#"<nil>: Invalid value: "": "spec.size" must validate all the schemas (allOf)"#,
        ]
    );
    assert_eq!(
        create_errors(&s, &widget(json!({"code": "zz"})))[0],
        r#"<nil>: Invalid value: "": "spec.code" must validate one and only one schema (oneOf). Found none valid"#
    );
    assert_eq!(
        create_errors(&s, &widget(json!({"word": "forbidden"}))),
        vec![r#"<nil>: Invalid value: "": "spec.word" must not validate the schema (not)"#]
    );
    assert_eq!(
        create_errors(&s, &widget(json!({"mode": "z"})))[0],
        r#"<nil>: Invalid value: "": "spec.mode" must validate at least one schema (anyOf)"#
    );
}

#[test]
fn list_type_set_and_map() {
    let s = spec_schema(
        r#"
type: object
properties:
  tags:
    type: array
    x-kubernetes-list-type: set
    items: {type: string}
  ports:
    type: array
    x-kubernetes-list-type: map
    x-kubernetes-list-map-keys: [name]
    items:
      type: object
      required: [name]
      properties:
        name: {type: string}
        port: {type: integer}
"#,
    );
    assert!(
        create_errors(
            &s,
            &widget(json!({"tags": ["a", "b"], "ports": [{"name": "a"}, {"name": "b"}]}))
        )
        .is_empty()
    );
    assert_eq!(
        create_errors(&s, &widget(json!({"tags": ["a", "b", "a"]}))),
        vec![r#"spec.tags[2]: Duplicate value: "a""#]
    );
    assert_eq!(
        create_errors(
            &s,
            &widget(json!({"ports": [{"name": "http", "port": 80}, {"name": "http", "port": 81}]}))
        ),
        vec![r#"spec.ports[1]: Duplicate value: {"name":"http"}"#]
    );
}

#[test]
fn embedded_resource() {
    let s = spec_schema(
        r#"
type: object
properties:
  template:
    type: object
    x-kubernetes-embedded-resource: true
    x-kubernetes-preserve-unknown-fields: true
"#,
    );
    let ok = widget(
        json!({"template": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {}}}),
    );
    assert!(create_errors(&s, &ok).is_empty());
    assert_eq!(
        create_errors(&s, &widget(json!({"template": {"data": {}}}))),
        vec![
            "spec.template.apiVersion: Required value: must not be empty",
            "spec.template.kind: Required value: must not be empty",
        ]
    );
}

#[test]
fn object_meta_rules() {
    let s = spec_schema("type: object\n");
    let mut obj = widget(json!({}));
    obj["metadata"] = json!({"namespace": "default"});
    assert_eq!(
        create_errors(&s, &obj),
        vec!["metadata.name: Required value: name or generateName is required"]
    );
    obj["metadata"]["generateName"] = json!("w-");
    assert!(create_errors(&s, &obj).is_empty());
    obj["metadata"] = json!({"name": "Bad_Name", "namespace": "default"});
    assert_eq!(
        create_errors(&s, &obj),
        vec![
            r#"metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"#
        ]
    );
    let old = widget(json!({}));
    let mut renamed = old.clone();
    renamed["metadata"]["name"] = json!("w2");
    assert_eq!(
        update_errors(&s, &renamed, &old),
        vec![r#"metadata.name: Invalid value: "w2": field is immutable"#]
    );
}

#[test]
fn type_meta_must_match_the_crd() {
    let s = spec_schema("type: object\n");
    let mut obj = widget(json!({}));
    obj["kind"] = json!("Gadget");
    assert_eq!(
        create_errors(&s, &obj),
        vec![r#"kind: Invalid value: "Gadget": must be Widget"#]
    );
}

#[test]
fn ratcheting_keeps_unchanged_invalid_values_on_update() {
    let s = spec_schema(
        r#"
type: object
properties:
  name: {type: string, maxLength: 3}
  size: {type: integer, minimum: 1}
"#,
    );
    let old = widget(json!({"name": "toolong", "size": 1}));
    let new = widget(json!({"name": "toolong", "size": 2}));
    assert!(update_errors(&s, &new, &old).is_empty());
    let changed = widget(json!({"name": "stilltoolong", "size": 2}));
    assert_eq!(
        update_errors(&s, &changed, &old),
        vec!["spec.name: Too long: may not be more than 3 bytes"]
    );
    assert_eq!(
        create_errors(&s, &new),
        vec!["spec.name: Too long: may not be more than 3 bytes"]
    );
}
