//! VHD sources: a VHD file, a chain of them, or a stream, cut into the store's chunks.
//!
//! A VHD's block size and the store's chunk size are independent powers of two (VHD blocks from
//! 512 bytes to 256 MiB, chunks from 64 KiB to 2 MiB), so a chunk may lie inside one block or
//! cover many. Every decision is therefore made over the chunk's whole byte range, never from
//! the block holding its first byte: a chunk is unallocated only when no block it overlaps is
//! stored, and a delta holds a sector of it when the bitmap of the block holding that sector
//! says so. Each byte of the source is read at most once: a chunk reads only its own part of
//! each block, and a block's sector bitmap is read once however many chunks it spans.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;

use cairn_store::{ChunkRef, RefLookup};
use cairn_vhd::format::SECTOR_SIZE;
use cairn_vhd::{BlockState, Chain, StreamVhd, Vhd};

use super::{ChunkSource, Piece, PieceOrigin, run_before};
use crate::{Error, Result};

/// Byte ranges of a disk image that a VHD (or a chain) stores.
pub(crate) trait Blocks: Send {
    /// The disk's size in bytes (a multiple of 512).
    fn disk_size(&self) -> u64;
    /// Whether any byte of `offset..offset + len` is stored. `false`: the range reads as zeros
    /// (a full read) or as the parent's (a delta), without reading anything.
    fn stored(&mut self, offset: u64, len: u64) -> Result<bool>;
    /// The first offset at or after `offset` where a stored block may hold data (`offset`
    /// itself when its block is stored), or the disk's size when none is: the stretch before it
    /// is one run of zeros (or of the parent's chunks), found without reading.
    fn next_stored(&mut self, offset: u64) -> Result<u64>;
    /// Reads the content at `offset` (sector-aligned, a whole number of sectors): stored blocks'
    /// bytes, zeros elsewhere.
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// For a delta: reads into `buf` the sectors of `offset..offset + buf.len()` that this file
    /// holds itself (per the sector bitmaps of its blocks) and marks them in `held`, one entry
    /// per sector; the others are left untouched. Reads go forward only (a stream allows no
    /// other way): each block's bitmap, then its held sectors.
    fn read_held(&mut self, offset: u64, buf: &mut [u8], held: &mut [bool]) -> Result<()>;
    /// Checks what the source's end must hold (a stream's closing footer).
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
    /// Bytes read from the source so far.
    fn bytes_read(&self) -> u64;
}

/// The disk content of a chain of VHD files (or of one fixed, dynamic or differencing file with
/// its parents), as the hypervisor would see it.
pub(crate) struct ChainBlocks {
    pub(crate) chain: Chain<File>,
    pub(crate) read: u64,
    /// Per file of the chain, the last answer of [`Blocks::next_stored`]: `(asked, found)`, no
    /// block of that file stored in `asked..found`. Scans never cover a stretch twice.
    pub(crate) next: Vec<(u64, u64)>,
}

impl ChainBlocks {
    pub(crate) fn new(chain: Chain<File>) -> Self {
        Self {
            chain,
            read: 0,
            next: Vec::new(),
        }
    }
}

/// The first block of `count` blocks of `bs` bytes, from the one holding `offset`, for which
/// `stored` says yes: its offset (at least `offset`), or `end` when none.
fn first_stored(
    offset: u64,
    bs: u64,
    count: u32,
    end: u64,
    mut stored: impl FnMut(u32) -> cairn_vhd::Result<bool>,
) -> cairn_vhd::Result<u64> {
    let mut b = offset / bs;
    while b < u64::from(count) {
        if stored(b as u32)? {
            return Ok((b * bs).max(offset));
        }
        b += 1;
    }
    Ok(end)
}

impl Blocks for ChainBlocks {
    fn disk_size(&self) -> u64 {
        self.chain.disk_size()
    }

    fn stored(&mut self, offset: u64, len: u64) -> Result<bool> {
        Ok(self.chain.range_present(offset, len)?)
    }

