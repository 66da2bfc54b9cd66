//! Backup and restore end to end through the `cairn` binary, on the shared workload, with
//! qemu-img and vhd-lib checking what cairn restores.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cairn_tests::{
    TestStore as Store, assert_same_content, cairn, float, gen_disk, id, json, node, num, ok, read,
    run, xo_chain3,
};

const SIZE: &str = "64M";

fn days(dir: &Path, seed: u32, template: u32, n: u32) -> Vec<PathBuf> {
    (0..n)
        .map(|d| {
            let p = dir.join(format!("vm{seed}-day{d}.raw"));
            gen_disk(&p, SIZE, seed, template, d);
            p
        })
        .collect()
}

#[test]
fn a_series_backed_up_every_way_restores_bit_exact_everywhere() {
    let store = Store::new("256K");
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let raws = days(w, 1, 7, 4);

    // Day 0 as a raw file, day 1 from stdin, day 2 as a qemu dynamic VHD.
    let p0 = store.backup("web01", "2026-11-01T02:00:00Z", "xvda", &raws[0], &[]);
    assert_eq!(p0["source"]["kind"], "raw");
    let mut child = store
        .cmd(&[
            "backup",
            "--json",
            "--vm",
            "web01",
            "--time",
            "2026-11-02T02:00:00Z",
            "xvda=-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&read(&raws[1]))
        .expect("pipe");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "stdin backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p1 = json(&String::from_utf8_lossy(&out.stdout))[0].clone();
    assert!(
        num(&p1, "new_stored_bytes") < num(&p0, "new_stored_bytes") / 5,
        "day 1 must cost only what changed: {p1}"
    );
    let q2 = w.join("day2.vhd");
    ok(Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "vpc",
            "-o",
            "subformat=dynamic,force_size=on",
        ])
        .arg(&raws[2])
        .arg(&q2));
    let p2 = store.backup("web01", "2026-11-03T02:00:00Z", "xvda", &q2, &[]);
    assert_eq!(p2["source"]["kind"], "vhd-dynamic");
    assert!(
        num(&p2, "bytes_read") < num(&p2, "size"),
        "unallocated VHD blocks must not be read: {p2}"
    );

    // A vhd-lib chain with partial sector bitmaps, for a second VM: key, then deltas.
    let xo = w.join("xo");
    xo_chain3(&raws[0], &raws[1], &raws[2], &xo);
    let x0 = store.backup(
        "xo01",
        "2026-11-01T03:00:00Z",
        "xvda",
        &xo.join("base.vhd"),
        &[],
    );
    let x1 = store.backup(
        "xo01",
        "2026-11-02T03:00:00Z",
        "xvda",
        &xo.join("delta.vhd"),
        &[],
    );
    let x2 = store.backup(
        "xo01",
        "2026-11-03T03:00:00Z",
        "xvda",
        &xo.join("delta2.vhd"),
        &[],
    );
    assert_eq!(x1["source"]["kind"], "vhd-differencing");
    assert!(
        num(&x1, "parent_chunks") > 0,
        "blocks absent from the delta come from the parent: {x1}"
    );
    assert!(
        num(&x2, "bytes_read") < num(&x2, "size") / 4,
        "a delta reads only its blocks: {x2}"
    );
    // The same VM's data: the xo points cost (almost) nothing new.
    assert!(
        num(&x0, "new_chunks") == 0,
        "xo01 day 0 is web01 day 0: {x0}"
    );

    // A delta whose parent UUID is not the latest point's source is refused.
    let bad = run(store
        .cmd(&["backup", "--vm", "web01", "--time", "2026-11-04T02:00:00Z"])
        .arg(format!("xvda={}", xo.join("delta2.vhd").display())));
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("UUID") && err.contains("--parent"), "{err}");

    // Every point restores bit-exact as raw.
    for (p, want) in [
        (&p0, &raws[0]),
        (&p1, &raws[1]),
        (&p2, &raws[2]),
        (&x0, &raws[0]),
        (&x1, &raws[1]),
        (&x2, &raws[2]),
    ] {
        let out = w.join(format!("{}.raw", id(p)));
        store.restore(&id(p), &out, "raw");
        assert_same_content(&out, want, true);
        std::fs::remove_file(&out).expect("rm");
    }
    // As one dynamic VHD, read by qemu-img.
    let vhd = w.join("p2.vhd");
    store.restore(&id(&p2)[..10], &vhd, "vhd");
    let q = w.join("p2.qemu.raw");
    ok(Command::new("qemu-img")
        .args(["convert", "-f", "vpc", "-O", "raw"])
        .arg(&vhd)
        .arg(&q));
    assert_same_content(&q, &raws[2], true);
    // As a chain, read by vhd-lib (whole blocks only: its synthetic export ignores bitmaps).
    // Every point here read the whole disk (a key backup), so by default the chain is the
    // newest alone; from day 0 it holds all three.
    let alone = w.join("alone");
    store.restore("web01/xvda@latest", &alone, "vhd-chain");
    assert_eq!(std::fs::read_dir(&alone).expect("chain").count(), 1);
    let chain = w.join("chain");
    ok(store
        .cmd(&[
            "restore",
            "web01/xvda@latest",
            "--format",
            "vhd-chain",
            "--from",
            &id(&p0),
        ])
        .arg(&chain));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&chain)
        .expect("chain")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3);
    let top = files.last().expect("top").clone();
    ok(&mut node(
        "xo_check.js",
        [
            OsStr::new("--chain"),
            OsStr::new("--blocks"),
            top.as_os_str(),
        ],
    ));
    let xo_out = w.join("chain.xo.raw");
    ok(&mut node(
        "xo_chain_to_raw.js",
        [
            top.as_os_str(),
            xo_out.as_os_str(),
            OsStr::new("--mode=synthetic"),
        ],
    ));
    assert_same_content(&xo_out, &raws[2], true);
    // One differencing VHD against a base point, beside the base's own VHD.
    let base_dir = w.join("based");
    store.restore(&id(&p0), &base_dir, "vhd-chain");
    let delta = base_dir.join("delta.vhd");
    ok(store
        .cmd(&["restore", &id(&p2), "--format", "vhd", "--base", &id(&p0)])
        .arg(&delta));
    let d_out = w.join("delta.raw");
    ok(cairn(["vhd", "to-raw"]).arg(&delta).arg(&d_out));
    assert_same_content(&d_out, &raws[2], true);

    // Report: dedup and per-point costs are there and consistent.
    let report = json(&ok(&mut store.cmd(&["report", "--json"])));
    assert!(
        float(&report["store"], "dedup_ratio") > 2.0,
        "{}",
        report["store"]
    );
    assert_eq!(report["points"].as_array().map(Vec::len), Some(6));
    assert!(num(&report["store"], "stored_bytes") < num(&report["store"], "xo_vhd_deltas_bytes"));
    report_matches_its_documented_schema(&report);
}

