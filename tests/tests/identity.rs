//! A VM is who its hypervisor says it is: two VMs of one name (two pools) keep separate
//! histories, a renamed VM keeps its own, and tags, notes, pools and hosts are shown and
//! filter every command that chooses points.

use std::path::Path;

use cairn_tests::{TestStore as Store, gen_disk, id, json, ok, run};

const UUID_A: &str = "6f1c2a4e-0b1d-4c3e-9a8f-1d2e3f4a5b6c";
const UUID_B: &str = "c0ffee00-1234-4abc-8def-0123456789ab";

fn backup(store: &Store, vm: &str, time: &str, src: &Path, labels: &[&str]) -> serde_json::Value {
    let out = ok(store
        .cmd(&["backup", "--json", "--vm", vm, "--time", time])
        .args(labels)
        .arg(format!("xvda={}", src.display())));
    json(&out)[0].clone()
}

fn ids(v: &serde_json::Value) -> Vec<String> {
    v.as_array().expect("array").iter().map(id).collect()
}

#[test]
fn two_vms_of_one_name_keep_separate_histories_and_labels_filter_everything() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let (a, b) = (work.path().join("a.raw"), work.path().join("b.raw"));
    gen_disk(&a, "2M", 1, 3, 0);
    gen_disk(&b, "2M", 2, 3, 0);
    let in_a = ["--vm-uuid", UUID_A, "--pool", "pool-a", "--host", "xen1"];
    let in_b = ["--vm-uuid", UUID_B, "--pool", "pool-b", "--host", "xen7"];
    let a1 = backup(&store, "web01", "2026-11-20T01:00:00Z", &a, &in_a);
    let b1 = backup(
        &store,
        "web01",
        "2026-11-20T03:00:00Z",
        &b,
        &[
            &in_b[..],
            &["--tag", "monthly", "--note", "before the upgrade"],
        ]
        .concat(),
    );
    assert_eq!(a1["vm_uuid"], UUID_A);
    assert_eq!(b1["tags"], serde_json::json!(["monthly"]));
    assert_eq!(b1["note"], "before the upgrade");

    // One name, two VMs: @latest asks which, and a UUID names one.
    let e = run(&mut store.cmd(&["restore", "web01/xvda@latest", "-"]));
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(!e.status.success());
    assert!(err.contains("2 VMs are called \"web01\""), "{err}");
    assert!(err.contains(UUID_A) && err.contains(UUID_B), "{err}");
    let out = work.path().join("out.raw");
    store.restore(&format!("{UUID_A}/xvda@latest"), &out, "raw");
    cairn_tests::assert_same_content(&out, &a, true);

    // Retention works per VM: a daily rule keeps each VM's point of the same day.
    let pr = json(&ok(&mut store.cmd(&[
        "prune",
        "--keep-daily",
        "7",
        "--dry-run",
        "--json",
    ])));
    let dropped: Vec<&serde_json::Value> = pr["points"]
        .as_array()
        .expect("points")
        .iter()
        .filter(|p| p["keep"] == false)
        .collect();
    assert!(dropped.is_empty(), "prune would drop {dropped:?}");

    // Filters: pool, host, tag, UUID, each alone and together; the table shows the labels.
    let list = |args: &[&str]| ids(&json(&ok(store.cmd(&["list", "--json"]).args(args))));
    assert_eq!(list(&["--pool", "pool-a"]), vec![id(&a1)]);
    assert_eq!(list(&["--host", "xen7"]), vec![id(&b1)]);
    assert_eq!(list(&["--tag", "monthly"]), vec![id(&b1)]);
    assert_eq!(list(&["--vm", UUID_B]), vec![id(&b1)]);
    assert_eq!(list(&["--vm", "web01"]).len(), 2);
    // Every filter given must match: pool-a has no monthly point (pool-b has).
    let e = run(&mut store.cmd(&["list", "--pool", "pool-a", "--tag", "monthly"]));
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("pools: pool-b"));
    let table = ok(&mut store.cmd(&["list"]));
    for word in [
        "POOL",
        "pool-a",
        "TAGS",
        "monthly",
        "NOTE",
        "before the upgrade",
        UUID_B,
    ] {
        assert!(table.contains(word), "{word} missing from:\n{table}");
    }
    let e = run(&mut store.cmd(&["list", "--tag", "weekly"]));
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(!e.status.success());
    assert!(
        err.contains("--tag \"weekly\"") && err.contains("tags: monthly"),
        "{err}"
    );
    let e = run(&mut store.cmd(&["verify", "--pool", "pool-c"]));
    assert!(String::from_utf8_lossy(&e.stderr).contains("pools: pool-a, pool-b"));
    let v = json(&ok(
        &mut store.cmd(&["verify", "--json", "--pool", "pool-b"])
    ));
    assert_eq!(v["points_in_scope"], 1, "{v}");
    let r = json(&ok(
        &mut store.cmd(&["report", "--json", "--pool", "pool-a"])
    ));
    assert_eq!(r["vms"].as_array().map(Vec::len), Some(1), "{r}");
    assert_eq!(r["vms"][0]["vm_uuid"], UUID_A);
    assert_eq!(r["points"].as_array().map(Vec::len), Some(1));
    let r = json(&ok(&mut store.cmd(&["report", "--json"])));
    assert_eq!(r["vms"].as_array().map(Vec::len), Some(2), "{r}");

    // A renamed VM keeps its history: its UUID is its identity. The rename is said with
    // --adopt: without it, another name claiming the UUID is refused.
    let o = run(store
        .cmd(&[
            "backup",
            "--vm",
            "web01-old",
            "--time",
            "2026-11-21T01:00:00Z",
        ])
        .args(in_a)
        .arg(format!("xvda={}", a.display())));
    assert!(!o.status.success(), "another name took web01's identity");
    let adopt: Vec<&str> = in_a.iter().copied().chain(["--adopt"]).collect();
    let a2 = backup(&store, "web01-old", "2026-11-21T01:00:00Z", &a, &adopt);
    let latest = json(&ok(
        &mut store.cmd(&["list", "--json", "--vm", UUID_A, "--last", "1"])
    ));
    assert_eq!(ids(&latest), vec![id(&a2)]);
    let pr = json(&ok(&mut store.cmd(&[
        "prune",
        "--vm",
        UUID_A,
        "--keep-last",
        "1",
        "--json",
    ])));
    let gone: Vec<String> = pr["points"]
        .as_array()
        .expect("points")
        .iter()
        .filter(|p| p["keep"] == false)
        .map(id)
        .collect();
    assert_eq!(gone, vec![id(&a1)], "{pr}");
    assert_eq!(store.list().len(), 2);
}

#[test]
fn a_key_backup_policy_can_be_set_for_a_vm_uuid() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let (a, b) = (w.join("a.raw"), w.join("b.raw"));
    gen_disk(&a, "4M", 1, 1, 0);
    gen_disk(&b, "4M", 1, 1, 1);
    let (av, bv) = cairn_tests::vhd_and_delta(&a, &b, w);
    let me = ["--vm-uuid", UUID_A];
    backup(&store, "web01", "2026-11-20T01:00:00Z", &av, &me);
    // Another VM of the same name has a policy by name; this one by UUID: the UUID's wins.
    ok(&mut store.cmd(&["policy", "set", "--vm", "web01", "--key-interval", "0"]));
    ok(&mut store.cmd(&["policy", "set", "--vm", UUID_A, "--key-interval", "1"]));
    let p = backup(&store, "web01", "2026-11-21T01:00:00Z", &bv, &me);
    assert_eq!(p["key"], true, "{p}");
}
