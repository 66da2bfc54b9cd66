//! Points in a table or a line, as prune, forget and protect print them.

use cairn_store::RecoveryPoint;
use chrono_tz::Tz;
use serde_json::json;

use crate::table::{Align, Table};

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
    let mut t = Table::new(&[
        ("ID", Align::Left),
        ("VM", Align::Left),
        ("DISK", Align::Left),
        ("TIME", Align::Left),
        (last, Align::Left),
    ]);
    let text = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    for (p, what) in rows {
        let id = text(p, "id");
        t.row([
            cairn_store::point::short_id(&id).to_owned(),
            text(p, "vm"),
            text(p, "disk"),
            text(p, "time"),
            what,
        ]);
    }
    t.print();
}