/// The field names of each table of docs/report-json.md, by section.
fn documented_fields() -> std::collections::HashMap<String, Vec<String>> {
    let doc = std::fs::read_to_string(cairn_tests::repo_root().join("docs/report-json.md"))
        .expect("docs/report-json.md");
    let mut out: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut section = String::new();
    for line in doc.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            section = h.split_whitespace().next().unwrap_or("").to_owned();
        } else if let Some(cell) = line.strip_prefix("| `") {
            let first = cell.split(" |").next().unwrap_or("");
            for f in first.split(", ") {
                out.entry(section.clone())
                    .or_default()
                    .push(f.trim_matches('`').to_owned());
            }
        }
    }
    out
}

/// Every field of `report --json` is documented, and every documented field is there.
fn report_matches_its_documented_schema(report: &serde_json::Value) {
    let doc = documented_fields();
    let keys = |v: &serde_json::Value| -> std::collections::BTreeSet<String> {
        v.as_object().expect("an object").keys().cloned().collect()
    };
    let set = |names: &[&str]| -> std::collections::BTreeSet<String> {
        names
            .iter()
            .flat_map(|n| doc.get(*n).cloned().unwrap_or_default())
            .collect()
    };
    assert_eq!(report["schema_version"], 1);
    assert_eq!(keys(report), set(&["Top"]), "top level");
    assert_eq!(keys(&report["store"]), set(&["Cost"]), "store");
    assert_eq!(
        keys(&report["vms"][0]),
        set(&["Cost", "VM", "Retention"]),
        "vms"
    );
    let mut disk = set(&["Cost", "VM", "Retention"]);
    disk.insert("disk".into());
    assert_eq!(keys(&report["disks"][0]), disk, "disks");
    assert_eq!(
        keys(&report["points"][0]),
        set(&["Cost", "VM", "Point"]),
        "points"
    );
}

