//! Reading a restore's windows from a server ahead of the reader: the `chunks/read` requests
//! of later batches are in flight while an earlier batch is decoded and written, each answer
//! read into one of a fixed set of buffers reused from request to request. No window waits for
//! the slowest request of the one before it, and memory stays bounded (the buffers, whatever
//! the disk's size or the link's latency). Every chunk is still decoded and checked against its
//! id here, straight from the answer's bytes into its place.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use cairn_store::access::{BatchReader, next_said};
use cairn_store::chunk::{self, ChunkId};
use cairn_store::{Error, Result};

use crate::read::{answer_limit, parse_read_answer};
use crate::{Body, Link, Remote, ids_bytes};

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

/// A request to make: its number and the ids it asks for.
struct Fetch {
    seq: u64,
    ids: Vec<ChunkId>,
}

/// What the requesting threads and the reader share.
#[derive(Default)]
struct State {
    /// Requests not yet started, in the order they were said.
    queue: VecDeque<Fetch>,
    /// Answers read and not yet taken by the reader, by number: the buffer and whether the
    /// request succeeded.
    done: HashMap<u64, (Vec<u8>, Result<()>)>,
    /// Buffers not in use.
    free: Vec<Vec<u8>>,
    /// Buffers made so far (in use or free).
    made: usize,
    /// Set when the reader is dropped or has failed: the threads end.
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, g: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(g).unwrap_or_else(PoisonError::into_inner)
    }

    fn stop(&self) {
        let mut st = self.lock();
        st.stop = true;
        st.queue.clear();
        self.changed.notify_all();
    }
}

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
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    said: VecDeque<Said>,
    next: u64,
}

impl<'r> ReadAhead<'r> {
    pub(crate) fn new(remote: &'r Remote) -> Self {
        Self {
            remote,
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
            }),
            workers: Vec::new(),
            said: VecDeque::new(),
            next: 0,
        }
    }

    /// Starts the requesting threads (on the first request: a point of zeros starts none).
    fn start_workers(&mut self) {
        let limit = answer_limit(GROUP, self.remote.info.config.chunk_size);
        while self.workers.len() < IN_FLIGHT {
            let shared = Arc::clone(&self.shared);
            let link = Arc::clone(&self.remote.link);
            self.workers.push(std::thread::spawn(move || {
                request(&shared, &link, limit);
            }));
        }
    }

    /// Answer `seq` once read: its buffer, or the request's failure (which stops the reader).
    fn take(&self, seq: u64) -> Result<Vec<u8>> {
        let mut st = self.shared.lock();
        loop {
            if let Some((buf, got)) = st.done.remove(&seq) {
                drop(st);
                return match got {
                    Ok(()) => Ok(buf),
                    Err(e) => {
                        self.give_back(buf);
                        self.shared.stop();
                        Err(e)
                    }
                };
            }
            if st.stop {
                return Err(Error::Internal(
                    "the server's read-ahead has stopped".into(),
                ));
            }
            st = self.shared.wait(st);
        }
    }

    fn give_back(&self, buf: Vec<u8>) {
        let mut st = self.shared.lock();
        st.free.push(buf);
        self.shared.changed.notify_all();
    }
}

/// A requesting thread: the oldest request not yet started, as soon as a buffer is free.
fn request(shared: &Shared, link: &Link, limit: u64) {
    let mut st = shared.lock();
    loop {
        if st.stop {
            return;
        }
        let buf = if st.queue.is_empty() {
            None
        } else if let Some(b) = st.free.pop() {
            Some(b)
        } else if st.made < BUFFERS {
            st.made += 1;
            // Whole answers fit without the buffer growing (doubling would hold twice as much).
            Some(Vec::with_capacity(usize::try_from(limit).unwrap_or(0) + 1))
        } else {
            None
        };
        let Some(mut buf) = buf else {
            st = shared.wait(st);
            continue;
        };
        let Some(f) = st.queue.pop_front() else {
            st.free.push(buf);
            continue;
        };
        drop(st);
        let got = link.call_into(
            reqwest::Method::POST,
            "chunks/read",
            Some(Body::Bytes(ids_bytes(&f.ids))),
            None,
            &mut buf,
            limit,
        );
        st = shared.lock();
        st.done.insert(f.seq, (buf, got));
        shared.changed.notify_all();
    }
}

impl BatchReader for ReadAhead<'_> {
    fn expect(&mut self, ids: Vec<ChunkId>) -> Result<()> {
        let mut requests = Vec::new();
        if !ids.is_empty() {
            self.start_workers();
            let mut st = self.shared.lock();
            for group in ids.chunks(GROUP) {
                let seq = self.next;
                self.next += 1;
                st.queue.push_back(Fetch {
                    seq,
                    ids: group.to_vec(),
                });
                requests.push(seq);
            }
            self.shared.changed.notify_all();
        }
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
                    self.give_back(body);
                    self.shared.stop();
                    return Err(e);
                }
            };
            let group: Vec<_> = records.into_iter().zip(slots.by_ref()).collect();
            out.extend(
                group
                    .into_par_iter()
                    .map(|(record, slot)| match record {
                        Err(e) => Some(e),
                        Ok((h, at)) => chunk::decode_into(keys, &h.stored(&body[at]), slot)
                            .err()
                            .map(|what| Error::BadChunk {
                                id: h.id,
                                where_: "as the server sent it".into(),
                                what: what.to_string(),
                            }),
                    })
                    .collect::<Vec<_>>(),
            );
            self.give_back(body);
        }
        Ok(out)
    }
}

impl Drop for ReadAhead<'_> {
    fn drop(&mut self) {
        self.shared.stop();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
