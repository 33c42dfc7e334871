//! Arbitrary JSON never makes the checker panic.

mod common;

use common::spec_schema;
use mcs_schema_check::CrdSchema;
use proptest::prelude::*;
use serde_json::{Value, json};

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-zA-Z0-9 ._/-]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("spec".to_string()),
                    Just("metadata".to_string()),
                    Just("name".to_string()),
                    Just("size".to_string()),
                    Just("ports".to_string()),
                    Just("labels".to_string()),
                    Just("template".to_string()),
                    "[a-z]{1,6}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn schema() -> CrdSchema {
    spec_schema(
        r#"
type: object
x-kubernetes-validations:
  - rule: "!has(self.name) || self.name != 'x'"
    message: no x
  - rule: "!has(self.size) || !has(oldSelf.size) || self.size >= oldSelf.size"
properties:
  name: {type: string, maxLength: 8, pattern: '^[a-z]*$', format: date-time}
  size:
    x-kubernetes-int-or-string: true
    default: 1
  ports:
    type: array
    x-kubernetes-list-type: map
    x-kubernetes-list-map-keys: [name]
    items:
      type: object
      required: [name]
      properties:
        name: {type: string}
        port: {type: integer, minimum: 1}
  labels:
    type: object
    additionalProperties: {type: string, enum: [a, b]}
  template:
    type: object
    x-kubernetes-embedded-resource: true
    x-kubernetes-preserve-unknown-fields: true
  choice:
    type: object
    oneOf: [{required: [a]}, {required: [b]}]
    properties:
      a: {type: string}
      b: {type: string}
"#,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn validate_prune_and_default_never_panic(obj in arb_json(), old in arb_json(), spec in arb_json()) {
        let s = schema();
        let _ = s.validate(&obj, None);
        let _ = s.validate(&obj, Some(&old));
        let mut w = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": spec});
        let o = w.clone();
        s.prune(&mut w);
        s.apply_defaults(&mut w);
        let _ = s.validate(&w, None);
        let _ = s.validate(&w, Some(&o));
        let mut any = obj.clone();
        s.prune(&mut any);
        s.apply_defaults(&mut any);
    }

    #[test]
    fn arbitrary_schemas_never_panic(raw in arb_json(), obj in arb_json()) {
        let crd = json!({"spec": {"group": "g", "names": {"kind": "K"}, "versions": [
            {"name": "v1", "served": true, "schema": {"openAPIV3Schema": raw}}
        ]}});
        if let Ok(s) = CrdSchema::from_crd(&crd, "v1") {
            let _ = s.structural_errors();
            let _ = s.validate(&obj, None);
            let mut o = obj.clone();
            s.prune(&mut o);
            s.apply_defaults(&mut o);
        }
    }
}
