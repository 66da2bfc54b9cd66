//! Retention, garbage collection, verify and heal, end to end through the `cairn` binary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cairn_tests::{
    TestStore as Store, assert_same_content, corrupt_a_data_chunk, gen_disk, id, json, num, ok,
    read, run,
};

fn days(dir: &Path, size: &str, seed: u32, n: u32) -> Vec<PathBuf> {
    (0..n)
        .map(|d| {
            let p = dir.join(format!("vm{seed}-{size}-day{d}.raw"));
            gen_disk(&p, size, seed, 1, d);
            p
        })
        .collect()
}

/// Backs up `raws` as one disk of `vm`, a day apart from 2026-11-01; returns the point ids.
fn daily_backups(store: &Store, vm: &str, raws: &[PathBuf]) -> Vec<String> {
    raws.iter()
        .enumerate()
        .map(|(d, r)| {
            let time = format!("2026-11-{:02}T02:00:00Z", d + 1);
            id(&store.backup(vm, &time, "xvda", r, &[]))
        })
        .collect()
}

fn packs_bytes(store: &Store) -> u64 {
    store
        .pack_files()
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum()
}

fn gc(store: &Store, extra: &[&str]) -> serde_json::Value {
    let mut c = store.cmd(&["gc", "--json"]);
    c.args(extra);
    json(&ok(&mut c))
}

fn verify(store: &Store, extra: &[&str]) -> (bool, serde_json::Value) {
    let mut c = store.cmd(&["verify", "--json"]);
    c.args(extra);
    let out = run(&mut c);
    (
        out.status.success(),
        json(&String::from_utf8_lossy(&out.stdout)),
    )
}

fn restore_matches(store: &Store, point: &str, want: &Path, work: &Path) {
    let out = work.join(format!("restored-{point}.raw"));
    store.restore(point, &out, "raw");
    assert_same_content(&out, want, true);
    std::fs::remove_file(out).expect("remove");
}

#[test]
fn prune_keeps_by_rules_in_the_stores_time_zone_and_never_removes_protected_points() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let raw = work.path().join("small.raw");
    gen_disk(&raw, "4M", 5, 1, 0);
    let times = [
        "2024-06-01T12:00:00Z",
        "2024-12-31T21:00:00Z", // 23:00 on Dec 31 at UTC+2
        "2024-12-31T23:00:00Z", // 01:00 on Jan 1 at UTC+2
        "2025-06-01T12:00:00Z",
    ];
    let ids: Vec<String> = times
        .iter()
        .map(|t| id(&store.backup("app", t, "xvda", &raw, &[])))
        .collect();
    // The store's zone counts, never the shell's TZ: cron and an interactive dry run agree.
    let plan = |tz: &str, rules: &[&str]| -> Vec<(String, Option<String>)> {
        ok(&mut store.cmd(&["policy", "timezone", tz]));
        let mut c = store.cmd(&["prune", "--dry-run", "--json"]);
        c.args(rules).env("TZ", "America/New_York");
        let v = json(&ok(&mut c));
        let mut out: Vec<(String, Option<String>)> = v["points"]
            .as_array()
            .expect("points")
            .iter()
            .map(|p| (id(p), p["reason"].as_str().map(str::to_owned)))
            .collect();
        out.sort_by_key(|(i, _)| ids.iter().position(|x| x == i));
        out
    };
    let reasons = |v: Vec<(String, Option<String>)>| -> Vec<Option<String>> {
        v.into_iter().map(|(_, r)| r).collect()
    };
    let y = Some("keep-yearly".to_owned());
    // In UTC the two December points are both in 2024: the later one is the year's.
    assert_eq!(
        reasons(plan("UTC", &["--keep-yearly", "5"])),
        [None, None, y.clone(), y.clone()]
    );
    // At UTC+2 the later one falls in 2025 and loses to June; Dec 31 21:00Z is 2024's newest.
    assert_eq!(
        reasons(plan("Etc/GMT-2", &["--keep-yearly", "5"])),
        [None, y.clone(), None, y.clone()]
    );
    // A dry run changed nothing.
    assert_eq!(store.list().len(), 4);

    // Protect the oldest point: keep-last 1 then removes the two in between only.
    ok(&mut store.cmd(&["protect", &ids[0][..12]]));
    let v = json(&ok(&mut store.cmd(&[
        "prune",
        "--keep-last",
        "1",
        "--json",
    ])));
    assert_eq!(v["removed"], 2);
    let left: Vec<String> = store.list().iter().map(id).collect();
    assert_eq!(left, [ids[0].clone(), ids[3].clone()]);
    assert_eq!(store.list()[0]["protected"], true);
    // Forgetting a protected point is refused, naming it; after unprotect it works.
    let out = run(&mut store.cmd(&["forget", &ids[0]]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("protected"));
    ok(&mut store.cmd(&["unprotect", &ids[0]]));
    ok(&mut store.cmd(&["forget", &ids[0]]));
    assert_eq!(store.list().len(), 1);
    // Prune without a rule is refused: it would remove everything.
    assert!(!run(&mut store.cmd(&["prune"])).status.success());
    let (clean, _) = verify(&store, &[]);
    assert!(clean);
}

