//! A dry run: what a collection would do, step for step (the same packs, the same frames
//! copied in the same order into new packs sealed at the same size), with nothing written.

use std::path::Path;

use cairn_store::Store;
use cairn_store::pack::{FRAME_HEADER_SIZE, PACK_HEADER_SIZE};

use super::orphans::{expired, pack_of};
use super::plan::{Action, PackFrames, Plan, Quarantine, classify};
use super::{GcOptions, GcReport};
use crate::Result;

/// The new packs a copy writes, counted without writing them: as [`Copier`] does, a frame goes
/// to a new pack when the open one has reached the target size.
pub(super) struct NewPacks {
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

/// Counts into `report` what the run would delete, rewrite, copy and free.
pub(super) fn tally(
    ro: &Store,
    plan: &Plan,
    quarantine: &Quarantine,
    opts: &GcOptions,
    report: &mut GcReport,
) -> Result<()> {
    let infos = ro.pack_infos()?;
    let mut removed_bytes = 0u64;
    let mut new_packs = NewPacks::new(ro.config().pack_target_size);
    for (pack, action) in &plan.actions {
        let size = infos.get(pack).map_or(0, |i| i.size);
        let PackFrames { live, dead, torn } = classify(ro, *pack, quarantine.released(pack))?;
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
    orphans(ro, ro.root(), quarantine, opts, report)
}

/// Unindexed packs are deleted by the run (under the write lock no backup is writing one).
/// When no writer holds the lock now, they are orphans and counted as freed, as the run would
/// free them; while a backup runs they may be its packs: reported only. A bucket's: those past
/// the grace period only, as the run deletes them.
fn orphans(
    ro: &Store,
    root: &Path,
    quarantine: &Quarantine,
    opts: &GcOptions,
    report: &mut GcReport,
) -> Result<()> {
    let writer_running = cairn_store::lock::writer_active(root);
    for (path, len) in ro.unindexed_pack_files()? {
        if quarantine.keeps(pack_of(&path)) {
            continue;
        }
        report.orphan_packs += 1;
        report.orphan_bytes += len;
        if !writer_running {
            report.bytes_freed += len;
        }
    }
    let mut old = expired(&ro.unindexed_objects()?, opts.orphan_grace);
    old.retain(|o| !quarantine.keeps(cairn_store::bucket::object_pack(&o.name)));
    report.orphan_packs += old.iter().filter(|o| o.name.ends_with(".pack")).count() as u64;
    let bytes: u64 = old.iter().map(|o| o.size).sum();
    report.orphan_bytes += bytes;
    report.bytes_freed += bytes;
    Ok(())
}
