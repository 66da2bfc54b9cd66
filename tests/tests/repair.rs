//! Damaged index files, config and root files each have a way back that loses no point, and a
//! root file edited into other valid JSON is named and refused by a rebuild.

use std::path::{Path, PathBuf};

use cairn_tests::damage::{Fixture, fixture, restorable};
use cairn_tests::{TestStore as Store, json, ok, run};

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn files_with(dir: &Path, pred: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = cairn_tests::files_under(dir)
        .into_iter()
        .filter(|p| pred(p))
        .collect();
    out.sort();
    out
}

fn flip_middle(path: &Path, bytes: usize) {
    let mut b = std::fs::read(path).expect("read");
    let (mid, len) = (b.len() / 2, b.len());
    for x in &mut b[mid.saturating_sub(bytes / 2)..(mid + bytes / 2).min(len)] {
        *x ^= 0xff;
    }
    std::fs::write(path, &b).expect("write");
}

/// Every point restores, and verify passes.
fn all_well(fx: &Fixture, store: &Store, name: &str) {
    let got = restorable(store, &fx.points, &fx.disks);
    assert!(got.iter().all(|a| *a), "{name}: {got:?}");
    let (passed, v) = store.verify(&[]);
    assert!(passed, "{name}: verify: {v}");
}

/// The first of `args` that fails names `hint`; at least one fails.
fn some_command_points_at(store: &Store, hint: &str, name: &str) {
    let mut failed = 0;
    for args in [&["list"][..], &["verify"], &["gc", "--dry-run"]] {
        let out = run(&mut store.cmd(args));
        if !out.status.success() {
            failed += 1;
            assert!(
                stderr_of(&out).contains(hint),
                "{name}: `cairn {}` failed without naming {hint}: {}",
                args.join(" "),
                stderr_of(&out)
            );
        }
    }
    assert!(failed > 0, "{name}: no command saw the damage");
}

#[test]
fn damaged_index_files_and_config_each_have_a_way_back_that_loses_no_point() {
    let fx = fixture();
    let index = |s: &Store| s.path().join("index");

    // RocksDB's files, each kind: the commands that fail say how back; the rebuild loses nothing.
    let manifest = fx.store.copy();
    for m in files_with(&index(&manifest), &|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("MANIFEST"))
    }) {
        flip_middle(&m, 40);
    }
    let sst = fx.store.copy();
    for f in files_with(&index(&sst), &|p| p.extension().is_some_and(|e| e == "sst")) {
        flip_middle(&f, 64);
    }
    let current = fx.store.copy();
    std::fs::remove_file(index(&current).join("CURRENT")).expect("remove CURRENT");
    for (name, store) in [
        ("MANIFEST", &manifest),
        ("SST", &sst),
        ("CURRENT", &current),
    ] {
        some_command_points_at(store, "--rebuild-index", name);
        ok(&mut store.cmd(&["repair", "--rebuild-index"]));
        all_well(&fx, store, name);
    }
    // The write-ahead log: what it lost comes back from the root files, at once or by a rebuild.
    let wal = fx.store.copy();
    for f in files_with(&index(&wal), &|p| p.extension().is_some_and(|e| e == "log")) {
        flip_middle(&f, 16);
    }
    let listed = run(&mut wal.cmd(&["list"]));
    if listed.status.success() {
        // Readers say the index is behind; the next writer publishes what the log lost.
        ok(&mut wal.cmd(&["gc"]));
    } else {
        assert!(
            stderr_of(&listed).contains("--rebuild-index"),
            "{}",
            stderr_of(&listed)
        );
        ok(&mut wal.cmd(&["repair", "--rebuild-index"]));
    }
    all_well(&fx, &wal, "WAL");

    // cairn.toml lost or garbled: the copy in the index writes it again, as it was.
    let want = std::fs::read_to_string(fx.store.path().join("cairn.toml")).expect("config");
    for garble in [None, Some("chunk_size = \"banana\"\n")] {
        let store = fx.store.copy();
        let config = store.path().join("cairn.toml");
        match garble {
            None => std::fs::remove_file(&config).expect("remove config"),
            Some(text) => std::fs::write(&config, text).expect("garble config"),
        }
        some_command_points_at(&store, "--rebuild-config", "cairn.toml");
        let r = json(&ok(&mut store.cmd(&[
            "repair",
            "--rebuild-config",
            "--json",
        ])));
        assert_eq!(r["source"], "the copy in the index", "{r}");
        assert_eq!(std::fs::read_to_string(&config).expect("config"), want);
        all_well(&fx, &store, "cairn.toml");
        let again = run(&mut store.cmd(&["repair", "--rebuild-config"]));
        assert!(!again.status.success(), "a good config was rebuilt");
    }
    // ... and with the index gone too: from the root files, then the index from the packs.
    let bare = fx.store.copy();
    std::fs::remove_file(bare.path().join("cairn.toml")).expect("remove config");
    std::fs::remove_dir_all(index(&bare)).expect("remove index");
    let r = json(&ok(&mut bare.cmd(&[
        "repair",
        "--rebuild-config",
        "--json",
    ])));
    assert_eq!(r["chunk_size"], 65536, "{r}");
    ok(&mut bare.cmd(&["repair", "--rebuild-index"]));
    all_well(&fx, &bare, "cairn.toml and index");
}

