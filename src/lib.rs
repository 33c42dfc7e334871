//! mcs-operator: Machine Creation Services image management on Kubernetes.
//!
//! The crate holds the API types (`api`), the controllers (`controller`) and the command-line
//! entry points (`cli`, `crd`, `dev`); the pure domain lives in `mcs-domain` and the hypervisor
//! work in `mcs-backend`.

pub mod api;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod dev;
