//! Disk files made without a `qemu-img` process per machine.
//!
//! Creating a machine used to start `qemu-img` twice (its overlay and its identity disk), about
//! 10 ms of process start and work each. Here:
//!
//! - [`QcowTemplates`]: a linked clone of one prepared image (or an empty disk of one size) is the
//!   same bytes every time, so `qemu-img` makes the first and later ones are copies of its
//!   bytes. A template is keyed by the backing file's device, inode, size and modification time,
//!   so a replaced backing file gets a new one.
//! - [`fat_floppy`]: the identity disk is a raw 1.44 MB FAT12 floppy image built in memory with
//!   the `fatfs` crate, with fixed timestamps (1980-01-01), so the same identity gives the same
//!   bytes.
//!
//! Both are written with [`write_sparse`], which skips the zero blocks.

use std::collections::HashMap;
use std::fs;
use std::io::{Cursor, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::BackendError;

/// Size of a 3.5" high-density floppy: 2,880 sectors of 512 bytes.
pub const FLOPPY_BYTES: u64 = 2880 * 512;
/// Templates larger than this are not kept (the copy would cost more than the process).
const MAX_TEMPLATE_BYTES: usize = 8 << 20;
/// Templates kept at most; the cache is emptied when full.
const MAX_TEMPLATES: usize = 256;
/// The block size [`write_sparse`] tests for zeros.
const BLOCK: usize = 4096;

/// What a qcow2 template is a template of.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum TemplateKey {
    /// A linked clone of `backing` (qcow2), as it is now.
    Overlay {
        /// The backing file (absolute).
        backing: PathBuf,
        /// Device, inode, size and modification time (ns) of the backing file.
        stamp: (u64, u64, u64, i128),
    },
    /// An empty qcow2 disk of this many bytes.
    Empty {
        /// Virtual size in bytes.
        size_bytes: u64,
    },
}

impl TemplateKey {
    /// The key of a linked clone of `backing`.
    ///
    /// # Errors
    ///
    /// The backing file cannot be read (`stat`).
    pub fn overlay(backing: &Path) -> Result<Self, BackendError> {
        let m = fs::metadata(backing).map_err(|e| BackendError::io(backing, &e))?;
        let mtime = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
        Ok(Self::Overlay {
            backing: backing.to_path_buf(),
            stamp: (m.dev(), m.ino(), m.len(), mtime),
        })
    }
}

/// The bytes of qcow2 files that `qemu-img` made, by what they are a template of.
#[derive(Debug, Default)]
pub struct QcowTemplates {
    entries: Mutex<HashMap<TemplateKey, Arc<Vec<u8>>>>,
}

impl QcowTemplates {
    /// The template of `key`, if one is kept.
    pub fn get(&self, key: &TemplateKey) -> Option<Arc<Vec<u8>>> {
        self.lock().get(key).cloned()
    }

