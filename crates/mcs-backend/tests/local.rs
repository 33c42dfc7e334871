//! End-to-end tests of the `Local` backend against the real `qemu-img` and `qemu-io` on small
//! images in temporary directories.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mcs_backend::local::{DoneRecord, MachineDefinition};
use mcs_backend::{
    Backend, BackendError, DeleteMachineRequest, DeletePreparedRequest, DeletionPolicy,
    InventoryRequest, LocalBackend, LocalConfig, MachineInfo, MachineRef, MachineRequest,
    MasterRef, MeasureRequest, Nic, Operation, Output, PrepareRequest, PreparedImage,
    ServiceOffering, StorageRootConfig, WriteBackCache, run, wait,
};
use mcs_domain::task::TaskState;

const MIB: u64 = 1 << 20;

fn sh(program: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `qemu-io -c <cmd>`; true when it succeeded (a pattern mismatch fails).
fn qemu_io(file: &Path, cmd: &str) -> bool {
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", cmd])
        .arg(file)
        .output()
        .expect("qemu-io runs");
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success() && !text.contains("verification failed")
}

fn write_pattern(file: &Path, pattern: u8, offset_mib: u64, len_mib: u64) {
    assert!(qemu_io(
        file,
        &format!("write -P 0x{pattern:02x} {}M {}M", offset_mib, len_mib)
    ));
}

fn reads(file: &Path, pattern: u8, offset_mib: u64, len_mib: u64) -> bool {
    qemu_io(
        file,
        &format!("read -P 0x{pattern:02x} {}M {}M", offset_mib, len_mib),
    )
}

/// A master image: `size_mib`; snapshot `base` holds 0xab at 0M and 0x5a at 8M; snapshot `v2`
/// holds 0xcd at 0M; the active layer holds 0xee at 0M (so reading it proves nothing).
fn make_master(path: &Path, size_mib: u64) {
    sh(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            &s(path),
            &format!("{size_mib}M"),
        ],
    );
    write_pattern(path, 0xab, 0, 1);
    write_pattern(path, 0x5a, 8, 1);
    sh("qemu-img", &["snapshot", "-c", "base", &s(path)]);
    write_pattern(path, 0xcd, 0, 1);
    sh("qemu-img", &["snapshot", "-c", "v2", &s(path)]);
    write_pattern(path, 0xee, 0, 1);
}

/// A master whose snapshot `base` holds `size_mib` of random data.
fn make_random_master(path: &Path, size_mib: u64) {
    let raw = path.with_extension("raw");
    sh(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={}", s(&raw)),
            "bs=1M",
            &format!("count={size_mib}"),
            "status=none",
        ],
    );
    sh(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "qcow2", &s(&raw), &s(path)],
    );
    let _ = fs::remove_file(&raw);
    sh("qemu-img", &["snapshot", "-c", "base", &s(path)]);
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

struct Fixture {
    _dir: tempfile::TempDir,
    base: PathBuf,
    backend: LocalBackend,
}

impl Fixture {
    /// Storages `s1` and `s2` (directories), `missing` (configured, no directory); master
    /// `s1/win11.qcow2` and `s1/golden/win10.qcow2`.
    fn new() -> Self {
        Self::with(|_| {})
    }

    fn with(tune: impl FnOnce(&mut LocalConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = fs::canonicalize(dir.path()).expect("canon");
        for st in ["s1", "s2"] {
            fs::create_dir(base.join(st)).expect("mkdir");
        }
        fs::create_dir(base.join("s1/golden")).expect("mkdir");
        make_master(&base.join("s1/win11.qcow2"), 16);
        make_master(&base.join("s1/golden/win10.qcow2"), 16);
        let mut config = LocalConfig {
            storages: ["s1", "s2", "missing"]
                .iter()
                .map(|n| StorageRootConfig {
                    name: n.to_string(),
                    path: base.join(n),
                })
                .collect(),
            networks: vec!["net0".into(), "net1".into()],
            security_groups: vec!["web".into()],
            service_offerings: vec![ServiceOffering {
                name: "small".into(),
                cpu: 2,
                memory_mb: 4096,
            }],
            max_parallel: Some(2),
            ..LocalConfig::default()
        };
        tune(&mut config);
        let backend = LocalBackend::new(config).expect("backend");
        Self {
            _dir: dir,
            base,
            backend,
        }
    }

    fn master(&self, path: &str) -> MasterRef {
        MasterRef {
            hosting_unit: "hu".into(),
            storages: vec!["s1".into()],
            path: path.into(),
        }
    }

    fn prepare_req(&self, id: &str, path: &str, targets: &[&str]) -> PrepareRequest {
        PrepareRequest {
            image_id: id.into(),
            master: self.master(path),
            target_storages: targets.iter().map(|t| t.to_string()).collect(),
            owner: None,
        }
    }

    async fn prepare(
        &self,
        id: &str,
        path: &str,
        targets: &[&str],
    ) -> Result<PreparedImage, BackendError> {
        match run(
            &self.backend,
            Operation::Prepare(self.prepare_req(id, path, targets)),
        )
        .await?
        {
            Output::Prepared(p) => Ok(p),
            other => panic!("unexpected output {other:?}"),
        }
    }

    fn machine_req(&self, name: &str, index: u32, image: &Path) -> MachineRequest {
        MachineRequest {
            storage: "s2".into(),
            scheme: "pool".into(),
            machine_name: name.into(),
            index,
            domain: "corp.example".into(),
            cpu: 2,
            memory_mb: 4096,
            nics: vec![
                Nic {
                    network: "net0".into(),
                    mac: None,
                },
                Nic {
                    network: "net1".into(),
                    mac: Some("52:54:00:00:00:01".into()),
                },
            ],
            write_back_cache: Some(WriteBackCache {
                disk_mb: 8,
                memory_mb: 256,
            }),
            clean_on_boot: true,
            prepared_image: image.to_path_buf(),
            owner: None,
        }
    }

    async fn machine(&self, op: Operation) -> Result<MachineInfo, BackendError> {
        match run(&self.backend, op).await? {
            Output::Machine(m) => Ok(m),
            other => panic!("unexpected output {other:?}"),
        }
    }

    fn mref(&self, name: &str) -> MachineRef {
        MachineRef {
            storage: "s2".into(),
            scheme: "pool".into(),
            machine_name: name.into(),
        }
    }
}

/// Every file below `dir` whose name holds the partial marker.
fn partials(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().contains(".partial-") {
            out.push(p.clone());
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(partials(&p));
        }
    }
    out
}

