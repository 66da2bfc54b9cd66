//! The server side: one connection at a time per call of [`serve`] (a caller runs one thread
//! per client), negotiating as the client asks, then answering requests against the
//! [`Device`] the chosen export opens.
//!
//! Every client is hostile input. The handshake is bounded: at most [`MAX_OPTIONS`] options,
//! each at most [`MAX_OPTION_DATA`] bytes; requests are bounded by the maximum payload the
//! server advertises (larger reads are refused with `EOVERFLOW`, larger writes end the
//! connection, since their payload cannot be skipped safely); every wait for the client is
//! bounded by the socket timeouts the caller sets. Nothing a client sends can panic the server.

use crate::client::Stream;
use crate::error::{Error, Result};
use crate::proto;
use crate::wire::{self, Extent, REQUEST_LEN, Request};

/// The most options one client may send before choosing an export.
pub const MAX_OPTIONS: usize = 256;
/// The largest option data the server reads.
pub const MAX_OPTION_DATA: u32 = 64 << 10;
/// The most descriptors in one block status reply.
const MAX_EXTENTS: usize = 1 << 16;
/// The id of `base:allocation` in this server's replies.
const ALLOCATION_ID: u32 = 1;

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

/// The negotiation state of one client.
struct Haggle {
    structured: bool,
    allocation_for: Option<String>,
    no_zeroes: bool,
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
    let Some((name, device, haggle)) = negotiate(&mut stream, exports, config, log)? else {
        return Ok(session);
    };
    session.export = Some(name.clone());
    stream
        .set_timeout(config.idle_timeout)
        .map_err(Error::io("setting the idle timeout"))?;
    let allocation = haggle.allocation_for.as_deref() == Some(name.as_str());
    transmit(
        &mut *stream,
        device,
        config,
        haggle.structured,
        allocation,
        &mut session,
        log,
    )?;
    Ok(session)
}

fn transmission_flags(device: &dyn Device, config: &Config, structured: bool) -> u16 {
    let mut flags = proto::FLAG_HAS_FLAGS | proto::FLAG_SEND_FLUSH;
    if device.read_only() {
        flags |= proto::FLAG_READ_ONLY;
    } else {
        flags |= proto::FLAG_SEND_TRIM | proto::FLAG_SEND_WRITE_ZEROES | proto::FLAG_SEND_FUA;
    }
    if structured {
        flags |= proto::FLAG_SEND_DF;
    }
    if config.multi_conn {
        flags |= proto::FLAG_CAN_MULTI_CONN;
    }
    flags
}

type Chosen = (String, Box<dyn Device>, Haggle);

