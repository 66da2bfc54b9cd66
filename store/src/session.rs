//! Writing into a store: new chunks go to packs at once; points are published by
//! [`Session::commit`] (one point) or [`Session::commit_run`] (the disks of one run, together or
//! not at all).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use rocksdb::WriteBatch;

use crate::catalogue::point_key;
use crate::chunk::{ChunkId, ChunkKind, ChunkRef, EncodedChunk};
use crate::error::{Error, Result};
use crate::files::write_atomic;
use crate::index::{
    CF_BAD, CF_CHUNKS, CF_GARBAGE, CF_PACKS, CF_POINTS, Location, PackInfo, garbage_key, to_json,
};
use crate::lost::LostPacks;
use crate::pack::{self, PackId, PackWriter};
use crate::point::{
    BackupStats, Labels, POINT_FORMAT, PointId, RecoveryPoint, SourceInfo, check_point_name,
};
use crate::run;
use crate::store::Store;
use crate::tree::{Body, TreeWriter, Walk};

/// A new recovery point, as a backup hands it to [`Session::commit`].
#[derive(Debug, Clone)]
pub struct NewPoint {
    /// The VM.
    pub vm: String,
    /// The disk.
    pub disk: String,
    /// The time the backup stands for.
    pub time: DateTime<Utc>,
    /// Disk size in bytes.
    pub size: u64,
    /// Where the data came from.
    pub source: SourceInfo,
    /// The point a differencing source was applied to.
    pub parent: Option<PointId>,
    /// What the backup did (new stored bytes of the tree segments are added by commit).
    pub stats: BackupStats,
    /// The backup run it belongs to (the disks of one VM backed up together).
    pub run: Option<String>,
    /// The VM's identity beyond its name, tags and note.
    pub labels: Labels,
}

/// Writing into a store. New chunks are appended to packs at once but indexed, and a point
/// published, only by [`Session::commit`]; dropping a session leaves orphan pack bytes that
/// garbage collection reclaims, and nothing else.
pub struct Session<'a> {
    store: &'a Store,
    pack: Option<PackWriter>,
    pending: Vec<(ChunkId, Location)>,
    seen: HashSet<ChunkId>,
    /// Chunks marked bad or missing: stored afresh when a backup reads them.
    bad: HashSet<ChunkId>,
    /// Indexed packs whose file is gone or cut short: chunks past their end are stored afresh
    /// when a backup reads them, and a point may not reference one that was not.
    lost: LostPacks,
    /// Old locations of chunks stored afresh (their frames become garbage at commit).
    superseded: Vec<(ChunkId, Location)>,
    new_stored: u64,
    /// Packs this session created; removed (here and from the bucket) if it ends without
    /// committing.
    created: Vec<PackId>,
    /// Full packs being made durable beside the appends that follow (at most
    /// [`SYNCS_IN_FLIGHT`]); the commit waits for them before it indexes a chunk.
    syncing: std::collections::VecDeque<std::thread::JoinHandle<Result<u64>>>,
    /// Whether the commit checks that every chunk its points name is stored (points a client
    /// uploaded: see [`Session::check_references`]).
    check: bool,
    /// Where the point being read started: `pending` entries and stored bytes before it.
    mark: (usize, u64),
    /// Packs whose chunks a backup may store again (the `layout` module), and the budget.
    rewrite: Arc<Rewrite>,
    /// Chunks stored again by the layout policy since the point being read started.
    rewritten: u64,
    /// Whether the store sets its points' times at commit ([`Session::time_at_commit`]).
    clock: bool,
    /// Whether its points may take a VM identity another name owns ([`Session::allow_adopt`]).
    adopt: bool,
    /// The only chunks of the store its points may name without putting them, sorted
    /// ([`Session::restrict_references`]); `None`: any.
    allowed: Option<Arc<Vec<ChunkId>>>,
    /// With `allowed`: chunks put in this session that the store held already (their bytes
    /// were sent and checked: the client has them, so its points may name them).
    proven: HashSet<ChunkId>,
}

