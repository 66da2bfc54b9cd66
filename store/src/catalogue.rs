//! The catalogue: reading the points (oldest first, by id, the latest of a disk, by name),
//! and its changes beside backups: forgetting points and protecting them.

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::Path;

use rocksdb::{IteratorMode, WriteBatch};

use crate::chunk::ChunkRef;
use crate::error::{Error, Result};
use crate::files::write_atomic;
use crate::index::{CF_GARBAGE, CF_POINTS};
use crate::point::{RecoveryPoint, VmKey};
use crate::store::Store;
use crate::tree::{Body, Walk};

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

/// The ids of forgotten points, one a line, appended to (`Store::forgotten_ids`).
pub(crate) const FORGOTTEN_FILE: &str = "forgotten";

/// The names of a point as its catalogue entry holds them, read without the rest of it: what
/// a [`crate::select::Filter`] looks at.
#[derive(Debug, serde::Deserialize)]
pub struct PointHead<'a> {
    /// The VM's name.
    #[serde(borrow)]
    pub vm: Cow<'a, str>,
    /// The disk.
    #[serde(borrow)]
    pub disk: Cow<'a, str>,
    /// The VM's UUID.
    #[serde(borrow, default)]
    pub vm_uuid: Option<Cow<'a, str>>,
    /// The pool.
    #[serde(borrow, default)]
    pub pool: Option<Cow<'a, str>>,
    /// The host.
    #[serde(borrow, default)]
    pub host: Option<Cow<'a, str>>,
    /// The tags.
    #[serde(borrow, default)]
    pub tags: Vec<Cow<'a, str>>,
}

impl PointHead<'_> {
    /// Whether `filter` selects this point.
    #[must_use]
    pub fn passes(&self, filter: &crate::select::Filter) -> bool {
        filter.matches_names(
            &self.vm,
            &self.disk,
            [
                self.vm_uuid.as_deref(),
                self.pool.as_deref(),
                self.host.as_deref(),
            ],
            &mut self.tags.iter().map(|t| &**t),
        )
    }
}

/// The catalogue entry under key `k`.
fn entry(k: &[u8], v: &[u8]) -> Result<RecoveryPoint> {
    serde_json::from_slice(v).map_err(|e| unreadable(k, &e))
}

fn unreadable(k: &[u8], e: &serde_json::Error) -> Error {
    Error::Point(format!(
        "{}: unreadable catalogue entry: {e}",
        hex::encode(k)
    ))
}

/// Points in the catalogue's order: by time, then VM, disk and commit time.
fn sort_points(points: &mut [RecoveryPoint]) {
    points.sort_by(|a, b| {
        (a.time, &a.vm, &a.disk, a.committed).cmp(&(b.time, &b.vm, &b.disk, b.committed))
    });
}

impl Store {
    /// The recovery points `filter` selects, oldest first: read from the catalogue's orders
    /// (one VM's from its range of the VM index, see [`Store::each_point`]); in an index without
    /// them, each entry's names are read first and the rest of it only for a point selected.
    ///
    /// # Errors
    /// Index errors or an unreadable catalogue entry.
    pub fn points_matching(&self, filter: &crate::select::Filter) -> Result<Vec<RecoveryPoint>> {
        let mut out = Vec::new();
        if self.orders_ready() {
            self.each_point(filter, &mut |p| {
                out.push(p);
                Ok(())
            })?;
            return Ok(out);
        }
        for item in self
            .db
            .iterator_cf(self.cf(CF_POINTS)?, IteratorMode::Start)
        {
            let (k, v) = item.map_err(self.index_err())?;
            if !filter.is_empty() {
                let head: PointHead<'_> =
                    serde_json::from_slice(&v).map_err(|e| unreadable(&k, &e))?;
                if !head.passes(filter) {
                    continue;
                }
            }
            out.push(entry(&k, &v)?);
        }
        sort_points(&mut out);
        Ok(out)
    }

    /// Every recovery point, oldest first.
    ///
    /// # Errors
    /// Index errors or an unreadable catalogue entry.
    pub fn points(&self) -> Result<Vec<RecoveryPoint>> {
        self.points_matching(&crate::select::Filter::default())
    }

