//! A store whose packs live in a 3-node Garage bucket: a series restores bit-exact, gc frees
//! what it says and the bucket alone rebuilds the store; a point over many ranges reads without
//! waiting on itself. Faults (kills, a node down, objects gone or garbled) are `s3_faults.rs`.

use std::process::Command;

use cairn_tests::garage::Garage;
use cairn_tests::s3::{S3Store, bucket, eventually, listed, local_packs};
use cairn_tests::serve::Server;
use cairn_tests::{assert_same_content, cairn, id, json, make_raw, modify_raw, num, ok, run};

#[test]
fn a_series_in_a_bucket_restores_bit_exact_gc_frees_what_it_says_and_the_bucket_alone_rebuilds_it()
{
    let g = Garage::start();
    assert_eq!(g.bucket, "cairn", "the cluster's bucket");
    let s = S3Store::new(&g, "series");
    let work = tempfile::tempdir().expect("tempdir");
    let mut disks = Vec::new();
    let d0 = work.path().join("d0.raw");
    make_raw(&d0, 24 << 20, 7);
    disks.push(d0);
    for day in 1..4u32 {
        let next = work.path().join(format!("d{day}.raw"));
        modify_raw(&disks[disks.len() - 1], &next, 100 + day);
        disks.push(next);
    }
    let mut ids = Vec::new();
    for (day, d) in disks.iter().enumerate() {
        let p = s.backup("web", &format!("2026-11-0{}T02:00:00Z", day + 1), d);
        ids.push(id(&p));
    }
    // Listing needs only the index here: no credentials.
    let mut c = cairn(["list", "--json", "--store"]);
    c.arg(s.path())
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    assert_eq!(json(&ok(&mut c)).as_array().map(Vec::len), Some(4));
    // A restore does, and says so.
    let mut c = cairn(["restore", "--store"]);
    c.arg(s.path())
        .args([&ids[0], "--format", "raw"])
        .arg(work.path().join("no-key.raw"))
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    let out = run(&mut c);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AWS_ACCESS_KEY_ID is not set"), "{err}");
    // Nothing of the data stays here: every pack went to the bucket.
    assert!(local_packs(&s).is_empty(), "{:?}", local_packs(&s));
    let b = bucket(&g, &s.prefix);
    let (objects, _) = listed(&b, "packs/");
    assert!(
        objects >= 2 * 4,
        "a pack and its frame list per backup: {objects}"
    );
    assert_eq!(listed(&b, "points/").0, 4, "a root file per point");
    for (p, d) in ids.iter().zip(&disks) {
        s.restore_and_compare(p, d);
    }
    // Tree chunks are cached here (a walk reads them one after the other); a damaged entry is
    // dropped and read from the bucket again, never taken for the chunk.
    let cached = cairn_tests::files_under(&s.path().join("cache/trees"));
    assert!(!cached.is_empty(), "no tree chunk cached");
    let mut damaged = Vec::new();
    for f in &cached {
        let mut bytes = std::fs::read(f).expect("cache entry");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x55;
        std::fs::write(f, &bytes).expect("damage a cache entry");
        damaged.push(bytes);
    }
    s.restore_and_compare(&ids[3], &disks[3]);
    let mended = cached
        .iter()
        .zip(&damaged)
        .filter(|(f, d)| std::fs::read(f).is_ok_and(|now| now != **d))
        .count();
    assert!(
        mended > 0,
        "the restore read no tree chunk through the cache"
    );
    let v = json(&ok(&mut s.cmd(&["verify", "--json"])));
    assert_eq!(v["damaged"].as_array().map(Vec::len), Some(0), "{v}");

    // A second store on the same prefix is refused, and nothing is made here.
    let other = work.path().join("other");
    let out = run(s
        .cmd(&["init", "--timezone", "UTC"])
        .arg(&other)
        .args(s.packs_args()));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("holds store") && err.contains("rebuild"),
        "{err}"
    );
    assert!(!other.exists());

    // Verify reads every chunk from the bucket.
    let v = json(&ok(&mut s.cmd(&["verify", "--json"])));
    assert!(num(&v, "chunks_checked") > 0, "{v}");
    assert_eq!(v["damaged"].as_array().map(Vec::len), Some(0), "{v}");

    // Forget the first two points; gc frees what it says from the bucket.
    for p in &ids[..2] {
        ok(&mut s.cmd(&["forget", p]));
    }
    // (Garage's listing may lag a delete for a moment.)
    eventually(
        || listed(&b, "points/").0 == 2,
        "the forgotten points' root files deleted",
    );
    let (_, before) = listed(&b, "packs/");
    let r = json(&ok(&mut s.cmd(&["gc", "--json", "--repack-below", "100"])));
    assert!(num(&r, "bytes_freed") > 0, "{r}");
    eventually(
        || before - listed(&b, "packs/").1 == num(&r, "bytes_freed"),
        "the bucket's bytes dropped by what gc reports",
    );
    for (p, d) in ids.iter().zip(&disks).skip(2) {
        s.restore_and_compare(p, d);
    }
    let v = json(&ok(&mut s.cmd(&["verify", "--json"])));
    assert_eq!(v["damaged"].as_array().map(Vec::len), Some(0), "{v}");

    // A new machine: the store's folder gone, made again from the bucket alone.
    std::fs::remove_dir_all(s.path()).expect("remove the store folder");
    let out = ok(s
        .cmd(&["repair", "--rebuild-index"])
        .arg("--store")
        .arg(s.path())
        .args(s.packs_args()));
    assert!(out.contains("rebuilt the index"), "{out}");
    let listed_ids: Vec<String> = s.points().iter().map(id).collect();
    assert_eq!(listed_ids, ids[2..].to_vec());
    for (p, d) in ids.iter().zip(&disks).skip(2) {
        s.restore_and_compare(p, d);
    }
    // And it goes on: a backup after the rebuild dedups against what the bucket holds.
    let p = s.backup("web", "2026-11-09T02:00:00Z", &disks[3]);
    assert!(num(&p, "new_stored_bytes") < 1 << 20, "{p}");

    // Instant restore: the newest point served over NBD from the bucket, copied by nbdcopy.
    let socket = work.path().join("nbd.sock");
    let mut nbd = s
        .cmd(&["serve-nbd", "--socket"])
        .arg(&socket)
        .arg(&ids[3])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("cairn serve-nbd");
    eventually(
        || std::os::unix::net::UnixStream::connect(&socket).is_ok(),
        "serve-nbd listens",
    );
    let copied = work.path().join("nbd.raw");
    let uri = format!("nbd+unix:///{}?socket={}", ids[3], socket.display());
    ok(Command::new("nbdcopy").arg(&uri).arg(&copied));
    let _ = nbd.kill();
    let _ = nbd.wait();
    assert_same_content(&copied, &disks[3], true);

    // Served by `cairn serve`: a host backs up through it, another restores.
    let token = |name: &str, role: &str| {
        let v = json(&ok(s
            .cmd(&[
                "token", "create", "--json", "--name", name, "--role", role, "--vm", "*",
            ])
            .arg("--store")
            .arg(s.path())));
        v["secret"].as_str().expect("secret").to_owned()
    };
    let (writer, reader) = (token("host", "backup"), token("restorer", "restore"));
    let server =
        Server::start_env(&s.path(), &s.env).expect("cairn serve starts on a store in a bucket");
    let sent = json(&ok(server
        .cmd(&writer, &["backup", "--json", "--vm", "db"])
        .arg(format!("xvda={}", disks[0].display()))))[0]
        .clone();
    let out = work.path().join("served.raw");
    ok(server
        .cmd(&reader, &["restore", &id(&sent), "--format", "raw"])
        .arg(&out));
    assert_same_content(&out, &disks[0], true);
    drop(server);

    // Replicated into another store in the bucket, and out of it into a folder.
    let copy = S3Store::new(&g, "replica");
    let folder = work.path().join("folder-replica");
    ok(cairn(["init", "--timezone", "UTC"]).arg(&folder));
    ok(s.cmd(&["replicate", "--to"])
        .arg(copy.path())
        .arg("--from")
        .arg(s.path()));
    ok(s.cmd(&["replicate", "--to"])
        .arg(&folder)
        .arg("--from")
        .arg(copy.path()));
    let want = s.points().len();
    assert_eq!(copy.points().len(), want);
    let in_folder = json(&ok(cairn(["list", "--json", "--store"]).arg(&folder)));
    assert_eq!(in_folder.as_array().map(Vec::len), Some(want));
    copy.restore_and_compare(&id(&sent), &disks[0]);
    assert!(local_packs(&copy).is_empty());
}

