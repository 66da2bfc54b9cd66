//! Restore for cairn: a recovery point re-synthesized as a raw image, one dynamic VHD, a VHD
//! chain (key + differencing VHDs), or one differencing VHD against a base point.
//!
//! # Reading
//! A [`PointReader`] serves a point's blocks in order. It fetches a window of chunks at a time:
//! their locations are looked up in one batch, sorted by pack and offset, read by several
//! threads at once, decompressed and checked against their ids, then handed out in disk order.
//! A chunk that is missing or does not match its id stops the restore with an error naming the
//! chunk and the disk offset: wrong bytes are never written silently. Asked to ignore errors,
//! the reader writes zeros there instead and lists every damaged range in [`Restored`].
//!
//! Restored files are not fsynced (as `cp`, borg and restic do not): run `sync` when the file
//! must be on disk before going on.
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

mod output;

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_store::{ChunkId, ChunkRef, RecoveryPoint, Store};
use cairn_vhd::format::DEFAULT_BLOCK_SIZE;
use cairn_vhd::{DiskSpec, ParentSpec, vhd_timestamp, write_sparse};
use rayon::prelude::*;

/// Bytes fetched per window (several chunks read in parallel, in pack order).
const WINDOW_BYTES: u64 = 16 << 20;
/// Bytes per write of a raw restore.
const BOUNCE_BYTES: usize = 1 << 20;

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
        point: String,
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
}

/// Result of restore.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A range of a restored disk that could not be read and was written as zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damaged {
    /// The point.
    pub point: String,
    /// Disk offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Why.
    pub what: String,
}

/// A point's reference list; with `ignore_errors`, a tree segment that cannot be read makes its
/// stretch of the disk zeros (listed) instead of an error.
///
/// # Errors
/// A missing or bad tree chunk, unless errors are ignored.
pub fn load_refs(
    store: &Store,
    point: &RecoveryPoint,
    ignore_errors: bool,
) -> Result<(Vec<ChunkRef>, Vec<Damaged>)> {
    if !ignore_errors {
        return Ok((store.chunk_refs(point)?, Vec::new()));
    }
    let mut damaged = Vec::new();
    let cs = u64::from(point.chunk_size);
    let seg_bytes = cairn_store::point::SEGMENT_REFS as u64 * cs;
    let mut refs = Vec::with_capacity(point.chunk_count() as usize);
    for (i, seg) in point.segment_ids().into_iter().enumerate() {
        let want =
            (point.chunk_count() as usize - refs.len()).min(cairn_store::point::SEGMENT_REFS);
        let got = seg
            .ok_or_else(|| format!("segment {i} is not a chunk id"))
            .and_then(|id| store.read_chunk(&id).map_err(|e| e.to_string()))
            .and_then(|b| cairn_store::point::decode_segment(&b));
        match got {
            Ok(r) if r.len() == want => refs.extend(r),
            other => {
                let what = match other {
                    Err(e) => format!("tree segment unreadable: {e}"),
                    Ok(r) => format!("tree segment holds {} refs, not {want}", r.len()),
                };
                let offset = i as u64 * seg_bytes;
                damaged.push(Damaged {
                    point: point.id.clone(),
                    offset,
                    len: (point.size - offset).min(seg_bytes),
                    what,
                });
                refs.extend(std::iter::repeat_n(ChunkRef::Zero, want));
            }
        }
    }
    Ok((refs, damaged))
}

/// One window of decoded chunks: `chunks` slots of the chunk size from chunk `first`.
struct Window {
    first: usize,
    chunks: usize,
    data: Vec<u8>,
    damaged: Vec<Damaged>,
}

/// Serves a point's chunks in disk order while a fetcher thread decodes the windows ahead, so
/// that reading and checking overlap with writing the output. Each window's locations are looked
/// up in one batch, read sorted by pack and offset with several reads in flight on the rayon
/// pool, and decoded straight into the slots of a recycled buffer. Memory: three windows.
pub struct PointReader {
    chunk_size: usize,
    size: u64,
    refs: Arc<Vec<ChunkRef>>,
    needed: Option<Arc<Vec<bool>>>,
    rx: crossbeam_channel::Receiver<Result<Window>>,
    recycle: crossbeam_channel::Sender<Vec<u8>>,
    current: Option<Window>,
    damaged: Vec<Damaged>,
}

