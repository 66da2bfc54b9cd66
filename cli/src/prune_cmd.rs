//! `cairn prune`: retention rules applied to the chosen points, locally or through a server,
//! and the plan printed (the rule that keeps each point).

use anyhow::Result;
use cairn_gc::{GcOptions, Rules};
use chrono::Duration;
use clap::Args;
use serde_json::json;

use crate::point_rows::points_table;
use crate::store_cmd::{PointFilter, StoreArg, open_write};
use crate::values::parse_duration;
use crate::words::human_bytes;

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    cairn prune --dry-run --store /backups/store --keep-last 3 --keep-daily 7 --keep-monthly 12\n  \
    cairn prune --vm web01 --disk xvda --keep-daily 14 --json\n\n\
    Rules apply per VM and disk, newest first, in the order within, last, hourly, daily, weekly\n\
    (ISO), monthly, yearly; each keeps the newest point of N periods (in the store's time zone)\n\
    that no earlier rule covered. Through a server (--server), the server applies the rules\n\
    and returns the same plan; an admin token is needed. Protected points are always kept. Dropping a point writes no\n\
    chunk data: run `cairn gc` to reclaim the space. (restic users: this is restic's\n\
    `forget --keep-*`; restic's `prune` is `cairn gc`.)")]
pub struct PruneArgs {
    #[command(flatten)]
    pub store: StoreArg,
    #[command(flatten)]
    pub filter: PointFilter,
    /// Keep the N newest points.
    #[arg(long, default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the newest point of each of the N newest hours.
    #[arg(long, default_value_t = 0)]
    pub keep_hourly: u32,
    /// ... days.
    #[arg(long, default_value_t = 0)]
    pub keep_daily: u32,
    /// ... ISO weeks.
    #[arg(long, default_value_t = 0)]
    pub keep_weekly: u32,
    /// ... months.
    #[arg(long, default_value_t = 0)]
    pub keep_monthly: u32,
    /// ... years.
    #[arg(long, default_value_t = 0)]
    pub keep_yearly: u32,
    /// Keep every point taken within this span (90m, 12h, 7d, 2w) before the disk's newest
    /// point (not before now: if backups stop, this keeps removing nothing more).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub keep_within: Option<Duration>,
    /// Show what would be kept and removed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Wait for another writer instead of failing.
    #[arg(long)]
    pub wait: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn prune(a: &PruneArgs) -> Result<i32> {
    let rules = Rules {
        last: a.keep_last,
        hourly: a.keep_hourly,
        daily: a.keep_daily,
        weekly: a.keep_weekly,
        monthly: a.keep_monthly,
        yearly: a.keep_yearly,
        within_seconds: a
            .keep_within
            .map_or(0, |d| u64::try_from(d.num_seconds()).unwrap_or(0)),
    };
    if !rules.any() {
        crate::usage!(
            "give at least one --keep-* rule (prune never removes every point of a disk)"
        );
    }
    let filter = a.filter.filter();
    let (doc, place) = match a.store.remote()? {
        Some(r) => (
            r.prune(&json!({ "rules": rules, "filter": filter, "dry_run": a.dry_run }))?,
            format!(" in {}", r.url()),
        ),
        None => {
            let store = if a.dry_run {
                crate::store_cmd::open_read(&a.store.store)?
            } else {
                open_write(&a.store.store, a.wait)?
            };
            let pruned = cairn_gc::prune(&store, &filter, &rules, a.dry_run)?;
            let mut doc = pruned.to_json(store.config().tz());
            // What `cairn gc` would free now (its own dry run): the space a prune gives back is
            // reclaimed by gc, so say how much up front. The store is closed first: a read-only
            // index opened beside a live writer can miss files the writer's compaction just
            // replaced.
            drop(store);
            if !a.dry_run && pruned.removed().next().is_some() {
                let opts = GcOptions {
                    dry_run: true,
                    ..GcOptions::default()
                };
                match cairn_gc::collect(&a.store.store, &opts, &|_| {}) {
                    Ok(g) => {
                        doc["gc_would_free"] = json!(g.bytes_freed);
                        doc["gc_would_copy"] = json!(g.bytes_copied);
                    }
                    Err(e) => crate::say!("note: cannot say what `cairn gc` would free: {e}"),
                }
            }
            (doc, String::new())
        }
    };
    if a.json {
        crate::print_json(&doc)?;
        return Ok(0);
    }
    render_prune(doc, &place);
    Ok(0)
}

/// `cairn prune` for people, from its JSON document (the same from a store or a server).
fn render_prune(mut doc: serde_json::Value, place: &str) {
    // The rows are taken out of the document, not copied (a prune of 100 000 points).
    let mut points = match doc["points"].take() {
        serde_json::Value::Array(a) => a,
        _ => Vec::new(),
    };
    let n = |k: &str| doc[k].as_u64().unwrap_or(0);
    let split = name_histories(&mut points);
    points_table(
        points.iter().map(|p| {
            let what = match p["reason"].as_str() {
                _ if !p["keep"].as_bool().unwrap_or(false) => "remove".to_owned(),
                Some("held") => "keep (held by the store's minimum retention)".to_owned(),
                Some(r) => format!("keep ({r})"),
                None => "keep".to_owned(),
            };
            (p, what)
        }),
        "DECISION",
    );
    let (kept, removed) = (n("kept"), n("removed"));
    if doc["dry_run"].as_bool().unwrap_or(false) {
        let freed = doc["would_free_bytes"].as_u64().map_or(String::new(), |b| {
            format!(
                ", freeing up to {} ({} only they hold) at the next `cairn gc`",
                human_bytes(b),
                crate::words::count(n("would_free_chunks"), "chunk")
            )
        });
        println!(
            "dry run{place}: would keep {kept} and remove {}{freed}",
            crate::words::count(removed, "point"),
        );
    } else {
        println!(
            "kept {kept}, removed {}{place} in {:.3}s ({} now unreferenced; `cairn gc` reclaims them)",
            crate::words::count(removed, "point"),
            doc["forget_seconds"].as_f64().unwrap_or(0.0),
            crate::words::count(n("chunks_unreferenced"), "chunk")
        );
        if let Some(b) = doc["gc_would_free"].as_u64() {
            println!(
                "`cairn gc` would now free {} (copying {})",
                human_bytes(b),
                human_bytes(n("gc_would_copy"))
            );
        }
    }
    for vm in &split {
        println!(
            "note: VM {vm} has several histories (a UUID given later, or a rename): each is \
             pruned on its own; `cairn adopt` joins them"
        );
    }
    for w in doc["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", w.as_str().unwrap_or_default());
    }
}

/// A VM name with several histories (a UUID given later, a rename without one): each of its
/// points says which, so the split shows; the names so split.
fn name_histories(points: &mut [serde_json::Value]) -> std::collections::BTreeSet<String> {
    let identity = |p: &serde_json::Value| {
        (
            p["vm"].as_str().unwrap_or_default().to_owned(),
            p["vm_uuid"].as_str().map(str::to_owned),
            p["pool"].as_str().map(str::to_owned),
        )
    };
    let mut ids: Vec<_> = points.iter().map(identity).collect();
    ids.sort();
    ids.dedup();
    let split: std::collections::BTreeSet<String> = ids
        .windows(2)
        .filter(|w| w[0].0 == w[1].0)
        .map(|w| w[0].0.clone())
        .collect();
    for p in points.iter_mut() {
        let (vm, uuid, pool) = identity(p);
        if split.contains(&vm) {
            let mut shown = vm;
            shown.push_str(&match (uuid, pool) {
                (None, None) => " (no uuid)".to_owned(),
                (u, p) => format!(
                    " ({})",
                    [
                        u.map(|u| format!("uuid {u}")),
                        p.map(|p| format!("pool {p}"))
                    ]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(", ")
                ),
            });
            p["vm"] = serde_json::json!(shown);
        }
    }
    split
}
