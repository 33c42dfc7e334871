//! The `Local` backend: prepared images and machines as files under the connection's storage
//! roots, made with `qemu-img`. See the crate docs for the layout.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mcs_domain::inventory_path::InventoryPath;
use mcs_domain::task::TaskState;
use serde::{Deserialize, Serialize};

use crate::api::{
    Backend, BoxFuture, DeleteMachineRequest, DeleteOutcome, DeletePreparedRequest, DeletionPolicy,
    Inventory, InventoryRequest, MachineInfo, MachineProfileInfo, MachineRef, MachineRequest,
    MasterImageInfo, MasterRef, MeasureRequest, Measurement, Operation, OperationId,
    OperationStatus, Output, PrepareRequest, PreparedCopy, PreparedImage, ServiceOffering,
    ServiceOfferingInfo, StorageInfo, WriteBackCache,
};
use crate::disk_files::{self, QcowTemplates, TemplateKey};
use crate::error::BackendError;
use crate::paths::{
    self, PartialGuard, canonical_root, confine_existing, ensure_dir, existing_dir, file_in,
    free_space, partial_for, recheck_confined, remove_stale_partials, supports_direct_io,
    validate_name,
};
use crate::qemu::{Failure, QemuFailure, QemuImg, classify};
use crate::runner::{Progress, Runner};

/// Directory (under a storage root) of prepared images.
pub const PREPARED_DIR: &str = "prepared";
/// Directory (under a storage root) of machines.
pub const MACHINES_DIR: &str = "machines";
/// Directory (under a storage root) of machine profiles.
pub const PROFILES_DIR: &str = "profiles";
/// A machine's overlay disk.
pub const DISK_FILE: &str = "disk.qcow2";
/// A machine's identity disk: a raw FAT12 floppy image with `identity.json` and `hostname`.
pub const IDENTITY_FILE: &str = "identity.img";
/// The volume label of identity disks.
pub const IDENTITY_LABEL: &str = "MCSIDENTITY";
/// A machine's write-back cache disk.
pub const CACHE_FILE: &str = "cache.qcow2";
/// A machine's definition.
pub const DEFINITION_FILE: &str = "machine.json";
/// The identity staging directory that earlier versions built identity disks from; its stale
/// partials are still removed.
const IDENTITY_STAGING: &str = "identity.d";

/// One named storage root of a `Local` connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageRootConfig {
    /// The storage's name, as hosting units refer to it.
    pub name: String,
    /// Its directory.
    pub path: PathBuf,
}

/// The settings of a `Local` connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocalConfig {
    /// The storage roots; every path the backend touches lies under one of them.
    pub storages: Vec<StorageRootConfig>,
    /// The networks NICs may attach to.
    pub networks: Vec<String>,
    /// The security groups the hosting unit offers (listed in the inventory; the Local
    /// backend has no firewall to apply them to).
    pub security_groups: Vec<String>,
    /// The service offerings (CPU/memory presets).
    pub service_offerings: Vec<ServiceOffering>,
    /// Most qemu-img processes at once (`None`: the number of cores).
    pub max_parallel: Option<usize>,
    /// Timeout of one qemu-img process.
    pub qemu_timeout: Duration,
    /// Each image copy reads at most this many bytes per second (`None`: no limit).
    pub copy_rate_limit: Option<u64>,
    /// The qemu-img program.
    pub qemu_img: PathBuf,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            storages: Vec::new(),
            networks: Vec::new(),
            security_groups: Vec::new(),
            service_offerings: Vec::new(),
            max_parallel: None,
            qemu_timeout: Duration::from_secs(3600),
            copy_rate_limit: None,
            qemu_img: PathBuf::from("qemu-img"),
        }
    }
}

/// The `<image>.done.json` record written beside a prepared image after it was renamed into
/// place; a prepared image counts as finished only when its record matches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoneRecord {
    /// The image id.
    pub image_id: String,
    /// The canonical master file.
    pub source: PathBuf,
    /// The master snapshot.
    pub snapshot: String,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// The image file's size in bytes.
    pub size_bytes: u64,
}

/// The machine definition, written atomically to `machine.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineDefinition {
    /// Host name.
    pub name: String,
    /// Provisioning scheme.
    pub scheme: String,
    /// Index in the identity pool.
    pub index: u32,
    /// AD domain.
    pub domain: String,
    /// Virtual CPUs.
    pub cpu: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// NICs in order.
    pub nics: Vec<NicDefinition>,
    /// Disks in boot order.
    pub disks: Vec<DiskDefinition>,
    /// Write-back cache settings.
    pub write_back_cache: Option<WriteBackCache>,
    /// Reset on every boot.
    pub clean_on_boot: bool,
    /// The prepared image backing the system disk.
    pub prepared_image: PathBuf,
}

/// One NIC of a machine definition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicDefinition {
    /// Position, from 0.
    pub index: u32,
    /// The network.
    pub network: String,
    /// The MAC address.
    pub mac: String,
}

/// One disk of a machine definition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskDefinition {
    /// `system`, `identity` or `cache`.
    pub role: String,
    /// The file.
    pub path: PathBuf,
    /// The image format.
    pub format: String,
    /// The host cache mode (`writeback`).
    pub cache: String,
}

/// The identity written into a machine's identity disk (`identity.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Host name.
    pub hostname: String,
    /// AD domain.
    pub domain: String,
    /// Fully qualified name.
    pub fqdn: String,
    /// Index in the identity pool.
    pub machine_index: u32,
    /// Provisioning scheme.
    pub scheme: String,
}

