//! What retention, garbage collection and verify need of the store: forgetting and protecting
//! points, the garbage list, bad-chunk marks, and the one batch that swaps packs.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use rocksdb::{IteratorMode, WriteBatch};

use crate::chunk::ChunkId;
use crate::error::{Error, Result};
use crate::index::{
    BadMark, CF_BAD, CF_CHUNKS, CF_GARBAGE, CF_PACKS, CF_POINTS, CF_REFS, Location, PackInfo,
    fixed_key, to_json,
};
use crate::pack::PackId;
use crate::point::RecoveryPoint;
use crate::store::{Store, point_key, write_atomic};

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

/// What [`Store::forget`] did.
#[derive(Debug, Default, Clone)]
pub struct Forgotten {
    /// Points removed.
    pub points: Vec<RecoveryPoint>,
    /// Chunks (data and tree) that no point references any more.
    pub chunks_unreferenced: u64,
    /// Problems that kept space but lost nothing (an unreadable tree segment).
    pub warnings: Vec<String>,
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
    /// Removes points: catalogue entries and reference counts in one synced batch, then the
    /// root files. Protected points are refused. A crash between the two steps brings the
    /// points back whole on the next open (their root files are the truth); nothing is lost.
    ///
    /// # Errors
    /// A protected point, index and I/O errors.
    pub fn forget(&self, points: &[RecoveryPoint]) -> Result<Forgotten> {
        self.require_writer()?;
        let mut unique = HashSet::new();
        let points: Vec<&RecoveryPoint> = points.iter().filter(|p| unique.insert(&p.id)).collect();
        // The root file is the truth: a protect that died before its catalogue write left the
        // protection there only.
        let protected_on_disk = |p: &RecoveryPoint| {
            std::fs::read(self.root.join(p.root_file()))
                .ok()
                .and_then(|b| serde_json::from_slice::<RecoveryPoint>(&b).ok())
                .is_some_and(|r| r.protected)
        };
        if let Some(p) = points.iter().find(|p| p.protected || protected_on_disk(p)) {
            return Err(Error::Usage(format!(
                "point {} of {}/{} is protected; `cairn unprotect {}` first",
                p.short_id(),
                p.vm,
                p.disk,
                p.short_id()
            )));
        }
        let mut batch = WriteBatch::default();
        let cf = self.cf(CF_POINTS)?;
        for p in &points {
            batch.delete_cf(cf, point_key(&p.id)?);
        }
        let changes: Vec<(&RecoveryPoint, i64)> = points.iter().map(|p| (*p, -1)).collect();
        let before = self.garbage_len()?;
        let warnings = self.count_refs(&mut batch, &changes)?;
        self.write_synced(batch)?;
        let after = self.garbage_len()?;
        let mut dirs = HashSet::new();
        for p in &points {
            let path = self.root.join(p.root_file());
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&path, "removing a root file")(e)),
            }
            if let Some(d) = path.parent() {
                dirs.insert(d.to_path_buf());
            }
        }
        for d in dirs {
            crate::pack::sync_dir(&d)?;
        }
        Ok(Forgotten {
            points: points.into_iter().cloned().collect(),
            chunks_unreferenced: after.saturating_sub(before),
            warnings,
        })
    }

    fn garbage_len(&self) -> Result<u64> {
        let mut n = 0;
        for item in self
            .db
            .iterator_cf(self.cf(CF_GARBAGE)?, IteratorMode::Start)
        {
            item.map_err(self.index_err())?;
            n += 1;
        }
        Ok(n)
    }

    /// Protects a point from prune and forget, or lifts that: the root file is rewritten
    /// (atomically), then the catalogue entry.
    ///
    /// # Errors
    /// Index and I/O errors.
    pub fn set_protected(&self, point: &RecoveryPoint, protected: bool) -> Result<RecoveryPoint> {
        self.require_writer()?;
        let mut p = point.clone();
        p.protected = protected;
        let json = serde_json::to_vec_pretty(&p).map_err(|e| Error::Point(e.to_string()))?;
        // A marker names the point while its root file and catalogue entry may disagree; the
        // next writer to open the store makes the catalogue say what the root file says.
        let marker = self
            .root
            .join("points")
            .join(format!("{PROTECT_MARKER}{}", p.id));
        write_atomic(&marker, p.root_file().as_bytes())?;
        write_atomic(&self.root.join(p.root_file()), &json)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_POINTS)?, point_key(&p.id)?, &json);
        self.write_synced(batch)?;
        std::fs::remove_file(&marker).map_err(Error::io(&marker, "removing a marker"))?;
        Ok(p)
    }

    /// Finishes protects and unprotects that died between their root file and their catalogue
    /// entry: the catalogue takes what the root file says.
    pub(crate) fn finish_protects(&self) -> Result<()> {
        let dir = self.root.join("points");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        let mut batch = WriteBatch::default();
        let mut markers = Vec::new();
        for e in entries {
            let path = e.map_err(Error::io(&dir, "listing the folder"))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(id) = name.strip_prefix(PROTECT_MARKER) else {
                continue;
            };
            // `.tmp` of a marker never in place: nothing was changed yet.
            if let Some(id) = id
                .strip_suffix(".tmp")
                .or(Some(id))
                .filter(|i| !i.contains('.'))
                && let Ok(Some(entry)) = self.db.get_cf(self.cf(CF_POINTS)?, point_key(id)?)
                && let Ok(p) = serde_json::from_slice::<RecoveryPoint>(&entry)
                && let Ok(bytes) = std::fs::read(self.root.join(p.root_file()))
                && let Ok(on_disk) = serde_json::from_slice::<RecoveryPoint>(&bytes)
                && on_disk.protected != p.protected
            {
                batch.put_cf(self.cf(CF_POINTS)?, point_key(id)?, &bytes);
            }
            markers.push(path);
        }
        if markers.is_empty() {
            return Ok(());
        }
        self.write_synced(batch)?;
        for m in markers {
            std::fs::remove_file(&m).map_err(Error::io(&m, "removing a marker"))?;
        }
        crate::pack::sync_dir(&dir)
    }

    /// Every chunk marked bad or missing, with why.
    ///
    /// # Errors
    /// Index errors.
    pub fn bad_chunks(&self) -> Result<Vec<(ChunkId, BadMark)>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_BAD)?, IteratorMode::Start) {
            let (k, v) = item.map_err(self.index_err())?;
            let id = fixed_key::<32>(&k).map_err(self.corrupt(CF_BAD, &k))?;
            let mark = serde_json::from_slice::<BadMark>(&v)
                .map_err(|e| self.corrupt(CF_BAD, &k)(e.to_string()))?;
            out.push((ChunkId(id), mark));
        }
        Ok(out)
    }

    /// Marks chunks bad (`Some`) or clears their mark (`None`), in one synced batch.
    ///
    /// # Errors
    /// Index errors.
    pub fn mark_bad(&self, marks: &[(ChunkId, Option<BadMark>)]) -> Result<()> {
        self.require_writer()?;
        let cf = self.cf(CF_BAD)?;
        let mut batch = WriteBatch::default();
        for (id, mark) in marks {
            match mark {
                Some(m) => batch.put_cf(cf, id.0, to_json(m, "a bad-chunk mark")?),
                None => batch.delete_cf(cf, id.0),
            }
        }
        self.write_synced(batch)
    }

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
        for path in crate::store::files_under(&self.packs_dir(), "pack")? {
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
        self.write_synced(batch)
    }
}

