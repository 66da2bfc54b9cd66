//! NBD end to end, with the real peers: backups from qemu-nbd (raw, qcow2, a dirty bitmap) and
//! nbdkit (sparse-random, error and delay filters, a server killed mid-backup), and points
//! served by `cairn serve-nbd` to qemu-img, nbdcopy, nbdinfo and qemu-io.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cairn_tests::nbd::{map, nbd_serve, nbdkit, qemu_nbd_shared, serve_nbd};
use cairn_tests::{
    TestStore, corrupt_a_data_chunk, id, json, make_raw, num, ok, read, run, shared_dir,
};

const CHUNK: u64 = 256 << 10;

/// A 32 MiB raw disk with holes, and the changed-block-tracking fixture on it (a qcow2 with
/// the dirty bitmap `inc1`, `expected.raw`, `dirty.json`).
fn fixture(dir: &Path) -> (PathBuf, PathBuf) {
    let base = dir.join("base.raw");
    make_raw(&base, 32 << 20, 3);
    let cbt = dir.join("cbt");
    ok(Command::new("bash")
        .arg(shared_dir().join("peers/qcow2_cbt_fixture.sh"))
        .arg(&base)
        .arg(&cbt)
        .arg("7"));
    (base, cbt)
}

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

fn restored(store: &TestStore, point: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("{point}.raw"));
    store.restore(point, &out, "raw");
    read(&out)
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

#[test]
fn served_points_read_as_their_disks_with_holes_overlays_and_errors_where_they_are() {
    let work = tempfile::tempdir().expect("tempdir");
    let (base, cbt) = fixture(work.path());
    let store = TestStore::new("256K");
    let a = id(&store.backup("vm", "2026-11-01T00:00:00Z", "xvda", &base, &[]));
    let expected = cbt.join("expected.raw");
    let b = id(&store.backup("vm", "2026-11-02T00:00:00Z", "xvda", &expected, &[]));
    let srv = serve_nbd(&store.path(), &[]);
    // qemu-img compares each point with its source; nbdcopy copies it bit-exact.
    for (p, src) in [(&a, &base), (&b, &expected)] {
        ok(Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(srv.uri(&p[..12]))
            .arg(src));
        let copy = work.path().join(format!("copy-{p}.raw"));
        ok(Command::new("nbdcopy").arg(srv.uri(p)).arg(&copy));
        assert_eq!(read(&copy), read(src));
    }
    // The VM/DISK@TIME name works too, and NBD_OPT_LIST shows the names.
    let list = ok(Command::new("nbdinfo")
        .arg("--list")
        .arg("--json")
        .arg(srv.uri("")));
    assert!(
        list.contains("vm/xvda@2026-11-01T00:00:00Z") && list.contains(&a),
        "{list}"
    );
    // Holes where the point has zero chunks, data elsewhere.
    let bytes = read(&base);
    let zero_chunk = |c: u64| {
        let s = (c * CHUNK) as usize;
        bytes[s..(s + CHUNK as usize).min(bytes.len())]
            .iter()
            .all(|&x| x == 0)
    };
    for (o, l, t) in map(&srv.uri(&a), None) {
        for c in o / CHUNK..(o + l).div_ceil(CHUNK) {
            assert_eq!(t & 3 == 3, zero_chunk(c), "chunk {c} at {o}+{l} type {t}");
        }
    }
    // Eight clients at once.
    let copies: Vec<_> = (0..8)
        .map(|i| {
            let out = work.path().join(format!("par-{i}.raw"));
            let child = Command::new("nbdcopy")
                .arg(srv.uri(&b))
                .arg(&out)
                .spawn()
                .expect("nbdcopy");
            (child, out)
        })
        .collect();
    let want = read(&expected);
    for (mut child, out) in copies {
        assert!(child.wait().expect("wait").success());
        assert_eq!(read(&out), want);
    }
    drop(srv);

    // --writable: a client sees its own writes; the store and other clients never do.
    let srv = serve_nbd(&store.path(), &["--writable", &a]);
    let io = ok(Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            "write -P 0x55 100000 70000",
            "-c",
            "read -P 0x55 100000 70000",
        ])
        .args(["-c", "write -z 0 4096", "-c", "read -P 0 0 4096"])
        .arg(srv.uri(&a)));
    assert!(
        !io.contains("fail") && !io.contains("Pattern verification failed"),
        "{io}"
    );
    let other = work.path().join("other.raw");
    ok(Command::new("nbdcopy").arg(srv.uri(&a)).arg(&other));
    assert_eq!(
        read(&other),
        read(&base),
        "another client sees the backup untouched"
    );
    drop(srv);
    assert_eq!(
        restored(&store, &a, work.path()),
        read(&base),
        "the store is untouched"
    );

    // A flipped byte in a pack: EIO on the ranges of that chunk only.
    let bad = corrupt_a_data_chunk(&store);
    let hit: Vec<u64> = (0..bytes.len() as u64 / CHUNK)
        .filter(|&c| {
            let s = (c * CHUNK) as usize;
            blake3::hash(&bytes[s..s + CHUNK as usize])
                .to_hex()
                .as_str()
                == bad
        })
        .collect();
    let want: Vec<u64> = (0..bytes.len() as u64 / CHUNK)
        .filter(|&c| {
            let s = (c * CHUNK) as usize;
            blake3::hash(&read(&expected)[s..s + CHUNK as usize])
                .to_hex()
                .as_str()
                == bad
        })
        .collect();
    let (point, chunks) = if hit.is_empty() {
        (&b, want)
    } else {
        (&a, hit)
    };
    assert!(!chunks.is_empty(), "the damaged chunk {bad} is in no point");
    let srv = serve_nbd(&store.path(), &[point]);
    let badc = chunks[0];
    let good = (0..(32u64 << 20) / CHUNK)
        .find(|c| !chunks.contains(c))
        .expect("a good chunk");
    let r = run(Command::new("qemu-io")
        .args([
            "-r",
            "-f",
            "raw",
            "-c",
            &format!("read {} 4096", badc * CHUNK),
        ])
        .arg(srv.uri(point)));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(text.contains("Input/output error"), "{text}");
    let r = ok(Command::new("qemu-io")
        .args([
            "-r",
            "-f",
            "raw",
            "-c",
            &format!("read {} 4096", good * CHUNK),
        ])
        .arg(srv.uri(point)));
    assert!(r.contains("read 4096/4096"), "{r}");
}

