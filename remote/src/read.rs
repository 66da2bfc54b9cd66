//! Reading from a server: points, and chunks fetched in groups, several requests in flight,
//! each chunk checked against its id.

use cairn_api::{MAX_READ, READ_FAILED, READ_OK};
use cairn_store::chunk::{self, ChunkId};
use cairn_store::{EncodedChunk, Error, RecoveryPoint, Result, StoreConfig, StoreRead, pack};

use crate::ids_bytes;
use crate::{Body, Remote, remote_err};

/// Chunks per read request.
const READ_GROUP: usize = 4;

/// Read requests in flight.
const READS_IN_FLIGHT: usize = 8;

const _: () = assert!(
    READ_GROUP <= MAX_READ,
    "a read request takes at most MAX_READ ids"
);

impl StoreRead for Remote {
    fn config(&self) -> &StoreConfig {
        &self.info.config
    }

    fn chunk_keys(&self) -> Option<&cairn_store::Keys> {
        Remote::chunk_keys(self)
    }

    fn batches(&self) -> Box<dyn cairn_store::BatchReader + '_> {
        Box::new(crate::ahead::ReadAhead::new(self))
    }

    fn points(&self) -> Result<Vec<RecoveryPoint>> {
        self.json(reqwest::Method::GET, "points", None)
    }

    fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        match self.fetch(std::slice::from_ref(id))?.into_iter().next() {
            Some(Ok(c)) => {
                let mut plain = vec![0u8; c.plain_len as usize];
                check_into(self.chunk_keys(), id, &c.stored(), &mut plain)?;
                Ok(plain)
            }
            Some(Err(e)) => Err(e),
            None => Err(Error::MissingChunk(*id)),
        }
    }

    fn read_chunks(&self, ids: &[ChunkId], slots: Vec<&mut [u8]>) -> Result<Vec<Option<Error>>> {
        // Groups of a few chunks, several requests in flight, each group decoded and checked
        // by the thread that fetched it: the server reads one group while this side decodes
        // another.
        let mut slots = slots;
        let groups: Vec<_> = ids
            .chunks(READ_GROUP)
            .zip(slots.chunks_mut(READ_GROUP))
            .collect();
        let answers = in_lanes(groups, |(g, s)| self.read_group(g, s))?;
        Ok(answers.into_iter().flatten().collect())
    }

    fn read_encoded(&self, ids: &[ChunkId]) -> Result<Vec<EncodedChunk>> {
        let groups: Vec<&[ChunkId]> = ids.chunks(READ_GROUP).collect();
        let answers = in_lanes(groups, |g| {
            let mut plain = Vec::new();
            g.iter()
                .zip(self.fetch(g)?)
                .map(|(id, got)| {
                    let c = got?;
                    check_stored(self.chunk_keys(), id, &c, &mut plain)?;
                    Ok(c)
                })
                .collect::<Result<Vec<_>>>()
        })?;
        Ok(answers.into_iter().flatten().collect())
    }
}

/// Checks a chunk the server sent as stored (to be copied as it is), as far as `keys` allow
/// ([`chunk::check`]).
///
/// # Errors
/// [`Error::BadChunk`] when it is not `id`'s or does not check.
fn check_stored(
    keys: Option<&cairn_store::Keys>,
    id: &ChunkId,
    c: &EncodedChunk,
    scratch: &mut Vec<u8>,
) -> Result<()> {
    let bad = |what: String| Error::BadChunk {
        id: *id,
        where_: "as the server sent it".into(),
        what,
    };
    if c.id != *id {
        return Err(bad(format!("the server sent chunk {} for it", c.id)));
    }
    chunk::check(keys, &c.stored(), scratch).map_err(|e| bad(e.to_string()))
}

