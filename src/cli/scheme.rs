//! `mcs-operator scheme history|revert|diff`: a provisioning scheme's versions, read from its
//! ControllerRevisions.
//!
//! `revert --to-version N` writes version N's configuration back into the scheme's spec with a
//! JSON merge patch of the configuration fields only (like `kubectl rollout undo`); the
//! controller then sees a configuration equal to stored version N and makes N current again
//! without a new number. A pruned version cannot be reverted to.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::api::apps::v1::ControllerRevision;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use mcs_domain::history;
use serde_json::{Map, Value};

use crate::api::{ProvScheme, ProvVm};
use crate::controller::scheme_versions::{self, NON_CONFIGURATION_FIELDS, StoredConfiguration};

/// The field manager of the command-line tool's writes.
pub const FIELD_MANAGER: &str = "mcs-operator-cli";

/// The `scheme` subcommands.
#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum SchemeCommand {
    /// List the stored versions of a scheme, newest first.
    History {
        /// The ProvScheme.
        name: String,
    },
    /// Write a stored version's configuration back into the scheme's spec.
    Revert {
        /// The ProvScheme.
        name: String,
        /// The version to go back to.
        #[arg(long = "to-version")]
        to_version: u32,
    },
    /// Show what differs between two stored versions.
    Diff {
        /// The ProvScheme.
        name: String,
        /// The older version.
        a: u32,
        /// The newer version.
        b: u32,
    },
}

/// Why a `scheme` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The Kubernetes API refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The scheme does not exist.
    #[error("provisioning scheme '{name}' was not found in namespace '{namespace}'")]
    SchemeNotFound {
        /// The scheme.
        name: String,
        /// The namespace.
        namespace: String,
    },
    /// The version is not stored (never made, or pruned).
    #[error("version {number} of provisioning scheme '{name}' is not stored (it was pruned or never existed); stored versions: {}", list(.stored))]
    VersionNotStored {
        /// The scheme.
        name: String,
        /// The requested version.
        number: u32,
        /// The stored versions.
        stored: Vec<u32>,
    },
    /// A configuration could not be (de)serialized.
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
}

