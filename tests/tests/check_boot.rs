//! `cairn check-boot`: a point booted in a throw-away VM (qemu-system-x86_64 from
//! bookworm-backports, TCG or KVM) over NBD. A small guest made from Debian's packages
//! (`cairn_tests::boot`) boots; a copy whose kernel panics and one whose boot sector is zeroed
//! are reported as not booting, with the reason; the disks of a run are attached in order;
//! nothing the guest writes reaches the store; a missing qemu is named with its package.

use cairn_tests::boot::{Guest, bootable_disk, data_disk};
use cairn_tests::{TestStore, error_text, id, json, ok, read, run};

fn check(store: &TestStore, point: &str, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut c = store.cmd(&["check-boot", "--json", "--memory", "256"]);
    if !extra.contains(&"--timeout") {
        c.args(["--timeout", "2m"]);
    }
    c.args(extra).arg(point);
    let out = run(&mut c);
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 4,
        "check-boot failed to run ({code}): {}",
        error_text(&out)
    );
    (code, json(&String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn a_bootable_point_boots_and_broken_ones_say_why() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let store = TestStore::new("256K");
    let good = bootable_disk(w, "good", Guest::Boots);
    let p = id(&store.backup("web01", "2026-11-01T02:00:00Z", "xvda", &good, &[]));

    // It boots: the login prompt seen, a screenshot kept.
    let shot = w.join("shot.png");
    let (code, out) = check(&store, &p, &["--screenshot", shot.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["booted"], true, "{out}");
    assert!(
        out["line"].as_str().expect("line").ends_with("login:"),
        "{out}"
    );
    assert!(
        ["tcg", "kvm"].contains(&out["accel"].as_str().expect("accel")),
        "{out}"
    );
    assert!(
        read(&shot).starts_with(b"\x89PNG\r\n\x1a\n"),
        "a PNG screenshot"
    );
    // Nothing the guest wrote reached the store: the point restores to the same bytes and
    // verify reads every chunk well.
    let restored = w.join("restored.raw");
    ok(store.cmd(&["restore", &p]).arg(&restored));
    assert!(read(&restored) == read(&good), "the point changed");
    ok(&mut store.cmd(&["verify"]));

    // A kernel that panics, and a disk with no boot sector: not booted, and why.
    let panics = bootable_disk(w, "panics", Guest::Panics);
    let q = id(&store.backup("web02", "2026-11-01T02:00:00Z", "xvda", &panics, &[]));
    let (code, out) = check(&store, &q, &[]);
    assert_eq!(code, 4, "{out}");
    assert_eq!(out["why"], "kernel panic", "{out}");
    assert!(
        out["line"].as_str().expect("line").contains("Kernel panic"),
        "{out}"
    );
    let blank = bootable_disk(w, "blank", Guest::NoBootSector);
    let r = id(&store.backup("web03", "2026-11-01T02:00:00Z", "xvda", &blank, &[]));
    let (code, out) = check(&store, &r, &[]);
    assert_eq!(code, 4, "{out}");
    assert_eq!(out["why"], "no bootloader found", "{out}");

    // Each point's last check is in the store, with its screenshot, and `list --boot` shows it.
    let listed = json(&ok(&mut store.cmd(&["list", "--boot", "--json"])));
    let check_of = |point: &str| {
        listed
            .as_array()
            .expect("points")
            .iter()
            .find(|p| p["id"] == point)
            .map(|p| p["boot_check"].clone())
            .expect("listed")
    };
    assert_eq!(check_of(&p)["booted"], true, "{listed}");
    assert_eq!(check_of(&q)["why"], "kernel panic", "{listed}");
    assert_eq!(check_of(&r)["booted"], false, "{listed}");
    let kept = store.path().join("boot-checks").join(format!(
        "{}.png",
        check_of(&p)["point"].as_str().expect("id")
    ));
    assert!(read(&kept).starts_with(b"\x89PNG"), "{}", kept.display());
    let table = ok(&mut store.cmd(&["list", "--boot"]));
    assert!(
        table.contains("FAILED: kernel panic") && table.contains("ok "),
        "{table}"
    );
    // The nightly form: every VM's newest run, one verdict each; one failure fails the job.
    let out = run(&mut store.cmd(&[
        "check-boot",
        "--json",
        "--latest-of-each-vm",
        "--timeout",
        "2m",
    ]));
    assert_eq!(out.status.code(), Some(4), "{}", error_text(&out));
    let all = json(&String::from_utf8_lossy(&out.stdout));
    let verdicts: Vec<(&str, bool)> = all
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| (c["vm"].as_str().expect("vm"), c["booted"] == true))
        .collect();
    assert_eq!(
        verdicts,
        [("web01", true), ("web02", false), ("web03", false)],
        "{all}"
    );

    // A text the admin names that never comes: a timeout, with the console's last lines.
    let (code, out) = check(
        &store,
        &p,
        &["--expect", "NEVER PRINTED", "--timeout", "20s"],
    );
    assert_eq!(code, 4, "{out}");
    assert!(
        out["why"].as_str().expect("why").starts_with("timed out"),
        "{out}"
    );
    assert!(
        out["last_lines"]
            .as_array()
            .expect("lines")
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.contains("cairnguest login"))),
        "{out}"
    );
}

