//! Restores never destroy or mislead: data and JSON never share stdout; an existing file is
//! kept unless `--force`, and a failed restore leaves it untouched and leaves no file that looks
//! like a result; a missing folder is named; binary data never goes to a terminal; a chain goes
//! into a new or empty folder, its file names sort in chain order, and it starts where asked.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use cairn_tests::{TestStore as Store, assert_same_content, gen_disk, id, json, ok, read, run};

fn disk(dir: &Path, name: &str, seed: u32, day: u32) -> PathBuf {
    let p = dir.join(name);
    gen_disk(&p, "16M", seed, 7, day);
    p
}

/// Every entry of a folder (names), sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Flips a byte in the middle of the biggest pack: a restore of the point then fails.
fn damage_biggest_pack(store: &Store) {
    let pack = store
        .pack_files()
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a pack");
    let mut bytes = read(&pack);
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&pack, &bytes).expect("write");
}

#[test]
fn json_and_data_never_share_stdout() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let src = disk(work.path(), "a.raw", 1, 0);
    let p = id(&store.backup("vm", "2026-11-01T02:00:00Z", "xvda", &src, &[]));
    let out = store
        .cmd(&["restore", "--json", &p, "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    assert!(out.status.success());
    assert_eq!(
        out.stdout,
        read(&src),
        "stdout holds exactly the disk image"
    );
    let summary = json(&String::from_utf8_lossy(&out.stderr));
    assert_eq!(summary["point"], p.as_str());
}

#[test]
fn an_existing_file_is_kept_unless_forced_and_a_failed_restore_leaves_nothing() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let src = disk(w, "a.raw", 2, 0);
    let p = id(&store.backup("vm", "2026-11-01T02:00:00Z", "xvda", &src, &[]));
    // An existing file: refused, untouched.
    let target = w.join("notes.txt");
    std::fs::write(&target, b"a good copy of something").expect("write");
    let out = run(store.cmd(&["restore", &p]).arg(&target));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exists") && err.contains("--force"), "{err}");
    assert_eq!(read(&target), b"a good copy of something");
    // With --force it is replaced by the restore.
    ok(store.cmd(&["restore", "--force", &p]).arg(&target));
    assert_same_content(&target, &src, true);
    // A missing folder is named, not created.
    let deep = w.join("no/such/folder/disk.raw");
    let out = run(store.cmd(&["restore", &p]).arg(&deep));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&w.join("no/such/folder").display().to_string()),
        "{err}"
    );
    assert!(!w.join("no").exists());
    // A restore that fails (a damaged chunk): the good copy is untouched, and no new file, nor
    // a temporary one, is left.
    let good = w.join("good.raw");
    std::fs::copy(&src, &good).expect("copy");
    let before = entries(w);
    damage_biggest_pack(&store);
    for (args, out_path) in [
        (vec!["restore", "--force", p.as_str()], good.clone()),
        (vec!["restore", p.as_str()], w.join("new.raw")),
        (
            vec!["restore", "--format", "vhd", p.as_str()],
            w.join("new.vhd"),
        ),
    ] {
        let out = run(store.cmd(&args).arg(&out_path));
        assert!(
            !out.status.success(),
            "{args:?} succeeded on a damaged store"
        );
        assert_eq!(entries(w), before, "{args:?} left a file behind");
    }
    assert_same_content(&good, &src, true);
}

#[test]
fn binary_output_to_a_terminal_is_refused() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let src = disk(work.path(), "a.raw", 3, 0);
    let p = id(&store.backup("vm", "2026-11-01T02:00:00Z", "xvda", &src, &[]));
    let (status, text) = store.on_a_terminal(&format!("restore {p} -"));
    assert!(!status.success(), "{text}");
    assert!(text.contains("terminal"), "{text}");
    assert!(text.len() < 4096, "disk bytes reached the terminal");
}

