//! The readers under hostile images: file systems and partition tables made by the real tools
//! (`mkfs.ext4 -d`, `mkfs.vfat` + `mcopy`, `mkntfs` + `ntfscp`, `sfdisk`), then damaged at
//! random, deterministically (bytes flipped in their metadata, counts and sizes set huge, the
//! image cut short), thousands of times. Each damaged image is opened, walked and read whole
//! within bounds; every outcome may be an error, none a panic or a hang (each case runs on a
//! thread given 30 s, and a failure names the case to replay it).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cairn_files::{DiskRead, EntryKind, FileSystem, Slice};

/// A deterministic stream of numbers (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn run(c: &mut Command) {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("{c:?}: {e} (scripts/setup.sh installs the tools)"));
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A folder with what a root file system holds: folders, a symlink, many small files, a
/// larger one.
fn source(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("etc/deep/er")).expect("mkdir");
    std::fs::write(src.join("etc/hostname"), "web01\n").expect("write");
    std::fs::write(src.join("etc/deep/er/file"), "x".repeat(5000)).expect("write");
    std::os::unix::fs::symlink("etc/hostname", src.join("link")).expect("symlink");
    for i in 0..300 {
        std::fs::write(src.join(format!("f{i:03}.txt")), format!("{i}\n")).expect("write");
    }
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 / 3) as u8).collect();
    std::fs::write(src.join("big.bin"), big).expect("write");
    src
}

fn ext4(dir: &Path, src: &Path) -> Vec<u8> {
    let img = dir.join("ext4.img");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-d"])
        .arg(src)
        .arg(&img)
        .arg("8M"));
    std::fs::read(img).expect("read")
}

fn fat(dir: &Path, src: &Path) -> Vec<u8> {
    let img = dir.join("fat.img");
    run(Command::new("mkfs.vfat")
        .arg("-C")
        .arg(&img)
        .arg("8192")
        .stdout(std::process::Stdio::null()));
    for entry in ["etc", "big.bin", "f001.txt", "f299.txt"] {
        run(Command::new("mcopy")
            .args(["-s", "-i"])
            .arg(&img)
            .arg(src.join(entry))
            .arg("::/"));
    }
    std::fs::read(img).expect("read")
}

fn ntfs(dir: &Path, src: &Path) -> Vec<u8> {
    let img = dir.join("ntfs.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(8 << 20))
        .expect("image");
    run(Command::new("mkntfs").args(["-q", "-F", "-f"]).arg(&img));
    for entry in ["big.bin", "f001.txt", "f299.txt"] {
        run(Command::new("ntfscp")
            .arg("-q")
            .arg(&img)
            .arg(src.join(entry))
            .arg(entry));
    }
    std::fs::read(img).expect("read")
}

/// A disk of `mib` MiB holding `part` at 1 MiB, under the table `sfdisk` makes of `script`.
fn disk(dir: &Path, mib: u64, script: &str, part: &[u8]) -> Vec<u8> {
    let raw = dir.join("disk.raw");
    std::fs::File::create(&raw)
        .and_then(|f| f.set_len(mib << 20))
        .expect("disk");
    let mut child = Command::new("sfdisk")
        .arg("-q")
        .arg(&raw)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), script.as_bytes())
        .expect("script");
    assert!(child.wait().expect("sfdisk").success());
    let mut bytes = std::fs::read(&raw).expect("read");
    bytes[1 << 20..(1 << 20) + part.len()].copy_from_slice(part);
    bytes
}

/// Everything a reader of the file system on `slice` may be asked: opened, every folder
/// listed and every file read, at most 5000 entries, 64 deep, 2 MiB a file.
fn walk_all(slice: Slice) {
    let Ok(fs) = cairn_files::fs::open(slice) else {
        return;
    };
    let mut budget = 5000usize;
    walk(&*fs, "/", 0, &mut budget);
}

