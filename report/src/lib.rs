//! The report of a store: the document (what each VM, disk and point costs), the page drawn
//! from it ([`page`]). Retention and collection live in `cairn-gc`; the report reads their
//! records (the last verify, the rules each VM was pruned with, what gc would free).
//!
//! The report document: what each VM, disk and point costs, as `cairn report --json` prints it
//! and `cairn serve` answers it (`GET /api/v1/report`). Its schema is `docs/report-json.md`;
//! [`SCHEMA_VERSION`] is raised when a field changes meaning or goes away.

pub mod browse;
pub mod page;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use cairn_store::point::VmKey;
use cairn_store::{PointId, RecoveryPoint, Store};
use chrono_tz::Tz;
use serde_json::{Value, json};

use cairn_gc::GcReport;
use cairn_gc::cost::{Cost, Costs, costs, costs_of_some};
use cairn_gc::history::Recorded;
use cairn_gc::{Error, Keep, Result};

/// Days of growth the report averages.
pub const GROWTH_DAYS: i64 = 30;

/// What the report shows beside the costs: the store's file system, the last verify, the
/// rules each VM was last pruned with, and the time it is made at.
#[derive(Debug, Clone)]
pub struct Extras {
    /// Total and free bytes of the store's file system.
    pub filesystem: Option<(u64, u64)>,
    /// The last verify's record ([`cairn_gc::history::last_verify`]).
    pub last_verify: Option<Value>,
    /// Each VM's last retention rules.
    pub rules: BTreeMap<String, Recorded>,
    /// When the report is made.
    pub now: chrono::DateTime<chrono::Utc>,
    /// Points committed after this are held by the store's minimum retention.
    pub hold: Option<chrono::DateTime<chrono::Utc>>,
    /// Each point's last boot check ([`cairn_gc::history::boot_checks`]), by point id.
    pub boot_checks: BTreeMap<String, Value>,
    /// The runs of each job kept in the store ([`cairn_jobs::record`]), oldest first.
    pub job_runs: BTreeMap<String, Vec<cairn_jobs::Run>>,
}

impl Extras {
    /// What the store at `root` remembers, now.
    #[must_use]
    pub fn of(root: &Path) -> Self {
        Self {
            filesystem: fs2::total_space(root)
                .ok()
                .zip(fs2::available_space(root).ok()),
            last_verify: cairn_gc::history::last_verify(root),
            rules: cairn_gc::history::rules_of(root),
            now: chrono::Utc::now(),
            hold: cairn_store::StoreConfig::load(root)
                .ok()
                .and_then(|c| c.retention_cutoff(chrono::Utc::now())),
            boot_checks: cairn_gc::history::boot_checks(root),
            job_runs: cairn_jobs::record::all_runs(&root.join(cairn_jobs::record::RUNS_DIR)),
        }
    }
}

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
    Ok(build(&c, shown, reclaimable, tz, &Extras::of(store.root())))
}

/// The fields of the document about the whole store: what only an admin token reads, and what
/// a VM's document leaves out (`null`) but for its damaged points.
pub const STORE_WIDE: [&str; 11] = [
    "store",
    "jobs",
    "reclaimable_bytes",
    "growth",
    "filesystem",
    "last_verify",
    "garbage_bytes",
    "garbage_frames",
    "orphan_packs",
    "orphan_bytes",
    "damaged_points",
];

