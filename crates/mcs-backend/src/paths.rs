//! Safe paths under storage roots: name validation, confinement (symlinks included), atomic
//! writes and clean-up of partial files.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::BackendError;

/// The marker in the name of a file being written: `<final>.partial-<uuid>`.
pub const PARTIAL_MARKER: &str = ".partial-";

/// Checks that `name` is one safe path component: not empty, at most 200 bytes, no `/`, `\`,
/// NUL or other control characters, not `.` or `..`, not starting with `.`, and not containing
/// the partial-file marker.
pub fn validate_name(name: &str) -> Result<(), BackendError> {
    let bad = |detail: &str| {
        Err(BackendError::InvalidName {
            name: name.to_string(),
            detail: detail.to_string(),
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 200 {
        return bad("longer than 200 bytes");
    }
    if name.contains(['/', '\\']) {
        return bad("contains a path separator");
    }
    if name.chars().any(char::is_control) {
        return bad("contains a control character or NUL");
    }
    if name.starts_with('.') {
        return bad("starts with '.' (includes '.' and '..')");
    }
    if name.contains(PARTIAL_MARKER) {
        return bad("contains the partial-file marker");
    }
    Ok(())
}

/// Canonicalizes a storage root; a missing directory is [`BackendError::StorageNotFound`].
pub fn canonical_root(storage: &str, root: &Path) -> Result<PathBuf, BackendError> {
    let not_found = || BackendError::StorageNotFound {
        storage: storage.to_string(),
        path: root.to_path_buf(),
    };
    let canon = fs::canonicalize(root).map_err(|_| not_found())?;
    if canon.is_dir() {
        Ok(canon)
    } else {
        Err(not_found())
    }
}

/// Canonicalizes `path` (which must exist) and checks it lies under one of `roots` (which must be
/// canonical). Returns the canonical path.
pub fn confine_existing(roots: &[PathBuf], path: &Path) -> Result<PathBuf, BackendError> {
    let canon = fs::canonicalize(path).map_err(|e| BackendError::io(path, &e))?;
    if roots.iter().any(|r| canon.starts_with(r)) {
        Ok(canon)
    } else {
        Err(BackendError::PathOutsideStorage {
            path: path.to_path_buf(),
        })
    }
}

/// Confinement at the moment of use: the canonical directory `dir` (resolved earlier, e.g.
/// when a task started) must still resolve to itself and lie under one of `roots`, so that a
/// level replaced by a symlink since then (`prepared` -> `/etc`) is refused before anything is
/// written through it; and `file`, a name in `dir`, must not have become a symlink that leaves
/// the roots. Call it right before each write (a qemu-img run, a rename).
pub fn recheck_confined(
    roots: &[PathBuf],
    dir: &Path,
    file: Option<&Path>,
) -> Result<(), BackendError> {
    let outside = |path: &Path| BackendError::PathOutsideStorage {
        path: path.to_path_buf(),
    };
    let now = fs::canonicalize(dir).map_err(|e| BackendError::io(dir, &e))?;
    if now != dir || !roots.iter().any(|r| now.starts_with(r)) {
        return Err(outside(dir));
    }
    if let Some(file) = file
        && fs::symlink_metadata(file).is_ok_and(|m| m.file_type().is_symlink())
        && !fs::canonicalize(file).is_ok_and(|c| roots.iter().any(|r| c.starts_with(r)))
    {
        return Err(outside(file));
    }
    Ok(())
}

/// Makes sure the directory `root/a/b/...` exists, creating one level at a time and refusing
/// any level that resolves (through a symlink) outside `root`. `root` must be canonical.
/// Returns the canonical directory.
pub fn ensure_dir(root: &Path, components: &[&str]) -> Result<PathBuf, BackendError> {
    let mut current = root.to_path_buf();
    for c in components {
        validate_name(c)?;
        let next = current.join(c);
        match fs::symlink_metadata(&next) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match fs::create_dir(&next) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(BackendError::io(&next, &e)),
            },
            Err(e) => return Err(BackendError::io(&next, &e)),
        }
        current = confine_existing(std::slice::from_ref(&root.to_path_buf()), &next)?;
        if !current.is_dir() {
            return Err(BackendError::Io {
                path: next,
                detail: "not a directory".into(),
            });
        }
    }
    Ok(current)
}

/// Like [`ensure_dir`] but creates nothing: `Ok(None)` when a level is missing.
pub fn existing_dir(root: &Path, components: &[&str]) -> Result<Option<PathBuf>, BackendError> {
    let mut p = root.to_path_buf();
    for c in components {
        validate_name(c)?;
        p.push(c);
    }
    if fs::symlink_metadata(&p).is_err() {
        return Ok(None);
    }
    let canon = confine_existing(std::slice::from_ref(&root.to_path_buf()), &p)?;
    Ok(canon.is_dir().then_some(canon))
}

/// The path of file `name` in the canonical directory `dir`. If it exists as a symlink, the
/// link must resolve under `root`, else [`BackendError::PathOutsideStorage`].
pub fn file_in(root: &Path, dir: &Path, name: &str) -> Result<PathBuf, BackendError> {
    let p = dir.join(name);
    if let Ok(m) = fs::symlink_metadata(&p)
        && m.file_type().is_symlink()
    {
        let inside = fs::canonicalize(&p).is_ok_and(|c| c.starts_with(root));
        if !inside {
            return Err(BackendError::PathOutsideStorage { path: p });
        }
    }
    Ok(p)
}

/// A fresh partial name for `final_path`: `<final>.partial-<uuid>` in the same directory.
pub fn partial_for(final_path: &Path) -> PathBuf {
    let mut s = final_path.as_os_str().to_owned();
    s.push(PARTIAL_MARKER);
    s.push(uuid::Uuid::new_v4().simple().to_string());
    PathBuf::from(s)
}

/// Removes every `<final file name>.partial-*` beside `final_path` (left by a crash); returns
/// how many were removed.
pub fn remove_stale_partials(final_path: &Path) -> Result<usize, BackendError> {
    let (Some(dir), Some(name)) = (final_path.parent(), final_path.file_name()) else {
        return Ok(0);
    };
    let mut prefix = name.to_os_string();
    prefix.push(PARTIAL_MARKER);
    let prefix = prefix.to_string_lossy().into_owned();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(BackendError::io(dir, &e)),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let p = entry.path();
            let res = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            match res {
                Ok(()) => {
                    tracing::info!(path = %p.display(), "removed stale partial file");
                    removed += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(BackendError::io(&p, &e)),
            }
        }
    }
    Ok(removed)
}