struct Inner {
    config: LocalConfig,
    qemu: QemuImg,
    templates: QcowTemplates,
}

/// The `Local` backend. Cheap to clone; clones share operations.
#[derive(Clone)]
pub struct LocalBackend {
    inner: Arc<Inner>,
    runner: Runner,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl LocalBackend {
    /// A backend over `config`. Storage directories are not required to exist yet (a missing one
    /// fails the operations that need it with `StorageNotFound`).
    pub fn new(config: LocalConfig) -> Result<Self, BackendError> {
        for s in &config.storages {
            validate_name(&s.name)?;
        }
        let parallel = config.max_parallel.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        let qemu = QemuImg::new(config.qemu_img.clone(), parallel, config.qemu_timeout)
            .with_copy_rate_limit(config.copy_rate_limit);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                qemu,
                templates: QcowTemplates::default(),
            }),
            runner: Runner::default(),
        })
    }
}

impl Backend for LocalBackend {
    fn kind(&self) -> &'static str {
        "Local"
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
        // Partial files are removed by the aborted task's guards.
        Box::pin(
            self.runner
                .cancel(id, "canceled; partial files removed", |_| async {}),
        )
    }

    fn forget(&self, id: OperationId) -> BoxFuture<'_, bool> {
        Box::pin(async move { self.runner.forget(id) })
    }
}

/// A master snapshot resolved to a file.
#[derive(Debug)]
struct ResolvedMaster {
    file: PathBuf,
    snapshot: String,
}

/// One storage's copy of a prepared image.
#[derive(Debug)]
struct Target {
    storage: String,
    dir: PathBuf,
    final_path: PathBuf,
    done_path: PathBuf,
}

