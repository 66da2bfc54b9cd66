//! `cairn report`: what each VM, disk and point costs, as text, JSON or a page.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::store_cmd::{Selection, StoreArg, open_read};
use crate::table::{Align, Table};
use crate::words::{count, human_bytes};

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cairn report --store /backups/store --json | jq .vms\n  \
    cairn report --pool prod --since 7d\n  \
    cairn report --store /backups/store --html /var/www/backups.html\n\n\
    Shared and unique bytes are counted over the whole store; the filters choose the rows.\n\
    With --vm, only that VM's points and trees are read (what it holds alone is still counted\n\
    against every point, through the reference counts) and the store-wide figures are left out.\n\
    --html writes one self-contained page (no network): savings, growth and when the disk\n\
    fills, the last verify, the oldest last backups, VMs ranked by what deleting them frees\n\
    and by growth, and for the 20 VMs that free most a chart and their newest points (every\n\
    point of one VM with --vm). The JSON is docs/report-json.md."
)]
pub struct ReportArgs {
    #[command(flatten)]
    pub store: StoreArg,
    #[command(flatten)]
    pub select: Selection,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Write the report as an HTML page to FILE (replaced atomically; `-` for stdout), instead
    /// of the text (with --json, the JSON the page is drawn from is printed too).
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

/// `a` with the fields of `b` added.
pub fn report(a: &ReportArgs) -> Result<i32> {
    let doc = match a.store.remote()? {
        Some(r) => {
            let shown = ids(a.select.choose_in(&*r)?);
            cairn_report::keep_rows(r.report()?, &shown)
        }
        None => local_doc(a)?,
    };
    let damaged = doc["damaged_points"]
        .as_array()
        .is_some_and(|d| !d.is_empty());
    if let Some(file) = &a.html {
        write_page(a, &doc, file)?;
    }
    if a.json {
        crate::print_json(&doc)?;
    } else if a.html.is_none() {
        render_report(&doc);
    }
    // 3: a partial result.
    Ok(if damaged { 3 } else { 0 })
}

/// The ids of `points`: the rows a report shows.
fn ids(points: Vec<cairn_store::RecoveryPoint>) -> HashSet<cairn_store::PointId> {
    points.into_iter().map(|p| p.id).collect()
}

/// The report document of a store folder: costs counted over every point (what is shared, what
/// is unique), the selection choosing the rows shown.
fn local_doc(a: &ReportArgs) -> Result<serde_json::Value> {
    let store = open_read(&a.store.store)?;
    if let Some(vm) = &a.select.filter.vm {
        // One VM's document: its points alone are read (what is unique is still counted
        // against the whole store); the other filters choose its rows.
        let shown = ids(a.select.choose_in(&store)?);
        return Ok(cairn_report::document_of_vm(&store, vm, &|p| {
            shown.contains(&p.id)
        })?);
    }
    let tz = store.config().tz();
    let points = store.points()?;
    // Costs are counted over every point (what is shared, what is unique); the
    // selection chooses the rows shown.
    let shown = ids(a.select.choose(&points)?);
    let costs = cairn_gc::cost::costs(&store, &points)?;
    let extras = cairn_report::Extras::of(store.root());
    // Space no point references: garbage frames (what `cairn gc` can free, with every
    // pack rewritten) and unindexed packs, from gc's own dry run. `None` while a gc
    // runs. The store is closed first: a read-only index opened beside a live writer
    // can miss files the writer's compaction just replaced.
    drop(store);
    let reclaimable =
        cairn_gc::collect(&a.store.store, &cairn_gc::GcOptions::reclaimable(), &|_| {}).ok();
    Ok(cairn_report::build(
        &costs,
        &|p| shown.contains(&p.id),
        reclaimable.as_ref(),
        tz,
        &extras,
    ))
}

/// `--html FILE` (`-`: stdout): the page; every point of a VM asked for by name, else its
/// newest ones.
fn write_page(a: &ReportArgs, doc: &serde_json::Value, file: &std::path::Path) -> Result<()> {
    // Every point of a VM asked for by name; else its newest ones.
    let options = cairn_report::page::PageOptions {
        points_per_vm: if a.select.filter.vm.is_none() {
            cairn_report::page::PageOptions::default().points_per_vm
        } else {
            usize::MAX
        },
        vm_pages: false,
        browse_links: false,
    };
    let page = cairn_report::page::render(doc, &options);
    if file == std::path::Path::new("-") {
        if a.json {
            crate::usage!("--html - and --json both go to stdout: give the page a file name");
        }
        print!("{page}");
    } else {
        // A typo in a folder is an error naming it, not a new tree of folders.
        let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir.filter(|d| !d.is_dir()) {
            anyhow::bail!(
                "{}: no such folder to write the page {} into",
                dir.display(),
                file.display()
            );
        }
        cairn_store::write_atomic_mode(file, page.as_bytes(), 0o644)
            .with_context(|| format!("writing the page {}", file.display()))?;
        crate::say!(
            "wrote {} ({})",
            file.display(),
            human_bytes(page.len() as u64)
        );
    }
    Ok(())
}

/// `cairn report` for people, from the report document (docs/report-json.md): one row for the
/// store, each VM, its disks and their points.
fn render_report(doc: &serde_json::Value) {
    let list = |k: &str| doc[k].as_array().map_or(&[][..], Vec::as_slice);
    let text = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
    // A VM is its UUID (and pool) when it has one, else its name (and pool).
    let key = cairn_report::row_vm_key;
    let vm_name = |v: &serde_json::Value| {
        let mut name = text(v, "vm");
        if let Some(pool) = v["pool"].as_str() {
            name = format!("{name} pool={pool}");
        }
        if let Some(u) = v["vm_uuid"].as_str() {
            name = format!("{name} uuid={u}");
        }
        name
    };
    let point_name = |p: &serde_json::Value| {
        let id = text(p, "id");
        format!(
            "    {} {}",
            cairn_store::point::short_id(&id),
            text(p, "time")
        )
    };
    let (vms, disks, points) = (list("vms"), list("disks"), list("points"));
    let mut t = Table::new(&[
        ("", Align::Left),
        ("PTS", Align::Right),
        ("LOGICAL", Align::Right),
        ("ALLOCATED", Align::Right),
        ("STORED", Align::Right),
        ("UNIQUE", Align::Right),
        ("DEDUP", Align::Right),
        ("COMPR", Align::Right),
        ("AS FULLS", Align::Right),
        ("AS XO VHDS", Align::Right),
    ]);
    let mut row = |name: String, c: &serde_json::Value| {
        let ratio = |k: &str| format!("{:.2}x", c[k].as_f64().unwrap_or(0.0));
        t.row([
            name,
            n(c, "points").to_string(),
            human_bytes(n(c, "logical_bytes")),
            human_bytes(n(c, "allocated_bytes")),
            human_bytes(n(c, "stored_bytes")),
            human_bytes(n(c, "unique_stored_bytes")),
            ratio("dedup_ratio"),
            ratio("compression_ratio"),
            human_bytes(n(c, "full_backups_bytes")),
            human_bytes(n(c, "xo_vhd_deltas_bytes")),
        ]);
    };
    // Each VM's disks and each disk's points, found in one pass each (a point belongs to its
    // disk by the VM's identity, as `VmKey` says it).
    let mut disks_of: HashMap<_, Vec<&serde_json::Value>> = HashMap::new();
    for d in disks {
        disks_of.entry(key(d)).or_default().push(d);
    }
    let mut points_of: HashMap<_, Vec<&serde_json::Value>> = HashMap::new();
    for p in points {
        points_of
            .entry((key(p), text(p, "disk")))
            .or_default()
            .push(p);
    }
    if !doc["store"].is_null() {
        row("store".into(), &doc["store"]);
    }
    for v in vms {
        row(format!("vm {}", vm_name(v)), v);
        for d in disks_of.remove(&key(v)).unwrap_or_default() {
            row(format!("  disk {}", text(d, "disk")), d);
            for p in points_of
                .remove(&(key(v), text(d, "disk")))
                .unwrap_or_default()
            {
                row(point_name(p), p);
            }
        }
    }
    t.print();
    say_reclaimable_and_damage(doc);
}

/// What gc can reclaim now, and the points whose figures leave out what cannot be read.
fn say_reclaimable_and_damage(doc: &serde_json::Value) {
    let list = |k: &str| doc[k].as_array().map_or(&[][..], Vec::as_slice);
    let text = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
    match doc["garbage_bytes"].as_u64() {
        // A VM's report says nothing of the store's garbage.
        None if !doc["scope"].is_null() => {}
        Some(g) => println!(
            "reclaimable now: {} ({} of garbage in {}, {} in {}); `cairn gc` reclaims it",
            human_bytes(n(doc, "reclaimable_bytes")),
            human_bytes(g),
            count(n(doc, "garbage_frames"), "frame"),
            human_bytes(n(doc, "orphan_bytes")),
            count(n(doc, "orphan_packs"), "orphan pack"),
        ),
        None => println!("reclaimable now: unknown while a garbage collection runs"),
    }
    for p in list("damaged_points") {
        let id = text(p, "id");
        println!(
            "damaged: point {} {}/{} {}: {}; its figures leave out what cannot be read \
             (`cairn verify` says what is lost)",
            cairn_store::point::short_id(&id),
            text(p, "vm"),
            text(p, "disk"),
            text(p, "time"),
            text(p, "what")
        );
    }
}
