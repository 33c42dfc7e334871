//! `metadata.managedFields` bookkeeping and server-side apply.
//!
//! Field ownership is tracked per field path down through maps and through the items of
//! associative lists (`x-kubernetes-list-type: map`, keyed by `x-kubernetes-list-map-keys`,
//! and `metadata.ownerReferences` keyed by `uid`); every other list is atomic (owned as a
//! whole, as with `x-kubernetes-list-type: atomic`), and so are maps for which the list-keys
//! function answers `Some(vec![])` (`x-kubernetes-map-type: atomic`, `ObjectReference`s).
//! Sets (`x-kubernetes-list-type: set`, `metadata.finalizers`; the list-keys function
//! answers `Some(vec![SET.into()])`) are owned per value (`v:"..."`) and merged as unions.
//!
//! As structured-merge-diff does, a non-apply write also owns the maps and associative lists
//! it creates (`"."` in `FieldsV1`); an apply owns only its leaves and list items.

use serde_json::{Map, Value, json};
use std::collections::BTreeSet;

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Seg {
    /// A map key (`f:name` in FieldsV1).
    F(String),
    /// An item of an associative list, by its key fields as compact JSON (`k:{...}`).
    K(String),
    /// A value of a set, as compact JSON (`v:"..."`).
    V(String),
}

/// What the list-keys function answers for a set (`x-kubernetes-list-type: set`).
pub const SET: &str = "<set>";

/// A field path from the object's root.
pub type FieldPath = Vec<Seg>;

/// Returns the key fields of the associative list at a path, or `None` for atomic lists.
pub type ListKeys<'a> = &'a dyn Fn(&[Seg]) -> Option<Vec<String>>;

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// `manager`.
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// `apiVersion`.
    pub api_version: String,
    /// `time`.
    pub time: String,
    /// `subresource` ("" for the main resource).
    pub subresource: String,
    /// The owned paths (leaf fields and associative-list items).
    pub fields: BTreeSet<FieldPath>,
}

/// Which part of the object a write may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The whole object.
    All,
    /// Everything but `.status` (main resource of a kind with a status subresource).
    NoStatus,
    /// Only `.status`.
    StatusOnly,
}

const IGNORED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
];

fn field(p: &[Seg], i: usize) -> &str {
    match p.get(i) {
        Some(Seg::F(s)) => s,
        _ => "",
    }
}

fn in_scope(path: &FieldPath, scope: Scope) -> bool {
    let first = field(path, 0);
    if first == "apiVersion" || first == "kind" || (first == "metadata" && path.len() == 1) {
        return false;
    }
    if first == "metadata" && IGNORED_META.contains(&field(path, 1)) {
        return false;
    }
    match scope {
        Scope::All => true,
        Scope::NoStatus => first != "status",
        Scope::StatusOnly => first == "status",
    }
}

/// The key of an associative-list item, if it has every key field.
fn item_key(item: &Value, keys: &[String]) -> Option<String> {
    let mut m = Map::new();
    for k in keys {
        m.insert(k.clone(), item.get(k)?.clone());
    }
    Some(Value::Object(m).to_string())
}

/// The keys of the list at `path` if it is associative and every item carries its keys.
fn assoc_keys(arr: &[Value], path: &[Seg], keys: ListKeys<'_>) -> Option<Vec<String>> {
    let ks = keys(path).filter(|ks| !ks.is_empty())?;
    arr.iter().all(|i| item_key(i, &ks).is_some()).then_some(ks)
}

/// Whether the list at `path` is a set of scalars.
fn set_list(arr: &[Value], path: &[Seg], keys: ListKeys<'_>) -> bool {
    keys(path).is_some_and(|ks| ks == [SET]) && arr.iter().all(|i| !i.is_object() && !i.is_array())
}

/// Whether the map at `path` is atomic (owned and replaced as a whole).
fn atomic_map(path: &[Seg], keys: ListKeys<'_>) -> bool {
    keys(path).is_some_and(|ks| ks.is_empty())
}

/// Whether the value at `path` of `v` is a node: a granular map or an associative list with
/// something in it (not a leaf).
fn is_node_in(v: &Value, path: &[Seg], keys: ListKeys<'_>) -> bool {
    match value_at(v, path) {
        Some(Value::Object(m)) => !m.is_empty() && !atomic_map(path, keys),
        Some(Value::Array(a)) => {
            !a.is_empty() && (assoc_keys(a, path, keys).is_some() || set_list(a, path, keys))
        }
        _ => false,
    }
}

