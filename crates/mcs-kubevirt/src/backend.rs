//! The thin I/O shell: the [`Backend`] operations as reads and server-side applies (strict field
//! validation) of KubeVirt, CDI and CSI snapshot objects, polling the DataVolumes CDI fills.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::ApiResource;
use mcs_backend::local::derived_mac;
use mcs_backend::runner::{Progress, Runner};
use mcs_backend::{
    Backend, BackendError, BoxFuture, DeleteMachineRequest, DeleteOutcome, DeletePreparedRequest,
    DeletionPolicy, Inventory, InventoryRequest, MachineInfo, MachineRef, MachineRequest,
    MasterImageInfo, MasterRef, MeasureRequest, Measurement, Operation, OperationId,
    OperationStatus, Output, PowerRequest, PrepareRequest, PreparedCopy, PreparedImage,
    ServiceOfferingInfo, StorageInfo,
};
use mcs_domain::inventory_path::InventoryPath;
use mcs_domain::task::TaskState;
use serde_json::{Value, json};

use crate::objects::{self, DiskSource, Interface, MachineSpec};
use crate::status::{self, CloneState, SnapshotState};

/// One storage of a hosting unit: a StorageClass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageClassConfig {
    /// The hosting unit's storage name.
    pub name: String,
    /// The StorageClass its PVCs are made in.
    pub storage_class: String,
}

/// One network of a hosting unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    /// The network's name (as in network mappings).
    pub name: String,
    /// The NetworkAttachmentDefinition behind it; `None` is the pod network.
    pub attachment: Option<String>,
}

/// The settings of one KubeVirt backend (one hosting unit of a connection).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeVirtConfig {
    /// The namespace where master VMs and snapshots are read and images and machines made.
    pub namespace: String,
    /// The hosting unit's storages.
    pub storages: Vec<StorageClassConfig>,
    /// The hosting unit's networks.
    pub networks: Vec<NetworkConfig>,
    /// The hosting unit's security groups (by name): listed in the inventory so schemes can
    /// name them; nothing is applied to the VirtualMachines (no NetworkPolicy is written).
    pub security_groups: Vec<String>,
    /// How often DataVolumes are polled while CDI works.
    pub poll_interval: Duration,
}

/// Which cluster the backend talks to.
#[derive(Clone)]
pub enum ClientSource {
    /// The operator's own cluster.
    Own(Client),
    /// A remote cluster whose kubeconfig is key `key` of Secret `namespace/name` (read with the
    /// operator's client when first needed).
    Kubeconfig {
        /// The operator's client, to read the Secret.
        client: Client,
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// The key holding the kubeconfig.
        key: String,
    },
}

/// The pseudo path of a storage: prepared images are `<root>/prepared/<pvc>`, machines
/// `<root>/machines/<scheme>/<vm>/...`, so the controllers treat both backends alike.
pub fn storage_root(namespace: &str, storage: &str) -> PathBuf {
    PathBuf::from(format!("/kubevirt/{namespace}/{storage}"))
}

struct Inner {
    config: KubeVirtConfig,
    source: ClientSource,
    client: tokio::sync::Mutex<Option<Client>>,
}

/// The `KubeVirt` backend. Cheap to clone; clones share operations.
#[derive(Clone)]
pub struct KubeVirtBackend {
    inner: Arc<Inner>,
    runner: Runner,
}

impl KubeVirtBackend {
    /// A backend over `config`, talking to the cluster of `source`.
    pub fn new(config: KubeVirtConfig, source: ClientSource) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                source,
                client: tokio::sync::Mutex::new(None),
            }),
            runner: Runner::default(),
        }
    }
}

impl Backend for KubeVirtBackend {
    fn kind(&self) -> &'static str {
        "KubeVirt"
    }

    fn start(&self, op: Operation) -> BoxFuture<'_, Result<OperationId, BackendError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            self.runner
                .start(op, |op, p| async move { inner.execute(op, &p).await })
        })
    }

    fn poll(&self, id: OperationId) -> BoxFuture<'_, Result<OperationStatus, BackendError>> {
        Box::pin(async move { self.runner.poll(id) })
    }

    fn cancel(&self, id: OperationId) -> BoxFuture<'_, Result<OperationStatus, BackendError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            self.runner
                .cancel(
                    id,
                    "canceled; unfinished DataVolumes deleted",
                    |op| async move {
                        if let Err(e) = inner.clean_up(&op).await {
                            tracing::warn!(%id, error = %e, "clean-up after cancel failed");
                        }
                    },
                )
                .await
        })
    }

    fn forget(&self, id: OperationId) -> BoxFuture<'_, bool> {
        Box::pin(async move { self.runner.forget(id) })
    }

    fn machine_status(
        &self,
        machine: MachineRef,
    ) -> BoxFuture<'_, Result<Option<String>, BackendError>> {
        Box::pin(async move {
            let vm = objects::machine_name(&machine.scheme, &machine.machine_name);
            let found = self.inner.get(&objects::virtual_machines(), &vm).await?;
            Ok(found.as_ref().and_then(status::printable_status))
        })
    }
}