/// Prefix of the marker files of protects in progress, in `points/`.
const PROTECT_MARKER: &str = ".protect-";

/// Name of the file of per-VM policies.
pub const POLICIES_FILE: &str = "policies.json";

/// What the store does for one VM's backups.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    /// Every N-th backup of each disk is a key backup (a full read of the disk, even when a
    /// differencing VHD is given); 0 never forces one, 1 forces every backup.
    #[serde(default)]
    pub key_interval: u32,
}

impl Store {
    /// Every VM's policy (`STORE/policies.json`).
    ///
    /// # Errors
    /// An unreadable file.
    pub fn policies(&self) -> Result<std::collections::BTreeMap<String, Policy>> {
        let path = self.root.join(POLICIES_FILE);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::Config {
                path,
                what: format!("unreadable policies: {e}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
            Err(e) => Err(Error::io(&path, "reading")(e)),
        }
    }

    /// Sets a VM's policy (the file is replaced atomically).
    ///
    /// # Errors
    /// I/O errors.
    pub fn set_policy(&self, vm: &str, policy: Policy) -> Result<()> {
        self.require_writer()?;
        crate::point::check_name("VM", vm).map_err(Error::Usage)?;
        let mut all = self.policies()?;
        all.insert(vm.to_owned(), policy);
        let json = serde_json::to_vec_pretty(&all).map_err(|e| Error::Usage(e.to_string()))?;
        write_atomic(&self.root.join(POLICIES_FILE), &json)
    }
}

impl Store {
    /// Sets the store's time zone (an IANA name) in `cairn.toml`. Needs the write lock.
    ///
    /// # Errors
    /// A name that is not a time zone, a store opened read-only, I/O errors.
    pub fn set_timezone(&mut self, name: &str) -> Result<()> {
        self.require_writer()?;
        let tz = crate::config::parse_timezone(name)?;
        let mut config = self.config.clone();
        config.timezone = tz.name().to_owned();
        write_atomic(
            &self.root.join(crate::config::CONFIG_FILE),
            config.to_toml()?.as_bytes(),
        )?;
        self.config = config;
        Ok(())
    }
}