impl PointReader {
    /// Starts reading `point` whose refs are `refs`, in the thread scope `scope`. `needed` says
    /// which chunks the caller will ask for (all when `None`); they must be asked for in
    /// increasing order. With `ignore_errors` bad or missing chunks read as zeros and are listed
    /// in [`Self::damaged`].
    pub fn start<'scope, 'env>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        store: &'env Store,
        point: &RecoveryPoint,
        refs: Vec<ChunkRef>,
        needed: Option<Vec<bool>>,
        ignore_errors: bool,
    ) -> Self {
        let cs = point.chunk_size as usize;
        let refs = Arc::new(refs);
        let needed = needed.map(Arc::new);
        let (tx, rx) = crossbeam_channel::bounded(1);
        let (recycle, recycled) = crossbeam_channel::bounded::<Vec<u8>>(3);
        let (point_c, refs_c, needed_c) = (point.clone(), Arc::clone(&refs), needed.clone());
        scope.spawn(move || {
            // Windows are aligned to multiples of their size, itself a multiple of the VHD
            // block's chunks, so a block never straddles two windows.
            let per = ((WINDOW_BYTES / cs as u64) as usize).max(1);
            let mut first = 0;
            while first < refs_c.len() {
                let end = (first + per).min(refs_c.len());
                let wanted: Vec<(usize, ChunkId)> = (first..end)
                    .filter(|i| needed_c.as_ref().is_none_or(|n| n[*i]))
                    .filter_map(|i| match refs_c[i] {
                        ChunkRef::Data(id) => Some((i, id)),
                        ChunkRef::Zero => None,
                    })
                    .collect();
                if !wanted.is_empty() {
                    let mut data = recycled.try_recv().unwrap_or_default();
                    if data.len() < (end - first) * cs {
                        data.resize((end - first) * cs, 0);
                    }
                    let msg = fetch(store, &point_c, first, &wanted, &mut data, ignore_errors).map(
                        |damaged| Window {
                            first,
                            chunks: end - first,
                            data,
                            damaged,
                        },
                    );
                    let failed = msg.is_err();
                    if tx.send(msg).is_err() || failed {
                        return;
                    }
                }
                first = end;
            }
        });
        Self {
            chunk_size: cs,
            size: point.size,
            refs,
            needed,
            rx,
            recycle,
            current: None,
            damaged: Vec::new(),
        }
    }

    /// The point's refs.
    #[must_use]
    pub fn refs(&self) -> &[ChunkRef] {
        &self.refs
    }

    /// The ranges read as zeros because they could not be read (only when errors are ignored).
    #[must_use]
    pub fn damaged(&self) -> &[Damaged] {
        &self.damaged
    }

    /// Whether chunk `i` is data the caller said it would read.
    fn wanted(&self, i: usize) -> bool {
        matches!(self.refs.get(i), Some(ChunkRef::Data(_)))
            && self.needed.as_ref().is_none_or(|x| x[i])
    }

    /// The bytes of the run of data chunks that starts at chunk `index` (which must be data),
    /// as far as it goes in the current window: one slice to write with one call. The run's
    /// length in chunks is its length in bytes divided by the chunk size, rounded up.
    ///
    /// # Errors
    /// As [`Self::read_chunks`].
    pub fn data_run(&mut self, index: usize) -> Result<&[u8]> {
        self.advance(index, 1)?;
        let Some(w) = &self.current else {
            return Err(Error::Refused(format!("chunk {index} holds no data")));
        };
        let mut end = index;
        while end < w.first + w.chunks && self.wanted(end) {
            end += 1;
        }
        let cs = self.chunk_size;
        let bytes_end = (end as u64 * cs as u64).min(self.size);
        let len = (bytes_end - index as u64 * cs as u64) as usize;
        let at = (index - w.first) * cs;
        Ok(&w.data[at..at + len])
    }

    /// Makes the current window the one holding chunks `index..index + n` when any of them is
    /// data to read.
    fn advance(&mut self, index: usize, n: usize) -> Result<()> {
        if (index..index + n).any(|i| self.wanted(i)) {
            loop {
                if let Some(w) = &self.current {
                    if index >= w.first && index + n <= w.first + w.chunks {
                        break;
                    }
                    if index < w.first {
                        return Err(Error::Refused(format!(
                            "chunk {index} asked for after chunk {}",
                            w.first
                        )));
                    }
                }
                let w = self
                    .rx
                    .recv()
                    .map_err(|_| Error::Refused(format!("chunk {index} is past the reader")))??;
                if let Some(old) = self.current.replace(w) {
                    let _ = self.recycle.try_send(old.data);
                }
                if let Some(w) = self.current.as_mut() {
                    self.damaged.append(&mut w.damaged);
                }
            }
        }
        Ok(())
    }

    /// Fills `buf` with the disk's bytes from chunk `index` on (`buf` is a whole number of
    /// chunks, or runs to the disk's end).
    ///
    /// # Errors
    /// A chunk that is missing or bad, or a chunk asked for out of order.
    pub fn read_chunks(&mut self, index: usize, buf: &mut [u8]) -> Result<()> {
        let cs = self.chunk_size;
        let n = buf.len().div_ceil(cs);
        self.advance(index, n)?;
        for (k, dst) in buf.chunks_mut(cs).enumerate() {
            let i = index + k;
            match (&self.current, self.wanted(i)) {
                (Some(w), true) => {
                    let at = (i - w.first) * cs;
                    dst.copy_from_slice(&w.data[at..at + dst.len()]);
                }
                _ => dst.fill(0),
            }
        }
        Ok(())
    }
}

