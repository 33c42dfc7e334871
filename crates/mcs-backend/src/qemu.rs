//! The `qemu-img` layer: a bounded, time-limited process runner and typed results of
//! `info`, `check` and `measure`, plus parsing of `convert -p` progress.
//!
//! At most `max_parallel` qemu-img processes run at once (a [`Semaphore`]); each runs under a
//! timeout and is started with `kill_on_drop`, so dropping the future (cancel, timeout, abort of
//! the operation's task) kills the process.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::sync::Semaphore;

use crate::error::BackendError;

/// What `qemu-img info --output=json` reports about one image (the fields this crate uses).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ImageInfo {
    /// The image format, e.g. `qcow2` or `raw`.
    pub format: String,
    /// The guest-visible size in bytes.
    pub virtual_size: u64,
    /// The bytes the file occupies on disk.
    #[serde(default)]
    pub actual_size: Option<u64>,
    /// The internal snapshots (qcow2 only).
    #[serde(default)]
    pub snapshots: Vec<SnapshotInfo>,
    /// The backing file as written in the image header.
    #[serde(default)]
    pub backing_filename: Option<String>,
    /// The backing file resolved to a full path.
    #[serde(default)]
    pub full_backing_filename: Option<String>,
    /// The format of the backing file as written in the header.
    #[serde(default)]
    pub backing_filename_format: Option<String>,
}

/// One internal snapshot of a qcow2 image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SnapshotInfo {
    /// The snapshot id (a number as a string).
    pub id: String,
    /// The snapshot name.
    pub name: String,
    /// When it was taken (seconds since the epoch).
    #[serde(default)]
    pub date_sec: i64,
}

/// What `qemu-img check --output=json` reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CheckReport {
    /// Corrupted metadata entries (the image must not be used).
    #[serde(default)]
    pub corruptions: u64,
    /// Leaked clusters (harmless: wasted space).
    #[serde(default)]
    pub leaks: u64,
    /// Errors that kept the check from completing.
    #[serde(default)]
    pub check_errors: u64,
    /// The first `ERROR` lines qemu-img printed (at most three), e.g. a reference "exceeding
    /// the end of the file" when the image was truncated.
    #[serde(skip)]
    pub errors: Vec<String>,
}

/// What `qemu-img measure --output=json` reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MeasureReport {
    /// Bytes the converted image needs.
    pub required: u64,
    /// Bytes a fully allocated image would need.
    pub fully_allocated: u64,
}

/// The captured outcome of one qemu-img process.
#[derive(Clone, Debug)]
pub struct RunOutput {
    /// The exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error, trimmed.
    pub stderr: String,
}

impl RunOutput {
    /// Whether the process exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Parses the last progress figure out of `qemu-img convert -p` output.
///
/// qemu-img prints `    (12.34/100%)` and a carriage return for every update; `chunk` may hold
/// any number of them (or a part of one). Returns the last complete figure, clamped to 0..=100.
pub fn parse_progress(chunk: &str) -> Option<f64> {
    chunk
        .split(['\r', '\n'])
        .filter_map(|seg| {
            let inner = seg.trim().strip_prefix('(')?.strip_suffix("/100%)")?;
            let v: f64 = inner.trim().parse().ok()?;
            v.is_finite().then_some(v.clamp(0.0, 100.0))
        })
        .next_back()
}

/// The kind of failure qemu-img's standard error describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The image is locked by another process.
    Locked,
    /// The target ran out of space.
    NoSpace,
    /// The named snapshot does not exist.
    NoSnapshot,
    /// The file does not exist.
    NotFound,
    /// Anything else.
    Other,
}

/// Classifies qemu-img's standard error.
pub fn classify(stderr: &str) -> Failure {
    let s = stderr.to_ascii_lowercase();
    if s.contains("lock") && (s.contains("failed to get") || s.contains("another process")) {
        Failure::Locked
    } else if s.contains("no space left on device") || s.contains("disk quota exceeded") {
        Failure::NoSpace
    } else if s.contains("can't find snapshot") || s.contains("failed to load snapshot") {
        Failure::NoSnapshot
    } else if s.contains("no such file or directory") {
        Failure::NotFound
    } else {
        Failure::Other
    }
}

