//! Indexing the packs: each scanned here, or read from its frame list in the bucket (a few
//! kilobytes each, not the data); a chunk found twice is indexed where it reads back as its id.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use rocksdb::WriteBatch;

use super::Rebuild;
use crate::Keys;
use crate::chunk::{self, ChunkId, EncodedChunk};
use crate::error::{Error, Result};
use crate::files::files_under;
use crate::index::{CF_CHUNKS, CF_GARBAGE, CF_PACKS, Location, PackInfo, garbage_key, to_json};
use crate::objects::Objects;
use crate::pack::{self, PackId, PackScan};
use crate::quarantine::Quarantined;

/// One pack's scan, with the name of where it was read.
type Scans = Vec<(String, Result<PackScan>)>;

impl Rebuild<'_> {
    /// Indexes every pack. Packs here beside a bucket are a killed session's: not indexed.
    pub(super) fn index_packs(&mut self) -> Result<()> {
        for (shown, scan) in self.scans()? {
            if let Some(scan) = self.readable(scan)? {
                self.index_pack(&shown, &scan)?;
            }
        }
        Ok(())
    }

    /// The packs' scans: here, or from their frame lists in the bucket.
    fn scans(&mut self) -> Result<Scans> {
        match &self.bucket {
            Some(b) => {
                let (scans, unlisted) = crate::bucket::frame_lists(b.as_ref())?;
                if unlisted > 0 {
                    self.report.problems.push(format!(
                        "{unlisted} pack object(s) without a frame list (an upload that did not \
                         finish; no point names them): not indexed, garbage collection deletes \
                         them"
                    ));
                }
                let shown = b.describe();
                Ok(scans.into_iter().map(|s| (shown.clone(), s)).collect())
            }
            None => Ok(files_under(&self.root.join("packs"), "pack")?
                .into_iter()
                .map(|path| (path.display().to_string(), pack::scan(&path)))
                .collect()),
        }
    }

    /// A scan to index, or `None` (the failure reported). A bucket pack whose frame list does
    /// not decode: the pack itself is read (and its frame list written again); one that cannot
    /// be is not indexed, and kept.
    fn readable(&mut self, scan: Result<PackScan>) -> Result<Option<PackScan>> {
        let e = match scan {
            Ok(s) => return Ok(Some(s)),
            Err(e) => e,
        };
        let Some(b) = &self.bucket else {
            self.report.problems.push(e.to_string());
            return Ok(None);
        };
        let pack = match &e {
            Error::Objects { name, .. } => crate::bucket::object_pack(name),
            _ => None,
        };
        let Some(pack) = pack else {
            self.report.problems.push(e.to_string());
            return Ok(None);
        };
        match rescan_bucket_pack(self.root, b.as_ref(), pack) {
            Ok(s) => {
                let again = if s.is_whole() {
                    " and its frame list written again"
                } else {
                    ""
                };
                self.report
                    .problems
                    .push(format!("{e}: the pack was read whole instead{again}"));
                Ok(Some(s))
            }
            Err(again) => {
                self.quarantined
                    .push(Quarantined::whole(pack, 0, e.to_string()));
                self.report
                    .problems
                    .push(format!("{e}; reading the pack itself: {again}"));
                Ok(None)
            }
        }
    }

    /// Whether the frame at `loc` reads back as chunk `id`, here or in the bucket.
    fn good(&self, id: &ChunkId, loc: &Location) -> bool {
        match &self.bucket {
            Some(b) => remote_frame_is_good(self.keys.as_ref(), b.as_ref(), id, loc),
            None => frame_is_good(self.keys.as_ref(), &self.root.join("packs"), id, loc),
        }
    }

    /// Indexes one pack's frames in one batch; its damage is reported, and a pack with bytes
    /// no frame accounts for is quarantined.
    fn index_pack(&mut self, shown: &str, scan: &PackScan) -> Result<()> {
        if let Some(what) = scan.damage() {
            let recovered = if scan.recovered.is_empty() {
                String::new()
            } else {
                format!(
                    ", {} chunk(s) read back from under damaged frame headers",
                    scan.recovered.len()
                )
            };
            self.report.problems.push(format!(
                "{shown}: pack {}: {what}; {} whole frame(s) read{recovered}",
                scan.id.to_hex(),
                scan.frames.len()
            ));
        }
        if !scan.is_whole() {
            self.quarantined.push(Quarantined::of(scan));
        }
        self.salvage
            .extend(scan.recovered.iter().map(|r| r.chunk.clone()));
        let checked = self.earlier_copies(scan)?;
        let mut batch = WriteBatch::default();
        // Frames of this pack indexed by this batch (a pack may hold a chunk twice).
        let mut here: HashMap<ChunkId, Location> = HashMap::new();
        for f in &scan.frames {
            let id = f.header.id;
            let loc = Location {
                pack: scan.id,
                offset: f.offset,
                stored_len: f.header.stored_len,
                plain_len: f.header.plain_len,
                codec: f.header.codec,
                kind: f.header.kind,
            };
            let earlier = match here.get(&id) {
                Some(l) => Some(*l),
                None => self.indexed(&id)?,
            };
            // A chunk stored twice (a heal stored a fresh copy of a damaged one, or gc copied
            // it): index a copy that reads back as its id; the other is garbage.
            let keep = match earlier {
                None => loc,
                Some(old) => {
                    self.report.duplicates += 1;
                    let old_is_good = checked
                        .get(&(id, old.pack, old.offset))
                        .copied()
                        .unwrap_or_else(|| self.good(&id, &old));
                    let (keep, drop) = if old_is_good { (old, loc) } else { (loc, old) };
                    let key = garbage_key(drop.pack, drop.offset);
                    batch.put_cf(self.cf(CF_GARBAGE)?, key, id.0);
                    keep
                }
            };
            here.insert(id, keep);
            if keep.kind == chunk::ChunkKind::Tree {
                self.trees.push((id, keep));
            }
            batch.put_cf(self.cf(CF_CHUNKS)?, id.0, keep.encode());
        }
        let info = PackInfo {
            size: scan.len,
            chunks: scan.frames.len() as u64,
        };
        batch.put_cf(
            self.cf(CF_PACKS)?,
            scan.id.0,
            to_json(&info, "a pack entry")?,
        );
        self.db.write(batch).map_err(self.err())?;
        self.report.packs += 1;
        self.report.chunks += scan.frames.len() as u64;
        Ok(())
    }

    /// For the chunks of `scan` an earlier pack holds too: whether that copy reads back well,
    /// asked for all of them at once (each is a request when the packs are in a bucket).
    fn earlier_copies(&self, scan: &PackScan) -> Result<HashMap<(ChunkId, PackId, u64), bool>> {
        let mut indexed = Vec::new();
        for f in &scan.frames {
            if let Some(old) = self.indexed(&f.header.id)? {
                indexed.push((f.header.id, old));
            }
        }
        Ok(all_at_once(&indexed, &|id, loc| self.good(id, loc))
            .into_iter()
            .map(|((id, old), ok)| ((id, old.pack, old.offset), ok))
            .collect())
    }

    /// Chunks read back from under damaged frame headers that no frame holds: stored afresh
    /// in a new pack (not in a bucket: there the quarantined pack keeps them).
    pub(super) fn store_salvage(&mut self) -> Result<()> {
        let mut fresh: Vec<EncodedChunk> = Vec::new();
        for c in std::mem::take(&mut self.salvage) {
            if self.indexed(&c.id)?.is_none() && !fresh.iter().any(|f| f.id == c.id) {
                fresh.push(c);
            }
        }
        if fresh.is_empty() {
            return Ok(());
        }
        if self.keys.is_none() {
            // A chunk under a damaged header is named by hashing what it holds; a sealed one
            // holds nothing a rebuild without the key can name.
            self.report.problems.push(format!(
                "{} frame(s) under damaged frame headers are not stored afresh (an encrypted \
                 store: their ids cannot be known without the key); the quarantined pack keeps \
                 them",
                fresh.len()
            ));
            return Ok(());
        }
        if self.bucket.is_some() {
            self.report.problems.push(format!(
                "{} chunk(s) read back from under damaged frame headers are not stored afresh \
                 (a store in a bucket): the quarantined pack keeps them",
                fresh.len()
            ));
            return Ok(());
        }
        let mut w = pack::PackWriter::create(&self.root.join("packs"))?;
        let mut batch = WriteBatch::default();
        for c in &fresh {
            let loc = Location::appended(w.id(), w.append(c)?, c);
            if c.kind == chunk::ChunkKind::Tree {
                self.trees.push((c.id, loc));
            }
            batch.put_cf(self.cf(CF_CHUNKS)?, c.id.0, loc.encode());
        }
        w.sync()?;
        let info = PackInfo {
            size: w.len(),
            chunks: w.chunks(),
        };
        batch.put_cf(
            self.cf(CF_PACKS)?,
            w.id().0,
            to_json(&info, "a pack entry")?,
        );
        self.db.write(batch).map_err(self.err())?;
        self.report.recovered = fresh.len() as u64;
        self.report.packs += 1;
        self.report.chunks += fresh.len() as u64;
        self.report.problems.push(format!(
            "{} chunk(s) read back from under damaged frame headers were stored afresh in pack \
             {}",
            fresh.len(),
            w.id().to_hex()
        ));
        Ok(())
    }
}

