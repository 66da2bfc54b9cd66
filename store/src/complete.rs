//! A commit's reference check ([`crate::Session::check_references`]): every chunk the points a
//! client built name is in the store or was put in the session, of the kind its place needs,
//! and of the length its place on the disk holds.
//!
//! - A tree chunk put in the session is read back and followed.
//! - A tree chunk some point of the store references is trusted with everything under it
//!   ([`crate::Store::holds_subtrees`]), but on the path to the disk's last chunk (which another
//!   point's tree may end with a chunk of another length); one the index holds that no point
//!   references is read and followed (garbage collection may have deleted what it names).
//!
//! Not checked here: a live subtree that ended another point with a short chunk, taken whole
//! into the middle of this one. A restore of such a point fails at that chunk (every chunk must
//! fill its place exactly, [`crate::chunk::decode_into`]), and `verify` names it.
//! - A data chunk is the chunk size, but the disk's last, which is what is left of the disk: a
//!   short chunk in the middle of a disk would restore whatever a buffer held before.
//!
//! A tree chunk is followed once for the places that are not the disk's last and once more if
//! it also holds the last (the same leaf may end one point and sit in the middle of another).

use std::collections::{HashMap, HashSet};

use crate::chunk::{ChunkId, ChunkKind, ChunkRef};
use crate::error::{Error, Result};
use crate::index::Location;
use crate::lost::LostPacks;
use crate::point::RecoveryPoint;
use crate::store::Store;
use crate::tree::{Node, decode, span};

/// Ids asked of the index at once.
const LOOKUP_BATCH: usize = 4096;

/// A chunk to find in the store: its id, the kind its place needs, and for data the length.
type Wanted = (ChunkId, ChunkKind, Option<u32>);

/// The check of one commit's points, one after the other, then [`Check::finish`].
pub(crate) struct Check<'s> {
    store: &'s Store,
    pending: &'s HashMap<ChunkId, Location>,
    lost: &'s LostPacks,
    /// Tree chunks followed, and whether for the disk's last place.
    trees: HashSet<(ChunkId, bool)>,
    /// Data chunks checked for a place in the middle of a disk (the chunk size).
    data: HashSet<ChunkId>,
    /// Chunks the session did not put, checked against the index at the end.
    held: Vec<Wanted>,
    /// The only chunks of the store the points may name without putting them; `None`: any.
    allowed: Option<Allowed<'s>>,
    /// Named, not put, and not allowed: answered as missing whatever the store holds.
    refused: Vec<ChunkId>,
}

/// The chunks of the store a restricted session's points may name without having put them:
/// its own (sorted), and those it put that the store held already (it sent their bytes).
pub(crate) struct Allowed<'s> {
    own: &'s [ChunkId],
    proven: &'s HashSet<ChunkId>,
}

impl<'s> Allowed<'s> {
    pub(crate) fn new(own: &'s [ChunkId], proven: &'s HashSet<ChunkId>) -> Self {
        Self { own, proven }
    }

    fn holds(&self, id: &ChunkId) -> bool {
        self.own.binary_search(id).is_ok() || self.proven.contains(id)
    }
}

/// One tree entry to follow: its id, level, and first chunk on the disk.
struct Entry {
    id: ChunkId,
    level: u8,
    first: u64,
}

impl<'s> Check<'s> {
    pub(crate) fn new(
        store: &'s Store,
        pending: &'s HashMap<ChunkId, Location>,
        lost: &'s LostPacks,
        allowed: Option<Allowed<'s>>,
    ) -> Self {
        Self {
            store,
            pending,
            lost,
            trees: HashSet::new(),
            data: HashSet::new(),
            held: Vec::new(),
            allowed,
            refused: Vec::new(),
        }
    }

    /// Whether a chunk the session did not put may be looked for in the store; one that may
    /// not is listed as missing.
    fn may_name(&mut self, id: &ChunkId) -> bool {
        let ok = self.allowed.as_ref().is_none_or(|a| a.holds(id));
        if !ok {
            self.refused.push(*id);
        }
        ok
    }

