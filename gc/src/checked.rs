//! What a verify has read whole, for `verify --since-last`: the packs the index held when a
//! complete run (every point, every chunk) started, each with its size then
//! (`STORE/verified-packs.json`). A chunk in such a pack, within that size, was read and
//! checked since it was written; anything else (a pack written later, frames appended past the
//! size, the new packs a gc rewrite makes) was not. Packs are written once and indexed at
//! their session's commit, so every frame within a recorded size belongs to a point the run
//! read, or is garbage. Chunks marked bad are read again by every run whatever this says.

use std::collections::HashMap;
use std::path::Path;

use cairn_store::{Location, PackId, PackInfo};

/// Name of the file.
pub const CHECKED_FILE: &str = "verified-packs.json";

/// The packs read whole, by hex id, with the bytes read through.
#[derive(Debug, Default, Clone)]
pub struct Checked(HashMap<String, u64>);

impl Checked {
    /// The record of `root`; an empty one when there is none or it cannot be read (then
    /// everything counts as unread, which is safe).
    #[must_use]
    pub fn load(root: &Path) -> Self {
        let map = std::fs::read(root.join(CHECKED_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self(map)
    }

    /// Whether the frame at `loc` was read by a complete run since it was written.
    #[must_use]
    pub fn covers(&self, loc: &Location) -> bool {
        let end = loc.offset + cairn_store::pack::FRAME_HEADER_SIZE + u64::from(loc.stored_len);
        self.0
            .get(&loc.pack.to_hex())
            .is_some_and(|&size| end <= size)
    }

    /// Records `packs` (the index's packs when a complete run started) as read whole; packs
    /// the index no longer holds are forgotten with it.
    ///
    /// # Errors
    /// I/O errors writing the file.
    pub fn record(root: &Path, packs: &HashMap<PackId, PackInfo>) -> crate::Result<()> {
        let map: HashMap<String, u64> = packs.iter().map(|(id, i)| (id.to_hex(), i.size)).collect();
        let bytes = serde_json::to_vec(&map).unwrap_or_default();
        cairn_store::write_atomic(&root.join(CHECKED_FILE), &bytes)?;
        Ok(())
    }
}

/// Whether chunk `id` is in part `n` (1-based) of `m`: parts split the ids evenly and for
/// good (by the id's first bytes), so `--subset 1/7` to `7/7` cover every chunk once.
#[must_use]
pub fn in_subset(id: &cairn_store::ChunkId, n: u32, m: u32) -> bool {
    let x = u32::from_le_bytes([id.0[0], id.0[1], id.0[2], id.0[3]]);
    m > 0 && x % m == n.saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_split_every_id_into_exactly_one_part() {
        let ids: Vec<cairn_store::ChunkId> = (0u32..5000)
            .map(|i| cairn_store::ChunkId(*blake3::hash(&i.to_le_bytes()).as_bytes()))
            .collect();
        let m = 7;
        let mut sizes = Vec::new();
        for id in &ids {
            let parts: Vec<u32> = (1..=m).filter(|n| in_subset(id, *n, m)).collect();
            assert_eq!(parts.len(), 1);
        }
        for n in 1..=m {
            sizes.push(ids.iter().filter(|id| in_subset(id, n, m)).count());
        }
        // Even enough: each part within a fifth of its share.
        assert!(sizes.iter().all(|s| (571..=858).contains(s)), "{sizes:?}");
    }
}
