//! Every output tells the truth and can be read: tables line up in display columns whatever
//! the names (CJK, emoji), errors under `--json` are JSON on standard output with the exit
//! status the text error has, and every time in JSON is in the store's time zone.

use cairn_tests::{TestStore as Store, gen_disk, id, json, ok, run};
use unicode_width::UnicodeWidthStr;

/// The display column at which `cell` starts in `line`.
fn column_of(line: &str, cell: &str) -> usize {
    let at = line
        .find(cell)
        .unwrap_or_else(|| panic!("{cell:?} not in {line:?}"));
    line[..at].width()
}

/// A store with points of a VM with a CJK name (raw source), one with an emoji (VHD source)
/// and a plain one with a tag: every column of `list` and `report` starts where its heading
/// does, in display columns.
#[test]
fn tables_line_up_in_display_columns_whatever_the_names() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let raw = w.join("d.raw");
    gen_disk(&raw, "2M", 1, 1, 0);
    let vhd = w.join("d.vhd");
    ok(store.cmd(&["vhd", "from-raw"]).arg(&raw).arg(&vhd));
    store.backup("データベース", "2026-11-20T02:00:00Z", "xvda", &raw, &[]);
    store.backup("🦀crab", "2026-11-20T03:00:00Z", "xvda", &vhd, &[]);
    store.backup(
        "web01",
        "2026-11-20T04:00:00Z",
        "disk-number-two",
        &raw,
        &["--tag", "x"],
    );
    let list = ok(&mut store.cmd(&["list"]));
    let lines: Vec<&str> = list.lines().take(4).collect();
    let header = lines[0];
    for (heading, cells) in [
        ("DISK", ["xvda", "xvda", "disk-number-two"]),
        ("TIME", ["2026-11-20T02", "2026-11-20T03", "2026-11-20T04"]),
        ("SOURCE", ["raw", "vhd", "raw"]),
        ("FLAGS", ["K-", "K-", "K-"]),
    ] {
        let at = column_of(header, heading);
        for (line, cell) in lines[1..].iter().zip(cells) {
            assert_eq!(column_of(line, cell), at, "{heading} misplaced:\n{list}");
        }
    }
    // TAGS comes after RUN: shifted columns would misplace it.
    assert_eq!(
        column_of(lines[3], " x").saturating_add(1),
        column_of(header, "TAGS"),
        "{list}"
    );
    // Figures are right-aligned: every SIZE cell ends where its heading does.
    let end = column_of(header, "SIZE") + 4;
    for line in &lines[1..] {
        let size = "2.00 MiB";
        assert_eq!(column_of(line, size) + size.len(), end, "{list}");
    }
    // report: the ratios end where their heading does, on every row (the names differ).
    let report = ok(&mut store.cmd(&["report"]));
    let rows: Vec<&str> = report
        .lines()
        .take_while(|l| !l.starts_with("reclaimable now"))
        .collect();
    let end = column_of(rows[0], "DEDUP") + "DEDUP".len();
    assert!(rows.len() > 4, "{report}");
    for row in &rows[1..] {
        let at = row.find("x ").expect("a ratio") + 1;
        assert_eq!(row[..at].width(), end, "{report}");
    }
}

/// A failing command under `--json` prints `{"error", "kind", "exit_status"}` on standard
/// output, nothing on standard error, and exits as the same command without `--json` does:
/// 2 for what was typed wrong (clap's findings and cairn's own), 1 for a failed operation.
#[test]
fn errors_under_json_are_json_on_stdout_with_the_text_errors_exit_status() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let disk = work.path().join("d.raw");
    gen_disk(&disk, "1M", 1, 1, 0);
    store.backup("web01", "2026-11-20T02:00:00Z", "xvda", &disk, &[]);
    let nowhere = work.path().join("no-store");
    let cases: [(&[&str], i32, &str); 6] = [
        (&["restore", "web01/xvda@latest"], 2, "usage"),
        (&["gc", "--max-unused", "150"], 2, "usage"),
        (&["prune", "--keep-last", "1", "--vm", "nobody"], 2, "usage"),
        (
            &["restore", "nobody/xvda@latest", "/tmp/x.raw"],
            1,
            "not-found",
        ),
        (&["list", "--store", "NOWHERE"], 1, "error"),
        (&["list", "--since", "yesterday"], 2, "usage"),
    ];
    for (args, code, kind) in cases {
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("NOWHERE", &nowhere.display().to_string()))
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let text = run(&mut store.cmd(&args));
        assert_eq!(text.status.code(), Some(code), "{args:?}: {text:?}");
        assert!(text.stdout.is_empty(), "{args:?}: {text:?}");
        let mut with_json = args.clone();
        with_json.push("--json");
        let out = run(&mut store.cmd(&with_json));
        assert_eq!(out.status.code(), Some(code), "{with_json:?}: {out:?}");
        assert!(out.stderr.is_empty(), "{with_json:?}: {out:?}");
        let doc = json(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(doc["kind"], kind, "{with_json:?}: {doc}");
        assert_eq!(doc["exit_status"], code, "{doc}");
        let said = doc["error"].as_str().unwrap_or_default();
        assert!(!said.is_empty(), "{doc}");
        // The same words as the text error's first line.
        let first = String::from_utf8_lossy(&text.stderr)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        let first_words: Vec<&str> = first.split_whitespace().skip(2).take(3).collect();
        assert!(
            first_words.iter().all(|w| said.contains(w)),
            "{first:?} vs {said:?}"
        );
    }
}