/// The document of one VM (named, or of UUID, `vm`) with the rows of the points `shown`: its
/// points and their trees are all it reads, so it costs what the VM holds however large the
/// store (a VM's page, `cairn report --vm`). What is unique is counted against every point of
/// the store (the reference counts say what no other point holds); new bytes are those each
/// point was the first of the VM's to hold. The store-wide fields are `null` and `scope` names
/// the VM.
///
/// # Errors
/// Index errors.
pub fn document_of_vm(
    store: &Store,
    vm: &str,
    shown: &dyn Fn(&RecoveryPoint) -> bool,
) -> Result<Value> {
    let tz = store.config().tz();
    let filter = cairn_store::select::Filter {
        vm: Some(vm.to_owned()),
        ..Default::default()
    };
    let points = store.points_matching(&filter).map_err(Error::Store)?;
    let c = costs_of_some(store, &points)?;
    let mut doc = build(&c, shown, None, tz, &Extras::of(store.root()));
    for f in STORE_WIDE.iter().filter(|f| **f != "damaged_points") {
        doc[*f] = Value::Null;
    }
    doc["scope"] = json!({ "vm": vm });
    Ok(doc)
}

fn time(p: &RecoveryPoint, tz: Tz) -> String {
    p.time
        .with_timezone(&tz)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn cost_json(c: &Cost) -> Value {
    json!({
        "points": c.points, "logical_bytes": c.logical, "allocated_bytes": c.allocated,
        "stored_bytes": c.stored, "unique_stored_bytes": c.unique, "new_stored_bytes": c.new,
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

/// Which rule of its VM's last prune keeps each point: the rule's name, `protected`, `none`
/// (the next prune with those rules removes it); points of VMs never pruned are left out.
fn kept_by(
    c: &Costs<'_>,
    rules: &BTreeMap<String, Recorded>,
    tz: Tz,
    hold: Option<chrono::DateTime<chrono::Utc>>,
) -> HashMap<PointId, String> {
    let mut out = HashMap::new();
    let mut by_vm: BTreeMap<&str, Vec<RecoveryPoint>> = BTreeMap::new();
    for (p, _) in &c.per_point {
        if rules.contains_key(&p.vm) {
            by_vm.entry(&p.vm).or_default().push((*p).clone());
        }
    }
    for (vm, points) in by_vm {
        let Some(r) = rules.get(vm) else { continue };
        for (p, keep) in cairn_gc::decide(points, &r.rules, &tz, hold) {
            let why = match keep {
                Some(Keep::Rule(rule)) => rule.name().to_owned(),
                Some(Keep::Protected) => "protected".to_owned(),
                Some(Keep::Held) => "held".to_owned(),
                None => "none".to_owned(),
            };
            out.insert(p.id, why);
        }
    }
    out
}

/// New bytes per day over the last [`GROWTH_DAYS`] days (by commit time, in the store's time
/// zone), their mean, and the days until the file system fills at that rate.
fn growth(c: &Costs<'_>, extras: &Extras, tz: Tz) -> Value {
    let today = extras.now.with_timezone(&tz).date_naive();
    let first = today - chrono::Duration::days(GROWTH_DAYS - 1);
    let mut per_day: BTreeMap<chrono::NaiveDate, u64> = (0..GROWTH_DAYS)
        .map(|d| (first + chrono::Duration::days(d), 0))
        .collect();
    for (p, cost) in &c.per_point {
        let day = p.committed.with_timezone(&tz).date_naive();
        if let Some(b) = per_day.get_mut(&day) {
            *b += cost.new;
        }
    }
    let total: u64 = per_day.values().sum();
    let mean = total / GROWTH_DAYS as u64;
    let until_full = match extras.filesystem {
        Some((_, free)) if mean > 0 => Some(free / mean),
        _ => None,
    };
    json!({
        "window_days": GROWTH_DAYS,
        "days": per_day.iter().map(|(d, b)| json!({
            "day": d.format("%Y-%m-%d").to_string(), "new_stored_bytes": b,
        })).collect::<Vec<_>>(),
        "bytes_per_day": mean,
        "days_until_full": until_full,
    })
}

/// The document from costs already counted (see [`document`]).
#[must_use]
pub fn build(
    c: &Costs<'_>,
    shown: &dyn Fn(&RecoveryPoint) -> bool,
    reclaimable: Option<&GcReport>,
    tz: Tz,
    extras: &Extras,
) -> Value {
    let kept = kept_by(c, &extras.rules, tz, extras.hold);
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
            "retention": p.and_then(|p| extras.rules.get(&p.vm)).map(|r| json!({
                "rules": r.rules,
                "time": r.time.with_timezone(&tz).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            })),
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
        "scope": Value::Null,
        "generated": extras.now.with_timezone(&tz).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "filesystem": extras.filesystem.map(|(total, free)| json!({
            "total_bytes": total, "free_bytes": free,
        })),
        "growth": growth(c, extras, tz),
        "last_verify": extras.last_verify.clone().map(|mut v| {
            // Recorded in UTC; shown, as every time of the document, in the store's zone.
            if let Some(t) = v["time"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()) {
                v["time"] = json!(t.with_timezone(&tz).to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            }
            v
        }),
        "jobs": jobs_json(&extras.job_runs, tz),
        "reclaimable_bytes": reclaimable.map(|g| g.garbage_freed + g.orphan_bytes),
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
            "key": p.stats.key, "protected": p.protected,
            "kept_by": kept.get(&p.id),
            "boot_check": extras.boot_checks.get(p.id.as_str()).map(|c| json!({
                "time": c["time"], "booted": c["booted"], "why": c["why"],
                "seconds": c["seconds"], "screenshot": c["screenshot"],
            })),
        }))).collect::<Vec<_>>(),
    })
}

