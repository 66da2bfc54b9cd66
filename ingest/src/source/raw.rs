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
