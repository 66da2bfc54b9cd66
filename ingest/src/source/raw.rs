//! Raw images: a stream read front to back, or a file read by offset with its holes skipped.

use std::io::Read;
use std::path::PathBuf;

use super::{ChunkSource, Piece, PieceOrigin, run_before};
use crate::{Error, Result};

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
    holes: Holes,
    read: u64,
}

/// Where a file's holes are, asked at increasing offsets: `lseek(SEEK_DATA)`, once per stretch
/// of holes (it moves only the file offset: readers of the file read by offset, or seek first).
/// A file that cannot tell (a block device, a file system without `SEEK_DATA`) has no holes.
#[derive(Debug)]
pub struct Holes {
    size: u64,
    /// The first offset at or after the last one asked about that may hold data (`size` past
    /// the last data); `None` when the file cannot tell.
    next: Option<u64>,
}

impl Holes {
    /// The holes of `file`, `size` bytes long.
    #[must_use]
    pub fn new(file: &std::fs::File, size: u64) -> Self {
        let mut h = Self { size, next: None };
        h.next = h.seek(file, 0);
        h
    }

    fn seek(&self, file: &std::fs::File, at: u64) -> Option<u64> {
        match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(at)) {
            Ok(next) => Some(next),
            Err(rustix::io::Errno::NXIO) => Some(self.size),
            Err(_) => None,
        }
    }

    /// The first offset at or after `at` that may hold data (`size` when none does); `None`
    /// when the file cannot tell. `at` never goes back between calls.
    pub fn next_data(&mut self, file: &std::fs::File, at: u64) -> Option<u64> {
        if let Some(next) = self.next
            && next < at
        {
            self.next = self.seek(file, at);
        }
        self.next
    }

    /// Whether `start..end` of `file` holds no data.
    pub fn covers(&mut self, file: &std::fs::File, start: u64, end: u64) -> bool {
        self.next_data(file, start).is_some_and(|next| next >= end)
    }
}

impl SparseFileSource {
    pub(crate) fn new(file: std::fs::File, path: PathBuf, chunk: u32, size: u64) -> Self {
        Self {
            holes: Holes::new(&file, size),
            file,
            path,
            chunk: u64::from(chunk),
            size,
            offset: 0,
            read: 0,
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
        if let Some(next) = self.holes.next_data(&self.file, self.offset) {
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