/// Which chunks a backup may store again to keep a disk's chunks together (see the `layout`
/// module): those in `packs`, while the budget of plain bytes lasts.
#[derive(Debug, Default)]
pub struct Rewrite {
    packs: HashSet<PackId>,
    budget: AtomicU64,
}

impl Rewrite {
    /// Chunks of `packs` may be stored again, up to `budget` plain bytes.
    #[must_use]
    pub fn new(packs: HashSet<PackId>, budget: u64) -> Self {
        Self {
            packs,
            budget: AtomicU64::new(budget),
        }
    }

    /// Takes `bytes` of the budget for a chunk in `pack`: whether it is to be stored again.
    fn take(&self, pack: PackId, bytes: u64) -> bool {
        self.packs.contains(&pack)
            && self
                .budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    b.checked_sub(bytes)
                })
                .is_ok()
    }
}

/// Full packs synced at once beside a session's appends.
const SYNCS_IN_FLIGHT: usize = 2;

impl Drop for Session<'_> {
    fn drop(&mut self) {
        // Not committed (commit empties `created`): nothing in these packs is indexed or
        // referenced, so they go. A killed process leaves them for garbage collection.
        self.pack = None;
        for h in self.syncing.drain(..) {
            let _ = h.join();
        }
        for id in std::mem::take(&mut self.created) {
            let _ = self.store.remove_pack(id);
        }
    }
}

/// See [`Session::known_filter`].
#[derive(Debug, Clone)]
pub struct KnownFilter<'a> {
    store: &'a Store,
    bad: HashSet<ChunkId>,
    lost: LostPacks,
    rewrite: Arc<Rewrite>,
}

impl Store {
    /// What a backup would find held in this store, as its session's filter says it (chunks
    /// marked bad or in lost packs are not held), without a session: for a dry run, on a store
    /// opened read-only. No layout policy applies.
    ///
    /// # Errors
    /// Index and I/O errors.
    pub fn held_filter(&self) -> Result<KnownFilter<'_>> {
        let bad = self.bad_chunks()?.into_iter().map(|(id, _)| id).collect();
        let lost = LostPacks::find(&self.pack_infos()?, &self.stored_pack_lengths()?);
        Ok(KnownFilter {
            store: self,
            bad,
            lost,
            rewrite: Arc::default(),
        })
    }
}

impl KnownFilter<'_> {
    /// Whether the store holds a good copy of the chunk (not marked bad or missing, and in a
    /// pack whose file is there) that the backup keeps where it is: a chunk the layout policy
    /// stores again (see [`Session::set_rewrite`]) counts as not held.
    ///
    /// # Errors
    /// Index errors.
    pub fn holds(&self, id: &ChunkId) -> Result<bool> {
        Ok(!self.bad.contains(id)
            && self.store.location(id)?.is_some_and(|l| {
                !self.lost.covers(&l) && !self.rewrite.take(l.pack, u64::from(l.plain_len))
            }))
    }
}

impl<'a> Session<'a> {
    pub(crate) fn new(store: &'a Store, bad: HashSet<ChunkId>, lost: LostPacks) -> Self {
        Session {
            store,
            pack: None,
            pending: Vec::new(),
            seen: HashSet::new(),
            bad,
            lost,
            superseded: Vec::new(),
            new_stored: 0,
            created: Vec::new(),
            syncing: std::collections::VecDeque::new(),
            check: false,
            mark: (0, 0),
            rewrite: Arc::default(),
            rewritten: 0,
            clock: false,
            adopt: false,
            allowed: None,
            proven: HashSet::new(),
        }
    }

