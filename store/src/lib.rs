//! cairn's content-addressed chunk store.
//!
//! # Layout
//! ```text
//! STORE/cairn.toml                         format version, store id, chunk size, compression
//! STORE/packs/ab/<pack id>.pack            append-only packs of self-describing chunk frames
//! STORE/index/                             RocksDB: chunks, packs, points (catalogue, its orders), meta
//! STORE/points/<vm>/<disk>/<time>-<id>.json   root file of each recovery point
//! STORE/lock                               the write lock (flock) and who holds it
//! STORE/readers/<start>-<pid>-<n>          one per running reader (flock): gc waits for them
//! STORE/index.seq                          the index's identity and last committed sequence
//! STORE/index.rebuilding                   present while an index rebuild runs
//! STORE/points/.run-<id>.pending           the journal of a run being committed
//! STORE/points/.protect-<id>               a protect or unprotect in progress
//! STORE/forgotten                          ids of forgotten points, one a line (a replica never brings them back)
//! STORE/standby/<hash>.json, .journal      which point each standby target holds; a run in progress
//! STORE/boot-checks/<id>.json, .png        each point's last `check-boot` and its screenshot (cairn-check)
//! STORE/cache/trees/ab/<chunk id>          copies of tree chunks' frames (a store in a bucket only)
//! ```
//! Packs and root files are the truth; the index is rebuilt from them by
//! [`Store::rebuild_index`] (`cairn repair --rebuild-index`).
//!
//! A store made with `cairn init --packs s3://BUCKET/PREFIX` keeps its packs, root files, a
//! copy of its config and its forgotten list in that bucket ([`bucket`] says how and in what
//! order they are written); `STORE/packs` then holds only the packs being filled, and the index
//! is a cache rebuilt from the bucket alone.
//!
//! # Chunks
//! A disk is cut into fixed chunks of the store's chunk size (a power of two from 64 KiB to
//! 2 MiB, whatever the block size of a VHD it is read from). A chunk's id is the BLAKE3 hash of its plain bytes.
//! All-zero chunks are never stored (a [`ChunkRef::Zero`] stands for them). A new chunk is
//! zstd-compressed, or kept plain when that is not smaller, and appended to the open pack as a
//! frame ([`pack`]) that repeats its id, lengths and codec, so a pack describes itself.
//!
//! # Recovery points
//! A point's reference list is a tree of content-addressed tree chunks ([`tree`]): leaves of
//! 256 refs, nodes of 256 children above them, the point naming at most 255 entries of its top
//! level. An unchanged stretch of the disk shares its leaf (64 MiB at 256 KiB chunks) or node
//! (16 GiB) with the previous point, and a stretch of zeros of any length is one shared leaf
//! and node per level, so a point costs what changed and what the disk holds, never the disk's
//! size: the tree is written and read as a stream, a path of nodes at a time. Every point is
//! complete on its own: restoring one never replays a chain, and deleting one is deleting
//! metadata.
//!
//! # Commit protocol ([`Session::commit_run`])
//! 1. new chunks and tree chunks are appended to packs, which are fsynced with their folder;
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
//! # The catalogue's orders ([`orders`])
//! Beside its entries by id, the catalogue keeps every point in its listing order (time, VM,
//! disk, commit time) and each VM's points under its name and its UUID, changed in the batch
//! that changes the entry: a list streams in order, and one VM's points are a range, read
//! without another's. An index without them (an older cairn's) is read by id until its first
//! writer builds them.
//!
//! # Reference counts and garbage
//! A top tree entry counts the points naming it, a node or leaf the live nodes naming it, a data
//! chunk the live leaves naming it ([`refs`](crate::Store::refcounts)); a count that crosses
//! zero opens that chunk to change its children's, so a commit or a drop touches only what the
//! point does not share. The counts change in the catalogue's own batch. A chunk
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
//! In `cairn serve` many sessions write at once and the write lock is the server's, so the
//! collection's final step takes the store's commit lock instead ([`Store::commit_lock`]):
//! commits and the collection's swap exclude each other. A session may have been told "the
//! store holds this chunk" before the collection removed it; its commit then checks every chunk
//! its points name against the index under the commit lock
//! ([`Session::check_references`]) and is refused, never published naming a missing chunk.
//! The collection leaves alone the unindexed packs of live sessions (asked under the lock) and
//! every pack written since it started.
//!
//! # Who locks what
//! | operation | lock | sees |
//! |---|---|---|
//! | backup, prune, forget, protect, policy, repair | the write lock (`flock` on `STORE/lock`; `--wait` to queue) | live index |
//! | gc | `gc.lock`; the write lock only for its final check, batch and deletes (it waits) | read-only view, then live index |
//! | verify | none while reading (a registered reader); the write lock (waiting) only to record what it found, re-checked against the live index | index as of open |
//! | list, report, restore, serve-nbd | none: a registered reader, RocksDB opened read-only beside a writer | every commit that returned before it started (a server: before it started, for as long as it runs) |
//! | `cairn serve` | the write lock for as long as it runs (local writers are refused, naming it) | live index |
//! | a session of `cairn serve` (many at once) | none while it uploads: its own packs, unindexed; the commit lock ([`Store::commit_lock`]) for its commit's check and batches | live index |
//! | forget, protect in `cairn serve` | the commit lock | live index |
//! | gc in `cairn serve` | `gc.lock`; the commit lock for its final check, batch and deletes; it leaves the packs of live sessions and any pack newer than its start | read-only view, then live index |
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
//!
//! # Damage, and the way back
//! Packs and root files are the truth; every damage below is seen, named, and has a way out
//! that works, and none costs a chunk that still checks (each row is a test through the binary:
//! `tests/tests/damage.rs` holds one store damaged in each shape).
//!
//! | what happened | what cairn shows | what to do |
//! |---|---|---|
//! | a chunk's bytes are wrong or unreadable (a frame body damaged) | `verify` (exit 1) names the chunk, its pack and offset, and every point and disk offset it damages; the chunk is marked | a key backup of the disk (`backup --key`) stores it afresh; `restore --ignore-errors` writes zeros there and names the ranges |
//! | a pack file is gone | every open warns, naming it; `verify` names its chunks and their points; a restore says the pack is gone and what to do | a backup never reuses its chunks: a key backup stores them afresh; a backup that would name one is refused |
//! | a pack is cut short (truncated, at a frame boundary or inside a frame) | every open warns, naming it and its length; `verify` names each chunk past the end, those under a lost tree chunk too (read from the index) | a backup never reuses a chunk past the end: a key backup stores them afresh at once; a repair quarantines a pack that ends inside a frame |
//! | a pack header is overwritten | `verify` names the pack (no chunk is lost: every frame carries its own header); every point restores | nothing; a rebuild reads every frame past it |
//! | a frame header is damaged (a flipped byte, an overwritten stretch) | `verify` names the chunk(s) whose frame it is | `repair --rebuild-index` reads past it (every frame has its own magic and header checksum), reads the chunk back from its body when that is whole, keeps every frame that checks, and quarantines the pack |
//! | a pack is quarantined (a rebuild could not account for all its bytes) | `repair`, `verify` and `gc` name it and what could not be read | `gc` keeps it whole (a copy of the pack put back, then a rebuild, may recover more); `gc --drop-quarantined` copies out what of it is referenced and deletes it |
//! | a tree chunk (leaf or node) cannot be read | `verify` names it and its points, reads the data chunks it hides (from the index) and names the bad ones; `report` counts the rest (exit 3) | a key backup stores the tree chunk again; the next writer then counts references afresh |
//! | a root file is deleted | every open warns; `verify` (exit 1) names the point | the next writer writes it again from the index; a `repair --rebuild-index` run before that names the point (the old index, kept aside, still holds its entry) |
//! | a root file is put back after its tree was collected | the next writer publishes it and marks what it names missing; `verify` names the point | the store stays writable; forget the point, or back its disk up again |
//! | a root file is unreadable | `verify` names it; `repair --rebuild-index` leaves its point out and names it | restore the file from a copy, or let the point go |
//! | a root file is edited into other valid JSON (its size changed) | `verify` names the point whose record disagrees with its tree ([`shape`]) | `repair --rebuild-index` takes the old index's entry when that one agrees (and writes the file again), else leaves the point out and keeps the file as `*.json.disagrees` |
//! | the index lost its last commits (a damaged log) | readers warn that the index is behind the last commit noted and list fewer points; `verify` names the root files it lacks | the next writer publishes them |
//! | an index file is damaged (SST, MANIFEST) or `CURRENT` is gone | every command that meets it fails at once, naming `repair --rebuild-index` | `repair --rebuild-index` (the damaged index is kept aside) |
//! | the index folder is gone | every command refuses it, naming the way out | `repair --rebuild-index` |
//! | a rebuild was killed | every command refuses the half-built index | `repair --rebuild-index` again |
//! | `cairn.toml` is gone or garbled | every command names `repair --rebuild-config` | `repair --rebuild-config` writes it from the copy every writer keeps in the index (else from the root files and packs, with a new store id) |
//! | a writer was killed | nothing half-done is visible: a run's points all or none, a forget done whole or undone whole, orphan packs, leftover temporary files | the next writer settles it (and removes the temporary files of dead processes); `gc` deletes orphan packs |
//! | a verify runs beside a commit | a root file ahead of its catalogue batch is looked at again while the writer runs: no disagreement is reported for a commit in flight | nothing |
//! | the disk filled up | the command says exactly what was stored (a point whose catalogue write failed is listed later, never stored twice) | free space; `gc` gives up the store's 1 MiB reserve ([`reserve`]) when the index could not open otherwise, deletes dead packs first and skips rewrites that do not fit |
//!
pub mod access;
mod adopt;
mod agree;
pub mod ahead;
pub mod bucket;
mod catalogue;
pub mod chunk;
pub mod claims;
mod complete;
pub mod config;
mod config_copy;
mod db;
pub mod error;
mod files;
pub mod format;
mod garbage;
pub mod index;
pub mod keys;
mod layout;
pub mod lock;
pub mod lookup;
mod lost;
mod marks;
pub mod objects;
pub mod orders;
pub mod pack;
pub mod point;
pub mod policy;
pub mod quarantine;
mod read;
pub mod readers;
mod rebuild;
mod refs;
pub mod reserve;
mod run;
pub mod scan;
pub mod select;
mod session;
pub mod shape;
mod store;
pub mod tree;
pub mod view;

pub use access::{BatchReader, ChunkFilter, ChunkSink, StoreRead, StoreWrite};
pub use catalogue::{Forgotten, PointHead};
pub use chunk::{ChunkId, ChunkKind, ChunkRef, Codec, EncodedChunk};
pub use config::{DEFAULT_CHUNK_SIZE, StoreConfig};
pub use error::{Error, Result};
pub use files::{write_atomic, write_atomic_mode};
pub use garbage::{GarbageFrame, Sweep};
pub use index::{BadMark, Location, PackInfo};
pub use keys::Keys;
pub use lookup::{Found, PointLookup};
pub use pack::PackId;
pub use point::{BackupStats, Labels, PointId, RecoveryPoint, SourceInfo, SourceKind};
pub use policy::{POLICIES_FILE, Policy};
pub use rebuild::RebuildReport;
pub use refs::Freed;
pub use session::{KnownFilter, NewPoint, Rewrite, Session, StagedPoint};
pub use store::{OpenMode, Store};
pub use tree::{Body, Extent, RefLookup, TreeRoot, TreeWriter, Walk};
