//! A small bootable disk for `check-boot`'s tests, made in a few seconds from Debian's packages
//! (fetched by `scripts/setup.sh` into `~/.cache/cairn/boot`): an MBR disk whose one FAT
//! partition holds SYSLINUX, a cloud kernel and a busybox initramfs whose `/init` loads the
//! virtio disk modules, prints the disks it sees and a login prompt on the serial console.
//! Variants: a guest whose init exits (the kernel panics), a disk whose boot sector is zeroed,
//! and a GPT disk that only UEFI boots (SYSLINUX's EFI loader on an EFI system partition),
//! with or without its loader.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::ok;

/// What the guest does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guest {
    /// Comes up: prints `disks: vda vdb...`, starts the QEMU guest agent when it has its
    /// channel, listens on ports 22 (a banner) and 80 (silent) when it has a network card,
    /// writes zeros over the start of vda, prints its network interfaces (`net: lo `) and
    /// `cairnguest login: `, then runs a shell on the console.
    Boots,
    /// Its init exits: "Kernel panic - not syncing: Attempted to kill init!".
    Panics,
    /// Its boot sector is zeros: the firmware finds no bootloader.
    NoBootSector,
}

/// The folder of the kernel, modules and busybox (`CAIRN_CACHE`, else `~/.cache/cairn`).
///
/// # Panics
/// When setup has not fetched them.
#[must_use]
pub fn parts() -> PathBuf {
    let cache = std::env::var_os("CAIRN_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/cairn"),
        PathBuf::from,
    );
    let boot = cache.join("boot");
    // The version of the set scripts/setup.sh fetches (it writes it when the set is whole).
    assert!(
        std::fs::read_to_string(boot.join(".ready")).is_ok_and(|v| v.trim() == "2"),
        "{} is missing the test guest's kernel, busybox or qemu-ga: run scripts/setup.sh",
        boot.display()
    );
    boot
}

/// Makes the disk `dir/NAME.raw` (64 MiB, sparse) of `guest`: MBR, SYSLINUX, for a BIOS.
///
/// # Panics
/// When a tool fails (sfdisk, mkfs.vfat, mcopy, syslinux, cpio: scripts/setup.sh installs them).
#[must_use]
pub fn bootable_disk(dir: &Path, name: &str, guest: Guest) -> PathBuf {
    bootable_disk_with(dir, name, guest, &[])
}

/// A [`Guest::Boots`] disk whose guest, once its network card is up, tries to reach TCP port
/// `port` of its host (10.0.2.2 in qemu's user network: this machine's 127.0.0.1) and says
/// `reach host: yes` or `reach host: no` on its console.
#[must_use]
pub fn probing_disk(dir: &Path, name: &str, port: u16) -> PathBuf {
    bootable_disk_with(
        dir,
        name,
        Guest::Boots,
        &[("probe-port", port.to_string().as_bytes())],
    )
}

fn bootable_disk_with(dir: &Path, name: &str, guest: Guest, extra: &[(&str, &[u8])]) -> PathBuf {
    let work = dir.join(format!("{name}.build"));
    let initrd = initramfs_with(&work, guest, extra);
    let raw = dir.join(format!("{name}.raw"));
    blank_disk(&raw, "label: dos\nstart=2048, type=c, bootable\n");
    let fat = esp_or_boot_fs(&raw);
    for (from, to) in [
        (parts().join("vmlinuz"), "::/vmlinuz"),
        (initrd, "::/initrd.img"),
        (syslinux_cfg(&work), "::/syslinux.cfg"),
    ] {
        ok(Command::new("mcopy").args(["-i", &fat]).arg(from).arg(to));
    }
    ok(Command::new("syslinux")
        .args(["--offset", "1048576", "--install"])
        .arg(&raw));
    let mbr = std::fs::read("/usr/lib/syslinux/mbr/mbr.bin").expect("syslinux's mbr.bin");
    let mut bytes = std::fs::OpenOptions::new()
        .write(true)
        .open(&raw)
        .expect("disk");
    let code: Vec<u8> = if guest == Guest::NoBootSector {
        vec![0u8; 512]
    } else {
        mbr[..440.min(mbr.len())].to_vec()
    };
    std::io::Write::write_all(&mut bytes, &code).expect("boot sector");
    std::fs::remove_dir_all(&work).expect("clean");
    raw
}

