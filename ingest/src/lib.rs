//! Backup ingest for cairn: a source (raw image, fixed/dynamic/differencing VHD, a stream on
//! stdin) is cut into the store's fixed chunks and committed as one recovery point.
//!
//! # Pipeline
//! A reader thread turns the source into batches of [`Piece`]s: chunk bytes to hash, or a ref
//! decided without reading (an unallocated VHD block is zeros; a block a differencing VHD does
//! not hold is the parent point's chunk). Batches go through a bounded channel to the caller's
//! thread, where rayon workers test for zeros, hash with BLAKE3, look the id up and compress
//! only what is new; the session then appends new chunks in order. Memory is bounded by the
//! channel depth times the batch size, whatever the disk's size.
//!
//! # stdin
//! A raw stream is read straight through. A dynamic or differencing VHD stream is read in one
//! pass, one block in memory, when its BAT lists the blocks in stream order (as Xen Orchestra,
//! qemu and cairn write them) and ends with its footer; otherwise it is spooled to a file in
//! the store's `tmp/` folder and read from there. It is never held whole in memory.
//!
//! # Differencing VHDs
//! A delta is applied to a parent point (the disk's latest, or `--parent`). Chunks of blocks the
//! delta does not hold keep the parent's ref unread; a chunk whose sectors the delta holds only
//! in part is completed from the parent's chunk per the sector bitmap. The delta's parent UUID
//! must be the UUID of the VHD the parent point was read from, unless the parent is given
//! explicitly: a delta applied to the wrong parent would be silent garbage.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use cairn_store::chunk::{self, ChunkKind, is_zero};
use cairn_store::{
    BackupStats, ChunkId, ChunkRef, EncodedChunk, NewPoint, RecoveryPoint, SourceInfo, Store,
};
use cairn_vhd::{BlockState, Chain, DiskType, Vhd};
use chrono::{DateTime, Utc};
use rayon::prelude::*;

/// Chunks per batch handed from the reader thread to the hashing workers.
const BATCH: usize = 32;
/// Batches in flight between the reader and the workers, and between the workers and the
/// writer (so reading, hashing + compressing, and appending to packs overlap).
const QUEUE_DEPTH: usize = 2;

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
    /// The source path, or `-` for stdin.
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
}

/// A chunk of the disk as the reader yields it.
#[derive(Debug)]
pub enum Piece {
    /// Bytes to hash and store.
    Data(Vec<u8>),
    /// Decided without reading: zeros, or the parent's chunk.
    Ref(ChunkRef, PieceOrigin),
}

/// Why a piece needed no reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceOrigin {
    /// Unallocated in the source.
    Unallocated,
    /// Taken from the parent point.
    Parent,
}

/// Something that yields the chunks of a disk, in order.
trait ChunkSource: Send {
    /// The next chunk, or `None` at the end.
    fn next_piece(&mut self) -> Result<Option<Piece>>;
    /// Bytes read from the source so far.
    fn bytes_read(&self) -> u64;
}

/// A raw image from any reader (file or stdin), read front to back.
struct RawSource<R> {
    reader: R,
    path: PathBuf,
    chunk: usize,
    offset: u64,
    done: bool,
}

impl<R: Read + Send> ChunkSource for RawSource<R> {
    fn next_piece(&mut self) -> Result<Option<Piece>> {
        if self.done {
            return Ok(None);
        }
        let mut buf = vec![0u8; self.chunk];
        let mut n = 0;
        while n < buf.len() {
            match self.reader.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(Error::Io {
                        path: self.path.clone(),
                        offset: self.offset + n as u64,
                        what: "reading",
                        source,
                    });
                }
            }
        }
        if n < buf.len() {
            self.done = true;
            if n == 0 {
                return Ok(None);
            }
            buf.truncate(n);
        }
        self.offset += n as u64;
        Ok(Some(Piece::Data(buf)))
    }

    fn bytes_read(&self) -> u64 {
        self.offset
    }
}

