//! Provisioning scheme version history: the `Set-ProvScheme` semantics as a pure model.
//!
//! Every change of a scheme's *configuration* (its spec minus `machineCount`, `updateWindow`,
//! `maxVersions` and `deletionPolicy`) makes a new version numbered `highest ever + 1`; numbers
//! are never reused, even after the highest version was pruned. When the configuration equals a
//! stored earlier version `N`, the current version becomes `N` again and no number is made (the
//! SDK's `Set-ProvScheme -Version N`). At most `maxVersions` versions are kept; the oldest are
//! pruned, never the current one nor one a machine still references.
//!
//! Configurations are compared by [`content_hash`]. The controller reads the stored versions
//! into a [`History`], asks it for a [`Plan`] with [`History::plan`], performs the plan (creates
//! the new version object, deletes the pruned ones) and records the result with
//! [`History::apply`]. Nothing here performs I/O; the caller passes the current time in.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::Reason;

/// The smallest allowed `maxVersions`.
pub const MIN_MAX_VERSIONS: u32 = 1;
/// The largest allowed `maxVersions` (the SDK's limit).
pub const MAX_MAX_VERSIONS: u32 = 32000;
/// The `maxVersions` used when the scheme does not set one.
pub const DEFAULT_MAX_VERSIONS: u32 = 99;

/// The prefix of every [`content_hash`].
pub const HASH_PREFIX: &str = "sha256:";

/// How many changes [`summarize`] lists before it only counts the rest.
const SUMMARY_MAX_ENTRIES: usize = 5;
/// The longest string value [`summarize`] shows verbatim; longer ones are reported as changed.
const SUMMARY_MAX_STRING: usize = 32;

/// Errors of the version history model.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// `maxVersions` is outside `1..=32000`.
    #[error(
        "spec.maxVersions is {max_versions}, but the number of kept provisioning scheme versions must be in the range 1..=32000"
    )]
    InvalidProvisioningSchemeVersionMaximum {
        /// The rejected value.
        max_versions: u32,
    },
    /// After the change more than `maxVersions` versions would remain, and not enough older
    /// versions can be pruned because they are current or still referenced by machines.
    #[error(
        "the change would keep {would_keep} provisioning scheme versions but spec.maxVersions is {max_versions}; older versions could not be pruned (current version {current}{})",
        blocked_suffix(.referenced)
    )]
    ProvisioningSchemeVersionMaximumExceeded {
        /// The configured maximum.
        max_versions: u32,
        /// How many versions would remain after pruning everything that may be pruned.
        would_keep: usize,
        /// The version that would be current after the change.
        current: u32,
        /// Stored versions that cannot be pruned because machines still reference them.
        referenced: Vec<u32>,
    },
    /// Every version number up to `u32::MAX` has been used; no new version can be made.
    #[error(
        "provisioning scheme version numbers are exhausted: version {highest} was the last one"
    )]
    VersionNumbersExhausted {
        /// The highest number ever used.
        highest: u32,
    },
    /// The stored history holds the same version number twice.
    #[error("provisioning scheme version {number} is stored more than once")]
    DuplicateVersion {
        /// The duplicated number.
        number: u32,
    },
    /// [`History::apply`] was called with a plan computed from a different history.
    #[error(
        "the version plan was computed from a different history (current {planned_current:?}, highest {planned_highest}) than the one it is applied to (current {actual_current:?}, highest {actual_highest}); plan again"
    )]
    StalePlan {
        /// The current version the plan was computed from.
        planned_current: Option<u32>,
        /// The highest number the plan was computed from.
        planned_highest: u32,
        /// The current version of the history it was applied to.
        actual_current: Option<u32>,
        /// The highest number of the history it was applied to.
        actual_highest: u32,
    },
}

/// Formats the "referenced versions" part of the maximum-exceeded message.
fn blocked_suffix(referenced: &[u32]) -> String {
    if referenced.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = referenced.iter().map(u32::to_string).collect();
        format!(
            "; versions still referenced by machines: {}",
            list.join(", ")
        )
    }
}

