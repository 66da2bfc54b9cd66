//! Which file system a partition holds (by its superblock's magic), and reading the ones cairn
//! reads: ext2/3/4 (`ext4-view`). Others are named, and refused by name.

use std::io::Read;

use crate::disk::Slice;
use crate::{Entry, EntryKind, Error, Result};

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
        matches!(self, Self::Ext)
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

    /// The bytes of the file at `path`, as a stream.
    ///
    /// # Errors
    /// A path that is not there or not a file, a damaged file system.
    fn open_file(&self, path: &str) -> Result<Box<dyn Read + '_>>;
}

/// An opened ext2/3/4 file system.
pub struct Ext {
    fs: ext4_view::Ext4,
}

fn ext_err(path: &str) -> impl Fn(ext4_view::Ext4Error) -> Error + '_ {
    move |e| Error::Fs {
        path: path.to_owned(),
        why: e.to_string(),
    }
}

impl Ext {
    /// Opens the ext file system of `part`.
    ///
    /// # Errors
    /// A superblock or group descriptors that do not read as ext's.
    pub fn open(part: Slice) -> Result<Self> {
        let fs = ext4_view::Ext4::load(Box::new(part)).map_err(ext_err("/"))?;
        Ok(Self { fs })
    }

    fn entry_of(&self, path: &str, name: String, meta: &ext4_view::Metadata) -> Result<Entry> {
        let t = meta.file_type();
        let kind = if t.is_dir() {
            EntryKind::Dir
        } else if t.is_symlink() {
            EntryKind::Symlink
        } else if t.is_regular_file() {
            EntryKind::File
        } else {
            EntryKind::Other
        };
        let link = if kind == EntryKind::Symlink {
            Some(
                self.fs
                    .read_link(path)
                    .map_err(ext_err(path))?
                    .display()
                    .to_string(),
            )
        } else {
            None
        };
        Ok(Entry {
            name,
            kind,
            size: meta.len(),
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: meta.modified().seconds(),
            link,
        })
    }
}

impl FileSystem for Ext {
    fn entry(&self, path: &str) -> Result<Entry> {
        let meta = self.fs.symlink_metadata(path).map_err(ext_err(path))?;
        let name = path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("/");
        self.entry_of(path, name.to_owned(), &meta)
    }

    fn list(&self, path: &str) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for e in self.fs.read_dir(path).map_err(ext_err(path))? {
            let e = e.map_err(ext_err(path))?;
            let name = e.file_name().display().to_string();
            if name == "." || name == ".." {
                continue;
            }
            let full = e.path().display().to_string();
            let meta = e.metadata().map_err(ext_err(&full))?;
            out.push(self.entry_of(&full, name, &meta)?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn open_file(&self, path: &str) -> Result<Box<dyn Read + '_>> {
        Ok(Box::new(self.fs.open(path).map_err(ext_err(path))?))
    }
}
