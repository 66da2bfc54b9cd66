//! Reference counts and the garbage list.
//!
//! As the points are built (the `tree` module): a top entry of a point's tree counts the points
//! that name it, a node or leaf counts the live nodes that name it, a data chunk counts the live
//! leaves that name it. Committing a point adds one to each of its distinct top entries; only
//! an entry that goes from 0 to 1 (a new stretch of disk) is opened to add one to its children,
//! and so on down. Forgetting a point does the reverse, and a chunk that falls to 0 is written
//! to the `garbage` list under its pack and offset. So the work of a commit or a forget follows
//! what changed, not the size of the disk (a point of a 2 TiB disk shares all but a few nodes
//! with the one before), and garbage collection starts from a list instead of a walk over every
//! point.
//!
//! The counts change in the same RocksDB batch as the catalogue, so a crash never leaves them
//! out of step with the points. [`Store::recount`] rebuilds them from the points (after an
//! index rebuild, or on a store written before counts existed).

use std::collections::{HashMap, HashSet};

use rocksdb::{IteratorMode, WriteBatch};

use crate::chunk::ChunkId;
use crate::error::{Error, Result};
use crate::index::{
    CF_CHUNKS, CF_GARBAGE, CF_META, CF_REFS, Location, META_REFCOUNTS, decode_count, fixed_key,
    garbage_key,
};
use crate::point::RecoveryPoint;
use crate::store::Store;
use crate::tree::children;

/// What dropping some points would free ([`Store::would_free`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Freed {
    /// Chunks (data and tree) no point would reference.
    pub chunks: u64,
    /// Their bytes in packs (frames, headers included: what gc's rewrite frees of them).
    pub stored_bytes: u64,
    /// Of them, data chunks.
    pub data_chunks: u64,
    /// The plain bytes of those data chunks.
    pub plain_bytes: u64,
    /// Tree chunks that could not be read (what they name stays counted).
    pub warnings: Vec<String>,
}

/// Which way a count crossed zero.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Crossing {
    /// From 0 to more: the chunk came alive.
    Up,
    /// To 0: the chunk became garbage.
    Down,
}

/// Counts as they change within one batch: a chunk met again (the zero leaf under a node of one
/// point and at the top of another) sees its count as changed so far, not as the index has it.
struct Counter<'s> {
    store: &'s Store,
    /// The count in the index, where the chunk is, and the count now.
    counts: HashMap<ChunkId, (u64, Option<Location>, u64)>,
    warnings: Vec<String>,
}

impl<'s> Counter<'s> {
    fn new(store: &'s Store) -> Self {
        Self {
            store,
            counts: HashMap::new(),
            warnings: Vec::new(),
        }
    }

    /// Adds the deltas; returns the chunks whose count crossed zero.
    fn apply(&mut self, deltas: &HashMap<ChunkId, i64>) -> Result<Vec<(ChunkId, Crossing)>> {
        let load: Vec<ChunkId> = deltas
            .iter()
            .filter(|(id, d)| **d != 0 && !self.counts.contains_key(id))
            .map(|(id, _)| *id)
            .collect();
        let counts = self.store.refcounts(&load)?;
        let locations = self.store.locations(&load)?;
        for ((id, c), l) in load.into_iter().zip(counts).zip(locations) {
            self.counts.insert(id, (c, l, c));
        }
        let mut crossed = Vec::new();
        for (id, delta) in deltas {
            let Some((_, _, now)) = self.counts.get_mut(id) else {
                continue;
            };
            let old = *now;
            let mut new = i128::from(old) + i128::from(*delta);
            if new < 0 {
                self.warnings.push(format!(
                    "chunk {id}: reference count {old} would fall to {new}; kept at 0"
                ));
                new = 0;
            }
            *now = new as u64;
            if old == 0 && *now > 0 {
                crossed.push((*id, Crossing::Up));
            } else if old > 0 && *now == 0 {
                crossed.push((*id, Crossing::Down));
            }
        }
        Ok(crossed)
    }

