//! Server-side printing: `meta.k8s.io` `Table` responses for get and list.
//!
//! kubectl asks for `Accept: application/json;as=Table;v=v1;g=meta.k8s.io,...,application/json`
//! and prints the columns the server sends. Custom resources get `Name` plus their version's
//! `additionalPrinterColumns` (or a default `Age` column), evaluated as the apiextensions
//! apiserver does; built-in kinds get `Name`, a few cheap kind-specific columns and `Age`.
//! Rows carry `cells` and `object`, a `PartialObjectMetadata` unless `?includeObject=` asks
//! for `Object` or `None`.

use crate::error::{ApiError, ApiResult};
use crate::store::Store;
use crate::types::ResourceType;
use http::HeaderMap;
use serde_json::{Map, Value, json};
use std::collections::HashMap;

const NAME_DESCRIPTION: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";

const CREATED_DESCRIPTION: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

/// A negotiated Table response: which `meta.k8s.io` version the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TableRequest {
    /// `v1` or `v1beta1`.
    version: &'static str,
}

impl TableRequest {
    /// The response `Content-Type` (the apiserver sends plain JSON for transformed objects).
    pub(crate) fn content_type(&self) -> &'static str {
        "application/json"
    }
}

/// Pick the response representation from the `Accept` header(s), in the client's order of
/// preference (`q` first, then position): `Some` when the first acceptable clause is a
/// JSON `Table` in `meta.k8s.io/v1` or `v1beta1`, `None` for plain JSON. Clauses the server
/// cannot produce (protobuf, CBOR, `as=PartialObjectMetadata`, ...) are skipped; when none is
/// acceptable the response falls back to plain JSON.
pub(crate) fn negotiate(headers: &HeaderMap) -> Option<TableRequest> {
    let mut clauses: Vec<(f32, Option<TableRequest>)> = Vec::new();
    for value in headers.get_all(http::header::ACCEPT) {
        let Ok(text) = value.to_str() else { continue };
        for clause in text.split(',') {
            if let Some(c) = parse_clause(clause) {
                clauses.push(c);
            }
        }
    }
    clauses.sort_by(|a, b| b.0.total_cmp(&a.0));
    clauses.into_iter().next().and_then(|(_, t)| t)
}

/// One Accept clause: `None` when unsupported, otherwise its `q` and whether it is a Table.
fn parse_clause(clause: &str) -> Option<(f32, Option<TableRequest>)> {
    let mut parts = clause.split(';');
    let media = parts.next()?.trim().to_ascii_lowercase();
    let json_ok = matches!(media.as_str(), "application/json" | "application/*" | "*/*");
    if !json_ok {
        return None;
    }
    let mut q = 1.0f32;
    let (mut as_kind, mut group, mut version) = (None, None, None);
    for p in parts {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"').to_string();
        match k.trim().to_ascii_lowercase().as_str() {
            "q" => {
                q = v
                    .parse()
                    .ok()
                    .filter(|q: &f32| q.is_finite())
                    .unwrap_or(0.0)
            }
            "as" => as_kind = Some(v),
            "g" => group = Some(v),
            "v" => version = Some(v),
            _ => {}
        }
    }
    if q <= 0.0 {
        return None;
    }
    let Some(kind) = as_kind else {
        return Some((q, None));
    };
    if kind != "Table" || group.as_deref() != Some("meta.k8s.io") {
        return None;
    }
    let version = match version.as_deref() {
        Some("v1") => "v1",
        Some("v1beta1") => "v1beta1",
        _ => return None,
    };
    Some((q, Some(TableRequest { version })))
}

/// Where a column's cell comes from.
#[derive(Debug, Clone)]
enum Source {
    /// `metadata.name`.
    Name,
    /// A CRD printer column's JSONPath (`None` when it does not parse: the cell is null).
    Path(Option<JsonPath>),
    /// The age of `metadata.creationTimestamp` ("5m").
    Age,
    /// `metadata.creationTimestamp` as stored (RFC 3339), as the default table convertor.
    Created,
    /// The number of keys of `data` plus `binaryData`.
    DataCount,
    /// The value at a path as stored (whatever the column's type says).
    Raw(Option<JsonPath>),
    /// The controller owner reference as `kind.group/name` (lower-case kind and group), or
    /// `<none>`.
    Controller,
}

