//! The point reader: a point's chunks served in disk order while a fetcher thread walks the
//! point's tree and decodes windows ahead of the writer. The reference list is never held
//! whole: the fetcher reads it a leaf at a time, and stretches of zeros (a hole of any size is a
//! few shared leaves and nodes) produce no window at all. An NBD export or any other target
//! reads through the same reader.

use cairn_store::{BatchReader, Body, ChunkId, ChunkRef, RecoveryPoint, StoreRead, Walk};

use crate::{Damaged, Error, Result};

/// Which chunks a caller will ask for: those of the blocks marked, `per_block` chunks a block.
#[derive(Debug, Clone)]
pub struct Needed {
    /// One flag per block.
    pub blocks: Vec<bool>,
    /// Chunks per block.
    pub per_block: u64,
}

impl Needed {
    fn wants(&self, chunk: u64) -> bool {
        self.blocks
            .get((chunk / self.per_block) as usize)
            .copied()
            .unwrap_or(false)
    }
}

/// One window of decoded chunks: `chunks` slots of the chunk size from chunk `first`; `present`
/// says which slots hold data (the others read as zeros).
struct Window {
    first: u64,
    chunks: u64,
    data: Vec<u8>,
    present: Vec<bool>,
    damaged: Vec<Damaged>,
}

/// Serves a point's chunks in disk order (see the module). Memory: about four windows, and
/// what the store's batch reader holds ahead (a bucket's ranges in flight, within a budget).
pub struct PointReader {
    chunk_size: u64,
    size: u64,
    rx: crossbeam_channel::Receiver<Result<Window>>,
    recycle: crossbeam_channel::Sender<Vec<u8>>,
    current: Option<Window>,
    /// Within `current`, the next slot [`PointReader::next_data`] looks at.
    cursor: u64,
    ended: bool,
    damaged: Vec<Damaged>,
}