#[test]
fn gc_frees_the_space_of_dropped_points_and_kept_points_restore_bit_exact() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let raws = days(work.path(), "64M", 11, 4);
    let points = daily_backups(&store, "db", &raws);
    let before = packs_bytes(&store);
    // Nothing to free yet.
    let g = gc(&store, &[]);
    assert_eq!(g["bytes_freed"], 0, "{g}");
    // Drop the first two days: only metadata changes, no pack is touched.
    let f = json(&ok(
        &mut store.cmd(&["forget", "--json", &points[0], &points[1]])
    ));
    assert!(f["chunks_unreferenced"].as_u64().expect("n") > 0, "{f}");
    assert_eq!(packs_bytes(&store), before, "forget must not touch packs");
    // Under a threshold of 0 no pack is worth rewriting: only wholly dead packs go, and the
    // rest of the garbage is kept (and said so).
    let dry0 = gc(&store, &["--dry-run", "--repack-below", "0"]);
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
    let dry = gc(&store, &["--dry-run", "--repack-below", "100"]);
    assert_eq!(num(&dry, "orphan_packs"), 1, "{dry}");
    assert!(num(&dry, "bytes_freed") > 0, "{dry}");
    assert_eq!(num(&dry, "garbage_bytes_kept"), 0, "{dry}");
    assert_eq!(packs_bytes(&store), before);
    // Rewrite every pack with garbage in it.
    let g = gc(&store, &["--repack-below", "100"]);
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
        restore_matches(&store, p, r, work.path());
    }
    let (clean, v) = verify(&store, &[]);
    assert!(clean, "{v}");
    // A second collection finds nothing left.
    let again = gc(&store, &["--repack-below", "100"]);
    assert_eq!(again["bytes_freed"], 0, "{again}");
    assert_eq!(again["garbage_frames"], 0, "{again}");
    // Forgetting everything and collecting empties the packs.
    ok(&mut store.cmd(&["forget", &points[2], &points[3]]));
    gc(&store, &[]);
    assert_eq!(packs_bytes(&store), 0, "{:?}", store.pack_files());
}

#[test]
fn gc_beside_a_running_backup_keeps_every_chunk_the_backup_reuses() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let raws = days(work.path(), "64M", 12, 2);
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
    restore_matches(&store, &id(&clone), &raws[0], work.path());
    let (clean, v) = verify(&store, &[]);
    assert!(clean, "{v}");
    // What gc could not take this time (day 0's chunks are live again) stays live.
    let again = gc(&store, &["--repack-below", "100"]);
    assert_eq!(again["chunks_freed"], 0, "{again}");
    restore_matches(&store, &id(&clone), &raws[0], work.path());
}

#[test]
fn kill_9_during_gc_loses_nothing_and_the_next_gc_finishes_the_work() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let raws = days(work.path(), "256M", 13, 3);
    let points = daily_backups(&store, "db", &raws);
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
        let (clean, v) = verify(&store, &[]);
        assert!(clean, "after a kill at {delay_ms} ms: {v}");
        assert_eq!(store.list().len(), 2);
    }
    assert!(killed > 0, "no gc was interrupted");
    // The next collection finishes: no unindexed pack is left, and nothing more to free.
    gc(&store, &["--repack-below", "100"]);
    let dry = gc(&store, &["--dry-run", "--repack-below", "100"]);
    assert_eq!(dry["orphan_packs"], 0, "{dry}");
    assert_eq!(dry["bytes_freed"], 0, "{dry}");
    for (p, r) in points[1..].iter().zip(&raws[1..]) {
        restore_matches(&store, p, r, work.path());
    }
}

