//! The root files and the catalogue agree, or the store says so.
//!
//! Root files are the truth; the catalogue is their index. They can part: a writer killed
//! between a root file and its catalogue batch (the next writer publishes the point), a write-
//! ahead log damaged so that the last batch is lost (the same), a root file deleted by hand
//! (the catalogue still has the point's record, and a writer writes the root file again from
//! it), a root file damaged so that it cannot be read (reported; it is left in place and out of
//! the catalogue). Every open compares the two cheaply (the root files' names against the
//! catalogue's keys, no file read unless they differ): a writer settles what it can and
//! reports it; a reader reports what it finds. `verify` compares them fully.

use std::collections::HashSet;

use rocksdb::{IteratorMode, WriteBatch};

use crate::catalogue::{point_key, read_root_file};
use crate::error::Result;
use crate::files::{each_file_under, files_under, write_atomic};
use crate::index::{CF_POINTS, to_json};
use crate::point::RecoveryPoint;
use crate::store::Store;

/// What comparing root files and catalogue found.
struct Found {
    /// Root files the catalogue lacks.
    orphans: Vec<RecoveryPoint>,
    /// Catalogued points whose root file is gone (ids).
    gone: Vec<String>,
    /// Root files that cannot be read.
    warnings: Vec<String>,
}

impl Store {
    /// Compares root files and catalogue; a writer (`settle`) publishes root files the
    /// catalogue lacks and writes again root files that are gone. Returns what it found.
    ///
    /// # Errors
    /// Index and I/O errors.
    pub(crate) fn reconcile(&self, settle: bool) -> Result<Vec<String>> {
        let Found {
            orphans,
            gone,
            mut warnings,
        } = self.compare_catalogue()?;
        if !settle {
            // While a writer runs, its next root file may be ahead of its catalogue batch.
            if !orphans.is_empty() && !crate::lock::writer_active(&self.root) {
                warnings.push(format!(
                    "{} root file(s) are not in the index (a writer was interrupted, or the \
                     index lost its last commit); the next command that writes to the store \
                     settles them",
                    orphans.len()
                ));
            }
            for id in &gone {
                warnings.push(format!(
                    "point {} is in the index but its root file is gone; the next command that \
                     writes to the store writes it again",
                    crate::point::short_id(id)
                ));
            }
            // (An index whose pack entries cannot be read fails where they are needed.)
            warnings.extend(self.lost_pack_warnings().unwrap_or_default());
            return Ok(warnings);
        }
        if !orphans.is_empty() {
            warnings.extend(self.publish_orphans(&orphans)?);
        }
        warnings.extend(self.write_gone_roots(&gone)?);
        Ok(warnings)
    }