/// Reads `wanted` (chunk index and id, all in the window from `first`) into `data`, one slot of
/// the chunk size each; returns the damaged ranges (zeros) when errors are ignored.
fn fetch(
    store: &Store,
    point: &RecoveryPoint,
    first: usize,
    wanted: &[(usize, ChunkId)],
    data: &mut [u8],
    ignore_errors: bool,
) -> Result<Vec<Damaged>> {
    let cs = point.chunk_size as usize;
    let ids: Vec<ChunkId> = wanted.iter().map(|(_, id)| *id).collect();
    let locs = store.locations(&ids)?;
    let mut slots: Vec<Option<&mut [u8]>> = data.chunks_mut(cs).map(Some).collect();
    let mut jobs = Vec::with_capacity(wanted.len());
    let mut failed: Vec<(usize, cairn_store::Error)> = Vec::new();
    for ((i, id), loc) in wanted.iter().zip(locs) {
        let slot = slots.get_mut(i - first).and_then(Option::take);
        match (loc, slot) {
            (Some(loc), Some(slot)) => jobs.push((*i, *id, loc, slot)),
            (_, slot) => {
                if let Some(s) = slot {
                    s.fill(0);
                }
                failed.push((*i, cairn_store::Error::MissingChunk(*id)));
            }
        }
    }
    jobs.sort_by_key(|(_, _, l, _)| (l.pack, l.offset));
    failed.extend(
        jobs.into_par_iter()
            .filter_map(|(i, id, loc, slot)| {
                store.read_into(&id, &loc, slot).err().map(|e| {
                    slot.fill(0);
                    (i, e)
                })
            })
            .collect::<Vec<_>>(),
    );
    failed.sort_by_key(|(i, _)| *i);
    let mut damaged = Vec::new();
    for (i, source) in failed {
        let offset = i as u64 * cs as u64;
        if !ignore_errors {
            return Err(Error::Chunk {
                point: point.id.clone(),
                offset,
                source,
            });
        }
        damaged.push(Damaged {
            point: point.id.clone(),
            offset,
            len: (point.size - offset).min(cs as u64),
            what: source.to_string(),
        });
    }
    Ok(damaged)
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

/// The file name cairn gives the VHD of a point: `<vm>-<disk>-<time>-<id12>.vhd`, the time in
/// UTC. The names are made readable and safe on any file system (each run of characters other
/// than ASCII letters, digits, `.`, `_` and `-` becomes one `_`, at most 48 kept); the id keeps the
/// name unique.
#[must_use]
pub fn vhd_file_name(p: &RecoveryPoint) -> String {
    format!(
        "{}-{}-{}-{}.vhd",
        file_label(&p.vm),
        file_label(&p.disk),
        p.time.format("%Y%m%dT%H%M%SZ"),
        p.short_id()
    )
}

/// A name as a readable piece of a file name (see [`vhd_file_name`]).
fn file_label(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    let out: String = out
        .trim_matches(|c| c == '_' || c == '.')
        .chars()
        .take(48)
        .collect();
    if out.is_empty() { "disk".into() } else { out }
}

/// The file name of the `index`-th VHD of a chain: the index first, so that name order is chain
/// order whatever the points' times.
#[must_use]
pub fn chain_file_name(index: usize, p: &RecoveryPoint) -> String {
    format!("{index:03}-{}", vhd_file_name(p))
}

fn point_uuid(p: &RecoveryPoint) -> uuid::Uuid {
    let mut b = [0u8; 16];
    if hex::decode_to_slice(&p.id, &mut b).is_err() {
        b = *blake3::hash(p.id.as_bytes())
            .as_bytes()
            .first_chunk::<16>()
            .unwrap_or(&[0; 16]);
    }
    uuid::Uuid::from_bytes(b)
}

use output::{Output, io_err};

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
    store: &Store,
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
            let target = Output::open(out, opts.force)?;
            let r = restore_raw(scope, store, point, out, &target, ignore, progress)?;
            target.finish()?;
            Ok(r)
        }
        OutputFormat::Vhd => {
            let target = Output::open(out, opts.force)?;
            let r = restore_vhd(
                scope, store, point, opts.base, out, &target, ignore, progress,
            )?;
            target.finish()?;
            Ok(r)
        }
        OutputFormat::VhdChain => restore_chain(scope, store, point, out, opts, progress),
    })
}

