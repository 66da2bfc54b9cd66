//! Packs the index names whose file is gone or shorter than the index says: what of them a new
//! point may not reuse.

use std::collections::HashMap;

use crate::index::{Location, PackInfo};
use crate::pack::{FRAME_HEADER_SIZE, PackId};

/// The indexed packs that are gone (removed, lost) or cut short (truncated), each with the
/// bytes that are still there (0 when gone). A frame that lies past that end cannot be read:
/// a backup stores its chunk afresh and a point may not reference it.
#[derive(Debug, Clone, Default)]
pub struct LostPacks(HashMap<PackId, u64>);

impl LostPacks {
    /// From the index's packs and the lengths of the pack files (or objects) that exist.
    #[must_use]
    pub fn find(indexed: &HashMap<PackId, PackInfo>, stored: &HashMap<PackId, u64>) -> Self {
        Self(
            indexed
                .iter()
                .filter_map(|(id, info)| {
                    let have = stored.get(id).copied().unwrap_or(0);
                    (have < info.size).then_some((*id, have))
                })
                .collect(),
        )
    }

    /// Whether the frame at `loc` lies (in part) where its pack is gone.
    #[must_use]
    pub fn covers(&self, loc: &Location) -> bool {
        self.0
            .get(&loc.pack)
            .is_some_and(|have| loc.offset + FRAME_HEADER_SIZE + u64::from(loc.stored_len) > *have)
    }

    /// Whether no pack is gone or short.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
