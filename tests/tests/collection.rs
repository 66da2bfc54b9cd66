//! Garbage collection, verify and heal end to end: gc frees what dropped points held (kept
//! points restore bit-exact), keeps every chunk a running backup reuses, survives kill -9,
//! leaves at most 5 % garbage by default; a flipped byte is found, refused and healed.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use cairn_tests::{
    TestStore as Store, corrupt_a_data_chunk, gen_disk, id, json, num, ok, read, run, series,
};

fn packs_bytes(store: &Store) -> u64 {
    store
        .pack_files()
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum()
}

#[test]
fn gc_frees_the_space_of_dropped_points_and_kept_points_restore_bit_exact() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let raws = series(work.path(), "64M", 11, 1, 4);
    let points = store.daily_backups("db", &raws);
    let before = packs_bytes(&store);
    // Nothing to free yet.
    let g = store.gc(&[]);
    assert_eq!(g["bytes_freed"], 0, "{g}");
    // Drop the first two days: only metadata changes, no pack is touched.
    let f = json(&ok(
        &mut store.cmd(&["forget", "--json", &points[0], &points[1]])
    ));
    assert!(f["chunks_unreferenced"].as_u64().expect("n") > 0, "{f}");
    assert_eq!(packs_bytes(&store), before, "forget must not touch packs");
    // Under a threshold of 0 no pack is worth rewriting: only wholly dead packs go, and the
    // rest of the garbage is kept (and said so).
    let dry0 = store.gc(&["--dry-run", "--repack-below", "0"]);
    assert_eq!(num(&dry0, "packs_rewritten"), 0, "{dry0}");
    assert!(num(&dry0, "garbage_bytes_kept") > 0, "{dry0}");
    // A pack no index entry names (as a killed backup leaves): an orphan the run deletes.
    let orphan_dir = store.path().join("packs/ff");
    std::fs::create_dir_all(&orphan_dir).expect("mkdir");
    std::fs::copy(
        &store.pack_files()[0],
        orphan_dir.join(format!("{}.pack", "f".repeat(32))),
    )
    .expect("copy");
    let before = packs_bytes(&store);
    // The report says how much no point references: garbage frames and the orphan pack.
    let report = json(&ok(&mut store.cmd(&["report", "--json"])));
    assert_eq!(
        num(&report, "orphan_packs"),
        1,
        "{}",
        report["orphan_packs"]
    );
    let garbage_reported = num(&report, "garbage_bytes");
    assert!(garbage_reported > 0);
    // A dry run reports and keeps everything, and predicts the real run exactly.
    let dry = store.gc(&["--dry-run", "--repack-below", "100"]);
    assert_eq!(num(&dry, "orphan_packs"), 1, "{dry}");
    assert!(num(&dry, "bytes_freed") > 0, "{dry}");
    assert_eq!(num(&dry, "garbage_bytes_kept"), 0, "{dry}");
    assert_eq!(packs_bytes(&store), before);
    // Rewrite every pack with garbage in it.
    let g = store.gc(&["--repack-below", "100"]);
    for field in [
        "garbage_frames",
        "packs_deleted",
        "packs_rewritten",
        "packs_written",
        "chunks_freed",
        "bytes_copied",
        "bytes_freed",
        "orphan_packs",
        "garbage_bytes_kept",
    ] {
        assert_eq!(
            num(&dry, field),
            num(&g, field),
            "{field}: dry run {dry} vs run {g}"
        );
    }
    let freed = g["bytes_freed"].as_u64().expect("n");
    assert!(
        freed > 0 && g["chunks_freed"].as_u64().expect("n") > 0,
        "{g}"
    );
    assert!(
        g["packs_rewritten"].as_u64().expect("n") + g["packs_deleted"].as_u64().expect("n") > 0
    );
    let after = packs_bytes(&store);
    assert_eq!(after, before - freed, "{g}");
    assert_eq!(
        num(&g, "garbage_freed"),
        garbage_reported,
        "report vs gc: {g}"
    );
    for (p, r) in points[2..].iter().zip(&raws[2..]) {
        store.restore_matches(p, r, work.path());
    }
    let (clean, v) = store.verify(&[]);
    assert!(clean, "{v}");
    // A second collection finds nothing left.
    let again = store.gc(&["--repack-below", "100"]);
    assert_eq!(again["bytes_freed"], 0, "{again}");
    assert_eq!(again["garbage_frames"], 0, "{again}");
    // Forgetting everything and collecting empties the packs.
    ok(&mut store.cmd(&["forget", &points[2], &points[3]]));
    store.gc(&[]);
    assert_eq!(packs_bytes(&store), 0, "{:?}", store.pack_files());
}

