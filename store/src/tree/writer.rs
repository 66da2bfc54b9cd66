//! Building a tree as refs arrive: one leaf and one node per level in memory.

use super::{FANOUT, MAX_DEPTH, SEGMENT_REFS, encode_leaf, encode_node, span};
use crate::access::ChunkSink;
use crate::chunk::{self, ChunkId, ChunkKind, ChunkRef};
use crate::error::{Error, Result};

/// The top of a point's tree: its depth and the ids of its top level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeRoot {
    /// Level of the top entries (0: they are leaves).
    pub depth: u8,
    /// The top entries, in disk order.
    pub ids: Vec<ChunkId>,
}

/// Builds a point's tree as refs arrive, storing leaves and nodes through a [`Session`](crate::Session) as they
/// fill: memory is one leaf and one node per level, whatever the disk's size. Runs of zeros and
/// whole subtrees of a parent point go in without being expanded.
#[derive(Debug, Default)]
pub struct TreeWriter {
    refs: Vec<ChunkRef>,
    levels: Vec<Vec<ChunkId>>,
    chunks: u64,
    zero_leaf: Option<ChunkId>,
    /// When the session has lost packs: data ids pushed one by one, and subtrees reused whole,
    /// for [`Session::stage_tree`] to check that none names a chunk whose pack is gone.
    pub(crate) pushed: Option<Pushed>,
}

/// What a [`TreeWriter`] took from elsewhere, kept when the session must check it (see
/// [`TreeWriter::pushed`]).
#[derive(Debug, Default)]
pub(crate) struct Pushed {
    /// Data chunks pushed one by one.
    pub(crate) data: Vec<ChunkId>,
    /// Subtrees taken whole: id, level, chunks.
    pub(crate) subtrees: Vec<(ChunkId, u8, u64)>,
}

impl TreeWriter {
    /// Chunks pushed so far.
    #[must_use]
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// Appends the ref of the next chunk.
    ///
    /// # Errors
    /// I/O errors storing a leaf or node.
    pub fn push(&mut self, session: &mut dyn ChunkSink, r: ChunkRef) -> Result<()> {
        if let (Some(p), ChunkRef::Data(id)) = (&mut self.pushed, r) {
            p.data.push(id);
        }
        self.refs.push(r);
        self.chunks += 1;
        if self.refs.len() == SEGMENT_REFS {
            self.flush_leaf(session)?;
        }
        Ok(())
    }

    /// Appends `n` zero chunks: whole leaves of zeros are one shared leaf, never built again.
    ///
    /// # Errors
    /// I/O errors storing a leaf or node.
    pub fn push_zeros(&mut self, session: &mut dyn ChunkSink, mut n: u64) -> Result<()> {
        while n > 0 && !self.refs.is_empty() {
            self.push(session, ChunkRef::Zero)?;
            n -= 1;
        }
        if n >= SEGMENT_REFS as u64 {
            let zero = self.zero_leaf(session)?;
            while n >= SEGMENT_REFS as u64 {
                self.chunks += SEGMENT_REFS as u64;
                self.push_id(session, 0, zero)?;
                n -= SEGMENT_REFS as u64;
            }
        }
        for _ in 0..n {
            self.push(session, ChunkRef::Zero)?;
        }
        Ok(())
    }

    /// Whether a whole subtree of `level` may be appended now (the tree is at its boundary).
    #[must_use]
    pub fn aligned(&self, level: u8) -> bool {
        self.refs.is_empty()
            && self
                .levels
                .iter()
                .take(usize::from(level))
                .all(Vec::is_empty)
    }

    /// Appends a whole subtree (a full leaf or node of another point: `count` must be
    /// [`span`]`(level)`), without reading it.
    ///
    /// # Errors
    /// A subtree that is not full or not at a boundary; I/O errors storing a node.
    pub fn push_subtree(
        &mut self,
        session: &mut dyn ChunkSink,
        id: ChunkId,
        level: u8,
        count: u64,
    ) -> Result<()> {
        if count != span(level) || !self.aligned(level) {
            return Err(Error::Usage(format!(
                "subtree {id} of level {level} ({count} chunks) is not whole or not at a boundary"
            )));
        }
        if let Some(p) = &mut self.pushed {
            p.subtrees.push((id, level, count));
        }
        self.chunks += count;
        self.push_id(session, level, id)
    }

