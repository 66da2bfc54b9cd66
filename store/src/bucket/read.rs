//! Reading chunks from a store in a bucket: one frame by a ranged GET, many with adjacent
//! frames coalesced into ranges and several in flight.

use std::sync::Mutex;

use super::{IN_FLIGHT, pack_object};
use crate::chunk::{self, ChunkId, EncodedChunk};
use crate::error::{Error, Result};
use crate::index::Location;
use crate::objects::Objects;
use crate::pack::{self, FRAME_HEADER_SIZE, FrameHeader, PackId};
use crate::store::Store;

/// Frames read by one ranged GET at most (adjacent frames are read together).
pub(super) const MAX_RANGE: u64 = 4 << 20;
/// Bytes between two wanted frames that are read rather than asked for apart.
const MAX_GAP: u64 = 256 << 10;
/// One read of a batch: the chunk, where it is, and where its plain bytes go.
pub type ReadJob<'b> = (usize, ChunkId, Location, &'b mut [u8]);

impl Store {
    /// The frame at `loc` (its header and stored bytes, not checked against an id).
    ///
    /// # Errors
    /// A pack that is gone or a malformed frame ([`Error::BadPack`], [`Error::ObjectMissing`]),
    /// I/O errors, the bucket's failures.
    pub fn read_frame_at(&self, loc: &Location) -> Result<(FrameHeader, Vec<u8>)> {
        let mut stored = Vec::new();
        let header = self.frame_into(loc, &mut stored)?;
        Ok((header, stored))
    }

    /// Reads the frame at `loc` into `stored` from wherever its pack is.
    pub(crate) fn frame_into(&self, loc: &Location, stored: &mut Vec<u8>) -> Result<FrameHeader> {
        let path = loc.pack.path(&self.packs_dir());
        match self.pack_file(loc.pack)? {
            Some(file) => pack::read_frame_into(&file, &path, loc.offset, stored),
            None => {
                let Some(b) = &self.bucket else {
                    return Err(Error::Internal("no bucket".into()));
                };
                let name = pack_object(&loc.pack);
                let len = FRAME_HEADER_SIZE + u64::from(loc.stored_len);
                let buf = b.get_range(&name, loc.offset, len)?;
                pack::parse_frame(&buf, stored).map_err(|what| Error::BadPack {
                    path: name.into(),
                    offset: loc.offset,
                    what,
                })
            }
        }
    }

    /// Reads many chunks at known locations into their slots, each checked against its id;
    /// returns the error of each that could not be read. A store in a bucket reads adjacent
    /// frames of a pack with one ranged GET and has several in flight.
    ///
    /// # Errors
    /// Only failures of the bucket itself (after its retries), which stop the batch: a chunk
    /// whose pack is gone or whose frame is bad is that chunk's error.
    pub fn read_located(&self, jobs: Vec<ReadJob<'_>>) -> Result<Vec<(usize, Error)>> {
        use rayon::prelude::*;
        let (here, there) = self.here_and_there(jobs);
        let mut failed: Vec<(usize, Error)> = here
            .into_par_iter()
            .filter_map(|(i, id, loc, slot)| self.read_into(&id, &loc, slot).err().map(|e| (i, e)))
            .collect();
        if let Some(bucket) = &self.bucket {
            failed.extend(in_flight(coalesce(there), |r| {
                read_range(self.chunk_keys(), bucket.as_ref(), r)
            })?);
        }
        Ok(failed)
    }

    /// Reads sorted by pack and offset, split into those of packs here (every pack of a local
    /// store, a session's own of a store in a bucket: read from their files) and those of packs
    /// in the bucket.
    #[allow(clippy::type_complexity)]
    pub(super) fn here_and_there<T>(
        &self,
        mut jobs: Vec<(usize, ChunkId, Location, T)>,
    ) -> (
        Vec<(usize, ChunkId, Location, T)>,
        Vec<(usize, ChunkId, Location, T)>,
    ) {
        jobs.sort_by_key(|(_, _, l, _)| (l.pack, l.offset));
        let dir = self.packs_dir();
        jobs.into_iter()
            .partition(|(_, _, l, _)| self.bucket.is_none() || l.pack.path(&dir).exists())
    }

    /// The chunks `ids` as stored (compressed or plain), each checked against its id, in
    /// order (see [`Store::read_encoded_at`]).
    ///
    /// # Errors
    /// The first chunk missing or damaged, index errors, the bucket's failures.
    pub(crate) fn read_encoded_many(&self, ids: &[ChunkId]) -> Result<Vec<EncodedChunk>> {
        let mut jobs = Vec::with_capacity(ids.len());
        for (id, loc) in ids.iter().zip(self.locations(ids)?) {
            jobs.push((*id, loc.ok_or(Error::MissingChunk(*id))?));
        }
        self.read_encoded_at(&jobs)?.into_iter().collect()
    }

