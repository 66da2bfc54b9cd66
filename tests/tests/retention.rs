//! Retention end to end through the `cairn` binary: prune by rules in the store's time zone
//! (protected points never removed), what a dry run would free, keep-within, key backups every
//! Nth, `[NOBAK]` disks. Collection, verify and heal are `collection.rs`.

use cairn_tests::{TestStore as Store, gen_disk, id, json, num, ok, run, series};

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
    let (clean, _) = store.verify(&[]);
    assert!(clean);
}

#[test]
fn key_interval_makes_every_nth_backup_a_full_read_through_the_vhd_chain() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let raws = series(work.path(), "32M", 15, 1, 4);
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
        store.restore_matches(&id(&p), raw, work.path());
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
    store.restore_matches(&id(&p), &raw4, work.path());
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
fn a_dry_run_says_what_the_removal_would_free_and_gc_then_frees_it() {
    let store = Store::new("256K");
    let work = tempfile::tempdir().expect("tempdir");
    let raws = series(work.path(), "64M", 23, 1, 4);
    let ids = store.daily_backups("vm", &raws);
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
    let g = store.gc(&["--repack-below", "100"]);
    let freed = num(&g, "bytes_freed");
    assert!(
        freed >= would && freed - would <= 32 * packs,
        "the dry run said {would}, gc freed {freed}"
    );
    store.restore_matches(&ids[3], &raws[3], work.path());
}

/// `--keep-within` counts back from the disk's newest point, not from now: points of November
/// 2026 pruned weeks later with `--keep-within 2d` keep the newest two days and the point
/// exactly two days before the newest; a duration that is not one is a usage error.
#[test]
fn keep_within_counts_back_from_the_newest_point() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let raws = series(work.path(), "1M", 7, 1, 5);
    let points = store.daily_backups("vm", &raws);
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
