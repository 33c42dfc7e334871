//! `x-kubernetes-validations`: compilation through `kube-cel` and the apiserver's
//! evaluation walk (correlation of old values, transition rules, ratcheting).

use kube_cel::{CompiledSchema, ErrorKind, compile_schema};
use serde_json::Value;

use crate::SchemaError;
use crate::error::{FieldError, FieldErrorType};
use crate::path;
use crate::schema::{Additional, Node, RuleSpec};

/// One compiled rule: the node's schema stripped down to this single rule.
pub(crate) struct CompiledRule {
    spec: RuleSpec,
    compiled: CompiledSchema,
    uses_old_self: bool,
}

impl std::fmt::Debug for CompiledRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledRule")
            .field("rule", &self.spec.rule)
            .field("uses_old_self", &self.uses_old_self)
            .finish()
    }
}

/// The compiled rules of one schema node.
#[derive(Debug, Default)]
pub(crate) struct RuleSet {
    rules: Vec<CompiledRule>,
}

fn strip_rules(v: &mut Value) {
    let Some(o) = v.as_object_mut() else {
        return;
    };
    o.remove("x-kubernetes-validations");
    if let Some(Value::Object(props)) = o.get_mut("properties") {
        for p in props.values_mut() {
            strip_rules(p);
        }
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(child) = o.get_mut(key) {
            strip_rules(child);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(list)) = o.get_mut(key) {
            for child in list {
                strip_rules(child);
            }
        }
    }
}

/// Compiles the rules of `node` and of every node below it reachable through
/// `properties`, `additionalProperties` and `items`; returns the number of rules.
pub(crate) fn compile_tree(node: &mut Node, schema_path: &str) -> Result<usize, SchemaError> {
    compile_node(node, schema_path, true)
}

fn compile_node(
    node: &mut Node,
    schema_path: &str,
    resource_root: bool,
) -> Result<usize, SchemaError> {
    let mut count = 0;
    if !node.rules.is_empty() {
        let raw_rules: Vec<Value> = node
            .raw
            .get("x-kubernetes-validations")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut base = node.raw.clone();
        strip_rules(&mut base);
        let mut set = RuleSet::default();
        for (i, spec) in node.rules.iter().enumerate() {
            let rule_path = format!("{schema_path}.x-kubernetes-validations[{i}]");
            if spec.rule.trim().is_empty() {
                return Err(SchemaError::CelCompile {
                    path: rule_path,
                    rule: spec.rule.clone(),
                    message: "rule is not specified".into(),
                });
            }
            let mut one = base.clone();
            if let Some(o) = one.as_object_mut() {
                o.insert(
                    "x-kubernetes-validations".into(),
                    Value::Array(vec![raw_rules.get(i).cloned().unwrap_or(Value::Null)]),
                );
            }
            let compiled = compile_schema(&one);
            if let Some(err) = compiled.compilation_errors().first() {
                return Err(SchemaError::CelCompile {
                    path: rule_path,
                    rule: spec.rule.clone(),
                    message: err.to_string(),
                });
            }
            if let Some(message) = check_fields(&spec.rule, node, resource_root) {
                return Err(SchemaError::CelCompile {
                    path: rule_path,
                    rule: spec.rule.clone(),
                    message,
                });
            }
            let uses_old_self = compiled
                .validations
                .first()
                .and_then(|r| r.as_ref().ok())
                .is_some_and(|r| r.is_transition_rule);
            set.rules.push(CompiledRule {
                spec: spec.clone(),
                compiled,
                uses_old_self,
            });
            count += 1;
        }
        node.cel = Some(set);
    }
    for (k, child) in node.properties.iter_mut() {
        count += compile_node(child, &format!("{schema_path}.properties[{k}]"), false)?;
    }
    if let Some(Additional::Schema(child)) = node.additional.as_mut() {
        count += compile_node(child, &format!("{schema_path}.additionalProperties"), false)?;
    }
    if let Some(child) = node.items.as_mut() {
        count += compile_node(child, &format!("{schema_path}.items"), false)?;
    }
    Ok(count)
}

/// Whether children of this map node can be correlated with the old object.
pub(crate) fn map_correlatable(node: &Node) -> bool {
    node.raw
        .get("x-kubernetes-map-type")
        .and_then(Value::as_str)
        != Some("atomic")
}

/// The value a list-map item has for each key (missing keys fall back to the key's default).
pub(crate) fn map_key_values(node: &Node, item: &Value) -> Option<Vec<Value>> {
    let obj = item.as_object()?;
    let items = node.items.as_deref();
    Some(
        node.list_map_keys
            .iter()
            .map(|k| {
                obj.get(k).cloned().unwrap_or_else(|| {
                    items
                        .and_then(|s| s.properties.get(k))
                        .and_then(|p| p.default.clone())
                        .unwrap_or(Value::Null)
                })
            })
            .collect(),
    )
}

