//! A store in a Garage bucket under faults: cairn killed mid-upload, a node killed during a
//! backup and a restore, a wrong key, a pack object gone, a commit that fails after its root
//! object, a garbled frame list.

use std::process::Command;

use cairn_store::objects::{Bucket, Objects};
use cairn_tests::garage::Garage;
use cairn_tests::s3::{S3Store, bucket, eventually, listed, local_packs};
use cairn_tests::{assert_same_content, cairn, id, json, make_raw, modify_raw, num, ok, run};

/// Waits (at most a minute) until the first pack of the backup `child` is whole in the bucket
/// (its frame list is there), the backup still running.
fn first_pack_uploaded(b: &Bucket, child: &mut std::process::Child) {
    let started = std::time::Instant::now();
    let running = |child: &mut std::process::Child| {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the backup ended before a pack was uploaded, or just after: use a bigger disk"
        );
    };
    while !b
        .list("packs/")
        .expect("list")
        .iter()
        .any(|o| o.name.ends_with(".frames"))
    {
        running(child);
        assert!(
            started.elapsed().as_secs() < 60,
            "no pack uploaded in a minute"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    running(child);
}

#[test]
fn cairn_killed_mid_upload_commits_nothing_and_gc_deletes_its_objects_after_the_grace() {
    let g = Garage::start();
    let s = S3Store::new(&g, "killed");
    s.small_packs();
    let work = tempfile::tempdir().expect("tempdir");
    let disk = work.path().join("d.raw");
    // Big enough that the backup is far from its commit when the first pack is whole (with
    // 32 MiB it could reach it before the kill on a loaded machine: the root file is put in
    // the bucket just before the commit here, and deleted by the next writer if the commit
    // never came).
    make_raw(&disk, 128 << 20, 3);
    let b = bucket(&g, &s.prefix);
    // Killed (-9) once the first packs are whole in the bucket, while the next ones upload.
    let mut c = s.cmd(&["backup", "--vm", "web", "--time", "2026-11-01T02:00:00Z"]);
    let mut child = c
        .arg(format!("xvda={}", disk.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("backup");
    first_pack_uploaded(&b, &mut child);
    child.kill().expect("kill -9");
    child.wait().expect("wait");
    assert!(s.points().is_empty(), "a killed backup published a point");
    assert!(
        listed(&b, "points/").0 == 0,
        "a root file of an uncommitted point"
    );
    assert!(listed(&b, "packs/").0 > 0);
    // Within the grace period they stay (another process may be uploading). What the killed
    // process had sent may still land, and a listing may lag: wait for it to settle.
    let mut before = listed(&b, "packs/");
    for _ in 0..50 {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let now = listed(&b, "packs/");
        if now == before {
            break;
        }
        before = now;
    }
    let r = json(&ok(&mut s.cmd(&["gc", "--json"])));
    assert_eq!(listed(&b, "packs/"), before, "{r}");
    let r = json(&ok(&mut s.cmd(&["gc", "--json", "--orphan-grace", "0m"])));
    assert!(num(&r, "orphan_packs") > 0, "{r}");
    assert_eq!(num(&r, "bytes_freed"), before.1, "{r}");
    eventually(|| listed(&b, "packs/").0 == 0, "the orphans deleted");
    assert!(local_packs(&s).is_empty(), "{:?}", local_packs(&s));
    // The store works on: a backup and its restore.
    let p = s.backup("web", "2026-11-02T02:00:00Z", &disk);
    s.restore_and_compare(&id(&p), &disk);

    // The next writer makes the bucket's root files say what the catalogue says: one of a point
    // never committed here (a commit killed between its put there and its rename here) is
    // deleted, one gone from the bucket is put back.
    let names = |b: &Bucket| -> Vec<String> {
        b.list("points/")
            .expect("list")
            .into_iter()
            .map(|o| o.name)
            .filter(|n| n.ends_with(".json"))
            .collect()
    };
    let real = names(&b).first().cloned().expect("a root file");
    let stray = "points/web/xvda/20261101T020000Z-0123456789abcdef0123456789abcdef.json";
    b.put(stray, br#"{"id":"0123456789abcdef0123456789abcdef"}"#)
        .expect("put a stray root file");
    b.delete(&real).expect("delete a root file");
    eventually(
        || names(&b).contains(&stray.to_owned()) && !names(&b).contains(&real),
        "the bucket's root files changed by hand",
    );
    s.backup("web", "2026-11-03T02:00:00Z", &disk);
    eventually(
        || names(&b).contains(&real) && !names(&b).contains(&stray.to_owned()),
        "the root files put right by the next writer",
    );
    assert_eq!(names(&b).len(), 2, "{:?}", names(&b));
}

#[test]
fn a_node_killed_during_a_backup_and_during_a_restore_and_a_wrong_key() {
    let work = tempfile::tempdir().expect("tempdir");
    let disk = work.path().join("d.raw");
    // Big enough that the backup is still uploading when its first pack is whole, on a loaded
    // machine too.
    make_raw(&disk, 128 << 20, 5);
    {
        let mut g = Garage::start();
        let s = S3Store::new(&g, "node-down-backup");
        s.small_packs();
        let mut c = s.cmd(&[
            "backup",
            "--json",
            "--vm",
            "web",
            "--time",
            "2026-11-01T02:00:00Z",
        ]);
        c.arg(format!("xvda={}", disk.display()));
        let mut child = c
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("backup");
        // Killed once the first pack is in the bucket, while the others upload.
        first_pack_uploaded(&bucket(&g, &s.prefix), &mut child);
        g.kill(2);
        let out = child.wait_with_output().expect("backup");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let p = json(&String::from_utf8_lossy(&out.stdout))[0].clone();
        s.restore_and_compare(&id(&p), &disk);
    }
    let mut g = Garage::start();
    let s = S3Store::new(&g, "node-down-restore");
    let big = work.path().join("big.raw");
    make_raw(&big, 256 << 20, 6);
    let p = s.backup("web", "2026-11-01T02:00:00Z", &big);
    let out = work.path().join("r.raw");
    let mut child = s
        .cmd(&["restore", &id(&p), "--format", "raw"])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("restore");
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the restore ended before a node was killed: use a bigger disk"
    );
    g.kill(1);
    let done = child.wait_with_output().expect("restore");
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_same_content(&out, &big, true);

    // A wrong key: refused, naming the bucket and the object; nothing committed, nothing here.
    let other = work.path().join("d2.raw");
    modify_raw(&disk, &other, 9);
    let mut c2 = s.cmd(&["backup", "--vm", "web", "--time", "2026-11-02T02:00:00Z"]);
    c2.env("AWS_SECRET_ACCESS_KEY", "0".repeat(64))
        .arg(format!("xvda={}", other.display()));
    let out = run(&mut c2);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("s3://cairn/node-down-restore") && err.contains("object"),
        "{err}"
    );
    assert_eq!(s.points().len(), 1, "the failed backup published a point");
    assert!(local_packs(&s).is_empty(), "{:?}", local_packs(&s));
    // And init with a wrong key makes nothing.
    let fresh = work.path().join("fresh");
    let out = run(cairn(["init"])
        .arg(&fresh)
        .args([
            "--packs",
            "s3://cairn/another",
            "--s3-endpoint",
            &g.endpoint,
            "--s3-region",
            "garage",
        ])
        .env("AWS_ACCESS_KEY_ID", &g.key_id)
        .env("AWS_SECRET_ACCESS_KEY", "0".repeat(64)));
    assert!(!out.status.success());
    assert!(!fresh.exists(), "a refused init made the store folder");

    // Two nodes of three down: no quorum. The backup ends (after the client's retries) with
    // the bucket named, and nothing is committed.
    g.kill(2);
    let started = std::time::Instant::now();
    let mut c = s.cmd(&["backup", "--vm", "web", "--time", "2026-11-03T02:00:00Z"]);
    let out = run(c.arg(format!("xvda={}", other.display())));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("s3://cairn/node-down-restore"), "{err}");
    assert!(
        started.elapsed().as_secs() < 180,
        "the retries took too long"
    );
    eprintln!("without quorum: {err}");
    assert_eq!(
        s.points().len(),
        1,
        "a backup without quorum published a point"
    );
    assert!(local_packs(&s).is_empty(), "{:?}", local_packs(&s));
}

#[test]
fn a_pack_object_gone_from_the_bucket_is_each_of_its_chunks_damage_and_the_rest_restores() {
    let g = Garage::start();
    let s = S3Store::new(&g, "gone");
    s.small_packs();
    let work = tempfile::tempdir().expect("tempdir");
    let disk = work.path().join("d.raw");
    // Several restore windows and packs: the reader fetches ahead across them.
    make_raw(&disk, 40 << 20, 11);
    let p = id(&s.backup("web", "2026-11-01T02:00:00Z", &disk));
    let b = bucket(&g, &s.prefix);
    let packs: Vec<String> = b
        .list("packs/")
        .expect("list")
        .into_iter()
        .map(|o| o.name)
        .filter(|n| n.ends_with(".pack"))
        .collect();
    assert!(packs.len() >= 2, "several packs: {packs:?}");
    let gone = &packs[0];
    b.delete(gone).expect("delete a pack object");
    eventually(
        || {
            b.list("packs/")
                .is_ok_and(|l| l.iter().all(|o| &o.name != gone))
        },
        "the pack object deleted",
    );
    // A restore refuses, naming the object.
    let out_file = work.path().join("out.raw");
    let out = run(s.cmd(&["restore", &p, "--format", "raw"]).arg(&out_file));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(gone.as_str()) && err.contains("is gone"),
        "{err}"
    );
    // --ignore-errors writes zeros where that pack's chunks were, lists each range, exits 3,
    // and every other byte is the disk's.
    let out = run(s
        .cmd(&[
            "restore",
            &p,
            "--format",
            "raw",
            "--force",
            "--ignore-errors",
        ])
        .arg(&out_file));
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let ranges: Vec<(usize, usize)> = err
        .lines()
        .filter(|l| l.contains(gone.as_str()))
        .filter_map(|l| {
            let (a, b) = l.split(" bytes ").nth(1)?.split_once("..")?;
            let b: String = b.chars().take_while(char::is_ascii_digit).collect();
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect();
    assert!(!ranges.is_empty(), "no damaged range listed: {err}");
    let (mut got, want) = (
        std::fs::read(&out_file).expect("restored"),
        std::fs::read(&disk).expect("disk"),
    );
    assert_eq!(got.len(), want.len());
    let mut expected = want.clone();
    for &(a, b) in &ranges {
        assert!(
            got[a..b].iter().all(|&x| x == 0),
            "bytes {a}..{b} not zeros"
        );
        expected[a..b].fill(0);
        got[a..b].fill(0);
    }
    assert!(got == expected, "a byte outside the damaged ranges differs");
    // Verify names the object for every chunk of that pack: as many data chunks as ranges
    // (the pack may hold a tree chunk too, which the restore read from this machine's cache).
    let v = json(&run_json(&mut s.cmd(&["verify", "--json"])));
    let damaged = v["damaged"].as_array().cloned().unwrap_or_default();
    assert!(
        damaged.iter().all(|d| d["what"]
            .as_str()
            .is_some_and(|w| w.contains(gone.as_str()))),
        "{v}"
    );
    let mut found: Vec<u64> = damaged
        .iter()
        .filter(|d| d["kind"] == "data")
        .flat_map(|d| d["points"].as_array().cloned().unwrap_or_default())
        .flat_map(|p| p["offsets"].as_array().cloned().unwrap_or_default())
        .filter_map(|o| o.as_u64())
        .collect();
    found.sort_unstable();
    let mut listed: Vec<u64> = ranges.iter().map(|&(a, _)| a as u64).collect();
    listed.sort_unstable();
    if damaged.iter().any(|d| d["kind"] == "tree") {
        // The pack held a tree chunk too (the restore read it from this machine's cache):
        // verify places only the chunks it can still reach through the tree.
        assert!(found.iter().all(|o| listed.contains(o)), "{v}");
    } else {
        assert_eq!(found, listed, "{v}");
    }
}

/// The stdout of a command that may exit non-zero (verify finding damage).
fn run_json(c: &mut Command) -> String {
    String::from_utf8_lossy(&run(c).stdout).into_owned()
}

/// A commit that fails after its root object went to the bucket (here: the root file's folder
/// made immutable, so the local write fails) takes the object back out: a rebuild from the
/// bucket never brings back a point the user was told was not stored.
#[test]
fn a_commit_that_fails_after_putting_its_root_object_takes_it_back() {
    let g = Garage::start();
    let s = S3Store::new(&g, "takeback");
    let b = bucket(&g, "takeback");
    let work = tempfile::tempdir().expect("tempdir");
    let (d0, d1) = (work.path().join("d0.raw"), work.path().join("d1.raw"));
    make_raw(&d0, 8 << 20, 21);
    modify_raw(&d0, &d1, 22);
    let p0 = id(&s.backup("web", "2026-11-01T02:00:00Z", &d0));
    let folder = s.path().join("points/web/xvda");
    ok(Command::new("chattr").arg("+i").arg(&folder));
    let o = run(s
        .cmd(&["backup", "--vm", "web", "--time", "2026-11-02T02:00:00Z"])
        .arg(format!("xvda={}", d1.display())));
    ok(Command::new("chattr").arg("-i").arg(&folder));
    assert!(
        !o.status.success(),
        "the backup went through an immutable folder"
    );
    let roots = |b: &Bucket| -> Vec<String> {
        b.list("points/")
            .expect("list")
            .into_iter()
            .map(|o| o.name)
            .filter(|n| n.ends_with(".json"))
            .collect()
    };
    eventually(
        || roots(&b).len() == 1,
        "the failed commit's root object taken back",
    );
    // A new machine, from the bucket alone: the one point stored, nothing else.
    std::fs::remove_dir_all(s.path()).expect("remove the store folder");
    ok(s.cmd(&["repair", "--rebuild-index"])
        .arg("--store")
        .arg(s.path())
        .args(s.packs_args()));
    let listed: Vec<String> = s.points().iter().map(id).collect();
    assert_eq!(listed, vec![p0.clone()]);
    s.restore_and_compare(&p0, &d0);
}

#[test]
fn a_garbled_frame_list_costs_nothing_the_rebuild_reads_its_pack_and_gc_never_deletes_it() {
    let g = Garage::start();
    let s = S3Store::new(&g, "garbled");
    s.small_packs();
    let work = tempfile::tempdir().expect("tempdir");
    let disk = work.path().join("d.raw");
    make_raw(&disk, 12 << 20, 21);
    let p = id(&s.backup("web", "2026-11-01T02:00:00Z", &disk));
    let b = bucket(&g, &s.prefix);
    let lists: Vec<String> = b
        .list("packs/")
        .expect("list")
        .into_iter()
        .map(|o| o.name)
        .filter(|n| n.ends_with(".frames"))
        .collect();
    assert!(!lists.is_empty(), "no pack: {lists:?}");
    let garbled = &lists[0];
    b.put(garbled, b"not a frame list").expect("garble");
    // The index lost: the rebuild reads the pack itself and writes its frame list again.
    std::fs::remove_dir_all(s.path().join("index")).expect("lose the index");
    let r = json(&ok(&mut s.cmd(&["repair", "--rebuild-index", "--json"])));
    assert!(
        r["problems"].to_string().contains("read whole instead"),
        "{r}"
    );
    s.restore_and_compare(&p, &disk);
    assert_ne!(b.get(garbled).expect("get"), b"not a frame list".to_vec());
    // A pack object whose frames are all overwritten: quarantined, and gc (even with no
    // grace) leaves it in the bucket.
    let pack = garbled.replace(".frames", ".pack");
    let bytes = b.get(&pack).expect("get");
    b.put(garbled, b"not a frame list").expect("garble");
    let mut overwritten = bytes.clone();
    overwritten[32..].fill(0x5a);
    b.put(&pack, &overwritten).expect("overwrite the pack");
    std::fs::remove_dir_all(s.path().join("index")).expect("lose the index");
    let r = json(&ok(&mut s.cmd(&["repair", "--rebuild-index", "--json"])));
    assert_eq!(r["quarantined"].as_array().map(Vec::len), Some(1), "{r}");
    let g2 = json(&ok(&mut s.cmd(&["gc", "--json", "--orphan-grace", "0m"])));
    assert_eq!(
        g2["quarantined_kept"].as_array().map(Vec::len),
        Some(1),
        "{g2}"
    );
    assert!(b.get(&pack).is_ok(), "gc deleted a quarantined pack object");
}
