//! `cairn serve-nbd` over TLS: certificates checked, never a fall back to plain text, client
//! certificates that only their holders present, and no export exposed without them.

use cairn_tests::nbd::{nbdkit, restored, serve_nbd};
use cairn_tests::{TestStore, id, make_raw, ok, read, run};
use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn nbd_over_tls_checks_certificates_and_never_falls_back_to_plain_text() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let (ca, cert, key) = cairn_tests::certificates(w);
    // The folder layout of nbdkit's and libnbd's --tls-certificates.
    let pki = w.join("pki");
    std::fs::create_dir(&pki).expect("mkdir");
    for (from, to) in [
        (&ca, "ca-cert.pem"),
        (&cert, "server-cert.pem"),
        (&key, "server-key.pem"),
    ] {
        std::fs::copy(from, pki.join(to)).expect("copy");
    }
    let other = w.join("other");
    std::fs::create_dir(&other).expect("mkdir");
    let (other_ca, _, _) = cairn_tests::certificates(&other);
    let base = w.join("base.raw");
    make_raw(&base, 16 << 20, 21);
    let store = TestStore::new("256K");
    let p = id(&store.backup("vm", "2026-11-01T00:00:00Z", "xvda", &base, &[]));
    let srv = serve_nbd(
        &store.path(),
        &[
            "--tls-cert",
            cert.to_str().expect("utf-8"),
            "--tls-key",
            key.to_str().expect("utf-8"),
            &p,
        ],
    );
    // libnbd's nbdcopy over TLS, checking our certificate.
    let copy = w.join("copy.raw");
    ok(Command::new("nbdcopy")
        .arg(format!(
            "{}&tls-certificates={}",
            srv.tls_uri(&p),
            pki.display()
        ))
        .arg(&copy));
    assert_eq!(read(&copy), read(&base));
    // Our client against our server: a backup from nbds+unix:// with the CA.
    let ca_arg = ["--ca-file", ca.to_str().expect("utf-8")];
    let again = store.backup(
        "copy",
        "2026-11-01T00:00:00Z",
        "xvda",
        Path::new(&srv.tls_uri(&p)),
        &ca_arg,
    );
    assert_eq!(restored(&store, &id(&again), w), read(&base));
    let before = store.list().len();
    // A plain client is refused; so is a certificate from another CA.
    let out = run(Command::new("nbdinfo").arg(srv.uri(&p)));
    assert!(!out.status.success(), "a plain client was served");
    let out = run(store
        .cmd(&["backup", "--vm", "x"])
        .arg(format!("xvda={}", srv.uri(&p))));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("TLS required"),
        "{err}"
    );
    let out = run(store
        .cmd(&[
            "backup",
            "--vm",
            "x",
            "--ca-file",
            other_ca.to_str().expect("utf-8"),
        ])
        .arg(format!("xvda={}", srv.tls_uri(&p))));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("certificate"),
        "{err}"
    );
    drop(srv);
    // A server that offers no TLS: an nbds:// client stops, it never reads in plain text.
    let plain = serve_nbd(&store.path(), &[&p]);
    let out = run(store
        .cmd(&["backup", "--vm", "x"])
        .args(ca_arg)
        .arg(format!("xvda={}", plain.tls_uri(&p))));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("NBD_OPT_STARTTLS"),
        "{err}"
    );
    drop(plain);
    assert_eq!(store.list().len(), before);
    // Our client against nbdkit's TLS (GnuTLS).
    let kit = nbdkit(&[
        "--tls=require",
        &format!("--tls-certificates={}", pki.display()),
        "pattern",
        "size=8M",
    ]);
    let k = store.backup(
        "kit",
        "2026-11-01T00:00:00Z",
        "xvda",
        Path::new(&kit.tls_uri("")),
        &ca_arg,
    );
    let copy = w.join("kit.raw");
    ok(Command::new("nbdcopy")
        .arg(format!(
            "{}&tls-certificates={}",
            kit.tls_uri(""),
            pki.display()
        ))
        .arg(&copy));
    assert_eq!(restored(&store, &id(&k), w), read(&copy));
}

