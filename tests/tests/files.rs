//! Files inside points (`cairn ls`, `cairn cat`), read in place from the store, against what
//! `debugfs` reads from the same ext4 image: a GPT disk made with `sfdisk` and `mkfs.ext4 -d`,
//! an MBR disk with logical partitions, damaged tables and file systems, an encrypted store.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use cairn_tests::images::{disk, ext4_image, one_linux_partition, tree};
use cairn_tests::{TestStore, id, json, ok, read, refused, run};

/// What `debugfs -R "ls -p DIR"` lists: name -> (mode, uid, gid, size; none for folders).
fn debugfs_ls(img: &Path, dir: &str) -> BTreeMap<String, (u32, u32, u32, Option<u64>)> {
    let out = ok(Command::new("debugfs")
        .arg("-R")
        .arg(format!("ls -p \"{dir}\""))
        .arg(img)
        .stderr(std::process::Stdio::null()));
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('/').collect();
            (f.len() >= 7 && f[5] != "." && f[5] != "..").then(|| {
                let mode = u32::from_str_radix(f[2], 8).expect("mode");
                (
                    f[5].to_owned(),
                    (
                        mode,
                        f[3].parse().expect("uid"),
                        f[4].parse().expect("gid"),
                        f[6].parse().ok(),
                    ),
                )
            })
        })
        .collect()
}

/// `cairn ls --json POINT:SPEC` as name -> (mode, uid, gid, size).
fn cairn_ls(store: &TestStore, spec: &str) -> BTreeMap<String, (u32, u32, u32, u64, String)> {
    json(&ok(&mut store.cmd(&["ls", "--json", spec])))
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().expect("name").to_owned(),
                (
                    u32::from_str_radix(e["mode"].as_str().expect("mode"), 8).expect("octal"),
                    e["uid"].as_u64().expect("uid") as u32,
                    e["gid"].as_u64().expect("gid") as u32,
                    e["size"].as_u64().expect("size"),
                    e["type"].as_str().expect("type").to_owned(),
                ),
            )
        })
        .collect()
}

