//! Who may call what on `cairn serve`: every role against every endpoint, and a page of
//! another site driving a logged-in browser (headless Chromium).

use std::path::Path;
use std::process::Command;

use cairn_tests::serve::{Server, bearer, call, points_of, token};
use cairn_tests::{TestStore, cairn, gen_disk, id, json, run};

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