#[test]
fn an_exported_point_reads_on_while_gc_drops_its_packs() {
    let work = tempfile::tempdir().expect("tempdir");
    let base = work.path().join("base.raw");
    make_raw(&base, 16 << 20, 5);
    let store = TestStore::new("256K");
    let p = id(&store.backup("vm", "2026-11-01T00:00:00Z", "xvda", &base, &[]));
    let srv = serve_nbd(&store.path(), &[&p]);
    // The point goes, and gc deletes what only it held, while the server exports it.
    ok(&mut store.cmd(&["forget", &p]));
    let gc = ok(&mut store.cmd(&["gc", "--max-unused", "0"]));
    assert!(store.list().is_empty(), "{gc}");
    assert!(
        !store.pack_files().is_empty(),
        "gc kept the packs a running reader uses: {gc}"
    );
    let copy = work.path().join("copy.raw");
    ok(Command::new("nbdcopy").arg(srv.uri(&p)).arg(&copy));
    assert_eq!(
        read(&copy),
        read(&base),
        "the export reads the bytes it was exported with"
    );
    drop(srv);
    // Once the server is gone the next gc frees the packs.
    ok(&mut store.cmd(&["gc", "--max-unused", "0"]));
    assert!(store.pack_files().is_empty(), "{:?}", store.pack_files());
}

