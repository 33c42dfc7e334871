//! The startup check: are the CRDs this binary was built with installed and established?
//!
//! A missing CRD, one not yet `Established`, or one whose schema differs from this binary's
//! (its [`ANNOTATION_SCHEMA_HASH`] differs) makes the operator wait with `/readyz` failing and
//! one clear log line, instead of logging watch errors forever.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client};

use crate::api::{ANNOTATION_OPERATOR_VERSION, ANNOTATION_SCHEMA_HASH, all_crds};

/// What is wrong with one installed CRD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CrdProblem {
    /// Not installed.
    Missing {
        /// The CRD's name.
        name: String,
    },
    /// Installed but not (yet) `Established`.
    NotEstablished {
        /// The CRD's name.
        name: String,
    },
    /// Installed with another schema than this binary's.
    Different {
        /// The CRD's name.
        name: String,
        /// The operator version that generated the installed CRD, when annotated.
        installed_version: Option<String>,
    },
}

impl std::fmt::Display for CrdProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing { name } => write!(f, "{name} is not installed"),
            Self::NotEstablished { name } => write!(f, "{name} is not established yet"),
            Self::Different {
                name,
                installed_version,
            } => write!(
                f,
                "{name} has another schema (installed from mcs-operator {}, this binary is {})",
                installed_version.as_deref().unwrap_or("unknown"),
                env!("CARGO_PKG_VERSION")
            ),
        }
    }
}

/// Compares the installed CRDs (`None`: not found) with the expected ones, pairwise.
pub fn compare(
    expected: &[CustomResourceDefinition],
    installed: &[Option<CustomResourceDefinition>],
) -> Vec<CrdProblem> {
    expected
        .iter()
        .zip(installed)
        .filter_map(|(want, have)| {
            let name = want.metadata.name.clone().unwrap_or_default();
            let Some(have) = have else {
                return Some(CrdProblem::Missing { name });
            };
            let annotation = |crd: &CustomResourceDefinition, key: &str| {
                crd.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(key))
                    .cloned()
            };
            if annotation(have, ANNOTATION_SCHEMA_HASH) != annotation(want, ANNOTATION_SCHEMA_HASH)
            {
                return Some(CrdProblem::Different {
                    name,
                    installed_version: annotation(have, ANNOTATION_OPERATOR_VERSION),
                });
            }
            let established = have
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|conditions| {
                    conditions
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            (!established).then_some(CrdProblem::NotEstablished { name })
        })
        .collect()
}

/// One line saying what is wrong and what to do, for the log and `/readyz`.
pub fn summary(problems: &[CrdProblem]) -> String {
    let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
    format!(
        "the CRDs of mcs-operator {} are not ready: {}; install them with `mcs-operator crd | kubectl apply --server-side -f -` (or the chart's `crds.install`)",
        env!("CARGO_PKG_VERSION"),
        list.join("; ")
    )
}

/// Reads the installed CRDs and compares them with this binary's.
pub async fn check(client: &Client) -> Result<Vec<CrdProblem>, kube::Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let expected = all_crds();
    let mut installed = Vec::with_capacity(expected.len());
    for crd in &expected {
        installed.push(
            api.get_opt(crd.metadata.name.as_deref().unwrap_or(""))
                .await?,
        );
    }
    Ok(compare(&expected, &installed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        CustomResourceDefinitionCondition, CustomResourceDefinitionStatus,
    };

    fn established(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
        crd.status = Some(CustomResourceDefinitionStatus {
            conditions: Some(vec![CustomResourceDefinitionCondition {
                type_: "Established".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        crd
    }

    #[test]
    fn installed_and_established_crds_pass() {
        let expected = all_crds();
        let installed: Vec<_> = expected
            .iter()
            .cloned()
            .map(established)
            .map(Some)
            .collect();
        assert_eq!(compare(&expected, &installed), vec![]);
    }

    #[test]
    fn missing_unestablished_and_different_crds_are_named() {
        let expected = all_crds();
        let mut installed: Vec<_> = expected
            .iter()
            .cloned()
            .map(established)
            .map(Some)
            .collect();
        installed[0] = None;
        installed[1].as_mut().expect("crd").status = None;
        let older = installed[2].as_mut().expect("crd");
        older
            .metadata
            .annotations
            .as_mut()
            .expect("annotations")
            .insert(ANNOTATION_SCHEMA_HASH.into(), "0ld".into());
        older
            .metadata
            .annotations
            .as_mut()
            .expect("annotations")
            .insert(ANNOTATION_OPERATOR_VERSION.into(), "0.0.9".into());
        let problems = compare(&expected, &installed);
        assert_eq!(problems.len(), 3, "{problems:?}");
        let line = summary(&problems);
        assert!(
            line.contains("hypervisorconnections.mcs.imaging.dev is not installed"),
            "{line}"
        );
        assert!(
            line.contains("hostingunits.mcs.imaging.dev is not established yet"),
            "{line}"
        );
        assert!(
            line.contains("identitypools.mcs.imaging.dev has another schema (installed from mcs-operator 0.0.9"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn the_schema_hash_follows_the_schema() {
        let mut crd = all_crds().remove(0);
        let before = crate::api::schema_hash(&crd);
        crd.spec.versions[0].served = !crd.spec.versions[0].served;
        assert_ne!(before, crate::api::schema_hash(&crd));
    }
}
