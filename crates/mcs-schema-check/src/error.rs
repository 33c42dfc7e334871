//! Kubernetes field errors (`k8s.io/apimachinery/pkg/util/validation/field`) and the
//! 422 `Status` body built from them.

use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::gofmt;

/// Machine-readable kind of a field error; serializes to the Kubernetes `CauseType`
/// (`FieldValueInvalid`, `FieldValueTypeInvalid`, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum FieldErrorType {
    /// A value could not be found (`FieldValueNotFound`).
    #[serde(rename = "FieldValueNotFound")]
    NotFound,
    /// A required value is missing (`FieldValueRequired`).
    #[serde(rename = "FieldValueRequired")]
    Required,
    /// A value that must be unique is repeated (`FieldValueDuplicate`).
    #[serde(rename = "FieldValueDuplicate")]
    Duplicate,
    /// A malformed value (`FieldValueInvalid`).
    #[serde(rename = "FieldValueInvalid")]
    Invalid,
    /// A value outside an enumeration (`FieldValueNotSupported`).
    #[serde(rename = "FieldValueNotSupported")]
    NotSupported,
    /// A value that is not allowed here (`FieldValueForbidden`).
    #[serde(rename = "FieldValueForbidden")]
    Forbidden,
    /// A string longer than allowed (`FieldValueTooLong`).
    #[serde(rename = "FieldValueTooLong")]
    TooLong,
    /// A list or map with too many entries (`FieldValueTooMany`).
    #[serde(rename = "FieldValueTooMany")]
    TooMany,
    /// A string shorter than allowed (`FieldValueTooShort`).
    #[serde(rename = "FieldValueTooShort")]
    TooShort,
    /// A list with too few items (`FieldValueTooFew`).
    #[serde(rename = "FieldValueTooFew")]
    TooFew,
    /// A server-side failure unrelated to the input (`InternalError`).
    #[serde(rename = "InternalError")]
    Internal,
    /// A value of the wrong JSON type (`FieldValueTypeInvalid`).
    #[serde(rename = "FieldValueTypeInvalid")]
    TypeInvalid,
}

impl FieldErrorType {
    /// The `CauseType` string used as `reason` in a Status cause.
    pub fn reason(self) -> &'static str {
        match self {
            Self::NotFound => "FieldValueNotFound",
            Self::Required => "FieldValueRequired",
            Self::Duplicate => "FieldValueDuplicate",
            Self::Invalid => "FieldValueInvalid",
            Self::NotSupported => "FieldValueNotSupported",
            Self::Forbidden => "FieldValueForbidden",
            Self::TooLong => "FieldValueTooLong",
            Self::TooMany => "FieldValueTooMany",
            Self::TooShort => "FieldValueTooShort",
            Self::TooFew => "FieldValueTooFew",
            Self::Internal => "InternalError",
            Self::TypeInvalid => "FieldValueTypeInvalid",
        }
    }

    /// Parses a `CauseType` string (the inverse of [`FieldErrorType::reason`]).
    pub fn from_reason(reason: &str) -> Option<Self> {
        Some(match reason {
            "FieldValueNotFound" => Self::NotFound,
            "FieldValueRequired" => Self::Required,
            "FieldValueDuplicate" => Self::Duplicate,
            "FieldValueInvalid" => Self::Invalid,
            "FieldValueNotSupported" => Self::NotSupported,
            "FieldValueForbidden" => Self::Forbidden,
            "FieldValueTooLong" => Self::TooLong,
            "FieldValueTooMany" => Self::TooMany,
            "FieldValueTooShort" => Self::TooShort,
            "FieldValueTooFew" => Self::TooFew,
            "InternalError" => Self::Internal,
            "FieldValueTypeInvalid" => Self::TypeInvalid,
            _ => return None,
        })
    }
}

impl fmt::Display for FieldErrorType {
    /// The human text Go's `ErrorType.String()` returns (`Invalid value`, `Required value`, …).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotFound => "Not found",
            Self::Required => "Required value",
            Self::Duplicate => "Duplicate value",
            Self::Invalid | Self::TypeInvalid => "Invalid value",
            Self::NotSupported => "Unsupported value",
            Self::Forbidden => "Forbidden",
            Self::TooLong => "Too long",
            Self::TooMany => "Too many",
            Self::TooFew => "Too few",
            Self::Internal => "Internal error",
            Self::TooShort => "Too short",
        })
    }
}

/// One field-level validation error, as the apiserver reports it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FieldError {
    /// The field path, e.g. `spec.vmCpuCount`, `spec.ports[1]`, or `<nil>` for object-level notes.
    pub field: String,
    /// The error kind.
    pub error_type: FieldErrorType,
    /// The offending value; `None` means the value is omitted from the message.
    pub bad_value: Option<Value>,
    /// Free-form detail appended after the value.
    pub detail: String,
}