fn reason<T: std::fmt::Debug>(r: Result<T, BackendError>) -> &'static str {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => {
            eprintln!("{}: {e}", e.reason());
            e.reason()
        }
    }
}

#[tokio::test]
async fn prepare_replicates_snapshot_and_machine_reads_it() {
    let f = Fixture::new();
    let path = r"XDHyp:\HostingUnits\hu\win11.vm\base.snapshot";
    let id = f
        .backend
        .start(Operation::Prepare(f.prepare_req(
            "img1",
            path,
            &["s1", "s2"],
        )))
        .await
        .expect("start");
    let mut seen = Vec::new();
    let status = loop {
        let st = f.backend.poll(id).await.expect("poll");
        if seen.last() != Some(&st.phase) {
            seen.push(st.phase);
        }
        if st.result.is_some() {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    assert_eq!(status.phase, TaskState::Finished, "{}", status.message);
    assert_eq!(status.percent, 100);
    assert!(seen.contains(&TaskState::Finished));
    let Some(Ok(Output::Prepared(img))) = status.result else {
        panic!("no prepared image")
    };
    assert_eq!(img.copies.len(), 2);
    assert_eq!(img.snapshot, "base");
    assert_eq!(img.virtual_size, 16 * MIB);
    for c in &img.copies {
        assert!(c.path.starts_with(f.base.join(&c.storage).join("prepared")));
        assert!(reads(&c.path, 0xab, 0, 1), "{}", c.path.display());
        assert!(reads(&c.path, 0x5a, 8, 1), "{}", c.path.display());
        assert!(!reads(&c.path, 0xee, 0, 1), "active layer leaked in");
        let info = sh("qemu-img", &["info", "--output=json", &s(&c.path)]);
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("json");
        assert_eq!(info["format"], "qcow2");
        assert!(info.get("backing-filename").is_none(), "standalone image");
        assert!(info["snapshots"].as_array().is_none_or(|a| a.is_empty()));
        let done: DoneRecord = serde_json::from_slice(
            &fs::read(c.path.with_extension("done.json")).expect("done record"),
        )
        .expect("parses");
        assert_eq!(done.snapshot, "base");
        assert_eq!(done.source, f.base.join("s1/win11.qcow2"));
        assert_eq!(done.size_bytes, c.size_bytes);
    }
    assert!(partials(&f.base).is_empty(), "{:?}", partials(&f.base));

    // Idempotent: a second run returns the same result without rewriting the image.
    let mtime = fs::metadata(&img.copies[1].path)
        .and_then(|m| m.modified())
        .expect("mtime");
    let again = f.prepare("img1", path, &["s1", "s2"]).await.expect("again");
    assert_eq!(again, img);
    let mtime2 = fs::metadata(&img.copies[1].path)
        .and_then(|m| m.modified())
        .expect("mtime");
    assert_eq!(mtime, mtime2, "prepared image was rewritten");

    // A crash between the rename and the done record: the retry redoes that copy only.
    let done1 = img.copies[1].path.with_extension("done.json");
    fs::remove_file(&done1).expect("rm done");
    let again = f
        .prepare("img1", path, &["s1", "s2"])
        .await
        .expect("after crash");
    assert_eq!(again, img);
    assert!(done1.exists());
    assert!(reads(&img.copies[1].path, 0xab, 0, 1));

    // The same id from another snapshot is a conflict, never an overwrite.
    let e = f
        .prepare(
            "img1",
            r"XDHyp:\HostingUnits\hu\win11.vm\v2.snapshot",
            &["s1"],
        )
        .await
        .expect_err("conflict");
    assert_eq!(e.reason(), "ImageVersionSpecAlreadyExists", "{e}");
    assert_eq!(e.task_state(), TaskState::ImageVersionSpecAlreadyExists);
    assert!(reads(&img.copies[0].path, 0xab, 0, 1));

    // A linked clone of the copy in s2 reads the pattern.
    let m = f
        .machine(Operation::CreateMachine(f.machine_req(
            "VDI-001",
            1,
            &img.copies[1].path,
        )))
        .await
        .expect("create machine");
    assert!(reads(&m.disk, 0xab, 0, 1));
    assert!(reads(&m.disk, 0x5a, 8, 1));
    let info = sh("qemu-img", &["info", "--output=json", &s(&m.disk)]);
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("json");
    assert_eq!(info["backing-filename"], s(&img.copies[1].path));
    assert_eq!(info["backing-filename-format"], "qcow2");
    assert!(Path::new(info["backing-filename"].as_str().unwrap_or("")).is_absolute());
    let raw_file = f.base.join("identity.raw");
    sh(
        "qemu-img",
        &["convert", "-O", "raw", &s(&m.identity_disk), &s(&raw_file)],
    );
    let raw = String::from_utf8_lossy(&fs::read(&raw_file).expect("raw identity")).into_owned();
    fs::remove_file(&raw_file).expect("rm");
    assert!(
        raw.contains("VDI-001.corp.example"),
        "identity disk lacks the fqdn"
    );
    assert!(
        raw.contains("\"machine_index\": 1"),
        "identity disk lacks the index"
    );
    let def: MachineDefinition =
        serde_json::from_slice(&fs::read(&m.definition).expect("definition")).expect("parses");
    assert_eq!((def.cpu, def.memory_mb), (2, 4096));
    assert_eq!(def.nics.len(), 2);
    assert_eq!(def.nics[0].network, "net0");
    assert!(def.nics[0].mac.starts_with("52:54:00:"));
    assert_eq!(def.nics[1].mac, "52:54:00:00:00:01");
    assert!(def.disks.iter().all(|d| d.cache == "writeback"));
    assert_eq!(def.write_back_cache.map(|w| w.disk_mb), Some(8));
    assert!(m.cache_disk.as_deref().is_some_and(Path::exists));
    assert_eq!(m.prepared_image, img.copies[1].path);

    // Creating it again changes nothing (same files, same overlay content).
    write_pattern(&m.disk, 0x77, 2, 1);
    let m2 = f
        .machine(Operation::CreateMachine(f.machine_req(
            "VDI-001",
            1,
            &img.copies[1].path,
        )))
        .await
        .expect("create again");
    assert_eq!(m2, m);
    assert!(
        reads(&m.disk, 0x77, 2, 1),
        "re-create must not wipe the disk"
    );
    assert!(partials(&f.base).is_empty());
}

/// Runs `program` when it is installed (dosfstools, mtools); `None` when it is not.
fn sh_if_installed(program: &str, args: &[&str]) -> Option<std::process::Output> {
    match Command::new(program).args(args).output() {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("{program} is not installed: its check is skipped");
            None
        }
        Err(e) => panic!("{program}: {e}"),
    }
}

#[tokio::test]
async fn later_machines_copy_the_first_overlay_and_build_identity_floppies_in_process() {
    let f = Fixture::new();
    let img = f
        .prepare(
            "tmpl",
            r"XDHyp:\HostingUnits\hu\golden.folder\win10.vm\base.snapshot",
            &["s2"],
        )
        .await
        .expect("prepare");
    let backing = &img.copies.last().expect("a copy").path;
    let first = f
        .machine(Operation::CreateMachine(
            f.machine_req("VDI-011", 11, backing),
        ))
        .await
        .expect("first machine");
    let second = f
        .machine(Operation::CreateMachine(
            f.machine_req("VDI-012", 12, backing),
        ))
        .await
        .expect("second machine");

    // The second overlay is a byte copy of the first, and qemu-img reads it as a linked clone.
    assert_eq!(
        fs::read(&first.disk).expect("first disk"),
        fs::read(&second.disk).expect("second disk")
    );
    let info = sh("qemu-img", &["info", "--output=json", &s(&second.disk)]);
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("json");
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["backing-filename"], s(backing));
    sh("qemu-img", &["check", &s(&second.disk)]);
    assert!(reads(&second.disk, 0xab, 0, 1), "reads the prepared image");
    write_pattern(&second.disk, 0x3c, 0, 1);
    assert!(
        reads(&first.disk, 0xab, 0, 1),
        "machines do not share writes"
    );
    let (a, b) = (
        first.cache_disk.clone().expect("first cache"),
        second.cache_disk.clone().expect("second cache"),
    );
    assert_eq!(fs::read(&a).expect("a"), fs::read(&b).expect("b"));
    sh("qemu-img", &["check", &s(&b)]);

    // Identity disks are raw FAT12 floppies that independent tools read.
    for (m, name) in [(&first, "VDI-011"), (&second, "VDI-012")] {
        let image = s(&m.identity_disk);
        assert_eq!(
            fs::metadata(&m.identity_disk).expect("identity").len(),
            1_474_560
        );
        if let Some(out) = sh_if_installed("fsck.fat", &["-n", &image]) {
            assert!(
                out.status.success(),
                "fsck.fat: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        if let Some(out) = sh_if_installed("mtype", &["-i", &image, "::hostname"]) {
            assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{name}\n"));
        }
        if let Some(out) = sh_if_installed("mlabel", &["-i", &image, "-s", "::"]) {
            assert!(String::from_utf8_lossy(&out.stdout).contains("MCSIDENTITY"));
        }
        let def: MachineDefinition =
            serde_json::from_slice(&fs::read(&m.definition).expect("definition")).expect("parses");
        let identity = def
            .disks
            .iter()
            .find(|d| d.role == "identity")
            .expect("disk");
        assert_eq!(identity.format, "raw");
    }
    assert!(partials(&f.base).is_empty());
}

#[tokio::test]
async fn clean_on_boot_reset_update_and_delete() {
    let f = Fixture::new();
    let base = f
        .prepare(
            "base",
            r"XDHyp:\HostingUnits\hu\golden.folder\win10.vm\base.snapshot",
            &["s2"],
        )
        .await
        .expect("prepare base");
    let v2 = f
        .prepare(
            "v2",
            r"XDHyp:\HostingUnits\hu\golden.folder\win10.vm\v2.snapshot",
            &["s2"],
        )
        .await
        .expect("prepare v2");
    let img = &base.copies[0].path;
    let m = f
        .machine(Operation::CreateMachine(f.machine_req("VDI-002", 2, img)))
        .await
        .expect("create");
    write_pattern(&m.disk, 0x11, 0, 1);
    assert!(reads(&m.disk, 0x11, 0, 1));
    let cache = m.cache_disk.clone().expect("cache disk");
    assert!(qemu_io(&cache, "write -P 0x22 0 64k"));

    // Clean-on-boot: the write is gone, the image's content is back.
    let r = f
        .machine(Operation::ResetMachine(f.mref("VDI-002")))
        .await
        .expect("reset");
    assert_eq!(r.disk, m.disk);
    assert!(!reads(&m.disk, 0x11, 0, 1), "reset kept the write");
    assert!(reads(&m.disk, 0xab, 0, 1));
    assert!(
        !qemu_io(&cache, "read -P 0x22 0 64k"),
        "cache survived the reset"
    );
    f.machine(Operation::ResetMachine(f.mref("VDI-002")))
        .await
        .expect("reset twice");

    // Creating the same machine on another image is refused; updating moves it.
    let other = f.machine_req("VDI-002", 2, &v2.copies[0].path);
    assert_eq!(
        reason(f.machine(Operation::CreateMachine(other.clone())).await),
        "MachineAlreadyExists"
    );
    let mut updated = other.clone();
    updated.cpu = 4;
    updated.write_back_cache = None;
    let u = f
        .machine(Operation::UpdateMachine(updated.clone()))
        .await
        .expect("update");
    assert_eq!(u.prepared_image, v2.copies[0].path);
    assert!(reads(&u.disk, 0xcd, 0, 1), "update did not rebase on v2");
    assert!(!cache.exists(), "cache disk left after it was dropped");
    let def: MachineDefinition =
        serde_json::from_slice(&fs::read(&u.definition).expect("def")).expect("parses");
    assert_eq!(def.cpu, 4);
    write_pattern(&u.disk, 0x33, 4, 1);
    f.machine(Operation::UpdateMachine(updated))
        .await
        .expect("update twice");
    assert!(
        reads(&u.disk, 0x33, 4, 1),
        "a repeated update rebuilt the disk"
    );
    let mut ghost = f.machine_req("VDI-404", 9, img);
    ghost.cpu = 1;
    assert_eq!(
        reason(f.machine(Operation::UpdateMachine(ghost)).await),
        "MachineNotFound"
    );

    // The image in use cannot be deleted; Retain keeps files; Delete removes them, twice.
    let del_img = |policy| {
        Operation::DeletePreparedImage(DeletePreparedRequest {
            image_id: "v2".into(),
            storages: vec!["s2".into()],
            policy,
        })
    };
    assert_eq!(
        reason(run(&f.backend, del_img(DeletionPolicy::Delete)).await),
        "ImageInUse"
    );
    let del_m = |policy| {
        Operation::DeleteMachine(DeleteMachineRequest {
            machine: f.mref("VDI-002"),
            policy,
        })
    };
    let Output::Deleted(kept) = run(&f.backend, del_m(DeletionPolicy::Retain))
        .await
        .expect("retain")
    else {
        panic!("not a delete outcome")
    };
    assert!(kept.removed.is_empty());
    assert!(kept.retained.contains(&u.disk));
    assert!(u.disk.exists());
    run(&f.backend, del_m(DeletionPolicy::Delete))
        .await
        .expect("delete");
    assert!(!u.dir.exists());
    let Output::Deleted(again) = run(&f.backend, del_m(DeletionPolicy::Delete))
        .await
        .expect("again")
    else {
        panic!("not a delete outcome")
    };
    assert!(again.removed.is_empty());
    let Output::Deleted(d) = run(&f.backend, del_img(DeletionPolicy::Retain))
        .await
        .expect("retain")
    else {
        panic!("not a delete outcome")
    };
    assert!(d.retained.contains(&v2.copies[0].path) && v2.copies[0].path.exists());
    run(&f.backend, del_img(DeletionPolicy::Delete))
        .await
        .expect("delete image");
    assert!(!v2.copies[0].path.exists());
    assert!(!v2.copies[0].path.with_extension("done.json").exists());
    run(&f.backend, del_img(DeletionPolicy::Delete))
        .await
        .expect("delete image twice");
    assert_eq!(
        reason(
            f.machine(Operation::CreateMachine(f.machine_req(
                "VDI-003",
                3,
                &v2.copies[0].path
            )))
            .await
        ),
        "ImageVersionSpecNotUsable"
    );
}

#[tokio::test]
async fn error_cases_map_to_sdk_states() {
    let f = Fixture::new();
    let err = |r: Result<PreparedImage, BackendError>| match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => {
            eprintln!("{}: {e}", e.reason());
            assert_eq!(format!("{:?}", e.task_state()), e.reason());
            e
        }
    };
    // Missing snapshot, missing master file.
    let e = err(f
        .prepare(
            "a",
            r"XDHyp:\HostingUnits\hu\win11.vm\nope.snapshot",
            &["s1"],
        )
        .await);
    assert_eq!(e.reason(), "SnapshotNotFound");
    assert!(e.to_string().contains("win11.qcow2") && e.to_string().contains("base"));
    let e = err(f
        .prepare(
            "a",
            r"XDHyp:\HostingUnits\hu\gone.vm\base.snapshot",
            &["s1"],
        )
        .await);
    assert_eq!(e.reason(), "SnapshotNotFound");
    // Missing storage directory, unknown storage.
    let e = err(f
        .prepare(
            "a",
            r"XDHyp:\HostingUnits\hu\win11.vm\base.snapshot",
            &["missing"],
        )
        .await);
    assert_eq!(e.reason(), "StorageNotFound");
    let e = err(f
        .prepare(
            "a",
            r"XDHyp:\HostingUnits\hu\win11.vm\base.snapshot",
            &["nowhere"],
        )
        .await);
    assert_eq!(e.reason(), "StorageNotFound");
    // Not a snapshot path; not a qcow2.
    let e = err(f
        .prepare("a", r"XDHyp:\HostingUnits\hu\win11.vm", &["s1"])
        .await);
    assert_eq!(e.reason(), "MasterImageNotASnapshot");
    fs::write(f.base.join("s1/raw.qcow2"), vec![7u8; 1 << 20]).expect("write raw");
    let e = err(f
        .prepare("a", r"XDHyp:\HostingUnits\hu\raw.vm\base.snapshot", &["s1"])
        .await);
    assert_eq!(e.reason(), "MasterImageNotASnapshot");
    assert!(e.to_string().contains("raw"));
    // Another hosting unit.
    let e = err(f
        .prepare(
            "a",
            r"XDHyp:\HostingUnits\other\win11.vm\base.snapshot",
            &["s1"],
        )
        .await);
    assert_eq!(e.reason(), "HostingUnitMismatch");

    // Corrupt master: zero part of the refcount block.
    let corrupt = f.base.join("s1/corrupt.qcow2");
    make_master(&corrupt, 16);
    corrupt_refcounts(&corrupt);
    let e = err(f
        .prepare(
            "a",
            r"XDHyp:\HostingUnits\hu\corrupt.vm\base.snapshot",
            &["s1"],
        )
        .await);
    assert_eq!(e.reason(), "InvalidSnapshotState");
    assert!(e.to_string().contains("corruptions"), "{e}");

    // Locked by another process (qemu-io holds the write lock while it waits on stdin).
    let locked = f.base.join("s1/locked.qcow2");
    make_master(&locked, 16);
    let mut holder = Command::new("qemu-io")
        .args(["-f", "qcow2"])
        .arg(&locked)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-io");
    // Once qemu-io answers a read, it has the image open and holds its write lock. (Polling
    // with `qemu-img check` instead would race with qemu-io's own locking.)
    {
        use std::io::{BufRead, Write};
        let mut stdin = holder.stdin.take().expect("stdin");
        stdin.write_all(b"read 0 512\n").expect("command");
        stdin.flush().expect("flush");
        holder.stdin = Some(stdin);
        let mut lines = std::io::BufReader::new(holder.stdout.take().expect("stdout")).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("read 512/512") => break,
                Some(Ok(_)) => {}
                other => panic!("qemu-io did not open the image: {other:?}"),
            }
        }
    }
    let e = err(f
        .prepare(
            "a",
            r"XDHyp:\HostingUnits\hu\locked.vm\base.snapshot",
            &["s1"],
        )
        .await);
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(e.reason(), "InvalidSnapshotState");
    assert!(e.to_string().contains("lock"), "{e}");

    // Nothing was left behind by any failure.
    assert!(partials(&f.base).is_empty(), "{:?}", partials(&f.base));
    assert!(!f.base.join("s1/prepared/a.qcow2").exists());

    // Machines: unknown network, bad names, missing prepared image.
    let img = f
        .prepare(
            "ok",
            r"XDHyp:\HostingUnits\hu\win11.vm\base.snapshot",
            &["s2"],
        )
        .await
        .expect("prepare");
    let path = &img.copies[0].path;
    let mut r = f.machine_req("VDI-009", 9, path);
    r.nics[0].network = "dmz".into();
    assert_eq!(
        reason(f.machine(Operation::CreateMachine(r)).await),
        "NetworkPathResolutionFailed"
    );
    for bad in ["../evil", "a/b", "", ".."] {
        let r = f.machine_req(bad, 9, path);
        assert_eq!(
            reason(f.machine(Operation::CreateMachine(r)).await),
            "InvalidName"
        );
    }
    let r = f.machine_req("VDI-009", 9, &f.base.join("s2/prepared/none.qcow2"));
    assert_eq!(
        reason(f.machine(Operation::CreateMachine(r)).await),
        "ImageVersionSpecNotUsable"
    );
    assert!(!f.base.join("s2/machines/pool/VDI-009").exists());
}

