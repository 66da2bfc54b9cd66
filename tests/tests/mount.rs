//! `cairn mount`: a point as a read-only folder (FUSE), read by the system's own tools and
//! compared with the image it was backed up from: the whole disk, an EFI FAT partition, an
//! ext4 root, a swap partition as raw bytes. Every write is refused; the mount ends on
//! `fusermount -u` and on Ctrl-C, and refuses a folder that is not empty.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use cairn_tests::images::{disk, ext4_image, tree};
use cairn_tests::{TestStore, id, ok, read, refused, run, wait_until};

/// A `cairn mount` running in the background; unmounted and ended when dropped (a failed
/// test leaves no mount behind).
struct Mount {
    child: Option<Child>,
    dir: PathBuf,
    /// Its standard error.
    log: PathBuf,
}

impl Mount {
    fn start(store: &TestStore, point: &str, dir: &Path) -> Self {
        let log = dir.with_extension("log");
        let mut child = store
            .cmd(&["mount", point])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("cairn mount");
        wait_until("the mount to show disk.raw", || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("cairn mount ended ({status}): {}", said(&log));
            }
            dir.join("disk.raw").exists()
        });
        Self {
            child: Some(child),
            dir: dir.to_path_buf(),
            log,
        }
    }

    /// What it said so far.
    fn said(&self) -> String {
        said(&self.log)
    }

    /// Waits for `cairn mount` to end (after an unmount from outside or a signal): its
    /// status and standard error.
    fn wait(mut self) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        let status = child.wait().expect("wait");
        (status, self.said())
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("fusermount")
                .arg("-u")
                .arg(&self.dir)
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn said(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Whether `dir` is a mount point now (as /proc/mounts lists them).
fn mounted(dir: &Path) -> bool {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_to_string("/proc/mounts")
        .expect("/proc/mounts")
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(dir.to_str().expect("utf-8")))
}

/// `(kind, size, hash)` of each entry: FAT keeps no modes.
type Shape = std::collections::BTreeMap<String, (char, u64, String)>;

fn shape(dir: &Path) -> Shape {
    tree(dir)
        .into_iter()
        .map(|(k, (kind, _, size, _, hash))| (k, (kind, size, hash)))
        .collect()
}