#[test]
fn nbd_over_tls_checks_certificates_and_never_falls_back_to_plain_text() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let (ca, cert, key) = cairn_tests::certificates(w);
    // The folder layout of nbdkit's and libnbd's --tls-certificates.
    let pki = w.join("pki");
    std::fs::create_dir(&pki).expect("mkdir");
    for (from, to) in [
        (&ca, "ca-cert.pem"),
        (&cert, "server-cert.pem"),
        (&key, "server-key.pem"),
    ] {
        std::fs::copy(from, pki.join(to)).expect("copy");
    }
    let other = w.join("other");
    std::fs::create_dir(&other).expect("mkdir");
    let (other_ca, _, _) = cairn_tests::certificates(&other);
    let base = w.join("base.raw");
    make_raw(&base, 16 << 20, 21);
    let store = TestStore::new("256K");
    let p = id(&store.backup("vm", "2026-11-01T00:00:00Z", "xvda", &base, &[]));
    let srv = serve_nbd(
        &store.path(),
        &[
            "--tls-cert",
            cert.to_str().expect("utf-8"),
            "--tls-key",
            key.to_str().expect("utf-8"),
            &p,
        ],
    );
    // libnbd's nbdcopy over TLS, checking our certificate.
    let copy = w.join("copy.raw");
    ok(Command::new("nbdcopy")
        .arg(format!(
            "{}&tls-certificates={}",
            srv.tls_uri(&p),
            pki.display()
        ))
        .arg(&copy));
    assert_eq!(read(&copy), read(&base));
    // Our client against our server: a backup from nbds+unix:// with the CA.
    let ca_arg = ["--ca-file", ca.to_str().expect("utf-8")];
    let again = store.backup(
        "copy",
        "2026-11-01T00:00:00Z",
        "xvda",
        Path::new(&srv.tls_uri(&p)),
        &ca_arg,
    );
    assert_eq!(restored(&store, &id(&again), w), read(&base));
    let before = store.list().len();
    // A plain client is refused; so is a certificate from another CA.
    let out = run(Command::new("nbdinfo").arg(srv.uri(&p)));
    assert!(!out.status.success(), "a plain client was served");
    let out = run(store
        .cmd(&["backup", "--vm", "x"])
        .arg(format!("xvda={}", srv.uri(&p))));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("TLS required"),
        "{err}"
    );
    let out = run(store
        .cmd(&[
            "backup",
            "--vm",
            "x",
            "--ca-file",
            other_ca.to_str().expect("utf-8"),
        ])
        .arg(format!("xvda={}", srv.tls_uri(&p))));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("certificate"),
        "{err}"
    );
    drop(srv);
    // A server that offers no TLS: an nbds:// client stops, it never reads in plain text.
    let plain = serve_nbd(&store.path(), &[&p]);
    let out = run(store
        .cmd(&["backup", "--vm", "x"])
        .args(ca_arg)
        .arg(format!("xvda={}", plain.tls_uri(&p))));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("NBD_OPT_STARTTLS"),
        "{err}"
    );
    drop(plain);
    assert_eq!(store.list().len(), before);
    // Our client against nbdkit's TLS (GnuTLS).
    let kit = nbdkit(&[
        "--tls=require",
        &format!("--tls-certificates={}", pki.display()),
        "pattern",
        "size=8M",
    ]);
    let k = store.backup(
        "kit",
        "2026-11-01T00:00:00Z",
        "xvda",
        Path::new(&kit.tls_uri("")),
        &ca_arg,
    );
    let copy = w.join("kit.raw");
    ok(Command::new("nbdcopy")
        .arg(format!(
            "{}&tls-certificates={}",
            kit.tls_uri(""),
            pki.display()
        ))
        .arg(&copy));
    assert_eq!(restored(&store, &id(&k), w), read(&copy));
}

