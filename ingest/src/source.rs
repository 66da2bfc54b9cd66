//! What the pipeline reads: a [`ChunkSource`] yields a disk's chunks in order, as bytes to hash
//! or as runs of chunks decided without reading (holes, stretches a delta does not hold), so
//! that the cost of a backup follows the data, not the disk's size. [`RawSource`] reads a raw
//! stream front to back; [`SparseFileSource`] a raw file, skipping its holes.

use std::io::Read;
use std::path::PathBuf;

use crate::{Error, Result};

/// A stretch of the disk as a source yields it.
#[derive(Debug)]
pub(crate) enum Piece {
    /// One chunk's bytes, to hash and store.
    Data(Vec<u8>),
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

/// A raw image from any reader (file or stdin), read front to back.
pub(crate) struct RawSource<R> {
    reader: R,
    path: PathBuf,
    chunk: usize,
    offset: u64,
    done: bool,
}

impl<R> RawSource<R> {
    pub(crate) fn new(reader: R, path: PathBuf, chunk: u32) -> Self {
        Self {
            reader,
            path,
            chunk: chunk as usize,
            offset: 0,
            done: false,
        }
    }
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

/// A raw image in a file, read by offset: the file system's holes (found with `SEEK_DATA`) are
/// zeros that are never read, so a sparse 16 TiB file holding 1 GiB reads 1 GiB. A file that
/// cannot say where its holes are (a block device, a file system without `SEEK_DATA`) is read
/// whole, as before.
pub(crate) struct SparseFileSource {
    file: std::fs::File,
    path: PathBuf,
    chunk: u64,
    size: u64,
    offset: u64,
    /// The first offset at or after `offset` that may hold data (`size` past the last data);
    /// `None` when the file cannot tell.
    next_data: Option<u64>,
    read: u64,
}

impl SparseFileSource {
    pub(crate) fn new(file: std::fs::File, path: PathBuf, chunk: u32, size: u64) -> Self {
        let mut s = Self {
            file,
            path,
            chunk: u64::from(chunk),
            size,
            offset: 0,
            next_data: Some(0),
            read: 0,
        };
        s.next_data = s.seek_data(0);
        s
    }

    /// `lseek(SEEK_DATA)` from `at` (it moves only the file offset, which this source never
    /// uses: it reads with pread): the next data offset, `size` when only a hole is left,
    /// `None` when the file cannot tell.
    fn seek_data(&self, at: u64) -> Option<u64> {
        match rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Data(at)) {
            Ok(next) => Some(next),
            Err(rustix::io::Errno::NXIO) => Some(self.size),
            Err(_) => None,
        }
    }
}

impl ChunkSource for SparseFileSource {
    fn next_piece(&mut self) -> Result<Option<Piece>> {
        use std::os::unix::fs::FileExt;
        if self.offset >= self.size {
            return Ok(None);
        }
        let len = self.chunk.min(self.size - self.offset);
        let end = self.offset + len;
        if let Some(next) = self.next_data
            && next < self.offset
        {
            self.next_data = self.seek_data(self.offset);
        }
        if let Some(next) = self.next_data {
            let (chunks, bytes) = run_before(self.offset, next, self.size, self.chunk);
            if chunks > 0 {
                self.offset += bytes;
                return Ok(Some(Piece::Run {
                    origin: PieceOrigin::Unallocated,
                    chunks,
                    bytes,
                }));
            }
        }
        let mut buf = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut buf, self.offset)
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                offset: self.offset,
                what: "reading",
                source,
            })?;
        self.read += len;
        self.offset = end;
        Ok(Some(Piece::Data(buf)))
    }

    fn bytes_read(&self) -> u64 {
        self.read
    }
}
