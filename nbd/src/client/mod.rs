//! The client side: connect to a server (TCP or a unix socket), negotiate (fixed newstyle,
//! structured replies, metadata contexts, `NBD_OPT_GO` with a fallback to
//! `NBD_OPT_EXPORT_NAME` for old servers), then send requests, several in flight, and take
//! their replies in whatever order the server sends them.
//!
//! Whatever the server sends, the result is a value or an [`Error`], never a panic, and never
//! wrong bytes: a read reply must cover exactly the bytes asked for, each once; every length is
//! checked against the request before anything is allocated; a socket timeout bounds every
//! wait.
//!
//! The handshake is [`handshake`]; replies are [`replies`]; this module is the client's API.

mod handshake;
mod replies;

use crate::error::{Error, Result};
use crate::proto;
use crate::uri::{Address, Uri};
use crate::wire::{self, Extent, Request};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

pub use handshake::list_exports;
use replies::Pending;

/// A byte stream the protocol runs over (a TCP or unix socket, a TLS session, a test pipe).
pub trait Stream: Read + Write + Send {
    /// Bounds every later read and write by `timeout`, or lets them wait forever with `None`
    /// (a stream without timeouts ignores it).
    ///
    /// # Errors
    /// The socket refuses the timeout.
    fn set_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        let _ = timeout;
        Ok(())
    }
}

impl Stream for TcpStream {
    fn set_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        let t = timeout.map(|t| t.max(Duration::from_millis(1)));
        self.set_read_timeout(t)?;
        self.set_write_timeout(t)
    }
}

impl Stream for std::io::Empty {}

impl Stream for UnixStream {
    fn set_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        let t = timeout.map(|t| t.max(Duration::from_millis(1)));
        self.set_read_timeout(t)?;
        self.set_write_timeout(t)
    }
}

/// Block size constraints of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSize {
    /// Smallest addressable unit.
    pub minimum: u32,
    /// Size of efficient requests.
    pub preferred: u32,
    /// Largest read or write payload.
    pub maximum: u32,
}

