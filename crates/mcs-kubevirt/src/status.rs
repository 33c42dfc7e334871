//! Reading CDI and KubeVirt statuses, without I/O: a DataVolume's phase and `progress` as the
//! task's progress or failure, a snapshot's readiness, quantities, instancetypes.

use mcs_backend::ServiceOffering;
use serde_json::Value;

/// Where a DataVolume's clone stands.
#[derive(Clone, Debug, PartialEq)]
pub enum CloneState {
    /// Not done yet: the percent CDI reports (`None` while it reports none) and what it does.
    Running {
        /// `status.progress` as a number, when CDI reports one.
        percent: Option<f64>,
        /// The phase and the newest condition message.
        message: String,
    },
    /// `phase: Succeeded`: the PVC holds the copy.
    Succeeded,
    /// The clone failed (`phase: Failed`, or a condition saying it cannot go on).
    Failed {
        /// Whether the cause is a lack of space or quota (`InsufficientResources`), not a
        /// failed copy (`DiskConsolidationFailed`).
        insufficient: bool,
        /// CDI's condition message.
        message: String,
    },
}

/// Condition reasons with which CDI reports a lack of quota or space.
const INSUFFICIENT_REASONS: &[&str] = &["ErrExceededQuota", "InsufficientStorage", "OutOfSpace"];

/// `"45.50%"` as 45.5; `None` for `"N/A"` or anything else.
pub fn parse_progress(progress: &str) -> Option<f64> {
    progress
        .trim()
        .strip_suffix('%')
        .and_then(|n| n.trim().parse::<f64>().ok())
        .filter(|n| n.is_finite())
        .map(|n| n.clamp(0.0, 100.0))
}

/// The state of a DataVolume (the whole object, as JSON).
pub fn data_volume_state(dv: &Value) -> CloneState {
    let status = &dv["status"];
    let phase = status["phase"].as_str().unwrap_or("Pending");
    let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
    let message = conditions
        .iter()
        .filter_map(|c| c["message"].as_str())
        .find(|m| !m.is_empty())
        .unwrap_or_default()
        .to_string();
    let insufficient = conditions.iter().any(|c| {
        c["reason"]
            .as_str()
            .is_some_and(|r| INSUFFICIENT_REASONS.contains(&r))
    });
    match phase {
        "Succeeded" => CloneState::Succeeded,
        "Failed" => CloneState::Failed {
            insufficient,
            message: if message.is_empty() {
                "the DataVolume failed".into()
            } else {
                message
            },
        },
        _ if insufficient => CloneState::Failed {
            insufficient,
            message,
        },
        _ => CloneState::Running {
            percent: status["progress"].as_str().and_then(parse_progress),
            message: if message.is_empty() {
                phase.to_string()
            } else {
                format!("{phase}: {message}")
            },
        },
    }
}

/// Whether a snapshot can be cloned from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotState {
    /// `readyToUse: true`.
    Ready,
    /// Not ready (yet), with the reason the status gives.
    NotReady(String),
}

/// The state of a VolumeSnapshot or VirtualMachineSnapshot (`status.readyToUse`,
/// `status.error.message`, `status.phase`).
pub fn snapshot_state(snapshot: &Value) -> SnapshotState {
    let status = &snapshot["status"];
    if status["readyToUse"].as_bool() == Some(true) {
        return SnapshotState::Ready;
    }
    let detail = status["error"]["message"]
        .as_str()
        .map(str::to_string)
        .or_else(|| status["phase"].as_str().map(|p| format!("phase {p}")))
        .unwrap_or_else(|| "status.readyToUse is not true".into());
    SnapshotState::NotReady(detail)
}

/// A Kubernetes quantity (`20Gi`, `500M`, `1073741824`, `1.5Gi`) in bytes.
pub fn parse_quantity(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let n: f64 = number.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        _ => return None,
    };
    let bytes = (n * factor).ceil();
    (bytes.is_finite() && bytes >= 0.0).then_some(bytes as u64)
}

