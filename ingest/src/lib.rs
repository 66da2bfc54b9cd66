//! Backup ingest for cairn: a source (raw image, fixed/dynamic/differencing VHD, a stream on
//! stdin) is cut into the store's fixed chunks and committed as one recovery point.
//!
//! # Modules
//! - [`open`](crate::open): detects the source's format and chooses how to read it.
//! - `source`: the [`ChunkSource`](crate::source) trait, yielding chunks to read and runs of
//!   chunks decided unread; `source::raw` for raw images, `source::nbd` for NBD exports (holes
//!   from `base:allocation`, changed blocks from a dirty bitmap or XCP-ng's changed-block
//!   list, several connections), `source::vhd` for VHD files, chains
//!   and streams cut into chunks, whatever the VHD's block size (512 bytes to 256 MiB) against
//!   the store's chunk size (64 KiB to 2 MiB): a chunk is decided over its whole byte range, and
//!   each byte of the source is read at most once.
//! - `parent`: the point a delta applies to, and taking its tree's unchanged parts whole.
//! - `http`: an HTTP(S) download (XAPI's `export_raw_vdi`), read as a stream.
//! - `stream`: stdin or any reader: a raw stream read straight through; a VHD stream in one pass when its layout
//!   allows (Xen Orchestra, qemu and cairn write it so), else spooled to a file in the store's
//!   `tmp/` folder. Never held whole in memory.
//! - `dry_run`: a session that stores nothing, for `backup --dry-run`: what would be read and
//!   stored, counted.
//! - `pipeline`: reader thread → hashing and compression on rayon → pack writes, over bounded
//!   channels, so memory is bounded whatever the disk's size.
//!
//! # Differencing VHDs
//! A delta is applied to a parent point (the disk's latest, or `--parent`). Chunks of blocks the
//! delta does not hold keep the parent's ref unread; a chunk whose sectors the delta holds only
//! in part is completed from the parent's chunk per the sector bitmap. The delta's parent UUID
//! must be the UUID of the VHD the parent point was read from, unless the parent is given
//! explicitly: a delta applied to the wrong parent would be silent garbage.

mod dry_run;
mod http;
mod open;
mod parent;
mod pipeline;
mod source;
mod stream;

pub use dry_run::DryRun;
pub use http::{HttpOptions, is_http_url, redacted};
pub use open::foreign_format;
pub use source::nbd::{CBT_BLOCK, Changes};
pub use source::raw::Holes;

use std::path::PathBuf;
use std::time::Instant;

use cairn_store::point::VmKey;
use cairn_store::{Labels, NewPoint, RecoveryPoint, StagedPoint, Store, StoreRead, StoreWrite};
use chrono::{DateTime, Utc};

/// What went wrong in a backup.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The source is not a valid VHD.
    #[error(transparent)]
    Vhd(#[from] cairn_vhd::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] cairn_store::Error),
    /// Reading the source failed.
    #[error("{}: at offset {offset}: {what}: {source}", path.display())]
    Io {
        /// The source.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The backup is refused (wrong parent, size mismatch, bad arguments).
    #[error("{0}")]
    Refused(String),
    /// An NBD server failed or broke the protocol.
    #[error("{uri}: at offset {offset}: {what}")]
    Nbd {
        /// The export (its URI, without secrets).
        uri: String,
        /// Where.
        offset: u64,
        /// What went wrong.
        what: String,
    },
}

impl From<cairn_http::Error> for Error {
    fn from(e: cairn_http::Error) -> Self {
        match e {
            cairn_http::Error::Io { path, what, source } => Self::Io {
                path,
                offset: 0,
                what,
                source,
            },
            other => Self::Refused(other.to_string()),
        }
    }
}

/// Result of ingest.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to read a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Detect: a VHD footer (at the end, or its copy at the start) makes a VHD, else raw.
    Auto,
    /// A raw disk image.
    Raw,
    /// A fixed, dynamic or differencing VHD.
    Vhd,
}

/// What says which blocks of a network disk changed since its parent point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangedBlocks {
    /// The NBD server's `qemu:dirty-bitmap:NAME` context.
    DirtyBitmap(String),
    /// A file: XCP-ng's `VDI.list_changed_blocks` bitmap (base64), or `OFFSET LENGTH` lines.
    File(PathBuf),
}

/// Whether a backup must read the whole disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyMode {
    /// Apply a differencing VHD to its parent point (reading only what changed).
    #[default]
    No,
    /// A key backup is due by policy: read a differencing VHD through its parents when they
    /// can be opened, else apply it as usual (the point says it is not a key backup).
    Due,
    /// A key backup was asked for: fail when the whole disk cannot be read.
    Forced,
}

