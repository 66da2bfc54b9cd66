//! Points in a table or a line, as prune, forget and protect print them.

use std::io::Write;

use cairn_store::RecoveryPoint;
use chrono_tz::Tz;
use serde_json::json;

use crate::table::{Align, Rows};

/// A point in one line: `3f2a9c1b07de web01/xvda 2026-11-22T02:00:00+01:00` (in the store's
/// time zone, in which the rules count periods).
pub fn point_words(p: &RecoveryPoint, tz: Tz) -> String {
    format!(
        "{} {}/{} {}",
        p.short_id(),
        p.vm,
        p.disk,
        crate::values::show_time(&p.time, tz)
    )
}

/// `points` as [`points_table`] prints them, each with `what`.
pub fn brief_table(points: &[RecoveryPoint], tz: Tz, what: &str) {
    let rows: Vec<serde_json::Value> = points
        .iter()
        .map(|p| {
            json!({ "id": p.id, "vm": p.vm, "disk": p.disk,
                    "time": crate::values::show_time(&p.time, tz) })
        })
        .collect();
    points_table(rows.iter().map(|p| (p, what.to_owned())), "ACTION");
}

/// Points as a table of id, VM, disk and time (from the JSON the commands print), with a last
/// column saying what was done to each.
pub fn points_table<'a>(
    rows: impl IntoIterator<Item = (&'a serde_json::Value, String)>,
    last: &str,
) {
    // Printed a line at a time (a prune of 100 000 points lists each): the cells are kept as
    // text and measured, not held in a table of cells.
    let mut t = Rows::new(&[
        ("ID", Align::Left),
        ("VM", Align::Left),
        ("DISK", Align::Left),
        ("TIME", Align::Left),
        (last, Align::Left),
    ]);
    let text = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let mut cells: Vec<[String; 5]> = Vec::new();
    for (p, what) in rows {
        let id = text(p, "id");
        let row = [
            cairn_store::point::short_id(&id).to_owned(),
            text(p, "vm"),
            text(p, "disk"),
            text(p, "time"),
            what,
        ];
        t.measure(&row);
        cells.push(row);
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    // A closed pipe ends the listing (as `println!` would, quietly: see main).
    let _ = writeln!(out, "{}", t.heading());
    for row in &cells {
        if writeln!(out, "{}", t.line(row)).is_err() {
            break;
        }
    }
    let _ = out.flush();
}
