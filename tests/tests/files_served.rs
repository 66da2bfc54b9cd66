//! Files inside points through `cairn serve`: the API's listings and contents and the browse
//! pages the report links each point to, for a restore token of the point's VM only; what a
//! hostile path or another VM's token gets; an encrypted store's server, which holds no key.

use cairn_tests::images::one_linux_partition;
use cairn_tests::serve::{Server, bearer, call, page, token};
use cairn_tests::{TestStore, id, json, ok, read};

/// A browser's `Authorization` for `tok` (the token as the password).
fn basic(tok: &str) -> String {
    cairn_tests::serve::basic(&format!("me:{tok}"))
}

/// Every `href="..."` of a page.
fn links(html: &str) -> Vec<String> {
    html.split("href=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_restore_token_lists_reads_and_browses_its_vms_files_and_no_others() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let (_, raw) = one_linux_partition(w);
    let root = w.join("root");
    let store = TestStore::new("256K");
    let web = id(&store.backup("web01", "2026-11-01T02:00:00Z", "xvda", &raw, &[]));
    let db = id(&store.backup("db01", "2026-11-01T02:00:00Z", "xvda", &raw, &[]));
    let reader = token(&store.path(), "reader", "restore", "web*");
    let host = token(&store.path(), "host", "backup", "*");
    let server = Server::start(&store.path(), 0, &[]);
    let api = |path: &str, tok: &str| page(&server, &format!("/api/v1/{path}"), &[bearer(tok)]);

    // The partition table and a folder: what `cairn ls --json` prints from the store folder.
    let (code, _, body) = api(&format!("points/{web}/files"), &reader);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let table = json(&String::from_utf8_lossy(&body));
    assert_eq!(table["partitions"][0]["filesystem"], "ext4", "{table}");
    assert_eq!(table, json(&ok(&mut store.cmd(&["ls", "--json", &web]))));
    let (code, _, body) = api(&format!("points/{web}/files?path=p1/etc"), &reader);
    assert_eq!(code, 200);
    assert_eq!(
        json(&String::from_utf8_lossy(&body))["entries"],
        json(&ok(&mut store.cmd(&[
            "ls",
            "--json",
            &format!("{web}:p1/etc")
        ])))
    );
    // Contents, byte for byte: a 3 MB file, a 24 MiB sparse one, a Unicode name.
    for (inner, on_disk) in [
        ("big.bin", "big.bin"),
        ("sparse.bin", "sparse.bin"),
        ("%C3%BCn%C3%AFcode%20n%C3%A4me.txt", "ünïcode näme.txt"),
    ] {
        let (code, head, body) = api(&format!("points/{web}/content?path=p1/{inner}"), &reader);
        assert_eq!(code, 200, "{inner}: {}", String::from_utf8_lossy(&body));
        assert!(body == read(&root.join(on_disk)), "{inner}");
        assert!(
            head.to_lowercase()
                .contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
    }

    // Who may not: another VM's point is not there for this token; a backup token may not
    // read files; no token at all.
    let (code, _, body) = api(&format!("points/{db}/files?path=p1/etc"), &reader);
    assert_eq!(code, 404, "{}", String::from_utf8_lossy(&body));
    assert!(!String::from_utf8_lossy(&body).contains("hostname"));
    assert_eq!(
        api(
            &format!("points/{db}/content?path=p1/etc/hostname"),
            &reader
        )
        .0,
        404
    );
    assert_eq!(api(&format!("points/{web}/files"), &host).0, 403);
    assert_eq!(
        page(&server, &format!("/api/v1/points/{web}/files"), &[]).0,
        401
    );
    // Paths that climb: resolved inside the image (its root's parent is its root), never on
    // the server's own file system.
    let host_name = std::fs::read("/etc/hostname").unwrap_or_default();
    for climb in [
        "p1/../../../../etc/hostname",
        "p1/%2E%2E/%2E%2E/etc/hostname",
        "../../etc/hostname",
        "/etc/hostname",
    ] {
        let (code, _, body) = api(&format!("points/{web}/content?path={climb}"), &reader);
        assert!(
            (code == 200 && body == b"web01\n") || (400..500).contains(&code),
            "{climb}: {code} {}",
            String::from_utf8_lossy(&body)
        );
        assert!(host_name.is_empty() || body != host_name, "{climb}");
    }
    let (code, _, _) = api(&format!("points/{web}/content?path=p1/etc"), &reader);
    assert_eq!(code, 400, "a folder is not content");
    let (code, _, body) = api(&format!("points/{web}/files?path=p9/etc"), &reader);
    assert_eq!(code, 404);
    assert!(String::from_utf8_lossy(&body).contains("p9"));

    // The report page links each point to its browse page; the pages link folders to their
    // pages and files to their downloads, every link one the server answers.
    let (code, _, report) = page(&server, "/", &[basic(&reader)]);
    assert_eq!(code, 200);
    let report = String::from_utf8_lossy(&report);
    let to_web = format!("/point/{web}/files/");
    assert!(
        links(&report).contains(&to_web),
        "no browse link in the report"
    );
    assert!(
        !report.contains(&format!("/point/{db}/")),
        "another VM's point"
    );
    let (code, head, body) = page(&server, &to_web, &[basic(&reader)]);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert!(
        head.to_lowercase()
            .contains("content-security-policy: default-src 'none'")
    );
    let top = String::from_utf8_lossy(&body).into_owned();
    let p1 = format!("/point/{web}/files/p1/");
    assert!(links(&top).contains(&p1), "{top}");
    let (code, _, body) = page(&server, &p1, &[basic(&reader)]);
    assert_eq!(code, 200);
    let folder = String::from_utf8_lossy(&body).into_owned();
    assert!(folder.contains("ünïcode näme.txt") && folder.contains("日本語.txt"));
    let download = links(&folder)
        .into_iter()
        .find(|l| l.contains("/download/") && l.ends_with("n%C3%A4me.txt"))
        .unwrap_or_else(|| panic!("no download link: {folder}"));
    let (code, head, body) = page(&server, &download, &[basic(&reader)]);
    assert_eq!(code, 200);
    assert_eq!(body, "héllo wörld\n".as_bytes());
    assert!(
        head.contains("attachment;") && head.contains("filename*=UTF-8''%C3%BCn%C3%AFcode"),
        "{head}"
    );
    // Every folder link of the page answers; the 10 000-file folder lists every entry.
    for l in links(&folder).iter().filter(|l| l.contains("/files/")) {
        assert_eq!(page(&server, l, &[basic(&reader)]).0, 200, "{l}");
    }
    let (code, _, body) = page(&server, &format!("{p1}many/"), &[basic(&reader)]);
    assert_eq!(code, 200);
    let many = String::from_utf8_lossy(&body);
    assert_eq!(
        links(&many)
            .iter()
            .filter(|l| l.contains("/download/p1/many/f"))
            .count(),
        10_000
    );
    // A name from the image is text on the page, never markup.
    assert!(!folder.contains("<script"), "no script in a browse page");
    assert!(
        !folder.contains("<img src=x") && folder.contains("&lt;img src=x onerror=alert(1)&gt;.txt"),
        "a name that is markup, escaped"
    );
    assert_eq!(
        page(&server, &format!("/point/{db}/files/"), &[basic(&reader)]).0,
        404
    );
}

#[test]
fn an_encrypted_stores_server_refuses_files_and_links_none() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let (_, raw) = one_linux_partition(w);
    let store = TestStore::encrypted("256K");
    let p = id(&store.backup("vm", "2026-11-01T02:00:00Z", "xvda", &raw, &[]));
    let admin = token(&store.path(), "ops", "admin", "*");
    let server = Server::start(&store.path(), 0, &[]);
    let (code, answer) = call(
        &server,
        "GET",
        &format!("/api/v1/points/{p}/files?path=p1/etc"),
        &[bearer(&admin)],
        None,
    );
    assert_eq!(code, 409, "{answer}");
    assert!(
        answer.contains("encrypted") && answer.contains("no key"),
        "{answer}"
    );
    let (code, _, report) = page(&server, "/", &[basic(&admin)]);
    assert_eq!(code, 200);
    assert!(!String::from_utf8_lossy(&report).contains("/point/"));
    // A machine with the key reads the files through the same server.
    let got = ok(server
        .cmd(&admin, &["cat", &format!("{p}:p1/etc/hostname")])
        .env("CAIRN_KEY_FILE", store.key_file())
        .env("CAIRN_PASSPHRASE", cairn_tests::store::PASSPHRASE));
    assert_eq!(got, "web01\n");
}
