//! `cairn list`: the points of a store, filtered, as a table or JSON.

use std::io::Write;

use anyhow::Result;
use cairn_store::RecoveryPoint;
use chrono_tz::Tz;
use clap::Args;
use serde_json::json;

use crate::store_cmd::{Selection, StoreArg};
use crate::table::{Align, Rows};
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

/// The columns a point's identity, tags and note take (shown when some point has them).
const EXTRAS: [&str; 5] = ["POOL", "HOST", "VM UUID", "TAGS", "NOTE"];

fn extra_cells(p: &RecoveryPoint) -> [String; 5] {
    let l = &p.labels;
    [
        l.pool.clone().unwrap_or_default(),
        l.host.clone().unwrap_or_default(),
        l.vm_uuid.clone().unwrap_or_default(),
        l.tags.join(","),
        l.note.clone().unwrap_or_default().replace('\n', " "),
    ]
}

/// Lists the points a row at a time: in JSON as they are read; as a table, each point read
/// once into its row's text (a few dozen bytes, not the point: a store of 100 000 points is
/// listed in tens of MiB), the columns measured on the way.
pub fn list(a: &ListArgs) -> Result<i32> {
    let reader = a.store.reader()?;
    let store = reader.get();
    let tz = store.config().tz();
    let checks = match (&reader, a.boot) {
        (_, false) => None,
        (crate::store_cmd::Reader::Local(s), true) => {
            Some(cairn_gc::history::boot_checks(s.root()))
        }
        (crate::store_cmd::Reader::Remote(r), true) => Some(r.boot_checks()?),
    };
    let check_of = |p: &RecoveryPoint| checks.as_ref().and_then(|c| c.get(p.id.as_str()));
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if a.json {
        let mut rows = crate::JsonRows::new(&mut out);
        a.select.each_in(store, &mut |p| {
            let mut j = point_json(&p, tz);
            if checks.is_some() {
                j["boot_check"] = check_of(&p).cloned().unwrap_or(serde_json::Value::Null);
            }
            rows.push(&j)
        })?;
        rows.end()?;
        return Ok(0);
    }
    let now = chrono::Utc::now();
    let cells = |p: &RecoveryPoint| -> Vec<String> {
        let flags = format!(
            "{}{}",
            if p.stats.key { "K" } else { "-" },
            if p.protected_at(now) { "P" } else { "-" }
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
        cells
    };
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
    // Every cell's text, one after another in one string, and where each ends; which of the
    // identity, tag and note columns some point fills, and every column's width.
    let mut base = Rows::new(&columns);
    let mut extras = EXTRAS.map(|h| Rows::new(&[(h, Align::Left)]));
    let mut filled = [false; 5];
    let mut text = String::new();
    let mut ends: Vec<usize> = Vec::new();
    a.select.each_in(store, &mut |p| {
        let mut row = cells(&p);
        base.measure(&row);
        for (i, c) in extra_cells(&p).into_iter().enumerate() {
            filled[i] |= !c.is_empty();
            extras[i].measure(std::slice::from_ref(&c));
            row.push(c);
        }
        for c in row {
            text.push_str(&c);
            ends.push(text.len());
        }
        Ok(())
    })?;
    columns.extend(
        EXTRAS
            .iter()
            .zip(filled)
            .filter(|(_, f)| *f)
            .map(|(h, _)| (*h, Align::Left)),
    );
    let mut rows = Rows::new(&columns);
    let mut widths = base.widths().to_vec();
    widths.extend(
        extras
            .iter()
            .zip(filled)
            .filter(|(_, f)| *f)
            .flat_map(|(e, _)| e.widths().iter().copied()),
    );
    rows.widen(&widths);
    // The rows in the store's order (by time: the disks of one backup run are listed
    // together).
    writeln!(out, "{}", rows.heading())?;
    let first_extra = base.widths().len();
    let per_row = first_extra + EXTRAS.len();
    let mut start = 0;
    for row in ends.chunks(per_row) {
        let mut cells = Vec::with_capacity(per_row);
        for (i, end) in row.iter().enumerate() {
            if i < first_extra || filled[i - first_extra] {
                cells.push(text[start..*end].to_owned());
            }
            start = *end;
        }
        writeln!(out, "{}", rows.line(&cells))?;
    }
    writeln!(
        out,
        "flags: K key backup (read the whole disk), P protected"
    )?;
    if ends.is_empty() {
        writeln!(out, "(no recovery points)")?;
    }
    out.flush()?;
    Ok(0)
}
