//! The operator image that `scripts/image` builds without Docker or a registry, taken apart and
//! run: the script makes the OCI archive (a locked release build, or the binary of
//! `MCS_IMAGE_BINARY`, then the runtime files), and
//! this test
//! - checks the OCI layout (every blob's digest and size, one gzip layer whose content digest is
//!   the config's `diff_id`, the image name in `index.json`);
//! - checks the image config (user, entrypoint, command, ports, working directory, `PATH`,
//!   labels) against the `Dockerfile`'s, so both images start the same way;
//! - unpacks the layer and checks that it holds only the binaries, their shared libraries, the
//!   CA bundle, `/etc/passwd`, `/etc/group`, `/etc/nsswitch.conf`, an empty `/tmp` (1777) and an
//!   empty `/var/lib/mcs` (65532), no shell and no symlink, every file owned by root but
//!   `/var/lib/mcs`;
//! - runs, chrooted into the unpacked layer as uid/gid 65532, `mcs-operator --version`,
//!   `mcs-operator crd`, `qemu-img --version`, a real `qemu-img create` + `info` and a `qemu-io`
//!   write and read-back: proof that the library closure is complete.
//!
//! It needs root (to `chroot` and to unpack with the layer's owners), `python3`, `ldd`, `tar`,
//! `gzip` and `qemu-utils`; without root it says that it skipped and passes (also under CI,
//! which runs as root); a missing tool is a skip outside CI and a failure under CI. The first
//! run builds the release binary (about ten minutes on 2 cores; `scripts/test` sets
//! `MCS_IMAGE_BINARY` to the debug binary the suites run); later runs reuse it.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use serde_json::Value;
use sha2::{Digest, Sha256};

const TEST: &str = "image_archive_runs_as_65532_with_only_the_runtime_files";

/// The kinds whose CRDs `mcs-operator crd` prints.
const KINDS: [&str; 8] = [
    "HypervisorConnection",
    "HostingUnit",
    "IdentityPool",
    "ImageDefinition",
    "ImageVersion",
    "ImageVersionSpec",
    "ProvScheme",
    "ProvVm",
];

/// Files the image holds besides shared libraries (paths relative to the image's root).
const FILES: [&str; 7] = [
    "usr/local/bin/mcs-operator",
    "usr/bin/qemu-img",
    "usr/bin/qemu-io",
    "etc/passwd",
    "etc/group",
    "etc/nsswitch.conf",
    "etc/ssl/certs/ca-certificates.crt",
];

/// The folders under which shared libraries may live.
const LIBRARY_DIRS: [&str; 4] = ["lib/", "lib64/", "usr/lib/", "usr/lib64/"];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Whether this runs in CI, where missing tools are failures rather than skips.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// The process's effective uid, from `/proc/self/status`.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Whether `program` is on `PATH` (or is an existing absolute path).
fn found(program: &str) -> bool {
    if program.starts_with('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Runs a command to completion and panics with its output unless it succeeded.
fn run(command: &mut Command) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A blob of the OCI layout named by `descriptor`, checked against its digest and size.
fn blob(layout: &Path, descriptor: &Value) -> Vec<u8> {
    let digest = descriptor["digest"].as_str().expect("descriptor digest");
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    let data = std::fs::read(layout.join("blobs/sha256").join(hex))
        .unwrap_or_else(|e| panic!("blob {digest} is not in the archive: {e}"));
    assert_eq!(sha256(&data), digest, "blob content matches its name");
    assert_eq!(
        Some(data.len() as u64),
        descriptor["size"].as_u64(),
        "blob {digest} has the size its descriptor says"
    );
    data
}

/// The runtime stage of the `Dockerfile`: (keyword, arguments) after the last `FROM`, with
/// comments dropped and `\` continuations joined.
fn dockerfile_runtime() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if current.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                let (keyword, args) = current
                    .split_once(char::is_whitespace)
                    .unwrap_or((&current, ""));
                instructions.push((keyword.to_ascii_uppercase(), args.trim().to_owned()));
                current.clear();
            }
        }
    }
    let last_from = instructions
        .iter()
        .rposition(|(k, _)| k == "FROM")
        .expect("the Dockerfile has a FROM");
    instructions.split_off(last_from + 1)
}