/// Each job's last run and last success, from the runs the store keeps.
fn jobs_json(runs: &BTreeMap<String, Vec<cairn_jobs::Run>>, tz: chrono_tz::Tz) -> Value {
    let shown = |t: &chrono::DateTime<chrono::Utc>| {
        t.with_timezone(&tz)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    Value::Array(
        runs.iter()
            .filter_map(|(job, r)| {
                let last = r.last()?;
                let ok = r
                    .iter()
                    .rev()
                    .find(|r| r.outcome == cairn_jobs::Outcome::Ok);
                Some(json!({
                    "job": job,
                    "runs_kept": r.len(),
                    "last_run": {
                        "started": shown(&last.started),
                        "seconds": (last.ended - last.started).num_milliseconds() as f64 / 1000.0,
                        "outcome": last.outcome,
                        "exit_code": last.exit_code,
                        "error": last.error.as_deref().and_then(|e| e.lines().last()),
                        "points": last.points.len(),
                        "bytes_stored": last.bytes_stored,
                        "trigger": last.trigger,
                    },
                    "last_success": ok.map(|r| shown(&r.started)),
                }))
            })
            .collect(),
    )
}

/// The VM a row of the report document belongs to, as `VmKey` says it: its UUID and pool when
/// it has a UUID, else its name and pool.
#[must_use]
pub fn row_vm_key(v: &Value) -> (Option<String>, Option<String>, Option<String>) {
    (
        v["vm_uuid"].as_str().map(str::to_owned),
        v["vm_uuid"]
            .is_null()
            .then(|| v["vm"].as_str().unwrap_or_default().to_owned()),
        v["pool"].as_str().map(str::to_owned),
    )
}

/// The report document with the rows of the points `shown` only (and of the disks and VMs
/// that hold one); the store's figures stay those of every point.
#[must_use]
pub fn keep_rows(mut doc: Value, shown: &HashSet<PointId>) -> Value {
    let key = row_vm_key;
    let points: Vec<Value> = doc["points"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["id"].as_str().is_some_and(|id| shown.contains(id)))
        .collect();
    let disks: HashSet<_> = points.iter().map(|p| (key(p), p["disk"].clone())).collect();
    for (field, by_disk) in [("disks", true), ("vms", false)] {
        let kept: Vec<Value> = doc[field]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| {
                disks
                    .iter()
                    .any(|(k, d)| *k == key(r) && (!by_disk || *d == r["disk"]))
            })
            .collect();
        doc[field] = Value::Array(kept);
    }
    doc["points"] = Value::Array(points);
    doc
}
