//! Standby disks: a raw file kept equal to each day's point, writing only what changed,
//! finished after kill -9 at any write, refusing a copy changed behind cairn's back.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use cairn_tests::{TestStore, cairn_bin, gen_disk, id, json, num, ok, read, run};

fn days(dir: &Path, n: u32) -> Vec<PathBuf> {
    (0..n)
        .map(|d| {
            let p = dir.join(format!("day{d}.raw"));
            gen_disk(&p, "32M", 8, 6, d);
            p
        })
        .collect()
}

fn standby(store: &TestStore, point: &str, target: &Path, extra: &[&str]) -> std::process::Output {
    run(store
        .cmd(&["standby", "--json", point, "--to"])
        .arg(target)
        .args(extra))
}

#[test]
fn a_standby_file_follows_the_points_writing_what_changed() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let raws = days(w, 3);
    let store = TestStore::new("256K");
    let ids: Vec<String> = raws
        .iter()
        .enumerate()
        .map(|(d, r)| {
            id(&store.backup(
                "vm",
                &format!("2026-11-0{}T02:00:00Z", d + 1),
                "xvda",
                r,
                &[],
            ))
        })
        .collect();
    let target = w.join("standby.raw");
    let out = standby(&store, &ids[0], &target, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read(&target), read(&raws[0]));
    // The next day writes about what changed, not the disk.
    let r = json(&String::from_utf8_lossy(
        &standby(&store, &ids[1], &target, &[]).stdout,
    ));
    assert_eq!(read(&target), read(&raws[1]));
    let changed: u64 = read(&raws[0])
        .chunks(256 << 10)
        .zip(read(&raws[1]).chunks(256 << 10))
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a.len() as u64)
        .sum();
    assert_eq!(num(&r, "bytes_written"), changed, "{r}");

    // Killed at a write of the next run: the target may be a mix, the next run finishes it.
    let mut killed = 0;
    for when in [1u32, 2, 4] {
        let status = std::process::Command::new("strace")
            .args(["-f", "-qq", "-o", "/dev/null", "-P"])
            .arg(&target)
            .args(["-e", "trace=pwrite64", "-e"])
            .arg(format!("inject=pwrite64:signal=SIGKILL:when={when}"))
            .arg(cairn_bin())
            .args(["standby", &ids[2], "--to"])
            .arg(&target)
            .env("CAIRN_STORE", store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("strace");
        if status.code().is_none() {
            killed += 1;
        }
        let out = standby(&store, &ids[2], &target, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(read(&target), read(&raws[2]), "killed at write {when}");
        // Back to day 1 for the next round.
        let out = standby(&store, &ids[1], &target, &[]);
        assert!(out.status.success());
        assert_eq!(read(&target), read(&raws[1]));
    }
    assert!(killed >= 2, "the kills happened ({killed})");

    // Someone started the copy: refused; --force rewrites what differs.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&target)
        .expect("open");
    std::os::unix::fs::FileExt::write_all_at(&f, b"booted!", 4096).expect("write");
    drop(f);
    let out = standby(&store, &ids[2], &target, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("changed since cairn wrote"));
    assert_ne!(read(&target), read(&raws[2]), "nothing was written");
    let out = standby(&store, &ids[2], &target, &["--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read(&target), read(&raws[2]));
    // A file cairn never wrote is not taken without --force.
    let other = w.join("other.raw");
    std::fs::write(&other, b"someone's data").expect("write");
    let out = standby(&store, &ids[2], &other, &[]);
    assert!(!out.status.success());
    assert_eq!(read(&other), b"someone's data");
    ok(&mut store.cmd(&["verify"]));
}
