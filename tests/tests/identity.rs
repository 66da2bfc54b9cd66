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

/// The root files (`*.json`) under the store's `points/`.
fn root_files(store: &Store) -> Vec<std::path::PathBuf> {
    cairn_tests::files_under(&store.path().join("points"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect()
}

/// A store where web01 was backed up three days without a UUID, then two with one.
fn split_history(work: &Path) -> (Store, Vec<std::path::PathBuf>) {
    let store = Store::new("64K");
    let days: Vec<_> = (0..5)
        .map(|d| {
            let p = work.join(format!("day{d}.raw"));
            gen_disk(&p, "2M", 1, 3, d);
            p
        })
        .collect();
    for (d, raw) in days.iter().enumerate() {
        let time = format!("2026-11-2{d}T02:00:00Z");
        let labels: &[&str] = if d < 3 { &[] } else { &["--vm-uuid", UUID_A] };
        backup(&store, "web01", &time, raw, labels);
    }
    (store, days)
}

/// A VM given a UUID later has two histories; prune shows the split and `adopt` joins them:
/// every point takes the new identity, restores as before, and retention weighs them together.
#[test]
fn a_vm_given_a_uuid_later_is_joined_to_its_old_history() {
    let work = tempfile::tempdir().expect("tempdir");
    let (store, days) = split_history(work.path());
    let plan = ok(&mut store.cmd(&["prune", "--dry-run", "--keep-last", "1"]));
    assert!(
        plan.contains("web01 (no uuid)") && plan.contains(&format!("web01 (uuid {UUID_A})")),
        "{plan}"
    );
    assert!(plan.contains("cairn adopt"), "{plan}");
    assert!(plan.contains("would keep 2 and remove 3"), "{plan}");
    let before = root_files(&store);
    let dry = json(&ok(&mut store.cmd(&[
        "adopt",
        "--json",
        "--dry-run",
        "web01",
        UUID_A,
    ])));
    assert_eq!(dry["points"].as_array().map(Vec::len), Some(3), "{dry}");
    assert_eq!(root_files(&store), before, "a dry run changed root files");
    // `web01` names both histories: the one that is not UUID_A's is the old one.
    let said = ok(&mut store.cmd(&["adopt", "web01", UUID_A]));
    assert!(said.contains("joined 3 points"), "{said}");
    let list = store.list();
    assert_eq!(list.len(), 5);
    assert!(list.iter().all(|p| p["vm_uuid"] == UUID_A), "{list:?}");
    assert_eq!(root_files(&store).len(), 5);
    let out = work.path().join("r.raw");
    store.restore(&format!("{UUID_A}/xvda@latest~4"), &out, "raw");
    assert_eq!(cairn_tests::read(&out), cairn_tests::read(&days[0]));
    let plan = ok(&mut store.cmd(&["prune", "--dry-run", "--keep-last", "1"]));
    assert!(plan.contains("would keep 1 and remove 4"), "{plan}");
    ok(&mut store.cmd(&["verify"]));
    // The index rebuilt from the root files says the same.
    ok(&mut store.cmd(&["repair", "--rebuild-index"]));
    assert!(store.list().iter().all(|p| p["vm_uuid"] == UUID_A));
}

/// A VM renamed without a UUID: its points move under the new name (their root files too),
/// and two points of one disk at one time are refused with nothing changed.
#[test]
fn a_renamed_vm_is_joined_and_a_clash_of_times_is_refused() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let raw = work.path().join("d.raw");
    gen_disk(&raw, "2M", 1, 3, 0);
    backup(&store, "old-name", "2026-11-20T02:00:00Z", &raw, &[]);
    backup(&store, "old-name", "2026-11-21T02:00:00Z", &raw, &[]);
    backup(&store, "new-name", "2026-11-21T02:00:00Z", &raw, &[]);
    backup(&store, "new-name", "2026-11-22T02:00:00Z", &raw, &[]);
    let before = root_files(&store);
    let out = run(&mut store.cmd(&["adopt", "old-name", "new-name"]));
    assert!(!out.status.success(), "{out:?}");
    assert!(
        cairn_tests::error_text(&out).contains("nothing was changed"),
        "{out:?}"
    );
    assert_eq!(root_files(&store), before);
    let clash = store
        .list()
        .into_iter()
        .find(|p| p["vm"] == "new-name" && p["time"] == "2026-11-21T02:00:00Z")
        .expect("point");
    ok(&mut store.cmd(&["forget", &id(&clash)]));
    ok(&mut store.cmd(&["adopt", "old-name", "new-name"])).to_string();
    let list = store.list();
    assert!(list.iter().all(|p| p["vm"] == "new-name"), "{list:?}");
    assert!(
        root_files(&store)
            .iter()
            .all(|p| !p.to_string_lossy().contains("old-name"))
    );
    let out = run(&mut store.cmd(&["adopt", "nobody", "new-name"]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// `adopt` killed at each of its renames: the next writer finishes it or leaves it undone,
/// never half: every point once in the catalogue, one root file each, all of one identity or
/// the three old ones untouched, and verify finds nothing wrong.
#[test]
fn an_adopt_killed_at_any_rename_is_finished_or_undone_whole() {
    let work = tempfile::tempdir().expect("tempdir");
    let (fixture, _) = split_history(work.path());
    let mut killed = 0;
    for when in 1..=12 {
        let store = fixture.copy();
        let status = store.killed_at(
            "rename",
            when,
            &[
                std::ffi::OsStr::new("adopt"),
                "web01".as_ref(),
                UUID_A.as_ref(),
            ],
        );
        if std::os::unix::process::ExitStatusExt::signal(&status) == Some(9) {
            killed += 1;
        }
        // The next writer settles what the kill left.
        ok(&mut store.cmd(&["policy", "set", "--vm", "other", "--key-interval", "0"]));
        let list = store.list();
        assert_eq!(list.len(), 5, "kill #{when}: {list:?}");
        let mut seen: Vec<String> = list.iter().map(id).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 5, "kill #{when}");
        assert_eq!(
            root_files(&store).len(),
            5,
            "kill #{when}: {:?}",
            root_files(&store)
        );
        let with_uuid = list.iter().filter(|p| p["vm_uuid"] == UUID_A).count();
        assert!(
            with_uuid == 2 || with_uuid == 5,
            "kill #{when}: {with_uuid} of 5 are one history"
        );
        ok(&mut store.cmd(&["verify"]));
    }
    assert!(
        killed >= 3,
        "the kills never reached adopt's renames ({killed})"
    );
}