/// Decodes a chunk the server sent into the front of `out` and checks it against its id.
///
/// # Errors
/// [`Error::BadChunk`] when it does not decode or hash to `id`.
pub(crate) fn check_into(
    keys: Option<&cairn_store::Keys>,
    id: &ChunkId,
    c: &chunk::Stored<'_>,
    out: &mut [u8],
) -> Result<()> {
    if c.id != id {
        return Err(Error::BadChunk {
            id: *id,
            where_: "as the server sent it".into(),
            what: format!("the server sent chunk {} for it", c.id),
        });
    }
    chunk::decode_into(keys, c, out).map_err(|what| Error::BadChunk {
        id: *id,
        where_: "as the server sent it".into(),
        what: what.to_string(),
    })
}

/// Runs `f` on each item, [`READS_IN_FLIGHT`] threads at a time (each a lane of items taken in
/// turn, so that as many requests are in flight), and returns the answers in the items' order.
///
/// # Errors
/// The first error of any item.
fn in_lanes<I: Send, T: Send>(items: Vec<I>, f: impl Fn(I) -> Result<T> + Sync) -> Result<Vec<T>> {
    let mut lanes: Vec<Vec<(usize, I)>> = (0..READS_IN_FLIGHT).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        lanes[i % READS_IN_FLIGHT].push((i, item));
    }
    let f = &f;
    let done: Vec<Result<Vec<(usize, T)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = lanes
            .into_iter()
            .filter(|l| !l.is_empty())
            .map(|lane| {
                scope.spawn(move || {
                    lane.into_iter()
                        .map(|(i, item)| Ok((i, f(item)?)))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Internal("a reader thread panicked".into())))
            })
            .collect()
    });
    let mut answers = Vec::new();
    for lane in done {
        answers.extend(lane?);
    }
    answers.sort_by_key(|(i, _)| *i);
    Ok(answers.into_iter().map(|(_, t)| t).collect())
}

impl Remote {
    /// Reads a group of chunks into their slots, each decoded and checked against its id.
    fn read_group(&self, ids: &[ChunkId], slots: &mut [&mut [u8]]) -> Result<Vec<Option<Error>>> {
        Ok(ids
            .iter()
            .zip(self.fetch(ids)?)
            .zip(slots.iter_mut())
            .map(|((id, got), slot)| match got {
                Ok(c) => check_into(self.chunk_keys(), id, &c.stored(), slot).err(),
                Err(e) => Some(e),
            })
            .collect())
    }

    /// The chunks `ids` (at most [`MAX_READ`]) as stored, in order: not yet checked.
    fn fetch(&self, ids: &[ChunkId]) -> Result<Vec<Result<EncodedChunk>>> {
        let mut body = Vec::new();
        self.link.call_into(
            reqwest::Method::POST,
            "chunks/read",
            Some(Body::Bytes(ids_bytes(ids))),
            None,
            &mut body,
            answer_limit(ids.len(), self.info.config.chunk_size),
        )?;
        Ok(parse_read_answer(&body, ids)?
            .into_iter()
            .map(|r| {
                r.map(|(h, at)| EncodedChunk {
                    id: h.id,
                    kind: h.kind,
                    codec: h.codec,
                    plain_len: h.plain_len,
                    bytes: body[at].to_vec(),
                })
            })
            .collect())
    }
}

/// The longest answer `chunks/read` can give for `ids` chunks of `chunk_size` bytes: each a
/// status, a frame header and stored bytes no longer than the chunk and what sealing adds, or
/// a message of at most a few KiB (see docs/api.md).
pub(crate) fn answer_limit(ids: usize, chunk_size: u32) -> u64 {
    ids as u64 * (1 + pack::FRAME_HEADER_SIZE + u64::from(chunk_size) + 4096)
}

/// Where a frame's stored bytes are in an answer.
pub(crate) type Span = std::ops::Range<usize>;

