//! A published point restores: replication into a folder and into a server after a gc that
//! left a dead tree chunk behind, a root file put back after its tree was collected, and a
//! client's commit that names a short chunk in the middle of a disk.

use std::path::Path;
use std::process::Command;

use cairn_tests::serve::{Server, token};
use cairn_tests::{TestStore, id, json, make_raw, num, ok, read, run};

/// Packs of 1 MiB, so that one backup spreads over several.
fn small_packs(store: &TestStore) {
    let cfg = store.path().join("cairn.toml");
    let text = std::fs::read_to_string(&cfg).expect("config");
    let text: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("pack_target_size") {
                "pack_target_size = 1048576".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect();
    std::fs::write(&cfg, text.join("\n") + "\n").expect("config");
}

/// A destination whose index holds the tree chunk of disk `x` but not what it names: `x` and
/// a larger `y` backed up in one run (x's tree lands in the pack y's data fills), x's point
/// forgotten, gc: x's data packs go, the pack holding x's tree stays (almost all of it live).
fn store_with_a_dead_tree(x: &Path, y: &Path) -> TestStore {
    let dst = TestStore::new("256K");
    small_packs(&dst);
    let run = json(&ok(dst
        .cmd(&[
            "backup",
            "--json",
            "--vm",
            "keep",
            "--time",
            "2026-11-01T00:00:00Z",
        ])
        .arg(format!("xvda={}", x.display()))
        .arg(format!("xvdb={}", y.display()))));
    let xa = run
        .as_array()
        .expect("points")
        .iter()
        .find(|p| p["disk"] == "xvda")
        .map(id)
        .expect("xvda's point");
    ok(&mut dst.cmd(&["forget", &xa]));
    ok(&mut dst.cmd(&["gc"]));
    let report = json(&ok(&mut dst.cmd(&["report", "--json"])));
    assert!(
        num(&report, "garbage_frames") >= 1,
        "gc left no dead frame behind (the case this test is about): {report}"
    );
    dst
}

#[test]
fn replication_after_gc_sends_what_a_dead_tree_chunk_names_into_a_folder_and_a_server() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let (x, y) = (w.join("x.raw"), w.join("y.raw"));
    make_raw(&x, 4 << 20, 51);
    make_raw(&y, 16 << 20, 52);
    // The source: another VM with the same disk, so the same tree.
    let src = TestStore::new("256K");
    let b = id(&src.backup("src", "2026-11-02T00:00:00Z", "xvda", &x, &[]));
    // Into a folder.
    let folder = store_with_a_dead_tree(&x, &y);
    ok(cairn_tests::cairn(["replicate", "--from"])
        .arg(src.path())
        .arg("--to")
        .arg(folder.path()));
    let out = w.join("folder.raw");
    folder.restore(&b, &out, "raw");
    assert_eq!(read(&out), read(&x));
    // Into a server.
    let served = store_with_a_dead_tree(&x, &y);
    let admin = token(&served.path(), "admin", "admin", "*");
    let server = Server::start(&served.path(), 0, &[]);
    let copied = json(&ok(server
        .cmd(&admin, &["replicate", "--json", "--from"])
        .arg(src.path())
        .arg("--to")
        .arg(&server.url)));
    assert!(
        num(&copied, "chunks_sent") > 0,
        "nothing was sent: {copied}"
    );
    let out = w.join("server.raw");
    ok(server.cmd(&admin, &["restore", &b]).arg(&out));
    assert_eq!(read(&out), read(&x));
    ok(&mut server.cmd(&admin, &["verify"]));
}