/// Zeroes 20 refcount entries of the first refcount block, as a bit flip on disk would.
fn corrupt_refcounts(file: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let mut fh = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .expect("open");
    let mut be = [0u8; 8];
    fh.seek(SeekFrom::Start(48)).expect("seek");
    fh.read_exact(&mut be).expect("read");
    fh.seek(SeekFrom::Start(u64::from_be_bytes(be)))
        .expect("seek");
    fh.read_exact(&mut be).expect("read");
    fh.seek(SeekFrom::Start(u64::from_be_bytes(be) + 20))
        .expect("seek");
    fh.write_all(&[0u8; 40]).expect("write");
}

/// A tmpfs mounted for a test, unmounted when dropped.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Mounts a tmpfs with `options` on `dir`; `None`, after printing that `test` is SKIPPED,
/// when the machine does not allow it (not root).
fn mount_tmpfs(dir: &Path, options: &str, test: &str) -> Option<Unmount> {
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", options, "tmpfs"])
        .arg(dir)
        .stderr(Stdio::piped())
        .output();
    match mounted {
        Ok(o) if o.status.success() => Some(Unmount(dir.to_path_buf())),
        Ok(o) => {
            println!(
                "SKIPPED {test}: mount -t tmpfs refused: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            None
        }
        Err(e) => {
            println!("SKIPPED {test}: cannot run mount: {e}");
            None
        }
    }
}

#[tokio::test]
async fn full_disk_is_insufficient_resources() {
    let f = Fixture::with(|c| {
        c.storages.push(StorageRootConfig {
            name: "small".into(),
            path: c.storages[0].path.with_file_name("small"),
        })
    });
    let small = f.base.join("small");
    fs::create_dir(&small).expect("mkdir");
    let Some(_unmount) = mount_tmpfs(&small, "size=8m", "full_disk_is_insufficient_resources")
    else {
        return;
    };
    make_random_master(&f.base.join("s1/big.qcow2"), 24);
    let measured = run(
        &f.backend,
        Operation::Measure(MeasureRequest {
            master: f.master(r"XDHyp:\HostingUnits\hu\big.vm\base.snapshot"),
        }),
    )
    .await
    .expect("measure");
    let Output::Measurement(m) = measured else {
        panic!("not a measurement")
    };
    assert!(m.required_bytes >= 24 * MIB, "{m:?}");
    let e = f
        .prepare(
            "big",
            r"XDHyp:\HostingUnits\hu\big.vm\base.snapshot",
            &["s2", "small"],
        )
        .await
        .expect_err("no space");
    assert_eq!(e.reason(), "InsufficientResources", "{e}");
    assert_eq!(e.task_state(), TaskState::InsufficientResources);
    assert!(e.to_string().contains("small"), "{e}");
    assert!(partials(&f.base).is_empty());
    // The small master fits (write-back plus fsync: tmpfs refuses O_DIRECT).
    let ok = f
        .prepare(
            "fits",
            r"XDHyp:\HostingUnits\hu\win11.vm\base.snapshot",
            &["small"],
        )
        .await
        .expect("fits in 8 MiB");
    assert!(reads(&ok.copies[0].path, 0xab, 0, 1));
}

#[tokio::test]
async fn symlink_escapes_are_refused() {
    let f = Fixture::new();
    let outside = tempfile::tempdir().expect("outside");
    let outside_p = fs::canonicalize(outside.path()).expect("canon");
    // A master that is a link to a file outside the storage.
    make_master(&outside_p.join("evil.qcow2"), 16);
    std::os::unix::fs::symlink(outside_p.join("evil.qcow2"), f.base.join("s1/evil.qcow2"))
        .expect("symlink");
    let e = f
        .prepare(
            "e1",
            r"XDHyp:\HostingUnits\hu\evil.vm\base.snapshot",
            &["s1"],
        )
        .await
        .expect_err("refused");
    assert_eq!(e.reason(), "PathOutsideStorage", "{e}");
    // A prepared directory that is a link to outside.
    std::os::unix::fs::symlink(&outside_p, f.base.join("s2/prepared")).expect("symlink");
    let e = f
        .prepare(
            "e2",
            r"XDHyp:\HostingUnits\hu\win11.vm\base.snapshot",
            &["s2"],
        )
        .await
        .expect_err("refused");
    assert_eq!(e.reason(), "PathOutsideStorage", "{e}");
    // A machine directory through a link, and a prepared image outside the roots.
    let img = f
        .prepare(
            "ok",
            r"XDHyp:\HostingUnits\hu\win11.vm\base.snapshot",
            &["s1"],
        )
        .await
        .expect("prepare");
    std::os::unix::fs::symlink(&outside_p, f.base.join("s2/machines")).expect("symlink");
    let e = f
        .machine(Operation::CreateMachine(f.machine_req(
            "VDI-001",
            1,
            &img.copies[0].path,
        )))
        .await
        .expect_err("refused");
    assert_eq!(e.reason(), "PathOutsideStorage", "{e}");
    fs::remove_file(f.base.join("s2/machines")).expect("unlink");
    fs::copy(&img.copies[0].path, outside_p.join("x.qcow2")).expect("copy");
    fs::copy(
        img.copies[0].path.with_extension("done.json"),
        outside_p.join("x.done.json"),
    )
    .expect("copy");
    let e = f
        .machine(Operation::CreateMachine(f.machine_req(
            "VDI-001",
            1,
            &outside_p.join("x.qcow2"),
        )))
        .await
        .expect_err("refused");
    assert_eq!(e.reason(), "PathOutsideStorage", "{e}");
    let e = f
        .machine(Operation::CreateMachine(
            f.machine_req(
                "VDI-001",
                1,
                &f.base
                    .join("s1/prepared/../../../../")
                    .join(outside_p.strip_prefix("/").unwrap_or(&outside_p))
                    .join("x.qcow2"),
            ),
        ))
        .await
        .expect_err("refused");
    assert_eq!(e.reason(), "PathOutsideStorage", "{e}");
    let entries: Vec<_> = fs::read_dir(&outside_p)
        .expect("ls")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        entries.len(),
        3,
        "something was written outside: {entries:?}"
    );
}

