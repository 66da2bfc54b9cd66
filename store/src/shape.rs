//! Whether a point's record agrees with its tree.
//!
//! A root file is plain JSON an admin (or damage) can change into other valid JSON; its tree is
//! content-addressed and cannot be. The size a record states fixes the tree's shape: how many
//! entries its top level and the last node of each level hold, how many refs its last leaf
//! holds, and how long its last chunk is. A record whose size says otherwise than its tree does
//! not restore; a rebuild refuses it (and takes the old index's entry where that one agrees),
//! and verify names it.

use std::path::Path;

use rocksdb::WriteBatch;

use crate::RecoveryPoint;
use crate::catalogue::point_key;
use crate::chunk::ChunkRef;
use crate::error::{Error, Result};
use crate::files::write_atomic;
use crate::index::{CF_POINTS, to_json};
use crate::store::Store;
use crate::tree::{self, Node, span};

/// The suffix a refused root file is renamed with (kept for a look, never read as a point).
pub const REFUSED_SUFFIX: &str = ".disagrees";

impl Store {
    /// What in `p`'s record disagrees with its tree, or `None` when it agrees. A tree chunk or
    /// index entry that cannot be read is not held against the record (verify names those).
    ///
    /// # Errors
    /// Index errors.
    pub fn shape_disagreement(&self, p: &RecoveryPoint) -> Result<Option<String>> {
        let total = p.chunk_count();
        let mut ids = match tree::top(p) {
            Ok(t) => t,
            Err(e) => return Ok(Some(e.to_string())),
        };
        if total == 0 {
            return Ok(None);
        }
        let mut level = p.depth;
        let mut first = 0u64;
        loop {
            let Some(id) = ids.last().copied() else {
                return Ok(Some(format!("an empty node at level {level}")));
            };
            let start = first + (ids.len() as u64 - 1) * span(level);
            let remaining = total - start;
            let Ok(node) = self
                .read_chunk(&id)
                .and_then(|b| tree::decode(&b).map_err(Error::Point))
            else {
                return Ok(None);
            };
            match node {
                Node::Leaf(refs) => {
                    if level != 0 {
                        return Ok(Some(format!(
                            "a leaf where a node of level {level} belongs"
                        )));
                    }
                    if refs.len() as u64 != remaining {
                        return Ok(Some(format!(
                            "its size of {} bytes gives {remaining} chunk(s) in the last leaf, \
                             which holds {}",
                            p.size,
                            refs.len()
                        )));
                    }
                    let want = p.size - (total - 1) * u64::from(p.chunk_size);
                    if let Some(ChunkRef::Data(last)) = refs.last()
                        && let Some(l) = self.location(last)?
                        && u64::from(l.plain_len) != want
                    {
                        return Ok(Some(format!(
                            "its size of {} bytes leaves {want} bytes for the last chunk, which \
                             holds {}",
                            p.size, l.plain_len
                        )));
                    }
                    return Ok(None);
                }
                Node::Inner(l, kids) => {
                    if level == 0 || l != level {
                        return Ok(Some(format!(
                            "a node of level {l} where level {level} belongs"
                        )));
                    }
                    let want = remaining.div_ceil(span(level - 1));
                    if kids.len() as u64 != want {
                        return Ok(Some(format!(
                            "its size of {} bytes gives {want} entries in the last node of level \
                             {level}, which holds {}",
                            p.size,
                            kids.len()
                        )));
                    }
                    ids = kids.to_vec();
                    first = start;
                    level -= 1;
                }
            }
        }
    }

    /// After a rebuild: every catalogued point whose record disagrees with its tree is settled.
    /// The old index's entry of the point (in `aside`), when it agrees, is taken and its root
    /// file written again from it; else the point leaves the catalogue and its root file is
    /// renamed with [`REFUSED_SUFFIX`]. Returns what was done, a line each, and how many points
    /// left the catalogue.
    ///
    /// # Errors
    /// Index and I/O errors.
    pub(crate) fn settle_shapes(&self, aside: Option<&Path>) -> Result<(Vec<String>, u64)> {
        self.require_writer()?;
        let old = aside.and_then(crate::index::open_as_it_is);
        let mut notes = Vec::new();
        let mut dropped = 0u64;
        for p in self.points()? {
            let Some(what) = self.shape_disagreement(&p)? else {
                continue;
            };
            let earlier = old.as_ref().and_then(|db| {
                let cf = db.cf_handle(CF_POINTS)?;
                let bytes = db.get_cf(cf, point_key(&p.id).ok()?).ok()??;
                serde_json::from_slice::<RecoveryPoint>(&bytes).ok()
            });
            let path = self.root().join(p.root_file());
            let shown = format!("point {} ({}/{})", p.short_id(), p.vm, p.disk);
            if let Some(e) = earlier.filter(|e| e.root_file() == p.root_file())
                && self.shape_disagreement(&e)?.is_none()
            {
                let json =
                    serde_json::to_vec_pretty(&e).map_err(|x| Error::Point(x.to_string()))?;
                self.put_root(&e.root_file(), &json)?;
                write_atomic(&path, &json)?;
                let mut batch = WriteBatch::default();
                crate::orders::put_entry(
                    &self.db,
                    &mut batch,
                    &e,
                    &to_json(&e, "a catalogue entry")?,
                )?;
                self.write_synced(batch)?;
                notes.push(format!(
                    "{shown}: its root file disagrees with its tree ({what}): written again from \
                     the old index's entry, which agrees"
                ));
            } else {
                let mut refused = path.clone().into_os_string();
                refused.push(REFUSED_SUFFIX);
                std::fs::rename(&path, &refused)
                    .map_err(Error::io(&path, "setting a refused root file aside"))?;
                // The bucket's copy would come back with the next rebuild: the one kept is here.
                self.delete_root(&p.root_file())?;
                let mut batch = WriteBatch::default();
                crate::orders::delete_entry(&self.db, &mut batch, &p)?;
                self.write_synced(batch)?;
                dropped += 1;
                notes.push(format!(
                    "{shown}: its root file disagrees with its tree ({what}) and no earlier record \
                     agrees: the point is left out of the index; its root file is kept as {}",
                    Path::new(&refused).display()
                ));
            }
        }
        if dropped > 0 {
            self.recount()?;
        }
        Ok((notes, dropped))
    }
}
