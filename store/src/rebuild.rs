//! Rebuilding the index from what the packs and root files hold, when it is lost or damaged.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::Path;

use chrono::Utc;
use rocksdb::WriteBatch;

use crate::chunk::{self, ChunkId};
use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::index::{
    CF_CHUNKS, CF_GARBAGE, CF_PACKS, CF_POINTS, Location, PackInfo, garbage_key, to_json,
};
use crate::lock::WriteLock;
use crate::pack::{self, sync_dir};
use crate::quarantine::Quarantined;
use crate::store::{
    OpenMode, REBUILD_MARKER, Store, files_under, open_index, point_key, read_root_file,
    sync_write, write_atomic,
};

impl Store {
    /// Makes a store folder in `root` (missing or empty) for the store whose packs are in
    /// `packs`' bucket, from the bucket's copy of its config, with an empty index: on a new
    /// machine, before the index is rebuilt from the bucket ([`Store::rebuild_index`]).
    ///
    /// # Errors
    /// A folder that is not empty, no store in the bucket, the bucket's failures.
    pub fn attach(root: &Path, packs: &crate::config::PacksConfig) -> Result<StoreConfig> {
        crate::store::utf8_path(root)?;
        if std::fs::read_dir(root).is_ok_and(|mut d| d.next().is_some()) {
            return Err(Error::Usage(format!(
                "{} exists and is not empty: the store of {} is made in an empty folder",
                root.display(),
                packs.url
            )));
        }
        let config = crate::bucket::fetch_config(packs)?;
        Self::make_folder(root, &config)?;
        Ok(config)
    }

