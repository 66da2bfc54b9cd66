//! The benchmark harness itself works: a tiny run (64 MiB images, cairn only) gives every step
//! a time, a peak RSS and a stored size, and the targets table. No time is asserted.

use std::process::Command;

use cairn_tests::{cairn_bin, float, json, num, ok, repo_root, shared_dir};

/// Runs benches/run.py with `args` in a temporary work folder: its table and its results.json.
fn harness(args: &[&str]) -> (String, serde_json::Value) {
    let started = std::time::Instant::now();
    let work = tempfile::tempdir().expect("tempdir");
    let out = work.path().join("results.json");
    let bin = cairn_bin();
    let text = ok(Command::new("python3")
        .arg(repo_root().join("benches/run.py"))
        .arg("--cairn")
        .arg(&bin)
        .arg("--fill-index")
        .arg(bin.with_file_name("fill-index"))
        .arg("--report-page")
        .arg(bin.with_file_name("report-page"))
        .arg("--make-fleet")
        .arg(bin.with_file_name("make-fleet"))
        .arg("--shared")
        .arg(shared_dir())
        .args(args)
        .arg("--work")
        .arg(work.path())
        .arg("--out")
        .arg(&out));
    let mut v = json(&std::fs::read_to_string(&out).expect("results.json"));
    // How long the whole harness ran, as this test measured it: no step can have taken longer.
    v["_elapsed"] = serde_json::json!(started.elapsed().as_secs_f64());
    (text, v)
}

/// A step's time was measured: above zero, and within the harness's own run.
fn seconds_ok(seconds: f64, results: &serde_json::Value) -> bool {
    seconds > 0.0
        && results["_elapsed"]
            .as_f64()
            .is_some_and(|all| seconds <= all)
}

/// A peak RSS in MiB as a real process has (`cat` a little over one, cairn tens), and not a
/// figure in the wrong unit (in KiB it would be thousands).
fn rss_ok(mib: f64) -> bool {
    (1.0..=4096.0).contains(&mib)
}

#[test]
fn the_benchmark_harness_runs_on_a_tiny_workload() {
    let (text, v) = harness(&[
        "--cairn-only",
        "--size",
        "64M",
        "--skip",
        "limits,scaling",
        "--no-drop-caches",
    ]);
    assert!(
        text.contains("| full |") && text.contains("| target |"),
        "{text}"
    );
    let rows = v["rows"].as_array().expect("rows");
    let steps: Vec<&str> = rows
        .iter()
        .map(|r| r["step"].as_str().expect("step"))
        .collect();
    for want in [
        "full",
        "full-vhd",
        "daily1",
        "daily5-vhd",
        "clone",
        "restore",
        "restore-vhd",
        "prune-oldest",
        "gc",
        "verify",
    ] {
        assert!(steps.contains(&want), "no step {want} in {steps:?}");
    }
    let row = |step: &str| {
        rows.iter()
            .find(|r| r["step"] == step)
            .unwrap_or_else(|| panic!("no row {step}"))
    };
    for r in rows {
        // Each figure is measured, not a default: a real process ran, used CPU and memory.
        assert!(seconds_ok(float(r, "seconds"), &v), "{r}");
        assert!(float(r, "cpu_seconds") >= 0.0, "{r}");
        assert!(rss_ok(float(r, "rss_mib")), "{r}");
        assert_eq!(r["tool"], "cairn");
    }
    // The store's size follows the series: each daily adds less than half of the full, the
    // clone less than the full, and nothing shrinks. (gc may not shrink the folder at this size:
    // the index it writes can outweigh the little it frees.)
    let full = num(row("full"), "stored_bytes");
    assert!(full > 1 << 20, "{}", row("full"));
    let mut before = full;
    for d in 1..=5 {
        let now = num(row(&format!("daily{d}")), "stored_bytes");
        assert!(
            now >= before && now - before < full / 2,
            "daily{d}: {before} -> {now} (full {full})"
        );
        before = now;
    }
    let clone = num(row("clone"), "stored_bytes");
    assert!(
        clone >= before && clone - before < full,
        "clone: {before} -> {clone}"
    );
    let targets = v["targets"].as_array().expect("targets");
    assert!(targets.len() >= 8, "{targets:?}");
    // Targets against peers or limits that this smoke run skips have no value; the others a
    // finite, positive one.
    for t in targets {
        assert!(
            t["value"].is_null()
                || t["value"]
                    .as_f64()
                    .is_some_and(|v| v.is_finite() && v > 0.0),
            "{t}"
        );
        assert!(t["wanted"].as_str().is_some_and(|w| !w.is_empty()), "{t}");
    }
    let rss = targets
        .iter()
        .find(|t| t["name"].as_str().is_some_and(|n| n.contains("peak RSS")))
        .expect("a peak RSS target");
    assert!(rss_ok(float(rss, "value")), "{rss}");
}

#[test]
fn the_scale_sections_run_at_a_smoke_tests_size() {
    let fill = cairn_bin().with_file_name("fill-index");
    assert!(
        fill.is_file(),
        "{} is missing: cargo test --workspace builds it",
        fill.display()
    );
    let (text, v) = harness(&[
        "--cairn-only",
        "--smoke",
        "--only",
        "bigdisk,generations,index",
        "--no-drop-caches",
    ]);
    let rows = v["rows"].as_array().expect("rows");
    let steps: Vec<&str> = rows
        .iter()
        .map(|r| r["step"].as_str().expect("step"))
        .collect();
    for want in [
        "small-full",
        "big-full",
        "big-incr",
        "big-restore",
        "big-drop-point",
        "huge-raw-full",
        "huge-restore",
        "big-3pts-report",
        "restore-gen1",
        "restore-gen3",
        "index-empty-backup",
        "index-large-backup",
    ] {
        assert!(steps.contains(&want), "no step {want} in {steps:?}");
    }
    for r in rows {
        assert!(seconds_ok(float(r, "seconds"), &v), "{r}");
        assert!(rss_ok(float(r, "rss_mib")), "{r}");
    }
    // The targets of the issue are computed from the rows (their values are this machine's).
    for name in [
        "2040 GiB full / 1 GiB full",
        "16 TiB sparse raw full / 1 GiB raw full",
        "restore gen N / gen 1",
        "backup beside a large index / empty",
    ] {
        assert!(text.contains(name), "no target {name:?} in {text}");
    }
}

