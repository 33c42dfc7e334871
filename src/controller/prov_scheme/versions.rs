//! ProvScheme versioning: provisioning scheme versions stored as ControllerRevisions.
//!
//! Version `N` of scheme `S` is the ControllerRevision `S-vN`, labelled
//! `mcs.imaging.dev/provscheme=S`, with `revision: N` and
//! `data: {apiVersion, configuration, hash}`, owned by the scheme (`controller: true`). The
//! summary of what changed against the version before is the annotation
//! [`ANNOTATION_CHANGES`]. Revisions are immutable: the controller creates and deletes them,
//! never updates them.
//!
//! The highest number ever made must survive pruning, so it is kept in three places and the
//! maximum wins: the scheme's annotation [`ANNOTATION_HIGHEST_VERSION`] (written before any
//! revision is pruned), `status.highestVersion`, and the stored revisions themselves.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, ListParams, Patch};
use kube::{Resource, ResourceExt};
use mcs_domain::history::{self, Decision, History, HistoryError, Plan, StoredVersion};
use serde_json::{Value, json};

use crate::api::{LABEL_PROVSCHEME, ProvScheme, ProvSchemeSpec, VersionSummary};

/// Scheme annotation holding the highest version number ever made.
pub const ANNOTATION_HIGHEST_VERSION: &str = "mcs.imaging.dev/highest-version";
/// Revision annotation summarising what changed against the version before it.
pub const ANNOTATION_CHANGES: &str = "mcs.imaging.dev/changes";
/// The spec fields that are not part of the configuration (changing them makes no version).
pub const NON_CONFIGURATION_FIELDS: [&str; 4] = [
    "machineCount",
    "updateWindow",
    "maxVersions",
    "deletionPolicy",
];
/// How many versions `status.versions` summarises.
pub const STATUS_VERSIONS: usize = 10;
/// The summary of the first version.
pub const INITIAL_CHANGES: &str = "initial version";

/// Why stored versions could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum VersionStoreError {
    /// The Kubernetes API refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The configuration could not be (de)serialized.
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
    /// The history model refused the change.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// A revision with the planned number exists with another configuration.
    #[error("ControllerRevision {name} already exists with another configuration ({hash})")]
    Conflict {
        /// The revision's name.
        name: String,
        /// Its content hash.
        hash: String,
    },
}

/// The configuration of a scheme spec: the spec as JSON without [`NON_CONFIGURATION_FIELDS`].
///
/// # Errors
///
/// When the spec cannot be serialized (never for a well-formed spec).
pub fn configuration(spec: &ProvSchemeSpec) -> Result<Value, serde_json::Error> {
    let mut value = serde_json::to_value(spec)?;
    if let Value::Object(map) = &mut value {
        for field in NON_CONFIGURATION_FIELDS {
            map.remove(field);
        }
    }
    Ok(value)
}

/// The name of version `number` of `scheme`: `<scheme>-v<number>`.
pub fn revision_name(scheme: &str, number: u32) -> String {
    format!("{scheme}-v{number}")
}

/// The label selector of a scheme's revisions (and machines).
pub fn selector(scheme: &str) -> String {
    format!("{LABEL_PROVSCHEME}={scheme}")
}

/// One stored version as read back from its ControllerRevision.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredConfiguration {
    /// The version number.
    pub number: u32,
    /// The content hash of the configuration.
    pub hash: String,
    /// The configuration.
    pub configuration: Value,
    /// The API version the configuration was written with.
    pub api_version: String,
    /// When the version was made.
    pub created: Timestamp,
    /// What changed against the version before it.
    pub changes: Option<String>,
}

impl StoredConfiguration {
    /// The history model's view of this version.
    pub fn stored_version(&self) -> StoredVersion {
        StoredVersion {
            number: self.number,
            hash: self.hash.clone(),
            created: self.created,
        }
    }