/// Runs qemu-img with a bound on concurrent processes and a per-process timeout.
#[derive(Clone, Debug)]
pub struct QemuImg {
    program: PathBuf,
    limiter: Arc<Semaphore>,
    timeout: Duration,
    copy_rate_limit: Option<u64>,
}

impl QemuImg {
    /// A runner for `program` (usually `qemu-img`), at most `max_parallel` at once (at least 1),
    /// each killed after `timeout`.
    pub fn new(program: impl Into<PathBuf>, max_parallel: usize, timeout: Duration) -> Self {
        Self {
            program: program.into(),
            limiter: Arc::new(Semaphore::new(max_parallel.max(1))),
            timeout,
            copy_rate_limit: None,
        }
    }

    /// Limits every [`QemuImg::convert`] to `bytes_per_second` (`qemu-img convert -r`).
    pub fn with_copy_rate_limit(self, bytes_per_second: Option<u64>) -> Self {
        Self {
            copy_rate_limit: bytes_per_second.filter(|rate| *rate > 0),
            ..self
        }
    }

    /// Runs `qemu-img <args>`; `path` names the file worked on (for messages). When `progress`
    /// is given, standard output is parsed as `-p` progress and each figure is passed to it.
    pub async fn run(
        &self,
        command: &str,
        path: &Path,
        args: Vec<OsString>,
        progress: Option<&(dyn Fn(f64) + Send + Sync)>,
    ) -> Result<RunOutput, BackendError> {
        let _permit = self
            .limiter
            .acquire()
            .await
            .map_err(|_| BackendError::Canceled)?;
        tracing::debug!(command, path = %path.display(), ?args, "qemu-img");
        let mut cmd = Command::new(&self.program);
        cmd.arg(command)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| BackendError::QemuImg {
            command: command.to_string(),
            path: path.to_path_buf(),
            detail: format!("cannot start {}: {e}", self.program.display()),
        })?;
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let work = async {
            let read_err = async {
                let mut buf = Vec::new();
                if let Some(err) = stderr.as_mut() {
                    let _ = err.read_to_end(&mut buf).await;
                }
                buf
            };
            let read_out = async {
                let mut all = Vec::new();
                let mut buf = [0u8; 4096];
                if let Some(out) = stdout.as_mut() {
                    loop {
                        match out.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if let Some(cb) = progress {
                                    let text = String::from_utf8_lossy(&buf[..n]);
                                    if let Some(p) = parse_progress(&text) {
                                        cb(p);
                                    }
                                }
                                all.extend_from_slice(&buf[..n]);
                            }
                        }
                    }
                }
                all
            };
            let (out, err) = tokio::join!(read_out, read_err);
            let status = child.wait().await;
            (out, err, status)
        };
        let (out, err, status) = tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| BackendError::Timeout {
                command: command.to_string(),
                seconds: self.timeout.as_secs(),
                path: path.to_path_buf(),
            })?;
        let status = status.map_err(|e| BackendError::io(path, &e))?;
        Ok(RunOutput {
            code: status.code(),
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).trim().to_string(),
        })
    }

    fn failed(command: &str, path: &Path, out: &RunOutput) -> BackendError {
        BackendError::QemuImg {
            command: command.to_string(),
            path: path.to_path_buf(),
            detail: if out.stderr.is_empty() {
                format!("exit code {:?}", out.code)
            } else {
                out.stderr.clone()
            },
        }
    }

    /// `qemu-img info --output=json`; `force_share` (`-U`) reads an image another process holds.
    /// On failure returns the raw output so that the caller can classify it.
    pub async fn info(&self, path: &Path, force_share: bool) -> Result<ImageInfo, QemuFailure> {
        let mut args: Vec<OsString> = vec!["--output=json".into()];
        if force_share {
            args.push("-U".into());
        }
        args.push(path.into());
        let out = self.run("info", path, args, None).await?;
        if !out.success() {
            return Err(QemuFailure::Exit(out));
        }
        serde_json::from_str(&out.stdout).map_err(|e| {
            QemuFailure::Backend(BackendError::QemuImg {
                command: "info".into(),
                path: path.to_path_buf(),
                detail: format!("unreadable JSON: {e}"),
            })
        })
    }

    /// `qemu-img check --output=json` (taking the image lock, so a locked image fails).
    ///
    /// Exit codes 2 (corruptions) and 3 (leaks) still yield a report.
    pub async fn check(&self, path: &Path) -> Result<CheckReport, QemuFailure> {
        let args: Vec<OsString> = vec!["--output=json".into(), path.into()];
        let out = self.run("check", path, args, None).await?;
        match out.code {
            Some(0) | Some(2) | Some(3) => serde_json::from_str(&out.stdout)
                .map(|report: CheckReport| CheckReport {
                    errors: out
                        .stderr
                        .lines()
                        .filter(|l| l.starts_with("ERROR"))
                        .take(3)
                        .map(str::to_owned)
                        .collect(),
                    ..report
                })
                .map_err(|e| {
                    QemuFailure::Backend(BackendError::QemuImg {
                        command: "check".into(),
                        path: path.to_path_buf(),
                        detail: format!("unreadable JSON: {e}; {}", out.stderr),
                    })
                }),
            _ => Err(QemuFailure::Exit(out)),
        }
    }

    /// `qemu-img measure` of `snapshot` of a qcow2 image, as a qcow2 target.
    pub async fn measure(&self, path: &Path, snapshot: &str) -> Result<MeasureReport, QemuFailure> {
        let args: Vec<OsString> = vec![
            "--output=json".into(),
            "-f".into(),
            "qcow2".into(),
            "-O".into(),
            "qcow2".into(),
            "-l".into(),
            snapshot_opt(snapshot),
            path.into(),
        ];
        let out = self.run("measure", path, args, None).await?;
        if !out.success() {
            return Err(QemuFailure::Exit(out));
        }
        serde_json::from_str(&out.stdout).map_err(|e| {
            QemuFailure::Backend(BackendError::QemuImg {
                command: "measure".into(),
                path: path.to_path_buf(),
                detail: format!("unreadable JSON: {e}"),
            })
        })
    }

    /// `qemu-img convert -p` of a qcow2 image (or of one of its snapshots) into a standalone
    /// qcow2 file. `direct` writes with `-t none` (O_DIRECT); otherwise the caller must fsync.
    pub async fn convert(
        &self,
        src: &Path,
        snapshot: Option<&str>,
        dst: &Path,
        direct: bool,
        progress: &(dyn Fn(f64) + Send + Sync),
    ) -> Result<(), QemuFailure> {
        let mut args: Vec<OsString> = vec![
            "-p".into(),
            "-t".into(),
            if direct { "none" } else { "writeback" }.into(),
            "-f".into(),
            "qcow2".into(),
            "-O".into(),
            "qcow2".into(),
        ];
        if let Some(rate) = self.copy_rate_limit {
            args.push("-r".into());
            args.push(rate.to_string().into());
        }
        if let Some(s) = snapshot {
            args.push("-l".into());
            args.push(snapshot_opt(s));
        }
        args.push(src.into());
        args.push(dst.into());
        let out = self.run("convert", dst, args, Some(progress)).await?;
        if out.success() {
            Ok(())
        } else {
            Err(QemuFailure::Exit(out))
        }
    }

    /// `qemu-img compare -f qcow2 -F qcow2`: `Ok(true)` when the guest-visible contents match.
    pub async fn compare(&self, a: &Path, b: &Path) -> Result<bool, BackendError> {
        let args: Vec<OsString> = vec![
            "-f".into(),
            "qcow2".into(),
            "-F".into(),
            "qcow2".into(),
            a.into(),
            b.into(),
        ];
        let out = self.run("compare", b, args, None).await?;
        match out.code {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(Self::failed("compare", b, &out)),
        }
    }

    /// `qemu-img create -f qcow2 -b <backing> -F qcow2 <dst>`: a linked clone of `backing`
    /// (which must be an absolute path).
    pub async fn create_overlay(&self, backing: &Path, dst: &Path) -> Result<(), BackendError> {
        let args: Vec<OsString> = vec![
            "-q".into(),
            "-f".into(),
            "qcow2".into(),
            "-b".into(),
            backing.into(),
            "-F".into(),
            "qcow2".into(),
            dst.into(),
        ];
        let out = self.run("create", dst, args, None).await?;
        if out.success() {
            Ok(())
        } else {
            Err(Self::failed("create", dst, &out))
        }
    }

    /// `qemu-img create -f qcow2 <dst> <size>`: an empty image of `size_bytes`.
    pub async fn create_empty(&self, dst: &Path, size_bytes: u64) -> Result<(), BackendError> {
        let args: Vec<OsString> = vec![
            "-q".into(),
            "-f".into(),
            "qcow2".into(),
            dst.into(),
            size_bytes.to_string().into(),
        ];
        let out = self.run("create", dst, args, None).await?;
        if out.success() {
            Ok(())
        } else {
            Err(Self::failed("create", dst, &out))
        }
    }
}

