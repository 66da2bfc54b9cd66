//! Backups and restores end to end: a series backed up every way restores bit-exact
//! everywhere, what the report documents, dedup across clones, refused sources, a rebuilt
//! index, a corrupt chunk named. Kills and concurrent writers are `writers.rs`; restores to
//! pipes, devices and past the page cache, and VHD streams on stdin, are `streams.rs`.

use std::ffi::OsStr;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use cairn_tests::{
    TestStore as Store, assert_same_content, cairn, float, id, json, node, num, ok, read, run,
    series, xo_chain3,
};

const SIZE: &str = "64M";

#[test]
fn a_series_backed_up_every_way_restores_bit_exact_everywhere() {
    let store = Store::new("256K");
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let raws = series(w, SIZE, 1, 7, 4);

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
    let a = series(work.path(), SIZE, 1, 7, 1);
    let b = series(work.path(), SIZE, 2, 7, 1);
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

#[test]
fn truncated_or_corrupt_sources_are_refused_with_nothing_stored() {
    let store = Store::new("256K");
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let raws = series(w, SIZE, 5, 7, 1);
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
    let raws = series(work.path(), SIZE, 6, 7, 2);
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
fn a_corrupt_chunk_fails_the_restore_naming_chunk_and_offset() {
    let store = Store::new("256K");
    let work = tempfile::tempdir().expect("tempdir");
    let raws = series(work.path(), SIZE, 8, 7, 1);
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
