//! Writing `.status` with server-side apply: one field manager per controller.

use kube::api::{Api, Patch};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The field manager of one controller, e.g. `mcs-operator/provscheme`.
pub fn field_manager(controller: &str) -> String {
    format!("mcs-operator/{controller}")
}

/// Applies `status` to the object's status subresource as `manager` (server-side apply, forced:
/// the controller is the only writer of the fields it sends). Fields the manager sent before
/// and no longer sends are removed by the API server.
pub async fn apply_status<K, S>(
    api: &Api<K>,
    obj: &K,
    manager: &str,
    status: &S,
) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": { "name": obj.name_any() },
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &super::strict::apply(manager),
        &Patch::Apply(&body),
    )
    .await
}
