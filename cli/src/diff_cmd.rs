//! `cairn diff`: what changed between two points of a disk, for "what changed last night", or
//! how two disks differ (a clone against its template).
//! The two trees are compared from the top: a stretch of the disk whose leaf or node two points
//! share is unchanged without reading it; only differing leaves are compared chunk by chunk.

use anyhow::{Result, bail};
use cairn_store::{RecoveryPoint, StoreRead};
use clap::Args;
use serde_json::json;

use crate::store_cmd::StoreArg;
use crate::values::show_time;
use crate::words::{count, human_bytes};

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cairn diff web01/xvda@latest~1 web01/xvda@latest\n  \
    cairn diff --json 3f2a9c1b07de 8d01be44a2c9 | jq .changed_bytes\n  \
    cairn diff template/xvda@latest web02/xvda@latest   (a clone against its template)"
)]
pub struct DiffArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// The older point (or a point of another disk: a template).
    pub from: String,
    /// The newer point (or a point of another disk: a clone of the template).
    pub to: String,
    /// Print JSON: every changed range.
    #[arg(long)]
    pub json: bool,
}

/// The byte ranges (offset, length) where two points of a disk differ.
fn changed_ranges(
    store: &dyn StoreRead,
    a: &RecoveryPoint,
    b: &RecoveryPoint,
) -> Result<Vec<(u64, u64)>> {
    let cs = u64::from(a.chunk_size);
    let size = a.size.max(b.size);
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    cairn_store::tree::differences(store, a, b, false, |from, to| {
        let start = from * cs;
        ranges.push((start, (to * cs).min(size) - start));
    })?;
    Ok(ranges)
}

pub fn diff(a: &DiffArgs) -> Result<i32> {
    let reader = a.store.reader()?;
    let store = reader.get();
    let tz = store.config().tz();
    let (p, q) = (store.resolve(&a.from)?, store.resolve(&a.to)?);
    // Two points of one disk go oldest first; points of two disks (a clone against its
    // template) compare in the order given.
    if p.same_disk(&q) && p.time > q.time {
        crate::usage!(
            "{} ({}) is newer than {} ({}): give the older point first",
            p.short_id(),
            show_time(&p.time, tz),
            q.short_id(),
            show_time(&q.time, tz)
        );
    }
    if p.chunk_size != q.chunk_size {
        bail!("the two points were cut into chunks of different sizes");
    }
    let ranges = changed_ranges(store, &p, &q)?;
    let changed: u64 = ranges.iter().map(|r| r.1).sum();
    if a.json {
        crate::print_json(&json!({
            "from": p.id, "to": q.id, "vm": p.vm, "disk": p.disk, "to_vm": q.vm, "to_disk": q.disk,
            "from_time": show_time(&p.time, tz), "to_time": show_time(&q.time, tz),
            "from_size": p.size, "to_size": q.size, "changed_bytes": changed,
            "ranges": ranges.iter().map(|(o, l)| json!({"offset": o, "len": l})).collect::<Vec<_>>(),
        }))?;
        return Ok(0);
    }
    let to_name = if p.same_disk(&q) {
        String::new()
    } else {
        format!("{}/{} ", q.vm, q.disk)
    };
    println!(
        "{}/{} {} ({}) to {to_name}{} ({}): {} differ in {}",
        p.vm,
        p.disk,
        p.short_id(),
        show_time(&p.time, tz),
        q.short_id(),
        show_time(&q.time, tz),
        human_bytes(changed),
        count(ranges.len() as u64, "range")
    );
    for (o, l) in ranges.iter().take(20) {
        println!("  bytes {o}..{} ({})", o + l, human_bytes(*l));
    }
    if ranges.len() > 20 {
        println!("  ... {} more (--json lists them all)", ranges.len() - 20);
    }
    Ok(0)
}
