//! Nothing an admin types destroys data: `vhd from-raw` and `vhd to-raw` never write over their
//! input or a file of its chain, nor over an existing file without --force, and never leave a
//! half-written output; a restore writes onto a block device only with --force, only raw, and
//! only when the device is large enough (checked before the first write). Needs root for the
//! loop device, as the test machines give.

use std::path::Path;
use std::process::Command;

use cairn_tests::{TestStore as Store, cairn, gen_disk, id, ok, read, run};

/// A store holding one point of `vm`'s disk xvda (a generated disk of `size`): the store, the
/// work folder, the disk, the point's id.
fn one_point(vm: &str, size: &str) -> (Store, tempfile::TempDir, std::path::PathBuf, String) {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let disk = work.path().join("d.raw");
    gen_disk(&disk, size, 1, 1, 0);
    let p = id(&store.backup(vm, "2026-11-20T02:00:00Z", "xvda", &disk, &[]));
    (store, work, disk, p)
}

fn refused(out: &std::process::Output, words: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {err}");
    for w in words {
        assert!(err.contains(w), "{w:?} missing from: {err}");
    }
}

fn no_partial_files(dir: &Path) {
    let left: Vec<_> = cairn_tests::files_under(dir)
        .into_iter()
        .filter(|f| f.to_string_lossy().contains("cairn-partial"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn vhd_from_raw_and_to_raw_never_write_over_their_input_its_chain_or_an_existing_file() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let (raw, next) = (w.join("day0.raw"), w.join("day1.raw"));
    gen_disk(&raw, "8M", 2, 1, 0);
    gen_disk(&next, "8M", 2, 1, 1);
    let (raw_bytes, next_bytes) = (read(&raw), read(&next));
    let vhd = |args: &[&Path]| {
        let mut c = cairn(["vhd"]);
        for a in args {
            c.arg(a);
        }
        c
    };
    let (from, to) = (Path::new("from-raw"), Path::new("to-raw"));
    // Output = input.
    refused(&run(&mut vhd(&[from, &raw, &raw])), &["the input"]);
    assert_eq!(read(&raw), raw_bytes);
    let base = w.join("base.vhd");
    ok(&mut vhd(&[from, &raw, &base]));
    let base_bytes = read(&base);
    refused(&run(&mut vhd(&[to, &base, &base])), &["the input"]);
    assert_eq!(read(&base), base_bytes);
    // With --force too: an input is never an output.
    refused(
        &run(vhd(&[from, &raw, &raw]).arg("--force")),
        &["the input"],
    );
    // Arguments swapped: a VHD given as the raw image is refused, the raw file untouched.
    refused(
        &run(&mut vhd(&[from, &base, &next])),
        &["is a VHD", "not a raw image"],
    );
    assert_eq!(read(&next), next_bytes);
    // A chain: its parent is neither overwritten by a delta nor by a to-raw of the chain.
    let delta = w.join("delta.vhd");
    ok(vhd(&[from, &next, &delta]).arg("--parent").arg(&base));
    refused(
        &run(vhd(&[from, &next, &base]).arg("--parent").arg(&base)),
        &["the input's chain"],
    );
    refused(
        &run(vhd(&[to, &delta, &base]).arg("--force")),
        &["the input's chain"],
    );
    assert_eq!(read(&base), base_bytes);
    // An existing file: only with --force, replaced whole.
    let out = w.join("out.raw");
    std::fs::write(&out, b"keep me").expect("write");
    refused(&run(&mut vhd(&[to, &delta, &out])), &["exists", "--force"]);
    assert_eq!(read(&out), b"keep me");
    ok(vhd(&[to, &delta, &out]).arg("--force"));
    assert_eq!(read(&out), next_bytes);
    no_partial_files(w);
}

#[test]
fn a_restore_onto_a_block_device_needs_force_a_raw_format_and_room_before_any_write() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let (small, big) = (w.join("small.raw"), w.join("big.raw"));
    gen_disk(&small, "4M", 3, 1, 0);
    gen_disk(&big, "16M", 3, 1, 0);
    let ps = id(&store.backup("s", "2026-11-20T02:00:00Z", "xvda", &small, &[]));
    let pb = id(&store.backup("b", "2026-11-20T02:00:00Z", "xvda", &big, &[]));
    // A device of 8 MiB holding data.
    let backing = w.join("backing.img");
    let held: Vec<u8> = (0..8u32 << 20).map(|i| (i % 253) as u8).collect();
    std::fs::write(&backing, &held).expect("backing");
    let dev = cairn_tests::LoopDevice::attach(&backing);
    let restore =
        |p: &str, extra: &[&str]| run(store.cmd(&["restore", p]).args(extra).arg(dev.path()));
    refused(&restore(&ps, &[]), &["block device", "--force"]);
    refused(
        &restore(&ps, &["--format", "vhd", "--force"]),
        &["block device", "raw"],
    );
    refused(
        &restore(&pb, &["--force"]),
        &["holds 8388608 bytes", "nothing was written"],
    );
    assert!(
        read(&backing) == held,
        "a refused restore wrote to the device"
    );
    // Forced, raw, and large enough: written.
    ok(store.cmd(&["restore", &ps, "--force"]).arg(dev.path()));
    drop(dev);
    let got = read(&backing);
    assert_eq!(&got[..4 << 20], &read(&small)[..]);
}

#[test]
fn every_command_ends_quietly_on_a_closed_pipe() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let disk = work.path().join("d.raw");
    gen_disk(&disk, "2M", 1, 1, 0);
    for vm in 0..30 {
        store.backup(
            &format!("vm{vm}"),
            "2026-11-20T02:00:00Z",
            "xvda",
            &disk,
            &[],
        );
    }
    for args in [
        &["list"][..],
        &["list", "--json"],
        &["report"],
        &["report", "--json"],
    ] {
        let mut child = store
            .cmd(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        // The reader goes away before a byte is read (a pager quit at once).
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            matches!(out.status.code(), Some(0 | 141)),
            "{args:?}: {:?} {err}",
            out.status
        );
    }
}