    /// The chunks at the locations `jobs` name, as stored (compressed or plain), each checked
    /// against its id (decoded and hashed), in order, each chunk's damage in its place; from a
    /// bucket, adjacent frames in one ranged GET and several in flight.
    ///
    /// # Errors
    /// The bucket's own failures (after its retries).
    pub fn read_encoded_at(
        &self,
        jobs: &[(ChunkId, Location)],
    ) -> Result<Vec<Result<EncodedChunk>>> {
        let (here, there) = self.here_and_there(
            jobs.iter()
                .enumerate()
                .map(|(i, (id, loc))| (i, *id, *loc, ()))
                .collect(),
        );
        let mut got: Vec<(usize, Result<EncodedChunk>)> = {
            use rayon::prelude::*;
            here.into_par_iter()
                .map(|(i, id, loc, ())| (i, self.encoded_at(&id, &loc)))
                .collect()
        };
        if let Some(bucket) = &self.bucket {
            got.extend(in_flight(coalesce(there), |r| {
                encoded_range(self.chunk_keys(), bucket.as_ref(), r)
            })?);
        }
        got.sort_by_key(|(i, _)| *i);
        Ok(got.into_iter().map(|(_, c)| c).collect())
    }
}

impl Store {
    /// Reads the frames `jobs` (chunk and location) as stored, `per` at a time, each checked
    /// against its id (decoded and hashed), and hands each group to `each`, in order, each
    /// chunk's damage in its place. From a bucket the GETs of later groups are in flight while
    /// one is handed out, into six reused 4 MiB buffers (see the read-ahead): memory stays
    /// bounded however many frames there are.
    ///
    /// # Errors
    /// The bucket's own failures (after its retries), or what `each` returns.
    pub fn read_encoded_groups(
        &self,
        jobs: &[(ChunkId, Location)],
        per: usize,
        mut each: impl FnMut(&[(ChunkId, Location)], Vec<Result<EncodedChunk>>) -> Result<()>,
    ) -> Result<()> {
        use crate::access::BatchReader;
        let groups: Vec<&[(ChunkId, Location)]> = jobs.chunks(per.max(1)).collect();
        let Some(bucket) = self.bucket() else {
            for g in groups {
                each(g, self.read_encoded_at(g)?)?;
            }
            return Ok(());
        };
        // Half a restore's buffers: a collection also uploads the packs it writes.
        let mut ahead = super::ReadAhead::new(self, bucket, super::READ_BUFFERS / 2);
        let mut said = 0;
        for (k, g) in groups.iter().enumerate() {
            while said < groups.len() && said <= k + ahead.ahead() {
                ahead.expect_at(groups[said]);
                said += 1;
            }
            each(g, ahead.read_next_encoded()?)?;
        }
        Ok(())
    }
}

/// Adjacent frames of one pack, read with one GET; `T` is what each read carries (where its
/// plain bytes go).
pub(super) struct Range<T> {
    pub(super) pack: PackId,
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) jobs: Vec<(usize, ChunkId, Location, T)>,
}

/// Groups reads sorted by pack and offset into ranges (see [`MAX_RANGE`], [`MAX_GAP`]).
pub(super) fn coalesce<T>(jobs: Vec<(usize, ChunkId, Location, T)>) -> Vec<Range<T>> {
    let mut out: Vec<Range<T>> = Vec::new();
    for job in jobs {
        let (start, end) = (
            job.2.offset,
            job.2.offset + FRAME_HEADER_SIZE + u64::from(job.2.stored_len),
        );
        match out.last_mut() {
            Some(r)
                if r.pack == job.2.pack
                    && start >= r.start
                    && start <= r.end + MAX_GAP
                    && end.max(r.end) - r.start <= MAX_RANGE =>
            {
                r.end = r.end.max(end);
                r.jobs.push(job);
            }
            _ => out.push(Range {
                pack: job.2.pack,
                start,
                end,
                jobs: vec![job],
            }),
        }
    }
    out
}

