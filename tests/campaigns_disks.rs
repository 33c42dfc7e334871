//! Campaign 4 of issue 13: the disks fail, with the real operator binary.
//!
//! For each fault the prepared spec of the examples fails in an SDK failure state with a
//! message naming the cause, leaves no `*.partial-*` file, and Finishes after the fault is
//! cleared and `mcs.imaging.dev/retry` is set:
//! - a full storage: the hosting unit's second storage (`fast/lab`) is a size-limited tmpfs
//!   (`mount -t tmpfs -o size=8m`, needs root); without root, a `qemu-img` that reports "No
//!   space left on device" for copies into that storage (a named backend fault);
//! - a read-only storage: the same tmpfs mounted `ro`, then remounted `rw` (needs root;
//!   skipped, saying so, without it);
//! - a corrupt master image (refcount block zeroed) and a truncated one, then the good master
//!   written back.
//!
//! The backend-level cases (each SDK state of each qemu-img failure) are in
//! `crates/mcs-backend/tests/local.rs`; this suite proves the operator reports them and
//! recovers. The canary of `support::secrets` is planted too and checked at the end.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use mcs_operator::api::{ANNOTATION_RETRY, ImageVersionSpec, TaskState};
use serde_json::json;
use support::operator::{Harness, PREPARED, make_master, task_state};
use support::secrets::Canary;

/// A tmpfs mounted on a directory for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` with `options` on `dir`; `None` (after saying why) when the
    /// machine does not allow it (not root, no mount).
    fn mount(dir: &Path, size: &str, options: &str) -> Option<Tmpfs> {
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}{options}"),
                "tmpfs",
            ])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(dir.to_owned())),
            Ok(o) => {
                eprintln!(
                    "mount -t tmpfs refused: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("cannot run mount: {e}");
                None
            }
        }
    }

    /// Remounts with `options` (e.g. `rw,size=256m`).
    fn remount(&self, options: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.0)
            .status()
            .expect("mount");
        assert!(status.success(), "remount {options}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The world of one fault: the examples up to the master, the canary planted.
async fn start(name: &str, data_mib: u32) -> (Harness, Vec<serde_json::Value>, Canary) {
    start_on(Harness::new(name, "64M", data_mib).await).await
}

/// [`start`] on a prepared harness (a fault already in place).
async fn start_on(mut h: Harness) -> (Harness, Vec<serde_json::Value>, Canary) {
    h.timeout = Duration::from_secs(120);
    let canary = Canary::new();
    let mut objects = h.examples();
    canary.plant(&h.cluster, &mut objects).await;
    h.start_operator();
    let (before, after): (Vec<_>, Vec<_>) = objects
        .into_iter()
        .partition(|o| o["kind"] != "ProvScheme" && o["metadata"]["name"] != PREPARED);
    h.apply(&before).await;
    (h, after, canary)
}

/// Applies the examples' prepared spec from `rest`.
async fn apply_prepared(h: &Harness, rest: &[serde_json::Value]) {
    let prepared: Vec<_> = rest
        .iter()
        .filter(|o| o["metadata"]["name"] == PREPARED)
        .cloned()
        .collect();
    h.apply(&prepared).await;
}

/// Creates the prepared spec and waits until its task ends in `state`; returns the
/// terminating error's message.
async fn fails_with(h: &Harness, rest: &[serde_json::Value], state: TaskState) -> String {
    apply_prepared(h, rest).await;
    let spec = h
        .wait::<ImageVersionSpec>(PREPARED, &format!("task {state}"), |s| {
            let task = s.status.as_ref().and_then(|s| s.task.as_ref());
            task.is_some_and(|t| t.task_state.is_terminal())
        })
        .await;
    let status = spec.status.expect("status");
    let task = status.task.expect("task");
    let message = task
        .terminating_error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_default();
    assert_eq!(task.task_state, state, "{message}");
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .expect("a Degraded condition");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", state.as_str()),
        "{degraded:?}"
    );
    wait_event(h, state.as_str()).await;
    message
}

