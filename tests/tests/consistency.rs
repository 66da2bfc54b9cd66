//! The root files and the catalogue never disagree for long, and never in the unsafe
//! direction: a protect killed at any step leaves a point that forget refuses whenever its root
//! file says protected; a forget killed at any step leaves a point listed or forgotten, never
//! both; leftovers are cleaned; a full disk at any sync says what was stored. What verify and a
//! rebuild make of lost packs and disagreeing files is `agreement.rs`.

use std::ffi::OsStr;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use cairn_tests::{TestStore as Store, gen_disk, id, json, ok, run};

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
    let file = store.root_file(&p);
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
    let tmp = store.root_file(&p).with_extension("tmp");
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
