//! Step 3 of a collection, under the write lock (a running backup commits first): every pack
//! to remove is checked again against the index as it is now, what came alive since is copied
//! too, and one batch swaps the index.

use std::collections::HashSet;

use cairn_store::{ChunkId, Location, PackId, Store, Sweep};

use super::GcReport;
use super::copy::{Copied, Copier, Created};
use super::plan::{Action, PackFrames, Plan, Quarantine, classify};
use crate::Result;

/// What the swap took out of the index: the packs whose files go, with the bytes each takes
/// where it is kept, and the bytes of the new packs.
pub(super) struct Swapped {
    pub removed: Vec<(PackId, u64)>,
    pub new_bytes: u64,
}

/// Checks, copies what came alive, and swaps the index in one batch.
pub(super) fn sweep(
    store: &Store,
    created: &Created,
    copied: Copied,
    plan: &Plan,
    quarantine: &Quarantine,
    report: &mut GcReport,
) -> Result<Swapped> {
    let Copied { copy, skip, bad } = copied;
    let mut copier = Copier::resume(store, created, copy);
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
    for (pack, action) in &plan.actions {
        if skip.contains(pack) || !infos.contains_key(pack) {
            continue;
        }
        let PackFrames { live, dead, torn } = classify(store, *pack, quarantine.released(pack))?;
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
        if !copy_what_is_left(&mut copier, *pack, live, report)? {
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
    Ok(Swapped {
        removed: removed_files,
        new_bytes: copier.written.iter().map(|(_, _, kept)| kept).sum(),
    })
}

/// Copies the live frames of `pack` the copy step did not (what came alive since, or all of
/// a pack planned for deletion); whether all read well (a pack with a bad chunk stays).
fn copy_what_is_left(
    copier: &mut Copier<'_>,
    pack: PackId,
    live: Vec<(ChunkId, Location)>,
    report: &mut GcReport,
) -> Result<bool> {
    let todo: Vec<(ChunkId, Location)> = live
        .into_iter()
        .filter(|(id, loc)| copier.moved.get(id).is_none_or(|(old, _)| old != loc))
        .collect();
    let mut ok = true;
    for (id, _, what) in copier.copy_all(&todo)? {
        ok = false;
        report
            .bad_chunks
            .push(format!("chunk {id} in pack {}: {what}", pack.to_hex()));
    }
    Ok(ok)
}