    /// Rebuilds the index from the packs and root files: the old index is moved aside to
    /// `index.old-<time>` and a new one is filled. Needs the write lock.
    ///
    /// # Errors
    /// A lock held by another writer, I/O and index errors.
    pub fn rebuild_index(root: &Path, wait: bool) -> Result<RebuildReport> {
        let config = StoreConfig::load(root)?;
        let bucket = config
            .packs
            .as_ref()
            .map(crate::bucket::connect)
            .transpose()?;
        let lock = WriteLock::acquire(root, wait)?;
        let index = root.join("index");
        // Until the rebuild is done, the index is incomplete: every other open refuses it.
        write_atomic(&root.join(REBUILD_MARKER), b"rebuilding the index\n")?;
        let mut old_index = None;
        if index.exists() {
            let aside = root.join(format!(
                "index.old-{}",
                Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
            ));
            std::fs::rename(&index, &aside)
                .map_err(Error::io(&index, "moving the old index aside"))?;
            old_index = Some(aside);
        }
        let (db, _) = open_index(root, false, true)?;
        let err = |source| Error::Index {
            path: index.clone(),
            source,
        };
        let chunks_cf = db
            .cf_handle(CF_CHUNKS)
            .ok_or_else(|| Error::Usage("no chunks column family".into()))?;
        let packs_cf = db
            .cf_handle(CF_PACKS)
            .ok_or_else(|| Error::Usage("no packs column family".into()))?;
        let points_cf = db
            .cf_handle(CF_POINTS)
            .ok_or_else(|| Error::Usage("no points column family".into()))?;
        let garbage_cf = db
            .cf_handle(CF_GARBAGE)
            .ok_or_else(|| Error::Usage("no garbage column family".into()))?;
        let mut report = RebuildReport::default();
        let packs_dir = root.join("packs");
        // The packs: scanned here, or from their frame lists in the bucket (a few kilobytes
        // each, not the data). Packs here beside a bucket are a killed session's: not indexed.
        let scans: Box<dyn Iterator<Item = (String, Result<pack::PackScan>)>> = match &bucket {
            Some(b) => {
                let (scans, unlisted) = crate::bucket::frame_lists(b.as_ref())?;
                if unlisted > 0 {
                    report.problems.push(format!(
                        "{unlisted} pack object(s) without a frame list (an upload that did not finish; no point names them): not indexed, garbage collection deletes them"
                    ));
                }
                Box::new(scans.into_iter().map(|s| (b.describe(), s)))
            }
            None => Box::new(
                files_under(&packs_dir, "pack")?
                    .into_iter()
                    .map(|path| (path.display().to_string(), pack::scan(&path))),
            ),
        };
        let good = |id: &ChunkId, loc: &Location| match &bucket {
            Some(b) => remote_frame_is_good(b.as_ref(), id, loc),
            None => frame_is_good(&packs_dir, id, loc),
        };
        // Tree chunks indexed (their copies fetched at once for a store in a bucket: the
        // recount that follows walks every point's tree).
        let mut trees: Vec<(ChunkId, Location)> = Vec::new();
        let mut quarantined: Vec<Quarantined> = Vec::new();
        let mut salvage: Vec<chunk::EncodedChunk> = Vec::new();
        for (shown, scan) in scans {
            // A bucket pack whose frame list does not decode: the pack itself is read (and its
            // frame list written again); one that cannot be is not indexed, and kept.
            let scan = match (scan, &bucket) {
                (Ok(s), _) => s,
                (Err(e), Some(b)) => {
                    let pack = match &e {
                        Error::Objects { name, .. } => crate::bucket::object_pack(name),
                        _ => None,
                    };
                    let read = pack.map(|p| (p, rescan_bucket_pack(root, b.as_ref(), p)));
                    match read {
                        Some((_, Ok(s))) => {
                            report.problems.push(format!(
                                "{e}: the pack was read whole instead{}",
                                if s.is_whole() {
                                    " and its frame list written again"
                                } else {
                                    ""
                                }
                            ));
                            s
                        }
                        Some((p, Err(again))) => {
                            quarantined.push(Quarantined::whole(p, 0, e.to_string()));
                            report
                                .problems
                                .push(format!("{e}; reading the pack itself: {again}"));
                            continue;
                        }
                        None => {
                            report.problems.push(e.to_string());
                            continue;
                        }
                    }
                }
                (Err(e), None) => {
                    report.problems.push(e.to_string());
                    continue;
                }
            };
            if let Some(what) = scan.damage() {
                let recovered = if scan.recovered.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", {} chunk(s) read back from under damaged frame headers",
                        scan.recovered.len()
                    )
                };
                report.problems.push(format!(
                    "{shown}: pack {}: {what}; {} whole frame(s) read{recovered}",
                    scan.id.to_hex(),
                    scan.frames.len()
                ));
            }
            if !scan.is_whole() {
                quarantined.push(Quarantined::of(&scan));
            }
            salvage.extend(scan.recovered.iter().map(|r| r.chunk.clone()));
            let mut batch = WriteBatch::default();
            // Frames of this pack indexed by this batch (a pack may hold a chunk twice).
            let mut here: HashMap<ChunkId, Location> = HashMap::new();
            // Chunks an earlier pack holds too: whether that copy reads back well, asked for
            // all of them at once (each is a request when the packs are in a bucket).
            let mut indexed = Vec::new();
            for f in &scan.frames {
                if let Some(v) = db.get_cf(chunks_cf, f.header.id.0).map_err(err)? {
                    let old = Location::decode(&v).map_err(|what| Error::CorruptIndex {
                        path: index.clone(),
                        family: CF_CHUNKS,
                        key: f.header.id.to_hex(),
                        what,
                    })?;
                    indexed.push((f.header.id, old));
                }
            }
            let checked: HashMap<(ChunkId, crate::pack::PackId, u64), bool> =
                all_at_once(&indexed, &good)
                    .into_iter()
                    .map(|((id, old), ok)| ((id, old.pack, old.offset), ok))
                    .collect();
            let good = |id: &ChunkId, loc: &Location| {
                checked
                    .get(&(*id, loc.pack, loc.offset))
                    .copied()
                    .unwrap_or_else(|| good(id, loc))
            };
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
                    None => db
                        .get_cf(chunks_cf, id.0)
                        .map_err(err)?
                        .map(|v| {
                            Location::decode(&v).map_err(|what| Error::CorruptIndex {
                                path: index.clone(),
                                family: CF_CHUNKS,
                                key: id.to_hex(),
                                what,
                            })
                        })
                        .transpose()?,
                };
                // A chunk stored twice (a heal stored a fresh copy of a damaged one, or gc
                // copied it): index a copy that reads back as its id; the other is garbage.
                let keep = match earlier {
                    None => loc,
                    Some(old) => {
                        report.duplicates += 1;
                        let (keep, drop) = if good(&id, &old) {
                            (old, loc)
                        } else {
                            (loc, old)
                        };
                        batch.put_cf(garbage_cf, garbage_key(drop.pack, drop.offset), id.0);
                        keep
                    }
                };
                here.insert(id, keep);
                if keep.kind == crate::chunk::ChunkKind::Tree {
                    trees.push((id, keep));
                }
                batch.put_cf(chunks_cf, id.0, keep.encode());
            }
            let info = PackInfo {
                size: scan.len,
                chunks: scan.frames.len() as u64,
            };
            batch.put_cf(packs_cf, scan.id.0, to_json(&info, "a pack entry")?);
            db.write(batch).map_err(err)?;
            report.packs += 1;
            report.chunks += scan.frames.len() as u64;
        }
        // Chunks read back from under damaged frame headers that no frame holds: stored afresh.
        let mut fresh = Vec::new();
        for c in salvage {
            if db.get_cf(chunks_cf, c.id.0).map_err(err)?.is_none()
                && !fresh.iter().any(|f: &chunk::EncodedChunk| f.id == c.id)
            {
                fresh.push(c);
            }
        }
        if !fresh.is_empty() && bucket.is_some() {
            report.problems.push(format!(
                "{} chunk(s) read back from under damaged frame headers are not stored afresh \
                 (a store in a bucket): the quarantined pack keeps them",
                fresh.len()
            ));
            fresh.clear();
        }
        if !fresh.is_empty() {
            let mut w = pack::PackWriter::create(&packs_dir)?;
            let mut batch = WriteBatch::default();
            for c in &fresh {
                let loc = Location::appended(w.id(), w.append(c)?, c);
                if c.kind == crate::chunk::ChunkKind::Tree {
                    trees.push((c.id, loc));
                }
                batch.put_cf(chunks_cf, c.id.0, loc.encode());
            }
            w.sync()?;
            let info = PackInfo {
                size: w.len(),
                chunks: w.chunks(),
            };
            batch.put_cf(packs_cf, w.id().0, to_json(&info, "a pack entry")?);
            db.write(batch).map_err(err)?;
            report.recovered = fresh.len() as u64;
            report.packs += 1;
            report.chunks += fresh.len() as u64;
            report.problems.push(format!(
                "{} chunk(s) read back from under damaged frame headers were stored afresh in \
                 pack {}",
                fresh.len(),
                w.id().to_hex()
            ));
        }
        for q in &quarantined {
            crate::quarantine::put(root, q)?;
            report.quarantined.push(q.describe());
        }
        let mut batch = WriteBatch::default();
        let mut catalogued: HashSet<String> = HashSet::new();
        crate::run::abandon_unfinished(root)?;
        if let Some(b) = &bucket {
            // The bucket's root files are the truth: they come here first.
            crate::bucket::fetch_roots(b.as_ref(), root)?;
            crate::bucket::prefetch_trees(b.as_ref(), root, trees)?;
        }
        for path in files_under(&root.join("points"), "json")? {
            let p = match read_root_file(&path) {
                Ok(p) => p,
                Err(e) => {
                    // Left in place for a look; the point is not in the rebuilt catalogue.
                    report
                        .problems
                        .push(format!("{e}: the point is left out of the index"));
                    report.points_left_out += 1;
                    continue;
                }
            };
            batch.put_cf(
                points_cf,
                point_key(&p.id)?,
                to_json(&p, "a catalogue entry")?,
            );
            catalogued.insert(p.id.to_string());
            report.points += 1;
        }
        if let Some(aside) = &old_index {
            report.problems.extend(lost_roots(aside, &catalogued));
        }
        db.write_opt(batch, &sync_write()).map_err(err)?;
        drop(db);
        let marker = root.join(REBUILD_MARKER);
        std::fs::remove_file(&marker).map_err(Error::io(&marker, "ending the rebuild"))?;
        sync_dir(root)?;
        drop(lock);
        // Opening for writing counts the references of every point afresh (the new index has
        // no counts yet); then a root file that disagrees with its tree is refused.
        let store = Self::open(root, OpenMode::Write { wait })?;
        let (settled, left_out) = store.settle_shapes(old_index.as_deref())?;
        report.old_index = old_index;
        report.points_left_out += left_out;
        report.points -= left_out;
        report.problems.extend(settled);
        Ok(report)
    }
}

