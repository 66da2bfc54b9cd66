//! NTFS (Windows data and system volumes), read through `ntfs` (read-only, pure Rust).
//!
//! Folders list their Win32 names (a DOS 8.3 alias is left out), the metafiles (`$MFT`...) left
//! out as Windows and `ntfsls` leave them out; sizes are those of each file's unnamed data
//! stream; NTFS keeps no Unix owner or mode, so entries show as root's, folders 0755 and files
//! 0644 (0444 when read-only). A file's content streams: its data attribute is found again for
//! each 1 MiB read (the crate's values borrow the file record they come from).
//!
//! The `ntfs` crate (0.4) panics when a read fails inside a structure it parses (a binrw
//! error of a type it does not expect; found by the fuzz target on a volume cut short). So it
//! is handed a device that never fails ([`Device`]): past the volume's end, or where the disk
//! does not read, it reads zeros and keeps the first error, and every operation here returns
//! that error when it ends.

use std::cell::RefCell;
use std::io::Read;

use ntfs::indexes::NtfsFileNameIndex;
use ntfs::structured_values::{NtfsFileAttributeFlags, NtfsFileNamespace};
use ntfs::{Ntfs, NtfsFile, NtfsReadSeek};

use super::FileSystem;
use crate::disk::Slice;
use crate::{Entry, EntryKind, Error, Result};

/// Files of record numbers below this are NTFS's own ($MFT, $LogFile, ... and reserved).
const FIRST_USER_RECORD: u64 = 24;
/// Bytes read at a time from a file's data.
const READ_AT_ONCE: usize = 1 << 20;

/// An opened NTFS file system.
pub struct NtfsVolume {
    ntfs: Ntfs,
    part: RefCell<Device>,
}

/// A volume as `ntfs` reads it: reads never fail; a read past the end or one the disk refuses
/// gives zeros and leaves its error in `failed` (see the module's doc).
struct Device {
    slice: Slice,
    pos: u64,
    failed: Option<String>,
}

impl std::io::Read for Device {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let len = self.slice.len();
        let inside = len.saturating_sub(self.pos).min(buf.len() as u64) as usize;
        if inside < buf.len() && self.failed.is_none() {
            self.failed = Some(format!(
                "a read of {} bytes at byte {} runs past the volume's end ({len} bytes)",
                buf.len(),
                self.pos
            ));
        }
        if inside > 0
            && let Err(e) = self.slice.read_at(self.pos, &mut buf[..inside])
        {
            buf[..inside].fill(0);
            self.failed.get_or_insert_with(|| e.to_string());
        }
        buf[inside..].fill(0);
        self.pos = self.pos.saturating_add(buf.len() as u64);
        Ok(buf.len())
    }
}

impl std::io::Seek for Device {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let new = match to {
            std::io::SeekFrom::Start(n) => Some(n),
            std::io::SeekFrom::End(d) => self.slice.len().checked_add_signed(d),
            std::io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| std::io::Error::other("a seek before the start"))?;
        Ok(self.pos)
    }
}

fn ntfs_err(path: &str) -> impl Fn(ntfs::NtfsError) -> Error + '_ {
    move |e| Error::Fs {
        path: path.to_owned(),
        why: e.to_string(),
    }
}

fn not_there(path: &str) -> Error {
    Error::Fs {
        path: path.to_owned(),
        why: "no such file or folder".into(),
    }
}

impl NtfsVolume {
    /// Opens the NTFS file system of `part`.
    ///
    /// # Errors
    /// A boot sector or upcase table that does not read as NTFS's.
    pub fn open(part: Slice) -> Result<Self> {
        let mut dev = Device {
            slice: part,
            pos: 0,
            failed: None,
        };
        let opened = Ntfs::new(&mut dev).and_then(|mut ntfs| {
            ntfs.read_upcase_table(&mut dev)?;
            Ok(ntfs)
        });
        if let Some(why) = dev.failed.take() {
            return Err(Error::Fs {
                path: "/".into(),
                why,
            });
        }
        Ok(Self {
            ntfs: opened.map_err(ntfs_err("/"))?,
            part: RefCell::new(dev),
        })
    }