fn collect(
    v: &Value,
    prefix: &mut FieldPath,
    keys: ListKeys<'_>,
    nodes: bool,
    out: &mut BTreeSet<FieldPath>,
) {
    match v {
        Value::Object(m) if !m.is_empty() && !atomic_map(prefix, keys) => {
            if nodes && !prefix.is_empty() {
                out.insert(prefix.clone());
            }
            for (k, child) in m {
                prefix.push(Seg::F(k.clone()));
                collect(child, prefix, keys, nodes, out);
                prefix.pop();
            }
        }
        Value::Array(a) if !a.is_empty() && assoc_keys(a, prefix, keys).is_some() => {
            if nodes {
                out.insert(prefix.clone());
            }
            let ks = assoc_keys(a, prefix, keys).unwrap_or_default();
            for item in a {
                let Some(key) = item_key(item, &ks) else {
                    continue;
                };
                prefix.push(Seg::K(key));
                out.insert(prefix.clone());
                collect(item, prefix, keys, nodes, out);
                prefix.pop();
            }
        }
        Value::Array(a) if !a.is_empty() && set_list(a, prefix, keys) => {
            if nodes {
                out.insert(prefix.clone());
            }
            for item in a {
                prefix.push(Seg::V(item.to_string()));
                out.insert(prefix.clone());
                prefix.pop();
            }
        }
        // An empty associative list or set owns nothing (it has no items to own).
        Value::Array(a) if a.is_empty() && keys(prefix).is_some_and(|ks| !ks.is_empty()) => {}
        _ => {
            if !prefix.is_empty() {
                out.insert(prefix.clone());
            }
        }
    }
}

/// The owned paths set in `v` (leaves and associative-list items), restricted to `scope`:
/// what an apply configuration owns.
pub fn leaf_paths(v: &Value, scope: Scope, keys: ListKeys<'_>) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    collect(v, &mut Vec::new(), keys, false, &mut out);
    out.retain(|p| in_scope(p, scope));
    out
}

/// [`leaf_paths`] plus the nodes (granular maps and associative lists) that hold them.
fn all_paths(v: &Value, keys: ListKeys<'_>) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    collect(v, &mut Vec::new(), keys, true, &mut out);
    out.retain(|p| in_scope(p, Scope::All));
    out
}

/// Whether `paths` holds a path below `p`.
fn has_descendant(paths: &BTreeSet<FieldPath>, p: &FieldPath) -> bool {
    paths
        .range(p.clone()..)
        .find(|q| *q != p)
        .is_some_and(|q| q.starts_with(p))
}

fn find_item(arr: &[Value], key: &str) -> Option<usize> {
    let want: Map<String, Value> = serde_json::from_str(key).ok()?;
    arr.iter()
        .position(|i| want.iter().all(|(k, v)| i.get(k) == Some(v)))
}

fn find_value(arr: &[Value], value: &str) -> Option<usize> {
    let want: Value = serde_json::from_str(value).ok()?;
    arr.iter().position(|i| *i == want)
}

/// The value at `path`, if present.
pub fn value_at<'a>(v: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    let mut cur = v;
    for s in path {
        cur = match s {
            Seg::F(k) => cur.as_object()?.get(k)?,
            Seg::K(key) => {
                let a = cur.as_array()?;
                &a[find_item(a, key)?]
            }
            Seg::V(value) => {
                let a = cur.as_array()?;
                &a[find_value(a, value)?]
            }
        };
    }
    Some(cur)
}

fn remove_at(v: &mut Value, path: &[Seg]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for s in parents {
        let next = match s {
            Seg::F(k) => cur.as_object_mut().and_then(|m| m.get_mut(k)),
            Seg::K(key) => cur.as_array_mut().and_then(|a| {
                let i = find_item(a, key)?;
                a.get_mut(i)
            }),
            Seg::V(_) => None,
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last {
        Seg::F(k) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(k);
            }
        }
        Seg::K(key) => {
            if let Some(a) = cur.as_array_mut()
                && let Some(i) = find_item(a, key)
            {
                a.remove(i);
            }
        }
        Seg::V(value) => {
            if let Some(a) = cur.as_array_mut()
                && let Some(i) = find_value(a, value)
            {
                a.remove(i);
            }
        }
    }
}