#[test]
fn a_restore_writes_what_its_output_name_says_or_refuses() {
    let (store, work, disk, p) = one_point("web01", "4M");
    let w = work.path();
    // A .vhd name is a VHD (qemu-img reads it as one, holding the disk).
    let vhd = w.join("web01.vhd");
    ok(store.cmd(&["restore", &p]).arg(&vhd));
    let info = ok(Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&vhd));
    assert!(info.contains("\"format\": \"vpc\""), "{info}");
    let back = w.join("back.raw");
    ok(cairn(["vhd", "to-raw"]).arg(&vhd).arg(&back));
    cairn_tests::assert_same_content(&back, &disk, true);
    // Another image format's name, or a .vhd name for a raw image: refused, nothing written.
    for (name, extra) in [
        ("web01.qcow2", &[][..]),
        ("web01.VMDK", &[]),
        ("raw.vhd", &["--format", "raw"]),
    ] {
        let out = w.join(name);
        let done = run(store.cmd(&["restore", &p]).args(extra).arg(&out));
        refused(&done, &[name]);
        assert!(!out.exists(), "{name} was written");
    }
}

#[test]
fn a_time_without_a_zone_is_read_in_the_store_zone_as_help_says_and_the_restore_names_its_point() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let store = w.join("store");
    ok(cairn(["init", "--timezone", "Europe/Paris", "--chunk-size", "64K"]).arg(&store));
    let disk = w.join("d.raw");
    gen_disk(&disk, "2M", 1, 1, 0);
    for t in ["2026-11-22T01:30:00Z", "2026-11-22T02:30:00Z"] {
        ok(cairn(["backup", "--vm", "v", "--time", t])
            .arg(format!("xvda={}", disk.display()))
            .env("CAIRN_STORE", &store));
    }
    // 02:59 in Paris is 01:59 UTC: the 01:30 UTC point (02:30 in Paris), named as such.
    let out = run(cairn(["restore", "v/xvda@2026-11-22T02:59:00"])
        .arg(w.join("out.raw"))
        .env("CAIRN_STORE", &store));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("v/xvda made 2026-11-22T02:30:00+01:00"),
        "{err}"
    );
    let help = ok(&mut cairn(["restore", "--help"]));
    assert!(
        help.contains("store's time zone") && !help.contains("UTC unless"),
        "{help}"
    );
}