/// Removes a partial file (or directory) when dropped, unless [`PartialGuard::keep`] was called.
///
/// Dropping happens on error, on cancel (the operation's future is dropped) and on timeout, so a
/// failed operation leaves nothing half-written.
#[derive(Debug)]
pub struct PartialGuard {
    path: PathBuf,
    armed: bool,
}

impl PartialGuard {
    /// Guards `path`.
    pub fn new(path: PathBuf) -> Self {
        Self { path, armed: true }
    }

    /// The guarded path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Disarms the guard (the file was renamed into place).
    pub fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for PartialGuard {
    fn drop(&mut self) {
        if self.armed {
            let res = if self.path.is_dir() {
                fs::remove_dir_all(&self.path)
            } else {
                fs::remove_file(&self.path)
            };
            match res {
                Ok(()) => tracing::debug!(path = %self.path.display(), "removed partial file"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot remove partial file")
                }
            }
        }
    }
}

/// fsyncs a file.
pub fn fsync_file(path: &Path) -> Result<(), BackendError> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| BackendError::io(path, &e))
}

/// fsyncs the directory holding `path` (makes a rename durable).
pub fn fsync_parent(path: &Path) -> Result<(), BackendError> {
    match path.parent() {
        Some(dir) => fsync_file(dir),
        None => Ok(()),
    }
}

/// Moves a finished partial file into place: fsync the file, rename, fsync the directory.
pub fn commit(partial: PartialGuard, final_path: &Path) -> Result<(), BackendError> {
    fsync_file(partial.path())?;
    fs::rename(partial.path(), final_path).map_err(|e| BackendError::io(final_path, &e))?;
    partial.keep();
    fsync_parent(final_path)
}

