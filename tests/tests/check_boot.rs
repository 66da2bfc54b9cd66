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

/// Whether the guest's console showed no network interface but the loopback (`-nic none`).
fn no_network(out: &serde_json::Value) -> bool {
    out["last_lines"]
        .as_array()
        .expect("lines")
        .iter()
        .any(|l| l.as_str().is_some_and(|l| l.trim() == "net: lo"))
}

#[test]
fn the_guest_has_no_network() {
    let work = tempfile::tempdir().expect("tempdir");
    let store = TestStore::new("256K");
    let good = bootable_disk(work.path(), "good", Guest::Boots);
    let p = id(&store.backup("web01", "2026-11-01T02:00:00Z", "xvda", &good, &[]));
    let (code, out) = check(&store, &p, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(no_network(&out), "the guest saw a network: {out}");
    // The image file itself, booted the same way (no store: nothing recorded).
    let out = run(cairn_tests::cairn([
        "check-boot",
        "--json",
        "--memory",
        "256",
        "--timeout",
        "2m",
        "--image",
    ])
    .arg(&good)
    .env_remove("CAIRN_STORE"));
    assert_eq!(out.status.code(), Some(0), "{}", error_text(&out));
    let doc = json(&String::from_utf8_lossy(&out.stdout));
    assert!(no_network(&doc), "the guest saw a network: {doc}");
    assert_eq!(doc["images"][0], good.display().to_string(), "{doc}");
}

#[test]
fn through_a_server_an_admin_token_boots_a_point_on_the_servers_machine() {
    use cairn_tests::serve::{Server, bearer, call, token};
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let store = TestStore::new("256K");
    let good = bootable_disk(w, "good", Guest::Boots);
    let blank = bootable_disk(w, "blank", Guest::NoBootSector);
    let p = id(&store.backup("web01", "2026-11-01T02:00:00Z", "xvda", &good, &[]));
    let q = id(&store.backup("web02", "2026-11-01T02:00:00Z", "xvda", &blank, &[]));
    let admin = token(&store.path(), "ops", "admin", "*");
    let reader = token(&store.path(), "reader", "restore", "web*");
    let host = token(&store.path(), "host", "backup", "*");
    // The server's own temporary folder: where its checks' folders are seen.
    let tmp = w.join("server-tmp");
    std::fs::create_dir(&tmp).expect("mkdir");
    let server = Server::start_env(&store.path(), &[("TMPDIR", tmp.display().to_string())])
        .expect("cairn serve");
    let remote = |tok: &str, point: &str, extra: &[&str]| {
        let mut args = vec!["check-boot", "--json", "--memory", "256", "--timeout", "2m"];
        args.extend_from_slice(extra);
        args.push(point);
        run(&mut server.cmd(tok, &args))
    };

    // The server boots it and keeps the result in its store; the screenshot comes back.
    let shot = w.join("shot.png");
    let out = remote(&admin, &p, &["--screenshot", shot.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", error_text(&out));
    let doc = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(doc["booted"], true, "{doc}");
    assert!(no_network(&doc), "{doc}");
    assert!(read(&shot).starts_with(b"\x89PNG\r\n\x1a\n"));
    let kept = store.path().join(format!("boot-checks/{p}.json"));
    assert_eq!(
        json(&String::from_utf8(read(&kept)).expect("utf-8"))["booted"],
        true
    );
    let out = remote(&admin, &q, &[]);
    assert_eq!(out.status.code(), Some(4), "{}", error_text(&out));
    assert_eq!(
        json(&String::from_utf8_lossy(&out.stdout))["why"],
        "no bootloader found"
    );
    // A restore token sees the results of its VMs (`list --boot`), and another VM's not.
    let listed = json(&ok(&mut server.cmd(&reader, &["list", "--boot", "--json"])));
    let rows = listed.as_array().expect("points");
    assert_eq!(rows.len(), 2, "{listed}");
    assert!(
        rows.iter()
            .any(|r| r["id"] == p && r["boot_check"]["booted"] == true)
    );
    let web_only = token(&store.path(), "web01-only", "restore", "web01");
    let (code, answer) = call(
        &server,
        "GET",
        "/api/v1/boot-checks",
        &[bearer(&web_only)],
        None,
    );
    assert_eq!(code, 200, "{answer}");
    assert!(answer.contains(&p) && !answer.contains(&q), "{answer}");

    // Only an admin token starts a VM on the server, or says what a check found.
    for tok in [&reader, &host] {
        let out = remote(tok, &p, &[]);
        assert!(!out.status.success());
        assert!(
            error_text(&out).contains("cannot check that points boot"),
            "{}",
            error_text(&out)
        );
    }
    let record = r#"{"record": {"booted": true, "why": "booted", "seconds": 1.0, "accel": "kvm"}}"#;
    // A JSON body to a point's boot-check endpoint.
    let send = |method: &str, point: &str, tok: &str, body: &str| {
        call(
            &server,
            method,
            &format!("/api/v1/points/{point}/boot-check"),
            &[bearer(tok), "Content-Type: application/json".into()],
            Some(body.as_bytes()),
        )
    };
    let (code, answer) = send("PUT", &q, &reader, record);
    assert_eq!(code, 403, "{answer}");
    // Bodies a careless or hostile admin sends are refused before any VM starts: a guest
    // time past the server's request limit, too little or too much memory, an unknown
    // firmware, field or accelerator, too many texts; a record of another shape, a screenshot
    // that is no PNG.
    let post = |body: &str| send("POST", &p, &admin, body);
    let many = serde_json::json!({ "expect": vec!["x"; 17] }).to_string();
    for body in [
        r#"{"timeout_seconds": 100000}"#,
        r#"{"timeout_seconds": 0}"#,
        r#"{"memory_mib": 1}"#,
        r#"{"memory_mib": 1000000}"#,
        r#"{"firmware": "coreboot"}"#,
        r#"{"accel": "hvf"}"#,
        r#"{"network": true}"#,
        r#"{"expect": [""]}"#,
        many.as_str(),
        "not json",
    ] {
        let (code, answer) = post(body);
        assert_eq!(code, 400, "{body}: {answer}");
    }
    let put = |body: &str| send("PUT", &q, &admin, body);
    let long = "x".repeat(5000);
    for body in [
        r#"{"record": {"booted": "yes", "why": "booted", "seconds": 1.0, "accel": "kvm"}}"#.to_owned(),
        r#"{"record": {"booted": true, "why": "booted", "seconds": -1, "accel": "kvm"}}"#.to_owned(),
        r#"{"record": {"booted": true, "why": "booted", "seconds": 1, "accel": "kvm", "point": "x"}}"#.to_owned(),
        r#"{"record": {"booted": true, "seconds": 1, "accel": "kvm"}}"#.to_owned(),
        format!(r#"{{"record": {{"booted": true, "why": "{long}", "seconds": 1, "accel": "kvm"}}}}"#),
        format!(r#"{{"record": {{"booted": true, "why": "b", "seconds": 1, "accel": "kvm"}}, "screenshot_png": "{}"}}"#,
            "PHN2Zz48L3N2Zz4="), // <svg></svg>
    ] {
        let (code, answer) = put(&body);
        assert_eq!(code, 400, "{body}: {answer}");
    }
    // None of them changed what the store says of q.
    let kept = json(
        &String::from_utf8(read(&store.path().join(format!("boot-checks/{q}.json"))))
            .expect("utf-8"),
    );
    assert_eq!(kept["why"], "no bootloader found", "{kept}");

    // One check at a time on a server.
    let mut first = server
        .cmd(
            &admin,
            &[
                "check-boot",
                "--memory",
                "256",
                "--expect",
                "NEVER",
                "--timeout",
                "20s",
                &p,
            ],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("check-boot");
    cairn_tests::wait_until("the first check's VM", || {
        std::fs::read_dir(&tmp).expect("tmp").flatten().any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("cairn-check-boot-")
        })
    });
    let (code, answer) = post("{}");
    assert_eq!(code, 409, "{answer}");
    assert!(answer.contains("one at a time"), "{answer}");
    assert_eq!(first.wait().expect("wait").code(), Some(4));
}

#[test]
fn an_encrypted_store_boots_where_its_key_is_and_its_server_keeps_the_result() {
    use cairn_tests::serve::{Server, bearer, call, token};
    let work = tempfile::tempdir().expect("tempdir");
    let store = TestStore::encrypted("256K");
    let good = bootable_disk(work.path(), "good", Guest::Boots);
    let p = id(&store.backup("web01", "2026-11-01T02:00:00Z", "xvda", &good, &[]));
    // The store's folder, with its key.
    let (code, out) = check(&store, &p, &[]);
    assert_eq!(code, 0, "{out}");
    // Without it, nothing boots: the key is asked for.
    let out = run(&mut store.keyless(&["check-boot", "--memory", "256", &p]));
    assert!(!out.status.success());
    assert!(error_text(&out).contains("key"), "{}", error_text(&out));

    // Its server holds no key: it refuses to boot the point, and says where it can be.
    std::fs::remove_dir_all(store.path().join("boot-checks")).expect("rm");
    let admin = token(&store.path(), "ops", "admin", "*");
    let server = Server::start(&store.path(), 0, &[]);
    let (code, answer) = call(
        &server,
        "POST",
        &format!("/api/v1/points/{p}/boot-check"),
        &[bearer(&admin)],
        None,
    );
    assert_eq!(code, 409, "{answer}");
    assert!(
        answer.contains("encrypted") && answer.contains("key"),
        "{answer}"
    );
    // A machine with the key boots it, reading the chunks through the server, and the server
    // keeps the result.
    let out = run(server
        .cmd(
            &admin,
            &[
                "check-boot",
                "--json",
                "--memory",
                "256",
                "--timeout",
                "2m",
                &p,
            ],
        )
        .env("CAIRN_KEY_FILE", store.key_file())
        .env("CAIRN_PASSPHRASE", cairn_tests::store::PASSPHRASE));
    assert_eq!(out.status.code(), Some(0), "{}", error_text(&out));
    let doc = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(doc["booted"], true, "{doc}");
    let kept = store.path().join(format!("boot-checks/{p}.json"));
    assert_eq!(
        json(&String::from_utf8(read(&kept)).expect("utf-8"))["booted"],
        true
    );
    assert!(read(&store.path().join(format!("boot-checks/{p}.png"))).starts_with(b"\x89PNG"));
    // Nothing the guest wrote reached the store.
    ok(&mut store.cmd(&["verify"]));
}

#[test]
fn keep_running_leaves_a_console_to_log_in_on_until_ctrl_c() {
    use std::io::{BufRead, Read, Write};
    let work = tempfile::tempdir().expect("tempdir");
    let store = TestStore::new("256K");
    let good = bootable_disk(work.path(), "good", Guest::Boots);
    let p = id(&store.backup("web01", "2026-11-01T02:00:00Z", "xvda", &good, &[]));
    let mut child = store
        .cmd(&[
            "check-boot",
            "--keep-running",
            "--memory",
            "256",
            "--timeout",
            "2m",
            &p,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("check-boot");
    let mut err = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut said = String::new();
    let socket = loop {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).expect("stderr") > 0,
            "check-boot ended: {said}"
        );
        said.push_str(&line);
        if let Some(s) = line
            .trim()
            .strip_prefix("console: socat -,raw,echo=0 UNIX-CONNECT:")
        {
            break std::path::PathBuf::from(s);
        }
    };
    // The admin logs in: what is typed on the console runs in the guest.
    let mut console = std::os::unix::net::UnixStream::connect(&socket).expect("console");
    console
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .expect("timeout");
    console
        .write_all(b"\necho cairn-$((6 * 7))-here\n")
        .expect("type");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("cairn-42-here") {
        let n = console.read(&mut buf).expect("the console answers");
        assert!(
            n > 0,
            "the console closed: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    // Ctrl-C ends the VM and removes its folder.
    let folder = socket.parent().expect("folder").to_path_buf();
    assert!(folder.exists());
    ok(std::process::Command::new("kill").args(["-INT", &child.id().to_string()]));
    let status = child.wait().expect("wait");
    let mut rest = String::new();
    let _ = err.read_to_string(&mut rest);
    assert_eq!(status.code(), Some(0), "{said}{rest}");
    assert!(rest.contains("stopped"), "{rest}");
    assert!(!folder.exists(), "{} is left", folder.display());
    let mut out = String::new();
    let _ = child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out);
    assert!(out.contains("booted in"), "{out}");
}

#[test]
fn a_gpt_disk_with_only_an_efi_system_partition_boots_with_uefi() {
    use cairn_tests::boot::uefi_disk;
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let store = TestStore::new("256K");
    let efi = uefi_disk(w, "efi", true);
    let p = id(&store.backup("web01", "2026-11-01T02:00:00Z", "xvda", &efi, &[]));
    // The firmware is chosen from the partition table: OVMF, and the guest comes up.
    let (code, out) = check(&store, &p, &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["firmware"], "uefi", "{out}");
    // SeaBIOS runs the protective MBR's empty boot code and hangs: the choice mattered.
    let (code, out) = check(&store, &p, &["--firmware", "bios", "--timeout", "20s"]);
    assert_eq!(code, 4, "{out}");
    assert_eq!(out["firmware"], "bios", "{out}");
    assert!(
        out["why"].as_str().expect("why").starts_with("timed out"),
        "{out}"
    );
    // An EFI system partition without a loader: the firmware has nothing to start.
    let empty = uefi_disk(w, "empty", false);
    let q = id(&store.backup("web02", "2026-11-01T02:00:00Z", "xvda", &empty, &[]));
    let (code, out) = check(&store, &q, &[]);
    assert_eq!(code, 4, "{out}");
    assert!(
        out["why"]
            .as_str()
            .expect("why")
            .starts_with("no bootloader found"),
        "{out}"
    );
}

#[test]
fn a_guest_is_seen_up_by_its_guest_agent_or_an_open_port() {
    let work = tempfile::tempdir().expect("tempdir");
    let store = TestStore::new("256K");
    let good = bootable_disk(work.path(), "good", Guest::Boots);
    let p = id(&store.backup("web01", "2026-11-01T02:00:00Z", "xvda", &good, &[]));
    // Asked for alone, the agent is what says it is up (the login prompt does not count).
    let (code, out) = check(&store, &p, &["--guest-agent"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out["line"], "the QEMU guest agent answered guest-ping",
        "{out}"
    );
    // A port that sends a banner, one that waits to be spoken to, and one nothing listens on.
    let (code, out) = check(&store, &p, &["--port", "22"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["line"], "port 22 open: SSH-2.0-cairnguest", "{out}");
    let (code, out) = check(&store, &p, &["--port", "80"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["line"], "port 80 open", "{out}");
    let (code, out) = check(&store, &p, &["--port", "2222", "--timeout", "25s"]);
    assert_eq!(code, 4, "{out}");
    assert!(
        out["why"].as_str().expect("why").starts_with("timed out"),
        "{out}"
    );
}

#[test]
fn the_network_a_port_check_gives_the_guest_reaches_nothing() {
    // A service on this machine's loopback, which qemu's user network would let a guest reach
    // as 10.0.2.2 were it not restricted.
    let here = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    here.set_nonblocking(true).expect("nonblocking");
    let port = here.local_addr().expect("addr").port();
    let work = tempfile::tempdir().expect("tempdir");
    let store = TestStore::new("256K");
    let disk = cairn_tests::boot::probing_disk(work.path(), "probe", port);
    let p = id(&store.backup("web01", "2026-11-01T02:00:00Z", "xvda", &disk, &[]));
    // Port 9: nothing listens, so the verdict is the guest's own line.
    let (code, out) = check(&store, &p, &["--expect", "reach host:", "--port", "9"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out["line"], "reach host: no",
        "the guest reached its host: {out}"
    );
    assert!(
        matches!(here.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the guest connected to this machine"
    );
}
