//! A disk read from an NBD server (`nbd://`, `nbd+unix://`): qemu-nbd, nbdkit, XAPI's or
//! qemu's built-in NBD server.
//!
//! - **Holes.** Where the server selects `base:allocation`, stretches it reports as
//!   `NBD_STATE_ZERO` are zeros and never read. A stretch reported only as `NBD_STATE_HOLE` is
//!   read: the protocol says its content is undefined, not zero.
//! - **Changed blocks.** With a parent point, only the changed stretches are read; the rest is
//!   the parent's, as for a differencing VHD. What changed comes from the server's
//!   `qemu:dirty-bitmap:NAME` context (qemu, Proxmox; flag 1 = dirty), or from a file
//!   ([`Changes::from_file`]): XCP-ng's `VDI.list_changed_blocks` bitmap, or `offset length`
//!   lines.
//! - **Connections.** N in all: with N > 1, reads go to N - 1 connections at once beside the
//!   one that asks for block status (with one, that one reads too); each read is at most
//!   [`READ_BYTES`] (or the server's maximum payload), at most four per connection in flight,
//!   so memory stays bounded whatever the disk's size. A server that does not say its
//!   connections are coherent (`NBD_FLAG_CAN_MULTI_CONN`) gets one connection, and a server
//!   that does not greet a further connection within 2 s (qemu-nbd serves one client unless
//!   `--shared`) gets the ones it greeted; with none, the first connection reads too.
//! - **Faults.** A read that fails is tried again, up to [`RETRIES`] more times, on a new
//!   connection after a broken one; then the backup fails naming the offset and the server's
//!   error, and nothing is committed.
//!
//! What changed is [`changes`], block status windows [`status`], the reading connections
//! [`pool`]; this module plans the reads.

mod changes;
mod pool;
mod status;

use super::{ChunkSource, Piece, PieceOrigin, run_before};
use crate::{Error, Result};
use cairn_nbd::{Client, Options, Uri, proto};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use changes::{CBT_BLOCK, Changes};
use pool::{Done, Job, Pool, options, read_retrying};
pub(crate) use status::ChangeSource;
use status::Status;

/// The largest read sent to the server.
pub(crate) const READ_BYTES: u64 = 2 << 20;

/// Reads sent ahead to each connection (taken in order, so a slow one does not stall the rest).
const IN_FLIGHT_PER_CONNECTION: usize = 4;

/// What the source yields next, in disk order.
enum Planned {
    Run(PieceOrigin, u64, u64),
    /// A read sent to the connections, by its sequence number.
    Read(u64),
    /// A read the control connection makes when it is taken (offset, length).
    Inline(u64, u32),
}

/// A disk read from an NBD export (see the module).
pub(crate) struct NbdSource {
    uri: Uri,
    shown: String,
    options: Options,
    control: Client,
    size: u64,
    chunk: u64,
    next: u64,
    allocation: Option<Status>,
    changes: Option<ChangeSource>,
    read_max: u64,
    planned: VecDeque<Planned>,
    next_seq: u64,
    in_flight: usize,
    max_in_flight: usize,
    jobs: Option<crossbeam_channel::Sender<Job>>,
    results: crossbeam_channel::Receiver<Done>,
    arrived: BTreeMap<u64, Result<Vec<u8>>>,
    /// Chunks of the read being handed out.
    current: VecDeque<Vec<u8>>,
    read: Arc<AtomicU64>,
}

