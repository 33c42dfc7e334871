//! The backend trait and its plain request/response types (no Kubernetes types).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use mcs_domain::task::TaskState;
use serde::{Deserialize, Serialize};

use crate::error::BackendError;

/// A boxed, sendable future: keeps [`Backend`] object-safe (`dyn Backend`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Identifies one started operation of one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OperationId(pub uuid::Uuid);

impl std::fmt::Display for OperationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A hypervisor backend: every operation is *started*, then *polled* until it has a result.
///
/// Every operation is idempotent: running it twice, or again after a crash half-way, ends in
/// the same state. Starting an operation on a target that already has one running (the same
/// prepared image, the same machine) returns the running operation's id.
pub trait Backend: Send + Sync {
    /// The backend kind, e.g. `Local`.
    fn kind(&self) -> &'static str;

    /// Starts `op` and returns its id at once; the work runs in the background.
    fn start(&self, op: Operation) -> BoxFuture<'_, Result<OperationId, BackendError>>;

    /// The current status of an operation; `result` is `Some` once it has ended.
    fn poll(&self, id: OperationId) -> BoxFuture<'_, Result<OperationStatus, BackendError>>;

    /// Cancels a running operation: its processes are killed and its partial files removed
    /// before this returns. Canceling an ended operation changes nothing. Returns the status.
    fn cancel(&self, id: OperationId) -> BoxFuture<'_, Result<OperationStatus, BackendError>>;

    /// Drops an ended operation's record (running ones are kept). Returns whether it was known.
    fn forget(&self, id: OperationId) -> BoxFuture<'_, bool>;

    /// The hypervisor's own word for the machine's state (KubeVirt: its VirtualMachine's
    /// `status.printableStatus`), read now; `None` when the backend has none or the machine does
    /// not exist. The default, for backends with no such state (Local), is `None`.
    fn machine_status(
        &self,
        machine: MachineRef,
    ) -> BoxFuture<'_, Result<Option<String>, BackendError>> {
        let _ = machine;
        Box::pin(async { Ok(None) })
    }
}

/// Polls `id` every `interval` until the operation has ended; returns its final status.
pub async fn wait(
    backend: &dyn Backend,
    id: OperationId,
    interval: Duration,
) -> Result<OperationStatus, BackendError> {
    loop {
        let status = backend.poll(id).await?;
        if status.result.is_some() {
            return Ok(status);
        }
        tokio::time::sleep(interval).await;
    }
}

/// Starts `op`, waits for it and returns its result (a convenience for tests and tools).
pub async fn run(backend: &dyn Backend, op: Operation) -> Result<Output, BackendError> {
    let id = backend.start(op).await?;
    let status = wait(backend, id, Duration::from_millis(20)).await?;
    status.result.unwrap_or(Err(BackendError::Canceled))
}

/// The status of one operation.
#[derive(Clone, Debug, PartialEq)]
pub struct OperationStatus {
    /// The operation's id.
    pub id: OperationId,
    /// What the operation does (`Prepare`, `CreateMachine`, ...).
    pub operation: &'static str,
    /// The SDK task state it is in: a running state (`LocatingResources`,
    /// `ConsolidatingMasterImage`, ...), `Finished`, or the failure state of its error.
    pub phase: TaskState,
    /// Progress, 0..=100.
    pub percent: u8,
    /// What it is doing now, or why it failed.
    pub message: String,
    /// `Some` once the operation has ended.
    pub result: Option<Result<Output, BackendError>>,
}

/// An operation to start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Operation {
    /// Lists what the hosting unit offers.
    ResolveInventory(InventoryRequest),
    /// Measures the space a prepared image of a master snapshot needs.
    Measure(MeasureRequest),
    /// Consolidates a master snapshot into a prepared image and replicates it to every storage.
    Prepare(PrepareRequest),
    /// Creates one machine (linked clone, identity disk, definition).
    CreateMachine(MachineRequest),
    /// Clean-on-boot reset: the machine's overlay is recreated, dropping its writes.
    ResetMachine(MachineRef),
    /// Rebuilds a machine from a new prepared image and/or configuration.
    UpdateMachine(MachineRequest),
    /// Starts or stops a machine (KubeVirt: its `runStrategy`). The `Local` backend runs no
    /// machines: it only checks that the machine exists.
    SetPower(PowerRequest),
    /// Deletes a machine, honouring the deletion policy.
    DeleteMachine(DeleteMachineRequest),
    /// Deletes a prepared image from its storages, honouring the deletion policy.
    DeletePreparedImage(DeletePreparedRequest),
}