    /// The root files the catalogue lacks (read), the catalogued points whose root file is
    /// gone, and the root files that cannot be read.
    fn compare_catalogue(&self) -> Result<Found> {
        // Ids as 16 bytes, from the VM index's small keys when it is built (every open of a
        // store of 100 000 points does this).
        let catalogued: HashSet<[u8; 16]> = match self.catalogued_ids()? {
            Some(ids) => ids.into_iter().collect(),
            None => {
                let cf = self.cf(CF_POINTS)?;
                let mut ids = HashSet::new();
                for item in self.db.iterator_cf(cf, IteratorMode::Start) {
                    let (k, _) = item.map_err(self.index_err())?;
                    if let Ok(id) = <[u8; 16]>::try_from(&*k) {
                        ids.insert(id);
                    }
                }
                ids
            }
        };
        let mut on_disk: HashSet<[u8; 16]> = HashSet::with_capacity(catalogued.len());
        let mut orphans = Vec::new();
        let mut warnings = Vec::new();
        each_file_under(&self.root.join("points"), "json", &mut |path| {
            let id = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.rsplit('-').next())
                .and_then(|s| point_key(s).ok());
            if let Some(id) = id.filter(|id| catalogued.contains(id)) {
                on_disk.insert(id);
                return;
            }
            match read_root_file(path) {
                Ok(p) => {
                    if let Ok(id) = point_key(&p.id) {
                        on_disk.insert(id);
                    }
                    orphans.push(p);
                }
                Err(e) => warnings.push(format!(
                    "{e}; the point is not in the index (`cairn verify` lists it)"
                )),
            }
        })?;
        orphans.sort_by_key(RecoveryPoint::root_file);
        warnings.sort();
        let mut gone: Vec<String> = catalogued.difference(&on_disk).map(hex::encode).collect();
        gone.sort();
        Ok(Found {
            orphans,
            gone,
            warnings,
        })
    }

    /// Publishes root files the catalogue lacks, with their reference counts.
    fn publish_orphans(&self, orphans: &[RecoveryPoint]) -> Result<Vec<String>> {
        let entries = |batch: &mut WriteBatch| -> Result<()> {
            for p in orphans {
                crate::orders::put_entry(&self.db, batch, p, &to_json(p, "a catalogue entry")?)?;
            }
            Ok(())
        };
        let mut warnings = Vec::new();
        let mut batch = WriteBatch::default();
        entries(&mut batch)?;
        let changes: Vec<(&RecoveryPoint, i64)> = orphans.iter().map(|p| (p, 1)).collect();
        match self.count_refs(&mut batch, &changes) {
            Ok(counted) => {
                warnings.extend(counted);
                self.write_synced(batch)?;
            }
            Err(e) => {
                // A tree such a point names cannot be read (its root file was put back after a
                // gc, say): published all the same, and every point counted afresh, as
                // tolerant as any recount: the unreadable segments are marked missing (verify
                // lists what they damage; a backup that writes one again heals it), and the
                // store stays writable.
                let mut batch = WriteBatch::default();
                entries(&mut batch)?;
                self.write_synced(batch)?;
                self.recount()?;
                warnings.push(format!(
                    "{} root file(s) not in the index were published, but what they name \
                     cannot all be read ({e}); the missing chunks are marked: `cairn verify` \
                     lists the points they damage",
                    orphans.len()
                ));
            }
        }
        // A forget killed after it noted its points as forgotten, before it removed their root
        // files, is undone here: they are not forgotten (a replica receives them).
        self.unforget(&orphans.iter().map(|p| p.id.to_string()).collect())?;
        Ok(warnings)
    }

    /// Writes again, from the index, the root files of catalogued points that are gone.
    fn write_gone_roots(&self, gone: &[String]) -> Result<Vec<String>> {
        let cf = self.cf(CF_POINTS)?;
        let mut warnings = Vec::new();
        for id in gone {
            let Some(bytes) = self
                .db
                .get_cf(cf, point_key(id)?)
                .map_err(self.index_err())?
            else {
                continue;
            };
            let p: RecoveryPoint = serde_json::from_slice(&bytes)
                .map_err(|e| self.corrupt(CF_POINTS, id.as_bytes())(e.to_string()))?;
            write_atomic(&self.root.join(p.root_file()), &bytes)?;
            warnings.push(format!(
                "the root file of point {} ({}/{}) was gone: written again from the index",
                p.short_id(),
                p.vm,
                p.disk
            ));
        }
        Ok(warnings)
    }
}

impl Store {
    /// Compares every root file with the catalogue, fully (every root file read): a root file
    /// that cannot be read, one the catalogue lacks or says otherwise, a catalogue entry
    /// without its root file. Empty when they agree.
    ///
    /// # Errors
    /// Index and I/O errors.
    pub fn compare_root_files(&self) -> Result<Vec<String>> {
        let cf = self.cf(CF_POINTS)?;
        let mut problems = Vec::new();
        let mut seen = HashSet::new();
        for path in files_under(&self.root.join("points"), "json")? {
            let p = match read_root_file(&path) {
                Ok(p) => p,
                Err(e) => {
                    problems.push(format!("{e}: the point is not in the index"));
                    continue;
                }
            };
            seen.insert(p.id.clone());
            match self
                .db
                .get_cf(cf, point_key(&p.id)?)
                .map_err(self.index_err())?
            {
                None => problems.push(format!(
                    "{}: point {} is not in the index",
                    path.display(),
                    p.short_id()
                )),
                Some(entry) => {
                    let same =
                        serde_json::from_slice::<RecoveryPoint>(&entry).is_ok_and(|c| c == p);
                    if !same {
                        problems.push(format!(
                            "{}: point {} says otherwise than its index entry",
                            path.display(),
                            p.short_id()
                        ));
                    }
                }
            }
        }
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item.map_err(self.index_err())?;
            let id = hex::encode(&k);
            if !seen.contains(id.as_str()) {
                let what = serde_json::from_slice::<RecoveryPoint>(&v)
                    .map(|p| format!("{}/{} {}", p.vm, p.disk, p.time.to_rfc3339()))
                    .unwrap_or_default();
                problems.push(format!(
                    "point {} ({what}) is in the index but its root file is gone",
                    crate::point::short_id(&id)
                ));
            }
        }
        Ok(problems)
    }
}
