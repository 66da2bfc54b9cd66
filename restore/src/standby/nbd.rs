//! An NBD export as a standby target: written through cairn's NBD client, flushed with
//! `NBD_CMD_FLUSH`; a change behind cairn's back is seen by its size and a digest of sampled
//! chunks (an export has no time or inode).

use std::time::Duration;

use cairn_nbd::{Client, Uri};

use super::Looks;
use super::block::BlockTarget;
use crate::{Error, Result};

/// Chunks read for the digest that tells a changed export.
const SAMPLES: u64 = 16;

/// A connection to a writable export.
pub(super) struct NbdTarget {
    client: Client,
    shown: String,
}

impl NbdTarget {
    /// Connects to `uri`; an `nbds://` one checks the server's certificate against `ca_file`
    /// (else the system's roots).
    pub(super) fn connect(uri: &str, ca_file: Option<&std::path::Path>) -> Result<Self> {
        let parsed = Uri::parse(uri).map_err(|e| Error::Target {
            target: uri.to_owned(),
            what: e.to_string(),
        })?;
        let shown = parsed.to_string();
        let tls = match ca_file {
            Some(f) if parsed.tls => {
                let pem = std::fs::read(f).map_err(super::io(f, "reading the CA file"))?;
                Some(
                    cairn_nbd::tls::client_config(Some(&pem)).map_err(|e| Error::Target {
                        target: shown.clone(),
                        what: format!("{}: {e}", f.display()),
                    })?,
                )
            }
            _ => None,
        };
        let options = cairn_nbd::Options {
            timeout: Duration::from_secs(120),
            tls,
            ..cairn_nbd::Options::default()
        };
        let client = Client::connect(&parsed, &options).map_err(|e| Error::Target {
            target: shown.clone(),
            what: format!("connecting: {e}"),
        })?;
        if client.info().read_only() {
            return Err(Error::Target {
                target: shown,
                what: "the export is read-only: a standby target must be writable (qemu-nbd \
                       without --read-only)"
                    .into(),
            });
        }
        Ok(Self { client, shown })
    }

    /// An NBD error of a request at `at`.
    fn failed(&self, what: &str, at: u64, e: &cairn_nbd::Error) -> Error {
        Error::Target {
            target: self.shown.clone(),
            what: format!("{what} at offset {at}: {e}"),
        }
    }

    /// The largest request the export takes.
    fn max_request(&self) -> usize {
        (self.client.info().block.maximum as usize).clamp(4096, 32 << 20)
    }
}

impl BlockTarget for NbdTarget {
    fn shown(&self) -> &str {
        &self.shown
    }

    fn held_data(&self) -> bool {
        // An export cannot say it is new: whatever it holds is taken only with --force.
        true
    }

    fn looks(&mut self, chunk_size: u64) -> Result<Looks> {
        let size = self.client.size();
        let cs = chunk_size.max(4096);
        let chunks = size.div_ceil(cs);
        let mut digest = blake3::Hasher::new();
        let mut buf = vec![0u8; cs as usize];
        let mut last = None;
        for k in 0..SAMPLES.min(chunks) {
            // The first chunk, the last, and the rest spread evenly between.
            let c = k * (chunks - 1) / (SAMPLES.min(chunks) - 1).max(1);
            if last == Some(c) {
                continue;
            }
            last = Some(c);
            let at = c * cs;
            let len = cs.min(size - at) as usize;
            self.read_at(&mut buf[..len], at)?;
            digest.update(&at.to_le_bytes());
            digest.update(&buf[..len]);
        }
        Ok(Looks {
            size,
            sample: Some(digest.finalize().to_hex().to_string()),
            ..Looks::default()
        })
    }

    fn resizable(&self) -> bool {
        false
    }

    fn set_len(&mut self, _len: u64) -> Result<()> {
        Err(super::refused(format!(
            "{}: an NBD export's size is the server's",
            self.shown()
        )))
    }

    fn read_at(&mut self, buf: &mut [u8], at: u64) -> Result<()> {
        let max = self.max_request();
        for (i, part) in buf.chunks_mut(max).enumerate() {
            let off = at + (i * max) as u64;
            self.client
                .read(off, part)
                .map_err(|e| self.failed("reading", off, &e))?;
        }
        Ok(())
    }

    fn write_at(&mut self, data: &[u8], at: u64) -> Result<()> {
        let max = self.max_request();
        for (i, part) in data.chunks(max).enumerate() {
            let off = at + (i * max) as u64;
            self.client
                .write(off, part)
                .map_err(|e| self.failed("writing", off, &e))?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let flushed = self.client.flush();
        flushed.map_err(|e| self.failed("flushing", 0, &e))
    }
}
