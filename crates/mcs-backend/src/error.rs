//! The one error type of every backend, with stable reasons that follow the SDK task states.

use std::path::{Path, PathBuf};

use mcs_domain::Reason;
use mcs_domain::task::TaskState;
use thiserror::Error;

/// Why a backend operation failed.
///
/// Every variant has a stable [`reason`](BackendError::reason) (the SDK task-state name where the
/// SDK has one) and maps to the task state the owning task ends in
/// ([`task_state`](BackendError::task_state)). Messages name the file involved and, where
/// `qemu-img` failed, its trimmed standard error. The type is `Clone` so that a finished
/// operation's result can be polled any number of times.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum BackendError {
    /// The master image has no snapshot of that name, or the master image file does not exist.
    #[error("snapshot '{snapshot}' not found in {}: {detail}", image.display())]
    SnapshotNotFound {
        /// The master image file.
        image: PathBuf,
        /// The snapshot that was asked for.
        snapshot: String,
        /// What was found instead, or qemu-img's message.
        detail: String,
    },
    /// A storage of the hosting unit is not configured, or its directory does not exist.
    #[error("storage '{storage}' not found ({})", path.display())]
    StorageNotFound {
        /// The storage name.
        storage: String,
        /// Where it was expected (empty when the name is not configured at all).
        path: PathBuf,
    },
    /// Not enough free space (or another resource) for the result.
    #[error("insufficient resources at {}: {detail}", path.display())]
    InsufficientResources {
        /// The storage directory or file that ran out.
        path: PathBuf,
        /// Required and available amounts, or qemu-img's message.
        detail: String,
    },
    /// The master image is corrupt, or locked by another process.
    #[error("master image {} is in an invalid state: {detail}", image.display())]
    InvalidSnapshotState {
        /// The master image file.
        image: PathBuf,
        /// qemu-img's message (lock holder, corruption count).
        detail: String,
    },
    /// The master path does not name a snapshot of a master image (a qcow2 file for Local, a
    /// VirtualMachine for KubeVirt).
    #[error("{path} is not a snapshot of a master image: {detail}")]
    MasterImageNotASnapshot {
        /// The inventory path or file as given.
        path: String,
        /// Why (wrong item kind, wrong image format, no snapshot named).
        detail: String,
    },
    /// The hosting unit named in an inventory path is not the one the request is for.
    #[error("hosting unit '{found}' in the path does not match '{expected}'")]
    HostingUnitMismatch {
        /// The hosting unit of the request.
        expected: String,
        /// The hosting unit named in the path.
        found: String,
    },
    /// An inventory path could not be parsed or is of the wrong form.
    #[error("invalid inventory path '{path}': {detail}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// The parser's message.
        detail: String,
    },
    /// Converting the snapshot into a standalone image, or replicating it, failed.
    #[error("disk consolidation into {} failed: {detail}", target.display())]
    DiskConsolidationFailed {
        /// The file being written.
        target: PathBuf,
        /// qemu-img's message, or the verification that failed.
        detail: String,
    },
    /// A NIC refers to a network the connection does not offer.
    #[error("network '{network}' is not offered by the connection")]
    NetworkNotFound {
        /// The network name.
        network: String,
    },
    /// A prepared image of that id exists already, made from another master or snapshot.
    #[error("prepared image {} already exists: {detail}", image.display())]
    PreparedImageConflict {
        /// The existing prepared image.
        image: PathBuf,
        /// What differs.
        detail: String,
    },
    /// The prepared image a machine should be backed by does not exist or is not finished.
    #[error("prepared image {} is not usable: {detail}", path.display())]
    PreparedImageNotFound {
        /// The prepared image path as given.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// Another operation on the same target is running.
    #[error("operation {running} ({operation}) is already running on {target}")]
    OperationInProgress {
        /// The target (prepared image or machine).
        target: String,
        /// The running operation's name.
        operation: String,
        /// The running operation's id.
        running: String,
    },
    /// A machine to reset, update or delete does not exist.
    #[error("machine {} not found", path.display())]
    MachineNotFound {
        /// The machine directory.
        path: PathBuf,
    },
    /// A machine exists already with a different prepared image.
    #[error("machine {} already exists with another image ({})", path.display(), existing.display())]
    MachineAlreadyExists {
        /// The machine directory.
        path: PathBuf,
        /// The prepared image the existing machine uses.
        existing: PathBuf,
    },
    /// A prepared image cannot be deleted while a machine is backed by it.
    #[error("prepared image {} is in use by machine {}", image.display(), machine.display())]
    ImageInUse {
        /// The prepared image.
        image: PathBuf,
        /// A machine definition that references it.
        machine: PathBuf,
    },
    /// The backend kind does not support the operation (never a faked success).
    #[error("backend '{backend}' does not support {operation}")]
    NotSupported {
        /// The backend kind.
        backend: String,
        /// The operation asked for.
        operation: String,
    },
    /// The operation was canceled; partial files were removed.
    #[error("operation canceled")]
    Canceled,
    /// A qemu-img process ran past its timeout and was killed.
    #[error("{command} timed out after {seconds}s on {}", path.display())]
    Timeout {
        /// The qemu-img sub-command.
        command: String,
        /// The timeout.
        seconds: u64,
        /// The file it worked on.
        path: PathBuf,
    },
    /// A path resolves (symlinks included) outside every configured storage root.
    #[error("path {} is outside the storage roots", path.display())]
    PathOutsideStorage {
        /// The offending path.
        path: PathBuf,
    },
    /// A name used in a path is not a single safe path component.
    #[error("invalid name '{name}': {detail}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        detail: String,
    },
    /// No operation with that id is known to this backend.
    #[error("operation {id} not found")]
    OperationNotFound {
        /// The operation id.
        id: String,
    },
    /// A qemu-img command failed in a way no other variant describes.
    #[error("qemu-img {command} failed on {}: {detail}", path.display())]
    QemuImg {
        /// The qemu-img sub-command.
        command: String,
        /// The file it worked on.
        path: PathBuf,
        /// Its trimmed standard error.
        detail: String,
    },
    /// A Kubernetes API request of a cluster backend (KubeVirt) failed.
    #[error("Kubernetes API request on {object} failed: {detail}")]
    KubernetesApi {
        /// The object or collection (`kind namespace/name`).
        object: String,
        /// The API server's message.
        detail: String,
    },
    /// A storage cannot be written: its file system is read-only (`EROFS`) or the operator may
    /// not write there (`EACCES`, `EPERM`). The disk the task needed could not be made, so the
    /// task ends in the SDK's `DiskConsolidationFailed` (the space is there: it is not
    /// `InsufficientResources`).
    #[error("storage path {} is not writable: {detail}; make it writable (remount it read-write, fix its permissions) and set mcs.imaging.dev/retry", path.display())]
    StorageNotWritable {
        /// The file or directory that could not be written.
        path: PathBuf,
        /// The system error (`Read-only file system (os error 30)`).
        detail: String,
    },
    /// A file-system operation failed.
    #[error("I/O error on {}: {detail}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The system error.
        detail: String,
    },
}

