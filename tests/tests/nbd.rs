//! Backups from NBD servers, with the real peers: qemu-nbd (raw, qcow2, a dirty bitmap) and
//! nbdkit (sparse-random, error and delay filters, a server killed mid-backup). Points served
//! by `cairn serve-nbd` are `serve_nbd.rs`.

use std::path::Path;
use std::process::{Command, Stdio};

use cairn_tests::nbd::{fixture, map, nbd_serve, nbdkit, qemu_nbd_shared, restored};
use cairn_tests::{TestStore, id, json, make_raw, num, ok, read, run};

const CHUNK: u64 = 256 << 10;

/// The dirty extents the fixture recorded (`nbdinfo --map=qemu:dirty-bitmap:inc1`).
fn dirty_extents(cbt: &Path) -> Vec<(u64, u64)> {
    let v = json(&std::fs::read_to_string(cbt.join("dirty.json")).expect("dirty.json"));
    v.as_array()
        .expect("extents")
        .iter()
        .filter(|e| e["type"].as_u64().expect("type") & 1 == 1)
        .map(|e| {
            (
                e["offset"].as_u64().expect("o"),
                e["length"].as_u64().expect("l"),
            )
        })
        .collect()
}

/// The chunks that `extents` touch, as bytes of a disk of `size`.
fn chunk_bytes(extents: &[(u64, u64)], size: u64) -> u64 {
    let mut chunks = std::collections::BTreeSet::new();
    for &(o, l) in extents {
        for c in o / CHUNK..(o + l).div_ceil(CHUNK) {
            chunks.insert(c);
        }
    }
    chunks.iter().map(|c| CHUNK.min(size - c * CHUNK)).sum()
}

