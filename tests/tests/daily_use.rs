//! What an admin types every day says exactly what it did: a store private to its owner, a
//! filter that matches nothing named, a run that checks every source first, forget's dry run,
//! times read in several forms and shown in one, list's filters and columns, a missing store.

use std::path::Path;

use cairn_tests::{TestStore as Store, json, ok, read, refused, run, small_disk};

#[test]
fn a_store_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let src = small_disk(work.path(), "a.raw", 3);
    ok(&mut store.cmd(&[
        "backup",
        "--vm",
        "web01",
        &format!("xvda={}", src.display()),
    ]));
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&store.path()), 0o700, "the store folder");
    for p in store.pack_files() {
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    let root = cairn_tests::files_under(&store.path().join("points"));
    assert!(!root.is_empty());
    for p in root.iter().chain([&store.path().join("cairn.toml")]) {
        assert_eq!(mode(p), 0o600, "{}", p.display());
    }
}

#[test]
fn a_filter_that_matches_nothing_is_an_error_naming_what_exists() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let src = small_disk(work.path(), "a.raw", 4);
    ok(&mut store.cmd(&[
        "backup",
        "--vm",
        "web01",
        &format!("xvda={}", src.display()),
    ]));
    for args in [
        &["verify", "--vm", "web1"][..],
        &["prune", "--vm", "web1", "--keep-last", "1", "--dry-run"],
        &["list", "--vm", "web1"],
    ] {
        let out = run(&mut store.cmd(args));
        refused(&out, &["no point matches --vm \"web1\"", "VMs: web01"]);
    }
    let out = run(&mut store.cmd(&[
        "prune",
        "--vm",
        "web01",
        "--disk",
        "xvdb",
        "--keep-last",
        "1",
    ]));
    refused(&out, &["--disk \"xvdb\"", "disks: xvda"]);
    let out = run(&mut store.cmd(&["prune", "--keep-daily", "0"]));
    refused(&out, &["at least one --keep-* rule"]);
    assert_eq!(store.list().len(), 1);
}

#[test]
fn a_run_checks_every_source_first_and_says_exactly_what_it_stored() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let a = small_disk(w, "a.raw", 5);
    let missing = w.join("missing.raw");
    // A missing source and a disk named twice: refused before anything is read.
    let out = run(store.cmd(&["backup", "--vm", "multi"]).args([
        format!("xvda={}", a.display()),
        format!("xvdb={}", missing.display()),
        format!("xvda={}", a.display()),
    ]));
    refused(
        &out,
        &[
            "nothing was backed up",
            "missing.raw",
            "disk \"xvda\" is given twice",
        ],
    );
    assert!(store.list().is_empty());
    // A source that fails while it is read (a damaged VHD, the second disk): the run is
    // published whole or not at all, so nothing is stored, and the packs written for the first
    // disk are gone.
    let bad = w.join("bad.vhd");
    ok(cairn_tests::cairn(["vhd", "from-raw"]).arg(&a).arg(&bad));
    let mut bytes = read(&bad);
    bytes[512 + 20] ^= 4;
    std::fs::write(&bad, &bytes).expect("write");
    let out = run(store.cmd(&["backup", "--json", "--vm", "multi"]).args([
        format!("xvda={}", a.display()),
        format!("xvdb={}", bad.display()),
    ]));
    refused(
        &out,
        &["multi/xvdb", "bad.vhd", "nothing was stored", "together"],
    );
    // Standard output holds the error, not a point.
    let said = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(said["kind"], "error", "{said}");
    assert!(store.list().is_empty());
    assert!(store.pack_files().is_empty(), "{:?}", store.pack_files());
    // Both good: one run, both points under one run id and one time.
    let b = small_disk(w, "b.raw", 6);
    let out = json(&ok(store.cmd(&["backup", "--json", "--vm", "multi"]).args(
        [
            format!("xvda={}", a.display()),
            format!("xvdb={}", b.display()),
        ],
    )));
    let points = out.as_array().expect("array");
    assert_eq!(points.len(), 2);
    assert_eq!(points[0]["run"], points[1]["run"]);
    assert!(points[0]["run"].is_string());
    assert_eq!(store.list().len(), 2);
}

#[test]
fn forget_has_a_dry_run_and_sizes_read_the_same_everywhere() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let a = small_disk(work.path(), "a.raw", 6);
    ok(&mut store.cmd(&["backup", "--vm", "web01", &format!("xvda={}", a.display())]));
    let text = ok(&mut store.cmd(&["forget", "--dry-run", "web01/xvda@latest"]));
    assert!(text.contains("would forget"), "{text}");
    assert_eq!(store.list().len(), 1, "a dry run forgot");
    let text = ok(&mut store.cmd(&["prune", "--dry-run", "--keep-last", "1"]));
    assert!(text.contains("remove 0 points"), "{text}");
    // --block-size takes the sizes --chunk-size takes.
    let vhd = work.path().join("a.vhd");
    ok(
        cairn_tests::cairn(["vhd", "from-raw", "--block-size", "512K"])
            .arg(&a)
            .arg(&vhd),
    );
    let info = json(&ok(cairn_tests::cairn(["vhd", "info", "--json"]).arg(&vhd)));
    assert_eq!(info["header"]["block_size"], 512 << 10, "{info}");
}