/// The records of a `chunks/read` answer, one per id asked (see docs/api.md): each a frame's
/// header and where its stored bytes are in `body` (framing checked, the bytes not yet checked
/// against the id), or the server's message. The answer is hostile input: every length is
/// checked against what is there, trailing bytes are refused.
///
/// # Errors
/// An answer that is cut short, has an unknown record status, a malformed frame or bytes past
/// its last record.
pub(crate) fn parse_read_answer(
    body: &[u8],
    ids: &[ChunkId],
) -> Result<Vec<Result<(pack::FrameHeader, Span)>>> {
    let mut out = Vec::with_capacity(ids.len());
    let mut at = 0usize;
    let short = || remote_err("chunks/read: the server's answer is cut short".into(), None);
    for id in ids {
        let status = *body.get(at).ok_or_else(short)?;
        at += 1;
        match status {
            READ_OK => {
                let rest = body.get(at..).unwrap_or_default();
                let (h, stored) = pack::frame_in(rest).map_err(|e| {
                    remote_err(format!("chunks/read: byte {at} of the answer: {e}"), None)
                })?;
                let from = at + pack::FRAME_HEADER_SIZE as usize;
                at = from + stored.len();
                if h.id == *id {
                    out.push(Ok((h, from..at)));
                } else {
                    out.push(Err(Error::BadChunk {
                        id: *id,
                        where_: "as the server sent it".into(),
                        what: "the server sent another chunk".into(),
                    }));
                }
            }
            READ_FAILED => {
                let len = body.get(at..at + 4).ok_or_else(short)?;
                let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                let msg = body.get(at + 4..at + 4 + len).ok_or_else(short)?;
                at += 4 + len;
                out.push(Err(remote_err(
                    format!("chunk {id}: {}", String::from_utf8_lossy(msg)),
                    None,
                )));
            }
            s => return Err(remote_err(format!("chunks/read: record status {s}"), None)),
        }
    }
    if at != body.len() {
        return Err(remote_err(
            format!(
                "chunks/read: {} bytes past the last record",
                body.len() - at
            ),
            None,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(bytes: &[u8]) -> EncodedChunk {
        chunk::encode(
            &cairn_store::Keys::Clear,
            bytes,
            cairn_store::ChunkKind::Data,
            1,
        )
        .expect("encode")
    }

    #[test]
    fn read_answers_parse_and_bad_ones_are_refused() {
        let (a, b) = (chunk(&[1u8; 300]), chunk(b"second"));
        let mut body = vec![READ_OK];
        pack::encode_frame(&a, &mut body);
        body.push(READ_FAILED);
        body.extend_from_slice(&4u32.to_be_bytes());
        body.extend_from_slice(b"gone");
        let got = parse_read_answer(&body, &[a.id, b.id]).expect("parses");
        assert!(matches!(&got[0], Ok((h, at)) if h.id == a.id && body[at.clone()] == a.bytes[..]));
        assert!(matches!(&got[1], Err(e) if e.to_string().contains("gone")));
        // Another chunk than the one asked for, a cut, trailing bytes, an unknown status.
        let other = parse_read_answer(&body, &[b.id, b.id]).expect("parses");
        assert!(other[0].is_err());
        assert!(parse_read_answer(&body[..body.len() - 1], &[a.id, b.id]).is_err());
        let mut long = body.clone();
        long.push(0);
        assert!(parse_read_answer(&long, &[a.id, b.id]).is_err());
        assert!(parse_read_answer(&[7], &[a.id]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_answer_parses_or_is_refused(body in proptest::collection::vec(proptest::num::u8::ANY, 0..600), n in 0usize..4) {
            let ids = vec![ChunkId([3; 32]); n];
            let _ = parse_read_answer(&body, &ids);
        }

        #[test]
        fn mutated_answers_never_panic(at in 0usize..400, byte in proptest::num::u8::ANY) {
            let a = chunk(&[5u8; 200]);
            let mut body = vec![READ_OK];
            pack::encode_frame(&a, &mut body);
            body.push(READ_FAILED);
            body.extend_from_slice(&3u32.to_be_bytes());
            body.extend_from_slice(b"bad");
            let i = at % body.len();
            body[i] = byte;
            let _ = parse_read_answer(&body, &[a.id, a.id]);
        }
    }
}
