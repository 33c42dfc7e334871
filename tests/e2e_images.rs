//! End-to-end tests of the image controllers (HypervisorConnection, HostingUnit,
//! ImageDefinition, ImageVersion, ImageVersionSpec) on the test API server, with the Local
//! backend doing real disk work on 16 MiB qcow2 images.
//!
//! Needs `qemu-img` and `qemu-io` (Debian: `qemu-utils`).

mod support;

use futures::FutureExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event as KubeEvent;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use mcs_backend::{Backend, BackendError, BoxFuture, Operation, OperationId, OperationStatus};
use mcs_operator::api::{
    ANNOTATION_CANCEL, ANNOTATION_RETRY, HostingUnit, HypervisorConnection, ImageDefinition,
    ImageStatus, ImageVersion, ImageVersionSpec, ProvScheme, TaskState, condition_type,
};
use mcs_operator::controller::status::{apply_status, field_manager};
use mcs_operator::controller::tasks::WAITING_FOR_SLOT;
use mcs_operator::controller::{
    Context, OperatorConfig, connection, hosting_unit, image_definition, image_version,
    image_version_spec,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use support::cluster::Cluster;
use support::run;

const MASTER: &str = r"XDHyp:\HostingUnits\lab\win11.vm\base.snapshot";
const LAN: &str = r"XDHyp:\HostingUnits\lab\lan.network";
const SECRET_VALUE: &str = "s3cr3t-VALUE-7f3a9c";
const TIMEOUT: Duration = Duration::from_secs(30);

/// A running environment; the controllers stop when it is dropped.
struct Env {
    cluster: Cluster,
    client: Client,
    images: PathBuf,
    fast: PathBuf,
    _dir: tempfile::TempDir,
    controllers: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Checks that the first MiB of `image` holds the pattern 0xab (the master's snapshot).
fn assert_snapshot_content(image: &Path) {
    let path = image.to_string_lossy();
    let out = run(
        "qemu-io",
        &["-r", "-f", "qcow2", "-c", "read -P 0xab 0 1M", &path],
    );
    assert!(
        !out.contains("Pattern verification failed"),
        "{path} does not hold the snapshot's data: {out}"
    );
    let out = run("qemu-img", &["info", "--output=json", &path]);
    let info: Value = serde_json::from_str(&out).expect("qemu-img info JSON");
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 16 << 20);
    assert!(info.get("backing-filename").is_none(), "standalone image");
}

fn config(namespace: &str, max_tasks: usize) -> OperatorConfig {
    OperatorConfig {
        namespace: Some(namespace.into()),
        concurrency: 8,
        max_concurrent_tasks: max_tasks,
        progress_interval: Duration::from_millis(200),
        resync: Duration::from_secs(300),
    }
}

impl Env {
    async fn start(test: &str) -> Env {
        let cluster = Cluster::start(test).await;
        let client = cluster.client.clone();
        let dir = tempfile::tempdir().expect("tempdir");
        let images = dir.path().join("images");
        let fast = dir.path().join("fast");
        std::fs::create_dir_all(&images).expect("images");
        std::fs::create_dir_all(fast.join("lab")).expect("fast/lab");
        // A master with a snapshot "base" holding 0xab, and different data written after it.
        let master = images.join("win11.qcow2");
        let m = master.to_string_lossy().to_string();
        run("qemu-img", &["create", "-q", "-f", "qcow2", &m, "16M"]);
        run("qemu-io", &["-f", "qcow2", "-c", "write -P 0xab 0 1M", &m]);
        run("qemu-img", &["snapshot", "-c", "base", &m]);
        run("qemu-io", &["-f", "qcow2", "-c", "write -P 0xcd 0 1M", &m]);
        let env = Env {
            cluster,
            client,
            images,
            fast,
            _dir: dir,
            controllers: None,
        };
        env.base_objects().await;
        env
    }

    /// Runs the image controllers on `context`.
    fn run_controllers(&mut self, context: Arc<Context>) {
        self.stop();
        self.controllers = Some(tokio::spawn(async move {
            mcs_operator::controller::run_controllers(
                context.clone(),
                vec![
                    connection::run(context.clone()).boxed(),
                    hosting_unit::run(context.clone()).boxed(),
                    image_definition::run(context.clone()).boxed(),
                    image_version::run(context.clone()).boxed(),
                    image_version_spec::run(context).boxed(),
                ],
            )
            .await;
        }));
    }

    fn stop(&mut self) {
        if let Some(handle) = self.controllers.take() {
            handle.abort();
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.cluster.namespace)
    }

    async fn create<K>(&self, value: Value) -> K
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + Serialize
            + std::fmt::Debug,
    {
        let object: K = serde_json::from_value(value).expect("valid object");
        self.api::<K>()
            .create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("create {}: {e}", object.name_any()))
    }

    async fn base_objects(&self) {
        self.create::<Secret>(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
            "stringData": {"password": SECRET_VALUE}
        }))
        .await;
        self.create::<HypervisorConnection>(json!({
            "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "HypervisorConnection",
            "metadata": {"name": "local"},
            "spec": {"type": "Local",
                "local": {"storageRoots": [
                    {"name": "images", "path": self.images.to_string_lossy()},
                    {"name": "fast", "path": self.fast.to_string_lossy()}
                ]},
                "credentialsSecretRef": {"name": "creds"}}
        }))
        .await;
        self.create::<HostingUnit>(json!({
            "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "HostingUnit",
            "metadata": {"name": "lab"},
            "spec": {"connectionRef": "local",
                "storages": [{"name": "primary", "root": "images"},
                             {"name": "secondary", "root": "fast", "path": "lab"}],
                "networks": [{"name": "lan"}],
                "serviceOfferings": [{"name": "small", "cpuCount": 2, "memoryMB": 2048}]}
        }))
        .await;
        self.create::<ImageDefinition>(json!({
            "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ImageDefinition",
            "metadata": {"name": "win11"},
            "spec": {"osType": "Windows", "vdaSessionSupport": "SingleSession",
                "connections": [{"connectionRef": "local"}]}
        }))
        .await;
    }

    async fn version(&self, name: &str) {
        self.create::<ImageVersion>(json!({
            "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ImageVersion",
            "metadata": {"name": name},
            "spec": {"imageDefinitionRef": "win11"}
        }))
        .await;
    }

    async fn master(&self, name: &str, version: &str, unit: &str, path: &str) {
        self.create::<ImageVersionSpec>(json!({
            "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ImageVersionSpec",
            "metadata": {"name": name},
            "spec": {"imageVersionRef": version,
                "master": {"hostingUnitRef": unit, "masterImagePath": path}}
        }))
        .await;
    }

    async fn prepared(&self, name: &str, version: &str, source: &str) {
        self.create::<ImageVersionSpec>(json!({
            "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ImageVersionSpec",
            "metadata": {"name": name},
            "spec": {"imageVersionRef": version,
                "prepared": {"sourceSpecRef": source, "networkMapping": {"0": LAN},
                    "vmCpuCount": 2, "vmMemoryMB": 2048}}
        }))
        .await;
    }

    async fn wait<K>(&self, name: &str, what: &str, check: impl Fn(&K) -> bool) -> K
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let api = self.api::<K>();
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < TIMEOUT {
            if let Ok(Some(obj)) = api.get_opt(name).await {
                if check(&obj) {
                    return obj;
                }
                last = Some(obj);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{name}: timed out waiting for {what}; last seen: {last:#?}");
    }

    async fn wait_gone<K>(&self, name: &str)
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let start = Instant::now();
        while start.elapsed() < TIMEOUT {
            if self.api::<K>().get_opt(name).await.expect("get").is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{name} was not deleted");
    }

    async fn wait_task(&self, name: &str, state: TaskState) -> ImageVersionSpec {
        self.wait::<ImageVersionSpec>(name, &format!("task state {state}"), |s| {
            task_state(s) == Some(state)
        })
        .await
    }

    /// Reasons of the Events about `name`, in order.
    async fn event_reasons(&self, name: &str) -> Vec<String> {
        let mut events: Vec<KubeEvent> = self
            .api::<KubeEvent>()
            .list(&ListParams::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect();
        events.sort_by_key(|e| {
            e.event_time.as_ref().map(|t| t.0).or(e
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0))
        });
        events.into_iter().filter_map(|e| e.reason).collect()
    }

    /// Waits until an Event with `reason` about `name` exists; returns all reasons.
    async fn wait_event(&self, name: &str, reason: &str) -> Vec<String> {
        let start = Instant::now();
        loop {
            let reasons = self.event_reasons(name).await;
            if reasons.iter().any(|r| r == reason) {
                return reasons;
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "{name}: no event {reason} in {reasons:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn annotate(&self, name: &str, key: &str) {
        let patch = json!({"metadata": {"annotations": {key: "true"}}});
        self.api::<ImageVersionSpec>()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("annotate");
    }
}

fn task_state(spec: &ImageVersionSpec) -> Option<TaskState> {
    spec.status.as_ref()?.task.as_ref().map(|t| t.task_state)
}

fn spec_status(spec: &ImageVersionSpec) -> ImageStatus {
    spec.status
        .as_ref()
        .map(|s| s.image_version_spec_status)
        .unwrap_or_default()
}

fn condition<'a, K>(
    conditions: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    _of: &K,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

fn ready_reason(spec: &ImageVersionSpec) -> Option<String> {
    let status = spec.status.as_ref()?;
    condition(&status.conditions, spec, condition_type::READY).map(|c| c.reason.clone())
}

fn prepared_file(root: &Path, spec: &ImageVersionSpec) -> PathBuf {
    root.join("prepared")
        .join(format!("{}.qcow2", spec.uid().expect("uid")))
}

/// A backend whose operations never end: holds a slot of the task limit.
struct Stuck;

impl Backend for Stuck {
    fn kind(&self) -> &'static str {
        "Stuck"
    }

    fn start(&self, _op: Operation) -> BoxFuture<'_, Result<OperationId, BackendError>> {
        Box::pin(async { Ok(OperationId(uuid::Uuid::new_v4())) })
    }

    fn poll(&self, id: OperationId) -> BoxFuture<'_, Result<OperationStatus, BackendError>> {
        Box::pin(async move {
            Ok(OperationStatus {
                id,
                operation: "Stuck",
                phase: TaskState::ConsolidatingMasterImage,
                percent: 10,
                message: "stuck".into(),
                result: None,
            })
        })
    }

    fn cancel(&self, id: OperationId) -> BoxFuture<'_, Result<OperationStatus, BackendError>> {
        Box::pin(async move {
            Ok(OperationStatus {
                id,
                operation: "Stuck",
                phase: TaskState::Canceled,
                percent: 10,
                message: "canceled".into(),
                result: Some(Err(BackendError::Canceled)),
            })
        })
    }

    fn forget(&self, _id: OperationId) -> BoxFuture<'_, bool> {
        Box::pin(async { true })
    }
}

