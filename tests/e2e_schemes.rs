//! End-to-end tests of provisioning scheme versions, machines, update windows, rejections and
//! the `scheme` command line, on the test API server with the Local backend doing real disk
//! work (16 MiB images).
//!
//! Needs `qemu-img` (Debian: `qemu-utils`).

mod schemes_env;
mod support;

use k8s_openapi::api::apps::v1::ControllerRevision;
use kube::ResourceExt;
use kube::api::{ListParams, Patch, PatchParams};
use mcs_operator::api::{
    LABEL_PROVSCHEME, ProvScheme, ProvVm, TaskState, UpdateStatus, condition_type,
};
use mcs_operator::cli::scheme::{self as cli, SchemeCommand};
use schemes_env::{DMZ, Env, names};
use serde_json::json;

fn version(scheme: &ProvScheme) -> Option<i64> {
    scheme.status.as_ref()?.provisioning_scheme_version
}

fn condition<'a>(
    scheme: &'a ProvScheme,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    scheme
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

fn degraded_reason(scheme: &ProvScheme) -> Option<String> {
    condition(scheme, condition_type::DEGRADED)
        .filter(|c| c.status == "True")
        .map(|c| c.reason.clone())
}

async fn revisions(env: &Env, scheme: &str) -> Vec<i64> {
    let mut numbers: Vec<i64> = env
        .api::<ControllerRevision>()
        .list(&ListParams::default().labels(&format!("{LABEL_PROVSCHEME}={scheme}")))
        .await
        .expect("list")
        .items
        .iter()
        .map(|r| r.revision)
        .collect();
    numbers.sort_unstable();
    numbers
}

async fn machines(env: &Env, scheme: &str) -> Vec<ProvVm> {
    env.api::<ProvVm>()
        .list(&ListParams::default().labels(&format!("{LABEL_PROVSCHEME}={scheme}")))
        .await
        .expect("list")
        .items
}

async fn wait_version(env: &Env, name: &str, number: i64) -> ProvScheme {
    env.wait::<ProvScheme>(name, &format!("version {number}"), |s| {
        version(s) == Some(number)
            && s.status.as_ref().and_then(|st| st.observed_generation) == s.metadata.generation
    })
    .await
}

async fn wait_ready_machines(env: &Env, name: &str, count: i32) -> ProvScheme {
    env.wait::<ProvScheme>(name, &format!("{count} ready machines"), |s| {
        s.status
            .as_ref()
            .is_some_and(|st| st.ready_machines == count && st.machine_count == count)
    })
    .await
}

