//! Every way in and out of an encrypted store: NBD with a dirty bitmap, `serve-nbd`, `cairn
//! serve` (which stores and serves chunks it cannot open), replicas (kept without the key), and
//! a store whose packs are in a Garage bucket. Each checks what the store's files, the server's
//! or the bucket's objects hold against the source images.

use std::path::Path;
use std::process::Command;

use cairn_tests::garage::Garage;
use cairn_tests::leaks::Needles;
use cairn_tests::nbd::{fixture, nbd_serve, serve_nbd_keyed};
use cairn_tests::s3::{S3Store, bucket};
use cairn_tests::serve::{Server, frame_of, frame_of_kind, token};
use cairn_tests::{
    LIGHT_KDF, PASSPHRASE, TestStore, assert_same_content, cairn, id, json, num, ok, refused, run,
    series,
};

const CHUNK: usize = 256 << 10;

/// Fails, naming what was found, when the files under `dir` hold any of `needles`.
fn holds_none(needles: &Needles, dir: &Path) {
    let found = needles.found_under(dir);
    assert!(
        found.is_empty(),
        "plaintext under {}: {found:?}",
        dir.display()
    );
}

#[test]
fn nbd_with_a_dirty_bitmap_in_and_serve_nbd_out() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let (base, cbt) = fixture(w);
    let store = TestStore::encrypted("256K");
    let srv = nbd_serve(&base, "raw", &[]);
    let full = id(&store.backup(
        "vm",
        "2026-11-01T00:00:00Z",
        "xvda",
        Path::new(&srv.uri("disk")),
        &[],
    ));
    drop(srv);
    let srv = nbd_serve(&cbt.join("disk.qcow2"), "qcow2", &["inc1"]);
    let inc = store.backup(
        "vm",
        "2026-11-02T00:00:00Z",
        "xvda",
        Path::new(&srv.uri("disk")),
        &["--dirty-bitmap", "inc1"],
    );
    drop(srv);
    assert!(!inc["key"].as_bool().expect("key"), "{inc}");
    let expected = cbt.join("expected.raw");
    store.restore_matches(&full, &base, w);
    store.restore_matches(&id(&inc), &expected, w);
    holds_none(
        &Needles::of_images(&[&base, &expected], CHUNK),
        &store.path(),
    );

    // serve-nbd with the key (passphrase on a descriptor): qemu-img reads every point as it was.
    let nbd = serve_nbd_keyed(&store.path(), &store.key_file(), &[]);
    for (p, src) in [(&full, &base), (&id(&inc), &expected)] {
        ok(Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(nbd.uri(&p[..12]))
            .arg(src));
    }
    drop(nbd);
    // Without it, serve-nbd does not start (the test's helper panics when nothing listens):
    // the refusal is checked on the command itself.
    let out = run(cairn(["serve-nbd", "--store"])
        .arg(store.path())
        .arg("--socket")
        .arg(w.join("no.sock"))
        .env_remove("CAIRN_KEY_FILE")
        .env("CAIRN_KEYS_DIR", w.join("none")));
    refused(&out, &["encrypted", "key"]);
}