/// A client certificate signed by the CA of `certificates(dir)` (its `ca.key`), for `name`.
fn client_certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (key, csr, cert, ext) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.csr")),
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.cnf")),
    );
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .expect("ext");
    ok(Command::new("openssl")
        .args(["req", "-newkey", "rsa:2048", "-nodes", "-subj"])
        .arg(format!("/CN={name}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    ok(Command::new("openssl")
        .args(["x509", "-req", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(dir.join("ca.pem"))
        .arg("-CAkey")
        .arg(dir.join("ca.key"))
        .args(["-CAcreateserial", "-days", "2", "-extfile"])
        .arg(&ext)
        .arg("-out")
        .arg(&cert));
    (cert, key)
}

/// A folder as libnbd's and qemu's `tls-certificates` / `tls-creds-x509` read it.
fn pki(dir: &Path, files: &[(&Path, &str)]) -> PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir");
    for (from, to) in files {
        std::fs::copy(from, dir.join(to)).expect("copy");
    }
    dir.to_path_buf()
}

#[test]
fn serve_nbd_with_client_certificates_serves_their_holders_only_and_refuses_to_expose_without() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let (ca, cert, key) = cairn_tests::certificates(w);
    let (client, client_key) = client_certificate(w, "backup-host");
    let other = w.join("other");
    std::fs::create_dir(&other).expect("mkdir");
    let _ = cairn_tests::certificates(&other);
    let (stranger, stranger_key) = client_certificate(&other, "stranger");
    let base = w.join("base.raw");
    make_raw(&base, 8 << 20, 41);
    let store = TestStore::new("256K");
    let p = id(&store.backup("vm", "2026-11-01T00:00:00Z", "xvda", &base, &[]));
    let s = |p: &Path| p.to_str().expect("utf-8").to_owned();
    // Exposed on every address without client certificates: refused before anything listens.
    for extra in [
        &[][..],
        &["--tls-cert", &s(&cert), "--tls-key", &s(&key)][..],
    ] {
        let o = run(store
            .cmd(&["serve-nbd", "--listen", "0.0.0.0:0"])
            .args(extra)
            .arg(&p));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("--tls-client-ca"),
            "{err}"
        );
    }
    let srv = serve_nbd(
        &store.path(),
        &[
            "--tls-cert",
            &s(&cert),
            "--tls-key",
            &s(&key),
            "--tls-client-ca",
            &s(&ca),
            &p,
        ],
    );
    let holder = pki(
        &w.join("holder"),
        &[
            (&ca, "ca-cert.pem"),
            (&client, "client-cert.pem"),
            (&client_key, "client-key.pem"),
        ],
    );
    let anonymous = pki(&w.join("anonymous"), &[(&ca, "ca-cert.pem")]);
    let foreign = pki(
        &w.join("foreign"),
        &[
            (&ca, "ca-cert.pem"),
            (&stranger, "client-cert.pem"),
            (&stranger_key, "client-key.pem"),
        ],
    );
    // libnbd's nbdcopy with the client certificate reads the disk.
    let copy = w.join("copy.raw");
    ok(Command::new("nbdcopy")
        .arg(format!(
            "{}&tls-certificates={}",
            srv.tls_uri(&p),
            holder.display()
        ))
        .arg(&copy));
    assert_eq!(read(&copy), read(&base));
    // qemu-img with tls-creds-x509 too.
    let q = w.join("qemu.raw");
    ok(Command::new("qemu-img")
        .args(["convert", "--object"])
        .arg(format!(
            "tls-creds-x509,id=tls0,dir={},endpoint=client",
            holder.display()
        ))
        .arg("--image-opts")
        .arg(format!(
            "driver=nbd,path={},export={p},tls-creds=tls0,tls-hostname=localhost",
            srv.socket().display()
        ))
        .args(["-O", "raw"])
        .arg(&q));
    assert_eq!(read(&q), read(&base));
    // Without a certificate, or with one another CA signed: nothing is read.
    for (who, dir) in [("no certificate", &anonymous), ("another CA's", &foreign)] {
        let o = run(Command::new("nbdinfo").arg(format!(
            "{}&tls-certificates={}",
            srv.tls_uri(&p),
            dir.display()
        )));
        assert!(!o.status.success(), "a client with {who} was served");
    }
    let o = run(Command::new("nbdinfo").arg(srv.uri(&p)));
    assert!(!o.status.success(), "a plain client was served");
}