    fn next_stored(&mut self, offset: u64) -> Result<u64> {
        let size = self.chain.disk_size();
        let levels = self.chain.levels();
        self.next.resize(levels.len(), (u64::MAX, 0));
        let mut best = size;
        for (level, memo) in levels.iter().zip(self.next.iter_mut()) {
            let found = if memo.0 <= offset && offset <= memo.1 {
                memo.1
            } else {
                let v = &level.vhd;
                let found = first_stored(
                    offset,
                    u64::from(v.block_size()),
                    v.block_count(),
                    size,
                    |b| Ok(v.block_state(b)? != BlockState::Unallocated),
                )
                .map_err(|e| e.in_file(&level.path))?;
                *memo = (offset, found);
                found
            };
            best = best.min(found.max(offset));
        }
        Ok(best)
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.chain.read_at(offset, buf)?;
        self.read += buf.len() as u64;
        Ok(())
    }

    fn read_held(&mut self, offset: u64, buf: &mut [u8], held: &mut [bool]) -> Result<()> {
        // A chain is the whole disk: it holds every sector.
        held.fill(true);
        self.read(offset, buf)
    }

    fn bytes_read(&self) -> u64 {
        self.read
    }
}

/// One sparse VHD, from a file or a stream: the block access [`SparseBlocks`] needs.
pub(crate) trait SparseFile: Send {
    fn disk_size(&self) -> u64;
    fn block_size(&self) -> u64;
    fn block_state(&self, index: u32) -> cairn_vhd::Result<BlockState>;
    /// The sector bitmap of an allocated block (one call per block: the caller caches it).
    fn bitmap(&mut self, index: u32) -> cairn_vhd::Result<Vec<u8>>;
    fn read_block_data(&mut self, index: u32, at: u64, buf: &mut [u8]) -> cairn_vhd::Result<()>;
    fn finish(&mut self) -> cairn_vhd::Result<()>;
    fn bytes_read(&self) -> u64;
}

/// A VHD file, read with seeks.
pub(crate) struct FileVhd {
    pub(crate) vhd: Vhd<File>,
    pub(crate) read: u64,
}

impl SparseFile for FileVhd {
    fn disk_size(&self) -> u64 {
        self.vhd.disk_size()
    }
    fn block_size(&self) -> u64 {
        u64::from(self.vhd.block_size())
    }
    fn block_state(&self, index: u32) -> cairn_vhd::Result<BlockState> {
        self.vhd.block_state(index)
    }
    fn bitmap(&mut self, index: u32) -> cairn_vhd::Result<Vec<u8>> {
        let b = self.vhd.read_bitmap(index)?.ok_or_else(|| {
            cairn_vhd::Error::Usage(format!("block {index} has no sector bitmap"))
        })?;
        self.read += b.len() as u64;
        Ok(b)
    }
    fn read_block_data(&mut self, index: u32, at: u64, buf: &mut [u8]) -> cairn_vhd::Result<()> {
        self.vhd.read_block_data(index, at, buf)?;
        self.read += buf.len() as u64;
        Ok(())
    }
    fn finish(&mut self) -> cairn_vhd::Result<()> {
        Ok(())
    }
    fn bytes_read(&self) -> u64 {
        self.read
    }
}

impl<R: Read + Send> SparseFile for StreamVhd<R> {
    fn disk_size(&self) -> u64 {
        StreamVhd::disk_size(self)
    }
    fn block_size(&self) -> u64 {
        u64::from(StreamVhd::block_size(self))
    }
    fn block_state(&self, index: u32) -> cairn_vhd::Result<BlockState> {
        StreamVhd::block_state(self, index)
    }
    fn bitmap(&mut self, index: u32) -> cairn_vhd::Result<Vec<u8>> {
        self.read_bitmap(index)?
            .map(<[u8]>::to_vec)
            .ok_or_else(|| cairn_vhd::Error::Usage(format!("block {index} has no sector bitmap")))
    }
    fn read_block_data(&mut self, index: u32, at: u64, buf: &mut [u8]) -> cairn_vhd::Result<()> {
        StreamVhd::read_block_data(self, index, at, buf).map(|_| ())
    }
    fn finish(&mut self) -> cairn_vhd::Result<()> {
        StreamVhd::finish(self).map(|_| ())
    }
    fn bytes_read(&self) -> u64 {
        self.position()
    }
}