/// After `removed` was dropped, drop the maps above it that it leaves empty and that nobody
/// owns (or owns anything below): as structured-merge-diff does, a map that only existed to
/// hold the removed fields goes with them instead of staying behind as `{}`. Stops at the
/// first ancestor that is kept, is not an empty map, or sits in a list item (an item is
/// owned by its key fields, so it is never left empty).
fn prune_empty_parents(object: &mut Value, removed: &[Seg], kept: &dyn Fn(&[Seg]) -> bool) {
    for len in (1..removed.len()).rev() {
        let parent = &removed[..len];
        if !matches!(parent.last(), Some(Seg::F(_)))
            || !value_at(object, parent).is_some_and(|v| v.as_object().is_some_and(Map::is_empty))
            || kept(parent)
        {
            return;
        }
        remove_at(object, parent);
    }
}

fn is_item(p: &[Seg]) -> bool {
    matches!(p.last(), Some(Seg::K(_) | Seg::V(_)))
}

/// Whether `outer` holds the value at `inner` (a prefix that is neither a list item nor the
/// associative list or set itself).
fn holds(outer: &[Seg], inner: &[Seg]) -> bool {
    inner.starts_with(outer)
        && !is_item(outer)
        && !matches!(inner.get(outer.len()), Some(Seg::K(_) | Seg::V(_)))
}

/// Whether two paths address overlapping values.
fn overlaps(a: &[Seg], b: &[Seg]) -> bool {
    holds(a, b) || holds(b, a)
}

/// Whether owning `owned` is affected by a write that sets or removes `at`: the owned path
/// is at or below `at`, or holds it.
fn affected(owned: &[Seg], at: &[Seg]) -> bool {
    owned.starts_with(at) || holds(owned, at)
}

/// Render a path like `.spec.replicas` or `.status.conditions[type="Ready"].status`.
pub fn dotted(p: &[Seg]) -> String {
    p.iter()
        .map(|s| match s {
            Seg::F(k) => format!(".{k}"),
            Seg::K(key) => {
                let m: Map<String, Value> = serde_json::from_str(key).unwrap_or_default();
                let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("[{}]", parts.join(","))
            }
            Seg::V(value) => format!("[={value}]"),
        })
        .collect()
}

fn seg_key(s: &Seg) -> String {
    match s {
        Seg::F(k) => format!("f:{k}"),
        Seg::K(k) => format!("k:{k}"),
        Seg::V(v) => format!("v:{v}"),
    }
}

fn insert_path(m: &mut Map<String, Value>, rest: &[Seg], item: bool) {
    match rest.split_first() {
        None => {
            if item {
                m.insert(".".into(), json!({}));
            }
        }
        Some((seg, rest)) => {
            let e = m
                .entry(seg_key(seg))
                .or_insert_with(|| Value::Object(Map::new()));
            if !e.is_object() {
                *e = Value::Object(Map::new());
            }
            if let Some(child) = e.as_object_mut() {
                insert_path(child, rest, item);
            }
        }
    }
}

/// Encode paths as `FieldsV1` (`"."` marks an owned item or node that has owned children).
pub fn to_fields_v1(paths: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for p in paths {
        insert_path(&mut root, p, has_descendant(paths, p));
    }
    Value::Object(root)
}

fn parse_v1(v: &Value, prefix: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    let Some(m) = v.as_object() else { return };
    let has_children = m.keys().any(|k| k != ".");
    if (!has_children || m.contains_key(".")) && !prefix.is_empty() {
        out.insert(prefix.clone());
    }
    for (k, child) in m {
        let seg = if let Some(name) = k.strip_prefix("f:") {
            Seg::F(name.to_string())
        } else if let Some(key) = k.strip_prefix("k:") {
            Seg::K(key.to_string())
        } else if let Some(value) = k.strip_prefix("v:") {
            Seg::V(value.to_string())
        } else {
            if k != "." && !prefix.is_empty() {
                out.insert(prefix.clone());
            }
            continue;
        };
        prefix.push(seg);
        parse_v1(child, prefix, out);
        prefix.pop();
    }
}

/// Decode `FieldsV1` into paths.
pub fn from_fields_v1(v: &Value) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    parse_v1(v, &mut Vec::new(), &mut out);
    out
}

