//! `cairn serve` end to end in everyday use: hosts backing up at once through HTTPS, one disk
//! in one session at a time, every restore format, verify, the report and prune through the
//! server, idle sessions dropped.

use std::path::Path;
use std::process::Stdio;

use cairn_tests::serve::{Server, backup_json, frame_of, token};
use cairn_tests::{TestStore, gen_disk, id, json, num, ok, read, run};

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
    // Released once the waiting backup has been refused at least once (the first refusal is
    // the backup above without --wait).
    cairn_tests::wait_until("the waiting backup to be refused", || {
        std::fs::read_to_string(&server.log)
            .unwrap_or_default()
            .matches("session refused")
            .count()
            >= 2
    });
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

/// A restore through a server reads ahead, several requests in flight; every chunk is still
/// decoded and checked against its id on arrival. A server (or its disk) that sends another
/// chunk's bytes under an id, with frame CRCs that match, is caught: the restore fails naming
/// the chunk and the disk offset, and with `--ignore-errors` writes every other byte as the
/// disk held it and that chunk's range as zeros.
#[test]
fn a_chunk_the_server_forges_is_refused_by_the_client() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let disk = w.join("d.raw");
    gen_disk(&disk, "48M", 8, 1, 0);
    let store = TestStore::new("256K");
    let tok = token(&store.path(), "host", "backup", "*");
    let reader = token(&store.path(), "reader", "restore", "*");
    let mut server = Server::start(&store.path(), 0, &[]);
    let p = id(&backup_json(&server, &tok, "vm", &disk));
    let good = w.join("good.raw");
    ok(server.cmd(&reader, &["restore", &p]).arg(&good));
    assert_eq!(
        read(&good),
        read(&disk),
        "a clean restore through the server"
    );
    assert!(server.stop());

    let pack = store
        .pack_files()
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a pack");
    let forged = cairn_tests::forge_a_data_chunk_in(&pack);
    let mut server = Server::start(&store.path(), 0, &[]);
    let out = w.join("out.raw");
    let o = run(server.cmd(&reader, &["restore", &p]).arg(&out));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a forged chunk restored: {err}");
    assert!(err.contains(&forged) && err.contains("offset"), "{err}");
    assert!(!out.exists(), "a failed restore leaves no file");

    let o = run(server
        .cmd(&reader, &["restore", "--json", "--ignore-errors", &p])
        .arg(&out));
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v = json(&String::from_utf8_lossy(&o.stdout));
    let damaged = v["damaged"].as_array().expect("damaged ranges").clone();
    assert_eq!(damaged.len(), 1, "{v}");
    let at = num(&damaged[0], "offset") as usize;
    let len = num(&damaged[0], "len") as usize;
    let (got, want) = (read(&out), read(&disk));
    assert_eq!(got.len(), want.len());
    assert!(
        got[at..at + len].iter().all(|b| *b == 0),
        "the damaged range reads as zeros"
    );
    assert_eq!(got[..at], want[..at]);
    assert_eq!(got[at + len..], want[at + len..]);
    assert!(server.stop());
}

/// A server killed while a restore reads ahead of it (requests in flight, answers waiting in
/// its buffers): the restore ends with an error naming the server, within the time a request
/// may take, and leaves nothing that looks like a result.
#[test]
fn a_restore_whose_server_dies_mid_way_fails_cleanly() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let disk = w.join("d.raw");
    gen_disk(&disk, "64M", 9, 1, 0);
    let store = TestStore::new("256K");
    let tok = token(&store.path(), "host", "backup", "*");
    let reader = token(&store.path(), "reader", "restore", "*");
    let mut server = Server::start(&store.path(), 0, &[]);
    let p = id(&backup_json(&server, &tok, "vm", &disk));
    assert!(server.stop());
    // Every pack read slowed (5 ms), so that the restore is surely under way when it dies.
    let mut server = Server::start_slowed(&store.path(), "pread64", 5_000);
    let out = w.join("out.raw");
    let mut child = server
        .cmd(&reader, &["restore", &p])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("restore starts");
    let partial = |d: &Path| {
        std::fs::read_dir(d)
            .expect("dir")
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains("cairn-partial"))
    };
    let started = std::time::Instant::now();
    while !partial(w) && started.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(partial(w), "the restore never began writing");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let url = server.url.clone();
    server.kill();
    let killed = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            killed.elapsed() < std::time::Duration::from_secs(120),
            "the restore hangs on a dead server"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    assert!(
        !status.success(),
        "a restore from a dead server succeeded: {err}"
    );
    assert!(err.contains(&url), "{err}");
    assert!(
        !out.exists() && !partial(w),
        "a failed restore leaves no file"
    );
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
    // The reaper looks every 5 s, and says what it dropped.
    cairn_tests::wait_until("the reaper to drop the idle session", || {
        std::fs::read_to_string(&server.log)
            .unwrap_or_default()
            .contains("dropped after being idle")
    });
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
