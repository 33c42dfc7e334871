//! `Display` of field errors and the 422 `Status` body.

mod common;

use common::{spec_schema, widget};
use mcs_schema_check::{CrdSchema, FieldError, FieldErrorType, invalid_status};
use serde_json::json;

#[test]
fn display_matches_go_field_error() {
    let e = FieldError::invalid(
        "spec.vmCpuCount",
        Some(json!(0)),
        "spec.vmCpuCount in body should be greater than or equal to 1",
    );
    assert_eq!(
        e.to_string(),
        "spec.vmCpuCount: Invalid value: 0: spec.vmCpuCount in body should be greater than or equal to 1"
    );
    assert_eq!(
        FieldError::required("spec.name", "").to_string(),
        "spec.name: Required value"
    );
    assert_eq!(
        FieldError::forbidden("spec.x", "not allowed").to_string(),
        "spec.x: Forbidden: not allowed"
    );
    assert_eq!(
        FieldError::too_long("spec.x", 1).to_string(),
        "spec.x: Too long: may not be more than 1 byte"
    );
    assert_eq!(
        FieldError::too_many("spec.x", 4, 3).to_string(),
        "spec.x: Too many: 4: must have at most 3 items"
    );
    assert_eq!(
        FieldError::not_supported("spec.m", Some(json!("c")), &["a".into(), "b".into()])
            .to_string(),
        r#"spec.m: Unsupported value: "c": supported values: "a", "b""#
    );
    assert_eq!(
        FieldError::duplicate("spec.p[1]", json!({"name": "a", "port": 1})).to_string(),
        r#"spec.p[1]: Duplicate value: {"name":"a","port":1}"#
    );
    assert_eq!(
        FieldError::invalid("spec.q", Some(json!("a\"b")), "bad").to_string(),
        r#"spec.q: Invalid value: "a\"b": bad"#
    );
    assert_eq!(
        FieldError::invalid("spec.f", Some(json!(1.5)), "bad").to_string(),
        "spec.f: Invalid value: 1.5: bad"
    );
    assert_eq!(
        FieldError::invalid("spec", None, "cannot be used together").to_string(),
        "spec: Invalid value: cannot be used together"
    );
    assert_eq!(
        serde_json::to_value(FieldErrorType::TypeInvalid).unwrap(),
        json!("FieldValueTypeInvalid")
    );
    assert_eq!(
        FieldErrorType::from_reason("FieldValueTooMany"),
        Some(FieldErrorType::TooMany)
    );
}

#[test]
fn status_body_has_the_apiserver_shape() {
    let errs = vec![
        FieldError::invalid(
            "spec.vmCpuCount",
            Some(json!(0)),
            "spec.vmCpuCount in body should be greater than or equal to 1",
        ),
        FieldError::invalid(
            "spec",
            None,
            "vmCpuCount and vmMemoryMB cannot be used with serviceOffering",
        ),
    ];
    let status = invalid_status("mcs.example.com", "Image", "img-1", &errs);
    assert_eq!(
        status,
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "Image.mcs.example.com \"img-1\" is invalid: [spec.vmCpuCount: Invalid value: 0: spec.vmCpuCount in body should be greater than or equal to 1, spec: Invalid value: vmCpuCount and vmMemoryMB cannot be used with serviceOffering]",
            "reason": "Invalid",
            "details": {
                "name": "img-1",
                "group": "mcs.example.com",
                "kind": "Image",
                "causes": [
                    {
                        "reason": "FieldValueInvalid",
                        "message": "Invalid value: 0: spec.vmCpuCount in body should be greater than or equal to 1",
                        "field": "spec.vmCpuCount"
                    },
                    {
                        "reason": "FieldValueInvalid",
                        "message": "Invalid value: vmCpuCount and vmMemoryMB cannot be used with serviceOffering",
                        "field": "spec"
                    }
                ]
            },
            "code": 422
        })
    );
}

#[test]
fn single_error_message_has_no_brackets() {
    let errs = vec![FieldError::required("spec.name", "")];
    let status = invalid_status("example.com", "Widget", "w1", &errs);
    assert_eq!(
        status["message"],
        json!("Widget.example.com \"w1\" is invalid: spec.name: Required value")
    );
    assert_eq!(
        status["details"]["causes"],
        json!([{"reason": "FieldValueRequired", "message": "Required value", "field": "spec.name"}])
    );
}

#[test]
fn status_from_a_real_validation() {
    let s = spec_schema("type: object\nproperties:\n  size: {type: integer}\n");
    let errs = s
        .validate(&widget(json!({"size": "big"})), None)
        .unwrap_err();
    let status = invalid_status(s.group(), s.kind(), "w1", &errs);
    assert_eq!(
        status["details"]["causes"][0],
        json!({
            "reason": "FieldValueTypeInvalid",
            "message": "Invalid value: \"string\": spec.size in body must be of type integer: \"string\"",
            "field": "spec.size"
        })
    );
}

#[test]
fn schema_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CrdSchema>();
}
