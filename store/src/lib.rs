//! cairn's content-addressed chunk store.
//!
//! # Layout
//! ```text
//! STORE/cairn.toml                         format version, store id, chunk size, compression
//! STORE/packs/ab/<pack id>.pack            append-only packs of self-describing chunk frames
//! STORE/index/                             RocksDB: chunks, packs, points (catalogue), meta
//! STORE/points/<vm>/<disk>/<time>-<id>.json   root file of each recovery point
//! STORE/lock                               the write lock (flock) and who holds it
//! ```
//! Packs and root files are the truth; the index is rebuilt from them by
//! [`Store::rebuild_index`] (`cairn repair --rebuild-index`).
//!
//! # Chunks
//! A disk is cut into fixed chunks of the store's chunk size (a power of two from 64 KiB to
//! 2 MiB, whatever the block size of a VHD it is read from). A chunk's id is the BLAKE3 hash of its plain bytes.
//! All-zero chunks are never stored (a [`ChunkRef::Zero`] stands for them). A new chunk is
//! zstd-compressed, or kept plain when that is not smaller, and appended to the open pack as a
//! frame ([`pack`]) that repeats its id, lengths and codec, so a pack describes itself.
//!
//! # Recovery points
//! A point's reference list is cut into segments of 256 refs, each stored as a tree chunk
//! ([`point`]): an unchanged stretch of the disk shares its segment with the previous point, so
//! a point costs what changed. Every point is complete on its own: restoring one never replays
//! a chain, and deleting one is deleting metadata.
//!
//! # Commit protocol ([`Session::commit_run`])
//! 1. new chunks and tree segments are appended to packs, which are fsynced with their folder;
//! 2. one synced RocksDB batch indexes them (unreferenced chunks are harmless: GC reclaims them);
//! 3. the root file is written atomically (temp file, fsync, rename, fsync folder): the commit.
//!    The points of one run (the disks of a VM) commit together: a journal listing their root
//!    files is written first and removed after the last one, and that removal is the commit
//!    (`run`);
//! 4. one synced RocksDB batch publishes the catalogue entries.
//!
//! A crash before 3 leaves orphan pack bytes (and maybe index entries for them) and no point; a
//! crash inside 3 leaves a journal whose root files the next writer removes, so no disk of the
//! run is published; a crash between 3 and 4 leaves complete points that the next writer
//! publishes on open, together.
//!
//! # Reference counts and garbage
//! Each tree segment counts the points naming it, each data chunk the live segments naming it
//! ([`refs`](crate::Store::refcounts)); the counts change in the catalogue's own batch. A chunk
//! whose count reaches zero goes on the `garbage` list under its pack and offset, so dropping a
//! point costs what it alone held and garbage collection starts from a list, not a full walk.
//!
//! # Garbage collection beside a backup
//! A backup holds the write lock from its start to its commit, and a chunk it reuses is one the
//! index holds, counted when its point commits. Garbage collection (the `cairn-gc` crate) plans
//! and copies live chunks from a read-only view, then takes the write lock (so a running backup
//! commits first) and decides what to delete from the counts *as they are then*: a chunk the
//! backup reused has a count above zero again and is kept. One synced batch swaps the index
//! before any pack file is deleted, so `kill -9` at any moment leaves either unindexed new packs
//! or unreferenced old ones, both deleted by the next collection; never an index entry without
//! its frame. A `gc.lock` flock keeps two collections apart.
//!
//! # Who locks what
//! | operation | lock | sees |
//! |---|---|---|
//! | backup, prune, forget, protect, policy, repair | the write lock (`flock` on `STORE/lock`; `--wait` to queue) | live index |
//! | gc | `gc.lock`; the write lock only for its final check, batch and deletes (it waits) | read-only view, then live index |
//! | verify | none while reading (a registered reader); the write lock (waiting) only to record what it found, re-checked against the live index | index as of open |
//! | list, report, restore | none: a registered reader, RocksDB opened read-only beside a writer | every commit that returned before it started |
//!
//! The kernel drops a `flock` when its holder dies, so `kill -9` never leaves a store locked;
//! the lock file names its last holder, and a writer taking over after a crash reports it.
//!
//! Readers beside writers: a read-only open sees every commit that returned before it started
//! and does not fail because a writer flushed or compacted at the same moment ([`view`]: a
//! sequence note from writers, a before/after check of the logs and MANIFEST, retries). A
//! reader registers in `STORE/readers/` for as long as it runs ([`readers`]), and garbage
//! collection leaves in place the packs its index swap dropped while a reader that started
//! before the swap still runs (the next collection deletes them): a restore or verify finishes
//! what it started, and a chunk that gc moved is never reported as damage.

mod agree;
pub mod chunk;
pub mod config;
pub mod error;
pub mod index;
pub mod lock;
mod maintenance;
pub mod pack;
pub mod point;
pub mod readers;
mod refs;
mod run;
pub mod select;
mod session;
mod store;
pub mod view;

pub use chunk::{ChunkId, ChunkKind, ChunkRef, Codec, EncodedChunk};
pub use config::{DEFAULT_CHUNK_SIZE, StoreConfig};
pub use error::{Error, Result};
pub use index::{BadMark, Location, PackInfo};
pub use maintenance::{Forgotten, GarbageFrame, Policy, Sweep};
pub use pack::PackId;
pub use point::{BackupStats, Labels, RecoveryPoint, SourceInfo};
pub use session::{KnownFilter, NewPoint, Session, StagedPoint};
pub use store::{OpenMode, RebuildReport, Store, write_atomic};
