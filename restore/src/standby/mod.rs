//! Standby disks: a target kept equal to a point, each run writing only the chunks that differ
//! between the point the target holds and the new one.
//!
//! # Targets
//! - A raw file or a block device ([`file`]), written in place.
//! - An NBD export ([`nbd`]: `nbd://HOST:PORT/EXPORT`, `nbd+unix:///EXPORT?socket=PATH`,
//!   `nbds://` with TLS), written through cairn's NBD client and flushed (`NBD_CMD_FLUSH`).
//! - An HTTP(S) URL that takes a PUT of a VHD ([`http`]), as XAPI's
//!   `import_raw_vdi?format=vhd&vdi=UUID` does: the first run sends a dynamic VHD of the whole
//!   point, each later one a differencing VHD of the blocks that changed since the point the
//!   target holds (its parent is that point's VHD: uuid, time and file name as `cairn restore`
//!   gives them).
//!
//! # State
//! The store records, per target, the point it holds and what the target looked like after
//! the run: `STORE/standby/<hash>.json`, with `<hash>.lock` keeping two runs on one target
//! apart. The hash is of the target as shown (a canonical path, or the URL without secrets).
//!
//! # Atomic
//! Before the first byte is written, a journal (`<hash>.journal`: the point held and the point
//! being written) is made durable; the target is flushed (fsync, `NBD_CMD_FLUSH`, or a 2xx
//! answer to the PUT) before the state says it holds the new point, and the journal goes last.
//! A run killed at any moment leaves a journal, and the next run first finishes it: it rewrites
//! every chunk where the two points differ (sends them again, for a PUT), which brings the
//! target from any mix of them to the journal's point. A target is never reported as holding a
//! point it does not hold.
//!
//! # Dry run
//! With `dry_run` every check is made and what the run would write is counted (a block target
//! is read where the run would compare it; an HTTP target's VHD is sized), but nothing is
//! written: not the target, its state or journal; no lock is taken, no file made.
//!
//! # Protected
//! A target changed since the last run (someone booted the copy) is refused unless `force`,
//! which reads the whole target and rewrites every chunk that differs from the point
//! (`verify` does the same read without being asked twice). How a change is seen:
//! - a file or device: its size, modification time or inode differ;
//! - an NBD export: its size, or a BLAKE3 of 16 chunks spread over it (the first, where a
//!   booted system's file system marks itself mounted, the last, and 14 between): cheap, but a
//!   change elsewhere is seen only by `verify`;
//! - an HTTP target cannot be read back: nothing is seen, and the import's own side must keep
//!   the copy from being started (XO's replication blocks the start of its replicas). `force`
//!   sends the whole point again.

mod block;
mod file;
mod http;
mod nbd;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use cairn_store::{RecoveryPoint, Store};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What the store remembers of a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    target: String,
    point: String,
    size: u64,
    mtime_ns: i128,
    inode: u64,
    /// A digest of sampled chunks, for a target without times and inodes (NBD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sample: Option<String>,
}

/// What a target looks like: compared with the state to see a change made behind cairn's back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Looks {
    size: u64,
    mtime_ns: i128,
    inode: u64,
    sample: Option<String>,
}

impl State {
    fn new(shown: &str, point: &RecoveryPoint, looks: Looks) -> Self {
        Self {
            target: shown.to_owned(),
            point: point.id.to_string(),
            size: looks.size,
            mtime_ns: looks.mtime_ns,
            inode: looks.inode,
            sample: looks.sample,
        }
    }

    fn looks(&self) -> Looks {
        Looks {
            size: self.size,
            mtime_ns: self.mtime_ns,
            inode: self.inode,
            sample: self.sample.clone(),
        }
    }
}

/// A run in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Journal {
    from: Option<String>,
    to: String,
}

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct StandbyOptions {
    /// Take a target that changed behind cairn's back (or that holds something else): read it
    /// all and rewrite what differs (for an HTTP target: send the whole point).
    pub force: bool,
    /// Read the whole target and compare, even when it looks unchanged.
    pub verify: bool,
    /// For an HTTP(S) target: credentials and certificate checks (its CA file is also the one
    /// an `nbds://` target's certificate is checked against).
    pub http: cairn_http::HttpOptions,
    /// Check everything and count what the run would write (a block target is read where the
    /// run would compare), but write nothing: not the target, nor the state or the journal.
    pub dry_run: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StandbyReport {
    /// The target, as shown (a canonical path, or the URL without secrets).
    pub target: String,
    /// The point the target held before (if cairn knew one).
    pub from: Option<String>,
    /// The point it holds now.
    pub to: String,
    /// Chunks written (for an HTTP target: of the blocks sent).
    pub chunks_written: u64,
    /// Bytes written (for an HTTP target: the bytes of the VHDs sent).
    pub bytes_written: u64,
    /// Whether an interrupted run was finished first.
    pub finished_interrupted: bool,
    /// Whether the whole target was read and compared.
    pub compared: bool,
}

fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io {
        path,
        what: what.to_owned(),
        source,
    }
}