/// The seed's `Set-ProvScheme` examples replayed as manifest changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_examples_make_versions_and_revert() {
    let env = Env::start("seed-examples-make-versions-and-revert").await;
    env.prepared("prepared-a", "win11", "Success").await;
    let profile1 = r"XDHyp:\HostingUnits\lab\machineprofile.folder\rg.resourcegroup\ts.templatespec\1.0.templatespecversion";
    let profile2 = r"XDHyp:\HostingUnits\lab\machineprofile.folder\rg.resourcegroup\ts.templatespec\2.0.templatespecversion";
    env.scheme("myscheme", json!({"machineProfile": profile1}))
        .await;

    // New-ProvScheme: the task finishes and makes version 1.
    let created = wait_version(&env, "myscheme", 1).await;
    let task = created
        .status
        .as_ref()
        .and_then(|s| s.task.clone())
        .expect("task");
    assert_eq!(task.task_state, TaskState::Finished);
    assert_eq!(task.task_progress, 100);
    let v1 = env
        .api::<ControllerRevision>()
        .get("myscheme-v1")
        .await
        .expect("version 1 stored");
    let data = &v1.data.as_ref().expect("data").0;
    assert_eq!(data["apiVersion"], "mcs.imaging.dev/v1alpha1");
    assert!(data["hash"].as_str().expect("hash").starts_with("sha256:"));
    assert_eq!(data["configuration"]["vmCpuCount"], 1);
    assert!(data["configuration"].get("machineCount").is_none());
    let owner = &v1.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("ProvScheme", Some(true))
    );
    assert_eq!(
        v1.labels().get(LABEL_PROVSCHEME).map(String::as_str),
        Some("myscheme")
    );

    // Set-ProvScheme -VMCpuCount 2: version 2.
    env.patch_spec("myscheme", json!({"vmCpuCount": 2})).await;
    let two = wait_version(&env, "myscheme", 2).await;
    let summary = &two.status.as_ref().expect("status").versions[0];
    assert_eq!(summary.number, 2);
    assert_eq!(summary.changes.as_deref(), Some("vmCpuCount 1 -> 2"));

    // Set-ProvScheme -MachineProfile ...2.0: the next version.
    env.patch_spec("myscheme", json!({"machineProfile": profile2}))
        .await;
    wait_version(&env, "myscheme", 3).await;

    // Set-ProvScheme -Version 1, as `scheme revert --to-version 1`.
    let out = cli::run(
        env.client.clone(),
        env.ns(),
        &SchemeCommand::Revert {
            name: "myscheme".into(),
            to_version: 1,
        },
    )
    .await
    .expect("revert");
    assert!(
        out.contains("reverted to the configuration of version 1"),
        "{out}"
    );
    let reverted = wait_version(&env, "myscheme", 1).await;
    assert_eq!(reverted.spec.machine_profile.as_deref(), Some(profile1));
    assert_eq!(reverted.spec.size.vm_cpu_count, Some(1));
    assert_eq!(
        reverted.status.as_ref().and_then(|s| s.highest_version),
        Some(3)
    );
    assert_eq!(revisions(&env, "myscheme").await, [1, 2, 3]);
    env.wait_event("myscheme", "VersionReverted").await;

    // Set-ProvScheme -NetworkMapping: a new number, never a reused one.
    env.patch_spec("myscheme", json!({"networkMapping": {"0": DMZ}}))
        .await;
    let four = wait_version(&env, "myscheme", 4).await;
    assert_eq!(revisions(&env, "myscheme").await, [1, 2, 3, 4]);
    assert!(
        four.status.as_ref().expect("status").versions[0]
            .changes
            .as_deref()
            .is_some_and(|c| c.starts_with("networkMapping.0")),
        "{:?}",
        four.status
    );

    // The controller never writes the spec: the generation is the one of our last change.
    let generation = four.metadata.generation;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let later = env.api::<ProvScheme>().get("myscheme").await.expect("get");
    assert_eq!(later.metadata.generation, generation);
    assert_eq!(later.spec, four.spec);
    assert!(
        later
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .filter(|m| m
                .manager
                .as_deref()
                .is_some_and(|n| n.starts_with("mcs-operator/")))
            .all(|m| m.subresource.as_deref() == Some("status")
                || m.fields_v1
                    .as_ref()
                    .is_none_or(|f| f.0.get("f:spec").is_none())),
        "the controller owns no spec field"
    );

    // The command line: history and diff.
    let history = cli::run(
        env.client.clone(),
        env.ns(),
        &SchemeCommand::History {
            name: "myscheme".into(),
        },
    )
    .await
    .expect("history");
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 5, "{history}");
    assert!(lines[1].starts_with("4 "), "{history}");
    assert!(lines[1].contains('*'), "{history}");
    assert!(lines[4].contains("initial version"), "{history}");
    let diff = cli::run(
        env.client.clone(),
        env.ns(),
        &SchemeCommand::Diff {
            name: "myscheme".into(),
            a: 1,
            b: 2,
        },
    )
    .await
    .expect("diff");
    assert_eq!(diff, "--- version 1\n+++ version 2\nvmCpuCount: 1 -> 2\n");

    // The binary, and kubectl with the binary linked as the plugin `kubectl-mcs`.
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_mcs-operator"));
    let out = std::process::Command::new(binary)
        .args(["scheme", "history", "myscheme", "-n", env.ns()])
        .env("KUBECONFIG", &env.cluster.kubeconfig)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), history);
    let out = std::process::Command::new(binary)
        .args([
            "scheme",
            "revert",
            "myscheme",
            "--to-version",
            "9",
            "-n",
            env.ns(),
        ])
        .env("KUBECONFIG", &env.cluster.kubeconfig)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("version 9 of provisioning scheme 'myscheme' is not stored"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plugins = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(binary, plugins.path().join("kubectl-mcs")).expect("link");
    let path = format!(
        "{}:{}",
        plugins.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let Some(kubectl) = support::cluster::kubectl_path() else {
        eprintln!(
            "no kubectl found (KUBECTL, KUBEBUILDER_ASSETS or PATH): the plugin check is skipped"
        );
        return;
    };
    if let Ok(out) = std::process::Command::new(kubectl)
        .args([
            "mcs",
            "scheme",
            "diff",
            "myscheme",
            "1",
            "2",
            "-n",
            env.ns(),
        ])
        .env("KUBECONFIG", &env.cluster.kubeconfig)
        .env("PATH", path)
        .output()
    {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), diff);
    }
}