fn negotiate(
    stream: &mut Box<dyn Stream>,
    exports: &dyn Exports,
    config: &Config,
    log: &(dyn Fn(&str) + Sync),
) -> Result<Option<Chosen>> {
    let s = &mut **stream;
    wire::write_all(
        s,
        &[
            &proto::NBDMAGIC.to_be_bytes(),
            &proto::IHAVEOPT.to_be_bytes(),
            &(proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES).to_be_bytes(),
        ],
        "the greeting",
    )?;
    let client = wire::read_u32(s, "the client flags")?;
    if client & !(proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES) != 0 {
        return Err(Error::Protocol(format!(
            "client flags {client:#x} hold bits this server never offered"
        )));
    }
    let no_zeroes = client & proto::FLAG_C_NO_ZEROES != 0;
    let mut h = Haggle {
        structured: false,
        allocation_for: None,
        no_zeroes,
    };
    let mut secure = config.tls.is_none();
    for _ in 0..MAX_OPTIONS {
        let s = &mut **stream;
        let opt = match wire::read_option(s, MAX_OPTION_DATA) {
            Ok(o) => o,
            Err(Error::Protocol(what)) if what.contains("more than the") => {
                return Err(Error::Protocol(format!("option data too long: {what}")));
            }
            Err(e) => return Err(e),
        };
        let reply = |s: &mut dyn Stream, rep: u32, data: &[u8]| {
            wire::write_option_reply(s, opt.option, rep, data)
        };
        let error = |s: &mut dyn Stream, rep: u32, message: &str| {
            log(&format!("option {} refused: {message}", opt.option));
            wire::write_option_reply(s, opt.option, rep, message.as_bytes())
        };
        // FORCEDTLS: nothing but TLS (or giving up) before TLS.
        if !secure && opt.option != proto::OPT_STARTTLS && opt.option != proto::OPT_ABORT {
            if opt.option == proto::OPT_EXPORT_NAME {
                log("NBD_OPT_EXPORT_NAME before TLS: closed (this server requires TLS)");
                return Ok(None);
            }
            error(
                s,
                proto::REP_ERR_TLS_REQD,
                "this server requires TLS: NBD_OPT_STARTTLS first",
            )?;
            continue;
        }
        match opt.option {
            proto::OPT_STARTTLS => {
                let Some(tls) = config.tls.clone() else {
                    error(s, proto::REP_ERR_UNSUP, "this server has no TLS configured")?;
                    continue;
                };
                if secure {
                    error(s, proto::REP_ERR_INVALID, "TLS is already running")?;
                    continue;
                }
                if !opt.data.is_empty() {
                    error(s, proto::REP_ERR_INVALID, "NBD_OPT_STARTTLS takes no data")?;
                    continue;
                }
                reply(s, proto::REP_ACK, &[])?;
                let plain = std::mem::replace(stream, Box::new(std::io::empty()));
                *stream = crate::tls::accept(tls, plain)?;
                secure = true;
                // Nothing negotiated before TLS carries over.
                h = Haggle {
                    structured: false,
                    allocation_for: None,
                    no_zeroes,
                };
            }
            proto::OPT_EXPORT_NAME => {
                let name = String::from_utf8(opt.data)
                    .map_err(|_| Error::Protocol("an export name that is not UTF-8".into()))?;
                let Some((canonical, _)) = exports.find(&name) else {
                    // The option has no error reply: the protocol says to close.
                    log(&format!("NBD_OPT_EXPORT_NAME: no export {name:?}"));
                    return Ok(None);
                };
                let device = match exports.open(&canonical) {
                    Ok(d) => d,
                    Err(e) => {
                        log(&format!("export {canonical:?} cannot be opened: {e}"));
                        return Ok(None);
                    }
                };
                let flags = transmission_flags(&*device, config, h.structured);
                let zeroes = [0u8; proto::EXPORT_NAME_PADDING];
                let pad: &[u8] = if h.no_zeroes { &[] } else { &zeroes };
                wire::write_all(
                    s,
                    &[&device.size().to_be_bytes(), &flags.to_be_bytes(), pad],
                    "the export's size",
                )?;
                return Ok(Some((canonical, device, h)));
            }
            proto::OPT_ABORT => {
                let _ = reply(s, proto::REP_ACK, &[]);
                return Ok(None);
            }
            proto::OPT_LIST => {
                if !opt.data.is_empty() {
                    error(s, proto::REP_ERR_INVALID, "NBD_OPT_LIST takes no data")?;
                    continue;
                }
                for (name, description) in exports.list() {
                    let mut d = Vec::with_capacity(4 + name.len() + description.len());
                    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
                    d.extend_from_slice(name.as_bytes());
                    d.extend_from_slice(description.as_bytes());
                    reply(s, proto::REP_SERVER, &d)?;
                }
                reply(s, proto::REP_ACK, &[])?;
            }
            proto::OPT_STRUCTURED_REPLY => {
                if !opt.data.is_empty() {
                    error(
                        s,
                        proto::REP_ERR_INVALID,
                        "NBD_OPT_STRUCTURED_REPLY takes no data",
                    )?;
                } else if h.structured {
                    error(
                        s,
                        proto::REP_ERR_INVALID,
                        "structured replies are negotiated already",
                    )?;
                } else {
                    h.structured = true;
                    reply(s, proto::REP_ACK, &[])?;
                }
            }
            proto::OPT_LIST_META_CONTEXT | proto::OPT_SET_META_CONTEXT => {
                let set = opt.option == proto::OPT_SET_META_CONTEXT;
                if set {
                    h.allocation_for = None;
                }
                if !h.structured {
                    error(
                        s,
                        proto::REP_ERR_INVALID,
                        "metadata contexts need structured replies first",
                    )?;
                    continue;
                }
                let (name, queries) = match wire::parse_meta_context(&opt.data) {
                    Ok(v) => v,
                    Err(e) => {
                        error(s, proto::REP_ERR_INVALID, &e.to_string())?;
                        continue;
                    }
                };
                let Some((canonical, _)) = exports.find(&name) else {
                    error(s, proto::REP_ERR_UNKNOWN, &format!("no export {name:?}"))?;
                    continue;
                };
                let matches = if set {
                    queries.iter().any(|q| q == proto::CONTEXT_BASE_ALLOCATION)
                } else {
                    queries.is_empty()
                        || queries
                            .iter()
                            .any(|q| q == "base:" || q == proto::CONTEXT_BASE_ALLOCATION)
                };
                if matches {
                    let id = if set { ALLOCATION_ID } else { 0 };
                    let mut d = id.to_be_bytes().to_vec();
                    d.extend_from_slice(proto::CONTEXT_BASE_ALLOCATION.as_bytes());
                    reply(s, proto::REP_META_CONTEXT, &d)?;
                    if set {
                        h.allocation_for = Some(canonical);
                    }
                }
                reply(s, proto::REP_ACK, &[])?;
            }
            proto::OPT_INFO | proto::OPT_GO => {
                let (name, infos) = match wire::parse_go(&opt.data) {
                    Ok(v) => v,
                    Err(e) => {
                        error(s, proto::REP_ERR_INVALID, &e.to_string())?;
                        continue;
                    }
                };
                let Some((canonical, description)) = exports.find(&name) else {
                    error(s, proto::REP_ERR_UNKNOWN, &format!("no export {name:?}"))?;
                    continue;
                };
                let device = match exports.open(&canonical) {
                    Ok(d) => d,
                    Err(e) => {
                        error(s, proto::REP_ERR_UNKNOWN, &e)?;
                        continue;
                    }
                };
                let flags = transmission_flags(&*device, config, h.structured);
                let mut export = proto::INFO_EXPORT.to_be_bytes().to_vec();
                export.extend_from_slice(&device.size().to_be_bytes());
                export.extend_from_slice(&flags.to_be_bytes());
                reply(s, proto::REP_INFO, &export)?;
                let mut block = proto::INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                for v in [1u32, 4096, config.max_payload] {
                    block.extend_from_slice(&v.to_be_bytes());
                }
                reply(s, proto::REP_INFO, &block)?;
                if infos.contains(&proto::INFO_NAME) || canonical != name {
                    let mut d = proto::INFO_NAME.to_be_bytes().to_vec();
                    d.extend_from_slice(canonical.as_bytes());
                    reply(s, proto::REP_INFO, &d)?;
                }
                if infos.contains(&proto::INFO_DESCRIPTION) && !description.is_empty() {
                    let mut d = proto::INFO_DESCRIPTION.to_be_bytes().to_vec();
                    d.extend_from_slice(description.as_bytes());
                    reply(s, proto::REP_INFO, &d)?;
                }
                reply(s, proto::REP_ACK, &[])?;
                if opt.option == proto::OPT_GO {
                    return Ok(Some((canonical, device, h)));
                }
            }
            other => {
                // Clients probe for newer options (qemu asks for extended headers): not worth
                // a log line.
                let message = format!("option {other} is not supported");
                reply(s, proto::REP_ERR_UNSUP, message.as_bytes())?;
            }
        }
    }
    Err(Error::Protocol(format!(
        "more than {MAX_OPTIONS} options without choosing an export"
    )))
}