fn cat(store: &TestStore, spec: &str) -> Vec<u8> {
    let out = run(&mut store.cmd(&["cat", spec]));
    assert!(
        out.status.success(),
        "cat {spec}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn every_entry_and_file_of_a_gpt_disk_reads_as_debugfs_reads_it() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let (img, root) = ext4_image(w, 96);
    let raw = disk(
        w,
        112,
        "label: gpt\nstart=2048, size=8192, type=21686148-6449-6E6F-744E-656564454649, name=\"bios\"\n\
         start=10240, size=196608, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"rootfs\"\n",
        &[(&img, 5)],
    );
    let store = TestStore::new("256K");
    let p = id(&store.backup("web01", "2026-11-01T02:00:00Z", "xvda", &raw, &[]));

    // The partition table, each file system named.
    let table = json(&ok(&mut store.cmd(&["ls", "--json", &p])));
    assert_eq!(table["scheme"], "gpt", "{table}");
    let parts = table["partitions"].as_array().expect("parts");
    assert_eq!(parts.len(), 2, "{table}");
    assert_eq!(parts[1]["name"], "p2");
    assert_eq!(parts[1]["label"], "rootfs");
    assert_eq!(parts[1]["filesystem"], "ext4");
    assert_eq!(parts[1]["start"], 5u64 << 20);
    assert_eq!(parts[0]["filesystem"], "unknown");

    // Every folder lists as debugfs lists it: names, modes, owners, sizes.
    let deep: String = (0..24).map(|i| format!("/d{i}")).collect();
    for dir in ["/", "/etc", "/many", deep.as_str()] {
        let want = debugfs_ls(&img, dir);
        let got = cairn_ls(&store, &format!("{p}:p2{dir}"));
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{dir}"
        );
        for (name, (mode, uid, gid, size)) in &want {
            let g = &got[name];
            assert_eq!(
                (g.0, g.1, g.2),
                (*mode & 0o7777, *uid, *gid),
                "{dir}/{name}"
            );
            if let Some(size) = size {
                assert_eq!(g.3, *size, "{dir}/{name}");
            }
        }
    }
    assert_eq!(cairn_ls(&store, &format!("{p}:p2/many")).len(), 10_000);

    // Every file reads as the folder held it, and as debugfs reads it.
    for file in [
        "etc/hostname",
        "ünïcode näme.txt",
        "日本語.txt",
        "hostname-hard",
        "sparse.bin",
        "big.bin",
        "many/f04321",
    ] {
        let got = cat(&store, &format!("{p}:p2/{file}"));
        assert_eq!(got, read(&root.join(file)), "{file}");
    }
    assert_eq!(
        cat(&store, &format!("{p}:p2{deep}/bottom.txt")),
        b"the bottom\n"
    );
    // By the partition's GPT name; a symlink shown with its target.
    assert_eq!(cat(&store, &format!("{p}:rootfs/etc/hostname")), b"web01\n");
    let long = ok(&mut store.cmd(&["ls", "-l", &format!("{p}:p2/")]));
    assert!(long.contains("hostname-link -> etc/hostname"), "{long}");
    assert!(long.contains("lrwxrwxrwx"), "{long}");
    // find: by glob over every partition cairn reads, by type, by time.
    let found = ok(&mut store.cmd(&["find", &p, "*.txt"]));
    let found: Vec<&str> = found.lines().collect();
    assert_eq!(
        found,
        [
            "p2/<img src=x onerror=alert(1)>.txt".to_owned(),
            "p2/ünïcode näme.txt".to_owned(),
            "p2/日本語.txt".to_owned(),
            format!("p2{deep}/bottom.txt")
        ],
        "{found:?}"
    );
    let dirs = json(&ok(&mut store.cmd(&[
        "find",
        "--json",
        "--type",
        "d",
        &format!("{p}:p2/"),
        "d2*",
    ])));
    let dirs: Vec<&str> = dirs
        .as_array()
        .expect("found")
        .iter()
        .map(|e| e["path"].as_str().expect("path"))
        .collect();
    assert_eq!(dirs.len(), 5, "d2, d20..d23: {dirs:?}");
    let none = ok(&mut store.cmd(&["find", "--newer", "2099-01-01", &p, "*"]));
    assert!(none.is_empty(), "{none}");
    // The point named by its time (a name with ':' in it) works too.
    assert_eq!(
        cat(&store, "web01/xvda@2026-11-01T02:00:00Z:p2/etc/hostname"),
        b"web01\n"
    );
}