/// Waits until an Event about the prepared spec has `reason`.
async fn wait_event(h: &Harness, reason: &str) {
    let events: Api<Event> = h.api();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = events
            .list(&ListParams::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .any(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(PREPARED)
                    && e.reason.as_deref() == Some(reason)
            });
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no Event {reason} about {PREPARED}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sets the retry annotation and waits for the prepared spec to Finish.
async fn retry_finishes(h: &Harness) {
    let patch = json!({"metadata": {"annotations": {ANNOTATION_RETRY: "true"}}});
    h.api::<ImageVersionSpec>()
        .patch(PREPARED, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("retry annotation");
    h.wait::<ImageVersionSpec>(PREPARED, "Finished after the retry", |s| {
        task_state(s.status.as_ref().and_then(|s| s.task.as_ref())) == Some(TaskState::Finished)
    })
    .await;
}

/// No partial file, and the canary stayed in its Secret.
async fn clean(h: &Harness, canary: &Canary, messages: &[String]) {
    assert!(h.partial_files().is_empty(), "{:?}", h.partial_files());
    let logs: Vec<PathBuf> = (1..=h.starts).map(|n| h.operator_log(n)).collect();
    let scanned = canary.assert_absent(&h.cluster, &logs, messages).await;
    eprintln!("  {scanned}");
}

/// A qemu-img that fails every copy into `target` with "No space left on device" (after
/// writing a little, as a real full disk does) while `switch` exists.
fn full_disk_qemu_img(h: &mut Harness, target: &Path, switch: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let real = support::run("sh", &["-c", "command -v qemu-img"])
        .trim()
        .to_owned();
    let bin = h.dir.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let wrapper = bin.join("qemu-img");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n# backend fault: storage {target} reports no space\nif [ \"$1\" = convert ] && [ -e '{switch}' ]; then\n  for last; do :; done\n  case \"$last\" in '{target}'/*) echo half-written > \"$last\"; echo \"qemu-img: error while writing at byte 65536: No space left on device\" >&2; exit 1;; esac\nfi\nexec {real} \"$@\"\n",
            target = target.display(),
            switch = switch.display()
        ),
    )
    .expect("wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("mode");
    h.bin = Some(bin);
}

/// A full storage: InsufficientResources naming the storage, no partial file, Finished after
/// the storage grows and `retry` is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_storage_is_insufficient_resources_until_it_grows() {
    let started = Instant::now();
    let lab = |h: &Harness| h.fast.join("lab");
    let mut h = Harness::new("disks-full", "64M", 24).await;
    let fs = Tmpfs::mount(&lab(&h), "8m", "");
    let switch = h.dir.path().join("disk-full");
    if fs.is_none() {
        eprintln!(
            "full storage: no tmpfs; using the named backend fault (a qemu-img reporting ENOSPC)"
        );
        std::fs::write(&switch, "").expect("switch");
        let target = lab(&h);
        full_disk_qemu_img(&mut h, &target, &switch);
    }
    let (h, rest, canary) = start_on(h).await;
    let message = fails_with(&h, &rest, TaskState::InsufficientResources).await;
    eprintln!("full storage: InsufficientResources: {message}");
    assert!(
        message.contains("No space left") || message.contains("available"),
        "the message says how much space is missing: {message}"
    );
    assert!(
        message.contains("lab"),
        "the message names the storage: {message}"
    );
    assert!(h.partial_files().is_empty(), "{:?}", h.partial_files());
    match &fs {
        Some(fs) => fs.remount("size=256m"),
        None => std::fs::remove_file(&switch).expect("fault cleared"),
    }
    retry_finishes(&h).await;
    clean(&h, &canary, &[message]).await;
    eprintln!(
        "full storage campaign ({}): {:.1} s",
        if fs.is_some() {
            "tmpfs of 8 MiB"
        } else {
            "backend fault"
        },
        started.elapsed().as_secs_f64()
    );
    drop(h);
    drop(fs);
}