    /// Follows the tree of `p`.
    ///
    /// # Errors
    /// A chunk of the wrong kind, length or level (named), index and I/O errors.
    pub(crate) fn point(&mut self, p: &RecoveryPoint) -> Result<()> {
        let chunks = p.chunk_count();
        let top = span(p.depth);
        let mut stack: Vec<Entry> = crate::tree::top(p)?
            .into_iter()
            .enumerate()
            .map(|(k, id)| Entry {
                id,
                level: p.depth,
                first: k as u64 * top,
            })
            .collect();
        while let Some(e) = stack.pop() {
            let last = e.first + span(e.level) >= chunks;
            if !self.trees.insert((e.id, last)) {
                continue;
            }
            let Some(loc) = self.tree_to_follow(&e.id, last)? else {
                continue;
            };
            let wrong = |what: String| {
                Error::Usage(format!(
                    "point {}: tree chunk {} (level {}) {what}; nothing was stored",
                    p.short_id(),
                    e.id,
                    e.level
                ))
            };
            if loc.kind != ChunkKind::Tree {
                return Err(wrong("is a data chunk".into()));
            }
            let bytes = self.store.read_at(&e.id, &loc)?;
            match decode(&bytes).map_err(wrong)? {
                Node::Leaf(refs) if e.level == 0 => {
                    for (k, r) in refs.iter().enumerate() {
                        if let ChunkRef::Data(d) = r {
                            let place = place_len(p, e.first + k as u64);
                            self.data_chunk(*d, place).map_err(wrong)?;
                        }
                    }
                }
                Node::Inner(l, children) if l == e.level && e.level > 0 => {
                    let below = span(e.level - 1);
                    stack.extend(children.iter().enumerate().map(|(k, c)| Entry {
                        id: *c,
                        level: e.level - 1,
                        first: e.first + k as u64 * below,
                    }));
                }
                n => return Err(wrong(format!("is of level {}", n.level()))),
            }
        }
        Ok(())
    }

    /// Where tree chunk `id` is, when it must be followed: put in the session, indexed but
    /// referenced by no point, or holding the disk's last chunk (`last`: another point's tree
    /// may end in a chunk of another length; following it costs a node a level). `None` when
    /// it need not be (a live point's) or cannot be (not in the store: listed for the end).
    fn tree_to_follow(&mut self, id: &ChunkId, last: bool) -> Result<Option<Location>> {
        if let Some(loc) = self.pending.get(id) {
            return Ok(Some(*loc));
        }
        if !self.may_name(id) {
            return Ok(None);
        }
        if !last && self.store.holds_subtrees(&[*id])?.first() == Some(&true) {
            return Ok(None);
        }
        match self.store.locations(&[*id])?.pop().flatten() {
            Some(l) if !self.lost.covers(&l) => Ok(Some(l)),
            _ => {
                self.held.push((*id, ChunkKind::Tree, None));
                Ok(None)
            }
        }
    }

    /// Checks data chunk `id` at a place of `place` bytes (now if the session put it, else at
    /// the end).
    fn data_chunk(&mut self, id: ChunkId, place: (u32, bool)) -> Result<(), String> {
        let (len, last) = place;
        if !last && !self.data.insert(id) {
            return Ok(());
        }
        match self.pending.get(&id) {
            Some(l) if l.kind != ChunkKind::Data => Err(format!(
                "names chunk {id} as data, which was sent as a tree chunk"
            )),
            Some(l) if l.plain_len != len => Err(format!(
                "names data chunk {id} of {} bytes where its place on the disk holds {len}",
                l.plain_len
            )),
            Some(_) => Ok(()),
            None => {
                if self.may_name(&id) {
                    self.held.push((id, ChunkKind::Data, Some(len)));
                }
                Ok(())
            }
        }
    }

    /// Checks the chunks the session did not put against the index.
    ///
    /// # Errors
    /// [`Error::Incomplete`] naming the first few the store lacks; a chunk of the wrong kind or
    /// length; index errors.
    pub(crate) fn finish(self) -> Result<()> {
        let mut missing = self.refused;
        for batch in self.held.chunks(LOOKUP_BATCH) {
            let ids: Vec<ChunkId> = batch.iter().map(|(id, _, _)| *id).collect();
            for ((id, kind, len), loc) in batch.iter().zip(self.store.locations(&ids)?) {
                match loc {
                    Some(l) if l.kind != *kind => {
                        return Err(Error::Usage(format!(
                            "chunk {id} is named as a {kind:?} chunk but the store holds it as \
                             {:?}; nothing was stored",
                            l.kind
                        )));
                    }
                    Some(l) if len.is_some_and(|n| n != l.plain_len) => {
                        return Err(Error::Usage(format!(
                            "data chunk {id} is {} bytes where its place on the disk holds {}; \
                             nothing was stored",
                            l.plain_len,
                            len.unwrap_or_default()
                        )));
                    }
                    Some(l) if !self.lost.covers(&l) => {}
                    _ => missing.push(*id),
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let shown: Vec<String> = missing.iter().take(4).map(ChunkId::to_hex).collect();
        Err(Error::Incomplete {
            missing: missing.len() as u64,
            first: shown.join(", "),
        })
    }
}

/// The bytes chunk `i` of `p` holds, and whether it is the disk's last.
fn place_len(p: &RecoveryPoint, i: u64) -> (u32, bool) {
    let cs = u64::from(p.chunk_size);
    let last = i + 1 >= p.chunk_count();
    let len = if last {
        p.size.saturating_sub(i.saturating_mul(cs)).min(cs)
    } else {
        cs
    };
    (len as u32, last)
}
