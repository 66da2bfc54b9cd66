//! Writers under kills and beside each other: kill -9 at every sync and rename of a backup
//! loses nothing, a second writer is told, readers work beside a writer.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use cairn_tests::{
    TestStore as Store, assert_same_content, gen_disk, id, json, num, ok, run, series,
};

const SIZE: &str = "64M";

/// Kills a backup at each of its durability points in turn (every `fsync`, `fdatasync` and
/// `rename`) and once in the middle of its pack writes, through `strace --inject`, until a run
/// reaches its end unharmed. Each killed run must have been killed (signal 9, so the kill
/// landed), and leave the earlier point bit-exact; a run killed after its root file was renamed
/// into place is a committed point, which the next writer publishes with its reference counts
/// (checked by forgetting it and collecting its space).
#[test]
fn kill_9_at_every_sync_and_rename_of_a_backup_loses_nothing() {
    use std::os::unix::process::ExitStatusExt;
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let raws = series(work.path(), SIZE, 3, 9, 2);
    let p0 = store.backup("db01", "2026-11-01T02:00:00Z", "xvda", &raws[0], &[]);
    let other = work.path().join("other.raw");
    gen_disk(&other, SIZE, 4, 10, 0);
    let source = format!("xvda={}", other.display());
    let words = [
        "backup",
        "--vm",
        "db02",
        "--time",
        "2026-11-02T02:00:00Z",
        &source,
    ];
    let args: Vec<&OsStr> = words.iter().map(OsStr::new).collect();
    let check_p0 = |when: &str| {
        let out = work.path().join("p0.raw");
        store.restore(&id(&p0), &out, "raw");
        assert_same_content(&out, &raws[0], true);
        let _ = std::fs::remove_file(&out);
        eprintln!("p0 intact after a kill {when}");
    };

    // In the middle of the pack writes: a kill there leaves an unindexed pack, and no point.
    // (The first few dozen writes are the index's as it opens; the first N that lands in a
    // pack is found by stepping N, each run checked.)
    let mut mid_write = None;
    for when in (20..400).step_by(8) {
        let status = store.killed_at("write,pwrite64", when, &args);
        if status.success() {
            break;
        }
        assert_eq!(status.signal(), Some(9), "write #{when}: {status}");
        assert_eq!(store.list().len(), 1, "a killed backup published a point");
        check_p0(&format!("at write #{when}"));
        let dry = json(&ok(&mut store.cmd(&["gc", "--dry-run", "--json"])));
        if num(&dry, "orphan_packs") >= 1 {
            mid_write = Some(when);
            break;
        }
    }
    assert!(mid_write.is_some(), "no kill landed among the pack writes");

    // strace counts each system call on its own: each is stepped through on its own.
    for syscalls in ["fsync", "fdatasync", "rename"] {
        let mut when = 1;
        loop {
            let status = store.killed_at(syscalls, when, &args);
            if status.success() {
                assert!(when > 1, "{syscalls}: no call was reached");
                break;
            }
            assert_eq!(status.signal(), Some(9), "{syscalls} #{when}: {status}");
            check_p0(&format!("at {syscalls} #{when}"));
            let root_files = walk_files(&store.path().join("points"), "json");
            if root_files.len() == 2 {
                // Committed: the root file is there. If the catalogue missed it, the next
                // writer publishes it, whole and counted.
                publish_and_drop(&store, &raws[1], &other, work.path());
            } else {
                assert_eq!(root_files.len(), 1, "at {syscalls} #{when}");
                assert_eq!(store.list().len(), 1, "a killed backup published a point");
            }
            check_p0(&format!("after {syscalls} #{when}"));
            when += 1;
            assert!(when < 64, "{syscalls}: the backup never finished");
        }
        // Start the next series from one point again.
        for q in store.list() {
            if q["vm"] != "db01" {
                ok(&mut store.cmd(&["forget", &id(&q)]));
            }
        }
    }
    // Exactly between the root file and the catalogue: the fsync of the root file's folder
    // after the rename. Readers do not see the point; the next writer publishes it.
    let folder = store.path().join("points/db02/xvda");
    std::fs::create_dir_all(&folder).expect("mkdir");
    let status = store.killed_at_path("fsync", 1, Some(&folder), &args);
    assert_eq!(
        status.signal(),
        Some(9),
        "not killed at the folder's fsync: {status}"
    );
    assert_eq!(
        walk_files(&folder, "json").len(),
        1,
        "the root file is not there"
    );
    assert_eq!(store.list().len(), 1, "a reader published the root file");
    publish_and_drop(&store, &raws[1], &other, work.path());
    check_p0("after the published point was forgotten");
    // The next backup takes over the lock and works.
    let p1 = store.backup("db01", "2026-11-03T02:00:00Z", "xvda", &raws[1], &[]);
    let out = work.path().join("p1.raw");
    store.restore(&id(&p1), &out, "raw");
    assert_same_content(&out, &raws[1], true);
}

