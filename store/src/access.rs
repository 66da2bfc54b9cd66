//! What reading and writing a store needs, whether the store is a folder here or behind `cairn
//! serve`: one small interface with two sides. [`StoreRead`] is what walks a point's tree,
//! finds a parent and restores; [`ChunkSink`] is what a point's tree is written through;
//! [`StoreWrite`] is a backup's side of a session. The local [`Store`] and [`Session`]
//! implement them here; the `cairn-remote` crate implements them over HTTPS. Chunking, hashing
//! and compression stay with the caller, so a remote store is sent only new, compressed chunks.

use std::sync::Arc;

use crate::chunk::{ChunkId, EncodedChunk};
use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::point::{RecoveryPoint, VmKey};
use crate::session::{NewPoint, Session, StagedPoint};
use crate::store::Store;
use crate::tree::TreeWriter;

/// Reading a store: its configuration, its catalogue and its chunks (each checked against its
/// id before it is returned).
pub trait StoreRead: Sync {
    /// The store's configuration (chunk size, compression level, time zone).
    fn config(&self) -> &StoreConfig;

    /// How the store names and seals chunks; `None`: an encrypted store whose key this reader
    /// was not given (it reads trees, and is refused data chunks).
    fn chunk_keys(&self) -> Option<&crate::Keys>;

    /// Every recovery point the reader may see, oldest first.
    ///
    /// # Errors
    /// Index or transport errors.
    fn points(&self) -> Result<Vec<RecoveryPoint>>;

    /// The points `filter` selects, oldest first (a store reads only their catalogue entries
    /// whole).
    ///
    /// # Errors
    /// As [`StoreRead::points`].
    fn points_matching(&self, filter: &crate::select::Filter) -> Result<Vec<RecoveryPoint>> {
        let mut points = self.points()?;
        points.retain(|p| filter.matches(p));
        Ok(points)
    }

    /// Calls `f` with each point `filter` selects, oldest first; a local store reads one at
    /// a time (see [`Store::each_point`]).
    ///
    /// # Errors
    /// As [`StoreRead::points`], and what `f` returns.
    fn each_point(
        &self,
        filter: &crate::select::Filter,
        f: &mut dyn FnMut(RecoveryPoint) -> Result<()>,
    ) -> Result<()> {
        for p in self.points_matching(filter)? {
            f(p)?;
        }
        Ok(())
    }

    /// A chunk's plain bytes, checked against its id.
    ///
    /// # Errors
    /// [`Error::MissingChunk`], [`Error::BadChunk`], transport errors.
    fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>>;

    /// Reads `ids[i]` into the front of `slots[i]`, each checked against its id, in whatever
    /// order is fastest for the store (a local store sorts by pack and offset and reads several
    /// at once). Returns, per chunk, the error that kept it from being read.
    ///
    /// # Errors
    /// Errors that stop the whole batch (index or transport); a chunk's own damage is returned
    /// in its slot of the result.
    fn read_chunks(&self, ids: &[ChunkId], slots: Vec<&mut [u8]>) -> Result<Vec<Option<Error>>>;

    /// The chunks `ids` as the store holds them (compressed as they were stored), each checked
    /// against its id (decoded and hashed), in order: what a copy into another store sends
    /// without compressing again.
    ///
    /// # Errors
    /// The first chunk missing or damaged ([`Error::MissingChunk`], [`Error::BadChunk`]),
    /// index or transport errors.
    fn read_encoded(&self, ids: &[ChunkId]) -> Result<Vec<EncodedChunk>>;

    /// Bytes a reader of many chunks should ask for at once (a restore's window): more for a
    /// store whose reads pay a round trip and that reads no further ahead itself (see
    /// [`StoreRead::batches`]), so that enough of them are in flight.
    fn read_ahead(&self) -> u64 {
        8 << 20
    }

    /// A reader of batches of chunks said before they are read (a restore's windows, in disk
    /// order). This one reads each batch when it is asked for, with [`StoreRead::read_chunks`];
    /// a store whose reads pay a round trip fetches later batches while an earlier one is
    /// decoded and written.
    fn batches(&self) -> Box<dyn BatchReader + '_> {
        Box::new(InTurn {
            store: self,
            said: std::collections::VecDeque::new(),
        })
    }

    /// The newest point of a VM's disk.
    ///
    /// # Errors
    /// As [`StoreRead::points`].
    fn latest(&self, vm: &VmKey, disk: &str) -> Result<Option<RecoveryPoint>> {
        Ok(self
            .points()?
            .into_iter()
            .filter(|p| p.disk == disk && &p.vm_key() == vm)
            .max_by_key(|p| (p.time, p.committed)))
    }

    /// Finds a point by name, as [`Store::resolve`].
    ///
    /// # Errors
    /// [`Error::Point`] when nothing or more than one point matches.
    fn resolve(&self, spec: &str) -> Result<RecoveryPoint> {
        let points = self.points()?;
        crate::select::resolve(&points, spec, self.config().tz()).map_err(Error::Point)
    }
}