fn list(numbers: &[u32]) -> String {
    if numbers.is_empty() {
        "none".into()
    } else {
        numbers
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The history table: one row per stored version, newest first, with a `*` at the current
/// version and how many machines were built from each.
pub fn history_table(
    stored: &[StoredConfiguration],
    current: Option<u32>,
    machines: &BTreeMap<u32, usize>,
) -> String {
    let mut rows: Vec<[String; 6]> = vec![[
        "VERSION".into(),
        "CURRENT".into(),
        "CREATED".into(),
        "MACHINES".into(),
        "HASH".into(),
        "CHANGES".into(),
    ]];
    let mut sorted: Vec<&StoredConfiguration> = stored.iter().collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.number));
    for s in sorted {
        let hash = s.hash.trim_start_matches(history::HASH_PREFIX);
        rows.push([
            s.number.to_string(),
            if current == Some(s.number) {
                "*".into()
            } else {
                String::new()
            },
            s.created.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            machines.get(&s.number).copied().unwrap_or(0).to_string(),
            hash.get(..12).unwrap_or(hash).to_owned(),
            s.changes.clone().unwrap_or_default(),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i == 5 {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The merge patch that makes `spec`'s configuration equal `configuration`: every
/// configuration field of the stored version, and `null` for configuration fields the spec
/// has but the version does not. Non-configuration fields (machineCount, updateWindow,
/// maxVersions, deletionPolicy) are left alone.
pub fn revert_patch(spec: &Value, configuration: &Value) -> Value {
    let mut fields = Map::new();
    if let Some(current) = spec.as_object() {
        for key in current.keys() {
            if !NON_CONFIGURATION_FIELDS.contains(&key.as_str()) {
                fields.insert(key.clone(), Value::Null);
            }
        }
    }
    if let Some(config) = configuration.as_object() {
        for (key, value) in config {
            if !NON_CONFIGURATION_FIELDS.contains(&key.as_str()) {
                fields.insert(key.clone(), merge_value(spec.get(key), value));
            }
        }
    }
    serde_json::json!({ "spec": fields })
}

/// A merge-patch value that turns `old` into `new`: nested objects get `null` for removed keys.
fn merge_value(old: Option<&Value>, new: &Value) -> Value {
    match (old, new) {
        (Some(Value::Object(o)), Value::Object(n)) => {
            let mut out = Map::new();
            for key in o.keys() {
                if !n.contains_key(key) {
                    out.insert(key.clone(), Value::Null);
                }
            }
            for (key, value) in n {
                out.insert(key.clone(), merge_value(o.get(key), value));
            }
            Value::Object(out)
        }
        _ => new.clone(),
    }
}

/// The diff of two configurations, one changed field per line (`path: old -> new`).
pub fn diff_text(a: &StoredConfiguration, b: &StoredConfiguration) -> String {
    let changes = history::diff(&a.configuration, &b.configuration);
    if changes.is_empty() {
        return format!(
            "versions {} and {} have the same configuration\n",
            a.number, b.number
        );
    }
    let show = |v: &Option<Value>| {
        v.as_ref()
            .map_or_else(|| "(unset)".to_owned(), Value::to_string)
    };
    let mut out = format!("--- version {}\n+++ version {}\n", a.number, b.number);
    for change in changes {
        let _ = writeln!(
            out,
            "{}: {} -> {}",
            change.path,
            show(&change.old),
            show(&change.new)
        );
    }
    out
}

fn find(
    stored: &[StoredConfiguration],
    name: &str,
    number: u32,
) -> Result<StoredConfiguration, CliError> {
    stored
        .iter()
        .find(|s| s.number == number)
        .cloned()
        .ok_or_else(|| CliError::VersionNotStored {
            name: name.to_owned(),
            number,
            stored: stored.iter().map(|s| s.number).collect(),
        })
}

/// Runs one `scheme` command in `namespace` and returns what to print.
///
/// # Errors
///
/// [`CliError`]: the scheme or version does not exist, or an API request failed.
pub async fn run(
    client: Client,
    namespace: &str,
    command: &SchemeCommand,
) -> Result<String, CliError> {
    let schemes: Api<ProvScheme> = Api::namespaced(client.clone(), namespace);
    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), namespace);
    let name = match command {
        SchemeCommand::History { name }
        | SchemeCommand::Revert { name, .. }
        | SchemeCommand::Diff { name, .. } => name.clone(),
    };
    let scheme = schemes
        .get_opt(&name)
        .await?
        .ok_or_else(|| CliError::SchemeNotFound {
            name: name.clone(),
            namespace: namespace.to_owned(),
        })?;
    let stored = scheme_versions::list(&revisions, &name).await?;
    let current = scheme
        .status
        .as_ref()
        .and_then(|s| s.provisioning_scheme_version)
        .and_then(|n| u32::try_from(n).ok());
    match command {
        SchemeCommand::History { .. } => {
            let machines: Api<ProvVm> = Api::namespaced(client, namespace);
            let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
            for machine in machines
                .list(&ListParams::default().labels(&scheme_versions::selector(&name)))
                .await?
                .items
            {
                if let Some(n) = machine
                    .status
                    .as_ref()
                    .and_then(|s| s.provisioning_scheme_version)
                    .and_then(|n| u32::try_from(n).ok())
                {
                    *counts.entry(n).or_default() += 1;
                }
            }
            Ok(history_table(&stored, current, &counts))
        }
        SchemeCommand::Diff { a, b, .. } => {
            let a = find(&stored, &name, *a)?;
            let b = find(&stored, &name, *b)?;
            Ok(diff_text(&a, &b))
        }
        SchemeCommand::Revert { to_version, .. } => {
            let target = find(&stored, &name, *to_version)?;
            let spec = serde_json::to_value(&scheme.spec)?;
            let patch = revert_patch(&spec, &target.configuration);
            schemes
                .patch(
                    &scheme.name_any(),
                    &PatchParams {
                        field_manager: Some(FIELD_MANAGER.into()),
                        ..crate::controller::strict::patch()
                    },
                    &Patch::Merge(&patch),
                )
                .await?;
            Ok(format!(
                "provscheme/{name} reverted to the configuration of version {to_version}{}\n",
                if current == Some(*to_version) {
                    " (already current)"
                } else {
                    ""
                }
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;
    use serde_json::json;

    fn stored(number: u32, configuration: Value, changes: &str) -> StoredConfiguration {
        StoredConfiguration {
            number,
            hash: history::content_hash(&configuration),
            configuration,
            api_version: "mcs.imaging.dev/v1alpha1".into(),
            created: Timestamp::from_second(1_800_000_000 + i64::from(number)).expect("valid"),
            changes: Some(changes.into()),
        }
    }

    #[test]
    fn history_is_a_table_newest_first_with_the_current_marked() {
        let versions = [
            stored(1, json!({"vmCpuCount": 1}), "initial version"),
            stored(2, json!({"vmCpuCount": 2}), "vmCpuCount 1 -> 2"),
        ];
        let table = history_table(&versions, Some(1), &BTreeMap::from([(1, 3)]));
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("VERSION  CURRENT  CREATED"), "{table}");
        assert!(lines[1].starts_with("2 "), "{table}");
        assert!(lines[1].ends_with("vmCpuCount 1 -> 2"), "{table}");
        assert!(lines[2].starts_with("1        *"), "{table}");
        assert!(lines[2].contains(" 3 "), "{table}");
    }

    #[test]
    fn revert_patch_touches_configuration_fields_only() {
        let spec = json!({
            "vmCpuCount": 2,
            "machineProfile": "p2",
            "customProperties": "x",
            "machineCount": 5,
            "maxVersions": 3,
            "networkMapping": {"0": "a", "1": "b"},
        });
        let config = json!({"vmCpuCount": 1, "machineProfile": "p1", "networkMapping": {"0": "a"}});
        let patch = revert_patch(&spec, &config);
        assert_eq!(
            patch,
            json!({"spec": {
                "vmCpuCount": 1,
                "machineProfile": "p1",
                "customProperties": null,
                "networkMapping": {"0": "a", "1": null},
            }})
        );
    }

    #[test]
    fn diff_lists_each_changed_field() {
        let a = stored(1, json!({"vmCpuCount": 1, "machineProfile": "p1"}), "");
        let b = stored(3, json!({"vmCpuCount": 2, "machineProfile": "p1"}), "");
        assert_eq!(
            diff_text(&a, &b),
            "--- version 1\n+++ version 3\nvmCpuCount: 1 -> 2\n"
        );
        assert!(diff_text(&a, &a).contains("same configuration"));
    }

    #[test]
    fn a_missing_version_names_the_stored_ones() {
        let versions = [stored(2, json!({}), ""), stored(5, json!({}), "")];
        let error = find(&versions, "s", 1).expect_err("pruned");
        assert_eq!(
            error.to_string(),
            "version 1 of provisioning scheme 's' is not stored (it was pruned or never existed); stored versions: 2, 5"
        );
    }
}
