//! The promises of `cairn serve` about points, attacked as a ransomware-held host or a careless
//! admin would: a backup token dating points to make retention drop real ones, claiming another
//! VM's identity, a stolen admin token against the minimum retention and a protection, and a
//! commit used as an oracle. Who may call what is `server_endpoints.rs`; the bounds on what a
//! client holds are `server_limits.rs`.

use cairn_tests::serve::{Server, bearer, call, points_of, token};
use cairn_tests::{TestStore, cairn, gen_disk, id, json, ok, run};
use chrono::{DateTime, Duration, Utc};

const UUID: &str = "6f1c2a4e-0b1d-4c3e-9a8f-1d2e3f4a5b6c";

fn time_of(p: &serde_json::Value, key: &str) -> Option<DateTime<Utc>> {
    p[key]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn utc(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[test]
fn a_backup_token_cannot_date_points_to_make_retention_drop_real_ones() {
    let work = tempfile::tempdir().expect("tempdir");
    let (real, zeros) = (work.path().join("real.raw"), work.path().join("zeros.raw"));
    gen_disk(&real, "4M", 1, 1, 0);
    std::fs::write(&zeros, vec![0u8; 4 << 20]).expect("zeros");
    let store = TestStore::new("256K");
    // Three real nightly points, made on the store's machine on the three days before today.
    let today = Utc::now().date_naive();
    let real_ids: Vec<String> = (1..=3)
        .rev()
        .map(|d| {
            let day = today - Duration::days(d);
            id(&store.backup("db01", &format!("{day}T02:00:00Z"), "xvda", &real, &[]))
        })
        .collect();
    let host = token(&store.path(), "db-host", "backup", "db*");
    let admin = token(&store.path(), "admin", "admin", "*");
    let server = Server::start(&store.path(), 0, &[]);
    let before = Utc::now() - Duration::seconds(2);
    // The host, taken over: zeros dated far in the future, and at the end of each real day.
    let mut claims: Vec<String> = (1..=3).map(|d| format!("2099-01-0{d}T00:00:00Z")).collect();
    claims.extend((1..=3).map(|d| format!("{}T23:59:59Z", today - Duration::days(d))));
    for claim in &claims {
        let o = run(server
            .cmd(
                &host,
                &[
                    "backup", "--json", "--force", "--vm", "db01", "--time", claim,
                ],
            )
            .arg(format!("xvda={}", zeros.display())));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let after = Utc::now() + Duration::seconds(2 + claims.len() as i64);
    let points = points_of(&server, &admin);
    let attacker: Vec<&serde_json::Value> = points
        .iter()
        .filter(|p| !real_ids.contains(&id(p)))
        .collect();
    assert_eq!(attacker.len(), claims.len());
    let mut times = Vec::new();
    for (p, claim) in attacker.iter().zip(&claims) {
        let t = time_of(p, "time").expect("time");
        assert!(
            t >= before && t <= after,
            "a backup token's point is dated {t}, not when the server received it ({before}..{after})"
        );
        assert_eq!(
            time_of(p, "claimed_time").map(utc).as_deref(),
            Some(claim.as_str()),
            "the client's claimed time is kept as a label: {p}"
        );
        times.push(t);
    }
    times.sort();
    times.dedup();
    assert_eq!(
        times.len(),
        claims.len(),
        "no two points of one disk share a time"
    );
    // The admin's routine prune keeps today's newest and the real points of the two days before.
    ok(&mut server.cmd(&admin, &["prune", "--keep-daily", "3"]));
    let left: Vec<String> = points_of(&server, &admin).iter().map(id).collect();
    for kept in &real_ids[1..] {
        assert!(
            left.contains(kept),
            "real point {kept} was pruned: {left:?}"
        );
    }
}

#[test]
fn a_vm_identity_belongs_to_its_vm_and_only_an_admin_adopts_it() {
    let work = tempfile::tempdir().expect("tempdir");
    let (real, evil) = (work.path().join("real.raw"), work.path().join("evil.raw"));
    gen_disk(&real, "4M", 1, 1, 0);
    gen_disk(&evil, "4M", 2, 2, 0);
    let store = TestStore::new("256K");
    let labels = ["--vm-uuid", UUID, "--pool", "pool-a"];
    let db = store.backup("db01", "2026-11-20T02:00:00Z", "xvda", &real, &labels);
    // On the store's machine: another name claiming the identity is refused...
    let o = run(store
        .cmd(&["backup", "--vm", "db02", "--time", "2026-11-21T02:00:00Z"])
        .args(labels)
        .arg(format!("xvda={}", evil.display())));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("claims the identity") && err.contains("--adopt"),
        "{err}"
    );
    let web = token(&store.path(), "web-host", "backup", "web*");
    let admin = token(&store.path(), "admin", "admin", "*");
    let server = Server::start(&store.path(), 0, &[]);
    // A web host's token: web-evil carrying db01's identity is refused, with --adopt too.
    for extra in [&[][..], &["--adopt"][..]] {
        let o = run(server
            .cmd(&web, &["backup", "--vm", "web-evil"])
            .args(labels)
            .args(extra)
            .arg(format!("xvda={}", evil.display())));
        assert!(
            !o.status.success(),
            "web-evil took db01's identity ({extra:?})"
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("403"), "{err}");
    }
    let vms: Vec<String> = points_of(&server, &admin)
        .iter()
        .map(|p| p["vm"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(!vms.iter().any(|v| v == "web-evil"), "{vms:?}");
    // `restore UUID/xvda@latest` still restores db01's disk.
    let out = work.path().join("out.raw");
    ok(server
        .cmd(&admin, &["restore", &format!("{UUID}/xvda@latest")])
        .arg(&out));
    assert_eq!(
        std::fs::read(&out).expect("out"),
        std::fs::read(&real).expect("real")
    );
    // An admin says the VM was renamed: the identity moves to the new name.
    let o = run(server
        .cmd(
            &admin,
            &["backup", "--json", "--vm", "db01-renamed", "--adopt"],
        )
        .args(labels)
        .arg(format!("xvda={}", real.display())));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // From then on the old name is the one refused.
    let o = run(server
        .cmd(&admin, &["backup", "--vm", "db01"])
        .args(labels)
        .arg(format!("xvda={}", real.display())));
    assert!(!o.status.success(), "the old name took the identity back");
    assert!(!id(&db).is_empty());
    // The same UUID in another pool is another VM: any token of it may back it up.
    let o = run(server
        .cmd(
            &admin,
            &[
                "backup",
                "--vm",
                "db03",
                "--vm-uuid",
                UUID,
                "--pool",
                "pool-b",
            ],
        )
        .arg(format!("xvda={}", evil.display())));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn the_minimum_retention_holds_against_every_token_and_is_set_only_on_the_store_machine() {
    let work = tempfile::tempdir().expect("tempdir");
    let disk = work.path().join("d.raw");
    gen_disk(&disk, "4M", 1, 1, 0);
    let store = TestStore::new("256K");
    let old = store.backup("web1", "2026-01-01T02:00:00Z", "xvda", &disk, &[]);
    let new = store.backup("web1", "2026-02-01T02:00:00Z", "xvda", &disk, &[]);
    ok(&mut store.cmd(&["policy", "min-retention", "14d"]));
    let shown = json(&ok(&mut store.cmd(&["policy", "min-retention", "--json"])));
    assert_eq!(shown["min_retention_days"], 14);
    // Locally: forget refused, prune keeps both (held), gc leaves them whole.
    let o = run(&mut store.cmd(&["forget", &id(&old)]));
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("minimum retention"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let pruned = json(&ok(&mut store.cmd(&[
        "prune",
        "--keep-last",
        "1",
        "--json",
    ])));
    assert_eq!(pruned["removed"], 0, "{pruned}");
    assert!(
        pruned["points"]
            .as_array()
            .expect("points")
            .iter()
            .any(|p| p["reason"] == "held"),
        "{pruned}"
    );
    // Through the server, with an admin token: the same.
    let admin = token(&store.path(), "admin", "admin", "*");
    let mut server = Server::start(&store.path(), 0, &[]);
    let (code, answer) = call(
        &server,
        "POST",
        &format!("/api/v1/points/{}/forget", id(&old)),
        &[bearer(&admin)],
        None,
    );
    assert_eq!(code, 403, "{answer}");
    ok(&mut server.cmd(&admin, &["prune", "--keep-last", "1"]));
    ok(&mut server.cmd(&admin, &["gc"]));
    let left: Vec<String> = points_of(&server, &admin).iter().map(id).collect();
    assert_eq!(left.len(), 2, "{left:?}");
    for p in [&old, &new] {
        let out = work.path().join(format!("{}.raw", id(p)));
        ok(server.cmd(&admin, &["restore", &id(p)]).arg(&out));
        assert_eq!(
            std::fs::read(&out).expect("out"),
            std::fs::read(&disk).expect("disk")
        );
    }
    // No request changes it: the command refuses a server, and the store's lock keeps a local
    // change out while the server runs.
    let o = run(server
        .cmd(&admin, &["policy", "min-retention", "0"])
        .env_remove("CAIRN_STORE")
        .args(["--store", &server.url]));
    assert!(!o.status.success());
    let o = run(&mut store.cmd(&["policy", "min-retention", "0"]));
    assert!(!o.status.success(), "changed beside a running server");
    assert!(server.stop(), "cairn serve did not stop cleanly on SIGTERM");
    let lock = std::fs::read_to_string(store.path().join("lock")).unwrap_or_default();
    assert!(
        lock.trim().is_empty(),
        "a server stopped with SIGTERM left its lock as a writer that did not finish: {lock}"
    );
    // Lifted on the store's machine, the points go.
    ok(&mut store.cmd(&["policy", "min-retention", "0"]));
    ok(&mut store.cmd(&["forget", &id(&old)]));
}

#[test]
fn a_protection_until_a_date_is_lifted_by_time_only() {
    let work = tempfile::tempdir().expect("tempdir");
    let disk = work.path().join("d.raw");
    gen_disk(&disk, "4M", 1, 1, 0);
    let store = TestStore::new("256K");
    let a = id(&store.backup("web1", "2026-01-01T02:00:00Z", "xvda", &disk, &[]));
    let b = id(&store.backup("web1", "2026-01-02T02:00:00Z", "xvda", &disk, &[]));
    let soon = utc(Utc::now() + Duration::seconds(4));
    ok(&mut store.cmd(&["protect", "--until", "2099-01-01", &a]));
    ok(&mut store.cmd(&["protect", "--until", &soon, &b]));
    // Unprotect leaves it; an earlier date is refused; forget and prune keep it.
    ok(&mut store.cmd(&["unprotect", &a]));
    let o = run(&mut store.cmd(&["protect", "--until", "2098-01-01", &a]));
    assert!(!o.status.success(), "a protection was shortened");
    let o = run(&mut store.cmd(&["forget", &a]));
    assert!(
        !o.status.success(),
        "a point protected until 2099 was forgotten"
    );
    // Through the server, an admin token can neither.
    let admin = token(&store.path(), "admin", "admin", "*");
    let mut server = Server::start(&store.path(), 0, &[]);
    let (code, answer) = call(
        &server,
        "POST",
        &format!("/api/v1/points/{a}/protect"),
        &[bearer(&admin), "Content-Type: application/json".into()],
        Some(br#"{"protected": false, "until": "2026-12-31T00:00:00Z"}"#),
    );
    assert_eq!(code, 400, "{answer}");
    let (code, answer) = call(
        &server,
        "POST",
        &format!("/api/v1/points/{a}/forget"),
        &[bearer(&admin)],
        None,
    );
    assert_eq!(code, 400, "{answer}");
    assert!(answer.contains("until"), "{answer}");
    assert!(server.stop());
    // Time lifts the short one: b goes (once its hold has passed), a stays.
    cairn_tests::wait_until("b's hold to pass", || {
        run(&mut store.cmd(&["forget", &b])).status.success()
    });
    let left: Vec<String> = store.list().iter().map(id).collect();
    assert_eq!(left, vec![a]);
}

/// A token whose lookups see only its own chunks learns nothing from a commit: naming a chunk
/// another VM holds is answered as naming one nobody holds, and the chunk never reads.
#[test]
fn a_commit_is_no_oracle_for_a_token_that_sees_only_its_own_chunks() {
    use cairn_store::chunk::{self, ChunkId, ChunkKind, ChunkRef};
    let work = tempfile::tempdir().expect("tempdir");
    let disk = work.path().join("d.raw");
    gen_disk(&disk, "4M", 5, 5, 0);
    let store = TestStore::new("256K");
    store.backup("db1", "2026-11-20T02:00:00Z", "xvda", &disk, &[]);
    let bytes = std::fs::read(&disk).expect("disk");
    // A chunk db1 holds (its first), and one nobody holds.
    let held = ChunkId::of(&bytes[..256 << 10]);
    let nobody = ChunkId::of(b"never stored anywhere");
    let own = json(&ok(cairn([
        "token",
        "create",
        "--json",
        "--name",
        "web-host",
        "--role",
        "backup",
        "--vm",
        "web*",
        "--lookups",
        "own",
        "--store",
    ])
    .arg(store.path())))["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let admin = token(&store.path(), "admin", "admin", "*");
    let server = Server::start(&store.path(), 0, &[]);
    // A point of a web VM, of other data, as the template of the crafted ones.
    let other = work.path().join("other.raw");
    gen_disk(&other, "4M", 6, 6, 0);
    let template = json(&ok(server
        .cmd(&admin, &["backup", "--json", "--vm", "web1"])
        .arg(format!("xvda={}", other.display()))))[0]
        .clone();
    let (_, root) = server.curl("GET", &format!("points/{}", id(&template)), &admin, None);
    let root = json(&String::from_utf8_lossy(&root));
    let mut answers = Vec::new();
    for (k, named) in [held, nobody].iter().enumerate() {
        let leaf = chunk::encode(
            &cairn_store::Keys::Clear,
            &cairn_store::tree::encode_leaf(&[ChunkRef::Data(*named)]),
            ChunkKind::Tree,
            1,
        )
        .expect("encode");
        let sid = server.open_session(&own, "web2");
        let mut body = Vec::new();
        cairn_store::pack::encode_frame(&leaf, &mut body);
        let (code, _) = server.curl("POST", &format!("sessions/{sid}/chunks"), &own, Some(&body));
        assert_eq!(code, 200);
        let mut point = root.clone();
        point["id"] = format!("{:032x}", 0xdead0 + k).into();
        point["vm"] = "web2".into();
        point["size"] = (256u64 << 10).into();
        point["depth"] = 0.into();
        point["segments"] = vec![leaf.id.to_hex()].into();
        let commit = serde_json::json!({ "points": [point] }).to_string();
        let (code, answer) = server.curl(
            "POST",
            &format!("sessions/{sid}/commit"),
            &own,
            Some(commit.as_bytes()),
        );
        let answer = String::from_utf8_lossy(&answer).replace(&named.to_hex(), "ID");
        answers.push((code, answer));
    }
    assert_eq!(answers[0].0, 409, "{:?}", answers[0]);
    assert_eq!(
        answers[0], answers[1],
        "the answers tell the two chunks apart"
    );
    // And the chunk another VM holds does not read for it, nor for any token limited to other
    // VMs; a token of db1's reads it.
    let web_reader = token(&store.path(), "web-reader", "restore", "web*");
    let db_reader = token(&store.path(), "db-reader", "restore", "db*");
    for (tok, reads) in [
        (&own, false),
        (&web_reader, false),
        (&db_reader, true),
        (&admin, true),
    ] {
        let (code, read) = server.curl("POST", "chunks/read", tok, Some(&held.0));
        assert_eq!(code, 200);
        assert_eq!(
            read.first() == Some(&0),
            reads,
            "{}",
            String::from_utf8_lossy(&read)
        );
    }
}