#[test]
fn an_mbr_disk_names_its_logical_partitions_from_p5() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let (img, root) = ext4_image(w, 64);
    let raw = disk(
        w,
        96,
        "label: dos\nstart=2048, size=16384, type=83\nstart=20480, type=5\n\
         start=22528, size=131072, type=83\n",
        &[(&img, 11)],
    );
    let store = TestStore::new("256K");
    let p = id(&store.backup("db", "2026-11-01T02:00:00Z", "xvda", &raw, &[]));
    let table = json(&ok(&mut store.cmd(&["ls", "--json", &p])));
    assert_eq!(table["scheme"], "mbr", "{table}");
    let names: Vec<&str> = table["partitions"]
        .as_array()
        .expect("parts")
        .iter()
        .map(|x| x["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["p1", "p5"], "{table}");
    assert_eq!(
        cat(&store, &format!("{p}:p5/etc/hostname")),
        read(&root.join("etc/hostname"))
    );
}

#[test]
fn damaged_tables_and_file_systems_are_named_never_a_panic() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let (_, raw) = one_linux_partition(w);
    let store = TestStore::new("256K");
    let good = id(&store.backup("vm", "2026-11-01T02:00:00Z", "xvda", &raw, &[]));
    // A partition that does not exist, a folder given to cat, a path not there.
    let out = run(&mut store.cmd(&["ls", &format!("{good}:p7/etc")]));
    refused(&out, &["\"p7\" names no volume", "p1"]);
    let out = run(&mut store.cmd(&["cat", &format!("{good}:p1/etc")]));
    refused(&out, &["is a folder"]);
    let out = run(&mut store.cmd(&["cat", &format!("{good}:p1/etc/nothing")]));
    refused(&out, &["/etc/nothing"]);

    // The disk cut short: the primary GPT points past the end (and the backup is gone).
    let short = w.join("short.raw");
    std::fs::copy(&raw, &short).expect("copy");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&short)
        .and_then(|f| f.set_len(40 << 20))
        .expect("truncate");
    let cut = id(&store.backup("cut", "2026-11-01T02:00:00Z", "xvda", &short, &[]));
    let out = run(&mut store.cmd(&["ls", &cut]));
    refused(&out, &["p1", "past the disk's end"]);

    // The primary GPT header zeroed: the backup header at the disk's end names the partitions.
    let backup_only = w.join("backup-only.raw");
    let mut bytes = read(&raw);
    bytes[512..1024].fill(0);
    std::fs::write(&backup_only, &bytes).expect("write");
    let b = id(&store.backup("backup", "2026-11-01T02:00:00Z", "xvda", &backup_only, &[]));
    let table = json(&ok(&mut store.cmd(&["ls", "--json", &b])));
    assert_eq!(table["partitions"][0]["filesystem"], "ext4", "{table}");
    assert_eq!(cat(&store, &format!("{b}:p1/etc/hostname")), b"web01\n");

    // An MBR whose chain of logical partitions loops (an EBR naming itself as the next):
    // refused, not followed forever.
    std::fs::create_dir_all(w.join("loop")).expect("mkdir");
    let looped = disk(
        &w.join("loop"),
        16,
        "label: dos\nstart=2048, type=5\nstart=4096, size=2048, type=83\nstart=8192, size=2048, type=83\n",
        &[],
    );
    let mut bytes = read(&looped);
    let le =
        |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4")) as usize;
    let ext = le(&bytes, 446 + 8);
    let second = le(&bytes, ext * 512 + 446 + 16 + 8);
    let at = (ext + second) * 512 + 446 + 16;
    bytes[at + 4] = 0x05;
    bytes[at + 8..at + 12].copy_from_slice(&(second as u32).to_le_bytes());
    bytes[at + 12..at + 16].copy_from_slice(&2048u32.to_le_bytes());
    std::fs::write(&looped, &bytes).expect("write");
    let l = id(&store.backup("loop", "2026-11-01T02:00:00Z", "xvda", &looped, &[]));
    let out = run(&mut store.cmd(&["ls", &l]));
    let err = refused(&out, &["MBR"]);
    assert!(err.to_lowercase().contains("inconsistent"), "{err}");

    // A file system whose superblock is gone: named as unknown, refused by name.
    let wiped = w.join("wiped.raw");
    let mut bytes = read(&raw);
    bytes[(1 << 20) + 1024..(1 << 20) + 2048].fill(0);
    std::fs::write(&wiped, &bytes).expect("write");
    let p = id(&store.backup("wiped", "2026-11-01T02:00:00Z", "xvda", &wiped, &[]));
    let out = run(&mut store.cmd(&["ls", &format!("{p}:p1/")]));
    refused(&out, &["p1 holds unknown", "ext2/3/4"]);

    // Its group descriptors and inode tables overwritten with a pattern: each command ends, as
    // an error naming what it read or with what it could read, never a panic (`run` fails the
    // test on one) or a hang.
    let garbled = w.join("garbled.raw");
    let mut bytes = read(&raw);
    bytes[(1 << 20) + 2048..(9 << 20)].fill(0xA5);
    std::fs::write(&garbled, &bytes).expect("write");
    let p = id(&store.backup("garbled", "2026-11-01T02:00:00Z", "xvda", &garbled, &[]));
    for spec in ["p1/", "p1/etc", "p1/many"] {
        let out = run(&mut store.cmd(&["ls", "-l", &format!("{p}:{spec}")]));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || err.contains("cairn: error"),
            "{spec}: {err}"
        );
    }
    let out = run(&mut store.cmd(&["cat", &format!("{p}:p1/big.bin")]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || err.contains("cairn: error"),
        "{err}"
    );
}