#[test]
fn a_chain_goes_into_a_new_or_empty_folder_in_chain_order_from_where_asked() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    // Day 0 full, then two differencing VHDs made in the same second (ids decide nothing:
    // the chain's order is the points' order).
    let days: Vec<PathBuf> = (0..3)
        .map(|d| disk(w, &format!("d{d}.raw"), 4, d))
        .collect();
    let base = w.join("d0.vhd");
    ok(cairn_tests::cairn(["vhd", "from-raw"])
        .arg(&days[0])
        .arg(&base));
    let d1 = w.join("d1.vhd");
    ok(cairn_tests::cairn(["vhd", "from-raw"])
        .arg(&days[1])
        .arg(&d1)
        .arg("--parent")
        .arg(&base));
    let d2 = w.join("d2.vhd");
    ok(cairn_tests::cairn(["vhd", "from-raw"])
        .arg(&days[2])
        .arg(&d2)
        .arg("--parent")
        .arg(&d1));
    let p0 = id(&store.backup("vm", "2026-11-01T02:00:00.100Z", "xvda", &base, &[]));
    let p1 = id(&store.backup("vm", "2026-11-01T02:00:00.200Z", "xvda", &d1, &[]));
    let p2 = id(&store.backup("vm", "2026-11-01T02:00:00.300Z", "xvda", &d2, &[]));
    // By default from the newest key backup (day 0 here): three files, name order = chain.
    let chain = w.join("chain");
    ok(store
        .cmd(&["restore", &p2, "--format", "vhd-chain"])
        .arg(&chain));
    let names = entries(&chain);
    assert_eq!(names.len(), 3, "{names:?}");
    for (name, p) in names.iter().zip([&p0, &p1, &p2]) {
        assert!(name.contains(&p[..12]), "{names:?} out of chain order");
    }
    let top = chain.join(names.last().expect("top"));
    let raw = w.join("top.raw");
    ok(cairn_tests::cairn(["vhd", "to-raw"]).arg(&top).arg(&raw));
    assert_same_content(&raw, &days[2], true);
    // The same folder again: refused, nothing changed; --force writes into it.
    let out = run(store
        .cmd(&["restore", &p2, "--format", "vhd-chain"])
        .arg(&chain));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    assert_eq!(entries(&chain), names);
    // --from a later point: a shorter chain.
    let short = w.join("short");
    ok(store
        .cmd(&["restore", &p2, "--format", "vhd-chain", "--from", &p1])
        .arg(&short));
    let short_names = entries(&short);
    assert_eq!(short_names.len(), 2, "{short_names:?}");
    let raw2 = w.join("short.raw");
    ok(cairn_tests::cairn(["vhd", "to-raw"])
        .arg(short.join(&short_names[1]))
        .arg(&raw2));
    assert_same_content(&raw2, &days[2], true);
    // A folder whose parent is missing is named.
    let lost = w.join("missing/chain");
    let out = run(store
        .cmd(&["restore", &p2, "--format", "vhd-chain"])
        .arg(&lost));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&w.join("missing").display().to_string())
    );
    // A failed chain restore into a new folder leaves no folder.
    damage_biggest_pack(&store);
    let failed = w.join("failed");
    let out = run(store
        .cmd(&["restore", &p2, "--format", "vhd-chain"])
        .arg(&failed));
    assert!(!out.status.success());
    assert!(!failed.exists(), "{:?}", entries(&failed));
}

#[test]
fn points_are_named_by_date_by_position_and_by_the_uuid_of_their_vhd() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let days: Vec<PathBuf> = (0..3)
        .map(|d| disk(w, &format!("n{d}.raw"), 5, d))
        .collect();
    for (d, src) in days.iter().enumerate() {
        let time = format!("2026-11-2{d}T02:00:00Z");
        store.backup("web01", &time, "xvda", src, &[]);
    }
    for (name, want) in [
        ("web01/xvda@latest", &days[2]),
        ("web01/xvda@latest~1", &days[1]),
        ("web01/xvda@latest~2", &days[0]),
        ("web01/xvda@2026-11-21", &days[1]),
        ("web01/xvda@2026-11-21T01:00:00Z", &days[0]),
    ] {
        let out = w.join("named.raw");
        store.restore(name, &out, "raw");
        assert_same_content(&out, want, true);
    }
    // The UUID cairn writes into a restored VHD names its point.
    let vhd = w.join("x.vhd");
    store.restore("web01/xvda@latest~1", &vhd, "vhd");
    let info = json(&ok(cairn_tests::cairn(["vhd", "info", "--json"]).arg(&vhd)));
    let uuid = info["uuid"].as_str().expect("uuid").to_owned();
    assert!(uuid.contains('-'), "{uuid}");
    let out = w.join("by-uuid.raw");
    store.restore(&uuid, &out, "raw");
    assert_same_content(&out, &days[1], true);
    // Before the first point: a message, not a guess.
    let out = run(store
        .cmd(&["restore", "web01/xvda@2026-11-01"])
        .arg(w.join("none.raw")));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("oldest point"));
}