impl Default for BlockSize {
    /// The protocol's defaults for a server that says nothing.
    fn default() -> Self {
        Self {
            minimum: 1,
            preferred: 4096,
            maximum: proto::DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// What the server said of the export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// The name asked for.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Transmission flags (`proto::FLAG_*`).
    pub flags: u16,
    /// Size constraints.
    pub block: BlockSize,
    /// The server's description, if it gave one.
    pub description: Option<String>,
}

impl ExportInfo {
    /// Whether the export is read-only.
    #[must_use]
    pub fn read_only(&self) -> bool {
        self.flags & proto::FLAG_READ_ONLY != 0
    }

    /// Whether several connections may be used at once (the server says they are coherent).
    #[must_use]
    pub fn multi_conn(&self) -> bool {
        self.flags & proto::FLAG_CAN_MULTI_CONN != 0
    }
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct Options {
    /// Metadata contexts to select (`base:allocation`, `qemu:dirty-bitmap:NAME`); the ones the
    /// server selected are in [`Client::contexts`].
    pub contexts: Vec<String>,
    /// Bound on every wait for the server once connected.
    pub timeout: Duration,
    /// Bound on connecting and on each step of the handshake (a server that accepts the
    /// connection but serves one client at a time never greets a second one).
    pub handshake_timeout: Duration,
    /// TLS for `nbds://` URIs: whom to trust (by default the system's roots).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            contexts: Vec::new(),
            timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// A request answered.
#[derive(Debug)]
pub struct Completion {
    /// The request's cookie, as [`Client::submit_read`] returned it.
    pub cookie: u64,
    /// Its offset.
    pub offset: u64,
    /// The bytes read (empty for other commands), or the error the server answered.
    pub result: Result<Vec<u8>>,
    /// For a block status: the extents, by context id.
    extents: Vec<(u32, Vec<Extent>)>,
}

/// A connection to one export, in the transmission phase.
pub struct Client {
    stream: Box<dyn Stream>,
    info: ExportInfo,
    structured: bool,
    contexts: Vec<(u32, String)>,
    next_cookie: u64,
    pending: HashMap<u64, Pending>,
    /// Completions received while waiting for another request.
    done: std::collections::VecDeque<Completion>,
    broken: Option<String>,
    what: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("what", &self.what)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Opens the socket of `address`, every wait bounded by `timeout`.
///
/// # Errors
/// The server cannot be reached.
pub fn open_socket(address: &Address, timeout: Duration) -> Result<Box<dyn Stream>> {
    let timeout = timeout.max(Duration::from_millis(1));
    match address {
        Address::Tcp { host, port } => {
            let what = format!("connecting to {address}");
            let addrs = (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(Error::io(what.clone()))?;
            let mut last = None;
            for a in addrs {
                match TcpStream::connect_timeout(&a, timeout) {
                    Ok(s) => {
                        s.set_read_timeout(Some(timeout))
                            .map_err(Error::io(what.clone()))?;
                        s.set_write_timeout(Some(timeout))
                            .map_err(Error::io(what.clone()))?;
                        s.set_nodelay(true).map_err(Error::io(what.clone()))?;
                        return Ok(Box::new(s));
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(Error::Io {
                what,
                source: last.unwrap_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no address for the host")
                }),
            })
        }
        Address::Unix(path) => {
            let what = format!("connecting to {address}");
            let s = UnixStream::connect(path).map_err(Error::io(what.clone()))?;
            s.set_read_timeout(Some(timeout))
                .map_err(Error::io(what.clone()))?;
            s.set_write_timeout(Some(timeout))
                .map_err(Error::io(what))?;
            Ok(Box::new(s))
        }
    }
}

impl Client {
    /// Connects to the export `uri` names.
    ///
    /// # Errors
    /// The server cannot be reached, refuses the export, or breaks the protocol; `nbds://`
    /// (TLS is not built in yet).
    pub fn connect(uri: &Uri, options: &Options) -> Result<Self> {
        let tls = if uri.tls {
            let config = match &options.tls {
                Some(c) => std::sync::Arc::clone(c),
                None => crate::tls::client_config(None)?,
            };
            let name = match &uri.address {
                Address::Tcp { host, .. } => host.clone(),
                Address::Unix(_) => "localhost".to_owned(),
            };
            Some((config, name))
        } else {
            None
        };
        let stream = open_socket(&uri.address, options.handshake_timeout)?;
        let mut c = Self::negotiate(stream, &uri.export, &options.contexts, tls)?;
        c.what = uri.to_string();
        c.stream
            .set_timeout(Some(options.timeout))
            .map_err(Error::io(format!("connecting to {}", uri.address)))?;
        Ok(c)
    }

    /// What the server said of the export.
    #[must_use]
    pub fn info(&self) -> &ExportInfo {
        &self.info
    }

    /// The export's size.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.info.size
    }

    /// The metadata contexts the server selected.
    #[must_use]
    pub fn contexts(&self) -> Vec<&str> {
        self.contexts.iter().map(|(_, n)| n.as_str()).collect()
    }

    /// Whether structured replies were negotiated.
    #[must_use]
    pub fn structured(&self) -> bool {
        self.structured
    }

    /// Requests in flight.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    fn check_usable(&self) -> Result<()> {
        match &self.broken {
            Some(why) => Err(Error::Protocol(format!(
                "the connection to {} is unusable after an earlier error: {why}",
                self.what
            ))),
            None => Ok(()),
        }
    }

    fn check_range(&self, what: &str, offset: u64, length: u64) -> Result<()> {
        if offset
            .checked_add(length)
            .is_none_or(|e| e > self.info.size)
        {
            return Err(Error::Usage(format!(
                "{what} of {length} bytes at offset {offset} passes the end of {} ({} bytes)",
                self.what, self.info.size
            )));
        }
        Ok(())
    }

    fn send(
        &mut self,
        command: u16,
        flags: u16,
        offset: u64,
        length: u32,
        data: &[u8],
    ) -> Result<u64> {
        self.check_usable()?;
        let cookie = self.next_cookie;
        self.next_cookie = self.next_cookie.wrapping_add(1);
        let req = Request {
            flags,
            command,
            cookie,
            offset,
            length,
        };
        let sent = wire::write_all(&mut *self.stream, &[&req.encode(), data], "a request");
        if let Err(e) = sent {
            self.broken = Some(e.to_string());
            return Err(e);
        }
        self.pending.insert(
            cookie,
            Pending {
                command,
                offset,
                length,
                data: Vec::new(),
                covered: BTreeMap::new(),
                covered_bytes: 0,
                status: Vec::new(),
                error: None,
            },
        );
        Ok(cookie)
    }

    /// Sends a read of `length` bytes at `offset` (at most the server's maximum payload)
    /// without waiting; [`Client::wait`] gives its completion. Returns its cookie.
    ///
    /// # Errors
    /// A range past the export's end or over the maximum payload, a broken connection.
    pub fn submit_read(&mut self, offset: u64, length: u32) -> Result<u64> {
        self.check_range("a read", offset, u64::from(length))?;
        if length > self.info.block.maximum {
            return Err(Error::Usage(format!(
                "a read of {length} bytes is more than the server's maximum payload of {}",
                self.info.block.maximum
            )));
        }
        let cookie = self.send(proto::CMD_READ, 0, offset, length, &[])?;
        if let Some(p) = self.pending.get_mut(&cookie) {
            p.data = vec![0u8; length as usize];
        }
        Ok(cookie)
    }

    /// Waits for the next request in flight to complete (in the order the server answers).
    ///
    /// # Errors
    /// Nothing in flight, a broken connection or protocol (fatal: the connection is unusable);
    /// an error the server answered is in the completion's `result` instead.
    pub fn wait(&mut self) -> Result<Completion> {
        if let Some(c) = self.done.pop_front() {
            return Ok(c);
        }
        self.check_usable()?;
        if self.pending.is_empty() {
            return Err(Error::Usage("no request in flight".into()));
        }
        match self.receive() {
            Ok(c) => Ok(c),
            Err(e) => {
                self.broken = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Reads `length` bytes at `offset` (at most the server's maximum payload) into a buffer of
    /// its own, returned without a copy.
    ///
    /// # Errors
    /// As [`Client::submit_read`] and [`Client::wait`], and the server's errors.
    pub fn read_vec(&mut self, offset: u64, length: u32) -> Result<Vec<u8>> {
        let cookie = self.submit_read(offset, length)?;
        self.wait_for(cookie)?.result
    }

    /// Reads `buf.len()` bytes at `offset`, in requests of at most the maximum payload, up to
    /// 4 in flight.
    ///
    /// # Errors
    /// As [`Client::submit_read`] and [`Client::wait`], and the server's errors.
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range("a read", offset, buf.len() as u64)?;
        let max = u64::from(self.info.block.maximum.min(proto::DEFAULT_MAX_PAYLOAD));
        let mut next = 0u64;
        let total = buf.len() as u64;
        let mut cookies = HashMap::new();
        loop {
            while next < total && self.pending.len() < 4 {
                let n = max.min(total - next) as u32;
                let c = self.submit_read(offset + next, n)?;
                cookies.insert(c, next);
                next += u64::from(n);
            }
            if cookies.is_empty() {
                return Ok(());
            }
            let done = self.wait()?;
            let at = cookies
                .remove(&done.cookie)
                .ok_or_else(|| Error::Usage("a completion of a request sent elsewhere".into()))?;
            let data = done.result?;
            buf[at as usize..at as usize + data.len()].copy_from_slice(&data);
        }
    }

    /// The extents of `length` bytes at `offset` for each selected context: the server may
    /// describe less than asked (ask again from where it stopped) or a little more.
    ///
    /// # Errors
    /// No context selected, a range past the end, the server's errors.
    pub fn block_status(&mut self, offset: u64, length: u32) -> Result<Vec<(String, Vec<Extent>)>> {
        if self.contexts.is_empty() {
            return Err(Error::Usage(
                "block status needs a metadata context the server selected".into(),
            ));
        }
        self.check_range("a block status", offset, u64::from(length))?;
        let cookie = self.send(proto::CMD_BLOCK_STATUS, 0, offset, length, &[])?;
        let done = self.wait_for(cookie)?;
        done.result?;
        let mut out: Vec<(String, Vec<Extent>)> = Vec::new();
        for (id, extents) in done.extents {
            let name = self
                .contexts
                .iter()
                .find(|(i, _)| *i == id)
                .map(|(_, n)| n.clone())
                .ok_or_else(|| {
                    Error::Protocol(format!("block status for context id {id}, never selected"))
                })?;
            if out.iter().any(|(n, _)| *n == name) {
                return Err(Error::Protocol(format!(
                    "block status gave two chunks for context {name}"
                )));
            }
            out.push((name, extents));
        }
        for (_, name) in &self.contexts {
            if !out.iter().any(|(n, _)| n == name) {
                return Err(Error::Protocol(format!(
                    "block status at offset {offset} gave no extents for context {name}"
                )));
            }
        }
        Ok(out)
    }

    /// Waits for the request `cookie`, keeping other completions for [`Client::wait`].
    fn wait_for(&mut self, cookie: u64) -> Result<Completion> {
        if let Some(i) = self.done.iter().position(|c| c.cookie == cookie)
            && let Some(c) = self.done.remove(i)
        {
            return Ok(c);
        }
        loop {
            self.check_usable()?;
            let c = match self.receive() {
                Ok(c) => c,
                Err(e) => {
                    self.broken = Some(e.to_string());
                    return Err(e);
                }
            };
            if c.cookie == cookie {
                return Ok(c);
            }
            self.done.push_back(c);
        }
    }

    /// Sends a command without payload in its reply and waits for it.
    fn command(
        &mut self,
        command: u16,
        flags: u16,
        offset: u64,
        length: u32,
        data: &[u8],
    ) -> Result<()> {
        let cookie = self.send(command, flags, offset, length, data)?;
        self.wait_for(cookie)?.result.map(|_| ())
    }

    fn require(&self, flag: u16, what: &str) -> Result<()> {
        if self.info.flags & flag == 0 {
            return Err(Error::Usage(format!(
                "the server does not offer {what} on {}",
                self.what
            )));
        }
        Ok(())
    }

    /// Writes `data` at `offset` (at most the maximum payload).
    ///
    /// # Errors
    /// A read-only export, a range past the end, the server's errors.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        if self.info.read_only() {
            return Err(Error::Usage(format!("{} is read-only", self.what)));
        }
        self.check_range("a write", offset, data.len() as u64)?;
        let length = u32::try_from(data.len())
            .ok()
            .filter(|&l| l <= self.info.block.maximum)
            .ok_or_else(|| Error::Usage("a write larger than the maximum payload".into()))?;
        self.command(proto::CMD_WRITE, 0, offset, length, data)
    }

    /// Zeroes `length` bytes at `offset`.
    ///
    /// # Errors
    /// The server does not offer it, a range past the end, the server's errors.
    pub fn write_zeroes(&mut self, offset: u64, length: u32) -> Result<()> {
        self.require(proto::FLAG_SEND_WRITE_ZEROES, "NBD_CMD_WRITE_ZEROES")?;
        self.check_range("a write of zeroes", offset, u64::from(length))?;
        self.command(proto::CMD_WRITE_ZEROES, 0, offset, length, &[])
    }

    /// Discards `length` bytes at `offset`.
    ///
    /// # Errors
    /// The server does not offer it, a range past the end, the server's errors.
    pub fn trim(&mut self, offset: u64, length: u32) -> Result<()> {
        self.require(proto::FLAG_SEND_TRIM, "NBD_CMD_TRIM")?;
        self.check_range("a trim", offset, u64::from(length))?;
        self.command(proto::CMD_TRIM, 0, offset, length, &[])
    }

    /// Makes every write the server answered durable.
    ///
    /// # Errors
    /// The server does not offer it, the server's errors.
    pub fn flush(&mut self) -> Result<()> {
        self.require(proto::FLAG_SEND_FLUSH, "NBD_CMD_FLUSH")?;
        self.command(proto::CMD_FLUSH, 0, 0, 0, &[])
    }

    /// Ends the session cleanly (`NBD_CMD_DISC`), after the requests in flight are answered.
    ///
    /// # Errors
    /// A broken connection.
    pub fn disconnect(mut self) -> Result<()> {
        while !self.pending.is_empty() {
            self.wait()?;
        }
        let req = Request {
            flags: 0,
            command: proto::CMD_DISC,
            cookie: 0,
            offset: 0,
            length: 0,
        };
        wire::write_all(&mut *self.stream, &[&req.encode()], "the disconnect")
    }
}
