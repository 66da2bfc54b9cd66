//! LVM2 inside points: a volume group made by LVM's own tools on a loop device (over one
//! partition of a GPT disk image), a linear logical volume in two pieces holding an ext4 file
//! system written where `lvs` says its extents are; cairn lists it as `VG-LV` and reads its
//! files as debugfs reads the image. Damaged metadata is named and leaves the other
//! partitions readable.
//!
//! LVM runs with activation off (`global/activation = 0`): it writes its metadata and never
//! asks the kernel's device-mapper (which a container may lack) for anything.

use std::path::Path;
use std::process::{Command, Stdio};

use cairn_tests::images::{disk, ext4_image};
use cairn_tests::{TestStore, id, json, ok, read, run};

/// LVM's settings for these tests: only loop devices, no activation, no udev, nothing kept
/// under /etc/lvm.
const LVM_CONFIG: &str = "devices { filter=[\"a|^/dev/loop.*|\",\"r|.*|\"] scan_lvs=0 } \
     activation { udev_sync=0 udev_rules=0 } global { activation=0 } \
     backup { backup=0 archive=0 }";

fn lvm(args: &[&str]) -> String {
    ok(Command::new(args[0])
        .args(&args[1..])
        .args(["--config", LVM_CONFIG])
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .stderr(Stdio::null()))
}

/// A loop device over `len` bytes of `file` from `offset`, detached when dropped (with its
/// volume group forgotten by LVM's cache first).
struct Loop(String);

impl Loop {
    fn new(file: &Path, offset: u64, len: u64) -> Self {
        let out = run(Command::new("losetup")
            .args(["-f", "--show", "--offset", &offset.to_string()])
            .args(["--sizelimit", &len.to_string()])
            .arg(file));
        assert!(
            out.status.success(),
            "losetup (loop devices are needed for this test, run as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn a_linear_logical_volume_in_two_pieces_reads_as_debugfs_reads_its_image() {
    assert!(
        Path::new("/usr/sbin/lvcreate").exists() || Path::new("/sbin/lvcreate").exists(),
        "lvcreate is missing: scripts/setup.sh installs Debian's lvm2"
    );
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let (img, root) = ext4_image(w, 64);
    // A GPT disk: a small ext4 /boot-like partition, then an LVM partition of 96 MiB.
    let boot_src = w.join("boot-src");
    std::fs::create_dir(&boot_src).expect("mkdir");
    std::fs::write(
        boot_src.join("grub.cfg"),
        "linux /vmlinuz root=/dev/mapper/cairn--vg-root\n",
    )
    .expect("write");
    let boot = w.join("boot.img");
    ok(Command::new("mkfs.ext4")
        .args(["-q", "-d"])
        .arg(&boot_src)
        .arg(&boot)
        .arg("8M"));
    let raw = disk(
        w,
        112,
        "label: gpt\nstart=2048, size=16384, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n\
         start=18432, size=196608, type=E6D6D379-F507-44C2-A23C-238F2A3DF928\n",
        &[(&boot, 1)],
    );
    let (pv_at, pv_len) = (18432u64 * 512, 196_608u64 * 512);
    {
        let dev = Loop::new(&raw, pv_at, pv_len);
        let d = dev.0.as_str();
        lvm(&["pvcreate", "-q", d]);
        lvm(&["vgcreate", "-q", "-s", "4M", "cairn-vg", d]);
        // root gets 8 MiB, other 12 MiB after it, then root 64 MiB more after that: root
        // lies in two pieces.
        lvm(&[
            "lvcreate", "-q", "-an", "-Zn", "-L", "8M", "-n", "root", "cairn-vg",
        ]);
        lvm(&[
            "lvcreate", "-q", "-an", "-Zn", "-L", "12M", "-n", "other", "cairn-vg",
        ]);
        lvm(&["lvextend", "-q", "-L", "72M", "cairn-vg/root"]);
        // Where LVM says root's extents are: the image goes there, piece by piece.
        let pe_start: u64 = lvm(&[
            "pvs",
            "--noheadings",
            "--nosuffix",
            "--units",
            "b",
            "-o",
            "pe_start",
            d,
        ])
        .trim()
        .parse()
        .expect("pe_start");
        let segments = lvm(&[
            "lvs",
            "--noheadings",
            "--segments",
            "--nosuffix",
            "--units",
            "b",
            "-o",
            "seg_start_pe,seg_size_pe,seg_pe_ranges,vg_extent_size",
            "cairn-vg/root",
        ]);
        let image = read(&img);
        let mut pieces = 0;
        for line in segments.lines().filter(|l| !l.trim().is_empty()) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (start, count): (u64, u64) =
                (f[0].parse().expect("start"), f[1].parse().expect("size"));
            let first: u64 = f[2]
                .rsplit(':')
                .next()
                .and_then(|r| r.split('-').next())
                .and_then(|n| n.parse().ok())
                .expect("pe range");
            let extent: u64 = f[3].parse().expect("extent size");
            let from = (start * extent) as usize;
            let to = (((start + count) * extent) as usize).min(image.len());
            if from < to {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&raw)
                    .expect("open");
                std::os::unix::fs::FileExt::write_all_at(
                    &f,
                    &image[from..to],
                    pv_at + pe_start + first * extent,
                )
                .expect("write");
            }
            pieces += 1;
        }
        assert_eq!(pieces, 2, "root in two pieces: {segments}");
    }
    let store = TestStore::new("256K");
    let p = id(&store.backup("db01", "2026-11-01T02:00:00Z", "xvda", &raw, &[]));