#[tokio::test]
async fn killed_consolidation_leaves_no_partial_after_retry() {
    let f = Fixture::new();
    let master = f.base.join("s1/large.qcow2");
    make_random_master(&master, 192);
    let prepared = f.base.join("s2/prepared");
    fs::create_dir_all(&prepared).expect("mkdir");
    let partial = prepared.join("large.qcow2.partial-crashed0000");
    // A consolidation like the backend's, SIGKILLed half-way (as if the operator died).
    let mut child = Command::new("qemu-img")
        .args([
            "convert",
            "-p",
            "-t",
            "none",
            "-f",
            "qcow2",
            "-O",
            "qcow2",
            "-l",
            "snapshot.name=base",
        ])
        .arg(&master)
        .arg(&partial)
        .stdout(Stdio::piped())
        .spawn()
        .expect("qemu-img");
    let mut out = child.stdout.take().expect("stdout");
    let mut buf = [0u8; 256];
    let mut text = String::new();
    loop {
        let n = out.read(&mut buf).expect("read progress");
        assert!(n > 0, "qemu-img ended before it could be killed: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        let last = mcs_backend::qemu::parse_progress(&text).unwrap_or(0.0);
        if last > 0.0 {
            assert!(last < 100.0, "finished too fast to kill half-way");
            break;
        }
    }
    child.kill().expect("kill");
    let _ = child.wait();
    assert!(
        partial.exists(),
        "the kill left no partial file to clean up"
    );

    let img = f
        .prepare(
            "large",
            r"XDHyp:\HostingUnits\hu\large.vm\base.snapshot",
            &["s2"],
        )
        .await
        .expect("retry");
    assert!(partials(&f.base).is_empty(), "{:?}", partials(&f.base));
    let cmp = Command::new("qemu-img")
        .args(["compare", "-q", "-f", "qcow2", "-F", "qcow2"])
        .arg(&master)
        .arg(&img.copies[0].path)
        .status()
        .expect("compare");
    // The master's active layer equals its only snapshot, so they must compare equal.
    assert!(cmp.success(), "prepared image differs from the master");

    // Cancel half-way through the API: the process is killed and its partial removed.
    let id = f
        .backend
        .start(Operation::Prepare(f.prepare_req(
            "large2",
            r"XDHyp:\HostingUnits\hu\large.vm\base.snapshot",
            &["s1"],
        )))
        .await
        .expect("start");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = f.backend.poll(id).await.expect("poll");
        assert!(
            st.result.is_none(),
            "finished before cancel: {}",
            st.message
        );
        if st.phase == TaskState::ConsolidatingMasterImage && st.percent > 10 {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let st = f.backend.cancel(id).await.expect("cancel");
    assert_eq!(st.phase, TaskState::Canceled);
    assert_eq!(
        st.result.map(|r| r.map(|_| ()).map_err(|e| e.reason())),
        Some(Err("Canceled"))
    );
    assert!(
        partials(&f.base.join("s1")).is_empty(),
        "{:?}",
        partials(&f.base)
    );
    assert!(!f.base.join("s1/prepared/large2.qcow2").exists());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_with("large2.qcow2.partial-").is_empty() {
        assert!(Instant::now() < deadline, "qemu-img survived the cancel");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let again = wait(&f.backend, id, Duration::from_millis(5))
        .await
        .expect("wait");
    assert_eq!(again.phase, TaskState::Canceled);
}

#[tokio::test]
async fn inventory_dedupe_and_timeout() {
    let f = Fixture::new();
    fs::create_dir(f.base.join("s1/profiles")).expect("mkdir");
    fs::write(f.base.join("s1/profiles/gpu.json"), b"{}").expect("profile");
    let Output::Inventory(inv) = run(
        &f.backend,
        Operation::ResolveInventory(InventoryRequest {
            hosting_unit: "hu".into(),
            storages: vec!["s1".into(), "s2".into()],
        }),
    )
    .await
    .expect("inventory") else {
        panic!("not an inventory")
    };
    let names: Vec<&str> = inv.storages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["s1", "s2"]);
    assert!(inv.storages.iter().all(|s| s.available_bytes > 0));
    assert_eq!(
        inv.networks,
        [
            r"XDHyp:\HostingUnits\hu\net0.network",
            r"XDHyp:\HostingUnits\hu\net1.network"
        ]
    );
    assert_eq!(
        inv.service_offerings[0].path,
        r"XDHyp:\HostingUnits\hu\small.serviceoffering"
    );
    assert_eq!(
        inv.security_groups,
        [r"XDHyp:\HostingUnits\hu\web.securitygroup"]
    );
    let masters: Vec<&str> = inv.master_images.iter().map(|m| m.path.as_str()).collect();
    assert_eq!(
        masters,
        [
            r"XDHyp:\HostingUnits\hu\golden.folder\win10.vm",
            r"XDHyp:\HostingUnits\hu\win11.vm"
        ]
    );
    assert_eq!(
        inv.master_images[1].snapshots,
        [
            r"XDHyp:\HostingUnits\hu\win11.vm\base.snapshot",
            r"XDHyp:\HostingUnits\hu\win11.vm\v2.snapshot"
        ]
    );
    assert_eq!(inv.master_images[1].virtual_size, 16 * MIB);
    assert_eq!(
        inv.machine_profiles[0].path,
        r"XDHyp:\HostingUnits\hu\profiles.folder\gpu.machineprofile"
    );
    // Every listed snapshot path resolves back to a preparable master.
    let p = f
        .prepare("from-inv", &inv.master_images[0].snapshots[0], &["s1"])
        .await
        .expect("an inventory path prepares");
    assert_eq!(p.source, inv.master_images[0].file);

    // Starting the same operation twice gives the same id; a different one on the same target
    // is refused while it runs.
    let req = f.prepare_req(
        "dup",
        r"XDHyp:\HostingUnits\hu\win11.vm\base.snapshot",
        &["s2"],
    );
    let a = f
        .backend
        .start(Operation::Prepare(req.clone()))
        .await
        .expect("a");
    let b = f.backend.start(Operation::Prepare(req)).await.expect("b");
    assert_eq!(a, b);
    let c = f
        .backend
        .start(Operation::DeletePreparedImage(DeletePreparedRequest {
            image_id: "dup".into(),
            storages: vec!["s2".into()],
            policy: DeletionPolicy::Delete,
        }))
        .await;
    if let Err(e) = c {
        assert_eq!(e.reason(), "OperationInProgress");
    }
    let done = wait(&f.backend, a, Duration::from_millis(5))
        .await
        .expect("wait");
    assert_eq!(done.phase, TaskState::Finished);
    assert!(f.backend.forget(a).await);
    assert_eq!(
        f.backend.poll(a).await.map(|_| ()).map_err(|e| e.reason()),
        Err("OperationNotFound")
    );

    // A qemu-img timeout kills the process and reports Timeout.
    let slow = Fixture::with(|c| c.qemu_timeout = Duration::from_millis(1));
    let e = slow
        .prepare(
            "t",
            r"XDHyp:\HostingUnits\hu\win11.vm\base.snapshot",
            &["s1"],
        )
        .await
        .expect_err("timeout");
    assert_eq!(e.reason(), "Timeout", "{e}");
    assert!(partials(&slow.base).is_empty());
}

/// The qemu-img processes running with `needle` in their command line.
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmd) = fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.starts_with("qemu-img") && cmd.contains(needle) {
                found.push(cmd);
            }
        }
    }
    found
}