impl NbdSource {
    /// Connects to `uri` with up to `connections` connections. `changes` (with a parent point)
    /// says what to read; without, the whole disk is read (holes skipped).
    pub(crate) fn open(
        uri: Uri,
        shown: String,
        connections: usize,
        chunk: u32,
        changes: Option<ChangeSource>,
        tls: Option<Arc<cairn_nbd::tls::ClientConfig>>,
    ) -> Result<Self> {
        let mut contexts = vec![proto::CONTEXT_BASE_ALLOCATION.to_owned()];
        if let Some(ChangeSource::Context(s)) = &changes {
            contexts.push(s.context.clone());
        }
        let first = options(contexts, tls.clone());
        let control = Client::connect(&uri, &first).map_err(|e| Error::Nbd {
            uri: shown.clone(),
            offset: 0,
            what: e.to_string(),
        })?;
        let size = control.size();
        let selected: Vec<String> = control.contexts().iter().map(|s| (*s).to_owned()).collect();
        let changes = changes
            .map(|c| c.for_export(&selected, size, &shown))
            .transpose()?;
        let allocation = selected
            .iter()
            .any(|c| c == proto::CONTEXT_BASE_ALLOCATION)
            .then(|| Status::new(proto::CONTEXT_BASE_ALLOCATION, size));
        let read_max = READ_BYTES
            .min(u64::from(control.info().block.maximum))
            .max(u64::from(chunk))
            / u64::from(chunk)
            * u64::from(chunk);
        let plain = options(Vec::new(), tls);
        // N connections in all: with one, the control connection reads too; with more, N - 1
        // read beside it, when the server says they are coherent.
        let wanted = if control.info().multi_conn() && connections > 1 {
            connections - 1
        } else {
            0
        };
        let extra = Options {
            handshake_timeout: Duration::from_secs(2),
            ..plain.clone()
        };
        let pool = Pool::connect(&uri, &extra, &plain, wanted);
        Ok(Self {
            shown,
            options: plain,
            control,
            size,
            chunk: u64::from(chunk),
            next: 0,
            allocation,
            changes,
            read_max,
            planned: VecDeque::new(),
            next_seq: 0,
            in_flight: 0,
            max_in_flight: IN_FLIGHT_PER_CONNECTION * pool.workers.max(1),
            jobs: (pool.workers > 0).then_some(pool.jobs),
            results: pool.results,
            arrived: BTreeMap::new(),
            current: VecDeque::new(),
            read: pool.read,
            uri,
        })
    }

    /// The export's size.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// The end of the zero stretch starting at `at` (`at` when it holds data).
    fn zero_until(&mut self, at: u64) -> Result<u64> {
        let Some(a) = self.allocation.as_mut() else {
            return Ok(at);
        };
        let (flags, end) = a.run_at(&mut self.control, at, &self.shown)?;
        Ok(if flags & proto::STATE_ZERO != 0 {
            end
        } else {
            at
        })
    }

    /// The first changed byte at or after `at` (`u64::MAX` without a parent: everything is
    /// read).
    fn changed_from(&mut self, at: u64) -> Result<u64> {
        match self.changes.as_mut() {
            None => Ok(at),
            Some(ChangeSource::Known(k)) => Ok(k.next_changed(at)),
            Some(ChangeSource::Context(s)) => {
                let (flags, end) = s.run_at(&mut self.control, at, &self.shown)?;
                Ok(if flags & proto::STATE_DIRTY != 0 {
                    at
                } else {
                    end
                })
            }
        }
    }

    /// Whether chunk `i` must be read.
    fn must_read(&mut self, i: u64) -> Result<bool> {
        let at = i * self.chunk;
        let end = (at + self.chunk).min(self.size);
        if self.changes.is_some() && self.changed_from(at)? >= end {
            return Ok(false);
        }
        Ok(self.zero_until(at)? < end)
    }

