//! FAT12, FAT16 and FAT32 (EFI system partitions, boot partitions), read through `fatfs`.
//!
//! `fatfs` asks for a device it could write to; the one it gets refuses every write, and
//! nothing it does on a read-only mount writes (its dirty flag is written only when a write
//! set it). FAT keeps no owner nor mode: entries show as root's, folders 0755 and files 0644
//! (0444 when read-only); times are local times with no zone, shown as UTC.

use super::FileSystem;
use crate::disk::Slice;
use crate::{Entry, EntryKind, Error, Result};

/// A partition as a device `fatfs` may write to: every write is refused.
struct ReadOnly(Slice);

impl std::io::Read for ReadOnly {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl std::io::Seek for ReadOnly {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        self.0.seek(to)
    }
}

impl std::io::Write for ReadOnly {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "a point is read-only",
        ))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An opened FAT file system.
pub struct Fat {
    fs: fatfs::FileSystem<ReadOnly>,
}

fn fat_err(path: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Fs {
        path: path.to_owned(),
        why: e.to_string(),
    }
}

/// A path as `fatfs` takes it: relative to the root, no trailing `/`.
fn rel(path: &str) -> &str {
    path.trim_matches('/')
}

impl Fat {
    /// Opens the FAT file system of `part`.
    ///
    /// # Errors
    /// A boot sector that does not read as FAT's.
    pub fn open(part: Slice) -> Result<Self> {
        let fs = fatfs::FileSystem::new(ReadOnly(part), fatfs::FsOptions::new())
            .map_err(fat_err("/"))?;
        Ok(Self { fs })
    }

    fn dir(&self, path: &str) -> Result<fatfs::Dir<'_, ReadOnly>> {
        let root = self.fs.root_dir();
        match rel(path) {
            "" => Ok(root),
            p => root.open_dir(p).map_err(fat_err(path)),
        }
    }
}

fn entry_of(e: &fatfs::DirEntry<'_, ReadOnly>) -> Entry {
    let dir = e.is_dir();
    let read_only = e.attributes().contains(fatfs::FileAttributes::READ_ONLY);
    let mode = match (dir, read_only) {
        (true, _) => 0o040_755,
        (false, true) => 0o100_444,
        (false, false) => 0o100_644,
    };
    Entry {
        name: e.file_name(),
        kind: if dir { EntryKind::Dir } else { EntryKind::File },
        size: if dir { 0 } else { e.len() },
        mode,
        uid: 0,
        gid: 0,
        mtime: seconds(e.modified()),
        link: None,
    }
}

/// A FAT time (no zone) as seconds since 1970, taken as UTC.
fn seconds(t: fatfs::DateTime) -> i64 {
    let (y, m, d) = (
        i64::from(t.date.year),
        i64::from(t.date.month),
        i64::from(t.date.day),
    );
    // Days from 1970-01-01 to y-m-d (the proleptic Gregorian calendar).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400
        + i64::from(t.time.hour) * 3600
        + i64::from(t.time.min) * 60
        + i64::from(t.time.sec)
}

impl FileSystem for Fat {
    fn entry(&self, path: &str) -> Result<Entry> {
        let p = rel(path);
        let Some((parent, name)) = p
            .rsplit_once('/')
            .or(Some(("", p)))
            .filter(|_| !p.is_empty())
        else {
            return Ok(Entry {
                name: "/".into(),
                kind: EntryKind::Dir,
                size: 0,
                mode: 0o040_755,
                uid: 0,
                gid: 0,
                mtime: 0,
                link: None,
            });
        };
        let dir = self.dir(parent)?;
        let mut found = None;
        for e in dir.iter() {
            let e = e.map_err(fat_err(path))?;
            if e.file_name() == name {
                return Ok(entry_of(&e));
            }
            // FAT names compare without case.
            if found.is_none() && e.file_name().eq_ignore_ascii_case(name) {
                found = Some(entry_of(&e));
            }
        }
        found.ok_or_else(|| Error::Fs {
            path: path.to_owned(),
            why: "no such file or folder".into(),
        })
    }

    fn list(&self, path: &str) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for e in self.dir(path)?.iter() {
            let e = e.map_err(fat_err(path))?;
            let name = e.file_name();
            if name == "." || name == ".." {
                continue;
            }
            out.push(entry_of(&e));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn open_file(&self, path: &str) -> Result<Box<dyn super::FileRead + '_>> {
        Ok(Box::new(
            self.fs
                .root_dir()
                .open_file(rel(path))
                .map_err(fat_err(path))?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fat_times_count_days_as_the_calendar_does() {
        let t = |y, mo, d, h, mi, s| fatfs::DateTime {
            date: fatfs::Date {
                year: y,
                month: mo,
                day: d,
            },
            time: fatfs::Time {
                hour: h,
                min: mi,
                sec: s,
                millis: 0,
            },
        };
        assert_eq!(seconds(t(1980, 1, 1, 0, 0, 0)), 315_532_800);
        assert_eq!(seconds(t(2000, 2, 29, 12, 0, 0)), 951_825_600);
        assert_eq!(seconds(t(2026, 12, 7, 11, 50, 38)), 1_796_644_238);
    }
}
