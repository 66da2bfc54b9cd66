//! Encrypted stores (`cairn init --encrypt`), tried as an attacker and a careless admin would:
//! what the store's files hold, what a command without the key, with a wrong passphrase or with
//! another store's key does, what verify says of a flipped, swapped or cut chunk, and the key's
//! life (a new passphrase, a paper copy, a recovery key).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cairn_tests::leaks::Needles;
use cairn_tests::{
    PASSPHRASE, TestStore, assert_same_content, cairn, files_under, id, json, ok, read, refused,
    run, series,
};

const CHUNK: usize = 256 << 10;

/// BLAKE3 of every file under `dir` (what changed and what did not).
fn fingerprints(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut v: Vec<(PathBuf, String)> = files_under(dir)
        .into_iter()
        .map(|f| {
            let h = blake3::hash(&read(&f)).to_hex().to_string();
            (f, h)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn an_encrypted_store_holds_no_plaintext_nor_unkeyed_id_and_restores_every_way() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let raws = series(w, "32M", 5, 2, 2);
    let plain = TestStore::new("256K");
    let enc = TestStore::encrypted("256K");
    let _ = plain.daily_backups("web01", &raws);
    let points = enc.daily_backups("web01", &raws);
    // A third point from standard input (a pipe: read once, hashed and sealed on the way).
    let mut child = enc
        .cmd(&[
            "backup",
            "--json",
            "--vm",
            "pipe",
            "--time",
            "2026-11-05T02:00:00Z",
        ])
        .arg("xvda=-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("backup from stdin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&read(&raws[1]))
        .expect("feed");
    let piped = child.wait_with_output().expect("wait");
    assert!(piped.status.success());
    let piped = id(&json(&String::from_utf8_lossy(&piped.stdout))[0]);

    let needles = Needles::of_images(&[&raws[0], &raws[1]], CHUNK);
    assert!(needles.len() > 1000, "{} needles", needles.len());
    // The search finds what an unencrypted store holds (it can fail)...
    assert!(!needles.found_under(&plain.path()).is_empty());
    // ... and nothing in the encrypted one: no block of the images, no unkeyed chunk id.
    let found = needles.found_under(&enc.path());
    assert!(
        found.is_empty(),
        "plaintext in the encrypted store: {found:?}"
    );

    // Every point restores bit-exact, every way.
    for (p, want) in [
        (&points[0], &raws[0]),
        (&points[1], &raws[1]),
        (&piped, &raws[1]),
    ] {
        enc.restore_matches(p, want, w);
    }
    let vhd = w.join("p1.vhd");
    enc.restore(&points[1], &vhd, "vhd");
    let q = w.join("p1.qemu.raw");
    ok(Command::new("qemu-img")
        .args(["convert", "-f", "vpc", "-O", "raw"])
        .arg(&vhd)
        .arg(&q));
    assert_same_content(&q, &raws[1], true);
    let chain = w.join("chain");
    ok(enc
        .cmd(&[
            "restore",
            &points[1],
            "--format",
            "vhd-chain",
            "--from",
            &points[0],
        ])
        .arg(&chain));
    let mut files: Vec<PathBuf> = files_under(&chain);
    files.sort();
    assert_eq!(files.len(), 2);
    let from_chain = w.join("chain.raw");
    ok(cairn(["vhd", "to-raw"])
        .arg(files.last().expect("top"))
        .arg(&from_chain));
    assert_same_content(&from_chain, &raws[1], true);
    let delta = w.join("delta.vhd");
    ok(enc
        .cmd(&[
            "restore", &points[1], "--format", "vhd", "--base", &points[0],
        ])
        .arg(&delta));
    assert!(std::fs::metadata(&delta).expect("delta").len() > 0);
    // Onto a copy of day 0, only what changed: the ids compared are keyed.
    let target = w.join("target.raw");
    std::fs::copy(&raws[0], &target).expect("copy");
    let v = json(&ok(enc
        .cmd(&["restore", "--json", "--changed-only", "--force", &points[1]])
        .arg(&target)));
    assert!(v["chunks_written"].as_u64().expect("written") < (32 << 20) / CHUNK as u64);
    assert_same_content(&target, &raws[1], true);

    // Without the key: diff (trees only), prune and gc run; the points left still restore.
    let d = json(&ok(
        &mut enc.keyless(&["diff", "--json", &points[0], &points[1]])
    ));
    assert!(d["changed_bytes"].as_u64().expect("changed") > 0, "{d}");
    ok(&mut enc.keyless(&["forget", &points[0]]));
    let gc = json(&ok(&mut enc.keyless(&[
        "gc",
        "--json",
        "--repack-below",
        "100",
    ])));
    assert!(gc["bytes_freed"].as_u64().expect("freed") > 0, "{gc}");
    enc.restore_matches(&points[1], &raws[1], w);
    let (clean, report) = enc.verify(&["--key"]);
    assert!(clean, "{report}");
}

#[test]
fn without_its_key_a_store_lists_and_verifies_frames_but_refuses_what_needs_the_key() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let raws = series(w, "16M", 6, 1, 1);
    let enc = TestStore::encrypted("64K");
    let p = enc.daily_backups("db", &raws).remove(0);
    let packs = enc.pack_files().len();

    // No key: list and a frames-only verify run; a key file set in the environment without its
    // passphrase neither prompts nor fails a command that does without the key.
    let listed = json(&ok(&mut enc.keyless(&["list", "--json"])));
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    let mut c = enc.cmd(&["list", "--json"]);
    c.env_remove("CAIRN_PASSPHRASE");
    assert_eq!(json(&ok(&mut c)), listed);
    let out = run(&mut enc.keyless(&["verify", "--json"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Restore and backup are refused before any work, saying why.
    let target = w.join("out.raw");
    let out = run(enc.keyless(&["restore", &p]).arg(&target));
    refused(&out, &["encrypted", "key file", "--key-file"]);
    assert!(!target.exists());
    let out = run(enc
        .keyless(&["backup", "--vm", "db", "--time", "2026-11-09T02:00:00Z"])
        .arg(format!("xvda={}", raws[0].display())));
    refused(&out, &["encrypted", "key"]);
    assert_eq!(
        enc.pack_files().len(),
        packs,
        "a refused backup wrote packs"
    );
    let out = run(&mut enc.keyless(&["verify", "--key"]));
    refused(&out, &["encrypted", "key"]);

    // A wrong passphrase: one clear error, nothing done.
    let out = run(enc
        .cmd(&["restore", &p])
        .arg(&target)
        .env("CAIRN_PASSPHRASE", "Correct horse battery staple"));
    refused(
        &out,
        &["passphrase does not open", "key.json", "nothing was done"],
    );
    assert!(!target.exists());
    // The passphrase from a file descriptor (never an argument): a pipe handed as fd 3.
    let pass = w.join("pass");
    std::fs::write(&pass, format!("{PASSPHRASE}\n")).expect("write");
    let restored = w.join("fd.raw");
    ok(Command::new("bash")
        .arg("-c")
        .arg(format!(
            "exec 3<{} && exec {} restore --passphrase-fd 3 {p} {}",
            pass.display(),
            cairn_tests::cairn_bin().display(),
            restored.display()
        ))
        .env("CAIRN_STORE", enc.path())
        .env("CAIRN_KEY_FILE", enc.key_file())
        .env_remove("CAIRN_PASSPHRASE"));
    assert_same_content(&restored, &raws[0], true);

    // Another store's key: named by fingerprint, refused.
    let other = TestStore::encrypted("64K");
    let out = run(enc
        .cmd(&["restore", &p])
        .arg(&target)
        .env("CAIRN_KEY_FILE", other.key_file()));
    refused(&out, &["is not the key of", "fingerprint"]);
    assert!(!target.exists());
    // No key file where the key file is said to be.
    let out = run(enc
        .cmd(&["restore", &p])
        .arg(&target)
        .env("CAIRN_KEY_FILE", w.join("nowhere.json")));
    refused(&out, &["nowhere.json", "is not there", "cairn key recover"]);

    // The key file is private, and neither it nor any output holds the passphrase.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(enc.key_file())
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "key file mode {mode:o}");
    assert!(!String::from_utf8_lossy(&read(&enc.key_file())).contains(PASSPHRASE));
    let shown = ok(&mut enc.cmd(&["key", "show", "--json"]));
    let shown = json(&shown);
    assert_eq!(shown["is_the_stores_key"], true, "{shown}");
    assert!(!shown.to_string().contains(PASSPHRASE));
}

/// Offsets of the data frames of a pack: `(offset, stored length)`.
fn data_frames(pack: &[u8]) -> Vec<(usize, usize)> {
    let mut at = 32usize;
    let mut out = Vec::new();
    while at + 56 <= pack.len() {
        let stored = u32::from_be_bytes(pack[at + 44..at + 48].try_into().expect("len")) as usize;
        if pack[at + 49] == 0 {
            out.push((at, stored));
        }
        at += 56 + stored;
    }
    out
}

/// Sets a frame's payload CRC to what its bytes now give (an attacker who knows the format, or
/// rot that a CRC does not catch), and its header CRC.
fn fix_crcs(pack: &mut [u8], at: usize, stored: usize) {
    let crc = cairn_tests::serve::crc32(&pack[at + 56..at + 56 + stored]);
    pack[at + 52..at + 56].copy_from_slice(&crc.to_be_bytes());
    let h = cairn_tests::serve::crc32(&pack[at + 8..at + 56]);
    pack[at + 4..at + 8].copy_from_slice(&h.to_be_bytes());
}

#[test]
fn verify_names_a_flipped_swapped_or_cut_sealed_chunk_and_restore_never_hides_it() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    // Random data: every chunk stored plain (then sealed), all of one length.
    let raw = w.join("random.raw");
    ok(Command::new("head")
        .args(["-c", "4194304", "/dev/urandom"])
        .stdout(std::fs::File::create(&raw).expect("create")));
    let fixture = TestStore::encrypted("64K");
    let p = fixture
        .daily_backups("vm", std::slice::from_ref(&raw))
        .remove(0);
    let pack_of = |s: &TestStore| {
        s.pack_files()
            .into_iter()
            .max_by_key(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
            .expect("a pack")
    };

    // A flipped bit: the frame's CRC names it, with or without the key.
    let flipped = fixture.copy();
    let pack = pack_of(&flipped);
    let mut bytes = read(&pack);
    let (at, stored) = data_frames(&bytes)[3];
    bytes[at + 56 + stored / 2] ^= 0x10;
    std::fs::write(&pack, &bytes).expect("write");
    let out = run(&mut flipped.keyless(&["verify"]));
    refused(&out, &["CRC"]);
    let (clean, report) = flipped.verify(&["--key"]);
    assert!(!clean && report.to_string().contains("CRC"), "{report}");

    // The same flip with the CRCs made to agree: only the key finds it, as a failed
    // authentication (not a hash mismatch), and restore refuses the point.
    let forged = fixture.copy();
    let pack = pack_of(&forged);
    let mut bytes = read(&pack);
    let (at, stored) = data_frames(&bytes)[3];
    bytes[at + 56 + stored / 2] ^= 0x10;
    fix_crcs(&mut bytes, at, stored);
    std::fs::write(&pack, &bytes).expect("write");
    let (clean, report) = forged.verify(&["--key"]);
    assert!(!clean, "{report}");
    assert!(
        report.to_string().contains("failed authentication"),
        "{report}"
    );
    let out = run(forged.cmd(&["restore", &p]).arg(w.join("forged.raw")));
    refused(&out, &["failed authentication"]);
    assert!(!w.join("forged.raw").exists());

    // Another chunk's sealed bytes put under this chunk's id (the same length, the CRCs
    // fixed): the seal binds the id, so it does not open.
    let swapped = fixture.copy();
    let pack = pack_of(&swapped);
    let mut bytes = read(&pack);
    let frames = data_frames(&bytes);
    let ((a, len_a), (b, len_b)) = (frames[2], frames[5]);
    assert_eq!(len_a, len_b, "random chunks seal to one length");
    let theirs = bytes[b + 56..b + 56 + len_b].to_vec();
    bytes[a + 56..a + 56 + len_a].copy_from_slice(&theirs);
    fix_crcs(&mut bytes, a, len_a);
    std::fs::write(&pack, &bytes).expect("write");
    let (clean, report) = swapped.verify(&["--key"]);
    assert!(
        !clean && report.to_string().contains("failed authentication"),
        "{report}"
    );
    let out = run(swapped.cmd(&["restore", &p]).arg(w.join("swapped.raw")));
    refused(&out, &["failed authentication"]);

    // A pack cut short: the frames past the cut are named, with or without the key.
    let cut = fixture.copy();
    let pack = pack_of(&cut);
    let len = std::fs::metadata(&pack).expect("pack").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .and_then(|f| f.set_len(len - 1000))
        .expect("truncate");
    let out = run(&mut cut.keyless(&["verify"]));
    assert!(!out.status.success());
    let (clean, _) = cut.verify(&["--key"]);
    assert!(!clean);
    let out = run(cut.cmd(&["restore", &p]).arg(w.join("cut.raw")));
    assert!(!out.status.success());

    // The fixture itself is whole.
    let (clean, report) = fixture.verify(&["--key"]);
    assert!(clean, "{report}");
    fixture.restore_matches(&p, &raw, w);
}

#[test]
fn the_key_changes_passphrase_goes_on_paper_and_is_recovered_without_its_file() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let raws = series(w, "16M", 8, 3, 1);
    let enc = TestStore::encrypted("64K");
    let p = enc.daily_backups("mail", &raws).remove(0);
    let before = fingerprints(&enc.path());

    // A new passphrase: the key file is rewritten, not one byte of the store.
    ok(enc
        .cmd(&["key", "change-passphrase"])
        .args(cairn_tests::LIGHT_KDF)
        .env("CAIRN_NEW_PASSPHRASE", "tr0ub4dor&3"));
    assert_eq!(fingerprints(&enc.path()), before);
    let out = run(enc.cmd(&["restore", &p]).arg(w.join("old.raw")));
    refused(&out, &["passphrase does not open"]);
    let with_new = |c: &mut Command| {
        c.env("CAIRN_PASSPHRASE", "tr0ub4dor&3");
    };
    let mut c = enc.cmd(&["restore", &p]);
    with_new(&mut c);
    ok(c.arg(w.join("new.raw")));
    assert_same_content(&w.join("new.raw"), &raws[0], true);

    // On paper and back: a typo is named by its line; the paper copy opens with the passphrase
    // it was printed under.
    let paper = ok(&mut enc.cmd(&["key", "export", "--paper"]));
    let typed = w.join("typed.txt");
    let fingerprint = json(&ok(&mut enc.cmd(&["key", "show", "--json"])))["fingerprint"]
        .as_str()
        .expect("fp")
        .to_owned();
    assert!(paper.contains(&fingerprint));
    let mut lines: Vec<String> = paper.lines().map(str::to_owned).collect();
    let second = lines
        .iter()
        .position(|l| l.starts_with("2: "))
        .expect("line 2");
    let digit = lines[second].chars().nth(3).expect("digit");
    let other = if digit == '0' { '1' } else { '0' };
    lines[second].replace_range(3..4, &other.to_string());
    std::fs::write(&typed, lines.join("\n")).expect("write");
    let out = run(cairn(["key", "import"])
        .arg(&typed)
        .arg("--out")
        .arg(w.join("k2.json")));
    refused(&out, &["paper line 2", "mistyped"]);
    std::fs::remove_file(enc.key_file()).expect("lose the key file");
    let out = run(enc.cmd(&["restore", &p]).arg(w.join("lost.raw")));
    refused(&out, &["is not there"]);
    std::fs::write(&typed, &paper).expect("write");
    ok(cairn(["key", "import"])
        .arg(&typed)
        .arg("--out")
        .arg(enc.key_file()));
    let mut c = enc.cmd(&["restore", "--force", &p]);
    with_new(&mut c);
    ok(c.arg(w.join("new.raw")));

    // A recovery key: its public half added while the key is at hand; the key file lost and
    // its passphrase forgotten, the private half opens the store again.
    let secret = w.join("recovery.secret");
    let public = ok(cairn(["key", "new-recovery", "--out"]).arg(&secret));
    let public = public.trim();
    assert!(public.starts_with("cairn-recovery-public-"), "{public}");
    let mut c = enc.cmd(&["key", "add-recovery", public]);
    with_new(&mut c);
    ok(&mut c);
    let seals = files_under(&enc.path().join("keys"));
    assert_eq!(seals.len(), 1);
    std::fs::remove_file(enc.key_file()).expect("lose the key file again");
    // Another private key opens nothing.
    let stranger = w.join("stranger.secret");
    ok(cairn(["key", "new-recovery", "--out"]).arg(&stranger));
    let out = run(enc
        .cmd(&["key", "recover", "--recovery-key"])
        .arg(&stranger)
        .args(cairn_tests::LIGHT_KDF));
    refused(&out, &["no recovery seal"]);
    ok(enc
        .cmd(&["key", "recover", "--recovery-key"])
        .arg(&secret)
        .args(cairn_tests::LIGHT_KDF)
        .env("CAIRN_PASSPHRASE", "a brand new one"));
    let mut c = enc.cmd(&["restore", &p]);
    c.env("CAIRN_PASSPHRASE", "a brand new one");
    ok(c.arg(w.join("recovered.raw")));
    assert_same_content(&w.join("recovered.raw"), &raws[0], true);
    assert_eq!(
        json(&ok(&mut enc.cmd(&["key", "show", "--json"])))["fingerprint"],
        fingerprint.as_str()
    );
}