/// Writes `bytes` to `final_path` atomically: a partial file in the same directory, fsync,
/// rename, fsync of the directory. Stale partials of the same target are removed first.
pub fn write_atomic(final_path: &Path, bytes: &[u8]) -> Result<(), BackendError> {
    remove_stale_partials(final_path)?;
    let guard = PartialGuard::new(partial_for(final_path));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(guard.path())
        .map_err(|e| BackendError::io(guard.path(), &e))?;
    f.write_all(bytes)
        .map_err(|e| BackendError::io(guard.path(), &e))?;
    drop(f);
    commit(guard, final_path)
}

/// Free bytes for an unprivileged writer in the file system holding `path`, and the file
/// system's device id (to add up needs of targets that share one).
pub fn free_space(path: &Path) -> Result<(u64, u64), BackendError> {
    let st = rustix::fs::statvfs(path).map_err(|e| BackendError::Io {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let dev = rustix::fs::stat(path)
        .map_err(|e| BackendError::Io {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?
        .st_dev;
    Ok((st.f_bavail.saturating_mul(st.f_frsize), dev))
}

/// Whether files in `dir` can be opened with O_DIRECT (tmpfs, for one, refuses it); decides
/// between `qemu-img -t none` and a write-back copy followed by fsync.
pub fn supports_direct_io(dir: &Path) -> bool {
    use rustix::fs::{Mode, OFlags};
    let probe = dir.join(format!(".direct-probe-{}", uuid::Uuid::new_v4().simple()));
    let res = rustix::fs::open(
        &probe,
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::DIRECT,
        Mode::from_raw_mode(0o600),
    );
    let _ = fs::remove_file(&probe);
    res.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names() {
        for ok in ["win11", "VDI-001", "a.b", "img_1"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a\\b",
            "a\0b",
            ".hidden",
            "x.partial-1",
            "a\nb",
        ] {
            assert_eq!(
                validate_name(bad).map_err(|e| e.reason()),
                Err("InvalidName"),
                "{bad:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn valid_names_stay_one_component(name in "\\PC{1,40}") {
            if validate_name(&name).is_ok() {
                let p = Path::new("/root").join(&name);
                prop_assert_eq!(p.parent(), Some(Path::new("/root")));
                prop_assert_eq!(p.components().count(), 3);
            }
        }
    }

    #[test]
    fn recheck_refuses_a_level_swapped_for_a_symlink_after_it_was_resolved() {
        let base = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(base.path()).unwrap().join("root");
        let outside = fs::canonicalize(base.path()).unwrap().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::create_dir_all(&root).unwrap();
        let roots = vec![root.clone()];
        let dir = ensure_dir(&root, &["prepared"]).unwrap();
        assert!(recheck_confined(&roots, &dir, Some(&dir.join("x.qcow2"))).is_ok());
        // A file planted as a link out of the roots.
        std::os::unix::fs::symlink(outside.join("f"), dir.join("x.qcow2")).unwrap();
        assert!(matches!(
            recheck_confined(&roots, &dir, Some(&dir.join("x.qcow2"))),
            Err(BackendError::PathOutsideStorage { .. })
        ));
        // The directory itself swapped for a link out of the roots.
        fs::remove_file(dir.join("x.qcow2")).unwrap();
        fs::remove_dir(&dir).unwrap();
        std::os::unix::fs::symlink(&outside, &dir).unwrap();
        assert!(matches!(
            recheck_confined(&roots, &dir, None),
            Err(BackendError::PathOutsideStorage { .. })
        ));
    }

    #[test]
    fn ensure_dir_refuses_symlink_escape() {
        let root = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let root_c = fs::canonicalize(root.path()).expect("canon");
        std::os::unix::fs::symlink(outside.path(), root_c.join("machines")).expect("symlink");
        let err = ensure_dir(&root_c, &["machines", "s1"]).expect_err("escape refused");
        assert_eq!(err.reason(), "PathOutsideStorage");
        assert!(
            !outside.path().join("s1").exists(),
            "nothing created outside"
        );
        let ok = ensure_dir(&root_c, &["prepared"]).expect("inside");
        assert_eq!(ok, root_c.join("prepared"));
    }

    #[test]
    fn atomic_write_and_stale_partials() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("machine.json");
        fs::write(partial_for(&target), b"half").expect("write");
        write_atomic(&target, b"{}").expect("atomic");
        assert_eq!(fs::read(&target).expect("read"), b"{}");
        let left: Vec<_> = fs::read_dir(dir.path())
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }
}