impl Reason for HistoryError {
    fn reason(&self) -> &'static str {
        match self {
            Self::InvalidProvisioningSchemeVersionMaximum { .. } => {
                "InvalidProvisioningSchemeVersionMaximum"
            }
            Self::ProvisioningSchemeVersionMaximumExceeded { .. } => {
                "ProvisioningSchemeVersionMaximumExceeded"
            }
            Self::VersionNumbersExhausted { .. } => "ProvisioningSchemeVersionNumbersExhausted",
            Self::DuplicateVersion { .. } => "DuplicateProvisioningSchemeVersion",
            Self::StalePlan { .. } => "StaleProvisioningSchemeVersionPlan",
        }
    }
}

/// Checks that `max_versions` is in the SDK's range `1..=32000`.
pub fn validate_max_versions(max_versions: u32) -> Result<(), HistoryError> {
    if (MIN_MAX_VERSIONS..=MAX_MAX_VERSIONS).contains(&max_versions) {
        Ok(())
    } else {
        Err(HistoryError::InvalidProvisioningSchemeVersionMaximum { max_versions })
    }
}

/// Returns `value` with every `null` object member removed, recursively.
///
/// A `null` member and an absent member mean the same configuration, so they must hash equal.
/// `null` array *elements* are kept, because removing them would shift the positions of the
/// elements after them.
pub fn strip_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

/// The canonical JSON text of `value`: object keys sorted (by their UTF-8 bytes) at every
/// level, no whitespace.
///
/// The key order of the input never matters. Values are otherwise written as they are: `null`
/// members are kept (see [`content_hash`], which strips them first), and numbers keep their
/// form (`1` and `1.0` are different texts), so callers must serialize configurations from the
/// same typed struct.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

/// Appends the canonical form of `value` to `out`.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => write_json_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let sorted: BTreeMap<&String, &Value> = map.iter().collect();
            out.push('{');
            for (i, (k, v)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_string(k, out);
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
    }
}

/// Appends `s` as a JSON string literal, escaped exactly as `serde_json` escapes it.
fn write_json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The content hash of a scheme configuration: `"sha256:"` followed by the lowercase hex
/// SHA-256 of the [`canonical_json`] of the configuration with its `null` members stripped
/// ([`strip_nulls`]).
///
/// The controller passes the scheme's *configuration*: its spec minus `machineCount`,
/// `updateWindow`, `maxVersions` and `deletionPolicy`. Key order never matters, and a field
/// set to `null` hashes equal to the field being absent.
pub fn content_hash(config: &Value) -> String {
    let canonical = canonical_json(&strip_nulls(config));
    let digest = Sha256::digest(canonical.as_bytes());
    format!("{HASH_PREFIX}{}", hex::encode(digest))
}

/// One stored version of a scheme's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredVersion {
    /// The version number (1 for the first version; never reused).
    pub number: u32,
    /// The [`content_hash`] of the version's configuration.
    pub hash: String,
    /// When the version was made.
    pub created: Timestamp,
}

/// The version history of one scheme: what is stored, which version is current, and the
/// highest number ever used.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
    /// The stored versions, in any order.
    pub versions: Vec<StoredVersion>,
    /// The current version, `None` before the first version is made.
    pub current: Option<u32>,
    /// The highest version number ever used. Carried separately because the highest version
    /// may have been pruned, and numbers are never reused.
    pub highest_ever: u32,
}

/// What a configuration means for the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Decision {
    /// The configuration equals the current version's.
    Unchanged(u32),
    /// The configuration equals the stored, non-current version `n`: the current version
    /// becomes `n` again and no number is made (the SDK's revert).
    Revert(u32),
    /// The configuration is new: version `n` is made and becomes current.
    New(u32),
}

impl Decision {
    /// The version that is current after the decision.
    pub fn number(self) -> u32 {
        match self {
            Self::Unchanged(n) | Self::Revert(n) | Self::New(n) => n,
        }
    }
}

/// A decision plus the versions to prune, computed by [`History::plan`] for one history and
/// applicable only to that history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// What the configuration means.
    decision: Decision,
    /// The content hash of the configuration.
    hash: String,
    /// Version numbers to delete, ascending.
    delete: Vec<u32>,
    /// The history the plan was computed from.
    base: History,
}

impl Plan {
    /// What the configuration means (unchanged, revert or new).
    pub fn decision(&self) -> Decision {
        self.decision
    }

    /// The content hash of the planned configuration.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The version numbers to delete, oldest (lowest) first.
    pub fn delete(&self) -> &[u32] {
        &self.delete
    }

