//! What the pipeline reads: a [`ChunkSource`] yields a disk's chunks in order, as bytes to hash
//! or as runs of chunks decided without reading (holes, stretches a delta does not hold), so
//! that the cost of a backup follows the data, not the disk's size.
//!
//! - `raw`: a raw stream read front to back; a raw file, its holes skipped (`SEEK_DATA`).
//! - `vhd`: VHD files, chains and streams, whatever their block size against the chunk size,
//!   full or as a delta on a parent point.
//! - `nbd`: an NBD export, its holes from `base:allocation` never read, or only the blocks a
//!   dirty bitmap or changed-block list names, applied to a parent point.
//!
//! The trait stays inside the crate: every source (files, block devices, stdin, HTTP(S)
//! streams, NBD) lives here, and the pipeline is the only consumer.

pub(crate) mod nbd;
pub(crate) mod raw;
pub(crate) mod vhd;

use crate::Result;

/// A stretch of the disk as a source yields it.
#[derive(Debug)]
pub(crate) enum Piece {
    /// One chunk's bytes, to hash and store.
    Data(Vec<u8>),
    /// One chunk a delta holds in part: its bytes, where the byte ranges `keep` are still to
    /// be taken from the parent's chunk `base` (read and checked by the hashing workers, in
    /// parallel, not by the source's thread).
    Patch {
        /// The chunk's bytes as the delta holds them.
        bytes: Vec<u8>,
        /// The parent's chunk at the same place.
        base: cairn_store::ChunkId,
        /// Byte ranges of the chunk the delta does not hold.
        keep: Vec<(usize, usize)>,
    },
    /// Chunks decided without reading: zeros, or the parent point's.
    Run {
        /// Why they need no reading.
        origin: PieceOrigin,
        /// How many chunks.
        chunks: u64,
        /// Bytes of disk they cover (the last chunk of a disk may be short).
        bytes: u64,
    },
}

/// Why a run needed no reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PieceOrigin {
    /// Unallocated in the source: zeros.
    Unallocated,
    /// Taken from the parent point.
    Parent,
}

impl Piece {
    /// Bytes of disk the piece covers.
    pub(crate) fn len(&self) -> u64 {
        match self {
            Self::Data(d) | Self::Patch { bytes: d, .. } => d.len() as u64,
            Self::Run { bytes, .. } => *bytes,
        }
    }
}

/// Fills the byte ranges `keep` of `bytes` from `base` (a parent's chunk; bytes past its end
/// stay as they are: zeros).
pub(crate) fn patch(bytes: &mut [u8], base: &[u8], keep: &[(usize, usize)]) {
    for &(from, to) in keep {
        let avail = base.len().min(to).min(bytes.len());
        if from < avail {
            bytes[from..avail].copy_from_slice(&base[from..avail]);
        }
    }
}

/// The run of whole chunks from byte `start` (a chunk boundary) up to the chunk holding byte
/// `next` (the next byte that may hold data; `size` or more when none does), in a disk of
/// `size` bytes cut in chunks of `chunk`: `(chunks, bytes)`, `(0, 0)` when the chunk at `start`
/// may hold data.
pub(crate) fn run_before(start: u64, next: u64, size: u64, chunk: u64) -> (u64, u64) {
    let end = if next >= size {
        size
    } else {
        next / chunk * chunk
    };
    if end <= start {
        return (0, 0);
    }
    ((end - start).div_ceil(chunk), end - start)
}

/// Something that yields the chunks of a disk, in order.
pub(crate) trait ChunkSource: Send {
    /// The next chunk, or `None` at the end (after checking whatever the source's end must
    /// hold, such as a stream's closing footer).
    fn next_piece(&mut self) -> Result<Option<Piece>>;
    /// Bytes read from the source so far.
    fn bytes_read(&self) -> u64;
}