/// Read the `managedFields` of an object.
pub fn entries_of(obj: &Value) -> Vec<Entry> {
    let Some(arr) = obj["metadata"]["managedFields"].as_array() else {
        return vec![];
    };
    arr.iter()
        .map(|e| Entry {
            manager: e["manager"].as_str().unwrap_or_default().into(),
            operation: e["operation"].as_str().unwrap_or("Update").into(),
            api_version: e["apiVersion"].as_str().unwrap_or_default().into(),
            time: e["time"].as_str().unwrap_or_default().into(),
            subresource: e["subresource"].as_str().unwrap_or_default().into(),
            fields: from_fields_v1(&e["fieldsV1"]),
        })
        .collect()
}

/// Render entries as a `managedFields` array, in the apiserver's order: `Apply` before
/// `Update`, then by time (an entry without one, as `/scale` writes make, first), manager,
/// apiVersion and subresource.
pub fn entries_to_value(entries: &[Entry]) -> Value {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by(|a, b| {
        (
            &a.operation,
            &a.time,
            &a.manager,
            &a.api_version,
            &a.subresource,
        )
            .cmp(&(
                &b.operation,
                &b.time,
                &b.manager,
                &b.api_version,
                &b.subresource,
            ))
    });
    Value::Array(
        sorted
            .into_iter()
            .map(|e| {
                let mut v = json!({
                    "manager": e.manager,
                    "operation": e.operation,
                    "apiVersion": e.api_version,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": to_fields_v1(&e.fields),
                });
                if !e.time.is_empty() {
                    v["time"] = json!(e.time);
                }
                if !e.subresource.is_empty() {
                    v["subresource"] = json!(e.subresource);
                }
                v
            })
            .collect(),
    )
}

/// What a non-apply write is, for [`track_update`].
pub struct UpdateArgs<'a> {
    /// The field manager.
    pub manager: &'a str,
    /// The request's apiVersion.
    pub api_version: &'a str,
    /// "" or "status".
    pub subresource: &'a str,
    /// The current time (RFC 3339).
    pub now: &'a str,
    /// Associative-list keys.
    pub keys: ListKeys<'a>,
}

/// Record a non-apply write: the manager takes the fields it changed from everyone else.
pub fn track_update(
    mut entries: Vec<Entry>,
    old: Option<&Value>,
    new: &Value,
    a: &UpdateArgs<'_>,
) -> Vec<Entry> {
    let new_paths = all_paths(new, a.keys);
    let old_paths = old.map(|o| all_paths(o, a.keys)).unwrap_or_default();
    let node = |p: &FieldPath| has_descendant(&new_paths, p);
    // Items and nodes are owned by whoever creates them; leaves by whoever changes them.
    let changed: BTreeSet<FieldPath> = new_paths
        .iter()
        .filter(|p| {
            if is_item(p) || node(p) {
                !old_paths.contains(*p)
            } else {
                old.and_then(|o| value_at(o, p)) != value_at(new, p)
            }
        })
        .cloned()
        .collect();
    let changed_leaves: Vec<&FieldPath> =
        changed.iter().filter(|c| !is_item(c) && !node(c)).collect();
    let removed: Vec<&FieldPath> = old_paths.difference(&new_paths).collect();
    for e in entries.iter_mut() {
        e.fields.retain(|f| {
            !changed.contains(f)
                && (is_item(f) || node(f) || !changed_leaves.iter().any(|c| overlaps(c, f)))
                && !removed.iter().any(|r| f.starts_with(r))
        });
    }
    if !changed.is_empty() {
        match entries.iter_mut().find(|e| {
            e.manager == a.manager && e.operation == "Update" && e.subresource == a.subresource
        }) {
            Some(e) => {
                e.fields.extend(changed);
                e.time = a.now.to_string();
                e.api_version = a.api_version.to_string();
            }
            None => entries.push(Entry {
                manager: a.manager.into(),
                operation: "Update".into(),
                api_version: a.api_version.into(),
                time: a.now.into(),
                subresource: a.subresource.into(),
                fields: changed,
            }),
        }
    }
    entries.retain(|e| !e.fields.is_empty());
    entries
}