/// Starts `cairn ARGS` on `store` with each fsync/fdatasync delayed by 15 s (strace): a restore
/// then waits with its whole partial file written (long, so that a signal sent on a loaded
/// machine still finds it waiting: with 4 s, one run's restore was seen finishing first). Returns the strace process and the partial
/// file once it is there.
// The child is returned to the caller, which waits for it (or kills it here first).
#[allow(clippy::zombie_processes)]
fn restore_held_at_sync(
    store: &Store,
    args: &[&str],
    dir: &Path,
) -> (std::process::Child, std::path::PathBuf) {
    let mut child = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            "-e",
            "trace=fsync,fdatasync",
            "-e",
        ])
        .arg("inject=fsync,fdatasync:delay_enter=15000000")
        .arg(cairn_tests::cairn_bin())
        .args(args)
        .env("CAIRN_STORE", store.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("strace");
    let started = std::time::Instant::now();
    loop {
        if started.elapsed().as_secs() >= 60 {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no partial file appeared");
        }
        let found = cairn_tests::files_under(dir)
            .into_iter()
            .find(|p| p.to_string_lossy().contains(".cairn-partial-"));
        if let Some(p) = found {
            return (child, p);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn pid_of(partial: &Path) -> String {
    partial
        .to_string_lossy()
        .rsplit_once(".cairn-partial-")
        .map(|(_, pid)| pid.to_owned())
        .expect("pid")
}

#[test]
fn an_interrupted_restore_leaves_no_partial_file_and_a_killed_one_does_not_block_the_next() {
    let (store, work, _, p) = one_point("v", "8M");
    let w = work.path();
    let out_dir = w.join("out");
    std::fs::create_dir(&out_dir).expect("mkdir");
    let out = out_dir.join("d.raw");
    let out_s = out.to_string_lossy().into_owned();
    // Ctrl-C (SIGINT) or SIGTERM: the partial file goes, the exit says so.
    for (sig, code) in [("-INT", 130), ("-TERM", 143)] {
        let (child, partial) = restore_held_at_sync(&store, &["restore", &p, &out_s], &out_dir);
        ok(Command::new("kill").args([sig, &pid_of(&partial)]));
        let done = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&done.stderr);
        assert_eq!(done.status.code(), Some(code), "{sig}: {err}");
        assert!(err.contains("interrupted"), "{sig}: {err}");
        assert!(!partial.exists(), "{sig}: the partial file was left");
        assert!(!out.exists());
    }
    // `vhd to-raw` writes the same way: interrupted, its partial file goes too.
    let vhd = w.join("d.vhd");
    ok(store.cmd(&["restore", &p]).arg(&vhd));
    let raw_out = out_dir.join("from-vhd.raw").to_string_lossy().into_owned();
    let vhd_s = vhd.to_string_lossy().into_owned();
    let (child, partial) =
        restore_held_at_sync(&store, &["vhd", "to-raw", &vhd_s, &raw_out], &out_dir);
    ok(Command::new("kill").args(["-INT", &pid_of(&partial)]));
    let done = child.wait_with_output().expect("wait");
    assert_eq!(done.status.code(), Some(130), "{:?}", done.status);
    assert!(!partial.exists(), "vhd to-raw left its partial file");
    // kill -9: the partial file stays, and the next restore into the folder removes it.
    let (child, partial) = restore_held_at_sync(&store, &["restore", &p, &out_s], &out_dir);
    ok(Command::new("kill").args(["-KILL", &pid_of(&partial)]));
    let _ = child.wait_with_output();
    assert!(partial.exists());
    ok(store.cmd(&["restore", &p]).arg(&out));
    assert!(!partial.exists(), "a dead restore's partial file was left");
    // A chain restore killed the same way: its retry into the same folder needs no --force.
    let chain = w.join("chain");
    let chain_s = chain.to_string_lossy().into_owned();
    let (child, partial) = restore_held_at_sync(
        &store,
        &["restore", &p, &chain_s, "--format", "vhd-chain"],
        w,
    );
    ok(Command::new("kill").args(["-KILL", &pid_of(&partial)]));
    let _ = child.wait_with_output();
    ok(store
        .cmd(&["restore", &p, "--format", "vhd-chain"])
        .arg(&chain));
    no_partial_files(&chain);
}

#[test]
fn a_mistake_in_what_was_typed_exits_2_whichever_check_finds_it() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let store = w.join("store");
    ok(cairn(["init", "--timezone", "Europe/Paris", "--chunk-size", "64K"]).arg(&store));
    let disk = w.join("d.raw");
    gen_disk(&disk, "2M", 1, 1, 0);
    let src = format!("xvda={}", disk.display());
    let p = {
        let out = ok(cairn(["backup", "--json", "--vm", "v", &src]).env("CAIRN_STORE", &store));
        cairn_tests::id(&cairn_tests::json(&out)[0])
    };
    let out_file = w.join("x.qcow2").to_string_lossy().into_owned();
    for args in [
        &["gc", "--max-unused", "150"][..],
        &["verify", "--sample", "150"],
        // A time the clocks skip in the store's zone, and no time at all.
        &["backup", "--vm", "v", "--time", "2026-03-29T02:30:00", &src],
        &["backup", "--vm", "v", "--time", "yesterday", &src],
        &["restore", &p, &out_file],
        &["backup", "--vm", "v", "--note", &"x".repeat(5000), &src],
    ] {
        let out = run(cairn(args).env("CAIRN_STORE", &store));
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_name_the_point_syntax_cannot_reach_is_refused_before_anything_is_read() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let disk = work.path().join("d.raw");
    gen_disk(&disk, "2M", 1, 1, 0);
    let d = disk.display();
    for (vm, src) in [
        ("v", format!("xvda ={d}")),
        ("v", format!("xv@da={d}")),
        ("v", format!("xv/da={d}")),
        ("web@01", format!("xvda={d}")),
        (" v", format!("xvda={d}")),
    ] {
        let out = run(&mut store.cmd(&["backup", "--vm", vm, &src]));
        assert_eq!(
            out.status.code(),
            Some(2),
            "{vm:?} {src:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("is not allowed"));
    }
    assert!(store.list().is_empty());
    // A VM name with a `/` is reachable (the last `/` parts it from the disk).
    let p = store.backup("site/web01", "2026-11-20T02:00:00Z", "xvda", &disk, &[]);
    let out = work.path().join("out.raw");
    ok(store.cmd(&["restore", "site/web01/xvda@latest"]).arg(&out));
    assert_eq!(read(&out), read(&disk));
    let _ = p;
}

/// `token create --output FILE` writes the secret into a new file only its owner reads, and
/// an existing file is refused before any token is made (a secret made and lost is a token
/// nobody holds).
#[test]
fn a_token_written_to_a_file_is_private_and_never_replaces_one() {
    use std::os::unix::fs::PermissionsExt;
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("host.token");
    let mut c = cairn([
        "token", "create", "--name", "h1", "--role", "backup", "--output",
    ]);
    c.arg(&file).arg("--store").arg(store.path());
    let said = run(&mut c);
    assert!(said.status.success(), "{said:?}");
    assert!(said.stdout.is_empty(), "the secret was printed too");
    let secret = std::fs::read_to_string(&file).expect("token file");
    assert!(secret.starts_with("cairn_"), "{secret}");
    let mode = std::fs::metadata(&file).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mut again = cairn([
        "token", "create", "--name", "h2", "--role", "backup", "--output",
    ]);
    again.arg(&file).arg("--store").arg(store.path());
    let out = run(&mut again);
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(std::fs::read_to_string(&file).expect("token file"), secret);
    let listed = ok(cairn(["token", "list", "--json", "--store"]).arg(store.path()));
    assert!(!listed.contains("\"h2\""), "a token was made: {listed}");
}

/// A file that is no whole number of sectors is said to be an odd disk; a qcow2 given to
/// `vhd info` is named as a qcow2; `report --html -` writes the page to stdout and a page
/// into a folder that does not exist is an error naming the folder.
#[test]
fn odd_inputs_are_named_for_what_they_are() {
    let (store, work, _, _) = one_point("web01", "1M");
    let w = work.path();
    let odd = w.join("odd.img");
    std::fs::write(&odd, vec![7u8; 775]).expect("odd");
    let out = run(store
        .cmd(&["backup", "--vm", "odd"])
        .arg(format!("xvda={}", odd.display())));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("775 bytes") && err.contains("sectors"),
        "{err}"
    );
    let qcow = w.join("d.qcow2");
    ok(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&qcow)
        .arg("1M"));
    let out = run(cairn(["vhd", "info"]).arg(&qcow));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a qcow2 image, not a VHD"),
        "{out:?}"
    );
    let page = ok(&mut store.cmd(&["report", "--html", "-"]));
    assert!(page.contains("<html"), "{}", &page[..page.len().min(200)]);
    assert!(!Path::new("-").exists());
    let nowhere = w.join("no/such/folder/page.html");
    let out = run(store.cmd(&["report", "--html"]).arg(&nowhere));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no such folder"),
        "{out:?}"
    );
    assert!(!w.join("no").exists(), "folders were made");
}

