//! Fixtures shared by the integration tests.

#![allow(dead_code)]

use mcs_schema_check::{CrdSchema, FieldError};
use serde_json::{Value, json};

/// Builds a namespaced `Widget.example.com/v1` CRD whose `openAPIV3Schema` is the YAML given.
pub fn crd_with_schema(schema_yaml: &str) -> Value {
    let schema: Value = serde_yaml::from_str(schema_yaml).expect("schema YAML");
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1",
                "served": true,
                "storage": true,
                "schema": {"openAPIV3Schema": schema},
                "subresources": {"status": {}}
            }]
        }
    })
}

/// A root schema whose `spec` is the YAML given (indented as a mapping value).
pub fn spec_schema(spec_yaml: &str) -> CrdSchema {
    let indented: String = spec_yaml.lines().map(|l| format!("      {l}\n")).collect();
    let yaml = format!(
        "type: object\nproperties:\n  apiVersion:\n    type: string\n  kind:\n    type: string\n  metadata:\n    type: object\n  spec:\n{indented}"
    );
    let schema = CrdSchema::from_crd(&crd_with_schema(&yaml), "v1").expect("CRD compiles");
    assert!(
        schema.structural_errors().is_empty(),
        "{:?}",
        schema.structural_errors()
    );
    schema
}

/// A `Widget` named `w1` in namespace `default` with the given spec.
pub fn widget(spec: Value) -> Value {
    json!({
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w1", "namespace": "default"},
        "spec": spec
    })
}

/// Validates a create and renders the errors the Kubernetes way.
pub fn create_errors(schema: &CrdSchema, obj: &Value) -> Vec<String> {
    render(schema.validate(obj, None))
}

/// Validates an update and renders the errors the Kubernetes way.
pub fn update_errors(schema: &CrdSchema, obj: &Value, old: &Value) -> Vec<String> {
    render(schema.validate(obj, Some(old)))
}

/// `Ok` → empty, `Err` → the `Display` of each error.
pub fn render(r: Result<(), Vec<FieldError>>) -> Vec<String> {
    match r {
        Ok(()) => Vec::new(),
        Err(errs) => errs.iter().map(ToString::to_string).collect(),
    }
}