#[test]
fn files_of_an_encrypted_store_need_its_key() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let (_, raw) = one_linux_partition(w);
    let store = TestStore::encrypted("256K");
    let p = id(&store.backup("vm", "2026-11-01T02:00:00Z", "xvda", &raw, &[]));
    assert_eq!(cat(&store, &format!("{p}:p1/etc/hostname")), b"web01\n");
    let out = run(&mut store.keyless(&["ls", &p]));
    refused(&out, &["encrypted", "key"]);
}

#[test]
fn a_folder_extracts_whole_and_nothing_lands_outside_dest() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let (img, root) = ext4_image(w, 96);
    let raw = disk(
        w,
        112,
        "label: gpt\nstart=2048, size=196608, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n",
        &[(&img, 1)],
    );
    let store = TestStore::new("256K");
    let p = id(&store.backup("web01", "2026-11-01T02:00:00Z", "xvda", &raw, &[]));
    let dest = w.join("out");
    let done = json(&ok(store
        .cmd(&["extract", "--json", &format!("{p}:p1/")])
        .arg(&dest)));
    assert!(done["files"].as_u64().expect("files") >= 10_006, "{done}");
    // The tree as mkfs.ext4 -d took it (lost+found aside): names, kinds, modes, sizes, symlink
    // targets and contents.
    let mut want = tree(&root);
    let mut got = tree(&dest);
    got.remove("lost+found");
    want.retain(|k, _| !k.is_empty());
    assert_eq!(got.len(), want.len());
    for (k, v) in &want {
        assert_eq!(got.get(k), Some(v), "{k}");
    }
    // Times as the image has them; the sparse file's holes kept.
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dest.join("etc/hostname")).expect("stat");
    assert_eq!(
        m.mtime(),
        std::fs::metadata(root.join("etc/hostname"))
            .expect("stat")
            .mtime()
    );
    // A file with two names (a hard link) written once, linked under its second name.
    assert_eq!(done["hard_links"], 1, "{done}");
    assert_eq!(
        std::fs::metadata(dest.join("hostname-hard"))
            .expect("stat")
            .ino(),
        m.ino(),
        "hostname-hard is a hard link to etc/hostname"
    );
    assert_eq!(m.nlink(), 2);
    let sparse = std::fs::metadata(dest.join("sparse.bin")).expect("stat");
    assert_eq!(sparse.len(), 24 << 20);
    assert!(
        sparse.blocks() * 512 < 1 << 20,
        "{} blocks",
        sparse.blocks()
    );
    // A symlink planted in DEST where a file goes (a careless admin's, or an attacker's):
    // --force removes it and writes the file, never through it.
    let outside = w.join("outside.txt");
    std::fs::write(&outside, "not to be touched").expect("write");
    std::fs::remove_file(dest.join("etc/hostname")).expect("rm");
    std::os::unix::fs::symlink(&outside, dest.join("etc/hostname")).expect("plant");
    ok(store
        .cmd(&["extract", "--force", &format!("{p}:p1/")])
        .arg(&dest));
    assert_eq!(read(&outside), b"not to be touched");
    assert!(
        !std::fs::symlink_metadata(dest.join("etc/hostname"))
            .expect("stat")
            .file_type()
            .is_symlink()
    );
    assert_eq!(read(&dest.join("etc/hostname")), b"web01\n");
    // Never over what is there without --force; with it, the file replaced.
    let again = run(store
        .cmd(&["extract", &format!("{p}:p1/etc/hostname")])
        .arg(dest.join("etc/hostname")));
    refused(&again, &["exists", "--force"]);
    std::fs::write(dest.join("etc/hostname"), "changed").expect("write");
    ok(store
        .cmd(&["extract", "--force", &format!("{p}:p1/etc/hostname")])
        .arg(dest.join("etc/hostname")));
    assert_eq!(read(&dest.join("etc/hostname")), b"web01\n");

    // A name that climbs out of DEST (a directory entry rewritten in the image, its length
    // kept): refused, naming the folder (ext4-view refuses a '/' in a name; cairn's own check
    // refuses `..` and `.` too); nothing written beside DEST.
    let plain = w.join("plain.img");
    let root2 = w.join("root");
    ok(Command::new("mkfs.ext4")
        .args(["-q", "-O", "^metadata_csum", "-d"])
        .arg(&root2)
        .arg(&plain)
        .arg("96M"));
    let mut bytes = read(&plain);
    // A directory entry: name length 8, type 1 (a file), then the name.
    let at = bytes
        .windows(10)
        .position(|x| x == b"\x08\x01hostname")
        .expect("the directory entry of /etc/hostname")
        + 2;
    bytes[at..at + 8].copy_from_slice(b"../../xx");
    std::fs::write(&plain, &bytes).expect("write");
    std::fs::create_dir_all(w.join("evil")).expect("mkdir");
    let evil = disk(
        &w.join("evil"),
        112,
        "label: gpt\nstart=2048, size=196608, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n",
        &[(&plain, 1)],
    );
    let e = id(&store.backup("evil", "2026-11-01T02:00:00Z", "xvda", &evil, &[]));
    let trap = w.join("trap/inside");
    std::fs::create_dir_all(w.join("trap")).expect("mkdir");
    let out = run(store.cmd(&["extract", &format!("{e}:p1/etc")]).arg(&trap));
    refused(&out, &["/etc", "path separator"]);
    assert!(!w.join("xx").exists() && !w.join("trap/xx").exists());
}