    /// Writes the new counts, and garbage entries for the chunks that fell to 0 (removed for
    /// those that came alive), into `batch`.
    fn write(self, batch: &mut WriteBatch) -> Result<Vec<String>> {
        let (refs_cf, garbage_cf) = (self.store.cf(CF_REFS)?, self.store.cf(CF_GARBAGE)?);
        for (id, (before, loc, now)) in &self.counts {
            if before == now {
                continue;
            }
            if *now == 0 {
                batch.delete_cf(refs_cf, id.0);
            } else {
                batch.put_cf(refs_cf, id.0, now.to_be_bytes());
            }
            if let Some(l) = loc {
                let key = garbage_key(l.pack, l.offset);
                if *before == 0 {
                    batch.delete_cf(garbage_cf, key);
                } else if *now == 0 {
                    batch.put_cf(garbage_cf, key, id.0);
                }
            }
        }
        Ok(self.warnings)
    }
}

/// Tree chunks that cannot be read, and why.
type Unreadable = Vec<(ChunkId, String)>;

impl Store {
    /// Reference counts of chunks (0 for a chunk nothing references).
    ///
    /// # Errors
    /// Index errors.
    pub fn refcounts(&self, ids: &[ChunkId]) -> Result<Vec<u64>> {
        let cf = self.cf(CF_REFS)?;
        self.db
            .multi_get_cf(ids.iter().map(|id| (cf, id.0)))
            .into_iter()
            .zip(ids)
            .map(|(r, id)| {
                let v = r.map_err(self.index_err())?;
                decode_count(v.as_deref()).map_err(self.corrupt(CF_REFS, &id.0))
            })
            .collect()
    }

    /// For each id, whether the store holds the whole subtree under it: one meaning of "held"
    /// for everything that skips a subtree it is told is there (replication into a folder or a
    /// server, a commit's reference check). That is a chunk some point references: a live
    /// point's tree is complete. An indexed chunk no point references is not: garbage
    /// collection may keep its frame (in a pack it does not rewrite) while it deletes what it
    /// names.
    ///
    /// # Errors
    /// Index errors.
    pub fn holds_subtrees(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        Ok(self.refcounts(ids)?.into_iter().map(|n| n > 0).collect())
    }

    /// Whether the reference counts cover every point (false on a store written before they
    /// existed, until a writer opens it).
    ///
    /// # Errors
    /// Index errors.
    pub fn refcounts_ready(&self) -> Result<bool> {
        Ok(self
            .db
            .get_cf(self.cf(CF_META)?, META_REFCOUNTS)
            .map_err(self.index_err())?
            .is_some())
    }

    /// Counts points in (`+1`) or out (`-1`): their top tree entries, then the children of
    /// every entry whose count crossed zero, level by level down to the data chunks. Writes into
    /// `batch`; returns warnings (a tree chunk that cannot be read on the way out leaves its
    /// children counted: space is kept, nothing is lost).
    ///
    /// # Errors
    /// A tree chunk that cannot be read on the way in, index errors.
    pub(crate) fn count_refs(
        &self,
        batch: &mut WriteBatch,
        changes: &[(&RecoveryPoint, i64)],
    ) -> Result<Vec<String>> {
        self.counted(changes)?.write(batch)
    }

    /// What dropping `points` would make garbage, without changing anything: the chunks
    /// (data and tree) whose count would fall to zero, and their stored bytes, which the next
    /// `gc` reclaims (within its bound on garbage left in packs). Works on a read-only open; the
    /// work follows what the points hold alone, as a forget's does.
    ///
    /// # Errors
    /// Index errors.
    pub fn would_free(&self, points: &[RecoveryPoint]) -> Result<Freed> {
        let mut unique = HashSet::new();
        let changes: Vec<(&RecoveryPoint, i64)> = points
            .iter()
            .filter(|p| unique.insert(&p.id))
            .map(|p| (p, -1))
            .collect();
        let counter = self.counted(&changes)?;
        let mut freed = Freed::default();
        for (before, loc, now) in counter.counts.values() {
            if *before > 0 && *now == 0 {
                freed.chunks += 1;
                if let Some(l) = loc {
                    freed.stored_bytes += crate::pack::FRAME_HEADER_SIZE + u64::from(l.stored_len);
                    if l.kind == crate::ChunkKind::Data {
                        freed.data_chunks += 1;
                        freed.plain_bytes += u64::from(l.plain_len);
                    }
                }
            }
        }
        freed.warnings = counter.warnings;
        Ok(freed)
    }

