//! The `Dockerfile`, checked for what it must contain, since no image can be built on the
//! project's machines (no container daemon): a multi-stage build whose builder is the Rust
//! toolchain of Cargo.toml's `rust-version` and builds with `--locked`, a slim runtime of the
//! same Debian release with only `qemu-utils` and `ca-certificates`, a numeric non-root user
//! equal to the chart's, exec-form `ENTRYPOINT`/`CMD` running the binary at the path the chart
//! relies on, the ports the chart probes, OCI labels, and a build context (`COPY` sources
//! minus `.dockerignore`) from which Cargo can load the workspace and which holds every file the
//! sources `include_str!`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// One instruction: its keyword (upper case) and its arguments, continuation lines joined.
#[derive(Debug, Clone)]
struct Instruction {
    keyword: String,
    args: String,
}

/// One build stage: its `FROM` image, its name, and its instructions.
#[derive(Debug)]
struct Stage {
    image: String,
    name: Option<String>,
    instructions: Vec<Instruction>,
}

impl Stage {
    fn all(&self, keyword: &str) -> Vec<&Instruction> {
        self.instructions
            .iter()
            .filter(|i| i.keyword == keyword)
            .collect()
    }
}

/// Parses the Dockerfile into stages (comments dropped, `\` continuations joined).
fn stages() -> Vec<Stage> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            logical.push(std::mem::take(&mut current));
        }
    }
    assert!(
        current.is_empty(),
        "the Dockerfile ends inside a continued line"
    );
    let mut stages: Vec<Stage> = Vec::new();
    for line in logical {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let keyword = keyword.to_ascii_uppercase();
        let args = args.split_whitespace().collect::<Vec<_>>().join(" ");
        if keyword == "FROM" {
            let words: Vec<&str> = args.split(' ').collect();
            let name = match words.as_slice() {
                [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => Some(name.to_string()),
                [_] => None,
                other => panic!("unexpected FROM {other:?}"),
            };
            stages.push(Stage {
                image: words[0].to_owned(),
                name,
                instructions: Vec::new(),
            });
        } else {
            stages
                .last_mut()
                .unwrap_or_else(|| panic!("{keyword} before the first FROM"))
                .instructions
                .push(Instruction { keyword, args });
        }
    }
    stages
}

/// The `rust-version` of the workspace's Cargo.toml.
fn rust_version() -> String {
    let text = std::fs::read_to_string(repo().join("Cargo.toml")).expect("Cargo.toml");
    let re = regex::Regex::new(r#"(?m)^rust-version\s*=\s*"([0-9.]+)""#).expect("regex");
    re.captures(&text).expect("Cargo.toml has a rust-version")[1].to_owned()
}

/// The chart's default values.
fn chart_values() -> Value {
    let text = std::fs::read_to_string(repo().join("charts/mcs-operator/values.yaml"))
        .expect("chart values");
    serde_yaml::from_str(&text).expect("values.yaml parses")
}

/// An exec-form (JSON array) instruction's words; panics on shell form.
fn exec_form(instruction: &Instruction) -> Vec<String> {
    let words: Vec<String> = serde_json::from_str(&instruction.args).unwrap_or_else(|_| {
        panic!(
            "{} must be exec form (a JSON array; the image needs no shell): {}",
            instruction.keyword, instruction.args
        )
    });
    words
}

#[test]
fn multi_stage_build_on_the_workspace_toolchain() {
    let stages = stages();
    assert!(
        stages.len() >= 2,
        "multi-stage: a build and a runtime stage"
    );
    for stage in &stages {
        let (_, tag) = stage
            .image
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("FROM {} has no tag: pin the version", stage.image));
        assert!(
            tag != "latest" && tag.chars().any(|c| c.is_ascii_digit() || c.is_alphabetic()),
            "FROM {}: pin a version, not latest",
            stage.image
        );
    }
    let build = &stages[0];
    let runtime = stages.last().expect("runtime stage");
    let (repo_name, tag) = build.image.split_once(':').expect("tag");
    assert_eq!(repo_name, "rust", "the builder is the official Rust image");
    let (toolchain, debian) = tag.split_once('-').expect("rust:<version>-<debian>");
    let wanted = rust_version();
    assert!(
        toolchain == wanted || toolchain.starts_with(&format!("{wanted}.")),
        "the builder's Rust {toolchain} is Cargo.toml's rust-version {wanted}"
    );
    assert_eq!(
        runtime.image,
        format!("debian:{debian}-slim"),
        "the runtime is the slim image of the builder's Debian release (same glibc)"
    );

    let runs: Vec<&Instruction> = build.all("RUN");
    let cargo = runs
        .iter()
        .find(|r| r.args.contains("cargo build"))
        .expect("the build stage runs cargo build");
    for flag in ["--release", "--locked", "--bin mcs-operator"] {
        assert!(
            cargo.args.contains(flag),
            "cargo build {flag}: {}",
            cargo.args
        );
    }
}

