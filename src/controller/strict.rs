//! Writes with strict field validation (`fieldValidation=Strict`): a field the API server does
//! not know, or a duplicate field, fails the write with 422 instead of being dropped with a
//! warning, so a field-name typo in the operator shows up in tests, not in users' clusters.
//!
//! kube's `PatchParams` carries the directive; `PostParams` (create and replace) does not, so
//! those two requests are built here with the parameter added.

use kube::api::{Api, PatchParams, PostParams};
use kube::core::Request;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Patch parameters for a plain (merge or JSON) patch, with strict field validation.
pub fn patch() -> PatchParams {
    PatchParams::default().validation_strict()
}

/// Patch parameters for a forced server-side apply by `manager`, with strict field validation.
pub fn apply(manager: &str) -> PatchParams {
    PatchParams::apply(manager).force().validation_strict()
}

/// Creates `object` (POST) with strict field validation.
pub async fn create<K>(api: &Api<K>, object: &K) -> Result<K, kube::Error>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let body = serde_json::to_vec(object).map_err(kube::Error::SerdeError)?;
    let mut request = Request::new(api.resource_url())
        .create(&PostParams::default(), body)
        .map_err(kube::Error::BuildRequest)?;
    if let Ok(uri) = strict_uri(&request.uri().to_string()).parse() {
        *request.uri_mut() = uri;
    }
    api.clone().into_client().request(request).await
}

/// Replaces object `name` (PUT) with strict field validation.
pub async fn replace<K>(api: &Api<K>, name: &str, object: &K) -> Result<K, kube::Error>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let body = serde_json::to_vec(object).map_err(kube::Error::SerdeError)?;
    let mut request = Request::new(api.resource_url())
        .replace(name, &PostParams::default(), body)
        .map_err(kube::Error::BuildRequest)?;
    if let Ok(uri) = strict_uri(&request.uri().to_string()).parse() {
        *request.uri_mut() = uri;
    }
    api.clone().into_client().request(request).await
}

/// `uri` with `fieldValidation=Strict` added to its query.
fn strict_uri(uri: &str) -> String {
    let separator = match uri.find('?') {
        None => "?",
        Some(at) if at + 1 == uri.len() => "",
        Some(_) => "&",
    };
    format!("{uri}{separator}fieldValidation=Strict")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directive_is_added_to_any_query() {
        for (uri, expected) in [
            (
                "/api/v1/namespaces/a/configmaps",
                "/api/v1/namespaces/a/configmaps?fieldValidation=Strict",
            ),
            (
                "/api/v1/namespaces/a/configmaps?",
                "/api/v1/namespaces/a/configmaps?fieldValidation=Strict",
            ),
            (
                "/api/v1/namespaces/a/configmaps?fieldManager=x",
                "/api/v1/namespaces/a/configmaps?fieldManager=x&fieldValidation=Strict",
            ),
        ] {
            assert_eq!(strict_uri(uri), expected);
        }
    }
}
