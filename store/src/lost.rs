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

impl crate::store::Store {
    /// A line for each indexed pack kept here whose file is gone or cut short (every open of a
    /// store whose packs are in its folder says so; one folder listing).
    ///
    /// # Errors
    /// Index and I/O errors.
    pub(crate) fn lost_pack_warnings(&self) -> crate::error::Result<Vec<String>> {
        if self.bucket().is_some() {
            return Ok(Vec::new());
        }
        let lost = LostPacks::find(&self.pack_infos()?, &self.stored_pack_lengths()?);
        let mut out: Vec<String> = lost
            .0
            .iter()
            .map(|(id, have)| {
                let what = if *have == 0 {
                    "is gone".to_owned()
                } else {
                    format!("is cut short at {have} bytes")
                };
                format!(
                    "pack {} {what}: `cairn verify` names the points it damages; a key backup \
                     of their disks (`cairn backup --key`) stores its chunks afresh",
                    id.to_hex()
                )
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// What is wrong with the packs as files, a line each: a pack file gone or shorter than the
    /// index says (the chunks past its end are lost), a pack header that is not cairn's (no
    /// chunk is lost by that: every frame carries its own header), a pack in quarantine. Reads
    /// 32 bytes of each pack kept here; a store in a bucket lists its objects once.
    ///
    /// # Errors
    /// Index errors, the bucket's failures.
    pub fn pack_damage(&self) -> crate::error::Result<Vec<String>> {
        use std::os::unix::fs::FileExt;
        let indexed = self.pack_infos()?;
        let stored = self.stored_pack_lengths()?;
        let mut out = Vec::new();
        let mut ids: Vec<&PackId> = indexed.keys().collect();
        ids.sort();
        for id in ids {
            let want = indexed.get(id).map_or(0, |i| i.size);
            match stored.get(id) {
                None => out.push(format!(
                    "pack {}: gone (the index says {want} bytes)",
                    id.to_hex()
                )),
                Some(have) if *have < want => out.push(format!(
                    "pack {}: {have} bytes where the index says {want}: cut short, the frames \
                     past byte {have} are lost",
                    id.to_hex()
                )),
                Some(_) => {}
            }
            let path = id.path(&self.packs_dir());
            let mut header = [0u8; crate::pack::PACK_HEADER_SIZE as usize];
            if let Ok(f) = std::fs::File::open(&path)
                && f.read_exact_at(&mut header, 0).is_ok()
                && (header[0..8] != crate::pack::PACK_MAGIC
                    || header[8..12] != crate::pack::PACK_VERSION.to_be_bytes())
            {
                out.push(format!(
                    "pack {}: its header is damaged (no chunk is lost by that: every frame \
                     carries its own header, and a rebuild reads past it)",
                    id.to_hex()
                ));
            }
        }
        let mut quarantined: Vec<String> = crate::quarantine::list(self.root())?
            .values()
            .map(|q| format!("quarantined {}", q.describe()))
            .collect();
        quarantined.sort();
        out.extend(quarantined);
        Ok(out)
    }
}
