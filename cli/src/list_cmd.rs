//! `cairn list`: the points of a store, filtered, as a table or JSON.

use std::io::Write;

use anyhow::Result;
use cairn_store::RecoveryPoint;
use chrono_tz::Tz;
use clap::Args;

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

/// A point as `list --json` prints it: its fields in the order of their names (as a JSON
/// object of them reads), written straight from the point (no document built per point).
#[derive(serde::Serialize)]
pub struct PointRow<'p> {
    /// The point's last `check-boot` when asked for (`null`: never checked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_check: Option<Option<&'p serde_json::Value>>,
    bytes_read: u64,
    chunks: u64,
    claimed_time: Option<String>,
    committed: String,
    disk: &'p str,
    healed_chunks: u64,
    host: &'p Option<String>,
    id: &'p cairn_store::PointId,
    key: bool,
    known_chunks: u64,
    new_chunks: u64,
    new_stored_bytes: u64,
    note: &'p Option<String>,
    parent: &'p Option<cairn_store::PointId>,
    parent_chunks: u64,
    pool: &'p Option<String>,
    protected: bool,
    protected_until: Option<String>,
    rewritten_chunks: u64,
    run: &'p Option<String>,
    seconds: f64,
    size: u64,
    source: serde_json::Value,
    tags: &'p [String],
    time: String,
    vm: &'p str,
    vm_uuid: &'p Option<String>,
    zero_chunks: u64,
}

impl<'p> PointRow<'p> {
    pub fn of(p: &'p RecoveryPoint, tz: Tz) -> Self {
        let s = &p.stats;
        let l = &p.labels;
        PointRow {
            boot_check: None,
            bytes_read: s.bytes_read,
            chunks: s.chunks,
            claimed_time: l.claimed_time.map(|t| show_time(&t, tz)),
            committed: show_time(&p.committed, tz),
            disk: &p.disk,
            healed_chunks: s.healed_chunks,
            host: &l.host,
            id: &p.id,
            key: s.key,
            known_chunks: s.known_chunks,
            new_chunks: s.new_chunks,
            new_stored_bytes: s.new_stored_bytes,
            note: &l.note,
            parent: &p.parent,
            parent_chunks: s.parent_chunks,
            pool: &l.pool,
            protected: p.protected_at(chrono::Utc::now()),
            protected_until: p.protected_until.map(|t| show_time(&t, tz)),
            rewritten_chunks: s.rewritten_chunks,
            run: &p.run,
            seconds: s.seconds,
            size: p.size,
            source: serde_json::to_value(&p.source).unwrap_or_default(),
            tags: &l.tags,
            time: show_time(&p.time, tz),
            vm: &p.vm,
            vm_uuid: &l.vm_uuid,
            zero_chunks: s.zero_chunks,
        }
    }
}

/// A point as `list --json` prints it, as a document.
pub fn point_json(p: &RecoveryPoint, tz: Tz) -> serde_json::Value {
    serde_json::to_value(PointRow::of(p, tz)).unwrap_or_default()
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
            let mut row = PointRow::of(&p, tz);
            if checks.is_some() {
                row.boot_check = Some(check_of(&p));
            }
            rows.push(&row)
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
    columns.extend(EXTRAS.iter().map(|h| (*h, Align::Left)));
    // Every cell's text, one after another in one string, and where each ends; every column's
    // width; which columns are shown (the identity, tag and note ones when some point fills
    // them).
    let mut all = Rows::new(&columns);
    let mut shown = vec![true; columns.len() - EXTRAS.len()];
    shown.extend([false; EXTRAS.len()]);
    let mut text = String::new();
    let mut ends: Vec<usize> = Vec::new();
    a.select.each_in(store, &mut |p| {
        let mut row = cells(&p);
        row.extend(extra_cells(&p));
        all.measure(&row);
        for (c, s) in row.iter().zip(shown.iter_mut()) {
            *s |= !c.is_empty();
            text.push_str(c);
            ends.push(text.len());
        }
        Ok(())
    })?;
    let headed: Vec<(&str, Align)> = columns
        .iter()
        .zip(&shown)
        .filter(|(_, s)| **s)
        .map(|(c, _)| *c)
        .collect();
    let mut rows = Rows::new(&headed);
    let widths: Vec<usize> = all
        .widths()
        .iter()
        .zip(&shown)
        .filter(|(_, s)| **s)
        .map(|(w, _)| *w)
        .collect();
    rows.widen(&widths);
    // The rows in the store's order (by time: the disks of one backup run are listed
    // together).
    writeln!(out, "{}", rows.heading())?;
    let mut start = 0;
    for row in ends.chunks(columns.len()) {
        let mut cells = Vec::with_capacity(columns.len());
        for (end, s) in row.iter().zip(&shown) {
            if *s {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn rows_written_one_at_a_time_read_as_the_whole_array_does() {
        for values in [
            vec![],
            vec![json!({"a": 1})],
            vec![
                json!({"id": "x", "tags": ["a", "b"], "source": {"kind": "raw"}, "note": "l1\nl2"}),
                json!({"empty": {}, "list": [], "n": null}),
            ],
        ] {
            let mut out = Vec::new();
            let mut rows = crate::JsonRows::new(&mut out);
            for v in &values {
                rows.push(v).expect("push");
            }
            rows.end().expect("end");
            let whole = serde_json::to_string_pretty(&values).expect("json") + "\n";
            assert_eq!(String::from_utf8(out).expect("utf-8"), whole);
        }
    }
}