    /// With [`Session::check_references`]: the points may name, of the chunks the store
    /// holds, only those of `allowed` (sorted); any other is answered as missing, exactly as a
    /// chunk the store lacks. For a client that may not learn what other VMs hold (`cairn
    /// serve`'s `--lookups own` tokens): a commit is no oracle of the store's contents, and no
    /// way to read a chunk it never had.
    pub fn restrict_references(&mut self, allowed: Arc<Vec<ChunkId>>) {
        self.allowed = Some(allowed);
    }

    /// The points this session commits get the time of their commit (see the `claims`
    /// module), whatever time they were staged with: what `cairn serve` does for every token
    /// that is not an admin's, so that a host cannot date its points to make retention drop
    /// real ones.
    pub fn time_at_commit(&mut self) {
        self.clock = true;
    }

    /// The points this session commits may take a VM identity (UUID within a pool) that
    /// another VM name owns: a VM renamed, said so by the store's owner or an admin.
    pub fn allow_adopt(&mut self) {
        self.adopt = true;
    }

    /// Lets the chunks a [`KnownFilter`] made from now on calls new be stored again when they
    /// sit in `rewrite`'s packs (the layout policy: a disk's chunks kept in few packs, so that
    /// restores of late generations read as fast as early ones). Their old frames become
    /// garbage at commit.
    pub fn set_rewrite(&mut self, rewrite: Rewrite) {
        self.rewrite = Arc::new(rewrite);
    }

    /// Chunks the point being read stored again for the layout policy.
    #[must_use]
    pub fn rewritten(&self) -> u64 {
        self.rewritten
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &'a Store {
        self.store
    }

    /// Appends a chunk unless the store or this session holds a good copy; returns whether it
    /// was appended. A chunk marked bad or missing is appended again and its old frame left
    /// to garbage collection.
    ///
    /// # Errors
    /// I/O errors.
    pub fn put(&mut self, chunk: &EncodedChunk) -> Result<bool> {
        if self.seen.contains(&chunk.id) {
            return Ok(false);
        }
        let old = self.store.location(&chunk.id)?;
        if let Some(old) = old {
            let moved = chunk.kind == ChunkKind::Data && self.rewrite.packs.contains(&old.pack);
            if !self.bad.contains(&chunk.id) && !self.lost.covers(&old) && !moved {
                if self.allowed.is_some() {
                    self.proven.insert(chunk.id);
                }
                return Ok(false);
            }
            if moved && !self.bad.contains(&chunk.id) {
                self.rewritten += 1;
            }
            self.superseded.push((chunk.id, old));
        }
        let target = self.store.config.pack_target_size;
        if self.pack.as_ref().is_some_and(|p| p.len() >= target)
            && let Some(full) = self.pack.take()
        {
            // Made durable (synced, or uploaded to the bucket) by a thread of its own while the
            // next pack fills: one pack goes out while this one is appended to.
            if self.syncing.len() >= SYNCS_IN_FLIGHT {
                self.wait_one_sync()?;
            }
            let sealer = self.store.sealer();
            self.syncing
                .push_back(std::thread::spawn(move || sealer.seal(full)));
        }
        if self.pack.is_none() {
            let pack = PackWriter::create(&self.store.packs_dir())?;
            self.created.push(pack.id());
            self.pack = Some(pack);
        }
        let Some(pack) = self.pack.as_mut() else {
            return Err(Error::Usage("no open pack".into()));
        };
        let loc = Location::appended(pack.id(), pack.append(chunk)?, chunk);
        self.pending.push((chunk.id, loc));
        self.seen.insert(chunk.id);
        self.new_stored += pack::FRAME_HEADER_SIZE + chunk.bytes.len() as u64;
        Ok(true)
    }

