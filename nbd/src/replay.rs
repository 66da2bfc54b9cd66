//! A [`Stream`] that plays back bytes a peer would send and records what it is told: the
//! peer in property tests and fuzz targets of both sides of the protocol.

use std::io::{Cursor, Read, Write};
use std::sync::{Arc, Mutex};

use crate::client::Stream;

/// What a writer may send before the peer is taken to have stopped reading (a socket's
/// buffer is not an endless sink either).
const MAX_RECORDED: usize = 64 << 20;

/// Plays back `input`; records what is written (see [`Replay::recorded`]).
#[derive(Debug)]
pub struct Replay {
    input: Cursor<Vec<u8>>,
    output: Arc<Mutex<Vec<u8>>>,
}

impl Replay {
    /// A peer that says `input`, then closes.
    #[must_use]
    pub fn new(input: Vec<u8>) -> Self {
        Self {
            input: Cursor::new(input),
            output: Arc::default(),
        }
    }

    /// What was written to it, shared: it can still be read after the stream is given away.
    #[must_use]
    pub fn recorded(&self) -> Arc<Mutex<Vec<u8>>> {
        Arc::clone(&self.output)
    }
}

impl Read for Replay {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Replay {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = self
            .output
            .lock()
            .map_err(|_| std::io::Error::other("a poisoned lock"))?;
        if out.len() > MAX_RECORDED {
            return Err(std::io::Error::other("the peer stopped reading"));
        }
        out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Stream for Replay {}
