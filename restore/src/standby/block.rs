//! Targets read and written in place (a file, a block device, an NBD export): the chunks that
//! differ written, under the journal, then flushed.

use cairn_store::{ChunkRef, Found, PointLookup, RecoveryPoint, Store};

use super::{Files, Journal, Looks, StandbyOptions, StandbyReport, State, journal_point, refused};
use crate::{Error, Result};

/// A disk written in place.
pub(super) trait BlockTarget {
    /// The target as messages and the state show it.
    fn shown(&self) -> &str;
    /// Whether it held anything before this run (a new, empty file did not: it reads as zeros,
    /// and its holes can stay holes).
    fn held_data(&self) -> bool;
    /// What it looks like now (see [`Looks`]); `chunk_size` for targets that sample chunks.
    ///
    /// # Errors
    /// I/O or NBD errors.
    fn looks(&mut self, chunk_size: u64) -> Result<Looks>;
    /// Whether its size can be set (a file; not a device or an export).
    fn resizable(&self) -> bool;
    /// Makes it `len` bytes long (when [`BlockTarget::resizable`]).
    ///
    /// # Errors
    /// I/O errors; a target that cannot be sized.
    fn set_len(&mut self, len: u64) -> Result<()>;
    /// Reads `buf.len()` bytes at `at`.
    ///
    /// # Errors
    /// I/O or NBD errors.
    fn read_at(&mut self, buf: &mut [u8], at: u64) -> Result<()>;
    /// Writes `data` at `at`.
    ///
    /// # Errors
    /// I/O or NBD errors.
    fn write_at(&mut self, data: &[u8], at: u64) -> Result<()>;
    /// Makes every write durable.
    ///
    /// # Errors
    /// I/O or NBD errors.
    fn flush(&mut self) -> Result<()>;
}

/// Where a point's chunks go.
struct Writer<'a> {
    store: &'a Store,
    lookup: PointLookup,
    point: &'a RecoveryPoint,
}

/// Chunks read from the store at once (in parallel, in pack order) before they are written.
const BATCH: usize = 64;

impl Writer<'_> {
    /// Writes chunks `first..end` of the point as the store holds them; with `compare` only
    /// those that differ; with `fresh` (a new file, zeros already) no zero chunk. Returns
    /// (chunks, bytes) written.
    fn write(
        &self,
        target: &mut dyn BlockTarget,
        (first, end): (u64, u64),
        compare: bool,
        fresh: bool,
    ) -> Result<(u64, u64)> {
        let (store, point) = (self.store, self.point);
        let cs = u64::from(point.chunk_size);
        let mut written = (0u64, 0u64);
        let mut have = vec![0u8; cs as usize];
        let zeros = vec![0u8; cs as usize];
        // A batch: each chunk's index and, for data, its id; the data read at once.
        let mut batch: Vec<(u64, Option<cairn_store::ChunkId>)> = Vec::with_capacity(BATCH);
        let mut buf = vec![0u8; BATCH * cs as usize];
        let mut flush = |batch: &mut Vec<(u64, Option<cairn_store::ChunkId>)>,
                         target: &mut dyn BlockTarget|
         -> Result<()> {
            let errors = read_batch(store, point, batch, &mut buf)?;
            let mut data = buf.chunks(cs as usize).zip(errors);
            for (c, id) in batch.drain(..) {
                let at = c * cs;
                let len = cs.min(point.size - at) as usize;
                let want: &[u8] = match id {
                    Some(_) => match data.next() {
                        Some((bytes, None)) => &bytes[..len],
                        Some((_, Some(e))) => {
                            return Err(Error::Chunk {
                                point: point.id.clone(),
                                offset: at,
                                source: e,
                            });
                        }
                        None => {
                            return Err(Error::Store(cairn_store::Error::Internal(
                                "a chunk read went missing".into(),
                            )));
                        }
                    },
                    None => &zeros[..len],
                };
                if compare {
                    let got = &mut have[..len];
                    target.read_at(got, at)?;
                    if got == want {
                        continue;
                    }
                }
                target.write_at(want, at)?;
                written.0 += 1;
                written.1 += len as u64;
            }
            Ok(())
        };
        let mut i = first;
        while i < end {
            let (id, next) = match self.lookup.find(store, i)? {
                Found::Zeros { end: z } => (None, z.min(end)),
                Found::Ref(ChunkRef::Zero) => (None, i + 1),
                Found::Ref(ChunkRef::Data(id)) => (Some(id), i + 1),
            };
            if id.is_none() && fresh {
                // A new file reads as zeros already: its holes stay holes.
                i = next;
                continue;
            }
            for c in i..next {
                batch.push((c, id));
                if batch.len() == BATCH {
                    flush(&mut batch, target)?;
                }
            }
            i = next;
        }
        flush(&mut batch, target)?;
        Ok(written)
    }
}