#[test]
fn a_flipped_byte_is_found_by_verify_refused_by_restore_and_healed_by_a_key_backup() {
    let store = Store::new("256K");
    let work = tempfile::tempdir().expect("tempdir");
    let raws = days(work.path(), "64M", 14, 1);
    // Two VMs hold the same image: one chunk, two points.
    let a = id(&store.backup("vm-a", "2026-11-01T02:00:00Z", "xvda", &raws[0], &[]));
    let b = id(&store.backup("vm-b", "2026-11-01T03:00:00Z", "xvdb", &raws[0], &[]));
    // A third VM of another template shares none of their chunks.
    let other = work.path().join("other.raw");
    gen_disk(&other, "16M", 97, 96, 0);
    store.backup("vm-c", "2026-11-01T04:00:00Z", "xvda", &other, &[]);
    let (clean, v) = verify(&store, &[]);
    assert!(clean);
    assert_eq!(num(&v, "points_in_scope"), 3, "{v}");
    let bad = corrupt_a_data_chunk(&store);
    // verify: exit 1, names the chunk, both points, both VMs, and the disk offsets.
    let (clean, v) = verify(&store, &[]);
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
    let (clean, all) = verify(&store, &[]);
    assert!(!clean);
    let (clean, v) = verify(&store, &["--vm", "vm-b"]);
    assert!(!clean, "{v}");
    assert_eq!(num(&v, "points_in_scope"), 1, "{v}");
    assert!(
        num(&v, "chunks_in_scope") < num(&all, "chunks_in_scope"),
        "{v} vs {all}"
    );
    assert_eq!(v["vms_damaged"], serde_json::json!(["vm-a", "vm-b"]));
    let (clean, c) = verify(&store, &["--vm", "vm-c"]);
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
    let (clean, v) = verify(&store, &[]);
    assert!(clean, "{v}");
    restore_matches(&store, &b, &raws[0], work.path());
    restore_matches(&store, &a, &raws[0], work.path());
    // Rebuilding the index now (the damaged copy still in its pack) indexes the good copy and
    // lists the damaged one as garbage, whatever order the packs are read in.
    let r = json(&ok(&mut store.cmd(&[
        "repair",
        "--rebuild-index",
        "--json",
    ])));
    assert_eq!(num(&r, "duplicates"), 1, "{r}");
    let (clean, v) = verify(&store, &[]);
    assert!(clean, "after the rebuild: {v}");
    restore_matches(&store, &b, &raws[0], work.path());
    // The damaged frame is garbage now: gc reclaims it and everything still restores.
    let g = gc(&store, &["--repack-below", "100"]);
    assert!(
        num(&g, "garbage_frames") >= 1 && num(&g, "bytes_freed") > 0,
        "the damaged copy was not reclaimed: {g}"
    );
    restore_matches(&store, &b, &raws[0], work.path());
}

fn blake3_hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

#[test]
fn key_interval_makes_every_nth_backup_a_full_read_through_the_vhd_chain() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let raws = days(work.path(), "32M", 15, 4);
    // A chain of VHDs as a hypervisor exports them: a base, then differencing VHDs.
    let vhd = |i: usize| work.path().join(format!("d{i}.vhd"));
    ok(cairn_tests::cairn(["vhd", "from-raw"])
        .arg(&raws[0])
        .arg(vhd(0)));
    for (i, raw) in raws.iter().enumerate().skip(1) {
        ok(cairn_tests::cairn(["vhd", "from-raw", "--parent"])
            .arg(vhd(i - 1))
            .arg(raw)
            .arg(vhd(i)));
    }
    ok(&mut store.cmd(&["policy", "set", "--vm", "app", "--key-interval", "2"]));
    let shown = ok(&mut store.cmd(&["policy", "show", "--json"]));
    assert_eq!(json(&shown)["vms"]["app"]["key_interval"], 2);
    let mut keys = Vec::new();
    for (i, raw) in raws.iter().enumerate() {
        let p = store.backup(
            "app",
            &format!("2026-11-0{}T02:00:00Z", i + 1),
            "xvda",
            &vhd(i),
            &[],
        );
        keys.push(p["key"].as_bool().expect("key"));
        restore_matches(&store, &id(&p), raw, work.path());
    }
    // The base is a full read; then every 2nd backup reads the whole chain.
    assert_eq!(keys, [true, false, true, false]);
    // Without its parents a due key backup falls back to the delta and says so.
    let raw4 = work.path().join("day4.raw");
    gen_disk(&raw4, "32M", 15, 1, 4);
    ok(cairn_tests::cairn(["vhd", "from-raw", "--parent"])
        .arg(vhd(3))
        .arg(&raw4)
        .arg(vhd(4)));
    std::fs::rename(vhd(3), work.path().join("d3.moved")).expect("rename");
    let out = run(store
        .cmd(&[
            "backup",
            "--json",
            "--vm",
            "app",
            "--time",
            "2026-11-05T02:00:00Z",
        ])
        .arg(format!("xvda={}", vhd(4).display())));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("was due"));
    let p = json(&String::from_utf8_lossy(&out.stdout))[0].clone();
    assert_eq!(p["key"], false, "{p}");
    restore_matches(&store, &id(&p), &raw4, work.path());
    // --key on a delta whose parents are gone fails clearly and stores nothing.
    let n = store.list().len();
    let out = run(store
        .cmd(&[
            "backup",
            "--key",
            "--vm",
            "app",
            "--time",
            "2026-11-06T02:00:00Z",
        ])
        .arg(format!("xvda={}", vhd(4).display())));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("key backup") && err.contains("d3.vhd"),
        "{err}"
    );
    assert_eq!(store.list().len(), n);
}