    /// `done`, unless the device failed on the way: then its error (a volume cut short, a
    /// chunk that does not read).
    fn checked<T>(&self, path: &str, done: Result<T>) -> Result<T> {
        if let Some(why) = self.part.borrow_mut().failed.take() {
            return Err(Error::Fs {
                path: path.to_owned(),
                why,
            });
        }
        done
    }

    /// The file at `path`, component by component from the root.
    fn file(&self, path: &str) -> Result<NtfsFile<'_>> {
        let mut fs = self.part.borrow_mut();
        let mut file = self.ntfs.root_directory(&mut *fs).map_err(ntfs_err(path))?;
        for name in path.split('/').filter(|s| !s.is_empty()) {
            if !file.is_directory() {
                return Err(not_there(path));
            }
            let index = file.directory_index(&mut *fs).map_err(ntfs_err(path))?;
            let mut finder = index.finder();
            let entry = NtfsFileNameIndex::find(&mut finder, &self.ntfs, &mut *fs, name)
                .ok_or_else(|| not_there(path))?
                .map_err(ntfs_err(path))?;
            let next = entry
                .to_file(&self.ntfs, &mut *fs)
                .map_err(ntfs_err(path))?;
            file = next;
        }
        Ok(file)
    }

    /// The entry of `file`, named `name`.
    fn entry_of(&self, file: &NtfsFile<'_>, name: String, path: &str) -> Result<Entry> {
        let dir = file.is_directory();
        let info = file.info().map_err(ntfs_err(path))?;
        let read_only = info
            .file_attributes()
            .contains(NtfsFileAttributeFlags::READ_ONLY);
        let size = if dir {
            0
        } else {
            let mut fs = self.part.borrow_mut();
            match file.data(&mut *fs, "") {
                Some(item) => {
                    let item = item.map_err(ntfs_err(path))?;
                    let attr = item.to_attribute().map_err(ntfs_err(path))?;
                    attr.value_length()
                }
                None => 0,
            }
        };
        Ok(Entry {
            name,
            kind: if dir { EntryKind::Dir } else { EntryKind::File },
            size,
            mode: match (dir, read_only) {
                (true, _) => 0o040_755,
                (false, true) => 0o100_444,
                (false, false) => 0o100_644,
            },
            uid: 0,
            gid: 0,
            mtime: unix_seconds(info.modification_time().nt_timestamp()),
            link: None,
        })
    }
}

/// An NT time (100 ns since 1601) as seconds since 1970.
fn unix_seconds(nt: u64) -> i64 {
    (nt / 10_000_000) as i64 - 11_644_473_600
}

impl FileSystem for NtfsVolume {
    fn entry(&self, path: &str) -> Result<Entry> {
        let done = self.file(path).and_then(|file| {
            let name = path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("/");
            self.entry_of(&file, name.to_owned(), path)
        });
        self.checked(path, done)
    }

    fn list(&self, path: &str) -> Result<Vec<Entry>> {
        let done = self.list_unchecked(path);
        self.checked(path, done)
    }

    fn file_id(&self, path: &str) -> Result<Option<u64>> {
        let done = self.file(path).map(|f| Some(f.file_record_number()));
        self.checked(path, done)
    }

    fn open_file(&self, path: &str) -> Result<Box<dyn super::FileRead + '_>> {
        let done = self.open_unchecked(path);
        self.checked(path, done)
    }
}