/// Brings `target` from `from` (what it holds, `None`: unknown or nothing) to `to`, and
/// flushes it.
fn bring(
    store: &Store,
    target: &mut dyn BlockTarget,
    from: Option<&RecoveryPoint>,
    to: &RecoveryPoint,
    compare: bool,
    fresh: bool,
) -> Result<(u64, u64)> {
    let writer = Writer {
        store,
        lookup: PointLookup::new(to)?,
        point: to,
    };
    let mut written = (0u64, 0u64);
    match from {
        Some(old) if !compare && old.chunk_size == to.chunk_size && old.size == to.size => {
            let mut ranges = Vec::new();
            cairn_store::tree::differences(store, old, to, false, |a, b| ranges.push((a, b)))?;
            for r in ranges {
                let w = writer.write(target, r, false, false)?;
                written = (written.0 + w.0, written.1 + w.1);
            }
        }
        _ => {
            let all = (0, to.chunk_count());
            written = writer.write(target, all, compare, fresh)?;
        }
    }
    target.flush()?;
    Ok(written)
}

/// A target as a dry run sees it: read as it is (past its end, as the zeros a resized file
/// would hold), never written, sized or flushed.
struct DryTarget<'t> {
    inner: &'t mut dyn BlockTarget,
    /// Its size as the run starts.
    len: u64,
}

impl BlockTarget for DryTarget<'_> {
    fn shown(&self) -> &str {
        self.inner.shown()
    }
    fn held_data(&self) -> bool {
        self.inner.held_data()
    }
    fn looks(&mut self, chunk_size: u64) -> Result<Looks> {
        self.inner.looks(chunk_size)
    }
    fn resizable(&self) -> bool {
        self.inner.resizable()
    }
    fn set_len(&mut self, _len: u64) -> Result<()> {
        Ok(())
    }
    fn read_at(&mut self, buf: &mut [u8], at: u64) -> Result<()> {
        let there = (self.len.saturating_sub(at) as usize).min(buf.len());
        if there > 0 {
            self.inner.read_at(&mut buf[..there], at)?;
        }
        buf[there..].fill(0);
        Ok(())
    }
    fn write_at(&mut self, _data: &[u8], _at: u64) -> Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Keeps a block target equal to `point` (see the module); a dry run goes through the same
/// steps on a [`DryTarget`], with the state and journal only read.
pub(super) fn run(
    store: &Store,
    point: &RecoveryPoint,
    target: &mut dyn BlockTarget,
    options: &StandbyOptions,
) -> Result<StandbyReport> {
    if options.dry_run {
        let len = target.looks(u64::from(point.chunk_size))?.size;
        let mut dry = DryTarget { inner: target, len };
        return run_on(store, point, &mut dry, options);
    }
    run_on(store, point, target, options)
}