    fn zero_leaf(&mut self, session: &mut dyn ChunkSink) -> Result<ChunkId> {
        if let Some(id) = self.zero_leaf {
            return Ok(id);
        }
        let id = store_tree(session, &encode_leaf(&[ChunkRef::Zero; SEGMENT_REFS]))?;
        self.zero_leaf = Some(id);
        Ok(id)
    }

    fn flush_leaf(&mut self, session: &mut dyn ChunkSink) -> Result<()> {
        let id =
            if self.refs.len() == SEGMENT_REFS && self.refs.iter().all(|r| *r == ChunkRef::Zero) {
                self.zero_leaf(session)?
            } else {
                store_tree(session, &encode_leaf(&self.refs))?
            };
        self.refs.clear();
        self.push_id(session, 0, id)
    }

    fn push_id(&mut self, session: &mut dyn ChunkSink, level: u8, id: ChunkId) -> Result<()> {
        let l = usize::from(level);
        if self.levels.len() <= l {
            self.levels.resize_with(l + 1, Vec::new);
        }
        self.levels[l].push(id);
        if self.levels[l].len() == FANOUT {
            let node = store_tree(session, &encode_node(level + 1, &self.levels[l]))?;
            self.levels[l].clear();
            self.push_id(session, level + 1, node)?;
        }
        Ok(())
    }

    /// Stores what is left and returns the root.
    ///
    /// # Errors
    /// I/O errors storing a leaf or node; an empty tree.
    pub fn finish(mut self, session: &mut dyn ChunkSink) -> Result<TreeRoot> {
        if !self.refs.is_empty() {
            self.flush_leaf(session)?;
        }
        let mut level = 0;
        while level < self.levels.len() {
            let above = self.levels[level + 1..].iter().any(|l| !l.is_empty());
            if above && !self.levels[level].is_empty() {
                let ids = std::mem::take(&mut self.levels[level]);
                let node = store_tree(session, &encode_node(level as u8 + 1, &ids))?;
                self.push_id(session, level as u8 + 1, node)?;
            }
            level += 1;
        }
        let Some(depth) = self.levels.iter().rposition(|l| !l.is_empty()) else {
            return Err(Error::Usage("a reference tree of no chunks".into()));
        };
        Ok(TreeRoot {
            depth: depth as u8,
            ids: std::mem::take(&mut self.levels[depth]),
        })
    }
}

fn store_tree(session: &mut dyn ChunkSink, bytes: &[u8]) -> Result<ChunkId> {
    let level = session.zstd_level();
    let encoded = chunk::encode(session.keys()?, bytes, ChunkKind::Tree, level)
        .map_err(|e| Error::Internal(format!("encoding a tree chunk: {e}")))?;
    session.put(&encoded)?;
    Ok(encoded.id)
}

/// The top entries of `point`'s tree, checked: a depth this cairn reads, and as many entries as
/// cover the disk.
///
/// # Errors
/// A root whose depth is out of reach or whose entries do not cover the disk.
pub fn top(point: &crate::RecoveryPoint) -> Result<Vec<ChunkId>> {
    let ids = point.segments.clone();
    let total = point.chunk_count();
    if point.depth > MAX_DEPTH {
        return Err(Error::Point(format!(
            "{}: tree depth {}",
            point.id, point.depth
        )));
    }
    let sp = span(point.depth);
    let n = ids.len() as u64;
    if n == 0 && total > 0 || n > 0 && ((n - 1) * sp >= total || n * sp < total) {
        return Err(Error::Point(format!(
            "{}: {n} tree entries of level {} do not cover a disk of {total} chunks",
            point.id, point.depth
        )));
    }
    Ok(ids)
}
