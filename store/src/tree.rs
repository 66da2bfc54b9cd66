//! A point's reference list as a tree, written and read as a stream.
//!
//! One [`ChunkRef`] per chunk of the disk is too much to hold for a big disk (8 M refs for
//! 2 TiB at 256 KiB chunks, 64 M for 16 TiB). The list is cut into *leaves* (tree segments) of
//! [`SEGMENT_REFS`] refs; above them, *nodes* of level 1, 2, ... each name up to [`FANOUT`]
//! children of the level below. The point names the ids of its top level (at most
//! [`FANOUT`] - 1 of them) and the tree's depth. Every leaf and node is a content-addressed
//! chunk of kind [`ChunkKind::Tree`](crate::ChunkKind), so:
//! - a stretch of disk that did not change since the previous point keeps its leaf, and a
//!   stretch of 16 GiB keeps its level-1 node, without being read or written again;
//! - a stretch of zeros is one shared leaf (and one shared node per level), however long;
//! - committing or dropping a point touches only the nodes it does not share (`refs` module).
//!
//! # Format (version 2)
//! A leaf or node is a 16-byte header, `cairn-tree`, the format version (2), the level (0 for a
//! leaf), the entry count (u32, little-endian), then the entries: 32-byte refs in a leaf (all
//! zeros for a zero chunk), 32-byte child ids in a node. A leaf of format 1 (points written
//! before trees existed) is the bare refs, without a header; it reads as a leaf of level 0.
//!
//! [`TreeWriter`] builds a tree as refs arrive, keeping one leaf and one node per level in
//! memory. [`Walk`] reads one forward, a path of nodes at a time: it can skip a subtree without
//! reading it, and reports a leaf or node that cannot be read as an extent of its own (the
//! caller decides whether that is fatal), so every reader of trees (restore, verify, report,
//! diff, a delta's parent) shares one walk.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::access::{ChunkSink, StoreRead};
use crate::chunk::{self, ChunkId, ChunkKind, ChunkRef};
use crate::error::{Error, Result};

/// Refs per leaf: 256 refs of 32 bytes = 8 KiB per leaf.
pub const SEGMENT_REFS: usize = 256;
/// Children per node.
pub const FANOUT: usize = 256;
/// The format of leaves and nodes written now.
pub const TREE_FORMAT: u8 = 2;
/// Deepest tree read (level 4 spans 2^40 chunks, far past any disk).
pub(crate) const MAX_DEPTH: u8 = 4;
/// The first bytes of every leaf and node of format 2.
pub(crate) const TREE_MAGIC: &[u8; 10] = b"cairn-tree";
const MAGIC: &[u8; 10] = TREE_MAGIC;
const HEADER: usize = 16;

/// Chunks of disk one entry of `level` covers when full (a leaf at level 0).
#[must_use]
pub fn span(level: u8) -> u64 {
    SEGMENT_REFS as u64 * (FANOUT as u64).pow(u32::from(level))
}

/// A decoded leaf or node.
#[derive(Debug, Clone)]
pub enum Node {
    /// Level 0: refs, one per chunk.
    Leaf(Arc<[ChunkRef]>),
    /// Level 1 or more: the ids of the children, one level down.
    Inner(u8, Arc<[ChunkId]>),
}

impl Node {
    /// The level: 0 for a leaf.
    #[must_use]
    pub fn level(&self) -> u8 {
        match self {
            Self::Leaf(_) => 0,
            Self::Inner(l, _) => *l,
        }
    }
}

fn header(level: u8, count: usize) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..10].copy_from_slice(MAGIC);
    h[10] = TREE_FORMAT;
    h[11] = level;
    h[12..16].copy_from_slice(&(count as u32).to_le_bytes());
    h
}

/// The bytes of a leaf holding `refs`.
#[must_use]
pub fn encode_leaf(refs: &[ChunkRef]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + refs.len() * 32);
    out.extend_from_slice(&header(0, refs.len()));
    for r in refs {
        out.extend_from_slice(&r.to_bytes());
    }
    out
}

/// The bytes of a node of `level` (1 or more) naming `children`.
#[must_use]
pub fn encode_node(level: u8, children: &[ChunkId]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + children.len() * 32);
    out.extend_from_slice(&header(level, children.len()));
    for c in children {
        out.extend_from_slice(&c.0);
    }
    out
}

