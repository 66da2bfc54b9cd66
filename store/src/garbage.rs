//! What garbage collection reads and changes in the index: the garbage list, packs and chunks
//! as indexed, pack files the index does not know, and the one batch that swaps packs.

use std::collections::HashMap;
use std::path::PathBuf;

use rocksdb::{IteratorMode, WriteBatch};

use crate::chunk::ChunkId;
use crate::error::Result;
use crate::index::{
    CF_BAD, CF_CHUNKS, CF_GARBAGE, CF_PACKS, CF_REFS, Location, PackInfo, fixed_key, to_json,
};
use crate::pack::PackId;
use crate::store::Store;

/// An unreferenced (or superseded) frame on the garbage list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GarbageFrame {
    /// The pack.
    pub pack: PackId,
    /// Offset of the frame.
    pub offset: u64,
    /// The chunk the frame holds.
    pub id: ChunkId,
}

/// One garbage collection's change to the index, applied in one batch by [`Store::sweep`].
#[derive(Debug, Default, Clone)]
pub struct Sweep {
    /// Chunks to drop from the index (their count is 0).
    pub dead: Vec<ChunkId>,
    /// Chunks copied to a new pack: new locations.
    pub moved: Vec<(ChunkId, Location)>,
    /// Packs to drop from the index (their files are deleted after the batch).
    pub removed_packs: Vec<PackId>,
    /// New packs.
    pub added_packs: Vec<(PackId, PackInfo)>,
}

impl Store {
    /// The garbage list, in pack and offset order.
    ///
    /// # Errors
    /// Index errors.
    pub fn garbage(&self) -> Result<Vec<GarbageFrame>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_GARBAGE)?, IteratorMode::Start)
        {
            let (k, v) = item.map_err(self.index_err())?;
            let key = fixed_key::<24>(&k).map_err(self.corrupt(CF_GARBAGE, &k))?;
            let id = fixed_key::<32>(&v)
                .map_err(|e| self.corrupt(CF_GARBAGE, &k)(format!("value: {e}")))?;
            let (pack, off) = key.split_at(16);
            out.push(GarbageFrame {
                pack: PackId(fixed_key::<16>(pack).map_err(self.corrupt(CF_GARBAGE, &k))?),
                offset: u64::from_be_bytes(
                    fixed_key::<8>(off).map_err(self.corrupt(CF_GARBAGE, &k))?,
                ),
                id: ChunkId(id),
            });
        }
        Ok(out)
    }

    /// Every pack the index knows.
    ///
    /// # Errors
    /// Index errors.
    pub fn pack_infos(&self) -> Result<HashMap<PackId, PackInfo>> {
        let mut out = HashMap::new();
        for item in self.db.iterator_cf(self.cf(CF_PACKS)?, IteratorMode::Start) {
            let (k, v) = item.map_err(self.index_err())?;
            let id = fixed_key::<16>(&k).map_err(self.corrupt(CF_PACKS, &k))?;
            let info = serde_json::from_slice::<PackInfo>(&v)
                .map_err(|e| self.corrupt(CF_PACKS, &k)(e.to_string()))?;
            out.insert(PackId(id), info);
        }
        Ok(out)
    }

    /// Every indexed chunk and where it is, in id order.
    ///
    /// # Errors
    /// Index errors.
    pub fn chunk_entries(&self) -> Result<Vec<(ChunkId, Location)>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_CHUNKS)?, IteratorMode::Start)
        {
            let (k, v) = item.map_err(self.index_err())?;
            let id = fixed_key::<32>(&k).map_err(self.corrupt(CF_CHUNKS, &k))?;
            out.push((ChunkId(id), self.decode_location(&k, &v)?));
        }
        Ok(out)
    }

    /// Pack files that the index does not know: left by a killed backup or garbage collection,
    /// or being written by a backup running now. Only a holder of the write lock may treat them
    /// as garbage (no backup runs then).
    ///
    /// # Errors
    /// I/O and index errors.
    pub fn unindexed_pack_files(&self) -> Result<Vec<(PathBuf, u64)>> {
        let known = self.pack_infos()?;
        let mut out = Vec::new();
        for path in crate::files::files_under(&self.packs_dir(), "pack")? {
            let id = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(PackId::from_hex);
            if id.is_none_or(|id| !known.contains_key(&id)) {
                let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                out.push((path, len));
            }
        }
        Ok(out)
    }

    /// Applies a garbage collection's change to the index in one synced batch: dead chunks
    /// leave the index (with their counts, marks and garbage entries), moved chunks get their
    /// new location (only where the index still names the old one), removed packs and their
    /// garbage entries go, new packs arrive. The caller deletes the removed packs' files after.
    ///
    /// # Errors
    /// Index errors.
    pub fn sweep(&self, sweep: &Sweep) -> Result<()> {
        self.require_writer()?;
        let (chunks, packs) = (self.cf(CF_CHUNKS)?, self.cf(CF_PACKS)?);
        let (refs, bad, garbage) = (self.cf(CF_REFS)?, self.cf(CF_BAD)?, self.cf(CF_GARBAGE)?);
        let mut batch = WriteBatch::default();
        for id in &sweep.dead {
            batch.delete_cf(chunks, id.0);
            batch.delete_cf(refs, id.0);
            batch.delete_cf(bad, id.0);
        }
        for (id, loc) in &sweep.moved {
            batch.put_cf(chunks, id.0, loc.encode());
        }
        for p in &sweep.removed_packs {
            batch.delete_cf(packs, p.0);
            // Every garbage key of the pack: its 16-byte id, then an 8-byte offset.
            let last = crate::index::garbage_key(*p, u64::MAX);
            batch.delete_range_cf(garbage, &p.0[..], &last[..]);
            batch.delete_cf(garbage, last);
        }
        for (p, info) in &sweep.added_packs {
            batch.put_cf(packs, p.0, to_json(info, "a pack entry")?);
        }
        self.write_synced(batch)?;
        if self.bucket().is_some() {
            let cache = self.tree_cache();
            for id in &sweep.dead {
                cache.drop_entry(id);
            }
        }
        Ok(())
    }
}
