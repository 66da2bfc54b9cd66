//! `cairn serve` end to end: hosts backing up at once through HTTPS, what each token may do,
//! bad requests refused with nothing stored, certificates checked, kills of client and server.

use std::path::Path;
use std::process::Stdio;

use cairn_tests::serve::{Server, token};
use cairn_tests::{TestStore, gen_disk, id, json, num, ok, read, run};

fn backup_json(s: &Server, tok: &str, vm: &str, disk: &Path) -> serde_json::Value {
    json(&ok(s
        .cmd(tok, &["backup", "--json", "--vm", vm])
        .arg(format!("xvda={}", disk.display()))))[0]
        .clone()
}

#[test]
fn hosts_back_up_at_once_send_only_what_is_new_and_every_point_restores() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let store = TestStore::new("256K");
    let disks: Vec<_> = (0..3)
        .map(|i| {
            let p = w.join(format!("vm{i}.raw"));
            gen_disk(&p, "32M", 10 + i, i, 0);
            p
        })
        .collect();
    // A clone of vm0's template: its own data beside what vm0 already sent.
    let clone = w.join("clone.raw");
    gen_disk(&clone, "32M", 99, 0, 3);
    let tokens: Vec<String> = (0..4)
        .map(|i| {
            token(
                &store.path(),
                &format!("host{i}"),
                "backup",
                &format!("vm{i}"),
            )
        })
        .collect();
    let reader = token(&store.path(), "restorer", "restore", "*");
    let mut server = Server::start(&store.path(), 0, &[]);

    // Three hosts at once.
    let children: Vec<_> = (0..3)
        .map(|i| {
            server
                .cmd(&tokens[i], &["backup", "--json", "--vm", &format!("vm{i}")])
                .arg(format!("xvda={}", disks[i].display()))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("backup starts")
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().expect("backup ends");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // The clone sends only what vm0 did not: as much as a local store holding vm0 stores.
    let sent = num(
        &backup_json(&server, &tokens[3], "vm3", &clone),
        "bytes_sent",
    );
    let local = TestStore::new("256K");
    local.backup("vm0", "2026-12-01T00:00:00Z", "xvda", &disks[0], &[]);
    let unique = num(
        &local.backup("vm3", "2026-12-01T00:00:00Z", "xvda", &clone, &[]),
        "new_stored_bytes",
    );
    assert!(
        unique > 0 && sent as f64 <= unique as f64 * 1.05,
        "sent {sent} for {unique} bytes new"
    );
    // The same disk again sends nothing: no data chunk, no tree chunk.
    let again = backup_json(&server, &tokens[0], "vm0", &disks[0]);
    assert_eq!(num(&again, "bytes_sent"), 0, "{again}");

    // Every point restores bit-exact through the server, with a restore token.
    let points = json(&ok(&mut server.cmd(&reader, &["list", "--json"])));
    let points = points.as_array().expect("points").clone();
    assert_eq!(points.len(), 5);
    let want = |vm: &str| match vm {
        "vm3" => clone.clone(),
        v => disks[v[2..].parse::<usize>().expect("vm number")].clone(),
    };
    let out = w.join("out.raw");
    for p in &points {
        ok(server
            .cmd(&reader, &["restore", "--force", &id(p)])
            .arg(&out));
        assert_eq!(
            read(&out),
            read(&want(p["vm"].as_str().expect("vm"))),
            "{}",
            id(p)
        );
    }
    // The API is usable without cairn.
    let (code, body) = server.curl("GET", "points", &reader, None);
    assert_eq!(code, 200);
    assert_eq!(
        json(&String::from_utf8_lossy(&body))
            .as_array()
            .map(Vec::len),
        Some(5)
    );

    // And locally, once the server stopped (SIGTERM: it ends by itself, status 0); the store
    // verifies clean.
    assert!(server.stop(), "cairn serve stops gracefully on SIGTERM");
    for p in &points {
        store.restore(&id(p), &out, "raw");
        assert_eq!(read(&out), read(&want(p["vm"].as_str().expect("vm"))));
    }
    ok(&mut store.cmd(&["verify"]));
}

#[test]
fn each_role_does_what_it_may_and_nothing_else() {
    let work = tempfile::tempdir().expect("tempdir");
    let disk = work.path().join("d.raw");
    gen_disk(&disk, "8M", 1, 1, 0);
    let store = TestStore::new("256K");
    let backup = token(&store.path(), "host", "backup", "web*");
    let restore = token(&store.path(), "reader", "restore", "web*");
    let admin = token(&store.path(), "admin", "admin", "*");
    let server = Server::start(&store.path(), 0, &[]);
    let p = backup_json(&server, &backup, "web1", &disk);
    backup_json(&server, &admin, "db1", &disk);
    let pid = id(&p);
    let refused = |tok: &str, method: &str, path: &str, body: &[u8]| {
        let (code, answer) = server.curl(method, path, tok, Some(body));
        assert_eq!(
            code,
            403,
            "{method} {path}: {}",
            String::from_utf8_lossy(&answer)
        );
    };
    // The append-only token: nothing that removes or changes what is stored.
    for tok in [&backup, &restore] {
        refused(tok, "POST", &format!("points/{pid}/forget"), b"");
        refused(
            tok,
            "POST",
            &format!("points/{pid}/protect"),
            br#"{"protected": true}"#,
        );
        refused(
            tok,
            "POST",
            &format!("points/{pid}/protect"),
            br#"{"protected": false}"#,
        );
        refused(tok, "POST", "prune", br#"{"rules": {"last": 1}}"#);
        refused(tok, "POST", "gc", b"");
        refused(tok, "PUT", "policies/web1", br#"{"key_interval": 1}"#);
    }
    // The restore token cannot back up.
    refused(
        &restore,
        "POST",
        "sessions",
        br#"{"vm": "web1", "disks": ["xvda"]}"#,
    );
    // Neither reaches another VM: not its points, not a session for it.
    refused(
        &backup,
        "POST",
        "sessions",
        br#"{"vm": "db1", "disks": ["xvda"]}"#,
    );
    for tok in [&backup, &restore] {
        let listed = json(&ok(&mut server.cmd(tok, &["list", "--json"])));
        assert!(
            listed
                .as_array()
                .expect("list")
                .iter()
                .all(|p| p["vm"] == "web1"),
            "{listed}"
        );
    }
    // A point over an existing id is refused: nothing is overwritten.
    let sid = server.open_session(&backup, "web1");
    let (_, existing) = server.curl("GET", &format!("points/{pid}"), &backup, None);
    let body = format!("{{\"points\": [{}]}}", String::from_utf8_lossy(&existing));
    let (code, answer) = server.curl(
        "POST",
        &format!("sessions/{sid}/commit"),
        &backup,
        Some(body.as_bytes()),
    );
    assert_eq!(code, 409, "{}", String::from_utf8_lossy(&answer));
    // The CLI says so, with a non-zero exit.
    let o = run(&mut server.cmd(&backup, &["forget", &pid]));
    assert!(!o.status.success());
    // Restore reads; admin does everything.
    let out = work.path().join("out.raw");
    ok(server.cmd(&restore, &["restore", &pid]).arg(&out));
    assert_eq!(read(&out), read(&disk));
    let (code, _) = server.curl(
        "POST",
        &format!("points/{pid}/protect"),
        &admin,
        Some(br#"{"protected": true}"#),
    );
    assert_eq!(code, 200);
    let (code, _) = server.curl("POST", &format!("points/{pid}/forget"), &admin, Some(b""));
    assert_eq!(code, 400, "a protected point is not forgotten");
    let (code, _) = server.curl(
        "POST",
        &format!("points/{pid}/protect"),
        &admin,
        Some(br#"{"protected": false}"#),
    );
    assert_eq!(code, 200);
    let (code, _) = server.curl("POST", &format!("points/{pid}/forget"), &admin, Some(b""));
    assert_eq!(code, 200);
    let (code, report) = server.curl("POST", "gc", &admin, Some(b""));
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&report));
    let (code, _) = server.curl(
        "PUT",
        "policies/web1",
        &admin,
        Some(br#"{"key_interval": 7}"#),
    );
    assert_eq!(code, 200);
    let (code, _) = server.curl("POST", "prune", &admin, Some(br#"{"rules": {"last": 1}}"#));
    assert_eq!(code, 200);
}

#[test]
fn bad_tokens_bodies_and_certificates_are_refused_and_nothing_is_stored() {
    let work = tempfile::tempdir().expect("tempdir");
    let disk = work.path().join("d.raw");
    gen_disk(&disk, "8M", 2, 1, 0);
    let store = TestStore::new("256K");
    let backup = token(&store.path(), "host", "backup", "*");
    let revoked = token(&store.path(), "gone", "backup", "*");
    ok(cairn_tests::cairn(["token", "revoke", "--store"])
        .arg(store.path())
        .arg("gone"));
    let other = token(&store.path(), "other", "admin", "*");
    let wrong = format!(
        "{}{}",
        &other[..other.len() - 1],
        if other.ends_with('0') { '1' } else { '0' }
    );
    let server = Server::start(&store.path(), 0, &["--max-body", "1"]);
    for (tok, why) in [
        ("", "no token"),
        ("cairn_00000000_00", "no token"),
        (revoked.as_str(), "revoked"),
        (&wrong, "unknown"),
    ] {
        let (code, answer) = server.curl("GET", "points", tok, None);
        assert_eq!(code, 401, "{}", String::from_utf8_lossy(&answer));
        assert!(
            String::from_utf8_lossy(&answer).contains(why),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    let sid = server.open_session(&backup, "web1");
    // A chunk whose bytes are not its id.
    let mut frame = Vec::new();
    let mut c = frame_of(b"some bytes");
    c[60] ^= 1;
    frame.extend_from_slice(&c);
    let (code, answer) = server.curl(
        "POST",
        &format!("sessions/{sid}/chunks"),
        &backup,
        Some(&frame),
    );
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&answer));
    assert!(
        String::from_utf8_lossy(&answer).contains("not to its id"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // Ids that are not 32 bytes each; a body over the limit; JSON that is not what is asked.
    let (code, _) = server.curl(
        "POST",
        &format!("sessions/{sid}/missing"),
        &backup,
        Some(&[0u8; 33]),
    );
    assert_eq!(code, 400);
    // Over the limit: 413, never accepted. The server answers before the body is in and
    // closes, and curl, still sending, does not always read that answer (it then shows 0 or
    // the 100 of its own handshake): asked again until it does.
    let mut codes = Vec::new();
    for _ in 0..10 {
        let (code, _) = server.curl(
            "POST",
            &format!("sessions/{sid}/chunks"),
            &backup,
            Some(&vec![0u8; 2 << 20]),
        );
        codes.push(code);
        if code == 413 {
            break;
        }
    }
    assert!(
        codes.contains(&413) && codes.iter().all(|c| !(200..300).contains(c)),
        "{codes:?}"
    );
    let (code, _) = server.curl("POST", "sessions", &backup, Some(b"{\"vm\": 3}"));
    assert_eq!(code, 400);
    // A commit naming chunks nobody sent.
    let forged = serde_json::json!({"points": [{
        "id": "0123456789abcdef0123456789abcdef", "vm": "web1", "disk": "xvda",
        "time": "2026-12-01T00:00:00Z", "size": 262144, "chunk_size": 262144,
        "source": {"kind": "raw", "vhd_uuid": null, "path": "x"}, "parent": null, "format": 2,
        "depth": 0, "segments": ["11".repeat(32)], "stats": {"logical_bytes": 0, "bytes_read": 0, "chunks": 1, "zero_chunks": 0, "parent_chunks": 0, "known_chunks": 0, "new_chunks": 1, "new_plain_bytes": 0, "new_stored_bytes": 0, "seconds": 0.0}, "committed": "2026-12-01T00:00:00Z",
        "protected": false, "run": null, "labels": {}
    }]});
    let (code, answer) = server.curl(
        "POST",
        &format!("sessions/{sid}/commit"),
        &backup,
        Some(forged.to_string().as_bytes()),
    );
    refused_missing(code, &answer);
    // Random bytes at every endpoint: a 4xx, never a crash.
    let endpoints = [
        "store",
        "points",
        "points/x",
        "chunks/read",
        "sessions",
        "sessions/x/missing",
        "sessions/x/chunks",
        "sessions/x/commit",
        "prune",
        "gc",
        "policies/x",
        "nope",
    ];
    let mut seed = 7u64;
    for round in 0..6 {
        for e in endpoints {
            let len = (seed % 300) as usize;
            let body: Vec<u8> = (0..len)
                .map(|i| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407 + i as u64);
                    (seed >> 33) as u8
                })
                .collect();
            let (code, answer) = server.curl("POST", e, &backup, Some(&body));
            assert!(
                (400..500).contains(&code),
                "round {round} {e}: {code} {}",
                String::from_utf8_lossy(&answer)
            );
        }
    }
    assert_eq!(
        json(&ok(&mut server.cmd(&backup, &["list", "--json"])))
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    // Certificates: a wrong fingerprint and a CA that did not sign it are refused.
    let mut c = server.cmd(&backup, &["list"]);
    c.env("CAIRN_FINGERPRINT", "00".repeat(32));
    let o = run(&mut c);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("fingerprint"));
    let (ca, _, _) = cairn_tests::certificates(work.path());
    let mut c = server.cmd(&backup, &["list"]);
    c.env_remove("CAIRN_FINGERPRINT")
        .env("CAIRN_SERVER_CA", &ca);
    let o = run(&mut c);
    assert!(
        !o.status.success(),
        "a certificate the CA did not sign is refused"
    );
    // The refusal says how to trust the right certificate.
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(
        said.contains("--fingerprint") && said.contains("--server-ca"),
        "{said}"
    );
    let mut c = server.cmd(&backup, &["list"]);
    c.env_remove("CAIRN_FINGERPRINT")
        .env("CAIRN_SERVER_CA", &server.cert);
    ok(&mut c);
    // A plain local writer is refused while the server holds the store.
    let o = run(store
        .cmd(&["backup", "--vm", "x"])
        .arg(format!("xvda={}", disk.display())));
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("locked"));
}

/// The frame of a plain chunk holding `bytes` (the pack format: header, then the bytes).
fn frame_of(bytes: &[u8]) -> Vec<u8> {
    frame_of_kind(bytes, 0)
}

/// The frame of a plain chunk of `kind` (0 data, 1 tree).
fn frame_of_kind(bytes: &[u8], kind: u8) -> Vec<u8> {
    let id = blake3::hash(bytes);
    let mut h = vec![0u8; 56];
    h[0..4].copy_from_slice(b"CFRM");
    h[8..40].copy_from_slice(id.as_bytes());
    h[40..44].copy_from_slice(&(bytes.len() as u32).to_be_bytes());
    h[44..48].copy_from_slice(&(bytes.len() as u32).to_be_bytes());
    h[49] = kind;
    let crc = crc32(&h[8..]);
    h[4..8].copy_from_slice(&crc.to_be_bytes());
    h.extend_from_slice(bytes);
    h
}

fn crc32(b: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &x in b {
        crc ^= u32::from(x);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

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
        let mut input = c.stdin.take().expect("stdin");
        input
            .write_all(&bytes[..bytes.len() / 2])
            .expect("half the disk");
        std::thread::sleep(std::time::Duration::from_millis(500));
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
fn one_disk_is_in_one_session_at_a_time_and_admins_work_through_the_cli() {
    let work = tempfile::tempdir().expect("tempdir");
    let disk = work.path().join("d.raw");
    gen_disk(&disk, "8M", 5, 1, 0);
    let store = TestStore::new("256K");
    let tok = token(&store.path(), "host", "backup", "*");
    let admin = token(&store.path(), "admin", "admin", "*");
    let server = Server::start(&store.path(), 0, &[]);
    let sid = server.open_session(&tok, "web1");
    // Refused, clearly, when not asked to wait.
    let o = run(server
        .cmd(&tok, &["backup", "--vm", "web1"])
        .arg(format!("xvda={}", disk.display())));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("being backed up by another session"),
        "{err}"
    );
    // Waits, with --wait, until the first session ends.
    let waiting = server
        .cmd(&tok, &["backup", "--json", "--wait", "--vm", "web1"])
        .arg(format!("xvda={}", disk.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("backup starts");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (code, _) = server.curl("DELETE", &format!("sessions/{sid}"), &tok, None);
    assert_eq!(code, 204);
    let o = waiting.wait_with_output().expect("backup ends");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let p = id(&json(&String::from_utf8_lossy(&o.stdout))[0]);
    // An admin sets policies through the CLI, and a backup gets its VM's.
    ok(&mut server.cmd(
        &admin,
        &["policy", "set", "--vm", "web1", "--key-interval", "3"],
    ));
    let shown = json(&ok(&mut server.cmd(&admin, &["policy", "show", "--json"])));
    assert_eq!(shown["vms"]["web1"]["key_interval"], 3, "{shown}");
    let (code, s) = server.curl(
        "POST",
        "sessions",
        &tok,
        Some(br#"{"vm": "web1", "disks": ["xvdz"]}"#),
    );
    assert_eq!(code, 201);
    assert_eq!(json(&String::from_utf8_lossy(&s))["key_interval"], 3);
    // An admin protects, forgets, prunes and collects through the CLI.
    ok(&mut server.cmd(&admin, &["protect", &p]));
    assert!(
        !run(&mut server.cmd(&admin, &["forget", &p]))
            .status
            .success()
    );
    ok(&mut server.cmd(&admin, &["unprotect", &p]));
    let dry = json(&ok(
        &mut server.cmd(&admin, &["forget", "--dry-run", "--json", &p])
    ));
    assert!(num(&dry[0], "would_free_bytes") > 0, "{dry}");
    ok(&mut server.cmd(&admin, &["forget", &p]));
    let gc = json(&ok(&mut server.cmd(&admin, &["gc", "--json"])));
    assert!(num(&gc, "bytes_freed") > 0, "{gc}");
    let pruned = json(&ok(
        &mut server.cmd(&admin, &["prune", "--keep-last", "1", "--json"])
    ));
    assert_eq!(pruned["removed"], 0, "{pruned}");
    assert_eq!(
        json(&ok(&mut server.cmd(&admin, &["list", "--json"])))
            .as_array()
            .map(Vec::len),
        Some(0)
    );
}

#[test]
fn every_restore_format_and_verify_work_through_the_server() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let (d0, d1) = (w.join("d0.raw"), w.join("d1.raw"));
    gen_disk(&d0, "16M", 6, 1, 0);
    gen_disk(&d1, "16M", 6, 1, 1);
    let store = TestStore::new("256K");
    let tok = token(&store.path(), "host", "backup", "*");
    let reader = token(&store.path(), "reader", "restore", "*");
    let mut server = Server::start(&store.path(), 0, &[]);
    let p0 = id(&backup_json(&server, &tok, "vm", &d0));
    let p1 = id(&backup_json(&server, &tok, "vm", &d1));
    ok(&mut server.cmd(&reader, &["verify"]));
    let remote_diff = ok(&mut server.cmd(&reader, &["diff", "--json", &p0, &p1]));
    // Raw, VHD, VHD chain, VHD against a base: as a local restore of the same points writes.
    let remote_out = w.join("remote");
    let local_out = w.join("local");
    let cases: [(&str, &[&str]); 4] = [
        ("raw", &[]),
        ("vhd", &[]),
        ("vhd-chain", &[]),
        ("vhd", &["--base", &p0]),
    ];
    let mut remote_files = Vec::new();
    for (i, (format, extra)) in cases.iter().enumerate() {
        let (r, l) = (
            remote_out.join(i.to_string()),
            local_out.join(i.to_string()),
        );
        for d in [&r, &l] {
            std::fs::create_dir_all(d).expect("dir");
        }
        let name = if *format == "vhd-chain" {
            "chain"
        } else {
            "disk"
        };
        ok(server
            .cmd(&reader, &["restore", "--format", format, &p1])
            .args(*extra)
            .arg(r.join(name)));
        remote_files.push((r, l, name, *format, extra.to_vec()));
    }
    assert!(server.stop());
    for (r, l, name, format, extra) in &remote_files {
        ok(store
            .cmd(&["restore", "--format", format, &p1])
            .args(extra)
            .arg(l.join(name)));
        let files = |d: &Path| {
            let mut v: Vec<_> = cairn_tests::files_under(d)
                .into_iter()
                .map(|f| (f.strip_prefix(d).expect("under").to_owned(), read(&f)))
                .collect();
            v.sort();
            v
        };
        assert_eq!(files(r), files(l), "{format} {extra:?}");
    }
    assert_eq!(
        remote_diff,
        ok(&mut store.cmd(&["diff", "--json", &p0, &p1]))
    );
    // Damage is named through the server too (exit 1, the point).
    let bad = cairn_tests::corrupt_a_data_chunk(&store);
    let server = Server::start(&store.path(), 0, &[]);
    let o = run(&mut server.cmd(&reader, &["verify", "--json"]));
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v = json(&String::from_utf8_lossy(&o.stdout));
    let text = v.to_string();
    assert!(
        text.contains(&bad) && (text.contains(&p0) || text.contains(&p1)),
        "{v}"
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
fn an_idle_session_is_dropped_with_its_chunks() {
    let work = tempfile::tempdir().expect("tempdir");
    let store = TestStore::new("256K");
    let tok = token(&store.path(), "host", "backup", "*");
    let server = Server::start(&store.path(), 0, &["--idle-timeout", "1"]);
    let sid = server.open_session(&tok, "web1");
    let mut frame = Vec::new();
    let bytes = vec![9u8; 4096];
    frame.extend_from_slice(&frame_of(&bytes));
    let (code, answer) = server.curl(
        "POST",
        &format!("sessions/{sid}/chunks"),
        &tok,
        Some(&frame),
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(store.pack_files().len(), 1, "the session's pack");
    // The reaper looks every 5 s.
    std::thread::sleep(std::time::Duration::from_secs(7));
    let (code, answer) = server.curl(
        "POST",
        &format!("sessions/{sid}/chunks"),
        &tok,
        Some(&frame),
    );
    assert_eq!(code, 404, "{}", String::from_utf8_lossy(&answer));
    assert!(store.pack_files().is_empty(), "its pack is gone");
    drop(work);
}

#[test]
fn the_report_through_the_server_is_the_local_one() {
    let work = tempfile::tempdir().expect("tempdir");
    let (d0, d1) = (work.path().join("d0.raw"), work.path().join("d1.raw"));
    gen_disk(&d0, "8M", 11, 1, 0);
    gen_disk(&d1, "8M", 12, 2, 0);
    let store = TestStore::new("256K");
    let admin = token(&store.path(), "admin", "admin", "*");
    let reader = token(&store.path(), "reader", "restore", "*");
    let mut server = Server::start(&store.path(), 0, &[]);
    backup_json(&server, &admin, "web1", &d0);
    backup_json(&server, &admin, "db1", &d1);
    let remote = json(&ok(&mut server.cmd(&admin, &["report", "--json"])));
    let human = ok(&mut server.cmd(&admin, &["report"]));
    assert!(
        human.contains("vm web1") && human.contains("vm db1"),
        "{human}"
    );
    let only = json(&ok(
        &mut server.cmd(&admin, &["report", "--json", "--vm", "db1"])
    ));
    assert_eq!(only["vms"].as_array().map(Vec::len), Some(1), "{only}");
    assert_eq!(only["points"][0]["vm"], "db1");
    // A restore token reads the report of its VMs, as its page shows it: no store-wide figure.
    let (code, body) = server.curl("GET", "report", &reader, None);
    assert_eq!(code, 200);
    let theirs = json(&String::from_utf8_lossy(&body));
    assert!(
        theirs["store"].is_null() && theirs["reclaimable_bytes"].is_null(),
        "{theirs}"
    );
    assert_eq!(theirs["vms"].as_array().map(Vec::len), Some(2), "{theirs}");
    assert!(server.stop());
    let local = json(&ok(&mut store.cmd(&["report", "--json"])));
    for field in [
        "schema_version",
        "store",
        "vms",
        "disks",
        "points",
        "damaged_points",
    ] {
        assert_eq!(remote[field], local[field], "{field}");
    }
    assert_eq!(local["vms"].as_array().map(Vec::len), Some(2));
}

#[test]
fn a_token_that_sees_only_its_own_chunks_learns_nothing_of_other_vms() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let (a, clone) = (w.join("a.raw"), w.join("clone.raw"));
    gen_disk(&a, "16M", 21, 1, 0);
    gen_disk(&clone, "16M", 22, 1, 2);
    let store = TestStore::new("256K");
    let admin = token(&store.path(), "admin", "admin", "*");
    let own = json(&ok(cairn_tests::cairn([
        "token",
        "create",
        "--json",
        "--name",
        "dmz",
        "--role",
        "backup",
        "--vm",
        "b*",
        "--lookups",
        "own",
        "--store",
    ])
    .arg(store.path())))["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let server = Server::start(&store.path(), 0, &[]);
    let pa = backup_json(&server, &admin, "a1", &a);
    let before = cairn_tests::dir_size(&store.path().join("packs"));
    // The clone shares most of a1's chunks: this token is told none of them is there.
    let sent = num(
        &backup_json(&server, &own, "b1", &clone),
        "new_stored_bytes",
    );
    let full = TestStore::new("256K");
    let whole = num(
        &full.backup("b1", "2026-12-01T00:00:00Z", "xvda", &clone, &[]),
        "new_stored_bytes",
    );
    assert!(sent as f64 >= whole as f64 * 0.95, "sent {sent} of {whole}");
    // The store still keeps each block once.
    let grew = cairn_tests::dir_size(&store.path().join("packs")) - before;
    let reference = TestStore::new("256K");
    reference.backup("a1", "2026-12-01T00:00:00Z", "xvda", &a, &[]);
    let unique = num(
        &reference.backup("b1", "2026-12-01T00:00:00Z", "xvda", &clone, &[]),
        "new_stored_bytes",
    );
    assert!(
        (grew as f64) < unique as f64 * 1.1 + 65536.0,
        "grew {grew}, unique {unique}"
    );
    // Its own history still dedups: the same disk again sends nothing.
    let again = backup_json(&server, &own, "b1", &clone);
    assert_eq!(num(&again, "bytes_sent"), 0, "{again}");
    // It cannot read another VM's chunks, even knowing their ids.
    let top = pa["id"].as_str().expect("id").to_owned();
    let (_, p) = server.curl("GET", &format!("points/{top}"), &admin, None);
    let seg = json(&String::from_utf8_lossy(&p))["segments"][0]
        .as_str()
        .expect("segment")
        .to_owned();
    let id: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&seg[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    let (code, body) = server.curl("POST", "chunks/read", &own, Some(&id));
    assert_eq!(
        (code, body.first().copied()),
        (200, Some(1)),
        "refused in its record"
    );
    let (code, body) = server.curl("POST", "chunks/read", &admin, Some(&id));
    assert_eq!((code, body.first().copied()), (200, Some(0)));
}

#[test]
fn a_store_replicates_into_a_server_with_an_append_only_token() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let src = TestStore::new("256K");
    let days: Vec<_> = (0..3)
        .map(|d| {
            let p = w.join(format!("day{d}.raw"));
            gen_disk(&p, "16M", 31, 1, d);
            p
        })
        .collect();
    for (d, raw) in days.iter().take(2).enumerate() {
        src.backup(
            "web1",
            &format!("2026-11-0{}T02:00:00Z", d + 1),
            "xvda",
            raw,
            &[],
        );
    }
    let dst = TestStore::new("256K");
    let tok = token(&dst.path(), "offsite", "backup", "web*");
    let admin = token(&dst.path(), "admin", "admin", "*");
    let server = Server::start(&dst.path(), 0, &[]);
    let replicate_with = |tok: &str, extra: &[&str]| {
        json(&ok(server
            .cmd(tok, &["replicate", "--json", "--from"])
            .arg(src.path())
            .arg("--to")
            .arg(&server.url)
            .args(extra)))
    };
    let replicate = |tok: &str| replicate_with(tok, &[]);
    // A dry run into the server counts what the run sends, and publishes nothing.
    let dry = replicate_with(&tok, &["--dry-run"]);
    assert!(dst.list().is_empty(), "a dry run published points");
    let first = replicate(&tok);
    for k in ["chunks_sent", "bytes_sent"] {
        assert!(num(&first, k) > 0, "{first}");
        assert_eq!(num(&dry, k), num(&first, k), "{k}: dry {dry} vs {first}");
    }
    assert_eq!(first["points"].as_array().map(Vec::len), Some(2), "{first}");
    // Only what is new the second time; a point the server forgot is not sent again.
    src.backup("web1", "2026-11-03T02:00:00Z", "xvda", &days[2], &[]);
    let points = src.list();
    let oldest = id(&points[0]);
    ok(&mut server.cmd(&admin, &["forget", &oldest]));
    let second = replicate(&tok);
    assert_eq!(
        second["points"].as_array().map(Vec::len),
        Some(1),
        "{second}"
    );
    assert_eq!(num(&second, "points_forgotten"), 1, "{second}");
    assert!(
        num(&second, "bytes_sent") < num(&first, "bytes_sent"),
        "{first} {second}"
    );
    // Every point there restores as the source's, through the server.
    let (a, b) = (w.join("a.raw"), w.join("b.raw"));
    for p in &points[1..] {
        src.restore(&id(p), &a, "raw");
        ok(server.cmd(&tok, &["restore", "--force", &id(p)]).arg(&b));
        assert_eq!(read(&a), read(&b), "{}", id(p));
    }
    // An append-only token never carries protection over; an admin token does.
    let protected_copy = |time: &str, tok: &str| {
        let p = id(&src.backup("web1", time, "xvda", &days[0], &[]));
        ok(&mut src.cmd(&["protect", &p]));
        replicate(tok);
        let (_, there) = server.curl("GET", &format!("points/{p}"), &admin, None);
        json(&String::from_utf8_lossy(&there))["protected"].clone()
    };
    assert_eq!(protected_copy("2026-11-04T02:00:00Z", &tok), false);
    assert_eq!(protected_copy("2026-11-05T02:00:00Z", &admin), true);
}

/// A leaf of the tree format (format 2, level 0) naming `chunks`.
fn leaf_of(chunks: &[[u8; 32]]) -> Vec<u8> {
    let mut b = b"cairn-tree".to_vec();
    b.extend_from_slice(&[2, 0]);
    b.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    for c in chunks {
        b.extend_from_slice(c);
    }
    b
}

/// A point of `size` bytes whose tree is the one leaf `leaf`, as a client commits it.
fn one_chunk_point(vm: &str, size: usize, leaf: &[u8]) -> String {
    serde_json::json!({"points": [{
        "id": hex(blake3::hash(vm.as_bytes()).as_bytes())[..32].to_owned(), "vm": vm, "disk": "xvda",
        "time": "2026-12-01T00:00:00Z", "size": size, "chunk_size": 262144,
        "source": {"kind": "raw", "vhd_uuid": null, "path": "x"}, "parent": null, "format": 2,
        "depth": 0, "segments": [hex(blake3::hash(leaf).as_bytes())], "stats": {"logical_bytes": 0, "bytes_read": 0, "chunks": 1, "zero_chunks": 0, "parent_chunks": 0, "known_chunks": 0, "new_chunks": 1, "new_plain_bytes": 0, "new_stored_bytes": 0, "seconds": 0.0},
        "committed": "2026-12-01T00:00:00Z", "protected": false, "run": null, "labels": {}
    }]})
    .to_string()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
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

/// A commit refused because it names chunks the store does not hold (4xx, saying so).
fn refused_missing(code: u16, answer: &[u8]) {
    let text = String::from_utf8_lossy(answer);
    assert!(
        (code == 400 || code == 409)
            && (text.contains("does not hold") || text.contains("is not in this store")),
        "{code}: {text}"
    );
}

#[test]
fn a_server_replicates_into_a_folder_and_into_another_server() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let site = TestStore::new("256K");
    let days: Vec<_> = (0..3)
        .map(|d| {
            let p = w.join(format!("day{d}.raw"));
            gen_disk(&p, "16M", 41, 1, d);
            p
        })
        .collect();
    for (d, raw) in days.iter().take(2).enumerate() {
        let t = format!("2026-11-0{}T02:00:00Z", d + 1);
        site.backup("web1", &t, "xvda", raw, &[]);
        site.backup("db1", &t, "xvda", raw, &[]);
    }
    let first_web = id(site
        .list()
        .iter()
        .find(|p| p["vm"] == "web1")
        .expect("web1's first point"));
    ok(&mut site.cmd(&["protect", &first_web]));
    // A restore token for web*: the pull sees and copies only those VMs.
    let reader = token(&site.path(), "offsite-pull", "restore", "web*");
    let site_server = Server::start(&site.path(), 0, &[]);
    let offsite = TestStore::new("256K");
    let pull = || {
        json(&ok(site_server
            .cmd(&reader, &["replicate", "--json", "--to"])
            .arg(offsite.path())
            .arg("--from")
            .arg(&site_server.url)))
    };
    let first = pull();
    assert_eq!(first["points"].as_array().map(Vec::len), Some(2), "{first}");
    let there = offsite.list();
    assert!(there.iter().all(|p| p["vm"] == "web1"), "{there:?}");
    let copied_first = there.iter().find(|p| id(p) == first_web).expect("copied");
    assert_eq!(
        copied_first["protected"], true,
        "protection kept: {there:?}"
    );
    // Nothing twice; the next day only its new chunks.
    let again = pull();
    assert_eq!(num(&again, "bytes_sent"), 0, "{again}");
    // The site's store is the server's now: the next backup goes through it.
    let host = token(&site.path(), "web-host", "backup", "web*");
    ok(site_server
        .cmd(
            &host,
            &["backup", "--vm", "web1", "--time", "2026-11-03T02:00:00Z"],
        )
        .arg(format!("xvda={}", days[2].display())));
    let third = pull();
    assert_eq!(third["points"].as_array().map(Vec::len), Some(1), "{third}");
    assert!(
        num(&third, "bytes_sent") < num(&first, "bytes_sent") / 2,
        "{first} {third}"
    );
    let (a, b) = (w.join("a.raw"), w.join("b.raw"));
    for p in offsite.list() {
        site.restore(&id(&p), &a, "raw");
        offsite.restore(&id(&p), &b, "raw");
        assert_eq!(read(&a), read(&b), "{}", id(&p));
    }
    ok(&mut offsite.cmd(&["verify"]));

    // Server to server: --from's token and fingerprint given apart from --to's.
    let far = TestStore::new("256K");
    let pusher = token(&far.path(), "from-site", "backup", "*");
    let far_server = Server::start(&far.path(), 0, &[]);
    let token_file = w.join("site.token");
    std::fs::write(&token_file, &reader).expect("token file");
    let both = |extra: &[&str]| {
        let mut c = far_server.cmd(&pusher, &["replicate", "--json", "--from"]);
        c.arg(&site_server.url)
            .arg("--to")
            .arg(&far_server.url)
            .args(extra);
        c
    };
    let refused = run(&mut both(&[]));
    assert!(!refused.status.success());
    // Under --json, the error is JSON on standard output.
    assert!(
        String::from_utf8_lossy(&refused.stdout).contains("--from-token-file"),
        "{refused:?}"
    );
    let tf = token_file.to_string_lossy().into_owned();
    let r = json(&ok(&mut both(&[
        "--from-token-file",
        &tf,
        "--from-fingerprint",
        &site_server.fingerprint,
    ])));
    assert_eq!(r["points"].as_array().map(Vec::len), Some(3), "{r}");
    for p in offsite.list() {
        offsite.restore(&id(&p), &a, "raw");
        ok(far_server
            .cmd(&pusher, &["restore", "--force", &id(&p)])
            .arg(&b));
        assert_eq!(read(&a), read(&b), "{}", id(&p));
    }
}

/// Prune through a server takes the filters a local prune takes and prints the same plan: every
/// chosen point with its decision. Another VM's points are not in the plan and stay; a filter
/// naming nothing is a usage error (exit 2) that removes nothing.
#[test]
fn prune_through_a_server_takes_filters_and_prints_its_plan() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let store = TestStore::new("256K");
    let tok = token(&store.path(), "host", "backup", "*");
    let admin = token(&store.path(), "admin", "admin", "*");
    let server = Server::start(&store.path(), 0, &[]);
    for (vm, seeds) in [("alpha", [1, 2, 3]), ("beta", [4, 5, 6])] {
        for seed in seeds {
            let d = w.join(format!("{vm}{seed}.raw"));
            gen_disk(&d, "4M", 6, 1, seed);
            backup_json(&server, &tok, vm, &d);
        }
    }
    let dry = ok(&mut server.cmd(
        &admin,
        &["prune", "--vm", "alpha", "--keep-last", "1", "--dry-run"],
    ));
    let rows: Vec<&str> = dry.lines().filter(|l| l.contains(" alpha ")).collect();
    assert_eq!(rows.len(), 3, "{dry}");
    assert_eq!(
        rows.iter().filter(|l| l.ends_with("remove")).count(),
        2,
        "{dry}"
    );
    assert_eq!(
        rows.iter()
            .filter(|l| l.ends_with("keep (keep-last)"))
            .count(),
        1,
        "{dry}"
    );
    assert!(
        !dry.contains("beta"),
        "another VM's points are not in the plan:\n{dry}"
    );
    assert!(dry.contains("dry run in https://"), "{dry}");
    let before = json(&ok(&mut server.cmd(&admin, &["list", "--json"])));
    assert_eq!(before.as_array().map(Vec::len), Some(6));
    // A filter that names nothing removes nothing and says so.
    let out = run(&mut server.cmd(&admin, &["prune", "--vm", "gamma", "--keep-last", "1"]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("gamma"),
        "{out:?}"
    );
    let pruned = json(&ok(&mut server.cmd(
        &admin,
        &["prune", "--vm", "alpha", "--keep-last", "1", "--json"],
    )));
    assert_eq!(pruned["removed"], 2, "{pruned}");
    assert_eq!(
        pruned["points"].as_array().map(Vec::len),
        Some(3),
        "{pruned}"
    );
    let after = json(&ok(&mut server.cmd(&admin, &["list", "--json"])));
    let count = |vm: &str| {
        after
            .as_array()
            .map_or(0, |a| a.iter().filter(|p| p["vm"] == vm).count())
    };
    assert_eq!((count("alpha"), count("beta")), (1, 3), "{after}");
}
