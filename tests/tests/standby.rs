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
    assert!(cairn_tests::error_text(&out).contains("changed since cairn wrote"));
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

/// The export's bytes, read through NBD by qemu-img.
fn export_bytes(uri: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join("export.raw");
    ok(std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", uri])
        .arg(&out));
    read(&out)
}

#[test]
fn a_standby_nbd_export_follows_the_points_and_is_finished_after_a_kill() {
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
    // The disaster-recovery host's disk: a new qcow2 of the same size, served by qemu-nbd.
    let dr = w.join("dr.qcow2");
    ok(std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&dr)
        .arg((32u64 << 20).to_string()));
    let server = cairn_tests::nbd::qemu_nbd_writable(&dr, "qcow2");
    let uri = server.uri("disk");
    let standby = |point: &str, extra: &[&str]| {
        run(store
            .cmd(&["standby", "--json", point, "--to", &uri])
            .args(extra))
    };
    let done = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        json(&String::from_utf8_lossy(&out.stdout))
    };
    // An export cairn never wrote is taken only with --force (it may be someone's disk).
    let out = standby(&ids[0], &[]);
    assert!(!out.status.success());
    assert!(
        cairn_tests::error_text(&out).contains("cairn never wrote it"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = done(standby(&ids[0], &["--force"]));
    assert_eq!(first["compared"], true, "{first}");
    assert_eq!(export_bytes(&uri, w), read(&raws[0]));
    let r = done(standby(&ids[1], &[]));
    let changed: u64 = read(&raws[0])
        .chunks(256 << 10)
        .zip(read(&raws[1]).chunks(256 << 10))
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a.len() as u64)
        .sum();
    assert_eq!(num(&r, "bytes_written"), changed, "{r}");
    assert_eq!(export_bytes(&uri, w), read(&raws[1]));

    // Killed at a write to the socket: the next run finishes it.
    let mut killed = 0;
    for when in [10u32, 25, 45] {
        let status = std::process::Command::new("strace")
            .args([
                "-f",
                "-qq",
                "-o",
                "/dev/null",
                "-e",
                "trace=write,sendto,sendmsg,writev",
            ])
            .arg("-e")
            .arg(format!(
                "inject=write,sendto,sendmsg,writev:signal=SIGKILL:when={when}"
            ))
            .arg(cairn_bin())
            .args(["standby", &ids[2], "--to", &uri])
            .env("CAIRN_STORE", store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("strace");
        if status.code().is_none() {
            killed += 1;
        }
        let after = done(standby(&ids[2], &[]));
        assert_eq!(
            export_bytes(&uri, w),
            read(&raws[2]),
            "killed at {when}: {after}"
        );
        done(standby(&ids[1], &[]));
        assert_eq!(export_bytes(&uri, w), read(&raws[1]));
    }
    assert!(killed >= 2, "the kills happened ({killed})");

    // Someone booted the copy (its first chunk changed): refused; --force rewrites what differs.
    ok(std::process::Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0x55 1024 4096",
        &uri,
    ]));
    let out = standby(&ids[2], &[]);
    assert!(!out.status.success());
    assert!(
        cairn_tests::error_text(&out).contains("changed since cairn wrote"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let forced = done(standby(&ids[2], &["--force"]));
    assert_eq!(forced["compared"], true, "{forced}");
    assert_eq!(export_bytes(&uri, w), read(&raws[2]));
    ok(&mut store.cmd(&["verify"]));
}

#[test]
fn a_standby_to_a_new_file_killed_at_any_sync_is_finished_by_the_next_run_without_force() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let raw = w.join("day0.raw");
    gen_disk(&raw, "8M", 8, 6, 0);
    let store = TestStore::new("256K");
    let p = id(&store.backup("vm", "2026-11-01T02:00:00Z", "xvda", &raw, &[]));
    let mut killed = 0;
    for when in 1u32.. {
        assert!(when < 40, "the standby never finished");
        let target = w.join(format!("new-{when}.raw"));
        let status = store.killed_at(
            "fsync,fdatasync,ftruncate",
            when,
            &[
                std::ffi::OsStr::new("standby"),
                std::ffi::OsStr::new(&p),
                std::ffi::OsStr::new("--to"),
                target.as_os_str(),
            ],
        );
        let out = standby(&store, &p, &target, &[]);
        assert!(
            out.status.success(),
            "killed at call {when}: the next run (without --force) refused: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(read(&target), read(&raw), "killed at call {when}");
        if status.success() {
            break;
        }
        killed += 1;
    }
    assert!(killed >= 2, "the kills happened ({killed})");
}
