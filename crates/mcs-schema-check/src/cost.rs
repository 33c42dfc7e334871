//! Static cost estimation of `x-kubernetes-validations` rules, as the apiserver does it before
//! accepting a CRD.
//!
//! The apiserver estimates each rule's worst-case cost from the schema: every list, map and
//! string the rule traverses is assumed to be as large as `maxItems`, `maxProperties` or
//! `maxLength` allow, or, without a bound, as large as fits in a request (3 MiB). A rule whose
//! estimate exceeds the per-rule budget (1,000,000) is rejected at CRD creation.
//!
//! Two sources of warnings are combined:
//!
//! * `kube_cel::analyze_rule`: its `CostExceeded` warnings are reported as they are.
//! * Its `MissingBounds` warnings are not reported directly: they fire whenever the rule's
//!   outermost expression is a macro and *any* list among the node's properties lacks
//!   `maxItems`, even one the rule never touches, and they miss a macro on the node itself
//!   (`self.all(...)` on a list) or one nested inside `&&`. Instead, every macro's range and
//!   every string function's target is resolved here to the schema node it traverses, and
//!   the estimate uses that node's bound, or the request-size worst case without one. An
//!   unbounded collection only shows up when it is actually iterated, which is exactly when
//!   it inflates the rule's cost past the budget.
//!
//! Not modelled: `messageExpression` costs, the per-CRD total budget, functions whose cost
//! grows with an argument other than the receiver string, and the size-proportional cost of
//! `==` on strings, lists and objects (at 0.1 per byte, even a request-sized operand stays
//! well under the budget on its own).

use std::collections::HashMap;

use kube_cel::cel::IdedExpr;
use kube_cel::cel::common::ast::{EntryExpr, Expr};
use kube_cel::{ScopeContext, WarningKind, analyze_rule, compile_schema};

use crate::cel::escape;
use crate::schema::{Additional, Node};

/// The apiserver's per-rule cost limit (`PerCallLimit`).
pub(crate) const RULE_BUDGET: u64 = 1_000_000;
/// The largest request the apiserver accepts, which bounds unbounded collections and strings.
const MAX_REQUEST_BYTES: u64 = 3 * 1024 * 1024;
/// The smallest serialized list item or map entry the worst case assumes (e.g. `"",`).
const MIN_ELEMENT_BYTES: u64 = 2;
/// The size assumed for a collection the estimate cannot relate to the schema.
const UNKNOWN_SIZE: u64 = 1000;
/// The cost per character of a string traversal (`StringTraversalCostFactor`).
const STRING_TRAVERSAL_FACTOR: f64 = 0.1;

/// One rule's cost estimate.
struct Estimate<'a> {
    cost: u64,
    /// The unbounded collections and strings the rule traverses, e.g. `self.items (no maxItems)`.
    unbounded: Vec<String>,
    vars: HashMap<String, (Option<&'a Node>, String)>,
}

/// A rule's cost warnings: the rule's schema path, the rule and the estimate in each.
pub(crate) fn rule_warnings(node: &Node, rule: &str, rule_path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(program) = kube_cel::cel::Program::compile(rule) else {
        return out;
    };
    let mut est = Estimate {
        cost: 0,
        unbounded: Vec::new(),
        vars: HashMap::new(),
    };
    est.cost = est.expr(program.expression(), node);
    if est.cost > RULE_BUDGET {
        est.unbounded.dedup();
        let why = if est.unbounded.is_empty() {
            String::new()
        } else {
            format!(
                "; schema bounds missing on what it traverses: {}",
                est.unbounded.join(", ")
            )
        };
        out.push(format!(
            "{rule_path}: rule `{rule}`: estimated cost {} exceeds the per-rule budget \
             {RULE_BUDGET}{why}",
            est.cost
        ));
        return out;
    }
    let compiled = compile_schema(&node.raw);
    for w in analyze_rule(rule, &compiled, ScopeContext::CrdValidation) {
        if w.kind == WarningKind::CostExceeded {
            out.push(format!("{rule_path}: rule `{rule}`: {}", w.message));
        }
    }
    out
}

fn is_string_traversal(func: &str) -> bool {
    matches!(
        func,
        "contains"
            | "startsWith"
            | "endsWith"
            | "matches"
            | "find"
            | "findAll"
            | "replace"
            | "split"
            | "indexOf"
            | "lastIndexOf"
            | "lowerAscii"
            | "upperAscii"
            | "trim"
    )
}

