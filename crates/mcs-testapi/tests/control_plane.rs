//! The real control plane of `mcs_testapi::control_plane` starts from `KUBEBUILDER_ASSETS`,
//! serves a client with its admin kubeconfig, and stops cleanly. Skipped (with a note) when
//! the variable does not name a folder with the binaries.

use std::time::Instant;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use mcs_testapi::control_plane::{ControlPlane, ControlPlaneConfig};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_serves_and_collects_garbage() {
    let Some(config) = ControlPlaneConfig::from_env() else {
        eprintln!("KUBEBUILDER_ASSETS does not name etcd, kube-apiserver and kubectl: skipped");
        return;
    };
    let started = Instant::now();
    let mut plane = tokio::task::spawn_blocking(move || ControlPlane::start(&config))
        .await
        .expect("join")
        .expect("control plane starts");
    eprintln!(
        "control plane at {} ready in {:.1} s",
        plane.url(),
        started.elapsed().as_secs_f64()
    );
    let client = plane.client().await.expect("client");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.iter().any(|n| n == "kube-system"), "{names:?}");

    // Owner-reference garbage collection needs the controller manager.
    if plane.has_controller_manager() {
        let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        let owner = maps
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "owner"}})).expect("owner"),
            )
            .await
            .expect("owner created");
        let uid = owner.metadata.uid.expect("uid");
        maps.create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "dependent", "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
                ]}}),
            )
            .expect("dependent"),
        )
        .await
        .expect("dependent created");
        maps.delete("owner", &DeleteParams::background())
            .await
            .expect("owner deleted");
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        while maps.get_opt("dependent").await.expect("get").is_some() {
            assert!(Instant::now() < deadline, "the dependent was not collected");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let dir = plane.dir().to_owned();
    plane.stop();
    drop(plane);
    assert!(!dir.exists(), "the control plane's folder is removed");
}
