//! The golden store: a small store written by cairn as the store format stood when it was made
//! (`tests/golden/v1`, made by `tests/golden/make.sh` with the cairn of that day and checked in
//! with the sources it holds). Every later cairn must read it as it is (list, restore bit-exact,
//! verify clean) and rebuild its index from its packs and root files; a format change that
//! strands existing backups fails here.

use std::path::{Path, PathBuf};

use cairn_tests::{assert_same_content, cairn, json, ok, repo_root, run};

fn golden() -> PathBuf {
    repo_root().join("tests/golden/v1")
}

/// A copy of the golden store to work on (opening it for writing changes its index files).
fn copy_store(to: &Path) -> PathBuf {
    let dst = to.join("store");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(golden().join("store"))
        .arg(&dst)
        .status()
        .expect("cp");
    assert!(status.success());
    dst
}

/// Each point of the golden store and the source it must restore to.
fn points() -> Vec<(String, PathBuf)> {
    let text = std::fs::read_to_string(golden().join("points.txt")).expect("points.txt");
    text.lines()
        .map(|l| {
            let (id, src) = l.split_once(' ').expect("id source");
            (id.to_owned(), golden().join("sources").join(src))
        })
        .collect()
}

fn check_reads(store: &Path, work: &Path) {
    let env = |c: &mut std::process::Command| {
        c.env("CAIRN_STORE", store);
    };
    let mut list = cairn(["list", "--json"]);
    env(&mut list);
    let listed = json(&ok(&mut list));
    let listed = listed.as_array().expect("list");
    let want = points();
    assert_eq!(listed.len(), want.len(), "{listed:?}");
    for (id, src) in &want {
        let p = listed
            .iter()
            .find(|p| p["id"] == id.as_str())
            .unwrap_or_else(|| panic!("point {id} not listed"));
        assert_eq!(p["protected"], id == &want[0].0, "{p}");
        let out = work.join(format!("{id}.raw"));
        let mut restore = cairn(["restore", id]);
        env(&mut restore);
        ok(restore.arg(&out));
        assert_same_content(&out, src, true);
        std::fs::remove_file(&out).expect("remove");
    }
    let mut verify = cairn(["verify"]);
    env(&mut verify);
    let v = run(&mut verify);
    assert!(
        v.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
}

#[test]
fn the_golden_store_reads_restores_and_verifies() {
    let work = tempfile::tempdir().expect("tempdir");
    let store = copy_store(work.path());
    check_reads(&store, work.path());
}

#[test]
fn the_golden_store_index_rebuilds_from_its_packs_and_root_files() {
    let work = tempfile::tempdir().expect("tempdir");
    let store = copy_store(work.path());
    let mut c = cairn(["repair", "--rebuild-index"]);
    ok(c.env("CAIRN_STORE", &store));
    check_reads(&store, work.path());
}
