//! The protocol's messages as bytes: each `read_*` reads one message from a stream and checks
//! its magic, lengths and bounds (a length past the caller's limit is an error before anything
//! is allocated); each `parse_*` checks the payload of an option or reply; each `write_*`
//! writes one. Nothing here knows whether it runs in a client or a server.

use std::io::{Read, Write};

use crate::error::{Error, Result};
use crate::proto;

fn short(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        what: format!("reading {what}"),
        source,
    }
}

pub(crate) fn read_array<const N: usize>(r: &mut dyn Read, what: &str) -> Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b).map_err(short(what))?;
    Ok(b)
}

pub(crate) fn read_u16(r: &mut dyn Read, what: &str) -> Result<u16> {
    Ok(u16::from_be_bytes(read_array(r, what)?))
}

pub(crate) fn read_u32(r: &mut dyn Read, what: &str) -> Result<u32> {
    Ok(u32::from_be_bytes(read_array(r, what)?))
}

pub(crate) fn read_u64(r: &mut dyn Read, what: &str) -> Result<u64> {
    Ok(u64::from_be_bytes(read_array(r, what)?))
}

/// Reads `len` bytes, refusing more than `max`.
pub(crate) fn read_vec(r: &mut dyn Read, len: u64, max: u64, what: &str) -> Result<Vec<u8>> {
    if len > max {
        return Err(Error::Protocol(format!(
            "{what} of {len} bytes, more than the {max} allowed"
        )));
    }
    let mut v = vec![0u8; len as usize];
    r.read_exact(&mut v).map_err(short(what))?;
    Ok(v)
}

/// Reads and drops `len` bytes.
pub(crate) fn discard(r: &mut dyn Read, len: u64, what: &str) -> Result<()> {
    let n = std::io::copy(&mut r.take(len), &mut std::io::sink()).map_err(short(what))?;
    if n < len {
        return Err(Error::Protocol(format!(
            "{what}: the peer closed after {n} of {len} bytes"
        )));
    }
    Ok(())
}

pub(crate) fn write_all(w: &mut dyn Write, parts: &[&[u8]], what: &str) -> Result<()> {
    for p in parts {
        w.write_all(p)
            .map_err(Error::io(format!("sending {what}")))?;
    }
    w.flush().map_err(Error::io(format!("sending {what}")))
}

/// A cursor over a payload, every read bounds-checked.
pub(crate) struct Payload<'a> {
    bytes: &'a [u8],
    at: usize,
    what: &'a str,
}

impl<'a> Payload<'a> {
    pub(crate) fn new(bytes: &'a [u8], what: &'a str) -> Self {
        Self { bytes, at: 0, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(Error::Protocol(format!(
                "{}: {} bytes, but {} more needed at byte {}",
                self.what,
                self.bytes.len(),
                n,
                self.at
            )));
        };
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    pub(crate) fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A string of `len` bytes: UTF-8, at most [`proto::MAX_STRING`].
    pub(crate) fn string(&mut self, len: usize) -> Result<String> {
        if len > proto::MAX_STRING {
            return Err(Error::Protocol(format!(
                "{}: a string of {len} bytes, more than the protocol's {}",
                self.what,
                proto::MAX_STRING
            )));
        }
        let b = self.take(len)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| Error::Protocol(format!("{}: a string that is not UTF-8", self.what)))
    }

    /// A string preceded by its 32-bit length.
    pub(crate) fn prefixed_string(&mut self) -> Result<String> {
        let len = self.u32()? as usize;
        self.string(len)
    }

    /// The rest, as a string.
    pub(crate) fn rest_string(&mut self) -> Result<String> {
        let n = self.bytes.len() - self.at;
        self.string(n)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let s = &self.bytes[self.at..];
        self.at = self.bytes.len();
        s
    }

    /// Fails unless every byte was read.
    pub(crate) fn end(&self) -> Result<()> {
        if self.at != self.bytes.len() {
            return Err(Error::Protocol(format!(
                "{}: {} bytes left over",
                self.what,
                self.bytes.len() - self.at
            )));
        }
        Ok(())
    }
}

/// One option sent by a client during the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionRequest {
    /// The option (`proto::OPT_*`).
    pub option: u32,
    /// Its data.
    pub data: Vec<u8>,
}

/// Reads an option (after the client flags); data longer than `max` is an error.
pub fn read_option(r: &mut dyn Read, max: u32) -> Result<OptionRequest> {
    let magic = read_u64(r, "an option's magic")?;
    if magic != proto::IHAVEOPT {
        return Err(Error::Protocol(format!(
            "an option starts with {magic:#x}, not IHAVEOPT ({:#x})",
            proto::IHAVEOPT
        )));
    }
    let option = read_u32(r, "an option's type")?;
    let len = read_u32(r, "an option's length")?;
    let data = read_vec(r, u64::from(len), u64::from(max), "an option's data")?;
    Ok(OptionRequest { option, data })
}

