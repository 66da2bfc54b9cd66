//! Restore for cairn: a recovery point re-synthesized as a raw image, one dynamic VHD, a VHD
//! chain (key + differencing VHDs), or one differencing VHD against a base point.
//!
//! # Reading
//! A [`PointReader`] serves a point's blocks in order. It walks the point's tree a leaf at a time
//! (the reference list is never held whole; holes cost nothing) and fetches a window of chunks
//! at a time: their locations are looked up in one batch, sorted by pack and offset, read by
//! several threads at once, decompressed and checked against their ids, then handed out in disk
//! order.
//! A chunk that is missing or does not match its id stops the restore with an error naming the
//! chunk and the disk offset: wrong bytes are never written silently. Asked to ignore errors,
//! the reader writes zeros there instead and lists every damaged range in [`Restored`].
//!
//! Restored files and block devices are written past the page cache where the file system
//! allows (`O_DIRECT`: a large restore does not evict the host's cache; see `direct`), and not
//! fsynced (as `cp`, borg and restic do not): run `sync` when the file must be on disk before
//! going on.
//!
//! # Onto an existing disk
//! [`restore_changed`] reads the target, hashes it chunk by chunk and writes only what differs
//! from the point (a differential restore; see the `changed` module).
//!
//! # Exports
//! The [`export`] module serves points as NBD block devices (instant restore): random reads
//! checked chunk by chunk, holes reported, writes kept in a per-client overlay.
//!
//! # Files inside a point
//! [`PointDisk`] reads a point at any offset for `cairn-files` (which knows nothing of the
//! store): `ls`, `cat`, `extract`, `mount` and the server's browse pages.
//!
//! # Outputs
//! A restore never destroys what it writes over, nor leaves a partial file that looks finished:
//! the `output` module holds the rules (temporary name, rename on success, `force` to replace a
//! file, new or empty folders for chains).
//!
//! # VHDs
//! The VHD of a point has the point's id as its UUID and the point's time as its timestamp, so
//! restoring the same point twice gives the same VHD, and a differencing VHD restored later
//! names its parent correctly. A chain's files are named by [`vhd_file_name`].

mod changed;
mod direct;
pub mod export;
mod output;
pub mod partials;
pub mod point_disk;
mod raw;
mod reader;
pub mod standby;
mod vhd;

pub use changed::{Changed, restore_changed};
pub use export::{PointDevice, PointExports};
pub use output::Plan;
pub use point_disk::{PointDisk, SharedStore};
pub use reader::{Needed, PointReader};
pub use standby::{StandbyOptions, StandbyReport, standby};
pub use vhd::{chain_file_name, vhd_file_name};

use std::path::{Path, PathBuf};

use cairn_store::{RecoveryPoint, StoreRead};

use crate::output::Output;

/// What went wrong in a restore.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store failed or holds a bad chunk.
    #[error(transparent)]
    Store(#[from] cairn_store::Error),
    /// A chunk at a disk offset could not be read.
    #[error("disk offset {offset} of point {point}: {source}")]
    Chunk {
        /// The point.
        point: cairn_store::PointId,
        /// Where in the disk.
        offset: u64,
        /// What went wrong.
        #[source]
        source: cairn_store::Error,
    },
    /// Writing the output failed.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// The output.
        path: PathBuf,
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Writing a VHD failed.
    #[error(transparent)]
    Vhd(#[from] cairn_vhd::Error),
    /// A request that cannot be done.
    #[error("{0}")]
    Refused(String),
    /// A network target (an NBD export, an HTTP(S) import) failed.
    #[error("{target}: {what}")]
    Target {
        /// The target, without secrets.
        target: String,
        /// What went wrong (at which offset, for an NBD export).
        what: String,
    },
}

impl From<cairn_http::Error> for Error {
    fn from(e: cairn_http::Error) -> Self {
        match e {
            cairn_http::Error::Io { path, what, source } => Self::Io {
                path,
                what: what.to_owned(),
                source,
            },
            other => Self::Refused(other.to_string()),
        }
    }
}

/// Checks every rule a restore of `point` as `format` into `out` must pass (see the `output`
/// module) and says what it would write to: for a dry run; nothing is created or changed.
///
/// # Errors
/// What the restore itself would refuse with.
pub fn check(point: &RecoveryPoint, out: &Path, format: OutputFormat, force: bool) -> Result<Plan> {
    match format {
        OutputFormat::Raw => output::plan(out, force, Some(point.size)),
        OutputFormat::Vhd => output::plan(out, force, None),
        OutputFormat::VhdChain => output::plan_chain(out, force),
    }
}

/// Result of restore.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A range of a restored disk that could not be read and was written as zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damaged {
    /// The point.
    pub point: cairn_store::PointId,
    /// Disk offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Why.
    pub what: String,
}