    /// Waits for the oldest pack being synced.
    fn wait_one_sync(&mut self) -> Result<()> {
        match self.syncing.pop_front() {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err(Error::Usage("a pack's sync panicked".into())))
                .map(|_| ()),
            None => Ok(()),
        }
    }

    /// What a hashing stage running beside the session needs to tell chunks the store holds
    /// (a good copy) from new ones. It does not know what this session appended since: a chunk
    /// it calls new may still be one [`Session::put`] then finds already appended.
    #[must_use]
    pub fn known_filter(&self) -> KnownFilter<'a> {
        KnownFilter {
            store: self.store,
            bad: self.bad.clone(),
            lost: self.lost.clone(),
            rewrite: Arc::clone(&self.rewrite),
        }
    }

    /// Chunks marked bad or missing that the point being read stored afresh so far.
    #[must_use]
    pub fn healed(&self) -> u64 {
        self.pending
            .get(self.mark.0..)
            .unwrap_or_default()
            .iter()
            .filter(|(id, _)| self.bad.contains(id))
            .count() as u64
    }

    /// Bytes the point being read appended to packs so far (frames included).
    #[must_use]
    pub fn new_stored_bytes(&self) -> u64 {
        self.new_stored - self.mark.1
    }

    /// A writer for the tree of the next point (see [`Session::stage_tree`]).
    #[must_use]
    pub fn tree_writer(&self) -> TreeWriter {
        let mut w = TreeWriter::default();
        if !self.lost.is_empty() {
            w.pushed = Some(Default::default());
        }
        w
    }

    /// Stores the tree of a point whose reference list is `refs` and returns it, ready for
    /// [`Session::commit_run`] (see [`Session::stage_tree`]).
    ///
    /// # Errors
    /// As [`Session::stage_tree`].
    pub fn stage(&mut self, point: NewPoint, refs: &[ChunkRef]) -> Result<StagedPoint> {
        let mut tree = self.tree_writer();
        for r in refs {
            tree.push(self, *r)?;
        }
        self.stage_tree(point, tree)
    }

    /// Stores the rest of a point's tree (built with [`Session::tree_writer`]) and returns the
    /// point, ready for [`Session::commit_run`]; nothing is visible yet. Chunks put after this
    /// count towards the next point.
    ///
    /// # Errors
    /// A tree that does not cover the disk, a VM or disk name that is not allowed, a chunk
    /// named whose pack file is gone, I/O errors.
    pub fn stage_tree(&mut self, point: NewPoint, mut tree: TreeWriter) -> Result<StagedPoint> {
        check_point_name("VM", &point.vm).map_err(Error::Usage)?;
        check_point_name("disk", &point.disk).map_err(Error::Usage)?;
        let chunk_size = self.store.config.chunk_size;
        if tree.chunks() != point.size.div_ceil(u64::from(chunk_size)) {
            return Err(Error::Usage(format!(
                "{} refs for a disk of {} bytes",
                tree.chunks(),
                point.size
            )));
        }
        if let Some(p) = tree.pushed.take() {
            self.check_not_lost(p.data, &p.subtrees)?;
        }
        let root = tree.finish(self)?;
        let mut staged = StagedPoint::new(point, &root, chunk_size);
        staged.0.stats.new_stored_bytes = self.new_stored_bytes();
        staged.0.stats.healed_chunks = self.healed();
        staged.0.stats.rewritten_chunks = self.rewritten;
        self.rewritten = 0;
        self.rewrite = Arc::default();
        self.mark = (self.pending.len(), self.new_stored);
        Ok(staged)
    }

    /// Stages a point copied from another store, as it is there (its id, time, source, labels,
    /// run and protection): its tree and data chunks must have been put in this session or be
    /// in the store already. Committed by [`Session::commit_run`] like any point.
    ///
    /// # Errors
    /// Another chunk size, a name that is not allowed, a point this store already holds, a top
    /// tree entry this store does not hold.
    pub fn stage_copy(&mut self, point: &RecoveryPoint) -> Result<StagedPoint> {
        check_point_name("VM", &point.vm).map_err(Error::Usage)?;
        check_point_name("disk", &point.disk).map_err(Error::Usage)?;
        if point.chunk_size != self.store.config.chunk_size {
            return Err(Error::Usage(format!(
                "point {} has chunks of {} bytes, this store {}",
                point.short_id(),
                point.chunk_size,
                self.store.config.chunk_size
            )));
        }
        if self.store.point_by_id(&point.id)?.is_some() {
            return Err(Error::AlreadyHeld(point.short_id().to_owned()));
        }
        let top = crate::tree::top(point)?;
        for (id, loc) in top.iter().zip(self.store.locations(&top)?) {
            if loc.is_none() && !self.seen.contains(id) {
                return Err(Error::Usage(format!(
                    "point {}: its tree chunk {id} is not in this store",
                    point.short_id()
                )));
            }
        }
        let mut copy = point.clone();
        copy.committed = Utc::now();
        copy.stats.new_stored_bytes = self.new_stored_bytes();
        self.mark = (self.pending.len(), self.new_stored);
        Ok(StagedPoint(copy))
    }

    /// Makes the commit check, before anything is published, that every chunk the staged
    /// points name is in the store or was put in this session, with the kind its place needs:
    /// for points built elsewhere (a client of `cairn serve`), whose trees this process did not
    /// write. Tree chunks put in this session are read back and followed; a tree chunk some
    /// point of the store references is trusted with what is under it
    /// ([`Store::holds_subtrees`]); one the index holds that no point references is read and
    /// followed too (garbage collection may have deleted what it names). The check
    /// runs under the commit lock, so a collection cannot remove a chunk between it and the
    /// commit.
    pub fn check_references(&mut self) {
        self.check = true;
    }

    /// The packs this session created and has not yet committed: a collection running in the
    /// same process must leave them alone.
    #[must_use]
    pub fn open_packs(&self) -> Vec<PackId> {
        let mut out: Vec<PackId> = self.pending.iter().map(|(_, l)| l.pack).collect();
        out.extend(self.pack.as_ref().map(PackWriter::id));
        out.sort_unstable();
        out.dedup();
        out
    }

    /// See [`Session::check_references`]: the chunks `staged` names that are neither in the
    /// store nor in this session (the first few), or of the wrong kind.
    fn check_complete(&self, staged: &[StagedPoint]) -> Result<()> {
        let pending: HashMap<ChunkId, Location> = self.pending.iter().copied().collect();
        let allowed = self
            .allowed
            .as_deref()
            .map(|a| crate::complete::Allowed::new(a, &self.proven));
        let mut check = crate::complete::Check::new(self.store, &pending, &self.lost, allowed);
        for StagedPoint(p) in staged {
            check.point(p)?;
        }
        check.finish()
    }

    /// Refuses a tree naming a chunk whose pack file is gone (and that this session did not
    /// store afresh): the point would not restore. `ids` are the data chunks pushed one by one,
    /// `subtrees` those taken whole from another point (read here). Only called when packs are
    /// lost.
    fn check_not_lost(&self, mut ids: Vec<ChunkId>, subtrees: &[(ChunkId, u8, u64)]) -> Result<()> {
        for (id, level, count) in subtrees {
            let mut walk = Walk::subtree(self.store, *id, *level, *count);
            while let Some(x) = walk.next_extent()? {
                match x.body {
                    Body::Refs(refs) => ids.extend(refs.iter().filter_map(|r| match r {
                        ChunkRef::Data(id) => Some(*id),
                        ChunkRef::Zero => None,
                    })),
                    Body::Zero => {}
                    Body::Unreadable(what) => return Err(Error::Point(what)),
                }
            }
        }
        ids.retain(|id| !self.seen.contains(id));
        ids.sort_unstable();
        ids.dedup();
        let mut gone = 0u64;
        let mut packs = HashSet::new();
        for loc in self.store.locations(&ids)?.into_iter().flatten() {
            if self.lost.covers(&loc) {
                gone += 1;
                packs.insert(loc.pack.to_hex());
            }
        }
        if gone == 0 {
            return Ok(());
        }
        let mut packs: Vec<String> = packs.into_iter().collect();
        packs.sort();
        Err(Error::Usage(format!(
            "the point would reference {gone} chunk(s) whose pack file is gone or cut short \
             ({}); nothing was stored. A key backup (`cairn backup --key`) reads the whole disk and stores \
             them afresh; `cairn verify` lists what else they damage",
            packs.join(", ")
        )))
    }

    /// Publishes one recovery point whose reference list is `refs` (see [`Session::stage`] and
    /// [`Session::commit_run`]).
    ///
    /// # Errors
    /// As [`Session::stage`] and [`Session::commit_run`].
    pub fn commit(mut self, point: NewPoint, refs: &[ChunkRef]) -> Result<RecoveryPoint> {
        let staged = self.stage(point, refs)?;
        let mut done = self.commit_run(vec![staged])?;
        done.pop()
            .ok_or_else(|| Error::Usage("a commit published no point".into()))
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
        // 1. Chunks durable: the last pack, and every full one synced (or uploaded) beside the
        //    appends.
        if let Some(pack) = self.pack.take() {
            self.store.sealer().seal(pack)?;
        }
        while !self.syncing.is_empty() {
            self.wait_one_sync()?;
        }
        let store = self.store;
        // One commit at a time in this process (sessions of `cairn serve`, garbage collection
        // in it): the counts read below are changed by this commit's batches only.
        let _commit = store.commit_lock()?;
        let existing = store.points()?;
        let mut staged = staged;
        self.check_claims(&mut staged, &existing)?;
        if self.check {
            self.check_complete(&staged)?;
        }
        // 2. Chunks indexed (unreferenced until the points are published).
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
        // Unreferenced until the catalogue batch counts them: listed as garbage, so a crash
        // before that batch leaves nothing that garbage collection cannot find.
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
        store.write_synced(batch)?;
        // From here on the packs are indexed: they stay, whatever happens next.
        self.created.clear();
        // 3. The root files: the commit (for several, the journal's removal).
        let committed = Utc::now();
        // A retry of a backup whose point is already published (an earlier run failed after
        // its commit, at the catalogue write): the same disk, time and content is that point,
        // not a second one.
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
        let mut files = Vec::with_capacity(points.len());
        for p in &points {
            let json = serde_json::to_vec_pretty(p).map_err(|e| Error::Point(e.to_string()))?;
            files.push((p.root_file(), json));
        }
        let journal = match &files[..] {
            [] => return Ok(again),
            [_] => None,
            _ => Some(run::begin(
                &store.root,
                points.first().and_then(|p| p.run.as_deref()),
                files.iter().map(|(f, _)| f.as_str()),
            )?),
        };
        let unpublished = |e: Error| Error::Unpublished {
            ids: points.iter().map(|p| p.short_id().to_owned()).collect(),
            source: Box::new(e),
        };
        // A store in a bucket: its root files there first, so that the bucket alone (an index
        // rebuild) holds every point committed here. A commit that fails before its commit
        // point takes its root objects back out of the bucket: a rebuild from the bucket never
        // brings back a point the user was told was not stored.
        let take_back = |put: &[&(String, Vec<u8>)]| {
            for (file, _) in put {
                // One that cannot be deleted now (the bucket unreachable) is a stray root
                // object: the next writer's open deletes it.
                let _ = store.delete_root(file);
            }
        };
        let mut put: Vec<&(String, Vec<u8>)> = Vec::with_capacity(files.len());
        for f in &files {
            if let Err(e) = store.put_root(&f.0, &f.1) {
                take_back(&put);
                return Err(e);
            }
            put.push(f);
        }
        let write_roots = || -> Result<()> {
            for (file, json) in &files {
                write_atomic(&store.root.join(file), json)?;
            }
            if let Some(journal) = &journal {
                run::end(journal)?;
            }
            Ok(())
        };
        if let Err(e) = write_roots() {
            // Failed after the commit itself (the last rename, or the journal's removal), in
            // the folder sync that follows it: the points are there, and the next writer
            // publishes them.
            let committed = match &journal {
                None => files
                    .first()
                    .is_some_and(|(f, _)| store.root.join(f).exists()),
                Some(j) => !j.exists(),
            };
            if !committed {
                take_back(&put);
            }
            return Err(if committed { unpublished(e) } else { e });
        }
        // 4. The catalogue entries and the reference counts, in one batch. The points are
        //    committed already: a failure here (a full disk) publishes them later, not never.
        let publish = || -> Result<()> {
            let mut batch = WriteBatch::default();
            let points_cf = store.cf(CF_POINTS)?;
            for (p, (_, json)) in points.iter().zip(&files) {
                batch.put_cf(points_cf, point_key(&p.id)?, json);
            }
            let changes: Vec<(&RecoveryPoint, i64)> = points.iter().map(|p| (p, 1)).collect();
            store.count_refs(&mut batch, &changes)?;
            store.write_synced(batch)
        };
        publish().map_err(unpublished)?;
        points.extend(again);
        Ok(points)
    }
}

