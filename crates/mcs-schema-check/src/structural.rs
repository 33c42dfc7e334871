//! The CRD-creation checks on `openAPIV3Schema`: structural-schema invariants
//! (`schema/validation.go`) and the schema rules of CRD validation.

use serde_json::{Map, Value};

use crate::error::FieldError;
use crate::openapi::Walk;
use crate::schema::Node;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Root,
    Item,
    Field,
}

const TYPES: &[&str] = &["array", "boolean", "integer", "number", "object", "string"];

fn key(p: &str, k: &str) -> String {
    format!("{p}.properties[{k}]")
}

fn b(o: &Map<String, Value>, k: &str) -> bool {
    o.get(k).and_then(Value::as_bool).unwrap_or(false)
}

fn s<'a>(o: &'a Map<String, Value>, k: &str) -> &'a str {
    o.get(k).and_then(Value::as_str).unwrap_or("")
}

fn props(o: &Map<String, Value>) -> Option<&Map<String, Value>> {
    o.get("properties").and_then(Value::as_object)
}

fn is_int_or_string_pair(list: Option<&Value>) -> bool {
    let Some(Value::Array(a)) = list else {
        return false;
    };
    a.len() == 2
        && a[0]
            .as_object()
            .is_some_and(|o| o.len() == 1 && s(o, "type") == "integer")
        && a[1]
            .as_object()
            .is_some_and(|o| o.len() == 1 && s(o, "type") == "string")
}

struct Checker {
    errs: Vec<FieldError>,
}

