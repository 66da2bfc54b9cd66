//! Replication through `cairn serve`: a store into a server with an append-only token, a server
//! into a folder and into another server.

use cairn_tests::serve::{Server, token};
use cairn_tests::{TestStore, gen_disk, id, json, num, ok, read, run};

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