/// Base64 of `bytes` (standard alphabet, padded), as XAPI returns a changed-block bitmap.
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(char::from(A[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[test]
fn qemu_nbd_full_then_incrementals_from_a_dirty_bitmap_and_changed_block_files() {
    let work = tempfile::tempdir().expect("tempdir");
    let (base, cbt) = fixture(work.path());
    let size = 32u64 << 20;
    let store = TestStore::new("256K");
    // Full backup of the raw base: qemu-nbd's holes are not read.
    let srv = nbd_serve(&base, "raw", &[]);
    let full = store.backup(
        "vm-a",
        "2026-11-01T00:00:00Z",
        "xvda",
        Path::new(&srv.uri("disk")),
        &[],
    );
    drop(srv);
    let alloc: Vec<(u64, u64)> = {
        let srv = nbd_serve(&base, "raw", &[]);
        map(&srv.uri("disk"), None)
            .into_iter()
            .filter(|e| e.2 & 2 == 0)
            .map(|e| (e.0, e.1))
            .collect()
    };
    assert!(full["key"].as_bool().expect("key"));
    assert_eq!(full["source"]["kind"], "nbd");
    assert!(
        num(&full, "bytes_read") <= chunk_bytes(&alloc, size) && num(&full, "bytes_read") < size,
        "a full backup reads only the allocated chunks: {full}"
    );
    assert_eq!(restored(&store, &id(&full), work.path()), read(&base));

    // The dirty bitmap incremental: only the dirty chunks are read, the rest is the parent's.
    let dirty = dirty_extents(&cbt);
    let srv = nbd_serve(&cbt.join("disk.qcow2"), "qcow2", &["inc1"]);
    let inc = store.backup(
        "vm-a",
        "2026-11-02T00:00:00Z",
        "xvda",
        Path::new(&srv.uri("disk")),
        &["--dirty-bitmap", "inc1"],
    );
    drop(srv);
    assert_eq!(inc["parent"].as_str(), Some(id(&full).as_str()));
    assert!(!inc["key"].as_bool().expect("key"));
    assert!(
        num(&inc, "bytes_read") <= chunk_bytes(&dirty, size),
        "read {} bytes, the dirty chunks are {}",
        num(&inc, "bytes_read"),
        chunk_bytes(&dirty, size)
    );
    let expected = read(&cbt.join("expected.raw"));
    assert_eq!(restored(&store, &id(&inc), work.path()), expected);

    // The same incremental from a list of changed ranges, then from XCP-ng's base64 bitmap.
    let lines: String = dirty.iter().map(|(o, l)| format!("{o} {l}\n")).collect();
    let list = work.path().join("changed.txt");
    std::fs::write(&list, format!("# offset length\n{lines}")).expect("write");
    let mut bits = vec![0u8; (size / (64 << 10)).div_ceil(8) as usize];
    for &(o, l) in &dirty {
        for b in o / (64 << 10)..(o + l).div_ceil(64 << 10) {
            bits[(b / 8) as usize] |= 0x80 >> (b % 8);
        }
    }
    let bitmap = work.path().join("cbt.b64");
    std::fs::write(&bitmap, base64(&bits)).expect("write");
    for (vm, file) in [("vm-b", &list), ("vm-c", &bitmap)] {
        let srv = nbd_serve(&base, "raw", &[]);
        store.backup(
            vm,
            "2026-11-01T00:00:00Z",
            "xvda",
            Path::new(&srv.uri("disk")),
            &[],
        );
        drop(srv);
        let srv = nbd_serve(&cbt.join("disk.qcow2"), "qcow2", &[]);
        let p = store.backup(
            vm,
            "2026-11-02T00:00:00Z",
            "xvda",
            Path::new(&srv.uri("disk")),
            &["--changed-blocks", file.to_str().expect("utf-8")],
        );
        drop(srv);
        assert!(
            num(&p, "bytes_read") <= chunk_bytes(&dirty, size),
            "{vm}: {p}"
        );
        assert_eq!(restored(&store, &id(&p), work.path()), expected, "{vm}");
    }

    // A key backup reads the whole disk even with a bitmap; a qcow2 read whole is the same disk.
    let srv = nbd_serve(&cbt.join("disk.qcow2"), "qcow2", &["inc1"]);
    let key = store.backup(
        "vm-a",
        "2026-11-03T00:00:00Z",
        "xvda",
        Path::new(&srv.uri("disk")),
        &["--dirty-bitmap", "inc1", "--key"],
    );
    assert!(key["key"].as_bool().expect("key"));
    assert_eq!(restored(&store, &id(&key), work.path()), expected);

    // A bitmap the server does not offer, a bitmap of another disk's size: refused, nothing
    // stored.
    let before = store.list().len();
    let out = run(store
        .cmd(&["backup", "--vm", "vm-a", "--dirty-bitmap", "nope"])
        .arg(format!("xvda={}", srv.uri("disk"))));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("qemu:dirty-bitmap:nope") && err.contains("nothing was stored"),
        "{err}"
    );
    let short = work.path().join("short.b64");
    std::fs::write(&short, base64(&bits[..bits.len() / 2])).expect("write");
    let out = run(store
        .cmd(&["backup", "--vm", "vm-a", "--changed-blocks"])
        .arg(&short)
        .arg(format!("xvda={}", srv.uri("disk"))));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("bitmap of another disk"), "{err}");
    // Changed blocks without a parent point: refused.
    let out = run(store
        .cmd(&["backup", "--vm", "new-vm", "--dirty-bitmap", "inc1"])
        .arg(format!("xvda={}", srv.uri("disk"))));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no point yet"));
    assert_eq!(store.list().len(), before);
}

#[test]
fn nbdkit_sparse_random_reads_about_the_allocated_bytes() {
    let work = tempfile::tempdir().expect("tempdir");
    let args = [
        "sparse-random",
        "size=512M",
        "seed=42",
        "percent=3",
        "random-content=true",
    ];
    let srv = nbdkit(&args);
    let uri = srv.uri("");
    let size = 512u64 << 20;
    let data: Vec<(u64, u64)> = map(&uri, None)
        .into_iter()
        .filter(|e| e.2 & 2 == 0)
        .map(|e| (e.0, e.1))
        .collect();
    let allocated: u64 = data.iter().map(|e| e.1).sum();
    let store = TestStore::new("256K");
    let p = store.backup("vm", "2026-11-01T00:00:00Z", "xvda", Path::new(&uri), &[]);
    let read_bytes = num(&p, "bytes_read");
    assert!(
        read_bytes >= allocated && read_bytes <= chunk_bytes(&data, size),
        "read {read_bytes} bytes for {allocated} allocated"
    );
    // The point is the disk nbdcopy copies from the same server.
    let copy = work.path().join("copy.raw");
    ok(Command::new("nbdcopy").arg(&uri).arg(&copy));
    assert_eq!(restored(&store, &id(&p), work.path()), read(&copy));
}

#[test]
fn a_failing_or_dying_server_stores_nothing() {
    let store = TestStore::new("256K");
    // Every read fails: the error names the offset and the server's error, after retries.
    let srv = nbdkit(&[
        "--filter=error",
        "pattern",
        "size=64M",
        "error-pread=EIO",
        "error-pread-rate=100%",
    ]);
    let out = run(store
        .cmd(&["backup", "--vm", "vm"])
        .arg(format!("xvda={}", srv.uri(""))));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("at offset 0")
            && err.contains("EIO")
            && err.contains("4 times")
            && err.contains("nothing was stored"),
        "{err}"
    );
    assert!(store.list().is_empty());
    drop(srv);
    // The server dies in the middle: the backup fails clearly, nothing is committed.
    let mut srv = nbdkit(&["--filter=delay", "pattern", "size=256M", "rdelay=50ms"]);
    let packs = store.pack_files().len();
    let child = store
        .cmd(&["backup", "--vm", "vm", "--nbd-connections", "2"])
        .arg(format!("xvda={}", srv.uri("")))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("backup");
    // Killed mid-read: once the backup has stored its first chunks.
    cairn_tests::wait_until("the backup's first pack", || {
        store.pack_files().len() > packs
    });
    srv.kill();
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("nothing was stored"), "{err}");
    assert!(store.list().is_empty());
    // The store works on: a backup from a healthy server.
    let srv = nbdkit(&["pattern", "size=8M"]);
    store.backup(
        "vm",
        "2026-11-01T00:00:00Z",
        "xvda",
        Path::new(&srv.uri("")),
        &[],
    );
    assert_eq!(store.list().len(), 1);
}

