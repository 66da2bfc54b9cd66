//! The stages of a backup: a reader thread turns a [`ChunkSource`] into batches of pieces; a
//! hashing stage tests each for zeros and hashes it with BLAKE3 on the rayon pool; a lookup
//! stage asks the store which of a batch's chunks it lacks (one round trip to a remote store,
//! made while the next batch is hashed); an encoding stage compresses only what is new, on the
//! pool; the caller's thread appends new chunks to the session in order and builds the point's
//! tree as it goes. Bounded channels between the stages bound memory by the channel depths
//! times the batch size, whatever the disk's size, and let reading, hashing, lookups and pack
//! writes overlap. A run of chunks decided without reading (a hole, a stretch a delta does not
//! hold) crosses the stages as one piece: zeros go into the tree as shared zero leaves, a
//! parent's stretch as the parent's own leaves and nodes, unread.

use std::collections::HashSet;

use cairn_store::chunk::{self, ChunkKind, is_zero};
use cairn_store::{
    BackupStats, ChunkFilter, ChunkId, ChunkRef, EncodedChunk, RecoveryPoint, StoreRead,
    StoreWrite, TreeWriter,
};
use rayon::prelude::*;

use crate::parent::ParentCopy;
use crate::source::{ChunkSource, Piece, PieceOrigin};
use crate::{Error, Result};

/// Chunks per batch handed from the reader thread to the hashing workers.
const BATCH: usize = 16;
/// Batches in flight between the reader and the workers, and between the workers and the
/// writer.
const QUEUE_DEPTH: usize = 2;

/// A batch looked up: each piece's step, whether the store lacks it, its length.
type LookedUp = Vec<(Step, bool, u64)>;

/// What a worker made of one piece.
enum Hashed {
    Zero,
    Known(ChunkId),
    New(EncodedChunk),
    Run(PieceOrigin, u64),
}

/// A piece hashed and not yet looked up: decided already, or its id and bytes.
enum Step {
    Done(Hashed),
    Hashed(ChunkId, Vec<u8>),
}

/// Hashes a batch of pieces: a delta's chunks completed from their parent's chunks (read from
/// `store`), zero test and BLAKE3, in parallel.
fn hash_batch(
    store: &dyn StoreRead,
    batch: Vec<(Piece, u64)>,
    enc: &Encoder,
) -> Result<Vec<(Step, u64)>> {
    let hashed = |d: Vec<u8>| {
        if is_zero(&d) {
            Step::Done(Hashed::Zero)
        } else {
            Step::Hashed(enc.keys.id_of(&d), d)
        }
    };
    batch
        .into_par_iter()
        .map(|(piece, len)| {
            let step = match piece {
                Piece::Run { origin, chunks, .. } => Step::Done(Hashed::Run(origin, chunks)),
                Piece::Data(d) => hashed(d),
                Piece::Patch {
                    mut bytes,
                    base,
                    keep,
                } => {
                    crate::source::patch(&mut bytes, &store.read_chunk(&base)?, &keep);
                    hashed(bytes)
                }
            };
            Ok((step, len))
        })
        .collect()
}

/// Asks the store which of a hashed batch's chunks it lacks: one question for the batch (one
/// round trip to a remote store).
fn look_up(known: &dyn ChunkFilter, steps: Vec<(Step, u64)>) -> Result<LookedUp> {
    let ids: Vec<ChunkId> = steps
        .iter()
        .filter_map(|(s, _)| match s {
            Step::Hashed(id, _) => Some(*id),
            Step::Done(_) => None,
        })
        .collect();
    let mut missing = known.missing(&ids)?.into_iter();
    Ok(steps
        .into_iter()
        .map(|(s, len)| {
            let new = matches!(s, Step::Hashed(..)) && missing.next().unwrap_or(true);
            (s, new, len)
        })
        .collect())
}

