//! Garbage collection: delete packs with no live chunk, rewrite packs that are mostly garbage.
//!
//! See the crate documentation for why this is safe beside a backup and under `kill -9`.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::Path;
use std::time::Instant;

use cairn_store::chunk::EncodedChunk;
use cairn_store::pack::{self, FRAME_HEADER_SIZE, PACK_HEADER_SIZE, PackWriter};
use cairn_store::{
    BadMark, ChunkId, GarbageFrame, Location, OpenMode, PackId, PackInfo, Store, Sweep, readers,
};
use fs2::FileExt;
use serde::Serialize;

use crate::{Error, Result};

/// Frames a collection reads and copies at a time (8 MiB of plain bytes at 256 KiB chunks).
const COPY_GROUP: usize = 32;

/// Name of the lock file that keeps two garbage collections apart.
pub const GC_LOCK_FILE: &str = "gc.lock";

/// Which packs that hold garbage among live chunks are worth rewriting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Repack {
    /// Bound the garbage: rewrite the packs with the most garbage first until what is left is at
    /// most this share (0.0 to 1.0) of the store's pack bytes (restic's `--max-unused`).
    MaxUnused(f64),
    /// Rewrite every pack whose live share is under this (0.0 to 1.0).
    Below(f64),
}

/// How to collect.
#[derive(Debug, Clone, Copy)]
pub struct GcOptions {
    /// Plan and report, change nothing.
    pub dry_run: bool,
    /// Which packs to rewrite.
    pub repack: Repack,
    /// How old an object in the bucket that no index entry names must be before it is
    /// deleted (a store whose packs are in a bucket): another process may be uploading the
    /// packs it will commit.
    pub orphan_grace: std::time::Duration,
    /// Let quarantined packs go (`cairn_store::quarantine`): copy out what of them is still
    /// referenced and readable, then delete them. Without it they are kept whole.
    pub drop_quarantined: bool,
}

/// The default [`GcOptions::orphan_grace`]: a day.
pub const ORPHAN_GRACE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl GcOptions {
    /// As `cairn gc` takes them: rewrite packs with more than `max_unused` % unused, or, when
    /// given, those with less than `repack_below` % live. `None` when the percentage used is
    /// not from 0 to 100.
    #[must_use]
    pub fn from_percent(dry_run: bool, max_unused: f64, repack_below: Option<f64>) -> Option<Self> {
        let pct = repack_below.unwrap_or(max_unused);
        (0.0..=100.0).contains(&pct).then_some(Self {
            dry_run,
            repack: match repack_below {
                Some(p) => Repack::Below(p / 100.0),
                None => Repack::MaxUnused(max_unused / 100.0),
            },
            orphan_grace: ORPHAN_GRACE,
            drop_quarantined: false,
        })
    }

    /// A dry run with every pack rewritten: what no point references, all of it (the report's
    /// "unreferenced" figures).
    #[must_use]
    pub fn reclaimable() -> Self {
        Self {
            dry_run: true,
            repack: Repack::Below(1.0),
            orphan_grace: ORPHAN_GRACE,
            drop_quarantined: false,
        }
    }
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            repack: Repack::MaxUnused(0.05),
            orphan_grace: ORPHAN_GRACE,
            drop_quarantined: false,
        }
    }
}