impl Checker {
    fn standard(
        &mut self,
        o: &Map<String, Value>,
        p: &str,
        defaults_forbidden: Option<&str>,
        inside_meta: bool,
    ) {
        let ty = s(o, "type");
        if !ty.is_empty() && !TYPES.contains(&ty) {
            let valid: Vec<String> = TYPES.iter().map(|t| t.to_string()).collect();
            self.errs.push(FieldError::not_supported(
                format!("{p}.type"),
                Some(Value::from(ty)),
                &valid,
            ));
        }
        if ty == "null" {
            self.errs.push(FieldError::forbidden(
                format!("{p}.type"),
                "type cannot be set to null, use nullable as an alternative",
            ));
        }
        if o.contains_key("default")
            && let Some(reason) = defaults_forbidden
        {
            self.errs.push(FieldError::forbidden(
                format!("{p}.default"),
                format!("must not be set {reason}"),
            ));
        }
        for (k, label) in [
            ("id", "id"),
            ("additionalItems", "additionalItems"),
            ("patternProperties", "patternProperties"),
            ("definitions", "definitions"),
            ("dependencies", "dependencies"),
            ("$ref", "$ref"),
        ] {
            if o.contains_key(k) {
                self.errs.push(FieldError::forbidden(
                    format!("{p}.{k}"),
                    format!("{label} is not supported"),
                ));
            }
        }
        if o.get("items").is_some_and(Value::is_array) {
            self.errs.push(FieldError::forbidden(
                format!("{p}.items"),
                "items must be a schema object and not an array",
            ));
        }
        if inside_meta && b(o, "x-kubernetes-embedded-resource") {
            self.errs.push(FieldError::forbidden(
                format!("{p}.x-kubernetes-embedded-resource"),
                "must not be used inside of resource meta",
            ));
        }
        if b(o, "uniqueItems") {
            self.errs.push(FieldError::forbidden(
                format!("{p}.uniqueItems"),
                "uniqueItems cannot be set to true since the runtime complexity becomes quadratic",
            ));
        }
        if let Some(add) = o.get("additionalProperties") {
            let non_empty_props = props(o).is_some_and(|m| !m.is_empty());
            if non_empty_props && (add == &Value::Bool(false) || add.is_object()) {
                self.errs.push(FieldError::forbidden(
                    format!("{p}.additionalProperties"),
                    "additionalProperties and properties are mutual exclusive",
                ));
            }
        }
        if o.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(false)) {
            self.errs.push(FieldError::invalid(
                format!("{p}.x-kubernetes-preserve-unknown-fields"),
                Some(Value::Bool(false)),
                "must be true or undefined",
            ));
        }
        if let Some(mt) = o.get("x-kubernetes-map-type").and_then(Value::as_str) {
            if ty != "object" {
                self.type_must(
                    p,
                    ty,
                    "must be object if x-kubernetes-map-type is specified",
                );
            }
            if mt != "atomic" && mt != "granular" {
                self.errs.push(FieldError::not_supported(
                    format!("{p}.x-kubernetes-map-type"),
                    Some(Value::from(mt)),
                    &["atomic".into(), "granular".into()],
                ));
            }
        }
        let list_type = o.get("x-kubernetes-list-type").and_then(Value::as_str);
        if let Some(lt) = list_type {
            if ty != "array" {
                self.type_must(
                    p,
                    ty,
                    "must be array if x-kubernetes-list-type is specified",
                );
            }
            if !["atomic", "set", "map"].contains(&lt) {
                self.errs.push(FieldError::not_supported(
                    format!("{p}.x-kubernetes-list-type"),
                    Some(Value::from(lt)),
                    &["atomic".into(), "set".into(), "map".into()],
                ));
            }
        }
        let keys: Vec<&str> = o
            .get("x-kubernetes-list-map-keys")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if !keys.is_empty() {
            match list_type {
                None => self.errs.push(FieldError::required(
                    format!("{p}.x-kubernetes-list-type"),
                    "must be map if x-kubernetes-list-map-keys is non-empty",
                )),
                Some("map") => {}
                Some(lt) => self.errs.push(FieldError::invalid(
                    format!("{p}.x-kubernetes-list-type"),
                    Some(Value::from(lt)),
                    "must be map if x-kubernetes-list-map-keys is non-empty",
                )),
            }
        }
        if list_type == Some("map") {
            if keys.is_empty() {
                self.errs.push(FieldError::required(
                    format!("{p}.x-kubernetes-list-map-keys"),
                    "must not be empty if x-kubernetes-list-type is map",
                ));
            }
            match o.get("items").and_then(Value::as_object) {
                None => self.errs.push(FieldError::required(
                    format!("{p}.items"),
                    "must have a schema if x-kubernetes-list-type is map",
                )),
                Some(items) => {
                    let it = s(items, "type");
                    if it != "object" {
                        self.errs.push(FieldError::invalid(
                            format!("{p}.items.type"),
                            Some(Value::from(it)),
                            "must be object if parent array's x-kubernetes-list-type is map",
                        ));
                    } else {
                        let keys_json =
                            Value::from(keys.iter().map(|k| Value::from(*k)).collect::<Vec<_>>());
                        let mut seen: Vec<&str> = Vec::new();
                        for k in &keys {
                            match props(items)
                                .and_then(|m| m.get(*k))
                                .and_then(Value::as_object)
                            {
                                Some(kp) => {
                                    let kt = s(kp, "type");
                                    if kt == "array" || kt == "object" {
                                        self.errs.push(FieldError::invalid(
                                            format!("{}.type", key(&format!("{p}.items"), k)),
                                            Some(Value::from(it)),
                                            "must be a scalar type if parent array's x-kubernetes-list-type is map",
                                        ));
                                    }
                                    let required = items
                                        .get("required")
                                        .and_then(Value::as_array)
                                        .is_some_and(|r| r.iter().any(|x| x.as_str() == Some(*k)));
                                    if !required && !kp.contains_key("default") {
                                        self.errs.push(FieldError::required(
                                            format!("{}.default", key(&format!("{p}.items"), k)),
                                            "this property is in x-kubernetes-list-map-keys, so it must have a default or be a required property",
                                        ));
                                    }
                                    if b(kp, "nullable") {
                                        self.errs.push(FieldError::forbidden(
                                            format!("{}.nullable", key(&format!("{p}.items"), k)),
                                            "this property is in x-kubernetes-list-map-keys, so it cannot be nullable",
                                        ));
                                    }
                                }
                                None => self.errs.push(FieldError::invalid(
                                    format!("{p}.x-kubernetes-list-map-keys"),
                                    Some(keys_json.clone()),
                                    "entries must all be names of item properties",
                                )),
                            }
                            if seen.contains(k) {
                                self.errs.push(FieldError::invalid(
                                    format!("{p}.x-kubernetes-list-map-keys"),
                                    Some(keys_json.clone()),
                                    "must not contain duplicate entries",
                                ));
                            }
                            seen.push(k);
                        }
                    }
                }
            }
        }
        if b(o, "x-kubernetes-int-or-string") && b(o, "x-kubernetes-preserve-unknown-fields") {
            self.errs.push(FieldError::invalid(
                format!("{p}.x-kubernetes-preserve-unknown-fields"),
                Some(Value::Bool(true)),
                "must be false if x-kubernetes-int-or-string is true",
            ));
        }
        if b(o, "x-kubernetes-int-or-string") && b(o, "x-kubernetes-embedded-resource") {
            self.errs.push(FieldError::invalid(
                format!("{p}.x-kubernetes-embedded-resource"),
                Some(Value::Bool(true)),
                "must be false if x-kubernetes-int-or-string is true",
            ));
        }
        if let Some(pattern) = o.get("pattern").and_then(Value::as_str)
            && let Err(e) = regex::Regex::new(pattern)
        {
            self.errs.push(FieldError::invalid(
                format!("{p}.pattern"),
                Some(Value::from(pattern)),
                format!("must be a valid regular expression, but isn't: {e}"),
            ));
        }
        if let Some(Value::Array(rules)) = o.get("x-kubernetes-validations") {
            for (i, r) in rules.iter().enumerate() {
                let rp = format!("{p}.x-kubernetes-validations[{i}]");
                let Some(r) = r.as_object() else { continue };
                let rule = s(r, "rule");
                let msg = s(r, "message");
                if rule.trim().is_empty() {
                    self.errs.push(FieldError::required(
                        format!("{rp}.rule"),
                        "rule is not specified",
                    ));
                } else if !msg.is_empty() && msg.trim().is_empty() {
                    self.errs.push(FieldError::invalid(
                        format!("{rp}.message"),
                        Some(Value::from(msg)),
                        "message must be non-empty if specified",
                    ));
                } else if msg.trim().contains('\n') {
                    self.errs.push(FieldError::invalid(
                        format!("{rp}.message"),
                        Some(Value::from(msg)),
                        "message must not contain line breaks",
                    ));
                } else if rule.trim().contains('\n') && msg.trim().is_empty() {
                    self.errs.push(FieldError::required(
                        format!("{rp}.message"),
                        "message must be specified if rule contains line breaks",
                    ));
                }
                if let Some(reason) = r.get("reason").and_then(Value::as_str) {
                    let ok = [
                        "FieldValueDuplicate",
                        "FieldValueForbidden",
                        "FieldValueInvalid",
                        "FieldValueRequired",
                    ];
                    if !ok.contains(&reason) {
                        let valid: Vec<String> = ok.iter().map(|x| x.to_string()).collect();
                        self.errs.push(FieldError::not_supported(
                            format!("{rp}.reason"),
                            Some(Value::from(reason)),
                            &valid,
                        ));
                    }
                }
            }
        }
    }

    fn type_must(&mut self, p: &str, ty: &str, detail: &str) {
        if ty.is_empty() {
            self.errs
                .push(FieldError::required(format!("{p}.type"), detail));
        } else {
            self.errs.push(FieldError::invalid(
                format!("{p}.type"),
                Some(Value::from(ty)),
                detail,
            ));
        }
    }

    fn node(
        &mut self,
        v: &Value,
        p: &str,
        lvl: Level,
        defaults_forbidden: Option<&str>,
        inside_meta: bool,
    ) {
        let Some(o) = v.as_object() else {
            return;
        };
        self.standard(o, p, defaults_forbidden, inside_meta);
        let ty = s(o, "type");
        let embedded = b(o, "x-kubernetes-embedded-resource");
        let preserve = b(o, "x-kubernetes-preserve-unknown-fields");
        let int_or_string = b(o, "x-kubernetes-int-or-string");

        if ty == "array" && !o.contains_key("items") {
            self.errs.push(FieldError::required(
                format!("{p}.items"),
                "must be specified",
            ));
        }
        if let Some(items) = o.get("items").filter(|i| i.is_object()) {
            self.node(
                items,
                &format!("{p}.items"),
                Level::Item,
                defaults_forbidden,
                inside_meta,
            );
        }
        let check_meta = lvl == Level::Root || embedded;
        if let Some(pm) = props(o) {
            for (k, child) in pm {
                let meta_field =
                    check_meta && (k == "metadata" || k == "apiVersion" || k == "kind");
                let forbidden = if lvl == Level::Root && meta_field {
                    Some(format!("in top-level {k}"))
                } else {
                    defaults_forbidden.map(str::to_string)
                };
                self.node(
                    child,
                    &key(p, k),
                    Level::Field,
                    forbidden.as_deref(),
                    inside_meta || meta_field,
                );
            }
        }
        if let Some(add) = o.get("additionalProperties") {
            if lvl == Level::Root {
                self.errs.push(FieldError::forbidden(
                    format!("{p}.additionalProperties"),
                    "must not be used at the root",
                ));
            }
            if embedded {
                self.errs.push(FieldError::forbidden(
                    format!("{p}.additionalProperties"),
                    "must not be used if x-kubernetes-embedded-resource is set",
                ));
            }
            let reason = if inside_meta {
                Some("inside additionalProperties applying to object metadata")
            } else {
                defaults_forbidden
            };
            if add.is_object() {
                self.node(
                    add,
                    &format!("{p}.additionalProperties"),
                    Level::Field,
                    reason,
                    inside_meta,
                );
            }
        }

        let skip_any_of = is_int_or_string_pair(o.get("anyOf"));
        let skip_first_all_of_any_of = o
            .get("allOf")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .is_some_and(|f| is_int_or_string_pair(f.get("anyOf")));
        self.value_validation(o, p, skip_any_of, skip_first_all_of_any_of);

        if embedded && ty != "object" {
            self.type_must(
                p,
                ty,
                "must be object if x-kubernetes-embedded-resource is true",
            );
        } else if ty.is_empty() && !int_or_string && !preserve {
            let detail = match lvl {
                Level::Root => "must not be empty at the root",
                Level::Item => "must not be empty for specified array items",
                Level::Field => "must not be empty for specified object fields",
            };
            self.errs
                .push(FieldError::required(format!("{p}.type"), detail));
        }
        if lvl == Level::Root && !ty.is_empty() && ty != "object" {
            self.errs.push(FieldError::invalid(
                format!("{p}.type"),
                Some(Value::from(ty)),
                "must be object at the root",
            ));
        }
        if let Some(pm) = props(o) {
            if check_meta {
                for k in ["kind", "apiVersion"] {
                    if let Some(c) = pm.get(k).and_then(Value::as_object) {
                        let t = s(c, "type");
                        if t != "string" {
                            self.errs.push(FieldError::invalid(
                                format!("{}.type", key(p, k)),
                                Some(Value::from(t)),
                                "must be string",
                            ));
                        }
                    }
                }
            }
            if let Some(meta) = pm.get("metadata").and_then(Value::as_object) {
                self.metadata(meta, &key(p, "metadata"), check_meta, lvl);
            }
        }
        if embedded && !preserve && props(o).is_none_or(Map::is_empty) {
            self.errs.push(FieldError::required(
                format!("{p}.properties"),
                "must not be empty if x-kubernetes-embedded-resource is true without x-kubernetes-preserve-unknown-fields",
            ));
        }
    }

    fn metadata(&mut self, meta: &Map<String, Value>, p: &str, check_meta: bool, lvl: Level) {
        let ty = s(meta, "type");
        if check_meta && ty != "object" {
            self.errs.push(FieldError::invalid(
                format!("{p}.type"),
                Some(Value::from(ty)),
                "must be object",
            ));
        }
        if lvl != Level::Root {
            return;
        }
        let allowed_props =
            props(meta).is_none_or(|m| m.keys().all(|k| k == "name" || k == "generateName"));
        let only_allowed_keys = meta
            .keys()
            .all(|k| k == "type" || k == "properties" || k == "default");
        if !allowed_props || !only_allowed_keys {
            self.errs.push(FieldError::forbidden(
                p.to_string(),
                "must not specify anything other than name and generateName, but metadata is implicitly specified",
            ));
        }
    }

    fn value_validation(
        &mut self,
        o: &Map<String, Value>,
        p: &str,
        skip_any_of: bool,
        skip_first_all_of_any_of: bool,
    ) {
        if !skip_any_of && let Some(Value::Array(a)) = o.get("anyOf") {
            for (i, n) in a.iter().enumerate() {
                self.nested(n, &format!("{p}.anyOf[{i}]"), false);
            }
        }
        if let Some(Value::Array(a)) = o.get("allOf") {
            for (i, n) in a.iter().enumerate() {
                self.nested(
                    n,
                    &format!("{p}.allOf[{i}]"),
                    skip_first_all_of_any_of && i == 0,
                );
            }
        }
        if let Some(Value::Array(a)) = o.get("oneOf") {
            for (i, n) in a.iter().enumerate() {
                self.nested(n, &format!("{p}.oneOf[{i}]"), false);
            }
        }
        if let Some(n) = o.get("not") {
            self.nested(n, &format!("{p}.not"), false);
        }
    }

    fn nested(&mut self, v: &Value, p: &str, skip_any_of: bool) {
        let Some(o) = v.as_object() else {
            return;
        };
        self.standard(o, p, None, false);
        self.value_validation(o, p, skip_any_of, false);
        if let Some(items) = o.get("items") {
            self.nested(items, &format!("{p}.items"), false);
        }
        if let Some(pm) = props(o) {
            for (k, c) in pm {
                self.nested(c, &key(p, k), false);
            }
            if pm.contains_key("metadata") {
                self.errs.push(FieldError::forbidden(
                    key(p, "metadata"),
                    "must not be specified in a nested context",
                ));
            }
        }
        let forbidden_must_be_empty =
            ["type", "title", "description", "x-kubernetes-list-map-keys"];
        for k in forbidden_must_be_empty {
            let present = match o.get(k) {
                Some(Value::String(x)) => !x.is_empty(),
                Some(Value::Array(x)) => !x.is_empty(),
                Some(Value::Null) | None => false,
                Some(_) => true,
            };
            if present {
                self.errs.push(FieldError::forbidden(
                    format!("{p}.{k}"),
                    "must be empty to be structural",
                ));
            }
        }
        for k in [
            "additionalProperties",
            "default",
            "externalDocs",
            "x-kubernetes-list-type",
            "x-kubernetes-map-type",
        ] {
            if o.get(k).is_some_and(|x| !x.is_null()) {
                self.errs.push(FieldError::forbidden(
                    format!("{p}.{k}"),
                    "must be undefined to be structural",
                ));
            }
        }
        for k in [
            "nullable",
            "x-kubernetes-preserve-unknown-fields",
            "x-kubernetes-embedded-resource",
            "x-kubernetes-int-or-string",
        ] {
            if b(o, k) {
                self.errs.push(FieldError::forbidden(
                    format!("{p}.{k}"),
                    "must be false to be structural",
                ));
            }
        }
        if o.get("x-kubernetes-validations")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
        {
            self.errs.push(FieldError::forbidden(
                format!("{p}.x-kubernetes-validations"),
                "must be empty to be structural",
            ));
        }
    }
}

