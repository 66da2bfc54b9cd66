//! Keeping a disk's chunks together over its generations. A chunk is stored once, in the pack
//! of the backup that first met it; a disk changed a little every day ends up with its chunks
//! spread over the packs of many days, each of which it barely uses, and a restore of a late
//! generation reads from all of them (Lillibridge et al., FAST'13; Fu et al., ATC'14 show that
//! storing again a small share of the chunks recovers most of the speed).
//!
//! Before a backup that reads the whole disk, the packs of which the disk's latest point uses
//! less than half are found here; the backup then stores again the chunks it meets in them,
//! within a budget of plain bytes ([`crate::Session::set_rewrite`]). The old frames become
//! garbage at commit (gc reclaims them), so the cost is the rewrite's writes and a short-lived
//! copy, not lasting space.

use std::collections::{HashMap, HashSet};

use crate::chunk::{ChunkId, ChunkRef};
use crate::error::Result;
use crate::pack::PackId;
use crate::point::RecoveryPoint;
use crate::store::Store;
use crate::tree::{Body, Walk};

/// Packs a point uses less than this share of are rewritten from.
const SPARSE_SHARE: f64 = 0.5;

impl Store {
    /// The packs `point` barely uses (less than half of their chunks are its data), and the
    /// plain bytes of its data chunks (each leaf's distinct chunks counted). Reads the point's
    /// tree and looks up where its chunks are: work that follows its data. A stretch under a
    /// tree chunk that cannot be read is left out (the backup that asks may be the key backup
    /// that heals it).
    ///
    /// # Errors
    /// Index errors.
    pub fn sparse_packs(&self, point: &RecoveryPoint) -> Result<(HashSet<PackId>, u64)> {
        let mut used: HashMap<PackId, u64> = HashMap::new();
        let mut bytes = 0u64;
        let mut walk = Walk::new(self, point)?;
        while let Some(x) = walk.next_extent()? {
            let refs = match x.body {
                Body::Refs(r) => r,
                Body::Zero | Body::Unreadable(_) => continue,
            };
            let mut ids: Vec<ChunkId> = refs
                .iter()
                .filter_map(|r| match r {
                    ChunkRef::Data(id) => Some(*id),
                    ChunkRef::Zero => None,
                })
                .collect();
            ids.sort_unstable();
            ids.dedup();
            for loc in self.locations(&ids)?.into_iter().flatten() {
                *used.entry(loc.pack).or_default() += 1;
                bytes += u64::from(loc.plain_len);
            }
        }
        let infos = self.pack_infos()?;
        let sparse = used
            .into_iter()
            .filter(|(pack, n)| {
                infos
                    .get(pack)
                    .is_some_and(|i| (*n as f64) < SPARSE_SHARE * i.chunks as f64)
            })
            .map(|(pack, _)| pack)
            .collect();
        Ok((sparse, bytes))
    }
}
