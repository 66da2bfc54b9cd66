//! Reading a restore's windows from a bucket ahead of the reader ([`crate::ahead`]): the ranged
//! GETs of later batches are in flight while an earlier batch is decoded and written, into a
//! fixed set of buffers reused from range to range.

use std::collections::VecDeque;
use std::sync::Arc;

use super::IN_FLIGHT;
use super::read::{MAX_RANGE, Range, coalesce, decode_range, encoded_in, get_frames_into};
use crate::access::{BatchReader, next_said};
use crate::ahead::Ahead;
use crate::chunk::{ChunkId, EncodedChunk};
use crate::error::{Error, Result};
use crate::index::Location;
use crate::objects::Objects;
use crate::pack::PackId;
use crate::store::Store;

/// Buffers of ranges (each of [`MAX_RANGE`] bytes): the GETs in flight and the ranges fetched and
/// not yet decoded, together, at most (44 MiB), for a restore or a verify.
pub(crate) const BUFFERS: usize = 11;
/// Batches said and not yet read before the oldest is read.
const AHEAD: usize = 32;

/// A range to fetch: its pack and bytes.
struct Fetch {
    pack: PackId,
    start: u64,
    end: u64,
}

/// What a GET brought: `Ok(Err(what))` when the pack object is gone (each chunk's damage); the
/// outer error is the bucket's own failure.
type Got = Result<std::result::Result<(), String>>;

/// A batch said: its ids, its chunks read by ranged GETs (range numbers), read from a pack
/// here, or missing from the index.
struct Said {
    ids: Vec<ChunkId>,
    there: Vec<(u64, Range<()>)>,
    here: Vec<(usize, ChunkId, Location)>,
    missing: Vec<usize>,
}

impl AsRef<[ChunkId]> for Said {
    fn as_ref(&self) -> &[ChunkId] {
        &self.ids
    }
}

/// The [`BatchReader`] of a store in a bucket (see the module).
pub(crate) struct ReadAhead<'s> {
    store: &'s Store,
    ahead: Ahead<Fetch, Got>,
    said: VecDeque<Said>,
}

impl<'s> ReadAhead<'s> {
    /// A reader of `bucket` with at most `buffers` ranges held at once.
    pub(crate) fn new(store: &'s Store, bucket: &Arc<dyn Objects>, buffers: usize) -> Self {
        let bucket = Arc::clone(bucket);
        Self {
            store,
            ahead: Ahead::new(
                buffers,
                MAX_RANGE as usize,
                IN_FLIGHT,
                move |f: &Fetch, buf: &mut Vec<u8>| {
                    get_frames_into(bucket.as_ref(), f.pack, f.start, f.end, buf)
                },
            ),
            said: VecDeque::new(),
        }
    }
}

