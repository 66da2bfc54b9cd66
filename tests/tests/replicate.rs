//! Store to store: every point copied bit-exact with its metadata, only what is new sent
//! again, a point pruned on the destination never brought back, a killed run finished by the
//! next, a `cp -a` seed filled on.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use cairn_tests::{TestStore, gen_disk, id, json, num, ok, read, run};

fn days(dir: &Path, n: u32) -> Vec<PathBuf> {
    (0..n)
        .map(|d| {
            let p = dir.join(format!("day{d}.raw"));
            gen_disk(&p, "32M", 3, 5, d);
            p
        })
        .collect()
}

fn replicate(from: &TestStore, to: &Path, extra: &[&str]) -> serde_json::Value {
    json(&ok(cairn_tests::cairn(["replicate", "--json", "--from"])
        .arg(from.path())
        .arg("--to")
        .arg(to)
        .args(extra)))
}

/// Every point of `src` restores from `dst` as from `src`.
fn same_points(src: &TestStore, dst: &TestStore, work: &Path) {
    for p in src.list() {
        let (a, b) = (work.join("a.raw"), work.join("b.raw"));
        src.restore(&id(&p), &a, "raw");
        dst.restore(&id(&p), &b, "raw");
        assert_eq!(read(&a), read(&b), "point {}", id(&p));
    }
}

#[test]
fn replicas_copy_what_is_new_keep_their_own_retention_and_finish_what_a_kill_left() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let raws = days(w, 4);
    let src = TestStore::new("256K");
    for (d, r) in raws.iter().take(3).enumerate() {
        src.backup(
            "web01",
            &format!("2026-11-0{}T02:00:00Z", d + 1),
            "xvda",
            r,
            &["--vm-uuid", "u-1"],
        );
    }
    src.backup("web02", "2026-11-01T03:00:00Z", "xvda", &raws[0], &[]);
    let first = id(&src.list()[0]);
    ok(&mut src.cmd(&["protect", &first]));

    // A dry run says what the run will send, to the chunk and byte, and changes nothing.
    let dst = TestStore::new("256K");
    let dry = replicate(&src, &dst.path(), &["--dry-run"]);
    assert!(dst.list().is_empty(), "a dry run copied points");
    assert!(dst.pack_files().is_empty(), "a dry run wrote packs");
    // The first run copies every point, as it is.
    let r = replicate(&src, &dst.path(), &[]);
    for k in ["chunks_sent", "bytes_sent"] {
        assert_eq!(num(&dry, k), num(&r, k), "{k}: dry {dry} vs {r}");
    }
    assert_eq!(dry["points"], r["points"]);
    assert_eq!(r["points"].as_array().map(Vec::len), Some(4), "{r}");
    assert!(num(&r, "bytes_sent") > 0);
    let listed = dst.list();
    assert_eq!(listed.len(), 4);
    let p0 = listed
        .iter()
        .find(|p| id(p) == first)
        .expect("the first point");
    assert_eq!(p0["protected"], true, "protection travels");
    assert_eq!(p0["vm_uuid"], "u-1");
    same_points(&src, &dst, w);
    ok(&mut dst.cmd(&["verify"]));
    // A second run sends nothing.
    let r = replicate(&src, &dst.path(), &[]);
    assert_eq!(
        (num(&r, "chunks_sent"), num(&r, "points_present")),
        (0, 4),
        "{r}"
    );

    // A new day sends about its own new chunks.
    let day4 = src.backup(
        "web01",
        "2026-11-04T02:00:00Z",
        "xvda",
        &raws[3],
        &["--vm-uuid", "u-1"],
    );
    let r = replicate(&src, &dst.path(), &[]);
    let new = num(&day4, "new_stored_bytes");
    assert!(
        num(&r, "bytes_sent") <= new + new / 20 + (64 << 10),
        "sent {} for a day of {new} new bytes",
        num(&r, "bytes_sent")
    );

    // Retention is each store's own: a point forgotten on the replica is never sent again.
    let second = id(&src.list()[1]);
    ok(&mut dst.cmd(&["forget", &second]));
    let r = replicate(&src, &dst.path(), &[]);
    assert_eq!(num(&r, "points_forgotten"), 1, "{r}");
    assert!(dst.list().iter().all(|p| id(p) != second));

    // A run killed at its fsyncs leaves a replica the next run completes.
    let src2 = TestStore::new("256K");
    for (d, r) in raws.iter().enumerate() {
        src2.backup(
            "db01",
            &format!("2026-11-0{}T02:00:00Z", d + 1),
            "xvda",
            r,
            &[],
        );
    }
    let mut killed = 0;
    for when in [1u32, 3, 6, 9] {
        let dst2 = TestStore::new("256K");
        let status = std::process::Command::new("strace")
            .args([
                "-f",
                "-qq",
                "-o",
                "/dev/null",
                "-e",
                "trace=fsync,fdatasync",
                "-e",
            ])
            .arg(format!("inject=fsync,fdatasync:signal=SIGKILL:when={when}"))
            .arg(cairn_tests::cairn_bin())
            .args([OsStr::new("replicate"), OsStr::new("--from")])
            .arg(src2.path())
            .arg("--to")
            .arg(dst2.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("strace (installed by scripts/setup.sh)");
        if status.code().is_none() {
            killed += 1;
        }
        // Whatever the kill left: the points there restore, and a rerun completes the rest.
        let partial = dst2.list().len();
        let out = run(cairn_tests::cairn(["replicate", "--from"])
            .arg(src2.path())
            .arg("--to")
            .arg(dst2.path()));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            dst2.list().len(),
            4,
            "killed at fsync {when} with {partial} points there"
        );
        same_points(&src2, &dst2, w);
        ok(&mut dst2.cmd(&["verify"]));
    }
    assert!(killed >= 2, "the kills happened ({killed})");
}

