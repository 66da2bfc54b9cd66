//! Damage never costs intact data. One store of six daily points whose first pack all six
//! share, copied and damaged by hand in every shape the store doc's damage table lists. For each
//! shape: verify sees it; a key backup made beside the damage restores; `repair
//! --rebuild-index` loses no point that restored before it and, where the chunks are whole,
//! brings every point back; gc deletes nothing it could not account for (a quarantined pack
//! stays until `gc --drop-quarantined`); key backups of the disks heal every point.

use std::path::{Path, PathBuf};

use cairn_tests::{TestStore as Store, gen_disk, id, json, ok, run};

const DAYS: u32 = 6;

struct Fixture {
    store: Store,
    _work: tempfile::TempDir,
    disks: Vec<PathBuf>,
    points: Vec<String>,
    /// The pack every point shares, relative to the store.
    shared: PathBuf,
}

fn fixture() -> Fixture {
    let work = tempfile::tempdir().expect("tempdir");
    let store = Store::new("64K");
    let mut disks = Vec::new();
    let mut points = Vec::new();
    for d in 0..DAYS {
        let disk = work.path().join(format!("day{d}.raw"));
        gen_disk(&disk, "4M", 1, 1, d);
        let time = format!("2026-11-{:02}T02:00:00Z", 10 + d);
        points.push(id(&store.backup("vm", &time, "xvda", &disk, &[])));
        disks.push(disk);
    }
    let biggest = store
        .pack_files()
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a pack");
    let shared = biggest
        .strip_prefix(store.path())
        .expect("in the store")
        .to_path_buf();
    Fixture {
        store,
        _work: work,
        disks,
        points,
        shared,
    }
}

/// Each frame of a pack: (offset, stored length).
fn frames(pack: &Path) -> Vec<(usize, usize)> {
    let b = std::fs::read(pack).expect("read pack");
    let mut out = Vec::new();
    let mut at = 32;
    while at + 56 <= b.len() {
        let stored = u32::from_be_bytes(b[at + 44..at + 48].try_into().expect("len")) as usize;
        out.push((at, stored));
        at += 56 + stored;
    }
    out
}

fn rewrite(pack: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut b = std::fs::read(pack).expect("read pack");
    f(&mut b);
    std::fs::write(pack, &b).expect("write pack");
}

fn truncate(pack: &Path, len: usize) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(pack)
        .expect("open pack");
    f.set_len(len as u64).expect("truncate");
}

/// Which of `points` restore bit-exact to the disk each was made from.
fn restorable(store: &Store, points: &[String], disks: &[PathBuf]) -> Vec<bool> {
    let dir = tempfile::tempdir().expect("tempdir");
    points
        .iter()
        .zip(disks)
        .enumerate()
        .map(|(k, (p, disk))| {
            let out = dir.path().join(format!("{k}.raw"));
            let done = run(store
                .cmd(&["restore", "--force", p, "--format", "raw"])
                .arg(&out));
            done.status.success()
                && std::fs::read(&out).ok() == Some(std::fs::read(disk).expect("disk"))
        })
        .collect()
}

/// `cairn verify --json`: whether it passed, and what it said.
fn verify(store: &Store) -> (bool, serde_json::Value) {
    let out = run(&mut store.cmd(&["verify", "--json"]));
    (
        out.status.success(),
        json(&String::from_utf8_lossy(&out.stdout)),
    )
}

/// The points verify names as damaged.
fn named(v: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = v["damaged"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|d| d["points"].as_array().cloned().unwrap_or_default())
        .filter_map(|h| h["point"].as_str().map(str::to_owned))
        .collect();
    out.sort();
    out.dedup();
    out
}

struct Case {
    name: &'static str,
    damage: fn(&Path),
    /// Every point restores after the repair, without a backup.
    back_after_repair: bool,
    /// The repair quarantines the pack.
    quarantined: bool,
}

fn header_zeroed(p: &Path) {
    rewrite(p, |b| b[..8].fill(0));
}
fn frame_header_flipped(p: &Path) {
    let f = frames(p);
    rewrite(p, |b| b[f[1].0 + 20] ^= 0x40);
}
fn frames_overwritten(p: &Path) {
    let f = frames(p);
    rewrite(p, |b| b[f[2].0..f[3].0 + 100].fill(0x5a));
}
fn body_flipped(p: &Path) {
    let f = frames(p);
    rewrite(p, |b| b[f[1].0 + 56 + f[1].1 / 2] ^= 0x5a);
}
fn cut_after_first_frame(p: &Path) {
    let f = frames(p);
    truncate(p, f[1].0);
}
fn cut_at_middle_frame(p: &Path) {
    let f = frames(p);
    truncate(p, f[f.len() / 2].0);
}
fn cut_before_last_frame(p: &Path) {
    let f = frames(p);
    truncate(p, f[f.len() - 1].0);
}
fn cut_inside_a_frame(p: &Path) {
    let f = frames(p);
    truncate(p, f[f.len() / 2].0 + 30);
}
fn cut_to_100_bytes(p: &Path) {
    truncate(p, 100);
}
fn pack_removed(p: &Path) {
    std::fs::remove_file(p).expect("remove pack");
}

