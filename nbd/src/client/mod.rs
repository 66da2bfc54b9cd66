//! The client side: connect to a server (TCP or a unix socket), negotiate (fixed newstyle,
//! structured replies, metadata contexts, `NBD_OPT_GO` with a fallback to
//! `NBD_OPT_EXPORT_NAME` for old servers), then send requests, several in flight, and take
//! their replies in whatever order the server sends them.
//!
//! Whatever the server sends, the result is a value or an [`Error`], never a panic, and never
//! wrong bytes: a read reply must cover exactly the bytes asked for, each once; every length is
//! checked against the request before anything is allocated; a socket timeout bounds every
//! wait.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::proto;
use crate::uri::{Address, Uri};
use crate::wire::{self, Extent, Payload, ReplyHeader, Request};

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

/// The largest option reply the client reads.
const MAX_OPTION_REPLY: u32 = 1 << 20;
/// The most replies the client reads to one option (exports listed, contexts, infos).
const MAX_OPTION_REPLIES: usize = 100_000;
/// The largest block status chunk the protocol lets a server send (2^20 descriptors).
const MAX_BLOCK_STATUS_CHUNK: u32 = 4 + 8 * (1 << 20);

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

/// A request in flight.
struct Pending {
    command: u16,
    offset: u64,
    length: u32,
    data: Vec<u8>,
    /// Byte ranges of `data` covered by content chunks, start → end (relative).
    covered: BTreeMap<u64, u64>,
    covered_bytes: u64,
    status: Vec<(u32, Vec<Extent>)>,
    error: Option<Error>,
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

/// The first steps of the handshake: the server's greeting and the client flags. Returns
/// whether the server speaks fixed newstyle and whether the zero padding was dropped.
fn greet(s: &mut dyn Stream) -> Result<(bool, bool)> {
    let magic = wire::read_u64(s, "the server's greeting")?;
    if magic != proto::NBDMAGIC {
        return Err(Error::Protocol(format!(
            "the server's greeting is {magic:#x}, not NBDMAGIC: not an NBD server?"
        )));
    }
    let style = wire::read_u64(s, "the server's greeting")?;
    if style != proto::IHAVEOPT {
        return Err(Error::Protocol(format!(
            "the server speaks the oldstyle handshake ({style:#x}), which has no export names; \
             only newstyle servers are supported"
        )));
    }
    let flags = wire::read_u16(s, "the handshake flags")?;
    let fixed = flags & proto::FLAG_FIXED_NEWSTYLE != 0;
    let no_zeroes = flags & proto::FLAG_NO_ZEROES != 0;
    let mut client = 0;
    if fixed {
        client |= proto::FLAG_C_FIXED_NEWSTYLE;
    }
    if no_zeroes {
        client |= proto::FLAG_C_NO_ZEROES;
    }
    wire::write_all(s, &[&client.to_be_bytes()], "the client flags")?;
    Ok((fixed, no_zeroes))
}

/// Reads the reply to option `option`, checking it answers that option.
fn option_reply(s: &mut dyn Stream, option: u32) -> Result<wire::OptionReply> {
    let r = wire::read_option_reply(s, MAX_OPTION_REPLY)?;
    if r.option != option {
        return Err(Error::Protocol(format!(
            "a reply to option {} when option {option} was asked",
            r.option
        )));
    }
    Ok(r)
}

fn refused(option: &'static str, r: &wire::OptionReply) -> Error {
    Error::Refused {
        option,
        code: r.reply,
        message: String::from_utf8_lossy(&r.data).into_owned(),
    }
}

/// Lists the exports of the server at `address` (`NBD_OPT_LIST`): names and descriptions.
///
/// # Errors
/// The server cannot be reached, refuses the listing or breaks the protocol.
pub fn list_exports(address: &Address, timeout: Duration) -> Result<Vec<(String, String)>> {
    let mut s = open_socket(address, timeout)?;
    let (fixed, _) = greet(&mut *s)?;
    if !fixed {
        return Err(Error::Usage(
            "the server does not speak fixed newstyle: it cannot list its exports".into(),
        ));
    }
    wire::write_option(&mut *s, proto::OPT_LIST, &[])?;
    let mut out = Vec::new();
    loop {
        let r = option_reply(&mut *s, proto::OPT_LIST)?;
        match r.reply {
            proto::REP_SERVER => {
                let mut p = Payload::new(&r.data, "an NBD_REP_SERVER reply");
                let name = p.prefixed_string()?;
                let description = String::from_utf8_lossy(p.rest()).into_owned();
                out.push((name, description));
                if out.len() > MAX_OPTION_REPLIES {
                    return Err(Error::Protocol("more exports than the client reads".into()));
                }
            }
            proto::REP_ACK => break,
            _ if r.reply & proto::REP_FLAG_ERROR != 0 => return Err(refused("NBD_OPT_LIST", &r)),
            other => {
                return Err(Error::Protocol(format!(
                    "reply type {other} to NBD_OPT_LIST"
                )));
            }
        }
    }
    let _ = wire::write_option(&mut *s, proto::OPT_ABORT, &[]);
    Ok(out)
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

    /// Negotiates export `export` over `stream` (already connected), selecting `contexts`.
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub fn handshake(stream: Box<dyn Stream>, export: &str, contexts: &[String]) -> Result<Self> {
        Self::negotiate(stream, export, contexts, None)
    }

    /// As [`Client::handshake`], upgrading to TLS first when `tls` (a configuration and the
    /// server's name) is given: a server that refuses TLS is an error, never a fallback to
    /// plain text.
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub fn negotiate(
        mut stream: Box<dyn Stream>,
        export: &str,
        contexts: &[String],
        tls: Option<(std::sync::Arc<rustls::ClientConfig>, String)>,
    ) -> Result<Self> {
        let (fixed, no_zeroes) = greet(&mut *stream)?;
        if let Some((config, name)) = tls {
            if !fixed {
                return Err(Error::Usage(
                    "the server does not speak fixed newstyle, so it cannot start TLS".into(),
                ));
            }
            wire::write_option(&mut *stream, proto::OPT_STARTTLS, &[])?;
            let r = option_reply(&mut *stream, proto::OPT_STARTTLS)?;
            if r.reply != proto::REP_ACK {
                return Err(refused("NBD_OPT_STARTTLS", &r));
            }
            stream = crate::tls::connect(config, &name, stream)?;
        }
        let s = &mut *stream;
        let mut structured = false;
        let mut selected = Vec::new();
        if fixed {
            wire::write_option(s, proto::OPT_STRUCTURED_REPLY, &[])?;
            let r = option_reply(s, proto::OPT_STRUCTURED_REPLY)?;
            structured = r.reply == proto::REP_ACK;
            if structured && !contexts.is_empty() {
                let queries: Vec<&str> = contexts.iter().map(String::as_str).collect();
                wire::write_option(
                    s,
                    proto::OPT_SET_META_CONTEXT,
                    &wire::encode_meta_context(export, &queries),
                )?;
                loop {
                    let r = option_reply(s, proto::OPT_SET_META_CONTEXT)?;
                    match r.reply {
                        proto::REP_META_CONTEXT => {
                            let mut p = Payload::new(&r.data, "an NBD_REP_META_CONTEXT reply");
                            let id = p.u32()?;
                            let name = p.rest_string()?;
                            if !contexts.contains(&name) {
                                return Err(Error::Protocol(format!(
                                    "the server selected context {name:?}, which was not asked for"
                                )));
                            }
                            selected.push((id, name));
                            if selected.len() > contexts.len() {
                                return Err(Error::Protocol(
                                    "more contexts selected than asked for".into(),
                                ));
                            }
                        }
                        proto::REP_ACK => break,
                        // Contexts are a hint: a server that cannot select them gives none.
                        e if e & proto::REP_FLAG_ERROR != 0 => {
                            selected.clear();
                            break;
                        }
                        other => {
                            return Err(Error::Protocol(format!(
                                "reply type {other} to NBD_OPT_SET_META_CONTEXT"
                            )));
                        }
                    }
                }
            }
        }
        let info = if fixed { Self::go(s, export)? } else { None };
        let info = match info {
            Some(i) => i,
            None => {
                // An old server: NBD_OPT_EXPORT_NAME, which has no error reply (an unknown
                // export closes the connection).
                wire::write_option(s, proto::OPT_EXPORT_NAME, export.as_bytes())?;
                let size =
                    wire::read_u64(s, "the export's size (the server may not know the export)")?;
                let flags = wire::read_u16(s, "the export's flags")?;
                if !no_zeroes {
                    wire::discard(s, proto::EXPORT_NAME_PADDING as u64, "the zero padding")?;
                }
                ExportInfo {
                    name: export.to_owned(),
                    size,
                    flags,
                    block: BlockSize::default(),
                    description: None,
                }
            }
        };
        if info.block.maximum == 0
            || info.block.minimum == 0
            || !info.block.minimum.is_power_of_two()
            || info.block.minimum > 1 << 16
        {
            return Err(Error::Protocol(format!(
                "block size constraints {:?} are not valid",
                info.block
            )));
        }
        Ok(Self {
            stream,
            info,
            structured,
            contexts: selected,
            next_cookie: 1,
            pending: HashMap::new(),
            done: std::collections::VecDeque::new(),
            broken: None,
            what: format!("export {export:?}"),
        })
    }

    /// `NBD_OPT_GO`; `None` when the server does not know it (use `NBD_OPT_EXPORT_NAME`).
    fn go(s: &mut dyn Stream, export: &str) -> Result<Option<ExportInfo>> {
        let infos = [proto::INFO_BLOCK_SIZE, proto::INFO_DESCRIPTION];
        wire::write_option(s, proto::OPT_GO, &wire::encode_go(export, &infos))?;
        let mut size_flags = None;
        let mut block = BlockSize::default();
        let mut description = None;
        for _ in 0..MAX_OPTION_REPLIES {
            let r = option_reply(s, proto::OPT_GO)?;
            match r.reply {
                proto::REP_INFO => {
                    let mut p = Payload::new(&r.data, "an NBD_REP_INFO reply");
                    match p.u16()? {
                        proto::INFO_EXPORT => {
                            let size = p.u64()?;
                            let flags = p.u16()?;
                            p.end()?;
                            size_flags = Some((size, flags));
                        }
                        proto::INFO_BLOCK_SIZE => {
                            block = BlockSize {
                                minimum: p.u32()?,
                                preferred: p.u32()?,
                                maximum: p.u32()?,
                            };
                            p.end()?;
                        }
                        proto::INFO_DESCRIPTION => description = Some(p.rest_string()?),
                        _ => {}
                    }
                }
                proto::REP_ACK => {
                    let (size, flags) = size_flags.ok_or_else(|| {
                        Error::Protocol("NBD_OPT_GO succeeded without NBD_INFO_EXPORT".into())
                    })?;
                    return Ok(Some(ExportInfo {
                        name: export.to_owned(),
                        size,
                        flags,
                        block,
                        description,
                    }));
                }
                proto::REP_ERR_UNSUP => return Ok(None),
                e if e & proto::REP_FLAG_ERROR != 0 => {
                    let mut err = refused("NBD_OPT_GO", &r);
                    if let Error::Refused { message, .. } = &mut err
                        && message.is_empty()
                        && e == proto::REP_ERR_UNKNOWN
                    {
                        *message = format!("the server has no export {export:?}");
                    }
                    return Err(err);
                }
                other => {
                    return Err(Error::Protocol(format!("reply type {other} to NBD_OPT_GO")));
                }
            }
        }
        Err(Error::Protocol("too many replies to NBD_OPT_GO".into()))
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
}

impl Client {
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

    /// Reads replies until one request completes.
    fn receive(&mut self) -> Result<Completion> {
        loop {
            let header = wire::read_reply_header(&mut *self.stream)?;
            let cookie = match header {
                ReplyHeader::Simple { cookie, .. } | ReplyHeader::Structured { cookie, .. } => {
                    cookie
                }
            };
            let mut p = self.pending.remove(&cookie).ok_or_else(|| {
                Error::Protocol(format!(
                    "a reply for cookie {cookie}, which is not in flight"
                ))
            })?;
            let done = match header {
                ReplyHeader::Simple { error, .. } => {
                    if error == 0 && p.command == proto::CMD_READ {
                        if self.structured {
                            return Err(Error::Protocol(
                                "a simple reply with data to a read after structured replies were negotiated"
                                    .into(),
                            ));
                        }
                        self.stream
                            .read_exact(&mut p.data)
                            .map_err(Error::io("reading a read's data"))?;
                        p.covered_bytes = u64::from(p.length);
                    } else if error != 0 {
                        p.error = Some(request_error(&p, error, String::new(), None));
                    } else if p.command == proto::CMD_BLOCK_STATUS {
                        return Err(Error::Protocol(
                            "a simple reply to a block status, which needs a structured one".into(),
                        ));
                    }
                    true
                }
                ReplyHeader::Structured {
                    flags,
                    kind,
                    length,
                    ..
                } => {
                    if !self.structured {
                        return Err(Error::Protocol(
                            "a structured reply that was never negotiated".into(),
                        ));
                    }
                    self.chunk(&mut p, kind, length)?;
                    flags & proto::REPLY_FLAG_DONE != 0
                }
            };
            if !done {
                self.pending.insert(cookie, p);
                continue;
            }
            if p.error.is_none()
                && p.command == proto::CMD_READ
                && p.covered_bytes != u64::from(p.length)
            {
                return Err(Error::Protocol(format!(
                    "the reply to a read of {} bytes at offset {} ended after {} bytes",
                    p.length, p.offset, p.covered_bytes
                )));
            }
            if p.error.is_none() && p.command == proto::CMD_BLOCK_STATUS && p.status.is_empty() {
                return Err(Error::Protocol(format!(
                    "the reply to a block status at offset {} holds no extents",
                    p.offset
                )));
            }
            return Ok(Completion {
                cookie,
                offset: p.offset,
                result: match p.error {
                    Some(e) => Err(e),
                    None => Ok(p.data),
                },
                extents: p.status,
            });
        }
    }

    /// Reads one structured chunk of `length` payload bytes into `p`.
    fn chunk(&mut self, p: &mut Pending, kind: u16, length: u32) -> Result<()> {
        let s = &mut *self.stream;
        match kind {
            proto::REPLY_TYPE_NONE => {
                if length != 0 {
                    return Err(Error::Protocol(format!(
                        "an NBD_REPLY_TYPE_NONE chunk of {length} bytes"
                    )));
                }
            }
            proto::REPLY_TYPE_OFFSET_DATA | proto::REPLY_TYPE_OFFSET_HOLE => {
                if p.command != proto::CMD_READ {
                    return Err(Error::Protocol(
                        "read data in the reply to another command".into(),
                    ));
                }
                let (offset, len) = if kind == proto::REPLY_TYPE_OFFSET_DATA {
                    if length < 9 || length - 8 > p.length {
                        return Err(Error::Protocol(format!(
                            "a data chunk of {length} bytes for a read of {}",
                            p.length
                        )));
                    }
                    (
                        wire::read_u64(s, "a data chunk's offset")?,
                        u64::from(length - 8),
                    )
                } else {
                    if length != 12 {
                        return Err(Error::Protocol(format!(
                            "a hole chunk of {length} bytes, not 12"
                        )));
                    }
                    let o = wire::read_u64(s, "a hole chunk's offset")?;
                    let n = wire::read_u32(s, "a hole chunk's size")?;
                    if n == 0 {
                        return Err(Error::Protocol("a hole chunk of size 0".into()));
                    }
                    (o, u64::from(n))
                };
                let start = offset
                    .checked_sub(p.offset)
                    .filter(|s| s.checked_add(len).is_some_and(|e| e <= u64::from(p.length)));
                let Some(start) = start else {
                    return Err(Error::Protocol(format!(
                        "a chunk of {len} bytes at offset {offset}, outside the read of {} bytes at {}",
                        p.length, p.offset
                    )));
                };
                let end = start + len;
                let before = p.covered.range(..end).next_back();
                if before.is_some_and(|(_, &e)| e > start) {
                    return Err(Error::Protocol(format!(
                        "a chunk at offset {offset} overlaps an earlier one of the same read"
                    )));
                }
                p.covered.insert(start, end);
                p.covered_bytes += len;
                let dst = &mut p.data[start as usize..end as usize];
                if kind == proto::REPLY_TYPE_OFFSET_DATA {
                    s.read_exact(dst)
                        .map_err(Error::io("reading a read's data"))?;
                } else {
                    dst.fill(0);
                }
            }
            proto::REPLY_TYPE_BLOCK_STATUS => {
                if p.command != proto::CMD_BLOCK_STATUS {
                    return Err(Error::Protocol(
                        "block status in the reply to another command".into(),
                    ));
                }
                let bytes = wire::read_vec(
                    s,
                    u64::from(length),
                    u64::from(MAX_BLOCK_STATUS_CHUNK),
                    "a block status chunk",
                )?;
                let (id, extents) = wire::parse_block_status(&bytes)?;
                if p.status.iter().any(|(i, _)| *i == id) {
                    return Err(Error::Protocol(format!(
                        "two block status chunks for context id {id}"
                    )));
                }
                if p.status.len() >= self.contexts.len().max(1) {
                    return Err(Error::Protocol(
                        "more block status chunks than contexts".into(),
                    ));
                }
                p.status.push((id, extents));
            }
            k if k & proto::REPLY_TYPE_FLAG_ERROR != 0 => {
                let bytes = wire::read_vec(
                    s,
                    u64::from(length),
                    (proto::MAX_STRING + 14) as u64,
                    "an error chunk",
                )?;
                let (errno, message, offset) = wire::parse_error_chunk(k, &bytes)?;
                if p.error.is_none() {
                    p.error = Some(request_error(p, errno, message, offset));
                }
            }
            other => {
                return Err(Error::Protocol(format!(
                    "a structured reply chunk of unknown type {other}"
                )));
            }
        }
        Ok(())
    }
}

fn command_name(c: u16) -> &'static str {
    match c {
        proto::CMD_READ => "NBD_CMD_READ",
        proto::CMD_WRITE => "NBD_CMD_WRITE",
        proto::CMD_FLUSH => "NBD_CMD_FLUSH",
        proto::CMD_TRIM => "NBD_CMD_TRIM",
        proto::CMD_WRITE_ZEROES => "NBD_CMD_WRITE_ZEROES",
        proto::CMD_BLOCK_STATUS => "NBD_CMD_BLOCK_STATUS",
        _ => "a command",
    }
}

fn request_error(p: &Pending, errno: u32, message: String, offset: Option<u64>) -> Error {
    Error::Request {
        command: command_name(p.command),
        offset: offset.unwrap_or(p.offset),
        length: u64::from(p.length),
        errno,
        message,
    }
}