#[test]
fn a_store_copied_with_cp_is_a_seed_that_replication_fills_on() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let raws = days(w, 2);
    let src = TestStore::new("256K");
    src.backup("vm", "2026-11-01T02:00:00Z", "xvda", &raws[0], &[]);
    // The seed travels on a disk: a plain copy of the folder, no writer running.
    let seed = w.join("seed");
    ok(std::process::Command::new("cp")
        .arg("-a")
        .arg(src.path())
        .arg(&seed));
    ok(cairn_tests::cairn(["verify", "--store"]).arg(&seed));
    let day1 = src.backup("vm", "2026-11-02T02:00:00Z", "xvda", &raws[1], &[]);
    let r = json(&ok(cairn_tests::cairn(["replicate", "--json", "--from"])
        .arg(src.path())
        .arg("--to")
        .arg(&seed)));
    assert_eq!(r["points"].as_array().map(Vec::len), Some(1), "{r}");
    let new = num(&day1, "new_stored_bytes");
    assert!(num(&r, "bytes_sent") <= new + new / 20 + (64 << 10), "{r}");
    let out = w.join("out.raw");
    ok(cairn_tests::cairn(["restore", "--store"])
        .arg(&seed)
        .arg(id(&day1))
        .arg(&out));
    assert_eq!(read(&out), read(&raws[1]));
    // The same folder on both sides is refused.
    let out = run(cairn_tests::cairn(["replicate", "--from"])
        .arg(&seed)
        .arg("--to")
        .arg(&seed));
    assert!(!out.status.success());
}

#[test]
fn the_disks_of_one_run_arrive_together() {
    let work = tempfile::tempdir().expect("tempdir");
    let raws = days(work.path(), 2);
    let src = TestStore::new("256K");
    ok(src
        .cmd(&["backup", "--vm", "vm", "--time", "2026-11-01T02:00:00Z"])
        .arg(format!("xvda={}", raws[0].display()))
        .arg(format!("xvdb={}", raws[1].display())));
    let dst = TestStore::new("256K");
    let r = replicate(&src, &dst.path(), &[]);
    assert_eq!(r["points"].as_array().map(Vec::len), Some(2), "{r}");
    let (a, b) = (src.list(), dst.list());
    assert_eq!(b.len(), 2);
    let run_of = |v: &[serde_json::Value]| -> Vec<String> {
        v.iter()
            .map(|p| p["run"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    assert!(!run_of(&a)[0].is_empty());
    assert_eq!(run_of(&a), run_of(&b), "the run id travels");
    same_points(&src, &dst, work.path());
}

#[test]
fn since_picks_recent_points_and_limit_rate_paces_what_is_sent() {
    let work = tempfile::tempdir().expect("tempdir");
    // Two disks that share nothing, so the old one's copy is all its own bytes.
    let raws: Vec<PathBuf> = [(41, 8), (42, 9)]
        .iter()
        .enumerate()
        .map(|(i, (seed, template))| {
            let p = work.path().join(format!("d{i}.raw"));
            gen_disk(&p, "32M", *seed, *template, 0);
            p
        })
        .collect();
    let src = TestStore::new("256K");
    src.backup("web01", "2026-10-01T02:00:00Z", "xvda", &raws[0], &[]);
    // A backup made now (no --time).
    let mut c = src.cmd(&["backup", "--json", "--vm", "web01"]);
    c.arg(format!("xvda={}", raws[1].display()));
    let recent = id(&json(&ok(&mut c))[0]);
    let dst = TestStore::new("256K");
    let r = replicate(&src, &dst.path(), &["--since", "1d"]);
    let copied: Vec<String> = r["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| p.as_str().expect("id").to_owned())
        .collect();
    assert_eq!(copied, vec![recent], "{r}");
    // The old one, paced: it cannot go faster than the rate asked.
    let started = std::time::Instant::now();
    let r = replicate(&src, &dst.path(), &["--limit-rate", "2M"]);
    let secs = started.elapsed().as_secs_f64();
    let bytes = num(&r, "bytes_sent");
    assert!(bytes > 3 << 20, "{r}");
    assert!(
        secs >= bytes as f64 / f64::from(2 << 20) * 0.9,
        "{bytes} bytes in {secs:.2}s at 2 MiB/s"
    );
}