/// Occupies one slot of the context's task limit until `context.tasks.forget("blocker")`.
async fn block_a_slot(context: &Context) {
    let op = Operation::ResolveInventory(mcs_backend::InventoryRequest {
        hosting_unit: "none".into(),
        storages: vec![],
    });
    context
        .tasks
        .spawn("blocker", "blocker", Arc::new(Stuck), op)
        .await;
    let start = Instant::now();
    while context.tasks.free_slots() > 0 {
        assert!(start.elapsed() < TIMEOUT, "the blocker never took its slot");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_image_flow_to_finished() {
    let mut env = Env::start("full-image-flow-to-finished").await;
    env.run_controllers(Context::new(
        env.client.clone(),
        config(&env.cluster.namespace, 4),
    ));
    env.version("win11-v1").await;
    env.master("win11-v1-master", "win11-v1", "lab", MASTER)
        .await;
    env.prepared("win11-v1-prepared", "win11-v1", "win11-v1-master")
        .await;

    // The connection and the hosting unit resolve.
    let connection = env
        .wait::<HypervisorConnection>("local", "state On", |c| {
            c.status
                .as_ref()
                .is_some_and(|s| s.state == Some(mcs_operator::api::ConnectionState::On))
        })
        .await;
    assert!(
        connection
            .status
            .as_ref()
            .expect("status")
            .alerts
            .is_empty()
    );
    let unit = env
        .wait::<HostingUnit>("lab", "inventory", |u| {
            u.status
                .as_ref()
                .and_then(|s| s.inventory.as_ref())
                .is_some_and(|i| i.storages_found == 2 && i.master_images == 1)
        })
        .await;
    let inventory = unit
        .status
        .as_ref()
        .and_then(|s| s.inventory.clone())
        .expect("inventory");
    assert_eq!(inventory.snapshots, 1);
    assert_eq!(inventory.networks, 1);
    assert_eq!(inventory.service_offerings, 1);
    assert!(
        inventory
            .storages
            .iter()
            .all(|s| s.free_bytes.unwrap_or(0) > 0)
    );

    // The master spec resolves its snapshot.
    let master = env
        .wait::<ImageVersionSpec>("win11-v1-master", "Success", |s| {
            spec_status(s) == ImageStatus::Success
        })
        .await;
    let status = master.status.as_ref().expect("status");
    assert_eq!(
        status.master_image.as_deref(),
        Some(r"win11.vm\base.snapshot")
    );
    assert_eq!(status.disk_size_bytes, Some(16 << 20));
    assert_eq!(status.disk_size_gb, Some(1));
    assert_eq!(status.observed_generation, master.metadata.generation);

    // The prepared spec runs its task to Finished, with real disks on both storages.
    let prepared = env
        .wait_task("win11-v1-prepared", TaskState::Finished)
        .await;
    let status = prepared.status.clone().expect("status");
    let task = status.task.clone().expect("task");
    assert_eq!(task.task_progress, 100);
    assert!(!task.active);
    assert!(task.date_finished.is_some());
    assert!(task.date_finished >= Some(task.date_started));
    assert!(task.last_update_time >= task.date_started);
    assert!(task.active_elapsed_time >= 0);
    assert_eq!(task.task_expected_completion, None);
    assert_eq!(status.image_version_spec_status, ImageStatus::Success);
    assert_eq!(status.hosting_unit_name.as_deref(), Some("lab"));
    assert_eq!(status.disk_size_bytes, Some(16 << 20));
    let names: Vec<&str> = status.instances.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, vec!["primary", "secondary"]);
    assert!(status.instances.iter().all(|i| i.verified));
    assert_eq!(
        ready_reason(&prepared).as_deref(),
        Some("Finished"),
        "{:?}",
        status.conditions
    );
    assert_snapshot_content(&prepared_file(&env.images, &prepared));
    assert_snapshot_content(&prepared_file(&env.fast.join("lab"), &prepared));

    // Events mark every state the task passed.
    let reasons = env.wait_event("win11-v1-prepared", "Finished").await;
    for state in [
        "Processing",
        "LocatingResources",
        "ConsolidatingMasterImage",
        "ReplicatingMasterImage",
        "StoringImageVersionSpec",
        "Finished",
    ] {
        assert!(reasons.iter().any(|r| r == state), "{state} in {reasons:?}");
    }

    // The version got number 1 and aggregates Success; the definition reports it.
    let version = env
        .wait::<ImageVersion>("win11-v1", "Success with 2 specs", |v| {
            v.status.as_ref().is_some_and(|s| {
                s.image_version_status == ImageStatus::Success && s.specs_count == 2
            })
        })
        .await;
    assert_eq!(
        version.status.as_ref().and_then(|s| s.version_number),
        Some(1)
    );
    env.wait::<ImageDefinition>("win11", "latest 1", |d| {
        d.status
            .as_ref()
            .is_some_and(|s| s.latest_version == Some(1) && s.versions_count == 1)
    })
    .await;

    // `kubectl get imgspec` shows the state and the progress (the CRD's printer columns).
    let crd = Api::<CustomResourceDefinition>::all(env.client.clone())
        .get("imageversionspecs.mcs.imaging.dev")
        .await
        .expect("crd");
    let columns = crd.spec.versions[0]
        .additional_printer_columns
        .clone()
        .unwrap_or_default();
    let path_of = |name: &str| {
        columns
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.json_path.clone())
    };
    assert_eq!(path_of("State").as_deref(), Some(".status.task.taskState"));
    assert_eq!(
        path_of("Progress").as_deref(),
        Some(".status.task.taskProgress")
    );
    assert!(
        crd.spec
            .names
            .categories
            .unwrap_or_default()
            .contains(&"mcs".to_string())
    );
    let json = serde_json::to_value(&prepared).expect("json");
    assert_eq!(json["status"]["task"]["taskState"], "Finished");
    assert_eq!(json["status"]["task"]["taskProgress"], 100);

    // The Secret's value appears in no status and no event.
    let mut dump = String::new();
    for value in [
        serde_json::to_value(
            env.api::<HypervisorConnection>()
                .list(&ListParams::default())
                .await
                .expect("list")
                .items,
        ),
        serde_json::to_value(
            env.api::<HostingUnit>()
                .list(&ListParams::default())
                .await
                .expect("list")
                .items,
        ),
        serde_json::to_value(
            env.api::<ImageVersionSpec>()
                .list(&ListParams::default())
                .await
                .expect("list")
                .items,
        ),
        serde_json::to_value(
            env.api::<KubeEvent>()
                .list(&ListParams::default())
                .await
                .expect("list")
                .items,
        ),
    ] {
        dump.push_str(&value.expect("json").to_string());
    }
    assert!(!dump.contains(SECRET_VALUE), "the Secret's value leaked");
    let encoded = {
        use std::fmt::Write;
        let mut s = String::new();
        for b in SECRET_VALUE.bytes() {
            let _ = write!(s, "{b:02x}");
        }
        s
    };
    assert!(!dump.contains(&encoded));
    assert!(!dump.contains("czNjcjN0LVZBTFVF"), "no base64 of it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failure_states_from_bad_manifests() {
    let mut env = Env::start("failure-states-from-bad-manifests").await;
    env.run_controllers(Context::new(
        env.client.clone(),
        config(&env.cluster.namespace, 4),
    ));
    // A second connection that the definition does not use, and a hosting unit on it.
    env.create::<HypervisorConnection>(json!({
        "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "HypervisorConnection",
        "metadata": {"name": "other"},
        "spec": {"type": "Local", "local": {"storageRoots": [
            {"name": "images", "path": env.images.to_string_lossy()}]}}
    }))
    .await;
    env.create::<HostingUnit>(json!({
        "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "HostingUnit",
        "metadata": {"name": "lab2"},
        "spec": {"connectionRef": "other", "storages": [{"name": "primary", "root": "images"}]}
    }))
    .await;
    // A hosting unit whose storage directory does not exist.
    env.create::<HostingUnit>(json!({
        "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "HostingUnit",
        "metadata": {"name": "broken"},
        "spec": {"connectionRef": "local",
            "storages": [{"name": "primary", "root": "fast", "path": "missing"}]}
    }))
    .await;
    env.version("v1").await;
    env.version("v2").await;
    env.version("v3").await;
    env.version("v4").await;
    env.master("m-good", "v1", "lab", MASTER).await;
    env.master(
        "m-nounit",
        "v2",
        "nowhere",
        r"XDHyp:\HostingUnits\nowhere\win11.vm\base.snapshot",
    )
    .await;
    env.master(
        "m-nosnap",
        "v3",
        "lab",
        r"XDHyp:\HostingUnits\lab\win11.vm\nope.snapshot",
    )
    .await;
    env.master(
        "m-mismatch",
        "v4",
        "lab2",
        r"XDHyp:\HostingUnits\lab2\win11.vm\base.snapshot",
    )
    .await;
    env.prepared("p-first", "v1", "m-good").await;
    env.prepared("p-nounit", "v2", "m-nounit").await;
    env.prepared("p-nosnap", "v3", "m-nosnap").await;
    env.prepared("p-mismatch", "v4", "m-mismatch").await;

    let unit = env
        .wait::<HostingUnit>("broken", "Ready=False", |u| {
            u.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == condition_type::READY && c.status == "False")
            })
        })
        .await;
    let ready = unit
        .status
        .as_ref()
        .and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == condition_type::READY)
        })
        .expect("ready");
    assert_eq!(ready.reason, "StorageNotFound", "{ready:?}");
    assert!(
        ready.message.contains("spec.storages[primary]"),
        "{}",
        ready.message
    );

    for (name, reason) in [
        ("m-nounit", "HostingUnitNotFound"),
        ("m-nosnap", "SnapshotNotFound"),
        ("m-mismatch", "HostingUnitMismatch"),
    ] {
        let spec = env
            .wait::<ImageVersionSpec>(name, reason, |s| ready_reason(s).as_deref() == Some(reason))
            .await;
        assert_eq!(spec_status(&spec), ImageStatus::Failed, "{name}");
        env.wait_event(name, reason).await;
    }

    for (name, state) in [
        ("p-nounit", TaskState::HostingUnitNotFound),
        ("p-nosnap", TaskState::SnapshotNotFound),
        ("p-mismatch", TaskState::HostingUnitMismatch),
    ] {
        let spec = env.wait_task(name, state).await;
        let task = spec
            .status
            .as_ref()
            .and_then(|s| s.task.clone())
            .expect("task");
        let error = task.terminating_error.expect("terminating error");
        assert_eq!(error.reason, state.as_str());
        assert_eq!(spec_status(&spec), ImageStatus::Failed);
        let degraded = spec
            .status
            .as_ref()
            .and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == condition_type::DEGRADED)
            })
            .expect("degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", state.as_str())
        );
        env.wait_event(name, state.as_str()).await;
    }
    let nosnap = env
        .api::<ImageVersionSpec>()
        .get("p-nosnap")
        .await
        .expect("get");
    assert!(
        !prepared_file(&env.images, &nosnap).exists(),
        "no disk after a failure"
    );

    // A second prepared spec for the same version and hosting unit.
    env.wait_task("p-first", TaskState::Finished).await;
    env.prepared("p-second", "v1", "m-good").await;
    let second = env
        .wait_task("p-second", TaskState::ImageVersionSpecAlreadyExists)
        .await;
    let message = second
        .status
        .as_ref()
        .and_then(|s| s.task.as_ref())
        .and_then(|t| t.terminating_error.as_ref())
        .map(|e| e.message.clone())
        .unwrap_or_default();
    assert!(message.contains("'p-first'"), "{message}");

    // The failed versions aggregate Failed.
    env.wait::<ImageVersion>("v3", "Failed", |v| {
        v.status
            .as_ref()
            .is_some_and(|s| s.image_version_status == ImageStatus::Failed)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletion_waits_while_in_use() {
    let mut env = Env::start("deletion-waits-while-in-use").await;
    env.run_controllers(Context::new(
        env.client.clone(),
        config(&env.cluster.namespace, 4),
    ));
    env.version("v1").await;
    env.master("m", "v1", "lab", MASTER).await;
    env.prepared("p", "v1", "m").await;
    let prepared = env.wait_task("p", TaskState::Finished).await;
    let disk = prepared_file(&env.images, &prepared);
    let replica = prepared_file(&env.fast.join("lab"), &prepared);
    assert!(disk.exists() && replica.exists());
    env.create::<ProvScheme>(json!({
        "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ProvScheme",
        "metadata": {"name": "desktops"},
        "spec": {"imageVersionSpecRef": "p", "hostingUnitRef": "lab", "identityPoolRef": "pool",
            "networkMapping": {"0": LAN}, "vmCpuCount": 1, "vmMemoryMB": 1024, "machineCount": 0}
    }))
    .await;
    env.wait::<ImageVersion>("v1", "1 scheme", |v| {
        v.status
            .as_ref()
            .is_some_and(|s| s.provisioning_scheme_count == 1)
    })
    .await;

    for (kind, name) in [("spec", "p"), ("version", "v1"), ("definition", "win11")] {
        let result = match kind {
            "spec" => env
                .api::<ImageVersionSpec>()
                .delete(name, &DeleteParams::default())
                .await
                .map(|_| ()),
            "version" => env
                .api::<ImageVersion>()
                .delete(name, &DeleteParams::default())
                .await
                .map(|_| ()),
            _ => env
                .api::<ImageDefinition>()
                .delete(name, &DeleteParams::default())
                .await
                .map(|_| ()),
        };
        result.expect("delete accepted");
    }
    let users = "provisioning scheme 'desktops'";
    let spec = env
        .wait::<ImageVersionSpec>("p", "InUse", |s| {
            ready_reason(s).as_deref() == Some("InUse")
        })
        .await;
    assert!(spec.metadata.deletion_timestamp.is_some());
    let message = spec
        .status
        .as_ref()
        .and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == condition_type::READY)
        })
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains(users), "{message}");
    let version = env
        .wait::<ImageVersion>("v1", "InUse", |v| {
            v.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.reason == "InUse" && c.message.contains(users))
            })
        })
        .await;
    assert!(version.metadata.deletion_timestamp.is_some());
    env.wait::<ImageDefinition>("win11", "InUse", |d| {
        d.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.reason == "InUse" && c.message.contains(users))
        })
    })
    .await;
    env.wait_event("p", "InUse").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(disk.exists() && replica.exists(), "disks kept while in use");

    // Once the scheme is gone, everything goes, and the prepared disks with it.
    env.api::<ProvScheme>()
        .delete("desktops", &DeleteParams::default())
        .await
        .expect("delete scheme");
    env.wait_gone::<ProvScheme>("desktops").await;
    env.wait_gone::<ImageVersionSpec>("p").await;
    env.wait_gone::<ImageVersion>("v1").await;
    env.wait_gone::<ImageDefinition>("win11").await;
    assert!(
        !disk.exists() && !replica.exists(),
        "prepared disks removed"
    );
    assert!(
        env.images.join("win11.qcow2").exists(),
        "the master is never touched"
    );

    // Numbers are never reused: a new definition and two versions created at once.
    env.create::<ImageDefinition>(json!({
        "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ImageDefinition",
        "metadata": {"name": "win11"},
        "spec": {"osType": "Windows", "vdaSessionSupport": "SingleSession",
            "connections": [{"connectionRef": "local"}]}
    }))
    .await;
    let (a, b) = tokio::join!(env.version("a"), env.version("b"));
    let _ = (a, b);
    let number = |name: &'static str| {
        let env = &env;
        async move {
            env.wait::<ImageVersion>(name, "a number", |v| {
                v.status.as_ref().and_then(|s| s.version_number).is_some()
            })
            .await
            .status
            .and_then(|s| s.version_number)
            .expect("number")
        }
    };
    let (na, nb) = (number("a").await, number("b").await);
    let mut both = [na, nb];
    both.sort_unstable();
    assert_eq!(both, [1, 2], "two versions at once get distinct numbers");
    env.api::<ImageVersion>()
        .delete("b", &DeleteParams::default())
        .await
        .expect("delete b");
    env.wait_gone::<ImageVersion>("b").await;
    env.version("c").await;
    assert_eq!(number("c").await, 3, "a deleted number is never reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_and_retry() {
    let mut env = Env::start("cancel-and-retry").await;
    let context = Context::new(env.client.clone(), config(&env.cluster.namespace, 1));
    block_a_slot(&context).await;
    env.run_controllers(context.clone());
    env.version("v1").await;
    env.master("m", "v1", "lab", MASTER).await;
    env.prepared("p", "v1", "m").await;

    // The only slot is taken: the task waits, visibly.
    let waiting = env
        .wait::<ImageVersionSpec>("p", "waiting for a slot", |s| {
            s.status
                .as_ref()
                .and_then(|st| st.task.as_ref())
                .and_then(|t| t.current_operation.as_deref())
                == Some(WAITING_FOR_SLOT)
        })
        .await;
    assert_eq!(spec_status(&waiting), ImageStatus::InProgress);
    let first_task = waiting
        .status
        .as_ref()
        .and_then(|s| s.task.clone())
        .expect("task");
    let progressing = waiting
        .status
        .as_ref()
        .and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == condition_type::PROGRESSING)
        })
        .expect("progressing");
    assert_eq!(progressing.status, "True");

    // Cancel.
    env.annotate("p", ANNOTATION_CANCEL).await;
    let canceled = env.wait_task("p", TaskState::Canceled).await;
    assert_eq!(
        canceled
            .status
            .as_ref()
            .and_then(|s| s.task.as_ref())
            .map(|t| t.task_id.clone()),
        Some(first_task.task_id.clone())
    );
    assert_eq!(spec_status(&canceled), ImageStatus::Failed);
    let canceled = env
        .wait::<ImageVersionSpec>("p", "cancel annotation consumed", |s| {
            !s.annotations().contains_key(ANNOTATION_CANCEL)
        })
        .await;
    assert_eq!(task_state(&canceled), Some(TaskState::Canceled));
    env.wait_event("p", "Canceled").await;
    assert!(!prepared_file(&env.images, &canceled).exists());

    // Retry: a fresh task, which runs once the slot is free.
    env.annotate("p", ANNOTATION_RETRY).await;
    let retried = env
        .wait::<ImageVersionSpec>("p", "a new task", |s| {
            s.status
                .as_ref()
                .and_then(|st| st.task.as_ref())
                .is_some_and(|t| t.task_id != first_task.task_id && !t.is_terminal())
        })
        .await;
    assert_eq!(spec_status(&retried), ImageStatus::InProgress);
    context.tasks.forget("blocker").await;
    let done = env.wait_task("p", TaskState::Finished).await;
    assert!(!done.annotations().contains_key(ANNOTATION_RETRY));
    assert_snapshot_content(&prepared_file(&env.images, &done));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_survives_a_restart() {
    let mut env = Env::start("a-task-survives-a-restart").await;
    let first = Context::new(env.client.clone(), config(&env.cluster.namespace, 1));
    block_a_slot(&first).await;
    env.run_controllers(first.clone());
    env.version("v1").await;
    env.master("m", "v1", "lab", MASTER).await;
    env.prepared("p", "v1", "m").await;
    let running = env
        .wait::<ImageVersionSpec>("p", "a running task", |s| {
            s.status
                .as_ref()
                .and_then(|st| st.task.as_ref())
                .is_some_and(|t| t.task_state == TaskState::LocatingResources)
        })
        .await;

    // The operator dies in the middle of the consolidation: a half-written partial file on
    // disk, the task recorded at ConsolidatingMasterImage 40 %.
    env.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let api = env.api::<ImageVersionSpec>();
    let current = api.get("p").await.expect("get");
    let mut status = current.status.clone().expect("status");
    let mut task = status.task.clone().expect("task");
    task.task_state = TaskState::ConsolidatingMasterImage;
    task.task_progress = 40;
    task.current_operation = Some("converting".into());
    status.task = Some(task.clone());
    apply_status(&api, &current, &field_manager("imageversionspec"), &status)
        .await
        .expect("status written");
    let final_path = prepared_file(&env.images, &running);
    std::fs::create_dir_all(final_path.parent().expect("dir")).expect("prepared dir");
    let partial = PathBuf::from(format!("{}.partial-deadbeef", final_path.display()));
    std::fs::write(&partial, b"half a disk").expect("partial");
    assert!(!final_path.exists());

    // A new operator process (a fresh context) resumes the task and finishes it.
    env.run_controllers(Context::new(
        env.client.clone(),
        config(&env.cluster.namespace, 2),
    ));
    let done = env.wait_task("p", TaskState::Finished).await;
    let resumed = done
        .status
        .as_ref()
        .and_then(|s| s.task.clone())
        .expect("task");
    assert_eq!(resumed.task_id, task.task_id, "the same task, resumed");
    assert_eq!(resumed.date_started, task.date_started);
    assert_eq!(resumed.task_progress, 100);
    assert!(!partial.exists(), "the half-written disk was removed");
    assert_snapshot_content(&final_path);
    assert_snapshot_content(&prepared_file(&env.fast.join("lab"), &done));
    let done_record = final_path.with_extension("done.json");
    assert!(done_record.exists(), "{}", done_record.display());
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn out_of_order_references_wait_and_retained_disks_stay() {
    let mut env = Env::start("out-of-order-references-wait-and-retained-disks-stay").await;
    env.run_controllers(Context::new(
        env.client.clone(),
        config(&env.cluster.namespace, 4),
    ));
    // The prepared spec comes first: it waits (no task) for its version and source.
    env.create::<ImageVersionSpec>(json!({
        "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ImageVersionSpec",
        "metadata": {"name": "p"},
        "spec": {"imageVersionRef": "v1", "deletionPolicy": "Retain",
            "prepared": {"sourceSpecRef": "m", "networkMapping": {"0": LAN}}}
    }))
    .await;
    let waiting = env
        .wait::<ImageVersionSpec>("p", "waiting for its version", |s| {
            ready_reason(s).as_deref() == Some("ImageVersionNotFound")
        })
        .await;
    assert!(
        waiting
            .status
            .as_ref()
            .and_then(|s| s.task.as_ref())
            .is_none()
    );
    env.version("v1").await;
    env.wait::<ImageVersionSpec>("p", "waiting for its source", |s| {
        ready_reason(s).as_deref() == Some("ImageVersionSpecNotFound")
    })
    .await;
    env.master("m", "v1", "lab", MASTER).await;
    let done = env.wait_task("p", TaskState::Finished).await;
    let disk = prepared_file(&env.images, &done);
    assert_snapshot_content(&disk);

    // deletionPolicy Retain: the object goes, the disks stay.
    env.api::<ImageVersionSpec>()
        .delete("p", &DeleteParams::default())
        .await
        .expect("delete");
    env.wait_gone::<ImageVersionSpec>("p").await;
    assert!(disk.exists(), "a retained disk stays on storage");
    assert!(prepared_file(&env.fast.join("lab"), &done).exists());
}