#[test]
fn an_efi_fat32_partition_reads_as_mtools_reads_it() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    // The EFI partition: nested folders, long and mixed-case names, a 3 MB file.
    let src = w.join("efi-src");
    std::fs::create_dir_all(src.join("EFI/BOOT")).expect("mkdir");
    std::fs::create_dir_all(src.join("EFI/debian/Long Folder Name")).expect("mkdir");
    std::fs::write(src.join("EFI/BOOT/BOOTX64.EFI"), vec![0x4d; 3_000_000]).expect("write");
    std::fs::write(
        src.join("EFI/debian/grub.cfg"),
        "search.fs_uuid 1234 root\n",
    )
    .expect("w");
    std::fs::write(
        src.join("EFI/debian/Long Folder Name/A file with a long name.txt"),
        "long\n",
    )
    .expect("write");
    let fat = w.join("efi.img");
    ok(Command::new("mkfs.vfat")
        .args(["-F", "32", "-n", "EFI", "-C"])
        .arg(&fat)
        .arg("65536")
        .stdout(std::process::Stdio::null()));
    ok(Command::new("mcopy")
        .args(["-s", "-i"])
        .arg(&fat)
        .arg(src.join("EFI"))
        .arg("::/"));
    let (ext, _) = ext4_image(w, 64);
    let raw = disk(
        w,
        144,
        "label: gpt\nstart=2048, size=131072, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"EFI\"\n\
         start=133120, size=131072, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n",
        &[(&fat, 1), (&ext, 65)],
    );
    let store = TestStore::new("256K");
    let p = id(&store.backup("uefi", "2026-11-01T02:00:00Z", "xvda", &raw, &[]));
    let table = json(&ok(&mut store.cmd(&["ls", "--json", &p])));
    assert_eq!(table["partitions"][0]["filesystem"], "vfat", "{table}");
    assert_eq!(table["partitions"][1]["filesystem"], "ext4", "{table}");
    // What mtools copies out of the image, and what cairn extracts from the point: the same
    // names, sizes and contents.
    let by_mtools = w.join("mtools");
    std::fs::create_dir(&by_mtools).expect("mkdir");
    ok(Command::new("mcopy")
        .args(["-s", "-n", "-i"])
        .arg(&fat)
        .arg("::/EFI")
        .arg(&by_mtools));
    let by_cairn = w.join("cairn-efi");
    ok(store
        .cmd(&["extract", &format!("{p}:EFI/EFI")])
        .arg(&by_cairn));
    let strip = |t: BTreeMap<String, (char, u32, u64, String, String)>| -> BTreeMap<_, _> {
        t.into_iter()
            .map(|(k, (kind, _, size, _, hash))| (k, (kind, size, hash)))
            .collect()
    };
    assert_eq!(
        strip(tree(&by_cairn)),
        strip(tree(&by_mtools.join("EFI"))),
        "cairn against mcopy"
    );
    assert_eq!(
        cat(&store, &format!("{p}:p1/EFI/debian/grub.cfg")),
        b"search.fs_uuid 1234 root\n"
    );
    let listed = cairn_ls(&store, &format!("{p}:p1/EFI/debian"));
    assert_eq!(
        listed.keys().collect::<Vec<_>>(),
        ["Long Folder Name", "grub.cfg"]
    );
    // FAT compares names without case.
    assert_eq!(
        cat(&store, &format!("{p}:p1/efi/boot/bootx64.efi")).len(),
        3_000_000
    );
}