fn map_err_from_failure(
    f: QemuFailure,
    map: impl FnOnce(Failure, String) -> BackendError,
) -> BackendError {
    match f {
        QemuFailure::Backend(e) => e,
        QemuFailure::Exit(out) => {
            let detail = if out.stderr.is_empty() {
                format!("exit code {:?}", out.code)
            } else {
                out.stderr
            };
            map(classify(&detail), detail)
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, BackendError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BackendError::Io {
            path: PathBuf::new(),
            detail: format!("blocking task failed: {e}"),
        })?
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let bytes = fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn to_json<T: Serialize>(value: &T, path: &Path) -> Result<Vec<u8>, BackendError> {
    serde_json::to_vec_pretty(value).map_err(|e| BackendError::Io {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// A locally administered MAC address derived from the machine and NIC (stable across runs).
pub fn derived_mac(scheme: &str, machine: &str, nic: usize) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in scheme
        .bytes()
        .chain([0u8])
        .chain(machine.bytes())
        .chain([0u8])
        .chain((nic as u64).to_le_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

impl Inner {
    async fn execute(&self, op: Operation, p: &Progress) -> Result<Output, BackendError> {
        match op {
            Operation::ResolveInventory(r) => self.inventory(r, p).await.map(Output::Inventory),
            Operation::Measure(r) => self.measure(r, p).await.map(Output::Measurement),
            Operation::Prepare(r) => self.prepare(r, p).await.map(Output::Prepared),
            Operation::CreateMachine(r) => self.put_machine(r, false, p).await.map(Output::Machine),
            Operation::UpdateMachine(r) => self.put_machine(r, true, p).await.map(Output::Machine),
            Operation::ResetMachine(m) => self.reset_machine(m, p).await.map(Output::Machine),
            Operation::SetPower(r) => self.existing_machine(&r.machine).map(Output::Machine),
            Operation::DeleteMachine(r) => self.delete_machine(r, p).await.map(Output::Deleted),
            Operation::DeletePreparedImage(r) => {
                self.delete_prepared(r, p).await.map(Output::Deleted)
            }
        }
    }

    /// The canonical root of a configured storage.
    fn root(&self, storage: &str) -> Result<PathBuf, BackendError> {
        let cfg = self
            .config
            .storages
            .iter()
            .find(|s| s.name == storage)
            .ok_or_else(|| BackendError::StorageNotFound {
                storage: storage.to_string(),
                path: PathBuf::new(),
            })?;
        canonical_root(storage, &cfg.path)
    }

    /// The canonical roots of all configured storages that exist.
    fn all_roots(&self) -> Vec<PathBuf> {
        self.config
            .storages
            .iter()
            .filter_map(|s| canonical_root(&s.name, &s.path).ok())
            .collect()
    }

    fn resolve_master(&self, m: &MasterRef) -> Result<ResolvedMaster, BackendError> {
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
        let items = parsed.items();
        let [folders @ .., vm, _] = items else {
            return Err(not_snapshot("no `.vm` item before the snapshot".into()));
        };
        if !vm.is_kind("vm") {
            return Err(not_snapshot(format!("`{vm}` is not a `.vm` item")));
        }
        let mut rel = PathBuf::new();
        for f in folders {
            if !f.is_kind("folder") {
                return Err(not_snapshot(format!("`{f}` is not a `.folder` item")));
            }
            validate_name(&f.name)?;
            rel.push(&f.name);
        }
        validate_name(&vm.name)?;
        rel.push(format!("{}.qcow2", vm.name));
        if let Some(top) = folders.first()
            && [PREPARED_DIR, MACHINES_DIR, PROFILES_DIR].contains(&top.name.as_str())
        {
            return Err(not_snapshot(format!(
                "`{}` is a reserved directory, not a master folder",
                top.name
            )));
        }
        if m.storages.is_empty() {
            return Err(BackendError::StorageNotFound {
                storage: String::new(),
                path: PathBuf::new(),
            });
        }
        let mut first = None;
        for storage in &m.storages {
            let root = self.root(storage)?;
            let candidate = root.join(&rel);
            first.get_or_insert_with(|| candidate.clone());
            if exists(&candidate) {
                let file = confine_existing(std::slice::from_ref(&root), &candidate)?;
                return Ok(ResolvedMaster {
                    file,
                    snapshot: snap.name.clone(),
                });
            }
        }
        Err(BackendError::SnapshotNotFound {
            image: first.unwrap_or_default(),
            snapshot: snap.name.clone(),
            detail: format!(
                "master image file not found in storages {}",
                m.storages.join(", ")
            ),
        })
    }

    /// `info` of the master: a qcow2 holding the snapshot.
    async fn inspect_master(&self, m: &ResolvedMaster) -> Result<u64, BackendError> {
        let info = self.qemu.info(&m.file, true).await.map_err(|f| {
            map_err_from_failure(f, |kind, detail| match kind {
                Failure::NotFound => BackendError::SnapshotNotFound {
                    image: m.file.clone(),
                    snapshot: m.snapshot.clone(),
                    detail,
                },
                Failure::Locked => BackendError::InvalidSnapshotState {
                    image: m.file.clone(),
                    detail,
                },
                _ => BackendError::MasterImageNotASnapshot {
                    path: m.file.display().to_string(),
                    detail,
                },
            })
        })?;
        if info.format != "qcow2" {
            return Err(BackendError::MasterImageNotASnapshot {
                path: m.file.display().to_string(),
                detail: format!("image format is {}, not qcow2", info.format),
            });
        }
        if !info.snapshots.iter().any(|s| s.name == m.snapshot) {
            // A damaged image (truncated, corrupt) may lose its snapshot table: say that it is
            // damaged, not that the snapshot is missing.
            self.check_master(m).await?;
            let have: Vec<&str> = info.snapshots.iter().map(|s| s.name.as_str()).collect();
            return Err(BackendError::SnapshotNotFound {
                image: m.file.clone(),
                snapshot: m.snapshot.clone(),
                detail: format!("snapshots present: [{}]", have.join(", ")),
            });
        }
        Ok(info.virtual_size)
    }

    /// `check` of the master: not corrupt, not locked by a writer.
    async fn check_master(&self, m: &ResolvedMaster) -> Result<(), BackendError> {
        let report = self.qemu.check(&m.file).await.map_err(|f| {
            map_err_from_failure(f, |_, detail| BackendError::InvalidSnapshotState {
                image: m.file.clone(),
                detail,
            })
        })?;
        if report.corruptions > 0 || report.check_errors > 0 {
            let truncated = report.errors.iter().any(|e| e.contains("end of the file"));
            let how = if truncated {
                let length = fs::metadata(&m.file).map_or(0, |meta| meta.len());
                format!(
                    "the image is truncated: its metadata points past the end of the file ({length} bytes)"
                )
            } else {
                "the image is corrupt".to_owned()
            };
            return Err(BackendError::InvalidSnapshotState {
                image: m.file.clone(),
                detail: format!(
                    "{how}; qemu-img check found {} corruptions and {} check errors{}; replace it with a good copy",
                    report.corruptions,
                    report.check_errors,
                    report
                        .errors
                        .first()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ),
            });
        }
        if report.leaks > 0 {
            tracing::warn!(file = %m.file.display(), leaks = report.leaks, "master has leaked clusters");
        }
        Ok(())
    }

    async fn measure_master(&self, m: &ResolvedMaster) -> Result<Measurement, BackendError> {
        let virtual_size = self.inspect_master(m).await?;
        let rep = self.qemu.measure(&m.file, &m.snapshot).await.map_err(|f| {
            map_err_from_failure(f, |kind, detail| match kind {
                Failure::NoSnapshot => BackendError::SnapshotNotFound {
                    image: m.file.clone(),
                    snapshot: m.snapshot.clone(),
                    detail,
                },
                Failure::Locked => BackendError::InvalidSnapshotState {
                    image: m.file.clone(),
                    detail,
                },
                _ => BackendError::QemuImg {
                    command: "measure".into(),
                    path: m.file.clone(),
                    detail,
                },
            })
        })?;
        Ok(Measurement {
            virtual_size,
            required_bytes: rep.required,
            fully_allocated_bytes: rep.fully_allocated,
        })
    }

    async fn measure(&self, r: MeasureRequest, p: &Progress) -> Result<Measurement, BackendError> {
        p.phase(TaskState::LocatingResources, "resolving master image");
        let m = self.resolve_master(&r.master)?;
        self.measure_master(&m).await
    }

    fn target(&self, storage: &str, image_id: &str) -> Result<Target, BackendError> {
        let root = self.root(storage)?;
        let dir = ensure_dir(&root, &[PREPARED_DIR])?;
        let final_path = file_in(&root, &dir, &format!("{image_id}.qcow2"))?;
        let done_path = file_in(&root, &dir, &format!("{image_id}.done.json"))?;
        Ok(Target {
            storage: storage.to_string(),
            dir,
            final_path,
            done_path,
        })
    }

    /// `Some(size)` when the target holds a finished copy of this master snapshot.
    fn verify_target(&self, t: &Target, m: &ResolvedMaster) -> Result<Option<u64>, BackendError> {
        let Some(rec) = read_json::<DoneRecord>(&t.done_path) else {
            return Ok(None);
        };
        let Ok(meta) = fs::metadata(&t.final_path) else {
            return Ok(None);
        };
        if rec.source != m.file || rec.snapshot != m.snapshot {
            return Err(BackendError::PreparedImageConflict {
                image: t.final_path.clone(),
                detail: format!(
                    "made from {} snapshot '{}', not {} snapshot '{}'",
                    rec.source.display(),
                    rec.snapshot,
                    m.file.display(),
                    m.snapshot
                ),
            });
        }
        Ok((meta.len() == rec.size_bytes).then_some(rec.size_bytes))
    }

    fn write_done(
        &self,
        t: &Target,
        image_id: &str,
        m: &ResolvedMaster,
        virtual_size: u64,
    ) -> Result<u64, BackendError> {
        let size_bytes = fs::metadata(&t.final_path)
            .map_err(|e| BackendError::io(&t.final_path, &e))?
            .len();
        self.recheck_target(t)?;
        let rec = DoneRecord {
            image_id: image_id.to_string(),
            source: m.file.clone(),
            snapshot: m.snapshot.clone(),
            virtual_size,
            size_bytes,
        };
        paths::write_atomic(&t.done_path, &to_json(&rec, &t.done_path)?)?;
        Ok(size_bytes)
    }

    async fn prepare(
        &self,
        r: PrepareRequest,
        p: &Progress,
    ) -> Result<PreparedImage, BackendError> {
        p.phase(
            TaskState::LocatingResources,
            "resolving master image and storages",
        );
        validate_name(&r.image_id)?;
        let m = self.resolve_master(&r.master)?;
        if r.target_storages.is_empty() {
            return Err(BackendError::StorageNotFound {
                storage: String::new(),
                path: PathBuf::new(),
            });
        }
        let mut targets: Vec<Target> = Vec::new();
        for s in &r.target_storages {
            if targets.iter().any(|t| &t.storage == s) {
                continue;
            }
            let t = self.target(s, &r.image_id)?;
            remove_stale_partials(&t.final_path)?;
            remove_stale_partials(&t.done_path)?;
            targets.push(t);
        }
        let mut sizes: Vec<Option<u64>> = Vec::new();
        for t in &targets {
            sizes.push(self.verify_target(t, &m)?);
        }
        let virtual_size = self.inspect_master(&m).await.or_else(|e| {
            if sizes.iter().all(Option::is_some) {
                read_json::<DoneRecord>(&targets[0].done_path)
                    .map(|d| d.virtual_size)
                    .ok_or(e)
            } else {
                Err(e)
            }
        })?;
        if sizes.iter().all(Option::is_some) {
            tracing::info!(image = %r.image_id, "prepared image already complete");
            return Ok(Self::prepared(&r, &m, virtual_size, &targets, &sizes));
        }
        self.check_master(&m).await?;
        let measure = self.measure_master(&m).await?;
        let mut need: HashMap<u64, (u64, u64, PathBuf)> = HashMap::new();
        for (t, s) in targets.iter().zip(&sizes) {
            if s.is_none() {
                let (avail, dev) = free_space(&t.dir)?;
                let e = need.entry(dev).or_insert((0, avail, t.dir.clone()));
                e.0 =
                    e.0.saturating_add(measure.required_bytes.saturating_add(1 << 20));
            }
        }
        for (required, avail, dir) in need.values() {
            if required > avail {
                return Err(BackendError::InsufficientResources {
                    path: dir.clone(),
                    detail: format!("needs {required} bytes, {avail} available"),
                });
            }
        }
        p.percent(5.0);
        let replicas = sizes.iter().filter(|s| s.is_none()).count();
        let primary_idx = match sizes.iter().position(Option::is_some) {
            Some(i) => i,
            None => {
                let t = &targets[0];
                let end = if replicas > 1 { 60.0 } else { 95.0 };
                p.phase(
                    TaskState::ConsolidatingMasterImage,
                    format!(
                        "consolidating {} snapshot '{}'",
                        m.file.display(),
                        m.snapshot
                    ),
                );
                self.consolidate(&m, t, p.scaled(5.0, end)).await?;
                sizes[0] = Some(self.write_done(t, &r.image_id, &m, virtual_size)?);
                0
            }
        };
        let primary = targets[primary_idx].final_path.clone();
        let todo: Vec<usize> = (0..targets.len()).filter(|i| sizes[*i].is_none()).collect();
        let n = todo.len().max(1) as f64;
        for (k, i) in todo.into_iter().enumerate() {
            let t = &targets[i];
            p.phase(
                TaskState::ReplicatingMasterImage,
                format!("replicating to storage '{}'", t.storage),
            );
            let lo = 60.0 + 35.0 * k as f64 / n;
            let hi = 60.0 + 35.0 * (k + 1) as f64 / n;
            self.replicate(&primary, t, p.scaled(lo, hi)).await?;
            sizes[i] = Some(self.write_done(t, &r.image_id, &m, virtual_size)?);
        }
        Ok(Self::prepared(&r, &m, virtual_size, &targets, &sizes))
    }

    fn prepared(
        r: &PrepareRequest,
        m: &ResolvedMaster,
        virtual_size: u64,
        targets: &[Target],
        sizes: &[Option<u64>],
    ) -> PreparedImage {
        PreparedImage {
            image_id: r.image_id.clone(),
            source: m.file.clone(),
            snapshot: m.snapshot.clone(),
            virtual_size,
            copies: targets
                .iter()
                .zip(sizes)
                .map(|(t, s)| PreparedCopy {
                    storage: t.storage.clone(),
                    path: t.final_path.clone(),
                    size_bytes: s.unwrap_or_default(),
                })
                .collect(),
        }
    }

    /// [`recheck_confined`] of a target's directory and final file, right before a write.
    fn recheck_target(&self, t: &Target) -> Result<(), BackendError> {
        let root = self.root(&t.storage)?;
        recheck_confined(std::slice::from_ref(&root), &t.dir, Some(&t.final_path))
    }

    /// `convert` of the snapshot into `<final>.partial-<uuid>`, then fsync + rename.
    async fn consolidate(
        &self,
        m: &ResolvedMaster,
        t: &Target,
        progress: impl Fn(f64) + Send + Sync,
    ) -> Result<(), BackendError> {
        self.recheck_target(t)?;
        let guard = PartialGuard::new(partial_for(&t.final_path));
        let direct = supports_direct_io(&t.dir);
        self.qemu
            .convert(&m.file, Some(&m.snapshot), guard.path(), direct, &progress)
            .await
            .map_err(|f| {
                map_err_from_failure(f, |kind, detail| match kind {
                    Failure::NoSpace => BackendError::InsufficientResources {
                        path: t.final_path.clone(),
                        detail,
                    },
                    Failure::Locked => BackendError::InvalidSnapshotState {
                        image: m.file.clone(),
                        detail,
                    },
                    Failure::NoSnapshot => BackendError::SnapshotNotFound {
                        image: m.file.clone(),
                        snapshot: m.snapshot.clone(),
                        detail,
                    },
                    _ => BackendError::DiskConsolidationFailed {
                        target: t.final_path.clone(),
                        detail,
                    },
                })
            })?;
        self.recheck_target(t)?;
        let final_path = t.final_path.clone();
        blocking(move || paths::commit(guard, &final_path)).await
    }

    /// A verified copy of `primary` into the target.
    async fn replicate(
        &self,
        primary: &Path,
        t: &Target,
        progress: impl Fn(f64) + Send + Sync,
    ) -> Result<(), BackendError> {
        self.recheck_target(t)?;
        let guard = PartialGuard::new(partial_for(&t.final_path));
        let direct = supports_direct_io(&t.dir);
        self.qemu
            .convert(primary, None, guard.path(), direct, &progress)
            .await
            .map_err(|f| {
                map_err_from_failure(f, |kind, detail| match kind {
                    Failure::NoSpace => BackendError::InsufficientResources {
                        path: t.final_path.clone(),
                        detail,
                    },
                    _ => BackendError::DiskConsolidationFailed {
                        target: t.final_path.clone(),
                        detail,
                    },
                })
            })?;
        if !self.qemu.compare(primary, guard.path()).await? {
            return Err(BackendError::DiskConsolidationFailed {
                target: t.final_path.clone(),
                detail: format!("copy differs from {}", primary.display()),
            });
        }
        self.recheck_target(t)?;
        let final_path = t.final_path.clone();
        blocking(move || paths::commit(guard, &final_path)).await
    }

    fn machine_dir(
        &self,
        m: &MachineRef,
        create: bool,
    ) -> Result<Option<(PathBuf, PathBuf)>, BackendError> {
        validate_name(&m.scheme)?;
        validate_name(&m.machine_name)?;
        let root = self.root(&m.storage)?;
        let comps = [MACHINES_DIR, m.scheme.as_str(), m.machine_name.as_str()];
        let dir = if create {
            Some(ensure_dir(&root, &comps)?)
        } else {
            existing_dir(&root, &comps)?
        };
        Ok(dir.map(|d| (root, d)))
    }

    fn machine_info(dir: &Path, def: &MachineDefinition) -> MachineInfo {
        MachineInfo {
            dir: dir.to_path_buf(),
            disk: dir.join(DISK_FILE),
            identity_disk: dir.join(IDENTITY_FILE),
            cache_disk: def
                .write_back_cache
                .filter(|w| w.disk_mb > 0)
                .map(|_| dir.join(CACHE_FILE)),
            definition: dir.join(DEFINITION_FILE),
            prepared_image: def.prepared_image.clone(),
        }
    }

    /// The prepared image, confined to the storage roots and finished (its done record exists).
    fn usable_prepared(&self, path: &Path) -> Result<PathBuf, BackendError> {
        if !path.is_absolute() || !exists(path) {
            return Err(BackendError::PreparedImageNotFound {
                path: path.to_path_buf(),
                detail: "no such file (an absolute path is required)".into(),
            });
        }
        let canon = confine_existing(&self.all_roots(), path)?;
        let done = canon.with_extension("done.json");
        if read_json::<DoneRecord>(&done).is_none() {
            return Err(BackendError::PreparedImageNotFound {
                path: path.to_path_buf(),
                detail: format!("not a finished prepared image (no {})", done.display()),
            });
        }
        Ok(canon)
    }

    async fn replace_overlay(&self, backing: &Path, dir: &Path) -> Result<(), BackendError> {
        let disk = dir.join(DISK_FILE);
        let roots = self.all_roots();
        recheck_confined(&roots, dir, Some(&disk))?;
        let guard = PartialGuard::new(partial_for(&disk));
        let key = TemplateKey::overlay(backing)?;
        self.write_template(
            key,
            guard.path(),
            self.qemu.create_overlay(backing, guard.path()),
        )
        .await?;
        recheck_confined(&roots, dir, Some(&disk))?;
        blocking(move || paths::commit(guard, &disk)).await
    }

    /// Writes the kept template of `key` to `dst`; when none is kept yet, runs `make` (the
    /// `qemu-img` command that writes `dst`) and keeps what it wrote as the template.
    async fn write_template(
        &self,
        key: TemplateKey,
        dst: &Path,
        make: impl std::future::Future<Output = Result<(), BackendError>>,
    ) -> Result<(), BackendError> {
        match self.templates.get(&key) {
            Some(bytes) => {
                let dst = dst.to_path_buf();
                blocking(move || disk_files::write_sparse(&dst, &bytes)).await
            }
            None => {
                make.await?;
                self.templates.learn(key, dst)
            }
        }
    }

    /// An empty qcow2 disk of `size_bytes` at `dst` (by `qemu-img` the first time per size).
    async fn create_empty(&self, dst: &Path, size_bytes: u64) -> Result<(), BackendError> {
        let key = TemplateKey::Empty { size_bytes };
        self.write_template(key, dst, self.qemu.create_empty(dst, size_bytes))
            .await
    }

    async fn overlay_backing(&self, disk: &Path) -> Option<PathBuf> {
        if !exists(disk) {
            return None;
        }
        let info = self.qemu.info(disk, true).await.ok()?;
        info.full_backing_filename
            .or(info.backing_filename)
            .map(PathBuf::from)
    }

    async fn write_identity(
        &self,
        dir: &Path,
        def: &MachineDefinition,
    ) -> Result<(), BackendError> {
        let identity = Identity {
            hostname: def.name.clone(),
            domain: def.domain.clone(),
            fqdn: if def.domain.is_empty() {
                def.name.clone()
            } else {
                format!("{}.{}", def.name, def.domain)
            },
            machine_index: def.index,
            scheme: def.scheme.clone(),
        };
        recheck_confined(&self.all_roots(), dir, None)?;
        let target = dir.join(IDENTITY_FILE);
        let json = to_json(&identity, &target)?;
        let host = format!("{}\n", identity.hostname);
        let image = disk_files::fat_floppy(
            IDENTITY_LABEL,
            &[("identity.json", &json), ("hostname", host.as_bytes())],
        )
        .map_err(|e| BackendError::Io {
            path: target.clone(),
            detail: format!("cannot build the FAT identity image: {e}"),
        })?;
        let guard = PartialGuard::new(partial_for(&target));
        disk_files::write_sparse(guard.path(), &image)?;
        blocking(move || paths::commit(guard, &target)).await
    }

    async fn put_machine(
        &self,
        r: MachineRequest,
        update: bool,
        p: &Progress,
    ) -> Result<MachineInfo, BackendError> {
        p.phase(TaskState::LocatingResources, "validating machine request");
        let mref = MachineRef {
            storage: r.storage.clone(),
            scheme: r.scheme.clone(),
            machine_name: r.machine_name.clone(),
        };
        for nic in &r.nics {
            if !self.config.networks.contains(&nic.network) {
                return Err(BackendError::NetworkNotFound {
                    network: nic.network.clone(),
                });
            }
        }
        let prepared = self.usable_prepared(&r.prepared_image)?;
        let Some((_, dir)) = self.machine_dir(&mref, !update)? else {
            return Err(BackendError::MachineNotFound {
                path: PathBuf::from(&r.storage)
                    .join(MACHINES_DIR)
                    .join(&r.scheme)
                    .join(&r.machine_name),
            });
        };
        let def_path = dir.join(DEFINITION_FILE);
        let existing = read_json::<MachineDefinition>(&def_path);
        if update && existing.is_none() {
            return Err(BackendError::MachineNotFound { path: dir });
        }
        if !update
            && let Some(e) = &existing
            && e.prepared_image != prepared
        {
            return Err(BackendError::MachineAlreadyExists {
                path: dir,
                existing: e.prepared_image.clone(),
            });
        }
        for f in [
            DISK_FILE,
            IDENTITY_FILE,
            CACHE_FILE,
            DEFINITION_FILE,
            IDENTITY_STAGING,
        ] {
            remove_stale_partials(&dir.join(f))?;
        }
        let wbc_disk = r.write_back_cache.filter(|w| w.disk_mb > 0);
        let disk = |role: &str, file: &str, format: &str| DiskDefinition {
            role: role.into(),
            path: dir.join(file),
            format: format.into(),
            cache: "writeback".into(),
        };
        let mut disks = vec![
            disk("system", DISK_FILE, "qcow2"),
            disk("identity", IDENTITY_FILE, "raw"),
        ];
        if wbc_disk.is_some() {
            disks.push(disk("cache", CACHE_FILE, "qcow2"));
        }
        let def = MachineDefinition {
            name: r.machine_name.clone(),
            scheme: r.scheme.clone(),
            index: r.index,
            domain: r.domain.clone(),
            cpu: r.cpu,
            memory_mb: r.memory_mb,
            nics: r
                .nics
                .iter()
                .enumerate()
                .map(|(i, n)| NicDefinition {
                    index: i as u32,
                    network: n.network.clone(),
                    mac: n
                        .mac
                        .clone()
                        .unwrap_or_else(|| derived_mac(&r.scheme, &r.machine_name, i)),
                })
                .collect(),
            disks,
            write_back_cache: r.write_back_cache,
            clean_on_boot: r.clean_on_boot,
            prepared_image: prepared.clone(),
        };
        let all_present = [DISK_FILE, IDENTITY_FILE]
            .iter()
            .all(|f| exists(&dir.join(f)))
            && (wbc_disk.is_none() || exists(&dir.join(CACHE_FILE)));
        if existing.as_ref() == Some(&def) && all_present {
            return Ok(Self::machine_info(&dir, &def));
        }
        p.phase(
            TaskState::CreatingMachines,
            format!("creating machine {}", r.machine_name),
        );
        let disk_path = dir.join(DISK_FILE);
        if self.overlay_backing(&disk_path).await.as_deref() != Some(prepared.as_path()) {
            self.replace_overlay(&prepared, &dir).await?;
        }
        p.percent(40.0);
        self.write_identity(&dir, &def).await?;
        p.percent(70.0);
        let cache_path = dir.join(CACHE_FILE);
        match wbc_disk {
            Some(w) if !exists(&cache_path) => {
                let guard = PartialGuard::new(partial_for(&cache_path));
                self.create_empty(guard.path(), w.disk_mb.saturating_mul(1 << 20))
                    .await?;
                let c = cache_path.clone();
                blocking(move || paths::commit(guard, &c)).await?;
            }
            Some(_) => {}
            None => {
                if exists(&cache_path) {
                    fs::remove_file(&cache_path).map_err(|e| BackendError::io(&cache_path, &e))?;
                }
            }
        }
        let bytes = to_json(&def, &def_path)?;
        let dp = def_path.clone();
        blocking(move || paths::write_atomic(&dp, &bytes)).await?;
        Ok(Self::machine_info(&dir, &def))
    }

    /// A machine's directory and definition; `MachineNotFound` without them.
    fn machine_definition(
        &self,
        m: &MachineRef,
    ) -> Result<(PathBuf, MachineDefinition), BackendError> {
        let missing = || BackendError::MachineNotFound {
            path: PathBuf::from(&m.storage)
                .join(MACHINES_DIR)
                .join(&m.scheme)
                .join(&m.machine_name),
        };
        let (_, dir) = self.machine_dir(m, false)?.ok_or_else(missing)?;
        let def = read_json::<MachineDefinition>(&dir.join(DEFINITION_FILE)).ok_or_else(missing)?;
        Ok((dir, def))
    }

    /// The files of an existing machine (a power change: `Local` runs no machines, so there is
    /// nothing to start or stop).
    fn existing_machine(&self, m: &MachineRef) -> Result<MachineInfo, BackendError> {
        let (dir, def) = self.machine_definition(m)?;
        Ok(Self::machine_info(&dir, &def))
    }

    async fn reset_machine(
        &self,
        m: MachineRef,
        p: &Progress,
    ) -> Result<MachineInfo, BackendError> {
        p.phase(TaskState::LocatingResources, "locating machine");
        let (dir, def) = self.machine_definition(&m)?;
        let prepared = self.usable_prepared(&def.prepared_image)?;
        remove_stale_partials(&dir.join(DISK_FILE))?;
        remove_stale_partials(&dir.join(CACHE_FILE))?;
        p.phase(
            TaskState::CreatingMachines,
            format!("resetting machine {}", m.machine_name),
        );
        self.replace_overlay(&prepared, &dir).await?;
        if let Some(w) = def.write_back_cache.filter(|w| w.disk_mb > 0) {
            let cache_path = dir.join(CACHE_FILE);
            let guard = PartialGuard::new(partial_for(&cache_path));
            self.create_empty(guard.path(), w.disk_mb.saturating_mul(1 << 20))
                .await?;
            blocking(move || paths::commit(guard, &cache_path)).await?;
        }
        Ok(Self::machine_info(&dir, &def))
    }

    async fn delete_machine(
        &self,
        r: DeleteMachineRequest,
        p: &Progress,
    ) -> Result<DeleteOutcome, BackendError> {
        p.phase(TaskState::LocatingResources, "locating machine");
        let Some((_, dir)) = self.machine_dir(&r.machine, false)? else {
            return Ok(DeleteOutcome::default());
        };
        let mut out = DeleteOutcome::default();
        match r.policy {
            DeletionPolicy::Retain => {
                let entries = fs::read_dir(&dir).map_err(|e| BackendError::io(&dir, &e))?;
                let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
                files.sort();
                out.retained = files;
            }
            DeletionPolicy::Delete => {
                blocking({
                    let dir = dir.clone();
                    move || fs::remove_dir_all(&dir).map_err(|e| BackendError::io(&dir, &e))
                })
                .await?;
                if let Some(parent) = dir.parent() {
                    let _ = fs::remove_dir(parent);
                }
                out.removed.push(dir);
            }
        }
        Ok(out)
    }

    /// The first machine definition (in any storage) whose system disk is backed by `image`.
    fn machine_using(&self, image: &Path) -> Option<PathBuf> {
        for root in self.all_roots() {
            let Ok(schemes) = fs::read_dir(root.join(MACHINES_DIR)) else {
                continue;
            };
            for scheme in schemes.flatten() {
                let Ok(machines) = fs::read_dir(scheme.path()) else {
                    continue;
                };
                for machine in machines.flatten() {
                    let def_path = machine.path().join(DEFINITION_FILE);
                    if let Some(def) = read_json::<MachineDefinition>(&def_path)
                        && def.prepared_image == image
                    {
                        return Some(def_path);
                    }
                }
            }
        }
        None
    }

    async fn delete_prepared(
        &self,
        r: DeletePreparedRequest,
        p: &Progress,
    ) -> Result<DeleteOutcome, BackendError> {
        p.phase(TaskState::LocatingResources, "locating prepared image");
        validate_name(&r.image_id)?;
        let mut found = Vec::new();
        for s in &r.storages {
            let root = self.root(s)?;
            let Some(dir) = existing_dir(&root, &[PREPARED_DIR])? else {
                continue;
            };
            let image = file_in(&root, &dir, &format!("{}.qcow2", r.image_id))?;
            let done = file_in(&root, &dir, &format!("{}.done.json", r.image_id))?;
            if exists(&image)
                && let Some(machine) = self.machine_using(&image)
            {
                return Err(BackendError::ImageInUse { image, machine });
            }
            found.push((image, done));
        }
        let mut out = DeleteOutcome::default();
        for (image, done) in found {
            remove_stale_partials(&image)?;
            remove_stale_partials(&done)?;
            match r.policy {
                DeletionPolicy::Retain => {
                    out.retained
                        .extend([image, done].into_iter().filter(|f| exists(f)));
                }
                DeletionPolicy::Delete => {
                    for f in [done, image] {
                        match fs::remove_file(&f) {
                            Ok(()) => out.removed.push(f),
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => return Err(BackendError::io(&f, &e)),
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    async fn inventory(
        &self,
        r: InventoryRequest,
        p: &Progress,
    ) -> Result<Inventory, BackendError> {
        p.phase(TaskState::LocatingResources, "listing storages");
        let hu = &r.hosting_unit;
        let inv_path = |rel: &str| -> Option<String> {
            InventoryPath::from_relative(hu, rel)
                .ok()
                .map(|p| p.to_string())
        };
        let mut inv = Inventory {
            networks: self
                .config
                .networks
                .iter()
                .filter_map(|n| inv_path(&format!("{n}.network")))
                .collect(),
            security_groups: self
                .config
                .security_groups
                .iter()
                .filter_map(|g| inv_path(&format!("{g}.securitygroup")))
                .collect(),
            service_offerings: self
                .config
                .service_offerings
                .iter()
                .filter_map(|o| {
                    inv_path(&format!("{}.serviceoffering", o.name)).map(|path| {
                        ServiceOfferingInfo {
                            path,
                            offering: o.clone(),
                        }
                    })
                })
                .collect(),
            ..Inventory::default()
        };
        for s in &r.storages {
            let root = self.root(s)?;
            let (available_bytes, _) = free_space(&root)?;
            inv.storages.push(StorageInfo {
                name: s.clone(),
                path: root.clone(),
                available_bytes,
            });
            let mut files = Vec::new();
            collect_masters(&root, &mut Vec::new(), &mut files, 0);
            files.sort();
            for (rel_items, file) in files {
                let Ok(info) = self.qemu.info(&file, true).await else {
                    tracing::warn!(file = %file.display(), "unreadable image skipped");
                    continue;
                };
                if info.format != "qcow2" {
                    continue;
                }
                let Some(path) = inv_path(&rel_items.join("\\")) else {
                    continue;
                };
                inv.master_images.push(MasterImageInfo {
                    snapshots: info
                        .snapshots
                        .iter()
                        .filter_map(|sn| {
                            inv_path(&format!("{}\\{}.snapshot", rel_items.join("\\"), sn.name))
                        })
                        .collect(),
                    path,
                    storage: s.clone(),
                    file,
                    virtual_size: info.virtual_size,
                });
            }
            if let Ok(entries) = fs::read_dir(root.join(PROFILES_DIR)) {
                let mut profiles: Vec<_> = entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let stem = name.strip_suffix(".json")?.to_string();
                        validate_name(&stem).ok()?;
                        Some(MachineProfileInfo {
                            path: inv_path(&format!(
                                "{PROFILES_DIR}.folder\\{stem}.machineprofile"
                            ))?,
                            storage: s.clone(),
                            file: e.path(),
                        })
                    })
                    .collect();
                profiles.sort_by(|a, b| a.path.cmp(&b.path));
                inv.machine_profiles.extend(profiles);
            }
        }
        Ok(inv)
    }
}

/// Walks a storage for `*.qcow2` masters (not following symlinks, skipping the reserved
/// top-level directories and partial files); records inventory items and files.
fn collect_masters(
    dir: &Path,
    items: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, PathBuf)>,
    depth: usize,
) {
    if depth > 16 {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.contains(paths::PARTIAL_MARKER) {
            continue;
        }
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            if depth == 0 && [PREPARED_DIR, MACHINES_DIR, PROFILES_DIR].contains(&name.as_str()) {
                continue;
            }
            items.push(format!("{name}.folder"));
            collect_masters(&e.path(), items, out, depth + 1);
            items.pop();
        } else if ft.is_file()
            && let Some(stem) = name.strip_suffix(".qcow2")
        {
            let mut it = items.clone();
            it.push(format!("{stem}.vm"));
            out.push((it, e.path()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_is_stable_and_local() {
        let a = derived_mac("s", "VDI-001", 0);
        assert_eq!(a, derived_mac("s", "VDI-001", 0));
        assert_ne!(a, derived_mac("s", "VDI-001", 1));
        assert_ne!(a, derived_mac("s", "VDI-002", 0));
        assert!(a.starts_with("52:54:00:"));
        assert_eq!(a.len(), 17);
    }
}