    /// Calls `f` with every catalogue entry, in the order of their ids.
    ///
    /// # Errors
    /// Index errors, an unreadable entry, and what `f` returns.
    pub(crate) fn each_entry(&self, f: &mut dyn FnMut(RecoveryPoint) -> Result<()>) -> Result<()> {
        for item in self
            .db
            .iterator_cf(self.cf(CF_POINTS)?, IteratorMode::Start)
        {
            let (k, v) = item.map_err(self.index_err())?;
            f(entry(&k, &v)?)?;
        }
        Ok(())
    }

    /// The point of id `id` (32 hex digits), if the catalogue holds it.
    ///
    /// # Errors
    /// Not a point id, index errors, an unreadable entry.
    pub fn point_by_id(&self, id: &str) -> Result<Option<RecoveryPoint>> {
        let v = self
            .db
            .get_cf(self.cf(CF_POINTS)?, point_key(id)?)
            .map_err(self.index_err())?;
        v.map(|v| {
            serde_json::from_slice(&v)
                .map_err(|e| Error::Point(format!("{id}: unreadable catalogue entry: {e}")))
        })
        .transpose()
    }

    /// The ids of the points forgotten from this store (`STORE/forgotten`): a replica never
    /// brings one back.
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn forgotten_ids(&self) -> Result<std::collections::HashSet<String>> {
        let path = self.root.join(crate::catalogue::FORGOTTEN_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(text
                .lines()
                .filter(|l| l.len() == 32 && l.bytes().all(|b| b.is_ascii_hexdigit()))
                .map(str::to_owned)
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
            Err(e) => Err(Error::io(&path, "reading the forgotten points")(e)),
        }
    }

    /// The newest point of a VM's disk.
    ///
    /// # Errors
    /// Index errors.
    pub fn latest(&self, vm: &VmKey, disk: &str) -> Result<Option<RecoveryPoint>> {
        // Read by the VM index: its UUID, else its name, names it.
        let filter = crate::select::Filter {
            vm: vm.uuid.clone().or_else(|| vm.name.clone()),
            disk: Some(disk.to_owned()),
            ..Default::default()
        };
        Ok(self
            .points_matching(&filter)?
            .into_iter()
            .filter(|p| p.disk == disk && &p.vm_key() == vm)
            .max_by_key(|p| (p.time, p.committed)))
    }

    /// Finds a point as [`crate::select`] reads a name: an id (with or without the dashes of
    /// the UUID cairn writes into VHDs), a unique id prefix, or `VM/DISK@latest`,
    /// `VM/DISK@latest~N`, `VM/DISK@DATE`, `VM/DISK@DATETIME`.
    ///
    /// # Errors
    /// [`Error::Point`] when nothing or more than one point matches (the candidates listed).
    pub fn resolve(&self, spec: &str) -> Result<RecoveryPoint> {
        let points = self.candidates(spec)?;
        crate::select::resolve(&points, spec, self.config.tz()).map_err(Error::Point)
    }

    /// The points [`Store::resolve`] chooses among for `spec`: a VM's disk's (the VM index),
    /// or those whose id starts with the digits given (a range of the catalogue), read without
    /// the rest of the store; every point when the orders are not built.
    fn candidates(&self, spec: &str) -> Result<Vec<RecoveryPoint>> {
        use crate::select::Filter;
        if !self.orders_ready() {
            return self.points();
        }
        if let Some((vmdisk, _)) = spec.split_once('@') {
            let Some((vm, disk)) = vmdisk.rsplit_once('/') else {
                return Ok(Vec::new());
            };
            let named = |vm: &str, pool: Option<&str>| Filter {
                vm: Some(vm.to_owned()),
                disk: Some(disk.to_owned()),
                pool: pool.map(str::to_owned),
                ..Default::default()
            };
            let mine = self.points_matching(&named(vm, None))?;
            return match (mine.is_empty(), vm.split_once(':')) {
                (true, Some((pool, name))) => self.points_matching(&named(name, Some(pool))),
                _ => Ok(mine),
            };
        }
        let want: String = spec
            .chars()
            .filter(|c| *c != '-')
            .collect::<String>()
            .to_ascii_lowercase();
        let Some(prefix) = want
            .get(..want.len() / 2 * 2)
            .and_then(|h| hex::decode(h).ok())
        else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let from = IteratorMode::From(&prefix, rocksdb::Direction::Forward);
        for item in self.db.iterator_cf(self.cf(CF_POINTS)?, from) {
            let (k, v) = item.map_err(self.index_err())?;
            if !k.starts_with(&prefix) {
                break;
            }
            if hex::encode(&k).starts_with(&want) {
                out.push(entry(&k, &v)?);
            }
        }
        sort_points(&mut out);
        Ok(out)
    }

    /// The reference list of a point, one ref per chunk of its disk. It grows with the disk
    /// (32 bytes a chunk): a reader of big disks walks the tree instead ([`Walk`]).
    ///
    /// # Errors
    /// A missing or bad tree chunk.
    pub fn chunk_refs(&self, point: &RecoveryPoint) -> Result<Vec<ChunkRef>> {
        let mut refs = Vec::new();
        let mut walk = Walk::new(self, point)?;
        while let Some(x) = walk.next_extent()? {
            match x.body {
                Body::Refs(r) => refs.extend_from_slice(&r),
                Body::Zero => refs.extend(std::iter::repeat_n(ChunkRef::Zero, x.count as usize)),
                Body::Unreadable(what) => return Err(Error::Point(what)),
            }
        }
        Ok(refs)
    }
}

/// The point a root file holds.
pub(crate) fn read_root_file(path: &Path) -> Result<RecoveryPoint> {
    let bytes = std::fs::read(path).map_err(Error::io(path, "reading a root file"))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Point(format!("{}: unreadable root file: {e}", path.display())))
}

