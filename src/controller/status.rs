//! Writing `.status` with server-side apply: one field manager per controller.

use kube::api::{Api, Patch};
use kube::{Resource, ResourceExt};
use mcs_domain::task::TaskStatus;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The field manager of one controller, e.g. `mcs-operator/provscheme`.
pub fn field_manager(controller: &str) -> String {
    format!("mcs-operator/{controller}")
}

/// The report step of a pipeline: applies `status` (as `controller`'s field manager) when it
/// differs from `current`, then publishes `event`, which the decision derived from the same
/// change. Nothing is written or published when the status is unchanged.
pub async fn report<K, S>(
    context: &super::Context,
    obj: &K,
    controller: &str,
    current: Option<&S>,
    status: &S,
    event: Option<kube::runtime::events::Event>,
) -> Result<(), super::ControllerError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if current == Some(status) {
        return Ok(());
    }
    let namespace = obj.namespace().unwrap_or_default();
    let api = context.api::<K>(&namespace);
    apply_status(&api, obj, &field_manager(controller), status).await?;
    if let Some(event) = event {
        super::events::publish_event(context, obj, event).await;
    }
    Ok(())
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
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    S: Serialize,
{
    let status = serde_json::to_value(status).map_err(kube::Error::SerdeError)?;
    let ended = ended_task(obj, &status);
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": { "name": obj.name_any() },
        "status": status,
    });
    let written = api
        .patch_status(
            &obj.name_any(),
            &super::strict::apply(manager),
            &Patch::Apply(&body),
        )
        .await?;
    if let Some(task) = ended {
        let duration = task
            .date_finished
            .unwrap_or(task.last_update_time)
            .duration_since(task.date_started);
        crate::metrics::global().task_ended(
            &K::kind(&()),
            task.task_type.as_str(),
            task.task_state.as_str(),
            duration.try_into().unwrap_or_default(),
        );
    }
    Ok(written)
}

/// The task `status` ends: one in a final state that `obj` does not already show as ended.
fn ended_task<K: Serialize>(obj: &K, status: &serde_json::Value) -> Option<TaskStatus> {
    let task: TaskStatus = serde_json::from_value(status.get("task")?.clone()).ok()?;
    if !task.is_terminal() {
        return None;
    }
    let before = serde_json::to_value(obj).ok()?;
    let previous = before
        .pointer("/status/task")
        .and_then(|t| serde_json::from_value::<TaskStatus>(t.clone()).ok());
    let already_ended = previous.is_some_and(|p| p.task_id == task.task_id && p.is_terminal());
    (!already_ended).then_some(task)
}

/// Whether `new` says more than `old` than its task's clock moving on (see
/// [`TaskStatus::without_clock`]): a status that only ticked is not worth a write.
pub fn differs_beyond_clock<S: Clone + PartialEq>(
    old: &S,
    new: &S,
    task: fn(&mut S) -> Option<&mut TaskStatus>,
) -> bool {
    let quiet = |status: &S| {
        let mut copy = status.clone();
        if let Some(t) = task(&mut copy) {
            *t = t.without_clock();
        }
        copy
    };
    quiet(old) != quiet(new)
}