    /// Whether the plan changes nothing (configuration unchanged and nothing to prune).
    pub fn is_noop(&self) -> bool {
        matches!(self.decision, Decision::Unchanged(_)) && self.delete.is_empty()
    }
}

impl History {
    /// The highest number used so far: `highest_ever`, or a larger stored or current number.
    fn highest(&self) -> u32 {
        self.versions
            .iter()
            .map(|v| v.number)
            .chain(self.current)
            .fold(self.highest_ever, u32::max)
    }

    /// A copy with the versions sorted, so that histories differing only in the order of
    /// their versions compare equal.
    fn normalized(&self) -> History {
        let mut copy = self.clone();
        copy.versions
            .sort_by(|a, b| (a.number, &a.hash, a.created).cmp(&(b.number, &b.hash, b.created)));
        copy
    }

    /// The stored version with `number`, if any.
    pub fn get(&self, number: u32) -> Option<&StoredVersion> {
        self.versions.iter().find(|v| v.number == number)
    }

    /// The stored current version, if any.
    pub fn current_version(&self) -> Option<&StoredVersion> {
        self.current.and_then(|n| self.get(n))
    }

    /// Decides what a configuration with content hash `hash` means.
    ///
    /// `Unchanged(n)` when it equals the current version `n`; `Revert(n)` when it equals the
    /// stored non-current version `n` (the highest such, should several match); otherwise
    /// `New(n)` with `n` one above the highest number ever used (1 for an empty history). The
    /// decision depends on nothing but the history and the hash. When every number is used up,
    /// `New(u32::MAX)` is returned and [`History::plan`] reports
    /// [`HistoryError::VersionNumbersExhausted`].
    pub fn decide(&self, hash: &str) -> Decision {
        if let Some(current) = self.current_version()
            && current.hash == hash
        {
            return Decision::Unchanged(current.number);
        }
        let stored = self
            .versions
            .iter()
            .filter(|v| v.hash == hash)
            .map(|v| v.number)
            .max();
        match stored {
            Some(n) => Decision::Revert(n),
            None => Decision::New(self.highest().saturating_add(1)),
        }
    }

    /// Plans the change to a configuration with content hash `hash`, keeping at most
    /// `max_versions` versions afterwards.
    ///
    /// Versions are pruned oldest (lowest number) first, never the version current after the
    /// change and never one in `referenced` (a machine is still built from it). Use the same
    /// call with an unchanged hash to prune after `maxVersions` was lowered.
    ///
    /// # Errors
    ///
    /// [`HistoryError::InvalidProvisioningSchemeVersionMaximum`] when `max_versions` is
    /// outside `1..=32000`; [`HistoryError::ProvisioningSchemeVersionMaximumExceeded`] when
    /// the limit cannot be met; [`HistoryError::VersionNumbersExhausted`] when a new version
    /// is needed but none is left; [`HistoryError::DuplicateVersion`] when the history stores
    /// a number twice. The history is never changed by planning.
    pub fn plan(
        &self,
        hash: &str,
        max_versions: u32,
        referenced: &BTreeSet<u32>,
    ) -> Result<Plan, HistoryError> {
        validate_max_versions(max_versions)?;
        let mut stored = BTreeSet::new();
        for v in &self.versions {
            if !stored.insert(v.number) {
                return Err(HistoryError::DuplicateVersion { number: v.number });
            }
        }
        let decision = self.decide(hash);
        if let Decision::New(n) = decision {
            let highest = self.highest();
            if n <= highest {
                return Err(HistoryError::VersionNumbersExhausted { highest });
            }
            stored.insert(n);
        }
        let current = decision.number();
        let limit = usize::try_from(max_versions).unwrap_or(usize::MAX);
        let excess = stored.len().saturating_sub(limit);
        let prunable: Vec<u32> = stored
            .iter()
            .copied()
            .filter(|n| *n != current && !referenced.contains(n))
            .collect();
        if prunable.len() < excess {
            return Err(HistoryError::ProvisioningSchemeVersionMaximumExceeded {
                max_versions,
                would_keep: stored.len() - prunable.len(),
                current,
                referenced: stored
                    .iter()
                    .copied()
                    .filter(|n| *n != current && referenced.contains(n))
                    .collect(),
            });
        }
        Ok(Plan {
            decision,
            hash: hash.to_owned(),
            delete: prunable.into_iter().take(excess).collect(),
            base: self.normalized(),
        })
    }

