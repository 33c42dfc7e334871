//! The `KubeVirt` backend of mcs-operator: the SDK's model onto KubeVirt and CDI.
//!
//! - A **master image** `XDHyp:\HostingUnits\<hu>\<vm>.vm\<snap>.snapshot` is a
//!   VirtualMachineSnapshot `<snap>` of VirtualMachine `<vm>` (its first volume backup's
//!   VolumeSnapshot), or a VolumeSnapshot `<snap>` of one of the VM's PVCs, in the connection's
//!   namespace. Missing: `SnapshotNotFound`; of another VM or PVC: `MasterImageNotASnapshot`;
//!   not `readyToUse`: `InvalidSnapshotState`.
//! - A **prepared image** is one CDI DataVolume (and its PVC) per storage of the hosting unit,
//!   each storage a StorageClass: the first clones the snapshot (consolidation), the others
//!   clone the first PVC (replication). The task's progress follows the DataVolumes'
//!   `status.progress`; a failed clone is `DiskConsolidationFailed` (or `InsufficientResources`
//!   for quota/space reasons) with CDI's message, and its DataVolume is deleted.
//! - A **machine** is a VirtualMachine with a `dataVolumeTemplate` cloning the prepared PVC of
//!   its storage, CPU and memory, interfaces from the network mapping (pod network or Multus),
//!   and its identity as a cloud-init volume from a Secret the backend writes. Clean-on-boot
//!   deletes the disk so KubeVirt clones it again; an update rebuilds the VirtualMachine.
//! - Everything written is labelled `app.kubernetes.io/managed-by: mcs-operator` plus the
//!   image, storage, scheme and machine it belongs to, annotated with its owning mcs object,
//!   owned by it (`ownerReferences`) when in the same namespace and the policy is `Delete`, and
//!   deleted by the delete operations unless the policy is `Retain`.
//!
//! [`objects`] builds the objects and [`status`] reads CDI/KubeVirt statuses, both without I/O;
//! [`backend`] is the thin I/O shell behind [`mcs_backend::Backend`]; [`watch`] tells the
//! operator which ProvVMs' VirtualMachines changed their printable status.

#![warn(missing_docs)]

pub mod backend;
pub mod objects;
pub mod status;
pub mod watch;

pub use backend::{
    ClientSource, KubeVirtBackend, KubeVirtConfig, NetworkConfig, StorageClassConfig, connect,
    serves, storage_root,
};
