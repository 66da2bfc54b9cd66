//! The report document: what each VM, disk and point costs, as `cairn report --json` prints it
//! and `cairn serve` answers it (`GET /api/v1/report`). Its schema is `docs/report-json.md`;
//! [`SCHEMA_VERSION`] is raised when a field changes meaning or goes away.

use std::collections::HashSet;

use cairn_store::point::VmKey;
use cairn_store::{RecoveryPoint, Store};
use chrono_tz::Tz;
use serde_json::{Value, json};

use crate::collect::GcReport;
use crate::cost::{Cost, Costs, costs};
use crate::{Error, Result};

/// The version of the document's schema (docs/report-json.md).
pub const SCHEMA_VERSION: u32 = 1;

/// The report of `store`: costs counted over every point, rows for the points `shown` picks
/// (and the disks and VMs that hold one). `reclaimable` is what a garbage collection would
/// free now (`None`: unknown, a collection runs).
///
/// # Errors
/// Index errors.
pub fn document(
    store: &Store,
    shown: &dyn Fn(&RecoveryPoint) -> bool,
    reclaimable: Option<&GcReport>,
) -> Result<Value> {
    let tz = store.config().tz();
    let points = store.points().map_err(Error::Store)?;
    let c = costs(store, &points)?;
    Ok(build(&c, shown, reclaimable, tz))
}

fn time(p: &RecoveryPoint, tz: Tz) -> String {
    p.time
        .with_timezone(&tz)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn cost_json(c: &Cost) -> Value {
    json!({
        "points": c.points, "logical_bytes": c.logical, "allocated_bytes": c.allocated,
        "stored_bytes": c.stored, "unique_stored_bytes": c.unique,
        "dedup_ratio": c.dedup_ratio(), "compression_ratio": c.compression_ratio(),
        "full_backups_bytes": c.full_chain, "xo_vhd_deltas_bytes": c.vhd_deltas,
    })
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

/// A VM's name as the report sorts and shows it: its newest name, pool and UUID.
fn vm_name(c: &Costs<'_>, k: &VmKey) -> String {
    let mut name = c.vm_names.get(k).map_or_else(String::new, |p| p.vm.clone());
    if let Some(pool) = &k.pool {
        name = format!("{name} pool={pool}");
    }
    if let Some(u) = &k.uuid {
        name = format!("{name} uuid={u}");
    }
    name
}

/// The document from costs already counted (see [`document`]).
#[must_use]
pub fn build(
    c: &Costs<'_>,
    shown: &dyn Fn(&RecoveryPoint) -> bool,
    reclaimable: Option<&GcReport>,
    tz: Tz,
) -> Value {
    let per_point: Vec<&(&RecoveryPoint, Cost)> =
        c.per_point.iter().filter(|(p, _)| shown(p)).collect();
    let shown_disks: HashSet<(VmKey, String)> = per_point
        .iter()
        .map(|(p, _)| (p.vm_key(), p.disk.clone()))
        .collect();
    let vm_json = |k: &VmKey| {
        let p = c.vm_names.get(k);
        json!({
            "vm": p.map(|p| p.vm.clone()), "vm_uuid": k.uuid, "pool": k.pool,
            "host": p.and_then(|p| p.labels.host.clone()),
        })
    };
    let mut vms: Vec<(&VmKey, &Cost)> = c
        .per_vm
        .iter()
        .filter(|(k, _)| shown_disks.iter().any(|(v, _)| v == *k))
        .collect();
    vms.sort_by_key(|(k, _)| (vm_name(c, k), (*k).clone()));
    let mut disks: Vec<(&(VmKey, String), &Cost)> = c
        .per_disk
        .iter()
        .filter(|(k, _)| shown_disks.contains(*k))
        .collect();
    disks.sort_by_key(|((k, d), _)| (vm_name(c, k), d.clone()));
    json!({
        "schema_version": SCHEMA_VERSION,
        "garbage_bytes": reclaimable.map(|g| g.garbage_freed),
        "garbage_frames": reclaimable.map(|g| g.garbage_frames),
        "orphan_packs": reclaimable.map(|g| g.orphan_packs),
        "orphan_bytes": reclaimable.map(|g| g.orphan_bytes),
        "store": cost_json(&c.total),
        "damaged_points": c.damaged.iter().map(|(p, what)| json!({
            "id": p.id, "vm": p.vm, "disk": p.disk, "time": time(p, tz), "what": what,
        })).collect::<Vec<_>>(),
        "vms": vms.iter().map(|(k, cost)| merge(cost_json(cost), vm_json(k))).collect::<Vec<_>>(),
        "disks": disks.iter().map(|((k, d), cost)| {
            let mut j = merge(cost_json(cost), vm_json(k));
            j["disk"] = json!(d);
            j
        }).collect::<Vec<_>>(),
        "points": per_point.iter().map(|(p, cost)| merge(cost_json(cost), json!({
            "id": p.id, "vm": p.vm, "disk": p.disk, "time": time(p, tz),
            "vm_uuid": p.labels.vm_uuid, "pool": p.labels.pool, "host": p.labels.host,
            "tags": p.labels.tags, "note": p.labels.note,
        }))).collect::<Vec<_>>(),
    })
}
