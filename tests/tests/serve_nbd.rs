//! Points served by `cairn serve-nbd` to the real clients (qemu-img, nbdcopy, nbdinfo, qemu-io):
//! holes, overlays and errors where they are, hostile and idle clients, limits. TLS is
//! `serve_nbd_tls.rs`.

use cairn_tests::nbd::{fixture, map, restored, serve_nbd};
use cairn_tests::{TestStore, corrupt_a_data_chunk, id, make_raw, ok, read, run};
use std::path::Path;
use std::process::{Command, Stdio};

const CHUNK: u64 = 256 << 10;

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