#[test]
fn vm_and_disk_names_are_what_the_hypervisor_shows() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let src = disk(work.path(), "u.raw", 6, 0);
    for (vm, disk_name) in [
        ("Windows Server 2022 (prod)", "disk 0"),
        ("wéb-01", "xvda"),
        ("数据库", "sda"),
    ] {
        ok(store
            .cmd(&["backup", "--vm", vm])
            .arg(format!("{disk_name}={}", src.display())));
        let out = work.path().join("u-restored.raw");
        store.restore(&format!("{vm}/{disk_name}@latest"), &out, "raw");
        assert_same_content(&out, &src, true);
    }
    let listed: Vec<String> = store
        .list()
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p["vm"].as_str().expect("vm"),
                p["disk"].as_str().expect("disk")
            )
        })
        .collect();
    assert_eq!(listed.len(), 3, "{listed:?}");
    for want in [
        "Windows Server 2022 (prod)/disk 0",
        "wéb-01/xvda",
        "数据库/sda",
    ] {
        assert!(listed.iter().any(|l| l == want), "{want} not in {listed:?}");
    }
    // On disk the folders are plain ASCII.
    let mut stack = vec![store.path().join("points")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read").flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(name.is_ascii() && !name.contains(' '), "{name:?}");
            if e.path().is_dir() {
                stack.push(e.path());
            }
        }
    }
    // A restored VHD's file name is safe too (chains are named after the point).
    let chain = work.path().join("chain");
    ok(store
        .cmd(&["restore", "数据库/sda@latest", "--format", "vhd-chain"])
        .arg(&chain));
    let names = entries(&chain);
    assert!(names.len() == 1 && names[0].is_ascii(), "{names:?}");
}

#[test]
fn diff_names_the_ranges_that_changed_between_two_points() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let day0 = disk(w, "d0.raw", 7, 0);
    let mut bytes = read(&day0);
    // 100 KiB at 3 MiB (two chunks of 64 KiB) and one byte at 10 MiB (one chunk).
    for b in &mut bytes[3 << 20..(3 << 20) + 100 * 1024] {
        *b ^= 0x55;
    }
    bytes[10 << 20] ^= 1;
    let day1 = w.join("d1.raw");
    std::fs::write(&day1, &bytes).expect("write");
    store.backup("web01", "2026-11-21T02:00:00Z", "xvda", &day0, &[]);
    store.backup("web01", "2026-11-22T02:00:00Z", "xvda", &day1, &[]);
    let d = json(&ok(&mut store.cmd(&[
        "diff",
        "--json",
        "web01/xvda@latest~1",
        "web01/xvda@latest",
    ])));
    let ranges: Vec<(u64, u64)> = d["ranges"]
        .as_array()
        .expect("ranges")
        .iter()
        .map(|r| {
            (
                r["offset"].as_u64().expect("o"),
                r["len"].as_u64().expect("l"),
            )
        })
        .collect();
    assert_eq!(ranges, [(3 << 20, 128 << 10), (10 << 20, 64 << 10)]);
    assert_eq!(d["changed_bytes"], 192 << 10);
    let same = json(&ok(&mut store.cmd(&[
        "diff",
        "--json",
        "web01/xvda@latest",
        "web01/xvda@latest",
    ])));
    assert_eq!(same["changed_bytes"], 0);
    // Of one disk, the older point goes first.
    let out = run(&mut store.cmd(&["diff", "web01/xvda@latest", "web01/xvda@latest~1"]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("older point first"));
    // Two disks (a clone against its template): the ranges where their contents differ.
    store.backup("db01", "2026-11-22T03:00:00Z", "xvda", &day0, &[]);
    let across = json(&ok(&mut store.cmd(&[
        "diff",
        "--json",
        "db01/xvda@latest",
        "web01/xvda@latest",
    ])));
    assert_eq!(across["ranges"], d["ranges"], "{across}");
    assert_eq!(across["to_vm"], "web01");
}

/// A link planted under the restore's temporary name in a shared folder (every pid the next
/// processes may get) is not followed: the restore fails naming it, and what the link points
/// at is untouched.
#[test]
fn a_link_planted_under_the_temporary_name_is_never_followed() {
    let store = Store::new("256K");
    let work = tempfile::tempdir().expect("tempdir");
    let d = disk(work.path(), "d.raw", 3, 0);
    let p = id(&store.backup("vm", "2026-11-01T00:00:00Z", "xvda", &d, &[]));
    let shared = work.path().join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    let victim = work.path().join("victim");
    std::fs::write(&victim, b"not to be overwritten").expect("victim");
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .expect("ns_last_pid");
    // Pids wrap at pid_max back to the first unreserved one (300), so the next few thousand
    // may start again from there.
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .expect("pid_max");
    for step in 1..3000 {
        let next = last + step;
        let pid = if next < max { next } else { 300 + next - max };
        std::os::unix::fs::symlink(
            &victim,
            shared.join(format!(".out.raw.cairn-partial-{pid}")),
        )
        .expect("symlink");
    }
    let o = run(store.cmd(&["restore", &p]).arg(shared.join("out.raw")));
    assert!(
        !o.status.success(),
        "the restore went through a planted link"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cairn-partial"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(read(&victim), b"not to be overwritten");
    assert!(!shared.join("out.raw").exists());
}
