//! Files inside a disk image, read in place: no restore, no root, no loop device. This crate
//! knows nothing of cairn's store: it reads volumes from any [`DiskRead`] (`read_at(offset,
//! buf)`); cairn hands it a point's disk (`cairn_restore::PointDisk`, which reads only the
//! chunks asked for, each checked against its id), a test or a fuzz target hands it bytes.
//!
//! The disk's partition table names its partitions ([`partitions`]: GPT, MBR with logical
//! partitions, or none), LVM2 physical volumes among them give their linear logical volumes
//! ([`lvm`]); each volume's file system is recognised by its magic and, when read here, opened
//! ([`fs`]: ext2/3/4 through `ext4-view`, FAT12/16/32 through `fatfs`, NTFS through `ntfs`).
//! Every structure parsed is hostile input: bounded, checked, never a panic (`tests/hostile.rs`,
//! and the fuzz target in `fuzz/`).
//!
//! Paths name a volume and a path inside it: `p1/etc/hostname`, the GPT partition's name
//! (`rootfs/etc/hostname`), an LVM volume (`vg-root/etc`, or `root/etc`); `disk/...` for a disk
//! without a partition table.
//!
//! Files and folders are copied out by [`extract`], never outside their destination; found by
//! [`find`]; shown as `--json` shows them by [`shown`].

pub mod disk;
pub mod extract;
pub mod find;
pub mod fs;
pub mod lvm;
pub mod partitions;
pub mod shown;

use std::sync::Arc;

pub use disk::{DiskRead, ImageFile, Piece, Slice};
pub use extract::{Extracted, extract};
pub use find::find;
pub use fs::{FileRead, FileSystem, FsKind};
pub use partitions::{Partition, Scheme};

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The disk could not be read there (a chunk missing or damaged, a transport error).
    #[error("{disk}, disk offset {offset}: {source}")]
    Read {
        /// The disk (`point 1a2b3c4d5e6f`).
        disk: String,
        /// Where.
        offset: u64,
        /// Why: the reader's own error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A read past the end of a disk or partition (a table or file system pointing outside).
    #[error("a read of {len} bytes at offset {offset} lies past the end ({size} bytes)")]
    Outside {
        /// Where.
        offset: u64,
        /// How much.
        len: u64,
        /// The size of what was read.
        size: u64,
    },
    /// A partition table that does not read.
    #[error("{what}: {why}")]
    Table {
        /// Which table or entry.
        what: String,
        /// What is wrong.
        why: String,
    },
    /// A path that names no partition, or a partition whose file system is not read.
    #[error("{0}")]
    Path(String),
    /// The file system failed at a path (not there, not a folder, damaged).
    #[error("{path}: {why}")]
    Fs {
        /// The path inside the file system.
        path: String,
        /// What is wrong.
        why: String,
    },
}

/// The deepest folder `extract` and `find` go into: deeper is taken for a loop (a directory
/// holding one of its ancestors, in a damaged or hostile image) and refused, naming it.
pub const MAX_DEPTH: usize = 1024;

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A folder.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A device, a fifo, a socket.
    Other,
}

impl EntryKind {
    /// Its name in `--json`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Dir => "dir",
            Self::Symlink => "symlink",
            Self::Other => "other",
        }
    }
}

/// One entry of a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its name.
    pub name: String,
    /// What it is.
    pub kind: EntryKind,
    /// Its size in bytes.
    pub size: u64,
    /// Its mode bits (type and permissions, as `stat`).
    pub mode: u16,
    /// Its owner.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
    /// When its content changed, in seconds since 1970.
    pub mtime: i64,
    /// A symlink's target.
    pub link: Option<String>,
}