/// A field owned by another manager that an apply would change.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    /// The other manager.
    pub manager: String,
    /// Its operation (`Apply` or `Update`).
    pub operation: String,
    /// Its subresource ("" for the main resource).
    pub subresource: String,
    /// Its apiVersion.
    pub api_version: String,
    /// The contested field, e.g. `.spec.replicas`.
    pub field: String,
    /// The contested field as a path.
    pub path: FieldPath,
}

/// structured-merge-diff's iteration order of a field set: at each level the fields set
/// there come before the ones further down, each group in element order.
fn smd_order(a: &[Seg], b: &[Seg]) -> std::cmp::Ordering {
    let k = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let member = |p: &[Seg]| p.len() == k + 1;
    match (a.len() == k, b.len() == k) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        (false, false) => member(b).cmp(&member(a)).then_with(|| a[k].cmp(&b[k])),
    }
}

impl Conflict {
    /// The other manager as the apiserver names it: `"m"` for an apply, `"m" using v1` for
    /// an update, with ` with subresource "status"` after the name when it wrote one.
    fn manager_text(&self) -> String {
        let mut text = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            text.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == "Update" {
            text.push_str(&format!(" using {}", self.api_version));
        }
        text
    }
}

/// The result of a server-side apply: the merged object and its new managed fields.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The object after the apply.
    pub object: Value,
    /// The new managed fields.
    pub entries: Vec<Entry>,
}

/// Parameters of one apply.
pub struct ApplyArgs<'a> {
    /// The field manager.
    pub manager: &'a str,
    /// `force=true`.
    pub force: bool,
    /// Which part of the object the request addresses.
    pub scope: Scope,
    /// "" or "status".
    pub subresource: &'a str,
    /// The request's apiVersion.
    pub api_version: &'a str,
    /// The current time (RFC 3339).
    pub now: &'a str,
    /// Associative-list keys.
    pub keys: ListKeys<'a>,
}

/// Merge an apply configuration into `live`: maps recursively, associative lists by key,
/// everything else (and atomic maps) replaced; `null` removes a field.
fn merge(live: &mut Value, cfg: &Value, path: &mut FieldPath, keys: ListKeys<'_>) {
    match (live, cfg) {
        (l @ Value::Object(_), Value::Object(_)) if atomic_map(path, keys) => *l = cfg.clone(),
        (Value::Object(l), Value::Object(c)) => {
            for (k, cv) in c {
                if cv.is_null() {
                    l.remove(k);
                    continue;
                }
                path.push(Seg::F(k.clone()));
                match l.get_mut(k) {
                    Some(lv) => merge(lv, cv, path, keys),
                    None => {
                        l.insert(k.clone(), cv.clone());
                    }
                }
                path.pop();
            }
        }
        (Value::Array(l), Value::Array(c))
            if assoc_keys(c, path, keys).is_some() && assoc_keys(l, path, keys).is_some() =>
        {
            let ks = assoc_keys(c, path, keys).unwrap_or_default();
            let key_of = |i: &Value| item_key(i, &ks).unwrap_or_default();
            let live_keys: Vec<String> = l.iter().map(key_of).collect();
            let cfg_keys: Vec<String> = c.iter().map(key_of).collect();
            let mut out = Vec::with_capacity(l.len().max(c.len()));
            for pick in merged_order(&live_keys, &cfg_keys) {
                match pick {
                    Pick::Live(i) => out.push(l[i].clone()),
                    Pick::Applied(i) => match live_keys.iter().position(|k| *k == cfg_keys[i]) {
                        Some(j) => {
                            let mut item = l[j].clone();
                            path.push(Seg::K(cfg_keys[i].clone()));
                            merge(&mut item, &c[i], path, keys);
                            path.pop();
                            out.push(item);
                        }
                        None => out.push(c[i].clone()),
                    },
                }
            }
            *l = out;
        }
        (Value::Array(l), Value::Array(c))
            if set_list(c, path, keys) && set_list(l, path, keys) =>
        {
            let live_keys: Vec<String> = l.iter().map(Value::to_string).collect();
            let cfg_keys: Vec<String> = c.iter().map(Value::to_string).collect();
            *l = merged_order(&live_keys, &cfg_keys)
                .into_iter()
                .map(|pick| match pick {
                    Pick::Live(i) => l[i].clone(),
                    Pick::Applied(i) => c[i].clone(),
                })
                .collect();
        }
        (l, c) => *l = c.clone(),
    }
}