/// One backup to make.
#[derive(Debug, Clone)]
pub struct Request {
    /// The VM.
    pub vm: String,
    /// The disk.
    pub disk: String,
    /// The time the backup stands for.
    pub time: DateTime<Utc>,
    /// The source path, `-` for stdin, or an NBD URI (`nbd://HOST[:PORT]/EXPORT`,
    /// `nbd+unix:///EXPORT?socket=PATH`).
    pub source: PathBuf,
    /// How to read it.
    pub format: Format,
    /// The point to apply a differencing VHD to, given explicitly (skips the UUID check).
    pub parent: Option<RecoveryPoint>,
    /// Folder for spooling a VHD read from stdin (inside the store, so it is on the same disk).
    pub spool_dir: PathBuf,
    /// Whether to make a key backup: read the whole disk even from a differencing VHD
    /// (through its parent VHD files), so that every chunk is hashed and chunks marked bad or
    /// missing are stored afresh. Raw images and fixed or dynamic VHDs are always read whole.
    pub key: KeyMode,
    /// The backup run this disk belongs to (several disks of one VM backed up together).
    pub run: Option<String>,
    /// The size the disk must have: a raw stream that ends elsewhere is refused.
    pub expected_size: Option<u64>,
    /// A raw stream may be shorter than the disk's previous point (the disk shrank).
    pub allow_resize: bool,
    /// The VM's identity beyond its name (its history is that of this identity), tags, note.
    pub labels: Labels,
    /// Read the source as told even when it looks like something else (`--format raw` on a
    /// VHD, a raw disk that starts like a qcow2, VHDX, VMDK or VDI image).
    pub force: bool,
    /// The layout policy's budget, in percent of the disk's data: a backup that reads the whole
    /// disk may store again this much of the chunks it finds in packs the disk's latest point
    /// barely uses, so that restores of late generations stay fast (0: never).
    pub rewrite_percent: u32,
    /// Connections to an NBD server (reads spread over them).
    pub nbd_connections: usize,
    /// For an NBD source: what changed since the parent point (only that is read).
    pub changed_blocks: Option<ChangedBlocks>,
    /// For an HTTP(S) source: credentials and certificate checks.
    pub http: HttpOptions,
}

/// Makes one backup and commits it as a recovery point. `progress` is called with the disk
/// bytes processed so far (and once with the disk size, when it is known, as `(0, Some(size))`).
///
/// # Errors
/// A source that cannot be read or is not valid, a refused parent (or `--parent` given for a
/// source that is read whole), store errors. On error nothing is committed.
pub fn backup(
    store: &Store,
    req: &Request,
    progress: &(dyn Fn(u64, Option<u64>) + Sync),
) -> Result<RecoveryPoint> {
    let mut run = Run::new(store)?;
    run.add(req, None, progress)?;
    one(run.commit()?)
}

/// As [`backup`], reading the source from `input` (a raw image or a VHD stream, as on stdin)
/// instead of from `req.source`, which only names it in messages and in the point.
///
/// # Errors
/// As [`backup`].
pub fn backup_stream(
    store: &Store,
    req: &Request,
    input: Box<dyn std::io::Read + Send>,
    progress: &(dyn Fn(u64, Option<u64>) + Sync),
) -> Result<RecoveryPoint> {
    let mut run = Run::new(store)?;
    run.add(req, Some(input), progress)?;
    one(run.commit()?)
}

fn one(mut points: Vec<RecoveryPoint>) -> Result<RecoveryPoint> {
    match (points.pop(), points.is_empty()) {
        (Some(p), true) => Ok(p),
        _ => Err(Error::Refused(
            "a backup of one disk published another number of points".into(),
        )),
    }
}

/// The disks of one VM backed up together (what an admin backs up is a VM): each disk is read
/// and stored as it is added, and [`Run::commit`] publishes all of them at once, or none when
/// it fails or the process dies. Dropping a run without committing it publishes nothing.
pub struct Run<'a> {
    store: &'a dyn StoreRead,
    session: Box<dyn StoreWrite<'a> + 'a>,
    staged: Vec<StagedPoint>,
}

impl<'a> Run<'a> {
    /// Starts a run: takes nothing but a session of the store (opened for writing).
    ///
    /// # Errors
    /// A store opened read-only.
    pub fn new(store: &'a Store) -> Result<Self> {
        Ok(Self::over(store, Box::new(store.session()?)))
    }

    /// Starts a run that reads parents from `store` and writes through `session`: a local
    /// store's session, or an upload to `cairn serve` (the `cairn-remote` crate).
    #[must_use]
    pub fn over(store: &'a dyn StoreRead, session: Box<dyn StoreWrite<'a> + 'a>) -> Self {
        Self {
            store,
            session,
            staged: Vec::new(),
        }
    }