/// One column definition and how to fill it.
#[derive(Debug, Clone)]
struct Column {
    name: String,
    ty: String,
    format: String,
    description: String,
    priority: i64,
    source: Source,
}

impl Column {
    fn new(name: &str, ty: &str, description: &str, source: Source) -> Self {
        Self {
            name: name.into(),
            ty: ty.into(),
            format: String::new(),
            description: description.into(),
            priority: 0,
            source,
        }
    }

    fn name() -> Self {
        Self {
            format: "name".into(),
            ..Self::new("Name", "string", NAME_DESCRIPTION, Source::Name)
        }
    }

    fn age() -> Self {
        Self::new("Age", "string", CREATED_DESCRIPTION, Source::Age)
    }

    fn path(name: &str, ty: &str, description: &str, path: &str) -> Self {
        Self::new(name, ty, description, Source::Path(JsonPath::parse(path)))
    }

    fn definition(&self) -> Value {
        json!({
            "name": self.name,
            "type": self.ty,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        })
    }

    fn cell(&self, obj: &Value) -> Value {
        let meta = &obj["metadata"];
        match &self.source {
            Source::Name => json!(meta["name"].as_str().unwrap_or_default()),
            Source::Age => json!(age(meta["creationTimestamp"].as_str().unwrap_or_default())),
            Source::Created => json!(meta["creationTimestamp"].as_str().unwrap_or_default()),
            Source::DataCount => {
                let n = |k: &str| obj[k].as_object().map_or(0, Map::len);
                json!(n("data") + n("binaryData"))
            }
            Source::Controller => {
                let controller = meta["ownerReferences"]
                    .as_array()
                    .and_then(|refs| refs.iter().find(|r| r["controller"] == true));
                match controller {
                    Some(r) => {
                        let api_version = r["apiVersion"].as_str().unwrap_or_default();
                        let kind = r["kind"].as_str().unwrap_or_default();
                        let group_kind = match api_version.rsplit_once('/') {
                            Some((group, _)) => format!("{kind}.{group}"),
                            None => kind.to_string(),
                        };
                        json!(format!(
                            "{}/{}",
                            group_kind.to_lowercase(),
                            r["name"].as_str().unwrap_or_default()
                        ))
                    }
                    None => json!("<none>"),
                }
            }
            Source::Raw(p) => p
                .as_ref()
                .and_then(|p| p.first(obj))
                .cloned()
                .unwrap_or(Value::Null),
            Source::Path(None) => Value::Null,
            Source::Path(Some(p)) => match p.first(obj) {
                Some(v) => typed_cell(&self.ty, v),
                None => Value::Null,
            },
        }
    }
}

/// The columns of a custom resource version: `Name`, then the CRD's printer columns or a
/// default `Age` (a `date` column).
fn crd_columns(store: &Store, rt: &ResourceType) -> Vec<Column> {
    let crd = store
        .find_type("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .and_then(|crt| {
            store
                .get(&crt, "", &format!("{}.{}", rt.plural, rt.group))
                .ok()
        })
        .unwrap_or(Value::Null);
    let declared = crd["spec"]["versions"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == rt.version.as_str()))
        .and_then(|v| v["additionalPrinterColumns"].as_array())
        .filter(|cols| !cols.is_empty());
    let mut out = vec![Column::name()];
    match declared {
        Some(cols) => out.extend(cols.iter().map(|c| {
            let path = c["jsonPath"].as_str().unwrap_or_default();
            let description = c["description"]
                .as_str()
                .filter(|d| !d.is_empty())
                .map(str::to_string)
                .unwrap_or_else(|| {
                    format!("Custom resource definition column (in JSONPath format): {path}")
                });
            Column {
                format: c["format"].as_str().unwrap_or_default().into(),
                priority: c["priority"].as_i64().unwrap_or(0),
                ..Column::path(
                    c["name"].as_str().unwrap_or_default(),
                    c["type"].as_str().unwrap_or_default(),
                    &description,
                    path,
                )
            }
        })),
        None => out.push(Column::path(
            "Age",
            "date",
            CREATED_DESCRIPTION,
            ".metadata.creationTimestamp",
        )),
    }
    out
}

