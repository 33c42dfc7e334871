//! Defaulting and pruning.

mod common;

use common::{crd_with_schema, spec_schema, widget};
use mcs_schema_check::CrdSchema;
use serde_json::json;

const DEFAULTS: &str = r#"
type: object
properties:
  replicas: {type: integer, default: 1}
  strategy:
    type: object
    default: {}
    properties:
      kind: {type: string, default: Rolling}
      surge: {type: integer, default: 25}
  ports:
    type: array
    items:
      type: object
      properties:
        protocol: {type: string, default: TCP}
        port: {type: integer}
  labels:
    type: object
    additionalProperties:
      type: object
      properties:
        weight: {type: integer, default: 10}
  nullableWithDefault: {type: string, nullable: true, default: keep}
  plainWithDefault: {type: string, default: filled}
"#;

#[test]
fn defaults_fill_missing_fields_recursively() {
    let s = spec_schema(DEFAULTS);
    let mut obj = widget(json!({
        "ports": [{"port": 80}, {"port": 443, "protocol": "UDP"}],
        "labels": {"a": {}},
        "nullableWithDefault": null,
        "plainWithDefault": null
    }));
    s.apply_defaults(&mut obj);
    assert_eq!(
        obj["spec"],
        json!({
            "replicas": 1,
            "strategy": {"kind": "Rolling", "surge": 25},
            "ports": [{"port": 80, "protocol": "TCP"}, {"port": 443, "protocol": "UDP"}],
            "labels": {"a": {"weight": 10}},
            "nullableWithDefault": null,
            "plainWithDefault": "filled"
        })
    );
}

#[test]
fn defaults_do_not_override_values() {
    let s = spec_schema(DEFAULTS);
    let mut obj = widget(json!({"replicas": 3, "strategy": {"kind": "Recreate", "surge": 0}}));
    s.apply_defaults(&mut obj);
    assert_eq!(obj["spec"]["replicas"], json!(3));
    assert_eq!(
        obj["spec"]["strategy"],
        json!({"kind": "Recreate", "surge": 0})
    );
}

#[test]
fn pruning_drops_unknown_fields_but_keeps_type_and_object_meta() {
    let s = spec_schema(
        r#"
type: object
properties:
  known: {type: string}
  free:
    type: object
    x-kubernetes-preserve-unknown-fields: true
    properties:
      typed:
        type: object
        properties:
          a: {type: string}
  list:
    type: array
    items:
      type: object
      properties:
        x: {type: integer}
"#,
    );
    let mut obj = json!({
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w1", "labels": {"a": "b"}, "bogus": 1},
        "spec": {
            "known": "k",
            "unknown": 1,
            "free": {"anything": {"deep": true}, "typed": {"a": "x", "b": "dropped"}},
            "list": [{"x": 1, "y": 2}]
        },
        "extra": true
    });
    s.prune(&mut obj);
    assert_eq!(
        obj,
        json!({
            "apiVersion": "example.com/v1",
            "kind": "Widget",
            "metadata": {"name": "w1", "labels": {"a": "b"}},
            "spec": {
                "known": "k",
                "free": {"anything": {"deep": true}, "typed": {"a": "x"}},
                "list": [{"x": 1}]
            }
        })
    );
}

#[test]
fn root_preserve_unknown_fields_keeps_everything_unknown() {
    let crd = crd_with_schema("type: object\nx-kubernetes-preserve-unknown-fields: true\n");
    let s = CrdSchema::from_crd(&crd, "v1").unwrap();
    let mut obj = widget(json!({"anything": [1, {"a": 2}]}));
    let before = obj.clone();
    s.prune(&mut obj);
    assert_eq!(obj, before);
}

#[test]
fn embedded_resources_keep_their_metadata() {
    let s = spec_schema(
        r#"
type: object
properties:
  template:
    type: object
    x-kubernetes-embedded-resource: true
    properties:
      spec:
        type: object
        properties:
          image: {type: string}
"#,
    );
    let mut obj = widget(json!({"template": {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "junk": 1},
        "spec": {"image": "nginx", "other": 1}, "status": {}
    }}));
    s.prune(&mut obj);
    assert_eq!(
        obj["spec"]["template"],
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"image": "nginx"}})
    );
}

#[test]
fn crd_metadata_is_exposed() {
    let s = spec_schema("type: object\n");
    assert_eq!(s.group(), "example.com");
    assert_eq!(s.version(), "v1");
    assert_eq!(s.api_version(), "example.com/v1");
    assert_eq!(s.kind(), "Widget");
    assert_eq!(s.list_kind(), "WidgetList");
    assert_eq!(s.plural(), "widgets");
    assert_eq!(s.singular(), "widget");
    assert!(s.namespaced());
    assert!(s.has_status_subresource());
    assert!(s.scale_subresource().is_none());
}