impl Entry {
    /// Its type and permissions as `ls -l` shows them: `drwxr-xr-x`.
    #[must_use]
    pub fn mode_string(&self) -> String {
        let t = match self.kind {
            EntryKind::Dir => 'd',
            EntryKind::Symlink => 'l',
            EntryKind::File => '-',
            EntryKind::Other => '?',
        };
        let perms: String = "rwxrwxrwx"
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if self.mode & (0o400 >> i) != 0 {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        format!("{t}{perms}")
    }
}

/// The volumes of `disk`: its partitions (GPT, MBR, or the whole disk), then the LVM2 logical
/// volumes on them.
///
/// # Errors
/// A partition table that does not read (LVM metadata that does not read is said in its
/// physical volume's kind, not an error).
pub fn volumes(disk: &Arc<dyn DiskRead>) -> Result<(Scheme, Vec<Partition>)> {
    let (scheme, mut parts) = partitions::partitions(disk)?;
    logical_volumes(disk, &mut parts)?;
    Ok((scheme, parts))
}

/// Adds the LVM2 logical volumes found on `parts` to them: each linear one as a volume; one
/// that cannot be read with an empty map and why in its kind; a physical volume whose label or
/// metadata is damaged says so in its own kind (the other partitions still read).
fn logical_volumes(disk: &Arc<dyn DiskRead>, parts: &mut Vec<Partition>) -> Result<()> {
    let mut pvs = Vec::new();
    for p in parts.iter_mut() {
        let slice = Slice::of_pieces(Arc::clone(disk), p.pieces.clone());
        if fs::detect(&slice)? != FsKind::Lvm {
            continue;
        }
        match lvm::physical_volume(&p.name, &slice) {
            Ok(Some(pv)) => pvs.push(pv),
            Ok(None) => {}
            Err(e) => p.kind = format!("{}; its LVM metadata does not read: {e}", p.kind),
        }
    }
    for found in lvm::logical_volumes(&pvs, parts) {
        parts.push(found.unwrap_or_else(|(name, why)| Partition {
            name,
            label: None,
            kind: format!("LVM2 logical volume, not read: {why}"),
            start: 0,
            size: 0,
            pieces: Vec::new(),
        }));
    }
    Ok(())
}

/// A disk's volumes and file systems.
pub struct DiskFiles {
    disk: Arc<dyn DiskRead>,
    /// What the disk is called in messages (`point 1a2b3c4d5e6f`).
    name: String,
    scheme: Scheme,
    parts: Vec<Partition>,
}

impl DiskFiles {
    /// Opens `disk` (called `name` in messages): reads its partition table and LVM metadata.
    ///
    /// # Errors
    /// A partition table that cannot be read.
    pub fn open(disk: Arc<dyn DiskRead>, name: impl Into<String>) -> Result<Self> {
        let (scheme, parts) = volumes(&disk)?;
        Ok(Self {
            disk,
            name: name.into(),
            scheme,
            parts,
        })
    }

    /// What the disk is called in messages.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The disk's partition scheme.
    #[must_use]
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// Its partitions.
    #[must_use]
    pub fn partitions(&self) -> &[Partition] {
        &self.parts
    }

    fn shared(&self) -> Arc<dyn DiskRead> {
        Arc::clone(&self.disk)
    }

    /// The whole disk's bytes.
    #[must_use]
    pub fn whole_disk(&self) -> Slice {
        Slice::new(self.shared(), 0, self.disk.size())
    }

    /// A partition's bytes.
    #[must_use]
    pub fn slice(&self, p: &Partition) -> Slice {
        Slice::of_pieces(self.shared(), p.pieces.clone())
    }

    /// The file system a partition holds.
    ///
    /// # Errors
    /// The disk's read errors.
    pub fn detect(&self, p: &Partition) -> Result<FsKind> {
        fs::detect(&self.slice(p))
    }

    /// The partition `spec` starts with, and the path after it (absolute, `/` for none).
    ///
    /// # Errors
    /// A spec that names no partition (the partitions are listed).
    pub fn resolve(&self, spec: &str) -> Result<(&Partition, String)> {
        let spec = spec.trim_start_matches('/');
        let (head, rest) = spec.split_once('/').unwrap_or((spec, ""));
        let part = self
            .parts
            .iter()
            .find(|p| p.name == head)
            .or_else(|| self.parts.iter().find(|p| p.label.as_deref() == Some(head)))
            .ok_or_else(|| {
                let names: Vec<String> = self
                    .parts
                    .iter()
                    .map(|p| match &p.label {
                        Some(l) => format!("{} ({l})", p.name),
                        None => p.name.clone(),
                    })
                    .collect();
                Error::Path(format!(
                    "{head:?} names no volume of {}: it has {}",
                    self.name,
                    names.join(", ")
                ))
            })?;
        Ok((part, format!("/{}", rest.trim_end_matches('/'))))
    }

    /// Opens the file system of `part`.
    ///
    /// # Errors
    /// A file system cairn does not read (named), or one that does not open.
    pub fn open_fs(&self, part: &Partition) -> Result<Box<dyn FileSystem>> {
        fs::open(self.slice(part)).map_err(|e| match e {
            Error::Path(why) => Error::Path(format!("{} {why}", part.name)),
            e => e,
        })
    }
}
