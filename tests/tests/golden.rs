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

/// The `format_version` line of a store's `cairn.toml`.
fn format_version(store: &Path) -> String {
    std::fs::read_to_string(store.join("cairn.toml"))
        .expect("cairn.toml")
        .lines()
        .find(|l| l.starts_with("format_version"))
        .expect("format_version")
        .to_owned()
}

#[test]
fn a_writer_upgrades_the_golden_store_and_its_new_points_live_beside_the_old() {
    let work = tempfile::tempdir().expect("tempdir");
    let store = copy_store(work.path());
    let env = |c: &mut std::process::Command| {
        c.env("CAIRN_STORE", &store);
    };
    // Readers leave the format alone.
    check_reads(&store, work.path());
    assert_eq!(format_version(&store), "format_version = 1");
    // A backup (a writer) upgrades it first: a cairn that reads only format 1 refuses the store
    // from then on instead of misreading the new points' trees.
    let (_, src) = points().pop().expect("a point");
    let mut backup = cairn(["backup", "--json", "--vm", "upgraded", "--time"]);
    env(&mut backup);
    let p = json(&ok(backup
        .arg("2026-11-20T02:00:00Z")
        .arg(format!("xvda={}", src.display()))));
    assert_eq!(format_version(&store), "format_version = 2");
    let mut show = cairn(["list", "--json", "--vm", "upgraded"]);
    env(&mut show);
    let listed = json(&ok(&mut show));
    assert_eq!(listed[0]["id"], p[0]["id"]);
    // Old points and the new one restore; verify is clean over both formats.
    check_reads_beside(&store, work.path(), p[0]["id"].as_str().expect("id"), &src);
    let mut verify = cairn(["verify"]);
    env(&mut verify);
    ok(&mut verify);

    // A store of a format this cairn does not know is refused, naming the versions it reads.
    let text = std::fs::read_to_string(store.join("cairn.toml")).expect("toml");
    std::fs::write(
        store.join("cairn.toml"),
        text.replace("format_version = 2", "format_version = 4"),
    )
    .expect("write");
    let mut list = cairn(["list"]);
    env(&mut list);
    let r = run(&mut list);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("store format version 4"),
        "{err}"
    );
}

/// Restores `id` from `store` and checks it is `src`.
fn check_reads_beside(store: &Path, work: &Path, id: &str, src: &Path) {
    let out = work.join("new.raw");
    let mut restore = cairn(["restore", id]);
    restore.env("CAIRN_STORE", store);
    ok(restore.arg(&out));
    assert_same_content(&out, src, true);
}