/// Pruning at maxVersions keeps the current version and versions machines were built from.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pruning_keeps_current_and_referenced_versions() {
    let env = Env::start("pruning-keeps-current-and-referenced-versions").await;
    env.prepared("prepared-a", "win11", "Success").await;
    env.scheme("pruned", json!({"maxVersions": 2, "machineCount": 1}))
        .await;
    wait_version(&env, "pruned", 1).await;
    wait_ready_machines(&env, "pruned", 1).await;
    for (cpu, number) in [(2, 2), (3, 3), (4, 4)] {
        env.patch_spec("pruned", json!({"vmCpuCount": cpu})).await;
        wait_version(&env, "pruned", number).await;
    }
    // Version 1 is referenced by VDI-001, 4 is current: 2 and 3 were pruned.
    assert_eq!(revisions(&env, "pruned").await, [1, 4]);
    let pruned = env.api::<ProvScheme>().get("pruned").await.expect("get");
    assert_eq!(
        pruned
            .annotations()
            .get("mcs.imaging.dev/highest-version")
            .map(String::as_str),
        Some("4")
    );
    env.wait_event("pruned", "VersionsPruned").await;

    // A revert to a pruned version is refused by the command line.
    let error = cli::run(
        env.client.clone(),
        env.ns(),
        &SchemeCommand::Revert {
            name: "pruned".into(),
            to_version: 2,
        },
    )
    .await
    .expect_err("pruned");
    assert!(
        error
            .to_string()
            .contains("version 2 of provisioning scheme 'pruned' is not stored"),
        "{error}"
    );

    // One version at most cannot be met while VDI-001 still uses version 1.
    env.patch_spec("pruned", json!({"maxVersions": 1})).await;
    let exceeded = env
        .wait::<ProvScheme>("pruned", "ProvisioningSchemeVersionMaximumExceeded", |s| {
            degraded_reason(s).as_deref() == Some("ProvisioningSchemeVersionMaximumExceeded")
        })
        .await;
    assert_eq!(version(&exceeded), Some(4));
    assert_eq!(revisions(&env, "pruned").await, [1, 4]);
    let message = &condition(&exceeded, condition_type::DEGRADED)
        .expect("degraded")
        .message;
    assert!(message.contains("referenced by machines: 1"), "{message}");
    env.wait_event("pruned", "ProvisioningSchemeVersionMaximumExceeded")
        .await;
    // A new version after the maximum was reached numbers on from the highest ever.
    env.patch_spec("pruned", json!({"maxVersions": 3, "vmCpuCount": 6}))
        .await;
    wait_version(&env, "pruned", 5).await;
}