impl NtfsVolume {
    fn list_unchecked(&self, path: &str) -> Result<Vec<Entry>> {
        let dir = self.file(path)?;
        if !dir.is_directory() {
            return Err(Error::Fs {
                path: path.to_owned(),
                why: "not a folder".into(),
            });
        }
        let mut found = Vec::new();
        {
            let mut fs = self.part.borrow_mut();
            let index = dir.directory_index(&mut *fs).map_err(ntfs_err(path))?;
            let mut entries = index.entries();
            while let Some(e) = entries.next(&mut *fs) {
                let e = e.map_err(ntfs_err(path))?;
                let Some(key) = e.key() else { continue };
                let key = key.map_err(ntfs_err(path))?;
                let record = e.file_reference().file_record_number();
                if key.namespace() == NtfsFileNamespace::Dos || record < FIRST_USER_RECORD {
                    continue;
                }
                found.push((key.name().to_string_lossy(), record));
            }
        }
        let mut out = Vec::with_capacity(found.len());
        for (name, record) in found {
            let file = {
                let mut fs = self.part.borrow_mut();
                self.ntfs.file(&mut *fs, record).map_err(ntfs_err(path))?
            };
            let full = format!("{}/{name}", path.trim_end_matches('/'));
            out.push(self.entry_of(&file, name, &full)?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out.dedup_by(|a, b| a.name == b.name);
        Ok(out)
    }

    fn open_unchecked(&self, path: &str) -> Result<Box<dyn super::FileRead + '_>> {
        let file = self.file(path)?;
        if file.is_directory() {
            return Err(Error::Fs {
                path: path.to_owned(),
                why: "a folder, not a file".into(),
            });
        }
        let len = self.entry_of(&file, String::new(), path)?.size;
        Ok(Box::new(Stream {
            fs: self,
            file,
            path: path.to_owned(),
            len,
            pos: 0,
            buf: Vec::new(),
            at: 0,
        }))
    }
}

/// A file's unnamed data stream, read up to 1 MiB at a time (as much as the reader asks, at
/// least 64 KiB), sought by dropping what is buffered.
struct Stream<'n> {
    fs: &'n NtfsVolume,
    file: NtfsFile<'n>,
    path: String,
    /// Its length.
    len: u64,
    /// Where the next refill starts.
    pos: u64,
    buf: Vec<u8>,
    /// What of `buf` was handed out.
    at: usize,
}

impl Stream<'_> {
    /// Reads the next piece into `buf`; on an error `buf` is left empty (what was handed out
    /// stays counted in `pos`).
    fn refill(&mut self, asked: usize) -> std::io::Result<()> {
        self.buf.clear();
        self.at = 0;
        let mut part = self.fs.part.borrow_mut();
        let (pos, chunk) = (self.pos, asked.clamp(64 << 10, READ_AT_ONCE) as u64);
        let read = (|| -> std::result::Result<Vec<u8>, ntfs::NtfsError> {
            let Some(item) = self.file.data(&mut *part, "") else {
                return Ok(Vec::new());
            };
            let item = item?;
            let attr = item.to_attribute()?;
            let mut value = attr.value(&mut *part)?;
            let want = value.len().saturating_sub(pos).min(chunk) as usize;
            let mut piece = vec![0u8; want];
            if want > 0 {
                value.seek(&mut *part, std::io::SeekFrom::Start(pos))?;
                value.read_exact(&mut *part, &mut piece)?;
            }
            Ok(piece)
        })();
        // The device's own failure first: it is why what was parsed was zeros.
        if let Some(why) = part.failed.take() {
            return Err(std::io::Error::other(format!("{}: {why}", self.path)));
        }
        let piece = read.map_err(|e| std::io::Error::other(format!("{}: {e}", self.path)))?;
        self.pos += piece.len() as u64;
        self.buf = piece;
        Ok(())
    }
}

impl Read for Stream<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.buf.len() {
            self.refill(out.len())?;
        }
        let n = (self.buf.len() - self.at).min(out.len());
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl std::io::Seek for Stream<'_> {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let here = self.pos - (self.buf.len() - self.at) as u64;
        let target = match to {
            std::io::SeekFrom::Start(n) => Some(n),
            std::io::SeekFrom::Current(d) => here.checked_add_signed(d),
            std::io::SeekFrom::End(d) => self.len.checked_add_signed(d),
        }
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{}: a seek before the start", self.path),
            )
        })?;
        if target != here {
            self.pos = target;
            self.buf.clear();
            self.at = 0;
        }
        Ok(target)
    }
}
