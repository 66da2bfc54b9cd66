//! The promises of `cairn serve`, attacked as a ransomware-held host or a careless admin would:
//! a backup token dating points to make retention drop real ones, claiming another VM's
//! identity, a stolen admin token against the minimum retention, every role against every
//! endpoint, and a page of another site driving a logged-in browser.

use std::path::Path;
use std::process::Command;

use cairn_tests::serve::{Server, token};
use cairn_tests::{TestStore, cairn, gen_disk, id, json, ok, run};
use chrono::{DateTime, Duration, Utc};

const UUID: &str = "6f1c2a4e-0b1d-4c3e-9a8f-1d2e3f4a5b6c";

/// A request with full control of its headers: `(status, body)`.
fn call(
    server: &Server,
    method: &str,
    path: &str,
    headers: &[String],
    body: Option<&[u8]>,
) -> (u16, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let mut c = Command::new("curl");
    c.args(["-s", "-X", method, "--max-time", "60", "-o"])
        .arg(&out)
        .args(["-w", "%{http_code}", "--cacert"])
        .arg(&server.cert);
    for h in headers {
        c.args(["-H", h]);
    }
    if let Some(b) = body {
        let f = dir.path().join("body");
        std::fs::write(&f, b).expect("body");
        c.arg("--data-binary").arg(format!("@{}", f.display()));
    }
    c.arg(format!("{}{path}", server.url));
    let o = run(&mut c);
    let code = String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (
        code,
        String::from_utf8_lossy(&std::fs::read(&out).unwrap_or_default()).into_owned(),
    )
}

fn bearer(tok: &str) -> String {
    format!("Authorization: Bearer {tok}")
}

fn points_of(server: &Server, admin: &str) -> Vec<serde_json::Value> {
    let listed = json(&ok(&mut server.cmd(admin, &["list", "--json"])));
    listed.as_array().expect("list").clone()
}

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

/// One row of the role table: what, method, path, body, and the status expected for each
/// token.
type Row = (
    &'static str,
    &'static str,
    String,
    Option<Vec<u8>>,
    [u16; 5],
);