/// Makes the disk `dir/NAME.raw` (64 MiB, sparse) of a guest that boots with UEFI only: GPT,
/// one EFI system partition holding SYSLINUX's EFI loader as `\EFI\BOOT\BOOTX64.EFI` (what
/// firmware starts on a disk with no boot entry), and no BIOS boot code at all. Without
/// `loader`, the partition holds the kernel but no `BOOTX64.EFI`: nothing for firmware to start.
///
/// # Panics
/// When a tool fails (syslinux-efi: scripts/setup.sh installs it).
#[must_use]
pub fn uefi_disk(dir: &Path, name: &str, loader: bool) -> PathBuf {
    let work = dir.join(format!("{name}.build"));
    let initrd = initramfs(&work, Guest::Boots);
    let raw = dir.join(format!("{name}.raw"));
    blank_disk(
        &raw,
        "label: gpt\nstart=2048, size=126976, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n",
    );
    let fat = esp_or_boot_fs(&raw);
    for d in ["::/EFI", "::/EFI/BOOT"] {
        ok(Command::new("mmd").args(["-i", &fat, d]));
    }
    for (from, to) in [
        (
            PathBuf::from("/usr/lib/SYSLINUX.EFI/efi64/syslinux.efi"),
            "::/EFI/BOOT/BOOTX64.EFI",
        ),
        (
            PathBuf::from("/usr/lib/syslinux/modules/efi64/ldlinux.e64"),
            "::/EFI/BOOT/ldlinux.e64",
        ),
        (syslinux_cfg(&work), "::/EFI/BOOT/syslinux.cfg"),
        (parts().join("vmlinuz"), "::/vmlinuz"),
        (initrd, "::/initrd.img"),
    ] {
        if to.ends_with(".EFI") && !loader {
            continue;
        }
        ok(Command::new("mcopy").args(["-i", &fat]).arg(from).arg(to));
    }
    std::fs::remove_dir_all(&work).expect("clean");
    raw
}

/// A sparse 64 MiB file partitioned by `script` (sfdisk's).
fn blank_disk(raw: &Path, script: &str) {
    std::fs::File::create(raw)
        .and_then(|f| f.set_len(64 << 20))
        .expect("disk");
    let mut sfdisk = Command::new("sfdisk")
        .arg("-q")
        .arg(raw)
        .stdin(Stdio::piped())
        .spawn()
        .expect("sfdisk");
    std::io::Write::write_all(&mut sfdisk.stdin.take().expect("stdin"), script.as_bytes())
        .expect("script");
    assert!(sfdisk.wait().expect("sfdisk").success());
}

/// A FAT file system on the partition at 1 MiB (to its 63 MiB end); mtools' name of it.
fn esp_or_boot_fs(raw: &Path) -> String {
    ok(Command::new("mkfs.vfat")
        .args(["--offset", "2048", "-n", "BOOT"])
        .arg(raw)
        .arg("63488")
        .stdout(Stdio::null()));
    format!("{}@@1M", raw.display())
}

/// SYSLINUX's configuration: the kernel and initramfs at the file system's root, the console
/// on the first serial port.
fn syslinux_cfg(work: &Path) -> PathBuf {
    let cfg = work.join("syslinux.cfg");
    std::fs::write(
        &cfg,
        "DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nSERIAL 0 115200\nLABEL linux\n  KERNEL /vmlinuz\n  \
         INITRD /initrd.img\n  APPEND console=ttyS0 panic=-1 quiet\n",
    )
    .expect("cfg");
    cfg
}

/// Makes the next generation of a [`Guest::Boots`] disk made by [`bootable_disk`], as a day
/// of a VM's life would: a new initramfs (holding `/generation` and 1 MiB that differs each
/// generation) over the old one, and 2 MiB of new data in `/churn.bin`. Still boots, and now
/// reads its whole disk as it does.
///
/// # Panics
/// When a tool fails.
pub fn next_generation(raw: &Path, generation: u32) {
    let work = raw.with_extension("next.build");
    let mut blob = vec![0u8; 3 << 20];
    blake3::Hasher::new()
        .update(format!("cairn guest generation {generation}").as_bytes())
        .finalize_xof()
        .fill(&mut blob);
    // It reads its whole disk as it boots (as an OS reads what it loads), the benchmark's
    // measure of reading a point over NBD.
    let initrd = initramfs_with(
        &work,
        Guest::Boots,
        &[("generation", &blob[..1 << 20]), ("read-disk", b"")],
    );
    let churn = work.join("churn.bin");
    std::fs::write(&churn, &blob[1 << 20..]).expect("churn");
    let fat = format!("{}@@1M", raw.display());
    for (from, to) in [(initrd, "::/initrd.img"), (churn, "::/churn.bin")] {
        ok(Command::new("mcopy")
            .args(["-o", "-i", &fat])
            .arg(from)
            .arg(to));
    }
    std::fs::remove_dir_all(&work).expect("clean");
}

/// The guest's initramfs (busybox, the virtio modules, its `/init`), in `work`.
fn initramfs(work: &Path, guest: Guest) -> PathBuf {
    initramfs_with(work, guest, &[])
}

