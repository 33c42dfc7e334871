//! MachineSize: the CPU, memory and service-offering settings that a prepared image spec, a
//! ProvScheme and a ProvVM's overrides each carry, flattened into their specs.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The size of machines: a service offering (which sets both CPU and memory), or explicit
/// `vmCpuCount` and `vmMemoryMB`. Each containing spec forbids mixing the two with a CEL rule.
/// A machine's size is resolved in layers: its overrides win over its scheme's settings, which
/// win over its prepared image spec's.
#[derive(JsonSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineSize {
    /// Service offering inventory path (exclusive with vmCpuCount/vmMemoryMB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub service_offering: Option<String>,
    /// Virtual CPUs of machines (unset: inherited, default 1).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "vmCpuCount"
    )]
    #[schemars(range(min = 1, max = 1024))]
    pub vm_cpu_count: Option<i32>,
    /// Memory of machines in MiB (unset: inherited, default 1024).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "vmMemoryMB"
    )]
    #[schemars(range(min = 1))]
    pub vm_memory_mb: Option<i64>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::{MachineOverrides, PreparedImageSpec};
    use super::*;

    #[test]
    fn the_size_stays_inline_in_each_spec() {
        let wire = json!({"vmCpuCount": 4, "vmMemoryMB": 8192});
        let overrides: MachineOverrides = serde_json::from_value(wire.clone()).expect("parses");
        assert_eq!(
            overrides.size,
            MachineSize {
                service_offering: None,
                vm_cpu_count: Some(4),
                vm_memory_mb: Some(8192),
            }
        );
        assert_eq!(serde_json::to_value(&overrides).expect("serializes"), wire);

        let prepared = json!({
            "sourceSpecRef": "master",
            "networkMapping": {"0": "lan"},
            "serviceOffering": "XDHyp:\\HostingUnits\\lab\\small.serviceoffering",
        });
        let spec: PreparedImageSpec = serde_json::from_value(prepared.clone()).expect("parses");
        assert!(spec.size.service_offering.is_some());
        assert_eq!(serde_json::to_value(&spec).expect("serializes"), prepared);
    }
}
