//! What a token of `cairn serve` may do and nothing else: each role against the CLI, bad
//! tokens, bodies and certificates refused with nothing stored, and a token that sees only its
//! own chunks learning nothing of other VMs.

use cairn_tests::serve::{Server, backup_json, frame_of, refused_missing, token};
use cairn_tests::{TestStore, gen_disk, id, json, num, ok, read, run};

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