#[test]
fn files_of_a_point_thirty_generations_deep_read_here_and_through_a_server() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let (img, _) = ext4_image(w, 64);
    let store = TestStore::new("256K");
    let note = w.join("note.txt");
    let mut points = Vec::new();
    for day in 0..30u32 {
        // Each day one file is written anew: an incremental point of a few chunks.
        std::fs::write(&note, format!("generation {day}\n")).expect("write");
        if day > 0 {
            ok(Command::new("debugfs")
                .args(["-w", "-R", "rm /note.txt"])
                .arg(&img)
                .stderr(std::process::Stdio::null()));
        }
        ok(Command::new("debugfs")
            .arg("-w")
            .arg("-R")
            .arg(format!("write {} /note.txt", note.display()))
            .arg(&img)
            .stderr(std::process::Stdio::null()));
        let raw = disk(
            w,
            80,
            "label: gpt\nstart=2048, size=131072, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n",
            &[(&img, 1)],
        );
        let time = format!("2026-10-{:02}T02:00:00Z", day + 1);
        points.push(store.backup("deep", &time, "xvda", &raw, &[]));
    }
    // Each day stored a few chunks only.
    assert!(
        points[29]["new_chunks"].as_u64().expect("new") < 8,
        "{}",
        points[29]
    );
    let (oldest, newest) = (id(&points[0]), id(&points[29]));
    assert_eq!(
        cat(&store, &format!("{newest}:p1/note.txt")),
        b"generation 29\n"
    );
    assert_eq!(
        cat(&store, &format!("{}:p1/note.txt", id(&points[14]))),
        b"generation 14\n"
    );
    assert_eq!(
        cat(&store, &format!("{oldest}:p1/note.txt")),
        b"generation 0\n"
    );

    // Through `cairn serve`, with a restore token: the same files; another VM's token sees
    // no such point.
    let reader = cairn_tests::serve::token(&store.path(), "reader", "restore", "deep");
    let other = cairn_tests::serve::token(&store.path(), "other", "restore", "else*");
    let server = cairn_tests::serve::Server::start(&store.path(), 0, &[]);
    let got = ok(&mut server.cmd(&reader, &["cat", &format!("{newest}:p1/note.txt")]));
    assert_eq!(got, "generation 29\n");
    let listed = json(&ok(
        &mut server.cmd(&reader, &["ls", "--json", &format!("{newest}:p1/")])
    ));
    assert!(
        listed
            .as_array()
            .expect("entries")
            .iter()
            .any(|e| e["name"] == "many"),
        "{listed}"
    );
    let dest = w.join("through-server");
    ok(server
        .cmd(&reader, &["extract", &format!("{newest}:p1/etc")])
        .arg(&dest));
    assert_eq!(read(&dest.join("hostname")), b"web01\n");
    let out = run(&mut server.cmd(&other, &["cat", &format!("{newest}:p1/note.txt")]));
    assert!(!out.status.success());
}

