//! Backends of mcs-operator: the hypervisor side of Machine Creation Services.
//!
//! A backend sits behind one object-safe trait, [`Backend`], shaped as *start an operation,
//! then poll it*: [`Backend::start`] returns an [`OperationId`] at once, [`Backend::poll`]
//! reports an [`OperationStatus`] (SDK task state as the phase, percent, message, and the
//! result once ended) and [`Backend::cancel`] stops it, killing its processes and removing its
//! partial files. Inputs are plain structs of this crate ([`PrepareRequest`],
//! [`MachineRequest`], ...), never Kubernetes types. Errors are one enum, [`BackendError`],
//! whose [`reason`](BackendError::reason) is the SDK task-state name and whose
//! [`task_state`](BackendError::task_state) is the state a failed task ends in.
//!
//! Every operation is idempotent: running it twice, or again after a crash half-way, ends in
//! the same state.
//!
//! # The `Local` backend
//!
//! [`LocalBackend`] keeps everything as files under the connection's named storage roots and
//! does the disk work with `qemu-img` (Debian package `qemu-utils`).
//!
//! ## Layout under a storage root
//!
//! ```text
//! <root>/[<dir>/...]<image>.qcow2           master images (any depth, outside the dirs below)
//! <root>/prepared/<image-id>.qcow2          a prepared (consolidated) image
//! <root>/prepared/<image-id>.done.json      its completion record (DoneRecord), written last
//! <root>/machines/<scheme>/<machine>/disk.qcow2     overlay backed by the prepared image
//! <root>/machines/<scheme>/<machine>/identity.img   raw FAT12 identity floppy (identity.json, hostname)
//! <root>/machines/<scheme>/<machine>/cache.qcow2    write-back cache disk (when asked for)
//! <root>/machines/<scheme>/<machine>/machine.json   machine definition (MachineDefinition)
//! <root>/profiles/<name>.json               machine profiles
//! ```
//!
//! The inventory path `XDHyp:\HostingUnits\hu\a.folder\win11.vm\base.snapshot` names the file
//! `a/win11.qcow2` (searched in the hosting unit's storages in order) and its internal snapshot
//! `base`. Networks and service offerings come from the connection's settings
//! ([`LocalConfig`]).
//!
//! ## Safety rules
//!
//! - Names used in paths are single components ([`paths::validate_name`]); every path is
//!   canonicalized (symlinks included) and must lie under a configured storage root, else
//!   `PathOutsideStorage`. Directories are created one level at a time, never through a link
//!   that leaves the root.
//! - Results are written to `<final>.partial-<uuid>` in the same directory, fsynced and renamed;
//!   any operation first removes stale partials of its targets, and a failing or canceled one
//!   removes its own ([`paths::PartialGuard`]).
//! - Preparing: `qemu-img check` (corrupt or locked: `InvalidSnapshotState`), `qemu-img
//!   measure` against free space (`InsufficientResources`), `qemu-img convert -p -t none -l
//!   snapshot.name=...` (write-back plus fsync where O_DIRECT is refused, e.g. tmpfs), then per
//!   extra storage a copy verified with `qemu-img compare`.
//! - A machine costs no `qemu-img` process once its prepared image has one machine: overlays
//!   and empty cache disks are copies of the bytes `qemu-img` wrote the first time, and the
//!   identity floppy is built in memory ([`disk_files`]).
//! - At most `max_parallel` qemu-img processes run at once (default: the number of cores), each
//!   under a timeout and killed when its operation is canceled.

#![warn(missing_docs)]

pub mod api;
pub mod disk_files;
pub mod error;
pub mod local;
pub mod paths;
pub mod qemu;
pub mod runner;

pub use api::{
    Backend, BoxFuture, DeleteMachineRequest, DeleteOutcome, DeletePreparedRequest, DeletionPolicy,
    Inventory, InventoryRequest, MachineInfo, MachineProfileInfo, MachineRef, MachineRequest,
    MasterImageInfo, MasterRef, MeasureRequest, Measurement, Nic, Operation, OperationId,
    OperationStatus, Output, Owner, PowerRequest, PrepareRequest, PreparedCopy, PreparedImage,
    ServiceOffering, ServiceOfferingInfo, StorageInfo, WriteBackCache, run, wait,
};
pub use error::BackendError;
pub use local::{LocalBackend, LocalConfig, StorageRootConfig};

use std::sync::Arc;

/// The backend kinds the operator knows of.
pub const KNOWN_KINDS: &[&str] = &["Local", "KubeVirt"];

/// Connects a backend of `kind` (as in a HypervisorConnection). Only `Local` is implemented;
/// any other kind, known or not, is a [`BackendError::NotSupported`] error, never a fake.
pub fn connect(kind: &str, local: LocalConfig) -> Result<Arc<dyn Backend>, BackendError> {
    match kind {
        "Local" => Ok(Arc::new(LocalBackend::new(local)?)),
        other => Err(BackendError::NotSupported {
            backend: other.to_string(),
            operation: if KNOWN_KINDS.contains(&other) {
                "any operation yet (not implemented)".to_string()
            } else {
                "any operation (unknown backend kind)".to_string()
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_kinds_fail_clearly() {
        for kind in ["KubeVirt", "VMware"] {
            let err = connect(kind, LocalConfig::default())
                .err()
                .expect("must fail");
            assert_eq!(err.reason(), "NotSupported");
            assert_eq!(err.task_state(), mcs_domain::task::TaskState::NotSupported);
            assert!(err.to_string().contains(kind));
        }
        assert_eq!(
            connect("Local", LocalConfig::default())
                .map(|b| b.kind())
                .ok(),
            Some("Local")
        );
    }
}
