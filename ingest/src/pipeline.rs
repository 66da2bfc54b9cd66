//! The three stages of a backup: a reader thread turns a [`ChunkSource`] into batches of
//! pieces; the hashing stage tests each for zeros, hashes it with BLAKE3, looks the id up and
//! compresses only what is new, on the rayon pool; the caller's thread appends new chunks to the
//! session in order. Bounded channels between the stages bound memory by the channel depth
//! times the batch size, whatever the disk's size, and let reading, hashing and pack writes
//! overlap.

use std::collections::HashSet;

use cairn_store::chunk::{self, ChunkKind, is_zero};
use cairn_store::{BackupStats, ChunkId, ChunkRef, EncodedChunk, KnownFilter, Session};
use rayon::prelude::*;

use crate::source::{ChunkSource, Piece, PieceOrigin};
use crate::{Error, Result};

/// Chunks per batch handed from the reader thread to the hashing workers.
const BATCH: usize = 32;
/// Batches in flight between the reader and the workers, and between the workers and the
/// writer.
const QUEUE_DEPTH: usize = 2;

/// What a worker made of one piece.
enum Hashed {
    Zero,
    Known(ChunkId),
    New(EncodedChunk),
    Ref(ChunkRef, PieceOrigin),
}

fn hash_piece(known: &KnownFilter<'_>, piece: Piece, level: i32) -> Result<Hashed> {
    match piece {
        Piece::Ref(r, o) => Ok(Hashed::Ref(r, o)),
        Piece::Data(d) if is_zero(&d) => Ok(Hashed::Zero),
        Piece::Data(d) => {
            let id = ChunkId::of(&d);
            if known.holds(&id)? {
                Ok(Hashed::Known(id))
            } else {
                Ok(Hashed::New(chunk::encode_with_id(
                    id,
                    &d,
                    ChunkKind::Data,
                    level,
                )))
            }
        }
    }
}

/// What the pipeline made of a source.
pub(crate) struct Ingested {
    /// The disk's chunk refs, in order.
    pub(crate) refs: Vec<ChunkRef>,
    /// Counts of what each chunk was.
    pub(crate) stats: BackupStats,
    /// Bytes of disk covered by the refs.
    pub(crate) logical: u64,
    /// Bytes read from the source.
    pub(crate) bytes_read: u64,
}

/// Reads `src` to its end through the three stages, appending new chunks to `session`.
/// `progress` gets the disk bytes done so far and the size when known.
pub(crate) fn run(
    session: &mut Session<'_>,
    mut src: Box<dyn ChunkSource + '_>,
    chunk: u32,
    level: i32,
    size: Option<u64>,
    progress: &(dyn Fn(u64, Option<u64>) + Sync),
) -> Result<Ingested> {
    let mut refs: Vec<ChunkRef> = Vec::new();
    let mut stats = BackupStats::default();
    let mut logical = 0u64;
    let (tx, rx) = crossbeam_channel::bounded::<Result<Vec<(Piece, u64)>>>(QUEUE_DEPTH);
    let (htx, hrx) = crossbeam_channel::bounded::<Result<Vec<(Hashed, u64)>>>(QUEUE_DEPTH);
    let known = session.known_filter();
    let bytes_read = std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            loop {
                let mut batch = Vec::with_capacity(BATCH);
                let mut err = None;
                while batch.len() < BATCH {
                    match src.next_piece() {
                        Ok(Some(p)) => {
                            let len = match &p {
                                Piece::Data(d) => d.len() as u64,
                                Piece::Ref(..) => u64::from(chunk),
                            };
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
        });
        // Hashing and compressing on the rayon pool, one batch at a time, while the writer
        // below appends the previous batch. A chunk met twice in this backup is compressed
        // once: later copies go on as known.
        scope.spawn(move || {
            let mut emitted: HashSet<ChunkId> = HashSet::new();
            for batch in &rx {
                let out = batch.and_then(|batch| {
                    let lens: Vec<u64> = batch.iter().map(|(_, l)| *l).collect();
                    let hashed: Vec<Result<Hashed>> = batch
                        .into_par_iter()
                        .map(|(p, _)| hash_piece(&known, p, level))
                        .collect();
                    hashed
                        .into_iter()
                        .zip(lens)
                        .map(|(h, len)| {
                            Ok(match h? {
                                Hashed::New(enc) if !emitted.insert(enc.id) => {
                                    (Hashed::Known(enc.id), len)
                                }
                                other => (other, len),
                            })
                        })
                        .collect::<Result<Vec<_>>>()
                });
                let failed = out.is_err();
                if htx.send(out).is_err() || failed {
                    return;
                }
            }
        });
        // Owned here: if the writer stops early, dropping it stops the hasher, which drops
        // the reader's channel and stops the reader, so the scope never waits forever.
        let hrx = hrx;
        for batch in &hrx {
            for (h, len) in batch? {
                stats.chunks += 1;
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
                    Hashed::Ref(r, PieceOrigin::Parent) => {
                        stats.parent_chunks += 1;
                        r
                    }
                    Hashed::Ref(r, PieceOrigin::Unallocated) => {
                        stats.zero_chunks += 1;
                        r
                    }
                };
                refs.push(r);
                logical += len;
                progress(logical, size);
            }
        }
        reader
            .join()
            .map_err(|_| Error::Refused("the source reader thread panicked".into()))
    })?;
    Ok(Ingested {
        refs,
        stats,
        logical,
        bytes_read,
    })
}