#[test]
fn a_mounted_point_reads_as_its_image_and_refuses_every_write() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let efi_src = w.join("efi-src");
    std::fs::create_dir_all(efi_src.join("EFI/BOOT")).expect("mkdir");
    std::fs::write(efi_src.join("EFI/BOOT/BOOTX64.EFI"), vec![0x4d; 1_500_000]).expect("w");
    std::fs::write(efi_src.join("EFI/BOOT/grub.cfg"), "set timeout=5\n").expect("write");
    let fat = w.join("efi.img");
    ok(Command::new("mkfs.vfat")
        .args(["-n", "EFI", "-C"])
        .arg(&fat)
        .arg("16384")
        .stdout(Stdio::null()));
    ok(Command::new("mcopy")
        .args(["-s", "-i"])
        .arg(&fat)
        .arg(efi_src.join("EFI"))
        .arg("::/"));
    let (ext, root) = ext4_image(w, 64);
    let swap = w.join("swap.img");
    std::fs::File::create(&swap)
        .and_then(|f| f.set_len(8 << 20))
        .expect("swap");
    ok(Command::new("mkswap").arg(&swap).stdout(Stdio::null()));
    let raw = disk(
        w,
        90,
        "label: gpt\n\
         start=2048, size=32768, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"EFI\"\n\
         start=34816, size=131072, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n\
         start=165888, size=16384, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F\n",
        &[(&fat, 1), (&ext, 17), (&swap, 81)],
    );
    let store = TestStore::new("256K");
    let p = id(&store.backup("web01", "2026-11-01T02:00:00Z", "xvda", &raw, &[]));
    let dir = w.join("mnt");
    std::fs::create_dir(&dir).expect("mnt");

    let mount = Mount::start(&store, &p, &dir);
    let mut top: Vec<String> = std::fs::read_dir(&dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    top.sort();
    assert_eq!(top, ["disk.raw", "p1", "p2", "p3.raw"]);
    // The whole disk, and the partition cairn does not read, byte for byte.
    assert!(read(&dir.join("disk.raw")) == read(&raw), "disk.raw");
    assert!(read(&dir.join("p3.raw")) == read(&swap), "p3.raw");
    // Every file, folder and symlink of the ext4 root as the folder it was made from holds
    // it (with lost+found, which mkfs adds); the EFI partition as mtools put it there.
    let mut in_mount = tree(&dir.join("p2"));
    assert_eq!(
        in_mount.remove("lost+found").map(|e| e.0),
        Some('d'),
        "lost+found"
    );
    assert_eq!(in_mount, tree(&root), "ext4 through the mount");
    assert_eq!(
        shape(&dir.join("p1")),
        shape(&efi_src),
        "FAT through the mount"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("p2/hostname-link")).expect("through the link"),
        "web01\n"
    );
    // Reads anywhere, backwards too (a seek back in the file's reader).
    let big = read(&root.join("big.bin"));
    let mut f = std::fs::File::open(dir.join("p2/big.bin")).expect("open");
    for at in [2_000_000u64, 1_234_567, 17, 2_999_000] {
        let mut buf = vec![0u8; 1000];
        f.seek(SeekFrom::Start(at)).expect("seek");
        f.read_exact(&mut buf).expect("read");
        assert!(buf == big[at as usize..at as usize + 1000], "at {at}");
    }
    drop(f);
    // Another user reaches nothing of it (FUSE's default: the mounting user only), though
    // every folder on the way and the file's mode would let them.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(w, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let other = run(Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "cat",
        ])
        .arg(dir.join("p2/etc/hostname")));
    assert!(
        !other.status.success(),
        "another user read the mount: {}",
        String::from_utf8_lossy(&other.stdout)
    );
    // Nothing can be written, made, renamed or removed.
    let p2 = dir.join("p2");
    let refusals = [
        std::fs::write(p2.join("etc/hostname"), "evil\n").err(),
        std::fs::File::create(p2.join("new")).err(),
        std::fs::create_dir(p2.join("newdir")).err(),
        std::fs::remove_file(p2.join("etc/hostname")).err(),
        std::fs::rename(p2.join("etc/hostname"), p2.join("moved")).err(),
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("disk.raw"))
            .err(),
    ];
    for (k, e) in refusals.iter().enumerate() {
        let e = e.as_ref().unwrap_or_else(|| panic!("write {k} accepted"));
        assert_eq!(
            e.raw_os_error(),
            Some(30),
            "write {k}: {e} (EROFS expected)"
        );
    }
    assert_eq!(read(&p2.join("etc/hostname")), b"web01\n");
    // Unmounted from outside: `cairn mount` sees it and ends.
    ok(Command::new("fusermount").arg("-u").arg(&dir));
    let (status, err) = mount.wait();
    assert!(
        status.success() && err.contains("was unmounted"),
        "{status}: {err}"
    );
    assert!(!mounted(&dir), "still mounted");

    // Ctrl-C while a program works inside: said, and the mount stays up for it; Ctrl-C once
    // it is gone: unmounted, then ended.
    let mount = Mount::start(&store, &p, &dir);
    assert!(mounted(&dir));
    let mut inside = Command::new("sleep")
        .arg("600")
        .current_dir(dir.join("p2/etc"))
        .spawn()
        .expect("sleep");
    ok(Command::new("kill").args(["-INT", &mount.pid().to_string()]));
    wait_until("cairn mount to say the folder is busy", || {
        mount.said().contains("Ctrl-C again")
    });
    assert!(mounted(&dir), "unmounted under a running program");
    assert_eq!(read(&dir.join("p2/etc/hostname")), b"web01\n");
    inside.kill().expect("kill sleep");
    inside.wait().expect("sleep");
    ok(Command::new("kill").args(["-INT", &mount.pid().to_string()]));
    let (status, err) = mount.wait();
    assert!(
        status.success() && err.contains("unmounted"),
        "{status}: {err}"
    );
    assert!(!mounted(&dir), "still mounted after Ctrl-C");
    assert_eq!(std::fs::read_dir(&dir).expect("ls").count(), 0);

    // A folder that holds something is not mounted over.
    std::fs::write(dir.join("mine.txt"), "keep me\n").expect("write");
    refused(
        &run(store.cmd(&["mount", &p]).arg(&dir)),
        &["mnt", "not empty"],
    );
    assert_eq!(read(&dir.join("mine.txt")), b"keep me\n");
}