/// Whether `existing` is `p` committed before (a retry of a backup whose earlier run failed
/// after its commit): the same disk, time and content.
fn same_commit(existing: &RecoveryPoint, p: &RecoveryPoint) -> bool {
    existing.same_disk(p)
        && existing.time == p.time
        && existing.size == p.size
        && existing.depth == p.depth
        && existing.segments == p.segments
}

impl Session<'_> {
    /// What the staged points claim, checked against the points the store holds (the `claims`
    /// module): ids, sizes, times (set here for a store-timed session), identities.
    fn check_claims(&self, staged: &mut [StagedPoint], existing: &[RecoveryPoint]) -> Result<()> {
        {
            let points: Vec<&RecoveryPoint> = staged.iter().map(|s| &s.0).collect();
            crate::claims::check_ids_and_sizes(&points, self.store.config.max_disk_bytes)?;
            crate::claims::check_identities(&points, existing, self.adopt)?;
        }
        if self.clock {
            let mut points: Vec<&mut RecoveryPoint> = staged.iter_mut().map(|s| &mut s.0).collect();
            crate::claims::time_at_commit(&mut points, existing);
        }
        let points: Vec<&RecoveryPoint> = staged.iter().map(|s| &s.0).collect();
        crate::claims::check_times(&points, existing, &same_commit)
    }
}

