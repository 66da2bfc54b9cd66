//! The transmission phase: the client's requests, one handler per command (`NBD_CMD_*` as the
//! protocol document names them), each checked against the export before the device sees it.

use super::negotiate::ALLOCATION_ID;
use super::{Config, Device, DeviceError, Session};
use crate::client::Stream;
use crate::error::{Error, Result};
use crate::proto;
use crate::wire::{self, Extent, REQUEST_LEN, Request};

/// The most descriptors in one block status reply.
const MAX_EXTENTS: usize = 1 << 16;

/// One client's transmission phase.
pub(super) struct Transmission<'a> {
    pub device: Box<dyn Device>,
    pub config: &'a Config,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// `base:allocation` was selected for this export.
    pub allocation: bool,
    pub log: &'a (dyn Fn(&str) + Sync),
    /// The payload of the request being answered.
    pub buf: Vec<u8>,
}

/// What a handler did: answered the request itself (data sent), or left a plain outcome to
/// answer.
enum Answer {
    Sent,
    Outcome(std::result::Result<(), DeviceError>),
}

fn refuse(errno: u32, message: String) -> Answer {
    Answer::Outcome(Err(DeviceError::new(errno, message)))
}

impl Transmission<'_> {
    /// Answers requests until the client disconnects.
    pub(super) fn run(&mut self, s: &mut dyn Stream, session: &mut Session) -> Result<()> {
        loop {
            let head: [u8; REQUEST_LEN] = match wire::read_array(s, "a request") {
                Ok(h) => h,
                // A client that goes away between requests has ended its session.
                Err(Error::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::UnexpectedEof =>
                {
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            let req = Request::decode(&head)?;
            if req.command == proto::CMD_WRITE && req.length > self.config.max_payload {
                return Err(Error::Protocol(format!(
                    "a write of {} bytes, more than the {} advertised",
                    req.length, self.config.max_payload
                )));
            }
            if req.command == proto::CMD_DISC {
                return Ok(());
            }
            session.requests += 1;
            match self.request(s, &req, session)? {
                Answer::Sent => {}
                Answer::Outcome(Ok(())) => send_ok(s, req.cookie)?,
                Answer::Outcome(Err(e)) => {
                    session.errors += 1;
                    (self.log)(&format!(
                        "{} at offset {} ({} bytes): {}: {}",
                        command_label(req.command),
                        e.offset.unwrap_or(req.offset),
                        req.length,
                        proto::errno_name(e.errno),
                        e.message
                    ));
                    send_error(s, self.structured, req.cookie, &e)?;
                }
            }
        }
    }

    /// Whether the request's stretch lies inside the export.
    fn in_bounds(&self, req: &Request) -> bool {
        req.offset
            .checked_add(u64::from(req.length))
            .is_some_and(|e| e <= self.device.size())
    }

    /// One request, by command.
    fn request(
        &mut self,
        s: &mut dyn Stream,
        req: &Request,
        session: &mut Session,
    ) -> Result<Answer> {
        let size = self.device.size();
        let len = req.length;
        let in_bounds = self.in_bounds(req);
        Ok(match req.command {
            proto::CMD_READ => return self.read(s, req, session),
            proto::CMD_WRITE => return self.write(s, req),
            proto::CMD_WRITE_ZEROES | proto::CMD_TRIM if !in_bounds => refuse(
                proto::ENOSPC,
                format!("{len} bytes at {} pass the end ({size} bytes)", req.offset),
            ),
            proto::CMD_WRITE_ZEROES | proto::CMD_TRIM if self.device.read_only() => {
                refuse(proto::EPERM, "the export is read-only".into())
            }
            proto::CMD_WRITE_ZEROES | proto::CMD_TRIM => {
                Answer::Outcome(self.device.write_zeroes(req.offset, req.length))
            }
            proto::CMD_FLUSH => Answer::Outcome(self.device.flush()),
            proto::CMD_CACHE if in_bounds => Answer::Outcome(Ok(())),
            proto::CMD_BLOCK_STATUS => return self.block_status(s, req),
            other => refuse(proto::EINVAL, format!("command {other} is not supported")),
        })
    }

    /// `NBD_CMD_READ`: the data, in a simple reply or one `NBD_REPLY_TYPE_OFFSET_DATA` chunk.
    fn read(&mut self, s: &mut dyn Stream, req: &Request, session: &mut Session) -> Result<Answer> {
        let (size, len) = (self.device.size(), req.length);
        if !self.in_bounds(req) {
            return Ok(refuse(
                proto::EINVAL,
                format!(
                    "a read at {} of {len} bytes passes the end ({size} bytes)",
                    req.offset
                ),
            ));
        }
        if req.length > self.config.max_payload {
            return Ok(refuse(
                proto::EOVERFLOW,
                format!(
                    "a read of {len} bytes, more than the {} advertised",
                    self.config.max_payload
                ),
            ));
        }
        self.buf.resize(req.length as usize, 0);
        if let Err(e) = self.device.read(req.offset, &mut self.buf) {
            return Ok(Answer::Outcome(Err(e)));
        }
        session.bytes_read += u64::from(len);
        if self.structured {
            let h = wire::structured_header(
                proto::REPLY_FLAG_DONE,
                proto::REPLY_TYPE_OFFSET_DATA,
                req.cookie,
                req.length + 8,
            );
            wire::write_all(s, &[&h, &req.offset.to_be_bytes(), &self.buf], "read data")?;
        } else {
            let h = wire::simple_reply(0, req.cookie);
            wire::write_all(s, &[&h, &self.buf], "read data")?;
        }
        Ok(Answer::Sent)
    }

    /// `NBD_CMD_WRITE`: the payload is read whatever the answer (the stream stays in step).
    fn write(&mut self, s: &mut dyn Stream, req: &Request) -> Result<Answer> {
        self.buf.resize(req.length as usize, 0);
        s.read_exact(&mut self.buf)
            .map_err(Error::io("reading a write's data"))?;
        let (size, len) = (self.device.size(), req.length);
        Ok(if !self.in_bounds(req) {
            refuse(
                proto::ENOSPC,
                format!(
                    "a write at {} of {len} bytes passes the end ({size} bytes)",
                    req.offset
                ),
            )
        } else if self.device.read_only() {
            refuse(proto::EPERM, "the export is read-only".into())
        } else {
            Answer::Outcome(self.device.write(req.offset, &self.buf))
        })
    }

    /// `NBD_CMD_BLOCK_STATUS`: `base:allocation` extents, in one
    /// `NBD_REPLY_TYPE_BLOCK_STATUS` chunk.
    fn block_status(&mut self, s: &mut dyn Stream, req: &Request) -> Result<Answer> {
        let (size, len) = (self.device.size(), req.length);
        if !self.structured || !self.allocation {
            return Ok(refuse(
                proto::EINVAL,
                "block status needs structured replies and base:allocation selected".into(),
            ));
        }
        if !self.in_bounds(req) || req.length == 0 {
            return Ok(refuse(
                proto::EINVAL,
                format!(
                    "block status at {} of {len} bytes is outside the export ({size} bytes)",
                    req.offset
                ),
            ));
        }
        let mut extents = match self.device.allocation(req.offset, req.length) {
            Ok(e) => e,
            Err(e) => return Ok(Answer::Outcome(Err(e))),
        };
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
        Ok(Answer::Sent)
    }
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