    /// Applies a plan computed by [`History::plan`] on this very history: records the new
    /// version (created at `now`) or the revert, and removes the pruned versions. Afterwards
    /// the versions are sorted by number. The order of the versions does not matter for
    /// matching the plan; applying a plan that changed something a second time is stale.
    ///
    /// # Errors
    ///
    /// [`HistoryError::StalePlan`] when the history differs from the one the plan was computed
    /// from; the history is then left unchanged.
    pub fn apply(&mut self, plan: &Plan, now: Timestamp) -> Result<(), HistoryError> {
        if self.normalized() != plan.base {
            return Err(HistoryError::StalePlan {
                planned_current: plan.base.current,
                planned_highest: plan.base.highest(),
                actual_current: self.current,
                actual_highest: self.highest(),
            });
        }
        let highest = self.highest();
        if let Decision::New(n) = plan.decision {
            self.versions.push(StoredVersion {
                number: n,
                hash: plan.hash.clone(),
                created: now,
            });
        }
        let current = plan.decision.number();
        self.current = Some(current);
        self.highest_ever = highest.max(current);
        self.versions.retain(|v| !plan.delete.contains(&v.number));
        self.versions.sort_by_key(|v| v.number);
        Ok(())
    }
}

/// One changed field between two configurations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldChange {
    /// The field path, dotted (`vmCpuCount`, `networkMapping.0`); a key that is empty or
    /// contains `.`, `[`, `]` or `"` is written in brackets (`metadata["app.kubernetes.io/name"]`).
    pub path: String,
    /// The old value; `None` when the field was absent or `null`.
    pub old: Option<Value>,
    /// The new value; `None` when the field is absent or `null`.
    pub new: Option<Value>,
}

/// Lists the fields that differ between two configurations, in path order.
///
/// Objects are compared member by member and arrays element by element; any other difference
/// (including a change of type) is one change at that path. A `null` member equals an absent
/// one, as in [`content_hash`]. A field added or removed as a whole is one change.
pub fn diff(old: &Value, new: &Value) -> Vec<FieldChange> {
    let mut changes = Vec::new();
    diff_into(
        String::new(),
        Some(&strip_nulls(old)),
        Some(&strip_nulls(new)),
        &mut changes,
    );
    changes
}

