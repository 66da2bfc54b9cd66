//! A backup's dry run: the source is read, cut into chunks, hashed and compressed exactly as a
//! backup does, and the store is asked which chunks it lacks, but nothing is written: the
//! chunks a backup would store are counted (once each, tree chunks too) and dropped, and the
//! commit publishes nothing. The points it returns say what the backup would read and store.

use std::collections::HashSet;
use std::sync::Arc;

use cairn_store::tree::TreeWriter;
use cairn_store::{
    ChunkFilter, ChunkId, ChunkSink, EncodedChunk, NewPoint, RecoveryPoint, StagedPoint, StoreWrite,
};

/// A session that stores nothing (see the module).
pub struct DryRun<'a> {
    keys: cairn_store::Keys,
    filter: Arc<dyn ChunkFilter + 'a>,
    zstd_level: i32,
    chunk_size: u32,
    /// Chunks the backup would store, each once.
    new: HashSet<ChunkId>,
    /// Their stored bytes so far, and at the last staged point.
    put_bytes: u64,
    staged_bytes: u64,
    /// Bytes a store adds to each chunk it stores (a local store's frame header), counted as
    /// the store counts what a backup added.
    overhead: u64,
    /// Something kept alive as long as the dry run (a server's session, whose filter asks it).
    _keep: Option<Box<dyn Send + 'a>>,
}

impl<'a> DryRun<'a> {
    /// A dry run asking `filter` what the store holds; chunks named and sealed with `keys`,
    /// compressed at `zstd_level` and cut at `chunk_size` as the store would.
    #[must_use]
    pub fn new(
        filter: Arc<dyn ChunkFilter + 'a>,
        keys: cairn_store::Keys,
        zstd_level: i32,
        chunk_size: u32,
    ) -> Self {
        Self {
            filter,
            keys,
            zstd_level,
            chunk_size,
            new: HashSet::new(),
            put_bytes: 0,
            staged_bytes: 0,
            overhead: 0,
            _keep: None,
        }
    }

    /// Counts `bytes` more for each chunk stored, as a local store counts its frame headers.
    #[must_use]
    pub fn with_overhead(mut self, bytes: u64) -> Self {
        self.overhead = bytes;
        self
    }

    /// Keeps `what` (a server's upload session, which the filter asks) until the dry run ends;
    /// dropping it then publishes nothing.
    #[must_use]
    pub fn keeping(mut self, what: Box<dyn Send + 'a>) -> Self {
        self._keep = Some(what);
        self
    }
}

impl ChunkSink for DryRun<'_> {
    /// As a session's put: a chunk the store holds, or that this run stored already, is not
    /// stored again; the rest is counted.
    fn put(&mut self, chunk: &EncodedChunk) -> cairn_store::Result<bool> {
        if self.new.contains(&chunk.id) {
            return Ok(false);
        }
        let lacks = self.filter.missing(&[chunk.id])?;
        if !lacks.first().copied().unwrap_or(true) {
            return Ok(false);
        }
        self.new.insert(chunk.id);
        self.put_bytes += chunk.bytes.len() as u64 + self.overhead;
        Ok(true)
    }

    fn zstd_level(&self) -> i32 {
        self.zstd_level
    }

    fn keys(&self) -> cairn_store::Result<&cairn_store::Keys> {
        Ok(&self.keys)
    }
}

impl<'a> StoreWrite<'a> for DryRun<'a> {
    fn filter(&self) -> Arc<dyn ChunkFilter + 'a> {
        Arc::clone(&self.filter)
    }

    fn tree_writer(&self) -> TreeWriter {
        TreeWriter::default()
    }

    fn layout(&mut self, _latest: &RecoveryPoint, _percent: u32) -> cairn_store::Result<()> {
        Ok(())
    }

    fn stage_tree(
        &mut self,
        point: NewPoint,
        tree: TreeWriter,
    ) -> cairn_store::Result<StagedPoint> {
        let root = tree.finish(self)?;
        let mut staged = StagedPoint::new(point, &root, self.chunk_size);
        staged.set_new_stored(self.put_bytes.saturating_sub(self.staged_bytes));
        self.staged_bytes = self.put_bytes;
        Ok(staged)
    }

    fn commit_run(
        self: Box<Self>,
        staged: Vec<StagedPoint>,
    ) -> cairn_store::Result<Vec<RecoveryPoint>> {
        Ok(staged.into_iter().map(StagedPoint::into_point).collect())
    }
}