fn entries(bytes: &[u8]) -> impl Iterator<Item = [u8; 32]> + '_ {
    bytes.chunks_exact(32).map(|c| {
        let mut b = [0u8; 32];
        b.copy_from_slice(c);
        b
    })
}

/// Decodes a leaf or node (format 2, or a bare format-1 leaf).
///
/// # Errors
/// What is wrong with the bytes.
pub fn decode(bytes: &[u8]) -> Result<Node, String> {
    if bytes.len() >= HEADER && bytes.starts_with(MAGIC) {
        let (version, level) = (bytes[10], bytes[11]);
        if version != TREE_FORMAT {
            return Err(format!(
                "tree chunk of format {version}: this cairn reads format {TREE_FORMAT}"
            ));
        }
        let count = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
        let body = &bytes[HEADER..];
        if body.len() != count * 32 || count == 0 {
            return Err(format!(
                "tree chunk says {count} entries but holds {} bytes of them",
                body.len()
            ));
        }
        if level > MAX_DEPTH || (level == 0 && count > SEGMENT_REFS) || count > FANOUT {
            return Err(format!("tree chunk of level {level} with {count} entries"));
        }
        if level == 0 {
            return Ok(Node::Leaf(
                entries(body).map(ChunkRef::from_bytes).collect(),
            ));
        }
        return Ok(Node::Inner(level, entries(body).map(ChunkId).collect()));
    }
    if bytes.is_empty() || !bytes.len().is_multiple_of(32) || bytes.len() / 32 > SEGMENT_REFS {
        return Err(format!(
            "tree segment of {} bytes is neither a format-2 tree chunk nor whole 32-byte refs",
            bytes.len()
        ));
    }
    Ok(Node::Leaf(
        entries(bytes).map(ChunkRef::from_bytes).collect(),
    ))
}

/// The refs of a leaf (format 1 or 2).
///
/// # Errors
/// Bytes that are not a leaf.
pub fn decode_leaf(bytes: &[u8]) -> Result<Vec<ChunkRef>, String> {
    match decode(bytes)? {
        Node::Leaf(r) => Ok(r.to_vec()),
        Node::Inner(l, _) => Err(format!("a node of level {l} where a leaf was expected")),
    }
}

/// The distinct children of a tree chunk's bytes: `(true, nodes or leaves)` for a node,
/// `(false, data chunks)` for a leaf.
///
/// # Errors
/// Bytes that are not a tree chunk.
pub fn children(bytes: &[u8]) -> Result<(bool, Vec<ChunkId>), String> {
    let mut seen = HashSet::new();
    Ok(match decode(bytes)? {
        Node::Leaf(refs) => (
            false,
            refs.iter()
                .filter_map(|r| match r {
                    ChunkRef::Data(id) if seen.insert(*id) => Some(*id),
                    _ => None,
                })
                .collect(),
        ),
        Node::Inner(_, ids) => (
            true,
            ids.iter().filter(|id| seen.insert(**id)).copied().collect(),
        ),
    })
}

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
    let encoded = chunk::encode(bytes, ChunkKind::Tree, level);
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

/// One entry of a tree under the walk's position: a leaf or a node, not yet read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Its first chunk.
    pub first: u64,
    /// Chunks it covers.
    pub count: u64,
    /// Its id.
    pub id: ChunkId,
    /// Its level (0: a leaf).
    pub level: u8,
}

/// What a stretch of a point's disk holds, as [`Walk::next_extent`] finds it.
#[derive(Debug, Clone)]
pub enum Body {
    /// One ref per chunk.
    Refs(Arc<[ChunkRef]>),
    /// Zeros only (a subtree already found to be zeros is not read again).
    Zero,
    /// The leaf or node cannot be read: what went wrong.
    Unreadable(String),
}

/// A stretch of a point's disk: the chunks `first..first + count` under one leaf or node.
#[derive(Debug, Clone)]
pub struct Extent {
    /// First chunk.
    pub first: u64,
    /// Chunks.
    pub count: u64,
    /// The leaf or node.
    pub id: ChunkId,
    /// Its level.
    pub level: u8,
    /// What it holds.
    pub body: Body,
}

struct Frame {
    /// The node this frame lists (none for the point's top).
    id: Option<ChunkId>,
    /// Level of the children.
    level: u8,
    children: Arc<[ChunkId]>,
    next: usize,
    first: u64,
    all_zero: bool,
}