/// A raw source and what the point records of it.
fn raw_source<'a, R: Read + Send + 'a>(
    reader: R,
    path: &Path,
    chunk: u32,
    size: Option<u64>,
) -> (SourceInfo, Box<dyn ChunkSource + 'a>, Option<u64>) {
    let src = RawSource {
        reader,
        path: path.to_path_buf(),
        chunk: chunk as usize,
        offset: 0,
        done: false,
    };
    let info = SourceInfo {
        kind: "raw".into(),
        vhd_uuid: None,
        path: path.display().to_string(),
    };
    (info, Box::new(src), size)
}

/// A fixed or dynamic VHD: unallocated blocks are zeros, never read.
struct VhdSource {
    chain: Chain<File>,
    chunk: u64,
    index: u64,
    read: u64,
}

impl ChunkSource for VhdSource {
    fn next_piece(&mut self) -> Result<Option<Piece>> {
        let size = self.chain.disk_size();
        let start = self.index * self.chunk;
        if start >= size {
            return Ok(None);
        }
        self.index += 1;
        let len = (size - start).min(self.chunk);
        let bs = u64::from(self.chain.block_size());
        let block = (start / bs) as u32;
        if !self.chain.block_present(block)? {
            return Ok(Some(Piece::Ref(ChunkRef::Zero, PieceOrigin::Unallocated)));
        }
        let mut buf = vec![0u8; len as usize];
        self.chain.read_at(start, &mut buf)?;
        self.read += len;
        Ok(Some(Piece::Data(buf)))
    }

    fn bytes_read(&self) -> u64 {
        self.read
    }
}

/// A differencing VHD applied to a parent point's refs.
struct DeltaSource<'s> {
    vhd: Vhd<File>,
    path: PathBuf,
    store: &'s Store,
    parent: Vec<ChunkRef>,
    size: u64,
    chunk: u64,
    index: u64,
    read: u64,
}

impl ChunkSource for DeltaSource<'_> {
    fn next_piece(&mut self) -> Result<Option<Piece>> {
        let start = self.index * self.chunk;
        if start >= self.size {
            return Ok(None);
        }
        let i = self.index as usize;
        self.index += 1;
        let len = (self.size - start).min(self.chunk) as usize;
        let bs = u64::from(self.vhd.block_size());
        let sectors = len / 512;
        // Which sectors of this chunk the delta holds.
        let mut held = vec![false; sectors];
        let mut s = 0;
        while s < sectors {
            let pos = start + s as u64 * 512;
            let block = (pos / bs) as u32;
            let in_block = ((pos % bs) / 512) as usize;
            let span = ((bs / 512) as usize - in_block).min(sectors - s);
            if block < self.vhd.block_count()
                && let BlockState::Allocated { .. } = self
                    .vhd
                    .block_state(block)
                    .map_err(|e| e.in_file(&self.path))?
                && let Some(bitmap) = self
                    .vhd
                    .read_bitmap(block)
                    .map_err(|e| e.in_file(&self.path))?
            {
                for k in 0..span {
                    let bit = in_block + k;
                    held[s + k] = bitmap
                        .get(bit / 8)
                        .is_some_and(|b| b & (0x80 >> (bit % 8)) != 0);
                }
            }
            s += span;
        }
        let parent_ref = self.parent.get(i).copied().unwrap_or(ChunkRef::Zero);
        if !held.iter().any(|&h| h) {
            return Ok(Some(Piece::Ref(parent_ref, PieceOrigin::Parent)));
        }
        let mut buf = parent_base(self.store, parent_ref, &held, len)?;
        // Copy the held runs from the delta.
        let mut s = 0;
        while s < sectors {
            if !held[s] {
                s += 1;
                continue;
            }
            let run = s;
            while s < sectors
                && held[s]
                && (!(start + s as u64 * 512).is_multiple_of(bs) || s == run)
            {
                s += 1;
            }
            let pos = start + run as u64 * 512;
            let block = (pos / bs) as u32;
            let within = pos % bs;
            self.vhd
                .read_block_data(block, within, &mut buf[run * 512..s * 512])
                .map_err(|e| e.in_file(&self.path))?;
            self.read += ((s - run) * 512) as u64;
        }
        Ok(Some(Piece::Data(buf)))
    }

    fn bytes_read(&self) -> u64 {
        self.read
    }
}