impl BackendError {
    /// The stable, machine-readable reason (the SDK task-state name where there is one).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::SnapshotNotFound { .. } => "SnapshotNotFound",
            Self::StorageNotFound { .. } => "StorageNotFound",
            Self::InsufficientResources { .. } => "InsufficientResources",
            Self::InvalidSnapshotState { .. } => "InvalidSnapshotState",
            Self::MasterImageNotASnapshot { .. } => "MasterImageNotASnapshot",
            Self::HostingUnitMismatch { .. } => "HostingUnitMismatch",
            Self::InvalidPath { .. } => "InvalidPath",
            Self::DiskConsolidationFailed { .. } | Self::StorageNotWritable { .. } => {
                "DiskConsolidationFailed"
            }
            Self::NetworkNotFound { .. } => "NetworkPathResolutionFailed",
            Self::PreparedImageConflict { .. } => "ImageVersionSpecAlreadyExists",
            Self::PreparedImageNotFound { .. } => "ImageVersionSpecNotUsable",
            Self::OperationInProgress { .. } => "OperationInProgress",
            Self::MachineNotFound { .. } => "MachineNotFound",
            Self::MachineAlreadyExists { .. } => "MachineAlreadyExists",
            Self::ImageInUse { .. } => "ImageInUse",
            Self::NotSupported { .. } => "NotSupported",
            Self::Canceled => "Canceled",
            Self::Timeout { .. } => "Timeout",
            Self::PathOutsideStorage { .. } => "PathOutsideStorage",
            Self::InvalidName { .. } => "InvalidName",
            Self::OperationNotFound { .. } => "OperationNotFound",
            Self::QemuImg { .. } => "QemuImgFailed",
            Self::KubernetesApi { .. } => "KubernetesApiError",
            Self::Io { .. } => "IoError",
        }
    }

    /// The SDK task state a task ends in when it fails with this error.
    pub fn task_state(&self) -> TaskState {
        match self {
            Self::SnapshotNotFound { .. } => TaskState::SnapshotNotFound,
            Self::StorageNotFound { .. } => TaskState::StorageNotFound,
            Self::InsufficientResources { .. } => TaskState::InsufficientResources,
            Self::InvalidSnapshotState { .. } => TaskState::InvalidSnapshotState,
            Self::MasterImageNotASnapshot { .. } | Self::InvalidPath { .. } => {
                TaskState::MasterImageNotASnapshot
            }
            Self::HostingUnitMismatch { .. } => TaskState::HostingUnitMismatch,
            Self::DiskConsolidationFailed { .. } | Self::StorageNotWritable { .. } => {
                TaskState::DiskConsolidationFailed
            }
            Self::NetworkNotFound { .. } => TaskState::NetworkPathResolutionFailed,
            Self::NotSupported { .. } => TaskState::NotSupported,
            Self::Canceled => TaskState::Canceled,
            Self::PreparedImageConflict { .. } => TaskState::ImageVersionSpecAlreadyExists,
            Self::PreparedImageNotFound { .. } => TaskState::ImageVersionSpecNotUsable,
            Self::MachineNotFound { .. }
            | Self::OperationInProgress { .. }
            | Self::MachineAlreadyExists { .. }
            | Self::ImageInUse { .. }
            | Self::Timeout { .. }
            | Self::PathOutsideStorage { .. }
            | Self::InvalidName { .. }
            | Self::OperationNotFound { .. }
            | Self::QemuImg { .. }
            | Self::KubernetesApi { .. }
            | Self::Io { .. } => TaskState::UnexpectedError,
        }
    }

    /// An [`Io`](BackendError::Io) error for `path`; `NotFound`-free helper for `map_err`. A
    /// read-only file system or a denied write is [`StorageNotWritable`](BackendError::StorageNotWritable).
    pub fn io(path: &Path, err: &std::io::Error) -> Self {
        use std::io::ErrorKind;
        let not_writable = matches!(
            err.kind(),
            ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied
        );
        if matches!(
            err.kind(),
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded
        ) {
            Self::InsufficientResources {
                path: path.to_path_buf(),
                detail: err.to_string(),
            }
        } else if not_writable {
            Self::StorageNotWritable {
                path: path.to_path_buf(),
                detail: err.to_string(),
            }
        } else {
            Self::Io {
                path: path.to_path_buf(),
                detail: err.to_string(),
            }
        }
    }
}