/// In a store whose zone is Europe/Paris, every time `list --json`, `protect --json` and
/// `prune --json` print carries that zone's offset: the point's time, when it was committed,
/// how long it is protected.
#[test]
fn every_json_time_is_in_the_stores_zone() {
    let store = Store::new("64K");
    ok(&mut store.cmd(&["policy", "timezone", "Europe/Paris"]));
    let work = tempfile::tempdir().expect("tempdir");
    let disk = work.path().join("d.raw");
    gen_disk(&disk, "1M", 1, 1, 0);
    let p = id(&store.backup("web01", "2026-11-20T02:00:00Z", "xvda", &disk, &[]));
    let prot = json(&ok(&mut store.cmd(&[
        "protect",
        "--json",
        "--until",
        "2030-01-15",
        &p,
    ])));
    assert_eq!(
        prot["protected_until"], "2030-01-15T00:00:00+01:00",
        "{prot}"
    );
    let list = json(&ok(&mut store.cmd(&["list", "--json"])));
    let point = &list[0];
    assert_eq!(point["time"], "2026-11-20T03:00:00+01:00", "{point}");
    assert_eq!(point["protected_until"], "2030-01-15T00:00:00+01:00");
    let committed = point["committed"].as_str().unwrap_or_default();
    assert!(committed.ends_with("+01:00"), "{point}");
    // One name for one figure: the size is `size`, not also `logical_bytes`.
    assert!(point.get("logical_bytes").is_none(), "{point}");
    let pruned = json(&ok(&mut store.cmd(&[
        "prune",
        "--json",
        "--dry-run",
        "--keep-last",
        "1",
    ])));
    assert_eq!(pruned["points"][0]["time"], "2026-11-20T03:00:00+01:00");
}

/// The page, the text report and the JSON say one reclaimable figure, and it is what gc frees:
/// unreferenced chunks and orphan packs (a pack no index entry names, as a killed backup
/// leaves) together.
#[test]
fn the_page_and_the_report_say_what_gc_frees_orphan_packs_included() {
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let disk = work.path().join("d.raw");
    gen_disk(&disk, "4M", 1, 1, 0);
    store.backup("web01", "2026-11-20T02:00:00Z", "xvda", &disk, &[]);
    let orphan_dir = store.path().join("packs/ff");
    std::fs::create_dir_all(&orphan_dir).expect("mkdir");
    let orphan = orphan_dir.join(format!("{}.pack", "f".repeat(32)));
    std::fs::copy(&store.pack_files()[0], &orphan).expect("copy");
    let orphan_len = std::fs::metadata(&orphan).expect("orphan").len();
    let doc = json(&ok(&mut store.cmd(&["report", "--json"])));
    assert_eq!(doc["reclaimable_bytes"], orphan_len, "{doc}");
    let page = work.path().join("page.html");
    ok(store.cmd(&["report", "--html"]).arg(&page));
    let html = std::fs::read_to_string(&page).expect("page");
    assert!(
        html.contains(&format!(
            "data-path=\"reclaimable_bytes\" data-value=\"{orphan_len}\""
        )),
        "the page's reclaimable figure is not {orphan_len}"
    );
    let text = ok(&mut store.cmd(&["report"]));
    let line = text
        .lines()
        .find(|l| l.starts_with("reclaimable now: "))
        .expect("a reclaimable line");
    let dry = json(&ok(&mut store.cmd(&[
        "gc",
        "--dry-run",
        "--json",
        "--repack-below",
        "100",
    ])));
    assert_eq!(dry["bytes_freed"], orphan_len, "{dry}");
    assert!(line.contains("1 orphan pack"), "{line}");
}