/// Reads a point's tree forward: [`Walk::next_extent`] yields its leaves in disk order
/// (subtrees of zeros once known as one extent); [`Walk::peek`], [`Walk::skip`] and
/// [`Walk::enter`] move entry by entry, for callers that take whole subtrees unread.
/// Memory: one path of nodes and a few cached ones.
pub struct Walk<'s> {
    store: &'s dyn StoreRead,
    what: String,
    total: u64,
    stack: Vec<Frame>,
    cache: HashMap<ChunkId, Node>,
    zero: HashSet<ChunkId>,
}

const CACHE_NODES: usize = 64;

impl<'s> Walk<'s> {
    /// A walk over the tree of a point (`what` names it in messages).
    ///
    /// # Errors
    /// A root whose entries are not chunk ids, or that does not cover the disk.
    pub fn new(store: &'s dyn StoreRead, point: &crate::RecoveryPoint) -> Result<Self> {
        let ids = top(point)?;
        let total = point.chunk_count();
        Ok(Self::over(
            store,
            point.id.to_string(),
            total,
            None,
            point.depth,
            ids.into(),
        ))
    }

    /// A walk over one subtree of `count` chunks.
    #[must_use]
    pub fn subtree(store: &'s dyn StoreRead, id: ChunkId, level: u8, count: u64) -> Self {
        Self::over(
            store,
            format!("tree chunk {id}"),
            count,
            None,
            level,
            vec![id].into(),
        )
    }

    fn over(
        store: &'s dyn StoreRead,
        what: String,
        total: u64,
        id: Option<ChunkId>,
        level: u8,
        children: Arc<[ChunkId]>,
    ) -> Self {
        Self {
            store,
            what,
            total,
            stack: vec![Frame {
                id,
                level,
                children,
                next: 0,
                first: 0,
                all_zero: true,
            }],
            cache: HashMap::new(),
            zero: HashSet::new(),
        }
    }

    /// The entry at the walk's position (the next one not yet entered or skipped), or `None`
    /// at the end.
    ///
    /// # Errors
    /// A node with more entries than the disk has chunks.
    pub fn peek(&mut self) -> Result<Option<Entry>> {
        loop {
            let Some(top) = self.stack.last() else {
                return Ok(None);
            };
            if top.next >= top.children.len() {
                if let Some(f) = self.stack.pop() {
                    if let (true, Some(id)) = (f.all_zero, f.id) {
                        self.zero.insert(id);
                    } else {
                        self.not_zero();
                    }
                }
                continue;
            }
            let sp = span(top.level);
            let first = top.first + top.next as u64 * sp;
            if first >= self.total {
                return Err(Error::Point(format!(
                    "{}: the tree has entries past the disk's {} chunks",
                    self.what, self.total
                )));
            }
            return Ok(Some(Entry {
                first,
                count: sp.min(self.total - first),
                id: top.children[top.next],
                level: top.level,
            }));
        }
    }

    /// Moves past the entry at the position without reading it.
    pub fn skip(&mut self) {
        let known_zero = self
            .stack
            .last()
            .and_then(|f| f.children.get(f.next))
            .is_some_and(|id| self.zero.contains(id));
        if !known_zero {
            self.not_zero();
        }
        if let Some(top) = self.stack.last_mut() {
            top.next += 1;
        }
    }

    /// Whether the subtree `id` was found to hold only zeros.
    #[must_use]
    pub fn known_zero(&self, id: &ChunkId) -> bool {
        self.zero.contains(id)
    }

    fn not_zero(&mut self) {
        for f in &mut self.stack {
            f.all_zero = false;
        }
    }

    fn read(&mut self, id: &ChunkId) -> Result<Node, String> {
        if let Some(n) = self.cache.get(id) {
            return Ok(n.clone());
        }
        let node = self
            .store
            .read_chunk(id)
            .map_err(|e| e.to_string())
            .and_then(|b| decode(&b))?;
        if self.cache.len() >= CACHE_NODES {
            self.cache.clear();
        }
        self.cache.insert(*id, node.clone());
        Ok(node)
    }