#[test]
fn a_clone_of_the_same_template_costs_only_its_own_data() {
    let work = tempfile::tempdir().expect("tempdir");
    let a = days(work.path(), 1, 7, 1);
    let b = days(work.path(), 2, 7, 1);
    let shared = Store::new("256K");
    shared.backup("vm-a", "2026-11-01T02:00:00Z", "xvda", &a[0], &[]);
    let in_shared = shared.backup("vm-b", "2026-11-01T02:00:00Z", "xvda", &b[0], &[]);
    let alone = Store::new("256K");
    let by_itself = alone.backup("vm-b", "2026-11-01T02:00:00Z", "xvda", &b[0], &[]);
    let (s, t) = (
        num(&in_shared, "new_stored_bytes"),
        num(&by_itself, "new_stored_bytes"),
    );
    // The OS region (a quarter of the disk, most of its data) is shared with vm-a.
    assert!(
        s * 10 < t * 8,
        "the clone stored {s} bytes next to its template sibling, {t} alone"
    );
    let report = json(&ok(&mut shared.cmd(&["report", "--json"])));
    let vms = report["vms"].as_array().cloned().unwrap_or_default();
    let b_vm = vms
        .iter()
        .find(|v| v["vm"] == "vm-b")
        .expect("vm-b in report");
    assert!(
        num(b_vm, "unique_stored_bytes") < num(b_vm, "stored_bytes"),
        "{b_vm}"
    );
}

