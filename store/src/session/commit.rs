//! Publishing: the chunks made durable and indexed, the root files written (the commit), then
//! the catalogue entries and reference counts in one batch. A crash at any instant leaves the
//! store as it was before, or with every point committed.

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use rocksdb::WriteBatch;

use super::checks::same_commit;
use super::{Session, StagedPoint};
use crate::chunk::{ChunkId, ChunkRef};
use crate::error::{Error, Result};
use crate::files::write_atomic;
use crate::index::{CF_BAD, CF_CHUNKS, CF_GARBAGE, CF_PACKS, PackInfo, garbage_key, to_json};
use crate::pack::{self, PackId};
use crate::point::{RecoveryPoint, VmKey};
use crate::run;
use crate::store::Store;

/// A root file: its name in the store and its JSON.
type RootFile = (String, Vec<u8>);

impl Session<'_> {
    /// Publishes one recovery point whose reference list is `refs` (see [`Session::stage`] and
    /// [`Session::commit_run`]).
    ///
    /// # Errors
    /// As [`Session::stage`] and [`Session::commit_run`].
    pub fn commit(mut self, point: super::NewPoint, refs: &[ChunkRef]) -> Result<RecoveryPoint> {
        let staged = self.stage(point, refs)?;
        let mut done = self.commit_run(vec![staged])?;
        done.pop()
            .ok_or_else(|| Error::Internal("a commit published no point".into()))
    }

    /// Publishes staged points together: makes every appended chunk durable, indexes them,
    /// writes the root files, and publishes the catalogue entries in one RocksDB batch. A crash
    /// at any instant leaves the store as it was before, or with every point committed.
    ///
    /// Several points are one commit through a run journal (`points/.run-<id>.pending`, listing
    /// their root files): written before the first root file, removed after the last, so the
    /// removal is the commit; the next writer deletes the root files of a run whose journal is
    /// still there (the `run` module).
    ///
    /// # Errors
    /// I/O and index errors.
    pub fn commit_run(mut self, staged: Vec<StagedPoint>) -> Result<Vec<RecoveryPoint>> {
        // 1. Chunks durable.
        self.make_durable()?;
        let store = self.store;
        // One commit at a time in this process (sessions of `cairn serve`, garbage collection
        // in it): the counts read below are changed by this commit's batches only.
        let _commit = store.commit_lock()?;
        let mut staged = staged;
        let existing = concerned(store.points()?, &staged);
        self.check_claims(&mut staged, &existing)?;
        if self.check {
            self.check_complete(&staged)?;
        }
        // 2. Chunks indexed (unreferenced until the points are published). From then on the
        //    packs are indexed: they stay, whatever happens next.
        self.index_chunks()?;
        self.created.clear();
        // 3. The root files: the commit (for several, the journal's removal).
        let (mut points, again) = new_points(staged, &existing);
        let files = root_files(&points)?;
        if files.is_empty() {
            return Ok(again);
        }
        write_root_files(store, &points, &files)?;
        // 4. The catalogue entries and the reference counts, in one batch. The points are
        //    committed already: a failure here (a full disk) publishes them later, not never.
        publish(store, &points, &files).map_err(|e| unpublished(&points, e))?;
        points.extend(again);
        Ok(points)
    }

    /// The last pack sealed, and every full one synced (or uploaded) beside the appends.
    fn make_durable(&mut self) -> Result<()> {
        if let Some(pack) = self.pack.take() {
            self.store.sealer().seal(pack)?;
        }
        while !self.syncing.is_empty() {
            self.wait_one_sync()?;
        }
        Ok(())
    }

    /// The session's chunks and packs in the index, in one synced batch: listed as garbage
    /// until the catalogue batch counts them, so a crash before that batch leaves nothing that
    /// garbage collection cannot find; superseded copies become garbage, healed marks go.
    fn index_chunks(&self) -> Result<()> {
        let store = self.store;
        let mut batch = WriteBatch::default();
        let chunks_cf = store.cf(CF_CHUNKS)?;
        let mut packs: HashMap<PackId, PackInfo> = HashMap::new();
        for (id, loc) in &self.pending {
            batch.put_cf(chunks_cf, id.0, loc.encode());
            let info = packs.entry(loc.pack).or_default();
            info.chunks += 1;
            info.size = info
                .size
                .max(loc.offset + pack::FRAME_HEADER_SIZE + u64::from(loc.stored_len));
        }
        let packs_cf = store.cf(CF_PACKS)?;
        for (id, info) in &packs {
            batch.put_cf(packs_cf, id.0, to_json(info, "a pack entry")?);
        }
        let ids: Vec<ChunkId> = self.pending.iter().map(|(id, _)| *id).collect();
        let garbage_cf = store.cf(CF_GARBAGE)?;
        for ((id, loc), count) in self.pending.iter().zip(store.refcounts(&ids)?) {
            if count == 0 {
                batch.put_cf(garbage_cf, garbage_key(loc.pack, loc.offset), id.0);
            }
        }
        let bad_cf = store.cf(CF_BAD)?;
        for (id, old) in &self.superseded {
            batch.put_cf(garbage_cf, garbage_key(old.pack, old.offset), id.0);
            batch.delete_cf(bad_cf, id.0);
        }
        for id in &ids {
            if self.bad.contains(id) {
                batch.delete_cf(bad_cf, id.0);
            }
        }
        store.write_synced(batch)
    }
}