#[test]
fn serve_nbd_outlives_hostile_clients_turns_away_extra_ones_and_leaves_no_overlay() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let work = tempfile::tempdir().expect("tempdir");
    let base = work.path().join("base.raw");
    make_raw(&base, 8 << 20, 31);
    let store = TestStore::new("256K");
    let p = id(&store.backup("vm", "2026-11-01T00:00:00Z", "xvda", &base, &[]));
    let mut srv = serve_nbd(&store.path(), &["--writable", "--max-clients", "2", &p]);
    // Garbage instead of a handshake, a handshake cut short, a request cut short.
    let mut rng = 0x9e37_79b9_u32;
    for round in 0..20 {
        let mut s = UnixStream::connect(srv.socket()).expect("connect");
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting).expect("greeting");
        let junk: Vec<u8> = (0..64 * (round + 1))
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 17;
                rng ^= rng << 5;
                rng as u8
            })
            .collect();
        let _ = s.write_all(&junk);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    // Two clients holding connections (each greeted, so counted; a junk session the server has
    // not finished counting may turn one away: it connects again): a third is turned away.
    let greeted = || {
        let mut held = None;
        cairn_tests::wait_until("a client to be greeted", || {
            let mut s = UnixStream::connect(srv.socket()).expect("connect");
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .expect("timeout");
            let mut greeting = [0u8; 18];
            if s.read_exact(&mut greeting).is_ok() {
                held = Some(s);
            }
            held.is_some()
        });
        held
    };
    let a = greeted();
    let b = greeted();
    let mut c = UnixStream::connect(srv.socket()).expect("c");
    c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    assert!(got.is_empty(), "the third client was greeted: {got:?}");
    drop((a, b));
    // The server still serves, bit-exact (once it has seen the two go: until then a client is
    // turned away), and a writer's overlay lives in STORE/tmp unlinked.
    let copy = work.path().join("copy.raw");
    cairn_tests::wait_until("nbdcopy to be served", || {
        Command::new("nbdcopy")
            .arg(srv.uri(&p))
            .arg(&copy)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    assert_eq!(read(&copy), read(&base));
    let mut writer = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x33 0 1M", "-c", "sleep 5000"])
        .arg(srv.uri(&p))
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-io");
    let tmp = store.path().join("tmp");
    cairn_tests::wait_until("the writer's overlay to be open", || {
        srv.holds_unlinked_file_in(&tmp)
    });
    srv.kill();
    let _ = writer.kill();
    let _ = writer.wait();
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "overlay files left after kill -9: {left:?}"
    );
    assert_eq!(
        restored(&store, &p, work.path()),
        read(&base),
        "the store is untouched"
    );
}

/// A client certificate signed by the CA of `certificates(dir)` (its `ca.key`), for `name`.
fn client_certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (key, csr, cert, ext) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.csr")),
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.cnf")),
    );
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .expect("ext");
    ok(Command::new("openssl")
        .args(["req", "-newkey", "rsa:2048", "-nodes", "-subj"])
        .arg(format!("/CN={name}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    ok(Command::new("openssl")
        .args(["x509", "-req", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(dir.join("ca.pem"))
        .arg("-CAkey")
        .arg(dir.join("ca.key"))
        .args(["-CAcreateserial", "-days", "2", "-extfile"])
        .arg(&ext)
        .arg("-out")
        .arg(&cert));
    (cert, key)
}

/// A folder as libnbd's and qemu's `tls-certificates` / `tls-creds-x509` read it.
fn pki(dir: &Path, files: &[(&Path, &str)]) -> PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir");
    for (from, to) in files {
        std::fs::copy(from, dir.join(to)).expect("copy");
    }
    dir.to_path_buf()
}

#[test]
fn serve_nbd_with_client_certificates_serves_their_holders_only_and_refuses_to_expose_without() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let (ca, cert, key) = cairn_tests::certificates(w);
    let (client, client_key) = client_certificate(w, "backup-host");
    let other = w.join("other");
    std::fs::create_dir(&other).expect("mkdir");
    let _ = cairn_tests::certificates(&other);
    let (stranger, stranger_key) = client_certificate(&other, "stranger");
    let base = w.join("base.raw");
    make_raw(&base, 8 << 20, 41);
    let store = TestStore::new("256K");
    let p = id(&store.backup("vm", "2026-11-01T00:00:00Z", "xvda", &base, &[]));
    let s = |p: &Path| p.to_str().expect("utf-8").to_owned();
    // Exposed on every address without client certificates: refused before anything listens.
    for extra in [
        &[][..],
        &["--tls-cert", &s(&cert), "--tls-key", &s(&key)][..],
    ] {
        let o = run(store
            .cmd(&["serve-nbd", "--listen", "0.0.0.0:0"])
            .args(extra)
            .arg(&p));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("--tls-client-ca"),
            "{err}"
        );
    }
    let srv = serve_nbd(
        &store.path(),
        &[
            "--tls-cert",
            &s(&cert),
            "--tls-key",
            &s(&key),
            "--tls-client-ca",
            &s(&ca),
            &p,
        ],
    );
    let holder = pki(
        &w.join("holder"),
        &[
            (&ca, "ca-cert.pem"),
            (&client, "client-cert.pem"),
            (&client_key, "client-key.pem"),
        ],
    );
    let anonymous = pki(&w.join("anonymous"), &[(&ca, "ca-cert.pem")]);
    let foreign = pki(
        &w.join("foreign"),
        &[
            (&ca, "ca-cert.pem"),
            (&stranger, "client-cert.pem"),
            (&stranger_key, "client-key.pem"),
        ],
    );
    // libnbd's nbdcopy with the client certificate reads the disk.
    let copy = w.join("copy.raw");
    ok(Command::new("nbdcopy")
        .arg(format!(
            "{}&tls-certificates={}",
            srv.tls_uri(&p),
            holder.display()
        ))
        .arg(&copy));
    assert_eq!(read(&copy), read(&base));
    // qemu-img with tls-creds-x509 too.
    let q = w.join("qemu.raw");
    ok(Command::new("qemu-img")
        .args(["convert", "--object"])
        .arg(format!(
            "tls-creds-x509,id=tls0,dir={},endpoint=client",
            holder.display()
        ))
        .arg("--image-opts")
        .arg(format!(
            "driver=nbd,path={},export={p},tls-creds=tls0,tls-hostname=localhost",
            srv.socket().display()
        ))
        .args(["-O", "raw"])
        .arg(&q));
    assert_eq!(read(&q), read(&base));
    // Without a certificate, or with one another CA signed: nothing is read.
    for (who, dir) in [("no certificate", &anonymous), ("another CA's", &foreign)] {
        let o = run(Command::new("nbdinfo").arg(format!(
            "{}&tls-certificates={}",
            srv.tls_uri(&p),
            dir.display()
        )));
        assert!(!o.status.success(), "a client with {who} was served");
    }
    let o = run(Command::new("nbdinfo").arg(srv.uri(&p)));
    assert!(!o.status.success(), "a plain client was served");
}