fn root_file_of(store: &Store, point: &str) -> PathBuf {
    files_with(&store.path().join("points"), &|p| {
        p.to_string_lossy().ends_with(&format!("-{point}.json"))
    })
    .pop()
    .unwrap_or_else(|| panic!("no root file for {point}"))
}

fn halve_size(path: &Path) {
    let mut v = json(&std::fs::read_to_string(path).expect("root file"));
    let size = v["size"].as_u64().expect("size");
    v["size"] = serde_json::json!(size / 2);
    std::fs::write(path, serde_json::to_vec_pretty(&v).expect("json")).expect("write");
}

#[test]
fn a_root_file_edited_into_other_valid_json_is_named_and_refused_by_a_rebuild() {
    let fx = fixture();
    let victim = &fx.points[3];

    // With the old index at hand: its entry agrees with the tree, and is taken.
    let store = fx.store.copy();
    halve_size(&root_file_of(&store, victim));
    let (passed, v) = store.verify(&[]);
    assert!(!passed, "verify passed an edited root file: {v}");
    let r = json(&ok(&mut store.cmd(&[
        "repair",
        "--rebuild-index",
        "--json",
    ])));
    assert!(r.to_string().contains("old index"), "{r}");
    // The old index is kept, and said where.
    let old = r["old_index"].as_str().expect("the old index is named");
    assert!(Path::new(old).join("CURRENT").exists(), "{r}");
    all_well(&fx, &store, "edited root file");

    // Rebuilt twice (the old index says the same as the file), or without an index: the
    // point is left out and named, its root file kept aside; every other point restores.
    for lose_index in [false, true] {
        let store = fx.store.copy();
        let path = root_file_of(&store, victim);
        halve_size(&path);
        if lose_index {
            std::fs::remove_dir_all(store.path().join("index")).expect("remove index");
        } else {
            // A rebuild that took the edited file as it was: verify names the point after.
            ok(&mut store.cmd(&["repair", "--rebuild-index"]));
        }
        let r = json(&ok(&mut store.cmd(&[
            "repair",
            "--rebuild-index",
            "--json",
        ])));
        if !lose_index {
            // The first rebuild already settled it from the old index: nothing left to refuse.
            all_well(&fx, &store, "edited root file, rebuilt twice");
            continue;
        }
        assert_eq!(r["points_left_out"], 1, "{r}");
        assert!(r["old_index"].is_null(), "no index was there to keep: {r}");
        assert!(r.to_string().contains(&victim[..12]), "{r}");
        let mut aside = path.clone().into_os_string();
        aside.push(".disagrees");
        assert!(Path::new(&aside).exists(), "the refused root file is gone");
        let got = restorable(&store, &fx.points, &fx.disks);
        let want: Vec<bool> = (0..fx.points.len()).map(|k| k != 3).collect();
        assert_eq!(got, want);
        let (passed, v) = store.verify(&[]);
        assert!(passed, "{v}");
    }
}