#[test]
fn runtime_has_only_qemu_utils_and_certificates() {
    let stages = stages();
    let runtime = stages.last().expect("runtime stage");
    let install = runtime
        .all("RUN")
        .into_iter()
        .find(|r| r.args.contains("apt-get install"))
        .expect("the runtime installs its packages");
    let after = install
        .args
        .split("apt-get install")
        .nth(1)
        .expect("packages");
    let command = after.split("&&").next().expect("the install command");
    assert!(
        command.contains("--no-install-recommends"),
        "no recommended packages: {command}"
    );
    let packages: BTreeSet<&str> = command
        .split_whitespace()
        .filter(|w| !w.starts_with('-'))
        .collect();
    assert_eq!(
        packages,
        BTreeSet::from(["ca-certificates", "qemu-utils"]),
        "qemu-img and qemu-io come from qemu-utils; nothing else"
    );
    assert!(
        install.args.contains("rm -rf /var/lib/apt/lists"),
        "the apt lists are removed"
    );
}

#[test]
fn non_root_exec_form_entrypoint_the_chart_relies_on() {
    let stages = stages();
    let runtime = stages.last().expect("runtime stage");
    let values = chart_values();
    let user = runtime.all("USER");
    let user = user.last().expect("a USER");
    let (uid, gid) = user.args.split_once(':').expect("USER uid:gid");
    let (uid, gid): (u32, u32) = (
        uid.parse().expect("numeric uid (runAsNonRoot needs it)"),
        gid.parse().expect("numeric gid"),
    );
    assert_ne!(uid, 0, "not root");
    assert_eq!(
        Value::from(uid),
        values["podSecurityContext"]["runAsUser"],
        "the image's user is the chart's runAsUser"
    );
    assert_eq!(Value::from(gid), values["podSecurityContext"]["runAsGroup"]);

    let entrypoint = runtime.all("ENTRYPOINT");
    assert_eq!(entrypoint.len(), 1, "one ENTRYPOINT");
    let entrypoint = exec_form(entrypoint[0]);
    assert_eq!(entrypoint, ["/usr/local/bin/mcs-operator"]);
    let cmd = runtime.all("CMD");
    assert_eq!(cmd.len(), 1, "one CMD");
    assert_eq!(exec_form(cmd[0]), ["run"]);
    let copy = runtime
        .all("COPY")
        .into_iter()
        .find(|c| c.args.starts_with("--from="))
        .expect("the runtime copies the binary from the build stage");
    let from = copy.args.split(' ').next().expect("--from");
    let from = from.trim_start_matches("--from=");
    assert_eq!(
        stages[0].name.as_deref(),
        Some(from),
        "copied from the build stage"
    );
    assert!(
        copy.args.ends_with(" /usr/local/bin/mcs-operator"),
        "the binary lands where ENTRYPOINT runs it: {}",
        copy.args
    );

    let exposed: BTreeSet<u64> = runtime
        .all("EXPOSE")
        .iter()
        .flat_map(|e| e.args.split(' '))
        .map(|p| p.trim_end_matches("/tcp").parse().expect("port"))
        .collect();
    for port in [&values["metrics"]["port"], &values["probes"]["port"]] {
        assert!(
            exposed.contains(&port.as_u64().expect("port")),
            "EXPOSE {port}: {exposed:?}"
        );
    }

    let labels = runtime
        .all("LABEL")
        .iter()
        .map(|l| l.args.clone())
        .collect::<Vec<_>>()
        .join(" ");
    for (key, value) in [
        (
            "org.opencontainers.image.version",
            env!("CARGO_PKG_VERSION"),
        ),
        (
            "org.opencontainers.image.licenses",
            env!("CARGO_PKG_LICENSE"),
        ),
        (
            "org.opencontainers.image.source",
            env!("CARGO_PKG_REPOSITORY"),
        ),
        ("org.opencontainers.image.title", env!("CARGO_PKG_NAME")),
    ] {
        assert!(
            labels.contains(&format!("{key}=\"{value}\"")),
            "LABEL {key}=\"{value}\": {labels}"
        );
    }
}

