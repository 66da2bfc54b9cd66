//! Disk images for the tests of files inside points, made by the real tools: `mkfs.ext4 -d`
//! of a folder that holds what trips readers up, partition tables by `sfdisk`; and a folder's
//! tree as names, kinds, modes, sizes, link targets and content hashes, to compare two.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{ok, read};

/// `mkfs.ext4 -d` of a folder holding Unicode names, a name that is HTML markup, a symlink, hard links, a sparse file, a
/// folder of 10 000 files and a deep path: the image `part.img` of `mib` MiB, and the folder.
pub fn ext4_image(dir: &Path, mib: u32) -> (PathBuf, PathBuf) {
    let root = dir.join("root");
    let deep = root.join(
        (0..24)
            .map(|i| format!("d{i}"))
            .collect::<Vec<_>>()
            .join("/"),
    );
    std::fs::create_dir_all(&deep).expect("deep");
    std::fs::write(deep.join("bottom.txt"), "the bottom\n").expect("write");
    std::fs::create_dir_all(root.join("etc")).expect("etc");
    std::fs::write(root.join("etc/hostname"), "web01\n").expect("write");
    std::fs::write(root.join("ünïcode näme.txt"), "héllo wörld\n").expect("write");
    std::fs::write(root.join("日本語.txt"), "こんにちは\n").expect("write");
    // A name that is markup: shown as text by every page, never run.
    std::fs::write(root.join("<img src=x onerror=alert(1)>.txt"), "x\n").expect("write");
    std::os::unix::fs::symlink("etc/hostname", root.join("hostname-link")).expect("symlink");
    std::fs::hard_link(root.join("etc/hostname"), root.join("hostname-hard")).expect("link");
    let sparse = std::fs::File::create(root.join("sparse.bin")).expect("sparse");
    sparse.set_len(24 << 20).expect("len");
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"in the middle", 12 << 20).expect("w");
    let random: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(root.join("big.bin"), random).expect("write");
    let many = root.join("many");
    std::fs::create_dir(&many).expect("many");
    for i in 0..10_000 {
        std::fs::write(many.join(format!("f{i:05}")), format!("{i}\n")).expect("write");
    }
    let img = dir.join("part.img");
    ok(Command::new("mkfs.ext4")
        .args(["-q", "-L", "rootfs", "-N", "16384", "-d"])
        .arg(&root)
        .arg(&img)
        .arg(format!("{mib}M")));
    (img, root)
}

/// A raw disk of `mib` MiB with the table `sfdisk` makes of `script`, and `parts` (image,
/// start in MiB) written in place.
pub fn disk(dir: &Path, mib: u32, script: &str, parts: &[(&Path, u64)]) -> PathBuf {
    let raw = dir.join("disk.raw");
    let f = std::fs::File::create(&raw).expect("disk");
    f.set_len(u64::from(mib) << 20).expect("len");
    drop(f);
    let mut c = Command::new("sfdisk");
    c.arg("-q").arg(&raw).stdin(std::process::Stdio::piped());
    let mut child = c
        .spawn()
        .expect("sfdisk (fdisk, installed by scripts/setup.sh)");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), script.as_bytes())
        .expect("script");
    assert!(child.wait().expect("sfdisk").success());
    for (img, start) in parts {
        ok(Command::new("dd")
            .arg(format!("if={}", img.display()))
            .arg(format!("of={}", raw.display()))
            .args(["bs=1M", "conv=notrunc", "status=none"])
            .arg(format!("seek={start}")));
    }
    raw
}

/// Every entry under `dir`: relative path -> (kind, mode, size, symlink target, content hash).
pub fn tree(dir: &Path) -> BTreeMap<String, (char, u32, u64, String, String)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    for f in walk(dir) {
        let m = std::fs::symlink_metadata(&f).expect("stat");
        let rel = f.strip_prefix(dir).expect("under").display().to_string();
        let (kind, target, hash) = if m.file_type().is_symlink() {
            (
                'l',
                std::fs::read_link(&f).expect("link").display().to_string(),
                String::new(),
            )
        } else if m.is_dir() {
            ('d', String::new(), String::new())
        } else {
            (
                'f',
                String::new(),
                blake3::hash(&read(&f)).to_hex().to_string(),
            )
        };
        let size = if kind == 'f' { m.len() } else { 0 };
        out.insert(rel, (kind, m.mode() & 0o7777, size, target, hash));
    }
    out
}

/// Every path under `dir`, each folder before what it holds.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("dir").flatten() {
        let p = e.path();
        out.push(p.clone());
        if e.file_type().expect("type").is_dir() {
            out.extend(walk(&p));
        }
    }
    out
}

/// A GPT disk of 80 MiB whose one partition, at 1 MiB, is a 64 MiB [`ext4_image`]: the
/// image and the disk.
pub fn one_linux_partition(dir: &Path) -> (PathBuf, PathBuf) {
    let (img, _) = ext4_image(dir, 64);
    let raw = disk(
        dir,
        80,
        "label: gpt\nstart=2048, size=131072, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n",
        &[(&img, 1)],
    );
    (img, raw)
}
