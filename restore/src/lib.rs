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
//! # VHDs
//! The VHD of a point has the point's id as its UUID and the point's time as its timestamp, so
//! restoring the same point twice gives the same VHD, and a differencing VHD restored later
//! names its parent correctly. A chain's files are named by [`vhd_file_name`].

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use cairn_store::{ChunkId, ChunkRef, RecoveryPoint, Store};
use cairn_vhd::format::DEFAULT_BLOCK_SIZE;
use cairn_vhd::{DiskSpec, ParentSpec, vhd_timestamp, write_sparse};
use rayon::prelude::*;

/// Bytes fetched per window (several chunks read in parallel, in pack order).
const WINDOW_BYTES: u64 = 32 << 20;

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

/// Reads the chunks of a point in order, a window at a time.
pub struct PointReader<'s> {
    store: &'s Store,
    point: RecoveryPoint,
    refs: Vec<ChunkRef>,
    /// Decoded chunks `window_first..window_first + window_chunks`, one slot of the chunk size
    /// each; the buffer is reused from window to window.
    window: Vec<u8>,
    window_first: usize,
    window_chunks: usize,
    /// Write zeros for bad or missing chunks (and list them) instead of failing.
    ignore_errors: bool,
    damaged: Vec<Damaged>,
}

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

impl<'s> PointReader<'s> {
    /// Loads the point's reference list.
    ///
    /// # Errors
    /// A missing or bad tree chunk.
    pub fn new(store: &'s Store, point: &RecoveryPoint) -> Result<Self> {
        Self::open(store, point, false)
    }

