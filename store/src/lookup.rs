//! Random access into a point's tree, for readers that do not go front to back (an NBD export
//! answering a booting VM): chunk `i`'s ref is found by descending from the point's top, one
//! node per level, with the nodes and leaves met kept in a bounded cache; a subtree of zeros
//! (the shared zero leaf and the zero node of each level, known by their ids) is recognised
//! without reading it, so a hole of any size costs one step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::chunk::{ChunkId, ChunkRef};
use crate::error::{Error, Result};
use crate::tree::{FANOUT, MAX_DEPTH, Node, SEGMENT_REFS, decode, encode_leaf, encode_node, span};

/// Nodes and leaves cached (8 KiB each at most): 16 MiB.
const CACHE_ENTRIES: usize = 2048;

/// What chunk `i` of a point holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Its ref.
    Ref(ChunkRef),
    /// Zeros, from chunk `i` up to (not including) chunk `end`: a subtree of zeros.
    Zeros {
        /// The first chunk past the zeros.
        end: u64,
    },
}

/// Two generations of cached nodes: a lookup that finds one in the old generation moves it
/// to the new; when the new one is full it becomes the old one. An approximate LRU, cheap.
#[derive(Default)]
struct Cache {
    new: HashMap<ChunkId, Node>,
    old: HashMap<ChunkId, Node>,
}

impl Cache {
    fn get(&mut self, id: &ChunkId) -> Option<Node> {
        if let Some(n) = self.new.get(id) {
            return Some(n.clone());
        }
        let n = self.old.remove(id)?;
        self.put(*id, n.clone());
        Some(n)
    }

    fn put(&mut self, id: ChunkId, n: Node) {
        if self.new.len() >= CACHE_ENTRIES / 2 {
            self.old = std::mem::take(&mut self.new);
        }
        self.new.insert(id, n);
    }
}

/// Random lookups into one point's tree (see the module). Shareable between threads.
pub struct PointLookup {
    what: String,
    top: Arc<[ChunkId]>,
    depth: u8,
    total: u64,
    /// The id of a full subtree of zeros at each level.
    zero: Vec<ChunkId>,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for PointLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PointLookup")
            .field("what", &self.what)
            .field("depth", &self.depth)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

/// The ids of full subtrees of zeros, level 0 (the zero leaf) to `MAX_DEPTH`, in an unencrypted
/// store. An encrypted store's differ (keyed): its subtrees of zeros are never matched here and
/// are read like any other (from the cache that keeps every tree chunk read).
fn zero_ids() -> Vec<ChunkId> {
    let mut ids = vec![ChunkId::of(&encode_leaf(&[ChunkRef::Zero; SEGMENT_REFS]))];
    for level in 1..=MAX_DEPTH {
        let below = ids[usize::from(level) - 1];
        ids.push(ChunkId::of(&encode_node(level, &[below; FANOUT])));
    }
    ids
}

impl PointLookup {
    /// Lookups into `point`'s tree.
    ///
    /// # Errors
    /// A root whose entries are not chunk ids or do not cover the disk.
    pub fn new(point: &crate::RecoveryPoint) -> Result<Self> {
        let top = crate::tree::top(point)?;
        let total = point.chunk_count();
        Ok(Self {
            what: point.id.to_string(),
            top: top.into(),
            depth: point.depth,
            total,
            zero: zero_ids(),
            cache: Mutex::new(Cache::default()),
        })
    }

    /// Chunks of the disk.
    #[must_use]
    pub fn chunks(&self) -> u64 {
        self.total
    }

    fn node(&self, store: &dyn crate::StoreRead, id: &ChunkId) -> Result<Node> {
        if let Some(n) = self.cache.lock().map_err(|_| poisoned())?.get(id) {
            return Ok(n);
        }
        let bytes = store.read_chunk(id)?;
        let node = decode(&bytes)
            .map_err(|what| Error::Point(format!("{}: tree chunk {id}: {what}", self.what)))?;
        self.cache
            .lock()
            .map_err(|_| poisoned())?
            .put(*id, node.clone());
        Ok(node)
    }

    /// What chunk `i` holds (zeros past the disk's end).
    ///
    /// # Errors
    /// A tree chunk that cannot be read (missing, bad, or not what its place needs).
    pub fn find(&self, store: &dyn crate::StoreRead, i: u64) -> Result<Found> {
        if i >= self.total {
            return Ok(Found::Zeros { end: u64::MAX });
        }
        let mut level = self.depth;
        let mut first = 0u64;
        let mut children: Arc<[ChunkId]> = Arc::clone(&self.top);
        loop {
            let sp = span(level);
            let k = ((i - first) / sp) as usize;
            let Some(id) = children.get(k).copied() else {
                return Err(Error::Point(format!(
                    "{}: no tree entry for chunk {i} at level {level}",
                    self.what
                )));
            };
            let start = first + k as u64 * sp;
            let count = sp.min(self.total - start);
            if count == sp && self.zero.get(usize::from(level)) == Some(&id) {
                return Ok(Found::Zeros { end: start + count });
            }
            let bad = |what: String| {
                Error::Point(format!(
                    "{}: tree chunk {id} (level {level}, chunks {start}..{}): {what}",
                    self.what,
                    start + count
                ))
            };
            match self.node(store, &id)? {
                Node::Leaf(refs) if level == 0 && refs.len() as u64 == count => {
                    return Ok(Found::Ref(refs[(i - start) as usize]));
                }
                Node::Inner(l, c)
                    if level > 0
                        && l == level
                        && c.len() as u64 == count.div_ceil(span(level - 1)) =>
                {
                    children = c;
                    first = start;
                    level -= 1;
                }
                Node::Leaf(r) => {
                    return Err(bad(format!(
                        "a leaf of {} refs where its place needs level {level}",
                        r.len()
                    )));
                }
                Node::Inner(l, c) => {
                    return Err(bad(format!(
                        "a node of level {l} with {} children, not what its place needs",
                        c.len()
                    )));
                }
            }
        }
    }
}

fn poisoned() -> Error {
    Error::Internal("a lookup cache lock was poisoned by a panic".into())
}
