//! What the store remembers of boot checks: the last check of each point, in
//! `STORE/boot-checks/POINT_ID.json` (when, booted or why not, seconds, accelerator, the line it
//! rests on), with its screenshot beside it (`POINT_ID.png`). Each file is replaced atomically;
//! none is needed to read or write backups, and one that cannot be read is reported as no check.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{Error, Outcome, Result};

/// The folder of the records, in the store.
pub const DIR: &str = "boot-checks";

/// Where the record of `point` lies.
#[must_use]
pub fn path_of(root: &Path, point: &str) -> PathBuf {
    root.join(DIR).join(format!("{point}.json"))
}

/// Records `outcome` as the last check of the point `point` (its id): its JSON, and its
/// screenshot copied beside it. Returns the record.
///
/// # Errors
/// A record that cannot be written.
pub fn record(root: &Path, point: &str, outcome: &Outcome) -> Result<serde_json::Value> {
    let dir = root.join(DIR);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut shot = None;
    if let Some(png) = &outcome.screenshot {
        let to = dir.join(format!("{point}.png"));
        let bytes = std::fs::read(png).map_err(|e| Error::io(png, e))?;
        cairn_store::write_atomic(&to, &bytes).map_err(|e| Error::Qmp(e.to_string()))?;
        shot = Some(format!("{point}.png"));
    }
    let doc = serde_json::json!({
        "point": point,
        "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "booted": outcome.booted,
        "why": outcome.why,
        "line": outcome.line,
        "seconds": (outcome.seconds * 10.0).round() / 10.0,
        "accel": outcome.accel.name(),
        "last_lines": outcome.last_lines,
        "screenshot": shot,
    });
    let bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    let path = path_of(root, point);
    cairn_store::write_atomic(&path, &bytes).map_err(|e| Error::Qmp(e.to_string()))?;
    Ok(doc)
}

/// The last check of every point that has one, by point id.
#[must_use]
pub fn records(root: &Path) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(root.join(DIR)) else {
        return out;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".json") else {
            continue;
        };
        if let Ok(v) = std::fs::read(e.path())
            .map_err(|_| ())
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).map_err(|_| ()))
        {
            out.insert(id.to_owned(), v);
        }
    }
    out
}
