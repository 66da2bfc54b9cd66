//! A [`Stream`] that plays back bytes a peer would send and records what it is told, and a
//! zero disk to serve: the peer and the device in property tests and fuzz targets of both
//! sides of the protocol.

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

/// A writable disk of `size` bytes that reads as zeros and forgets what is written: the device
/// behind a [`ZeroExport`].
#[derive(Debug, Clone, Copy)]
pub struct ZeroDisk(pub u64);

impl crate::server::Device for ZeroDisk {
    fn size(&self) -> u64 {
        self.0
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read(&mut self, _: u64, buf: &mut [u8]) -> Result<(), crate::server::DeviceError> {
        buf.fill(0);
        Ok(())
    }
    fn allocation(
        &mut self,
        _: u64,
        length: u32,
    ) -> Result<Vec<crate::Extent>, crate::server::DeviceError> {
        Ok(vec![crate::Extent {
            length,
            flags: crate::proto::STATE_ZERO,
        }])
    }
    fn write(&mut self, _: u64, _: &[u8]) -> Result<(), crate::server::DeviceError> {
        Ok(())
    }
    fn write_zeroes(&mut self, _: u64, _: u32) -> Result<(), crate::server::DeviceError> {
        Ok(())
    }
}

/// One export, named `d`, of a 1 MiB [`ZeroDisk`]: what a server under test offers.
#[derive(Debug, Clone, Copy, Default)]
pub struct ZeroExport;

impl crate::server::Exports for ZeroExport {
    fn list(&self) -> Vec<(String, String)> {
        vec![("d".into(), String::new())]
    }
    fn find(&self, name: &str) -> Option<(String, String)> {
        (name == "d").then(|| ("d".into(), String::new()))
    }
    fn open(&self, _: &str) -> Result<Box<dyn crate::server::Device>, String> {
        Ok(Box::new(ZeroDisk(1 << 20)))
    }
}