/// The points the old index catalogued that have no root file (deleted or lost by hand): the
/// rebuilt index does not hold them, and the admin is told which, with what the old index says
/// of them (a copy of the root file, or of the old index's entry, brings one back). Nothing when
/// the old index cannot be read (that is often why it is rebuilt).
fn lost_roots(aside: &Path, catalogued: &HashSet<String>) -> Vec<String> {
    let Some(db) = crate::index::open_as_it_is(aside) else {
        return Vec::new();
    };
    let Some(points) = db.cf_handle(CF_POINTS) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v) in db
        .iterator_cf(points, rocksdb::IteratorMode::Start)
        .flatten()
    {
        let id = hex::encode(&k);
        if catalogued.contains(&id) {
            continue;
        }
        let what = serde_json::from_slice::<crate::RecoveryPoint>(&v)
            .map(|p| {
                format!(
                    " ({}/{} {}, root file {})",
                    p.vm,
                    p.disk,
                    p.time.to_rfc3339(),
                    p.root_file()
                )
            })
            .unwrap_or_default();
        out.push(format!(
            "point {id}{what} was in the old index but has no root file: it is not in the \
             rebuilt index (its entry stays in {}; put its root file back and repair again to \
             bring it back)",
            aside.display()
        ));
    }
    out
}