#[test]
fn nobak_disks_are_skipped_and_one_vm_run_is_listed_together() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let a = work.path().join("a.raw");
    let b = work.path().join("b.raw");
    gen_disk(&a, "4M", 16, 1, 0);
    gen_disk(&b, "4M", 17, 1, 0);
    let out = run(store
        .cmd(&[
            "backup",
            "--json",
            "--vm",
            "web",
            "--time",
            "2026-11-01T02:00:00Z",
        ])
        .arg(format!("xvda={}", a.display()))
        .arg(format!("[NOBAK] scratch={}", b.display()))
        .arg(format!("[NOBAK]swap={}", b.display()))
        .arg(format!("xvdb={}", b.display())));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("skipping disk \"scratch\"") && err.contains("skipping disk \"swap\""),
        "{err}"
    );
    let points = store.list();
    let disks: Vec<&str> = points
        .iter()
        .map(|p| p["disk"].as_str().expect("disk"))
        .collect();
    assert_eq!(disks, ["xvda", "xvdb"]);
    assert!(points[0]["run"].is_string());
    assert_eq!(points[0]["run"], points[1]["run"]);
    let text = ok(&mut store.cmd(&["list"]));
    let run_id = &points[0]["run"].as_str().expect("run")[..8];
    assert_eq!(text.matches(run_id).count(), 2, "{text}");
}

#[test]
fn gc_by_default_leaves_at_most_five_percent_of_the_store_as_garbage() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let raws = days(work.path(), "16M", 21, 12);
    let points = daily_backups(&store, "db", &raws);
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
    let dry = gc(&store, &["--dry-run"]);
    let g = gc(&store, &[]);
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
        restore_matches(&store, p, r, work.path());
    }
    let (clean, v) = verify(&store, &[]);
    assert!(clean, "{v}");
}

#[test]
fn a_dry_run_says_what_the_removal_would_free_and_gc_then_frees_it() {
    let store = Store::new("256K");
    let work = tempfile::tempdir().expect("tempdir");
    let raws = days(work.path(), "64M", 23, 4);
    let ids = daily_backups(&store, "vm", &raws);
    // Another VM shares the first day's chunks: they are not the removal's to free.
    store.backup("twin", "2026-11-01T03:00:00Z", "xvda", &raws[0], &[]);
    let packs = store.pack_files().len() as u64;
    let plan = json(&ok(&mut store.cmd(&[
        "prune",
        "--json",
        "--dry-run",
        "--vm",
        "vm",
        "--keep-last",
        "1",
    ])));
    let would = num(&plan, "would_free_bytes");
    assert!(would > 0 && num(&plan, "would_free_chunks") > 0, "{plan}");
    // forget --dry-run of the same points says the same.
    let mut c = store.cmd(&["forget", "--dry-run", "--json"]);
    c.args(&ids[..3]);
    assert_eq!(num(&json(&ok(&mut c)), "would_free_bytes"), would);
    // A dry run changes nothing; the real prune and a full repack free that many bytes (the
    // frames; a rewritten pack may lose its 32-byte header too).
    assert_eq!(store.list().len(), 5);
    ok(&mut store.cmd(&["prune", "--vm", "vm", "--keep-last", "1"]));
    let g = gc(&store, &["--repack-below", "100"]);
    let freed = num(&g, "bytes_freed");
    assert!(
        freed >= would && freed - would <= 32 * packs,
        "the dry run said {would}, gc freed {freed}"
    );
    restore_matches(&store, &ids[3], &raws[3], work.path());
}

/// `--keep-within` counts back from the disk's newest point, not from now: points of November
/// 2026 pruned weeks later with `--keep-within 2d` keep the newest two days and the point
/// exactly two days before the newest; a duration that is not one is a usage error.
#[test]
fn keep_within_counts_back_from_the_newest_point() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let raws = days(work.path(), "1M", 7, 5);
    let points = daily_backups(&store, "vm", &raws);
    let plan = json(&ok(&mut store.cmd(&[
        "prune",
        "--dry-run",
        "--json",
        "--keep-within",
        "2d",
    ])));
    let kept: Vec<String> = plan["points"]
        .as_array()
        .expect("points")
        .iter()
        .filter(|p| p["keep"] == true)
        .map(|p| {
            assert_eq!(p["reason"], "keep-within", "{p}");
            id(p)
        })
        .collect();
    assert_eq!(kept.len(), 3, "{plan}");
    for p in &points[2..] {
        assert!(kept.contains(p), "{p} not kept: {plan}");
    }
    let out = run(&mut store.cmd(&["prune", "--keep-within", "soon"]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