/// The index key of point `id` (32 hex digits).
pub(crate) fn point_key(id: &str) -> Result<[u8; 16]> {
    let mut k = [0u8; 16];
    hex::decode_to_slice(id, &mut k)
        .map_err(|_| Error::Point(format!("{id:?} is not a point id")))?;
    Ok(k)
}

impl Store {
    /// Removes points: catalogue entries and reference counts in one synced batch, then the
    /// root files. Protected points are refused. A crash between the two steps brings the
    /// points back whole on the next open (their root files are the truth); nothing is lost.
    ///
    /// Points the store's minimum retention holds are refused too ([`Error::Held`]).
    ///
    /// # Errors
    /// A protected or held point, index and I/O errors.
    pub fn forget(&self, points: &[RecoveryPoint]) -> Result<Forgotten> {
        self.require_writer()?;
        let _commit = self.commit_lock()?;
        let mut unique = HashSet::new();
        let points: Vec<&RecoveryPoint> = points.iter().filter(|p| unique.insert(&p.id)).collect();
        self.refuse_kept(&points)?;
        let mut batch = WriteBatch::default();
        for p in &points {
            crate::orders::delete_entry(&self.db, &mut batch, p)?;
        }
        let changes: Vec<(&RecoveryPoint, i64)> = points.iter().map(|p| (*p, -1)).collect();
        let before = self.garbage_len()?;
        let warnings = self.count_refs(&mut batch, &changes)?;
        self.write_synced(batch)?;
        // Remembered, so that a replication into this store never brings them back. Written
        // after the batch: a crash before it leaves points forgotten but not remembered, which
        // only lets a later replication copy them again.
        self.remember_forgotten(&points)?;
        let after = self.garbage_len()?;
        // The bucket's copies (a store in a bucket): a failure here leaves root files the next
        // writer's open deletes (they are not in the catalogue).
        self.put_forgotten()?;
        for p in &points {
            self.delete_root(&p.root_file())?;
        }
        self.remove_root_files(&points)?;
        Ok(Forgotten {
            points: points.into_iter().cloned().collect(),
            chunks_unreferenced: after.saturating_sub(before),
            warnings,
        })
    }