impl PointReader {
    /// Starts reading `point` in the thread scope `scope`. `needed` says which chunks the
    /// caller will ask for (all when `None`); they must be asked for in increasing order. With
    /// `ignore_errors` bad or missing chunks (and stretches under a tree chunk that cannot be
    /// read) read as zeros and are listed in [`Self::damaged`].
    ///
    /// # Errors
    /// A point whose top entries are not a tree covering its disk.
    pub fn start<'scope, 'env>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        store: &'env dyn StoreRead,
        point: &RecoveryPoint,
        needed: Option<Needed>,
        ignore_errors: bool,
    ) -> Result<Self> {
        let cs = u64::from(point.chunk_size);
        let walk = Walk::new(store, point)?;
        let (tx, rx) = crossbeam_channel::bounded(1);
        let (recycle, recycled) = crossbeam_channel::bounded::<Vec<u8>>(3);
        let point_c = point.clone();
        scope.spawn(move || {
            let mut fetcher = Fetcher {
                batches: store.batches(),
                point: point_c,
                cs,
                // Bytes fetched per window (several chunks read in parallel, in pack order).
                per: (store.read_ahead() / cs).max(1),
                needed,
                ignore_errors,
                window: None,
                wanted: Vec::new(),
                damaged: Vec::new(),
                said: std::collections::VecDeque::new(),
                recycled,
                tx,
            };
            let _ = fetcher.run(walk);
        });
        Ok(Self {
            chunk_size: cs,
            size: point.size,
            rx,
            recycle,
            current: None,
            cursor: 0,
            ended: false,
            damaged: Vec::new(),
        })
    }

    /// The ranges read as zeros because they could not be read (only when errors are ignored).
    #[must_use]
    pub fn damaged(&self) -> &[Damaged] {
        &self.damaged
    }

    /// Takes the next window from the fetcher; `false` at the end.
    fn receive(&mut self) -> Result<bool> {
        if self.ended {
            return Ok(false);
        }
        match self.rx.recv() {
            Ok(w) => {
                let mut w = w?;
                self.damaged.append(&mut w.damaged);
                if let Some(old) = self.current.replace(w) {
                    let _ = self.recycle.try_send(old.data);
                }
                self.cursor = 0;
                Ok(true)
            }
            Err(_) => {
                self.ended = true;
                if let Some(old) = self.current.take() {
                    let _ = self.recycle.try_send(old.data);
                }
                Ok(false)
            }
        }
    }

    /// The next run of data chunks in disk order, as far as it goes in one window: its disk
    /// offset and bytes (one slice to write with one call). Zeros are never returned.
    ///
    /// # Errors
    /// A chunk that is missing or bad (unless errors are ignored).
    pub fn next_data(&mut self) -> Result<Option<(u64, &[u8])>> {
        loop {
            let run = self.current.as_ref().and_then(|w| {
                let mut i = self.cursor;
                while i < w.chunks && !w.present[i as usize] {
                    i += 1;
                }
                let mut end = i;
                while end < w.chunks && w.present[end as usize] {
                    end += 1;
                }
                (i < w.chunks).then_some((w.first, i, end))
            });
            if let Some((first, i, end)) = run {
                self.cursor = end;
                let offset = (first + i) * self.chunk_size;
                let stop = ((first + end) * self.chunk_size).min(self.size);
                let at = (i * self.chunk_size) as usize;
                let len = (stop - offset) as usize;
                let data = self
                    .current
                    .as_ref()
                    .map_or(&[][..], |w| &w.data[at..at + len]);
                return Ok(Some((offset, data)));
            }
            if !self.receive()? {
                return Ok(None);
            }
        }
    }

    /// Fills `buf` with the disk's bytes from chunk `index` on (`buf` is a whole number of
    /// chunks, or runs to the disk's end); chunks must be asked for in increasing order.
    ///
    /// # Errors
    /// A chunk that is missing or bad (unless errors are ignored), or asked for out of order.
    pub fn read_chunks(&mut self, index: u64, buf: &mut [u8]) -> Result<()> {
        let cs = self.chunk_size as usize;
        for (k, dst) in buf.chunks_mut(cs).enumerate() {
            let i = index + k as u64;
            loop {
                match &self.current {
                    Some(w) if i < w.first => {
                        dst.fill(0);
                        break;
                    }
                    Some(w) if i < w.first + w.chunks => {
                        let slot = (i - w.first) as usize;
                        if w.present[slot] {
                            let at = slot * cs;
                            dst.copy_from_slice(&w.data[at..at + dst.len()]);
                        } else {
                            dst.fill(0);
                        }
                        break;
                    }
                    _ if self.ended => {
                        dst.fill(0);
                        break;
                    }
                    _ => {
                        self.receive()?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads what is left (so that every damaged range is listed) and returns the damage.
    ///
    /// # Errors
    /// As [`Self::next_data`].
    pub fn finish(mut self) -> Result<Vec<Damaged>> {
        while self.receive()? {}
        Ok(self.damaged)
    }
}

/// A window whose chunks were said to the store's batch reader and not yet read.
struct Said {
    first: u64,
    chunks: u64,
    wanted: Vec<(u64, ChunkId)>,
    damaged: Vec<Damaged>,
}

/// The fetcher thread's state: the window being gathered and what it wants read, and the
/// windows said ahead of the one being read.
struct Fetcher<'env> {
    batches: Box<dyn BatchReader + 'env>,
    point: RecoveryPoint,
    cs: u64,
    per: u64,
    needed: Option<Needed>,
    ignore_errors: bool,
    /// The window being gathered (its index), if any.
    window: Option<u64>,
    wanted: Vec<(u64, ChunkId)>,
    damaged: Vec<Damaged>,
    said: std::collections::VecDeque<Said>,
    recycled: crossbeam_channel::Receiver<Vec<u8>>,
    tx: crossbeam_channel::Sender<Result<Window>>,
}

impl Fetcher<'_> {
    fn run(&mut self, mut walk: Walk<'_>) -> std::result::Result<(), ()> {
        loop {
            let x = match walk.next_extent() {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(e) => {
                    // What was read before the failure goes first.
                    self.flush()?;
                    self.drain()?;
                    return self.fail(e.into());
                }
            };
            match x.body {
                Body::Zero => {}
                Body::Refs(refs) => {
                    for (k, r) in refs.iter().enumerate() {
                        let i = x.first + k as u64;
                        if let ChunkRef::Data(id) = r
                            && self.needed.as_ref().is_none_or(|n| n.wants(i))
                        {
                            self.move_to(i / self.per)?;
                            self.wanted.push((i, *id));
                        }
                    }
                }
                Body::Unreadable(what) => {
                    let offset = x.first * self.cs;
                    if !self.ignore_errors {
                        return self.fail(Error::Refused(format!(
                            "disk offset {offset} of point {}: {what}",
                            self.point.id
                        )));
                    }
                    self.move_to(x.first / self.per)?;
                    self.damaged.push(Damaged {
                        point: self.point.id.clone(),
                        offset,
                        len: (self.point.size - offset).min(x.count * self.cs),
                        what: format!("tree chunk unreadable: {what}"),
                    });
                }
            }
        }
        self.flush()?;
        self.drain()
    }

    /// Reads and sends every window said.
    fn drain(&mut self) -> std::result::Result<(), ()> {
        while !self.said.is_empty() {
            self.send_oldest()?;
        }
        Ok(())
    }

    fn fail(&self, e: Error) -> std::result::Result<(), ()> {
        let _ = self.tx.send(Err(e));
        Err(())
    }

    /// Sends the window being gathered when `w` is another one.
    fn move_to(&mut self, w: u64) -> std::result::Result<(), ()> {
        if self.window != Some(w) {
            self.flush()?;
            self.window = Some(w);
        }
        Ok(())
    }

    /// Says the window being gathered to the batch reader; reads and sends the oldest said
    /// while more are said than the reader wants ahead.
    fn flush(&mut self) -> std::result::Result<(), ()> {
        let Some(w) = self.window.take() else {
            return Ok(());
        };
        let first = w * self.per;
        let said = Said {
            first,
            chunks: self.per.min(self.point.chunk_count() - first),
            wanted: std::mem::take(&mut self.wanted),
            damaged: std::mem::take(&mut self.damaged),
        };
        let ids = said.wanted.iter().map(|(_, id)| *id).collect();
        if let Err(e) = self.batches.expect(ids) {
            return self.fail(e.into());
        }
        self.said.push_back(said);
        while self.said.len() > self.batches.ahead() {
            self.send_oldest()?;
        }
        Ok(())
    }

    /// Reads the oldest window said and sends it to the reader.
    fn send_oldest(&mut self) -> std::result::Result<(), ()> {
        let Some(said) = self.said.pop_front() else {
            return Ok(());
        };
        let mut data = self.recycled.try_recv().unwrap_or_default();
        let len = (said.chunks * self.cs) as usize;
        if data.len() < len {
            data.resize(len, 0);
        }
        let mut present = vec![false; said.chunks as usize];
        for (i, _) in &said.wanted {
            present[(i - said.first) as usize] = true;
        }
        let mut damaged = said.damaged;
        let msg = fetch(
            self.batches.as_mut(),
            &self.point,
            said.first,
            &said.wanted,
            &mut data,
            self.ignore_errors,
        )
        .map(|mut more| {
            damaged.append(&mut more);
            Window {
                first: said.first,
                chunks: said.chunks,
                data,
                present,
                damaged,
            }
        });
        let failed = msg.is_err();
        if self.tx.send(msg).is_err() || failed {
            return Err(());
        }
        Ok(())
    }
}

/// Reads `wanted` (chunk index and id, all in the window from `first`, the oldest batch said to
/// `batches`) into `data`, one slot of the chunk size each, each decoded and checked against
/// its id. Returns the damaged ranges (zeros) when errors are ignored.
fn fetch(
    batches: &mut dyn BatchReader,
    point: &RecoveryPoint,
    first: u64,
    wanted: &[(u64, ChunkId)],
    data: &mut [u8],
    ignore_errors: bool,
) -> Result<Vec<Damaged>> {
    let cs = point.chunk_size as usize;
    let mut slots: Vec<Option<&mut [u8]>> = data.chunks_mut(cs).map(Some).collect();
    let mut taken = Vec::with_capacity(wanted.len());
    for (i, _) in wanted {
        // Each chunk fills its place exactly: the chunk size, what is left of the disk for the
        // last one (a shorter chunk is damage, never stale bytes restored).
        let place = (point.size.saturating_sub(i * cs as u64)).min(cs as u64) as usize;
        match slots.get_mut((i - first) as usize).and_then(Option::take) {
            Some(slot) if slot.len() >= place => taken.push(&mut slot[..place]),
            _ => {
                return Err(Error::Refused(format!(
                    "chunk {i} is outside the window from chunk {first}"
                )));
            }
        }
    }
    let results = batches.read_next(taken)?;
    let mut failed: Vec<(u64, cairn_store::Error)> = Vec::new();
    for ((i, _), r) in wanted.iter().zip(results) {
        if let Some(e) = r {
            let at = ((i - first) as usize) * cs;
            if let Some(s) = data.get_mut(at..(at + cs).min(data.len())) {
                s.fill(0);
            }
            failed.push((*i, e));
        }
    }
    failed.sort_by_key(|(i, _)| *i);
    let mut damaged = Vec::new();
    for (i, source) in failed {
        let offset = i * cs as u64;
        if !ignore_errors {
            return Err(Error::Chunk {
                point: point.id.clone(),
                offset,
                source,
            });
        }
        damaged.push(Damaged {
            point: point.id.clone(),
            offset,
            len: (point.size - offset).min(cs as u64),
            what: source.to_string(),
        });
    }
    Ok(damaged)
}

/// Which VHD blocks of `point` hold data (`per_block` chunks a block), and with `base` (a point
/// of the same size and chunk size) which differ from it; read a leaf at a time, leaves and
/// nodes the two points share skipped unread. A stretch under an unreadable tree chunk of
/// `point` counts as zeros when errors are ignored (the reader lists it), and is an error
/// otherwise.
///
/// # Errors
/// A tree chunk that cannot be read (unless errors are ignored).
pub(crate) fn blocks_with_data(
    store: &dyn StoreRead,
    point: &RecoveryPoint,
    base: Option<&RecoveryPoint>,
    per_block: u64,
    ignore_errors: bool,
) -> Result<Vec<bool>> {
    let blocks = point.chunk_count().div_ceil(per_block) as usize;
    let mut out = vec![false; blocks];
    let mut mark = |from: u64, to: u64| {
        for b in from / per_block..to.div_ceil(per_block) {
            out[b as usize] = true;
        }
    };
    if let Some(b) = base {
        cairn_store::tree::differences(store, b, point, ignore_errors, &mut mark)?;
        return Ok(out);
    }
    let mut walk = Walk::new(store, point)?;
    while let Some(x) = walk.next_extent()? {
        match x.body {
            Body::Refs(r) => {
                for (k, c) in r.iter().enumerate() {
                    if *c != ChunkRef::Zero {
                        let i = x.first + k as u64;
                        mark(i, i + 1);
                    }
                }
            }
            Body::Zero => {}
            Body::Unreadable(_) if ignore_errors => {}
            Body::Unreadable(what) => {
                return Err(Error::Refused(format!(
                    "disk offset {} of point {}: {what}",
                    x.first * u64::from(point.chunk_size),
                    point.id
                )));
            }
        }
    }
    Ok(out)
}