/// The old item correlated with `item` in a `x-kubernetes-list-type: map` list.
pub(crate) fn correlate_map_item<'a>(
    node: &Node,
    item: &Value,
    old: Option<&'a Value>,
) -> Option<&'a Value> {
    if node.list_type.as_deref() != Some("map") || node.list_map_keys.is_empty() {
        return None;
    }
    let keys = map_key_values(node, item)?;
    old?.as_array()?
        .iter()
        .find(|o| map_key_values(node, o).as_ref() == Some(&keys))
}

fn trimmed_rule_text(spec: &RuleSpec) -> String {
    match spec.message.as_deref() {
        Some(m) if !m.is_empty() => m.trim().to_string(),
        _ => spec.rule.trim().to_string(),
    }
}

fn message_or_default(spec: &RuleSpec) -> String {
    match spec.message.as_deref() {
        Some(m) if !m.is_empty() => m.trim().to_string(),
        _ => format!("failed rule: {}", trimmed_rule_text(spec)),
    }
}

fn normalized_field_path(fp: &str) -> String {
    fp.trim().trim_start_matches('.').to_string()
}

fn display_value(v: &Value) -> Option<Value> {
    match v {
        Value::Object(_) | Value::Array(_) => None,
        other => Some(other.clone()),
    }
}

fn rule_failure(path: &str, value: &Value, spec: &RuleSpec, message: String) -> FieldError {
    let field = match spec.field_path.as_deref().map(normalized_field_path) {
        Some(fp) if !fp.is_empty() => path::child(path, &fp),
        _ => path.to_string(),
    };
    match spec.reason.as_deref() {
        Some("FieldValueForbidden") => FieldError::forbidden(field, message),
        Some("FieldValueRequired") => FieldError::required(field, message),
        Some("FieldValueDuplicate") => FieldError::duplicate(field, value.clone()),
        _ => FieldError::new(
            field,
            FieldErrorType::Invalid,
            display_value(value),
            message,
        ),
    }
}

fn evaluate_node(
    set: &RuleSet,
    node: &Node,
    value: &Value,
    old: Option<&Value>,
    ratchet: bool,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    let node_type = Value::from(node.ty.clone().unwrap_or_default());
    for rule in &set.rules {
        if ratchet && !rule.uses_old_self {
            continue;
        }
        let Err(failures) = kube_cel::validate_compiled(&rule.compiled, value, old) else {
            continue;
        };
        for f in failures.iter() {
            match f.kind {
                ErrorKind::ValidationFailure => {
                    let message = if rule.spec.message_expression.is_some() {
                        let m = f.message.clone();
                        if m.trim().is_empty() || m.contains('\n') {
                            message_or_default(&rule.spec)
                        } else {
                            m
                        }
                    } else {
                        message_or_default(&rule.spec)
                    };
                    errs.push(rule_failure(path, value, &rule.spec, message));
                }
                _ => {
                    let detail = f
                        .message
                        .strip_prefix("rule evaluation error: ")
                        .unwrap_or(&f.message)
                        .to_string();
                    errs.push(FieldError::invalid(
                        path,
                        Some(node_type.clone()),
                        format!(
                            "{detail} evaluating rule: {}",
                            trimmed_rule_text(&rule.spec)
                        ),
                    ));
                }
            }
        }
    }
}

