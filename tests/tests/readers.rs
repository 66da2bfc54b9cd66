//! Readers beside writers: a restore or a verify that garbage collection overtakes finishes
//! what it started (gc leaves the packs a running reader may open), and a reader sees every
//! commit that returned before it started.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cairn_tests::{
    TestStore as Store, assert_same_content, cairn_bin, gen_disk, id, json, num, ok, run,
};

/// A store where point `p2` needs chunks from a pack (returned) that `gc --repack-below 100`
/// rewrites and deletes: `p1` shared it and is forgotten.
fn store_with_a_pack_to_rewrite(work: &Path) -> (Store, String, PathBuf, PathBuf) {
    let store = Store::new("64K");
    let day0 = work.join("day0.raw");
    let day1 = work.join("day1.raw");
    gen_disk(&day0, "8M", 4, 2, 0);
    // The next day changes the first chunk only: the rest stays shared in the first pack.
    let mut bytes = std::fs::read(&day0).expect("read");
    for b in &mut bytes[..4096] {
        *b = b.wrapping_add(1);
    }
    std::fs::write(&day1, &bytes).expect("write");
    let p1 = store.backup("db01", "2026-11-20T02:00:00Z", "xvda", &day0, &[]);
    let packs = store.pack_files();
    assert_eq!(packs.len(), 1);
    let p2 = store.backup("db01", "2026-11-21T02:00:00Z", "xvda", &day1, &[]);
    ok(&mut store.cmd(&["forget", &id(&p1)]));
    (store, id(&p2), packs[0].clone(), day1)
}