/// Checks that every property/items named inside a junctor is also specified structurally.
fn completeness(structural: &Value, nested: &Value, p: &str, errs: &mut Vec<FieldError>) {
    let (Some(so), Some(no)) = (structural.as_object(), nested.as_object()) else {
        return;
    };
    if let Some(np) = props(no) {
        for (k, nv) in np {
            match props(so).and_then(|m| m.get(k)) {
                Some(sv) => completeness(sv, nv, &key(p, k), errs),
                None => {
                    if !b(so, "x-kubernetes-preserve-unknown-fields")
                        && !so.contains_key("additionalProperties")
                    {
                        errs.push(FieldError::required(key(p, k), ""));
                    }
                }
            }
        }
    }
    if let Some(ni) = no.get("items") {
        match so.get("items") {
            Some(si) => completeness(si, ni, &format!("{p}.items"), errs),
            None => errs.push(FieldError::required(format!("{p}.items"), "")),
        }
    }
    for j in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(a)) = no.get(j) {
            for n in a {
                completeness(structural, n, p, errs);
            }
        }
    }
    if let Some(n) = no.get("not") {
        completeness(structural, n, p, errs);
    }
}

fn completeness_tree(v: &Value, p: &str, errs: &mut Vec<FieldError>) {
    let Some(o) = v.as_object() else {
        return;
    };
    for j in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(a)) = o.get(j) {
            for n in a {
                completeness(v, n, p, errs);
            }
        }
    }
    if let Some(n) = o.get("not") {
        completeness(v, n, p, errs);
    }
    if let Some(pm) = props(o) {
        for (k, c) in pm {
            completeness_tree(c, &key(p, k), errs);
        }
    }
    if let Some(i) = o.get("items") {
        completeness_tree(i, &format!("{p}.items"), errs);
    }
    if let Some(a) = o.get("additionalProperties") {
        completeness_tree(a, &format!("{p}.additionalProperties"), errs);
    }
}

