//! The checks a commit makes before it publishes: what the points claim (ids, sizes, times,
//! identities), that every chunk they name is stored (for a client's session), and that none
//! lies in a pack file that is gone.

use std::collections::{HashMap, HashSet};

use super::{Session, StagedPoint};
use crate::chunk::{ChunkId, ChunkRef};
use crate::error::{Error, Result};
use crate::index::Location;
use crate::point::RecoveryPoint;
use crate::tree::{Body, Walk};

impl Session<'_> {
    /// See [`Session::check_references`]: the chunks `staged` names that are neither in the
    /// store nor in this session (the first few), or of the wrong kind.
    pub(super) fn check_complete(&self, staged: &[StagedPoint]) -> Result<()> {
        let pending: HashMap<ChunkId, Location> = self.pending.iter().copied().collect();
        let allowed = self
            .allowed
            .as_deref()
            .map(|a| crate::complete::Allowed::new(a, &self.proven));
        let mut check = crate::complete::Check::new(self.store, &pending, &self.lost, allowed);
        for StagedPoint(p) in staged {
            check.point(p)?;
        }
        check.finish()
    }

    /// Refuses a tree naming a chunk whose pack file is gone (and that this session did not
    /// store afresh): the point would not restore. `ids` are the data chunks pushed one by one,
    /// `subtrees` those taken whole from another point (read here). Only called when packs are
    /// lost.
    pub(super) fn check_not_lost(
        &self,
        mut ids: Vec<ChunkId>,
        subtrees: &[(ChunkId, u8, u64)],
    ) -> Result<()> {
        for (id, level, count) in subtrees {
            let mut walk = Walk::subtree(self.store, *id, *level, *count);
            while let Some(x) = walk.next_extent()? {
                match x.body {
                    Body::Refs(refs) => ids.extend(refs.iter().filter_map(|r| match r {
                        ChunkRef::Data(id) => Some(*id),
                        ChunkRef::Zero => None,
                    })),
                    Body::Zero => {}
                    Body::Unreadable(what) => return Err(Error::Point(what)),
                }
            }
        }
        ids.retain(|id| !self.seen.contains(id));
        ids.sort_unstable();
        ids.dedup();
        let mut gone = 0u64;
        let mut packs = HashSet::new();
        for loc in self.store.locations(&ids)?.into_iter().flatten() {
            if self.lost.covers(&loc) {
                gone += 1;
                packs.insert(loc.pack.to_hex());
            }
        }
        if gone == 0 {
            return Ok(());
        }
        let mut packs: Vec<String> = packs.into_iter().collect();
        packs.sort();
        Err(Error::Usage(format!(
            "the point would reference {gone} chunk(s) whose pack file is gone or cut short \
             ({}); nothing was stored. A key backup (`cairn backup --key`) reads the whole disk and stores \
             them afresh; `cairn verify` lists what else they damage",
            packs.join(", ")
        )))
    }

    /// What the staged points claim, checked against the points the store holds (the `claims`
    /// module): ids, sizes, times (set here for a store-timed session), identities.
    pub(super) fn check_claims(
        &self,
        staged: &mut [StagedPoint],
        existing: &[RecoveryPoint],
    ) -> Result<()> {
        {
            let points: Vec<&RecoveryPoint> = staged.iter().map(|s| &s.0).collect();
            crate::claims::check_ids_and_sizes(&points, self.store.config.max_disk_bytes)?;
            crate::claims::check_identities(&points, existing, self.adopt)?;
        }
        if self.clock {
            let mut points: Vec<&mut RecoveryPoint> = staged.iter_mut().map(|s| &mut s.0).collect();
            crate::claims::time_at_commit(&mut points, existing);
        }
        let points: Vec<&RecoveryPoint> = staged.iter().map(|s| &s.0).collect();
        crate::claims::check_times(&points, existing, &same_commit)
    }
}

/// Whether `existing` is `p` committed before (a retry of a backup whose earlier run failed
/// after its commit): the same disk, time and content.
pub(super) fn same_commit(existing: &RecoveryPoint, p: &RecoveryPoint) -> bool {
    existing.same_disk(p)
        && existing.time == p.time
        && existing.size == p.size
        && existing.depth == p.depth
        && existing.segments == p.segments
}