/// Reads a bucket pack whose frame list is damaged or missing, whole, through a scan of a
/// copy here (past damage, as any pack); a pack read whole gets its frame list written again.
fn rescan_bucket_pack(
    root: &Path,
    bucket: &dyn crate::objects::Objects,
    pack: crate::pack::PackId,
) -> Result<pack::PackScan> {
    let bytes = bucket.get(&crate::bucket::pack_object(&pack))?;
    let dir = crate::store::spool_dir(root);
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
fn frame_is_good(packs_dir: &Path, id: &ChunkId, loc: &Location) -> bool {
    let path = loc.pack.path(packs_dir);
    File::open(&path)
        .map_err(Error::io(&path, "opening a pack"))
        .and_then(|f| pack::read_frame(&f, &path, loc.offset))
        .is_ok_and(|(h, stored)| {
            h.id == *id && chunk::decode(id, h.codec, h.plain_len, &stored).is_ok()
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
    bucket: &dyn crate::objects::Objects,
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
        .is_some_and(|h| h.id == *id && chunk::decode(id, h.codec, h.plain_len, &stored).is_ok())
}

/// What [`Store::rebuild_index`] found.
#[derive(Debug, Default, Clone)]
pub struct RebuildReport {
    /// Chunks found more than once: a copy that reads back as its id is indexed, the others
    /// are listed as garbage.
    pub duplicates: u64,
    /// Packs scanned.
    pub packs: u64,
    /// Chunk frames indexed.
    pub chunks: u64,
    /// Recovery points catalogued.
    pub points: u64,
    /// Root files that could not be read: their points are not in the index (listed in
    /// `problems`).
    pub points_left_out: u64,
    /// Torn or damaged packs (reported, not fatal).
    pub problems: Vec<String>,
    /// Chunks read back from under damaged frame headers and stored afresh.
    pub recovered: u64,
    /// Where the old index was moved aside (kept for a look: nothing removes it).
    pub old_index: Option<std::path::PathBuf>,
    /// Packs put in quarantine (bytes no frame accounts for): garbage collection keeps them
    /// until `gc --drop-quarantined`.
    pub quarantined: Vec<String>,
}