/// Appends the changes between `old` and `new` at `path` to `out`.
fn diff_into(path: String, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<FieldChange>) {
    match (old, new) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                diff_into(join_key(&path, key), a.get(key), b.get(key), out);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) => {
            for i in 0..a.len().max(b.len()) {
                diff_into(join_key(&path, &i.to_string()), a.get(i), b.get(i), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(FieldChange {
            path: if path.is_empty() {
                "(root)".to_owned()
            } else {
                path
            },
            old: a.cloned(),
            new: b.cloned(),
        }),
    }
}

/// Appends `key` to a field path.
fn join_key(path: &str, key: &str) -> String {
    let plain = !key.is_empty() && !key.contains(['.', '[', ']', '"']);
    match (path.is_empty(), plain) {
        (true, true) => key.to_owned(),
        (false, true) => format!("{path}.{key}"),
        (_, false) => {
            let mut quoted = String::new();
            write_json_string(key, &mut quoted);
            format!("{path}[{quoted}]")
        }
    }
}

/// A short human form of a list of changes, e.g. `vmCpuCount 1 -> 2; machineProfile changed`.
///
/// Numbers, booleans and short strings are shown as `old -> new`; long strings, objects and
/// arrays as `changed`; fields that appear or disappear as `set to ...`/`added` or `removed`.
/// After five changes the rest are only counted. An empty list gives `no changes`.
pub fn summarize(changes: &[FieldChange]) -> String {
    if changes.is_empty() {
        return "no changes".to_owned();
    }
    let mut parts: Vec<String> = changes
        .iter()
        .take(SUMMARY_MAX_ENTRIES)
        .map(|c| {
            let old = c.old.as_ref().and_then(short_value);
            let new = c.new.as_ref().and_then(short_value);
            match (&c.old, &c.new, old, new) {
                (None, Some(_), _, Some(n)) => format!("{} set to {n}", c.path),
                (None, _, _, _) => format!("{} added", c.path),
                (Some(_), None, _, _) => format!("{} removed", c.path),
                (Some(_), Some(_), Some(o), Some(n)) => format!("{} {o} -> {n}", c.path),
                (Some(_), Some(_), _, _) => format!("{} changed", c.path),
            }
        })
        .collect();
    if changes.len() > SUMMARY_MAX_ENTRIES {
        parts.push(format!("and {} more", changes.len() - SUMMARY_MAX_ENTRIES));
    }
    parts.join("; ")
}

/// The short display form of a scalar value, `None` when it is too long or not a scalar.
fn short_value(value: &Value) -> Option<String> {
    match value {
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if s.chars().count() <= SUMMARY_MAX_STRING => {
            let mut quoted = String::new();
            write_json_string(s, &mut quoted);
            Some(quoted)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn history(numbers: &[u32], current: Option<u32>, highest_ever: u32) -> History {
        History {
            versions: numbers
                .iter()
                .map(|n| StoredVersion {
                    number: *n,
                    hash: format!("h{n}"),
                    created: ts(i64::from(*n)),
                })
                .collect(),
            current,
            highest_ever,
        }
    }

    fn none() -> BTreeSet<u32> {
        BTreeSet::new()
    }

    #[test]
    fn canonical_json_sorts_keys_recursively_without_whitespace() {
        let v: Value =
            serde_json::from_str(r#"{ "b": 1, "a": { "z": [ {"y": 2, "x": 1} ], "c": null } }"#)
                .unwrap_or(Value::Null);
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":null,"z":[{"x":1,"y":2}]},"b":1}"#
        );
    }

    #[test]
    fn canonical_json_escapes_like_serde_json() {
        let s = "quote\" back\\ nl\n tab\t ctl\u{1} bell\u{7} é ☃ \u{7f}";
        let v = json!({ s: s });
        assert_eq!(
            canonical_json(&v),
            serde_json::to_string(&v).unwrap_or_default()
        );
    }

    #[test]
    fn content_hash_ignores_key_order_whitespace_and_nulls() {
        let a: Value = serde_json::from_str(r#"{"vmCpuCount":2,"networkMapping":{"0":"n"}}"#)
            .unwrap_or(Value::Null);
        let b: Value = serde_json::from_str(
            r#"{ "networkMapping" : { "0" : "n" }, "machineProfile": null, "vmCpuCount" : 2 }"#,
        )
        .unwrap_or(Value::Null);
        assert_eq!(content_hash(&a), content_hash(&b));
        assert!(content_hash(&a).starts_with("sha256:"));
        assert_eq!(content_hash(&a).len(), "sha256:".len() + 64);
        assert_ne!(content_hash(&a), content_hash(&json!({"vmCpuCount": 3})));
    }

    #[test]
    fn content_hash_of_empty_object_is_sha256_of_braces() {
        assert_eq!(
            content_hash(&json!({})),
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }

    #[test]
    fn strip_nulls_keeps_array_positions() {
        assert_eq!(
            strip_nulls(&json!({"a": [null, {"b": null, "c": 1}], "d": null})),
            json!({"a": [null, {"c": 1}]})
        );
    }

    #[test]
    fn empty_history_makes_version_one() {
        let h = History::default();
        assert_eq!(h.decide("x"), Decision::New(1));
        let plan = h.plan("x", 99, &none());
        assert!(plan.is_ok());
    }

    #[test]
    fn decide_unchanged_revert_new() {
        let h = history(&[1, 2, 3], Some(3), 3);
        assert_eq!(h.decide("h3"), Decision::Unchanged(3));
        assert_eq!(h.decide("h1"), Decision::Revert(1));
        assert_eq!(h.decide("other"), Decision::New(4));
    }

    #[test]
    fn new_number_skips_pruned_highest() {
        let h = history(&[1, 2], Some(2), 7);
        assert_eq!(h.decide("other"), Decision::New(8));
        let h = history(&[1, 9], Some(1), 3);
        assert_eq!(h.decide("other"), Decision::New(10));
    }

    #[test]
    fn apply_new_version_records_it() {
        let mut h = history(&[1], Some(1), 1);
        let plan = h.plan("x", 99, &none()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.decision(), Decision::New(2));
        assert!(plan.delete().is_empty());
        assert_eq!(h.apply(&plan, ts(100)), Ok(()));
        assert_eq!(h.current, Some(2));
        assert_eq!(h.highest_ever, 2);
        assert_eq!(
            h.get(2).map(|v| (v.hash.as_str(), v.created)),
            Some(("x", ts(100)))
        );
    }

    #[test]
    fn revert_makes_no_new_number() {
        let mut h = history(&[1, 2], Some(2), 2);
        let plan = h.plan("h1", 99, &none()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.decision(), Decision::Revert(1));
        assert_eq!(h.apply(&plan, ts(100)), Ok(()));
        assert_eq!(h.current, Some(1));
        assert_eq!(h.versions.len(), 2);
        assert_eq!(h.highest_ever, 2);
    }

    #[test]
    fn prunes_oldest_first_never_current_or_referenced() {
        let h = history(&[1, 2, 3, 4], Some(4), 4);
        let referenced: BTreeSet<u32> = [1].into();
        let plan = h
            .plan("x", 3, &referenced)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.decision(), Decision::New(5));
        assert_eq!(plan.delete(), &[2, 3]);
    }

    #[test]
    fn revert_to_oldest_keeps_it() {
        let h = history(&[1, 2, 3], Some(3), 3);
        let plan = h.plan("h1", 2, &none()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.decision(), Decision::Revert(1));
        assert_eq!(plan.delete(), &[2]);
    }

    #[test]
    fn lowering_max_prunes_without_change() {
        let mut h = history(&[1, 2, 3, 4], Some(4), 4);
        let plan = h.plan("h4", 2, &none()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.decision(), Decision::Unchanged(4));
        assert_eq!(plan.delete(), &[1, 2]);
        assert!(!plan.is_noop());
        assert_eq!(h.apply(&plan, ts(100)), Ok(()));
        assert_eq!(
            h.versions.iter().map(|v| v.number).collect::<Vec<_>>(),
            [3, 4]
        );
        assert_eq!(h.highest_ever, 4);
    }

    #[test]
    fn version_order_does_not_matter_for_apply() {
        let sorted = history(&[1, 2, 3], Some(3), 3);
        let mut reversed = sorted.clone();
        reversed.versions.reverse();
        let plan = reversed
            .plan("x", 2, &none())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut target = sorted.clone();
        assert_eq!(target.apply(&plan, ts(9)), Ok(()));
        assert_eq!(
            target.versions.iter().map(|v| v.number).collect::<Vec<_>>(),
            [3, 4]
        );
    }

    #[test]
    fn unchanged_within_limit_is_noop() {
        let h = history(&[1, 2], Some(2), 2);
        let plan = h.plan("h2", 99, &none()).unwrap_or_else(|e| panic!("{e}"));
        assert!(plan.is_noop());
    }

    #[test]
    fn maximum_exceeded_when_all_referenced() {
        let h = history(&[1, 2], Some(2), 2);
        let referenced: BTreeSet<u32> = [1].into();
        let before = h.clone();
        let err = h.plan("x", 1, &referenced).err();
        assert_eq!(h, before);
        match err {
            Some(e @ HistoryError::ProvisioningSchemeVersionMaximumExceeded { .. }) => {
                assert_eq!(e.reason(), "ProvisioningSchemeVersionMaximumExceeded");
                let msg = e.to_string();
                assert!(msg.contains("keep 2 provisioning scheme versions"), "{msg}");
                assert!(msg.contains("spec.maxVersions is 1"), "{msg}");
                assert!(msg.contains("referenced by machines: 1"), "{msg}");
            }
            other => panic!("unexpected {other:?}"),
        }
        // With version 2 prunable a maximum of 2 can be met.
        let plan = h
            .plan("x", 2, &referenced)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.delete(), &[2]);
    }

    #[test]
    fn max_versions_one_keeps_only_current() {
        let h = history(&[1, 2, 3], Some(2), 3);
        let plan = h.plan("x", 1, &none()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.decision(), Decision::New(4));
        assert_eq!(plan.delete(), &[1, 2, 3]);
    }

    #[test]
    fn invalid_max_versions() {
        let h = History::default();
        for bad in [0, 32001, u32::MAX] {
            let err = h.plan("x", bad, &none()).err();
            assert_eq!(
                err.as_ref().map(Reason::reason),
                Some("InvalidProvisioningSchemeVersionMaximum")
            );
        }
        assert!(h.plan("x", 1, &none()).is_ok());
        assert!(h.plan("x", 32000, &none()).is_ok());
    }

    #[test]
    fn exhausted_numbers_are_an_error() {
        let h = history(&[u32::MAX], Some(u32::MAX), u32::MAX);
        let err = h.plan("x", 99, &none()).err();
        assert_eq!(
            err.as_ref().map(Reason::reason),
            Some("ProvisioningSchemeVersionNumbersExhausted")
        );
    }

    #[test]
    fn duplicate_numbers_are_an_error() {
        let h = history(&[1, 1], Some(1), 1);
        let err = h.plan("x", 99, &none()).err();
        assert_eq!(err, Some(HistoryError::DuplicateVersion { number: 1 }));
    }

    #[test]
    fn current_not_stored_is_handled() {
        let h = history(&[1], Some(2), 2);
        assert_eq!(h.decide("h1"), Decision::Revert(1));
        assert_eq!(h.decide("x"), Decision::New(3));
    }

    #[test]
    fn apply_rejects_plan_of_other_history() {
        let a = history(&[1, 2], Some(2), 2);
        let mut b = history(&[1, 2, 3], Some(3), 3);
        let plan = a.plan("x", 99, &none()).unwrap_or_else(|e| panic!("{e}"));
        let before = b.clone();
        let err = b.apply(&plan, ts(5)).err();
        assert_eq!(
            err.as_ref().map(Reason::reason),
            Some("StaleProvisioningSchemeVersionPlan")
        );
        assert_eq!(b, before);
        // Applying twice is also stale.
        let mut a2 = a.clone();
        assert_eq!(a2.apply(&plan, ts(5)), Ok(()));
        assert!(a2.apply(&plan, ts(6)).is_err());
    }

    #[test]
    fn diff_lists_changed_paths() {
        let old = json!({
            "vmCpuCount": 1,
            "networkMapping": {"0": "a", "1": "b"},
            "securityGroups": ["x"],
            "metadata": {"app.kubernetes.io/name": "v1"},
            "machineProfile": null,
            "cleanOnBoot": true
        });
        let new = json!({
            "vmCpuCount": 2,
            "networkMapping": {"0": "c"},
            "securityGroups": ["x", "y"],
            "metadata": {"app.kubernetes.io/name": "v2"},
            "cleanOnBoot": true
        });
        let changes = diff(&old, &new);
        let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                r#"metadata["app.kubernetes.io/name"]"#,
                "networkMapping.0",
                "networkMapping.1",
                "securityGroups.1",
                "vmCpuCount"
            ]
        );
        assert_eq!(changes[4].old, Some(json!(1)));
        assert_eq!(changes[4].new, Some(json!(2)));
        assert_eq!(changes[2].new, None);
        assert_eq!(changes[3].old, None);
    }

    #[test]
    fn diff_of_equal_configs_is_empty() {
        let a = json!({"a": 1, "b": null});
        let b = json!({"a": 1});
        assert!(diff(&a, &b).is_empty());
        assert_eq!(summarize(&diff(&a, &b)), "no changes");
    }

    #[test]
    fn diff_root_and_type_change() {
        let changes = diff(&json!(1), &json!("x"));
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].path, "(root)");
        let changes = diff(&json!({"a": {"b": 1}}), &json!({"a": [1]}));
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].path, "a");
    }

    #[test]
    fn summarize_short_form() {
        let long = "XDHyp:\\HostingUnits\\hu\\machineprofile.folder\\vm1.vm";
        let changes = diff(
            &json!({"vmCpuCount": 1, "machineProfile": long}),
            &json!({"vmCpuCount": 2, "machineProfile": format!("{long}2")}),
        );
        assert_eq!(
            summarize(&changes),
            "machineProfile changed; vmCpuCount 1 -> 2"
        );
        let changes = diff(
            &json!({"a": true, "c": {"x": 1}}),
            &json!({"b": "s", "d": {"y": 1}}),
        );
        assert_eq!(
            summarize(&changes),
            r#"a removed; b set to "s"; c removed; d added"#
        );
    }

    #[test]
    fn summarize_counts_the_rest() {
        let old = json!({"a": 1, "b": 1, "c": 1, "d": 1, "e": 1, "f": 1, "g": 1});
        let new = json!({"a": 2, "b": 2, "c": 2, "d": 2, "e": 2, "f": 2, "g": 2});
        let s = summarize(&diff(&old, &new));
        assert!(s.ends_with("e 1 -> 2; and 2 more"), "{s}");
    }
}
