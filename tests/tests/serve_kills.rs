//! `cairn serve` under kills and collections: a client or server killed loses no committed
//! point, a server killed at any step of a commit keeps the store whole, and gc beside live
//! sessions keeps their packs.

use std::process::Stdio;

use cairn_tests::serve::{
    Server, backup_json, frame_of, frame_of_kind, leaf_of, one_chunk_point, refused_missing, token,
};
use cairn_tests::{TestStore, gen_disk, id, json, num, ok, read, run};

#[test]
fn kills_of_client_and_server_lose_no_committed_point() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let store = TestStore::new("256K");
    let tok = token(&store.path(), "host", "backup", "*");
    let admin = token(&store.path(), "admin", "admin", "*");
    let first = w.join("first.raw");
    gen_disk(&first, "16M", 3, 1, 0);
    let big = w.join("big.raw");
    gen_disk(&big, "96M", 4, 2, 0);
    let mut server = Server::start(&store.path(), 0, &[]);
    let kept = backup_json(&server, &tok, "vm1", &first);
    // A client killed mid-upload (its source a pipe fed half-way, so the kill lands while
    // chunks are in flight): nothing of it is visible, and gc takes its chunks back.
    let bytes = read(&big);
    let half = |server: &Server, vm: &str| {
        use std::io::Write;
        let mut c = server
            .cmd(
                &tok,
                &[
                    "backup",
                    "--vm",
                    vm,
                    "--size",
                    &bytes.len().to_string(),
                    "xvda=-",
                ],
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("backup starts");
        let packs = store.pack_files().len();
        let mut input = c.stdin.take().expect("stdin");
        input
            .write_all(&bytes[..bytes.len() / 2])
            .expect("half the disk");
        // Chunks in flight: the session has written into a pack of its own.
        cairn_tests::wait_until("the session's first pack", || {
            store.pack_files().len() > packs
        });
        (c, input)
    };
    let (mut c, input) = half(&server, "vm2");
    let _ = c.kill();
    let _ = c.wait();
    drop(input);
    let listed = json(&ok(&mut server.cmd(&tok, &["list", "--json"])));
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    // The server killed with -9 while a backup uploads.
    let (mut c, input) = half(&server, "vm3");
    server.kill();
    drop(input);
    let o = c.wait().expect("backup ends");
    assert!(!o.success(), "a backup whose server died fails");
    let port = server.port();
    drop(server);
    // The next start is clean, holds the committed point, and collects what the dead left.
    let server = Server::start(&store.path(), port, &[]);
    let listed = json(&ok(&mut server.cmd(&tok, &["list", "--json"])));
    let ids: Vec<String> = listed.as_array().expect("list").iter().map(id).collect();
    assert!(ids.contains(&id(&kept)), "{listed}");
    assert_eq!(ids.len(), 1, "{listed}");
    let (code, report) = server.curl("POST", "gc", &admin, Some(b""));
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&report));
    let out = w.join("out.raw");
    ok(server.cmd(&tok, &["restore", &id(&kept)]).arg(&out));
    assert_eq!(read(&out), read(&first));
    drop(server);
    ok(&mut store.cmd(&["verify"]));
    let dry = json(&ok(&mut store.cmd(&["gc", "--dry-run", "--json"])));
    assert_eq!(
        num(&dry, "orphan_packs"),
        0,
        "the killed sessions' packs are gone: {dry}"
    );
    assert_eq!(
        store.pack_files().len(),
        1,
        "{}",
        String::from_utf8_lossy(&report)
    );
}

#[test]
fn a_server_killed_at_any_step_of_a_commit_keeps_the_store_whole() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let store = TestStore::new("256K");
    let tok = token(&store.path(), "host", "backup", "*");
    let (a, b) = (w.join("a.raw"), w.join("b.raw"));
    gen_disk(&a, "8M", 8, 1, 0);
    gen_disk(&b, "8M", 8, 1, 1);
    // Its certificate made once, so every start below does the same steps.
    drop(Server::start(&store.path(), 0, &[]));
    let out = w.join("out.raw");
    let mut killed = 0;
    // The counts start with the server's own start (its index's files), so a spread of them
    // lands before, inside and after the backup's commit.
    let renames = (3..=13).step_by(2).map(|n| ("rename", n));
    let syncs = [4, 5, 6, 7, 8, 9, 10, 12, 16]
        .into_iter()
        .map(|n| ("fsync,fdatasync", n));
    for (syscalls, when) in renames.chain(syncs) {
        let Some(mut server) = Server::start_killed_at(&store.path(), syscalls, when) else {
            eprintln!("{syscalls} {when}: killed before it listened");
            continue;
        };
        // A run of two disks: both or neither.
        let o = run(server
            .cmd(&tok, &["backup", "--vm", "vm"])
            .arg(format!("xvda={}", a.display()))
            .arg(format!("xvdb={}", b.display())));
        server.wait_dead(if o.status.success() { 0 } else { 10 });
        killed += usize::from(!o.status.success());
        eprintln!("{syscalls} {when}: backup {}", o.status);
        // Whatever the moment, the next start is clean: every point listed is whole.
        let server = Server::start(&store.path(), 0, &[]);
        let listed = json(&ok(&mut server.cmd(&tok, &["list", "--json"])));
        let listed = listed.as_array().expect("list");
        let per_disk = |d: &str| listed.iter().filter(|p| p["disk"] == d).count();
        assert_eq!(
            per_disk("xvda"),
            per_disk("xvdb"),
            "{syscalls} {when}: a run half published: {listed:?}"
        );
        for p in listed {
            ok(server.cmd(&tok, &["restore", "--force", &id(p)]).arg(&out));
            let want = if p["disk"] == "xvda" { &a } else { &b };
            assert_eq!(read(&out), read(want), "{syscalls} {when}: {}", id(p));
        }
    }
    assert!(killed >= 4, "the kills landed inside backups ({killed})");
    ok(&mut store.cmd(&["verify"]));
}