/// A qemu-img failure before classification: either the runner failed (timeout, spawn) or
/// the process exited with an error.
#[derive(Debug)]
pub enum QemuFailure {
    /// The runner failed; already a backend error.
    Backend(BackendError),
    /// The process ran and failed; its output.
    Exit(RunOutput),
}

impl From<BackendError> for QemuFailure {
    fn from(e: BackendError) -> Self {
        Self::Backend(e)
    }
}

fn snapshot_opt(name: &str) -> OsString {
    format!("snapshot.name={}", name.replace(',', ",,")).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn progress_with_carriage_returns() {
        let out = "    (0.00/100%)\r    (12.34/100%)\r    (56.";
        assert_eq!(parse_progress(out), Some(12.34));
        assert_eq!(parse_progress("    (100.00/100%)\r\n"), Some(100.0));
        assert_eq!(parse_progress("garbage"), None);
        assert_eq!(parse_progress(""), None);
    }

    #[test]
    fn stderr_classification() {
        assert_eq!(
            classify(
                "qemu-img: Could not open 'm.qcow2': Failed to get shared \"write\" lock\nIs another process using the image [m.qcow2]?"
            ),
            Failure::Locked
        );
        assert_eq!(
            classify("qemu-img: error while writing at byte 0: No space left on device"),
            Failure::NoSpace
        );
        assert_eq!(
            classify("qemu-img: Failed to load snapshot: Can't find snapshot"),
            Failure::NoSnapshot
        );
        assert_eq!(
            classify("qemu-img: Could not open 'x': No such file or directory"),
            Failure::NotFound
        );
        assert_eq!(classify("qemu-img: something odd"), Failure::Other);
    }

    #[test]
    fn info_json_parses() {
        let json = r#"{"snapshots":[{"icount":0,"vm-clock-nsec":0,"name":"base","date-sec":1,
            "date-nsec":2,"vm-clock-sec":0,"id":"1","vm-state-size":0}],
            "virtual-size":16777216,"filename":"m.qcow2","cluster-size":65536,"format":"qcow2",
            "actual-size":2441216,"dirty-flag":false}"#;
        let info: ImageInfo = serde_json::from_str(json).expect("parses");
        assert_eq!(info.format, "qcow2");
        assert_eq!(info.virtual_size, 16 << 20);
        assert_eq!(info.snapshots[0].name, "base");
        let m: MeasureReport =
            serde_json::from_str(r#"{"bitmaps":0,"required":1376256,"fully-allocated":17104896}"#)
                .expect("parses");
        assert_eq!(m.required, 1376256);
        let c: CheckReport = serde_json::from_str(
            r#"{"image-end-offset":1,"total-clusters":256,"corruptions":27,"check-errors":0}"#,
        )
        .expect("parses");
        assert_eq!(c.corruptions, 27);
    }

    proptest! {
        #[test]
        fn progress_roundtrip(vals in proptest::collection::vec(0.0f64..=100.0, 1..20)) {
            let text: String = vals.iter().map(|v| format!("    ({v:.2}/100%)\r")).collect();
            let last = vals.last().copied().unwrap_or_default();
            let got = parse_progress(&text).unwrap_or(-1.0);
            prop_assert!((got - last).abs() < 0.006);
        }
    }
}
