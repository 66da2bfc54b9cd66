//! Reading a restore's windows from a server ahead of the reader ([`cairn_store::ahead`]): the
//! `chunks/read` requests of later batches are in flight while an earlier batch is decoded and
//! written, each answer read into one of a fixed set of buffers reused from request to
//! request. Every chunk is still decoded and checked against its id here, straight from the
//! answer's bytes into its place.

use std::collections::VecDeque;
use std::sync::Arc;

use cairn_store::access::{BatchReader, next_said};
use cairn_store::ahead::Ahead;
use cairn_store::chunk::ChunkId;
use cairn_store::{Error, Result};

use crate::read::{answer_limit, check_into, parse_read_answer};
use crate::{Body, Remote, ids_bytes};

/// Chunks per request: 4 MiB of 256 KiB chunks, few requests for the server to authorize and
/// answer, and enough of them to keep several in flight within a window.
pub(crate) const GROUP: usize = 16;
/// Requests in flight at once.
const IN_FLIGHT: usize = 4;
/// Answers held at once, in flight or waiting to be decoded (at most 4 MiB each with 256 KiB
/// chunks: 32 MiB).
const BUFFERS: usize = 8;
/// Batches said and not yet read before the oldest is read (a restore's windows of 8 MiB).
const AHEAD: usize = 4;

const _: () = assert!(
    GROUP <= cairn_api::MAX_READ,
    "a read request takes at most MAX_READ ids"
);

/// A batch said: its ids and the numbers of its requests, each for `GROUP` ids in turn.
struct Said {
    ids: Vec<ChunkId>,
    requests: Vec<u64>,
}

impl AsRef<[ChunkId]> for Said {
    fn as_ref(&self) -> &[ChunkId] {
        &self.ids
    }
}

/// The [`BatchReader`] of a [`Remote`] (see the module).
pub(crate) struct ReadAhead<'r> {
    remote: &'r Remote,
    ahead: Ahead<Vec<ChunkId>, Result<()>>,
    said: VecDeque<Said>,
}

impl<'r> ReadAhead<'r> {
    pub(crate) fn new(remote: &'r Remote) -> Self {
        let limit = answer_limit(GROUP, remote.info.config.chunk_size);
        let link = Arc::clone(&remote.link);
        Self {
            remote,
            // Whole answers fit without a buffer growing (doubling would hold twice as much).
            ahead: Ahead::new(
                BUFFERS,
                usize::try_from(limit).unwrap_or(0) + 1,
                IN_FLIGHT,
                move |ids: &Vec<ChunkId>, buf: &mut Vec<u8>| {
                    link.call_into(
                        reqwest::Method::POST,
                        "chunks/read",
                        Some(Body::Bytes(ids_bytes(ids))),
                        None,
                        buf,
                        limit,
                    )
                },
            ),
            said: VecDeque::new(),
        }
    }

    /// Answer `seq` once read: its buffer, or the request's failure (which stops the reader).
    fn take(&self, seq: u64) -> Result<Vec<u8>> {
        match self.ahead.take(seq, true)? {
            Some((buf, Ok(()))) => Ok(buf),
            Some((buf, Err(e))) => {
                self.ahead.give_back([buf]);
                self.ahead.stop();
                Err(e)
            }
            None => Err(Error::Internal(format!("request {seq} was never made"))),
        }
    }
}

impl BatchReader for ReadAhead<'_> {
    fn expect(&mut self, ids: Vec<ChunkId>) -> Result<()> {
        let requests = ids
            .chunks(GROUP)
            .map(|group| self.ahead.push(group.to_vec()))
            .collect();
        self.said.push_back(Said { ids, requests });
        Ok(())
    }

    fn ahead(&self) -> usize {
        AHEAD
    }

    fn read_next(&mut self, slots: Vec<&mut [u8]>) -> Result<Vec<Option<Error>>> {
        use rayon::prelude::*;
        let said = next_said(&mut self.said, slots.len())?;
        let keys = self.remote.chunk_keys();
        let mut out = Vec::with_capacity(said.ids.len());
        let mut slots = slots.into_iter();
        for (seq, ids) in said.requests.iter().zip(said.ids.chunks(GROUP)) {
            let body = self.take(*seq)?;
            let records = match parse_read_answer(&body, ids) {
                Ok(r) => r,
                Err(e) => {
                    self.ahead.give_back([body]);
                    self.ahead.stop();
                    return Err(e);
                }
            };
            let group: Vec<_> = records.into_iter().zip(slots.by_ref()).collect();
            out.extend(
                group
                    .into_par_iter()
                    .map(|(record, slot)| match record {
                        Err(e) => Some(e),
                        Ok((h, at)) => check_into(keys, &h.id, &h.stored(&body[at]), slot).err(),
                    })
                    .collect::<Vec<_>>(),
            );
            self.ahead.give_back([body]);
        }
        Ok(out)
    }
}
