//! The store's write lock: one writer at a time, readers never wait.
//!
//! `STORE/lock` is locked with `flock(LOCK_EX)`; the kernel drops the lock when its holder dies,
//! so a writer killed with `kill -9` never leaves the store locked. The file also records who
//! holds it (pid, host, start time): a new writer that finds the file naming a process that is
//! gone reports the stale lock it took over.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use fs2::FileExt;

use crate::error::{Error, Result};

/// Name of the lock file.
pub const LOCK_FILE: &str = "lock";

/// A held write lock; released on drop.
#[derive(Debug)]
pub struct WriteLock {
    file: File,
    /// What the lock file said of a previous holder that died without unlocking, if anything.
    pub stale: Option<String>,
}

impl WriteLock {
    /// Takes the lock of the store at `root`, waiting for it when `wait` is set.
    ///
    /// # Errors
    /// [`Error::Locked`] when another live process holds it and `wait` is not set.
    pub fn acquire(root: &Path, wait: bool) -> Result<Self> {
        let path = root.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(Error::io(&path, "opening the lock file"))?;
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        if wait {
            file.lock_exclusive()
                .map_err(Error::io(&path, "waiting for the lock"))?;
        } else if file.try_lock_exclusive().is_err() {
            return Err(Error::Locked {
                path: root.to_path_buf(),
                holder: holder.trim().to_owned(),
            });
        }
        // What the file says now, under the lock: a holder that finished emptied it, so text
        // here is a holder that died. (Read before waiting, it would name the live writer we
        // waited for.)
        if wait {
            holder.clear();
            file.seek(SeekFrom::Start(0))
                .and_then(|_| file.read_to_string(&mut holder))
                .map_err(Error::io(&path, "reading the lock file"))?;
        }
        let stale = (!holder.trim().is_empty()).then(|| holder.trim().to_owned());
        // The command too: "cairn serve" holding a store tells the admin what to do.
        let command: Vec<String> = std::env::args()
            .take(2)
            .enumerate()
            .map(|(i, a)| match i {
                0 => Path::new(&a)
                    .file_name()
                    .map_or(a.clone(), |n| n.to_string_lossy().into_owned()),
                _ => a,
            })
            .collect();
        let me = format!(
            "pid {} on {} since {} ({})",
            std::process::id(),
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim(),
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            command.join(" ")
        );
        // Who holds it is a courtesy: the flock is the lock. On a full disk the note may not
        // fit, and the writer that would free space must still get in. Not synced: other
        // processes read it from the page cache, and after a power loss the name left there
        // is a process that no longer runs.
        let _ = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(me.as_bytes()));
        Ok(Self { file, stale })
    }
}

/// Whether a writer holds the lock of the store at `root` now, told without taking the lock (a
/// reader that took it, even for a moment, could make a starting backup fail): the lock file
/// names its holder while held and is emptied on release; a named holder counts when its
/// process is alive (a crashed one left its name behind). Unknown text counts as a holder.
#[must_use]
pub fn writer_active(root: &Path) -> bool {
    let text = std::fs::read_to_string(root.join(LOCK_FILE)).unwrap_or_default();
    let text = text.trim();
    if text.is_empty() {
        return false;
    }
    let pid = text
        .strip_prefix("pid ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u32>().ok());
    pid.is_none_or(process_alive)
}

/// Whether a process with this id runs on this machine.
#[must_use]
pub fn process_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

impl WriteLock {
    /// Empties the holder's note: the writer finished cleanly (its process is about to end,
    /// and the kernel drops the lock with it). For a store that lives as long as its process.
    pub fn mark_finished(&self) {
        let _ = self.file.set_len(0);
        let _ = self.file.sync_data();
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        // An empty lock file means "released cleanly"; a non-empty one found by the next
        // writer means its holder died.
        let _ = self.file.set_len(0);
        let _ = FileExt::unlock(&self.file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_is_seen_without_taking_the_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        assert!(!writer_active(root), "no lock file: no writer");
        let held = WriteLock::acquire(root, false).expect("lock");
        assert!(writer_active(root), "held by this live process");
        drop(held);
        assert!(!writer_active(root), "released cleanly: emptied");
        // A holder that died left its name: not a writer.
        std::fs::write(
            root.join(LOCK_FILE),
            format!("pid {} on h since t", u32::MAX),
        )
        .expect("write");
        assert!(!writer_active(root));
        // Text that names no process is taken as a holder (the safe side).
        std::fs::write(root.join(LOCK_FILE), "something else").expect("write");
        assert!(writer_active(root));
    }
}
