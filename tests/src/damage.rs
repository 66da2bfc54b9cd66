//! The store the damage tests damage: six daily points of one disk whose first pack all six
//! share, and what a damaged store still restores.

use std::path::PathBuf;

use crate::{TestStore as Store, gen_disk, id, run};

/// Days backed up.
pub const DAYS: u32 = 6;

/// The damaged store's original, and where its shared pack is.
pub struct Fixture {
    /// The store.
    pub store: Store,
    _work: tempfile::TempDir,
    /// The disks of the six days.
    pub disks: Vec<PathBuf>,
    /// Their points, oldest first.
    pub points: Vec<String>,
    /// The pack every point shares, relative to the store.
    pub shared: PathBuf,
}

/// Six daily points of one 4 MiB disk at 64 KiB chunks: the first pack holds what all share.
#[must_use]
pub fn fixture() -> Fixture {
    let work = tempfile::tempdir().expect("tempdir");
    let store = Store::new("64K");
    let mut disks = Vec::new();
    let mut points = Vec::new();
    for d in 0..DAYS {
        let disk = work.path().join(format!("day{d}.raw"));
        gen_disk(&disk, "4M", 1, 1, d);
        let time = format!("2026-11-{:02}T02:00:00Z", 10 + d);
        points.push(id(&store.backup("vm", &time, "xvda", &disk, &[])));
        disks.push(disk);
    }
    let biggest = store
        .pack_files()
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a pack");
    let shared = biggest
        .strip_prefix(store.path())
        .expect("in the store")
        .to_path_buf();
    Fixture {
        store,
        _work: work,
        disks,
        points,
        shared,
    }
}

/// Which of `points` restore bit-exact to the disk each was made from.
pub fn restorable(store: &Store, points: &[String], disks: &[PathBuf]) -> Vec<bool> {
    let dir = tempfile::tempdir().expect("tempdir");
    points
        .iter()
        .zip(disks)
        .enumerate()
        .map(|(k, (p, disk))| {
            let out = dir.path().join(format!("{k}.raw"));
            let done = run(store
                .cmd(&["restore", "--force", p, "--format", "raw"])
                .arg(&out));
            done.status.success()
                && std::fs::read(&out).ok() == Some(std::fs::read(disk).expect("disk"))
        })
        .collect()
}

/// The points verify names as damaged.
pub fn named(v: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = v["damaged"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|d| d["points"].as_array().cloned().unwrap_or_default())
        .filter_map(|h| h["point"].as_str().map(str::to_owned))
        .collect();
    out.sort();
    out.dedup();
    out
}
