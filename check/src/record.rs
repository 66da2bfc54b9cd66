//! A check's outcome as the store keeps it ([`cairn_gc::history::record_boot_check`]: each
//! point's last check and its screenshot, in `STORE/boot-checks/`). A record may come from
//! another machine (a client that booted a point of an encrypted store through `cairn
//! serve`): [`keep`] takes only a record of the expected shape and bounded size, and a PNG.

use std::path::Path;

use serde_json::Value;

use crate::{Error, Outcome, Result};

/// The longest text of a record (the reason, the verdict's line, each console line).
const MAX_TEXT: usize = 1024;
/// The most console lines kept.
const MAX_LINES: usize = 10;
/// The largest screenshot kept.
pub const MAX_PNG: usize = 8 << 20;

/// What the store keeps of `outcome` (the point and the time are added by [`keep`]).
#[must_use]
pub fn of(outcome: &Outcome) -> Value {
    serde_json::json!({
        "booted": outcome.booted,
        "why": outcome.why,
        "line": outcome.line,
        "seconds": (outcome.seconds * 10.0).round() / 10.0,
        "accel": outcome.accel.name(),
        "last_lines": outcome.last_lines,
    })
}

/// Records `outcome` as the last check of the point `point` (its id). Returns the record.
///
/// # Errors
/// A record that cannot be written, a screenshot that cannot be read.
pub fn record(root: &Path, point: &str, outcome: &Outcome) -> Result<Value> {
    let shot = match &outcome.screenshot {
        Some(png) => Some(std::fs::read(png).map_err(|e| Error::io(png, e))?),
        None => None,
    };
    keep(root, point, &of(outcome), shot.as_deref())
}

/// Keeps `record` (as [`of`] makes it) and its screenshot as the last check of the point
/// `point`, with the time now. Returns what was kept.
///
/// # Errors
/// [`Error::Record`]: a record of another shape (a field unknown, missing or of the wrong
/// type, a text too long), a screenshot that is not a PNG or too large, a record that cannot
/// be written.
pub fn keep(root: &Path, point: &str, record: &Value, png: Option<&[u8]>) -> Result<Value> {
    let bad = |why: String| Error::Record(format!("a boot check of point {point}: {why}"));
    let fields = record
        .as_object()
        .ok_or_else(|| bad("not a JSON object".into()))?;
    let text = |k: &str, v: &Value| -> Result<()> {
        match v.as_str() {
            Some(s) if s.len() <= MAX_TEXT => Ok(()),
            _ => Err(bad(format!("{k}: a text of at most {MAX_TEXT} bytes"))),
        }
    };
    for (k, v) in fields {
        match k.as_str() {
            "booted" if v.is_boolean() => {}
            "why" => text(k, v)?,
            "line" if v.is_null() => {}
            "line" => text(k, v)?,
            "seconds" if v.as_f64().is_some_and(|s| s.is_finite() && s >= 0.0) => {}
            "accel" if v == "kvm" || v == "tcg" => {}
            "last_lines" => {
                let lines = v
                    .as_array()
                    .filter(|l| l.len() <= MAX_LINES)
                    .ok_or_else(|| bad(format!("last_lines: at most {MAX_LINES} lines")))?;
                for l in lines {
                    text(k, l)?;
                }
            }
            _ => {
                return Err(bad(format!(
                    "{k}: not a field of a boot check, or not its type"
                )));
            }
        }
    }
    for k in ["booted", "why", "seconds", "accel"] {
        if !fields.contains_key(k) {
            return Err(bad(format!("{k} is missing")));
        }
    }
    if let Some(png) = png
        && (png.len() > MAX_PNG || !png.starts_with(b"\x89PNG\r\n\x1a\n"))
    {
        return Err(bad(format!(
            "the screenshot is not a PNG of at most {} MiB",
            MAX_PNG >> 20
        )));
    }
    let mut doc = serde_json::json!({
        "point": point,
        "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "screenshot": png.is_some(),
    });
    for (k, v) in fields {
        doc[k] = v.clone();
    }
    cairn_gc::history::record_boot_check(root, point, &doc, png)
        .map_err(|e| Error::Record(e.to_string()))?;
    Ok(doc)
}
