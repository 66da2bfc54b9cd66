//! The server side: one connection at a time per call of [`serve`] (a caller runs one thread
//! per client), negotiating as the client asks, then answering requests against the
//! [`Device`] the chosen export opens.
//!
//! Every client is hostile input. The handshake is bounded: at most [`MAX_OPTIONS`] options,
//! each at most [`MAX_OPTION_DATA`] bytes; requests are bounded by the maximum payload the
//! server advertises (larger reads are refused with `EOVERFLOW`, larger writes end the
//! connection, since their payload cannot be skipped safely); every wait for the client is
//! bounded by the socket timeouts the caller sets. Nothing a client sends can panic the server.
//!
//! The two phases are modules, each with one handler per option ([`negotiate`]) or per
//! command ([`transmit`]), named as the protocol document names them.

mod negotiate;
mod transmit;

use crate::client::Stream;
use crate::error::{Error, Result};
use crate::proto;
use crate::wire::Extent;

/// The most options one client may send before choosing an export.
pub const MAX_OPTIONS: usize = 256;
/// The largest option data the server reads.
pub const MAX_OPTION_DATA: u32 = 64 << 10;

/// An error a device answers a request with: the NBD error value and a message for the client
/// (and the server's log), with the offset it concerns when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceError {
    /// `proto::EIO`, `proto::EPERM`...
    pub errno: u32,
    /// What went wrong.
    pub message: String,
    /// Where, when known.
    pub offset: Option<u64>,
}

impl DeviceError {
    /// An error of value `errno`.
    pub fn new(errno: u32, message: impl Into<String>) -> Self {
        Self {
            errno,
            message: message.into(),
            offset: None,
        }
    }
}

/// One client's view of an export. Requests arrive checked: inside the export, within the
/// maximum payload, writes only when the device is writable.
pub trait Device: Send {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Whether writes are refused.
    fn read_only(&self) -> bool;
    /// Fills `buf` with the bytes at `offset`.
    ///
    /// # Errors
    /// The bytes cannot be read (or would be wrong): the client gets the error for this read.
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError>;
    /// `base:allocation` extents from `offset`, covering at least one byte and at most
    /// `length` bytes (or a little more): flags `proto::STATE_HOLE | proto::STATE_ZERO` for
    /// stretches that read as zeros.
    ///
    /// # Errors
    /// The state cannot be found.
    fn allocation(&mut self, offset: u64, length: u32) -> Result<Vec<Extent>, DeviceError>;
    /// Writes `data` at `offset`.
    ///
    /// # Errors
    /// The write fails.
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        let _ = (offset, data);
        Err(DeviceError::new(proto::EPERM, "the export is read-only"))
    }
    /// Zeroes `length` bytes at `offset` (also what a trim does).
    ///
    /// # Errors
    /// The write fails.
    fn write_zeroes(&mut self, offset: u64, length: u32) -> Result<(), DeviceError> {
        let _ = (offset, length);
        Err(DeviceError::new(proto::EPERM, "the export is read-only"))
    }
    /// Makes the writes so far durable.
    ///
    /// # Errors
    /// The flush fails.
    fn flush(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }
}

/// The exports a server offers.
pub trait Exports: Sync {
    /// Names and descriptions, for `NBD_OPT_LIST`.
    fn list(&self) -> Vec<(String, String)>;
    /// Whether `name` is an export (its canonical name and description).
    fn find(&self, name: &str) -> Option<(String, String)>;
    /// Opens `name` for one client.
    ///
    /// # Errors
    /// The export cannot be opened now (the message goes to the client).
    fn open(&self, name: &str) -> Result<Box<dyn Device>, String>;
}

/// How a server behaves.
#[derive(Debug, Clone)]
pub struct Config {
    /// The largest read or write payload (advertised in `NBD_INFO_BLOCK_SIZE`).
    pub max_payload: u32,
    /// Whether several connections to one export see each other's writes (true for read-only
    /// exports).
    pub multi_conn: bool,
    /// The bound on waiting for a client once it chose an export (`None`: a VM booted from
    /// the export may sit idle for hours). The handshake is bounded by the stream's timeouts
    /// as the caller set them.
    pub idle_timeout: Option<std::time::Duration>,
    /// TLS: when set, clients must upgrade with `NBD_OPT_STARTTLS` before anything else.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_payload: proto::DEFAULT_MAX_PAYLOAD,
            multi_conn: true,
            idle_timeout: None,
            tls: None,
        }
    }
}

/// How a session ended, for the server's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The export used, if the client got that far.
    pub export: Option<String>,
    /// Requests answered.
    pub requests: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Bytes read by the client.
    pub bytes_read: u64,
}

/// Serves one client on `stream` until it disconnects: the handshake, then its requests.
/// `log` gets one line per refused option or failed request.
///
/// # Errors
/// A client that breaks the protocol or drops the connection (the session ends then).
pub fn serve(
    mut stream: Box<dyn Stream>,
    exports: &dyn Exports,
    config: &Config,
    log: &(dyn Fn(&str) + Sync),
) -> Result<Session> {
    let mut session = Session {
        export: None,
        requests: 0,
        errors: 0,
        bytes_read: 0,
    };
    let Some((name, device, haggle)) = negotiate::negotiate(&mut stream, exports, config, log)?
    else {
        return Ok(session);
    };
    session.export = Some(name.clone());
    stream
        .set_timeout(config.idle_timeout)
        .map_err(Error::io("setting the idle timeout"))?;
    let allocation = haggle.allocation_for.as_deref() == Some(name.as_str());
    let mut t = transmit::Transmission {
        device,
        config,
        structured: haggle.structured,
        allocation,
        log,
        buf: Vec::new(),
    };
    t.run(&mut *stream, &mut session)?;
    Ok(session)
}

/// The negotiation state of one client.
struct Haggle {
    structured: bool,
    allocation_for: Option<String>,
    no_zeroes: bool,
}
