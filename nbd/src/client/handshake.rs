//! The handshake: fixed newstyle, structured replies, metadata contexts, `NBD_OPT_GO` with a
//! fallback to `NBD_OPT_EXPORT_NAME` for old servers; and listing a server's exports. Every
//! option reply is bounded in size and number.

use std::collections::HashMap;
use std::time::Duration;

use super::{BlockSize, Client, ExportInfo, Stream, open_socket};
use crate::error::{Error, Result};
use crate::proto;
use crate::uri::Address;
use crate::wire::{self, Payload};

/// The largest option reply the client reads.
pub(super) const MAX_OPTION_REPLY: u32 = 1 << 20;

/// The most replies the client reads to one option (exports listed, contexts, infos).
pub(super) const MAX_OPTION_REPLIES: usize = 100_000;

/// The first steps of the handshake: the server's greeting and the client flags. Returns
/// whether the server speaks fixed newstyle and whether the zero padding was dropped.
pub(super) fn greet(s: &mut dyn Stream) -> Result<(bool, bool)> {
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
pub(super) fn option_reply(s: &mut dyn Stream, option: u32) -> Result<wire::OptionReply> {
    let r = wire::read_option_reply(s, MAX_OPTION_REPLY)?;
    if r.option != option {
        return Err(Error::Protocol(format!(
            "a reply to option {} when option {option} was asked",
            r.option
        )));
    }
    Ok(r)
}

pub(super) fn refused(option: &'static str, r: &wire::OptionReply) -> Error {
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
            stream = start_tls(stream, fixed, config, &name)?;
        }
        let s = &mut *stream;
        let mut structured = false;
        let mut selected = Vec::new();
        if fixed {
            wire::write_option(s, proto::OPT_STRUCTURED_REPLY, &[])?;
            let r = option_reply(s, proto::OPT_STRUCTURED_REPLY)?;
            structured = r.reply == proto::REP_ACK;
            if structured && !contexts.is_empty() {
                selected = set_meta_contexts(s, export, contexts)?;
            }
        }
        let info = match if fixed { Self::go(s, export)? } else { None } {
            Some(i) => i,
            None => export_name(s, export, no_zeroes)?,
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
    pub(super) fn go(s: &mut dyn Stream, export: &str) -> Result<Option<ExportInfo>> {
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
}

/// `NBD_OPT_STARTTLS`: the stream becomes a TLS session (a server that does not speak fixed
/// newstyle cannot start one).
fn start_tls(
    mut stream: Box<dyn Stream>,
    fixed: bool,
    config: std::sync::Arc<rustls::ClientConfig>,
    name: &str,
) -> Result<Box<dyn Stream>> {
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
    crate::tls::connect(config, name, stream)
}

/// `NBD_OPT_SET_META_CONTEXT`: the contexts the server selected, each one asked for (a server
/// that cannot select them gives none: contexts are a hint).
fn set_meta_contexts(
    s: &mut dyn Stream,
    export: &str,
    contexts: &[String],
) -> Result<Vec<(u32, String)>> {
    let queries: Vec<&str> = contexts.iter().map(String::as_str).collect();
    wire::write_option(
        s,
        proto::OPT_SET_META_CONTEXT,
        &wire::encode_meta_context(export, &queries),
    )?;
    let mut selected = Vec::new();
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
            proto::REP_ACK => return Ok(selected),
            e if e & proto::REP_FLAG_ERROR != 0 => return Ok(Vec::new()),
            other => {
                return Err(Error::Protocol(format!(
                    "reply type {other} to NBD_OPT_SET_META_CONTEXT"
                )));
            }
        }
    }
}

/// `NBD_OPT_EXPORT_NAME`, for an old server: it has no error reply (an unknown export closes
/// the connection).
fn export_name(s: &mut dyn Stream, export: &str, no_zeroes: bool) -> Result<ExportInfo> {
    wire::write_option(s, proto::OPT_EXPORT_NAME, export.as_bytes())?;
    let size = wire::read_u64(s, "the export's size (the server may not know the export)")?;
    let flags = wire::read_u16(s, "the export's flags")?;
    if !no_zeroes {
        wire::discard(s, proto::EXPORT_NAME_PADDING as u64, "the zero padding")?;
    }
    Ok(ExportInfo {
        name: export.to_owned(),
        size,
        flags,
        block: BlockSize::default(),
        description: None,
    })
}