#[test]
fn a_server_stores_and_serves_sealed_chunks_it_cannot_open() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let raws = series(w, "32M", 21, 4, 2);
    let store = TestStore::encrypted("256K");
    let backup = token(&store.path(), "host", "backup", "web*");
    let admin = token(&store.path(), "admin", "admin", "*");
    // The server is given no key: it has none to give.
    let server = Server::start(&store.path(), 0, &[]);
    let keyed = |c: &mut Command| {
        c.env("CAIRN_KEY_FILE", store.key_file())
            .env("CAIRN_PASSPHRASE", PASSPHRASE)
            .env("CAIRN_KEYS_DIR", w.join("keys"));
    };
    // A host without the key is refused before it sends a byte.
    let out = run(server
        .cmd(&backup, &["backup", "--vm", "web1"])
        .arg(format!("xvda={}", raws[0].display()))
        .env("CAIRN_KEYS_DIR", w.join("keys")));
    refused(&out, &["encrypted", "key"]);
    // With it, two days; the second sends only what changed.
    let mut sent = Vec::new();
    let mut points = Vec::new();
    for r in &raws {
        let mut c = server.cmd(&backup, &["backup", "--json", "--vm", "web1"]);
        keyed(&mut c);
        let p = json(&ok(c.arg(format!("xvda={}", r.display()))))[0].clone();
        sent.push(num(&p, "bytes_sent"));
        points.push(id(&p));
    }
    assert!(sent[1] < sent[0] / 4, "{sent:?}");
    // What the server wrote holds nothing of the disks.
    holds_none(
        &Needles::of_images(&[&raws[0], &raws[1]], CHUNK),
        &store.path(),
    );
    // Restored through the server, on the host's side, bit-exact.
    for (p, r) in points.iter().zip(&raws) {
        let out = w.join(format!("{p}.raw"));
        let mut c = server.cmd(&admin, &["restore", p]);
        keyed(&mut c);
        ok(c.arg(&out));
        assert_same_content(&out, r, true);
    }
    // A plain data chunk sent to an encrypted store: refused (a host whose cairn forgot to
    // seal, or a forger).
    let sid = server.open_session(&backup, "web2");
    let (code, answer) = server.curl(
        "POST",
        &format!("sessions/{sid}/chunks"),
        &backup,
        Some(&frame_of(b"plaintext the server must not keep")),
    );
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&answer));
    assert!(
        String::from_utf8_lossy(&answer).contains("unsealed data chunk"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // A "tree" chunk sealed (the server could not read it, and trees are never sealed):
    // refused, not taken as checked, even right after real tree chunks were uploaded.
    let mut sealed_tree = frame_of_kind(&[7u8; 600], 1);
    sealed_tree[48] = 2;
    let crc = cairn_tests::serve::crc32(&sealed_tree[8..56]);
    sealed_tree[4..8].copy_from_slice(&crc.to_be_bytes());
    let (code, answer) = server.curl(
        "POST",
        &format!("sessions/{sid}/chunks"),
        &backup,
        Some(&sealed_tree),
    );
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&answer));
    // On the server's machine, without the key, verify checks every frame beside the server.
    let out = run(&mut store.keyless(&["verify", "--json"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn replicas_keep_sealed_chunks_without_the_key_and_refuse_another_sealing() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let raws = series(w, "32M", 22, 5, 3);
    let src = TestStore::encrypted("256K");
    let points = src.daily_backups("db", &raws[..2]);
    // A replica made with the source's key file: same ids, chunks copied as stored, and no
    // key given to the replication.
    let replica = w.join("replica");
    ok(
        cairn(["init", "--encrypt", "--timezone", "UTC", "--key-file"])
            .arg(src.key_file())
            .args(LIGHT_KDF)
            .env("CAIRN_PASSPHRASE", PASSPHRASE)
            .arg(&replica),
    );
    let first = json(&ok(src
        .keyless(&["replicate", "--json", "--from"])
        .arg(src.path())
        .arg("--to")
        .arg(&replica)));
    assert_eq!(first["points"].as_array().map(Vec::len), Some(2), "{first}");
    holds_none(&Needles::of_images(&[&raws[0], &raws[1]], CHUNK), &replica);
    // A third day sends only what changed.
    let p3 = id(&src.backup("db", "2026-11-03T02:00:00Z", "xvda", &raws[2], &[]));
    let second = json(&ok(src
        .keyless(&["replicate", "--json", "--from"])
        .arg(src.path())
        .arg("--to")
        .arg(&replica)));
    assert!(
        num(&second, "bytes_sent") < num(&first, "bytes_sent") / 4,
        "{first} {second}"
    );
    for (p, r) in points.iter().chain([&p3]).zip(&raws) {
        let out = w.join(format!("r-{p}.raw"));
        ok(cairn(["restore", "--store"])
            .arg(&replica)
            .arg(p)
            .arg(&out)
            .env("CAIRN_KEY_FILE", src.key_file())
            .env("CAIRN_PASSPHRASE", PASSPHRASE));
        assert_same_content(&out, r, true);
    }
    // Into an unencrypted store, or one of another key, without the keys that takes: refused,
    // naming the key file, nothing copied.
    let plain = TestStore::new("256K");
    let out = run(src
        .keyless(&["replicate", "--from"])
        .arg(src.path())
        .arg("--to")
        .arg(plain.path()));
    refused(&out, &["is encrypted", "key file", "is not there"]);
    assert!(plain.list().is_empty());
    let other = TestStore::encrypted("256K");
    let out = run(src
        .keyless(&["replicate", "--from"])
        .arg(src.path())
        .arg("--to")
        .arg(other.path()));
    refused(&out, &["is encrypted", "key file"]);
    assert!(other.list().is_empty());
}

#[test]
fn an_unencrypted_store_moves_to_encryption_and_an_encrypted_one_to_a_new_key() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let raws = series(w, "32M", 24, 7, 3);
    let plain = TestStore::new("256K");
    let points = plain.daily_backups("app", &raws[..2]);
    let enc = TestStore::encrypted("256K");
    let migrate = |from: &TestStore, to: &TestStore| {
        let mut c = to.cmd(&["replicate", "--json", "--from"]);
        c.arg(from.path()).arg("--to").arg(to.path());
        c
    };
    // Without the destination's key: refused before any copy.
    let out = run(enc
        .keyless(&["replicate", "--from"])
        .arg(plain.path())
        .arg("--to")
        .arg(enc.path()));
    refused(&out, &["is encrypted", "key file"]);
    assert!(enc.list().is_empty());
    // With it: every point, its id kept, every chunk sealed and named anew.
    let first = json(&ok(&mut migrate(&plain, &enc)));
    assert_eq!(first["points"].as_array().map(Vec::len), Some(2), "{first}");
    let ids: Vec<String> = enc.list().iter().map(id).collect();
    assert_eq!(ids, points);
    holds_none(
        &Needles::of_images(&[&raws[0], &raws[1]], CHUNK),
        &enc.path(),
    );
    for (p, r) in points.iter().zip(&raws) {
        enc.restore_matches(p, r, w);
    }
    let (clean, report) = enc.verify(&["--key"]);
    assert!(clean, "{report}");
    // Run again: nothing to copy. A new point on the old store: that one only.
    let again = json(&ok(&mut migrate(&plain, &enc)));
    assert_eq!(num(&again, "points_present"), 2, "{again}");
    assert_eq!(num(&again, "chunks_sent"), 0, "{again}");
    let p3 = id(&plain.backup("app", "2026-11-03T02:00:00Z", "xvda", &raws[2], &[]));
    let third = json(&ok(&mut migrate(&plain, &enc)));
    assert_eq!(third["points"].as_array().map(Vec::len), Some(1), "{third}");
    enc.restore_matches(&p3, &raws[2], w);

    // A new key: an encrypted store into one made with another key, both keys given.
    let rekeyed = TestStore::encrypted("256K");
    let out = run(rekeyed
        .cmd(&["replicate", "--from"])
        .arg(enc.path())
        .arg("--to")
        .arg(rekeyed.path())
        .env("CAIRN_KEYS_DIR", w.join("no-keys")));
    refused(&out, &["is encrypted", "key file"]);
    ok(rekeyed
        .cmd(&["replicate", "--from"])
        .arg(enc.path())
        .arg("--to")
        .arg(rekeyed.path())
        .arg("--from-key-file")
        .arg(enc.key_file())
        .env("CAIRN_FROM_PASSPHRASE", PASSPHRASE));
    for (p, r) in points.iter().chain([&p3]).zip(&raws) {
        rekeyed.restore_matches(p, r, w);
    }
    // The two encrypted stores share no chunk id.
    let ids_of = |s: &TestStore| -> std::collections::HashSet<String> {
        cairn_tests::files_under(&s.path().join("packs"))
            .into_iter()
            .flat_map(|f| {
                let b = cairn_tests::read(&f);
                let mut out = Vec::new();
                let mut at = 32usize;
                while at + 56 <= b.len() {
                    let stored = u32::from_be_bytes(b[at + 44..at + 48].try_into().expect("len"));
                    out.push(cairn_tests::serve::hex(&b[at + 8..at + 40]));
                    at += 56 + stored as usize;
                }
                out
            })
            .collect()
    };
    assert!(ids_of(&enc).is_disjoint(&ids_of(&rekeyed)));
}

#[test]
fn a_store_in_a_bucket_puts_only_sealed_chunks_there() {
    let g = Garage::start();
    let s = S3Store::encrypted(&g, "sealed");
    let work = tempfile::tempdir().expect("tempdir");
    let raws = series(work.path(), "32M", 23, 6, 2);
    let mut ids = Vec::new();
    for (d, r) in raws.iter().enumerate() {
        ids.push(id(&s.backup(
            "web",
            &format!("2026-11-0{}T02:00:00Z", d + 1),
            r,
        )));
    }
    for (p, r) in ids.iter().zip(&raws) {
        s.restore_and_compare(p, r);
    }
    // Every object of the bucket, read directly: nothing of the disks.
    let b = bucket(&g, &s.prefix);
    let dump = work.path().join("bucket");
    for o in cairn_store::objects::Objects::list(&b, "").expect("list") {
        let bytes = cairn_store::objects::Objects::get(&b, &o.name).expect("get");
        let path = dump.join(&o.name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, bytes).expect("write");
    }
    let needles = Needles::of_images(&[&raws[0], &raws[1]], CHUNK);
    holds_none(&needles, &dump);
    holds_none(&needles, &s.path());
    // Verify without the key reads every frame from the bucket and finds them whole.
    let mut c = s.cmd(&["verify", "--json"]);
    c.env_remove("CAIRN_KEY_FILE")
        .env_remove("CAIRN_PASSPHRASE");
    let v = json(&ok(&mut c));
    assert_eq!(v["damaged"].as_array().map(Vec::len), Some(0), "{v}");
}

#[test]
fn a_standby_disk_follows_an_encrypted_store_with_its_key_only() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let raws = series(w, "16M", 25, 8, 2);
    let store = TestStore::encrypted("64K");
    let points = store.daily_backups("vm", &raws);
    let target = w.join("standby.raw");
    let out = run(store.keyless(&["standby", &points[0], "--to"]).arg(&target));
    refused(&out, &["encrypted", "key"]);
    assert!(!target.exists());
    for (p, r) in points.iter().zip(&raws) {
        ok(store.cmd(&["standby", p, "--to"]).arg(&target));
        assert_same_content(&target, r, true);
    }
}

#[test]
fn an_https_export_backs_up_into_an_encrypted_store() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let (ca, cert, key) = cairn_tests::certificates(w);
    let files = w.join("files");
    std::fs::create_dir(&files).expect("mkdir");
    let raws = series(&files, "16M", 26, 9, 1);
    let name = raws[0]
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let srv = cairn_tests::https::Https::start(&cert, &key, &files, "root:pw");
    let store = TestStore::encrypted("256K");
    let p = json(&ok(store
        .cmd(&[
            "backup",
            "--json",
            "--vm",
            "xapi",
            "--http-user",
            "root",
            "--ca-file",
        ])
        .arg(&ca)
        .arg(format!("xvda={}", srv.url(&format!("files/{name}"))))
        .env("CAIRN_HTTP_PASSWORD", "pw")))[0]
        .clone();
    store.restore_matches(&id(&p), &raws[0], w);
    holds_none(&Needles::of_images(&[&raws[0]], CHUNK), &store.path());
}
