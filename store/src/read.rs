//! Reading chunks: where the index says each is, the pack files kept open, and every read
//! checked against the chunk's id.

use std::fs::File;
use std::sync::Arc;

use crate::chunk::{self, ChunkId};
use crate::error::{Error, Result};
use crate::index::{CF_CHUNKS, Location};
use crate::pack::{self, PackId};
use crate::store::Store;

impl Store {
    /// Where a chunk is stored, if the store holds it.
    ///
    /// # Errors
    /// Index errors.
    pub fn location(&self, id: &ChunkId) -> Result<Option<Location>> {
        let v = self
            .db
            .get_cf(self.cf(CF_CHUNKS)?, id.0)
            .map_err(self.index_err())?;
        v.map(|b| self.decode_location(&id.0, &b)).transpose()
    }

    /// Where many chunks are stored (one batched lookup).
    ///
    /// # Errors
    /// Index errors.
    pub fn locations(&self, ids: &[ChunkId]) -> Result<Vec<Option<Location>>> {
        let cf = self.cf(CF_CHUNKS)?;
        self.db
            .multi_get_cf(ids.iter().map(|id| (cf, id.0)))
            .into_iter()
            .zip(ids)
            .map(|(r, id)| {
                r.map_err(self.index_err())?
                    .map(|b| self.decode_location(&id.0, &b))
                    .transpose()
            })
            .collect()
    }

    /// The open file of pack `pack`; `None` when the pack is not here but in the bucket.
    pub(crate) fn pack_file(&self, pack: PackId) -> Result<Option<Arc<File>>> {
        let mut files = self
            .files
            .lock()
            .map_err(|_| Error::Internal("the pack file cache was poisoned by a panic".into()))?;
        if let Some(f) = files.get(&pack) {
            return Ok(Some(Arc::clone(f)));
        }
        let path = pack.path(&self.packs_dir());
        let opened = File::open(&path);
        if self.bucket.is_some()
            && matches!(&opened, Err(e) if e.kind() == std::io::ErrorKind::NotFound)
        {
            return Ok(None);
        }
        let f = Arc::new(opened.map_err(|e| {
            let what = if e.kind() == std::io::ErrorKind::NotFound {
                "opening a pack: the pack file is gone (removed or lost); `cairn verify` lists \
                 what it damages, and a key backup (`cairn backup --key`) stores its chunks \
                 afresh"
            } else {
                "opening a pack"
            };
            Error::io(&path, what)(e)
        })?);
        if files.len() > 512 {
            files.clear();
        }
        files.insert(pack, Arc::clone(&f));
        Ok(Some(f))
    }

    /// Reads a chunk at a known location and checks it against its id.
    ///
    /// # Errors
    /// [`Error::BadChunk`] when it cannot be read, decoded, or does not hash to its id.
    pub fn read_at(&self, id: &ChunkId, loc: &Location) -> Result<Vec<u8>> {
        let mut plain = vec![0u8; loc.plain_len as usize];
        self.read_into(id, loc, &mut plain)?;
        Ok(plain)
    }

