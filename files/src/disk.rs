//! A point read as a disk, at any offset, chunk by chunk: the chunks a read touches are looked
//! up in the point's tree and read from their packs (checked against their ids), a few kept for
//! the reads that follow (a file system reads its metadata in small, nearby pieces).

use std::sync::{Arc, Mutex};

use cairn_store::{ChunkRef, Found, PointLookup, RecoveryPoint, StoreRead};

/// A store read here or through `cairn serve`.
pub type SharedStore = Arc<dyn StoreRead + Send + Sync>;

use crate::{Error, Result};

/// Chunks kept for reads that come back to them (4 MiB... 64 MiB by chunk size).
const CACHED_CHUNKS: usize = 32;

/// What volumes are read from: a point's disk ([`PointDisk`]), or bytes in memory (an image
/// in a test or a fuzz target).
pub trait DiskRead: Send + Sync {
    /// Its size in bytes.
    fn size(&self) -> u64;

    /// Fills `buf` from byte `offset`.
    ///
    /// # Errors
    /// A read past the end ([`Error::Outside`]); the store's errors.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

impl DiskRead for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let bytes = usize::try_from(offset)
            .ok()
            .and_then(|o| self.get(o..o.checked_add(buf.len())?))
            .ok_or(Error::Outside {
                offset,
                len: buf.len() as u64,
                size: self.len() as u64,
            })?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

impl DiskRead for PointDisk {
    fn size(&self) -> u64 {
        PointDisk::size(self)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        PointDisk::read_at(self, offset, buf)
    }
}

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
    pub fn new(store: SharedStore, point: RecoveryPoint) -> Result<Self> {
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
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.point.size)
            .ok_or_else(|| Error::Outside {
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
    fn chunk_at(&self, i: u64) -> Result<Option<Arc<Vec<u8>>>> {
        if let Ok(cache) = self.cache.lock()
            && let Some((_, c)) = cache.iter().find(|(k, _)| *k == i)
        {
            return Ok(Some(Arc::clone(c)));
        }
        let id = match self.lookup.find(&*self.store, i)? {
            Found::Zeros { .. } | Found::Ref(ChunkRef::Zero) => return Ok(None),
            Found::Ref(ChunkRef::Data(id)) => id,
        };
        let bytes = Arc::new(self.store.read_chunk(&id).map_err(|e| Error::Chunk {
            point: self.point.short_id().to_owned(),
            offset: i * self.chunk,
            source: e,
        })?);
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

/// A run of a disk's bytes that a volume holds: `len` bytes at `disk` on the disk are the
/// volume's bytes from `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Where in the volume.
    pub at: u64,
    /// Where on the disk.
    pub disk: u64,
    /// How long.
    pub len: u64,
}

/// A volume of a disk, read from its start: a partition (one piece), or a logical volume
/// whose extents lie in several places (pieces in order, each after the last).
#[derive(Clone)]
pub struct Slice {
    disk: Arc<dyn DiskRead>,
    pieces: Arc<[Piece]>,
    len: u64,
    /// Where `std::io::Read` goes on from.
    pos: u64,
}

impl Slice {
    /// `len` bytes of `disk` from `start`.
    #[must_use]
    pub fn new(disk: Arc<dyn DiskRead>, start: u64, len: u64) -> Self {
        Self::of_pieces(
            disk,
            vec![Piece {
                at: 0,
                disk: start,
                len,
            }],
        )
    }

    /// The volume made of `pieces` (in order, each starting where the last ended).
    #[must_use]
    pub fn of_pieces(disk: Arc<dyn DiskRead>, pieces: Vec<Piece>) -> Self {
        let len = pieces.last().map_or(0, |p| p.at + p.len);
        Self {
            disk,
            pieces: pieces.into(),
            len,
            pos: 0,
        }
    }

    /// Its length.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it holds no byte.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fills `buf` from `offset` of the slice.
    ///
    /// # Errors
    /// A read past the slice's end, or the disk's errors.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.len)
        {
            return Err(Error::Outside {
                offset,
                len: buf.len() as u64,
                size: self.len,
            });
        }
        let mut done = 0usize;
        // The piece holding `offset`, then the ones after it.
        let first = self.pieces.partition_point(|p| p.at + p.len <= offset);
        for p in &self.pieces[first..] {
            if done == buf.len() {
                break;
            }
            let at = offset + done as u64;
            let within = at - p.at;
            let n = ((p.len - within) as usize).min(buf.len() - done);
            self.disk
                .read_at(p.disk + within, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }
}

impl ext4_view::Ext4Read for Slice {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.read_at(start_byte, dst).map_err(|e| Box::new(e) as _)
    }
}

impl std::io::Read for Slice {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.len.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        self.read_at(self.pos, &mut buf[..n])
            .map_err(std::io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl std::io::Seek for Slice {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let new = match to {
            std::io::SeekFrom::Start(n) => Some(n),
            std::io::SeekFrom::End(d) => self.len.checked_add_signed(d),
            std::io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| std::io::Error::other("a seek before the start"))?;
        Ok(self.pos)
    }
}