/// A read-only storage: DiskConsolidationFailed naming the storage and the read-only file
/// system, no partial file,
/// Finished after it is remounted read-write and `retry` is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_storage_fails_clearly_until_remounted() {
    let probe = tempfile::tempdir().expect("probe");
    if Tmpfs::mount(probe.path(), "1m", "").is_none() {
        eprintln!("read_only_storage: SKIPPED: needs root to mount a read-only tmpfs");
        return;
    }
    let (h, rest, canary) = start("disks-read-only", 4).await;
    // The storage becomes read-only after the hosting unit found it.
    let fs = Tmpfs::mount(&h.fast.join("lab"), "64m", ",ro").expect("tmpfs");
    let spec = {
        apply_prepared(&h, &rest).await;
        h.wait::<ImageVersionSpec>(PREPARED, "a terminal task", |s| {
            s.status
                .as_ref()
                .and_then(|s| s.task.as_ref())
                .is_some_and(|t| t.task_state.is_terminal())
        })
        .await
    };
    let task = spec.status.and_then(|s| s.task).expect("task");
    let message = task
        .terminating_error
        .map(|e| e.message)
        .unwrap_or_default();
    eprintln!("read-only storage: {}: {message}", task.task_state);
    // The copy into the storage cannot be made: DiskConsolidationFailed (the space is there,
    // so not InsufficientResources), naming the read-only path and the cause.
    assert_eq!(
        task.task_state,
        TaskState::DiskConsolidationFailed,
        "{message}"
    );
    assert!(
        message.contains("Read-only file system"),
        "the message names the cause: {message}"
    );
    assert!(
        message.contains(&h.fast.join("lab").display().to_string()),
        "the message names the read-only storage: {message}"
    );
    wait_event(&h, task.task_state.as_str()).await;
    assert!(h.partial_files().is_empty(), "{:?}", h.partial_files());
    fs.remount("rw");
    retry_finishes(&h).await;
    clean(&h, &canary, &[message]).await;
    drop(h);
    drop(fs);
}

/// Zeroes 40 bytes of the refcount block, as a bit flip on disk would. A fresh qcow2 of
/// `qemu-img create` keeps it in its third cluster (64 KiB clusters: header, refcount table,
/// refcount block); the test's InvalidSnapshotState assertion fails if that ever changes.
fn corrupt_refcounts(file: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let mut fh = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .expect("open");
    fh.seek(SeekFrom::Start(2 * 65536 + 20)).expect("seek");
    fh.write_all(&[0u8; 40]).expect("write");
}

/// A corrupt master, then a truncated one: the prepare fails in an SDK state naming the
/// image, leaves nothing behind, and Finishes once the good master is back and `retry` is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_truncated_masters_fail_until_replaced() {
    let (h, rest, canary) = start("disks-corrupt", 8).await;
    let master = h.images.join(mcs_operator::dev::MASTER_FILE);
    let good = std::fs::read(&master).expect("master");
    corrupt_refcounts(&master);
    let message = fails_with(&h, &rest, TaskState::InvalidSnapshotState).await;
    eprintln!("corrupt master: InvalidSnapshotState: {message}");
    assert!(
        message.contains("win11.qcow2"),
        "names the image: {message}"
    );
    assert!(h.partial_files().is_empty(), "{:?}", h.partial_files());

    // Truncated: half of the file is gone.
    std::fs::write(&master, &good[..good.len() / 2]).expect("truncate");
    let patch = json!({"metadata": {"annotations": {ANNOTATION_RETRY: "true"}}});
    h.api::<ImageVersionSpec>()
        .patch(PREPARED, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("retry");
    let failed = h
        .wait::<ImageVersionSpec>(PREPARED, "a new failed task", |s| {
            s.status
                .as_ref()
                .and_then(|s| s.task.as_ref())
                .is_some_and(|t| {
                    t.task_state.is_failure()
                        && t.terminating_error
                            .as_ref()
                            .is_some_and(|e| e.message != message)
                })
        })
        .await;
    let task = failed.status.and_then(|s| s.task).expect("task");
    let truncated = task
        .terminating_error
        .map(|e| e.message)
        .unwrap_or_default();
    eprintln!("truncated master: {}: {truncated}", task.task_state);
    // qemu-img reads a truncated image's header but not its snapshot table; the backend checks
    // the image before saying the snapshot is missing, and reports the damage.
    assert_eq!(
        task.task_state,
        TaskState::InvalidSnapshotState,
        "{truncated}"
    );
    assert!(
        truncated.contains("win11.qcow2"),
        "names the image: {truncated}"
    );
    assert!(
        truncated.contains("truncated"),
        "names the damage: {truncated}"
    );
    assert!(h.partial_files().is_empty(), "{:?}", h.partial_files());

    // The good master is back.
    std::fs::remove_file(&master).expect("rm");
    make_master(&master, "64M", 8);
    retry_finishes(&h).await;
    clean(&h, &canary, &[message, truncated]).await;
}
