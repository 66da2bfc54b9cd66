//! Garbage collection: delete packs with no live chunk, rewrite packs that are mostly garbage.
//!
//! See the crate documentation for why this is safe beside a backup and under `kill -9`. The
//! steps are modules: [`plan`] (read-only), [`copy`] (read-only), [`sweep`] (under the write
//! lock), then [`orphans`] (the files deleted last); [`dry_run`] counts what they would do.

mod copy;
mod dry_run;
mod orphans;
mod plan;
mod sweep;

use std::fs::File;
use std::path::Path;
use std::time::Instant;

use cairn_store::{OpenMode, PackId, Store};
use fs2::FileExt;
use serde::Serialize;

use crate::{Error, Result};

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
pub(super) enum Final<'a> {
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
    let mut plan = plan::plan(&ro, opts, &mut report)?;
    let quarantine = plan::Quarantine::apply(root, &ro, opts, &mut plan, &mut report)?;
    report.plan_seconds = started.elapsed().as_secs_f64();
    if opts.dry_run {
        dry_run::tally(&ro, &plan, &quarantine, opts, &mut report)?;
        return Ok(report);
    }
    plan.fit_room(&ro, &mut report);

    // 2. Copy the live chunks of packs to rewrite, still read-only: backups go on.
    let copy_started = Instant::now();
    let created = copy::Created::new(&ro);
    let copied = copy::copy_live(&ro, &created, &plan, &quarantine, &mut report)?;
    report.copy_seconds = copy_started.elapsed().as_secs_f64();
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
    let swapped = sweep::sweep(store, &created, copied, &plan, &quarantine, &mut report)?;

    // 4. Delete what the index no longer names.
    let freed = orphans::delete(
        store,
        target,
        &swapped.removed,
        opts,
        &quarantine,
        &mut report,
    )?;
    if opts.drop_quarantined {
        orphans::release_quarantined(store, &quarantine, &mut report)?;
    }
    report.bytes_freed = freed.saturating_sub(swapped.new_bytes);
    report.garbage_freed = report.bytes_freed.saturating_sub(report.orphan_bytes);
    if matches!(target, Final::Open(_)) {
        orphans::clean_spool(&store.spool_dir());
    }
    report.sweep_seconds = sweep_started.elapsed().as_secs_f64();
    Ok(report)
}