impl Operation {
    /// The operation's name, e.g. `Prepare`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::ResolveInventory(_) => "ResolveInventory",
            Self::Measure(_) => "Measure",
            Self::Prepare(_) => "Prepare",
            Self::CreateMachine(_) => "CreateMachine",
            Self::ResetMachine(_) => "ResetMachine",
            Self::UpdateMachine(_) => "UpdateMachine",
            Self::SetPower(_) => "SetPower",
            Self::DeleteMachine(_) => "DeleteMachine",
            Self::DeletePreparedImage(_) => "DeletePreparedImage",
        }
    }

    /// Whether the operation only reads (inventory, measuring): frequent and short, so it is
    /// logged at debug level, while operations that change disks are logged at info level.
    pub fn is_read_only(&self) -> bool {
        matches!(self, Self::ResolveInventory(_) | Self::Measure(_))
    }
}

/// The result of a finished operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Output {
    /// Of [`Operation::ResolveInventory`].
    Inventory(Inventory),
    /// Of [`Operation::Measure`].
    Measurement(Measurement),
    /// Of [`Operation::Prepare`].
    Prepared(PreparedImage),
    /// Of the machine operations (create, reset, update, power).
    Machine(MachineInfo),
    /// Of the delete operations.
    Deleted(DeleteOutcome),
}

/// Which storages (by the connection's storage names) belong to a hosting unit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryRequest {
    /// The hosting unit's name (as in inventory paths).
    pub hosting_unit: String,
    /// The hosting unit's storages, by name.
    pub storages: Vec<String>,
}

/// What a hosting unit offers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    /// The storages and their free space.
    pub storages: Vec<StorageInfo>,
    /// The networks, as inventory paths (`XDHyp:\HostingUnits\hu\<net>.network`).
    pub networks: Vec<String>,
    /// The security groups, as inventory paths (`XDHyp:\HostingUnits\hu\<group>.securitygroup`).
    pub security_groups: Vec<String>,
    /// The service offerings.
    pub service_offerings: Vec<ServiceOfferingInfo>,
    /// The master images found in the storages, with their snapshots.
    pub master_images: Vec<MasterImageInfo>,
    /// The machine profiles found in the storages.
    pub machine_profiles: Vec<MachineProfileInfo>,
}

/// One storage of a hosting unit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageInfo {
    /// The storage's name.
    pub name: String,
    /// Its root directory.
    pub path: PathBuf,
    /// Free bytes.
    pub available_bytes: u64,
}

/// A named CPU/memory preset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceOffering {
    /// The offering's name.
    pub name: String,
    /// Virtual CPUs.
    pub cpu: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
}

/// A service offering as listed in the inventory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceOfferingInfo {
    /// Its inventory path (`XDHyp:\HostingUnits\hu\<name>.serviceoffering`).
    pub path: String,
    /// The preset.
    pub offering: ServiceOffering,
}

/// A master image (a qcow2 file with internal snapshots).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterImageInfo {
    /// Its inventory path (`XDHyp:\HostingUnits\hu\a.folder\win11.vm`).
    pub path: String,
    /// The storage it was found in.
    pub storage: String,
    /// The file.
    pub file: PathBuf,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// Its snapshots, as inventory paths (`...\win11.vm\base.snapshot`).
    pub snapshots: Vec<String>,
}

/// A machine profile: a machine definition template (`profiles/<name>.json` in a storage).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineProfileInfo {
    /// Its inventory path (`XDHyp:\HostingUnits\hu\profiles.folder\<name>.machineprofile`).
    pub path: String,
    /// The storage it was found in.
    pub storage: String,
    /// The file.
    pub file: PathBuf,
}

/// A master snapshot, by Citrix inventory path, searched in the hosting unit's storages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterRef {
    /// The hosting unit the path must be in.
    pub hosting_unit: String,
    /// The hosting unit's storages (by name), searched in order.
    pub storages: Vec<String>,
    /// `XDHyp:\HostingUnits\<hu>\[<dir>.folder\...]<image>.vm\<snapshot>.snapshot`.
    pub path: String,
}

/// Measure a master snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeasureRequest {
    /// The master snapshot.
    pub master: MasterRef,
}

/// The space a prepared image needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measurement {
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// Bytes the consolidated image needs (per storage copy).
    pub required_bytes: u64,
    /// Bytes a fully allocated image would need.
    pub fully_allocated_bytes: u64,
}