#[test]
fn times_are_read_in_several_forms_and_shown_in_one() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let a = small_disk(work.path(), "a.raw", 8);
    let src = format!("xvda={}", a.display());
    let text = ok(&mut store.cmd(&["backup", "--vm", "web01", "--time", "2026-11-22", &src]));
    assert!(text.contains(" 2026-11-22T00:00:00Z: "), "{text}");
    let text = ok(&mut store.cmd(&[
        "backup",
        "--vm",
        "web01",
        "--time",
        "2026-11-22T03:04:05",
        &src,
    ]));
    assert!(text.contains(" 2026-11-22T03:04:05Z: "), "{text}");
    ok(&mut store.cmd(&[
        "backup",
        "--vm",
        "web01",
        "--time",
        "2026-11-22T05:00:00+02:00",
        &src,
    ]));
    let times: Vec<String> = store
        .list()
        .iter()
        .map(|p| p["time"].as_str().expect("time").to_owned())
        .collect();
    assert_eq!(
        times,
        [
            "2026-11-22T00:00:00Z",
            "2026-11-22T03:00:00Z",
            "2026-11-22T03:04:05Z"
        ]
    );
    let listed = ok(&mut store.cmd(&["list"]));
    assert!(listed.contains("2026-11-22T03:04:05Z"), "{listed}");
    // In a store in Paris time, times show with Paris's offset and are read in it.
    ok(&mut store.cmd(&["policy", "timezone", "Europe/Paris"]));
    let text = ok(store
        .cmd(&[
            "backup",
            "--vm",
            "web01",
            "--time",
            "2026-11-21T03:00",
            &src,
        ])
        .env("TZ", "Asia/Tokyo"));
    assert!(text.contains(" 2026-11-21T03:00:00+01:00: "), "{text}");
    let times: Vec<String> = store
        .list()
        .iter()
        .map(|p| p["time"].as_str().expect("time").to_owned())
        .collect();
    assert_eq!(times[3], "2026-11-22T04:04:05+01:00");
    assert_eq!(times[0], "2026-11-21T03:00:00+01:00");
    // @DATETIME without a zone is Paris time too: 04:00 there is before 03:04:05Z.
    let v = json(&ok(&mut store.cmd(&[
        "diff",
        "--json",
        "web01/xvda@2026-11-22T04:00",
        "web01/xvda@latest",
    ])));
    assert_eq!(v["from_time"], "2026-11-22T04:00:00+01:00", "{v}");
    // A typo in the year: refused, unless forced.
    let out = run(&mut store.cmd(&["backup", "--vm", "web01", "--time", "2062-11-22", &src]));
    refused(&out, &["in the future", "--force"]);
    let out = run(&mut store.cmd(&["backup", "--vm", "web01", "--time", "22/11/2026", &src]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("2026-11-22T02:00:00Z"),
        "the accepted forms are named: {err}"
    );
}

#[test]
fn list_filters_by_disk_age_and_count_and_sizes_its_columns_to_the_names() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let a = small_disk(work.path(), "a.raw", 9);
    let src = format!("xvda={}", a.display());
    let srcb = format!("xvdb={}", a.display());
    let long = "database-server-with-a-long-name-01";
    ok(&mut store.cmd(&["backup", "--vm", "web01", "--time", "2026-10-01", &src]));
    ok(&mut store.cmd(&["backup", "--vm", "web01", &src]));
    ok(&mut store.cmd(&["backup", "--vm", "web01", &srcb]));
    ok(&mut store.cmd(&["backup", "--vm", long, &src]));
    let count = |args: &[&str]| -> usize {
        let mut c = store.cmd(&["list", "--json"]);
        c.args(args);
        json(&ok(&mut c)).as_array().map_or(0, Vec::len)
    };
    assert_eq!(count(&[]), 4);
    assert_eq!(count(&["--disk", "xvdb"]), 1);
    assert_eq!(count(&["--vm", "web01", "--disk", "xvda"]), 2);
    assert_eq!(count(&["--since", "7d"]), 3);
    assert_eq!(
        count(&["--last", "1"]),
        3,
        "the newest of each of three disks"
    );
    // The table stays a table with a long name: every TIME starts under the header's.
    let text = ok(&mut store.cmd(&["list"]));
    let header = text.lines().next().expect("header");
    let col = header.find("TIME").expect("TIME column");
    let rows = text.lines().skip(1).filter(|l| {
        l.get(..12)
            .is_some_and(|id| id.bytes().all(|b| b.is_ascii_hexdigit()))
    });
    for line in rows {
        assert_eq!(line.get(col..col + 4), Some("2026"), "misaligned:\n{text}");
    }
    assert!(text.contains(long), "{text}");
}

#[test]
fn a_missing_store_names_both_ways_to_give_it() {
    let out = cairn_tests::cairn(["list"])
        .env_remove("CAIRN_STORE")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--store") && err.contains("CAIRN_STORE"),
        "{err}"
    );
}