    /// The summary shown in `status.versions`.
    pub fn summary(&self) -> VersionSummary {
        VersionSummary {
            number: i64::from(self.number),
            hash: self.hash.clone(),
            created: self.created.to_string(),
            changes: self.changes.clone(),
        }
    }
}

/// Reads a ControllerRevision written by [`to_revision`]; `None` when it is not one (missing
/// data, a non-positive revision number). The hash is recomputed when the data lacks one.
pub fn from_revision(revision: &ControllerRevision) -> Option<StoredConfiguration> {
    let number = u32::try_from(revision.revision).ok().filter(|n| *n > 0)?;
    let data = &revision.data.as_ref()?.0;
    let configuration = data.get("configuration")?.clone();
    let hash = data
        .get("hash")
        .and_then(Value::as_str)
        .map_or_else(|| history::content_hash(&configuration), str::to_owned);
    let api_version = data
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let created = revision
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(Timestamp::UNIX_EPOCH, |t| t.0);
    let changes = revision
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_CHANGES))
        .cloned();
    Some(StoredConfiguration {
        number,
        hash,
        configuration,
        api_version,
        created,
        changes,
    })
}

/// The ControllerRevision that stores version `number` of `scheme`; `None` when the scheme has
/// no uid (it was not read from the API server), so it cannot own the revision.
pub fn to_revision(
    scheme: &ProvScheme,
    number: u32,
    configuration: &Value,
    changes: &str,
) -> Option<ControllerRevision> {
    let owner = scheme.controller_owner_ref(&())?;
    let name = scheme.name_any();
    Some(ControllerRevision {
        metadata: ObjectMeta {
            name: Some(revision_name(&name, number)),
            namespace: scheme.namespace(),
            labels: Some(BTreeMap::from([(LABEL_PROVSCHEME.to_owned(), name)])),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_CHANGES.to_owned(),
                changes.to_owned(),
            )])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        revision: i64::from(number),
        data: Some(RawExtension(json!({
            "apiVersion": ProvScheme::api_version(&()),
            "configuration": configuration,
            "hash": history::content_hash(configuration),
        }))),
    })
}

/// The highest version number recorded on the scheme itself (annotation or status).
pub fn recorded_highest(scheme: &ProvScheme) -> u32 {
    let annotation = scheme
        .annotations()
        .get(ANNOTATION_HIGHEST_VERSION)
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0);
    let status = scheme
        .status
        .as_ref()
        .and_then(|s| s.highest_version)
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(0);
    annotation.max(status)
}

/// The history model of `stored` versions with `current` and the recorded highest number.
pub fn history_of(stored: &[StoredConfiguration], current: Option<u32>, highest: u32) -> History {
    History {
        versions: stored
            .iter()
            .map(StoredConfiguration::stored_version)
            .collect(),
        current,
        highest_ever: highest,
    }
}

/// The summaries for `status.versions`: the newest [`STATUS_VERSIONS`], newest first.
pub fn summaries(stored: &[StoredConfiguration]) -> Vec<VersionSummary> {
    let mut sorted: Vec<&StoredConfiguration> = stored.iter().collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.number));
    sorted
        .into_iter()
        .take(STATUS_VERSIONS)
        .map(StoredConfiguration::summary)
        .collect()
}

/// What a configuration means for a scheme's stored versions, decided without I/O.
#[derive(Clone, Debug, PartialEq)]
pub struct VersionChange {
    /// The plan of the history model (decision and versions to prune).
    pub plan: Plan,
    /// The summary of the change for a new version.
    pub changes: String,
}

impl VersionChange {
    /// The version current after the change.
    pub fn number(&self) -> u32 {
        self.plan.decision().number()
    }
}