#[test]
fn gc_beside_a_running_backup_keeps_every_chunk_the_backup_reuses() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let raws = series(work.path(), "64M", 12, 1, 2);
    let p0 = id(&store.backup("web", "2026-11-01T02:00:00Z", "xvda", &raws[0], &[]));
    let _p1 = id(&store.backup("web", "2026-11-02T02:00:00Z", "xvda", &raws[1], &[]));
    // Day 0's own chunks become garbage...
    ok(&mut store.cmd(&["forget", &p0]));
    // ... and a slow backup of day 0's image (another VM) reuses them while gc runs.
    let mut backup = store
        .cmd(&[
            "backup",
            "--json",
            "--vm",
            "web-clone",
            "--time",
            "2026-11-03T02:00:00Z",
            "xvda=-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = backup.stdin.take().expect("stdin");
    let image = read(&raws[0]);
    // The last piece waits until gc is blocked on the write lock the backup holds.
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let feeder = std::thread::spawn(move || {
        let pieces: Vec<&[u8]> = image.chunks(4 << 20).collect();
        let (last, rest) = pieces.split_last().expect("pieces");
        for piece in rest {
            stdin.write_all(piece).expect("feed");
        }
        wait.recv().expect("gc waits");
        stdin.write_all(last).expect("feed");
    });
    // Start gc once the backup holds the write lock.
    let lock = store.path().join("lock");
    cairn_tests::wait_until("the backup to take the lock", || {
        !std::fs::read_to_string(&lock)
            .unwrap_or_default()
            .is_empty()
    });
    let collector = store
        .cmd(&["gc", "--json", "--repack-below", "100"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gc");
    // gc plans and copies beside the backup, then asks for the write lock and waits (a blocked
    // flock shows in /proc/locks as `->` with its process id).
    let pid = collector.id().to_string();
    cairn_tests::wait_until("gc to wait for the write lock", || {
        std::fs::read_to_string("/proc/locks").is_ok_and(|l| {
            l.lines()
                .any(|line| line.contains("->") && line.split_whitespace().any(|w| w == pid))
        })
    });
    go.send(()).expect("feeder");
    feeder.join().expect("feeder");
    let out = backup.wait_with_output().expect("backup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gc_out = collector.wait_with_output().expect("gc");
    assert!(
        gc_out.status.success(),
        "{}",
        String::from_utf8_lossy(&gc_out.stderr)
    );
    let g = json(&String::from_utf8_lossy(&gc_out.stdout));
    let clone = json(&String::from_utf8_lossy(&out.stdout))[0].clone();
    // gc planned while the backup ran, and waited for it before sweeping.
    assert!(g["wait_seconds"].as_f64().expect("wait") > 0.0, "{g}");
    assert!(
        clone["known_chunks"].as_u64().expect("known") > 0,
        "{clone}"
    );
    // Nothing the clone reused was lost.
    store.restore_matches(&id(&clone), &raws[0], work.path());
    let (clean, v) = store.verify(&[]);
    assert!(clean, "{v}");
    // What gc could not take this time (day 0's chunks are live again) stays live.
    let again = store.gc(&["--repack-below", "100"]);
    assert_eq!(again["chunks_freed"], 0, "{again}");
    store.restore_matches(&id(&clone), &raws[0], work.path());
}

#[test]
fn kill_9_during_gc_loses_nothing_and_the_next_gc_finishes_the_work() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let raws = series(work.path(), "256M", 13, 1, 3);
    let points = store.daily_backups("db", &raws);
    ok(&mut store.cmd(&["forget", &points[0]]));
    let mut killed = 0;
    for delay_ms in [10u64, 40, 80, 150, 250, 400] {
        let mut child = store
            .cmd(&["gc", "--repack-below", "100"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        if !child.wait().expect("wait").success() {
            killed += 1;
        }
        // Whatever moment it died at, every kept point is whole.
        let (clean, v) = store.verify(&[]);
        assert!(clean, "after a kill at {delay_ms} ms: {v}");
        assert_eq!(store.list().len(), 2);
    }
    assert!(killed > 0, "no gc was interrupted");
    // The next collection finishes: no unindexed pack is left, and nothing more to free.
    store.gc(&["--repack-below", "100"]);
    let dry = store.gc(&["--dry-run", "--repack-below", "100"]);
    assert_eq!(dry["orphan_packs"], 0, "{dry}");
    assert_eq!(dry["bytes_freed"], 0, "{dry}");
    for (p, r) in points[1..].iter().zip(&raws[1..]) {
        store.restore_matches(p, r, work.path());
    }
}

#[test]
fn a_flipped_byte_is_found_by_verify_refused_by_restore_and_healed_by_a_key_backup() {
    let store = Store::new("256K");
    let work = tempfile::tempdir().expect("tempdir");
    let raws = series(work.path(), "64M", 14, 1, 1);
    // Two VMs hold the same image: one chunk, two points.
    let a = id(&store.backup("vm-a", "2026-11-01T02:00:00Z", "xvda", &raws[0], &[]));
    let b = id(&store.backup("vm-b", "2026-11-01T03:00:00Z", "xvdb", &raws[0], &[]));
    // A third VM of another template shares none of their chunks.
    let other = work.path().join("other.raw");
    gen_disk(&other, "16M", 97, 96, 0);
    store.backup("vm-c", "2026-11-01T04:00:00Z", "xvda", &other, &[]);
    let (clean, v) = store.verify(&[]);
    assert!(clean);
    assert_eq!(num(&v, "points_in_scope"), 3, "{v}");
    let bad = corrupt_a_data_chunk(&store);
    // verify: exit 1, names the chunk, both points, both VMs, and the disk offsets.
    let (clean, v) = store.verify(&[]);
    assert!(!clean);
    let damaged = v["damaged"].as_array().expect("damaged");
    assert_eq!(damaged.len(), 1, "{v}");
    assert_eq!(damaged[0]["chunk"], bad.as_str());
    let hit_points: Vec<&str> = damaged[0]["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|h| h["point"].as_str().expect("point"))
        .collect();
    assert!(
        hit_points.contains(&a.as_str()) && hit_points.contains(&b.as_str()),
        "{v}"
    );
    assert_eq!(v["vms_damaged"], serde_json::json!(["vm-a", "vm-b"]));
    let offset = damaged[0]["points"][0]["offsets"][0]
        .as_u64()
        .expect("offset");
    // The offset is where that chunk sits in the image.
    let image = read(&raws[0]);
    let chunk = &image[offset as usize..offset as usize + (256 << 10)];
    assert_eq!(blake3_hex(chunk), bad);
    // --vm narrows what is read, but the blast radius still names every point.
    let (clean, all) = store.verify(&[]);
    assert!(!clean);
    let (clean, v) = store.verify(&["--vm", "vm-b"]);
    assert!(!clean, "{v}");
    assert_eq!(num(&v, "points_in_scope"), 1, "{v}");
    assert!(
        num(&v, "chunks_in_scope") < num(&all, "chunks_in_scope"),
        "{v} vs {all}"
    );
    assert_eq!(v["vms_damaged"], serde_json::json!(["vm-a", "vm-b"]));
    let (clean, c) = store.verify(&["--vm", "vm-c"]);
    assert!(clean, "vm-c holds none of the damage: {c}");
    assert_eq!(num(&c, "points_in_scope"), 1, "{c}");
    // The human output names the damage too.
    let out = run(&mut store.cmd(&["verify"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&bad) && text.contains("vm-a/xvda"), "{text}");
    // restore refuses; --ignore-errors writes zeros there, lists it, and exits 3.
    let out = run(store.cmd(&["restore", &b]).arg(work.path().join("b.raw")));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&bad));
    let out = run(store
        .cmd(&["restore", &b, "--ignore-errors"])
        .arg(work.path().join("b.raw")));
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("bytes {offset}..")), "{err}");
    let got = read(&work.path().join("b.raw"));
    assert!(
        got[offset as usize..offset as usize + (256 << 10)]
            .iter()
            .all(|&x| x == 0)
    );
    // A key backup of vm-a (a full read) stores a fresh copy: both points heal.
    let k = store.backup("vm-a", "2026-11-02T02:00:00Z", "xvda", &raws[0], &["--key"]);
    assert_eq!(k["healed_chunks"], 1, "{k}");
    assert_eq!(k["key"], true);
    let (clean, v) = store.verify(&[]);
    assert!(clean, "{v}");
    store.restore_matches(&b, &raws[0], work.path());
    store.restore_matches(&a, &raws[0], work.path());
    // Rebuilding the index now (the damaged copy still in its pack) indexes the good copy and
    // lists the damaged one as garbage, whatever order the packs are read in.
    let r = json(&ok(&mut store.cmd(&[
        "repair",
        "--rebuild-index",
        "--json",
    ])));
    assert_eq!(num(&r, "duplicates"), 1, "{r}");
    let (clean, v) = store.verify(&[]);
    assert!(clean, "after the rebuild: {v}");
    store.restore_matches(&b, &raws[0], work.path());
    // The damaged frame is garbage now: gc reclaims it and everything still restores.
    let g = store.gc(&["--repack-below", "100"]);
    assert!(
        num(&g, "garbage_frames") >= 1 && num(&g, "bytes_freed") > 0,
        "the damaged copy was not reclaimed: {g}"
    );
    store.restore_matches(&b, &raws[0], work.path());
}

fn blake3_hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

#[test]
fn gc_by_default_leaves_at_most_five_percent_of_the_store_as_garbage() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let raws = series(work.path(), "16M", 21, 1, 12);
    let points = store.daily_backups("db", &raws);
    let out = run(&mut store.cmd(&["prune", "--json", "--keep-last", "3"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pruned = json(&String::from_utf8_lossy(&out.stdout));
    assert!(
        !pruned["gc_would_free"].is_null(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dry = store.gc(&["--dry-run"]);
    let g = store.gc(&[]);
    // prune said up front what gc frees.
    assert_eq!(
        num(&pruned, "gc_would_free"),
        num(&g, "bytes_freed"),
        "{pruned}"
    );
    assert_eq!(
        num(&dry, "bytes_copied"),
        num(&g, "bytes_copied"),
        "{dry} vs {g}"
    );
    let left = num(&g, "garbage_bytes_kept");
    let total = packs_bytes(&store);
    assert!(
        left * 20 <= total,
        "{left} bytes of garbage left in {total} bytes of packs: {g}"
    );
    assert!(num(&g, "bytes_freed") > 0, "{g}");
    for (p, r) in points[9..].iter().zip(&raws[9..]) {
        store.restore_matches(p, r, work.path());
    }
    let (clean, v) = store.verify(&[]);
    assert!(clean, "{v}");
}
