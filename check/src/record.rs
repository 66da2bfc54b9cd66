//! A check's outcome as the store keeps it ([`cairn_gc::history::record_boot_check`]: each
//! point's last check and its screenshot, in `STORE/boot-checks/`).

use std::path::Path;

use crate::{Error, Outcome, Result};

/// Records `outcome` as the last check of the point `point` (its id). Returns the record.
///
/// # Errors
/// A record that cannot be written, a screenshot that cannot be read.
pub fn record(root: &Path, point: &str, outcome: &Outcome) -> Result<serde_json::Value> {
    let shot = match &outcome.screenshot {
        Some(png) => Some(std::fs::read(png).map_err(|e| Error::io(png, e))?),
        None => None,
    };
    let doc = serde_json::json!({
        "point": point,
        "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "booted": outcome.booted,
        "why": outcome.why,
        "line": outcome.line,
        "seconds": (outcome.seconds * 10.0).round() / 10.0,
        "accel": outcome.accel.name(),
        "last_lines": outcome.last_lines,
        "screenshot": shot.is_some(),
    });
    cairn_gc::history::record_boot_check(root, point, &doc, shot.as_deref())
        .map_err(|e| Error::Record(e.to_string()))?;
    Ok(doc)
}