/// `cairn ARGS` on `store`, each open of `slow` delayed by `secs` seconds (strace).
fn slowed_on(store: &Store, slow: &Path, secs: u32, args: &[&str]) -> Child {
    Command::new("strace")
        .arg("-f")
        .arg("-qq")
        .args(["-o", "/dev/null", "-P"])
        .arg(slow)
        .args(["-e", "trace=openat"])
        .arg("-e")
        .arg(format!("inject=openat:delay_enter={}", secs * 1_000_000))
        .arg(cairn_bin())
        .args(args)
        .env("CAIRN_STORE", store.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run strace (installed by scripts/setup.sh)")
}

/// Waits until the command `strace` runs is held in the delayed open of the pack: it opened the
/// index before (its view of the store is fixed) and registered as a reader. A task of it has
/// been in `openat` (syscall 257 on x86-64; only the pack's open is delayed) with the same
/// arguments for 200 ms.
fn wait_held_in_pack_open(strace: &Child) {
    let parent = strace.id().to_string();
    let in_open = || -> Option<String> {
        for p in std::fs::read_dir("/proc").ok()?.flatten() {
            let status = std::fs::read_to_string(p.path().join("status")).unwrap_or_default();
            let child = status
                .lines()
                .any(|l| l.strip_prefix("PPid:").is_some_and(|v| v.trim() == parent));
            if !child {
                continue;
            }
            for t in std::fs::read_dir(p.path().join("task")).ok()?.flatten() {
                let call = std::fs::read_to_string(t.path().join("syscall")).unwrap_or_default();
                if call.starts_with("257 ") {
                    return Some(format!("{} {call}", t.path().display()));
                }
            }
        }
        None
    };
    cairn_tests::wait_until("the command to be held opening the pack", || {
        let Some(first) = in_open() else {
            return false;
        };
        std::thread::sleep(Duration::from_millis(200));
        in_open().as_ref() == Some(&first)
    });
}

fn gc_rewriting_everything(store: &Store) -> serde_json::Value {
    json(&ok(&mut store.cmd(&[
        "gc",
        "--json",
        "--repack-below",
        "100",
    ])))
}

#[test]
fn a_restore_overtaken_by_gc_finishes_bit_exact_and_the_next_gc_frees_the_old_pack() {
    let work = tempfile::tempdir().expect("tempdir");
    let (store, p2, old_pack, day1) = store_with_a_pack_to_rewrite(work.path());
    let out = work.path().join("out.raw");
    let restore = slowed_on(
        &store,
        &old_pack,
        3,
        &["restore", &p2, out.to_str().expect("utf-8")],
    );
    wait_held_in_pack_open(&restore);
    let g = gc_rewriting_everything(&store);
    assert!(num(&g, "packs_rewritten") >= 1, "{g}");
    assert_eq!(num(&g, "readers_waited_for"), 1, "{g}");
    assert!(
        old_pack.exists(),
        "gc deleted a pack a running restore may open"
    );
    let done = restore.wait_with_output().expect("wait");
    assert!(
        done.status.success(),
        "the restore failed beside gc: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_same_content(&out, &day1, true);
    // No reader left: the next collection deletes the pack the swap dropped, freeing what
    // the first one said it left in place.
    let left = num(&g, "bytes_left_for_readers");
    let g = gc_rewriting_everything(&store);
    assert_eq!(num(&g, "readers_waited_for"), 0, "{g}");
    assert!(num(&g, "orphan_packs") >= 1, "{g}");
    assert_eq!(num(&g, "orphan_bytes"), left, "{g}");
    assert!(!old_pack.exists());
    let v = run(&mut store.cmd(&["verify"]));
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

#[test]
fn a_verify_overtaken_by_gc_reports_no_false_damage_and_leaves_no_marks() {
    let work = tempfile::tempdir().expect("tempdir");
    let (store, _, old_pack, _) = store_with_a_pack_to_rewrite(work.path());
    let verify = slowed_on(&store, &old_pack, 3, &["verify", "--json"]);
    wait_held_in_pack_open(&verify);
    let g = gc_rewriting_everything(&store);
    let done = verify.wait_with_output().expect("wait");
    let report = String::from_utf8_lossy(&done.stdout);
    assert!(done.status.success(), "verify beside gc: {report}");
    assert_eq!(num(&g, "readers_waited_for"), 1, "{g}");
    let v = json(&report);
    assert_eq!(num(&v, "marks_recorded"), 0, "{v}");
    // Nothing was marked: the next verify is clean too, and a backup re-stores nothing.
    let again = json(&ok(&mut store.cmd(&["verify", "--json"])));
    assert_eq!(
        again["damaged"].as_array().map(Vec::len),
        Some(0),
        "{again}"
    );
}

#[test]
fn readers_beside_writers_see_every_commit_that_returned_and_never_fail() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let (a, b) = (work.path().join("a.raw"), work.path().join("b.raw"));
    gen_disk(&a, "2M", 1, 1, 0);
    gen_disk(&b, "32M", 2, 1, 0);
    let p = id(&store.backup("v", "2026-11-20T02:00:00Z", "xvda", &a, &[]));
    // Writers come and go beside the readers: each open recovers and flushes the last one's
    // log, and each commits a point (of seven VMs, a changed disk each time).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = std::sync::Arc::clone(&stop);
        let (root, b) = (store.path(), b.clone());
        std::thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 2000 {
                i += 1;
                let mut bytes = std::fs::read(&b).expect("read");
                let at = (i as usize * 65_536 * 7) % bytes.len();
                bytes[at] ^= 0x55;
                std::fs::write(&b, &bytes).expect("write");
                let _ = Command::new(cairn_bin())
                    .args(["backup", "--wait", "--vm", &format!("other{}", i % 7)])
                    .arg(format!("xvda={}", b.display()))
                    .env("CAIRN_STORE", &root)
                    .output();
            }
        })
    };
    let mut failed = Vec::new();
    let mut stale = 0;
    for i in 0..100 {
        let on = i % 2 == 0;
        ok(&mut store.cmd(&[if on { "protect" } else { "unprotect" }, "--wait", &p]));
        let out = run(&mut store.cmd(&["list", "--json", "--vm", "v"]));
        if !out.status.success() {
            failed.push(String::from_utf8_lossy(&out.stderr).into_owned());
            continue;
        }
        if json(&String::from_utf8_lossy(&out.stdout))[0]["protected"] != on {
            stale += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().expect("writer");
    assert!(
        failed.is_empty(),
        "reads failed on a healthy store: {failed:?}"
    );
    assert_eq!(
        stale, 0,
        "readers saw the state before a commit that had returned"
    );
}