#[test]
fn a_point_scattered_over_many_ranges_restores_verifies_and_repacks_without_waiting_on_itself() {
    // Disk `a`: 48 MiB of incompressible bytes (192 chunks of 256 KiB, in 4 MiB packs). Disk
    // `c`: every third chunk of `a`, so that its chunks are all stored already and no two sit
    // within a ranged GET's gap of each other: each of its restore windows (32 chunks), verify
    // batches (64) and gc copy groups (32) is as many ranges, more than the read-ahead's
    // buffers (eleven, five for gc). A reader that waited for a whole batch while holding its
    // buffers would wait for ever: each step has a time limit.
    let g = Garage::start();
    let s = S3Store::new(&g, "scattered");
    s.small_packs();
    let work = tempfile::tempdir().expect("tempdir");
    const CHUNK: usize = 256 << 10;
    let mut a = vec![0u8; 192 * CHUNK];
    blake3::Hasher::new()
        .update(b"scattered")
        .finalize_xof()
        .fill(&mut a);
    let c: Vec<u8> = a
        .chunks(CHUNK)
        .step_by(3)
        .flat_map(|ch| ch.iter().copied())
        .collect();
    let (disk_a, disk_c) = (work.path().join("a.raw"), work.path().join("c.raw"));
    std::fs::write(&disk_a, &a).expect("disk a");
    std::fs::write(&disk_c, &c).expect("disk c");
    let pa = id(&s.backup("a", "2026-11-01T02:00:00Z", &disk_a));
    let pc = s.backup("c", "2026-11-01T03:00:00Z", &disk_c);
    assert!(num(&pc, "new_stored_bytes") < 1 << 20, "{pc}");
    let pc = id(&pc);
    let limited = |args: &[&str]| {
        let mut c = Command::new("timeout");
        c.arg("120")
            .arg(cairn_tests::cairn_bin())
            .args(args)
            .env("CAIRN_STORE", s.path())
            .envs(s.env.clone());
        c
    };
    let restored = work.path().join("restored.raw");
    ok(limited(&["restore", "--force", &pc, "--format", "raw"]).arg(&restored));
    assert_same_content(&restored, &disk_c, true);
    let v = json(&ok(&mut limited(&["verify", "--json"])));
    assert!(num(&v, "chunks_checked") >= 192, "{v}");
    assert_eq!(v["damaged"].as_array().map(Vec::len), Some(0), "{v}");
    // Forget `a`: two thirds of every pack is garbage, the rest (every third frame) copied.
    ok(&mut s.cmd(&["forget", &pa]));
    let r = json(&ok(&mut limited(&[
        "gc",
        "--json",
        "--repack-below",
        "100",
    ])));
    assert!(num(&r, "bytes_freed") > 24 << 20, "{r}");
    assert!(num(&r, "bytes_copied") > 12 << 20, "{r}");
    ok(limited(&["restore", "--force", &pc, "--format", "raw"]).arg(&restored));
    assert_same_content(&restored, &disk_c, true);
    let v = json(&ok(&mut limited(&["verify", "--json"])));
    assert_eq!(v["damaged"].as_array().map(Vec::len), Some(0), "{v}");
}
