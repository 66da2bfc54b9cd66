//! The report page: rendered by headless Chromium (Debian's `chromium`, installed by
//! scripts/setup.sh), every figure on it compared with `cairn report --json`, nothing fetched
//! from outside, screenshots at 1280 px and 390 px kept for review; served live by `cairn
//! serve` at `/` to tokens that may read.

use std::path::Path;
use std::process::Command;

use cairn_tests::serve::{Server, token};
use cairn_tests::{TestStore, gen_disk, id, json, ok, repo_root, run};
use serde_json::Value;

const CHROMIUM: &str = "/usr/bin/chromium";

fn chromium() -> Command {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium package"
    );
    let mut c = Command::new(CHROMIUM);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-background-networking",
    ]);
    c
}

/// The DOM of `page` once its scripts ran.
fn dom(page: &Path) -> String {
    ok(chromium()
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display())))
}

/// A screenshot of `page` at `width` px, kept for review.
fn screenshot(page: &Path, width: u32, out: &Path) {
    let o = run(chromium()
        .arg(format!("--screenshot={}", out.display()))
        .arg(format!("--window-size={width},2400"))
        .arg(format!("file://{}", page.display())));
    assert!(
        out.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The value at `path` in `doc`: `a.b`, `a[3].b`, `.length` of an array.
fn at<'d>(doc: &'d Value, path: &str) -> Option<Value> {
    let mut v: &'d Value = doc;
    for part in path.split('.') {
        if part == "length" {
            return v.as_array().map(|a| Value::from(a.len()));
        }
        let (name, index) = match part.split_once('[') {
            Some((n, i)) => (n, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        v = v.get(name)?;
        if let Some(i) = index {
            v = v.get(i)?;
        }
    }
    Some(v.clone())
}

/// Every figure of the page: (path, exact value, text shown).
fn figures(dom: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut rest = dom;
    while let Some(i) = rest.find("data-path=\"") {
        rest = &rest[i + 11..];
        let path = &rest[..rest.find('"').expect("path ends")];
        let v = rest.find("data-value=\"").expect("value") + 12;
        let value = &rest[v..v + rest[v..].find('"').expect("value ends")];
        let t = rest.find('>').expect("tag ends") + 1;
        let text = &rest[t..t + rest[t..].find('<').expect("text ends")];
        out.push((path.to_owned(), value.to_owned(), text.to_owned()));
    }
    out
}

/// What the text says, in the unit of the value (bytes, a ratio, a count).
fn read_back(text: &str) -> f64 {
    let t = text.trim().trim_end_matches('×');
    let (n, unit) = t.split_once(' ').unwrap_or((t, ""));
    let n: f64 = n.parse().unwrap_or_else(|_| panic!("a number: {text:?}"));
    let scale = match unit {
        "" | "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "TiB" => 1024.0_f64.powi(4),
        other => panic!("unit {other:?} in {text:?}"),
    };
    n * scale
}

/// Checks every figure of `dom` against `doc`; returns the paths seen.
fn check_figures(dom: &str, doc: &Value) -> Vec<String> {
    let figs = figures(dom);
    for (path, value, text) in &figs {
        let want = at(doc, path).unwrap_or_else(|| panic!("{path} is not in the document"));
        let got: Value = serde_json::from_str(value).expect("a JSON value");
        match (&want, &got) {
            (Value::Number(a), Value::Number(b)) => {
                let (a, b) = (a.as_f64().expect("f64"), b.as_f64().expect("f64"));
                assert!(
                    (a - b).abs() <= 1e-9 * a.abs().max(1.0),
                    "{path}: {a} on the page {b}"
                );
                // The text people read says the same, rounded.
                let shown = read_back(text);
                assert!(
                    (shown - a).abs() <= a.abs() * 0.006 + 0.006,
                    "{path}: {a} shown as {text:?}"
                );
            }
            _ => assert_eq!(want, got, "{path}"),
        }
    }
    figs.into_iter().map(|(p, _, _)| p).collect()
}

fn sample_store(w: &Path) -> (TestStore, Vec<String>) {
    let store = TestStore::new("256K");
    let mut ids = Vec::new();
    for (v, vm) in ["web1", "db1", "mail"].iter().enumerate() {
        for d in 0..4u32 {
            let raw = w.join(format!("{vm}-{d}.raw"));
            gen_disk(&raw, "32M", 3 + v as u32, 1, d);
            ids.push(id(&store.backup(
                vm,
                &format!("2026-11-2{d}T02:00:00Z"),
                "xvda",
                &raw,
                &[],
            )));
            std::fs::remove_file(&raw).expect("rm");
        }
    }
    ok(&mut store.cmd(&["protect", &ids[0]]));
    ok(&mut store.cmd(&["prune", "--keep-last", "2", "--keep-daily", "1"]));
    ok(&mut store.cmd(&["verify"]));
    (store, ids)
}

#[test]
fn the_page_shows_the_numbers_of_the_json_and_needs_nothing_outside() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let (store, _) = sample_store(w);
    // One run: the page and the JSON it is drawn from.
    let page = w.join("report.html");
    let doc = json(&ok(store.cmd(&["report", "--json", "--html"]).arg(&page)));
    let html = std::fs::read_to_string(&page).expect("page");
    // Self-contained: nothing to fetch.
    for outside in ["http://", "https://", " src=", "<link", "@import", "url("] {
        assert!(
            !html.contains(outside),
            "the page refers outside: {outside}"
        );
    }
    let dom = dom(&page);
    let paths = check_figures(&dom, &doc);
    // The questions it answers are all there.
    for want in [
        "store.stored_bytes",
        "store.dedup_ratio",
        "store.compression_ratio",
        "store.full_backups_bytes",
        "store.xo_vhd_deltas_bytes",
        "growth.bytes_per_day",
        "filesystem.free_bytes",
        "last_verify.chunks_checked",
    ] {
        assert!(paths.iter().any(|p| p == want), "{want} is not on the page");
    }
    let vms = doc["vms"].as_array().expect("vms").len();
    let points = doc["points"].as_array().expect("points").len();
    for i in 0..vms {
        assert!(paths.contains(&format!("vms[{i}].unique_stored_bytes")));
    }
    for k in 0..points {
        assert!(
            paths.contains(&format!("points[{k}].new_stored_bytes")),
            "point {k}"
        );
        assert!(paths.contains(&format!("points[{k}].unique_stored_bytes")));
    }
    // The retention rule keeping each point, and its flags, are shown.
    assert!(dom.contains("keep-last") && dom.contains("protected"));
    assert!(dom.contains("clean"), "the last verify");
    // Screenshots for the review (not compared pixel by pixel).
    let shots = repo_root().join("target/report-screenshots");
    std::fs::create_dir_all(&shots).expect("mkdir");
    for width in [1280, 390] {
        screenshot(&page, width, &shots.join(format!("report-{width}.png")));
    }
}

/// A GET of `path` as a browser sends it, with `user:password` when given.
fn curl(server: &Server, path: &str, user: Option<&str>) -> (u16, String, String) {
    let headers: Vec<String> = user.map(cairn_tests::serve::basic).into_iter().collect();
    let (code, head, body) = cairn_tests::serve::page(server, path, &headers);
    (code, head, String::from_utf8_lossy(&body).into_owned())
}

/// Whether `text` holds `word` with no letter, digit or `_` on either side of it.
fn names(text: &str, word: &str) -> bool {
    let inner = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    text.match_indices(word).any(|(at, _)| {
        !inner(text[..at].chars().next_back()) && !inner(text[at + word.len()..].chars().next())
    })
}

#[test]
fn cairn_serve_shows_the_page_live_to_tokens_that_may_read() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let (store, _) = sample_store(w);
    let doc = json(&ok(&mut store.cmd(&["report", "--json"])));
    let admin = token(&store.path(), "ops", "admin", "*");
    let web = token(&store.path(), "web-team", "restore", "web*");
    let host = token(&store.path(), "host", "backup", "*");
    let server = Server::start(&store.path(), 0, &[]);

    // No token: the browser is asked for one.
    let (code, head, _) = curl(&server, "/", None);
    assert_eq!(code, 401);
    assert!(
        head.to_lowercase().contains("www-authenticate: basic"),
        "{head}"
    );
    // A backup token may not read.
    assert_eq!(curl(&server, "/", Some(&format!("x:{host}"))).0, 403);
    // An admin token: the whole store, the same figures as the JSON.
    let (code, head, html) = curl(&server, "/", Some(&format!("ops:{admin}")));
    assert_eq!(code, 200, "{html}");
    assert!(
        head.to_lowercase()
            .contains("content-security-policy: default-src 'none'")
    );
    let page = w.join("live.html");
    std::fs::write(&page, &html).expect("write");
    // What may change between the two reads (free space, what gc would free) aside.
    let figs: Vec<(String, String, String)> = figures(&dom(&page))
        .into_iter()
        .filter(|(p, _, _)| {
            !p.starts_with("filesystem")
                && p != "garbage_bytes"
                && !p.starts_with("growth.days_until")
        })
        .collect();
    assert!(figs.len() > 50, "{} figures", figs.len());
    for (path, value, _) in &figs {
        let want = at(&doc, path).unwrap_or_else(|| panic!("{path}"));
        let got: Value = serde_json::from_str(value).expect("json");
        assert_eq!(want.as_f64(), got.as_f64(), "{path}");
    }
    // A restore token for web*: its VM only, no store-wide figure.
    let (code, _, html) = curl(&server, "/", Some(&format!("x:{web}")));
    assert_eq!(code, 200, "{html}");
    // Names as whole words: a point's or a chunk's hex id may hold "db1" within it.
    assert!(names(&html, "web1") && !names(&html, "db1") && !names(&html, "mail"));
    assert!(!html.contains("data-path=\"store."));
    // One VM's page lists every point; another token's VM is not found.
    let (code, _, html) = curl(&server, "/vm/web1", Some(&format!("x:{web}")));
    assert_eq!(code, 200);
    let web_points = doc["points"]
        .as_array()
        .expect("points")
        .iter()
        .filter(|p| p["vm"] == "web1")
        .count();
    assert_eq!(
        html.matches("new_stored_bytes").count(),
        web_points,
        "every point of web1"
    );
    assert_eq!(curl(&server, "/vm/db1", Some(&format!("x:{web}"))).0, 404);
}