/// Where an item of a merged associative list or set comes from.
#[derive(Debug, PartialEq, Eq)]
enum Pick {
    /// The live item at this index, which the configuration does not name.
    Live(usize),
    /// The configuration's item at this index (merged into its live match, if any).
    Applied(usize),
}

/// The item order of a merged associative list, as structured-merge-diff lays it out:
/// the configuration's items in the configuration's order, and live items the
/// configuration does not name kept where they stood among them. When the
/// configuration names every live item, the result is the configuration's order.
fn merged_order(live: &[String], cfg: &[String]) -> Vec<Pick> {
    use std::collections::HashSet;
    let in_cfg: HashSet<&str> = cfg.iter().map(String::as_str).collect();
    let in_live: HashSet<&str> = live.iter().map(String::as_str).collect();
    let mut shared = cfg
        .iter()
        .filter(|k| in_live.contains(k.as_str()))
        .peekable();
    let mut taken: HashSet<&str> = HashSet::new();
    let mut out = Vec::with_capacity(live.len().max(cfg.len()));
    let (mut li, mut ri) = (0, 0);
    while li < live.len() || ri < cfg.len() {
        if li < live.len() && ri < cfg.len() {
            let next_shared_elsewhere = shared.peek().is_some_and(|n| **n != live[li]);
            if live[li] == cfg[ri] || (in_cfg.contains(live[li].as_str()) && next_shared_elsewhere)
            {
                if live[li] == cfg[ri] {
                    li += 1;
                }
                if shared.peek().is_some_and(|n| **n == cfg[ri]) {
                    shared.next();
                }
                taken.insert(&cfg[ri]);
                out.push(Pick::Applied(ri));
                ri += 1;
                continue;
            }
        }
        if li < live.len() {
            if !in_cfg.contains(live[li].as_str()) {
                out.push(Pick::Live(li));
                li += 1;
                continue;
            }
            if taken.contains(live[li].as_str()) {
                li += 1;
                continue;
            }
        }
        if ri < cfg.len() {
            if shared.peek().is_some_and(|n| **n == cfg[ri]) {
                shared.next();
            }
            taken.insert(&cfg[ri]);
            out.push(Pick::Applied(ri));
            ri += 1;
        }
    }
    out
}

/// Server-side apply of `config` onto `live` (an empty object when creating).
pub fn apply(live: &Value, config: &Value, a: &ApplyArgs<'_>) -> Result<Applied, Vec<Conflict>> {
    let mut entries = entries_of(live);
    let applied_set = leaf_paths(config, a.scope, a.keys);
    let mine = |e: &Entry| {
        e.manager == a.manager && e.operation == "Apply" && e.subresource == a.subresource
    };
    let mut conflicts = Vec::new();
    let mut stolen: Vec<(usize, FieldPath)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if mine(e) {
            continue;
        }
        // A map or list another manager created is not contested by setting what is in it.
        for q in e
            .fields
            .iter()
            .filter(|q| !is_item(q) && !is_node_in(live, q, a.keys))
        {
            for p in applied_set.iter().filter(|p| !is_item(p)) {
                if overlaps(p, q) && value_at(config, p) != value_at(live, p) {
                    let field = if q.len() >= p.len() { q } else { p };
                    conflicts.push(Conflict {
                        manager: e.manager.clone(),
                        operation: e.operation.clone(),
                        subresource: e.subresource.clone(),
                        api_version: e.api_version.clone(),
                        field: dotted(field),
                        path: field.clone(),
                    });
                    stolen.push((i, q.clone()));
                    break;
                }
            }
        }
    }
    if !conflicts.is_empty() && !a.force {
        return Err(conflicts);
    }
    for (i, q) in stolen {
        entries[i].fields.remove(&q);
    }
    let previous: BTreeSet<FieldPath> = entries
        .iter()
        .find(|e| mine(e))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let mut patch = config.clone();
    if let Some(m) = patch.as_object_mut() {
        match a.scope {
            Scope::NoStatus => {
                m.remove("status");
            }
            Scope::StatusOnly => m.retain(|k, _| k == "status"),
            Scope::All => {}
        }
    }
    let mut object = live.clone();
    merge(&mut object, &patch, &mut Vec::new(), a.keys);
    let object_before = object.clone();
    let mut gone: Vec<&FieldPath> = previous.difference(&applied_set).collect();
    gone.sort_by_key(|p| p.len());
    // Owning a map someone created does not keep the fields in it.
    let kept = |r: &[Seg]| {
        applied_set.iter().any(|p| affected(p, r))
            || entries.iter().filter(|e| !mine(e)).any(|e| {
                e.fields.iter().any(|f| {
                    f.starts_with(r) || (holds(f, r) && !is_node_in(&object_before, f, a.keys))
                })
            })
    };
    for r in gone {
        if kept(r) {
            continue;
        }
        remove_at(&mut object, r);
        prune_empty_parents(&mut object, r, &kept);
    }
    // As the apiserver: an apply that changes nothing in the object records no new time
    // (a new manager's entry then has none).
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("managedFields");
        }
        v
    };
    let now = if strip(&object) == strip(live) {
        ""
    } else {
        a.now
    };
    match entries.iter().position(mine) {
        Some(i) => {
            if !now.is_empty() {
                entries[i].time = now.to_string();
            }
            entries[i].fields = applied_set;
            entries[i].api_version = a.api_version.to_string();
        }
        None => entries.push(Entry {
            manager: a.manager.into(),
            operation: "Apply".into(),
            api_version: a.api_version.into(),
            time: now.into(),
            subresource: a.subresource.into(),
            fields: applied_set,
        }),
    }
    entries.retain(|e| !e.fields.is_empty());
    Ok(Applied { object, entries })
}