fn walk(fs: &dyn FileSystem, dir: &str, depth: usize, budget: &mut usize) {
    let _ = fs.entry(dir);
    let Ok(entries) = fs.list(dir) else {
        return;
    };
    for e in entries {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        let path = format!("{}/{}", dir.trim_end_matches('/'), e.name);
        match e.kind {
            EntryKind::Dir if depth < 64 => walk(fs, &path, depth + 1, budget),
            EntryKind::File => {
                if let Ok(mut f) = fs.open_file(&path) {
                    let mut buf = vec![0u8; 64 << 10];
                    let mut read = 0usize;
                    while read < 2 << 20 {
                        match std::io::Read::read(&mut f, &mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => read += n,
                        }
                    }
                    // A seek back, as `mount` does.
                    let _ = std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(1));
                    let _ = std::io::Read::read(&mut f, &mut buf);
                }
            }
            _ => {}
        }
    }
}

/// A copy of `image` damaged by case `seed`: bytes flipped in its first `metadata` bytes (or
/// its last sectors, where a GPT keeps its backup), a 32-bit field set huge, or cut short.
fn damaged(image: &[u8], seed: u64, metadata: usize) -> Vec<u8> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut bytes = image.to_vec();
    let region = metadata.min(bytes.len());
    match rng.below(4) {
        0 | 1 => {
            for _ in 0..=rng.below(16) {
                let at = rng.below(region as u64) as usize;
                bytes[at] ^= 1 << rng.below(8);
            }
        }
        2 => {
            let at = (rng.below(region as u64 / 4) * 4) as usize;
            let huge =
                [0xFFFF_FFFFu32, 0x8000_0000, 0x7FFF_FFFF, 0x0001_0000][rng.below(4) as usize];
            if at + 4 <= bytes.len() {
                bytes[at..at + 4].copy_from_slice(&huge.to_le_bytes());
            }
        }
        _ => {
            let keep = rng.below(bytes.len() as u64) as usize;
            bytes.truncate(keep);
        }
    }
    if rng.below(8) == 0 {
        let tail = bytes.len().saturating_sub(33 * 512);
        if tail < bytes.len() {
            let at = tail + rng.below((bytes.len() - tail) as u64) as usize;
            bytes[at] ^= 0xFF;
        }
    }
    bytes
}

/// Runs `case` on a thread: it must end within 30 s, and not by a panic.
fn bounded(what: &str, case: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        case();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(()) => {
            worker.join().expect("the case's thread");
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            let why = worker.join().err().map(|p| {
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default()
            });
            panic!("{what} panicked: {why:?}");
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("{what} ran past 30 s (a hang?)"),
    }
}