/// Scale 0 -> 5 -> 2 with real overlays created and removed, newest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_creates_and_removes_machines_with_disks() {
    let env = Env::start("scale-creates-and-removes-machines-with-disks").await;
    env.prepared("prepared-a", "win11", "Success").await;
    env.scheme("desktops", json!({"initialBatchSizeHint": 3}))
        .await;
    wait_version(&env, "desktops", 1).await;
    assert!(machines(&env, "desktops").await.is_empty());

    env.patch_spec("desktops", json!({"machineCount": 5})).await;
    wait_ready_machines(&env, "desktops", 5).await;
    let built = machines(&env, "desktops").await;
    assert_eq!(
        names(&built),
        ["vdi-001", "vdi-002", "vdi-003", "vdi-004", "vdi-005"]
    );
    for machine in &built {
        let status = machine.status.as_ref().expect("status");
        assert_eq!(status.provisioning_scheme_version, Some(1));
        assert_eq!(status.image_version_spec.as_deref(), Some("prepared-a"));
        assert_eq!(status.update_status, Some(UpdateStatus::UpToDate));
        assert_eq!(status.disks.len(), 2, "{status:?}");
        let owner = &machine.owner_references()[0];
        assert_eq!(
            (owner.name.as_str(), owner.controller),
            ("desktops", Some(true))
        );
        let dir = env.machine_dir("desktops", &machine.spec.machine_name);
        for file in ["disk.qcow2", "identity.img", "machine.json"] {
            assert!(dir.join(file).exists(), "{}", dir.join(file).display());
        }
        let definition: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("machine.json")).expect("definition"))
                .expect("json");
        assert_eq!(definition["cpu"], 1);
        assert_eq!(definition["memory_mb"], 512);
        assert_eq!(definition["nics"][0]["network"], "lan");
    }

    // kubectl scale --replicas=2: the newest three go, disks and all.
    env.api::<ProvScheme>()
        .patch_scale(
            "desktops",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 2}})),
        )
        .await
        .expect("scaled");
    env.wait::<ProvScheme>("desktops", "2 machines", |s| {
        s.status.as_ref().is_some_and(|st| st.machine_count == 2)
    })
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while machines(&env, "desktops").await.len() > 2 {
        assert!(std::time::Instant::now() < deadline, "machines not deleted");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        names(&machines(&env, "desktops").await),
        ["vdi-001", "vdi-002"]
    );
    for gone in ["VDI-003", "VDI-004", "VDI-005"] {
        assert!(
            !env.machine_dir("desktops", gone).exists(),
            "{gone} disks removed"
        );
    }
    for kept in ["VDI-001", "VDI-002"] {
        assert!(
            env.machine_dir("desktops", kept)
                .join("disk.qcow2")
                .exists()
        );
    }
    // deletionPolicy Retain keeps the disks of a removed machine.
    env.patch_spec(
        "desktops",
        json!({"deletionPolicy": "Retain", "machineCount": 1}),
    )
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while machines(&env, "desktops").await.len() > 1 {
        assert!(std::time::Instant::now() < deadline, "machine not deleted");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        env.machine_dir("desktops", "VDI-002")
            .join("disk.qcow2")
            .exists()
    );
    assert_eq!(
        revisions(&env, "desktops").await,
        [1],
        "scaling makes no version"
    );

    // Deleting the scheme removes its machines (policy Delete) before the scheme goes; its
    // versions are garbage-collected with it.
    env.patch_spec("desktops", json!({"deletionPolicy": "Delete"}))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    env.api::<ProvScheme>()
        .delete("desktops", &Default::default())
        .await
        .expect("deleted");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while env
        .api::<ProvScheme>()
        .get_opt("desktops")
        .await
        .expect("get")
        .is_some()
        || !revisions(&env, "desktops").await.is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "scheme not deleted");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(machines(&env, "desktops").await.is_empty());
    assert!(!env.machine_dir("desktops", "VDI-001").exists());
}

/// Two schemes on one identity pool scaling up at once get distinct names: an index taken by
/// the other scheme (409 on create) is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schemes_sharing_a_pool_never_share_a_name() {
    let env = Env::start("schemes-sharing-a-pool-never-share-a-name").await;
    env.prepared("prepared-a", "win11", "Success").await;
    env.scheme("left", json!({})).await;
    env.scheme("right", json!({})).await;
    wait_version(&env, "left", 1).await;
    wait_version(&env, "right", 1).await;
    let (a, b) = tokio::join!(
        env.patch_spec("left", json!({"machineCount": 3})),
        env.patch_spec("right", json!({"machineCount": 3}))
    );
    let ((), ()) = (a, b);
    wait_ready_machines(&env, "left", 3).await;
    wait_ready_machines(&env, "right", 3).await;
    let mut all: Vec<String> = machines(&env, "left")
        .await
        .iter()
        .map(|m| m.spec.machine_name.clone())
        .collect();
    all.extend(
        machines(&env, "right")
            .await
            .iter()
            .map(|m| m.spec.machine_name.clone()),
    );
    all.sort();
    assert_eq!(
        all,
        [
            "VDI-001", "VDI-002", "VDI-003", "VDI-004", "VDI-005", "VDI-006"
        ]
    );
}