#[tokio::test]
async fn qemu_img_processes_are_bounded() {
    let f = Fixture::new();
    let img = f
        .prepare(
            "img",
            r"XDHyp:\HostingUnits\hu\win11.vm\base.snapshot",
            &["s2"],
        )
        .await
        .expect("prepare");
    let counters = f.base.join("counters");
    fs::create_dir(&counters).expect("mkdir");
    let wrapper = f.base.join("qemu-img-wrapper");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nt=$(mktemp -p {d} run.XXXXXX)\nls {d} | grep -c '^run\\.' >> {d}.samples\nsleep 0.2\nrm -f \"$t\"\nexec qemu-img \"$@\"\n",
            d = s(&counters)
        ),
    )
    .expect("wrapper");
    sh("chmod", &["+x", &s(&wrapper)]);
    let mut config = LocalConfig {
        storages: vec![StorageRootConfig {
            name: "s2".into(),
            path: f.base.join("s2"),
        }],
        networks: vec!["net0".into(), "net1".into()],
        max_parallel: Some(2),
        ..LocalConfig::default()
    };
    config.qemu_img = wrapper;
    let bounded = LocalBackend::new(config).expect("backend");
    let mut ids = Vec::new();
    for i in 0..6 {
        let mut r = f.machine_req(&format!("VDI-1{i}"), i, &img.copies[0].path);
        r.write_back_cache = None;
        ids.push(
            bounded
                .start(Operation::CreateMachine(r))
                .await
                .expect("start"),
        );
    }
    for id in ids {
        let st = wait(&bounded, id, Duration::from_millis(10))
            .await
            .expect("wait");
        assert_eq!(st.phase, TaskState::Finished, "{}", st.message);
    }
    let samples = fs::read_to_string(counters.with_extension("samples")).expect("samples");
    let counts: Vec<u32> = samples
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    // One overlay per machine: the six start together, so none finds the template of another.
    assert!(counts.len() >= 6, "{counts:?}");
    assert_eq!(
        counts.iter().max(),
        Some(&2),
        "bound not held or never reached: {counts:?}"
    );
}