/// The client of `source`'s cluster; for a remote cluster, its kubeconfig Secret is read.
pub async fn connect(source: &ClientSource) -> Result<Client, BackendError> {
    let (client, namespace, name, key) = match source {
        ClientSource::Own(c) => return Ok(c.clone()),
        ClientSource::Kubeconfig {
            client,
            namespace,
            name,
            key,
        } => (client, namespace, name, key),
    };
    let object = format!("Secret {namespace}/{name}");
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(|e| api_error(&object, &e))?;
    let bad = |detail: String| BackendError::KubernetesApi {
        object: object.clone(),
        detail,
    };
    let text = secret
        .data
        .and_then(|d| d.get(key).map(|b| b.0.clone()))
        .ok_or_else(|| bad(format!("no key '{key}'")))?;
    let text = String::from_utf8(text).map_err(|e| bad(e.to_string()))?;
    let kubeconfig =
        kube::config::Kubeconfig::from_yaml(&text).map_err(|e| bad(format!("kubeconfig: {e}")))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .map_err(|e| bad(format!("kubeconfig: {e}")))?;
    Client::try_from(config).map_err(|e| bad(format!("client: {e}")))
}

fn api_error(object: &str, e: &kube::Error) -> BackendError {
    BackendError::KubernetesApi {
        object: object.to_string(),
        detail: e.to_string(),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// A master snapshot resolved to the VolumeSnapshot its disk is cloned from.
struct ResolvedMaster {
    vm: String,
    snapshot: String,
    source: DiskSource,
    size_bytes: u64,
}

impl Inner {
    fn ns(&self) -> &str {
        &self.config.namespace
    }

    async fn client(&self) -> Result<Client, BackendError> {
        let mut cached = self.client.lock().await;
        if let Some(c) = cached.as_ref() {
            return Ok(c.clone());
        }
        let client = connect(&self.source).await?;
        *cached = Some(client.clone());
        Ok(client)
    }

    async fn dynamic(&self, ar: &ApiResource) -> Result<Api<DynamicObject>, BackendError> {
        Ok(Api::namespaced_with(self.client().await?, self.ns(), ar))
    }

    /// Object `name` of `ar` as JSON, `None` when it does not exist.
    async fn get(&self, ar: &ApiResource, name: &str) -> Result<Option<Value>, BackendError> {
        let object = format!("{} {}/{name}", ar.kind, self.ns());
        match self.dynamic(ar).await?.get_opt(name).await {
            Ok(found) => found
                .map(|o| {
                    serde_json::to_value(o)
                        .map_err(|e| api_error(&object, &kube::Error::SerdeError(e)))
                })
                .transpose(),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(api_error(&object, &e)),
        }
    }

    /// Every object of `ar` in the namespace (none when the API is not served).
    async fn list(&self, ar: &ApiResource) -> Result<Vec<Value>, BackendError> {
        let api: Api<DynamicObject> = if ar.group == "instancetype.kubevirt.io" {
            Api::all_with(self.client().await?, ar)
        } else {
            self.dynamic(ar).await?
        };
        match api.list(&ListParams::default()).await {
            Ok(list) => Ok(list
                .items
                .into_iter()
                .filter_map(|o| serde_json::to_value(o).ok())
                .collect()),
            Err(e) if is_not_found(&e) => Ok(Vec::new()),
            Err(e) => Err(api_error(&format!("{} list", ar.kind), &e)),
        }
    }

    /// Server-side applies `value` (strict field validation).
    async fn apply(&self, ar: &ApiResource, value: &Value) -> Result<(), BackendError> {
        let name = value["metadata"]["name"].as_str().unwrap_or_default();
        let params = PatchParams::apply(objects::FIELD_MANAGER)
            .force()
            .validation_strict();
        self.dynamic(ar)
            .await?
            .patch(name, &params, &Patch::Apply(value))
            .await
            .map_err(|e| api_error(&format!("{} {}/{name}", ar.kind, self.ns()), &e))?;
        Ok(())
    }

    /// Removes the owner references of object `name` of `ar`, so that it outlives its owners.
    async fn disown(&self, ar: &ApiResource, name: &str) -> Result<(), BackendError> {
        self.dynamic(ar)
            .await?
            .patch(
                name,
                &PatchParams::default().validation_strict(),
                &Patch::Merge(json!({"metadata": {"ownerReferences": null}})),
            )
            .await
            .map_err(|e| api_error(&format!("{} {}/{name}", ar.kind, self.ns()), &e))?;
        Ok(())
    }

    /// Deletes object `name` of `ar`; true when it existed.
    async fn delete(&self, ar: &ApiResource, name: &str) -> Result<bool, BackendError> {
        match self
            .dynamic(ar)
            .await?
            .delete(name, &DeleteParams::background())
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(api_error(&format!("{} {}/{name}", ar.kind, self.ns()), &e)),
        }
    }

    /// Deletes DataVolume `name` and its PVC and waits until both are gone (a DataVolume
    /// KubeVirt creates again from a VirtualMachine's template is a new object, not waited for).
    async fn delete_disk(&self, name: &str) -> Result<bool, BackendError> {
        let mut existed = false;
        for ar in [objects::data_volumes(), pvc_resource()] {
            let uid = |o: &Option<Value>| o.as_ref().map(|o| o["metadata"]["uid"].clone());
            let old = uid(&self.get(&ar, name).await?);
            if old.is_none() {
                continue;
            }
            existed |= self.delete(&ar, name).await?;
            while uid(&self.get(&ar, name).await?) == old {
                tokio::time::sleep(self.config.poll_interval).await;
            }
        }
        Ok(existed)
    }

    fn storage(&self, name: &str) -> Result<&StorageClassConfig, BackendError> {
        self.config
            .storages
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| BackendError::StorageNotFound {
                storage: name.to_string(),
                path: PathBuf::new(),
            })
    }

    /// The storage's StorageClass, which must exist.
    async fn storage_class(&self, name: &str) -> Result<String, BackendError> {
        let class = self.storage(name)?.storage_class.clone();
        let api = Api::<StorageClass>::all(self.client().await?);
        match api.get_opt(&class).await {
            Ok(Some(_)) => Ok(class),
            Ok(None) => Err(BackendError::StorageNotFound {
                storage: name.to_string(),
                path: PathBuf::from(format!("storageclass/{class}")),
            }),
            Err(e) => Err(api_error(&format!("StorageClass {class}"), &e)),
        }
    }

    fn vm_path(&self, vm: &str) -> PathBuf {
        PathBuf::from(format!("virtualmachine/{}/{vm}", self.ns()))
    }

    async fn execute(&self, op: Operation, p: &Progress) -> Result<Output, BackendError> {
        match op {
            Operation::ResolveInventory(r) => self.inventory(r).await.map(Output::Inventory),
            Operation::Measure(r) => self.measure(r, p).await.map(Output::Measurement),
            Operation::Prepare(r) => self.prepare(r, p).await.map(Output::Prepared),
            Operation::CreateMachine(r) => self.put_machine(r, false, p).await.map(Output::Machine),
            Operation::UpdateMachine(r) => self.put_machine(r, true, p).await.map(Output::Machine),
            Operation::ResetMachine(m) => self.reset_machine(m, p).await.map(Output::Machine),
            Operation::SetPower(r) => self.set_power(r, p).await.map(Output::Machine),
            Operation::DeleteMachine(r) => self.delete_machine(r, p).await.map(Output::Deleted),
            Operation::DeletePreparedImage(r) => {
                self.delete_prepared(r, p).await.map(Output::Deleted)
            }
        }
    }

    /// Removes what a canceled operation left unfinished.
    async fn clean_up(&self, op: &Operation) -> Result<(), BackendError> {
        match op {
            Operation::Prepare(r) => {
                for storage in &r.target_storages {
                    let name = objects::prepared_name(&r.image_id, storage);
                    if let Some(dv) = self.get(&objects::data_volumes(), &name).await?
                        && status::data_volume_state(&dv) != CloneState::Succeeded
                    {
                        self.delete_disk(&name).await?;
                    }
                }
            }
            Operation::CreateMachine(r) => {
                let vm = objects::machine_name(&r.scheme, &r.machine_name);
                let disk = objects::disk_name(&vm);
                let done = self
                    .get(&objects::data_volumes(), &disk)
                    .await?
                    .is_some_and(|dv| status::data_volume_state(&dv) == CloneState::Succeeded);
                if !done {
                    self.delete(&objects::virtual_machines(), &vm).await?;
                    self.delete(&secret_resource(), &objects::identity_name(&vm))
                        .await?;
                    self.delete_disk(&disk).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn resolve_path(&self, m: &MasterRef) -> Result<(String, String), BackendError> {
        let parsed = InventoryPath::parse(&m.path).map_err(|e| BackendError::InvalidPath {
            path: m.path.clone(),
            detail: e.to_string(),
        })?;
        parsed
            .within(&m.hosting_unit)
            .map_err(|_| BackendError::HostingUnitMismatch {
                expected: m.hosting_unit.clone(),
                found: parsed.hosting_unit().to_string(),
            })?;
        let not_snapshot = |detail: String| BackendError::MasterImageNotASnapshot {
            path: m.path.clone(),
            detail,
        };
        let snap = parsed
            .expect_leaf_kind("snapshot")
            .map_err(|e| not_snapshot(e.to_string()))?;
        match parsed.items() {
            [vm, _] if vm.is_kind("vm") => Ok((vm.name.clone(), snap.name.clone())),
            _ => Err(not_snapshot(
                "a KubeVirt master is `<vm>.vm\\<snapshot>.snapshot` directly under the hosting unit"
                    .into(),
            )),
        }
    }

    /// Resolves a master path to the VolumeSnapshot of the VM's disk: a VirtualMachineSnapshot
    /// named `<snapshot>` of VM `<vm>` (its first volume backup), else a VolumeSnapshot named
    /// `<snapshot>` of one of the VM's PVCs.
    async fn resolve_master(&self, m: &MasterRef) -> Result<ResolvedMaster, BackendError> {
        let (vm, snapshot) = self.resolve_path(m)?;
        let image = self.vm_path(&vm);
        let not_snapshot = |detail: String| BackendError::MasterImageNotASnapshot {
            path: m.path.clone(),
            detail,
        };
        let invalid = |detail: String| BackendError::InvalidSnapshotState {
            image: image.clone(),
            detail,
        };
        let ns = self.ns().to_string();
        if let Some(vms) = self.get(&objects::vm_snapshots(), &snapshot).await? {
            let source = &vms["spec"]["source"];
            if source["kind"].as_str() != Some("VirtualMachine")
                || source["name"].as_str() != Some(vm.as_str())
            {
                return Err(not_snapshot(format!(
                    "VirtualMachineSnapshot '{snapshot}' is of {} '{}', not of VirtualMachine '{vm}'",
                    source["kind"].as_str().unwrap_or("?"),
                    source["name"].as_str().unwrap_or("?")
                )));
            }
            if let SnapshotState::NotReady(detail) = status::snapshot_state(&vms) {
                return Err(invalid(format!(
                    "VirtualMachineSnapshot '{snapshot}' is not ready: {detail}"
                )));
            }
            let content_name = vms["status"]["virtualMachineSnapshotContentName"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let content = self
                .get(&objects::vm_snapshot_contents(), &content_name)
                .await?
                .ok_or_else(|| {
                    invalid(format!(
                        "VirtualMachineSnapshotContent '{content_name}' of '{snapshot}' not found"
                    ))
                })?;
            let backup = content["spec"]["volumeBackups"]
                .as_array()
                .and_then(|b| b.iter().find(|b| b["volumeSnapshotName"].is_string()))
                .ok_or_else(|| invalid(format!("'{content_name}' has no volume backup")))?;
            let size = backup["persistentVolumeClaim"]["spec"]["resources"]["requests"]["storage"]
                .as_str()
                .and_then(status::parse_quantity)
                .ok_or_else(|| invalid(format!("'{content_name}' has no disk size")))?;
            return Ok(ResolvedMaster {
                vm,
                snapshot,
                source: DiskSource::Snapshot {
                    namespace: ns,
                    name: backup["volumeSnapshotName"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                },
                size_bytes: size,
            });
        }
        let Some(vs) = self.get(&objects::volume_snapshots(), &snapshot).await? else {
            return Err(BackendError::SnapshotNotFound {
                image,
                snapshot,
                detail: format!(
                    "no VirtualMachineSnapshot or VolumeSnapshot of that name in namespace {ns}"
                ),
            });
        };
        let Some(machine) = self.get(&objects::virtual_machines(), &vm).await? else {
            return Err(BackendError::SnapshotNotFound {
                image,
                snapshot,
                detail: format!("VirtualMachine '{vm}' not found in namespace {ns}"),
            });
        };
        let claim = vs["spec"]["source"]["persistentVolumeClaimName"]
            .as_str()
            .unwrap_or_default();
        if !vm_claims(&machine).iter().any(|c| c == claim) {
            return Err(not_snapshot(format!(
                "VolumeSnapshot '{snapshot}' is of PVC '{claim}', not a disk of VirtualMachine '{vm}'"
            )));
        }
        if let SnapshotState::NotReady(detail) = status::snapshot_state(&vs) {
            return Err(invalid(format!(
                "VolumeSnapshot '{snapshot}' is not ready: {detail}"
            )));
        }
        let size = vs["status"]["restoreSize"]
            .as_str()
            .and_then(status::parse_quantity)
            .ok_or_else(|| invalid(format!("VolumeSnapshot '{snapshot}' has no restoreSize")))?;
        Ok(ResolvedMaster {
            vm,
            source: DiskSource::Snapshot {
                namespace: ns,
                name: snapshot.clone(),
            },
            snapshot,
            size_bytes: size,
        })
    }

    async fn measure(&self, r: MeasureRequest, p: &Progress) -> Result<Measurement, BackendError> {
        p.phase(TaskState::LocatingResources, "resolving master snapshot");
        let m = self.resolve_master(&r.master).await?;
        Ok(Measurement {
            virtual_size: m.size_bytes,
            required_bytes: m.size_bytes,
            fully_allocated_bytes: m.size_bytes,
        })
    }

    /// Waits until DataVolume `name` has succeeded, reporting its progress; a failed clone is
    /// deleted (like a partial file) and reported.
    async fn wait_clone(
        &self,
        name: &str,
        target: &Path,
        progress: impl Fn(f64),
        p: &Progress,
        phase: TaskState,
    ) -> Result<(), BackendError> {
        loop {
            let state = match self.get(&objects::data_volumes(), name).await? {
                Some(dv) => status::data_volume_state(&dv),
                None => CloneState::Running {
                    percent: None,
                    message: "waiting for the DataVolume to be created".into(),
                },
            };
            match state {
                CloneState::Succeeded => {
                    progress(100.0);
                    return Ok(());
                }
                CloneState::Running { percent, message } => {
                    progress(percent.unwrap_or(0.0));
                    p.phase(phase, format!("DataVolume {name}: {message}"));
                }
                CloneState::Failed {
                    insufficient,
                    message,
                } => {
                    self.delete_disk(name).await?;
                    let detail = format!("DataVolume {name}: {message}");
                    return Err(if insufficient {
                        BackendError::InsufficientResources {
                            path: target.to_path_buf(),
                            detail,
                        }
                    } else {
                        BackendError::DiskConsolidationFailed {
                            target: target.to_path_buf(),
                            detail,
                        }
                    });
                }
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    async fn prepare(
        &self,
        r: PrepareRequest,
        p: &Progress,
    ) -> Result<PreparedImage, BackendError> {
        p.phase(
            TaskState::LocatingResources,
            "resolving master snapshot and storage classes",
        );
        let m = self.resolve_master(&r.master).await?;
        let mut storages: Vec<&String> = Vec::new();
        for s in &r.target_storages {
            if !storages.contains(&s) {
                storages.push(s);
            }
        }
        if storages.is_empty() {
            return Err(BackendError::StorageNotFound {
                storage: String::new(),
                path: PathBuf::new(),
            });
        }
        let mut classes = Vec::new();
        for s in &storages {
            classes.push(self.storage_class(s).await?);
        }
        let origin = m.source.id();
        for s in &storages {
            let name = objects::prepared_name(&r.image_id, s);
            if let Some(dv) = self.get(&objects::data_volumes(), &name).await? {
                let found = dv["metadata"]["annotations"][objects::ANNOTATION_SOURCE]
                    .as_str()
                    .unwrap_or_default();
                if found != origin {
                    return Err(BackendError::PreparedImageConflict {
                        image: self.prepared_path(s, &name),
                        detail: format!("cloned from '{found}', not '{origin}'"),
                    });
                }
            }
        }
        p.percent(5.0);
        let n = storages.len();
        let primary = objects::prepared_name(&r.image_id, storages[0]);
        for (i, (s, class)) in storages.iter().zip(&classes).enumerate() {
            let name = objects::prepared_name(&r.image_id, s);
            let (source, phase, lo, hi) = if i == 0 {
                let end = if n > 1 { 60.0 } else { 95.0 };
                (
                    m.source.clone(),
                    TaskState::ConsolidatingMasterImage,
                    5.0,
                    end,
                )
            } else {
                let step = 35.0 / (n - 1) as f64;
                (
                    DiskSource::Pvc {
                        namespace: self.ns().to_string(),
                        name: primary.clone(),
                    },
                    TaskState::ReplicatingMasterImage,
                    60.0 + step * (i - 1) as f64,
                    60.0 + step * i as f64,
                )
            };
            p.phase(phase, format!("cloning into DataVolume {name}"));
            if self.get(&objects::data_volumes(), &name).await?.is_none() {
                let dv = objects::prepared_data_volume(&objects::PreparedDisk {
                    namespace: self.ns(),
                    name: &name,
                    image_id: &r.image_id,
                    storage: s,
                    source: &source,
                    origin: &origin,
                    storage_class: class,
                    size_bytes: m.size_bytes,
                });
                let dv = objects::with_owner(dv, self.ns(), r.owner.as_ref());
                self.apply(&objects::data_volumes(), &dv).await?;
            }
            let target = self.prepared_path(s, &name);
            self.wait_clone(&name, &target, p.scaled(lo, hi), p, phase)
                .await?;
        }
        Ok(PreparedImage {
            image_id: r.image_id.clone(),
            source: self.vm_path(&m.vm),
            snapshot: m.snapshot,
            virtual_size: m.size_bytes,
            copies: storages
                .iter()
                .map(|s| {
                    let name = objects::prepared_name(&r.image_id, s);
                    PreparedCopy {
                        storage: (*s).clone(),
                        path: self.prepared_path(s, &name),
                        size_bytes: m.size_bytes,
                    }
                })
                .collect(),
        })
    }

    fn prepared_path(&self, storage: &str, pvc: &str) -> PathBuf {
        storage_root(self.ns(), storage).join("prepared").join(pvc)
    }

    fn machine_info(&self, storage: &str, scheme: &str, vm: &str, cache: bool) -> MachineInfo {
        let dir = storage_root(self.ns(), storage)
            .join("machines")
            .join(scheme)
            .join(vm);
        MachineInfo {
            disk: dir.join(objects::disk_name(vm)),
            identity_disk: dir.join(objects::identity_name(vm)),
            cache_disk: cache.then(|| dir.join("cache")),
            definition: dir.join(format!("{vm}.virtualmachine")),
            prepared_image: PathBuf::new(),
            dir,
        }
    }

    /// The prepared PVC a machine request names; it must have been cloned completely.
    async fn usable_prepared(&self, path: &Path) -> Result<(String, u64), BackendError> {
        let unusable = |detail: String| BackendError::PreparedImageNotFound {
            path: path.to_path_buf(),
            detail,
        };
        let name = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .ok_or_else(|| unusable("no PVC name".into()))?;
        let dv = self
            .get(&objects::data_volumes(), &name)
            .await?
            .ok_or_else(|| unusable(format!("DataVolume {name} not found")))?;
        if status::data_volume_state(&dv) != CloneState::Succeeded {
            return Err(unusable(format!("DataVolume {name} has not succeeded")));
        }
        let size = dv["spec"]["storage"]["resources"]["requests"]["storage"]
            .as_str()
            .and_then(status::parse_quantity)
            .unwrap_or_default();
        Ok((name, size))
    }

    async fn put_machine(
        &self,
        r: MachineRequest,
        update: bool,
        p: &Progress,
    ) -> Result<MachineInfo, BackendError> {
        p.phase(TaskState::LocatingResources, "resolving prepared image");
        let class = self.storage_class(&r.storage).await?;
        let (prepared, size) = self.usable_prepared(&r.prepared_image).await?;
        let vm = objects::machine_name(&r.scheme, &r.machine_name);
        let mut interfaces = Vec::new();
        for (i, nic) in r.nics.iter().enumerate() {
            let network = self
                .config
                .networks
                .iter()
                .find(|n| n.name == nic.network)
                .ok_or_else(|| BackendError::NetworkNotFound {
                    network: nic.network.clone(),
                })?;
            interfaces.push(Interface {
                network: network.name.clone(),
                attachment: network.attachment.clone(),
                mac: nic
                    .mac
                    .clone()
                    .unwrap_or_else(|| derived_mac(&r.scheme, &r.machine_name, i)),
            });
        }
        let mut info = self.machine_info(
            &r.storage,
            &r.scheme,
            &vm,
            r.write_back_cache.is_some_and(|c| c.disk_mb > 0),
        );
        info.prepared_image = r.prepared_image.clone();
        let existing = self.get(&objects::virtual_machines(), &vm).await?;
        let running = existing
            .as_ref()
            .is_some_and(|e| e["spec"]["runStrategy"].as_str() == Some("Always"));
        let disk = objects::disk_name(&vm);
        if let Some(e) = &existing {
            let current = e["metadata"]["annotations"][objects::ANNOTATION_PREPARED]
                .as_str()
                .unwrap_or_default();
            if update {
                p.phase(
                    TaskState::CreatingMachines,
                    "removing the old VirtualMachine",
                );
                self.delete(&objects::virtual_machines(), &vm).await?;
                self.delete_disk(&disk).await?;
            } else if current != prepared {
                return Err(BackendError::MachineAlreadyExists {
                    path: info.dir.clone(),
                    existing: PathBuf::from(current),
                });
            }
        }
        p.phase(
            TaskState::CreatingMachines,
            format!("writing VirtualMachine {vm}"),
        );
        let owner = r.owner.as_ref();
        let secret = objects::identity_secret(
            self.ns(),
            &vm,
            &r.scheme,
            &r.machine_name,
            &r.domain,
            r.index,
        );
        self.apply(
            &secret_resource(),
            &objects::with_owner(secret, self.ns(), owner),
        )
        .await?;
        let spec = MachineSpec {
            namespace: self.ns().to_string(),
            name: vm.clone(),
            hostname: r.machine_name.clone(),
            scheme: r.scheme.clone(),
            storage: r.storage.clone(),
            storage_class: class,
            prepared_pvc: prepared,
            size_bytes: size,
            cpu: r.cpu,
            memory_mb: r.memory_mb,
            interfaces,
            cache_disk_mb: r.write_back_cache.map(|c| c.disk_mb),
            running,
        };
        self.apply(
            &objects::virtual_machines(),
            &objects::with_owner(objects::virtual_machine(&spec), self.ns(), owner),
        )
        .await?;
        self.wait_machine_disk(&disk, &info, p).await?;
        Ok(info)
    }

    /// Waits for KubeVirt to clone a machine's system disk `disk` from its template.
    async fn wait_machine_disk(
        &self,
        disk: &str,
        info: &MachineInfo,
        p: &Progress,
    ) -> Result<(), BackendError> {
        self.wait_clone(
            disk,
            &info.disk,
            p.scaled(10.0, 95.0),
            p,
            TaskState::CreatingMachines,
        )
        .await
    }

    /// Clean-on-boot: the system disk's DataVolume and PVC are deleted, KubeVirt clones them
    /// again from the VirtualMachine's `dataVolumeTemplates` (the current prepared image).
    async fn reset_machine(
        &self,
        m: MachineRef,
        p: &Progress,
    ) -> Result<MachineInfo, BackendError> {
        p.phase(TaskState::LocatingResources, "locating VirtualMachine");
        let vm = objects::machine_name(&m.scheme, &m.machine_name);
        let mut info = self.machine_info(&m.storage, &m.scheme, &vm, false);
        let existing = self
            .get(&objects::virtual_machines(), &vm)
            .await?
            .ok_or_else(|| BackendError::MachineNotFound {
                path: info.dir.clone(),
            })?;
        let prepared = existing["metadata"]["annotations"][objects::ANNOTATION_PREPARED]
            .as_str()
            .unwrap_or_default();
        info.prepared_image = storage_root(self.ns(), &m.storage)
            .join("prepared")
            .join(prepared);
        info.cache_disk = existing["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .is_some_and(|v| v.iter().any(|v| v["name"] == "cache"))
            .then(|| info.dir.join("cache"));
        let disk = objects::disk_name(&vm);
        p.phase(
            TaskState::CreatingMachines,
            format!("recreating disk {disk}"),
        );
        self.delete_disk(&disk).await?;
        self.wait_machine_disk(&disk, &info, p).await?;
        Ok(info)
    }

    /// `runStrategy: Always` or `Halted` on the machine's VirtualMachine.
    async fn set_power(&self, r: PowerRequest, p: &Progress) -> Result<MachineInfo, BackendError> {
        p.phase(TaskState::LocatingResources, "locating VirtualMachine");
        let m = &r.machine;
        let vm = objects::machine_name(&m.scheme, &m.machine_name);
        let info = self.machine_info(&m.storage, &m.scheme, &vm, false);
        if self.get(&objects::virtual_machines(), &vm).await?.is_none() {
            return Err(BackendError::MachineNotFound { path: info.dir });
        }
        let strategy = objects::run_strategy(r.running);
        p.phase(
            TaskState::Processing,
            format!("runStrategy {strategy} on VirtualMachine {vm}"),
        );
        self.dynamic(&objects::virtual_machines())
            .await?
            .patch(
                &vm,
                &PatchParams::default().validation_strict(),
                &Patch::Merge(json!({"spec": {"runStrategy": strategy}})),
            )
            .await
            .map_err(|e| api_error(&format!("VirtualMachine {}/{vm}", self.ns()), &e))?;
        Ok(info)
    }

    async fn delete_machine(
        &self,
        r: DeleteMachineRequest,
        p: &Progress,
    ) -> Result<DeleteOutcome, BackendError> {
        p.phase(TaskState::LocatingResources, "locating VirtualMachine");
        let vm = objects::machine_name(&r.machine.scheme, &r.machine.machine_name);
        let info = self.machine_info(&r.machine.storage, &r.machine.scheme, &vm, false);
        let mut out = DeleteOutcome::default();
        let disk = objects::disk_name(&vm);
        if r.policy == DeletionPolicy::Retain && self.get(&pvc_resource(), &disk).await?.is_some() {
            // Without owners, the PVC outlives its DataVolume and VirtualMachine.
            self.disown(&pvc_resource(), &disk).await?;
            out.retained.push(info.disk.clone());
        }
        if self.delete(&objects::virtual_machines(), &vm).await? {
            out.removed.push(info.definition.clone());
        }
        if self
            .delete(&secret_resource(), &objects::identity_name(&vm))
            .await?
        {
            out.removed.push(info.identity_disk.clone());
        }
        match r.policy {
            DeletionPolicy::Delete => {
                if self.delete_disk(&disk).await? {
                    out.removed.push(info.disk.clone());
                }
            }
            DeletionPolicy::Retain => {
                self.delete(&objects::data_volumes(), &disk).await?;
            }
        }
        Ok(out)
    }

    async fn delete_prepared(
        &self,
        r: DeletePreparedRequest,
        p: &Progress,
    ) -> Result<DeleteOutcome, BackendError> {
        p.phase(TaskState::LocatingResources, "locating prepared image");
        let machines = self.list(&objects::virtual_machines()).await?;
        let mut found = Vec::new();
        for s in &r.storages {
            let name = objects::prepared_name(&r.image_id, s);
            let path = self.prepared_path(s, &name);
            if let Some(user) = machines.iter().find(|vm| {
                vm["metadata"]["annotations"][objects::ANNOTATION_PREPARED].as_str()
                    == Some(name.as_str())
            }) {
                let vm = user["metadata"]["name"].as_str().unwrap_or_default();
                return Err(BackendError::ImageInUse {
                    image: path,
                    machine: self.vm_path(vm),
                });
            }
            found.push((name, path));
        }
        let mut out = DeleteOutcome::default();
        for (name, path) in found {
            match r.policy {
                DeletionPolicy::Retain => {
                    // Owned while the policy was `Delete`: the garbage collector would take
                    // the DataVolume (and its PVC) with the spec.
                    if self.get(&objects::data_volumes(), &name).await?.is_some() {
                        self.disown(&objects::data_volumes(), &name).await?;
                    }
                    if self.get(&pvc_resource(), &name).await?.is_some() {
                        out.retained.push(path);
                    }
                }
                DeletionPolicy::Delete => {
                    if self.delete_disk(&name).await? {
                        out.removed.push(path);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn inventory(&self, r: InventoryRequest) -> Result<Inventory, BackendError> {
        let hu = &r.hosting_unit;
        let mut inventory = Inventory::default();
        for s in &r.storages {
            self.storage_class(s).await?;
            inventory.storages.push(StorageInfo {
                name: s.clone(),
                path: storage_root(self.ns(), s),
                // A StorageClass reports no free space.
                available_bytes: u64::MAX,
            });
        }
        let attachments = self.list(&objects::network_attachments()).await?;
        for n in &self.config.networks {
            let exists = n.attachment.as_ref().is_none_or(|a| {
                let (ns, name) = a.split_once('/').unwrap_or((self.ns(), a));
                attachments.iter().any(|o| {
                    o["metadata"]["name"].as_str() == Some(name)
                        && o["metadata"]["namespace"].as_str() == Some(ns)
                })
            });
            if exists {
                inventory
                    .networks
                    .push(format!("XDHyp:\\HostingUnits\\{hu}\\{}.network", n.name));
            }
        }
        inventory.security_groups = self
            .config
            .security_groups
            .iter()
            .map(|g| format!("XDHyp:\\HostingUnits\\{hu}\\{g}.securitygroup"))
            .collect();
        for it in self.list(&objects::cluster_instancetypes()).await? {
            if let Some(offering) = status::instancetype_offering(&it) {
                inventory.service_offerings.push(ServiceOfferingInfo {
                    path: format!(
                        "XDHyp:\\HostingUnits\\{hu}\\{}.serviceoffering",
                        offering.name
                    ),
                    offering,
                });
            }
        }
        let vm_snapshots = self.list(&objects::vm_snapshots()).await?;
        let volume_snapshots = self.list(&objects::volume_snapshots()).await?;
        for vm in self.list(&objects::virtual_machines()).await? {
            if vm["metadata"]["labels"][objects::LABEL_MANAGED_BY] == objects::MANAGER {
                continue;
            }
            let name = vm["metadata"]["name"].as_str().unwrap_or_default();
            let claims = vm_claims(&vm);
            let path = format!("XDHyp:\\HostingUnits\\{hu}\\{name}.vm");
            let mut snapshots: Vec<String> = vm_snapshots
                .iter()
                .filter(|s| s["spec"]["source"]["name"].as_str() == Some(name))
                .chain(volume_snapshots.iter().filter(|s| {
                    s["spec"]["source"]["persistentVolumeClaimName"]
                        .as_str()
                        .is_some_and(|c| claims.iter().any(|x| x == c))
                }))
                .filter_map(|s| s["metadata"]["name"].as_str())
                .map(|s| format!("{path}\\{s}.snapshot"))
                .collect();
            snapshots.sort();
            inventory.master_images.push(MasterImageInfo {
                path,
                storage: r.storages.first().cloned().unwrap_or_default(),
                file: self.vm_path(name),
                virtual_size: 0,
                snapshots,
            });
        }
        Ok(inventory)
    }
}

/// The PVC names a VirtualMachine's volumes use (DataVolumes and claims).
fn vm_claims(vm: &Value) -> Vec<String> {
    vm["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .map(|volumes| {
            volumes
                .iter()
                .filter_map(|v| {
                    v["dataVolume"]["name"]
                        .as_str()
                        .or_else(|| v["persistentVolumeClaim"]["claimName"].as_str())
                })
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn pvc_resource() -> ApiResource {
    ApiResource::erase::<PersistentVolumeClaim>(&())
}

fn secret_resource() -> ApiResource {
    ApiResource::erase::<Secret>(&())
}

/// Whether the API server serves `resource` in `namespace` (a list of at most one object; a 404
/// means the API is not installed). Used for the connection's `On` check.
pub async fn serves(
    client: &Client,
    namespace: &str,
    resource: &ApiResource,
) -> Result<bool, kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_of_a_vm_are_its_data_volumes_and_pvcs() {
        let vm = json!({"spec": {"template": {"spec": {"volumes": [
            {"name": "a", "dataVolume": {"name": "root"}},
            {"name": "b", "persistentVolumeClaim": {"claimName": "data"}},
            {"name": "c", "cloudInitNoCloud": {}}
        ]}}}});
        assert_eq!(vm_claims(&vm), vec!["root", "data"]);
        assert!(vm_claims(&json!({})).is_empty());
        assert_eq!(
            storage_root("vms", "fast"),
            PathBuf::from("/kubevirt/vms/fast")
        );
    }
}