#[test]
fn serve_nbd_drops_slow_handshakes_and_caps_each_address() {
    use std::io::Write;
    use std::net::TcpStream;
    let work = tempfile::tempdir().expect("tempdir");
    let base = work.path().join("base.raw");
    make_raw(&base, 4 << 20, 43);
    let store = TestStore::new("256K");
    let p = id(&store.backup("vm", "2026-11-01T00:00:00Z", "xvda", &base, &[]));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = store
        .cmd(&[
            "serve-nbd",
            "--listen",
            &addr,
            "--max-clients-per-address",
            "3",
            &p,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve-nbd starts");
    let started = std::time::Instant::now();
    while TcpStream::connect(&addr).is_err() {
        assert!(
            started.elapsed().as_secs() < 20,
            "serve-nbd does not listen"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let uri = format!("nbd://{addr}/{p}");
    // A connection the server greeted (so holds a slot); one turned away (a slot of a closed
    // connection not yet given back) connects again.
    let greeted = || {
        let mut held = None;
        cairn_tests::wait_until("a client to be greeted", || {
            let mut s = TcpStream::connect(&addr).expect("connect");
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .expect("timeout");
            let mut greeting = [0u8; 18];
            if std::io::Read::read_exact(&mut s, &mut greeting).is_ok() {
                held = Some(s);
            }
            held.is_some()
        });
        held.expect("greeted")
    };
    // Three idle clients hold their address's slots: a fourth from it is turned away.
    let idle: Vec<TcpStream> = (0..3).map(|_| greeted()).collect();
    let o = run(Command::new("nbdinfo").arg(&uri));
    assert!(
        !o.status.success(),
        "a fourth client from one address was served"
    );
    drop(idle);
    // Their slots come back: two clients at once are greeted (so the slow client below finds
    // a slot whatever of these two is not yet given back).
    drop((greeted(), greeted()));
    // A client trickling its handshake a byte every few seconds is dropped at the deadline
    // (30 s in all), not kept for as long as it keeps sending.
    let mut slow = TcpStream::connect(&addr).expect("connect");
    // A well-formed handshake (fixed newstyle flags, then an option's magic), a byte at a time.
    let handshake: Vec<u8> =
        [&[0u8, 0, 0, 3][..], b"IHAVEOPT", &[0, 0, 0, 1, 0, 0, 0, 64]].concat();
    let started = std::time::Instant::now();
    let mut dropped = false;
    for byte in handshake.iter().cycle() {
        if started.elapsed() > std::time::Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(4));
        if slow.write_all(&[*byte]).is_err() {
            dropped = true;
            break;
        }
    }
    assert!(dropped, "a trickling handshake held its slot for 60 s");
    assert!(
        started.elapsed().as_secs() >= 25,
        "dropped before its deadline"
    );
    // A real client is served afterwards.
    let copy = work.path().join("copy.raw");
    ok(Command::new("nbdcopy").arg(&uri).arg(&copy));
    assert_eq!(read(&copy), read(&base));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn writable_overlays_are_bounded_in_total_and_say_so_when_full() {
    let work = tempfile::tempdir().expect("tempdir");
    let base = work.path().join("base.raw");
    make_raw(&base, 8 << 20, 45);
    let store = TestStore::new("256K");
    let p = id(&store.backup("vm", "2026-11-01T00:00:00Z", "xvda", &base, &[]));
    // Room for four chunks in all overlays together.
    let srv = serve_nbd(&store.path(), &["--writable", "--overlay-limit", "1M", &p]);
    let io = ok(Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            "write -P 0x55 0 1M",
            "-c",
            "read -P 0x55 0 1M",
        ])
        .arg(srv.uri(&p)));
    assert!(!io.contains("fail"), "{io}");
    // That client is gone, its room free again. A client whose writes need more than four
    // chunks gets ENOSPC for the fifth; once it is gone, its room is free again too.
    let full = run(Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x66 2M 2M"])
        .arg(srv.uri(&p)));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&full.stdout),
        String::from_utf8_lossy(&full.stderr)
    );
    assert!(said.contains("No space left"), "{said}");
    let again = ok(Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            "write -P 0x77 4M 1M",
            "-c",
            "read -P 0x77 4M 1M",
        ])
        .arg(srv.uri(&p)));
    assert!(!again.contains("fail"), "{again}");
}

