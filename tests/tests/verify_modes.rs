//! The verify a nightly job and a monitor need: `--subset N/M` parts that together read every
//! chunk once, `--since-last` that reads what no complete run read since it was written,
//! `--quick` that reads metadata only, and a store with nothing to check never passing for
//! "all well".

use cairn_tests::{
    TestStore as Store, corrupt_a_data_chunk, corrupt_a_data_chunk_in, gen_disk, json, num, run,
};

/// `cairn verify --json ARGS` on `store`: its exit status and report.
fn verify(store: &Store, args: &[&str]) -> (i32, serde_json::Value) {
    let mut all = vec!["verify", "--json"];
    all.extend_from_slice(args);
    let out = run(&mut store.cmd(&all));
    let code = out.status.code().unwrap_or(-1);
    (code, json(&String::from_utf8_lossy(&out.stdout)))
}

fn three_days(store: &Store, work: &std::path::Path) {
    for day in 0..3 {
        let d = work.join(format!("d{day}.raw"));
        gen_disk(&d, "8M", 5, 1, day);
        store.backup(
            "web01",
            &format!("2026-11-2{day}T02:00:00Z"),
            "xvda",
            &d,
            &[],
        );
    }
}

#[test]
fn subsets_read_every_data_chunk_once_and_the_tree_chunks_each_run() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    three_days(&store, work.path());
    let (code, full) = verify(&store, &[]);
    assert_eq!(code, 0, "{full}");
    let (code, quick) = verify(&store, &["--quick"]);
    assert_eq!(code, 0, "{quick}");
    let trees = num(&quick, "chunks_checked");
    assert!(trees > 0 && trees < num(&full, "chunks_checked"), "{quick}");
    let parts: Vec<u64> = (1..=3)
        .map(|n| {
            let (code, r) = verify(&store, &["--subset", &format!("{n}/3")]);
            assert_eq!(code, 0, "{r}");
            num(&r, "chunks_checked")
        })
        .collect();
    assert_eq!(
        parts.iter().sum::<u64>(),
        num(&full, "chunks_checked") + 2 * trees,
        "parts {parts:?}, full {full}"
    );
    // One damaged data chunk: exactly one part of three finds it (each on a fresh copy: a
    // chunk marked bad is read by every later run).
    let damaged = store.copy();
    let chunk = corrupt_a_data_chunk(&damaged);
    let found: Vec<u32> = (1..=3)
        .filter(|n| {
            let copy = damaged.copy();
            let (code, r) = verify(&copy, &["--subset", &format!("{n}/3")]);
            let hit = r.to_string().contains(&chunk);
            assert_eq!(code == 1, hit, "{r}");
            hit
        })
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    // Metadata only does not read it.
    let (code, r) = verify(&damaged.copy(), &["--quick"]);
    assert_eq!(code, 0, "{r}");
    for bad in ["0/3", "4/3", "3", "a/b"] {
        let out = run(&mut store.cmd(&["verify", "--subset", bad]));
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
    }
}

#[test]
fn since_last_reads_only_what_no_complete_run_read_since_it_was_written() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    three_days(&store, work.path());
    // No complete run yet: --since-last reads everything.
    let store2 = store.copy();
    let (_, full) = verify(&store, &[]);
    let (code, first) = verify(&store2, &["--since-last"]);
    assert_eq!(code, 0, "{first}");
    assert_eq!(
        num(&first, "chunks_checked"),
        num(&full, "chunks_checked"),
        "{first}"
    );
    // Right after a complete run: nothing left to read.
    let (code, again) = verify(&store, &["--since-last"]);
    assert_eq!(code, 0, "{again}");
    assert_eq!(num(&again, "chunks_checked"), 0, "{again}");
    assert_eq!(num(&again, "chunks_skipped"), num(&full, "chunks_checked"));
    // A new backup: only its new packs are read, and damage in them is found.
    let before = store.pack_files();
    let d = work.path().join("new.raw");
    gen_disk(&d, "8M", 9, 1, 7);
    store.backup("db01", "2026-11-23T02:00:00Z", "xvda", &d, &[]);
    let new_packs: Vec<_> = store
        .pack_files()
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert!(!new_packs.is_empty());
    let (code, next) = verify(&store.copy(), &["--since-last"]);
    assert_eq!(code, 0, "{next}");
    // Every chunk the old points hold was read by the complete run; the rest is new.
    let read = num(&next, "chunks_checked");
    assert!(read > 0, "{next}");
    assert_eq!(
        num(&next, "chunks_skipped"),
        num(&full, "chunks_checked"),
        "{next}"
    );
    assert_eq!(
        read + num(&next, "chunks_skipped"),
        num(&next, "chunks_in_scope")
    );
    let chunk = corrupt_a_data_chunk_in(&new_packs[0]);
    let (code, found) = verify(&store, &["--since-last"]);
    assert_eq!(code, 1, "{found}");
    assert!(found.to_string().contains(&chunk), "{found}");
}

#[test]
fn a_store_with_no_point_to_check_is_not_all_well() {
    let store = Store::new("64K");
    let out = run(&mut store.cmd(&["verify"]));
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("no points"), "{said}");
    assert!(!said.contains("all well"), "{said}");
}

/// A chunk marked bad is read by every `--since-last` run, even in a pack a complete run read
/// whole: damage found once is never skipped as "already read" until a key backup heals it.
#[test]
fn since_last_always_reads_what_is_marked_bad() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    three_days(&store, work.path());
    let (code, _) = verify(&store, &[]);
    assert_eq!(code, 0);
    // Damaged after the complete run: --since-last skips that pack and so does not see it...
    let chunk = corrupt_a_data_chunk(&store);
    let (code, quiet) = verify(&store, &["--since-last"]);
    assert_eq!((code, num(&quiet, "chunks_checked")), (0, 0), "{quiet}");
    // ...until a run finds and marks it; from then on every --since-last run reads it again.
    let (code, found) = verify(&store, &["--subset", "1/1"]);
    assert_eq!(code, 1, "{found}");
    for _ in 0..2 {
        let (code, again) = verify(&store, &["--since-last"]);
        assert_eq!(code, 1, "{again}");
        assert!(again.to_string().contains(&chunk), "{again}");
    }
}