/// Batches of chunks read in the order they were said (see [`StoreRead::batches`]).
pub trait BatchReader {
    /// Says that `ids` is the next batch to be read.
    ///
    /// # Errors
    /// Index errors.
    fn expect(&mut self, ids: Vec<ChunkId>) -> Result<()>;

    /// How many batches said and not yet read the reader wants before the oldest is read.
    fn ahead(&self) -> usize;

    /// Reads the oldest batch said and not yet read, `ids[i]` into the front of `slots[i]`,
    /// each checked against its id; per chunk, the error that kept it from being read.
    ///
    /// # Errors
    /// No batch was said, `slots` does not match it, or errors that stop the whole batch
    /// (index or transport), as [`StoreRead::read_chunks`].
    fn read_next(&mut self, slots: Vec<&mut [u8]>) -> Result<Vec<Option<Error>>>;
}

/// The [`BatchReader`] of a store that reads nothing ahead: each batch when it is asked for.
struct InTurn<'s, S: ?Sized> {
    store: &'s S,
    said: std::collections::VecDeque<Vec<ChunkId>>,
}

impl<S: StoreRead + ?Sized> BatchReader for InTurn<'_, S> {
    fn expect(&mut self, ids: Vec<ChunkId>) -> Result<()> {
        self.said.push_back(ids);
        Ok(())
    }

    fn ahead(&self) -> usize {
        0
    }

    fn read_next(&mut self, slots: Vec<&mut [u8]>) -> Result<Vec<Option<Error>>> {
        let ids = next_said(&mut self.said, slots.len())?;
        self.store.read_chunks(&ids, slots)
    }
}

/// The oldest batch said, which is about to be read into `slots` slots (for a [`BatchReader`]).
///
/// # Errors
/// No batch was said, or it does not have `slots` chunks.
pub fn next_said<T>(said: &mut std::collections::VecDeque<T>, slots: usize) -> Result<T>
where
    T: AsRef<[ChunkId]>,
{
    let next = said
        .pop_front()
        .ok_or_else(|| Error::Internal("a batch was read that was never said".into()))?;
    if next.as_ref().len() != slots {
        return Err(Error::Internal(format!(
            "a batch of {} chunks was read into {slots} slots",
            next.as_ref().len()
        )));
    }
    Ok(next)
}

/// Where tree chunks (and a backup's data chunks) are written.
pub trait ChunkSink {
    /// Stores a chunk unless the store already holds a good copy; returns whether it was sent
    /// or appended.
    ///
    /// # Errors
    /// I/O or transport errors.
    fn put(&mut self, chunk: &EncodedChunk) -> Result<bool>;

    /// The zstd level chunks are compressed with.
    fn zstd_level(&self) -> i32;

    /// How the store names and seals chunks.
    ///
    /// # Errors
    /// [`crate::Error::NoKey`]: an encrypted store not given its key.
    fn keys(&self) -> Result<&crate::Keys>;
}

/// Which chunks a store lacks: asked by a backup's hashing stage, many ids at a time, from
/// several threads.
pub trait ChunkFilter: Send + Sync {
    /// For each id, whether the store lacks a good copy of it (the backup must send it).
    ///
    /// # Errors
    /// Index or transport errors.
    fn missing(&self, ids: &[ChunkId]) -> Result<Vec<bool>>;
}

/// A backup's session: chunks go in, points are staged one disk at a time and published
/// together by [`StoreWrite::commit_run`]; dropping it publishes nothing. `'a` is how long the
/// filters it hands out may live (the store a local session writes to).
pub trait StoreWrite<'a>: ChunkSink + Send {
    /// The filter the hashing stage asks (it does not know what this session sent since).
    fn filter(&self) -> Arc<dyn ChunkFilter + 'a>;

    /// A writer for the next point's tree.
    fn tree_writer(&self) -> TreeWriter;

    /// Lets a full read store again the chunks of `latest` (the disk's newest point) that sit
    /// in packs it barely uses, up to `percent` % of its bytes (the layout policy). A store
    /// that does not lay out packs itself ignores it.
    ///
    /// # Errors
    /// Index errors.
    fn layout(&mut self, latest: &RecoveryPoint, percent: u32) -> Result<()>;

    /// Stores the rest of a point's tree and stages the point (see [`Session::stage_tree`]).
    ///
    /// # Errors
    /// As [`Session::stage_tree`].
    fn stage_tree(&mut self, point: NewPoint, tree: TreeWriter) -> Result<StagedPoint>;

    /// Publishes the staged points together, or none of them.
    ///
    /// # Errors
    /// I/O, index or transport errors; nothing is published then.
    fn commit_run(self: Box<Self>, staged: Vec<StagedPoint>) -> Result<Vec<RecoveryPoint>>;
}

/// A borrowed store reads as the store does (a server's `&'static Store` handed to a reader
/// that wants a shared one).
impl<S: StoreRead + ?Sized> StoreRead for &S {
    fn config(&self) -> &StoreConfig {
        (**self).config()
    }

    fn chunk_keys(&self) -> Option<&crate::Keys> {
        (**self).chunk_keys()
    }

    fn points(&self) -> Result<Vec<RecoveryPoint>> {
        (**self).points()
    }