const CASES: &[Case] = &[
    Case {
        name: "pack header zeroed",
        damage: header_zeroed,
        back_after_repair: true,
        quarantined: false,
    },
    Case {
        name: "one byte of a frame header flipped",
        damage: frame_header_flipped,
        back_after_repair: true,
        quarantined: true,
    },
    Case {
        name: "two frames overwritten",
        damage: frames_overwritten,
        back_after_repair: false,
        quarantined: true,
    },
    Case {
        name: "one byte of a frame body flipped",
        damage: body_flipped,
        back_after_repair: false,
        quarantined: false,
    },
    Case {
        name: "cut after the first frame",
        damage: cut_after_first_frame,
        back_after_repair: false,
        quarantined: false,
    },
    Case {
        name: "cut at the middle frame",
        damage: cut_at_middle_frame,
        back_after_repair: false,
        quarantined: false,
    },
    Case {
        name: "cut before the last frame",
        damage: cut_before_last_frame,
        back_after_repair: false,
        quarantined: false,
    },
    Case {
        name: "cut inside a frame",
        damage: cut_inside_a_frame,
        back_after_repair: false,
        quarantined: true,
    },
    Case {
        name: "cut to 100 bytes",
        damage: cut_to_100_bytes,
        back_after_repair: false,
        quarantined: true,
    },
    Case {
        name: "the whole pack removed",
        damage: pack_removed,
        back_after_repair: false,
        quarantined: false,
    },
];

fn key_backup(store: &Store, disk: &Path, time: &str) -> String {
    id(&store.backup("vm", time, "xvda", disk, &["--key"]))
}

fn run_case(fx: &Fixture, case: &Case) {
    let name = case.name;
    let store = fx.store.copy();
    let pack = store.path().join(&fx.shared);
    let len = std::fs::metadata(&pack).map(|m| m.len()).unwrap_or(0);
    (case.damage)(&pack);
    // Every open names a pack gone or cut short: `list` and `report` too.
    if std::fs::metadata(&pack).map(|m| m.len()).unwrap_or(0) < len {
        let hex = fx
            .shared
            .file_stem()
            .expect("stem")
            .to_string_lossy()
            .into_owned();
        for args in [&["list"][..], &["report"]] {
            let out = run(&mut store.cmd(args));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains(&format!("pack {hex}")),
                "{name}: `cairn {args:?}`: {err}"
            );
        }
    }
    let before = restorable(&store, &fx.points, &fx.disks);

    // Verify sees the damage, and names every point that does not restore.
    let (passed, v) = verify(&store);
    let packs_named = v["packs"].as_array().is_some_and(|a| !a.is_empty());
    assert!(!passed || packs_named, "{name}: verify saw nothing: {v}");
    let named_before = named(&v);
    for (p, ok) in fx.points.iter().zip(&before) {
        assert!(
            *ok || named_before.contains(p),
            "{name}: point {p} does not restore and verify did not name it: {v}"
        );
    }

    // A key backup beside the damage (before any repair) restores, at once.
    let last = fx.disks.len() - 1;
    let fresh = key_backup(&store, &fx.disks[last], "2026-11-30T02:00:00Z");
    assert_eq!(
        restorable(&store, &[fresh], &fx.disks[last..]),
        vec![true],
        "{name}: a key backup made beside the damage does not restore"
    );
    let before = restorable(&store, &fx.points, &fx.disks);

    // Repair loses nothing that restored, and keeps every chunk that checks.
    let r = json(&ok(&mut store.cmd(&[
        "repair",
        "--rebuild-index",
        "--json",
    ])));
    let quarantined = r["quarantined"].as_array().is_some_and(|a| !a.is_empty());
    assert_eq!(quarantined, case.quarantined, "{name}: {r}");
    let after = restorable(&store, &fx.points, &fx.disks);
    for (k, (b, a)) in before.iter().zip(&after).enumerate() {
        assert!(!b || *a, "{name}: repair lost point {k} ({r})");
    }
    if case.back_after_repair {
        assert!(after.iter().all(|a| *a), "{name}: {after:?} after {r}");
    }
    let (passed, v) = verify(&store);
    assert_eq!(
        passed,
        after.iter().all(|a| *a),
        "{name}: verify after the repair: {v}"
    );
    let named_after = named(&v);
    for (p, ok) in fx.points.iter().zip(&after) {
        assert!(*ok || named_after.contains(p), "{name}: {p} not named: {v}");
    }

    // gc deletes nothing a point needs, and keeps a quarantined pack whole.
    let len = std::fs::metadata(&pack).map(|m| m.len()).ok();
    ok(&mut store.cmd(&["gc"]));
    assert_eq!(
        restorable(&store, &fx.points, &fx.disks),
        after,
        "{name}: gc"
    );
    if case.quarantined {
        assert_eq!(
            std::fs::metadata(&pack).map(|m| m.len()).ok(),
            len,
            "{name}: gc touched a quarantined pack"
        );
    }

    // Key backups of every disk heal every point.
    for (d, disk) in fx.disks.iter().enumerate() {
        key_backup(&store, disk, &format!("2026-12-{:02}T02:00:00Z", 1 + d));
    }
    assert!(
        restorable(&store, &fx.points, &fx.disks).iter().all(|a| *a),
        "{name}: key backups did not heal"
    );
    let (passed, v) = verify(&store);
    assert!(passed, "{name}: verify after healing: {v}");

    // The owner lets the quarantine go: nothing a point needs goes with it.
    if case.quarantined {
        let g = json(&ok(&mut store.cmd(&["gc", "--drop-quarantined", "--json"])));
        assert_eq!(g["quarantined_dropped"], 1, "{name}: {g}");
        assert!(
            !pack.exists(),
            "{name}: the quarantined pack is still there"
        );
        assert!(
            restorable(&store, &fx.points, &fx.disks).iter().all(|a| *a),
            "{name}: dropping the quarantine lost a point"
        );
    }
}