/// Reads a bucket pack whose frame list is damaged or missing, whole, through a scan of a
/// copy here (past damage, as any pack); a pack read whole gets its frame list written again.
fn rescan_bucket_pack(root: &Path, bucket: &dyn Objects, pack: PackId) -> Result<PackScan> {
    let bytes = bucket.get(&crate::bucket::pack_object(&pack))?;
    let dir = crate::files::spool_dir(root);
    std::fs::create_dir_all(&dir).map_err(Error::io(&dir, "making the spool folder"))?;
    let copy = dir.join(format!("{}.pack", pack.to_hex()));
    std::fs::write(&copy, &bytes).map_err(Error::io(&copy, "spooling a pack"))?;
    let scan = pack::scan(&copy);
    let _ = std::fs::remove_file(&copy);
    let scan = scan?;
    if scan.is_whole() {
        bucket.put(
            &crate::bucket::frames_object(&pack),
            &pack::encode_frame_list(pack, scan.len, &scan.frames),
        )?;
    }
    Ok(scan)
}

/// Whether the frame at `loc` reads back as chunk `id` (decodes and hashes to it).
fn frame_is_good(keys: Option<&Keys>, packs_dir: &Path, id: &ChunkId, loc: &Location) -> bool {
    let path = loc.pack.path(packs_dir);
    File::open(&path)
        .map_err(Error::io(&path, "opening a pack"))
        .and_then(|f| pack::read_frame(&f, &path, loc.offset))
        .is_ok_and(|(h, stored)| {
            h.id == *id && chunk::check(keys, &h.stored(&stored), &mut Vec::new()).is_ok()
        })
}

