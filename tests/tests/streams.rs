//! Streams: VHDs on stdin read in one pass (truncated ones refused), restores to a pipe or a
//! device written in order, and restores past the page cache where they can be.

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use cairn_tests::{
    TestStore as Store, assert_same_content, gen_disk, id, json, node, ok, read, run, series,
};

const SIZE: &str = "64M";

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
    let raws = series(w, SIZE, 9, 7, 2);
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
    let raws = series(work.path(), SIZE, 15, 7, 1);
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