/// The output format of a restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// A raw image (sparse when written to a file).
    Raw,
    /// One dynamic VHD, or with a base point one differencing VHD.
    Vhd,
    /// A folder: a dynamic VHD of the chain's first point, a differencing VHD for each later one.
    VhdChain,
}

/// How to restore.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    /// The output format.
    pub format: OutputFormat,
    /// With [`OutputFormat::Vhd`]: write a differencing VHD against this point.
    pub base: Option<&'a RecoveryPoint>,
    /// With [`OutputFormat::VhdChain`]: the chain's first point (an earlier point of the same
    /// disk); by default the newest key backup at or before the point, else the disk's oldest.
    pub chain_from: Option<&'a RecoveryPoint>,
    /// Write zeros for bad or missing chunks and list them, instead of stopping.
    pub ignore_errors: bool,
    /// Replace an existing file, or write a chain into a folder that is not empty.
    pub force: bool,
}

/// What a restore wrote.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    /// Files written.
    pub files: Vec<PathBuf>,
    /// Bytes written.
    pub bytes: u64,
    /// Ranges written as zeros because they could not be read (with errors ignored).
    pub damaged: Vec<Damaged>,
}

/// Restores `point` to `out` (`-` for stdout where the format allows). `progress` is called
/// with the disk bytes done.
///
/// With `ignore_errors`, bad or missing chunks are written as zeros and listed in
/// [`Restored::damaged`].
///
/// # Errors
/// Bad or missing chunks (nothing wrong is written silently), I/O errors, a base point of
/// another disk or size, an output that exists (without `force`) or whose folder does not.
/// On error no file that looks like a result is left, and what was there is untouched.
pub fn restore(
    store: &dyn StoreRead,
    point: &RecoveryPoint,
    out: &Path,
    opts: &Options<'_>,
    progress: &dyn Fn(u64),
) -> Result<Restored> {
    let ignore = opts.ignore_errors;
    if opts.base.is_some() && opts.format != OutputFormat::Vhd {
        return Err(Error::Refused("--base goes with --format vhd only".into()));
    }
    if opts.chain_from.is_some() && opts.format != OutputFormat::VhdChain {
        return Err(Error::Refused(
            "--from goes with --format vhd-chain only".into(),
        ));
    }
    // The readers' fetcher threads live in this scope: they end when their reader is dropped.
    std::thread::scope(|scope| match opts.format {
        OutputFormat::Raw => {
            let target = Output::open(out, opts.force, Some(point.size))?;
            let r = raw::restore_raw(scope, store, point, out, &target, ignore, progress)?;
            target.finish()?;
            Ok(r)
        }
        OutputFormat::Vhd => {
            let target = Output::open(out, opts.force, None)?;
            let r = vhd::restore_vhd(
                scope, store, point, opts.base, out, &target, ignore, progress,
            )?;
            target.finish()?;
            Ok(r)
        }
        OutputFormat::VhdChain => vhd::restore_chain(scope, store, point, out, opts, progress),
    })
}
