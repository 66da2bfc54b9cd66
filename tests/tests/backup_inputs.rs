//! Backups never store wrong input as a good point: a raw stream that ends early, stdin on a
//! terminal, an image of another format read as a raw disk, a VHD read with `--format raw`, a
//! VHD stream whose table is too small, a file named .vhd that is none. Each is refused with a
//! message that says what to do, and nothing is stored. Sparse files restore as holes.

use std::io::Write;
use std::process::{Command, Stdio};

use cairn_tests::{TestStore as Store, json, ok, read, refused, run, small_disk};

/// `cairn backup --vm VM ARGS... xvda=-` with `bytes` piped in.
fn backup_piped(store: &Store, vm: &str, args: &[&str], bytes: &[u8]) -> std::process::Output {
    let mut child = store
        .cmd(&["backup", "--json", "--vm", vm])
        .args(args)
        .arg("xvda=-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut pipe = child.stdin.take().expect("stdin");
    let _ = pipe.write_all(bytes);
    drop(pipe);
    child.wait_with_output().expect("wait")
}

#[test]
fn a_raw_stream_that_ends_early_is_refused_unless_the_size_is_declared() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let src = small_disk(work.path(), "a.raw", 1);
    let bytes = read(&src);
    ok(&mut store.cmd(&[
        "backup",
        "--vm",
        "web01",
        &format!("xvda={}", src.display()),
    ]));
    let packs = store.pack_files();
    // As `head -c 10M disk.raw |` or a dropped download gives it.
    let cut = &bytes[..10 << 20];
    let out = backup_piped(&store, "web01", &[], cut);
    refused(&out, &["10485760", "16777216", "--size", "--allow-resize"]);
    assert_eq!(store.list().len(), 1, "the truncated stream became a point");
    assert_eq!(store.pack_files(), packs, "the refused stream left packs");
    // --size says what the disk holds: a stream that ends elsewhere is refused...
    let out = backup_piped(&store, "web01", &["--size", "16M"], cut);
    refused(&out, &["--size"]);
    // ...and one that matches is stored, as is a shrunk disk with --allow-resize.
    let out = backup_piped(&store, "web01", &["--size", "16M"], &bytes);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = backup_piped(&store, "web01", &["--allow-resize"], cut);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = json(&String::from_utf8_lossy(&out.stdout))[0].clone();
    assert_eq!(p["size"], 10 << 20);
    // A disk's first point has nothing to compare with: a stream is taken as it comes.
    let out = backup_piped(&store, "new01", &[], cut);
    assert!(out.status.success());
}

#[test]
fn stdin_on_a_terminal_is_refused() {
    let store = Store::new("64K");
    // Nothing is typed on the terminal given as stdin.
    let (status, text) = store.on_a_terminal("backup --vm web01 xvda=-");
    assert!(!status.success(), "{text}");
    assert!(text.contains("terminal"), "{text}");
    assert!(store.list().is_empty());
}

#[test]
fn images_of_other_formats_and_vhds_read_as_raw_are_refused() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let src = small_disk(w, "a.raw", 2);
    for (fmt, name, what) in [
        ("qcow2", "a.qcow2", "qcow2"),
        ("vhdx", "a.vhdx", "VHDX"),
        ("vmdk", "a.vmdk", "VMDK"),
        ("vdi", "a.vdi", "VDI"),
    ] {
        let img = w.join(name);
        ok(Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", fmt])
            .arg(&src)
            .arg(&img));
        let out = run(store
            .cmd(&["backup", "--vm", "pve"])
            .arg(format!("xvda={}", img.display())));
        refused(
            &out,
            &[what, "qemu-img convert", &img.display().to_string()],
        );
        let out = backup_piped(&store, "pve", &[], &read(&img));
        refused(&out, &[what]);
        assert!(store.list().is_empty(), "{fmt} stored");
    }
    // --force stores the bytes as told.
    let img = w.join("a.qcow2");
    ok(store
        .cmd(&["backup", "--vm", "pve", "--force"])
        .arg(format!("xvda={}", img.display())));
    assert_eq!(store.list().len(), 1);
    // A VHD read with --format raw would store the VHD file as the disk.
    let vhd = w.join("a.vhd");
    ok(cairn_tests::cairn(["vhd", "from-raw"]).arg(&src).arg(&vhd));
    let out = run(store
        .cmd(&["backup", "--vm", "xo", "--format", "raw"])
        .arg(format!("xvda={}", vhd.display())));
    refused(&out, &["is a VHD", "--format raw"]);
    let out = backup_piped(&store, "xo", &["--format", "raw"], &read(&vhd));
    refused(&out, &["is a VHD"]);
    assert_eq!(store.list().len(), 1);
    ok(store
        .cmd(&["backup", "--vm", "xo", "--format", "raw", "--force"])
        .arg(format!("xvda={}", vhd.display())));
    assert_eq!(store.list().len(), 2);
}