#[test]
fn an_ntfs_data_partition_reads_as_ntfsls_and_ntfscat_read_it() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let ntfs = w.join("ntfs.img");
    std::fs::File::create(&ntfs)
        .and_then(|f| f.set_len(64 << 20))
        .expect("image");
    ok(Command::new("mkntfs")
        .args(["-q", "-F", "-Q", "-L", "DATA"])
        .arg(&ntfs)
        .stderr(std::process::Stdio::null()));
    let files: [(&str, Vec<u8>); 3] = [
        ("a.txt", b"hello\n".to_vec()),
        ("données.txt", "données\n".as_bytes().to_vec()),
        (
            "big.bin",
            (0..3_000_000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
                .collect(),
        ),
    ];
    for (name, bytes) in &files {
        let src = w.join(name);
        std::fs::write(&src, bytes).expect("write");
        ok(Command::new("ntfscp")
            .arg("-q")
            .arg(&ntfs)
            .arg(&src)
            .arg(name));
    }
    // Folders, a Unicode folder name, a deep path and a hard link, made through ntfs-3g (a
    // FUSE mount of the image; ntfscp makes files only).
    let mnt = w.join("ntfs-mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    ok(Command::new("ntfs-3g").arg(&ntfs).arg(&mnt));
    let made = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(mnt.join("Users/alice/Documents/2026/Q4"))?;
        std::fs::create_dir_all(mnt.join("日本語 フォルダ"))?;
        std::fs::write(mnt.join("Users/alice/Documents/report.txt"), "quarterly\n")?;
        std::fs::write(mnt.join("Users/alice/Documents/2026/Q4/deep.txt"), "deep\n")?;
        std::fs::write(mnt.join("日本語 フォルダ/メモ.txt"), "メモ\n")?;
        std::fs::hard_link(
            mnt.join("Users/alice/Documents/report.txt"),
            mnt.join("Users/alice/report-link.txt"),
        )
    })();
    ok(Command::new("fusermount").arg("-u").arg(&mnt));
    made.expect("files made through ntfs-3g");
    let raw = disk(
        w,
        80,
        "label: gpt\nstart=2048, size=131072, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, name=\"DATA\"\n",
        &[(&ntfs, 1)],
    );
    let store = TestStore::new("256K");
    let p = id(&store.backup("win", "2026-11-01T02:00:00Z", "xvda", &raw, &[]));
    let table = json(&ok(&mut store.cmd(&["ls", "--json", &p])));
    assert_eq!(table["partitions"][0]["filesystem"], "ntfs", "{table}");
    // Names and sizes of every folder as `ntfsls -l -p` lists them; contents as `ntfscat`
    // reads them.
    for folder in [
        "/",
        "/Users",
        "/Users/alice",
        "/Users/alice/Documents",
        "/Users/alice/Documents/2026/Q4",
        "/日本語 フォルダ",
    ] {
        let ntfsls = ok(Command::new("ntfsls").args(["-l", "-p", folder]).arg(&ntfs));
        let want: BTreeMap<String, u64> = ntfsls
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 6).then(|| (f[5..].join(" "), f[0].parse().expect("size")))
            })
            .filter(|(name, _)| name != "." && name != "..")
            .collect();
        let got: BTreeMap<String, u64> = cairn_ls(&store, &format!("{p}:DATA{folder}"))
            .into_iter()
            .map(|(k, v)| (k, if v.4 == "dir" { 0 } else { v.3 }))
            .collect();
        assert_eq!(got, want, "{folder}");
    }
    assert_eq!(
        cat(&store, &format!("{p}:p1/日本語 フォルダ/メモ.txt")),
        "メモ\n".as_bytes()
    );
    for (name, bytes) in &files {
        let by_ntfscat = Command::new("ntfscat")
            .arg(&ntfs)
            .arg(format!("/{name}"))
            .output()
            .expect("ntfscat");
        assert_eq!(&by_ntfscat.stdout, bytes, "{name}");
        assert_eq!(&cat(&store, &format!("{p}:p1/{name}")), bytes, "{name}");
    }
    let dest = w.join("out");
    let done = json(&ok(store
        .cmd(&["extract", "--json", &format!("{p}:p1/")])
        .arg(&dest)));
    assert_eq!(read(&dest.join("big.bin")), files[2].1);
    assert_eq!(
        read(&dest.join("Users/alice/Documents/2026/Q4/deep.txt")),
        b"deep\n"
    );
    // The hard link made through ntfs-3g: one file, two names.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(done["hard_links"], 1, "{done}");
    let ino = |p: &str| std::fs::metadata(dest.join(p)).expect("stat").ino();
    assert_eq!(
        ino("Users/alice/report-link.txt"),
        ino("Users/alice/Documents/report.txt")
    );
}
