//! The root files and the catalogue never disagree for long, and never in the unsafe
//! direction: a protect killed at any step leaves a point that forget refuses whenever its root
//! file says protected, and the next writer makes the catalogue agree.

use std::ffi::OsStr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

use cairn_tests::{TestStore as Store, gen_disk, id, json, ok, run};

fn root_file(store: &Store, point: &str) -> PathBuf {
    let mut stack = vec![store.path().join("points")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("points").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(&format!("-{point}.json")) {
                return p;
            }
        }
    }
    panic!("no root file for {point}");
}

fn protected_on_disk(path: &Path) -> bool {
    json(&std::fs::read_to_string(path).expect("root file"))["protected"] == true
}

#[test]
fn a_protect_killed_at_any_step_never_lets_forget_drop_a_protected_point() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let a = work.path().join("a.raw");
    gen_disk(&a, "2M", 1, 1, 0);
    let p = id(&store.backup("v", "2026-11-20T02:00:00Z", "xvda", &a, &[]));
    let file = root_file(&store, &p);
    let args: Vec<&OsStr> = ["protect", p.as_str()]
        .into_iter()
        .map(OsStr::new)
        .collect();
    let mut disagreed = 0;
    let mut n = 0;
    for syscalls in ["rename", "fsync", "unlink"] {
        for when in 1.. {
            assert!(when < 60, "{syscalls}: protect never finished");
            let status = store.killed_at(syscalls, when, &args);
            let done = status.success();
            assert!(done || status.signal() == Some(9), "{status}");
            let on_disk = protected_on_disk(&file);
            let listed = store.list().iter().find(|q| id(q) == p).expect("p")["protected"] == true;
            if on_disk != listed {
                disagreed += 1;
            }
            // forget refuses whenever the root file says protected, whatever the catalogue says.
            if on_disk {
                let out = run(&mut store.cmd(&["forget", &p]));
                assert!(
                    !out.status.success(),
                    "{syscalls} #{when}: a protected point was forgotten"
                );
            }
            // The next writer makes the catalogue say what the root file says.
            n += 1;
            store.backup(
                "other",
                &format!("2026-10-{:02}T02:00:00Z", 1 + n % 28),
                "xvda",
                &a,
                &[],
            );
            let listed = store.list().iter().find(|q| id(q) == p).expect("p")["protected"] == true;
            assert_eq!(
                listed, on_disk,
                "{syscalls} #{when}: the catalogue disagrees after a writer"
            );
            ok(&mut store.cmd(&["unprotect", &p]));
            if done {
                break;
            }
        }
    }
    // Kills landed between the root file and the catalogue.
    assert!(disagreed > 0, "no kill left the two apart");
}

#[test]
fn leftovers_are_cleaned_logs_are_bounded_and_odd_paths_are_handled() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let a = work.path().join("a.raw");
    gen_disk(&a, "2M", 1, 1, 0);
    let p = id(&store.backup("v", "2026-11-20T02:00:00Z", "xvda", &a, &[]));
    // The temporary file of a root file whose write was killed before its rename.
    let tmp = root_file(&store, &p).with_extension("tmp");
    std::fs::write(&tmp, b"{\"half").expect("write");
    // ... and of the store's other files: of killed processes (an old-style name, a dead pid)
    // they go; one a live process is writing stays.
    let dead = [
        store.path().join("retention.tmp"),
        store.path().join(".last-verify.json.4194303.tmp"),
        store
            .path()
            .join("standby")
            .join(".journal.json.4194303.tmp"),
        store.path().join("quarantine").join("x.tmp"),
    ];
    for d in &dead {
        std::fs::create_dir_all(d.parent().expect("parent")).expect("mkdir");
        std::fs::write(d, b"half").expect("write");
    }
    let live = store
        .path()
        .join(format!(".retention.json.{}.tmp", std::process::id()));
    std::fs::write(&live, b"being written").expect("write");
    // Many writer opens: RocksDB's info logs stay bounded.
    for i in 0..30 {
        ok(&mut store.cmd(&[if i % 2 == 0 { "protect" } else { "unprotect" }, &p]));
    }
    assert!(!tmp.exists(), "a root file's temporary file was left");
    for d in &dead {
        assert!(!d.exists(), "{} was left", d.display());
    }
    assert!(live.exists(), "a live process's temporary file was removed");
    let logs = std::fs::read_dir(store.path().join("index"))
        .expect("index")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("LOG"))
        .count();
    assert!(logs <= 5, "{logs} info logs after 30 opens");

    // A store path that is not UTF-8: refused, and nothing is created.
    use std::os::unix::ffi::OsStrExt;
    let odd = work.path().join(std::ffi::OsStr::from_bytes(b"store-\xff"));
    let out = run(cairn_tests::cairn(["init"]).arg(&odd));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("UTF-8"));
    assert!(!odd.exists(), "a half-made store was left");

    // A named pipe as a source is read as a stream, like stdin.
    let fifo = work.path().join("disk.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let writer = {
        let (fifo, a) = (fifo.clone(), a.clone());
        std::thread::spawn(move || {
            let bytes = std::fs::read(&a).expect("read");
            std::fs::write(&fifo, bytes).expect("write to the pipe");
        })
    };
    let q = store.backup("piped", "2026-11-20T02:00:00Z", "xvda", &fifo, &[]);
    writer.join().expect("writer");
    let out = work.path().join("out.raw");
    store.restore(&id(&q), &out, "raw");
    cairn_tests::assert_same_content(&out, &a, true);
}