#[test]
fn several_connections_are_used_when_the_server_allows_them() {
    let work = tempfile::tempdir().expect("tempdir");
    let raw = work.path().join("d.raw");
    make_raw(&raw, 64 << 20, 9);
    // N connections in all: N - 1 read beside the one that asks for block status.
    for (shared, connections, least) in [(8, 4, 3), (1, 4, 1)] {
        let srv = qemu_nbd_shared(&raw, "raw", shared);
        let log = work.path().join(format!("log-{shared}"));
        // nbdkit's nbd plugin in front of qemu-nbd logs every connection it is asked for.
        let front = nbdkit(&[
            "--filter=log",
            "nbd",
            &format!("socket={}", srv.socket().display()),
            "export=disk",
            &format!("logfile={}", log.display()),
        ]);
        let store = TestStore::new("256K");
        let p = store.backup(
            "vm",
            "2026-11-01T00:00:00Z",
            "xvda",
            Path::new(&front.uri("")),
            &["--nbd-connections", &connections.to_string()],
        );
        assert_eq!(restored(&store, &id(&p), work.path()), read(&raw));
        drop(front);
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let reading: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| l.contains("Read "))
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("connection=")))
            .collect();
        assert!(reading.len() >= least, "shared {shared}: {reading:?}");
    }
}
