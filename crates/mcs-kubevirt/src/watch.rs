//! Which ProvVMs to look at again: a watch of the VirtualMachines the backend wrote, yielding
//! the owner of each one whose `status.printableStatus` changed (or that was deleted).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;

use crate::objects;
use crate::status;

/// How long to wait before looking again for a KubeVirt API that is not served.
const RETRY: Duration = Duration::from_secs(30);

/// The owners (`namespace`, `name`) of kind `kind` (see [`objects::ANNOTATION_OWNER`]) of the
/// VirtualMachines labelled as the operator's, in `namespace` (all namespaces when `None`),
/// each time a VirtualMachine's printable status changes or it is deleted. Nothing is read
/// before `start` resolves (a KubeVirt connection is used); while the cluster does not serve
/// VirtualMachines the stream waits (looking again every 30 s) and yields nothing; watch errors
/// are retried with backoff, never yielded.
pub fn printable_status_changes(
    start: impl Future<Output = ()> + Send + 'static,
    client: Client,
    namespace: Option<String>,
    kind: String,
) -> impl Stream<Item = (String, String)> + Send + 'static {
    let ar = objects::virtual_machines();
    let api: Api<DynamicObject> = match &namespace {
        Some(ns) => Api::namespaced_with(client, ns, &ar),
        None => Api::all_with(client, &ar),
    };
    let served = api.clone();
    let ready = async move {
        start.await;
        loop {
            match served.list(&ListParams::default().limit(1)).await {
                Ok(_) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "VirtualMachines not watchable yet");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    };
    let config = watcher::Config::default().labels(&format!(
        "{}={}",
        objects::LABEL_MANAGED_BY,
        objects::MANAGER
    ));
    let mut seen: HashMap<String, Option<String>> = HashMap::new();
    futures::stream::once(ready)
        .flat_map(move |()| watcher(api.clone(), config.clone()).default_backoff())
        .filter_map(move |event| {
            let changed = match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                    changed(&mut seen, &o, false)
                }
                Ok(watcher::Event::Delete(o)) => changed(&mut seen, &o, true),
                Ok(_) => None,
                Err(e) => {
                    tracing::debug!(error = %e, "VirtualMachine watch");
                    None
                }
            };
            futures::future::ready(
                changed.and_then(|(k, ns, name)| (k == kind).then_some((ns, name))),
            )
        })
}

/// The owner of `vm` when its printable status differs from the one last seen (`deleted`: it
/// is gone); records what it saw.
fn changed(
    seen: &mut HashMap<String, Option<String>>,
    vm: &DynamicObject,
    deleted: bool,
) -> Option<(String, String, String)> {
    let value: Value = serde_json::to_value(vm).ok()?;
    let uid = value["metadata"]["uid"].as_str()?.to_string();
    let printable = status::printable_status(&value);
    let differs = if deleted {
        seen.remove(&uid);
        true
    } else {
        seen.insert(uid, printable.clone()) != Some(printable)
    };
    if differs {
        objects::owner_of(&value)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vm(printable: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "lab-vdi-001", "namespace": "vms", "uid": "u-1",
                         "annotations": {objects::ANNOTATION_OWNER: "ProvVM/vms/vdi-001"}},
            "status": {"printableStatus": printable},
        }))
        .expect("vm")
    }

    #[test]
    fn only_changes_of_the_printable_status_and_deletions_count() {
        let mut seen = HashMap::new();
        let owner = Some(("ProvVM".into(), "vms".into(), "vdi-001".into()));
        assert_eq!(changed(&mut seen, &vm("Provisioning"), false), owner);
        assert_eq!(changed(&mut seen, &vm("Provisioning"), false), None);
        assert_eq!(changed(&mut seen, &vm("Running"), false), owner);
        assert_eq!(changed(&mut seen, &vm("Running"), true), owner);
        assert!(seen.is_empty());
    }
}