fn restore_raw<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    store: &'env Store,
    point: &RecoveryPoint,
    out: &Path,
    target: &Output,
    ignore_errors: bool,
    progress: &dyn Fn(u64),
) -> Result<Restored> {
    let (refs, mut damaged) = load_refs(store, point, ignore_errors)?;
    let mut reader = PointReader::start(scope, store, point, refs, None, ignore_errors);
    let cs = point.chunk_size as usize;
    // A regular file is written sparse; stdout, a block device (an LV, an iSCSI disk) or a
    // pipe get every byte, zeros included, in order.
    let file = target.regular_file();
    let dense = if file.is_none() {
        Some(target.writer()?)
    } else {
        None
    };
    if let Some(f) = file {
        // Sized first, so that every write lands inside the file: measured faster here than
        // writes that extend it past holes (4 of 4 interleaved runs, by 0.4-0.8 s on 4 GiB).
        f.set_len(point.size)
            .map_err(io_err(out, "setting the length"))?;
    }
    let n = reader.refs().len();
    if let Some(f) = file {
        // Holes stay holes; runs of data chunks are written in pieces of BOUNCE_BYTES.
        use std::os::unix::fs::FileExt;
        let mut bounce: Vec<u8> = Vec::with_capacity(BOUNCE_BYTES);
        let mut i = 0;
        while i < n {
            if reader.refs()[i] == ChunkRef::Zero {
                i += 1;
                continue;
            }
            let at = i as u64 * cs as u64;
            let run = reader.data_run(i)?;
            // Through a 1 MiB buffer this thread keeps warm: the kernel copies from it into the
            // page cache much faster than straight from the window, which the decoding threads
            // filled (measured: 3.6-4.1 s against 5.6-7.4 s for a 4 GiB point).
            for (k, part) in run.chunks(BOUNCE_BYTES).enumerate() {
                bounce.clear();
                bounce.extend_from_slice(part);
                let o = at + (k * BOUNCE_BYTES) as u64;
                f.write_all_at(&bounce, o)
                    .map_err(io_err(out, &format!("writing at offset {o}")))?;
            }
            i += run.len().div_ceil(cs);
            progress((i as u64 * cs as u64).min(point.size));
        }
    }
    if let Some(sink) = dense {
        let mut sink = BufWriter::with_capacity(BOUNCE_BYTES, sink);
        let mut buf = vec![0u8; cs];
        let mut done = 0u64;
        for i in 0..n {
            let len = (point.size - done).min(cs as u64) as usize;
            reader.read_chunks(i, &mut buf[..len])?;
            sink.write_all(&buf[..len])
                .map_err(io_err(out, &format!("writing at offset {done}")))?;
            done += len as u64;
            progress(done);
        }
        sink.flush().map_err(io_err(out, "flushing"))?;
    }
    // No fsync, as cp, borg and restic: the kernel writes the file back; `sync` it when it must
    // be on disk before going on.
    Ok(Restored {
        files: vec![out.to_path_buf()],
        bytes: point.size,
        damaged: {
            damaged.append(&mut reader.damaged);
            damaged
        },
    })
}

