//! A VM's report (`cairn report --vm`, the page `/vm/NAME`) reads that VM's points alone, yet
//! says what the whole store's report says of it: what is unique is counted against every
//! point, through the reference counts; new bytes are those each point was the first of its
//! VM's to hold.

use cairn_tests::{TestStore, gen_disk, id, json, ok};
use serde_json::Value;

const SAME: [&str; 6] = [
    "logical_bytes",
    "allocated_bytes",
    "stored_bytes",
    "unique_stored_bytes",
    "full_backups_bytes",
    "xo_vhd_deltas_bytes",
];

fn row<'d>(doc: &'d Value, list: &str, want: &Value, keys: &[&str]) -> &'d Value {
    doc[list]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| keys.iter().all(|k| r[*k] == want[*k]))
        .unwrap_or_else(|| panic!("{list}: no row like {want}"))
}

fn compare(whole: &Value, mine: &Value, what: &str) {
    for k in SAME {
        assert_eq!(whole[k], mine[k], "{what}: {k}");
    }
    let n = |v: &Value| v["new_stored_bytes"].as_u64().expect("new");
    assert!(
        n(mine) >= n(whole),
        "{what}: new {} < {}",
        n(mine),
        n(whole)
    );
}

#[test]
fn a_vms_report_reads_its_points_alone_and_counts_what_is_shared_as_the_whole_does() {
    let store = TestStore::new("64K");
    let w = tempfile::tempdir().expect("tempdir");
    // web and db are clones of one template (they share most chunks); mail is another.
    let mut ids = Vec::new();
    for (vm, seed, template) in [("web", 1, 1), ("db", 2, 1), ("mail", 3, 2)] {
        for day in 0..3u32 {
            let raw = w.path().join(format!("{vm}-{day}.raw"));
            gen_disk(&raw, "4M", seed, template, day);
            ids.push(id(&store.backup(
                vm,
                &format!("2026-11-2{day}T02:00:00Z"),
                "xvda",
                &raw,
                &[],
            )));
        }
    }
    // The first point of web goes: what it alone held is gone, what db shares stays.
    ok(&mut store.cmd(&["forget", &ids[0]]));
    let whole = json(&ok(&mut store.cmd(&["report", "--json"])));
    let shared = |vm: &str| {
        let r = row(&whole, "vms", &serde_json::json!({ "vm": vm }), &["vm"]);
        r["stored_bytes"].as_u64().expect("stored") - r["unique_stored_bytes"].as_u64().expect("u")
    };
    assert!(
        shared("web") > 0 && shared("db") > 0,
        "the clones share nothing: {whole}"
    );
    for vm in ["web", "db", "mail"] {
        let mine = json(&ok(&mut store.cmd(&["report", "--json", "--vm", vm])));
        assert_eq!(mine["scope"]["vm"], vm);
        assert!(
            mine["store"].is_null() && mine["growth"].is_null(),
            "{mine}"
        );
        let points = mine["points"].as_array().expect("points");
        assert_eq!(points.len(), if vm == "web" { 2 } else { 3 }, "{vm}");
        for p in points {
            compare(
                row(&whole, "points", p, &["id"]),
                p,
                &format!("point of {vm}"),
            );
        }
        for list in ["vms", "disks"] {
            let rows = mine[list].as_array().expect("rows");
            assert_eq!(rows.len(), 1, "{vm}: {list}");
            let keys: &[&str] = if list == "vms" {
                &["vm"]
            } else {
                &["vm", "disk"]
            };
            compare(
                row(&whole, list, &rows[0], keys),
                &rows[0],
                &format!("{list} {vm}"),
            );
        }
        // The text says the VM's rows, not the store's.
        let text = ok(&mut store.cmd(&["report", "--vm", vm]));
        assert!(text.contains(&format!("vm {vm}")), "{text}");
        assert!(!text.lines().any(|l| l.starts_with("store ")), "{text}");
    }
}
