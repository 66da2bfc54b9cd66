//! Retention, garbage collection and verify for cairn stores.
//!
//! # Merging is deleting metadata
//! Every recovery point is complete on its own, so dropping one (prune, forget) removes its
//! catalogue entry and root file and lowers reference counts; no chunk is read or written.
//! The work is one decrement per distinct top entry of the point's tree, plus, below each entry
//! no other point still names, one per child (a stretch of disk that only this point held): it
//! follows what the point changed, not the disk's size (a point of a 2 TiB disk shares all but a
//! few of its nodes with the point before).
//!
//! # Garbage collection ([`collect`])
//! A chunk whose count falls to zero is put on the store's garbage list under its pack and
//! offset (see `cairn_store::index`). Collection starts from that list, not from a walk over all
//! points, so its cost follows the garbage and the packs it sits in:
//! 1. **plan** (read-only, beside backups): sum the dead bytes per pack from the garbage list;
//!    a pack with no live frame is deleted, a pack whose live share is under the threshold is
//!    rewritten;
//! 2. **copy** (read-only, beside backups): the live frames of packs to rewrite are checked
//!    against their ids and appended, as they are, to new packs, which are fsynced;
//! 3. **sweep** (under the store's write lock, so after a running backup has committed): every
//!    pack to remove is checked again against the index *as it is now*: a chunk that a backup
//!    reused since the plan has a count above zero again and is copied too, never deleted. One
//!    synced RocksDB batch then drops the dead chunks, points moved chunks at their new packs,
//!    and swaps the pack entries; only then are the old pack files deleted. Pack files the index
//!    does not know (left by a killed backup or collection) are deleted last: no backup can be
//!    writing one while the lock is held.
//!
//! **Beside a backup**: a backup holds the write lock from start to commit, and a chunk it
//! reuses is in the index, so it is counted when its point commits. The plan and copy phases
//! never take the lock; the sweep waits for it and decides from the counts after the commit.
//!
//! **Under `kill -9`**: before the batch, the new packs are unknown to the index (the next
//! collection deletes them) and nothing else changed; after it, the old packs are unknown to
//! the index and nothing references them (the next collection deletes them). At no moment does
//! the index name a chunk whose frame is gone. A second collection waits for none: a `gc.lock`
//! flock keeps collections apart.
//!
//! # Verify and heal ([`verify`])
//! Verify walks the chosen points' trees, each leaf and node once, reads the chunks they name (all,
//! or a random sample) in pack order, checks each against its id, and names every point, VM,
//! disk and disk offset a bad or missing chunk damages. Findings are marked in the index; a
//! key backup (a full read of the disk) then stores a fresh copy of any marked chunk it meets,
//! which repairs every point that references it.

pub mod checked;
pub mod collect;
pub mod cost;
pub mod history;
pub mod prune;
pub mod retention;
pub mod verify;

use std::path::PathBuf;

pub use collect::{GcOptions, GcReport, Repack, collect};
pub use prune::{Candidate, Keep, Rule, Rules, decide, plan};
pub use retention::{Pruned, prune};
pub use verify::{Damage, DamageState, DamagedPart, Hit, VerifyOptions, VerifyReport, verify};

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] cairn_store::Error),
    /// An I/O error on a file: the file, what was being done, the error.
    #[error("{path}: {what}: {source}", path = .0.display(), what = .1, source = .2)]
    Io(PathBuf, String, #[source] std::io::Error),
    /// Something that cannot be done now.
    #[error("{0}")]
    Refused(String),
    /// A request that cannot mean anything (no rule given, a filter that names nothing).
    #[error("{0}")]
    Usage(String),
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