#[test]
fn a_root_file_put_back_after_its_tree_was_collected_stops_no_writer() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let (a, b) = (w.join("a.raw"), w.join("b.raw"));
    make_raw(&a, 4 << 20, 61);
    make_raw(&b, 4 << 20, 62);
    let store = TestStore::new("256K");
    let pa = id(&store.backup("va", "2026-11-01T00:00:00Z", "xvda", &a, &[]));
    store.backup("vb", "2026-11-01T00:00:00Z", "xvda", &b, &[]);
    let root = cairn_tests::files_under(&store.path().join("points"))
        .into_iter()
        .find(|f| f.to_string_lossy().contains(&pa))
        .expect("the root file");
    let saved = std::fs::read(&root).expect("root file");
    ok(&mut store.cmd(&["forget", &pa]));
    ok(&mut store.cmd(&["gc"]));
    // The admin follows "restore the file from a copy".
    std::fs::create_dir_all(root.parent().expect("folder")).expect("mkdir");
    std::fs::write(&root, saved).expect("put back");
    // Every writer still works: the point is published, its damage named.
    let c = w.join("c.raw");
    make_raw(&c, 4 << 20, 63);
    let o = run(store
        .cmd(&["backup", "--vm", "vc", "--time", "2026-11-02T00:00:00Z"])
        .arg(format!("xvda={}", c.display())));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let listed: Vec<String> = store.list().iter().map(id).collect();
    assert!(listed.contains(&pa), "{listed:?}");
    let o = run(&mut store.cmd(&["verify", "--json"]));
    assert!(!o.status.success(), "verify found nothing wrong");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&pa),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // The other points restore.
    let out = w.join("out.raw");
    store.restore("vc/xvda@latest", &out, "raw");
    assert_eq!(read(&out), read(&c));
}