/// Runs `f` on every range, [`IN_FLIGHT`] at a time: what they all return, or the first
/// failure (the ranges not yet started are then left).
pub(super) fn in_flight<T: Send, R: Send>(
    ranges: Vec<Range<T>>,
    f: impl Fn(Range<T>) -> Result<Vec<R>> + Sync,
) -> Result<Vec<R>> {
    let ranges = Mutex::new(ranges.into_iter());
    let out = Mutex::new(Vec::new());
    let stop: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..IN_FLIGHT {
            s.spawn(|| {
                loop {
                    if stop.lock().is_ok_and(|s| s.is_some()) {
                        break;
                    }
                    let next = ranges.lock().ok().and_then(|mut r| r.next());
                    let Some(range) = next else { break };
                    match f(range) {
                        Ok(mut got) => {
                            if let Ok(mut o) = out.lock() {
                                o.append(&mut got);
                            }
                        }
                        Err(e) => {
                            if let Ok(mut s) = stop.lock() {
                                s.get_or_insert(e);
                            }
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = stop.into_inner().ok().flatten() {
        return Err(e);
    }
    out.into_inner()
        .map_err(|_| Error::Internal("a read of the bucket panicked".into()))
}

/// The bytes of a range; `Ok(Err(what))` when its pack object is gone (each chunk's damage,
/// not a failure of the bucket).
fn fetch_range<T>(bucket: &dyn Objects, range: &Range<T>) -> Result<Result<Vec<u8>, String>> {
    let mut buf = Vec::new();
    let got = get_frames_into(bucket, range.pack, range.start, range.end, &mut buf)?;
    Ok(got.map(|()| buf))
}

/// Bytes `start..end` of pack `pack` into `buf`; `Ok(Err(what))` when its object is gone (as
/// [`fetch_range`]).
pub(super) fn get_frames_into(
    bucket: &dyn Objects,
    pack: PackId,
    start: u64,
    end: u64,
    buf: &mut Vec<u8>,
) -> Result<Result<(), String>> {
    let name = pack_object(&pack);
    match bucket.get_range_into(&name, start, end - start, buf) {
        Ok(()) => Ok(Ok(())),
        Err(Error::ObjectMissing { storage, name }) => {
            Ok(Err(format!("{storage}: the pack object {name} is gone")))
        }
        Err(e) => Err(e),
    }
}

/// The frame of `id` at `at` of `buf`: its header, its stored bytes into `stored`.
fn frame_in(
    buf: &[u8],
    at: u64,
    id: &ChunkId,
    stored: &mut Vec<u8>,
) -> Result<FrameHeader, String> {
    let h = pack::parse_frame(buf.get(at as usize..).unwrap_or_default(), stored)?;
    if h.id != *id {
        return Err(format!("the frame there holds chunk {}", h.id));
    }
    Ok(h)
}

/// Reads one range and decodes its chunks into their slots: the chunks that failed, or the
/// bucket's own failure.
fn read_range(
    keys: Option<&crate::Keys>,
    bucket: &dyn Objects,
    range: Range<&mut [u8]>,
) -> Result<Vec<(usize, Error)>> {
    let buf = fetch_range(bucket, &range)?;
    Ok(decode_range(
        keys,
        buf.as_deref().map_err(String::as_str),
        range.start,
        range.jobs,
    ))
}

/// Decodes the chunks of a range whose bytes from `start` are `buf` (or whose pack is gone)
/// into their slots: the chunks that failed.
pub(super) fn decode_range(
    keys: Option<&crate::Keys>,
    buf: std::result::Result<&[u8], &str>,
    start: u64,
    jobs: Vec<ReadJob<'_>>,
) -> Vec<(usize, Error)> {
    let mut stored = Vec::new();
    let mut failed = Vec::new();
    for (i, id, loc, slot) in jobs {
        let r = buf
            .map_err(str::to_owned)
            .and_then(|buf| frame_in(buf, loc.offset - start, &id, &mut stored))
            .map_err(|what| crate::read::bad_chunk(&id, &loc, what))
            .and_then(|h| {
                chunk::decode_into(keys, &h.stored(&stored), slot)
                    .map_err(|e| crate::read::chunk_error(&id, &loc, e))
            });
        if let Err(e) = r {
            failed.push((i, e));
        }
    }
    failed
}

/// Reads one range's chunks as stored, each checked against its id (decoded and hashed).
pub(super) fn encoded_range(
    keys: Option<&crate::Keys>,
    bucket: &dyn Objects,
    range: Range<()>,
) -> Result<Vec<(usize, Result<EncodedChunk>)>> {
    let buf = fetch_range(bucket, &range)?;
    Ok(encoded_in(
        keys,
        buf.as_deref().map_err(String::as_str),
        range.start,
        range.jobs,
    ))
}

/// The chunks of a range whose bytes from `start` are `buf` (or whose pack is gone), as
/// stored, each checked against its id (decoded and hashed).
pub(super) fn encoded_in(
    keys: Option<&crate::Keys>,
    buf: std::result::Result<&[u8], &str>,
    start: u64,
    jobs: Vec<(usize, ChunkId, Location, ())>,
) -> Vec<(usize, Result<EncodedChunk>)> {
    let mut plain = Vec::new();
    let mut out = Vec::with_capacity(jobs.len());
    for (i, id, loc, ()) in jobs {
        let mut stored = Vec::new();
        let r = buf.map_err(str::to_owned).and_then(|buf| {
            let h = frame_in(buf, loc.offset - start, &id, &mut stored)?;
            chunk::check(keys, &h.stored(&stored), &mut plain).map_err(|e| e.to_string())?;
            Ok(EncodedChunk {
                id,
                kind: h.kind,
                codec: h.codec,
                plain_len: h.plain_len,
                bytes: std::mem::take(&mut stored),
            })
        });
        out.push((i, r.map_err(|what| crate::read::bad_chunk(&id, &loc, what))));
    }
    out
}