fn refused(what: String) -> Error {
    Error::Refused(what)
}

/// The state, journal and lock files of a target. In a dry run they are read, never written,
/// and no lock is taken.
struct Files {
    state: PathBuf,
    journal: PathBuf,
    _lock: Option<File>,
    dry_run: bool,
}

impl Files {
    /// Takes the lock of the target shown as `shown` (a dry run takes none and makes nothing).
    fn lock(store: &Store, shown: &str, dry_run: bool) -> Result<Self> {
        let dir = store.root().join("standby");
        let key = blake3::hash(shown.as_bytes()).to_hex()[..32].to_owned();
        let (state, journal) = (
            dir.join(format!("{key}.json")),
            dir.join(format!("{key}.journal")),
        );
        if dry_run {
            return Ok(Self {
                state,
                journal,
                _lock: None,
                dry_run,
            });
        }
        std::fs::create_dir_all(&dir).map_err(io(&dir, "creating the standby folder"))?;
        let lock_path = dir.join(format!("{key}.lock"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path, "opening the standby lock"))?;
        fs2::FileExt::try_lock_exclusive(&lock).map_err(|_| {
            refused(format!(
                "{shown}: another `cairn standby` is writing this target now"
            ))
        })?;
        Ok(Self {
            state,
            journal,
            _lock: Some(lock),
            dry_run,
        })
    }

    fn state(&self) -> Result<Option<State>> {
        read_json(&self.state)
    }

    fn set_state(&self, s: &State) -> Result<()> {
        if self.dry_run {
            return Ok(());
        }
        write_json(&self.state, s)
    }

    fn journal(&self) -> Result<Option<Journal>> {
        read_json(&self.journal)
    }

    /// Made durable before the first byte of the run is written.
    fn begin(&self, from: Option<&RecoveryPoint>, to: &RecoveryPoint) -> Result<()> {
        if self.dry_run {
            return Ok(());
        }
        write_json(
            &self.journal,
            &Journal {
                from: from.map(|p| p.id.to_string()),
                to: to.id.to_string(),
            },
        )
    }

    /// Removed once the state says what the target holds.
    fn end(&self) -> Result<()> {
        if self.dry_run {
            return Ok(());
        }
        match std::fs::remove_file(&self.journal) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&self.journal, "removing the journal")(e)),
        }
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| refused(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path, "reading")(e)),
    }
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(v).map_err(|e| refused(e.to_string()))?;
    cairn_store::write_atomic(path, &bytes)?;
    Ok(())
}

/// The point a journal was writing, which the store must still hold.
fn journal_point(
    store: &Store,
    j: &Journal,
    shown: &str,
    now: &RecoveryPoint,
) -> Result<RecoveryPoint> {
    store.point_by_id(&j.to)?.ok_or_else(|| {
        refused(format!(
            "{shown}: an interrupted run was writing point {}, which the store no longer \
             holds: run again with --force to rewrite the target from {}",
            j.to,
            now.short_id()
        ))
    })
}

/// Keeps `target` equal to `point` (see the module): a path, an NBD URI or an HTTP(S) URL.
///
/// # Errors
/// A target changed behind cairn's back (without `force`), a target of another size, a
/// chunk that cannot be read, I/O, NBD or HTTP errors. The target then holds the point it
/// held, or is left for the next run to finish (the journal says so).
pub fn standby(
    store: &Store,
    point: &RecoveryPoint,
    target: &str,
    options: &StandbyOptions,
) -> Result<StandbyReport> {
    if cairn_nbd::is_nbd_uri(target) {
        let mut t = nbd::NbdTarget::connect(target, options.http.ca_file.as_deref())?;
        block::run(store, point, &mut t, options)
    } else if cairn_http::is_http_url(target) {
        http::run(store, point, target, options)
    } else {
        let mut t = file::FileTarget::open(Path::new(target), options.dry_run)?;
        block::run(store, point, &mut t, options)
    }
}