/// The bytes a chunk of a differencing VHD starts from before its held sectors are copied in:
/// the parent's chunk when some sectors are not held, else zeros.
fn parent_base(store: &Store, parent_ref: ChunkRef, held: &[bool], len: usize) -> Result<Vec<u8>> {
    Ok(match (held.iter().all(|&h| h), parent_ref) {
        (true, _) | (false, ChunkRef::Zero) => vec![0u8; len],
        (false, ChunkRef::Data(id)) => {
            let mut b = store.read_chunk(&id)?;
            b.resize(len, 0);
            b
        }
    })
}

/// Whether bit `i` of a sector bitmap is set (most significant bit of byte 0 is sector 0).
fn bit(bitmap: &[u8], i: usize) -> bool {
    bitmap
        .get(i / 8)
        .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
}

/// A dynamic or differencing VHD read front to back from a stream (stdin), in one pass: the
/// BAT must list the blocks in the order they lie in the stream (as Xen Orchestra, qemu and
/// cairn write them) and a chunk must not span blocks. One block is in memory at a time.
struct StreamVhdSource<'s, R> {
    r: R,
    pos: u64,
    footer: cairn_vhd::Footer,
    block_size: u64,
    bitmap_size: u64,
    bat: Vec<u32>,
    chunk: u64,
    index: u64,
    current: Option<(u32, Vec<u8>, Vec<u8>)>,
    /// For a differencing VHD: the parent point's refs.
    parent: Option<(&'s Store, Vec<ChunkRef>)>,
    read: u64,
}

fn stream_err(offset: u64, what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io {
        path: "-".into(),
        offset,
        what,
        source,
    }
}

impl<R: Read> StreamVhdSource<'_, R> {
    fn skip_to(&mut self, to: u64) -> Result<()> {
        if to < self.pos {
            return Err(Error::Refused(format!(
                "stdin: data at offset {to} lies behind the stream position {}",
                self.pos
            )));
        }
        let n = std::io::copy(&mut (&mut self.r).take(to - self.pos), &mut std::io::sink())
            .map_err(stream_err(self.pos, "reading stdin"))?;
        if n != to - self.pos {
            return Err(Error::Io {
                path: "-".into(),
                offset: self.pos + n,
                what: "reading stdin",
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the VHD stream is truncated",
                ),
            });
        }
        self.pos = to;
        Ok(())
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        self.r.read_exact(buf).map_err(stream_err(
            self.pos,
            "reading stdin (truncated VHD stream?)",
        ))?;
        self.pos += buf.len() as u64;
        self.read += buf.len() as u64;
        Ok(())
    }

    /// Reads to the end and checks that the stream ends with the footer.
    fn finish(&mut self) -> Result<()> {
        let mut tail = Vec::new();
        self.r
            .read_to_end(&mut tail)
            .map_err(stream_err(self.pos, "reading stdin"))?;
        let end = self.pos + tail.len() as u64;
        let ok = tail.len() >= 512
            && cairn_vhd::Footer::decode(&tail[tail.len() - 512..], end - 512)
                .is_ok_and(|f| f == self.footer);
        if !ok {
            return Err(Error::Refused(format!(
                "stdin: the VHD stream does not end with its footer at offset {} (truncated or damaged)",
                end.saturating_sub(512)
            )));
        }
        Ok(())
    }
}

