//! Requests made ahead of their reader: a reader says what it will want, in order; a few
//! threads fetch it, each into one of a fixed set of buffers reused from request to request;
//! the reader takes each answer by its number when it needs it and gives the buffer back. A
//! restore's later windows are in flight while an earlier one is decoded and written, no window
//! waits for the slowest request of the one before it, and memory stays bounded whatever the
//! disk's size and the link's latency (no buffer is allocated per request: freed buffers of
//! megabytes on many threads are what a process's allocator keeps resident). A store in a bucket
//! reads its ranges this way, a store behind `cairn serve` its groups of chunks.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use crate::error::{Error, Result};

/// How a request is fetched: its job and a buffer (cleared or overwritten by it) in, what came
/// of it out.
type Fetch<J, R> = dyn Fn(&J, &mut Vec<u8>) -> R + Send + Sync;

/// What the fetching threads and the reader share.
struct State<J, R> {
    /// Requests not yet started, in the order they were said, with their numbers.
    queue: VecDeque<(u64, J)>,
    /// Answers fetched and not yet taken by the reader, by number.
    done: HashMap<u64, (Vec<u8>, R)>,
    /// Buffers not in use.
    free: Vec<Vec<u8>>,
    /// Buffers made so far (in use or free).
    made: usize,
    /// Set when the reader is dropped or has stopped: the threads end.
    stop: bool,
}

struct Shared<J, R> {
    state: Mutex<State<J, R>>,
    changed: Condvar,
    /// Buffers that may be made, and the capacity each is made with.
    buffers: usize,
    capacity: usize,
}

impl<J, R> Shared<J, R> {
    fn lock(&self) -> MutexGuard<'_, State<J, R>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, g: MutexGuard<'a, State<J, R>>) -> MutexGuard<'a, State<J, R>> {
        self.changed.wait(g).unwrap_or_else(PoisonError::into_inner)
    }

    fn stop(&self) {
        let mut st = self.lock();
        st.stop = true;
        st.queue.clear();
        self.changed.notify_all();
    }
}

/// Requests said ahead and fetched by `threads` threads (see the module).
pub struct Ahead<J, R> {
    shared: Arc<Shared<J, R>>,
    fetch: Arc<Fetch<J, R>>,
    threads: usize,
    workers: Vec<JoinHandle<()>>,
    next: u64,
}

impl<J: Send + 'static, R: Send + 'static> Ahead<J, R> {
    /// At most `buffers` answers held at once (fetching or waiting to be taken), each buffer
    /// made with `capacity` bytes; `threads` requests in flight; `fetch` makes one.
    pub fn new(
        buffers: usize,
        capacity: usize,
        threads: usize,
        fetch: impl Fn(&J, &mut Vec<u8>) -> R + Send + Sync + 'static,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    done: HashMap::new(),
                    free: Vec::new(),
                    made: 0,
                    stop: false,
                }),
                changed: Condvar::new(),
                buffers: buffers.max(1),
                capacity,
            }),
            fetch: Arc::new(fetch),
            threads: threads.max(1),
            workers: Vec::new(),
            next: 0,
        }
    }

    /// Says the next request; returns its number. The threads start with the first (a reader
    /// that says nothing starts none).
    pub fn push(&mut self, job: J) -> u64 {
        while self.workers.len() < self.threads {
            let (shared, fetch) = (Arc::clone(&self.shared), Arc::clone(&self.fetch));
            self.workers
                .push(std::thread::spawn(move || fetching(&shared, &*fetch)));
        }
        let seq = self.next;
        self.next += 1;
        self.shared.lock().queue.push_back((seq, job));
        self.shared.changed.notify_all();
        seq
    }

    /// Answer `seq` once fetched: its buffer and what came of it; `None` when it has not
    /// arrived and `wait` is false.
    ///
    /// # Errors
    /// The requests were stopped ([`Ahead::stop`]) before it arrived.
    pub fn take(&self, seq: u64, wait: bool) -> Result<Option<(Vec<u8>, R)>> {
        let mut st = self.shared.lock();
        loop {
            if let Some(got) = st.done.remove(&seq) {
                return Ok(Some(got));
            }
            if st.stop {
                return Err(Error::Internal("the read-ahead has stopped".into()));
            }
            if !wait {
                return Ok(None);
            }
            st = self.shared.wait(st);
        }
    }

    /// Gives buffers back for later requests.
    pub fn give_back(&self, bufs: impl IntoIterator<Item = Vec<u8>>) {
        let mut st = self.shared.lock();
        st.free.extend(bufs);
        self.shared.changed.notify_all();
    }

    /// Stops: no request starts any more, and those not taken are refused.
    pub fn stop(&self) {
        self.shared.stop();
    }
}

/// A fetching thread: the oldest request not yet started, as soon as a buffer is free.
fn fetching<J, R>(shared: &Shared<J, R>, fetch: &Fetch<J, R>) {
    let mut st = shared.lock();
    loop {
        if st.stop {
            return;
        }
        let buf = if st.queue.is_empty() {
            None
        } else if let Some(b) = st.free.pop() {
            Some(b)
        } else if st.made < shared.buffers {
            st.made += 1;
            Some(Vec::with_capacity(shared.capacity))
        } else {
            None
        };
        let Some(mut buf) = buf else {
            st = shared.wait(st);
            continue;
        };
        let Some((seq, job)) = st.queue.pop_front() else {
            st.free.push(buf);
            continue;
        };
        drop(st);
        let got = fetch(&job, &mut buf);
        st = shared.lock();
        st.done.insert(seq, (buf, got));
        shared.changed.notify_all();
    }
}

impl<J, R> Drop for Ahead<J, R> {
    fn drop(&mut self) {
        self.shared.stop();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn answers_come_by_number_within_the_buffers() {
        let live = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (l, p) = (Arc::clone(&live), Arc::clone(&peak));
        let mut ahead = Ahead::new(3, 16, 2, move |job: &u32, buf: &mut Vec<u8>| {
            let now = l.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(u64::from(job % 3)));
            buf.clear();
            buf.extend_from_slice(&job.to_be_bytes());
            l.fetch_sub(1, Ordering::SeqCst);
            *job * 2
        });
        let seqs: Vec<u64> = (0..20u32).map(|j| ahead.push(j)).collect();
        for (j, seq) in seqs.into_iter().enumerate() {
            let (buf, r) = ahead.take(seq, true).expect("taken").expect("arrived");
            assert_eq!(buf, (j as u32).to_be_bytes());
            assert_eq!(r, j as u32 * 2);
            ahead.give_back([buf]);
        }
        assert!(
            peak.load(Ordering::SeqCst) <= 2,
            "more in flight than threads"
        );
        let made = ahead.shared.lock().made;
        assert!(made <= 3, "{made} buffers made, 3 allowed");
        ahead.stop();
        assert!(ahead.take(99, true).is_err(), "a stopped reader refuses");
    }
}