/// Validates every `default` against its schema (and checks it is already pruned).
fn defaults(node: &Node, p: &str, errs: &mut Vec<FieldError>) {
    if let Some(d) = &node.default {
        let dp = format!("{p}.default");
        if d.is_null() {
            if !node.nullable {
                errs.push(FieldError::invalid(
                    &dp,
                    Some(Value::Null),
                    "must not be null for a non-nullable schema",
                ));
            }
        } else {
            let mut pruned = d.clone();
            crate::mutate::prune(&mut pruned, Some(node), node.embedded);
            if &pruned != d {
                errs.push(FieldError::invalid(
                    &dp,
                    Some(d.clone()),
                    "must not have unknown fields",
                ));
            }
            let walk = Walk { ratcheting: false };
            for mut e in walk.validate(node, d, None, "") {
                e.field = if e.field == "<nil>" {
                    dp.clone()
                } else {
                    format!("{dp}.{}", e.field)
                };
                errs.push(e);
            }
        }
    }
    if let Some(i) = node.items.as_deref() {
        defaults(i, &format!("{p}.items"), errs);
    }
    for (k, c) in &node.properties {
        defaults(c, &key(p, k), errs);
    }
}

/// All CRD-creation errors for one version's schema, sorted like the apiserver sorts them.
pub(crate) fn errors(raw: &Value, node: &Node, prefix: &str) -> Vec<String> {
    let mut c = Checker { errs: Vec::new() };
    c.node(raw, prefix, Level::Root, None, false);
    completeness_tree(raw, prefix, &mut c.errs);
    if c.errs.is_empty() {
        defaults(node, prefix, &mut c.errs);
    }
    let mut out: Vec<String> = c.errs.iter().map(ToString::to_string).collect();
    out.sort();
    out.dedup();
    out
}