/// Refs grouped by VHD block: which blocks hold data, and which differ from a base.
fn block_refs(refs: &[ChunkRef], per_block: usize) -> Vec<&[ChunkRef]> {
    refs.chunks(per_block).collect()
}

/// Writes the VHD of `point` to `out`: dynamic, or differencing against `base` when given.
/// Returns the bytes written and the ranges written as zeros (with errors ignored).
#[expect(
    clippy::too_many_arguments,
    reason = "one private helper of the three VHD restores"
)]
fn write_point_vhd<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    store: &'env Store,
    point: &RecoveryPoint,
    refs: Vec<ChunkRef>,
    base: Option<(&RecoveryPoint, &[ChunkRef], String)>,
    (out, target): (&Path, &mut dyn Write),
    ignore_errors: bool,
    progress: &dyn Fn(u64),
) -> Result<(u64, Vec<Damaged>)> {
    if !point.size.is_multiple_of(512) {
        return Err(Error::Refused(format!(
            "point {} is {} bytes, not whole sectors: restore it as raw",
            point.short_id(),
            point.size
        )));
    }
    let cs = point.chunk_size as usize;
    let per_block = (DEFAULT_BLOCK_SIZE as usize / cs).max(1);
    let blocks = block_refs(&refs, per_block);
    let allocated: Vec<bool> = match base {
        None => blocks
            .iter()
            .map(|b| b.iter().any(|r| *r != ChunkRef::Zero))
            .collect(),
        Some((bp, brefs, _)) => {
            if bp.size != point.size || bp.chunk_size != point.chunk_size {
                return Err(Error::Refused(format!(
                    "base point {} is not of the same disk size",
                    bp.short_id()
                )));
            }
            let bblocks = block_refs(brefs, per_block);
            blocks.iter().zip(bblocks).map(|(a, b)| *a != b).collect()
        }
    };
    // Only the chunks of blocks the VHD holds are read.
    let needed: Vec<bool> = allocated
        .iter()
        .flat_map(|a| std::iter::repeat_n(*a, per_block))
        .take(refs.len())
        .collect();
    let mut reader = PointReader::start(scope, store, point, refs, Some(needed), ignore_errors);
    let spec = DiskSpec {
        size: point.size,
        block_size: DEFAULT_BLOCK_SIZE,
        uuid: point_uuid(point),
        timestamp: vhd_timestamp(point.time.timestamp()),
    };
    let parent = base.map(|(bp, _, name)| ParentSpec {
        uuid: point_uuid(bp),
        timestamp: vhd_timestamp(bp.time.timestamp()),
        relative_path: name,
        absolute_path: String::new(),
    });
    let mut sink = BufWriter::with_capacity(1 << 20, target);
    let bs = DEFAULT_BLOCK_SIZE as u64;
    let mut failure: Option<Error> = None;
    let written = write_sparse(&mut sink, &spec, parent.as_ref(), &allocated, |b, buf| {
        let first = b as usize * per_block;
        let start = u64::from(b) * bs;
        let len = (point.size - start).min(bs) as usize;
        buf.fill(0);
        if let Err(e) = reader.read_chunks(first, &mut buf[..len]) {
            let text = e.to_string();
            failure = Some(e);
            return Err(std::io::Error::other(text));
        }
        progress(start + len as u64);
        Ok(())
    });
    if let Some(e) = failure {
        return Err(e);
    }
    let written = written.map_err(|e| e.in_file(out))?;
    sink.flush().map_err(io_err(out, "flushing"))?;
    Ok((written, reader.damaged))
}