    /// Plans the next stretch: a run, or a read of consecutive chunks.
    fn plan(&mut self) -> Result<bool> {
        if self.next * self.chunk >= self.size {
            return Ok(false);
        }
        let at = self.next * self.chunk;
        if self.changes.is_some() {
            let changed = self.changed_from(at)?;
            let (n, bytes) = run_before(at, changed, self.size, self.chunk);
            if n > 0 {
                self.next += n;
                self.planned
                    .push_back(Planned::Run(PieceOrigin::Parent, n, bytes));
                return Ok(true);
            }
        }
        let zero = self.zero_until(at)?;
        if zero > at {
            let (n, bytes) = run_before(at, zero, self.size, self.chunk);
            if n > 0 {
                self.next += n;
                self.planned
                    .push_back(Planned::Run(PieceOrigin::Unallocated, n, bytes));
                return Ok(true);
            }
        }
        let mut n = 1;
        let most = self.read_max / self.chunk;
        while n < most
            && (self.next + n) * self.chunk < self.size
            && self.must_read(self.next + n)?
        {
            n += 1;
        }
        let offset = at;
        let length = (n * self.chunk).min(self.size - at) as u32;
        self.next += n;
        let seq = self.next_seq;
        self.next_seq += 1;
        match &self.jobs {
            Some(jobs) => {
                jobs.send(Job {
                    seq,
                    offset,
                    length,
                })
                .map_err(|_| Error::Nbd {
                    uri: self.shown.clone(),
                    offset,
                    what: "every connection to the server ended".into(),
                })?;
                self.in_flight += 1;
            }
            None => {
                self.planned.push_back(Planned::Inline(offset, length));
                return Ok(true);
            }
        }
        self.planned.push_back(Planned::Read(seq));
        Ok(true)
    }

    /// A read on the control connection (when no other connection could be made).
    fn read_inline(&mut self, offset: u64, length: u32) -> Result<Vec<u8>> {
        match self.control.read_vec(offset, length) {
            Ok(buf) => {
                self.read.fetch_add(u64::from(length), Ordering::Relaxed);
                Ok(buf)
            }
            Err(first) => {
                // Tried again on fresh connections (the control connection may be broken).
                let mut c = None;
                let r = read_retrying(&mut c, &self.uri, &self.options, offset, length).map_err(
                    |what| Error::Nbd {
                        uri: self.shown.clone(),
                        offset,
                        what: format!("{first}; then {what}"),
                    },
                )?;
                self.read.fetch_add(u64::from(length), Ordering::Relaxed);
                Ok(r)
            }
        }
    }

    /// Waits for the read `seq`. A read counts as in flight until it is taken here (reads that
    /// arrive out of order wait in `arrived`), so the bytes held stay bounded.
    fn take(&mut self, seq: u64) -> Result<Vec<u8>> {
        loop {
            if let Some(r) = self.arrived.remove(&seq) {
                if self.jobs.is_some() {
                    self.in_flight = self.in_flight.saturating_sub(1);
                }
                return r;
            }
            let (s, r) = self.results.recv().map_err(|_| Error::Nbd {
                uri: self.shown.clone(),
                offset: 0,
                what: "every connection to the server ended".into(),
            })?;
            self.arrived.insert(s, r);
        }
    }
}

impl NbdSource {
    /// The first chunk of a read; the others wait in `current`. Cut from the back, so the
    /// read's buffer is never held twice.
    fn hand_out(&mut self, mut data: Vec<u8>) -> Piece {
        let cs = self.chunk as usize;
        let mut pieces = VecDeque::with_capacity(data.len().div_ceil(cs));
        while data.len() > cs {
            let at = (data.len() - 1) / cs * cs;
            pieces.push_front(data.split_off(at));
        }
        data.shrink_to_fit();
        self.current = pieces;
        Piece::Data(data)
    }
}

impl ChunkSource for NbdSource {
    fn next_piece(&mut self) -> Result<Option<Piece>> {
        if let Some(d) = self.current.pop_front() {
            return Ok(Some(Piece::Data(d)));
        }
        // Keep the connections busy: plan ahead while reads can be sent.
        while self.in_flight < self.max_in_flight && self.planned.len() < 256 && self.plan()? {}
        if self.planned.is_empty() && !self.plan()? {
            return Ok(None);
        }
        match self.planned.pop_front() {
            None => Ok(None),
            Some(Planned::Run(origin, chunks, bytes)) => Ok(Some(Piece::Run {
                origin,
                chunks,
                bytes,
            })),
            Some(Planned::Inline(offset, length)) => {
                let data = self.read_inline(offset, length)?;
                Ok(Some(self.hand_out(data)))
            }
            Some(Planned::Read(seq)) => {
                let data = self.take(seq)?;
                Ok(Some(self.hand_out(data)))
            }
        }
    }

    fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }
}