impl<R: Read + Send> ChunkSource for StreamVhdSource<'_, R> {
    fn next_piece(&mut self) -> Result<Option<Piece>> {
        let size = self.footer.current_size;
        let start = self.index * self.chunk;
        if start >= size {
            if self.index != u64::MAX {
                self.index = u64::MAX;
                self.finish()?;
            }
            return Ok(None);
        }
        let i = self.index as usize;
        self.index += 1;
        let len = (size - start).min(self.chunk) as usize;
        let block = (start / self.block_size) as u32;
        let within = (start % self.block_size) as usize;
        let sector = self
            .bat
            .get(block as usize)
            .copied()
            .unwrap_or(cairn_vhd::format::BAT_UNALLOCATED);
        let parent_ref = self.parent.as_ref().map_or(ChunkRef::Zero, |(_, refs)| {
            refs.get(i).copied().unwrap_or(ChunkRef::Zero)
        });
        if sector == cairn_vhd::format::BAT_UNALLOCATED {
            return Ok(Some(match self.parent {
                Some(_) => Piece::Ref(parent_ref, PieceOrigin::Parent),
                None => Piece::Ref(ChunkRef::Zero, PieceOrigin::Unallocated),
            }));
        }
        if self.current.as_ref().is_none_or(|(b, _, _)| *b != block) {
            self.skip_to(u64::from(sector) * 512)?;
            let mut bitmap = vec![0u8; self.bitmap_size as usize];
            self.read_exact(&mut bitmap)?;
            let mut data = vec![0u8; self.block_size as usize];
            self.read_exact(&mut data)?;
            self.current = Some((block, bitmap, data));
        }
        let Some((_, bitmap, data)) = &self.current else {
            return Ok(None);
        };
        let Some((store, _)) = &self.parent else {
            return Ok(Some(Piece::Data(data[within..within + len].to_vec())));
        };
        let first = within / 512;
        let held: Vec<bool> = (0..len / 512).map(|k| bit(bitmap, first + k)).collect();
        if !held.iter().any(|&h| h) {
            return Ok(Some(Piece::Ref(parent_ref, PieceOrigin::Parent)));
        }
        let mut buf = parent_base(store, parent_ref, &held, len)?;
        for (k, _) in held.iter().enumerate().filter(|(_, h)| **h) {
            buf[k * 512..(k + 1) * 512]
                .copy_from_slice(&data[within + k * 512..within + (k + 1) * 512]);
        }
        Ok(Some(Piece::Data(buf)))
    }

    fn bytes_read(&self) -> u64 {
        self.read
    }
}

/// What a worker made of one piece.
enum Hashed {
    Zero,
    Known(ChunkId),
    New(EncodedChunk),
    Ref(ChunkRef, PieceOrigin),
}

fn hash_piece(known: &cairn_store::KnownFilter<'_>, piece: Piece, level: i32) -> Result<Hashed> {
    match piece {
        Piece::Ref(r, o) => Ok(Hashed::Ref(r, o)),
        Piece::Data(d) if is_zero(&d) => Ok(Hashed::Zero),
        Piece::Data(d) => {
            let id = ChunkId::of(&d);
            if known.holds(&id)? {
                Ok(Hashed::Known(id))
            } else {
                Ok(Hashed::New(chunk::encode_with_id(
                    id,
                    &d,
                    ChunkKind::Data,
                    level,
                )))
            }
        }
    }
}

/// The point a differencing VHD applies to: `--parent`, or the disk's latest point when it was
/// read from the VHD the delta names as its parent (`parent_uuid`).
fn choose_parent(
    store: &Store,
    req: &Request,
    shown: &str,
    parent_uuid: &str,
    size: u64,
) -> Result<RecoveryPoint> {
    let parent = match &req.parent {
        Some(p) => p.clone(),
        None => store.latest(&req.vm, &req.disk)?.ok_or_else(|| {
            Error::Refused(format!(
                "{shown} is a differencing VHD, but disk {} of VM {} has no point to apply it to; back up the full disk first or pass --parent",
                req.disk, req.vm
            ))
        })?,
    };
    if req.parent.is_none() && parent.source.vhd_uuid.as_deref() != Some(parent_uuid) {
        return Err(Error::Refused(format!(
            "{shown}: the delta's parent is the VHD with UUID {parent_uuid}, but the latest point {} of {}/{} was read from {}; \
             applying it would give wrong data (pass --parent POINT to apply it anyway)",
            parent.short_id(),
            req.vm,
            req.disk,
            parent.source.vhd_uuid.as_deref().map_or_else(
                || format!("a {} source", parent.source.kind),
                |u| format!("the VHD with UUID {u}")
            )
        )));
    }
    if parent.size != size {
        return Err(Error::Refused(format!(
            "{shown}: the delta's disk is {size} bytes but its parent point {} is {} bytes",
            parent.short_id(),
            parent.size
        )));
    }
    if parent.chunk_size != store.config().chunk_size {
        return Err(Error::Refused(format!(
            "parent point {} has another chunk size",
            parent.short_id()
        )));
    }
    Ok(parent)
}

