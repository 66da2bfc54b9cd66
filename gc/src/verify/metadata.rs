//! The checks that read no chunk: the root files against the catalogue, and each chosen
//! point's record against its tree.

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_store::{OpenMode, RecoveryPoint, Store};

use crate::Result;

/// How long a disagreement between the root files and the catalogue is looked at again while a
/// writer runs: a commit writes its root files, then its catalogue batch, milliseconds apart.
const IN_FLIGHT_FOR: Duration = Duration::from_secs(10);

/// The disagreements between the root files and the catalogue that are not a commit, forget or
/// protect in flight: while a writer holds the store, each comparison that finds some is made
/// again on a fresh view of the index (for up to [`IN_FLIGHT_FOR`]), and only what stays is
/// reported.
pub(super) fn catalogue_disagreements(root: &Path, store: &Store) -> Result<Vec<String>> {
    let mut found = store.compare_root_files()?;
    let started = Instant::now();
    while !found.is_empty() && started.elapsed() < IN_FLIGHT_FOR {
        let writing = cairn_store::lock::writer_active(root);
        if writing {
            std::thread::sleep(Duration::from_millis(200));
        }
        found = Store::open(root, OpenMode::Read)?.compare_root_files()?;
        if !writing {
            break;
        }
    }
    Ok(found)
}

/// The chosen points whose record disagrees with their tree (a root file edited into other
/// valid JSON, then rebuilt from): such a point does not restore.
pub(super) fn shape_disagreements(store: &Store, chosen: &[&RecoveryPoint]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for p in chosen {
        if let Some(what) = store.shape_disagreement(p)? {
            out.push(format!(
                "point {} ({}/{}): its record disagrees with its tree: {what}; `cairn repair \
                 --rebuild-index` sets its root file aside",
                p.short_id(),
                p.vm,
                p.disk
            ));
        }
    }
    Ok(out)
}