/// Decides what `config` means for the `stored` versions: unchanged, a revert to a stored
/// version, or a new version (with what changed against the current version), plus what to
/// prune to keep at most `max_versions`, never the current version nor a `referenced` one.
///
/// # Errors
///
/// The history model's errors, e.g. `ProvisioningSchemeVersionMaximumExceeded`.
pub fn decide(
    stored: &[StoredConfiguration],
    current: Option<u32>,
    highest: u32,
    config: &Value,
    max_versions: i32,
    referenced: &BTreeSet<u32>,
) -> Result<VersionChange, HistoryError> {
    let history = history_of(stored, current, highest);
    let hash = history::content_hash(config);
    let max = u32::try_from(max_versions).unwrap_or(0);
    let plan = history.plan(&hash, max, referenced)?;
    let changes = match plan.decision() {
        Decision::New(_) => {
            let before = current.and_then(|n| stored.iter().find(|s| s.number == n));
            match before {
                Some(before) => history::summarize(&history::diff(&before.configuration, config)),
                None if stored.is_empty() => INITIAL_CHANGES.to_owned(),
                None => "configuration changed".to_owned(),
            }
        }
        Decision::Revert(n) => format!("reverted to version {n}"),
        Decision::Unchanged(_) => String::new(),
    };
    Ok(VersionChange { plan, changes })
}

/// Lists the stored versions of `scheme`, oldest first.
///
/// # Errors
///
/// When the list request fails.
pub async fn list(
    api: &Api<ControllerRevision>,
    scheme: &str,
) -> Result<Vec<StoredConfiguration>, kube::Error> {
    let revisions = api
        .list(&ListParams::default().labels(&selector(scheme)))
        .await?;
    Ok(stored_of(&revisions.items, scheme))
}

/// The stored versions of `scheme` among `revisions` (a list or a cache), oldest first:
/// those labelled with the scheme and not being deleted.
pub fn stored_of<'a, R>(
    revisions: impl IntoIterator<Item = &'a R>,
    scheme: &str,
) -> Vec<StoredConfiguration>
where
    R: std::borrow::Borrow<ControllerRevision> + 'a,
{
    let mut stored: Vec<StoredConfiguration> = revisions
        .into_iter()
        .map(std::borrow::Borrow::borrow)
        .filter(|r| {
            r.labels().get(LABEL_PROVSCHEME).map(String::as_str) == Some(scheme)
                && r.metadata.deletion_timestamp.is_none()
        })
        .filter_map(from_revision)
        .collect();
    stored.sort_by_key(|s| s.number);
    stored
}