/// Prepare an image: consolidate the master snapshot, replicate to every target storage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepareRequest {
    /// The prepared image's id (a file-name-safe name, e.g. the spec's uid).
    pub image_id: String,
    /// The master snapshot.
    pub master: MasterRef,
    /// The storages (by name) that each get a verified copy; the first gets the consolidation.
    pub target_storages: Vec<String>,
    /// The Kubernetes object the copies belong to (the ImageVersionSpec), if any.
    #[serde(default)]
    pub owner: Option<Owner>,
}

/// The Kubernetes object a request's results belong to. A backend that writes Kubernetes
/// objects (KubeVirt) names it in them, and makes them owned by it (`ownerReferences`, so the
/// cluster's garbage collector removes them with it) when they are in its namespace and its
/// policy is [`DeletionPolicy::Delete`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Its `apiVersion`, e.g. `mcs.imaging.dev/v1alpha1`.
    pub api_version: String,
    /// Its kind, e.g. `ProvVm`.
    pub kind: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its `metadata.uid`.
    pub uid: String,
    /// What its deletion does to the disks: with `Retain` nothing is made owned by it, so a
    /// deletion the operator does not see (its finalizer removed by hand) keeps them.
    pub policy: DeletionPolicy,
}

/// A prepared image and its copies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedImage {
    /// The image id.
    pub image_id: String,
    /// The master file it was consolidated from.
    pub source: PathBuf,
    /// The snapshot.
    pub snapshot: String,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// One copy per target storage.
    pub copies: Vec<PreparedCopy>,
}

/// One storage's copy of a prepared image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedCopy {
    /// The storage's name.
    pub storage: String,
    /// The image file (absolute).
    pub path: PathBuf,
    /// The file's size in bytes.
    pub size_bytes: u64,
}

/// A NIC of a machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    /// The network it attaches to (from the scheme's network mapping).
    pub network: String,
    /// A fixed MAC address; derived from the machine's identity when `None`.
    pub mac: Option<String>,
}

/// Write-back cache settings of a machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteBackCache {
    /// Size of the cache disk in MiB (0: no disk).
    pub disk_mb: u64,
    /// Size of the memory cache in MiB.
    pub memory_mb: u64,
}

/// Create or update one machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRequest {
    /// The storage (by name) the machine's files live in.
    pub storage: String,
    /// The provisioning scheme's name.
    pub scheme: String,
    /// The machine (host) name, e.g. `VDI-001`.
    pub machine_name: String,
    /// The machine's index in its identity pool.
    pub index: u32,
    /// The AD domain (may be empty).
    pub domain: String,
    /// Virtual CPUs.
    pub cpu: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// NICs, in order.
    pub nics: Vec<Nic>,
    /// Write-back cache, when the scheme uses one.
    pub write_back_cache: Option<WriteBackCache>,
    /// Whether the machine is reset on every boot.
    pub clean_on_boot: bool,
    /// The prepared image the overlay is backed by (a path a `Prepare` returned).
    pub prepared_image: PathBuf,
    /// The Kubernetes object the machine belongs to (the ProvVM), if any.
    #[serde(default)]
    pub owner: Option<Owner>,
}

/// Names one machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRef {
    /// The storage (by name) the machine's files live in.
    pub storage: String,
    /// The provisioning scheme's name.
    pub scheme: String,
    /// The machine name.
    pub machine_name: String,
}

/// A machine's files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineInfo {
    /// The machine's directory.
    pub dir: PathBuf,
    /// The overlay disk.
    pub disk: PathBuf,
    /// The identity disk.
    pub identity_disk: PathBuf,
    /// The write-back cache disk, if any.
    pub cache_disk: Option<PathBuf>,
    /// The machine definition file.
    pub definition: PathBuf,
    /// The prepared image the overlay is backed by.
    pub prepared_image: PathBuf,
}

/// Start or stop one machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerRequest {
    /// The machine.
    pub machine: MachineRef,
    /// Whether it should run.
    pub running: bool,
}

/// What happens to disks when their owner is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeletionPolicy {
    /// Remove the files.
    #[default]
    Delete,
    /// Keep the files.
    Retain,
}

/// Delete one machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteMachineRequest {
    /// The machine.
    pub machine: MachineRef,
    /// Delete or retain its files.
    pub policy: DeletionPolicy,
}

/// Delete a prepared image from storages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletePreparedRequest {
    /// The image id.
    pub image_id: String,
    /// The storages (by name) holding copies.
    pub storages: Vec<String>,
    /// Delete or retain its files.
    pub policy: DeletionPolicy,
}

/// What a delete did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteOutcome {
    /// Files and directories removed.
    pub removed: Vec<PathBuf>,
    /// Files kept because of [`DeletionPolicy::Retain`].
    pub retained: Vec<PathBuf>,
}