/// The arguments of the runtime stage's last `keyword` instruction.
fn dockerfile_last(runtime: &[(String, String)], keyword: &str) -> String {
    runtime
        .iter()
        .rev()
        .find(|(k, _)| k == keyword)
        .unwrap_or_else(|| panic!("the Dockerfile's runtime stage has no {keyword}"))
        .1
        .clone()
}

/// One entry of the unpacked layer.
#[derive(Debug)]
struct Entry {
    path: String,
    meta: std::fs::Metadata,
}

/// Every entry under `root` (relative paths, sorted), without following symlinks.
fn entries(root: &Path) -> Vec<Entry> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<Entry>) {
        for entry in std::fs::read_dir(dir).expect("readable folder") {
            let path = entry.expect("folder entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            let relative = path
                .strip_prefix(root)
                .expect("under the root")
                .to_str()
                .expect("UTF-8 path")
                .to_owned();
            let is_dir = meta.is_dir();
            out.push(Entry {
                path: relative,
                meta,
            });
            if is_dir {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Runs `args` inside `rootfs` (chroot) as uid/gid 65532 with only the image's `PATH`.
fn in_image(rootfs: &Path, path_env: &str, args: &[&str]) -> Output {
    let out = Command::new("chroot")
        .arg("--userspec=65532:65532")
        .arg(rootfs)
        .args(args)
        .env_clear()
        .env("PATH", path_env)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .expect("chroot runs");
    eprintln!(
        "   in the image: {} -> {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
    );
    out
}

/// Like [`in_image`], and panics unless the command succeeded.
fn in_image_ok(rootfs: &Path, path_env: &str, args: &[&str]) -> String {
    let out = in_image(rootfs, path_env, args);
    assert!(
        out.status.success(),
        "`{}` failed inside the image ({}): {}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[test]
fn image_archive_runs_as_65532_with_only_the_runtime_files() {
    if effective_uid() != Some(0) {
        eprintln!(
            "{TEST}: SKIPPED: needs root (to chroot into the image and unpack it with its owners)"
        );
        return;
    }
    let missing: Vec<&str> = [
        "python3",
        "ldd",
        "tar",
        "gzip",
        "chroot",
        "/usr/bin/qemu-img",
        "/usr/bin/qemu-io",
    ]
    .into_iter()
    .filter(|tool| !found(tool))
    .collect();
    if !missing.is_empty() {
        let message = format!(
            "{TEST}: {missing:?} missing (qemu-img and qemu-io: apt-get install qemu-utils)"
        );
        assert!(!in_ci(), "{message}");
        eprintln!("SKIPPED {message}");
        return;
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let archive = dir.path().join("mcs-operator.oci.tar");

    // Build.
    let started = Instant::now();
    let out = run(Command::new(repo().join("scripts/image"))
        .arg("--out")
        .arg(&archive)
        .current_dir(repo())
        .stderr(Stdio::inherit()));
    eprintln!(
        "{TEST}: scripts/image took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 stdout");
    let printed: BTreeMap<&str, &str> = stdout.lines().filter_map(|l| l.split_once('=')).collect();
    let reference = format!("localhost/mcs-operator:{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        printed.get("IMAGE_REF"),
        Some(&reference.as_str()),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .last()
            .is_some_and(|l| l == format!("IMAGE_ARCHIVE={}", archive.display())),
        "the archive's path is the last line: {stdout}"
    );
    let archive_size = std::fs::metadata(&archive).expect("archive").len();

    // The OCI layout.
    let layout = dir.path().join("layout");
    std::fs::create_dir(&layout).expect("mkdir");
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout));
    let oci_layout: Value =
        serde_json::from_slice(&std::fs::read(layout.join("oci-layout")).expect("oci-layout"))
            .expect("oci-layout JSON");
    assert_eq!(oci_layout["imageLayoutVersion"], "1.0.0");
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("index JSON");
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 1, "one image: {index}");
    let descriptor = &manifests[0];
    assert_eq!(
        descriptor["annotations"]["io.containerd.image.name"], reference,
        "containerd imports it under the printed name"
    );
    assert_eq!(
        descriptor["annotations"]["org.opencontainers.image.ref.name"],
        reference
    );
    assert_eq!(
        descriptor["digest"].as_str(),
        printed.get("IMAGE_DIGEST").copied(),
        "the printed digest is the manifest's"
    );
    let manifest: Value = serde_json::from_slice(&blob(&layout, descriptor)).expect("manifest");
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let config: Value =
        serde_json::from_slice(&blob(&layout, &manifest["config"])).expect("config JSON");
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "a single layer");
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let layer_gz = dir.path().join("layer.tar.gz");
    std::fs::write(&layer_gz, blob(&layout, &layers[0])).expect("write layer");
    let layer = run(Command::new("gzip").arg("-dc").arg(&layer_gz)).stdout;
    assert_eq!(
        config["rootfs"]["diff_ids"],
        serde_json::json!([sha256(&layer)]),
        "the config's diff_id is the uncompressed layer's digest"
    );

    // The config, and the Dockerfile's runtime stage says the same.
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], arch);
    let run_config = &config["config"];
    assert_eq!(run_config["User"], "65532:65532");
    assert_eq!(
        run_config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/mcs-operator"])
    );
    assert_eq!(run_config["Cmd"], serde_json::json!(["run"]));
    assert_eq!(run_config["WorkingDir"], "/");
    let ports: BTreeSet<String> = run_config["ExposedPorts"]
        .as_object()
        .expect("ExposedPorts")
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        ports,
        BTreeSet::from(["8080/tcp".to_owned(), "8081/tcp".to_owned()])
    );
    let path_env = run_config["Env"]
        .as_array()
        .expect("Env")
        .iter()
        .filter_map(Value::as_str)
        .find_map(|e| e.strip_prefix("PATH="))
        .expect("the image sets PATH")
        .to_owned();
    for dir in ["/usr/local/bin", "/usr/bin"] {
        assert!(path_env.split(':').any(|d| d == dir), "PATH has {dir}");
    }

    let runtime = dockerfile_runtime();
    let docker_entrypoint: Value =
        serde_json::from_str(&dockerfile_last(&runtime, "ENTRYPOINT")).expect("exec form");
    assert_eq!(
        run_config["Entrypoint"], docker_entrypoint,
        "same ENTRYPOINT as the Dockerfile"
    );
    let docker_cmd: Value =
        serde_json::from_str(&dockerfile_last(&runtime, "CMD")).expect("exec form");
    assert_eq!(run_config["Cmd"], docker_cmd, "same CMD as the Dockerfile");
    assert_eq!(
        run_config["User"].as_str(),
        Some(dockerfile_last(&runtime, "USER").as_str()),
        "same USER as the Dockerfile"
    );
    let docker_ports: BTreeSet<String> = runtime
        .iter()
        .filter(|(k, _)| k == "EXPOSE")
        .flat_map(|(_, args)| args.split_whitespace())
        .map(|p| {
            if p.contains('/') {
                p.to_owned()
            } else {
                format!("{p}/tcp")
            }
        })
        .collect();
    assert_eq!(ports, docker_ports, "same EXPOSE as the Dockerfile");
    let label_re = regex::Regex::new(r#"([A-Za-z0-9_.-]+)="([^"]*)""#).expect("regex");
    let docker_labels: BTreeMap<String, String> = runtime
        .iter()
        .filter(|(k, _)| k == "LABEL")
        .flat_map(|(_, args)| {
            label_re
                .captures_iter(args)
                .map(|c| (c[1].to_owned(), c[2].to_owned()))
                .collect::<Vec<_>>()
        })
        .collect();
    for key in ["title", "version", "licenses", "source"] {
        let key = format!("org.opencontainers.image.{key}");
        let wanted = docker_labels
            .get(&key)
            .unwrap_or_else(|| panic!("the Dockerfile has no LABEL {key}"));
        assert_eq!(
            run_config["Labels"][&key].as_str(),
            Some(wanted.as_str()),
            "LABEL {key} as in the Dockerfile"
        );
    }

    // The layer's content, unpacked with its owners and modes.
    let layer_tar = dir.path().join("layer.tar");
    std::fs::write(&layer_tar, &layer).expect("write layer");
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir(&rootfs).expect("mkdir");
    std::fs::set_permissions(&rootfs, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    run(Command::new("tar")
        .args([
            "--numeric-owner",
            "--same-owner",
            "--same-permissions",
            "-xf",
        ])
        .arg(&layer_tar)
        .arg("-C")
        .arg(&rootfs));
    let listing = run(Command::new("tar")
        .args(["--numeric-owner", "-tvf"])
        .arg(&layer_tar))
    .stdout;
    let mtimes: BTreeSet<String> = String::from_utf8(listing)
        .expect("UTF-8 listing")
        .lines()
        .map(|l| {
            l.split_whitespace()
                .skip(3)
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    assert_eq!(
        mtimes.len(),
        1,
        "one fixed time for every entry: {mtimes:?}"
    );

    let entries = entries(&rootfs);
    let files: BTreeSet<&str> = entries
        .iter()
        .filter(|e| e.meta.is_file())
        .map(|e| e.path.as_str())
        .collect();
    for entry in &entries {
        let kind = entry.meta.file_type();
        assert!(
            kind.is_file() || kind.is_dir(),
            "{}: only files and folders (symlinks resolved)",
            entry.path
        );
        let owner = (entry.meta.uid(), entry.meta.gid());
        let wanted = if entry.path == "var/lib/mcs" {
            (65532, 65532)
        } else {
            (0, 0)
        };
        assert_eq!(owner, wanted, "{} owner", entry.path);
    }
    for file in &files {
        if FILES.contains(file) {
            continue;
        }
        let name = file.rsplit('/').next().expect("file name");
        assert!(
            LIBRARY_DIRS.iter().any(|d| file.starts_with(d)) && name.contains(".so"),
            "{file} is neither a runtime file nor a shared library"
        );
        let head = std::fs::read(rootfs.join(file)).expect("library");
        assert!(head.starts_with(b"\x7fELF"), "{file} is an ELF object");
    }
    for file in FILES {
        assert!(files.contains(file), "the image has /{file}");
    }
    let empty_dirs = ["tmp", "var/lib/mcs"];
    for dir in entries.iter().filter(|e| e.meta.is_dir()) {
        let prefix = format!("{}/", dir.path);
        let needed = empty_dirs.contains(&dir.path.as_str())
            || files
                .iter()
                .chain(empty_dirs.iter())
                .any(|f| f.starts_with(&prefix));
        assert!(needed, "/{} holds none of the image's files", dir.path);
    }
    for shell in [
        "bin/sh",
        "usr/bin/sh",
        "bin/bash",
        "usr/bin/bash",
        "bin/busybox",
    ] {
        assert!(!rootfs.join(shell).exists(), "no shell: /{shell} exists");
    }
    let executables: BTreeSet<&str> = files
        .iter()
        .copied()
        .filter(|f| f.starts_with("usr/bin/") || f.starts_with("usr/local/bin/"))
        .collect();
    assert_eq!(
        executables,
        BTreeSet::from([
            "usr/bin/qemu-img",
            "usr/bin/qemu-io",
            "usr/local/bin/mcs-operator"
        ]),
        "no program but the operator and qemu's"
    );
    for (dir, mode) in [("tmp", 0o1777), ("var/lib/mcs", 0o750)] {
        let meta = std::fs::symlink_metadata(rootfs.join(dir)).expect(dir);
        assert_eq!(meta.mode() & 0o7777, mode, "/{dir} mode");
        assert_eq!(
            std::fs::read_dir(rootfs.join(dir)).expect(dir).count(),
            0,
            "/{dir} is empty"
        );
    }
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).expect("passwd");
    assert!(
        passwd.lines().any(|l| l.starts_with("root:x:0:0:")),
        "{passwd}"
    );
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("nonroot:x:65532:65532:")),
        "{passwd}"
    );
    let group = std::fs::read_to_string(rootfs.join("etc/group")).expect("group");
    assert!(group.lines().any(|l| l == "nonroot:x:65532:"), "{group}");
    let libraries = files.len() - FILES.len();
    let bytes: u64 = entries
        .iter()
        .filter(|e| e.meta.is_file())
        .map(|e| e.meta.len())
        .sum();

    // Run inside, as 65532: the binaries find every library they need.
    let version = in_image_ok(&rootfs, &path_env, &["mcs-operator", "--version"]);
    assert!(
        version.contains(env!("CARGO_PKG_VERSION")),
        "--version prints {}: {version}",
        env!("CARGO_PKG_VERSION")
    );
    let crds = in_image_ok(&rootfs, &path_env, &["mcs-operator", "crd"]);
    assert_eq!(
        crds.matches("kind: CustomResourceDefinition").count(),
        KINDS.len(),
        "one CRD per kind"
    );
    for kind in KINDS {
        assert!(
            crds.contains(&format!("kind: {kind}\n")),
            "the CRD of {kind}"
        );
    }
    let qemu_version = in_image_ok(&rootfs, &path_env, &["qemu-img", "--version"]);
    assert!(
        qemu_version.starts_with("qemu-img version"),
        "{qemu_version}"
    );
    in_image_ok(
        &rootfs,
        &path_env,
        &["qemu-img", "create", "-f", "qcow2", "/tmp/x.qcow2", "16M"],
    );
    let info: Value = serde_json::from_str(&in_image_ok(
        &rootfs,
        &path_env,
        &["qemu-img", "info", "--output=json", "/tmp/x.qcow2"],
    ))
    .expect("qemu-img info JSON");
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 16 * 1024 * 1024);
    let disk = std::fs::metadata(rootfs.join("tmp/x.qcow2")).expect("the disk");
    assert_eq!(
        (disk.uid(), disk.gid()),
        (65532, 65532),
        "made by the image's user"
    );
    let write = in_image_ok(
        &rootfs,
        &path_env,
        &["qemu-io", "-c", "write -P 0x5a 0 64k", "/tmp/x.qcow2"],
    );
    assert!(write.contains("wrote 65536/65536 bytes"), "{write}");
    let read = in_image_ok(
        &rootfs,
        &path_env,
        &["qemu-io", "-c", "read -P 0x5a 0 64k", "/tmp/x.qcow2"],
    );
    assert!(
        read.contains("read 65536/65536 bytes") && !read.contains("verification failed"),
        "{read}"
    );
    let wrong = in_image(
        &rootfs,
        &path_env,
        &["qemu-io", "-c", "read -P 0x00 0 64k", "/tmp/x.qcow2"],
    );
    assert!(
        String::from_utf8_lossy(&wrong.stdout).contains("verification failed"),
        "reading another pattern back is noticed: {wrong:?}"
    );
    in_image_ok(
        &rootfs,
        &path_env,
        &[
            "qemu-img",
            "create",
            "-f",
            "qcow2",
            "/var/lib/mcs/y.qcow2",
            "1M",
        ],
    );
    let denied = in_image(
        &rootfs,
        &path_env,
        &["qemu-img", "create", "-f", "qcow2", "/z.qcow2", "1M"],
    );
    assert!(
        !denied.status.success()
            && String::from_utf8_lossy(&denied.stderr).contains("Permission denied"),
        "65532 cannot write the image's root folder: {denied:?}"
    );

    eprintln!(
        "{TEST}: image {reference}: {} files ({libraries} shared libraries), {:.1} MiB unpacked, \
         archive {:.1} MiB",
        files.len(),
        bytes as f64 / 1_048_576.0,
        archive_size as f64 / 1_048_576.0
    );
}
