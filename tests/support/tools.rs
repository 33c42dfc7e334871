//! The external tools the suites drive, and when a missing one skips a test: the repository's
//! folders, the real helm of `scripts/k8s-tools`, and running a program for its output.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The repository's root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Whether this runs in CI, where missing tools are failures rather than skips.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Whether `path ARGS...` runs successfully.
pub fn works(path: &Path, args: &[&str]) -> bool {
    Command::new(path)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A missing tool: a failure under CI, else a plain skip note.
pub fn missing(test: &str, what: &str) {
    assert!(
        !in_ci(),
        "{test}: CI is set but {what} is missing: run scripts/k8s-tools"
    );
    eprintln!("{test}: SKIPPED: {what} is missing (run scripts/k8s-tools)");
}

/// What `command` printed on stdout; panics with its whole output when it fails.
pub fn output(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?} does not run: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The real helm, with its config, cache and data folders in a temporary folder.
pub struct Helm {
    /// The helm binary.
    pub path: PathBuf,
    home: tempfile::TempDir,
}

impl Helm {
    /// helm from `HELM` or `target/k8s-tools/helm`; `None` (after saying so) when missing.
    pub fn find(test: &str) -> Option<Helm> {
        let candidates = [
            std::env::var_os("HELM").map(PathBuf::from),
            Some(repo().join("target/k8s-tools/helm")),
        ];
        let Some(path) = candidates
            .into_iter()
            .flatten()
            .find(|p| works(p, &["version", "--short"]))
        else {
            missing(test, "helm (HELM or target/k8s-tools/helm)");
            return None;
        };
        let home = tempfile::tempdir().expect("helm home");
        Some(Helm { path, home })
    }

    /// A `helm` command with its folders set.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.path);
        for (var, dir) in [
            ("HELM_CONFIG_HOME", "config"),
            ("HELM_CACHE_HOME", "cache"),
            ("HELM_DATA_HOME", "data"),
        ] {
            command.env(var, self.home.path().join(dir));
        }
        command
    }

    /// `helm ARGS`; what it printed on stdout.
    pub fn run(&self, args: &[&str]) -> String {
        output(self.command().args(args))
    }
}