#[expect(
    clippy::too_many_arguments,
    reason = "the one VHD restore, beside restore_raw and restore_chain"
)]
fn restore_vhd<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    store: &'env Store,
    point: &RecoveryPoint,
    base: Option<&RecoveryPoint>,
    out: &Path,
    target: &Output,
    ignore_errors: bool,
    progress: &dyn Fn(u64),
) -> Result<Restored> {
    let base_refs;
    let base = match base {
        Some(b) => {
            if b.vm != point.vm || b.disk != point.disk {
                return Err(Error::Refused(format!(
                    "base point {} is of {}/{}, not of {}/{}",
                    b.short_id(),
                    b.vm,
                    b.disk,
                    point.vm,
                    point.disk
                )));
            }
            base_refs = store.chunk_refs(b)?;
            // The base's file as the first of a chain restored from it (`--format vhd-chain
            // --from BASE`), in the same folder.
            Some((b, base_refs.as_slice(), chain_file_name(0, b)))
        }
        None => None,
    };
    let (refs, mut damaged) = load_refs(store, point, ignore_errors)?;
    let mut w = target.writer()?;
    let (bytes, mut more) = write_point_vhd(
        scope,
        store,
        point,
        refs,
        base,
        (out, &mut w),
        ignore_errors,
        progress,
    )?;
    damaged.append(&mut more);
    Ok(Restored {
        files: vec![out.to_path_buf()],
        bytes,
        damaged,
    })
}

/// The points a chain ending at `point` holds, oldest first: from `from` (checked to be an
/// earlier point of the same disk), else from the newest key backup at or before `point`, else
/// from the disk's oldest point.
fn chain_points(
    store: &Store,
    point: &RecoveryPoint,
    from: Option<&RecoveryPoint>,
) -> Result<Vec<RecoveryPoint>> {
    let order = |p: &RecoveryPoint| (p.time, p.committed);
    let mut points: Vec<RecoveryPoint> = store
        .points()?
        .into_iter()
        .filter(|p| p.same_disk(point) && order(p) <= order(point))
        .collect();
    points.sort_by_key(order);
    let start = match from {
        Some(f) => points.iter().position(|p| p.id == f.id).ok_or_else(|| {
            Error::Refused(format!(
                "--from {} is not a point of {}/{} at or before {}",
                f.short_id(),
                point.vm,
                point.disk,
                point.short_id()
            ))
        })?,
        None => points.iter().rposition(|p| p.stats.key).unwrap_or(0),
    };
    Ok(points.split_off(start))
}

fn restore_chain<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    store: &'env Store,
    point: &RecoveryPoint,
    out: &Path,
    opts: &Options<'_>,
    progress: &dyn Fn(u64),
) -> Result<Restored> {
    let points = chain_points(store, point, opts.chain_from)?;
    let created = output::chain_folder(out, opts.force)?;
    let written = write_chain(scope, store, &points, out, opts.ignore_errors, progress);
    match written {
        Ok((restored, staged)) => {
            for s in staged {
                s.commit()?;
            }
            Ok(restored)
        }
        Err(e) => {
            if created {
                // The temporary files are gone with `staged`: the folder is empty again.
                let _ = std::fs::remove_dir(out);
            }
            Err(e)
        }
    }
}

/// Writes each VHD of a chain under a temporary name; returns them for renaming.
fn write_chain<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    store: &'env Store,
    points: &[RecoveryPoint],
    out: &Path,
    ignore_errors: bool,
    progress: &dyn Fn(u64),
) -> Result<(Restored, Vec<output::Staged>)> {
    let mut restored = Restored::default();
    let mut staged = Vec::new();
    let mut prev: Option<(RecoveryPoint, Vec<ChunkRef>, String)> = None;
    for (i, p) in points.iter().enumerate() {
        let name = chain_file_name(i, p);
        let path = out.join(&name);
        let file = output::Staged::new(&path);
        let mut f = file.create()?;
        let (refs, mut damaged) = load_refs(store, p, ignore_errors)?;
        let base = match &prev {
            Some((bp, brefs, bname)) if bp.size == p.size && bp.chunk_size == p.chunk_size => {
                Some((bp, brefs.as_slice(), bname.clone()))
            }
            _ => None,
        };
        let tmp = file.tmp().to_path_buf();
        staged.push(file);
        let (bytes, mut more) = write_point_vhd(
            scope,
            store,
            p,
            refs.clone(),
            base,
            (&tmp, &mut f),
            ignore_errors,
            progress,
        )?;
        restored.bytes += bytes;
        restored.damaged.append(&mut damaged);
        restored.damaged.append(&mut more);
        restored.files.push(path);
        prev = Some((p.clone(), refs, name));
    }
    Ok((restored, staged))
}