/// `good` of every chunk and location of `pairs`, several at a time.
fn all_at_once(
    pairs: &[(ChunkId, Location)],
    good: &(dyn Fn(&ChunkId, &Location) -> bool + Sync),
) -> Vec<((ChunkId, Location), bool)> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let out = std::sync::Mutex::new(Vec::with_capacity(pairs.len()));
    std::thread::scope(|s| {
        for _ in 0..16.min(pairs.len()) {
            s.spawn(|| {
                while let Some((id, loc)) =
                    pairs.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                {
                    let ok = good(id, loc);
                    if let Ok(mut o) = out.lock() {
                        o.push(((*id, *loc), ok));
                    }
                }
            });
        }
    });
    out.into_inner().unwrap_or_default()
}

/// As [`frame_is_good`], for a pack in a bucket.
fn remote_frame_is_good(
    keys: Option<&Keys>,
    bucket: &dyn Objects,
    id: &ChunkId,
    loc: &Location,
) -> bool {
    let mut stored = Vec::new();
    bucket
        .get_range(
            &crate::bucket::pack_object(&loc.pack),
            loc.offset,
            pack::FRAME_HEADER_SIZE + u64::from(loc.stored_len),
        )
        .ok()
        .and_then(|buf| pack::parse_frame(&buf, &mut stored).ok())
        .is_some_and(|h| {
            h.id == *id && chunk::check(keys, &h.stored(&stored), &mut Vec::new()).is_ok()
        })
}