    /// Reads a chunk at a known location into the front of `out` and checks it against its
    /// id; the stored bytes pass through a buffer each thread keeps, so nothing is allocated.
    ///
    /// # Errors
    /// [`Error::BadChunk`] when it cannot be read, decoded, or does not hash to its id.
    pub fn read_into(&self, id: &ChunkId, loc: &Location, out: &mut [u8]) -> Result<()> {
        thread_local! {
            static STORED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        STORED.with_borrow_mut(|stored| {
            let header = self.read_frame(id, loc, stored)?;
            chunk::decode_into(self.chunk_keys(), &header.stored(stored), out)
                .map_err(|e| chunk_error(id, loc, e))
        })
    }

    /// The frame of chunk `id` at `loc`: its header, its stored bytes into `stored`.
    fn read_frame(
        &self,
        id: &ChunkId,
        loc: &Location,
        stored: &mut Vec<u8>,
    ) -> Result<pack::FrameHeader> {
        // A tree chunk of a store in a bucket: from this machine's cache when it holds it (a
        // walk reads its tree chunks one after the other: a round trip each otherwise).
        let cached = loc.kind == chunk::ChunkKind::Tree && self.bucket.is_some();
        if cached && let Some(h) = self.tree_cache().get(self.chunk_keys(), id, stored) {
            return Ok(h);
        }
        // The bucket's own failures (after its retries) are not damage: they stop the reader.
        let header = self.frame_into(loc, stored).map_err(|e| match e {
            e @ Error::Objects { .. } => e,
            e => bad_chunk(id, loc, e.to_string()),
        })?;
        if header.id != *id {
            return Err(bad_chunk(
                id,
                loc,
                format!("the frame there holds chunk {}", header.id),
            ));
        }
        if cached {
            self.tree_cache().put(&header, stored);
        }
        Ok(header)
    }

    /// A chunk as its pack holds it (compressed or plain, as stored), checked against its id
    /// (decoded and hashed): what a copy of the chunk to another store sends, without
    /// compressing it again.
    ///
    /// # Errors
    /// [`Error::MissingChunk`] or [`Error::BadChunk`].
    pub fn read_encoded(&self, id: &ChunkId) -> Result<crate::EncodedChunk> {
        let loc = self.location(id)?.ok_or(Error::MissingChunk(*id))?;
        self.encoded_at(id, &loc)
    }

    /// As [`Store::read_encoded`], from the frame at `loc`.
    pub(crate) fn encoded_at(&self, id: &ChunkId, loc: &Location) -> Result<crate::EncodedChunk> {
        let (stored, loc) = (self.stored_at(id, loc)?, *loc);
        // Checked into a buffer each thread keeps: a fresh 256 KiB one per chunk costs an mmap,
        // its page faults and an munmap.
        thread_local! {
            static PLAIN: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        PLAIN
            .with_borrow_mut(|plain| chunk::check(self.chunk_keys(), &stored.stored(), plain))
            .map_err(|what| bad_chunk(id, &loc, what))?;
        Ok(stored)
    }

    /// A chunk as its pack holds it, its frame checked (magic, CRC, id) but its bytes not
    /// decoded: for a reader that checks the chunk against its id itself (a client of `cairn
    /// serve` does), so that the bytes are not decoded and hashed twice.
    ///
    /// # Errors
    /// [`Error::MissingChunk`], or [`Error::BadChunk`] when the frame cannot be read.
    pub fn read_stored(&self, id: &ChunkId) -> Result<crate::EncodedChunk> {
        Ok(self.read_stored_at(id)?.0)
    }

    fn read_stored_at(&self, id: &ChunkId) -> Result<(crate::EncodedChunk, Location)> {
        let loc = self.location(id)?.ok_or(Error::MissingChunk(*id))?;
        Ok((self.stored_at(id, &loc)?, loc))
    }

    /// The frame of `id` at `loc`, as stored (its frame checked, its bytes not decoded).
    fn stored_at(&self, id: &ChunkId, loc: &Location) -> Result<crate::EncodedChunk> {
        let mut bytes = Vec::new();
        let header = self.read_frame(id, loc, &mut bytes)?;
        Ok(crate::EncodedChunk {
            id: *id,
            kind: header.kind,
            codec: header.codec,
            plain_len: header.plain_len,
            bytes,
        })
    }

    /// Reads a chunk by id and checks it.
    ///
    /// # Errors
    /// [`Error::MissingChunk`] or [`Error::BadChunk`].
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let loc = self.location(id)?.ok_or(Error::MissingChunk(*id))?;
        self.read_at(id, &loc)
    }
}

/// A chunk at `loc` that cannot be read or is not what its id says.
/// A chunk that did not decode: [`Error::Sealed`] for one sealed from a reader without the
/// key, else [`Error::BadChunk`].
pub(crate) fn chunk_error(id: &ChunkId, loc: &Location, e: chunk::ChunkError) -> Error {
    match e {
        chunk::ChunkError::Locked => Error::Sealed(*id),
        e => bad_chunk(id, loc, e),
    }
}

pub(crate) fn bad_chunk(id: &ChunkId, loc: &Location, what: impl std::fmt::Display) -> Error {
    Error::BadChunk {
        id: *id,
        where_: format!("pack {} offset {}", loc.pack.to_hex(), loc.offset),
        what: what.to_string(),
    }
}
