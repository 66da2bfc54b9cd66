//! A point read as a disk at any offset, for the readers of files inside it (`cairn-files`):
//! the chunks a read touches are looked up in the point's tree and read from the store (a
//! folder, a bucket, a `cairn serve`), each checked against its id; the last few are kept for
//! the reads that follow (a file system reads its metadata in small, nearby pieces).

use std::sync::{Arc, Mutex};

use cairn_files::{DiskRead, Error as FilesError, Result as FilesResult};
use cairn_store::{ChunkRef, Found, PointLookup, RecoveryPoint, StoreRead};

/// A store read here or through `cairn serve`.
pub type SharedStore = Arc<dyn StoreRead + Send + Sync>;

/// Chunks kept for reads that come back to them (4 MiB... 64 MiB by chunk size).
const CACHED_CHUNKS: usize = 32;

/// A point's disk, read in place.
pub struct PointDisk {
    store: SharedStore,
    point: RecoveryPoint,
    lookup: PointLookup,
    chunk: u64,
    /// The chunks read last, newest last.
    cache: Mutex<Vec<(u64, Arc<Vec<u8>>)>>,
    /// Bytes read from the store so far.
    read: std::sync::atomic::AtomicU64,
}

impl PointDisk {
    /// The disk of `point` in `store`.
    ///
    /// # Errors
    /// A point whose tree cannot be read.
    pub fn new(store: SharedStore, point: RecoveryPoint) -> cairn_store::Result<Self> {
        let lookup = PointLookup::new(&point)?;
        let chunk = u64::from(store.config().chunk_size);
        Ok(Self {
            store,
            point,
            lookup,
            chunk,
            cache: Mutex::new(Vec::new()),
            read: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The disk's size in bytes.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.point.size
    }

    /// The point.
    #[must_use]
    pub fn point(&self) -> &RecoveryPoint {
        &self.point
    }

    /// Bytes of chunks read from the store so far (zeros cost none).
    #[must_use]
    pub fn bytes_read(&self) -> u64 {
        self.read.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Fills `buf` from disk offset `offset`.
    ///
    /// # Errors
    /// A read past the disk's end; a chunk that is missing or bad (named, with the offset).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> FilesResult<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.point.size)
            .ok_or_else(|| FilesError::Outside {
                offset,
                len: buf.len() as u64,
                size: self.point.size,
            })?;
        let mut at = offset;
        while at < end {
            let i = at / self.chunk;
            let within = (at - i * self.chunk) as usize;
            let n = ((end - at) as usize).min(self.chunk as usize - within);
            let out = &mut buf[(at - offset) as usize..(at - offset) as usize + n];
            match self.chunk_at(i)? {
                Some(c) => out.copy_from_slice(&c[within..within + n]),
                None => out.fill(0),
            }
            at += n as u64;
        }
        Ok(())
    }

    /// Chunk `i`'s bytes; `None` for zeros.
    fn chunk_at(&self, i: u64) -> FilesResult<Option<Arc<Vec<u8>>>> {
        if let Ok(cache) = self.cache.lock()
            && let Some((_, c)) = cache.iter().find(|(k, _)| *k == i)
        {
            return Ok(Some(Arc::clone(c)));
        }
        let offset = i * self.chunk;
        let failed = |e: cairn_store::Error| FilesError::Read {
            disk: format!("point {}", self.point.short_id()),
            offset,
            source: Box::new(e),
        };
        let id = match self.lookup.find(&*self.store, i).map_err(failed)? {
            Found::Zeros { .. } | Found::Ref(ChunkRef::Zero) => return Ok(None),
            Found::Ref(ChunkRef::Data(id)) => id,
        };
        let bytes = Arc::new(self.store.read_chunk(&id).map_err(failed)?);
        self.read
            .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHED_CHUNKS {
                cache.remove(0);
            }
            cache.push((i, Arc::clone(&bytes)));
        }
        Ok(Some(bytes))
    }
}

impl DiskRead for PointDisk {
    fn size(&self) -> u64 {
        PointDisk::size(self)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> FilesResult<()> {
        PointDisk::read_at(self, offset, buf)
    }
}
