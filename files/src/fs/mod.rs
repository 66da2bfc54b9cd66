//! Which file system a partition holds (by its superblock's magic), and reading the ones cairn
//! reads: ext2/3/4 ([`ext`], through `ext4-view`), FAT12/16/32 ([`fat`], through `fatfs`) and
//! NTFS ([`ntfs`], through `ntfs`).
//! Others are named, and refused by name.

pub mod ext;
pub mod fat;
pub mod ntfs;

pub use ext::Ext;
pub use fat::Fat;
pub use ntfs::NtfsVolume;

use std::io::{Read, Seek};

use crate::disk::Slice;
use crate::{Entry, Result};

/// What a partition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    /// ext2, ext3 or ext4.
    Ext,
    /// FAT12, FAT16 or FAT32.
    Fat,
    /// NTFS.
    Ntfs,
    /// XFS.
    Xfs,
    /// btrfs.
    Btrfs,
    /// An LVM2 physical volume.
    Lvm,
    /// Linux swap.
    Swap,
    /// Nothing known (zeros, or a file system cairn does not know).
    Unknown,
}

impl FsKind {
    /// Its name, as `ls` shows it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Ext => "ext4",
            Self::Fat => "vfat",
            Self::Ntfs => "ntfs",
            Self::Xfs => "xfs",
            Self::Btrfs => "btrfs",
            Self::Lvm => "LVM2 member",
            Self::Swap => "swap",
            Self::Unknown => "unknown",
        }
    }

    /// Whether cairn reads its files.
    #[must_use]
    pub fn readable(self) -> bool {
        matches!(self, Self::Ext | Self::Fat | Self::Ntfs)
    }
}

/// The file system of `part`, by the magic numbers of its first 68 KiB.
///
/// # Errors
/// The disk's read errors.
pub fn detect(part: &Slice) -> Result<FsKind> {
    let mut head = vec![0u8; (68 << 10).min(part.len() as usize)];
    part.read_at(0, &mut head)?;
    let at = |o: usize, magic: &[u8]| head.get(o..o + magic.len()) == Some(magic);
    Ok(if at(1024 + 56, &[0x53, 0xEF]) {
        FsKind::Ext
    } else if at(3, b"NTFS    ") {
        FsKind::Ntfs
    } else if at(0, b"XFSB") {
        FsKind::Xfs
    } else if at(65536 + 64, b"_BHRfS_M") {
        FsKind::Btrfs
    } else if at(512, b"LABELONE") && at(512 + 24, b"LVM2 001") {
        FsKind::Lvm
    } else if at(4086, b"SWAPSPACE2") {
        FsKind::Swap
    } else if (at(54, b"FAT") || at(82, b"FAT32")) && at(510, &[0x55, 0xAA]) {
        FsKind::Fat
    } else {
        FsKind::Unknown
    })
}

/// Opens the file system `part` holds.
///
/// # Errors
/// A file system cairn does not read (`holds xfs: ...`, named), one that does not open.
pub fn open(part: Slice) -> Result<Box<dyn FileSystem>> {
    match detect(&part)? {
        FsKind::Ext => Ok(Box::new(Ext::open(part)?)),
        FsKind::Fat => Ok(Box::new(Fat::open(part)?)),
        FsKind::Ntfs => Ok(Box::new(NtfsVolume::open(part)?)),
        other => Err(crate::Error::Path(format!(
            "holds {}: cairn reads ext2/3/4, FAT and NTFS file systems so far; `cairn mount` \
             shows its raw bytes and `cairn serve-nbd` serves the disk, for the system's own tools",
            other.name()
        ))),
    }
}

/// A file's content as a file system hands it out: read in order, or sought (`mount` reads at
/// any offset).
pub trait FileRead: Read + Seek {}

impl<T: Read + Seek> FileRead for T {}

/// A file system opened for reading: what `ls`, `cat` and `extract` ask of it. Paths are
/// absolute (`/etc/hostname`).
pub trait FileSystem {
    /// The entry at `path` itself (a symlink as itself).
    ///
    /// # Errors
    /// A path that is not there, a damaged file system.
    fn entry(&self, path: &str) -> Result<Entry>;

    /// The entries of the folder `path`, sorted by name (`.` and `..` left out).
    ///
    /// # Errors
    /// A path that is not there or not a folder, a damaged file system.
    fn list(&self, path: &str) -> Result<Vec<Entry>>;

    /// What identifies the file at `path` within the file system, the same for each of its
    /// names when it has several (hard links): ext's inode number, NTFS's file record number;
    /// `None` where the file system has no hard links (FAT).
    ///
    /// # Errors
    /// A path that is not there, a damaged file system.
    fn file_id(&self, path: &str) -> Result<Option<u64>> {
        let _ = path;
        Ok(None)
    }

    /// The bytes of the file at `path`, to read in order or at any offset.
    ///
    /// # Errors
    /// A path that is not there or not a file, a damaged file system.
    fn open_file(&self, path: &str) -> Result<Box<dyn FileRead + '_>>;
}
