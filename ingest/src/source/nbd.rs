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

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cairn_nbd::{Client, Options, Uri, proto};

use super::{ChunkSource, Piece, PieceOrigin, run_before};
use crate::{Error, Result};

/// The largest read sent to the server.
pub(crate) const READ_BYTES: u64 = 2 << 20;
/// Reads sent ahead to each connection (taken in order, so a slow one does not stall the rest).
const IN_FLIGHT_PER_CONNECTION: usize = 4;
/// Further tries of a failed read.
pub(crate) const RETRIES: u32 = 3;
/// Bytes of disk asked about per block status request.
const STATUS_WINDOW: u64 = 1 << 31;
/// The granularity of XCP-ng's changed block bitmaps.
pub const CBT_BLOCK: u64 = 64 << 10;

/// What changed since the parent point, known without the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// One bit per `granularity` bytes, most significant bit first (bit 7 of byte 0 is the
    /// first block), as XCP-ng's `VDI.list_changed_blocks` returns it (base64) and as
    /// xapi-project's own reader of it takes it (a `bitstring.BitArray` of the bytes).
    Bitmap {
        /// The bits.
        bits: Vec<u8>,
        /// Bytes per bit.
        granularity: u64,
    },
    /// Changed byte ranges, sorted and merged: `(start, end)`.
    Ranges(Vec<(u64, u64)>),
}

impl Changes {
    /// Reads a changed-blocks file: the base64 text of `VDI.list_changed_blocks` (one bit per
    /// 64 KiB), or lines of `OFFSET LENGTH` in bytes (`#` starts a comment).
    ///
    /// # Errors
    /// A file that is neither, naming the line or the character.
    pub fn parse(text: &str, shown: &str) -> Result<Self> {
        let bad = |what: String| Error::Refused(format!("{shown}: {what}"));
        let looks_like_lines = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .any(|l| l.split_whitespace().count() == 2);
        if looks_like_lines {
            let mut ranges = Vec::new();
            for (n, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() {
                    continue;
                }
                let mut f = line.split_whitespace();
                let (Some(a), Some(b), None) = (f.next(), f.next(), f.next()) else {
                    return Err(bad(format!("line {}: expected OFFSET LENGTH", n + 1)));
                };
                let num = |s: &str| {
                    s.parse::<u64>()
                        .map_err(|_| bad(format!("line {}: {s:?} is not a number of bytes", n + 1)))
                };
                let (off, len) = (num(a)?, num(b)?);
                let end = off
                    .checked_add(len)
                    .ok_or_else(|| bad(format!("line {}: the range overflows", n + 1)))?;
                if len > 0 {
                    ranges.push((off, end));
                }
            }
            ranges.sort_unstable();
            let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
            for (a, b) in ranges {
                match merged.last_mut() {
                    Some(last) if a <= last.1 => last.1 = last.1.max(b),
                    _ => merged.push((a, b)),
                }
            }
            return Ok(Self::Ranges(merged));
        }
        let bits = decode_base64(text).map_err(bad)?;
        Ok(Self::Bitmap {
            bits,
            granularity: CBT_BLOCK,
        })
    }

