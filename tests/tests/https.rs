//! HTTP(S) sources against a local HTTPS server the test starts (127.0.0.1, ports the kernel
//! picks): cairn- and vhd-lib-made VHDs and a raw disk, basic authentication, a 302 to another
//! port, certificate checks, a dropped transfer.

use std::path::Path;

use cairn_tests::https::Https;
use cairn_tests::{TestStore, cairn, certificates, id, make_raw, modify_raw, node, ok, read, run};

fn backup(
    store: &TestStore,
    vm: &str,
    time: &str,
    url: &str,
    extra: &[&str],
) -> std::process::Output {
    run(store
        .cmd(&["backup", "--json", "--vm", vm, "--time", time])
        .args(extra)
        .arg(format!("xvda={url}"))
        .env("CAIRN_HTTP_PASSWORD", "pw"))
}

fn stored(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cairn_tests::json(&String::from_utf8_lossy(&out.stdout))[0].clone()
}

fn refused(out: &std::process::Output, want: &str) {
    let err = cairn_tests::error_text(out);
    assert!(
        !out.status.success(),
        "accepted; wanted an error with {want:?}"
    );
    assert!(
        err.contains(want) && err.contains("nothing was stored"),
        "{err}"
    );
}

#[test]
fn https_sources_are_read_as_streams_with_checked_certificates() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let (ca, cert, key) = certificates(w);
    let files = w.join("files");
    std::fs::create_dir(&files).expect("mkdir");
    let (r0, r1) = (w.join("day0.raw"), w.join("day1.raw"));
    make_raw(&r0, 24 << 20, 11);
    modify_raw(&r0, &r1, 12);
    // vhd-lib's chain (as Xen Orchestra writes it), cairn's VHD of day 0, and the raw disk.
    ok(&mut node(
        "xo_make_chain.js",
        [r0.as_os_str(), r1.as_os_str(), files.as_os_str()],
    ));
    ok(cairn(["vhd", "from-raw"])
        .arg(&r0)
        .arg(files.join("cairn.vhd")));
    std::fs::copy(&r1, files.join("day1.raw")).expect("copy");
    let srv = Https::start(&cert, &key, &files, "root:pw");
    let store = TestStore::new("256K");
    let ca_arg = [
        "--ca-file",
        ca.to_str().expect("utf-8"),
        "--http-user",
        "root",
    ];
    let restored = |p: &serde_json::Value| {
        let out = w.join(format!("{}.raw", id(p)));
        store.restore(&id(p), &out, "raw");
        read(&out)
    };

    // vhd-lib's dynamic VHD, then its differencing VHD applied to it.
    let p = stored(&backup(
        &store,
        "xo",
        "2026-11-01T00:00:00Z",
        &srv.url("files/base.vhd"),
        &ca_arg,
    ));
    assert_eq!(p["source"]["kind"], "vhd-dynamic");
    assert_eq!(restored(&p), read(&r0));
    let d = stored(&backup(
        &store,
        "xo",
        "2026-11-02T00:00:00Z",
        &srv.url("files/delta.vhd"),
        &ca_arg,
    ));
    assert_eq!(d["source"]["kind"], "vhd-differencing");
    assert_eq!(d["parent"].as_str(), Some(id(&p).as_str()));
    assert_eq!(restored(&d), read(&r1));
    // cairn's VHD, with the credentials in the URL; the point records neither them nor the
    // query.
    let url = format!(
        "https://root:pw@127.0.0.1:{}/files/cairn.vhd?session_id=OpaqueRef:secret",
        srv.port()
    );
    let c = stored(&backup(
        &store,
        "cairn",
        "2026-11-01T00:00:00Z",
        &url,
        &["--ca-file", ca.to_str().expect("utf-8")],
    ));
    assert_eq!(restored(&c), read(&r0));
    let recorded = c["source"]["path"].as_str().expect("path");
    assert!(
        !recorded.contains("pw") && !recorded.contains("secret"),
        "{recorded}"
    );
    // A raw disk through a 302 to another port (the host that sees the storage).
    let r = stored(&backup(
        &store,
        "raw",
        "2026-11-01T00:00:00Z",
        &srv.url("redirect/day1.raw"),
        &ca_arg,
    ));
    assert_eq!(r["source"]["kind"], "raw");
    assert_eq!(restored(&r), read(&r1));

    // Refused, with nothing stored: no CA for the certificate, a wrong password, a missing
    // file, a transfer that drops half-way.
    let before = store.list().len();
    let packs = store.pack_files();
    refused(
        &backup(
            &store,
            "x",
            "2026-11-03T00:00:00Z",
            &srv.url("files/day1.raw"),
            &["--http-user", "root"],
        ),
        "--ca-file",
    );
    let out = run(store
        .cmd(&[
            "backup",
            "--vm",
            "x",
            "--ca-file",
            ca.to_str().expect("utf-8"),
            "--http-user",
            "root",
        ])
        .arg(format!("xvda={}", srv.url("files/day1.raw")))
        .env("CAIRN_HTTP_PASSWORD", "wrong"));
    refused(&out, "401");
    refused(
        &backup(
            &store,
            "x",
            "2026-11-03T00:00:00Z",
            &srv.url("files/nope.raw"),
            &ca_arg,
        ),
        "404",
    );
    refused(
        &backup(
            &store,
            "x",
            "2026-11-03T00:00:00Z",
            &srv.url("drop/day1.raw"),
            &ca_arg,
        ),
        "transfer",
    );
    refused(
        &backup(
            &store,
            "x",
            "2026-11-03T00:00:00Z",
            &srv.url("drop/base.vhd"),
            &ca_arg,
        ),
        "",
    );
    // A failing URL with credentials: its message never shows them.
    let secret = format!(
        "https://root:s3cret@127.0.0.1:{}/files/nope.raw?session_id=OpaqueRef:hidden",
        srv.port()
    );
    let out = backup(
        &store,
        "x",
        "2026-11-03T00:00:00Z",
        &secret,
        &["--ca-file", ca.to_str().expect("utf-8")],
    );
    refused(&out, "401");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("s3cret") && !err.contains("hidden"), "{err}");
    assert_eq!(store.list().len(), before);
    assert_eq!(store.pack_files(), packs);
    // --insecure trusts the certificate it cannot check.
    let i = stored(&backup(
        &store,
        "insecure",
        "2026-11-01T00:00:00Z",
        &srv.url("files/day1.raw"),
        &["--insecure", "--http-user", "root"],
    ));
    assert_eq!(restored(&i), read(&r1));
}

