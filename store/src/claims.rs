//! What a commit may claim about its points, checked under the commit lock against the points
//! the store holds, before anything of the commit is written:
//!
//! - **Ids**: a point id appears once in a commit, and never names a point the store holds.
//! - **Times**: no two points of one disk share a time. A session whose points are timed by the
//!   store ([`crate::Session::time_at_commit`], what `cairn serve` does for every token but an
//!   admin's) gets the time of its commit, one second past the disk's newest point if that is
//!   later; the time its client claimed is kept as [`Labels::claimed_time`]. A host cannot
//!   date points in the future (or at 23:59:59 of past days) to make retention drop real ones.
//! - **Identities**: a VM identity (its UUID within its pool) belongs to the VM name of the
//!   newest point that carries it. Another name claiming it is refused
//!   ([`Error::IdentityTaken`]) unless the session was allowed to adopt it
//!   ([`crate::Session::allow_adopt`]: `backup --adopt` on the store's machine, an admin token
//!   through the server, a replication copying a store's history as it is): a host cannot make
//!   prune, restore or the report take its disk for another VM's.
//! - **Sizes**: a point's disk size is at most the store's limit ([`crate::StoreConfig::max_disk_bytes`]).

use std::collections::HashSet;

use chrono::{DateTime, SubsecRound, Utc};

use crate::error::{Error, Result};
use crate::point::{Labels, RecoveryPoint};

/// Checks the ids of `staged` (each once, none held by the store) and their disk sizes.
///
/// # Errors
/// A repeated id, or a size over `max_disk_bytes`.
pub(crate) fn check_ids_and_sizes(staged: &[&RecoveryPoint], max_disk_bytes: u64) -> Result<()> {
    let mut ids = HashSet::new();
    for p in staged {
        if !ids.insert(&p.id) {
            return Err(Error::Usage(format!(
                "point {} is named twice in one commit; nothing was stored",
                p.id
            )));
        }
        if p.size > max_disk_bytes {
            return Err(Error::Usage(format!(
                "point {} of {}/{} claims a disk of {} bytes, more than this store's limit of {} \
                 (max_disk_bytes in cairn.toml); nothing was stored",
                p.id, p.vm, p.disk, p.size, max_disk_bytes
            )));
        }
    }
    Ok(())
}

/// Gives the points of a store-timed commit their time: now (whole seconds), or one second past
/// the newest point of any of their disks when that is later. The client's time is kept as a
/// label when it differs.
pub(crate) fn time_at_commit(staged: &mut [&mut RecoveryPoint], existing: &[RecoveryPoint]) {
    let mut time = Utc::now().trunc_subsecs(0);
    for p in staged.iter() {
        if let Some(newest) = existing
            .iter()
            .filter(|e| e.same_disk(p))
            .map(|e| e.time)
            .max()
            && newest >= time
        {
            time = newest.trunc_subsecs(0) + chrono::Duration::seconds(1);
        }
    }
    for p in staged.iter_mut() {
        if p.time != time {
            p.labels.claimed_time = Some(p.time);
        }
        p.time = time;
    }
}

/// Refuses a point whose disk has another point at the same time (in the store, or in the same
/// commit). `retry` says whether an existing point is the same point committed before (an
/// earlier run that failed after its commit): that one is not a second point.
///
/// # Errors
/// The first point that would share its disk's time.
pub(crate) fn check_times(
    staged: &[&RecoveryPoint],
    existing: &[RecoveryPoint],
    retry: &dyn Fn(&RecoveryPoint, &RecoveryPoint) -> bool,
) -> Result<()> {
    for (i, p) in staged.iter().enumerate() {
        let clash = existing
            .iter()
            .find(|e| e.same_disk(p) && e.time == p.time && !retry(e, p))
            .or_else(|| {
                staged[..i]
                    .iter()
                    .copied()
                    .find(|e| e.same_disk(p) && e.time == p.time)
            });
        if let Some(e) = clash {
            return Err(Error::Usage(format!(
                "disk {}/{} has a point at {} already ({}): each point of a disk has its own \
                 time; nothing was stored",
                p.vm,
                p.disk,
                p.time.to_rfc3339(),
                e.short_id()
            )));
        }
    }
    Ok(())
}

