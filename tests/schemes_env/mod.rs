//! A test environment for the scheme controllers: a test API server with the CRDs, a Local
//! storage root with a real 16 MiB master image, the prepared image made by the Local backend,
//! the image-side objects (with the prepared spec's status written as the image controller
//! would), and the ProvScheme and ProvVM controllers running against it.

#![allow(dead_code)]

use futures::FutureExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use mcs_backend::{LocalBackend, MasterRef, Operation, Output, PrepareRequest};
use mcs_operator::api::{HostingUnit, HypervisorConnection, ImageVersionSpec};
use mcs_operator::controller::{Context, OperatorConfig, backends, prov_scheme, prov_vm};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::support::cluster::Cluster;

/// The master snapshot's inventory path.
pub const MASTER: &str = r"XDHyp:\HostingUnits\lab\win11.vm\base.snapshot";
/// The LAN network path.
pub const LAN: &str = r"XDHyp:\HostingUnits\lab\lan.network";
/// The DMZ network path.
pub const DMZ: &str = r"XDHyp:\HostingUnits\lab\dmz.network";

/// A running environment; everything stops when it is dropped.
pub struct Env {
    /// The API server and the test's namespace.
    pub cluster: Cluster,
    /// A client of it.
    pub client: Client,
    /// The storage root directory (`images`).
    pub root: PathBuf,
    _dir: tempfile::TempDir,
    controllers: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(handle) = self.controllers.take() {
            handle.abort();
        }
    }
}

fn qemu(args: &[&str]) {
    let status = Command::new("qemu-img")
        .args(args)
        .status()
        .expect("qemu-img runs");
    assert!(status.success(), "qemu-img {args:?}");
}

impl Env {
    /// Starts the server, writes the base objects and starts the ProvScheme and ProvVM
    /// controllers.
    pub async fn start(test: &str) -> Env {
        Self::start_inner(test, Self::config(), false).await
    }

    /// Starts every controller of the operator (`controller::run`), image side included.
    pub async fn start_full(test: &str) -> Env {
        Self::start_inner(test, Self::config(), true).await
    }

    /// Starts with the given operator settings (the namespace is the test's own).
    pub async fn start_with(test: &str, config: OperatorConfig) -> Env {
        Self::start_inner(test, config, false).await
    }

    /// The operator settings of [`Env::start`].
    pub fn config() -> OperatorConfig {
        OperatorConfig {
            concurrency: 8,
            max_concurrent_tasks: 8,
            progress_interval: Duration::from_millis(100),
            ..OperatorConfig::default()
        }
    }

    /// The test's namespace.
    pub fn ns(&self) -> &str {
        &self.cluster.namespace
    }

    async fn start_inner(test: &str, mut config: OperatorConfig, full: bool) -> Env {
        let cluster = Cluster::start(test).await;
        let client = cluster.client.clone();
        config.namespace = Some(cluster.namespace.clone());
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("images");
        std::fs::create_dir_all(&root).expect("root");
        let master = root.join("win11.qcow2");
        let master_s = master.to_string_lossy().to_string();
        qemu(&["create", "-q", "-f", "qcow2", &master_s, "16M"]);
        qemu(&["snapshot", "-c", "base", &master_s]);
        let mut env = Env {
            cluster,
            client,
            root,
            _dir: dir,
            controllers: None,
        };
        env.base_objects().await;
        if full {
            let client = env.client.clone();
            env.controllers = Some(tokio::spawn(mcs_operator::controller::run(client, config)));
        } else {
            let context = Context::new(env.client.clone(), config);
            env.controllers = Some(tokio::spawn(async move {
                mcs_operator::controller::run_controllers(
                    context.clone(),
                    vec![
                        prov_scheme::run(context.clone()).boxed(),
                        prov_vm::run(context).boxed(),
                    ],
                )
                .await;
            }));
        }
        env
    }