/// Compresses (and in an encrypted store seals) the new chunks of a looked-up batch, in
/// parallel.
fn encode_batch(steps: LookedUp, enc: &Encoder) -> Result<Vec<(Hashed, u64)>> {
    steps
        .into_par_iter()
        .map(|(s, new, len)| {
            let h = match s {
                Step::Done(h) => h,
                Step::Hashed(id, d) if new => Hashed::New(
                    chunk::encode_with_id(&enc.keys, id, &d, ChunkKind::Data, enc.level).map_err(
                        |e| Error::Store(cairn_store::Error::Internal(format!("chunk {id}: {e}"))),
                    )?,
                ),
                Step::Hashed(id, _) => Hashed::Known(id),
            };
            Ok((h, len))
        })
        .collect()
}

/// How the hashing stage names and encodes new chunks: the store's keys and zstd level.
struct Encoder {
    keys: cairn_store::Keys,
    level: i32,
}

/// What the pipeline made of a source.
pub(crate) struct Ingested {
    /// The disk's tree, built (finished by the caller when it stages the point).
    pub(crate) tree: TreeWriter,
    /// Counts of what each chunk was.
    pub(crate) stats: BackupStats,
    /// Bytes of disk covered by the refs.
    pub(crate) logical: u64,
    /// Bytes read from the source.
    pub(crate) bytes_read: u64,
}

/// Batches of pieces from the reader to the hashers.
type Pieces = crossbeam_channel::Sender<Result<Vec<(Piece, u64)>>>;
/// Batches of hashed pieces from the hashers to the writer.
type HashedBatches = crossbeam_channel::Sender<Result<Vec<(Hashed, u64)>>>;

/// Reads `src` to its end through the three stages, appending new chunks to `session`.
/// `progress` gets the disk bytes done so far and the size when known.
pub(crate) fn run<'a>(
    store: &dyn StoreRead,
    session: &mut dyn StoreWrite<'a>,
    src: Box<dyn ChunkSource + '_>,
    parent: Option<&RecoveryPoint>,
    level: i32,
    size: Option<u64>,
    progress: &(dyn Fn(u64, Option<u64>) + Sync),
) -> Result<Ingested> {
    let mut w = Writer {
        tree: session.tree_writer(),
        parent: match parent {
            Some(p) => Some(ParentCopy::new(store, p)?),
            None => None,
        },
        stats: BackupStats::default(),
        logical: 0,
    };
    let (tx, rx) = crossbeam_channel::bounded::<Result<Vec<(Piece, u64)>>>(QUEUE_DEPTH);
    let (htx, hrx) = crossbeam_channel::bounded::<Result<Vec<(Hashed, u64)>>>(QUEUE_DEPTH);
    let known = session.filter();
    let enc = Encoder {
        keys: session.keys()?.clone(),
        level,
    };
    let bytes_read = std::thread::scope(|scope| {
        let reader = scope.spawn(move || read_stage(src, &tx));
        // Hashing on the rayon pool; the store asked which chunks it lacks while the next
        // batch is hashed (a remote store's round trip overlaps the work); the new chunks
        // compressed on the pool; all while the writer below appends the previous batch.
        let enc = &enc;
        // One batch waits between these stages: memory stays that of the stages before.
        let (stx, srx) = crossbeam_channel::bounded::<Result<Vec<(Step, u64)>>>(0);
        let (ltx, lrx) = crossbeam_channel::bounded::<Result<LookedUp>>(0);
        scope.spawn(move || stage(&rx, &stx, |b| hash_batch(store, b, enc)));
        scope.spawn(move || stage(&srx, &ltx, |b| look_up(&*known, b)));
        scope.spawn(move || encode_stage(enc, &lrx, &htx));
        // Owned here: if the writer stops early, dropping it stops the hasher, which drops
        // the reader's channel and stops the reader, so the scope never waits forever.
        let hrx = hrx;
        for batch in &hrx {
            for (h, len) in batch? {
                w.take(session, h, len)?;
                progress(w.logical, size);
            }
        }
        reader.join().map_err(|_| {
            Error::Store(cairn_store::Error::Internal(
                "the source reader thread panicked".into(),
            ))
        })
    })?;
    Ok(Ingested {
        tree: w.tree,
        stats: w.stats,
        logical: w.logical,
        bytes_read,
    })
}

