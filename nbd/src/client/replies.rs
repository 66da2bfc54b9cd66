//! Replies: simple and structured, taken in whatever order the server sends them, each checked
//! against its request before anything is allocated (a read reply covers exactly the bytes
//! asked for, each once).

use std::collections::BTreeMap;

use super::{Client, Completion};
use crate::error::{Error, Result};
use crate::proto;
use crate::wire::{self, Extent, ReplyHeader};

/// The largest block status chunk the protocol lets a server send (2^20 descriptors).
const MAX_BLOCK_STATUS_CHUNK: u32 = 4 + 8 * (1 << 20);

/// A request in flight.
pub(super) struct Pending {
    pub(super) command: u16,
    pub(super) offset: u64,
    pub(super) length: u32,
    pub(super) data: Vec<u8>,
    /// Byte ranges of `data` covered by content chunks, start → end (relative).
    pub(super) covered: BTreeMap<u64, u64>,
    pub(super) covered_bytes: u64,
    pub(super) status: Vec<(u32, Vec<Extent>)>,
    pub(super) error: Option<Error>,
}

impl Client {
    /// Reads replies until one request completes.
    pub(super) fn receive(&mut self) -> Result<Completion> {
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
    pub(super) fn chunk(&mut self, p: &mut Pending, kind: u16, length: u32) -> Result<()> {
        match kind {
            proto::REPLY_TYPE_NONE if length != 0 => Err(Error::Protocol(format!(
                "an NBD_REPLY_TYPE_NONE chunk of {length} bytes"
            ))),
            proto::REPLY_TYPE_NONE => Ok(()),
            proto::REPLY_TYPE_OFFSET_DATA | proto::REPLY_TYPE_OFFSET_HOLE => {
                self.read_chunk(p, kind, length)
            }
            proto::REPLY_TYPE_BLOCK_STATUS => self.block_status_chunk(p, length),
            k if k & proto::REPLY_TYPE_FLAG_ERROR != 0 => {
                let bytes = wire::read_vec(
                    &mut *self.stream,
                    u64::from(length),
                    (proto::MAX_STRING + 14) as u64,
                    "an error chunk",
                )?;
                let (errno, message, offset) = wire::parse_error_chunk(k, &bytes)?;
                if p.error.is_none() {
                    p.error = Some(request_error(p, errno, message, offset));
                }
                Ok(())
            }
            other => Err(Error::Protocol(format!(
                "a structured reply chunk of unknown type {other}"
            ))),
        }
    }

    /// `NBD_REPLY_TYPE_OFFSET_DATA` or `_OFFSET_HOLE`: inside the read, overlapping no earlier
    /// chunk of it.
    fn read_chunk(&mut self, p: &mut Pending, kind: u16, length: u32) -> Result<()> {
        let s = &mut *self.stream;
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
        Ok(())
    }

    /// `NBD_REPLY_TYPE_BLOCK_STATUS`: one per context selected.
    fn block_status_chunk(&mut self, p: &mut Pending, length: u32) -> Result<()> {
        if p.command != proto::CMD_BLOCK_STATUS {
            return Err(Error::Protocol(
                "block status in the reply to another command".into(),
            ));
        }
        let bytes = wire::read_vec(
            &mut *self.stream,
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
        Ok(())
    }
}

pub(super) fn command_name(c: u16) -> &'static str {
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

pub(super) fn request_error(
    p: &Pending,
    errno: u32,
    message: String,
    offset: Option<u64>,
) -> Error {
    Error::Request {
        command: command_name(p.command),
        offset: offset.unwrap_or(p.offset),
        length: u64::from(p.length),
        errno,
        message,
    }
}
