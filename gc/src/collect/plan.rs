//! Step 1 of a collection, read-only beside backups: which packs to delete or rewrite, from
//! the garbage list, with the quarantined packs kept or let go and the rewrites that fit the
//! disk.

use std::collections::HashMap;
use std::path::Path;

use cairn_store::pack::{FRAME_HEADER_SIZE, PACK_HEADER_SIZE};
use cairn_store::quarantine::Quarantined;
use cairn_store::{ChunkId, GarbageFrame, Location, PackId, Store};

use super::{GcOptions, GcReport, Repack};
use crate::Result;

/// What to do with a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    Delete,
    Rewrite,
}

/// A frame is dead when the index names another copy of its chunk (or none), or its chunk's
/// count is 0.
pub(super) fn frame_is_dead(f: &GarbageFrame, loc: Option<&Location>, count: u64) -> bool {
    match loc {
        Some(l) if l.pack == f.pack && l.offset == f.offset => count == 0,
        _ => true,
    }
}

/// What a collection does with each pack, from the garbage list.
pub(super) struct Plan {
    /// What to do with each pack.
    pub actions: HashMap<PackId, Action>,
    /// The live bytes of each pack with garbage (what a rewrite copies).
    pub live_bytes: HashMap<PackId, u64>,
}

/// Plans from the garbage list: which packs to delete or rewrite.
pub(super) fn plan(store: &Store, opts: &GcOptions, report: &mut GcReport) -> Result<Plan> {
    let garbage = store.garbage()?;
    report.garbage_frames = garbage.len() as u64;
    let infos = store.pack_infos()?;
    let ids: Vec<ChunkId> = garbage.iter().map(|g| g.id).collect();
    let locs = store.locations(&ids)?;
    let counts = store.refcounts(&ids)?;
    let mut dead: HashMap<PackId, (u64, u64)> = HashMap::new();
    // The dead frames of each pack, their headers read once per pack.
    let mut frames: HashMap<PackId, Vec<&GarbageFrame>> = HashMap::new();
    for ((g, loc), count) in garbage.iter().zip(&locs).zip(counts) {
        if frame_is_dead(g, loc.as_ref(), count) && infos.contains_key(&g.pack) {
            frames.entry(g.pack).or_default().push(g);
        }
    }
    for (pack, gs) in frames {
        let offsets: Vec<u64> = gs.iter().map(|g| g.offset).collect();
        // The frame's own header gives its size (a superseded copy may differ from the index).
        for (g, h) in gs.iter().zip(store.frame_headers(pack, &offsets)?) {
            let Some(h) = h.filter(|h| h.id == g.id) else {
                continue;
            };
            let e = dead.entry(pack).or_default();
            e.0 += 1;
            e.1 += FRAME_HEADER_SIZE + u64::from(h.stored_len);
        }
    }
    let mut actions = HashMap::new();
    let mut live_bytes = HashMap::new();
    // Packs with garbage among live chunks: (garbage bytes, live share, pack).
    let mut mixed: Mixed = Vec::new();
    for (pack, (frames, bytes)) in dead {
        let Some(info) = infos.get(&pack) else {
            continue;
        };
        let body = info.size.saturating_sub(PACK_HEADER_SIZE).max(1);
        let live = body.saturating_sub(bytes);
        if frames >= info.chunks {
            actions.insert(pack, Action::Delete);
        } else {
            live_bytes.insert(pack, live);
            mixed.push((bytes, live as f64 / body as f64, pack));
        }
    }
    let rewrite = match opts.repack {
        Repack::Below(share) => below(mixed, share, report),
        Repack::MaxUnused(share) => {
            // The share is of the store as this collection leaves it: without the packs it
            // deletes and the garbage its rewrites drop (measured before, the store would keep
            // more than the share once it shrank).
            let deleted: u64 = actions
                .iter()
                .filter(|(_, a)| matches!(a, Action::Delete))
                .filter_map(|(p, _)| infos.get(p).map(|i| i.size))
                .sum();
            let total: u64 = infos.values().map(|i| i.size).sum();
            max_unused(mixed, total.saturating_sub(deleted), share, report)
        }
    };
    actions.extend(rewrite.into_iter().map(|p| (p, Action::Rewrite)));
    Ok(Plan {
        actions,
        live_bytes,
    })
}

/// Packs with garbage among live chunks: (garbage bytes, live share, pack).
type Mixed = Vec<(u64, f64, PackId)>;

/// `--repack-below`: every pack whose live share is under `share`; the others' garbage stays.
fn below(mixed: Mixed, share: f64, report: &mut GcReport) -> Vec<PackId> {
    let mut out = Vec::new();
    for (bytes, live, pack) in mixed {
        if live < share {
            out.push(pack);
        } else {
            report.garbage_bytes_kept += bytes;
        }
    }
    out
}