/// A qemu-img whose `convert` writes a little to its target, then fails with `message`.
fn failing_convert(dir: &Path, name: &str, message: &str) -> PathBuf {
    let wrapper = dir.join(name);
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ \"$1\" = convert ]; then\n  for last; do :; done\n  echo half-written > \"$last\"\n  echo '{message}' >&2\n  exit 1\nfi\nexec qemu-img \"$@\"\n"
        ),
    )
    .expect("wrapper");
    sh("chmod", &["+x", &s(&wrapper)]);
    wrapper
}

#[tokio::test]
async fn failed_convert_removes_what_it_half_wrote() {
    let probe = Fixture::new();
    for (name, message, expected) in [
        (
            "enospc",
            "qemu-img: error while writing at byte 65536: No space left on device",
            "InsufficientResources",
        ),
        (
            "broken",
            "qemu-img: error while reading at byte 0: Input/output error",
            "DiskConsolidationFailed",
        ),
    ] {
        let wrapper = failing_convert(&probe.base, name, message);
        let f = Fixture::with(|c| c.qemu_img = wrapper);
        let e = f
            .prepare(
                "img",
                r"XDHyp:\HostingUnits\hu\win11.vm\base.snapshot",
                &["s1", "s2"],
            )
            .await
            .expect_err("convert fails");
        assert_eq!(e.reason(), expected, "{e}");
        assert!(
            e.to_string()
                .contains(message.trim_start_matches("qemu-img: ")),
            "{e}"
        );
        assert!(e.to_string().contains("img.qcow2"), "{e}");
        assert!(partials(&f.base).is_empty(), "{:?}", partials(&f.base));
        assert!(!f.base.join("s1/prepared/img.qcow2").exists());
    }
}

