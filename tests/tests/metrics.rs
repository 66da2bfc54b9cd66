//! `cairn serve`'s `/metrics` (the Prometheus text format, checked by Prometheus's own
//! `promtool check metrics`) and `/healthz`: what an admin token, a restore token and no token
//! get; the jobs' last runs as the store recorded them.

use std::process::{Command, Stdio};

use cairn_tests::disks::gen_disk;
use cairn_tests::serve::{Server, bearer, call, token};
use cairn_tests::{TestStore, ok};

/// `promtool check metrics` of `text` (Prometheus's checker, fetched by scripts/setup.sh).
fn promtool(text: &str) -> (bool, String) {
    let cache = std::env::var_os("CAIRN_CACHE").map_or_else(
        || std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/cairn"),
        std::path::PathBuf::from,
    );
    let bin = cache.join("bin/promtool");
    assert!(
        bin.is_file(),
        "{} is missing: run scripts/setup.sh",
        bin.display()
    );
    let mut child = Command::new(bin)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn metrics_pass_promtool_and_say_no_more_than_the_token_may_read() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let store = TestStore::new("256K");
    let disk = w.join("d.raw");
    gen_disk(&disk, "8M", 1, 1, 0);
    store.backup("web 01 (prod)", "2026-11-01T02:00:00Z", "xvda", &disk, &[]);
    store.backup("web 01 (prod)", "2026-11-02T02:00:00Z", "xvda", &disk, &[]);
    store.backup("db01", "2026-11-02T02:00:00Z", "xvda", &disk, &[]);
    ok(&mut store.cmd(&["verify"]));
    // A job run, recorded in the store.
    let jobs = w.join("jobs.toml");
    std::fs::write(
        &jobs,
        format!(
            "[jobs.nightly-gc]\nrun = \"gc\"\nstore = \"{}\"\n",
            store.path().display()
        ),
    )
    .expect("job file");
    ok(cairn_tests::cairn(["job", "run", "--file"])
        .arg(&jobs)
        .arg("nightly-gc"));
    let admin = token(&store.path(), "ops", "admin", "*");
    let reader = token(&store.path(), "web-reader", "restore", "web*");
    let host = token(&store.path(), "host", "backup", "*");
    let server = Server::start(&store.path(), 0, &[]);
    // The health check needs no token and says nothing of the store.
    let (code, text) = call(&server, "GET", "/healthz", &[], None);
    assert_eq!((code, text.as_str()), (200, "ok\n"));

    let (code, text) = call(&server, "GET", "/metrics", &[bearer(&admin)], None);
    assert_eq!(code, 200, "{text}");
    let (good, said) = promtool(&text);
    assert!(good, "promtool: {said}\n{text}");
    for line in [
        "cairn_vm_points{vm=\"web 01 (prod)\"} 2",
        "cairn_vm_points{vm=\"db01\"} 1",
        "cairn_store_points 3",
        "cairn_last_verify_clean 1",
        "cairn_job_last_run_ok{job=\"nightly-gc\"} 1",
        "cairn_sessions_open 0",
        "cairn_gc_reclaimable_bytes 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    // The health check before was counted.
    assert!(
        text.contains("cairn_http_requests_total{method=\"GET\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("cairn_vm_last_backup_timestamp_seconds{vm=\"db01\"} 1793584800"),
        "{text}"
    );

    // A restore token: its VMs only, nothing store-wide.
    let (code, text) = call(&server, "GET", "/metrics", &[bearer(&reader)], None);
    assert_eq!(code, 200, "{text}");
    assert!(promtool(&text).0, "{text}");
    assert!(
        text.contains("web 01 (prod)") && !text.contains("db01"),
        "{text}"
    );
    assert!(
        !text.contains("cairn_store_points") && !text.contains("cairn_job_"),
        "{text}"
    );
    // A backup token and no token: nothing.
    assert_eq!(
        call(&server, "GET", "/metrics", &[bearer(&host)], None).0,
        403
    );
    assert_eq!(call(&server, "GET", "/metrics", &[], None).0, 401);

    // A host records the runs of its jobs in the store; what names no job, or carries more
    // than a record, is refused, and a restore token records nothing.
    let record = |job: &str, extra: &str| {
        format!(
            r#"{{"job": "{job}", "started": "2026-12-07T01:00:00Z", "ended": "2026-12-07T01:00:05Z",
                "outcome": "ok", "exit_code": 0, "error": null, "command": ["backup"], "points": [],
                "bytes_stored": 0, "waited_seconds": null, "trigger": "timer"{extra}}}"#
        )
    };
    let post = |tok: &str, body: &str| {
        call(
            &server,
            "POST",
            "/api/v1/job-runs",
            &[bearer(tok), "Content-Type: application/json".into()],
            Some(body.as_bytes()),
        )
    };
    assert_eq!(post(&host, &record("host-backup", "")).0, 200);
    for (body, code) in [
        (record("../../escape", ""), 400),
        (record(".hidden", ""), 400),
        (record("x", r#", "more": 1"#), 400),
        (record("x", "").replace("\"timer\"", "\"cron\""), 400),
        (record("host-backup", ""), 403),
    ] {
        let tok = if code == 403 { &reader } else { &host };
        assert_eq!(post(tok, &body).0, code, "{body}");
    }
    assert!(store.path().join("job-runs/host-backup.json").is_file());
    assert!(!store.path().join("escape.json").exists());
    let (_, text) = call(&server, "GET", "/metrics", &[bearer(&admin)], None);
    assert!(
        text.contains("cairn_job_last_run_ok{job=\"host-backup\"} 1"),
        "{text}"
    );
}