#[test]
fn every_shape_of_pack_damage_is_seen_and_repair_keeps_every_chunk_that_checks() {
    let fx = fixture();
    for case in CASES {
        run_case(&fx, case);
    }
}

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
    let (passed, v) = verify(store);
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
    let (passed, v) = verify(&store);
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
        let (passed, v) = verify(&store);
        assert!(passed, "{v}");
    }
}

#[test]
fn a_pack_cut_at_any_frame_boundary_is_seen_and_never_reused_by_a_new_point() {
    let fx = fixture();
    let pack = fx.store.path().join(&fx.shared);
    let bounds: Vec<usize> = frames(&pack).iter().map(|f| f.0).collect();
    let last = fx.disks.len() - 1;
    for (k, at) in bounds.iter().enumerate() {
        let store = fx.store.copy();
        truncate(&store.path().join(&fx.shared), *at);
        let (passed, v) = verify(&store);
        assert!(!passed, "cut at frame {k}: verify saw nothing: {v}");
        // Every point that does not restore is named.
        let named = named(&v);
        let ok_now = restorable(&store, &fx.points, &fx.disks);
        for (p, ok) in fx.points.iter().zip(&ok_now) {
            assert!(
                *ok || named.contains(p),
                "cut at frame {k}: {p} not named: {v}"
            );
        }
        // A key backup beside it stores what the cut lost, at once.
        let fresh = key_backup(&store, &fx.disks[last], "2026-11-30T02:00:00Z");
        assert_eq!(
            restorable(&store, &[fresh], &fx.disks[last..]),
            vec![true],
            "cut at frame {k}: the key backup does not restore"
        );
    }
}

#[test]
fn gc_keeps_a_quarantined_pack_the_index_does_not_know_until_the_owner_lets_it_go() {
    let fx = fixture();
    let store = fx.store.copy();
    // A pack no index entry names (a copy put back by hand), quarantined: without the record,
    // gc deletes it as an orphan.
    let id = "0123456789abcdef0123456789abcdef";
    let stray = store
        .path()
        .join("packs")
        .join(&id[..2])
        .join(format!("{id}.pack"));
    std::fs::create_dir_all(stray.parent().expect("parent")).expect("mkdir");
    std::fs::copy(store.path().join(&fx.shared), &stray).expect("copy");
    let len = std::fs::metadata(&stray).expect("stat").len();
    let record = store.path().join("quarantine").join(format!("{id}.json"));
    std::fs::create_dir_all(record.parent().expect("parent")).expect("mkdir");
    let q = serde_json::json!({
        "pack": id, "size": len, "frames_read": 0,
        "unread": [{ "start": 0, "end": len, "why": "put back by hand" }],
        "found": "2026-12-07T00:00:00Z",
    });
    std::fs::write(&record, q.to_string()).expect("record");
    let g = json(&ok(&mut store.cmd(&["gc", "--json"])));
    assert_eq!(
        g["quarantined_kept"].as_array().map(Vec::len),
        Some(1),
        "{g}"
    );
    assert_eq!(g["orphan_packs"], 0, "{g}");
    assert!(stray.exists(), "gc deleted a quarantined pack");
    let g = json(&ok(&mut store.cmd(&["gc", "--drop-quarantined", "--json"])));
    assert_eq!(g["quarantined_dropped"], 1, "{g}");
    assert!(!stray.exists() && !record.exists(), "{g}");
    assert!(restorable(&store, &fx.points, &fx.disks).iter().all(|a| *a));
}