/// Writes an option.
pub fn write_option(w: &mut dyn Write, option: u32, data: &[u8]) -> Result<()> {
    let len = u32::try_from(data.len()).map_err(|_| Error::Usage("option too long".into()))?;
    write_all(
        w,
        &[
            &proto::IHAVEOPT.to_be_bytes(),
            &option.to_be_bytes(),
            &len.to_be_bytes(),
            data,
        ],
        "an option",
    )
}

/// One reply of the server to an option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionReply {
    /// The option it answers.
    pub option: u32,
    /// The reply type (`proto::REP_*`).
    pub reply: u32,
    /// Its data.
    pub data: Vec<u8>,
}

/// Reads an option reply; data longer than `max` is an error.
pub fn read_option_reply(r: &mut dyn Read, max: u32) -> Result<OptionReply> {
    let magic = read_u64(r, "an option reply's magic")?;
    if magic != proto::REPLY_MAGIC {
        return Err(Error::Protocol(format!(
            "an option reply starts with {magic:#x}, not {:#x}",
            proto::REPLY_MAGIC
        )));
    }
    let option = read_u32(r, "an option reply's option")?;
    let reply = read_u32(r, "an option reply's type")?;
    let len = read_u32(r, "an option reply's length")?;
    let data = read_vec(r, u64::from(len), u64::from(max), "an option reply's data")?;
    Ok(OptionReply {
        option,
        reply,
        data,
    })
}

/// Writes an option reply.
pub fn write_option_reply(w: &mut dyn Write, option: u32, reply: u32, data: &[u8]) -> Result<()> {
    let len = u32::try_from(data.len()).map_err(|_| Error::Usage("reply too long".into()))?;
    write_all(
        w,
        &[
            &proto::REPLY_MAGIC.to_be_bytes(),
            &option.to_be_bytes(),
            &reply.to_be_bytes(),
            &len.to_be_bytes(),
            data,
        ],
        "an option reply",
    )
}

/// The data of `NBD_OPT_INFO` and `NBD_OPT_GO`: an export name and information requests.
pub fn parse_go(data: &[u8]) -> Result<(String, Vec<u16>)> {
    let mut p = Payload::new(data, "NBD_OPT_GO data");
    let name = p.prefixed_string()?;
    let n = p.u16()?;
    let mut infos = Vec::with_capacity(usize::from(n).min(16));
    for _ in 0..n {
        infos.push(p.u16()?);
    }
    p.end()?;
    Ok((name, infos))
}

/// Encodes the data of `NBD_OPT_INFO` and `NBD_OPT_GO`.
#[must_use]
pub fn encode_go(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut v = Vec::with_capacity(name.len() + 6 + 2 * infos.len());
    v.extend_from_slice(&(name.len() as u32).to_be_bytes());
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        v.extend_from_slice(&i.to_be_bytes());
    }
    v
}

/// The data of `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`: an export name and
/// queries.
pub fn parse_meta_context(data: &[u8]) -> Result<(String, Vec<String>)> {
    let mut p = Payload::new(data, "meta context option data");
    let name = p.prefixed_string()?;
    let n = p.u32()?;
    let mut queries = Vec::new();
    for _ in 0..n {
        queries.push(p.prefixed_string()?);
    }
    p.end()?;
    Ok((name, queries))
}

/// Encodes the data of the meta context options.
#[must_use]
pub fn encode_meta_context(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(name.len() as u32).to_be_bytes());
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        v.extend_from_slice(&(q.len() as u32).to_be_bytes());
        v.extend_from_slice(q.as_bytes());
    }
    v
}

/// A transmission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags (`proto::CMD_FLAG_*`).
    pub flags: u16,
    /// The command (`proto::CMD_*`).
    pub command: u16,
    /// The client's cookie, repeated in the reply.
    pub cookie: u64,
    /// Offset in the export.
    pub offset: u64,
    /// Length.
    pub length: u32,
}

/// The size of a request header.
pub const REQUEST_LEN: usize = 28;

impl Request {
    /// Its 28 bytes.
    #[must_use]
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&proto::REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.command.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// Decodes 28 bytes, checking the magic.
    ///
    /// # Errors
    /// A wrong magic.
    pub fn decode(b: &[u8; REQUEST_LEN]) -> Result<Self> {
        let mut p = Payload::new(b, "a request");
        let magic = p.u32()?;
        if magic != proto::REQUEST_MAGIC {
            return Err(Error::Protocol(format!(
                "a request starts with {magic:#x}, not {:#x}",
                proto::REQUEST_MAGIC
            )));
        }
        Ok(Self {
            flags: p.u16()?,
            command: p.u16()?,
            cookie: p.u64()?,
            offset: p.u64()?,
            length: p.u32()?,
        })
    }
}

