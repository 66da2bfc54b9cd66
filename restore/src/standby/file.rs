//! A raw file or block device as a standby target.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::block::BlockTarget;
use super::{Looks, io};
use crate::Result;

/// A file or device, opened for reading and writing (a file is made when missing); for a dry
/// run, opened to read only, and a missing file stands as an empty one (nothing is made).
pub(super) struct FileTarget {
    file: File,
    path: PathBuf,
    shown: String,
    held_data: bool,
}

impl FileTarget {
    pub(super) fn open(path: &Path, dry_run: bool) -> Result<Self> {
        let existed = path.exists();
        let file = if dry_run && !existed {
            tempfile::tempfile().map_err(io(path, "standing in for the target"))?
        } else {
            OpenOptions::new()
                .read(true)
                .write(!dry_run)
                .create(!dry_run)
                .truncate(false)
                .open(path)
                .map_err(io(path, "opening the target"))?
        };
        let shown = std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .display()
            .to_string();
        let mut t = Self {
            file,
            path: path.to_path_buf(),
            shown,
            held_data: false,
        };
        t.held_data = existed && t.looks(0)?.size > 0;
        Ok(t)
    }
}

impl BlockTarget for FileTarget {
    fn shown(&self) -> &str {
        &self.shown
    }

    fn held_data(&self) -> bool {
        self.held_data
    }

    fn looks(&mut self, _chunk_size: u64) -> Result<Looks> {
        let target = &self.path;
        let m = self
            .file
            .metadata()
            .map_err(io(target, "reading the target's metadata"))?;
        let size = if m.file_type().is_file() {
            m.len()
        } else {
            // A block device: its size is where its end is.
            use std::io::Seek;
            (&self.file)
                .seek(std::io::SeekFrom::End(0))
                .map_err(io(target, "finding the device's size"))?
        };
        Ok(Looks {
            size,
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            inode: m.ino(),
            sample: None,
        })
    }

    fn resizable(&self) -> bool {
        self.file
            .metadata()
            .map(|m| m.file_type().is_file())
            .unwrap_or(false)
    }

    fn set_len(&mut self, len: u64) -> Result<()> {
        self.file
            .set_len(len)
            .map_err(io(&self.path, "sizing the target"))
    }

    fn read_at(&mut self, buf: &mut [u8], at: u64) -> Result<()> {
        self.file
            .read_exact_at(buf, at)
            .map_err(io(&self.path, "reading the target"))
    }

    fn write_at(&mut self, data: &[u8], at: u64) -> Result<()> {
        self.file
            .write_all_at(data, at)
            .map_err(io(&self.path, "writing the target"))
    }

    fn flush(&mut self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(io(&self.path, "flushing the target"))
    }
}