    fn points_matching(&self, filter: &crate::select::Filter) -> Result<Vec<RecoveryPoint>> {
        (**self).points_matching(filter)
    }

    fn each_point(
        &self,
        filter: &crate::select::Filter,
        f: &mut dyn FnMut(RecoveryPoint) -> Result<()>,
    ) -> Result<()> {
        (**self).each_point(filter, f)
    }

    fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        (**self).read_chunk(id)
    }

    fn read_chunks(&self, ids: &[ChunkId], slots: Vec<&mut [u8]>) -> Result<Vec<Option<Error>>> {
        (**self).read_chunks(ids, slots)
    }

    fn read_encoded(&self, ids: &[ChunkId]) -> Result<Vec<EncodedChunk>> {
        (**self).read_encoded(ids)
    }

    fn read_ahead(&self) -> u64 {
        (**self).read_ahead()
    }

    fn batches(&self) -> Box<dyn BatchReader + '_> {
        (**self).batches()
    }

    fn latest(&self, vm: &VmKey, disk: &str) -> Result<Option<RecoveryPoint>> {
        (**self).latest(vm, disk)
    }

    fn resolve(&self, spec: &str) -> Result<RecoveryPoint> {
        (**self).resolve(spec)
    }
}

impl StoreRead for Store {
    fn config(&self) -> &StoreConfig {
        Store::config(self)
    }

    fn chunk_keys(&self) -> Option<&crate::Keys> {
        Store::chunk_keys(self)
    }

    fn points(&self) -> Result<Vec<RecoveryPoint>> {
        Store::points(self)
    }

    fn points_matching(&self, filter: &crate::select::Filter) -> Result<Vec<RecoveryPoint>> {
        Store::points_matching(self, filter)
    }

    fn each_point(
        &self,
        filter: &crate::select::Filter,
        f: &mut dyn FnMut(RecoveryPoint) -> Result<()>,
    ) -> Result<()> {
        Store::each_point(self, filter, f)
    }

    fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        Store::read_chunk(self, id)
    }

    fn read_chunks(&self, ids: &[ChunkId], slots: Vec<&mut [u8]>) -> Result<Vec<Option<Error>>> {
        let locs = self.locations(ids)?;
        let mut out: Vec<Option<Error>> = Vec::with_capacity(ids.len());
        let mut jobs = Vec::with_capacity(ids.len());
        for (i, ((id, loc), slot)) in ids.iter().zip(locs).zip(slots).enumerate() {
            match loc {
                Some(loc) => {
                    out.push(None);
                    jobs.push((i, *id, loc, slot));
                }
                None => out.push(Some(Error::MissingChunk(*id))),
            }
        }
        for (i, e) in self.read_located(jobs)? {
            out[i] = Some(e);
        }
        Ok(out)
    }

    fn batches(&self) -> Box<dyn BatchReader + '_> {
        // A bucket: each read is a round trip; later batches are fetched while one is decoded.
        match self.bucket() {
            Some(bucket) => Box::new(crate::bucket::ReadAhead::new(
                self,
                bucket,
                crate::bucket::READ_BUFFERS,
            )),
            None => Box::new(InTurn {
                store: self,
                said: std::collections::VecDeque::new(),
            }),
        }
    }

    fn read_encoded(&self, ids: &[ChunkId]) -> Result<Vec<EncodedChunk>> {
        use rayon::prelude::*;
        if self.bucket().is_some() {
            return self.read_encoded_many(ids);
        }
        ids.par_iter()
            .map(|id| Store::read_encoded(self, id))
            .collect()
    }

    fn latest(&self, vm: &VmKey, disk: &str) -> Result<Option<RecoveryPoint>> {
        Store::latest(self, vm, disk)
    }
}

impl ChunkSink for Session<'_> {
    fn put(&mut self, chunk: &EncodedChunk) -> Result<bool> {
        Session::put(self, chunk)
    }

    fn zstd_level(&self) -> i32 {
        self.store().config().zstd_level
    }

    fn keys(&self) -> Result<&crate::Keys> {
        self.store().keys()
    }
}

impl ChunkFilter for crate::session::KnownFilter<'_> {
    fn missing(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        ids.iter().map(|id| Ok(!self.holds(id)?)).collect()
    }
}

impl<'a> StoreWrite<'a> for Session<'a> {
    fn filter(&self) -> Arc<dyn ChunkFilter + 'a> {
        Arc::new(self.known_filter())
    }

    fn tree_writer(&self) -> TreeWriter {
        Session::tree_writer(self)
    }

    fn layout(&mut self, latest: &RecoveryPoint, percent: u32) -> Result<()> {
        let (packs, bytes) = self.store().sparse_packs(latest)?;
        let budget = bytes / 100 * u64::from(percent);
        self.set_rewrite(crate::session::Rewrite::new(packs, budget));
        Ok(())
    }

    fn stage_tree(&mut self, point: NewPoint, tree: TreeWriter) -> Result<StagedPoint> {
        Session::stage_tree(self, point, tree)
    }

    fn commit_run(self: Box<Self>, staged: Vec<StagedPoint>) -> Result<Vec<RecoveryPoint>> {
        Session::commit_run(*self, staged)
    }
}