/// The 409 `Status` for apply conflicts, in the apiserver's wording: one conflict inline,
/// several grouped by manager (managers sorted, `- path` lines).
pub fn conflict_status(conflicts: &[Conflict]) -> crate::error::ApiError {
    let n = conflicts.len();
    let message = if n == 1 {
        let c = &conflicts[0];
        format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            c.manager_text(),
            c.field
        )
    } else {
        let mut by_manager: std::collections::BTreeMap<String, Vec<&Conflict>> = Default::default();
        for c in conflicts {
            by_manager.entry(c.manager_text()).or_default().push(c);
        }
        let mut lines = Vec::new();
        for (manager, mut cs) in by_manager {
            cs.sort_by(|a, b| smd_order(&a.path, &b.path));
            lines.push(format!("conflicts with {manager}:"));
            lines.extend(cs.into_iter().map(|c| format!("- {}", c.field)));
        }
        format!("Apply failed with {n} conflicts: {}", lines.join("\n"))
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| {
            json!({
                "reason": "FieldManagerConflict",
                "message": format!("conflict with {}", c.manager_text()),
                "field": c.field,
            })
        })
        .collect();
    let mut e = crate::error::ApiError::new(409, "Conflict", message);
    e.details = json!({ "causes": causes });
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_keys(_: &[Seg]) -> Option<Vec<String>> {
        None
    }

    fn cond_keys(p: &[Seg]) -> Option<Vec<String>> {
        (p == [Seg::F("status".into()), Seg::F("conditions".into())])
            .then(|| vec!["type".to_string()])
    }

    fn args<'a>(m: &'a str, force: bool, keys: ListKeys<'a>) -> ApplyArgs<'a> {
        ApplyArgs {
            manager: m,
            force,
            scope: Scope::All,
            subresource: "",
            api_version: "v1",
            now: "t",
            keys,
        }
    }

    fn with_entries(a: &Applied) -> Value {
        let mut o = a.object.clone();
        o["metadata"]["managedFields"] = entries_to_value(&a.entries);
        o
    }

    fn keys(ks: &[&str]) -> Vec<String> {
        ks.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn merged_lists_take_the_applied_order() {
        use Pick::{Applied, Live};
        let order = merged_order(&keys(&["P", "R"]), &keys(&["D", "P", "R"]));
        assert_eq!(order, [Applied(0), Applied(1), Applied(2)]);
        let order = merged_order(&keys(&["R", "D", "P"]), &keys(&["D", "P", "R"]));
        assert_eq!(order, [Applied(0), Applied(1), Applied(2)]);
        let order = merged_order(&keys(&["x", "P", "y", "R"]), &keys(&["R", "P"]));
        assert_eq!(order, [Live(0), Applied(0), Applied(1), Live(2)]);
        assert_eq!(merged_order(&keys(&["a"]), &[]), [Live(0)]);
    }

    #[test]
    fn applying_a_full_condition_list_reorders_it_as_applied() {
        let base = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "n"}});
        let cond = |t: &str| json!({"type": t, "status": "True"});
        let first = apply(
            &base,
            &json!({"status": {"conditions": [cond("Progressing"), cond("Ready")]}}),
            &args("op", false, &cond_keys),
        )
        .unwrap();
        let second = apply(
            &with_entries(&first),
            &json!({"status": {"conditions": [cond("Degraded"), cond("Progressing"), cond("Ready")]}}),
            &args("op", false, &cond_keys),
        )
        .unwrap();
        let types: Vec<&str> = second.object["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["Degraded", "Progressing", "Ready"]);
    }

    #[test]
    fn fields_v1_roundtrip() {
        let v = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"x": 1, "y": {"z": [1]}},
                       "status": {"conditions": [{"type": "A", "status": "True"}]}});
        let p = leaf_paths(&v, Scope::All, &cond_keys);
        assert_eq!(from_fields_v1(&to_fields_v1(&p)), p);
        assert_eq!(p.len(), 6);
        assert_eq!(
            to_fields_v1(&p)["f:status"]["f:conditions"]["k:{\"type\":\"A\"}"]["."],
            json!({})
        );
    }

    #[test]
    fn apply_conflicts_and_removal() {
        let base = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "n"}});
        let a1 = apply(
            &base,
            &json!({"spec": {"a": 1, "b": 2}}),
            &args("one", false, &no_keys),
        )
        .unwrap();
        let o = with_entries(&a1);
        let err = apply(
            &o,
            &json!({"spec": {"a": 5}}),
            &args("two", false, &no_keys),
        )
        .unwrap_err();
        assert_eq!(err[0].field, ".spec.a");
        let same = apply(
            &o,
            &json!({"spec": {"a": 1}}),
            &args("two", false, &no_keys),
        )
        .unwrap();
        assert_eq!(same.entries.len(), 2);
        let a2 = apply(
            &o,
            &json!({"spec": {"a": 1}}),
            &args("one", false, &no_keys),
        )
        .unwrap();
        assert_eq!(a2.object["spec"], json!({"a": 1}));
    }

    #[test]
    fn dropping_every_child_removes_the_parent_map() {
        let base = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "n"}});
        let failed =
            json!({"status": {"task": {"phase": "F", "err": {"reason": "r", "message": "m"}}}});
        let a1 = apply(&base, &failed, &args("ctrl", false, &no_keys)).unwrap();
        let again = json!({"status": {"task": {"phase": "R"}}});
        let a2 = apply(&with_entries(&a1), &again, &args("ctrl", false, &no_keys)).unwrap();
        assert_eq!(a2.object["status"], json!({"task": {"phase": "R"}}));

        let other = json!({"status": {"task": {"phase": "R"}}});
        let b1 = apply(&with_entries(&a1), &other, &args("other", true, &no_keys)).unwrap();
        let b2 = apply(
            &with_entries(&b1),
            &json!({"status": {"done": true}}),
            &args("ctrl", false, &no_keys),
        )
        .unwrap();
        assert_eq!(
            b2.object["status"],
            json!({"task": {"phase": "R"}, "done": true}),
            "the map another manager has fields in stays, the one only ctrl filled goes"
        );
    }

    #[test]
    fn associative_lists_merge_by_key() {
        let base = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "n"}});
        let one = json!({"status": {"conditions": [{"type": "A", "status": "True"}]}});
        let two = json!({"status": {"conditions": [{"type": "B", "status": "False"}]}});
        let a1 = apply(&base, &one, &args("one", false, &cond_keys)).unwrap();
        let a2 = apply(&with_entries(&a1), &two, &args("two", false, &cond_keys)).unwrap();
        assert_eq!(
            a2.object["status"]["conditions"].as_array().unwrap().len(),
            2
        );
        let clash = json!({"status": {"conditions": [{"type": "A", "status": "False"}]}});
        let err = apply(&with_entries(&a2), &clash, &args("two", false, &cond_keys)).unwrap_err();
        assert_eq!(err[0].field, ".status.conditions[type=\"A\"].status");
        let a3 = apply(
            &with_entries(&a2),
            &json!({"status": {"conditions": []}}),
            &args("one", false, &cond_keys),
        )
        .unwrap();
        let conds = a3.object["status"]["conditions"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(conds, vec![json!({"type": "B", "status": "False"})]);
    }
}