impl Reason for BackendError {
    fn reason(&self) -> &'static str {
        BackendError::reason(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_only_or_denied_write_is_storage_not_writable() {
        for (errno, text) in [(30, "Read-only file system"), (13, "Permission denied")] {
            let e = BackendError::io(
                Path::new("/s/lab/prepared"),
                &std::io::Error::from_raw_os_error(errno),
            );
            assert_eq!(e.task_state(), TaskState::DiskConsolidationFailed, "{e}");
            let message = e.to_string();
            assert!(
                message.contains("/s/lab/prepared is not writable"),
                "{message}"
            );
            assert!(message.contains(text), "{message}");
        }
        let other = BackendError::io(Path::new("/s"), &std::io::Error::from_raw_os_error(5));
        assert_eq!(other.reason(), "IoError");
    }

    #[test]
    fn sdk_reasons_equal_task_state_names() {
        let cases = [
            BackendError::SnapshotNotFound {
                image: "a".into(),
                snapshot: "s".into(),
                detail: String::new(),
            },
            BackendError::StorageNotFound {
                storage: "s".into(),
                path: "p".into(),
            },
            BackendError::InsufficientResources {
                path: "p".into(),
                detail: String::new(),
            },
            BackendError::InvalidSnapshotState {
                image: "a".into(),
                detail: String::new(),
            },
            BackendError::MasterImageNotASnapshot {
                path: "a".into(),
                detail: String::new(),
            },
            BackendError::DiskConsolidationFailed {
                target: "t".into(),
                detail: String::new(),
            },
            BackendError::NotSupported {
                backend: "KubeVirt".into(),
                operation: "prepare".into(),
            },
            BackendError::Canceled,
        ];
        for e in cases {
            assert_eq!(format!("{:?}", e.task_state()), e.reason(), "{e}");
            assert_eq!(Reason::reason(&e), e.reason());
        }
    }
}