/// Existing machines show PendingUpdate after a new version and are rebuilt on their next
/// start inside the update window only; per-machine overrides win.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn machines_update_on_start_inside_the_window_only() {
    let env = Env::start("machines-update-on-start-inside-the-window-only").await;
    env.prepared("prepared-a", "win11", "Success").await;
    env.scheme("office", json!({"machineCount": 2})).await;
    wait_version(&env, "office", 1).await;
    wait_ready_machines(&env, "office", 2).await;

    env.patch_spec("office", json!({"vmCpuCount": 2})).await;
    wait_version(&env, "office", 2).await;
    for name in ["vdi-001", "vdi-002"] {
        env.wait::<ProvVm>(name, "PendingUpdate", |m| {
            m.status.as_ref().and_then(|s| s.update_status) == Some(UpdateStatus::PendingUpdate)
        })
        .await;
    }
    let open_since = jiff::Timestamp::now()
        .checked_sub(jiff::SignedDuration::from_mins(1))
        .expect("time");
    env.patch_spec(
        "office",
        json!({"updateWindow": {"startTime": open_since.to_string(), "durationMinutes": 60}}),
    )
    .await;
    // The window is not configuration: still version 2, no new version made.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(revisions(&env, "office").await, [1, 2]);

    // Set-ProvVM overrides on VDI-001, then start it inside the window.
    env.api::<ProvVm>()
        .patch(
            "vdi-001",
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"spec": {"overrides": {"vmMemoryMB": 768}, "powerState": "Running"}}),
            ),
        )
        .await
        .expect("started");
    let updated = env
        .wait::<ProvVm>("vdi-001", "UpToDate at version 2", |m| {
            m.status.as_ref().is_some_and(|s| {
                s.update_status == Some(UpdateStatus::UpToDate)
                    && s.provisioning_scheme_version == Some(2)
            })
        })
        .await;
    let status = updated.status.expect("status");
    assert_eq!(status.power_state, Some(mcs_operator::api::PowerState::On));
    let definition: serde_json::Value = serde_json::from_slice(
        &std::fs::read(env.machine_dir("office", "VDI-001").join("machine.json")).expect("def"),
    )
    .expect("json");
    assert_eq!(definition["cpu"], 2, "the scheme's new CPU count");
    assert_eq!(definition["memory_mb"], 768, "the machine's override wins");

    // Close the window (it opens tomorrow), then start VDI-002: it stays PendingUpdate.
    let tomorrow = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(24))
        .expect("time");
    env.patch_spec(
        "office",
        json!({"updateWindow": {"startTime": tomorrow.to_string(), "durationMinutes": -1}}),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    env.api::<ProvVm>()
        .patch(
            "vdi-002",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"powerState": "Running"}})),
        )
        .await
        .expect("started");
    let started = env
        .wait::<ProvVm>("vdi-002", "powered on", |m| {
            m.status.as_ref().and_then(|s| s.power_state) == Some(mcs_operator::api::PowerState::On)
        })
        .await;
    let status = started.status.expect("status");
    assert_eq!(status.update_status, Some(UpdateStatus::PendingUpdate));
    assert_eq!(status.provisioning_scheme_version, Some(1));
    let definition: serde_json::Value = serde_json::from_slice(
        &std::fs::read(env.machine_dir("office", "VDI-002").join("machine.json")).expect("def"),
    )
    .expect("json");
    assert_eq!(definition["cpu"], 1, "untouched outside the window");
    let scheme = env
        .wait::<ProvScheme>("office", "counts", |s| {
            s.status
                .as_ref()
                .is_some_and(|st| st.up_to_date_machines == 1 && st.pending_update_machines == 1)
        })
        .await;
    assert_eq!(version(&scheme), Some(2));
}