    /// Reads one disk (from `input` when given, else from `req.source`) and stores its chunks;
    /// returns the point as it will be published. `progress` is called with the disk bytes
    /// processed so far (and once with the disk size, when it is known, as `(0, Some(size))`).
    ///
    /// # Errors
    /// A source that cannot be read or is not valid, a refused parent (or `--parent` given for
    /// a source that is read whole), a disk already in this run, store errors.
    pub fn add(
        &mut self,
        req: &Request,
        input: Option<Box<dyn std::io::Read + Send>>,
        progress: &(dyn Fn(u64, Option<u64>) + Sync),
    ) -> Result<&RecoveryPoint> {
        if self.staged.iter().any(|s| s.point().disk == req.disk) {
            return Err(Error::Refused(format!(
                "disk {:?} is given twice in one run",
                req.disk
            )));
        }
        let store = self.store;
        let started = Instant::now();
        let chunk = store.config().chunk_size;
        let opened = open::open(store, req, input, chunk)?;
        progress(0, opened.size);
        // A full read meets every chunk of the disk: the layout policy may store again those
        // that sit in packs its latest point barely uses.
        if opened.parent.is_none()
            && req.rewrite_percent > 0
            && let Some(latest) = store.latest(&req.vm_key(), &req.disk)?
        {
            self.session.layout(&latest, req.rewrite_percent)?;
        }
        let level = store.config().zstd_level;
        let done = pipeline::run(
            store,
            &mut *self.session,
            opened.src,
            opened.parent.as_ref(),
            level,
            opened.size,
            progress,
        )?;
        let size = opened.size.unwrap_or(done.logical);
        if size == 0 {
            return Err(Error::Refused(format!(
                "{}: the source is empty",
                req.source.display()
            )));
        }
        check_stream_size(store, req, opened.size.is_none(), size)?;
        let mut info = opened.info;
        if opened
            .fixed_vhd
            .is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed))
        {
            info.kind = cairn_store::SourceKind::VhdFixed;
        }
        let mut stats = done.stats;
        stats.logical_bytes = size;
        stats.bytes_read = done.bytes_read;
        // A key backup read the whole disk: nothing was applied to a parent point.
        stats.key = opened.parent.is_none();
        let point = NewPoint {
            vm: req.vm.clone(),
            disk: req.disk.clone(),
            time: req.time,
            size,
            source: info,
            parent: opened.parent.map(|p| p.id),
            stats,
            run: req.run.clone(),
            labels: req.labels.clone(),
        };
        let mut staged = self.session.stage_tree(point, done.tree)?;
        staged.set_seconds(started.elapsed().as_secs_f64());
        self.staged.push(staged);
        self.staged
            .last()
            .map(StagedPoint::point)
            .ok_or_else(|| Error::Refused("no point staged".into()))
    }

    /// Publishes every disk added, together.
    ///
    /// # Errors
    /// Store errors; nothing is published then.
    pub fn commit(self) -> Result<Vec<RecoveryPoint>> {
        Ok(self.session.commit_run(self.staged)?)
    }
}

impl Request {
    /// The VM whose history this disk continues.
    #[must_use]
    pub fn vm_key(&self) -> VmKey {
        VmKey::of(&self.vm, &self.labels)
    }
}

/// A raw stream has no size of its own: one that ends early (a dropped `curl`, a killed
/// export) would otherwise be stored as a smaller disk and become the latest point. It must end
/// at `--size` when given, and never before the disk's previous point unless the disk shrank
/// (`--allow-resize`). A source of known size must match `--size` too.
fn check_stream_size(store: &dyn StoreRead, req: &Request, stream: bool, size: u64) -> Result<()> {
    let shown = req.source.display();
    if let Some(want) = req.expected_size {
        if size != want {
            return Err(Error::Refused(format!(
                "{shown}: the source holds {size} bytes, but --size says {want}; nothing was stored"
            )));
        }
        return Ok(());
    }
    if !stream || req.allow_resize {
        return Ok(());
    }
    if let Some(prev) = store.latest(&req.vm_key(), &req.disk)?
        && size < prev.size
    {
        return Err(Error::Refused(format!(
            "{shown}: the raw stream ended after {size} bytes, but the previous point {} of {}/{} \
             is {} bytes: a truncated stream? nothing was stored (pass --size BYTES to say what \
             the disk holds, or --allow-resize if it shrank)",
            prev.short_id(),
            req.vm,
            req.disk,
            prev.size
        )));
    }
    Ok(())
}
