//! Reference counts and the garbage list.
//!
//! Two levels, as the points are built: a tree segment counts the points that name it, a data
//! chunk counts the live segments that name it. Committing a point adds one to each of its
//! distinct segments; only a segment that goes from 0 to 1 (a new stretch of disk) is opened to
//! add one to its chunks. Forgetting a point does the reverse, and a chunk that falls to 0 is
//! written to the `garbage` list under its pack and offset. So the work of a commit or a forget
//! follows what changed, not the size of the disk, and garbage collection starts from a list
//! instead of a walk over every point.
//!
//! The counts change in the same RocksDB batch as the catalogue, so a crash never leaves them
//! out of step with the points. [`Store::recount`] rebuilds them from the points (after an
//! index rebuild, or on a store written before counts existed).

use std::collections::{HashMap, HashSet};

use rocksdb::{IteratorMode, WriteBatch};

use crate::chunk::{ChunkId, ChunkRef};
use crate::error::{Error, Result};
use crate::index::{
    CF_CHUNKS, CF_GARBAGE, CF_META, CF_REFS, Location, META_REFCOUNTS, decode_count, fixed_key,
    garbage_key,
};
use crate::point::{RecoveryPoint, decode_segment};
use crate::store::Store;

/// Which way a count crossed zero.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Crossing {
    /// From 0 to more: the chunk came alive.
    Up,
    /// To 0: the chunk became garbage.
    Down,
}

/// The distinct data chunk ids of a segment's bytes.
fn segment_chunks(bytes: &[u8]) -> Result<Vec<ChunkId>, String> {
    let mut seen = HashSet::new();
    Ok(decode_segment(bytes)?
        .into_iter()
        .filter_map(|r| match r {
            ChunkRef::Data(id) if seen.insert(id) => Some(id),
            _ => None,
        })
        .collect())
}

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

    /// Adds `delta` to the counts of `ids`, writing new counts and garbage entries into
    /// `batch`; returns the chunks whose count crossed zero.
    fn apply_deltas(
        &self,
        batch: &mut WriteBatch,
        deltas: &HashMap<ChunkId, i64>,
        warnings: &mut Vec<String>,
    ) -> Result<Vec<(ChunkId, Crossing)>> {
        let ids: Vec<ChunkId> = deltas
            .iter()
            .filter(|(_, d)| **d != 0)
            .map(|(id, _)| *id)
            .collect();
        let counts = self.refcounts(&ids)?;
        let locations = self.locations(&ids)?;
        let (refs_cf, garbage_cf) = (self.cf(CF_REFS)?, self.cf(CF_GARBAGE)?);
        let mut crossed = Vec::new();
        for ((id, count), loc) in ids.iter().zip(counts).zip(locations) {
            let delta = deltas.get(id).copied().unwrap_or(0);
            let mut new = i128::from(count) + i128::from(delta);
            if new < 0 {
                warnings.push(format!(
                    "chunk {id}: reference count {count} would fall to {new}; kept at 0"
                ));
                new = 0;
            }
            let new = new as u64;
            if new == 0 {
                batch.delete_cf(refs_cf, id.0);
            } else {
                batch.put_cf(refs_cf, id.0, new.to_be_bytes());
            }
            let garbage = |l: &Location| garbage_key(l.pack, l.offset);
            if count == 0 && new > 0 {
                if let Some(l) = &loc {
                    batch.delete_cf(garbage_cf, garbage(l));
                }
                crossed.push((*id, Crossing::Up));
            } else if count > 0 && new == 0 {
                if let Some(l) = &loc {
                    batch.put_cf(garbage_cf, garbage(l), id.0);
                }
                crossed.push((*id, Crossing::Down));
            }
        }
        Ok(crossed)
    }

    /// Counts points in (`+1`) or out (`-1`): segment counts, then the chunks of every segment
    /// whose count crossed zero. Writes into `batch`; returns warnings (a segment that cannot
    /// be read on the way out leaves its chunks counted: space is kept, nothing is lost).
    ///
    /// # Errors
    /// A segment that cannot be read on the way in, index errors.
    pub(crate) fn count_refs(
        &self,
        batch: &mut WriteBatch,
        changes: &[(&RecoveryPoint, i64)],
    ) -> Result<Vec<String>> {
        let mut warnings = Vec::new();
        let mut seg_deltas: HashMap<ChunkId, i64> = HashMap::new();
        for (p, sign) in changes {
            for seg in p.distinct_segments().map_err(Error::Point)? {
                *seg_deltas.entry(seg).or_default() += sign;
            }
        }
        let mut chunk_deltas: HashMap<ChunkId, i64> = HashMap::new();
        for (seg, way) in self.apply_deltas(batch, &seg_deltas, &mut warnings)? {
            let sign = if way == Crossing::Up { 1 } else { -1 };
            let chunks = self
                .read_chunk(&seg)
                .and_then(|b| segment_chunks(&b).map_err(|e| Error::Point(format!("{seg}: {e}"))));
            match chunks {
                Ok(ids) => {
                    for id in ids {
                        *chunk_deltas.entry(id).or_default() += sign;
                    }
                }
                Err(e) if way == Crossing::Down => warnings.push(format!(
                    "tree segment {seg} cannot be read, so its chunks stay counted: {e}"
                )),
                Err(e) => return Err(e),
            }
        }
        self.apply_deltas(batch, &chunk_deltas, &mut warnings)?;
        Ok(warnings)
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
        let mut counts: HashMap<ChunkId, u64> = HashMap::new();
        let mut segments: HashSet<ChunkId> = HashSet::new();
        for p in self.points()? {
            for seg in p.distinct_segments().map_err(Error::Point)? {
                *counts.entry(seg).or_default() += 1;
                segments.insert(seg);
            }
        }
        let mut unreadable: Vec<(ChunkId, String)> = Vec::new();
        for seg in &segments {
            let ids = self
                .read_chunk(seg)
                .and_then(|bytes| segment_chunks(&bytes).map_err(Error::Point));
            match ids {
                Ok(ids) => {
                    for id in ids {
                        *counts.entry(id).or_default() += 1;
                    }
                }
                Err(e) => unreadable.push((*seg, e.to_string())),
            }
        }
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
            if unreadable.is_empty() {
                batch.put_cf(garbage_cf, garbage_key(loc.pack, loc.offset), id);
            } else {
                // Perhaps named by an unreadable segment: held, never garbage.
                batch.put_cf(refs_cf, id, 1u64.to_be_bytes());
            }
        }
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
