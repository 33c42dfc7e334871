//! The pure domain core of mcs-operator.
//!
//! Nothing in this crate performs I/O: no files, no network, no clock. Callers pass in what
//! exists (objects, timestamps) and get back decisions, so every rule is unit- and
//! property-tested in milliseconds. The Kubernetes controllers and the hypervisor backends are
//! thin shells around these functions.

pub mod history;
pub mod inventory_path;
pub mod naming;
pub mod rules;
pub mod task;

/// A stable, machine-readable reason for an error.
///
/// Reasons become Kubernetes condition reasons, Event reasons and metric labels, so they are
/// UpperCamelCase, follow the Citrix SDK's names where the SDK has one, and never change once
/// released.
pub trait Reason {
    /// The stable reason string, e.g. `SnapshotNotFound`.
    fn reason(&self) -> &'static str;
}