/// Reads the metadata at the front of a dynamic or differencing VHD stream whose first 512
/// bytes (the footer copy) are `head`. Returns the footer, header, BAT and every byte consumed,
/// or `None` with the bytes consumed when the stream cannot be read in one pass.
#[expect(clippy::type_complexity, reason = "a private helper's one-off tuple")]
fn stream_metadata(
    stdin: &mut impl Read,
    head: Vec<u8>,
    chunk: u32,
) -> Result<(
    Option<(cairn_vhd::Footer, cairn_vhd::Header, Vec<u32>)>,
    Vec<u8>,
)> {
    let mut meta = head;
    let Ok(footer) = cairn_vhd::Footer::decode(&meta, 0) else {
        return Ok((None, meta));
    };
    if !footer.disk_type.is_sparse() || footer.data_offset > 1 << 20 {
        return Ok((None, meta));
    }
    let mut fill = |meta: &mut Vec<u8>, to: u64| -> Result<()> {
        let need = to.saturating_sub(meta.len() as u64);
        let got = std::io::copy(&mut stdin.take(need), meta)
            .map_err(stream_err(meta.len() as u64, "reading stdin"))?;
        if got != need {
            return Err(Error::Io {
                path: "-".into(),
                offset: meta.len() as u64,
                what: "reading stdin",
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the VHD stream is truncated",
                ),
            });
        }
        Ok(())
    };
    let hoff = footer.data_offset;
    fill(&mut meta, hoff + 1024)?;
    let mut hb = [0u8; 1024];
    hb.copy_from_slice(&meta[hoff as usize..hoff as usize + 1024]);
    let header = cairn_vhd::Header::decode(&hb, hoff).map_err(|e| e.in_file("-"))?;
    let entries = u64::from(header.max_table_entries);
    let bat_end = header.table_offset + entries * 4;
    if header.block_size < chunk || bat_end > 64 << 20 || header.table_offset < hoff + 1024 {
        return Ok((None, meta));
    }
    fill(&mut meta, bat_end)?;
    let bat: Vec<u32> = meta[header.table_offset as usize..bat_end as usize]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let blocks = footer.current_size.div_ceil(u64::from(header.block_size)) as usize;
    let mut last = bat_end.div_ceil(512) * 512;
    for &s in bat
        .iter()
        .take(blocks)
        .filter(|&&s| s != cairn_vhd::format::BAT_UNALLOCATED)
    {
        let at = u64::from(s) * 512;
        if at < last {
            return Ok((None, meta));
        }
        last = at + header.bitmap_size() + u64::from(header.block_size);
    }
    Ok((Some((footer, header, bat)), meta))
}

/// Detects what a file is: a VHD when its last 512 bytes or first 8 bytes carry the footer
/// cookie.
fn looks_like_vhd(file: &mut File) -> std::io::Result<bool> {
    let len = file.seek(SeekFrom::End(0))?;
    let mut cookie = [0u8; 8];
    if len >= 512 {
        file.seek(SeekFrom::Start(len - 512))?;
        file.read_exact(&mut cookie)?;
        if &cookie == b"conectix" {
            return Ok(true);
        }
    }
    file.seek(SeekFrom::Start(0))?;
    let n = file.read(&mut cookie)?;
    Ok(n == 8 && &cookie == b"conectix")
}