impl FieldError {
    /// Builds an error of any kind.
    pub fn new(
        field: impl Into<String>,
        error_type: FieldErrorType,
        bad_value: Option<Value>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            error_type,
            bad_value,
            detail: detail.into(),
        }
    }

    /// `field.Invalid(path, value, detail)`.
    pub fn invalid(
        field: impl Into<String>,
        value: Option<Value>,
        detail: impl Into<String>,
    ) -> Self {
        Self::new(field, FieldErrorType::Invalid, value, detail)
    }

    /// `field.Required(path, detail)`.
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(field, FieldErrorType::Required, None, detail)
    }

    /// `field.Forbidden(path, detail)`.
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(field, FieldErrorType::Forbidden, None, detail)
    }

    /// `field.NotSupported(path, value, validValues)`.
    pub fn not_supported(field: impl Into<String>, value: Option<Value>, valid: &[String]) -> Self {
        let detail = if valid.is_empty() {
            String::new()
        } else {
            let quoted: Vec<String> = valid.iter().map(|v| gofmt::quote(v)).collect();
            format!("supported values: {}", quoted.join(", "))
        };
        Self::new(field, FieldErrorType::NotSupported, value, detail)
    }

    /// `field.Duplicate(path, value)`.
    pub fn duplicate(field: impl Into<String>, value: Value) -> Self {
        Self::new(field, FieldErrorType::Duplicate, Some(value), "")
    }

    /// `field.TooLong(path, _, max)`.
    pub fn too_long(field: impl Into<String>, max: i64) -> Self {
        let detail = if max >= 0 {
            format!(
                "may not be more than {max} {}",
                if max == 1 { "byte" } else { "bytes" }
            )
        } else {
            "value is too long".to_string()
        };
        Self::new(field, FieldErrorType::TooLong, None, detail)
    }

    /// `field.TooMany(path, actual, max)`.
    pub fn too_many(field: impl Into<String>, actual: i64, max: i64) -> Self {
        let detail = if max >= 0 {
            format!(
                "must have at most {max} {}",
                if max == 1 { "item" } else { "items" }
            )
        } else {
            "has too many items".to_string()
        };
        let value = (actual >= 0).then(|| Value::from(actual));
        Self::new(field, FieldErrorType::TooMany, value, detail)
    }

    /// `field.TypeInvalid(path, value, detail)`.
    pub fn type_invalid(
        field: impl Into<String>,
        value: Option<Value>,
        detail: impl Into<String>,
    ) -> Self {
        Self::new(field, FieldErrorType::TypeInvalid, value, detail)
    }

    /// The message without the field path (Go's `ErrorBody`), used as a Status cause message.
    pub fn body(&self) -> String {
        let mut s = match self.error_type {
            FieldErrorType::Required
            | FieldErrorType::Forbidden
            | FieldErrorType::TooLong
            | FieldErrorType::TooShort
            | FieldErrorType::Internal => self.error_type.to_string(),
            _ => match &self.bad_value {
                None => self.error_type.to_string(),
                Some(v) => format!("{}: {}", self.error_type, gofmt::bad_value(v)),
            },
        };
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }
}

impl fmt::Display for FieldError {
    /// Go's `field.Error.Error()`: `<field>: <body>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

impl std::error::Error for FieldError {}

/// Go's `utilerrors.NewAggregate(...).Error()` over de-duplicated messages.
fn aggregate(errors: &[FieldError]) -> String {
    let mut seen: Vec<String> = Vec::new();
    for e in errors {
        let m = e.to_string();
        if !seen.contains(&m) {
            seen.push(m);
        }
    }
    match seen.len() {
        0 => String::new(),
        1 => seen.remove(0),
        _ => format!("[{}]", seen.join(", ")),
    }
}

/// The 422 `Status` body a real apiserver returns for an invalid object
/// (`apierrors.NewInvalid`): message `<Kind>.<group> "<name>" is invalid: …`, one cause per error.
pub fn invalid_status(group: &str, kind: &str, name: &str, errors: &[FieldError]) -> Value {
    let qualified = if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    };
    let agg = aggregate(errors);
    let message = if agg.is_empty() {
        format!("{qualified} {} is invalid", gofmt::quote(name))
    } else {
        format!("{qualified} {} is invalid: {agg}", gofmt::quote(name))
    };
    let causes: Vec<Value> = errors
        .iter()
        .map(|e| {
            let mut c = Map::new();
            c.insert("reason".into(), Value::from(e.error_type.reason()));
            let body = e.body();
            if !body.is_empty() {
                c.insert("message".into(), Value::from(body));
            }
            if !e.field.is_empty() {
                c.insert("field".into(), Value::from(e.field.clone()));
            }
            Value::Object(c)
        })
        .collect();
    let mut details = Map::new();
    if !name.is_empty() {
        details.insert("name".into(), Value::from(name));
    }
    if !group.is_empty() {
        details.insert("group".into(), Value::from(group));
    }
    if !kind.is_empty() {
        details.insert("kind".into(), Value::from(kind));
    }
    if !causes.is_empty() {
        details.insert("causes".into(), Value::Array(causes));
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "Invalid",
        "details": Value::Object(details),
        "code": 422
    })
}