/// Evaluates every rule in the tree against `value` (with the correlated `old` value
/// on updates), appending failures to `errs`.
pub(crate) fn walk(
    node: &Node,
    value: &Value,
    old: Option<&Value>,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    if value.is_null() {
        return;
    }
    let ratchet = old.is_some_and(|o| o == value);
    if let Some(set) = &node.cel {
        evaluate_node(set, node, value, old, ratchet, path, errs);
    }
    match value {
        Value::Object(map) => {
            let correlatable = map_correlatable(node);
            for (k, v) in map {
                let old_child = if correlatable {
                    old.and_then(|o| o.get(k))
                } else {
                    None
                };
                if let Some(p) = node.properties.get(k) {
                    walk(p, v, old_child, &path::child(path, k), errs);
                } else if let Some(Additional::Schema(s)) = &node.additional {
                    walk(s, v, old_child, &path::key(path, k), errs);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = node.items.as_deref() {
                for (i, item) in items.iter().enumerate() {
                    let old_item = correlate_map_item(node, item, old);
                    walk(item_schema, item, old_item, &path::index(path, i), errs);
                }
            }
        }
        _ => {}
    }
}

/// CEL's escaping of a property name (`apiserver/schema/cel/model/escaping.go`);
/// `None` when the name cannot be accessed from CEL at all.
pub(crate) fn escape(name: &str) -> Option<String> {
    const RESERVED: &[&str] = &[
        "true",
        "false",
        "null",
        "in",
        "as",
        "break",
        "const",
        "continue",
        "else",
        "for",
        "function",
        "if",
        "import",
        "let",
        "loop",
        "package",
        "namespace",
        "return",
        "var",
        "void",
        "while",
    ];
    if RESERVED.contains(&name) {
        return Some(format!("__{name}__"));
    }
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        match c {
            '_' => out.push_str("__"),
            '.' => out.push_str("__dot__"),
            '-' => out.push_str("__dash__"),
            '/' => out.push_str("__slash__"),
            c if c.is_ascii_alphabetic() => out.push(c),
            c if c.is_ascii_digit() && i > 0 => out.push(c),
            _ => return None,
        }
    }
    Some(out)
}

/// The chain of selected fields below `self`/`oldSelf`, outermost last.
fn select_chain(expr: &kube_cel::cel::IdedExpr) -> Option<Vec<&str>> {
    use kube_cel::cel::common::ast::Expr;
    match &expr.expr {
        Expr::Ident(name) if name == "self" || name == "oldSelf" => Some(Vec::new()),
        Expr::Select(sel) => {
            let mut chain = select_chain(&sel.operand)?;
            chain.push(sel.field.as_str());
            Some(chain)
        }
        _ => None,
    }
}

/// Resolves a field chain against the schema the way the apiserver's CEL type checker does.
fn undefined_in_chain(node: &Node, resource_root: bool, chain: &[&str]) -> Option<String> {
    let (first, rest) = chain.split_first()?;
    if node.preserve_unknown || node.int_or_string || node.ty.is_none() {
        return None;
    }
    if node.ty.as_deref() != Some("object") {
        return Some(format!(
            "type '{}' does not support field selection",
            node.ty.as_deref().unwrap_or("")
        ));
    }
    if resource_root || node.embedded {
        match *first {
            "apiVersion" | "kind" => {
                return if rest.is_empty() {
                    None
                } else {
                    Some("type 'string' does not support field selection".into())
                };
            }
            "metadata" => {
                return match rest.first() {
                    None | Some(&"name") | Some(&"generateName") => None,
                    Some(f) => Some(format!("undefined field '{f}'")),
                };
            }
            _ => {}
        }
    }
    if let Some((_, child)) = node
        .properties
        .iter()
        .find(|(k, _)| escape(k).as_deref() == Some(*first))
    {
        return undefined_in_chain(child, false, rest);
    }
    match &node.additional {
        Some(Additional::Schema(s)) => undefined_in_chain(s, false, rest),
        Some(Additional::Bool(true)) => None,
        _ => Some(format!("undefined field '{first}'")),
    }
}

fn undefined_fields(
    expr: &kube_cel::cel::IdedExpr,
    node: &Node,
    resource_root: bool,
) -> Option<String> {
    use kube_cel::cel::common::ast::{EntryExpr, Expr};
    if let Some(e) =
        select_chain(expr).and_then(|chain| undefined_in_chain(node, resource_root, &chain))
    {
        return Some(e);
    }
    let children: Vec<&kube_cel::cel::IdedExpr> = match &expr.expr {
        Expr::Select(sel) => vec![&sel.operand],
        Expr::Call(call) => call
            .target
            .iter()
            .map(|t| &**t)
            .chain(call.args.iter())
            .collect(),
        Expr::Comprehension(c) => vec![
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ],
        Expr::List(l) => l.elements.iter().collect(),
        Expr::Map(m) => m
            .entries
            .iter()
            .flat_map(|e| match &e.expr {
                EntryExpr::MapEntry(me) => vec![&me.key, &me.value],
                EntryExpr::StructField(sf) => vec![&sf.value],
            })
            .collect(),
        Expr::Struct(s) => s
            .entries
            .iter()
            .flat_map(|e| match &e.expr {
                EntryExpr::MapEntry(me) => vec![&me.key, &me.value],
                EntryExpr::StructField(sf) => vec![&sf.value],
            })
            .collect(),
        _ => Vec::new(),
    };
    children
        .into_iter()
        .find_map(|c| undefined_fields(c, node, resource_root))
}

/// The apiserver's compile-time complaint about a rule referring to fields the schema
/// does not declare, if any.
pub(crate) fn check_fields(rule: &str, node: &Node, resource_root: bool) -> Option<String> {
    let program = kube_cel::cel::Program::compile(rule).ok()?;
    undefined_fields(program.expression(), node, resource_root)
}
