//! What the pipeline reads: a [`ChunkSource`] yields a disk's chunks in order, as bytes to hash
//! or as refs decided without reading. [`RawSource`] reads a raw image front to back.

use std::io::Read;
use std::path::PathBuf;

use cairn_store::ChunkRef;

use crate::{Error, Result};

/// A chunk of the disk as a source yields it.
#[derive(Debug)]
pub(crate) enum Piece {
    /// Bytes to hash and store.
    Data(Vec<u8>),
    /// Decided without reading: zeros, or the parent's chunk.
    Ref(ChunkRef, PieceOrigin),
}

/// Why a piece needed no reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PieceOrigin {
    /// Unallocated in the source.
    Unallocated,
    /// Taken from the parent point.
    Parent,
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