/// One sparse VHD's stored ranges: unallocated blocks are zeros (or the parent's, in a delta);
/// sector bitmaps are read once per block.
pub(crate) struct SparseBlocks<F> {
    file: F,
    /// Where errors are reported: the file's path, or `-` for stdin.
    path: PathBuf,
    bitmap: Option<(u32, Vec<u8>)>,
}

impl<F: SparseFile> SparseBlocks<F> {
    pub(crate) fn new(file: F, path: PathBuf) -> Self {
        Self {
            file,
            path,
            bitmap: None,
        }
    }

    /// The blocks overlapping `offset..offset + len`, each with the part of the range it holds:
    /// `(block, offset within the block, offset within the range, length)`.
    fn pieces(&self, offset: u64, len: u64) -> impl Iterator<Item = (u32, u64, usize, usize)> {
        let bs = self.file.block_size();
        let end = offset + len;
        let mut pos = offset;
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let block = pos / bs;
            let within = pos % bs;
            let n = (bs - within).min(end - pos);
            let item = (block as u32, within, (pos - offset) as usize, n as usize);
            pos += n;
            Some(item)
        })
    }

    fn state(&self, block: u32) -> Result<BlockState> {
        self.file
            .block_state(block)
            .map_err(|e| Error::Vhd(e.in_file(&self.path)))
    }
}

impl<F: SparseFile> Blocks for SparseBlocks<F> {
    fn disk_size(&self) -> u64 {
        self.file.disk_size()
    }

