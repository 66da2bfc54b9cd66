//! What the store remembers of the jobs run on it, for the report: the last verify
//! (`STORE/last-verify.json`), the retention rules each VM was last pruned with
//! (`STORE/retention.json`) and each point's last boot check with its screenshot
//! (`STORE/boot-checks/POINT_ID.json`, `.png`, written by `cairn check-boot`). Each is replaced
//! atomically; none is needed to read or write backups, and a file that cannot be read is
//! reported as nothing remembered.

use std::collections::BTreeMap;
use std::path::Path;

use cairn_store::Store;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::verify::VerifyReport;
use crate::{Result, Rules};

/// Name of the last verify's file.
pub const LAST_VERIFY_FILE: &str = "last-verify.json";
/// Name of the file of each VM's last retention rules.
pub const RETENTION_FILE: &str = "retention.json";
/// Damaged chunks kept in the last verify's file (with their points); the counts stay whole.
const DAMAGE_KEPT: usize = 100;

/// The rules a VM was last pruned with, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// The rules.
    pub rules: Rules,
    /// When the prune ran.
    pub time: DateTime<Utc>,
}

/// Records that `report` is the last verify, of `scope` (what was chosen: "all points", a
/// filter, a sample).
///
/// # Errors
/// I/O errors writing the file.
pub fn record_verify(root: &Path, report: &VerifyReport, scope: &str) -> Result<()> {
    let mut damaged = report.damaged.clone();
    damaged.truncate(DAMAGE_KEPT);
    let doc = serde_json::json!({
        "time": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "scope": scope,
        "clean": report.clean(),
        "points_in_scope": report.points_in_scope,
        "chunks_in_scope": report.chunks_in_scope,
        "chunks_checked": report.chunks_checked,
        "bytes_read": report.bytes_read,
        "seconds": report.seconds,
        "damaged_chunks": report.damaged.len(),
        "points_damaged": report.points_damaged,
        "vms_damaged": report.vms_damaged,
        "catalogue_problems": report.catalogue.len(),
        "damaged": damaged,
    });
    let bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    cairn_store::write_atomic(&root.join(LAST_VERIFY_FILE), &bytes)?;
    Ok(())
}

/// The last verify's record (see [`record_verify`]), if any.
#[must_use]
pub fn last_verify(root: &Path) -> Option<serde_json::Value> {
    let b = std::fs::read(root.join(LAST_VERIFY_FILE)).ok()?;
    serde_json::from_slice(&b).ok()
}

/// Records that the VMs `vms` were just pruned with `rules`.
///
/// # Errors
/// I/O errors writing the file.
pub fn record_rules(store: &Store, vms: &[String], rules: &Rules) -> Result<()> {
    let mut all = rules_of(store.root());
    let now = Utc::now();
    for vm in vms {
        all.insert(
            vm.clone(),
            Recorded {
                rules: *rules,
                time: now,
            },
        );
    }
    let bytes = serde_json::to_vec_pretty(&all).unwrap_or_default();
    cairn_store::write_atomic(&store.root().join(RETENTION_FILE), &bytes)?;
    Ok(())
}

/// The rules each VM (by name) was last pruned with.
#[must_use]
pub fn rules_of(root: &Path) -> BTreeMap<String, Recorded> {
    std::fs::read(root.join(RETENTION_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The folder of the boot checks' records.
pub const BOOT_CHECKS_DIR: &str = "boot-checks";

/// Records `check` (a JSON object) as the last boot check of point `point` (its id), with its
/// screenshot (PNG) when there is one; an older screenshot of the point goes.
///
/// # Errors
/// I/O errors writing the files.
pub fn record_boot_check(
    root: &Path,
    point: &str,
    check: &serde_json::Value,
    screenshot: Option<&[u8]>,
) -> Result<()> {
    let dir = root.join(BOOT_CHECKS_DIR);
    std::fs::create_dir_all(&dir)
        .map_err(|e| crate::Error::Io(dir.clone(), "making a folder".into(), e))?;
    let png = dir.join(format!("{point}.png"));
    match screenshot {
        Some(bytes) => cairn_store::write_atomic(&png, bytes)?,
        None => {
            let _ = std::fs::remove_file(&png);
        }
    }
    let bytes = serde_json::to_vec_pretty(check).unwrap_or_default();
    cairn_store::write_atomic(&dir.join(format!("{point}.json")), &bytes)?;
    Ok(())
}

/// The last boot check of every point that has one, by point id (see [`record_boot_check`]).
#[must_use]
pub fn boot_checks(root: &Path) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(root.join(BOOT_CHECKS_DIR)) else {
        return out;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".json") else {
            continue;
        };
        let read = std::fs::read(e.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        if let Some(v) = read {
            out.insert(id.to_owned(), v);
        }
    }
    out
}

/// The screenshot of point `point`'s last boot check, if one is kept.
#[must_use]
pub fn boot_check_screenshot(root: &Path, point: &str) -> Option<Vec<u8>> {
    if point.len() != 32 || !point.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    std::fs::read(root.join(BOOT_CHECKS_DIR).join(format!("{point}.png"))).ok()
}