/// Answers one request's error.
fn send_error(s: &mut dyn Stream, structured: bool, cookie: u64, e: &DeviceError) -> Result<()> {
    if structured {
        let payload = wire::encode_error_chunk(e.errno, &e.message, e.offset);
        let kind = if e.offset.is_some() {
            proto::REPLY_TYPE_ERROR_OFFSET
        } else {
            proto::REPLY_TYPE_ERROR
        };
        let h = wire::structured_header(proto::REPLY_FLAG_DONE, kind, cookie, payload.len() as u32);
        wire::write_all(s, &[&h, &payload], "an error reply")
    } else {
        wire::write_all(s, &[&wire::simple_reply(e.errno, cookie)], "an error reply")
    }
}

fn send_ok(s: &mut dyn Stream, cookie: u64) -> Result<()> {
    wire::write_all(s, &[&wire::simple_reply(0, cookie)], "a reply")
}

fn transmit(
    s: &mut dyn Stream,
    mut device: Box<dyn Device>,
    config: &Config,
    structured: bool,
    allocation: bool,
    session: &mut Session,
    log: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    let size = device.size();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let head: [u8; REQUEST_LEN] = match wire::read_array(s, "a request") {
            Ok(h) => h,
            // A client that goes away between requests has ended its session.
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let req = Request::decode(&head)?;
        let command = req.command;
        let len = u64::from(req.length);
        let in_bounds = req.offset.checked_add(len).is_some_and(|e| e <= size);
        if command == proto::CMD_WRITE && req.length > config.max_payload {
            return Err(Error::Protocol(format!(
                "a write of {} bytes, more than the {} advertised",
                req.length, config.max_payload
            )));
        }
        if command == proto::CMD_DISC {
            return Ok(());
        }
        session.requests += 1;
        let refuse = |errno: u32, message: String| Err(DeviceError::new(errno, message));
        let outcome: Result<(), DeviceError> = match command {
            proto::CMD_READ if !in_bounds => refuse(
                proto::EINVAL,
                format!(
                    "a read at {} of {len} bytes passes the end ({size} bytes)",
                    req.offset
                ),
            ),
            proto::CMD_READ if req.length > config.max_payload => refuse(
                proto::EOVERFLOW,
                format!(
                    "a read of {len} bytes, more than the {} advertised",
                    config.max_payload
                ),
            ),
            proto::CMD_READ => {
                buf.resize(req.length as usize, 0);
                match device.read(req.offset, &mut buf) {
                    Ok(()) => {
                        session.bytes_read += len;
                        if structured {
                            let h = wire::structured_header(
                                proto::REPLY_FLAG_DONE,
                                proto::REPLY_TYPE_OFFSET_DATA,
                                req.cookie,
                                req.length + 8,
                            );
                            wire::write_all(
                                s,
                                &[&h, &req.offset.to_be_bytes(), &buf],
                                "read data",
                            )?;
                        } else {
                            wire::write_all(
                                s,
                                &[&wire::simple_reply(0, req.cookie), &buf],
                                "read data",
                            )?;
                        }
                        continue;
                    }
                    Err(e) => Err(e),
                }
            }
            proto::CMD_WRITE => {
                buf.resize(req.length as usize, 0);
                s.read_exact(&mut buf)
                    .map_err(Error::io("reading a write's data"))?;
                if !in_bounds {
                    refuse(
                        proto::ENOSPC,
                        format!(
                            "a write at {} of {len} bytes passes the end ({size} bytes)",
                            req.offset
                        ),
                    )
                } else if device.read_only() {
                    refuse(proto::EPERM, "the export is read-only".into())
                } else {
                    device.write(req.offset, &buf)
                }
            }
            proto::CMD_WRITE_ZEROES | proto::CMD_TRIM if !in_bounds => refuse(
                proto::ENOSPC,
                format!("{len} bytes at {} pass the end ({size} bytes)", req.offset),
            ),
            proto::CMD_WRITE_ZEROES | proto::CMD_TRIM if device.read_only() => {
                refuse(proto::EPERM, "the export is read-only".into())
            }
            proto::CMD_WRITE_ZEROES | proto::CMD_TRIM => {
                device.write_zeroes(req.offset, req.length)
            }
            proto::CMD_FLUSH => device.flush(),
            proto::CMD_CACHE if in_bounds => Ok(()),
            proto::CMD_BLOCK_STATUS if !structured || !allocation => refuse(
                proto::EINVAL,
                "block status needs structured replies and base:allocation selected".into(),
            ),
            proto::CMD_BLOCK_STATUS if !in_bounds || req.length == 0 => refuse(
                proto::EINVAL,
                format!(
                    "block status at {} of {len} bytes is outside the export ({size} bytes)",
                    req.offset
                ),
            ),
            proto::CMD_BLOCK_STATUS => match device.allocation(req.offset, req.length) {
                Ok(mut extents) => {
                    extents.retain(|e| e.length > 0);
                    if extents.is_empty() {
                        extents.push(Extent {
                            length: req.length,
                            flags: 0,
                        });
                    }
                    extents.truncate(MAX_EXTENTS);
                    if req.flags & proto::CMD_FLAG_REQ_ONE != 0 {
                        extents.truncate(1);
                        extents[0].length = extents[0].length.min(req.length);
                    }
                    let payload = wire::encode_block_status(ALLOCATION_ID, &extents);
                    let h = wire::structured_header(
                        proto::REPLY_FLAG_DONE,
                        proto::REPLY_TYPE_BLOCK_STATUS,
                        req.cookie,
                        payload.len() as u32,
                    );
                    wire::write_all(s, &[&h, &payload], "block status")?;
                    continue;
                }
                Err(e) => Err(e),
            },
            other => refuse(proto::EINVAL, format!("command {other} is not supported")),
        };
        match outcome {
            Ok(()) => send_ok(s, req.cookie)?,
            Err(e) => {
                session.errors += 1;
                log(&format!(
                    "{} at offset {} ({len} bytes): {}: {}",
                    command_label(command),
                    e.offset.unwrap_or(req.offset),
                    proto::errno_name(e.errno),
                    e.message
                ));
                send_error(s, structured, req.cookie, &e)?;
            }
        }
    }
}

fn command_label(c: u16) -> &'static str {
    match c {
        proto::CMD_READ => "read",
        proto::CMD_WRITE => "write",
        proto::CMD_FLUSH => "flush",
        proto::CMD_TRIM => "trim",
        proto::CMD_WRITE_ZEROES => "write zeroes",
        proto::CMD_BLOCK_STATUS => "block status",
        proto::CMD_CACHE => "cache",
        _ => "an unknown command",
    }
}
