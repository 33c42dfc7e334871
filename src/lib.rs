//! mcs-operator: Machine Creation Services image management on Kubernetes.
//!
//! The crate holds the API types (`api`), the controllers (`controller`), the operator process
//! around them (`operator`: probes, leader election, startup checks; `metrics`), the command-line
//! entry points (`cli`, `crd`, `dev`) and a YAML writer that YAML 1.1 and 1.2 readers read alike
//! (`yaml`); the pure domain lives in `mcs-domain` and the hypervisor work in `mcs-backend`.

pub mod api;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod dev;
pub mod metrics;
pub mod operator;
pub mod yaml;