/// `--max-unused`: the packs with the most garbage first (each rewrite frees the most for what
/// it copies) until what is left is at most `share` of the store's `after` bytes.
fn max_unused(mut mixed: Mixed, mut after: u64, share: f64, report: &mut GcReport) -> Vec<PackId> {
    mixed.sort_by(|a, b| b.0.cmp(&a.0).then(a.2.cmp(&b.2)));
    let mut left: u64 = mixed.iter().map(|m| m.0).sum();
    let mut out = Vec::new();
    for (bytes, _, pack) in mixed {
        if left as f64 > after as f64 * share {
            out.push(pack);
            left -= bytes;
            after = after.saturating_sub(bytes);
        } else {
            report.garbage_bytes_kept += bytes;
        }
    }
    out
}

impl Plan {
    /// Room for the copies: a rewrite needs its live bytes on disk before the old pack goes.
    /// Rewrites that do not fit are left for later (most garbage per byte copied first).
    pub(super) fn fit_room(&mut self, store: &Store, report: &mut GcReport) {
        let mut rewrites: Vec<(PackId, u64)> = self
            .actions
            .iter()
            .filter(|(_, a)| **a == Action::Rewrite)
            .map(|(p, _)| (*p, self.live_bytes.get(p).copied().unwrap_or(u64::MAX)))
            .collect();
        rewrites.sort_by_key(|(p, live)| (*live, *p));
        // Room kept for the index's own writes, and frame headers.
        let margin = 1 << 20;
        // (A store in a bucket holds one new pack here at a time, uploaded when full.)
        let mut room = match store.bucket() {
            Some(_) => u64::MAX,
            None => fs2::available_space(store.packs_dir())
                .unwrap_or(u64::MAX)
                .saturating_sub(margin),
        };
        for (pack, size) in rewrites {
            if size <= room {
                room -= size;
            } else {
                self.actions.remove(&pack);
                report.rewrites_skipped_for_space += 1;
            }
        }
    }
}

/// The store's quarantined packs and whether this collection lets them go.
pub(super) struct Quarantine {
    packs: HashMap<PackId, Quarantined>,
    released: bool,
}

impl Quarantine {
    /// Quarantined packs are kept whole (out of the plan, listed in the report), or, let go,
    /// copied out and deleted like any other.
    pub(super) fn apply(
        root: &Path,
        store: &Store,
        opts: &GcOptions,
        plan: &mut Plan,
        report: &mut GcReport,
    ) -> Result<Self> {
        let packs = cairn_store::quarantine::list(root)?;
        if opts.drop_quarantined {
            let indexed = store.pack_infos()?;
            for (pack, info) in packs.keys().filter_map(|p| Some((p, indexed.get(p)?))) {
                plan.actions.insert(*pack, Action::Rewrite);
                plan.live_bytes.entry(*pack).or_insert(info.size);
            }
        } else {
            plan.actions.retain(|p, _| !packs.contains_key(p));
            let mut kept: Vec<String> = packs.values().map(|q| q.describe()).collect();
            kept.sort();
            report.quarantined_kept = kept;
        }
        Ok(Self {
            packs,
            released: opts.drop_quarantined,
        })
    }

    /// Whether `pack` is quarantined and its owner let it go: what of it reads is copied out
    /// whatever its damage.
    pub(super) fn released(&self, pack: &PackId) -> bool {
        self.released && self.packs.contains_key(pack)
    }

    /// Whether an unindexed file or object of `pack` is to be kept: a quarantined one kept.
    pub(super) fn keeps(&self, pack: Option<PackId>) -> bool {
        !self.released && pack.is_some_and(|p| self.packs.contains_key(&p))
    }

    /// The quarantined packs.
    pub(super) fn packs(&self) -> impl Iterator<Item = &PackId> {
        self.packs.keys()
    }
}

/// A pack's frames as the index and counts see them now.
pub(super) struct PackFrames {
    /// Frames the index names there whose count is above zero.
    pub live: Vec<(ChunkId, Location)>,
    /// Frames the index names there whose count is zero.
    pub dead: Vec<ChunkId>,
    /// The pack ends in a torn or damaged frame: leave it alone.
    pub torn: bool,
}

/// `released`: the pack is quarantined and its owner let it go: what of it reads is copied out
/// whatever its damage.
pub(super) fn classify(store: &Store, pack: PackId, released: bool) -> Result<PackFrames> {
    let scan = store.pack_scan(pack)?;
    let ids: Vec<ChunkId> = scan.frames.iter().map(|f| f.header.id).collect();
    let locs = store.locations(&ids)?;
    let counts = store.refcounts(&ids)?;
    let mut out = PackFrames {
        live: Vec::new(),
        dead: Vec::new(),
        torn: !scan.is_whole() && !released,
    };
    for ((f, loc), count) in scan.frames.iter().zip(locs).zip(counts) {
        match loc {
            Some(l) if l.pack == pack && l.offset == f.offset => {
                if count > 0 {
                    out.live.push((f.header.id, l));
                } else {
                    out.dead.push(f.header.id);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}