/// The VM name that owns the identity `labels` carry (its UUID within its pool): that of the
/// newest point committed with it, if any.
#[must_use]
pub fn identity_owner<'p>(labels: &Labels, existing: &'p [RecoveryPoint]) -> Option<&'p str> {
    let uuid = labels.vm_uuid.as_ref()?;
    existing
        .iter()
        .filter(|e| e.labels.vm_uuid.as_ref() == Some(uuid) && e.labels.pool == labels.pool)
        .max_by_key(|e| (e.committed, e.time))
        .map(|e| e.vm.as_str())
}

/// Refuses a point that claims another VM's identity, unless `adopt`.
///
/// # Errors
/// [`Error::IdentityTaken`] for the first such point.
pub(crate) fn check_identities(
    staged: &[&RecoveryPoint],
    existing: &[RecoveryPoint],
    adopt: bool,
) -> Result<()> {
    if adopt {
        return Ok(());
    }
    for p in staged {
        if let Some(owner) = identity_owner(&p.labels, existing)
            && owner != p.vm
        {
            return Err(Error::IdentityTaken(Box::new(
                crate::error::IdentityClaim {
                    uuid: p.labels.vm_uuid.clone().unwrap_or_default(),
                    pool: p.labels.pool.clone(),
                    owner: owner.to_owned(),
                    claimant: p.vm.clone(),
                },
            )));
        }
    }
    Ok(())
}

/// Whether `time` is later than `cutoff` (a point committed then is held by the store's
/// minimum retention).
#[must_use]
pub fn held(committed: DateTime<Utc>, cutoff: Option<DateTime<Utc>>) -> bool {
    cutoff.is_some_and(|c| committed > c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(id: &str, vm: &str, time: &str) -> RecoveryPoint {
        crate::point::test_point(id, vm, time)
    }

    #[test]
    fn an_id_twice_in_one_commit_and_a_disk_over_the_bound_are_refused() {
        let a = point(&"a".repeat(32), "web", "2026-11-01T00:00:00Z");
        let b = point(&"b".repeat(32), "web", "2026-11-02T00:00:00Z");
        assert!(check_ids_and_sizes(&[&a, &b], 1 << 40).is_ok());
        let err = check_ids_and_sizes(&[&a, &a], 1 << 40).expect_err("twice");
        assert!(err.to_string().contains("twice"), "{err}");
        let mut big = b.clone();
        big.size = u64::MAX;
        let err = check_ids_and_sizes(&[&big], 1 << 40).expect_err("too big");
        assert!(err.to_string().contains("max_disk_bytes"), "{err}");
    }

    #[test]
    fn store_timed_points_are_later_than_the_disks_newest_and_keep_their_claim() {
        let existing = vec![point(&"a".repeat(32), "web", "2099-01-01T00:00:00Z")];
        let mut p = point(&"b".repeat(32), "web", "2099-06-01T00:00:00Z");
        time_at_commit(&mut [&mut p], &existing);
        assert_eq!(
            p.time,
            existing[0].time + chrono::Duration::seconds(1),
            "one second past the newest"
        );
        assert_eq!(
            p.labels.claimed_time.map(|t| t.to_rfc3339()),
            Some("2099-06-01T00:00:00+00:00".to_owned())
        );
        // Two points of one disk at one time: refused, but for the same point again.
        let same = point(&"c".repeat(32), "web", "2099-01-01T00:00:00Z");
        assert!(check_times(&[&same], &existing, &|_, _| false).is_err());
        assert!(check_times(&[&same], &existing, &|_, _| true).is_ok());
    }
}
