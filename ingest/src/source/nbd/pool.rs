//! The connections that read beside the control connection, and reads tried again on a new
//! connection after a broken one.

use crate::{Error, Result};
use cairn_nbd::{Client, Options, Uri};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Further tries of a failed read.
pub(crate) const RETRIES: u32 = 3;

/// A read sent to a connection.
pub(super) struct Job {
    pub(super) seq: u64,
    pub(super) offset: u64,
    pub(super) length: u32,
}

pub(super) type Done = (u64, Result<Vec<u8>>);

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

/// The connections that read beside the control connection, one thread each.
pub(super) struct Pool {
    /// How many connected.
    pub(super) workers: usize,
    /// Reads to make.
    pub(super) jobs: crossbeam_channel::Sender<Job>,
    /// Reads made.
    pub(super) results: crossbeam_channel::Receiver<Done>,
    /// Bytes read by them.
    pub(super) read: Arc<AtomicU64>,
}

impl Pool {
    /// Up to `wanted` connections (`extra`: a short handshake timeout); a server that serves
    /// one client at a time never greets a further one: read with the connections it greeted.
    pub(super) fn connect(uri: &Uri, extra: &Options, plain: &Options, wanted: usize) -> Self {
        let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded::<Job>();
        let (done_tx, done_rx) = crossbeam_channel::unbounded::<Done>();
        let read = Arc::new(AtomicU64::new(0));
        let mut workers = 0;
        for _ in 0..wanted {
            let Ok(client) = Client::connect(uri, extra) else {
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
        Self {
            workers,
            jobs: jobs_tx,
            results: done_rx,
            read,
        }
    }
}

/// Reads `length` bytes at `offset`, trying again on failure (on a new connection after a
/// broken one).
pub(super) fn read_retrying(
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
