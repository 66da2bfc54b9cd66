//! Applying retention rules to a store: which points of the chosen disks a prune keeps (and
//! why) and removes, and, unless it is a dry run, removing them. `cairn prune` runs it on a
//! local store and `cairn serve` on its own, so both print one plan from one document.

use std::time::Instant;

use cairn_store::select::Filter;
use cairn_store::{RecoveryPoint, Store};
use chrono_tz::Tz;
use serde_json::{Value, json};

use crate::history::record_rules;
use crate::{Keep, Result, Rules, decide};

/// What a prune decided and did.
#[derive(Debug)]
pub struct Pruned {
    /// Nothing was removed.
    pub dry_run: bool,
    /// Every chosen point, with why it is kept (`None`: removed).
    pub decisions: Vec<(RecoveryPoint, Option<Keep>)>,
    /// Chunks no point references any more (0 in a dry run).
    pub chunks_unreferenced: u64,
    /// What a dry run's removal would free at the next gc.
    pub would_free: Option<cairn_store::Freed>,
    /// Problems that kept space but lost nothing.
    pub warnings: Vec<String>,
    /// Seconds spent deciding.
    pub plan_seconds: f64,
    /// Seconds spent removing.
    pub forget_seconds: f64,
}

impl Pruned {
    /// The points removed (or, in a dry run, that would be).
    pub fn removed(&self) -> impl Iterator<Item = &RecoveryPoint> {
        self.decisions
            .iter()
            .filter(|(_, k)| k.is_none())
            .map(|(p, _)| p)
    }

    /// The plan as the document `cairn prune --json` prints (times in the store's zone `tz`).
    #[must_use]
    pub fn to_json(&self, tz: Tz) -> Value {
        let removed = self.removed().count();
        json!({
            "dry_run": self.dry_run,
            "kept": self.decisions.len() - removed,
            "removed": removed,
            "chunks_unreferenced": self.chunks_unreferenced,
            "warnings": self.warnings,
            "plan_seconds": self.plan_seconds,
            "forget_seconds": self.forget_seconds,
            "would_free_bytes": self.would_free.as_ref().map(|f| f.stored_bytes),
            "would_free_chunks": self.would_free.as_ref().map(|f| f.chunks),
            "points": self.decisions.iter().map(|(p, k)| json!({
                "id": p.id,
                "vm": p.vm,
                "vm_uuid": p.labels.vm_uuid,
                "pool": p.labels.pool,
                "disk": p.disk,
                "time": cairn_store::select::show_time(&p.time, tz),
                "keep": k.is_some(),
                "reason": match k {
                    Some(Keep::Rule(r)) => json!(r.name()),
                    Some(Keep::Protected) => json!("protected"),
                    Some(Keep::Held) => json!("held"),
                    None => Value::Null,
                },
            })).collect::<Vec<_>>(),
        })
    }
}

/// Applies `rules` to the points `filter` chooses (each disk of each VM on its own), and
/// removes what no rule keeps unless `dry_run`. The rules are recorded for the report.
///
/// # Errors
/// A filter that names nothing in the store ([`crate::Error::Usage`]), no rule given, or the
/// store's errors; a store opened read-only can only take a dry run.
pub fn prune(store: &Store, filter: &Filter, rules: &Rules, dry_run: bool) -> Result<Pruned> {
    if !rules.any() {
        return Err(crate::Error::Usage(
            "give at least one --keep-* rule (prune never removes every point of a disk)".into(),
        ));
    }
    let started = Instant::now();
    // Only the chosen points are read (a VM's: a range of the VM index); every point only to
    // say what there is when the filter chose none.
    let chosen = store.points_matching(filter)?;
    if chosen.is_empty() {
        filter
            .check(&store.points()?)
            .map_err(crate::Error::Usage)?;
    }
    let tz = store.config().tz();
    let decisions = decide(chosen, rules, &tz, store.retention_cutoff());
    let remove: Vec<RecoveryPoint> = decisions
        .iter()
        .filter(|(_, k)| k.is_none())
        .map(|(p, _)| p.clone())
        .collect();
    let plan_seconds = started.elapsed().as_secs_f64();
    let mut out = Pruned {
        dry_run,
        decisions,
        chunks_unreferenced: 0,
        would_free: None,
        warnings: Vec::new(),
        plan_seconds,
        forget_seconds: 0.0,
    };
    if dry_run {
        if !remove.is_empty() {
            let f = store.would_free(&remove)?;
            out.warnings.clone_from(&f.warnings);
            out.would_free = Some(f);
        }
        return Ok(out);
    }
    let started = Instant::now();
    if !remove.is_empty() {
        let f = store.forget(&remove)?;
        out.chunks_unreferenced = f.chunks_unreferenced;
        out.warnings = f.warnings;
    }
    out.forget_seconds = started.elapsed().as_secs_f64();
    // Remembered for the report: which rule keeps each point of these VMs.
    let mut vms: Vec<String> = out.decisions.iter().map(|(p, _)| p.vm.clone()).collect();
    vms.sort();
    vms.dedup();
    if let Err(e) = record_rules(store, &vms, rules) {
        out.warnings.push(format!(
            "the rules could not be recorded for the report: {e}"
        ));
    }
    Ok(out)
}
