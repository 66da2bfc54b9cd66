//! What the store remembers of the jobs run on it, for the report: the last verify
//! (`STORE/last-verify.json`) and the retention rules each VM was last pruned with
//! (`STORE/retention.json`). Both are replaced atomically; neither is needed to read or write
//! backups, and a file that cannot be read is reported as nothing remembered.

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