#[test]
fn serve_nbd_never_deletes_a_file_that_is_not_a_socket() {
    let work = tempfile::tempdir().expect("tempdir");
    let base = work.path().join("base.raw");
    make_raw(&base, 1 << 20, 47);
    let store = TestStore::new("256K");
    let p = id(&store.backup("vm", "2026-11-01T00:00:00Z", "xvda", &base, &[]));
    let precious = work.path().join("precious.txt");
    std::fs::write(&precious, b"keep me").expect("file");
    let o = run(store.cmd(&["serve-nbd", "--socket"]).arg(&precious).arg(&p));
    assert!(
        !o.status.success(),
        "serve-nbd listened over a regular file"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not a socket"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(read(&precious), b"keep me");
}

/// A client that chose an export and then sends nothing for `--idle-timeout` is dropped: an
/// idle client does not hold its slot for ever.
#[test]
fn serve_nbd_drops_a_client_idle_past_its_timeout() {
    let work = tempfile::tempdir().expect("tempdir");
    let base = work.path().join("base.raw");
    make_raw(&base, 1 << 20, 49);
    let store = TestStore::new("256K");
    let p = id(&store.backup("vm", "2026-11-01T00:00:00Z", "xvda", &base, &[]));
    let srv = serve_nbd(&store.path(), &["--idle-timeout", "1m", &p]);
    // libnbd's Python binding: a read, 70 s of silence, a read again.
    let script = format!(
        "import nbd, time\nh = nbd.NBD()\nh.connect_uri({uri:?})\nh.pread(4096, 0)\n\
         time.sleep(70)\ntry:\n    h.pread(4096, 0)\n    print('still served')\n\
         except nbd.Error as e:\n    print('dropped:', e)\n",
        uri = srv.uri(&p)
    );
    // Debian's python3 (python3-libnbd, installed by scripts/setup.sh), not one on the PATH.
    let python = Path::new("/usr/bin/python3");
    assert!(
        python.exists(),
        "/usr/bin/python3 is missing: scripts/setup.sh installs it"
    );
    let o = run(Command::new(python).args(["-c", &script]));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains("dropped"),
        "{said}{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