    /// Keeps the file `made` (just written by `qemu-img`) as the template of `key`.
    ///
    /// # Errors
    ///
    /// `made` cannot be read.
    pub fn learn(&self, key: TemplateKey, made: &Path) -> Result<(), BackendError> {
        let bytes = fs::read(made).map_err(|e| BackendError::io(made, &e))?;
        if bytes.len() <= MAX_TEMPLATE_BYTES {
            let mut entries = self.lock();
            if entries.len() >= MAX_TEMPLATES {
                entries.clear();
            }
            entries.insert(key, Arc::new(bytes));
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TemplateKey, Arc<Vec<u8>>>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Writes `bytes` to a new file at `path`, leaving the all-zero 4 KiB blocks as holes.
///
/// # Errors
///
/// The file cannot be created or written (a full disk is `InsufficientResources`).
pub fn write_sparse(path: &Path, bytes: &[u8]) -> Result<(), BackendError> {
    let io = |e: std::io::Error| BackendError::io(path, &e);
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io)?;
    let mut offset = 0;
    for block in bytes.chunks(BLOCK) {
        if block.iter().any(|&b| b != 0) {
            file.write_all_at(block, offset as u64).map_err(io)?;
        }
        offset += block.len();
    }
    file.set_len(bytes.len() as u64).map_err(io)
}

/// A raw 1.44 MB FAT12 floppy image labelled `label` holding `files` (name, content) in its
/// root directory. Names are short (8.3) or long; the same input gives the same bytes.
///
/// # Errors
///
/// A file does not fit, or a name is not a valid FAT name.
pub fn fat_floppy(label: &str, files: &[(&str, &[u8])]) -> std::io::Result<Vec<u8>> {
    let mut volume_label = [b' '; 11];
    for (slot, byte) in volume_label.iter_mut().zip(label.bytes()) {
        *slot = byte.to_ascii_uppercase();
    }
    let mut disk = Cursor::new(vec![0u8; FLOPPY_BYTES as usize]);
    fatfs::format_volume(
        &mut disk,
        fatfs::FormatVolumeOptions::new()
            .fat_type(fatfs::FatType::Fat12)
            .total_sectors(2880)
            .bytes_per_cluster(512)
            .max_root_dir_entries(224)
            .media(0xf0)
            .sectors_per_track(18)
            .heads(2)
            .volume_label(volume_label),
    )?;
    disk.set_position(0);
    {
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())?;
        for (name, content) in files {
            let mut file = fs.root_dir().create_file(name)?;
            file.truncate()?;
            file.write_all(content)?;
            file.flush()?;
        }
        fs.unmount()?;
    }
    Ok(disk.into_inner())
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn read_back(image: Vec<u8>, name: &str) -> (String, Vec<u8>) {
        let fs = fatfs::FileSystem::new(Cursor::new(image), fatfs::FsOptions::new()).expect("fs");
        let label = fs.volume_label();
        let mut content = Vec::new();
        fs.root_dir()
            .open_file(name)
            .expect("file")
            .read_to_end(&mut content)
            .expect("read");
        (label, content)
    }

    #[test]
    fn a_floppy_holds_its_files_and_label() {
        let json = br#"{"hostname": "VDI-001"}"#;
        let image = fat_floppy(
            "mcsidentity",
            &[("identity.json", json), ("hostname", b"VDI-001\n")],
        )
        .expect("image");
        assert_eq!(image.len() as u64, FLOPPY_BYTES);
        let (label, content) = read_back(image.clone(), "identity.json");
        assert_eq!(label.trim_end(), "MCSIDENTITY");
        assert_eq!(content, json);
        assert_eq!(read_back(image, "hostname").1, b"VDI-001\n");
    }

    #[test]
    fn the_same_files_give_the_same_bytes() {
        let files: &[(&str, &[u8])] = &[("identity.json", b"{}"), ("hostname", b"a\n")];
        let a = fat_floppy("X", files).expect("a");
        let b = fat_floppy("X", files).expect("b");
        assert_eq!(a, b);
        let c = fat_floppy("X", &[("identity.json", b"{}"), ("hostname", b"b\n")]).expect("c");
        assert_ne!(a, c);
    }

    #[test]
    fn a_file_larger_than_the_floppy_is_an_error() {
        let big = vec![1u8; FLOPPY_BYTES as usize];
        assert!(fat_floppy("X", &[("big", &big)]).is_err());
    }

    #[test]
    fn sparse_writes_keep_content_and_length() {
        let dir = std::env::temp_dir().join(format!("mcs-sparse-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("f");
        let _ = fs::remove_file(&path);
        let mut bytes = vec![0u8; 3 * BLOCK + 100];
        bytes[5] = 1;
        bytes[3 * BLOCK + 99] = 2;
        write_sparse(&path, &bytes).expect("write");
        assert_eq!(fs::read(&path).expect("read"), bytes);
        assert!(
            write_sparse(&path, &bytes).is_err(),
            "an existing file is not overwritten"
        );
        fs::remove_dir_all(&dir).expect("rm");
    }

    #[test]
    fn a_changed_backing_file_gets_a_new_key() {
        let dir = std::env::temp_dir().join(format!("mcs-key-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("base.qcow2");
        fs::write(&path, b"one").expect("write");
        let before = TemplateKey::overlay(&path).expect("key");
        assert_eq!(before, TemplateKey::overlay(&path).expect("again"));
        fs::write(&path, b"longer").expect("rewrite");
        assert_ne!(before, TemplateKey::overlay(&path).expect("after"));
        assert!(TemplateKey::overlay(&dir.join("missing")).is_err());
        fs::remove_dir_all(&dir).expect("rm");
    }
}