    /// Loads the point's reference list; with `ignore_errors`, a tree segment that cannot be
    /// read makes its stretch of the disk zeros (listed in [`Self::damaged`]) instead of an
    /// error, and so do bad or missing chunks later.
    ///
    /// # Errors
    /// A missing or bad tree chunk, unless errors are ignored.
    pub fn open(store: &'s Store, point: &RecoveryPoint, ignore_errors: bool) -> Result<Self> {
        let mut damaged = Vec::new();
        let refs = if ignore_errors {
            let cs = u64::from(point.chunk_size);
            let seg_bytes = cairn_store::point::SEGMENT_REFS as u64 * cs;
            let mut refs = Vec::with_capacity(point.chunk_count() as usize);
            for (i, seg) in point.segment_ids().into_iter().enumerate() {
                let want = (point.chunk_count() as usize - refs.len())
                    .min(cairn_store::point::SEGMENT_REFS);
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
            refs
        } else {
            store.chunk_refs(point)?
        };
        Ok(Self {
            store,
            point: point.clone(),
            refs,
            window: Vec::new(),
            window_first: 0,
            window_chunks: 0,
            ignore_errors,
            damaged,
        })
    }

    /// The ranges written as zeros because they could not be read (only when errors are
    /// ignored).
    #[must_use]
    pub fn damaged(&self) -> &[Damaged] {
        &self.damaged
    }

    /// The point's refs.
    #[must_use]
    pub fn refs(&self) -> &[ChunkRef] {
        &self.refs
    }

    /// Fetches chunks `first..first+n` into the window buffer (reused from window to window):
    /// locations in one batch, reads sorted by pack and offset, several in flight, each chunk
    /// decoded straight into its slot and checked. Zero chunks are not fetched.
    fn fetch(&mut self, first: usize, n: usize) -> Result<()> {
        let cs = self.point.chunk_size as usize;
        let end = (first + n).min(self.refs.len());
        let need = (end - first) * cs;
        if self.window.len() < need {
            self.window.resize(need, 0);
        }
        self.window_first = first;
        self.window_chunks = end - first;
        let wanted: Vec<(usize, ChunkId)> = (first..end)
            .filter_map(|i| match self.refs[i] {
                ChunkRef::Data(id) => Some((i, id)),
                ChunkRef::Zero => None,
            })
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let ids: Vec<ChunkId> = wanted.iter().map(|(_, id)| *id).collect();
        let locs = self.store.locations(&ids)?;
        let mut slots: Vec<Option<&mut [u8]>> =
            self.window[..need].chunks_mut(cs).map(Some).collect();
        let mut jobs = Vec::with_capacity(wanted.len());
        let mut failed: Vec<(usize, cairn_store::Error)> = Vec::new();
        for ((i, id), loc) in wanted.into_iter().zip(locs) {
            let slot = slots[i - first].take();
            match (loc, slot) {
                (Some(loc), Some(slot)) => jobs.push((i, id, loc, slot)),
                (_, slot) => {
                    if let Some(s) = slot {
                        s.fill(0);
                    }
                    failed.push((i, cairn_store::Error::MissingChunk(id)));
                }
            }
        }
        jobs.sort_by_key(|(_, _, l, _)| (l.pack, l.offset));
        let store = self.store;
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
        for (i, source) in failed {
            let offset = i as u64 * cs as u64;
            if !self.ignore_errors {
                // Nothing of this window is served after an error.
                self.window_chunks = 0;
                return Err(Error::Chunk {
                    point: self.point.id.clone(),
                    offset,
                    source,
                });
            }
            self.damaged.push(Damaged {
                point: self.point.id.clone(),
                offset,
                len: (self.point.size - offset).min(cs as u64),
                what: source.to_string(),
            });
        }
        Ok(())
    }

    /// Fills `buf` with the disk's bytes from chunk `index` on (`buf` is a whole number of
    /// chunks, or runs to the disk's end). Fetches a window ahead when `buf` is not in the
    /// current one.
    ///
    /// # Errors
    /// A chunk that is missing or bad.
    pub fn read_chunks(&mut self, index: usize, buf: &mut [u8]) -> Result<()> {
        let cs = self.point.chunk_size as usize;
        let n = buf.len().div_ceil(cs);
        let in_window =
            index >= self.window_first && index + n <= self.window_first + self.window_chunks;
        if !in_window {
            let window = ((WINDOW_BYTES / cs as u64) as usize).max(n);
            self.fetch(index, window)?;
        }
        for (k, dst) in buf.chunks_mut(cs).enumerate() {
            let i = index + k;
            match self.refs.get(i) {
                Some(ChunkRef::Data(_)) => {
                    let at = (i - self.window_first) * cs;
                    dst.copy_from_slice(&self.window[at..at + dst.len()]);
                }
                _ => dst.fill(0),
            }
        }
        Ok(())
    }
}

/// The output format of a restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// A raw image (sparse when written to a file).
    Raw,
    /// One dynamic VHD, or with a base point one differencing VHD.
    Vhd,
    /// A folder: a dynamic VHD of the disk's oldest point, a differencing VHD for each later one.
    VhdChain,
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

/// The file name cairn gives the VHD of a point: `<vm>-<disk>-<time>-<id12>.vhd`.
#[must_use]
pub fn vhd_file_name(p: &RecoveryPoint) -> String {
    format!(
        "{}-{}-{}-{}.vhd",
        p.vm,
        p.disk,
        p.time.format("%Y%m%dT%H%M%SZ"),
        p.short_id()
    )
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

fn io_err(path: &Path, what: &str) -> impl FnOnce(std::io::Error) -> Error {
    let (path, what) = (path.to_path_buf(), what.to_owned());
    move |source| Error::Io { path, what, source }
}

/// Restores `point` to `out` (`-` for stdout where the format allows). `progress` is called
/// with the disk bytes done.
///
/// With `ignore_errors`, bad or missing chunks are written as zeros and listed in
/// [`Restored::damaged`].
///
/// # Errors
/// Bad or missing chunks (nothing wrong is written silently), I/O errors, a base point of
/// another disk or size.
pub fn restore(
    store: &Store,
    point: &RecoveryPoint,
    out: &Path,
    format: OutputFormat,
    base: Option<&RecoveryPoint>,
    ignore_errors: bool,
    progress: &dyn Fn(u64),
) -> Result<Restored> {
    match (format, base) {
        (OutputFormat::Raw, None) => restore_raw(store, point, out, ignore_errors, progress),
        (OutputFormat::Vhd, base) => restore_vhd(store, point, base, out, ignore_errors, progress),
        (OutputFormat::VhdChain, None) => restore_chain(store, point, out, ignore_errors, progress),
        (_, Some(_)) => Err(Error::Refused("--base goes with --format vhd only".into())),
    }
}

fn restore_raw(
    store: &Store,
    point: &RecoveryPoint,
    out: &Path,
    ignore_errors: bool,
    progress: &dyn Fn(u64),
) -> Result<Restored> {
    let mut reader = PointReader::open(store, point, ignore_errors)?;
    let cs = point.chunk_size as usize;
    let to_stdout = out == Path::new("-");
    let mut file = if to_stdout {
        None
    } else {
        Some(File::create(out).map_err(io_err(out, "creating"))?)
    };
    let mut stdout = BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    let mut buf = vec![0u8; cs];
    let mut done = 0u64;
    for i in 0..reader.refs().len() {
        let len = (point.size - done).min(cs as u64) as usize;
        let zero = reader.refs()[i] == ChunkRef::Zero;
        match &mut file {
            Some(f) => {
                if !zero {
                    reader.read_chunks(i, &mut buf[..len])?;
                    f.seek(SeekFrom::Start(done))
                        .map_err(io_err(out, "seeking"))?;
                    f.write_all(&buf[..len])
                        .map_err(io_err(out, &format!("writing at offset {done}")))?;
                }
            }
            None => {
                reader.read_chunks(i, &mut buf[..len])?;
                stdout
                    .write_all(&buf[..len])
                    .map_err(io_err(out, "writing to stdout"))?;
            }
        }
        done += len as u64;
        progress(done);
    }
    if let Some(f) = file {
        // No fsync, as cp, borg and restic: the kernel writes the file back; `sync` it when
        // it must be on disk before going on.
        f.set_len(point.size)
            .map_err(io_err(out, "setting the length"))?;
    } else {
        stdout.flush().map_err(io_err(out, "flushing stdout"))?;
    }
    Ok(Restored {
        files: vec![out.to_path_buf()],
        bytes: point.size,
        damaged: reader.damaged,
    })
}

/// Refs grouped by VHD block: which blocks hold data, and which differ from a base.
fn block_refs(refs: &[ChunkRef], per_block: usize) -> Vec<&[ChunkRef]> {
    refs.chunks(per_block).collect()
}

/// Writes the VHD of `point` to `out`: dynamic, or differencing against `base` when given.
fn write_point_vhd(
    reader: &mut PointReader<'_>,
    base: Option<(&RecoveryPoint, &[ChunkRef])>,
    out: &Path,
    progress: &dyn Fn(u64),
) -> Result<u64> {
    let point = reader.point.clone();
    let point = &point;
    if !point.size.is_multiple_of(512) {
        return Err(Error::Refused(format!(
            "point {} is {} bytes, not whole sectors: restore it as raw",
            point.short_id(),
            point.size
        )));
    }
    let cs = point.chunk_size as usize;
    let per_block = (DEFAULT_BLOCK_SIZE as usize / cs).max(1);
    let blocks = block_refs(reader.refs(), per_block);
    let allocated: Vec<bool> = match base {
        None => blocks
            .iter()
            .map(|b| b.iter().any(|r| *r != ChunkRef::Zero))
            .collect(),
        Some((bp, brefs)) => {
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
    let spec = DiskSpec {
        size: point.size,
        block_size: DEFAULT_BLOCK_SIZE,
        uuid: point_uuid(point),
        timestamp: vhd_timestamp(point.time.timestamp()),
    };
    let parent = base.map(|(bp, _)| ParentSpec {
        uuid: point_uuid(bp),
        timestamp: vhd_timestamp(bp.time.timestamp()),
        relative_path: vhd_file_name(bp),
        absolute_path: String::new(),
    });
    let to_stdout = out == Path::new("-");
    let sink: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(File::create(out).map_err(io_err(out, "creating"))?)
    };
    let mut sink = BufWriter::with_capacity(1 << 20, sink);
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
    Ok(written)
}

fn restore_vhd(
    store: &Store,
    point: &RecoveryPoint,
    base: Option<&RecoveryPoint>,
    out: &Path,
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
            Some((b, base_refs.as_slice()))
        }
        None => None,
    };
    let mut reader = PointReader::open(store, point, ignore_errors)?;
    let bytes = write_point_vhd(&mut reader, base, out, progress)?;
    Ok(Restored {
        files: vec![out.to_path_buf()],
        bytes,
        damaged: reader.damaged,
    })
}

fn restore_chain(
    store: &Store,
    point: &RecoveryPoint,
    out: &Path,
    ignore_errors: bool,
    progress: &dyn Fn(u64),
) -> Result<Restored> {
    std::fs::create_dir_all(out).map_err(io_err(out, "creating the folder"))?;
    let mut points: Vec<RecoveryPoint> = store
        .points()?
        .into_iter()
        .filter(|p| {
            p.vm == point.vm
                && p.disk == point.disk
                && (p.time, p.committed) <= (point.time, point.committed)
        })
        .collect();
    points.sort_by_key(|p| (p.time, p.committed));
    let mut restored = Restored::default();
    let mut prev: Option<(RecoveryPoint, Vec<ChunkRef>)> = None;
    for p in &points {
        let path = out.join(vhd_file_name(p));
        let mut reader = PointReader::open(store, p, ignore_errors)?;
        let refs = reader.refs().to_vec();
        let base = match &prev {
            Some((bp, brefs)) if bp.size == p.size && bp.chunk_size == p.chunk_size => {
                Some((bp, brefs.as_slice()))
            }
            _ => None,
        };
        restored.bytes += write_point_vhd(&mut reader, base, &path, progress)?;
        restored.damaged.append(&mut reader.damaged);
        restored.files.push(path);
        prev = Some((p.clone(), refs));
    }
    Ok(restored)
}