/// Records `highest` in the scheme's [`ANNOTATION_HIGHEST_VERSION`] annotation (a metadata
/// merge patch; the spec is never written). Does nothing when it is already recorded.
///
/// # Errors
///
/// When the patch fails.
pub async fn record_highest(
    api: &Api<ProvScheme>,
    scheme: &ProvScheme,
    highest: u32,
) -> Result<(), kube::Error> {
    let recorded = scheme
        .annotations()
        .get(ANNOTATION_HIGHEST_VERSION)
        .and_then(|v| v.parse::<u32>().ok());
    if recorded.is_some_and(|r| r >= highest) {
        return Ok(());
    }
    let patch = json!({ "metadata": { "annotations": { ANNOTATION_HIGHEST_VERSION: highest.to_string() } } });
    api.patch(
        &scheme.name_any(),
        &crate::controller::strict::patch(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// Creates version `number` of `scheme`. A revision of that name that already holds the same
/// configuration (a retried reconcile) counts as created.
///
/// # Errors
///
/// [`VersionStoreError::Conflict`] when the name holds another configuration; API errors.
pub async fn create(
    api: &Api<ControllerRevision>,
    scheme: &ProvScheme,
    number: u32,
    configuration: &Value,
    changes: &str,
) -> Result<(), VersionStoreError> {
    let Some(revision) = to_revision(scheme, number, configuration, changes) else {
        return Err(VersionStoreError::Kube(kube::Error::Service(
            "the scheme has no uid; it was not read from the API server".into(),
        )));
    };
    match crate::controller::strict::create(api, &revision).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let name = revision_name(&scheme.name_any(), number);
            let existing = api.get(&name).await?;
            let hash = history::content_hash(configuration);
            match from_revision(&existing) {
                Some(stored) if stored.hash == hash => Ok(()),
                other => Err(VersionStoreError::Conflict {
                    name,
                    hash: other.map(|s| s.hash).unwrap_or_default(),
                }),
            }
        }
        Err(error) => Err(error.into()),
    }
}

/// Deletes version `number` of `scheme`; an already deleted one counts as deleted.
///
/// # Errors
///
/// API errors other than 404.
pub async fn delete(
    api: &Api<ControllerRevision>,
    scheme: &str,
    number: u32,
) -> Result<(), kube::Error> {
    match api
        .delete(&revision_name(scheme, number), &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DeletionPolicy, UpdateWindow};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn spec() -> ProvSchemeSpec {
        serde_json::from_value(json!({
            "imageVersionSpecRef": "win11-prepared",
            "hostingUnitRef": "lab",
            "identityPoolRef": "pool",
            "networkMapping": {"0": "XDHyp:\\HostingUnits\\lab\\lan.network"},
            "vmCpuCount": 1,
            "vmMemoryMB": 1024,
        }))
        .expect("valid spec")
    }

    fn scheme() -> ProvScheme {
        let mut scheme = ProvScheme::new("desktops", spec());
        scheme.metadata.namespace = Some("ns".into());
        scheme.metadata.uid = Some("uid-1".into());
        scheme
    }

    fn stored(number: u32, spec: &ProvSchemeSpec) -> StoredConfiguration {
        let config = configuration(spec).expect("serializes");
        let mut revision = to_revision(&scheme(), number, &config, "x").expect("has uid");
        revision.metadata.creation_timestamp = Some(Time(
            Timestamp::from_second(i64::from(number)).expect("valid"),
        ));
        from_revision(&revision).expect("readable")
    }

    #[test]
    fn configuration_drops_the_non_configuration_fields() {
        let mut a = spec();
        let base = configuration(&a).expect("serializes");
        a.machine_count = 5;
        a.max_versions = 3;
        a.deletion_policy = DeletionPolicy::Retain;
        a.update_window = Some(UpdateWindow {
            start_time: "2026-11-28T22:00:00Z".into(),
            duration_minutes: -1,
        });
        assert_eq!(configuration(&a).expect("serializes"), base);
        for field in NON_CONFIGURATION_FIELDS {
            assert!(base.get(field).is_none(), "{field}");
        }
        a.size.vm_cpu_count = Some(2);
        assert_ne!(configuration(&a).expect("serializes"), base);
    }

    #[test]
    fn revisions_round_trip_with_owner_label_and_hash() {
        let config = configuration(&spec()).expect("serializes");
        let revision = to_revision(&scheme(), 3, &config, "vmCpuCount 1 -> 2").expect("uid");
        assert_eq!(revision.metadata.name.as_deref(), Some("desktops-v3"));
        assert_eq!(revision.revision, 3);
        assert_eq!(
            revision.labels().get(LABEL_PROVSCHEME).map(String::as_str),
            Some("desktops")
        );
        let owner = &revision.metadata.owner_references.as_ref().expect("owned")[0];
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.kind, "ProvScheme");
        let data = &revision.data.as_ref().expect("data").0;
        assert_eq!(data["apiVersion"], "mcs.imaging.dev/v1alpha1");
        assert_eq!(data["hash"], json!(history::content_hash(&config)));
        let back = from_revision(&revision).expect("readable");
        assert_eq!(back.number, 3);
        assert_eq!(back.configuration, config);
        assert_eq!(back.changes.as_deref(), Some("vmCpuCount 1 -> 2"));
    }

    #[test]
    fn a_scheme_without_uid_cannot_own_a_revision() {
        let mut s = scheme();
        s.metadata.uid = None;
        assert!(to_revision(&s, 1, &json!({}), "").is_none());
    }

    #[test]
    fn seed_examples_as_version_decisions() {
        let v1 = spec();
        let mut history = vec![];
        let first = decide(
            &history,
            None,
            0,
            &configuration(&v1).expect("ok"),
            99,
            &BTreeSet::new(),
        )
        .expect("plans");
        assert_eq!(first.plan.decision(), Decision::New(1));
        assert_eq!(first.changes, INITIAL_CHANGES);
        history.push(stored(1, &v1));

        // Set-ProvScheme -VMCpuCount 2: version 2.
        let mut v2 = v1.clone();
        v2.size.vm_cpu_count = Some(2);
        let second = decide(
            &history,
            Some(1),
            1,
            &configuration(&v2).expect("ok"),
            99,
            &BTreeSet::new(),
        )
        .expect("plans");
        assert_eq!(second.plan.decision(), Decision::New(2));
        assert_eq!(second.changes, "vmCpuCount 1 -> 2");
        history.push(stored(2, &v2));

        // Back to the configuration of version 1: a revert, no new number.
        let back = decide(
            &history,
            Some(2),
            2,
            &configuration(&v1).expect("ok"),
            99,
            &BTreeSet::new(),
        )
        .expect("plans");
        assert_eq!(back.plan.decision(), Decision::Revert(1));
        assert_eq!(back.changes, "reverted to version 1");

        // Only the scale changed: unchanged.
        let mut scaled = v2.clone();
        scaled.machine_count = 7;
        let same = decide(
            &history,
            Some(2),
            2,
            &configuration(&scaled).expect("ok"),
            99,
            &BTreeSet::new(),
        )
        .expect("plans");
        assert!(same.plan.is_noop());
    }

    #[test]
    fn pruning_keeps_referenced_versions_and_numbers_survive() {
        let mut specs = vec![];
        for cpu in 1..=3 {
            let mut s = spec();
            s.size.vm_cpu_count = Some(cpu);
            specs.push(s);
        }
        let history: Vec<_> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| stored(u32::try_from(i + 1).expect("small"), s))
            .collect();
        let mut next = spec();
        next.size.vm_cpu_count = Some(9);
        let referenced = BTreeSet::from([1]);
        let change = decide(
            &history,
            Some(3),
            3,
            &configuration(&next).expect("ok"),
            2,
            &referenced,
        )
        .expect("plans");
        assert_eq!(change.plan.decision(), Decision::New(4));
        assert_eq!(change.plan.delete(), &[2, 3]);
        // A highest number recorded on the scheme wins over what is stored.
        let change = decide(
            &history[..1],
            Some(1),
            7,
            &configuration(&next).expect("ok"),
            99,
            &BTreeSet::new(),
        )
        .expect("plans");
        assert_eq!(change.plan.decision(), Decision::New(8));
        // Nothing prunable: the SDK's error.
        let error = decide(
            &history[..1],
            Some(1),
            1,
            &configuration(&next).expect("ok"),
            1,
            &BTreeSet::from([1]),
        )
        .expect_err("cannot prune");
        assert!(matches!(
            error,
            HistoryError::ProvisioningSchemeVersionMaximumExceeded { .. }
        ));
    }

    #[test]
    fn summaries_are_newest_first_and_bounded() {
        let history: Vec<_> = (1..=12).map(|n| stored(n, &spec())).collect();
        let out = summaries(&history);
        assert_eq!(out.len(), STATUS_VERSIONS);
        assert_eq!(out[0].number, 12);
        assert_eq!(out[9].number, 3);
    }

    #[test]
    fn recorded_highest_is_the_max_of_annotation_and_status() {
        let mut s = scheme();
        assert_eq!(recorded_highest(&s), 0);
        s.metadata.annotations = Some(BTreeMap::from([(
            ANNOTATION_HIGHEST_VERSION.to_owned(),
            "5".to_owned(),
        )]));
        assert_eq!(recorded_highest(&s), 5);
        s.status = Some(crate::api::ProvSchemeStatus {
            highest_version: Some(9),
            ..Default::default()
        });
        assert_eq!(recorded_highest(&s), 9);
    }
}