/// The columns of a built-in kind: `Name`, a few of kubectl's usual columns, `Age`.
fn builtin_columns(rt: &ResourceType) -> Vec<Column> {
    let mut out = vec![Column::name()];
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            out.push(Column::new(
                "Created At",
                "date",
                CREATED_DESCRIPTION,
                Source::Created,
            ));
            return out;
        }
        ("", "namespaces") => out.push(Column::path(
            "Status",
            "string",
            "The status of the namespace",
            ".status.phase",
        )),
        ("", "secrets") => {
            out.push(Column::path(
                "Type",
                "string",
                "Used to facilitate programmatic handling of secret data. More info: https://kubernetes.io/docs/concepts/configuration/secret/#secret-types",
                ".type",
            ));
            out.push(Column::new(
                "Data",
                "string",
                "Data contains the secret data. Each key must consist of alphanumeric characters, '-', '_' or '.'. The serialized form of the secret data is a base64 encoded string, representing the arbitrary (possibly non-string) data value here. Described in https://tools.ietf.org/html/rfc4648#section-4",
                Source::DataCount,
            ));
        }
        ("", "configmaps") => out.push(Column::new(
            "Data",
            "string",
            "Data contains the configuration data. Each key must consist of alphanumeric characters, '-', '_' or '.'. Values with non-UTF-8 byte sequences must use the BinaryData field. The keys stored in Data must not overlap with the keys in the BinaryData field, this is enforced during validation process.",
            Source::DataCount,
        )),
        ("apps", "controllerrevisions") => {
            out.push(Column::new(
                "Controller",
                "string",
                "Controller of the object",
                Source::Controller,
            ));
            out.push(Column::new(
                "Revision",
                "string",
                "Revision indicates the revision of the state represented by Data.",
                Source::Raw(JsonPath::parse(".revision")),
            ));
        }
        ("coordination.k8s.io", "leases") => out.push(Column::path(
            "Holder",
            "string",
            "holderIdentity contains the identity of the holder of a current lease. If Coordinated Leader Election is used, the holder identity must be equal to the elected LeaseCandidate.metadata.name field.",
            ".spec.holderIdentity",
        )),
        _ => {}
    }
    out.push(Column::age());
    out
}

/// Turn the result of a get (one object) or a list (`items`) into a `Table`, honouring
/// `?includeObject=` (`Metadata` by default, `Object`, `None`; anything else is 400).
pub(crate) fn render(
    store: &Store,
    rt: &ResourceType,
    req: TableRequest,
    query: &HashMap<String, String>,
    result: &Value,
) -> ApiResult<Value> {
    let include = query.get("includeObject").map_or("", String::as_str);
    if !matches!(include, "" | "Metadata" | "Object" | "None") {
        return Err(ApiError::bad_request(format!(
            "unrecognized includeObject value: \"{include}\""
        )));
    }
    let columns = if rt.custom {
        crd_columns(store, rt)
    } else {
        builtin_columns(rt)
    };
    let api_version = format!("meta.k8s.io/{}", req.version);
    let objects: Vec<&Value> = match result["items"].as_array() {
        Some(items) => items.iter().collect(),
        None => vec![result],
    };
    let rows: Vec<Value> = objects
        .into_iter()
        .map(|obj| {
            let object = match include {
                "Object" => obj.clone(),
                "None" => Value::Null,
                _ => json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": api_version,
                    "metadata": obj["metadata"],
                }),
            };
            json!({
                "cells": columns.iter().map(|c| c.cell(obj)).collect::<Vec<_>>(),
                "object": object,
            })
        })
        .collect();
    let mut meta = Map::new();
    let src_meta = &result["metadata"];
    if let Some(rv) = src_meta["resourceVersion"].as_str() {
        meta.insert("resourceVersion".into(), json!(rv));
    }
    if result["items"].is_array() {
        if let Some(c) = src_meta["continue"].as_str().filter(|c| !c.is_empty()) {
            meta.insert("continue".into(), json!(c));
        }
        if let Some(n) = src_meta["remainingItemCount"].as_i64() {
            meta.insert("remainingItemCount".into(), json!(n));
        }
    }
    Ok(json!({
        "kind": "Table",
        "apiVersion": api_version,
        "metadata": meta,
        "columnDefinitions": columns.iter().map(Column::definition).collect::<Vec<_>>(),
        "rows": rows,
    }))
}