fn run_on(
    store: &Store,
    point: &RecoveryPoint,
    target: &mut dyn BlockTarget,
    options: &StandbyOptions,
) -> Result<StandbyReport> {
    let shown = target.shown().to_owned();
    let f = Files::lock(store, &shown, options.dry_run)?;
    let cs = u64::from(point.chunk_size);
    let mut report = StandbyReport {
        target: shown.clone(),
        to: point.id.to_string(),
        ..StandbyReport::default()
    };
    let mut state = f.state()?;
    // 1. An interrupted run is finished first.
    if let Some(j) = f.journal()? {
        let (s, w) = finish_interrupted(store, target, &f, &j, point)?;
        state = Some(s);
        report.finished_interrupted = true;
        report.chunks_written += w.0;
        report.bytes_written += w.1;
    }
    // 2. What the target holds, checked.
    let held_data = target.held_data();
    let looks = target.looks(cs)?;
    let held = held_point(store, &shown, state.as_ref(), &looks, held_data, options)?;
    report.from = held.as_ref().map(|p| p.id.to_string());
    if held.as_ref().is_some_and(|h| h.id == point.id) && !options.verify {
        return Ok(report);
    }
    // 3. The journal, then the size, the writes, the flush, the state; the journal goes last. A
    //    run killed after it sized a new file but before its journal was durable would leave a
    //    file of data cairn never wrote, refused by every run after.
    let compare = held.is_none() && held_data || options.verify;
    f.begin(held.as_ref(), point)?;
    if looks.size != point.size {
        if !target.resizable() {
            f.end()?;
            return Err(refused(format!(
                "{shown} is {} bytes and the point {} bytes",
                looks.size, point.size
            )));
        }
        target.set_len(point.size)?;
    }
    let w = bring(store, target, held.as_ref(), point, compare, !held_data)?;
    report.chunks_written += w.0;
    report.bytes_written += w.1;
    report.compared = compare;
    f.set_state(&State::new(&shown, point, target.looks(cs)?))?;
    f.end()?;
    Ok(report)
}

/// Finishes the run a journal says was interrupted: the target sized (a new file killed before
/// it was), brought to the journal's point; returns the state recorded and what was written.
fn finish_interrupted(
    store: &Store,
    target: &mut dyn BlockTarget,
    f: &Files,
    j: &Journal,
    point: &RecoveryPoint,
) -> Result<(State, (u64, u64))> {
    let shown = target.shown().to_owned();
    let cs = u64::from(point.chunk_size);
    let to = journal_point(store, j, &shown, point)?;
    let from = match j.from.as_deref() {
        Some(id) => store.point_by_id(id)?,
        None => None,
    };
    if target.looks(cs)?.size != to.size {
        if !target.resizable() {
            return Err(refused(format!(
                "{shown} is not the size of point {} its unfinished run was writing",
                to.short_id()
            )));
        }
        target.set_len(to.size)?;
    }
    let w = bring(store, target, from.as_ref(), &to, from.is_none(), false)?;
    let s = State::new(&shown, &to, target.looks(cs)?);
    f.set_state(&s)?;
    f.end()?;
    Ok((s, w))
}

/// The point the target holds, by the state cairn recorded when it last wrote it: none (a
/// target cairn never wrote, or one that changed since, taken only with --force).
fn held_point(
    store: &Store,
    shown: &str,
    state: Option<&State>,
    looks: &Looks,
    held_data: bool,
    options: &StandbyOptions,
) -> Result<Option<RecoveryPoint>> {
    Ok(match state {
        Some(s) if s.looks() == *looks => store.point_by_id(&s.point)?,
        Some(s) if !options.force => {
            return Err(refused(format!(
                "{shown} changed since cairn wrote point {} to it ({}: was the copy \
                 started?); nothing was written. --force reads it all and rewrites what differs",
                cairn_store::point::short_id(&s.point),
                if s.sample.is_some() {
                    "its size or sampled chunks differ"
                } else {
                    "size, time or inode differ"
                }
            )));
        }
        Some(_) => None,
        None if held_data && !options.force => {
            return Err(refused(format!(
                "{shown} holds data and cairn never wrote it; nothing was written. --force \
                 makes it a standby disk (what differs is rewritten)"
            )));
        }
        None => None,
    })
}

/// Reads the data chunks of `batch` into `buf`, each filling its place exactly (the last one of
/// the disk may be short); what went wrong with each.
fn read_batch(
    store: &Store,
    point: &RecoveryPoint,
    batch: &[(u64, Option<cairn_store::ChunkId>)],
    buf: &mut [u8],
) -> Result<Vec<Option<cairn_store::Error>>> {
    let cs = u64::from(point.chunk_size);
    let ids: Vec<cairn_store::ChunkId> = batch.iter().filter_map(|(_, id)| *id).collect();
    let places = batch
        .iter()
        .filter(|(_, id)| id.is_some())
        .map(|(c, _)| cs.min(point.size - c * cs) as usize);
    let slots: Vec<&mut [u8]> = buf
        .chunks_mut(cs as usize)
        .zip(places)
        .map(|(slot, place)| &mut slot[..place])
        .collect();
    Ok(cairn_store::StoreRead::read_chunks(store, &ids, slots)?)
}