    /// Refuses to forget a protected point (the root file is the truth: a protect that died
    /// before its catalogue write left the protection there only) or one the minimum
    /// retention holds (the catalogue's entry is the truth of when it was committed here).
    fn refuse_kept(&self, points: &[&RecoveryPoint]) -> Result<()> {
        let now = chrono::Utc::now();
        let protected_on_disk = |p: &RecoveryPoint| {
            std::fs::read(self.root.join(p.root_file()))
                .ok()
                .and_then(|b| serde_json::from_slice::<RecoveryPoint>(&b).ok())
                .is_some_and(|r| r.protected_at(now))
        };
        if let Some(p) = points
            .iter()
            .find(|p| p.protected_at(now) || protected_on_disk(p))
        {
            let how = match p.protected_until.filter(|u| *u > now) {
                Some(u) => format!(
                    "protected until {} (only time lifts that)",
                    u.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
                None => format!("protected; `cairn unprotect {}` first", p.short_id()),
            };
            return Err(Error::Usage(format!(
                "point {} of {}/{} is {how}",
                p.short_id(),
                p.vm,
                p.disk
            )));
        }
        for p in points {
            let committed = self
                .point_by_id(&p.id)?
                .map_or(p.committed, |stored| stored.committed);
            let stored = RecoveryPoint {
                committed,
                ..(*p).clone()
            };
            if let Some(until) = self.held_until(&stored) {
                return Err(Error::Held(Box::new(crate::error::HeldPoint {
                    point: p.short_id().to_owned(),
                    vm: p.vm.clone(),
                    disk: p.disk.clone(),
                    until: until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                })));
            }
        }
        Ok(())
    }

    /// Removes the points' root files and syncs their folders.
    fn remove_root_files(&self, points: &[&RecoveryPoint]) -> Result<()> {
        let mut dirs = HashSet::new();
        for p in points {
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
        Ok(())
    }

    /// Takes `ids` off the forgotten list (points published again).
    pub(crate) fn unforget(&self, ids: &HashSet<String>) -> Result<()> {
        let path = self.root.join(FORGOTTEN_FILE);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        if !text.lines().any(|l| ids.contains(l)) {
            return Ok(());
        }
        let kept: String = text
            .lines()
            .filter(|l| !ids.contains(*l))
            .map(|l| format!("{l}\n"))
            .collect();
        write_atomic(&path, kept.as_bytes())?;
        self.put_forgotten()
    }

    fn remember_forgotten(&self, points: &[&RecoveryPoint]) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.root.join(FORGOTTEN_FILE);
        let mut f = std::fs::OpenOptions::new()
            .mode(0o600)
            .create(true)
            .append(true)
            .open(&path)
            .map_err(Error::io(&path, "opening the forgotten points"))?;
        let mut text = String::new();
        for p in points {
            text.push_str(&p.id);
            text.push('\n');
        }
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_data())
            .map_err(Error::io(&path, "writing the forgotten points"))
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
        self.change_protection(point, Some(protected), None)
    }

    /// Protects a point until `until`: no command lifts that before then (an unprotect leaves
    /// it, a later `until` extends it, an earlier one is refused); time does.
    ///
    /// # Errors
    /// A time earlier than the point's protection already runs to; index and I/O errors.
    pub fn protect_until(
        &self,
        point: &RecoveryPoint,
        until: chrono::DateTime<chrono::Utc>,
    ) -> Result<RecoveryPoint> {
        self.change_protection(point, None, Some(until))
    }

    fn change_protection(
        &self,
        point: &RecoveryPoint,
        protected: Option<bool>,
        until: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<RecoveryPoint> {
        self.require_writer()?;
        let _commit = self.commit_lock()?;
        // The catalogue's record, not the caller's copy: a protection is never shortened by a
        // stale one.
        let mut p = self
            .point_by_id(&point.id)?
            .unwrap_or_else(|| point.clone());
        if let Some(on) = protected {
            p.protected = on;
        }
        if let Some(u) = until {
            if let Some(held) = p.protected_until.filter(|h| *h > u) {
                return Err(Error::Usage(format!(
                    "point {} is protected until {} already: a protection is extended, never \
                     shortened",
                    p.short_id(),
                    held.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )));
            }
            p.protected_until = Some(u);
        }
        let json = serde_json::to_vec_pretty(&p).map_err(|e| Error::Point(e.to_string()))?;
        // A marker names the point while its root file and catalogue entry may disagree; the
        // next writer to open the store makes the catalogue say what the root file says.
        let marker = self
            .root
            .join("points")
            .join(format!("{PROTECT_MARKER}{}", p.id));
        write_atomic(&marker, p.root_file().as_bytes())?;
        self.put_root(&p.root_file(), &json)?;
        write_atomic(&self.root.join(p.root_file()), &json)?;
        let mut batch = WriteBatch::default();
        crate::orders::put_entry(&self.db, &mut batch, &p, &json)?;
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
                && (on_disk.protected != p.protected
                    || on_disk.protected_until != p.protected_until)
            {
                crate::orders::put_entry(&self.db, &mut batch, &on_disk, &bytes)?;
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
}

/// Prefix of the marker files of protects in progress, in `points/`.
const PROTECT_MARKER: &str = ".protect-";
