//! Dry runs say what the run would do, to the chunk and byte, and change nothing: `backup
//! --dry-run` (locally and through a server), `restore --dry-run` (every output rule checked,
//! nothing made), and `standby --dry-run` (the target, its state and journal untouched).

use std::path::Path;

use cairn_tests::serve::{Server, token};
use cairn_tests::{
    TestStore as Store, dir_size, files_under, gen_disk, id, json, num, ok, read, run,
};

fn days(w: &Path, n: u32) -> Vec<std::path::PathBuf> {
    (0..n)
        .map(|d| {
            let p = w.join(format!("day{d}.raw"));
            gen_disk(&p, "16M", 5, 1, d);
            p
        })
        .collect()
}

/// Every file under the store (but the index, which any open may compact) with a hash of its
/// bytes: what a dry run must leave as it was.
fn snapshot(store: &Path) -> Vec<(std::path::PathBuf, String)> {
    let mut v: Vec<_> = files_under(store)
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains("/index/"))
        .map(|p| {
            let hash = blake3::hash(&std::fs::read(&p).unwrap_or_default())
                .to_hex()
                .to_string();
            (p, hash)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_backup_dry_run_counts_what_the_backup_stores_and_stores_nothing() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let raws = days(work.path(), 2);
    store.backup("web01", "2026-11-20T02:00:00Z", "xvda", &raws[0], &[]);
    let before = snapshot(&store.path());
    let size_before = dir_size(&store.path().join("packs"));
    let dry = json(&ok(store
        .cmd(&["backup", "--json", "--dry-run", "--vm", "web01"])
        .args(["--time", "2026-11-21T02:00:00Z"])
        .arg(format!("xvda={}", raws[1].display()))));
    assert_eq!(dry[0]["dry_run"], true, "{dry}");
    assert_eq!(
        snapshot(&store.path()),
        before,
        "a dry run changed the store"
    );
    assert_eq!(dir_size(&store.path().join("packs")), size_before);
    assert_eq!(store.list().len(), 1);
    let real = store.backup(
        "web01",
        "2026-11-21T02:00:00Z",
        "xvda",
        &raws[1],
        &["--rewrite", "0"],
    );
    for k in ["new_chunks", "new_stored_bytes", "bytes_read", "chunks"] {
        assert_eq!(
            num(&dry[0], k),
            num(&real, k),
            "{k}: dry {} vs {real}",
            dry[0]
        );
    }
    assert!(num(&real, "new_chunks") > 0);
}

#[test]
fn a_backup_dry_run_through_a_server_sends_and_publishes_nothing() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let raws = days(work.path(), 2);
    store.backup("web01", "2026-11-20T02:00:00Z", "xvda", &raws[0], &[]);
    let tok = token(&store.path(), "host", "backup", "*");
    let server = Server::start(&store.path(), 0, &[]);
    let dry = json(&ok(server
        .cmd(&tok, &["backup", "--json", "--dry-run", "--vm", "web01"])
        .arg(format!("xvda={}", raws[1].display()))));
    assert!(num(&dry[0], "new_chunks") > 0, "{dry}");
    let listed = json(&ok(&mut server.cmd(&tok, &["list", "--json"])));
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    let real = json(&ok(server
        .cmd(&tok, &["backup", "--json", "--vm", "web01"])
        .arg(format!("xvda={}", raws[1].display()))));
    assert_eq!(
        num(&dry[0], "new_chunks"),
        num(&real[0], "new_chunks"),
        "{dry} {real}"
    );
}

#[test]
fn a_restore_dry_run_checks_every_rule_and_makes_nothing() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let raws = days(w, 2);
    let p = id(&store.backup("web01", "2026-11-20T02:00:00Z", "xvda", &raws[0], &[]));
    let out = w.join("out.raw");
    let said = ok(store.cmd(&["restore", "--dry-run", &p]).arg(&out));
    assert!(
        said.contains("a new file") && said.contains("nothing was written"),
        "{said}"
    );
    assert!(!out.exists());
    // What the restore refuses, the dry run refuses.
    std::fs::write(&out, b"keep me").expect("write");
    let refused = run(store.cmd(&["restore", "--dry-run", &p]).arg(&out));
    assert!(!refused.status.success(), "{refused:?}");
    let said = ok(store
        .cmd(&["restore", "--dry-run", "--force", &p])
        .arg(&out));
    assert!(
        said.contains("replaced once the restore has succeeded"),
        "{said}"
    );
    assert_eq!(read(&out), b"keep me");
    let missing = run(store
        .cmd(&["restore", "--dry-run", &p])
        .arg(w.join("nowhere/x.raw")));
    assert!(!missing.status.success());
    let chain = w.join("chain");
    ok(store
        .cmd(&["restore", "--dry-run", "--format", "vhd-chain", &p])
        .arg(&chain));
    assert!(!chain.exists(), "a dry run made the chain's folder");
    // Onto an existing disk: the chunks that differ, counted, none written.
    std::fs::copy(&raws[1], &out).expect("copy");
    let c = json(&ok(store
        .cmd(&["restore", "--json", "--dry-run", "--changed-only", &p])
        .arg(&out)));
    assert!(num(&c, "chunks_written") > 0, "{c}");
    assert_eq!(read(&out), read(&raws[1]), "a dry run wrote");
    let real = json(&ok(store
        .cmd(&["restore", "--json", "--changed-only", "--force", &p])
        .arg(&out)));
    assert_eq!(num(&c, "chunks_written"), num(&real, "chunks_written"));
    assert_eq!(read(&out), read(&raws[0]));
}

#[test]
fn a_standby_dry_run_counts_the_run_and_leaves_target_and_record_alone() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let raws = days(w, 2);
    let p0 = id(&store.backup("web01", "2026-11-20T02:00:00Z", "xvda", &raws[0], &[]));
    let p1 = id(&store.backup("web01", "2026-11-21T02:00:00Z", "xvda", &raws[1], &[]));
    let target = w.join("standby.raw");
    let standby = |point: &str, extra: &[&str]| {
        let mut c = store.cmd(&["standby", "--json", point, "--to"]);
        c.arg(&target).args(extra);
        json(&ok(&mut c))
    };
    // A target that does not exist yet: not made.
    let first = standby(&p0, &["--dry-run"]);
    assert!(!target.exists(), "a dry run made the target");
    assert!(num(&first, "bytes_written") > 0, "{first}");
    let real = standby(&p0, &[]);
    assert_eq!(num(&first, "chunks_written"), num(&real, "chunks_written"));
    let record = snapshot(&store.path().join("standby"));
    let dry = standby(&p1, &["--dry-run"]);
    assert_eq!(read(&target), read(&raws[0]), "a dry run wrote the target");
    assert_eq!(
        snapshot(&store.path().join("standby")),
        record,
        "the record changed"
    );
    let next = standby(&p1, &[]);
    assert_eq!(
        num(&dry, "chunks_written"),
        num(&next, "chunks_written"),
        "{dry} {next}"
    );
    assert_eq!(num(&dry, "bytes_written"), num(&next, "bytes_written"));
    assert_eq!(read(&target), read(&raws[1]));
}