    /// Reads the entry at the position: a node becomes the position's new list (its first child
    /// is next) and `Ok(None)` is returned; a leaf's refs are returned and the walk moves past
    /// it. A leaf or node that cannot be read, or is not what its place needs, is an error
    /// naming it; the walk has moved past it.
    ///
    /// # Errors
    /// See above; and as [`Walk::peek`].
    pub fn enter(&mut self) -> Result<Option<(Entry, Arc<[ChunkRef]>)>> {
        let Some(e) = self.peek()? else {
            return Ok(None);
        };
        if let Some(top) = self.stack.last_mut() {
            top.next += 1;
        }
        let who = self.what.clone();
        let bad = |what: String| {
            Error::Point(format!(
                "{who}: tree chunk {} (level {}, chunks {}..{}): {what}",
                e.id,
                e.level,
                e.first,
                e.first + e.count
            ))
        };
        let node = match self.read(&e.id) {
            Ok(n) => n,
            Err(what) => {
                self.not_zero();
                return Err(bad(what));
            }
        };
        match node {
            Node::Leaf(refs) if e.level == 0 && refs.len() as u64 == e.count => {
                if refs.iter().all(|r| *r == ChunkRef::Zero) {
                    self.zero.insert(e.id);
                } else {
                    self.not_zero();
                }
                Ok(Some((e, refs)))
            }
            Node::Inner(level, children)
                if level == e.level
                    && children.len() as u64 == e.count.div_ceil(span(level - 1)) =>
            {
                self.stack.push(Frame {
                    id: Some(e.id),
                    level: level - 1,
                    children,
                    next: 0,
                    first: e.first,
                    all_zero: true,
                });
                // The caller goes on with the children.
                Ok(None)
            }
            other => {
                self.not_zero();
                let (level, n) = match &other {
                    Node::Leaf(r) => (0, r.len()),
                    Node::Inner(l, c) => (*l, c.len()),
                };
                Err(bad(format!(
                    "holds {n} entries of level {level}, not what its place needs"
                )))
            }
        }
    }

    /// The next stretch of the disk from chunk `from` on: a leaf's refs, a subtree known to
    /// hold zeros, or a leaf or node that cannot be read (the walk goes on past it). Entries
    /// that end before `from` are skipped unread.
    ///
    /// # Errors
    /// A tree with entries past the disk's end.
    pub fn next_extent_from(&mut self, from: u64) -> Result<Option<Extent>> {
        loop {
            let Some(e) = self.peek()? else {
                return Ok(None);
            };
            if e.first + e.count <= from {
                self.skip();
                continue;
            }
            if self.zero.contains(&e.id) {
                self.skip();
                return Ok(Some(Extent {
                    first: e.first,
                    count: e.count,
                    id: e.id,
                    level: e.level,
                    body: Body::Zero,
                }));
            }
            match self.enter() {
                Ok(None) => {}
                Ok(Some((e, refs))) => {
                    let body = if self.zero.contains(&e.id) {
                        Body::Zero
                    } else {
                        Body::Refs(refs)
                    };
                    return Ok(Some(Extent {
                        first: e.first,
                        count: e.count,
                        id: e.id,
                        level: 0,
                        body,
                    }));
                }
                Err(err) => {
                    let what = match err {
                        Error::Point(what) => what,
                        other => other.to_string(),
                    };
                    return Ok(Some(Extent {
                        first: e.first,
                        count: e.count,
                        id: e.id,
                        level: e.level,
                        body: Body::Unreadable(what),
                    }));
                }
            }
        }
    }

    /// The next stretch of the disk (see [`Walk::next_extent_from`]).
    ///
    /// # Errors
    /// As [`Walk::next_extent_from`].
    pub fn next_extent(&mut self) -> Result<Option<Extent>> {
        self.next_extent_from(0)
    }
}

