//! Reading the chosen chunks in pack order, in batches, and sorting what the reads found.

use cairn_store::{ChunkId, Location, Store, StoreRead};

use super::{DamageState, Finding, Findings, Scope};
use crate::Result;

/// Chunks read and checked at a time (16 MiB at 256 KiB chunks).
const VERIFY_BATCH: usize = 64;

/// One chunk read: its id, where it was, and why it did not read well.
pub(super) type Read = (ChunkId, Location, Option<String>);

/// Reads `jobs` (in pack order) in batches, so that the progress moves and the buffers stay
/// small, each batch as the store reads best: a bucket's batch reader has the GETs of later
/// batches in flight (adjacent frames in one ranged GET) while one is checked. A failure of the
/// bucket itself stops the verify: it says nothing of the chunks.
pub(super) fn read_all(
    store: &Store,
    jobs: &[(ChunkId, Location)],
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Vec<Read>> {
    let total = jobs.len() as u64;
    let mut results: Vec<Read> = Vec::with_capacity(jobs.len());
    let cs = store.config().chunk_size as usize;
    let mut bufs: Vec<Vec<u8>> = Vec::new();
    let batches: Vec<&[(ChunkId, Location)]> = jobs.chunks(VERIFY_BATCH).collect();
    let mut reader = store.batches();
    let mut said = 0;
    for (k, batch) in batches.iter().enumerate() {
        while said < batches.len() && said <= k + reader.ahead() {
            reader.expect(batches[said].iter().map(|(id, _)| *id).collect())?;
            said += 1;
        }
        bufs.resize_with(batch.len(), || vec![0u8; cs]);
        let slots: Vec<&mut [u8]> = batch
            .iter()
            .zip(bufs.iter_mut())
            .map(|((_, loc), buf)| {
                buf.resize(loc.plain_len as usize, 0);
                buf.as_mut_slice()
            })
            .collect();
        // A sealed chunk read without the key: its frame's CRCs passed, which is all a
        // keyless verify can check of it.
        let errs = reader.read_next(slots)?.into_iter().map(|e| {
            e.and_then(|e| match e {
                cairn_store::Error::Sealed(_) => None,
                cairn_store::Error::BadChunk { what, .. } => Some(what),
                other => Some(other.to_string()),
            })
        });
        results.extend(batch.iter().zip(errs).map(|((id, loc), e)| (*id, *loc, e)));
        progress(results.len() as u64, total);
    }
    Ok(results)
}

/// Sorts the reads: a chunk in scope that read badly is a finding; a marked chunk that read
/// well is healed (returned). Also returns the stored bytes read.
pub(super) fn tally(
    results: Vec<Read>,
    scope: &Scope,
    findings: &mut Findings,
) -> (Vec<ChunkId>, u64) {
    let mut healed = Vec::new();
    let mut bytes = 0;
    for (id, loc, err) in results {
        bytes += cairn_store::pack::FRAME_HEADER_SIZE + u64::from(loc.stored_len);
        match err {
            Some(e) if scope.all.contains(&id) => {
                let f = Finding {
                    state: DamageState::Bad,
                    what: e,
                    location: Some(format!("pack {} offset {}", loc.pack.to_hex(), loc.offset)),
                };
                findings.insert(id, f);
            }
            Some(_) => {}
            None if scope.marked.contains_key(&id) => healed.push(id),
            None => {}
        }
    }
    (healed, bytes)
}
