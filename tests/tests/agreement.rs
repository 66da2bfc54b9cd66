//! Root files, index and packs that disagree are reported and settled: a lost pack is never
//! named by a new point, a lost or half-built index never passes for an empty store, a rebuild
//! beside a lost pack leaves a writable store, report and verify name what they cannot read,
//! and verify beside a commit in flight finds no disagreement.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use cairn_tests::{TestStore as Store, gen_disk, id, json, ok, run};

#[test]
fn a_lost_pack_is_never_referenced_by_a_new_point_and_a_key_backup_replaces_it() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let (a, b) = (w.join("a.raw"), w.join("b.raw"));
    gen_disk(&a, "4M", 1, 1, 0);
    // The next day rewrites the first 2 MiB block whole: the delta holds whole blocks, and
    // every other chunk is carried from the point before, unread.
    let mut bytes = std::fs::read(&a).expect("read");
    for (i, x) in bytes[..2 << 20].iter_mut().enumerate() {
        *x = (i % 251) as u8 ^ 0x5a;
    }
    std::fs::write(&b, &bytes).expect("write");
    let (av, bv) = cairn_tests::vhd_and_delta(&a, &b, w);
    store.backup("v", "2026-11-20T02:00:00Z", "xvda", &av, &[]);
    let packs = store.pack_files();
    assert_eq!(packs.len(), 1);
    std::fs::remove_file(&packs[0]).expect("lose the pack");
    // A delta applied to the point whose chunks are gone: refused, nothing stored.
    let out = run(&mut store.cmd(&[
        "backup",
        "--vm",
        "v",
        "--time",
        "2026-11-21T02:00:00Z",
        &format!("xvda={}", bv.display()),
    ]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a point naming a lost pack was committed"
    );
    assert!(
        err.contains("pack file is gone") && err.contains("--key"),
        "{err}"
    );
    assert_eq!(store.list().len(), 1);
    // A key backup reads the whole disk (through the parent VHD) and stores it afresh.
    let p = store.backup("v", "2026-11-21T02:00:00Z", "xvda", &bv, &["--key"]);
    let restored = w.join("out.raw");
    store.restore(&id(&p), &restored, "raw");
    cairn_tests::assert_same_content(&restored, &b, true);
}

fn three_points(store: &Store, work: &Path) -> (Vec<String>, PathBuf) {
    let a = work.join("a.raw");
    gen_disk(&a, "2M", 1, 1, 0);
    let ids = (0..3)
        .map(|d| id(&store.backup("v", &format!("2026-11-2{d}T02:00:00Z"), "xvda", &a, &[])))
        .collect();
    (ids, a)
}

fn err_of(out: &std::process::Output) -> String {
    cairn_tests::error_text(out)
}

#[test]
fn a_lost_or_half_built_index_never_passes_for_an_empty_store() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let (ids, a) = three_points(&store, work.path());
    // The index folder deleted: no command starts an empty one; repair rebuilds it.
    let index = store.path().join("index");
    std::fs::rename(&index, work.path().join("index.gone")).expect("move the index away");
    let src = format!("xvda={}", a.display());
    for args in [&["backup", "--vm", "v", &src][..], &["list"], &["verify"]] {
        let out = run(&mut store.cmd(args));
        assert!(!out.status.success(), "{args:?} ran on a missing index");
        assert!(err_of(&out).contains("--rebuild-index"), "{}", err_of(&out));
    }
    assert!(!index.exists(), "a command created an empty index");
    ok(&mut store.cmd(&["repair", "--rebuild-index"]));
    assert_eq!(store.list().len(), 3);

    // A rebuild killed half way: every command refuses the incomplete index until a rebuild
    // finishes.
    let args: Vec<&OsStr> = ["repair", "--rebuild-index"]
        .into_iter()
        .map(OsStr::new)
        .collect();
    let mut refused = 0;
    for when in 1.. {
        assert!(when < 200, "the rebuild never finished");
        let status = store.killed_at("fsync,fdatasync", when, &args);
        if status.success() {
            break;
        }
        let list = run(&mut store.cmd(&["list", "--json"]));
        if list.status.success() {
            // Not yet started (or finished): the index is whole.
            assert_eq!(
                json(&String::from_utf8_lossy(&list.stdout))
                    .as_array()
                    .map(Vec::len),
                Some(3),
                "kill #{when}"
            );
        } else {
            refused += 1;
            assert!(
                err_of(&list).contains("rebuild did not finish"),
                "{}",
                err_of(&list)
            );
            let b = run(&mut store.cmd(&["backup", "--vm", "v", &src]));
            assert!(!b.status.success(), "a backup ran on a half-built index");
        }
        ok(&mut store.cmd(&["repair", "--rebuild-index"]));
        assert_eq!(store.list().len(), 3, "kill #{when}");
    }
    assert!(refused > 0, "no kill landed inside the rebuild");
    let _ = ids;
}