    /// Checks that the changes describe a disk of `size` bytes.
    ///
    /// # Errors
    /// A bitmap of another disk's size, ranges past the end.
    pub fn check_size(&self, size: u64, shown: &str) -> Result<()> {
        match self {
            Self::Bitmap { bits, granularity } => {
                let blocks = size.div_ceil(*granularity);
                if bits.len() as u64 != blocks.div_ceil(8) {
                    return Err(Error::Refused(format!(
                        "{shown}: the changed-block bitmap has {} bytes ({} blocks of {} KiB), \
                         but the disk of {size} bytes needs {} bytes: the bitmap of another disk?",
                        bits.len(),
                        bits.len() * 8,
                        granularity >> 10,
                        blocks.div_ceil(8)
                    )));
                }
            }
            Self::Ranges(r) => {
                if let Some(&(a, b)) = r.last()
                    && b > size
                {
                    return Err(Error::Refused(format!(
                        "{shown}: the changed range {a}..{b} passes the disk's end ({size} bytes)"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The first byte at or after `at` that changed (`u64::MAX` when none did).
    fn next_changed(&self, at: u64) -> u64 {
        match self {
            Self::Ranges(r) => {
                let i = r.partition_point(|&(_, end)| end <= at);
                r.get(i).map_or(u64::MAX, |&(a, _)| a.max(at))
            }
            Self::Bitmap { bits, granularity } => {
                let mut block = at / granularity;
                loop {
                    let byte = (block / 8) as usize;
                    let Some(&b) = bits.get(byte) else {
                        return u64::MAX;
                    };
                    if b == 0 {
                        block = (block / 8 + 1) * 8;
                        continue;
                    }
                    if b & (0x80 >> (block % 8)) != 0 {
                        return (block * granularity).max(at);
                    }
                    block += 1;
                }
            }
        }
    }
}

/// Decodes standard base64 (whitespace ignored, `=` padding optional).
fn decode_base64(text: &str) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc = 0u32;
    let mut n = 0;
    let mut ended = false;
    for (i, c) in text.char_indices() {
        let v = match c {
            'A'..='Z' => c as u32 - 'A' as u32,
            'a'..='z' => c as u32 - 'a' as u32 + 26,
            '0'..='9' => c as u32 - '0' as u32 + 52,
            '+' => 62,
            '/' => 63,
            '=' => {
                ended = true;
                continue;
            }
            c if c.is_whitespace() => continue,
            other => {
                return Err(format!(
                    "character {other:?} at {i} is not base64 (nor is the file OFFSET LENGTH lines)"
                ));
            }
        };
        if ended {
            return Err(format!("base64 data after its padding, at {i}"));
        }
        acc = acc << 6 | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((acc >> n) as u8);
            acc &= (1 << n) - 1;
        }
    }
    Ok(out)
}

/// A metadata context read forward from the server, a window at a time.
pub(crate) struct Status {
    context: String,
    extents: VecDeque<(u64, u64, u32)>,
    fetched_to: u64,
    size: u64,
}

impl Status {
    fn new(context: &str, size: u64) -> Self {
        Self {
            context: context.to_owned(),
            extents: VecDeque::new(),
            fetched_to: 0,
            size,
        }
    }

    fn fetch(&mut self, client: &mut Client, shown: &str) -> Result<()> {
        let at = self.fetched_to;
        let len = STATUS_WINDOW.min(self.size - at) as u32;
        let replies = client.block_status(at, len).map_err(|e| Error::Nbd {
            uri: shown.to_owned(),
            offset: at,
            what: format!("asking the server for {} extents: {e}", self.context),
        })?;
        let extents = replies
            .into_iter()
            .find(|(name, _)| *name == self.context)
            .map(|(_, e)| e)
            .unwrap_or_default();
        let mut pos = at;
        for e in extents {
            let end = (pos + u64::from(e.length)).min(self.size);
            if end > pos {
                self.extents.push_back((pos, end, e.flags));
            }
            pos = end;
        }
        if pos == at {
            return Err(Error::Nbd {
                uri: shown.to_owned(),
                offset: at,
                what: format!("the server gave no {} extent", self.context),
            });
        }
        self.fetched_to = pos;
        Ok(())
    }

    /// The flags at byte `at` and where the stretch of those flags ends (merging neighbours).
    /// `at` never goes back between calls.
    fn run_at(&mut self, client: &mut Client, at: u64, shown: &str) -> Result<(u32, u64)> {
        while self.extents.front().is_some_and(|e| e.1 <= at) {
            self.extents.pop_front();
        }
        while self.fetched_to <= at && self.fetched_to < self.size {
            self.fetch(client, shown)?;
            while self.extents.front().is_some_and(|e| e.1 <= at) {
                self.extents.pop_front();
            }
        }
        let Some(&(_, mut end, flags)) = self.extents.front() else {
            return Ok((0, self.size));
        };
        let mut i = 1;
        loop {
            if i == self.extents.len() {
                if self.fetched_to >= self.size || end < self.fetched_to {
                    break;
                }
                self.fetch(client, shown)?;
                continue;
            }
            let (_, e, f) = self.extents[i];
            if f != flags {
                break;
            }
            end = e;
            i += 1;
        }
        Ok((flags, end))
    }
}

/// Where the changes since the parent come from.
pub(crate) enum ChangeSource {
    /// The server's dirty bitmap context.
    Context(Box<Status>),
    /// A file.
    Known(Changes),
}

impl ChangeSource {
    /// The dirty bitmap `name` of the server.
    pub(crate) fn bitmap(name: &str, size: u64) -> Self {
        Self::Context(Box::new(Status::new(
            &format!("{}{name}", proto::CONTEXT_DIRTY_BITMAP_PREFIX),
            size,
        )))
    }
}

/// A read sent to a connection.
struct Job {
    seq: u64,
    offset: u64,
    length: u32,
}

type Done = (u64, Result<Vec<u8>>);

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

/// The options every connection of a backup uses: contexts asked only on the first.
pub(crate) fn options(
    contexts: Vec<String>,
    tls: Option<Arc<cairn_nbd::tls::ClientConfig>>,
) -> Options {
    Options {
        contexts,
        timeout: Duration::from_secs(60),
        handshake_timeout: Duration::from_secs(5),
        tls,
    }
}

/// Reads `length` bytes at `offset`, trying again on failure (on a new connection after a
/// broken one).
fn read_retrying(
    client: &mut Option<Client>,
    uri: &Uri,
    options: &Options,
    offset: u64,
    length: u32,
) -> std::result::Result<Vec<u8>, String> {
    let mut last = String::new();
    for attempt in 0..=RETRIES {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(200 << attempt));
        }
        if client.is_none() {
            match Client::connect(uri, options) {
                Ok(c) => *client = Some(c),
                Err(e) => {
                    last = format!("reconnecting: {e}");
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        match c.read_vec(offset, length) {
            Ok(buf) => return Ok(buf),
            Err(e) => {
                if e.is_fatal() {
                    *client = None;
                }
                last = e.to_string();
            }
        }
    }
    Err(format!(
        "reading {length} bytes failed {} times: {last}",
        RETRIES + 1
    ))
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
        if let Some(ChangeSource::Context(s)) = &changes
            && !selected.contains(&s.context)
        {
            return Err(Error::Refused(format!(
                "{shown}: the server does not offer {} (is the bitmap there, and exported? \
                 `qemu-nbd -B NAME` exports one); nothing was stored",
                s.context
            )));
        }
        let changes = changes.map(|c| match c {
            ChangeSource::Context(mut s) => {
                s.size = size;
                ChangeSource::Context(s)
            }
            known => known,
        });
        if let Some(ChangeSource::Known(k)) = &changes {
            k.check_size(size, &shown)?;
        }
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
        let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded::<Job>();
        let (done_tx, done_rx) = crossbeam_channel::unbounded::<Done>();
        let read = Arc::new(AtomicU64::new(0));
        let mut workers = 0;
        for _ in 0..wanted {
            // A server that serves one client at a time never greets this one: read with
            // the connections it did greet.
            let Ok(client) = Client::connect(&uri, &extra) else {
                break;
            };
            workers += 1;
            let (jobs, done, uri, opts, read) = (
                jobs_rx.clone(),
                done_tx.clone(),
                uri.clone(),
                plain.clone(),
                Arc::clone(&read),
            );
            std::thread::spawn(move || {
                let mut client = Some(client);
                for job in jobs {
                    let r = read_retrying(&mut client, &uri, &opts, job.offset, job.length);
                    if r.is_ok() {
                        read.fetch_add(u64::from(job.length), Ordering::Relaxed);
                    }
                    let r = r.map_err(|what| Error::Nbd {
                        uri: uri.to_string(),
                        offset: job.offset,
                        what,
                    });
                    if done.send((job.seq, r)).is_err() {
                        break;
                    }
                }
            });
        }
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
            max_in_flight: IN_FLIGHT_PER_CONNECTION * workers.max(1),
            jobs: (workers > 0).then_some(jobs_tx),
            results: done_rx,
            arrived: BTreeMap::new(),
            current: VecDeque::new(),
            read,
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