/// The `.dockerignore` patterns (comments and blank lines dropped).
fn dockerignore() -> Vec<String> {
    std::fs::read_to_string(repo().join(".dockerignore"))
        .expect(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Whether `.dockerignore` leaves `path` (relative to the repository) out of the build context.
/// Handles the forms the file uses: `dir/`, `name`, `**/name` and `**/*.ext`.
fn ignored(patterns: &[String], path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    patterns.iter().any(|pattern| {
        let pattern = pattern.trim_end_matches('/');
        if let Some(any) = pattern.strip_prefix("**/") {
            parts.iter().any(|part| match any.strip_prefix('*') {
                Some(suffix) => part.ends_with(suffix),
                None => *part == any,
            })
        } else if let Some(suffix) = pattern.strip_prefix('*') {
            parts.len() == 1 && parts[0].ends_with(suffix)
        } else {
            path == pattern || path.starts_with(&format!("{pattern}/"))
        }
    })
}

/// The files under `dir` (relative paths), skipping `target` folders.
fn files_under(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    let path = root.join(dir);
    if path.is_file() {
        out.push(dir.to_owned());
        return;
    }
    for entry in std::fs::read_dir(&path).expect("readable folder") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        if name == "target" {
            continue;
        }
        files_under(root, &dir.join(name), out);
    }
}

#[test]
fn build_context_holds_what_cargo_needs() {
    let stages = stages();
    let patterns = dockerignore();
    for must in ["target", ".git"] {
        assert!(ignored(&patterns, must), ".dockerignore leaves out {must}/");
    }
    assert!(ignored(&patterns, "crates/mcs-backend/target"));

    // The build stage's COPY sources, minus what .dockerignore leaves out, into a folder.
    let context = tempfile::tempdir().expect("tempdir");
    let mut copied = Vec::new();
    for copy in stages[0].all("COPY") {
        let words: Vec<&str> = copy.args.split(' ').collect();
        assert!(
            !words[0].starts_with("--from"),
            "the build stage copies from the context"
        );
        for source in &words[..words.len() - 1] {
            assert!(
                repo().join(source).exists(),
                "COPY {source}: no such file in the repository"
            );
            assert!(
                !ignored(&patterns, source),
                "COPY {source}, but .dockerignore leaves it out"
            );
            copied.push((*source).to_owned());
            let mut files = Vec::new();
            files_under(repo(), Path::new(source), &mut files);
            for file in files {
                let relative = file.to_str().expect("UTF-8 path");
                if ignored(&patterns, relative) {
                    continue;
                }
                let target = context.path().join(&file);
                std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
                std::fs::copy(repo().join(&file), &target).expect("copy");
            }
        }
    }

    // Cargo loads the workspace (every member, every declared target) from that folder alone.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .args([
            "metadata",
            "--no-deps",
            "--offline",
            "--format-version",
            "1",
        ])
        .current_dir(context.path())
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo cannot load the workspace from the Docker build context ({copied:?}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let bins: Vec<&str> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter(|p| p["name"] == "mcs-operator")
        .flat_map(|p| p["targets"].as_array().expect("targets"))
        .filter(|t| t["kind"][0] == "bin")
        .map(|t| t["name"].as_str().expect("name"))
        .collect();
    assert_eq!(bins, ["mcs-operator"], "the package builds the binary");

    // Every file the sources embed is in the context too.
    let re = regex::Regex::new(r#"include_(?:str|bytes)!\(\s*"([^"]+)"\s*\)"#).expect("regex");
    let mut sources = Vec::new();
    for dir in ["src", "crates"] {
        files_under(repo(), Path::new(dir), &mut sources);
    }
    let mut embedded = 0;
    for source in sources
        .iter()
        .filter(|s| s.extension().is_some_and(|e| e == "rs"))
    {
        let text = std::fs::read_to_string(repo().join(source)).expect("source");
        for capture in re.captures_iter(&text) {
            let target = source.parent().expect("parent").join(&capture[1]);
            let in_context = context.path().join(&target);
            let is_test = source.components().any(|c| c.as_os_str() == "tests");
            if is_test {
                continue;
            }
            assert!(
                in_context.exists(),
                "{} embeds {}, which the Docker build context lacks",
                source.display(),
                target.display()
            );
            embedded += 1;
        }
    }
    assert!(embedded > 0, "the sources embed the examples (src/dev.rs)");
}
