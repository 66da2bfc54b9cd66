//! Joining two histories of one VM: a VM renamed without a `--vm-uuid`, or given one only
//! later, starts a new history (a VM's identity is its UUID and pool, else its name), and the
//! old one would keep its last points forever, since retention weighs each history on its
//! own. [`Store::adopt`] gives every point of the old identity the new one's name, UUID and
//! pool, so both are one history again: `@latest`, prune, the report and the next key backup
//! see them together. Point ids, times, data and everything else stay; no chunk is touched.
//!
//! # Crashes
//! A marker (`points/.adopt`: the new identity, and the ids with their old and new root files)
//! is made durable first; then the new root files are written (in the bucket first, for a store
//! in one), the catalogue changed in one synced batch, the old root files removed, and the
//! marker last. Each step can be done again. The next writer to open the store finds the
//! marker and carries the adoption out to its end ([`Store::finish_adopts`]), so it is done
//! whole or, killed before its marker was whole, not at all. A point is never in the catalogue
//! twice, nor without a root file.

use std::collections::HashSet;

use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::files::write_atomic;
use crate::point::{RecoveryPoint, VmKey};
use crate::store::Store;

/// The marker of an adoption in progress, in `points/`.
const ADOPT_MARKER: &str = ".adopt";

/// One point being moved: its id and its root files before and after.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Move {
    id: String,
    old: String,
    new: String,
}

/// An adoption: the identity the points take, and the points.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Marker {
    vm: String,
    vm_uuid: Option<String>,
    pool: Option<String>,
    moves: Vec<Move>,
}

impl Marker {
    /// `p` with the new identity.
    fn relabel(&self, p: &RecoveryPoint) -> RecoveryPoint {
        let mut q = p.clone();
        q.vm.clone_from(&self.vm);
        q.labels.vm_uuid.clone_from(&self.vm_uuid);
        q.labels.pool.clone_from(&self.pool);
        q
    }
}

impl Store {
    /// Gives every point of the VM identity `from` the identity (name, UUID and pool) of
    /// `into` (a point of the VM whose history they join); returns the points as they are now.
    ///
    /// # Errors
    /// `from` and `into` the same identity, no point of `from`, a disk of both with points at
    /// one time (a history cannot hold two points at one time), a protected point whose root
    /// file cannot be rewritten, index and I/O errors.
    pub fn adopt(&self, from: &VmKey, into: &RecoveryPoint) -> Result<Vec<RecoveryPoint>> {
        self.require_writer()?;
        let _commit = self.commit_lock()?;
        let to = into.vm_key();
        if *from == to {
            return Err(Error::Usage(format!(
                "the points of {} are that VM's history already",
                into.vm
            )));
        }
        let all = self.points()?;
        let moving: Vec<&RecoveryPoint> = all.iter().filter(|p| p.vm_key() == *from).collect();
        if moving.is_empty() {
            return Err(Error::Usage("no point has the identity to adopt".into()));
        }
        let taken: HashSet<(&str, chrono::DateTime<chrono::Utc>)> = all
            .iter()
            .filter(|p| p.vm_key() == to)
            .map(|p| (p.disk.as_str(), p.time))
            .collect();
        if let Some(p) = moving
            .iter()
            .find(|p| taken.contains(&(p.disk.as_str(), p.time)))
        {
            return Err(Error::Usage(format!(
                "{}/{} has a point at {} in both histories ({} and one of {}): forget one of \
                 them first; nothing was changed",
                p.vm,
                p.disk,
                p.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                p.short_id(),
                into.vm
            )));
        }
        let mut marker = Marker {
            vm: into.vm.clone(),
            vm_uuid: into.labels.vm_uuid.clone(),
            pool: into.labels.pool.clone(),
            moves: Vec::new(),
        };
        marker.moves = moving
            .iter()
            .map(|p| Move {
                id: p.id.to_string(),
                old: p.root_file(),
                new: marker.relabel(p).root_file(),
            })
            .collect();
        let path = self.root.join("points").join(ADOPT_MARKER);
        let json = serde_json::to_vec_pretty(&marker).map_err(|e| Error::Point(e.to_string()))?;
        write_atomic(&path, &json)?;
        self.carry_out(&marker)
    }

    /// Finishes an adoption a writer did not finish (see the module).
    ///
    /// # Errors
    /// Index and I/O errors.
    pub(crate) fn finish_adopts(&self) -> Result<()> {
        let path = self.root.join("points").join(ADOPT_MARKER);
        let Ok(bytes) = std::fs::read(&path) else {
            return Ok(());
        };
        // A marker that does not parse was never made whole (`write_atomic`): nothing was
        // changed after it.
        match serde_json::from_slice::<Marker>(&bytes) {
            Ok(marker) => self.carry_out(&marker).map(|_| ()),
            Err(_) => {
                std::fs::remove_file(&path).map_err(Error::io(&path, "removing a marker"))?;
                Ok(())
            }
        }
    }

    /// Carries `marker` out from wherever it stands: every new root file written, the
    /// catalogue changed, the old root files removed, the marker last.
    fn carry_out(&self, marker: &Marker) -> Result<Vec<RecoveryPoint>> {
        let mut moved = Vec::new();
        let mut batch = WriteBatch::default();
        for m in &marker.moves {
            // Forgotten since (a marker of long ago): nothing to move.
            let Some(p) = self.point_by_id(&m.id)? else {
                continue;
            };
            let q = marker.relabel(&p);
            let json = serde_json::to_vec_pretty(&q).map_err(|e| Error::Point(e.to_string()))?;
            self.put_root(&m.new, &json)?;
            write_atomic(&self.root.join(&m.new), &json)?;
            crate::orders::put_entry(&self.db, &mut batch, &q, &json)?;
            moved.push(q);
        }
        self.write_synced(batch)?;
        let mut dirs = HashSet::new();
        for m in marker.moves.iter().filter(|m| m.old != m.new) {
            self.delete_root(&m.old)?;
            let path = self.root.join(&m.old);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&path, "removing a root file")(e)),
            }
            for f in [&m.old, &m.new] {
                if let Some(d) = self.root.join(f).parent() {
                    dirs.insert(d.to_path_buf());
                }
            }
        }
        for d in dirs {
            crate::pack::sync_dir(&d)?;
        }
        let path = self.root.join("points").join(ADOPT_MARKER);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&path, "removing a marker")(e)),
        }
        crate::pack::sync_dir(&self.root.join("points"))?;
        Ok(moved)
    }
}