#[test]
fn vhd_to_raw_reads_stdin_as_backup_does() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let src = small_disk(w, "a.raw", 7);
    let dynamic = w.join("d.vhd");
    ok(
        cairn_tests::cairn(["vhd", "from-raw", "--block-size", "512K"])
            .arg(&src)
            .arg(&dynamic),
    );
    let fixed = w.join("f.vhd");
    ok(Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "vpc",
            "-o",
            "subformat=fixed,force_size=on",
        ])
        .arg(&src)
        .arg(&fixed));
    for vhd in [&dynamic, &fixed] {
        let out = w.join("out.raw");
        let _ = std::fs::remove_file(&out);
        let status = cairn_tests::cairn(["vhd", "to-raw", "-"])
            .arg(&out)
            .stdin(std::fs::File::open(vhd).expect("open"))
            .status()
            .expect("run");
        assert!(status.success(), "{}", vhd.display());
        cairn_tests::assert_same_content(&out, &src, true);
    }
}

#[test]
fn a_fixed_vhd_on_stdin_is_read_as_a_vhd_not_as_a_raw_disk_with_its_footer() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let a = small_disk(w, "a.raw", 11);
    let fixed = w.join("fixed.vhd");
    ok(cairn_tests::cairn(["vhd", "from-raw", "--type", "fixed"])
        .arg(&a)
        .arg(&fixed));
    let bytes = read(&fixed);
    let out = backup_piped(&store, "f", &[], &bytes);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = &json(&String::from_utf8_lossy(&out.stdout))[0];
    assert_eq!(p["source"]["kind"], "vhd-fixed", "{p}");
    assert_eq!(p["size"].as_u64(), Some(read(&a).len() as u64));
    let got = w.join("out.raw");
    store.restore(&cairn_tests::id(p), &got, "raw");
    cairn_tests::assert_same_content(&got, &a, true);
    // Read as raw, it is refused (it is a VHD), unless the user insists.
    let out = backup_piped(&store, "f", &["--format", "raw"], &bytes);
    refused(&out, &["fixed VHD", "--format auto"]);
    let out = backup_piped(&store, "f", &["--format", "raw", "--force"], &bytes);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = &json(&String::from_utf8_lossy(&out.stdout))[0];
    assert_eq!(p["size"].as_u64(), Some(bytes.len() as u64));
    // A raw disk whose last 512 bytes merely look like a footer of another size stays raw.
    let mut odd = read(&a);
    let n = odd.len();
    odd[n - 512..].copy_from_slice(&bytes[bytes.len() - 512..]);
    odd.extend_from_slice(&[7u8; 512]);
    let out = backup_piped(&store, "g", &[], &odd);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = &json(&String::from_utf8_lossy(&out.stdout))[0];
    assert_eq!(p["source"]["kind"], "raw");
    assert_eq!(p["size"].as_u64(), Some(odd.len() as u64));
}

#[test]
fn a_vhd_stream_whose_table_is_too_small_for_its_size_is_refused_as_the_file_is() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let a = small_disk(work.path(), "a.raw", 12);
    let vhd = work.path().join("a.vhd");
    ok(cairn_tests::cairn(["vhd", "from-raw"]).arg(&a).arg(&vhd));
    // Both footers claim 2 TiB (checksums made right): the BAT has 8 entries.
    let mut bytes = read(&vhd);
    let n = bytes.len();
    for at in [0, n - 512] {
        let f = &mut bytes[at..at + 512];
        for field in [40, 48] {
            f[field..field + 8].copy_from_slice(&(2u64 << 40).to_be_bytes());
        }
        f[64..68].fill(0);
        let sum: u32 = f.iter().map(|b| u32::from(*b)).sum();
        f[64..68].copy_from_slice(&(!sum).to_be_bytes());
    }
    let big = work.path().join("big.vhd");
    std::fs::write(&big, &bytes).expect("write");
    let from_file = run(store
        .cmd(&["backup", "--vm", "t"])
        .arg(format!("xvda={}", big.display())));
    let e_file = refused(&from_file, &["max table entries"]);
    let from_stream = backup_piped(&store, "t", &[], &bytes);
    let e_stream = refused(&from_stream, &["max table entries"]);
    assert!(e_file.contains("at offset") && e_stream.contains("at offset"));
    assert!(store.list().is_empty());
}

