//! Damage never costs intact data. One store of six daily points whose first pack all six
//! share, copied and damaged by hand in every shape the store doc's damage table lists. For each
//! shape: verify sees it; a key backup made beside the damage restores; `repair
//! --rebuild-index` loses no point that restored before it and, where the chunks are whole,
//! brings every point back; gc deletes nothing it could not account for (a quarantined pack
//! stays until `gc --drop-quarantined`); key backups of the disks heal every point. Damaged
//! index files, config and root files are `repair.rs`.

use std::path::Path;

use cairn_tests::damage::{Fixture, fixture, named, restorable};
use cairn_tests::{TestStore as Store, id, json, ok, run};

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
    let (passed, v) = store.verify(&[]);
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
    let (passed, v) = store.verify(&[]);
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
    let (passed, v) = store.verify(&[]);
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

#[test]
fn a_pack_cut_at_any_frame_boundary_is_seen_and_never_reused_by_a_new_point() {
    let fx = fixture();
    let pack = fx.store.path().join(&fx.shared);
    let bounds: Vec<usize> = frames(&pack).iter().map(|f| f.0).collect();
    let last = fx.disks.len() - 1;
    for (k, at) in bounds.iter().enumerate() {
        let store = fx.store.copy();
        truncate(&store.path().join(&fx.shared), *at);
        let (passed, v) = store.verify(&[]);
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
