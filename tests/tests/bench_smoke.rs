//! The benchmark harness itself works: a tiny run (64 MiB images, cairn only) gives every step
//! a time, a peak RSS and a stored size, and the targets table. No time is asserted.

use std::process::Command;

use cairn_tests::{cairn_bin, json, ok, repo_root, shared_dir};

#[test]
fn the_benchmark_harness_runs_on_a_tiny_workload() {
    let work = tempfile::tempdir().expect("tempdir");
    let out = work.path().join("results.json");
    let text = ok(Command::new("python3")
        .arg(repo_root().join("benches/run.py"))
        .arg("--cairn")
        .arg(cairn_bin())
        .arg("--shared")
        .arg(shared_dir())
        .args([
            "--cairn-only",
            "--size",
            "64M",
            "--skip",
            "limits,scaling",
            "--no-drop-caches",
        ])
        .arg("--work")
        .arg(work.path())
        .arg("--out")
        .arg(&out));
    assert!(
        text.contains("| full |") && text.contains("| target |"),
        "{text}"
    );
    let v = json(&std::fs::read_to_string(&out).expect("results.json"));
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
    for r in rows {
        assert!(r["seconds"].as_f64().expect("seconds") > 0.0, "{r}");
        assert!(r["rss_mib"].as_f64().expect("rss") > 1.0, "{r}");
        assert_eq!(r["tool"], "cairn");
    }
    let full = rows.iter().find(|r| r["step"] == "full").expect("full");
    assert!(
        full["stored_bytes"].as_u64().expect("stored") > 1 << 20,
        "{full}"
    );
    assert!(v["targets"].as_array().expect("targets").len() >= 8);
}
