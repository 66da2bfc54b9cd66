//! Run journals: the points of one backup run (the disks of a VM) are published together or
//! not at all.
//!
//! Before the first root file of a run of several points is written, `points/.run-<id>.pending`
//! lists them (written atomically and synced); once the last root file is in place the journal
//! is removed and its folder synced: that removal is the run's commit. A writer opening the
//! store, and [`Store::rebuild_index`](crate::Store::rebuild_index), first finds the journals of
//! runs that died before their commit and removes the root files they list (those points were
//! never in the catalogue, so no reader ever saw them; their chunks are on the garbage list
//! already), then the journal. Names never start with `.` in `points/` (see
//! [`path_component`](crate::point::path_component)), so a journal cannot be mistaken for a VM's
//! folder.
//!
//! A journal that cannot be read (damaged by hand) is removed and its run's root files kept:
//! each point is complete on its own, so publishing part of a run loses nothing.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::files::write_atomic;
use crate::pack::sync_dir;

const PREFIX: &str = ".run-";
const SUFFIX: &str = ".pending";

#[derive(Debug, Serialize, Deserialize)]
struct Contents {
    run: String,
    /// Root files relative to the store.
    root_files: Vec<String>,
}

/// A run being committed.
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
}

/// Writes the journal of a run that is about to write `files` (root files relative to `root`).
pub(crate) fn begin<'a>(
    root: &Path,
    run: Option<&str>,
    files: impl Iterator<Item = &'a str>,
) -> Result<Journal> {
    let run = run.map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned);
    let contents = Contents {
        root_files: files.map(str::to_owned).collect(),
        run: run.clone(),
    };
    let path = root
        .join("points")
        .join(format!("{PREFIX}{}{SUFFIX}", hex_only(&run)));
    let bytes = serde_json::to_vec_pretty(&contents)
        .map_err(|e| Error::Point(format!("encoding a run journal: {e}")))?;
    write_atomic(&path, &bytes)?;
    Ok(Journal { path })
}

impl Journal {
    /// Whether the journal is still in place (the run is not committed).
    pub(crate) fn exists(&self) -> bool {
        self.path.exists()
    }
}

/// Commits the run: removes its journal and syncs the folder.
pub(crate) fn end(journal: &Journal) -> Result<()> {
    std::fs::remove_file(&journal.path).map_err(Error::io(&journal.path, "committing a run"))?;
    sync_dir(journal.path.parent().unwrap_or(Path::new(".")))
}

/// Removes the root files of runs that died before their commit, and their journals. Returns
/// how many root files were removed.
///
/// # Errors
/// I/O errors.
pub(crate) fn abandon_unfinished(root: &Path) -> Result<u64> {
    let points = root.join("points");
    let Ok(entries) = std::fs::read_dir(&points) else {
        return Ok(0);
    };
    let mut removed = 0;
    let mut touched = false;
    for e in entries {
        let path = e.map_err(Error::io(&points, "listing the folder"))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !name.starts_with(PREFIX) {
            continue;
        }
        if name.ends_with(SUFFIX) {
            let listed = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Contents>(&b).ok());
            for file in listed.map(|c| c.root_files).unwrap_or_default() {
                let Some(file) = inside_points(root, &file) else {
                    continue;
                };
                if std::fs::remove_file(&file).is_ok() {
                    removed += 1;
                    sync_dir(file.parent().unwrap_or(&points))?;
                }
            }
        }
        // The journal itself, or a temporary file of one that was never in place.
        std::fs::remove_file(&path).map_err(Error::io(&path, "removing a run journal"))?;
        touched = true;
    }
    if touched {
        sync_dir(&points)?;
    }
    Ok(removed)
}

/// A root file named in a journal, if it is one: `points/<vm>/<disk>/<name>.json`, nothing
/// else (a damaged journal must not name a file elsewhere).
fn inside_points(root: &Path, file: &str) -> Option<PathBuf> {
    let rel = Path::new(file);
    let parts: Vec<Component> = rel.components().collect();
    let plain = parts.iter().all(|c| matches!(c, Component::Normal(_)));
    let ok = plain
        && parts.len() == 4
        && parts.first() == Some(&Component::Normal("points".as_ref()))
        && rel.extension().is_some_and(|x| x == "json");
    ok.then(|| root.join(rel))
}

fn hex_only(run: &str) -> String {
    run.chars().filter(char::is_ascii_hexdigit).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_names_only_root_files() {
        let root = Path::new("/s");
        assert!(inside_points(root, "points/vm/xvda/1-a.json").is_some());
        for bad in [
            "points/../cairn.toml",
            "/etc/passwd",
            "points/vm/xvda/../../x.json",
            "packs/ab/x.json",
            "points/vm/x.json",
            "points/vm/xvda/1-a.pack",
        ] {
            assert!(inside_points(root, bad).is_none(), "{bad}");
        }
    }
}