/// A cell for a printer column of type `ty`, as the apiextensions table convertor makes it:
/// values of another JSON type than the column's are null (strings print anything).
fn typed_cell(ty: &str, v: &Value) -> Value {
    match (ty, v) {
        ("string", Value::String(s)) => json!(s),
        ("string", Value::Null) => json!("<no value>"),
        ("string", Value::Number(n)) => json!(go_number(n)),
        ("string", Value::Bool(b)) => json!(b.to_string()),
        ("string", other) => json!(other.to_string()),
        ("integer", Value::Number(n)) => match n.as_i64() {
            Some(i) => json!(i),
            // Go's int64(float64) truncation; saturating here.
            None => json!(n.as_f64().unwrap_or(0.0) as i64),
        },
        ("number", Value::Number(n)) => match n.as_i64() {
            Some(i) => json!(i),
            None => json!(n.as_f64().unwrap_or(0.0)),
        },
        ("boolean", Value::Bool(b)) => json!(b),
        ("date", Value::String(s)) => json!(age(s)),
        _ => Value::Null,
    }
}

/// A JSON number as Go's `fmt.Print` writes it (integers plainly, floats like `%g` with the
/// shortest precision: exponent form below 1e-4 and from 1e6 on, e.g. `1.5e+06`).
fn go_number(n: &serde_json::Number) -> String {
    if n.is_i64() || n.is_u64() {
        return n.to_string();
    }
    let f = n.as_f64().unwrap_or(0.0);
    let sci = format!("{f:e}");
    let Some((mantissa, exp)) = sci.split_once('e') else {
        return f.to_string();
    };
    let exp: i32 = exp.parse().unwrap_or(0);
    if f != 0.0 && !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.unsigned_abs())
    } else {
        f.to_string()
    }
}

/// How long ago an RFC 3339 timestamp was, as the apiserver renders `date` cells:
/// `<unknown>` for an empty one, `<invalid>` when it does not parse or is in the future.
pub(crate) fn age(rfc3339: &str) -> String {
    if rfc3339.is_empty() || rfc3339 == "null" {
        return "<unknown>".into();
    }
    let Ok(ts) = rfc3339.parse::<jiff::Timestamp>() else {
        return "<invalid>".into();
    };
    let since = jiff::Timestamp::now().as_millisecond() - ts.as_millisecond();
    // Go's `int(d.Seconds())` truncates towards zero.
    human_duration(since / 1000)
}

/// `k8s.io/apimachinery/pkg/util/duration.HumanDuration` for a number of seconds: two or
/// three significant figures ("45s", "3m20s", "17m", "5h10m", "3d4h", "400d", "3y12d").
pub(crate) fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// One step of a JSONPath.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// `.name` or `['name']`.
    Field(String),
    /// `[3]`, `[-1]`.
    Index(i64),
    /// `[*]` or `.*`.
    Wildcard,
    /// `[?(@.a.b == "x")]` or `[?(@.a)]`.
    Filter(Vec<Step>, Option<(CmpOp, Value)>),
}

/// A comparison in a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// The subset of Kubernetes JSONPath that CRD printer columns use: fields (`.a.b`,
/// `['a.b']`, `\.`-escaped dots), indexes (`[0]`, `[-1]`), wildcards (`[*]`, `.*`) and
/// filters on lists (`[?(@.type=="Ready")]`, `!=`, `<`, `<=`, `>`, `>=`, or existence
/// `[?(@.x)]`). Missing keys yield no result.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JsonPath(Vec<Step>);