/// What a garbage collection did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct GcReport {
    /// Nothing was changed.
    pub dry_run: bool,
    /// Frames on the garbage list when it started.
    pub garbage_frames: u64,
    /// Packs deleted because nothing in them is live.
    pub packs_deleted: u64,
    /// Packs rewritten with their live chunks only.
    pub packs_rewritten: u64,
    /// New packs written by the rewrite.
    pub packs_written: u64,
    /// Chunks dropped from the index.
    pub chunks_freed: u64,
    /// Live bytes copied into new packs.
    pub bytes_copied: u64,
    /// Bytes of pack files freed (deleted and rewritten packs, less the new packs).
    pub bytes_freed: u64,
    /// Pack files the index did not know (killed backups or collections), deleted.
    pub orphan_packs: u64,
    /// Bytes freed from garbage frames: `bytes_freed` without the orphan packs.
    pub garbage_freed: u64,
    /// Their bytes (counted in `bytes_freed`; by a dry run only when no writer holds the lock,
    /// since a running backup's packs are unindexed until it commits).
    pub orphan_bytes: u64,
    /// Garbage bytes left in packs that stay (under the rewrite threshold).
    pub garbage_bytes_kept: u64,
    /// Readers (restores, verifies...) that started before the index swap and still ran: the
    /// packs they may open were left in place, unindexed, for the next collection to delete.
    pub readers_waited_for: u64,
    /// Bytes of those packs (not counted in `bytes_freed`).
    pub bytes_left_for_readers: u64,
    /// Packs that were to be rewritten but were left as they are: the disk had no room for
    /// their live chunks (their garbage is counted in `garbage_bytes_kept`).
    pub rewrites_skipped_for_space: u64,
    /// Live chunks found corrupt while copying: their pack is left alone and they are marked bad.
    pub bad_chunks: Vec<String>,
    /// Quarantined packs kept whole (what a rebuild could not read of each): `gc
    /// --drop-quarantined` lets them go.
    pub quarantined_kept: Vec<String>,
    /// The disk was nearly full: the store's reserve (`cairn_store::reserve`) was deleted to
    /// start; the next writer on a disk with room makes it again.
    pub reserve_given_up: bool,
    /// Quarantined packs deleted (`--drop-quarantined`), after copying out what of them is
    /// still referenced.
    pub quarantined_dropped: u64,
    /// Seconds spent planning (read-only, beside backups).
    pub plan_seconds: f64,
    /// Seconds spent copying live chunks (read-only, beside backups).
    pub copy_seconds: f64,
    /// Seconds waiting for the write lock.
    pub wait_seconds: f64,
    /// Seconds holding the write lock (check, index batch, deleting files).
    pub sweep_seconds: f64,
}

impl GcReport {
    /// This report followed by `next` (a second pass of the same collection).
    fn then(self, next: Self) -> Self {
        Self {
            dry_run: self.dry_run,
            garbage_frames: self.garbage_frames,
            packs_deleted: self.packs_deleted + next.packs_deleted,
            packs_rewritten: self.packs_rewritten + next.packs_rewritten,
            packs_written: self.packs_written + next.packs_written,
            chunks_freed: self.chunks_freed + next.chunks_freed,
            bytes_copied: self.bytes_copied + next.bytes_copied,
            bytes_freed: self.bytes_freed + next.bytes_freed,
            orphan_packs: self.orphan_packs + next.orphan_packs,
            garbage_freed: self.garbage_freed + next.garbage_freed,
            orphan_bytes: self.orphan_bytes + next.orphan_bytes,
            garbage_bytes_kept: next.garbage_bytes_kept,
            readers_waited_for: self.readers_waited_for.max(next.readers_waited_for),
            bytes_left_for_readers: self.bytes_left_for_readers + next.bytes_left_for_readers,
            rewrites_skipped_for_space: next.rewrites_skipped_for_space,
            bad_chunks: [self.bad_chunks, next.bad_chunks].concat(),
            quarantined_kept: next.quarantined_kept,
            reserve_given_up: self.reserve_given_up || next.reserve_given_up,
            quarantined_dropped: self.quarantined_dropped + next.quarantined_dropped,
            plan_seconds: self.plan_seconds + next.plan_seconds,
            copy_seconds: self.copy_seconds + next.copy_seconds,
            wait_seconds: self.wait_seconds + next.wait_seconds,
            sweep_seconds: self.sweep_seconds + next.sweep_seconds,
        }
    }
}

/// What to do with a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Delete,
    Rewrite,
}

/// A frame is dead when the index names another copy of its chunk (or none), or its chunk's
/// count is 0.
fn frame_is_dead(f: &GarbageFrame, loc: Option<&Location>, count: u64) -> bool {
    match loc {
        Some(l) if l.pack == f.pack && l.offset == f.offset => count == 0,
        _ => true,
    }
}

struct GcLock(File);

impl GcLock {
    fn acquire(root: &Path) -> Result<Self> {
        let path = root.join(GC_LOCK_FILE);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::Io(path.clone(), "opening the gc lock".into(), e))?;
        f.try_lock_exclusive().map_err(|_| {
            Error::Refused(format!(
                "another garbage collection is running on {}",
                root.display()
            ))
        })?;
        Ok(Self(f))
    }
}

impl Drop for GcLock {
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.0);
    }
}

/// Plans from the garbage list: which packs to delete or rewrite.
/// The plan: what to do with each pack, and the live bytes of each pack with garbage (what a
/// rewrite copies).
type Plan = (HashMap<PackId, Action>, HashMap<PackId, u64>);