/// Every role, scoped and not, against every endpoint: the whole table compared at once.
#[test]
fn every_role_against_every_endpoint() {
    let work = tempfile::tempdir().expect("tempdir");
    let disk = work.path().join("d.raw");
    gen_disk(&disk, "4M", 1, 1, 0);
    let store = TestStore::new("256K");
    let web = id(&store.backup("web1", "2026-11-20T02:00:00Z", "xvda", &disk, &[]));
    let db = id(&store.backup("db1", "2026-11-20T02:00:00Z", "xvda", &disk, &[]));
    // A scoped admin token is refused when made.
    let o = run(cairn([
        "token", "create", "--name", "half", "--role", "admin", "--vm", "web*", "--store",
    ])
    .arg(store.path()));
    assert!(!o.status.success(), "a scoped admin token was made");
    let names = [
        "backup*",
        "backup web*",
        "restore web*",
        "restore*",
        "admin",
    ];
    let tokens = [
        token(&store.path(), "b-all", "backup", "*"),
        token(&store.path(), "b-web", "backup", "web*"),
        token(&store.path(), "r-web", "restore", "web*"),
        token(&store.path(), "r-all", "restore", "*"),
        token(&store.path(), "admin", "admin", "*"),
    ];
    let server = Server::start(&store.path(), 0, &[]);
    let json_body = |b: &str| Some(b.as_bytes().to_vec());
    let zero_id = Some(vec![0u8; 32]);
    // (what, method, path, body, expected status per token in the order of `names`)
    let table: Vec<Row> = vec![
        (
            "store",
            "GET",
            "/api/v1/store".to_string(),
            None,
            [200, 200, 200, 200, 200],
        ),
        (
            "list",
            "GET",
            "/api/v1/points".to_string(),
            None,
            [200, 200, 200, 200, 200],
        ),
        (
            "own point",
            "GET",
            format!("/api/v1/points/{web}"),
            None,
            [200, 200, 200, 200, 200],
        ),
        (
            "other VM's point",
            "GET",
            format!("/api/v1/points/{db}"),
            None,
            [200, 404, 404, 200, 200],
        ),
        (
            "forget (dry run)",
            "POST",
            format!("/api/v1/points/{web}/forget?dry_run=true"),
            None,
            [403, 403, 403, 403, 200],
        ),
        (
            "unprotect",
            "POST",
            format!("/api/v1/points/{db}/protect"),
            json_body(r#"{"protected": false}"#),
            [403, 403, 403, 403, 200],
        ),
        (
            "read a chunk",
            "POST",
            "/api/v1/chunks/read".to_string(),
            zero_id,
            [200, 200, 200, 200, 200],
        ),
        (
            "session, own VM",
            "POST",
            "/api/v1/sessions".to_string(),
            json_body(r#"{"vm": "web1", "disks": ["xvda"]}"#),
            [201, 201, 403, 403, 201],
        ),
        (
            "session, other VM",
            "POST",
            "/api/v1/sessions".to_string(),
            json_body(r#"{"vm": "db1", "disks": ["xvda"]}"#),
            [201, 403, 403, 403, 201],
        ),
        (
            "session adopting",
            "POST",
            "/api/v1/sessions".to_string(),
            json_body(r#"{"vm": "web1", "disks": ["xvda"], "adopt": true}"#),
            [403, 403, 403, 403, 201],
        ),
        (
            "no such session",
            "DELETE",
            "/api/v1/sessions/00".to_string(),
            None,
            [404, 404, 403, 403, 404],
        ),
        (
            "set a policy",
            "PUT",
            "/api/v1/policies/web1".to_string(),
            json_body(r#"{"key_interval": 3}"#),
            [403, 403, 403, 403, 200],
        ),
        (
            "read policies",
            "GET",
            "/api/v1/policies".to_string(),
            None,
            [403, 403, 403, 403, 200],
        ),
        (
            "forgotten ids",
            "GET",
            "/api/v1/forgotten".to_string(),
            None,
            [200, 200, 200, 200, 200],
        ),
        (
            "prune (dry run)",
            "POST",
            "/api/v1/prune".to_string(),
            json_body(r#"{"rules": {"last": 1}, "dry_run": true}"#),
            [403, 403, 403, 403, 200],
        ),
        (
            "gc (dry run)",
            "POST",
            "/api/v1/gc".to_string(),
            json_body(r#"{"dry_run": true}"#),
            [403, 403, 403, 403, 200],
        ),
        (
            "report",
            "GET",
            "/api/v1/report".to_string(),
            None,
            [403, 403, 200, 200, 200],
        ),
        (
            "report page",
            "GET",
            "/".to_string(),
            None,
            [403, 403, 200, 200, 200],
        ),
        (
            "other VM's page",
            "GET",
            "/vm/db1".to_string(),
            None,
            [403, 403, 404, 200, 200],
        ),
    ];
    let mut want = String::new();
    let mut got = String::new();
    for (what, method, path, body, expected) in &table {
        for (i, tok) in tokens.iter().enumerate() {
            let mut headers = vec![bearer(tok)];
            if body.is_some() {
                headers.push(if path.ends_with("chunks/read") {
                    "Content-Type: application/octet-stream".into()
                } else {
                    "Content-Type: application/json".into()
                });
            }
            let (code, answer) = call(&server, method, path, &headers, body.as_deref());
            if code == 201 {
                // A session opened: closed again, so the next row finds the disk free.
                let sid = json(&answer)["session"]
                    .as_str()
                    .expect("session")
                    .to_owned();
                let (c, _) = call(
                    &server,
                    "DELETE",
                    &format!("/api/v1/sessions/{sid}"),
                    &[bearer(tok)],
                    None,
                );
                assert_eq!(c, 204);
            }
            want.push_str(&format!("{what:<20} {:<14} {}\n", names[i], expected[i]));
            got.push_str(&format!("{what:<20} {:<14} {code}\n", names[i]));
        }
    }
    assert_eq!(got, want, "observed (left) against expected (right)");
    // What a scoped token lists is its VMs' only.
    let (_, listed) = call(
        &server,
        "GET",
        "/api/v1/points",
        &[bearer(&tokens[1])],
        None,
    );
    let listed = json(&listed);
    assert_eq!(listed.as_array().expect("list").len(), 1, "{listed}");
    // The report a restore token reads is its VMs' rows, without the store-wide figures: what
    // its page shows, no more.
    let (_, report) = call(
        &server,
        "GET",
        "/api/v1/report",
        &[bearer(&tokens[2])],
        None,
    );
    let report = json(&report);
    let vms: Vec<&str> = report["vms"]
        .as_array()
        .expect("vms")
        .iter()
        .filter_map(|v| v["vm"].as_str())
        .collect();
    assert_eq!(vms, ["web1"], "{report}");
    for field in ["store", "reclaimable_bytes", "garbage_bytes", "filesystem"] {
        assert!(report[field].is_null(), "{field} shown: {report}");
    }
    // A name too long for a folder is refused as a bad request, and no answer shows where
    // the store lives.
    let long = format!(r#"{{"vm": "{}", "disks": ["xvda"]}}"#, "é".repeat(128));
    let (code, answer) = call(
        &server,
        "POST",
        "/api/v1/sessions",
        &[bearer(&tokens[0]), "Content-Type: application/json".into()],
        Some(long.as_bytes()),
    );
    assert_eq!(code, 400, "{answer}");
    assert!(
        !answer.contains(&*store.path().to_string_lossy()),
        "{answer}"
    );
    // Nothing was changed by the refusals: both points are there.
    assert_eq!(points_of(&server, &tokens[4]).len(), 2);
}

/// The text of a log, its terminal colour codes taken out.
fn without_colours(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for e in chars.by_ref() {
                if e.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn chromium() -> Command {
    let exe = Path::new("/usr/bin/chromium");
    assert!(
        exe.exists(),
        "/usr/bin/chromium is missing: scripts/setup.sh installs Debian's chromium package"
    );
    let mut c = Command::new(exe);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-popup-blocking",
        "--ignore-certificate-errors",
        "--virtual-time-budget=8000",
    ]);
    c
}

/// An admin logged in to the report page in a browser opens a page of another site, which
/// posts to the API: the browser's cached credentials never reach the API.
#[test]
fn a_page_of_another_site_cannot_make_a_logged_in_browser_change_the_store() {
    let work = tempfile::tempdir().expect("tempdir");
    let disk = work.path().join("d.raw");
    gen_disk(&disk, "4M", 1, 1, 0);
    let store = TestStore::new("256K");
    let p = id(&store.backup("web1", "2026-11-20T02:00:00Z", "xvda", &disk, &[]));
    let admin = token(&store.path(), "admin", "admin", "*");
    let server = Server::start(&store.path(), 0, &[]);
    let api = format!("{}/api/v1", server.url);
    let host = server.url.trim_start_matches("https://");
    // The page: logs the admin in to the report page (a window of its own, the token as the
    // password, as the page asks), then posts to the API every way a page can: forms that
    // navigate that window and a new one (first-party requests, which carry the browser's
    // cached credentials), and a fetch.
    let page = work.path().join("attack.html");
    std::fs::write(
        &page,
        format!(
            r#"<!doctype html><html><body>
<form id="f" method="POST" action="{api}/points/{p}/forget" enctype="text/plain" target="login">
<input name="x" value="y"></form>
<form id="g" method="POST" action="{api}/prune" enctype="text/plain" target="_blank">
<input name='{{"rules": {{"last": 1}}, "x": "' value='"}}'></form>
<script>
window.open("https://cairn:{admin}@{host}/", "login");
setTimeout(() => {{
  fetch("{api}/points/{p}/forget", {{method: "POST", credentials: "include", mode: "no-cors",
    headers: {{"Content-Type": "text/plain"}}, body: "x"}});
  document.getElementById("f").submit();
  document.getElementById("g").submit();
}}, 2000);
setTimeout(() => {{ document.title = "done"; }}, 6000);
</script></body></html>"#
        ),
    )
    .expect("page");
    let profile = work.path().join("profile");
    let o = run(chromium()
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display())));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("<title>done</title>"),
        "the page did not run to its end: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The browser logged in (the page answered it) and its posts reached the server.
    let log = without_colours(&std::fs::read_to_string(&server.log).expect("log"));
    let requests: Vec<&str> = log.lines().filter(|l| l.contains("request")).collect();
    assert!(
        requests
            .iter()
            .any(|l| l.contains("path=/ ") && l.contains("status=200")),
        "the browser never logged in to the page: {log}"
    );
    let forget_path = format!("/api/v1/points/{p}/forget");
    let posts: Vec<&&str> = requests
        .iter()
        .filter(|l| l.contains(&forget_path) || l.contains("/api/v1/prune"))
        .collect();
    assert!(
        !posts.is_empty(),
        "the page's posts never reached the server: {log}"
    );
    for l in &posts {
        assert!(
            !l.contains("status=200"),
            "a page of another site changed the store: {l}"
        );
    }
    assert_eq!(points_of(&server, &admin).len(), 1, "the point is gone");
    // The API's own client still works, and a foreign Origin or a text body is refused even
    // with the token.
    let forget = format!("/api/v1/points/{p}/forget?dry_run=true");
    let (code, answer) = call(
        &server,
        "POST",
        &forget,
        &[bearer(&admin), "Origin: https://evil.example".into()],
        None,
    );
    assert_eq!(code, 403, "{answer}");
    let (code, answer) = call(
        &server,
        "POST",
        "/api/v1/prune",
        &[bearer(&admin), "Content-Type: text/plain".into()],
        Some(br#"{"rules": {"last": 1}}"#),
    );
    assert_eq!(code, 415, "{answer}");
    let (code, answer) = call(
        &server,
        "POST",
        &forget,
        &[bearer(&admin), format!("Origin: {}", server.url)],
        None,
    );
    assert_eq!(code, 200, "{answer}");
    // Basic credentials are for the page only.
    let basic = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("cairn:{admin}"))
    };
    let (code, answer) = call(
        &server,
        "GET",
        "/api/v1/points",
        &[format!("Authorization: Basic {basic}")],
        None,
    );
    assert_eq!(code, 401, "{answer}");
    let (code, _) = call(
        &server,
        "GET",
        "/",
        &[format!("Authorization: Basic {basic}")],
        None,
    );
    assert_eq!(code, 200);
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
            &cairn_store::tree::encode_leaf(&[ChunkRef::Data(*named)]),
            ChunkKind::Tree,
            1,
        );
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

/// One token cannot hold every session slot, one address every connection.
#[test]
fn one_token_or_one_address_cannot_take_every_slot() {
    let store = TestStore::new("256K");
    let greedy = token(&store.path(), "greedy", "backup", "*");
    let other = token(&store.path(), "other", "backup", "*");
    let server = Server::start(&store.path(), 0, &[]);
    for i in 0..8 {
        let _ = server.open_session(&greedy, &format!("vm{i}"));
    }
    let (code, answer) = server.curl(
        "POST",
        "sessions",
        &greedy,
        Some(br#"{"vm": "vm8", "disks": ["xvda"]}"#),
    );
    assert_eq!(code, 429, "{}", String::from_utf8_lossy(&answer));
    let _ = server.open_session(&other, "vm9");
    // 32 idle connections from one address (no TLS handshake: each is held up to 10 s): the
    // next one from it is dropped at once; once they go, requests are served again.
    let addr = server.url.trim_start_matches("https://").to_owned();
    let idle: Vec<std::net::TcpStream> = (0..32)
        .map(|_| std::net::TcpStream::connect(&addr).expect("connect"))
        .collect();
    // (Until the server has accepted all 32, one more may still be served: asked until not.)
    cairn_tests::wait_until("a 33rd connection from one address to be dropped", || {
        server.curl("GET", "store", &other, None).0 == 0
    });
    drop(idle);
    cairn_tests::wait_until("requests to be served again", || {
        server.curl("GET", "store", &other, None).0 == 200
    });
}

/// A connection that sends nothing (after a request, or from the start of its TLS session) is
/// closed after 30 s: idle clients do not hold the server's connection slots.
#[test]
fn an_idle_connection_is_closed_after_thirty_seconds() {
    use std::io::Write;
    let store = TestStore::new("256K");
    let admin = token(&store.path(), "admin", "admin", "*");
    let server = Server::start(&store.path(), 0, &[]);
    let addr = server.url.trim_start_matches("https://").to_owned();
    let started = std::time::Instant::now();
    let mut client = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &addr])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_client");
    let mut stdin = client.stdin.take().expect("stdin");
    write!(
        stdin,
        "GET /api/v1/store HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {admin}\r\n\r\n"
    )
    .expect("request");
    // stdin stays open: only the server can end the connection.
    let mut ended = false;
    while started.elapsed() < std::time::Duration::from_secs(90) {
        if client.try_wait().expect("s_client").is_some() {
            ended = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = client.kill();
    let out = client.wait_with_output().expect("s_client");
    drop(stdin);
    assert!(ended, "an idle keep-alive connection was kept for 90 s");
    assert!(
        started.elapsed().as_secs() >= 25,
        "closed before its idle time"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("200 OK"),
        "the request before it was not answered"
    );
}

/// A request body that sends no byte for 30 s fails, and one token's requests in flight are
/// bounded: 16 requests trickling their bodies hold every slot of their token (a 17th is
/// answered 429, another token is served), and each ends at its stall, giving its slot back.
#[test]
fn stalled_bodies_end_and_one_token_holds_at_most_sixteen_requests() {
    use std::io::Write;
    let store = TestStore::new("256K");
    let admin = token(&store.path(), "admin", "admin", "*");
    let other = token(&store.path(), "other", "restore", "*");
    let server = Server::start(&store.path(), 0, &[]);
    let addr = server.url.trim_start_matches("https://").to_owned();
    let started = std::time::Instant::now();
    let stalled: Vec<(std::process::Child, std::process::ChildStdin)> = (0..16)
        .map(|_| {
            let mut c = Command::new("openssl")
                .args(["s_client", "-quiet", "-connect", &addr])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("openssl s_client");
            let mut stdin = c.stdin.take().expect("stdin");
            write!(
                stdin,
                "POST /api/v1/gc HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {admin}\r\n\
                 Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"dry"
            )
            .expect("request");
            (c, stdin)
        })
        .collect();
    // Once the server holds all 16 (each sent its headers), the token's next request is refused.
    cairn_tests::wait_until("the token's 17th request to be refused", || {
        server.curl("GET", "store", &admin, None).0 == 429
    });
    let (code, _) = server.curl("GET", "store", &other, None);
    assert_eq!(code, 200, "another token was held back");
    // Each stalled body fails by itself (the clients keep their side open).
    for (mut c, stdin) in stalled {
        while c.try_wait().expect("s_client").is_none() {
            assert!(
                started.elapsed().as_secs() < 90,
                "a stalled body held its request for 90 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        drop(stdin);
        let out = c.wait_with_output().expect("s_client");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(!said.contains("200 OK"), "a stalled body was taken: {said}");
    }
    assert!(started.elapsed().as_secs() >= 25, "ended before the stall");
    let (code, _) = server.curl("GET", "store", &admin, None);
    assert_eq!(code, 200, "the token's slots were not given back");
}
