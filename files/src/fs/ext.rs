//! ext2, ext3 and ext4, read through `ext4-view` (read-only, pure Rust; it checks metadata
//! checksums and refuses names holding a `/`).

use super::FileSystem;
use crate::disk::Slice;
use crate::{Entry, EntryKind, Error, Result};

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
        check_superblock(&part)?;
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

/// Block groups a file system may have here: 2^20 (128 TiB at ext4's usual 128 MiB a group).
const MAX_GROUPS: u64 = 1 << 20;

/// Refuses a superblock whose size or group count no volume of this size holds, before
/// `ext4-view` reads it: it allocates a descriptor per block group the superblock claims (the
/// fuzz target's third find: a superblock claiming 2^32 groups asked for 10 GiB).
fn check_superblock(part: &Slice) -> Result<()> {
    let bad = |why: String| Error::Fs {
        path: "/".into(),
        why: format!("its superblock {why}"),
    };
    let mut sb = [0u8; 1024];
    if part.len() < 2048 {
        return Err(bad(format!(
            "lies past the volume's end ({} bytes)",
            part.len()
        )));
    }
    part.read_at(1024, &mut sb)?;
    let le32 = |at: usize| {
        u64::from(u32::from_le_bytes([
            sb[at],
            sb[at + 1],
            sb[at + 2],
            sb[at + 3],
        ]))
    };
    let log = le32(0x18);
    if log > 6 {
        return Err(bad(format!("says blocks of 2^{} bytes", log + 10)));
    }
    let block = 1024u64 << log;
    let incompat_64bit = le32(0x60) & 0x80 != 0;
    let blocks = le32(0x4) | if incompat_64bit { le32(0x150) << 32 } else { 0 };
    let per_group = le32(0x20);
    if per_group == 0 {
        return Err(bad("says 0 blocks a group".into()));
    }
    let groups = blocks.saturating_sub(le32(0x14)).div_ceil(per_group);
    if blocks.saturating_mul(block) > part.len() || groups > MAX_GROUPS {
        return Err(bad(format!(
            "says {blocks} blocks of {block} bytes in {groups} groups: more than the volume's {} \
             bytes hold",
            part.len()
        )));
    }
    Ok(())
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

    /// The inode number. ext4-view 1.0 has no public accessor for it; its `File`'s `Debug`
    /// shows it (`File { inode: 12, .. }`) and is read here. The crate's version is pinned
    /// (`=1.0.0`) and the hard-link tests fail if that form changes.
    fn file_id(&self, path: &str) -> Result<Option<u64>> {
        let file = self.fs.open(path).map_err(ext_err(path))?;
        let shown = format!("{file:?}");
        let id = shown.split_once("inode: ").and_then(|(_, rest)| {
            let digits: String = rest
                .chars()
                .skip_while(|c| !c.is_ascii_digit())
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        });
        Ok(id)
    }

    fn open_file(&self, path: &str) -> Result<Box<dyn super::FileRead + '_>> {
        Ok(Box::new(self.fs.open(path).map_err(ext_err(path))?))
    }
}