/// `copy_rate_limit` reaches every image copy as `qemu-img convert -r <bytes per second>`, and
/// the limited copy still makes a correct image.
#[tokio::test]
async fn copy_rate_limit_is_passed_to_every_convert() {
    use std::os::unix::fs::PermissionsExt as _;
    let probe = Fixture::new();
    let log = probe.base.join("qemu-img-args.log");
    let wrapper = probe.base.join("qemu-img-logging");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$*\" >> {}\nexec qemu-img \"$@\"\n",
            log.display()
        ),
    )
    .expect("wrapper");
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).expect("mode");
    let f = Fixture::with(|c| {
        c.qemu_img = wrapper;
        c.copy_rate_limit = Some(512 * MIB);
    });
    let img = f
        .prepare(
            "limited",
            r"XDHyp:\HostingUnits\hu\win11.vm\base.snapshot",
            &["s1", "s2"],
        )
        .await
        .expect("prepared");
    assert!(img.copies.iter().all(|c| reads(&c.path, 0xab, 0, 1)));
    let args = fs::read_to_string(&log).expect("log");
    let converts: Vec<&str> = args.lines().filter(|l| l.starts_with("convert")).collect();
    assert!(!converts.is_empty(), "{args}");
    for line in converts {
        assert!(line.contains(&format!("-r {}", 512 * MIB)), "{line}");
    }
}

