//! Command-line tools that talk to the cluster (also usable as the kubectl plugin `kubectl mcs`:
//! link the binary as `kubectl-mcs` somewhere on `PATH`).

pub mod scheme;