impl<'a> Estimate<'a> {
    /// The schema node an expression denotes (a field chain from `self`/`oldSelf` or from a
    /// macro variable), with its rendering for messages.
    fn resolve(&self, expr: &IdedExpr, node: &'a Node) -> Option<(&'a Node, String)> {
        match &expr.expr {
            Expr::Ident(name) if name == "self" || name == "oldSelf" => Some((node, name.clone())),
            Expr::Ident(name) => match self.vars.get(name) {
                Some((Some(n), text)) => Some((*n, text.clone())),
                _ => None,
            },
            Expr::Select(sel) => {
                let (parent, text) = self.resolve(&sel.operand, node)?;
                let text = format!("{text}.{}", sel.field);
                if let Some((_, child)) = parent
                    .properties
                    .iter()
                    .find(|(k, _)| escape(k).as_deref() == Some(sel.field.as_str()))
                {
                    return Some((child, text));
                }
                match &parent.additional {
                    Some(Additional::Schema(s)) => Some((s, text)),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// How many elements a macro iterates over, and what its variable denotes.
    fn range(&mut self, expr: &IdedExpr, node: &'a Node) -> (u64, Option<&'a Node>, String) {
        if let Expr::List(l) = &expr.expr {
            return (l.elements.len() as u64, None, String::new());
        }
        if let Expr::Comprehension(c) = &expr.expr {
            // The result of map()/filter() is no larger than what they iterate over.
            return self.range(&c.iter_range, node);
        }
        let Some((n, text)) = self.resolve(expr, node) else {
            return (UNKNOWN_SIZE, None, String::new());
        };
        let unbounded = MAX_REQUEST_BYTES / MIN_ELEMENT_BYTES;
        if n.ty.as_deref() == Some("array") {
            let size = match n.max_items {
                Some(m) => u64::try_from(m).unwrap_or(0),
                None => {
                    self.unbounded.push(format!("{text} (no maxItems)"));
                    unbounded
                }
            };
            return (size, n.items.as_deref(), format!("{text}[*]"));
        }
        if matches!(
            n.additional,
            Some(Additional::Schema(_)) | Some(Additional::Bool(true))
        ) {
            let size = match n.max_properties {
                Some(m) => u64::try_from(m).unwrap_or(0),
                None => {
                    self.unbounded.push(format!("{text} (no maxProperties)"));
                    unbounded
                }
            };
            return (size, None, String::new());
        }
        (UNKNOWN_SIZE, None, String::new())
    }

    /// The estimated length of a string the expression denotes.
    fn string_len(&mut self, expr: &IdedExpr, node: &'a Node) -> u64 {
        match self.resolve(expr, node) {
            Some((n, text)) if n.ty.as_deref() == Some("string") => match n.max_length {
                Some(m) => u64::try_from(m).unwrap_or(0),
                None => {
                    self.unbounded.push(format!("{text} (no maxLength)"));
                    MAX_REQUEST_BYTES
                }
            },
            _ => UNKNOWN_SIZE,
        }
    }

    fn expr(&mut self, expr: &IdedExpr, node: &'a Node) -> u64 {
        match &expr.expr {
            Expr::Comprehension(c) => {
                let range_cost = self.expr(&c.iter_range, node);
                let (size, var_node, var_text) = self.range(&c.iter_range, node);
                let init = self.expr(&c.accu_init, node);
                let saved = self.vars.insert(c.iter_var.clone(), (var_node, var_text));
                let step = self.expr(&c.loop_cond, node) + self.expr(&c.loop_step, node) + 1;
                let result = self.expr(&c.result, node);
                match saved {
                    Some(v) => self.vars.insert(c.iter_var.clone(), v),
                    None => self.vars.remove(&c.iter_var),
                };
                range_cost
                    .saturating_add(init)
                    .saturating_add(size.saturating_mul(step))
                    .saturating_add(result)
            }
            Expr::Call(call) => {
                let mut cost = 1u64;
                if let Some(t) = &call.target {
                    cost = cost.saturating_add(self.expr(t, node));
                    if is_string_traversal(&call.func_name) {
                        let len = self.string_len(t, node);
                        cost = cost.saturating_add((len as f64 * STRING_TRAVERSAL_FACTOR) as u64);
                    }
                }
                for a in &call.args {
                    cost = cost.saturating_add(self.expr(a, node));
                }
                cost
            }
            Expr::Select(sel) => 1 + self.expr(&sel.operand, node),
            Expr::List(l) => l
                .elements
                .iter()
                .map(|e| self.expr(e, node))
                .fold(1, u64::saturating_add),
            Expr::Map(m) => m
                .entries
                .iter()
                .map(|e| match &e.expr {
                    EntryExpr::MapEntry(me) => self
                        .expr(&me.key, node)
                        .saturating_add(self.expr(&me.value, node)),
                    EntryExpr::StructField(sf) => self.expr(&sf.value, node),
                })
                .fold(1, u64::saturating_add),
            _ => 1,
        }
    }
}

/// Every rule's cost warnings below `node`, whose schema path is `schema_path`.
pub(crate) fn tree_warnings(node: &Node, schema_path: &str, out: &mut Vec<String>) {
    for (i, spec) in node.rules.iter().enumerate() {
        let rule_path = format!("{schema_path}.x-kubernetes-validations[{i}]");
        out.extend(rule_warnings(node, &spec.rule, &rule_path));
    }
    for (k, child) in &node.properties {
        tree_warnings(child, &format!("{schema_path}.properties[{k}]"), out);
    }
    if let Some(Additional::Schema(child)) = &node.additional {
        tree_warnings(child, &format!("{schema_path}.additionalProperties"), out);
    }
    if let Some(child) = &node.items {
        tree_warnings(child, &format!("{schema_path}.items"), out);
    }
}