/// The reader stage: the source's pieces in batches, until its end or an error (sent on);
/// returns the bytes it read. A closed channel (the writer stopped) ends it.
fn read_stage(mut src: Box<dyn ChunkSource + '_>, tx: &Pieces) -> u64 {
    loop {
        let mut batch = Vec::with_capacity(BATCH);
        let mut err = None;
        while batch.len() < BATCH {
            match src.next_piece() {
                Ok(Some(p)) => {
                    let len = p.len();
                    batch.push((p, len));
                }
                Ok(None) => break,
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        let end = batch.len() < BATCH || err.is_some();
        if !batch.is_empty() && tx.send(Ok(batch)).is_err() {
            return src.bytes_read();
        }
        if let Some(e) = err {
            let _ = tx.send(Err(e));
            return src.bytes_read();
        }
        if end {
            return src.bytes_read();
        }
    }
}

/// A stage between two others: each batch from `rx` made into what `f` makes of it and sent
/// on, until the input ends, an error (sent on), or a closed output (a later stage stopped).
fn stage<I, O>(
    rx: &crossbeam_channel::Receiver<Result<I>>,
    tx: &crossbeam_channel::Sender<Result<O>>,
    mut f: impl FnMut(I) -> Result<O>,
) {
    for batch in rx {
        let out = batch.and_then(&mut f);
        let failed = out.is_err();
        if tx.send(out).is_err() || failed {
            return;
        }
    }
}

/// The encoding stage: each batch's new chunks compressed; a chunk met twice in this backup is
/// compressed once: later copies go on as known.
fn encode_stage(
    enc: &Encoder,
    rx: &crossbeam_channel::Receiver<Result<LookedUp>>,
    htx: &HashedBatches,
) {
    let mut emitted: HashSet<ChunkId> = HashSet::new();
    stage(rx, htx, |mut batch: LookedUp| {
        // Only the first copy of a chunk new to the store is compressed.
        for (s, new, _) in &mut batch {
            if let Step::Hashed(id, _) = s
                && *new
                && !emitted.insert(*id)
            {
                *new = false;
            }
        }
        encode_batch(batch, enc)
    });
}

/// The writer stage: each hashed piece into the tree (new chunks into the session), counted.
struct Writer<'s> {
    tree: TreeWriter,
    parent: Option<ParentCopy<'s>>,
    stats: BackupStats,
    /// Bytes of disk covered so far.
    logical: u64,
}

impl Writer<'_> {
    fn take(&mut self, session: &mut dyn StoreWrite<'_>, h: Hashed, len: u64) -> Result<()> {
        let stats = &mut self.stats;
        let r = match h {
            Hashed::Zero => {
                stats.zero_chunks += 1;
                ChunkRef::Zero
            }
            Hashed::Known(id) => {
                stats.known_chunks += 1;
                ChunkRef::Data(id)
            }
            Hashed::New(enc) => {
                if session.put(&enc)? {
                    stats.new_chunks += 1;
                    stats.new_plain_bytes += u64::from(enc.plain_len);
                } else {
                    stats.known_chunks += 1;
                }
                ChunkRef::Data(enc.id)
            }
            Hashed::Run(origin, n) => {
                let at = self.tree.chunks();
                match (origin, &mut self.parent) {
                    (PieceOrigin::Parent, Some(p)) => {
                        stats.parent_chunks += n;
                        p.copy(session, &mut self.tree, at, n)?;
                    }
                    (PieceOrigin::Parent, None) => {
                        return Err(Error::Refused(
                            "a source gave its parent's chunks without a parent".into(),
                        ));
                    }
                    (PieceOrigin::Unallocated, _) => {
                        stats.zero_chunks += n;
                        self.tree.push_zeros(session, n)?;
                    }
                }
                stats.chunks += n;
                self.logical += len;
                return Ok(());
            }
        };
        stats.chunks += 1;
        self.tree.push(session, r)?;
        self.logical += len;
        Ok(())
    }
}