#[test]
fn root_files_and_index_that_disagree_are_reported_and_settled() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let (ids, a) = three_points(&store, work.path());
    // A root file deleted by hand: readers say so, verify fails, a writer writes it again.
    let gone = store.root_file(&ids[1]);
    let kept = std::fs::read(&gone).expect("read");
    std::fs::remove_file(&gone).expect("remove");
    let list = run(&mut store.cmd(&["list"]));
    assert!(
        err_of(&list).contains("root file is gone"),
        "{}",
        err_of(&list)
    );
    let v = run(&mut store.cmd(&["verify"]));
    assert_eq!(v.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&v.stdout).contains("root file is gone"));
    let w = run(&mut store.cmd(&["policy", "set", "--vm", "v", "--key-interval", "0"]));
    assert!(err_of(&w).contains("written again"), "{}", err_of(&w));
    assert_eq!(std::fs::read(&gone).expect("written again"), kept);
    ok(&mut store.cmd(&["verify"]));

    // The index loses its last commits (its write-ahead log cut short): the root files say
    // otherwise; readers warn, verify fails, the next writer publishes them.
    let logs: Vec<PathBuf> = std::fs::read_dir(store.path().join("index"))
        .expect("index")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    let before = store.list().len();
    let p4 = store.backup("v", "2026-11-19T02:00:00Z", "xvda", &a, &[]);
    let logs_now: Vec<PathBuf> = std::fs::read_dir(store.path().join("index"))
        .expect("index")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log") && !logs.contains(p))
        .collect();
    for l in &logs_now {
        let len = std::fs::metadata(l).expect("log").len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(l)
            .expect("open");
        f.set_len(len / 2).expect("cut the log");
    }
    let list = run(&mut store.cmd(&["list", "--json"]));
    let shown = json(&String::from_utf8_lossy(&list.stdout))
        .as_array()
        .map_or(0, Vec::len);
    if shown == before {
        // The commit was lost from the index: said loudly, and verify fails.
        assert!(
            err_of(&list).contains("not in the index"),
            "{}",
            err_of(&list)
        );
        let v = run(&mut store.cmd(&["verify"]));
        assert_eq!(
            v.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&v.stdout)
        );
    }
    ok(&mut store.cmd(&["policy", "set", "--vm", "v", "--key-interval", "0"]));
    assert!(
        store.list().iter().any(|q| id(q) == id(&p4)),
        "the lost commit was not published"
    );
    ok(&mut store.cmd(&["verify"]));

    // A root file damaged: verify names it; a rebuild leaves its point out and says so.
    let bad = store.root_file(&ids[0]);
    std::fs::write(&bad, b"{ not json").expect("damage");
    let v = run(&mut store.cmd(&["verify"]));
    assert_eq!(v.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&v.stdout).contains("unreadable root file"));
    let r = json(&ok(&mut store.cmd(&[
        "repair",
        "--rebuild-index",
        "--json",
    ])));
    assert_eq!(r["points_left_out"], 1, "{r}");
}

#[test]
fn a_rebuild_beside_a_lost_pack_leaves_a_writable_store_that_a_key_backup_heals() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let (a, b) = (work.path().join("a.raw"), work.path().join("b.raw"));
    gen_disk(&a, "2M", 1, 1, 0);
    gen_disk(&b, "2M", 9, 2, 0);
    store.backup("v", "2026-11-20T02:00:00Z", "xvda", &a, &[]);
    let first = store.pack_files();
    let p2 = store.backup("v", "2026-11-21T02:00:00Z", "xvda", &b, &[]);
    let lost: Vec<PathBuf> = store
        .pack_files()
        .into_iter()
        .filter(|p| !first.contains(p))
        .collect();
    assert_eq!(lost.len(), 1);
    std::fs::remove_file(&lost[0]).expect("lose the pack of the second point");
    // The rebuild keeps every point and leaves a store every writer can open.
    ok(&mut store.cmd(&["repair", "--rebuild-index"]));
    assert_eq!(store.list().len(), 2);
    ok(&mut store.cmd(&["policy", "set", "--vm", "v", "--key-interval", "0"]));
    // Verify names the damaged point; the key backup it recommends works, and heals it.
    let v = run(&mut store.cmd(&["verify"]));
    assert_eq!(v.status.code(), Some(1));
    let said = String::from_utf8_lossy(&v.stdout);
    assert!(said.contains(&id(&p2)[..12]), "{said}");
    store.backup("v", "2026-11-22T02:00:00Z", "xvda", &b, &["--key"]);
    let out = work.path().join("p2.raw");
    store.restore(&id(&p2), &out, "raw");
    cairn_tests::assert_same_content(&out, &b, true);
    ok(&mut store.cmd(&["verify"]));
    // Counted afresh once the lost segment was written again: gc frees nothing it must keep.
    ok(&mut store.cmd(&["gc", "--repack-below", "100"]));
    store.restore(&id(&p2), &out, "raw");
    cairn_tests::assert_same_content(&out, &b, true);
}