#[test]
fn the_holes_of_a_sparse_raw_file_are_never_read_and_restore_as_holes() {
    use std::os::unix::fs::FileExt;
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    // 8 GiB, three stretches of data (one straddling chunks, one at the very end).
    let src = w.join("sparse.raw");
    let f = std::fs::File::create(&src).expect("create");
    f.set_len(8 << 30).expect("size");
    let bits = |n: usize, seed: u8| -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    };
    f.write_all_at(&bits(1 << 20, 1), 0).expect("write");
    f.write_all_at(&bits(100_000, 2), (3 << 30) + 12_345)
        .expect("write");
    f.write_all_at(&bits(4096, 3), (8 << 30) - 4096)
        .expect("write");
    drop(f);
    let out = json(&ok(store
        .cmd(&["backup", "--json", "--vm", "sparse"])
        .arg(format!("xvda={}", src.display()))));
    let p = &out[0];
    assert_eq!(p["size"].as_u64(), Some(8 << 30));
    // What was read: the data, rounded to chunks (and the file system's own granularity).
    let read_bytes = p["bytes_read"].as_u64().expect("bytes_read");
    assert!(
        read_bytes < 16 << 20,
        "{read_bytes} bytes read of 8 GiB mostly holes"
    );
    let got = w.join("out.raw");
    store.restore(&cairn_tests::id(p), &got, "raw");
    // Reading 8 GiB of zeros to compare would dwarf the rest: the data stretches, their edges
    // and windows inside the holes are compared instead.
    let (a, b) = (
        std::fs::File::open(&src).expect("open"),
        std::fs::File::open(&got).expect("open"),
    );
    assert_eq!(
        a.metadata().expect("len").len(),
        b.metadata().expect("len").len()
    );
    for (at, len) in [
        (0u64, 2 << 20),
        ((3 << 30) - (1 << 20), 3 << 20),
        ((8 << 30) - (2 << 20), 2 << 20),
        (5 << 30, 1 << 20),
        (1 << 30, 1 << 20),
    ] {
        let (mut x, mut y) = (vec![0u8; len], vec![1u8; len]);
        a.read_exact_at(&mut x, at).expect("read");
        b.read_exact_at(&mut y, at).expect("read");
        assert!(x == y, "the restore differs in {at}..+{len}");
    }
    let used = Command::new("du")
        .args(["-k"])
        .arg(&got)
        .output()
        .expect("du");
    let kib: u64 = String::from_utf8_lossy(&used.stdout)
        .split_whitespace()
        .next()
        .and_then(|x| x.parse().ok())
        .expect("du output");
    assert!(kib < 16 << 10, "the restored file is not sparse: {kib} KiB");
}

#[test]
fn a_file_named_vhd_that_is_none_and_a_damaged_fixed_vhd_on_stdin_are_refused() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    // Random bytes, text and zeros named .vhd: refused; --format raw stores them as told.
    let random: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let text = "not a disk\n".repeat(50_000).into_bytes();
    let zeros = vec![0u8; 1 << 20];
    for (name, bytes) in [
        ("random.vhd", &random),
        ("text.VHD", &text),
        ("zeros.vhd", &zeros),
    ] {
        let path = w.join(name);
        std::fs::write(&path, bytes).expect("write");
        let src = format!("xvda={}", path.display());
        let out = run(&mut store.cmd(&["backup", "--vm", name, &src]));
        refused(&out, &[name, "named as a VHD but is none", "--format raw"]);
        ok(&mut store.cmd(&["backup", "--vm", name, "--format", "raw", &src]));
    }
    assert_eq!(store.list().len(), 3);

    // A fixed VHD whose footer was damaged, piped in: refused, not stored as a raw disk.
    let raw = small_disk(w, "d.raw", 3);
    let fixed = w.join("fixed.vhd");
    ok(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed"])
        .arg(&raw)
        .arg(&fixed));
    let mut bytes = read(&fixed);
    let at = bytes.len() - 512 + 70; // inside the footer, past its cookie
    bytes[at] ^= 0x55;
    let out = backup_piped(&store, "piped", &[], &bytes);
    refused(&out, &["damaged VHD footer", "--format raw"]);
    assert_eq!(store.list().len(), 3, "a damaged VHD was stored");
    // An intact one still goes in as the disk it holds.
    let intact = read(&fixed);
    let out = backup_piped(&store, "piped", &[], &intact);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = json(&String::from_utf8_lossy(&out.stdout))[0].clone();
    let restored = w.join("out.raw");
    store.restore(&cairn_tests::id(&p), &restored, "raw");
    // (qemu-img rounds a fixed VHD up to its geometry: zeros past the raw image.)
    cairn_tests::assert_same_content(&restored, &raw, false);
}