    /// Creates an object from JSON.
    pub async fn create<K>(&self, value: Value) -> K
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
            .expect("created")
    }

    /// An Api in the test namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.cluster.namespace)
    }

    async fn base_objects(&self) {
        self.create::<HypervisorConnection>(json!({
            "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "HypervisorConnection",
            "metadata": {"name": "local"},
            "spec": {"type": "Local", "local": {
                "storageRoots": [{"name": "images", "path": self.root.to_string_lossy()}],
                "maxConcurrentOperations": 8
            }}
        }))
        .await;
        self.create::<HostingUnit>(json!({
            "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "HostingUnit",
            "metadata": {"name": "lab"},
            "spec": {"connectionRef": "local",
                "storages": [{"name": "primary", "root": "images"}],
                "networks": [{"name": "lan"}, {"name": "dmz"}],
                "serviceOfferings": [{"name": "small", "cpuCount": 2, "memoryMB": 2048}]}
        }))
        .await;
        self.create::<mcs_operator::api::IdentityPool>(json!({
            "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "IdentityPool",
            "metadata": {"name": "pool"},
            "spec": {"namingScheme": "VDI-###", "namingSchemeType": "Numeric", "startCount": 1,
                "identityType": "Workgroup"}
        }))
        .await;
        for (name, session) in [("win11", "SingleSession"), ("win2022", "MultiSession")] {
            self.create::<mcs_operator::api::ImageDefinition>(json!({
                "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ImageDefinition",
                "metadata": {"name": name},
                "spec": {"osType": "Windows", "vdaSessionSupport": session,
                    "connections": [{"connectionRef": "local"}]}
            }))
            .await;
            self.create::<mcs_operator::api::ImageVersion>(json!({
                "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ImageVersion",
                "metadata": {"name": format!("{name}-v1")},
                "spec": {"imageDefinitionRef": name}
            }))
            .await;
            self.create::<ImageVersionSpec>(json!({
                "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ImageVersionSpec",
                "metadata": {"name": format!("{name}-master")},
                "spec": {"imageVersionRef": format!("{name}-v1"),
                    "master": {"hostingUnitRef": "lab", "masterImagePath": MASTER}}
            }))
            .await;
        }
    }

    /// Creates a prepared spec `name` of definition `definition` and leaves the preparation to
    /// the operator's image controllers.
    pub async fn prepare_by_operator(&self, name: &str, definition: &str) {
        self.create::<ImageVersionSpec>(json!({
            "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ImageVersionSpec",
            "metadata": {"name": name},
            "spec": {"imageVersionRef": format!("{definition}-v1"),
                "prepared": {"sourceSpecRef": format!("{definition}-master"),
                    "networkMapping": {"0": LAN}}}
        }))
        .await;
    }

    /// Prepares the master into a prepared spec `name` of definition `definition` (really,
    /// with the Local backend) and writes its status as the image controller does. A state
    /// other than `Success` writes only the state.
    pub async fn prepared(&self, name: &str, definition: &str, state: &str) {
        self.create::<ImageVersionSpec>(json!({
            "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ImageVersionSpec",
            "metadata": {"name": name},
            "spec": {"imageVersionRef": format!("{definition}-v1"),
                "prepared": {"sourceSpecRef": format!("{definition}-master"),
                    "networkMapping": {"0": LAN}}}
        }))
        .await;
        let mut instances = vec![];
        if state == "Success" {
            let unit = self.api::<HostingUnit>().get("lab").await.expect("unit");
            let connection = self
                .api::<HypervisorConnection>()
                .get("local")
                .await
                .expect("connection");
            let backend = LocalBackend::new(
                backends::local_config(&unit, &connection).expect("local config"),
            )
            .expect("backend");
            let output = mcs_backend::run(
                &backend,
                Operation::Prepare(PrepareRequest {
                    image_id: name.into(),
                    master: MasterRef {
                        hosting_unit: "lab".into(),
                        storages: vec!["primary".into()],
                        path: MASTER.into(),
                    },
                    target_storages: vec!["primary".into()],
                    owner: None,
                }),
            )
            .await
            .expect("prepared");
            let Output::Prepared(image) = output else {
                panic!("not a prepared image: {output:?}")
            };
            let root = std::fs::canonicalize(&self.root).expect("root");
            for copy in image.copies {
                let relative = copy
                    .path
                    .strip_prefix(&root)
                    .or_else(|_| copy.path.strip_prefix(&self.root))
                    .expect("under root")
                    .display()
                    .to_string();
                instances.push(json!({"name": copy.storage, "path": relative, "verified": true}));
            }
        }
        let status = json!({
            "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ImageVersionSpec",
            "metadata": {"name": name},
            "status": {"specKind": "Prepared", "imageVersionSpecStatus": state,
                "hostingUnitName": "lab", "instances": instances}
        });
        self.api::<ImageVersionSpec>()
            .patch_status(
                name,
                &PatchParams::apply("test-image-controller").force(),
                &Patch::Apply(&status),
            )
            .await
            .expect("status written");
    }

    /// Creates a scheme with `spec` merged over a base spec (image `prepared-a`, 1 CPU).
    pub async fn scheme(&self, name: &str, spec: Value) -> mcs_operator::api::ProvScheme {
        let mut base = json!({
            "imageVersionSpecRef": "prepared-a",
            "hostingUnitRef": "lab",
            "identityPoolRef": "pool",
            "networkMapping": {"0": LAN},
            "vmCpuCount": 1,
            "vmMemoryMB": 512,
            "machineCount": 0
        });
        merge(&mut base, &spec);
        self.create(json!({
            "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ProvScheme",
            "metadata": {"name": name},
            "spec": base
        }))
        .await
    }

    /// Merge-patches the spec of scheme `name`.
    pub async fn patch_spec(&self, name: &str, spec: Value) {
        self.api::<mcs_operator::api::ProvScheme>()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "spec": spec })),
            )
            .await
            .expect("patched");
    }

    /// Waits until `check` accepts object `name` (default 30 s).
    pub async fn wait<K>(&self, name: &str, what: &str, check: impl Fn(&K) -> bool) -> K
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let api = self.api::<K>();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let last = api.get_opt(name).await.expect("get");
            if let Some(object) = &last
                && check(object)
            {
                return object.clone();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {name}: {what}; last: {last:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The directory of machine `machine` of scheme `scheme`.
    pub fn machine_dir(&self, scheme: &str, machine: &str) -> PathBuf {
        self.root.join("machines").join(scheme).join(machine)
    }

    /// Waits until an Event with `reason` about `name` exists; returns the messages.
    pub async fn wait_event(&self, name: &str, reason: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = self.events(name, reason).await;
            if !found.is_empty() {
                return found;
            }
            assert!(Instant::now() < deadline, "no {reason} event about {name}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The messages of the Events with `reason` about `name`.
    pub async fn events(&self, name: &str, reason: &str) -> Vec<String> {
        let api: Api<k8s_openapi::api::events::v1::Event> = self.api();
        api.list(&Default::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                    && e.reason.as_deref() == Some(reason)
            })
            .map(|e| e.note.unwrap_or_default())
            .collect()
    }
}

/// Merges `patch` into `base` (objects recursively, `null` removes).
pub fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(k);
                } else {
                    merge(b.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// The resource name of a ProvScheme's machines' object names.
pub fn names<K: ResourceExt>(items: &[K]) -> Vec<String> {
    let mut out: Vec<String> = items.iter().map(ResourceExt::name_any).collect();
    out.sort();
    out
}