#[test]
fn report_counts_what_it_can_and_names_the_points_it_cannot_read() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let (a, b) = (work.path().join("a.raw"), work.path().join("b.raw"));
    gen_disk(&a, "2M", 1, 1, 0);
    gen_disk(&b, "2M", 9, 2, 0);
    let p1 = store.backup("v", "2026-11-20T02:00:00Z", "xvda", &a, &[]);
    let first = store.pack_files();
    let p2 = store.backup("w", "2026-11-21T02:00:00Z", "xvda", &b, &[]);
    for p in store.pack_files() {
        if !first.contains(&p) {
            std::fs::remove_file(p).expect("lose the second pack");
        }
    }
    let out = run(&mut store.cmd(&["report", "--json"]));
    assert_eq!(out.status.code(), Some(3), "{}", err_of(&out));
    let r = json(&String::from_utf8_lossy(&out.stdout));
    let damaged = r["damaged_points"].as_array().expect("damaged_points");
    assert_eq!(damaged.len(), 1, "{r}");
    assert_eq!(damaged[0]["id"], p2["id"]);
    let healthy = r["points"]
        .as_array()
        .expect("points")
        .iter()
        .find(|q| q["id"] == p1["id"])
        .expect("the healthy point is reported");
    assert!(num_of(healthy, "stored_bytes") > 0, "{healthy}");
    let text = run(&mut store.cmd(&["report"]));
    assert!(
        String::from_utf8_lossy(&text.stdout)
            .contains(&format!("damaged: point {}", &id(&p2)[..12]))
    );
}

fn num_of(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing from {v}"))
}

#[test]
fn verify_reports_the_data_under_an_unreadable_tree_segment() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let a = work.path().join("a.raw");
    gen_disk(&a, "2M", 3, 1, 0);
    let p = store.backup("v", "2026-11-20T02:00:00Z", "xvda", &a, &[]);
    // The tree segment is the last frame of the backup's pack: damage its last byte.
    let pack = store.pack_files().pop().expect("a pack");
    let mut bytes = std::fs::read(&pack).expect("read");
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(&pack, &bytes).expect("write");
    let out = run(&mut store.cmd(&["verify", "--json"]));
    assert_eq!(out.status.code(), Some(1));
    let v = json(&String::from_utf8_lossy(&out.stdout));
    let damaged = v["damaged"].as_array().expect("damaged");
    assert!(damaged.iter().any(|d| d["kind"] == "tree"), "{v}");
    assert!(
        damaged
            .iter()
            .flat_map(|d| d["points"].as_array().into_iter().flatten())
            .any(|h| h["point"] == p["id"]),
        "{v}"
    );
    assert!(num_of(&v, "unknown_but_referenced") > 0, "{v}");
}

/// The 1-based count, among `rename`-family calls of `cairn ARGS` on `store`, of the one that
/// puts a root file in place.
fn root_file_rename(store: &Store, args: &[&str]) -> u32 {
    let log = tempfile::NamedTempFile::new().expect("log");
    let status = std::process::Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=rename,renameat,renameat2", "-o"])
        .arg(log.path())
        .arg(cairn_tests::cairn_bin())
        .args(args)
        .env("CAIRN_STORE", store.path())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("strace");
    assert!(status.success());
    let text = std::fs::read_to_string(log.path()).expect("log");
    let calls: Vec<&str> = text.lines().filter(|l| l.contains("rename")).collect();
    let at = calls
        .iter()
        .position(|l| l.contains("/points/") && l.contains(".json\""))
        .unwrap_or_else(|| panic!("no root file rename in {text}"));
    at as u32 + 1
}

#[test]
fn verify_beside_a_commit_in_flight_finds_no_disagreement() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let a = work.path().join("a.raw");
    gen_disk(&a, "2M", 1, 1, 0);
    let src = format!("xvda={}", a.display());
    let backup = |time: &str| -> Vec<String> {
        ["backup", "--vm", "v", "--time", time, src.as_str()]
            .into_iter()
            .map(str::to_owned)
            .collect()
    };
    let first = backup("2026-11-20T02:00:00Z");
    let when = root_file_rename(
        &store,
        &first.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    // The next backup's root file is renamed in, then 3 s pass before its catalogue batch.
    let mut slowed = std::process::Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "-e"])
        .arg("trace=rename,renameat,renameat2")
        .arg("-e")
        .arg(format!(
            "inject=rename,renameat,renameat2:delay_exit=3000000:when={when}"
        ))
        .arg(cairn_tests::cairn_bin())
        .args(backup("2026-11-21T02:00:00Z"))
        .env("CAIRN_STORE", store.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("strace");
    let points = store.path().join("points");
    let count = || {
        cairn_tests::files_under(&points)
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .count()
    };
    let started = std::time::Instant::now();
    while count() < 2 {
        assert!(
            started.elapsed().as_secs() < 60,
            "the second root file never came"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = run(&mut store.cmd(&["verify", "--json"]));
    let still_running = slowed.try_wait().expect("wait").is_none();
    assert!(
        out.status.success(),
        "verify beside a commit in flight: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(slowed.wait().expect("wait").success());
    assert!(still_running || store.list().len() == 2);
    assert_eq!(store.list().len(), 2);
}