/// Kills a backup at each of its durability points in turn (every `fsync`, `fdatasync` and
/// `rename`) and once in the middle of its pack writes, through `strace --inject`, until a run
/// reaches its end unharmed. Each killed run must have been killed (signal 9, so the kill
/// landed), and leave the earlier point bit-exact; a run killed after its root file was renamed
/// into place is a committed point, which the next writer publishes with its reference counts
/// (checked by forgetting it and collecting its space).
#[test]
fn kill_9_at_every_sync_and_rename_of_a_backup_loses_nothing() {
    use std::os::unix::process::ExitStatusExt;
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let raws = days(work.path(), 3, 9, 2);
    let p0 = store.backup("db01", "2026-11-01T02:00:00Z", "xvda", &raws[0], &[]);
    let other = work.path().join("other.raw");
    gen_disk(&other, SIZE, 4, 10, 0);
    let source = format!("xvda={}", other.display());
    let words = [
        "backup",
        "--vm",
        "db02",
        "--time",
        "2026-11-02T02:00:00Z",
        &source,
    ];
    let args: Vec<&OsStr> = words.iter().map(OsStr::new).collect();
    let check_p0 = |when: &str| {
        let out = work.path().join("p0.raw");
        store.restore(&id(&p0), &out, "raw");
        assert_same_content(&out, &raws[0], true);
        let _ = std::fs::remove_file(&out);
        eprintln!("p0 intact after a kill {when}");
    };

    // In the middle of the pack writes: a kill there leaves an unindexed pack, and no point.
    // (The first few dozen writes are the index's as it opens; the first N that lands in a
    // pack is found by stepping N, each run checked.)
    let mut mid_write = None;
    for when in (20..400).step_by(8) {
        let status = store.killed_at("write,pwrite64", when, &args);
        if status.success() {
            break;
        }
        assert_eq!(status.signal(), Some(9), "write #{when}: {status}");
        assert_eq!(store.list().len(), 1, "a killed backup published a point");
        check_p0(&format!("at write #{when}"));
        let dry = json(&ok(&mut store.cmd(&["gc", "--dry-run", "--json"])));
        if num(&dry, "orphan_packs") >= 1 {
            mid_write = Some(when);
            break;
        }
    }
    assert!(mid_write.is_some(), "no kill landed among the pack writes");

    // strace counts each system call on its own: each is stepped through on its own.
    for syscalls in ["fsync", "fdatasync", "rename"] {
        let mut when = 1;
        loop {
            let status = store.killed_at(syscalls, when, &args);
            if status.success() {
                assert!(when > 1, "{syscalls}: no call was reached");
                break;
            }
            assert_eq!(status.signal(), Some(9), "{syscalls} #{when}: {status}");
            check_p0(&format!("at {syscalls} #{when}"));
            let root_files = walk_files(&store.path().join("points"), "json");
            if root_files.len() == 2 {
                // Committed: the root file is there. If the catalogue missed it, the next
                // writer publishes it, whole and counted.
                publish_and_drop(&store, &raws[1], &other, work.path());
            } else {
                assert_eq!(root_files.len(), 1, "at {syscalls} #{when}");
                assert_eq!(store.list().len(), 1, "a killed backup published a point");
            }
            check_p0(&format!("after {syscalls} #{when}"));
            when += 1;
            assert!(when < 64, "{syscalls}: the backup never finished");
        }
        // Start the next series from one point again.
        for q in store.list() {
            if q["vm"] != "db01" {
                ok(&mut store.cmd(&["forget", &id(&q)]));
            }
        }
    }
    // Exactly between the root file and the catalogue: the fsync of the root file's folder
    // after the rename. Readers do not see the point; the next writer publishes it.
    let folder = store.path().join("points/db02/xvda");
    std::fs::create_dir_all(&folder).expect("mkdir");
    let status = store.killed_at_path("fsync", 1, Some(&folder), &args);
    assert_eq!(
        status.signal(),
        Some(9),
        "not killed at the folder's fsync: {status}"
    );
    assert_eq!(
        walk_files(&folder, "json").len(),
        1,
        "the root file is not there"
    );
    assert_eq!(store.list().len(), 1, "a reader published the root file");
    publish_and_drop(&store, &raws[1], &other, work.path());
    check_p0("after the published point was forgotten");
    // The next backup takes over the lock and works.
    let p1 = store.backup("db01", "2026-11-03T02:00:00Z", "xvda", &raws[1], &[]);
    let out = work.path().join("p1.raw");
    store.restore(&id(&p1), &out, "raw");
    assert_same_content(&out, &raws[1], true);
}

/// After a backup of `src` as db02 was killed once its root file was in place: the next
/// writer (a backup of `next` as db03) publishes it; it restores bit-exact; forgetting both
/// and collecting frees their chunks (their counts were taken) and verify stays clean.
fn publish_and_drop(store: &Store, next: &Path, src: &Path, work: &Path) {
    let p = store.backup("db03", "2026-11-03T02:00:00Z", "xvda", next, &[]);
    let list = store.list();
    assert_eq!(
        list.len(),
        3,
        "the next writer did not publish the root file"
    );
    let orphan = list.iter().find(|q| q["vm"] == "db02").expect("published");
    let out = work.join("orphan.raw");
    store.restore(&id(orphan), &out, "raw");
    assert_same_content(&out, src, true);
    ok(&mut store.cmd(&["forget", &id(orphan), &id(&p)]));
    let g = json(&ok(&mut store.cmd(&[
        "gc",
        "--json",
        "--repack-below",
        "100",
    ])));
    assert!(num(&g, "bytes_freed") > 0, "{g}");
    let v = run(&mut store.cmd(&["verify"]));
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

/// Files with extension `ext` under `dir`, recursively.
fn walk_files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    cairn_tests::files_under(dir)
        .into_iter()
        .filter(|p| p.extension() == Some(OsStr::new(ext)))
        .collect()
}