fn plan(store: &Store, opts: &GcOptions, report: &mut GcReport) -> Result<Plan> {
    let garbage = store.garbage()?;
    report.garbage_frames = garbage.len() as u64;
    let infos = store.pack_infos()?;
    let ids: Vec<ChunkId> = garbage.iter().map(|g| g.id).collect();
    let locs = store.locations(&ids)?;
    let counts = store.refcounts(&ids)?;
    let mut dead: HashMap<PackId, (u64, u64)> = HashMap::new();
    // The dead frames of each pack, their headers read once per pack.
    let mut frames: HashMap<PackId, Vec<&GarbageFrame>> = HashMap::new();
    for ((g, loc), count) in garbage.iter().zip(&locs).zip(counts) {
        if frame_is_dead(g, loc.as_ref(), count) && infos.contains_key(&g.pack) {
            frames.entry(g.pack).or_default().push(g);
        }
    }
    for (pack, gs) in frames {
        let offsets: Vec<u64> = gs.iter().map(|g| g.offset).collect();
        // The frame's own header gives its size (a superseded copy may differ from the index).
        for (g, h) in gs.iter().zip(store.frame_headers(pack, &offsets)?) {
            let Some(h) = h.filter(|h| h.id == g.id) else {
                continue;
            };
            let e = dead.entry(pack).or_default();
            e.0 += 1;
            e.1 += FRAME_HEADER_SIZE + u64::from(h.stored_len);
        }
    }
    let mut actions = HashMap::new();
    let mut live_bytes = HashMap::new();
    // Packs with garbage among live chunks: (garbage bytes, live share, pack).
    let mut mixed: Vec<(u64, f64, PackId)> = Vec::new();
    for (pack, (frames, bytes)) in dead {
        let Some(info) = infos.get(&pack) else {
            continue;
        };
        let body = info.size.saturating_sub(PACK_HEADER_SIZE).max(1);
        let live = body.saturating_sub(bytes);
        if frames >= info.chunks {
            actions.insert(pack, Action::Delete);
        } else {
            live_bytes.insert(pack, live);
            mixed.push((bytes, live as f64 / body as f64, pack));
        }
    }
    match opts.repack {
        Repack::Below(share) => {
            for (bytes, live, pack) in mixed {
                if live < share {
                    actions.insert(pack, Action::Rewrite);
                } else {
                    report.garbage_bytes_kept += bytes;
                }
            }
        }
        Repack::MaxUnused(share) => {
            // Most garbage first: each rewrite frees the most for what it copies.
            mixed.sort_by(|a, b| b.0.cmp(&a.0).then(a.2.cmp(&b.2)));
            // The share is of the store as this collection leaves it: without the packs it
            // deletes and the garbage its rewrites drop (measured before, the store would keep
            // more than the share once it shrank).
            let deleted: u64 = actions
                .iter()
                .filter(|(_, a)| matches!(a, Action::Delete))
                .filter_map(|(p, _)| infos.get(p).map(|i| i.size))
                .sum();
            let total: u64 = infos.values().map(|i| i.size).sum();
            let mut after = total.saturating_sub(deleted);
            let mut left: u64 = mixed.iter().map(|m| m.0).sum();
            for (bytes, _, pack) in mixed {
                if left as f64 > after as f64 * share {
                    actions.insert(pack, Action::Rewrite);
                    left -= bytes;
                    after = after.saturating_sub(bytes);
                } else {
                    report.garbage_bytes_kept += bytes;
                }
            }
        }
    }
    Ok((actions, live_bytes))
}

/// The packs a collection wrote, removed when it fails before its sweep indexed them (a full
/// disk must not be left fuller by a half-done rewrite), here and from the bucket.
struct Created {
    ids: std::cell::RefCell<Vec<PackId>>,
    indexed: std::cell::Cell<bool>,
    packs: cairn_store::bucket::Sealer,
}

impl Created {
    fn new(store: &Store) -> Self {
        Self {
            ids: std::cell::RefCell::default(),
            indexed: std::cell::Cell::new(false),
            packs: store.sealer(),
        }
    }

    fn add(&self, id: PackId) {
        self.ids.borrow_mut().push(id);
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        if !self.indexed.get() {
            for id in self.ids.borrow().iter() {
                let _ = self.packs.remove(*id);
            }
        }
    }
}

/// Copies live frames of packs being rewritten into new packs.
struct Copier<'a> {
    store: &'a Store,
    /// Every pack this collection created, until its sweep indexes them (see [`Created`]).
    created: &'a Created,
    writer: Option<PackWriter>,
    /// Packs written: their entry, and the bytes they take where they are kept.
    written: Vec<(PackId, PackInfo, u64)>,
    moved: HashMap<ChunkId, (Location, Location)>,
    bytes: u64,
}

