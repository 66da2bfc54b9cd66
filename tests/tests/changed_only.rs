//! A differential restore (`restore --changed-only`) onto a disk that holds an older or damaged
//! copy: it reads the target once, writes exactly the chunks that differ, leaves the target
//! equal to the point, refuses before writing anything when it may not write (no --force, a
//! device too small, a target that does not exist), and a run killed halfway is finished by
//! the next. Needs root for the loop device.

use std::ffi::OsStr;
use std::path::Path;

use cairn_tests::{LoopDevice, TestStore as Store, gen_disk, id, json, ok, read, run};

const CHUNK: usize = 64 << 10;

/// How many 64 KiB chunks differ between two images of one size.
fn chunks_differing(a: &[u8], b: &[u8]) -> u64 {
    a.chunks(CHUNK)
        .zip(b.chunks(CHUNK))
        .filter(|(x, y)| x != y)
        .count() as u64
}

fn changed_only(store: &Store, point: &str, target: &Path, extra: &[&str]) -> serde_json::Value {
    let mut c = store.cmd(&["restore", "--json", "--changed-only", point]);
    c.arg(target).args(extra);
    json(&ok(&mut c))
}

#[test]
fn only_the_chunks_that_differ_are_written_and_the_target_ends_equal() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let (d0, d1) = (w.join("d0.raw"), w.join("d1.raw"));
    gen_disk(&d0, "16M", 3, 1, 0);
    gen_disk(&d1, "16M", 3, 1, 1);
    store.backup("web01", "2026-11-20T02:00:00Z", "xvda", &d0, &[]);
    let p1 = id(&store.backup("web01", "2026-11-21T02:00:00Z", "xvda", &d1, &[]));
    // The target holds day 0, and a byte someone changed where day 1 holds zeros or data.
    let target = w.join("target.raw");
    let mut old = read(&d0);
    old[5 * CHUNK + 17] ^= 0x40;
    std::fs::write(&target, &old).expect("write");
    let want = chunks_differing(&old, &read(&d1));
    assert!(want > 0 && want < (16 << 20) / CHUNK as u64 / 2, "{want}");
    // Without --force nothing is written.
    let out = run(store.cmd(&["restore", "--changed-only", &p1]).arg(&target));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(cairn_tests::error_text(&out).contains("--force"), "{out:?}");
    assert_eq!(read(&target), old, "refused, yet written");
    let r = changed_only(&store, &p1, &target, &["--force"]);
    assert_eq!(read(&target), read(&d1), "the target is not the point");
    assert_eq!(r["chunks_written"], want, "{r}");
    assert_eq!(r["bytes_read"], 16u64 << 20, "{r}");
    assert_eq!(r["chunks_compared"], (16u64 << 20) / CHUNK as u64, "{r}");
    // Again: nothing differs, nothing is written.
    let again = changed_only(&store, &p1, &target, &["--force"]);
    assert_eq!(again["chunks_written"], 0, "{again}");
    // A target that does not exist is not made.
    let nowhere = w.join("nowhere.raw");
    let out = run(store
        .cmd(&["restore", "--changed-only", "--force", &p1])
        .arg(&nowhere));
    assert!(!out.status.success());
    assert!(!nowhere.exists());
    // A VHD is not written in place.
    let out = run(store
        .cmd(&["restore", "--changed-only", "--force", &p1])
        .arg(w.join("x.vhd")));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn a_block_device_is_checked_before_the_first_write_and_a_killed_run_is_finished() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let (d0, d1) = (w.join("d0.raw"), w.join("d1.raw"));
    gen_disk(&d0, "16M", 4, 1, 0);
    gen_disk(&d1, "16M", 4, 1, 3);
    let p1 = id(&store.backup("db01", "2026-11-21T02:00:00Z", "xvda", &d1, &[]));
    // A device smaller than the point: refused, untouched.
    let small = w.join("small.img");
    std::fs::write(&small, vec![0x5a; 8 << 20]).expect("small");
    let small_dev = LoopDevice::attach(&small);
    let out = run(store
        .cmd(&["restore", "--changed-only", "--force", &p1])
        .arg(small_dev.path()));
    assert!(!out.status.success(), "{out:?}");
    assert!(
        cairn_tests::error_text(&out).contains("nothing was written"),
        "{out:?}"
    );
    drop(small_dev);
    assert!(
        read(&small).iter().all(|b| *b == 0x5a),
        "a refused restore wrote"
    );
    // A device holding day 0: killed at its third write, then run again.
    let backing = w.join("disk.img");
    std::fs::copy(&d0, &backing).expect("copy");
    let dev = LoopDevice::attach(&backing);
    let args: Vec<&OsStr> = [
        "restore",
        "--changed-only",
        "--force",
        p1.as_str(),
        dev.path(),
    ]
    .into_iter()
    .map(OsStr::new)
    .collect();
    let status = store.killed_at_path("pwrite64", 3, Some(Path::new(dev.path())), &args);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "the run was not killed"
    );
    let r = changed_only(&store, &p1, Path::new(dev.path()), &["--force"]);
    assert!(r["chunks_written"].as_u64().unwrap_or(0) > 0, "{r}");
    drop(dev);
    assert_eq!(read(&backing), read(&d1), "the device is not the point");
}
