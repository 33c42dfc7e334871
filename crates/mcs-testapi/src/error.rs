//! Kubernetes `Status` errors as returned by the test API server.

use serde_json::{Value, json};

/// An API error that is rendered as a Kubernetes `meta/v1` `Status` object.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status code (also the `code` field of the Status).
    pub code: u16,
    /// The machine-readable `reason` (`NotFound`, `Conflict`, ...).
    pub reason: String,
    /// The human-readable message.
    pub message: String,
    /// The `details` object, or `Value::Null` for none.
    pub details: Value,
    /// Seconds for a `Retry-After` header, if any.
    pub retry_after: Option<u64>,
}

/// The plain-text body of a 404 for a path that no API group serves.
const PAGE_NOT_FOUND: &str = "404 page not found";

/// The `reason` of a field error (a `StatusCause`), from the start of its message as the
/// apiserver words them (`Required value`, `Forbidden: ...`, `Invalid value: ...`).
pub(crate) fn cause_reason(message: &str) -> &'static str {
    const PREFIXES: [(&str, &str); 9] = [
        ("Required value", "FieldValueRequired"),
        ("Forbidden", "FieldValueForbidden"),
        ("Unsupported value", "FieldValueNotSupported"),
        ("Duplicate value", "FieldValueDuplicate"),
        ("Too long", "FieldValueTooLong"),
        ("Too many", "FieldValueTooMany"),
        ("Not found", "FieldValueNotFound"),
        ("Internal error", "InternalError"),
        ("Invalid value", "FieldValueInvalid"),
    ];
    PREFIXES
        .iter()
        .find(|(prefix, _)| message.starts_with(prefix))
        .map_or("FieldValueInvalid", |(_, reason)| reason)
}

/// Shorthand result type for API operations.
pub type ApiResult<T> = Result<T, ApiError>;

/// The name of a resource as Kubernetes spells it in messages: `plural` or `plural.group`.
pub(crate) fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

impl ApiError {
    /// A new error with the given code, reason and message, without details.
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.to_string(),
            message: message.into(),
            details: Value::Null,
            retry_after: None,
        }
    }

    fn with_details(mut self, group: &str, plural: &str, name: &str) -> Self {
        let mut d = json!({ "kind": plural });
        if !group.is_empty() {
            d["group"] = json!(group);
        }
        if !name.is_empty() {
            d["name"] = json!(name);
        }
        self.details = d;
        self
    }

    /// 404 NotFound for one object.
    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(group, plural)),
        )
        .with_details(group, plural, name)
    }

    /// 404 NotFound for a path under a served built-in group version that names no resource
    /// (a real apiserver's `details` is empty then).
    pub fn path_not_found() -> Self {
        let mut e = Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
        e.details = json!({});
        e
    }

    /// 404 for a path no API group serves: a real apiserver answers these (unknown groups,
    /// unknown versions or resources of a CRD's group, anything outside `/api` and `/apis`)
    /// with the plain-text body `404 page not found`, not a `Status`. Rendered as such by
    /// the HTTP front end ([`ApiError::is_page_not_found`]).
    pub fn page_not_found() -> Self {
        Self::new(404, "NotFound", PAGE_NOT_FOUND)
    }

    /// Whether this is [`ApiError::page_not_found`] (served as plain text).
    pub fn is_page_not_found(&self) -> bool {
        self.code == 404 && self.message == PAGE_NOT_FOUND && self.details.is_null()
    }

    /// 409 AlreadyExists.
    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(group, plural)),
        )
        .with_details(group, plural, name)
    }

    /// 409 Conflict on a stale resourceVersion.
    pub fn conflict(group: &str, plural: &str, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                qualified(group, plural)
            ),
        )
        .with_details(group, plural, name)
    }

    /// 409 Conflict with a custom message.
    pub fn conflict_msg(group: &str, plural: &str, name: &str, msg: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {msg}",
                qualified(group, plural)
            ),
        )
        .with_details(group, plural, name)
    }

    /// 422 Invalid with field causes: `(field, message)` pairs. Each cause's `reason` follows
    /// from its message (`Forbidden: ...` is `FieldValueForbidden`, ...); the message lists
    /// every distinct cause once, as the apiserver's aggregate does.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: &[(String, String)]) -> Self {
        let mut msgs: Vec<String> = Vec::new();
        for (f, m) in causes {
            let text = if f.is_empty() {
                m.clone()
            } else {
                format!("{f}: {m}")
            };
            if !msgs.contains(&text) {
                msgs.push(text);
            }
        }
        let msg = if msgs.len() == 1 {
            msgs[0].clone()
        } else {
            format!("[{}]", msgs.join(", "))
        };
        let mut e = Self::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {msg}", qualified(group, kind)),
        );
        let causes: Vec<Value> = causes
            .iter()
            .map(|(f, m)| json!({"reason": cause_reason(m), "message": m, "field": f}))
            .collect();
        let mut d = json!({ "causes": causes });
        for (k, v) in [("group", group), ("kind", kind), ("name", name)] {
            if !v.is_empty() {
                d[k] = json!(v);
            }
        }
        e.details = d;
        e
    }

    /// 400 BadRequest.
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", msg)
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    /// 410 Gone with reason `Expired`.
    pub fn expired(msg: impl Into<String>) -> Self {
        Self::new(410, "Expired", msg)
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(ct: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {ct})"
            ),
        )
    }

    /// 429 TooManyRequests with a Retry-After.
    pub fn too_many_requests(retry_after: u64) -> Self {
        let mut e = Self::new(
            429,
            "TooManyRequests",
            "the server has received too many requests and has asked us to try again later",
        );
        e.details = json!({ "retryAfterSeconds": retry_after });
        e.retry_after = Some(retry_after);
        e
    }

    /// 500 InternalError.
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", msg.into()),
        )
    }

    /// 401 Unauthorized.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 403 Forbidden.
    pub fn forbidden(msg: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", msg)
    }

    /// The `Status` object for this error.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if self.reason.is_empty()
            && let Some(m) = s.as_object_mut()
        {
            m.remove("reason");
        }
        if !self.details.is_null() {
            s["details"] = self.details.clone();
        }
        s
    }

    /// Build from a full Status body (e.g. the 422 body made by `mcs-schema-check`).
    pub fn from_status(status: &Value) -> Self {
        let code = status["code"].as_u64().unwrap_or(500) as u16;
        Self {
            code,
            reason: status["reason"].as_str().unwrap_or("Invalid").to_string(),
            message: status["message"].as_str().unwrap_or_default().to_string(),
            details: status.get("details").cloned().unwrap_or(Value::Null),
            retry_after: None,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}
