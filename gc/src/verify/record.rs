//! Recording what a run found in the index: new marks, marks of chunks that read well now
//! (healed), and marks that name nothing any more; each checked under the write lock against
//! the index as it is then.

use std::collections::HashMap;
use std::path::Path;

use cairn_store::{BadMark, ChunkId, OpenMode, Store};
use chrono::Utc;

use super::{Findings, VerifyReport, blast};
use crate::Result;

/// A mark to record (`None` clears one).
type Mark = (ChunkId, Option<BadMark>);

/// Records the marks that changed and updates `report` (marks recorded and cleared, and the
/// findings that turned out not to be damage).
pub(super) fn record(
    root: &Path,
    findings: &Findings,
    healed: &[ChunkId],
    marked: &HashMap<ChunkId, BadMark>,
    report: &mut VerifyReport,
) -> Result<()> {
    let marks = changed_marks(findings, healed, marked);
    report.marks_cleared = healed.len() as u64;
    let stale: Vec<ChunkId> = marked
        .keys()
        .filter(|id| !findings.contains_key(id) && !healed.contains(id))
        .copied()
        .collect();
    if marks.is_empty() && stale.is_empty() {
        return Ok(());
    }
    // Under the write lock, against the index as it is now: a finding whose chunk a collection
    // moved or dropped since this run read the index is not damage; a mark whose chunk is
    // neither indexed nor referenced any more names nothing and goes.
    let w = Store::open(root, OpenMode::Write { wait: true })?;
    let ids: Vec<ChunkId> = marks
        .iter()
        .map(|(id, _)| *id)
        .chain(stale.iter().copied())
        .collect();
    let now_at = w.locations(&ids)?;
    let counts = w.refcounts(&ids)?;
    let here = |i: usize| -> (Option<String>, u64) {
        (
            now_at
                .get(i)
                .copied()
                .flatten()
                .map(|l| format!("pack {} offset {}", l.pack.to_hex(), l.offset)),
            counts.get(i).copied().unwrap_or(0),
        )
    };
    let mut kept = Vec::new();
    for (i, (id, mark)) in marks.into_iter().enumerate() {
        let (at, count) = here(i);
        let still = match &mark {
            // Cleared marks are always recorded.
            None => true,
            // Bad where it was read, and still indexed there.
            Some(m) if m.location.is_some() => at == m.location,
            // Missing from the index, and still referenced.
            Some(_) => at.is_none() && count > 0,
        };
        if still {
            kept.push((id, mark));
        } else if let Some(f) = findings.get(&id) {
            let hex = id.to_hex();
            report.damaged.retain(|d| d.chunk != hex);
            report.not_damage.push(format!(
                "chunk {id} ({}): moved or dropped by a garbage collection while this verify ran",
                f.what
            ));
        }
    }
    for (k, id) in stale.iter().enumerate() {
        let (at, count) = here(k + ids.len() - stale.len());
        if at.is_none() && count == 0 {
            kept.push((*id, None));
            report.marks_cleared += 1;
        }
    }
    report.marks_recorded = kept.iter().filter(|(_, m)| m.is_some()).count() as u64;
    if !report.not_damage.is_empty() {
        (report.points_damaged, report.vms_damaged) = blast::counted(&report.damaged);
    }
    if !kept.is_empty() {
        w.mark_bad(&kept)?;
    }
    Ok(())
}

/// The marks that differ from the index's: each finding not marked so already, and each healed
/// chunk's mark cleared.
fn changed_marks(
    findings: &Findings,
    healed: &[ChunkId],
    marked: &HashMap<ChunkId, BadMark>,
) -> Vec<Mark> {
    let now = Utc::now().to_rfc3339();
    let mut marks: Vec<Mark> = Vec::new();
    for (id, f) in findings {
        let mark = BadMark {
            what: f.what.clone(),
            location: f.location.clone(),
            found: now.clone(),
        };
        if marked.get(id).is_none_or(|m| m.what != mark.what) {
            marks.push((*id, Some(mark)));
        }
    }
    marks.extend(healed.iter().map(|id| (*id, None)));
    marks
}