/// Cases per image (each a damaged copy opened and walked): 300, or `CAIRN_HOSTILE_CASES` for
/// a longer search.
fn cases() -> std::ops::Range<u64> {
    let n = std::env::var("CAIRN_HOSTILE_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    0..n
}

#[test]
fn damaged_file_systems_give_errors_never_a_panic_or_a_hang() {
    let work = tempfile::tempdir().expect("tempdir");
    let src = source(work.path());
    for (name, image) in [
        ("ext4", ext4(work.path(), &src)),
        ("vfat", fat(work.path(), &src)),
        ("ntfs", ntfs(work.path(), &src)),
    ] {
        // The undamaged image reads whole first: the walk is not a no-op.
        let whole: Arc<dyn DiskRead> = Arc::new(image.clone());
        let fs = cairn_files::fs::open(Slice::new(Arc::clone(&whole), 0, whole.size()))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(fs.list("/").expect("list").len() >= 3, "{name}");
        drop(fs);
        for seed in cases() {
            let bytes = damaged(&image, seed, 256 << 10);
            bounded(&format!("{name} case {seed}"), move || {
                let disk: Arc<dyn DiskRead> = Arc::new(bytes);
                let len = disk.size();
                walk_all(Slice::new(disk, 0, len));
            });
        }
    }
}

#[test]
fn damaged_partition_tables_give_errors_never_a_panic_or_a_hang() {
    let work = tempfile::tempdir().expect("tempdir");
    let src = source(work.path());
    let part = ext4(work.path(), &src);
    for (name, script) in [
        (
            "gpt",
            "label: gpt\nstart=2048, size=16384, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n\
             start=20480, size=2048\n",
        ),
        (
            "mbr",
            "label: dos\nstart=2048, size=16384, type=83\nstart=20480, size=8192, type=5\n\
             start=22528, size=2048, type=83\nstart=26624, size=2048, type=83\n",
        ),
    ] {
        let image = disk(work.path(), 16, script, &part);
        let whole: Arc<dyn DiskRead> = Arc::new(image.clone());
        let (_, parts) = cairn_files::volumes(&whole).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(parts.len() >= 2, "{name}: {parts:?}");
        for seed in cases() {
            // The table's sectors, and the EBRs of the logical partitions.
            let mut bytes = damaged(&image, seed, 64 << 10);
            if name == "mbr" && seed % 2 == 1 {
                let ebr = if seed % 4 == 1 {
                    20480 * 512
                } else {
                    24576 * 512
                };
                let mut rng = Rng(seed + 1);
                for _ in 0..4 {
                    let at = ebr + 446 + rng.below(66) as usize;
                    if at < bytes.len() {
                        bytes[at] ^= 1 << rng.below(8);
                    }
                }
            }
            bounded(&format!("{name} case {seed}"), move || {
                let disk: Arc<dyn DiskRead> = Arc::new(bytes);
                if let Ok((_, parts)) = cairn_files::volumes(&disk) {
                    for p in parts {
                        walk_all(Slice::of_pieces(Arc::clone(&disk), p.pieces));
                    }
                }
            });
        }
    }
}

#[test]
fn an_ntfs_volume_cut_short_anywhere_is_an_error_not_a_panic() {
    // The fuzz target's first find: a boot sector cut short made the ntfs crate panic.
    let work = tempfile::tempdir().expect("tempdir");
    let src = source(work.path());
    let image = ntfs(work.path(), &src);
    for len in [
        11usize,
        100,
        511,
        512,
        513,
        4096,
        8192,
        65_536,
        1 << 20,
        4 << 20,
    ] {
        let cut = image[..len.min(image.len())].to_vec();
        bounded(&format!("ntfs cut at {len}"), move || {
            let disk: Arc<dyn DiskRead> = Arc::new(cut);
            let n = disk.size();
            walk_all(Slice::new(disk, 0, n));
        });
    }
}

#[test]
fn an_mbr_whose_entries_start_on_itself_is_refused() {
    // The fuzz target's second find: mbrman panics when every used entry starts at LBA 0.
    let mut disk = vec![0u8; 1 << 20];
    disk[510] = 0x55;
    disk[511] = 0xAA;
    disk[446 + 4] = 0x83;
    disk[446 + 12] = 8;
    let disk: Arc<dyn DiskRead> = Arc::new(disk);
    let e = cairn_files::volumes(&disk)
        .expect_err("refused")
        .to_string();
    assert!(e.contains("LBA 0"), "{e}");
}

#[test]
fn an_ext_superblock_claiming_more_than_its_volume_is_refused_before_it_is_loaded() {
    // The fuzz target's third find: ext4-view allocates a descriptor per group the superblock
    // claims (10 GiB for 2^32 of them).
    let work = tempfile::tempdir().expect("tempdir");
    let src = source(work.path());
    let mut image = ext4(work.path(), &src);
    image[1024 + 4..1024 + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    image[1024 + 0x20..1024 + 0x24].copy_from_slice(&8u32.to_le_bytes());
    let disk: Arc<dyn DiskRead> = Arc::new(image);
    let n = disk.size();
    let e = cairn_files::fs::open(Slice::new(disk, 0, n))
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("superblock") && e.contains("groups"), "{e}");
}
