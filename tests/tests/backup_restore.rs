//! Backup and restore end to end through the `cairn` binary, on the shared workload, with
//! qemu-img and vhd-lib checking what cairn restores.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cairn_tests::{
    TestStore as Store, assert_same_content, cairn, gen_disk, id, json, node, ok, read, run,
    xo_chain3,
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
        p1["new_stored_bytes"].as_u64() < p0["new_stored_bytes"].as_u64().map(|b| b / 5),
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
        p2["bytes_read"].as_u64() < p2["logical_bytes"].as_u64(),
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
        x1["parent_chunks"].as_u64() > Some(0),
        "blocks absent from the delta come from the parent: {x1}"
    );
    assert!(
        x2["bytes_read"].as_u64() < x2["logical_bytes"].as_u64().map(|b| b / 4),
        "a delta reads only its blocks: {x2}"
    );
    // The same VM's data: the xo points cost (almost) nothing new.
    assert!(
        x0["new_chunks"].as_u64() == Some(0),
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
    let chain = w.join("chain");
    store.restore("web01/xvda@latest", &chain, "vhd-chain");
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
        report["store"]["dedup_ratio"].as_f64() > Some(2.0),
        "{}",
        report["store"]
    );
    assert_eq!(report["points"].as_array().map(Vec::len), Some(6));
    assert!(
        report["store"]["stored_bytes"].as_u64() < report["store"]["xo_vhd_deltas_bytes"].as_u64()
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
        in_shared["new_stored_bytes"].as_u64().unwrap_or(0),
        by_itself["new_stored_bytes"].as_u64().unwrap_or(0),
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
        b_vm["unique_stored_bytes"].as_u64() < b_vm["stored_bytes"].as_u64(),
        "{b_vm}"
    );
}

#[test]
fn kill_9_during_a_backup_leaves_earlier_points_intact_and_the_next_backup_working() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let raws = days(work.path(), 3, 9, 2);
    let p0 = store.backup("db01", "2026-11-01T02:00:00Z", "xvda", &raws[0], &[]);
    // A bigger, different disk to be interrupted at different moments.
    let big = work.path().join("big.raw");
    gen_disk(&big, "256M", 4, 10, 0);
    for delay_ms in [30u64, 120, 400, 900] {
        let mut child = store
            .cmd(&["backup", "--vm", "db01", "--time", "2026-11-02T02:00:00Z"])
            .arg(format!("xvda={}", big.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let status = child.wait().expect("wait");
        let points = store.list();
        if status.success() {
            // It finished before the kill: then it must be whole.
            assert_eq!(points.len(), 2);
            break;
        }
        assert_eq!(
            points.len(),
            1,
            "a killed backup must publish nothing (after {delay_ms} ms)"
        );
        let out = work.path().join("p0.raw");
        store.restore(&id(&p0), &out, "raw");
        assert_same_content(&out, &raws[0], true);
    }
    // The next backup takes over the lock and works.
    let p1 = store.backup("db01", "2026-11-03T02:00:00Z", "xvda", &raws[1], &[]);
    let out = work.path().join("p1.raw");
    store.restore(&id(&p1), &out, "raw");
    assert_same_content(&out, &raws[1], true);
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
    for (bad, what) in [(&truncated, "truncated"), (&flipped, "checksum")] {
        let out = run(store
            .cmd(&["backup", "--vm", "app", "--time", "2026-11-02T02:00:00Z"])
            .arg(format!("xvda={}", bad.display())));
        assert!(!out.status.success(), "{} accepted", bad.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&bad.display().to_string())
                && err.contains("offset")
                && err.contains(what),
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
    // A writer that holds the lock while it waits for stdin.
    let mut holder = store
        .cmd(&[
            "backup",
            "--vm",
            "web",
            "--time",
            "2026-11-02T02:00:00Z",
            "xvda=-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut pipe = holder.stdin.take().expect("stdin");
    pipe.write_all(&vec![7u8; 1 << 20]).expect("pipe");
    std::thread::sleep(std::time::Duration::from_millis(500));
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
    drop(pipe);
    assert!(holder.wait().expect("wait").success());
    assert_eq!(store.list().len(), 2);
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
    assert!(
        err.contains("chunk") && err.contains("disk offset"),
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
    assert!(
        String::from_utf8_lossy(&cut.stderr).contains("truncated"),
        "{}",
        String::from_utf8_lossy(&cut.stderr)
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