/// A file spooled from stdin, removed on drop.
struct Spool(PathBuf);

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Makes one backup and commits it as a recovery point. `progress` is called with the disk
/// bytes processed so far (and once with the disk size, when it is known, as `(0, Some(size))`).
///
/// # Errors
/// A source that cannot be read or is not valid, a refused parent, store errors. On error
/// nothing is committed.
pub fn backup(
    store: &Store,
    req: &Request,
    progress: &(dyn Fn(u64, Option<u64>) + Sync),
) -> Result<RecoveryPoint> {
    let started = Instant::now();
    let chunk = store.config().chunk_size;
    let mut _spool = None;
    let mut path = req.source.clone();
    let mut stdin_raw: Option<(Vec<u8>, std::io::Stdin)> = None;
    let mut stream_vhd = None;
    if path == Path::new("-") {
        // Peek at the stream: a VHD (footer copy at offset 0) is spooled to disk, since its
        // BAT may send us anywhere; raw streams straight through.
        let mut stdin = std::io::stdin();
        let mut head = vec![0u8; 512];
        let mut n = 0;
        while n < head.len() {
            match stdin.read(&mut head[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(Error::Io {
                        path: "-".into(),
                        offset: n as u64,
                        what: "reading stdin",
                        source,
                    });
                }
            }
        }
        head.truncate(n);
        let is_vhd = match req.format {
            Format::Vhd => true,
            Format::Raw => false,
            Format::Auto => head.starts_with(b"conectix"),
        };
        let (streamable, head) = if is_vhd {
            stream_metadata(&mut stdin, head, chunk)?
        } else {
            (None, head)
        };
        if let Some((footer, header, bat)) = streamable {
            stream_vhd = Some((footer, header, bat, head.len() as u64, stdin));
        } else if is_vhd {
            std::fs::create_dir_all(&req.spool_dir).map_err(|source| Error::Io {
                path: req.spool_dir.clone(),
                offset: 0,
                what: "creating the spool folder",
                source,
            })?;
            let spool = req.spool_dir.join(format!("stdin-{}.vhd", uuid_hex()));
            let mut f = File::create(&spool).map_err(|source| Error::Io {
                path: spool.clone(),
                offset: 0,
                what: "creating the spool file",
                source,
            })?;
            f.write_all(&head)
                .and_then(|()| std::io::copy(&mut stdin, &mut f).map(|_| ()))
                .map_err(|source| Error::Io {
                    path: "-".into(),
                    offset: 0,
                    what: "spooling stdin",
                    source,
                })?;
            path = spool.clone();
            _spool = Some(Spool(spool));
        } else {
            stdin_raw = Some((head, stdin));
        }
    }

    let mut parent_used = req.parent.as_ref().map(|p| p.id.clone());
    let (source_info, mut src, size): (SourceInfo, Box<dyn ChunkSource + '_>, Option<u64>) =
        if let Some((footer, header, bat, pos, stdin)) = stream_vhd {
            let size = footer.current_size;
            let info = SourceInfo {
                kind: format!("vhd-{}", footer.disk_type.name()),
                vhd_uuid: Some(footer.uuid.to_string()),
                path: "-".into(),
            };
            let parent = if footer.disk_type == DiskType::Differencing {
                if req.key == KeyMode::Forced {
                    return Err(Error::Refused(
                        "a key backup reads the whole disk, and a differencing VHD on stdin \
                         comes without its parents: give the VHD's path (its parents beside it) \
                         or back up the full disk"
                            .into(),
                    ));
                }
                let p = choose_parent(store, req, "-", &header.parent_uuid.to_string(), size)?;
                let refs = store.chunk_refs(&p)?;
                parent_used = Some(p.id.clone());
                Some((store, refs))
            } else {
                parent_used = None;
                None
            };
            let src = StreamVhdSource {
                r: std::io::BufReader::with_capacity(1 << 20, stdin),
                pos,
                footer,
                block_size: u64::from(header.block_size),
                bitmap_size: header.bitmap_size(),
                bat,
                chunk: u64::from(chunk),
                index: 0,
                current: None,
                parent,
                read: pos,
            };
            (info, Box::new(src), Some(size))
        } else if let Some((head, stdin)) = stdin_raw {
            let reader = std::io::Cursor::new(head).chain(stdin);
            raw_source(reader, Path::new("-"), chunk, None)
        } else {
            let mut file = File::open(&path).map_err(|source| Error::Io {
                path: path.clone(),
                offset: 0,
                what: "opening",
                source,
            })?;
            let is_vhd = match req.format {
                Format::Vhd => true,
                Format::Raw => false,
                Format::Auto => looks_like_vhd(&mut file).map_err(|source| Error::Io {
                    path: path.clone(),
                    offset: 0,
                    what: "reading",
                    source,
                })?,
            };
            let shown = req.source.display().to_string();
            if is_vhd {
                let vhd = Vhd::open(file).map_err(|e| e.in_file(&req.source))?;
                let uuid = Some(vhd.footer().uuid.to_string());
                let size = vhd.disk_size();
                match vhd.disk_type() {
                    DiskType::Differencing => {
                        // A key backup reads the whole disk through the parent VHD files;
                        // when one is only due, a delta whose parents are gone applies as usual.
                        let chain = match req.key {
                            KeyMode::No => None,
                            KeyMode::Due => Chain::open(&req.source, |p| File::open(p)).ok(),
                            KeyMode::Forced => {
                                Some(Chain::open(&req.source, |p| File::open(p)).map_err(|e| {
                                    Error::Refused(format!(
                                        "a key backup reads the whole disk through the VHD's \
                                         parents, and they cannot be opened: {e}"
                                    ))
                                })?)
                            }
                        };
                        let src: Box<dyn ChunkSource + '_> = if let Some(chain) = chain {
                            parent_used = None;
                            Box::new(VhdSource {
                                chain,
                                chunk: u64::from(chunk),
                                index: 0,
                                read: 0,
                            })
                        } else {
                            let want = vhd
                                .header()
                                .map(|h| h.parent_uuid.to_string())
                                .unwrap_or_default();
                            let parent = choose_parent(store, req, &shown, &want, size)?;
                            let refs = store.chunk_refs(&parent)?;
                            parent_used = Some(parent.id.clone());
                            Box::new(DeltaSource {
                                vhd,
                                path: req.source.clone(),
                                store,
                                parent: refs,
                                size,
                                chunk: u64::from(chunk),
                                index: 0,
                                read: 0,
                            })
                        };
                        let info = SourceInfo {
                            kind: "vhd-differencing".into(),
                            vhd_uuid: uuid,
                            path: shown,
                        };
                        (info, src, Some(size))
                    }
                    kind => {
                        parent_used = None;
                        let src = VhdSource {
                            chain: Chain::single(req.source.clone(), vhd),
                            chunk: u64::from(chunk),
                            index: 0,
                            read: 0,
                        };
                        (
                            SourceInfo {
                                kind: format!("vhd-{}", kind.name()),
                                vhd_uuid: uuid,
                                path: shown,
                            },
                            Box::new(src),
                            Some(size),
                        )
                    }
                }
            } else {
                parent_used = None;
                let len = file
                    .seek(SeekFrom::End(0))
                    .and_then(|l| file.seek(SeekFrom::Start(0)).map(|_| l));
                let len = len.map_err(|source| Error::Io {
                    path: path.clone(),
                    offset: 0,
                    what: "reading",
                    source,
                })?;
                let reader = std::io::BufReader::with_capacity(1 << 20, file);
                raw_source(reader, &req.source, chunk, Some(len))
            }
        };
    progress(0, size);

    let mut session = store.session()?;
    let level = store.config().zstd_level;
    let mut refs: Vec<ChunkRef> = Vec::new();
    let mut stats = BackupStats::default();
    let mut logical = 0u64;
    let (tx, rx) = crossbeam_channel::bounded::<Result<Vec<(Piece, u64)>>>(QUEUE_DEPTH);
    let (htx, hrx) = crossbeam_channel::bounded::<Result<Vec<(Hashed, u64)>>>(QUEUE_DEPTH);
    let known = session.known_filter();
    let outcome: Result<u64> = std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            loop {
                let mut batch = Vec::with_capacity(BATCH);
                let mut err = None;
                while batch.len() < BATCH {
                    match src.next_piece() {
                        Ok(Some(p)) => {
                            let len = match &p {
                                Piece::Data(d) => d.len() as u64,
                                Piece::Ref(..) => u64::from(chunk),
                            };
                            batch.push((p, len));
                        }
                        Ok(None) => break,
                        Err(e) => {
                            err = Some(e);
                            break;
                        }
                    }
                }
                let end = batch.len() < BATCH || err.is_some();
                if !batch.is_empty() && tx.send(Ok(batch)).is_err() {
                    return src.bytes_read();
                }
                if let Some(e) = err {
                    let _ = tx.send(Err(e));
                    return src.bytes_read();
                }
                if end {
                    return src.bytes_read();
                }
            }
        });
        // Hashing and compressing on the rayon pool, one batch at a time, while the writer
        // below appends the previous batch. A chunk met twice in this backup is compressed
        // once: later copies go on as known.
        scope.spawn(move || {
            let mut emitted: HashSet<ChunkId> = HashSet::new();
            for batch in &rx {
                let out = batch.and_then(|batch| {
                    let lens: Vec<u64> = batch.iter().map(|(_, l)| *l).collect();
                    let hashed: Vec<Result<Hashed>> = batch
                        .into_par_iter()
                        .map(|(p, _)| hash_piece(&known, p, level))
                        .collect();
                    hashed
                        .into_iter()
                        .zip(lens)
                        .map(|(h, len)| {
                            Ok(match h? {
                                Hashed::New(enc) if !emitted.insert(enc.id) => {
                                    (Hashed::Known(enc.id), len)
                                }
                                other => (other, len),
                            })
                        })
                        .collect::<Result<Vec<_>>>()
                });
                let failed = out.is_err();
                if htx.send(out).is_err() || failed {
                    return;
                }
            }
        });
        // Owned here: if the writer stops early, dropping it stops the hasher, which drops
        // the reader's channel and stops the reader, so the scope never waits forever.
        let hrx = hrx;
        for batch in &hrx {
            for (h, len) in batch? {
                stats.chunks += 1;
                let r = match h {
                    Hashed::Zero => {
                        stats.zero_chunks += 1;
                        ChunkRef::Zero
                    }
                    Hashed::Known(id) => {
                        stats.known_chunks += 1;
                        ChunkRef::Data(id)
                    }
                    Hashed::New(enc) => {
                        if session.put(&enc)? {
                            stats.new_chunks += 1;
                            stats.new_plain_bytes += u64::from(enc.plain_len);
                        } else {
                            stats.known_chunks += 1;
                        }
                        ChunkRef::Data(enc.id)
                    }
                    Hashed::Ref(r, origin) => {
                        match (origin, r) {
                            (PieceOrigin::Parent, _) => stats.parent_chunks += 1,
                            (PieceOrigin::Unallocated, _) => stats.zero_chunks += 1,
                        }
                        r
                    }
                };
                refs.push(r);
                logical += len;
                progress(logical, size);
            }
        }
        reader
            .join()
            .map_err(|_| Error::Refused("the source reader thread panicked".into()))
    });
    let bytes_read = outcome?;
    let size = size.unwrap_or(logical);
    if size == 0 {
        return Err(Error::Refused(format!(
            "{}: the source is empty",
            req.source.display()
        )));
    }
    stats.logical_bytes = size;
    stats.bytes_read = bytes_read;
    // A key backup read the whole disk: nothing was applied to a parent point.
    stats.key = parent_used.is_none();
    stats.seconds = started.elapsed().as_secs_f64();
    let point = NewPoint {
        vm: req.vm.clone(),
        disk: req.disk.clone(),
        time: req.time,
        size,
        source: source_info,
        parent: parent_used,
        stats,
        run: req.run.clone(),
    };
    let mut rp = session.commit(point, &refs)?;
    rp.stats.seconds = started.elapsed().as_secs_f64();
    Ok(rp)
}

fn uuid_hex() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        Utc::now().timestamp_nanos_opt().unwrap_or_default()
    )
}