/// A VirtualMachineClusterInstancetype as a service offering (`spec.cpu.guest`,
/// `spec.memory.guest`); `None` when it lacks either.
pub fn instancetype_offering(instancetype: &Value) -> Option<ServiceOffering> {
    let name = instancetype["metadata"]["name"].as_str()?;
    let cpu = u32::try_from(instancetype["spec"]["cpu"]["guest"].as_u64()?).ok()?;
    let memory = instancetype["spec"]["memory"]["guest"]
        .as_str()
        .and_then(parse_quantity)?;
    Some(ServiceOffering {
        name: name.to_string(),
        cpu,
        memory_mb: memory >> 20,
    })
}

/// A VirtualMachine's `status.printableStatus` (`Running`, `Stopped`, `Provisioning`,
/// `ErrorDataVolumeNotFound`...), if KubeVirt has set one.
pub fn printable_status(vm: &Value) -> Option<String> {
    vm["status"]["printableStatus"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn progress_is_read_from_cdi_percentages() {
        assert_eq!(parse_progress("45.50%"), Some(45.5));
        assert_eq!(parse_progress("100.0%"), Some(100.0));
        assert_eq!(parse_progress("N/A"), None);
        assert_eq!(parse_progress("12"), None);
        assert_eq!(parse_progress("250%"), Some(100.0));
    }

    #[test]
    fn data_volume_phases_map_to_running_done_and_failures() {
        let running = json!({"status": {"phase": "CloneInProgress", "progress": "37.12%",
            "conditions": [{"type": "Running", "status": "True", "message": "Clone in progress"}]}});
        assert_eq!(
            data_volume_state(&running),
            CloneState::Running {
                percent: Some(37.12),
                message: "CloneInProgress: Clone in progress".into()
            }
        );
        assert_eq!(
            data_volume_state(&json!({})),
            CloneState::Running {
                percent: None,
                message: "Pending".into()
            }
        );
        assert_eq!(
            data_volume_state(&json!({"status": {"phase": "Succeeded", "progress": "100.0%"}})),
            CloneState::Succeeded
        );
        let failed = json!({"status": {"phase": "Failed", "conditions": [
            {"type": "Running", "status": "False", "reason": "Error", "message": "clone source snapshot is gone"}]}});
        assert_eq!(
            data_volume_state(&failed),
            CloneState::Failed {
                insufficient: false,
                message: "clone source snapshot is gone".into()
            }
        );
        let quota = json!({"status": {"phase": "Pending", "conditions": [
            {"type": "Bound", "status": "False", "reason": "ErrExceededQuota", "message": "exceeded quota: requests.storage"}]}});
        assert_eq!(
            data_volume_state(&quota),
            CloneState::Failed {
                insufficient: true,
                message: "exceeded quota: requests.storage".into()
            }
        );
    }

    #[test]
    fn snapshots_are_ready_only_when_ready_to_use() {
        assert_eq!(
            snapshot_state(&json!({"status": {"readyToUse": true}})),
            SnapshotState::Ready
        );
        assert_eq!(
            snapshot_state(
                &json!({"status": {"readyToUse": false, "error": {"message": "driver error"}}})
            ),
            SnapshotState::NotReady("driver error".into())
        );
        assert_eq!(
            snapshot_state(&json!({"status": {"phase": "InProgress"}})),
            SnapshotState::NotReady("phase InProgress".into())
        );
        assert!(matches!(
            snapshot_state(&json!({})),
            SnapshotState::NotReady(_)
        ));
    }

    #[test]
    fn quantities_and_instancetypes() {
        assert_eq!(parse_quantity("20Gi"), Some(20 << 30));
        assert_eq!(parse_quantity("1.5Gi"), Some(3 << 29));
        assert_eq!(parse_quantity("500M"), Some(500_000_000));
        assert_eq!(parse_quantity("1073741824"), Some(1 << 30));
        assert_eq!(parse_quantity("3X"), None);
        assert_eq!(parse_quantity(""), None);
        let it = json!({"metadata": {"name": "u1.medium"}, "spec": {"cpu": {"guest": 2}, "memory": {"guest": "4Gi"}}});
        assert_eq!(
            instancetype_offering(&it),
            Some(ServiceOffering {
                name: "u1.medium".into(),
                cpu: 2,
                memory_mb: 4096
            })
        );
        assert_eq!(
            instancetype_offering(&json!({"metadata": {"name": "x"}})),
            None
        );
        assert_eq!(
            printable_status(&json!({"status": {"printableStatus": "Running"}})).as_deref(),
            Some("Running")
        );
    }
}