impl JsonPath {
    /// Parse a path (optionally wrapped in `{}`); `None` for anything outside the subset.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let s = s
            .strip_prefix('{')
            .and_then(|x| x.strip_suffix('}'))
            .unwrap_or(s)
            .trim();
        let chars: Vec<char> = s.chars().collect();
        let (steps, end) = parse_steps(&chars, 0)?;
        (end == chars.len() && !steps.is_empty()).then_some(Self(steps))
    }

    /// The first value the path selects in `root`, if any.
    pub(crate) fn first<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        eval(&self.0, vec![root]).into_iter().next()
    }
}

/// Parse steps from `pos` until the end or a character that cannot continue a path.
fn parse_steps(c: &[char], mut pos: usize) -> Option<(Vec<Step>, usize)> {
    let mut steps = Vec::new();
    while pos < c.len() {
        match c[pos] {
            '.' => {
                pos += 1;
                match c.get(pos) {
                    Some('.') | None => return None,
                    Some('*') => {
                        steps.push(Step::Wildcard);
                        pos += 1;
                    }
                    Some(_) => {
                        let mut name = String::new();
                        while let Some(&ch) = c.get(pos) {
                            match ch {
                                '\\' => {
                                    name.push(*c.get(pos + 1)?);
                                    pos += 2;
                                }
                                '.' | '[' => break,
                                ' ' | ')' | '=' | '!' | '<' | '>' => break,
                                _ => {
                                    name.push(ch);
                                    pos += 1;
                                }
                            }
                        }
                        if name.is_empty() {
                            return None;
                        }
                        steps.push(Step::Field(name));
                    }
                }
            }
            '[' => {
                let (step, next) = parse_bracket(c, pos + 1)?;
                steps.push(step);
                pos = next;
            }
            _ => break,
        }
    }
    Some((steps, pos))
}

/// Parse what follows a `[`, returning the step and the position after the closing `]`.
fn parse_bracket(c: &[char], pos: usize) -> Option<(Step, usize)> {
    match c.get(pos)? {
        '?' => {
            if c.get(pos + 1) != Some(&'(') || c.get(pos + 2) != Some(&'@') {
                return None;
            }
            let (path, mut p) = parse_steps(c, pos + 3)?;
            skip_ws(c, &mut p);
            let cmp = if c.get(p) == Some(&')') {
                None
            } else {
                let (op, len) = match (c.get(p)?, c.get(p + 1)) {
                    ('=', Some('=')) => (CmpOp::Eq, 2),
                    ('!', Some('=')) => (CmpOp::Ne, 2),
                    ('<', Some('=')) => (CmpOp::Le, 2),
                    ('>', Some('=')) => (CmpOp::Ge, 2),
                    ('<', _) => (CmpOp::Lt, 1),
                    ('>', _) => (CmpOp::Gt, 1),
                    _ => return None,
                };
                p += len;
                skip_ws(c, &mut p);
                let (lit, next) = parse_literal(c, p)?;
                p = next;
                skip_ws(c, &mut p);
                Some((op, lit))
            };
            if c.get(p) != Some(&')') || c.get(p + 1) != Some(&']') {
                return None;
            }
            Some((Step::Filter(path, cmp), p + 2))
        }
        '\'' | '"' => {
            let (lit, p) = parse_literal(c, pos)?;
            let name = lit.as_str()?.to_string();
            (c.get(p) == Some(&']')).then_some((Step::Field(name), p + 1))
        }
        '*' => (c.get(pos + 1) == Some(&']')).then_some((Step::Wildcard, pos + 2)),
        _ => {
            let end = pos + c[pos..].iter().position(|&ch| ch == ']')?;
            let text: String = c[pos..end].iter().collect();
            let i = text.trim().parse::<i64>().ok()?;
            Some((Step::Index(i), end + 1))
        }
    }
}

fn skip_ws(c: &[char], p: &mut usize) {
    while c.get(*p).is_some_and(|ch| ch.is_whitespace()) {
        *p += 1;
    }
}