/// Creation failures end the task in the SDK's failure state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn creation_failures_end_in_the_sdk_states() {
    let env = Env::start("creation-failures-end-in-the-sdk-states").await;
    env.prepared("prepared-a", "win11", "Success").await;
    env.prepared("prepared-failed", "win11", "Failed").await;
    let cases = [
        (
            "no-pool",
            json!({"identityPoolRef": "missing"}),
            TaskState::IdentityPoolNotFound,
            "identity pool 'missing' was not found",
        ),
        (
            "no-unit",
            json!({"hostingUnitRef": "missing"}),
            TaskState::HostingUnitNotFound,
            "hosting unit 'missing' was not found",
        ),
        (
            "bad-net",
            json!({"networkMapping": {"0": r"XDHyp:\HostingUnits\lab\wan.network"}}),
            TaskState::NetworkPathResolutionFailed,
            "network 'wan' is not a network of hosting unit 'lab'",
        ),
        (
            "bad-offering",
            json!({"vmCpuCount": null, "vmMemoryMB": null, "serviceOffering": r"XDHyp:\HostingUnits\lab\huge.serviceoffering"}),
            TaskState::ServiceOfferingPathResolutionFailed,
            "service offering 'huge'",
        ),
        (
            "failed-image",
            json!({"imageVersionSpecRef": "prepared-failed"}),
            TaskState::ImageVersionSpecNotUsable,
            "in state Failed and cannot be used",
        ),
    ];
    for (name, spec, _, _) in &cases {
        env.scheme(name, spec.clone()).await;
    }
    for (name, _, state, message) in cases {
        let failed = env
            .wait::<ProvScheme>(name, state.as_str(), |s| {
                s.status
                    .as_ref()
                    .and_then(|st| st.task.as_ref())
                    .is_some_and(|t| t.task_state == state)
            })
            .await;
        let task = failed
            .status
            .as_ref()
            .and_then(|s| s.task.clone())
            .expect("task");
        let error = task.terminating_error.expect("error");
        assert_eq!(error.reason, state.as_str());
        assert!(error.message.contains(message), "{name}: {}", error.message);
        let ready = condition(&failed, condition_type::READY).expect("ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", state.as_str())
        );
        assert_eq!(version(&failed), None);
        assert!(revisions(&env, name).await.is_empty());
    }
    env.wait_event("no-pool", "IdentityPoolNotFound").await;

    // The retry annotation starts a fresh task once the pool exists.
    env.create::<mcs_operator::api::IdentityPool>(json!({
        "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "IdentityPool",
        "metadata": {"name": "missing"},
        "spec": {"namingScheme": "ALT-##", "namingSchemeType": "Numeric", "startCount": 1,
            "identityType": "Workgroup"}
    }))
    .await;
    env.api::<ProvScheme>()
        .patch(
            "no-pool",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {"mcs.imaging.dev/retry": "1"}}})),
        )
        .await
        .expect("annotated");
    wait_version(&env, "no-pool", 1).await;
    // The controller writes the status first, then drops the consumed annotation.
    env.wait::<ProvScheme>("no-pool", "the retry annotation consumed", |s| {
        !s.annotations().contains_key("mcs.imaging.dev/retry")
    })
    .await;
}

/// A clean-on-boot scheme with a write-back cache: the machine gets a cache disk and its
/// definition the cache sizes, and each start resets its overlay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_back_cache_and_clean_on_boot_machines() {
    let env = Env::start("write-back-cache-and-clean-on-boot-machines").await;
    env.prepared("prepared-a", "win11", "Success").await;
    env.scheme(
        "pooled",
        json!({"machineCount": 1, "cleanOnBoot": true, "useWriteBackCache": true,
            "writeBackCacheDiskSizeGB": 1, "writeBackCacheMemorySizeMB": 256}),
    )
    .await;
    wait_ready_machines(&env, "pooled", 1).await;
    let machine = env.api::<ProvVm>().get("vdi-001").await.expect("machine");
    let disks: Vec<String> = machine
        .status
        .as_ref()
        .expect("status")
        .disks
        .iter()
        .map(|d| d.name.clone())
        .collect();
    assert_eq!(disks, ["identity", "os", "writeBackCache"]);
    let dir = env.machine_dir("pooled", "VDI-001");
    assert!(dir.join("cache.qcow2").exists());
    let definition: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("machine.json")).expect("def"))
            .expect("json");
    assert_eq!(
        definition["write_back_cache"],
        json!({"disk_mb": 1024, "memory_mb": 256})
    );
    assert_eq!(definition["clean_on_boot"], true);

    // A start of a clean-on-boot machine resets it: a fresh overlay.
    let before = std::fs::metadata(dir.join("disk.qcow2"))
        .expect("disk")
        .modified()
        .expect("mtime");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    env.api::<ProvVm>()
        .patch(
            "vdi-001",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"powerState": "Running"}})),
        )
        .await
        .expect("started");
    env.wait::<ProvVm>("vdi-001", "powered on", |m| {
        m.status.as_ref().and_then(|s| s.power_state) == Some(mcs_operator::api::PowerState::On)
    })
    .await;
    let after = std::fs::metadata(dir.join("disk.qcow2"))
        .expect("disk")
        .modified()
        .expect("mtime");
    assert!(after > before, "the overlay was recreated");
    env.wait_event("vdi-001", "MachineReset").await;
}