impl<'a> Copier<'a> {
    fn new(store: &'a Store, created: &'a Created) -> Self {
        Self {
            store,
            created,
            writer: None,
            written: Vec::new(),
            moved: HashMap::new(),
            bytes: 0,
        }
    }

    /// Copies frames, each checked first (decoded and hashed); returns those that are bad and
    /// why. Read a group at a time (from a bucket: adjacent frames in one ranged GET, the GETs
    /// of later groups in flight); the bucket's own failures stop the collection.
    fn copy_all(
        &mut self,
        frames: &[(ChunkId, Location)],
    ) -> Result<Vec<(ChunkId, Location, String)>> {
        let mut bad = Vec::new();
        let store = self.store;
        let mut failed: Option<Error> = None;
        store
            .read_encoded_groups(frames, COPY_GROUP, |group, read| {
                for ((id, old), r) in group.iter().zip(read) {
                    match r {
                        Ok(enc) => {
                            if let Err(e) = self.append(enc, *old) {
                                failed = Some(e);
                                return Err(cairn_store::Error::Usage("the copy stopped".into()));
                            }
                        }
                        Err(cairn_store::Error::BadChunk { what, .. }) => {
                            bad.push((*id, *old, what))
                        }
                        Err(e) => bad.push((*id, *old, e.to_string())),
                    }
                }
                Ok(())
            })
            .map_err(|e| match failed.take() {
                Some(own) => own,
                None => e.into(),
            })?;
        Ok(bad)
    }

    /// Appends a checked frame read from `old` to the open new pack.
    fn append(&mut self, enc: EncodedChunk, old: Location) -> Result<()> {
        let target = self.store.config().pack_target_size;
        if self.writer.as_ref().is_some_and(|w| w.len() >= target) {
            self.seal()?;
        }
        if self.writer.is_none() {
            let w = PackWriter::create(&self.store.packs_dir())?;
            self.created.add(w.id());
            self.writer = Some(w);
        }
        let Some(w) = self.writer.as_mut() else {
            return Err(Error::Refused("no open pack".into()));
        };
        let offset = w.append(&enc)?;
        let new = Location {
            pack: w.id(),
            offset,
            ..old
        };
        self.bytes += FRAME_HEADER_SIZE + u64::from(old.stored_len);
        self.moved.insert(enc.id, (old, new));
        Ok(())
    }

    fn seal(&mut self) -> Result<()> {
        if let Some(w) = self.writer.take() {
            let (id, size) = (w.id(), w.len());
            let info = PackInfo {
                size,
                chunks: self.moved.values().filter(|(_, n)| n.pack == id).count() as u64,
            };
            let kept = self.store.sealer().seal(w)?;
            self.written.push((id, info, kept));
        }
        Ok(())
    }
}

/// The new packs a copy writes, counted without writing them: as [`Copier`] does, a frame goes
/// to a new pack when the open one has reached the target size.
struct NewPacks {
    target: u64,
    /// Bytes of the open pack, if one is open.
    open: Option<u64>,
    /// Packs opened.
    count: u64,
    /// Bytes of every new pack, headers included.
    total: u64,
    /// Bytes of the frames copied.
    frame_bytes: u64,
}

impl NewPacks {
    fn new(target: u64) -> Self {
        Self {
            target,
            open: None,
            count: 0,
            total: 0,
            frame_bytes: 0,
        }
    }

    fn append(&mut self, frame: u64) {
        let len = match self.open {
            Some(len) if len < self.target => len,
            _ => {
                self.count += 1;
                self.total += PACK_HEADER_SIZE;
                PACK_HEADER_SIZE
            }
        };
        self.open = Some(len + frame);
        self.total += frame;
        self.frame_bytes += frame;
    }
}

/// A pack's frames as the index and counts see them now.
struct PackFrames {
    /// Frames the index names there whose count is above zero.
    live: Vec<(ChunkId, Location)>,
    /// Frames the index names there whose count is zero.
    dead: Vec<ChunkId>,
    /// The pack ends in a torn or damaged frame: leave it alone.
    torn: bool,
}

