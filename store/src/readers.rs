//! Readers register while they run, so that garbage collection never deletes a pack that a
//! running reader may still open.
//!
//! A reader (every read-only open of the store: restore, verify, list, report, gc's own
//! planning view) creates `STORE/readers/<start>-<pid>-<n>` before it opens the index and holds
//! an exclusive `flock` on it until it closes; `<start>` is when it registered, in nanoseconds
//! since the epoch. The kernel drops the lock when the process dies, so a killed reader holds
//! nothing back: the next look finds its file unlocked and removes it.
//!
//! Garbage collection swaps its index first and then asks [`readers_before`] whether a reader
//! that registered before the swap is still running. Such a reader may have read the old index
//! and may yet open a pack the swap dropped, so gc leaves those packs in place; they are
//! unindexed packs from then on, and the first collection that finds no reader older than its
//! own swap deletes them. A reader that registered after the swap opened the new index, which
//! names none of them.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use fs2::FileExt;

use crate::error::{Error, Result};

/// The folder of reader files.
pub const READERS_DIR: &str = "readers";

/// A registered reader; unregistered on drop.
#[derive(Debug)]
pub struct ReaderGuard {
    path: PathBuf,
    // Holds the flock for as long as the guard lives.
    _file: File,
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Registers a reader of the store at `root`.
///
/// # Errors
/// I/O errors creating or locking the reader file.
pub fn register(root: &Path) -> Result<ReaderGuard> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = root.join(READERS_DIR);
    if !dir.is_dir() {
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(&dir, "creating the readers folder")(e)),
        }
    }
    let name = format!(
        "{}-{}-{}",
        now(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    // Made and locked under a name garbage collection does not count, then renamed: a
    // collection never sees the file unlocked (it would take it for a dead reader's and
    // remove it, and the reader would then hold the lock of a file nobody sees). The reader
    // opens the index only after the rename, so until then it needs no counting.
    let hidden = dir.join(format!("{HIDDEN}{name}"));
    let path = dir.join(name);
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&hidden)
            .map_err(Error::io(&hidden, "registering a reader"))?
    };
    let registered = file
        .try_lock_exclusive()
        .map_err(Error::io(&hidden, "locking a reader file"))
        .and_then(|()| {
            std::fs::rename(&hidden, &path).map_err(Error::io(&path, "registering a reader"))
        });
    if let Err(e) = registered {
        let _ = std::fs::remove_file(&hidden);
        return Err(e);
    }
    Ok(ReaderGuard { path, _file: file })
}

/// Prefix of a reader file being made (not yet locked and named).
const HIDDEN: &str = ".new-";

/// A file being made that is older than this was left by a reader that died while registering.
const HIDDEN_STALE_NANOS: u128 = 60_000_000_000;

/// The number of running readers that registered before `instant` (nanoseconds since the
/// epoch). Files of readers that died are removed on the way.
///
/// # Errors
/// I/O errors listing the folder.
pub fn readers_before(root: &Path, instant: u128) -> Result<u64> {
    let dir = root.join(READERS_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(0);
    };
    let mut n = 0;
    for e in entries {
        let path = e.map_err(Error::io(&dir, "listing the readers"))?.path();
        let name = path.file_name().and_then(|s| s.to_str()).unwrap_or("");
        if let Some(made) = name.strip_prefix(HIDDEN) {
            // Not counted: its reader has not opened the index yet. Removed only when old and
            // unlocked (a reader that died while registering).
            let started: u128 = made
                .split('-')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if now().saturating_sub(started) > HIDDEN_STALE_NANOS
                && File::open(&path).is_ok_and(|f| f.try_lock_exclusive().is_ok())
            {
                let _ = std::fs::remove_file(&path);
            }
            continue;
        }
        let start: Option<u128> = path
            .file_name()
            .and_then(|s| s.to_str())
            .and_then(|s| s.split('-').next())
            .and_then(|s| s.parse().ok());
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if file.try_lock_exclusive().is_ok() {
            // Nobody holds it: a reader that died (or one that has just closed).
            let _ = std::fs::remove_file(&path);
            continue;
        }
        // A file whose name cannot be read is counted: better a pack kept than one lost.
        if start.is_none_or(|s| s <= instant) {
            n += 1;
        }
    }
    Ok(n)
}

/// Now, as [`readers_before`] counts it: nanoseconds since the epoch.
#[must_use]
pub fn now() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_readers_are_counted_and_dead_ones_cleared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        assert_eq!(readers_before(root, now()).expect("count"), 0);
        let a = register(root).expect("register");
        let t = now();
        let b = register(root).expect("register");
        assert_eq!(readers_before(root, t).expect("count"), 1);
        assert_eq!(readers_before(root, now()).expect("count"), 2);
        drop(a);
        assert_eq!(readers_before(root, now()).expect("count"), 1);
        // A file left by a reader that died (nobody holds its lock) is removed.
        let dead = root.join(READERS_DIR).join("1-1-1");
        std::fs::write(&dead, b"").expect("write");
        assert_eq!(readers_before(root, now()).expect("count"), 1);
        assert!(!dead.exists());
        drop(b);
        assert_eq!(readers_before(root, now()).expect("count"), 0);
    }
}