/// Cross-object rules reject a change with the SDK's message in a condition and an Event;
/// the current version and the machines are not touched. Rules the schema can express are
/// rejected at admission already.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rejected_changes_touch_nothing() {
    let env = Env::start("rejected-changes-touch-nothing").await;
    env.prepared("prepared-a", "win11", "Success").await;
    env.prepared("prepared-preparing", "win11", "InProgress")
        .await;
    env.prepared("prepared-multi", "win2022", "Success").await;
    let profile = r"XDHyp:\HostingUnits\lab\profiles.folder\p1.machineprofile";
    env.scheme(
        "guarded",
        json!({"machineCount": 1, "machineProfile": profile}),
    )
    .await;
    wait_version(&env, "guarded", 1).await;
    wait_ready_machines(&env, "guarded", 1).await;
    let disk = env.machine_dir("guarded", "VDI-001").join("disk.qcow2");
    let before = std::fs::metadata(&disk)
        .expect("disk")
        .modified()
        .expect("mtime");

    // The prepared spec must be Success.
    env.patch_spec(
        "guarded",
        json!({"imageVersionSpecRef": "prepared-preparing"}),
    )
    .await;
    let rejected = env
        .wait::<ProvScheme>("guarded", "ImageVersionSpecNotUsable", |s| {
            degraded_reason(s).as_deref() == Some("ImageVersionSpecNotUsable")
        })
        .await;
    assert_eq!(version(&rejected), Some(1));
    let message = &condition(&rejected, condition_type::DEGRADED)
        .expect("degraded")
        .message;
    assert!(
        message.contains("in state InProgress and cannot be used"),
        "{message}"
    );
    env.wait_event("guarded", "ImageVersionSpecNotUsable").await;

    // Session support must match the scheme's (fixed from its first image).
    env.patch_spec("guarded", json!({"imageVersionSpecRef": "prepared-multi"}))
        .await;
    let rejected = env
        .wait::<ProvScheme>("guarded", "VdaSessionSupportMismatch", |s| {
            degraded_reason(s).as_deref() == Some("VdaSessionSupportMismatch")
        })
        .await;
    assert_eq!(version(&rejected), Some(1));
    env.wait_event("guarded", "VdaSessionSupportMismatch").await;
    let message = &condition(&rejected, condition_type::DEGRADED)
        .expect("degraded")
        .message;
    assert!(message.contains("session support must match"), "{message}");

    // A machine profile cannot be removed; write-back cache sizes need useWriteBackCache:
    // both rejected at admission with the rule's message.
    let error = env
        .api::<ProvScheme>()
        .patch(
            "guarded",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"machineProfile": null}})),
        )
        .await
        .expect_err("admission rejects");
    assert!(
        error
            .to_string()
            .contains("MachineProfileUpdateNotSupported"),
        "{error}"
    );
    let error = env
        .api::<ProvScheme>()
        .patch(
            "guarded",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"writeBackCacheDiskSizeGB": 24}})),
        )
        .await
        .expect_err("admission rejects");
    assert!(error.to_string().contains("useWriteBackCache"), "{error}");

    // Nothing provisioned was touched; back to a valid image the change is accepted.
    let machine = env.api::<ProvVm>().get("vdi-001").await.expect("machine");
    assert_eq!(
        machine
            .status
            .as_ref()
            .and_then(|s| s.provisioning_scheme_version),
        Some(1)
    );
    assert_eq!(
        std::fs::metadata(&disk)
            .expect("disk")
            .modified()
            .expect("mtime"),
        before
    );
    assert_eq!(revisions(&env, "guarded").await, [1]);
    env.prepared("prepared-b", "win11", "Success").await;
    env.patch_spec("guarded", json!({"imageVersionSpecRef": "prepared-b"}))
        .await;
    let accepted = wait_version(&env, "guarded", 2).await;
    assert_eq!(degraded_reason(&accepted), None);
    let history = &accepted.status.as_ref().expect("status").image_history;
    assert_eq!(history[0].image_version_spec, "prepared-b");
    assert!(history[0].current);
    assert_eq!(history[1].image_version_spec, "prepared-a");
    assert!(!history[1].current);
    env.wait::<ProvVm>("vdi-001", "PendingUpdate", |m| {
        m.status.as_ref().and_then(|s| s.update_status) == Some(UpdateStatus::PendingUpdate)
    })
    .await;
}