    /// The data chunks that only `points` hold (no other point of the store names one): those
    /// whose count their removal would bring to zero. Costs what they hold alone (the tree
    /// chunks whose count reaches zero are opened, no other), however large the store; what a
    /// report of some VMs counts as theirs alone.
    ///
    /// # Errors
    /// Index errors.
    pub fn held_only_by(&self, points: &[&RecoveryPoint]) -> Result<HashSet<ChunkId>> {
        let mut unique = HashSet::new();
        let changes: Vec<(&RecoveryPoint, i64)> = points
            .iter()
            .filter(|p| unique.insert(&p.id))
            .map(|p| (*p, -1))
            .collect();
        let counter = self.counted(&changes)?;
        Ok(counter
            .counts
            .iter()
            .filter(|(_, (before, loc, now))| {
                *before > 0
                    && *now == 0
                    && loc
                        .as_ref()
                        .is_some_and(|l| l.kind == crate::ChunkKind::Data)
            })
            .map(|(id, _)| *id)
            .collect())
    }

    /// The counts after `changes`, not yet written.
    fn counted(&self, changes: &[(&RecoveryPoint, i64)]) -> Result<Counter<'_>> {
        let mut counter = Counter::new(self);
        let mut tree: HashMap<ChunkId, i64> = HashMap::new();
        for (p, sign) in changes {
            for id in p.distinct_segments() {
                *tree.entry(id).or_default() += sign;
            }
        }
        while !tree.is_empty() {
            let mut below: HashMap<ChunkId, i64> = HashMap::new();
            let mut data: HashMap<ChunkId, i64> = HashMap::new();
            for (id, way) in counter.apply(&tree)? {
                let sign = if way == Crossing::Up { 1 } else { -1 };
                let kids = self
                    .read_chunk(&id)
                    .and_then(|b| children(&b).map_err(|e| Error::Point(format!("{id}: {e}"))));
                match kids {
                    Ok((nodes, ids)) => {
                        let into = if nodes { &mut below } else { &mut data };
                        for k in ids {
                            *into.entry(k).or_default() += sign;
                        }
                    }
                    Err(e) if way == Crossing::Down => counter.warnings.push(format!(
                        "tree chunk {id} cannot be read, so what it names stays counted: {e}"
                    )),
                    Err(e) => return Err(e),
                }
            }
            counter.apply(&data)?;
            tree = below;
        }
        Ok(counter)
    }

    /// Rebuilds every reference count and the garbage list from the catalogued points.
    ///
    /// A tree segment that cannot be read (its pack lost or damaged) names chunks nobody can
    /// list: so that none of them is taken for garbage, every indexed chunk that no readable
    /// segment names is then held (counted once), the unreadable segments are marked missing
    /// (verify lists what they damage; a backup that writes one again heals it), and the store
    /// remembers them: the first writer that finds one readable again counts afresh. The store
    /// stays writable whatever was lost.
    ///
    /// # Errors
    /// Index errors.
    pub fn recount(&self) -> Result<()> {
        self.require_writer()?;
        let (counts, unreadable) = self.count_from_points()?;
        // Frames that a fresh copy superseded (a heal, a rebuild that found a chunk twice) are
        // garbage whatever the counts say: keep those entries.
        let mut superseded = Vec::new();
        for g in self.garbage()? {
            let indexed = self.location(&g.id)?;
            if indexed.is_some_and(|l| (l.pack, l.offset) != (g.pack, g.offset)) {
                superseded.push(g);
            }
        }
        let (refs_cf, garbage_cf) = (self.cf(CF_REFS)?, self.cf(CF_GARBAGE)?);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(refs_cf, &[][..], &[0xffu8; 33][..]);
        batch.delete_range_cf(garbage_cf, &[][..], &[0xffu8; 25][..]);
        for g in &superseded {
            batch.put_cf(garbage_cf, garbage_key(g.pack, g.offset), g.id.0);
        }
        for (id, n) in &counts {
            batch.put_cf(refs_cf, id.0, n.to_be_bytes());
        }
        self.count_unnamed(&mut batch, &counts, !unreadable.is_empty())?;
        let bad_cf = self.cf(crate::index::CF_BAD)?;
        let now = chrono::Utc::now().to_rfc3339();
        for (seg, what) in &unreadable {
            let mark = crate::index::BadMark {
                what: format!("tree segment unreadable: {what}"),
                location: None,
                found: now.clone(),
            };
            batch.put_cf(
                bad_cf,
                seg.0,
                crate::index::to_json(&mark, "a bad-chunk mark")?,
            );
        }
        let state = if unreadable.is_empty() {
            "1".to_owned()
        } else {
            let ids: Vec<String> = unreadable.iter().map(|(s, _)| s.to_hex()).collect();
            format!("partial:{}", ids.join(","))
        };
        batch.put_cf(self.cf(CF_META)?, META_REFCOUNTS, state.as_bytes());
        self.write_synced(batch)
    }

    /// The references of every chunk reachable from a point (each tree chunk opened once), and
    /// the tree chunks that cannot be read.
    fn count_from_points(&self) -> Result<(HashMap<ChunkId, u64>, Unreadable)> {
        let mut counts: HashMap<ChunkId, u64> = HashMap::new();
        let mut visited: HashSet<ChunkId> = HashSet::new();
        let mut next: Vec<ChunkId> = Vec::new();
        for p in self.points()? {
            for id in p.distinct_segments() {
                *counts.entry(id).or_default() += 1;
                if visited.insert(id) {
                    next.push(id);
                }
            }
        }
        let mut unreadable: Vec<(ChunkId, String)> = Vec::new();
        while let Some(node) = next.pop() {
            let kids = self
                .read_chunk(&node)
                .and_then(|bytes| children(&bytes).map_err(Error::Point));
            match kids {
                Ok((nodes, ids)) => {
                    for id in ids {
                        *counts.entry(id).or_default() += 1;
                        if nodes && visited.insert(id) {
                            next.push(id);
                        }
                    }
                }
                Err(e) => unreadable.push((node, e.to_string())),
            }
        }
        Ok((counts, unreadable))
    }

    /// Every indexed chunk no point names: garbage, or, when a tree chunk could not be read
    /// (`held`: it may name them), held once and never garbage.
    fn count_unnamed(
        &self,
        batch: &mut WriteBatch,
        counts: &HashMap<ChunkId, u64>,
        held: bool,
    ) -> Result<()> {
        let (refs_cf, garbage_cf) = (self.cf(CF_REFS)?, self.cf(CF_GARBAGE)?);
        for item in self
            .db
            .iterator_cf(self.cf(CF_CHUNKS)?, IteratorMode::Start)
        {
            let (k, v) = item.map_err(self.index_err())?;
            let id = fixed_key::<32>(&k).map_err(self.corrupt(CF_CHUNKS, &k))?;
            let loc = self.decode_location(&k, &v)?;
            if counts.contains_key(&ChunkId(id)) {
                continue;
            }
            if held {
                batch.put_cf(refs_cf, id, 1u64.to_be_bytes());
            } else {
                batch.put_cf(garbage_cf, garbage_key(loc.pack, loc.offset), id);
            }
        }
        Ok(())
    }

    /// Whether the counts were made while tree segments were unreadable and one of them can be
    /// read now (a backup wrote it again): then they are counted afresh.
    pub(crate) fn recount_due(&self) -> Result<bool> {
        let state = self
            .db
            .get_cf(self.cf(CF_META)?, META_REFCOUNTS)
            .map_err(self.index_err())?;
        let Some(list) = state
            .as_deref()
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.strip_prefix("partial:"))
            .map(str::to_owned)
        else {
            return Ok(false);
        };
        for hex in list.split(',') {
            if let Some(id) = ChunkId::from_hex(hex)
                && self.read_chunk(&id).is_ok()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