/// `cairn ARGS` on `store` with the `when`-th call of `syscall` failing with ENOSPC.
fn failing_at(store: &Store, syscall: &str, when: u32, args: &[&str]) -> std::process::Output {
    std::process::Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "-e"])
        .arg(format!("trace={syscall}"))
        .arg("-e")
        .arg(format!("inject={syscall}:error=ENOSPC:when={when}"))
        .arg(cairn_tests::cairn_bin())
        .args(args)
        .env("CAIRN_STORE", store.path())
        .output()
        .expect("run strace (installed by scripts/setup.sh)")
}

#[test]
fn a_full_disk_at_any_sync_says_what_was_stored_and_a_retry_never_stores_twice() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let a = work.path().join("a.raw");
    gen_disk(&a, "2M", 1, 1, 0);
    let src = format!("xvda={}", a.display());
    let args = [
        "backup",
        "--vm",
        "v",
        "--time",
        "2026-11-20T02:00:00Z",
        src.as_str(),
    ];
    let mut outcomes = [0u32; 2];
    for syscall in ["fsync", "fdatasync"] {
        for when in 1.. {
            assert!(when < 80, "{syscall}: the backup never finished");
            let out = failing_at(&store, syscall, when, &args);
            let at = format!("ENOSPC at {syscall} #{when}");
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            if out.status.success() {
                assert_eq!(store.list().len(), 1, "{at}");
            } else {
                let stored = err.contains("are stored");
                assert!(
                    stored || err.contains("nothing was stored"),
                    "{at}: the message does not say what was stored: {err}"
                );
                // The next writer (here one that changes nothing) makes the store what the
                // message said.
                ok(&mut store.cmd(&["policy", "set", "--vm", "x", "--key-interval", "0"]));
                assert_eq!(store.list().len(), usize::from(stored), "{at}: {err}");
                outcomes[usize::from(stored)] += 1;
                // The operator retries: one point, never two.
                let again = ok(&mut store.cmd(&args));
                assert_eq!(
                    store.list().len(),
                    1,
                    "{at}: the retry stored a second point"
                );
                if stored {
                    assert!(again.contains("not stored twice"), "{again}");
                }
            }
            for p in store.list() {
                ok(&mut store.cmd(&["forget", &id(&p)]));
            }
            if out.status.success() {
                break;
            }
        }
    }
    assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
}

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
    let gone = root_file(&store, &ids[1]);
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
    let bad = root_file(&store, &ids[0]);
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

#[test]
fn a_forget_killed_at_any_step_leaves_a_point_listed_or_forgotten_never_both() {
    let work = tempfile::tempdir().expect("tempdir");
    let a = work.path().join("a.raw");
    gen_disk(&a, "2M", 1, 1, 0);
    let mut undone = 0;
    for syscalls in ["unlink", "fsync", "rename", "write"] {
        for when in 1.. {
            assert!(when < 80, "{syscalls}: forget never finished");
            let store = Store::new("64K");
            let p = id(&store.backup("v", "2026-11-20T02:00:00Z", "xvda", &a, &[]));
            let args: Vec<&OsStr> = ["forget", p.as_str()].into_iter().map(OsStr::new).collect();
            let status = store.killed_at(syscalls, when, &args);
            let done = status.success();
            assert!(done || status.signal() == Some(9), "{status}");
            // The next writer settles what the kill left.
            store.backup("other", "2026-11-21T02:00:00Z", "xvda", &a, &[]);
            let listed = store.list().iter().any(|q| id(q) == p);
            let forgotten = std::fs::read_to_string(store.path().join("forgotten"))
                .unwrap_or_default()
                .lines()
                .any(|l| l == p);
            assert!(
                !(listed && forgotten),
                "{syscalls} #{when}: the point is listed and noted as forgotten (a replica \
                 would never receive it)"
            );
            assert!(done || listed || forgotten || syscalls != "unlink");
            if listed && !done {
                undone += 1;
            }
            if done {
                assert!(!listed && forgotten, "{syscalls}: a finished forget");
                break;
            }
        }
    }
    assert!(undone > 0, "no kill left a forget half done");
}