/// The whole operator: the image controllers prepare the image from the master snapshot while
/// the new scheme waits for it (`WaitingForPreparedImage`), then the scheme builds its machines
/// from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_whole_operator_prepares_then_provisions() {
    let env = Env::start_full("the-whole-operator-prepares-then-provisions").await;
    env.prepare_by_operator("prepared-full", "win11").await;
    env.scheme(
        "full",
        json!({"imageVersionSpecRef": "prepared-full", "machineCount": 2}),
    )
    .await;
    let ready = env
        .wait::<ProvScheme>("full", "2 machines from the prepared image", |s| {
            s.status.as_ref().is_some_and(|st| {
                st.ready_machines == 2 && st.provisioning_scheme_version == Some(1)
            })
        })
        .await;
    assert_eq!(
        ready
            .status
            .as_ref()
            .and_then(|s| s.task.as_ref())
            .map(|t| t.task_state),
        Some(TaskState::Finished)
    );
    for machine in ["VDI-001", "VDI-002"] {
        assert!(env.machine_dir("full", machine).join("disk.qcow2").exists());
    }
}

/// A ProvVm is created by its scheme: one naming a missing scheme, or made by hand for an
/// existing one (even with a machine name the scheme issued and the disk finalizer copied),
/// is reported in its conditions and a Warning Event naming `spec.provSchemeRef`, is never
/// built, and its deletion touches no disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hand_made_machines_are_reported_and_touch_no_disk() {
    let env = Env::start("hand-made-machines-are-reported-and-touch-no-disk").await;
    env.prepared("prepared-a", "win11", "Success").await;
    env.scheme("desk", json!({"machineCount": 1})).await;
    wait_ready_machines(&env, "desk", 1).await;
    let disk = env.machine_dir("desk", "VDI-001").join("disk.qcow2");
    let before = std::fs::metadata(&disk)
        .expect("disk")
        .modified()
        .expect("mtime");
    let machine = |name: &str, scheme: &str| {
        json!({
            "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ProvVm",
            "metadata": {"name": name, "finalizers": ["mcs.imaging.dev/machine-disks"]},
            "spec": {"provSchemeRef": scheme, "machineName": "VDI-001", "machineIndex": 1},
        })
    };
    for (name, scheme, reason) in [
        ("impostor", "desk", "MachineNotIssuedByScheme"),
        ("orphan", "missing", "ProvisioningSchemeNotFound"),
    ] {
        let _: ProvVm = env.create(machine(name, scheme)).await;
        let reported = env
            .wait::<ProvVm>(name, reason, |m| {
                m.status.as_ref().is_some_and(|s| {
                    s.observed_generation == m.metadata.generation
                        && s.conditions.iter().any(|c| {
                            c.type_ == condition_type::READY
                                && c.status == "False"
                                && c.reason == reason
                        })
                })
            })
            .await;
        let status = reported.status.expect("status");
        assert_eq!(status.provisioning_scheme_version, None, "never built");
        assert!(status.disks.is_empty());
        let notes = env.wait_event(name, reason).await;
        assert!(
            notes.iter().all(|n| n.starts_with("spec.provSchemeRef: ")),
            "{notes:?}"
        );
        env.api::<ProvVm>()
            .delete(name, &Default::default())
            .await
            .expect("deleted");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while env
            .api::<ProvVm>()
            .get_opt(name)
            .await
            .expect("get")
            .is_some()
        {
            assert!(std::time::Instant::now() < deadline, "{name} not released");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    // The scheme's own VDI-001 keeps its disk, untouched, and stays Ready.
    let after = std::fs::metadata(&disk)
        .expect("disk kept")
        .modified()
        .expect("mtime");
    assert_eq!(before, after);
    let scheme = wait_ready_machines(&env, "desk", 1).await;
    assert_eq!(scheme.status.expect("status").machine_count, 1);
}
