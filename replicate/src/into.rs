//! Where a replication copies into: a folder's session, a server's upload session, or a dry
//! run that only asks what the destination lacks and counts it.

use cairn_store::{ChunkId, RecoveryPoint, Store};
use std::collections::HashSet;
use std::sync::Arc;

use crate::Result;

/// What copying a run needs from the destination.
pub(crate) trait CopyInto {
    /// Whether the destination holds the whole subtree under tree chunk `id`
    /// ([`Store::holds_subtrees`]: a chunk some point there references).
    fn has_tree(&self, id: &ChunkId) -> Result<bool>;
    /// For each id, whether the destination lacks the chunk.
    fn missing(&self, ids: &[ChunkId]) -> Result<Vec<bool>>;
    /// Sends a chunk.
    fn put(&mut self, enc: &cairn_store::EncodedChunk) -> Result<bool>;
    /// Stages a point as it is.
    fn stage(&mut self, p: &RecoveryPoint) -> Result<()>;
    /// Publishes the staged points together.
    fn commit(self: Box<Self>) -> Result<()>;
}

pub(crate) struct IntoFolder<'s> {
    pub(crate) dst: FolderProbe<'s>,
    pub(crate) session: cairn_store::Session<'s>,
    pub(crate) staged: Vec<cairn_store::StagedPoint>,
}

impl CopyInto for IntoFolder<'_> {
    fn has_tree(&self, id: &ChunkId) -> Result<bool> {
        self.dst.has_tree(id)
    }
    fn missing(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        self.dst.missing(ids)
    }
    fn put(&mut self, enc: &cairn_store::EncodedChunk) -> Result<bool> {
        Ok(self.session.put(enc)?)
    }
    fn stage(&mut self, p: &RecoveryPoint) -> Result<()> {
        self.staged.push(self.session.stage_copy(p)?);
        Ok(())
    }
    fn commit(self: Box<Self>) -> Result<()> {
        self.session.commit_run(self.staged)?;
        Ok(())
    }
}

pub(crate) struct IntoServer {
    pub(crate) upload: cairn_remote::Upload,
    pub(crate) filter: Arc<dyn cairn_store::ChunkFilter>,
    pub(crate) points: Vec<RecoveryPoint>,
}

impl CopyInto for IntoServer {
    fn has_tree(&self, id: &ChunkId) -> Result<bool> {
        // The same meaning as a folder's (`Store::holds_subtrees`), asked of the server; the
        // commit checks it all again.
        Ok(self.upload.holds_subtrees(&[*id])?.first() == Some(&true))
    }
    fn missing(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        Ok(self.filter.missing(ids)?)
    }
    fn put(&mut self, enc: &cairn_store::EncodedChunk) -> Result<bool> {
        use cairn_store::ChunkSink;
        Ok(self.upload.put(enc)?)
    }
    fn stage(&mut self, p: &RecoveryPoint) -> Result<()> {
        self.points.push(p.clone());
        Ok(())
    }
    fn commit(self: Box<Self>) -> Result<()> {
        self.upload.commit_points(self.points)?;
        Ok(())
    }
}

/// A destination folder opened read-only, asked what it holds (a dry run sends nothing).
pub(crate) struct FolderProbe<'s> {
    pub(crate) dst: &'s Store,
}

impl CopyInto for FolderProbe<'_> {
    fn has_tree(&self, id: &ChunkId) -> Result<bool> {
        Ok(self.dst.holds_subtrees(&[*id])?.first() == Some(&true))
    }
    fn missing(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        Ok(self
            .dst
            .locations(ids)?
            .iter()
            .map(Option::is_none)
            .collect())
    }
    fn put(&mut self, _: &cairn_store::EncodedChunk) -> Result<bool> {
        Ok(false)
    }
    fn stage(&mut self, _: &RecoveryPoint) -> Result<()> {
        Ok(())
    }
    fn commit(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// A dry run: the same walk as a copy, asking the destination (`probe`) what it lacks, but
/// what would be sent is only counted, in `sent`, which outlives one run: a chunk or subtree
/// a run before would have sent counts as there, as it would be. Nothing is staged or
/// committed; a server's session is dropped (aborted) at the end of each run.
pub(crate) struct DryRun<'d> {
    pub(crate) probe: Box<dyn CopyInto + 'd>,
    pub(crate) sent: std::rc::Rc<std::cell::RefCell<HashSet<ChunkId>>>,
}

impl CopyInto for DryRun<'_> {
    fn has_tree(&self, id: &ChunkId) -> Result<bool> {
        Ok(self.sent.borrow().contains(id) || self.probe.has_tree(id)?)
    }
    fn missing(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        let sent = self.sent.borrow();
        Ok(self
            .probe
            .missing(ids)?
            .into_iter()
            .zip(ids)
            .map(|(lacks, id)| lacks && !sent.contains(id))
            .collect())
    }
    fn put(&mut self, enc: &cairn_store::EncodedChunk) -> Result<bool> {
        Ok(self.sent.borrow_mut().insert(enc.id))
    }
    fn stage(&mut self, _: &RecoveryPoint) -> Result<()> {
        Ok(())
    }
    fn commit(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}