/// The header of a reply in the transmission phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHeader {
    /// A simple reply (read data, if any, follows).
    Simple {
        /// The error (0: success).
        error: u32,
        /// The request's cookie.
        cookie: u64,
    },
    /// A chunk of a structured reply (`length` payload bytes follow).
    Structured {
        /// Flags (`proto::REPLY_FLAG_DONE`).
        flags: u16,
        /// The chunk type (`proto::REPLY_TYPE_*`).
        kind: u16,
        /// The request's cookie.
        cookie: u64,
        /// Payload length.
        length: u32,
    },
}

/// Reads a reply header.
pub fn read_reply_header(r: &mut dyn Read) -> Result<ReplyHeader> {
    let magic = read_u32(r, "a reply's magic")?;
    match magic {
        proto::SIMPLE_REPLY_MAGIC => {
            let error = read_u32(r, "a reply's error")?;
            let cookie = read_u64(r, "a reply's cookie")?;
            Ok(ReplyHeader::Simple { error, cookie })
        }
        proto::STRUCTURED_REPLY_MAGIC => {
            let flags = read_u16(r, "a reply chunk's flags")?;
            let kind = read_u16(r, "a reply chunk's type")?;
            let cookie = read_u64(r, "a reply chunk's cookie")?;
            let length = read_u32(r, "a reply chunk's length")?;
            Ok(ReplyHeader::Structured {
                flags,
                kind,
                cookie,
                length,
            })
        }
        other => Err(Error::Protocol(format!(
            "a reply starts with {other:#x}, not {:#x} or {:#x}",
            proto::SIMPLE_REPLY_MAGIC,
            proto::STRUCTURED_REPLY_MAGIC
        ))),
    }
}

/// The 16 bytes of a simple reply's header.
#[must_use]
pub fn simple_reply(error: u32, cookie: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&proto::SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// The 20 bytes of a structured reply chunk's header.
#[must_use]
pub fn structured_header(flags: u16, kind: u16, cookie: u64, length: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[0..4].copy_from_slice(&proto::STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..20].copy_from_slice(&length.to_be_bytes());
    b
}

/// The payload of an error chunk: error value, message, and for `ERROR_OFFSET` the offset.
pub fn parse_error_chunk(kind: u16, payload: &[u8]) -> Result<(u32, String, Option<u64>)> {
    let mut p = Payload::new(payload, "an error chunk");
    let errno = p.u32()?;
    let len = p.u16()?;
    let message = String::from_utf8_lossy(p.take(usize::from(len))?).into_owned();
    let offset = if kind == proto::REPLY_TYPE_ERROR_OFFSET {
        Some(p.u64()?)
    } else {
        None
    };
    if errno == 0 {
        return Err(Error::Protocol("an error chunk with error 0".into()));
    }
    Ok((errno, message, offset))
}

/// Encodes an error chunk's payload (the message cut to the protocol's limit).
#[must_use]
pub fn encode_error_chunk(errno: u32, message: &str, offset: Option<u64>) -> Vec<u8> {
    let mut m = message.as_bytes();
    if m.len() > proto::MAX_STRING {
        let mut cut = proto::MAX_STRING;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        m = &m[..cut];
    }
    let mut v = Vec::with_capacity(14 + m.len());
    v.extend_from_slice(&errno.to_be_bytes());
    v.extend_from_slice(&(m.len() as u16).to_be_bytes());
    v.extend_from_slice(m);
    if let Some(o) = offset {
        v.extend_from_slice(&o.to_be_bytes());
    }
    v
}

/// One block status descriptor: a length and the context's flags for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Bytes.
    pub length: u32,
    /// The context's flags (`proto::STATE_*`).
    pub flags: u32,
}

/// The payload of a block status chunk: the context id and its descriptors.
pub fn parse_block_status(payload: &[u8]) -> Result<(u32, Vec<Extent>)> {
    if payload.len() < 12 || !(payload.len() - 4).is_multiple_of(8) {
        return Err(Error::Protocol(format!(
            "a block status chunk of {} bytes, not 4 + a positive multiple of 8",
            payload.len()
        )));
    }
    let mut p = Payload::new(payload, "a block status chunk");
    let id = p.u32()?;
    let mut extents = Vec::with_capacity((payload.len() - 4) / 8);
    while !p.rest_is_empty() {
        let length = p.u32()?;
        let flags = p.u32()?;
        if length == 0 {
            return Err(Error::Protocol(
                "a block status descriptor of length 0".into(),
            ));
        }
        extents.push(Extent { length, flags });
    }
    Ok((id, extents))
}

impl Payload<'_> {
    fn rest_is_empty(&self) -> bool {
        self.at >= self.bytes.len()
    }
}

/// Encodes a block status chunk's payload.
#[must_use]
pub fn encode_block_status(id: u32, extents: &[Extent]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + 8 * extents.len());
    v.extend_from_slice(&id.to_be_bytes());
    for e in extents {
        v.extend_from_slice(&e.length.to_be_bytes());
        v.extend_from_slice(&e.flags.to_be_bytes());
    }
    v
}