/// A point read and stored, not yet published: see [`Session::commit_run`].
#[derive(Debug, Clone)]
pub struct StagedPoint(RecoveryPoint);

impl StagedPoint {
    /// A point built elsewhere from `point` and its tree's `root` (a client of a remote
    /// store): a new id; its commit time is set when it is published.
    #[must_use]
    pub fn new(point: NewPoint, root: &crate::tree::TreeRoot, chunk_size: u32) -> Self {
        StagedPoint(RecoveryPoint {
            id: PointId::random(),
            vm: point.vm,
            disk: point.disk,
            time: point.time,
            size: point.size,
            chunk_size,
            source: point.source,
            parent: point.parent,
            format: POINT_FORMAT,
            depth: root.depth,
            segments: root.ids.clone(),
            stats: point.stats,
            committed: Utc::now(),
            protected: false,
            protected_until: None,
            run: point.run,
            labels: point.labels,
        })
    }

    /// The point, for sending to the store that publishes it.
    #[must_use]
    pub fn into_point(self) -> RecoveryPoint {
        self.0
    }

    /// The point as it will be published (its commit time is set then).
    #[must_use]
    pub fn point(&self) -> &RecoveryPoint {
        &self.0
    }

    /// Records the bytes the point added to the store (or sent to it).
    pub fn set_new_stored(&mut self, bytes: u64) {
        self.0.stats.new_stored_bytes = bytes;
    }

    /// Records how long reading the point took.
    pub fn set_seconds(&mut self, seconds: f64) {
        self.0.stats.seconds = seconds;
    }
}
