//! Writing into a store: new chunks go to packs at once; points are published by
//! [`Session::commit`] (one point) or [`Session::commit_run`] (the disks of one run, together or
//! not at all).
//!
//! Publishing is its own module ([`commit`]), as are the checks it makes first ([`checks`]) and
//! the staged point ([`staged`]).

mod checks;
mod commit;
mod staged;

pub use staged::StagedPoint;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};

use crate::chunk::{ChunkId, ChunkKind, ChunkRef, EncodedChunk};
use crate::error::{Error, Result};
use crate::index::Location;
use crate::lost::LostPacks;
use crate::pack::{self, PackId, PackWriter};
use crate::point::{BackupStats, Labels, PointId, RecoveryPoint, SourceInfo, check_point_name};
use crate::store::Store;
use crate::tree::TreeWriter;

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
        // The CRC of the bytes is taken as they are appended (none for a chunk already held).
        let header = pack::FrameHeader {
            id: chunk.id,
            plain_len: chunk.plain_len,
            stored_len: chunk.bytes.len() as u32,
            codec: chunk.codec,
            kind: chunk.kind,
            payload_crc: None,
        };
        self.put_frame(&header, &chunk.bytes)
    }

    /// As [`Session::put`], a frame read elsewhere: `header` of the stored `bytes`, its lengths
    /// and CRC of them checked, the chunk checked against its id (an upload's, borrowed from
    /// the request's body).
    ///
    /// # Errors
    /// A header that does not describe `bytes`; I/O errors.
    pub fn put_frame(&mut self, header: &pack::FrameHeader, bytes: &[u8]) -> Result<bool> {
        if self.seen.contains(&header.id) {
            return Ok(false);
        }
        let old = self.store.location(&header.id)?;
        if let Some(old) = old {
            let moved = header.kind == ChunkKind::Data && self.rewrite.packs.contains(&old.pack);
            if !self.bad.contains(&header.id) && !self.lost.covers(&old) && !moved {
                if self.allowed.is_some() {
                    self.proven.insert(header.id);
                }
                return Ok(false);
            }
            if moved && !self.bad.contains(&header.id) {
                self.rewritten += 1;
            }
            self.superseded.push((header.id, old));
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
            return Err(Error::Internal("no open pack".into()));
        };
        let loc = Location::of_frame(pack.id(), pack.append_frame(header, bytes)?, header);
        self.pending.push((header.id, loc));
        self.seen.insert(header.id);
        self.new_stored += pack::FRAME_HEADER_SIZE + bytes.len() as u64;
        Ok(true)
    }

    /// Waits for the oldest pack being synced.
    fn wait_one_sync(&mut self) -> Result<()> {
        match self.syncing.pop_front() {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err(Error::Internal("a pack's sync panicked".into())))
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
}