/// The points of `existing` the checks of a commit of `staged` look at: those of the same
/// disks, and those that carry the same identity (a VM UUID in a pool). Every check compares
/// a staged point with these only, so a commit into a store of 100 000 points compares
/// against its own disks' history, not every point.
fn concerned(existing: Vec<RecoveryPoint>, staged: &[StagedPoint]) -> Vec<RecoveryPoint> {
    let disks: HashSet<(VmKey, &str)> = staged
        .iter()
        .map(|s| (s.0.vm_key(), s.0.disk.as_str()))
        .collect();
    let identities: HashSet<(&str, Option<&str>)> = staged
        .iter()
        .filter_map(|s| {
            let l = &s.0.labels;
            Some((l.vm_uuid.as_deref()?, l.pool.as_deref()))
        })
        .collect();
    existing
        .into_iter()
        .filter(|e| {
            let l = &e.labels;
            l.vm_uuid
                .as_deref()
                .is_some_and(|u| identities.contains(&(u, l.pool.as_deref())))
                || disks.contains(&(e.vm_key(), e.disk.as_str()))
        })
        .collect()
}

/// The staged points to publish, and those already published: a retry of a backup whose point
/// is already published (an earlier run failed after its commit, at the catalogue write) is
/// that point (the same disk, time and content), not a second one.
fn new_points(
    staged: Vec<StagedPoint>,
    existing: &[RecoveryPoint],
) -> (Vec<RecoveryPoint>, Vec<RecoveryPoint>) {
    let committed = Utc::now();
    let mut again = Vec::new();
    let mut points: Vec<RecoveryPoint> = Vec::new();
    for StagedPoint(mut p) in staged {
        match existing.iter().find(|e| same_commit(e, &p)) {
            Some(e) => again.push(e.clone()),
            None => {
                p.committed = committed;
                points.push(p);
            }
        }
    }
    (points, again)
}

/// The root file of each point.
fn root_files(points: &[RecoveryPoint]) -> Result<Vec<RootFile>> {
    points
        .iter()
        .map(|p| {
            let json = serde_json::to_vec_pretty(p).map_err(|e| Error::Point(e.to_string()))?;
            Ok((p.root_file(), json))
        })
        .collect()
}

/// `e`, which happened after the points were committed: they are there, and the next writer
/// publishes them.
fn unpublished(points: &[RecoveryPoint], e: Error) -> Error {
    Error::Unpublished {
        ids: points.iter().map(|p| p.short_id().to_owned()).collect(),
        source: Box::new(e),
    }
}

/// Writes the root files (through a run journal for several): the commit. A store in a
/// bucket gets its root files there first, so that the bucket alone (an index rebuild) holds
/// every point committed here; a commit that fails before its commit point takes its root
/// objects back out of the bucket: a rebuild from the bucket never brings back a point the user
/// was told was not stored.
fn write_root_files(store: &Store, points: &[RecoveryPoint], files: &[RootFile]) -> Result<()> {
    let journal = match files {
        [_] => None,
        _ => Some(run::begin(
            &store.root,
            points.first().and_then(|p| p.run.as_deref()),
            files.iter().map(|(f, _)| f.as_str()),
        )?),
    };
    let take_back = |put: &[&RootFile]| {
        for (file, _) in put {
            // One that cannot be deleted now (the bucket unreachable) is a stray root object:
            // the next writer's open deletes it.
            let _ = store.delete_root(file);
        }
    };
    let mut put: Vec<&RootFile> = Vec::with_capacity(files.len());
    for f in files {
        if let Err(e) = store.put_root(&f.0, &f.1) {
            take_back(&put);
            return Err(e);
        }
        put.push(f);
    }
    let write_roots = || -> Result<()> {
        for (file, json) in files {
            write_atomic(&store.root.join(file), json)?;
        }
        if let Some(journal) = &journal {
            run::end(journal)?;
        }
        Ok(())
    };
    let Err(e) = write_roots() else {
        return Ok(());
    };
    // Failed after the commit itself (the last rename, or the journal's removal), in the folder
    // sync that follows it: the points are there, and the next writer publishes them.
    let committed = match &journal {
        None => files
            .first()
            .is_some_and(|(f, _)| store.root.join(f).exists()),
        Some(j) => !j.exists(),
    };
    if !committed {
        take_back(&put);
    }
    Err(if committed { unpublished(points, e) } else { e })
}

/// The catalogue entries and the reference counts, in one synced batch.
fn publish(store: &Store, points: &[RecoveryPoint], files: &[RootFile]) -> Result<()> {
    let mut batch = WriteBatch::default();
    for (p, (_, json)) in points.iter().zip(files) {
        crate::orders::put_entry(&store.db, &mut batch, p, json)?;
    }
    let changes: Vec<(&RecoveryPoint, i64)> = points.iter().map(|p| (p, 1)).collect();
    store.count_refs(&mut batch, &changes)?;
    store.write_synced(batch)
}
