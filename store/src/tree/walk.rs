//! Reading a tree forward, a path of nodes at a time: a subtree skipped without being read, a
//! leaf or node that cannot be read reported as an extent of its own.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{Node, decode, span, top};
use crate::access::StoreRead;
use crate::chunk::{ChunkId, ChunkRef};
use crate::error::{Error, Result};

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
