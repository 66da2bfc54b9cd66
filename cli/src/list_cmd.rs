//! `cairn list`: the points of a store, filtered, as a table or JSON.

use anyhow::Result;
use cairn_store::RecoveryPoint;
use chrono_tz::Tz;
use clap::Args;
use serde_json::json;

use crate::store_cmd::{Selection, StoreArg};
use crate::values::show_time;
use crate::words::human_bytes;

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cairn list --store /backups/store --vm web01\n  \
    cairn list --pool prod --tag monthly --last 1 --json"
)]
pub struct ListArgs {
    #[command(flatten)]
    pub store: StoreArg,
    #[command(flatten)]
    pub select: Selection,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn point_json(p: &RecoveryPoint, tz: Tz) -> serde_json::Value {
    json!({
        "id": p.id, "vm": p.vm, "disk": p.disk, "time": show_time(&p.time, tz), "size": p.size,
        "source": p.source, "parent": p.parent, "logical_bytes": p.stats.logical_bytes,
        "bytes_read": p.stats.bytes_read, "chunks": p.stats.chunks, "new_chunks": p.stats.new_chunks,
        "new_stored_bytes": p.stats.new_stored_bytes, "zero_chunks": p.stats.zero_chunks,
        "parent_chunks": p.stats.parent_chunks, "known_chunks": p.stats.known_chunks,
        "seconds": p.stats.seconds, "key": p.stats.key, "healed_chunks": p.stats.healed_chunks,
        "rewritten_chunks": p.stats.rewritten_chunks,
        "protected": p.protected_at(chrono::Utc::now()), "protected_until": p.protected_until, "run": p.run, "vm_uuid": p.labels.vm_uuid,
        "pool": p.labels.pool, "host": p.labels.host, "tags": p.labels.tags, "note": p.labels.note,
        "claimed_time": p.labels.claimed_time, "committed": p.committed,
    })
}

pub fn list(a: &ListArgs) -> Result<i32> {
    let reader = a.store.reader()?;
    let store = reader.get();
    let tz = store.config().tz();
    let points = a.select.choose(&store.points()?)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &points.iter().map(|p| point_json(p, tz)).collect::<Vec<_>>()
            )?
        );
        return Ok(0);
    }
    // Columns as wide as their longest value: long VM names do not break the table.
    let vw = width(&points, |p| p.vm.chars().count(), 2);
    let dw = width(&points, |p| p.disk.chars().count(), 4);
    let sw = width(&points, |p| p.source.kind.as_str().len(), 6);
    // Identity, tags and notes get columns when some point has them.
    let extra = |f: fn(&RecoveryPoint) -> String| -> Option<(usize, Vec<String>)> {
        let v: Vec<String> = points.iter().map(f).collect();
        let w = v.iter().map(|x| x.chars().count()).max().unwrap_or(0);
        (w > 0).then_some((w, v))
    };
    let columns = [
        ("POOL", extra(|p| p.labels.pool.clone().unwrap_or_default())),
        ("HOST", extra(|p| p.labels.host.clone().unwrap_or_default())),
        (
            "VM UUID",
            extra(|p| p.labels.vm_uuid.clone().unwrap_or_default()),
        ),
        ("TAGS", extra(|p| p.labels.tags.join(","))),
        (
            "NOTE",
            extra(|p| p.labels.note.clone().unwrap_or_default().replace('\n', " ")),
        ),
    ];
    let columns: Vec<(&str, usize, Vec<String>)> = columns
        .into_iter()
        .filter_map(|(h, c)| c.map(|(w, v)| (h, w.max(h.len()), v)))
        .collect();
    let extra_cells = |i: Option<usize>| -> String {
        columns
            .iter()
            .map(|(h, w, v)| {
                let cell = i.and_then(|i| v.get(i)).map_or(*h, String::as_str);
                format!("  {cell:<w$}")
            })
            .collect()
    };
    let tw = points
        .iter()
        .map(|p| show_time(&p.time, tz).len())
        .max()
        .unwrap_or(0)
        .max(4);
    let header = format!(
        "{:<12}  {:<vw$}  {:<dw$}  {:<tw$}  {:>10}  {:>10}  {:<sw$}  {:<5}  {:<8}{}",
        "ID",
        "VM",
        "DISK",
        "TIME",
        "SIZE",
        "NEW",
        "SOURCE",
        "FLAGS",
        "RUN",
        extra_cells(None)
    );
    println!("{}", header.trim_end());
    // Points sort by time, so the disks of one backup run (one time) are listed together.
    for (i, p) in points.iter().enumerate() {
        let flags = format!(
            "{}{}",
            if p.stats.key { "K" } else { "-" },
            if p.protected_at(chrono::Utc::now()) {
                "P"
            } else {
                "-"
            }
        );
        let line = format!(
            "{:<12}  {:<vw$}  {:<dw$}  {:<tw$}  {:>10}  {:>10}  {:<sw$}  {:<5}  {:<8}{}",
            p.short_id(),
            p.vm,
            p.disk,
            show_time(&p.time, tz),
            human_bytes(p.size),
            human_bytes(p.stats.new_stored_bytes),
            p.source.kind,
            flags,
            p.run.as_deref().map_or("", |r| &r[..8.min(r.len())]),
            extra_cells(Some(i))
        );
        println!("{}", line.trim_end());
    }
    println!("flags: K key backup (read the whole disk), P protected");
    if points.is_empty() {
        println!("(no recovery points)");
    }
    Ok(0)
}

/// A column as wide as its longest value, and at least as wide as its heading.
fn width(points: &[RecoveryPoint], len: impl Fn(&RecoveryPoint) -> usize, heading: usize) -> usize {
    points.iter().map(len).max().unwrap_or(0).max(heading)
}
