//! The disks of one backup run are published together or not at all: `kill -9` at every
//! rename, unlink and fsync of a two-disk backup leaves either no point of the run or both,
//! whole, once the next writer has opened the store (and after an index rebuild).

use std::ffi::OsStr;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use cairn_tests::{TestStore as Store, assert_same_content, gen_disk, id, ok};

fn run_points(store: &Store) -> Vec<serde_json::Value> {
    store
        .list()
        .into_iter()
        .filter(|p| p["vm"] == "multi")
        .collect()
}

/// Checks the store after a killed run: no point of it, or both, restoring bit-exact.
fn check(store: &Store, disks: &[(&str, &Path)], work: &Path, at: &str) -> usize {
    let mine = run_points(store);
    match mine.len() {
        0 => {}
        2 => {
            assert_eq!(mine[0]["run"], mine[1]["run"], "{at}");
            for p in &mine {
                let (_, src) = disks
                    .iter()
                    .find(|(d, _)| p["disk"] == *d)
                    .expect("a disk of the run");
                let out = work.join("out.raw");
                store.restore(&id(p), &out, "raw");
                assert_same_content(&out, src, true);
            }
        }
        n => panic!("{at}: {n} points of a two-disk run were published"),
    }
    mine.len()
}

#[test]
fn a_run_killed_at_any_step_publishes_all_its_disks_or_none() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let a = w.join("a.raw");
    let b = w.join("b.raw");
    let other = w.join("other.raw");
    gen_disk(&a, "4M", 1, 3, 0);
    gen_disk(&b, "4M", 2, 3, 0);
    gen_disk(&other, "4M", 3, 3, 0);
    let disks = [("xvda", a.as_path()), ("xvdb", b.as_path())];
    let xvda = format!("xvda={}", a.display());
    let xvdb = format!("xvdb={}", b.display());
    let args: Vec<&OsStr> = ["backup", "--vm", "multi", &xvda, &xvdb]
        .into_iter()
        .map(OsStr::new)
        .collect();
    let mut seen = [0usize; 3];
    let mut other_runs = 0;
    for syscalls in ["rename", "unlink", "fsync"] {
        for when in 1.. {
            assert!(when < 80, "{syscalls}: the backup never finished");
            let status = store.killed_at(syscalls, when, &args);
            if status.success() {
                break;
            }
            assert_eq!(status.signal(), Some(9), "{syscalls} #{when}: {status}");
            let at = format!("killed at {syscalls} #{when}");
            // Readers (read-only, nothing repaired) never see one disk without the other.
            let before = run_points(&store).len();
            assert!(before == 0 || before == 2, "{at}: readers see {before}");
            // The next writer finishes or abandons the run; so does an index rebuild.
            other_runs += 1;
            let t = format!("2026-10-{:02}T02:00:00Z", 1 + other_runs % 28);
            store.backup("other", &t, "xvda", &other, &[]);
            let n = check(&store, &disks, w, &at);
            ok(&mut store.cmd(&["repair", "--rebuild-index"]));
            assert_eq!(check(&store, &disks, w, &at), n, "{at}: rebuild disagrees");
            seen[n] += 1;
            for p in run_points(&store) {
                ok(&mut store.cmd(&["forget", &id(&p)]));
            }
        }
        assert_eq!(check(&store, &disks, w, syscalls), 2);
        for p in run_points(&store) {
            ok(&mut store.cmd(&["forget", &id(&p)]));
        }
    }
    // Kills landed both before the commit (nothing published) and after it (both published).
    assert!(seen[0] > 0 && seen[2] > 0, "{seen:?}");
    let v = cairn_tests::run(&mut store.cmd(&["verify"]));
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    // Nothing of the abandoned runs is left behind: no journal, no stray root file.
    let points = store.path().join("points");
    for e in std::fs::read_dir(&points).expect("points").flatten() {
        let name = e.file_name();
        assert!(
            !name.to_string_lossy().starts_with(".run-"),
            "a journal was left: {name:?}"
        );
    }
}