/// As [`initramfs`], with `extra` files at its root.
fn initramfs_with(work: &Path, guest: Guest, extra: &[(&str, &[u8])]) -> PathBuf {
    let parts = parts();
    let ir = work.join("initramfs");
    for d in ["bin", "proc", "sys", "dev", "modules"] {
        std::fs::create_dir_all(ir.join(d)).expect("mkdir");
    }
    for (name, bytes) in extra {
        std::fs::write(ir.join(name), bytes).expect("extra file");
    }
    // The QEMU guest agent and the libraries it loads.
    for d in ["usr/sbin", "lib/x86_64-linux-gnu", "lib64", "tmp"] {
        std::fs::create_dir_all(ir.join(d)).expect("mkdir");
    }
    std::fs::copy(parts.join("qga/qemu-ga"), ir.join("usr/sbin/qemu-ga")).expect("qemu-ga");
    for lib in std::fs::read_dir(parts.join("qga/lib")).expect("qemu-ga's libraries") {
        let lib = lib.expect("entry").path();
        let name = lib.file_name().expect("name").to_owned();
        let to = if name.to_string_lossy().starts_with("ld-linux") {
            ir.join("lib64").join(name)
        } else {
            ir.join("lib/x86_64-linux-gnu").join(name)
        };
        std::fs::copy(&lib, to).expect("library");
    }
    // What answers on port 22 once the guest's network is up (a banner, as SSH sends), and on
    // port 80 (nothing until asked, as HTTP or RDP).
    std::fs::write(
        ir.join("bin/banner"),
        "#!/bin/busybox sh\necho SSH-2.0-cairnguest\n",
    )
    .expect("banner");
    std::fs::write(ir.join("bin/quiet"), "#!/bin/busybox sh\nread line\n").expect("quiet");
    std::fs::copy(parts.join("busybox"), ir.join("bin/busybox")).expect("busybox");
    let mut modules = Vec::new();
    // In the order their dependencies need.
    for m in [
        "virtio_ring",
        "virtio",
        "virtio_pci_modern_dev",
        "virtio_pci_legacy_dev",
        "virtio_pci",
        "virtio_blk",
        "virtio_console",
        "failover",
        "net_failover",
        "virtio_net",
    ] {
        let from = parts.join(format!("modules/{m}.ko"));
        if from.is_file() {
            std::fs::copy(&from, ir.join(format!("modules/{m}.ko"))).expect("module");
            modules.push(format!("/bin/busybox insmod /modules/{m}.ko"));
        }
    }
    // A guest that comes up first writes zeros over the start of its own boot disk (the
    // check's overlay must take them: the point never changes).
    let end = match guest {
        Guest::Panics => "echo 'init: giving up'\nexit 1\n",
        _ => {
            "for p in /sys/class/virtio-ports/*; do if [ \"$(/bin/busybox cat $p/name \
              2>/dev/null)\" = org.qemu.guest_agent.0 ]; then /usr/sbin/qemu-ga -m virtio-serial \
              -p /dev/${p##*/} -t /tmp -f /tmp/qga.pid & fi; done\n\
             if [ -e /sys/class/net/eth0 ]; then /bin/busybox ifconfig lo up; /bin/busybox \
              ifconfig eth0 10.0.2.15 netmask 255.255.255.0 up; if [ -f /probe-port ]; then if \
              /bin/busybox nc -w 3 10.0.2.2 $(/bin/busybox cat /probe-port) </dev/null; then \
              echo 'reach host: yes'; else echo 'reach host: no'; fi; fi; /bin/busybox nc -ll -p 22 -e \
              /bin/banner & /bin/busybox nc -ll -p 80 -e /bin/quiet & fi\n\
             if [ -f /read-disk ]; then /bin/busybox dd if=/dev/vda of=/dev/null bs=1M \
              2>/dev/null && echo 'guest: read vda'; fi\n\
             if [ -b /dev/vda ]; then /bin/busybox dd if=/dev/zero of=/dev/vda bs=65536 \
              count=64 2>/dev/null && /bin/busybox sync && echo 'guest: wrote 4 MiB of zeros \
              over vda'; fi\necho \"net: $(/bin/busybox ls /sys/class/net | /bin/busybox tr \
              '\\n' ' ')\"\necho\necho 'cairnguest login: '\nexec /bin/busybox sh -i\n"
        }
    };
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\n\
         /bin/busybox mount -t sysfs sys /sys\n/bin/busybox mount -t devtmpfs dev /dev\n{}\n\
         echo \"cairn test guest: up\"\necho \"disks: $(/bin/busybox ls /sys/block | \
         /bin/busybox tr '\\n' ' ')\"\n{end}",
        modules.join("\n")
    );
    std::fs::write(ir.join("init"), init).expect("init");
    ok(Command::new("chmod")
        .args(["755"])
        .arg(ir.join("init"))
        .arg(ir.join("bin/banner"))
        .arg(ir.join("bin/quiet"))
        .arg(ir.join("usr/sbin/qemu-ga")));
    let initrd = work.join("initrd.img");
    ok(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
        ir.display(),
        initrd.display()
    )));
    initrd
}

/// A data disk of `mib` MiB (zeros but for a marker at its start), for a run of several disks.
#[must_use]
pub fn data_disk(dir: &Path, name: &str, mib: u64) -> PathBuf {
    let raw = dir.join(format!("{name}.raw"));
    let f = std::fs::File::create(&raw).expect("disk");
    f.set_len(mib << 20).expect("len");
    std::os::unix::fs::FileExt::write_all_at(&f, b"cairn data disk", 0).expect("write");
    raw
}