#[test]
fn a_commit_slowed_at_its_fsyncs_while_gc_runs_in_the_server_publishes_a_point_that_restores() {
    let work = tempfile::tempdir().expect("tempdir");
    let disk = work.path().join("d.raw");
    make_raw(&disk, 24 << 20, 71);
    let store = TestStore::new("256K");
    small_packs(&store);
    let host = token(&store.path(), "host", "backup", "*");
    let admin = token(&store.path(), "admin", "admin", "*");
    // Every fsync of the server takes 0.4 s: a commit waits on its packs' syncs while the
    // collections below take the commit lock and look for orphan packs.
    let server = Server::start_slowed(&store.path(), "fsync,fdatasync", 400_000);
    let mut backup = server
        .cmd(&host, &["backup", "--json", "--vm", "web1"])
        .arg(format!("xvda={}", disk.display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("backup starts");
    let mut collections = 0;
    let started = std::time::Instant::now();
    while backup.try_wait().expect("backup").is_none() {
        assert!(started.elapsed().as_secs() < 300, "the backup did not end");
        let (code, answer) = server.curl("POST", "gc", &admin, Some(br#"{"max_unused": 0}"#));
        assert!(
            code == 200 || code == 409,
            "{code}: {}",
            String::from_utf8_lossy(&answer)
        );
        collections += u32::from(code == 200);
    }
    let out = backup.wait_with_output().expect("backup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(collections > 0, "no collection ran beside the backup");
    let p = id(&json(&String::from_utf8_lossy(&out.stdout))[0]);
    let restored = work.path().join("out.raw");
    ok(server.cmd(&admin, &["restore", &p]).arg(&restored));
    assert_eq!(read(&restored), read(&disk));
    ok(&mut server.cmd(&admin, &["verify"]));
}

/// Frames of `chunks` as an upload's body.
fn frames(chunks: &[cairn_store::EncodedChunk]) -> Vec<u8> {
    let mut body = Vec::new();
    for c in chunks {
        cairn_store::pack::encode_frame(c, &mut body);
    }
    body
}

#[test]
fn a_commit_naming_a_short_chunk_in_the_middle_of_a_disk_is_refused() {
    use cairn_store::chunk::{self, ChunkKind, ChunkRef};
    let work = tempfile::tempdir().expect("tempdir");
    let disk = work.path().join("d.raw");
    make_raw(&disk, 1 << 20, 81);
    let store = TestStore::new("256K");
    let host = token(&store.path(), "host", "backup", "web*");
    let server = Server::start(&store.path(), 0, &[]);
    // A point of the VM, as a template for the crafted ones.
    let template = json(&ok(server
        .cmd(&host, &["backup", "--json", "--vm", "web1"])
        .arg(format!("xvda={}", disk.display()))))[0]
        .clone();
    let (_, root) = server.curl("GET", &format!("points/{}", id(&template)), &host, None);
    let root = json(&String::from_utf8_lossy(&root));
    let full = |seed: u8| vec![seed; 256 << 10];
    let (a, b) = (
        chunk::encode(&cairn_store::Keys::Clear, &full(1), ChunkKind::Data, 1).expect("encode"),
        chunk::encode(&cairn_store::Keys::Clear, &full(2), ChunkKind::Data, 1).expect("encode"),
    );
    let short =
        chunk::encode(&cairn_store::Keys::Clear, &[7u8; 1000], ChunkKind::Data, 1).expect("encode");
    // (refs, disk size, what the server must say)
    let cases = [
        (vec![&a, &short, &b], 3 * (256 << 10), 400),
        (vec![&a, &b, &short], 2 * (256 << 10) + 1000, 200),
        (vec![&a, &b, &short], 3 * (256 << 10), 400),
    ];
    for (k, (refs, size, want)) in cases.iter().enumerate() {
        let leaf_refs: Vec<ChunkRef> = refs.iter().map(|c| ChunkRef::Data(c.id)).collect();
        let leaf = chunk::encode(
            &cairn_store::Keys::Clear,
            &cairn_store::tree::encode_leaf(&leaf_refs),
            ChunkKind::Tree,
            1,
        )
        .expect("encode");
        let sid = server.open_session(&host, "web1");
        let mut sent: Vec<cairn_store::EncodedChunk> = refs.iter().map(|c| (*c).clone()).collect();
        sent.push(leaf.clone());
        let (code, answer) = server.curl(
            "POST",
            &format!("sessions/{sid}/chunks"),
            &host,
            Some(&frames(&sent)),
        );
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&answer));
        let mut point = root.clone();
        point["id"] = format!("{:032x}", 0xabc0 + k).into();
        point["size"] = (*size as u64).into();
        point["depth"] = 0.into();
        point["segments"] = vec![leaf.id.to_hex()].into();
        point["parent"] = serde_json::Value::Null;
        let body = serde_json::json!({ "points": [point] }).to_string();
        let (code, answer) = server.curl(
            "POST",
            &format!("sessions/{sid}/commit"),
            &host,
            Some(body.as_bytes()),
        );
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(code, *want, "case {k}: {answer}");
        if *want == 400 {
            assert!(
                answer.contains("place on the disk holds"),
                "case {k}: {answer}"
            );
        }
    }
    // The one accepted restores bit-exact: two full chunks and the short last one.
    let out = work.path().join("out.raw");
    ok(server
        .cmd(&host, &["restore", &format!("{:032x}", 0xabc0 + 1)])
        .arg(&out));
    let mut want = full(1);
    want.extend(full(2));
    want.extend([7u8; 1000]);
    assert_eq!(read(&out), want);
    // A whole leaf that ends a point with the short chunk (255 full chunks and it), taken into
    // the middle of another point: refused, or else named by verify and never restored as
    // stale bytes.
    let ending: Vec<ChunkRef> = std::iter::repeat_n(ChunkRef::Data(a.id), 255)
        .chain([ChunkRef::Data(short.id)])
        .collect();
    let ending = chunk::encode(
        &cairn_store::Keys::Clear,
        &cairn_store::tree::encode_leaf(&ending),
        ChunkKind::Tree,
        1,
    )
    .expect("encode");
    let fulls: Vec<ChunkRef> = std::iter::repeat_n(ChunkRef::Data(b.id), 256).collect();
    let fulls = chunk::encode(
        &cairn_store::Keys::Clear,
        &cairn_store::tree::encode_leaf(&fulls),
        ChunkKind::Tree,
        1,
    )
    .expect("encode");
    let commit =
        |k: usize, size: u64, segments: Vec<String>, chunks: &[cairn_store::EncodedChunk]| {
            let sid = server.open_session(&host, "web1");
            let (code, answer) = server.curl(
                "POST",
                &format!("sessions/{sid}/chunks"),
                &host,
                Some(&frames(chunks)),
            );
            assert_eq!(code, 200, "{}", String::from_utf8_lossy(&answer));
            let mut point = root.clone();
            point["id"] = format!("{:032x}", 0xabc0 + k).into();
            point["size"] = size.into();
            point["depth"] = 0.into();
            point["segments"] = segments.into();
            point["parent"] = serde_json::Value::Null;
            let body = serde_json::json!({ "points": [point] }).to_string();
            let (code, answer) = server.curl(
                "POST",
                &format!("sessions/{sid}/commit"),
                &host,
                Some(body.as_bytes()),
            );
            (code, String::from_utf8_lossy(&answer).into_owned())
        };
    let cs: u64 = 256 << 10;
    let (code, answer) = commit(
        10,
        255 * cs + 1000,
        vec![ending.id.to_hex()],
        &[a.clone(), short.clone(), ending.clone()],
    );
    assert_eq!(code, 200, "{answer}");
    let (code, answer) = commit(
        11,
        512 * cs,
        vec![ending.id.to_hex(), fulls.id.to_hex()],
        &[b.clone(), fulls.clone()],
    );
    if code == 200 {
        let o = run(&mut server.cmd(&host, &["verify"]));
        let said = String::from_utf8_lossy(&o.stdout);
        assert!(
            !o.status.success() && said.contains("the disk holds"),
            "{said}"
        );
        let o = run(server
            .cmd(
                &host,
                &["restore", "--force", &format!("{:032x}", 0xabc0 + 11)],
            )
            .arg(&out));
        assert!(
            !o.status.success(),
            "a short chunk in the middle of a disk restored"
        );
        // The store's own verify names the place too.
        let o = run(&mut store.cmd(&["verify"]));
        let said = String::from_utf8_lossy(&o.stdout);
        assert!(
            !o.status.success() && said.contains("where the disk holds"),
            "{said}"
        );
    } else {
        assert_eq!(code, 400, "{answer}");
    }
}

#[test]
fn a_disk_over_the_stores_bound_is_refused_locally_and_through_a_server() {
    let work = tempfile::tempdir().expect("tempdir");
    let disk = work.path().join("d.raw");
    make_raw(&disk, 4 << 20, 91);
    let store = TestStore::new("256K");
    let cfg = store.path().join("cairn.toml");
    let text = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(&cfg, format!("{text}max_disk_bytes = 2097152\n")).expect("config");
    let o = run(store
        .cmd(&["backup", "--vm", "web1"])
        .arg(format!("xvda={}", disk.display())));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("max_disk_bytes"),
        "{err}"
    );
    let host = token(&store.path(), "host", "backup", "*");
    let server = Server::start(&store.path(), 0, &[]);
    let o = run(server
        .cmd(&host, &["backup", "--vm", "web1"])
        .arg(format!("xvda={}", disk.display())));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("max_disk_bytes"),
        "{err}"
    );
    assert!(store.list().is_empty());
}

/// A point claiming a 15 TiB disk of zeros beside a 4 MiB one of the same disk: the report's
/// cost follows the stored tree, not the claimed size (on 3420349 it took 167 MB and a second,
/// linear in the size; now about 20 MB).
#[test]
fn a_huge_claimed_disk_costs_the_report_what_its_tree_holds() {
    let work = tempfile::tempdir().expect("tempdir");
    let (small, big) = (work.path().join("small.raw"), work.path().join("big.raw"));
    make_raw(&small, 4 << 20, 95);
    std::fs::File::create(&big)
        .and_then(|f| f.set_len(15 << 40))
        .expect("a sparse 15 TiB file");
    let store = TestStore::new("256K");
    store.backup("db", "2026-11-01T00:00:00Z", "xvda", &small, &[]);
    store.backup("db", "2026-11-02T00:00:00Z", "xvda", &big, &[]);
    let o = run(Command::new("/usr/bin/time")
        .args(["-f", "max-rss-kb %M"])
        .arg(cairn_tests::cairn_bin())
        .args(["report", "--json", "--store"])
        .arg(store.path()));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    let kb: u64 = err
        .lines()
        .filter_map(|l| l.strip_prefix("max-rss-kb "))
        .next_back()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no figure from /usr/bin/time: {err}"));
    assert!(
        kb < 80 << 10,
        "the report took {kb} KB for a claimed 15 TiB of zeros"
    );
}

/// A root file deleted by hand, then `repair --rebuild-index`: the rebuild names the point the
/// old index held that no root file brought back.
#[test]
fn a_rebuild_names_the_points_whose_root_files_are_gone() {
    let work = tempfile::tempdir().expect("tempdir");
    let (a, b) = (work.path().join("a.raw"), work.path().join("b.raw"));
    make_raw(&a, 2 << 20, 97);
    make_raw(&b, 2 << 20, 98);
    let store = TestStore::new("256K");
    let pa = id(&store.backup("va", "2026-11-01T00:00:00Z", "xvda", &a, &[]));
    let pb = id(&store.backup("vb", "2026-11-01T00:00:00Z", "xvda", &b, &[]));
    let root = cairn_tests::files_under(&store.path().join("points"))
        .into_iter()
        .find(|f| f.to_string_lossy().contains(&pa))
        .expect("the root file");
    std::fs::remove_file(&root).expect("delete the root file");
    let out = ok(&mut store.cmd(&["repair", "--rebuild-index"]));
    assert!(
        out.contains(&pa) && out.contains("no root file") && !out.contains(&pb),
        "{out}"
    );
    let listed: Vec<String> = store.list().iter().map(id).collect();
    assert_eq!(listed, vec![pb]);
}