    let table = json(&ok(&mut store.cmd(&["ls", "--json", &p])));
    let parts = table["partitions"].as_array().expect("parts");
    let names: Vec<&str> = parts.iter().filter_map(|p| p["name"].as_str()).collect();
    // Logical volumes in their group's order (the order they were made in).
    assert_eq!(
        names,
        ["p1", "p2", "cairn--vg-root", "cairn--vg-other"],
        "{table}"
    );
    assert_eq!(parts[1]["filesystem"], "LVM2 member");
    assert_eq!(parts[2]["filesystem"], "ext4", "{table}");
    assert_eq!(parts[2]["size"], 72u64 << 20);
    assert_eq!(parts[2]["label"], "root");
    // Its files, as the folder the image was made from holds them (the second piece holds
    // most of them: the 10 000-file folder, the 3 MB file).
    for file in [
        "etc/hostname",
        "big.bin",
        "sparse.bin",
        "many/f09999",
        "ünïcode näme.txt",
    ] {
        let got = run(&mut store.cmd(&["cat", &format!("{p}:cairn--vg-root/{file}")]));
        assert!(
            got.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&got.stderr)
        );
        assert!(got.stdout == read(&root.join(file)), "{file}");
    }
    let many = json(&ok(&mut store.cmd(&[
        "ls",
        "--json",
        &format!("{p}:cairn--vg-root/many"),
    ])));
    assert_eq!(many.as_array().map(Vec::len), Some(10_000));
    // The LV by its name alone, as the GPT name works for partitions.
    assert_eq!(
        ok(&mut store.cmd(&["cat", &format!("{p}:root/etc/hostname")])),
        "web01\n"
    );
    assert!(ok(&mut store.cmd(&["cat", &format!("{p}:p1/grub.cfg")])).contains("cairn--vg-root"));

    // One byte of the metadata text changed: its CRC says so; /boot still reads.
    let mut bytes = read(&raw);
    let vg_text = bytes[pv_at as usize..(pv_at + (1 << 20)) as usize]
        .windows(12)
        .rposition(|w| w == b"cairn-vg {\ni")
        .expect("metadata text")
        + pv_at as usize;
    bytes[vg_text + 2] ^= 0x20;
    let damaged = w.join("damaged.raw");
    std::fs::write(&damaged, &bytes).expect("write");
    let q = id(&store.backup("db01", "2026-11-02T02:00:00Z", "xvda", &damaged, &[]));
    let table = json(&ok(&mut store.cmd(&["ls", "--json", &q])));
    let kind = table["partitions"][1]["type"].as_str().expect("type");
    assert!(
        kind.contains("LVM metadata does not read") && kind.contains("CRC"),
        "{table}"
    );
    assert_eq!(
        table["partitions"].as_array().map(Vec::len),
        Some(2),
        "{table}"
    );
    assert!(ok(&mut store.cmd(&["cat", &format!("{q}:p1/grub.cfg")])).contains("linux"));
}