/// Ctrl-C during a backup says that nothing was stored and what `cairn gc` reclaims, and
/// exits 130; the store holds no point of it.
#[test]
fn an_interrupted_backup_says_nothing_was_stored() {
    use std::io::Write;
    let (store, _work, disk, _) = one_point("web01", "8M");
    let mut child = store
        .cmd(&["backup", "--vm", "stdin-vm", "--size", "67108864", "xvda=-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut pipe = child.stdin.take().expect("stdin");
    pipe.write_all(&read(&disk)).expect("feed");
    // The backup waits for the rest of the disk, holding the write lock; then Ctrl-C.
    cairn_tests::wait_until("the backup to hold the write lock", || {
        cairn_store::lock::writer_active(&store.path())
    });
    ok(Command::new("kill").args(["-INT", &child.id().to_string()]));
    // It ends on the signal, its input still open (closing it would end it another way).
    cairn_tests::wait_until("the interrupted backup to end", || {
        child.try_wait().is_ok_and(|s| s.is_some())
    });
    drop(pipe);
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nothing was stored") && err.contains("cairn gc"),
        "{err}"
    );
    assert!(!store.list().iter().any(|p| p["vm"] == "stdin-vm"));
}

/// The first line a server prints, then the server stopped.
fn first_line_of(mut c: Command) -> String {
    use std::io::BufRead;
    let mut child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    let _ = std::io::BufReader::new(stdout).read_line(&mut line);
    let _ = child.kill();
    let _ = child.wait();
    line
}

/// `cairn serve` takes its store as every command does (`--store`, `CAIRN_STORE`) and refuses
/// a server's URL; `serve-nbd --listen HOST:0` says the port it took, not 0.
#[test]
fn servers_take_the_store_as_every_command_and_say_the_port_they_took() {
    let (store, _work, _, _) = one_point("web01", "1M");
    let mut c = cairn(["serve", "--listen", "127.0.0.1:0", "--json"]);
    c.env("CAIRN_STORE", store.path());
    let line = first_line_of(c);
    let v: serde_json::Value = serde_json::from_str(&line).expect("the server's first line");
    assert!(
        v["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://127.0.0.1:")),
        "{v}"
    );
    let out = run(cairn(["serve"]).env("CAIRN_STORE", "https://backup.example:8443"));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = run(cairn(["serve"]).env_remove("CAIRN_STORE"));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let mut c = store.cmd(&["serve-nbd", "--listen", "127.0.0.1:0"]);
    c.arg("web01/xvda@latest");
    let line = first_line_of(c);
    assert!(line.starts_with("nbd://127.0.0.1:"), "{line}");
    assert!(
        !line.starts_with("nbd://127.0.0.1:0/"),
        "port 0 printed: {line}"
    );
}