#[test]
fn truncated_or_corrupt_sources_are_refused_with_nothing_stored() {
    let store = Store::new("256K");
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let raws = days(w, 5, 7, 1);
    store.backup("app", "2026-11-01T02:00:00Z", "xvda", &raws[0], &[]);
    let packs = store.pack_files();
    let good = w.join("good.vhd");
    ok(cairn(["vhd", "from-raw"]).arg(&raws[0]).arg(&good));
    let bytes = read(&good);
    let truncated = w.join("truncated.vhd");
    std::fs::write(&truncated, &bytes[..bytes.len() - 700_000]).expect("write");
    let flipped = w.join("flipped.vhd");
    let mut f = bytes.clone();
    f[512 + 20] ^= 4;
    std::fs::write(&flipped, &f).expect("write");
    // The truncated file ends 512 bytes after where its footer should be; the flipped byte
    // is in the dynamic disk header (at 512), whose checksum field is at 548.
    let cut_footer = format!("at offset {}: no valid footer", bytes.len() - 700_000 - 512);
    for (bad, what) in [
        (&truncated, cut_footer.as_str()),
        (&flipped, "at offset 548: dynamic disk header checksum"),
    ] {
        let out = run(store
            .cmd(&["backup", "--vm", "app", "--time", "2026-11-02T02:00:00Z"])
            .arg(format!("xvda={}", bad.display())));
        assert!(!out.status.success(), "{} accepted", bad.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&bad.display().to_string()) && err.contains(what),
            "{err}"
        );
        assert_eq!(store.list().len(), 1);
        assert_eq!(
            store.pack_files(),
            packs,
            "a refused source must store nothing"
        );
    }
}

#[test]
fn the_index_is_rebuilt_from_packs_and_root_files() {
    let store = Store::new("128K");
    let work = tempfile::tempdir().expect("tempdir");
    let raws = days(work.path(), 6, 7, 2);
    let p0 = store.backup("files", "2026-11-01T02:00:00Z", "xvda", &raws[0], &[]);
    let p1 = store.backup("files", "2026-11-02T02:00:00Z", "xvda", &raws[1], &[]);
    let before: Vec<String> = store.list().iter().map(id).collect();
    std::fs::remove_dir_all(store.path().join("index")).expect("rm index");
    let gone = run(&mut store.cmd(&["list"]));
    assert!(
        !gone.status.success() && String::from_utf8_lossy(&gone.stderr).contains("rebuild-index")
    );
    let r = json(&ok(&mut store.cmd(&[
        "repair",
        "--rebuild-index",
        "--json",
    ])));
    assert_eq!(r["points"], 2);
    let after: Vec<String> = store.list().iter().map(id).collect();
    assert_eq!(before, after);
    for (p, want) in [(&p0, &raws[0]), (&p1, &raws[1])] {
        let out = work.path().join("r.raw");
        store.restore(&id(p), &out, "raw");
        assert_same_content(&out, want, true);
    }
    // And dedup still works against the rebuilt index.
    let again = store.backup("files", "2026-11-03T02:00:00Z", "xvda", &raws[1], &[]);
    assert_eq!(again["new_chunks"], 0);
}