/// The parent file name a differencing VHD gives (its header's `parentUnicodeName`).
fn parent_name(vhd: &Path) -> String {
    let b = read(vhd);
    let units: Vec<u16> = b[512 + 64..512 + 64 + 512]
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .take_while(|u| *u != 0)
        .collect();
    String::from_utf16(&units).expect("utf-16 name")
}

#[test]
fn a_standby_over_https_puts_a_vhd_then_differencing_vhds_that_vhd_lib_chains() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let (ca, cert, key) = certificates(w);
    let got = w.join("got");
    std::fs::create_dir(&got).expect("mkdir");
    let raws: Vec<_> = (0..3)
        .map(|d| {
            let p = w.join(format!("day{d}.raw"));
            cairn_tests::gen_disk(&p, "32M", 17, 4, d);
            p
        })
        .collect();
    let store = TestStore::new("256K");
    let ids: Vec<String> = raws
        .iter()
        .enumerate()
        .map(|(d, r)| {
            id(&store.backup(
                "dr",
                &format!("2026-11-0{}T02:00:00Z", d + 1),
                "xvda",
                r,
                &[],
            ))
        })
        .collect();
    let srv = Https::start(&cert, &key, &got, "root:pw");
    let url = format!("{}?format=vhd&vdi=5f0c", srv.url("import_raw_vdi"));
    let standby = |point: &str, extra: &[&str]| {
        run(store
            .cmd(&[
                "standby",
                "--json",
                point,
                "--http-user",
                "root",
                "--to",
                &url,
            ])
            .args(extra)
            .env("CAIRN_HTTP_PASSWORD", "pw"))
    };
    let ca_arg = ["--ca-file", ca.to_str().expect("utf-8")];
    let done = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        cairn_tests::json(&String::from_utf8_lossy(&out.stdout))
    };
    // The certificate is checked: without its CA, refused, nothing sent.
    let out = standby(&ids[0], &[]);
    assert!(!out.status.success());
    let err = cairn_tests::error_text(&out);
    assert!(
        err.contains("--ca-file") && !err.contains("vdi=5f0c"),
        "{err}"
    );
    // Day 0: the whole point as a dynamic VHD; day 1: a differencing VHD of what changed.
    let first = done(standby(&ids[0], &ca_arg));
    let second = done(standby(&ids[1], &ca_arg));
    assert_eq!(second["from"], ids[0].as_str(), "{second}");
    // Both figures are there (a missing one must not pass as "less").
    let (first_bytes, second_bytes) = (
        cairn_tests::num(&first, "bytes_written"),
        cairn_tests::num(&second, "bytes_written"),
    );
    assert!(
        second_bytes > 0 && second_bytes < first_bytes / 2,
        "{first} {second}"
    );
    // Day 2's PUT dropped halfway: an error, and the next run sends it again.
    std::fs::write(got.join("fail-next-put"), b"").expect("flag");
    let out = standby(&ids[2], &ca_arg);
    assert!(!out.status.success());
    let err = cairn_tests::error_text(&out);
    assert!(
        err.contains("the next run sends it again") && !err.contains("vdi=5f0c"),
        "{err}"
    );
    let third = done(standby(&ids[2], &ca_arg));
    assert_eq!(third["finished_interrupted"], true, "{third}");
    assert_eq!(third["to"], ids[2].as_str(), "{third}");
    // Held already: nothing sent.
    let again = done(standby(&ids[2], &ca_arg));
    assert_eq!(again["bytes_written"], 0, "{again}");

    // What arrived is a chain: each differencing VHD names the one before as its parent.
    let chain = w.join("chain");
    std::fs::create_dir(&chain).expect("mkdir");
    let puts: Vec<_> = (1..=3).map(|n| got.join(format!("put-{n}.vhd"))).collect();
    assert!(
        puts.iter().all(|p| p.exists()),
        "{:?}",
        std::fs::read_dir(&got).map(|d| d.count())
    );
    let names = [
        parent_name(&puts[1]),
        parent_name(&puts[2]),
        "top.vhd".to_owned(),
    ];
    for (p, n) in puts.iter().zip(&names) {
        std::fs::copy(p, chain.join(n)).expect("copy");
    }
    let top = chain.join("top.vhd");
    ok(&mut node(
        "xo_check.js",
        [
            std::ffi::OsStr::new("--chain"),
            std::ffi::OsStr::new("--blocks"),
            top.as_os_str(),
        ],
    ));
    let xo_out = w.join("chain.raw");
    ok(&mut node(
        "xo_chain_to_raw.js",
        [
            top.as_os_str(),
            xo_out.as_os_str(),
            std::ffi::OsStr::new("--mode=synthetic"),
        ],
    ));
    assert_eq!(read(&xo_out), read(&raws[2]));
    // The one before the drop reads as day 1.
    let mid = chain.join(&names[1]);
    let mid_out = w.join("mid.raw");
    ok(&mut node(
        "xo_chain_to_raw.js",
        [
            mid.as_os_str(),
            mid_out.as_os_str(),
            std::ffi::OsStr::new("--mode=synthetic"),
        ],
    ));
    assert_eq!(read(&mid_out), read(&raws[1]));
}