#[test]
fn the_disks_of_a_run_are_attached_in_order() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let store = TestStore::new("256K");
    let boot = bootable_disk(w, "boot", Guest::Boots);
    let data = data_disk(w, "data", 8);
    let points = json(&ok(store
        .cmd(&[
            "backup",
            "--json",
            "--vm",
            "db01",
            "--time",
            "2026-11-01T02:00:00Z",
        ])
        .arg(format!("xvda={}", boot.display()))
        .arg(format!("xvdb={}", data.display()))));
    let xvdb = points
        .as_array()
        .expect("points")
        .iter()
        .find(|p| p["disk"] == "xvdb")
        .map(id)
        .expect("xvdb");
    // Asked for the data disk's point: the run boots from its first disk, both attached.
    let (code, out) = check(&store, &xvdb, &["--expect", "disks: vda vdb"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["disks"].as_array().map(Vec::len), Some(2), "{out}");
    assert_eq!(out["disks"][0]["disk"], "xvda");
}

#[test]
fn a_missing_qemu_is_named_with_its_package() {
    let store = TestStore::new("256K");
    let work = tempfile::tempdir().expect("tempdir");
    let disk = data_disk(work.path(), "d", 1);
    let p = id(&store.backup("vm", "2026-11-01T02:00:00Z", "xvda", &disk, &[]));
    let out = run(store.cmd(&["check-boot", &p]).env("PATH", work.path()));
    assert!(!out.status.success());
    let err = error_text(&out);
    assert!(err.contains("qemu-system-x86"), "{err}");
}

#[test]
fn another_user_reaches_neither_the_checks_folder_nor_its_nbd_socket() {
    use std::os::unix::fs::PermissionsExt;
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    // A temporary folder anyone may enter, so that only the check's own folder can keep
    // another user out.
    let tmp = w.join("tmp");
    std::fs::create_dir(&tmp).expect("mkdir");
    std::fs::set_permissions(w, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let store = TestStore::new("256K");
    let good = bootable_disk(w, "good", Guest::Boots);
    let p = id(&store.backup("web01", "2026-11-01T02:00:00Z", "xvda", &good, &[]));
    let mut check = store
        .cmd(&[
            "check-boot",
            "--json",
            "--accel",
            "tcg",
            "--expect",
            "NEVER",
            "--timeout",
            "60s",
        ])
        .arg(&p)
        .env("TMPDIR", &tmp)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("check-boot");
    let mut socket = None;
    cairn_tests::wait_until("the check's NBD socket", || {
        socket = std::fs::read_dir(&tmp)
            .expect("tmp")
            .flatten()
            .map(|e| e.path().join("nbd.sock"))
            .find(|s| s.exists());
        socket.is_some()
    });
    let socket = socket.expect("socket");
    let folder = socket.parent().expect("folder");
    let mode = std::fs::metadata(folder)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "{}", folder.display());
    let other = run(std::process::Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args(["nbdinfo", "--size"])
        .arg(format!("nbd+unix:///{p}?socket={}", socket.display())));
    assert!(
        !other.status.success(),
        "another user read the export: {}",
        String::from_utf8_lossy(&other.stdout)
    );
    let _ = check.kill();
    let _ = check.wait();
}