#[test]
fn a_second_writer_is_told_and_readers_work_beside_a_writer() {
    let store = Store::new("256K");
    let work = tempfile::tempdir().expect("tempdir");
    let raws = days(work.path(), 7, 7, 1);
    store.backup("web", "2026-11-01T02:00:00Z", "xvda", &raws[0], &[]);
    // A writer that holds the lock while it waits for stdin (a 1 MiB disk: --size says so,
    // since the disk's previous point is larger).
    let mut holder = store
        .cmd(&[
            "backup",
            "--vm",
            "web",
            "--time",
            "2026-11-02T02:00:00Z",
            "--size",
            "1M",
            "xvda=-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut pipe = holder.stdin.take().expect("stdin");
    pipe.write_all(&vec![7u8; 1 << 20]).expect("pipe");
    cairn_tests::wait_until("the first backup to hold the write lock", || {
        cairn_store::lock::writer_active(&store.path())
    });
    let second = run(store
        .cmd(&["backup", "--vm", "web2", "--time", "2026-11-02T02:00:00Z"])
        .arg(format!("xvda={}", raws[0].display())));
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("locked by another writer") && err.contains("pid"),
        "{err}"
    );
    assert_eq!(store.list().len(), 1, "list works beside a writer");
    let out = work.path().join("r.raw");
    store.restore("web/xvda@latest", &out, "raw");
    assert_same_content(&out, &raws[0], true);
    // A writer with --wait says whom it waits for, and when the holder finished normally it
    // does not call it a writer that did not finish.
    let mut waiter = store
        .cmd(&[
            "backup",
            "--wait",
            "--vm",
            "web3",
            "--time",
            "2026-11-02T02:00:00Z",
        ])
        .arg(format!("xvda={}", raws[0].display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Its standard error, read as it comes: the holder is let go once the waiter says it waits.
    let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        use std::io::Read;
        let mut stderr = waiter.stderr.take().expect("stderr");
        let said = std::sync::Arc::clone(&said);
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while let Ok(n @ 1..) = stderr.read(&mut buf) {
                if let Ok(mut s) = said.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        })
    };
    cairn_tests::wait_until("the second backup to say it waits", || {
        said.lock()
            .is_ok_and(|s| s.contains("waiting for the write lock"))
    });
    drop(pipe);
    assert!(holder.wait().expect("wait").success());
    let status = waiter.wait().expect("wait");
    reader.join().expect("stderr reader");
    let err = said.lock().map(|s| s.clone()).unwrap_or_default();
    assert!(status.success(), "{err}");
    assert!(
        err.contains("waiting for the write lock, held by pid"),
        "{err}"
    );
    assert!(!err.contains("did not finish"), "{err}");
    assert_eq!(store.list().len(), 3);
}

#[test]
fn a_corrupt_chunk_fails_the_restore_naming_chunk_and_offset() {
    let store = Store::new("256K");
    let work = tempfile::tempdir().expect("tempdir");
    let raws = days(work.path(), 8, 7, 1);
    let p = store.backup("web", "2026-11-01T02:00:00Z", "xvda", &raws[0], &[]);
    // Flip a byte in the middle of the biggest pack.
    let packs = store.pack_files();
    let pack = packs
        .iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a pack");
    let mut bytes = read(pack);
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(pack, &bytes).expect("write");
    let out = run(store
        .cmd(&["restore", &id(&p)])
        .arg(work.path().join("r.raw")));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // The message names the damaged pack and where in the disk the chunk sits.
    let pack_name = pack.file_stem().and_then(OsStr::to_str).expect("pack name");
    assert!(
        err.contains(pack_name) && err.contains("disk offset"),
        "{err}"
    );
}

/// Pipes `file` (or its first `cut` bytes) into `cairn backup ... DISK=-`.
fn backup_stdin(
    store: &Store,
    vm: &str,
    time: &str,
    file: &Path,
    cut: Option<usize>,
) -> std::process::Output {
    let mut child = store
        .cmd(&["backup", "--json", "--vm", vm, "--time", time, "xvda=-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let bytes = read(file);
    let n = cut.unwrap_or(bytes.len());
    let mut pipe = child.stdin.take().expect("stdin");
    let _ = pipe.write_all(&bytes[..n]);
    drop(pipe);
    child.wait_with_output().expect("wait")
}

#[test]
fn vhd_streams_on_stdin_are_read_in_one_pass_and_truncated_streams_refused() {
    let store = Store::new("256K");
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let raws = days(w, 9, 7, 2);
    let xo = w.join("xo");
    ok(&mut node(
        "xo_make_chain.js",
        [
            raws[0].as_os_str(),
            raws[1].as_os_str(),
            xo.as_os_str(),
            OsStr::new("--granularity=sector"),
        ],
    ));
    let packs_before = store.pack_files();
    let cut = backup_stdin(
        &store,
        "xo",
        "2026-11-01T02:00:00Z",
        &xo.join("base.vhd"),
        Some(20 << 20),
    );
    assert!(!cut.status.success(), "a truncated stream must be refused");
    // Named where the stream ended: after exactly the bytes piped in (under --json, in the
    // JSON error on standard output).
    let err = String::from_utf8_lossy(&cut.stdout);
    assert!(
        err.contains("truncated") && err.contains(&format!("{}", 20u64 << 20)),
        "{err}"
    );
    assert!(
        store.list().is_empty() && store.pack_files() == packs_before,
        "nothing stored"
    );
    for (time, file, want, kind) in [
        ("2026-11-01T02:00:00Z", "base.vhd", &raws[0], "vhd-dynamic"),
        (
            "2026-11-02T02:00:00Z",
            "delta.vhd",
            &raws[1],
            "vhd-differencing",
        ),
    ] {
        let out = backup_stdin(&store, "xo", time, &xo.join(file), None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let p = json(&String::from_utf8_lossy(&out.stdout))[0].clone();
        assert_eq!(p["source"]["kind"], kind);
        let r = w.join("r.raw");
        store.restore(&id(&p), &r, "raw");
        assert_same_content(&r, want, true);
    }
    // Nothing was spooled to disk: the streams were read in one pass.
    assert!(std::fs::read_dir(store.path().join("tmp")).map_or(true, |mut d| d.next().is_none()));

    // A raw stream is read whole: given --parent, it is refused rather than recorded as a
    // delta of that parent.
    let points = store.list();
    let parent = id(&points[0]);
    let mut child = store
        .cmd(&["backup", "--json", "--vm", "xo", "--parent", &parent])
        .args(["--time", "2026-11-03T02:00:00Z", "xvda=-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut pipe = child.stdin.take().expect("stdin");
    let _ = pipe.write_all(&read(&raws[1]));
    drop(pipe);
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "a raw stream with --parent was stored"
    );
    assert!(
        err.contains("--parent") && err.contains("raw read whole"),
        "{err}"
    );
    assert_eq!(store.list().len(), points.len(), "something was stored");
}

#[test]
fn restore_to_a_pipe_or_device_writes_every_byte_in_order() {
    // A FIFO stands for what is not a regular file (a block device, an LV): no holes can be
    // left there, so the zeros must be written too.
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let raws = days(work.path(), 15, 7, 1);
    let p = store.backup("dev", "2026-11-01T02:00:00Z", "xvda", &raws[0], &[]);
    let fifo = work.path().join("fifo");
    ok(Command::new("mkfifo").arg(&fifo));
    let got = work.path().join("got.raw");
    let reader = {
        let (fifo, got) = (fifo.clone(), got.clone());
        std::thread::spawn(move || {
            let bytes = std::fs::read(&fifo).expect("read the fifo");
            std::fs::write(&got, bytes).expect("write");
        })
    };
    store.restore(&id(&p), &fifo, "raw");
    reader.join().expect("reader");
    assert_same_content(&got, &raws[0], true);
}

#[test]
fn restores_go_past_the_page_cache_where_they_can_and_through_it_where_not() {
    // A disk whose size is a multiple of 512 but not of 4096: its last piece cannot go past
    // the page cache and is written through it.
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let disk = w.join("odd.raw");
    gen_disk(&disk, SIZE, 21, 7, 0);
    let size = std::fs::metadata(&disk).expect("disk").len() - 2560;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .and_then(|f| f.set_len(size))
        .expect("truncate");
    let p = id(&store.backup("odd", "2026-11-01T02:00:00Z", "xvda", &disk, &[]));
    let as_raw = |vhd: &Path| {
        let raw = vhd.with_extension("converted");
        ok(Command::new("qemu-img")
            .args(["convert", "-f", "vpc", "-O", "raw"])
            .arg(vhd)
            .arg(&raw));
        raw
    };

    // ext4 takes O_DIRECT: the raw and VHD restores open their file with it.
    for format in ["raw", "vhd"] {
        let out = w.join(format!("got.{format}"));
        let trace = w.join(format!("{format}.strace"));
        let mut c = Command::new("strace");
        c.args(["-f", "-qq", "-e", "trace=openat", "-o"])
            .arg(&trace)
            .arg(cairn_tests::cairn_bin())
            .args(["restore", &p, "--format", format])
            .arg(&out)
            .env("CAIRN_STORE", store.path());
        ok(&mut c);
        let opened = std::fs::read_to_string(&trace).expect("trace");
        assert!(
            opened
                .lines()
                .any(|l| l.contains(&format!("got.{format}.cairn-partial"))
                    && l.contains("O_DIRECT")),
            "{format}: the output was not opened with O_DIRECT:\n{opened}"
        );
        let got = if format == "raw" { out } else { as_raw(&out) };
        assert_same_content(&got, &disk, format == "raw");
    }

    // tmpfs refuses O_DIRECT: the same restores go through the page cache.
    let fs = cairn_tests::Tmpfs::mount(&w.join("mnt"), "256m");
    let mnt = fs.path();
    store.restore(&p, &mnt.join("got.raw"), "raw");
    assert_same_content(&mnt.join("got.raw"), &disk, true);
    store.restore(&p, &mnt.join("got.vhd"), "vhd");
    assert_same_content(&as_raw(&mnt.join("got.vhd")), &disk, false);
    drop(fs);

    // A block device (a loop device over a file of ones): every byte, zeros included, past
    // the page cache but for the last piece.
    let backing = w.join("backing.img");
    std::fs::write(&backing, vec![0xff; size as usize]).expect("backing file");
    let dev = cairn_tests::LoopDevice::attach(&backing);
    let restored = run(store
        .cmd(&["restore", &p, "--format", "raw", "--force"])
        .arg(dev.path()));
    drop(dev);
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert_same_content(&backing, &disk, true);

    // A full ext4 (16 MiB, on a loop device) takes O_DIRECT: a write that fails there fails
    // the restore, naming the file and the offset, and leaves the file it would replace as it
    // was and no partial file beside it.
    let image = w.join("small-ext4.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(16 << 20))
        .expect("image");
    ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));
    let mnt = w.join("small");
    std::fs::create_dir(&mnt).expect("mkdir");
    let out = Command::new("mount")
        .args(["-o", "loop"])
        .arg(&image)
        .arg(&mnt)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "this test mounts a loop file system and needs root: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kept = mnt.join("got.raw");
    std::fs::write(&kept, b"an earlier restore").expect("earlier file");
    let results: Vec<_> = ["raw", "vhd"]
        .iter()
        .map(|format| {
            run(store
                .cmd(&["restore", &p, "--format", format, "--force"])
                .arg(&kept))
        })
        .collect();
    let left: Vec<String> = std::fs::read_dir(&mnt)
        .expect("read the mount")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n != "lost+found")
        .collect();
    let earlier = std::fs::read(&kept).expect("earlier file");
    let _ = Command::new("umount").arg(&mnt).status();
    for (format, out) in ["raw", "vhd"].iter().zip(&results) {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{format}: restored into 16 MiB");
        assert!(
            err.contains("got.raw") && err.contains("at offset") && err.contains("No space left"),
            "{format}: {err}"
        );
    }
    assert_eq!(earlier, b"an earlier restore");
    assert_eq!(left, vec!["got.raw".to_owned()], "left behind: {left:?}");
}
