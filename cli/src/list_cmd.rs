//! `cairn list`: the points of a store, filtered, as a table or JSON.

use anyhow::Result;
use cairn_store::RecoveryPoint;
use chrono_tz::Tz;
use clap::Args;
use serde_json::json;

use crate::store_cmd::{Selection, StoreArg};
use crate::table::{Align, Table};
use crate::values::show_time;
use crate::words::human_bytes;

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cairn list --store /backups/store --vm web01\n  \
    cairn list --pool prod --tag monthly --last 1 --json\n  \
    cairn list --boot --vm web01        # each point's last check-boot"
)]
pub struct ListArgs {
    #[command(flatten)]
    pub store: StoreArg,
    #[command(flatten)]
    pub select: Selection,
    /// Show each point's last `check-boot` (BOOT: ok and seconds, or FAILED and why; in JSON,
    /// `boot_check`).
    #[arg(long)]
    pub boot: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn point_json(p: &RecoveryPoint, tz: Tz) -> serde_json::Value {
    json!({
        "id": p.id, "vm": p.vm, "disk": p.disk, "time": show_time(&p.time, tz), "size": p.size,
        "source": p.source, "parent": p.parent,
        "bytes_read": p.stats.bytes_read, "chunks": p.stats.chunks, "new_chunks": p.stats.new_chunks,
        "new_stored_bytes": p.stats.new_stored_bytes, "zero_chunks": p.stats.zero_chunks,
        "parent_chunks": p.stats.parent_chunks, "known_chunks": p.stats.known_chunks,
        "seconds": p.stats.seconds, "key": p.stats.key, "healed_chunks": p.stats.healed_chunks,
        "rewritten_chunks": p.stats.rewritten_chunks,
        "protected": p.protected_at(chrono::Utc::now()), "protected_until": p.protected_until.map(|t| show_time(&t, tz)), "run": p.run, "vm_uuid": p.labels.vm_uuid,
        "pool": p.labels.pool, "host": p.labels.host, "tags": p.labels.tags, "note": p.labels.note,
        "claimed_time": p.labels.claimed_time.map(|t| show_time(&t, tz)), "committed": show_time(&p.committed, tz),
    })
}

pub fn list(a: &ListArgs) -> Result<i32> {
    let reader = a.store.reader()?;
    let store = reader.get();
    let tz = store.config().tz();
    let points = a.select.choose_in(store)?;
    let checks = match (&reader, a.boot) {
        (_, false) => None,
        (crate::store_cmd::Reader::Local(s), true) => {
            Some(cairn_gc::history::boot_checks(s.root()))
        }
        (crate::store_cmd::Reader::Remote(r), true) => Some(r.boot_checks()?),
    };
    let check_of = |p: &RecoveryPoint| checks.as_ref().and_then(|c| c.get(p.id.as_str()));
    if a.json {
        let rows: Vec<_> = points
            .iter()
            .map(|p| {
                let mut j = point_json(p, tz);
                if checks.is_some() {
                    j["boot_check"] = check_of(p).cloned().unwrap_or(serde_json::Value::Null);
                }
                j
            })
            .collect();
        crate::print_json(&rows)?;
        return Ok(0);
    }
    // Identity, tags and notes get columns when some point has them.
    let extra = |f: fn(&RecoveryPoint) -> String| -> Option<Vec<String>> {
        let v: Vec<String> = points.iter().map(f).collect();
        v.iter().any(|x| !x.is_empty()).then_some(v)
    };
    let extras: Vec<(&str, Vec<String>)> = [
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
    ]
    .into_iter()
    .filter_map(|(h, c)| c.map(|v| (h, v)))
    .collect();
    let mut columns = vec![
        ("ID", Align::Left),
        ("VM", Align::Left),
        ("DISK", Align::Left),
        ("TIME", Align::Left),
        ("SIZE", Align::Right),
        ("NEW", Align::Right),
        ("SOURCE", Align::Left),
        ("FLAGS", Align::Left),
        ("RUN", Align::Left),
    ];
    if checks.is_some() {
        columns.push(("BOOT", Align::Left));
    }
    columns.extend(extras.iter().map(|(h, _)| (*h, Align::Left)));
    let mut table = Table::new(&columns);
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
        let mut cells = vec![
            p.short_id().to_string(),
            p.vm.clone(),
            p.disk.clone(),
            show_time(&p.time, tz),
            human_bytes(p.size),
            human_bytes(p.stats.new_stored_bytes),
            p.source.kind.to_string(),
            flags,
            p.run
                .as_deref()
                .map_or("", |r| &r[..8.min(r.len())])
                .to_owned(),
        ];
        if checks.is_some() {
            cells.push(match check_of(p) {
                Some(c) if c["booted"] == true => format!("ok {}s", c["seconds"]),
                Some(c) => format!("FAILED: {}", c["why"].as_str().unwrap_or("?")),
                None => "-".into(),
            });
        }
        cells.extend(extras.iter().map(|(_, v)| v[i].clone()));
        table.row(cells);
    }
    table.print();
    println!("flags: K key backup (read the whole disk), P protected");
    if points.is_empty() {
        println!("(no recovery points)");
    }
    Ok(0)
}