/// A quoted string, number, `true`, `false` or `null` at `pos`.
fn parse_literal(c: &[char], pos: usize) -> Option<(Value, usize)> {
    let first = *c.get(pos)?;
    if first == '\'' || first == '"' {
        let mut s = String::new();
        let mut p = pos + 1;
        loop {
            let ch = *c.get(p)?;
            if ch == first {
                return Some((json!(s), p + 1));
            }
            if ch == '\\' {
                s.push(*c.get(p + 1)?);
                p += 2;
            } else {
                s.push(ch);
                p += 1;
            }
        }
    }
    let end = pos
        + c[pos..]
            .iter()
            .position(|&ch| ch == ')' || ch.is_whitespace())
            .unwrap_or(c.len() - pos);
    let text: String = c[pos..end].iter().collect();
    let v = match text.as_str() {
        "true" => json!(true),
        "false" => json!(false),
        "null" => Value::Null,
        t => serde_json::from_str::<serde_json::Number>(t)
            .ok()
            .map(Value::Number)?,
    };
    Some((v, end))
}

fn eval<'a>(steps: &[Step], mut cur: Vec<&'a Value>) -> Vec<&'a Value> {
    for step in steps {
        let mut next = Vec::new();
        for v in cur {
            match (step, v) {
                (Step::Field(name), Value::Object(m)) => next.extend(m.get(name)),
                (Step::Index(i), Value::Array(a)) => {
                    let len = i64::try_from(a.len()).unwrap_or(i64::MAX);
                    let idx = if *i < 0 { *i + len } else { *i };
                    if let Ok(idx) = usize::try_from(idx) {
                        next.extend(a.get(idx));
                    }
                }
                (Step::Wildcard, Value::Array(a)) => next.extend(a.iter()),
                (Step::Wildcard, Value::Object(m)) => next.extend(m.values()),
                (Step::Filter(path, cmp), Value::Array(a)) => {
                    next.extend(a.iter().filter(|item| matches(path, cmp.as_ref(), item)));
                }
                _ => {}
            }
        }
        cur = next;
    }
    cur
}