/// Calls `f(first, end)` for the stretches of chunks where the refs of `old` and `new` (points
/// of one chunk size) differ, in disk order: leaves and nodes that the two hold at the same
/// place are skipped unread, so the work follows what changed. Past the shorter point's end
/// every chunk differs. With `tolerate`, a stretch of `new` under a tree chunk that cannot be
/// read compares as zeros.
///
/// # Errors
/// A tree chunk that cannot be read.
pub fn differences(
    store: &dyn StoreRead,
    old: &crate::RecoveryPoint,
    new: &crate::RecoveryPoint,
    tolerate: bool,
    mut f: impl FnMut(u64, u64),
) -> Result<()> {
    let mut walk = Walk::new(store, new)?;
    let mut base = Spans {
        walk: Walk::new(store, old)?,
        held: None,
    };
    let old_total = old.chunk_count();
    let mut last: Option<(u64, u64)> = None;
    let mut emit = |from: u64, to: u64| match &mut last {
        Some((_, end)) if *end == from => *end = to,
        _ => {
            if let Some((a, b)) = last.replace((from, to)) {
                f(a, b);
            }
        }
    };
    loop {
        if let (Some(x), Some(y)) = (walk.peek()?, base.walk.peek()?)
            && x == y
        {
            walk.skip();
            base.walk.skip();
            continue;
        }
        let Some(x) = walk.next_extent()? else {
            break;
        };
        let mine: Option<Arc<[ChunkRef]>> = match x.body {
            Body::Refs(r) => Some(r),
            Body::Zero => None,
            Body::Unreadable(_) if tolerate => None,
            Body::Unreadable(what) => return Err(Error::Point(what)),
        };
        base.spans(x.first, x.count, |start, end, theirs| {
            if mine.is_none() && theirs.is_none() && end <= old_total {
                return;
            }
            for i in start..end {
                let ours = mine
                    .as_ref()
                    .map_or(ChunkRef::Zero, |r| r[(i - x.first) as usize]);
                let t = theirs.map_or(ChunkRef::Zero, |t| t[(i - start) as usize]);
                if i >= old_total || ours != t {
                    emit(i, i + 1);
                }
            }
        })?;
    }
    let new_total = new.chunk_count();
    if old_total > new_total {
        emit(new_total, old_total);
    }
    if let Some((a, b)) = last {
        f(a, b);
    }
    Ok(())
}

/// A point's refs, read forward over the stretches another walk asks about.
struct Spans<'s> {
    walk: Walk<'s>,
    held: Option<Extent>,
}

impl Spans<'_> {
    /// Calls `f(start, end, refs)` over `first..first + count` in order, in spans: `refs` the
    /// point's refs of the span, `None` for zeros (a hole, or past the point's end).
    fn spans(
        &mut self,
        first: u64,
        count: u64,
        mut f: impl FnMut(u64, u64, Option<&[ChunkRef]>),
    ) -> Result<()> {
        let end = first + count;
        let mut i = first;
        while i < end {
            if self.held.as_ref().is_none_or(|h| i >= h.first + h.count) {
                self.held = self.walk.next_extent_from(i)?;
            }
            match &self.held {
                Some(h) if h.first <= i => {
                    let stop = end.min(h.first + h.count);
                    match &h.body {
                        Body::Refs(r) => f(
                            i,
                            stop,
                            Some(&r[(i - h.first) as usize..(stop - h.first) as usize]),
                        ),
                        Body::Zero => f(i, stop, None),
                        Body::Unreadable(what) => return Err(Error::Point(what.clone())),
                    }
                    i = stop;
                }
                Some(h) => {
                    let stop = end.min(h.first);
                    f(i, stop, None);
                    i = stop;
                }
                None => {
                    f(i, end, None);
                    i = end;
                }
            }
        }
        Ok(())
    }
}

/// A point's refs looked up by chunk index, in increasing order, reading only the leaves that
/// hold the chunks asked for.
pub struct RefLookup<'s> {
    walk: Walk<'s>,
    current: Option<Extent>,
}

impl<'s> RefLookup<'s> {
    /// Lookups into the tree `walk` reads.
    #[must_use]
    pub fn new(walk: Walk<'s>) -> Self {
        Self {
            walk,
            current: None,
        }
    }

    /// The ref of chunk `i` (`Zero` past the disk's end).
    ///
    /// # Errors
    /// A chunk asked for before the last one, a leaf that cannot be read.
    pub fn get(&mut self, i: u64) -> Result<ChunkRef> {
        loop {
            if let Some(x) = &self.current {
                if i < x.first {
                    return Err(Error::Usage(format!(
                        "chunk {i} looked up after chunk {}",
                        x.first
                    )));
                }
                if i < x.first + x.count {
                    return match &x.body {
                        Body::Zero => Ok(ChunkRef::Zero),
                        Body::Refs(r) => Ok(r[(i - x.first) as usize]),
                        Body::Unreadable(what) => Err(Error::Point(what.clone())),
                    };
                }
            }
            match self.walk.next_extent_from(i)? {
                Some(x) => self.current = Some(x),
                None => return Ok(ChunkRef::Zero),
            }
        }
    }
}