/// A truncated master is told apart from a missing snapshot: `InvalidSnapshotState` naming
/// the image and the truncation (qemu-img still reads its header, but not its snapshot table).
#[tokio::test]
async fn truncated_master_is_invalid_snapshot_state_not_snapshot_not_found() {
    let f = Fixture::new();
    let master = f.base.join("s1/win11.qcow2");
    let good = fs::read(&master).expect("master");
    fs::write(&master, &good[..good.len() / 2]).expect("truncate");
    let e = f
        .prepare(
            "t",
            r"XDHyp:\HostingUnits\hu\win11.vm\base.snapshot",
            &["s1"],
        )
        .await
        .expect_err("truncated");
    assert_eq!(e.reason(), "InvalidSnapshotState", "{e}");
    assert_eq!(e.task_state(), TaskState::InvalidSnapshotState);
    let message = e.to_string();
    assert!(message.contains("win11.qcow2"), "{message}");
    assert!(message.contains("truncated"), "{message}");
    assert!(partials(&f.base).is_empty());
    // A good image without the snapshot is still SnapshotNotFound.
    fs::write(&master, &good).expect("restore");
    let e = f
        .prepare(
            "t",
            r"XDHyp:\HostingUnits\hu\win11.vm\nope.snapshot",
            &["s1"],
        )
        .await
        .expect_err("no snapshot");
    assert_eq!(e.reason(), "SnapshotNotFound", "{e}");
}

/// A storage on a read-only file system: `DiskConsolidationFailed` naming the storage path and
/// the cause, nothing written; the prepare succeeds once it is writable again. Needs root (a
/// tmpfs mount); says SKIPPED without it.
#[tokio::test]
async fn read_only_storage_is_not_writable_until_remounted() {
    let f = Fixture::new();
    let s2 = f.base.join("s2");
    let Some(_unmount) = mount_tmpfs(
        &s2,
        "size=64m,ro",
        "read_only_storage_is_not_writable_until_remounted",
    ) else {
        return;
    };
    let e = f
        .prepare(
            "ro",
            r"XDHyp:\HostingUnits\hu\win11.vm\base.snapshot",
            &["s1", "s2"],
        )
        .await
        .expect_err("read-only");
    assert_eq!(e.reason(), "DiskConsolidationFailed", "{e}");
    assert!(
        matches!(e, BackendError::StorageNotWritable { .. }),
        "{e:?}"
    );
    let message = e.to_string();
    assert!(message.contains(&s(&s2)), "names the storage: {message}");
    assert!(message.contains("Read-only file system"), "{message}");
    assert!(partials(&f.base).is_empty());
    sh("mount", &["-o", "remount,rw", &s(&s2)]);
    let ok = f
        .prepare(
            "ro",
            r"XDHyp:\HostingUnits\hu\win11.vm\base.snapshot",
            &["s1", "s2"],
        )
        .await
        .expect("writable again");
    assert_eq!(ok.copies.len(), 2);
}

/// Confinement holds at the moment of use: a storage's `prepared` directory swapped for a
/// link out of the roots after the task resolved it (here while `qemu-img check` runs) is
/// refused before anything is written through it.
#[tokio::test]
async fn symlink_planted_after_resolution_is_refused_at_use() {
    let probe = Fixture::new();
    let outside = tempfile::tempdir().expect("outside");
    let outside_p = fs::canonicalize(outside.path()).expect("canon");
    let prepared = probe.base.join("s2/prepared");
    let wrapper = probe.base.join("swap-on-check");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ \"$1\" = check ] && [ -d '{p}' ] && [ ! -L '{p}' ]; then\n  mv '{p}' '{p}.moved' && ln -s '{o}' '{p}'\nfi\nexec qemu-img \"$@\"\n",
            p = prepared.display(),
            o = outside_p.display()
        ),
    )
    .expect("wrapper");
    sh("chmod", &["+x", &s(&wrapper)]);
    let f = Fixture::with(|c| {
        c.qemu_img = wrapper;
        for st in &mut c.storages {
            st.path = probe.base.join(&st.name);
        }
    });
    let e = f
        .prepare(
            "late",
            r"XDHyp:\HostingUnits\hu\win11.vm\base.snapshot",
            &["s2"],
        )
        .await
        .expect_err("refused");
    assert_eq!(e.reason(), "PathOutsideStorage", "{e}");
    assert!(fs::symlink_metadata(&prepared).is_ok_and(|m| m.file_type().is_symlink()));
    let written: Vec<_> = fs::read_dir(&outside_p).expect("ls").flatten().collect();
    assert!(written.is_empty(), "written outside: {written:?}");
}