    fn stored(&mut self, offset: u64, len: u64) -> Result<bool> {
        for (block, ..) in self.pieces(offset, len) {
            if self.state(block)? != BlockState::Unallocated {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn next_stored(&mut self, offset: u64) -> Result<u64> {
        let (bs, size) = (self.file.block_size(), self.file.disk_size());
        let count = size.div_ceil(bs) as u32;
        let file = &self.file;
        first_stored(offset, bs, count, size, |b| {
            Ok(file.block_state(b)? != BlockState::Unallocated)
        })
        .map_err(|e| Error::Vhd(e.in_file(&self.path)))
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let pieces: Vec<_> = self.pieces(offset, buf.len() as u64).collect();
        for (block, within, at, n) in pieces {
            let part = &mut buf[at..at + n];
            if self.state(block)? == BlockState::Unallocated {
                part.fill(0);
                continue;
            }
            self.file
                .read_block_data(block, within, part)
                .map_err(|e| Error::Vhd(e.in_file(&self.path)))?;
        }
        Ok(())
    }

    fn read_held(&mut self, offset: u64, buf: &mut [u8], held: &mut [bool]) -> Result<()> {
        const SECTOR: usize = SECTOR_SIZE as usize;
        let pieces: Vec<_> = self.pieces(offset, buf.len() as u64).collect();
        for (block, within, at, n) in pieces {
            if self.state(block)? == BlockState::Unallocated {
                continue;
            }
            if self.bitmap.as_ref().is_none_or(|(b, _)| *b != block) {
                let bitmap = self
                    .file
                    .bitmap(block)
                    .map_err(|e| Error::Vhd(e.in_file(&self.path)))?;
                self.bitmap = Some((block, bitmap));
            }
            let bitmap = self.bitmap.as_ref().map_or(&[][..], |(_, b)| b.as_slice());
            let first = (within / SECTOR_SIZE) as usize;
            let piece_held = &mut held[at / SECTOR..(at + n).div_ceil(SECTOR)];
            for (k, h) in piece_held.iter_mut().enumerate() {
                *h = bit(bitmap, first + k);
            }
            // Runs of held sectors, front to back.
            let runs = runs_of(piece_held);
            for (r0, r1) in runs {
                let from = at + r0 * SECTOR;
                let to = (at + r1 * SECTOR).min(at + n);
                self.file
                    .read_block_data(block, within + (r0 * SECTOR) as u64, &mut buf[from..to])
                    .map_err(|e| Error::Vhd(e.in_file(&self.path)))?;
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        self.file
            .finish()
            .map_err(|e| Error::Vhd(e.in_file(&self.path)))
    }

    fn bytes_read(&self) -> u64 {
        self.file.bytes_read()
    }
}

/// The runs of `true` in `flags`, as `(start, end)` index pairs.
fn runs_of(flags: &[bool]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < flags.len() {
        if flags[i] {
            let start = i;
            while i < flags.len() && flags[i] {
                i += 1;
            }
            out.push((start, i));
        } else {
            i += 1;
        }
    }
    out
}

/// Whether bit `i` of a sector bitmap is set (most significant bit of byte 0 is sector 0).
fn bit(bitmap: &[u8], i: usize) -> bool {
    bitmap
        .get(i / 8)
        .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
}

/// The parent point a delta applies to: its refs, looked up for the chunks the delta holds in
/// part (the pipeline reads those chunks).
pub(crate) struct ParentRefs<'s> {
    pub(crate) refs: RefLookup<'s>,
}

/// Cuts [`Blocks`] into chunks: a full read (unstored ranges are zeros) or, with a parent, a
/// delta (unstored ranges and sectors the bitmaps do not hold keep the parent's bytes).
pub(crate) struct VhdChunks<'s, B> {
    blocks: B,
    parent: Option<ParentRefs<'s>>,
    chunk: u64,
    index: u64,
    finished: bool,
}

impl<'s, B: Blocks> VhdChunks<'s, B> {
    pub(crate) fn new(blocks: B, chunk: u32, parent: Option<ParentRefs<'s>>) -> Self {
        Self {
            blocks,
            parent,
            chunk: u64::from(chunk),
            index: 0,
            finished: false,
        }
    }
}

impl<B: Blocks> ChunkSource for VhdChunks<'_, B> {
    fn next_piece(&mut self) -> Result<Option<Piece>> {
        let size = self.blocks.disk_size();
        let start = self.index * self.chunk;
        if start >= size {
            if !self.finished {
                self.finished = true;
                self.blocks.finish()?;
            }
            return Ok(None);
        }
        let origin = if self.parent.is_some() {
            PieceOrigin::Parent
        } else {
            PieceOrigin::Unallocated
        };
        // Chunks no stored block touches: zeros (a full read) or the parent's (a delta), as one
        // run, unread.
        let next = self.blocks.next_stored(start)?;
        let (chunks, bytes) = run_before(start, next, size, self.chunk);
        if chunks > 0 {
            self.index += chunks;
            return Ok(Some(Piece::Run {
                origin,
                chunks,
                bytes,
            }));
        }
        let i = self.index;
        self.index += 1;
        let len = (size - start).min(self.chunk);
        let one = Piece::Run {
            origin,
            chunks: 1,
            bytes: len,
        };
        let Some(parent) = &mut self.parent else {
            if !self.blocks.stored(start, len)? {
                return Ok(Some(one));
            }
            let mut buf = vec![0u8; len as usize];
            self.blocks.read(start, &mut buf)?;
            return Ok(Some(Piece::Data(buf)));
        };
        if !self.blocks.stored(start, len)? {
            return Ok(Some(one));
        }
        let mut buf = vec![0u8; len as usize];
        let mut held = vec![false; len.div_ceil(SECTOR_SIZE) as usize];
        self.blocks.read_held(start, &mut buf, &mut held)?;
        if !held.iter().any(|&h| h) {
            return Ok(Some(one));
        }
        let parent_ref = parent.refs.get(i)?;
        // Sectors the delta does not hold keep the parent's bytes (a zero chunk's are zeros
        // already).
        if let (false, ChunkRef::Data(base)) = (held.iter().all(|&h| h), parent_ref) {
            let sector = SECTOR_SIZE as usize;
            let keep = runs_of(&held.iter().map(|h| !h).collect::<Vec<_>>())
                .into_iter()
                .map(|(r0, r1)| (r0 * sector, (r1 * sector).min(buf.len())))
                .collect();
            return Ok(Some(Piece::Patch {
                bytes: buf,
                base,
                keep,
            }));
        }
        Ok(Some(Piece::Data(buf)))
    }

    fn bytes_read(&self) -> u64 {
        self.blocks.bytes_read()
    }
}