/// After a backup of `src` as db02 was killed once its root file was in place: the next
/// writer (a backup of `next` as db03) publishes it; it restores bit-exact; forgetting both
/// and collecting frees their chunks (their counts were taken) and verify stays clean.
fn publish_and_drop(store: &Store, next: &Path, src: &Path, work: &Path) {
    let p = store.backup("db03", "2026-11-03T02:00:00Z", "xvda", next, &[]);
    let list = store.list();
    assert_eq!(
        list.len(),
        3,
        "the next writer did not publish the root file"
    );
    let orphan = list.iter().find(|q| q["vm"] == "db02").expect("published");
    let out = work.join("orphan.raw");
    store.restore(&id(orphan), &out, "raw");
    assert_same_content(&out, src, true);
    ok(&mut store.cmd(&["forget", &id(orphan), &id(&p)]));
    let g = json(&ok(&mut store.cmd(&[
        "gc",
        "--json",
        "--repack-below",
        "100",
    ])));
    assert!(num(&g, "bytes_freed") > 0, "{g}");
    let v = run(&mut store.cmd(&["verify"]));
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

/// Files with extension `ext` under `dir`, recursively.
fn walk_files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    cairn_tests::files_under(dir)
        .into_iter()
        .filter(|p| p.extension() == Some(OsStr::new(ext)))
        .collect()
}

#[test]
fn a_second_writer_is_told_and_readers_work_beside_a_writer() {
    let store = Store::new("256K");
    let work = tempfile::tempdir().expect("tempdir");
    let raws = series(work.path(), SIZE, 7, 7, 1);
    store.backup("web", "2026-11-01T02:00:00Z", "xvda", &raws[0], &[]);
    // A writer that holds the lock while it waits for stdin (a 1 MiB disk: --size says so,
    // since the disk's previous point is larger).
    let mut holder = store
        .cmd(&[
            "backup",
            "--vm",
            "web",
            "--time",
            "2026-11-02T02:00:00Z",
            "--size",
            "1M",
            "xvda=-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut pipe = holder.stdin.take().expect("stdin");
    pipe.write_all(&vec![7u8; 1 << 20]).expect("pipe");
    cairn_tests::wait_until("the first backup to hold the write lock", || {
        cairn_store::lock::writer_active(&store.path())
    });
    let second = run(store
        .cmd(&["backup", "--vm", "web2", "--time", "2026-11-02T02:00:00Z"])
        .arg(format!("xvda={}", raws[0].display())));
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("locked by another writer") && err.contains("pid"),
        "{err}"
    );
    assert_eq!(store.list().len(), 1, "list works beside a writer");
    let out = work.path().join("r.raw");
    store.restore("web/xvda@latest", &out, "raw");
    assert_same_content(&out, &raws[0], true);
    // A writer with --wait says whom it waits for, and when the holder finished normally it
    // does not call it a writer that did not finish.
    let mut waiter = store
        .cmd(&[
            "backup",
            "--wait",
            "--vm",
            "web3",
            "--time",
            "2026-11-02T02:00:00Z",
        ])
        .arg(format!("xvda={}", raws[0].display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Its standard error, read as it comes: the holder is let go once the waiter says it waits.
    let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        use std::io::Read;
        let mut stderr = waiter.stderr.take().expect("stderr");
        let said = std::sync::Arc::clone(&said);
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while let Ok(n @ 1..) = stderr.read(&mut buf) {
                if let Ok(mut s) = said.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        })
    };
    cairn_tests::wait_until("the second backup to say it waits", || {
        said.lock()
            .is_ok_and(|s| s.contains("waiting for the write lock"))
    });
    drop(pipe);
    assert!(holder.wait().expect("wait").success());
    let status = waiter.wait().expect("wait");
    reader.join().expect("stderr reader");
    let err = said.lock().map(|s| s.clone()).unwrap_or_default();
    assert!(status.success(), "{err}");
    assert!(
        err.contains("waiting for the write lock, held by pid"),
        "{err}"
    );
    assert!(!err.contains("did not finish"), "{err}");
    assert_eq!(store.list().len(), 3);
}