/// `released`: the pack is quarantined and its owner let it go: what of it reads is copied out
/// whatever its damage.
fn classify(store: &Store, pack: PackId, released: bool) -> Result<PackFrames> {
    let scan = store.pack_scan(pack)?;
    let ids: Vec<ChunkId> = scan.frames.iter().map(|f| f.header.id).collect();
    let locs = store.locations(&ids)?;
    let counts = store.refcounts(&ids)?;
    let mut out = PackFrames {
        live: Vec::new(),
        dead: Vec::new(),
        torn: !scan.is_whole() && !released,
    };
    for ((f, loc), count) in scan.frames.iter().zip(locs).zip(counts) {
        match loc {
            Some(l) if l.pack == pack && l.offset == f.offset => {
                if count > 0 {
                    out.live.push((f.header.id, l));
                } else {
                    out.dead.push(f.header.id);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Runs a garbage collection on the store at `root`.
///
/// # Errors
/// Another collection running, I/O and index errors.
pub fn collect(root: &Path, opts: &GcOptions, progress: &dyn Fn(&str)) -> Result<GcReport> {
    let _gc_lock = GcLock::acquire(root)?;
    let started = Instant::now();
    // A disk too full for the index to open: the store's reserve makes the room.
    let reserve_given_up = !opts.dry_run && cairn_store::reserve::give_up_if_full(root)?;
    if reserve_given_up {
        progress("the disk is nearly full: gave up the store's 1 MiB reserve to start");
    }
    if !Store::open(root, OpenMode::Read)?.refcounts_ready()? {
        // A store written before reference counts: a writer's open counts them.
        progress("counting references (first collection on this store)");
        drop(Store::open(root, OpenMode::Write { wait: true })?);
    }
    let report = GcReport {
        dry_run: opts.dry_run,
        ..GcReport::default()
    };
    if opts.dry_run {
        return collect_inner(Final::Open(root), opts, report, started);
    }
    // Free before copying: packs with nothing live are deleted first (and orphan packs), so a
    // nearly full disk gets room before any rewrite needs it.
    let deletes_only = GcOptions {
        dry_run: false,
        repack: Repack::Below(0.0),
        orphan_grace: opts.orphan_grace,
        drop_quarantined: opts.drop_quarantined,
    };
    let first = collect_inner(Final::Open(root), &deletes_only, report, started)?;
    let second = collect_inner(Final::Open(root), opts, GcReport::default(), Instant::now())?;
    let mut report = first.then(second);
    report.reserve_given_up = reserve_given_up;
    Ok(report)
}

/// Runs a garbage collection in the process that holds `store` open for writing (`cairn
/// serve`), beside the backup sessions it runs: the final step takes the store's commit lock
/// instead of the write lock, and leaves alone the packs `live` names (those of open sessions,
/// asked for under that lock) and any pack made after the collection started.
///
/// # Errors
/// Another collection running, I/O and index errors.
pub fn collect_held(
    store: &Store,
    opts: &GcOptions,
    live: &dyn Fn() -> Vec<PackId>,
) -> Result<GcReport> {
    let _gc_lock = GcLock::acquire(store.root())?;
    let started = Instant::now();
    let report = GcReport {
        dry_run: opts.dry_run,
        ..GcReport::default()
    };
    let held = || Final::Held {
        store,
        live,
        since: std::time::SystemTime::now(),
    };
    if opts.dry_run {
        return collect_inner(held(), opts, report, started);
    }
    let deletes_only = GcOptions {
        dry_run: false,
        repack: Repack::Below(0.0),
        orphan_grace: opts.orphan_grace,
        drop_quarantined: opts.drop_quarantined,
    };
    let first = collect_inner(held(), &deletes_only, report, started)?;
    let second = collect_inner(held(), opts, GcReport::default(), Instant::now())?;
    Ok(first.then(second))
}

/// Where a collection's final step writes: a store it opens (and whose write lock it waits
/// for), or one this process holds, beside live sessions.
#[derive(Clone, Copy)]
enum Final<'a> {
    Open(&'a Path),
    Held {
        store: &'a Store,
        live: &'a dyn Fn() -> Vec<PackId>,
        since: std::time::SystemTime,
    },
}

fn collect_inner(
    target: Final<'_>,
    opts: &GcOptions,
    mut report: GcReport,
    started: Instant,
) -> Result<GcReport> {
    let root = match target {
        Final::Open(root) => root,
        Final::Held { store, .. } => store.root(),
    };
    // 1. Plan from a read-only view: never blocks or waits for a backup.
    let ro = Store::open(root, OpenMode::Read)?;
    let (mut actions, mut live_bytes) = plan(&ro, opts, &mut report)?;
    // Quarantined packs are kept whole, or (let go) copied out and deleted like any other.
    let quarantine = cairn_store::quarantine::list(root)?;
    if opts.drop_quarantined {
        let indexed = ro.pack_infos()?;
        for (pack, info) in quarantine.keys().filter_map(|p| Some((p, indexed.get(p)?))) {
            actions.insert(*pack, Action::Rewrite);
            live_bytes.entry(*pack).or_insert(info.size);
        }
    } else {
        actions.retain(|p, _| !quarantine.contains_key(p));
        let mut kept: Vec<String> = quarantine.values().map(|q| q.describe()).collect();
        kept.sort();
        report.quarantined_kept = kept;
    }
    let released = |p: &PackId| opts.drop_quarantined && quarantine.contains_key(p);
    // Unindexed files and objects that are not to be deleted: quarantined ones kept.
    let keep_unindexed = |p: Option<PackId>| {
        !opts.drop_quarantined && p.is_some_and(|p| quarantine.contains_key(&p))
    };
    report.plan_seconds = started.elapsed().as_secs_f64();
    if opts.dry_run {
        // What the run would do, step for step: the same packs, the same frames copied in the
        // same order into new packs sealed at the same size.
        let infos = ro.pack_infos()?;
        let mut removed_bytes = 0u64;
        let mut new_packs = NewPacks::new(ro.config().pack_target_size);
        for (pack, action) in &actions {
            let size = infos.get(pack).map_or(0, |i| i.size);
            let PackFrames { live, dead, torn } = classify(&ro, *pack, released(pack))?;
            if torn {
                continue;
            }
            match action {
                Action::Delete => report.packs_deleted += 1,
                Action::Rewrite => report.packs_rewritten += 1,
            }
            for (_, l) in &live {
                new_packs.append(FRAME_HEADER_SIZE + u64::from(l.stored_len));
            }
            report.chunks_freed += dead.len() as u64;
            removed_bytes += size;
        }
        report.packs_written = new_packs.count;
        report.bytes_copied = new_packs.frame_bytes;
        report.bytes_freed = removed_bytes.saturating_sub(new_packs.total);
        report.garbage_freed = report.bytes_freed;
        // Unindexed packs are deleted by the run (under the write lock no backup is writing
        // one). When no writer holds the lock now, they are orphans and counted as freed, as
        // the run would free them; while a backup runs they may be its packs: reported only.
        let writer_running = cairn_store::lock::writer_active(root);
        for (path, len) in ro.unindexed_pack_files()? {
            if keep_unindexed(pack_of(&path)) {
                continue;
            }
            report.orphan_packs += 1;
            report.orphan_bytes += len;
            if !writer_running {
                report.bytes_freed += len;
            }
        }
        // A bucket's: those past the grace period only, as the run deletes them.
        let mut old = expired(&ro.unindexed_objects()?, opts.orphan_grace);
        old.retain(|o| !keep_unindexed(cairn_store::bucket::object_pack(&o.name)));
        report.orphan_packs += old.iter().filter(|o| o.name.ends_with(".pack")).count() as u64;
        let bytes: u64 = old.iter().map(|o| o.size).sum();
        report.orphan_bytes += bytes;
        report.bytes_freed += bytes;
        return Ok(report);
    }
    // Room for the copies: a rewrite needs its live bytes on disk before the old pack goes.
    // Rewrites that do not fit are left for later (most garbage per byte copied first).
    let mut rewrites: Vec<(PackId, u64)> = actions
        .iter()
        .filter(|(_, a)| **a == Action::Rewrite)
        .map(|(p, _)| (*p, live_bytes.get(p).copied().unwrap_or(u64::MAX)))
        .collect();
    rewrites.sort_by_key(|(p, live)| (*live, *p));
    // Room kept for the index's own writes, and frame headers.
    let margin = 1 << 20;
    // (A store in a bucket holds one new pack here at a time, uploaded when full.)
    let mut room = match ro.bucket() {
        Some(_) => u64::MAX,
        None => fs2::available_space(ro.packs_dir())
            .unwrap_or(u64::MAX)
            .saturating_sub(margin),
    };
    for (pack, size) in rewrites {
        if size <= room {
            room -= size;
        } else {
            actions.remove(&pack);
            report.rewrites_skipped_for_space += 1;
        }
    }
    // 2. Copy the live chunks of packs to rewrite, still read-only: backups go on.
    let copy_started = Instant::now();
    let created = Created::new(&ro);
    let mut copier = Copier::new(&ro, &created);
    let mut skip: HashSet<PackId> = HashSet::new();
    let mut bad: Vec<(ChunkId, BadMark)> = Vec::new();
    for (pack, action) in &actions {
        if *action != Action::Rewrite {
            continue;
        }
        let PackFrames { live, torn, .. } = classify(&ro, *pack, released(pack))?;
        if torn {
            skip.insert(*pack);
            continue;
        }
        for (id, loc, what) in copier.copy_all(&live)? {
            skip.insert(*pack);
            report
                .bad_chunks
                .push(format!("chunk {id} in pack {}: {what}", pack.to_hex()));
            bad.push((
                id,
                BadMark {
                    what,
                    location: Some(format!("pack {} offset {}", pack.to_hex(), loc.offset)),
                    found: chrono::Utc::now().to_rfc3339(),
                },
            ));
        }
    }
    report.copy_seconds = copy_started.elapsed().as_secs_f64();
    let mut moved = std::mem::take(&mut copier.moved);
    let mut written = std::mem::take(&mut copier.written);
    let mut open_writer = copier.writer.take();
    let copied = copier.bytes;
    drop(ro);

    // 3. Under the write lock (a running backup commits first): check again against the index
    //    as it is now, copy what came alive since, swap in one batch, then delete files.
    let wait_started = Instant::now();
    let opened;
    let store: &Store = match target {
        Final::Open(root) => {
            opened = Store::open(root, OpenMode::Write { wait: true })?;
            &opened
        }
        Final::Held { store, .. } => store,
    };
    // Commits of this process (sessions of a server) wait while the index is checked and
    // swapped: each sees the counts before the swap or after it.
    let _commits = store.commit_lock()?;
    report.wait_seconds = wait_started.elapsed().as_secs_f64();
    let sweep_started = Instant::now();
    let mut copier = Copier::new(store, &created);
    copier.writer = open_writer.take();
    copier.moved = std::mem::take(&mut moved);
    copier.written = std::mem::take(&mut written);
    copier.bytes = copied;
    let mut sweep = Sweep::default();
    let mut removed_files = Vec::new();
    let infos = store.pack_infos()?;
    // What each pack takes where it is kept: in a bucket, its objects as listed.
    let kept = store.pack_object_sizes()?;
    let size_of = |p: &PackId| {
        kept.get(p)
            .copied()
            .unwrap_or_else(|| infos.get(p).map_or(0, |i| i.size))
    };
    for (pack, action) in &actions {
        if skip.contains(pack) || !infos.contains_key(pack) {
            continue;
        }
        let PackFrames { live, dead, torn } = classify(store, *pack, released(pack))?;
        if torn {
            continue;
        }
        if *action == Action::Delete && !live.is_empty() {
            // Chunks came alive since the plan (a backup reused them): copy them too.
            report.packs_rewritten += 1;
        } else if *action == Action::Delete {
            report.packs_deleted += 1;
        } else {
            report.packs_rewritten += 1;
        }
        let mut ok = true;
        let todo: Vec<(ChunkId, Location)> = live
            .into_iter()
            .filter(|(id, loc)| copier.moved.get(id).is_none_or(|(old, _)| old != loc))
            .collect();
        for (id, _, what) in copier.copy_all(&todo)? {
            ok = false;
            report
                .bad_chunks
                .push(format!("chunk {id} in pack {}: {what}", pack.to_hex()));
        }
        if !ok {
            continue;
        }
        report.chunks_freed += dead.len() as u64;
        sweep.dead.extend(dead);
        sweep.removed_packs.push(*pack);
        removed_files.push((*pack, size_of(pack)));
    }
    copier.seal()?;
    let removed: HashSet<PackId> = sweep.removed_packs.iter().copied().collect();
    // Only moves out of packs being removed, and only where the index still names the old copy.
    let old_ids: Vec<ChunkId> = copier.moved.keys().copied().collect();
    let current = store.locations(&old_ids)?;
    for (id, cur) in old_ids.iter().zip(current) {
        if let Some((old, new)) = copier.moved.get(id)
            && removed.contains(&old.pack)
            && cur.as_ref() == Some(old)
        {
            sweep.moved.push((*id, *new));
        }
    }
    for (id, info, _) in &copier.written {
        sweep.added_packs.push((*id, info.clone()));
    }
    report.packs_written = copier.written.len() as u64;
    report.bytes_copied = copier.bytes;
    store.sweep(&sweep)?;
    created.indexed.set(true);
    if !bad.is_empty() {
        store.mark_bad(
            &bad.into_iter()
                .map(|(id, m)| (id, Some(m)))
                .collect::<Vec<_>>(),
        )?;
    }
    // A reader that started before the swap may still open the packs it dropped: they stay,
    // unindexed, until a collection finds no such reader (see `cairn_store::readers`).
    let swapped = readers::now();
    report.readers_waited_for = readers::readers_before(store.root(), swapped)?;
    let mut freed = 0u64;
    if report.readers_waited_for > 0 {
        // The packs the swap dropped (unindexed now: counted once), and those an earlier
        // collection left: what the next one deletes.
        let dropped: HashSet<PackId> = removed_files.iter().map(|(p, _)| *p).collect();
        let kept: u64 = removed_files.iter().map(|(_, size)| size).sum();
        report.bytes_left_for_readers = kept;
        for (path, len) in store.unindexed_pack_files()? {
            if !pack_of(&path).is_some_and(|p| dropped.contains(&p)) {
                report.bytes_left_for_readers += len;
            }
        }
    } else {
        for (pack, size) in &removed_files {
            store.remove_pack(*pack)?;
            freed += size;
        }
        // Pack files the index does not know (killed writers, packs left for readers): under
        // the write lock no backup is writing one; in a server, live sessions are.
        let (keep, since): (HashSet<PackId>, Option<std::time::SystemTime>) = match target {
            Final::Open(_) => (HashSet::new(), None),
            Final::Held { live, since, .. } => (live().into_iter().collect(), Some(since)),
        };
        for (path, len) in store.unindexed_pack_files()? {
            let id = pack_of(&path);
            let young = since.is_some_and(|since| {
                std::fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .is_ok_and(|m| m >= since)
            });
            if id.is_some_and(|id| keep.contains(&id)) || young || keep_unindexed(id) {
                continue;
            }
            remove(&path)?;
            report.orphan_packs += 1;
            report.orphan_bytes += len;
            freed += len;
        }
        // Objects in the bucket no index entry names, once past the grace period: a killed
        // upload's (another process may be uploading younger ones).
        if let Some(b) = store.bucket() {
            let keep: HashSet<PackId> = match target {
                Final::Open(_) => HashSet::new(),
                Final::Held { live, .. } => live().into_iter().collect(),
            };
            for o in expired(&store.unindexed_objects()?, opts.orphan_grace) {
                let pack = cairn_store::bucket::object_pack(&o.name);
                if pack.is_some_and(|p| keep.contains(&p)) || keep_unindexed(pack) {
                    continue;
                }
                b.delete(&o.name)?;
                if o.name.ends_with(".pack") {
                    report.orphan_packs += 1;
                }
                report.orphan_bytes += o.size;
                freed += o.size;
            }
        }
    }
    if opts.drop_quarantined {
        // A quarantined pack whose file and objects are gone is released.
        let indexed = store.pack_infos()?;
        let objects: HashSet<PackId> = store
            .unindexed_objects()?
            .iter()
            .filter_map(|o| cairn_store::bucket::object_pack(&o.name))
            .collect();
        for pack in quarantine.keys() {
            let here = pack.path(&store.packs_dir()).exists();
            if !here && !indexed.contains_key(pack) && !objects.contains(pack) {
                cairn_store::quarantine::release(store.root(), pack)?;
                report.quarantined_dropped += 1;
            }
        }
    }
    let new_bytes: u64 = copier.written.iter().map(|(_, _, kept)| kept).sum();
    report.bytes_freed = freed.saturating_sub(new_bytes);
    report.garbage_freed = report.bytes_freed.saturating_sub(report.orphan_bytes);
    if matches!(target, Final::Open(_)) {
        clean_spool(&store.spool_dir());
    }
    report.sweep_seconds = sweep_started.elapsed().as_secs_f64();
    Ok(report)
}

/// The pack a pack file's name gives.
fn pack_of(path: &Path) -> Option<PackId> {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(PackId::from_hex)
}

/// The objects of `objects` older than `grace`.
fn expired(
    objects: &[cairn_store::objects::ObjectInfo],
    grace: std::time::Duration,
) -> Vec<cairn_store::objects::ObjectInfo> {
    let cutoff =
        chrono::Utc::now() - chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    objects
        .iter()
        .filter(|o| o.modified <= cutoff)
        .cloned()
        .collect()
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::Io(path.to_path_buf(), "deleting a pack".into(), e)),
    }
    if let Some(dir) = path.parent() {
        pack::sync_dir(dir)?;
    }
    Ok(())
}

/// Spool files of stdin backups that were killed (no backup runs while the lock is held).
fn clean_spool(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