/// Whether a list item passes a filter: the path exists, or its (single) value compares.
fn matches(path: &[Step], cmp: Option<&(CmpOp, Value)>, item: &Value) -> bool {
    let found = eval(path, vec![item]);
    let Some((op, lit)) = cmp else {
        return !found.is_empty();
    };
    let [left] = found.as_slice() else {
        return false;
    };
    let ord = match (left, lit) {
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        (Value::Number(a), Value::Number(b)) => a
            .as_f64()
            .zip(b.as_f64())
            .and_then(|(a, b)| a.partial_cmp(&b)),
        (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
        (Value::Null, Value::Null) => Some(std::cmp::Ordering::Equal),
        _ => None,
    };
    let Some(ord) = ord else {
        return *op == CmpOp::Ne;
    };
    match op {
        CmpOp::Eq => ord.is_eq(),
        CmpOp::Ne => ord.is_ne(),
        CmpOp::Lt => ord.is_lt(),
        CmpOp::Le => ord.is_le(),
        CmpOp::Gt => ord.is_gt(),
        CmpOp::Ge => ord.is_ge(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(path: &str, v: &Value) -> Option<Value> {
        JsonPath::parse(path)
            .unwrap_or_else(|| panic!("{path} parses"))
            .first(v)
            .cloned()
    }

    #[test]
    fn jsonpath_subset() {
        let obj = json!({
            "metadata": {"name": "a", "labels": {"app.kubernetes.io/name": "x"}},
            "status": {
                "conditions": [
                    {"type": "Progressing", "status": "False", "n": 1},
                    {"type": "Ready", "status": "True", "n": 2},
                ],
                "items": [{"b": 7}, {"b": 8}],
            }
        });
        assert_eq!(first(".metadata.name", &obj), Some(json!("a")));
        assert_eq!(first("{.metadata.name}", &obj), Some(json!("a")));
        assert_eq!(first(".status.items[0].b", &obj), Some(json!(7)));
        assert_eq!(first(".status.items[-1].b", &obj), Some(json!(8)));
        assert_eq!(first(".status.items[5].b", &obj), None);
        assert_eq!(first(".status.items[*].b", &obj), Some(json!(7)));
        assert_eq!(
            first(r#".status.conditions[?(@.type=="Ready")].status"#, &obj),
            Some(json!("True"))
        );
        assert_eq!(
            first(".status.conditions[?(@.type == 'Ready')].status", &obj),
            Some(json!("True"))
        );
        assert_eq!(
            first(r#".status.conditions[?(@.type!="Ready")].type"#, &obj),
            Some(json!("Progressing"))
        );
        assert_eq!(
            first(".status.conditions[?(@.n>1)].type", &obj),
            Some(json!("Ready"))
        );
        assert_eq!(
            first(r#".status.conditions[?(@.type=="Gone")].status"#, &obj),
            None
        );
        assert_eq!(first(".status.conditions[?(@.n)].n", &obj), Some(json!(1)));
        assert_eq!(
            first(r".metadata.labels.app\.kubernetes\.io/name", &obj),
            Some(json!("x"))
        );
        assert_eq!(
            first(".metadata.labels['app.kubernetes.io/name']", &obj),
            Some(json!("x"))
        );
        assert_eq!(first(".spec.missing.deeper", &obj), None);
        for bad in [
            "",
            "metadata.name",
            "..name",
            ".a[",
            ".a[?(@.x==)]",
            ".a[1:2]",
        ] {
            assert_eq!(JsonPath::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn human_durations() {
        let cases = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (200, "3m20s"),
            (17 * 60 + 5, "17m"),
            (179 * 60, "179m"),
            (3 * 3600, "3h"),
            (5 * 3600 + 10 * 60, "5h10m"),
            (30 * 3600, "30h"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (400 * 86400, "400d"),
            ((3 * 365 + 12) * 86400, "3y12d"),
            (10 * 365 * 86400, "10y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}s");
        }
        assert_eq!(age(""), "<unknown>");
        assert_eq!(age("yesterday"), "<invalid>");
    }

    #[test]
    fn typed_cells() {
        assert_eq!(typed_cell("integer", &json!(42)), json!(42));
        assert_eq!(typed_cell("integer", &json!(4.7)), json!(4));
        assert_eq!(typed_cell("integer", &json!("42")), Value::Null);
        assert_eq!(typed_cell("number", &json!(1.5)), json!(1.5));
        assert_eq!(typed_cell("boolean", &json!(true)), json!(true));
        assert_eq!(typed_cell("string", &json!(3)), json!("3"));
        assert_eq!(typed_cell("string", &json!(1.5e6)), json!("1.5e+06"));
        assert_eq!(typed_cell("string", &json!(0.25)), json!("0.25"));
        assert_eq!(typed_cell("string", &json!({"a": 1})), json!(r#"{"a":1}"#));
        assert_eq!(typed_cell("date", &json!("not a date")), json!("<invalid>"));
    }

    #[test]
    fn accept_negotiation() {
        let neg = |accept: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                http::header::ACCEPT,
                http::HeaderValue::from_str(accept).expect("header"),
            );
            negotiate(&h).map(|t| t.version)
        };
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(neg(kubectl), Some("v1"));
        assert_eq!(
            neg("application/json;as=Table;v=v1beta1;g=meta.k8s.io"),
            Some("v1beta1")
        );
        assert_eq!(neg("application/json"), None);
        assert_eq!(
            neg("application/json, application/json;as=Table;v=v1;g=meta.k8s.io"),
            None
        );
        assert_eq!(
            neg("application/json;q=0.5, application/json;as=Table;v=v1;g=meta.k8s.io"),
            Some("v1")
        );
        assert_eq!(
            neg("application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io,application/json"),
            None
        );
        assert_eq!(
            neg(
                "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1;g=meta.k8s.io"
            ),
            Some("v1")
        );
        assert_eq!(neg("application/json;as=Table;v=v2;g=meta.k8s.io"), None);
        assert_eq!(
            neg("application/json;as=Table;v=v1;g=meta.k8s.io;q=NaN,application/json"),
            None
        );
        assert_eq!(neg("application/json;as=Table;v=v1;g=other.io"), None);
    }
}
