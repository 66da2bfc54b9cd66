//! The blast radius of bad chunks: every point, VM, disk and disk offset they damage; and the
//! places where a point names a data chunk of the wrong length.

use std::collections::{BTreeSet, HashMap, HashSet};

use cairn_store::{ChunkId, ChunkRef, RecoveryPoint, Store, Walk};

use super::read::Read;
use super::{Damage, DamageState, DamagedPart, Finding, Findings, Hit, Scope, Trees};
use crate::Result;

/// The offsets in `p` of each chunk of `bad`: only subtrees in `dirty` are walked.
fn hits_in(
    store: &Store,
    p: &RecoveryPoint,
    dirty: &HashSet<ChunkId>,
    bad: &Findings,
) -> Result<HashMap<ChunkId, Vec<u64>>> {
    let cs = u64::from(p.chunk_size);
    let mut out: HashMap<ChunkId, Vec<u64>> = HashMap::new();
    let mut walk = Walk::new(store, p)?;
    while let Some(e) = walk.peek()? {
        if !dirty.contains(&e.id) {
            walk.skip();
            continue;
        }
        if bad.contains_key(&e.id) {
            out.entry(e.id).or_default().push(e.first * cs);
            walk.skip();
            continue;
        }
        // A node becomes the walk's list (`Ok(None)`); one that cannot be read is a finding
        // already (it is in `bad`).
        if let Ok(Some((e, refs))) = walk.enter() {
            for (k, r) in refs.iter().enumerate() {
                if let ChunkRef::Data(id) = r
                    && bad.contains_key(id)
                {
                    out.entry(*id).or_default().push((e.first + k as u64) * cs);
                }
            }
        }
    }
    Ok(out)
}

/// The places where a point names a data chunk of another length than the place holds: a
/// chunk shorter than the chunk size may only be a disk's last, as long as what is left of it.
/// Only subtrees holding such a chunk are walked (they are few: one a point at most).
pub(super) fn misplaced(
    store: &Store,
    points: &[&RecoveryPoint],
    trees: &Trees,
    read: &[Read],
) -> Result<Vec<String>> {
    let cs = u64::from(store.config().chunk_size);
    let short: HashMap<ChunkId, u32> = read
        .iter()
        .filter(|(_, l, e)| {
            e.is_none() && l.kind == cairn_store::ChunkKind::Data && u64::from(l.plain_len) < cs
        })
        .map(|(id, l, _)| (*id, l.plain_len))
        .collect();
    let mut out = Vec::new();
    if short.is_empty() {
        return Ok(out);
    }
    let suspects: Findings = short
        .keys()
        .map(|id| {
            let f = Finding {
                state: DamageState::Bad,
                what: String::new(),
                location: None,
            };
            (*id, f)
        })
        .collect();
    let dirty = trees.dirty(&suspects);
    for p in points {
        for (id, offsets) in hits_in(store, p, &dirty, &suspects)? {
            let len = u64::from(short.get(&id).copied().unwrap_or_default());
            for at in offsets {
                let place = p.size.saturating_sub(at).min(cs);
                if len != place {
                    out.push(format!(
                        "point {} ({}/{}) names data chunk {id} of {len} bytes at disk offset \
                         {at}, where the disk holds {place}: that stretch does not restore; back \
                         the disk up again",
                        p.short_id(),
                        p.vm,
                        p.disk
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// What the findings damage.
pub(super) struct Radius {
    /// Each bad or missing chunk with its points, by chunk id.
    pub damaged: Vec<Damage>,
    /// Points damaged, all told.
    pub points: u64,
    /// VMs damaged.
    pub vms: Vec<String>,
}

/// Every point (not only those in scope) that references a chunk of `findings`, and where.
pub(super) fn radius(
    store: &Store,
    all_points: &[RecoveryPoint],
    scope: &mut Scope,
    findings: &Findings,
) -> Result<Radius> {
    let tree_set: HashSet<ChunkId> = scope.tree_ids.iter().copied().collect();
    let mut hits: HashMap<ChunkId, Vec<Hit>> = HashMap::new();
    scope.trees.reach(store, all_points.iter())?;
    let dirty = scope.trees.dirty(findings);
    for p in all_points {
        for (id, offsets) in hits_in(store, p, &dirty, findings)? {
            hits.entry(id).or_default().push(Hit {
                point: p.id.clone(),
                vm: p.vm.clone(),
                disk: p.disk.clone(),
                time: p.time,
                offsets,
            });
        }
    }
    // A hidden chunk lies under an unreadable tree chunk of one of these points.
    let under_lost_trees: Vec<Hit> = {
        let mut seen = HashSet::new();
        hits.iter()
            .filter(|(id, _)| tree_set.contains(id) && findings.contains_key(id))
            .flat_map(|(_, h)| h.iter())
            .filter(|h| seen.insert(h.point.clone()))
            .map(|h| Hit {
                offsets: Vec::new(),
                ..h.clone()
            })
            .collect()
    };
    let mut damaged: Vec<Damage> = findings
        .iter()
        .map(|(id, f)| {
            let hidden = scope.hidden.contains(id);
            let points = if hidden {
                under_lost_trees.clone()
            } else {
                hits.remove(id).unwrap_or_default()
            };
            let kind = if tree_set.contains(id) {
                DamagedPart::Tree
            } else {
                DamagedPart::Data
            };
            let what = if hidden {
                format!(
                    "{} (under a tree chunk that cannot be read: its place on the disk is not \
                     known)",
                    f.what
                )
            } else {
                f.what.clone()
            };
            Damage {
                chunk: id.to_hex(),
                kind,
                state: f.state,
                what,
                location: f.location.clone(),
                points,
            }
        })
        .collect();
    damaged.sort_by(|a, b| a.chunk.cmp(&b.chunk));
    let (points, vms) = counted(&damaged);
    Ok(Radius {
        damaged,
        points,
        vms,
    })
}

/// The points and VMs the damage names, all told.
pub(super) fn counted(damaged: &[Damage]) -> (u64, Vec<String>) {
    let hits = || damaged.iter().flat_map(|d| d.points.iter());
    let points = hits().map(|h| &h.point).collect::<HashSet<_>>().len() as u64;
    let vms: BTreeSet<String> = hits().map(|h| h.vm.clone()).collect();
    (points, vms.into_iter().collect())
}
