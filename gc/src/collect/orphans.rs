//! The files a collection deletes last: the packs the swap dropped (unless a reader that
//! started before the swap may still open them), pack files and bucket objects no index entry
//! names, and quarantined packs let go.

use std::collections::HashSet;
use std::path::Path;

use cairn_store::{PackId, Store, pack, readers};

use super::plan::Quarantine;
use super::{Final, GcOptions, GcReport};
use crate::{Error, Result};

/// Deletes the swapped-out packs and the orphans; returns the bytes freed.
pub(super) fn delete(
    store: &Store,
    target: Final<'_>,
    removed_files: &[(PackId, u64)],
    opts: &GcOptions,
    quarantine: &Quarantine,
    report: &mut GcReport,
) -> Result<u64> {
    // A reader that started before the swap may still open the packs it dropped: they stay,
    // unindexed, until a collection finds no such reader (see `cairn_store::readers`).
    let swapped = readers::now();
    report.readers_waited_for = readers::readers_before(store.root(), swapped)?;
    if report.readers_waited_for > 0 {
        // The packs the swap dropped (unindexed now: counted once), and those an earlier
        // collection left: what the next one deletes.
        let dropped: HashSet<PackId> = removed_files.iter().map(|(p, _)| *p).collect();
        report.bytes_left_for_readers = removed_files.iter().map(|(_, size)| size).sum();
        for (path, len) in store.unindexed_pack_files()? {
            if !pack_of(&path).is_some_and(|p| dropped.contains(&p)) {
                report.bytes_left_for_readers += len;
            }
        }
        return Ok(0);
    }
    let mut freed = 0u64;
    for (pack, size) in removed_files {
        store.remove_pack(*pack)?;
        freed += size;
    }
    freed += unindexed_files(store, target, quarantine, report)?;
    freed += unindexed_objects(store, target, opts, quarantine, report)?;
    Ok(freed)
}

/// The packs of live sessions of the process holding the store (none for a store opened here).
fn live_packs(target: Final<'_>) -> HashSet<PackId> {
    match target {
        Final::Open(_) => HashSet::new(),
        Final::Held { live, .. } => live().into_iter().collect(),
    }
}

/// Pack files the index does not know (killed writers, packs left for readers): under the write
/// lock no backup is writing one; in a server, live sessions are.
fn unindexed_files(
    store: &Store,
    target: Final<'_>,
    quarantine: &Quarantine,
    report: &mut GcReport,
) -> Result<u64> {
    let keep = live_packs(target);
    let since = match target {
        Final::Open(_) => None,
        Final::Held { since, .. } => Some(since),
    };
    let mut freed = 0;
    for (path, len) in store.unindexed_pack_files()? {
        let id = pack_of(&path);
        let young = since.is_some_and(|since| {
            std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|m| m >= since)
        });
        if id.is_some_and(|id| keep.contains(&id)) || young || quarantine.keeps(id) {
            continue;
        }
        remove(&path)?;
        report.orphan_packs += 1;
        report.orphan_bytes += len;
        freed += len;
    }
    Ok(freed)
}

/// Objects in the bucket no index entry names, once past the grace period: a killed upload's
/// (another process may be uploading younger ones).
fn unindexed_objects(
    store: &Store,
    target: Final<'_>,
    opts: &GcOptions,
    quarantine: &Quarantine,
    report: &mut GcReport,
) -> Result<u64> {
    let Some(b) = store.bucket() else {
        return Ok(0);
    };
    let keep = live_packs(target);
    let mut freed = 0;
    for o in expired(&store.unindexed_objects()?, opts.orphan_grace) {
        let pack = cairn_store::bucket::object_pack(&o.name);
        if pack.is_some_and(|p| keep.contains(&p)) || quarantine.keeps(pack) {
            continue;
        }
        b.delete(&o.name)?;
        if o.name.ends_with(".pack") {
            report.orphan_packs += 1;
        }
        report.orphan_bytes += o.size;
        freed += o.size;
    }
    Ok(freed)
}

/// A quarantined pack whose file and objects are gone is released (`--drop-quarantined`).
pub(super) fn release_quarantined(
    store: &Store,
    quarantine: &Quarantine,
    report: &mut GcReport,
) -> Result<()> {
    let indexed = store.pack_infos()?;
    let objects: HashSet<PackId> = store
        .unindexed_objects()?
        .iter()
        .filter_map(|o| cairn_store::bucket::object_pack(&o.name))
        .collect();
    for pack in quarantine.packs() {
        let here = pack.path(&store.packs_dir()).exists();
        if !here && !indexed.contains_key(pack) && !objects.contains(pack) {
            cairn_store::quarantine::release(store.root(), pack)?;
            report.quarantined_dropped += 1;
        }
    }
    Ok(())
}

/// The pack a pack file's name gives.
pub(super) fn pack_of(path: &Path) -> Option<PackId> {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(PackId::from_hex)
}

/// The objects of `objects` older than `grace`.
pub(super) fn expired(
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
pub(super) fn clean_spool(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