impl ReadAhead<'_> {
    /// Says the next batch: chunks at known locations (`None`: not in the index).
    fn say(&mut self, ids: Vec<ChunkId>, locs: Vec<Option<Location>>) {
        let mut jobs = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        for (i, (id, loc)) in ids.iter().zip(locs).enumerate() {
            match loc {
                Some(loc) => jobs.push((i, *id, loc, ())),
                None => missing.push(i),
            }
        }
        let (here, there) = self.store.here_and_there(jobs);
        let mut numbered = Vec::new();
        for range in coalesce(there) {
            let seq = self.ahead.push(Fetch {
                pack: range.pack,
                start: range.start,
                end: range.end,
            });
            numbered.push((seq, range));
        }
        self.said.push_back(Said {
            ids,
            there: numbered,
            here: here
                .into_iter()
                .map(|(i, id, loc, ())| (i, id, loc))
                .collect(),
            missing,
        });
    }

    /// Says the next batch: chunks at the locations given (a collection's copy of the frames
    /// it read from the index).
    pub(crate) fn expect_at(&mut self, jobs: &[(ChunkId, Location)]) {
        self.say(
            jobs.iter().map(|(id, _)| *id).collect(),
            jobs.iter().map(|(_, loc)| Some(*loc)).collect(),
        );
    }

    /// Range `seq` once fetched: its buffer and what the GET brought; `None` when it has not
    /// arrived and `wait` is false. The bucket's own failure stops the reader.
    #[allow(clippy::type_complexity)]
    fn take(
        &mut self,
        seq: u64,
        wait: bool,
    ) -> Result<Option<(Vec<u8>, std::result::Result<(), String>)>> {
        match self.ahead.take(seq, wait)? {
            Some((buf, Ok(got))) => Ok(Some((buf, got))),
            Some((buf, Err(e))) => {
                self.ahead.give_back([buf]);
                self.ahead.stop();
                Err(e)
            }
            None => Ok(None),
        }
    }

    /// Runs `f` on the bytes of each range of a batch (`items`: range number and what `f`
    /// needs), in parallel, as they arrive: a round is the next range (waited for) and those
    /// after it already fetched, and its buffers are given back before the next round waits,
    /// so a batch of more ranges than there are buffers never waits on itself.
    fn each_arrived<I: Send, T: Send>(
        &mut self,
        items: Vec<(u64, I)>,
        f: impl Fn(std::result::Result<&[u8], &str>, I) -> T + Sync,
    ) -> Result<Vec<T>> {
        use rayon::prelude::*;
        let mut out = Vec::with_capacity(items.len());
        let mut items = items.into_iter().peekable();
        while let Some((seq, item)) = items.next() {
            let Some(first) = self.take(seq, true)? else {
                return Err(Error::Internal(format!("range {seq} was never fetched")));
            };
            let mut round = vec![(first, item)];
            while let Some(&(next, _)) = items.peek() {
                let Some(got) = self.take(next, false)? else {
                    break;
                };
                if let Some((_, item)) = items.next() {
                    round.push((got, item));
                }
            }
            let (done, bufs): (Vec<T>, Vec<Vec<u8>>) = round
                .into_par_iter()
                .map(|((buf, got), item)| {
                    let bytes = got
                        .as_ref()
                        .map(|()| buf.as_slice())
                        .map_err(String::as_str);
                    (f(bytes, item), buf)
                })
                .unzip();
            self.ahead.give_back(bufs);
            out.extend(done);
        }
        Ok(out)
    }

    /// Reads the oldest batch said, as stored (compressed or plain), each chunk checked against
    /// its id (decoded and hashed), in the batch's order, each chunk's damage in its place.
    ///
    /// # Errors
    /// No batch was said, or the bucket's own failures.
    pub(crate) fn read_next_encoded(&mut self) -> Result<Vec<Result<EncodedChunk>>> {
        use rayon::prelude::*;
        let said = self
            .said
            .pop_front()
            .ok_or_else(|| Error::Internal("a batch was read that was never said".into()))?;
        let mut got: Vec<(usize, Result<EncodedChunk>)> = said
            .missing
            .iter()
            .map(|&i| (i, Err(Error::MissingChunk(said.ids[i]))))
            .collect();
        let there = said
            .there
            .into_iter()
            .map(|(seq, range)| (seq, (range.start, range.jobs)))
            .collect();
        let decoded = self.each_arrived(there, |bytes, (start, jobs)| {
            encoded_in(self.store.chunk_keys(), bytes, start, jobs)
        })?;
        got.extend(decoded.into_iter().flatten());
        got.extend(
            said.here
                .into_par_iter()
                .map(|(i, id, loc)| (i, self.store.encoded_at(&id, &loc)))
                .collect::<Vec<_>>(),
        );
        got.sort_by_key(|(i, _)| *i);
        Ok(got.into_iter().map(|(_, c)| c).collect())
    }
}

impl BatchReader for ReadAhead<'_> {
    fn expect(&mut self, ids: Vec<ChunkId>) -> Result<()> {
        let locs = self.store.locations(&ids)?;
        self.say(ids, locs);
        Ok(())
    }

    fn ahead(&self) -> usize {
        AHEAD
    }

    fn read_next(&mut self, slots: Vec<&mut [u8]>) -> Result<Vec<Option<Error>>> {
        use rayon::prelude::*;
        let said = next_said(&mut self.said, slots.len())?;
        let mut out: Vec<Option<Error>> = (0..said.ids.len()).map(|_| None).collect();
        for &i in &said.missing {
            out[i] = Some(Error::MissingChunk(said.ids[i]));
        }
        let mut slots: Vec<Option<&mut [u8]>> = slots.into_iter().map(Some).collect();
        let mut take = |i: usize| {
            slots
                .get_mut(i)
                .and_then(Option::take)
                .ok_or_else(|| Error::Internal(format!("slot {i} of a batch taken twice")))
        };
        let mut there = Vec::with_capacity(said.there.len());
        for (seq, range) in said.there {
            let mut jobs = Vec::with_capacity(range.jobs.len());
            for (i, id, loc, ()) in range.jobs {
                jobs.push((i, id, loc, take(i)?));
            }
            there.push((seq, (range.start, jobs)));
        }
        let mut here = Vec::with_capacity(said.here.len());
        for (i, id, loc) in said.here {
            here.push((i, id, loc, take(i)?));
        }
        let failed = self.each_arrived(there, |bytes, (start, jobs)| {
            decode_range(self.store.chunk_keys(), bytes, start, jobs)
        })?;
        let mut failed: Vec<(usize, Error)> = failed.into_iter().flatten().collect();
        failed.extend(
            here.into_par_iter()
                .filter_map(|(i, id, loc, slot)| {
                    self.store.read_into(&id, &loc, slot).err().map(|e| (i, e))
                })
                .collect::<Vec<_>>(),
        );
        for (i, e) in failed {
            out[i] = Some(e);
        }
        Ok(out)
    }
}
