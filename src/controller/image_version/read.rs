//! Gathers what a reconcile of an image version decides on: its specs and the schemes using
//! them from the shared caches, and its number (assigned once, through the API).

use std::collections::BTreeSet;

use kube::ResourceExt;
use kube::api::ListParams;

use super::ANNOTATION_LAST_VERSION;
use super::decide::{Counter, next_version};
use crate::api::{ImageDefinition, ImageStatus, ImageVersion, ImageVersionSpec};
use crate::controller::image_version_spec::{self, schemes_using};
use crate::controller::{Context, ControllerError};

/// The namespace of `version`.
pub fn namespace_of(version: &ImageVersion) -> Result<String, ControllerError> {
    version.namespace().ok_or(ControllerError::MissingMetadata {
        kind: "ImageVersion",
        field: "namespace",
    })
}

/// What a version's status is made from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The version's namespace.
    pub namespace: String,
    /// The names of its specs.
    pub specs: BTreeSet<String>,
    /// Their `imageVersionSpecStatus`es.
    pub statuses: Vec<ImageStatus>,
    /// How many provisioning schemes use one of them.
    pub scheme_count: i32,
}

/// Reads the specs of `version` and the schemes using them from the caches.
pub fn observe(context: &Context, version: &ImageVersion) -> Result<Observed, ControllerError> {
    let namespace = namespace_of(version)?;
    let name = version.name_any();
    let specs: Vec<_> = context
        .stores
        .specs
        .in_namespace(&namespace)
        .into_iter()
        .filter(|s| s.spec.image_version_ref == name)
        .collect();
    let statuses = specs
        .iter()
        .map(|s| {
            s.status
                .as_ref()
                .map(|st| st.image_version_spec_status)
                .unwrap_or_default()
        })
        .collect();
    let specs: BTreeSet<String> = specs.iter().map(|s| s.name_any()).collect();
    let schemes = context.stores.schemes.in_namespace(&namespace);
    Ok(Observed {
        scheme_count: schemes_using(&specs, schemes.iter().map(|s| &**s)),
        specs,
        statuses,
        namespace,
    })
}

/// The version's number: the one it has, else one assigned now (see the module docs of
/// [`super`]); `None` when the definition is missing.
///
/// Assigning reads through the API (the version itself, the definition's counter and the
/// definition's versions): it happens once per version, and the counter is advanced with an
/// optimistic-concurrency replace, which must start from a fresh read.
pub async fn number(
    context: &Context,
    namespace: &str,
    version: &ImageVersion,
) -> Result<Option<i64>, ControllerError> {
    if let Some(number) = version.status.as_ref().and_then(|s| s.version_number) {
        return Ok(Some(number));
    }
    let versions = context.api::<ImageVersion>(namespace);
    let fresh = versions.get_opt(&version.name_any()).await?;
    if let Some(number) = fresh
        .as_ref()
        .and_then(|v| v.status.as_ref())
        .and_then(|s| s.version_number)
    {
        return Ok(Some(number));
    }
    let uid = version.uid().ok_or(ControllerError::MissingMetadata {
        kind: "ImageVersion",
        field: "uid",
    })?;
    let definitions = context.api::<ImageDefinition>(namespace);
    let definition_name = &version.spec.image_definition_ref;
    for _ in 0..16 {
        let Some(mut definition) = definitions.get_opt(definition_name).await? else {
            return Ok(None);
        };
        let highest = versions
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|v| v.spec.image_definition_ref == *definition_name)
            .filter_map(|v| v.status.as_ref().and_then(|s| s.version_number))
            .max();
        let counter = Counter::parse(
            definition
                .annotations()
                .get(ANNOTATION_LAST_VERSION)
                .map(String::as_str),
        );
        let latest = definition.status.as_ref().and_then(|s| s.latest_version);
        let (number, write) = next_version(&counter, latest, highest, &uid);
        let Some(write) = write else {
            return Ok(Some(number));
        };
        definition
            .annotations_mut()
            .insert(ANNOTATION_LAST_VERSION.to_string(), write.render());
        match crate::controller::strict::replace(&definitions, &definition.name_any(), &definition)
            .await
        {
            Ok(_) => return Ok(Some(number)),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                tracing::debug!(
                    version = version.name_any(),
                    "version counter moved; retrying"
                );
            }
            Err(error) => return Err(error.into()),
        }
    }
    Err(ControllerError::Kube(kube::Error::Service(
        "the version counter kept changing (16 conflicts in a row)".into(),
    )))
}

/// Who uses one of the specs of `version`, for its deletion: the caches first (a version they
/// show in use stays, without a request), and when they show none, fresh lists through the API
/// (a spec, scheme or machine created a moment ago may not be cached yet).
pub async fn users(
    context: &Context,
    namespace: &str,
    version: &str,
) -> Result<Vec<String>, ControllerError> {
    let cached_specs: BTreeSet<String> = context
        .stores
        .specs
        .in_namespace(namespace)
        .iter()
        .filter(|s| s.spec.image_version_ref == version)
        .map(|s| s.name_any())
        .collect();
    let cached = image_version_spec::users(&context.stores, namespace, &cached_specs);
    if !cached.is_empty() {
        return Ok(cached);
    }
    let specs: BTreeSet<String> = context
        .api::<ImageVersionSpec>(namespace)
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|s| s.spec.image_version_ref == version)
        .map(|s| s.name_any())
        .collect();
    let (schemes, machines) = image_version_spec::schemes_and_machines(context, namespace).await?;
    Ok(image_version_spec::users_of_specs(
        &specs, &schemes, &machines,
    ))
}