#[test]
fn gc_beside_live_sessions_keeps_their_packs_and_a_commit_never_names_what_it_removed() {
    let work = tempfile::tempdir().expect("tempdir");
    let store = TestStore::new("256K");
    let admin = token(&store.path(), "admin", "admin", "*");
    let server = Server::start(&store.path(), 0, &[]);
    // A session uploads a chunk and its leaf; a collection runs; the session commits.
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    let chunk = *blake3::hash(&data).as_bytes();
    let leaf = leaf_of(&[chunk]);
    let sid = server.open_session(&admin, "web1");
    let mut body = frame_of(&data);
    body.extend_from_slice(&frame_of_kind(&leaf, 1));
    let (code, answer) = server.curl(
        "POST",
        &format!("sessions/{sid}/chunks"),
        &admin,
        Some(&body),
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&answer));
    let (code, report) = server.curl("POST", "gc", &admin, Some(b""));
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&report));
    let commit = one_chunk_point("web1", data.len(), &leaf);
    let (code, answer) = server.curl(
        "POST",
        &format!("sessions/{sid}/commit"),
        &admin,
        Some(commit.as_bytes()),
    );
    assert_eq!(
        code,
        200,
        "the session's pack survived the collection: {}",
        String::from_utf8_lossy(&answer)
    );
    let out = work.path().join("out.raw");
    ok(server
        .cmd(&admin, &["restore", "web1/xvda@latest"])
        .arg(&out));
    assert_eq!(read(&out), data);

    // A chunk the store held when a session was told so, removed by a collection before the
    // session commits: the commit is refused (409), never published naming it.
    let disk = work.path().join("web2.raw");
    let other: Vec<u8> = (0..262_144u32).map(|i| (i * 13 % 241) as u8).collect();
    std::fs::write(&disk, &other).expect("disk");
    let p = backup_json(&server, &admin, "web2", &disk);
    ok(&mut server.cmd(&admin, &["forget", &id(&p)]));
    let held = *blake3::hash(&other).as_bytes();
    let sid = server.open_session(&admin, "web3");
    let (_, missing) = server.curl(
        "POST",
        &format!("sessions/{sid}/missing"),
        &admin,
        Some(&held),
    );
    assert_eq!(
        missing,
        vec![0],
        "the forgotten point's chunk is still held, until a gc"
    );
    // The new disk: that chunk again, then one of its own; its leaf is new, so the commit's
    // check reads it and finds the reused chunk gone.
    let tail = vec![9u8; 4096];
    let leaf = leaf_of(&[held, *blake3::hash(&tail).as_bytes()]);
    let mut body = frame_of(&tail);
    body.extend_from_slice(&frame_of_kind(&leaf, 1));
    let (code, _) = server.curl(
        "POST",
        &format!("sessions/{sid}/chunks"),
        &admin,
        Some(&body),
    );
    assert_eq!(code, 200);
    let (code, _) = server.curl("POST", "gc", &admin, Some(b""));
    assert_eq!(code, 200);
    let commit = one_chunk_point("web3", other.len() + tail.len(), &leaf);
    let (code, answer) = server.curl(
        "POST",
        &format!("sessions/{sid}/commit"),
        &admin,
        Some(commit.as_bytes()),
    );
    assert_eq!(code, 409, "{}", String::from_utf8_lossy(&answer));
    refused_missing(code, &answer);
    let listed = json(&ok(&mut server.cmd(&admin, &["list", "--json"])));
    assert!(
        listed
            .as_array()
            .expect("list")
            .iter()
            .all(|p| p["vm"] != "web3"),
        "{listed}"
    );
    drop(server);
    ok(&mut store.cmd(&["verify"]));
}