/// Runs one section of the harness at a smoke test's size (cairn only): its table and its
/// results.json.
fn section(name: &str) -> (String, serde_json::Value) {
    harness(&[
        "--cairn-only",
        "--smoke",
        "--only",
        name,
        "--no-drop-caches",
    ])
}

/// The row of step `name` in a harness's results.
fn step_of<'a>(results: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    let rows = results["rows"].as_array().expect("rows");
    rows.iter()
        .find(|r| r["step"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {rows:?}"))
}

#[test]
fn the_nbd_section_runs_at_a_smoke_tests_size() {
    let (text, v) = section("nbd");
    let step = |name: &str| step_of(&v, name);
    for name in [
        "nbd-full",
        "nbd-incremental-1pct",
        "nbd-restore-file",
        "nbd-export-nbdcopy-file",
        "nbd-delay-1conn",
        "nbd-delay-4conn",
    ] {
        let r = step(name);
        assert!(
            seconds_ok(float(r, "seconds"), &v) && rss_ok(float(r, "rss_mib")),
            "{r}"
        );
    }
    assert!(seconds_ok(float(step("nbd-nbdcopy-null"), "seconds"), &v));
    assert!(seconds_ok(float(step("nbd-first-read-64g"), "seconds"), &v));
    assert!(rss_ok(float(step("nbd-serve-peak"), "rss_mib")));
    for name in [
        "backup from qemu-nbd / nbdcopy to null:",
        "dirty-bitmap incremental (1 %) / full",
        "nbdcopy from serve-nbd / cairn restore",
        "first read of a 64 GiB point",
    ] {
        assert!(text.contains(name), "no target {name:?} in {text}");
    }
}

#[test]
fn the_replicate_section_runs_at_a_smoke_tests_size() {
    let (text, v) = section("replicate");
    for name in ["replicate-cp-a", "replicate-series", "replicate-daily"] {
        let r = step_of(&v, name);
        assert!(seconds_ok(float(r, "seconds"), &v), "{r}");
    }
    for name in [
        "replicate a series / cp -a of the store",
        "daily replication sent / its new stored bytes",
    ] {
        assert!(text.contains(name), "no target {name:?} in {text}");
    }
}

#[test]
fn the_serve_section_runs_at_a_smoke_tests_size() {
    let (text, v) = section("serve");
    let step = |name: &str| step_of(&v, name);
    for name in [
        "serve-local-backup",
        "serve-remote-backup",
        "serve-remote-daily",
        "serve-local-restore",
        "serve-remote-restore",
        "serve-1-client",
        "serve-4-clients",
    ] {
        assert!(
            seconds_ok(float(step(name), "seconds"), &v),
            "{}",
            step(name)
        );
    }
    assert!(rss_ok(float(step("serve-server"), "rss_mib")));
    for name in [
        "backup through cairn serve / local backup",
        "daily backup sent / its new compressed chunks",
        "restore through cairn serve / local restore",
        "4 clients at once / 1 client",
        "server peak RSS with 4 sessions",
    ] {
        assert!(text.contains(name), "no target {name:?} in {text}");
    }
}

#[test]
fn the_report_section_runs_at_a_smoke_tests_size() {
    let (text, v) = section("report");
    let page = step_of(&v, "report-page");
    assert!(seconds_ok(float(page, "seconds"), &v), "{page}");
    assert!(float(page, "bytes") > 10_000.0, "{page}");
    for name in [
        "report page of 100 VMs x 1000 points: render (s)",
        "report page of 100 VMs x 1000 points: size (MiB)",
    ] {
        assert!(text.contains(name), "no target {name:?} in {text}");
    }
}

#[test]
fn the_fleet_section_runs_at_a_smoke_tests_size() {
    let (text, v) = section("fleet");
    // Each size: the store made, then every step that reads it, the live page and a forget.
    for n in [100, 1000] {
        for step in [
            "make",
            "list",
            "list-vm",
            "report",
            "report-json",
            "report-html",
            "prune-dry-run",
            "prune-dry-run-daily",
            "gc-nothing",
            "verify-quick",
            "page",
            "page-vm",
            "forget",
        ] {
            let row = step_of(&v, &format!("fleet-{n}-{step}"));
            assert!(seconds_ok(float(row, "seconds"), &v), "{row}");
            assert!(float(row, "rss_mib") > 1.0, "{row}");
        }
        // The list prints a line per point; a VM's list only its own.
        let list = float(step_of(&v, &format!("fleet-{n}-list")), "bytes");
        let list_vm = float(step_of(&v, &format!("fleet-{n}-list-vm")), "bytes");
        assert!(
            list > 50.0 * n as f64 && list_vm < list / 5.0,
            "{list} {list_vm}"
        );
        assert!(float(step_of(&v, &format!("fleet-{n}-page")), "bytes") > 10_000.0);
    }
    for name in [
        "fleet 1000 points: list (s)",
        "fleet 1000 points: report-json peak RSS (MiB)",
        "fleet 100 -> 1000 points: page-vm time per point, ratio",
        "fleet 1000 points: page size (KiB)",
    ] {
        assert!(text.contains(name), "no target {name:?} in {text}");
    }
}
